package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/leakcheck"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
)

// TestMain fails the run if a test leaves a goroutine of ours behind: a
// node closed owns nothing any more.
func TestMain(m *testing.M) { leakcheck.Main(m) }

// testLogger routes a node's logs to t.Log.
func testLogger(t *testing.T, name string) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", name)
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// testConfig is a node on loopback port-0 listeners (admin and STUN
// included), its data in a fresh directory.
func testConfig(t *testing.T, name string) Config {
	return Config{
		DataDir:        t.TempDir(),
		DeviceListen:   "127.0.0.1:0",
		EndpointListen: "127.0.0.1:0",
		AdminListen:    "127.0.0.1:0",
		STUNListen:     "127.0.0.1:0",
		Version:        "test",
		Logger:         testLogger(t, name),
	}
}

// running is a node served by Run on a goroutine of the test's.
type running struct {
	*Node
	errc chan error // Run's result
}

// start makes and runs a node and waits until it is ready. Cleanup closes
// it, if the test did not.
func start(t *testing.T, cfg Config) *running {
	t.Helper()
	ready := make(chan struct{})
	cfg.OnReady = func(*Node) { close(ready) }
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := &running{Node: n, errc: make(chan error, 1)}
	go func() { r.errc <- n.Run(context.Background()) }()
	t.Cleanup(func() { n.Close() })
	select {
	case <-ready:
	case err := <-r.errc:
		t.Fatalf("Run returned before ready: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("node not ready in 10s")
	}
	if !n.Ready() {
		t.Fatal("OnReady called but Ready is false")
	}
	return r
}

// stop closes the node and checks Run returned nil.
func (r *running) stop(t *testing.T) {
	t.Helper()
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-r.errc:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after Close")
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// subscriber is a device with one channel, its endpoint and its keys.
type subscriber struct {
	c        *pushclient.Client
	uaid     string
	channel  string
	endpoint string
	keys     *ece.Subscription
}

func subscribe(t *testing.T, n *Node, uaid string) *subscriber {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pushclient.Dial(ctx, n.DeviceURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Abort() })
	h, err := c.Hello(uaid, pushclient.HelloOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s := &subscriber{c: c, uaid: h.UAID, channel: pushproto.NewChannelID()}
	r, err := c.Register(s.channel, "")
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != 200 || r.PushEndpoint == "" {
		t.Fatalf("register: status %d endpoint %q", r.Status, r.PushEndpoint)
	}
	s.endpoint = r.PushEndpoint
	if s.keys, err = ece.NewSubscription(); err != nil {
		t.Fatal(err)
	}
	return s
}

// postTo posts an encrypted message to s's endpoint and wants 201.
func postTo(t *testing.T, s *subscriber, text string) {
	t.Helper()
	body, err := ece.Encrypt([]byte(text), s.keys.PublicKey(), s.keys.Auth)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", s.endpoint, bytes.NewReader(body))
	req.Header.Set("TTL", "60")
	req.Header.Set("Content-Encoding", "aes128gcm")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("push to %s: %s", s.endpoint, resp.Status)
	}
}

// receive waits for one notification on s's channel, acks it and returns
// its text.
func receive(t *testing.T, s *subscriber) string {
	t.Helper()
	f, err := s.c.Next(time.Now().Add(10 * time.Second))
	if err != nil {
		t.Fatalf("waiting for a notification: %v", err)
	}
	if f.ChannelID != s.channel {
		t.Fatalf("notification for channel %s, want %s", f.ChannelID, s.channel)
	}
	raw, err := ece.DecodeKey(f.Data)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := ece.Decrypt(raw, s.keys)
	if err != nil {
		t.Fatalf("decrypt: %v", err)
	}
	if err := s.c.Ack(f); err != nil {
		t.Fatal(err)
	}
	return string(plain)
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Three relays in one process: each on its own data dir, listeners and
// registry, each serving its own device, none seeing the others' traffic
// in its metrics, and all of them gone (no goroutine left, TestMain checks)
// once closed.
func TestThreeNodesInOneProcess(t *testing.T) {
	const nodes = 3
	// Nothing goes through the process's defaults: slog's and log's
	// default loggers stay silent, the memory limit stays as it was.
	var global syncBuffer
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(&global, nil)))
	defer log.SetOutput(log.Writer())
	log.SetOutput(&global)
	memLimit := debug.SetMemoryLimit(-1)
	defer func() {
		if got := debug.SetMemoryLimit(-1); got != memLimit {
			t.Errorf("memory limit changed from %d to %d", memLimit, got)
		}
		if global.String() != "" {
			t.Errorf("written to the process's default loggers:\n%s", global.String())
		}
	}()
	var rs []*running
	seen := map[string]bool{}
	for i := range nodes {
		r := start(t, testConfig(t, fmt.Sprint("n", i)))
		for _, a := range []string{r.DeviceAddr().String(), r.EndpointAddr().String(), r.AdminAddr().String(), r.STUNAddr().String()} {
			if strings.HasSuffix(a, ":0") || seen[a] {
				t.Fatalf("node %d: listener address %s unresolved or shared", i, a)
			}
			seen[a] = true
		}
		rs = append(rs, r)
	}
	subs := make([]*subscriber, nodes)
	for i, r := range rs {
		subs[i] = subscribe(t, r.Node, "")
		if !strings.HasPrefix(subs[i].endpoint, r.PublicURL()+"/") {
			t.Fatalf("node %d handed out %s, not under its public URL %s", i, subs[i].endpoint, r.PublicURL())
		}
	}
	// Each node gets i+1 messages, so a shared registry would show.
	for i := range rs {
		for k := range i + 1 {
			msg := fmt.Sprintf("to node %d, message %d", i, k)
			postTo(t, subs[i], msg)
			if got := receive(t, subs[i]); got != msg {
				t.Fatalf("node %d: got %q, want %q", i, got, msg)
			}
		}
	}
	for i, r := range rs {
		if v := r.Metrics().Value("pushrelay_endpoint_accepted_total"); v != float64(i+1) {
			t.Errorf("node %d: pushrelay_endpoint_accepted_total = %v, want %d", i, v, i+1)
		}
		code, body := httpGet(t, "http://"+r.AdminAddr().String()+"/metrics")
		want := fmt.Sprintf("pushrelay_endpoint_accepted_total %d\n", i+1)
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("node %d: /metrics %d lacks %q", i, code, strings.TrimSpace(want))
		}
		if code, _ := httpGet(t, "http://"+r.AdminAddr().String()+"/readyz"); code != 200 {
			t.Errorf("node %d: /readyz = %d", i, code)
		}
	}
	// An endpoint of one node means nothing to another: their keys differ.
	other := *subs[0]
	other.endpoint = rs[1].PublicURL() + strings.TrimPrefix(subs[0].endpoint, rs[0].PublicURL())
	body, _ := ece.Encrypt([]byte("x"), other.keys.PublicKey(), other.keys.Auth)
	req, _ := http.NewRequest("POST", other.endpoint, bytes.NewReader(body))
	req.Header.Set("TTL", "60")
	req.Header.Set("Content-Encoding", "aes128gcm")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == 201 {
		t.Fatal("node 1 accepted an endpoint node 0 handed out")
	}

	// Closing them all at once: each drains on its own.
	var wg sync.WaitGroup
	for _, r := range rs {
		wg.Go(func() { r.stop(t) })
	}
	wg.Wait()
	for i, s := range subs {
		if _, err := s.c.Read(time.Now().Add(5 * time.Second)); err == nil {
			t.Errorf("device of node %d: socket still open after Close", i)
		}
	}
	for i, r := range rs {
		if _, err := net.DialTimeout("tcp", r.DeviceAddr().String(), time.Second); err == nil {
			t.Errorf("node %d: device listener still accepts after Close", i)
		}
		if err := r.Close(); err != nil {
			t.Errorf("node %d: second Close: %v", i, err)
		}
	}
}

// A message stored by one node is delivered by the next node on the same
// data dir: the device keeps its UAID and its endpoint across the restart.
func TestRestartOnSameDataDir(t *testing.T) {
	cfg := testConfig(t, "first")
	r := start(t, cfg)
	s := subscribe(t, r.Node, "")
	s.c.Abort()
	postTo(t, s, "kept across the restart")
	r.stop(t)

	cfg.Logger = testLogger(t, "second")
	r2 := start(t, cfg)
	s2 := subscribe(t, r2.Node, s.uaid)
	if s2.uaid != s.uaid {
		t.Fatalf("hello after the restart gave UAID %s, want %s", s2.uaid, s.uaid)
	}
	s2.channel, s2.keys = s.channel, s.keys
	if got := receive(t, s2); got != "kept across the restart" {
		t.Fatalf("got %q", got)
	}
	r2.stop(t)
}

// Close on a node that never ran releases what New took: the ports and
// the store's lock, so a new node opens the same data dir at once.
func TestCloseWithoutRun(t *testing.T) {
	cfg := testConfig(t, "idle")
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if n.Ready() {
		t.Fatal("ready before Run")
	}
	addr := n.DeviceAddr().String()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Fatal("device listener still open after Close")
	}
	if err := n.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close = %v, want ErrClosed", err)
	}
	// Again and again: nothing New opened stays open (no descriptor is
	// left behind either).
	before := openFiles(t)
	for i := range 5 {
		n2, err := New(cfg)
		if err != nil {
			t.Fatalf("a new node on the same data dir (%d): %v", i, err)
		}
		if err := n2.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if after := openFiles(t); before >= 0 && after > before {
		t.Fatalf("%d descriptors open after 5 nodes made and closed, %d before", after, before)
	}
}

// openFiles counts this process's open descriptors (-1 where /proc has
// none to show).
func openFiles(t *testing.T) int {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(es)
}

// Run returns when its context ends, as the daemon's does on SIGTERM, and
// a second Run is refused.
func TestRunStopsWithContext(t *testing.T) {
	ready := make(chan struct{})
	cfg := testConfig(t, "ctx")
	cfg.OnReady = func(*Node) { close(ready) }
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- n.Run(ctx) }()
	<-ready
	s := subscribe(t, n, "")
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	var ce *pushclient.CloseError
	if _, err := s.c.Read(time.Now().Add(5 * time.Second)); !errors.As(err, &ce) || ce.Code != pushproto.CloseGoingAway {
		t.Fatalf("device read after shutdown: %v, want a close with %d", err, pushproto.CloseGoingAway)
	}
	if n.Ready() {
		t.Fatal("ready after Run returned")
	}
	if err := n.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Run = %v, want ErrClosed", err)
	}
}

// A second node on a data dir in use is refused, and leaves the first
// serving.
func TestDataDirInUse(t *testing.T) {
	cfg := testConfig(t, "owner")
	r := start(t, cfg)
	cfg.Logger = testLogger(t, "intruder")
	if n, err := New(cfg); err == nil {
		n.Close()
		t.Fatal("a second node opened a data dir in use")
	}
	s := subscribe(t, r.Node, "")
	postTo(t, s, "still here")
	if got := receive(t, s); got != "still here" {
		t.Fatalf("got %q", got)
	}
	r.stop(t)
}

// A part that fails stops the node: Run drains the rest and returns that
// part's error (the daemon's exit status), and nothing is left running.
func TestPartFailureStopsNode(t *testing.T) {
	r := start(t, testConfig(t, "failing"))
	s := subscribe(t, r.Node, "")
	r.listeners["device"].Close() // the device listener's Serve fails
	select {
	case err := <-r.errc:
		if err == nil || !strings.HasPrefix(err.Error(), "device listener: ") {
			t.Fatalf("Run = %v, want the device listener's error", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after a part failed")
	}
	var ce *pushclient.CloseError
	if _, err := s.c.Read(time.Now().Add(5 * time.Second)); !errors.As(err, &ce) || ce.Code != pushproto.CloseGoingAway {
		t.Fatalf("device read after the failure: %v, want a close with %d", err, pushproto.CloseGoingAway)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("Close after the failure: %v", err)
	}
}

// VerifyStore verifies the store at a start after a clean stop too
// (store_verify_always).
func TestVerifyStoreAtEveryStart(t *testing.T) {
	cfg := testConfig(t, "first")
	start(t, cfg).stop(t)

	var logs syncBuffer
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	start(t, cfg).stop(t)
	if strings.Contains(logs.String(), "store verified") {
		t.Fatalf("a start after a clean stop verified the store without VerifyStore:\n%s", logs.String())
	}
	cfg.VerifyStore = true
	start(t, cfg).stop(t)
	if !strings.Contains(logs.String(), "msg=\"store verified\"") || !strings.Contains(logs.String(), "why=verify_always") {
		t.Fatalf("VerifyStore: no verification logged:\n%s", logs.String())
	}
}
