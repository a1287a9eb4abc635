package wsock

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// ClientConn is the client side of a device connection, used by the device
// tool, the bench tool and tests. One goroutine may read while another
// writes.
type ClientConn struct {
	ws  *websocket.Conn
	wmu sync.Mutex
}

// CloseError is returned by Read when the server closed the connection
// with a close frame.
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
// A close from the server is returned as *CloseError.
func (c *ClientConn) Read(deadline time.Time) ([]byte, error) {
	c.ws.SetReadDeadline(deadline)
	for {
		typ, b, err := c.ws.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return nil, &CloseError{Code: ce.Code, Reason: ce.Text}
			}
			return nil, err
		}
		if typ == websocket.TextMessage {
			return b, nil
		}
	}
}

// ExtendOnPing makes every ping the server sends, besides being answered,
// push the read deadline to d from its arrival: a long-lived client (the
// upstream link) then times a read out only when the server stopped
// pinging, not while it is merely quiet. Call it before reading.
func (c *ClientConn) ExtendOnPing(d time.Duration) {
	c.ws.SetPingHandler(func(data string) error {
		c.ws.SetReadDeadline(time.Now().Add(d))
		err := c.ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
		var ne net.Error
		if errors.Is(err, websocket.ErrCloseSent) || (errors.As(err, &ne) && ne.Timeout()) {
			return nil
		}
		return err
	})
}

// Close sends a normal close frame and closes the socket.
func (c *ClientConn) Close() error {
	c.wmu.Lock()
	c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	c.wmu.Unlock()
	return c.ws.Close()
}

// NetConn returns the connection under the WebSocket, for a load tool that
// takes the socket over (the bench's epoll loop) once the handshake and the
// replies it waited for are read, before anything else can arrive: bytes
// already buffered here would not be seen there. After that, c may only be
// closed.
func (c *ClientConn) NetConn() net.Conn { return c.ws.NetConn() }

// Abort closes the socket without a close frame, as a device losing its
// network would.
func (c *ClientConn) Abort() error { return c.ws.Close() }
