//go:build !linux

package bench

import (
	"context"
	"errors"
	"sync/atomic"
	"time"
)

// loadLoop needs epoll; elsewhere the throughput bench is not available.
type loadLoop struct {
	sent, failed, acked atomic.Int64
	lat                 []time.Duration
	dev                 *deliveries
	postDone            time.Duration
}

func newLoadLoop(string, []*benchDev, int, int64, int) (*loadLoop, error) {
	return nil, errors.New("bench throughput needs Linux (epoll)")
}

func (l *loadLoop) run(context.Context) error { return nil }

func (l *loadLoop) close() {}
