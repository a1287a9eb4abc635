//go:build linux

package wsock_test

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/wsock"
)

// FuzzClientReader feeds what an upstream server could send after the
// handshake to the client's own frame reader: it must end every input
// with a message, a close or an error, never a panic, and never return
// more message bytes than were sent.
func FuzzClientReader(f *testing.F) {
	first := frame(1, []byte(`{"messageType":"notif`))
	first[0] &^= 0x80
	for _, seed := range [][]byte{
		frame(1, []byte(`{"messageType":"hello","uaid":"9f0c4a2b1d6e4f8a9b0c1d2e3f405162","status":200}`)),
		frame(1, []byte(`{"messageType":"notification","channelID":"a2b3","version":"v1","data":"AAEC"}`)),
		append(append(first, frame(9, []byte("p"))...), frame(0, []byte(`ication"}`))...),
		frame(2, []byte{1, 2, 3}),
		frame(8, append([]byte{0x03, 0xe8}, "bye"...)),
		frame(10, nil),
		{0x81, 0xfe, 0x00, 0x05, 1, 2, 3, 4, 'x'},                    // masked
		{0x81, 0x7f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, // huge length
		{0xc1, 0x00}, // reserved bit
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		url, _, conns := rawServer(t, false)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := wsock.Dial(ctx, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Abort()
		srv := <-conns
		defer srv.Close()
		go func() {
			srv.Write(data)
			srv.(*net.TCPConn).CloseWrite() // then EOF: a CloseError 1006
			// What the client answers (pongs, the close echo) is read and
			// dropped, so its writes never block.
			srv.SetReadDeadline(time.Now().Add(5 * time.Second))
			io.Copy(io.Discard, srv)
		}()
		deadline := time.Now().Add(2 * time.Second)
		got := 0
		for range len(data) + 1 {
			b, err := c.Read(deadline)
			if err != nil {
				break // a close, a protocol error, the end of the stream
			}
			got += len(b)
			if got > len(data) {
				t.Fatalf("%d message bytes from %d sent", got, len(data))
			}
		}
	})
}
