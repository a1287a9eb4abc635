package consensus

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/hashicorp/raft"
)

// Entry data: the proposer's id and the proposal's id, then the payload.
const headerSize = 16

// fsm is raft's BatchingFSM over the StateMachine: raft's FSM goroutine
// hands it committed entries in batches, in log order.
type fsm struct{ n *Node }

var _ raft.BatchingFSM = (*fsm)(nil)

// ApplyBatch applies the batch's commands in one StateMachine.Apply (one
// store commit), skipping those at or below the state machine's applied
// index (applied before a restart, or held by a restored snapshot whose
// state is past its metadata), and wakes the proposers waiting here.
func (f *fsm) ApplyBatch(logs []*raft.Log) []any {
	n := f.n
	resp := make([]any, len(logs))
	if len(logs) == 0 {
		return resp
	}
	if err := n.failure(); err != nil {
		for i := range resp {
			resp[i] = err
		}
		return resp
	}
	smApplied := n.sm.AppliedIndex()
	var batch [][]byte
	var batchIdx uint64
	var woken []uint64 // proposal ids, then indexes, in pairs
	for _, l := range logs {
		if l.Type != raft.LogCommand || len(l.Data) < headerSize {
			continue
		}
		if binary.BigEndian.Uint64(l.Data) == n.id {
			woken = append(woken, binary.BigEndian.Uint64(l.Data[8:]), l.Index)
		}
		if l.Index <= smApplied {
			continue
		}
		batch = append(batch, l.Data[headerSize:])
		batchIdx = l.Index
	}
	if len(batch) > 0 {
		if err := n.sm.Apply(batchIdx, batch); err != nil {
			err = fmt.Errorf("apply through %d: %w", batchIdx, err)
			n.fail(err)
			for i := range resp {
				resp[i] = err
			}
			return resp
		}
		n.m.applies.Inc()
		n.m.commits.Add(float64(len(batch)))
	}
	n.advance(logs[len(logs)-1].Index, woken)
	return resp
}

func (f *fsm) Apply(l *raft.Log) any { return f.ApplyBatch([]*raft.Log{l})[0] }

// Snapshot records nothing but raft's metadata: the state machine's
// store is the snapshot (see snapStore).
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) { return liveSnapshot{}, nil }

// Restore replaces the state with a snapshot received from the leader:
// raft restores the one it just recorded (the latest).
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	rec, err := f.n.snaps.record()
	if err != nil {
		return err
	}
	if rec == nil || rec.Spool == "" {
		return errors.New("consensus: no received snapshot to restore")
	}
	if err := f.restore(rc, rec.Meta); err != nil {
		return err
	}
	return f.n.snaps.restored(rec.Meta.ID)
}

func (f *fsm) restore(src io.Reader, meta raft.SnapshotMeta) error {
	n := f.n
	r := bufio.NewReaderSize(src, 64<<10)
	var h [8]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return fmt.Errorf("snapshot %s: %w", meta.ID, err)
	}
	// The sender's state machine had applied at least this much; its
	// metadata's index may be past it by entries without data (the
	// leader's empty entry, barriers, configurations).
	at := binary.BigEndian.Uint64(h[:])
	if err := n.sm.Restore(r, at); err != nil {
		err = fmt.Errorf("restore snapshot %s: %w", meta.ID, err)
		n.fail(err)
		return err
	}
	n.log.Info("consensus: restored from snapshot", "index", meta.Index, "applied", n.sm.AppliedIndex())
	n.advance(meta.Index, nil)
	return nil
}

type liveSnapshot struct{}

func (liveSnapshot) Persist(sink raft.SnapshotSink) error { return sink.Close() }
func (liveSnapshot) Release()                             {}
