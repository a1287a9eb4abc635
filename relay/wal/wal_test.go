package wal

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// entry is the data the tests store at index i: a few dozen bytes, varying.
func entry(i uint64) []byte {
	return fmt.Appendf(nil, "entry %d %s", i, strings.Repeat("x", int(i%53)))
}

func openT(t testing.TB, dir string, o Options) *Log {
	t.Helper()
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	}
	l, err := Open(dir, o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// appendRange appends entries [from, to] in batches of 1, 2, 3, ... .
func appendRange(t testing.TB, l *Log, from, to uint64) {
	t.Helper()
	size := uint64(1)
	for i := from; i <= to; {
		var batch [][]byte
		for j := i; j < i+size && j <= to; j++ {
			batch = append(batch, entry(j))
		}
		if err := l.Append(i, batch...); err != nil {
			t.Fatalf("Append(%d, %d entries): %v", i, len(batch), err)
		}
		i += uint64(len(batch))
		size = size%7 + 1
	}
}

// check asserts the log holds exactly entry(first..last).
func check(t testing.TB, l *Log, first, last uint64) {
	t.Helper()
	if f, g := l.FirstIndex(), l.LastIndex(); f != first || g != last {
		t.Fatalf("FirstIndex, LastIndex = %d, %d; want %d, %d", f, g, first, last)
	}
	if last == 0 {
		if _, err := l.Get(1); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get(1) of an empty log: %v", err)
		}
		return
	}
	for i := first; i <= last; i++ {
		b, err := l.Get(i)
		if err != nil {
			t.Fatalf("Get(%d): %v", i, err)
		}
		if !bytes.Equal(b, entry(i)) {
			t.Fatalf("Get(%d) = %q", i, b)
		}
	}
	for _, i := range []uint64{0, first - 1, last + 1, last + 100} {
		if _, err := l.Get(i); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get(%d) outside [%d, %d]: %v, want ErrNotFound", i, first, last, err)
		}
	}
	for _, from := range []uint64{0, first, (first + last) / 2, last} {
		next := max(from, first)
		err := l.Range(from, func(i uint64, b []byte) error {
			if i != next || !bytes.Equal(b, entry(i)) {
				return fmt.Errorf("Range gave %d %q, want %d", i, b, next)
			}
			next++
			return nil
		})
		if err != nil {
			t.Fatalf("Range(%d): %v", from, err)
		}
		if next != last+1 {
			t.Fatalf("Range(%d) stopped before %d, want after %d", from, next, last)
		}
	}
}

func segFiles(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.wal"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestAppendGetRangeAcrossSegments(t *testing.T) {
	dir := t.TempDir()
	o := Options{SegmentBytes: 1024}
	l := openT(t, dir, o)
	check(t, l, 0, 0)
	appendRange(t, l, 1, 600)
	check(t, l, 1, 600)
	if n := len(segFiles(t, dir)); n < 20 {
		t.Fatalf("%d segments for 600 entries of 1 KiB segments", n)
	}
	if err := l.Append(600, entry(600)); !errors.Is(err, ErrOutOfOrder) {
		t.Fatalf("Append at the last index: %v", err)
	}
	if err := l.Append(602, entry(602)); !errors.Is(err, ErrOutOfOrder) {
		t.Fatalf("Append past a gap: %v", err)
	}
	stop := errors.New("stop")
	n := 0
	if err := l.Range(1, func(uint64, []byte) error { n++; return stop }); err != stop || n != 1 {
		t.Fatalf("Range with fn failing: %v after %d", err, n)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := l.Get(1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close: %v", err)
	}
	if err := l.Append(601, entry(601)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}

	l = openT(t, dir, o)
	check(t, l, 1, 600)
	appendRange(t, l, 601, 700)
	check(t, l, 1, 700)
}

func TestEmptyLogStartsAnywhere(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{})
	if err := l.Append(0, entry(0)); !errors.Is(err, ErrOutOfOrder) {
		t.Fatalf("Append at 0: %v", err)
	}
	appendRange(t, l, 1000, 1010)
	check(t, l, 1000, 1010)
	l.Close()
	check(t, openT(t, dir, Options{}), 1000, 1010)
}

func TestTruncateFront(t *testing.T) {
	dir := t.TempDir()
	o := Options{SegmentBytes: 1024}
	l := openT(t, dir, o)
	appendRange(t, l, 1, 300)
	before := len(segFiles(t, dir))
	if err := l.TruncateFront(150); err != nil {
		t.Fatal(err)
	}
	check(t, l, 150, 300)
	after := len(segFiles(t, dir))
	if after >= before || after > before/2+2 {
		t.Fatalf("%d segments before, %d after dropping half the entries", before, after)
	}
	if err := l.TruncateFront(100); err != nil { // below first: nothing
		t.Fatal(err)
	}
	check(t, l, 150, 300)
	l.Close()

	l = openT(t, dir, o)
	check(t, l, 150, 300) // the logical first survived
	if err := l.TruncateFront(151); err != nil {
		t.Fatal(err)
	}
	appendRange(t, l, 301, 320)
	check(t, l, 151, 320)
	l.Close()
	l = openT(t, dir, o)
	check(t, l, 151, 320)

	// Past the end: empty, and the next Append starts anywhere.
	if err := l.TruncateFront(321); err != nil {
		t.Fatal(err)
	}
	check(t, l, 0, 0)
	if n := len(segFiles(t, dir)); n != 0 {
		t.Fatalf("%d segments in an emptied log", n)
	}
	appendRange(t, l, 5, 40)
	check(t, l, 5, 40)
	l.Close()
	check(t, openT(t, dir, o), 5, 40)
}

func TestTruncateBack(t *testing.T) {
	dir := t.TempDir()
	o := Options{SegmentBytes: 1024}
	l := openT(t, dir, o)
	appendRange(t, l, 1, 300)
	if err := l.TruncateBack(300); err != nil { // at last: nothing
		t.Fatal(err)
	}
	check(t, l, 1, 300)
	// Into the open segment.
	if err := l.TruncateBack(298); err != nil {
		t.Fatal(err)
	}
	check(t, l, 1, 298)
	// Into a sealed segment, mid-way (sampled offsets).
	if err := l.TruncateBack(123); err != nil {
		t.Fatal(err)
	}
	check(t, l, 1, 123)
	// Raft rewrites the suffix with other data.
	if err := l.Append(124, []byte("other")); err != nil {
		t.Fatal(err)
	}
	if b, err := l.Get(124); err != nil || string(b) != "other" {
		t.Fatalf("Get(124) = %q, %v", b, err)
	}
	if err := l.TruncateBack(123); err != nil {
		t.Fatal(err)
	}
	appendRange(t, l, 124, 200)
	check(t, l, 1, 200)
	l.Close()

	l = openT(t, dir, o)
	check(t, l, 1, 200)
	// To a segment's last entry exactly: the next segment goes whole.
	var lastOfFirst uint64
	{
		l.mu.RLock()
		lastOfFirst = l.segs[0].last()
		l.mu.RUnlock()
	}
	if err := l.TruncateBack(lastOfFirst); err != nil {
		t.Fatal(err)
	}
	check(t, l, 1, lastOfFirst)
	if n := len(segFiles(t, dir)); n != 1 {
		t.Fatalf("%d segments after cutting back to the first one's end", n)
	}
	appendRange(t, l, lastOfFirst+1, 60)
	check(t, l, 1, 60)
	l.Close()
	l = openT(t, dir, o)
	check(t, l, 1, 60)

	// After a TruncateFront, below the first: empty.
	if err := l.TruncateFront(30); err != nil {
		t.Fatal(err)
	}
	if err := l.TruncateBack(29); err != nil {
		t.Fatal(err)
	}
	check(t, l, 0, 0)
	l.Close()
	l = openT(t, dir, o)
	check(t, l, 0, 0)
	appendRange(t, l, 7, 9)
	l.Close()
	check(t, openT(t, dir, o), 7, 9)
}

// buildLog writes entries 1..n (the last Append holding lastBatch entries)
// and returns the last segment's path and where each of its records starts.
func buildLog(t *testing.T, dir string, o Options, n, lastBatch uint64) (string, []int64) {
	t.Helper()
	l := openT(t, dir, o)
	appendRange(t, l, 1, n-lastBatch)
	var batch [][]byte
	for i := n - lastBatch + 1; i <= n; i++ {
		batch = append(batch, entry(i))
	}
	if err := l.Append(n-lastBatch+1, batch...); err != nil {
		t.Fatal(err)
	}
	l.mu.RLock()
	s := l.segs[len(l.segs)-1]
	path, offs := s.path, slices.Clone(s.offs)
	l.mu.RUnlock()
	l.Close()
	return path, offs
}

func copyDir(t *testing.T, from string) string {
	t.Helper()
	to := t.TempDir()
	des, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		b, err := os.ReadFile(filepath.Join(from, de.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, de.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return to
}

// endsAt checks that the segment file at path holds nothing after off:
// it ends there, or only zeros follow (space Open reserved).
func endsAt(path string, off int64) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if int64(len(b)) < off {
		return fmt.Errorf("%s is %d bytes, shorter than %d", path, len(b), off)
	}
	if i := bytes.IndexFunc(b[off:], func(r rune) bool { return r != 0 }); i >= 0 {
		return fmt.Errorf("%s holds bytes at %d, after %d (file %d bytes)", path, off+int64(i), off, len(b))
	}
	return nil
}

// TestTornTailEveryOffset cuts the last record at every byte offset (and
// fills the cut with zeros, as a filesystem may after a power cut): the
// log opens with exactly the entries before it, and takes Appends again.
func TestTornTailEveryOffset(t *testing.T) {
	for _, lastBatch := range []uint64{1, 4} {
		t.Run(fmt.Sprintf("batch%d", lastBatch), func(t *testing.T) {
			o := Options{SegmentBytes: 4096, Logger: slog.New(slog.DiscardHandler)}
			src := t.TempDir()
			const n = 100
			path, offs := buildLog(t, src, o, n, lastBatch)
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			start := offs[len(offs)-1]
			name := filepath.Base(path)
			for cut := start; cut < fi.Size(); cut++ {
				for _, zeros := range []bool{false, true} {
					dir := copyDir(t, src)
					p := filepath.Join(dir, name)
					if err := os.Truncate(p, cut); err != nil {
						t.Fatal(err)
					}
					if zeros {
						if err := os.Truncate(p, fi.Size()); err != nil {
							t.Fatal(err)
						}
					}
					l, err := Open(dir, o)
					if err != nil {
						t.Fatalf("cut at %d (record at %d, file %d), zeros %v: %v", cut, start, fi.Size(), zeros, err)
					}
					check(t, l, 1, n-1)
					if err := endsAt(p, start); err != nil {
						t.Fatalf("cut at %d: the file is not cut back to the record's start %d: %v", cut, start, err)
					}
					if err := l.Append(n, []byte("again")); err != nil {
						t.Fatal(err)
					}
					l.Close()
					l, err = Open(dir, o)
					if err != nil {
						t.Fatal(err)
					}
					if b, err := l.Get(n); err != nil || string(b) != "again" {
						t.Fatalf("after the cut at %d and an Append: Get(%d) = %q, %v", cut, n, b, err)
					}
					l.Close()
				}
			}
		})
	}
}

// TestTornAppendOutOfOrder: the final Append's first record is damaged but
// the ones after it reached the disk whole. That Append never returned: it
// goes as a whole.
func TestTornAppendOutOfOrder(t *testing.T) {
	dir := t.TempDir()
	o := Options{SegmentBytes: 1 << 20}
	path, offs := buildLog(t, dir, o, 50, 5)
	flipByte(t, path, offs[len(offs)-5]+headerSize+2)
	l := openT(t, dir, o)
	check(t, l, 1, 45)
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestDamageIsCorrupt: a flipped byte with acknowledged records after it,
// in the last segment or an earlier one, or a missing segment, is
// ErrCorrupt naming the file; Open never drops them.
func TestDamageIsCorrupt(t *testing.T) {
	o := Options{SegmentBytes: 2048}
	src := t.TempDir()
	path, offs := buildLog(t, src, o, 200, 1)
	segs := segFiles(t, src)
	if len(segs) < 4 {
		t.Fatalf("only %d segments", len(segs))
	}
	wantCorrupt := func(dir, file string, what string) {
		t.Helper()
		_, err := Open(dir, o)
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), file) {
			t.Fatalf("%s: Open = %v, want ErrCorrupt naming %s", what, err, file)
		}
		t.Logf("%s: %v", what, err)
	}
	name := filepath.Base(path)
	for _, at := range []int64{0, 3, 5, 9, headerSize + 1} { // crc, len, index, data
		dir := copyDir(t, src)
		flipByte(t, filepath.Join(dir, name), offs[len(offs)/2]+at)
		wantCorrupt(dir, name, fmt.Sprintf("last segment, byte %d of a record", at))
	}
	mid := filepath.Base(segs[len(segs)/2])
	dir := copyDir(t, src)
	flipByte(t, filepath.Join(dir, mid), 100)
	wantCorrupt(dir, mid, "an earlier segment")

	dir = copyDir(t, src)
	if err := os.Remove(filepath.Join(dir, mid)); err != nil {
		t.Fatal(err)
	}
	wantCorrupt(dir, filepath.Base(segs[len(segs)/2+1]), "a missing segment")

	// Damage found by a read after Open is ErrCorrupt too.
	dir = copyDir(t, src)
	l := openT(t, dir, o)
	first := filepath.Join(dir, filepath.Base(segs[0]))
	flipByte(t, first, 40)
	if err := l.Range(1, func(uint64, []byte) error { return nil }); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Range over a damaged record: %v", err)
	}
}

func TestFirstSideFileDamaged(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{})
	appendRange(t, l, 1, 10)
	if err := l.TruncateFront(5); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if err := os.WriteFile(filepath.Join(dir, firstName), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open with a damaged side file: %v", err)
	}
}

func TestMetrics(t *testing.T) {
	l := openT(t, t.TempDir(), Options{})
	if err := l.Append(1, entry(1), entry(2)); err != nil {
		t.Fatal(err)
	}
	if got := l.nSyncs.Load(); got != 2 { // the file and, for the new segment, the directory
		t.Fatalf("%d syncs for the first Append", got)
	}
	if err := l.Append(3, entry(3)); err != nil {
		t.Fatal(err)
	}
	if got := l.nSyncs.Load(); got != 3 {
		t.Fatalf("%d syncs after a second Append, want one more", got)
	}
	want := uint64(3*headerSize + len(entry(1)) + len(entry(2)) + len(entry(3)))
	if got := l.nBytes.Load(); got != want {
		t.Fatalf("%d bytes written, want %d", got, want)
	}
}

// A segment a crash left empty or with a torn first record (created by
// an Append that never returned) is removed at Open.
func TestTornNewSegment(t *testing.T) {
	o := Options{SegmentBytes: 1024}
	src := t.TempDir()
	buildLog(t, src, o, 100, 1)
	next := filepath.Join(src, segmentName(101))
	for name, content := range map[string][]byte{
		"empty": nil,
		"torn":  appendRecord(nil, 101, entry(101), true)[:20],
		"zeros": make([]byte, 300),
	} {
		t.Run(name, func(t *testing.T) {
			dir := copyDir(t, src)
			if err := os.WriteFile(filepath.Join(dir, filepath.Base(next)), content, 0o600); err != nil {
				t.Fatal(err)
			}
			l := openT(t, dir, o)
			check(t, l, 1, 100)
			if _, err := os.Stat(filepath.Join(dir, filepath.Base(next))); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the new segment is still there: %v", err)
			}
			appendRange(t, l, 101, 150)
			l.Close()
			check(t, openT(t, dir, o), 1, 150)
		})
	}
}
