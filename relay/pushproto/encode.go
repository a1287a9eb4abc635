package pushproto

import (
	"encoding/base64"
	"encoding/json"
	"slices"
	"strconv"
	"unicode/utf8"
)

// StatusOK and StatusWake are the hello statuses: 200 for a WebSocket
// device, 201 when the relay accepted the device for UDP wake (Telefónica's
// UDPREGISTERED, which Firefox OS understood).
const (
	StatusOK   = 200
	StatusWake = 201
)

// HelloReply is the server's answer to hello.
type HelloReply struct {
	UAID       string
	Status     int
	Broadcasts map[string]any
	// Wake extension fields, set only for devices that sent
	// wakeup_hostport (Firefox OS ignores fields it does not know).
	WakeKey     string // base64url per-device wake key (the STUN password)
	STUNAddr    string // host:port of the relay's STUN listener
	WakeRefresh int    // seconds between the device's STUN refreshes
}

// EncodeHello builds a hello reply. use_webpush is always true, as autopush
// sends it.
func EncodeHello(r HelloReply) []byte {
	b := r.Broadcasts
	if b == nil {
		b = map[string]any{}
	}
	return mustJSON(struct {
		MessageType MessageType    `json:"messageType"`
		UAID        string         `json:"uaid"`
		Status      int            `json:"status"`
		UseWebPush  bool           `json:"use_webpush"`
		Broadcasts  map[string]any `json:"broadcasts"`
		WakeKey     string         `json:"wake_key,omitempty"`
		STUN        string         `json:"stun,omitempty"`
		WakeRefresh int            `json:"wake_refresh,omitempty"`
	}{TypeHello, r.UAID, r.Status, true, b, r.WakeKey, r.STUNAddr, r.WakeRefresh})
}

// EncodeRegister builds a register reply.
func EncodeRegister(channelID string, status int, endpoint string) []byte {
	return mustJSON(struct {
		MessageType  MessageType `json:"messageType"`
		ChannelID    string      `json:"channelID"`
		Status       int         `json:"status"`
		PushEndpoint string      `json:"pushEndpoint,omitempty"`
	}{TypeRegister, channelID, status, endpoint})
}

// EncodeUnregister builds an unregister reply.
func EncodeUnregister(channelID string, status int) []byte {
	return mustJSON(struct {
		MessageType MessageType `json:"messageType"`
		ChannelID   string      `json:"channelID"`
		Status      int         `json:"status"`
	}{TypeUnregister, channelID, status})
}

// Headers are the content-coding headers a notification carries to the
// device, with the key names Firefox reads.
type Headers struct {
	Encoding   string `json:"encoding,omitempty"`
	Encryption string `json:"encryption,omitempty"`
	CryptoKey  string `json:"crypto_key,omitempty"`
}

// Notification is a message delivered to a device. Data is base64url
// without padding, as autopush sends it; RawData, if set instead, is
// encoded that way into the frame directly.
type Notification struct {
	ChannelID string
	Version   string
	Data      string
	RawData   []byte
	Headers   *Headers
	TTL       int // seconds; sent so relays downstream can honour it
}

// EncodeNotification builds a notification frame. It is the hot path of
// delivery, so it appends by hand instead of reflecting; the output is the
// same JSON encoding/json would give (a test checks).
func EncodeNotification(n Notification) []byte {
	return AppendNotification(nil, n)
}

// AppendNotification appends n's frame, as EncodeNotification makes it,
// to b.
func AppendNotification(b []byte, n Notification) []byte {
	size := 128 + len(n.ChannelID) + len(n.Version) + len(n.Data) + base64.RawURLEncoding.EncodedLen(len(n.RawData))
	if h := n.Headers; h != nil {
		size += 64 + len(h.Encoding) + len(h.Encryption) + len(h.CryptoKey)
	}
	b = slices.Grow(b, size)
	b = append(b, `{"messageType":"notification","channelID":`...)
	b = appendString(b, n.ChannelID)
	b = append(b, `,"version":`...)
	b = appendString(b, n.Version)
	switch {
	case len(n.RawData) > 0:
		b = append(b, `,"data":"`...)
		b = base64.RawURLEncoding.AppendEncode(b, n.RawData) // needs no escaping
		b = append(b, '"')
	case n.Data != "":
		b = append(b, `,"data":`...)
		b = appendString(b, n.Data)
	}
	if h := n.Headers; h != nil {
		b = append(b, `,"headers":{`...)
		sep := ""
		for _, kv := range [3][2]string{{"encoding", h.Encoding}, {"encryption", h.Encryption}, {"crypto_key", h.CryptoKey}} {
			if kv[1] == "" {
				continue
			}
			b = append(b, sep...)
			b = appendString(b, kv[0])
			b = append(b, ':')
			b = appendString(b, kv[1])
			sep = ","
		}
		b = append(b, '}')
	}
	if n.TTL != 0 {
		b = append(b, `,"ttl":`...)
		b = strconv.AppendInt(b, int64(n.TTL), 10)
	}
	return append(b, '}')
}

// appendString appends s as a JSON string, escaped as encoding/json does
// (including <, > and & as \u escapes, and invalid UTF-8 as U+FFFD).
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c == '\b':
				b = append(b, '\\', 'b')
			case c == '\f':
				b = append(b, '\\', 'f')
			case c < 0x20 || c == '<' || c == '>' || c == '&':
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

// EncodeBroadcast builds a broadcast frame.
func EncodeBroadcast(b map[string]any) []byte {
	return mustJSON(struct {
		MessageType MessageType    `json:"messageType"`
		Broadcasts  map[string]any `json:"broadcasts"`
	}{TypeBroadcast, b})
}

// BroadcastErrors is the broadcasts value for ids the relay does not serve:
// autopush answers unknown ids under a nested "errors" map.
func BroadcastErrors(ids map[string]string) map[string]any {
	if len(ids) == 0 {
		return map[string]any{}
	}
	errs := make(map[string]string, len(ids))
	for id := range ids {
		errs[id] = "Broadcast not found"
	}
	return map[string]any{"errors": errs}
}

// PingReply is the WebPush-level ping answer: the literal {}.
var PingReply = []byte("{}")

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Only strings, ints and maps of strings are marshalled here.
		panic("pushproto: " + err.Error())
	}
	return b
}

// EncodeAck builds a client's ack frame for Web Push notifications.
func EncodeAck(updates []AckUpdate) []byte {
	b := make([]byte, 0, 40+len(updates)*160)
	b = append(b, `{"messageType":"ack","updates":[`...)
	for i, u := range updates {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"channelID":`...)
		b = appendString(b, u.ChannelID)
		b = append(b, `,"version":`...)
		b = appendString(b, u.Version)
		b = append(b, `,"code":`...)
		b = strconv.AppendInt(b, int64(u.Code), 10)
		b = append(b, '}')
	}
	return append(b, "]}"...)
}
