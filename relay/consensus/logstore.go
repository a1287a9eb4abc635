package consensus

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/pushrelay/pushrelay/relay/wal"
)

// LogDir is the raft log's directory in the consensus dir: a relay/wal
// log, and the stable values' file (StableFile) beside its segments.
const LogDir = "raftlog"

// logStore is raft's LogStore on a relay/wal log (LogDir) and its
// StableStore on a small file written atomically (stable.go). Raft's
// index is the log's index; an entry is kept in the format encodeLog
// writes. StoreLogs is one Append: one write and one fdatasync however
// many entries it carries. The log has no gaps (IsMonotonic): after a
// snapshot is installed raft empties it, and the next entry starts it
// anew.
type logStore struct {
	log    *wal.Log
	stable *stableFile
	m      *nodeMetrics
}

var (
	_ raft.LogStore          = (*logStore)(nil)
	_ raft.StableStore       = (*logStore)(nil)
	_ raft.MonotonicLogStore = (*logStore)(nil)
)

// errNotFound is what raft expects of a StableStore missing a key (it
// compares the error's text).
var errNotFound = errors.New("not found")

// IsMonotonic tells raft that the log cannot hold a gap, so that it
// empties the log after installing a snapshot instead of leaving a gap.
func (s *logStore) IsMonotonic() bool { return true }

func (s *logStore) FirstIndex() (uint64, error) { return s.log.FirstIndex(), nil }
func (s *logStore) LastIndex() (uint64, error)  { return s.log.LastIndex(), nil }

func (s *logStore) GetLog(index uint64, out *raft.Log) error {
	b, err := s.log.Get(index)
	if errors.Is(err, wal.ErrNotFound) {
		return raft.ErrLogNotFound
	}
	if err != nil {
		return err
	}
	if err := decodeLog(b, out); err != nil {
		return fmt.Errorf("log entry %d: %w", index, err)
	}
	out.Index = index
	return nil
}

func (s *logStore) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

func (s *logStore) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	ents := make([][]byte, len(logs))
	for i, l := range logs {
		if l.Index != logs[0].Index+uint64(i) {
			return fmt.Errorf("log: entries %d and %d not contiguous", logs[0].Index, l.Index)
		}
		ents[i] = encodeLog(l)
	}
	t0 := time.Now()
	if err := s.log.Append(logs[0].Index, ents...); err != nil {
		return err
	}
	s.wrote(t0)
	s.m.entriesPerW.Observe(float64(len(logs)))
	return nil
}

// DeleteRange drops [lo, hi]: raft drops a prefix (compaction, or all of
// it after installing a snapshot) or a suffix (a conflicting one), never
// a middle.
func (s *logStore) DeleteRange(lo, hi uint64) error {
	first, last := s.log.FirstIndex(), s.log.LastIndex()
	if last == 0 || hi < first || lo > last || lo > hi {
		return nil
	}
	t0 := time.Now()
	var err error
	switch {
	case lo <= first:
		err = s.log.TruncateFront(hi + 1)
	case hi >= last:
		err = s.log.TruncateBack(lo - 1)
	default:
		err = fmt.Errorf("log: delete %d-%d in the middle of %d-%d", lo, hi, first, last)
	}
	if err != nil {
		return err
	}
	s.wrote(t0)
	return nil
}

func (s *logStore) wrote(t0 time.Time) {
	s.m.logSeconds.Observe(time.Since(t0).Seconds())
	s.m.logWrites.Inc()
}

// stableKey is raft's key k in the stable values ("stable/" k; the
// snapshot record is "snapshot"), as raft.db had them.
func stableKey(k []byte) string { return "stable/" + string(k) }

func (s *logStore) Set(k, v []byte) error {
	t0 := time.Now()
	if err := s.stable.set(stableKey(k), v); err != nil {
		return err
	}
	s.wrote(t0)
	return nil
}

func (s *logStore) Get(k []byte) ([]byte, error) {
	v, ok := s.stable.get(stableKey(k))
	if !ok {
		return nil, errNotFound
	}
	return v, nil
}

func (s *logStore) SetUint64(k []byte, v uint64) error {
	return s.Set(k, binary.BigEndian.AppendUint64(nil, v))
}

func (s *logStore) GetUint64(k []byte) (uint64, error) {
	v, err := s.Get(k)
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("stable value %q: %d bytes", k, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// logFormat is the first byte of an entry as encodeLog writes it.
const logFormat = 1

// encodeLog is an entry's bytes in the log:
//
//	format(1) = 1 | type(1) | term(uvarint) | appended at(uvarint, unix ns, 0: none) |
//	extensions length(uvarint) | extensions | data
//
// (6 to 14 bytes before the extensions and data; raft's index is the
// log's own.)
func encodeLog(l *raft.Log) []byte {
	b := make([]byte, 0, 2+3*binary.MaxVarintLen64+len(l.Extensions)+len(l.Data))
	b = append(b, logFormat, byte(l.Type))
	b = binary.AppendUvarint(b, l.Term)
	var at uint64
	if !l.AppendedAt.IsZero() && l.AppendedAt.UnixNano() > 0 {
		at = uint64(l.AppendedAt.UnixNano())
	}
	b = binary.AppendUvarint(b, at)
	b = binary.AppendUvarint(b, uint64(len(l.Extensions)))
	b = append(b, l.Extensions...)
	return append(b, l.Data...)
}

func decodeLog(b []byte, out *raft.Log) error {
	if len(b) < 2 {
		return errors.New("short entry")
	}
	if b[0] != logFormat {
		return fmt.Errorf("entry of format %d, not %d", b[0], logFormat)
	}
	out.Type = raft.LogType(b[1])
	b = b[2:]
	var vals [3]uint64
	for i := range vals {
		v, k := binary.Uvarint(b)
		if k <= 0 {
			return errors.New("bad entry header")
		}
		vals[i], b = v, b[k:]
	}
	out.Term = vals[0]
	out.AppendedAt = time.Time{}
	if vals[1] != 0 {
		out.AppendedAt = time.Unix(0, int64(vals[1]))
	}
	if vals[2] > uint64(len(b)) {
		return errors.New("bad extensions length")
	}
	out.Extensions = nil
	if vals[2] > 0 {
		out.Extensions = b[:vals[2]]
	}
	out.Data = b[vals[2]:]
	return nil
}
