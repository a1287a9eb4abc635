package consensus

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// ALPN is the peers' application protocol, in their TLS handshake.
const ALPN = "pushrelay-peer/2"

// connForward is the first byte of a connection carrying this package's
// own requests (see forward.go); raft's NetworkTransport starts its
// connections with its RPC type, a small number.
const connForward = 'F'

// errDropped: the drop filter refused the traffic.
var errDropped = errors.New("consensus: dropped by the filter")

// streamLayer is raft's StreamLayer on TCP with mutual TLS from the
// site's keys (relay/linkauth's configurations, under ALPN). Accepted
// connections are handshaken and sorted on their first byte on
// goroutines of their own (Accept never waits on a peer): raft's go to
// Accept, this package's own requests to serve.
type streamLayer struct {
	ln        net.Listener
	advertise net.Addr
	server    *tls.Config
	client    *tls.Config
	timeout   time.Duration
	serve     func(c net.Conn) // a connection of ours, after its first byte

	accepted chan net.Conn
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

type advertised string

func (a advertised) Network() string { return "tcp" }
func (a advertised) String() string  { return string(a) }

func withALPN(c *tls.Config) *tls.Config {
	c = c.Clone()
	c.NextProtos = []string{ALPN}
	return c
}

func newStreamLayer(cfg Config, serve func(net.Conn)) (*streamLayer, error) {
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, err
	}
	s := &streamLayer{
		ln: ln, server: withALPN(cfg.ServerTLS), client: withALPN(cfg.ClientTLS),
		timeout: 2 * time.Duration(cfg.ElectionTicks) * cfg.Tick, serve: serve,
		accepted: make(chan net.Conn), conns: map[net.Conn]struct{}{},
	}
	// A wildcard address tells a peer nothing it can dial: then only
	// Advertise (or the peer's own configuration) says where we are.
	s.advertise = ln.Addr()
	if ta, ok := ln.Addr().(*net.TCPAddr); ok && ta.IP.IsUnspecified() {
		s.advertise = advertised("")
	}
	if cfg.Advertise != "" {
		s.advertise = advertised(cfg.Advertise)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.acceptLoop()
	}()
	return s, nil
}

// track records c to be closed with the layer; false once closed.
func (s *streamLayer) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *streamLayer) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *streamLayer) acceptLoop() {
	for {
		raw, err := s.ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		c := tls.Server(raw, s.server)
		if !s.track(c) {
			raw.Close()
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.sort(c)
		}()
	}
}

// sort handshakes c and reads its first byte: raft's connections are
// handed to Accept, ours served here.
func (s *streamLayer) sort(c *tls.Conn) {
	c.SetDeadline(time.Now().Add(s.timeout))
	br := bufio.NewReader(c)
	kind, err := br.Peek(1)
	if err != nil {
		s.untrack(c)
		c.Close()
		return
	}
	c.SetDeadline(time.Time{})
	bc := &bufConn{Conn: c, r: br}
	if kind[0] == connForward {
		br.ReadByte()
		s.serve(bc)
		s.untrack(c)
		c.Close()
		return
	}
	select {
	case s.accepted <- bc:
	case <-s.ctx.Done():
		s.untrack(c)
		c.Close()
	}
}

// bufConn is a connection whose first bytes were read ahead.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (s *streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.accepted:
		return c, nil
	case <-s.ctx.Done():
		return nil, net.ErrClosed
	}
}

func (s *streamLayer) Addr() net.Addr { return s.advertise }

// listenAddr is the socket's own address.
func (s *streamLayer) listenAddr() string { return s.ln.Addr().String() }

func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return s.dial(string(addr), timeout)
}

func (s *streamLayer) dial(addr string, timeout time.Duration) (net.Conn, error) {
	if s.ctx.Err() != nil {
		return nil, net.ErrClosed
	}
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{KeepAlive: s.timeout}, Config: s.client}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if !s.track(c) {
		c.Close()
		return nil, net.ErrClosed
	}
	return &trackedConn{Conn: c, s: s}, nil
}

// trackedConn is a dialed connection, forgotten by the layer once closed.
type trackedConn struct {
	net.Conn
	s    *streamLayer
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.s.untrack(c.Conn) })
	return c.Conn.Close()
}

// Close stops accepting, closes every connection and waits for the
// layer's goroutines. Idempotent (raft's transport calls it, and so does
// the node).
func (s *streamLayer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.cancel()
	conns := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	err := s.ln.Close()
	for _, c := range conns {
		c.Close()
	}
	s.wg.Wait()
	return err
}

// peerTransport is raft's Transport: the NetworkTransport on the stream
// layer, with the drop filter (fault injection: every RPC to or from a
// filtered peer fails, both ways, as in a partition), the message
// metrics, and what the leader learns of each peer's replication for
// Status. Appends are pipelined two deep (raft's default since
// hashicorp/raft#541), so the next one, with the latest commit index,
// goes out while the last is being fsynced.
type peerTransport struct {
	n        *Node
	inner    *raft.NetworkTransport
	consumer chan raft.RPC
	done     chan struct{}
	hb       atomic.Pointer[func(raft.RPC)]
	drop     atomic.Pointer[func(peer uint64) bool]
	// wait bounds the retries of an append to an unreachable peer
	// (peerWait). quit ends them: closed when the node starts closing,
	// before a leader hands over, as raft's leadership transfer waits on
	// every peer's replication (which a retry holds).
	wait     time.Duration
	quit     chan struct{}
	quitOnce sync.Once

	mu       sync.Mutex
	addrs    map[uint64]string
	progress map[uint64]*progress
}

// progress is what the leader knows of a peer's replication.
type progress struct {
	match       uint64
	lastContact time.Time
	snapshot    bool
	failing     bool
}

var (
	_ raft.Transport   = (*peerTransport)(nil)
	_ raft.WithPreVote = (*peerTransport)(nil)
)

func newPeerTransport(n *Node, sl *streamLayer) *peerTransport {
	t := &peerTransport{
		n: n, consumer: make(chan raft.RPC), done: make(chan struct{}), wait: peerWait, quit: make(chan struct{}),
		addrs: map[uint64]string{}, progress: map[uint64]*progress{},
	}
	t.inner = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Logger:          newHCLogger(n.log),
		Stream:          sl,
		MaxPool:         3,
		MaxRPCsInFlight: 1,
		Timeout:         sl.timeout,
	})
	go func() {
		defer close(t.done)
		t.consume()
	}()
	return t
}

// serverID is the raft id of member id: its hex form.
func serverID(id uint64) raft.ServerID { return raft.ServerID(strconv.FormatUint(id, 16)) }

func parseID(s raft.ServerID) uint64 {
	id, _ := strconv.ParseUint(string(s), 16, 64)
	return id
}

func (t *peerTransport) setAddr(id uint64, addr string) {
	if id == t.n.id || addr == "" {
		return
	}
	t.mu.Lock()
	t.addrs[id] = addr
	t.mu.Unlock()
}

func (t *peerTransport) addrOf(id uint64) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.addrs[id]
}

// resolve: the address set for a peer (SetPeerAddr, its AddVoter)
// wins over what raft's configuration holds.
func (t *peerTransport) resolve(id raft.ServerID, target raft.ServerAddress) raft.ServerAddress {
	if a := t.addrOf(parseID(id)); a != "" {
		return raft.ServerAddress(a)
	}
	return target
}

func (t *peerTransport) dropped(peer uint64) bool {
	f := t.drop.Load()
	return f != nil && (*f)(peer)
}

// learn takes the address a peer's request names as its own (raft's
// RPC header: the peer's advertised transport address) when this member
// knows none for it yet. A peer's address comes with its membership
// metadata, one gossip broadcast when its transport starts: until that
// arrives (or the next full state sync, 15 s later, if the broadcast was
// missed) this member could not answer a peer that already reaches it.
// Peers are the site's (mutual TLS): a known address is never replaced
// from here.
func (t *peerTransport) learn(cmd any) {
	h, ok := cmd.(interface{ GetRPCHeader() raft.RPCHeader })
	if !ok {
		return
	}
	hd := h.GetRPCHeader()
	id := parseID(raft.ServerID(hd.ID))
	addr := string(hd.Addr)
	if id == 0 || addr == "" || t.addrOf(id) != "" {
		return
	}
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "" || port == "0" {
		return
	}
	t.setAddr(id, addr)
	t.n.log.Info("consensus: a peer's address learned from its request", "peer", fmt.Sprintf("%x", id), "addr", addr)
}

func rpcFrom(cmd any) uint64 {
	if h, ok := cmd.(interface{ GetRPCHeader() raft.RPCHeader }); ok {
		return parseID(raft.ServerID(h.GetRPCHeader().ID))
	}
	return 0
}

// consume passes on what peers send, but what the filter drops.
func (t *peerTransport) consume() {
	for {
		var rpc raft.RPC
		select {
		case rpc = <-t.inner.Consumer():
		case <-t.n.stop:
			return
		}
		t.learn(rpc.Command)
		if t.dropped(rpcFrom(rpc.Command)) {
			t.n.m.drops.With("filter").Inc()
			rpc.Respond(nil, errDropped)
			continue
		}
		t.n.m.received.Inc()
		select {
		case t.consumer <- rpc:
		case <-t.n.stop:
			return
		}
	}
}

func (t *peerTransport) Consumer() <-chan raft.RPC     { return t.consumer }
func (t *peerTransport) LocalAddr() raft.ServerAddress { return t.inner.LocalAddr() }

// AppendEntriesPipeline: raft's pipeline (two appends in flight), behind
// the filter; what the follower acknowledges is recorded as it comes.
func (t *peerTransport) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	if t.dropped(parseID(id)) {
		t.n.m.drops.With("filter").Inc()
		return nil, errDropped
	}
	inner, err := t.inner.AppendEntriesPipeline(id, t.resolve(id, target))
	if err != nil {
		return nil, err
	}
	p := &pipeline{t: t, peer: parseID(id), inner: inner, out: make(chan raft.AppendFuture), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.consume()
	}()
	return p, nil
}

// pipeline wraps raft's: the filter on each append, and a goroutine
// passing on the answers (owned by the pipeline: Close waits for it).
type pipeline struct {
	t     *peerTransport
	peer  uint64
	inner raft.AppendPipeline
	out   chan raft.AppendFuture
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once
}

func (p *pipeline) AppendEntries(args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) (raft.AppendFuture, error) {
	if p.t.dropped(p.peer) {
		p.t.n.m.drops.With("filter").Inc()
		return nil, errDropped
	}
	f, err := p.inner.AppendEntries(args, resp)
	if err != nil {
		p.t.n.m.drops.With("unreachable").Inc()
	}
	return f, err
}

func (p *pipeline) consume() {
	for {
		select {
		case f := <-p.inner.Consumer():
			err := f.Error()
			p.t.record(p.peer, err)
			if err == nil {
				p.t.n.m.sent.Inc()
				if args, resp := f.Request(), f.Response(); resp.Success && len(args.Entries) > 0 {
					p.t.matched(p.peer, args.Entries[len(args.Entries)-1].Index)
				}
			}
			select {
			case p.out <- f:
			case <-p.stop:
				return
			}
		case <-p.stop:
			return
		}
	}
}

func (p *pipeline) Consumer() <-chan raft.AppendFuture { return p.out }

func (p *pipeline) Close() error {
	err := p.inner.Close()
	p.once.Do(func() { close(p.stop) })
	<-p.done
	return err
}

// call runs one RPC to peer id through the filter and the metrics.
func (t *peerTransport) call(id raft.ServerID, f func() error) error {
	peer := parseID(id)
	if t.dropped(peer) {
		t.n.m.drops.With("filter").Inc()
		return errDropped
	}
	err := f()
	t.record(peer, err)
	if err != nil {
		t.n.m.drops.With("unreachable").Inc()
		return err
	}
	t.n.m.sent.Inc()
	return nil
}

// record notes the outcome of a request to peer.
func (t *peerTransport) record(peer uint64, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.progress[peer]
	if p == nil {
		p = &progress{}
		t.progress[peer] = p
	}
	p.failing = err != nil
	if err == nil {
		p.lastContact = time.Now()
	}
}

// matched notes that peer holds the log through index.
func (t *peerTransport) matched(peer, index uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.progress[peer]; p != nil {
		p.match = max(p.match, index)
	}
}

// Appends to a peer that cannot be reached are retried here, every
// peerRetry for up to peerWait, before raft hears of the failure. raft
// backs off from a failing peer, doubling its wait from 10 ms up to 10 s,
// and cannot be told that the peer is back: a member down for a second
// waited up to 1.3 s more, once restarted, for its first append, and one
// cut off for 30 s caught up 4 s after the heal. Waiting here, raft sees
// one slow append instead of a run of failures, and the retry after the
// peer returns reaches it within peerRetry (or a dial timeout, if
// the network dropped the last try's packets). Only that peer's
// replication waits: raft runs one per peer.
const (
	peerRetry = 100 * time.Millisecond
	peerWait  = 10 * time.Second
)

func (t *peerTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	send := func() error {
		return t.call(id, func() error { return t.inner.AppendEntries(id, t.resolve(id, target), args, resp) })
	}
	err := send()
	if err != nil {
		err = t.retry(id, send, err)
	}
	if err == nil && resp.Success && len(args.Entries) > 0 {
		t.matched(parseID(id), args.Entries[len(args.Entries)-1].Index)
	}
	return err
}

// retry calls send every peerRetry until it succeeds, t.wait has passed
// since the first failure (err), or the node starts closing (stopRetries);
// it returns the last error, or nil.
func (t *peerTransport) retry(id raft.ServerID, send func() error, err error) error {
	t.n.log.Info("consensus: append to a peer failed; retrying until it answers", "peer", id, "for", t.wait, "err", err)
	tick := time.NewTicker(peerRetry)
	defer tick.Stop()
	deadline := time.Now().Add(t.wait)
	for time.Now().Before(deadline) {
		select {
		case <-t.quit:
			return err
		case <-tick.C:
		}
		if err = send(); err == nil {
			return nil
		}
	}
	return err
}

func (t *peerTransport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	return t.call(id, func() error { return t.inner.RequestVote(id, t.resolve(id, target), args, resp) })
}

func (t *peerTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	return t.call(id, func() error { return t.inner.RequestPreVote(id, t.resolve(id, target), args, resp) })
}

func (t *peerTransport) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	peer := parseID(id)
	t.mu.Lock()
	if p := t.progress[peer]; p != nil {
		p.snapshot = true
	}
	t.mu.Unlock()
	err := t.call(id, func() error { return t.inner.InstallSnapshot(id, t.resolve(id, target), args, resp, data) })
	t.mu.Lock()
	if p := t.progress[peer]; p != nil {
		p.snapshot = false
		if err == nil && resp.Success {
			p.match = max(p.match, args.LastLogIndex)
		}
	}
	t.mu.Unlock()
	if err == nil && resp.Success {
		t.n.log.Info("consensus: snapshot sent", "peer", fmt.Sprintf("%x", peer), "index", args.LastLogIndex, "bytes", args.Size)
	}
	return err
}

func (t *peerTransport) TimeoutNow(id raft.ServerID, target raft.ServerAddress, args *raft.TimeoutNowRequest, resp *raft.TimeoutNowResponse) error {
	return t.call(id, func() error { return t.inner.TimeoutNow(id, t.resolve(id, target), args, resp) })
}

func (t *peerTransport) EncodePeer(id raft.ServerID, addr raft.ServerAddress) []byte {
	return t.inner.EncodePeer(id, addr)
}

func (t *peerTransport) DecodePeer(b []byte) raft.ServerAddress { return t.inner.DecodePeer(b) }

// SetHeartbeatHandler: raft's fast path for heartbeats, behind the
// filter.
func (t *peerTransport) SetHeartbeatHandler(cb func(raft.RPC)) {
	if cb == nil {
		t.inner.SetHeartbeatHandler(nil)
		return
	}
	t.inner.SetHeartbeatHandler(func(rpc raft.RPC) {
		if t.dropped(rpcFrom(rpc.Command)) {
			t.n.m.drops.With("filter").Inc()
			rpc.Respond(nil, errDropped)
			return
		}
		t.n.m.received.Inc()
		cb(rpc)
	})
}

// peers is the leader's view of each peer's replication.
func (t *peerTransport) peers(electionTimeout time.Duration) map[uint64]PeerStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[uint64]PeerStatus{}
	for id, p := range t.progress {
		st := "replicate"
		switch {
		case p.snapshot:
			st = "snapshot"
		case p.failing:
			st = "probe"
		}
		out[id] = PeerStatus{ID: id, Addr: t.addrs[id], Match: p.match, State: st,
			Active: !p.failing && time.Since(p.lastContact) < electionTimeout}
	}
	return out
}

// stopRetries ends the retries of appends to unreachable peers, now and
// from now on (the node is closing).
func (t *peerTransport) stopRetries() { t.quitOnce.Do(func() { close(t.quit) }) }

// close stops the transport (raft's, the stream layer and this one's
// goroutine); the node's stop channel is closed first.
func (t *peerTransport) close() error {
	err := t.inner.Close()
	<-t.done
	return err
}
