package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/vapid"
)

// Bad input from a device closes that device's socket with the documented
// code and changes nothing else: a bystander device keeps its session and
// its messages, and the store's counts do not move.
func TestE2EBadDeviceInput(t *testing.T) {
	p := startRelay(t, t.TempDir(), "--hello-timeout", "1s")
	bystander := connect(t, p, "")
	bs := bystander.register("")
	before := p.status()

	big := `{"messageType":"ping","pad":"` + strings.Repeat("x", 40<<10) + `"}`
	cases := []struct {
		name   string
		hello  bool
		frame  string
		binary bool
		code   int
	}{
		{"malformed JSON", true, `{"messageType":"register",`, false, 1011},
		{"not an object", true, `[1,2,3]`, false, 1011},
		{"unknown messageType", true, `{"messageType":"subscribe"}`, false, 1011},
		{"upper-case channel ID", true, `{"messageType":"register","channelID":"0B5A9D4E-3C5B-4F7E-8A7B-2A2F3F4E5D6C"}`, false, 1011},
		{"undashed channel ID", true, `{"messageType":"register","channelID":"0b5a9d4e3c5b4f7e8a7b2a2f3f4e5d6c"}`, false, 1011},
		{"register before hello", false, `{"messageType":"register","channelID":"0b5a9d4e-3c5b-4f7e-8a7b-2a2f3f4e5d6c"}`, false, 1011},
		{"second hello", true, `{"messageType":"hello","use_webpush":true}`, false, 1011},
		{"binary frame", true, "\x00\x01", true, 1003},
		{"text frame not UTF-8", true, "{\"messageType\":\"ping\",\"x\":\"\xff\xfe\"}", false, 1007},
		{"oversized frame", true, big, false, 1009},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cl := dial(t, p)
			var err error
			if c.hello {
				if _, err := cl.Hello("", pushclient.HelloOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			if c.binary {
				err = cl.SendBinary([]byte(c.frame))
			} else {
				err = cl.Send([]byte(c.frame))
			}
			if err != nil {
				t.Fatal(err)
			}
			_, err = cl.Read(time.Now().Add(5 * time.Second))
			var ce *pushclient.CloseError
			if !errors.As(err, &ce) || ce.Code != c.code {
				t.Fatalf("got %v, want close %d", err, c.code)
			}
		})
	}
	// A device that says nothing is closed after the hello timeout.
	t.Run("hello timeout", func(t *testing.T) {
		cl := dial(t, p)
		start := time.Now()
		_, err := cl.Read(time.Now().Add(10 * time.Second))
		var ce *pushclient.CloseError
		if !errors.As(err, &ce) || ce.Code != 1011 || time.Since(start) < 900*time.Millisecond {
			t.Fatalf("got %v after %s, want close 1011 after the hello timeout", err, time.Since(start))
		}
	})

	after := p.status()
	for _, k := range []string{"devices", "channels", "waiting_messages"} {
		if before[k] != after[k] {
			t.Errorf("%s changed: %v → %v", k, before[k], after[k])
		}
	}
	mustCreated(t, push(t, bs, "still here", nil))
	if text, _ := bystander.receive(5 * time.Second); text != "still here" {
		t.Fatalf("bystander got %q", text)
	}
}

// Bad requests from app servers get the documented status and errno, and
// nothing is stored.
func TestE2EBadEndpointInput(t *testing.T) {
	p := startRelay(t, t.TempDir())
	d := connect(t, p, "")
	s := d.register("")
	priv, _ := vapid.GenerateKey()
	signer := vapid.NewSigner(priv)
	keyed := d.register(ece.EncodeKey(signer.PublicKey()))
	d.c.Close()

	good, _ := ece.Encrypt([]byte("x"), s.keys.PublicKey(), s.keys.Auth)
	tok := s.endpoint[strings.LastIndex(s.endpoint, "/")+1:]
	forged := []byte(tok)
	forged[len(forged)/2] ^= 1
	expired, _ := signer.Header(p.Endpoint, "mailto:a@b.c", time.Now().Add(-time.Minute))
	tooFar, _ := signer.Header(p.Endpoint, "mailto:a@b.c", time.Now().Add(48*time.Hour))
	valid, _ := signer.Header(p.Endpoint, "mailto:a@b.c", time.Now().Add(time.Hour))
	wrongAud, _ := signer.Header("https://push.example.net", "mailto:a@b.c", time.Now().Add(time.Hour))
	std := map[string]string{"TTL": "60", "Content-Encoding": "aes128gcm"}
	cases := []struct {
		name   string
		method string
		url    string
		body   []byte
		hdr    map[string]string
		code   int
		errno  int
	}{
		{"missing TTL", "POST", s.endpoint, good, map[string]string{"Content-Encoding": "aes128gcm"}, 400, 111},
		{"negative TTL", "POST", s.endpoint, good, mergeHeaders(std, map[string]string{"TTL": "-5"}), 400, 114},
		{"TTL not a number", "POST", s.endpoint, good, mergeHeaders(std, map[string]string{"TTL": "soon"}), 400, 114},
		{"oversized body", "POST", s.endpoint, bytes.Repeat([]byte{1}, 5631), std, 413, 104},
		{"no Content-Encoding", "POST", s.endpoint, good, map[string]string{"TTL": "60"}, 400, 101},
		{"unknown Content-Encoding", "POST", s.endpoint, good, mergeHeaders(std, map[string]string{"Content-Encoding": "gzip"}), 400, 110},
		{"aes128gcm body too short", "POST", s.endpoint, []byte("short"), std, 400, 110},
		{"aesgcm without salt", "POST", s.endpoint, good, mergeHeaders(std, map[string]string{"Content-Encoding": "aesgcm"}), 400, 101},
		{"topic too long", "POST", s.endpoint, good, mergeHeaders(std, map[string]string{"Topic": strings.Repeat("a", 33)}), 400, 113},
		{"topic not base64url", "POST", s.endpoint, good, mergeHeaders(std, map[string]string{"Topic": "a b"}), 400, 113},
		{"bad urgency", "POST", s.endpoint, good, mergeHeaders(std, map[string]string{"Urgency": "urgent"}), 400, 115},
		{"garbage token", "POST", p.Endpoint + "/wpush/v1/notatoken", good, std, 404, 102},
		{"forged token", "POST", p.Endpoint + "/wpush/v1/" + string(forged), good, std, 404, 102},
		{"v1 token under v2", "POST", p.Endpoint + "/wpush/v2/" + tok, good, std, 404, 102},
		{"unknown version", "POST", p.Endpoint + "/wpush/v9/" + tok, good, std, 404, 102},
		{"unknown path", "POST", p.Endpoint + "/push/abc", good, std, 404, 102},
		{"v2 without VAPID", "POST", keyed.endpoint, good, std, 401, 109},
		{"VAPID garbage", "POST", keyed.endpoint, good, mergeHeaders(std, map[string]string{"Authorization": "vapid t=abc, k=def"}), 401, 109},
		{"VAPID expired", "POST", keyed.endpoint, good, mergeHeaders(std, map[string]string{"Authorization": expired}), 401, 109},
		{"VAPID exp beyond 24h", "POST", keyed.endpoint, good, mergeHeaders(std, map[string]string{"Authorization": tooFar}), 401, 109},
		{"VAPID on v1, wrong audience", "POST", s.endpoint, good, mergeHeaders(std, map[string]string{"Authorization": wrongAud}), 401, 109},
		{"delete unknown message", "DELETE", p.Endpoint + "/m/nothing", nil, nil, 404, 102},
		{"simplepush bad version", "PUT", strings.Replace(s.endpoint, "/wpush/v1/", "/update/", 1), []byte("version=abc"), map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, 400, 116},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := do(t, c.method, c.url, c.body, c.hdr)
			if r.code != c.code || r.errno != c.errno {
				t.Fatalf("got %d errno %d (%s), want %d errno %d", r.code, r.errno, r.body, c.code, c.errno)
			}
			if !strings.Contains(r.body, `"message"`) || !strings.Contains(r.body, `"error"`) {
				t.Fatalf("error body lacks fields: %s", r.body)
			}
		})
	}
	// Framing (RFC 9112), on raw connections: each is answered at once
	// (the read timeout is 30 s, the test waits 10), and the connection
	// is closed after the one answer, so the request hidden after a
	// chunked body is never served.
	host := strings.TrimPrefix(p.Endpoint, "http://")
	path := s.endpoint[strings.Index(s.endpoint, "/wpush/"):]
	head := "POST " + path + " HTTP/1.1\r\nHost: " + host + "\r\nTTL: 60\r\nContent-Encoding: aes128gcm\r\n"
	cl := "Content-Length: " + strconv.Itoa(len(good)) + "\r\n"
	chunked := strconv.FormatInt(int64(len(good)), 16) + "\r\n" + string(good) + "\r\n0\r\n\r\n"
	hidden := "DELETE /m/hidden HTTP/1.1\r\nHost: " + host + "\r\n\r\n"
	framing := []struct {
		name  string
		raw   string
		code  int
		errno int
	}{
		{"Content-Length with Transfer-Encoding", head + cl + "Transfer-Encoding: chunked\r\n\r\n" + chunked + hidden, 400, 122},
		{"Transfer-Encoding identity", head + "Transfer-Encoding: identity\r\n\r\n" + string(good), 501, 123},
		{"Transfer-Encoding gzip", head + "Transfer-Encoding: gzip\r\n\r\n" + string(good), 501, 123},
		{"bare LF line ends", strings.ReplaceAll(head+cl+"\r\n", "\r\n", "\n") + string(good), 400, 117},
	}
	for _, c := range framing {
		t.Run(c.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", host)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(conn, c.raw)
			all, err := io.ReadAll(conn)
			if err != nil {
				t.Fatalf("no answer and close within 10 s: %v (%q)", err, all)
			}
			resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(all)), nil)
			if err != nil {
				t.Fatalf("%v: %q", err, all)
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != c.code || !strings.Contains(string(b), `"errno":`+strconv.Itoa(c.errno)+",") {
				t.Fatalf("got %d %s, want %d errno %d", resp.StatusCode, b, c.code, c.errno)
			}
			if n := strings.Count(string(all), "HTTP/1.1 "); n != 1 {
				t.Fatalf("%d answers on one connection: %q", n, all)
			}
		})
	}
	if w := p.waiting(); w != 0 {
		t.Fatalf("bad requests stored %d messages", w)
	}
	// Unregistered channel: 410 errno 106.
	d2 := connect(t, p, d.uaid)
	if _, err := d2.c.Unregister(s.channel); err != nil {
		t.Fatal(err)
	}
	if r := do(t, "POST", s.endpoint, good, std); r.code != 410 || r.errno != 106 {
		t.Fatalf("unregistered: %d errno %d", r.code, r.errno)
	}
	// The valid request still works after all that.
	mustCreated(t, post(t, keyed.endpoint, good, mergeHeaders(std, map[string]string{"Authorization": valid})))
}

// DELETE /m/{id} withdraws a waiting message.
func TestE2EDeleteMessage(t *testing.T) {
	p := startRelay(t, t.TempDir())
	d := connect(t, p, "")
	s := d.register("")
	d.c.Close()
	resp := push(t, s, "regret", nil)
	mustCreated(t, resp)
	loc := resp.Header.Get("Location")
	if r := do(t, "DELETE", loc, nil, nil); r.code != 204 {
		t.Fatalf("DELETE = %d %s", r.code, r.body)
	}
	if w := p.waiting(); w != 0 {
		t.Fatalf("waiting after delete = %d", w)
	}
	if r := do(t, "DELETE", loc, nil, nil); r.code != 404 {
		t.Fatalf("second DELETE = %d", r.code)
	}
}
