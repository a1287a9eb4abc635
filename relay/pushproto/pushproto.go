// Package pushproto is the device-side wire protocol of pushrelay: the JSON
// messages of the Mozilla push protocol as autopush and Firefox speak it over
// a WebSocket, plus the Firefox OS / KaiOS wake fields of hello.
//
// It does no I/O. DecodeClient turns one text frame from a device into a
// typed message or a sentinel error; the Encode functions build the frames the
// server sends. Close codes and their reasons live here too, so the listener,
// the tests and the docs (docs/device-protocol.md) agree on them.
package pushproto

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
)

// MessageType names a frame. The values are autopush's snake_case names.
type MessageType string

// Message types.
const (
	TypeHello              MessageType = "hello"
	TypeRegister           MessageType = "register"
	TypeUnregister         MessageType = "unregister"
	TypeBroadcastSubscribe MessageType = "broadcast_subscribe"
	TypeAck                MessageType = "ack"
	TypeNack               MessageType = "nack"
	TypePing               MessageType = "ping"
	TypeNotification       MessageType = "notification"
	TypeBroadcast          MessageType = "broadcast"
)

// Close codes the device listener uses. They follow autopush-rs: 1011 for
// every protocol-state error, 1003 for non-text frames, 1000 only when the
// UAID was reset; 1001 on shutdown; 1009 for oversized frames (RFC 6455);
// 4774 tells a Firefox OS device to sleep and wait for a UDP wake-up.
const (
	CloseNormal        = 1000
	CloseGoingAway     = 1001
	CloseProtocolError = 1002
	CloseUnsupported   = 1003
	CloseInvalidData   = 1007
	CloseTooBig        = 1009
	CloseServerError   = 1011
	CloseWake          = 4774
)

// Limits of the protocol that do not depend on configuration.
const (
	// MaxChannelIDLen is the length of a dashed UUID.
	MaxChannelIDLen = 36
	// MaxVersionLen bounds the version string of an ack.
	MaxVersionLen = 256
	// MaxAckUpdates bounds the updates in one ack frame.
	MaxAckUpdates = 1024
	// MaxBroadcasts bounds the broadcast ids a device may name.
	MaxBroadcasts = 64
	// MaxKeyLen bounds a register key (a base64url P-256 point is 87 chars).
	MaxKeyLen = 256
)

// Sentinel decode errors. Each maps to a close reason (see Reason).
var (
	ErrMalformed     = errors.New("malformed message")
	ErrUnknownType   = errors.New("unknown messageType")
	ErrBadChannelID  = errors.New("invalid channelID")
	ErrMissingField  = errors.New("missing required field")
	ErrFieldTooLarge = errors.New("field too large")
)

// Reason returns the close reason text sent to a device for a decode error,
// short enough for a close frame (≤ 123 bytes).
func Reason(err error) string {
	switch {
	case errors.Is(err, ErrUnknownType):
		return "unknown messageType"
	case errors.Is(err, ErrBadChannelID):
		return "invalid channelID"
	case errors.Is(err, ErrMissingField):
		return "missing field"
	case errors.Is(err, ErrFieldTooLarge):
		return "field too large"
	default:
		return "malformed message"
	}
}

// WakeHostPort is the Firefox OS hello extension naming the device's UDP
// wake address as the device sees it.
type WakeHostPort struct {
	IP   string `json:"ip"`
	Port int    `json:"port"`
}

// MobileNetwork identifies the device's mobile operator (Firefox OS/KaiOS).
type MobileNetwork struct {
	MCC   string `json:"mcc"`
	MNC   string `json:"mnc"`
	NetID string `json:"netid,omitempty"`
}

// Hello is the first frame of a session.
type Hello struct {
	UAID       string            // as sent; may be empty or invalid
	UseWebPush bool              // Firefox always sends true; informational
	Broadcasts map[string]string // broadcast id → version the device has
	ChannelIDs []string          // legacy list, ignored like autopush does
	Wake       *WakeHostPort     // Firefox OS wakeup_hostport, if any
	Mobile     *MobileNetwork    // Firefox OS mobilenetwork, if any
	// WakeAuth is pushrelay's extension: the device checks the MAC of
	// authenticated wake datagrams, so it may be sent those instead of the
	// Firefox OS "NOTIFY" text.
	WakeAuth bool
}

// Register asks for a push endpoint for a channel.
type Register struct {
	ChannelID string // lower-case dashed UUID, validated
	Key       string // optional VAPID public key, base64url (padding allowed)
}

// Unregister drops a channel.
type Unregister struct {
	ChannelID string
	Code      int
}

// AckUpdate acknowledges one notification.
type AckUpdate struct {
	ChannelID string
	Version   string
	Code      int // AckOK, AckDecryptError or AckNotDelivered
}

// Ack codes, as Firefox sends them.
const (
	AckOK           = 100 // delivered
	AckDecryptError = 101 // the device could not decrypt it
	AckNotDelivered = 102 // not delivered for another reason
)

// Ack acknowledges notifications.
type Ack struct {
	Updates []AckUpdate
}

// Nack reports a notification the client could not handle; metrics only.
type Nack struct {
	Version string
	Code    int
}

// BroadcastSubscribe names broadcasts the device wants.
type BroadcastSubscribe struct {
	Broadcasts map[string]string
}

// Ping is the WebPush-level keepalive, `{}` or {"messageType":"ping"}.
type Ping struct{}

// clientFrame is the union of every client field, decoded in one pass.
type clientFrame struct {
	MessageType   *string         `json:"messageType"`
	UAID          json.RawMessage `json:"uaid"`
	UseWebPush    json.RawMessage `json:"use_webpush"`
	Broadcasts    json.RawMessage `json:"broadcasts"`
	ChannelIDs    json.RawMessage `json:"channelIDs"`
	ChannelID     *string         `json:"channelID"`
	Key           *string         `json:"key"`
	Code          json.RawMessage `json:"code"`
	Version       json.RawMessage `json:"version"`
	Updates       []rawUpdate     `json:"updates"`
	WakeHostPort  json.RawMessage `json:"wakeup_hostport"`
	MobileNetwork json.RawMessage `json:"mobilenetwork"`
	WakeAuth      json.RawMessage `json:"wake_auth"`
}

// rawUpdate is one ack update as sent, checked by decodeAck.
type rawUpdate struct {
	ChannelID *string         `json:"channelID"`
	Version   json.RawMessage `json:"version"`
	Code      json.RawMessage `json:"code"`
}

// DecodeClient decodes one text frame from a device. It returns one of
// Hello, Register, Unregister, Ack, Nack, BroadcastSubscribe or Ping, or an
// error wrapping one of the sentinel errors.
func DecodeClient(frame []byte) (any, error) {
	trimmed := bytes.TrimSpace(frame)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, fmt.Errorf("%w: not a JSON object", ErrMalformed)
	}
	if a, ok := decodeCanonicalAck(trimmed); ok {
		return a, nil
	}
	return decodeClientJSON(trimmed)
}

// decodeClientJSON is DecodeClient for any frame, through encoding/json.
func decodeClientJSON(trimmed []byte) (any, error) {
	var f clientFrame
	if err := json.Unmarshal(trimmed, &f); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if f.MessageType == nil {
		// autopush parses the literal {} as a ping; anything else without a
		// type is malformed.
		if isEmptyObject(trimmed) {
			return Ping{}, nil
		}
		return nil, fmt.Errorf("%w: no messageType", ErrMalformed)
	}
	switch MessageType(*f.MessageType) {
	case TypeHello:
		h, err := decodeHello(&f)
		if err != nil {
			return nil, err
		}
		return h, nil
	case TypeRegister:
		id, err := channelID(f.ChannelID)
		if err != nil {
			return nil, err
		}
		r := Register{ChannelID: id}
		if f.Key != nil {
			if len(*f.Key) > MaxKeyLen {
				return nil, fmt.Errorf("%w: key", ErrFieldTooLarge)
			}
			r.Key = *f.Key
		}
		return r, nil
	case TypeUnregister:
		id, err := channelID(f.ChannelID)
		if err != nil {
			return nil, err
		}
		code, err := optInt(f.Code)
		if err != nil {
			return nil, err
		}
		return Unregister{ChannelID: id, Code: code}, nil
	case TypeAck:
		a, err := decodeAck(&f)
		if err != nil {
			return nil, err
		}
		return a, nil
	case TypeNack:
		code, err := optInt(f.Code)
		if err != nil {
			return nil, err
		}
		v, err := optString(f.Version)
		if err != nil {
			return nil, err
		}
		return Nack{Version: v, Code: code}, nil
	case TypePing:
		return Ping{}, nil
	case TypeBroadcastSubscribe:
		b, err := broadcasts(f.Broadcasts)
		if err != nil {
			return nil, err
		}
		return BroadcastSubscribe{Broadcasts: b}, nil
	default:
		return nil, fmt.Errorf("%w: %.32q", ErrUnknownType, *f.MessageType)
	}
}

func isEmptyObject(b []byte) bool {
	var m map[string]json.RawMessage
	return json.Unmarshal(b, &m) == nil && len(m) == 0
}

func decodeHello(f *clientFrame) (Hello, error) {
	var h Hello
	if len(f.UAID) > 0 && !isNull(f.UAID) {
		// A non-string uaid is treated as absent: the device gets a new one,
		// which is what autopush does with anything it cannot parse.
		var s string
		if json.Unmarshal(f.UAID, &s) == nil && len(s) <= 128 {
			h.UAID = s
		}
	}
	if len(f.UseWebPush) > 0 {
		_ = json.Unmarshal(f.UseWebPush, &h.UseWebPush)
	}
	if len(f.WakeAuth) > 0 {
		_ = json.Unmarshal(f.WakeAuth, &h.WakeAuth)
	}
	b, err := broadcasts(f.Broadcasts)
	if err != nil {
		return Hello{}, err
	}
	h.Broadcasts = b
	if len(f.ChannelIDs) > 0 && !isNull(f.ChannelIDs) {
		var ids []string
		if err := json.Unmarshal(f.ChannelIDs, &ids); err != nil {
			return Hello{}, fmt.Errorf("%w: channelIDs: %v", ErrMalformed, err)
		}
		if len(ids) > 10000 {
			return Hello{}, fmt.Errorf("%w: channelIDs", ErrFieldTooLarge)
		}
		h.ChannelIDs = ids
	}
	if len(f.WakeHostPort) > 0 && !isNull(f.WakeHostPort) {
		var w struct {
			IP   string          `json:"ip"`
			Port json.RawMessage `json:"port"`
		}
		if err := json.Unmarshal(f.WakeHostPort, &w); err != nil {
			return Hello{}, fmt.Errorf("%w: wakeup_hostport: %v", ErrMalformed, err)
		}
		port, err := intOrString(w.Port)
		if err != nil || port < 1 || port > 65535 || len(w.IP) == 0 || len(w.IP) > 64 {
			return Hello{}, fmt.Errorf("%w: wakeup_hostport", ErrMalformed)
		}
		h.Wake = &WakeHostPort{IP: w.IP, Port: port}
	}
	if len(f.MobileNetwork) > 0 && !isNull(f.MobileNetwork) {
		var m MobileNetwork
		if err := json.Unmarshal(f.MobileNetwork, &m); err != nil {
			return Hello{}, fmt.Errorf("%w: mobilenetwork: %v", ErrMalformed, err)
		}
		if len(m.MCC) > 8 || len(m.MNC) > 8 || len(m.NetID) > 64 {
			return Hello{}, fmt.Errorf("%w: mobilenetwork", ErrFieldTooLarge)
		}
		h.Mobile = &m
	}
	return h, nil
}

func decodeAck(f *clientFrame) (Ack, error) {
	if f.Updates == nil {
		return Ack{}, fmt.Errorf("%w: updates", ErrMissingField)
	}
	if len(f.Updates) > MaxAckUpdates {
		return Ack{}, fmt.Errorf("%w: updates", ErrFieldTooLarge)
	}
	a := Ack{Updates: make([]AckUpdate, 0, len(f.Updates))}
	for _, u := range f.Updates {
		id, err := channelID(u.ChannelID)
		if err != nil {
			return Ack{}, err
		}
		v, err := optString(u.Version)
		if err != nil {
			return Ack{}, err
		}
		if v == "" {
			return Ack{}, fmt.Errorf("%w: version", ErrMissingField)
		}
		code, err := optInt(u.Code)
		if err != nil {
			return Ack{}, err
		}
		a.Updates = append(a.Updates, AckUpdate{ChannelID: id, Version: v, Code: code})
	}
	return a, nil
}

func broadcasts(raw json.RawMessage) (map[string]string, error) {
	if len(raw) == 0 || isNull(raw) {
		return nil, nil
	}
	var m map[string]string
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("%w: broadcasts: %v", ErrMalformed, err)
	}
	if len(m) > MaxBroadcasts {
		return nil, fmt.Errorf("%w: broadcasts", ErrFieldTooLarge)
	}
	for k, v := range m {
		if len(k) > 128 || len(v) > 128 {
			return nil, fmt.Errorf("%w: broadcasts", ErrFieldTooLarge)
		}
	}
	return m, nil
}

func channelID(p *string) (string, error) {
	if p == nil {
		return "", fmt.Errorf("%w: channelID", ErrMissingField)
	}
	if !ValidChannelID(*p) {
		return "", fmt.Errorf("%w: %.40q", ErrBadChannelID, *p)
	}
	return *p, nil
}

// ValidChannelID reports whether s is a lower-case dashed UUID, the only
// form autopush accepts in register.
func ValidChannelID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < 36; i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return false
			}
		}
	}
	return true
}

func isNull(b json.RawMessage) bool { return string(bytes.TrimSpace(b)) == "null" }

// optString accepts a JSON string, a number (legacy SimplePush versions are
// integers) or nothing.
func optString(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || isNull(raw) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		if len(s) > MaxVersionLen {
			return "", fmt.Errorf("%w: version", ErrFieldTooLarge)
		}
		return s, nil
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		return "", fmt.Errorf("%w: version: %v", ErrMalformed, err)
	}
	if len(n) > 32 {
		return "", fmt.Errorf("%w: version", ErrFieldTooLarge)
	}
	return n.String(), nil
}

func optInt(raw json.RawMessage) (int, error) {
	if len(raw) == 0 || isNull(raw) {
		return 0, nil
	}
	n, err := intOrString(raw)
	if err != nil {
		return 0, fmt.Errorf("%w: code: %v", ErrMalformed, err)
	}
	return n, nil
}

func intOrString(raw json.RawMessage) (int, error) {
	var n int32
	if err := json.Unmarshal(raw, &n); err == nil {
		return int(n), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return 0, err
	}
	var v int32
	if _, err := fmt.Sscanf(s, "%d", &v); err != nil || fmt.Sprint(v) != s {
		return 0, fmt.Errorf("not an integer: %.16q", s)
	}
	return int(v), nil
}

// Transport errors a connection adapter reports from ReadFrame, so the core
// can pick the close code without knowing the WebSocket library.
var (
	// ErrBinaryFrame: the device sent a binary frame (closed with 1003).
	ErrBinaryFrame = errors.New("binary frame")
	// ErrFrameTooBig: a frame exceeded the size limit (closed with 1009).
	ErrFrameTooBig = errors.New("frame too big")
	// ErrInvalidUTF8: a text frame that is not UTF-8 (close 1007).
	ErrInvalidUTF8 = errors.New("text frame is not valid UTF-8")
	// ErrPeerClosed: the device closed the connection.
	ErrPeerClosed = errors.New("closed by peer")
)

// NewChannelID returns a fresh channel ID in the form register requires: a
// random (version 4) UUID, lower case and dashed. Devices choose their
// channel IDs; the device tool and tests use this.
func NewChannelID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
