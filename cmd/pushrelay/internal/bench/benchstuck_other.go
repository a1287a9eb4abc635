//go:build !linux

package bench

import (
	"context"
	"errors"
	"net"
)

// vanishLab needs Linux network namespaces.
type vanishLab struct{}

const vanishRelayAddr = "10.78.0.1"

func newVanishLab() (*vanishLab, error) { return nil, errors.New("--vanish needs Linux") }

func (l *vanishLab) close()      {}
func (l *vanishLab) drop() error { return errors.New("--vanish needs Linux") }

func (l *vanishLab) dialer(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return d.DialContext
}
