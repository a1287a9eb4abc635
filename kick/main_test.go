package kick

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain fails the run if a goroutine of this package or of the store
// its tests open is still running after every test returned: Run, the
// sender and the store's committer must all have been stopped.
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

// leftover returns the stacks of goroutines still in this package or the
// store, after giving them a few seconds to finish.
func leftover() string {
	var bad []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		bad = bad[:0]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "pushrelay/kick.") && !strings.Contains(g, "kick.TestMain") ||
				strings.Contains(g, "pushrelay/relay/store.") {
				bad = append(bad, g)
			}
		}
		if len(bad) == 0 || time.Now().After(deadline) {
			return strings.Join(bad, "\n\n")
		}
	}
}

// forgetStoreOps empties the store's pool of operations (each holds a
// channel) by running the two collections after which a sync.Pool holds
// nothing. A channel made inside one synctest bubble must not be used
// outside it, nor in another, so each test that opens a store starts from
// an empty pool. (The kick tests do not run in parallel.)
func forgetStoreOps() {
	runtime.GC()
	runtime.GC()
}

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
