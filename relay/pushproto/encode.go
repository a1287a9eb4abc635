package pushproto

import (
	"encoding/json"
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
	// Wake extension fields, set only for devices of our own that asked.
	WakeKey  string // base64url per-device wake key
	STUNAddr string // host:port of the relay's STUN listener
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
	}{TypeHello, r.UAID, r.Status, true, b, r.WakeKey, r.STUNAddr})
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
// without padding, as autopush sends it.
type Notification struct {
	ChannelID string
	Version   string
	Data      string
	Headers   *Headers
	TTL       int // seconds; sent so relays downstream can honour it
}

// EncodeNotification builds a notification frame.
func EncodeNotification(n Notification) []byte {
	return mustJSON(struct {
		MessageType MessageType `json:"messageType"`
		ChannelID   string      `json:"channelID"`
		Version     string      `json:"version"`
		Data        string      `json:"data,omitempty"`
		Headers     *Headers    `json:"headers,omitempty"`
		TTL         int         `json:"ttl,omitempty"`
	}{TypeNotification, n.ChannelID, n.Version, n.Data, n.Headers, n.TTL})
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
