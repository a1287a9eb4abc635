package discovery

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/pion/stun/v3"
)

const (
	// attrTime is PUSHRELAY-TIME: when the request was made, as 8-byte
	// big-endian Unix milliseconds. Comprehension-optional, so other STUN
	// servers ignore it.
	attrTime stun.AttrType = 0xC0DE

	headerSize  = 20
	magicCookie = 0x2112A442
	// maxPacket is the largest datagram the server reads; larger ones are
	// malformed.
	maxPacket = 1500
	// maxUsername is RFC 8489's limit on USERNAME: fewer than 509 bytes
	// (§14.3).
	maxUsername = 508

	integritySize   = 20
	fingerprintSize = 4
)

var (
	errNotSTUN      = errors.New("not a stun message")
	errNotSuccess   = errors.New("not a binding success response")
	errTxID         = errors.New("transaction id mismatch")
	errTrailer      = errors.New("message-integrity and fingerprint are not the last attributes")
	errFingerprint  = errors.New("fingerprint mismatch")
	errIntegrity    = errors.New("message-integrity mismatch")
	errNoAddress    = errors.New("no xor-mapped-address")
	errBadAddress   = errors.New("malformed xor-mapped-address")
	errNoCredential = errors.New("empty username or password")
	errNoUsername   = errors.New("no username")
	errNoTime       = errors.New("no pushrelay-time of 8 bytes")
	errEmptyKey     = errors.New("registry returned an empty key")
)

// IsSTUN reports whether b looks like a STUN message: the two top bits zero,
// the magic cookie, and a length field that is a multiple of 4 and matches
// len(b) exactly. A wake socket uses it to tell Binding responses from wake
// datagrams; a true result doesn't mean b decodes.
func IsSTUN(b []byte) bool {
	if len(b) < headerSize || b[0]&0xC0 != 0 || binary.BigEndian.Uint32(b[4:8]) != magicCookie {
		return false
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	return n%4 == 0 && headerSize+n == len(b)
}

// NewBindingRequest returns an authenticated Binding request for the device
// username whose wake key is password, stamped with stamp, and its
// transaction ID.
func NewBindingRequest(username, password string, stamp time.Time) (req []byte, txID [12]byte, err error) {
	if username == "" || password == "" {
		return nil, txID, fmt.Errorf("new binding request: %w", errNoCredential)
	}
	if len(username) > maxUsername {
		return nil, txID, fmt.Errorf("new binding request: username of %d bytes is longer than %d", len(username), maxUsername)
	}
	_, _ = rand.Read(txID[:]) // never fails; crashes the program instead
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], uint64(stamp.UnixMilli()))
	m := stun.New()
	err = m.Build(stun.BindingRequest, stun.NewTransactionIDSetter(txID),
		stun.NewUsername(username),
		stun.RawAttribute{Type: attrTime, Length: uint16(len(ts)), Value: ts[:]},
		stun.NewShortTermIntegrity(password),
		stun.Fingerprint)
	if err != nil {
		return nil, txID, fmt.Errorf("new binding request: %w", err)
	}
	return m.Raw, txID, nil
}

// ParseBindingResponse checks that b is a Binding success response to the
// request with transaction ID txID, carrying MESSAGE-INTEGRITY under password
// followed by FINGERPRINT, and returns its XOR-MAPPED-ADDRESS. An empty
// password parses an unauthenticated response instead: MESSAGE-INTEGRITY is
// then ignored and FINGERPRINT checked only when present.
func ParseBindingResponse(b []byte, txID [12]byte, password string) (netip.AddrPort, error) {
	if !IsSTUN(b) {
		return netip.AddrPort{}, fmt.Errorf("parse binding response: %w", errNotSTUN)
	}
	m := stun.New()
	if err := stun.Decode(b, m); err != nil {
		return netip.AddrPort{}, fmt.Errorf("parse binding response: %w: %w", errNotSTUN, err)
	}
	if m.Type != stun.BindingSuccess {
		return netip.AddrPort{}, fmt.Errorf("parse binding response: %w: %v", errNotSuccess, m.Type)
	}
	if m.TransactionID != txID {
		return netip.AddrPort{}, fmt.Errorf("parse binding response: %w", errTxID)
	}
	if password != "" {
		if err := checkTrailer(m); err != nil {
			return netip.AddrPort{}, fmt.Errorf("parse binding response: %w", err)
		}
		if err := checkIntegrity(m, []byte(password)); err != nil {
			return netip.AddrPort{}, fmt.Errorf("parse binding response: %w", err)
		}
	} else if m.Contains(stun.AttrFingerprint) {
		if err := checkFingerprint(m); err != nil {
			return netip.AddrPort{}, fmt.Errorf("parse binding response: %w", err)
		}
	}
	v, err := m.Get(stun.AttrXORMappedAddress)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("parse binding response: %w", errNoAddress)
	}
	ap, ok := parseXORAddr(v, m.TransactionID)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("parse binding response: %w", errBadAddress)
	}
	return ap, nil
}

// checkTrailer checks that m ends with MESSAGE-INTEGRITY then FINGERPRINT,
// each of its proper size and present once, and that FINGERPRINT is right.
// Every other attribute then comes before MESSAGE-INTEGRITY and is covered by
// it. (pion's checks take the first attribute of each type and don't look at
// the order, so a FINGERPRINT that is not last or a second MESSAGE-INTEGRITY
// would otherwise slip through.)
func checkTrailer(m *stun.Message) error {
	a := m.Attributes
	n := len(a)
	if n < 2 || a[n-2].Type != stun.AttrMessageIntegrity || len(a[n-2].Value) != integritySize ||
		a[n-1].Type != stun.AttrFingerprint {
		return errTrailer
	}
	for _, x := range a[:n-2] {
		if x.Type == stun.AttrMessageIntegrity || x.Type == stun.AttrFingerprint {
			return errTrailer
		}
	}
	return checkFingerprint(m)
}

// checkFingerprint checks a FINGERPRINT that must be the last attribute.
func checkFingerprint(m *stun.Message) error {
	a := m.Attributes
	if len(a) == 0 || a[len(a)-1].Type != stun.AttrFingerprint || len(a[len(a)-1].Value) != fingerprintSize {
		return errTrailer
	}
	if stun.Fingerprint.Check(m) != nil {
		return errFingerprint
	}
	return nil
}

// checkIntegrity checks MESSAGE-INTEGRITY under the short-term key, which is
// the password's bytes as they are (RFC 8489 §9.1.1 would SASLprep them;
// our keys are base64url, which OpaqueString leaves alone). It may write to
// m.Raw and restores it.
func checkIntegrity(m *stun.Message, key []byte) error {
	if stun.MessageIntegrity(key).Check(m) != nil {
		return errIntegrity
	}
	return nil
}

// appendXORAddr appends an XOR-MAPPED-ADDRESS value for ap to b.
func appendXORAddr(b []byte, ap netip.AddrPort, txID [12]byte) []byte {
	var mask [16]byte
	binary.BigEndian.PutUint32(mask[:4], magicCookie)
	copy(mask[4:], txID[:])
	ip := ap.Addr().Unmap()
	family := byte(1)
	if ip.Is6() {
		family = 2
	}
	b = append(b, 0, family)
	b = binary.BigEndian.AppendUint16(b, ap.Port()^(magicCookie>>16))
	if family == 1 {
		for i, x := range ip.As4() {
			b = append(b, x^mask[i])
		}
		return b
	}
	for i, x := range ip.As16() {
		b = append(b, x^mask[i])
	}
	return b
}

// parseXORAddr decodes an XOR-MAPPED-ADDRESS value, whose length must match
// its family exactly (pion's decoder accepts truncated addresses).
func parseXORAddr(v []byte, txID [12]byte) (netip.AddrPort, bool) {
	if len(v) < 4 || v[0] != 0 {
		return netip.AddrPort{}, false
	}
	var mask [16]byte
	binary.BigEndian.PutUint32(mask[:4], magicCookie)
	copy(mask[4:], txID[:])
	port := binary.BigEndian.Uint16(v[2:4]) ^ (magicCookie >> 16)
	var ip netip.Addr
	switch {
	case v[1] == 1 && len(v) == 8:
		var a [4]byte
		for i := range a {
			a[i] = v[4+i] ^ mask[i]
		}
		ip = netip.AddrFrom4(a)
	case v[1] == 2 && len(v) == 20:
		var a [16]byte
		for i := range a {
			a[i] = v[4+i] ^ mask[i]
		}
		ip = netip.AddrFrom16(a).Unmap()
	default:
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ip, port), true
}
