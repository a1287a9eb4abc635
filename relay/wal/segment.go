package wal

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// sampleEvery is how sparse a sealed segment's offset index is: it keeps
// the offset of every sampleEvery-th record and reads the headers in
// between. The open (last) segment keeps every offset.
const sampleEvery = 16

const segmentSuffix = ".wal"

// segment is one file of records start, start+1, ..., start+n-1.
type segment struct {
	start uint64
	n     uint64 // records
	size  int64  // bytes of whole records; the file is cut to this
	path  string
	f     *os.File
	offs  []int64 // offs[k] is the offset of record start+k*step
	step  uint64
}

func segmentName(start uint64) string { return fmt.Sprintf("%020d%s", start, segmentSuffix) }

// parseSegmentName returns the first index a segment file's name gives.
func parseSegmentName(name string) (uint64, bool) {
	digits, ok := strings.CutSuffix(name, segmentSuffix)
	if !ok || len(digits) != 20 {
		return 0, false
	}
	v, err := strconv.ParseUint(digits, 10, 64)
	return v, err == nil && v > 0
}

func (s *segment) last() uint64 { return s.start + s.n - 1 }

// corrupt is the error for damage at off in s.
func (s *segment) corrupt(off int64, format string, args ...any) error {
	return fmt.Errorf("wal: %s at offset %d: %s: %w", s.path, off, fmt.Sprintf(format, args...), ErrCorrupt)
}

// seal thins the offset index to every sampleEvery-th record.
func (s *segment) seal() {
	if s.step != 1 {
		return
	}
	thin := make([]int64, 0, (len(s.offs)+sampleEvery-1)/sampleEvery)
	for k := 0; k < len(s.offs); k += sampleEvery {
		thin = append(thin, s.offs[k])
	}
	s.offs, s.step = thin, sampleEvery
}

// readHeader reads the header at off and checks it is within the segment.
func (s *segment) readHeader(off int64, h []byte) (int, error) {
	if off+headerSize > s.size {
		return 0, s.corrupt(off, "record header beyond the end (%d)", s.size)
	}
	if _, err := s.f.ReadAt(h[:headerSize], off); err != nil {
		return 0, fmt.Errorf("wal: read %s: %w", s.path, err)
	}
	n, _, err := bodyLen(h)
	if err != nil || off+headerSize+int64(n) > s.size {
		return 0, s.corrupt(off, "record length %d beyond the end (%d)", n, s.size)
	}
	return n, nil
}

// offset returns where index's record starts, reading the headers between
// it and the nearest sampled offset before it.
func (s *segment) offset(index uint64) (int64, error) {
	k := index - s.start
	off := s.offs[k/s.step]
	var h [headerSize]byte
	for range k % s.step {
		n, err := s.readHeader(off, h[:])
		if err != nil {
			return 0, err
		}
		off += headerSize + int64(n)
	}
	return off, nil
}

// end returns the offset just past index's record.
func (s *segment) end(index uint64) (int64, error) {
	if index == s.last() {
		return s.size, nil
	}
	return s.offset(index + 1)
}

// read returns index's data, a new slice.
func (s *segment) read(index uint64) ([]byte, error) {
	off, err := s.offset(index)
	if err != nil {
		return nil, err
	}
	var h [headerSize]byte
	n, err := s.readHeader(off, h[:])
	if err != nil {
		return nil, err
	}
	b := make([]byte, headerSize+n)
	if _, err := s.f.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("wal: read %s: %w", s.path, err)
	}
	r, err := decodeRecord(b)
	if err != nil {
		return nil, s.corrupt(off, "%v", err)
	}
	if r.index != index {
		return nil, s.corrupt(off, "record of index %d where %d belongs", r.index, index)
	}
	return r.data, nil
}

// readRun decodes the records from index on, as many as fit in about max
// bytes (at least one) and at most through last, into one new buffer.
func (s *segment) readRun(index, last uint64, max int, fn func(record)) error {
	off, err := s.offset(index)
	if err != nil {
		return err
	}
	want := min(s.size-off, int64(max))
	var h [headerSize]byte
	n, err := s.readHeader(off, h[:])
	if err != nil {
		return err
	}
	want = max64(want, headerSize+int64(n))
	b := make([]byte, want)
	if _, err := s.f.ReadAt(b, off); err != nil {
		return fmt.Errorf("wal: read %s: %w", s.path, err)
	}
	for p := 0; index <= last && index <= s.last(); index++ {
		r, err := decodeRecord(b[p:])
		if errors.Is(err, errShort) && p > 0 {
			return nil
		}
		if err != nil {
			return s.corrupt(off+int64(p), "%v", err)
		}
		if r.index != index {
			return s.corrupt(off+int64(p), "record of index %d where %d belongs", r.index, index)
		}
		fn(r)
		p += r.size
	}
	return nil
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// scanResult is what scanning a segment file found.
type scanResult struct {
	badAt  int64 // offset of the first record that does not decode; -1 if none
	badErr error
	tornOK bool // the bad bytes can be a torn final Append (see scan)
	// dataEnd is just past the last byte from badAt on that is not zero
	// (badAt when there is none: space preallocated that no Append
	// reached, see Log.reserve; neither torn nor damage).
	dataEnd int64
	fileLen int64
}

// unwritten says whether only zeros follow the records (see dataEnd).
func (r scanResult) unwritten() bool { return r.badAt >= 0 && r.dataEnd == r.badAt }

// scan reads the segment file from the start, checking every record,
// and sets n, size and the full offset index (step 1). A record of the
// wrong index is ErrCorrupt; a record that does not decode ends the scan
// with badAt set, and tornOK says whether what follows it is consistent
// with an Append cut by a crash: no whole record after it that begins an
// Append (batchStart). Pages of the final Append may reach the disk in any
// order, so records after the bad one in the same Append may be whole;
// a later Append's first record means the bad one was acknowledged.
func (s *segment) scan() (scanResult, error) {
	fi, err := s.f.Stat()
	if err != nil {
		return scanResult{}, fmt.Errorf("wal: %w", err)
	}
	res := scanResult{badAt: -1, fileLen: fi.Size()}
	s.n, s.size, s.offs, s.step = 0, 0, s.offs[:0], 1
	br := bufio.NewReaderSize(io.NewSectionReader(s.f, 0, res.fileLen), 64<<10)
	var buf []byte
	for {
		off := s.size
		if off == res.fileLen {
			return res, nil
		}
		bad := func(err error) (scanResult, error) {
			res.badAt, res.badErr = off, err
			if res.dataEnd, err = s.dataEnd(off, res.fileLen); err != nil || res.unwritten() {
				res.tornOK = res.unwritten()
				return res, err
			}
			res.tornOK, err = s.tornTail(off)
			return res, err
		}
		buf = buf[:0]
		buf = append(buf, make([]byte, headerSize)...)
		if _, err := io.ReadFull(br, buf); err != nil {
			return bad(errShort)
		}
		n, _, err := bodyLen(buf)
		if err != nil {
			return bad(err)
		}
		if int64(n) > res.fileLen-off-headerSize {
			return bad(errShort)
		}
		buf = append(buf, make([]byte, n)...)
		if _, err := io.ReadFull(br, buf[headerSize:]); err != nil {
			return scanResult{}, fmt.Errorf("wal: read %s: %w", s.path, err)
		}
		r, err := decodeRecord(buf)
		if err != nil {
			return bad(err)
		}
		if want := s.start + s.n; r.index != want {
			return res, s.corrupt(off, "record of index %d where %d belongs", r.index, want)
		}
		s.offs = append(s.offs, off)
		s.n++
		s.size += int64(r.size)
	}
}

// tornTail reports whether the bytes from off to the end of the file hold
// no record that an acknowledged Append wrote (see scan). It tries every
// byte offset, so a damaged length field cannot hide a whole record.
func (s *segment) tornTail(off int64) (bool, error) {
	rest := make([]byte, s.fileSizeAfter(off))
	if _, err := s.f.ReadAt(rest, off); err != nil && err != io.EOF {
		return false, fmt.Errorf("wal: read %s: %w", s.path, err)
	}
	next := s.start + s.n // the index the bad record should have had
	for p := 0; p+headerSize <= len(rest); p++ {
		idx := binary.LittleEndian.Uint64(rest[p+8:])
		if idx <= next || idx-next > uint64(len(rest)/headerSize) {
			continue
		}
		r, err := decodeRecord(rest[p:])
		if err != nil {
			continue
		}
		if r.first {
			return false, nil
		}
		p += r.size - 1
	}
	return true, nil
}

// dataEnd returns the offset just past the last non-zero byte between off
// and end (off when there is none): where what a torn Append wrote into
// reserved space ends. Preallocated blocks no Append reached read as
// zeros, and a record never does (its header's CRC of a zero length and
// index is not zero).
func (s *segment) dataEnd(off, end int64) (int64, error) {
	buf := make([]byte, min(end-off, 64<<10))
	for end > off {
		n := min(end-off, int64(len(buf)))
		if _, err := s.f.ReadAt(buf[:n], end-n); err != nil {
			return off, fmt.Errorf("wal: read %s: %w", s.path, err)
		}
		for i := n - 1; i >= 0; i-- {
			if buf[i] != 0 {
				return end - n + i + 1, nil
			}
		}
		end -= n
	}
	return off, nil
}

func (s *segment) fileSizeAfter(off int64) int64 {
	fi, err := s.f.Stat()
	if err != nil || fi.Size() < off {
		return 0
	}
	return fi.Size() - off
}

// RecordsEnd returns where the whole records of the segment file at path
// end: its length, less the zeros reserved ahead of the Appends and any
// torn or damaged bytes after the last whole record. For tools and tests
// that look at a log's files (a stopped relay's, or a copy).
func RecordsEnd(path string) (int64, error) {
	start, ok := parseSegmentName(filepath.Base(path))
	if !ok {
		return 0, fmt.Errorf("wal: %s is not a segment file", path)
	}
	s, err := openSegment(filepath.Dir(path), start, os.O_RDONLY)
	if err != nil {
		return 0, err
	}
	defer s.f.Close()
	if _, err := s.scan(); err != nil && !errors.Is(err, ErrCorrupt) {
		return 0, err
	}
	return s.size, nil
}

// openSegment opens the segment file at dir/name with flag (os.O_RDWR
// and what else, or os.O_RDONLY for OpenReadOnly).
func openSegment(dir string, start uint64, flag int) (*segment, error) {
	path := filepath.Join(dir, segmentName(start))
	f, err := os.OpenFile(path, flag, 0o600)
	if err != nil {
		return nil, fmt.Errorf("wal: %w", err)
	}
	return &segment{start: start, path: path, f: f, step: 1}, nil
}
