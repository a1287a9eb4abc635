// Package linkquic is the relay link's QUIC transport, the one package that
// imports quic-go. A child relay Dials its parent, which Listens; the Conn
// both get carries one bidirectional control stream (opened by the child)
// and a few unidirectional data streams (opened by the parent). What goes
// on the streams is relay/linkproto's; who may connect is relay/linkauth's.
//
// # Tuning (Config's defaults, and why)
//
//   - ALPN "pushrelay/1": a client or server speaking anything else is
//     refused in the handshake (TLS alert no_application_protocol).
//     Config.ALPN names another protocol over the same transport (the
//     site's peers use "pushrelay-peer/1", relay/consensus), with
//     Config.Streams bidirectional streams per peer instead of one.
//   - Keepalive every 15 s: cellular carriers' NATs often drop a UDP
//     mapping after 30 s of silence, so a packet at half that keeps the
//     mapping (and lets the parent reach the child) on a quiet link. It
//     costs about 4 small packets a minute each way. The parent sends
//     QUIC PINGs; the child sends a heartbeat, a 32-byte DATAGRAM the
//     parent discards, instead: quic-go answers only packets over 42 bytes
//     with a stateless reset, and a bare PING is about 25.
//   - Idle timeout 60 s: with no packet from the peer for that long the
//     link is dead and the child redials. Four keepalives may be lost
//     first, so a short radio fade does not cost a reconnect; a restarted
//     parent is noticed much sooner through the stateless reset below.
//   - Flow control: a stream may have at most 4 MiB unread (starting at
//     128 KiB and growing while the reader keeps up), a connection 10 MiB
//     (starting at 256 KiB): above the link's default credit (8 MiB of
//     UPDATEs, relay/link), so QUIC's windows do not bound a backlog's
//     drain before the credit does. That bounds what a peer can make
//     this one buffer per link, whatever it sends.
//   - Streams: the parent accepts one bidirectional stream from a child
//     (the control stream) and no unidirectional one; the child accepts at
//     most MaxDataStreams unidirectional streams and no bidirectional one.
//   - Session resumption on: the child keeps TLS session tickets, so a
//     reconnect skips the certificate exchange. 0-RTT is off on both ends
//     (Dial and Listen, never the Early variants): nothing the link sends
//     can be replayed by an attacker.
//   - Stateless reset key: 32 random bytes in the data dir (ResetKeyFile,
//     0600, made once and reused). A parent restarted with the same key
//     answers the child's next packet with a stateless reset the child
//     recognizes, so it notices at once instead of after the idle timeout.
//   - Restart hint: a parent starting sends each child it remembers one
//     non-QUIC datagram (Listener.Announce, see hint.go for its bytes);
//     a child that gets one from its parent's address sends a heartbeat
//     at once (at most one a second), which a restarted parent answers
//     with the stateless reset. So an idle child notices a restart within
//     a round trip, not at its next heartbeat.
//   - UDP socket buffers: quic-go asks the kernel for 7 MiB receive and
//     send buffers (SO_RCVBUF/SO_SNDBUF, then SO_RCVBUFFORCE as root). A
//     relay running as root gets them; otherwise the kernel caps them at
//     net.core.rmem_max and net.core.wmem_max, and quic-go logs a warning.
//     The memory is only used while packets wait, and there is one socket
//     per relay (the parent's listening socket serves all children).
//
// # Connection migration
//
// When a child's address changes (a new backhaul, a NAT rebinding) the
// parent follows on its own: QUIC validates the new path. A child that
// knows its local address changed calls Conn.Migrate, which opens a new
// UDP socket, validates the path to the parent over it and moves the
// connection there, keeping every stream.
//
// # Goroutines
//
// quic-go runs its own per socket and per connection. This package starts
// one per connection: on the child the heartbeat, on the parent the loop
// that discards heartbeats; and on the child one per socket reading
// restart hints. Each returns when its connection ends, and Close waits
// for it. context.AfterFunc runs a short one when a parent's
// connection ends (to count it).
package linkquic

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pushrelay/pushrelay/relay/atomicfile"
	"github.com/pushrelay/pushrelay/relay/linkauth"
	"github.com/pushrelay/pushrelay/relay/linkproto"
	"github.com/pushrelay/pushrelay/relay/metrics"
)

// ALPN is the link's application protocol name.
const ALPN = "pushrelay/1"

// ResetKeyFile is the stateless reset key's file name in the data dir.
const ResetKeyFile = "link-reset.key"

// Defaults of Config.
const (
	DefaultKeepAlive        = 15 * time.Second
	DefaultIdleTimeout      = 60 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	// MaxDataStreams is how many data streams a child accepts at once.
	MaxDataStreams = 8
	// MaxMigrations is how many times Migrate may move one connection;
	// each keeps its old socket open until Close (the old path may still
	// carry packets in flight), so a child that moves more often redials.
	MaxMigrations = 4
)

// Flow-control windows (see the package doc).
const (
	initialStreamWindow = 128 << 10
	maxStreamWindow     = 4 << 20
	initialConnWindow   = 256 << 10
	maxConnWindow       = 10 << 20
)

// Code is a link close code, sent in QUIC's CONNECTION_CLOSE with a
// reason text. It is relay/linkproto's Code: one numbering for REFUSE,
// GOAWAY and the close, so a child reads the same code whichever it gets.
type Code = linkproto.Code

// Close codes, named for this package's uses; each is linkproto's.
const (
	// CodeNone: a graceful close (after GOAWAY), nothing wrong.
	CodeNone = linkproto.CodeNoError
	// CodeProtocol: the peer sent a malformed or unexpected frame.
	CodeProtocol = linkproto.CodeProtocol
	// CodeRefused: the parent refused the child in the handshake or for
	// its token (the text says why): the child is not allowed here.
	CodeRefused = linkproto.CodeUnknownChild
	// CodeShutdown: the relay is stopping.
	CodeShutdown = linkproto.CodeShutdown
	// CodeInternal: this relay failed (store error and the like).
	CodeInternal = linkproto.CodeInternal
)

// Config configures both ends. TLS comes from relay/linkauth
// (Credentials.ServerTLS or ClientTLS); the ALPN is set here.
type Config struct {
	TLS *tls.Config
	// ALPN is the application protocol both ends insist on; "" is the
	// link's, ALPN. Another protocol over this transport (relay/consensus's
	// peer messages) names its own, so neither end can be mistaken for
	// the other.
	ALPN string
	// Streams is how many bidirectional streams a listening end lets one
	// peer have open at once; 0 is 1 (the link's control stream).
	Streams int
	// ResetKey is the stateless reset key (LoadResetKey); nil sends no
	// resets, so a restarted peer is noticed only at the idle timeout.
	ResetKey *[32]byte
	// KeepAlive, IdleTimeout and HandshakeTimeout default to the
	// constants above when zero.
	KeepAlive        time.Duration
	IdleTimeout      time.Duration
	HandshakeTimeout time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Metrics, if set, gets the listener's pushrelay_link_* metrics.
	Metrics *metrics.Registry
	// OnHint, if set, is told on the child what became of each non-QUIC
	// packet its sockets received (a Hint* result; see Listener.Announce).
	// It runs on the socket's hint reader: it must not block.
	OnHint func(from net.Addr, result string)
}

func (c Config) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.Default()
	}
	return c.Logger
}

func (c Config) alpn() string {
	if c.ALPN == "" {
		return ALPN
	}
	return c.ALPN
}

func (c Config) quic(server bool) *quic.Config {
	q := &quic.Config{
		HandshakeIdleTimeout:           orDefault(c.HandshakeTimeout, DefaultHandshakeTimeout),
		MaxIdleTimeout:                 orDefault(c.IdleTimeout, DefaultIdleTimeout),
		KeepAlivePeriod:                orDefault(c.KeepAlive, DefaultKeepAlive),
		InitialStreamReceiveWindow:     initialStreamWindow,
		MaxStreamReceiveWindow:         maxStreamWindow,
		InitialConnectionReceiveWindow: initialConnWindow,
		MaxConnectionReceiveWindow:     maxConnWindow,
	}
	// DATAGRAM frames carry the child's heartbeat (see heartbeat).
	q.EnableDatagrams = true
	if server {
		q.MaxIncomingStreams = int64(max(c.Streams, 1))
		q.MaxIncomingUniStreams = -1
	} else {
		q.MaxIncomingStreams = -1
		q.MaxIncomingUniStreams = MaxDataStreams
		// The heartbeat is the child's keepalive.
		q.KeepAlivePeriod = 0
	}
	return q
}

// heartbeatSize is the child's heartbeat payload. The packet carrying it
// (about 60 bytes) is larger than 42 bytes, the least quic-go answers with
// a stateless reset (a reset must be smaller than what triggers it, RFC
// 9000 section 10.3); QUIC's own keepalive, a bare PING of about 25 bytes,
// is not, so a restarted parent would not reset an idle child.
const heartbeatSize = 32

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// LoadResetKey reads the stateless reset key at path, making it (32
// random bytes, 0600) when the file does not exist yet.
func LoadResetKey(path string) (*[32]byte, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		var k [32]byte
		if _, err := rand.Read(k[:]); err != nil {
			return nil, fmt.Errorf("make link reset key: %w", err)
		}
		if err := atomicfile.Create(path, k[:], 0o600); err != nil {
			return nil, fmt.Errorf("write link reset key: %w", err)
		}
		return &k, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read link reset key: %w", err)
	}
	if len(data) != 32 {
		return nil, fmt.Errorf("link reset key %s: %d bytes, want 32 (remove it to make a new one)", path, len(data))
	}
	var k [32]byte
	copy(k[:], data)
	return &k, nil
}

func newTransport(pc net.PacketConn, cfg Config) *quic.Transport {
	tr := &quic.Transport{Conn: pc}
	if cfg.ResetKey != nil {
		k := quic.StatelessResetKey(*cfg.ResetKey)
		tr.StatelessResetKey = &k
	}
	return tr
}

// Listener is a parent's link socket.
type Listener struct {
	tr  *quic.Transport
	ln  *quic.Listener
	log *slog.Logger
	m   *linkMetrics

	closeOnce sync.Once
	closeErr  error
}

// Listen opens the parent's UDP socket on addr ("host:port", port 0 picks
// one) and listens for children.
func Listen(addr string, cfg Config) (*Listener, error) {
	if cfg.TLS == nil {
		return nil, errors.New("linkquic: listen: no TLS config")
	}
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("linkquic: listen %s: %w", addr, err)
	}
	pc, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("linkquic: listen %s: %w", addr, err)
	}
	l := &Listener{log: cfg.logger(), m: newLinkMetrics(metrics.OrNew(cfg.Metrics))}
	l.tr = newTransport(pc, cfg)
	alpn := cfg.alpn()
	tlsConf := cfg.TLS.Clone()
	tlsConf.NextProtos = []string{alpn}
	next := tlsConf.VerifyConnection
	tlsConf.VerifyConnection = func(cs tls.ConnectionState) error {
		if next == nil {
			return nil
		}
		err := next(cs)
		if err != nil {
			l.refused(linkauth.Reason(err), err)
		}
		return err
	}
	tlsConf.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if !slices.Contains(hello.SupportedProtos, alpn) {
			err := fmt.Errorf("linkquic: peer %s offers ALPN %q, not %q%.0w", remoteOf(hello), hello.SupportedProtos, alpn, tls.AlertError(120))
			l.refused("wrong_alpn", err)
			return nil, err
		}
		return nil, nil
	}
	ln, err := l.tr.Listen(tlsConf, cfg.quic(true))
	if err != nil {
		err = errors.Join(err, l.tr.Close(), pc.Close())
		return nil, fmt.Errorf("linkquic: listen %s: %w", addr, err)
	}
	l.ln = ln
	return l, nil
}

func remoteOf(hello *tls.ClientHelloInfo) string {
	if hello.Conn != nil && hello.Conn.RemoteAddr() != nil {
		return hello.Conn.RemoteAddr().String()
	}
	return "?"
}

func (l *Listener) refused(reason string, err error) {
	if reason == "" {
		reason = "other"
	}
	l.m.handshakes.With(reason).Inc()
	l.log.Warn("link: child refused", "reason", reason, "err", err)
}

// Addr is the listening address (with the port picked for port 0).
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Accept waits for the next child whose handshake succeeded.
func (l *Listener) Accept(ctx context.Context) (*Conn, error) {
	qc, err := l.ln.Accept(ctx)
	if err != nil {
		return nil, fmt.Errorf("linkquic: accept: %w", err)
	}
	c := newConn(qc, nil, l)
	c.beatDone = make(chan struct{})
	go func() {
		defer close(c.beatDone)
		drain(qc)
	}()
	l.m.handshakes.With("ok").Inc()
	l.m.open.Inc()
	context.AfterFunc(qc.Context(), func() {
		// The close is counted before the connection leaves the open
		// gauge: one who sees it at 0 sees every close counted.
		l.m.closes.With(causeOf(context.Cause(qc.Context()))).Inc()
		l.m.open.Dec()
	})
	return c, nil
}

// Close stops listening and ends every child's connection abruptly; close
// them first (Conn.Close) to tell the children why. It is idempotent.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() {
		l.closeErr = errors.Join(l.ln.Close(), l.tr.Close(), l.tr.Conn.Close())
	})
	return l.closeErr
}

// Dial connects a child to its parent at addr ("host:port") from a new
// UDP socket. The handshake checks the parent's certificate (cfg.TLS); the
// parent's verdict on the child arrives after it, so a refused child sees
// the reason on its first read of the control stream (or Conn.Err).
func Dial(ctx context.Context, addr string, cfg Config) (*Conn, error) {
	if cfg.TLS == nil {
		return nil, errors.New("linkquic: dial: no TLS config")
	}
	ra, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("linkquic: dial %s: %w", addr, err)
	}
	tr, err := clientTransport(ra, cfg)
	if err != nil {
		return nil, fmt.Errorf("linkquic: dial %s: %w", addr, err)
	}
	tlsConf := cfg.TLS.Clone()
	tlsConf.NextProtos = []string{cfg.alpn()}
	qc, err := tr.Dial(ctx, ra, tlsConf, cfg.quic(false))
	if err != nil {
		err = fmt.Errorf("linkquic: dial %s: %w", addr, translate(err))
		return nil, errors.Join(err, tr.Close(), tr.Conn.Close())
	}
	c := newConn(qc, tr, nil)
	c.cfg = cfg
	c.parent = ra
	c.beatDone = make(chan struct{})
	go c.heartbeat(orDefault(cfg.KeepAlive, DefaultKeepAlive))
	c.hintsWG.Add(1)
	go c.readHints(tr)
	return c, nil
}

// heartbeat is the child's keepalive: a DATAGRAM every period, which the
// parent acks (keeping carrier NAT mappings) and, if it restarted with
// the same reset key, answers with a stateless reset. It ends with the
// connection.
func (c *Conn) heartbeat(period time.Duration) {
	defer close(c.beatDone)
	t := time.NewTicker(period)
	defer t.Stop()
	beat := make([]byte, heartbeatSize)
	for {
		select {
		case <-c.qc.Context().Done():
			return
		case <-t.C:
			// An error (the send queue full, the path's MTU shrunk) loses
			// one beat; the next comes a period later.
			_ = c.qc.SendDatagram(beat)
		}
	}
}

// drain discards the child's heartbeats on the parent until the
// connection ends, so they take no memory.
func drain(qc *quic.Conn) {
	for {
		if _, err := qc.ReceiveDatagram(qc.Context()); err != nil {
			return
		}
	}
}

func clientTransport(ra *net.UDPAddr, cfg Config) (*quic.Transport, error) {
	network := "udp4"
	if ra.IP.To4() == nil {
		network = "udp6"
	}
	pc, err := net.ListenUDP(network, nil)
	if err != nil {
		return nil, err
	}
	return newTransport(pc, cfg), nil
}

// Conn is one link connection, the child's or the parent's end.
type Conn struct {
	qc  *quic.Conn
	cfg Config
	l   *Listener // the parent's; nil on the child

	mu  sync.Mutex
	trs []*quic.Transport // the child's sockets, current last

	// parent is the parent's address, on the child: it does not change
	// when the child migrates, and quic-go's RemoteAddr reads the path
	// without a lock while its connection switches paths (a data race
	// under -race, seen in CI).
	parent *net.UDPAddr

	// beatDone is closed when the child's heartbeat (or the parent's
	// drain of it) has returned, which it does when the connection ends.
	beatDone chan struct{}
	// hintsWG waits for the child's hint readers, one per socket; each
	// returns when the connection ends. lastProbe (under probeMu, not mu,
	// which Migrate holds while it validates a path) is when the last
	// hint was answered with a probe.
	hintsWG   sync.WaitGroup
	probeMu   sync.Mutex
	lastProbe time.Time

	closeOnce sync.Once
	closeErr  error
}

func newConn(qc *quic.Conn, tr *quic.Transport, l *Listener) *Conn {
	c := &Conn{qc: qc, l: l}
	if tr != nil {
		c.trs = []*quic.Transport{tr}
	}
	return c
}

// Peer is the verified peer's relay name (its certificate's common name),
// "" when it sent none (a child in token mode: see VerifyBinding).
func (c *Conn) Peer() string {
	return linkauth.PeerName(c.qc.ConnectionState().TLS.PeerCertificates)
}

// Resumed reports whether the TLS session was resumed from a ticket.
func (c *Conn) Resumed() bool { return c.qc.ConnectionState().TLS.DidResume }

// Exporter is this connection's TLS exporter secret for the token binding
// (label linkauth.ExporterLabel, no context, 32 bytes); the same on both
// ends and different on every connection.
func (c *Conn) Exporter() ([]byte, error) {
	cs := c.qc.ConnectionState().TLS
	return cs.ExportKeyingMaterial(linkauth.ExporterLabel, nil, linkauth.BindingSize)
}

// Binding is what a child in token mode puts in its hello.
func (c *Conn) Binding(token []byte) ([]byte, error) {
	ex, err := c.Exporter()
	if err != nil {
		return nil, err
	}
	return linkauth.Binding(token, ex), nil
}

// VerifyBinding checks a child's hello binding on the parent:
// linkauth.ErrWrongToken when it was not made with token on this
// connection.
func (c *Conn) VerifyBinding(token, binding []byte) error {
	ex, err := c.Exporter()
	if err != nil {
		return err
	}
	return linkauth.VerifyBinding(token, ex, binding)
}

// Refuse ends a child's connection for err (CodeRefused, err's text as
// the reason), counting and logging it by linkauth.Reason on a parent.
func (c *Conn) Refuse(err error) error {
	if c.l != nil {
		c.l.refused(linkauth.Reason(err), err)
	}
	return c.Close(CodeRefused, err.Error())
}

// LocalAddr is the local address of the current path: on the child, its
// current socket's (after Migrate, the new one's).
func (c *Conn) LocalAddr() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.trs) > 0 {
		return c.trs[len(c.trs)-1].Conn.LocalAddr()
	}
	return c.qc.LocalAddr()
}

// RemoteAddr is the peer's address on the current path (on the parent,
// the child's address after it moved).
func (c *Conn) RemoteAddr() net.Addr {
	if c.parent != nil {
		return c.parent
	}
	return c.qc.RemoteAddr()
}

// Context is done when the connection has ended; Err says why.
func (c *Conn) Context() context.Context { return c.qc.Context() }

// Done is Context().Done().
func (c *Conn) Done() <-chan struct{} { return c.qc.Context().Done() }

// Err is nil while the connection is up, then why it ended, as a
// *CloseError.
func (c *Conn) Err() error {
	if c.qc.Context().Err() == nil {
		return nil
	}
	return translate(context.Cause(c.qc.Context()))
}

// OpenControl opens the control stream (the child, once).
func (c *Conn) OpenControl(ctx context.Context) (*Stream, error) {
	s, err := c.qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, fmt.Errorf("linkquic: open control stream: %w", translate(err))
	}
	return &Stream{s: s}, nil
}

// AcceptControl waits for the child's control stream (the parent).
func (c *Conn) AcceptControl(ctx context.Context) (*Stream, error) {
	s, err := c.qc.AcceptStream(ctx)
	if err != nil {
		return nil, fmt.Errorf("linkquic: accept control stream: %w", translate(err))
	}
	return &Stream{s: s}, nil
}

// OpenData opens a data stream to the child (the parent).
func (c *Conn) OpenData(ctx context.Context) (*SendStream, error) {
	s, err := c.qc.OpenUniStreamSync(ctx)
	if err != nil {
		return nil, fmt.Errorf("linkquic: open data stream: %w", translate(err))
	}
	return &SendStream{s: s}, nil
}

// AcceptData waits for the parent's next data stream (the child).
func (c *Conn) AcceptData(ctx context.Context) (*ReceiveStream, error) {
	s, err := c.qc.AcceptUniStream(ctx)
	if err != nil {
		return nil, fmt.Errorf("linkquic: accept data stream: %w", translate(err))
	}
	return &ReceiveStream{s: s}, nil
}

// Close ends the connection with code and reason (sent to the peer) and,
// on the child, closes its sockets. It is idempotent: later calls return
// the first one's result.
func (c *Conn) Close(code Code, reason string) error {
	c.closeOnce.Do(func() {
		err := c.qc.CloseWithError(quic.ApplicationErrorCode(code), reason)
		if c.beatDone != nil {
			<-c.beatDone
		}
		c.mu.Lock()
		trs := c.trs
		c.trs = nil
		c.mu.Unlock()
		c.hintsWG.Wait()
		for _, tr := range slices.Backward(trs) {
			err = errors.Join(err, tr.Close(), tr.Conn.Close())
		}
		c.closeErr = err
	})
	return c.closeErr
}

// Migrate moves the child's connection to a new local UDP socket: it
// validates the path to the parent from there (within ctx), then sends on
// it. Streams carry on. The old socket stays open until Close.
func (c *Conn) Migrate(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.trs) == 0 {
		return errors.New("linkquic: migrate: only the child's end migrates, and not once closed")
	}
	if len(c.trs) > MaxMigrations {
		return fmt.Errorf("linkquic: migrate: already moved %d times; redial", MaxMigrations)
	}
	tr, err := clientTransport(c.parent, c.cfg)
	if err != nil {
		return fmt.Errorf("linkquic: migrate: %w", err)
	}
	fail := func(err error) error {
		return fmt.Errorf("linkquic: migrate: %w", errors.Join(translate(err), tr.Close(), tr.Conn.Close()))
	}
	p, err := c.qc.AddPath(tr)
	if err != nil {
		return fail(err)
	}
	if err := p.Probe(ctx); err != nil {
		return fail(errors.Join(err, p.Close()))
	}
	if err := p.Switch(); err != nil {
		return fail(errors.Join(err, p.Close()))
	}
	c.trs = append(c.trs, tr)
	c.hintsWG.Add(1)
	go c.readHints(tr)
	return nil
}

// Stream is the bidirectional control stream.
type Stream struct{ s *quic.Stream }

func (s *Stream) Read(p []byte) (int, error) {
	n, err := s.s.Read(p)
	return n, translateIO(err)
}

func (s *Stream) Write(p []byte) (int, error) {
	n, err := s.s.Write(p)
	return n, translateIO(err)
}

// Close ends the sending side (the peer reads io.EOF after the data).
func (s *Stream) Close() error { return translateIO(s.s.Close()) }

// SetReadDeadline and SetWriteDeadline are net.Conn's.
func (s *Stream) SetReadDeadline(t time.Time) error  { return s.s.SetReadDeadline(t) }
func (s *Stream) SetWriteDeadline(t time.Time) error { return s.s.SetWriteDeadline(t) }

// SendStream is the parent's end of a data stream.
type SendStream struct{ s *quic.SendStream }

func (s *SendStream) Write(p []byte) (int, error) {
	n, err := s.s.Write(p)
	return n, translateIO(err)
}

// Close ends the stream after the data written.
func (s *SendStream) Close() error { return translateIO(s.s.Close()) }

// SetWriteDeadline is net.Conn's.
func (s *SendStream) SetWriteDeadline(t time.Time) error { return s.s.SetWriteDeadline(t) }

// ReceiveStream is the child's end of a data stream.
type ReceiveStream struct{ s *quic.ReceiveStream }

func (s *ReceiveStream) Read(p []byte) (int, error) {
	n, err := s.s.Read(p)
	return n, translateIO(err)
}

// SetReadDeadline is net.Conn's.
func (s *ReceiveStream) SetReadDeadline(t time.Time) error { return s.s.SetReadDeadline(t) }

// CloseError is why a link connection ended.
type CloseError struct {
	// Cause: local or remote (an application close: Code and Reason
	// say why), idle_timeout, handshake_timeout, stateless_reset (the
	// peer restarted), tls (the handshake failed: Reason names the
	// alert), transport (a QUIC error).
	Cause  string
	Code   Code
	Reason string
	err    error
}

func (e *CloseError) Error() string {
	switch e.Cause {
	case "local", "remote":
		if e.Reason == "" {
			return fmt.Sprintf("link closed (%s): %s", e.Cause, e.Code)
		}
		return fmt.Sprintf("link closed (%s): %s: %s", e.Cause, e.Code, e.Reason)
	case "tls":
		return "link handshake failed: " + e.Reason
	}
	return fmt.Sprintf("link closed: %s: %v", e.Cause, e.err)
}

func (e *CloseError) Unwrap() error { return e.err }

// Timeout reports whether the link died of silence.
func (e *CloseError) Timeout() bool {
	return e.Cause == "idle_timeout" || e.Cause == "handshake_timeout"
}

// alertReasons says what each TLS alert a peer sends means on this link.
var alertReasons = map[uint8]string{
	42:  "bad certificate",
	45:  "our certificate has expired or is not valid yet (expired)",
	46:  "our public key is not pinned there (unknown_pin)",
	48:  "our certificate is not signed by its site CA (bad_ca)",
	116: "it requires a certificate and we sent none (no_certificate)",
	120: "it does not speak " + ALPN + " (wrong_alpn)",
}

func translate(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := errors.AsType[*CloseError](err); ok {
		return err
	}
	if ae, ok := errors.AsType[*quic.ApplicationError](err); ok {
		cause := "local"
		if ae.Remote {
			cause = "remote"
		}
		return &CloseError{Cause: cause, Code: Code(ae.ErrorCode), Reason: ae.ErrorMessage, err: err}
	}
	if _, ok := errors.AsType[*quic.IdleTimeoutError](err); ok {
		return &CloseError{Cause: "idle_timeout", err: err}
	}
	if _, ok := errors.AsType[*quic.HandshakeTimeoutError](err); ok {
		return &CloseError{Cause: "handshake_timeout", err: err}
	}
	if _, ok := errors.AsType[*quic.StatelessResetError](err); ok {
		return &CloseError{Cause: "stateless_reset", err: err}
	}
	if te, ok := errors.AsType[*quic.TransportError](err); ok {
		if te.ErrorCode.IsCryptoError() {
			alert := uint8(te.ErrorCode - 0x100)
			reason := err.Error()
			if te.Remote {
				if r, ok := alertReasons[alert]; ok {
					reason = "the peer refused us: " + r
				} else {
					reason = "the peer refused us: " + te.ErrorCode.Message()
				}
			} else {
				reason = "we refused the peer: " + reason
			}
			return &CloseError{Cause: "tls", Reason: reason, err: err}
		}
		return &CloseError{Cause: "transport", Reason: te.ErrorMessage, err: err}
	}
	return err
}

func translateIO(err error) error {
	if err == nil || errors.Is(err, io.EOF) {
		return err
	}
	if _, ok := errors.AsType[*quic.StreamError](err); ok {
		return err
	}
	return translate(err)
}

func causeOf(err error) string {
	if ce, ok := errors.AsType[*CloseError](translate(err)); ok {
		return ce.Cause
	}
	return "other"
}
