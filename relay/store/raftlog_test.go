package store

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"
)

func ents(term uint64, from, to uint64) []LogEntry {
	var out []LogEntry
	for i := from; i <= to; i++ {
		out = append(out, LogEntry{Index: i, Term: term, Data: fmt.Appendf(nil, "e%d.%d", i, term)})
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

// TestLogAppendTruncateCompact follows a log through what raft asks of
// it: appends, a conflicting suffix replaced, compaction, a snapshot from
// the leader, and a reopen.
func TestLogAppendTruncateCompact(t *testing.T) {
	path := filepath.Join(t.TempDir(), LogFile)
	l, err := OpenLog(path)
	if err != nil {
		t.Fatal(err)
	}
	checkRange(t, l, 1, 0)
	if _, err := l.Term(1); !errors.Is(err, ErrLogUnavailable) {
		t.Fatalf("Term(1) of an empty log: %v", err)
	}
	if err := l.Write(LogUpdate{Entries: ents(1, 1, 10), HardState: []byte("h1")}); err != nil {
		t.Fatal(err)
	}
	checkRange(t, l, 1, 10)
	// A new leader's entries from 6 replace 6..10.
	if err := l.Write(LogUpdate{Entries: ents(2, 6, 7), HardState: []byte("h2")}); err != nil {
		t.Fatal(err)
	}
	checkRange(t, l, 1, 7)
	if term, err := l.Term(7); err != nil || term != 2 {
		t.Fatalf("Term(7) = %d, %v", term, err)
	}
	if term, _ := l.Term(5); term != 1 {
		t.Fatalf("Term(5) = %d", term)
	}
	// A gap is refused, and leaves the log as it was.
	if err := l.Write(LogUpdate{Entries: ents(2, 9, 9)}); err == nil {
		t.Fatal("an append leaving a gap was taken")
	}
	got, err := l.Entries(2, 8, 1<<20)
	if err != nil || len(got) != 6 || got[0].Index != 2 || string(got[5].Data) != "e7.2" {
		t.Fatalf("Entries(2, 8) = %v, %v", got, err)
	}
	// maxBytes: each entry is 4 bytes; at least one comes back.
	if got, _ := l.Entries(2, 8, 9); len(got) != 2 {
		t.Fatalf("Entries(2, 8, 9 bytes) = %d entries, want 2", len(got))
	}
	if got, _ := l.Entries(2, 8, 0); len(got) != 1 {
		t.Fatalf("Entries(2, 8, 0 bytes) = %d entries, want 1", len(got))
	}
	if _, err := l.Entries(2, 9, 100); !errors.Is(err, ErrLogUnavailable) {
		t.Fatalf("Entries past the end: %v", err)
	}

	if err := l.Write(LogUpdate{Record: &LogSnapshot{Index: 6, Term: 2, Meta: []byte("cs6")}, CompactThrough: 7}); err == nil {
		t.Fatal("compacted past the snapshot")
	}
	if err := l.Write(LogUpdate{Record: &LogSnapshot{Index: 6, Term: 2, Meta: []byte("cs6")}, CompactThrough: 4}); err != nil {
		t.Fatal(err)
	}
	checkRange(t, l, 5, 7)
	if term, err := l.Term(4); err != nil || term != 1 {
		t.Fatalf("Term(4), the base = %d, %v", term, err)
	}
	if _, err := l.Term(3); !errors.Is(err, ErrLogCompacted) {
		t.Fatalf("Term(3): %v", err)
	}
	if _, err := l.Entries(4, 6, 100); !errors.Is(err, ErrLogCompacted) {
		t.Fatalf("Entries(4, 6): %v", err)
	}
	// An append overlapping the base skips what is compacted.
	if err := l.Write(LogUpdate{Entries: ents(3, 3, 8)}); err != nil {
		t.Fatal(err)
	}
	checkRange(t, l, 5, 8)
	if term, _ := l.Term(5); term != 3 {
		t.Fatalf("Term(5) = %d after the overlapping append", term)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l, err = OpenLog(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	checkRange(t, l, 5, 8)
	hard, conf, err := l.State()
	if err != nil || string(hard) != "h2" || conf != nil {
		t.Fatalf("State = %q, %q, %v", hard, conf, err)
	}
	s, err := l.Snapshot()
	if err != nil || s.Index != 6 || s.Term != 2 || string(s.Meta) != "cs6" {
		t.Fatalf("Snapshot = %+v, %v", s, err)
	}

	// A snapshot from the leader replaces the whole log.
	err = l.Write(LogUpdate{
		Snapshot:  &LogSnapshot{Index: 100, Term: 5, Meta: []byte("cs100")},
		HardState: []byte("h5"), ConfState: []byte("c5"),
	})
	if err != nil {
		t.Fatal(err)
	}
	checkRange(t, l, 101, 100)
	if term, _ := l.Term(100); term != 5 {
		t.Fatalf("Term(100) = %d after the snapshot", term)
	}
	if err := l.Write(LogUpdate{Entries: ents(5, 101, 102)}); err != nil {
		t.Fatal(err)
	}
	checkRange(t, l, 101, 102)
	hard, conf, _ = l.State()
	if string(hard) != "h5" || string(conf) != "c5" {
		t.Fatalf("State = %q, %q", hard, conf)
	}
}
