package wsock_test

import (
	"context"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/wsock"
)

// A device that stops reading after the relay's last write, which the
// kernel buffered without blocking, is cut off by the kernel once that
// data has waited the write timeout (TCP_USER_TIMEOUT): the reader sees an
// error instead of an idle connection kept for the ping interval.
func TestUserTimeoutEndsStuckPeer(t *testing.T) {
	l := listen(t, wsock.Options{WriteTimeout: 500 * time.Millisecond}, false)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	small := func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}
	cc, err := wsock.DialWith(ctx, l.url, wsock.DialOptions{Net: &net.Dialer{Control: small}})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Abort()
	sc := <-l.conns
	sc.SetIdleTimeout(time.Minute)
	// 32 KiB: more than the device's window, less than the relay's send
	// buffer, so every write returns at once and the rest waits in the
	// kernel behind a zero window.
	frame := []byte(`"` + strings.Repeat("x", 4<<10) + `"`)
	for range 8 {
		if err := sc.WriteFrame(frame); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := sc.ReadFrame()
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("ReadFrame returned a frame")
		}
		t.Logf("the kernel ended the connection %s after the last write: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(20 * time.Second):
		t.Fatal("a peer that stopped reading kept its connection 20s past a 500ms write timeout")
	}
}
