package vapid

import (
	"errors"
	"strings"
	"testing"
)

func FuzzParseAuthorization(f *testing.F) {
	dh := "BNoRDbb84JGm8g5Z5CFxurSqsXWJ11ItfXEWYVLE85Y7CYkDjXsIEc4aqxYaQ1G8BqkXCJ6DPpDrWtdWj_mugHU"
	seeds := [][2]string{
		{"vapid t=" + rfcToken + ", k=" + rfcKey, ""},
		{"vapid t=" + nodeToken + ", k=" + nodeKey, ""},
		{"VAPID k=" + rfcKey + ",t=" + rfcToken, "p256ecdsa=" + nodeKey},
		{`vapid t="` + rfcToken + `", k="` + rfcKey + `="`, ""},
		{"WebPush " + rfcToken, "p256ecdsa=" + rfcKey},
		{"WebPush " + rfcToken, "dh=" + dh + ";p256ecdsa=" + rfcKey},
		{"Bearer " + rfcToken, "keyid=p256dh;dh=" + dh + ",p256ecdsa=" + rfcKey},
		{"Basic dXNlcjpwYXNz", ""},
		{"", ""},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, auth, ck string) {
		c, err := ParseAuthorization(auth, ck)
		if err != nil {
			if !errors.Is(err, ErrNoAuthorization) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrBadKey) {
				t.Fatalf("unclassified error: %v", err)
			}
			if c.Token != "" || c.PublicKey != nil {
				t.Fatal("credentials returned with error")
			}
			return
		}
		if len(c.PublicKey) != publicKeySize || c.PublicKey[0] != 4 {
			t.Fatalf("accepted key %x", c.PublicKey)
		}
		if _, err := parsePublicKey(c.PublicKey); err != nil {
			t.Fatalf("accepted invalid key: %v", err)
		}
		if len(c.Token) > MaxTokenSize || strings.Count(c.Token, ".") != 2 || !strings.Contains(auth, c.Token) {
			t.Fatalf("accepted token %q", c.Token)
		}
	})
}

func FuzzVerify(f *testing.F) {
	key := mustDecode(f, rfcKey)
	for _, s := range []string{
		rfcToken,
		nodeToken,
		rfcToken + "=",
		strings.TrimSuffix(rfcToken, "A") + "B",
		"eyJhbGciOiJub25lIn0.eyJhdWQiOiJodHRwczovL3B1c2guZXhhbXBsZS5uZXQiLCJleHAiOjE0NTM1MjM3Njh9.",
		"a.b.c",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, token string) {
		c, err := Verify(Credentials{Token: token, PublicKey: key}, rfcAudience, rfcNow)
		if err != nil {
			classes := []error{ErrMalformed, ErrBadKey, ErrBadSignature, ErrBadAudience, ErrExpired, ErrExpiryTooFar, ErrBadClaims}
			for _, s := range classes {
				if errors.Is(err, s) {
					return
				}
			}
			t.Fatalf("unclassified error: %v", err)
		}
		// Nothing but the genuine token may verify: segment encodings are
		// canonical, so any change to it breaks the signature.
		if token != rfcToken {
			t.Fatalf("forged token verified: %q -> %+v", token, c)
		}
	})
}
