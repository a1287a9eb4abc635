package endpoint

import (
	"bufio"
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/push"
)

// rawExchange writes raw on a new connection to host and reads every
// answer until the relay closes the connection. The read deadline is far
// below the API's read timeout in these tests (a minute), so an answer
// that only a timeout would bring fails the test.
func rawExchange(t *testing.T, host, raw string) (resps []*http.Response, bodies []string, closed bool) {
	t.Helper()
	c, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return resps, bodies, false
			}
			return resps, bodies, true
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		resps, bodies = append(resps, resp), append(bodies, string(b))
	}
}

func slowReads(c *Config) { c.ReadTimeout, c.IdleTimeout = time.Minute, time.Minute }

// RFC 9112 framing: what a proxy in front could read differently is refused
// and the connection closed, at once.
func TestFraming(t *testing.T) {
	e := newEnv(t, slowReads)
	s := e.subscribed()
	host := e.host()
	path := s.path(t, e.base)
	body := string(s.encrypt(t, "hello"))
	cl := "Content-Length: " + strconv.Itoa(len(body)) + "\r\n"
	chunked := strconv.FormatInt(int64(len(body)), 16) + "\r\n" + body + "\r\n0\r\n\r\n"
	head := "POST " + path + " HTTP/1.1\r\nHost: " + host + "\r\nTTL: 60\r\nContent-Encoding: aes128gcm\r\n"
	hidden := "DELETE /m/hidden HTTP/1.1\r\nHost: " + host + "\r\n\r\n"
	lf := func(s string) string { return strings.ReplaceAll(s, "\r\n", "\n") }
	cases := []struct {
		name  string
		raw   string
		code  int
		errno int
	}{
		{"Content-Length then Transfer-Encoding", head + cl + "Transfer-Encoding: chunked\r\n\r\n" + chunked + hidden, 400, 122},
		{"Transfer-Encoding then Content-Length", head + "Transfer-Encoding: chunked\r\n" + cl + "\r\n" + chunked + hidden, 400, 122},
		{"identity with Content-Length", head + "Transfer-Encoding: identity\r\n" + cl + "\r\n" + body, 400, 122},
		{"identity alone", head + "Transfer-Encoding: identity\r\n\r\n" + body, 501, 123},
		{"gzip", head + "Transfer-Encoding: gzip\r\n\r\n" + body, 501, 123},
		{"gzip, chunked", head + "Transfer-Encoding: gzip, chunked\r\n\r\n" + chunked, 501, 123},
		{"Transfer-Encoding on HTTP/1.0", strings.Replace(head, "HTTP/1.1", "HTTP/1.0", 1) + "Transfer-Encoding: chunked\r\n\r\n" + chunked, 400, 117},
		{"bare LF throughout", lf(head+cl+"\r\n") + body, 400, 117},
		{"bare LF GET", "GET / HTTP/1.1\nHost: x\n\n", 400, 117},
		{"bare LF ending the head", head + cl + "\n" + body, 400, 117},
		{"bare LF in one field", head + "X-A: b\n" + cl + "\r\n" + body, 400, 117},
		{"bare LF after a good request", head + cl + "\r\n" + body + lf(head+cl+"\r\n") + body, 400, 117},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resps, bodies, closed := rawExchange(t, host, c.raw)
			if !closed {
				t.Fatalf("no close within 10s; %d answers", len(resps))
			}
			if len(resps) == 0 {
				t.Fatal("connection closed without an answer")
			}
			last := resps[len(resps)-1]
			if last.StatusCode != c.code || !strings.Contains(bodies[len(bodies)-1], `"errno":`+strconv.Itoa(c.errno)+",") {
				t.Fatalf("%d %s, want %d errno %d", last.StatusCode, bodies[len(bodies)-1], c.code, c.errno)
			}
			if !last.Close {
				t.Fatal("answer without Connection: close")
			}
			for _, r := range resps[:len(resps)-1] {
				if r.StatusCode != 201 {
					t.Fatalf("an answer before the refusal: %d", r.StatusCode)
				}
			}
		})
	}
}

// The head check follows Content-Length: bodies with LF bytes, pipelined
// requests and Expect: 100-continue are served as before.
func TestFramingKeepsGoodRequests(t *testing.T) {
	e := newEnv(t, slowReads)
	s := e.subscribed()
	host := e.host()
	path := s.path(t, e.base)
	// A body full of LF, CR LF and blank lines, on a route that answers
	// 404 after reading it.
	lfBody := "\n\n\r\n\r\nGET / HTTP/1.1\nHost: x\n\n"
	junk := "POST /nothing HTTP/1.1\r\nHost: " + host + "\r\nContent-Length: " + strconv.Itoa(len(lfBody)) + "\r\n\r\n" + lfBody
	var raw strings.Builder
	want := []int{}
	for i := range 5 {
		body := string(s.encrypt(t, "m"+strconv.Itoa(i)))
		raw.WriteString(junk)
		raw.WriteString("\r\n") // a blank line between requests is allowed
		raw.WriteString("POST " + path + " HTTP/1.1\r\nHost: " + host + "\r\nTTL: 60\r\nContent-Encoding: aes128gcm\r\ncontent-length:  " + strconv.Itoa(len(body)) + " \r\n\r\n" + body)
		want = append(want, 404, 201)
	}
	raw.WriteString("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	want = append(want, 404)
	resps, bodies, closed := rawExchange(t, host, raw.String())
	if !closed || len(resps) != len(want) {
		t.Fatalf("closed %v after %d answers, want %d", closed, len(resps), len(want))
	}
	for i, r := range resps {
		if r.StatusCode != want[i] {
			t.Fatalf("answer %d: %d %s, want %d", i, r.StatusCode, bodies[i], want[i])
		}
	}

	// 100-continue: the body follows an interim answer.
	body := string(s.encrypt(t, "after continue")) + "\n\n"
	c, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "POST "+path+" HTTP/1.1\r\nHost: "+host+"\r\nTTL: 60\r\nContent-Encoding: aes128gcm\r\nExpect: 100-continue\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n")
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100") {
		t.Fatalf("interim answer %q, %v", line, err)
	}
	br.ReadString('\n')
	io.WriteString(c, body)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The body's LF bytes do not count as a head's.
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 201 {
		t.Fatalf("after 100-continue: %d %s", resp.StatusCode, b)
	}
}

// Connections over Concurrency are answered 503 errno 121 with
// Retry-After at once and closed; a place freed serves again.
func TestConcurrencyCap(t *testing.T) {
	e := newEnv(t, func(c *Config) { slowReads(c); c.Concurrency = 2 })
	host := e.host()
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	// The held connections are accepted in order; wait until both count.
	waitUntil(t, func() bool { return e.metric("pushrelay_endpoint_connections") == 2 })
	resps, bodies, closed := rawExchange(t, host, "DELETE /m/x HTTP/1.1\r\nHost: x\r\n\r\n")
	if !closed || len(resps) != 1 || resps[0].StatusCode != 503 || !strings.Contains(bodies[0], `"errno":121`) ||
		resps[0].Header.Get("Retry-After") != "5" || resps[0].Header.Get("Content-Type") != "application/json" {
		t.Fatalf("over the cap: closed %v, %d answers %v", closed, len(resps), bodies)
	}
	if n := e.metric("pushrelay_endpoint_connections_refused_total"); n != 1 {
		t.Fatalf("refused = %v", n)
	}
	held[0].Close()
	waitUntil(t, func() bool { return e.metric("pushrelay_endpoint_connections") == 1 })
	if r := e.do("DELETE", e.base+"/m/x", nil, nil); r.code != 404 {
		t.Fatalf("after a place freed: %d %s", r.code, r.body)
	}
	held[1].Close()
}

// blockingPusher waits for its context, or for release.
type blockingPusher struct {
	started chan struct{}
	release chan struct{}
}

func (p *blockingPusher) Push(ctx context.Context, m push.Message) (relay.Result, error) {
	p.started <- struct{}{}
	select {
	case <-ctx.Done():
		return relay.Result{}, ctx.Err()
	case <-p.release:
		return relay.Result{ID: "x", Stored: true}, nil
	}
}
func (p *blockingPusher) Ingest(ctx context.Context, ms []push.Message) ([]relay.Result, error) {
	rs := make([]relay.Result, len(ms))
	for i := range rs {
		rs[i], rs[i].Err = p.Push(ctx, ms[i])
		if rs[i].Err != nil {
			return rs, nil
		}
	}
	return rs, nil
}
func (p *blockingPusher) Delete(ctx context.Context, id string) error {
	<-ctx.Done()
	return ctx.Err()
}

// A push the store does not take within RequestTimeout is answered 503
// errno 120 with Retry-After.
func TestRequestTimeout(t *testing.T) {
	e := newEnv(t, nil)
	d := e.connect("")
	s := d.subscribe(nil)
	p := &blockingPusher{started: make(chan struct{}, 1), release: make(chan struct{})}
	base := e.serveConfig(func(c *Config) { c.Pusher = p; c.RequestTimeout = 50 * time.Millisecond })
	r := e.do("POST", base+s.path(t, e.base), s.encrypt(t, "x"), with(aes128, "TTL", "60"))
	if r.code != 503 || r.errno != 120 || r.header.Get("Retry-After") != "10" {
		t.Fatalf("%d %s Retry-After %q", r.code, r.body, r.header.Get("Retry-After"))
	}
	if r := e.do("DELETE", base+"/m/x", nil, nil); r.code != 503 || r.errno != 120 {
		t.Fatalf("delete: %d %s", r.code, r.body)
	}
}

// noSpacePusher fails like the hub does when bbolt cannot write: the
// ENOSPC wrapped in the store's and the hub's errors.
type noSpacePusher struct {
	mu   sync.Mutex
	full bool
}

func (p *noSpacePusher) Push(ctx context.Context, m push.Message) (relay.Result, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.full {
		return relay.Result{}, &wrapped{"store message", &wrapped{"store commit", &fs.PathError{Op: "write", Path: "pushrelay.db", Err: syscall.ENOSPC}}}
	}
	return relay.Result{ID: "x", Stored: true}, nil
}
func (p *noSpacePusher) Ingest(ctx context.Context, ms []push.Message) ([]relay.Result, error) {
	rs := make([]relay.Result, len(ms))
	for i := range rs {
		rs[i], rs[i].Err = p.Push(ctx, ms[i])
	}
	return rs, nil
}
func (p *noSpacePusher) Delete(context.Context, string) error { return nil }

type wrapped struct {
	op  string
	err error
}

func (w *wrapped) Error() string { return w.op + ": " + w.err.Error() }
func (w *wrapped) Unwrap() error { return w.err }

// logCounter counts log records by message.
type logCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (l *logCounter) Enabled(context.Context, slog.Level) bool { return true }
func (l *logCounter) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n[r.Message]++
	return nil
}
func (l *logCounter) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCounter) WithGroup(string) slog.Handler      { return l }
func (l *logCounter) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n[msg]
}

// A store out of space: 507 errno 119 with Retry-After, one log line per
// interval with a count, DiskFull says since when; the first push that is
// stored ends it.
func TestDiskFull(t *testing.T) {
	e := newEnv(t, nil)
	d := e.connect("")
	s := d.subscribe(nil)
	p := &noSpacePusher{full: true}
	logs := &logCounter{n: map[string]int{}}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var clock sync.Mutex
	api := e.serveAPIConfig(func(c *Config) {
		c.Pusher, c.Logger, c.LogInterval = p, slog.New(logs), time.Minute
		c.Now = func() time.Time { clock.Lock(); defer clock.Unlock(); return now }
	})
	base := api.base
	advance := func(d time.Duration) { clock.Lock(); now = now.Add(d); clock.Unlock() }
	url := base + s.path(t, e.base)
	body := s.encrypt(t, "x")
	start := now
	for i := range 50 {
		r := e.do("POST", url, body, with(aes128, "TTL", "60"))
		if r.code != 507 || r.errno != 119 || r.header.Get("Retry-After") != "60" {
			t.Fatalf("push %d: %d %s Retry-After %q", i, r.code, r.body, r.header.Get("Retry-After"))
		}
		advance(2 * time.Second) // 50 pushes over 100 s: two intervals
	}
	if n := logs.count("store is out of space: pushes are refused with 507 until a write succeeds"); n != 1 {
		t.Fatalf("first line logged %d times", n)
	}
	if n := logs.count("store still out of space"); n != 1 {
		t.Fatalf("interval lines: %d, want 1 (at 60 s)", n)
	}
	if n := logs.count("push failed"); n != 0 {
		t.Fatalf("%d error lines per push", n)
	}
	since, refused := api.api.DiskFull()
	if !since.Equal(start) || refused != 50 {
		t.Fatalf("DiskFull = %v, %d", since, refused)
	}
	if v := e.metricOf(api.reg, "pushrelay_endpoint_store_full"); v != 1 {
		t.Fatalf("store_full gauge %v", v)
	}
	p.mu.Lock()
	p.full = false
	p.mu.Unlock()
	if r := e.do("POST", url, body, with(aes128, "TTL", "60")); r.code != 201 {
		t.Fatalf("after space freed: %d %s", r.code, r.body)
	}
	if since, _ := api.api.DiskFull(); !since.IsZero() {
		t.Fatalf("still full since %v", since)
	}
	if logs.count("store writes again") != 1 || e.metricOf(api.reg, "pushrelay_endpoint_store_full") != 0 {
		t.Fatal("the end of the state is neither logged nor in the gauge")
	}
}

// Shutdown closes a connection that has sent nothing at once (fasthttp
// alone would wait for its read timeout, a minute here) and lets a push in
// flight finish with its 201.
func TestShutdownClosesUnusedConnections(t *testing.T) {
	e := newEnv(t, nil)
	d := e.connect("")
	s := d.subscribe(nil)
	p := &blockingPusher{started: make(chan struct{}, 1), release: make(chan struct{})}
	sv := e.serveAPIConfig(func(c *Config) { c.Pusher = p; slowReads(c) })
	host := strings.TrimPrefix(sv.base, "http://")
	unused, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer unused.Close()
	waitUntil(t, func() bool { return sv.reg.Value("pushrelay_endpoint_connections") == 1 })
	// A push in flight.
	body := s.encrypt(t, "x")
	done := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest("POST", sv.base+s.path(t, e.base), strings.NewReader(string(body)))
		req.Header.Set("TTL", "60")
		req.Header.Set("Content-Encoding", "aes128gcm")
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- 0
			return
		}
		r.Body.Close()
		done <- r.StatusCode
	}()
	<-p.started
	// Shutdown must return before its deadline: it is far below the read
	// timeout, so waiting for the unused connection would fail here.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- sv.api.Shutdown(ctx) }()
	unused.SetReadDeadline(time.Now().Add(15 * time.Second))
	if n, err := unused.Read(make([]byte, 1)); n != 0 || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		t.Fatalf("unused connection: %d bytes, %v", n, err)
	}
	close(p.release)
	if code := <-done; code != 201 {
		t.Fatalf("in-flight push: %d", code)
	}
	if err := <-shut; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// With the real store: a push whose deadline has passed before the store
// takes it is 503 errno 120 and not stored.
func TestRequestTimeoutRealStore(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.RequestTimeout = time.Nanosecond })
	s := e.subscribed()
	r := e.do("POST", s.endpoint, s.encrypt(t, "late"), with(aes128, "TTL", "60"))
	if r.code != 503 || r.errno != 120 || r.header.Get("Retry-After") != "10" {
		t.Fatalf("%d %s", r.code, r.body)
	}
	if w := e.waiting(); w != 0 {
		t.Fatalf("a refused push was stored: %d waiting", w)
	}
}

// An HTTP/1.1 request without Host is refused by both servers, as a JSON
// error with the connection closed.
func TestMissingHost(t *testing.T) {
	e := newEnv(t, slowReads)
	s := e.subscribed()
	body := string(s.encrypt(t, "hello"))
	raw := "POST " + s.path(t, e.base) + " HTTP/1.1\r\nTTL: 60\r\nContent-Encoding: aes128gcm\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
	resps, bodies, closed := rawExchange(t, e.host(), raw)
	if !closed || len(resps) != 1 {
		t.Fatalf("closed %v after %d answers", closed, len(resps))
	}
	if resps[0].StatusCode != 400 || !strings.Contains(bodies[0], `"errno":117,`) || resps[0].Header.Get("Content-Type") != "application/json" {
		t.Fatalf("%d %q %s, want 400 errno 117", resps[0].StatusCode, resps[0].Header.Get("Content-Type"), bodies[0])
	}
	if w := e.waiting(); w != 0 {
		t.Fatalf("stored %d messages", w)
	}
}
