package endpoint

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/push"
)

func TestParseTTL(t *testing.T) {
	cases := []struct {
		name   string
		values []string
		want   time.Duration
		errno  int
	}{
		{"absent", nil, 0, 111},
		{"empty", []string{""}, 0, 111},
		{"blank", []string{"   "}, 0, 111},
		{"zero", []string{"0"}, 0, 0},
		{"a minute", []string{"60"}, time.Minute, 0},
		{"padded", []string{" 86400 "}, 24 * time.Hour, 0},
		{"thirty days", []string{"2592000"}, MaxTTL, 0},
		{"over thirty days is capped", []string{"2592001"}, MaxTTL, 0},
		{"a year is capped", []string{"31536000"}, MaxTTL, 0},
		{"beyond int64 is capped", []string{"99999999999999999999999999"}, MaxTTL, 0},
		{"negative", []string{"-1"}, 0, 114},
		{"hugely negative", []string{"-99999999999999999999999999"}, 0, 114},
		{"fraction", []string{"1.5"}, 0, 114},
		{"unit", []string{"60s"}, 0, 114},
		{"hex", []string{"0x3c"}, 0, 114},
		{"word", []string{"forever"}, 0, 114},
		{"list in one header", []string{"60, 120"}, 0, 114},
		{"two headers", []string{"60", "60"}, 0, 114},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, aerr := ParseTTL(c.values)
			if c.errno != 0 {
				if aerr == nil || aerr.Errno != c.errno || aerr.Code != 400 {
					t.Fatalf("ParseTTL(%q) = %v, %v; want 400 errno %d", c.values, got, aerr, c.errno)
				}
				return
			}
			if aerr != nil || got != c.want {
				t.Fatalf("ParseTTL(%q) = %v, %v; want %v", c.values, got, aerr, c.want)
			}
		})
	}
}

func TestParseTopic(t *testing.T) {
	ok := []string{"", "a", "match-score_1", "ABCxyz0189-_", strings.Repeat("Z", 32)}
	for _, s := range ok {
		if got, aerr := ParseTopic(s); aerr != nil || got != s {
			t.Errorf("ParseTopic(%q) = %q, %v", s, got, aerr)
		}
	}
	bad := []string{strings.Repeat("a", 33), "a b", "a=", "a+b", "a/b", "caf\u00e9", "a.b", "tab\there", "line\n"}
	for _, s := range bad {
		if _, aerr := ParseTopic(s); aerr == nil || aerr.Code != 400 || aerr.Errno != 113 {
			t.Errorf("ParseTopic(%q) = %v, want 400 errno 113", s, aerr)
		}
	}
}

func TestParseUrgency(t *testing.T) {
	cases := map[string]push.Urgency{
		"":         push.UrgencyNormal,
		"very-low": push.UrgencyVeryLow,
		"low":      push.UrgencyLow,
		"normal":   push.UrgencyNormal,
		"high":     push.UrgencyHigh,
		"HIGH":     push.UrgencyHigh,
		"Very-Low": push.UrgencyVeryLow,
		" low ":    push.UrgencyLow,
	}
	for s, want := range cases {
		if got, aerr := ParseUrgency(s); aerr != nil || got != want {
			t.Errorf("ParseUrgency(%q) = %v, %v; want %v", s, got, aerr, want)
		}
	}
	for _, s := range []string{"urgent", "very low", "verylow", "critical", "1", "high,low"} {
		if _, aerr := ParseUrgency(s); aerr == nil || aerr.Code != 400 || aerr.Errno != 115 {
			t.Errorf("ParseUrgency(%q) = %v, want 400 errno 115", s, aerr)
		}
	}
}

func TestParseSimplePushVersion(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	cases := []struct {
		name, body, query string
		want              uint64
		errno             int
	}{
		{"body", "version=5", "", 5, 0},
		{"query", "", "version=6", 6, 0},
		{"body wins over query", "version=7", "version=8", 7, 0},
		{"body without version falls back to query", "other=1", "version=9", 9, 0},
		{"body with whitespace", "  version=10\r\n", "", 10, 0},
		{"no version: now", "", "", uint64(now.Unix()), 0},
		{"unrelated form: now", "foo=bar", "", uint64(now.Unix()), 0},
		{"largest", "version=9223372036854775807", "", 9223372036854775807, 0},
		{"beyond 63 bits", "version=9223372036854775808", "", 0, 116},
		{"zero", "version=0", "", 0, 116},
		{"negative", "version=-1", "", 0, 116},
		{"not a number", "version=abc", "", 0, 116},
		{"fraction", "version=1.5", "", 0, 116},
		{"bad query", "", "version=x", 0, 116},
		{"not a form", "%zz", "", 0, 116},
		{"semicolon", "version=5;x=1", "", 0, 116},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, aerr := ParseSimplePushVersion(c.body, c.query, now)
			if c.errno != 0 {
				if aerr == nil || aerr.Errno != c.errno || aerr.Code != 400 {
					t.Fatalf("got %d, %v; want 400 errno %d", got, aerr, c.errno)
				}
				return
			}
			if aerr != nil || got != c.want {
				t.Fatalf("got %d, %v; want %d", got, aerr, c.want)
			}
		})
	}
}

// The content-coding rules, on the request headers and body as an app
// server sends them.
func TestCheckContent(t *testing.T) {
	sub, err := ece.NewSubscription()
	if err != nil {
		t.Fatal(err)
	}
	aes128, err := ece.Encrypt([]byte("x"), sub.PublicKey(), sub.Auth)
	if err != nil {
		t.Fatal(err)
	}
	aesgcm, encHdr, ckHdr, err := ece.EncryptAESGCM([]byte("x"), sub.PublicKey(), sub.Auth)
	if err != nil {
		t.Fatal(err)
	}
	vapidKey := "p256ecdsa=BA1Hxzyi1RUM1b5wjxsn7nGxAszw2u61m164i3MrAIxHF6YK5h4SDYic-dRuU_RCPCfA5aq9ojSwk5Y2EmClBPs"
	cases := []struct {
		name      string
		hdr       map[string]string
		body      []byte
		wantEnc   string
		wantErrno int
	}{
		{"aes128gcm", map[string]string{"Content-Encoding": "aes128gcm"}, aes128, "aes128gcm", 0},
		{"aes128gcm upper case", map[string]string{"Content-Encoding": " AES128GCM "}, aes128, "aes128gcm", 0},
		{"aes128gcm with legacy VAPID key", map[string]string{"Content-Encoding": "aes128gcm", "Crypto-Key": vapidKey}, aes128, "aes128gcm", 0},
		{"aes128gcm with Encryption salt", map[string]string{"Content-Encoding": "aes128gcm", "Encryption": "salt=AAAAAAAAAAAAAAAAAAAAAA"}, aes128, "", 110},
		{"aes128gcm with Crypto-Key dh", map[string]string{"Content-Encoding": "aes128gcm", "Crypto-Key": ckHdr}, aes128, "", 110},
		{"aes128gcm body without header", map[string]string{"Content-Encoding": "aes128gcm"}, []byte("short"), "", 110},
		{"aesgcm", map[string]string{"Content-Encoding": "aesgcm", "Encryption": encHdr, "Crypto-Key": ckHdr}, aesgcm, "aesgcm", 0},
		{"aesgcm dh plus p256ecdsa, semicolon", map[string]string{"Content-Encoding": "aesgcm", "Encryption": encHdr, "Crypto-Key": ckHdr + ";" + vapidKey}, aesgcm, "aesgcm", 0},
		{"aesgcm p256ecdsa first, comma", map[string]string{"Content-Encoding": "aesgcm", "Encryption": encHdr, "Crypto-Key": vapidKey + ", " + ckHdr}, aesgcm, "aesgcm", 0},
		{"aesgcm without salt", map[string]string{"Content-Encoding": "aesgcm", "Crypto-Key": ckHdr}, aesgcm, "", 101},
		{"aesgcm without dh", map[string]string{"Content-Encoding": "aesgcm", "Encryption": encHdr, "Crypto-Key": vapidKey}, aesgcm, "", 101},
		{"aesgcm without Crypto-Key", map[string]string{"Content-Encoding": "aesgcm", "Encryption": encHdr}, aesgcm, "", 101},
		{"no Content-Encoding", nil, aes128, "", 101},
		{"gzip", map[string]string{"Content-Encoding": "gzip"}, aes128, "", 110},
		{"draft aesgcm128", map[string]string{"Content-Encoding": "aesgcm128", "Encryption": encHdr, "Crypto-Key": ckHdr}, aesgcm, "", 110},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range c.hdr {
				h.Set(k, v)
			}
			enc, aerr := checkContent(h.Get, c.body)
			if c.wantErrno != 0 {
				if aerr == nil || aerr.Errno != c.wantErrno || aerr.Code != 400 {
					t.Fatalf("got %q, %v; want 400 errno %d", enc, aerr, c.wantErrno)
				}
				return
			}
			if aerr != nil || enc != c.wantEnc {
				t.Fatalf("got %q, %v; want %q", enc, aerr, c.wantEnc)
			}
		})
	}
}
