package consensus

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/wal"
)

func openTestLogStore(t *testing.T, dir string) *logStore {
	t.Helper()
	w, st, err := openLog(dir, slog.New(slog.NewTextHandler(testLog{t}, nil)), metrics.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return &logStore{log: w, stable: st, m: newNodeMetrics(metrics.NewRegistry(), &Node{})}
}

func testEntry(i uint64) *raft.Log {
	l := &raft.Log{Index: i, Term: 1 + i/10, Type: raft.LogCommand, Data: fmt.Appendf(nil, "data %d", i)}
	if i%3 == 0 {
		l.Extensions = []byte("ext")
		l.AppendedAt = time.Unix(1700000000, int64(i)).Local()
	}
	if i%5 == 0 {
		l.Type = raft.LogNoop
		l.Data = nil
	}
	return l
}

func checkEntries(t *testing.T, s *logStore, first, last uint64) {
	t.Helper()
	if f, _ := s.FirstIndex(); f != first {
		t.Fatalf("FirstIndex %d, want %d", f, first)
	}
	if l, _ := s.LastIndex(); l != last {
		t.Fatalf("LastIndex %d, want %d", l, last)
	}
	for i := first; i <= last && last > 0; i++ {
		var got raft.Log
		if err := s.GetLog(i, &got); err != nil {
			t.Fatalf("GetLog(%d): %v", i, err)
		}
		want := testEntry(i)
		if got.Index != i || got.Term != want.Term || got.Type != want.Type || !bytes.Equal(got.Data, want.Data) ||
			!bytes.Equal(got.Extensions, want.Extensions) || !got.AppendedAt.Equal(want.AppendedAt) {
			t.Fatalf("GetLog(%d) = %+v, want %+v", i, got, *want)
		}
	}
	var l raft.Log
	if err := s.GetLog(last+1, &l); !errors.Is(err, raft.ErrLogNotFound) {
		t.Fatalf("GetLog past the end: %v", err)
	}
}

func storeRange(t *testing.T, s *logStore, from, to uint64) {
	t.Helper()
	var logs []*raft.Log
	for i := from; i <= to; i++ {
		logs = append(logs, testEntry(i))
	}
	if err := s.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
}

// raft's use of the log: appends, compaction from the front, a
// conflicting suffix replaced, everything dropped after a snapshot is
// installed and a new start past it; stable values; all across reopens.
func TestLogStoreOnWAL(t *testing.T) {
	dir := t.TempDir()
	s := openTestLogStore(t, dir)
	if !s.IsMonotonic() {
		t.Fatal("not monotonic: raft would leave gaps after a snapshot")
	}
	checkEntries(t, s, 0, 0)
	if _, err := s.GetUint64(raftKeyCurrentTerm); err == nil || err.Error() != "not found" {
		t.Fatalf("GetUint64 of an empty store: %v", err)
	}
	storeRange(t, s, 1, 100)
	if err := s.StoreLog(testEntry(101)); err != nil {
		t.Fatal(err)
	}
	if err := s.StoreLogs([]*raft.Log{testEntry(103)}); err == nil {
		t.Fatal("StoreLogs past a gap")
	}
	checkEntries(t, s, 1, 101)
	if err := s.SetUint64(raftKeyCurrentTerm, 7); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(raftKeyLastVoteCand, []byte("m2")); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(1, 40); err != nil { // compaction
		t.Fatal(err)
	}
	checkEntries(t, s, 41, 101)
	if err := s.DeleteRange(90, 101); err != nil { // a conflicting suffix
		t.Fatal(err)
	}
	checkEntries(t, s, 41, 89)
	storeRange(t, s, 90, 120)
	s.log.Close()

	s = openTestLogStore(t, dir)
	checkEntries(t, s, 41, 120)
	if v, err := s.GetUint64(raftKeyCurrentTerm); err != nil || v != 7 {
		t.Fatalf("CurrentTerm after reopen: %d, %v", v, err)
	}
	if v, err := s.Get(raftKeyLastVoteCand); err != nil || string(v) != "m2" {
		t.Fatalf("LastVoteCand after reopen: %q, %v", v, err)
	}
	if err := s.DeleteRange(41, 120); err != nil { // raft's removeOldLogs after a snapshot
		t.Fatal(err)
	}
	checkEntries(t, s, 0, 0)
	storeRange(t, s, 500, 510) // the snapshot's index + 1
	s.log.Close()
	s = openTestLogStore(t, dir)
	checkEntries(t, s, 500, 510)
	if err := s.DeleteRange(503, 505); err == nil {
		t.Fatal("DeleteRange in the middle succeeded")
	}
}

func TestLogEntryFormat(t *testing.T) {
	for i := range uint64(12) {
		want := testEntry(i)
		b := encodeLog(want)
		if b[0] != logFormat {
			t.Fatalf("format byte %d", b[0])
		}
		var got raft.Log
		if err := decodeLog(b, &got); err != nil {
			t.Fatal(err)
		}
		if got.Term != want.Term || got.Type != want.Type || !bytes.Equal(got.Data, want.Data) ||
			!bytes.Equal(got.Extensions, want.Extensions) || !got.AppendedAt.Equal(want.AppendedAt) {
			t.Fatalf("entry %d: %+v, want %+v", i, got, *want)
		}
		if old := encodeLogV0(want); len(b) >= len(old) {
			t.Errorf("entry %d: %d bytes, %d in raft.db's format", i, len(b), len(old))
		}
		for cut := range len(b) - len(want.Data) - len(want.Extensions) {
			if err := decodeLog(b[:cut], &got); err == nil {
				t.Fatalf("entry %d cut at %d decoded", i, cut)
			}
		}
	}
	b := encodeLog(testEntry(1))
	b[0] = 2
	if err := decodeLog(b, &raft.Log{}); err == nil || !strings.Contains(err.Error(), "format 2") {
		t.Fatalf("an entry of an unknown format: %v", err)
	}
}

// encodeLogV0 is an entry as raft.db kept it (decodeLogV0 reads it).
func encodeLogV0(l *raft.Log) []byte {
	b := []byte{byte(l.Type)}
	b = binary.BigEndian.AppendUint64(b, l.Term)
	var at int64
	if !l.AppendedAt.IsZero() {
		at = l.AppendedAt.UnixNano()
	}
	b = binary.BigEndian.AppendUint64(b, uint64(at))
	b = binary.AppendUvarint(b, uint64(len(l.Extensions)))
	b = append(b, l.Extensions...)
	return append(b, l.Data...)
}

// writeRaftDB writes a raft.db as this package kept it before relay/wal.
func writeRaftDB(t *testing.T, path string, ents []*raft.Log, vals map[string][]byte) {
	t.Helper()
	rl, err := store.OpenLog(path)
	if err != nil {
		t.Fatal(err)
	}
	defer rl.Close()
	var le []store.LogEntry
	for _, l := range ents {
		le = append(le, store.LogEntry{Index: l.Index, Data: encodeLogV0(l)})
	}
	if err := rl.Append(le); err != nil {
		t.Fatal(err)
	}
	for k, v := range vals {
		if err := rl.SetValue([]byte(k), v); err != nil {
			t.Fatal(err)
		}
	}
}

// A raft.db of the hashicorp/raft era is moved into LogDir at the first
// start (entries, term, vote, snapshot record), then renamed
// raft.db.migrated; a gap in it (entries before an installed snapshot)
// keeps the run after it. A migration cut by a crash is done again.
func TestMigrateRaftDB(t *testing.T) {
	dir := t.TempDir()
	var ents []*raft.Log
	for _, i := range append(slicesRange(3, 9), slicesRange(20, 60)...) {
		ents = append(ents, testEntry(i))
	}
	vals := map[string][]byte{
		stableKey(raftKeyCurrentTerm):  binary.BigEndian.AppendUint64(nil, 9),
		stableKey(raftKeyLastVoteTerm): binary.BigEndian.AppendUint64(nil, 8),
		stableKey(raftKeyLastVoteCand): []byte("m3"),
		keySnapshot:                    []byte(`{"Meta":{"Index":19}}`),
	}
	old := filepath.Join(dir, store.LogFile)
	writeRaftDB(t, old, ents, vals)
	if !HasState(dir) {
		t.Fatal("HasState false with a raft.db")
	}
	// What a migration cut by a crash leaves: a LogDir with other content.
	if err := os.MkdirAll(filepath.Join(dir, LogDir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, LogDir, "00000000000000000001.wal"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}

	check := func(s *logStore) {
		t.Helper()
		checkEntries(t, s, 20, 60)
		for k, v := range vals {
			if got, ok := s.stable.get(k); !ok || !bytes.Equal(got, v) {
				t.Errorf("value %q = %q, want %q", k, got, v)
			}
		}
	}
	s := openTestLogStore(t, dir)
	check(s)
	if _, err := os.Stat(old); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("raft.db still there: %v", err)
	}
	if _, err := os.Stat(old + migratedSuffix); err != nil {
		t.Fatal(err)
	}
	storeRange(t, s, 61, 70)
	s.log.Close()
	// Not migrated again: raft.db.migrated is left alone.
	s = openTestLogStore(t, dir)
	checkEntries(t, s, 20, 70)
	if !HasState(dir) {
		t.Fatal("HasState false with a raft log")
	}
	if HasState(t.TempDir()) {
		t.Fatal("HasState true for an empty dir")
	}
}

func slicesRange(from, to uint64) []uint64 {
	var out []uint64
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

// A whole site restarts on raft.db files of the hashicorp/raft era
// (written from its members' logs in that format): each member migrates
// its own, keeps its state and term, and the site goes on.
func TestRestartMigratesRaftDB(t *testing.T) {
	c := newCluster(t, 3, Config{SnapshotEvery: 25})
	c.waitLeader(0, 10*time.Second)
	for i := range 40 {
		propose(t, c.up()[i%3], fmt.Sprintf("a%d", i))
	}
	before := waitSame(t, c.up(), 40, 10*time.Second)
	applied := map[uint64]uint64{}
	terms := map[uint64]uint64{}
	for _, m := range c.up() {
		applied[m.id] = m.sm.AppliedIndex()
		c.stop(m)
		terms[m.id] = downgrade(t, m.dir)
	}
	for _, m := range c.members {
		c.restart(m, false)
	}
	for _, m := range c.up() {
		if _, err := os.Stat(filepath.Join(m.dir, store.LogFile+migratedSuffix)); err != nil {
			t.Errorf("member %d: %v", m.id, err)
		}
		if got := m.sm.AppliedIndex(); got != applied[m.id] {
			t.Errorf("member %d: applied %d after the migration, %d before", m.id, got, applied[m.id])
		}
		if term, err := m.n.ls.GetUint64(raftKeyCurrentTerm); err != nil || term < terms[m.id] {
			t.Errorf("member %d: term %d (%v) after the migration, %d before", m.id, term, err, terms[m.id])
		}
	}
	l := c.waitLeader(0, 10*time.Second)
	for i := range 10 {
		propose(t, l, fmt.Sprintf("b%d", i))
	}
	list := waitSame(t, c.up(), 50, 10*time.Second)
	if !slices.Equal(list[:40], before) || len(list) != 50 {
		t.Errorf("list after the migration: %v", list)
	}
}

// downgrade turns a member's LogDir into a raft.db of the former format
// and returns its term.
func downgrade(t *testing.T, dir string) uint64 {
	t.Helper()
	logDir := filepath.Join(dir, LogDir)
	w, err := wal.Open(logDir, wal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var ents []*raft.Log
	err = w.Range(0, func(i uint64, b []byte) error {
		l := &raft.Log{}
		if err := decodeLog(b, l); err != nil {
			return err
		}
		l.Index = i
		l.Data, l.Extensions = bytes.Clone(l.Data), bytes.Clone(l.Extensions)
		ents = append(ents, l)
		return nil
	})
	w.Close()
	if err != nil || len(ents) == 0 {
		t.Fatalf("%d entries: %v", len(ents), err)
	}
	st, err := openStable(filepath.Join(logDir, StableFile))
	if err != nil {
		t.Fatal(err)
	}
	writeRaftDB(t, filepath.Join(dir, store.LogFile), ents, st.vals)
	if err := os.RemoveAll(logDir); err != nil {
		t.Fatal(err)
	}
	return binary.BigEndian.Uint64(st.vals[stableKey(raftKeyCurrentTerm)])
}
