package store

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// crashChildEnv, when set to a file path, turns TestCrashDurability into
// the child: it appends messages to that store forever and prints each
// seq after Append returns.
const crashChildEnv = "PUSHRELAY_STORE_CRASH_CHILD"

// TestCrashDurability kills a writer process with SIGKILL mid-stream and
// checks that every message whose Append had returned is in the file.
// (A process kill keeps the page cache, so this proves "acknowledged
// means committed", not fsync against power loss.)
func TestCrashDurability(t *testing.T) {
	if path := os.Getenv(crashChildEnv); path != "" {
		crashChild(path)
		return
	}
	path := filepath.Join(t.TempDir(), "store.db")
	cmd, stdout, watchdog := startChild(t, "TestCrashDurability", crashChildEnv+"="+path)
	defer watchdog.Stop()

	killAt := 150 + rand.IntN(300)
	var (
		seqs   []uint64
		killed bool
	)
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "seq ")
		if !ok {
			continue
		}
		seq, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("child printed %q", sc.Text())
		}
		seqs = append(seqs, seq)
		if !killed && len(seqs) >= killAt {
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
	err := cmd.Wait()
	if !killed {
		t.Fatalf("child ended before the kill: %v", err)
	}
	t.Logf("killed the writer after %d acknowledged appends (%d printed in all)", killAt, len(seqs))

	s := openTest(t, Options{Path: path})
	checkAllPresent(t, s, uaid(1), seqs)
	ms := mustMessages(t, s, uaid(1))
	checkDevice(t, s, uaid(1), len(ms), 1)
	checkStats(t, s, Stats{Devices: 1, Channels: 1, Waiting: int64(len(ms))})
}

func crashChild(path string) {
	s, err := Open(Options{Path: path, MaxMessagesPerUAID: 1 << 30})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(2)
	}
	ctx := context.Background()
	u := uaid(1)
	if err := s.Register(ctx, Channel{UAID: u, ID: chid(1)}); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(2)
	}
	var mu sync.Mutex
	deadline := time.Now().Add(20 * time.Second)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				m, err := s.Append(ctx, msg(u, chid(1), strings.Repeat("x", 200)))
				if err != nil {
					fmt.Fprintln(os.Stderr, "child:", err)
					os.Exit(2)
				}
				mu.Lock()
				os.Stdout.WriteString("seq " + strconv.FormatUint(m.Seq, 10) + "\n")
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	os.Exit(0)
}

// startChild runs this test binary again, only test, with env added (the
// child's role and its store), its stderr to t's log. It returns the
// child, its stdout and a watchdog that kills it after 30 s (the caller
// stops it). Cross-architecture runs (make test-arm) execute the test
// binary under qemu-user: the child goes through the same emulator.
func startChild(t *testing.T, test string, env ...string) (*exec.Cmd, io.Reader, *time.Timer) {
	t.Helper()
	args := []string{os.Args[0], "-test.run=^" + test + "$", "-test.count=1"}
	if emu := os.Getenv("PUSHRELAY_TEST_EXEC"); emu != "" {
		args = append([]string{emu}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = testWriter{t}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, stdout, time.AfterFunc(30*time.Second, func() { cmd.Process.Kill() })
}
