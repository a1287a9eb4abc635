package endpoint

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/vapid"
)

const batchSecret = "s3cret-batch-token"

// withBatchToken configures the batch token.
func withBatchToken(c *Config) { c.BatchToken = []byte(batchSecret) }

var bearer = map[string]string{"Authorization": "Bearer " + batchSecret}

// batchResponse is a batch's answer: the whole-request error, or the
// results.
type batchResponse struct {
	response
	results []batchResult
}

// postBatch posts msgs (marshalled as {"messages": msgs}) to base.
func (e *env) postBatch(base string, hdr map[string]string, msgs ...map[string]any) batchResponse {
	e.t.Helper()
	body, err := json.Marshal(map[string]any{"messages": msgs})
	if err != nil {
		e.t.Fatal(err)
	}
	return e.postBatchBody(base, hdr, body)
}

func (e *env) postBatchBody(base string, hdr map[string]string, body []byte) batchResponse {
	e.t.Helper()
	r := batchResponse{response: e.do("POST", base+"/wpush/batch", body, hdr)}
	if r.code == 200 {
		var out struct {
			Results []batchResult `json:"results"`
		}
		if err := json.Unmarshal([]byte(r.body), &out); err != nil {
			e.t.Fatalf("batch answer %q: %v", r.body, err)
		}
		r.results = out.Results
	}
	return r
}

// b64 is data as a batch carries it.
func b64(p []byte) string { return base64.RawURLEncoding.EncodeToString(p) }

// A batch is answered per message in request order: successes with their
// Location and queue size, failures with the single post's status and
// errno; the successes reach the devices and nothing of the failures is
// stored.
func TestBatchMixedOutcomes(t *testing.T) {
	e := newEnv(t, withBatchToken)
	d := e.connect("")
	s1 := d.subscribe(nil)
	s2 := e.subscribed()
	priv, _ := vapid.GenerateKey()
	s3 := e.connect("").subscribe(vapid.NewSigner(priv).PublicKey())
	gone := d.subscribe(nil)
	if _, err := d.c.Unregister(gone.channel); err != nil {
		t.Fatal(err)
	}
	tok := strings.TrimPrefix(s2.endpoint, e.base+"/wpush/v1/")
	big := make([]byte, DefaultMaxData+1)
	aesBody, encHdr, ckHdr, err := ece.EncryptAESGCM([]byte("legacy"), s1.keys.PublicKey(), s1.keys.Auth)
	if err != nil {
		t.Fatal(err)
	}
	r := e.postBatch(e.base, bearer,
		map[string]any{"endpoint": s1.endpoint, "ttl": 60, "encoding": "aes128gcm", "data": b64(s1.encrypt(t, "one"))},
		map[string]any{"token": tok, "version": "v1", "ttl": "120", "topic": "t1"},
		map[string]any{"token": "nonsense", "ttl": 60},
		map[string]any{"endpoint": s3.endpoint, "ttl": 60},
		map[string]any{"endpoint": s2.endpoint},
		map[string]any{"endpoint": s2.endpoint, "ttl": 60, "topic": "not a topic!"},
		map[string]any{"endpoint": s2.endpoint, "ttl": 60, "encoding": "aes128gcm", "data": b64(big)},
		map[string]any{"endpoint": s2.endpoint, "ttl": 60, "encoding": "aesgcm", "data": b64([]byte("xx"))},
		map[string]any{"endpoint": gone.endpoint, "ttl": 60},
		map[string]any{"endpoint": s2.endpoint, "ttl": 60, "urgency": "HIGH"},
		// Padding is tolerated; the quoted header reaches the device in
		// autopush's form, as from a single post.
		map[string]any{"endpoint": s1.endpoint, "ttl": 60, "encoding": "aesgcm", "encryption": strings.Replace(encHdr, "salt=", `salt="`, 1) + `"`, "crypto_key": ckHdr,
			"data": base64.URLEncoding.EncodeToString(aesBody)},
		map[string]any{"endpoint": s2.endpoint, "ttl": -1},
		map[string]any{"endpoint": s2.endpoint, "ttl": 60, "data": "!!!"},
	)
	if r.code != 200 {
		t.Fatalf("batch: %d %s", r.code, r.body)
	}
	want := []struct{ status, errno, queue int }{
		{201, 0, 1}, {201, 0, 1}, {404, 102, 0}, {401, 109, 0}, {400, 111, 0}, {400, 113, 0},
		{413, 104, 0}, {400, 101, 0}, {410, 106, 0}, {201, 0, 2}, {201, 0, 2}, {400, 114, 0}, {400, 124, 0},
	}
	if len(r.results) != len(want) {
		t.Fatalf("%d results for %d messages: %s", len(r.results), len(want), r.body)
	}
	for i, w := range want {
		got := r.results[i]
		q := 0
		if got.QueueSize != nil {
			q = *got.QueueSize
		}
		if got.Status != w.status || got.Errno != w.errno || q != w.queue {
			t.Errorf("result %d: %+v (queue %d), want %+v", i, got, q, w)
		}
		if w.status == 201 && !strings.HasPrefix(got.Location, e.base+"/m/") {
			t.Errorf("result %d: location %q", i, got.Location)
		}
		if w.status != 201 && (got.Location != "" || got.QueueSize != nil || got.Error == "" || got.Message == "") {
			t.Errorf("result %d: failure %+v", i, got)
		}
	}
	// The connected device gets both its messages, decryptable.
	for _, text := range []string{"one", "legacy"} {
		n, err := d.c.Next(time.Now().Add(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := ece.DecodeKey(n.Data)
		var plain []byte
		if n.Headers.Encoding == "aesgcm" {
			if n.Headers.Encryption != encHdr {
				t.Errorf("aesgcm Encryption reached the device as %q", n.Headers.Encryption)
			}
			plain, err = ece.DecryptAESGCM(raw, s1.keys, n.Headers.Encryption, n.Headers.CryptoKey)
		} else {
			plain, err = ece.Decrypt(raw, s1.keys)
		}
		if err != nil || string(plain) != text {
			t.Errorf("device got %q, %v; want %q", plain, err, text)
		}
	}
	if w := e.waiting(); w != 4 {
		t.Errorf("waiting %d, want 4", w)
	}
	// A message id of a batch is one DELETE takes.
	if r := e.do("DELETE", r.results[1].Location, nil, nil); r.code != 204 {
		t.Errorf("delete: %d %s", r.code, r.body)
	}
	if v := e.metric(`pushrelay_endpoint_batches_total{result="accepted"}`); v != 1 {
		t.Errorf("accepted batches %v", v)
	}
	if v := e.metric(`pushrelay_endpoint_batch_results_total{errno="0",status="201"}`); v != 4 {
		t.Errorf("201 results %v", v)
	}
	if v := e.metric(`pushrelay_endpoint_batch_results_total{errno="124",status="400"}`); v != 1 {
		t.Errorf("400/124 results %v", v)
	}
}

// A batch authenticates once: with the batch token for v1 endpoints, with
// VAPID for v2 endpoints bound to that key. A message the credentials do
// not cover fails alone, 401 errno 109; credentials that are missing or
// wrong refuse the whole batch.
func TestBatchAuth(t *testing.T) {
	e := newEnv(t, withBatchToken)
	priv, _ := vapid.GenerateKey()
	signer := vapid.NewSigner(priv)
	other, _ := vapid.GenerateKey()
	otherSigner := vapid.NewSigner(other)
	d := e.connect("")
	v1 := d.subscribe(nil)
	v2 := d.subscribe(signer.PublicKey())
	v2other := d.subscribe(otherSigner.PublicKey())
	exp := time.Now().Add(time.Hour)
	auth, err := signer.Header(e.base, "mailto:ops@example.net", exp)
	if err != nil {
		t.Fatal(err)
	}
	wrongAud, _ := signer.Header("https://elsewhere.example", "mailto:ops@example.net", exp)
	jwt, _ := signer.Sign(e.base, "mailto:ops@example.net", exp)
	legacy := map[string]string{"Authorization": "WebPush " + jwt, "Crypto-Key": "p256ecdsa=" + ece.EncodeKey(signer.PublicKey())}
	legacyBearer := map[string]string{"Authorization": "Bearer " + jwt, "Crypto-Key": "p256ecdsa=" + ece.EncodeKey(signer.PublicKey())}
	msgs := []map[string]any{
		{"endpoint": v1.endpoint, "ttl": 60},
		{"endpoint": v2.endpoint, "ttl": 60},
		{"endpoint": v2other.endpoint, "ttl": 60},
	}
	for name, c := range map[string]struct {
		hdr    map[string]string
		code   int
		errno  int
		status [3]int
	}{
		"token":         {bearer, 200, 0, [3]int{201, 401, 401}},
		"vapid":         {map[string]string{"Authorization": auth}, 200, 0, [3]int{401, 201, 401}},
		"webpush":       {legacy, 200, 0, [3]int{401, 201, 401}},
		"bearer vapid":  {legacyBearer, 200, 0, [3]int{401, 201, 401}},
		"none":          {nil, 401, 109, [3]int{}},
		"wrong token":   {map[string]string{"Authorization": "Bearer nope"}, 401, 109, [3]int{}},
		"wrong aud":     {map[string]string{"Authorization": wrongAud}, 401, 109, [3]int{}},
		"garbage vapid": {map[string]string{"Authorization": "vapid t=x,k=y"}, 401, 109, [3]int{}},
	} {
		r := e.postBatch(e.base, c.hdr, msgs...)
		if r.code != c.code || r.errno != c.errno {
			t.Errorf("%s: %d %s", name, r.code, r.body)
			continue
		}
		for i, st := range c.status {
			if c.code == 200 && (r.results[i].Status != st || st == 401 && r.results[i].Errno != 109) {
				t.Errorf("%s: message %d: %+v, want %d", name, i, r.results[i], st)
			}
		}
	}
	// Without a configured token, a token batch is refused with its own
	// errno; VAPID batches still work.
	base := e.serveConfig(func(*Config) {})
	if r := e.postBatch(base, bearer, msgs...); r.code != 401 || r.errno != 125 {
		t.Errorf("no token configured: %d %s", r.code, r.body)
	}
	if r := e.postBatch(base, map[string]string{"Authorization": auth}, msgs[1]); r.code != 200 || r.results[0].Status != 201 {
		t.Errorf("vapid without a token configured: %d %s", r.code, r.body)
	}
}

// Whole-request problems get one JSON error: malformed bodies 400 errno
// 124, too many messages or bytes 413. A batch body may be larger than a
// single post's limit, which single posts keep.
func TestBatchLimits(t *testing.T) {
	const maxData = 1000
	e := newEnv(t, func(c *Config) { withBatchToken(c); c.MaxData = maxData; c.BatchMaxMessages = 5 })
	s := e.subscribed()
	for name, body := range map[string]string{
		"not json":      "{",
		"not an object": "[]",
		"no messages":   `{"messages": []}`,
		"null messages": `{"messages": null}`,
		"wrong type":    `{"messages": [{"endpoint": 5}]}`,
		"trailing data": `{"messages": [{"token": "x"}]} {}`,
		"cut short":     `{"messages": [{"token": "x"}`,
		"empty":         "",
	} {
		if r := e.postBatchBody(e.base, bearer, []byte(body)); r.code != 400 || r.errno != 124 {
			t.Errorf("%s: %d %s", name, r.code, r.body)
		}
	}
	msg := map[string]any{"endpoint": s.endpoint, "ttl": 60, "encoding": "aes128gcm", "data": b64(s.encrypt(t, strings.Repeat("x", maxData-103)))}
	if r := e.postBatch(e.base, bearer, msg, msg, msg, msg, msg, msg); r.code != 413 || r.errno != 104 {
		t.Errorf("6 messages: %d %s", r.code, r.body)
	}
	// Five messages at the data limit: more than a single post may carry,
	// within the batch's limit.
	r := e.postBatch(e.base, bearer, msg, msg, msg, msg, msg)
	if r.code != 200 || len(r.results) != 5 || r.results[4].Status != 201 {
		t.Fatalf("5 full messages: %d %s", r.code, r.body)
	}
	if r := e.do("POST", s.endpoint, bytes.Repeat([]byte("x"), maxData+1), with(aes128, "TTL", "60")); r.code != 413 || r.errno != 104 {
		t.Errorf("single post over MaxData: %d %s", r.code, r.body)
	}
	huge := bytes.Repeat([]byte(" "), batchMaxBytes(5, maxData)+1)
	if r := e.postBatchBody(e.base, bearer, huge); r.code != 413 || r.errno != 104 {
		t.Errorf("body over the batch limit: %d %s", r.code, r.body)
	}
	// The refused requests gave their slots back.
	for range DefaultBatchConcurrency + 1 {
		if r := e.postBatch(e.base, bearer, map[string]any{"endpoint": s.endpoint, "ttl": 0}); r.code != 200 {
			t.Fatalf("after the refusals: %d %s", r.code, r.body)
		}
	}
}

// gatePusher holds every call until released, except while pass is set
// (single posts and batches both come through Ingest); then it goes
// straight to the hub.
type gatePusher struct {
	Pusher
	started, release chan struct{}
	pass             atomic.Bool
}

func (p *gatePusher) Ingest(ctx context.Context, ms []push.Message) ([]relay.Result, error) {
	if !p.pass.Load() {
		p.started <- struct{}{}
		<-p.release
	}
	return p.Pusher.Ingest(ctx, ms)
}

// slotTaken serves an API with one batch slot whose pushes wait at p's
// gate, and a subscription s; msg is a batch message for s.
func slotTaken(t *testing.T) (e *env, s *subscription, p *gatePusher, base string, msg map[string]any) {
	e = newEnv(t, nil)
	s = e.subscribed()
	p = &gatePusher{Pusher: e.hub, started: make(chan struct{}), release: make(chan struct{})}
	base = e.serveConfig(func(c *Config) { withBatchToken(c); c.Pusher = p; c.BatchConcurrency = 1 })
	return e, s, p, base, map[string]any{"endpoint": s.endpoint, "ttl": 60}
}

// At most BatchConcurrency batches are held at once; one more is answered
// 503 errno 121 with Retry-After, its body unread, and single posts go on.
func TestBatchConcurrency(t *testing.T) {
	e, s, p, base, msg := slotTaken(t)
	var wg sync.WaitGroup
	var first batchResponse
	wg.Go(func() { first = e.postBatch(base, bearer, msg) })
	<-p.started
	// A big body: refused without being read.
	body, _ := json.Marshal(map[string]any{"messages": []any{msg}, "pad": strings.Repeat("x", 100_000)})
	r := e.postBatchBody(base, bearer, body)
	if r.code != 503 || r.errno != 121 || r.header.Get("Retry-After") == "" {
		t.Errorf("second batch: %d %s %v", r.code, r.body, r.header)
	}
	p.pass.Store(true)
	if r := e.do("POST", base+s.path(t, e.base), nil, map[string]string{"TTL": "60"}); r.code != 201 {
		t.Errorf("single post while the batch slot is taken: %d %s", r.code, r.body)
	}
	p.pass.Store(false)
	p.release <- struct{}{}
	wg.Wait()
	if first.code != 200 || first.results[0].Status != 201 || *first.results[0].QueueSize != 2 {
		t.Errorf("first batch: %d %s", first.code, first.body)
	}
	go func() { <-p.started; p.release <- struct{}{} }()
	if r := e.postBatch(base, bearer, msg); r.code != 200 {
		t.Errorf("batch after the first: %d %s", r.code, r.body)
	}
}

// Many batches at once on several connections, with a slot each at most:
// every one is answered 200 or 503, and the slots all come back.
func TestBatchSlotsComeBack(t *testing.T) {
	e := newEnv(t, func(c *Config) { withBatchToken(c); c.BatchConcurrency = 2 })
	s := e.subscribed()
	msg := map[string]any{"endpoint": s.endpoint, "ttl": 60}
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			client := &http.Client{Transport: &http.Transport{}}
			defer client.CloseIdleConnections()
			for range 10 {
				body, _ := json.Marshal(map[string]any{"messages": []any{msg, msg}})
				req, _ := http.NewRequest("POST", e.base+"/wpush/batch", bytes.NewReader(body))
				req.Header.Set("Authorization", bearer["Authorization"])
				resp, err := client.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				mu.Lock()
				codes[resp.StatusCode]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if codes[200]+codes[503] != 80 || codes[200] == 0 {
		t.Errorf("answers %v", codes)
	}
	if n := len(e.api.batch.slots); n != 0 {
		t.Errorf("%d slots still taken", n)
	}
	if r := e.postBatch(e.base, bearer, msg); r.code != 200 {
		t.Errorf("after: %d %s", r.code, r.body)
	}
	t.Log(fmt.Sprint(codes))
}

// A slot whose request the server dropped without calling the handler or
// the error handler is reclaimed once it is older than stale, when a
// batch finds no slot free.
func TestBatchGateReclaimsStaleSlots(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	g := newBatchGate(1, time.Minute, func() time.Time { return now })
	h1, h2, h3 := new(int), new(int), new(int)
	if !g.take(h1) {
		t.Fatal("first take failed")
	}
	if g.take(h2) {
		t.Fatal("second take got a slot")
	}
	now = now.Add(30 * time.Second)
	if g.take(h3) {
		t.Fatal("a fresh slot was reclaimed")
	}
	now = now.Add(31 * time.Second)
	if !g.take(h3) {
		t.Fatal("the stale slot was not reclaimed")
	}
	if m, ok := g.mark(h1); ok {
		t.Fatalf("h1 still marked %+v", m)
	}
	g.release(h3)
	g.release(h2)
	if len(g.slots) != 0 || g.n.Load() != 0 {
		t.Fatalf("%d slots, %d marks left", len(g.slots), g.n.Load())
	}
}

// A batch refused unread (every slot taken) gets its 503 even when the
// app server reads the answer only after it has sent the whole body: the
// connection is closed gracefully, not reset with the body unread.
func TestBatchRefusedUnreadAnswerArrives(t *testing.T) {
	e, _, p, base, msg := slotTaken(t)
	var wg sync.WaitGroup
	wg.Go(func() { e.postBatch(base, bearer, msg) })
	<-p.started
	defer func() { p.release <- struct{}{}; wg.Wait() }()

	// Bigger than what the sockets hold unread with a small send
	// buffer (the relay's receive buffer does not grow while it does not
	// read), smaller than what the relay discards: the app server is
	// still writing when the relay has answered.
	body, _ := json.Marshal(map[string]any{"messages": []any{msg}, "pad": strings.Repeat("x", 600_000)})
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.(*net.TCPConn).SetWriteBuffer(4096); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "POST /wpush/batch HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", bearer["Authorization"], len(body))
	if _, err := c.Write(body); err != nil {
		t.Fatalf("writing the body: %v", err)
	}
	// The answer and the close have happened by now; read only then.
	time.Sleep(200 * time.Millisecond)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("the refusal's answer was lost: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("answer %d %v", resp.StatusCode, resp.Header)
	}
}
