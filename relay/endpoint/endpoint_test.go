package endpoint

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/vapid"
)

var aes128 = map[string]string{"Content-Encoding": "aes128gcm"}

func with(a map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// A 201 names the message (Location, which DELETE accepts) and the TTL the
// relay will keep it for, capped at 30 days.
func TestCreatedHeaders(t *testing.T) {
	e := newEnv(t, nil)
	d := e.connect("")
	s := d.subscribe(nil)
	d.c.Close()
	body := s.encrypt(t, "x")

	cases := []struct{ ttl, want string }{
		{"60", "60"},
		{"0", "0"},
		{"2592000", "2592000"},
		{"2592001", "2592000"},
		{"315360000", "2592000"},
		{"99999999999999999999", "2592000"},
	}
	for _, c := range cases {
		r := e.do("POST", s.endpoint, body, with(aes128, "TTL", c.ttl))
		if r.code != 201 {
			t.Fatalf("TTL %s: %d %s", c.ttl, r.code, r.body)
		}
		if got := r.header.Get("TTL"); got != c.want {
			t.Errorf("TTL %s: response TTL %q, want %q", c.ttl, got, c.want)
		}
		if loc := r.header.Get("Location"); !strings.HasPrefix(loc, e.base+"/m/") || len(loc) <= len(e.base+"/m/") {
			t.Errorf("TTL %s: Location %q", c.ttl, loc)
		}
	}
	// Five stored (TTL 0 to an offline device is not), each withdrawable
	// through its Location.
	if w := e.waiting(); w != 5 {
		t.Fatalf("waiting = %d, want 5", w)
	}
	r := e.do("POST", s.endpoint, body, with(aes128, "TTL", "60"))
	if del := e.do("DELETE", r.header.Get("Location"), nil, nil); del.code != 204 {
		t.Fatalf("DELETE Location: %d %s", del.code, del.body)
	}
	if w := e.waiting(); w != 5 {
		t.Fatalf("waiting = %d after DELETE, want 5", w)
	}
	// The stored message expires when the capped TTL says.
	u, _ := push.ParseUAID(d.c.UAID)
	msgs, err := e.st.Messages(u, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	last := msgs[len(msgs)-1]
	if last.TTL != MaxTTL {
		t.Fatalf("stored TTL %s, want %s", last.TTL, MaxTTL)
	}
}

// The unversioned path is v1; the stored message keeps Topic, Urgency and
// the content headers.
func TestUnversionedPathAndStoredFields(t *testing.T) {
	e := newEnv(t, nil)
	d := e.connect("")
	s := d.subscribe(nil)
	d.c.Close()
	tok := s.endpoint[strings.LastIndex(s.endpoint, "/")+1:]
	body, encHdr, ckHdr, err := ece.EncryptAESGCM([]byte("legacy"), s.keys.PublicKey(), s.keys.Auth)
	if err != nil {
		t.Fatal(err)
	}
	r := e.do("POST", e.base+"/wpush/"+tok, body, map[string]string{
		"TTL": "120", "Topic": "inbox", "Urgency": "HIGH",
		"Content-Encoding": "aesgcm", "Encryption": encHdr, "Crypto-Key": ckHdr,
	})
	if r.code != 201 {
		t.Fatalf("POST /wpush/{token}: %d %s", r.code, r.body)
	}
	u, _ := push.ParseUAID(d.c.UAID)
	msgs, _ := e.st.Messages(u, 0, 0)
	if len(msgs) != 1 {
		t.Fatalf("%d messages stored", len(msgs))
	}
	m := msgs[0]
	if m.Topic != "inbox" || m.Urgency != push.UrgencyHigh || m.TTL != 2*time.Minute ||
		m.Encoding != "aesgcm" || m.Encryption != encHdr || m.CryptoKey != ckHdr || !bytes.Equal(m.Data, body) {
		t.Fatalf("stored %+v", m)
	}
	// An aes128gcm message keeps no Encryption/Crypto-Key even when a
	// legacy VAPID key was sent in Crypto-Key.
	r = e.do("POST", s.endpoint, s.encrypt(t, "new"), map[string]string{
		"TTL": "60", "Content-Encoding": "aes128gcm", "Crypto-Key": "p256ecdsa=abc",
	})
	if r.code != 201 {
		t.Fatalf("aes128gcm: %d %s", r.code, r.body)
	}
	msgs, _ = e.st.Messages(u, 0, 0)
	if m := msgs[len(msgs)-1]; m.Encoding != "aes128gcm" || m.CryptoKey != "" || m.Encryption != "" {
		t.Fatalf("stored %+v", m)
	}
}

// Content-coding and header errors over HTTP: status, errno, JSON body, and
// nothing stored.
func TestRequestErrors(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxData = 200 })
	d := e.connect("")
	s := d.subscribe(nil)
	d.c.Close()
	good := s.encrypt(t, "x")
	_, encHdr, ckHdr, _ := ece.EncryptAESGCM([]byte("x"), s.keys.PublicKey(), s.keys.Auth)
	std := with(aes128, "TTL", "60")
	cases := []struct {
		name       string
		method     string
		path       string
		body       []byte
		hdr        map[string]string
		code       int
		errno      int
		chunked    bool
		multiTTL   bool
		wantHeader [2]string
	}{
		{name: "aes128gcm with Encryption salt", method: "POST", body: good, hdr: with(std, "Encryption", encHdr), code: 400, errno: 110},
		{name: "aes128gcm with Crypto-Key dh", method: "POST", body: good, hdr: with(std, "Crypto-Key", ckHdr), code: 400, errno: 110},
		{name: "aesgcm without dh", method: "POST", body: good, hdr: with(std, "Content-Encoding", "aesgcm", "Encryption", encHdr), code: 400, errno: 101},
		{name: "two TTL headers", method: "POST", body: good, hdr: std, multiTTL: true, code: 400, errno: 114},
		{name: "over MaxData by Content-Length", method: "POST", body: make([]byte, 201), hdr: std, code: 413, errno: 104},
		{name: "over MaxData chunked", method: "POST", body: make([]byte, 201), hdr: std, chunked: true, code: 413, errno: 104},
		{name: "version 0", method: "POST", path: "/wpush/v0/", body: good, hdr: std, code: 404, errno: 102},
		{name: "version without v", method: "POST", path: "/wpush/1/", body: good, hdr: std, code: 404, errno: 102},
		{name: "GET an endpoint", method: "GET", body: nil, hdr: nil, code: 404, errno: 102},
		{name: "PUT a Web Push endpoint", method: "PUT", body: good, hdr: std, code: 404, errno: 102},
		{name: "DELETE garbage id", method: "DELETE", path: "/m/", body: nil, code: 404, errno: 102},
		{name: "root", method: "GET", path: "/", code: 404, errno: 102},
	}
	tok := s.endpoint[strings.LastIndex(s.endpoint, "/")+1:]
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			url := s.endpoint
			switch {
			case c.path == "/":
				url = e.base + "/"
			case c.path == "/m/":
				url = e.base + "/m/" + tok
			case c.path != "":
				url = e.base + c.path + tok
			}
			var body io.Reader = bytes.NewReader(c.body)
			if c.chunked {
				body = io.MultiReader(bytes.NewReader(c.body)) // unknown length: chunked
			}
			req, _ := http.NewRequest(c.method, url, body)
			for k, v := range c.hdr {
				req.Header.Set(k, v)
			}
			if c.multiTTL {
				req.Header.Add("TTL", "120")
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.code || !strings.Contains(string(b), `"errno":`+strconv.Itoa(c.errno)) {
				t.Fatalf("%d %s, want %d errno %d", resp.StatusCode, b, c.code, c.errno)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Fatalf("Content-Type %q", ct)
			}
		})
	}
	if w := e.waiting(); w != 0 {
		t.Fatalf("refused requests stored %d messages", w)
	}
}

// A push to an unregistered subscription is 410 Gone, cacheable for a day,
// so app servers drop it.
func TestGoneIsCacheable(t *testing.T) {
	e := newEnv(t, nil)
	d := e.connect("")
	s := d.subscribe(nil)
	if _, err := d.c.Unregister(s.channel); err != nil {
		t.Fatal(err)
	}
	for _, ttl := range []string{"60", "0"} {
		r := e.do("POST", s.endpoint, s.encrypt(t, "x"), with(aes128, "TTL", ttl))
		if r.code != 410 || r.errno != 106 {
			t.Fatalf("TTL %s: %d %s", ttl, r.code, r.body)
		}
		if cc := r.header.Get("Cache-Control"); cc != "max-age=86400" {
			t.Fatalf("Cache-Control %q", cc)
		}
	}
	sp := strings.Replace(s.endpoint, "/wpush/v1/", "/update/", 1)
	if r := e.do("PUT", sp, []byte("version=3"), nil); r.code != 410 || r.errno != 106 {
		t.Fatalf("SimplePush PUT: %d %s", r.code, r.body)
	}
}

// Once the hub is shutting down, pushes get 503 with Retry-After, so app
// servers try again later instead of dropping the message.
func TestShuttingDownIs503(t *testing.T) {
	e := newEnv(t, nil)
	d := e.connect("")
	s := d.subscribe(nil)
	e.hub.Close()
	sp := strings.Replace(s.endpoint, "/wpush/v1/", "/update/", 1)
	for name, r := range map[string]response{
		"POST":       e.do("POST", s.endpoint, s.encrypt(t, "x"), with(aes128, "TTL", "60")),
		"POST TTL 0": e.do("POST", s.endpoint, s.encrypt(t, "x"), with(aes128, "TTL", "0")),
		"PUT":        e.do("PUT", sp, []byte("version=1"), nil),
	} {
		if r.code != 503 || r.errno != 202 || r.header.Get("Retry-After") != "120" {
			t.Errorf("%s: %d Retry-After %q %s", name, r.code, r.header.Get("Retry-After"), r.body)
		}
	}
	if w := e.waiting(); w != 0 {
		t.Fatalf("waiting = %d", w)
	}
}

// SimplePush PUT: 201 with a 30-day TTL; the device sees the version.
func TestSimplePushPut(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dev, err := pushclient.Dial(ctx, e.device)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Abort()
	if _, err := dev.Hello("", pushclient.HelloOptions{Legacy: true}); err != nil {
		t.Fatal(err)
	}
	ch := "7a5b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"
	reg, err := dev.Register(ch, "")
	if err != nil || !strings.HasPrefix(reg.PushEndpoint, e.base+"/update/") {
		t.Fatalf("register: %v %+v", err, reg)
	}
	r := e.do("PUT", reg.PushEndpoint+"?version=77", nil, nil)
	if r.code != 201 || r.header.Get("TTL") != "2592000" || !strings.HasPrefix(r.header.Get("Location"), e.base+"/m/") {
		t.Fatalf("PUT: %d %v %s", r.code, r.header, r.body)
	}
	n, err := dev.Next(time.Now().Add(5 * time.Second))
	if err != nil || len(n.Updates) != 1 || n.Updates[0].Version != 77 || n.Updates[0].ChannelID != ch {
		t.Fatalf("device got %+v, %v", n, err)
	}
	// A Web Push token is not a SimplePush one.
	if r := e.do("PUT", strings.Replace(reg.PushEndpoint, "/update/", "/update/x", 1), []byte("version=1"), nil); r.code != 404 || r.errno != 102 {
		t.Fatalf("bad token: %d %s", r.code, r.body)
	}
}

// Old senders sign with "Authorization: WebPush <jwt>" and put the VAPID
// key beside the aesgcm dh in Crypto-Key. A v2 endpoint bound to that key
// takes it, and the device gets headers it can decrypt with.
func TestLegacyVAPIDOnV2(t *testing.T) {
	e := newEnv(t, nil)
	priv, _ := vapid.GenerateKey()
	signer := vapid.NewSigner(priv)
	d := e.connect("")
	s := d.subscribe(signer.PublicKey())
	if !strings.HasPrefix(s.endpoint, e.base+"/wpush/v2/") {
		t.Fatalf("keyed register gave %s", s.endpoint)
	}
	jwt, err := signer.Sign(e.base, "mailto:ops@example.net", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	vapidParam := "p256ecdsa=" + ece.EncodeKey(signer.PublicKey())

	for i, scheme := range []string{"WebPush", "Bearer", "webpush"} {
		text := "legacy " + scheme
		body, encHdr, ckHdr, err := ece.EncryptAESGCM([]byte(text), s.keys.PublicKey(), s.keys.Auth)
		if err != nil {
			t.Fatal(err)
		}
		cryptoKey := ckHdr + ";" + vapidParam
		if i == 1 {
			cryptoKey = vapidParam + "," + ckHdr
		}
		r := e.do("POST", s.endpoint, body, map[string]string{
			"TTL": "60", "Content-Encoding": "aesgcm", "Encryption": encHdr,
			"Crypto-Key": cryptoKey, "Authorization": scheme + " " + jwt,
		})
		if r.code != 201 {
			t.Fatalf("%s: %d %s", scheme, r.code, r.body)
		}
		n, err := d.c.Next(time.Now().Add(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if n.Headers == nil || n.Headers.Encoding != "aesgcm" {
			t.Fatalf("notification headers %+v", n.Headers)
		}
		data, _ := ece.DecodeKey(n.Data)
		plain, err := ece.DecryptAESGCM(data, s.keys, n.Headers.Encryption, n.Headers.CryptoKey)
		if err != nil || string(plain) != text {
			t.Fatalf("device decrypts %q, %v", plain, err)
		}
		d.c.Ack(n)
	}

	// The same token with another key's p256ecdsa, or signed by another
	// key, is refused.
	other, _ := vapid.GenerateKey()
	otherSigner := vapid.NewSigner(other)
	otherJWT, _ := otherSigner.Sign(e.base, "mailto:x@example.net", time.Now().Add(time.Hour))
	body, encHdr, ckHdr, _ := ece.EncryptAESGCM([]byte("x"), s.keys.PublicKey(), s.keys.Auth)
	for name, h := range map[string][2]string{
		"key swapped":    {"WebPush " + jwt, ckHdr + ";p256ecdsa=" + ece.EncodeKey(otherSigner.PublicKey())},
		"other signer":   {"WebPush " + otherJWT, ckHdr + ";p256ecdsa=" + ece.EncodeKey(otherSigner.PublicKey())},
		"no p256ecdsa":   {"WebPush " + jwt, ckHdr},
		"unknown scheme": {"Basic " + jwt, ckHdr + ";" + vapidParam},
	} {
		r := e.do("POST", s.endpoint, body, map[string]string{
			"TTL": "60", "Content-Encoding": "aesgcm", "Encryption": encHdr,
			"Crypto-Key": h[1], "Authorization": h[0],
		})
		if r.code != 401 || r.errno != 109 {
			t.Errorf("%s: %d %s", name, r.code, r.body)
		}
	}
}

// The message a 201 names is the one DELETE withdraws: the device never
// sees it.
func TestDeleteWithdraws(t *testing.T) {
	e := newEnv(t, nil)
	d := e.connect("")
	s := d.subscribe(nil)
	uaid := d.c.UAID
	d.c.Close()
	first := e.do("POST", s.endpoint, s.encrypt(t, "withdrawn"), with(aes128, "TTL", "60"))
	second := e.do("POST", s.endpoint, s.encrypt(t, "kept"), with(aes128, "TTL", "60"))
	if first.code != 201 || second.code != 201 {
		t.Fatal(first.body, second.body)
	}
	if r := e.do("DELETE", first.header.Get("Location"), nil, nil); r.code != 204 {
		t.Fatalf("DELETE: %d %s", r.code, r.body)
	}
	if r := e.do("DELETE", first.header.Get("Location"), nil, nil); r.code != 404 || r.errno != 102 {
		t.Fatalf("second DELETE: %d %s", r.code, r.body)
	}
	d2 := e.connect(uaid)
	n, err := d2.c.Next(time.Now().Add(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	data, _ := ece.DecodeKey(n.Data)
	if plain, err := ece.Decrypt(data, s.keys); err != nil || string(plain) != "kept" {
		t.Fatalf("device got %q, %v", plain, err)
	}
	if _, err := d2.c.Next(time.Now().Add(150 * time.Millisecond)); err == nil {
		t.Fatal("the withdrawn message arrived too")
	}
}

// A Pusher that fails for another reason gives 500 errno 999, JSON.
func TestInternalError(t *testing.T) {
	e := newEnv(t, nil)
	d := e.connect("")
	s := d.subscribe(nil)
	path := e.serveWith(failingPusher{}) + s.path(t, e.base)
	r := e.do("POST", path, s.encrypt(t, "x"), with(aes128, "TTL", "60"))
	if r.code != 500 || r.errno != 999 {
		t.Fatalf("%d %s", r.code, r.body)
	}
}

type failingPusher struct{}

func (failingPusher) Push(context.Context, push.Message) (relay.Result, error) {
	return relay.Result{}, errors.New("disk on fire")
}
func (failingPusher) Ingest(context.Context, []push.Message) ([]relay.Result, error) {
	return nil, errors.New("disk on fire")
}
func (failingPusher) Delete(context.Context, string) error { return errors.New("disk on fire") }

// New refuses configs it cannot serve.
func TestNewValidates(t *testing.T) {
	e := newEnv(t, nil)
	for name, cfg := range map[string]Config{
		"no tokens":    {Pusher: e.hub, PublicURL: e.base},
		"no pusher":    {Tokens: e.tokens, PublicURL: e.base},
		"relative URL": {Tokens: e.tokens, Pusher: e.hub, PublicURL: "/push"},
		"no URL":       {Tokens: e.tokens, Pusher: e.hub},
		"host only":    {Tokens: e.tokens, Pusher: e.hub, PublicURL: "push.example.net"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// Requests fasthttp cannot read as HTTP get a JSON error too, and the
// connection is closed after it.
func TestUnreadableRequests(t *testing.T) {
	e := newEnv(t, nil)
	d := e.connect("")
	s := d.subscribe(nil)
	path := s.path(t, e.base)
	host := e.host()
	cases := []struct {
		name  string
		raw   string
		code  int
		errno int
	}{
		{"not HTTP", "HELLO\r\n\r\n", 400, 117},
		{"bad Content-Length", "POST " + path + " HTTP/1.1\r\nHost: " + host + "\r\nTTL: 60\r\nContent-Length: ten\r\n\r\n", 400, 117},
		{"broken chunks", "POST " + path + " HTTP/1.1\r\nHost: " + host + "\r\nTTL: 60\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, 117},
		{"headers over 8 KiB", "POST " + path + " HTTP/1.1\r\nHost: " + host + "\r\nTTL: 60\r\nX-Filler: " + strings.Repeat("a", MaxHeaderBytes) + "\r\n\r\n", 431, 118},
		{"body over MaxData", "POST " + path + " HTTP/1.1\r\nHost: " + host + "\r\nTTL: 60\r\nContent-Length: " + strconv.Itoa(DefaultMaxData+1) + "\r\n\r\n", 413, 104},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", host)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(conn, c.raw); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.code || !strings.Contains(string(b), `"errno":`+strconv.Itoa(c.errno)) {
				t.Fatalf("%d %s, want %d errno %d", resp.StatusCode, b, c.code, c.errno)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Fatalf("Content-Type %q", ct)
			}
			if !resp.Close {
				t.Fatal("connection left open after an unreadable request")
			}
		})
	}
	if w := e.waiting(); w != 0 {
		t.Fatalf("unreadable requests stored %d messages", w)
	}
}

type panickingPusher struct{}

func (panickingPusher) Push(context.Context, push.Message) (relay.Result, error) {
	panic("bug in the pusher")
}
func (panickingPusher) Ingest(context.Context, []push.Message) ([]relay.Result, error) {
	panic("bug in the pusher")
}
func (panickingPusher) Delete(context.Context, string) error { panic("bug in the pusher") }

// A panic in a handler is answered 500 errno 999 and the listener goes on
// serving: fasthttp itself would let it end the process.
func TestHandlerPanicIsContained(t *testing.T) {
	e := newEnv(t, nil)
	d := e.connect("")
	s := d.subscribe(nil)
	base := e.serveWith(panickingPusher{})
	for i := 0; i < 2; i++ {
		r := e.do("POST", base+s.path(t, e.base), s.encrypt(t, "x"), with(aes128, "TTL", "60"))
		if r.code != 500 || r.errno != 999 {
			t.Fatalf("attempt %d: %d %s", i, r.code, r.body)
		}
	}
	if r := e.do("DELETE", base+"/m/x", nil, nil); r.code != 500 || r.errno != 999 {
		t.Fatalf("delete: %d %s", r.code, r.body)
	}
}
