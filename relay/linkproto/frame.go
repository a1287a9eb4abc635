package linkproto

import (
	"errors"
	"fmt"
)

// Errors of the decoders, tested with errors.Is. ErrShort is the only one a
// stream reader recovers from (by reading more); the others end the
// connection with CodeProtocol (CodeTooLarge for ErrTooLarge).
var (
	// ErrShort: the bytes end before the frame (or varint) does; read more.
	ErrShort = errors.New("short buffer")
	// ErrMalformed: the bytes are no valid frame: a non-minimal varint, a
	// field running past the payload, trailing bytes, a value out of its
	// range, or an order the format forbids.
	ErrMalformed = errors.New("malformed frame")
	// ErrTooLarge: a length or count above its documented limit, or an
	// encoder given a value that exceeds one.
	ErrTooLarge = errors.New("over limit")
	// ErrUnknownType: a frame type this version does not define, or one
	// that does not belong on the stream it came on.
	ErrUnknownType = errors.New("unknown frame type")
)

// Version is the link protocol version this package speaks. HELLO lists
// the versions a child speaks; WELCOME names the one the parent chose.
const Version = 1

// FrameType is a frame's type varint.
type FrameType uint64

// Frame types. They are on the wire; never renumber them.
const (
	TypeHello        FrameType = 0x01
	TypeWelcome      FrameType = 0x02
	TypeRefuse       FrameType = 0x03
	TypeRegister     FrameType = 0x04
	TypeRegistered   FrameType = 0x05
	TypeUnregister   FrameType = 0x06
	TypeUnregistered FrameType = 0x07
	TypeCredit       FrameType = 0x08
	TypeAck          FrameType = 0x09
	TypeBroadcast    FrameType = 0x0a
	TypeResync       FrameType = 0x0b
	TypeGoAway       FrameType = 0x0c
	TypeForget       FrameType = 0x0d
	TypeForgotten    FrameType = 0x0e
	TypeUpdate       FrameType = 0x10
)

// Stream says which kind of stream a frame travels on.
type Stream uint8

// Streams: the one bidirectional control stream the child opens, and the
// unidirectional data streams the parent opens.
const (
	StreamControl Stream = 1
	StreamData    Stream = 2
)

// Side names an end of the link.
type Side uint8

// Sides.
const (
	Child  Side = 1
	Parent Side = 2
)

type typeInfo struct {
	name       string
	stream     Stream
	sender     Side
	maxPayload int
}

var types = map[FrameType]typeInfo{
	TypeHello:        {"HELLO", StreamControl, Child, MaxHelloPayload},
	TypeWelcome:      {"WELCOME", StreamControl, Parent, 256},
	TypeRefuse:       {"REFUSE", StreamControl, Parent, 16 + MaxReasonLen},
	TypeRegister:     {"REGISTER", StreamControl, Child, 64 + MaxKeyLen},
	TypeRegistered:   {"REGISTERED", StreamControl, Parent, 32 + MaxEndpointLen},
	TypeUnregister:   {"UNREGISTER", StreamControl, Child, 64},
	TypeUnregistered: {"UNREGISTERED", StreamControl, Parent, 32},
	TypeCredit:       {"CREDIT", StreamControl, Child, 16},
	TypeAck:          {"ACK", StreamControl, Child, 8},
	TypeBroadcast:    {"BROADCAST", StreamControl, Parent, MaxBroadcastPayload},
	TypeResync:       {"RESYNC", StreamControl, Parent, MaxResyncPayload},
	TypeGoAway:       {"GOAWAY", StreamControl, 0, 24 + MaxReasonLen},
	TypeForget:       {"FORGET", StreamControl, Parent, 32},
	TypeForgotten:    {"FORGOTTEN", StreamControl, Child, 32},
	TypeUpdate:       {"UPDATE", StreamData, Parent, MaxUpdatePayload},
}

// String is the frame's name, "HELLO", or "type(0x..)" for an unknown one.
func (t FrameType) String() string {
	if i, ok := types[t]; ok {
		return i.name
	}
	return fmt.Sprintf("type(0x%x)", uint64(t))
}

// Known reports whether this version defines t.
func (t FrameType) Known() bool { _, ok := types[t]; return ok }

// Stream is the kind of stream t travels on (0 if unknown).
func (t FrameType) Stream() Stream { return types[t].stream }

// Sender is the side that sends t: Child, Parent, or 0 for GOAWAY, which
// either side sends.
func (t FrameType) Sender() Side { return types[t].sender }

// MaxPayload is the hard limit on t's payload length (0 if unknown).
func (t FrameType) MaxPayload() int { return types[t].maxPayload }

// Limits of the format. Every length field is checked against one of them
// before anything is allocated.
const (
	// MaxHeaderLen bounds a frame header: a 1-byte type and a 4-byte
	// length (every payload limit is below 2^30).
	MaxHeaderLen = 5
	// MaxHelloPayload bounds a HELLO payload.
	MaxHelloPayload = 512
	// MaxVersions bounds the versions a HELLO lists.
	MaxVersions = 8
	// MaxNameLen bounds a relay's name in HELLO and WELCOME.
	MaxNameLen = 64
	// MaxAuthLen bounds HELLO's auth field (an HMAC-SHA256 is 32 bytes).
	MaxAuthLen = 64
	// MaxReasonLen bounds the text of REFUSE and GOAWAY.
	MaxReasonLen = 256
	// MaxKeyLen bounds a REGISTER's raw VAPID public key (P-256: 65 bytes).
	MaxKeyLen = 128
	// MaxEndpointLen bounds a REGISTERED endpoint (the store's limit).
	MaxEndpointLen = 1024
	// MaxDataStreams bounds the data streams a parent opens.
	MaxDataStreams = 16
	// MaxBroadcasts bounds the entries of one BROADCAST, and
	// MaxBroadcastLen an id or a version (the broadcast package's limits).
	MaxBroadcasts   = 1024
	MaxBroadcastLen = 128
	// MaxBroadcastPayload bounds a BROADCAST payload: MaxBroadcasts
	// entries of two MaxBroadcastLen strings with 2-byte lengths.
	MaxBroadcastPayload = 2 + MaxBroadcasts*2*(2+MaxBroadcastLen)
)

// Code is an error or refusal code: in REFUSE and GOAWAY, and as the QUIC
// application error code of CONNECTION_CLOSE. Codes are on the wire; never
// renumber them.
type Code uint64

// Codes.
const (
	// CodeNoError: a graceful close.
	CodeNoError Code = 0x0
	// CodeProtocol: the peer broke the protocol (a malformed or unknown
	// frame, a frame on the wrong stream or from the wrong side).
	CodeProtocol Code = 0x1
	// CodeVersion: no protocol version in common.
	CodeVersion Code = 0x2
	// CodeUnknownChild: the child is not allowed here (no trusted
	// certificate, an unpinned key, a wrong token).
	CodeUnknownChild Code = 0x3
	// CodeReplaced: a newer connection of the same child took its place.
	CodeReplaced Code = 0x4
	// CodeFlowControl: the parent sent beyond the child's credit.
	CodeFlowControl Code = 0x5
	// CodeTooLarge: a frame or field over its limit.
	CodeTooLarge Code = 0x6
	// CodeBusy: the parent takes no more children now; retry later.
	CodeBusy Code = 0x7
	// CodeInternal: the sender failed (its store, say); retry later.
	CodeInternal Code = 0x8
	// CodeShutdown: the sender is shutting down; reconnect later.
	CodeShutdown Code = 0x9
)

var codeText = [...]string{
	CodeNoError:      "no error",
	CodeProtocol:     "protocol error",
	CodeVersion:      "no common protocol version",
	CodeUnknownChild: "unknown child",
	CodeReplaced:     "replaced by a newer connection",
	CodeFlowControl:  "sent beyond credit",
	CodeTooLarge:     "frame too large",
	CodeBusy:         "busy",
	CodeInternal:     "internal error",
	CodeShutdown:     "shutting down",
}

// String is c's text, "unknown child", or "code(0x..)" for an unknown one.
func (c Code) String() string {
	if c < Code(len(codeText)) {
		return codeText[c]
	}
	return fmt.Sprintf("code(0x%x)", uint64(c))
}

// CodeOf maps a decode error to the code to close the connection with.
func CodeOf(err error) Code {
	switch {
	case err == nil:
		return CodeNoError
	case errors.Is(err, ErrTooLarge):
		return CodeTooLarge
	}
	return CodeProtocol
}

// Frame is one decoded frame: *Hello, *Update and so on.
type Frame interface {
	Type() FrameType
	appendPayload(b []byte) ([]byte, error)
}

// RawFrame is a frame whose header is parsed and whose payload is not.
// Payload aliases the bytes it was parsed from.
type RawFrame struct {
	Type    FrameType
	Payload []byte
}

// ParseFrame parses the frame at the start of b: its type, its length and
// that the payload is all there. It returns the frame and the bytes it
// takes (header and payload). ErrShort means b holds only the start of a
// frame; ErrUnknownType and ErrTooLarge are found from the header alone,
// before the payload arrives.
func ParseFrame(b []byte) (RawFrame, int, error) {
	ft, l, n, err := parseHeader(b)
	if err != nil {
		return RawFrame{}, 0, err
	}
	if uint64(len(b)-n) < l {
		return RawFrame{}, 0, ErrShort
	}
	end := n + int(l)
	return RawFrame{Type: ft, Payload: b[n:end:end]}, end, nil
}

// parseHeader parses a frame header: the type, the payload length
// (checked against the type's limit) and the header's length.
func parseHeader(b []byte) (FrameType, uint64, int, error) {
	t, n, err := ReadVarint(b)
	if err != nil {
		return 0, 0, 0, err
	}
	ft := FrameType(t)
	info, ok := types[ft]
	if !ok {
		return 0, 0, 0, fmt.Errorf("%w: 0x%x", ErrUnknownType, t)
	}
	l, m, err := ReadVarint(b[n:])
	if err != nil {
		return 0, 0, 0, err
	}
	if l > uint64(info.maxPayload) {
		return 0, 0, 0, fmt.Errorf("%w: %s payload of %d bytes, limit %d", ErrTooLarge, ft, l, info.maxPayload)
	}
	return ft, l, n + m, nil
}

// Decode decodes the frame's payload into its typed value.
func (f RawFrame) Decode() (Frame, error) {
	var fr interface {
		Frame
		decodePayload([]byte) error
	}
	switch f.Type {
	case TypeHello:
		fr = new(Hello)
	case TypeWelcome:
		fr = new(Welcome)
	case TypeRefuse:
		fr = new(Refuse)
	case TypeRegister:
		fr = new(Register)
	case TypeRegistered:
		fr = new(Registered)
	case TypeUnregister:
		fr = new(Unregister)
	case TypeUnregistered:
		fr = new(Unregistered)
	case TypeCredit:
		fr = new(Credit)
	case TypeAck:
		fr = new(Ack)
	case TypeBroadcast:
		fr = new(Broadcast)
	case TypeResync:
		fr = new(Resync)
	case TypeGoAway:
		fr = new(GoAway)
	case TypeForget:
		fr = new(Forget)
	case TypeForgotten:
		fr = new(Forgotten)
	case TypeUpdate:
		fr = new(Update)
	default:
		return nil, fmt.Errorf("%w: 0x%x", ErrUnknownType, uint64(f.Type))
	}
	if len(f.Payload) > f.Type.MaxPayload() {
		return nil, fmt.Errorf("%w: %s payload of %d bytes", ErrTooLarge, f.Type, len(f.Payload))
	}
	if err := fr.decodePayload(f.Payload); err != nil {
		return nil, fmt.Errorf("%s: %w", f.Type, err)
	}
	return fr, nil
}

// Decode decodes the frame at the start of b and returns it (a *Hello,
// *Update, ...) and the bytes it takes. The errors are ParseFrame's and
// the payload's (ErrMalformed, ErrTooLarge). The frame does not alias b.
func Decode(b []byte) (Frame, int, error) {
	raw, n, err := ParseFrame(b)
	if err != nil {
		return nil, 0, err
	}
	f, err := raw.Decode()
	if err != nil {
		return nil, 0, err
	}
	return f, n, nil
}

// Append appends f as one frame (type, length, payload) to b. It returns
// b unchanged and an ErrTooLarge or ErrMalformed error for a value the
// format cannot carry.
func Append(b []byte, f Frame) ([]byte, error) {
	t := f.Type()
	start := len(b)
	b = AppendVarint(b, uint64(t))
	// Reserve a 4-byte length, then move the payload down to the minimal
	// length encoding once its size is known.
	lenAt := len(b)
	b = append(b, 0, 0, 0, 0)
	b, err := f.appendPayload(b)
	if err != nil {
		return b[:start], err
	}
	n := len(b) - lenAt - 4
	if n > t.MaxPayload() {
		return b[:start], fmt.Errorf("%w: %s payload of %d bytes, limit %d", ErrTooLarge, t, n, t.MaxPayload())
	}
	hdr := AppendVarint(b[lenAt:lenAt], uint64(n))
	if len(hdr) < 4 {
		copy(b[lenAt+len(hdr):], b[lenAt+4:])
		b = b[:len(b)-(4-len(hdr))]
	}
	return b, nil
}

// Reader cuts frames out of the bytes of one stream as they arrive. It
// does no I/O: the transport feeds what it reads and takes frames until
// Next says ErrShort. It holds at most one partial frame plus what was fed
// after it; a header announcing a payload over its limit is refused before
// its payload is buffered.
type Reader struct {
	// Stream is the kind of stream read; a frame of the other kind is
	// ErrUnknownType. Zero accepts both.
	Stream Stream
	// MaxUpdate, if set, lowers the limit of UPDATE payloads (a child
	// sets the limit it announced in HELLO).
	MaxUpdate int

	buf []byte
	off int
}

// Feed appends p to the bytes waiting to be cut into frames; p is copied.
func (r *Reader) Feed(p []byte) {
	if r.off > 0 && r.off >= len(r.buf)/2 {
		n := copy(r.buf, r.buf[r.off:])
		r.buf = r.buf[:n]
		r.off = 0
	}
	r.buf = append(r.buf, p...)
}

// Buffered is the number of bytes fed and not yet returned in a frame.
func (r *Reader) Buffered() int { return len(r.buf) - r.off }

// Next returns the next complete frame. Its payload aliases the Reader's
// buffer and is valid until the next Feed. ErrShort means feed more; any
// other error is fatal for the stream.
func (r *Reader) Next() (RawFrame, error) {
	b := r.buf[r.off:]
	ft, l, n, err := parseHeader(b)
	if err != nil {
		return RawFrame{}, err
	}
	if r.Stream != 0 && ft.Stream() != r.Stream {
		return RawFrame{}, fmt.Errorf("%w: %s on the wrong stream", ErrUnknownType, ft)
	}
	if ft == TypeUpdate && r.MaxUpdate > 0 && l > uint64(r.MaxUpdate) {
		return RawFrame{}, fmt.Errorf("%w: UPDATE payload of %d bytes, limit %d", ErrTooLarge, l, r.MaxUpdate)
	}
	if uint64(len(b)-n) < l {
		return RawFrame{}, ErrShort
	}
	end := n + int(l)
	f := RawFrame{Type: ft, Payload: b[n:end:end]}
	r.off += end
	if r.off == len(r.buf) {
		r.buf, r.off = r.buf[:0], 0
	}
	return f, nil
}
