package consensus

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/wal"
)

// Errors.
var (
	// ErrNoQuorum: the entry was not known committed within the bound
	// (Config.ProposeTimeout): no leader, or none reachable by a quorum.
	// The relay answers 503 with Retry-After. If the proposal reached a
	// leader before the quorum was lost it may still commit later, as
	// with any timed-out request; origin keys make a retried post
	// harmless.
	ErrNoQuorum = errors.New("consensus: no quorum")
	// ErrClosed: the node is closed.
	ErrClosed = errors.New("consensus: closed")
	// ErrLeaderChanged (an ErrNoQuorum): the leader the proposal went to
	// was replaced, and everything the new leader had committed in its
	// term was applied here without it. It was then not in the new
	// leader's log; it commits only in the corner case of the old leader
	// winning again later with a delayed copy, so an idempotent entry
	// may be proposed again.
	ErrLeaderChanged = fmt.Errorf("%w: the leader changed before the entry was known committed", ErrNoQuorum)
)

// StateMachine is what the log's committed entries are applied to. Apply
// and Restore are called from raft's FSM goroutine, one at a time;
// Snapshot is called while Apply may run (to send a snapshot), and must
// write a consistent state (a read transaction).
type StateMachine interface {
	// Apply applies a batch of committed entries, in log order. index is
	// the log index of the last entry the batch covers; the state machine
	// records it as its applied index atomically with the data.
	Apply(index uint64, data [][]byte) error
	// AppliedIndex is the applied index the state machine has durably
	// recorded (0 for none). Entries at or below it are not applied again.
	AppliedIndex() uint64
	// Snapshot writes the whole state, its applied index included.
	Snapshot(w io.Writer) error
	// Restore replaces the whole state with what a Snapshot wrote on
	// another member. index is the log index the snapshot stands for at
	// least; AppliedIndex afterwards is the snapshot's own, which may be
	// higher.
	Restore(r io.Reader, index uint64) error
}

// Defaults of Config.
const (
	DefaultTick          = 100 * time.Millisecond
	DefaultElectionTicks = 10
	DefaultSnapshotEvery = 10000
	DefaultIdleTimeout   = 5 * time.Second
	// DefaultMaxAppend bounds the entries of one append (and of one
	// batch applied and one log write on the leader).
	DefaultMaxAppend = 256
)

// Config configures a Node.
type Config struct {
	// ID is this member's raft id (non-zero, never reused for another
	// member: derive it from the member's stable name, IDFromName).
	ID uint64
	// Peers are the voters' addresses by id ("host:port" of their
	// Listen), this member's own included. A new site starts with the
	// same Peers on every member; the addresses may be "" and set later
	// with SetPeerAddr.
	Peers map[uint64]string
	// Join starts a member with an empty disk without a configuration of
	// its own: it waits to be added (AddVoter on a member of the site)
	// or, already a voter, to be sent the log or a snapshot.
	Join bool
	// Dir is the data dir: the log (LogDir) and snapshots
	// received or being sent.
	Dir string
	// Listen is the peer transport's TCP address ("host:port", port 0
	// picks one); Advertise, if set, is the address peers are told (the
	// Listen address is, unless its host is a wildcard).
	Listen, Advertise string
	// ServerTLS and ClientTLS are relay/linkauth's, from the site's keys
	// (Credentials.ServerTLS and ClientTLS): peers authenticate each
	// other with mutual TLS.
	ServerTLS, ClientTLS *tls.Config
	// Tick is the unit of the timeouts; ElectionTicks of them is the
	// election timeout (a follower hearing nothing from the leader for
	// 1 to 2 of them starts an election; a leader hearing from no
	// quorum for one steps down). Defaults: 100 ms, 10.
	Tick          time.Duration
	ElectionTicks int
	// SnapshotEvery: a snapshot is recorded and the log compacted every
	// this many entries; CatchUpEntries of them stay in the log for
	// members a little behind (default SnapshotEvery/2).
	SnapshotEvery, CatchUpEntries uint64
	// ProposeTimeout bounds Propose, ReadBarrier, AddVoter and
	// RemoveVoter before ErrNoQuorum (default: 3 election timeouts).
	ProposeTimeout time.Duration
	// IdleTimeout: TCP keep-alive of the peer connections (default 5 s).
	IdleTimeout time.Duration
	// MaxAppend bounds the entries of one append (DefaultMaxAppend).
	MaxAppend int
	Logger    *slog.Logger
	Metrics   *metrics.Registry
}

func (c *Config) setDefaults() {
	if c.Tick <= 0 {
		c.Tick = DefaultTick
	}
	if c.ElectionTicks <= 0 {
		c.ElectionTicks = DefaultElectionTicks
	}
	if c.SnapshotEvery == 0 {
		c.SnapshotEvery = DefaultSnapshotEvery
	}
	if c.CatchUpEntries == 0 {
		c.CatchUpEntries = c.SnapshotEvery / 2
	}
	if c.ProposeTimeout <= 0 {
		c.ProposeTimeout = 3 * time.Duration(c.ElectionTicks) * c.Tick
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.MaxAppend <= 0 {
		c.MaxAppend = DefaultMaxAppend
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports what is wrong with c.
func (c Config) Validate() error {
	switch {
	case c.ID == 0:
		return errors.New("consensus: ID is 0")
	case c.Dir == "":
		return errors.New("consensus: no Dir")
	case c.ServerTLS == nil || c.ClientTLS == nil:
		return errors.New("consensus: no TLS (the site's keys)")
	case !c.Join && len(c.Peers) == 0:
		return errors.New("consensus: no Peers and not Join")
	case c.ElectionTicks < 0 || (c.ElectionTicks > 0 && c.ElectionTicks < 2):
		return errors.New("consensus: ElectionTicks must be 2 or more")
	}
	if _, ok := c.Peers[c.ID]; !ok && !c.Join {
		return fmt.Errorf("consensus: Peers does not list this member (%x)", c.ID)
	}
	return nil
}

// Node is one member of the replicated log. Make it with New, run it with
// Run, end it with Close.
type Node struct {
	id  uint64
	cfg Config
	sm  StateMachine
	log *slog.Logger
	m   *nodeMetrics

	rlog  *wal.Log
	ls    *logStore
	snaps *snapStore
	fsm   *fsm
	sl    *streamLayer
	tr    *peerTransport
	fwd   fwdPool

	r atomic.Pointer[raft.Raft] // set by Run

	leader      atomic.Uint64
	term        atomic.Uint64
	applied     atomic.Uint64 // raft's last entry handed to the state machine (or restored)
	barrierTerm atomic.Uint64 // the term whose barrier this leader applied
	snapIdx     atomic.Uint64 // the latest snapshot record's index
	snapKick    chan struct{} // a snapshot may be due
	seq         atomic.Uint64 // proposal ids (random start)

	mu        sync.Mutex
	waiters   map[uint64]chan uint64 // by proposal id: the applied index
	leaderCh  chan struct{}          // closed when the leader changes
	appliedCh chan struct{}          // closed when applied grows
	running   bool
	failErr   error
	failed    chan struct{}

	wg        sync.WaitGroup // the observer, the proposals' future waits
	runDone   chan struct{}
	stop      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// New opens the log in cfg.Dir (restoring a snapshot received and not
// restored before a stop) and binds the peer socket. The engine starts
// in Run: nothing is sent before.
func New(cfg Config, sm StateMachine) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("consensus: %w", err)
	}
	rlog, stable, err := openLog(cfg.Dir, cfg.Logger, cfg.Metrics)
	if err != nil {
		return nil, fmt.Errorf("consensus: %w", err)
	}
	n := &Node{
		id: cfg.ID, cfg: cfg, sm: sm, log: cfg.Logger.With("member", fmt.Sprintf("%x", cfg.ID)),
		rlog: rlog, waiters: map[uint64]chan uint64{}, leaderCh: make(chan struct{}), appliedCh: make(chan struct{}),
		failed: make(chan struct{}), stop: make(chan struct{}), runDone: make(chan struct{}),
		snapKick: make(chan struct{}, 1),
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	n.seq.Store(binary.BigEndian.Uint64(b[:]) >> 1)
	n.m = newNodeMetrics(metrics.OrNew(cfg.Metrics), n)
	n.ls = &logStore{log: rlog, stable: stable, m: n.m}
	n.snaps = &snapStore{n: n}
	n.fsm = &fsm{n: n}
	if err := n.snaps.recover(); err != nil {
		return nil, errors.Join(fmt.Errorf("consensus: %w", err), rlog.Close())
	}
	if rec, err := n.snaps.record(); err == nil && rec != nil {
		n.applied.Store(rec.Meta.Index)
		n.snapIdx.Store(rec.Meta.Index)
	}
	sl, err := newStreamLayer(cfg, n.serveForward)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("consensus: %w", err), rlog.Close())
	}
	n.sl = sl
	n.tr = newPeerTransport(n, sl)
	for id, addr := range cfg.Peers {
		n.tr.setAddr(id, addr)
	}
	return n, nil
}

// raftConfig is hashicorp/raft's configuration from ours.
func (n *Node) raftConfig() *raft.Config {
	et := n.electionTimeout()
	rc := raft.DefaultConfig()
	rc.LocalID = serverID(n.id)
	// A follower that has not heard from the leader for one to two
	// HeartbeatTimeouts (its timer re-arms at random while contact is
	// recent, so up to three) starts an election: half the election
	// timeout gives about what etcd's raft did with the whole one (1 to
	// 2 s by default; measured, docs/benchmarks.md). A leader that heard
	// from no quorum for LeaderLeaseTimeout steps down.
	rc.HeartbeatTimeout = et / 2
	rc.ElectionTimeout = et / 2
	rc.LeaderLeaseTimeout = et / 2
	// A follower learns that an entry committed from the leader's next
	// append; without new entries one goes out after this long.
	rc.CommitTimeout = min(n.cfg.Tick/5, 20*time.Millisecond)
	rc.MaxAppendEntries = min(n.cfg.MaxAppend, 1024)
	// Not BatchApplyCh: with it, raft buffers proposals in its apply
	// channel, and one still there when raft shuts down is never
	// answered, so its waiter (and Close, which waits for it) hung (CI:
	// TestSiteUpstreamHolderFailover stuck in Close for 10 minutes). The
	// leader still gathers every proposal waiting to be handed over into
	// one append and one log write (raft's group commit).
	rc.BatchApplyCh = false
	rc.ShutdownOnRemove = false
	rc.TrailingLogs = n.cfg.CatchUpEntries
	rc.SnapshotThreshold = n.cfg.SnapshotEvery
	// Snapshots are asked for every SnapshotEvery entries (see
	// snapshotter); raft's own check is the fallback.
	rc.SnapshotInterval = 10 * et
	rc.NoSnapshotRestoreOnStart = true
	rc.NoLegacyTelemetry = true
	rc.Logger = newHCLogger(n.log)
	return rc
}

// startRaft starts the engine: bootstrapping a new site's configuration
// on an empty disk (the same on every member of a new site), or from
// what the log holds.
func (n *Node) startRaft() (*raft.Raft, error) {
	rc := n.raftConfig()
	cache, err := raft.NewLogCache(n.cfg.MaxAppend*2, n.ls)
	if err != nil {
		return nil, err
	}
	has, err := raft.HasExistingState(n.ls, n.ls, n.snaps)
	if err != nil {
		return nil, err
	}
	if !has && !n.cfg.Join {
		var conf raft.Configuration
		for id, addr := range n.cfg.Peers {
			if id == n.id || addr == "" {
				addr = string(serverID(id))
			}
			conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: serverID(id), Address: raft.ServerAddress(addr)})
		}
		slices.SortFunc(conf.Servers, func(a, b raft.Server) int { return strings.Compare(string(a.ID), string(b.ID)) })
		if err := raft.BootstrapCluster(rc, n.ls, n.ls, n.snaps, n.tr, conf); err != nil {
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
	}
	return raft.NewRaft(rc, n.fsm, cache, n.ls, n.snaps, n.tr)
}

// ID is this member's raft id.
func (n *Node) ID() uint64 { return n.id }

// Addr is the peer transport's listening address.
func (n *Node) Addr() string { return n.sl.listenAddr() }

// SetPeerAddr sets (or changes) the address peer id is dialed at.
func (n *Node) SetPeerAddr(id uint64, addr string) { n.tr.setAddr(id, addr) }

// SetDropFilter installs f, which drops every message to or from a peer
// for which it returns true (nil removes it): a partition made inside the
// real transport, for tests and drills.
func (n *Node) SetDropFilter(f func(peer uint64) bool) {
	if f == nil {
		n.tr.drop.Store(nil)
		return
	}
	n.tr.drop.Store(&f)
}

// Leader is the leader's id as this member knows it, 0 for none.
func (n *Node) Leader() uint64 { return n.leader.Load() }

func (n *Node) electionTimeout() time.Duration {
	return time.Duration(n.cfg.ElectionTicks) * n.cfg.Tick
}

func (n *Node) raft() *raft.Raft { return n.r.Load() }

// Run runs the engine until ctx is done or Close. It returns nil then,
// or the error that stopped it (the state machine failing: the member
// must not go on). When ctx ends without Close the engine stops and the
// sockets stay open, answering nothing, as a stopped process's would.
func (n *Node) Run(ctx context.Context) error {
	n.mu.Lock()
	select {
	case <-n.stop:
		n.mu.Unlock()
		return ErrClosed
	default:
	}
	if n.running {
		n.mu.Unlock()
		return errors.New("consensus: Run called twice")
	}
	n.running = true
	n.mu.Unlock()
	defer close(n.runDone)
	r, err := n.startRaft()
	if err != nil {
		err = fmt.Errorf("consensus: log in %s: %w", n.cfg.Dir, err)
		n.log.Error("consensus: member stops", "err", err)
		return err
	}
	obs := make(chan raft.Observation, 64)
	observer := raft.NewObserver(obs, false, nil)
	r.RegisterObserver(observer)
	n.r.Store(r)
	n.wg.Add(2)
	go func() {
		defer n.wg.Done()
		n.observe(r, obs)
	}()
	go func() {
		defer n.wg.Done()
		n.snapshotter(r)
	}()
	var runErr error
	select {
	case <-ctx.Done():
	case <-n.stop:
	case <-n.failed:
		runErr = n.failure()
		n.log.Error("consensus: member stops", "err", runErr)
	}
	r.DeregisterObserver(observer)
	select {
	case <-n.stop:
		// Close hands the leadership over first, then shuts raft down.
		return runErr
	default:
	}
	// raft's shutdown waits for its replication, which a retry of an
	// append to an unreachable peer may hold.
	n.tr.stopRetries()
	r.Shutdown().Error()
	return runErr
}

// observe follows raft's leader and state changes.
func (n *Node) observe(r *raft.Raft, obs chan raft.Observation) {
	_, lid := r.LeaderWithID()
	n.setLeader(parseID(lid))
	for {
		var o raft.Observation
		select {
		case o = <-obs:
		case <-n.stop:
			return
		case <-n.runDone:
			return
		}
		switch d := o.Data.(type) {
		case raft.LeaderObservation:
			n.setLeader(parseID(d.LeaderID))
		case raft.RaftState:
			if d == raft.Candidate {
				n.m.elections.Inc()
			}
			if d != raft.Leader && d != raft.Follower {
				n.setLeader(0)
			}
		}
		n.term.Store(r.CurrentTerm())
	}
}

// snapshotter takes a snapshot (recording its metadata and compacting
// the log) whenever SnapshotEvery entries were applied since the last.
func (n *Node) snapshotter(r *raft.Raft) {
	for {
		select {
		case <-n.snapKick:
		case <-n.stop:
			return
		case <-n.runDone:
			return
		}
		if n.applied.Load() < n.snapIdx.Load()+n.cfg.SnapshotEvery {
			continue
		}
		if err := r.Snapshot().Error(); err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
			n.log.Debug("consensus: snapshot not taken", "err", err)
		}
	}
}

func (n *Node) setLeader(id uint64) {
	if old := n.leader.Swap(id); old == id {
		return
	}
	n.m.leaderChanges.Inc()
	n.log.Info("consensus: leader", "leader", fmt.Sprintf("%x", id))
	// Connections to a former leader are not reused: it may have
	// restarted since (a request on a dead connection has an unknown
	// outcome, and would wait out the bound).
	n.fwd.closeAll()
	n.mu.Lock()
	close(n.leaderCh)
	n.leaderCh = make(chan struct{})
	n.mu.Unlock()
}

// fail records the error that stops the member.
func (n *Node) fail(err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.failErr == nil {
		n.failErr = err
		close(n.failed)
	}
}

func (n *Node) failure() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.failErr
}

// advance records that raft's entries through index reached the state
// machine, and wakes the proposers of those given (id, index pairs).
func (n *Node) advance(index uint64, woken []uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for i := 0; i < len(woken); i += 2 {
		if ch := n.waiters[woken[i]]; ch != nil {
			ch <- woken[i+1]
			delete(n.waiters, woken[i])
		}
	}
	if index > n.applied.Load() {
		n.applied.Store(index)
		close(n.appliedCh)
		n.appliedCh = make(chan struct{})
		if index >= n.snapIdx.Load()+n.cfg.SnapshotEvery {
			select {
			case n.snapKick <- struct{}{}:
			default:
			}
		}
	}
}

// waitApplied returns once the state machine holds every entry through
// index: raft's applied index reached it, and every entry past what the
// state machine was handed, up to index, is one without data (the
// leader's empty entry, a barrier), or it was handed them.
func (n *Node) waitApplied(ctx context.Context, index uint64) error {
	for {
		n.mu.Lock()
		ch := n.appliedCh
		n.mu.Unlock()
		if n.holds(index) {
			return nil
		}
		t := time.NewTimer(5 * time.Millisecond)
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-n.stop:
			t.Stop()
			return ErrClosed
		}
		t.Stop()
	}
}

// holds says whether the state machine holds every entry through index
// (see waitApplied).
func (n *Node) holds(index uint64) bool {
	a := n.applied.Load()
	if a >= index {
		return true
	}
	r := n.raft()
	return r != nil && r.AppliedIndex() >= index && n.noDataBetween(a, index)
}

// noDataBetween says whether no entry in (from, to] goes to the state
// machine.
func (n *Node) noDataBetween(from, to uint64) bool {
	if to-from > 64 {
		return false
	}
	var l raft.Log
	for i := from + 1; i <= to; i++ {
		if n.ls.GetLog(i, &l) != nil {
			return false
		}
		if l.Type == raft.LogCommand || l.Type == raft.LogConfiguration {
			return false
		}
	}
	return true
}

// waitLeader waits until a leader other than not is known, or ctx ends.
func (n *Node) waitLeader(ctx context.Context, not uint64) (uint64, error) {
	for {
		n.mu.Lock()
		ch := n.leaderCh
		n.mu.Unlock()
		if l := n.leader.Load(); l != 0 && l != not {
			return l, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-n.stop:
			return 0, ErrClosed
		}
	}
}

// Propose appends data to the log and returns its index once a quorum
// has committed it and this member has applied it. A follower's proposal
// is forwarded to the leader. ErrNoQuorum after Config.ProposeTimeout
// (ErrLeaderChanged sooner when the leader it went to was replaced
// without it); ctx's error if ctx ends first; ErrClosed after Close.
func (n *Node) Propose(ctx context.Context, data []byte) (uint64, error) {
	select {
	case <-n.stop:
		return 0, ErrClosed
	default:
	}
	id := n.seq.Add(1) &^ (1 << 63)
	entry := make([]byte, headerSize, headerSize+len(data))
	binary.BigEndian.PutUint64(entry, n.id)
	binary.BigEndian.PutUint64(entry[8:], id)
	entry = append(entry, data...)

	pctx, cancel := context.WithTimeout(ctx, n.cfg.ProposeTimeout)
	defer cancel()
	fail := func(err error) (uint64, error) {
		switch {
		case errors.Is(err, ErrClosed) || errors.Is(err, raft.ErrRaftShutdown):
			n.m.proposeFailed.With("closed").Inc()
			return 0, ErrClosed
		case ctx.Err() != nil:
			n.m.proposeFailed.With("canceled").Inc()
			return 0, ctx.Err()
		case errors.Is(err, ErrLeaderChanged):
			n.m.proposeFailed.With("leader_changed").Inc()
			return 0, ErrLeaderChanged
		}
		n.m.proposeFailed.With("no_quorum").Inc()
		return 0, fmt.Errorf("%w: %w", ErrNoQuorum, err)
	}
	ch := make(chan uint64, 1)
	n.mu.Lock()
	n.waiters[id] = ch
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.waiters, id)
		n.mu.Unlock()
	}()
	leader, err := n.waitLeader(pctx, 0)
	if err != nil {
		return fail(fmt.Errorf("no leader: %w", err))
	}
	n.m.proposals.Inc()
	counted := false
	for {
		var res fwdResult
		var err error
		if leader == n.id {
			res, err = n.proposeHere(pctx, entry)
		} else {
			if !counted {
				n.m.forwards.Inc()
				counted = true
			}
			res, err = n.forward(pctx, leader, opPropose, entry)
		}
		switch {
		case errors.Is(err, ErrClosed):
			return fail(err)
		case err == nil && res.status == fwdOK:
			// Committed; applied here once the waiter is woken.
			select {
			case idx := <-ch:
				return idx, nil
			case <-pctx.Done():
				return fail(fmt.Errorf("applying %d: %w", res.index, pctx.Err()))
			case <-n.stop:
				return fail(ErrClosed)
			}
		case err == nil && res.status == fwdNotLeader:
			// Not appended there: ask the next leader.
			if leader, err = n.waitLeader(pctx, leader); err != nil {
				return fail(fmt.Errorf("no leader: %w", err))
			}
			continue
		case err == nil && res.status == fwdFailed:
			return fail(res.err())
		case errors.Is(err, errNotSent):
			// Nothing reached it: ask again (a new leader, or this one
			// back) after a pause, within the bound.
			select {
			case <-time.After(n.cfg.Tick):
			case <-pctx.Done():
				return fail(fmt.Errorf("not sent: %w", err))
			case <-n.stop:
				return fail(ErrClosed)
			}
			if leader, err = n.waitLeader(pctx, 0); err != nil {
				return fail(fmt.Errorf("no leader: %w", err))
			}
			continue
		}
		// The outcome is unknown: the leader lost its leadership, or
		// the request or its answer was lost on the way.
		return n.outcome(pctx, ch, leader, fail)
	}
}

// proposeHere appends entry on this member, its leader.
func (n *Node) proposeHere(ctx context.Context, entry []byte) (fwdResult, error) {
	r := n.raft()
	if r == nil {
		return fwdResult{status: fwdNotLeader}, nil
	}
	f := r.Apply(entry, n.cfg.ProposeTimeout)
	done := make(chan error, 1)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		done <- f.Error()
	}()
	select {
	case err := <-done:
		if errors.Is(err, raft.ErrRaftShutdown) {
			return fwdResult{}, ErrClosed
		}
		return result(err, f), nil
	case <-ctx.Done():
		return fwdResult{}, ctx.Err()
	}
}

// outcome waits to learn whether a proposal whose fate is unknown
// committed: its waiter woken (applied here), or, once another leader
// than the one it went to has confirmed its commit index in its own
// term and this member applied through it, ErrLeaderChanged.
func (n *Node) outcome(ctx context.Context, ch chan uint64, sentTo uint64, fail func(error) (uint64, error)) (uint64, error) {
	type readResult struct {
		index uint64
		err   error
	}
	for {
		n.mu.Lock()
		lch := n.leaderCh
		n.mu.Unlock()
		if l := n.leader.Load(); l != 0 && l != sentTo {
			idx, err := n.readIndex(ctx, l)
			if err == nil {
				err = n.waitApplied(ctx, idx)
			}
			select {
			case i := <-ch:
				return i, nil
			default:
			}
			if err == nil {
				return fail(ErrLeaderChanged)
			}
			if ctx.Err() != nil || errors.Is(err, ErrClosed) {
				return fail(fmt.Errorf("not known committed: %w", err))
			}
			// Not answered (a leader just elected, not ready yet; a
			// connection lost): ask again after a pause, the same
			// leader or a newer one, within the bound.
			select {
			case i := <-ch:
				return i, nil
			case <-time.After(n.cfg.Tick):
			case <-ctx.Done():
				return fail(fmt.Errorf("not known committed: %w", ctx.Err()))
			case <-n.stop:
				return fail(ErrClosed)
			}
			continue
		}
		select {
		case i := <-ch:
			return i, nil
		case <-lch:
		case <-ctx.Done():
			return fail(fmt.Errorf("not known committed: %w", ctx.Err()))
		case <-n.stop:
			return fail(ErrClosed)
		}
	}
}

// readIndex asks leader (this member or another) for its commit index,
// confirmed as the leader's.
func (n *Node) readIndex(ctx context.Context, leader uint64) (uint64, error) {
	if leader == n.id {
		r := n.raft()
		if r == nil {
			return 0, raft.ErrNotLeader
		}
		return n.readIndexHere(r)
	}
	res, err := n.forward(ctx, leader, opRead, nil)
	if err != nil {
		return 0, err
	}
	return res.index, res.err()
}

// ReadBarrier returns once this member has applied everything the site
// had committed when it was called, so that a read of its own store that
// follows sees every write acknowledged before: the leader (asked, on a
// follower) confirms with a heartbeat round that it still leads and says
// its commit index (after a barrier once per term, so that it covers the
// earlier terms' entries), then this member waits until it applied that
// index. Without an answer within ProposeTimeout (no leader, no quorum)
// it fails with an error wrapping ErrNoQuorum.
func (n *Node) ReadBarrier(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.ProposeTimeout)
	defer cancel()
	var not uint64
	for {
		leader, err := n.waitLeader(ctx, not)
		if errors.Is(err, ErrClosed) {
			return ErrClosed
		}
		if err != nil {
			return fmt.Errorf("%w: read index: no leader: %w", ErrNoQuorum, err)
		}
		idx, err := n.readIndex(ctx, leader)
		switch {
		case errors.Is(err, raft.ErrNotLeader):
			not = leader
			continue
		case errors.Is(err, ErrClosed):
			return ErrClosed
		case err != nil:
			if ctx.Err() == nil {
				// A connection lost, a leader stepping down: ask again
				// after a pause, within the bound.
				select {
				case <-time.After(n.cfg.Tick):
					continue
				case <-ctx.Done():
				}
			}
			return fmt.Errorf("%w: read index: %w", ErrNoQuorum, err)
		}
		if err := n.waitApplied(ctx, idx); err != nil {
			if errors.Is(err, ErrClosed) {
				return err
			}
			return fmt.Errorf("%w: applying to %d: %w", ErrNoQuorum, idx, err)
		}
		return nil
	}
}

// AddVoter adds member id, dialed at addr, to the voters; it returns once
// the change is committed and applied here. The new member starts with
// Join (or is already running) and catches up from a snapshot or the log.
func (n *Node) AddVoter(ctx context.Context, id uint64, addr string) error {
	n.tr.setAddr(id, addr)
	return n.changeConf(ctx, opAdd, id, addr)
}

// RemoveVoter removes member id from the voters (a leader removed steps
// down). An id is never reused after its removal.
func (n *Node) RemoveVoter(ctx context.Context, id uint64) error {
	return n.changeConf(ctx, opRemove, id, "")
}

func (n *Node) changeConf(ctx context.Context, op byte, member uint64, addr string) error {
	if member == 0 {
		return errors.New("consensus: member id 0")
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.ProposeTimeout)
	defer cancel()
	payload := append(binary.BigEndian.AppendUint64(nil, member), addr...)
	var not uint64
	for {
		leader, err := n.waitLeader(ctx, not)
		if errors.Is(err, ErrClosed) {
			return err
		}
		if err != nil {
			return fmt.Errorf("%w: no leader: %w", ErrNoQuorum, err)
		}
		var res fwdResult
		if leader == n.id {
			res = n.lead(op, payload)
		} else if res, err = n.forward(ctx, leader, op, payload); err != nil {
			return fmt.Errorf("%w: %w", ErrNoQuorum, err)
		}
		switch res.status {
		case fwdOK:
			if err := n.waitApplied(ctx, res.index); err != nil {
				return fmt.Errorf("%w: applying %d: %w", ErrNoQuorum, res.index, err)
			}
			n.log.Info("consensus: configuration", "change", string(op), "member", fmt.Sprintf("%x", member))
			return nil
		case fwdNotLeader:
			not = leader
			continue
		}
		return fmt.Errorf("%w: %w", ErrNoQuorum, res.err())
	}
}

// PeerStatus is one member as the leader sees it.
type PeerStatus struct {
	ID   uint64
	Addr string
	// Match is the last index known replicated on it; the leader's
	// Commit minus Match is its replication lag, in entries.
	Match, Next uint64
	// State: replicate, probe (its last append failed) or snapshot
	// (one is being sent to it).
	State  string
	Active bool
}

// Status is this member's view of the group.
type Status struct {
	ID, Leader, Term uint64
	// State: follower, candidate, leader or shutdown.
	State           string
	Commit, Applied uint64
	Voters          []uint64
	// Peers is filled on the leader only.
	Peers []PeerStatus
}

// Status is this member's view of the group now.
func (n *Node) Status() Status {
	st := Status{ID: n.id, Leader: n.leader.Load(), Applied: n.applied.Load(), State: "follower"}
	r := n.raft()
	if r == nil {
		return st
	}
	st.Term = r.CurrentTerm()
	st.State = strings.ToLower(r.State().String())
	st.Commit = r.CommitIndex()
	if f := r.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			if s.Suffrage == raft.Voter {
				st.Voters = append(st.Voters, parseID(s.ID))
			}
		}
		slices.Sort(st.Voters)
		if r.State() == raft.Leader {
			progress := n.tr.peers(n.electionTimeout())
			for _, s := range f.Configuration().Servers {
				id := parseID(s.ID)
				p, ok := progress[id]
				switch {
				case id == n.id:
					p = PeerStatus{ID: id, Addr: n.sl.Addr().String(), Match: r.LastIndex(), State: "replicate", Active: true}
				case !ok:
					p = PeerStatus{ID: id, Addr: n.tr.addrOf(id), State: "probe"}
				}
				p.Next = p.Match + 1
				st.Peers = append(st.Peers, p)
			}
			slices.SortFunc(st.Peers, func(a, b PeerStatus) int { return cmpU64(a.ID, b.ID) })
		}
	}
	return st
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// handOver, on a leader, transfers the leadership to the follower most
// up to date (raft's leadership transfer: bounded by an election
// timeout), so a planned stop costs the site a round trip instead of an
// election timeout.
func (n *Node) handOver(r *raft.Raft) {
	if r.State() != raft.Leader {
		return
	}
	if err := r.LeadershipTransfer().Error(); err != nil {
		n.log.Debug("consensus: leadership not handed over", "err", err)
		return
	}
	n.log.Info("consensus: leadership handed over")
}

// Close stops the member: a leader first hands its leadership over (see
// handOver), then the engine (Run returns), the transport, the log.
// Proposals waiting get ErrClosed. It is idempotent.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.tr.stopRetries()
		r := n.raft()
		if r != nil {
			n.handOver(r)
		}
		n.mu.Lock()
		close(n.stop)
		running := n.running
		n.mu.Unlock()
		if running {
			<-n.runDone
		}
		// Run may have started the engine after the first look.
		if r = n.raft(); r != nil {
			n.drainFSM(r)
			r.Shutdown().Error()
		}
		n.fwd.closeAll()
		err := n.tr.close()
		n.waitGoroutines()
		n.closeErr = errors.Join(err, n.rlog.Close())
	})
	return n.closeErr
}

// drainWait bounds how long Close waits for the state machine to apply
// what raft handed it (drainFSM), and then for the proposals' waiters
// (waitGoroutines).
const drainWait = 2 * time.Second

// drainFSM waits, for up to drainWait, until the state machine has
// applied every batch raft handed it. hashicorp/raft's FSM goroutine
// returns at Shutdown without the batches still queued for it (its
// fsmMutateCh holds up to 128), and never answers the proposals among
// them: their waiters (proposeHere) would hold Close for ever. After the
// leadership is handed over no new proposal is made here, so once the
// queue is applied none is left behind.
func (n *Node) drainFSM(r *raft.Raft) {
	// What was handed over by now: a follower goes on being sent the
	// leader's entries, none of them a proposal of this member's.
	// (Entries without data, such as a new leader's first, never reach
	// the state machine: holds knows.)
	target := r.AppliedIndex()
	deadline := time.Now().Add(drainWait)
	for !n.holds(target) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

// waitGoroutines waits for the member's goroutines, the proposals'
// waiters for at most drainWait: one whose proposal raft dropped at
// Shutdown (see drainFSM; a proposal still in flight when the leadership
// could not be handed over) never ends, and is left, logged.
func (n *Node) waitGoroutines() {
	done := make(chan struct{})
	go func() {
		n.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(drainWait):
		n.log.Warn("consensus: a proposal's outcome never came from the engine at its shutdown; its waiter is left behind")
	}
}

// IDFromName is a member's raft id derived from its stable name (the
// site's node_name): the first 8 bytes of SHA-256 of the name, big-endian,
// never 0. Every member computes the same id for a name, so the name is
// all the membership layer needs to carry.
func IDFromName(name string) uint64 {
	sum := sha256.Sum256([]byte(name))
	id := binary.BigEndian.Uint64(sum[:8])
	if id == 0 {
		id = 1
	}
	return id
}
