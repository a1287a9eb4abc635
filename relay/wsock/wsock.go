// Package wsock adapts gorilla/websocket to pushrelay: it upgrades device
// HTTP requests into connections the relay core can serve, and dials the
// relay (or any autopush-compatible server) for the device tool, the bench
// tool and tests. gorilla/websocket is imported here and nowhere else.
//
// Memory matters: a relay holds tens of thousands of idle devices. The
// handler returns as soon as the upgrade is done, so the HTTP server's
// goroutine and buffers go away; the core's reader goroutine starts with a
// small stack; reads use a small buffer and writes borrow one from a pool.
package wsock

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

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

// Handler upgrades requests on any path to WebSocket and passes each
// connection to accept, which must take ownership (and eventually call
// Release) and return promptly.
func Handler(opts Options, accept func(*Conn)) http.Handler {
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
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !websocket.IsWebSocketUpgrade(r) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusUpgradeRequired)
			io.WriteString(w, "pushrelay device listener: connect with a WebSocket client (Mozilla push protocol)\n")
			return
		}
		hj := &hijacker{ResponseWriter: w, size: opts.ReadBufferSize}
		ws, err := up.Upgrade(hj, r, nil)
		if err != nil {
			return // the upgrader already answered
		}
		c := wrap(ws, opts.MaxFrame, opts.WriteTimeout)
		c.br = hj.br
		c.raw = rawConn(hj.conn)
		accept(c)
	})
}

// hijacker hands gorilla a small read buffer of ours in place of the HTTP
// server's 4 KiB one, and remembers it and the raw connection.
type hijacker struct {
	http.ResponseWriter
	size int
	br   *bufio.Reader
	conn net.Conn
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
	return conn, bufio.NewReadWriter(h.br, brw.Writer), nil
}

// Conn is one WebSocket connection. It satisfies relay.Conn.
type Conn struct {
	ws           *websocket.Conn
	br           *bufio.Reader   // gorilla's read buffer
	raw          syscall.RawConn // for parking idle readers cheaply; nil if unavailable
	writeTimeout time.Duration
	idle         atomic.Int64 // idle timeout in ns
	closing      atomic.Bool  // a close frame was sent; reads are bounded
	closeOnce    sync.Once
	releaseOnce  sync.Once
}

// closeGrace bounds how long a closing connection waits for the peer's
// close frame before the socket is released.
const closeGrace = time.Second

func wrap(ws *websocket.Conn, maxFrame int64, writeTimeout time.Duration) *Conn {
	c := &Conn{ws: ws, writeTimeout: writeTimeout}
	ws.SetReadLimit(maxFrame)
	ws.SetPongHandler(func(string) error {
		c.extend()
		return nil
	})
	// gorilla's default ping handler answers with a pong; every ping also
	// shows the peer is alive.
	ws.SetPingHandler(func(data string) error {
		c.extend()
		err := ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(writeTimeout))
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

func (c *Conn) extend() {
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
	if c.raw == nil || c.br.Buffered() > 0 {
		return nil
	}
	return waitReadable(c.raw)
}

// Buffered reports whether gorilla's read buffer holds unread bytes.
func (c *Conn) Buffered() bool {
	return c.br != nil && c.br.Buffered() > 0
}

// ReadFrame returns the next text frame.
func (c *Conn) ReadFrame() ([]byte, error) {
	for {
		typ, r, err := c.ws.NextReader()
		if err != nil {
			return nil, mapReadErr(err)
		}
		c.extend()
		switch typ {
		case websocket.TextMessage:
			b, err := io.ReadAll(r)
			if err != nil {
				return nil, mapReadErr(err)
			}
			return b, nil
		case websocket.BinaryMessage:
			return nil, pushproto.ErrBinaryFrame
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
	c.ws.SetWriteDeadline(time.Now().Add(c.writeTimeout))
	return c.ws.WriteMessage(websocket.TextMessage, p)
}

// Ping sends a WebSocket ping.
func (c *Conn) Ping() error {
	return c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(c.writeTimeout))
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
		err = c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(closeGrace))
		if errors.Is(err, websocket.ErrCloseSent) {
			err = nil
		}
		c.ws.SetReadDeadline(time.Now().Add(closeGrace))
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
		deadline := time.Now().Add(closeGrace)
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
		err = c.ws.Close()
	})
	return err
}

// RemoteAddr is the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return c.ws.RemoteAddr() }
