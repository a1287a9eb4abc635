package store

import (
	"errors"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
)

// Errors returned by the store. Callers test them with errors.Is; the
// returned errors may wrap them with detail.
var (
	// ErrClosed: the store is closed, or closing, and takes no new work.
	ErrClosed = errors.New("store closed")
	// ErrNoChannel: Append to a channel (or device) that is not registered.
	ErrNoChannel = errors.New("no such channel")
	// ErrTombstoned: Append to a channel whose unregister waits to be
	// sent upstream (UnregisterLater), or Register of it again. A message
	// refused with it is counted (pushrelay_store_tombstoned_total); the
	// caller acks it upstream and drops it.
	ErrTombstoned = errors.New("channel unregistered, unregister not yet sent upstream")
	// ErrUpstreamConflict: SetUpstreamID with an upstream UAID that
	// already stands for another device.
	ErrUpstreamConflict = errors.New("upstream uaid belongs to another device")
	// ErrNoDevice: UpdateWake without create for a device that has no
	// record.
	ErrNoDevice = errors.New("no such device")
	// ErrChannelConflict: Register of an existing channel with another key.
	ErrChannelConflict = errors.New("channel registered with a different key")
	// ErrTooManyChannels: Register over Options.MaxChannelsPerUAID.
	ErrTooManyChannels = errors.New("too many channels for device")
	// ErrZeroTTL: Append of a message with TTL <= 0. Such messages are
	// delivered now or dropped by the caller, never stored.
	ErrZeroTTL = errors.New("message ttl is zero")
	// ErrBadMessage: Append of a message the store cannot hold (for
	// example a topic longer than MaxTopicLen).
	ErrBadMessage = errors.New("bad message")
	// ErrBadChannel: Register of a channel the store cannot hold (an
	// Endpoint longer than MaxEndpointLen).
	ErrBadChannel = errors.New("bad channel")
	// ErrSchemaTooNew: the file was written by a newer pushrelay.
	ErrSchemaTooNew = errors.New("store schema is newer than this build")
	// ErrLocked: another process holds the store file.
	ErrLocked = errors.New("data dir in use by another process")
)

// MaxTopicLen bounds Message.Topic. RFC 8030 allows 32 base64url
// characters; the endpoint enforces that, the store only refuses what it
// cannot index sensibly.
const MaxTopicLen = 255

// Device is what the store keeps about one UAID.
type Device struct {
	UAID     push.UAID
	Created  time.Time
	LastSeen time.Time
	// Waiting counts the device's stored messages, including expired ones
	// the sweeper has not removed yet.
	Waiting int
	// Channels counts the device's registered channels.
	Channels int
	// Wake is an opaque blob owned by the wake subsystem, stored verbatim.
	// An empty blob reads back as nil.
	Wake []byte
}

// Channel is one registered subscription.
type Channel struct {
	UAID    push.UAID
	ID      push.ChannelID
	Created time.Time
	// Key is the raw VAPID public key the channel is bound to, or nil.
	Key []byte
	// Endpoint is the push endpoint an upstream returned for the channel
	// (at most MaxEndpointLen bytes), kept so that a re-register or a
	// restart answers the same one; empty in standalone mode.
	Endpoint string
}

// MaxEndpointLen bounds Channel.Endpoint.
const MaxEndpointLen = 1024

// Message is one stored push message.
type Message struct {
	UAID    push.UAID
	Channel push.ChannelID
	// Seq is assigned by Append from one global counter, so a device's
	// messages sort in arrival order. Append ignores the caller's value.
	Seq uint64

	Received time.Time
	TTL      time.Duration
	// Expiry is Received+TTL. Append fills it in when it is zero.
	Expiry time.Time

	Topic   string
	Urgency push.Urgency
	// Version is the SimplePush version an app server PUT (0 for Web
	// Push), stored verbatim.
	Version uint64

	// Content headers to forward with Data; any may be empty.
	Encoding, Encryption, CryptoKey string

	Data []byte

	// Origin is where the message came from and its id there (see
	// push.Origin). A message with one is appended at most once while its
	// TTL lasts (the origins index). It is not kept in the message record:
	// messages read back have none.
	Origin push.Origin
}

// Stats are whole-store totals, kept as counters so reading them is O(1).
type Stats struct {
	Devices, Channels, Waiting int64
	// UpstreamIDs counts the devices with an upstream identity;
	// PendingUnregisters the unregisters waiting to be sent upstream.
	UpstreamIDs, PendingUnregisters int64
}
