package pushclient

import (
	"fmt"
	"syscall"
)

// Shape returns a net.Dialer Control function that sets a socket's receive
// buffer (SO_RCVBUF, bytes; the kernel doubles it for its bookkeeping) and
// its maximum segment size (TCP_MAXSEG, announced in the SYN) before
// connect, where they decide the window scale and the segments the peer
// sends. Zero leaves either at the kernel's choice. A device that stops
// reading with a small window makes its peer's writes block instead of
// disappearing into loopback's 64 KiB segments and large buffers.
func Shape(rcvbuf, mss int) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if rcvbuf > 0 {
				if e := syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf); e != nil {
					serr = fmt.Errorf("SO_RCVBUF %d: %w", rcvbuf, e)
					return
				}
			}
			if mss > 0 {
				if e := syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_MAXSEG, mss); e != nil {
					serr = fmt.Errorf("TCP_MAXSEG %d: %w", mss, e)
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}
