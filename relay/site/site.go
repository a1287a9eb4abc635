package site

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/consensus"
	"github.com/pushrelay/pushrelay/relay/member"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/store"
)

// Config configures a member's part of the site.
type Config struct {
	// Name is this member's name (node_name); its consensus id is
	// member.IDOf(Name).
	Name string
	// Store is the member's own store; Dir its data dir (the consensus
	// log goes in Dir/site).
	Store *store.Store
	Dir   string
	// Listen is the consensus transport's TCP address
	// (cluster_peer_listen); Advertise, if set, what peers are told.
	Listen, Advertise string
	// ServerTLS and ClientTLS authenticate peers: the site's keys
	// (relay/linkauth, the link_* keys).
	ServerTLS, ClientTLS *tls.Config
	// Members is the site's membership now (member.Member.Members).
	Members func() []member.Info
	// Expect is how many members a new site waits for before it forms
	// (cluster_expect, default 1): the first Expect members by id form it
	// together; the others, and any that come later, are added.
	Expect int
	// Settle is how long the membership must hold still with Expect
	// members before they form the site (2 s).
	Settle time.Duration
	// ReapAfter: a voter failed for this long is removed from the
	// consensus group by the leader, if the rest keep a quorum (72 h).
	ReapAfter time.Duration
	// SweepInterval is how often the leader proposes the removal of
	// expired messages (30 s); SweepLimit bounds one sweep (1000).
	SweepInterval time.Duration
	SweepLimit    int
	// Keys are the fingerprints of this member's endpoint.key and
	// wake.key (zero: not checked): a member whose keys differ from the
	// site's does not form or join it (keys.go).
	Keys KeyPrints
	// WakeRecheck is how long a wake waits when another member may hold
	// the device's session (2 s); WakeOwnerGap the least time between
	// two wake owner entries of this member for one device (5 s).
	WakeRecheck  time.Duration
	WakeOwnerGap time.Duration
	// Consensus tuning (relay/consensus defaults when zero).
	Tick           time.Duration
	ProposeTimeout time.Duration
	SnapshotEvery  uint64

	Logger  *slog.Logger
	Metrics *metrics.Registry
	Now     func() time.Time
}

func (c *Config) setDefaults() {
	if c.Expect <= 0 {
		c.Expect = 1
	}
	if c.Settle <= 0 {
		c.Settle = 2 * time.Second
	}
	if c.ReapAfter <= 0 {
		c.ReapAfter = 72 * time.Hour
	}
	if c.SweepInterval <= 0 {
		c.SweepInterval = 30 * time.Second
	}
	if c.SweepLimit <= 0 {
		c.SweepLimit = 1000
	}
	if c.WakeRecheck <= 0 {
		c.WakeRecheck = 2 * time.Second
	}
	if c.WakeOwnerGap <= 0 {
		c.WakeOwnerGap = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Site is this member's part of the site: the state machine over its
// store, the consensus node (made once the member knows whether it forms
// a new site or joins one), the store the relay core uses (Store), the
// leader's chores (adding members as voters and removing those gone for
// good; proposing expiry sweeps).
type Site struct {
	cfg     Config
	id      uint64
	machine *Machine
	st      *Store
	m       *siteMetrics

	ready chan struct{} // closed once node is set
	node  atomic.Pointer[consensus.Node]

	mu     sync.Mutex
	failed map[uint64]time.Time // voters seen failed, since

	// Broadcast versions applied from the log, waiting for onBcast (on
	// a goroutine of Run's: the apply must not wait for the registry,
	// whose Set may be waiting for that very apply).
	bmu     sync.Mutex
	bcasts  map[string]string
	bkick   chan struct{}
	onBcast func(map[string]string)

	// wake: which devices this member wakes (waking.go); keys: the
	// site's keys checked (keys.go).
	wake *waking
	// bwant: the broadcast ids this member proposed (bwant.go).
	bwant *wants
	keys  keyCheck
	// lid: the relay link identities announced (linkid.go).
	lid linkIDs
	// parentStale: a snapshot replaced the store; the link parent reads
	// its children again (parent.go).
	parentStale atomic.Bool
	// up is the site's upstream on this member (holder.go); nil without.
	up *holder
	// holderID and holderTerm: the upstream's holder the log last named.
	holderID, holderTerm atomic.Uint64

	closeOnce sync.Once
	closed    chan struct{}
}

// New makes this member's part of the site; Run starts it.
func New(cfg Config) (*Site, error) {
	cfg.setDefaults()
	if cfg.Store == nil || cfg.Dir == "" || cfg.Members == nil || !member.ValidName(cfg.Name) {
		return nil, errors.New("site: Store, Dir, Members and a valid Name are required")
	}
	if cfg.ServerTLS == nil || cfg.ClientTLS == nil {
		return nil, errors.New("site: peers need the site's keys (link_cert, link_key, link_ca or link_pins)")
	}
	s := &Site{
		cfg: cfg, id: member.IDOf(cfg.Name), ready: make(chan struct{}), closed: make(chan struct{}),
		failed: map[uint64]time.Time{}, bkick: make(chan struct{}, 1), wake: newWaking(), bwant: newWants(),
	}
	s.machine = NewMachine(cfg.Store, s.id, cfg.Logger)
	s.machine.onBroadcasts = s.noteBroadcasts
	s.machine.onWakeOwners = s.wakeOwners
	s.machine.onReset = s.resetApplied
	s.machine.onRestored = s.restored
	s.machine.onUpstream = s.noteUpstream
	hid, hterm, err := cfg.Store.Holder()
	if err != nil {
		return nil, fmt.Errorf("site: %w", err)
	}
	s.holderID.Store(hid)
	s.holderTerm.Store(hterm)
	s.st = NewStore(cfg.Store, s.machine, s, cfg.Now)
	s.m = newSiteMetrics(metrics.OrNew(cfg.Metrics), s)
	return s, nil
}

// OnBroadcasts sets fn to hear of the broadcast versions applied from the
// site's log (those of every member, this one's included), in order, on
// a goroutine of Run's: broadcast.Registry.Applied. Call it before Run.
func (s *Site) OnBroadcasts(fn func(map[string]string)) { s.onBcast = fn }

// noteBroadcasts queues versions for onBcast, merged with those waiting.
func (s *Site) noteBroadcasts(m map[string]string) {
	s.bmu.Lock()
	if s.bcasts == nil {
		s.bcasts = map[string]string{}
	}
	maps.Copy(s.bcasts, m)
	s.bmu.Unlock()
	select {
	case s.bkick <- struct{}{}:
	default:
	}
}

// deliverBroadcasts hands queued versions to onBcast until ctx ends.
func (s *Site) deliverBroadcasts(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.bkick:
		}
		s.bmu.Lock()
		m := s.bcasts
		s.bcasts = nil
		s.bmu.Unlock()
		if len(m) > 0 && s.onBcast != nil {
			s.onBcast(m)
		}
	}
}

// Store is the member's store as the relay core must use it: its writes
// go through the site's log.
func (s *Site) Store() *Store { return s.st }

// ID is this member's consensus id.
func (s *Site) ID() uint64 { return s.id }

// InSite reports whether this member holds the site's log (it formed the
// site or joined it): member.Meta.InSite.
func (s *Site) InSite() bool { return s.node.Load() != nil }

// Addr is the consensus transport's address: Advertise, or the node's
// once it is up. Before that it is Listen when Listen names a host and
// port ("" for a wildcard host or port 0), so that the membership
// carries it from the start: members that form a site together need
// each other's addresses at once, not only the leader's (a follower
// learns a peer's address from its metadata or its hello, and followers
// say nothing to each other until the leader is gone).
func (s *Site) Addr() string {
	if s.cfg.Advertise != "" {
		return s.cfg.Advertise
	}
	if n := s.node.Load(); n != nil {
		return n.Addr()
	}
	if host, port, err := net.SplitHostPort(s.cfg.Listen); err == nil && host != "" && port != "0" {
		if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
			return s.cfg.Listen
		}
	}
	return ""
}

// Leader reports whether this member leads the site now.
func (s *Site) Leader() bool {
	n := s.node.Load()
	return n != nil && n.Leader() == s.id
}

// Status is the consensus node's view (zero before it is up).
func (s *Site) Status() consensus.Status {
	if n := s.node.Load(); n != nil {
		return n.Status()
	}
	return consensus.Status{ID: s.id}
}

// waitNode is the consensus node once it is up; before that (the site
// not formed yet, or this member not yet added) it waits within ctx and
// the propose bound, then fails with ErrNoQuorum.
func (s *Site) waitNode(ctx context.Context) (*consensus.Node, error) {
	if n := s.node.Load(); n != nil {
		return n, nil
	}
	wait := s.cfg.ProposeTimeout
	if wait <= 0 {
		wait = 3 * time.Second
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-s.ready:
		return s.node.Load(), nil
	case <-t.C:
		return nil, fmt.Errorf("%w: this member is not in a site yet", relay.ErrNoQuorum)
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.closed:
		return nil, relay.ErrClosing
	}
}

// ReadBarrier returns once this member has applied everything the site
// had committed when it was called (consensus.Node.ReadBarrier), waiting
// for the node as Propose does; its errors wrap relay.ErrNoQuorum when
// that cannot be known (not in a site, no leader, no quorum).
func (s *Site) ReadBarrier(ctx context.Context) error {
	n, err := s.waitNode(ctx)
	if err != nil {
		return err
	}
	if err := n.ReadBarrier(ctx); err != nil {
		if errors.Is(err, consensus.ErrNoQuorum) {
			return fmt.Errorf("%w: %w", relay.ErrNoQuorum, err)
		}
		return err
	}
	return nil
}

// Propose hands data to the consensus node once it is up; before that
// (the site not formed yet, or this member not yet added) it waits within
// ctx and the propose bound, then fails with ErrNoQuorum. Its errors
// wrap relay.ErrNoQuorum when the site could not commit.
func (s *Site) Propose(ctx context.Context, data []byte) (uint64, error) {
	n, err := s.waitNode(ctx)
	if err != nil {
		return 0, err
	}
	idx, err := n.Propose(ctx, data)
	switch {
	case errors.Is(err, consensus.ErrNoQuorum):
		s.m.noQuorum.Inc()
		return 0, fmt.Errorf("%w: %w", relay.ErrNoQuorum, err)
	case errors.Is(err, consensus.ErrClosed):
		return 0, fmt.Errorf("%w: %w", relay.ErrClosing, err)
	}
	return idx, err
}

// nodeLead is the consensus node as holdLoop sees it.
type nodeLead struct{ n *consensus.Node }

// leads reads the lead and the term from one Status: read apart, a
// leader that just learnt of a newer term (a member resumed after a
// pause) looked like the leader of that term, and named itself the
// holder in it while another led it.
func (l nodeLead) leads() (uint64, bool) {
	st := l.n.Status()
	if st.Leader != l.n.ID() || st.State != "leader" || l.n.Leader() != l.n.ID() {
		return 0, false
	}
	return st.Term, true
}

// logDir is where the consensus log lives.
func (s *Site) logDir() string { return filepath.Join(s.cfg.Dir, "site") }

// Run forms or joins the site, then runs the consensus node and the
// leader's chores until ctx ends or Close.
func (s *Site) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	peers, join, err := s.decide(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while deciding (or refused: keys.go)
		}
		return err
	}
	n, err := consensus.New(consensus.Config{
		ID: s.id, Peers: peers, Join: join, Dir: s.logDir(),
		Listen: s.cfg.Listen, Advertise: s.cfg.Advertise,
		ServerTLS: s.cfg.ServerTLS, ClientTLS: s.cfg.ClientTLS,
		Tick: s.cfg.Tick, ProposeTimeout: s.cfg.ProposeTimeout, SnapshotEvery: s.cfg.SnapshotEvery,
		Logger: s.cfg.Logger, Metrics: s.cfg.Metrics,
	}, s.machine)
	if err != nil {
		return fmt.Errorf("site: %w", err)
	}
	defer n.Close()
	s.node.Store(n)
	close(s.ready)
	s.refreshPeers(n)

	var wg sync.WaitGroup
	defer wg.Wait()
	errc := make(chan error, 1)
	wg.Go(func() { errc <- n.Run(ctx) })
	wg.Go(func() { s.chores(ctx, n) })
	wg.Go(func() { s.deliverBroadcasts(ctx) })
	wg.Go(func() { s.proposeWants(ctx) })
	wg.Go(func() { s.runWaking(ctx) })
	if s.up != nil {
		wg.Go(func() { s.holdLoop(ctx, nodeLead{n}) })
	}
	select {
	case err := <-errc:
		cancel()
		if ctx.Err() != nil || errors.Is(err, consensus.ErrClosed) {
			return nil
		}
		return fmt.Errorf("site: %w", err)
	case <-ctx.Done():
		return nil
	}
}

// Close stops Run; idempotent.
func (s *Site) Close() error {
	s.closeOnce.Do(func() { close(s.closed) })
	return nil
}

// decide says how the consensus node starts: from its log (a restart);
// joining a site another member holds; or forming a new one with the
// first Expect members by id, once the membership held still for Settle
// with Expect members, none of them in a site. Every member of a new
// site decides alike from the same membership.
func (s *Site) decide(ctx context.Context) (peers map[uint64]string, join bool, err error) {
	if consensus.HasState(s.logDir()) {
		s.cfg.Logger.Info("site: restarting from the consensus log")
		return nil, true, nil
	}
	var last []uint64
	var since time.Time
	t := time.NewTicker(max(s.cfg.Settle/8, 50*time.Millisecond))
	defer t.Stop()
	for {
		alive := s.alive()
		var ids []uint64
		var inSite []member.Info
		files := ""
		for _, in := range alive {
			if in.Meta.InSite && !in.Self {
				inSite = append(inSite, in)
			}
		}
		// The site's keys are those of most of its members (one whose
		// key files were replaced is not the site's).
		var names []string
		for _, in := range founders(inSite) {
			names = append(names, in.Name)
			if f := s.keysDiffer(in.Meta); f != "" {
				files = f
			}
		}
		switch {
		case len(inSite) > 0 && files != "":
			// Not joined: the leader would not add it anyway.
			s.refuse(files, names)
		case len(inSite) > 0:
			s.refuse("", nil)
			s.cfg.Logger.Info("site: joining the site", "via", inSite[0].Name)
			return nil, true, nil
		default:
			// A new site: its founders are the members with the same
			// keys; this one, if its keys are not theirs, waits refused.
			group := founders(alive)
			self := slices.ContainsFunc(group, func(in member.Info) bool { return in.Self })
			if !self {
				for _, in := range group {
					names = append(names, in.Name)
					if f := s.keysDiffer(in.Meta); f != "" {
						files = f
					}
				}
				s.refuse(files, names)
			} else {
				s.refuse("", nil)
				alive = group
				for _, in := range group {
					ids = append(ids, in.Meta.RaftID)
				}
			}
		}
		slices.Sort(ids)
		if !slices.Equal(ids, last) {
			last, since = ids, s.cfg.Now()
		}
		if len(ids) > 0 && len(ids) >= s.cfg.Expect && s.cfg.Now().Sub(since) >= s.cfg.Settle {
			first := ids[:s.cfg.Expect]
			if !slices.Contains(first, s.id) {
				s.cfg.Logger.Info("site: the site forms without this member; it will be added", "expect", s.cfg.Expect)
				return nil, true, nil
			}
			peers = map[uint64]string{}
			for _, in := range alive {
				if slices.Contains(first, in.Meta.RaftID) {
					peers[in.Meta.RaftID] = in.Meta.RaftAddr
				}
			}
			peers[s.id] = ""
			s.cfg.Logger.Info("site: forming a new site", "members", len(peers))
			return peers, false, nil
		}
		select {
		case <-ctx.Done():
			return nil, false, ctx.Err()
		case <-t.C:
		}
	}
}

// alive is the membership's alive members with a consensus id (this
// member included, whatever its state).
func (s *Site) alive() []member.Info {
	var out []member.Info
	for _, in := range s.cfg.Members() {
		if in.Self {
			in.Meta.RaftID = s.id
			in.Meta.EndpointKey, in.Meta.WakeKey = s.cfg.Keys.Endpoint, s.cfg.Keys.Wake
			out = append(out, in)
			continue
		}
		if in.State == member.StateAlive && in.Meta.RaftID != 0 {
			out = append(out, in)
		}
	}
	return out
}

// refreshPeers tells the transport every member's consensus address.
func (s *Site) refreshPeers(n *consensus.Node) {
	for _, in := range s.cfg.Members() {
		if !in.Self && in.Meta.RaftID != 0 && in.Meta.RaftAddr != "" {
			n.SetPeerAddr(in.Meta.RaftID, in.Meta.RaftAddr)
		}
	}
}

// chores: peers' addresses kept current; on the leader, members added as
// voters and those gone for good removed, and expiry sweeps proposed.
func (s *Site) chores(ctx context.Context, n *consensus.Node) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	sweep := time.NewTicker(s.cfg.SweepInterval + rand.N(s.cfg.SweepInterval/10+1))
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			s.refreshPeers(n)
			if n.Leader() == s.id {
				s.autopilot(ctx, n)
			} else {
				s.checkOthers()
			}
		case <-sweep.C:
			if n.Leader() == s.id {
				pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				if err := s.st.ProposeSweep(pctx, s.cfg.SweepLimit); err != nil {
					s.cfg.Logger.Warn("site: expiry sweep not proposed", "err", err)
				}
				cancel()
			}
		}
	}
}

// autopilot (the leader's): every alive member not a voter is added; a
// voter failed for ReapAfter is removed if the others keep a quorum. One
// change at a time (raft's rule).
func (s *Site) autopilot(ctx context.Context, n *consensus.Node) {
	st := n.Status()
	voters := st.Voters
	now := s.cfg.Now()
	state := map[uint64]member.Info{}
	for _, in := range s.cfg.Members() {
		if in.Meta.RaftID != 0 {
			state[in.Meta.RaftID] = in
		}
	}
	refused := s.checkOthers()
	for id, in := range state {
		if in.Self || in.State != member.StateAlive || in.Meta.RaftAddr == "" || slices.Contains(voters, id) || refused[id] {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := n.AddVoter(cctx, id, in.Meta.RaftAddr)
		cancel()
		if err != nil {
			s.cfg.Logger.Warn("site: member not added", "member", in.Name, "err", err)
			return
		}
		s.m.changes.With("added").Inc()
		s.cfg.Logger.Info("site: member added as a voter", "member", in.Name, "voters", len(voters)+1)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range voters {
		in, known := state[id]
		if id == s.id || (known && in.State == member.StateAlive) {
			delete(s.failed, id)
			continue
		}
		since, ok := s.failed[id]
		if !ok {
			s.failed[id] = now
			continue
		}
		// A site of two cannot remove one: the change needs both.
		if now.Sub(since) < s.cfg.ReapAfter || len(voters) <= 2 {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := n.RemoveVoter(cctx, id)
		cancel()
		if err != nil {
			s.cfg.Logger.Warn("site: member gone for good not removed", "id", fmt.Sprintf("%x", id), "err", err)
			return
		}
		delete(s.failed, id)
		s.m.changes.With("removed").Inc()
		s.cfg.Logger.Warn("site: member gone for good removed from the voters", "id", fmt.Sprintf("%x", id), "failed_for", now.Sub(since).Round(time.Second))
		return
	}
}
