package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime/debug"
	"syscall"
	"time"

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

// verifyDB walks and checks the whole file. It runs the walk first: the
// walk reads pages with faults turned into panics and recovered, while
// tx.Check runs on a goroutine of bbolt's, so it only reads what the walk
// has already read without harm.
func verifyDB(db *bolt.DB) (r Report) {
	start := time.Now()
	defer func() { r.Took = time.Since(start) }()
	var hwm uint64
	err := guard(func() error {
		return db.View(func(tx *bolt.Tx) error {
			hwm = uint64(tx.Size()) / uint64(db.Info().PageSize)
			return nil
		})
	})
	if err == nil {
		err = checkPages(db.Path(), db.Info().PageSize, hwm, &r)
	}
	if err != nil {
		r.problem("%v", err)
	}
	if len(r.Problems) > 0 {
		return r
	}
	err = guard(func() error {
		return db.View(func(tx *bolt.Tx) error {
			walk(tx, &r)
			return nil
		})
	})
	if err != nil {
		r.problem("%v", err)
	} else {
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
	}
	return r
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
		var u UAID
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
		if len(k) != 32 || len(v) != 0 {
			r.problem("%v", corrupt("expiry row", k))
		}
		return nil
	})
}

func splitChannelKey(k []byte) (UAID, ChannelID, bool) {
	var (
		u  UAID
		id ChannelID
	)
	if len(k) != 32 {
		return u, id, false
	}
	copy(u[:], k)
	copy(id[:], k[16:])
	return u, id, true
}

func splitMessageKey(k []byte) (UAID, uint64, bool) {
	var u UAID
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

// damageErr returns the damage error, or nil while the store is sound.
func (s *Store) damageErr() error {
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

// bbolt's page layout, as its file format defines it (native byte
// order): a 16-byte header (id 8, flags 2, count 2, overflow 4), then
// count 16-byte elements whose key (and value) sit pos bytes after the
// element itself. A branch element is pos 4, ksize 4, child page id 8; a
// leaf element flags 4, pos 4, ksize 4, vsize 4, and a leaf element
// flagged as a bucket holds the bucket's root page id and sequence, then,
// when the root id is 0, the bucket's own (inline) leaf page.
const (
	pageHeaderSize = 16
	pageElemSize   = 16
	branchPageFlag = 0x01
	leafPageFlag   = 0x02
	bucketLeafFlag = 0x01
	inBucketSize   = 16
)

// checkPages reads every branch and leaf page of the file with plain
// reads (never through bbolt's memory map) and checks that each element's
// key and value lie inside its page and each page id it names lies inside
// the file. bbolt reads pages through unsafe pointers: a page that breaks
// these bounds makes it fault outside any goroutine we could guard (tx.Check
// runs on its own), so the bounds are checked first. hwm is the file's
// page count as its meta page says.
func checkPages(path string, pageSize int, hwm uint64, r *Report) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if uint64(fi.Size()) < hwm*uint64(pageSize) {
		r.problem("file is %d bytes, its pages need %d (truncated)", fi.Size(), hwm*uint64(pageSize))
		return nil
	}
	ne := binary.NativeEndian
	buf := make([]byte, pageSize)
	for id := uint64(2); id < hwm; id++ {
		if _, err := f.ReadAt(buf[:pageSize], int64(id)*int64(pageSize)); err != nil {
			return err
		}
		flags := ne.Uint16(buf[8:])
		if ne.Uint64(buf) != id || (flags != branchPageFlag && flags != leafPageFlag) {
			continue // free, freelist, overflow or damaged (bbolt reports those)
		}
		overflow := uint64(ne.Uint32(buf[12:]))
		if id+overflow >= hwm {
			r.problem("page %d: overflow %d runs past the last page %d", id, overflow, hwm-1)
			continue
		}
		page := buf
		if overflow > 0 {
			page = make([]byte, (1+overflow)*uint64(pageSize))
			if _, err := f.ReadAt(page, int64(id)*int64(pageSize)); err != nil {
				return err
			}
		}
		if msg := checkPageBounds(page, flags, hwm); msg != "" {
			r.problem("page %d: %s", id, msg)
		}
		id += overflow
	}
	return nil
}

// checkPageBounds checks one page (or an inline bucket page) held whole
// in p; it returns what is wrong, or "".
func checkPageBounds(p []byte, flags uint16, hwm uint64) string {
	ne := binary.NativeEndian
	if len(p) < pageHeaderSize {
		return "shorter than a page header"
	}
	count := int(ne.Uint16(p[10:]))
	if pageHeaderSize+count*pageElemSize > len(p) {
		return fmt.Sprintf("%d elements do not fit", count)
	}
	for i := range count {
		off := pageHeaderSize + i*pageElemSize
		e := p[off : off+pageElemSize]
		if flags == branchPageFlag {
			pos, ksize, child := uint64(ne.Uint32(e)), uint64(ne.Uint32(e[4:])), ne.Uint64(e[8:])
			if uint64(off)+pos+ksize > uint64(len(p)) {
				return fmt.Sprintf("branch element %d lies outside the page", i)
			}
			if child < 2 || child >= hwm {
				return fmt.Sprintf("branch element %d names page %d, outside 2..%d", i, child, hwm-1)
			}
			continue
		}
		eflags, pos, ksize, vsize := ne.Uint32(e), uint64(ne.Uint32(e[4:])), uint64(ne.Uint32(e[8:])), uint64(ne.Uint32(e[12:]))
		end := uint64(off) + pos + ksize + vsize
		if end > uint64(len(p)) {
			return fmt.Sprintf("leaf element %d lies outside the page", i)
		}
		if eflags&bucketLeafFlag == 0 {
			continue
		}
		v := p[uint64(off)+pos+ksize : end]
		if len(v) < inBucketSize {
			return fmt.Sprintf("bucket %d: header cut short", i)
		}
		root := ne.Uint64(v)
		switch {
		case root == 0:
			if msg := checkPageBounds(v[inBucketSize:], leafPageFlag, hwm); msg != "" {
				return fmt.Sprintf("inline bucket %d: %s", i, msg)
			}
		case root < 2 || root >= hwm:
			return fmt.Sprintf("bucket %d: root page %d outside 2..%d", i, root, hwm-1)
		}
	}
	return ""
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
