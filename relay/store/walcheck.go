package store

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/wal"
)

// The write-ahead log of a stopped relay's store, as check-store and
// salvage see it. After a crash, the batches answered since the last
// checkpoint (up to Options.CheckpointInterval of acknowledged writes)
// are only in the log: the file alone is not the store.

// WALReport is what VerifyWAL (or Salvage) found in the write-ahead log
// beside a store file.
type WALReport struct {
	// Dir is the log's directory; Present is false when there is none
	// (a store written without the log, or NoWAL).
	Dir     string
	Present bool
	// FileIndex is the last record the file holds (meta wal_index);
	// First and Last are the log's records (0, 0: empty).
	FileIndex, First, Last uint64
	// Pending counts the records after FileIndex that belong to the file
	// and read whole: those the next start applies (Salvage: those it
	// carried into the copy); PendingBytes their size.
	Pending      int
	PendingBytes int64
	// Devices and Channels are the store's devices and channels with
	// the pending records applied (VerifyWAL with apply, when any are
	// pending; otherwise 0): a fresh relay's first devices may be only in
	// the log, and they need its keys as much as those in the file.
	Devices, Channels int
	// Other counts the records after FileIndex written for another store
	// file (the log of a file this one replaced: a salvaged copy, a
	// backup): the next start drops them.
	Other int
	// TornBytes, when positive, is a torn append at the log's tail (at
	// TornOffset of TornFile): one a crash interrupted, never
	// acknowledged, which the next start cuts. It is not damage.
	TornFile              string
	TornOffset, TornBytes int64
	// Problems are the damage found: the next start refuses the store.
	Problems []string
	Took     time.Duration
}

func (r *WALReport) problem(format string, args ...any) {
	if len(r.Problems) < maxProblems {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
}

// Err is nil for a sound log, otherwise one line wrapping ErrDamaged.
func (r *WALReport) Err() error {
	if len(r.Problems) == 0 {
		return nil
	}
	more := ""
	if n := len(r.Problems) - 1; n > 0 {
		more = fmt.Sprintf(" (and %d more problems)", n)
	}
	return fmt.Errorf("%w: write-ahead log %s: %s%s", ErrDamaged, r.Dir, r.Problems[0], more)
}

// readWALPending reads the log beside the store file at path without
// changing anything in it (wal.OpenReadOnly), as the next Open would
// recover it for a file of epoch holding the records up to done, and
// calls fn with each record that Open would apply, in order. It fills rep
// (Pending counts the records fn took); fn's error is a problem and ends
// the walk. An epoch of nil (unknown) matches no record. The error is for
// a log that cannot be read at all (permissions, I/O).
func readWALPending(path string, epoch []byte, done uint64, rep *WALReport, fn func(index uint64, rec []byte) error) error {
	rep.Dir, rep.FileIndex = path+walSuffix, done
	l, found, err := wal.OpenReadOnly(rep.Dir, wal.Options{})
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("write-ahead log: %w", err)
	}
	defer l.Close()
	rep.Present = true
	rep.First, rep.Last = l.FirstIndex(), l.LastIndex()
	rep.TornFile, rep.TornOffset, rep.TornBytes = found.TornFile, found.TornOffset, found.TornBytes
	if found.Damage != nil {
		rep.problem("%v (the records from there on cannot be read; the next start refuses the log)", found.Damage)
	}
	last := l.LastIndex()
	if last <= done {
		return nil
	}
	// As recoverWAL decides: by the last record's epoch.
	rec, err := l.Get(last)
	if err != nil {
		rep.problem("record %d: %v", last, err)
		return nil
	}
	if e := redoEpoch(rec); len(epoch) != EpochLen || !bytes.Equal(e, epoch) {
		rep.Other = int(last - max(done, l.FirstIndex()-1))
		return nil
	}
	if first := l.FirstIndex(); first > done+1 {
		rep.problem("it starts at record %d but the file holds only up to %d: records %d to %d are missing", first, done, done+1, first-1)
		return nil
	}
	err = l.Range(done+1, func(i uint64, rec []byte) error {
		if e := redoEpoch(rec); !bytes.Equal(e, epoch) {
			return fmt.Errorf("record %d: written for another store file than the records after it", i)
		}
		if err := fn(i, rec); err != nil {
			return fmt.Errorf("record %d: %w", i, err)
		}
		rep.Pending++
		rep.PendingBytes += int64(len(rec))
		return nil
	})
	if err != nil {
		rep.problem("%v (it and the %d records after it are not applied)", err, last-done-uint64(rep.Pending)-1)
	}
	return nil
}

// VerifyWAL checks the write-ahead log beside the store file at path
// without changing anything in the data dir: every record's checksum and
// index (a torn tail is reported as what the next start cuts, not as
// damage), whether the records after the file's wal_index were written
// for this file (its epoch), and that they decode and apply: with apply
// set they are applied to the file in a bbolt write transaction that is
// rolled back, and the rows they write are decoded with the store's
// decoders. Without apply (a file Verify found damaged, whose pages bbolt
// must not write over) the records are only decoded. It fails with
// ErrLocked while a relay holds the file, and with an error wrapping
// ErrDamaged when the log is damaged; the WALReport says what was found.
func VerifyWAL(path string, lockTimeout time.Duration, apply bool) (WALReport, error) {
	start := time.Now()
	var rep WALReport
	db, err := openBolt(Options{Path: path, LockTimeout: max(lockTimeout, time.Millisecond)}, !apply)
	if errors.Is(err, bolt.ErrTimeout) {
		return rep, fmt.Errorf("verify store %s: %w", path, ErrLocked)
	}
	if err != nil {
		return rep, openError(path, err)
	}
	defer db.Close()
	var (
		epoch []byte
		done  uint64
	)
	if err := guard(func() error {
		return db.View(func(tx *bolt.Tx) error {
			done = readWALIndex(tx)
			if meta := tx.Bucket(bucketMeta); meta != nil {
				epoch = bytes.Clone(meta.Get(metaEpoch))
			}
			return nil
		})
	}); err != nil {
		rep.Dir = path + walSuffix
		rep.problem("the file's meta bucket cannot be read (%v): which records it holds is unknown", err)
		return rep, rep.Err()
	}
	var tx *bolt.Tx
	if apply {
		if err := guard(func() (err error) { tx, err = db.Begin(true); return err }); err != nil {
			return rep, fmt.Errorf("verify store %s: %w", path, err)
		}
		defer guard(func() error { return tx.Rollback() })
	}
	err = readWALPending(path, epoch, done, &rep, func(_ uint64, rec []byte) error {
		return guard(func() error {
			if tx != nil {
				// bbolt keeps the keys and values until the commit
				// (which never comes).
				if err := applyRedo(tx, bytes.Clone(rec)); err != nil {
					return err
				}
			}
			return eachRedo(rec, checkRedoPut,
				func([]byte, []byte) error { return nil },
				func([]byte, uint64) error { return nil })
		})
	})
	if err == nil && tx != nil && len(rep.Problems) == 0 && rep.Pending > 0 {
		// The totals the next start reads (Stats), its keys check too.
		var tot totals
		if gerr := guard(func() (err error) { tot, err = readTotals(tx.Bucket(bucketMeta)); return err }); gerr != nil {
			rep.problem("the totals after the records: %v", gerr)
		}
		rep.Devices, rep.Channels = int(tot.devices), int(tot.channels)
	}
	rep.Took = time.Since(start)
	if err != nil {
		return rep, err
	}
	return rep, rep.Err()
}

// checkRedoPut decodes a row a redo record puts into one of the buckets
// whose rows the store decodes.
func checkRedoPut(name, k, v []byte) error {
	var err error
	switch string(name) {
	case string(bucketDevices):
		var u push.UAID
		if len(k) != len(u) {
			return corrupt("device key", k)
		}
		copy(u[:], k)
		_, err = decodeDevice(u, v)
	case string(bucketChannels):
		u, id, ok := splitChannelKey(k)
		if !ok {
			return corrupt("channel key", k)
		}
		_, err = decodeChannel(u, id, v)
	case string(bucketMessages):
		u, seq, ok := splitMessageKey(k)
		if !ok {
			return corrupt("message key", k)
		}
		_, err = decodeMessage(u, seq, v)
	case string(bucketOrigins):
		if _, err := push.DecodeOrigin(k); err != nil {
			return corrupt("origin key", k)
		}
		if _, ok := decodeOriginValue(v); !ok {
			return corrupt("origin row", k)
		}
	case string(bucketUpstream):
		if _, ok := decodeUpstream(k, v); !ok {
			return corrupt("upstream row", k)
		}
	case string(bucketUnregOutbox):
		if _, ok := decodeOutbox(k, v); !ok {
			return corrupt("unregister outbox row", k)
		}
	}
	return err
}
