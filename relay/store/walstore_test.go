package store

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pushrelay/pushrelay/relay/push"
)

// dumpTx renders every bucket a record can name: rows and sequences.
func dumpTx(tx *bolt.Tx) map[string]string {
	out := map[string]string{}
	for _, name := range redoBuckets {
		b := tx.Bucket(name)
		if b == nil {
			continue
		}
		out[string(name)+" seq"] = fmt.Sprint(b.Sequence())
		b.ForEach(func(k, v []byte) error {
			if string(name) == string(bucketMeta) && (string(k) == string(metaWALIndex) || string(k) == string(metaClean)) {
				return nil // differ with the checkpoints
			}
			out[string(name)+" "+string(k)] = string(v)
			return nil
		})
	}
	return out
}

// dump is dumpTx of what s's readers see.
func dump(t *testing.T, s *Store) map[string]string {
	t.Helper()
	var d map[string]string
	if err := s.view(func(tx *bolt.Tx) error { d = dumpTx(tx); return nil }); err != nil {
		t.Fatal(err)
	}
	return d
}

// dumpFile is dumpTx of the file at path (a copy of it: a store may hold
// its lock).
func dumpFile(t *testing.T, path string) map[string]string {
	t.Helper()
	cp := filepath.Join(t.TempDir(), "dump.db")
	copyFile(t, path, cp)
	db, err := bolt.Open(cp, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var d map[string]string
	db.View(func(tx *bolt.Tx) error { d = dumpTx(tx); return nil })
	return d
}

func diffDumps(t *testing.T, got, want map[string]string) {
	t.Helper()
	if maps.Equal(got, want) {
		return
	}
	n := 0
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if got[k] != want[k] && n < 10 {
			t.Errorf("%q: %q, want %q", k, got[k], want[k])
			n++
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok && n < 10 {
			t.Errorf("%q: %q, want none", k, got[k])
			n++
		}
	}
	t.Fatalf("dumps differ (%d and %d rows)", len(got), len(want))
}

// copyStore copies the file and its log directory to dir, as they are on
// disk now (the state a crash would leave, the page cache kept).
func copyStore(t testing.TB, path, dir string) string {
	t.Helper()
	dst := filepath.Join(dir, filepath.Base(path))
	copyFile(t, path, dst)
	es, err := os.ReadDir(path + walSuffix)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dst+walSuffix, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		copyFile(t, filepath.Join(path+walSuffix, e.Name()), filepath.Join(dst+walSuffix, e.Name()))
	}
	return dst
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	r, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(w, r); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// walWorkload makes writes of every kind: registrations, appends with
// topics and origins, acks, deletes, unregisters, device deletes,
// broadcasts, upstream identities and an expiry sweep.
func walWorkload(t testing.TB, s *Store, clock *fakeClock, round int) {
	t.Helper()
	ctx := context.Background()
	for d := range 6 {
		u := uaid(byte(10*round + d))
		mustRegister(t, s, u, chid(1))
		mustRegister(t, s, u, chid(2))
		var seqs []uint64
		for i := range 8 {
			m := msg(u, chid(byte(1+i%2)), fmt.Sprintf("r%d d%d m%d", round, d, i))
			if i%3 == 0 {
				m.Topic = "t"
			}
			if i%4 == 1 {
				m.Origin = push.ParentOrigin([]byte{byte(round), byte(d), byte(i)})
			}
			if i == 5 {
				m.TTL = time.Second
			}
			seqs = append(seqs, mustAppend(t, s, m).Seq)
		}
		if _, err := s.Ack(ctx, u, seqs[1], seqs[2]); err != nil {
			t.Fatal(err)
		}
		if d == 2 {
			if _, err := s.Unregister(ctx, u, chid(2)); err != nil {
				t.Fatal(err)
			}
		}
		if d == 3 {
			if err := s.DeleteDevice(ctx, u); err != nil {
				t.Fatal(err)
			}
		}
		if d == 4 {
			if err := s.SetUpstreamID(ctx, u, upuaid(byte(round*10+d)), clock.Now()); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.PutBroadcasts(ctx, map[string]string{fmt.Sprintf("b%d", round): "v1"}); err != nil {
		t.Fatal(err)
	}
	clock.Add(2 * time.Second)
	if _, err := s.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestWALReplay copies a store's file and log while it runs, with no
// checkpoint since it opened, and opens the copy: the log's records
// brought to the checkpointed file give exactly what the store's readers
// saw, counts included.
func TestWALReplay(t *testing.T) {
	clock := newClock()
	path := filepath.Join(t.TempDir(), "store.db")
	s := openTest(t, Options{Path: path, Now: clock.Now, CheckpointInterval: time.Hour, CheckpointBytes: 1 << 30})
	walWorkload(t, s, clock, 0)
	// A checkpoint (a scan asks for one), then more: the copy must
	// skip what the file holds and apply the rest.
	if err := s.EachWake(func(push.UAID, []byte) {}); err != nil {
		t.Fatal(err)
	}
	walWorkload(t, s, clock, 1)
	want := dump(t, s)
	if onFile := dumpFile(t, path); maps.Equal(onFile, want) {
		t.Fatal("the file already holds the last batches: no checkpoint was meant to run")
	}
	wantStats, _ := s.Stats()

	cp := copyStore(t, path, t.TempDir())
	c := openTest(t, Options{Path: cp, Now: clock.Now})
	diffDumps(t, dump(t, c), want)
	checkStats(t, c, wantStats)
	checkScanCounts(t, c)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// Closed, the file holds everything.
	diffDumps(t, dumpFile(t, cp), want)
}

// checkScanCounts compares the store's totals with a walk of its rows.
func checkScanCounts(t *testing.T, s *Store) {
	t.Helper()
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	var devices, channels, waiting int64
	s.view(func(tx *bolt.Tx) error {
		devices = int64(keyCount(tx.Bucket(bucketDevices)))
		channels = int64(keyCount(tx.Bucket(bucketChannels)))
		waiting = int64(keyCount(tx.Bucket(bucketMessages)))
		return nil
	})
	if st.Devices != devices || st.Channels != channels || st.Waiting != waiting {
		t.Fatalf("Stats %+v, rows: %d devices, %d channels, %d messages", st, devices, channels, waiting)
	}
}

// TestWALCheckpointWindow is a crash after a checkpoint's commit and
// before the log dropped its records: the records the file holds must be
// skipped at the next open, not applied over later writes (here a
// message acked after them would come back).
func TestWALCheckpointWindow(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "store.db")
	s := openTest(t, Options{Path: path, CheckpointInterval: time.Hour, CheckpointBytes: 1 << 30})
	u := uaid(1)
	mustRegister(t, s, u, chid(1))
	m := mustAppend(t, s, msg(u, chid(1), "acked later"))
	// The log's records of the registration and the append, before any
	// checkpoint dropped them.
	saved := copyStore(t, path, t.TempDir())
	if _, err := s.Ack(ctx, u, m.Seq); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(path + walSuffix); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(saved+walSuffix, path+walSuffix); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, Options{Path: path})
	if ms := mustMessages(t, s, u); len(ms) != 0 {
		t.Fatalf("after a checkpoint's window: %d messages, want the acked one gone", len(ms))
	}
	checkStats(t, s, Stats{Devices: 1, Channels: 1})
	checkScanCounts(t, s)
	// And new writes go on after the file's index.
	mustAppend(t, s, msg(u, chid(1), "next"))
	s.Close()
	s = openTest(t, Options{Path: path})
	if ms := mustMessages(t, s, u); datas(ms) != "next" {
		t.Fatalf("messages %q", datas(ms))
	}
}

// TestWALOpErrorKeepsAnswered: an op's failure rolls back the
// committer's transaction, which held earlier answered batches; they are
// applied again from the log, the failed op's writes are not, and the
// rest of its batch is retried.
func TestWALOpErrorKeepsAnswered(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "store.db")
	s := openTest(t, Options{Path: path, CheckpointInterval: time.Hour, CheckpointBytes: 1 << 30})
	u := uaid(1)
	mustRegister(t, s, u, chid(1))
	first := mustAppend(t, s, msg(u, chid(1), "answered"))
	boom := errors.New("boom")
	err := s.do(ctx, func(t *txn) error {
		if err := t.devices.Put(deviceKey(uaid(9)), []byte("half-written")); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("failing op: %v", err)
	}
	if _, ok, _ := s.Device(uaid(9)); ok {
		t.Fatal("the failed op's write is visible")
	}
	if ms := mustMessages(t, s, u); len(ms) != 1 || ms[0].Seq != first.Seq {
		t.Fatalf("after the rollback: %q", datas(ms))
	}
	second := mustAppend(t, s, msg(u, chid(1), "after"))
	if second.Seq != first.Seq+1 {
		t.Fatalf("seq %d after %d: the sequence did not come back with the log", second.Seq, first.Seq)
	}
	checkScanCounts(t, s)
	cp := copyStore(t, path, t.TempDir())
	c := openTest(t, Options{Path: cp})
	if ms := mustMessages(t, c, u); datas(ms) != "answered,after" {
		t.Fatalf("reopened copy: %q", datas(ms))
	}
}

// TestWALMigrationFromNoLog: a file written without the log (by an older
// build, or with NoWAL) opens with it, keeps its data and goes on; and the
// log left by a store opened with it is applied by one opened without.
func TestWALMigrationFromNoLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openTest(t, Options{Path: path, NoWAL: true})
	u := uaid(1)
	mustRegister(t, s, u, chid(1))
	mustAppend(t, s, msg(u, chid(1), "old"))
	s.Close()
	if _, err := os.Stat(path + walSuffix); !os.IsNotExist(err) {
		t.Fatalf("NoWAL made a log directory: %v", err)
	}
	s = openTest(t, Options{Path: path, CheckpointInterval: time.Hour, CheckpointBytes: 1 << 30})
	mustAppend(t, s, msg(u, chid(1), "new"))
	if got := datas(mustMessages(t, s, u)); got != "old,new" {
		t.Fatalf("with the log: %q", got)
	}
	cp := copyStore(t, path, t.TempDir()) // "new" only in the log
	s.Close()
	c := openTest(t, Options{Path: cp, NoWAL: true})
	if got := datas(mustMessages(t, c, u)); got != "old,new" {
		t.Fatalf("opened without the log: %q", got)
	}
	checkScanCounts(t, c)
}

// TestWALFileHoldsOnlyCheckpoints: between checkpoints the file does not
// change; a scan checkpoints first and sees the latest writes.
func TestWALFileHoldsOnlyCheckpoints(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openTest(t, Options{Path: path, CheckpointInterval: time.Hour, CheckpointBytes: 1 << 30})
	before, _ := os.ReadFile(path)
	u := uaid(1)
	mustRegister(t, s, u, chid(1))
	for range 20 {
		mustAppend(t, s, msg(u, chid(1), "x"))
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Fatal("the file changed without a checkpoint")
	}
	n := 0
	if err := s.EachChannel(func(push.UAID, push.ChannelID) { n++ }); err != nil || n != 1 {
		t.Fatalf("EachChannel: %d channels, %v", n, err)
	}
	if d := dumpFile(t, path); d["messages seq"] != "20" {
		t.Fatalf("the file after the scan's checkpoint: messages sequence %s, want 20", d["messages seq"])
	}
}

// TestWALAnswersAfterAppend: a batch's callers are answered, and its
// messages handed on, only once the log's append (its fdatasync) has
// returned; a failed append answers them with its error and leaves
// nothing of the batch, while the batches before it stay.
func TestWALAnswersAfterAppend(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		path := filepath.Join(t.TempDir(), "store.db")
		s := openTest(t, Options{Path: path, CheckpointInterval: time.Hour, CheckpointBytes: 1 << 30})
		u := uaid(1)
		mustRegister(t, s, u, chid(1))
		mustAppend(t, s, msg(u, chid(1), "before"))
		var stored atomic.Int32
		s.OnStored(func(ms []Message) { stored.Add(int32(len(ms))) })

		release := make(chan error)
		s.w.appendHook = func(uint64) error { return <-release }
		done := make(chan error, 1)
		go func() {
			_, err := s.Append(ctx, msg(u, chid(1), "held"))
			done <- err
		}()
		synctest.Wait()
		select {
		case err := <-done:
			t.Fatalf("Append answered (%v) while the log's append had not returned", err)
		default:
		}
		if stored.Load() != 0 {
			t.Fatal("OnStored ran before the log's append returned")
		}
		release <- nil
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // OnStored runs after the answers
		if stored.Load() != 1 {
			t.Fatalf("OnStored saw %d messages", stored.Load())
		}

		full := fmt.Errorf("write: %w", syscall.ENOSPC)
		go func() {
			_, err := s.Append(ctx, msg(u, chid(1), "failed"))
			done <- err
		}()
		release <- full
		if err := <-done; !errors.Is(err, syscall.ENOSPC) || !IsNoSpace(err) {
			t.Fatalf("Append on a failed log append: %v", err)
		}
		s.w.appendHook = nil
		mustAppend(t, s, msg(u, chid(1), "after"))
		if got := datas(mustMessages(t, s, u)); got != "before,held,after" {
			t.Fatalf("messages %q", got)
		}
		checkScanCounts(t, s)
		cp := copyStore(t, path, t.TempDir())
		c := openTest(t, Options{Path: cp})
		if got := datas(mustMessages(t, c, u)); got != "before,held,after" {
			t.Fatalf("reopened: %q", got)
		}
		c.Close()
		s.Close()
	})
}

// TestWALOfAnotherFile: a log left beside another file (the store
// deleted and made afresh, a salvaged copy put in its place) is not
// applied to it.
func TestWALOfAnotherFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openTest(t, Options{Path: path, CheckpointInterval: time.Hour, CheckpointBytes: 1 << 30})
	mustRegister(t, s, uaid(1), chid(1))
	mustAppend(t, s, msg(uaid(1), chid(1), "old file's"))
	crashed := copyStore(t, path, t.TempDir()) // records not in the file
	crashed2 := copyStore(t, path, t.TempDir())
	s.Close()

	// A new file beside the log.
	if err := os.Remove(crashed); err != nil {
		t.Fatal(err)
	}
	c := openTest(t, Options{Path: crashed})
	checkStats(t, c, Stats{})
	mustRegister(t, c, uaid(2), chid(1))
	c.Close()
	c = openTest(t, Options{Path: crashed})
	checkStats(t, c, Stats{Devices: 1, Channels: 1})
	c.Close()

	// Another file with its own epoch (as Salvage's copy has).
	other := filepath.Join(t.TempDir(), "other.db")
	o := openTest(t, Options{Path: other})
	o.Close()
	copyFile(t, other, crashed2)
	c = openTest(t, Options{Path: crashed2})
	checkStats(t, c, Stats{})
}

// TestWALMigrationFromMainFile opens a file written by the build before
// the write-ahead log (testdata/store-2ca8dd4.db.gz: commit 2ca8dd4's
// store.Open, three devices of four messages, the first device's first
// acked, closed cleanly): it opens with the log, reads and writes, and
// what it writes survives a reopen from the log alone.
func TestWALMigrationFromMainFile(t *testing.T) {
	f, err := os.Open("testdata/store-2ca8dd4.db.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "store.db")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s := openTest(t, Options{Path: path, CheckpointInterval: time.Hour, CheckpointBytes: 1 << 30})
	checkStats(t, s, Stats{Devices: 3, Channels: 3, Waiting: 11})
	if got := datas(mustMessages(t, s, uaid(0))); got != "d0 m1,d0 m2,d0 m3" {
		t.Fatalf("device 0: %q", got)
	}
	m := mustAppend(t, s, msg(uaid(1), chid(1), "new"))
	if m.Seq != 13 {
		t.Fatalf("seq %d after 12", m.Seq)
	}
	if _, err := s.Ack(context.Background(), uaid(2), 9); err != nil {
		t.Fatal(err)
	}
	crashed := copyStore(t, path, t.TempDir()) // the file as main left it, and the log
	s.Close()
	for _, p := range []string{path, crashed} {
		c := openTest(t, Options{Path: p})
		checkStats(t, c, Stats{Devices: 3, Channels: 3, Waiting: 11})
		if got := datas(mustMessages(t, c, uaid(1))); got != "d1 m0,d1 m1,d1 m2,d1 m3,new" {
			t.Fatalf("%s: device 1: %q", p, got)
		}
		checkScanCounts(t, c)
		c.Close()
	}
}

// TestWALTornTail: a crash in the middle of an append leaves part of its
// record at the log's tail; that batch was never answered, and the store
// opens with every batch before it.
func TestWALTornTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openTest(t, Options{Path: path, CheckpointInterval: time.Hour, CheckpointBytes: 1 << 30})
	u := uaid(1)
	mustRegister(t, s, u, chid(1))
	for i := range 5 {
		mustAppend(t, s, msg(u, chid(1), fmt.Sprint(i)))
	}
	// The record of one more append, cut short, at the end of the last
	// segment: what its write left when the process died.
	clean := copyStore(t, path, t.TempDir())
	mustAppend(t, s, msg(u, chid(1), "torn"))
	whole := copyStore(t, path, t.TempDir())
	s.Close()
	segs, _ := filepath.Glob(filepath.Join(clean+walSuffix, "*.wal"))
	wholeSegs, _ := filepath.Glob(filepath.Join(whole+walSuffix, "*.wal"))
	if len(segs) != 1 || len(wholeSegs) != 1 {
		t.Fatalf("segments %v %v", segs, wholeSegs)
	}
	before, _ := os.ReadFile(segs[0])
	after, _ := os.ReadFile(wholeSegs[0])
	// The records only, not the space reserved after them.
	before, after = before[:recordsEnd(t, segs[0])], after[:recordsEnd(t, wholeSegs[0])]
	if len(after) <= len(before) {
		t.Fatal("the last append wrote nothing")
	}
	for _, cut := range []int{1, (len(after) - len(before)) / 2, len(after) - len(before) - 1} {
		if err := os.WriteFile(segs[0], after[:len(before)+cut], 0o600); err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		p := copyStore(t, clean, dir)
		c := openTest(t, Options{Path: p})
		if got := datas(mustMessages(t, c, u)); got != "0,1,2,3,4" {
			t.Fatalf("cut %d bytes into the last record: %q", cut, got)
		}
		checkScanCounts(t, c)
		mustAppend(t, c, msg(u, chid(1), "next"))
		c.Close()
	}
}
