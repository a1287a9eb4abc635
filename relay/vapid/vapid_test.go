package vapid

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

var b64 = base64.RawURLEncoding

func mustDecode(t testing.TB, s string) []byte {
	t.Helper()
	b, err := decodeBase64URL(s)
	if err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
	return b
}

func TestRFC8292Example(t *testing.T) {
	for _, h := range []struct{ auth, ck string }{
		{"vapid t=" + rfcToken + ", k=" + rfcKey, ""},
		{"WebPush " + rfcToken, "p256ecdsa=" + rfcKey},
	} {
		c, err := ParseAuthorization(h.auth, h.ck)
		if err != nil {
			t.Fatalf("ParseAuthorization(%.20q): %v", h.auth, err)
		}
		if c.Token != rfcToken || b64.EncodeToString(c.PublicKey) != rfcKey {
			t.Fatalf("credentials = %+v", c)
		}
		claims, err := Verify(c, rfcAudience, rfcNow)
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
		want := Claims{Audience: rfcAudience, Subject: rfcSubject, Expiry: time.Unix(rfcExp, 0)}
		if claims != want {
			t.Errorf("claims = %+v, want %+v", claims, want)
		}
	}
	if h := KeyHash(mustDecode(t, rfcKey)); hex.EncodeToString(h[:]) != rfcKeyHash {
		t.Errorf("KeyHash = %x, want %s", h, rfcKeyHash)
	}
}

func TestNodeGoldenToken(t *testing.T) {
	c, err := ParseAuthorization("vapid t="+nodeToken+", k="+nodeKey, "")
	if err != nil {
		t.Fatal(err)
	}
	claims, err := Verify(c, nodeAudience, nodeNow)
	if err != nil {
		t.Fatal(err)
	}
	if claims.Audience != nodeAudience || claims.Subject != nodeSubject || !claims.Expiry.Equal(time.Unix(nodeExp, 0)) {
		t.Errorf("claims = %+v", claims)
	}
	if _, err := Verify(c, nodeAudience, time.Unix(nodeExp, 0)); !errors.Is(err, ErrExpired) {
		t.Errorf("at exp: err = %v, want ErrExpired", err)
	}
	if _, err := Verify(c, nodeAudience, time.Unix(nodeExp, 0).Add(-MaxExpiry-MaxClockSkew-time.Second)); !errors.Is(err, ErrExpiryTooFar) {
		t.Errorf("25h early: err = %v, want ErrExpiryTooFar", err)
	}
	if _, err := Verify(c, rfcAudience, nodeNow); !errors.Is(err, ErrBadAudience) {
		t.Errorf("other audience: err = %v, want ErrBadAudience", err)
	}
}

func TestParsePrivateKeyInterop(t *testing.T) {
	want := mustDecode(t, nodeKey)
	for name, data := range map[string]string{
		"sec1 pem":        nodeSEC1PEM,
		"pkcs8 pem":       nodePKCS8PEM,
		"raw":             nodeRawPriv,
		"raw padded":      nodeRawPriv + "=",
		"raw, whitespace": "  " + nodeRawPriv + "\n",
	} {
		k, err := ParsePrivateKey([]byte(data))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		s := NewSigner(k)
		if !bytes.Equal(s.PublicKey(), want) {
			t.Errorf("%s: public key %x, want %x", name, s.PublicKey(), want)
		}
		tok, err := s.Sign(nodeAudience, nodeSubject, nodeNow.Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(Credentials{Token: tok, PublicKey: want}, nodeAudience, nodeNow); err != nil {
			t.Errorf("%s: verify own token: %v", name, err)
		}
	}
	k, err := ParsePrivateKey([]byte(rfc8291ASPrivate))
	if err != nil {
		t.Fatal(err)
	}
	if got := b64.EncodeToString(NewSigner(k).PublicKey()); got != rfc8291ASPublic {
		t.Errorf("RFC 8291 raw key: public %s, want %s", got, rfc8291ASPublic)
	}
}

func TestPrivateKeyPEMRoundTrip(t *testing.T) {
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	p, err := MarshalPrivateKeyPEM(k)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(p, []byte("-----BEGIN EC PRIVATE KEY-----\n")) {
		t.Errorf("PEM = %s", p)
	}
	back, err := ParsePrivateKey(p)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Equal(k) {
		t.Error("round trip changed the key")
	}
	// openssl ecparam -genkey writes an EC PARAMETERS block first.
	params := pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}})
	if back, err := ParsePrivateKey(append(params, p...)); err != nil || !back.Equal(k) {
		t.Errorf("with EC PARAMETERS: %v", err)
	}
	if _, err := MarshalPrivateKeyPEM(nil); !errors.Is(err, ErrBadKey) {
		t.Errorf("nil key: err = %v", err)
	}
}

func TestParsePrivateKeyRejects(t *testing.T) {
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der384, err := x509.MarshalECPrivateKey(p384)
	if err != nil {
		t.Fatal(err)
	}
	_, edPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edDER, err := x509.MarshalPKCS8PrivateKey(edPriv)
	if err != nil {
		t.Fatal(err)
	}
	order := elliptic.P256().Params().N.Bytes()
	for name, data := range map[string][]byte{
		"empty":        nil,
		"garbage":      []byte("not a key"),
		"raw 31 bytes": []byte(b64.EncodeToString(make([]byte, 31))),
		"raw zero":     []byte(b64.EncodeToString(make([]byte, 32))),
		"raw order":    []byte(b64.EncodeToString(order)),
		"public key":   []byte(rfcKey),
		"P-384":        pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der384}),
		"ed25519":      pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: edDER}),
		"certificate":  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}}),
		"bad der":      pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte{1, 2, 3}}),
		"truncated":    []byte(nodeSEC1PEM[:60]),
	} {
		if _, err := ParsePrivateKey(data); !errors.Is(err, ErrBadKey) {
			t.Errorf("%s: err = %v, want ErrBadKey", name, err)
		}
	}
	if _, err := MarshalPrivateKeyPEM(p384); !errors.Is(err, ErrBadKey) {
		t.Errorf("marshal P-384: err = %v, want ErrBadKey", err)
	}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	s := NewSigner(k)
	now := time.Now()
	for _, sub := range []string{"", "mailto:admin@example.com", "https://example.com/contact"} {
		h, err := s.Header("https://push.example.net:8443", sub, now.Add(12*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(h, "vapid t=") || !strings.HasSuffix(h, ", k="+b64.EncodeToString(s.PublicKey())) {
			t.Fatalf("header = %q", h)
		}
		c, err := ParseAuthorization(h, "")
		if err != nil {
			t.Fatal(err)
		}
		claims, err := Verify(c, "https://push.example.net:8443", now)
		if err != nil {
			t.Fatal(err)
		}
		if claims.Subject != sub || claims.Expiry.Unix() != now.Add(12*time.Hour).Unix() {
			t.Errorf("claims = %+v", claims)
		}
	}
	// The header segment is the canonical one from RFC 8292.
	tok, err := s.Sign("https://push.example.net", "", now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9.") {
		t.Errorf("token header = %q", tok)
	}
	if _, err := s.Sign("", "", now); !errors.Is(err, ErrBadClaims) {
		t.Errorf("empty audience: err = %v", err)
	}
	if _, err := s.Sign("https://a", "admin@example.com", now); !errors.Is(err, ErrBadClaims) {
		t.Errorf("bare email subject: err = %v", err)
	}
	if _, err := s.Sign("https://a", "", time.Unix(0, 0)); !errors.Is(err, ErrBadClaims) {
		t.Errorf("zero exp: err = %v", err)
	}
	if _, err := NewSigner(nil).Sign("https://a", "", now); !errors.Is(err, ErrBadKey) {
		t.Errorf("nil key: err = %v", err)
	}
	if NewSigner(nil).PublicKey() != nil {
		t.Error("nil signer has a public key")
	}
}

// signRaw builds a token from arbitrary header and payload JSON, signing
// with r||s (der=false) or ASN.1 DER (der=true).
func signRaw(t *testing.T, k *ecdsa.PrivateKey, header, payload string, der bool) string {
	t.Helper()
	input := b64.EncodeToString([]byte(header)) + "." + b64.EncodeToString([]byte(payload))
	digest := sha256.Sum256([]byte(input))
	var sig []byte
	if der {
		var err error
		if sig, err = ecdsa.SignASN1(rand.Reader, k, digest[:]); err != nil {
			t.Fatal(err)
		}
	} else {
		r, s, err := ecdsa.Sign(rand.Reader, k, digest[:])
		if err != nil {
			t.Fatal(err)
		}
		sig = make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
	}
	return input + "." + b64.EncodeToString(sig)
}

func TestVerifyRejects(t *testing.T) {
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	other, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pub := NewSigner(k).PublicKey()
	const aud = "https://push.example.net"
	now := time.Unix(1700000000, 0)
	hdr := `{"typ":"JWT","alg":"ES256"}`
	claims := func(extra string) string {
		return fmt.Sprintf(`{"aud":%q,"exp":%d%s}`, aud, now.Add(time.Hour).Unix(), extra)
	}
	good := signRaw(t, k, hdr, claims(`,"sub":"mailto:a@b.c"`), false)
	parts := strings.Split(good, ".")
	sig := mustDecode(t, parts[2])
	flipped := append([]byte{}, sig...)
	flipped[10] ^= 1
	hmacTok := func() string {
		in := b64.EncodeToString([]byte(`{"typ":"JWT","alg":"HS256"}`)) + "." + parts[1]
		m := hmac.New(sha256.New, pub)
		m.Write([]byte(in))
		return in + "." + b64.EncodeToString(m.Sum(nil))
	}()
	// Same signature bytes, but the last character carries non-zero
	// padding bits: a second spelling that must not be accepted.
	last := parts[2][len(parts[2])-1]
	alt := strings.IndexByte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", last) + 1

	tests := []struct {
		name  string
		token string
		key   []byte
		err   error
	}{
		{"good", good, pub, nil},
		{"typ omitted", signRaw(t, k, `{"alg":"ES256"}`, claims(""), false), pub, nil},
		{"typ lower case", signRaw(t, k, `{"typ":"jwt","alg":"ES256"}`, claims(""), false), pub, nil},
		{"https subject", signRaw(t, k, hdr, claims(`,"sub":"https://example.com"`), false), pub, nil},
		{"fractional exp", signRaw(t, k, hdr, fmt.Sprintf(`{"aud":%q,"exp":%d.5}`, aud, now.Unix()+60), false), pub, nil},
		{"exp at 24h+skew", signRaw(t, k, hdr, fmt.Sprintf(`{"aud":%q,"exp":%d}`, aud, now.Add(MaxExpiry+MaxClockSkew).Unix()), false), pub, nil},

		{"tampered signature", parts[0] + "." + parts[1] + "." + b64.EncodeToString(flipped), pub, ErrBadSignature},
		{"tampered payload", parts[0] + "." + b64.EncodeToString([]byte(claims(`,"sub":"mailto:x@b.c"`))) + "." + parts[2], pub, ErrBadSignature},
		{"other key", signRaw(t, other, hdr, claims(""), false), pub, ErrBadSignature},
		{"DER signature", signRaw(t, k, hdr, claims(""), true), pub, ErrBadSignature},
		{"short signature", parts[0] + "." + parts[1] + "." + b64.EncodeToString(sig[:63]), pub, ErrBadSignature},
		{"padded signature", good + "==", pub, ErrBadSignature},
		{"non-canonical signature", good[:len(good)-1] + string("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[alt%64]), pub, ErrBadSignature},
		{"zero signature", parts[0] + "." + parts[1] + "." + b64.EncodeToString(make([]byte, 64)), pub, ErrBadSignature},

		{"alg none", b64.EncodeToString([]byte(`{"alg":"none"}`)) + "." + parts[1] + ".", pub, ErrMalformed},
		{"alg HS256", hmacTok, pub, ErrMalformed},
		{"alg ES384", signRaw(t, k, `{"alg":"ES384"}`, claims(""), false), pub, ErrMalformed},
		{"alg missing", signRaw(t, k, `{"typ":"JWT"}`, claims(""), false), pub, ErrMalformed},
		{"alg wrong case", signRaw(t, k, `{"alg":"es256"}`, claims(""), false), pub, ErrMalformed},
		{"typ JWS", signRaw(t, k, `{"typ":"JOSE","alg":"ES256"}`, claims(""), false), pub, ErrMalformed},
		{"crit", signRaw(t, k, `{"alg":"ES256","crit":["exp"]}`, claims(""), false), pub, ErrMalformed},
		{"header not json", signRaw(t, k, `alg=ES256`, claims(""), false), pub, ErrMalformed},
		{"two parts", parts[0] + "." + parts[1], pub, ErrMalformed},
		{"four parts", good + ".x", pub, ErrMalformed},
		{"oversized", signRaw(t, k, hdr, claims(`,"pad":"`+strings.Repeat("x", MaxTokenSize)+`"`), false), pub, ErrMalformed},

		{"wrong audience", signRaw(t, k, hdr, `{"aud":"https://evil.example","exp":1700003600}`, false), pub, ErrBadAudience},
		{"trailing slash", signRaw(t, k, hdr, `{"aud":"https://push.example.net/","exp":1700003600}`, false), pub, ErrBadAudience},
		{"expired", signRaw(t, k, hdr, fmt.Sprintf(`{"aud":%q,"exp":%d}`, aud, now.Unix()-1), false), pub, ErrExpired},
		{"exp equals now", signRaw(t, k, hdr, fmt.Sprintf(`{"aud":%q,"exp":%d}`, aud, now.Unix()), false), pub, ErrExpired},
		{"exp negative", signRaw(t, k, hdr, fmt.Sprintf(`{"aud":%q,"exp":-1e300}`, aud), false), pub, ErrExpired},
		{"exp too far", signRaw(t, k, hdr, fmt.Sprintf(`{"aud":%q,"exp":%d}`, aud, now.Add(MaxExpiry+MaxClockSkew).Unix()+1), false), pub, ErrExpiryTooFar},
		{"exp huge", signRaw(t, k, hdr, fmt.Sprintf(`{"aud":%q,"exp":1e300}`, aud), false), pub, ErrExpiryTooFar},

		{"missing exp", signRaw(t, k, hdr, fmt.Sprintf(`{"aud":%q}`, aud), false), pub, ErrBadClaims},
		{"string exp", signRaw(t, k, hdr, fmt.Sprintf(`{"aud":%q,"exp":"1700003600"}`, aud), false), pub, ErrBadClaims},
		{"null exp", signRaw(t, k, hdr, fmt.Sprintf(`{"aud":%q,"exp":null}`, aud), false), pub, ErrBadClaims},
		{"missing aud", signRaw(t, k, hdr, `{"exp":1700003600}`, false), pub, ErrBadClaims},
		{"array aud", signRaw(t, k, hdr, fmt.Sprintf(`{"aud":[%q],"exp":1700003600}`, aud), false), pub, ErrBadClaims},
		{"bare email sub", signRaw(t, k, hdr, claims(`,"sub":"a@b.c"`), false), pub, ErrBadClaims},
		{"http sub", signRaw(t, k, hdr, claims(`,"sub":"http://example.com"`), false), pub, ErrBadClaims},
		{"empty mailto sub", signRaw(t, k, hdr, claims(`,"sub":"mailto:"`), false), pub, ErrBadClaims},
		{"number sub", signRaw(t, k, hdr, claims(`,"sub":5`), false), pub, ErrBadClaims},
		{"payload not json", signRaw(t, k, hdr, `hello`, false), pub, ErrBadClaims},
		{"payload array", signRaw(t, k, hdr, `[1]`, false), pub, ErrBadClaims},

		{"no key", good, nil, ErrBadKey},
		{"key off curve", good, append(append([]byte{}, pub[:64]...), pub[64]^1), ErrBadKey},
		{"compressed key", good, append([]byte{2 + pub[64]&1}, pub[1:33]...), ErrBadKey},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Verify(Credentials{Token: tc.token, PublicKey: tc.key}, aud, now)
			if tc.err == nil {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if c.Audience != aud {
					t.Errorf("audience = %q", c.Audience)
				}
				return
			}
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if c != (Claims{}) {
				t.Errorf("claims returned with error: %+v", c)
			}
		})
	}
}

func TestParseAuthorization(t *testing.T) {
	dh := "BNoRDbb84JGm8g5Z5CFxurSqsXWJ11ItfXEWYVLE85Y7CYkDjXsIEc4aqxYaQ1G8BqkXCJ6DPpDrWtdWj_mugHU"
	padded := rfcKey + strings.Repeat("=", (4-len(rfcKey)%4)%4)
	ok := []struct{ auth, ck string }{
		{"vapid t=" + rfcToken + ", k=" + rfcKey, ""},
		{"vapid t=" + rfcToken + ",k=" + rfcKey, "p256ecdsa=ignored"},
		{"VAPID k=" + rfcKey + ", t=" + rfcToken, ""},
		{"Vapid  t = " + rfcToken + " ,  k = " + padded + " ", ""},
		{`vapid t="` + rfcToken + `", k="` + rfcKey + `"`, ""},
		{"vapid t=" + rfcToken + ", k=" + rfcKey + ", x=unknown,", ""},
		{"\tvapid\tt=" + rfcToken + ", k=" + rfcKey, ""},
		{"WebPush " + rfcToken, "p256ecdsa=" + rfcKey},
		{"webpush  " + rfcToken + " ", "dh=" + dh + ";p256ecdsa=" + rfcKey},
		{"WebPush " + rfcToken, "dh=" + dh + ", p256ecdsa=" + padded},
		{"WebPush " + rfcToken, `keyid=p256dh;dh=` + dh + `,P256ECDSA="` + rfcKey + `"`},
		{"Bearer " + rfcToken, "p256ecdsa=" + rfcKey + ";dh=" + dh},
	}
	for _, tc := range ok {
		c, err := ParseAuthorization(tc.auth, tc.ck)
		if err != nil {
			t.Errorf("ParseAuthorization(%.40q, %.30q): %v", tc.auth, tc.ck, err)
			continue
		}
		if c.Token != rfcToken || b64.EncodeToString(c.PublicKey) != rfcKey {
			t.Errorf("ParseAuthorization(%.40q) = %+v", tc.auth, c)
		}
	}

	offCurve := mustDecode(t, rfcKey)
	offCurve[64] ^= 1
	bad := []struct {
		name, auth, ck string
		err            error
	}{
		{"empty", "", "", ErrNoAuthorization},
		{"spaces", "   ", "p256ecdsa=" + rfcKey, ErrNoAuthorization},
		{"scheme only", "vapid", "", ErrMalformed},
		{"missing k", "vapid t=" + rfcToken, "p256ecdsa=" + rfcKey, ErrMalformed},
		{"missing t", "vapid k=" + rfcKey, "", ErrMalformed},
		{"duplicate t", "vapid t=" + rfcToken + ", t=" + rfcToken + ", k=" + rfcKey, "", ErrMalformed},
		{"duplicate k", "vapid t=" + rfcToken + ", k=" + rfcKey + ", k=" + rfcKey, "", ErrMalformed},
		{"param without value", "vapid t=" + rfcToken + ", k", "", ErrMalformed},
		{"semicolons", "vapid t=" + rfcToken + "; k=" + rfcKey, "", ErrMalformed},
		{"unknown scheme", "Basic dXNlcjpwYXNz", "", ErrMalformed},
		{"legacy without crypto-key", "WebPush " + rfcToken, "", ErrMalformed},
		{"legacy with dh only", "WebPush " + rfcToken, "dh=" + dh, ErrMalformed},
		{"legacy without token", "WebPush", "p256ecdsa=" + rfcKey, ErrMalformed},
		{"token with space", "WebPush " + rfcToken + " x", "p256ecdsa=" + rfcKey, ErrMalformed},
		{"two-part token", "vapid t=a.b, k=" + rfcKey, "", ErrMalformed},
		{"empty segment", "vapid t=a..c, k=" + rfcKey, "", ErrMalformed},
		{"padded segment", "vapid t=a.b.c==, k=" + rfcKey, "", ErrMalformed},
		{"oversized token", "vapid t=a.b." + strings.Repeat("c", MaxTokenSize) + ", k=" + rfcKey, "", ErrMalformed},
		{"oversized header", "vapid t=" + rfcToken + ", k=" + rfcKey + ", x=" + strings.Repeat("y", maxHeaderSize), "", ErrMalformed},
		{"key not base64", "vapid t=" + rfcToken + ", k=!!!", "", ErrBadKey},
		{"key too short", "vapid t=" + rfcToken + ", k=" + rfcKey[:84], "", ErrBadKey},
		{"key off curve", "vapid t=" + rfcToken + ", k=" + b64.EncodeToString(offCurve), "", ErrBadKey},
		{"key compressed", "vapid t=" + rfcToken + ", k=" + b64.EncodeToString(append([]byte{2}, offCurve[1:33]...)), "", ErrBadKey},
		{"key standard base64", "vapid t=" + rfcToken + ", k=" + base64.StdEncoding.EncodeToString(mustDecode(t, rfcKey)), "", ErrBadKey},
		{"legacy bad key", "WebPush " + rfcToken, "p256ecdsa=AAAA", ErrBadKey},
		{"empty key", "vapid t=" + rfcToken + ", k=", "", ErrBadKey},
	}
	for _, tc := range bad {
		c, err := ParseAuthorization(tc.auth, tc.ck)
		if !errors.Is(err, tc.err) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.err)
		}
		if err != nil && (c.Token != "" || c.PublicKey != nil) {
			t.Errorf("%s: credentials returned with error", tc.name)
		}
	}
}
