//go:build !nofasthttp

package endpoint

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"github.com/valyala/fasthttp"
)

// fastServer serves the API with fasthttp, the default: it reads a request
// into buffers it keeps per connection, so a post costs no allocation of
// the server's own. Only this file imports fasthttp.
type fastServer struct {
	srv *fasthttp.Server
}

func newServer(a *API) server {
	a.wrapConn = func(c *conn) net.Conn {
		if t, ok := c.Conn.(*tls.Conn); ok {
			return &tlsConn{c, t}
		}
		return c
	}
	return &fastServer{srv: &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			a.handle((*fastExchange)(ctx), checkFraming(ctx.Request.Header.RawHeaders()))
		},
		ErrorHandler: func(ctx *fasthttp.RequestCtx, err error) {
			a.readFailed((*fastExchange)(ctx), fastReadError(err))
		},
		Logger: logAdapter{a.cfg.Logger},
		// A request that fits under MaxData is read whole before the
		// handler runs; a larger declared length is refused unread.
		MaxRequestBodySize: a.cfg.MaxData,
		HeaderReceived: func(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
			// A batch's limit.
			return fasthttp.RequestConfig{MaxRequestBodySize: a.bodyLimit(h, h.IsPost(), h.RequestURI())}
		},
		ReadBufferSize:        MaxHeaderBytes,
		ReadTimeout:           a.cfg.ReadTimeout,
		WriteTimeout:          a.cfg.WriteTimeout,
		IdleTimeout:           a.cfg.IdleTimeout,
		NoDefaultServerHeader: true,
		NoDefaultContentType:  true,
		CloseOnShutdown:       true,
		// The listener keeps to Concurrency; fasthttp's cap, a little
		// higher, only covers a closed connection's worker not yet back in
		// its pool.
		Concurrency: a.cfg.Concurrency + a.cfg.Concurrency/8 + 16,
		// ReduceMemoryUsage stays off: it would give an idle keep-alive
		// connection's read buffer back after every request, at the price
		// of one more read system call per request (a one-byte read
		// first). App servers are few connections, each posting many
		// messages, so each keeps its 8 KiB.
		DisablePreParseMultipartForm: true,
	}}
}

func (s *fastServer) serve(ln net.Listener) error { return s.srv.Serve(ln) }

func (s *fastServer) shutdown(ctx context.Context) error { return s.srv.ShutdownWithContext(ctx) }

// fastReadError says what stopped fasthttp reading a request.
func fastReadError(err error) *apiError {
	var small *fasthttp.ErrSmallBuffer
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		return errTooLarge
	case errors.As(err, &small):
		return errHeaderTooLarge
	case errors.Is(err, errBareLF):
		return errMalformed.with(errBareLF.Error())
	case errors.Is(err, fasthttp.ErrUnsupportedTransferEncoding):
		// Transfer-Encoding on HTTP/1.0: faulty framing (RFC 9112 §6.1).
	case strings.Contains(err.Error(), "unsupported transfer-encoding"):
		// fasthttp's error for a coding it does not know has no sentinel.
		return errCoding
	}
	return errMalformed.with(err.Error())
}

// logAdapter gives fasthttp's own log lines to slog: a connection that
// failed (a client's bad request, timeout or reset, already answered and
// counted) at debug level, anything else (accept errors) as a warning.
type logAdapter struct{ l *slog.Logger }

func (l logAdapter) Printf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if strings.HasPrefix(msg, "error when serving connection") {
		l.l.Debug("http connection ended", "err", msg)
		return
	}
	l.l.Warn("http server", "err", msg)
}

// fastExchange is a fasthttp request as an exchange: the same memory, no
// copy.
type fastExchange fasthttp.RequestCtx

func (x *fastExchange) ctx() *fasthttp.RequestCtx { return (*fasthttp.RequestCtx)(x) }

func (x *fastExchange) method() []byte { return x.ctx().Method() }
func (x *fastExchange) path() []byte   { return x.ctx().Path() }
func (x *fastExchange) query() []byte  { return x.ctx().URI().QueryString() }
func (x *fastExchange) header(name string) string {
	return string(x.Request.Header.Peek(name))
}
func (x *fastExchange) headerValues(name string, dst []string) []string {
	for _, v := range x.Request.Header.PeekAll(name) {
		dst = append(dst, string(v))
	}
	return dst
}
func (x *fastExchange) body() []byte         { return x.ctx().PostBody() }
func (x *fastExchange) dropBody()            { x.Request.ResetBody() }
func (x *fastExchange) remoteAddr() net.Addr { return x.ctx().RemoteAddr() }
func (x *fastExchange) key() any             { return &x.Request.Header }
func (x *fastExchange) setStatus(code int)   { x.ctx().SetStatusCode(code) }
func (x *fastExchange) setHeader(name, value string) {
	if name == "Content-Type" {
		x.Response.Header.SetContentType(value)
		return
	}
	x.Response.Header.Set(name, value)
}
func (x *fastExchange) setBody(b []byte) { x.ctx().SetBody(b) }
func (x *fastExchange) resetResponse()   { x.Response.Reset() }
func (x *fastExchange) closeConn() {
	x.ctx().SetConnectionClose()
	// fasthttp closes at once, unread bytes or not (see lingerFor).
	switch c := x.ctx().Conn().(type) {
	case *conn:
		c.lingerOnClose()
	case *tlsConn:
		c.lingerOnClose()
	}
}
