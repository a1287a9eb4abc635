package store

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Errors returned by the store. Callers test them with errors.Is; the
// returned errors may wrap them with detail.
var (
	// ErrClosed: the store is closed, or closing, and takes no new work.
	ErrClosed = errors.New("store closed")
	// ErrNoChannel: Append to a channel (or device) that is not registered.
	ErrNoChannel = errors.New("no such channel")
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
	// ErrBadChannelID: ParseChannelID got anything but a lower-case dashed
	// UUID.
	ErrBadChannelID = errors.New("bad channel id")
	// ErrBadUAID: ParseUAID got neither 32 hex digits nor a dashed UUID.
	ErrBadUAID = errors.New("bad uaid")
	// ErrBadUrgency: ParseUrgency got a value RFC 8030 does not define.
	ErrBadUrgency = errors.New("bad urgency")
	// ErrSchemaTooNew: the file was written by a newer pushrelay.
	ErrSchemaTooNew = errors.New("store schema is newer than this build")
	// ErrLocked: another process holds the store file.
	ErrLocked = errors.New("data dir in use by another process")
)

// MaxTopicLen bounds Message.Topic. RFC 8030 allows 32 base64url
// characters; the endpoint enforces that, the store only refuses what it
// cannot index sensibly.
const MaxTopicLen = 255

// UAID identifies a device (user agent). It prints as 32 lower-case hex
// digits, the form autopush and Firefox use.
type UAID [16]byte

// String returns u as 32 lower-case hex digits.
func (u UAID) String() string { return hex.EncodeToString(u[:]) }

// ParseUAID accepts 32 hex digits or a dashed 36-character UUID, in either
// case.
func ParseUAID(s string) (UAID, error) {
	var u UAID
	switch len(s) {
	case 32:
		if _, err := hex.Decode(u[:], []byte(s)); err != nil {
			return UAID{}, fmt.Errorf("%w: %q", ErrBadUAID, s)
		}
		return u, nil
	case 36:
		if !parseDashed(u[:], s) {
			return UAID{}, fmt.Errorf("%w: %q", ErrBadUAID, s)
		}
		return u, nil
	}
	return UAID{}, fmt.Errorf("%w: %q", ErrBadUAID, s)
}

// ChannelID identifies one subscription of a device. It prints as a
// lower-case dashed UUID, the only form the push protocol uses.
type ChannelID [16]byte

// String returns id as a lower-case dashed UUID.
func (id ChannelID) String() string {
	var b [36]byte
	hex.Encode(b[0:8], id[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], id[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], id[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], id[8:10])
	b[23] = '-'
	hex.Encode(b[24:36], id[10:16])
	return string(b[:])
}

// ParseChannelID accepts only a lower-case dashed 36-character UUID, so
// that one channel has exactly one spelling on the wire.
func ParseChannelID(s string) (ChannelID, error) {
	var id ChannelID
	if len(s) != 36 || strings.ToLower(s) != s || !parseDashed(id[:], s) {
		return ChannelID{}, fmt.Errorf("%w: %q", ErrBadChannelID, s)
	}
	return id, nil
}

// parseDashed decodes an 8-4-4-4-12 UUID of either case into dst.
func parseDashed(dst []byte, s string) bool {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return false
	}
	h := s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:36]
	_, err := hex.Decode(dst, []byte(h))
	return err == nil
}

// Urgency is RFC 8030 message urgency. The zero value is UrgencyNormal,
// the default when an app server sends none. The numeric values are an
// encoding, not an order: compare with AtLeast.
type Urgency uint8

// Urgency values. They are stored on disk; never renumber them.
const (
	UrgencyNormal  Urgency = 0
	UrgencyVeryLow Urgency = 1
	UrgencyLow     Urgency = 2
	UrgencyHigh    Urgency = 3
)

var urgencyNames = [...]string{
	UrgencyNormal:  "normal",
	UrgencyVeryLow: "very-low",
	UrgencyLow:     "low",
	UrgencyHigh:    "high",
}

var urgencyRank = [...]int{UrgencyVeryLow: 0, UrgencyLow: 1, UrgencyNormal: 2, UrgencyHigh: 3}

// String returns the RFC 8030 name: "very-low", "low", "normal" or "high".
func (u Urgency) String() string {
	if int(u) < len(urgencyNames) {
		return urgencyNames[u]
	}
	return fmt.Sprintf("urgency(%d)", uint8(u))
}

// AtLeast reports whether u is as urgent as v or more, in RFC 8030 order
// very-low < low < normal < high. Unknown values rank as normal.
func (u Urgency) AtLeast(v Urgency) bool { return u.rank() >= v.rank() }

func (u Urgency) rank() int {
	if int(u) < len(urgencyRank) {
		return urgencyRank[u]
	}
	return urgencyRank[UrgencyNormal]
}

// ParseUrgency parses an RFC 8030 Urgency header value, ignoring ASCII
// case and surrounding spaces. An empty value means UrgencyNormal.
func ParseUrgency(s string) (Urgency, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return UrgencyNormal, nil
	}
	for u, name := range urgencyNames {
		if strings.EqualFold(s, name) {
			return Urgency(u), nil
		}
	}
	return UrgencyNormal, fmt.Errorf("%w: %q", ErrBadUrgency, s)
}

// Device is what the store keeps about one UAID.
type Device struct {
	UAID     UAID
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
	UAID    UAID
	ID      ChannelID
	Created time.Time
	// Key is the raw VAPID public key the channel is bound to, or nil.
	Key []byte
}

// Message is one stored push message.
type Message struct {
	UAID    UAID
	Channel ChannelID
	// Seq is assigned by Append from one global counter, so a device's
	// messages sort in arrival order. Append ignores the caller's value.
	Seq uint64

	Received time.Time
	TTL      time.Duration
	// Expiry is Received+TTL. Append fills it in when it is zero.
	Expiry time.Time

	Topic   string
	Urgency Urgency
	// Version is the SimplePush version an app server PUT (0 for Web
	// Push), stored verbatim.
	Version uint64

	// Content headers to forward with Data; any may be empty.
	Encoding, Encryption, CryptoKey string

	Data []byte
}

// Stats are whole-store totals, kept as counters so reading them is O(1).
type Stats struct {
	Devices, Channels, Waiting int64
}
