// Package token makes and checks the opaque strings pushrelay hands out: the
// push endpoint tokens app servers post to, and the message ids devices ack
// and app servers delete.
//
// Both are AES-256-GCM sealed under a key kept in the data directory, so they
// reveal no UAID and cannot be forged or altered. The nonce is derived from
// the plaintext with HMAC-SHA-256 (a synthetic IV), so one subscription always
// gets the same endpoint and re-registering is idempotent.
//
// A key file holds one base64url key per line; the first line seals, every
// line opens. Rotating a key means adding a new first line and keeping the
// old one until the endpoints it sealed are gone.
package token

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/pushrelay/pushrelay/relay/atomicfile"
)

// KeySize is the length of a master key.
const KeySize = 32

// Kinds of sealed value; the kind byte is authenticated with the payload so
// an endpoint token can never be replayed as a message id or vice versa.
const (
	kindEndpointV1 byte = 1
	kindEndpointV2 byte = 2
	kindMessageID  byte = 3
)

const nonceSize = 12

// MaxTokenLen bounds what Open* will look at; anything longer is invalid.
const MaxTokenLen = 512

// Errors.
var (
	ErrInvalid = errors.New("invalid token")
	ErrKeyFile = errors.New("bad key file")
)

var b64 = base64.RawURLEncoding

// Endpoint is what a push endpoint token carries.
type Endpoint struct {
	UAID    [16]byte
	Channel [16]byte
	// KeyHash is SHA-256 of the VAPID public key the subscription was bound
	// to at register time; nil for an unbound (v1) endpoint.
	KeyHash *[32]byte
}

// Version is 2 for a VAPID-bound endpoint and 1 otherwise; it is the
// /wpush/v{N}/ path element.
func (e Endpoint) Version() int {
	if e.KeyHash != nil {
		return 2
	}
	return 1
}

// MessageID is what a message id carries.
type MessageID struct {
	UAID    [16]byte
	Channel [16]byte
	Seq     uint64
}

type sealer struct {
	aead cipher.AEAD
	mac  []byte
	// macs reuses HMAC states: sealing is on every notification's path.
	macs sync.Pool
}

// Codec seals and opens tokens. It is safe for concurrent use.
type Codec struct {
	keys []*sealer
}

// New returns a codec for the given master keys; the first seals.
func New(masters ...[]byte) (*Codec, error) {
	if len(masters) == 0 {
		return nil, fmt.Errorf("%w: no keys", ErrKeyFile)
	}
	c := &Codec{}
	for i, m := range masters {
		if len(m) != KeySize {
			return nil, fmt.Errorf("%w: key %d is %d bytes, want %d", ErrKeyFile, i+1, len(m), KeySize)
		}
		encKey, err := hkdf.Key(sha256.New, m, nil, "pushrelay token enc", 32)
		if err != nil {
			return nil, err
		}
		macKey, err := hkdf.Key(sha256.New, m, nil, "pushrelay token siv", 32)
		if err != nil {
			return nil, err
		}
		block, err := aes.NewCipher(encKey)
		if err != nil {
			return nil, err
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, err
		}
		c.keys = append(c.keys, &sealer{aead: aead, mac: macKey})
	}
	return c, nil
}

// LoadOrCreate reads the key file at path, creating it with one fresh key
// (mode 0600) if it does not exist.
func LoadOrCreate(path string) (*Codec, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key := make([]byte, KeySize)
		if _, err := rand.Read(key); err != nil {
			return nil, fmt.Errorf("generate key: %w", err)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("create key dir: %w", err)
		}
		data = []byte(b64.EncodeToString(key) + "\n")
		if err := atomicfile.Create(path, data, 0o600); err != nil {
			return nil, fmt.Errorf("create key file: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("read key file %s: %w", path, err)
	}
	keys, err := ParseKeys(data)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return New(keys...)
}

// ParseKeys reads one base64url key per line; blank lines and lines starting
// with # are skipped.
func ParseKeys(data []byte) ([][]byte, error) {
	var keys [][]byte
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := b64.DecodeString(strings.TrimRight(line, "="))
		if err != nil || len(k) != KeySize {
			return nil, fmt.Errorf("%w: line %d is not a base64url %d-byte key", ErrKeyFile, n, KeySize)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: no keys", ErrKeyFile)
	}
	return keys, nil
}

func (c *Codec) seal(kind byte, plain []byte) string {
	k := c.keys[0]
	m, _ := k.macs.Get().(hash.Hash)
	if m == nil {
		m = hmac.New(sha256.New, k.mac)
	}
	m.Reset()
	m.Write([]byte{kind})
	m.Write(plain)
	var sumBuf [sha256.Size]byte
	sum := m.Sum(sumBuf[:0])
	k.macs.Put(m)
	out := make([]byte, 1+nonceSize, 1+nonceSize+len(plain)+k.aead.Overhead())
	out[0] = kind
	copy(out[1:], sum[:nonceSize])
	out = k.aead.Seal(out, out[1:1+nonceSize], plain, out[:1])
	return b64.EncodeToString(out)
}

func (c *Codec) open(kind byte, s string) ([]byte, error) {
	if len(s) == 0 || len(s) > MaxTokenLen {
		return nil, ErrInvalid
	}
	raw, err := b64.DecodeString(strings.TrimRight(s, "="))
	if err != nil || len(raw) < 1+nonceSize+16 || raw[0] != kind {
		return nil, ErrInvalid
	}
	for _, k := range c.keys {
		plain, err := k.aead.Open(nil, raw[1:1+nonceSize], raw[1+nonceSize:], raw[:1])
		if err == nil {
			return plain, nil
		}
	}
	return nil, ErrInvalid
}

// SealEndpoint returns the token for e; e.Version() says which path it goes
// under.
func (c *Codec) SealEndpoint(e Endpoint) string {
	plain := make([]byte, 0, 64)
	plain = append(plain, e.UAID[:]...)
	plain = append(plain, e.Channel[:]...)
	kind := kindEndpointV1
	if e.KeyHash != nil {
		plain = append(plain, e.KeyHash[:]...)
		kind = kindEndpointV2
	}
	return c.seal(kind, plain)
}

// OpenEndpoint checks a token posted to /wpush/v{version}/. A v1 token under
// v2 or the reverse is invalid.
func (c *Codec) OpenEndpoint(version int, tok string) (Endpoint, error) {
	kind, size := kindEndpointV1, 32
	switch version {
	case 1:
	case 2:
		kind, size = kindEndpointV2, 64
	default:
		return Endpoint{}, ErrInvalid
	}
	plain, err := c.open(kind, tok)
	if err != nil {
		return Endpoint{}, err
	}
	if len(plain) != size {
		return Endpoint{}, ErrInvalid
	}
	var e Endpoint
	copy(e.UAID[:], plain[:16])
	copy(e.Channel[:], plain[16:32])
	if size == 64 {
		var h [32]byte
		copy(h[:], plain[32:])
		e.KeyHash = &h
	}
	return e, nil
}

// SealMessageID returns the opaque id of a stored message.
func (c *Codec) SealMessageID(m MessageID) string {
	var plain [40]byte
	copy(plain[:16], m.UAID[:])
	copy(plain[16:32], m.Channel[:])
	binary.BigEndian.PutUint64(plain[32:], m.Seq)
	return c.seal(kindMessageID, plain[:])
}

// OpenMessageID checks and opens a message id.
func (c *Codec) OpenMessageID(s string) (MessageID, error) {
	plain, err := c.open(kindMessageID, s)
	if err != nil {
		return MessageID{}, err
	}
	if len(plain) != 40 {
		return MessageID{}, ErrInvalid
	}
	var m MessageID
	copy(m.UAID[:], plain[:16])
	copy(m.Channel[:], plain[16:32])
	m.Seq = binary.BigEndian.Uint64(plain[32:])
	return m, nil
}
