package consensus

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"maps"
	"os"
	"slices"
	"sync"

	"github.com/pushrelay/pushrelay/relay/atomicfile"
)

// StableFile is the stable values' file in LogDir.
const StableFile = "stable"

// stableFile holds raft's stable values (the current term, the vote) and
// the snapshot record in one small file, replaced atomically (relay/
// atomicfile: a write, an fsync, a rename, a directory fsync) on every
// set, so a vote is durable before set returns and raft acts on it. They
// change at elections and snapshots, not per entry.
//
// Format: version(1) = 1 | count(uvarint) | (key length(uvarint) | key |
// value length(uvarint) | value)... | CRC-32C(4) of all before it.
type stableFile struct {
	path string
	mu   sync.Mutex
	vals map[string][]byte
}

const stableFormat = 1

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func openStable(path string) (*stableFile, error) {
	s := &stableFile{path: path, vals: map[string][]byte{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, err
	}
	if s.vals, err = decodeStable(b); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

func (s *stableFile) get(k string) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.vals[k]
	return slices.Clone(v), ok
}

// set records k = v durably.
func (s *stableFile) set(k string, v []byte) error {
	return s.setAll(map[string][]byte{k: v})
}

func (s *stableFile) setAll(kv map[string][]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	vals := maps.Clone(s.vals)
	for k, v := range kv {
		vals[k] = slices.Clone(v)
	}
	if err := atomicfile.Write(s.path, encodeStable(vals), 0o600); err != nil {
		return fmt.Errorf("stable values: %w", err)
	}
	s.vals = vals
	return nil
}

func encodeStable(vals map[string][]byte) []byte {
	b := []byte{stableFormat}
	b = binary.AppendUvarint(b, uint64(len(vals)))
	for _, k := range slices.Sorted(maps.Keys(vals)) {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(vals[k])))
		b = append(b, vals[k]...)
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

func decodeStable(b []byte) (map[string][]byte, error) {
	if len(b) < 5 || crc32.Checksum(b[:len(b)-4], crcTable) != binary.LittleEndian.Uint32(b[len(b)-4:]) {
		return nil, errors.New("damaged stable values (checksum)")
	}
	b = b[:len(b)-4]
	if b[0] != stableFormat {
		return nil, fmt.Errorf("stable values of format %d, not %d", b[0], stableFormat)
	}
	b = b[1:]
	next := func() ([]byte, error) {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return nil, errors.New("damaged stable values (length)")
		}
		v := b[k : k+int(n)]
		b = b[k+int(n):]
		return v, nil
	}
	count, k := binary.Uvarint(b)
	if k <= 0 || count > uint64(len(b)) {
		return nil, errors.New("damaged stable values (count)")
	}
	b = b[k:]
	vals := make(map[string][]byte, count)
	for range count {
		key, err := next()
		if err != nil {
			return nil, err
		}
		v, err := next()
		if err != nil {
			return nil, err
		}
		vals[string(key)] = slices.Clone(v)
	}
	return vals, nil
}
