package consensus

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/pushrelay/pushrelay/relay/store"
)

// logStore is raft's LogStore and StableStore over relay/store's Log
// (raft.db): an entry is kept as its type (1 byte), term (8), append
// time (8, unix ns), extensions (uvarint length, bytes), then its data;
// the term and vote as 8-byte big-endian values. Each StoreLogs is one
// transaction (one fsync) however many entries it carries.
type logStore struct {
	log *store.Log
	m   *nodeMetrics
}

var (
	_ raft.LogStore    = (*logStore)(nil)
	_ raft.StableStore = (*logStore)(nil)
)

// errNotFound is what raft expects of a StableStore missing a key (it
// compares the error's text).
var errNotFound = errors.New("not found")

func (s *logStore) FirstIndex() (uint64, error) { return s.log.FirstIndex() }
func (s *logStore) LastIndex() (uint64, error)  { return s.log.LastIndex() }

func (s *logStore) GetLog(index uint64, out *raft.Log) error {
	b, err := s.log.Entry(index)
	if errors.Is(err, store.ErrLogNotFound) {
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
	ents := make([]store.LogEntry, len(logs))
	for i, l := range logs {
		ents[i] = store.LogEntry{Index: l.Index, Data: encodeLog(l)}
	}
	t0 := time.Now()
	if err := s.log.Append(ents); err != nil {
		return err
	}
	s.wrote(t0)
	s.m.entriesPerW.Observe(float64(len(logs)))
	return nil
}

func (s *logStore) DeleteRange(lo, hi uint64) error {
	t0 := time.Now()
	if err := s.log.DeleteRange(lo, hi); err != nil {
		return err
	}
	s.wrote(t0)
	return nil
}

func (s *logStore) wrote(t0 time.Time) {
	s.m.logSeconds.Observe(time.Since(t0).Seconds())
	s.m.logWrites.Inc()
}

// Stable values live in the log file's values under "stable/".
func stableKey(k []byte) []byte { return append([]byte("stable/"), k...) }

func (s *logStore) Set(k, v []byte) error {
	t0 := time.Now()
	if err := s.log.SetValue(stableKey(k), v); err != nil {
		return err
	}
	s.wrote(t0)
	return nil
}

func (s *logStore) Get(k []byte) ([]byte, error) {
	v, err := s.log.Value(stableKey(k))
	if err != nil {
		return nil, err
	}
	if v == nil {
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

func encodeLog(l *raft.Log) []byte {
	b := make([]byte, 0, 17+binary.MaxVarintLen64+len(l.Extensions)+len(l.Data))
	b = append(b, byte(l.Type))
	b = binary.BigEndian.AppendUint64(b, l.Term)
	var at int64
	if !l.AppendedAt.IsZero() {
		at = l.AppendedAt.UnixNano()
	}
	b = binary.BigEndian.AppendUint64(b, uint64(at))
	b = binary.AppendUvarint(b, uint64(len(l.Extensions)))
	b = append(b, l.Extensions...)
	return append(b, l.Data...)
}

func decodeLog(b []byte, out *raft.Log) error {
	if len(b) < 17 {
		return errors.New("short entry")
	}
	out.Type = raft.LogType(b[0])
	out.Term = binary.BigEndian.Uint64(b[1:])
	out.AppendedAt = time.Time{}
	if at := int64(binary.BigEndian.Uint64(b[9:])); at != 0 {
		out.AppendedAt = time.Unix(0, at)
	}
	n, k := binary.Uvarint(b[17:])
	if k <= 0 || n > uint64(len(b)-17-k) {
		return errors.New("bad extensions length")
	}
	rest := b[17+k:]
	out.Extensions = nil
	if n > 0 {
		out.Extensions = rest[:n]
	}
	out.Data = rest[n:]
	return nil
}
