package upstream

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/store"
)

// dev is what the link knows of one device identity while Run runs: it
// is held (Link.sessions has it) or polled (in Link.queue, or being
// polled).
type dev struct {
	id     store.UpstreamID
	active time.Time // last seen here: connected, left, registered
	online bool      // connected here now

	due      time.Time     // when its next poll is due
	idx      int           // index in Link.queue; -1 when not in it
	polling  bool          // a poll for it runs
	wantHeld bool          // hold it once the running poll ends
	backoff  time.Duration // after failed polls
}

// pollQueue is a min-heap of polled devices by due time.
type pollQueue []*dev

func (q pollQueue) Len() int           { return len(q) }
func (q pollQueue) Less(i, j int) bool { return q[i].due.Before(q[j].due) }
func (q pollQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].idx, q[j].idx = i, j
}
func (q *pollQueue) Push(x any) {
	d := x.(*dev)
	d.idx = len(*q)
	*q = append(*q, d)
}
func (q *pollQueue) Pop() any {
	old := *q
	d := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	d.idx = -1
	return d
}

const (
	// maxRounds bounds the connections one poll makes: a round that
	// drained something is confirmed by another; past this the device
	// is polled again soon (result "more").
	maxRounds = 4
	// drainedMany is the drained count past which a device is polled
	// again after an eighth of the interval: autopush deletes a UAID
	// whose backlog reaches msg_limit (150).
	drainedMany = 50
)

// activeID is an identity and when its device was last active here.
type activeID struct {
	store.UpstreamID
	active time.Time
}

// identities reads every upstream identity, the most recently active
// device first.
func (l *Link) identities() ([]activeID, error) {
	ids, err := l.cfg.Store.HelloedBefore(l.cfg.Now().Add(10*365*24*time.Hour), 0)
	if err != nil {
		return nil, err
	}
	out := make([]activeID, 0, len(ids))
	for _, id := range ids {
		a := activeID{UpstreamID: id, active: id.Helloed}
		d, ok, err := l.cfg.Store.Device(id.Device)
		if err != nil {
			return nil, err
		}
		if ok && d.LastSeen.After(a.active) {
			a.active = d.LastSeen
		}
		out = append(out, a)
	}
	slices.SortStableFunc(out, func(a, b activeID) int { return b.active.Compare(a.active) })
	return out, nil
}

// add makes id known to the running link: held if a session is free, or
// if online (the device is connected here) by taking the place of the
// least recently active held device not connected here; else polled.
func (l *Link) add(id store.UpstreamID, active time.Time, online bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ctx == nil || l.stopped {
		return
	}
	d := l.devs[id.Device]
	if d == nil {
		d = &dev{id: id, active: active, idx: -1}
		l.devs[id.Device] = d
	}
	d.id = id
	if active.After(d.active) {
		d.active = active
	}
	if online {
		d.online = true
	}
	if l.sessions[id.Device] != nil || d.polling || d.idx >= 0 {
		if online {
			l.promoteLocked(d)
		}
		return
	}
	if (online && l.promoteLocked(d)) || (!online && len(l.sessions) < l.cfg.MaxSessions && l.holdLocked(d)) {
		return
	}
	// First polls spread over one interval.
	l.duePollLocked(d, time.Now().Add(rand.N(l.cfg.PollInterval)))
}

// DeviceOnline tells the link that u connected here (relay.
// PresenceWatcher): a polled device is held from now, in place of the
// least recently active held device not connected here.
func (l *Link) DeviceOnline(u push.UAID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := l.devs[u]
	if d == nil || l.stopped {
		return
	}
	d.online, d.active = true, l.cfg.Now()
	l.promoteLocked(d)
}

// DeviceOffline tells the link that u left (relay.PresenceWatcher).
func (l *Link) DeviceOffline(u push.UAID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if d := l.devs[u]; d != nil {
		d.online, d.active = false, l.cfg.Now()
	}
}

// promoteLocked holds d if it is not, evicting the least recently active
// held device not connected here when MaxSessions are held. It reports
// whether d is held (or will be once its running poll ends).
func (l *Link) promoteLocked(d *dev) bool {
	if l.sessions[d.id.Device] != nil {
		return true
	}
	if d.polling {
		d.wantHeld = true
		return true
	}
	if len(l.sessions) >= l.cfg.MaxSessions {
		var victim *dev
		for u := range l.sessions {
			v := l.devs[u]
			if v != nil && !v.online && (victim == nil || v.active.Before(victim.active)) {
				victim = v
			}
		}
		if victim == nil {
			return false
		}
		l.demoteLocked(victim)
	}
	return l.holdLocked(d)
}

// demoteLocked ends d's held session: it is polled from now (first one
// interval on, the session having just drained it).
func (l *Link) demoteLocked(d *dev) {
	h := l.sessions[d.id.Device]
	delete(l.sessions, d.id.Device)
	h.cancel()
	l.m.demotions.Inc()
	l.duePollLocked(d, time.Now().Add(l.nextInterval()))
}

// holdLocked starts d's held session.
func (l *Link) holdLocked(d *dev) bool {
	if l.ctx == nil || l.stopped {
		return false
	}
	if d.idx >= 0 {
		heap.Remove(&l.queue, d.idx)
	}
	ctx, cancel := context.WithCancel(l.ctx)
	h := &held{l: l, id: d.id, kick: make(chan struct{}, 1), done: make(chan struct{})}
	h.cancel = func() {
		cancel()
		h.abort()
	}
	l.sessions[d.id.Device] = h
	l.countLocked()
	l.wg.Add(1) // released by h's end
	go h.run(ctx)
	return true
}

// duePollLocked schedules d's next poll at at.
func (l *Link) duePollLocked(d *dev, at time.Time) {
	d.due = at
	if d.idx >= 0 {
		heap.Fix(&l.queue, d.idx)
	} else {
		heap.Push(&l.queue, d)
	}
	l.countLocked()
	select {
	case l.pollKick <- struct{}{}:
	default:
	}
}

// countLocked updates the polled gauge.
func (l *Link) countLocked() {
	l.m.polled.Set(float64(l.polledLocked()))
}

// forgetLocked drops u's record: its identity is gone (reset). A held
// session of it ends by itself; a running poll does not schedule it again.
func (l *Link) forgetLocked(u push.UAID) {
	d := l.devs[u]
	if d == nil {
		return
	}
	if d.idx >= 0 {
		heap.Remove(&l.queue, d.idx)
	}
	delete(l.devs, u)
	l.countLocked()
}

func (l *Link) polledLocked() int {
	return len(l.queue) + l.polling
}

// nextInterval is PollInterval jittered by a tenth either way: devices
// polled together drift apart.
func (l *Link) nextInterval() time.Duration {
	i := l.cfg.PollInterval
	return i - i/10 + rand.N(i/5+1)
}

// Polled reports how many devices are polled instead of held, and the
// latest poll's lag behind its due time.
func (l *Link) Polled() (n int, lag time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.polledLocked(), l.lastLag
}

// schedulePolls starts each polled device's poll when due, at most
// MaxPolls at once, until ctx ends.
func (l *Link) schedulePolls(ctx context.Context) {
	slots := make(chan struct{}, l.cfg.MaxPolls)
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		var d *dev
		var lag time.Duration
		for d == nil {
			wait := time.Hour
			l.mu.Lock()
			now := time.Now()
			if len(l.queue) > 0 {
				if top := l.queue[0]; !top.due.After(now) {
					d = heap.Pop(&l.queue).(*dev)
					d.polling = true
					l.polling++
					lag = now.Sub(d.due)
					l.lastLag = lag
				} else {
					wait = top.due.Sub(now)
				}
			}
			l.mu.Unlock()
			if d != nil {
				break
			}
			t.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-l.pollKick:
			}
		}
		l.m.pollLag.Observe(lag.Seconds())
		l.wg.Go(func() {
			defer func() { <-slots }()
			l.pollDev(ctx, d)
		})
	}
}

// pollDev polls d and schedules its next poll (or holds it, if it came
// online meanwhile).
func (l *Link) pollDev(ctx context.Context, d *dev) {
	l.mu.Lock()
	id := d.id
	l.mu.Unlock()
	result, n, err := l.poll(ctx, id)
	l.mu.Lock()
	defer l.mu.Unlock()
	d.polling = false
	l.polling--
	if ctx.Err() != nil {
		return
	}
	l.m.polls.With(result).Inc()
	log := l.cfg.Logger.With("uaid", id.Device, "upstream_uaid", id.Upstream, "result", result, "drained", n)
	var next time.Duration
	switch result {
	case "reset":
		// l.reset forgot the device (forgetLocked); it was logged there.
		l.countLocked()
		return
	case "error":
		d.backoff = min(max(d.backoff*2, l.cfg.BackoffMin), l.cfg.BackoffMax)
		next = jitter(d.backoff)
		log.Info("upstream poll failed; polling again", "err", err, "in", next)
	case "more":
		d.backoff = 0
		next = jitter(l.cfg.BackoffMin)
		log.Info("upstream poll rounds exhausted with messages still coming; polling again", "in", next)
	default:
		d.backoff = 0
		next = l.nextInterval()
		if n >= drainedMany {
			next = l.cfg.PollInterval / 8
			log.Info("upstream poll drained many; polling again sooner", "in", next)
		}
	}
	if d.wantHeld {
		d.wantHeld = false
		if l.promoteLocked(d) {
			return
		}
	}
	if l.devs[id.Device] == d && l.sessions[id.Device] == nil && !l.stopped {
		l.duePollLocked(d, time.Now().Add(next))
	}
	l.countLocked()
}

// poll drains id's messages upstream: rounds of connect, hello, drain,
// until one confirms the upstream holds nothing more. result is "empty"
// or "drained" (confirmed), "more" (maxRounds did not confirm), "reset"
// or "error"; n counts the notifications read.
func (l *Link) poll(ctx context.Context, id store.UpstreamID) (result string, n int, err error) {
	for range maxRounds {
		l.m.pollRounds.Inc()
		got, confirmed, err := l.pollRound(ctx, id)
		n += got
		switch {
		case errors.Is(err, errReset):
			if rerr := l.reset(ctx, id, resetUAID(err), "poll"); rerr != nil {
				return "error", n, rerr
			}
			return "reset", n, err
		case err != nil:
			return "error", n, err
		case confirmed && n == 0:
			return "empty", n, nil
		case confirmed:
			return "drained", n, nil
		}
	}
	return "more", n, nil
}

// pollRound is one connection of a poll. Right after the hello it sends
// the {} ping, which autopush answers for the first time on every
// connection. autopush answers each client message (the hello included)
// in full before it reads the next: the hello's answer carries the
// first stored batch, so a {} answered before any notification confirms
// that nothing was stored. Notifications before the answer (or after
// it) mean maybe more: each batch is stored and acked as a held
// session's are, which makes autopush send the next; once nothing came
// for settle after the last ack the round closes and another confirms.
func (l *Link) pollRound(ctx context.Context, id store.UpstreamID) (n int, confirmed bool, err error) {
	if err := l.pace.wait(ctx, nil); err != nil {
		return 0, false, err
	}
	c, _, err := l.hello(ctx, id.Upstream.String(), pushclient.HelloOptions{})
	if err != nil {
		return 0, false, fmt.Errorf("upstream: %w", err)
	}
	defer c.Abort()
	stop := context.AfterFunc(ctx, func() { c.Abort() })
	defer stop()
	if c.UAID != id.Upstream.String() {
		return 0, false, &resetError{got: c.UAID, was: id.Upstream}
	}
	if _, err := l.cfg.Store.Helloed(ctx, l.cfg.Now(), id.Device); err != nil {
		l.cfg.Logger.Warn("record upstream hello", "uaid", id.Device, "err", err)
	}
	if err := c.Send(pushproto.PingReply); err != nil {
		return 0, false, fmt.Errorf("upstream: ping: %w", err)
	}
	pinged := time.Now()

	frames := make(chan pushproto.ServerFrame)
	readErr := make(chan error, 1)
	quit := make(chan struct{})
	var rwg sync.WaitGroup
	rwg.Go(func() {
		for {
			f, err := c.Read(time.Time{})
			if err != nil {
				readErr <- err
				return
			}
			select {
			case frames <- f:
			case <-quit:
				return
			}
		}
	})
	h := &held{l: l, id: id}
	in := &inbox{slots: make(chan struct{}, l.cfg.MaxInflight)}
	defer func() {
		c.Abort()
		close(quit)
		rwg.Wait()
		in.wg.Wait()
	}()
	answered, settle := false, time.Duration(0)
	t := time.NewTimer(l.cfg.RequestTimeout)
	defer t.Stop()
	for {
		select {
		case f := <-frames:
			switch f.MessageType {
			case pushproto.TypeNotification:
				n++
				if err := h.put(ctx, in, c, f); err != nil {
					return n, false, err
				}
			case pushproto.TypePing:
				if answered {
					continue
				}
				answered = true
				if n == 0 {
					// Nothing was stored at the hello.
					c.Close()
					return 0, true, nil
				}
				// Twice the ping's round trip (which includes the
				// upstream's storage read) for the next batch.
				settle = min(max(2*time.Since(pinged), 10*time.Millisecond), time.Second)
			default:
				continue
			}
			if answered {
				t.Reset(settle)
			} else {
				t.Reset(l.cfg.RequestTimeout)
			}
		case err := <-readErr:
			if f := in.failure(); f != nil {
				err = f
			}
			return n, false, fmt.Errorf("upstream: read: %w", err)
		case <-t.C:
			if !answered {
				return n, false, errors.New("upstream: the {} ping was not answered")
			}
			busy, lastAck, failed := in.state()
			if failed != nil {
				return n, false, failed
			}
			if busy {
				t.Reset(settle)
				continue
			}
			if since := time.Since(lastAck); since < settle {
				t.Reset(settle - since)
				continue
			}
			// Acks are written; the close frame follows them.
			c.Close()
			return n, false, nil
		case <-ctx.Done():
			return n, false, ctx.Err()
		}
	}
}

// failure is the inbox's first ingest or ack failure, if any.
func (in *inbox) failure() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.failed
}

// state reports whether notifications wait to be stored and acked, when
// the latest ack was sent, and the first failure.
func (in *inbox) state() (busy bool, lastAck time.Time, failed error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.running || len(in.q) > 0, in.lastAck, in.failed
}
