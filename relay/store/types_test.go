package store

import (
	"errors"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
)

func TestCodecRoundTrip(t *testing.T) {
	u := push.UAID{1, 2, 3}
	now := time.Unix(1700000000, 123456789)
	m := Message{
		UAID: u, Channel: push.ChannelID{9, 9}, Seq: 42,
		Received: now, TTL: time.Hour, Expiry: now.Add(time.Hour),
		Topic: "t1", Urgency: push.UrgencyHigh, Version: 1234567,
		Encoding: "aes128gcm", Encryption: "salt=x", CryptoKey: "dh=y",
		Data: []byte("hello"),
	}
	got, err := decodeMessage(u, 42, encodeMessage(&m))
	if err != nil {
		t.Fatal(err)
	}
	if !messagesEqual(got, m) {
		t.Errorf("message round trip:\n got %+v\nwant %+v", got, m)
	}
	h, err := decodeHeader(u, 42, encodeMessage(&m))
	if err != nil || h.channel != m.Channel || h.topic != "t1" || h.expiry != uint64(m.Expiry.UnixNano()) {
		t.Errorf("header %+v, %v", h, err)
	}
	// A truncated string length must be reported, not panic.
	bad := encodeMessage(&m)[:messageFixed+1]
	bad[messageFixed] = 200
	if _, err := decodeMessage(u, 42, bad); !errors.Is(err, errCorrupt) {
		t.Errorf("truncated message: %v", err)
	}

	d := Device{UAID: u, Created: now, LastSeen: now.Add(time.Second), Waiting: 7, Channels: 3, Wake: []byte{1, 2}}
	gd, err := decodeDevice(u, encodeDevice(d))
	if err != nil || !gd.Created.Equal(d.Created) || !gd.LastSeen.Equal(d.LastSeen) || gd.Waiting != 7 || gd.Channels != 3 || string(gd.Wake) != "\x01\x02" {
		t.Errorf("device round trip %+v, %v", gd, err)
	}
	if gd, _ := decodeDevice(u, encodeDevice(Device{})); !gd.Created.IsZero() || gd.Wake != nil {
		t.Errorf("zero device round trip %+v", gd)
	}
}

func messagesEqual(a, b Message) bool {
	return a.UAID == b.UAID && a.Channel == b.Channel && a.Seq == b.Seq &&
		a.Received.Equal(b.Received) && a.TTL == b.TTL && a.Expiry.Equal(b.Expiry) &&
		a.Topic == b.Topic && a.Urgency == b.Urgency && a.Version == b.Version && a.Encoding == b.Encoding &&
		a.Encryption == b.Encryption && a.CryptoKey == b.CryptoKey && string(a.Data) == string(b.Data)
}
