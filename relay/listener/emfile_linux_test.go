package listener

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/metrics"
)

const emfileChildEnv = "PUSHRELAY_LISTENER_EMFILE_CHILD"

// TestAcceptBacksOffOnEMFILE runs out of descriptors for real: a child
// process (this test binary again) lowers its own RLIMIT_NOFILE to three
// above what it has open, and this process opens four connections to it.
// The child's fourth accept(2) fails with EMFILE; the guard must retry on
// the 5 ms → 1 s schedule, count and log the errors once per interval, and
// accept the waiting connection once descriptors are free. The Go runtime
// raises its own soft limit at start, so the limit is lowered in the child,
// after start, where it cannot affect other tests.
func TestAcceptBacksOffOnEMFILE(t *testing.T) {
	if os.Getenv(emfileChildEnv) != "" {
		emfileChild()
		return
	}
	args := []string{os.Args[0], "-test.run=^TestAcceptBacksOffOnEMFILE$", "-test.count=1", "-test.timeout=60s"}
	if emu := os.Getenv("PUSHRELAY_TEST_EXEC"); emu != "" {
		args = append([]string{emu}, args...) // make test-arm: the child runs under qemu too
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), emfileChildEnv+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		done <- cmd.Wait()
	}()
	timeout := time.After(60 * time.Second)
	var addr string
	for addr == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("child ended before listening: %v\n%s", <-done, stderr.String())
			}
			addr, _ = strings.CutPrefix(l, "listening ")
		case <-timeout:
			cmd.Process.Kill()
			t.Fatal("child did not start listening within 60s")
		}
	}
	for i := range 4 {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		defer c.Close()
	}
	var report []string
	for l := range lines {
		report = append(report, l)
	}
	select {
	case err := <-done:
		if err != nil || !slices.Contains(report, "ok") {
			t.Fatalf("child: %v\nstdout:\n%s\nstderr:\n%s", err, strings.Join(report, "\n"), stderr.String())
		}
		t.Logf("child:\n%s", strings.Join(report, "\n"))
	case <-timeout:
		cmd.Process.Kill()
		t.Fatal("child did not finish within 60s")
	}
}

// emfileChild is the child's side; it prints its findings and "ok" if all
// held, and exits through the normal end of the test.
func emfileChild() {
	fail := func(format string, args ...any) {
		fmt.Printf("FAIL: "+format+"\n", args...)
		os.Exit(1)
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail("listen: %v", err)
	}
	var logs bytes.Buffer
	reg := metrics.NewRegistry()
	l := Wrap(inner, Config{Name: "test", Metrics: NewMetrics(reg), LogInterval: 2 * time.Second,
		Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	// Virtual time: each backoff advances the clock by what it asked for,
	// and the twelfth frees the descriptors.
	now := time.Unix(1e9, 0)
	var held []net.Conn
	var delays []time.Duration
	l.now = func() time.Time { return now }
	l.sleep = func(d time.Duration, _ <-chan struct{}) bool {
		delays = append(delays, d)
		now = now.Add(d)
		if len(delays) == 12 {
			for _, c := range held {
				c.Close()
			}
		}
		return true
	}
	fmt.Println("listening", l.Addr())
	os.Stdout.Sync()

	// RLIMIT_NOFILE bounds descriptor numbers, not their count: the limit
	// is set just above the third free number, so exactly three more
	// descriptors can be opened (inherited ones above it stay open). A
	// number is free when fcntl(F_GETFD) says EBADF; probing opens nothing.
	lim, free := uint64(0), 0
	for n := 0; free < 3; n++ {
		if _, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(n), syscall.F_GETFD, 0); errno == syscall.EBADF {
			free++
		}
		lim = uint64(n + 1)
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: lim, Max: lim}); err != nil {
		fail("setrlimit: %v", err)
	}
	for range 3 {
		c, err := l.Accept()
		if err != nil {
			fail("accept within the limit: %v", err)
		}
		held = append(held, c)
	}
	if len(delays) != 0 {
		fail("backed off %v within the limit", delays)
	}
	c, err := l.Accept() // EMFILE until the sleep hook frees the three
	if err != nil {
		fail("accept after EMFILE: %v", err)
	}
	c.Close()
	l.Close()

	ms := func(d ...int) (out []time.Duration) {
		for _, v := range d {
			out = append(out, time.Duration(v)*time.Millisecond)
		}
		return out
	}
	if want := ms(5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000); !slices.Equal(delays, want) {
		fail("backoff %v, want %v", delays, want)
	}
	if got := reg.Value(`pushrelay_listener_accept_errors_total{listener="test",reason="emfile"}`); got != 12 {
		fail("emfile errors counted %v, want 12", got)
	}
	// Errors at virtual 0, 5ms, ..., 2.275s (10th), ..., 4.275s (12th):
	// lines at the 1st, 10th and 12th with the counts in between.
	var counts []int
	for line := range strings.Lines(logs.String()) {
		var e struct {
			Msg    string
			Errors int
			Err    string
		}
		json.Unmarshal([]byte(line), &e)
		if e.Msg == "accept failed; retrying" {
			if !strings.Contains(e.Err, "too many open files") {
				fail("logged error %q, want EMFILE's", e.Err)
			}
			counts = append(counts, e.Errors)
		}
	}
	if !slices.Equal(counts, []int{1, 9, 2}) {
		fail("log lines counted %v, want [1 9 2]\n%s", counts, logs.String())
	}
	fmt.Println("limit", lim)
	fmt.Println("backoff", delays)
	fmt.Println("log counts", counts)
	fmt.Println("ok")
}
