package kick

import (
	"syscall"
	"testing"

	"github.com/pushrelay/pushrelay/relay/leakcheck"
)

// TestMain fails the run if a test leaves a goroutine of ours behind
// (Run, the sender, a store's committer).
func TestMain(m *testing.M) { leakcheck.Main(m) }

// tryRead reads one datagram queued on c without waiting.
func tryRead(c interface {
	SyscallConn() (syscall.RawConn, error)
}) ([]byte, bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, false
	}
	buf := make([]byte, 1500)
	n, rerr := -1, error(nil)
	if err := rc.Read(func(fd uintptr) bool {
		n, _, rerr = syscall.Recvfrom(int(fd), buf, syscall.MSG_DONTWAIT)
		return true // never wait: in a bubble, time would not pass
	}); err != nil || rerr != nil || n < 0 {
		return nil, false
	}
	return buf[:n], true
}
