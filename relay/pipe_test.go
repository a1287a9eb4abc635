package relay_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/endpoint"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/token"
)

// pipeConn is an in-memory relay.Conn: the test plays the device on the
// other end. Frames the device sends are queued by push; frames the hub
// writes come out through out.
//
// With notify set it behaves like the WebSocket adapter on a plain TCP
// socket under the poller: Notify arms a callback that the next frame (or
// pong, or hang-up) fires, and ReadFrame returns (nil, nil) when only pongs
// were pending. Without, it behaves like the adapter on TLS: Notify reports
// false, and WaitReadable and ReadFrame block until a frame arrives or the
// idle timeout passes.
type pipeConn struct {
	notify bool
	out    chan []byte

	// autoPong makes every Ping answered at once.
	autoPong atomic.Bool
	// partial makes the device's next frame look half-sent: Whole
	// reports false, and ReadFrame waits as on a socket.
	partial       atomic.Bool
	partialReader string // the stack of the goroutine that read a partial frame
	pings         atomic.Int32
	batches       atomic.Int32 // WriteFrames calls
	// shared makes WriteFrame hand out the hub's own bytes instead of a
	// copy, so a test can see frames the hub shares among sessions.
	shared atomic.Bool

	mu          sync.Mutex
	queue       [][]byte // frames from the device not yet read
	pongs       int      // pongs not yet read
	lastRead    time.Time
	idle        time.Duration
	deadline    time.Time
	armed       func() // the pending Notify callback
	closeCode   int
	closeReason string
	// onIdle, if set, runs (on the hub's goroutine) each time the hub sets
	// the idle timeout.
	onIdle func(time.Duration)
	onPing func([]byte)
	expiry time.Time // set by Expire: reads and writes end by then

	// stuck, while open, makes writes block as on a socket whose peer
	// stopped reading: until unstick, or the expiry.
	stuck        chan struct{}
	writeTimeout time.Duration // a stuck write fails after this (0: never)
	expired      chan struct{} // closed by Expire
	expOnce      sync.Once
	writers      atomic.Int32 // writes blocked now
	pongsOut     [][]byte     // pongs the hub wrote

	wake     chan struct{} // something arrived or the deadline moved
	closed   chan struct{} // the hub sent its close frame
	hungUp   chan struct{} // the device went away
	released chan struct{} // the hub released the socket

	closeOnce, hangOnce, releaseOnce sync.Once
}

func newPipeConn(notify bool) *pipeConn {
	return &pipeConn{
		notify:   notify,
		out:      make(chan []byte, 4096),
		lastRead: time.Now(),
		wake:     make(chan struct{}, 1),
		closed:   make(chan struct{}),
		hungUp:   make(chan struct{}),
		released: make(chan struct{}),
		expired:  make(chan struct{}),
	}
}

// stick makes the device stop reading: the hub's writes block, each for
// at most writeTimeout (0: until the hub expires the connection).
func (c *pipeConn) stick(writeTimeout time.Duration) {
	c.mu.Lock()
	c.stuck = make(chan struct{})
	c.writeTimeout = writeTimeout
	c.mu.Unlock()
}

// unstick makes the device read again: blocked writes go on.
func (c *pipeConn) unstick() {
	c.mu.Lock()
	if c.stuck != nil {
		close(c.stuck)
		c.stuck = nil
	}
	c.mu.Unlock()
}

// blockIfStuck is a write's wait on a device that does not read.
func (c *pipeConn) blockIfStuck() error {
	c.mu.Lock()
	stuck, writeTimeout := c.stuck, c.writeTimeout
	c.mu.Unlock()
	if stuck == nil {
		return nil
	}
	c.writers.Add(1)
	defer c.writers.Add(-1)
	var timeout <-chan time.Time
	if writeTimeout > 0 {
		t := time.NewTimer(writeTimeout)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-stuck:
		return nil
	case <-c.expired:
		return os.ErrDeadlineExceeded
	case <-timeout:
		return os.ErrDeadlineExceeded
	}
}

func (c *pipeConn) Expire(d time.Duration) {
	c.mu.Lock()
	t := time.Now().Add(d)
	if c.expiry.IsZero() || t.Before(c.expiry) {
		c.expiry = t
	}
	if c.deadline.IsZero() || t.Before(c.deadline) {
		c.deadline = t
	}
	c.idle = 0 // reads no longer extend the deadline
	c.mu.Unlock()
	// Writes give up at the expiry.
	time.AfterFunc(d, func() { c.expOnce.Do(func() { close(c.expired) }) })
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *pipeConn) OnPing(f func([]byte)) { c.onPing = f }

func (c *pipeConn) Pong(p []byte) error {
	if err := c.blockIfStuck(); err != nil {
		return err
	}
	c.mu.Lock()
	c.pongsOut = append(c.pongsOut, p)
	c.mu.Unlock()
	return nil
}

// devicePing is a transport ping from the device, as the adapter's reader
// would hand it to the hub.
func (c *pipeConn) devicePing(p []byte) { c.onPing(p) }

var errCloseSent = errors.New("pipe: close frame already sent")

// push queues a frame from the device.
func (c *pipeConn) push(f []byte) {
	c.mu.Lock()
	c.queue = append(c.queue, f)
	c.mu.Unlock()
	c.arrived()
}

// arrived wakes a blocked reader and fires an armed Notify.
func (c *pipeConn) arrived() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
	c.mu.Lock()
	f := c.armed
	c.armed = nil
	c.mu.Unlock()
	if f != nil {
		f()
	}
}

// readable reports whether a read would not block; c.mu is held.
func (c *pipeConn) readableLocked() bool {
	if len(c.queue) > 0 || c.pongs > 0 {
		return true
	}
	select {
	case <-c.closed:
		return true
	case <-c.hungUp:
		return true
	default:
		return false
	}
}

func (c *pipeConn) Notify(f func()) bool {
	if !c.notify {
		return false
	}
	c.mu.Lock()
	if c.readableLocked() {
		c.mu.Unlock()
		f()
		return true
	}
	c.armed = f
	c.mu.Unlock()
	return true
}

func (c *pipeConn) Disarm() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	was := c.armed != nil
	c.armed = nil
	return was
}

func (c *pipeConn) Idle() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Since(c.lastRead)
}

// wait blocks until something is readable (taking a frame if take), the
// hub closed, the device hung up, or the idle deadline passed.
func (c *pipeConn) wait(take bool) ([]byte, error) {
	for {
		c.mu.Lock()
		if len(c.queue) > 0 {
			var f []byte
			if take {
				f = c.queue[0]
				c.queue = c.queue[1:]
				c.pongs = 0
				c.lastRead = time.Now()
			}
			c.mu.Unlock()
			return f, nil
		}
		if c.pongs > 0 {
			if !take {
				c.mu.Unlock()
				return nil, nil
			}
			c.pongs = 0 // consumed; a blocking reader goes on waiting
			if c.notify {
				c.mu.Unlock()
				return nil, nil
			}
		}
		dl := c.deadline
		c.mu.Unlock()
		var timeout <-chan time.Time
		var timer *time.Timer
		if !dl.IsZero() {
			timer = time.NewTimer(time.Until(dl))
			timeout = timer.C
		}
		stop := func() {
			if timer != nil {
				timer.Stop()
			}
		}
		select {
		case <-c.closed:
			// The device answers the close frame at once.
			stop()
			return nil, errors.Join(pushproto.ErrPeerClosed, io.EOF)
		case <-c.hungUp:
			stop()
			return nil, errors.Join(pushproto.ErrPeerClosed, io.ErrUnexpectedEOF)
		case <-c.wake:
			stop()
		case <-timeout:
			c.mu.Lock()
			expired := !c.deadline.After(time.Now())
			c.mu.Unlock()
			if expired {
				return nil, os.ErrDeadlineExceeded // a net.Error with Timeout()
			}
		}
	}
}

func (c *pipeConn) ReadFrame() ([]byte, error) {
	if c.partial.Load() {
		// Note which goroutine waits for the rest of the frame.
		buf := make([]byte, 8<<10)
		c.mu.Lock()
		c.partialReader = string(buf[:runtime.Stack(buf, false)])
		c.mu.Unlock()
	}
	f, err := c.wait(true)
	if f != nil {
		c.extend()
	}
	return f, err
}

func (c *pipeConn) WaitReadable() error {
	_, err := c.wait(false)
	return err
}

// Whole is false while the test holds a device's frame half-sent
// (partial): the hub must then wait for the rest on a goroutine of the
// session's own.
func (c *pipeConn) Whole() bool { return !c.partial.Load() }

func (c *pipeConn) Buffered() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue) > 0 || c.pongs > 0
}

func (c *pipeConn) extend() {
	c.mu.Lock()
	if c.idle > 0 {
		c.deadline = time.Now().Add(c.idle)
	}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *pipeConn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

func (c *pipeConn) WriteFrame(p []byte) error {
	if c.isClosed() {
		return errCloseSent
	}
	if err := c.blockIfStuck(); err != nil {
		return err
	}
	if !c.shared.Load() {
		p = append([]byte(nil), p...)
	}
	select {
	case c.out <- p:
		return nil
	default:
		return errors.New("pipe: device is not reading")
	}
}

func (c *pipeConn) WriteFrames(frames [][]byte) error {
	c.batches.Add(1)
	for _, f := range frames {
		if err := c.WriteFrame(f); err != nil {
			return err
		}
	}
	return nil
}

func (c *pipeConn) Ping() error {
	if c.isClosed() {
		return errCloseSent
	}
	if err := c.blockIfStuck(); err != nil {
		return err
	}
	c.pings.Add(1)
	if c.autoPong.Load() {
		c.mu.Lock()
		c.pongs++
		c.lastRead = time.Now()
		c.mu.Unlock()
		c.extend()
		c.arrived()
	}
	return nil
}

func (c *pipeConn) SetIdleTimeout(d time.Duration) {
	c.mu.Lock()
	c.idle = d
	hook := c.onIdle
	c.mu.Unlock()
	c.extend()
	if hook != nil {
		hook(d)
	}
}

func (c *pipeConn) Close(code int, reason string) error {
	if err := c.blockIfStuck(); err != nil {
		return err
	}
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closeCode, c.closeReason = code, reason
		c.mu.Unlock()
		close(c.closed)
	})
	return nil
}

func (c *pipeConn) Release() error {
	c.releaseOnce.Do(func() { close(c.released) })
	return nil
}

func (c *pipeConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}

// hangUp is the device dropping the connection without a close frame.
func (c *pipeConn) hangUp() {
	c.hangOnce.Do(func() { close(c.hungUp) })
	c.arrived()
}

// ---- harness ----

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

const publicURL = "https://push.example.test"

type harness struct {
	t      testing.TB
	hub    *relay.Hub
	st     *store.Store
	reads  *atomic.Int64 // the hub's calls of Store.Messages
	tokens *token.Codec
	// notify: connections arm a callback (as on plain TCP under the
	// poller) instead of parking a goroutine (as on TLS).
	notify bool
	// ran gets Run's result when it returns.
	ran chan error
	// stop closes the hub and the store (as a restart would).
	stop func()
}

// newHarness starts a hub on a real store in a temp dir and runs its
// keepalive loop, as the daemon does; tweak adjusts the hub's config. All is
// closed at the end of the test. Connections use the poller-style path.
func newHarness(t testing.TB, tweak func(*relay.Config)) *harness {
	return newHarnessMode(t, true, tweak)
}

// modes are the two ways adapters hand the hub their frames.
var modes = []struct {
	name   string
	notify bool
}{{"notify", true}, {"park", false}}

func newHarnessMode(t testing.TB, notify bool, tweak func(*relay.Config)) *harness {
	t.Helper()
	return newHarnessAt(t, filepath.Join(t.TempDir(), "pushrelay.db"), notify, tweak)
}

// newHarnessAt is newHarness on the store file at path; stop ends it
// before the test does (a restart opens another harness on the file).
func newHarnessAt(t testing.TB, path string, notify bool, tweak func(*relay.Config)) *harness {
	t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	st, err := store.Open(store.Options{Path: path, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	var stopped sync.Once
	closeStore := func() {
		stopped.Do(func() {
			if err := st.Close(); err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(closeStore)
	key := make([]byte, token.KeySize)
	for i := range key {
		key[i] = byte(i + 1)
	}
	tokens, err := token.New(key)
	if err != nil {
		t.Fatal(err)
	}
	cs := &countingStore{Store: st}
	minter, err := endpoint.NewMinter(tokens, publicURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg := relay.Config{Store: cs, Tokens: tokens, Endpoints: minter, Logger: log}
	if tweak != nil {
		tweak(&cfg)
	}
	hub, err := relay.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, hub: hub, st: st, reads: &cs.reads, tokens: tokens, notify: notify, ran: make(chan error, 1)}
	go func() { h.ran <- hub.Run(ctx) }()
	h.stop = func() {
		hub.Close()
		cancel()
		closeStore()
	}
	t.Cleanup(func() {
		hub.Close()
		cancel()
	})
	return h
}

// countingStore is the real store, counting the hub's reads of waiting
// messages.
type countingStore struct {
	*store.Store
	reads atomic.Int64
}

func (c *countingStore) Messages(u push.UAID, after uint64, limit int) ([]store.Message, error) {
	c.reads.Add(1)
	return c.Store.Messages(u, after, limit)
}

// device is the test's end of one connection.
type device struct {
	t    testing.TB
	h    *harness
	c    *pipeConn
	uaid string
}

// connect hands the hub a fresh connection without saying anything.
func (h *harness) connect() *device {
	c := newPipeConn(h.notify)
	h.hub.Accept(c)
	return &device{t: h.t, h: h, c: c}
}

// hello connects and says hello (Web Push unless legacy); uaid "" asks for
// a new one.
func (h *harness) hello(uaid string) *device {
	h.t.Helper()
	d := h.connect()
	d.hello(uaid, false)
	return d
}

func (d *device) hello(uaid string, legacy bool) pushproto.ServerFrame {
	d.t.Helper()
	m := map[string]any{"messageType": "hello"}
	if !legacy {
		m["use_webpush"] = true
	}
	if uaid != "" {
		m["uaid"] = uaid
	}
	d.send(m)
	f := d.expect(pushproto.TypeHello)
	if f.Status != 200 || len(f.UAID) != 32 {
		d.t.Fatalf("hello reply %+v", f)
	}
	d.uaid = f.UAID
	return f
}

// send writes a frame from the device: a string as is, anything else as
// JSON.
func (d *device) send(v any) {
	d.t.Helper()
	var b []byte
	switch v := v.(type) {
	case string:
		b = []byte(v)
	default:
		var err error
		if b, err = json.Marshal(v); err != nil {
			d.t.Fatal(err)
		}
	}
	d.c.push(b)
}

// next returns the next frame the hub wrote, failing after timeout.
func (d *device) next(timeout time.Duration) pushproto.ServerFrame {
	d.t.Helper()
	select {
	case b := <-d.c.out:
		f, err := pushproto.DecodeServer(b)
		if err != nil {
			d.t.Fatalf("hub wrote %q: %v", b, err)
		}
		return f
	case <-time.After(timeout):
		d.t.Fatalf("no frame from the hub within %s", timeout)
		return pushproto.ServerFrame{}
	}
}

func (d *device) expect(typ pushproto.MessageType) pushproto.ServerFrame {
	d.t.Helper()
	f := d.next(5 * time.Second)
	if f.MessageType != typ {
		d.t.Fatalf("got %s frame %+v, want %s", f.MessageType, f, typ)
	}
	return f
}

// expectNone checks the hub writes nothing for wait.
func (d *device) expectNone(wait time.Duration) {
	d.t.Helper()
	select {
	case b := <-d.c.out:
		d.t.Fatalf("unexpected frame %s", b)
	case <-time.After(wait):
	}
}

// closedWith waits for the hub's close frame and returns its code and
// reason.
func (d *device) closedWith(timeout time.Duration) (int, string) {
	d.t.Helper()
	select {
	case <-d.c.closed:
	case <-time.After(timeout):
		d.t.Fatalf("connection not closed within %s", timeout)
	}
	d.c.mu.Lock()
	defer d.c.mu.Unlock()
	return d.c.closeCode, d.c.closeReason
}

func (d *device) released(timeout time.Duration) {
	d.t.Helper()
	select {
	case <-d.c.released:
	case <-time.After(timeout):
		d.t.Fatalf("connection not released within %s", timeout)
	}
}

// register asks for an endpoint and returns the reply.
func (d *device) register(ch, key string) pushproto.ServerFrame {
	d.t.Helper()
	m := map[string]any{"messageType": "register", "channelID": ch}
	if key != "" {
		m["key"] = key
	}
	d.send(m)
	r := d.expect(pushproto.TypeRegister)
	if r.ChannelID != ch {
		d.t.Fatalf("register reply for %s, want %s", r.ChannelID, ch)
	}
	return r
}

// subscribe registers a new channel without a key and returns it.
func (d *device) subscribe() *sub {
	d.t.Helper()
	ch := newChannelID()
	r := d.register(ch, "")
	if r.Status != 200 || r.PushEndpoint == "" {
		d.t.Fatalf("register: %+v", r)
	}
	return &sub{channel: ch, endpoint: r.PushEndpoint, ep: d.h.openEndpoint(r.PushEndpoint)}
}

// ack acknowledges notifications the way Firefox does.
func (d *device) ack(ns ...pushproto.ServerFrame) {
	d.t.Helper()
	var ups []map[string]any
	for _, n := range ns {
		if len(n.Updates) > 0 {
			for _, u := range n.Updates {
				ups = append(ups, map[string]any{"channelID": u.ChannelID, "version": u.Version, "code": 100})
			}
			continue
		}
		ups = append(ups, map[string]any{"channelID": n.ChannelID, "version": n.Version, "code": 100})
	}
	d.send(map[string]any{"messageType": "ack", "updates": ups})
}

type sub struct {
	channel  string
	endpoint string
	ep       token.Endpoint
}

// openEndpoint opens the token at the end of a push endpoint URL, as the
// endpoint API does.
func (h *harness) openEndpoint(url string) token.Endpoint {
	h.t.Helper()
	rest, ok := strings.CutPrefix(url, publicURL+"/")
	if !ok {
		h.t.Fatalf("endpoint %q is not under %s", url, publicURL)
	}
	version := 1
	switch {
	case strings.HasPrefix(rest, "wpush/v2/"):
		version = 2
	case strings.HasPrefix(rest, "wpush/v1/"), strings.HasPrefix(rest, "update/"):
	default:
		h.t.Fatalf("endpoint %q has an unknown path", url)
	}
	ep, err := h.tokens.OpenEndpoint(version, rest[strings.LastIndex(rest, "/")+1:])
	if err != nil {
		h.t.Fatalf("endpoint %q: %v", url, err)
	}
	return ep
}

// push sends an app-server message to s.
func (h *harness) push(s *sub, ttl time.Duration, data string) (relay.Result, error) {
	m := push.Message{UAID: push.UAID(s.ep.UAID), Channel: push.ChannelID(s.ep.Channel), TTL: ttl}
	if data != "" {
		m.Data, m.Encoding = []byte(data), "aes128gcm"
	}
	return h.hub.Push(context.Background(), m)
}

func (h *harness) mustPush(s *sub, ttl time.Duration, data string) relay.Result {
	h.t.Helper()
	res, err := h.push(s, ttl, data)
	if err != nil {
		h.t.Fatalf("push %q: %v", data, err)
	}
	return res
}

func (h *harness) waiting() int64 {
	h.t.Helper()
	st, err := h.st.Stats()
	if err != nil {
		h.t.Fatal(err)
	}
	return st.Waiting
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

func newChannelID() string { return pushproto.NewChannelID() }

// payload decodes a notification's data.
func payload(t *testing.T, n pushproto.ServerFrame) string {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(n.Data)
	if err != nil {
		t.Fatalf("notification data %q: %v", n.Data, err)
	}
	return string(b)
}
