package consensus

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/pushrelay/pushrelay/relay/store"
)

func mkEnts(term, from, to uint64) []*pb.Entry {
	var out []*pb.Entry
	for i := from; i <= to; i++ {
		out = append(out, &pb.Entry{Index: proto.Uint64(i), Term: proto.Uint64(term), Type: pb.EntryNormal.Enum(),
			Data: fmt.Appendf(nil, "entry %d of term %d", i, term)})
	}
	return out
}

// storage answers as raft's own MemoryStorage does, through the same
// appends, conflicting appends, compactions and a snapshot from a
// leader: FirstIndex, LastIndex, Term and Entries (with size limits) over
// every index, errors included.
func TestStorageMatchesMemoryStorage(t *testing.T) {
	log, err := store.OpenLog(filepath.Join(t.TempDir(), store.LogFile))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	ours, ref := &storage{log: log}, raft.NewMemoryStorage()
	cs := &pb.ConfState{Voters: []uint64{1, 2, 3}}

	appendBoth := func(ents []*pb.Entry) {
		t.Helper()
		rd := raft.Ready{Entries: ents}
		u, err := update(&rd)
		if err != nil {
			t.Fatal(err)
		}
		if err := log.Write(u); err != nil {
			t.Fatal(err)
		}
		if err := ref.Append(ents); err != nil {
			t.Fatal(err)
		}
	}
	compactBoth := func(snapAt, through uint64) {
		t.Helper()
		term, _ := ref.Term(snapAt)
		meta, _ := proto.Marshal(cs)
		if err := log.Write(store.LogUpdate{Record: &store.LogSnapshot{Index: snapAt, Term: term, Meta: meta}, CompactThrough: through}); err != nil {
			t.Fatal(err)
		}
		if _, err := ref.CreateSnapshot(snapAt, cs, nil); err != nil {
			t.Fatal(err)
		}
		if err := ref.Compact(through); err != nil {
			t.Fatal(err)
		}
	}
	check := func(step string) {
		t.Helper()
		f1, _ := ours.FirstIndex()
		f2, _ := ref.FirstIndex()
		l1, _ := ours.LastIndex()
		l2, _ := ref.LastIndex()
		if f1 != f2 || l1 != l2 {
			t.Fatalf("%s: first, last = %d, %d; MemoryStorage %d, %d", step, f1, l1, f2, l2)
		}
		for i := uint64(0); i <= l2+2; i++ {
			t1, e1 := ours.Term(i)
			t2, e2 := ref.Term(i)
			if t1 != t2 || !errors.Is(e1, e2) && (e1 != nil || e2 != nil) {
				t.Fatalf("%s: Term(%d) = %d, %v; MemoryStorage %d, %v", step, i, t1, e1, t2, e2)
			}
		}
		for lo := uint64(1); lo <= l2; lo++ {
			for hi := lo + 1; hi <= l2+1; hi++ {
				for _, max := range []uint64{0, 40, 100, 1 << 20} {
					g1, e1 := ours.Entries(lo, hi, max)
					g2, e2 := ref.Entries(lo, hi, max)
					if !errors.Is(e1, e2) && (e1 != nil || e2 != nil) || len(g1) != len(g2) {
						t.Fatalf("%s: Entries(%d, %d, %d) = %d entries, %v; MemoryStorage %d, %v", step, lo, hi, max, len(g1), e1, len(g2), e2)
					}
					for k := range g1 {
						if !proto.Equal(g1[k], g2[k]) {
							t.Fatalf("%s: Entries(%d, %d, %d)[%d] = %v; MemoryStorage %v", step, lo, hi, max, k, g1[k], g2[k])
						}
					}
				}
			}
		}
	}

	appendBoth(mkEnts(1, 1, 12))
	check("append 1..12")
	appendBoth(mkEnts(2, 9, 15))
	check("a new leader's 9..15")
	compactBoth(12, 6)
	check("snapshot at 12, compacted through 6")
	appendBoth(mkEnts(3, 14, 20))
	check("append 14..20")
	compactBoth(18, 18)
	check("compacted through the snapshot at 18")
	s1, _ := ours.Snapshot()
	s2, _ := ref.Snapshot()
	m1, m2 := s1.GetMetadata(), s2.GetMetadata()
	if m1.GetIndex() != m2.GetIndex() || m1.GetTerm() != m2.GetTerm() || m1.GetConfState().Equivalent(m2.GetConfState()) != nil {
		t.Fatalf("snapshot metadata %v; MemoryStorage %v", s1.GetMetadata(), s2.GetMetadata())
	}

	// A snapshot from the leader replaces the log.
	snap := &pb.Snapshot{Metadata: &pb.SnapshotMetadata{Index: proto.Uint64(40), Term: proto.Uint64(5), ConfState: cs}}
	rd := raft.Ready{Snapshot: snap, HardState: &pb.HardState{Term: proto.Uint64(5), Commit: proto.Uint64(40)}}
	u, err := update(&rd)
	if err != nil {
		t.Fatal(err)
	}
	if err := log.Write(u); err != nil {
		t.Fatal(err)
	}
	if err := ref.ApplySnapshot(snap); err != nil {
		t.Fatal(err)
	}
	appendBoth(mkEnts(5, 41, 44))
	check("leader's snapshot at 40, then 41..44")
	hs, gotCS, err := ours.InitialState()
	if err != nil || hs.GetCommit() != 40 || hs.GetTerm() != 5 || gotCS.Equivalent(cs) != nil {
		t.Fatalf("InitialState = %v, %v, %v", hs, gotCS, err)
	}
}

func TestIDFromName(t *testing.T) {
	a, b := IDFromName("gw-1"), IDFromName("gw-2")
	if a == 0 || b == 0 || a == b || IDFromName("gw-1") != a {
		t.Fatalf("IDFromName: %x, %x", a, b)
	}
	// SHA-256("gw-1") starts f5135b2765fda469 (`printf gw-1 | sha256sum`):
	// pinned, so a change of the derivation (which would renumber every
	// site's members) fails here.
	if got := fmt.Sprintf("%016x", a); got != "f5135b2765fda469" {
		t.Fatalf("IDFromName(gw-1) = %s", got)
	}
}

// A log raft cannot start from (here a commit index past its last entry)
// is an error from New, not a crash.
func TestUnusableLogIsAnError(t *testing.T) {
	dir := t.TempDir()
	log, err := store.OpenLog(filepath.Join(dir, store.LogFile))
	if err != nil {
		t.Fatal(err)
	}
	hs, _ := proto.Marshal(&pb.HardState{Term: proto.Uint64(2), Commit: proto.Uint64(50)})
	if err := log.Write(store.LogUpdate{HardState: hs}); err != nil {
		t.Fatal(err)
	}
	log.Close()
	sm, err := openListSM(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer sm.Close()
	c := newCluster(t, 1, Config{})
	m := c.members[1]
	cfg := Config{ID: 1, Peers: map[uint64]string{1: ""}, Dir: dir, Listen: "127.0.0.1:0",
		ServerTLS: m.n.cfg.ServerTLS, ClientTLS: m.n.cfg.ClientTLS, Logger: m.n.cfg.Logger}
	if n, err := New(cfg, sm); err == nil {
		n.Close()
		t.Fatal("New took a log whose commit index is past its end")
	} else {
		t.Log(err)
	}
}
