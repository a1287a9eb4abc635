//go:build linux

package bench

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/pushrelay/pushrelay/relay/pushproto"
)

func TestLoadLoopParseResponse(t *testing.T) {
	resp := []byte("HTTP/1.1 201 Created\r\nLocation: http://x/m/abc\r\nTTL: 60\r\nContent-Length: 3\r\n\r\nabc")
	for cut := range len(resp) {
		if _, n, _, _, err := parseResponse(resp[:cut]); n != 0 || err != nil {
			t.Fatalf("answer complete after %d of %d bytes (%v)", cut, len(resp), err)
		}
	}
	code, n, closeConn, location, err := parseResponse(append(resp, "HTTP/1.1"...))
	if code != 201 || n != len(resp) || closeConn || string(location) != "http://x/m/abc" || err != nil {
		t.Fatalf("parseResponse = %d %d %v %q %v", code, n, closeConn, location, err)
	}
	if _, _, closeConn, _, _ := parseResponse([]byte("HTTP/1.1 503 x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")); !closeConn {
		t.Error("Connection: close not seen")
	}
	for _, bad := range []string{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.0 2x1\r\n\r\n", "junk\r\n\r\n"} {
		if _, _, _, _, err := parseResponse([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func TestLoadLoopNotificationIDs(t *testing.T) {
	n := pushproto.Notification{ChannelID: "0b5a9d4e-3c5b-4f7e-8a7b-2a2f3f4e5d6c", Version: "gAAAAABk_x-1", RawData: []byte{1, 2, 3},
		Headers: &pushproto.Headers{Encoding: "aes128gcm"}}
	frame := pushproto.EncodeNotification(n)
	want, err := pushproto.DecodeServer(frame)
	if err != nil {
		t.Fatal(err)
	}
	ch, ver, ok := notificationIDs(frame)
	if !ok || ch != want.ChannelID || ver != want.Version {
		t.Fatalf("notificationIDs = %q %q %v, want %q %q", ch, ver, ok, want.ChannelID, want.Version)
	}
	n.Version = `a"b`
	if _, _, ok := notificationIDs(pushproto.EncodeNotification(n)); ok {
		t.Error("an escaped version was read the quick way")
	}
}

func TestLoadLoopClientFrame(t *testing.T) {
	for _, size := range []int{0, 125, 126, 65535, 65536} {
		payload := bytes.Repeat([]byte{'x'}, size)
		f := appendClientFrame(nil, 1, payload)
		if f[0] != 0x81 || f[1]&0x80 == 0 {
			t.Fatalf("size %d: header % x", size, f[:2])
		}
		n, hdr := int(f[1]&0x7f), 2
		switch n {
		case 126:
			n, hdr = int(binary.BigEndian.Uint16(f[2:])), 4
		case 127:
			n, hdr = int(binary.BigEndian.Uint64(f[2:])), 10
		}
		key, body := f[hdr:hdr+4], f[hdr+4:]
		if n != size || len(body) != size {
			t.Fatalf("size %d: length %d, body %d", size, n, len(body))
		}
		for i := range body {
			body[i] ^= key[i&3]
		}
		if !bytes.Equal(body, payload) {
			t.Fatalf("size %d: payload does not unmask", size)
		}
	}
}
