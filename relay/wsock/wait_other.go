//go:build !linux

package wsock

import (
	"context"
	"errors"
	"net"
	"syscall"
)

// Off Linux there is no poller: readers block inside gorilla.
func rawConn(net.Conn) syscall.RawConn { return nil }

func waitReadable(syscall.RawConn) error { return nil }

type poller struct{}

func newPoller() (*poller, error)               { return nil, errors.New("no poller on this platform") }
func (p *poller) run(ctx context.Context) error { <-ctx.Done(); return nil }
func (p *poller) close()                        {}
func (p *poller) arm(pollee) error              { return errors.New("no poller") }
func (p *poller) forget(pollee)                 {}
func socketFD(syscall.RawConn) int              { return -1 }
