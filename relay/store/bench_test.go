package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
	bolt "go.etcd.io/bbolt"
)

// BenchmarkAppend compares bbolt's db.Batch (default 10 ms MaxBatchDelay)
// with the committer, for parallel appenders of ~200-byte messages. Both
// run the same append op; the Batch variant skips the meta totals, which
// only flatters it. msgs/commit is appends per fsynced transaction.
//
//	go test -run='^$' -bench=Append -benchtime=2000x ./relay/store/
func BenchmarkAppend(b *testing.B) {
	for _, mode := range []string{"db.Batch", "committer"} {
		for _, conc := range []int{1, 4, 16, 64, 256} {
			b.Run(fmt.Sprintf("%s/writers=%d", mode, conc), func(b *testing.B) {
				benchAppend(b, mode, conc)
			})
		}
	}
}

func benchAppend(b *testing.B, mode string, conc int) {
	ctx := context.Background()
	// db.Batch needs the file's writer: the committer's own write-ahead
	// log (it keeps a write transaction open) is off there.
	s := openTest(b, Options{MaxMessagesPerUAID: 1 << 30, NoWAL: mode == "db.Batch"})
	for w := range conc {
		mustRegister(b, s, benchUAID(w), chid(1))
	}
	data := []byte(strings.Repeat("x", 200))

	var (
		mu          sync.Mutex
		lastTx      *bolt.Tx
		batchCommit int
	)
	batchAppend := func(m Message) error {
		apply, _, err := s.appendOp(&m)
		if err != nil {
			return err
		}
		return s.db.Batch(func(tx *bolt.Tx) error {
			mu.Lock()
			if tx != lastTx {
				lastTx = tx
				batchCommit++
			}
			mu.Unlock()
			err := apply(s.newTxn(tx, nil))
			if r := (rejection{}); errors.As(err, &r) {
				return nil
			}
			return err
		})
	}

	commits0 := s.nCommits.Load()
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for w := range conc {
		wg.Go(func() {
			m := Message{UAID: benchUAID(w), Channel: chid(1), TTL: time.Hour, Data: data}
			for next.Add(1) <= int64(b.N) {
				var err error
				if mode == "committer" {
					_, err = s.Append(ctx, m)
				} else {
					err = batchAppend(m)
				}
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	commits := int(s.nCommits.Load() - commits0)
	if mode != "committer" {
		commits = batchCommit
	}
	b.ReportMetric(float64(b.N)/float64(max(commits, 1)), "msgs/commit")
}

func benchUAID(w int) push.UAID { return push.UAID{0xbe, byte(w >> 8), byte(w)} }

// BenchmarkOpenLarge times Open of a store holding many waiting messages.
// The fill is slow, so it runs only when PUSHRELAY_STORE_BENCH_MSGS is set
// (e.g. 1000000; spread over devices of 1000 messages each).
//
//	PUSHRELAY_STORE_BENCH_MSGS=1000000 go test -run='^$' -bench=OpenLarge -benchtime=5x ./relay/store/
func BenchmarkOpenLarge(b *testing.B) {
	n, _ := strconv.Atoi(os.Getenv("PUSHRELAY_STORE_BENCH_MSGS"))
	if n <= 0 {
		b.Skip("set PUSHRELAY_STORE_BENCH_MSGS to run")
	}
	path := filepath.Join(b.TempDir(), "store.db")
	start := time.Now()
	benchFill(b, path, n)
	fi, _ := os.Stat(path)
	b.Logf("filled %d messages (%d MB) in %v", n, fi.Size()>>20, time.Since(start).Round(time.Millisecond))

	b.Run("store.Open", func(b *testing.B) {
		for b.Loop() {
			s, err := Open(Options{Path: path})
			if err != nil {
				b.Fatal(err)
			}
			if st, _ := s.Stats(); st.Waiting != int64(n) {
				b.Fatalf("waiting %d", st.Waiting)
			}
			s.Close()
		}
	})
	// The same file opened by bare bbolt, with our freelist setting and
	// with the freelist persisted (bbolt's default).
	for _, noFreelistSync := range []bool{true, false} {
		b.Run(fmt.Sprintf("bolt.Open/NoFreelistSync=%v", noFreelistSync), func(b *testing.B) {
			o := &bolt.Options{NoFreelistSync: noFreelistSync, FreelistType: bolt.FreelistMapType}
			db, err := bolt.Open(path, 0o600, o) // converts the file once
			if err != nil {
				b.Fatal(err)
			}
			db.Close()
			for b.Loop() {
				db, err := bolt.Open(path, 0o600, o)
				if err != nil {
					b.Fatal(err)
				}
				db.Close()
			}
		})
	}
}

// benchFill writes n messages through the store's own append op, 10k per
// unsynced transaction, without the committer. Messages arrive round-robin
// over devices of 1000 messages each, as interleaved traffic would.
func benchFill(b *testing.B, path string, n int) {
	s, err := Open(Options{Path: path})
	if err != nil {
		b.Fatal(err)
	}
	s.Close()
	db, err := bolt.Open(path, 0o600, &bolt.Options{NoSync: true, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	fs := &Store{now: time.Now, maxMessages: 1000, maxChannels: 1000}
	data := []byte(strings.Repeat("x", 200))
	const perDevice, perTx = 1000, 10000
	devices := (n + perDevice - 1) / perDevice
	run := func(fn func(t *txn) error) {
		err := db.Update(func(tx *bolt.Tx) error {
			t := fs.newTxn(tx, nil)
			if err := fn(t); err != nil {
				return err
			}
			fs.tot = fs.tot.add(t.delta)
			return putTotals(t.meta, fs.tot)
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	run(func(t *txn) error {
		for d := range devices {
			u := benchUAID(d)
			if err := t.channels.Put(channelKey(u, chid(1)), encodeChannel(Channel{Created: time.Now()})); err != nil {
				return err
			}
			if err := t.putDevice(Device{UAID: u, Created: time.Now(), Channels: 1}); err != nil {
				return err
			}
			t.delta.devices++
			t.delta.channels++
		}
		return nil
	})
	for done := 0; done < n; {
		run(func(t *txn) error {
			for i := 0; i < perTx && done < n; i, done = i+1, done+1 {
				m := Message{UAID: benchUAID(done % devices), Channel: chid(1), TTL: 24 * time.Hour, Data: data}
				apply, _, err := fs.appendOp(&m)
				if err != nil {
					return err
				}
				if err := apply(t); err != nil {
					return err
				}
			}
			return nil
		})
	}
}

// BenchmarkHelloed measures what recording upstream hellos writes, against
// Touch, which rewrites the device record (here with a 200-byte wake blob,
// as a woken device has) and keeps the same hello order: the other place
// the time could live. 10,000 devices with an upstream identity, helloed
// at scattered times, are helloed again oldest first, 1 or 100 a commit
// (a poll round); pages/commit is the pages bbolt wrote per commit (4 KiB
// each, the meta page included), the flash wear a poll round causes.
//
//	go test -run='^$' -bench=Helloed -benchtime=200x ./relay/store/
//
// On the 2-core build machine (December 2026): one hello a commit writes
// 11.0 pages either way (the trees' depth, the freelist and the meta
// page); 100 a commit, 100.3 pages with Helloed against 132.0 with the
// time in the device record. Most of the saving is the batching: 100
// hellos in one commit write about what 9 single ones do.
func BenchmarkHelloed(b *testing.B) {
	const devices = 10000
	for _, mode := range []string{"Helloed", "Touch"} {
		for _, per := range []int{1, 100} {
			b.Run(fmt.Sprintf("%s/devices=%d", mode, per), func(b *testing.B) {
				ctx := context.Background()
				clk := newClock()
				s := openTest(b, Options{Now: clk.Now})
				wake := []byte(strings.Repeat("w", 200))
				us := make([]push.UAID, devices)
				for i := range us {
					us[i] = benchUAID(i)
				}
				for i := 0; i < devices; i += 500 {
					err := s.do(ctx, func(t *txn) error {
						for j, u := range us[i:min(i+500, devices)] {
							// Helloed at scattered times, so that the
							// oldest are scattered over the key space.
							at := timeNanos(t.now) - uint64((i+j)*7919%devices)*uint64(time.Second)
							if err := t.putDevice(Device{UAID: u, Created: t.now, LastSeen: t.now, Wake: wake}); err != nil {
								return err
							}
							var up push.UAID
							copy(up[:], u[:])
							up[0] ^= 0xff
							if err := t.upstream.Put(deviceKey(u), upstreamValue(up, at)); err != nil {
								return err
							}
							if err := t.upstreamRev.Put(deviceKey(up), deviceKey(u)); err != nil {
								return err
							}
							if err := t.hellos.Put(helloKey(at, u), nil); err != nil {
								return err
							}
						}
						return nil
					})
					if err != nil {
						b.Fatal(err)
					}
				}
				st := s.db.Stats()
				pages := st.TxStats.GetWrite()
				b.ResetTimer()
				for range b.N {
					clk.Add(time.Second)
					// The link hellos the longest unhelloed first.
					b.StopTimer()
					ids, err := s.HelloedBefore(clk.Now(), per)
					if err != nil || len(ids) != per {
						b.Fatal(len(ids), err)
					}
					batch := make([]push.UAID, per)
					for j, id := range ids {
						batch[j] = id.Device
					}
					b.StartTimer()
					if mode == "Helloed" {
						_, err = s.Helloed(ctx, clk.Now(), batch...)
					} else {
						err = s.do(ctx, func(t *txn) error {
							for _, u := range batch {
								// The other design: the time in the
								// device record, the same hello order.
								id, _ := decodeUpstream(u[:], t.upstream.Get(u[:]))
								if err := t.moveHello(u, timeNanos(id.Helloed), timeNanos(t.now)); err != nil {
									return err
								}
								d, ok, err := t.device(u)
								if err != nil || !ok {
									return fmt.Errorf("device %v: %v %w", u, ok, err)
								}
								d.LastSeen = t.now
								if err := t.putDevice(d); err != nil {
									return err
								}
							}
							return nil
						})
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				st = s.db.Stats()
				b.ReportMetric(float64(st.TxStats.GetWrite()-pages)/float64(b.N), "pages/commit")
			})
		}
	}
}
