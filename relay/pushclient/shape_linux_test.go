package pushclient_test

import (
	"context"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/pushclient"
)

// sockopt reads one integer socket option of a client's connection.
func sockopt(t *testing.T, c *pushclient.Client, level, opt int) int {
	t.Helper()
	raw, err := c.NetConn().(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := raw.Control(func(fd uintptr) { v, gerr = syscall.GetsockoptInt(int(fd), level, opt) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

// A client dialled with Shape has the small receive buffer and MSS it
// asked for, and speaks the protocol as any other.
func TestDialWithShape(t *testing.T) {
	e := newRelay(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pushclient.DialWith(ctx, e.url, pushclient.DialOptions{Net: &net.Dialer{Control: pushclient.Shape(4096, 1448)}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Abort()
	c.Timeout = 5 * time.Second
	if _, err := c.Hello("", pushclient.HelloOptions{}); err != nil {
		t.Fatal(err)
	}
	// Linux doubles SO_RCVBUF for its bookkeeping.
	if got := sockopt(t, c, syscall.SOL_SOCKET, syscall.SO_RCVBUF); got != 2*4096 {
		t.Errorf("SO_RCVBUF = %d, want %d", got, 2*4096)
	}
	if got := sockopt(t, c, syscall.IPPROTO_TCP, syscall.TCP_MAXSEG); got > 1448 {
		t.Errorf("TCP_MAXSEG = %d, want at most 1448", got)
	}

	// Without Shape, the kernel's defaults (far larger on loopback).
	plain := e.dial()
	if got := sockopt(t, plain, syscall.SOL_SOCKET, syscall.SO_RCVBUF); got <= 2*4096 {
		t.Errorf("unshaped SO_RCVBUF = %d, want the kernel's larger default", got)
	}
	if got := sockopt(t, plain, syscall.IPPROTO_TCP, syscall.TCP_MAXSEG); got <= 1448 {
		t.Errorf("unshaped TCP_MAXSEG = %d, want loopback's larger MSS", got)
	}
}
