// Package relay is the core of pushrelay: device sessions and the delivery
// of stored messages to them.
//
// The Hub never listens. Adapters hand it device connections (Accept) and
// messages (Ingest, from the endpoint API and later upstreams and relay
// links; each with an origin key, so a message sent twice is stored and
// delivered once); registers get their endpoints from Endpoints. It
// stores through the Store before anything is acknowledged and delivers
// over the device's session when one is open. A message leaves the store
// only when the device acks it; what a device did not ack comes again on
// its next hello.
//
// Delivery: a session first reads what waits for its device from the store
// (the pump, at most Window notifications in flight). Once a read finds
// the end with no commit for the device in between, the session is synced:
// the store reports every commit to the hub (Store.OnStored) in seq order,
// and the hub hands each new message to its device's session, which sends
// it from memory. A session that falls behind reads the store again.
//
// Goroutines: an idle session has none. When its adapter reports bytes to
// read (Notify), a worker reads and handles the burst of frames, then the
// session is armed again. Adapters that cannot notify get a worker parked
// in WaitReadable instead. Workers also run the pumps that read the store
// and queue notifications, and the flushers that delete acked messages;
// none of them writes to a socket. Every frame a session sends (replies,
// notifications, TTL-0 messages, pongs, pings, the close frame) goes
// through its outbox, a queue bounded in bytes that a goroutine of the
// session's own writes while it holds anything (outbox.go). A device that
// stops reading therefore stalls only its own writer, until the write
// timeout ends it; its messages wait in the store. Run's loop only
// decides: it queues pings and closes and bounds a closing socket's life
// (Conn.Expire), and never waits for one. Each live session holds one
// count of the Hub's WaitGroup, and so does every worker and writer;
// Shutdown waits for them all, to its deadline.
//
// This is for memory: a relay holds tens of thousands of idle devices, and
// a goroutine parked deep in a WebSocket read keeps a 4 to 8 KiB stack for
// ever (Go never shrinks a parked stack below four times its depth plus
// 800 bytes), while JSON decoding and store calls happen on workers whose
// grown stacks are reused.
//
// Broadcasts (broadcasts.go): the hub keeps an index from each broadcast
// id to its subscribed sessions; a change walks only those and queues one
// shared frame in each outbox, or marks a session whose writer is busy
// for the writer to send the coalesced delta when done.
//
// Lock order: Hub.mu, the broadcast index's mutex or session.mu, never
// two at once. No lock is held across a store call or a socket write. (A
// change is reported while the broadcast source holds its own lock; the
// hub takes its locks under it, one at a time.)
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/token"
)

// Conn is a device connection as the core sees it: text frames in and out.
// One goroutine at a time reads (ReadFrame, WaitReadable); one at a time
// writes (WriteFrame, WriteFrames, Ping, Pong, Close: the session's
// writer); Expire, Disarm and Idle may be called at any time.
type Conn interface {
	// ReadFrame returns the next text frame, or (nil, nil) when only
	// control frames were pending and nothing else is buffered. Errors wrap
	// pushproto.ErrBinaryFrame, pushproto.ErrFrameTooBig,
	// pushproto.ErrPeerClosed, or are a net.Error timeout when a read
	// waited past the idle timeout. The frame is the caller's only until
	// its next call of ReadFrame, Notify, WaitReadable or Release.
	ReadFrame() ([]byte, error)
	// Buffered reports whether bytes of a further frame are already held
	// in the adapter's buffer.
	Buffered() bool
	// Whole reports whether ReadFrame would return without waiting for
	// the peer: what the socket holds now makes a whole frame (or only
	// pongs). Called after Notify fired, it may take in what the socket
	// already holds, without blocking. Adapters that cannot tell report
	// true.
	Whole() bool
	// Notify arranges for f to be called once, without blocking, when the
	// connection has bytes to read, and reports true; while it waits the
	// connection needs no goroutine. It reports false when the adapter
	// cannot do this; the core then parks a goroutine in WaitReadable.
	Notify(f func()) bool
	// Disarm cancels a pending Notify; true means f will not be called.
	Disarm() bool
	// WaitReadable parks until a frame may be read (or the idle timeout
	// or an error), consuming nothing, in as shallow a call as the adapter
	// can manage. Adapters that cannot do this return nil at once.
	WaitReadable() error
	// Idle is the time since anything (a frame, ping or pong) arrived.
	Idle() time.Duration
	// WriteFrame writes one text frame, bounded by the adapter's write
	// timeout.
	WriteFrame(p []byte) error
	// WriteFrames writes several text frames, in one go where it can.
	WriteFrames(frames [][]byte) error
	// Ping sends a transport-level ping.
	Ping() error
	// OnPing makes the adapter hand each transport ping it reads to f
	// (on the reading goroutine; f must not block) instead of answering
	// it; the core answers with Pong from its writer.
	OnPing(f func(payload []byte))
	// Pong answers a transport ping.
	Pong(payload []byte) error
	// Expire bounds the connection's end: every read and write, one in
	// progress included, returns within d, and no later deadline reaches
	// past it. It does not block.
	Expire(d time.Duration)
	// SetIdleTimeout bounds blocked reads, counted from the last frame or
	// pong received.
	SetIdleTimeout(d time.Duration)
	// Close sends a close frame with code and reason (once) and makes a
	// pending ReadFrame return within a short grace period. It is written
	// by the session's writer, after everything queued before it.
	Close(code int, reason string) error
	// Release closes the socket after the closing handshake (reading the
	// peer's close for up to a second); called once, when the session ends.
	Release() error
	RemoteAddr() net.Addr
}

// Store is what the hub needs from durable storage.
type Store interface {
	Device(u push.UAID) (store.Device, bool, error)
	Touch(ctx context.Context, u push.UAID, now time.Time) error
	Register(ctx context.Context, c store.Channel) error
	Channel(u push.UAID, id push.ChannelID) (store.Channel, bool, error)
	Unregister(ctx context.Context, u push.UAID, id push.ChannelID) (bool, error)
	// AppendBatch stores messages in one commit (see
	// store.Store.AppendBatch).
	AppendBatch(ctx context.Context, ms []store.Message) ([]store.AppendResult, error)
	Messages(u push.UAID, afterSeq uint64, limit int) ([]store.Message, error)
	// Channels lists device u's channels (ResetDevice, for Config.Forgot).
	Channels(u push.UAID) ([]store.Channel, error)
	Ack(ctx context.Context, u push.UAID, seqs ...uint64) (int, error)
	Delete(ctx context.Context, u push.UAID, ch push.ChannelID, seq uint64) (bool, error)
	// DeleteDevice removes a device with its channels, messages and
	// upstream identity (Hub.ResetDevice).
	DeleteDevice(ctx context.Context, u push.UAID) error
	// OnStored registers the hub's receiver of committed messages (see
	// store.Store.OnStored); nil unregisters it.
	OnStored(fn func([]store.Message))
}

// Waker wakes devices that sleep: the kick subsystem provides it. Its
// methods are called on the hub's goroutines and must not block for long;
// Wake and Connected must not block at all.
type Waker interface {
	// HelloWake handles the wake fields of a hello (wakeup_hostport,
	// mobilenetwork, wake_auth) for device u, recording what it needs,
	// and returns the reply's wake fields: Status (StatusWake when the
	// device is accepted for UDP wake, else StatusOK), WakeKey, STUNAddr
	// and WakeRefresh. local is the relay's address the device connected
	// to (invalid if unknown): the STUN address a device is told is on
	// the host it already reaches.
	HelloWake(ctx context.Context, u push.UAID, h pushproto.Hello, local netip.Addr) (pushproto.HelloReply, error)
	// Wake asks for u to be woken: a message that may wake it was stored
	// and waits until until. A zero until means "look at what waits".
	Wake(u push.UAID, until time.Time)
	// Connected tells the waker that u said hello: stop waking it.
	Connected(u push.UAID)
}

// Endpoints mints the push endpoint a device's register is answered with.
// The standalone relay's (endpoint.Minter) seals this relay's own token
// endpoints; a relay with an upstream registers the channel upstream and
// returns the upstream's pushEndpoint.
//
// The hub calls Mint before it stores the channel, as autopush makes the
// endpoint before it adds the channel: an error answers the register with
// status 500 and stores nothing. When the store then refuses the channel
// (409, 413, 500) the hub calls Abandon with the same registration, so an
// implementation that registered somewhere can undo it; the device is
// answered without an endpoint either way. Both run on the session's
// worker, in the device's frame order: the standalone Mint is pure, and
// an implementation that waits on the network must bound the wait
// (Firefox gives a register 10 s).
type Endpoints interface {
	Mint(ctx context.Context, r Registration) (endpoint string, err error)
	Abandon(ctx context.Context, r Registration)
}

// EndpointKeeper is implemented by Endpoints whose endpoints cannot be
// minted again (an upstream's pushEndpoint): the hub stores what Mint
// returned with the channel (store.Channel.Endpoint) when KeepEndpoints
// reports true. The standalone minter's endpoints are not stored.
type EndpointKeeper interface {
	KeepEndpoints() bool
}

// Unregisterer is implemented by Endpoints that must hear of a device's
// unregister (an upstream's, to pass it on). The hub then calls
// Unregister instead of removing the channel from the store itself; it
// runs on the session's worker, must have made the removal durable when
// it returns nil (an error answers the device 500), and must not wait on
// the network.
type Unregisterer interface {
	Unregister(ctx context.Context, u push.UAID, ch push.ChannelID) error
}

// PresenceWatcher is implemented by Endpoints that must hear when a
// device connects here and leaves (the upstream link holds an upstream
// session for devices connected locally first). The hub calls
// DeviceOnline once a session for u is past hello and DeviceOffline when
// u's current session ends (not when a newer connection replaced it),
// from the session's goroutines: both must return at once, without
// waiting on the network or the store.
type PresenceWatcher interface {
	DeviceOnline(u push.UAID)
	DeviceOffline(u push.UAID)
}

// Registration is one register of a device, as Endpoints sees it.
type Registration struct {
	UAID    push.UAID
	Channel push.ChannelID
	// Key is the raw VAPID public key the channel is bound to, or nil.
	Key []byte
	// SimplePush is set for a device that did not say use_webpush: a
	// channel without a key gets a SimplePush (PUT /update) endpoint.
	SimplePush bool
}

// KeyChecker validates the VAPID public key a device passes in register and
// returns its raw bytes. The vapid package provides it.
type KeyChecker func(string) ([]byte, error)

// Config configures a Hub. Zero durations take the defaults in parentheses.
type Config struct {
	Store Store
	// Tokens seals and opens message ids.
	Tokens *token.Codec
	// Endpoints mints the endpoints registers are answered with.
	Endpoints Endpoints
	// CheckKey validates register keys; nil accepts none (status 400).
	CheckKey KeyChecker

	HelloTimeout    time.Duration // first frame must be hello within this (5s)
	PingInterval    time.Duration // transport ping after this idle time (300s)
	PongTimeout     time.Duration // close when a ping goes unanswered (4s... plus one tick)
	MinPingInterval time.Duration // WebPush {} pings closer than this close the socket (45s); 0 keeps the default, <0 disables
	Window          int           // notifications in flight per device (100)
	// OutboxBytes bounds the encoded notifications a session holds for
	// writing, and the committed messages it holds for sending, each
	// (32 KiB). What does not fit waits in the store.
	OutboxBytes int

	// Waker, if set, wakes sleeping devices; WakeIdleClose is how long a
	// session of a device accepted for UDP wake may go without traffic
	// before it is closed with 4774 so the device sleeps (10s).
	Waker         Waker
	WakeIdleClose time.Duration
	// SiteWakes is set on a member of a site (relay/site): every member
	// decides from its own commit feed whether to wake a device (the one
	// holding its wake binding does), so Ingest does not ask the Waker.
	SiteWakes bool

	// Broadcasts, if set, is where broadcast versions come from; devices
	// subscribed to a broadcast are told its changes. Without it every id
	// a device names is answered "Broadcast not found".
	Broadcasts Broadcasts

	// Stored, if set, hears of every commit of messages after the hub
	// offered them to its sessions, on the store's committer, in seq
	// order: a relay link's parent sends those of the UAIDs its children
	// serve down the link. It must not block and must not keep ms.
	Stored func(ms []store.Message)

	// Forgot, if set, hears of every device ResetDevice forgot, with the
	// channels it had, after the commit: a relay link's parent updates
	// its digest of the child serving the device and tells the child
	// (FORGET). It must not block.
	Forgot func(u push.UAID, chans []push.ChannelID)

	// ServedElsewhere, if set, reports whether device u is served by
	// another relay (a child on the relay link's parent): a hello here
	// with its UAID is answered as for an unknown UAID, with a new one
	// (counted as pushrelay_device_hellos_total{result="elsewhere"}). It must
	// not block.
	ServedElsewhere func(u push.UAID) bool

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
	if c.OutboxBytes <= 0 {
		c.OutboxBytes = 32 << 10
	}
	if c.WakeIdleClose <= 0 {
		c.WakeIdleClose = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Errors returned by Push, Ingest and Delete; the endpoint API maps
// them to HTTP.
var (
	// ErrNoSubscription: the channel was unregistered or never existed.
	ErrNoSubscription = errors.New("no such subscription")
	// ErrNoMessage: DELETE of a message that is not waiting.
	ErrNoMessage = errors.New("no such message")
	// ErrClosing: the hub is shutting down.
	ErrClosing = errors.New("relay is shutting down")
	// ErrNoQuorum: a write of a site's member (relay/site) was not
	// committed by a quorum of the site in time: this member is cut off
	// from the others, or the site lost its majority. Nothing was
	// acknowledged; the caller should try again (HTTP 503, Retry-After).
	ErrNoQuorum = errors.New("the site has no quorum")
)

// Result tells the caller what became of a pushed message.
type Result struct {
	// ID is the message id for the Location header.
	ID string
	// Stored is true when the message is on disk and will be delivered.
	Stored bool
	// Delivered is true when a TTL-0 message went straight to a connected
	// device.
	Delivered bool
	// Queue is, for a stored message, how many messages its device had
	// waiting right after it was stored (and after the per-device cap
	// dropped the oldest, if it did).
	Queue int
	// Duplicate is true when the message's origin key was ingested before:
	// it was not stored again (Stored is set, ID names the first one).
	Duplicate bool
	// Err is this message's own failure in Ingest (ErrNoSubscription,
	// or a store rejection); nil when it was stored or handled directly.
	Err error
}

func wrapStore(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", op, err)
}
