package link

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/broadcast"
	"github.com/pushrelay/pushrelay/relay/linkauth"
	"github.com/pushrelay/pushrelay/relay/linkproto"
	"github.com/pushrelay/pushrelay/relay/linkquic"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/store"
)

// Ingester is where a child puts the messages its parent sends: the hub.
type Ingester interface {
	Ingest(ctx context.Context, ms []push.Message) ([]relay.Result, error)
}

// ChildConfig configures a Child. Zero values take the defaults in
// parentheses.
type ChildConfig struct {
	// Addr is the parent's link address, host:port (upstream
	// quic://host:port), or several, comma-separated: the members of a
	// parent site, one of which (its holder) takes children at a time.
	// A failed connect moves to the next address at once, the backoff
	// counted only once all of them failed; a restart hint from another
	// of them (the site's new holder announcing itself) moves the link
	// there at once.
	Addr string
	// Name is this relay's name in HELLO (1 to 64 bytes); in mutual TLS
	// its certificate must name the same.
	Name string
	// Credentials are this relay's link keys (linkauth.Load).
	Credentials *linkauth.Credentials
	// Store holds the channels (with the parent's endpoints) and the
	// unregisters still to be sent: the relay's *store.Store, or in a
	// site the site's log in front of it (relay/site.Store), so the
	// member that holds the link next continues from the same outbox.
	Store ChildStore
	// RequestTimeout bounds a register or unregister over the link,
	// waiting for the link to come up included (5s).
	RequestTimeout time.Duration
	// BackoffMin and BackoffMax bound the jittered exponential backoff
	// between connects (500ms, 30s).
	BackoffMin, BackoffMax time.Duration
	// CreditBytes and CreditMessages are the window the child grants the
	// parent beyond what it has made durable: UPDATE payload bytes (8 MiB)
	// and messages (32768). With small messages the messages bind first;
	// 4096 halved the drain of a backlog, and 16384 (4 MiB) left the
	// child's commits a third smaller (more fsyncs per message) than
	// these. They bound the duplicates after a break, which the child's
	// origin keys drop, and what the child may have to buffer.
	CreditBytes, CreditMessages int
	// KeepAlive and IdleTimeout are the transport's (linkquic defaults).
	KeepAlive, IdleTimeout time.Duration
	// PathCheck is how often the child asks the kernel which local
	// address its route to the parent takes now (1s); when it changed,
	// the connection migrates (see watchPath).
	PathCheck time.Duration
	// routeSource is the local address the route to the parent takes
	// (routeSource; tests replace it).
	routeSource func(net.Addr) netip.Addr
	// Broadcasts, when set, keeps the broadcast versions the parent sends
	// (broadcast.Registry), under the source BroadcastSource.
	Broadcasts BroadcastSetter

	Logger  *slog.Logger
	Metrics *metrics.Registry
	// Shared, if set, are the metrics this child counts in, registered
	// before (NewChildMetrics); Metrics is not used then.
	Shared *ChildMetrics
}

// ChildStore is what a Child reads and writes: *store.Store, or a site's
// store (relay/site.Store, whose writes go through the site's log).
type ChildStore interface {
	Channel(u push.UAID, id push.ChannelID) (store.Channel, bool, error)
	EachChannel(fn func(u push.UAID, id push.ChannelID)) error
	Device(u push.UAID) (store.Device, bool, error)
	DeleteDevice(ctx context.Context, u push.UAID) error
	UnregisterLater(ctx context.Context, u push.UAID, id push.ChannelID, up push.UAID) (bool, error)
	PendingUnregisters(afterSeq uint64, limit int) ([]store.PendingUnregister, error)
	UnregisterSent(ctx context.Context, seqs ...uint64) (int, error)
}

var _ ChildStore = (*store.Store)(nil)

// BroadcastSetter is where a child keeps its parent's broadcast versions:
// broadcast.Registry.
type BroadcastSetter interface {
	Versions() map[string]string
	Set(ctx context.Context, source string, versions map[string]string) (map[string]string, error)
}

// BroadcastSource is the source the parent's versions are set under
// (pushrelay_broadcast_changes_total{source="parent"}).
const BroadcastSource = "parent"

// maxUpdate is the largest UPDATE payload a child accepts.
const maxUpdate = 256 << 10

func (c *ChildConfig) setDefaults() {
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 5 * time.Second
	}
	if c.BackoffMin <= 0 {
		c.BackoffMin = 500 * time.Millisecond
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = 30 * time.Second
	}
	c.BackoffMax = max(c.BackoffMax, c.BackoffMin)
	if c.CreditBytes <= 0 {
		c.CreditBytes = 8 << 20
	}
	c.CreditBytes = max(c.CreditBytes, maxUpdate)
	if c.CreditMessages <= 0 {
		c.CreditMessages = 32768
	}
	c.CreditMessages = max(c.CreditMessages, linkproto.MaxUpdateMessages)
	if c.PathCheck <= 0 {
		c.PathCheck = time.Second
	}
	if c.routeSource == nil {
		c.routeSource = routeSource
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Child is a child relay's end of the link: its relay.Endpoints (registers
// and unregisters travel to the parent) and, while Run runs, the one
// connection that brings the parent's messages in.
type Child struct {
	cfg ChildConfig
	m   *childMetrics
	tls *tls.Config

	reqID     atomic.Uint64
	unregKick chan struct{}

	mu sync.Mutex
	// cur is the connection up now, nil while down; up is closed when
	// one comes up (and replaced when it goes down).
	cur     *childConn
	up      chan struct{}
	since   time.Time
	lastErr string
	// resume is the last sequence acked, carried to the next HELLO.
	resume uint64
	parent string
	// addrs are the parent's addresses (ChildConfig.Addr), ai the one
	// dialed now; hop is set when a hint from addrs[ai] moved the link
	// there (redial at once), hopped the last time it did, wasUp when
	// the last connection got its WELCOME.
	addrs  []string
	ai     int
	hop    bool
	hopped time.Time
	wasUp  bool
}

// ErrNotConnected: a register or unregister found the link down for its
// whole timeout.
var ErrNotConnected = errors.New("link: parent not connected")

// NewChild makes a Child; Run connects it.
func NewChild(cfg ChildConfig) (*Child, error) {
	if cfg.Store == nil || cfg.Credentials == nil {
		return nil, errors.New("link: Store and Credentials are required")
	}
	if len(cfg.Name) == 0 || len(cfg.Name) > linkproto.MaxNameLen {
		return nil, fmt.Errorf("link: relay name %q must be 1 to %d bytes", cfg.Name, linkproto.MaxNameLen)
	}
	if cfg.Addr == "" {
		return nil, errors.New("link: parent address is empty")
	}
	cfg.setDefaults()
	var m *childMetrics
	if cfg.Shared != nil {
		m = cfg.Shared.m
	} else {
		m = newChildMetrics(metrics.OrNew(cfg.Metrics))
	}
	c := &Child{cfg: cfg, m: m, tls: cfg.Credentials.ClientTLS(),
		unregKick: make(chan struct{}, 1), up: make(chan struct{})}
	for a := range strings.SplitSeq(cfg.Addr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			c.addrs = append(c.addrs, a)
		}
	}
	if len(c.addrs) == 0 {
		return nil, errors.New("link: parent address is empty")
	}
	return c, nil
}

// addr is the parent address dialed now.
func (c *Child) addr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.addrs[c.ai]
}

// hopTo moves the link to the parent address from, when it is one of
// the configured ones other than the one dialed now (a parent site's
// new holder announced itself with the restart hint): the connection
// closes and the link redials there at once. At most once a second.
func (c *Child) hopTo(from net.Addr) {
	ua, ok := from.(*net.UDPAddr)
	if !ok || len(c.addrs) < 2 {
		return
	}
	fp := ua.AddrPort()
	fp = netip.AddrPortFrom(fp.Addr().Unmap(), fp.Port())
	c.mu.Lock()
	j := -1
	for i, a := range c.addrs {
		if ap, err := netip.ParseAddrPort(a); err == nil && netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()) == fp {
			j = i
		} else if err != nil {
			if ra, err := net.ResolveUDPAddr("udp", a); err == nil {
				rp := ra.AddrPort()
				if netip.AddrPortFrom(rp.Addr().Unmap(), rp.Port()) == fp {
					j = i
				}
			}
		}
	}
	now := time.Now()
	if j < 0 || j == c.ai || now.Sub(c.hopped) < time.Second {
		c.mu.Unlock()
		return
	}
	c.ai, c.hop, c.hopped = j, true, now
	cc := c.cur
	c.mu.Unlock()
	c.cfg.Logger.Info("another of the parent's addresses announced itself; moving the link there", "addr", c.addrs[j])
	if cc != nil {
		cc.hop()
	}
}

// KeepEndpoints makes the hub store the parent's endpoint with each
// channel (relay.EndpointKeeper).
func (c *Child) KeepEndpoints() bool { return true }

// Addr is the parent's address dialed now.
func (c *Child) Addr() string { return c.addr() }

// ChildStatus is the link's state for /status: the parent's name (from
// its last WELCOME) and address, whether the link is up and since when,
// the last sequence acked, the last error.
type ChildStatus struct {
	Parent    string
	Addr      string
	Connected bool
	Since     string
	Acked     uint64
	LastError string
}

// Status reports the link's state.
func (c *Child) Status() ChildStatus {
	c.mu.Lock()
	st := ChildStatus{Parent: c.parent, Addr: c.addrs[c.ai], Connected: c.cur != nil, LastError: c.lastErr, Acked: c.resume}
	if c.cur != nil {
		st.Addr = c.cur.addr
	}
	cc := c.cur
	if cc != nil {
		st.Since = c.since.UTC().Format(time.RFC3339)
	}
	c.mu.Unlock()
	if cc != nil {
		st.Acked = cc.ackedSeq()
	}
	return st
}

// Mint registers r's channel with the parent, which mints the endpoint at
// the top of the chain (relay.Endpoints). A channel already stored here is
// answered with its stored endpoint.
func (c *Child) Mint(ctx context.Context, r relay.Registration) (string, error) {
	if ch, ok, err := c.cfg.Store.Channel(r.UAID, r.Channel); err != nil {
		return "", fmt.Errorf("link: read channel: %w", err)
	} else if ok && ch.Endpoint != "" {
		return ch.Endpoint, nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	reg := &linkproto.Register{UAID: r.UAID, Channel: r.Channel, SimplePush: r.SimplePush, Key: r.Key}
	a, err := c.request(ctx, func(id uint64) linkproto.Frame { reg.ID = id; return reg })
	if err != nil {
		c.m.registers.With("error").Inc()
		return "", err
	}
	if a.status != linkproto.StatusOK || a.endpoint == "" {
		c.m.registers.With("refused").Inc()
		return "", fmt.Errorf("link: the parent answered the register with status %d", a.status)
	}
	c.m.registers.With("ok").Inc()
	return a.endpoint, nil
}

// Abandon unregisters r's channel at the parent, unless the channel is
// stored here. A failure is logged.
func (c *Child) Abandon(ctx context.Context, r relay.Registration) {
	if _, ok, err := c.cfg.Store.Channel(r.UAID, r.Channel); err != nil || ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	un := &linkproto.Unregister{UAID: r.UAID, Channel: r.Channel}
	if _, err := c.request(ctx, func(id uint64) linkproto.Frame { un.ID = id; return un }); err != nil {
		c.cfg.Logger.Warn("abandoned channel not unregistered at the parent", "uaid", r.UAID, "err", err)
	}
}

// Unregister removes a device's channel here and keeps its unregister to
// be sent to the parent, in one commit (store.UnregisterLater: an outbox
// entry and a tombstone); the sender passes it on while the link is up
// (relay.Unregisterer).
func (c *Child) Unregister(ctx context.Context, u push.UAID, ch push.ChannelID) error {
	added, err := c.cfg.Store.UnregisterLater(ctx, u, ch, u)
	if err != nil {
		return err
	}
	if added {
		kick(c.unregKick)
	}
	return nil
}

// KickUnregisters makes the sender look at the outbox now: an unregister
// was added to it elsewhere (in a site, by another member, through the
// site's log).
func (c *Child) KickUnregisters() { kick(c.unregKick) }

func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// answer is a REGISTERED or UNREGISTERED.
type answer struct {
	status   linkproto.Status
	endpoint string
}

// request sends the frame build makes with a new request id once the link
// is up, and waits for its answer, all within ctx.
func (c *Child) request(ctx context.Context, build func(id uint64) linkproto.Frame) (answer, error) {
	cc, err := c.waitUp(ctx)
	if err != nil {
		return answer{}, err
	}
	id := c.reqID.Add(1)
	ch := make(chan answer, 1)
	cc.mu.Lock()
	cc.pending[id] = ch
	cc.mu.Unlock()
	defer func() {
		cc.mu.Lock()
		delete(cc.pending, id)
		cc.mu.Unlock()
	}()
	if err := cc.ctl.send(build(id)); err != nil {
		return answer{}, fmt.Errorf("link: send request: %w", readErr(cc.conn, err))
	}
	select {
	case a := <-ch:
		return a, nil
	case <-ctx.Done():
		return answer{}, fmt.Errorf("link: no answer from the parent: %w", ctx.Err())
	case <-cc.conn.Done():
		return answer{}, fmt.Errorf("link: connection lost before the answer: %w", cc.conn.Err())
	}
}

// waitUp returns the connection up now, waiting for one within ctx.
func (c *Child) waitUp(ctx context.Context) (*childConn, error) {
	for {
		c.mu.Lock()
		cc, up := c.cur, c.up
		c.mu.Unlock()
		if cc != nil {
			return cc, nil
		}
		select {
		case <-up:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (%w)", ErrNotConnected, ctx.Err())
		}
	}
}

// Run keeps the link to the parent up, ingesting what it sends into in,
// until ctx ends; it reconnects after a jittered exponential backoff.
func (c *Child) Run(ctx context.Context, in Ingester) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { c.sendUnregisters(ctx) })
	backoff := c.cfg.BackoffMin
	failed := 0 // addresses failed in a row
	for {
		start := time.Now()
		addr := c.addr()
		err := c.connect(ctx, in)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > c.cfg.BackoffMax {
			backoff = c.cfg.BackoffMin
		}
		c.mu.Lock()
		hop, up := c.hop, c.wasUp
		c.hop, c.wasUp = false, false
		if up {
			failed = 0
		}
		failed++
		if !hop && len(c.addrs) > 1 {
			c.ai = (c.ai + 1) % len(c.addrs)
		}
		c.mu.Unlock()
		wait := jitter(backoff)
		if ce, ok := errors.AsType[*linkquic.CloseError](err); ok && ce.Cause == "stateless_reset" && time.Since(start) >= c.cfg.BackoffMin {
			// The parent answered with our reset key: it restarted and is
			// listening again. Redial now (a little jitter spreads its
			// children), not after the backoff.
			wait, backoff = jitter(resetRedial), c.cfg.BackoffMin
		}
		if hop || (len(c.addrs) > 1 && failed < len(c.addrs)) {
			// Another of a parent site's members: try it now; the
			// backoff once every address failed.
			wait = jitter(resetRedial)
		}
		c.mu.Lock()
		c.lastErr = err.Error()
		c.mu.Unlock()
		c.cfg.Logger.Warn("link to the parent down; reconnecting", "parent", addr, "err", err, "in", wait, "next", c.addr())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		if !hop && failed >= len(c.addrs) {
			backoff = min(backoff*2, c.cfg.BackoffMax)
			failed = 0
		}
	}
}

// resetRedial is the wait (jittered to half of it) before redialing a
// parent that ended the link with a stateless reset: it has restarted.
const resetRedial = 100 * time.Millisecond

// onHint counts and logs what became of a non-QUIC packet on the link's
// socket (linkquic's restart hint).
func (c *Child) onHint(from net.Addr, result string) {
	c.m.hints.With(result).Inc()
	if result == linkquic.HintProbed {
		// At most one a second (linkquic.HintProbeInterval).
		c.cfg.Logger.Info("the parent announced a restart; probing it", "parent", c.addr(), "from", from)
		return
	}
	if result == linkquic.HintWrongAddr {
		c.hopTo(from)
	}
	c.cfg.Logger.Debug("restart hint ignored", "from", from, "result", result)
}

// connect runs one connection, from the dial until it ends.
func (c *Child) connect(ctx context.Context, in Ingester) (err error) {
	hctx, cancel := context.WithTimeout(ctx, 2*c.cfg.RequestTimeout)
	defer cancel()
	addr := c.addr()
	conn, err := linkquic.Dial(hctx, addr, linkquic.Config{TLS: c.tls, KeepAlive: c.cfg.KeepAlive,
		IdleTimeout: c.cfg.IdleTimeout, Logger: c.cfg.Logger, OnHint: c.onHint})
	if err != nil {
		c.m.connects.With("error").Inc()
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(linkquic.Code(linkproto.CodeShutdown), "shutting down")
	stop := context.AfterFunc(ctx, func() { conn.Close(linkquic.Code(linkproto.CodeShutdown), "shutting down") })
	defer stop()
	// hop closes the connection from the hint reader (hopTo), which
	// must not block on it: the close waits for that reader.
	hopCtx, hop := context.WithCancel(ctx)
	defer hop()
	stopHop := context.AfterFunc(hopCtx, func() {
		if ctx.Err() == nil {
			conn.Close(linkquic.Code(linkproto.CodeShutdown), "moving to another of the parent's addresses")
		}
	})
	defer stopHop()
	ctl, err := conn.OpenControl(hctx)
	if err != nil {
		c.m.connects.With("error").Inc()
		return fmt.Errorf("open control stream: %w", readErr(conn, err))
	}
	var d linkproto.Digest
	if err := c.cfg.Store.EachChannel(func(u push.UAID, id push.ChannelID) { d.Add(u, id) }); err != nil {
		return fmt.Errorf("digest: %w", err)
	}
	c.mu.Lock()
	resume := c.resume
	c.mu.Unlock()
	hello := &linkproto.Hello{Versions: []uint64{linkproto.Version}, Name: c.cfg.Name, Resume: resume,
		MaxUpdate: maxUpdate, Digest: d}
	if c.cfg.Credentials.TokenMode() {
		if hello.Auth, err = conn.Binding(c.cfg.Credentials.Token); err != nil {
			return fmt.Errorf("token binding: %w", err)
		}
	}
	f := newFramer(ctl, linkproto.StreamControl)
	if err := f.send(hello); err != nil {
		c.m.connects.With("error").Inc()
		return fmt.Errorf("send hello: %w", readErr(conn, err))
	}
	ctl.SetReadDeadline(time.Now().Add(2 * c.cfg.RequestTimeout))
	fr, err := f.next()
	if err != nil {
		c.m.connects.With("error").Inc()
		err = readErr(conn, err)
		var ce *linkquic.CloseError
		if errors.As(err, &ce) && ce.Cause == "remote" {
			c.cfg.Logger.Error("the parent refused this relay", "parent", addr, "code", linkproto.Code(ce.Code), "reason", ce.Reason)
		}
		return fmt.Errorf("read welcome: %w", err)
	}
	ctl.SetReadDeadline(time.Time{})
	var w *linkproto.Welcome
	switch fr := fr.(type) {
	case *linkproto.Refuse:
		c.m.connects.With("refused").Inc()
		if fr.Code == linkproto.CodeBusy && len(c.addrs) > 1 {
			// A parent site's member that does not take children now.
			c.cfg.Logger.Info("the parent's member does not take children now; trying the next address", "parent", addr, "reason", fr.Reason)
		} else {
			c.cfg.Logger.Error("the parent refused this relay", "parent", addr, "code", fr.Code, "reason", fr.Reason)
		}
		return fmt.Errorf("refused by the parent: %v: %s", fr.Code, fr.Reason)
	case *linkproto.Welcome:
		w = fr
	default:
		closeFor(conn, fmt.Errorf("%v before WELCOME", fr.Type()), linkproto.CodeProtocol)
		return fmt.Errorf("protocol: %v before WELCOME", fr.Type())
	}
	c.m.connects.With("ok").Inc()
	var fix *resyncFix
	if w.Digest != d {
		c.m.digestMismatches.Inc()
		c.cfg.Logger.Warn("the parent's digest of this relay's channels differs from this relay's",
			"ours", d.String(), "parent", w.Digest.String(), "resync", w.Resync)
	}
	if w.Resync {
		if fix, err = c.readResync(f); err != nil {
			closeFor(conn, err, linkproto.CodeProtocol)
			return fmt.Errorf("resync: %w", readErr(conn, err))
		}
	}
	cc := &childConn{c: c, conn: conn, ctl: f, hop: hop, addr: addr, pending: map[uint64]chan answer{},
		next: w.Next, done: map[uint64]struct{}{},
		grantedBytes: uint64(c.cfg.CreditBytes), granted: uint64(c.cfg.CreditMessages)}
	cc.acked = w.Next - 1
	if err := f.send(&linkproto.Credit{Bytes: uint64(c.cfg.CreditBytes), Messages: uint64(c.cfg.CreditMessages)}); err != nil {
		return fmt.Errorf("send credit: %w", readErr(conn, err))
	}
	c.mu.Lock()
	c.cur, c.since, c.lastErr, c.parent, c.wasUp = cc, time.Now(), "", w.Name, true
	close(c.up)
	c.mu.Unlock()
	c.m.connected.Set(1)
	c.cfg.Logger.Info("link to the parent up", "parent", w.Name, "addr", addr, "next", w.Next, "resumed_tls", conn.Resumed())
	kick(c.unregKick)
	defer func() {
		c.m.connected.Set(0)
		c.mu.Lock()
		c.cur, c.up = nil, make(chan struct{})
		c.resume = max(c.resume, cc.ackedSeq())
		c.mu.Unlock()
	}()

	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { cc.acceptData(ctx, in, &wg) })
	wg.Go(func() { c.watchPath(ctx, conn) })
	if fix != nil {
		wg.Go(func() { c.resync(ctx, fix) })
	}
	sem := make(chan struct{}, 16)
	for {
		fr, err := f.next()
		if err != nil {
			err = readErr(conn, err)
			if !errors.Is(err, context.Canceled) {
				var ce *linkquic.CloseError
				if !errors.As(err, &ce) {
					closeFor(conn, err, linkproto.CodeNoError)
				}
			}
			return err
		}
		switch fr := fr.(type) {
		case *linkproto.Registered:
			cc.answer(fr.ID, answer{status: fr.Status, endpoint: fr.Endpoint})
		case *linkproto.Unregistered:
			cc.answer(fr.ID, answer{status: fr.Status})
		case *linkproto.Broadcast:
			c.setBroadcasts(ctx, fr.Versions)
		case *linkproto.Forget:
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				c.forget(ctx, cc, in, fr)
			})
		case *linkproto.Resync:
			// Read right after WELCOME (readResync); ignored later.
		case *linkproto.GoAway:
			c.cfg.Logger.Info("the parent is leaving", "code", fr.Code, "reason", fr.Reason)
			conn.Close(linkquic.Code(linkproto.CodeNoError), "goaway")
			return fmt.Errorf("goaway: %v: %s", fr.Code, fr.Reason)
		default:
			err := fmt.Errorf("%v from the parent on the control stream", fr.Type())
			closeFor(conn, err, linkproto.CodeProtocol)
			return err
		}
	}
}

// watchPath migrates the connection (linkquic's Conn.Migrate: a new
// socket, the path validated, every stream kept) when the local address
// of the route to the parent changes: a new backhaul address, a DHCP
// renewal, a failover to another uplink. It asks every PathCheck, which
// costs a socket and no packet. The parent would follow a changed source
// address on its own (QUIC's passive migration), but only if packets from
// the old socket still leave; moving to a fresh socket on the new route
// does not depend on that. A migration that fails closes the connection,
// and Run redials; a path that dies without any address changing is left
// to the idle timeout (link_idle_timeout), then the redial.
func (c *Child) watchPath(ctx context.Context, conn *linkquic.Conn) {
	from := c.cfg.routeSource(conn.RemoteAddr())
	t := time.NewTicker(c.cfg.PathCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-conn.Done():
			return
		case <-t.C:
		}
		now := c.cfg.routeSource(conn.RemoteAddr())
		if !now.IsValid() || now == from {
			// No route at all (an interface down) leaves the path alone:
			// it may come back with the same address.
			continue
		}
		mctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
		err := conn.Migrate(mctx)
		cancel()
		if err != nil {
			c.m.migrations.With("error").Inc()
			c.cfg.Logger.Warn("the route to the parent changed and the link could not move to it; reconnecting",
				"from", from, "to", now, "err", err)
			conn.Close(linkquic.Code(linkproto.CodeNoError), "migration failed")
			return
		}
		c.m.migrations.With("ok").Inc()
		c.cfg.Logger.Info("the route to the parent changed; the link moved to it", "from", from, "to", now,
			"local", conn.LocalAddr())
		from = now
	}
}

// routeSource is the local address the kernel's route to addr (UDP)
// takes: a connected UDP socket, which sends nothing. The zero Addr when
// there is no route.
func routeSource(addr net.Addr) netip.Addr {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return netip.Addr{}
	}
	uc, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		return netip.Addr{}
	}
	defer uc.Close()
	return uc.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
}

// childConn is one connection's state on the child.
type childConn struct {
	c    *Child
	conn *linkquic.Conn
	ctl  *framer
	hop  context.CancelFunc // closes conn without waiting (hopTo)
	addr string             // the parent address dialed

	mu      sync.Mutex
	pending map[uint64]chan answer
	// next is the lowest sequence not yet durable, done those above it
	// that are, acked the highest sequence below which all are.
	next                    uint64
	done                    map[uint64]struct{}
	acked                   uint64
	consumedBytes, consumed uint64
	// ingestedBytes and ingested are the UPDATEs' bytes and messages
	// durable here; the credit granted is the window beyond them.
	ingestedBytes, ingested uint64
	// grantedBytes and granted are the credit granted so far.
	grantedBytes, granted uint64
}

func (cc *childConn) answer(id uint64, a answer) {
	cc.mu.Lock()
	ch := cc.pending[id]
	cc.mu.Unlock()
	if ch != nil {
		select {
		case ch <- a:
		default:
		}
	}
}

func (cc *childConn) ackedSeq() uint64 {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.acked
}

// acceptData reads every data stream the parent opens.
func (cc *childConn) acceptData(ctx context.Context, in Ingester, wg *sync.WaitGroup) {
	for {
		s, err := cc.conn.AcceptData(ctx)
		if err != nil {
			return
		}
		wg.Go(func() { cc.readData(ctx, s, in) })
	}
}

// ingestQueue bounds the UPDATEs one data stream holds read and not yet
// ingested (the credit bounds them too), and ingestMessages the messages
// one Ingest takes from that queue.
const (
	ingestQueue    = 64
	ingestMessages = 4 * linkproto.MaxUpdateMessages
)

// inFrame is an UPDATE read and not yet durable.
type inFrame struct {
	u    linkproto.Update
	size uint64
}

// readData reads the UPDATEs of one data stream and hands them, in
// order, to the stream's ingester. Reading goes on while a commit is
// written, so the frames that arrive during one commit go into the next
// together instead of one commit (one fsync) each.
func (cc *childConn) readData(ctx context.Context, s *linkquic.ReceiveStream, in Ingester) {
	f := &framer{s: recvOnly{s}, rd: linkproto.Reader{Stream: linkproto.StreamData, MaxUpdate: maxUpdate}, buf: make([]byte, 32<<10)}
	q := make(chan *inFrame, ingestQueue)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		cc.ingestData(ctx, q, in)
	}()
	defer func() {
		close(q)
		<-stopped
	}()
	for {
		raw, err := f.nextRaw()
		if err != nil {
			if cc.conn.Err() == nil && !errors.Is(err, context.Canceled) {
				closeFor(cc.conn, fmt.Errorf("data stream: %w", err), linkproto.CodeNoError)
			}
			return
		}
		fr := &inFrame{size: uint64(len(raw.Payload))}
		if err := linkproto.DecodeUpdate(&fr.u, raw.Payload); err != nil {
			closeFor(cc.conn, fmt.Errorf("update: %w", err), linkproto.CodeNoError)
			return
		}
		if err := cc.received(fr.size, len(fr.u.Messages)); err != nil {
			closeFor(cc.conn, err, linkproto.CodeFlowControl)
			return
		}
		select {
		case q <- fr:
		case <-stopped:
			return
		}
	}
}

// ingestData ingests the frames q brings in their order: each time, all
// that wait (up to ingestMessages) in one Ingest, one commit; then it acks
// them. It returns when q is closed or the connection fails.
func (cc *childConn) ingestData(ctx context.Context, q <-chan *inFrame, in Ingester) {
	m := cc.c.m
	var batch []*inFrame
	var ms []push.Message
	for {
		fr, ok := <-q
		if !ok {
			return
		}
		batch = append(batch[:0], fr)
		ms = append(ms[:0], fr.u.Messages...)
	more:
		for len(ms) < ingestMessages {
			select {
			case fr, ok := <-q:
				if !ok {
					break more
				}
				batch = append(batch, fr)
				ms = append(ms, fr.u.Messages...)
			default:
				break more
			}
		}
		res, err := in.Ingest(ctx, ms)
		if err != nil {
			closeFor(cc.conn, fmt.Errorf("ingest: %w", err), linkproto.CodeInternal)
			return
		}
		for _, r := range res {
			switch {
			case r.Err == nil && r.Duplicate:
				m.messages.With("duplicate").Inc()
			case r.Err == nil:
				m.messages.With("stored").Inc()
			case errors.Is(r.Err, relay.ErrNoSubscription):
				m.messages.With("dropped_unregistered").Inc()
			default:
				// Not durable: no ack; the parent sends it again on the
				// next connection.
				m.messages.With("not_stored").Inc()
				closeFor(cc.conn, fmt.Errorf("ingest: %w", r.Err), linkproto.CodeInternal)
				return
			}
		}
		if err := cc.durable(batch); err != nil {
			closeFor(cc.conn, err, linkproto.CodeNoError)
			return
		}
		clear(ms)
		clear(batch)
	}
}

// received checks an UPDATE against the credit granted.
func (cc *childConn) received(size uint64, n int) error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.consumedBytes += size
	cc.consumed += uint64(n)
	if cc.consumedBytes > cc.grantedBytes || cc.consumed > cc.granted {
		return fmt.Errorf("the parent sent %d bytes, %d messages beyond the credit of %d, %d",
			cc.consumedBytes, cc.consumed, cc.grantedBytes, cc.granted)
	}
	return nil
}

// durable records that the frames fs are ingested and sends the ACK and
// the raised CREDIT it allows.
func (cc *childConn) durable(fs []*inFrame) error {
	cc.mu.Lock()
	for _, f := range fs {
		if f.u.Seq >= cc.next {
			cc.done[f.u.Seq] = struct{}{}
		}
		cc.ingestedBytes += f.size
		cc.ingested += uint64(len(f.u.Messages))
	}
	advanced := false
	for {
		if _, ok := cc.done[cc.next]; !ok {
			break
		}
		delete(cc.done, cc.next)
		cc.acked = cc.next
		cc.next++
		advanced = true
	}
	ack := cc.acked
	// The window is granted beyond what is durable here, not what was
	// read: the frames queued for the ingester are inside it.
	credit := linkproto.Credit{Bytes: cc.ingestedBytes + uint64(cc.c.cfg.CreditBytes), Messages: cc.ingested + uint64(cc.c.cfg.CreditMessages)}
	cc.grantedBytes, cc.granted = max(cc.grantedBytes, credit.Bytes), max(cc.granted, credit.Messages)
	cc.mu.Unlock()
	if !advanced {
		return nil
	}
	if err := cc.ctl.send(&linkproto.Ack{Seq: ack}); err != nil {
		return fmt.Errorf("send ack: %w", err)
	}
	cc.c.m.acks.Inc()
	if err := cc.ctl.send(&credit); err != nil {
		return fmt.Errorf("send credit: %w", err)
	}
	return nil
}

// recvOnly makes a data stream a framer's stream; nothing is written.
type recvOnly struct{ *linkquic.ReceiveStream }

func (recvOnly) Write([]byte) (int, error)          { return 0, errors.New("link: data streams are one-way") }
func (recvOnly) SetWriteDeadline(t time.Time) error { return nil }

// unregisterBatch is how many pending unregisters the sender reads at once.
const unregisterBatch = 100

// sendUnregisters passes the pending unregisters to the parent, oldest
// first, whenever the link is up: at each connect, when Unregister adds
// one, and after a failure with the backoff.
func (c *Child) sendUnregisters(ctx context.Context) {
	backoff := c.cfg.BackoffMin
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.unregKick:
		case <-retry:
		}
		retry = nil
		for {
			more, err := c.sendPendingUnregisters(ctx)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				c.cfg.Logger.Info("unregisters not sent to the parent yet", "err", err)
				retry = time.After(jitter(backoff))
				backoff = min(backoff*2, c.cfg.BackoffMax)
				break
			}
			backoff = c.cfg.BackoffMin
			if !more {
				break
			}
		}
	}
}

func (c *Child) sendPendingUnregisters(ctx context.Context) (bool, error) {
	ps, err := c.cfg.Store.PendingUnregisters(0, unregisterBatch)
	if err != nil {
		return false, fmt.Errorf("read pending unregisters: %w", err)
	}
	for _, p := range ps {
		rctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
		un := &linkproto.Unregister{UAID: p.UAID, Channel: p.Channel}
		a, err := c.request(rctx, func(id uint64) linkproto.Frame { un.ID = id; return un })
		cancel()
		if err != nil {
			return false, err
		}
		if a.status >= 500 {
			return false, fmt.Errorf("the parent answered an unregister with %d", a.status)
		}
		if _, err := c.cfg.Store.UnregisterSent(ctx, p.Seq); err != nil {
			return false, fmt.Errorf("record unregister sent: %w", err)
		}
		c.m.unregisters.Inc()
	}
	return len(ps) == unregisterBatch, nil
}

// setBroadcasts keeps the versions of a BROADCAST in the registry, in
// the order the frames come (on the control stream's goroutine: a change
// is rare, and one commit). Past the registry's broadcast.MaxIDs (ids
// set here by other sources count too) it keeps the versions of the ids
// it holds and as many new ids as fit, in id order; the others are
// counted refused and logged. A version not stored is logged: the
// parent sends the whole map again at the next connect.
func (c *Child) setBroadcasts(ctx context.Context, vs map[string]string) {
	reg := c.cfg.Broadcasts
	if reg == nil || len(vs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	changed, err := reg.Set(ctx, BroadcastSource, vs)
	refused := 0
	if errors.Is(err, broadcast.ErrBad) {
		cur := reg.Versions()
		room := broadcast.MaxIDs - len(cur)
		fit := make(map[string]string, len(vs))
		for _, id := range slices.Sorted(maps.Keys(vs)) {
			if _, ok := cur[id]; !ok {
				if room <= 0 {
					refused++
					continue
				}
				room--
			}
			fit[id] = vs[id]
		}
		c.cfg.Logger.Warn("broadcasts from the parent past the registry's limit not kept",
			"ids", refused, "limit", broadcast.MaxIDs)
		changed, err = reg.Set(ctx, BroadcastSource, fit)
		vs = fit
	}
	if err != nil {
		c.m.broadcasts.With("not_stored").Add(float64(len(vs)))
		c.cfg.Logger.Warn("broadcasts from the parent not stored", "ids", len(vs), "err", err)
		return
	}
	c.m.broadcasts.With("refused").Add(float64(refused))
	c.m.broadcasts.With("set").Add(float64(len(changed)))
	c.m.broadcasts.With("unchanged").Add(float64(len(vs) - len(changed)))
}

// chPair is one (UAID, channel).
type chPair struct {
	u  push.UAID
	ch push.ChannelID
}

// resyncFix is what makes the parent's view this relay's: the pairs it
// lacks (REGISTER) and those only it has (UNREGISTER).
type resyncFix struct {
	register, unregister []chPair
}

// readResync reads the parent's view (RESYNC chunks, right after WELCOME)
// and compares it with the store.
func (c *Child) readResync(f *framer) (*resyncFix, error) {
	var rr linkproto.ResyncReader
	theirs := map[chPair]struct{}{}
	for {
		fr, err := f.next()
		if err != nil {
			return nil, err
		}
		r, ok := fr.(*linkproto.Resync)
		if !ok {
			return nil, fmt.Errorf("%v inside a resync", fr.Type())
		}
		last, err := rr.Add(*r)
		if err != nil {
			return nil, err
		}
		for _, e := range r.Entries {
			for _, ch := range e.Channels {
				theirs[chPair{e.UAID, ch}] = struct{}{}
			}
		}
		if last {
			break
		}
	}
	fix := &resyncFix{}
	err := c.cfg.Store.EachChannel(func(u push.UAID, ch push.ChannelID) {
		p := chPair{u, ch}
		if _, ok := theirs[p]; ok {
			delete(theirs, p)
		} else {
			fix.register = append(fix.register, p)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("read channels: %w", err)
	}
	for p := range theirs {
		fix.unregister = append(fix.unregister, p)
	}
	c.cfg.Logger.Info("resync: fixing the parent's view", "register", len(fix.register), "unregister", len(fix.unregister))
	return fix, nil
}

// resync sends the REGISTERs and UNREGISTERs of fix, one at a time; what
// fails is fixed at a later connect (the digests still differ).
func (c *Child) resync(ctx context.Context, fix *resyncFix) {
	failed := 0
	for _, p := range fix.register {
		ch, ok, err := c.cfg.Store.Channel(p.u, p.ch)
		if err != nil || !ok {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
		reg := &linkproto.Register{UAID: p.u, Channel: p.ch, Key: ch.Key}
		a, err := c.request(rctx, func(id uint64) linkproto.Frame { reg.ID = id; return reg })
		cancel()
		if err != nil || a.status != linkproto.StatusOK {
			failed++
		}
	}
	for _, p := range fix.unregister {
		rctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
		un := &linkproto.Unregister{UAID: p.u, Channel: p.ch}
		a, err := c.request(rctx, func(id uint64) linkproto.Frame { un.ID = id; return un })
		cancel()
		if err != nil || a.status != linkproto.StatusOK {
			failed++
		}
	}
	c.m.resyncs.Inc()
	if failed > 0 {
		c.cfg.Logger.Warn("resync: some fixes failed; the next connect tries again", "failed", failed)
	}
}

// IdentityPrint is a fingerprint of the identity a child presents to its
// parent: its name and its certificate (the leaf's DER), or in token
// mode its token (a truncated SHA-256 under a domain-separation prefix,
// never the key or the token). A site's members, one child of their
// parent, compare theirs (relay/site, linkid.go).
func IdentityPrint(name string, creds *linkauth.Credentials) uint64 {
	h := sha256.New()
	h.Write([]byte("pushrelay link identity\x00"))
	h.Write([]byte(name))
	h.Write([]byte{0})
	if creds != nil {
		if creds.Cert != nil && len(creds.Cert.Certificate) > 0 {
			h.Write([]byte("cert\x00"))
			h.Write(creds.Cert.Certificate[0])
		}
		if len(creds.Token) > 0 {
			h.Write([]byte("token\x00"))
			h.Write(creds.Token)
		}
	}
	return binary.BigEndian.Uint64(h.Sum(nil))
}
