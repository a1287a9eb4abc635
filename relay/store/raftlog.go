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

// Errors of Log.
var (
	// ErrLogNotFound: no entry at the index asked for (compacted, or
	// past the last).
	ErrLogNotFound = errors.New("log: entry not found")
	// ErrLogFormat: the file was written by another consensus engine
	// (the etcd raft one, before hashicorp/raft): it cannot be read.
	ErrLogFormat = errors.New("log: written by the former consensus engine (etcd raft)")
)

// Log is a replicated log's durable half, in a bbolt file of its own
// (LogFile): the entries by index, and a few values (the engine's term
// and vote, the latest snapshot's record). It knows nothing of the
// consensus engine: entries are (index, bytes), values opaque bytes
// (relay/consensus encodes them). Each write is one transaction, so one
// fsync.
//
// Layout (fixed-width big-endian keys, so cursor order is index order):
//
//	entries  index(8) → entry bytes
//	values   key      → value bytes
//
// A file of the former layout (buckets "log" and "meta", etcd raft's
// protobufs) is refused with ErrLogFormat.
//
// Reads run in their own read transactions and may run alongside a write
// (bbolt allows one writer and many readers); Log has no lock of its own.
type Log struct {
	db *bolt.DB
}

// LogEntry is one log entry: its index and its bytes.
type LogEntry struct {
	Index uint64
	Data  []byte
}

var (
	bucketEntries = []byte("entries")
	bucketValues  = []byte("values")
	// The former layout's buckets.
	bucketOldLog  = []byte("log")
	bucketOldMeta = []byte("meta")
)

// OpenLog opens (creating if missing) the log file at path. A second
// process opening the same file fails after a second. A file of the
// former layout fails with ErrLogFormat, naming the file.
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
		if tx.Bucket(bucketOldLog) != nil || tx.Bucket(bucketOldMeta) != nil {
			return ErrLogFormat
		}
		for _, b := range [][]byte{bucketEntries, bucketValues} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, ErrLogFormat) {
		db.Close()
		return nil, fmt.Errorf("open log %s: %w: remove this file and the member's store (its data dir), then start it again: it catches up from the site", path, err)
	}
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

// FirstIndex is the first entry's index, 0 when the log is empty.
func (l *Log) FirstIndex() (uint64, error) {
	var i uint64
	err := l.db.View(func(tx *bolt.Tx) error {
		if k, _ := tx.Bucket(bucketEntries).Cursor().First(); k != nil {
			i = binary.BigEndian.Uint64(k)
		}
		return nil
	})
	return i, err
}

// LastIndex is the last entry's index, 0 when the log is empty.
func (l *Log) LastIndex() (uint64, error) {
	var i uint64
	err := l.db.View(func(tx *bolt.Tx) error {
		if k, _ := tx.Bucket(bucketEntries).Cursor().Last(); k != nil {
			i = binary.BigEndian.Uint64(k)
		}
		return nil
	})
	return i, err
}

// Entry is entry i's bytes, or ErrLogNotFound.
func (l *Log) Entry(i uint64) ([]byte, error) {
	var out []byte
	err := l.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketEntries).Get(idxKey(i))
		if v == nil {
			return ErrLogNotFound
		}
		out = bytes.Clone(v)
		return nil
	})
	return out, err
}

// Append stores ents in one transaction (one fsync), replacing any entry
// kept at the same index. The engine truncates a conflicting suffix with
// DeleteRange first; gaps are allowed (a log that goes on after a
// snapshot).
func (l *Log) Append(ents []LogEntry) error {
	err := l.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEntries)
		for _, e := range ents {
			if err := b.Put(idxKey(e.Index), bytes.Clone(e.Data)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("log append: %w", err)
	}
	return nil
}

// DeleteRange drops the entries from lo to hi, both included, in one
// transaction.
func (l *Log) DeleteRange(lo, hi uint64) error {
	err := l.db.Update(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEntries).Cursor()
		for k, _ := c.Seek(idxKey(lo)); k != nil && binary.BigEndian.Uint64(k) <= hi; k, _ = c.Seek(idxKey(lo)) {
			if err := c.Delete(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("log delete %d-%d: %w", lo, hi, err)
	}
	return nil
}

// SetValue records value under key (one transaction).
func (l *Log) SetValue(key, value []byte) error {
	err := l.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketValues).Put(bytes.Clone(key), bytes.Clone(value))
	})
	if err != nil {
		return fmt.Errorf("log set %q: %w", key, err)
	}
	return nil
}

// Value is the value recorded under key, nil when none.
func (l *Log) Value(key []byte) ([]byte, error) {
	var out []byte
	err := l.db.View(func(tx *bolt.Tx) error {
		out = bytes.Clone(tx.Bucket(bucketValues).Get(key))
		return nil
	})
	return out, err
}
