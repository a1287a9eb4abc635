package wsock

import (
	"net"
	"syscall"
	"time"
)

// tcpUserTimeout is TCP_USER_TIMEOUT (linux/tcp.h), which package syscall
// does not name.
const tcpUserTimeout = 0x12

// setUserTimeout bounds how long data the relay wrote may stay in the
// kernel unacknowledged, or stuck behind a zero window, before the kernel
// drops the connection (TCP_USER_TIMEOUT; zero-window probing counts since
// Linux 5.11). A write that the kernel's buffer absorbed never blocks, so
// without it a device that stopped reading, or whose network vanished,
// after the relay's last write would hold its connection, and the frames
// in the kernel, until the next keepalive ping timed out (minutes). With
// it such a device is cut off within d like one whose write blocked, and
// its reader sees the error.
func setUserTimeout(c *net.TCPConn, d time.Duration) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout, int(d.Milliseconds()))
	})
	if err != nil {
		return err
	}
	return serr
}
