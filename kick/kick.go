// Package kick wakes devices that sleep: when a message that may wake a
// device (urgency normal or high) is stored while the device has no
// session, the kicker sends one small UDP datagram to the device's wake
// address, and again with backoff while the message waits and the device
// stays away. The device reconnects, says hello and drains.
//
// Where to send is the device's wake record (the store's wake blob): the
// address its authenticated STUN requests came from (see discovery), fresh
// for a binding TTL, or the wakeup_hostport of its hello when that lies
// inside the configured ranges. Nothing else is ever sent anything.
//
// A sleeping device costs its stored row, and while it refreshes its STUN
// binding from the same address, one small entry in memory until the next
// flush (see seen): such a refresh writes nothing at once, so sleeping
// devices do not wear the gateway's flash. A device with a wake due
// costs one small entry in a heap that a single goroutine (Run) serves;
// global and per-target token buckets bound the datagrams sent, and every
// datagram, deferral and drop is counted with its reason.
//
// The Kicker also implements the relay's Waker (hello, push, connect) and
// discovery's Registry (STUN keys and bindings).
package kick

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pushrelay/pushrelay/discovery"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/store"
)

// Store is what the kicker needs from durable storage.
type Store interface {
	UpdateWake(ctx context.Context, u push.UAID, create bool, fn func(old []byte) ([]byte, error)) error
	Messages(u push.UAID, afterSeq uint64, limit int) ([]store.Message, error)
	WakeStates(us []push.UAID, fn func(i int, ok bool, wake []byte, waiting bool)) error
	UpdateWakes(ctx context.Context, us []push.UAID, fn func(i int, old []byte) []byte) (int, error)
	EachWake(fn func(u push.UAID, wake []byte)) error
}

// Sender sends one datagram. discovery.Server sends from the STUN socket,
// so a NAT that mapped the device's STUN requests lets the datagram in;
// UDPSender sends from any socket (when STUN is off).
type Sender interface {
	WriteTo(b []byte, to netip.AddrPort) error
}

// UDPSender sends wake datagrams from a plain UDP socket.
type UDPSender struct{ Conn *net.UDPConn }

// WriteTo sends b to to.
func (s UDPSender) WriteTo(b []byte, to netip.AddrPort) error {
	_, err := s.Conn.WriteToUDPAddrPort(b, to)
	return err
}

// device reads what the store holds for u: whether it has a record and
// whether a message waits for it (one seek, not a count).
func (k *Kicker) device(u push.UAID) (ok, waiting bool, err error) {
	err = k.cfg.Store.WakeStates([]push.UAID{u}, func(_ int, o bool, _ []byte, w bool) { ok, waiting = o, w })
	return ok, waiting, err
}

// Presence is what the kicker asks the hub: whether a device is online
// (then it is not woken), and to treat a device that proved its address
// while connected as accepted for wake.
type Presence interface {
	Online(u push.UAID) bool
	WakeProven(u push.UAID)
}

// Config configures a Kicker. Zero values take the defaults in
// parentheses.
type Config struct {
	Store  Store
	Sender Sender
	Keys   *Keys
	Ranges Ranges
	// STUNAddr is the STUN listener's address as devices reach it, told
	// to them at hello; empty when STUN is off.
	STUNAddr string

	BindingTTL  time.Duration // a STUN-verified address stays fresh this long (2m)
	Interval    time.Duration // the first retry comes after this; each doubles (10s)
	MaxBackoff  time.Duration // retries are never further apart (5m)
	Rate        float64       // datagrams per second, all devices (1000); <0 unlimited
	Burst       int           // (Rate/10, at least 10)
	TargetRate  float64       // datagrams per second to one IP (1); <0 unlimited
	TargetBurst int           // (3)
	MaxPending  int           // devices with a wake due (1,000,000); more are dropped
	MaxTargets  int           // per-target table size (65536)

	// FlushInterval is how often the freshness of bindings refreshed in
	// place, held in memory, is written to the store in one transaction
	// (1h). MaxFresh bounds how many devices memory holds it for
	// (100,000); past it a refresh is written at once and a flush starts.
	FlushInterval time.Duration
	MaxFresh      int

	// OnBound, if set, hears of every binding this kicker accepted for
	// u: an authenticated STUN request (a move or a refresh in place),
	// or a hello accepted for wake. In a site (relay/site) it makes this
	// member the device's one wake owner. It runs on the STUN server's
	// goroutine or the hello's: it must not block.
	OnBound func(u push.UAID)

	Logger  *slog.Logger
	Metrics *metrics.Registry
	Now     func() time.Time
}

func (c *Config) setDefaults() {
	if c.BindingTTL <= 0 {
		c.BindingTTL = 2 * time.Minute
	}
	if c.Interval <= 0 {
		c.Interval = 10 * time.Second
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 5 * time.Minute
	}
	if c.MaxBackoff < c.Interval {
		c.MaxBackoff = c.Interval
	}
	if c.Rate == 0 {
		c.Rate = 1000
	}
	if c.Burst <= 0 {
		c.Burst = max(10, int(c.Rate/10))
	}
	if c.TargetRate == 0 {
		c.TargetRate = 1
	}
	if c.TargetBurst <= 0 {
		c.TargetBurst = 3
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 1_000_000
	}
	if c.MaxTargets <= 0 {
		c.MaxTargets = 65536
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = time.Hour
	}
	if c.MaxFresh <= 0 {
		c.MaxFresh = 100_000
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// entry is a device with a wake due.
type entry struct {
	u        push.UAID
	until    time.Time // its messages expire then; zero: look them up
	next     time.Time // when to send
	lastSent time.Time
	attempts int
	counter  uint64 // last authenticated counter sent
	index    int    // in the heap; -1 while handled
	fresh    bool   // Wake was called while it was handled
}

// Kicker sends wake datagrams. Run serves it; Close stops it.
type Kicker struct {
	cfg      Config
	m        *kickMetrics
	presence Presence

	mu      sync.Mutex
	pending map[push.UAID]*entry
	queue   entryHeap
	poke    chan struct{}

	// Only Run's goroutine uses these.
	global  bucket
	targets *targets
	mac     *macer
	due     []*entry
	snaps   []entry
	us      []push.UAID
	states  []state
	free    chan []datagram // batches back from the sender

	// fresh holds the bindings refreshed in place since they were last
	// written (see seen); at most MaxFresh entries, each a device with a
	// stored record. Flush empties it; flushMu serialises flushes.
	fmu      sync.Mutex
	fresh    map[push.UAID]seen
	flushMu  sync.Mutex
	flushNow chan struct{}
	// Stamps (Unix ms) a request must pass, whatever the store holds:
	// start, the process's start; floor, to move a binding that an earlier
	// process may have refreshed in memory only, the start plus
	// restartHold.
	start, floor int64

	ctx       context.Context
	cancel    context.CancelFunc
	closeOnce sync.Once
	closeErr  error
}

// New returns a Kicker; it sends nothing until Run.
func New(cfg Config) (*Kicker, error) {
	if cfg.Store == nil || cfg.Sender == nil || cfg.Keys == nil {
		return nil, errors.New("kick: Store, Sender and Keys are required")
	}
	cfg.setDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	return &Kicker{
		cfg:      cfg,
		m:        newKickMetrics(metrics.OrNew(cfg.Metrics)),
		pending:  make(map[push.UAID]*entry),
		poke:     make(chan struct{}, 1),
		targets:  newTargets(cfg.TargetRate, cfg.TargetBurst, cfg.MaxTargets),
		mac:      newMacer(),
		free:     make(chan []datagram, 4),
		fresh:    make(map[push.UAID]seen),
		flushNow: make(chan struct{}, 1),
		start:    cfg.Now().UnixMilli(),
		floor:    cfg.Now().Add(restartHold).UnixMilli(),
		ctx:      ctx,
		cancel:   cancel,
	}, nil
}

// SetPresence connects the kicker to the hub; call it before Run.
func (k *Kicker) SetPresence(p Presence) { k.presence = p }

func (k *Kicker) online(u push.UAID) bool {
	return k.presence != nil && k.presence.Online(u)
}

// Wake schedules a wake for u (relay.Waker). A device with a wake already
// due is not sent another datagram for it, unless the last one went out an
// Interval or more ago. It never blocks.
func (k *Kicker) Wake(u push.UAID, until time.Time) { k.wake(u, until, 0) }

// WakeAfter schedules a wake for u as Wake does, but no datagram goes
// before delay has passed, even for a wake already due: a site member
// that holds u's binding while another member may hold u's session
// gives that session time to take the message (and its ack time to come
// back through the site's log: the kicker then finds nothing waiting and
// sends nothing). It never blocks.
func (k *Kicker) WakeAfter(u push.UAID, until time.Time, delay time.Duration) {
	k.wake(u, until, max(delay, 0))
}

func (k *Kicker) wake(u push.UAID, until time.Time, delay time.Duration) {
	now := k.cfg.Now()
	notBefore := now.Add(delay)
	k.mu.Lock()
	if e := k.pending[u]; e != nil {
		switch {
		case until.IsZero() || e.until.IsZero():
			e.until = time.Time{}
		case until.After(e.until):
			e.until = until
		}
		if e.index < 0 {
			e.fresh = true
		} else {
			next := e.next
			if soon := e.lastSent.Add(k.cfg.Interval); e.attempts > 0 && soon.Before(next) {
				// A new message: try again soon, from the start of the
				// backoff.
				next = maxTime(soon, now)
				e.attempts = 0
			}
			if delay > 0 && next.Before(notBefore) {
				next = notBefore
			}
			if !next.Equal(e.next) {
				e.next = next
				heap.Fix(&k.queue, e.index)
			}
		}
		k.mu.Unlock()
		k.signal()
		return
	}
	if len(k.pending) >= k.cfg.MaxPending {
		k.mu.Unlock()
		k.m.dropped.With("queue_full").Inc()
		return
	}
	e := &entry{u: u, until: until, next: notBefore}
	k.pending[u] = e
	heap.Push(&k.queue, e)
	k.m.pending.Set(float64(len(k.pending)))
	k.mu.Unlock()
	k.signal()
}

// Drop forgets u's wake addresses (the proven one and the claimed one)
// and any wake due for it: in a site, another member became the device's
// wake owner (relay/site), so this one must never wake it. A device this
// store does not hold is no error. A later binding here starts again.
func (k *Kicker) Drop(ctx context.Context, u push.UAID) error {
	k.mu.Lock()
	if e := k.pending[u]; e != nil {
		k.remove(e)
		k.m.finished.With("owner_moved").Inc()
	}
	k.mu.Unlock()
	// Most devices a site's other member owns never had a binding here:
	// a read tells, and spares a store commit.
	var holds bool
	if err := k.cfg.Store.WakeStates([]push.UAID{u}, func(_ int, ok bool, wake []byte, _ bool) {
		r, err := decodeRecord(wake)
		holds = ok && (err != nil || r.verified.IsValid() || r.claimed.IsValid())
	}); err != nil {
		return fmt.Errorf("kick: drop wake binding: %w", err)
	}
	if !holds {
		return nil
	}
	err := k.cfg.Store.UpdateWake(ctx, u, false, func(old []byte) ([]byte, error) {
		r, err := decodeRecord(old)
		if err == nil && !r.verified.IsValid() && !r.claimed.IsValid() {
			return old, nil // nothing to forget (an empty blob too)
		}
		if err != nil {
			r = record{}
		}
		// The stamp stays: a replay of an older request is still one.
		r.claimed, r.claimedAt, r.network = netip.AddrPort{}, time.Time{}, ""
		r.verified, r.verifiedAt = netip.AddrPort{}, time.Time{}
		return r.encode(), nil
	})
	k.fmu.Lock()
	if _, ok := k.fresh[u]; ok {
		delete(k.fresh, u)
		k.m.fresh.Set(float64(len(k.fresh)))
	}
	k.fmu.Unlock()
	if err != nil && !errors.Is(err, store.ErrNoDevice) {
		return fmt.Errorf("kick: drop wake binding: %w", err)
	}
	k.m.bindings.With("dropped").Inc()
	return nil
}

// Bindings calls fn with every device this kicker holds a wake binding
// for in its store (a proven or claimed address): what a site member
// owns after a restart. It reads every device record.
func (k *Kicker) Bindings(fn func(u push.UAID)) error {
	err := k.cfg.Store.EachWake(func(u push.UAID, wake []byte) {
		if r, err := decodeRecord(wake); err == nil && (r.verified.IsValid() || r.claimed.IsValid()) {
			fn(u)
		}
	})
	if err != nil {
		return fmt.Errorf("kick: wake bindings: %w", err)
	}
	return nil
}

// DropStored forgets the addresses of every binding in the store (not
// those proven here since the last flush, which are still in memory),
// keeping each device's replay stamp, in commits of up to 1,000 devices,
// and returns how many it forgot; it keeps those keep reports true for
// (nil keeps none). A site member whose store was replaced by another
// member's snapshot calls it: the bindings in that file are the other
// member's, proven to its socket.
func (k *Kicker) DropStored(ctx context.Context, keep func(push.UAID) bool) (int, error) {
	var us []push.UAID
	if err := k.Bindings(func(u push.UAID) {
		if keep == nil || !keep(u) {
			us = append(us, u)
		}
	}); err != nil {
		return 0, err
	}
	dropped := 0
	for len(us) > 0 {
		batch := us[:min(len(us), 1000)]
		us = us[len(batch):]
		n, err := k.cfg.Store.UpdateWakes(ctx, batch, func(_ int, old []byte) []byte {
			r, err := decodeRecord(old)
			if err != nil || (!r.verified.IsValid() && !r.claimed.IsValid()) {
				return nil
			}
			r.claimed, r.claimedAt, r.network = netip.AddrPort{}, time.Time{}, ""
			r.verified, r.verifiedAt = netip.AddrPort{}, time.Time{}
			return r.encode()
		})
		dropped += n
		if err != nil {
			return dropped, fmt.Errorf("kick: drop stored bindings: %w", err)
		}
	}
	k.m.bindings.With("dropped").Add(float64(dropped))
	return dropped, nil
}

// Connected stops waking u: it said hello (relay.Waker).
func (k *Kicker) Connected(u push.UAID) {
	k.mu.Lock()
	e := k.pending[u]
	if e != nil {
		k.remove(e)
	}
	k.mu.Unlock()
	if e != nil {
		k.m.finished.With("connected").Inc()
	}
}

// remove takes e out of the schedule; k.mu is held.
func (k *Kicker) remove(e *entry) {
	if e.index >= 0 {
		heap.Remove(&k.queue, e.index)
	}
	delete(k.pending, e.u)
	k.m.pending.Set(float64(len(k.pending)))
}

// Pending reports how many devices have a wake due.
func (k *Kicker) Pending() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.pending)
}

func (k *Kicker) signal() {
	select {
	case k.poke <- struct{}{}:
	default:
	}
}

// Run sends due wakes until ctx is done or Close. It owns one more
// goroutine, the sender, and waits for it.
func (k *Kicker) Run(ctx context.Context) error {
	out := make(chan []datagram, 2)
	var sender sync.WaitGroup
	sender.Go(func() { k.sendLoop(out) })
	defer func() {
		close(out)
		sender.Wait()
	}()
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	flush := time.NewTicker(k.cfg.FlushInterval)
	defer flush.Stop()
	for {
		k.mu.Lock()
		wait := time.Hour
		if len(k.queue) > 0 {
			wait = k.queue[0].next.Sub(k.cfg.Now())
		}
		k.mu.Unlock()
		if wait > 0 {
			t.Reset(wait)
			select {
			case <-ctx.Done():
				return nil
			case <-k.ctx.Done():
				return nil
			case <-flush.C:
				k.Flush(context.Background())
			case <-k.flushNow:
				k.Flush(context.Background())
			case <-k.poke:
			case <-t.C:
			}
		} else {
			select {
			case <-ctx.Done():
				return nil
			case <-k.ctx.Done():
				return nil
			default:
			}
		}
		k.sendDue(out)
	}
}

// Close stops Run (its caller owns and waits for that goroutine), refuses
// further store writes from Bind, and flushes the bindings' freshness held
// in memory, so a restart finds them as fresh as they were; the store must
// still be open. It is idempotent and returns the first flush's error.
func (k *Kicker) Close() error {
	k.closeOnce.Do(func() {
		k.cancel()
		if err := k.Flush(context.Background()); err != nil {
			k.closeErr = fmt.Errorf("kick: close: %w", err)
		}
	})
	return k.closeErr
}

// sendBatch bounds the wakes handled per pass, so Close and pokes are
// seen promptly under load.
const sendBatch = 256

// sendDue handles the wakes that are due, in passes of at most sendBatch:
// one store read for the pass, then each entry, then the datagrams go to
// the sender goroutine. An entry is out of the heap (index -1) while it is
// handled; Wake marks it fresh meanwhile, and the entry is then kept, its
// backoff started again.
func (k *Kicker) sendDue(out chan<- []datagram) {
	now := k.cfg.Now()
	k.mu.Lock()
	k.due, k.snaps = k.due[:0], k.snaps[:0]
	for len(k.queue) > 0 && len(k.due) < sendBatch && !k.queue[0].next.After(now) {
		e := heap.Pop(&k.queue).(*entry)
		k.due = append(k.due, e)
		k.snaps = append(k.snaps, *e)
		e.fresh = false
	}
	k.mu.Unlock()
	if len(k.due) == 0 {
		return
	}
	k.readStates()
	batch := k.batch()
	for i, e := range k.due {
		next, done, limited := k.handle(&k.snaps[i], &k.states[i], now, &batch)
		k.mu.Lock()
		if k.pending[e.u] == e { // else Connected while we looked at it
			snap := &k.snaps[i]
			e.lastSent, e.attempts, e.counter = snap.lastSent, snap.attempts, snap.counter
			switch {
			case e.fresh:
				// New messages came: e.until already covers them (zero
				// means look again); go again an Interval after the
				// last datagram.
				e.fresh = false
				e.attempts = 0
				e.next = maxTime(now, e.lastSent.Add(k.cfg.Interval))
				heap.Push(&k.queue, e)
			case done:
				k.remove(e)
			default:
				e.until = snap.until
				e.next = next
				heap.Push(&k.queue, e)
			}
		}
		if limited {
			// The global bucket is empty: the rest wait as long.
			for _, r := range k.due[i+1:] {
				if k.pending[r.u] == r {
					r.next = next
					heap.Push(&k.queue, r)
				}
			}
		}
		k.mu.Unlock()
		if limited {
			break
		}
	}
	if len(batch) > 0 {
		out <- batch
	} else {
		k.recycle(batch)
	}
}

// state is what the store says about a due device.
type state struct {
	err     error
	ok      bool // it has a record
	waiting bool // a message waits for it
	rec     record
	recErr  error
}

// readStates fills k.states for k.snaps in one read transaction.
func (k *Kicker) readStates() {
	k.us = k.us[:0]
	for i := range k.snaps {
		k.us = append(k.us, k.snaps[i].u)
	}
	k.states = append(k.states[:0], make([]state, len(k.us))...)
	err := k.cfg.Store.WakeStates(k.us, func(i int, ok bool, wake []byte, waiting bool) {
		st := &k.states[i]
		st.ok, st.waiting = ok, waiting
		if ok {
			st.rec, st.recErr = decodeRecord(wake)
			if st.recErr == nil {
				k.overlay(k.us[i], &st.rec)
			}
		}
	})
	if err != nil {
		for i := range k.states {
			k.states[i].err = err
		}
	}
}

// datagram is one wake datagram for the sender goroutine.
type datagram struct {
	to     netip.AddrPort
	n      uint8
	auth   bool
	retry  bool
	buf    [64]byte
	device push.UAID
}

func (k *Kicker) batch() []datagram {
	select {
	case b := <-k.free:
		return b[:0]
	default:
		return make([]datagram, 0, sendBatch)
	}
}

func (k *Kicker) recycle(b []datagram) {
	select {
	case k.free <- b[:0]:
	default:
	}
}

// sendLoop sends the batches handed over by sendDue until out is closed,
// so the syscalls run beside the scheduling, on another core.
func (k *Kicker) sendLoop(out <-chan []datagram) {
	for b := range out {
		for i := range b {
			d := &b[i]
			if err := k.cfg.Sender.WriteTo(d.buf[:d.n], d.to); err != nil {
				k.cfg.Logger.Debug("send wake datagram", "uaid", d.device.String(), "to", d.to.String(), "err", err)
				k.m.sendErrors.Inc() // retried like any other wake
				continue
			}
			k.m.sentCounter(d.auth, d.retry).Inc()
		}
		k.recycle(b)
	}
}

// handle decides about e, given what the store holds for it (st), and
// adds its datagram to batch if one should go now. It returns when to
// look at e again, or done; limited means the global rate limit held it
// back.
func (k *Kicker) handle(e *entry, st *state, now time.Time, batch *[]datagram) (next time.Time, done, limited bool) {
	finish := func(reason string) (time.Time, bool, bool) {
		k.m.finished.With(reason).Inc()
		return time.Time{}, true, false
	}
	drop := func(reason string) (time.Time, bool, bool) {
		k.m.dropped.With(reason).Inc()
		return time.Time{}, true, false
	}
	if !e.until.IsZero() && !now.Before(e.until) {
		return finish("expired")
	}
	if k.online(e.u) {
		return finish("connected")
	}
	switch {
	case st.err != nil:
		k.cfg.Logger.Warn("read device for wake", "uaid", e.u.String(), "err", st.err)
		return drop("store_error")
	case !st.ok:
		return drop("unknown_device")
	case !st.waiting:
		return finish("nothing_waiting")
	case st.recErr != nil:
		return drop("bad_record")
	}
	rec := &st.rec
	to, why := rec.target(now, k.cfg.BindingTTL, &k.cfg.Ranges)
	switch why {
	case "":
	case reasonNotWakeable:
		// An ordinary WebSocket device that is offline: nothing to do.
		return finish(why)
	default:
		return drop(why)
	}
	if e.until.IsZero() {
		until, err := k.wakeUntil(e.u, now)
		if err != nil {
			k.cfg.Logger.Warn("read messages for wake", "uaid", e.u.String(), "err", err)
			return drop("store_error")
		}
		if until.IsZero() {
			return finish("nothing_urgent")
		}
		e.until = until
	}
	if ok, wait := k.global.take(now, k.cfg.Rate, k.cfg.Burst); !ok {
		k.m.deferred.With("global").Inc()
		return now.Add(wait), false, true
	}
	// A claimed address is limited per host, whatever the port: many
	// devices may claim one victim. A proven one is a NAT mapping of its
	// own, so devices behind one NAT address do not share a limit.
	target := netip.AddrPortFrom(to.Addr(), 0)
	if to == rec.verified {
		target = to
	}
	if ok, wait, full := k.targets.take(target, now); !ok {
		if full {
			k.m.deferred.With("target_table_full").Inc()
		} else {
			k.m.deferred.With("target").Inc()
		}
		return now.Add(wait), false, false
	}
	*batch = append(*batch, datagram{to: to, auth: rec.auth, retry: e.attempts > 0, device: e.u})
	d := &(*batch)[len(*batch)-1]
	var b []byte
	if rec.auth {
		e.counter = max(e.counter+1, uint64(now.UnixMicro()))
		var key [keySize]byte
		k.cfg.Keys.keyWith(k.mac, e.u, &key)
		b = appendAuthWith(k.mac, d.buf[:0], key[:], e.u, e.counter)
	} else {
		b = appendNotify(d.buf[:0], to)
	}
	d.n = uint8(len(b))
	e.lastSent = now
	e.attempts++
	backoff := k.cfg.Interval << min(e.attempts-1, 30)
	if backoff <= 0 || backoff > k.cfg.MaxBackoff {
		backoff = k.cfg.MaxBackoff
	}
	// Past the messages' expiry the entry is only looked at to end it.
	return minTime(now.Add(backoff), e.until), false, false
}

// wakeUntil is when the last of u's waiting messages that may wake it
// expires, or zero when none may.
func (k *Kicker) wakeUntil(u push.UAID, now time.Time) (time.Time, error) {
	const scan = 1000
	var until time.Time
	after := uint64(0)
	for range 10 {
		msgs, err := k.cfg.Store.Messages(u, after, scan)
		if err != nil {
			return time.Time{}, err
		}
		for _, m := range msgs {
			if m.Urgency.AtLeast(push.UrgencyNormal) && m.Expiry.After(now) && m.Expiry.After(until) {
				until = m.Expiry
			}
			after = m.Seq
		}
		if len(msgs) < scan {
			break
		}
	}
	return until, nil
}

// HelloWake records the wake fields of u's hello and answers them
// (relay.Waker): 201 when the device can be woken now (its claimed address
// lies inside the ranges, or it holds a fresh STUN-verified address), the
// device's wake key, and where and how often to send STUN requests.
//
// STUNAddr is the configured one; when its host is unspecified (":3478")
// it is completed with local, the address the device connected to.
func (k *Kicker) HelloWake(ctx context.Context, u push.UAID, h pushproto.Hello, local netip.Addr) (pushproto.HelloReply, error) {
	now := k.cfg.Now()
	var claimed netip.AddrPort
	if h.Wake != nil {
		if a, err := netip.ParseAddr(h.Wake.IP); err == nil && h.Wake.Port > 0 && h.Wake.Port < 65536 {
			claimed = netip.AddrPortFrom(a.Unmap(), uint16(h.Wake.Port))
		}
	}
	network := ""
	if h.Mobile != nil {
		network = NetworkKey(h.Mobile.MCC, h.Mobile.MNC)
	}
	var rec record
	err := k.cfg.Store.UpdateWake(ctx, u, true, func(old []byte) ([]byte, error) {
		r, err := decodeRecord(old)
		if err != nil {
			r = record{} // unreadable: start again
		}
		// Written anyway: take the freshness memory holds along.
		k.overlay(u, &r)
		r.auth = h.WakeAuth
		r.claimed, r.claimedAt, r.network = claimed, now, network
		if !claimed.IsValid() {
			r.claimedAt = time.Time{}
		}
		rec = r
		return r.encode(), nil
	})
	if err != nil {
		return pushproto.HelloReply{}, fmt.Errorf("record wake address: %w", err)
	}
	reply := pushproto.HelloReply{Status: pushproto.StatusOK, WakeKey: k.cfg.Keys.KeyString(u)}
	if k.cfg.STUNAddr != "" {
		reply.STUNAddr = stunAddrFor(k.cfg.STUNAddr, local)
		reply.WakeRefresh = max(1, int(k.cfg.BindingTTL/4/time.Second))
	}
	_, why := rec.target(now, k.cfg.BindingTTL, &k.cfg.Ranges)
	result := "not_accepted"
	if why == "" {
		reply.Status = pushproto.StatusWake
		result = "accepted"
		if k.cfg.OnBound != nil {
			k.cfg.OnBound(u)
		}
	}
	k.m.hellos.With(result).Inc()
	return reply, nil
}

// stunAddrFor completes an advertised STUN address whose host is empty or
// unspecified with the address the device connected to.
func stunAddrFor(adv string, local netip.Addr) string {
	host, port, err := net.SplitHostPort(adv)
	if err != nil || !local.IsValid() {
		return adv
	}
	if a, err := netip.ParseAddr(host); host == "" || (err == nil && a.IsUnspecified()) {
		return net.JoinHostPort(local.String(), port)
	}
	return adv
}

// Key returns the STUN password of the device named by username
// (discovery.Registry).
func (k *Kicker) Key(username string) ([]byte, error) {
	u, err := push.ParseUAID(username)
	if err != nil {
		return nil, fmt.Errorf("%w: %q", discovery.ErrUnknownUser, username)
	}
	if ok, _, err := k.device(u); err != nil {
		return nil, fmt.Errorf("read device: %w", err)
	} else if !ok {
		return nil, fmt.Errorf("%w: %s", discovery.ErrUnknownUser, username)
	}
	return []byte(k.cfg.Keys.KeyString(u)), nil
}

// Bind records that u was seen at addr by an authenticated STUN request
// stamped at stamp (discovery.Registry). A stamp not newer than the last
// accepted one is a replay, and so is one earlier than the process's
// start: a request captured before a restart is never accepted again.
//
// A refresh from the address the store already holds (also one that
// revives a binding gone stale) writes nothing: its time and stamp are
// kept in memory (see seen) and written by the next flush. A request that
// moves the binding to another address is written before Bind returns,
// so before the STUN answer: Bind returns a *discovery.Pending whose Wait
// writes it. A move is refused unless its stamp is later
// than the start plus restartHold: the last process may have accepted, and
// not written, stamps up to its end plus the skew discovery allows (a
// device whose clock runs ahead), and any of those could be replayed from
// elsewhere. A device that had no binding is not held.
//
// The STUN server calls Bind from one goroutine, and Pending.Wait from
// others.
func (k *Kicker) Bind(username string, addr netip.AddrPort, stamp time.Time) error {
	u, err := push.ParseUAID(username)
	if err != nil {
		return fmt.Errorf("%w: %q", discovery.ErrUnknownUser, username)
	}
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	ms := stamp.UnixMilli()
	if ms < k.start || ms <= k.lastStamp(u) {
		return discovery.ErrReplay
	}
	var (
		ok, waiting bool
		rec         record
		recErr      error
	)
	if err := k.cfg.Store.WakeStates([]push.UAID{u}, func(_ int, o bool, wake []byte, w bool) {
		ok, waiting = o, w
		if o {
			rec, recErr = decodeRecord(wake)
		}
	}); err != nil {
		return fmt.Errorf("read device: %w", err)
	}
	if !ok {
		return fmt.Errorf("%w: %s", discovery.ErrUnknownUser, username)
	}
	if recErr != nil {
		rec = record{} // unreadable: the move below writes a new one
	}
	if ms <= rec.stamp {
		return discovery.ErrReplay
	}
	now := k.cfg.Now()
	k.overlay(u, &rec)
	fresh := rec.verified.IsValid() && now.Sub(rec.verifiedAt) < k.cfg.BindingTTL
	moved := !fresh // the device was unreachable at this address until now
	if rec.verified == addr && recErr == nil && k.remember(u, seen{addr: addr, at: now, stamp: ms}) {
		k.m.bindings.With("refreshed").Inc()
		k.bound(u, moved, waiting)
		return nil
	}
	if rec.verified.IsValid() && rec.verified != addr && ms <= k.floor {
		return discovery.ErrReplay
	}
	moved = moved || rec.verified != addr
	// The write waits for a commit: the STUN server does it beside the
	// next requests, and concurrent moves share a commit.
	return &discovery.Pending{Wait: func() error {
		if err := k.move(u, addr, now, ms); err != nil {
			return err
		}
		k.bound(u, moved, waiting)
		return nil
	}}
}

// bound tells the hub about u's accepted binding, or schedules a wake when
// it moved while messages wait.
func (k *Kicker) bound(u push.UAID, moved, waiting bool) {
	if k.cfg.OnBound != nil {
		k.cfg.OnBound(u)
	}
	if k.presence != nil {
		if k.presence.Online(u) {
			k.presence.WakeProven(u)
		} else if moved && waiting {
			// The device was unreachable, or elsewhere, while messages
			// waited. (A refresh in place does not restart the backoff.)
			k.Wake(u, time.Time{})
		}
	}
}

// move writes u's binding to addr, stamped ms, at once.
func (k *Kicker) move(u push.UAID, addr netip.AddrPort, now time.Time, ms int64) error {
	err := k.cfg.Store.UpdateWake(k.ctx, u, false, func(old []byte) ([]byte, error) {
		r, err := decodeRecord(old)
		if err != nil {
			r = record{}
		}
		if ms <= r.stamp {
			return nil, discovery.ErrReplay
		}
		r.verified, r.verifiedAt, r.stamp = addr, now, ms
		return r.encode(), nil
	})
	switch {
	case errors.Is(err, store.ErrNoDevice):
		return fmt.Errorf("%w: %s", discovery.ErrUnknownUser, u)
	case err != nil:
		return err
	}
	k.forget(u, ms)
	k.m.bindings.With("written").Inc()
	return nil
}

// restartHold is how long after start a binding cannot move: longer than
// discovery's default 30 s clock skew.
const restartHold = time.Minute

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// entryHeap orders entries by next.
type entryHeap []*entry

func (h entryHeap) Len() int           { return len(h) }
func (h entryHeap) Less(i, j int) bool { return h[i].next.Before(h[j].next) }
func (h entryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *entryHeap) Push(x any) {
	e := x.(*entry)
	e.index = len(*h)
	*h = append(*h, e)
}
func (h *entryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	e.index = -1
	*h = old[:len(old)-1]
	return e
}
