//go:build !linux

package wsock

import (
	"net"
	"syscall"
)

// rawConn: readers block inside gorilla on platforms other than Linux.
func rawConn(net.Conn) syscall.RawConn { return nil }

func waitReadable(syscall.RawConn) error { return nil }
