package endpoint

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// errBareLF is what a connection's Read returns once the request being read
// ended a line of its head with LF alone. fasthttp finds the end of such a
// head but then looks for CRLF CRLF and waits for more bytes until the read
// timeout; returning an error instead makes it answer at once (readFailed
// maps the error to 400) and close the connection. net/http reads bare LF
// as a line end: its handler asks the connection (headProblem).
var errBareLF = errors.New("request line or header ends with a bare LF (RFC 9112 §2.2: CRLF)")

// listener counts the API's connections, refuses those over the cap with a
// 503 written at once (fasthttp's own refusal has no Retry-After and no
// JSON body), and can close the connections that are waiting for a first
// request when the API shuts down.
type listener struct {
	net.Listener
	a *API

	mu    sync.Mutex
	conns map[*conn]struct{}
	// refusing bounds the goroutines writing refusals: a refusal over TLS
	// waits for the handshake, so it is not written on the accept loop.
	// Each takes at most a second; Shutdown waits for them.
	refusing chan struct{}
	refusals sync.WaitGroup
	// lingerSlots bounds the goroutines closing connections gracefully
	// (conn.Close); Shutdown waits for them.
	lingerSlots chan struct{}
	lingering   sync.WaitGroup
	lingerEnded bool // under mu: Shutdown waits for them; none starts since
}

func newListener(ln net.Listener, a *API) *listener {
	return &listener{Listener: ln, a: a, conns: map[*conn]struct{}{}, refusing: make(chan struct{}, 64), lingerSlots: make(chan struct{}, 64)}
}

// After an answer that closes the connection, the server may not have read
// all the app server sent: a request body refused unread (a batch finding
// every slot taken), or one cut off by an error. Closing a socket with
// unread bytes makes the kernel send RST instead of FIN, and an RST that
// reaches the app server before it reads the answer throws the answer
// away: it sees "connection reset" instead of 503 and Retry-After. So such
// a connection is closed gracefully (RFC 9112 §9.6): its write side first
// (FIN after the answer), then what still arrives is read and discarded
// until the app server closes, for at most lingerFor and lingerBytes.
// Neither server does it: net/http shuts the write side and waits a
// little, but reads nothing; fasthttp closes at once.
const (
	lingerFor   = 500 * time.Millisecond
	lingerBytes = 1 << 20
)

// Accept returns the next connection under the cap; connections over it
// are answered 503 and closed without reaching fasthttp.
func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		// The cap is the API's, over all its listeners.
		if l.a.open.Add(1) > int64(l.a.cfg.Concurrency) {
			l.a.open.Add(-1)
			l.refuse(c)
			continue
		}
		tc := &conn{Conn: c, l: l}
		l.mu.Lock()
		l.conns[tc] = struct{}{}
		l.mu.Unlock()
		l.a.m.conns.Inc()
		return l.a.wrapConn(tc), nil
	}
}

// refuse answers c 503 errno 121 and closes it.
func (l *listener) refuse(c net.Conn) {
	l.a.m.refusedConns.Inc()
	l.a.m.errors.With("503", "121").Inc()
	select {
	case l.refusing <- struct{}{}:
	default:
		c.Close() // too many refusals in flight: close without a word
		return
	}
	l.refusals.Go(func() {
		defer func() { <-l.refusing }()
		c.SetDeadline(time.Now().Add(time.Second))
		c.Write(l.a.refusal)
		c.Close()
	})
}

// closeUnused closes the connections that have not sent a byte: an app
// server's fresh keep-alive connection holds fasthttp's shutdown until its
// read timeout, since fasthttp counts a connection as idle only after its
// first request.
func (l *listener) closeUnused() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for c := range l.conns {
		if !c.used.Load() {
			c.Conn.Close()
		}
	}
}

// conn is one app-server connection: it counts in its listener until it is
// closed, and follows its requests' framing to check each head for bare LF
// line ends.
type conn struct {
	net.Conn
	l      *listener
	used   atomic.Bool // a byte was read
	linger atomic.Bool // Close closes gracefully (lingerFor)
	closed sync.Once
	err    error // what the next Read returns

	// Touched only by the goroutine reading the connection.
	frame framer

	// What the framer found, for the handler's goroutine: the number
	// (from 1) of the head that ended a line with a bare LF, of the first
	// head with Transfer-Encoding, and of the first with both
	// Content-Length and Transfer-Encoding; 0 for none.
	bareLFHead, teHead, conflictHead atomic.Int64
}

// headProblem says what the framer found wrong with the n-th head (from
// 1) read on the connection, nil when nothing.
func (c *conn) headProblem(n int64) *apiError {
	switch n {
	case c.bareLFHead.Load():
		return errMalformed.with(errBareLF.Error())
	case c.conflictHead.Load():
		return errFraming
	}
	return nil
}

func (c *conn) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.used.Store(true)
		i := c.frame.scan(p[:n])
		if h := c.frame.te; h != 0 && c.teHead.Load() == 0 {
			c.teHead.Store(h)
		}
		if h := c.frame.conflict; h != 0 && c.conflictHead.Load() == 0 {
			c.conflictHead.Store(h)
		}
		if i >= 0 {
			// Hand over the head up to the bare LF, and fail the next read.
			c.bareLFHead.Store(c.frame.heads + 1)
			c.err = errBareLF
			return i + 1, nil
		}
	}
	return n, err
}

// Close releases the connection's place under the cap.
func (c *conn) Close() error {
	if c.linger.CompareAndSwap(true, false) && c.l.goLinger(func() {
		c.drain()
		c.Conn.Close()
		c.release()
	}) {
		return nil
	}
	err := c.Conn.Close()
	c.release()
	return err
}

// goLinger runs f, a graceful close, on a goroutine Shutdown waits for;
// false when too many run already or Shutdown is waiting (close at once
// then). The count is taken under mu, so none is added once
// waitLingering has begun to wait.
func (l *listener) goLinger(f func()) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lingerEnded {
		return false
	}
	select {
	case l.lingerSlots <- struct{}{}:
	default:
		return false
	}
	l.lingering.Go(func() {
		defer func() { <-l.lingerSlots }()
		f()
	})
	return true
}

// waitLingering waits for the graceful closes under way (each at most
// lingerFor); connections closed later close at once.
func (l *listener) waitLingering() {
	l.mu.Lock()
	l.lingerEnded = true
	l.mu.Unlock()
	l.lingering.Wait()
}

// lingerOnClose makes Close close the connection gracefully: the answer
// written, the app server may still be sending what was not read.
func (c *conn) lingerOnClose() { c.linger.Store(true) }

// drain shuts the write side and discards what the app server still
// sends, until it closes or lingerFor or lingerBytes run out.
func (c *conn) drain() {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() != nil {
			return
		}
	}
	c.Conn.SetReadDeadline(time.Now().Add(lingerFor))
	io.CopyN(io.Discard, c.Conn, lingerBytes)
}

// release gives the connection's place under the cap back, once.
func (c *conn) release() {
	c.closed.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
		c.l.a.open.Add(-1)
		c.l.a.m.conns.Dec()
	})
}

// tlsConn keeps a TLS connection's methods visible: fasthttp tells TLS
// requests by them.
type tlsConn struct {
	*conn
	tls *tls.Conn
}

func (c *tlsConn) Handshake() error                     { return c.tls.Handshake() }
func (c *tlsConn) ConnectionState() tls.ConnectionState { return c.tls.ConnectionState() }

// framer follows the requests of one connection: the lines of each head up
// to its blank line, then Content-Length bytes of body. After a chunked
// body (or a head it cannot follow) it stops looking: those connections
// get fasthttp's own handling, which only costs the wait for the read
// timeout.
type framer struct {
	state   int   // framing, body or lost
	body    int64 // body bytes still to skip
	length  int64 // the head's Content-Length, or -1 when chunked
	lineLen int   // bytes of the current line so far
	lastCR  bool  // the current line so far ends in CR
	seen    bool  // the head has a non-blank line
	hasTE   bool  // the head has Transfer-Encoding
	hasCL   bool  // the head has Content-Length
	line    [32]byte

	heads    int64 // heads read to their end
	te       int64 // the first head (from 1) with hasTE, 0 for none
	conflict int64 // the first head with hasTE and hasCL, 0 for none
}

const (
	framing = iota
	inBody
	lost
)

// maxLine is how much of a line the framer keeps: enough for a
// Content-Length or Transfer-Encoding field.
const maxLine = len(framer{}.line)

// scan follows b and returns the index of a bare LF in a head, or -1.
func (f *framer) scan(b []byte) int {
	for i := 0; i < len(b); {
		switch f.state {
		case lost:
			return -1
		case inBody:
			n := min(int64(len(b)-i), f.body)
			f.body -= n
			i += int(n)
			if f.body == 0 {
				f.state = framing
			}
			continue
		}
		j := bytes.IndexByte(b[i:], '\n')
		end := len(b)
		if j >= 0 {
			end = i + j
		}
		if seg := b[i:end]; len(seg) > 0 {
			if f.lineLen < maxLine {
				copy(f.line[f.lineLen:], seg)
			}
			f.lineLen += len(seg)
			f.lastCR = seg[len(seg)-1] == '\r'
		}
		if j < 0 {
			return -1
		}
		if !f.lastCR {
			return end
		}
		i = end + 1
		f.endLine(f.lineLen - 1)
	}
	return -1
}

// endLine takes a line of n bytes (CRLF excluded) of a head.
func (f *framer) endLine(n int) {
	line := f.line[:min(n, maxLine)]
	f.lineLen, f.lastCR = 0, false
	if n > 0 {
		if !f.seen {
			f.seen, f.length, f.hasTE, f.hasCL = true, 0, false, false
		}
		if name, value, ok := bytes.Cut(line, []byte(":")); ok {
			switch {
			case bytes.EqualFold(name, []byte("Content-Length")):
				f.hasCL = true
				if f.length < 0 {
					return // chunked: its end is lost
				}
				v, err := strconv.ParseInt(string(bytes.TrimSpace(value)), 10, 64)
				if err != nil || v < 0 || n > maxLine {
					f.state = lost
					return
				}
				f.length = v
			case bytes.EqualFold(name, []byte("Transfer-Encoding")):
				f.hasTE, f.length = true, -1
			}
		}
		return
	}
	if !f.seen {
		return // a blank line before the request line
	}
	f.seen = false
	f.heads++
	if f.hasTE && f.te == 0 {
		f.te = f.heads
	}
	if f.hasTE && f.hasCL && f.conflict == 0 {
		f.conflict = f.heads
	}
	switch {
	case f.length < 0:
		f.state = lost
	case f.length > 0:
		f.state, f.body = inBody, f.length
	}
}
