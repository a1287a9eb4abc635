package upstream

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/store"
)

// held is one device's held session with the upstream.
type held struct {
	l      *Link
	id     store.UpstreamID
	cancel context.CancelFunc // ends run (the device is polled instead): cancels its context and aborts its connection

	// kick wakes run from its backoff, and the connect from its pacing: a
	// register waits for the session.
	kick chan struct{}
	// urgent is set with a kick that run's backoff took: the next
	// connect is not paced either.
	urgent atomic.Bool
	// done is closed when run ends.
	done chan struct{}
	// backoff is run's next backoff; only the goroutine running the
	// session touches it.
	backoff time.Duration

	mu sync.Mutex
	c  *pushclient.Client // nil while not connected
	// aborted is set when the session's context ends (abort): no
	// connection is kept open from then on.
	aborted bool
	// opened, once a request waits for the session, is closed when c is
	// set.
	opened chan struct{}
	// pending are the register and unregister replies awaited over c, by
	// type and channel ID; nil until the first.
	pending map[string]chan pushproto.ServerFrame
}

// errReset ends a held session whose UAID the upstream forgot.
var errReset = errors.New("upstream answered hello with another UAID")

// conn is one connection of a held session, open after its hello. Its
// reader parks on the link's poller while nothing arrives (Linux): a
// held session then costs no goroutine, only this state and the
// connection's.
type conn struct {
	c    *pushclient.Client
	in   *inbox
	aged *time.Timer // closes c after about MaxSessionAge
	// woke is set by the reader started by the poller's wake: Receive
	// comes first, the socket is not parked again unread.
	woke bool
}

// run connects, serves and reconnects after a jittered exponential
// backoff until ctx ends. It holds a count of l.wg that end releases,
// from whichever goroutine finishes the session: while the connection
// is parked no goroutine runs for it, and its wake starts one (resume).
func (h *held) run(ctx context.Context) {
	h.backoff = h.l.cfg.BackoffMin
	h.loop(ctx, nil)
}

// resume is the parked connection's wake: a new reader.
func (h *held) resume(ctx context.Context, s *conn) {
	s.woke = true
	h.loop(ctx, s)
}

// loop serves s (nil: connects first) and reconnects, until ctx ends or
// the connection parks.
func (h *held) loop(ctx context.Context, s *conn) {
	for {
		var helloed bool
		var err error
		if s == nil {
			s, helloed, err = h.open(ctx)
		}
		if s != nil {
			helloed = true
			var parked bool
			if parked, err = h.serve(ctx, s); parked {
				return
			}
			h.shut(s)
			s = nil
		}
		if !h.retry(ctx, helloed, err) {
			h.end()
			return
		}
	}
}

// end is the end of run.
func (h *held) end() {
	l := h.l
	l.mu.Lock()
	if l.sessions[h.id.Device] == h {
		delete(l.sessions, h.id.Device)
	}
	l.countLocked()
	l.mu.Unlock()
	close(h.done)
	h.cancel()
	l.wg.Done()
}

// retry waits out the backoff after a lost connection (or a failed
// connect), and reports whether to connect again.
func (h *held) retry(ctx context.Context, helloed bool, err error) bool {
	l := h.l
	if ctx.Err() != nil {
		return false
	}
	if errors.Is(err, errReset) {
		rerr := l.reset(ctx, h.id, resetUAID(err), "held")
		if rerr == nil {
			return false // the device is gone here; no session to hold
		}
		l.cfg.Logger.Error("upstream forgot the device's UAID; reset failed, trying again at the next hello", "uaid", h.id.Device, "upstream_uaid", h.id.Upstream, "err", rerr)
	}
	if helloed {
		h.backoff = l.cfg.BackoffMin
	}
	wait := jitter(h.backoff)
	l.cfg.Logger.Info("upstream session lost; reconnecting", "uaid", h.id.Device, "upstream_uaid", h.id.Upstream, "err", err, "in", wait)
	t := time.NewTimer(wait)
	select {
	case <-ctx.Done():
		t.Stop()
		return false
	case <-t.C:
	case <-h.kick:
		t.Stop()
		h.urgent.Store(true)
	}
	h.backoff = min(h.backoff*2, l.cfg.BackoffMax)
	return ctx.Err() == nil
}

// open connects and says hello. With s nil, helloed reports whether the
// hello was answered (a reset).
func (h *held) open(ctx context.Context) (s *conn, helloed bool, err error) {
	l := h.l
	if !h.urgent.Swap(false) {
		if err := l.pace.wait(ctx, h.kick); err != nil {
			return nil, false, err
		}
	}
	c, _, err := l.hello(ctx, h.id.Upstream.String(), pushclient.HelloOptions{})
	if err != nil {
		l.m.connects.With("error").Inc()
		return nil, false, err
	}
	l.m.connects.With("ok").Inc()
	if c.UAID != h.id.Upstream.String() {
		c.Abort()
		return nil, true, &resetError{got: c.UAID, was: h.id.Upstream}
	}
	if _, err := l.cfg.Store.Helloed(ctx, l.cfg.Now(), h.id.Device); err != nil {
		l.cfg.Logger.Warn("record upstream hello", "uaid", h.id.Device, "err", err)
	}
	// autopush pings every 300 s: a read times out only when the pings
	// stopped, not while the device merely gets nothing.
	c.ExtendOnPing(l.cfg.ReadTimeout)
	c.SetReadDeadline(time.Now().Add(l.cfg.ReadTimeout))
	// From here the end of ctx aborts c through abort, not a
	// context.AfterFunc of its own (the memory of a held session counts).
	h.mu.Lock()
	if h.aborted {
		h.mu.Unlock()
		c.Abort()
		return nil, true, ctx.Err()
	}
	s = &conn{c: c, in: &inbox{slots: make(chan struct{}, l.cfg.MaxInflight)}}
	// Say hello again now and then (a new connection).
	s.aged = time.AfterFunc(jitter(l.cfg.MaxSessionAge), func() { c.Close() })
	h.c = c
	if h.opened != nil {
		close(h.opened)
		h.opened = nil
	}
	h.mu.Unlock()
	l.m.open.Inc()
	return s, true, nil
}

// shut ends a connection serve returned from.
func (h *held) shut(s *conn) {
	s.c.Abort()
	// The ingester is done (and acks no more) before the next connect.
	s.in.wg.Wait()
	h.l.m.open.Dec()
	h.mu.Lock()
	h.c = nil
	for k, ch := range h.pending {
		close(ch)
		delete(h.pending, k)
	}
	h.mu.Unlock()
	s.aged.Stop()
	s.c.Abort()
}

// abort is the end of the session's context: the open connection is
// aborted (which wakes it if parked), and none is kept open after. The
// link calls it for every session when Run's context ends, and cancel
// for one session.
func (h *held) abort() {
	h.mu.Lock()
	h.aborted = true
	c := h.c
	h.mu.Unlock()
	if c != nil {
		c.Abort()
	}
}

// serve reads notifications and replies until the connection fails or
// ctx ends, or, with nothing to read, parks it (parked: its wake goes
// on, on a new goroutine).
func (h *held) serve(ctx context.Context, s *conn) (parked bool, err error) {
	l, c, in := h.l, s.c, s.in
	for {
		if !s.woke && !c.Pending() && c.Park(l.poller, func() { go h.resume(ctx, s) }) {
			return true, nil
		}
		s.woke = false
		f, ok, err := c.Receive()
		if err != nil {
			in.mu.Lock()
			if in.failed != nil {
				err = in.failed
			}
			in.mu.Unlock()
			return false, fmt.Errorf("read: %w", err)
		}
		if !ok {
			continue // a ping, answered
		}
		switch f.MessageType {
		case pushproto.TypeNotification:
			if err := h.put(ctx, in, c, f); err != nil {
				return false, err
			}
		case pushproto.TypeRegister, pushproto.TypeUnregister:
			h.mu.Lock()
			key := string(f.MessageType) + ":" + f.ChannelID
			if ch := h.pending[key]; ch != nil {
				ch <- f
				delete(h.pending, key)
			}
			h.mu.Unlock()
		}
		c.SetReadDeadline(time.Now().Add(l.cfg.ReadTimeout))
	}
}

// batchMax is the most notifications one Ingest call carries: autopush
// sends stored messages 10 at a time.
const batchMax = 10

// inbox is what the reader hands the session's ingester: notifications in
// arrival order, at most Config.MaxInflight of them.
type inbox struct {
	mu      sync.Mutex
	q       []pushproto.ServerFrame
	running bool  // an ingester goroutine is draining q
	failed  error // the first ingest or ack failure; nothing more is acked
	lastAck time.Time
	slots   chan struct{}
	wg      sync.WaitGroup
}

// put queues a notification, waiting for a slot while MaxInflight are in
// flight, and starts an ingester if none runs.
func (h *held) put(ctx context.Context, in *inbox, c *pushclient.Client, f pushproto.ServerFrame) error {
	select {
	case in.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.failed != nil {
		<-in.slots
		return in.failed
	}
	in.q = append(in.q, f)
	if !in.running {
		in.running = true
		in.wg.Go(func() { h.drain(ctx, in, c) })
	}
	return nil
}

// drain ingests what the inbox holds, batchMax at a time, acking each
// batch in one frame after its commit, until the inbox is empty. A
// failure stops the connection (the upstream sends the unacked ones
// again on the next).
func (h *held) drain(ctx context.Context, in *inbox, c *pushclient.Client) {
	for {
		in.mu.Lock()
		if len(in.q) == 0 || in.failed != nil {
			for range in.q {
				<-in.slots
			}
			in.q = nil
			in.running = false
			in.mu.Unlock()
			return
		}
		n := min(len(in.q), batchMax)
		batch := append([]pushproto.ServerFrame(nil), in.q[:n]...)
		in.q = append(in.q[:0], in.q[n:]...)
		in.mu.Unlock()
		err := h.deliver(ctx, c, batch)
		in.mu.Lock()
		in.lastAck = time.Now()
		in.mu.Unlock()
		for range batch {
			<-in.slots
		}
		if err != nil {
			in.mu.Lock()
			if in.failed == nil {
				in.failed = err
			}
			in.mu.Unlock()
			h.l.cfg.Logger.Info("upstream notifications not stored; dropping the session", "uaid", h.id.Device, "err", err)
			// A close frame, after the acks already written: the
			// upstream reads those first and re-sends only the rest.
			c.Close()
		}
	}
}

// deliver ingests a batch of notifications in one commit and acks upstream
// those now durable here, or dropped for good, in one frame. An error
// leaves the batch unacked.
func (h *held) deliver(ctx context.Context, c *pushclient.Client, fs []pushproto.ServerFrame) error {
	l := h.l
	acks := make([]pushproto.AckUpdate, 0, len(fs))
	ms := make([]push.Message, 0, len(fs))
	at := make([]int, 0, len(fs)) // index in fs of each of ms
	for i, f := range fs {
		ch, err := push.ParseChannelID(f.ChannelID)
		var data []byte
		if err == nil {
			data, err = base64.RawURLEncoding.DecodeString(strings.TrimRight(f.Data, "="))
		}
		if err != nil || f.Version == "" || len(f.Updates) > 0 {
			// Nothing here could ever store it; holding it upstream
			// would only block the batches behind it.
			l.m.messages.With("dropped_bad").Inc()
			l.cfg.Logger.Warn("upstream notification dropped: malformed", "uaid", h.id.Device, "channel", f.ChannelID, "err", err)
			acks = append(acks, pushproto.AckUpdate{ChannelID: f.ChannelID, Version: f.Version, Code: pushproto.AckOK})
			continue
		}
		m := push.Message{
			UAID: h.id.Device, Channel: ch,
			Origin:  push.UpstreamOrigin(h.id.Upstream, ch, f.Version),
			TTL:     l.cfg.TTL,
			Urgency: push.UrgencyNormal,
			Data:    data,
		}
		if f.Headers != nil {
			m.Encoding, m.Encryption, m.CryptoKey = f.Headers.Encoding, f.Headers.Encryption, f.Headers.CryptoKey
		}
		ms = append(ms, m)
		at = append(at, i)
	}
	var failed error
	if len(ms) > 0 {
		l.mu.Lock()
		ingester := l.in
		l.mu.Unlock()
		res, err := ingester.Ingest(ctx, ms)
		if err == nil && len(res) != len(ms) {
			err = fmt.Errorf("ingest returned %d results for %d messages", len(res), len(ms))
		}
		if err != nil {
			l.m.messages.With("not_stored").Add(float64(len(ms)))
			return fmt.Errorf("ingest: %w", err)
		}
		for j, r := range res {
			f := fs[at[j]]
			switch {
			case r.Err == nil && r.Duplicate:
				l.m.messages.With("duplicate").Inc()
			case r.Err == nil:
				l.m.messages.With("stored").Inc()
			case errors.Is(r.Err, relay.ErrNoSubscription):
				l.m.messages.With("dropped_unregistered").Inc()
			default:
				// Not acked: it comes again on the next connect.
				l.m.messages.With("not_stored").Inc()
				if failed == nil {
					failed = fmt.Errorf("ingest: %w", r.Err)
				}
				continue
			}
			acks = append(acks, pushproto.AckUpdate{ChannelID: f.ChannelID, Version: f.Version, Code: pushproto.AckOK})
		}
	}
	if len(acks) > 0 {
		if err := c.Send(pushproto.EncodeAck(acks)); err != nil {
			return fmt.Errorf("ack: %w", err)
		}
		l.m.acks.Add(float64(len(acks)))
	}
	return failed
}

// waitOpen waits until the session is open, waking it from its backoff,
// and reports whether it is; false when ctx ended or the session ended
// (the device is polled, or reset). A register waits for the held session
// rather than saying hello on a connection of its own: two connections
// with one UAID ghost each other upstream (autopush closes the older).
func (h *held) waitOpen(ctx context.Context) bool {
	for {
		h.mu.Lock()
		if h.c != nil {
			h.mu.Unlock()
			return true
		}
		if h.opened == nil {
			h.opened = make(chan struct{})
		}
		opened := h.opened
		h.mu.Unlock()
		select {
		case h.kick <- struct{}{}:
		default:
		}
		select {
		case <-opened:
		case <-h.done:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// request sends frame over the open connection and waits for the reply of
// type t for chid. ok is false when the session is not open (nothing was
// sent).
func (h *held) request(ctx context.Context, t pushproto.MessageType, chid string, frame []byte) (pushproto.ServerFrame, bool, error) {
	key := string(t) + ":" + chid
	rc := make(chan pushproto.ServerFrame, 1)
	h.mu.Lock()
	c := h.c
	if c == nil {
		h.mu.Unlock()
		return pushproto.ServerFrame{}, false, nil
	}
	if h.pending[key] != nil {
		h.mu.Unlock()
		return pushproto.ServerFrame{}, true, fmt.Errorf("upstream: a %s for %s is already waiting", t, chid)
	}
	if h.pending == nil {
		h.pending = map[string]chan pushproto.ServerFrame{}
	}
	h.pending[key] = rc
	h.mu.Unlock()
	fail := func(err error) (pushproto.ServerFrame, bool, error) {
		h.mu.Lock()
		if h.pending[key] == rc {
			delete(h.pending, key)
		}
		h.mu.Unlock()
		return pushproto.ServerFrame{}, true, err
	}
	if err := c.Send(frame); err != nil {
		return fail(fmt.Errorf("upstream: send %s: %w", t, err))
	}
	select {
	case f, ok := <-rc:
		if !ok {
			return pushproto.ServerFrame{}, true, fmt.Errorf("upstream: session lost before the %s reply", t)
		}
		return f, true, nil
	case <-ctx.Done():
		return fail(fmt.Errorf("upstream: waiting for the %s reply: %w", t, ctx.Err()))
	}
}
