package bench

import (
	"context"
	"runtime"
	"sync"
	"time"
)

// loadGroup is the throughput bench's load on several loadLoops, each an
// epoll loop on an OS thread of its own with its share of the posters,
// the devices and the messages: loop k drives devices k, k+n, k+2n, ...
// and its posters post only to them, so each loop matches its own posts
// with its own notifications. App servers and devices are other machines
// in a deployment: with one loop, the 201 a POST waits for also waits for
// every other response and notification the loop handles before it.
type loadGroup struct {
	loops []*loadLoop
}

// newLoadGroup shares out senders, devices, total and rate over threads
// loops (at most one per sender and one per device).
func newLoadGroup(endpoint string, devs []*benchDev, senders int, total int64, rate, threads int) (*loadGroup, error) {
	threads = max(1, min(threads, senders, len(devs)))
	g := &loadGroup{}
	before := int64(0) // senders of the loops before k
	for k := range threads {
		var ds []*benchDev
		for i := k; i < len(devs); i += threads {
			ds = append(ds, devs[i])
		}
		// Messages and rate in proportion to the loop's senders.
		n := share(int64(senders), threads, k)
		r := 0
		if rate > 0 {
			r = max(1, int(proportion(int64(rate), before, n, int64(senders))))
		}
		m := proportion(total, before, n, int64(senders))
		before += n
		l, err := newLoadLoop(endpoint, ds, int(n), m, r)
		if err != nil {
			g.close()
			return nil, err
		}
		g.loops = append(g.loops, l)
	}
	return g, nil
}

// proportion is the part of x for the n senders after the first before
// of all: the parts of consecutive runs of senders add up to x.
func proportion(x, before, n, all int64) int64 {
	return x*(before+n)/all - x*before/all
}

// share is part k of n of total, the remainder going to the first parts.
func share(total int64, n, k int) int64 {
	s := total / int64(n)
	if int64(k) < total%int64(n) {
		s++
	}
	return s
}

// run runs every loop and returns the first error.
func (g *loadGroup) run(ctx context.Context) error {
	errs := make([]error, len(g.loops))
	var wg sync.WaitGroup
	for i, l := range g.loops {
		wg.Go(func() {
			// One thread per loop: the point of several.
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			errs[i] = l.run(ctx)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// close closes the loops' sockets (run does it when it ends).
func (g *loadGroup) close() {
	for _, l := range g.loops {
		l.close()
	}
}

// The group's counters; safe while the loops run.
func (g *loadGroup) sent() int64   { return g.sum(func(l *loadLoop) int64 { return l.sent.Load() }) }
func (g *loadGroup) failed() int64 { return g.sum(func(l *loadLoop) int64 { return l.failed.Load() }) }
func (g *loadGroup) acked() int64  { return g.sum(func(l *loadLoop) int64 { return l.acked.Load() }) }

func (g *loadGroup) sum(f func(*loadLoop) int64) int64 {
	var n int64
	for _, l := range g.loops {
		n += f(l)
	}
	return n
}

// The group's results, once run has returned.

// postDone is when the last POST was answered (0: not all were).
func (g *loadGroup) postDone() time.Duration {
	var d time.Duration
	for _, l := range g.loops {
		if l.postDone == 0 {
			return 0
		}
		d = max(d, l.postDone)
	}
	return d
}

// postLatencies are every POST's, written → 201 read.
func (g *loadGroup) postLatencies() []time.Duration {
	var all []time.Duration
	for _, l := range g.loops {
		all = append(all, l.lat...)
	}
	return all
}

// deviceLatencies are every matched message's, POST written →
// notification read; early counts the notifications read before their
// 201, lostPosts and lostNotes the sightings never matched.
func (g *loadGroup) deviceLatencies() (lat []time.Duration, early, lostPosts, lostNotes int64) {
	for _, l := range g.loops {
		lat = append(lat, l.dev.lat...)
		early += l.dev.early
		p, n := l.dev.unmatched()
		lostPosts += p
		lostNotes += n
	}
	return lat, early, lostPosts, lostNotes
}
