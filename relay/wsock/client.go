package wsock

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// ClientConn is the client side of a device connection, used by the device
// tool, the bench tool, the upstream link and tests. One goroutine may read
// while another writes.
//
// gorilla does the opening handshake and the writes; the reads are ours,
// frame by frame through a buffer this type can see into, so that a
// long-lived reader can tell when nothing is buffered above the socket and
// park on a Poller instead of holding a goroutine (Pending, Park). A
// server sends nothing before the client's first frame in the push
// protocol, so nothing is left in gorilla's handshake buffer.
type ClientConn struct {
	ws  *websocket.Conn
	nc  net.Conn // under the WebSocket: *tls.Conn or the TCP connection
	wmu sync.Mutex

	// Read state, owned by the one reading goroutine.
	rbuf     []byte // nil while nothing is buffered and no read runs
	r, w     int    // rbuf[r:w] is read from nc and not yet consumed
	rerr     error  // sticky: the connection is unusable
	deadline time.Time
	extend   time.Duration // ExtendOnPing
	msg      []byte        // a fragmented text message being assembled
	inMsg    bool          // continuation frames are expected
	msgText  bool          // the fragmented message is text

	// Parking (Park): raw is the TCP socket under nc, nil when it has none.
	raw syscall.RawConn
	pollReg
	poll    *poller // guarded by pmu: the poller Park armed, for forget
	armed   atomic.Bool
	onReady func()
	tmu     sync.Mutex
	timer   *time.Timer // fires the parked reader at its deadline
}

// CloseError is returned by Read when the server closed the connection
// with a close frame, or (code 1006) when the connection ended without
// one.
type CloseError struct {
	Code   int
	Reason string
}

func (e *CloseError) Error() string { return fmt.Sprintf("closed by server: %d %s", e.Code, e.Reason) }

// Dial connects to a device listener (ws:// or wss://). tlsConf may be nil
// for the system roots.
func Dial(ctx context.Context, url string, tlsConf *tls.Config) (*ClientConn, error) {
	return DialWith(ctx, url, DialOptions{TLS: tlsConf})
}

func newClientConn(ws *websocket.Conn) *ClientConn {
	c := &ClientConn{ws: ws, nc: ws.NetConn()}
	c.fd = -1
	under := c.nc
	if tc, ok := under.(*tls.Conn); ok {
		under = tc.NetConn()
	}
	c.raw = rawConn(under)
	return c
}

// Write sends a text frame.
func (c *ClientConn) Write(p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return c.ws.WriteMessage(websocket.TextMessage, p)
}

// WriteBinary sends a binary frame (tests use it to check the server
// refuses them).
func (c *ClientConn) WriteBinary(p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.ws.WriteMessage(websocket.BinaryMessage, p)
}

// Read returns the next text frame, waiting until deadline (zero: forever).
// A close from the server is returned as *CloseError. Other frames are
// handled (pings answered) or skipped.
func (c *ClientConn) Read(deadline time.Time) ([]byte, error) {
	c.SetReadDeadline(deadline)
	for {
		b, ok, err := c.Receive()
		if err != nil {
			return nil, err
		}
		if ok {
			return b, nil
		}
	}
}

// SetReadDeadline sets the deadline of the reads that follow (Receive),
// which pings then extend (ExtendOnPing).
func (c *ClientConn) SetReadDeadline(t time.Time) {
	c.deadline = t
	c.nc.SetReadDeadline(t)
}

// Receive reads one frame, waiting until the read deadline for it, and
// returns its message when it completes a text message (ok). Control
// frames are handled here (a ping answered, a close returned as
// *CloseError); after one, or a binary frame, ok is false.
func (c *ClientConn) Receive() (msg []byte, ok bool, err error) {
	op, fin, p, err := c.frame()
	if err != nil {
		return nil, false, err
	}
	switch op {
	case opText, opBinary:
		if c.inMsg {
			return nil, false, c.protocolError("data frame inside a fragmented message")
		}
		if fin {
			if op == opText {
				return append([]byte(nil), p...), true, nil
			}
			return nil, false, nil
		}
		c.inMsg, c.msgText = true, op == opText
		if c.msgText {
			c.msg = append(c.msg[:0], p...)
		}
	case opContinuation:
		if !c.inMsg {
			return nil, false, c.protocolError("continuation frame outside a message")
		}
		if c.msgText {
			if len(c.msg)+len(p) > maxClientMessage {
				return nil, false, c.protocolError("message too large")
			}
			c.msg = append(c.msg, p...)
		}
		if fin {
			c.inMsg = false
			if c.msgText {
				m := c.msg
				c.msg = nil
				return m, true, nil
			}
		}
	case opPing:
		if err := c.pong(p); err != nil {
			c.rerr = err
			return nil, false, err
		}
	case opPong:
	case opClose:
		return nil, false, c.closed(p)
	default:
		return nil, false, c.protocolError(fmt.Sprintf("unknown opcode %d", op))
	}
	return nil, false, nil
}

// WebSocket opcodes (RFC 6455 section 5.2).
const (
	opContinuation = 0
	opText         = 1
	opBinary       = 2
	opClose        = 8
	opPing         = 9
	opPong         = 10
)

// clientReadBuf is the read buffer a reading ClientConn borrows from
// clientBufs; a frame larger than it gets a buffer of its own.
const clientReadBuf = 512

// maxClientMessage bounds a frame or a message from the server, and so
// what one server can make a held session buffer (the frame's room is
// taken when its header is read). The largest the push protocol sends is
// a hello or broadcast answer naming 1,024 broadcast ids of 128 bytes
// with versions, some 300 KB; a notification is under 8 KB.
const maxClientMessage = 1 << 20

var clientBufs = sync.Pool{New: func() any { b := make([]byte, clientReadBuf); return &b }}

// header parses the frame header at rbuf[r:w]: its length, the payload's,
// and whether both are buffered. ok is false until the header is.
func (c *ClientConn) header() (hl int, n int64, whole, ok bool) {
	b := c.rbuf[c.r:c.w]
	if len(b) < 2 {
		return 0, 0, false, false
	}
	hl = 2
	switch b[1] & 0x7f {
	case 126:
		hl = 4
	case 127:
		hl = 10
	}
	if b[1]&0x80 != 0 {
		hl += 4
	}
	if len(b) < hl {
		return hl, 0, false, false
	}
	switch b[1] & 0x7f {
	case 126:
		n = int64(binary.BigEndian.Uint16(b[2:4]))
	case 127:
		n = int64(binary.BigEndian.Uint64(b[2:10]))
	default:
		n = int64(b[1] & 0x7f)
	}
	return hl, n, int64(len(b)-hl) >= n, true
}

// whole reports whether a whole frame is buffered.
func (c *ClientConn) whole() bool {
	_, _, whole, _ := c.header()
	return whole
}

// frame reads one whole frame. p aliases the read buffer until the next
// read.
func (c *ClientConn) frame() (op byte, fin bool, p []byte, err error) {
	if err := c.fill(2); err != nil {
		return 0, false, nil, err
	}
	hl, n, _, ok := c.header()
	if !ok {
		if err := c.fill(hl); err != nil {
			return 0, false, nil, err
		}
		hl, n, _, _ = c.header()
	}
	b0, b1 := c.rbuf[c.r], c.rbuf[c.r+1]
	op, fin = b0&0x0f, b0&0x80 != 0
	switch {
	case b0&0x70 != 0:
		return 0, false, nil, c.protocolError("reserved bits set")
	case b1&0x80 != 0:
		return 0, false, nil, c.protocolError("masked frame from the server")
	case op >= opClose && (n > 125 || !fin):
		return 0, false, nil, c.protocolError("bad control frame")
	case n < 0 || n > maxClientMessage:
		return 0, false, nil, c.protocolError("frame too large")
	}
	if err := c.fill(hl + int(n)); err != nil {
		return 0, false, nil, err
	}
	p = c.rbuf[c.r+hl : c.r+hl+int(n)]
	c.r += hl + int(n)
	return op, fin, p, nil
}

// room makes space in rbuf for n buffered bytes from r, borrowing,
// compacting or growing it.
func (c *ClientConn) room(n int) {
	if c.rbuf == nil {
		c.rbuf = *clientBufs.Get().(*[]byte)
		c.r, c.w = 0, 0
	}
	if len(c.rbuf)-c.r >= n && c.w < len(c.rbuf) {
		return
	}
	if n <= len(c.rbuf) && c.r > 0 {
		copy(c.rbuf, c.rbuf[c.r:c.w])
		c.w -= c.r
		c.r = 0
		return
	}
	nb := make([]byte, max(n, 2*len(c.rbuf)))
	copy(nb, c.rbuf[c.r:c.w])
	c.putBuf()
	c.rbuf = nb
	c.w -= c.r
	c.r = 0
}

// putBuf gives a pool's buffer back (a larger one is dropped).
func (c *ClientConn) putBuf() {
	if len(c.rbuf) == clientReadBuf {
		b := c.rbuf
		clientBufs.Put(&b)
	}
	c.rbuf = nil
}

// fill reads until n bytes are buffered. A timeout leaves what was read
// buffered; any other error sticks.
func (c *ClientConn) fill(n int) error {
	for c.rbuf == nil || c.w-c.r < n {
		if c.rerr != nil {
			return c.rerr
		}
		c.room(n)
		m, err := c.nc.Read(c.rbuf[c.w:])
		c.w += m
		if err != nil {
			if c.w-c.r >= n {
				return nil
			}
			return c.readError(err)
		}
	}
	return nil
}

// readError records a read failure: timeouts are the caller's to retry,
// anything else ends the connection. An end without a close frame is a
// *CloseError with code 1006, as gorilla reports it.
func (c *ClientConn) readError(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return err
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		err = &CloseError{Code: websocket.CloseAbnormalClosure, Reason: io.ErrUnexpectedEOF.Error()}
	}
	c.rerr = err
	return err
}

// protocolError ends the connection with a close frame 1002.
func (c *ClientConn) protocolError(what string) error {
	c.rerr = fmt.Errorf("websocket: protocol error: %s", what)
	c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseProtocolError, what), time.Now().Add(time.Second))
	return c.rerr
}

// pong answers a ping and, with ExtendOnPing, pushes the read deadline.
func (c *ClientConn) pong(p []byte) error {
	if c.extend > 0 {
		c.SetReadDeadline(time.Now().Add(c.extend))
	}
	err := c.ws.WriteControl(websocket.PongMessage, p, time.Now().Add(time.Second))
	var ne net.Error
	if err == nil || errors.Is(err, websocket.ErrCloseSent) || (errors.As(err, &ne) && ne.Timeout()) {
		return nil
	}
	return err
}

// closed handles the server's close frame: echo its code, as the
// protocol asks, and report it.
func (c *ClientConn) closed(p []byte) error {
	ce := &CloseError{Code: websocket.CloseNoStatusReceived}
	switch {
	case len(p) == 1:
		return c.protocolError("bad close frame")
	case len(p) >= 2:
		ce.Code = int(binary.BigEndian.Uint16(p))
		ce.Reason = string(p[2:])
		if !utf8.ValidString(ce.Reason) {
			return c.protocolError("close reason is not UTF-8")
		}
	}
	reply := []byte{}
	if ce.Code != websocket.CloseNoStatusReceived {
		reply = websocket.FormatCloseMessage(ce.Code, "")
	}
	c.ws.WriteControl(websocket.CloseMessage, reply, time.Now().Add(time.Second))
	c.rerr = ce
	return ce
}

// ExtendOnPing makes every ping the server sends, besides being answered,
// push the read deadline to d from its arrival: a long-lived client (the
// upstream link) then times a read out only when the server stopped
// pinging, not while it is merely quiet. Call it before reading.
func (c *ClientConn) ExtendOnPing(d time.Duration) { c.extend = d }

// Pending reports whether Receive has a frame to read without waiting for
// the socket: a whole frame buffered here, bytes tls.Conn buffered (a
// record it read but did not return, which the socket will not announce
// again), or an error to report. When it reports false the reader may
// Park: nothing above the socket holds data, and the read buffer is given
// back.
func (c *ClientConn) Pending() bool {
	if c.rerr != nil || (c.rbuf != nil && c.whole()) {
		return true
	}
	if tc, ok := c.nc.(*tls.Conn); ok {
		// A read past its deadline takes what tls.Conn holds and does
		// not touch the socket; tls.Conn stays usable after a timeout.
		tc.SetReadDeadline(time.Unix(1, 0))
		for {
			c.room(1)
			n, err := tc.Read(c.rbuf[c.w:])
			c.w += n
			if err != nil {
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					c.readError(err)
				}
				break
			}
		}
		tc.SetReadDeadline(c.deadline)
		if c.rerr != nil || c.whole() {
			return true
		}
	}
	if c.rbuf != nil && c.r == c.w {
		c.putBuf()
		c.r, c.w = 0, 0
	}
	return false
}

// Poller watches parked client connections (ClientConn.Park) with one
// epoll instance, so that an idle long-lived client, such as an upstream
// link's held session, costs no goroutine. Linux only.
type Poller struct{ p *poller }

// NewPoller makes a Poller; Run drives it. It fails where there is no
// poller (off Linux): readers then block in Receive.
func NewPoller() (*Poller, error) {
	p, err := newPoller()
	if err != nil {
		return nil, err
	}
	return &Poller{p: p}, nil
}

// Run drives the poller until ctx ends. After it returns Park fails.
func (p *Poller) Run(ctx context.Context) error { return p.p.run(ctx) }

// Park arranges for wake to be called once, and not on the caller's
// goroutine, when the socket has bytes to read, when the read deadline
// passes, or when the connection is closed (Close, Abort); wake must not
// block, and should start a reader that calls Receive (which then does
// not wait long: it finds the bytes, the deadline passed or the
// connection closed). Call it only after Pending reported false, from the
// reading goroutine, which must then not touch the connection's reads. It
// reports false, having arranged nothing, when the connection cannot be
// parked: no poller (p nil), no TCP socket under it, or closed; the caller
// then reads (Receive) as usual.
func (c *ClientConn) Park(p *Poller, wake func()) bool {
	if p == nil || c.raw == nil {
		return false
	}
	c.pmu.Lock()
	if c.fd < 0 {
		c.fd = socketFD(c.raw)
	}
	c.poll = p.p
	ok := c.fd >= 0 && !c.released
	c.pmu.Unlock()
	if !ok {
		return false
	}
	c.onReady = wake
	c.armed.Store(true)
	if !c.deadline.IsZero() {
		c.tmu.Lock()
		if c.timer == nil {
			c.timer = time.AfterFunc(time.Until(c.deadline), c.fire)
		} else {
			c.timer.Reset(time.Until(c.deadline))
		}
		c.tmu.Unlock()
	}
	if err := p.p.arm(c); err != nil {
		// Closed meanwhile, or the poller stopped: unless a close or the
		// timer fired it already, the caller reads.
		return !c.armed.CompareAndSwap(true, false)
	}
	return true
}

// fire wakes a parked reader, once per Park.
func (c *ClientConn) fire() {
	if c.armed.CompareAndSwap(true, false) {
		c.onReady()
	}
}

// unpark takes the socket out of the poller before it is closed, so its
// descriptor number can be reused, and stops the deadline's timer; a
// later Park fails.
func (c *ClientConn) unpark() {
	c.pmu.Lock()
	p := c.poll
	c.released = true
	c.pmu.Unlock()
	if p != nil {
		p.forget(c)
	}
	c.tmu.Lock()
	if c.timer != nil {
		c.timer.Stop()
	}
	c.tmu.Unlock()
}

// Close sends a normal close frame and closes the socket. A parked reader
// is woken.
func (c *ClientConn) Close() error {
	c.wmu.Lock()
	c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	c.wmu.Unlock()
	return c.Abort()
}

// NetConn returns the connection under the WebSocket, for a load tool that
// takes the socket over (the bench's epoll loop) once the handshake and the
// replies it waited for are read, before anything else can arrive: bytes
// already buffered here would not be seen there. After that, c may only be
// closed.
func (c *ClientConn) NetConn() net.Conn { return c.nc }

// Abort closes the socket without a close frame, as a device losing its
// network would. A parked reader is woken.
func (c *ClientConn) Abort() error {
	c.unpark()
	err := c.ws.Close()
	c.fire()
	return err
}
