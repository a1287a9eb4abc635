package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/ece"
)

// rawAES128GCM is a body of n bytes with a well-formed aes128gcm header
// (rs 8192, a 65-byte key id) and random records: the relay checks the
// header, never decrypts, so it carries as much as the sender sends.
func rawAES128GCM(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	binary.BigEndian.PutUint32(b[16:], 8192)
	b[20] = 65
	if _, _, _, err := ece.ParseAES128GCMHeader(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// Bodies up to autopush's 5,630 bytes are taken and reach the device
// whole; one byte more is 413 errno 104. max_data_bytes changes the limit.
func TestE2EBodyLimit(t *testing.T) {
	p := startRelay(t, t.TempDir())
	d := connect(t, p, "")
	s := d.register("")
	body := rawAES128GCM(t, 5630)
	r := do(t, "POST", s.endpoint, body, map[string]string{"TTL": "60", "Content-Encoding": "aes128gcm"})
	if r.code != 201 {
		t.Fatalf("5630-byte body: %d %s", r.code, r.body)
	}
	n, err := d.c.Next(time.Now().Add(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := b64url(n.Data); err != nil || string(got) != string(body) {
		t.Fatalf("device got %d bytes (%v), want the 5630 sent", len(got), err)
	}
	d.c.Ack(n)
	r = do(t, "POST", s.endpoint, rawAES128GCM(t, 5631), map[string]string{"TTL": "60", "Content-Encoding": "aes128gcm"})
	if r.code != 413 || r.errno != 104 {
		t.Fatalf("5631-byte body: %d %s", r.code, r.body)
	}
	p.stop()

	p = startRelay(t, t.TempDir(), "--max-data-bytes", "4096")
	d = connect(t, p, "")
	s = d.register("")
	if r := do(t, "POST", s.endpoint, rawAES128GCM(t, 4097), map[string]string{"TTL": "60", "Content-Encoding": "aes128gcm"}); r.code != 413 || r.errno != 104 {
		t.Fatalf("4097 bytes with max_data_bytes 4096: %d %s", r.code, r.body)
	}
	if r := do(t, "POST", s.endpoint, rawAES128GCM(t, 4096), map[string]string{"TTL": "60", "Content-Encoding": "aes128gcm"}); r.code != 201 {
		t.Fatalf("4096 bytes with max_data_bytes 4096: %d %s", r.code, r.body)
	}
}

// The device listener: a WebSocket at the root, autopush's health paths,
// a JSON 404 for every other path (autopush's /push/{uaid} and
// /notif/{uaid} live on an internal port), 426 only for a plain GET of /.
func TestE2EDeviceListenerPaths(t *testing.T) {
	p := startRelay(t, t.TempDir())
	base := "http://" + strings.TrimSuffix(strings.TrimPrefix(p.Device, "ws://"), "/")
	get := func(method, path string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body
	}
	if code, _ := get("GET", "/"); code != 426 {
		t.Fatalf("plain GET / = %d", code)
	}
	for _, path := range []string{"/push/3f0ad4e3a8d84c1a9f4e3f0ad4e3a8d8", "/notif/3f0ad4e3a8d84c1a9f4e3f0ad4e3a8d8", "/wpush/v1/x", "/favicon.ico", "/metrics"} {
		if code, body := get("GET", path); code != 404 || body["errno"] != 102.0 || body["code"] != 404.0 {
			t.Errorf("GET %s = %d %v", path, code, body)
		}
	}
	if code, body := get("PUT", "/push/3f0ad4e3a8d84c1a9f4e3f0ad4e3a8d8"); code != 404 {
		t.Errorf("PUT /push = %d %v", code, body)
	}
	if code, _ := get("POST", "/"); code != 405 {
		t.Errorf("POST / = %d", code)
	}
	code, body := get("GET", "/health")
	if code != 200 || body["status"] != "OK" || body["version"] == "" {
		t.Errorf("GET /health = %d %v", code, body)
	}
	for _, path := range []string{"/__heartbeat__", "/__lbheartbeat__", "/status", "/__version__"} {
		if code, _ := get("GET", path); code != 200 {
			t.Errorf("GET %s = %d", path, code)
		}
	}
	// Devices still connect at the root.
	d := connect(t, p, "")
	d.register("")
}

// A sender that quotes and pads its aesgcm parameters (the draft's
// examples do, and so did early libraries): the device gets autopush's
// form and still decrypts.
func TestE2EAESGCMHeadersNormalized(t *testing.T) {
	p := startRelay(t, t.TempDir())
	d := connect(t, p, "")
	s := d.register("")
	body, encHdr, ckHdr, err := ece.EncryptAESGCM([]byte("padded"), s.keys.PublicKey(), s.keys.Auth)
	if err != nil {
		t.Fatal(err)
	}
	padded := func(hdr, name string) string {
		raw, err := ece.DecodeKey(ece.ParseHeaderParams(hdr)[name])
		if err != nil {
			t.Fatal(err)
		}
		return name + `="` + base64.URLEncoding.EncodeToString(raw) + `"`
	}
	enc := `keyid="p256dh";` + padded(encHdr, "salt")
	ck := `keyid="p256dh";` + padded(ckHdr, "dh")
	if !strings.Contains(enc, `=="`) || !strings.Contains(ck, `="`) {
		t.Fatalf("test headers carry no padding: %s %s", enc, ck)
	}
	if r := do(t, "POST", s.endpoint, body, map[string]string{"TTL": "60", "Content-Encoding": "aesgcm", "Encryption": enc, "Crypto-Key": ck}); r.code != 201 {
		t.Fatalf("POST: %d %s", r.code, r.body)
	}
	n, err := d.c.Next(time.Now().Add(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	wantEnc := "keyid=p256dh;salt=" + ece.ParseHeaderParams(encHdr)["salt"]
	wantCK := "keyid=p256dh;dh=" + ece.ParseHeaderParams(ckHdr)["dh"]
	if n.Headers == nil || n.Headers.Encryption != wantEnc || n.Headers.CryptoKey != wantCK {
		t.Fatalf("device got %+v, want %q and %q", n.Headers, wantEnc, wantCK)
	}
	raw, _ := b64url(n.Data)
	if plain, err := ece.DecryptAESGCM(raw, s.keys, n.Headers.Encryption, n.Headers.CryptoKey); err != nil || string(plain) != "padded" {
		t.Fatalf("decrypt: %q %v", plain, err)
	}
}
