// Package leakcheck fails a test binary whose tests leave goroutines of
// pushrelay's own code running: every goroutine has an owner that waits
// for it, and a test that ends with one still running shows an owner that
// does not. Use it from TestMain:
//
//	func TestMain(m *testing.M) { leakcheck.Main(m) }
//
// Only goroutines with a frame of this module's code count, so idle
// connections of net/http's client or the runtime's own goroutines do not;
// goroutines of the test binary's tests (functions of _test.go files) are
// left out too, as those are the test's, not the code's.
package leakcheck

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// module is the prefix of the frames that count.
const module = "github.com/pushrelay/pushrelay/"

// Main runs the tests, then fails the binary if goroutines of ours are
// still running after a grace period (goroutines that are ending as the
// last test returns get it).
func Main(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := Check(5 * time.Second); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// Check waits up to grace for goroutines of this module to end and
// returns an error listing those that did not.
func Check(grace time.Duration) error {
	deadline := time.Now().Add(grace)
	for {
		left := Leftover()
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("leakcheck: %d goroutine(s) left running after the tests:\n\n%s", len(left), strings.Join(left, "\n\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Leftover returns the stacks of the running goroutines, other than the
// caller's, that run code of this module outside test files.
func Leftover() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	stacks := bytes.Split(buf, []byte("\n\n"))
	var left []string
	for _, st := range stacks[1:] { // the first is this goroutine
		if ours(string(st)) {
			left = append(left, string(st))
		}
	}
	return left
}

// ours reports whether a goroutine's stack has a frame of this module's
// non-test code.
func ours(stack string) bool {
	lines := strings.Split(stack, "\n")
	for i := 1; i+1 < len(lines); i += 2 {
		fn, file := lines[i], strings.TrimSpace(lines[i+1])
		if !strings.HasPrefix(fn, module) && !strings.HasPrefix(strings.TrimPrefix(fn, "created by "), module) {
			continue
		}
		if strings.Contains(file, "_test.go:") || strings.Contains(fn, "/leakcheck.") {
			continue
		}
		return true
	}
	return false
}
