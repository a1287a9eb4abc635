package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
)

// Keys are fixed-width big-endian binary so that cursor order is numeric
// order and a UAID's rows are one contiguous range.

func deviceKey(u push.UAID) []byte { k := make([]byte, 16); copy(k, u[:]); return k }

func channelKey(u push.UAID, id push.ChannelID) []byte {
	k := make([]byte, 32)
	copy(k, u[:])
	copy(k[16:], id[:])
	return k
}

func messageKey(u push.UAID, seq uint64) []byte {
	k := make([]byte, 24)
	copy(k, u[:])
	binary.BigEndian.PutUint64(k[16:], seq)
	return k
}

func topicKey(u push.UAID, id push.ChannelID, topic string) []byte {
	k := make([]byte, 32+len(topic))
	copy(k, u[:])
	copy(k[16:], id[:])
	copy(k[32:], topic)
	return k
}

func expiryKey(expiry uint64, u push.UAID, seq uint64) []byte {
	k := make([]byte, 32)
	binary.BigEndian.PutUint64(k, expiry)
	copy(k[8:], u[:])
	binary.BigEndian.PutUint64(k[24:], seq)
	return k
}

func seqValue(seq uint64) []byte { v := make([]byte, 8); binary.BigEndian.PutUint64(v, seq); return v }

// Times are stored as Unix nanoseconds, clamped to [0, MaxInt64]; the zero
// time.Time is 0 and reads back as the zero time.Time.
func timeNanos(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	// UnixNano is undefined outside 1678..2262; clamp first.
	if t.Before(time.Unix(0, 0)) {
		return 0
	}
	if t.After(time.Unix(0, math.MaxInt64)) {
		return math.MaxInt64
	}
	return uint64(t.UnixNano())
}

func nanosTime(n uint64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(n))
}

var errCorrupt = errors.New("corrupt record")

func corrupt(what string, key []byte) error {
	return fmt.Errorf("%w: %s %x", errCorrupt, what, key)
}

// Record encodings. Every value starts with a format byte so that a later
// schema can change one record type and migrate it.

const (
	deviceV1  = 1
	channelV1 = 1
	channelV2 = 2
	messageV1 = 1
)

// device v1: ver | created(8) | lastSeen(8) | waiting(4) | channels(4) | wake...
const deviceFixed = 1 + 8 + 8 + 4 + 4

func encodeDevice(d Device) []byte {
	b := make([]byte, deviceFixed+len(d.Wake))
	b[0] = deviceV1
	binary.BigEndian.PutUint64(b[1:], timeNanos(d.Created))
	binary.BigEndian.PutUint64(b[9:], timeNanos(d.LastSeen))
	binary.BigEndian.PutUint32(b[17:], clampU32(d.Waiting))
	binary.BigEndian.PutUint32(b[21:], clampU32(d.Channels))
	copy(b[deviceFixed:], d.Wake)
	return b
}

func decodeDevice(u push.UAID, b []byte) (Device, error) {
	if len(b) < deviceFixed || b[0] != deviceV1 {
		return Device{}, corrupt("device", u[:])
	}
	d := Device{
		UAID:     u,
		Created:  nanosTime(binary.BigEndian.Uint64(b[1:])),
		LastSeen: nanosTime(binary.BigEndian.Uint64(b[9:])),
		Waiting:  int(binary.BigEndian.Uint32(b[17:])),
		Channels: int(binary.BigEndian.Uint32(b[21:])),
	}
	if len(b) > deviceFixed {
		d.Wake = append([]byte(nil), b[deviceFixed:]...)
	}
	return d, nil
}

func clampU32(n int) uint32 {
	if n < 0 {
		return 0
	}
	if uint64(n) > math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(n)
}

// channel v1: ver | created(8) | key...
// channel v2: ver | created(8) | keylen uvarint | key | endpoint...
// (schema 6: v2 adds the endpoint an upstream returned; v1 records, with
// no endpoint, still decode and are never rewritten in place).
const channelFixed = 1 + 8

func encodeChannel(c Channel) []byte {
	b := make([]byte, channelFixed, channelFixed+binary.MaxVarintLen64+len(c.Key)+len(c.Endpoint))
	b[0] = channelV2
	binary.BigEndian.PutUint64(b[1:], timeNanos(c.Created))
	b = binary.AppendUvarint(b, uint64(len(c.Key)))
	b = append(b, c.Key...)
	return append(b, c.Endpoint...)
}

// encodeChannelV1 writes the format schemas 1 to 5 wrote; the tests use
// it to build old files.
func encodeChannelV1(c Channel) []byte {
	b := make([]byte, channelFixed+len(c.Key))
	b[0] = channelV1
	binary.BigEndian.PutUint64(b[1:], timeNanos(c.Created))
	copy(b[channelFixed:], c.Key)
	return b
}

func decodeChannel(u push.UAID, id push.ChannelID, b []byte) (Channel, error) {
	if len(b) < channelFixed || (b[0] != channelV1 && b[0] != channelV2) {
		return Channel{}, corrupt("channel", channelKey(u, id))
	}
	c := Channel{UAID: u, ID: id, Created: nanosTime(binary.BigEndian.Uint64(b[1:]))}
	rest := b[channelFixed:]
	if b[0] == channelV2 {
		n, w := binary.Uvarint(rest)
		if w <= 0 || n > uint64(len(rest)-w) || len(rest)-w-int(n) > MaxEndpointLen {
			return Channel{}, corrupt("channel", channelKey(u, id))
		}
		key, ep := rest[w:w+int(n)], rest[w+int(n):]
		if len(ep) > 0 {
			c.Endpoint = string(ep)
		}
		rest = key
	}
	if len(rest) > 0 {
		c.Key = append([]byte(nil), rest...)
	}
	return c, nil
}

// message v1: ver | chid(16) | received(8) | ttl ns(8) | expiry(8) |
// urgency(1) | version(8) | topic | encoding | encryption | cryptokey | data...
// where the four strings are uvarint length + bytes and data is the rest.
const messageFixed = 1 + 16 + 8 + 8 + 8 + 1 + 8

func encodeMessage(m *Message) []byte {
	n := messageFixed + len(m.Data)
	for _, s := range [...]string{m.Topic, m.Encoding, m.Encryption, m.CryptoKey} {
		n += binary.MaxVarintLen64 + len(s)
	}
	b := make([]byte, messageFixed, n)
	b[0] = messageV1
	copy(b[1:], m.Channel[:])
	binary.BigEndian.PutUint64(b[17:], timeNanos(m.Received))
	binary.BigEndian.PutUint64(b[25:], uint64(max(m.TTL, 0)))
	binary.BigEndian.PutUint64(b[33:], timeNanos(m.Expiry))
	b[41] = byte(m.Urgency)
	binary.BigEndian.PutUint64(b[42:], m.Version)
	for _, s := range [...]string{m.Topic, m.Encoding, m.Encryption, m.CryptoKey} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return append(b, m.Data...)
}

// msgHeader is the part of a message the indexes need.
type msgHeader struct {
	channel push.ChannelID
	expiry  uint64
	topic   string
}

func decodeHeader(u push.UAID, seq uint64, b []byte) (msgHeader, error) {
	if len(b) < messageFixed || b[0] != messageV1 {
		return msgHeader{}, corrupt("message", messageKey(u, seq))
	}
	h := msgHeader{expiry: binary.BigEndian.Uint64(b[33:])}
	copy(h.channel[:], b[1:17])
	topic, _, ok := readString(b[messageFixed:])
	if !ok {
		return msgHeader{}, corrupt("message", messageKey(u, seq))
	}
	h.topic = topic
	return h, nil
}

func decodeMessage(u push.UAID, seq uint64, b []byte) (Message, error) {
	if len(b) < messageFixed || b[0] != messageV1 {
		return Message{}, corrupt("message", messageKey(u, seq))
	}
	m := Message{
		UAID:     u,
		Seq:      seq,
		Received: nanosTime(binary.BigEndian.Uint64(b[17:])),
		TTL:      time.Duration(binary.BigEndian.Uint64(b[25:])),
		Expiry:   nanosTime(binary.BigEndian.Uint64(b[33:])),
		Urgency:  push.Urgency(b[41]),
		Version:  binary.BigEndian.Uint64(b[42:]),
	}
	copy(m.Channel[:], b[1:17])
	rest := b[messageFixed:]
	for _, dst := range [...]*string{&m.Topic, &m.Encoding, &m.Encryption, &m.CryptoKey} {
		s, r, ok := readString(rest)
		if !ok {
			return Message{}, corrupt("message", messageKey(u, seq))
		}
		*dst, rest = s, r
	}
	if len(rest) > 0 {
		m.Data = append([]byte(nil), rest...)
	}
	return m, nil
}

// readString reads a uvarint-length-prefixed string, copying it.
func readString(b []byte) (string, []byte, bool) {
	n, w := binary.Uvarint(b)
	if w <= 0 || n > uint64(len(b)-w) {
		return "", nil, false
	}
	return string(b[w : w+int(n)]), b[w+int(n):], true
}

func beUint64(b []byte) (uint64, bool) {
	if len(b) != 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(b), true
}
