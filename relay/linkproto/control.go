package linkproto

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	"github.com/pushrelay/pushrelay/relay/push"
)

// Hello is the child's first frame on the control stream.
type Hello struct {
	// Versions are the protocol versions the child speaks (1 to
	// MaxVersions of them, each at least 1), in its order of preference.
	Versions []uint64
	// Name is the child's name (1 to MaxNameLen bytes), for logs and for
	// keying the parent's per-child queue.
	Name string
	// Resume is the last sequence the child made durable (0: none yet).
	Resume uint64
	// MaxUpdate is the largest UPDATE payload the child accepts, from
	// MinUpdatePayload to MaxUpdatePayload.
	MaxUpdate uint64
	// Digest summarises the (UAID, channel) pairs the child serves.
	Digest Digest
	// Auth is empty, or in token mode HMAC-SHA256(token, the connection's
	// TLS exporter "EXPORTER-pushrelay-link-token"), up to MaxAuthLen bytes.
	Auth []byte
}

func (Hello) Type() FrameType { return TypeHello }

func (h Hello) appendPayload(b []byte) ([]byte, error) {
	if len(h.Versions) == 0 || len(h.Versions) > MaxVersions {
		return b, fmt.Errorf("%w: %d versions, 1 to %d", ErrTooLarge, len(h.Versions), MaxVersions)
	}
	b = AppendVarint(b, uint64(len(h.Versions)))
	for _, v := range h.Versions {
		if v == 0 || v > MaxVarint {
			return b, fmt.Errorf("%w: version %d", ErrMalformed, v)
		}
		b = AppendVarint(b, v)
	}
	if h.Name == "" {
		return b, fmt.Errorf("%w: empty name", ErrMalformed)
	}
	b, err := appendString(b, h.Name, MaxNameLen, "name")
	if err != nil {
		return b, err
	}
	if b, err = appendVarintChecked(b, h.Resume, "resume"); err != nil {
		return b, err
	}
	if h.MaxUpdate < MinUpdatePayload || h.MaxUpdate > MaxUpdatePayload {
		return b, fmt.Errorf("%w: max update %d, %d to %d", ErrTooLarge, h.MaxUpdate, MinUpdatePayload, MaxUpdatePayload)
	}
	b = AppendVarint(b, h.MaxUpdate)
	b, _ = h.Digest.AppendBinary(b)
	return appendBytes(b, h.Auth, MaxAuthLen, "auth")
}

func (h *Hello) decodePayload(p []byte) error {
	r := payload{p: p}
	n := r.count(MaxVersions, 1, "versions")
	if r.err == nil && n == 0 {
		r.fail(fmt.Errorf("%w: no versions", ErrMalformed))
	}
	h.Versions = make([]uint64, n)
	for i := range h.Versions {
		if h.Versions[i] = r.varint("version"); r.err == nil && h.Versions[i] == 0 {
			r.fail(fmt.Errorf("%w: version 0", ErrMalformed))
		}
	}
	h.Name = r.str(1, MaxNameLen, "name")
	h.Resume = r.varint("resume")
	if h.MaxUpdate = r.varint("max update"); r.err == nil && (h.MaxUpdate < MinUpdatePayload || h.MaxUpdate > MaxUpdatePayload) {
		r.fail(fmt.Errorf("%w: max update %d, %d to %d", ErrMalformed, h.MaxUpdate, MinUpdatePayload, MaxUpdatePayload))
	}
	h.Digest = r.digest()
	if a := r.field(0, MaxAuthLen, "auth"); len(a) > 0 {
		h.Auth = bytes.Clone(a)
	}
	return r.end()
}

// Welcome accepts a child: the parent's answer to HELLO.
type Welcome struct {
	// Version is the protocol version chosen from the HELLO's list.
	Version uint64
	// Name is the parent's name (1 to MaxNameLen bytes).
	Name string
	// Next is the first sequence the parent will send: the HELLO's Resume
	// plus 1, or more when the messages between expired meanwhile.
	Next uint64
	// DataStreams is how many data streams the parent opens (1 to
	// MaxDataStreams).
	DataStreams uint64
	// Resync is set when Digest differs from the HELLO's: RESYNC frames
	// with the parent's view follow on the control stream.
	Resync bool
	// Digest summarises the pairs the parent holds for this child.
	Digest Digest
}

func (Welcome) Type() FrameType { return TypeWelcome }

func (w Welcome) appendPayload(b []byte) ([]byte, error) {
	if w.Version == 0 || w.Version > MaxVarint {
		return b, fmt.Errorf("%w: version %d", ErrMalformed, w.Version)
	}
	b = AppendVarint(b, w.Version)
	if w.Name == "" {
		return b, fmt.Errorf("%w: empty name", ErrMalformed)
	}
	b, err := appendString(b, w.Name, MaxNameLen, "name")
	if err != nil {
		return b, err
	}
	if b, err = appendVarintChecked(b, w.Next, "next"); err != nil {
		return b, err
	}
	if w.DataStreams == 0 || w.DataStreams > MaxDataStreams {
		return b, fmt.Errorf("%w: %d data streams, 1 to %d", ErrTooLarge, w.DataStreams, MaxDataStreams)
	}
	b = AppendVarint(b, w.DataStreams)
	var flags uint64
	if w.Resync {
		flags |= 1
	}
	b = AppendVarint(b, flags)
	b, _ = w.Digest.AppendBinary(b)
	return b, nil
}

func (w *Welcome) decodePayload(p []byte) error {
	r := payload{p: p}
	if w.Version = r.varint("version"); r.err == nil && w.Version == 0 {
		r.fail(fmt.Errorf("%w: version 0", ErrMalformed))
	}
	w.Name = r.str(1, MaxNameLen, "name")
	w.Next = r.varint("next")
	if w.DataStreams = r.varint("data streams"); r.err == nil && (w.DataStreams == 0 || w.DataStreams > MaxDataStreams) {
		r.fail(fmt.Errorf("%w: %d data streams, 1 to %d", ErrMalformed, w.DataStreams, MaxDataStreams))
	}
	flags := r.varint("flags")
	if r.err == nil && flags&^1 != 0 {
		r.fail(fmt.Errorf("%w: unknown flags %#x", ErrMalformed, flags))
	}
	w.Resync = flags&1 != 0
	w.Digest = r.digest()
	return r.end()
}

// Refuse turns a child away after its HELLO; the parent then closes the
// connection with the same code.
type Refuse struct {
	Code   Code
	Reason string // up to MaxReasonLen bytes
}

func (Refuse) Type() FrameType { return TypeRefuse }

func (f Refuse) appendPayload(b []byte) ([]byte, error) {
	b, err := appendVarintChecked(b, uint64(f.Code), "code")
	if err != nil {
		return b, err
	}
	return appendString(b, f.Reason, MaxReasonLen, "reason")
}

func (f *Refuse) decodePayload(p []byte) error {
	r := payload{p: p}
	f.Code = Code(r.varint("code"))
	f.Reason = r.str(0, MaxReasonLen, "reason")
	return r.end()
}

// Register asks the parent to register a channel and mint its endpoint at
// the top of the chain.
type Register struct {
	// ID is the child's request id; REGISTERED answers with the same.
	ID      uint64
	UAID    push.UAID
	Channel push.ChannelID
	// SimplePush: the device did not say use_webpush (see
	// relay.Registration).
	SimplePush bool
	// Key is the raw VAPID public key, or empty; up to MaxKeyLen bytes.
	Key []byte
}

func (Register) Type() FrameType { return TypeRegister }

func (f Register) appendPayload(b []byte) ([]byte, error) {
	b, err := appendVarintChecked(b, f.ID, "request id")
	if err != nil {
		return b, err
	}
	b = append(b, f.UAID[:]...)
	b = append(b, f.Channel[:]...)
	var flags uint64
	if f.SimplePush {
		flags |= 1
	}
	b = AppendVarint(b, flags)
	return appendBytes(b, f.Key, MaxKeyLen, "key")
}

func (f *Register) decodePayload(p []byte) error {
	r := payload{p: p}
	f.ID = r.varint("request id")
	f.UAID = r.uaid()
	f.Channel = r.channel()
	flags := r.varint("flags")
	if r.err == nil && flags&^1 != 0 {
		r.fail(fmt.Errorf("%w: unknown flags %#x", ErrMalformed, flags))
	}
	f.SimplePush = flags&1 != 0
	if k := r.field(0, MaxKeyLen, "key"); len(k) > 0 {
		f.Key = bytes.Clone(k)
	}
	return r.end()
}

// Status is a REGISTERED or UNREGISTERED answer, numbered like the HTTP
// statuses autopush answers a register with.
type Status uint64

// Statuses. Any value from 100 to 599 decodes; these are the ones the
// relay sends.
const (
	StatusOK Status = 200
	// StatusBadRequest: the parent (or one above it) refused the key or
	// the ids.
	StatusBadRequest Status = 400
	// StatusConflict: the channel is registered with another key.
	StatusConflict Status = 409
	// StatusTooMany: the device has too many channels.
	StatusTooMany Status = 413
	// StatusError: the parent failed; the child may retry.
	StatusError Status = 500
	// StatusUnavailable: the top of the chain cannot be reached now.
	StatusUnavailable Status = 503
)

func appendStatus(b []byte, s Status) ([]byte, error) {
	if s < 100 || s > 599 {
		return b, fmt.Errorf("%w: status %d", ErrMalformed, s)
	}
	return AppendVarint(b, uint64(s)), nil
}

func (r *payload) status() Status {
	s := Status(r.varint("status"))
	if r.err == nil && (s < 100 || s > 599) {
		r.fail(fmt.Errorf("%w: status %d", ErrMalformed, s))
	}
	return s
}

// Registered answers a REGISTER.
type Registered struct {
	ID     uint64
	Status Status
	// Endpoint is the endpoint minted at the top of the chain (up to
	// MaxEndpointLen bytes); empty unless Status is StatusOK.
	Endpoint string
}

func (Registered) Type() FrameType { return TypeRegistered }

func (f Registered) appendPayload(b []byte) ([]byte, error) {
	b, err := appendVarintChecked(b, f.ID, "request id")
	if err != nil {
		return b, err
	}
	if b, err = appendStatus(b, f.Status); err != nil {
		return b, err
	}
	return appendString(b, f.Endpoint, MaxEndpointLen, "endpoint")
}

func (f *Registered) decodePayload(p []byte) error {
	r := payload{p: p}
	f.ID = r.varint("request id")
	f.Status = r.status()
	f.Endpoint = r.str(0, MaxEndpointLen, "endpoint")
	return r.end()
}

// Unregister tells the parent a device dropped a channel.
type Unregister struct {
	ID      uint64
	UAID    push.UAID
	Channel push.ChannelID
}

func (Unregister) Type() FrameType { return TypeUnregister }

func (f Unregister) appendPayload(b []byte) ([]byte, error) {
	b, err := appendVarintChecked(b, f.ID, "request id")
	if err != nil {
		return b, err
	}
	b = append(b, f.UAID[:]...)
	return append(b, f.Channel[:]...), nil
}

func (f *Unregister) decodePayload(p []byte) error {
	r := payload{p: p}
	f.ID = r.varint("request id")
	f.UAID = r.uaid()
	f.Channel = r.channel()
	return r.end()
}

// Unregistered answers an UNREGISTER.
type Unregistered struct {
	ID     uint64
	Status Status
}

func (Unregistered) Type() FrameType { return TypeUnregistered }

func (f Unregistered) appendPayload(b []byte) ([]byte, error) {
	b, err := appendVarintChecked(b, f.ID, "request id")
	if err != nil {
		return b, err
	}
	return appendStatus(b, f.Status)
}

func (f *Unregistered) decodePayload(p []byte) error {
	r := payload{p: p}
	f.ID = r.varint("request id")
	f.Status = r.status()
	return r.end()
}

// Forget tells the child that the parent forgot a device it serves: its
// upstream reset the UAID (autopush forgets a UAID after 60 days without a
// hello, or when its backlog passed msg_limit), so the device's channels
// and endpoints are gone up the chain. The child forgets the device too
// (its session is closed, its next hello gets a new UAID) and answers
// FORGOTTEN; the parent keeps the request durably until then.
type Forget struct {
	ID   uint64
	UAID push.UAID
}

func (Forget) Type() FrameType { return TypeForget }

func (f Forget) appendPayload(b []byte) ([]byte, error) {
	b, err := appendVarintChecked(b, f.ID, "request id")
	if err != nil {
		return b, err
	}
	return append(b, f.UAID[:]...), nil
}

func (f *Forget) decodePayload(p []byte) error {
	r := payload{p: p}
	f.ID = r.varint("request id")
	f.UAID = r.uaid()
	return r.end()
}

// Forgotten answers a FORGET.
type Forgotten struct {
	ID     uint64
	Status Status
}

func (Forgotten) Type() FrameType { return TypeForgotten }

func (f Forgotten) appendPayload(b []byte) ([]byte, error) {
	b, err := appendVarintChecked(b, f.ID, "request id")
	if err != nil {
		return b, err
	}
	return appendStatus(b, f.Status)
}

func (f *Forgotten) decodePayload(p []byte) error {
	r := payload{p: p}
	f.ID = r.varint("request id")
	f.Status = r.status()
	return r.end()
}

// Credit raises the limits on what the parent may send: the totals of
// UPDATE payload bytes and of messages since the connection began. Like
// QUIC's MAX_DATA they are absolute and never decrease, so a CREDIT
// repeated or reordered does no harm. The child starts with none: it sends
// CREDIT after WELCOME.
type Credit struct {
	Bytes    uint64
	Messages uint64
}

func (Credit) Type() FrameType { return TypeCredit }

func (f Credit) appendPayload(b []byte) ([]byte, error) {
	b, err := appendVarintChecked(b, f.Bytes, "credit bytes")
	if err != nil {
		return b, err
	}
	return appendVarintChecked(b, f.Messages, "credit messages")
}

func (f *Credit) decodePayload(p []byte) error {
	r := payload{p: p}
	f.Bytes = r.varint("credit bytes")
	f.Messages = r.varint("credit messages")
	return r.end()
}

// Ack tells the parent that every sequence up to Seq is durable at the
// child (ingested into its store): the parent may delete them.
type Ack struct {
	Seq uint64
}

func (Ack) Type() FrameType { return TypeAck }

func (f Ack) appendPayload(b []byte) ([]byte, error) { return appendVarintChecked(b, f.Seq, "ack") }

func (f *Ack) decodePayload(p []byte) error {
	r := payload{p: p}
	f.Seq = r.varint("ack")
	return r.end()
}

// Broadcast carries broadcast versions down the chain: id -> version, each
// 1 to MaxBroadcastLen bytes, at most MaxBroadcasts entries. The first
// after WELCOME is the whole map; later ones carry what changed. On the
// wire the entries are sorted by id, so each map has one encoding.
type Broadcast struct {
	Versions map[string]string
}

func (Broadcast) Type() FrameType { return TypeBroadcast }

func (f Broadcast) appendPayload(b []byte) ([]byte, error) {
	if len(f.Versions) > MaxBroadcasts {
		return b, fmt.Errorf("%w: %d broadcasts, limit %d", ErrTooLarge, len(f.Versions), MaxBroadcasts)
	}
	ids := make([]string, 0, len(f.Versions))
	for id := range f.Versions {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	b = AppendVarint(b, uint64(len(ids)))
	for _, id := range ids {
		v := f.Versions[id]
		if id == "" || v == "" {
			return b, fmt.Errorf("%w: empty broadcast id or version", ErrMalformed)
		}
		var err error
		if b, err = appendString(b, id, MaxBroadcastLen, "broadcast id"); err != nil {
			return b, err
		}
		if b, err = appendString(b, v, MaxBroadcastLen, "broadcast version"); err != nil {
			return b, err
		}
	}
	return b, nil
}

func (f *Broadcast) decodePayload(p []byte) error {
	r := payload{p: p}
	n := r.count(MaxBroadcasts, 4, "broadcasts")
	f.Versions = make(map[string]string, n)
	prev := ""
	for i := 0; i < n && r.err == nil; i++ {
		id := r.str(1, MaxBroadcastLen, "broadcast id")
		v := r.str(1, MaxBroadcastLen, "broadcast version")
		if r.err == nil && i > 0 && strings.Compare(id, prev) <= 0 {
			r.fail(fmt.Errorf("%w: broadcast ids out of order", ErrMalformed))
		}
		f.Versions[id] = v
		prev = id
	}
	return r.end()
}

// GoAway closes the link gracefully: either side sends it, then finishes
// what it is doing and closes with Code. From the parent, LastSeq is the
// last sequence it sent (the child acks up to it, then closes); from the
// child, 0.
type GoAway struct {
	Code    Code
	LastSeq uint64
	Reason  string // up to MaxReasonLen bytes
}

func (GoAway) Type() FrameType { return TypeGoAway }

func (f GoAway) appendPayload(b []byte) ([]byte, error) {
	b, err := appendVarintChecked(b, uint64(f.Code), "code")
	if err != nil {
		return b, err
	}
	if b, err = appendVarintChecked(b, f.LastSeq, "last sequence"); err != nil {
		return b, err
	}
	return appendString(b, f.Reason, MaxReasonLen, "reason")
}

func (f *GoAway) decodePayload(p []byte) error {
	r := payload{p: p}
	f.Code = Code(r.varint("code"))
	f.LastSeq = r.varint("last sequence")
	f.Reason = r.str(0, MaxReasonLen, "reason")
	return r.end()
}

// ChooseVersion is the parent's choice from a HELLO's versions: the first
// one (the child's preference) that it speaks too. ok is false when there
// is none: REFUSE with CodeVersion.
func ChooseVersion(offered, supported []uint64) (v uint64, ok bool) {
	for _, o := range offered {
		if slices.Contains(supported, o) {
			return o, true
		}
	}
	return 0, false
}
