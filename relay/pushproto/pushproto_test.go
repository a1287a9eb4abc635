package pushproto

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

// Frames as Firefox (PushServiceWebSocket.sys.mjs) and Firefox OS send them.
var realFrames = []string{
	`{"messageType":"hello","broadcasts":{"remote-settings/monitor_changes":"\"1700000000000\""},"use_webpush":true}`,
	`{"messageType":"hello","broadcasts":{},"use_webpush":true,"uaid":"5f1e2d3c4b5a69788796a5b4c3d2e1f0"}`,
	`{"messageType":"hello","uaid":"","channelIDs":[],"wakeup_hostport":{"ip":"10.1.2.3","port":2442},"mobilenetwork":{"mcc":"214","mnc":"07"}}`,
	`{"messageType":"hello","use_webpush":true,"wakeup_hostport":{"ip":"10.1.2.3","port":"40123"},"mobilenetwork":{"mcc":"214","mnc":"07","netid":"10.0.0.1"}}`,
	`{"messageType":"register","channelID":"0b5a9d4e-3c5b-4f7e-8a7b-2a2f3f4e5d6c","key":"BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4="}`,
	`{"messageType":"register","channelID":"0b5a9d4e-3c5b-4f7e-8a7b-2a2f3f4e5d6c"}`,
	`{"messageType":"unregister","channelID":"0b5a9d4e-3c5b-4f7e-8a7b-2a2f3f4e5d6c","code":200}`,
	`{"messageType":"ack","updates":[{"channelID":"0b5a9d4e-3c5b-4f7e-8a7b-2a2f3f4e5d6c","version":"gAAAAABk","code":100}]}`,
	`{"messageType":"nack","version":"gAAAAABk","code":301}`,
	`{"messageType":"broadcast_subscribe","broadcasts":{"remote-settings/monitor_changes":"\"1\""}}`,
	`{"messageType":"ping"}`,
	`{}`,
	// pushrelay's own sleeping device (pushrelay device --wake).
	`{"messageType":"hello","use_webpush":true,"uaid":"5f1e2d3c4b5a69788796a5b4c3d2e1f0","wakeup_hostport":{"ip":"127.0.0.5","port":5000},"wake_auth":true}`,
}

func TestDecodeRealFrames(t *testing.T) {
	for _, f := range realFrames {
		if _, err := DecodeClient([]byte(f)); err != nil {
			t.Errorf("DecodeClient(%s): %v", f, err)
		}
	}
}

func TestDecodeTyped(t *testing.T) {
	m, err := DecodeClient([]byte(realFrames[3]))
	if err != nil {
		t.Fatal(err)
	}
	h := m.(Hello)
	if h.Wake == nil || h.Wake.IP != "10.1.2.3" || h.Wake.Port != 40123 || h.Mobile.NetID != "10.0.0.1" {
		t.Fatalf("hello wake fields: %+v %+v", h.Wake, h.Mobile)
	}
	if h.WakeAuth {
		t.Error("Firefox OS hello decoded with wake_auth")
	}
	m, _ = DecodeClient([]byte(realFrames[len(realFrames)-1]))
	if h := m.(Hello); !h.WakeAuth || h.Wake.Port != 5000 {
		t.Errorf("pushrelay device hello: %+v", h)
	}
	m, _ = DecodeClient([]byte(realFrames[7]))
	a := m.(Ack)
	want := []AckUpdate{{ChannelID: "0b5a9d4e-3c5b-4f7e-8a7b-2a2f3f4e5d6c", Version: "gAAAAABk", Code: 100}}
	if !reflect.DeepEqual(a.Updates, want) {
		t.Fatalf("ack = %+v", a)
	}
	m, _ = DecodeClient([]byte(`{"messageType":"ack","updates":[{"channelID":"0b5a9d4e-3c5b-4f7e-8a7b-2a2f3f4e5d6c","version":17}]}`))
	if m.(Ack).Updates[0].Version != "17" {
		t.Fatalf("numeric SimplePush version not accepted: %+v", m)
	}
	if m, _ := DecodeClient([]byte(" {} ")); m != (Ping{}) {
		t.Fatalf("{} is not a ping: %#v", m)
	}
	m, _ = DecodeClient([]byte(`{"messageType":"hello","uaid":42}`))
	if m.(Hello).UAID != "" {
		t.Fatal("non-string uaid must read as absent")
	}
}

func TestDecodeErrors(t *testing.T) {
	cases := []struct {
		frame string
		want  error
	}{
		{`not json`, ErrMalformed},
		{`[]`, ErrMalformed},
		{`{"messageType":"hello"`, ErrMalformed},
		{`{"foo":1}`, ErrMalformed},
		{`{"messageType":"subscribe"}`, ErrUnknownType},
		{`{"messageType":3}`, ErrMalformed},
		{`{"messageType":"register"}`, ErrMissingField},
		{`{"messageType":"register","channelID":"0B5A9D4E-3C5B-4F7E-8A7B-2A2F3F4E5D6C"}`, ErrBadChannelID},
		{`{"messageType":"register","channelID":"0b5a9d4e3c5b4f7e8a7b2a2f3f4e5d6c"}`, ErrBadChannelID},
		{`{"messageType":"unregister","channelID":"nope"}`, ErrBadChannelID},
		{`{"messageType":"ack"}`, ErrMissingField},
		{`{"messageType":"ack","updates":[{"channelID":"0b5a9d4e-3c5b-4f7e-8a7b-2a2f3f4e5d6c"}]}`, ErrMissingField},
		{`{"messageType":"ack","updates":[{"channelID":"x","version":"1"}]}`, ErrBadChannelID},
		{`{"messageType":"hello","wakeup_hostport":{"ip":"10.0.0.1","port":70000}}`, ErrMalformed},
		{`{"messageType":"hello","broadcasts":[1]}`, ErrMalformed},
	}
	for _, c := range cases {
		_, err := DecodeClient([]byte(c.frame))
		if !errors.Is(err, c.want) {
			t.Errorf("DecodeClient(%s) = %v, want %v", c.frame, err, c.want)
		}
		if err != nil && len(Reason(err)) > 123 {
			t.Errorf("reason too long for a close frame: %q", Reason(err))
		}
	}
}

func TestEncodeShapes(t *testing.T) {
	var got map[string]any
	mustUnmarshal(t, EncodeHello(HelloReply{UAID: "abc", Status: StatusOK}), &got)
	if got["messageType"] != "hello" || got["use_webpush"] != true || got["status"].(float64) != 200 {
		t.Fatalf("hello = %v", got)
	}
	if _, ok := got["broadcasts"].(map[string]any); !ok {
		t.Fatalf("hello lacks broadcasts object: %v", got)
	}
	if _, ok := got["wake_key"]; ok {
		t.Fatal("wake_key must be omitted when empty")
	}
	got = nil
	mustUnmarshal(t, EncodeNotification(Notification{ChannelID: "c", Version: "v", Data: "AAA", Headers: &Headers{Encoding: "aes128gcm"}}), &got)
	h := got["headers"].(map[string]any)
	if h["encoding"] != "aes128gcm" || got["data"] != "AAA" {
		t.Fatalf("notification = %v", got)
	}
	if string(PingReply) != "{}" {
		t.Fatal("ping reply must be {}")
	}
	got = nil
	mustUnmarshal(t, EncodeBroadcast(BroadcastErrors(map[string]string{"x": "1"})), &got)
	if got["broadcasts"].(map[string]any)["errors"].(map[string]any)["x"] != "Broadcast not found" {
		t.Fatalf("broadcast errors = %v", got)
	}
}

func mustUnmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
}

func FuzzDecodeClient(f *testing.F) {
	for _, fr := range realFrames {
		f.Add([]byte(fr))
	}
	f.Add([]byte(`{"messageType":"ack","updates":[{"channelID":"0b5a9d4e-3c5b-4f7e-8a7b-2a2f3f4e5d6c","version":17}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeClient(b)
		if err != nil {
			if m != nil {
				t.Fatal("message returned with error")
			}
			return
		}
		switch v := m.(type) {
		case Register:
			if !ValidChannelID(v.ChannelID) {
				t.Fatalf("accepted bad channel id %q", v.ChannelID)
			}
		case Ack:
			for _, u := range v.Updates {
				if !ValidChannelID(u.ChannelID) || u.Version == "" {
					t.Fatalf("accepted bad ack %+v", u)
				}
			}
		case Hello:
			if v.Wake != nil && (v.Wake.Port < 1 || v.Wake.Port > 65535) {
				t.Fatalf("accepted bad port %d", v.Wake.Port)
			}
		}
	})
}

func TestDecodeServerRoundTrip(t *testing.T) {
	f, err := DecodeServer(EncodeNotification(Notification{ChannelID: "c", Version: "v1", Data: "AA", Headers: &Headers{Encoding: "aes128gcm"}}))
	if err != nil || f.MessageType != TypeNotification || f.Version != "v1" || f.Headers.Encoding != "aes128gcm" {
		t.Fatalf("notification: %+v %v", f, err)
	}
	f, err = DecodeServer(PingReply)
	if err != nil || f.MessageType != TypePing {
		t.Fatalf("ping: %+v %v", f, err)
	}
	f, err = DecodeServer(EncodeSimplePushNotification([]SimplePushUpdate{{ChannelID: "c", Version: 7}}))
	if err != nil || f.Updates[0].Version != 7 {
		t.Fatalf("simplepush: %+v %v", f, err)
	}
	f, err = DecodeServer(EncodeHello(HelloReply{UAID: "u", Status: 201, WakeKey: "k"}))
	if err != nil || f.Status != 201 || f.WakeKey != "k" || !f.UseWebPush {
		t.Fatalf("hello: %+v %v", f, err)
	}
	if _, err := DecodeServer([]byte(`{"x":1}`)); err == nil {
		t.Fatal("frame without messageType accepted")
	}
}

func FuzzDecodeServer(f *testing.F) {
	f.Add(EncodeHello(HelloReply{UAID: "u", Status: 200}))
	f.Add(EncodeRegister("c", 200, "http://x/wpush/v1/abc"))
	f.Add(EncodeNotification(Notification{ChannelID: "c", Version: "v", Data: "AA"}))
	f.Add(PingReply)
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = DecodeServer(b)
	})
}

// The hand-written notification encoder must agree with encoding/json.
func TestEncodeNotificationMatchesJSON(t *testing.T) {
	cases := []Notification{
		{ChannelID: "0b5a9d4e-3c5b-4f7e-8a7b-2a2f3f4e5d6c", Version: "AwAAAA", Data: "abc_-", Headers: &Headers{Encoding: "aes128gcm"}},
		{ChannelID: "c", Version: "v"},
		{ChannelID: "c", Version: "v", Data: "x", Headers: &Headers{Encoding: "aesgcm", Encryption: `salt="a\"b"; rs=4096`, CryptoKey: "dh=<&>\u2028\x01é\xff"}, TTL: 60},
		{ChannelID: "c", Version: "v", Headers: &Headers{}},
	}
	raw := Notification{ChannelID: "c", Version: "v", RawData: []byte{0xfb, 0xff, 1, 2, 3}, Headers: &Headers{Encoding: "aes128gcm"}}
	fromString := raw
	fromString.RawData, fromString.Data = nil, "-_8BAgM"
	if a, b := EncodeNotification(raw), EncodeNotification(fromString); string(a) != string(b) {
		t.Errorf("RawData and Data encodings differ:\n%s\n%s", a, b)
	}
	for _, n := range cases {
		want := jsonNotification(n)
		if got := EncodeNotification(n); string(got) != string(want) {
			t.Errorf("EncodeNotification(%+v)\n got %s\nwant %s", n, got, want)
		}
	}
}

func FuzzEncodeNotification(f *testing.F) {
	f.Add("c", "v", "data", "aesgcm", `salt="x"`, "dh=y")
	f.Fuzz(func(t *testing.T, ch, v, data, enc, encr, ck string) {
		n := Notification{ChannelID: ch, Version: v, Data: data, Headers: &Headers{Encoding: enc, Encryption: encr, CryptoKey: ck}}
		var back struct {
			ChannelID string  `json:"channelID"`
			Headers   Headers `json:"headers"`
		}
		if err := json.Unmarshal(EncodeNotification(n), &back); err != nil {
			t.Fatalf("invalid JSON: %v", err)
		}
		want := jsonNotification(n)
		if string(EncodeNotification(n)) != string(want) {
			t.Fatalf("differs from encoding/json for %+v %+v\n got %s\nwant %s", n, *n.Headers, EncodeNotification(n), want)
		}
	})
}

func TestEncodeAckDecodes(t *testing.T) {
	in := []AckUpdate{{ChannelID: "0b5a9d4e-3c5b-4f7e-8a7b-2a2f3f4e5d6c", Version: "gAAA", Code: 100}, {ChannelID: "0b5a9d4e-3c5b-4f7e-8a7b-2a2f3f4e5d6d", Version: "x\"y", Code: 102}}
	m, err := DecodeClient(EncodeAck(in))
	if err != nil || !reflect.DeepEqual(m.(Ack).Updates, in) {
		t.Fatalf("round trip: %+v %v", m, err)
	}
}

// jsonNotification is the reference encoding EncodeNotification must match.
func jsonNotification(n Notification) []byte {
	return mustJSON(struct {
		MessageType MessageType `json:"messageType"`
		ChannelID   string      `json:"channelID"`
		Version     string      `json:"version"`
		Data        string      `json:"data,omitempty"`
		Headers     *Headers    `json:"headers,omitempty"`
		TTL         int         `json:"ttl,omitempty"`
	}{TypeNotification, n.ChannelID, n.Version, n.Data, n.Headers, n.TTL})
}

func TestNewChannelID(t *testing.T) {
	a, b := NewChannelID(), NewChannelID()
	if !ValidChannelID(a) || a == b || a[14] != '4' {
		t.Fatalf("NewChannelID: %q %q", a, b)
	}
}
