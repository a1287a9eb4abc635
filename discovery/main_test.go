package discovery

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/metrics"
)

// TestMain fails the run if a goroutine of this package is still running
// after every test returned: each Server's Run must have been stopped.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := leftover(); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines left behind by the tests:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// leftover returns the stacks of goroutines still in this package, after
// giving them a few seconds to finish.
func leftover() string {
	var bad []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		bad = bad[:0]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "pushrelay/discovery.") && !strings.Contains(g, "discovery.TestMain") {
				bad = append(bad, g)
			}
		}
		if len(bad) == 0 || time.Now().After(deadline) {
			return strings.Join(bad, "\n\n")
		}
	}
}

// The server tests run on real sockets, with the server's clock fixed
// (testConfig): rate limits and skew do not depend on how fast the machine
// is. They never assert how long something took; they wait for the server
// to have counted a request (handled), after which whatever it answered is
// already queued on the client socket (tryRead): the server writes its
// answer before it reads the next datagram, and writes nothing for a drop.

// handled waits until the server has counted n requests in all.
func handled(t testing.TB, r *metrics.Registry, n float64) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		total := 0.0
		for res := range numResults {
			total += requests(t, r, res.String())
		}
		if total >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server counted %v requests in 10s, want %v", total, n)
		}
	}
}

// tryRead reads one datagram queued on c without waiting.
func tryRead(c interface {
	SyscallConn() (syscall.RawConn, error)
}) []byte {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	buf := make([]byte, 2048)
	n, rerr := -1, error(nil)
	if err := rc.Read(func(fd uintptr) bool {
		n, _, rerr = syscall.Recvfrom(int(fd), buf, syscall.MSG_DONTWAIT)
		return true
	}); err != nil || rerr != nil || n < 0 {
		return nil
	}
	return buf[:n]
}
