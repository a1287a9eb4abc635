package endpoint

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/vapid"
)

// The byte strings real aesgcm senders put in Encryption and Crypto-Key,
// and what autopush hands the device for each.
func TestNormalizeCryptoHeader(t *testing.T) {
	for _, c := range []struct{ name, in, want string }{
		// autoendpoint's own test (notification_headers.rs strip_headers).
		{"autopush test encryption", `salt="foo"`, `salt=foo`},
		{"autopush test crypto-key", `keyid="p256dh";dh="deadbeef=="`, `keyid=p256dh;dh=deadbeef`},
		// The example.
		{"quoted padded salt", `keyid="p256dh";salt="abc=="`, `keyid=p256dh;salt=abc`},
		// web-push from npm (3.6.7, contentEncoding 'aesgcm'):
		// unpadded base64url, the VAPID key appended with ';'. Already in
		// autopush's form, so unchanged.
		{"web-push npm encryption", `salt=Uv8Tq6ImtUObbpzi5RxGDQ`, `salt=Uv8Tq6ImtUObbpzi5RxGDQ`},
		{"web-push npm crypto-key",
			`dh=BLgh7zfk2EvFBS6lfBTLspOi6STq4zvTZqFLK5PW1Ln4J6vKj7mStlsAmhexgDc2pVM3RjTSzOcd0AEz9MuGO8U;p256ecdsa=BKn7JbjRVzU5UJx0ISjQjRvhbMFUcDFx5J11TdwUNq7uiCi1WwSZYoRPpsjJ7AeG0c9LRlYTLlIXTSYP-tpDnck`,
			`dh=BLgh7zfk2EvFBS6lfBTLspOi6STq4zvTZqFLK5PW1Ln4J6vKj7mStlsAmhexgDc2pVM3RjTSzOcd0AEz9MuGO8U;p256ecdsa=BKn7JbjRVzU5UJx0ISjQjRvhbMFUcDFx5J11TdwUNq7uiCi1WwSZYoRPpsjJ7AeG0c9LRlYTLlIXTSYP-tpDnck`},
		// draft-ietf-webpush-encryption-04's example: quoted keyid and values.
		{"draft-04 encryption", `keyid="p256dh";salt="lngarbyKfMoi9Z75xYXmkg"`, `keyid=p256dh;salt=lngarbyKfMoi9Z75xYXmkg`},
		{"draft-04 crypto-key",
			`keyid="p256dh";dh="BNoRDbb84JGm8g5Z5CFxurSqsXWJ11ItfXEWYVLE85Y7CYkDjXsIEc4aqxYaQ1G8BqkXCJ6DPpDrWtdWj_mugHU"`,
			`keyid=p256dh;dh=BNoRDbb84JGm8g5Z5CFxurSqsXWJ11ItfXEWYVLE85Y7CYkDjXsIEc4aqxYaQ1G8BqkXCJ6DPpDrWtdWj_mugHU`},
		// Senders that pad (standard base64url with '='), values separated
		// by ',' as the draft allows, and the VAPID key padded too.
		{"padded salt", `salt=Q1k6WUD2WHbbKn_IAl2_OA==`, `salt=Q1k6WUD2WHbbKn_IAl2_OA`},
		{"padded dh and p256ecdsa, comma",
			`dh=BNoRDbb84JGm8g5Z5CFxurSqsXWJ11ItfXEWYVLE85Y7CYkDjXsIEc4aqxYaQ1G8BqkXCJ6DPpDrWtdWj_mugHU=,p256ecdsa=BA1Hxzyi1RUM1b5wjxsn7nGxAszw2u61m164i3MrAIxHF6YK5h4SDYic-dRuU_RCPCfA5aq9ojSwk5Y2EmClBPs=`,
			`dh=BNoRDbb84JGm8g5Z5CFxurSqsXWJ11ItfXEWYVLE85Y7CYkDjXsIEc4aqxYaQ1G8BqkXCJ6DPpDrWtdWj_mugHU,p256ecdsa=BA1Hxzyi1RUM1b5wjxsn7nGxAszw2u61m164i3MrAIxHF6YK5h4SDYic-dRuU_RCPCfA5aq9ojSwk5Y2EmClBPs`},
		// Spaces stay; padding followed by a space is not at a value's end
		// for autopush's pattern, so it stays too.
		{"spaces kept", `keyid="p256dh"; salt="abc==";rs=4096`, `keyid=p256dh; salt=abc;rs=4096`},
		{"padding before a space", `salt="abc=" ; rs=4096`, `salt=abc= ; rs=4096`},
		{"rs and keyid untouched", `salt=abc;rs=24`, `salt=abc;rs=24`},
		{"empty", ``, ``},
	} {
		if got := normalizeCryptoHeader(c.in); got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, got, c.want)
		}
	}
}

// A sender's quoted, padded aesgcm headers reach the device as autopush
// sends them, the device still decrypts, and VAPID (which reads the
// request's own Crypto-Key) still verifies.
func TestAESGCMHeadersReachDeviceNormalized(t *testing.T) {
	e := newEnv(t, nil)
	priv, _ := vapid.GenerateKey()
	signer := vapid.NewSigner(priv)
	d := e.connect("")
	s := d.subscribe(signer.PublicKey())
	jwt, err := signer.Sign(e.base, "mailto:ops@example.net", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	body, encHdr, ckHdr, err := ece.EncryptAESGCM([]byte("quoted"), s.keys.PublicKey(), s.keys.Auth)
	if err != nil {
		t.Fatal(err)
	}
	// Re-encode the sender's values as a padding, quoting sender would.
	pad := func(hdr, name string) string {
		v := ece.ParseHeaderParams(hdr)[name]
		raw, err := ece.DecodeKey(v)
		if err != nil {
			t.Fatalf("%s in %q: %v", name, hdr, err)
		}
		return name + `="` + base64.URLEncoding.EncodeToString(raw) + `"`
	}
	encQuoted := `keyid="p256dh";` + pad(encHdr, "salt")
	ckQuoted := `keyid="p256dh";` + pad(ckHdr, "dh") + `;p256ecdsa="` + base64.URLEncoding.EncodeToString(signer.PublicKey()) + `"`
	if !strings.Contains(encQuoted+ckQuoted, `=="`) && !strings.Contains(encQuoted+ckQuoted, `="`) {
		t.Fatal("the test's headers carry no padding")
	}
	r := e.do("POST", s.endpoint, body, map[string]string{
		"TTL": "60", "Content-Encoding": "aesgcm", "Encryption": encQuoted,
		"Crypto-Key": ckQuoted, "Authorization": "WebPush " + jwt,
	})
	if r.code != 201 {
		t.Fatalf("POST: %d %s", r.code, r.body)
	}
	n, err := d.c.Next(time.Now().Add(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	wantEnc := normalizeCryptoHeader(encQuoted)
	wantCK := normalizeCryptoHeader(ckQuoted)
	if n.Headers == nil || n.Headers.Encryption != wantEnc || n.Headers.CryptoKey != wantCK ||
		strings.ContainsAny(wantEnc+wantCK, `"`) || strings.HasSuffix(wantEnc, "=") {
		t.Fatalf("device got headers %+v, want %q and %q", n.Headers, wantEnc, wantCK)
	}
	data, _ := ece.DecodeKey(n.Data)
	if plain, err := ece.DecryptAESGCM(data, s.keys, n.Headers.Encryption, n.Headers.CryptoKey); err != nil || string(plain) != "quoted" {
		t.Fatalf("device decrypts %q, %v", plain, err)
	}
	d.c.Ack(n)

	// Without a body nothing about encryption reaches the device, whatever
	// headers were sent.
	r = e.do("POST", s.endpoint, nil, map[string]string{
		"TTL": "60", "Content-Encoding": "aesgcm", "Encryption": encQuoted,
		"Crypto-Key": ckQuoted, "Authorization": "WebPush " + jwt,
	})
	if r.code != 201 {
		t.Fatalf("POST without a body: %d %s", r.code, r.body)
	}
	if n, err = d.c.Next(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if n.Headers != nil || n.Data != "" {
		t.Fatalf("a message without a body came with %+v %q", n.Headers, n.Data)
	}
}
