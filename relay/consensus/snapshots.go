package consensus

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// snapPrefix names a snapshot's file in the data dir: one received from
// the leader and not yet restored, or one being sent.
const snapPrefix = "snap-"

// keySnapshot is the snapshot record's key in the stable values.
const keySnapshot = "snapshot"

// snapRecord is the latest snapshot's record: raft's metadata, and the
// file holding a received snapshot until the state machine has restored
// it ("" once it has, or for one taken here).
type snapRecord struct {
	Meta  raft.SnapshotMeta
	Spool string `json:",omitempty"`
}

// snapStore is raft's SnapshotStore without copies of the state: the
// state machine's store is the snapshot. A snapshot taken here records
// its metadata only (the state machine has durably applied at least its
// index: raft takes it on the FSM goroutine after the batch applied);
// Open streams the live state, whose applied index may be past the
// metadata's (Restore allows that; the entries in between are skipped
// where it is restored, the state holding them). So a snapshot costs
// one small file written (the stable values), not a copy of the store on flash.
//
// What raft needs to send, though, is a stream of known size (the
// request says it before the data): Open spools the live state to a file
// in the data dir first and removes it once sent. That writes the state
// once per snapshot sent to a member behind the compacted log (rare),
// never per snapshot taken. A snapshot received from the leader is
// spooled to a file too (it cannot be applied while it arrives: raft
// restores it after checking its size), restored, and removed.
//
// Every stream starts with 8 bytes, the sender's state machine's applied
// index read before its snapshot began: the state is at least there.
type snapStore struct {
	n  *Node
	mu sync.Mutex
}

var _ raft.SnapshotStore = (*snapStore)(nil)

func (s *snapStore) record() (*snapRecord, error) {
	b, ok := s.n.ls.stable.get(keySnapshot)
	if !ok {
		return nil, nil
	}
	r := &snapRecord{}
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("snapshot record: %w", err)
	}
	return r, nil
}

func (s *snapStore) setRecord(r *snapRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := s.n.ls.stable.set(keySnapshot, b); err != nil {
		return err
	}
	s.n.ls.wrote(t0)
	return nil
}

func (s *snapStore) path(name string) string { return filepath.Join(s.n.cfg.Dir, name) }

func (s *snapStore) Create(version raft.SnapshotVersion, index, term uint64, conf raft.Configuration,
	confIndex uint64, _ raft.Transport) (raft.SnapshotSink, error) {
	id := strconv.FormatUint(term, 10) + "-" + strconv.FormatUint(index, 10) + "-" + strconv.FormatInt(time.Now().UnixMilli(), 10)
	return &snapSink{s: s, meta: raft.SnapshotMeta{
		Version: version, ID: id, Index: index, Term: term,
		Configuration: conf, ConfigurationIndex: confIndex,
	}}, nil
}

func (s *snapStore) List() ([]*raft.SnapshotMeta, error) {
	r, err := s.record()
	if err != nil || r == nil {
		return nil, err
	}
	return []*raft.SnapshotMeta{&r.Meta}, nil
}

// Open opens snapshot id: the received file, or the live state spooled
// to a file to be sent.
func (s *snapStore) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	r, err := s.record()
	if err != nil {
		return nil, nil, err
	}
	if r == nil || r.Meta.ID != id {
		return nil, nil, fmt.Errorf("snapshot %s: not the latest", id)
	}
	meta := r.Meta
	if r.Spool != "" {
		f, err := os.Open(s.path(r.Spool))
		if err != nil {
			return nil, nil, err
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, nil, err
		}
		meta.Size = fi.Size()
		return &meta, &snapReader{File: f}, nil
	}
	f, err := os.CreateTemp(s.n.cfg.Dir, snapPrefix+"out-*")
	if err != nil {
		return nil, nil, err
	}
	remove := func() { f.Close(); os.Remove(f.Name()) }
	w := bufio.NewWriterSize(f, 64<<10)
	w.Write(binary.BigEndian.AppendUint64(nil, s.n.sm.AppliedIndex()))
	if err := s.n.sm.Snapshot(w); err != nil {
		remove()
		return nil, nil, fmt.Errorf("state machine snapshot: %w", err)
	}
	if err := w.Flush(); err != nil {
		remove()
		return nil, nil, err
	}
	size, err := f.Seek(0, io.SeekCurrent)
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		remove()
		return nil, nil, err
	}
	meta.Size = size
	s.n.m.snapSent.Inc()
	s.n.m.snapSentBytes.Observe(float64(size))
	s.n.log.Info("consensus: sending a snapshot", "index", meta.Index, "bytes", size)
	return &meta, &snapReader{File: f, remove: true}, nil
}

// restored notes that the state machine holds snapshot id: its file is
// removed and the record says the live state.
func (s *snapStore) restored(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.record()
	if err != nil || r == nil || r.Meta.ID != id || r.Spool == "" {
		return err
	}
	spool := r.Spool
	r.Spool = ""
	if err := s.setRecord(r); err != nil {
		return err
	}
	os.Remove(s.path(spool))
	return nil
}

// recover, at start, restores a received snapshot the state machine had
// not restored before a stop (its record was written, so raft will take
// the state machine as holding it), and removes stale files.
func (s *snapStore) recover() error {
	r, err := s.record()
	if err != nil {
		return err
	}
	keep := ""
	if r != nil && r.Spool != "" {
		f, err := os.Open(s.path(r.Spool))
		if err != nil {
			return fmt.Errorf("snapshot %s received and not restored: %w", r.Meta.ID, err)
		}
		err = s.n.fsm.restore(f, r.Meta)
		f.Close()
		if err != nil {
			return err
		}
		keep = r.Spool
		if err := s.restored(r.Meta.ID); err != nil {
			return err
		}
	}
	old, _ := filepath.Glob(filepath.Join(s.n.cfg.Dir, snapPrefix+"*"))
	for _, p := range old {
		if filepath.Base(p) != keep {
			os.Remove(p)
		}
	}
	return nil
}

// snapReader is an open snapshot, its file removed at Close if it was
// spooled to be sent.
type snapReader struct {
	*os.File
	remove bool
}

func (r *snapReader) Close() error {
	err := r.File.Close()
	if r.remove {
		os.Remove(r.Name())
	}
	return err
}

// snapSink takes a snapshot: nothing written (one taken here: the live
// state) or the leader's stream (spooled to a file).
type snapSink struct {
	s    *snapStore
	meta raft.SnapshotMeta
	f    *os.File
	w    *bufio.Writer
	n    int64
}

func (k *snapSink) ID() string { return k.meta.ID }

func (k *snapSink) Write(p []byte) (int, error) {
	if k.f == nil {
		f, err := os.CreateTemp(k.s.n.cfg.Dir, snapPrefix+"in-*.part")
		if err != nil {
			return 0, err
		}
		k.f, k.w = f, bufio.NewWriterSize(f, 64<<10)
	}
	n, err := k.w.Write(p)
	k.n += int64(n)
	return n, err
}

func (k *snapSink) Close() error {
	rec := &snapRecord{Meta: k.meta}
	if k.f != nil {
		err := k.w.Flush()
		if err == nil {
			err = k.f.Sync()
		}
		err = errors.Join(err, k.f.Close())
		name := strings.TrimSuffix(filepath.Base(k.f.Name()), ".part")
		if err == nil {
			err = os.Rename(k.f.Name(), k.s.path(name))
		}
		if err != nil {
			os.Remove(k.f.Name())
			return fmt.Errorf("spool snapshot: %w", err)
		}
		rec.Spool = name
		rec.Meta.Size = k.n
		k.s.n.m.snapRecv.Inc()
		k.s.n.m.snapRecvBytes.Observe(float64(k.n))
	}
	k.s.mu.Lock()
	defer k.s.mu.Unlock()
	old, err := k.s.record()
	if err != nil {
		return err
	}
	// A snapshot taken here while one received waits to be restored,
	// or behind the latest, would record what the state machine does
	// not hold, or go back: it is dropped (raft takes another later).
	if k.f == nil && old != nil && (old.Spool != "" || old.Meta.Index > k.meta.Index) {
		return fmt.Errorf("snapshot at %d dropped: the latest is %s", k.meta.Index, old.Meta.ID)
	}
	if err := k.s.setRecord(rec); err != nil {
		return err
	}
	if old != nil && old.Spool != "" {
		os.Remove(k.s.path(old.Spool))
	}
	k.s.n.snapIdx.Store(k.meta.Index)
	if k.f == nil {
		k.s.n.m.snapshots.Inc()
		k.s.n.log.Debug("consensus: snapshot recorded", "index", k.meta.Index)
	}
	return nil
}

func (k *snapSink) Cancel() error {
	if k.f != nil {
		k.f.Close()
		os.Remove(k.f.Name())
	}
	return nil
}
