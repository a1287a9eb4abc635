package wal

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// dirBytes returns every file's content in dir, by name.
func dirBytes(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][]byte{}
	for _, de := range des {
		b, err := os.ReadFile(filepath.Join(dir, de.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m[de.Name()] = b
	}
	return m
}

// readOnly opens dir read-only, gives the log to fn, closes it and checks
// that nothing in dir changed.
func readOnly(t *testing.T, dir string, fn func(*Log, Findings)) {
	t.Helper()
	before := dirBytes(t, dir)
	l, f, err := OpenReadOnly(dir, Options{})
	if err != nil {
		t.Fatalf("OpenReadOnly: %v", err)
	}
	fn(l, f)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	{
		after := dirBytes(t, dir)
		if len(after) != len(before) {
			t.Errorf("OpenReadOnly changed the files: %d before, %d after", len(before), len(after))
		}
		for name, b := range before {
			if !bytes.Equal(after[name], b) {
				t.Errorf("OpenReadOnly changed %s", name)
			}
		}
	}
}

// TestReadOnlySound: a sound log, truncated at its front, reads as Open
// reads it; every write fails with ErrReadOnly.
func TestReadOnlySound(t *testing.T) {
	dir := t.TempDir()
	o := Options{SegmentBytes: 2048}
	l := openT(t, dir, o)
	appendRange(t, l, 1, 200)
	if err := l.TruncateFront(77); err != nil {
		t.Fatal(err)
	}
	l.Close()
	readOnly(t, dir, func(r *Log, f Findings) {
		if f != (Findings{}) {
			t.Fatalf("findings of a sound log: %+v", f)
		}
		check(t, r, 77, 200)
		if err := r.Append(201, []byte("x")); !errors.Is(err, ErrReadOnly) {
			t.Fatalf("Append: %v", err)
		}
		if err := r.TruncateFront(100); !errors.Is(err, ErrReadOnly) {
			t.Fatalf("TruncateFront: %v", err)
		}
		if err := r.TruncateBack(100); !errors.Is(err, ErrReadOnly) {
			t.Fatalf("TruncateBack: %v", err)
		}
	})

	// Emptied by a TruncateFront past the end.
	l = openT(t, dir, o)
	if err := l.TruncateFront(201); err != nil {
		t.Fatal(err)
	}
	l.Close()
	readOnly(t, dir, func(r *Log, f Findings) {
		if f != (Findings{}) {
			t.Fatalf("findings of an empty log: %+v", f)
		}
		check(t, r, 0, 0)
	})
}

func TestReadOnlyMissingDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "none")
	if _, _, err := OpenReadOnly(dir, Options{}); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("OpenReadOnly of a missing dir: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("OpenReadOnly made the dir: %v", err)
	}
}

// TestReadOnlyTornTail: a torn final Append is reported, left in place,
// and not served; Open then cuts it as before.
func TestReadOnlyTornTail(t *testing.T) {
	dir := t.TempDir()
	o := Options{SegmentBytes: 2048}
	path, offs := buildLog(t, dir, o, 100, 3)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	cut := offs[len(offs)-3] + 10
	if err := os.Truncate(path, cut); err != nil {
		t.Fatal(err)
	}
	readOnly(t, dir, func(r *Log, f Findings) {
		// The torn bytes, less the zeros they end with (which read
		// like space reserved after them).
		if f.Damage != nil || f.TornFile != path || f.TornOffset != offs[len(offs)-3] || f.TornBytes < 1 || f.TornBytes > 10 {
			t.Fatalf("findings %+v, want a torn tail of 10 bytes at %d of %s (file was %d)", f, offs[len(offs)-3], path, fi.Size())
		}
		check(t, r, 1, 97)
	})

	l := openT(t, dir, o)
	check(t, l, 1, 97)
	if err := endsAt(path, offs[len(offs)-3]); err != nil {
		t.Fatalf("Open did not cut the tail: %v", err)
	}
}

// TestReadOnlyDamage: damage Open refuses is reported, and the log
// read-only ends at the last whole record before it.
func TestReadOnlyDamage(t *testing.T) {
	o := Options{SegmentBytes: 2048}
	src := t.TempDir()
	path, offs := buildLog(t, src, o, 200, 1)
	segs := segFiles(t, src)
	if len(segs) < 4 {
		t.Fatalf("only %d segments", len(segs))
	}
	wantDamage := func(dir, file string, last uint64) {
		t.Helper()
		if _, err := Open(copyDir(t, dir), o); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Open: %v", err)
		}
		readOnly(t, dir, func(r *Log, f Findings) {
			if !errors.Is(f.Damage, ErrCorrupt) || !strings.Contains(f.Damage.Error(), file) || f.TornBytes != 0 {
				t.Fatalf("findings %+v, want damage naming %s", f, file)
			}
			check(t, r, 1, last)
		})
	}
	// A record in the last segment, whole records after it.
	dir := copyDir(t, src)
	k := len(offs) / 2
	flipByte(t, filepath.Join(dir, filepath.Base(path)), offs[k]+headerSize+1)
	wantDamage(dir, filepath.Base(path), 200-uint64(len(offs)-k))

	// The first record of a middle segment.
	mid := segs[len(segs)/2]
	start, _ := parseSegmentName(filepath.Base(mid))
	dir = copyDir(t, src)
	flipByte(t, filepath.Join(dir, filepath.Base(mid)), 3)
	wantDamage(dir, filepath.Base(mid), start-1)

	// A missing segment: a gap.
	dir = copyDir(t, src)
	if err := os.Remove(filepath.Join(dir, filepath.Base(mid))); err != nil {
		t.Fatal(err)
	}
	wantDamage(dir, filepath.Base(segs[len(segs)/2+1]), start-1)

	// A damaged side file: the segments are read from their start.
	dir = copyDir(t, src)
	if err := os.WriteFile(filepath.Join(dir, firstName), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	wantDamage(dir, firstName, 200)
}
