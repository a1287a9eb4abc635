package wal

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// crashChildEnv, when set to a directory, turns TestCrashDurability into
// the child: it appends to that log in a loop and prints each Append's
// last index once Append has returned.
const crashChildEnv = "PUSHRELAY_WAL_CRASH_CHILD"

// TestCrashDurability kills an appending process with SIGKILL and checks
// that every index it reported durable is in the log after reopening.
// (A process kill keeps the page cache, so this proves "returned means
// written", not fdatasync against a power cut; the torn-tail tests cover
// what a power cut leaves.)
func TestCrashDurability(t *testing.T) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		crashChild(dir)
		return
	}
	dir := t.TempDir()
	args := []string{os.Args[0], "-test.run=^TestCrashDurability$", "-test.count=1"}
	if emu := os.Getenv("PUSHRELAY_TEST_EXEC"); emu != "" {
		args = append([]string{emu}, args...)
	}
	for round := range 3 {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
		cmd.Stderr = testWriter{t}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		watchdog := time.AfterFunc(30*time.Second, func() { cmd.Process.Kill() })
		killAt := 100 + rand.IntN(400)
		var durable uint64
		reports, killed := 0, false
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			v, ok := strings.CutPrefix(sc.Text(), "last ")
			if !ok {
				continue
			}
			i, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				t.Fatalf("child printed %q", sc.Text())
			}
			durable = max(durable, i)
			reports++
			if !killed && reports >= killAt {
				if err := cmd.Process.Kill(); err != nil {
					t.Fatal(err)
				}
				killed = true
			}
		}
		err = cmd.Wait()
		watchdog.Stop()
		if !killed {
			t.Fatalf("child ended before the kill: %v", err)
		}
		l, err := Open(dir, Options{SegmentBytes: 64 << 10})
		if err != nil {
			t.Fatalf("round %d: Open after the kill: %v", round, err)
		}
		last := l.LastIndex()
		t.Logf("round %d: killed after %d Appends reported (through %d); the log ends at %d", round, reports, durable, last)
		if last < durable {
			t.Fatalf("the log ends at %d, but %d was reported durable", last, durable)
		}
		for i := uint64(1); i <= last; i++ {
			b, err := l.Get(i)
			if err != nil || !bytes.Equal(b, crashEntry(i)) {
				t.Fatalf("Get(%d) = %.40q, %v", i, b, err)
			}
		}
		l.Close()
	}
}

func crashEntry(i uint64) []byte {
	return fmt.Appendf(nil, "%d %s", i, strings.Repeat("y", int(i%300)))
}

func crashChild(dir string) {
	l, err := Open(dir, Options{SegmentBytes: 64 << 10})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(2)
	}
	deadline := time.Now().Add(20 * time.Second)
	next := l.LastIndex() + 1
	for n := 0; time.Now().Before(deadline); n++ {
		var batch [][]byte
		for j := range uint64(1 + n%9) {
			batch = append(batch, crashEntry(next+j))
		}
		if err := l.Append(next, batch...); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(2)
		}
		next += uint64(len(batch))
		os.Stdout.WriteString("last " + strconv.FormatUint(next-1, 10) + "\n")
	}
	os.Exit(0)
}
