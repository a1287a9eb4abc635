package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushrelay/pushrelay/relay/atomicfile"
	"github.com/pushrelay/pushrelay/relay/metrics"
)

// DefaultSegmentBytes is the size at which a segment is closed and the
// next one begun, when Options.SegmentBytes is 0.
const DefaultSegmentBytes = 8 << 20

// firstName is the side file holding the logical first index that
// TruncateFront set: 8 bytes little-endian and their CRC-32C.
const firstName = "first"

var (
	// ErrNotFound is returned for an index outside [FirstIndex, LastIndex].
	ErrNotFound = errors.New("wal: entry not found")
	// ErrCorrupt is returned (wrapped, naming the file and offset) for a
	// damaged record that is not a torn tail.
	ErrCorrupt = errors.New("wal: corrupt")
	// ErrOutOfOrder is returned by Append when first is not LastIndex()+1.
	ErrOutOfOrder = errors.New("wal: append out of order")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("wal: closed")
)

// Options configure a Log. The zero value is usable.
type Options struct {
	// SegmentBytes is the size past which the next Append begins a new
	// segment file (an Append is never split, so a segment may exceed it by
	// one Append). 0: DefaultSegmentBytes.
	SegmentBytes int64
	// Logger receives recovery notes (a torn tail cut off); nil discards.
	Logger *slog.Logger
	// Metrics receives the log's metrics; nil keeps them private.
	Metrics *metrics.Registry
	// MetricsPrefix names the metrics ("<prefix>_appends_total", ...);
	// "": "pushrelay_wal". Two logs sharing a registry need different ones.
	MetricsPrefix string
}

// Log is a write-ahead log in one directory. One writer at a time (Append,
// TruncateFront, TruncateBack); Get, Range, FirstIndex and LastIndex may
// run concurrently with it and with each other.
type Log struct {
	dir  string
	o    Options
	log  *slog.Logger
	m    *walMetrics
	wmu  sync.Mutex // held by the writer: Append, Truncate*, Close
	buf  []byte     // the writer's encoding buffer
	fail error      // set when a write or sync failed: the file's state is unknown
	ro   bool       // OpenReadOnly: nothing is written
	// noReserve is set once the filesystem said it cannot preallocate
	// (reserve): segments then grow as they are written.
	noReserve bool
	// found is what recovery found beyond the records (OpenReadOnly).
	found Findings

	mu          sync.RWMutex // guards what follows; readers hold it while reading files
	segs        []*segment   // in index order; the last is the open one
	first, last uint64       // 0, 0 when empty
	closed      bool

	nSegs  atomic.Int64
	nSyncs atomic.Uint64 // fdatasyncs and directory fsyncs, for tests and benchmarks
	nBytes atomic.Uint64 // bytes written to segments
}

// Open opens (creating) the log in dir and recovers it: every segment is
// read and checked; a torn final Append at the tail of the last segment is
// cut off (logged); any other damage or a gap in indexes is ErrCorrupt.
func Open(dir string, o Options) (*Log, error) {
	if o.SegmentBytes <= 0 {
		o.SegmentBytes = DefaultSegmentBytes
	}
	if o.MetricsPrefix == "" {
		o.MetricsPrefix = "pushrelay_wal"
	}
	lg := o.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("wal: %w", err)
	}
	l := &Log{dir: dir, o: o, log: lg}
	if err := l.recover(); err != nil {
		l.closeFiles()
		return nil, err
	}
	l.m = newMetrics(metrics.OrNew(o.Metrics), o.MetricsPrefix, l)
	return l, nil
}

// ErrReadOnly is returned by the writes of a Log opened with OpenReadOnly.
var ErrReadOnly = errors.New("wal: opened read-only")

// Findings is what OpenReadOnly found beyond the records it serves.
type Findings struct {
	// TornBytes, when positive, are the bytes at TornOffset of TornFile,
	// the last segment, that a crash left of an Append that never
	// returned: Open cuts them. They are counted up to the last byte
	// that is not zero (zeros after it read like reserved space).
	TornFile              string
	TornOffset, TornBytes int64
	// Damage is what Open would refuse (wrapping ErrCorrupt): a damaged
	// record with an acknowledged Append after it, a gap in indexes, a
	// damaged side file. The log read-only ends at the last whole record
	// before it (a damaged side file: the segments are read from their
	// first record).
	Damage error
}

// OpenReadOnly opens the log in dir for reading without changing
// anything in it (files are opened read-only): it checks every record as
// Open does, but leaves a torn tail in place and reports it, and reports
// damage instead of failing on it (Findings). Append and the truncations
// fail with ErrReadOnly. A missing dir is an error wrapping
// fs.ErrNotExist. It takes no lock: a log written meanwhile may look
// torn or damaged at its tail.
func OpenReadOnly(dir string, o Options) (*Log, Findings, error) {
	if o.MetricsPrefix == "" {
		o.MetricsPrefix = "pushrelay_wal"
	}
	lg := o.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, Findings{}, fmt.Errorf("wal: %w", err)
	}
	if !fi.IsDir() {
		return nil, Findings{}, fmt.Errorf("wal: %s is not a directory", dir)
	}
	l := &Log{dir: dir, o: o, log: lg, ro: true}
	if err := l.recover(); err != nil {
		l.closeFiles()
		return nil, Findings{}, err
	}
	l.m = newMetrics(metrics.OrNew(o.Metrics), o.MetricsPrefix, l)
	return l, l.found, nil
}

func (l *Log) recover() error {
	des, err := os.ReadDir(l.dir)
	if err != nil {
		return fmt.Errorf("wal: %w", err)
	}
	var starts []uint64
	for _, de := range des {
		if start, ok := parseSegmentName(de.Name()); ok && de.Type().IsRegular() {
			starts = append(starts, start)
		}
	}
	slices.Sort(starts)
	front, err := l.readFirst()
	if err != nil {
		if !l.ro || !errors.Is(err, ErrCorrupt) {
			return err
		}
		l.found.Damage, front = err, 0
	}
	// damaged is the read-only open's way out: what Open would refuse is
	// noted, and the log ends at the last whole record before it.
	damaged := func(err error) bool {
		if !l.ro || !errors.Is(err, ErrCorrupt) {
			return false
		}
		l.found.Damage = err
		return true
	}
	flag := os.O_RDWR
	if l.ro {
		flag = os.O_RDONLY
	}
	dirty := false // a file was cut or removed: sync the directory
	for i, start := range starts {
		s, err := openSegment(l.dir, start, flag)
		if err != nil {
			return err
		}
		l.segs = append(l.segs, s)
		if i > 0 {
			prev := l.segs[i-1]
			if want := prev.start + prev.n; start != want {
				err := s.corrupt(0, "segment begins at index %d, the one before ends at %d", start, want-1)
				if damaged(err) {
					l.dropLast()
					break
				}
				return err
			}
		}
		res, err := s.scan()
		if err != nil {
			if damaged(err) {
				// s holds the records before the one of the wrong index.
				if s.n == 0 {
					l.dropLast()
				}
				break
			}
			return err
		}
		lastSeg := i == len(starts)-1
		if res.unwritten() {
			// Space reserved ahead of the Appends: the records end
			// where the zeros begin. (In an earlier segment too: one
			// begun with a larger SegmentBytes. Records lost from its
			// end would show as a gap before the next segment.)
		} else if res.badAt >= 0 {
			if !lastSeg || !res.tornOK {
				err := s.corrupt(res.badAt, "%v, and whole records after it", res.badErr)
				if damaged(err) {
					if s.n == 0 {
						l.dropLast()
					}
					break
				}
				return err
			}
			// What the torn Append wrote, not the reserved zeros after.
			end := res.dataEnd
			if l.ro {
				l.found.TornFile, l.found.TornOffset, l.found.TornBytes = s.path, res.badAt, end-res.badAt
			} else {
				l.log.Warn("wal: cut a torn record at the tail (an Append the crash interrupted)",
					"file", s.path, "offset", res.badAt, "cause", res.badErr, "bytes", end-res.badAt)
				if err := s.f.Truncate(res.badAt); err != nil {
					return fmt.Errorf("wal: cut torn tail: %w", err)
				}
				if err := fdatasync(s.f); err != nil {
					return fmt.Errorf("wal: cut torn tail: %w", err)
				}
			}
		} else if res.fileLen != s.size {
			return s.corrupt(s.size, "file longer than its records")
		}
		if s.n == 0 {
			if !lastSeg {
				err := s.corrupt(0, "empty segment before others")
				if damaged(err) {
					l.dropLast()
					break
				}
				return err
			}
			// Created by an Append that never got a record to disk.
			l.dropLast()
			if !l.ro {
				if err := os.Remove(s.path); err != nil {
					return fmt.Errorf("wal: %w", err)
				}
				dirty = true
			}
			break // segs[i-1], now the last, is not sealed yet
		}
		if i > 0 {
			l.segs[i-1].seal()
		}
	}
	if len(l.segs) > 0 {
		l.first = l.segs[0].start
		last := l.segs[len(l.segs)-1]
		l.last = last.last()
	}
	switch {
	case l.ro && (len(l.segs) == 0 || front > l.last):
		l.closeFiles()
		l.segs, l.first, l.last = nil, 0, 0
	case l.ro && front > l.first:
		l.first = front
		k := 0
		for k+1 < len(l.segs) && l.segs[k+1].start <= front {
			l.segs[k].f.Close()
			k++
		}
		l.segs = slices.Delete(l.segs, 0, k)
	case len(l.segs) == 0 || front > l.last:
		// Empty, or emptied by a TruncateFront that a crash interrupted.
		if err := l.removeAll(); err != nil {
			return err
		}
	case front > l.first:
		l.first = front
		if err := l.dropBelow(front); err != nil {
			return err
		}
	}
	l.nSegs.Store(int64(len(l.segs)))
	if !l.ro && len(l.segs) > 0 {
		l.reserve(l.segs[len(l.segs)-1])
	}
	if dirty {
		return l.syncDir()
	}
	return nil
}

// reserve preallocates the open segment s up to SegmentBytes (fallocate),
// so that Appends write into blocks the file already has, inside its
// size: an fdatasync then commits no new size, only the block map's
// change from unwritten to written where the Append reached new blocks.
// On ext4 that halves the bytes a small Append's sync writes (8.9 KB to
// 4.9-5.6 KB for 700 bytes: the page plus far fewer journal blocks) and
// shortens it. The reserved space reads as zeros, which recovery takes
// for the end of the records (scanResult.unwritten); Close gives it
// back. Best effort: a filesystem that cannot (UBIFS, JFFS2) or a full
// disk leaves the segment growing as it is written.
func (l *Log) reserve(s *segment) {
	if l.noReserve {
		return
	}
	err := preallocate(s.f, l.o.SegmentBytes)
	switch {
	case err == nil:
	case errors.Is(err, errors.ErrUnsupported):
		l.noReserve = true
		l.log.Info("wal: the filesystem cannot preallocate log segments; each sync also commits the file's new size", "dir", l.dir, "err", err)
	default:
		// A full disk, say: the Appends still get what space there is.
		l.log.Debug("wal: segment not preallocated", "file", s.path, "err", err)
	}
}

// dropLast closes the last segment and forgets it (its file stays).
func (l *Log) dropLast() {
	n := len(l.segs)
	l.segs[n-1].f.Close()
	l.segs = l.segs[:n-1]
}

// readFirst reads the side file; 0 when there is none.
func (l *Log) readFirst() (uint64, error) {
	b, err := os.ReadFile(filepath.Join(l.dir, firstName))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("wal: %w", err)
	}
	if len(b) != 12 || crc32.Checksum(b[:8], castagnoli) != binary.LittleEndian.Uint32(b[8:]) {
		return 0, fmt.Errorf("wal: %s: bad content: %w", filepath.Join(l.dir, firstName), ErrCorrupt)
	}
	return binary.LittleEndian.Uint64(b), nil
}

func (l *Log) writeFirst(index uint64) error {
	b := binary.LittleEndian.AppendUint64(nil, index)
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	if err := atomicfile.Write(filepath.Join(l.dir, firstName), b, 0o600); err != nil {
		return fmt.Errorf("wal: %w", err)
	}
	l.nSyncs.Add(2)
	return nil
}

// FirstIndex returns the first entry's index, 0 when the log is empty.
func (l *Log) FirstIndex() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.first
}

// LastIndex returns the last entry's index, 0 when the log is empty.
func (l *Log) LastIndex() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.last
}

// Append writes entries at first, first+1, ... and returns once they are
// durable: one write and one fdatasync, plus a directory fsync when it
// begins a segment. first must be LastIndex()+1 unless the log is empty
// (then any index but 0). Entries are copied; the caller keeps them.
func (l *Log) Append(first uint64, entries ...[]byte) error {
	if len(entries) == 0 {
		return nil
	}
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if err := l.writable(); err != nil {
		return err
	}
	if first == 0 || (l.last != 0 && first != l.last+1) {
		return fmt.Errorf("wal: append at %d after %d: %w", first, l.last, ErrOutOfOrder)
	}
	var tail *segment
	if n := len(l.segs); n > 0 {
		tail = l.segs[n-1]
	}
	var fresh *segment
	if tail == nil || tail.size >= l.o.SegmentBytes {
		var err error
		if fresh, err = openSegment(l.dir, first, os.O_RDWR|os.O_CREATE|os.O_TRUNC); err != nil {
			return err
		}
		l.reserve(fresh) // made durable by the Append's sync
		tail = fresh
	}
	base := tail.size
	l.buf = l.buf[:0]
	offs := make([]int64, 0, len(entries))
	for i, e := range entries {
		if len(e) > MaxEntry {
			if fresh != nil {
				l.discard(fresh)
			}
			return fmt.Errorf("wal: entry %d of %d bytes, over %d", first+uint64(i), len(e), MaxEntry)
		}
		offs = append(offs, base+int64(len(l.buf)))
		l.buf = appendRecord(l.buf, first+uint64(i), e, i == 0)
	}
	if err := l.write(tail, base, fresh != nil); err != nil {
		if fresh != nil {
			l.discard(fresh)
		}
		return err
	}

	l.mu.Lock()
	if fresh != nil {
		if n := len(l.segs); n > 0 {
			l.segs[n-1].seal()
		}
		l.segs = append(l.segs, fresh)
		l.nSegs.Store(int64(len(l.segs)))
	}
	tail.offs = append(tail.offs, offs...)
	tail.n += uint64(len(entries))
	tail.size += int64(len(l.buf))
	if l.first == 0 {
		l.first = first
	}
	l.last = first + uint64(len(entries)) - 1
	l.mu.Unlock()

	l.m.appends.Inc()
	l.m.entries.Add(float64(len(entries)))
	l.m.bytes.Add(float64(len(l.buf)))
	if cap(l.buf) > 4<<20 {
		l.buf = nil // don't keep a huge batch's buffer
	}
	return nil
}

// write writes l.buf at off in s and syncs it (and the directory when s
// is new). A failure makes the log refuse further writes.
func (l *Log) write(s *segment, off int64, fresh bool) error {
	if _, err := s.f.WriteAt(l.buf, off); err != nil {
		l.fail = fmt.Errorf("wal: write %s: %w", s.path, err)
		return l.fail
	}
	l.nBytes.Add(uint64(len(l.buf)))
	t := time.Now()
	err := fdatasync(s.f)
	l.m.fsyncSeconds.Observe(time.Since(t).Seconds())
	l.m.fsyncs.Inc()
	l.nSyncs.Add(1)
	if err != nil {
		// After a failed fdatasync the page cache may hold data the disk
		// does not: nothing written since can be trusted.
		l.fail = fmt.Errorf("wal: %w", err)
		return l.fail
	}
	if fresh {
		if err := l.syncDir(); err != nil {
			l.fail = err
			return err
		}
	}
	return nil
}

// discard closes and removes a segment file Append created but did not
// publish.
func (l *Log) discard(s *segment) {
	s.f.Close()
	os.Remove(s.path)
}

func (l *Log) writable() error {
	if l.ro {
		return ErrReadOnly
	}
	if l.fail != nil {
		return l.fail
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return ErrClosed
	}
	return nil
}

// find returns the segment holding index, which must be in [first, last].
func (l *Log) find(index uint64) *segment {
	i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].start > index })
	return l.segs[i-1]
}

// Get returns entry index's data (a new slice), ErrNotFound outside
// [FirstIndex, LastIndex], ErrCorrupt if its record is damaged.
func (l *Log) Get(index uint64) ([]byte, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return nil, ErrClosed
	}
	if index == 0 || index < l.first || index > l.last {
		return nil, fmt.Errorf("wal: index %d outside [%d, %d]: %w", index, l.first, l.last, ErrNotFound)
	}
	return l.find(index).read(index)
}

// rangeChunk is about how many bytes Range reads at once.
const rangeChunk = 256 << 10

// Range calls fn for every entry from from (FirstIndex if from is below
// it) to the LastIndex at the call, in order, and stops at fn's first
// error, which it returns. data is fn's to keep. The log is not locked
// while fn runs: fn may call Get, and an Append may run meanwhile; a
// TruncateFront past the entries not yet visited ends Range with
// ErrNotFound.
func (l *Log) Range(from uint64, fn func(index uint64, data []byte) error) error {
	l.mu.RLock()
	last := l.last
	from = max(from, l.first)
	l.mu.RUnlock()
	if last == 0 {
		return nil
	}
	for from <= last {
		var recs []record
		if err := l.readRun(from, last, &recs); err != nil {
			return err
		}
		for _, r := range recs {
			if err := fn(r.index, r.data); err != nil {
				return err
			}
		}
		from += uint64(len(recs))
	}
	return nil
}

func (l *Log) readRun(from, last uint64, recs *[]record) error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return ErrClosed
	}
	if from < l.first || from > l.last {
		return fmt.Errorf("wal: index %d outside [%d, %d]: %w", from, l.first, l.last, ErrNotFound)
	}
	return l.find(from).readRun(from, min(last, l.last), rangeChunk, func(r record) {
		*recs = append(*recs, r)
	})
}

// TruncateFront lets the entries before index go: FirstIndex becomes index
// (kept across a restart) and the segments holding only entries before it
// are removed. An index past LastIndex empties the log (the next Append
// may then start anywhere); one at or below FirstIndex does nothing.
func (l *Log) TruncateFront(index uint64) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if err := l.writable(); err != nil {
		return err
	}
	if l.last == 0 || index <= l.first {
		return nil
	}
	if index > l.last {
		return l.removeAll()
	}
	if err := l.writeFirst(index); err != nil {
		return err
	}
	l.mu.Lock()
	l.first = index
	l.mu.Unlock()
	return l.dropBelow(index)
}

// dropBelow removes the segments holding only entries below index.
func (l *Log) dropBelow(index uint64) error {
	l.mu.Lock()
	k := 0
	for k+1 < len(l.segs) && l.segs[k+1].start <= index {
		k++
	}
	gone := slices.Clone(l.segs[:k])
	l.segs = slices.Delete(l.segs, 0, k)
	l.nSegs.Store(int64(len(l.segs)))
	l.mu.Unlock()
	return l.removeSegments(gone)
}

// removeSegments closes and removes segments no reader can reach any more.
func (l *Log) removeSegments(gone []*segment) error {
	if len(gone) == 0 {
		return nil
	}
	for _, s := range gone {
		s.f.Close()
		if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("wal: %w", err)
		}
	}
	return l.syncDir()
}

// removeAll empties the log: every segment, then the side file.
func (l *Log) removeAll() error {
	l.mu.Lock()
	gone := l.segs
	l.segs = nil
	l.first, l.last = 0, 0
	l.nSegs.Store(0)
	l.mu.Unlock()
	// The last segment first, so that a crash leaves a prefix.
	slices.Reverse(gone)
	if err := l.removeSegments(gone); err != nil {
		return err
	}
	err := os.Remove(filepath.Join(l.dir, firstName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("wal: %w", err)
	}
	return l.syncDir()
}

// TruncateBack removes the entries after index and returns once that is
// durable. An index below FirstIndex empties the log; one at or past
// LastIndex does nothing.
func (l *Log) TruncateBack(index uint64) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if err := l.writable(); err != nil {
		return err
	}
	if l.last == 0 || index >= l.last {
		return nil
	}
	if index < l.first {
		return l.removeAll()
	}
	i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].start > index })
	s := l.segs[i-1]
	end, err := s.end(index)
	if err != nil {
		return err
	}
	// Readers stop seeing the entries first; then later segments go,
	// durably, so that a crash cannot leave a cut segment followed by
	// whole ones (a gap); then the cut.
	l.mu.Lock()
	gone := slices.Clone(l.segs[i:])
	l.segs = l.segs[:i]
	l.last = index
	l.nSegs.Store(int64(len(l.segs)))
	s.n = index - s.start + 1
	s.size = end
	s.offs = s.offs[:(s.n+s.step-1)/s.step]
	l.mu.Unlock()
	slices.Reverse(gone)
	if err := l.removeSegments(gone); err != nil {
		l.fail = err
		return err
	}
	if err := s.f.Truncate(end); err != nil {
		l.fail = fmt.Errorf("wal: truncate %s: %w", s.path, err)
		return l.fail
	}
	l.nSyncs.Add(1)
	if err := fdatasync(s.f); err != nil {
		l.fail = fmt.Errorf("wal: %w", err)
		return l.fail
	}
	l.reserve(s)
	if s.step == 1 {
		return nil
	}
	// s is the open segment now: give it every offset again.
	c := &segment{start: s.start, path: s.path, f: s.f}
	if _, err := c.scan(); err != nil {
		l.fail = err
		return err
	}
	if c.last() != index || c.size != end {
		l.fail = s.corrupt(end, "after the cut, records end at index %d, offset %d", c.last(), c.size)
		return l.fail
	}
	l.mu.Lock()
	s.offs, s.step = c.offs, 1
	l.mu.Unlock()
	return nil
}

func (l *Log) syncDir() error {
	d, err := os.Open(l.dir)
	if err != nil {
		return fmt.Errorf("wal: %w", err)
	}
	defer d.Close()
	l.nSyncs.Add(1)
	if l.m != nil {
		l.m.fsyncs.Inc()
	}
	if err := d.Sync(); err != nil {
		return fmt.Errorf("wal: sync %s: %w", l.dir, err)
	}
	return nil
}

// Close closes the segment files. It waits for a running Append or
// truncation; Get and Range fail with ErrClosed after it. Idempotent.
func (l *Log) Close() error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	var err error
	if n := len(l.segs); n > 0 && !l.ro && l.fail == nil {
		// The space reserve took and no Append reached goes back, so a
		// stopped relay's log is its records. (A crash leaves it: the
		// next Open reads it as the end.) Not synced: either way is
		// sound.
		s := l.segs[n-1]
		if terr := s.f.Truncate(s.size); terr != nil {
			err = fmt.Errorf("wal: give back %s's reserved space: %w", s.path, terr)
		}
	}
	return errors.Join(err, l.closeFiles())
}

func (l *Log) closeFiles() error {
	var errs []error
	for _, s := range l.segs {
		if err := s.f.Close(); err != nil {
			errs = append(errs, fmt.Errorf("wal: %w", err))
		}
	}
	return errors.Join(errs...)
}
