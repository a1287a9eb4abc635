//go:build !linux

package pushclient

import (
	"errors"
	"syscall"
)

// Shape sets a socket's receive buffer and MSS before connect; it is only
// implemented on Linux, where the relay and its load tools run.
func Shape(rcvbuf, mss int) func(network, address string, c syscall.RawConn) error {
	return func(string, string, syscall.RawConn) error {
		return errors.New("pushclient: Shape is implemented on Linux only")
	}
}
