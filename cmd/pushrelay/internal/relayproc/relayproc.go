// Package relayproc starts a built pushrelay binary as a relay under test,
// on loopback port-0 listeners, and finds its listeners from the lines it
// prints when ready. The load tools (internal/bench) and the end-to-end
// tests of cmd/pushrelay both use it.
package relayproc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Proc is a relay under test: the binary at bin, run on loopback port-0
// listeners, found by the lines it prints when ready.
type Proc struct {
	Cmd      *exec.Cmd
	Device   string // ws://127.0.0.1:N/
	Endpoint string // http://127.0.0.1:N
	Admin    string // http://127.0.0.1:N
	STUN     string // 127.0.0.1:N (UDP), if the relay runs STUN
	Done     chan struct{}
	ExitErr  error // valid after Done is closed
}

var announce = regexp.MustCompile(`^\s+(devices|endpoint|admin|stun)\s+(\S+)`)

// Start runs `bin run` on dataDir with extra flags, sends its stderr
// to stderr, and returns once /readyz says 200.
func Start(ctx context.Context, bin, dataDir string, stderr io.Writer, extra ...string) (*Proc, error) {
	args := append([]string{"run", "--data-dir", dataDir,
		"--device-listen", "127.0.0.1:0", "--endpoint-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--stun-listen", "127.0.0.1:0"}, extra...)
	cmdArgs := append([]string{bin}, args...)
	if emu := os.Getenv("PUSHRELAY_BENCH_EMULATOR"); emu != "" {
		// Measuring a cross-built binary under qemu-user: run the child
		// through the same emulator (binfmt is not assumed).
		cmdArgs = append([]string{emu}, cmdArgs...)
	}
	c := &Proc{Cmd: exec.Command(cmdArgs[0], cmdArgs[1:]...), Done: make(chan struct{})}
	c.Cmd.Env = Env()
	c.Cmd.Stderr = stderr
	out, err := c.Cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.Cmd.Start(); err != nil {
		return nil, err
	}
	found := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		n := 0
		for sc.Scan() {
			if m := announce.FindStringSubmatch(sc.Text()); m != nil {
				v := strings.TrimSuffix(strings.TrimSuffix(m[2], "/status"), "/")
				switch m[1] {
				case "devices":
					c.Device = m[2]
				case "endpoint":
					c.Endpoint = v
				case "admin":
					c.Admin = v
				case "stun":
					c.STUN = m[2]
					continue
				}
				if n++; n == 3 {
					close(found)
				}
			}
		}
		c.ExitErr = c.Cmd.Wait()
		close(c.Done)
	}()
	select {
	case <-found:
	case <-c.Done:
		return nil, fmt.Errorf("relay exited at start: %v", c.ExitErr)
	case <-time.After(60 * time.Second):
		c.Kill()
		return nil, errors.New("relay did not start within 60s")
	case <-ctx.Done():
		c.Kill()
		return nil, ctx.Err()
	}
	if slices.Contains(extra, "--cluster-listen") {
		// A site's member is ready once its site formed, which takes
		// the other members: the caller waits (WaitReady).
		return c, nil
	}
	if err := c.WaitReady(60 * time.Second); err != nil {
		c.Kill()
		return nil, err
	}
	return c, nil
}

// Env is this process's environment without PUSHRELAY_ settings, so
// the child runs on its flags alone.
func Env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PUSHRELAY_") {
			env = append(env, kv)
		}
	}
	return env
}

// Kill kills the relay and waits for it to exit.
func (c *Proc) Kill() {
	c.Cmd.Process.Kill()
	<-c.Done
}

// WaitReady polls /readyz until it says 200, for up to limit.
func (c *Proc) WaitReady(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(c.Admin + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	return errors.New("relay not ready in time")
}

// Stop interrupts the relay (a clean stop) and waits up to 30s for it
// to exit, then kills it.
func (c *Proc) Stop() {
	c.Cmd.Process.Signal(os.Interrupt)
	select {
	case <-c.Done:
	case <-time.After(30 * time.Second):
		c.Kill()
	}
}
