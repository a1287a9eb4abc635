//go:build nofasthttp

package endpoint

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
)

// netServer serves the API with net/http, in builds tagged nofasthttp: the
// mips and mipsle gateway builds, whose flash has no room for fasthttp
// beside the net/http that the device and admin listeners link anyway
// (docs/benchmarks.md, "The endpoint on net/http for mips"). It costs more
// CPU per request; app servers see the same answers as from fasthttp:
// what differs is made the same here.
//
//   - The body is read before the handler runs, under the limit bodyLimit
//     gives (MaxData, or a batch's), as fasthttp does.
//   - net/http answers a request it cannot read itself, in plain text;
//     netConn rewrites that answer as the API's JSON error.
//   - net/http takes LF alone as a line end, drops Content-Length when
//     Transfer-Encoding is chunked and ignores Transfer-Encoding on
//     HTTP/1.0: the connection's framer (conns.go) tells the handler about
//     such heads (conn.headProblem, conn.teHead).
type netServer struct {
	a   *API
	srv *http.Server
}

// netHeaderSlack is what net/http reads of a head beyond MaxHeaderBytes
// (its initialReadLimitSize): the server's limit is set this much lower so
// that a head over MaxHeaderBytes gets 431, as from fasthttp.
const netHeaderSlack = 4096

type connKey struct{}

func newServer(a *API) server {
	a.wrapConn = func(c *conn) net.Conn { return &netConn{conn: c} }
	s := &netServer{a: a}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	s.srv = &http.Server{
		Handler:        s,
		ReadTimeout:    a.cfg.ReadTimeout,
		WriteTimeout:   a.cfg.WriteTimeout,
		IdleTimeout:    a.cfg.IdleTimeout,
		MaxHeaderBytes: MaxHeaderBytes - netHeaderSlack,
		// Its lines are connections that failed (a client's bad TLS
		// handshake, already counted) and accept errors.
		ErrorLog: slog.NewLogLogger(a.cfg.Logger.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
		DisableGeneralOptionsHandler: true,
		Protocols:                    &protocols,
	}
	return s
}

func (s *netServer) serve(ln net.Listener) error {
	err := s.srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func (s *netServer) shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// ServeHTTP reads a request's body and hands the request to the API.
func (s *netServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a := s.a
	x := &netExchange{w: w, r: r}
	x.c, _ = r.Context().Value(connKey{}).(*netConn)
	defer x.finish()
	var framing *apiError
	if x.c != nil {
		x.c.served++
		framing = x.c.headProblem(x.c.served)
		if framing == nil && !r.ProtoAtLeast(1, 1) && x.c.teHead.Load() == x.c.served {
			// net/http ignores it (and drops it); fasthttp refuses it
			// as faulty framing (RFC 9112 §6.1).
			framing = errMalformed.with("Transfer-Encoding on HTTP/1.0")
		}
	}
	if framing == nil {
		if e := x.readBody(a); e != nil {
			a.readFailed(x, e)
			return
		}
	}
	a.handle(x, framing)
}

// bodies are request bodies' buffers, reused.
var bodies = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// readBody reads the request's body whole under its limit (bodyLimit), or
// says why it could not.
func (x *netExchange) readBody(a *API) *apiError {
	limit := a.bodyLimit(x.key(), x.r.Method == http.MethodPost, []byte(x.r.RequestURI))
	if limit == 0 {
		limit = a.cfg.MaxData
	}
	if x.r.ContentLength > int64(limit) {
		return errTooLarge // refused unread
	}
	if x.r.ContentLength == 0 {
		return nil
	}
	buf := bodies.Get().(*bytes.Buffer)
	buf.Reset()
	x.buf = buf
	if _, err := buf.ReadFrom(io.LimitReader(x.r.Body, int64(limit)+1)); err != nil {
		return errMalformed.with(err.Error())
	}
	if buf.Len() > limit {
		return errTooLarge
	}
	return nil
}

// netExchange is a net/http request as an exchange. The answer is kept
// until the handler returns (finish), so that a panic can replace it.
type netExchange struct {
	w   http.ResponseWriter
	r   *http.Request
	c   *netConn
	buf *bytes.Buffer // the body; nil when empty

	status int
	out    []byte
	close  bool
}

func (x *netExchange) method() []byte { return []byte(x.r.Method) }
func (x *netExchange) path() []byte   { return []byte(x.r.URL.Path) }
func (x *netExchange) query() []byte  { return []byte(x.r.URL.RawQuery) }
func (x *netExchange) header(name string) string {
	return x.r.Header.Get(name)
}
func (x *netExchange) headerValues(name string, dst []string) []string {
	return append(dst, x.r.Header.Values(name)...)
}
func (x *netExchange) body() []byte {
	if x.buf == nil {
		return nil
	}
	return x.buf.Bytes()
}
func (x *netExchange) dropBody() {
	if x.buf != nil {
		bodies.Put(x.buf)
		x.buf = nil
	}
}
func (x *netExchange) remoteAddr() net.Addr {
	if x.c != nil {
		return x.c.RemoteAddr()
	}
	return &net.TCPAddr{}
}
func (x *netExchange) key() any {
	if x.c != nil {
		return x.c
	}
	return x.r
}
func (x *netExchange) setStatus(code int)           { x.status = code }
func (x *netExchange) setHeader(name, value string) { x.w.Header().Set(name, value) }
func (x *netExchange) setBody(b []byte)             { x.out = b }
func (x *netExchange) resetResponse() {
	clear(x.w.Header())
	x.status, x.out, x.close = 0, nil, false
}
func (x *netExchange) closeConn() {
	x.close = true
	// net/http waits a little before it closes, but reads nothing: a
	// body still coming would reset the connection (see lingerFor).
	if x.c != nil {
		x.c.lingerOnClose()
	}
}

// finish writes the answer and gives the body's buffer back.
func (x *netExchange) finish() {
	x.dropBody()
	h := x.w.Header()
	if x.close {
		h.Set("Connection", "close")
	}
	if len(x.out) > 0 {
		h.Set("Content-Length", strconv.Itoa(len(x.out)))
	}
	if x.status == 0 {
		x.status = http.StatusOK
	}
	x.w.WriteHeader(x.status)
	if len(x.out) > 0 {
		x.w.Write(x.out)
	}
}

// netConn is an app-server connection under net/http.
type netConn struct {
	*conn
	served int64 // requests handed to the handler (its goroutine only)
}

// netErrorHeaders end the head of every answer net/http writes itself to
// a request it could not read (net/http's conn.serve); the API's answers
// are never text/plain.
const netErrorHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

// Write replaces net/http's own answer to a request it could not read
// with the API's JSON error, as fasthttp's ErrorHandler gives it.
func (c *netConn) Write(p []byte) (int, error) {
	e := c.serverAnswer(p)
	if e == nil {
		return c.conn.Write(p)
	}
	a := c.l.a
	a.m.errors.With(strconv.Itoa(e.Code), strconv.Itoa(e.Errno)).Inc()
	a.cfg.Logger.Debug("endpoint request unreadable", "remote", c.RemoteAddr().String(), "status", e.Code, "errno", e.Errno, "message", e.Message)
	if _, err := c.conn.Write(refusal(e)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// serverAnswer returns the API's error for p if p is net/http's own
// answer to an unreadable request, nil otherwise.
func (c *netConn) serverAnswer(p []byte) *apiError {
	rest, ok := bytes.CutPrefix(p, []byte("HTTP/1.1 "))
	if !ok || len(rest) < 3 {
		return nil
	}
	i := bytes.Index(rest, []byte(netErrorHeaders))
	if i < 0 {
		return nil
	}
	code, err := strconv.Atoi(string(rest[:3]))
	if err != nil {
		return nil
	}
	switch {
	case code == http.StatusRequestHeaderFieldsTooLarge:
		return errHeaderTooLarge
	case c.conflictHead.Load() == c.served+1:
		// Refused for its coding, but faulty framing comes first.
		return errFraming
	case code == http.StatusNotImplemented:
		return errCoding
	case c.bareLFHead.Load() != 0:
		return errMalformed.with(errBareLF.Error())
	}
	// "400 Bad Request: malformed HTTP request ..." or "400 Bad Request".
	detail := string(rest[i+len(netErrorHeaders):])
	if _, d, ok := strings.Cut(detail, ": "); ok {
		return errMalformed.with(d)
	}
	return errMalformed
}
