//go:build linux

package wsock

import (
	"errors"
	"net"
	"syscall"
)

// rawConn returns the raw socket of a plain TCP connection, or nil (TLS,
// or anything else) when readers must block inside gorilla instead.
func rawConn(c net.Conn) syscall.RawConn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// waitReadable parks until the socket has a byte to read (or EOF, or an
// error, or the read deadline), without consuming anything: it peeks.
// A socket error is not returned here: the read that follows reports it.
func waitReadable(rc syscall.RawConn) error {
	return rc.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return !errors.Is(err, syscall.EAGAIN) // EAGAIN: not yet, park on the poller
	})
}
