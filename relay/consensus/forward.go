package consensus

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Followers cannot append to raft's log: what they propose, and their
// read barriers and configuration changes, go to the leader over a
// connection of this package's own on the peer port (first byte
// connForward, then the asking member's id), one request at a time per
// connection, kept in a small pool per leader address:
//
//	request:  op(1) | len(4) | payload
//	response: status(1) | index(8) | len(4) | message
const (
	opPropose = 'P' // payload: the entry; index: where it committed
	opRead    = 'R' // index: the leader's commit index, leadership confirmed
	opAdd     = 'A' // payload: id(8), address; index: the change's
	opRemove  = 'D' // payload: id(8)
)

const (
	fwdOK         = 0
	fwdNotLeader  = 1
	fwdLost       = 2 // leadership lost before the entry was known committed
	fwdFailed     = 3
	maxFwdPayload = 64 << 20
	maxIdleFwd    = 256
)

// fwdResult is a leader's answer.
type fwdResult struct {
	status byte
	index  uint64
	msg    string
}

func (r fwdResult) err() error {
	switch r.status {
	case fwdOK:
		return nil
	case fwdNotLeader:
		return raft.ErrNotLeader
	case fwdLost:
		return raft.ErrLeadershipLost
	}
	return errors.New(r.msg)
}

// fwdPool keeps idle forward connections by address; closeAll starts a
// new generation, and a connection of an older one is not kept.
type fwdPool struct {
	mu   sync.Mutex
	gen  uint64
	idle map[string][]net.Conn
}

func (p *fwdPool) get(addr string) (net.Conn, uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cs := p.idle[addr]
	if len(cs) == 0 {
		return nil, p.gen
	}
	c := cs[len(cs)-1]
	p.idle[addr] = cs[:len(cs)-1]
	return c, p.gen
}

func (p *fwdPool) put(addr string, c net.Conn, gen uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.idle == nil {
		p.idle = map[string][]net.Conn{}
	}
	if gen != p.gen || len(p.idle[addr]) >= maxIdleFwd {
		c.Close()
		return
	}
	p.idle[addr] = append(p.idle[addr], c)
}

func (p *fwdPool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gen++
	for _, cs := range p.idle {
		for _, c := range cs {
			c.Close()
		}
	}
	p.idle = nil
}

// leaderAddr is where leader id is dialed.
func (n *Node) leaderAddr(id uint64) string {
	if a := n.tr.addrOf(id); a != "" {
		return a
	}
	if r := n.raft(); r != nil {
		if addr, lid := r.LeaderWithID(); parseID(lid) == id {
			return string(addr)
		}
	}
	return ""
}

// errNotSent: the request certainly did not reach the leader (it could
// not be dialed).
var errNotSent = errors.New("consensus: leader not reached")

// forward sends one request to leader and reads its answer, within ctx.
// An error means the outcome is unknown (the request may have reached
// the leader): the filter's drops included, as a partition's would be;
// but errNotSent.
func (n *Node) forward(ctx context.Context, leader uint64, op byte, payload []byte) (fwdResult, error) {
	if n.tr.dropped(leader) {
		n.m.drops.With("filter").Inc()
		return fwdResult{}, errDropped
	}
	addr := n.leaderAddr(leader)
	if addr == "" {
		return fwdResult{}, fmt.Errorf("leader %x: no address", leader)
	}
	c, gen := n.fwd.get(addr)
	if c == nil {
		timeout := n.electionTimeout()
		if d, ok := ctx.Deadline(); ok {
			timeout = min(timeout, time.Until(d))
		}
		var err error
		c, err = n.sl.dial(addr, timeout)
		if err != nil {
			return fwdResult{}, fmt.Errorf("%w: %w", errNotSent, err)
		}
		n.m.fwdDials.Inc()
		var hello [9]byte
		hello[0] = connForward
		binary.BigEndian.PutUint64(hello[1:], n.id)
		c.SetWriteDeadline(time.Now().Add(timeout))
		if _, err := c.Write(hello[:]); err != nil {
			c.Close()
			return fwdResult{}, fmt.Errorf("%w: %w", errNotSent, err)
		}
	}
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	} else {
		c.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	res, err := fwdRoundTrip(c, op, payload)
	stop()
	if err != nil {
		c.Close()
		return fwdResult{}, err
	}
	n.fwd.put(addr, c, gen)
	return res, nil
}

func fwdRoundTrip(c net.Conn, op byte, payload []byte) (fwdResult, error) {
	req := make([]byte, 5, 5+len(payload))
	req[0] = op
	binary.BigEndian.PutUint32(req[1:], uint32(len(payload)))
	if _, err := c.Write(append(req, payload...)); err != nil {
		return fwdResult{}, err
	}
	var h [13]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return fwdResult{}, err
	}
	res := fwdResult{status: h[0], index: binary.BigEndian.Uint64(h[1:])}
	if l := binary.BigEndian.Uint32(h[9:]); l > 0 {
		if l > 1<<16 {
			return fwdResult{}, fmt.Errorf("answer of %d bytes", l)
		}
		msg := make([]byte, l)
		if _, err := io.ReadFull(c, msg); err != nil {
			return fwdResult{}, err
		}
		res.msg = string(msg)
	}
	return res, nil
}

// serveForward answers a member's requests on c (after its first byte)
// until it closes. A member the filter drops gets no answer.
func (n *Node) serveForward(c net.Conn) {
	// Small: a connection per request in flight stays open, idle.
	r := bufio.NewReaderSize(c, 4<<10)
	var hello [8]byte
	if _, err := io.ReadFull(r, hello[:]); err != nil {
		return
	}
	from := binary.BigEndian.Uint64(hello[:])
	for {
		var h [5]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return
		}
		l := binary.BigEndian.Uint32(h[1:])
		if l > maxFwdPayload {
			return
		}
		payload := make([]byte, l)
		if _, err := io.ReadFull(r, payload); err != nil {
			return
		}
		if n.tr.dropped(from) {
			n.m.drops.With("filter").Inc()
			return
		}
		res := n.lead(h[0], payload)
		if n.tr.dropped(from) {
			n.m.drops.With("filter").Inc()
			return
		}
		out := make([]byte, 13, 13+len(res.msg))
		out[0] = res.status
		binary.BigEndian.PutUint64(out[1:], res.index)
		binary.BigEndian.PutUint32(out[9:], uint32(len(res.msg)))
		c.SetWriteDeadline(time.Now().Add(n.electionTimeout()))
		if _, err := c.Write(append(out, res.msg...)); err != nil {
			return
		}
	}
}

// lead does a request on this member, if it leads.
func (n *Node) lead(op byte, payload []byte) fwdResult {
	r := n.raft()
	if r == nil || r.State() != raft.Leader {
		return fwdResult{status: fwdNotLeader}
	}
	switch op {
	case opPropose:
		f := r.Apply(payload, n.cfg.ProposeTimeout)
		return result(f.Error(), f)
	case opRead:
		idx, err := n.readIndexHere(r)
		res := result(err, nil)
		res.index = idx
		return res
	case opAdd, opRemove:
		if len(payload) < 8 {
			return fwdResult{status: fwdFailed, msg: "short request"}
		}
		id := serverID(binary.BigEndian.Uint64(payload))
		var f raft.IndexFuture
		if op == opAdd {
			n.tr.setAddr(binary.BigEndian.Uint64(payload), string(payload[8:]))
			f = r.AddVoter(id, raft.ServerAddress(payload[8:]), 0, n.cfg.ProposeTimeout)
		} else {
			f = r.RemoveServer(id, 0, n.cfg.ProposeTimeout)
		}
		return result(f.Error(), f)
	}
	return fwdResult{status: fwdFailed, msg: fmt.Sprintf("unknown request %q", op)}
}

func result(err error, f raft.IndexFuture) fwdResult {
	var res fwdResult
	switch {
	case err == nil:
		if f != nil {
			res.index = f.Index()
		}
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		res.status = fwdNotLeader
	case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrAbortedByRestore):
		res.status = fwdLost
	default:
		res.status, res.msg = fwdFailed, err.Error()
	}
	return res
}

// readIndexHere, on the leader: once per term a barrier (so that its
// commit index covers every entry of earlier terms it will ever commit),
// then a heartbeat round confirming it still leads; its commit index.
func (n *Node) readIndexHere(r *raft.Raft) (uint64, error) {
	term := r.CurrentTerm()
	if n.barrierTerm.Load() != term {
		if err := r.Barrier(n.cfg.ProposeTimeout).Error(); err != nil {
			return 0, err
		}
		n.barrierTerm.Store(term)
	}
	if err := r.VerifyLeader().Error(); err != nil {
		return 0, err
	}
	return r.CommitIndex(), nil
}
