package linkproto

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"github.com/pushrelay/pushrelay/relay/push"
)

// DigestLen is the length of an encoded Digest.
const DigestLen = 40

// digestDomain separates the pair hashes of the link digest from every
// other SHA-256 the relay computes; a new digest scheme gets a new one.
const digestDomain = "pushrelay/1 link digest\x00"

// Digest summarises a set of (UAID, channel) pairs: how many there are and
// the sum, lane by lane modulo 2^64, of the SHA-256 of each pair (four
// 64-bit lanes). It does not depend on order, and Add and Remove are O(1)
// (one SHA-256 of 56 bytes), so a child with 100,000 UAIDs keeps it up to
// date on every register and unregister and a parent keeps one per child
// the same way.
//
// Why a sum of SHA-256 values: two different sets have equal digests only
// if the hashes of the pairs in one and not the other sum to the same
// 256-bit value, which for hashes that behave as random happens with
// probability about 2^-256 per comparison, not a risk for accidental
// divergence. Unlike XOR, a sum keeps multiplicity: a pair added twice
// (a bug that double-counts a register) changes the digest instead of
// cancelling out, and Count catches an add without its remove at a
// glance. Sums of hashes can be forced to collide by someone choosing
// many pairs on purpose (Wagner's generalised birthday attack); the digest
// guards against divergence, not against an authenticated child lying
// about its own set.
//
// The zero Digest is the empty set.
type Digest struct {
	Count uint64
	Sum   [4]uint64
}

func pairHash(u push.UAID, ch push.ChannelID) [4]uint64 {
	var in [len(digestDomain) + 32]byte
	copy(in[:], digestDomain)
	copy(in[len(digestDomain):], u[:])
	copy(in[len(digestDomain)+16:], ch[:])
	h := sha256.Sum256(in[:])
	return [4]uint64{
		binary.BigEndian.Uint64(h[0:]), binary.BigEndian.Uint64(h[8:]),
		binary.BigEndian.Uint64(h[16:]), binary.BigEndian.Uint64(h[24:]),
	}
}

// Add adds the pair (u, ch) to the set d summarises.
func (d *Digest) Add(u push.UAID, ch push.ChannelID) {
	h := pairHash(u, ch)
	d.Count++
	for i := range d.Sum {
		d.Sum[i] += h[i]
	}
}

// Remove removes the pair (u, ch), which must have been added.
func (d *Digest) Remove(u push.UAID, ch push.ChannelID) {
	h := pairHash(u, ch)
	d.Count--
	for i := range d.Sum {
		d.Sum[i] -= h[i]
	}
}

// AppendBinary appends d's 40-byte encoding: Count, then the four lanes,
// each 8 bytes big-endian.
func (d Digest) AppendBinary(b []byte) ([]byte, error) {
	b = binary.BigEndian.AppendUint64(b, d.Count)
	for _, s := range d.Sum {
		b = binary.BigEndian.AppendUint64(b, s)
	}
	return b, nil
}

// String shows the count and the first lane, for logs.
func (d Digest) String() string { return fmt.Sprintf("%d pairs/%016x", d.Count, d.Sum[0]) }

func (r *payload) digest() (d Digest) {
	b := r.fixed(DigestLen, "digest")
	if b == nil {
		return d
	}
	d.Count = binary.BigEndian.Uint64(b)
	for i := range d.Sum {
		d.Sum[i] = binary.BigEndian.Uint64(b[8+8*i:])
	}
	return d
}
