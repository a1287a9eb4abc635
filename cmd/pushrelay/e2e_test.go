package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/vapid"
)

// The whole flow: register, post an encrypted payload, the device decrypts
// and acks, and a reconnect brings nothing more.
func TestE2EFlow(t *testing.T) {
	p := startRelay(t, t.TempDir())
	d := connect(t, p, "")
	s := d.register("")
	if !strings.HasPrefix(s.endpoint, p.Endpoint+"/wpush/v1/") {
		t.Fatalf("endpoint %q is not under %s/wpush/v1/", s.endpoint, p.Endpoint)
	}
	resp := push(t, s, "hello from the app server", nil)
	mustCreated(t, resp)
	if loc := resp.Header.Get("Location"); !strings.HasPrefix(loc, p.Endpoint+"/m/") {
		t.Fatalf("Location = %q", loc)
	}
	if resp.Header.Get("TTL") != "60" {
		t.Fatalf("TTL header = %q", resp.Header.Get("TTL"))
	}
	text, _ := d.receive(5 * time.Second)
	if text != "hello from the app server" {
		t.Fatalf("device got %q", text)
	}
	// The ack is written asynchronously; wait for the store to drop it.
	waitFor(t, "acked message deleted", func() bool { return p.waiting() == 0 })
	d.c.Close()

	d2 := connect(t, p, d.uaid)
	if d2.uaid != d.uaid {
		t.Fatalf("known UAID not resumed: %s → %s", d.uaid, d2.uaid)
	}
	d2.subs = d.subs
	d2.expectNothing(300 * time.Millisecond)
	if v := p.metric("pushrelay_messages_delivered_total"); v != 1 {
		t.Fatalf("delivered = %v", v)
	}
	p.stop()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Messages for an offline device wait; unacked ones come again.
func TestE2EOfflineAndRedelivery(t *testing.T) {
	p := startRelay(t, t.TempDir())
	d := connect(t, p, "")
	s := d.register("")
	d.c.Close()
	for i := range 3 {
		mustCreated(t, push(t, s, fmt.Sprintf("m%d", i), nil))
	}
	// Receive without acking, then drop the connection.
	d2 := connect(t, p, d.uaid)
	d2.subs = d.subs
	for i := range 3 {
		n, err := d2.c.Next(time.Now().Add(5 * time.Second))
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		_ = n
	}
	d2.c.Abort()
	d3 := connect(t, p, d.uaid)
	d3.subs = d.subs
	for i := range 3 {
		text, _ := d3.receive(5 * time.Second)
		if text != fmt.Sprintf("m%d", i) {
			t.Fatalf("redelivery %d: got %q", i, text)
		}
	}
	waitFor(t, "acked messages deleted", func() bool { return p.waiting() == 0 })
}

func TestE2ETopicReplacement(t *testing.T) {
	p := startRelay(t, t.TempDir())
	d := connect(t, p, "")
	s := d.register("")
	d.c.Close()
	mustCreated(t, push(t, s, "score 1-0", map[string]string{"Topic": "match"}))
	mustCreated(t, push(t, s, "score 2-0", map[string]string{"Topic": "match"}))
	mustCreated(t, push(t, s, "other", nil))
	if w := p.waiting(); w != 2 {
		t.Fatalf("waiting = %d, want 2 (topic replaced)", w)
	}
	d2 := connect(t, p, d.uaid)
	d2.subs = d.subs
	got := []string{}
	for range 2 {
		text, _ := d2.receive(5 * time.Second)
		got = append(got, text)
	}
	if strings.Join(got, ",") != "score 2-0,other" {
		t.Fatalf("got %v", got)
	}
}

func TestE2ETTLExpiry(t *testing.T) {
	p := startRelay(t, t.TempDir(), "--sweep-interval", "200ms")
	d := connect(t, p, "")
	s := d.register("")
	d.c.Close()
	mustCreated(t, push(t, s, "short lived", map[string]string{"TTL": "1"}))
	mustCreated(t, push(t, s, "long lived", map[string]string{"TTL": "600"}))
	// TTL 0 to an offline device is dropped, but still 201 (as autopush).
	mustCreated(t, push(t, s, "now or never", map[string]string{"TTL": "0"}))
	waitFor(t, "expiry sweep", func() bool { return p.waiting() == 1 })
	d2 := connect(t, p, d.uaid)
	d2.subs = d.subs
	text, _ := d2.receive(5 * time.Second)
	if text != "long lived" {
		t.Fatalf("got %q", text)
	}
	// TTL 0 to a connected device is delivered.
	mustCreated(t, push(t, s, "now", map[string]string{"TTL": "0"}))
	text, _ = d2.receive(5 * time.Second)
	if text != "now" {
		t.Fatalf("TTL 0 to a connected device: got %q", text)
	}
	if v := p.metric(`pushrelay_messages_dropped_total{reason="ttl0_offline"}`); v != 1 {
		t.Fatalf("ttl0_offline drops = %v", v)
	}
	if v := p.metric(`pushrelay_store_messages_deleted_total{reason="expired"}`); v != 1 {
		t.Fatalf("expired = %v", v)
	}
}

// One socket per UAID: a second connection replaces the first.
func TestE2ETwoSockets(t *testing.T) {
	p := startRelay(t, t.TempDir())
	d1 := connect(t, p, "")
	s := d1.register("")
	d2 := connect(t, p, d1.uaid)
	d2.subs = d1.subs
	_, err := d1.c.Read(time.Now().Add(5 * time.Second))
	var ce *pushclient.CloseError
	if !errors.As(err, &ce) || ce.Code != 1011 {
		t.Fatalf("first socket: %v, want close 1011", err)
	}
	mustCreated(t, push(t, s, "to the newer socket", nil))
	if text, _ := d2.receive(5 * time.Second); text != "to the newer socket" {
		t.Fatalf("got %q", text)
	}
}

// SIGTERM closes device sockets with 1001, drains and exits 0.
func TestE2EGracefulShutdown(t *testing.T) {
	p := startRelay(t, t.TempDir())
	d := connect(t, p, "")
	d.register("")
	go p.Cmd.Process.Signal(syscall.SIGTERM)
	_, err := d.c.Read(time.Now().Add(10 * time.Second))
	var ce *pushclient.CloseError
	if !errors.As(err, &ce) || ce.Code != 1001 {
		t.Fatalf("device socket at shutdown: %v, want close 1001", err)
	}
	p.stop()
	if !strings.Contains(p.stderr.String(), "stopped") {
		t.Fatal("no 'stopped' log line")
	}
}

// SIGTERM does not wait for an app server's connection that has sent
// nothing (fasthttp would hold it until shutdown_timeout, 30 s here, so
// stop's 20 s wait fails on such code); a request in flight still gets its
// 201.
func TestE2EShutdownClosesIdleEndpointConnections(t *testing.T) {
	p := startRelay(t, t.TempDir(), "--shutdown-timeout", "30s")
	d := connect(t, p, "")
	s := d.register("")
	d.c.Close()
	host := strings.TrimPrefix(p.Endpoint, "http://")
	idle, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	// A push whose body is not all sent yet.
	body, _ := ece.Encrypt([]byte("in flight"), s.keys.PublicKey(), s.keys.Auth)
	busy, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busy.SetDeadline(time.Now().Add(20 * time.Second))
	path := s.endpoint[strings.Index(s.endpoint, "/wpush/"):]
	fmt.Fprintf(busy, "POST %s HTTP/1.1\r\nHost: %s\r\nTTL: 60\r\nContent-Encoding: aes128gcm\r\nContent-Length: %d\r\n\r\n%s", path, host, len(body), body[:10])
	waitFor(t, "the relay to have both connections", func() bool { return p.metric("pushrelay_endpoint_connections") == 2 })

	p.Cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, "shutting down", func() bool { return strings.Contains(p.stderr.String(), "shutting down") })
	busy.Write(body[10:])
	resp, err := http.ReadResponse(bufio.NewReader(busy), nil)
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("push in flight at SIGTERM: %v %v", resp, err)
	}
	idle.SetReadDeadline(time.Now().Add(20 * time.Second))
	if n, err := idle.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("idle connection: %d bytes, %v", n, err)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("idle connection still open 20 s after SIGTERM")
	}
	p.stop()
}

// Every message that got a 201 arrives after the relay is SIGKILLed while
// app servers are posting, and restarted.
func TestE2ESigkillLosesNothing(t *testing.T) {
	dir := t.TempDir()
	p := startRelay(t, dir)
	d := connect(t, p, "")
	var subs []*testSub
	for range 4 {
		subs = append(subs, d.register(""))
	}
	d.c.Close()

	var (
		mu    sync.Mutex
		acked = map[string]bool{}
		n     atomic.Int64
		wg    sync.WaitGroup
	)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	client := &http.Client{Timeout: 5 * time.Second}
	for w := range 8 {
		wg.Go(func() {
			s := subs[w%len(subs)]
			for i := 0; ctx.Err() == nil && i < 5000; i++ {
				text := fmt.Sprintf("w%d-%d", w, i)
				body, _ := ece.Encrypt([]byte(text), s.keys.PublicKey(), s.keys.Auth)
				req, _ := http.NewRequestWithContext(ctx, "POST", s.endpoint, strings.NewReader(string(body)))
				req.Header.Set("TTL", "3600")
				req.Header.Set("Content-Encoding", "aes128gcm")
				resp, err := client.Do(req)
				if err != nil {
					return // the relay died mid-request: not acknowledged
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 201 {
					mu.Lock()
					acked[text] = true
					mu.Unlock()
					n.Add(1)
				}
			}
		})
	}
	waitFor(t, "some messages acknowledged", func() bool { return n.Load() >= 300 })
	p.Kill()
	cancel()
	wg.Wait()
	t.Logf("%d messages got 201 before SIGKILL", len(acked))

	p2 := startRelay(t, dir, "--max-messages-per-uaid", "100000")
	d2 := connect(t, p2, d.uaid)
	if d2.uaid != d.uaid {
		t.Fatal("UAID lost across SIGKILL")
	}
	d2.subs = d.subs
	got := map[string]bool{}
	deadline := time.Now().Add(30 * time.Second)
	for missing(acked, got) > 0 && time.Now().Before(deadline) {
		text, _ := d2.receive(10 * time.Second)
		got[text] = true
	}
	if m := missing(acked, got); m > 0 {
		t.Fatalf("%d of %d acknowledged messages lost", m, len(acked))
	}
}

func missing(want, got map[string]bool) int {
	n := 0
	for k := range want {
		if !got[k] {
			n++
		}
	}
	return n
}

// A VAPID-bound (v2) subscription takes only messages signed by its key.
func TestE2EVAPID(t *testing.T) {
	p := startRelay(t, t.TempDir())
	priv, _ := vapid.GenerateKey()
	signer := vapid.NewSigner(priv)
	appKey := ece.EncodeKey(signer.PublicKey())
	d := connect(t, p, "")
	s := d.register(appKey)
	if !strings.Contains(s.endpoint, "/wpush/v2/") {
		t.Fatalf("keyed register gave %q", s.endpoint)
	}
	auth, err := signer.Header(p.Endpoint, "mailto:ops@example.net", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	mustCreated(t, push(t, s, "signed", map[string]string{"Authorization": auth}))
	if text, _ := d.receive(5 * time.Second); text != "signed" {
		t.Fatalf("got %q", text)
	}
	// Unsigned, signed by another key, or for another audience: 401 errno 109.
	other, _ := vapid.GenerateKey()
	otherAuth, _ := vapid.NewSigner(other).Header(p.Endpoint, "mailto:x@example.net", time.Now().Add(time.Hour))
	wrongAud, _ := signer.Header("https://elsewhere.example", "mailto:x@example.net", time.Now().Add(time.Hour))
	for name, h := range map[string]string{"unsigned": "", "other key": otherAuth, "wrong audience": wrongAud} {
		resp := pushRaw(t, s, "x", map[string]string{"Authorization": h})
		if resp.code != 401 || resp.errno != 109 {
			t.Errorf("%s: %d errno %d", name, resp.code, resp.errno)
		}
	}
}

type apiResp struct {
	code  int
	errno int
	body  string
}

func pushRaw(t *testing.T, s *testSub, text string, hdr map[string]string) apiResp {
	t.Helper()
	body, _ := ece.Encrypt([]byte(text), s.keys.PublicKey(), s.keys.Auth)
	return do(t, "POST", s.endpoint, body, mergeHeaders(map[string]string{"TTL": "60", "Content-Encoding": "aes128gcm"}, hdr))
}

func do(t *testing.T, method, url string, body []byte, hdr map[string]string) apiResp {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(string(body)))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e struct {
		Errno int `json:"errno"`
	}
	json.Unmarshal(b, &e)
	return apiResp{resp.StatusCode, e.Errno, string(b)}
}
