package site

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/store"
)

// The site's upstream (issue #9, point 3): the upstream sessions (a
// ws:// or wss:// upstream, relay/upstream) are held by one member at a
// time, the holder, chosen through the log. A member that becomes the
// leader proposes a holder entry naming itself with its term; once it is
// applied there, and for as long as the member leads in that term, it
// runs the upstream (a Holding: the link's held sessions, polls and
// unregister sender). Every member stops its own on losing the lead (a
// cut-off leader steps down within an election timeout, CheckQuorum) and
// so before it could apply a holder entry naming another. The upstream
// link's state (identities, hello times, the unregister outbox) is
// written through the log (Store's upstream writes, below), so the next
// holder continues where the last one stopped.
//
// A device's register at a member that does not hold the upstream is
// asked of the holder through the log too: a register request entry;
// the holder, applying it, registers upstream (Holding.Mint) and
// proposes a register result entry, which the asking member waits for.

// Holding is one run of the site's upstream on the member that holds it
// (the node's relay/upstream.Link): Run until ctx ends; Mint and Abandon
// as relay.Endpoints; KickUnregisters when another member's unregister
// was added to the outbox.
type Holding interface {
	Run(ctx context.Context) error
	Mint(ctx context.Context, r relay.Registration) (string, error)
	Abandon(ctx context.Context, r relay.Registration)
	KickUnregisters()
}

const (
	// holdCheck is how often the holder's loop looks at the lead.
	holdCheck = 100 * time.Millisecond
	// helloFlush is how often the hello times the link recorded are
	// proposed, in one entry: they only order the weekly hellos, and one
	// entry per hello would wear the flash.
	helloFlush = 5 * time.Second
	// holdRetry is the wait before a Holding that failed is run again.
	holdRetry = time.Second
	// registerWorkers bound the registers the holder does at once for
	// other members; registerQueue the requests waiting for them.
	registerWorkers = 8
	registerQueue   = 1024
)

// holder is the member's side of the site's upstream.
type holder struct {
	newHolding func() (Holding, error)
	timeout    time.Duration
	// link: the upstream is the relay link to a parent (a quic://
	// upstream, relay/link.Child), whose devices have no upstream
	// identity of their own: every unregister goes to the outbox.
	link bool
	// identity is this member's on the link (link only, linkid.go).
	identity LinkIdentity
	kick     chan struct{}
	reqs     chan *Entry

	// parent: the site takes relay link children (relay_listen) at the
	// holder (parent.go); nil without.
	parent LinkParent

	mu  sync.Mutex
	cur Holding // running here; nil when this member does not hold
}

// Upstream makes this member's part of the site's upstream: newHolding
// makes a Holding each time the member comes to hold it, timeout is the
// upstream's RequestTimeout (a register asked of another member waits
// for one and a half of it: under Firefox's 10 s with the 5 s default).
// The result is what the hub registers through (relay.Endpoints,
// EndpointKeeper, Unregisterer, PresenceWatcher). Call it before Run.
func (s *Site) Upstream(newHolding func() (Holding, error), timeout time.Duration) *Upstream {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	h := s.holder()
	h.newHolding, h.timeout = newHolding, timeout
	return &Upstream{s: s}
}

// holder is the site's holder on this member, made on first use.
func (s *Site) holder() *holder {
	if s.up == nil {
		s.up = &holder{timeout: 5 * time.Second, kick: make(chan struct{}, 1), reqs: make(chan *Entry, registerQueue)}
	}
	return s.up
}

// UpstreamLink is Upstream for the relay link to a parent pushrelay (a
// quic:// upstream: newHolding makes a relay/link.Child each time, with
// this member's Store): the site is one child of the parent, whichever
// member holds the link. A device's unregister always goes to the
// replicated outbox (the link's devices have no upstream identity: the
// parent knows them by their own UAID), which the holder's link sends.
// Every member must present the same identity on the link (id: its
// link name and fingerprint, linkid.go); one that does not never holds
// it.
func (s *Site) UpstreamLink(newHolding func() (Holding, error), timeout time.Duration, id LinkIdentity) *Upstream {
	u := s.Upstream(newHolding, timeout)
	s.up.link, s.up.identity = true, id
	return u
}

// HasUpstream reports whether the site has an upstream (Upstream was
// called) or takes relay link children (LinkParent): something the
// holder holds.
func (s *Site) HasUpstream() bool { return s.up != nil }

// Holder is the member the log last named to hold the upstream, and the
// term of the leader that named it (0, 0: none yet).
func (s *Site) Holder() (member, term uint64) {
	return s.holderID.Load(), s.holderTerm.Load()
}

// Holding reports whether this member runs the site's upstream now.
func (s *Site) Holding() bool {
	if s.up == nil {
		return false
	}
	s.up.mu.Lock()
	defer s.up.mu.Unlock()
	return s.up.cur != nil
}

func (h *holder) current() Holding {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cur
}

func (h *holder) wake() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// noteUpstream hears of a holder, register request or outbox entry
// applied here (Machine.onUpstream, on the applying goroutine).
func (s *Site) noteUpstream(e *Entry) {
	switch e.Kind {
	case KindHolder:
		if old := s.holderID.Swap(e.Holder); old != e.Holder {
			s.m.holderChanges.Inc()
			s.cfg.Logger.Info("site: the upstream's holder named", "holder", fmt.Sprintf("%016x", e.Holder), "term", e.Term)
			s.reannounceLinkID()
		}
		s.holderTerm.Store(e.Term)
		if s.up != nil {
			s.up.wake()
		}
	case KindRegisterRequest:
		if s.up == nil {
			return
		}
		select {
		case s.up.reqs <- e:
		default:
			// The holder is far behind: the asking member times out
			// and the device registers again.
		}
	case KindOutbox:
		if s.up == nil {
			return
		}
		if cur := s.up.current(); cur != nil {
			cur.KickUnregisters()
		}
	case KindBroadcastWant:
		s.noteWant(e)
	case KindLink:
		if e.Op == OpIdentity {
			s.noteLinkID(e)
		} else {
			s.noteLinkParent(e)
		}
	}
}

// holdLoop runs the upstream on this member while it leads and the log
// names it the holder in its term, until ctx ends.
func (s *Site) holdLoop(ctx context.Context, n leadView) {
	h := s.up
	tick := time.NewTicker(holdCheck)
	defer tick.Stop()
	flush := time.NewTicker(helloFlush)
	defer flush.Stop()
	var (
		cancel   context.CancelFunc
		done     chan struct{}
		proposed uint64    // the term this member proposed itself in
		again    time.Time // when to propose itself again if not named
		retryAt  time.Time
	)
	stop := func(why string) {
		if cancel == nil {
			return
		}
		cancel()
		<-done
		cancel, done = nil, nil
		h.mu.Lock()
		h.cur = nil
		h.mu.Unlock()
		if ctx.Err() == nil {
			// The hellos go to the log while the site runs; a member
			// closing leaves its last ones (at worst those hellos
			// are done again).
			fctx, fcancel := context.WithTimeout(ctx, s.proposeBound())
			s.st.flushHellos(fctx)
			fcancel()
		}
		s.cfg.Logger.Info("site: the upstream stopped on this member", "why", why)
	}
	defer stop("closing")
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-h.kick:
		case <-flush.C:
			if h.current() != nil {
				fctx, fcancel := context.WithTimeout(ctx, s.proposeBound())
				s.st.flushHellos(fctx)
				fcancel()
			}
		}
		if done != nil {
			select {
			case <-done: // it failed: run it again after holdRetry
				stop("the upstream failed")
				retryAt = s.cfg.Now().Add(holdRetry)
			default:
			}
		}
		s.reloadLinkParent(cancel != nil)
		if h.link {
			s.announceLinkID(ctx)
			if !s.checkLinkID() {
				stop("this member's link identity is not the site's (yet)")
				continue
			}
		}
		term, leads := n.leads()
		hid, hterm := s.Holder()
		if !leads || hid != s.id || hterm != term {
			if !leads {
				stop("this member no longer leads the site")
			} else {
				stop("another member holds the upstream")
			}
		}
		if !leads {
			continue
		}
		if hid != s.id || hterm != term {
			// Proposed once per term, and again while another stays
			// named: only the leader's entry may name the holder, but a
			// member that stopped leading may have named itself (its
			// entry committed through the new leader) just before it
			// knew.
			if proposed == term && s.cfg.Now().Before(again) {
				continue
			}
			proposed, again = term, s.cfg.Now().Add(s.proposeBound())
			pctx, pcancel := context.WithTimeout(ctx, s.proposeBound())
			_, err := s.st.propose(pctx, &Entry{Kind: KindHolder, Holder: s.id, Term: term})
			pcancel()
			if err != nil && !errors.Is(err, ErrNoResult) {
				s.cfg.Logger.Warn("site: holder entry not proposed", "err", err)
				proposed = 0
			}
			continue
		}
		if cancel != nil || s.cfg.Now().Before(retryAt) {
			continue
		}
		hd, err := s.newHolding(ctx)
		if err != nil {
			s.cfg.Logger.Error("site: the upstream cannot run here", "err", err)
			retryAt = s.cfg.Now().Add(holdRetry)
			continue
		}
		rctx, rcancel := context.WithCancel(ctx)
		cancel, done = rcancel, make(chan struct{})
		h.mu.Lock()
		h.cur = hd
		h.mu.Unlock()
		s.m.holderStarts.Inc()
		s.cfg.Logger.Info("site: this member holds the upstream", "term", term)
		go func(done chan struct{}) {
			defer close(done)
			var wg sync.WaitGroup
			for range registerWorkers {
				wg.Go(func() { s.registerFor(rctx, hd) })
			}
			if err := hd.Run(rctx); err != nil && rctx.Err() == nil {
				s.cfg.Logger.Error("site: the upstream stopped", "err", err)
			}
			rcancel()
			wg.Wait()
		}(done)
	}
}

// leadView is what holdLoop needs of the consensus node.
type leadView interface {
	leads() (term uint64, leads bool)
}

// proposeBound bounds one proposal of the site's own chores.
func (s *Site) proposeBound() time.Duration {
	if s.cfg.ProposeTimeout > 0 {
		return s.cfg.ProposeTimeout
	}
	return 3 * time.Second
}

// registerFor does the registers other members asked of this holder,
// until ctx ends: each is registered upstream and its result proposed.
// A request older than the asking member waits is dropped.
func (s *Site) registerFor(ctx context.Context, hd Holding) {
	h := s.up
	for {
		var e *Entry
		select {
		case <-ctx.Done():
			return
		case e = <-h.reqs:
		}
		if s.cfg.Now().Sub(e.At) > 2*h.timeout {
			continue
		}
		mctx, cancel := context.WithTimeout(ctx, h.timeout)
		ep, err := hd.Mint(mctx, relay.Registration{UAID: e.UAID, Channel: e.Channel, Key: e.Key})
		res := &Entry{Kind: KindRegisterResult, ForMember: e.Member, ForRequest: e.Request, Endpoint: ep}
		if err != nil {
			res.Endpoint, res.Error = "", err.Error()
		}
		if _, err := s.st.propose(mctx, res); err != nil && !errors.Is(err, ErrNoResult) {
			s.cfg.Logger.Warn("site: a register's result not proposed", "uaid", e.UAID, "err", err)
		}
		cancel()
	}
}

// Upstream is the site's upstream as the hub uses it, on any member:
// registers go to the holder (its own Mint when this member holds,
// through the log otherwise), unregisters into the replicated outbox.
type Upstream struct{ s *Site }

var (
	_ relay.Endpoints       = (*Upstream)(nil)
	_ relay.EndpointKeeper  = (*Upstream)(nil)
	_ relay.Unregisterer    = (*Upstream)(nil)
	_ relay.PresenceWatcher = (*Upstream)(nil)
)

// ErrNoHolder: the register was not answered by the upstream's holder in
// time (none, or it is changing).
var ErrNoHolder = errors.New("site: the upstream's holder did not answer")

// Mint registers r's channel upstream through the holder (relay.Endpoints).
func (u *Upstream) Mint(ctx context.Context, r relay.Registration) (string, error) {
	s := u.s
	if r.SimplePush {
		return "", errors.New("site: SimplePush channels are not relayed")
	}
	if cur := s.up.current(); cur != nil {
		return cur.Mint(ctx, r)
	}
	if c, ok, err := s.st.Channel(r.UAID, r.Channel); err != nil {
		return "", fmt.Errorf("site: read channel: %w", err)
	} else if ok && c.Endpoint != "" {
		return c.Endpoint, nil
	}
	wait := s.up.timeout + s.up.timeout/2
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	req := s.st.next.Add(1)
	c, done := s.machine.awaitAnswer(req)
	defer done()
	_, err := s.st.propose(ctx, &Entry{Request: req, Kind: KindRegisterRequest, UAID: r.UAID, Channel: r.Channel, Key: r.Key})
	if err != nil && !errors.Is(err, ErrNoResult) {
		s.m.remoteRegisters.With("error").Inc()
		return "", err
	}
	select {
	case e := <-c:
		if e.Error != "" {
			s.m.remoteRegisters.With("refused").Inc()
			return "", fmt.Errorf("site: the upstream's holder: %s", e.Error)
		}
		s.m.remoteRegisters.With("ok").Inc()
		return e.Endpoint, nil
	case <-ctx.Done():
		s.m.remoteRegisters.With("timeout").Inc()
		return "", fmt.Errorf("%w within %s", ErrNoHolder, wait)
	}
}

// Abandon unregisters r's channel upstream when this member holds the
// upstream; elsewhere the rare channel abandoned (a register the store
// refused as a conflict) stays upstream until the device's identity
// goes.
func (u *Upstream) Abandon(ctx context.Context, r relay.Registration) {
	if cur := u.s.up.current(); cur != nil {
		cur.Abandon(ctx, r)
	}
}

// KeepEndpoints: the upstream's endpoints are stored with the channels.
func (u *Upstream) KeepEndpoints() bool { return true }

// Unregister removes a device's channel and keeps its unregister in the
// replicated outbox for the holder to send upstream (relay.Unregisterer,
// as relay/upstream.Link.Unregister).
func (u *Upstream) Unregister(ctx context.Context, uaid push.UAID, ch push.ChannelID) error {
	st := u.s.st
	if u.s.up.link {
		// As relay/link.Child.Unregister: the parent knows the device
		// by its UAID here.
		_, err := st.UnregisterLater(ctx, uaid, ch, uaid)
		return err
	}
	id, ok, err := st.UpstreamID(uaid)
	if err != nil {
		return fmt.Errorf("site: read identity: %w", err)
	}
	if !ok {
		_, err := st.Unregister(ctx, uaid, ch)
		return err
	}
	_, err = st.UnregisterLater(ctx, uaid, ch, id.Upstream)
	return err
}

// DeviceOnline tells the holding upstream, when this member holds it,
// that u is connected here (relay.PresenceWatcher).
func (u *Upstream) DeviceOnline(uaid push.UAID) {
	if pw, ok := u.s.up.current().(relay.PresenceWatcher); ok {
		pw.DeviceOnline(uaid)
	}
}

// DeviceOffline: as DeviceOnline.
func (u *Upstream) DeviceOffline(uaid push.UAID) {
	if pw, ok := u.s.up.current().(relay.PresenceWatcher); ok {
		pw.DeviceOffline(uaid)
	}
}

// ---- the upstream link's writes, through the log ----

// AddUpstreamID proposes device u's upstream identity
// (store.Store.AddUpstreamID).
func (s *Store) AddUpstreamID(ctx context.Context, u, up push.UAID, helloed time.Time) (store.UpstreamID, bool, error) {
	r, err := s.propose(ctx, &Entry{Kind: KindUpstreamID, Op: OpAdd, UAID: u, Upstream: up, Helloed: helloed})
	if err != nil {
		return store.UpstreamID{}, false, err
	}
	if r.Err != nil {
		return store.UpstreamID{}, false, r.Err
	}
	return r.UpstreamID, r.Added, nil
}

// SetUpstreamID proposes replacing device u's upstream identity
// (store.Store.SetUpstreamID).
func (s *Store) SetUpstreamID(ctx context.Context, u, up push.UAID, helloed time.Time) error {
	r, err := s.propose(ctx, &Entry{Kind: KindUpstreamID, Op: OpSet, UAID: u, Upstream: up, Helloed: helloed})
	if err != nil {
		return err
	}
	return r.Err
}

// DeleteUpstreamID proposes removing device u's upstream identity.
func (s *Store) DeleteUpstreamID(ctx context.Context, u push.UAID) (bool, error) {
	r, err := s.propose(ctx, &Entry{Kind: KindUpstreamID, Op: OpDelete, UAID: u})
	return r.Existed, err
}

// UnregisterLater proposes a channel's unregister kept for the upstream
// (store.Store.UnregisterLater).
func (s *Store) UnregisterLater(ctx context.Context, u push.UAID, id push.ChannelID, up push.UAID) (bool, error) {
	r, err := s.propose(ctx, &Entry{Kind: KindOutbox, Op: OpLater, UAID: u, Channel: id, Upstream: up})
	return r.Existed, err
}

// UnregisterSent proposes removing outbox entries sent upstream.
func (s *Store) UnregisterSent(ctx context.Context, seqs ...uint64) (int, error) {
	if len(seqs) == 0 {
		return 0, nil
	}
	r, err := s.propose(ctx, &Entry{Kind: KindOutbox, Op: OpSent, Seqs: seqs})
	return r.N, err
}

// Helloed keeps the devices' hello time to be proposed with others (every
// helloFlush, and when the member stops holding the upstream) and
// returns len(us) at once: a hello time only orders the weekly hellos,
// and one lost with a holder that died makes a device's next hello come
// sooner, nothing worse.
func (s *Store) Helloed(ctx context.Context, at time.Time, us ...push.UAID) (int, error) {
	s.hmu.Lock()
	if s.hellos == nil {
		s.hellos = map[push.UAID]time.Time{}
	}
	for _, u := range us {
		s.hellos[u] = at
	}
	s.hmu.Unlock()
	return len(us), nil
}

// flushHellos proposes the hello times kept, up to maxHellos an entry.
// Those not committed are kept for the next flush.
func (s *Store) flushHellos(ctx context.Context) {
	for {
		s.hmu.Lock()
		var hs []Hello
		for u, at := range s.hellos {
			if len(hs) == maxHellos {
				break
			}
			hs = append(hs, Hello{UAID: u, At: at})
		}
		for _, h := range hs {
			delete(s.hellos, h.UAID)
		}
		s.hmu.Unlock()
		if len(hs) == 0 {
			return
		}
		if _, err := s.propose(ctx, &Entry{Kind: KindHellos, Hellos: hs}); err != nil && !errors.Is(err, ErrNoResult) {
			s.hmu.Lock()
			for _, h := range hs {
				if _, newer := s.hellos[h.UAID]; !newer {
					s.hellos[h.UAID] = h.At
				}
			}
			s.hmu.Unlock()
			return
		}
	}
}
