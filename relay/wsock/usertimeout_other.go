//go:build !linux

package wsock

import (
	"net"
	"time"
)

// setUserTimeout is TCP_USER_TIMEOUT on Linux; elsewhere the keepalive
// ping's timeout is the bound.
func setUserTimeout(*net.TCPConn, time.Duration) error { return nil }
