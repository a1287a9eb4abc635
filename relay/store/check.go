package store

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
	bolt "go.etcd.io/bbolt"
)

// ErrDamaged: the file failed verification, or bbolt panicked reading it.
// A damaged Store answers every call with an error wrapping ErrDamaged.
var ErrDamaged = errors.New("store damaged")

// metaClean is the clean-close mark: Close writes it, Open removes it. A
// file without it was not closed cleanly (or was written by a build
// before the mark) and Open verifies it before serving it.
var metaClean = []byte("clean")

// maxProblems bounds the problems a Report keeps; the rest are counted.
const maxProblems = 20

// Report is the outcome of a verification.
type Report struct {
	Devices, Channels, Messages int64 // rows that decode
	// Problems are the first damage found (bbolt's consistency check
	// and the rows that do not decode); Dropped counts the rest.
	Problems []string
	Dropped  int
	Took     time.Duration
}

func (r *Report) problem(format string, args ...any) {
	if len(r.Problems) >= maxProblems {
		r.Dropped++
		return
	}
	r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
}

// Err is nil for a sound file, otherwise one line wrapping ErrDamaged.
func (r *Report) Err(path string) error {
	if len(r.Problems) == 0 {
		return nil
	}
	more := ""
	if n := len(r.Problems) - 1 + r.Dropped; n > 0 {
		more = fmt.Sprintf(" (and %d more problems)", n)
	}
	return fmt.Errorf("%w: %s: %s%s", ErrDamaged, path, r.Problems[0], more)
}

// Verify checks the store file at path without writing to it: bbolt's
// consistency check (every page reachable once, freelist sound) and a
// walk that decodes every device, channel, message and index row with the
// store's own decoders. It fails with ErrLocked while a relay holds the
// file, and with an error wrapping ErrDamaged when the file is damaged;
// the Report says what was found either way.
func Verify(path string, lockTimeout time.Duration) (Report, error) {
	db, err := openBolt(Options{Path: path, LockTimeout: max(lockTimeout, time.Millisecond)}, true)
	if errors.Is(err, bolt.ErrTimeout) {
		return Report{}, fmt.Errorf("verify store %s: %w", path, ErrLocked)
	}
	if err != nil {
		return Report{}, openError(path, err)
	}
	r := verifyDB(db)
	return r, errors.Join(r.Err(path), db.Close())
}

// verifyDB walks and checks the whole file. It first reads the page
// trees itself (see checkTrees), because bbolt follows page ids and
// element offsets through unsafe pointers and recursion: a page that
// points outside the file, or back up its own tree, would make it fault
// or recurse without end where no recover can catch it (tx.Check runs on
// a goroutine of its own). Only a file whose trees are sound is then
// walked row by row and given to tx.Check.
func verifyDB(db *bolt.DB) (r Report) {
	start := time.Now()
	defer func() { r.Took = time.Since(start) }()
	if err := checkTrees(db, &r); err != nil {
		r.problem("%v", err)
	}
	if len(r.Problems) > 0 {
		return r
	}
	err := guard(func() error {
		return db.View(func(tx *bolt.Tx) error {
			walk(tx, &r)
			return nil
		})
	})
	if err != nil {
		r.problem("%v", err)
		return r
	}
	err = guard(func() error {
		return db.View(func(tx *bolt.Tx) error {
			for err := range tx.Check() {
				r.problem("bbolt check: %v", err)
			}
			return nil
		})
	})
	if err != nil {
		r.problem("%v", err)
	}
	return r
}

// checkTrees reads every page of every bucket's tree with plain reads
// (pageFile) and reports the pages bbolt could not follow safely.
func checkTrees(db *bolt.DB, r *Report) error {
	geo, err := readGeometry(db)
	if err != nil {
		return err
	}
	pf, err := openPageFile(db.Path(), geo)
	if err != nil {
		return err
	}
	defer pf.close()
	if pf.size < int64(geo.hwm)*int64(geo.pageSize) {
		r.problem("file is %d bytes, its pages need %d (truncated)", pf.size, int64(geo.hwm)*int64(geo.pageSize))
		return nil
	}
	for _, name := range geo.names {
		if root := geo.roots[name]; root != 0 {
			err := pf.walk(root, nil, func(id uint64, msg string) { r.problem("bucket %s: page %d: %s", name, id, msg) })
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// walk decodes every row of every bucket.
func walk(tx *bolt.Tx, r *Report) {
	schema, err := readSchema(tx)
	if err != nil {
		r.problem("%v", err)
		return
	}
	if schema == 0 || schema > schemaVersion() {
		// A new file has no rows yet; a newer build's rows are its own
		// business (Open refuses the file with ErrSchemaTooNew).
		return
	}
	bk := map[string]*bolt.Bucket{}
	for _, name := range [][]byte{bucketDevices, bucketChannels, bucketMessages, bucketTopics, bucketExpiry, bucketMeta} {
		b := tx.Bucket(name)
		if b == nil {
			r.problem("bucket %s missing", name)
			return
		}
		bk[string(name)] = b
	}
	if _, err := readTotals(bk["meta"]); err != nil {
		r.problem("%v", err)
	}
	bk["devices"].ForEach(func(k, v []byte) error {
		var u push.UAID
		if len(k) != len(u) {
			r.problem("%v", corrupt("device key", k))
			return nil
		}
		copy(u[:], k)
		if _, err := decodeDevice(u, v); err != nil {
			r.problem("%v", err)
			return nil
		}
		r.Devices++
		return nil
	})
	bk["channels"].ForEach(func(k, v []byte) error {
		u, id, ok := splitChannelKey(k)
		if !ok {
			r.problem("%v", corrupt("channel key", k))
			return nil
		}
		if _, err := decodeChannel(u, id, v); err != nil {
			r.problem("%v", err)
			return nil
		}
		if bk["devices"].Get(k[:16]) == nil {
			r.problem("channel %x has no device record", k)
		}
		r.Channels++
		return nil
	})
	bk["messages"].ForEach(func(k, v []byte) error {
		u, seq, ok := splitMessageKey(k)
		if !ok {
			r.problem("%v", corrupt("message key", k))
			return nil
		}
		if _, err := decodeMessage(u, seq, v); err != nil {
			r.problem("%v", err)
			return nil
		}
		r.Messages++
		return nil
	})
	bk["topics"].ForEach(func(k, v []byte) error {
		if _, ok := beUint64(v); len(k) < 32 || !ok {
			r.problem("%v", corrupt("topic row", k))
		}
		return nil
	})
	bk["expiry"].ForEach(func(k, v []byte) error {
		if len(k) != 32 {
			r.problem("%v", corrupt("expiry row", k))
		} else if len(v) != 0 {
			// Names the message's origin key (schema 5).
			if _, err := push.DecodeOrigin(v); err != nil || schema < 5 {
				r.problem("%v", corrupt("expiry row", k))
			}
		}
		return nil
	})
	if schema >= 4 {
		checkBroadcasts(tx, r)
	}
	if schema >= 5 {
		checkOrigins(tx, r)
	}
	if schema >= 6 {
		checkUpstream(tx, r)
	}
	if schema >= 7 {
		checkLinkChildren(tx, r, bucketLinkChildren)
	}
	if schema >= 8 {
		checkLinkChildren(tx, r, bucketLinkForgets)
	}
}

func splitChannelKey(k []byte) (push.UAID, push.ChannelID, bool) {
	var (
		u  push.UAID
		id push.ChannelID
	)
	if len(k) != 32 {
		return u, id, false
	}
	copy(u[:], k)
	copy(id[:], k[16:])
	return u, id, true
}

func splitMessageKey(k []byte) (push.UAID, uint64, bool) {
	var u push.UAID
	if len(k) != 24 {
		return u, 0, false
	}
	copy(u[:], k)
	seq, _ := beUint64(k[16:])
	return u, seq, true
}

// guard runs fn, which reads the bbolt file, turning a panic (bbolt
// panics on pages it cannot make sense of) and a memory fault (a page id
// pointing outside the file) into an error wrapping ErrDamaged.
func guard(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: bbolt: %v", ErrDamaged, r)
		}
	}()
	return fn()
}

// damage marks the store damaged once: from then on every call answers
// err. It returns the first damage error.
func (s *Store) damage(err error) error {
	if s.damaged.CompareAndSwap(nil, &err) {
		s.log.Error("store damaged: refusing every further read and write; stop the relay and run pushrelay check-store (docs/operations.md, Damaged store)",
			"path", s.opts.Path, "err", err)
	}
	return *s.damaged.Load()
}

// Damaged returns the damage the store met while serving (wrapping
// ErrDamaged), or nil while it is sound.
func (s *Store) Damaged() error {
	if p := s.damaged.Load(); p != nil {
		return *p
	}
	return nil
}

// guarded runs fn with guard and marks the store damaged if fn panicked.
func (s *Store) guarded(fn func() error) error {
	err := guard(fn)
	if err != nil && errors.Is(err, ErrDamaged) {
		return s.damage(fmt.Errorf("store %s: %w", s.opts.Path, err))
	}
	return err
}

// markClean writes the clean-close mark; see metaClean.
func markClean(db *bolt.DB) error {
	return guard(func() error {
		return db.Update(func(tx *bolt.Tx) error {
			meta := tx.Bucket(bucketMeta)
			if meta == nil {
				return nil
			}
			return meta.Put(metaClean, []byte{1})
		})
	})
}

// takeClean reports whether the file needs no verification, because it
// carries the clean-close mark or is new (no schema yet), and removes the
// mark, so that a crash from now on leaves the file unmarked.
func takeClean(db *bolt.DB) (bool, error) {
	var marked, fresh bool
	err := guard(func() error {
		return db.View(func(tx *bolt.Tx) error {
			meta := tx.Bucket(bucketMeta)
			fresh = meta == nil && tx.Bucket(bucketDevices) == nil
			marked = meta != nil && bytes.Equal(meta.Get(metaClean), []byte{1})
			return nil
		})
	})
	if err != nil || !marked {
		return fresh, err
	}
	return true, guard(func() error {
		return db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Delete(metaClean) })
	})
}

// checkSize fails with ErrDamaged when the file is shorter than the pages
// its meta page counts (a file cut short: bbolt would fault on the first
// page read past the end).
func checkSize(db *bolt.DB) error {
	var need int64
	err := guard(func() error {
		return db.View(func(tx *bolt.Tx) error { need = tx.Size(); return nil })
	})
	if err != nil {
		return fmt.Errorf("store %s: %w", db.Path(), err)
	}
	fi, err := os.Stat(db.Path())
	if err != nil {
		return fmt.Errorf("open store %s: %w", db.Path(), err)
	}
	if fi.Size() < need {
		return fmt.Errorf("%w: %s: file is %d bytes, its pages need %d (truncated)", ErrDamaged, db.Path(), fi.Size(), need)
	}
	return nil
}

// openError reports why bbolt could not open path: the system's refusal
// (permissions, a missing file, mmap failing for lack of address space)
// as itself, anything else (no valid meta page, a file too short, a
// panic) as damage.
func openError(path string, err error) error {
	var (
		pathErr *fs.PathError
		errno   syscall.Errno
	)
	if errors.As(err, &pathErr) || errors.As(err, &errno) {
		return fmt.Errorf("open store %s: %w", path, err)
	}
	if errors.Is(err, ErrDamaged) {
		return fmt.Errorf("store %s: %w", path, err)
	}
	return fmt.Errorf("%w: %s: %v", ErrDamaged, path, err)
}

// checkOrigins decodes the origin-key index (schema 5 and later).
func checkOrigins(tx *bolt.Tx, r *Report) {
	b := tx.Bucket(bucketOrigins)
	if b == nil {
		r.problem("bucket %s missing", bucketOrigins)
		return
	}
	b.ForEach(func(k, v []byte) error {
		if _, err := push.DecodeOrigin(k); err != nil {
			r.problem("%v", corrupt("origin key", k))
		} else if _, ok := decodeOriginValue(v); !ok {
			r.problem("%v", corrupt("origin row", k))
		}
		return nil
	})
}
