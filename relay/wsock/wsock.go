// Package wsock adapts gorilla/websocket to pushrelay: it upgrades device
// HTTP requests into connections the relay core can serve, and dials the
// relay (or any autopush-compatible server) for the device tool, the bench
// tool and tests. gorilla/websocket is imported here and nowhere else.
//
// Memory matters: a relay holds tens of thousands of idle devices. The
// handler returns as soon as the upgrade is done, so the HTTP server's
// goroutine and buffers go away; the core's reader goroutine starts with a
// small stack; reads use a small buffer and writes borrow one from a pool.
// A long-lived client connection (the upstream link's held sessions) reads
// frames itself and can park on a Poller while idle (ClientConn.Park), so
// that it holds no goroutine either.
package wsock

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"

	"github.com/pushrelay/pushrelay/relay/pushproto"
)

// Options configure the server side.
type Options struct {
	// MaxFrame is the largest text frame accepted (default 32 KiB).
	MaxFrame int64
	// WriteTimeout bounds each write (default 10s).
	WriteTimeout time.Duration
	// ReadBufferSize is the per-connection read buffer (at least and by
	// default 512; larger frames are still read, in pieces).
	ReadBufferSize int
}

func (o *Options) setDefaults() {
	if o.MaxFrame <= 0 {
		o.MaxFrame = 32 << 10
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 10 * time.Second
	}
	// gorilla adopts the hijacked reader only if it is larger than 256
	// bytes; otherwise it allocates a 4 KiB one of its own, and Buffered
	// would look at the wrong buffer. So 512 is both default and floor.
	o.ReadBufferSize = max(o.ReadBufferSize, 512)
}

var writePool sync.Pool

// Server is the device listener's HTTP handler. It upgrades requests on
// any path to WebSocket and passes each connection to accept, which must
// take ownership (and eventually call Release) and return promptly. With a
// poller (Linux, plain TCP), idle connections are watched by one epoll
// loop that Run drives; without, Notify reports false and the core parks a
// goroutine per connection instead.
type Server struct {
	opts   Options
	up     *websocket.Upgrader
	accept func(*Conn)
	poll   *poller
}

// NewServer returns a server with a poller where the platform has one.
// Run must be running for armed connections to be noticed.
func NewServer(opts Options, accept func(*Conn)) *Server {
	s := newServer(opts, accept)
	if p, err := newPoller(); err == nil {
		s.poll = p
	}
	return s
}

// Handler returns a server without a poller (no Run needed).
func Handler(opts Options, accept func(*Conn)) http.Handler {
	return newServer(opts, accept)
}

// Run drives the poller until ctx is done or Close.
func (s *Server) Run(ctx context.Context) error {
	if s.poll == nil {
		<-ctx.Done()
		return nil
	}
	return s.poll.run(ctx)
}

// Close stops the poller. Idempotent.
func (s *Server) Close() error {
	if s.poll != nil {
		s.poll.close()
	}
	return nil
}

// Polling reports whether idle connections are watched by the poller.
func (s *Server) Polling() bool { return s.poll != nil }

func newServer(opts Options, accept func(*Conn)) *Server {
	opts.setDefaults()
	up := &websocket.Upgrader{
		HandshakeTimeout: 10 * time.Second,
		// Zero: gorilla reads through the bufio.Reader that hijack returns,
		// which is ours (see hijacker), so we can see what it holds.
		ReadBufferSize:  0,
		WriteBufferSize: 1024,
		WriteBufferPool: &writePool,
		// Browsers' push connections carry no page origin; devices are
		// authenticated by their UAID, not by origin.
		CheckOrigin: func(*http.Request) bool { return true },
		// Firefox asks for the "push-notification" subprotocol; autopush
		// does not echo it and Firefox accepts that, so neither do we.
		Error: func(w http.ResponseWriter, r *http.Request, status int, reason error) {
			http.Error(w, reason.Error(), status)
		},
	}
	return &Server{opts: opts, up: up, accept: accept}
}

// ServeHTTP upgrades a device's request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !websocket.IsWebSocketUpgrade(r) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusUpgradeRequired)
		io.WriteString(w, "pushrelay device listener: connect with a WebSocket client (Mozilla push protocol)\n")
		return
	}
	hj := &hijacker{ResponseWriter: w, size: s.opts.ReadBufferSize}
	ws, err := s.up.Upgrade(hj, r, nil)
	if err != nil {
		return // the upgrader already answered
	}
	c := wrap(ws, s.opts.MaxFrame, s.opts.WriteTimeout)
	// The core answers the peer's close frame itself, from the
	// connection's writer; gorilla's default would write it from the
	// reading goroutine and block it while the socket is full.
	ws.SetCloseHandler(func(int, string) error { return nil })
	c.br = hj.br
	c.cork = hj.cork
	c.tcp = tcpConn(hj.conn)
	if c.tcp != nil {
		c.raw = rawConn(c.tcp)
		// What the kernel buffered for a device that stopped reading is
		// bounded by the write timeout too.
		setUserTimeout(c.tcp, s.opts.WriteTimeout)
	}
	if c.raw != nil && s.poll != nil {
		if fd := socketFD(c.raw); fd >= 0 {
			c.fd, c.poll = fd, s.poll
		}
	}
	s.accept(c)
}

// tcpConn finds the TCP socket under c: c itself, or what a wrapper (a
// listener's connection guard) names with NetConn, as tls.Conn does. TLS
// connections are not unwrapped: their bytes must go through TLS.
func tcpConn(c net.Conn) *net.TCPConn {
	for range 4 {
		switch v := c.(type) {
		case *net.TCPConn:
			return v
		case *tls.Conn:
			return nil
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// hijacker hands gorilla a small read buffer of ours in place of the HTTP
// server's 4 KiB one, and remembers it and the raw connection.
type hijacker struct {
	http.ResponseWriter
	size int
	br   *bufio.Reader
	conn net.Conn
	cork *corkConn
}

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	if brw.Reader.Buffered() > 0 {
		// Data before the handshake finished: let gorilla refuse it.
		return conn, brw, nil
	}
	h.conn = conn
	h.br = bufio.NewReaderSize(conn, h.size)
	h.cork = &corkConn{Conn: conn}
	// gorilla reads through our buffer and writes through the cork.
	return h.cork, bufio.NewReadWriter(h.br, brw.Writer), nil
}

// Conn is one WebSocket connection. It satisfies relay.Conn.
type Conn struct {
	ws   *websocket.Conn
	br   *bufio.Reader   // gorilla's read buffer
	cork *corkConn       // what gorilla writes to; nil on client-side or foreign conns
	tcp  *net.TCPConn    // the plain TCP socket under cork, for writev; nil on TLS
	raw  syscall.RawConn // for parking idle readers cheaply; nil if unavailable
	poll *poller         // watches the socket while idle; nil if unavailable
	pollReg
	armed        atomic.Bool // the poller will call onReady once
	onReady      func()
	lastRead     atomic.Int64 // unix nanos of the last frame or pong received
	writeTimeout time.Duration
	idle         atomic.Int64 // idle timeout in ns
	closing      atomic.Bool  // a close frame was sent or the end is bounded (Expire)
	expiry       atomic.Int64 // unix nanos every read and write must end by (Expire); 0 = none
	onPing       atomic.Pointer[func([]byte)]
	closeOnce    sync.Once
	releaseOnce  sync.Once
	// frame holds the frames ReadFrame returns, from framePool, while a
	// burst is being read; Notify, WaitReadable and Release give it back,
	// so an idle connection holds none.
	frame *bytes.Buffer
}

// framePool lends ReadFrame its buffers.
var framePool = sync.Pool{New: func() any { return bytes.NewBuffer(make([]byte, 0, 1024)) }}

// maxPooledFrame keeps a rare huge frame's buffer out of the pool.
const maxPooledFrame = 16 << 10

// putFrame gives the read buffer back to the pool.
func (c *Conn) putFrame() {
	if c.frame == nil {
		return
	}
	if c.frame.Cap() <= maxPooledFrame {
		c.frame.Reset()
		framePool.Put(c.frame)
	}
	c.frame = nil
}

// closeGrace bounds how long a closing connection waits for the peer's
// close frame before the socket is released.
const closeGrace = time.Second

func wrap(ws *websocket.Conn, maxFrame int64, writeTimeout time.Duration) *Conn {
	c := &Conn{ws: ws, writeTimeout: writeTimeout}
	c.fd = -1
	c.lastRead.Store(time.Now().UnixNano())
	ws.SetReadLimit(maxFrame)
	ws.SetPongHandler(func(string) error {
		c.extend()
		return nil
	})
	// gorilla's default ping handler answers with a pong; every ping also
	// shows the peer is alive.
	ws.SetPingHandler(func(data string) error {
		c.extend()
		if f := c.onPing.Load(); f != nil {
			(*f)([]byte(data))
			return nil
		}
		err := ws.WriteControl(websocket.PongMessage, []byte(data), c.writeDeadline(writeTimeout))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil
		}
		return err
	})
	return c
}

// writeDeadline is now plus d, or the expiry if that comes first.
func (c *Conn) writeDeadline(d time.Duration) time.Time {
	t := time.Now().Add(d)
	if e := c.expiry.Load(); e != 0 && e < t.UnixNano() {
		return time.Unix(0, e)
	}
	return t
}

// Expire bounds the connection's end: every read and write, including one
// blocked now, returns within d, and later deadlines do not reach past
// it. It is what lets a stuck peer's writer be ended from another
// goroutine without waiting for it. Safe from any goroutine.
func (c *Conn) Expire(d time.Duration) {
	t := time.Now().Add(d)
	for {
		old := c.expiry.Load()
		if old != 0 && old <= t.UnixNano() {
			return // already bounded at least as tightly
		}
		if c.expiry.CompareAndSwap(old, t.UnixNano()) {
			break
		}
	}
	c.closing.Store(true)
	// Through gorilla's net.Conn (the cork), which passes an earlier
	// deadline on at once and so unblocks a write in progress.
	nc := c.ws.NetConn()
	nc.SetReadDeadline(t)
	nc.SetWriteDeadline(t)
}

// OnPing makes f answer the peer's pings instead of the adapter: f is
// called on the reading goroutine with the ping's payload and must not
// block; the answer is written with Pong. The core uses it so that no
// write happens on the goroutine that reads.
func (c *Conn) OnPing(f func(payload []byte)) { c.onPing.Store(&f) }

// Pong answers a ping with its payload.
func (c *Conn) Pong(payload []byte) error {
	err := c.ws.WriteControl(websocket.PongMessage, payload, c.writeDeadline(c.writeTimeout))
	if errors.Is(err, websocket.ErrCloseSent) {
		return nil
	}
	return err
}

func (c *Conn) extend() {
	c.lastRead.Store(time.Now().UnixNano())
	if c.closing.Load() {
		return
	}
	if d := c.idle.Load(); d > 0 {
		c.ws.SetReadDeadline(time.Now().Add(time.Duration(d)))
	}
}

// SetIdleTimeout sets how long a read may wait from the last frame or pong.
func (c *Conn) SetIdleTimeout(d time.Duration) {
	c.idle.Store(int64(d))
	c.extend()
}

// WaitReadable parks until the socket has bytes to read, peeking so
// nothing is consumed, in a call only a few frames deep: an idle device's
// goroutine waits here with a minimal stack instead of deep inside
// gorilla's frame parser. It returns at once when bytes are already
// buffered, and on TLS connections (which need their own reads).
func (c *Conn) WaitReadable() error {
	c.putFrame()
	if c.raw == nil || c.br.Buffered() > 0 {
		return nil
	}
	return waitReadable(c.raw)
}

// Notify arranges for f to be called once, from the poller, when the
// connection has bytes to read; f must not block. It reports false when
// there is no poller for this connection (TLS, other platforms): the caller
// must then wait with WaitReadable. Bytes already buffered call f at once.
func (c *Conn) Notify(f func()) bool {
	if c.poll == nil {
		return false
	}
	c.putFrame()
	if c.br.Buffered() > 0 {
		f()
		return true
	}
	c.onReady = f
	c.armed.Store(true)
	if err := c.poll.arm(c); err != nil {
		c.armed.Store(false)
		return false
	}
	return true
}

// fire is the poller's event for this connection.
func (c *Conn) fire() {
	if c.armed.CompareAndSwap(true, false) {
		c.onReady()
	}
}

// Disarm cancels a pending Notify. It reports true if the callback had not
// run and now will not: the caller owns reading again.
func (c *Conn) Disarm() bool { return c.armed.CompareAndSwap(true, false) }

// Idle is the time since a frame, ping or pong last arrived.
func (c *Conn) Idle() time.Duration {
	return time.Duration(time.Now().UnixNano() - c.lastRead.Load())
}

// Buffered reports whether gorilla's read buffer holds unread bytes.
func (c *Conn) Buffered() bool {
	return c.br != nil && c.br.Buffered() > 0
}

// Whole reports whether the buffered bytes hold a whole frame, or only
// whole pongs, so that ReadFrame will not wait for the peer. With nothing
// buffered it first takes in what the socket holds (one read that does not
// block when the poller said the socket is readable). A frame larger than
// the read buffer is never whole here: its reader waits for the rest on a
// goroutine of its own, not on a shared worker. Connections without a raw
// socket (TLS) report true.
func (c *Conn) Whole() bool {
	if c.raw == nil {
		return true
	}
	if c.br.Buffered() == 0 {
		if _, err := c.br.Peek(1); err != nil {
			return true // ReadFrame reports the error at once
		}
	}
	b, _ := c.br.Peek(c.br.Buffered())
	for len(b) > 0 {
		n, ok := frameLen(b)
		if !ok || n > len(b) {
			return false
		}
		if b[0] != 0x8a { // not a pong: a frame for ReadFrame
			return true
		}
		b = b[n:]
	}
	return true // only pongs
}

// frameLen is the length of the frame starting at b (RFC 6455 §5.2),
// header and payload, or false if b does not hold the whole header.
func frameLen(b []byte) (int, bool) {
	if len(b) < 2 {
		return 0, false
	}
	n, hdr := int64(b[1]&0x7f), 2
	switch n {
	case 126:
		if len(b) < 4 {
			return 0, false
		}
		n, hdr = int64(b[2])<<8|int64(b[3]), 4
	case 127:
		if len(b) < 10 {
			return 0, false
		}
		n = 0
		for _, x := range b[2:10] {
			n = n<<8 | int64(x)
		}
		hdr = 10
	}
	if b[1]&0x80 != 0 {
		hdr += 4 // the mask key
	}
	if n < 0 || n > 1<<30 {
		return 1 << 30, true // absurd: never whole; gorilla refuses it
	}
	return hdr + int(n), true
}

// ReadFrame returns the next text frame. On a connection that parks
// shallowly it returns (nil, nil) when only pongs were pending: they are
// consumed here, at the frame boundary, because gorilla would handle a pong
// and then block deep inside its parser waiting for the next data frame,
// which on an idle device may be half an hour away. The frame is valid
// until the next ReadFrame, Notify, WaitReadable or Release: its buffer is
// reused.
func (c *Conn) ReadFrame() ([]byte, error) {
	if c.raw != nil {
		more, err := c.skipPongs()
		if err != nil {
			return nil, mapReadErr(err)
		}
		if !more {
			return nil, nil
		}
	}
	for {
		typ, r, err := c.ws.NextReader()
		if err != nil {
			return nil, mapReadErr(err)
		}
		c.extend()
		switch typ {
		case websocket.TextMessage:
			if c.frame == nil {
				c.frame = framePool.Get().(*bytes.Buffer)
			}
			c.frame.Reset()
			if _, err := c.frame.ReadFrom(r); err != nil {
				return nil, mapReadErr(err)
			}
			if !utf8.Valid(c.frame.Bytes()) {
				return nil, pushproto.ErrInvalidUTF8 // RFC 6455 §8.1: close with 1007
			}
			return c.frame.Bytes(), nil
		case websocket.BinaryMessage:
			return nil, pushproto.ErrBinaryFrame
		}
	}
}

// skipPongs consumes complete, well-formed pong frames at the head of the
// read buffer. It reports whether anything else (a frame for gorilla, or
// bytes still in the socket) is pending. Anything unusual is left for
// gorilla to read and judge.
func (c *Conn) skipPongs() (bool, error) {
	for {
		if c.br.Buffered() == 0 {
			// Nothing buffered: bytes in the socket (WaitReadable said so)
			// or nothing at all; peek one without blocking.
			if _, err := c.br.Peek(1); err != nil {
				return false, err
			}
		}
		h, _ := c.br.Peek(min(c.br.Buffered(), 2))
		if len(h) < 2 || h[0] != 0x8a || h[1]&0x80 == 0 || h[1]&0x7f > 125 {
			return true, nil // not a final, masked, short pong: gorilla's
		}
		n := 2 + 4 + int(h[1]&0x7f)
		if c.br.Buffered() < n {
			return true, nil // a partial frame: let gorilla wait for it
		}
		c.br.Discard(n)
		c.extend()
		if c.br.Buffered() == 0 {
			return false, nil
		}
	}
}

func mapReadErr(err error) error {
	switch {
	case errors.Is(err, websocket.ErrReadLimit):
		return pushproto.ErrFrameTooBig
	case websocket.IsCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway, websocket.CloseNoStatusReceived),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return errors.Join(pushproto.ErrPeerClosed, err)
	}
	return err
}

// WriteFrame writes one text frame.
func (c *Conn) WriteFrame(p []byte) error {
	if c.tcp != nil {
		return c.writeDirect([][]byte{p})
	}
	c.ws.SetWriteDeadline(c.writeDeadline(c.writeTimeout))
	return c.ws.WriteMessage(websocket.TextMessage, p)
}

// WriteFrames writes text frames as one batch: one system call on a plain
// TCP connection (writev), a corked write on other hijacked ones.
func (c *Conn) WriteFrames(frames [][]byte) error {
	if c.tcp != nil {
		return c.writeDirect(frames)
	}
	if c.cork == nil || len(frames) < 2 {
		for _, f := range frames {
			if err := c.WriteFrame(f); err != nil {
				return err
			}
		}
		return nil
	}
	c.cork.cork()
	for _, f := range frames {
		if err := c.WriteFrame(f); err != nil {
			c.cork.uncork()
			return err
		}
	}
	return c.cork.uncork()
}

// writeDirect frames text messages itself and writes them with one
// writev: the headers beside the caller's payloads, so nothing is copied
// and nothing but the caller's frames is held while a write waits for a
// slow peer. Server frames are unmasked and unfragmented (RFC 6455 §5.2).
// Only the connection's writer writes, and gorilla's own writes (control
// frames) come from the same goroutine, so frames never interleave.
func (c *Conn) writeDirect(frames [][]byte) error {
	hdr := make([]byte, 0, maxHeader*len(frames))
	bufs := make(net.Buffers, 0, 2*len(frames))
	for _, f := range frames {
		start := len(hdr)
		hdr = appendTextHeader(hdr, len(f))
		bufs = append(bufs, hdr[start:len(hdr):len(hdr)], f)
	}
	// Through the cork, which coarsens deadlines and caps them at the
	// expiry.
	c.cork.SetWriteDeadline(c.writeDeadline(c.writeTimeout))
	_, err := bufs.WriteTo(c.tcp)
	return err
}

// maxHeader is the longest header of an unmasked frame.
const maxHeader = 10

// appendTextHeader appends the header of a final, unmasked text frame of
// n payload bytes.
func appendTextHeader(b []byte, n int) []byte {
	switch {
	case n < 126:
		return append(b, 0x81, byte(n))
	case n <= 0xffff:
		return append(b, 0x81, 126, byte(n>>8), byte(n))
	default:
		return append(b, 0x81, 127, 0, 0, 0, 0, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
}

// Ping sends a WebSocket ping.
func (c *Conn) Ping() error {
	return c.ws.WriteControl(websocket.PingMessage, nil, c.writeDeadline(c.writeTimeout))
}

// Close sends a close frame (best effort, once) and bounds the reader so it
// ends within a second: when the peer answers the close, or at the
// deadline. It does not release the socket (Release does), so the peer gets
// the close frame instead of a reset. Safe from any goroutine.
func (c *Conn) Close(code int, reason string) error {
	var err error
	c.closeOnce.Do(func() {
		c.closing.Store(true)
		if len(reason) > 123 {
			reason = reason[:123]
		}
		msg := websocket.FormatCloseMessage(code, reason)
		err = c.ws.WriteControl(websocket.CloseMessage, msg, c.writeDeadline(closeGrace))
		if errors.Is(err, websocket.ErrCloseSent) {
			err = nil
		}
		c.ws.SetReadDeadline(c.writeDeadline(closeGrace))
	})
	return err
}

// Release finishes the closing handshake and closes the socket. It is
// called by the goroutine that reads, after its last ReadFrame: it reads on
// until the peer's close frame, end of stream or the close deadline, then
// closes. Idempotent.
func (c *Conn) Release() error {
	var err error
	c.releaseOnce.Do(func() {
		c.putFrame()
		c.armed.Store(false)
		deadline := c.writeDeadline(closeGrace)
		c.closing.Store(true)
		c.ws.SetReadDeadline(deadline)
		var rerr error
		for rerr == nil {
			_, _, rerr = c.ws.NextReader()
		}
		var ce *websocket.CloseError
		if !errors.As(rerr, &ce) && !errors.Is(rerr, io.EOF) && !errors.Is(rerr, net.ErrClosed) {
			// The reader stopped on a protocol error (a frame too big, say)
			// with the peer possibly still sending: discard raw bytes for a
			// moment so closing does not reset the connection before the
			// peer reads our close frame.
			nc := c.ws.NetConn()
			until := time.Now().Add(250 * time.Millisecond)
			if deadline.Before(until) {
				until = deadline
			}
			nc.SetReadDeadline(until)
			io.Copy(io.Discard, nc)
		}
		if c.poll != nil {
			c.poll.forget(c)
		}
		err = c.ws.Close()
	})
	return err
}

// RemoteAddr is the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return c.ws.RemoteAddr() }

// LocalAddr is the relay's address the device connected to.
func (c *Conn) LocalAddr() net.Addr { return c.ws.LocalAddr() }
