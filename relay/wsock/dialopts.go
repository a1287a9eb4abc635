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
		NetDialContext:   dial,
		TLSClientConfig:  o.TLS,
		HandshakeTimeout: 10 * time.Second,
		ReadBufferSize:   512,
		WriteBufferSize:  512,
		WriteBufferPool:  &writePool,
		Subprotocols:     []string{"push-notification"},
	}
	ws, resp, err := d.DialContext(ctx, url, http.Header{})
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("dial %s: %w (HTTP %d)", url, err, resp.StatusCode)
		}
		return nil, fmt.Errorf("dial %s: %w", url, err)
	}
	return &ClientConn{ws: ws}, nil
}
