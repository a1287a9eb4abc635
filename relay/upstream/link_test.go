package upstream_test

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/node"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/upstream"
	"github.com/pushrelay/pushrelay/relay/upstream/autopushtest"
)

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func testLogger(t *testing.T, name string) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", name)
}

func startUpstream(t *testing.T, cfg autopushtest.Config) *autopushtest.Server {
	t.Helper()
	s, err := autopushtest.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// startNode runs a relay until the test ends.
func startNode(t *testing.T, cfg node.Config) *node.Node {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	cfg.Version = "test"
	cfg.Logger = testLogger(t, "edge")
	ready := make(chan struct{})
	cfg.OnReady = func(*node.Node) { close(ready) }
	n, err := node.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- n.Run(context.Background()) }()
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close node: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-errc:
		t.Fatalf("Run returned before ready: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("node not ready in 10s")
	}
	return n
}

func dial(t *testing.T, url string) *pushclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pushclient.Dial(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Abort() })
	return c
}

// helloDevice connects a device to n and says hello without a UAID.
func helloDevice(t *testing.T, n *node.Node) *pushclient.Client {
	t.Helper()
	dev := dial(t, n.DeviceURL())
	if _, err := dev.Hello("", pushclient.HelloOptions{}); err != nil {
		t.Fatal(err)
	}
	return dev
}

func post(t *testing.T, endpoint string, body []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", endpoint, bytes.NewReader(body))
	req.Header.Set("TTL", "600")
	req.Header.Set("Content-Encoding", "aes128gcm")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("post to %s: %s", endpoint, resp.Status)
	}
}

// waitFor polls cond every 10 ms for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// receive reads n notifications (5 s in all), acks them, and returns
// their data by version.
func receive(t *testing.T, c *pushclient.Client, n int) []string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var got []string
	for len(got) < n {
		f, err := c.Next(deadline)
		if err != nil {
			t.Fatalf("after %d of %d notifications: %v", len(got), n, err)
		}
		if f.MessageType != pushproto.TypeNotification {
			continue
		}
		data, err := base64.RawURLEncoding.DecodeString(f.Data)
		if err != nil {
			t.Fatalf("notification data %q: %v", f.Data, err)
		}
		if f.Headers == nil || f.Headers.Encoding != "aes128gcm" {
			t.Errorf("notification headers %+v", f.Headers)
		}
		got = append(got, string(data))
		if err := c.Ack(f); err != nil {
			t.Fatal(err)
		}
	}
	return got
}

// expectNothing fails if a notification arrives within d.
func expectNothing(t *testing.T, c *pushclient.Client, d time.Duration) {
	t.Helper()
	f, err := c.Next(time.Now().Add(d))
	var ne net.Error
	if err == nil {
		t.Fatalf("unexpected frame %+v", f)
	} else if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("waiting for nothing: %v", err)
	}
}

// A device's register passes through: the upstream gets a new UAID and
// the channel with its key, the device gets the upstream's endpoint
// unchanged and the store keeps it. Posts to that endpoint reach the
// device through the held session, and each is acked upstream only while
// the relay's store already holds it (checked at the ack, with the device
// away so nothing is delivered and deleted first).
func TestRegisterAndRelay(t *testing.T) {
	var (
		mu      sync.Mutex
		st      *store.Store
		devUAID push.UAID
		acked   = map[string]bool{} // version: held in the store at its ack
	)
	up := startUpstream(t, autopushtest.Config{OnAck: func(uaid, version string) {
		mu.Lock()
		defer mu.Unlock()
		// The store keeps no origin key with a message: count instead.
		// The device is away, so every message acked so far, this one
		// included, must be in the store.
		ms, err := st.Messages(devUAID, 0, 100)
		if err != nil {
			t.Errorf("read store at ack: %v", err)
		}
		acked[version] = len(ms) >= len(acked)+1
	}})
	n := startNode(t, node.Config{Upstream: up.URL(), UpstreamBackoffMin: 50 * time.Millisecond})
	mu.Lock()
	st = n.Store()
	mu.Unlock()

	dev := helloDevice(t, n)
	u, err := push.ParseUAID(dev.UAID)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	devUAID = u
	mu.Unlock()
	key, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	chid := pushproto.NewChannelID()
	r, err := dev.Register(chid, base64.RawURLEncoding.EncodeToString(key.PublicKey().Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	id, ok, err := st.UpstreamID(u)
	if err != nil || !ok {
		t.Fatalf("no upstream identity stored: %v %v", ok, err)
	}
	if r.Status != 200 || r.PushEndpoint != up.Endpoint(id.Upstream.String(), chid) {
		t.Fatalf("register answered %+v, want the upstream's endpoint %s", r, up.Endpoint(id.Upstream.String(), chid))
	}
	ch, _ := push.ParseChannelID(chid)
	if c, ok, err := st.Channel(u, ch); !ok || err != nil || c.Endpoint != r.PushEndpoint {
		t.Fatalf("stored channel %+v %v %v", c, ok, err)
	}
	if !up.Exists(id.Upstream.String()) {
		t.Fatal("upstream does not know the identity")
	}
	// A second channel goes through the held session, with the same
	// identity.
	waitFor(t, "the held session", func() bool { return up.Open(id.Upstream.String()) })
	chid2 := pushproto.NewChannelID()
	r2, err := dev.Register(chid2, "")
	if err != nil {
		t.Fatal(err)
	}
	if r2.Status != 200 || r2.PushEndpoint != up.Endpoint(id.Upstream.String(), chid2) {
		t.Fatalf("second register answered %+v", r2)
	}
	// Registering again answers the stored endpoint.
	if r3, err := dev.Register(chid2, ""); err != nil || r3.PushEndpoint != r2.PushEndpoint {
		t.Fatalf("re-register answered %+v, %v", r3, err)
	}

	// Away: the relay stores what comes and acks it.
	dev.Close()
	for i := range 3 {
		post(t, r.PushEndpoint, fmt.Appendf(nil, "msg-%d", i))
	}
	post(t, r2.PushEndpoint, []byte("msg-3"))
	waitFor(t, "4 acks upstream", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) == 4
	})
	mu.Lock()
	for v, held := range acked {
		if !held {
			t.Errorf("version %s acked upstream before it was in the store", v)
		}
	}
	mu.Unlock()

	dev = dial(t, n.DeviceURL())
	if _, err := dev.Hello(u.String(), pushclient.HelloOptions{}); err != nil {
		t.Fatal(err)
	}
	got := receive(t, dev, 4)
	if strings.Join(got, ",") != "msg-0,msg-1,msg-2,msg-3" {
		t.Errorf("device got %q", got)
	}
	// While connected: straight through.
	post(t, r2.PushEndpoint, []byte("live"))
	if got := receive(t, dev, 1); got[0] != "live" {
		t.Errorf("device got %q", got)
	}
	expectNothing(t, dev, 200*time.Millisecond)
	if s := up.Stats(); s.Resent != 0 || s.Acked != 5 {
		t.Errorf("upstream stats %+v", s)
	}
}

// With the upstream unreachable a register is answered 500 within the
// bound, and nothing is stored.
func TestRegisterUpstreamDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	n := startNode(t, node.Config{Upstream: "ws://" + addr + "/"})
	dev := helloDevice(t, n)
	chid := pushproto.NewChannelID()
	start := time.Now()
	r, err := dev.Register(chid, "")
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != 500 || r.PushEndpoint != "" {
		t.Fatalf("register answered %+v", r)
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Errorf("register took %v", d)
	}
	u, _ := push.ParseUAID(dev.UAID)
	ch, _ := push.ParseChannelID(chid)
	if _, ok, err := n.Store().Channel(u, ch); ok || err != nil {
		t.Errorf("channel stored: %v %v", ok, err)
	}
	if _, ok, err := n.Store().UpstreamID(u); ok || err != nil {
		t.Errorf("identity stored: %v %v", ok, err)
	}
}

// lossyIngester is the hub, except that the first time it stores each of
// the messages m5 to m9 it reports that one failed: as if the relay lost
// the link between its commit and its ack. m0 to m4 are acked, so the
// batch is partly acked.
type lossyIngester struct {
	hub  *relay.Hub
	mu   sync.Mutex
	seen map[string]bool
}

func (l *lossyIngester) Ingest(ctx context.Context, ms []push.Message) ([]relay.Result, error) {
	res, err := l.hub.Ingest(ctx, ms)
	if err != nil {
		return res, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, m := range ms {
		d := string(m.Data)
		if d >= "m5" && d <= "m9" && !l.seen[d] {
			l.seen[d] = true
			res[i].Err = errors.New("lost before the ack")
		}
	}
	return res, nil
}

// A batch the upstream re-sends because it was only partly acked (the
// link lost its connection after storing messages and before acking them)
// reaches the device once: the origin key makes the re-sent message a
// duplicate, which is acked upstream and not delivered again.
func TestPartlyAckedBatchResentOnce(t *testing.T) {
	up := startUpstream(t, autopushtest.Config{})
	n := startNode(t, node.Config{})
	dev := helloDevice(t, n)
	chid := pushproto.NewChannelID()
	if r, err := dev.Register(chid, ""); err != nil || r.Status != 200 {
		t.Fatalf("register: %+v %v", r, err)
	}
	u, _ := push.ParseUAID(dev.UAID)
	ch, _ := push.ParseChannelID(chid)

	reg := n.Metrics()
	link, err := upstream.New(upstream.Config{
		URL: up.URL(), Store: n.Store(), BackoffMin: 20 * time.Millisecond,
		Logger: testLogger(t, "link"), Metrics: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Registered upstream before the link runs: the upstream stores
	// what is posted meanwhile, and sends it as a batch at the hello.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	endpoint, err := link.Mint(ctx, relay.Registration{UAID: u, Channel: ch})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		post(t, endpoint, fmt.Appendf(nil, "m%d", i))
	}
	in := &lossyIngester{hub: n.Hub(), seen: map[string]bool{}}
	runLink(t, link, in)

	got := receive(t, dev, 10)
	seen := map[string]int{}
	for _, g := range got {
		seen[g]++
	}
	for i := range 10 {
		if seen[fmt.Sprintf("m%d", i)] != 1 {
			t.Errorf("m%d received %d times (all: %q)", i, seen[fmt.Sprintf("m%d", i)], got)
		}
	}
	id, _, _ := n.Store().UpstreamID(u)
	waitFor(t, "every message acked upstream", func() bool { return up.Pending(id.Upstream.String()) == 0 })
	expectNothing(t, dev, 200*time.Millisecond)
	s := up.Stats()
	if s.Resent < 5 {
		t.Errorf("the upstream re-sent %d, want m5 to m9 at least", s.Resent)
	}
	// As autopush, the upstream re-sends a partly acked batch whole, the
	// acked ones too: each that was stored here is a duplicate.
	d := reg.Value(`pushrelay_upstream_messages_total{result="duplicate"}`)
	if d < 1 || d > float64(s.Resent) {
		t.Errorf("duplicates counted %v, want 1 to %d (those re-sent)", d, s.Resent)
	}
	if hd := reg.Value(`pushrelay_messages_in_total{result="duplicate"}`); hd != d {
		t.Errorf("hub counted %v duplicates, the link %v", hd, d)
	}
}

// A held session lives on while the upstream only pings it: its pings
// (answered) keep the read from timing out, so a quiet device is not
// reconnected every ReadTimeout.
func TestQuietSessionHeld(t *testing.T) {
	up := startUpstream(t, autopushtest.Config{AutoPingInterval: 100 * time.Millisecond, AutoPingTimeout: 50 * time.Millisecond})
	n := startNode(t, node.Config{})
	dev := helloDevice(t, n)
	u, _ := push.ParseUAID(dev.UAID)
	ch, _ := push.ParseChannelID(pushproto.NewChannelID())
	link, err := upstream.New(upstream.Config{
		URL: up.URL(), Store: n.Store(), BackoffMin: 20 * time.Millisecond, ReadTimeout: 300 * time.Millisecond,
		Logger: testLogger(t, "link"),
	})
	if err != nil {
		t.Fatal(err)
	}
	runLink(t, link, n.Hub())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err = link.Mint(ctx, relay.Registration{UAID: u, Channel: ch})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	id, _, _ := n.Store().UpstreamID(u)
	waitFor(t, "the held session", func() bool { return up.Open(id.Upstream.String()) })
	time.Sleep(time.Second) // over three read timeouts, some 10 pings
	// The register's own connection and the held session: no reconnect.
	if h := up.Stats().Hellos[id.Upstream.String()]; h != 2 {
		t.Errorf("%d hellos from the identity, want 2", h)
	}
}

func postStatus(t *testing.T, endpoint string) int {
	t.Helper()
	req, _ := http.NewRequest("POST", endpoint, nil)
	req.Header.Set("TTL", "60")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// A device's unregister is answered once it is durable here (channel
// removed, unregister kept in the outbox) and passed upstream by the
// sender: the upstream's endpoint then answers 410. With the upstream
// gone the unregister is still answered 200 and stays pending, with the
// channel tombstoned.
func TestUnregisterPassesThrough(t *testing.T) {
	up := startUpstream(t, autopushtest.Config{})
	n := startNode(t, node.Config{Upstream: up.URL(), UpstreamBackoffMin: 50 * time.Millisecond})
	st := n.Store()
	dev := helloDevice(t, n)
	u, _ := push.ParseUAID(dev.UAID)
	var subs []pushproto.ServerFrame
	for range 2 {
		r, err := dev.Register(pushproto.NewChannelID(), "")
		if err != nil || r.Status != 200 {
			t.Fatalf("register: %+v %v", r, err)
		}
		subs = append(subs, r)
	}
	r, err := dev.Unregister(subs[0].ChannelID)
	if err != nil || r.Status != 200 {
		t.Fatalf("unregister: %+v %v", r, err)
	}
	waitFor(t, "the unregister upstream", func() bool { return postStatus(t, subs[0].PushEndpoint) == 410 })
	// The upstream answers 410 as soon as it has the unregister; the
	// relay records it sent once it has the reply.
	waitFor(t, "the unregister recorded sent", func() bool {
		ps, err := st.PendingUnregisters(0, 10)
		return err == nil && len(ps) == 0
	})
	if s := postStatus(t, subs[1].PushEndpoint); s != 201 {
		t.Errorf("the other channel's endpoint answered %d", s)
	}

	up.Close()
	r, err = dev.Unregister(subs[1].ChannelID)
	if err != nil || r.Status != 200 {
		t.Fatalf("unregister with the upstream gone: %+v %v", r, err)
	}
	ch, _ := push.ParseChannelID(subs[1].ChannelID)
	ps, err := st.PendingUnregisters(0, 10)
	if err != nil || len(ps) != 1 || ps[0].Channel != ch || ps[0].UAID != u {
		t.Errorf("pending unregisters %+v %v", ps, err)
	}
	if tomb, err := st.Tombstoned(u, ch); !tomb || err != nil {
		t.Errorf("tombstoned: %v %v", tomb, err)
	}
}

// setupRelayed starts an upstream and an edge node and returns a device
// connected to the edge with one channel registered through it, its
// upstream endpoint and the device's upstream UAID.
func setupRelayed(t testing.TB, up *autopushtest.Server, n *node.Node) (*pushclient.Client, string, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dev, err := pushclient.Dial(ctx, n.DeviceURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Abort() })
	if _, err := dev.Hello("", pushclient.HelloOptions{}); err != nil {
		t.Fatal(err)
	}
	r, err := dev.Register(pushproto.NewChannelID(), "")
	if err != nil || r.Status != 200 {
		t.Fatalf("register: %+v %v", r, err)
	}
	u, _ := push.ParseUAID(dev.UAID)
	id, _, err := n.Store().UpstreamID(u)
	if err != nil {
		t.Fatal(err)
	}
	return dev, r.PushEndpoint, id.Upstream.String()
}

// A held session the upstream closes (here: ghosted by another client
// saying hello with its UAID, as autopush does) is connected again after
// the backoff, and relays again.
func TestHeldSessionReconnects(t *testing.T) {
	up := startUpstream(t, autopushtest.Config{})
	n := startNode(t, node.Config{Upstream: up.URL(), UpstreamBackoffMin: 50 * time.Millisecond})
	dev, endpoint, upUAID := setupRelayed(t, up, n)
	// The register's hello, then the held session's.
	waitFor(t, "the held session", func() bool { return up.Open(upUAID) && up.Stats().Hellos[upUAID] == 2 })
	ghost := dial(t, up.URL())
	if _, err := ghost.Hello(upUAID, pushclient.HelloOptions{}); err != nil {
		t.Fatal(err)
	}
	// The link's next hello ghosts this one in turn.
	if _, err := ghost.Read(time.Now().Add(5 * time.Second)); err == nil {
		t.Fatal("the ghost connection was not closed")
	}
	waitFor(t, "the session held again", func() bool { return up.Open(upUAID) && up.Stats().Hellos[upUAID] >= 4 })
	post(t, endpoint, []byte("after the reconnect"))
	if got := receive(t, dev, 1); got[0] != "after the reconnect" {
		t.Errorf("device got %q", got)
	}
}

// BenchmarkHeldLatency measures upstream POST (201) to the local device's
// receipt for a held session, one message at a time, on loopback.
func BenchmarkHeldLatency(b *testing.B) {
	up, err := autopushtest.New(autopushtest.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer up.Close()
	cfg := node.Config{Upstream: up.URL(), DataDir: b.TempDir(), Logger: slog.New(slog.DiscardHandler)}
	n, err := node.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	go n.Run(context.Background())
	defer n.Close()
	for i := 0; !n.Ready(); i++ {
		if i == 500 {
			b.Fatal("node not ready")
		}
		time.Sleep(10 * time.Millisecond)
	}
	dev, endpoint, upUAID := setupRelayed(b, up, n)
	for i := 0; !up.Open(upUAID); i++ {
		if i == 500 {
			b.Fatal("session not held")
		}
		time.Sleep(10 * time.Millisecond)
	}
	lat := make([]time.Duration, 0, b.N)
	body := bytes.Repeat([]byte("x"), 100)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		req, _ := http.NewRequest("POST", endpoint, bytes.NewReader(body))
		req.Header.Set("TTL", "600")
		req.Header.Set("Content-Encoding", "aes128gcm")
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 201 {
			b.Fatalf("post: %v %v", resp, err)
		}
		resp.Body.Close()
		f, err := dev.Next(time.Now().Add(5 * time.Second))
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		dev.Ack(f)
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// After a restart the edge holds its devices' sessions again (from the
// identities in its store): what the upstream kept while the edge was
// down reaches the device, and a re-register answers the stored endpoint.
func TestRestartHoldsAgain(t *testing.T) {
	up := startUpstream(t, autopushtest.Config{})
	dir := t.TempDir()
	cfg := node.Config{Upstream: up.URL(), UpstreamBackoffMin: 50 * time.Millisecond, DataDir: dir}
	n := startNode(t, cfg)
	dev, endpoint, upUAID := setupRelayed(t, up, n)
	uaid := dev.UAID
	waitFor(t, "the held session", func() bool { return up.Open(upUAID) })
	dev.Close()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the session to end", func() bool { return !up.Open(upUAID) })
	post(t, endpoint, []byte("while the edge was down"))

	n = startNode(t, cfg)
	waitFor(t, "the session held again", func() bool { return up.Open(upUAID) })
	dev = dial(t, n.DeviceURL())
	if _, err := dev.Hello(uaid, pushclient.HelloOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, dev, 1); got[0] != "while the edge was down" {
		t.Errorf("device got %q", got)
	}
	chid := endpoint[strings.LastIndex(endpoint, "/")+1:]
	if r, err := dev.Register(chid, ""); err != nil || r.Status != 200 || r.PushEndpoint != endpoint {
		t.Errorf("re-register answered %+v %v, want %s", r, err, endpoint)
	}
}

// A held session older than MaxSessionAge is closed and connected again,
// so that the identity says hello again (and the store records it).
func TestSessionHelloesAgain(t *testing.T) {
	up := startUpstream(t, autopushtest.Config{})
	n := startNode(t, node.Config{})
	dev := helloDevice(t, n)
	u, _ := push.ParseUAID(dev.UAID)
	ch, _ := push.ParseChannelID(pushproto.NewChannelID())
	link, err := upstream.New(upstream.Config{
		URL: up.URL(), Store: n.Store(), BackoffMin: 10 * time.Millisecond, MaxSessionAge: 100 * time.Millisecond,
		Logger: testLogger(t, "link"),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err = link.Mint(ctx, relay.Registration{UAID: u, Channel: ch})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	id, _, _ := n.Store().UpstreamID(u)
	runLink(t, link, n.Hub())
	waitFor(t, "three more hellos", func() bool { return up.Stats().Hellos[id.Upstream.String()] >= 4 })
	if again, _, _ := n.Store().UpstreamID(u); !again.Helloed.After(id.Helloed) {
		t.Errorf("hello time %v not after the first %v", again.Helloed, id.Helloed)
	}
}

// Over wss:// with the upstream's certificate trusted through
// UpstreamTLS: register, hold and relay work as over ws://.
func TestTLSUpstream(t *testing.T) {
	serverTLS, roots, err := autopushtest.LoopbackTLS()
	if err != nil {
		t.Fatal(err)
	}
	up := startUpstream(t, autopushtest.Config{TLS: serverTLS})
	n := startNode(t, node.Config{Upstream: up.URL(), UpstreamTLS: &tls.Config{RootCAs: roots}})
	dev, endpoint, upUAID := setupRelayed(t, up, n)
	if !strings.HasPrefix(endpoint, "https://") {
		t.Fatalf("endpoint %s", endpoint)
	}
	waitFor(t, "the held session", func() bool { return up.Open(upUAID) })
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	defer hc.CloseIdleConnections()
	req, _ := http.NewRequest("POST", endpoint, strings.NewReader("over tls"))
	req.Header.Set("TTL", "60")
	req.Header.Set("Content-Encoding", "aes128gcm")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("post: %s", resp.Status)
	}
	if got := receive(t, dev, 1); got[0] != "over tls" {
		t.Errorf("device got %q", got)
	}
}

// Close stops Run (which returns nil once its sessions ended), is
// idempotent, and a closed link does not run again.
func TestLinkClose(t *testing.T) {
	up := startUpstream(t, autopushtest.Config{})
	n := startNode(t, node.Config{})
	dev := helloDevice(t, n)
	u, _ := push.ParseUAID(dev.UAID)
	ch, _ := push.ParseChannelID(pushproto.NewChannelID())
	link, err := upstream.New(upstream.Config{URL: up.URL(), Store: n.Store(), Logger: testLogger(t, "link")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := link.Mint(ctx, relay.Registration{UAID: u, Channel: ch}); err != nil {
		t.Fatal(err)
	}
	id, _, _ := n.Store().UpstreamID(u)
	done := make(chan error, 1)
	go func() { done <- link.Run(context.Background(), n.Hub()) }()
	waitFor(t, "the held session", func() bool { _, open := link.Sessions(); return open == 1 })
	link.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after Close")
	}
	waitFor(t, "the session closed upstream", func() bool { return !up.Open(id.Upstream.String()) })
	link.Close()
	if err := link.Run(context.Background(), n.Hub()); !errors.Is(err, upstream.ErrClosed) {
		t.Errorf("Run on a closed link: %v", err)
	}
}

// A register for a device whose held session is down (here: ghosted, and
// waiting out a long backoff) wakes the session and goes over it, rather
// than over a connection of its own that the session's next hello would
// ghost (autopush closes the older of two connections with one UAID).
func TestRegisterWakesHeldSession(t *testing.T) {
	up := startUpstream(t, autopushtest.Config{})
	n := startNode(t, node.Config{Upstream: up.URL(), UpstreamBackoffMin: time.Minute})
	dev, _, upUAID := setupRelayed(t, up, n)
	// The register's hello, then the held session's: ghost the held
	// session, not the register's connection before it.
	waitFor(t, "the held session", func() bool {
		return up.Open(upUAID) && up.Stats().Hellos[upUAID] == 2 && n.Metrics().Value("pushrelay_upstream_sessions_open") == 1
	})
	ghost := dial(t, up.URL())
	if _, err := ghost.Hello(upUAID, pushclient.HelloOptions{}); err != nil {
		t.Fatal(err)
	}
	ghost.Close()
	waitFor(t, "the held session to be ghosted", func() bool {
		return n.Metrics().Value("pushrelay_upstream_sessions_open") == 0
	})
	hellos := up.Stats().Hellos[upUAID]
	start := time.Now()
	r, err := dev.Register(pushproto.NewChannelID(), "")
	if err != nil || r.Status != 200 {
		t.Fatalf("register: %+v %v", r, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("register took %v", d)
	}
	if !up.Open(upUAID) {
		t.Error("the held session is not open after the register")
	}
	if got := up.Stats().Hellos[upUAID] - hellos; got != 1 {
		t.Errorf("the register made %d hellos upstream, want 1 (the held session's)", got)
	}
	post(t, r.PushEndpoint, []byte("woken"))
	if got := receive(t, dev, 1); got[0] != "woken" {
		t.Errorf("device got %q", got)
	}
}

// runLink runs link on in until the test ends, then stops it and checks
// that Run returned nil.
func runLink(t *testing.T, link *upstream.Link, in upstream.Ingester) {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- link.Run(ctx, in) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
}

// mintFor registers a new channel of u through link and stores it as the
// hub would, returning the channel.
func mintFor(link *upstream.Link, st *store.Store, u push.UAID) (push.ChannelID, error) {
	ch, _ := push.ParseChannelID(pushproto.NewChannelID())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ep, err := link.Mint(ctx, relay.Registration{UAID: u, Channel: ch})
	if err == nil {
		err = st.Register(ctx, store.Channel{UAID: u, ID: ch, Endpoint: ep})
	}
	return ch, err
}
