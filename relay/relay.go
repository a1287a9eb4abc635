// Package relay is the core of pushrelay: device sessions and the delivery
// of stored messages to them.
//
// The Hub never listens. Adapters hand it device connections (Accept) and
// app-server messages (Push); it stores through the Store before anything is
// acknowledged and delivers over the device's session when one is open. A
// message leaves the store only when the device acks it; what a device did not
// ack comes again on its next hello.
//
// Goroutines: one waiter per session (started by Accept) that parks until
// the device sends something; a short-lived reader per burst of frames that
// decodes and handles them; a short-lived pump per session while it has
// frames to send; an ack flusher per session while acks wait to be written;
// and the keepalive loop run by Run. The Hub's WaitGroup owns them all;
// Close waits for them.
//
// The split between waiter and reader is for memory: an idle device costs
// a goroutine parked in a shallow call, whose stack stays at the 2 KiB
// minimum, while the deep work of a burst (JSON, store calls) happens on a
// goroutine that then exits. Go never shrinks a stack below four times the
// depth at which it is parked plus 800 bytes, so a long-lived reader that
// once handled a register would keep 4 to 8 KiB for ever.
//
// Lock order: Hub.mu, then session.mu, then session.wmu. No lock is held
// across a store call.
package relay

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/token"
)

// Conn is a device connection as the core sees it: text frames in and out.
// ReadFrame is called by one goroutine; WriteFrame and Ping are serialized by
// the core; Close may be called at any time, more than once.
type Conn interface {
	// ReadFrame returns the next text frame. Errors wrap
	// pushproto.ErrBinaryFrame, pushproto.ErrFrameTooBig,
	// pushproto.ErrPeerClosed, or are a net.Error timeout when no frame
	// (nor pong) arrived within the idle timeout.
	ReadFrame() ([]byte, error)
	// WaitReadable parks until a frame may be read (or the idle timeout
	// or an error), consuming nothing, in as shallow a call as the adapter
	// can manage. Adapters that cannot do this return nil at once.
	WaitReadable() error
	// Buffered reports whether bytes of a further frame are already held
	// in the adapter's buffer.
	Buffered() bool
	// WriteFrame writes one text frame, bounded by the adapter's write
	// timeout.
	WriteFrame(p []byte) error
	// Ping sends a transport-level ping; the pong extends the idle timeout.
	Ping() error
	// SetIdleTimeout sets how long ReadFrame waits, counted from the last
	// frame or pong received.
	SetIdleTimeout(d time.Duration)
	// Close sends a close frame with code and reason (once) and makes the
	// pending ReadFrame return within a short grace period.
	Close(code int, reason string) error
	// Release closes the socket after the closing handshake; it is called
	// once, by the reader, after its last ReadFrame.
	Release() error
	RemoteAddr() net.Addr
}

// Store is what the hub needs from durable storage.
type Store interface {
	Device(u store.UAID) (store.Device, bool, error)
	Touch(ctx context.Context, u store.UAID, now time.Time) error
	Register(ctx context.Context, c store.Channel) error
	Channel(u store.UAID, id store.ChannelID) (store.Channel, bool, error)
	Unregister(ctx context.Context, u store.UAID, id store.ChannelID) (bool, error)
	Append(ctx context.Context, m store.Message) (store.Message, error)
	Messages(u store.UAID, afterSeq uint64, limit int) ([]store.Message, error)
	Ack(ctx context.Context, u store.UAID, seqs ...uint64) (int, error)
	Delete(ctx context.Context, u store.UAID, ch store.ChannelID, seq uint64) (bool, error)
}

// KeyChecker validates the VAPID public key a device passes in register and
// returns its raw bytes. The vapid package provides it.
type KeyChecker func(string) ([]byte, error)

// Config configures a Hub. Zero durations take the defaults in parentheses.
type Config struct {
	Store  Store
	Tokens *token.Codec
	// PublicURL is the base of push endpoints, e.g. https://push.example.net.
	PublicURL string
	// CheckKey validates register keys; nil accepts none (status 400).
	CheckKey KeyChecker

	HelloTimeout    time.Duration // first frame must be hello within this (5s)
	PingInterval    time.Duration // transport ping after this idle time (300s)
	PongTimeout     time.Duration // close when a ping goes unanswered (4s... plus one tick)
	MinPingInterval time.Duration // WebPush {} pings closer than this close the socket (45s); 0 keeps the default, <0 disables
	Window          int           // notifications in flight per device (100)

	Logger  *slog.Logger
	Metrics *metrics.Registry
	Now     func() time.Time
}

func (c *Config) setDefaults() {
	if c.HelloTimeout <= 0 {
		c.HelloTimeout = 5 * time.Second
	}
	if c.PingInterval <= 0 {
		c.PingInterval = 300 * time.Second
	}
	if c.PongTimeout <= 0 {
		c.PongTimeout = 4 * time.Second
	}
	if c.MinPingInterval == 0 {
		c.MinPingInterval = 45 * time.Second
	}
	if c.Window <= 0 {
		c.Window = 100
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Errors returned by Push and Delete; the endpoint API maps them to HTTP.
var (
	// ErrNoSubscription: the channel was unregistered or never existed.
	ErrNoSubscription = errors.New("no such subscription")
	// ErrNoMessage: DELETE of a message that is not waiting.
	ErrNoMessage = errors.New("no such message")
	// ErrClosing: the hub is shutting down.
	ErrClosing = errors.New("relay is shutting down")
)

// Message is a message from an app server for one subscription.
type Message struct {
	Endpoint   token.Endpoint
	TTL        time.Duration
	Topic      string
	Urgency    store.Urgency
	Encoding   string
	Encryption string
	CryptoKey  string
	Data       []byte
	// Version is a SimplePush version (PUT /update); 0 for Web Push.
	Version uint64
}

// Result tells the caller what became of a pushed message.
type Result struct {
	// ID is the message id for the Location header.
	ID string
	// Stored is true when the message is on disk and will be delivered.
	Stored bool
	// Delivered is true when a TTL-0 message went straight to a connected
	// device.
	Delivered bool
}

func uaidOf(e token.Endpoint) store.UAID         { return store.UAID(e.UAID) }
func channelOf(e token.Endpoint) store.ChannelID { return store.ChannelID(e.Channel) }

func wrapStore(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", op, err)
}

func keyHash(key []byte) [32]byte { return sha256.Sum256(key) }
