// Package pushclient is a client of the Mozilla push protocol: what a
// browser's push service does, in Go. The device tool, the bench tool and the
// end-to-end tests drive the relay through it, and it speaks to any
// autopush-compatible server.
//
// It is synchronous and owns no goroutines: Expect reads until a frame of
// the wanted type arrives and keeps notifications that arrive meanwhile for
// Next.
package pushclient

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/wsock"
)

// Client is one device connection.
type Client struct {
	conn    *wsock.ClientConn
	UAID    string
	pending []pushproto.ServerFrame
	// Timeout bounds each Expect (default 10s).
	Timeout time.Duration
}

// CloseError is re-exported so callers need not import wsock.
type CloseError = wsock.CloseError

// Dial connects to a device listener.
func Dial(ctx context.Context, url string) (*Client, error) {
	return DialTLS(ctx, url, nil)
}

// DialTLS connects to a wss:// device listener with the given TLS settings
// (nil: system roots).
func DialTLS(ctx context.Context, url string, tlsConf *tls.Config) (*Client, error) {
	c, err := wsock.Dial(ctx, url, tlsConf)
	if err != nil {
		return nil, err
	}
	return &Client{conn: c, Timeout: 10 * time.Second}, nil
}

// DialOptions shape a client's socket: TLS settings, and the net.Dialer
// that opens it (see Shape for a small receive buffer and MSS).
type DialOptions = wsock.DialOptions

// DialWith connects to a device listener with the given socket options.
func DialWith(ctx context.Context, url string, o DialOptions) (*Client, error) {
	c, err := wsock.DialWith(ctx, url, o)
	if err != nil {
		return nil, err
	}
	return &Client{conn: c, Timeout: 10 * time.Second}, nil
}

// HelloOptions are the optional parts of hello.
type HelloOptions struct {
	Broadcasts map[string]string
	// Legacy leaves out use_webpush, as Firefox OS 1.x did.
	Legacy bool
	// Wake, if valid, is sent as wakeup_hostport (the device's wake
	// socket); WakeAuth asks for authenticated wake datagrams.
	Wake     netip.AddrPort
	WakeAuth bool
	// Extra fields merged into the hello frame.
	Extra map[string]any
}

// Hello says hello with uaid ("" for a new device) and returns the reply.
func (c *Client) Hello(uaid string, o HelloOptions) (pushproto.ServerFrame, error) {
	m := map[string]any{"messageType": "hello"}
	if !o.Legacy {
		m["use_webpush"] = true
	}
	if uaid != "" {
		m["uaid"] = uaid
	}
	if o.Broadcasts != nil {
		m["broadcasts"] = o.Broadcasts
	}
	if o.Wake.IsValid() {
		m["wakeup_hostport"] = map[string]any{"ip": o.Wake.Addr().String(), "port": o.Wake.Port()}
		if o.WakeAuth {
			m["wake_auth"] = true
		}
	}
	for k, v := range o.Extra {
		m[k] = v
	}
	if err := c.SendJSON(m); err != nil {
		return pushproto.ServerFrame{}, err
	}
	f, err := c.Expect(pushproto.TypeHello)
	if err != nil {
		return f, err
	}
	if f.UAID == "" {
		return f, errors.New("hello reply without uaid")
	}
	c.UAID = f.UAID
	return f, nil
}

// Register asks for an endpoint; key is the application server key
// (base64url) or "".
func (c *Client) Register(channelID, key string) (pushproto.ServerFrame, error) {
	m := map[string]any{"messageType": "register", "channelID": channelID}
	if key != "" {
		m["key"] = key
	}
	if err := c.SendJSON(m); err != nil {
		return pushproto.ServerFrame{}, err
	}
	return c.Expect(pushproto.TypeRegister)
}

// Unregister drops a channel.
func (c *Client) Unregister(channelID string) (pushproto.ServerFrame, error) {
	if err := c.SendJSON(map[string]any{"messageType": "unregister", "channelID": channelID, "code": 200}); err != nil {
		return pushproto.ServerFrame{}, err
	}
	return c.Expect(pushproto.TypeUnregister)
}

// Ack acknowledges notifications (code 100). SimplePush notifications are
// acked with their integer versions, as Firefox OS did.
func (c *Client) Ack(ns ...pushproto.ServerFrame) error {
	var simple []map[string]any
	var web []pushproto.AckUpdate
	for _, n := range ns {
		for _, u := range n.Updates {
			simple = append(simple, map[string]any{"channelID": u.ChannelID, "version": u.Version})
		}
		if len(n.Updates) == 0 {
			web = append(web, pushproto.AckUpdate{ChannelID: n.ChannelID, Version: n.Version, Code: 100})
		}
	}
	if len(simple) > 0 {
		if err := c.SendJSON(map[string]any{"messageType": "ack", "updates": simple}); err != nil {
			return err
		}
	}
	if len(web) > 0 {
		return c.Send(pushproto.EncodeAck(web))
	}
	return nil
}

// Ping sends the WebPush {} ping and waits for its answer.
func (c *Client) Ping() error {
	if err := c.Send([]byte("{}")); err != nil {
		return err
	}
	_, err := c.Expect(pushproto.TypePing)
	return err
}

// SendJSON marshals and sends v.
func (c *Client) SendJSON(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return c.Send(b)
}

// Send sends a raw text frame.
func (c *Client) Send(b []byte) error { return c.conn.Write(b) }

// SendBinary sends a binary frame.
func (c *Client) SendBinary(b []byte) error { return c.conn.WriteBinary(b) }

// Read returns the next frame from the server, whatever it is, ignoring
// frames Expect kept. A server close is a *CloseError.
func (c *Client) Read(deadline time.Time) (pushproto.ServerFrame, error) {
	b, err := c.conn.Read(deadline)
	if err != nil {
		return pushproto.ServerFrame{}, err
	}
	return pushproto.DecodeServer(b)
}

// SetReadDeadline sets the deadline of the Receives that follow, which
// pings push on with ExtendOnPing.
func (c *Client) SetReadDeadline(t time.Time) { c.conn.SetReadDeadline(t) }

// Receive reads one WebSocket frame, waiting until the read deadline, and
// returns the server frame it completes (ok); after a control frame (a
// ping, answered) ok is false. Frames Expect kept are ignored. A server
// close is a *CloseError.
func (c *Client) Receive() (f pushproto.ServerFrame, ok bool, err error) {
	b, ok, err := c.conn.Receive()
	if err != nil || !ok {
		return f, false, err
	}
	f, err = pushproto.DecodeServer(b)
	return f, err == nil, err
}

// Pending reports whether Receive would find a frame without waiting for
// the socket (wsock.ClientConn.Pending); when false, the reader may Park.
func (c *Client) Pending() bool { return c.conn.Pending() }

// Poller watches parked clients (wsock.Poller).
type Poller = wsock.Poller

// NewPoller makes a Poller, where the platform has one (Linux).
func NewPoller() (*Poller, error) { return wsock.NewPoller() }

// Park arranges for wake to be called once when Receive has something:
// bytes, the read deadline passed, or the connection closed
// (wsock.ClientConn.Park); false when it cannot, and the caller reads.
func (c *Client) Park(p *Poller, wake func()) bool { return c.conn.Park(p, wake) }

// Expect reads until a frame of type t, keeping notifications and
// broadcasts that arrive first for Next.
func (c *Client) Expect(t pushproto.MessageType) (pushproto.ServerFrame, error) {
	deadline := time.Now().Add(c.Timeout)
	for {
		f, err := c.Read(deadline)
		if err != nil {
			return f, fmt.Errorf("waiting for %s: %w", t, err)
		}
		if f.MessageType == t {
			return f, nil
		}
		c.pending = append(c.pending, f)
	}
}

// Next returns the next notification (or broadcast), waiting until
// deadline.
func (c *Client) Next(deadline time.Time) (pushproto.ServerFrame, error) {
	for {
		if len(c.pending) > 0 {
			f := c.pending[0]
			c.pending = c.pending[1:]
			if f.MessageType == pushproto.TypeNotification || f.MessageType == pushproto.TypeBroadcast {
				return f, nil
			}
			continue
		}
		f, err := c.Read(deadline)
		if err != nil {
			return f, err
		}
		if f.MessageType == pushproto.TypeNotification || f.MessageType == pushproto.TypeBroadcast {
			return f, nil
		}
	}
}

// NetConn returns the connection under the WebSocket, for a load tool that
// drives the socket itself after hello and register (see
// wsock.ClientConn.NetConn). Frames Expect kept are not handed over.
func (c *Client) NetConn() net.Conn { return c.conn.NetConn() }

// ExtendOnPing makes each WebSocket ping from the server (answered as
// always) push the current read's deadline to d from its arrival.
func (c *Client) ExtendOnPing(d time.Duration) { c.conn.ExtendOnPing(d) }

// Close closes the connection with a normal close frame.
func (c *Client) Close() error { return c.conn.Close() }

// Abort drops the connection without a close frame.
func (c *Client) Abort() error { return c.conn.Abort() }
