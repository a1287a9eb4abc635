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
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/pushrelay/pushrelay/relay/linkquic"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/store"
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
	// was replaced, and the new leader's first entry was applied here
	// without it. It was then not in the new leader's log; it commits
	// only in the corner case of the old leader winning again later with
	// a delayed copy, so an idempotent entry may be proposed again.
	ErrLeaderChanged = fmt.Errorf("%w: the leader changed before the entry was known committed", ErrNoQuorum)
)

// StateMachine is what the log's committed entries are applied to. Apply
// and Restore are called from the node's Ready loop, one at a time;
// Snapshot is called from the transport while Apply may run, and must
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
	DefaultTick           = 100 * time.Millisecond
	DefaultElectionTicks  = 10
	DefaultHeartbeatTicks = 1
	DefaultSnapshotEvery  = 10000
	DefaultSendQueue      = 1024
	DefaultIdleTimeout    = 5 * time.Second
	DefaultMaxSizePerMsg  = 1 << 20
	DefaultMaxInflight    = 256
)

// Config configures a Node.
type Config struct {
	// ID is this member's raft id (non-zero, never reused for another
	// member: derive it from the member's stable name, IDFromName).
	ID uint64
	// Peers are the voters' addresses by id ("host:port" of their
	// Listen), this member's own included. A new site starts with the
	// same Peers on every member; the addresses may be "" and set later
	// with SetPeerAddr (a peer's hello also tells its address).
	Peers map[uint64]string
	// Join starts a member with an empty disk without a configuration of
	// its own: it waits to be added (AddVoter on a member of the site)
	// or, already a voter, to be sent a snapshot.
	Join bool
	// Dir is the data dir: the log (store.LogFile) and received
	// snapshots waiting to be restored.
	Dir string
	// Listen is the peer transport's UDP address ("host:port", port 0
	// picks one); Advertise, if set, is the address peers are told (the
	// Listen address is, unless its host is a wildcard).
	Listen, Advertise string
	// ServerTLS and ClientTLS are relay/linkauth's, from the site's keys
	// (Credentials.ServerTLS and ClientTLS): peers authenticate each
	// other with mutual TLS.
	ServerTLS, ClientTLS *tls.Config
	// Tick is raft's logical clock; ElectionTicks and HeartbeatTicks are
	// in ticks. Defaults: 100 ms, 10, 1 (an election 1 to 2 s after the
	// leader falls silent).
	Tick                          time.Duration
	ElectionTicks, HeartbeatTicks int
	// SnapshotEvery: a snapshot is recorded and the log compacted every
	// this many applied entries; CatchUpEntries of them stay in the log
	// for members a little behind (default SnapshotEvery/2).
	SnapshotEvery, CatchUpEntries uint64
	// ProposeTimeout bounds Propose, AddVoter and RemoveVoter before
	// ErrNoQuorum (default: 3 election timeouts).
	ProposeTimeout time.Duration
	// SendQueue is the bound of each peer's send queue, in messages.
	SendQueue int
	// IdleTimeout ends a peer connection that hears nothing for that
	// long (default 5 s); heartbeats keep a live one busy.
	IdleTimeout time.Duration
	// MaxSizePerMsg and MaxInflight are raft's flow control.
	MaxSizePerMsg uint64
	MaxInflight   int
	Logger        *slog.Logger
	Metrics       *metrics.Registry
}

func (c *Config) setDefaults() {
	if c.Tick <= 0 {
		c.Tick = DefaultTick
	}
	if c.ElectionTicks <= 0 {
		c.ElectionTicks = DefaultElectionTicks
	}
	if c.HeartbeatTicks <= 0 {
		c.HeartbeatTicks = DefaultHeartbeatTicks
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
	if c.SendQueue <= 0 {
		c.SendQueue = DefaultSendQueue
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.MaxSizePerMsg == 0 {
		c.MaxSizePerMsg = DefaultMaxSizePerMsg
	}
	if c.MaxInflight <= 0 {
		c.MaxInflight = DefaultMaxInflight
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
	case c.HeartbeatTicks >= c.ElectionTicks && c.ElectionTicks > 0:
		return errors.New("consensus: ElectionTicks must exceed HeartbeatTicks")
	}
	if _, ok := c.Peers[c.ID]; !ok && !c.Join {
		return fmt.Errorf("consensus: Peers does not list this member (%x)", c.ID)
	}
	return nil
}

func (c Config) linkConfig() linkquic.Config {
	return linkquic.Config{
		ALPN:        ALPN,
		Streams:     8,
		KeepAlive:   max(c.IdleTimeout/4, c.Tick),
		IdleTimeout: c.IdleTimeout,
		Logger:      c.Logger,
	}
}

// Node is one member of the replicated log. Make it with New, run it with
// Run, end it with Close.
type Node struct {
	id  uint64
	cfg Config
	sm  StateMachine
	log *slog.Logger
	m   *nodeMetrics

	rlog *store.Log
	rn   raft.Node
	tr   *transport

	term, leader, applied atomic.Uint64
	// appliedTerm is the term of the last entry applied; termCh is
	// closed (and replaced) whenever it grows.
	appliedTerm atomic.Uint64
	seq         atomic.Uint64 // proposal ids (random start)
	lostLogAt   atomic.Int64  // unix ns of the last lostLog hand-over

	mu       sync.Mutex
	waiters  map[uint64]chan uint64 // by proposal id: the applied index
	readers  map[string]chan uint64 // by read request: the leader's commit index
	leaderCh chan struct{}          // closed when the leader changes
	termCh   chan struct{}          // closed when appliedTerm grows
	conf     *pb.ConfState
	snapIdx  uint64 // the latest snapshot record's index

	hs      *pb.HardState // the latest hard state (the Ready loop's)
	running bool
	runDone chan struct{}

	stop      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// New opens the log in cfg.Dir, starts the engine (a new site, a member
// joining, or a restart from what the log holds) and binds the peer
// socket. Nothing is sent before Run.
func New(cfg Config, sm StateMachine) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("consensus: %w", err)
	}
	// Snapshots received and not restored before a stop are stale.
	old, _ := filepath.Glob(filepath.Join(cfg.Dir, snapPrefix+"*"))
	for _, p := range old {
		os.Remove(p)
	}
	rlog, err := store.OpenLog(filepath.Join(cfg.Dir, store.LogFile))
	if err != nil {
		return nil, fmt.Errorf("consensus: %w", err)
	}
	n := &Node{
		id: cfg.ID, cfg: cfg, sm: sm, log: cfg.Logger.With("member", fmt.Sprintf("%x", cfg.ID)),
		rlog: rlog, waiters: map[uint64]chan uint64{}, readers: map[string]chan uint64{}, leaderCh: make(chan struct{}), termCh: make(chan struct{}),
		stop: make(chan struct{}), runDone: make(chan struct{}),
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	n.seq.Store(binary.BigEndian.Uint64(b[:]) >> 1)
	n.m = newNodeMetrics(metrics.OrNew(cfg.Metrics), n)
	if err := n.start(); err != nil {
		return nil, errors.Join(fmt.Errorf("consensus: %w", err), rlog.Close())
	}
	tr, err := newTransport(n, cfg)
	if err != nil {
		n.rn.Stop()
		return nil, errors.Join(fmt.Errorf("consensus: %w", err), rlog.Close())
	}
	n.tr = tr
	for id, addr := range cfg.Peers {
		tr.setAddr(id, addr)
	}
	return n, nil
}

func (n *Node) start() (err error) {
	// raft panics on a log it cannot start from (a commit index past the
	// log, a broken hard state); that is an error of the data dir here,
	// not a crash of the relay.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("log in %s unusable: %v", n.cfg.Dir, r)
		}
	}()
	st := &storage{log: n.rlog}
	hs, cs, err := st.InitialState()
	if err != nil {
		return err
	}
	last, err := st.LastIndex()
	if err != nil {
		return err
	}
	snap, err := st.Snapshot()
	if err != nil {
		return err
	}
	n.conf = cs
	n.hs = hs
	n.snapIdx = snap.GetMetadata().GetIndex()
	// What the state machine holds is applied, as far as the log knows
	// it committed: a commit index is not always written (see ready).
	applied := min(n.sm.AppliedIndex(), hs.GetCommit())
	applied = max(applied, n.snapIdx)
	n.applied.Store(applied)
	rc := &raft.Config{
		ID:                        n.id,
		ElectionTick:              n.cfg.ElectionTicks,
		HeartbeatTick:             n.cfg.HeartbeatTicks,
		Storage:                   st,
		Applied:                   applied,
		MaxSizePerMsg:             n.cfg.MaxSizePerMsg,
		MaxCommittedSizePerReady:  4 * n.cfg.MaxSizePerMsg,
		MaxUncommittedEntriesSize: 64 << 20,
		MaxInflightMsgs:           n.cfg.MaxInflight,
		CheckQuorum:               true,
		PreVote:                   true,
		StepDownOnRemoval:         true,
		Logger:                    &raftLogger{l: n.log},
	}
	fresh := raft.IsEmptyHardState(hs) && last == 0 && n.snapIdx == 0
	if fresh && !n.cfg.Join {
		var peers []raft.Peer
		for id := range n.cfg.Peers {
			peers = append(peers, raft.Peer{ID: id})
		}
		// The same order on every member, so their first entries match.
		slices.SortFunc(peers, func(a, b raft.Peer) int { return cmpU64(a.ID, b.ID) })
		n.rn = raft.StartNode(rc, peers)
		return nil
	}
	n.rn = raft.RestartNode(rc)
	return nil
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

// ID is this member's raft id.
func (n *Node) ID() uint64 { return n.id }

// Addr is the peer transport's listening address.
func (n *Node) Addr() string { return n.tr.ln.Addr().String() }

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

// Run runs the member until ctx is done or Close: the transport and the
// Ready loop. It returns nil then, or the error that stopped it (a log
// write or the state machine failing: the member must not go on).
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
	n.tr.spawn(n.tr.run)
	ap := n.startApplier()
	defer ap.stop()
	tick := time.NewTicker(n.cfg.Tick)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-n.stop:
			return nil
		case err := <-ap.err:
			n.log.Error("consensus: member stops", "err", err)
			return err
		case <-tick.C:
			n.rn.Tick()
		case rd := <-n.rn.Ready():
			if err := n.ready(&rd, ap); err != nil {
				n.log.Error("consensus: member stops", "err", err)
				return err
			}
			n.rn.Advance()
		}
	}
}

// applier applies committed entries on a goroutine of its own, in order,
// so the Ready loop writes the next entries while the state machine
// applies the last ones (each has its own fsync).
type applier struct {
	jobs chan applyJob
	err  chan error
	done chan struct{}
}

type applyJob struct {
	ents    []*pb.Entry
	barrier chan struct{} // closed when every job before it is applied
}

func (n *Node) startApplier() *applier {
	ap := &applier{jobs: make(chan applyJob, 16), err: make(chan error, 1), done: make(chan struct{})}
	go func() {
		defer close(ap.done)
		var failed error
		for job := range ap.jobs {
			switch {
			case job.barrier != nil:
				close(job.barrier)
			case failed == nil:
				if failed = n.apply(job.ents); failed != nil {
					ap.err <- failed
				}
			}
		}
	}()
	return ap
}

// drain waits until everything queued is applied.
func (ap *applier) drain() {
	b := make(chan struct{})
	ap.jobs <- applyJob{barrier: b}
	<-b
}

func (ap *applier) stop() {
	close(ap.jobs)
	<-ap.done
}

// ready handles one Ready as raft's contract says: the snapshot restored
// and the entries and hard state written (one transaction) before any
// message is sent, then the committed entries applied.
func (n *Node) ready(rd *raft.Ready, ap *applier) error {
	if rd.SoftState != nil {
		n.softState(rd.SoftState)
	}
	if len(rd.ReadStates) > 0 {
		n.mu.Lock()
		for _, rs := range rd.ReadStates {
			if ch := n.readers[string(rs.RequestCtx)]; ch != nil {
				select {
				case ch <- rs.Index:
				default:
				}
			}
		}
		n.mu.Unlock()
	}
	if rd.HardState != nil && !raft.IsEmptyHardState(rd.HardState) {
		n.hs = rd.HardState
		n.term.Store(rd.HardState.GetTerm())
	}
	if !raft.IsEmptySnap(rd.Snapshot) {
		ap.drain()
		if err := n.restore(rd.Snapshot); err != nil {
			return err
		}
	}
	// The leader sends before its own write (Raft thesis 10.2.1; etcd's
	// server does the same): its appends reach the followers while it
	// fsyncs, and an entry still commits only once a majority, the
	// leader counted after its write, has it on disk. Its term and vote
	// were written when it became a candidate. Others send after the
	// write, as the Ready contract says.
	leading := n.leader.Load() == n.id
	if leading {
		n.tr.send(rd.Messages)
	}
	// A Ready that only moves the commit index needs no fsync (MustSync
	// false): the commit index is learned again from the leader.
	if rd.MustSync || !raft.IsEmptySnap(rd.Snapshot) || len(rd.Entries) > 0 {
		u, err := update(rd)
		if err != nil {
			return err
		}
		t0 := time.Now()
		if err := n.rlog.Write(u); err != nil {
			return err
		}
		n.m.logSeconds.Observe(time.Since(t0).Seconds())
		n.m.logWrites.Inc()
		n.m.entriesPerW.Observe(float64(len(rd.Entries)))
	}
	if !leading {
		n.tr.send(rd.Messages)
	}
	if len(rd.CommittedEntries) > 0 {
		ap.jobs <- applyJob{ents: rd.CommittedEntries}
	}
	return n.maybeSnapshot()
}

func (n *Node) softState(ss *raft.SoftState) {
	if ss.RaftState == raft.StateCandidate {
		n.m.elections.Inc()
	}
	if old := n.leader.Swap(ss.Lead); old != ss.Lead {
		n.m.leaderChanges.Inc()
		n.log.Info("consensus: leader", "leader", fmt.Sprintf("%x", ss.Lead), "state", ss.RaftState.String())
		n.mu.Lock()
		close(n.leaderCh)
		n.leaderCh = make(chan struct{})
		n.mu.Unlock()
	}
}

// restore replaces the state machine's state with a snapshot received
// from the leader (spooled by the transport), before the log records it:
// a crash between the two leaves the state machine ahead of the log,
// which replays nothing it already holds.
func (n *Node) restore(snap *pb.Snapshot) error {
	md := snap.GetMetadata()
	path := n.spoolPath(md.GetIndex(), md.GetTerm())
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("snapshot %d: %w", md.GetIndex(), err)
	}
	err = n.sm.Restore(f, md.GetIndex())
	f.Close()
	if err != nil {
		return fmt.Errorf("restore snapshot %d: %w", md.GetIndex(), err)
	}
	n.removeSpools(md.GetIndex())
	n.mu.Lock()
	n.conf = pb.EnsureConfState(md.GetConfState())
	n.snapIdx = md.GetIndex()
	n.applied.Store(md.GetIndex())
	n.mu.Unlock()
	n.log.Info("consensus: restored from snapshot", "index", md.GetIndex(), "applied", n.sm.AppliedIndex())
	return nil
}

// removeSpools removes the received snapshots up to index (a newer one
// may be arriving, or waiting for raft to take it).
func (n *Node) removeSpools(index uint64) {
	old, _ := filepath.Glob(filepath.Join(n.cfg.Dir, snapPrefix+"*"))
	for _, p := range old {
		// snap-in-TERM-INDEX, or snap-in-TERM-INDEX.RANDOM.part while
		// being received.
		_, idx, _ := strings.Cut(strings.TrimPrefix(filepath.Base(p), snapPrefix), "-")
		idx, _, _ = strings.Cut(idx, ".")
		if i, err := strconv.ParseUint(idx, 10, 64); err != nil || i <= index {
			os.Remove(p)
		}
	}
}

// Entry data: the proposer's id and the proposal's id, then the payload.
const headerSize = 16

// apply hands committed entries to the state machine in batches, applies
// configuration changes between them, and wakes the proposers waiting
// here.
func (n *Node) apply(ents []*pb.Entry) error {
	if len(ents) == 0 {
		return nil
	}
	smApplied := n.sm.AppliedIndex()
	var batch [][]byte
	var batchIdx uint64
	var seen uint64 // the last entry looked at
	var seenTerm uint64
	var woken []uint64 // proposal ids, then indexes, in pairs
	// flush applies the batch; only then is everything seen applied (a
	// snapshot record is taken at the applied index, and must never be
	// ahead of the state machine).
	flush := func() error {
		if len(batch) > 0 {
			if err := n.sm.Apply(batchIdx, batch); err != nil {
				return fmt.Errorf("apply through %d: %w", batchIdx, err)
			}
			n.m.applies.Inc()
			n.m.commits.Add(float64(len(batch)))
			batch = batch[:0]
		}
		if seen > 0 {
			n.applied.Store(seen)
		}
		return nil
	}
	for _, e := range ents {
		idx := e.GetIndex()
		switch e.GetType() {
		case pb.EntryNormal:
			d := e.GetData()
			if len(d) < headerSize {
				break // the leader's empty entry
			}
			if binary.BigEndian.Uint64(d) == n.id {
				woken = append(woken, binary.BigEndian.Uint64(d[8:]), idx)
			}
			if idx <= smApplied {
				break // applied before a restart
			}
			batch = append(batch, d[headerSize:])
			batchIdx = idx
		case pb.EntryConfChange:
			if err := flush(); err != nil {
				return err
			}
			cc := &pb.ConfChange{}
			if err := proto.Unmarshal(e.GetData(), cc); err != nil {
				return fmt.Errorf("conf change %d: %w", idx, err)
			}
			if err := n.confChange(cc, idx); err != nil {
				return err
			}
			if len(cc.GetContext()) >= 8 && binary.BigEndian.Uint64(cc.GetContext()) == n.id {
				woken = append(woken, cc.GetId(), idx)
			}
		case pb.EntryConfChangeV2:
			return fmt.Errorf("entry %d: ConfChangeV2 is not used here", idx)
		}
		seen, seenTerm = idx, e.GetTerm()
	}
	if err := flush(); err != nil {
		return err
	}
	n.mu.Lock()
	if seenTerm > n.appliedTerm.Load() {
		n.appliedTerm.Store(seenTerm)
		close(n.termCh)
		n.termCh = make(chan struct{})
	}
	for i := 0; i < len(woken); i += 2 {
		if ch := n.waiters[woken[i]]; ch != nil {
			ch <- woken[i+1]
			delete(n.waiters, woken[i])
		}
	}
	n.mu.Unlock()
	return nil
}

// confChange applies one configuration change to the engine, records the
// new configuration in the log and tells the transport the address.
func (n *Node) confChange(cc *pb.ConfChange, index uint64) error {
	cs := n.rn.ApplyConfChange(cc)
	b, err := proto.Marshal(cs)
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := n.rlog.Write(store.LogUpdate{ConfState: b}); err != nil {
		return err
	}
	n.m.logSeconds.Observe(time.Since(t0).Seconds())
	n.m.logWrites.Inc()
	n.mu.Lock()
	n.conf = cs
	n.applied.Store(index)
	n.mu.Unlock()
	if cc.GetType() == pb.ConfChangeAddNode && len(cc.GetContext()) > 8 {
		n.tr.setAddr(cc.GetNodeId(), string(cc.GetContext()[8:]))
	}
	n.log.Info("consensus: configuration", "change", cc.GetType().String(), "member", fmt.Sprintf("%x", cc.GetNodeId()), "voters", cs.GetVoters())
	return nil
}

// maybeSnapshot records a snapshot at the applied index and compacts the
// log every SnapshotEvery entries. The record holds no state: the state
// machine's is streamed from it when a member needs it.
func (n *Node) maybeSnapshot() error {
	// The applier moves the applied index and the configuration together
	// under mu (see confChange), so the pair read here agrees.
	n.mu.Lock()
	applied := n.applied.Load()
	due := applied >= n.snapIdx+n.cfg.SnapshotEvery
	cs := n.conf
	n.mu.Unlock()
	if !due {
		return nil
	}
	term, err := n.rlog.Term(applied)
	if err != nil {
		return fmt.Errorf("snapshot at %d: %w", applied, err)
	}
	meta, err := proto.Marshal(cs)
	if err != nil {
		return err
	}
	upTo := uint64(0)
	if applied > n.cfg.CatchUpEntries {
		upTo = applied - n.cfg.CatchUpEntries
	}
	// The hard state goes with it: its commit index may not have been
	// written (see ready), and raft refuses a log whose snapshot is past
	// the commit index it kept.
	hs, err := proto.Marshal(n.hs)
	if err != nil {
		return err
	}
	t0 := time.Now()
	err = n.rlog.Write(store.LogUpdate{
		Record:         &store.LogSnapshot{Index: applied, Term: term, Meta: meta},
		CompactThrough: upTo,
		HardState:      hs,
	})
	if err != nil {
		return err
	}
	n.m.logSeconds.Observe(time.Since(t0).Seconds())
	n.m.logWrites.Inc()
	n.m.snapshots.Inc()
	n.mu.Lock()
	n.snapIdx = applied
	n.mu.Unlock()
	n.log.Debug("consensus: snapshot recorded", "index", applied, "compacted_through", upTo)
	return nil
}

// clampCommit lowers a heartbeat's commit index to this member's last
// durable entry. The leader sends at most what this member acknowledged,
// so normally nothing changes; but a member restarted with its disk
// wiped holds less than it once acknowledged, and raft panics on a
// commit past its log. A lower commit only delays what this member
// learns; the leader's appends (or its snapshot) bring the rest.
func (n *Node) clampCommit(m *pb.Message) {
	last, err := n.rlog.LastIndex()
	if err == nil && m.GetCommit() > last {
		m.Commit = proto.Uint64(last)
	}
}

// waitLeader waits until a leader is known or ctx ends.
func (n *Node) waitLeader(ctx context.Context) error {
	for {
		n.mu.Lock()
		ch := n.leaderCh
		n.mu.Unlock()
		if n.leader.Load() != 0 {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-n.stop:
			return ErrClosed
		}
	}
}

// Propose appends data to the log and returns its index once a quorum
// has committed it and this member has applied it. A follower's proposal
// is forwarded to the leader. ErrNoQuorum after Config.ProposeTimeout
// (or at once when raft drops it: no leader); ctx's error if ctx ends
// first; ErrClosed after Close.
func (n *Node) Propose(ctx context.Context, data []byte) (uint64, error) {
	id := n.seq.Add(1) &^ (1 << 63)
	entry := make([]byte, headerSize, headerSize+len(data))
	binary.BigEndian.PutUint64(entry, n.id)
	binary.BigEndian.PutUint64(entry[8:], id)
	entry = append(entry, data...)
	return n.propose(ctx, id, func(ctx context.Context) error { return n.rn.Propose(ctx, entry) })
}

func (n *Node) propose(ctx context.Context, id uint64, step func(context.Context) error) (uint64, error) {
	select {
	case <-n.stop:
		return 0, ErrClosed
	default:
	}
	pctx, cancel := context.WithTimeout(ctx, n.cfg.ProposeTimeout)
	defer cancel()
	fail := func(err error) (uint64, error) {
		switch {
		case errors.Is(err, ErrClosed):
			n.m.proposeFailed.With("closed").Inc()
			return 0, ErrClosed
		case ctx.Err() != nil:
			n.m.proposeFailed.With("canceled").Inc()
			return 0, ctx.Err()
		}
		n.m.proposeFailed.With("no_quorum").Inc()
		return 0, fmt.Errorf("%w: %w", ErrNoQuorum, err)
	}
	if err := n.waitLeader(pctx); err != nil {
		return fail(fmt.Errorf("no leader: %w", err))
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
	n.m.proposals.Inc()
	sentTo := n.leader.Load()
	if sentTo != n.id {
		n.m.forwards.Inc()
	}
	if err := step(pctx); err != nil {
		if errors.Is(err, raft.ErrStopped) {
			err = ErrClosed
		}
		return fail(err)
	}
	// Once the leader the entry went to is replaced, the entry commits
	// only if it reached the new leader's log before the election, and
	// then before the new leader's first entry: when an entry of the new
	// term is applied here and this one is not, it is given up as no
	// quorum (it may still commit in a corner case, as after any
	// timeout), without waiting out the whole bound.
	var newTerm uint64
	for {
		// Under mu: apply raises appliedTerm and hands out the batch's
		// indexes in one hold of it, so an entry applied in the batch
		// that raised the term is seen on ch here.
		n.mu.Lock()
		lch, tch := n.leaderCh, n.termCh
		if l := n.leader.Load(); newTerm == 0 && l != 0 && l != sentTo {
			newTerm = n.term.Load()
		}
		if newTerm != 0 && n.appliedTerm.Load() >= newTerm {
			var idx uint64
			select {
			case idx = <-ch:
			default:
			}
			n.mu.Unlock()
			if idx != 0 {
				return idx, nil
			}
			n.m.proposeFailed.With("leader_changed").Inc()
			return 0, ErrLeaderChanged
		}
		n.mu.Unlock()
		select {
		case idx := <-ch:
			return idx, nil
		case <-lch:
		case <-tch:
		case <-pctx.Done():
			return fail(fmt.Errorf("not committed: %w", pctx.Err()))
		case <-n.stop:
			return fail(ErrClosed)
		}
	}
}

// ReadBarrier returns once this member has applied everything the site
// had committed when it was called, so that a read of its own store that
// follows sees every write acknowledged before: raft's ReadIndex (the
// leader confirms with a heartbeat round that it still leads and says
// its commit index), then a wait until this member applied that index.
// Without an answer within ProposeTimeout (no leader, no quorum) it
// fails with an error wrapping ErrNoQuorum.
func (n *Node) ReadBarrier(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.ProposeTimeout)
	defer cancel()
	key := string(binary.BigEndian.AppendUint64(nil, n.seq.Add(1)))
	ch := make(chan uint64, 1)
	n.mu.Lock()
	n.readers[key] = ch
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.readers, key)
		n.mu.Unlock()
	}()
	// raft drops a read request while it knows no leader: ask again
	// every election timeout.
	var idx uint64
	for asked := false; !asked; {
		if err := n.rn.ReadIndex(ctx, []byte(key)); err != nil {
			return fmt.Errorf("%w: read index: %w", ErrNoQuorum, err)
		}
		t := time.NewTimer(n.electionTimeout())
		select {
		case idx = <-ch:
			asked = true
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w: read index: %w", ErrNoQuorum, ctx.Err())
		case <-n.stop:
			t.Stop()
			return ErrClosed
		}
		t.Stop()
	}
	for n.applied.Load() < idx {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: applying to %d: %w", ErrNoQuorum, idx, ctx.Err())
		case <-n.stop:
			return ErrClosed
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// AddVoter adds member id, dialed at addr, to the voters; it returns once
// the change is committed and applied here. The new member starts with
// Join (or is already running) and catches up from a snapshot or the log.
func (n *Node) AddVoter(ctx context.Context, id uint64, addr string) error {
	return n.changeConf(ctx, pb.ConfChangeAddNode, id, addr)
}

// RemoveVoter removes member id from the voters (a leader removed steps
// down). An id is never reused after its removal.
func (n *Node) RemoveVoter(ctx context.Context, id uint64) error {
	return n.changeConf(ctx, pb.ConfChangeRemoveNode, id, "")
}

func (n *Node) changeConf(ctx context.Context, typ pb.ConfChangeType, member uint64, addr string) error {
	if member == 0 {
		return errors.New("consensus: member id 0")
	}
	id := n.seq.Add(1) &^ (1 << 63)
	// Context: the proposer's id (who waits for it), then the address.
	c := binary.BigEndian.AppendUint64(nil, n.id)
	c = append(c, addr...)
	cc := &pb.ConfChange{Type: typ.Enum(), NodeId: proto.Uint64(member), Context: c, Id: proto.Uint64(id)}
	_, err := n.propose(ctx, id, func(ctx context.Context) error { return n.rn.ProposeConfChange(ctx, cc) })
	return err
}

// PeerStatus is one member as the leader sees it.
type PeerStatus struct {
	ID   uint64
	Addr string
	// Match is the last index known replicated on it; the leader's
	// Commit minus Match is its replication lag, in entries.
	Match, Next uint64
	// State: probe, replicate or snapshot.
	State  string
	Active bool
}

// Status is this member's view of the group.
type Status struct {
	ID, Leader, Term uint64
	// State: follower, candidate, precandidate or leader.
	State           string
	Commit, Applied uint64
	Voters          []uint64
	// Peers is filled on the leader only.
	Peers []PeerStatus
}

// Status is this member's view of the group now.
func (n *Node) Status() Status {
	rs := n.rn.Status()
	st := Status{
		ID: n.id, Leader: rs.Lead, Term: rs.HardState.GetTerm(),
		State:   strings.TrimPrefix(strings.ToLower(rs.RaftState.String()), "state"),
		Commit:  rs.HardState.GetCommit(),
		Applied: n.applied.Load(),
	}
	n.mu.Lock()
	st.Voters = slices.Clone(n.conf.GetVoters())
	n.mu.Unlock()
	for id, p := range rs.Progress {
		st.Peers = append(st.Peers, PeerStatus{
			ID: id, Addr: n.tr.addrOf(id), Match: p.Match, Next: p.Next,
			State:  strings.TrimPrefix(strings.ToLower(p.State.String()), "state"),
			Active: p.RecentActive,
		})
	}
	slices.SortFunc(st.Peers, func(a, b PeerStatus) int { return cmpU64(a.ID, b.ID) })
	return st
}

// handOver, on a leader, transfers the leadership to the follower most
// up to date and waits (an election timeout at most) for it to take
// over, so a planned stop costs the site a round trip instead of an
// election timeout.
func (n *Node) handOver() {
	if n.leader.Load() != n.id {
		return
	}
	var to, match uint64
	for id, p := range n.rn.Status().Progress {
		if id != n.id && p.RecentActive && p.Match >= match {
			to, match = id, p.Match
		}
	}
	if to == 0 {
		return
	}
	n.mu.Lock()
	ch := n.leaderCh
	n.mu.Unlock()
	n.rn.TransferLeadership(context.Background(), n.id, to)
	timer := time.NewTimer(n.electionTimeout())
	defer timer.Stop()
	for n.leader.Load() == n.id {
		select {
		case <-ch:
			n.mu.Lock()
			ch = n.leaderCh
			n.mu.Unlock()
		case <-timer.C:
			return
		case <-n.runDone:
			return
		}
	}
	n.log.Info("consensus: leadership handed over", "to", fmt.Sprintf("%x", to))
}

// lostLog is told of an append refused by a follower whose log is empty
// (reject hint 0). If this member leads and has that follower at a match
// index past 0, the follower lost its disk: it restarted with an empty
// data dir under its old id. raft takes such refusals for stale ones and
// never sends below the match index, so the follower would get nothing
// while this member leads and its log still holds those entries (once
// compacted past them, raft sends a snapshot, which needs no help). The
// leader hands its leadership to the most up-to-date other follower (at
// most once per election timeout): a new leader's progress starts over,
// probes, finds the log empty and sends from its log or a snapshot.
func (n *Node) lostLog(from uint64) {
	if n.leader.Load() != n.id {
		return
	}
	now, last := time.Now().UnixNano(), n.lostLogAt.Load()
	if now-last < int64(n.electionTimeout()) || !n.lostLogAt.CompareAndSwap(last, now) {
		return
	}
	st := n.rn.Status()
	p, ok := st.Progress[from]
	if !ok || p.Match == 0 {
		return
	}
	if first, err := n.rlog.FirstIndex(); err == nil && first > p.Match+1 {
		return // compacted past it: raft sends it a snapshot
	}
	var to, match uint64
	for id, q := range st.Progress {
		if id != n.id && id != from && q.RecentActive && q.Match >= match {
			to, match = id, q.Match
		}
	}
	if to == 0 {
		n.log.Warn("consensus: a follower lost its log (restarted with an empty disk) and no other follower can take the leadership: remove it and add it back",
			"follower", fmt.Sprintf("%x", from), "match", p.Match)
		return
	}
	n.log.Warn("consensus: a follower lost its log (restarted with an empty disk); handing the leadership over so that a new leader catches it up",
		"follower", fmt.Sprintf("%x", from), "match", p.Match, "to", fmt.Sprintf("%x", to))
	n.m.lostLogs.Inc()
	n.rn.TransferLeadership(context.Background(), n.id, to)
}

// Close stops the member: a leader first hands its leadership over (see
// handOver), then the Ready loop (waiting for Run to return), the
// transport, the engine, the log. Proposals waiting get ErrClosed. It is
// idempotent.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.mu.Lock()
		running := n.running
		n.mu.Unlock()
		if running {
			n.handOver()
		}
		close(n.stop)
		if running {
			<-n.runDone
		}
		err := n.tr.close()
		n.rn.Stop()
		n.closeErr = errors.Join(err, n.rlog.Close())
	})
	return n.closeErr
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
