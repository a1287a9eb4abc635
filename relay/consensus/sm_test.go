package consensus

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushrelay/pushrelay/relay/atomicfile"
)

// listSM is the tests' state machine: an append-only list of the applied
// entries, persisted in an append-only file of checksummed records (the
// applied index, then the batch), fsynced per Apply. A torn last record
// is ignored at open, so the applied index and the data move together.
type listSM struct {
	path string

	mu      sync.Mutex
	f       *os.File
	items   []string
	applied uint64
	// twice counts entries offered at or below the applied index: an
	// entry applied twice.
	twice  atomic.Int64
	fsyncs atomic.Int64
	// slow, if set, delays each Apply before it writes.
	slow time.Duration
}

func openListSM(dir string) (*listSM, error) {
	s := &listSM{path: filepath.Join(dir, "list.sm")}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := s.load(); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	s.f = f
	return s, nil
}

func encodeRecord(index uint64, data [][]byte) []byte {
	p := binary.BigEndian.AppendUint64(nil, index)
	p = binary.BigEndian.AppendUint32(p, uint32(len(data)))
	for _, d := range data {
		p = binary.BigEndian.AppendUint32(p, uint32(len(d)))
		p = append(p, d...)
	}
	rec := binary.BigEndian.AppendUint32(nil, uint32(len(p)))
	rec = binary.BigEndian.AppendUint32(rec, crc32.ChecksumIEEE(p))
	return append(rec, p...)
}

// readRecords reads records from r until its end or a torn record.
func readRecords(r io.Reader, each func(index uint64, items []string)) error {
	br := bufio.NewReader(r)
	for {
		var h [8]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return nil
		}
		p := make([]byte, binary.BigEndian.Uint32(h[:]))
		if _, err := io.ReadFull(br, p); err != nil || crc32.ChecksumIEEE(p) != binary.BigEndian.Uint32(h[4:]) {
			return nil
		}
		if len(p) < 12 {
			return errors.New("short record")
		}
		index, n := binary.BigEndian.Uint64(p), binary.BigEndian.Uint32(p[8:])
		p = p[12:]
		items := make([]string, 0, n)
		for range n {
			l := binary.BigEndian.Uint32(p)
			items = append(items, string(p[4:4+l]))
			p = p[4+l:]
		}
		each(index, items)
	}
}

func (s *listSM) load() error {
	f, err := os.Open(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	s.items, s.applied = nil, 0
	return readRecords(f, func(index uint64, items []string) {
		s.items = append(s.items, items...)
		s.applied = index
	})
}

func (s *listSM) Apply(index uint64, data [][]byte) error {
	s.mu.Lock()
	slow := s.slow
	s.mu.Unlock()
	time.Sleep(slow) // the state machine's work, before it holds anything
	s.mu.Lock()
	defer s.mu.Unlock()
	if index <= s.applied {
		s.twice.Add(1)
		return fmt.Errorf("apply %d at applied %d", index, s.applied)
	}
	if _, err := s.f.Write(encodeRecord(index, data)); err != nil {
		return err
	}
	if err := s.f.Sync(); err != nil {
		return err
	}
	s.fsyncs.Add(1)
	for _, d := range data {
		s.items = append(s.items, string(d))
	}
	s.applied = index
	return nil
}

func (s *listSM) AppliedIndex() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applied
}

func (s *listSM) Snapshot(w io.Writer) error {
	s.mu.Lock()
	data := make([][]byte, len(s.items))
	for i, it := range s.items {
		data[i] = []byte(it)
	}
	rec := encodeRecord(s.applied, data)
	s.mu.Unlock()
	_, err := w.Write(rec)
	return err
}

func (s *listSM) Restore(r io.Reader, index uint64) error {
	var items []string
	var applied uint64
	err := readRecords(r, func(i uint64, it []string) { items, applied = it, i })
	if err != nil {
		return err
	}
	if applied < index {
		return fmt.Errorf("snapshot at %d, want at least %d", applied, index)
	}
	data := make([][]byte, len(items))
	for i, it := range items {
		data[i] = []byte(it)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.f.Close(); err != nil {
		return err
	}
	if err := atomicfile.Write(s.path, encodeRecord(applied, data), 0o600); err != nil {
		return err
	}
	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	s.f, s.items, s.applied = f, items, applied
	return nil
}

func (s *listSM) list() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.items...)
}

func (s *listSM) Close() error { return s.f.Close() }
