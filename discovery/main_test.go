package discovery

import (
	"syscall"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/leakcheck"
	"github.com/pushrelay/pushrelay/relay/metrics"
)

// TestMain fails the run if a test leaves a goroutine of ours behind
// (Run, the sender, a store's committer).
func TestMain(m *testing.M) { leakcheck.Main(m) }

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
