package endpoint

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/token"
	"github.com/pushrelay/pushrelay/relay/vapid"
	"github.com/pushrelay/pushrelay/relay/wsock"
)

// env is a relay in the test process: a real store and hub, the device
// listener and the endpoint API each on a loopback httptest server.
type env struct {
	t      testing.TB
	st     *store.Store
	hub    *relay.Hub
	tokens *token.Codec
	api    *API
	reg    *metrics.Registry // the API's metrics
	base   string            // the endpoint API's URL, also its PublicURL
	device string            // ws:// URL of the device listener
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func newEnv(t testing.TB, tweak func(*Config)) *env {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	if _, fuzzing := t.(*testing.F); !fuzzing {
		log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	st, err := store.Open(store.Options{Path: filepath.Join(t.TempDir(), "pushrelay.db"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	key := make([]byte, token.KeySize)
	rand.Read(key)
	tokens, err := token.New(key)
	if err != nil {
		t.Fatal(err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	minter, err := NewMinter(tokens, base)
	if err != nil {
		t.Fatal(err)
	}
	hub, err := relay.New(relay.Config{Store: st, Tokens: tokens, Endpoints: minter, CheckKey: vapid.DecodePublicKey, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hub.Close() })
	reg := metrics.NewRegistry()
	cfg := Config{Tokens: tokens, Pusher: hub, PublicURL: base, Logger: log, Metrics: reg}
	if tweak != nil {
		tweak(&cfg)
	}
	api, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	serveAPI(t, api, ln)
	devSrv := httptest.NewServer(wsock.Handler(wsock.Options{}, func(c *wsock.Conn) { hub.Accept(c) }))
	t.Cleanup(devSrv.Close)
	return &env{t: t, st: st, hub: hub, tokens: tokens, api: api, reg: reg, base: base,
		device: "ws" + strings.TrimPrefix(devSrv.URL, "http")}
}

// serveAPI serves api on ln until the test ends.
func serveAPI(t testing.TB, api *API, ln net.Listener) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- api.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := api.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		api.Close()
	})
}

// serveWith serves a second API, with the env's tokens and public URL but
// p as its Pusher, on a listener of its own, and returns its base URL.
func (e *env) serveWith(p Pusher) string {
	e.t.Helper()
	api, err := New(Config{Tokens: e.tokens, Pusher: p, PublicURL: e.base})
	if err != nil {
		e.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	serveAPI(e.t, api, ln)
	return "http://" + ln.Addr().String()
}

// served is a second API of a test.
type served struct {
	api  *API
	reg  *metrics.Registry
	base string
}

// serveAPIConfig serves a second API with the env's tokens and public URL
// and what tweak changes, on a listener of its own.
func (e *env) serveAPIConfig(tweak func(*Config)) served {
	e.t.Helper()
	reg := metrics.NewRegistry()
	cfg := Config{Tokens: e.tokens, Pusher: e.hub, PublicURL: e.base, Metrics: reg}
	tweak(&cfg)
	api, err := New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	serveAPI(e.t, api, ln)
	return served{api: api, reg: reg, base: "http://" + ln.Addr().String()}
}

// serveConfig is serveAPIConfig's base URL.
func (e *env) serveConfig(tweak func(*Config)) string { return e.serveAPIConfig(tweak).base }

// metric is one series of the env's API metrics.
func (e *env) metric(series string) float64 { return e.metricOf(e.reg, series) }

func (e *env) metricOf(reg *metrics.Registry, series string) float64 { return reg.Value(series) }

// waitUntil polls cond for up to 10 s.
func waitUntil(t testing.TB, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testDevice is a device connected over the real WebSocket listener.
type testDevice struct {
	t testing.TB
	c *pushclient.Client
}

func (e *env) connect(uaid string) *testDevice {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pushclient.Dial(ctx, e.device)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Abort() })
	c.Timeout = 5 * time.Second
	if _, err := c.Hello(uaid, pushclient.HelloOptions{}); err != nil {
		e.t.Fatal(err)
	}
	return &testDevice{t: e.t, c: c}
}

// subscription is what a browser hands an app server.
type subscription struct {
	channel  string
	endpoint string
	keys     *ece.Subscription
}

func (d *testDevice) subscribe(appKey []byte) *subscription {
	d.t.Helper()
	var id push.ChannelID
	rand.Read(id[:])
	id[6] = id[6]&0x0f | 0x40
	id[8] = id[8]&0x3f | 0x80
	key := ""
	if appKey != nil {
		key = ece.EncodeKey(appKey)
	}
	r, err := d.c.Register(id.String(), key)
	if err != nil || r.Status != 200 {
		d.t.Fatalf("register: %v %+v", err, r)
	}
	keys, err := ece.NewSubscription()
	if err != nil {
		d.t.Fatal(err)
	}
	return &subscription{channel: id.String(), endpoint: r.PushEndpoint, keys: keys}
}

// subscribed registers one channel (no VAPID key) on a device that then
// goes away: the target of tests that only post.
func (e *env) subscribed() *subscription {
	d := e.connect("")
	s := d.subscribe(nil)
	d.c.Close()
	return s
}

// host is the API's host:port, for requests written by hand.
func (e *env) host() string { return strings.TrimPrefix(e.base, "http://") }

// path is the endpoint's path, for requests built by hand.
func (s *subscription) path(t testing.TB, base string) string {
	p, ok := strings.CutPrefix(s.endpoint, base)
	if !ok {
		t.Fatalf("endpoint %q not under %s", s.endpoint, base)
	}
	return p
}

func (s *subscription) encrypt(t testing.TB, text string) []byte {
	t.Helper()
	body, err := ece.Encrypt([]byte(text), s.keys.PublicKey(), s.keys.Auth)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// response is an answer of the API.
type response struct {
	code   int
	header http.Header
	body   string
	errno  int
	json   map[string]any
}

func (e *env) do(method, url string, body []byte, hdr map[string]string) response {
	e.t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := response{code: resp.StatusCode, header: resp.Header, body: string(b)}
	if resp.StatusCode >= 400 {
		if err := json.Unmarshal(b, &r.json); err != nil {
			e.t.Fatalf("%s %s: %d with a non-JSON body %q", method, url, resp.StatusCode, b)
		}
		if n, ok := r.json["errno"].(float64); ok {
			r.errno = int(n)
		}
	}
	return r
}

func (e *env) waiting() int64 {
	e.t.Helper()
	st, err := e.st.Stats()
	if err != nil {
		e.t.Fatal(err)
	}
	return st.Waiting
}

// knownErrnos maps each errno the API documents to its HTTP status.
var knownErrnos = map[int]int{
	101: 400, 102: 404, 104: 413, 106: 410, 109: 401, 110: 400,
	111: 400, 113: 400, 114: 400, 115: 400, 116: 400, 117: 400,
	118: 431, 119: 507, 120: 503, 121: 503, 122: 400, 123: 501, 124: 400, 125: 401, 202: 503,
}
