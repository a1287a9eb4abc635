package store

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// crashWALChildEnv, when set to a file path, turns TestCrashWAL into the
// child: appends and acks on that store, each reported once answered.
const crashWALChildEnv = "PUSHRELAY_STORE_CRASH_WAL_CHILD"

// crashWALSlowEnv makes the child's log appends a millisecond slower.
const crashWALSlowEnv = "PUSHRELAY_STORE_CRASH_WAL_SLOW"

const crashWALDevices = 4

// TestCrashWAL kills a process appending and acking under load with
// SIGKILL at random points, round after round on the same store (so each
// open replays the log the last one left, checkpoints cut at any point,
// every 10 ms): every append the child reported answered is there unless
// an ack may have taken it, every ack it reported answered is applied,
// and nothing is applied twice: seqs only grow across rounds, and the
// totals match a walk of the rows.
func TestCrashWAL(t *testing.T) {
	if path := os.Getenv(crashWALChildEnv); path != "" {
		crashWALChild(path)
		return
	}
	path := filepath.Join(t.TempDir(), "store.db")
	s := openTest(t, Options{Path: path})
	for d := range crashWALDevices {
		mustRegister(t, s, uaid(byte(d)), chid(1))
	}
	s.Close()

	type key struct {
		d   int
		seq uint64
	}
	appended := map[key]bool{} // reported answered
	acking := map[key]bool{}   // an Ack was started
	acked := map[key]bool{}    // an Ack was answered
	maxSeq := uint64(0)
	deadline := time.Now().Add(8 * time.Second)
	rounds := 0
	for ; rounds < 40 && time.Now().Before(deadline); rounds++ {
		env := []string{crashWALChildEnv + "=" + path}
		if rounds%2 == 1 {
			// A flash-like log: batches wait to fill and are applied
			// as they do (walfill_test.go).
			env = append(env, crashWALSlowEnv+"=1")
		}
		cmd, stdout, watchdog := startChild(t, "TestCrashWAL", env...)
		killAt := 50 + rand.IntN(6000)
		lines, killed := 0, false
		roundMax := maxSeq
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var (
				what string
				k    key
			)
			if _, err := fmt.Sscanf(sc.Text(), "%s %d %d", &what, &k.d, &k.seq); err != nil {
				t.Fatalf("child printed %q", sc.Text())
			}
			switch what {
			case "appended":
				if k.seq <= maxSeq {
					t.Fatalf("round %d: seq %d appended again (earlier rounds reached %d)", rounds, k.seq, maxSeq)
				}
				appended[k] = true
				roundMax = max(roundMax, k.seq)
			case "acking":
				acking[k] = true
			case "acked":
				acked[k] = true
			}
			if lines++; !killed && lines >= killAt {
				if err := cmd.Process.Kill(); err != nil {
					t.Fatal(err)
				}
				killed = true
			}
		}
		err := cmd.Wait()
		watchdog.Stop()
		if !killed {
			t.Fatalf("child ended before the kill: %v", err)
		}
		maxSeq = roundMax

		s := openTest(t, Options{Path: path})
		present := map[key]bool{}
		for d := range crashWALDevices {
			ms, err := s.Messages(uaid(byte(d)), 0, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range ms {
				present[key{d, m.Seq}] = true
			}
		}
		for k := range appended {
			if !present[k] && !acking[k] {
				t.Fatalf("round %d: device %d seq %d was answered and is gone", rounds, k.d, k.seq)
			}
		}
		for k := range acked {
			if present[k] {
				t.Fatalf("round %d: device %d seq %d was acked and is back", rounds, k.d, k.seq)
			}
		}
		checkScanCounts(t, s)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d rounds: %d appends and %d acks answered", rounds, len(appended), len(acked))
}

func crashWALChild(path string) {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(2)
	}
	s, err := Open(Options{Path: path, MaxMessagesPerUAID: 1 << 30, CheckpointInterval: 10 * time.Millisecond})
	if err != nil {
		fail(err)
	}
	if os.Getenv(crashWALSlowEnv) != "" {
		s.w.appendHook = func(uint64) error { time.Sleep(time.Millisecond); return nil }
	}
	ctx := context.Background()
	var mu sync.Mutex
	say := func(what string, d int, seq uint64) {
		mu.Lock()
		fmt.Fprintf(os.Stdout, "%s %d %d\n", what, d, seq)
		mu.Unlock()
	}
	deadline := time.Now().Add(20 * time.Second)
	var wg sync.WaitGroup
	for g := range 8 {
		d := g % crashWALDevices
		wg.Go(func() {
			for time.Now().Before(deadline) {
				m, err := s.Append(ctx, msg(uaid(byte(d)), chid(1), strings.Repeat("x", 200)))
				if err != nil {
					fail(err)
				}
				say("appended", d, m.Seq)
			}
		})
	}
	for d := range crashWALDevices {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				ms, err := s.Messages(uaid(byte(d)), 0, 20)
				if err != nil {
					fail(err)
				}
				seqs := make([]uint64, len(ms))
				for i, m := range ms {
					seqs[i] = m.Seq
					say("acking", d, m.Seq)
				}
				if _, err := s.Ack(ctx, uaid(byte(d)), seqs...); err != nil {
					fail(err)
				}
				for _, seq := range seqs {
					say("acked", d, seq)
				}
			}
		})
	}
	wg.Wait()
	os.Exit(0)
}
