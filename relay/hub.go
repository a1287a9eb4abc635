package relay

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/token"
)

// Hub holds the device sessions of one relay.
type Hub struct {
	cfg Config
	m   *hubMetrics
	wg  sync.WaitGroup

	// ctx is cancelled by Close; store calls made on behalf of sessions use
	// it so nothing outlives the hub.
	ctx    context.Context
	cancel context.CancelFunc
	// stopRun ends Run; closed by Close before it waits.
	stopRun chan struct{}
	// done is closed when Shutdown's wait is over.
	done chan struct{}

	mu       sync.Mutex
	closing  bool
	sessions map[push.UAID]*session // sessions past hello, by UAID
	all      map[*session]struct{}  // every session, before and after hello

	work *workers
	// bc serves broadcasts; nil when Config.Broadcasts is (broadcasts.go).
	bc *broadcasts
	// offerTo is stored's scratch list; only the committer uses it.
	offerTo []*session

	closeOnce sync.Once
}

// New returns a hub. It starts no goroutines until Accept or Run.
func New(cfg Config) (*Hub, error) {
	if cfg.Store == nil || cfg.Tokens == nil {
		return nil, errors.New("relay: Store and Tokens are required")
	}
	if cfg.Endpoints == nil {
		return nil, errors.New("relay: Endpoints is required")
	}
	cfg.setDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	h := &Hub{
		cfg:      cfg,
		m:        newHubMetrics(metrics.OrNew(cfg.Metrics)),
		ctx:      ctx,
		cancel:   cancel,
		stopRun:  make(chan struct{}),
		done:     make(chan struct{}),
		sessions: make(map[push.UAID]*session),
		all:      make(map[*session]struct{}),
	}
	h.work = newWorkers(&h.wg, 1024, 2*time.Second)
	if cfg.Broadcasts != nil {
		h.bc = newBroadcasts(cfg.Broadcasts, newBcastMetrics(metrics.OrNew(cfg.Metrics)))
	}
	cfg.Store.OnStored(h.stored)
	return h, nil
}

// stored is the store's report of a commit: it offers each message to
// its device's session, in seq order. It runs on the store's committer.
func (h *Hub) stored(ms []store.Message) {
	ss := h.offerTo[:0]
	h.mu.Lock()
	for _, m := range ms {
		ss = append(ss, h.sessions[m.UAID])
	}
	h.mu.Unlock()
	for i, s := range ss {
		if s != nil {
			s.offer(&ms[i])
		}
	}
	clear(ss)
	h.offerTo = ss
	if h.cfg.Stored != nil {
		h.cfg.Stored(ms)
	}
}

// Accept takes ownership of a device connection and serves it on a
// goroutine of the hub's. It returns at once. After Close it closes the
// connection with 1001.
func (h *Hub) Accept(c Conn) {
	s := &session{hub: h, conn: c, started: h.cfg.Now()}
	h.mu.Lock()
	if h.closing {
		h.mu.Unlock()
		c.Close(pushproto.CloseGoingAway, "server shutting down")
		c.Release()
		return
	}
	h.all[s] = struct{}{}
	h.wg.Add(1)
	h.mu.Unlock()
	h.m.accepted.Inc()
	h.m.connections.Inc()
	s.start()
}

// Connected reports how many sessions have completed hello.
func (h *Hub) Connected() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.sessions)
}

// Run checks every session on a tick until ctx is done or the hub closes:
// it pings idle devices and closes those that miss the hello or pong
// timeout, or that do not answer a close.
func (h *Hub) Run(ctx context.Context) error {
	// Run holds a WaitGroup count so the workers it starts are covered.
	h.mu.Lock()
	if h.closing {
		h.mu.Unlock()
		return nil
	}
	h.wg.Add(1)
	h.mu.Unlock()
	defer h.wg.Done()
	tick := min(h.cfg.PingInterval/10, h.cfg.HelloTimeout/5, time.Second)
	if h.cfg.Waker != nil {
		tick = min(tick, h.cfg.WakeIdleClose/5)
	}
	if tick < 50*time.Millisecond {
		tick = 50 * time.Millisecond
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-h.stopRun:
			return nil
		case <-t.C:
			h.keepalive()
		}
	}
}

// keepalive only decides: pings and closes are queued for each session's
// writer, so a device whose socket is stuck holds up nobody's check.
func (h *Hub) keepalive() {
	now := h.cfg.Now()
	h.mu.Lock()
	all := h.allLocked()
	h.mu.Unlock()
	for _, s := range all {
		s.check(now)
	}
}

// Shutdown refuses new work, closes every session with 1001 and waits
// until the hub's goroutines are done: each session writes what it had
// queued and its close frame within closeGrace, ack flushers finish their
// deletes. If ctx ends first, every socket is cut and the store calls made
// for sessions are cancelled, and Shutdown returns once the goroutines
// have seen that, with ctx's error. Later calls wait the same way.
func (h *Hub) Shutdown(ctx context.Context) error {
	h.closeOnce.Do(func() {
		h.mu.Lock()
		h.closing = true
		all := h.allLocked()
		h.mu.Unlock()
		for _, s := range all {
			s.close(pushproto.CloseGoingAway, "server shutting down")
		}
		h.cfg.Store.OnStored(nil)
		h.work.stop()
		close(h.stopRun)
		go func() {
			h.wg.Wait()
			h.cancel()
			close(h.done)
		}()
	})
	select {
	case <-h.done:
		return nil
	case <-ctx.Done():
	}
	h.mu.Lock()
	all := h.allLocked()
	h.mu.Unlock()
	h.cfg.Logger.Warn("shutdown deadline: cutting device sockets", "sessions", len(all))
	for _, s := range all {
		s.conn.Expire(0)
	}
	h.cancel()
	<-h.done
	return fmt.Errorf("close device sessions: %w", context.Cause(ctx))
}

// closeTimeout bounds Close.
const closeTimeout = 10 * time.Second

// Close is Shutdown bounded by ten seconds. It is idempotent.
func (h *Hub) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	return h.Shutdown(ctx)
}

// allLocked lists every session; h.mu is held.
func (h *Hub) allLocked() []*session {
	all := make([]*session, 0, len(h.all))
	for s := range h.all {
		all = append(all, s)
	}
	return all
}

// attach makes s the session of its UAID, closing the one it replaces.
func (h *Hub) attach(s *session) bool {
	h.mu.Lock()
	if h.closing {
		h.mu.Unlock()
		return false
	}
	old := h.sessions[s.uaid]
	h.sessions[s.uaid] = s
	h.mu.Unlock()
	if old != nil {
		old.close(pushproto.CloseServerError, "replaced by a newer connection")
	}
	if pw, ok := h.cfg.Endpoints.(PresenceWatcher); ok {
		pw.DeviceOnline(s.uaid)
	}
	return true
}

func (h *Hub) detach(s *session) {
	h.mu.Lock()
	current := h.sessions[s.uaid] == s
	if current {
		delete(h.sessions, s.uaid)
	}
	delete(h.all, s)
	h.mu.Unlock()
	if pw, ok := h.cfg.Endpoints.(PresenceWatcher); ok && current {
		pw.DeviceOffline(s.uaid)
	}
	if h.bc != nil {
		h.bc.unsubscribe(s)
	}
}

// Online reports whether u has a session past hello that is not closing:
// the kick subsystem does not wake a device that is online.
func (h *Hub) Online(u push.UAID) bool {
	s := h.session(u)
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ready && !s.closed
}

// WakeProven tells the hub that u proved a wake address (STUN) while
// connected: its session is now closed with 4774 once idle, like one
// accepted for wake at hello.
func (h *Hub) WakeProven(u push.UAID) {
	if s := h.session(u); s != nil {
		s.mu.Lock()
		s.wake = true
		s.mu.Unlock()
	}
}

// Accepting reports whether u has a session taking messages here (past
// hello and not closing): a site member does not wake such a device.
func (h *Hub) Accepting(u push.UAID) bool {
	s := h.session(u)
	return s != nil && s.accepting()
}

// EachSession calls fn with the UAID of every session past hello, under
// the hub's lock: fn must be quick and must not call the hub. A site
// member fills its socket digest with them (member.Meta.SocketDigest).
func (h *Hub) EachSession(fn func(push.UAID)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for u := range h.sessions {
		fn(u)
	}
}

// Resync has every session read its device's messages from the store
// again, past what it last sent, rather than trust what it queued: the
// store's contents were replaced under it (a site member restored from
// another member's snapshot), and messages that came with the new file
// were never offered through the commit feed.
func (h *Hub) Resync() {
	h.mu.Lock()
	ss := make([]*session, 0, len(h.sessions))
	for _, s := range h.sessions {
		ss = append(ss, s)
	}
	h.mu.Unlock()
	for _, s := range ss {
		s.resync()
	}
}

// CloseReset closes u's session here, if one is open, with 1000 "UAID
// reset": the device was reset (its record, channels and messages are
// gone), here or, in a site, by the member that holds the upstream. Its
// next hello gets a new UAID.
func (h *Hub) CloseReset(u push.UAID) {
	if s := h.session(u); s != nil {
		s.close(pushproto.CloseNormal, "UAID reset")
	}
}

func (h *Hub) session(u push.UAID) *session {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sessions[u]
}

// goOwned runs f on one of the hub's workers, which Close waits for. The
// caller must hold a WaitGroup count while it calls: a session's reader
// (the session's count), Run, or a ticket taken under session.mu while the
// session was open (startPumpLocked).
func (h *Hub) goOwned(f func()) { h.work.run(f) }

// goWait runs f, which may block on a device for long, on a goroutine of
// its own that Close waits for. Same rule for the caller as goOwned.
func (h *Hub) goWait(f func()) {
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		f()
	}()
}

// Push ingests one message: Ingest of one, with the
// message's own failure (ErrNoSubscription) as the error. A message with a
// TTL is on disk when Push returns; a TTL-0 message is handed to the
// device's session if one is open and dropped otherwise.
func (h *Hub) Push(ctx context.Context, m push.Message) (Result, error) {
	rs, err := h.Ingest(ctx, []push.Message{m})
	if err != nil {
		return Result{}, err
	}
	return rs[0], rs[0].Err
}

func (h *Hub) pushDirect(u push.UAID, ch push.ChannelID, m push.Message, now time.Time) (Result, error) {
	if _, ok, err := h.cfg.Store.Channel(u, ch); err != nil {
		return Result{}, wrapStore("read channel", err)
	} else if !ok {
		return Result{}, ErrNoSubscription
	}
	// A direct message has no stored row; a seq from the clock still names
	// it uniquely for the Location header (stored seqs count up from 1).
	dm := store.Message{UAID: u, Channel: ch, Seq: uint64(now.UnixNano()), Received: now,
		Encoding: m.Encoding, Encryption: m.Encryption, CryptoKey: m.CryptoKey, Data: m.Data}
	id := h.cfg.Tokens.SealMessageID(token.MessageID{UAID: u, Channel: ch, Seq: dm.Seq})
	s := h.session(u)
	if s == nil {
		h.m.dropped.With("ttl0_offline").Inc()
		return Result{ID: id}, nil
	}
	if reason := s.sendDirect(s.directFrame(&dm)); reason != "" {
		h.m.dropped.With(reason).Inc()
		return Result{ID: id}, nil
	}
	h.m.pushed.With("direct").Inc()
	return Result{ID: id, Delivered: true}, nil
}

// Delete removes a waiting message named by its id (app server DELETE).
func (h *Hub) Delete(ctx context.Context, id string) error {
	mid, err := h.cfg.Tokens.OpenMessageID(id)
	if err != nil {
		return ErrNoMessage
	}
	ok, err := h.cfg.Store.Delete(ctx, push.UAID(mid.UAID), push.ChannelID(mid.Channel), mid.Seq)
	if err != nil {
		return wrapStore("delete message", err)
	}
	if !ok {
		return ErrNoMessage
	}
	return nil
}

// simplePushTopic is the topic SimplePush versions replace each other
// under; '!' is outside the base64url alphabet, so no app server's Topic can
// collide with it.
const simplePushTopic = "!simplepush"

func newUAID() push.UAID {
	var u push.UAID
	rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40 // UUID version 4, as autopush makes them
	u[8] = u[8]&0x3f | 0x80
	return u
}

// storageFailed logs a store call that failed for a device. A damaged
// store fails every call and has said so once itself: those go to debug,
// so thousands of devices reconnecting do not flood the log.
func (h *Hub) storageFailed(op string, u push.UAID, err error) {
	if errors.Is(err, store.ErrDamaged) {
		h.cfg.Logger.Debug(op, "uaid", u.String(), "err", err)
		return
	}
	h.cfg.Logger.Error(op, "uaid", u.String(), "err", err)
}

func codeLabel(code int) string { return strconv.Itoa(code) }
