package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// LogFile is the replicated log's file name in the data dir, next to the
// store's own file (relay/consensus keeps its log there).
const LogFile = "raft.db"

// Errors of Log's reads, in the sense raft's storage contract gives them.
var (
	// ErrLogCompacted: the index asked for was folded into a snapshot.
	ErrLogCompacted = errors.New("log: index compacted")
	// ErrLogUnavailable: the index asked for is past the last entry.
	ErrLogUnavailable = errors.New("log: index unavailable")
)

// Log is a replicated log's durable half, in a bbolt file of its own
// (LogFile): the entries, the hard state, the conf state and the latest
// snapshot's record. It knows nothing of the consensus engine: entries
// are (index, term, bytes), the states are opaque bytes (relay/consensus
// marshals them). Each Write is one transaction, so one fsync.
//
// Layout (fixed-width big-endian keys, so cursor order is index order):
//
//	log   index(8)  → term(8) | entry bytes
//	meta  "base"    → index(8) | term(8): the entry just before the first
//	                  one kept (0, 0 for a log never compacted)
//	      "hard"    → hard state bytes
//	      "conf"    → conf state bytes
//	      "snap"    → index(8) | term(8) | snapshot metadata bytes
//
// Reads run in their own read transactions and may run alongside a Write
// (bbolt allows one writer and many readers); Log has no lock of its own.
type Log struct {
	db *bolt.DB
}

// LogEntry is one log entry: its index, its term and its bytes (for
// relay/consensus, the engine's whole marshaled entry).
type LogEntry struct {
	Index, Term uint64
	Data        []byte
}

// LogSnapshot is a snapshot's record: the last index and term it covers
// and its metadata (opaque). The state it stands for is the state
// machine's, kept by the state machine; only the record is here.
type LogSnapshot struct {
	Index, Term uint64
	Meta        []byte
}

// LogUpdate is what one Write makes durable, in one transaction.
type LogUpdate struct {
	// Snapshot, if set, replaces the whole log: every entry is dropped
	// and the log goes on after Snapshot.Index (a snapshot received from
	// the leader). It is applied before Entries.
	Snapshot *LogSnapshot
	// Record, if set, is recorded as the latest snapshot (one taken
	// here), and every entry up to CompactThrough (at most Record.Index;
	// the entries between stay for members a little behind) is dropped.
	// Compacting at or before the base only records it.
	Record         *LogSnapshot
	CompactThrough uint64
	// Entries are appended in order, with consecutive indexes; any entry
	// already kept at or after Entries[0].Index is dropped first (the
	// leader's log wins). Entries at or before the base are skipped.
	Entries []LogEntry
	// HardState and ConfState replace the kept ones when not nil.
	HardState []byte
	ConfState []byte
}

var (
	bucketLog     = []byte("log")
	bucketLogMeta = []byte("meta")
	keyBase       = []byte("base")
	keyHard       = []byte("hard")
	keyConf       = []byte("conf")
	keySnap       = []byte("snap")
)

// OpenLog opens (creating if missing) the log file at path. A second
// process opening the same file fails after lockTimeout.
func OpenLog(path string) (*Log, error) {
	var db *bolt.DB
	err := guard(func() (err error) {
		db, err = bolt.Open(path, 0o600, &bolt.Options{
			Timeout: time.Second,
			// The map freelist, persisted, as the store's own file
			// (see openBolt).
			FreelistType: bolt.FreelistMapType,
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open log %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketLog, bucketLogMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open log %s: %w", path, errors.Join(err, db.Close()))
	}
	return &Log{db: db}, nil
}

// Close closes the file.
func (l *Log) Close() error {
	if err := l.db.Close(); err != nil {
		return fmt.Errorf("close log: %w", err)
	}
	return nil
}

func idxKey(i uint64) []byte { return binary.BigEndian.AppendUint64(nil, i) }

func getBase(meta *bolt.Bucket) (index, term uint64) {
	v := meta.Get(keyBase)
	if len(v) != 16 {
		return 0, 0
	}
	return binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:])
}

func putPair(b *bolt.Bucket, key []byte, x, y uint64, rest []byte) error {
	v := make([]byte, 16, 16+len(rest))
	binary.BigEndian.PutUint64(v, x)
	binary.BigEndian.PutUint64(v[8:], y)
	return b.Put(key, append(v, rest...))
}

// lastIndex is the last entry's index, or the base's when there is none.
func lastIndex(tx *bolt.Tx) uint64 {
	k, _ := tx.Bucket(bucketLog).Cursor().Last()
	if k == nil {
		i, _ := getBase(tx.Bucket(bucketLogMeta))
		return i
	}
	return binary.BigEndian.Uint64(k)
}

// deleteFrom drops every entry with index >= from.
func deleteFrom(b *bolt.Bucket, from uint64) error {
	c := b.Cursor()
	for k, _ := c.Seek(idxKey(from)); k != nil; k, _ = c.Seek(idxKey(from)) {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

// deleteThrough drops every entry with index <= upTo.
func deleteThrough(b *bolt.Bucket, upTo uint64) error {
	c := b.Cursor()
	for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) <= upTo; k, _ = c.First() {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

// Write makes u durable in one transaction (one fsync).
func (l *Log) Write(u LogUpdate) error {
	err := l.db.Update(func(tx *bolt.Tx) error {
		lb, meta := tx.Bucket(bucketLog), tx.Bucket(bucketLogMeta)
		if s := u.Snapshot; s != nil {
			if err := deleteFrom(lb, 0); err != nil {
				return err
			}
			if err := putPair(meta, keyBase, s.Index, s.Term, nil); err != nil {
				return err
			}
			if err := putPair(meta, keySnap, s.Index, s.Term, s.Meta); err != nil {
				return err
			}
		}
		if r := u.Record; r != nil {
			if err := compact(lb, meta, *r, u.CompactThrough); err != nil {
				return err
			}
		}
		if len(u.Entries) > 0 {
			base, _ := getBase(meta)
			ents := u.Entries
			for len(ents) > 0 && ents[0].Index <= base {
				ents = ents[1:]
			}
			if len(ents) > 0 {
				if last := lastIndex(tx); ents[0].Index > last+1 {
					return fmt.Errorf("append at %d leaves a gap after %d", ents[0].Index, last)
				}
				if err := deleteFrom(lb, ents[0].Index); err != nil {
					return err
				}
			}
			for i, e := range ents {
				if e.Index != ents[0].Index+uint64(i) {
					return fmt.Errorf("append: index %d after %d", e.Index, ents[0].Index+uint64(i)-1)
				}
				v := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(e.Data)), e.Term)
				if err := lb.Put(idxKey(e.Index), append(v, e.Data...)); err != nil {
					return err
				}
			}
		}
		if u.HardState != nil {
			if err := meta.Put(keyHard, bytes.Clone(u.HardState)); err != nil {
				return err
			}
		}
		if u.ConfState != nil {
			if err := meta.Put(keyConf, bytes.Clone(u.ConfState)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("log write: %w", err)
	}
	return nil
}

func compact(lb, meta *bolt.Bucket, s LogSnapshot, upTo uint64) error {
	if upTo > s.Index {
		return fmt.Errorf("compact through %d, past the snapshot at %d", upTo, s.Index)
	}
	if err := putPair(meta, keySnap, s.Index, s.Term, s.Meta); err != nil {
		return err
	}
	base, _ := getBase(meta)
	if upTo <= base {
		return nil
	}
	v := lb.Get(idxKey(upTo))
	if v == nil {
		return fmt.Errorf("compact through %d: %w", upTo, ErrLogUnavailable)
	}
	term := binary.BigEndian.Uint64(v)
	if err := deleteThrough(lb, upTo); err != nil {
		return err
	}
	return putPair(meta, keyBase, upTo, term, nil)
}

// State returns the kept hard state and conf state (nil when none).
func (l *Log) State() (hard, conf []byte, err error) {
	err = l.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketLogMeta)
		hard = bytes.Clone(meta.Get(keyHard))
		conf = bytes.Clone(meta.Get(keyConf))
		return nil
	})
	return hard, conf, err
}

// Snapshot returns the latest snapshot's record (zero when none).
func (l *Log) Snapshot() (LogSnapshot, error) {
	var s LogSnapshot
	err := l.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketLogMeta).Get(keySnap)
		if len(v) >= 16 {
			s = LogSnapshot{
				Index: binary.BigEndian.Uint64(v),
				Term:  binary.BigEndian.Uint64(v[8:]),
				Meta:  bytes.Clone(v[16:]),
			}
		}
		return nil
	})
	return s, err
}

// FirstIndex is the first entry's index that may be read (the base's
// plus one).
func (l *Log) FirstIndex() (uint64, error) {
	var i uint64
	err := l.db.View(func(tx *bolt.Tx) error {
		i, _ = getBase(tx.Bucket(bucketLogMeta))
		return nil
	})
	return i + 1, err
}

// LastIndex is the last entry's index (the base's when there is none).
func (l *Log) LastIndex() (uint64, error) {
	var i uint64
	err := l.db.View(func(tx *bolt.Tx) error {
		i = lastIndex(tx)
		return nil
	})
	return i, err
}

// Term is entry i's term, for i from the base's index to the last:
// ErrLogCompacted before, ErrLogUnavailable after.
func (l *Log) Term(i uint64) (uint64, error) {
	var term uint64
	err := l.db.View(func(tx *bolt.Tx) error {
		bi, bt := getBase(tx.Bucket(bucketLogMeta))
		switch {
		case i == bi:
			term = bt
			return nil
		case i < bi:
			return ErrLogCompacted
		}
		v := tx.Bucket(bucketLog).Get(idxKey(i))
		if v == nil {
			return ErrLogUnavailable
		}
		term = binary.BigEndian.Uint64(v)
		return nil
	})
	return term, err
}

// Entries returns the entries in [lo, hi), stopping before their data
// passes maxBytes but returning at least one: ErrLogCompacted when lo is
// at or before the base, ErrLogUnavailable when hi is past the last
// entry plus one.
func (l *Log) Entries(lo, hi, maxBytes uint64) ([]LogEntry, error) {
	var out []LogEntry
	err := l.db.View(func(tx *bolt.Tx) error {
		bi, _ := getBase(tx.Bucket(bucketLogMeta))
		if lo <= bi {
			return ErrLogCompacted
		}
		if hi > lastIndex(tx)+1 {
			return ErrLogUnavailable
		}
		var size uint64
		c := tx.Bucket(bucketLog).Cursor()
		for k, v := c.Seek(idxKey(lo)); k != nil; k, v = c.Next() {
			i := binary.BigEndian.Uint64(k)
			if i >= hi {
				break
			}
			size += uint64(len(v) - 8)
			if len(out) > 0 && size > maxBytes {
				break
			}
			out = append(out, LogEntry{Index: i, Term: binary.BigEndian.Uint64(v), Data: bytes.Clone(v[8:])})
		}
		return nil
	})
	return out, err
}
