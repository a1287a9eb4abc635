package consensus

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/pushrelay/pushrelay/relay/linkquic"
)

// ALPN is the peers' application protocol on relay/linkquic.
const ALPN = "pushrelay-peer/1"

// Stream kinds: the first byte of every stream a peer opens.
const (
	streamMessages = 'M'
	streamSnapshot = 'S'
)

// maxFrame bounds one message frame (an append of MaxSizePerMsg and its
// envelope fit many times over).
const maxFrame = 64 << 20

// snapPrefix names a received snapshot's spool file in the data dir.
const snapPrefix = "snap-in-"

// transport carries raft's messages between peers over relay/linkquic.
//
// Each member dials every peer it sends to and keeps that one connection:
// a messages stream (framed pb.Message, uint32 length first) after a
// hello naming the sender, and one more stream per snapshot. What a peer
// sends arrives on the connection it dialed, so a pair of members holds
// two connections, one per direction; neither waits on the other.
//
// Per peer a bounded queue of marshaled messages feeds one writer
// goroutine; when the queue is full (the peer slow or gone) the message
// is dropped and counted, and raft sends again. The Ready loop never
// blocks on a peer.
type transport struct {
	n      *Node
	ln     *linkquic.Listener
	client linkquic.Config
	self   string // this member's listening address, told in the hello
	inc    uint64 // this incarnation, told in the hello

	ctx    context.Context // ended by close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	peers map[uint64]*peer
	conns map[*linkquic.Conn]bool // accepted, open

	drop atomic.Pointer[func(peer uint64) bool]
}

type peer struct {
	id uint64
	q  chan []byte

	mu       sync.Mutex
	addr     string
	conn     *linkquic.Conn // the current outgoing connection, or nil
	lastInc  uint64         // the peer's incarnation in its last hello
	started  bool
	snapping bool
}

// resetKey derives the listening socket's stateless reset key from this
// member's private key: the same after a restart, even with the data dir
// wiped, so a peer still writing on a connection to the member's former
// self is answered with a reset and redials at once instead of at its
// idle timeout. Nil when there is no key to derive it from.
func resetKey(c *tls.Config) *[32]byte {
	if c == nil || len(c.Certificates) == 0 {
		return nil
	}
	der, err := x509.MarshalPKCS8PrivateKey(c.Certificates[0].PrivateKey)
	if err != nil {
		return nil
	}
	k := sha256.Sum256(append([]byte("pushrelay-peer-reset\x00"), der...))
	return &k
}

func newTransport(n *Node, cfg Config) (*transport, error) {
	server := cfg.linkConfig()
	server.TLS = cfg.ServerTLS
	server.ResetKey = resetKey(cfg.ServerTLS)
	ln, err := linkquic.Listen(cfg.Listen, server)
	if err != nil {
		return nil, err
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	t := &transport{
		n: n, ln: ln, client: cfg.linkConfig(),
		inc:   binary.BigEndian.Uint64(b[:]) | 1,
		peers: map[uint64]*peer{},
		conns: map[*linkquic.Conn]bool{},
	}
	t.client.TLS = cfg.ClientTLS
	// A wildcard address tells a peer nothing it can dial: then only
	// Advertise (or the peer's own configuration) says where we are.
	if ua, ok := ln.Addr().(*net.UDPAddr); ok && !ua.IP.IsUnspecified() {
		t.self = ua.String()
	}
	if cfg.Advertise != "" {
		t.self = cfg.Advertise
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	return t, nil
}

// peer returns id's peer, made on first use.
func (t *transport) peer(id uint64) *peer {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.peers[id]
	if p == nil {
		p = &peer{id: id, q: make(chan []byte, t.n.cfg.SendQueue)}
		t.peers[id] = p
	}
	return p
}

func (t *transport) setAddr(id uint64, addr string) {
	if id == t.n.id || addr == "" {
		return
	}
	p := t.peer(id)
	p.mu.Lock()
	changed := p.addr != addr
	p.addr = addr
	conn := p.conn
	p.mu.Unlock()
	if changed && conn != nil {
		conn.Close(linkquic.CodeNone, "address changed")
	}
}

func (t *transport) addrOf(id uint64) string {
	t.mu.Lock()
	p := t.peers[id]
	t.mu.Unlock()
	if p == nil {
		return ""
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addr
}

func (t *transport) dropped(peer uint64) bool {
	f := t.drop.Load()
	return f != nil && (*f)(peer)
}

// send queues msgs (called by the Ready loop, which marshals them: raft
// wants it done there). It never blocks.
func (t *transport) send(msgs []*pb.Message) {
	for _, m := range msgs {
		to := m.GetTo()
		if t.dropped(to) {
			t.n.m.drops.With("filter").Inc()
			if m.GetType() == pb.MsgSnap {
				t.n.rn.ReportSnapshot(to, raft.SnapshotFailure)
			}
			continue
		}
		if m.GetType() == pb.MsgSnap {
			t.startSnapshot(m)
			continue
		}
		b, err := proto.Marshal(m)
		if err != nil || len(b) > maxFrame {
			t.n.m.drops.With("too_big").Inc()
			continue
		}
		p := t.peer(to)
		t.startWriter(p)
		select {
		case p.q <- b:
		default:
			t.n.m.drops.With("queue_full").Inc()
		}
	}
}

// spawn runs f on a goroutine the transport waits for at close; after
// close it runs nothing and returns false. Lock order: t.mu, then a
// peer's mu.
func (t *transport) spawn(f func()) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ctx.Err() != nil {
		return false
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		f()
	}()
	return true
}

func (t *transport) startWriter(p *peer) {
	p.mu.Lock()
	start := !p.started
	p.started = true
	p.mu.Unlock()
	if start {
		t.spawn(func() { t.writer(p) })
	}
}

// writer is p's one writer: it dials, says hello and writes the queue's
// frames, flushing when the queue is empty. On an error it reports p
// unreachable, drops what waits, and dials again after a pause.
func (t *transport) writer(p *peer) {
	backoff := t.n.cfg.Tick
	for t.ctx.Err() == nil {
		connected, err := t.connectAndWrite(p)
		if t.ctx.Err() != nil {
			return
		}
		t.n.log.Debug("consensus: peer connection ended", "peer", p.id, "err", err)
		t.n.rn.ReportUnreachable(p.id)
		for n := len(p.q); n > 0; n-- {
			<-p.q
			t.n.m.drops.With("unreachable").Inc()
		}
		select {
		case <-t.ctx.Done():
			return
		case <-time.After(backoff):
		}
		// A connection that was up starts the pauses over.
		if connected {
			backoff = t.n.cfg.Tick
		} else {
			backoff = min(2*backoff, time.Second)
		}
	}
}

// connectAndWrite dials p and writes its queue until the connection
// fails; connected says whether it was up at all.
func (t *transport) connectAndWrite(p *peer) (connected bool, err error) {
	p.mu.Lock()
	addr := p.addr
	p.mu.Unlock()
	if addr == "" {
		return false, fmt.Errorf("peer %x: no address", p.id)
	}
	dctx, cancel := context.WithTimeout(t.ctx, t.n.electionTimeout())
	conn, err := linkquic.Dial(dctx, addr, t.client)
	cancel()
	if err != nil {
		return false, err
	}
	p.mu.Lock()
	p.conn = conn
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		if p.conn == conn {
			p.conn = nil
		}
		p.mu.Unlock()
		conn.Close(linkquic.CodeNone, "")
	}()
	octx, cancel := context.WithTimeout(t.ctx, t.n.electionTimeout())
	s, err := conn.OpenControl(octx)
	cancel()
	if err != nil {
		return true, err
	}
	w := bufio.NewWriterSize(s, 64<<10)
	hello := binary.BigEndian.AppendUint64(nil, t.n.id)
	hello = binary.BigEndian.AppendUint64(hello, t.inc)
	hello = append(hello, t.self...)
	w.WriteByte(streamMessages)
	if err := writeFrame(w, hello); err != nil {
		return true, err
	}
	timeout := t.n.electionTimeout()
	for {
		var b []byte
		if w.Buffered() > 0 {
			select {
			case b = <-p.q:
			default:
				s.SetWriteDeadline(time.Now().Add(timeout))
				if err := w.Flush(); err != nil {
					return true, err
				}
				continue
			}
		} else {
			select {
			case b = <-p.q:
			case <-conn.Done():
				return true, conn.Err()
			case <-t.ctx.Done():
				return true, nil
			}
		}
		s.SetWriteDeadline(time.Now().Add(timeout))
		if err := writeFrame(w, b); err != nil {
			t.n.m.drops.With("unreachable").Inc()
			return true, err
		}
		t.n.m.sent.Inc()
	}
}

func writeFrame(w io.Writer, b []byte) error {
	var h [4]byte
	binary.BigEndian.PutUint32(h[:], uint32(len(b)))
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

func readFrame(r io.Reader) ([]byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(h[:])
	if n > maxFrame {
		return nil, fmt.Errorf("frame of %d bytes, over %d", n, maxFrame)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

// run accepts peers' connections until the transport closes.
func (t *transport) run() {
	for {
		conn, err := t.ln.Accept(t.ctx)
		if err != nil {
			return
		}
		t.mu.Lock()
		if t.ctx.Err() != nil {
			t.mu.Unlock()
			conn.Close(linkquic.CodeShutdown, "")
			return
		}
		t.conns[conn] = true
		t.wg.Add(1)
		t.mu.Unlock()
		go func() {
			defer t.wg.Done()
			t.serveConn(conn)
			t.mu.Lock()
			delete(t.conns, conn)
			t.mu.Unlock()
		}()
	}
}

// serveConn reads a peer's streams until its connection ends.
func (t *transport) serveConn(conn *linkquic.Conn) {
	defer conn.Close(linkquic.CodeNone, "")
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		s, err := conn.AcceptControl(t.ctx)
		if err != nil {
			return
		}
		wg.Go(func() {
			if err := t.serveStream(s); err != nil && t.ctx.Err() == nil {
				t.n.log.Debug("consensus: peer stream ended", "remote", conn.RemoteAddr(), "err", err)
			}
			s.Close()
		})
	}
}

func (t *transport) serveStream(s *linkquic.Stream) error {
	r := bufio.NewReaderSize(s, 64<<10)
	kind, err := r.ReadByte()
	if err != nil {
		return err
	}
	switch kind {
	case streamMessages:
		return t.readMessages(r)
	case streamSnapshot:
		return t.receiveSnapshot(s, r)
	}
	return fmt.Errorf("stream kind %q", kind)
}

func (t *transport) readMessages(r *bufio.Reader) error {
	hello, err := readFrame(r)
	if err != nil {
		return err
	}
	if len(hello) < 16 {
		return errors.New("short hello")
	}
	from, inc := binary.BigEndian.Uint64(hello), binary.BigEndian.Uint64(hello[8:])
	if from != t.n.id {
		t.heard(from, inc, string(hello[16:]))
	}
	for {
		b, err := readFrame(r)
		if err != nil {
			return err
		}
		m := &pb.Message{}
		if err := proto.Unmarshal(b, m); err != nil {
			return fmt.Errorf("message: %w", err)
		}
		if m.GetTo() != t.n.id || t.dropped(m.GetFrom()) {
			continue
		}
		t.n.m.received.Inc()
		switch {
		case m.GetType() == pb.MsgHeartbeat:
			t.n.clampCommit(m)
		case m.GetType() == pb.MsgAppResp && m.GetReject() && m.GetRejectHint() == 0:
			t.n.lostLog(m.GetFrom())
		}
		if err := t.n.rn.Step(t.ctx, m); err != nil && t.ctx.Err() != nil {
			return nil
		}
	}
}

// heard notes a peer's hello: its address, and whether it restarted (a
// new incarnation), in which case the connection to it is redialed at
// once instead of at its idle timeout.
func (t *transport) heard(from, inc uint64, addr string) {
	p := t.peer(from)
	p.mu.Lock()
	if p.addr == "" {
		p.addr = addr
	}
	restarted := p.lastInc != 0 && p.lastInc != inc
	p.lastInc = inc
	conn := p.conn
	p.mu.Unlock()
	if restarted && conn != nil {
		conn.Close(linkquic.CodeNone, "peer restarted")
	}
}

// startSnapshot streams a snapshot to m's peer on a goroutine of its own:
// the message with the snapshot's metadata, then the state machine's
// state written straight onto the stream, then the peer's one-byte ack;
// raft hears the result through ReportSnapshot.
func (t *transport) startSnapshot(m *pb.Message) {
	p := t.peer(m.GetTo())
	t.startWriter(p)
	p.mu.Lock()
	if p.snapping || t.ctx.Err() != nil {
		p.mu.Unlock()
		t.n.rn.ReportSnapshot(p.id, raft.SnapshotFailure)
		return
	}
	p.snapping = true
	p.mu.Unlock()
	b, err := proto.Marshal(m)
	if err != nil {
		t.n.rn.ReportSnapshot(p.id, raft.SnapshotFailure)
		return
	}
	ok := t.spawn(func() {
		defer func() {
			p.mu.Lock()
			p.snapping = false
			p.mu.Unlock()
		}()
		n, err := t.sendSnapshot(p, b)
		if err != nil {
			t.n.log.Warn("consensus: snapshot not sent", "peer", p.id, "err", err)
			t.n.rn.ReportSnapshot(p.id, raft.SnapshotFailure)
			return
		}
		t.n.m.snapSent.Inc()
		t.n.m.snapSentBytes.Observe(float64(n))
		t.n.log.Info("consensus: snapshot sent", "peer", p.id, "index", m.GetSnapshot().GetMetadata().GetIndex(), "bytes", n)
		t.n.rn.ReportSnapshot(p.id, raft.SnapshotFinish)
	})
	if !ok {
		t.n.rn.ReportSnapshot(p.id, raft.SnapshotFailure)
	}
}

// deadlineWriter gives each write to a stream its own deadline, so a
// stalled peer fails the snapshot instead of holding it for ever.
type deadlineWriter struct {
	s *linkquic.Stream
	d time.Duration
	n int64
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	w.s.SetWriteDeadline(time.Now().Add(w.d))
	n, err := w.s.Write(p)
	w.n += int64(n)
	return n, err
}

func (t *transport) sendSnapshot(p *peer, msg []byte) (int64, error) {
	// The snapshot goes on the connection the messages use, once it is up.
	var conn *linkquic.Conn
	for deadline := time.Now().Add(t.n.electionTimeout()); ; {
		p.mu.Lock()
		conn = p.conn
		p.mu.Unlock()
		if conn != nil {
			break
		}
		if time.Now().After(deadline) {
			return 0, errors.New("no connection")
		}
		select {
		case <-t.ctx.Done():
			return 0, t.ctx.Err()
		case <-time.After(t.n.cfg.Tick):
		}
	}
	ctx, cancel := context.WithTimeout(t.ctx, t.n.electionTimeout())
	s, err := conn.OpenControl(ctx)
	cancel()
	if err != nil {
		return 0, err
	}
	defer s.Close()
	dw := &deadlineWriter{s: s, d: 5 * t.n.electionTimeout()}
	w := bufio.NewWriterSize(dw, 64<<10)
	w.WriteByte(streamSnapshot)
	if err := writeFrame(w, msg); err != nil {
		return 0, err
	}
	if err := t.n.sm.Snapshot(w); err != nil {
		return 0, fmt.Errorf("state machine snapshot: %w", err)
	}
	if err := w.Flush(); err != nil {
		return 0, err
	}
	if err := s.Close(); err != nil {
		return 0, err
	}
	s.SetReadDeadline(time.Now().Add(5 * t.n.electionTimeout()))
	var ack [1]byte
	if _, err := io.ReadFull(s, ack[:]); err != nil {
		return 0, fmt.Errorf("no ack: %w", err)
	}
	return dw.n, nil
}

// receiveSnapshot spools a snapshot to a file in the data dir (it is not
// held in memory), then steps its message into raft; the Ready loop
// restores the state machine from the file if raft takes it.
func (t *transport) receiveSnapshot(s *linkquic.Stream, r *bufio.Reader) error {
	b, err := readFrame(r)
	if err != nil {
		return err
	}
	m := &pb.Message{}
	if err := proto.Unmarshal(b, m); err != nil {
		return fmt.Errorf("snapshot message: %w", err)
	}
	if m.GetType() != pb.MsgSnap || m.GetTo() != t.n.id || t.dropped(m.GetFrom()) {
		return errors.New("not a snapshot for us")
	}
	md := m.GetSnapshot().GetMetadata()
	path := t.n.spoolPath(md.GetIndex(), md.GetTerm())
	// A file of its own per stream: a sender's retry may overlap.
	f, err := os.CreateTemp(t.n.cfg.Dir, filepath.Base(path)+".*.part")
	if err != nil {
		return err
	}
	part := f.Name()
	s.SetReadDeadline(time.Now().Add(30 * t.n.electionTimeout()))
	n, err := io.Copy(f, r)
	if err == nil {
		err = f.Sync()
	}
	err = errors.Join(err, f.Close())
	if err == nil {
		err = os.Rename(part, path)
	}
	if err != nil {
		os.Remove(part)
		return fmt.Errorf("spool snapshot: %w", err)
	}
	t.n.m.snapRecv.Inc()
	t.n.m.snapRecvBytes.Observe(float64(n))
	if err := t.n.rn.Step(t.ctx, m); err != nil {
		return err
	}
	_, err = s.Write([]byte{1})
	return err
}

// spoolPath is where a received snapshot of (index, term) waits.
func (n *Node) spoolPath(index, term uint64) string {
	return filepath.Join(n.cfg.Dir, snapPrefix+strconv.FormatUint(term, 10)+"-"+strconv.FormatUint(index, 10))
}

// close stops the transport: the listener, every connection, and waits
// for its goroutines.
func (t *transport) close() error {
	t.mu.Lock()
	t.cancel()
	var conns []*linkquic.Conn
	for c := range t.conns {
		conns = append(conns, c)
	}
	for _, p := range t.peers {
		p.mu.Lock()
		if p.conn != nil {
			conns = append(conns, p.conn)
		}
		p.mu.Unlock()
	}
	t.mu.Unlock()
	for _, c := range conns {
		c.Close(linkquic.CodeShutdown, "")
	}
	err := t.ln.Close()
	t.wg.Wait()
	return err
}
