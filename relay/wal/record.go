package wal

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
)

// A record is a 16-byte header and the entry's bytes:
//
//	crc(4) | len(4) | index(8) | data(len)
//
// all little-endian. crc is CRC-32C (Castagnoli) over everything after it
// (len, index and data), so a torn header, a torn body and a record read
// at the wrong offset all fail it. The top bit of len marks the first
// record of an Append (batchStart); recovery uses it to tell a torn final
// Append from damage before an acknowledged one.
const (
	headerSize = 16
	batchStart = 1 << 31
	// MaxEntry is the largest entry Append takes.
	MaxEntry = 64 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var (
	errShort  = errors.New("record cut short")
	errBadCRC = errors.New("checksum mismatch")
	errTooBig = errors.New("record length beyond the limit")
)

// appendRecord appends the record of one entry to b.
func appendRecord(b []byte, index uint64, data []byte, first bool) []byte {
	start := len(b)
	n := uint32(len(data))
	if first {
		n |= batchStart
	}
	b = binary.LittleEndian.AppendUint32(b, 0)
	b = binary.LittleEndian.AppendUint32(b, n)
	b = binary.LittleEndian.AppendUint64(b, index)
	b = append(b, data...)
	binary.LittleEndian.PutUint32(b[start:], crc32.Checksum(b[start+4:], castagnoli))
	return b
}

// record is one decoded record.
type record struct {
	index uint64
	data  []byte // aliases the buffer it was decoded from
	size  int    // header and data
	first bool   // batchStart was set
}

// bodyLen returns the data length a header declares, or errTooBig.
func bodyLen(h []byte) (int, bool, error) {
	n := binary.LittleEndian.Uint32(h[4:])
	first := n&batchStart != 0
	n &^= batchStart
	if n > MaxEntry {
		return 0, first, errTooBig
	}
	return int(n), first, nil
}

// decodeRecord decodes the record at the start of b: errShort when b ends
// before it does, errBadCRC or errTooBig when it is not a record.
func decodeRecord(b []byte) (record, error) {
	if len(b) < headerSize {
		return record{}, errShort
	}
	n, first, err := bodyLen(b)
	if err != nil {
		return record{}, err
	}
	if n > len(b)-headerSize {
		return record{}, errShort
	}
	size := headerSize + n
	if crc32.Checksum(b[4:size], castagnoli) != binary.LittleEndian.Uint32(b) {
		return record{}, errBadCRC
	}
	return record{
		index: binary.LittleEndian.Uint64(b[8:]),
		data:  b[headerSize:size:size],
		size:  size,
		first: first,
	}, nil
}
