package listener

import (
	"os"
	"testing"

	"github.com/pushrelay/pushrelay/relay/leakcheck"
)

// TestMain fails the package when a test leaves a goroutine behind: every
// accept loop and connection a test starts must have ended. (The EMFILE
// test's child process only runs its one test.)
func TestMain(m *testing.M) {
	if os.Getenv(emfileChildEnv) != "" {
		os.Exit(m.Run())
	}
	leakcheck.Main(m)
}
