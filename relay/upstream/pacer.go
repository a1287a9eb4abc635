package upstream

import (
	"context"
	"sync"
	"time"
)

// pacer spaces events (connects to the upstream) at least every apart,
// across all callers: after an outage thousands of sessions reconnect in
// a steady stream instead of a stampede.
type pacer struct {
	every time.Duration
	mu    sync.Mutex
	next  time.Time // the earliest time the next event may happen
}

// wait returns when the caller's turn comes, or ctx's error first (the
// turn is then lost, which only spaces the others more). A receive from
// skip (nil: none) ends the wait at once: a device waits for that connect.
func (p *pacer) wait(ctx context.Context, skip <-chan struct{}) error {
	if p.every <= 0 {
		return ctx.Err()
	}
	p.mu.Lock()
	now := time.Now()
	at := p.next
	if at.Before(now) {
		at = now
	}
	p.next = at.Add(p.every)
	p.mu.Unlock()
	d := at.Sub(now)
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-skip:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
