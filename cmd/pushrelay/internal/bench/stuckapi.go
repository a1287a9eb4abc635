package bench

import (
	"context"
	"io"
	"sync/atomic"
	"time"

	"github.com/pushrelay/pushrelay/cmd/pushrelay/internal/relayproc"
)

// StuckOptions shape the stuck devices of bench stuck, for the end-to-end
// tests that load a relay with them.
type StuckOptions struct {
	Stored, Direct int // messages per device: kept (TTL 60) and TTL 0
	Size           int // payload bytes
	RcvBuf, MSS    int // the devices' socket receive buffer and MSS
	Posters        int // app servers posting at once
}

func (o StuckOptions) opts() stuckOpts {
	return stuckOpts{stored: o.Stored, direct: o.Direct, size: o.Size, rcvbuf: o.RcvBuf, mss: o.MSS, posters: o.Posters}
}

// StuckDevices are devices that said hello and registered, and then never
// read again.
type StuckDevices struct {
	devs []*stuckDev
	o    stuckOpts
}

// ConnectStuck connects n stuck devices to p; progress goes to log. On an
// error the devices connected so far are returned too, for Abort.
func ConnectStuck(ctx context.Context, p *relayproc.Proc, n int, o StuckOptions, log io.Writer) (*StuckDevices, error) {
	devs, err := connectStuck(ctx, &child{p}, n, o.opts(), log)
	return &StuckDevices{devs: devs, o: o.opts()}, err
}

// Post posts each device its messages through the endpoint listener at
// endpoint, until all are posted or until, counting the 201s in posted
// and the rest in failed.
func (s *StuckDevices) Post(ctx context.Context, endpoint string, until time.Time, posted, failed *atomic.Int64) {
	postStuck(ctx, endpoint, s.devs, s.o, until, posted, failed)
}

// Abort drops every device's connection.
func (s *StuckDevices) Abort() {
	for _, d := range s.devs {
		d.cl.Abort()
	}
}
