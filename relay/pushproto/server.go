package pushproto

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// ServerFrame is any frame a server sends, decoded for clients (the device
// tool, the bench tool, tests, and later the upstream WebSocket client).
// Fields not used by a message type stay zero.
type ServerFrame struct {
	MessageType  MessageType    `json:"messageType"`
	UAID         string         `json:"uaid,omitempty"`
	Status       int            `json:"status,omitempty"`
	UseWebPush   bool           `json:"use_webpush,omitempty"`
	Broadcasts   map[string]any `json:"broadcasts,omitempty"`
	WakeKey      string         `json:"wake_key,omitempty"`
	STUN         string         `json:"stun,omitempty"`
	WakeRefresh  int            `json:"wake_refresh,omitempty"`
	ChannelID    string         `json:"channelID,omitempty"`
	PushEndpoint string         `json:"pushEndpoint,omitempty"`
	Version      string         `json:"-"`
	Data         string         `json:"data,omitempty"`
	Headers      *Headers       `json:"headers,omitempty"`
	TTL          int            `json:"ttl,omitempty"`
	// Updates is the SimplePush notification form.
	Updates []SimplePushUpdate `json:"updates,omitempty"`
}

// SimplePushUpdate is one entry of a SimplePush notification or ack.
type SimplePushUpdate struct {
	ChannelID string `json:"channelID"`
	Version   uint64 `json:"version"`
}

// DecodeServer decodes a server frame. The literal {} is a ping.
func DecodeServer(frame []byte) (ServerFrame, error) {
	var f struct {
		ServerFrame
		Version json.RawMessage `json:"version"`
	}
	b := bytes.TrimSpace(frame)
	if err := json.Unmarshal(b, &f); err != nil {
		return ServerFrame{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	out := f.ServerFrame
	if out.MessageType == "" {
		if isEmptyObject(b) {
			out.MessageType = TypePing
			return out, nil
		}
		return ServerFrame{}, fmt.Errorf("%w: no messageType", ErrMalformed)
	}
	if len(f.Version) > 0 {
		v, err := optString(f.Version)
		if err != nil {
			return ServerFrame{}, err
		}
		out.Version = v
	}
	return out, nil
}

// EncodeSimplePushNotification builds the SimplePush form of a notification,
// for devices that did not say use_webpush in hello.
func EncodeSimplePushNotification(updates []SimplePushUpdate) []byte {
	return mustJSON(struct {
		MessageType MessageType        `json:"messageType"`
		Updates     []SimplePushUpdate `json:"updates"`
	}{TypeNotification, updates})
}
