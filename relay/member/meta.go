package member

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math/bits"
	"strconv"
)

// MetaMaxSize is memberlist's limit on a node's metadata (its
// MetaMaxSize): EncodeMeta never returns more.
const MetaMaxSize = 512

// metaVersion is the first byte of the encoding. Fields are tagged, so a
// field added later is skipped by an older decoder and the version only
// changes for an encoding an older decoder must refuse.
const metaVersion = 1

// DigestMaxBytes is the largest Digest carried in metadata (1024 bits).
const DigestMaxBytes = 128

// Sentinel errors of DecodeMeta.
var (
	ErrMetaEmpty    = errors.New("member: metadata is empty")
	ErrMetaVersion  = errors.New("member: metadata of an unknown version")
	ErrMetaTruncate = errors.New("member: metadata is truncated")
	ErrMetaField    = errors.New("member: metadata field is malformed")
	ErrMetaTooLarge = errors.New("member: metadata does not fit in 512 bytes")
)

// Meta is what a member tells the site about itself, carried in its
// memberlist metadata and refreshed by Member.UpdateMeta. It must encode
// to at most MetaMaxSize bytes; EncodeMeta shrinks the digests to fit.
type Meta struct {
	// Name is the member's stable name (node_name); RaftID is derived
	// from it (IDOf) and is what the consensus group knows it by.
	Name   string
	RaftID uint64
	// RaftAddr is where the member takes consensus traffic (empty until
	// the consensus engine is wired in); LinkAddr where it takes relay
	// link connections (relay_listen); AdminAddr its admin listener.
	RaftAddr  string
	LinkAddr  string
	AdminAddr string
	// Version is the member's pushrelay version.
	Version string
	// Load is how busy the member is, in per mille of its capacity
	// (device connections over device_max_conns); routing prefers the
	// least loaded.
	Load uint32
	// Sockets is the number of devices with a WebSocket open on the
	// member, WakeBindings the number of devices whose wake address was
	// proven to its STUN socket.
	Sockets      uint64
	WakeBindings uint64
	// SocketDigest and WakeDigest are Bloom digests of the UAIDs counted
	// in Sockets and WakeBindings: a member whose digest does not hold a
	// UAID has no socket (or binding) for it; one whose digest holds it
	// probably has. Nil means "not reported".
	SocketDigest Digest
	WakeDigest   Digest
	// Leaving is set by a member that is leaving gracefully (Close), just
	// before it leaves, so the others tell a leave from a failure.
	Leaving bool
	// InSite is set by a member whose consensus log holds the site's
	// (it formed the site or was added to it): a new member seeing one
	// joins the site instead of forming a new one.
	InSite bool
	// EndpointKey and WakeKey are fingerprints of the member's
	// endpoint.key and wake.key (a truncated SHA-256 under a
	// domain-separation prefix, never the keys; 0: not reported): every
	// member of a site must hold the same keys, and one that does not is
	// refused (relay/site).
	EndpointKey uint64
	WakeKey     uint64
}

// Field tags of the encoding. Each field is tag (1 byte), length
// (uvarint), value; strings are UTF-8 bytes, numbers uvarints, RaftID
// 8 bytes big-endian, digests raw bytes, Leaving a presence flag.
const (
	tagName         = 1
	tagRaftID       = 2
	tagRaftAddr     = 3
	tagLinkAddr     = 4
	tagAdminAddr    = 5
	tagVersion      = 6
	tagLoad         = 7
	tagSockets      = 8
	tagWakeBindings = 9
	tagSocketDigest = 10
	tagWakeDigest   = 11
	tagLeaving      = 12
	tagInSite       = 13
	tagEndpointKey  = 20
	tagWakeKey      = 21
)

// IDOf derives a member's raft id from its name: the first 8 bytes of the
// name's SHA-256, big-endian, never 0 (raft's "none").
func IDOf(name string) uint64 {
	sum := sha256.Sum256([]byte(name))
	if id := binary.BigEndian.Uint64(sum[:8]); id != 0 {
		return id
	}
	return 1
}

// EncodeMeta encodes m. When it would be larger than MetaMaxSize the
// digests are folded (halved, at the cost of more false positives) until
// it fits; it fails with ErrMetaTooLarge only when the rest alone does
// not fit (names and addresses of hundreds of bytes).
func EncodeMeta(m Meta) ([]byte, error) {
	sd, wd := m.SocketDigest.fit(), m.WakeDigest.fit()
	for {
		b := encodeMeta(m, sd, wd)
		if len(b) <= MetaMaxSize {
			return b, nil
		}
		switch {
		case len(sd) >= len(wd) && len(sd) > 1:
			sd = sd.Fold()
		case len(wd) > 1:
			wd = wd.Fold()
		default:
			return nil, fmt.Errorf("%w: %d bytes", ErrMetaTooLarge, len(b))
		}
	}
}

func encodeMeta(m Meta, sd, wd Digest) []byte {
	b := make([]byte, 0, 128+len(sd)+len(wd))
	b = append(b, metaVersion)
	field := func(tag byte, v []byte) {
		b = append(b, tag)
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	str := func(tag byte, s string) {
		if s != "" {
			field(tag, []byte(s))
		}
	}
	num := func(tag byte, n uint64) {
		if n != 0 {
			field(tag, binary.AppendUvarint(nil, n))
		}
	}
	str(tagName, m.Name)
	if m.RaftID != 0 {
		field(tagRaftID, binary.BigEndian.AppendUint64(nil, m.RaftID))
	}
	str(tagRaftAddr, m.RaftAddr)
	str(tagLinkAddr, m.LinkAddr)
	str(tagAdminAddr, m.AdminAddr)
	str(tagVersion, m.Version)
	num(tagLoad, uint64(m.Load))
	num(tagSockets, m.Sockets)
	num(tagWakeBindings, m.WakeBindings)
	if len(sd) > 0 {
		field(tagSocketDigest, sd)
	}
	if len(wd) > 0 {
		field(tagWakeDigest, wd)
	}
	if m.Leaving {
		field(tagLeaving, nil)
	}
	if m.InSite {
		field(tagInSite, nil)
	}
	if m.EndpointKey != 0 {
		field(tagEndpointKey, binary.BigEndian.AppendUint64(nil, m.EndpointKey))
	}
	if m.WakeKey != 0 {
		field(tagWakeKey, binary.BigEndian.AppendUint64(nil, m.WakeKey))
	}
	return b
}

// DecodeMeta decodes what EncodeMeta made, skipping fields of tags it
// does not know (added by a later version). Its errors wrap the sentinel
// errors above.
func DecodeMeta(b []byte) (Meta, error) {
	var m Meta
	if len(b) == 0 {
		return m, ErrMetaEmpty
	}
	if len(b) > MetaMaxSize {
		return m, ErrMetaTooLarge
	}
	if b[0] != metaVersion {
		return m, fmt.Errorf("%w: %d", ErrMetaVersion, b[0])
	}
	for rest := b[1:]; len(rest) > 0; {
		tag := rest[0]
		n, k := binary.Uvarint(rest[1:])
		if k <= 0 || n > uint64(len(rest)-1-k) {
			return Meta{}, fmt.Errorf("%w: field %d", ErrMetaTruncate, tag)
		}
		v := rest[1+k : 1+k+int(n)]
		rest = rest[1+k+int(n):]
		var err error
		switch tag {
		case tagName:
			m.Name = string(v)
		case tagRaftID:
			if len(v) != 8 {
				err = ErrMetaField
			} else {
				m.RaftID = binary.BigEndian.Uint64(v)
			}
		case tagRaftAddr:
			m.RaftAddr = string(v)
		case tagLinkAddr:
			m.LinkAddr = string(v)
		case tagAdminAddr:
			m.AdminAddr = string(v)
		case tagVersion:
			m.Version = string(v)
		case tagLoad:
			var x uint64
			if x, err = uvarint(v); err == nil {
				if x > 1<<32-1 {
					err = ErrMetaField
				}
				m.Load = uint32(x)
			}
		case tagSockets:
			m.Sockets, err = uvarint(v)
		case tagWakeBindings:
			m.WakeBindings, err = uvarint(v)
		case tagSocketDigest:
			m.SocketDigest, err = digestOf(v)
		case tagWakeDigest:
			m.WakeDigest, err = digestOf(v)
		case tagLeaving:
			m.Leaving = true
		case tagInSite:
			m.InSite = true
		case tagEndpointKey, tagWakeKey:
			if len(v) != 8 {
				err = ErrMetaField
			} else if tag == tagEndpointKey {
				m.EndpointKey = binary.BigEndian.Uint64(v)
			} else {
				m.WakeKey = binary.BigEndian.Uint64(v)
			}
		}
		if err != nil {
			return Meta{}, fmt.Errorf("%w: field %d", ErrMetaField, tag)
		}
	}
	return m, nil
}

func uvarint(v []byte) (uint64, error) {
	n, k := binary.Uvarint(v)
	if k <= 0 || k != len(v) {
		return 0, ErrMetaField
	}
	return n, nil
}

func digestOf(v []byte) (Digest, error) {
	if len(v) == 0 || len(v) > DigestMaxBytes || bits.OnesCount(uint(len(v))) != 1 {
		return nil, ErrMetaField
	}
	return Digest(append([]byte(nil), v...)), nil
}

// Digest is a Bloom filter of UAIDs: two bits per UAID (from its 64-bit
// FNV-1a hash) in a power-of-two number of bytes, at most DigestMaxBytes.
// With 1024 bits and 100 UAIDs about 3% of absent UAIDs test positive;
// with 500, about 40%: past a few hundred devices per member it stops
// narrowing much, and the counts say so. It is a routing hint, never an
// answer: a positive is checked by asking the member.
type Digest []byte

// NewDigest returns an empty digest of size bytes (rounded down to a
// power of two, at most DigestMaxBytes; 0 gives DigestMaxBytes).
func NewDigest(size int) Digest {
	if size <= 0 || size > DigestMaxBytes {
		size = DigestMaxBytes
	}
	return make(Digest, 1<<(bits.Len(uint(size))-1))
}

func digestBits(uaid string, m uint64) (uint64, uint64) {
	h := fnv.New64a()
	h.Write([]byte(uaid))
	s := h.Sum64()
	h1, h2 := s&0xffffffff, s>>32
	return h1 % m, (h1 + h2) % m
}

// Add puts uaid in the digest.
func (d Digest) Add(uaid string) {
	if len(d) == 0 {
		return
	}
	a, b := digestBits(uaid, uint64(len(d))*8)
	d[a/8] |= 1 << (a % 8)
	d[b/8] |= 1 << (b % 8)
}

// MayHold reports whether uaid may be in the digest: false means
// certainly not. An empty (nil) digest may hold anything.
func (d Digest) MayHold(uaid string) bool {
	if len(d) == 0 {
		return true
	}
	a, b := digestBits(uaid, uint64(len(d))*8)
	return d[a/8]&(1<<(a%8)) != 0 && d[b/8]&(1<<(b%8)) != 0
}

// Fold returns the digest at half its size: bit i of the result is bit i
// or bit i+half of d. Because a bit index mod the smaller size is the
// index mod the larger one, mod the smaller, MayHold stays true for every
// UAID added.
func (d Digest) Fold() Digest {
	if len(d) <= 1 {
		return d
	}
	half := len(d) / 2
	out := make(Digest, half)
	for i := range half {
		out[i] = d[i] | d[i+half]
	}
	return out
}

// fit returns d folded to a power-of-two size of at most DigestMaxBytes.
func (d Digest) fit() Digest {
	if len(d) == 0 {
		return nil
	}
	if bits.OnesCount(uint(len(d))) != 1 {
		return nil // not made by NewDigest: not reported rather than wrong
	}
	for len(d) > DigestMaxBytes {
		d = d.Fold()
	}
	return d
}

func itoa(n int) string { return strconv.Itoa(n) }
