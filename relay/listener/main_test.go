package listener

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestMain fails the package when a test leaves a goroutine behind: every
// accept loop and connection a test starts must have ended.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 && os.Getenv(emfileChildEnv) == "" {
		if leaked := leftovers(); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines left behind:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// leftovers waits up to 5s for the goroutines of this package to end and
// returns the stacks of those that did not.
func leftovers() string {
	var found []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		found = found[:0]
		for g := range strings.SplitSeq(string(buf), "\n\n") {
			if strings.Contains(g, "pushrelay/relay/listener.") && !strings.Contains(g, "listener.TestMain") {
				found = append(found, g)
			}
		}
		if len(found) == 0 || time.Now().After(deadline) {
			return strings.Join(found, "\n\n")
		}
	}
}
