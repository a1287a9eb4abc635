package vapid

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"time"
)

// jwtHeader is the fixed JOSE header of every token Signer produces,
// {"typ":"JWT","alg":"ES256"}, already base64url-encoded.
var jwtHeader = base64.RawURLEncoding.EncodeToString([]byte(`{"typ":"JWT","alg":"ES256"}`))

// Signer produces VAPID tokens with an application server's P-256 key.
type Signer struct {
	key *ecdsa.PrivateKey
	pub []byte // uncompressed public key; nil if key is unusable
}

// NewSigner returns a Signer for priv. If priv is nil or not a P-256 key
// the Signer's methods return ErrBadKey.
func NewSigner(priv *ecdsa.PrivateKey) *Signer {
	s := &Signer{key: priv}
	if priv != nil && priv.Curve == elliptic.P256() {
		if pub, err := priv.PublicKey.Bytes(); err == nil {
			s.pub = pub
		}
	}
	return s
}

// GenerateKey generates a new P-256 application server key.
func GenerateKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("vapid: generating key: %w", err)
	}
	return k, nil
}

// PublicKey returns the signer's public key as a 65-byte uncompressed
// point (the value browsers take as applicationServerKey), or nil if the
// signer has no usable key.
func (s *Signer) PublicKey() []byte {
	if s == nil || s.pub == nil {
		return nil
	}
	return bytes.Clone(s.pub)
}

// Sign returns a compact ES256 JWT with claims aud=audience, exp=exp
// (truncated to whole seconds) and, if subject is not empty, sub=subject.
// The audience must be the origin of the push resource, for example
// "https://push.example.net"; subject, if given, must be a mailto: or
// https: URI. Sign does not enforce the 24-hour limit that push services
// apply to exp.
func (s *Signer) Sign(audience, subject string, exp time.Time) (string, error) {
	if s == nil || s.pub == nil {
		return "", fmt.Errorf("%w: signer needs a P-256 private key", ErrBadKey)
	}
	if audience == "" {
		return "", fmt.Errorf("%w: empty audience", ErrBadClaims)
	}
	if subject != "" && !validSubject(subject) {
		return "", fmt.Errorf("%w: sub must be a mailto: or https: URI", ErrBadClaims)
	}
	if exp.Unix() <= 0 {
		return "", fmt.Errorf("%w: exp must be after the epoch", ErrBadClaims)
	}
	payload, err := json.Marshal(struct {
		Aud string `json:"aud"`
		Exp int64  `json:"exp"`
		Sub string `json:"sub,omitempty"`
	}{audience, exp.Unix(), subject})
	if err != nil {
		return "", fmt.Errorf("vapid: encoding claims: %w", err)
	}
	signingInput := jwtHeader + "." + base64.RawURLEncoding.EncodeToString(payload)
	digest := sha256.Sum256([]byte(signingInput))
	r, sv, err := ecdsa.Sign(rand.Reader, s.key, digest[:])
	if err != nil {
		return "", fmt.Errorf("vapid: signing: %w", err)
	}
	var sig [64]byte
	r.FillBytes(sig[:32])
	sv.FillBytes(sig[32:])
	token := signingInput + "." + base64.RawURLEncoding.EncodeToString(sig[:])
	if len(token) > MaxTokenSize {
		return "", fmt.Errorf("%w: token would be %d bytes, more than %d", ErrBadClaims, len(token), MaxTokenSize)
	}
	return token, nil
}

// Header returns a complete RFC 8292 Authorization header value,
// "vapid t=<token>, k=<base64url public key>", for the given claims.
func (s *Signer) Header(audience, subject string, exp time.Time) (string, error) {
	token, err := s.Sign(audience, subject, exp)
	if err != nil {
		return "", err
	}
	return "vapid t=" + token + ", k=" + base64.RawURLEncoding.EncodeToString(s.pub), nil
}

// ParsePrivateKey reads an application server private key in any of the
// forms in common use: a PEM "EC PRIVATE KEY" (SEC 1, as written by
// MarshalPrivateKeyPEM and "openssl ecparam -genkey", whose leading
// "EC PARAMETERS" block is skipped) or "PRIVATE KEY" (PKCS #8) block, or
// the base64url-encoded raw 32-byte private scalar used by the npm
// web-push package and many application servers (padding optional).
// Surrounding whitespace is ignored. The key must be on P-256.
func ParsePrivateKey(data []byte) (*ecdsa.PrivateKey, error) {
	data = bytes.TrimSpace(data)
	if !bytes.HasPrefix(data, []byte("-----BEGIN")) {
		raw, err := decodeBase64URL(string(data))
		if err != nil {
			return nil, fmt.Errorf("%w: private key is neither PEM nor base64url: %w", ErrBadKey, err)
		}
		if len(raw) != 32 {
			return nil, fmt.Errorf("%w: raw private key is %d bytes, want 32", ErrBadKey, len(raw))
		}
		k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), raw)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadKey, err)
		}
		return k, nil
	}
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("%w: no EC PRIVATE KEY or PRIVATE KEY PEM block", ErrBadKey)
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "EC PARAMETERS":
			continue
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		default:
			return nil, fmt.Errorf("%w: unexpected PEM block %q", ErrBadKey, truncate(block.Type))
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadKey, err)
		}
		k, ok := key.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("%w: %T is not an ECDSA key", ErrBadKey, key)
		}
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("%w: key is on %s, want P-256", ErrBadKey, k.Curve.Params().Name)
		}
		return k, nil
	}
}

// MarshalPrivateKeyPEM encodes a P-256 private key as a PEM
// "EC PRIVATE KEY" (SEC 1) block.
func MarshalPrivateKeyPEM(priv *ecdsa.PrivateKey) ([]byte, error) {
	if priv == nil || priv.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%w: need a P-256 private key", ErrBadKey)
	}
	der, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKey, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}
