package linkproto

import "fmt"

// MaxVarint is the largest value a varint carries (2^62-1). Sequence
// numbers, request ids and credit counters stay below it.
const MaxVarint = 1<<62 - 1

// VarintLen is the length of v's minimal QUIC varint encoding: 1, 2, 4 or
// 8 bytes. It is 0 for a value above MaxVarint.
func VarintLen(v uint64) int {
	switch {
	case v <= 63:
		return 1
	case v <= 16383:
		return 2
	case v <= 1<<30-1:
		return 4
	case v <= MaxVarint:
		return 8
	}
	return 0
}

// AppendVarint appends v's minimal QUIC varint encoding (RFC 9000
// section 16): the top two bits of the first byte give the length, 1, 2,
// 4 or 8 bytes, big-endian. The caller checks v <= MaxVarint; a larger
// value is a programming error and panics.
func AppendVarint(b []byte, v uint64) []byte {
	switch VarintLen(v) {
	case 1:
		return append(b, byte(v))
	case 2:
		return append(b, 0x40|byte(v>>8), byte(v))
	case 4:
		return append(b, 0x80|byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	case 8:
		return append(b, 0xc0|byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32),
			byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
	panic(fmt.Sprintf("linkproto: varint %d above 2^62-1", v))
}

// ReadVarint decodes the varint at the start of b and returns it and its
// length. It returns ErrShort when b ends inside the varint and
// ErrMalformed for an encoding longer than needed: every varint on the
// link is minimal, so each value has exactly one encoding.
func ReadVarint(b []byte) (uint64, int, error) {
	if len(b) == 0 {
		return 0, 0, ErrShort
	}
	n := 1 << (b[0] >> 6)
	if len(b) < n {
		return 0, 0, ErrShort
	}
	v := uint64(b[0] & 0x3f)
	for _, c := range b[1:n] {
		v = v<<8 | uint64(c)
	}
	if VarintLen(v) != n {
		return 0, 0, fmt.Errorf("%w: %d-byte varint for %d", ErrMalformed, n, v)
	}
	return v, n, nil
}
