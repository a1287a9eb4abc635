package wal

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// openLogged opens the log in dir, what it logs going to logs (emptied
// first).
func openLogged(t *testing.T, dir string, o Options, logs *bytes.Buffer) *Log {
	t.Helper()
	logs.Reset()
	o.Logger = slog.New(slog.NewTextHandler(logs, nil))
	l, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// reservedLog opens a log in dir whose segments are reserved, or skips
// the test where the filesystem cannot preallocate.
func reservedLog(t *testing.T, dir string, o Options, logs *bytes.Buffer) *Log {
	t.Helper()
	l := openLogged(t, dir, o, logs)
	if err := l.Append(l.LastIndex()+1, entry(l.LastIndex()+1)); err != nil {
		t.Fatal(err)
	}
	if l.noReserve {
		l.Close()
		t.Skipf("the filesystem of %s cannot preallocate", dir)
	}
	return l
}

// fileSize is path's size.
func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// lastSegPath is the path of l's open segment.
func lastSegPath(l *Log) string {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.segs[len(l.segs)-1].path
}

// recordsSize is the size of the records of l's open segment.
func recordsSize(l *Log) int64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.segs[len(l.segs)-1].size
}

// A zero header never decodes as a record: recovery may take zeros for
// the end of the records.
func TestZeroHeaderIsNoRecord(t *testing.T) {
	for n := 0; n <= 64; n++ {
		if _, err := decodeRecord(make([]byte, headerSize+n)); err == nil {
			t.Fatalf("%d zero bytes decode as a record", headerSize+n)
		}
	}
}

// A segment is reserved up to SegmentBytes as it begins, Appends write
// inside it, a crash (no Close) leaves the reserved zeros, which the next
// Open takes for the end of the records without a word (nothing was
// torn), and Close gives the space back.
func TestReservedSegmentAcrossCrash(t *testing.T) {
	dir := t.TempDir()
	o := Options{SegmentBytes: 64 << 10}
	var logs bytes.Buffer
	l := reservedLog(t, dir, o, &logs)
	appendRange(t, l, 2, 50)
	path := lastSegPath(l)
	if got := fileSize(t, path); got != o.SegmentBytes {
		t.Fatalf("segment %d bytes, want reserved %d", got, o.SegmentBytes)
	}
	end := recordsSize(l)
	// The crash: the files as they are, the Log abandoned.
	crashed := copyDir(t, dir)
	l.Close()
	if got := fileSize(t, path); got != end {
		t.Fatalf("after Close the segment is %d bytes, want its records' %d", got, end)
	}

	l2 := openLogged(t, crashed, o, &logs)
	check(t, l2, 1, 50)
	if logs.Len() > 0 {
		t.Fatalf("Open after a crash with reserved space logged:\n%s", logs.String())
	}
	appendRange(t, l2, 51, 120)
	if err := l2.Close(); err != nil {
		t.Fatal(err)
	}
	l3 := openT(t, crashed, o)
	check(t, l3, 1, 120)
}

// An Append a crash tore inside reserved space (its bytes partly on disk,
// zeros after) is cut as before, and the space reserved again.
func TestTornAppendInReservedSpace(t *testing.T) {
	dir := t.TempDir()
	o := Options{SegmentBytes: 64 << 10}
	var logs bytes.Buffer
	l := reservedLog(t, dir, o, &logs)
	appendRange(t, l, 2, 30)
	path := lastSegPath(l)
	end := recordsSize(l)
	crashed := copyDir(t, dir)
	l.Close()
	// Half of a record that never returned, at the end of the records.
	torn := appendRecord(nil, 31, entry(31), true)
	f, err := os.OpenFile(filepath.Join(crashed, filepath.Base(path)), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(torn[:len(torn)/2], end); err != nil {
		t.Fatal(err)
	}
	f.Close()

	// Read-only, the torn bytes are what the Append wrote, not the
	// reserved space after them.
	r, f2, err := OpenReadOnly(crashed, Options{})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	if f2.TornOffset != end || f2.TornBytes < 1 || f2.TornBytes > int64(len(torn)/2) {
		t.Fatalf("findings %+v: want at most %d torn bytes at %d", f2, len(torn)/2, end)
	}

	l2 := openLogged(t, crashed, o, &logs)
	check(t, l2, 1, 30)
	if !bytes.Contains(logs.Bytes(), []byte("cut a torn record")) {
		t.Fatalf("the torn Append was not cut (logged):\n%s", logs.String())
	}
	p := filepath.Join(crashed, filepath.Base(path))
	if err := endsAt(p, end); err != nil {
		t.Fatal(err)
	}
	if got := fileSize(t, p); got != o.SegmentBytes {
		t.Fatalf("after the cut the segment is %d bytes, want reserved %d again", got, o.SegmentBytes)
	}
	appendRange(t, l2, 31, 60)
	l2.Close()
	check(t, openT(t, crashed, o), 1, 60)
}

// A segment reserved with a larger SegmentBytes and left by a crash
// becomes an earlier segment once a smaller SegmentBytes begins the next:
// its zeros end its records there too.
func TestReservedEarlierSegment(t *testing.T) {
	dir := t.TempDir()
	var logs bytes.Buffer
	l := reservedLog(t, dir, Options{SegmentBytes: 256 << 10}, &logs)
	appendRange(t, l, 2, 40)
	crashed := copyDir(t, dir)
	l.Close()

	small := Options{SegmentBytes: 1 << 10}
	l2 := openT(t, crashed, small)
	appendRange(t, l2, 41, 200) // past 1 KiB: later segments begin
	l2.mu.RLock()
	n := len(l2.segs)
	l2.mu.RUnlock()
	if n < 2 {
		t.Fatalf("%d segments, want the reserved one and later ones", n)
	}
	crashed2 := copyDir(t, crashed)
	l2.Close()
	check(t, openT(t, crashed2, small), 1, 200)

	// Zeros where records were, in an earlier segment, are still damage:
	// the next segment's first index shows the gap.
	des, err := os.ReadDir(crashed2)
	if err != nil {
		t.Fatal(err)
	}
	first := filepath.Join(crashed2, des[0].Name())
	b, err := os.ReadFile(first)
	if err != nil {
		t.Fatal(err)
	}
	sz := int64(len(bytes.TrimRight(b, "\x00")))
	if err := os.WriteFile(first, append(b[:sz/2:sz/2], make([]byte, int64(len(b))-sz/2)...), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(crashed2, small); err == nil {
		t.Fatal("records zeroed at the end of an earlier segment were not found")
	}
}

// Where the filesystem cannot preallocate (noReserve), segments grow as
// they are written and recover as before.
func TestUnreservedSegmentsGrow(t *testing.T) {
	dir := t.TempDir()
	o := Options{SegmentBytes: 4 << 10}
	l := openT(t, dir, o)
	l.noReserve = true
	appendRange(t, l, 1, 200)
	l.mu.RLock()
	segs := slices.Clone(l.segs)
	l.mu.RUnlock()
	if len(segs) < 2 {
		t.Fatalf("%d segments", len(segs))
	}
	for _, s := range segs {
		if got := fileSize(t, s.path); got != s.size {
			t.Fatalf("%s is %d bytes, its records %d: space was reserved", s.path, got, s.size)
		}
	}
	crashed := copyDir(t, dir)
	l.Close()
	check(t, openT(t, crashed, o), 1, 200)
}
