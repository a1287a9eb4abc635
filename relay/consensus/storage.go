package consensus

import (
	"errors"
	"fmt"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/pushrelay/pushrelay/relay/store"
)

// storage is raft.Storage over relay/store's Log: entries are kept as
// raft's marshaled pb.Entry, the hard and conf states as marshaled
// pb.HardState and pb.ConfState, and the snapshot record's metadata as the
// snapshot's marshaled pb.ConfState. Raft's node goroutine reads it while
// the Ready loop writes; the Log's transactions keep each read whole.
type storage struct {
	log *store.Log
}

var _ raft.Storage = (*storage)(nil)

func engineErr(err error) error {
	switch {
	case errors.Is(err, store.ErrLogCompacted):
		return raft.ErrCompacted
	case errors.Is(err, store.ErrLogUnavailable):
		return raft.ErrUnavailable
	}
	return err
}

func (s *storage) InitialState() (*pb.HardState, *pb.ConfState, error) {
	hard, conf, err := s.log.State()
	if err != nil {
		return nil, nil, err
	}
	hs, cs := &pb.HardState{}, &pb.ConfState{}
	if err := proto.Unmarshal(hard, hs); err != nil {
		return nil, nil, fmt.Errorf("hard state: %w", err)
	}
	if err := proto.Unmarshal(conf, cs); err != nil {
		return nil, nil, fmt.Errorf("conf state: %w", err)
	}
	return hs, cs, nil
}

func (s *storage) Entries(lo, hi, maxSize uint64) ([]*pb.Entry, error) {
	les, err := s.log.Entries(lo, hi, maxSize)
	if err != nil {
		return nil, engineErr(err)
	}
	out := make([]*pb.Entry, len(les))
	for i, le := range les {
		e := &pb.Entry{}
		if err := proto.Unmarshal(le.Data, e); err != nil {
			return nil, fmt.Errorf("entry %d: %w", le.Index, err)
		}
		out[i] = e
	}
	return out, nil
}

func (s *storage) Term(i uint64) (uint64, error) {
	t, err := s.log.Term(i)
	return t, engineErr(err)
}

func (s *storage) LastIndex() (uint64, error)  { return s.log.LastIndex() }
func (s *storage) FirstIndex() (uint64, error) { return s.log.FirstIndex() }

// Snapshot is the latest snapshot's metadata, without data: the state
// machine's state is streamed to a follower when raft sends it (see
// transport.sendSnapshot), not kept with the log.
func (s *storage) Snapshot() (*pb.Snapshot, error) {
	ls, err := s.log.Snapshot()
	if err != nil {
		return nil, err
	}
	cs := &pb.ConfState{}
	if err := proto.Unmarshal(ls.Meta, cs); err != nil {
		return nil, fmt.Errorf("snapshot conf state: %w", err)
	}
	return &pb.Snapshot{Metadata: &pb.SnapshotMetadata{
		Index: proto.Uint64(ls.Index), Term: proto.Uint64(ls.Term), ConfState: cs,
	}}, nil
}

// update turns one Ready's durable part into one Log write.
func update(rd *raft.Ready) (store.LogUpdate, error) {
	var u store.LogUpdate
	if !raft.IsEmptySnap(rd.Snapshot) {
		md := rd.Snapshot.GetMetadata()
		cs, err := proto.Marshal(pb.EnsureConfState(md.GetConfState()))
		if err != nil {
			return u, err
		}
		u.Snapshot = &store.LogSnapshot{Index: md.GetIndex(), Term: md.GetTerm(), Meta: cs}
		u.ConfState = cs
	}
	if rd.HardState != nil && !raft.IsEmptyHardState(rd.HardState) {
		b, err := proto.Marshal(rd.HardState)
		if err != nil {
			return u, err
		}
		u.HardState = b
	}
	u.Entries = make([]store.LogEntry, len(rd.Entries))
	for i, e := range rd.Entries {
		b, err := proto.Marshal(e)
		if err != nil {
			return u, err
		}
		u.Entries[i] = store.LogEntry{Index: e.GetIndex(), Term: e.GetTerm(), Data: b}
	}
	return u, nil
}
