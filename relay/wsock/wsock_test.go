package wsock_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/wsock"
)

// listener is a device listener on loopback whose accepted connections the
// test takes from conns.
type listener struct {
	t     *testing.T
	url   string
	srv   *httptest.Server
	conns chan *wsock.Conn
}

func listen(t *testing.T, opts wsock.Options, useTLS bool) *listener {
	return listenWith(t, opts, useTLS, false)
}

// listenWith serves with a poller (NewServer, run until the test ends) or
// without (Handler).
func listenWith(t *testing.T, opts wsock.Options, useTLS, poll bool) *listener {
	t.Helper()
	l := &listener{t: t, conns: make(chan *wsock.Conn, 8)}
	var mu sync.Mutex
	var accepted []*wsock.Conn
	accept := func(c *wsock.Conn) {
		mu.Lock()
		accepted = append(accepted, c)
		mu.Unlock()
		l.conns <- c
	}
	var h http.Handler
	if poll {
		srv := wsock.NewServer(opts, accept)
		if !srv.Polling() {
			t.Skip("no poller on this platform")
		}
		ctx, cancel := context.WithCancel(context.Background())
		ran := make(chan error, 1)
		go func() { ran <- srv.Run(ctx) }()
		t.Cleanup(func() {
			srv.Close()
			cancel()
			if err := <-ran; err != nil {
				t.Errorf("Server.Run: %v", err)
			}
		})
		h = srv
	} else {
		h = wsock.Handler(opts, accept)
	}
	if useTLS {
		l.srv = httptest.NewTLSServer(h)
		l.url = "wss" + strings.TrimPrefix(l.srv.URL, "https")
	} else {
		l.srv = httptest.NewServer(h)
		l.url = "ws" + strings.TrimPrefix(l.srv.URL, "http")
	}
	t.Cleanup(func() {
		l.srv.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range accepted {
			c.Close(pushproto.CloseGoingAway, "test over")
			c.Release()
		}
	})
	return l
}

// dial connects a client and returns both ends.
func (l *listener) dial() (*wsock.ClientConn, *wsock.Conn) {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var conf *tls.Config
	if l.srv.TLS != nil {
		conf = l.srv.Client().Transport.(*http.Transport).TLSClientConfig
	}
	cc, err := wsock.Dial(ctx, l.url, conf)
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { cc.Abort() })
	select {
	case c := <-l.conns:
		return cc, c
	case <-time.After(5 * time.Second):
		l.t.Fatal("server did not accept")
		return nil, nil
	}
}

func readWithin(t *testing.T, c *wsock.Conn, d time.Duration) ([]byte, error) {
	t.Helper()
	type res struct {
		b   []byte
		err error
	}
	ch := make(chan res, 1)
	go func() {
		b, err := c.ReadFrame()
		ch <- res{b, err}
	}()
	select {
	case r := <-ch:
		return r.b, r.err
	case <-time.After(d):
		t.Fatalf("ReadFrame did not return within %s", d)
		return nil, nil
	}
}

func TestTextFramesBothWays(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		name := "ws"
		if useTLS {
			name = "wss"
		}
		t.Run(name, func(t *testing.T) {
			l := listen(t, wsock.Options{}, useTLS)
			cc, sc := l.dial()
			if err := cc.Write([]byte(`{"messageType":"hello"}`)); err != nil {
				t.Fatal(err)
			}
			if err := sc.WaitReadable(); err != nil {
				t.Fatal(err)
			}
			b, err := readWithin(t, sc, 5*time.Second)
			if err != nil || string(b) != `{"messageType":"hello"}` {
				t.Fatalf("server read %q, %v", b, err)
			}
			// A frame bigger than the read buffer arrives whole.
			big := `{"pad":"` + strings.Repeat("p", 3000) + `"}`
			cc.Write([]byte(big))
			if b, err := readWithin(t, sc, 5*time.Second); err != nil || string(b) != big {
				t.Fatalf("server read %d bytes, %v", len(b), err)
			}
			if err := sc.WriteFrame([]byte(`{"messageType":"hello","status":200}`)); err != nil {
				t.Fatal(err)
			}
			got, err := cc.Read(time.Now().Add(5 * time.Second))
			if err != nil || string(got) != `{"messageType":"hello","status":200}` {
				t.Fatalf("client read %q, %v", got, err)
			}
			if sc.RemoteAddr() == nil || !strings.HasPrefix(sc.RemoteAddr().String(), "127.0.0.1:") {
				t.Fatalf("RemoteAddr %v", sc.RemoteAddr())
			}
		})
	}
}

// Frames of every header length (7-bit, 16-bit and 64-bit payload
// lengths, at their edges) reach a standard client whole, one at a time
// and batched, on plain TCP (framed by wsock, written with writev) and TLS
// (framed by gorilla).
func TestFrameLengths(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		l := listen(t, wsock.Options{}, useTLS)
		cc, sc := l.dial()
		var frames [][]byte
		for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 70000} {
			frames = append(frames, []byte(strings.Repeat("a", n)))
		}
		for _, f := range frames {
			if err := sc.WriteFrame(f); err != nil {
				t.Fatal(err)
			}
		}
		if err := sc.WriteFrames(frames); err != nil {
			t.Fatal(err)
		}
		for i := range 2 * len(frames) {
			got, err := cc.Read(time.Now().Add(5 * time.Second))
			if want := frames[i%len(frames)]; err != nil || !bytes.Equal(got, want) {
				t.Fatalf("tls=%v: frame %d: read %d bytes, %v; want %d", useTLS, i, len(got), err, len(want))
			}
		}
	}
}

// WriteFrames delivers a batch whole and in order, corked or not (TLS).
func TestWriteFramesBatch(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		l := listen(t, wsock.Options{}, useTLS)
		cc, sc := l.dial()
		var frames [][]byte
		for i := range 50 {
			frames = append(frames, []byte(fmt.Sprintf(`{"n":%d}`, i)))
		}
		if err := sc.WriteFrames(frames); err != nil {
			t.Fatal(err)
		}
		for i := range 50 {
			got, err := cc.Read(time.Now().Add(5 * time.Second))
			if err != nil || string(got) != fmt.Sprintf(`{"n":%d}`, i) {
				t.Fatalf("tls=%v frame %d: %q %v", useTLS, i, got, err)
			}
		}
	}
}

// Frames a device sends back to back are all read, and Buffered says when
// more are waiting so the hub does not park with a frame in hand.
func TestPipelinedFrames(t *testing.T) {
	l := listen(t, wsock.Options{}, false)
	cc, sc := l.dial()
	frames := []string{`{"messageType":"ack","updates":[]}`, `{}`, `{"messageType":"ping"}`}
	for _, f := range frames {
		if err := cc.Write([]byte(f)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(50 * time.Millisecond) // all three in the server's socket
	if err := sc.WaitReadable(); err != nil {
		t.Fatal(err)
	}
	for i, want := range frames {
		b, err := readWithin(t, sc, 5*time.Second)
		if err != nil || string(b) != want {
			t.Fatalf("frame %d: %q, %v", i, b, err)
		}
		if last := i == len(frames)-1; sc.Buffered() == last {
			t.Fatalf("after frame %d Buffered = %v", i, sc.Buffered())
		}
		if i < len(frames)-1 {
			if err := sc.WaitReadable(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestBinaryFrameRefused(t *testing.T) {
	l := listen(t, wsock.Options{}, false)
	cc, sc := l.dial()
	if err := cc.WriteBinary([]byte{0, 1, 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := readWithin(t, sc, 5*time.Second); !errors.Is(err, pushproto.ErrBinaryFrame) {
		t.Fatalf("ReadFrame: %v, want ErrBinaryFrame", err)
	}
}

// A text frame that is not UTF-8 is refused (RFC 6455 §8.1: the core
// closes with 1007).
func TestInvalidUTF8Refused(t *testing.T) {
	l := listen(t, wsock.Options{}, false)
	cc, sc := l.dial()
	if err := cc.Write([]byte("{\"messageType\":\"\xff\"}")); err != nil {
		t.Fatal(err)
	}
	if _, err := readWithin(t, sc, 5*time.Second); !errors.Is(err, pushproto.ErrInvalidUTF8) {
		t.Fatalf("ReadFrame: %v, want ErrInvalidUTF8", err)
	}
}

// A frame over MaxFrame is ErrFrameTooBig, and the device, still sending
// it, reads the 1009 close frame instead of a connection reset.
func TestFrameTooBigClosesCleanly(t *testing.T) {
	l := listen(t, wsock.Options{MaxFrame: 1024}, false)
	for i := range 3 {
		cc, sc := l.dial()
		big := make([]byte, 256<<10)
		for j := range big {
			big[j] = 'x'
		}
		go cc.Write(big) // blocks until the server drains or closes
		_, err := readWithin(t, sc, 5*time.Second)
		if !errors.Is(err, pushproto.ErrFrameTooBig) {
			t.Fatalf("try %d: ReadFrame: %v, want ErrFrameTooBig", i, err)
		}
		sc.Close(pushproto.CloseTooBig, "frame too big")
		released := make(chan struct{})
		go func() { sc.Release(); close(released) }()
		_, err = cc.Read(time.Now().Add(5 * time.Second))
		var ce *wsock.CloseError
		// gorilla sends its own 1009 (without a reason) when the limit
		// trips; the code is what devices act on.
		if !errors.As(err, &ce) || ce.Code != pushproto.CloseTooBig {
			t.Fatalf("try %d: client read %v, want close 1009", i, err)
		}
		select {
		case <-released:
		case <-time.After(3 * time.Second):
			t.Fatal("Release did not return")
		}
	}
}

// Close sends the code and reason; Release returns as soon as the device
// answers, well before the grace period.
func TestCloseThenRelease(t *testing.T) {
	l := listen(t, wsock.Options{}, false)
	long := strings.Repeat("r", 200)
	for _, c := range []struct {
		code         int
		reason, want string
	}{
		{pushproto.CloseGoingAway, "server shutting down", "server shutting down"},
		{pushproto.CloseServerError, "hello timeout", "hello timeout"},
		{pushproto.CloseWake, "", ""},
		{pushproto.CloseServerError, long, long[:123]},
	} {
		cc, sc := l.dial()
		if err := sc.Close(c.code, c.reason); err != nil {
			t.Fatalf("Close(%d): %v", c.code, err)
		}
		if err := sc.Close(pushproto.CloseNormal, "again"); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		start := time.Now()
		released := make(chan error, 1)
		go func() { released <- sc.Release() }()
		_, err := cc.Read(time.Now().Add(5 * time.Second))
		var ce *wsock.CloseError
		if !errors.As(err, &ce) || ce.Code != c.code || ce.Reason != c.want {
			t.Fatalf("client read %v, want close %d %q", err, c.code, c.want)
		}
		select {
		case <-released:
			if el := time.Since(start); el > 800*time.Millisecond {
				t.Fatalf("Release took %s although the device answered the close", el)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("Release did not return")
		}
		if err := sc.Release(); err != nil {
			t.Fatalf("second Release: %v", err)
		}
		if err := sc.WriteFrame([]byte("{}")); err == nil {
			t.Fatal("WriteFrame after Release succeeded")
		}
	}
}

// A device that never answers the close is cut off after the grace period.
func TestReleaseBoundedWhenDeviceSilent(t *testing.T) {
	l := listen(t, wsock.Options{}, false)
	_, sc := l.dial() // the client never reads, so never answers
	sc.Close(pushproto.CloseServerError, "bye")
	start := time.Now()
	done := make(chan struct{})
	go func() { sc.Release(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Release blocked on a silent device")
	}
	if el := time.Since(start); el < 500*time.Millisecond {
		t.Fatalf("Release returned after %s without the device's close", el)
	}
}

// With nothing from the device, reads fail with a timeout once the idle
// timeout has passed: both the hub's parking call and ReadFrame.
func TestIdleTimeout(t *testing.T) {
	l := listen(t, wsock.Options{}, false)
	for _, park := range []bool{false, true} {
		_, sc := l.dial()
		sc.SetIdleTimeout(200 * time.Millisecond)
		start := time.Now()
		var err error
		if park {
			err = sc.WaitReadable()
		} else {
			_, err = readWithin(t, sc, 5*time.Second)
		}
		el := time.Since(start)
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("park=%v: %v (%T), want a net.Error timeout", park, err, err)
		}
		if el < 180*time.Millisecond || el > 2*time.Second {
			t.Fatalf("park=%v: timed out after %s", park, el)
		}
	}
}

// Pongs from a device (gorilla clients answer pings while reading) extend
// the idle timeout; once the pings stop, the timeout comes.
func TestPongExtendsIdle(t *testing.T) {
	l := listen(t, wsock.Options{}, false)
	cc, sc := l.dial()
	go cc.Read(time.Now().Add(10 * time.Second))                          // answers pings
	const idle, pingFor = 600 * time.Millisecond, 1200 * time.Millisecond // idle is six ping gaps: a busy machine may delay one
	sc.SetIdleTimeout(idle)
	start := time.Now()
	pinging := make(chan struct{})
	go func() {
		defer close(pinging)
		for time.Since(start) < pingFor {
			if err := sc.Ping(); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	// The hub's read loop: park, then read.
	var err error
	for err == nil {
		if err = sc.WaitReadable(); err == nil {
			_, err = sc.ReadFrame()
		}
	}
	el := time.Since(start)
	<-pinging
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read loop ended with %v, want a timeout", err)
	}
	if el < pingFor {
		t.Fatalf("timed out after %s while pongs were arriving", el)
	}
	if el > pingFor+idle+time.Second {
		t.Fatalf("timed out only after %s", el)
	}
}

// The device closing (with a close frame) or vanishing ends the read
// promptly, not as a timeout.
func TestPeerGoes(t *testing.T) {
	l := listen(t, wsock.Options{}, false)
	cc, sc := l.dial()
	sc.SetIdleTimeout(10 * time.Second)
	cc.Close()
	if _, err := readWithin(t, sc, 3*time.Second); !errors.Is(err, pushproto.ErrPeerClosed) {
		t.Fatalf("after a client close: %v, want ErrPeerClosed", err)
	}

	cc, sc = l.dial()
	sc.SetIdleTimeout(10 * time.Second)
	cc.Abort()
	_, err := readWithin(t, sc, 3*time.Second)
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("after the client vanished: %v", err)
	}
}

// A browser or curl that is not a WebSocket client is told so.
func TestNotWebSocket(t *testing.T) {
	l := listen(t, wsock.Options{}, false)
	resp, err := http.Get(l.srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUpgradeRequired || !strings.Contains(string(body), "WebSocket") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
}

// Dialing something that is not a device listener reports the HTTP status.
func TestDialNotAListener(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := wsock.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err == nil || !strings.Contains(err.Error(), "HTTP 404") {
		t.Fatalf("Dial: %v", err)
	}
}

// notified counts Notify callbacks.
type notified struct{ ch chan struct{} }

func newNotified() *notified { return &notified{ch: make(chan struct{}, 16)} }

func (n *notified) f() { n.ch <- struct{}{} }

func (n *notified) want(t *testing.T, what string) {
	t.Helper()
	select {
	case <-n.ch:
	case <-time.After(3 * time.Second):
		t.Fatalf("no notification: %s", what)
	}
}

func (n *notified) none(t *testing.T, wait time.Duration, what string) {
	t.Helper()
	select {
	case <-n.ch:
		t.Fatalf("unexpected notification: %s", what)
	case <-time.After(wait):
	}
}

// Under the poller an idle connection needs no reader: Notify calls back
// once when a frame arrives, and again only after it is re-armed.
func TestNotifyOnFrame(t *testing.T) {
	l := listenWith(t, wsock.Options{}, false, true)
	cc, sc := l.dial()
	n := newNotified()
	if !sc.Notify(n.f) {
		t.Fatal("Notify = false on plain TCP with a poller")
	}
	n.none(t, 100*time.Millisecond, "nothing was sent")
	cc.Write([]byte(`{"messageType":"ping"}`))
	n.want(t, "a frame arrived")
	if b, err := readWithin(t, sc, 3*time.Second); err != nil || string(b) != `{"messageType":"ping"}` {
		t.Fatalf("ReadFrame %q, %v", b, err)
	}
	cc.Write([]byte(`{}`))
	n.none(t, 150*time.Millisecond, "not re-armed")
	// Re-armed with the frame already waiting in the socket: at once.
	if !sc.Notify(n.f) {
		t.Fatal("re-arm failed")
	}
	n.want(t, "re-armed with a frame waiting")
	if b, err := readWithin(t, sc, 3*time.Second); err != nil || string(b) != `{}` {
		t.Fatalf("ReadFrame %q, %v", b, err)
	}
	if sc.Disarm() {
		t.Fatal("Disarm = true after the callback ran")
	}
}

// Disarm takes the connection back: the callback will not run.
func TestDisarm(t *testing.T) {
	l := listenWith(t, wsock.Options{}, false, true)
	cc, sc := l.dial()
	n := newNotified()
	sc.Notify(n.f)
	if !sc.Disarm() {
		t.Fatal("Disarm = false with a callback pending")
	}
	if sc.Disarm() {
		t.Fatal("second Disarm = true")
	}
	cc.Write([]byte(`{}`))
	n.none(t, 200*time.Millisecond, "after Disarm")
	if b, err := readWithin(t, sc, 3*time.Second); err != nil || string(b) != `{}` {
		t.Fatalf("ReadFrame %q, %v", b, err)
	}
}

// A device that vanishes wakes its armed connection, and the read says the
// peer is gone; a close from the hub then needs no answer to be released.
func TestNotifyOnHangUp(t *testing.T) {
	l := listenWith(t, wsock.Options{}, false, true)
	cc, sc := l.dial()
	n := newNotified()
	sc.Notify(n.f)
	cc.Abort()
	n.want(t, "the device hung up")
	_, err := readWithin(t, sc, 3*time.Second)
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("ReadFrame after hang-up: %v", err)
	}
	done := make(chan struct{})
	go func() { sc.Release(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("Release blocked")
	}
}

// A pong wakes an armed connection; ReadFrame consumes it and returns
// (nil, nil) instead of waiting for a data frame, and Idle restarts.
func TestPongOnlyRead(t *testing.T) {
	l := listenWith(t, wsock.Options{}, false, true)
	cc, sc := l.dial()
	go cc.Read(time.Now().Add(10 * time.Second)) // answers pings
	time.Sleep(150 * time.Millisecond)
	if idle := sc.Idle(); idle < 100*time.Millisecond {
		t.Fatalf("Idle = %s after 150ms of silence", idle)
	}
	n := newNotified()
	sc.Notify(n.f)
	if err := sc.Ping(); err != nil {
		t.Fatal(err)
	}
	n.want(t, "the pong arrived")
	b, err := readWithin(t, sc, 2*time.Second)
	if b != nil || err != nil {
		t.Fatalf("ReadFrame with only a pong pending = %q, %v; want nil, nil", b, err)
	}
	if idle := sc.Idle(); idle > 100*time.Millisecond {
		t.Fatalf("Idle = %s right after a pong", idle)
	}
	if sc.Buffered() {
		t.Fatal("Buffered after the pong was consumed")
	}
}

// Without a poller (Handler, or TLS) Notify says so and the hub parks a
// reader instead.
func TestNoNotifyWithoutPoller(t *testing.T) {
	for _, c := range []struct {
		name      string
		tls, poll bool
	}{{"Handler", false, false}, {"TLS", true, true}} {
		t.Run(c.name, func(t *testing.T) {
			l := listenWith(t, wsock.Options{}, c.tls, c.poll)
			_, sc := l.dial()
			if sc.Notify(func() { t.Error("callback without a poller") }) {
				t.Fatal("Notify = true")
			}
			if sc.Disarm() {
				t.Fatal("Disarm = true with nothing armed")
			}
		})
	}
	if wsock.Handler(wsock.Options{}, nil).(*wsock.Server).Polling() {
		t.Fatal("Handler polls")
	}
}

// Close stops Run; both are idempotent.
func TestServerRunClose(t *testing.T) {
	srv := wsock.NewServer(wsock.Options{}, func(*wsock.Conn) {})
	ran := make(chan error, 1)
	go func() { ran <- srv.Run(context.Background()) }()
	time.Sleep(20 * time.Millisecond)
	srv.Close()
	srv.Close()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Run did not return after Close")
	}
	// Run after cancel returns too.
	srv2 := wsock.NewServer(wsock.Options{}, func(*wsock.Conn) {})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { ran <- srv2.Run(ctx) }()
	cancel()
	select {
	case <-ran:
	case <-time.After(3 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// The hub re-arms a connection from the goroutine its callback handed the
// burst to, not the one that armed it first (the HTTP handler, at Accept).
// Under -race this must be clean: a connection's poller state may not rely
// on the epoll event for ordering, which the memory model does not see.
func TestRearmFromCallback(t *testing.T) {
	l := listenWith(t, wsock.Options{}, false, true)
	cc, sc := l.dial()
	const frames = 5
	// The device writes from a goroutine of its own, started before the
	// first Notify, so nothing the arming goroutine does afterwards is
	// ordered before the callbacks by the test itself.
	go func() {
		for i := range frames {
			time.Sleep(30 * time.Millisecond)
			cc.Write([]byte(fmt.Sprintf(`{"n":%d}`, i)))
		}
	}()
	got := make(chan string, frames+1)
	var onReady func()
	onReady = func() {
		// As the hub does: hand the burst to another goroutine, which
		// reads and then arms again.
		go func() {
			b, err := sc.ReadFrame()
			if err != nil {
				got <- "error: " + err.Error()
				return
			}
			frame := string(b) // b is only valid until Notify
			if !sc.Notify(onReady) {
				got <- "re-arm failed"
			}
			got <- frame
		}()
	}
	if !sc.Notify(onReady) {
		t.Fatal("Notify = false")
	}
	for i := range frames {
		select {
		case b := <-got:
			if want := fmt.Sprintf(`{"n":%d}`, i); b != want {
				t.Fatalf("frame %d: %s", i, b)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("frame %d never noticed", i)
		}
	}
	sc.Disarm()
}

// Expire ends a write that is blocked on a peer that stopped reading, from
// another goroutine, long before the write timeout would.
func TestExpireEndsBlockedWrite(t *testing.T) {
	l := listen(t, wsock.Options{WriteTimeout: time.Minute, MaxFrame: 1 << 20}, false)
	_, sc := l.dial() // the client never reads
	frame := []byte(`"` + strings.Repeat("x", 64<<10) + `"`)
	done := make(chan error, 1)
	var written atomic.Int64
	go func() {
		for {
			if err := sc.WriteFrame(frame); err != nil {
				done <- err
				return
			}
			written.Add(1)
		}
	}()
	// Wait until the socket's buffers are full and the writer blocks.
	for last := int64(-1); ; {
		time.Sleep(200 * time.Millisecond)
		n := written.Load()
		if n == last {
			break
		}
		last = n
	}
	start := time.Now()
	sc.Expire(100 * time.Millisecond)
	select {
	case err := <-done:
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("blocked write ended with %v, want a timeout", err)
		}
		t.Logf("blocked write ended %s after Expire, %d frames in", time.Since(start), written.Load())
	case <-time.After(10 * time.Second):
		t.Fatal("a write blocked on a stuck peer did not end after Expire")
	}
	// Later writes fail at once: the connection's end is bounded.
	if err := sc.WriteFrame([]byte(`"late"`)); err == nil {
		t.Fatal("a write after the expiry succeeded")
	}
}

// Whole tells a frame that has wholly arrived from one that has not, so
// the core never waits for the rest of a frame on a shared worker. It is
// asked as the core asks it: when the poller saw bytes, and after each
// frame while bytes are buffered.
func TestWhole(t *testing.T) {
	l := listen(t, wsock.Options{}, false)
	cc, sc := l.dial()
	raw := cc.NetConn()
	masked := func(op byte, payload string) []byte {
		f := []byte{0x80 | op, 0x80 | byte(len(payload)), 1, 2, 3, 4}
		for i := range len(payload) {
			f = append(f, payload[i]^byte(i%4+1))
		}
		return f
	}
	const ping = `{"messageType":"ping"}`
	frame := masked(0x1, ping)
	pong := masked(0xa, "")
	settle := func() { time.Sleep(50 * time.Millisecond) } // the bytes reach the relay's socket
	read := func() {
		t.Helper()
		if f, err := sc.ReadFrame(); err != nil || string(f) != ping {
			t.Fatalf("ReadFrame = %q, %v", f, err)
		}
	}

	// A whole frame, then a frame and half of the next.
	raw.Write(frame)
	settle()
	if !sc.Whole() {
		t.Fatal("a whole frame is not whole")
	}
	read()
	raw.Write(append(append([]byte{}, frame...), frame[:7]...))
	settle()
	if !sc.Whole() {
		t.Fatal("a whole frame before half of one is not whole")
	}
	read()
	if !sc.Buffered() || sc.Whole() {
		t.Fatal("half a frame is whole")
	}
	raw.Write(frame[7:]) // the core's own goroutine reads the rest
	read()

	// Pongs and half a frame are not whole (ReadFrame would skip the
	// pongs and wait); pongs alone are.
	raw.Write(append(append(append([]byte{}, pong...), pong...), frame[:3]...))
	settle()
	if sc.Whole() {
		t.Fatal("pongs and half a frame are whole")
	}
	raw.Write(frame[3:])
	read()
	raw.Write(pong)
	settle()
	if !sc.Whole() {
		t.Fatal("a pong is not whole")
	}
	if f, err := sc.ReadFrame(); f != nil || err != nil {
		t.Fatalf("ReadFrame of a pong = %q, %v", f, err)
	}

	// A frame larger than the read buffer is never whole.
	big := []byte{0x81, 0x80 | 126, 0x04, 0x00, 1, 2, 3, 4} // 1024 bytes announced
	raw.Write(big)
	settle()
	if sc.Whole() {
		t.Fatal("the header of a 1 KiB frame is whole")
	}
}
