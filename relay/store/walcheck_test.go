package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pushrelay/pushrelay/relay/wal"
)

// treeBytes returns the content of path and of every file in its log
// directory, by name.
func treeBytes(t *testing.T, path string) map[string][]byte {
	t.Helper()
	m := map[string][]byte{}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m[filepath.Base(path)] = b
	es, err := os.ReadDir(path + walSuffix)
	if err != nil {
		return m
	}
	for _, e := range es {
		b, err := os.ReadFile(filepath.Join(path+walSuffix, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m["wal/"+e.Name()] = b
	}
	return m
}

// verifyWALUnchanged runs VerifyWAL on path and checks that the file and
// its log are byte for byte as they were.
func verifyWALUnchanged(t *testing.T, path string, apply bool) (WALReport, error) {
	t.Helper()
	before := treeBytes(t, path)
	rep, err := VerifyWAL(path, 0, apply)
	after := treeBytes(t, path)
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range before {
			if !yield(k) {
				return
			}
		}
	}) {
		if !bytes.Equal(before[name], after[name]) {
			t.Fatalf("VerifyWAL changed %s", name)
		}
	}
	if len(after) != len(before) {
		t.Fatalf("VerifyWAL changed the files: %d before, %d after", len(before), len(after))
	}
	t.Logf("VerifyWAL: %+v, %v", rep, err)
	return rep, err
}

// crashedWithLog returns a copy of a store, as a crash would leave it,
// whose file holds two devices and whose log holds n more appends (n
// records), and the file's epoch.
func crashedWithLog(t *testing.T, n int) (string, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "store.db")
	s := openTest(t, Options{Path: path, CheckpointInterval: time.Hour, CheckpointBytes: 1 << 30})
	mustRegister(t, s, uaid(1), chid(1))
	mustRegister(t, s, uaid(2), chid(1))
	if err := s.scan(func(*bolt.Tx) error { return nil }); err != nil { // a checkpoint
		t.Fatal(err)
	}
	for i := range n {
		mustAppend(t, s, msg(uaid(byte(1+i%2)), chid(1), strings.Repeat("m", 100)))
	}
	epoch := s.Epoch()
	return copyStore(t, path, t.TempDir()), epoch
}

// lastSegment returns the path of the log's last segment file.
func lastSegment(t *testing.T, path string) string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(path+walSuffix, "*.wal"))
	if err != nil || len(m) == 0 {
		t.Fatalf("no segment in %s: %v", path+walSuffix, err)
	}
	slices.Sort(m)
	return m[len(m)-1]
}

// recordsEnd is where the records of the log segment at seg end (relay/wal
// reserves space ahead of its Appends: a crashed log's file is longer).
func recordsEnd(t *testing.T, seg string) int64 {
	t.Helper()
	end, err := wal.RecordsEnd(seg)
	if err != nil {
		t.Fatal(err)
	}
	return end
}

// TestVerifyWAL: the records the file lacks are counted, decoded and
// applied (and rolled back), and nothing in the data dir changes; the
// store then opens with them.
func TestVerifyWAL(t *testing.T) {
	const n = 12
	cp, _ := crashedWithLog(t, n)
	for _, apply := range []bool{true, false} {
		rep, err := verifyWALUnchanged(t, cp, apply)
		if err != nil || !rep.Present || rep.Pending != n || rep.PendingBytes == 0 || rep.Other != 0 || rep.TornBytes != 0 || len(rep.Problems) != 0 {
			t.Fatalf("apply %v: %+v, %v; want %d pending records and no problem", apply, rep, err, n)
		}
	}
	s := openTest(t, Options{Path: cp})
	checkStats(t, s, Stats{Devices: 2, Channels: 2, Waiting: n})
	if _, err := VerifyWAL(cp, 50*time.Millisecond, true); !errors.Is(err, ErrLocked) {
		t.Fatalf("VerifyWAL of a store in use: %v", err)
	}
	s.Close()
	rep, err := verifyWALUnchanged(t, cp, true)
	if err != nil || !rep.Present || rep.Pending != 0 {
		t.Fatalf("after the replay: %+v, %v", rep, err)
	}

	// Without a log.
	if err := os.RemoveAll(cp + walSuffix); err != nil {
		t.Fatal(err)
	}
	if rep, err := VerifyWAL(cp, 0, true); err != nil || rep.Present {
		t.Fatalf("no log: %+v, %v", rep, err)
	}
}

// A torn append at the tail is what the next start cuts, not damage.
func TestVerifyWALTornTail(t *testing.T) {
	const n = 12
	cp, _ := crashedWithLog(t, n)
	seg := lastSegment(t, cp)
	if err := os.Truncate(seg, recordsEnd(t, seg)-5); err != nil {
		t.Fatal(err)
	}
	rep, err := verifyWALUnchanged(t, cp, true)
	if err != nil || rep.Pending != n-1 || rep.TornFile != seg || rep.TornBytes == 0 {
		t.Fatalf("%+v, %v; want %d pending and a torn tail in %s", rep, err, n-1, seg)
	}
	s := openTest(t, Options{Path: cp})
	checkStats(t, s, Stats{Devices: 2, Channels: 2, Waiting: n - 1})
}

// A damaged record with acknowledged records after it is damage: the
// next start would refuse the log.
func TestVerifyWALDamaged(t *testing.T) {
	cp, _ := crashedWithLog(t, 12)
	seg := lastSegment(t, cp)
	f, err := os.OpenFile(seg, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("junk"), recordsEnd(t, seg)/2); err != nil {
		t.Fatal(err)
	}
	f.Close()
	rep, err := verifyWALUnchanged(t, cp, true)
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "write-ahead log") || rep.Pending == 0 || rep.Pending >= 12 {
		t.Fatalf("%+v, %v; want damage, and the records before it", rep, err)
	}
	if _, err := Open(Options{Path: cp}); err == nil {
		t.Fatal("Open accepted the damaged log")
	}
}

// Records left by another file are counted, not applied, not damage.
func TestVerifyWALOfAnotherFile(t *testing.T) {
	cp, _ := crashedWithLog(t, 5)
	other := filepath.Join(t.TempDir(), "other.db")
	o := openTest(t, Options{Path: other})
	o.Close()
	copyFile(t, other, cp)
	rep, err := verifyWALUnchanged(t, cp, true)
	// The two registrations' records too: the checkpoint left them in
	// the log (it is emptied every 8 MiB).
	if err != nil || rep.Other != 7 || rep.Pending != 0 {
		t.Fatalf("%+v, %v; want 7 records of another file", rep, err)
	}
}

// A record whole in the log (its checksum right) whose writes do not
// decode, or that misses records before it, is damage.
func TestVerifyWALBadRecord(t *testing.T) {
	cp, epoch := crashedWithLog(t, 3)
	l, err := wal.Open(cp+walSuffix, wal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var r redo
	r.reset(epoch)
	u := uaid(1)
	r.put(0, u[:], []byte("not a device row")) // bucket 0: devices
	if err := l.Append(l.LastIndex()+1, r.b); err != nil {
		t.Fatal(err)
	}
	l.Close()
	rep, err := verifyWALUnchanged(t, cp, true)
	if !errors.Is(err, ErrDamaged) || rep.Pending != 3 || len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0], "record 6") {
		t.Fatalf("%+v, %v; want record 6 refused after 3 pending", rep, err)
	}

	// Records missing between the file and the log.
	cp, _ = crashedWithLog(t, 3)
	l, err = wal.Open(cp+walSuffix, wal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.TruncateFront(4); err != nil { // the file holds 1 and 2
		t.Fatal(err)
	}
	l.Close()
	rep, err = verifyWALUnchanged(t, cp, true)
	if !errors.Is(err, ErrDamaged) || rep.Pending != 0 || !strings.Contains(rep.Problems[0], "missing") {
		t.Fatalf("%+v, %v; want the missing records", rep, err)
	}
}
