package vapid

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"
)

const (
	// MaxExpiry is the longest a token may remain valid, RFC 8292
	// section 2: exp must be no more than 24 hours after the request.
	MaxExpiry = 24 * time.Hour
	// MaxClockSkew is how far beyond now+MaxExpiry Verify still accepts
	// exp, to tolerate application server clocks running slightly fast.
	// The lower bound (exp must be after now) has no tolerance.
	MaxClockSkew = 60 * time.Second
)

// jwtEncoding is the JWS segment encoding: unpadded base64url, rejecting
// non-zero trailing bits so that each token has a single spelling.
var jwtEncoding = base64.RawURLEncoding.Strict()

// Claims are the verified VAPID claims of a token.
type Claims struct {
	Audience string    // aud: the push service origin
	Subject  string    // sub: contact URI (mailto: or https:), may be empty
	Expiry   time.Time // exp
}

// Verify checks a token against its presented key and returns its claims.
//
// The JOSE header must name alg "ES256" (typ, if present, must be "JWT";
// a crit header is refused). The signature must be the 64-byte r||s
// ECDSA P-256 SHA-256 signature over "header.payload" under c.PublicKey.
// Only then are the claims examined: aud must be a string exactly equal to
// audience, which should be the push endpoint's origin "scheme://host" or
// "scheme://host:port" (no path or trailing slash; the comparison is exact
// and case-sensitive, so callers must pass the origin in the form
// application servers derive it, which is how browsers serialize origins);
// exp must be a number after now and at most now+MaxExpiry+MaxClockSkew;
// sub is optional but, if present, must be a string starting with
// "mailto:" or "https:". Other claims are ignored. Tokens longer than
// MaxTokenSize are rejected without parsing.
//
// Errors: ErrMalformed (token shape, JOSE header, alg other than ES256 such
// as "none" or "HS256"), ErrBadKey (c.PublicKey not a P-256 point),
// ErrBadSignature, then, for authenticated claims, ErrBadClaims,
// ErrBadAudience, ErrExpired and ErrExpiryTooFar.
func Verify(c Credentials, audience string, now time.Time) (Claims, error) {
	if len(c.Token) > MaxTokenSize {
		return Claims{}, fmt.Errorf("%w: token is %d bytes, more than %d", ErrMalformed, len(c.Token), MaxTokenSize)
	}
	pub, err := parsePublicKey(c.PublicKey)
	if err != nil {
		return Claims{}, err
	}
	hdrSeg, rest, ok := strings.Cut(c.Token, ".")
	payloadSeg, sigSeg, ok2 := strings.Cut(rest, ".")
	if !ok || !ok2 || strings.Contains(sigSeg, ".") {
		return Claims{}, fmt.Errorf("%w: token is not a three-part JWT", ErrMalformed)
	}
	if err := checkHeader(hdrSeg); err != nil {
		return Claims{}, err
	}
	sig, err := jwtEncoding.DecodeString(sigSeg)
	if err != nil {
		return Claims{}, fmt.Errorf("%w: signature is not base64url: %w", ErrBadSignature, err)
	}
	if len(sig) != 64 {
		return Claims{}, fmt.Errorf("%w: signature is %d bytes, want 64-byte r||s", ErrBadSignature, len(sig))
	}
	digest := sha256.Sum256([]byte(c.Token[:len(hdrSeg)+1+len(payloadSeg)]))
	r := new(big.Int).SetBytes(sig[:32])
	s := new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(pub, digest[:], r, s) {
		return Claims{}, fmt.Errorf("%w: signature does not verify", ErrBadSignature)
	}
	payload, err := jwtEncoding.DecodeString(payloadSeg)
	if err != nil {
		return Claims{}, fmt.Errorf("%w: payload is not base64url: %w", ErrBadClaims, err)
	}
	return checkClaims(payload, audience, now)
}

// checkHeader decodes and checks the JOSE header segment.
func checkHeader(seg string) error {
	raw, err := jwtEncoding.DecodeString(seg)
	if err != nil {
		return fmt.Errorf("%w: header is not base64url: %w", ErrMalformed, err)
	}
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(raw, &hdr); err != nil || hdr == nil {
		return fmt.Errorf("%w: header is not a JSON object", ErrMalformed)
	}
	var alg string
	if err := json.Unmarshal(hdr["alg"], &alg); err != nil || alg != "ES256" {
		return fmt.Errorf("%w: alg must be ES256", ErrMalformed)
	}
	if t, ok := hdr["typ"]; ok {
		var typ string
		if err := json.Unmarshal(t, &typ); err != nil || !strings.EqualFold(typ, "JWT") {
			return fmt.Errorf("%w: typ must be JWT", ErrMalformed)
		}
	}
	if _, ok := hdr["crit"]; ok {
		return fmt.Errorf("%w: crit header not supported", ErrMalformed)
	}
	return nil
}

// checkClaims decodes and checks the (already authenticated) claims.
func checkClaims(payload []byte, audience string, now time.Time) (Claims, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(payload, &m); err != nil || m == nil {
		return Claims{}, fmt.Errorf("%w: payload is not a JSON object", ErrBadClaims)
	}
	var c Claims
	rawAud, ok := m["aud"]
	if !ok {
		return Claims{}, fmt.Errorf("%w: missing aud", ErrBadClaims)
	}
	if err := unmarshalString(rawAud, &c.Audience); err != nil {
		return Claims{}, fmt.Errorf("%w: aud must be a string", ErrBadClaims)
	}
	rawExp, ok := m["exp"]
	if !ok {
		return Claims{}, fmt.Errorf("%w: missing exp", ErrBadClaims)
	}
	var exp float64
	if !isJSONNumber(rawExp) || json.Unmarshal(rawExp, &exp) != nil || math.IsNaN(exp) || math.IsInf(exp, 0) {
		return Claims{}, fmt.Errorf("%w: exp must be a number", ErrBadClaims)
	}
	if rawSub, ok := m["sub"]; ok {
		if err := unmarshalString(rawSub, &c.Subject); err != nil {
			return Claims{}, fmt.Errorf("%w: sub must be a string", ErrBadClaims)
		}
		if !validSubject(c.Subject) {
			return Claims{}, fmt.Errorf("%w: sub must be a mailto: or https: URI", ErrBadClaims)
		}
	}
	if c.Audience != audience {
		return Claims{}, fmt.Errorf("%w: token is for %q", ErrBadAudience, truncate(c.Audience))
	}
	// Compare in seconds before converting, so absurd values cannot
	// overflow time.Time arithmetic.
	nowSec := float64(now.Unix()) + float64(now.Nanosecond())/1e9
	limit := nowSec + (MaxExpiry + MaxClockSkew).Seconds()
	switch {
	case exp <= nowSec:
		return Claims{}, fmt.Errorf("%w: exp %s is not after %d", ErrExpired, fmtExp(exp), now.Unix())
	case exp > limit:
		return Claims{}, fmt.Errorf("%w: exp %s is more than %v after %d", ErrExpiryTooFar, fmtExp(exp), MaxExpiry, now.Unix())
	}
	sec, frac := math.Modf(exp)
	c.Expiry = time.Unix(int64(sec), int64(frac*1e9))
	return c, nil
}

// fmtExp formats an exp claim for an error message.
func fmtExp(exp float64) string {
	if math.Abs(exp) < 1e15 {
		return strconv.FormatFloat(exp, 'f', -1, 64)
	}
	return strconv.FormatFloat(exp, 'g', 6, 64)
}

var errNotString = errors.New("not a json string")

// unmarshalString decodes a JSON string, refusing null and other types.
func unmarshalString(raw json.RawMessage, s *string) error {
	if len(raw) == 0 || raw[0] != '"' {
		return errNotString
	}
	return json.Unmarshal(raw, s)
}

// isJSONNumber reports whether raw is a JSON number literal (not a string,
// null or other value that encoding/json might accept for a float64).
func isJSONNumber(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) > 0 && (raw[0] == '-' || '0' <= raw[0] && raw[0] <= '9')
}

// validSubject reports whether sub is a mailto: or https: URI, as RFC 8292
// section 2.1 requires of the contact claim.
func validSubject(sub string) bool {
	return hasPrefixFold(sub, "mailto:") && len(sub) > len("mailto:") ||
		hasPrefixFold(sub, "https:") && len(sub) > len("https:")
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}
