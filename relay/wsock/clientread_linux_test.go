//go:build linux

package wsock_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/wsock"
)

// The client's frame reader: a fragmented text message with a ping
// between its fragments, a binary frame skipped, and the server's close
// (code and reason reported, the code echoed); a connection that ends
// without a close frame is a CloseError 1006, and a masked frame from the
// server a protocol error.
func TestClientReader(t *testing.T) {
	url, _, conns := rawServer(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dial := func() (*wsock.ClientConn, net.Conn) {
		c, err := wsock.Dial(ctx, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Abort() })
		srv := <-conns
		t.Cleanup(func() { srv.Close() })
		return c, srv
	}
	c, srv := dial()
	first := frame(1, []byte("hel"))
	first[0] &^= 0x80 // not final
	var w []byte
	w = append(w, first...)
	w = append(w, frame(9, []byte("p"))...)
	w = append(w, frame(0, []byte("lo"))...)
	w = append(w, frame(2, []byte{1, 2})...)
	w = append(w, frame(1, []byte("next"))...)
	w = append(w, frame(8, append([]byte{0x0f, 0xa0}, "bye"...))...)
	srv.Write(w)
	deadline := time.Now().Add(5 * time.Second)
	for _, want := range []string{"hello", "next"} {
		if b, err := c.Read(deadline); err != nil || string(b) != want {
			t.Fatalf("Read = %q, %v; want %q", b, err, want)
		}
	}
	_, err := c.Read(deadline)
	var ce *wsock.CloseError
	if !errors.As(err, &ce) || ce.Code != 4000 || ce.Reason != "bye" {
		t.Fatalf("Read after the close = %v, want CloseError 4000 bye", err)
	}
	// The client answered the ping (masked, 1 byte), then echoed the
	// close's code (masked, 2 bytes).
	srv.SetReadDeadline(deadline)
	got := make([]byte, 2+4+1+2+4+2)
	if _, err := io.ReadFull(srv, got); err != nil {
		t.Fatal(err)
	}
	if got[0] != 0x8a || got[1] != 0x81 || got[7] != 0x88 || got[8] != 0x82 {
		t.Errorf("client sent % x, want a pong then a close", got)
	}
	if code := binary.BigEndian.Uint16([]byte{got[13] ^ got[9], got[14] ^ got[10]}); code != 4000 {
		t.Errorf("close echoed code %d, want 4000", code)
	}

	c, srv = dial()
	srv.Close()
	if _, err := c.Read(deadline); !errors.As(err, &ce) || ce.Code != 1006 {
		t.Errorf("Read after the server vanished = %v, want CloseError 1006", err)
	}

	c, srv = dial()
	masked := frame(1, []byte("x"))
	masked[1] |= 0x80
	srv.Write(append(masked, 0, 0, 0, 0))
	if _, err := c.Read(deadline); err == nil || !strings.Contains(err.Error(), "protocol error") {
		t.Errorf("Read of a masked frame = %v, want a protocol error", err)
	}
}
