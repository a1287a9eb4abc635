// Package ece implements message encryption for Web Push.
//
// The current scheme is "aes128gcm": RFC 8291 (Message Encryption for Web
// Push) layered on RFC 8188 (Encrypted Content-Encoding for HTTP). Encrypt
// produces a single-record aes128gcm body for a subscription, Decrypt opens
// one (including multi-record bodies), and ParseAES128GCMHeader performs the
// key-less structural validation a push service can do on an incoming body.
//
// The legacy "aesgcm" scheme (draft-ietf-webpush-encryption-04 on
// draft-ietf-httpbis-encryption-encoding-03), which Firefox and autopush
// still accept, is provided by EncryptAESGCM, DecryptAESGCM and
// ParseAESGCMHeaders. Its parameters travel in the Encryption and Crypto-Key
// HTTP headers; ParseHeaderList and ParseHeaderParams parse those.
//
// Every failure is reported as an error wrapping one of the exported
// sentinel errors (ErrMalformed, ErrRecordSize, ErrBadKey, ...), so callers
// can classify failures with errors.Is and map them to HTTP responses.
//
// Only the Go standard library is used.
package ece

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Sizes and limits used by the encodings.
const (
	// SaltSize is the size in bytes of the per-message salt.
	SaltSize = 16
	// AuthSecretSize is the size in bytes of a subscription's auth secret.
	AuthSecretSize = 16
	// PublicKeySize is the size of an uncompressed P-256 point.
	PublicKeySize = 65
	// TagSize is the AES-GCM authentication tag size.
	TagSize = 16
	// DefaultRecordSize is the record size Encrypt and EncryptAESGCM use
	// and the aesgcm default when the Encryption header has no rs.
	DefaultRecordSize = 4096
	// MinRecordSize is the smallest valid aes128gcm record size (RFC 8188
	// section 2.1: one delimiter octet plus the 16-octet tag, plus one).
	MinRecordSize = 18
	// MinAESGCMRecordSize is the smallest aesgcm record size accepted: the
	// 2-octet padding length plus at least one octet of content.
	MinAESGCMRecordSize = 3
	// HeaderSize is the size of the fixed part of an aes128gcm header
	// (salt, rs, idlen); the key ID follows it.
	HeaderSize = SaltSize + 4 + 1
	// MaxMessageSize is the largest encrypted body a Web Push service must
	// accept (RFC 8030 section 7.2).
	MaxMessageSize = 4096
	// MaxPlaintextSize is the largest plaintext Encrypt accepts: a 4096
	// byte body less the 86-byte header, the tag and the delimiter.
	MaxPlaintextSize = MaxMessageSize - HeaderSize - PublicKeySize - TagSize - 1 // 3993
	// MaxAESGCMPlaintextSize is the largest plaintext EncryptAESGCM
	// accepts: a 4096 byte body less the tag and the 2-octet pad length.
	MaxAESGCMPlaintextSize = MaxMessageSize - TagSize - 2 // 4078
)

// Sentinel errors. Every error returned by this package wraps exactly one
// of them.
var (
	// ErrMalformed reports a body or header that cannot be parsed: too
	// short, bad base64, missing parameters, key ID overrunning the body.
	ErrMalformed = errors.New("ece: malformed message")
	// ErrRecordSize reports a record size that is out of range.
	ErrRecordSize = errors.New("ece: invalid record size")
	// ErrBadKey reports a public key that is not a valid uncompressed
	// P-256 point, or a missing/unusable private key.
	ErrBadKey = errors.New("ece: invalid key")
	// ErrBadAuthSecret reports an auth secret that is not 16 bytes.
	ErrBadAuthSecret = errors.New("ece: invalid auth secret")
	// ErrDecrypt reports a record that failed AEAD authentication: wrong
	// keys or a tampered message.
	ErrDecrypt = errors.New("ece: decryption failed")
	// ErrPadding reports invalid padding inside an authenticated record.
	ErrPadding = errors.New("ece: invalid padding")
	// ErrTruncated reports a message whose final record is missing.
	ErrTruncated = errors.New("ece: truncated message")
	// ErrTooLarge reports a plaintext too long for a single Web Push record.
	ErrTooLarge = errors.New("ece: plaintext too large")
)

// Subscription holds the user agent side of a push subscription: the
// P-256 ECDH private key (whose public half is the "p256dh" value) and the
// 16-byte authentication secret ("auth").
type Subscription struct {
	Private *ecdh.PrivateKey
	Auth    []byte
}

// NewSubscription generates a fresh P-256 key pair and random auth secret.
func NewSubscription() (*Subscription, error) {
	priv, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ece: generating subscription key: %w", err)
	}
	auth := make([]byte, AuthSecretSize)
	if _, err := rand.Read(auth); err != nil {
		return nil, fmt.Errorf("ece: generating auth secret: %w", err)
	}
	return &Subscription{Private: priv, Auth: auth}, nil
}

// PublicKey returns the subscription's public key as a 65-byte uncompressed
// P-256 point, or nil if the subscription has no private key.
func (s *Subscription) PublicKey() []byte {
	if s == nil || s.Private == nil {
		return nil
	}
	return s.Private.PublicKey().Bytes()
}

// check validates the subscription before use.
func (s *Subscription) check() error {
	if s == nil || s.Private == nil {
		return fmt.Errorf("%w: subscription has no private key", ErrBadKey)
	}
	if s.Private.Curve() != ecdh.P256() {
		return fmt.Errorf("%w: subscription key is not P-256", ErrBadKey)
	}
	if len(s.Auth) != AuthSecretSize {
		return fmt.Errorf("%w: got %d bytes, want %d", ErrBadAuthSecret, len(s.Auth), AuthSecretSize)
	}
	return nil
}

// EncodeKey encodes b as unpadded base64url, the form used for p256dh,
// auth, salt, dh and VAPID keys.
func EncodeKey(b []byte) string {
	return base64.RawURLEncoding.EncodeToString(b)
}

// DecodeKey decodes base64url with or without '=' padding.
func DecodeKey(s string) ([]byte, error) {
	enc := base64.RawURLEncoding
	if strings.HasSuffix(s, "=") {
		enc = base64.URLEncoding
	}
	b, err := enc.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: invalid base64url: %w", ErrMalformed, err)
	}
	return b, nil
}

// parsePublicKey validates an uncompressed P-256 point.
func parsePublicKey(b []byte) (*ecdh.PublicKey, error) {
	if len(b) != PublicKeySize || b[0] != 0x04 {
		return nil, fmt.Errorf("%w: want %d-byte uncompressed P-256 point, got %d bytes", ErrBadKey, PublicKeySize, len(b))
	}
	pub, err := ecdh.P256().NewPublicKey(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKey, err)
	}
	return pub, nil
}
