package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	bolt "go.etcd.io/bbolt"
)

// slowLog makes every append of s's log take d (synctest's clock), as a
// gateway's flash does, so that its batches wait to fill.
func slowLog(s *Store, d time.Duration) {
	s.w.appendHook = func(uint64) error { time.Sleep(d); return nil }
}

// closedLoopWriters starts writers goroutines, writer w appending rounds
// messages to device w one after another, each once the last is answered
// (then calling after, if set), as app servers and devices do.
func closedLoopWriters(t *testing.T, s *Store, writers, rounds int, after func(w, i int)) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range rounds {
				if _, err := s.Append(context.Background(), msg(uaid(byte(w)), chid(1), fmt.Sprint(i))); err != nil {
					t.Error(err)
					return
				}
				if after != nil {
					after(w, i)
				}
			}
		})
	}
	return &wg
}

// TestWALSlowLogFillsBatches: with a slow log, writers in a closed loop
// (each waits for its answer, then writes again, as app servers and
// devices do) share appends, the batch being applied while it fills. A
// read taken meanwhile sees every write answered and none that is not,
// and every stored message has reached OnStored before a read can see
// it; each reaches OnStored once, in order.
func TestWALSlowLogFillsBatches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := openTest(t, Options{Path: filepath.Join(t.TempDir(), "store.db"), CheckpointInterval: time.Hour, CheckpointBytes: 1 << 30})
		const writers, rounds = 8, 25
		for w := range writers {
			mustRegister(t, s, uaid(byte(w)), chid(1))
		}
		var mu sync.Mutex
		notified := map[string]bool{}
		var order []uint64
		var kept [][]Message // OnStored's slices are its to keep
		s.OnStored(func(ms []Message) {
			mu.Lock()
			defer mu.Unlock()
			kept = append(kept, ms)
			for _, m := range ms {
				k := string(messageKey(m.UAID, m.Seq))
				if notified[k] {
					t.Errorf("message %x seq %d handed to OnStored twice", m.UAID[:2], m.Seq)
				}
				notified[k] = true
				order = append(order, m.Seq)
			}
		})
		slowLog(s, 3*time.Millisecond)
		appends0 := s.w.log.LastIndex()

		wg := closedLoopWriters(t, s, writers, rounds, nil)
		stop := make(chan struct{})
		var reads, checked int
		readerDone := make(chan struct{})
		go func() {
			defer close(readerDone)
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := s.view(func(tx *bolt.Tx) error {
					// On the committer: s.tot is what was answered.
					n := 0
					tx.Bucket(bucketMessages).ForEach(func(_, _ []byte) error { n++; return nil })
					if int64(n) != s.tot.waiting {
						return fmt.Errorf("a read sees %d messages, %d answered", n, s.tot.waiting)
					}
					mu.Lock()
					defer mu.Unlock()
					return tx.Bucket(bucketMessages).ForEach(func(k, _ []byte) error {
						checked++
						if !notified[string(k)] {
							return fmt.Errorf("a read sees seq %d before OnStored did", binary.BigEndian.Uint64(k[16:]))
						}
						return nil
					})
				})
				if err != nil {
					t.Error(err)
					return
				}
				reads++
				time.Sleep(time.Millisecond)
			}
		}()
		wg.Wait()
		close(stop)
		<-readerDone
		synctest.Wait()

		appends := s.w.log.LastIndex() - appends0
		if want := uint64(writers * rounds / 3); appends > want {
			t.Errorf("%d appends for %d messages from %d writers: batches did not fill (want at most %d)", appends, writers*rounds, writers, want)
		}
		mu.Lock()
		if len(notified) != writers*rounds {
			t.Errorf("OnStored saw %d messages of %d", len(notified), writers*rounds)
		}
		var later []uint64
		for _, ms := range kept {
			for _, m := range ms {
				later = append(later, m.Seq)
			}
		}
		if !slices.Equal(later, order) {
			t.Errorf("the slices OnStored was given changed after it returned")
		}
		for i := 1; i < len(order); i++ {
			if order[i] <= order[i-1] {
				t.Errorf("OnStored order: seq %d after %d", order[i], order[i-1])
				break
			}
		}
		mu.Unlock()
		if reads < 10 || checked == 0 {
			t.Errorf("only %d reads (%d rows checked) ran with the writers", reads, checked)
		}
		checkScanCounts(t, s)
		t.Logf("%d messages in %d appends; %d reads", writers*rounds, appends, reads)
	})
}

// TestWALSlowLogOpFailsAlone: an op that fails while its batch is applied
// as it fills fails alone; the ops applied with it before and after are
// stored once and answered.
func TestWALSlowLogOpFailsAlone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		path := filepath.Join(t.TempDir(), "store.db")
		s := openTest(t, Options{Path: path, CheckpointInterval: time.Hour, CheckpointBytes: 1 << 30})
		const writers, rounds = 4, 10
		for w := range writers {
			mustRegister(t, s, uaid(byte(w)), chid(1))
		}
		boom := errors.New("boom")
		var early, failedOps int
		failing := func() {
			err := s.do(ctx, func(tx *txn) error {
				if s.w.early.t == tx {
					early++
				}
				if err := tx.devices.Put(deviceKey(uaid(99)), []byte("half-written")); err != nil {
					return err
				}
				return boom
			})
			if !errors.Is(err, boom) {
				t.Errorf("failing op: %v", err)
			}
			failedOps++
		}

		// A slow append of a batch of two ops, held at a gate: three
		// appends, the first alone, the next two together.
		mustRegister(t, s, uaid(50), chid(1))
		gate := make(chan struct{})
		s.w.appendHook = func(uint64) error { <-gate; time.Sleep(3 * time.Millisecond); return nil }
		var warm sync.WaitGroup
		warmUp := func() { mustAppend(t, s, msg(uaid(50), chid(1), "warm")) }
		// One at a time: started together, the committer may take all
		// three in its first batch (CI saw it, and the test then
		// waited for ever at the gate).
		warm.Go(warmUp)
		synctest.Wait() // one append, alone, at the gate
		warm.Go(warmUp)
		warm.Go(warmUp)
		synctest.Wait() // two queued behind it
		gate <- struct{}{}
		synctest.Wait() // the two, one batch, at the gate
		gate <- struct{}{}
		warm.Wait()
		close(gate)
		// Alone, the failing op waits for its batch to fill: it fails
		// while applied early, whatever the scheduling.
		failing()

		// Then among closed-loop writers.
		closedLoopWriters(t, s, writers, rounds, func(w, i int) {
			if w == 0 && i%3 == 1 {
				failing()
			}
		}).Wait()
		if early == 0 {
			t.Fatalf("none of the %d failing ops was applied while its batch filled", failedOps)
		}
		if _, ok, _ := s.Device(uaid(99)); ok {
			t.Fatal("a failed op's write is visible")
		}
		check := func(s *Store, where string) {
			for w := range writers {
				ms := mustMessages(t, s, uaid(byte(w)))
				want := ""
				for i := range rounds {
					want += fmt.Sprint(",", i)
				}
				if got := datas(ms); ","+got != want {
					t.Errorf("%s: writer %d: %q", where, w, got)
				}
			}
		}
		check(s, "open store")
		checkScanCounts(t, s)
		s.w.appendHook = nil
		cp := copyStore(t, path, t.TempDir())
		check(openTest(t, Options{Path: cp}), "reopened copy")
	})
}
