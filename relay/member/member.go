package member

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/pushrelay/pushrelay/relay/metrics"
)

// State is what a member is, as this member sees it.
type State int

// States of a member. memberlist's "suspect" is reported as alive: a
// suspect member either refutes or is failed within the suspicion time.
const (
	StateAlive State = iota
	StateFailed
	StateLeft
)

func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateFailed:
		return "failed"
	case StateLeft:
		return "left"
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// Info is one member as this member knows it.
type Info struct {
	Name string
	// Addr is its gossip address, host:port.
	Addr  string
	State State
	// Since is when this member saw it enter State.
	Since time.Time
	// Meta is what it last said about itself; MetaErr, when not empty,
	// says why its metadata did not decode (Meta then holds only Name).
	Meta    Meta
	MetaErr string
	// Self marks this member's own entry.
	Self bool
}

// EventKind says what happened to a member.
type EventKind int

// Event kinds. A member that fails and comes back is joined again.
const (
	EventJoin EventKind = iota + 1
	EventUpdate
	EventLeave // left gracefully (Close)
	EventFail  // declared failed by the failure detector
	// EventResync follows events that were dropped because the queue
	// was full: Members holds the whole membership, to rebuild from.
	EventResync
)

func (k EventKind) String() string {
	switch k {
	case EventJoin:
		return "join"
	case EventUpdate:
		return "update"
	case EventLeave:
		return "leave"
	case EventFail:
		return "fail"
	case EventResync:
		return "resync"
	}
	return "event(" + strconv.Itoa(int(k)) + ")"
}

// Event is a change of membership. Applying an event twice must be
// harmless to the consumer (a join of a member it knows, a fail of one it
// has marked failed).
type Event struct {
	Kind EventKind
	// Member is the member the event is about (all but EventResync).
	Member Info
	// Members is the whole membership (EventResync only), this member
	// included.
	Members []Info
}

// Handler consumes membership events, one at a time and in order, on a
// goroutine of the Member's. A slow handler delays the events after it,
// never memberlist: while the queue is full, events are dropped (counted)
// and one EventResync follows.
type Handler interface {
	HandleEvent(Event)
}

// HandlerFunc makes a function a Handler.
type HandlerFunc func(Event)

// HandleEvent calls f(e).
func (f HandlerFunc) HandleEvent(e Event) { f(e) }

// ErrClosed is returned by Run on a Member that was closed or ran
// already.
var ErrClosed = errors.New("member: closed")

// Member is this relay's membership of its site. See the package doc.
type Member struct {
	cfg  Config
	log  *slog.Logger
	met  *memberMetrics
	ml   *memberlist.Memberlist
	ring *memberlist.Keyring
	addr string

	mu      sync.Mutex
	table   map[string]*Info
	queue   []Event
	resync  bool   // events were dropped; an EventResync is due
	meta    []byte // encoded, as NodeMeta serves it
	leaving bool
	keys    [][]byte // as last installed, primary first

	wake     chan struct{} // an event was queued
	metaWake chan struct{} // UpdateMeta was called
	closing  chan struct{}
	ran      atomic.Bool
	killed   atomic.Bool // memberlist shut down without a leave (tests)
	close    sync.Once
	closeErr error
	wg       sync.WaitGroup
}

// New starts the member's gossip listener (UDP and TCP on Listen) and
// returns it alone on its site; Run joins the seeds.
func New(cfg Config) (*Member, error) {
	cfg, err := cfg.Validate()
	if err != nil {
		return nil, err
	}
	m := &Member{
		cfg:      cfg,
		log:      cfg.Logger,
		met:      newMemberMetrics(metrics.OrNew(cfg.Metrics)),
		table:    map[string]*Info{},
		wake:     make(chan struct{}, 1),
		metaWake: make(chan struct{}, 1),
		closing:  make(chan struct{}),
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	m.meta, err = EncodeMeta(m.fillMeta(Meta{}))
	if err != nil {
		return nil, err
	}
	host, portStr, _ := net.SplitHostPort(cfg.Listen)
	if host == "" {
		host = "0.0.0.0"
	}
	port, _ := strconv.Atoi(portStr)
	mlLog := log.New(&logWriter{m: m}, "", 0)
	nt, err := listen(host, port, mlLog)
	if err != nil {
		return nil, fmt.Errorf("member: listen %s: %w", cfg.Listen, err)
	}
	var tr memberlist.NodeAwareTransport = nt
	if cfg.Faults != nil {
		tr = cfg.Faults.wrap(cfg.Name, nt)
	}
	m.ring, err = memberlist.NewKeyring(cfg.Keys, cfg.Keys[0])
	if err != nil {
		tr.Shutdown()
		return nil, fmt.Errorf("member: keyring: %w", err)
	}
	m.keys = cfg.Keys
	m.met.keys.Set(float64(len(cfg.Keys)))

	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.Transport = tr
	mc.BindAddr = host
	mc.BindPort = nt.GetAutoBindPort()
	mc.AdvertisePort = mc.BindPort
	if cfg.Advertise != "" {
		ah, ap, _ := net.SplitHostPort(cfg.Advertise)
		mc.AdvertiseAddr = ah
		mc.AdvertisePort, _ = strconv.Atoi(ap)
	}
	t := cfg.Timing
	mc.ProbeInterval = t.ProbeInterval
	mc.ProbeTimeout = t.ProbeTimeout
	mc.IndirectChecks = t.IndirectChecks
	mc.SuspicionMult = t.SuspicionMult
	mc.SuspicionMaxTimeoutMult = t.SuspicionMaxMult
	mc.GossipInterval = t.GossipInterval
	mc.GossipNodes = t.GossipNodes
	mc.GossipToTheDeadTime = t.GossipToTheDead
	mc.PushPullInterval = t.PushPullInterval
	mc.TCPTimeout = t.TCPTimeout
	mc.DeadNodeReclaimTime = t.DeadReclaim
	// Gossip is always encrypted and authenticated, both ways.
	mc.Keyring = m.ring
	mc.GossipVerifyIncoming = true
	mc.GossipVerifyOutgoing = true
	// A site's messages are a few hundred bytes: compressing them costs
	// a gateway's CPU for nothing.
	mc.EnableCompression = false
	mc.Delegate = delegate{m}
	mc.Events = events{m}
	mc.Conflict = conflicts{m}
	mc.Logger = mlLog
	m.ml, err = memberlist.Create(mc)
	if err != nil {
		tr.Shutdown()
		return nil, fmt.Errorf("member: start: %w", err)
	}
	m.addr = m.ml.LocalNode().Address()
	m.log.Info("cluster member started", "name", cfg.Name, "addr", m.addr, "keys", len(cfg.Keys))
	return m, nil
}

// listen opens the gossip sockets: TCP and UDP on one port. With port 0
// the kernel picks the TCP port, and the UDP one may be taken already:
// then it tries again with another, up to 10 times.
func listen(host string, port int, logger *log.Logger) (*memberlist.NetTransport, error) {
	tries := 1
	if port == 0 {
		tries = 10
	}
	var err error
	for range tries {
		var nt *memberlist.NetTransport
		nt, err = memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{host}, BindPort: port, Logger: logger})
		if err == nil {
			return nt, nil
		}
	}
	return nil, err
}

// Addr is this member's gossip address (host:port, the port resolved).
func (m *Member) Addr() string { return m.addr }

// Name is this member's name.
func (m *Member) Name() string { return m.cfg.Name }

// Run joins the seeds, then keeps the membership until ctx ends or Close
// is called: it delivers events, refreshes the metadata and runs the
// rejoin loop. It returns after Close (a graceful leave, bounded by
// LeaveTimeout, then shutdown) is done.
func (m *Member) Run(ctx context.Context) error {
	if !m.ran.CompareAndSwap(false, true) {
		return ErrClosed
	}
	select {
	case <-m.closing:
		return ErrClosed
	default:
	}
	m.wg.Add(2)
	go m.deliver()
	go m.maintain()
	select {
	case <-ctx.Done():
	case <-m.closing:
	}
	return m.Close()
}

// Close leaves the site gracefully (its metadata says so first, so the
// others count it left, not failed; both bounded by LeaveTimeout), shuts
// memberlist down and waits for the Member's goroutines: a join under way
// (at most Timing.TCPTimeout) and the handler's current event. No event
// is delivered after it returns. It is idempotent and safe to call with
// or without Run.
func (m *Member) Close() error {
	m.close.Do(func() {
		close(m.closing)
		m.wg.Wait()
		start := time.Now()
		m.mu.Lock()
		m.leaving = true
		m.mu.Unlock()
		var errs []error
		if !m.killed.Load() && m.ml.NumMembers() > 1 {
			// The leave is a dead message the others take as a leave;
			// the metadata makes sure they do.
			if m.setMeta(m.pollMeta()) {
				if err := m.ml.UpdateNode(m.cfg.LeaveTimeout / 2); err != nil {
					m.log.Debug("cluster: leaving metadata not confirmed", "err", err)
				}
			}
			if err := m.ml.Leave(m.cfg.LeaveTimeout / 2); err != nil {
				errs = append(errs, fmt.Errorf("member: leave: %w", err))
			}
		}
		if err := m.ml.Shutdown(); err != nil {
			errs = append(errs, fmt.Errorf("member: shutdown: %w", err))
		}
		m.closeErr = errors.Join(errs...)
		m.log.Info("cluster member left", "name", m.cfg.Name, "took", time.Since(start).Round(time.Millisecond), "err", m.closeErr)
	})
	return m.closeErr
}

// Members returns every member this one knows, itself included, sorted
// by name: alive ones, failed ones (until ReapAfter) and left ones.
func (m *Member) Members() []Info {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.membersLocked()
}

func (m *Member) membersLocked() []Info {
	out := make([]Info, 0, len(m.table))
	for _, in := range m.table {
		out = append(out, *in)
	}
	slices.SortFunc(out, func(a, b Info) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// UpdateMeta asks for the metadata to be read from Config.Meta again and
// sent to the site if it changed: within MetaInterval, and at most once
// per MetaInterval however often it is called. It never blocks.
func (m *Member) UpdateMeta() {
	select {
	case m.metaWake <- struct{}{}:
	default:
	}
}

// SetKeys installs a new set of gossip keys, the first primary (it
// encrypts): keys not installed are added, the primary is switched, keys
// no longer listed are removed. A KeyringFile's change calls it.
func (m *Member) SetKeys(keys [][]byte) error {
	if len(keys) == 0 {
		return errors.New("member: set keys: no key")
	}
	for i, k := range keys {
		if err := checkKey(k); err != nil {
			return fmt.Errorf("member: set keys: key %d: %w", i+1, err)
		}
	}
	for _, k := range keys {
		if err := m.ring.AddKey(k); err != nil {
			return fmt.Errorf("member: add key: %w", err)
		}
	}
	if err := m.ring.UseKey(keys[0]); err != nil {
		return fmt.Errorf("member: use key: %w", err)
	}
	for _, k := range m.ring.GetKeys() {
		if !slices.ContainsFunc(keys, func(x []byte) bool { return string(x) == string(k) }) {
			if err := m.ring.RemoveKey(k); err != nil {
				return fmt.Errorf("member: remove key: %w", err)
			}
		}
	}
	m.mu.Lock()
	m.keys = slices.Clone(keys)
	m.mu.Unlock()
	m.met.keys.Set(float64(len(keys)))
	m.log.Info("cluster: gossip keys installed", "keys", KeyFingerprints(keys))
	return nil
}

// Keys returns the fingerprints of the installed gossip keys, the
// primary first (KeyFingerprint).
func (m *Member) Keys() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return KeyFingerprints(m.keys)
}

// KeyFingerprint names a key without showing it: the first 4 bytes of
// its SHA-256 in hex.
func KeyFingerprint(k []byte) string {
	sum := sha256.Sum256(k)
	return hex.EncodeToString(sum[:4])
}

// KeyFingerprints is KeyFingerprint of each key.
func KeyFingerprints(keys [][]byte) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = KeyFingerprint(k)
	}
	return out
}

// fillMeta sets the fields the Member owns.
func (m *Member) fillMeta(md Meta) Meta {
	if md.Name == "" {
		md.Name = m.cfg.Name
	}
	if md.RaftID == 0 {
		md.RaftID = IDOf(md.Name)
	}
	return md
}

// pollMeta reads Config.Meta and encodes it.
func (m *Member) pollMeta() []byte {
	var md Meta
	if m.cfg.Meta != nil {
		md = m.cfg.Meta()
	}
	md = m.fillMeta(md)
	m.mu.Lock()
	md.Leaving = m.leaving
	m.mu.Unlock()
	b, err := EncodeMeta(md)
	if err != nil {
		m.log.Warn("cluster: metadata does not fit; sending name and id only", "err", err)
		b, _ = EncodeMeta(Meta{Name: md.Name, RaftID: md.RaftID, Leaving: md.Leaving})
	}
	return b
}

// setMeta makes b the metadata NodeMeta serves, reporting whether it
// changed.
func (m *Member) setMeta(b []byte) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if string(b) == string(m.meta) {
		return false
	}
	m.meta = b
	return true
}

// refreshMeta polls the metadata and, when it changed, sends it.
func (m *Member) refreshMeta() {
	if !m.setMeta(m.pollMeta()) {
		return
	}
	m.met.metaUpdates.Inc()
	if err := m.ml.UpdateNode(m.cfg.Timing.TCPTimeout); err != nil {
		m.log.Debug("cluster: metadata update not confirmed", "err", err)
	}
}

// observe records what memberlist told and queues the event.
func (m *Member) observe(kind EventKind, n *memberlist.Node) {
	in := Info{
		Name:  n.Name,
		Addr:  net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))),
		Since: time.Now(),
		Self:  n.Name == m.cfg.Name,
	}
	md, err := DecodeMeta(n.Meta)
	if err != nil {
		md = Meta{Name: n.Name}
		in.MetaErr = err.Error()
		m.log.Warn("cluster: a member's metadata does not decode; it counts as carrying none", "member", n.Name, "bytes", len(n.Meta), "err", err)
	}
	in.Meta = md
	if kind == EventLeave {
		if md.Leaving {
			in.State = StateLeft
		} else {
			in.State, kind = StateFailed, EventFail
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if prev := m.table[n.Name]; kind == EventUpdate && prev != nil && prev.State == StateAlive {
		in.Since = prev.Since
	}
	m.table[n.Name] = &in
	m.countLocked()
	if in.Self {
		return
	}
	m.met.events.With(kind.String()).Inc()
	switch kind {
	case EventJoin:
		m.log.Info("cluster: member joined", "member", in.Name, "addr", in.Addr)
	case EventLeave:
		m.log.Info("cluster: member left", "member", in.Name, "addr", in.Addr)
	case EventFail:
		m.log.Warn("cluster: member failed", "member", in.Name, "addr", in.Addr)
	}
	if m.resync || len(m.queue) >= m.cfg.EventQueue {
		m.resync = true
		m.met.dropped.Inc()
		return
	}
	m.queue = append(m.queue, Event{Kind: kind, Member: in})
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

func (m *Member) countLocked() {
	var n [3]int
	for _, in := range m.table {
		if int(in.State) < len(n) {
			n[in.State]++
		}
	}
	for s, c := range n {
		m.met.members.With(State(s).String()).Set(float64(c))
	}
}

// deliver hands queued events to the handler, in order.
func (m *Member) deliver() {
	defer m.wg.Done()
	for {
		select {
		case <-m.closing:
			return
		case <-m.wake:
		}
		for {
			m.mu.Lock()
			var e Event
			switch {
			case len(m.queue) > 0:
				e = m.queue[0]
				m.queue[0] = Event{}
				m.queue = m.queue[1:]
			case m.resync:
				m.resync = false
				e = Event{Kind: EventResync, Members: m.membersLocked()}
				m.met.events.With(EventResync.String()).Inc()
			}
			m.mu.Unlock()
			if e.Kind == 0 {
				break
			}
			if m.cfg.Events != nil {
				m.cfg.Events.HandleEvent(e)
			}
			select {
			case <-m.closing:
				return
			default:
			}
		}
	}
}

// maintain joins the seeds, then refreshes the metadata, runs the rejoin
// loop, reaps old members and watches the keyring file.
func (m *Member) maintain() {
	defer m.wg.Done()
	m.refreshMeta()
	if len(m.cfg.Join) > 0 {
		if n := m.join(m.cfg.Join); n == 0 {
			m.log.Warn("cluster: no seed answered; the rejoin loop tries again", "join", m.cfg.Join)
		}
	}
	tick := time.NewTicker(m.cfg.MetaInterval)
	defer tick.Stop()
	var rejoinC, keyringC <-chan time.Time
	rejoin := time.NewTimer(m.jitter())
	defer rejoin.Stop()
	if m.cfg.RejoinInterval > 0 {
		rejoinC = rejoin.C
	}
	if m.cfg.KeyringFile != "" {
		kt := time.NewTicker(m.cfg.KeyringCheck)
		defer kt.Stop()
		keyringC = kt.C
	}
	lastPoll, pending := time.Now(), false
	for {
		select {
		case <-m.closing:
			return
		case <-m.metaWake:
			pending = true
		case now := <-tick.C:
			if pending || now.Sub(lastPoll) >= m.cfg.MetaRefresh {
				pending, lastPoll = false, now
				m.refreshMeta()
			}
			m.reap(now)
		case <-rejoinC:
			if targets := m.rejoinTargets(); len(targets) > 0 {
				m.join(targets)
			}
			rejoin.Reset(m.jitter())
		case <-keyringC:
			m.reloadKeyring()
		}
	}
}

// jitter is the next wait of the rejoin loop: RejoinInterval ± 25%.
func (m *Member) jitter() time.Duration {
	d := m.cfg.RejoinInterval
	if d <= 0 {
		return time.Hour
	}
	return d*3/4 + rand.N(d/2+1)
}

// rejoinTargets returns what the rejoin loop joins: while a member is
// failed, or this one is alone though it has seeds, the seeds and the
// failed members' addresses. Left members are not chased.
func (m *Member) rejoinTargets() []string {
	m.mu.Lock()
	alive := 0
	var failed []string
	for _, in := range m.table {
		switch {
		case in.Self:
		case in.State == StateAlive:
			alive++
		case in.State == StateFailed:
			failed = append(failed, in.Addr)
		}
	}
	m.mu.Unlock()
	if len(failed) == 0 && (alive > 0 || len(m.cfg.Join) == 0) {
		return nil
	}
	slices.Sort(failed)
	var out []string
	for _, a := range append(slices.Clone(m.cfg.Join), failed...) {
		if a != m.addr && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// join joins each address in turn (each bounded by TCPTimeout), stopping
// early when the member closes, and returns how many answered.
func (m *Member) join(addrs []string) int {
	ok := 0
	for _, a := range addrs {
		select {
		case <-m.closing:
			return ok
		default:
		}
		if _, err := m.ml.Join([]string{a}); err != nil {
			m.met.rejoins.With("failed").Inc()
			m.log.Debug("cluster: join failed", "addr", a, "err", err)
			continue
		}
		m.met.rejoins.With("ok").Inc()
		m.log.Debug("cluster: joined", "addr", a)
		ok++
	}
	return ok
}

// reap forgets members failed or left longer than ReapAfter.
func (m *Member) reap(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, in := range m.table {
		if in.State != StateAlive && now.Sub(in.Since) > m.cfg.ReapAfter {
			delete(m.table, name)
			m.log.Info("cluster: forgot member", "member", name, "state", in.State, "since", in.Since)
		}
	}
	m.countLocked()
}

// reloadKeyring installs the keyring file's keys when they changed.
func (m *Member) reloadKeyring() {
	keys, err := ReadKeyring(m.cfg.KeyringFile)
	if err != nil {
		m.log.Warn("cluster: keyring not reloaded; the installed keys stay", "err", err)
		return
	}
	m.mu.Lock()
	same := slices.EqualFunc(keys, m.keys, func(a, b []byte) bool { return string(a) == string(b) })
	m.mu.Unlock()
	if same {
		return
	}
	if err := m.SetKeys(keys); err != nil {
		m.log.Warn("cluster: keyring not installed", "err", err)
	}
}

// logWriter turns memberlist's log lines ("[LEVEL] memberlist: ...")
// into slog records. Key errors (a peer with a key this member does not
// have, or none) are counted, and logged at most once per keyErrorEvery.
type logWriter struct {
	m          *Member
	mu         sync.Mutex
	lastKeyLog time.Time
	unlogged   int
}

const keyErrorEvery = 10 * time.Second

func (w *logWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{"[DEBUG]": slog.LevelDebug, "[INFO]": slog.LevelInfo, "[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError} {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			line, level = strings.TrimSpace(rest), l
			break
		}
	}
	line = strings.TrimPrefix(line, "memberlist: ")
	if strings.Contains(strings.ToLower(line), "crypt") {
		w.m.met.keyErrors.Inc()
		w.mu.Lock()
		now := time.Now()
		if now.Sub(w.lastKeyLog) < keyErrorEvery {
			w.unlogged++
			w.mu.Unlock()
			return len(p), nil
		}
		n := w.unlogged
		w.lastKeyLog, w.unlogged = now, 0
		w.mu.Unlock()
		w.m.log.Warn("cluster: gossip refused: a peer uses a key this member lacks (or none)", "detail", line, "more_since_last", n)
		return len(p), nil
	}
	w.m.log.Log(context.Background(), level, "memberlist: "+line)
	return len(p), nil
}

var _ io.Writer = (*logWriter)(nil)
