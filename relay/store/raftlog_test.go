package store

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

func ents(from, to uint64, tag string) []LogEntry {
	var out []LogEntry
	for i := from; i <= to; i++ {
		out = append(out, LogEntry{Index: i, Data: fmt.Appendf(nil, "e%d.%s", i, tag)})
	}
	return out
}

func checkRange(t *testing.T, l *Log, first, last uint64) {
	t.Helper()
	f, err := l.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	la, err := l.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	if f != first || la != last {
		t.Fatalf("first, last = %d, %d; want %d, %d", f, la, first, last)
	}
}

// TestLogAppendDeleteReopen follows a log through what the engine asks of
// it: appends, a conflicting suffix deleted and replaced, compaction of a
// prefix, a gap after a snapshot, values, and a reopen.
func TestLogAppendDeleteReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), LogFile)
	l, err := OpenLog(path)
	if err != nil {
		t.Fatal(err)
	}
	checkRange(t, l, 0, 0)
	if _, err := l.Entry(1); !errors.Is(err, ErrLogNotFound) {
		t.Fatalf("Entry(1) of an empty log: %v", err)
	}
	if err := l.Append(ents(1, 10, "a")); err != nil {
		t.Fatal(err)
	}
	checkRange(t, l, 1, 10)
	// A new leader's entries from 6 replace 6..10.
	if err := l.DeleteRange(6, 10); err != nil {
		t.Fatal(err)
	}
	if err := l.Append(ents(6, 7, "b")); err != nil {
		t.Fatal(err)
	}
	checkRange(t, l, 1, 7)
	if e, err := l.Entry(7); err != nil || string(e) != "e7.b" {
		t.Fatalf("Entry(7) = %q, %v", e, err)
	}
	if e, _ := l.Entry(5); string(e) != "e5.a" {
		t.Fatalf("Entry(5) = %q", e)
	}
	// Compaction.
	if err := l.DeleteRange(1, 4); err != nil {
		t.Fatal(err)
	}
	checkRange(t, l, 5, 7)
	if _, err := l.Entry(4); !errors.Is(err, ErrLogNotFound) {
		t.Fatalf("Entry(4) after compaction: %v", err)
	}
	// The log goes on after a snapshot at 20.
	if err := l.Append(ents(21, 22, "c")); err != nil {
		t.Fatal(err)
	}
	checkRange(t, l, 5, 22)
	if err := l.SetValue([]byte("k"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	if v, err := l.Value([]byte("none")); err != nil || v != nil {
		t.Fatalf("Value(none) = %q, %v", v, err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l, err = OpenLog(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	checkRange(t, l, 5, 22)
	if v, err := l.Value([]byte("k")); err != nil || string(v) != "v" {
		t.Fatalf("Value(k) after reopen = %q, %v", v, err)
	}
}

// TestLogFormerLayoutRefused: a raft.db written by the etcd raft engine
// (buckets log and meta) is refused, naming the file and what to do.
func TestLogFormerLayoutRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), LogFile)
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range []string{"log", "meta"} {
			if _, err := tx.CreateBucket([]byte(b)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = OpenLog(path)
	if !errors.Is(err, ErrLogFormat) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "remove") {
		t.Fatalf("OpenLog of the former layout: %v", err)
	}
}
