package endpoint

import (
	"context"
	"net"
)

// exchange is one request and its answer as the handlers see them: the
// seam between the API and the HTTP server that reads and writes them. Two
// servers implement it: fasthttp (server_fasthttp.go, the default) and
// net/http (server_nethttp.go, builds tagged nofasthttp). The server reads
// the head and the body (within bodyLimit) before a handler runs, and
// writes the answer after it returns.
type exchange interface {
	method() []byte
	// path is the request's path, percent-decoded.
	path() []byte
	// query is the raw query string, without '?'.
	query() []byte
	// header is the first value of a request header, "" when absent;
	// headerValues appends all its values to dst.
	header(name string) string
	headerValues(name string, dst []string) []string
	// body is the request's body, valid until the handler returns or
	// dropBody.
	body() []byte
	dropBody()
	remoteAddr() net.Addr
	// key names the request's connection (the batch gate's marks); it is
	// the same for every request of the connection.
	key() any

	setStatus(code int)
	setHeader(name, value string)
	setBody(b []byte)
	// resetResponse forgets the status, headers and body set so far.
	resetResponse()
	// closeConn closes the connection after the answer.
	closeConn()
}

// server is the HTTP server under the API (newServer, one per build).
type server interface {
	// serve answers on ln until shutdown; it returns nil then.
	serve(ln net.Listener) error
	// shutdown stops serving, closes idle connections and waits for
	// requests in flight until ctx ends.
	shutdown(ctx context.Context) error
}
