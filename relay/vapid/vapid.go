// Package vapid implements Voluntary Application Server Identification
// (VAPID, RFC 8292) for Web Push: parsing and verifying the ES256 JSON Web
// Tokens an application server presents to the push service, and signing
// them for application-server tools.
//
// A push endpoint calls ParseAuthorization on the request's Authorization
// and Crypto-Key headers, then Verify with the endpoint's origin as the
// audience. Both the RFC 8292 form
//
//	Authorization: vapid t=<jwt>, k=<base64url public key>
//
// and the older draft form still sent by some servers
//
//	Authorization: WebPush <jwt>      (or Bearer <jwt>)
//	Crypto-Key: p256ecdsa=<base64url public key>
//
// are accepted. Tokens are ES256 with raw 64-byte r||s signatures (JWS,
// RFC 7515 appendix A.3); DER-encoded signatures are rejected.
//
// Every failure is reported as an error wrapping one of the exported
// sentinel errors, so callers can classify it with errors.Is and map it to
// an HTTP response. Only the Go standard library is used.
package vapid

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Limits on attacker-supplied input.
const (
	// MaxTokenSize is the largest JWT accepted, in bytes.
	MaxTokenSize = 4096
	// maxHeaderSize bounds the Authorization and Crypto-Key values.
	maxHeaderSize = 8192
	// publicKeySize is the size of an uncompressed P-256 point.
	publicKeySize = 65
)

// Sentinel errors. Every error returned by this package wraps exactly one
// of them.
var (
	// ErrNoAuthorization reports an empty Authorization header.
	ErrNoAuthorization = errors.New("vapid: no authorization")
	// ErrMalformed reports an Authorization header or token that cannot be
	// parsed: unknown scheme, missing t or k, bad base64, bad JOSE header
	// (including any alg other than ES256), oversized input.
	ErrMalformed = errors.New("vapid: malformed authorization")
	// ErrBadKey reports a public or private key that is not a valid P-256
	// key in the expected encoding.
	ErrBadKey = errors.New("vapid: invalid key")
	// ErrBadSignature reports a signature that is not 64 bytes or does not
	// verify under the presented key.
	ErrBadSignature = errors.New("vapid: invalid signature")
	// ErrBadAudience reports an aud claim that differs from the push
	// service origin.
	ErrBadAudience = errors.New("vapid: audience mismatch")
	// ErrExpired reports an exp claim at or before the current time.
	ErrExpired = errors.New("vapid: token expired")
	// ErrExpiryTooFar reports an exp claim more than 24 hours (plus
	// MaxClockSkew) in the future.
	ErrExpiryTooFar = errors.New("vapid: expiry too far in the future")
	// ErrBadClaims reports a signed payload with missing or ill-typed
	// claims, or a sub claim that is not a mailto: or https: URI.
	ErrBadClaims = errors.New("vapid: invalid claims")
)

// Credentials is what an application server presented: the compact JWT and
// the 65-byte uncompressed P-256 public key it claims to be signed with.
type Credentials struct {
	Token     string
	PublicKey []byte
}

// KeyHash returns the SHA-256 digest of a raw public key, used to bind a
// restricted (v2) endpoint to the application server key it was created
// for.
func KeyHash(pub []byte) [32]byte {
	return sha256.Sum256(pub)
}

// ParseAuthorization extracts the token and public key from the
// Authorization and Crypto-Key request headers.
//
// With the "vapid" scheme (case-insensitive) the comma-separated t and k
// parameters are required, may appear in any order, and may be quoted or
// surrounded by spaces; Crypto-Key is ignored. With the legacy "WebPush"
// and "Bearer" schemes the token follows the scheme and the key is the
// p256ecdsa parameter of the Crypto-Key header, whose parameters may be
// separated by ';' or ','. Keys are base64url with or without padding and
// must decode to a point on P-256.
//
// The token's signature and claims are not checked; call Verify.
func ParseAuthorization(authorization, cryptoKey string) (Credentials, error) {
	a := strings.TrimSpace(authorization)
	if a == "" {
		return Credentials{}, ErrNoAuthorization
	}
	if len(a) > maxHeaderSize {
		return Credentials{}, fmt.Errorf("%w: authorization header is %d bytes", ErrMalformed, len(a))
	}
	scheme, rest := a, ""
	if i := strings.IndexAny(a, " \t"); i >= 0 {
		scheme, rest = a[:i], strings.TrimSpace(a[i+1:])
	}
	var token, key string
	switch strings.ToLower(scheme) {
	case "vapid":
		var haveT, haveK bool
		for p := range strings.SplitSeq(rest, ",") {
			p = strings.TrimSpace(p)
			if p == "" {
				continue
			}
			name, value, ok := strings.Cut(p, "=")
			if !ok {
				return Credentials{}, fmt.Errorf("%w: vapid parameter without value", ErrMalformed)
			}
			value = unquote(strings.TrimSpace(value))
			switch strings.ToLower(strings.TrimSpace(name)) {
			case "t":
				if haveT {
					return Credentials{}, fmt.Errorf("%w: duplicate t parameter", ErrMalformed)
				}
				token, haveT = value, true
			case "k":
				if haveK {
					return Credentials{}, fmt.Errorf("%w: duplicate k parameter", ErrMalformed)
				}
				key, haveK = value, true
			}
		}
		if !haveT || !haveK {
			return Credentials{}, fmt.Errorf("%w: vapid scheme needs both t and k", ErrMalformed)
		}
	case "webpush", "bearer":
		token = rest
		if len(cryptoKey) > maxHeaderSize {
			return Credentials{}, fmt.Errorf("%w: crypto-key header is %d bytes", ErrMalformed, len(cryptoKey))
		}
		var ok bool
		if key, ok = headerParam(cryptoKey, "p256ecdsa"); !ok {
			return Credentials{}, fmt.Errorf("%w: no p256ecdsa key in crypto-key header", ErrMalformed)
		}
	default:
		return Credentials{}, fmt.Errorf("%w: unsupported scheme %q", ErrMalformed, truncate(scheme))
	}
	if err := checkTokenShape(token); err != nil {
		return Credentials{}, err
	}
	pub, err := decodePublicKey(key)
	if err != nil {
		return Credentials{}, err
	}
	return Credentials{Token: token, PublicKey: pub}, nil
}

// checkTokenShape checks that token looks like a compact JWS: bounded in
// size, three non-empty base64url segments.
func checkTokenShape(token string) error {
	if len(token) > MaxTokenSize {
		return fmt.Errorf("%w: token is %d bytes, more than %d", ErrMalformed, len(token), MaxTokenSize)
	}
	if strings.Count(token, ".") != 2 {
		return fmt.Errorf("%w: token is not a three-part JWT", ErrMalformed)
	}
	for seg := range strings.SplitSeq(token, ".") {
		if seg == "" {
			return fmt.Errorf("%w: token has an empty segment", ErrMalformed)
		}
		for i := 0; i < len(seg); i++ {
			if !isBase64URL(seg[i]) {
				return fmt.Errorf("%w: token has a character outside base64url", ErrMalformed)
			}
		}
	}
	return nil
}

func isBase64URL(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

// headerParam returns the first name=value parameter of a Crypto-Key style
// header, whose parameters are separated by ';' or ','. Names compare
// case-insensitively; quotes around the value are removed.
func headerParam(h, name string) (string, bool) {
	for p := range strings.FieldsFuncSeq(h, func(r rune) bool { return r == ';' || r == ',' }) {
		n, v, ok := strings.Cut(p, "=")
		if ok && strings.EqualFold(strings.TrimSpace(n), name) {
			return unquote(strings.TrimSpace(v)), true
		}
	}
	return "", false
}

// unquote strips one pair of surrounding double quotes.
func unquote(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return s[1 : len(s)-1]
	}
	return s
}

// decodeBase64URL decodes base64url with or without '=' padding.
func decodeBase64URL(s string) ([]byte, error) {
	enc := base64.RawURLEncoding
	if strings.HasSuffix(s, "=") {
		enc = base64.URLEncoding
	}
	return enc.DecodeString(s)
}

// DecodePublicKey decodes and validates an application server key as a
// device passes it in register: base64url (padding allowed), an
// uncompressed P-256 point. It returns the raw 65 bytes.
func DecodePublicKey(s string) ([]byte, error) { return decodePublicKey(s) }

// decodePublicKey decodes and validates a base64url uncompressed P-256
// public key.
func decodePublicKey(s string) ([]byte, error) {
	if len(s) > 2*publicKeySize {
		return nil, fmt.Errorf("%w: public key encoding is %d characters", ErrBadKey, len(s))
	}
	b, err := decodeBase64URL(s)
	if err != nil {
		return nil, fmt.Errorf("%w: public key is not base64url: %w", ErrBadKey, err)
	}
	if _, err := parsePublicKey(b); err != nil {
		return nil, err
	}
	return b, nil
}

// parsePublicKey validates a raw uncompressed P-256 point.
func parsePublicKey(b []byte) (*ecdsa.PublicKey, error) {
	if len(b) != publicKeySize || b[0] != 0x04 {
		return nil, fmt.Errorf("%w: want %d-byte uncompressed P-256 point, got %d bytes", ErrBadKey, publicKeySize, len(b))
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), b)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKey, err)
	}
	return pub, nil
}

// truncate shortens attacker-controlled text before it goes into an error.
func truncate(s string) string {
	const max = 32
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}
