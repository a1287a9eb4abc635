package push

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"time"
)

// ErrBadOrigin: DecodeOrigin got bytes that are no origin key.
var ErrBadOrigin = errors.New("bad origin key")

// OriginKind says where a message entered this relay from. The values are
// stored on disk; never renumber them.
type OriginKind uint8

// Origin kinds. The zero kind is no origin: such a message is not
// deduplicated.
const (
	OriginNone OriginKind = 0
	// OriginLocal: an app server's post to this relay's endpoint API; the
	// ID is bytes the endpoint made for the post. Nothing can send the
	// same post again, so the store does not index these keys.
	OriginLocal OriginKind = 1
	// OriginUpstream: a notification from an upstream push server; the
	// ID is the upstream UAID, channel and version (UpstreamOrigin).
	OriginUpstream OriginKind = 2
	// OriginParent: a message from a parent relay; the ID is the parent's
	// id for it.
	OriginParent OriginKind = 3
)

// MaxOriginID bounds Origin.ID, so an encoded key is at most
// 1+MaxOriginID bytes.
const MaxOriginID = 96

// Origin is a message's origin key: where it came from and its id there.
// The same origin key ingested twice (while the first one's TTL lasts) is
// stored once and reaches the device once. Origin is comparable.
type Origin struct {
	Kind OriginKind
	ID   string
}

// LocalOrigin is the origin key of a post to this relay, id being random
// bytes made for it.
func LocalOrigin(id [16]byte) Origin { return Origin{Kind: OriginLocal, ID: string(id[:])} }

// UpstreamOrigin is the origin key of an upstream notification: the
// upstream's UAID and channel and the version it gave the message. A
// version too long for the key is replaced by its SHA-256.
func UpstreamOrigin(u UAID, ch ChannelID, version string) Origin {
	if len(version) > MaxOriginID-len(u)-len(ch) {
		sum := sha256.Sum256([]byte(version))
		version = string(sum[:])
	}
	return Origin{Kind: OriginUpstream, ID: string(u[:]) + string(ch[:]) + version}
}

// ParentOrigin is the origin key of a message a parent relay sent with
// id; ids longer than MaxOriginID are replaced by their SHA-256.
func ParentOrigin(id []byte) Origin {
	if len(id) > MaxOriginID {
		sum := sha256.Sum256(id)
		id = sum[:]
	}
	return Origin{Kind: OriginParent, ID: string(id)}
}

// IsZero reports whether o is no origin.
func (o Origin) IsZero() bool { return o.Kind == OriginNone }

// Valid reports whether o can be encoded: a known kind and an ID of 1 to
// MaxOriginID bytes.
func (o Origin) Valid() bool {
	return o.Kind >= OriginLocal && o.Kind <= OriginParent && len(o.ID) > 0 && len(o.ID) <= MaxOriginID
}

// AppendBinary appends o's compact encoding, kind(1) | id, to b.
func (o Origin) AppendBinary(b []byte) ([]byte, error) {
	if !o.Valid() {
		return b, fmt.Errorf("%w: kind %d, %d-byte id", ErrBadOrigin, o.Kind, len(o.ID))
	}
	b = append(b, byte(o.Kind))
	return append(b, o.ID...), nil
}

// DecodeOrigin decodes what AppendBinary wrote.
func DecodeOrigin(b []byte) (Origin, error) {
	if len(b) < 2 {
		return Origin{}, fmt.Errorf("%w: %d bytes", ErrBadOrigin, len(b))
	}
	o := Origin{Kind: OriginKind(b[0]), ID: string(b[1:])}
	if !o.Valid() {
		return Origin{}, fmt.Errorf("%w: kind %d, %d-byte id", ErrBadOrigin, o.Kind, len(o.ID))
	}
	return o, nil
}

// String names the kind and shows the ID in hex, for logs.
func (o Origin) String() string {
	names := [...]string{"none", "local", "upstream", "parent"}
	k := fmt.Sprintf("kind(%d)", o.Kind)
	if int(o.Kind) < len(names) {
		k = names[o.Kind]
	}
	return fmt.Sprintf("%s:%x", k, o.ID)
}

// Message is one message entering the core (the ingest call), from
// whichever side: an app server's post, an upstream notification, a
// parent relay.
type Message struct {
	UAID    UAID
	Channel ChannelID
	// Origin is where the message came from and its id there; zero for
	// a message that is not deduplicated.
	Origin Origin
	// TTL is how long the message may wait for its device; <= 0 means
	// deliver now to a connected device or drop it.
	TTL     time.Duration
	Topic   string
	Urgency Urgency
	// Content headers to forward with Data; any may be empty.
	Encoding, Encryption, CryptoKey string
	Data                            []byte
	// Version is a SimplePush version (PUT /update); 0 for Web Push.
	Version uint64
}
