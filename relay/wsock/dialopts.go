package wsock

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/gorilla/websocket"
)

// DialOptions are the socket-level choices of a client connection that
// Dial leaves at their defaults.
type DialOptions struct {
	// TLS is used for wss:// (nil: the system roots).
	TLS *tls.Config
	// Net opens the TCP connection (nil: a zero net.Dialer). A load tool
	// sets its Control to shape the socket before connect (a small
	// receive buffer, a realistic MSS) or its LocalAddr to pick a source
	// address.
	Net *net.Dialer
	// DialContext, if set, opens the TCP connection instead of Net (a
	// load tool opening sockets in another network namespace).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
}

// DialWith connects to a device listener like Dial, opening the socket
// with o.DialContext or o.Net.
func DialWith(ctx context.Context, url string, o DialOptions) (*ClientConn, error) {
	dial := o.DialContext
	if dial == nil {
		nd := o.Net
		if nd == nil {
			nd = &net.Dialer{}
		}
		dial = nd.DialContext
	}
	d := websocket.Dialer{
		NetDialContext: dial,
		// TLS is done here, not by gorilla, which would copy the
		// tls.Config for every connection (a copy each held
		// connection keeps).
		NetDialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialTLS(ctx, dial, network, addr, o.TLS)
		},
		HandshakeTimeout: 10 * time.Second,
		// gorilla reads only the handshake's response: the frames are
		// read by ClientConn through a buffer of its own, lent while
		// reading. Its smallest buffer then, not one each idle
		// connection keeps.
		ReadBufferSize:  128,
		WriteBufferSize: 512,
		WriteBufferPool: &writePool,
		Subprotocols:    []string{"push-notification"},
	}
	ws, resp, err := d.DialContext(ctx, url, http.Header{})
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("dial %s: %w (HTTP %d)", url, err, resp.StatusCode)
		}
		return nil, fmt.Errorf("dial %s: %w", url, err)
	}
	return newClientConn(ws), nil
}

// connTLS returns the tls.Config for a connection to host: conf itself
// when it names the server (a caller dialing often sets ServerName once,
// so that its connections share one config), else a copy naming host.
func connTLS(conf *tls.Config, host string) *tls.Config {
	if conf != nil && conf.ServerName != "" {
		return conf
	}
	t := &tls.Config{}
	if conf != nil {
		t = conf.Clone()
	}
	t.ServerName = host
	return t
}

// dialTLS opens the TCP connection and does the TLS handshake on a
// goroutine of its own, which ends with it: the handshake (key exchange,
// certificate checks) needs a deep stack, and the caller's goroutine may
// live on, holding whatever stack it grew.
func dialTLS(ctx context.Context, dial func(ctx context.Context, network, addr string) (net.Conn, error), network, addr string, conf *tls.Config) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	conf = connTLS(conf, host)
	nc, err := dial(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(nc, conf)
	done := make(chan error, 1)
	go func() { done <- tc.HandshakeContext(ctx) }()
	if err := <-done; err != nil {
		nc.Close()
		return nil, err
	}
	return tc, nil
}
