package endpoint

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math/big"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/vapid"
)

// ttlSeeds are TTL values app servers send (web-push libraries use 0, a
// minute, a day, four weeks) and ones they get wrong.
var ttlSeeds = []string{"0", "60", "86400", "2419200", "2592000", "2592001", " 3600 ", "-1", "1.5", "60s", "0x3c", "+60", "", "99999999999999999999", "٣"}

func FuzzParseTTL(f *testing.F) {
	for _, s := range ttlSeeds {
		f.Add(s)
	}
	maxSecs := big.NewInt(int64(MaxTTL / time.Second))
	f.Fuzz(func(t *testing.T, s string) {
		d, aerr := ParseTTL([]string{s})
		trimmed := strings.TrimSpace(s)
		digits := trimmed != "" && strings.Trim(trimmed, "0123456789") == ""
		if aerr != nil {
			if aerr.Code != 400 || (aerr.Errno != 111 && aerr.Errno != 114) {
				t.Fatalf("ParseTTL(%q): %v", s, aerr)
			}
			if aerr.Errno == 111 && trimmed != "" {
				t.Fatalf("ParseTTL(%q): 'missing' for a value", s)
			}
			if digits {
				t.Fatalf("ParseTTL(%q) refused a plain number: %v", s, aerr)
			}
			return
		}
		if d < 0 || d > MaxTTL || d%time.Second != 0 {
			t.Fatalf("ParseTTL(%q) = %v", s, d)
		}
		if digits {
			n, _ := new(big.Int).SetString(trimmed, 10)
			if n.Cmp(maxSecs) > 0 {
				n = maxSecs
			}
			if want := time.Duration(n.Int64()) * time.Second; d != want {
				t.Fatalf("ParseTTL(%q) = %v, want %v", s, d, want)
			}
		}
		// What the 201 echoes parses back to the same TTL.
		echo := strconv.FormatInt(int64(d/time.Second), 10)
		if d2, aerr := ParseTTL([]string{echo}); aerr != nil || d2 != d {
			t.Fatalf("echoed TTL %q parses as %v, %v; want %v", echo, d2, aerr, d)
		}
	})
}

func FuzzParseTopic(f *testing.F) {
	for _, s := range []string{"", "inbox", "match-score_1", strings.Repeat("a", 32), strings.Repeat("a", 33), "a b", "a=", "caf\u00e9", "!simplepush"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, aerr := ParseTopic(s)
		valid := len(s) <= MaxTopicLen
		for i := 0; i < len(s); i++ {
			c := s[i]
			if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				valid = false
			}
		}
		if valid {
			if aerr != nil || got != s {
				t.Fatalf("ParseTopic(%q) = %q, %v", s, got, aerr)
			}
			return
		}
		if aerr == nil || aerr.Code != 400 || aerr.Errno != 113 {
			t.Fatalf("ParseTopic(%q) = %q, %v; want 400 errno 113", s, got, aerr)
		}
	})
}

// FuzzHeaders sends requests with fuzzed headers and body through the whole
// API onto a real hub and store: it must never panic, must answer 201 or a
// JSON error with a documented errno, and must store nothing unless it
// answered 201.
func FuzzHeaders(f *testing.F) {
	e := newEnv(f, nil)
	priv, _ := vapid.GenerateKey()
	signer := vapid.NewSigner(priv)
	d := e.connect("")
	v1 := d.subscribe(nil)
	v2 := d.subscribe(signer.PublicKey())
	d.c.Close()
	targets := []string{
		v1.path(f, e.base),
		v2.path(f, e.base),
		strings.Replace(v1.path(f, e.base), "/wpush/v1/", "/wpush/", 1),
		strings.Replace(v1.path(f, e.base), "/wpush/v1/", "/wpush/v2/", 1),
	}

	aes128, _ := ece.Encrypt([]byte("hello"), v1.keys.PublicKey(), v1.keys.Auth)
	aesgcm, encHdr, ckHdr, _ := ece.EncryptAESGCM([]byte("hello"), v2.keys.PublicKey(), v2.keys.Auth)
	exp := time.Now().Add(12 * time.Hour)
	auth, _ := signer.Header(e.base, "mailto:ops@example.net", exp)
	jwt, _ := signer.Sign(e.base, "https://example.net/contact", exp)
	vapidKey := "p256ecdsa=" + ece.EncodeKey(signer.PublicKey())

	type seed struct {
		target                                  uint8
		ttl, topic, urgency, ce, enc, ck, authz string
		body                                    []byte
	}
	for _, s := range []seed{
		{0, "60", "", "", "aes128gcm", "", "", "", aes128},
		{0, "0", "inbox", "high", "aes128gcm", "", "", "", aes128},
		{2, "2592001", "", "very-low", "", "", "", "", nil},
		{0, "86400", "", "", "aesgcm", encHdr, ckHdr, "", aesgcm},
		{1, "60", "", "", "aes128gcm", "", "", auth, aes128},
		{1, "60", "score", "normal", "aesgcm", encHdr, ckHdr + ";" + vapidKey, "WebPush " + jwt, aesgcm},
		{1, "60", "", "", "aes128gcm", "", vapidKey, "Bearer " + jwt, aes128},
		{0, "60", "", "", "aes128gcm", "salt=AAAAAAAAAAAAAAAAAAAAAA", "", "", aes128},
		{0, "60", "", "", "aes128gcm", "", ckHdr, "", aes128},
		{3, "60", "", "", "aes128gcm", "", "", "", aes128},
		{1, "60", "", "", "aes128gcm", "", "", "vapid t=a.b.c, k=" + ece.EncodeKey(signer.PublicKey()), aes128},
		{0, "-1", strings.Repeat("t", 33), "urgent", "gzip", "", "", "", []byte("x")},
		{0, "60", "", "", "aes128gcm", "", "", "", append(aes128[:21:21], 0, 0, 0, 0)},
	} {
		f.Add(s.target, s.ttl, s.topic, s.urgency, s.ce, s.enc, s.ck, s.authz, s.body)
	}

	waiting := func(t *testing.T) int64 {
		st, err := e.st.Stats()
		if err != nil {
			t.Fatal(err)
		}
		return st.Waiting
	}
	f.Fuzz(func(t *testing.T, target uint8, ttl, topic, urgency, ce, enc, ck, authz string, body []byte) {
		hdr := http.Header{}
		for name, v := range map[string]string{"TTL": ttl, "Topic": topic, "Urgency": urgency,
			"Content-Encoding": ce, "Encryption": enc, "Crypto-Key": ck, "Authorization": authz} {
			if !validFieldValue(v) {
				return // net/http would have refused the request
			}
			if v = strings.Trim(v, " \t"); v != "" {
				hdr.Set(name, v)
			}
		}
		if len(body) > 2*DefaultMaxData {
			body = body[:2*DefaultMaxData]
		}
		before := waiting(t)
		req, err := http.NewRequest("POST", e.base+targets[int(target)%len(targets)], bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header = hdr
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		rb, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		rec := struct {
			Code   int
			header http.Header
		}{resp.StatusCode, resp.Header}
		after := waiting(t)

		if rec.Code == http.StatusCreated {
			loc := rec.header.Get("Location")
			id, ok := strings.CutPrefix(loc, e.base+"/m/")
			if !ok || id == "" {
				t.Fatalf("201 with Location %q", loc)
			}
			secs, err := strconv.ParseInt(rec.header.Get("TTL"), 10, 64)
			if err != nil || secs < 0 || secs > int64(MaxTTL/time.Second) {
				t.Fatalf("201 with TTL %q", rec.header.Get("TTL"))
			}
			if secs > 0 && after != before+1 && after != before {
				t.Fatalf("201 changed waiting %d → %d", before, after)
			}
			// Withdraw it so the store stays small.
			if err := e.hub.Delete(context.Background(), id); err != nil && err != relay.ErrNoMessage {
				t.Fatal(err)
			}
			if w := waiting(t); w != 0 && secs > 0 {
				t.Fatalf("waiting %d after deleting the only message", w)
			}
			return
		}
		if after != before {
			t.Fatalf("answered %d but stored a message (waiting %d → %d)", rec.Code, before, after)
		}
		if ct := rec.header.Get("Content-Type"); ct != "application/json" {
			t.Fatalf("%d with Content-Type %q", rec.Code, ct)
		}
		checkErrorBody(t, rec.Code, rb)
	})
}

// checkErrorBody fails t unless body is the API's JSON error for status:
// a documented errno with its status, and a message.
func checkErrorBody(t *testing.T, status int, body []byte) {
	t.Helper()
	var got struct {
		Code    int    `json:"code"`
		Errno   int    `json:"errno"`
		Error   string `json:"error"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("%d with body %q: %v", status, body, err)
	}
	if want, ok := knownErrnos[got.Errno]; !ok || want != status || got.Code != status || got.Message == "" || got.Error == "" {
		t.Fatalf("%d with %s", status, body)
	}
}

// validFieldValue reports whether net/http's server would pass v through as
// a header value: no control characters but tab.
func validFieldValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// FuzzRawRequest writes arbitrary bytes to the real listener as one
// connection's input. Whatever comes back must be HTTP responses, each a
// 201 or a JSON error with a documented errno, and the listener must still
// answer a good request afterwards. Seeds are real requests as app servers
// send them.
func FuzzRawRequest(f *testing.F) {
	e := newEnv(f, nil)
	s := e.subscribed()
	host := e.host()
	path := s.path(f, e.base)
	body := s.encrypt(f, "hello")
	post := "POST " + path + " HTTP/1.1\r\nHost: " + host + "\r\nTTL: 60\r\nContent-Encoding: aes128gcm\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + string(body)
	for _, seed := range []string{
		post,
		post + post, // pipelined
		"POST " + path + " HTTP/1.1\r\nHost: " + host + "\r\nTTL: 60\r\nContent-Encoding: aes128gcm\r\nTransfer-Encoding: chunked\r\n\r\n" + strconv.FormatInt(int64(len(body)), 16) + "\r\n" + string(body) + "\r\n0\r\n\r\n",
		"PUT /update/" + path[len("/wpush/v1/"):] + "?version=7 HTTP/1.1\r\nHost: " + host + "\r\nContent-Length: 0\r\n\r\n",
		"DELETE /m/abc HTTP/1.0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST " + path + " HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
		// RFC 9112 framing: length and chunked together (a request hidden
		// in the body), codings other than chunked, bare LF line ends.
		"POST " + path + " HTTP/1.1\r\nHost: " + host + "\r\nTTL: 60\r\nContent-Encoding: aes128gcm\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\nTransfer-Encoding: chunked\r\n\r\n" + strconv.FormatInt(int64(len(body)), 16) + "\r\n" + string(body) + "\r\n0\r\n\r\nDELETE /m/x HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST " + path + " HTTP/1.1\r\nHost: " + host + "\r\nTTL: 60\r\nTransfer-Encoding: identity\r\n\r\n" + string(body),
		"POST " + path + " HTTP/1.1\r\nHost: " + host + "\r\nTTL: 60\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
		strings.ReplaceAll(post, "\r\n", "\n"),
		post + strings.ReplaceAll(post, "\r\n", "\n"),
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if len(raw) > 3*MaxHeaderBytes {
			raw = raw[:3*MaxHeaderBytes]
		}
		conn, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		conn.Write(raw)
		conn.(*net.TCPConn).CloseWrite()
		br := bufio.NewReader(conn)
		for {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				break // the connection ended (after zero or more answers)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatalf("reading a %d body: %v", resp.StatusCode, err)
			}
			if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusNoContent {
				checkErrorBody(t, resp.StatusCode, b)
			}
		}
		// The listener still serves.
		req, _ := http.NewRequest("POST", e.base+path, bytes.NewReader(body))
		req.Header.Set("TTL", "0")
		req.Header.Set("Content-Encoding", "aes128gcm")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("good request after the fuzzed one: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("good request after the fuzzed one: %d", resp.StatusCode)
		}
	})
}
