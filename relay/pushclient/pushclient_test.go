package pushclient_test

import (
	"context"
	"crypto/rand"
	"errors"
	"net"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/endpoint"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/token"
	"github.com/pushrelay/pushrelay/relay/vapid"
	"github.com/pushrelay/pushrelay/relay/wsock"
)

const publicURL = "https://push.example.test"

// relayEnv is a relay in the test process: store, hub (with its keepalive
// loop) and the device listener on loopback.
type relayEnv struct {
	t      *testing.T
	st     *store.Store
	hub    *relay.Hub
	tokens *token.Codec
	reg    *metrics.Registry
	url    string // ws:// device listener
}

func newRelay(t *testing.T) *relayEnv {
	t.Helper()
	st, err := store.Open(store.Options{Path: filepath.Join(t.TempDir(), "pushrelay.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	key := make([]byte, token.KeySize)
	rand.Read(key)
	tokens, _ := token.New(key)
	reg := metrics.NewRegistry()
	minter, err := endpoint.NewMinter(tokens, publicURL)
	if err != nil {
		t.Fatal(err)
	}
	hub, err := relay.New(relay.Config{Store: st, Tokens: tokens, Endpoints: minter, CheckKey: vapid.DecodePublicKey, Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { hub.Run(ctx); close(done) }()
	srv := httptest.NewServer(wsock.Handler(wsock.Options{}, func(c *wsock.Conn) { hub.Accept(c) }))
	t.Cleanup(func() {
		srv.Close()
		hub.Close()
		cancel()
		<-done
	})
	return &relayEnv{t: t, st: st, hub: hub, tokens: tokens, reg: reg, url: "ws" + strings.TrimPrefix(srv.URL, "http")}
}

func (e *relayEnv) dial() *pushclient.Client {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pushclient.Dial(ctx, e.url)
	if err != nil {
		e.t.Fatal(err)
	}
	c.Timeout = 5 * time.Second
	e.t.Cleanup(func() { c.Abort() })
	return c
}

// push sends an app-server message to the endpoint URL a register gave.
func (e *relayEnv) push(endpoint string, m push.Message) (relay.Result, error) {
	e.t.Helper()
	version := 1
	if strings.Contains(endpoint, "/wpush/v2/") {
		version = 2
	}
	ep, err := e.tokens.OpenEndpoint(version, endpoint[strings.LastIndex(endpoint, "/")+1:])
	if err != nil {
		e.t.Fatalf("endpoint %s: %v", endpoint, err)
	}
	m.UAID, m.Channel = push.UAID(ep.UAID), push.ChannelID(ep.Channel)
	if m.TTL == 0 {
		m.TTL = time.Hour
	}
	return e.hub.Push(context.Background(), m)
}

// metric reads one sample of the hub's metrics.
func (e *relayEnv) metric(name string) float64 { return e.reg.Value(name) }

func (e *relayEnv) waiting() int64 {
	s, _ := e.st.Stats()
	return s.Waiting
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func channelID() string { return pushproto.NewChannelID() }

// Every request of the client against the relay: hello (new, resumed,
// with broadcasts), register (with and without a key), notification,
// ack, ping, unregister.
func TestRoundTrips(t *testing.T) {
	e := newRelay(t)
	c := e.dial()
	h, err := c.Hello("", pushclient.HelloOptions{Broadcasts: map[string]string{"remote-settings/monitor_changes": `"0"`}})
	if err != nil {
		t.Fatal(err)
	}
	if h.Status != 200 || len(h.UAID) != 32 || c.UAID != h.UAID || !h.UseWebPush {
		t.Fatalf("hello reply %+v (client UAID %q)", h, c.UAID)
	}
	if errs, _ := h.Broadcasts["errors"].(map[string]any); errs["remote-settings/monitor_changes"] == nil {
		t.Fatalf("hello broadcasts %v", h.Broadcasts)
	}

	ch := channelID()
	r, err := c.Register(ch, "")
	if err != nil || r.Status != 200 || r.ChannelID != ch || !strings.HasPrefix(r.PushEndpoint, publicURL+"/wpush/v1/") {
		t.Fatalf("register: %+v, %v", r, err)
	}
	priv, _ := vapid.GenerateKey()
	keyed, err := c.Register(channelID(), ece.EncodeKey(vapid.NewSigner(priv).PublicKey()))
	if err != nil || keyed.Status != 200 || !strings.HasPrefix(keyed.PushEndpoint, publicURL+"/wpush/v2/") {
		t.Fatalf("keyed register: %+v, %v", keyed, err)
	}
	if bad, err := c.Register(channelID(), "not-a-key"); err != nil || bad.Status != 400 {
		t.Fatalf("bad key: %+v, %v", bad, err)
	}

	if err := c.Ping(); err != nil {
		t.Fatalf("ping: %v", err)
	}

	res, err := e.push(r.PushEndpoint, push.Message{Data: []byte("payload"), Encoding: "aes128gcm"})
	if err != nil {
		t.Fatal(err)
	}
	n, err := c.Next(time.Now().Add(5 * time.Second))
	if err != nil || n.MessageType != pushproto.TypeNotification || n.ChannelID != ch || n.Version != res.ID || n.Data != "cGF5bG9hZA" {
		t.Fatalf("notification %+v, %v", n, err)
	}
	if err := c.Ack(n); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the ack to delete the message", func() bool { return e.waiting() == 0 })

	u, err := c.Unregister(ch)
	if err != nil || u.Status != 200 || u.ChannelID != ch {
		t.Fatalf("unregister: %+v, %v", u, err)
	}
	if _, err := e.push(r.PushEndpoint, push.Message{}); !errors.Is(err, relay.ErrNoSubscription) {
		t.Fatalf("push after unregister: %v", err)
	}

	uaid := c.UAID
	c.Close()
	c2 := e.dial()
	if h, err := c2.Hello(uaid, pushclient.HelloOptions{}); err != nil || h.UAID != uaid {
		t.Fatalf("resume: %+v, %v", h, err)
	}
}

// A Firefox OS device: legacy hello, /update/ endpoint, integer versions,
// and an ack the relay accepts.
func TestSimplePushDevice(t *testing.T) {
	e := newRelay(t)
	c := e.dial()
	if _, err := c.Hello("", pushclient.HelloOptions{Legacy: true, Extra: map[string]any{
		"mobilenetwork": map[string]string{"mcc": "214", "mnc": "07"},
	}}); err != nil {
		t.Fatal(err)
	}
	ch := channelID()
	r, err := c.Register(ch, "")
	if err != nil || !strings.HasPrefix(r.PushEndpoint, publicURL+"/update/") {
		t.Fatalf("register: %+v, %v", r, err)
	}
	for _, v := range []uint64{3, 4} {
		if _, err := e.push(r.PushEndpoint, push.Message{Version: v}); err != nil {
			t.Fatal(err)
		}
		n, err := c.Next(time.Now().Add(5 * time.Second))
		if err != nil || len(n.Updates) != 1 || n.Updates[0].Version != v || n.Updates[0].ChannelID != ch {
			t.Fatalf("version %d: %+v, %v", v, n, err)
		}
		if err := c.Ack(n); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "integer acks to delete", func() bool { return e.waiting() == 0 })
}

// Notifications and broadcasts that arrive while the client waits for a
// reply are kept, in order, and Next returns them without reading again.
func TestExpectKeepsNotifications(t *testing.T) {
	e := newRelay(t)
	c := e.dial()
	if _, err := c.Hello("", pushclient.HelloOptions{}); err != nil {
		t.Fatal(err)
	}
	r, err := c.Register(channelID(), "")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := e.push(r.PushEndpoint, push.Message{Data: []byte{byte('a' + i)}, Encoding: "aes128gcm"}); err != nil {
			t.Fatal(err)
		}
	}
	// All three are on the socket before the register below is sent.
	waitFor(t, "three notifications written", func() bool { return e.metric("pushrelay_messages_delivered_total") == 3 })
	// A broadcast answer, pipelined before the next register.
	c.SendJSON(map[string]any{"messageType": "broadcast_subscribe", "broadcasts": map[string]string{"x/y": "v1"}})
	ch2 := channelID()
	r2, err := c.Register(ch2, "")
	if err != nil || r2.MessageType != pushproto.TypeRegister || r2.ChannelID != ch2 || r2.Status != 200 {
		t.Fatalf("register with notifications pending: %+v, %v", r2, err)
	}
	if err := c.Ping(); err != nil {
		t.Fatal(err)
	}
	// An expired deadline: only kept frames can be returned.
	past := time.Now().Add(-time.Second)
	for _, want := range []string{"YQ", "Yg", "Yw"} {
		n, err := c.Next(past)
		if err != nil || n.MessageType != pushproto.TypeNotification || n.Data != want {
			t.Fatalf("kept notification: %+v, %v; want data %s", n, err, want)
		}
	}
	b, err := c.Next(past)
	if err != nil || b.MessageType != pushproto.TypeBroadcast {
		t.Fatalf("kept broadcast: %+v, %v", b, err)
	}
	if n, err := c.Next(past); err == nil {
		t.Fatalf("a fourth kept frame: %+v", n)
	}
}

// Expect gives up after Timeout with a timeout error, and reports a server
// close as a *CloseError.
func TestExpectTimeoutAndClose(t *testing.T) {
	e := newRelay(t)
	c := e.dial()
	if _, err := c.Hello("", pushclient.HelloOptions{}); err != nil {
		t.Fatal(err)
	}
	c.Timeout = 200 * time.Millisecond
	start := time.Now()
	_, err := c.Expect(pushproto.TypeRegister)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !strings.Contains(err.Error(), "waiting for register") {
		t.Fatalf("Expect with nothing coming: %v", err)
	}
	if el := time.Since(start); el < 150*time.Millisecond || el > 3*time.Second {
		t.Fatalf("Expect gave up after %s", el)
	}

	c2 := e.dial()
	if _, err := c2.Hello("", pushclient.HelloOptions{}); err != nil {
		t.Fatal(err)
	}
	go e.hub.Close()
	_, err = c2.Expect(pushproto.TypeRegister)
	var ce *pushclient.CloseError
	if !errors.As(err, &ce) || ce.Code != pushproto.CloseGoingAway {
		t.Fatalf("Expect across a shutdown: %v, want close 1001", err)
	}
}

func TestDialRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := pushclient.Dial(ctx, "ws://"+addr+"/"); err == nil {
		t.Fatal("Dial to a closed port succeeded")
	}
}
