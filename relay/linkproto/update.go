package linkproto

import (
	"bytes"
	"fmt"
	"slices"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
)

// Limits of UPDATE.
const (
	// MaxUpdatePayload is the hard limit on an UPDATE payload.
	MaxUpdatePayload = 1 << 20
	// MinUpdatePayload is the least a child may announce in HELLO: room
	// for the largest message the limits below allow.
	MinUpdatePayload = 128 << 10
	// MaxUpdateMessages bounds the messages of one UPDATE.
	MaxUpdateMessages = 1024
	// MaxData bounds a message's data (the largest max_data_bytes).
	MaxData = 1 << 16
	// MaxTopicLen bounds a topic (the store's limit).
	MaxTopicLen = 255
	// MaxContentHeaderLen bounds Content-Encoding, Encryption and
	// Crypto-Key values (the ece package's limit).
	MaxContentHeaderLen = 8 << 10
	// MaxTTLSeconds bounds a message's TTL.
	MaxTTLSeconds = 1<<32 - 1
	// minMessageLen is the smallest encoded message: a channel, a 1-byte
	// origin id with its length, and a byte for each other field.
	minMessageLen = 16 + 2 + 8
)

// Update is one UPDATE frame: a sequence number and messages. On the wire
// the messages come grouped by UAID (a UAID, then its messages, each
// without the UAID): consecutive messages of the same UAID form a group,
// so encoding keeps their order exactly. UpdateBuilder packs a batch into
// frames with one group per UAID.
//
// A message's Origin is the parent's id for it: kind OriginParent and an
// ID of 1 to push.MaxOriginID bytes, unique among the messages the parent
// sends the child and the same on every resend (its durable queue key,
// say), so that the child's store drops a resent message as a duplicate.
// TTL travels in whole seconds, rounded down.
//
// Decoded messages share two allocations per frame (one string for all
// their string fields, one array for all their data); they keep the frame's
// payload alive until the last of them is dropped.
type Update struct {
	Seq      uint64
	Messages []push.Message
}

func (Update) Type() FrameType { return TypeUpdate }

func (u Update) appendPayload(b []byte) ([]byte, error) {
	if len(u.Messages) == 0 || len(u.Messages) > MaxUpdateMessages {
		return b, fmt.Errorf("%w: %d messages, 1 to %d", ErrTooLarge, len(u.Messages), MaxUpdateMessages)
	}
	b, err := appendVarintChecked(b, u.Seq, "sequence")
	if err != nil {
		return b, err
	}
	b = AppendVarint(b, uint64(countGroups(u.Messages)))
	for i := 0; i < len(u.Messages); {
		j := i + 1
		for j < len(u.Messages) && u.Messages[j].UAID == u.Messages[i].UAID {
			j++
		}
		b = append(b, u.Messages[i].UAID[:]...)
		b = AppendVarint(b, uint64(j-i))
		for _, m := range u.Messages[i:j] {
			if b, err = appendMessage(b, &m); err != nil {
				return b, err
			}
		}
		i = j
	}
	return b, nil
}

func countGroups(ms []push.Message) int {
	n := 0
	for i := range ms {
		if i == 0 || ms[i].UAID != ms[i-1].UAID {
			n++
		}
	}
	return n
}

// checkMessage reports why the format cannot carry m, or nil.
func checkMessage(m *push.Message) error {
	switch {
	case m.Origin.Kind != push.OriginParent || !m.Origin.Valid():
		return fmt.Errorf("%w: message origin %v is no parent id", ErrMalformed, m.Origin)
	case m.Urgency > push.UrgencyHigh:
		return fmt.Errorf("%w: urgency %d", ErrMalformed, m.Urgency)
	case m.TTL/time.Second > MaxTTLSeconds:
		return fmt.Errorf("%w: ttl %s", ErrTooLarge, m.TTL)
	case m.Version > MaxVarint:
		return fmt.Errorf("%w: version %d above 2^62-1", ErrTooLarge, m.Version)
	case len(m.Topic) > MaxTopicLen:
		return fmt.Errorf("%w: topic of %d bytes, limit %d", ErrTooLarge, len(m.Topic), MaxTopicLen)
	case len(m.Encoding) > MaxContentHeaderLen, len(m.Encryption) > MaxContentHeaderLen, len(m.CryptoKey) > MaxContentHeaderLen:
		return fmt.Errorf("%w: content header over %d bytes", ErrTooLarge, MaxContentHeaderLen)
	case len(m.Data) > MaxData:
		return fmt.Errorf("%w: data of %d bytes, limit %d", ErrTooLarge, len(m.Data), MaxData)
	}
	return nil
}

func appendMessage(b []byte, m *push.Message) ([]byte, error) {
	if err := checkMessage(m); err != nil {
		return b, err
	}
	b = append(b, m.Channel[:]...)
	b = AppendVarint(b, uint64(len(m.Origin.ID)))
	b = append(b, m.Origin.ID...)
	b = AppendVarint(b, uint64(max(m.TTL/time.Second, 0)))
	b = append(b, byte(m.Urgency))
	b = AppendVarint(b, m.Version)
	for _, s := range [...]string{m.Topic, m.Encoding, m.Encryption, m.CryptoKey} {
		b = AppendVarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	b = AppendVarint(b, uint64(len(m.Data)))
	return append(b, m.Data...), nil
}

// messageLen is the encoded length of m (valid or not).
func messageLen(m *push.Message) int {
	ttl := uint64(max(m.TTL/time.Second, 0))
	n := 16 + VarintLen(uint64(len(m.Origin.ID))) + len(m.Origin.ID) + VarintLen(ttl) + 1 + VarintLen(m.Version)
	for _, s := range [...]int{len(m.Topic), len(m.Encoding), len(m.Encryption), len(m.CryptoKey), len(m.Data)} {
		n += VarintLen(uint64(s)) + s
	}
	return n
}

func (u *Update) decodePayload(p []byte) error {
	// Every string field is a substring of s and every data field a slice
	// of data: two allocations for the whole frame.
	s := string(p)
	var data []byte
	r := payload{p: p}
	at := func() int { return len(p) - len(r.p) }
	sub := func(min, max int, what string) string {
		f := r.field(min, max, what)
		if f == nil {
			return ""
		}
		end := at()
		return s[end-len(f) : end]
	}
	u.Seq = r.varint("sequence")
	groups := r.count(MaxUpdateMessages, 16+1+minMessageLen, "groups")
	if r.err == nil && groups == 0 {
		r.fail(fmt.Errorf("%w: no messages", ErrMalformed))
	}
	u.Messages = u.Messages[:0]
	for g := 0; g < groups && r.err == nil; g++ {
		uaid := r.uaid()
		n := r.count(MaxUpdateMessages-len(u.Messages), minMessageLen, "messages")
		if r.err == nil && n == 0 {
			r.fail(fmt.Errorf("%w: empty group for %s", ErrMalformed, uaid))
		}
		if g > 0 && r.err == nil && uaid == u.Messages[len(u.Messages)-1].UAID {
			r.fail(fmt.Errorf("%w: two groups in a row for %s", ErrMalformed, uaid))
		}
		for range n {
			if r.err != nil {
				break
			}
			m := push.Message{UAID: uaid, Channel: r.channel()}
			m.Origin = push.Origin{Kind: push.OriginParent, ID: sub(1, push.MaxOriginID, "origin id")}
			ttl := r.varint("ttl")
			if r.err == nil && ttl > MaxTTLSeconds {
				r.fail(fmt.Errorf("%w: ttl of %d s", ErrTooLarge, ttl))
			}
			m.TTL = time.Duration(ttl) * time.Second
			if m.Urgency = push.Urgency(r.u8("urgency")); m.Urgency > push.UrgencyHigh {
				r.fail(fmt.Errorf("%w: urgency %d", ErrMalformed, m.Urgency))
			}
			m.Version = r.varint("version")
			m.Topic = sub(0, MaxTopicLen, "topic")
			m.Encoding = sub(0, MaxContentHeaderLen, "encoding")
			m.Encryption = sub(0, MaxContentHeaderLen, "encryption")
			m.CryptoKey = sub(0, MaxContentHeaderLen, "crypto-key")
			if d := r.field(0, MaxData, "data"); len(d) > 0 {
				if data == nil {
					data = make([]byte, 0, len(r.p)+len(d))
				}
				start := len(data)
				data = append(data, d...)
				m.Data = data[start:len(data):len(data)]
			}
			u.Messages = append(u.Messages, m)
		}
	}
	if err := r.end(); err != nil {
		u.Messages = u.Messages[:0]
		return err
	}
	return nil
}

// DecodeUpdate decodes an UPDATE payload into u, reusing u.Messages'
// array (the messages of the previous frame are overwritten).
func DecodeUpdate(u *Update, p []byte) error {
	if len(p) > MaxUpdatePayload {
		return fmt.Errorf("%w: UPDATE payload of %d bytes", ErrTooLarge, len(p))
	}
	if err := u.decodePayload(p); err != nil {
		return fmt.Errorf("UPDATE: %w", err)
	}
	return nil
}

// DefaultUpdatePayload is UpdateBuilder's frame size when MaxPayload is 0.
const DefaultUpdatePayload = MinUpdatePayload

// UpdateBuilder packs a batch of messages into UPDATE frames. It reuses
// its buffers: one builder per sender, not shared between goroutines.
type UpdateBuilder struct {
	// MaxPayload bounds each frame's payload: from MinUpdatePayload (which
	// holds any valid message) to the child's MaxUpdate; 0 means
	// DefaultUpdatePayload.
	MaxPayload int

	order  []int32
	sorted []push.Message
	frame  []byte
}

// Build groups msgs by UAID, keeping each UAID's messages in their order,
// packs them into as few frames as fit MaxPayload and MaxUpdateMessages,
// numbers the frames from seq, and calls emit with each frame's sequence,
// its bytes (header included) and its messages in frame order. frame and
// msgs are valid only during the call. Build returns the next unused
// sequence. A message the format cannot carry fails the whole batch before
// anything is emitted.
func (ub *UpdateBuilder) Build(seq uint64, msgs []push.Message, emit func(seq uint64, frame []byte, msgs []push.Message) error) (uint64, error) {
	maxPayload := ub.MaxPayload
	if maxPayload == 0 {
		maxPayload = DefaultUpdatePayload
	}
	if maxPayload < MinUpdatePayload || maxPayload > MaxUpdatePayload {
		return seq, fmt.Errorf("%w: max payload %d, %d to %d", ErrTooLarge, maxPayload, MinUpdatePayload, MaxUpdatePayload)
	}
	// Sort indexes, not messages (moving 200-byte structs with pointers
	// cost a quarter of the time), by UAID then position, so each UAID
	// keeps its order; then copy the messages once in that order.
	ub.order = ub.order[:0]
	for i := range msgs {
		ub.order = append(ub.order, int32(i))
	}
	slices.SortFunc(ub.order, func(a, b int32) int {
		if c := bytes.Compare(msgs[a].UAID[:], msgs[b].UAID[:]); c != 0 {
			return c
		}
		return int(a - b)
	})
	ub.sorted = ub.sorted[:0]
	for _, i := range ub.order {
		ub.sorted = append(ub.sorted, msgs[i])
	}
	for i := range ub.sorted {
		// Check each message alone first, so that a bad one fails the
		// batch before any frame is out.
		if err := checkMessage(&ub.sorted[i]); err != nil {
			clear(ub.sorted)
			return seq, err
		}
	}
	defer clear(ub.sorted) // drop references to the caller's data
	rest := ub.sorted
	for len(rest) > 0 {
		if seq > MaxVarint {
			return seq, fmt.Errorf("%w: sequence %d above 2^62-1", ErrTooLarge, seq)
		}
		// size is the exact payload so far: the sequence, the group
		// count, and per group a UAID, its message count and messages.
		n, groups, inGroup, size := 0, 0, 0, VarintLen(seq)+1
		for n < len(rest) && n < MaxUpdateMessages {
			m := &rest[n]
			grow := messageLen(m)
			newGroup := n == 0 || m.UAID != rest[n-1].UAID
			if newGroup {
				grow += 16 + 1 + VarintLen(uint64(groups+1)) - VarintLen(uint64(max(groups, 1)))
			} else {
				grow += VarintLen(uint64(inGroup+1)) - VarintLen(uint64(inGroup))
			}
			if size+grow > maxPayload {
				break
			}
			if newGroup {
				groups, inGroup = groups+1, 0
			}
			inGroup++
			size += grow
			n++
		}
		if n == 0 {
			return seq, fmt.Errorf("%w: a %d-byte message in %d-byte frames", ErrTooLarge, messageLen(&rest[0]), maxPayload)
		}
		u := Update{Seq: seq, Messages: rest[:n:n]}
		var err error
		if ub.frame, err = Append(ub.frame[:0], u); err != nil {
			return seq, err
		}
		if err := emit(seq, ub.frame, u.Messages); err != nil {
			return seq, err
		}
		seq++
		rest = rest[n:]
	}
	return seq, nil
}
