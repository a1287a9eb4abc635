package kick

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"net/netip"
	"os"

	"github.com/pushrelay/pushrelay/relay/atomicfile"
	"github.com/pushrelay/pushrelay/relay/push"
)

// Wake datagrams. Both fit in 64 bytes.
//
// Compatible: the text "NOTIFY <ip>:<port>" (the address it is sent to), as
// Telefónica's wake-up platform sent it; Firefox OS reconnects on any
// datagram and ignores the content.
//
// Authenticated: "PRW1", an 8-byte big-endian counter, and the first 16
// bytes of HMAC-SHA256(wake key, "PRW1" || counter || UAID). The counter is
// the relay's clock in microseconds (kept strictly increasing per device);
// a device ignores a datagram whose MAC is wrong or whose counter is not
// above the last one it accepted, so a spoofed or replayed datagram cannot
// wake it.
const (
	authMagic = "PRW1"
	// AuthSize is the length of an authenticated wake datagram.
	AuthSize = 4 + 8 + 16
	keySize  = 16
)

// appendNotify appends the compatible datagram for to.
func appendNotify(b []byte, to netip.AddrPort) []byte {
	b = append(b, "NOTIFY "...)
	return to.AppendTo(b)
}

// appendAuthWith appends the authenticated datagram for device u, the
// MAC computed with m (allocating nothing).
func appendAuthWith(m *macer, b []byte, key []byte, u push.UAID, counter uint64) []byte {
	b = append(b, authMagic...)
	b = binary.BigEndian.AppendUint64(b, counter)
	return append(b, m.mac(key, b[len(b)-12:], u[:])[:16]...)
}

// macer computes HMAC-SHA256 (RFC 2104) with digests it reuses, so the
// kick loop allocates nothing per datagram. It is not safe for concurrent
// use; the result is valid until the next call.
type macer struct {
	inner, outer hash.Hash
	pad          [sha256.BlockSize]byte
	sum          [sha256.Size]byte
}

func newMacer() *macer { return &macer{inner: sha256.New(), outer: sha256.New()} }

// mac is HMAC-SHA256(key, a || b).
func (m *macer) mac(key, a, b []byte) []byte {
	if len(key) > sha256.BlockSize {
		h := sha256.Sum256(key)
		key = h[:]
	}
	m.keyPad(key, 0x36)
	m.inner.Reset()
	m.inner.Write(m.pad[:])
	m.inner.Write(a)
	m.inner.Write(b)
	in := m.inner.Sum(m.sum[:0])
	m.keyPad(key, 0x5c)
	m.outer.Reset()
	m.outer.Write(m.pad[:])
	m.outer.Write(in)
	return m.outer.Sum(m.sum[:0])
}

func (m *macer) keyPad(key []byte, v byte) {
	for i := range m.pad {
		m.pad[i] = v
	}
	for i, c := range key {
		m.pad[i] ^= c
	}
}

func datagramMAC(key []byte, u push.UAID, head []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(head)
	m.Write(u[:])
	return m.Sum(nil)
}

// Verify checks an authenticated wake datagram for device u under its
// wake key and returns its counter. The caller must also require the
// counter to be above the last one it accepted.
func Verify(key []byte, u push.UAID, b []byte) (counter uint64, ok bool) {
	if len(b) != AuthSize || string(b[:4]) != authMagic {
		return 0, false
	}
	if !hmac.Equal(datagramMAC(key, u, b[:12])[:16], b[12:]) {
		return 0, false
	}
	return binary.BigEndian.Uint64(b[4:12]), true
}

// Keys derives each device's wake key from one secret, so no key is stored
// per device: key = HMAC-SHA256(secret, "pushrelay wake key v1" || UAID),
// first 16 bytes. Devices get it base64url-encoded (the hello reply's
// wake_key); that string is also their STUN password.
type Keys struct{ secret []byte }

// NewKeys returns the derivation for a secret of at least 32 bytes.
func NewKeys(secret []byte) (*Keys, error) {
	if len(secret) < 32 {
		return nil, errors.New("kick: wake secret must be at least 32 bytes")
	}
	return &Keys{secret: secret}, nil
}

// Key is u's raw wake key.
func (k *Keys) Key(u push.UAID) []byte {
	m := hmac.New(sha256.New, k.secret)
	m.Write([]byte(keyLabel))
	m.Write(u[:])
	return m.Sum(nil)[:keySize]
}

const keyLabel = "pushrelay wake key v1"

var keyLabelBytes = []byte(keyLabel)

// keyWith is Key computed with m, written into k.
func (k *Keys) keyWith(m *macer, u push.UAID, into *[keySize]byte) {
	copy(into[:], m.mac(k.secret, keyLabelBytes, u[:]))
}

// KeyString is u's wake key as the device sees it.
func (k *Keys) KeyString(u push.UAID) string {
	return base64.RawURLEncoding.EncodeToString(k.Key(u))
}

// ParseKey decodes a wake_key from a hello reply.
func ParseKey(s string) ([]byte, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) != keySize {
		return nil, fmt.Errorf("kick: bad wake key %q", s)
	}
	return b, nil
}

// LoadOrCreateSecret reads the wake secret at path, creating it (32 random
// bytes, mode 0600) on first start. Replacing the file changes every
// device's wake key: devices learn the new one at their next hello.
func LoadOrCreateSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		if len(b) < 32 {
			return nil, fmt.Errorf("wake secret %s is %d bytes, want 32", path, len(b))
		}
		return b, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read wake secret: %w", err)
	}
	b = make([]byte, 32)
	rand.Read(b)
	if err := atomicfile.Create(path, b, 0o600); err != nil {
		return nil, fmt.Errorf("create wake secret: %w", err)
	}
	return b, nil
}
