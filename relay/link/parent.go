package link

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/linkauth"
	"github.com/pushrelay/pushrelay/relay/linkproto"
	"github.com/pushrelay/pushrelay/relay/linkquic"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/store"
)

// ParentConfig configures a Parent. Zero values take the defaults in
// parentheses.
type ParentConfig struct {
	// Listen is the link's UDP address, host:port (relay_listen).
	Listen string
	// Name is this relay's name in WELCOME.
	Name string
	// Credentials are this relay's link keys and whom it trusts.
	Credentials *linkauth.Credentials
	// ResetKey is the stateless reset key (linkquic.LoadResetKey).
	ResetKey *[32]byte
	// Store holds the channels registered for children, the child serving
	// each UAID, and the messages waiting for them: the relay's
	// *store.Store, or in a site the site's log in front of it
	// (relay/site.Store).
	Store ParentStore
	// SiteMember: this relay is a member of a site, whose children are
	// taken by one member at a time (the site's holder): the parent
	// refuses every child (REFUSE busy, naming the holder's link
	// address, HolderAddr) except while Hold runs.
	SiteMember bool
	// HolderAddr, with SiteMember, is the link address of the member
	// that takes children now ("" when unknown).
	HolderAddr func() string
	// Endpoints mints the endpoints of children's registers: the
	// relay's own (standalone minter, or its upstream link).
	Endpoints relay.Endpoints
	// DataStreams is how many data streams each child gets (4).
	DataStreams int
	// MaxChildren bounds the children known (by name) to this parent
	// (256); a new one past it is refused busy.
	MaxChildren int
	// RequestTimeout bounds a child's register here, minting included,
	// and the HELLO's wait (5s).
	RequestTimeout time.Duration
	// KeepAlive and IdleTimeout are the transport's (linkquic defaults).
	KeepAlive, IdleTimeout time.Duration
	// Broadcasts, when set, are sent down to every child: the whole map
	// after WELCOME, then each change (broadcast.Registry).
	Broadcasts relay.Broadcasts

	Logger  *slog.Logger
	Metrics *metrics.Registry
	Now     func() time.Time
}

// ParentStore is what a Parent reads and writes: *store.Store, or a
// site's store (relay/site.Store, whose writes go through the site's log).
type ParentStore interface {
	Epoch() []byte
	LinkChildren(fn func(u push.UAID, child []byte)) error
	LinkChildAddrs(fn func(child string, addr netip.AddrPort)) error
	LinkForgets(child string, max int) ([]store.LinkForget, error)
	Channel(u push.UAID, id push.ChannelID) (store.Channel, bool, error)
	Channels(u push.UAID) ([]store.Channel, error)
	Messages(u push.UAID, afterSeq uint64, limit int) ([]store.Message, error)
	WaitingUAIDs(from push.UAID, limit int) ([]push.UAID, bool, error)
	Register(ctx context.Context, c store.Channel) error
	Unregister(ctx context.Context, u push.UAID, id push.ChannelID) (bool, error)
	SetLinkChild(ctx context.Context, u push.UAID, child string) error
	SetLinkChildAddr(ctx context.Context, child string, addr netip.AddrPort) error
	LinkForgotten(ctx context.Context, u push.UAID, child string) error
	AckMany(ctx context.Context, seqs map[push.UAID][]uint64) (int, error)
}

var _ ParentStore = (*store.Store)(nil)

func (c *ParentConfig) setDefaults() {
	if c.DataStreams <= 0 {
		c.DataStreams = 4
	}
	c.DataStreams = min(c.DataStreams, linkproto.MaxDataStreams, linkquic.MaxDataStreams)
	if c.MaxChildren <= 0 {
		c.MaxChildren = 256
	}
	c.MaxChildren = min(c.MaxChildren, 1<<16)
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Parent is a parent relay's end of the link: it accepts children,
// answers their registers, and sends them the messages stored here for
// the UAIDs they serve.
type Parent struct {
	// epoch is the store's (Store.Epoch): the first 8 bytes of origin ids.
	epoch []byte
	cfg   ParentConfig
	m     *parentMetrics
	l     *linkquic.Listener
	token []byte

	mu sync.Mutex
	// serves maps each UAID a child serves to the child's index in names:
	// the only memory a UAID costs here beyond the store.
	serves map[push.UAID]uint16
	names  []string
	// digests are, by child index, the digest of the pairs this relay
	// holds for the child's UAIDs: built from the store once, then kept
	// on every register, unregister and claim, so a connect reads nothing
	// from the store unless the child's digest differs.
	digests []linkproto.Digest
	index   map[string]uint16
	conns   []*parentConn // by index; nil while the child is away
	// addrs is each child's last address as the store has it;
	// hintAddrs the ones read at start, least recently set first
	// (announce sends the restart hint to them).
	addrs     map[string]netip.AddrPort
	hintAddrs []netip.AddrPort
	wg        sync.WaitGroup
	// holding: children are taken (always, outside a site; while Hold
	// runs, in one).
	holding bool
}

// NewParent reads which child serves each UAID from the store and opens
// the link's socket; Run accepts children.
func NewParent(cfg ParentConfig) (*Parent, error) {
	if cfg.Store == nil || cfg.Credentials == nil || cfg.Endpoints == nil {
		return nil, errors.New("link: Store, Credentials and Endpoints are required")
	}
	if len(cfg.Name) == 0 || len(cfg.Name) > linkproto.MaxNameLen {
		return nil, fmt.Errorf("link: relay name %q must be 1 to %d bytes", cfg.Name, linkproto.MaxNameLen)
	}
	cfg.setDefaults()
	p := &Parent{cfg: cfg, epoch: cfg.Store.Epoch(), m: newParentMetrics(metrics.OrNew(cfg.Metrics)), holding: !cfg.SiteMember}
	if cfg.Credentials.TokenMode() {
		p.token = cfg.Credentials.Token
	}
	if err := p.load(); err != nil {
		return nil, err
	}
	if cfg.Broadcasts != nil {
		// Runs under the registry's lock: Parent.mu is taken after it.
		cfg.Broadcasts.OnChange(func(map[string]string) {
			p.mu.Lock()
			for _, pc := range p.conns {
				if pc != nil {
					kick(pc.bcKick)
				}
			}
			p.mu.Unlock()
		})
	}
	tlsConf, err := cfg.Credentials.ServerTLS()
	if err != nil {
		return nil, fmt.Errorf("link: %w", err)
	}
	p.l, err = linkquic.Listen(cfg.Listen, linkquic.Config{TLS: tlsConf, ResetKey: cfg.ResetKey,
		KeepAlive: cfg.KeepAlive, IdleTimeout: cfg.IdleTimeout, Logger: cfg.Logger, Metrics: cfg.Metrics})
	if err != nil {
		return nil, fmt.Errorf("link: listen on %s: %w", cfg.Listen, err)
	}
	return p, nil
}

// load reads from the store which child serves each UAID, the digests
// of their pairs and the children's last addresses (at NewParent, and in
// a site each time this member comes to hold the children: the store
// applied every claim the last holder made).
func (p *Parent) load() error {
	cfg := p.cfg
	serves, index := map[push.UAID]uint16{}, map[string]uint16{}
	var names []string
	var ferr error
	err := cfg.Store.LinkChildren(func(u push.UAID, child []byte) {
		i, ok := index[string(child)]
		if !ok {
			if len(names) >= cfg.MaxChildren {
				ferr = fmt.Errorf("link: the store names more than %d children", cfg.MaxChildren)
				return
			}
			i = uint16(len(names))
			names = append(names, string(child))
			index[string(child)] = i
		}
		serves[u] = i
	})
	if err = errors.Join(err, ferr); err != nil {
		return fmt.Errorf("link: read children: %w", err)
	}
	p.mu.Lock()
	// Children connected now (a site's holder reloading: none) keep
	// their index; the others are as the store says.
	for i, pc := range p.conns {
		if pc != nil {
			if _, ok := index[p.names[i]]; !ok {
				index[p.names[i]] = uint16(len(names))
				names = append(names, p.names[i])
			}
		}
	}
	conns := make([]*parentConn, len(names))
	for i, pc := range p.conns {
		if pc != nil {
			conns[index[p.names[i]]] = pc
			pc.idx = index[p.names[i]]
		}
	}
	p.serves, p.index, p.names, p.conns = serves, index, names, conns
	p.digests = make([]linkproto.Digest, len(names))
	p.mu.Unlock()
	if err := p.rebuildDigests(); err != nil {
		return fmt.Errorf("link: read children's channels: %w", err)
	}
	p.m.uaids.Set(float64(len(serves)))
	addrs := map[string]netip.AddrPort{}
	var hints []netip.AddrPort
	if err := cfg.Store.LinkChildAddrs(func(child string, a netip.AddrPort) {
		addrs[child] = a
		hints = append(hints, a)
	}); err != nil {
		// Only the restart hint needs them: children notice at their
		// next heartbeat instead.
		cfg.Logger.Warn("children's last addresses not read; no restart hint", "err", err)
	}
	p.mu.Lock()
	p.addrs, p.hintAddrs = addrs, hints
	p.mu.Unlock()
	return nil
}

// Hold takes children on a site's member (SiteMember) until ctx ends:
// the site named this member the holder. It reloads the children's state
// from the store (the last holder's claims, applied here from the log),
// takes epoch as the origin ids' first bytes (the site's, the same on
// every member: a message resent by the next holder keeps its id), and
// sends the restart hint to every child's last address, so that a child
// still connected to the last holder (or waiting to redial it) comes here
// at once. When ctx ends it sends every child GOAWAY and closes its
// connection: they redial, and reach the next holder.
func (p *Parent) Hold(ctx context.Context, epoch []byte) error {
	if err := p.load(); err != nil {
		return err
	}
	p.mu.Lock()
	if !bytes.Equal(p.epoch, epoch) {
		// Once per run: the site's epoch does not change (the senders
		// of an earlier holding, all gone, read it unlocked).
		p.epoch = slices.Clone(epoch)
	}
	p.holding = true
	p.mu.Unlock()
	p.cfg.Logger.Info("taking children: this member holds the site's relay link listener")
	p.announce()
	<-ctx.Done()
	p.mu.Lock()
	p.holding = false
	conns := slices.Clone(p.conns)
	p.mu.Unlock()
	for _, pc := range conns {
		if pc != nil {
			pc.ctl.send(&linkproto.GoAway{Code: linkproto.CodeBusy, Reason: "this member no longer holds the site's children"})
			pc.conn.Close(linkquic.Code(linkproto.CodeBusy), "this member no longer holds the site's children")
		}
	}
	p.cfg.Logger.Info("no longer taking children")
	return nil
}

// Reload reads the children's state from the store again (a site's
// member whose store a snapshot replaced); a parent that holds (Hold)
// reloads when it comes to hold and is left as it is.
func (p *Parent) Reload() error {
	p.mu.Lock()
	holding := p.holding
	p.mu.Unlock()
	if holding {
		return nil
	}
	return p.load()
}

// NoteChild hears that child serves u (a site's member applying the
// holder's claim from the log): Serves answers for it at once on every
// member.
func (p *Parent) NoteChild(u push.UAID, child string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i, ok := p.index[child]
	if !ok {
		if len(p.names) >= p.cfg.MaxChildren {
			return
		}
		i = uint16(len(p.names))
		p.names = append(p.names, child)
		p.conns = append(p.conns, nil)
		p.digests = append(p.digests, linkproto.Digest{})
		p.index[child] = i
	}
	p.serves[u] = i
}

// Addr is the link's listening address.
func (p *Parent) Addr() net.Addr { return p.l.Addr() }

// Close closes the listener (Run does on its way out); for a Parent that
// never ran.
func (p *Parent) Close() error { return p.l.Close() }

// ChildInfo is one child's part of the parent's /status: its name,
// whether it is connected and from where, the UAIDs it serves, the
// messages sent to it and not yet acked.
type ChildInfo struct {
	Name      string
	Connected bool
	Addr      string
	UAIDs     int
	InFlight  int
}

// Children reports every child known here.
func (p *Parent) Children() []ChildInfo {
	p.mu.Lock()
	out := make([]ChildInfo, len(p.names))
	for i, n := range p.names {
		out[i].Name = n
		if pc := p.conns[i]; pc != nil {
			out[i].Connected = true
			out[i].Addr = pc.conn.RemoteAddr().String()
		}
	}
	for _, i := range p.serves {
		out[i].UAIDs++
	}
	conns := slices.Clone(p.conns)
	p.mu.Unlock()
	for i, pc := range conns {
		if pc != nil {
			pc.mu.Lock()
			out[i].InFlight = int(pc.inflightMsgs)
			pc.mu.Unlock()
		}
	}
	return out
}

// Stored hears of every commit of messages (relay.Config.Stored): those
// for a UAID a connected child serves are marked for its sender.
func (p *Parent) Stored(ms []store.Message) {
	var last *parentConn
	var lastU push.UAID
	p.mu.Lock()
	for i := range ms {
		u := ms[i].UAID
		if last != nil && u == lastU {
			continue
		}
		j, ok := p.serves[u]
		if !ok || p.conns[j] == nil {
			continue
		}
		pc := p.conns[j]
		pc.mark(u)
		last, lastU = pc, u
	}
	p.mu.Unlock()
	if last != nil {
		// Kick every connection that got a mark (usually one).
		p.mu.Lock()
		conns := slices.Clone(p.conns)
		p.mu.Unlock()
		for _, pc := range conns {
			if pc != nil {
				pc.wake()
			}
		}
	}
}

// Run accepts children until ctx ends; then it closes their connections
// and returns once every goroutine it started has.
func (p *Parent) Run(ctx context.Context) error {
	defer p.wg.Wait()
	defer p.l.Close()
	stop := context.AfterFunc(ctx, func() {
		p.mu.Lock()
		conns := slices.Clone(p.conns)
		p.mu.Unlock()
		for _, pc := range conns {
			if pc != nil {
				pc.ctl.send(&linkproto.GoAway{Code: linkproto.CodeShutdown, Reason: "shutting down"})
				pc.conn.Close(linkquic.Code(linkproto.CodeShutdown), "shutting down")
			}
		}
		p.l.Close()
	})
	defer stop()
	if !p.cfg.SiteMember {
		p.announce() // in a site, the holder announces (Hold)
	}
	for {
		conn, err := p.l.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("link: accept: %w", err)
		}
		p.wg.Go(func() { p.serve(ctx, conn) })
	}
}

// refuse tells a child why it is turned away (REFUSE) and closes.
func (p *Parent) refuse(conn *linkquic.Conn, f *framer, code linkproto.Code, reason string, authErr error) {
	p.m.refused.With(code.String()).Inc()
	p.cfg.Logger.Warn("child refused", "addr", conn.RemoteAddr(), "code", code, "reason", reason)
	f.send(&linkproto.Refuse{Code: code, Reason: reason})
	if authErr != nil {
		conn.Refuse(authErr)
		return
	}
	conn.Close(linkquic.Code(code), reason)
}

// serve runs one child's connection.
func (p *Parent) serve(ctx context.Context, conn *linkquic.Conn) {
	defer conn.Close(linkquic.Code(linkproto.CodeShutdown), "closing")
	hctx, cancel := context.WithTimeout(ctx, p.cfg.RequestTimeout)
	defer cancel()
	ctl, err := conn.AcceptControl(hctx)
	if err != nil {
		p.cfg.Logger.Info("child gave no control stream", "addr", conn.RemoteAddr(), "err", readErr(conn, err))
		return
	}
	f := newFramer(ctl, linkproto.StreamControl)
	ctl.SetReadDeadline(time.Now().Add(p.cfg.RequestTimeout))
	fr, err := f.next()
	if err != nil {
		closeFor(conn, fmt.Errorf("hello: %w", err), linkproto.CodeNoError)
		return
	}
	ctl.SetReadDeadline(time.Time{})
	hello, ok := fr.(*linkproto.Hello)
	if !ok {
		closeFor(conn, fmt.Errorf("%v before HELLO", fr.Type()), linkproto.CodeProtocol)
		return
	}
	if p.token != nil {
		if err := conn.VerifyBinding(p.token, hello.Auth); err != nil {
			p.refuse(conn, f, linkproto.CodeUnknownChild, "wrong token", err)
			return
		}
	} else if peer := conn.Peer(); peer != "" && peer != hello.Name {
		p.refuse(conn, f, linkproto.CodeUnknownChild, fmt.Sprintf("the certificate names %q, not %q", peer, hello.Name), nil)
		return
	}
	v, ok := linkproto.ChooseVersion(hello.Versions, []uint64{linkproto.Version})
	if !ok {
		p.refuse(conn, f, linkproto.CodeVersion, "no common protocol version", nil)
		return
	}
	p.mu.Lock()
	holding := p.holding
	p.mu.Unlock()
	if !holding {
		why := "not the site's link holder now: retry another member"
		if p.cfg.HolderAddr != nil {
			if a := p.cfg.HolderAddr(); a != "" {
				why = "not the site's link holder now: the holder is " + a
			}
		}
		p.refuse(conn, f, linkproto.CodeBusy, why, nil)
		return
	}
	pc, old, ok := p.attach(hello.Name, conn, f)
	if !ok {
		p.refuse(conn, f, linkproto.CodeBusy, "too many children", nil)
		return
	}
	if old != nil {
		old.conn.Close(linkquic.Code(linkproto.CodeReplaced), "replaced by a newer connection")
	}
	defer p.detach(pc)
	d, us := p.view(pc.idx)
	// The child still has the devices this relay forgot and has not yet
	// told it of (the FORGETs follow WELCOME): the view it should have
	// counts them.
	fs, err := p.cfg.Store.LinkForgets(pc.name, math.MaxInt)
	if err != nil {
		p.cfg.Logger.Error("child's forgotten devices not read", "child", pc.name, "err", err)
		p.refuse(conn, f, linkproto.CodeInternal, "store error", nil)
		return
	}
	if withForgets(d, fs) != hello.Digest {
		// The store decides: the kept digest may have missed a change
		// (two registers of one channel at once, a channel this relay
		// removed on its own); rebuilt, it is kept from then on.
		sd, err := p.storeDigest(us)
		if err != nil {
			p.cfg.Logger.Error("child's view not read", "child", pc.name, "err", err)
			p.refuse(conn, f, linkproto.CodeInternal, "store error", nil)
			return
		}
		if sd != d {
			p.cfg.Logger.Warn("kept digest of a child's pairs differed from the store's: rebuilt", "child", pc.name,
				"kept", d.String(), "store", sd.String())
			p.mu.Lock()
			p.digests[pc.idx] = sd
			p.mu.Unlock()
			d = sd
		}
	}
	d = withForgets(d, fs)
	resync := d != hello.Digest
	if resync {
		p.m.digestMismatches.Inc()
		p.cfg.Logger.Warn("child's digest differs from this relay's view of it: resync",
			"child", pc.name, "child_digest", hello.Digest.String(), "view", d.String())
	}
	pc.seq = hello.Resume + 1
	pc.maxUpdate = int(min(hello.MaxUpdate, linkproto.MaxUpdatePayload))
	w := &linkproto.Welcome{Version: v, Name: p.cfg.Name, Next: pc.seq, DataStreams: uint64(p.cfg.DataStreams), Digest: d, Resync: resync}
	if err := f.send(w); err != nil {
		return
	}
	if resync {
		if err := p.sendResync(f, us, fs); err != nil {
			p.cfg.Logger.Error("resync not sent", "child", pc.name, "err", err)
			closeFor(conn, err, linkproto.CodeInternal)
			return
		}
	}
	for range p.cfg.DataStreams {
		s, err := conn.OpenData(ctx)
		if err != nil {
			return
		}
		pc.data = append(pc.data, s)
	}
	p.m.connected.Inc()
	defer p.m.connected.Dec()
	p.cfg.Logger.Info("child connected", "child", pc.name, "addr", conn.RemoteAddr(), "uaids", len(us), "next", pc.seq)
	pc.mu.Lock()
	pc.sweeping = true
	pc.mu.Unlock()

	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { pc.send(ctx) })
	if p.cfg.Broadcasts != nil {
		wg.Go(func() { pc.sendBroadcasts() })
	}
	wg.Go(func() { pc.sendForgets(ctx) })
	wg.Go(func() { p.rememberAddr(ctx, pc.name, conn.RemoteAddr()) })
	sem := make(chan struct{}, 16)
	for {
		fr, err := f.next()
		if err != nil {
			err = readErr(conn, err)
			var ce *linkquic.CloseError
			if !errors.As(err, &ce) {
				closeFor(conn, err, linkproto.CodeNoError)
			}
			p.cfg.Logger.Info("child disconnected", "child", pc.name, "err", err)
			return
		}
		switch fr := fr.(type) {
		case *linkproto.Credit:
			pc.mu.Lock()
			pc.creditBytes, pc.creditMsgs = max(pc.creditBytes, fr.Bytes), max(pc.creditMsgs, fr.Messages)
			pc.mu.Unlock()
			pc.wake()
		case *linkproto.Ack:
			pc.mu.Lock()
			pc.ackedTo = max(pc.ackedTo, fr.Seq)
			pc.mu.Unlock()
			pc.wake()
		case *linkproto.Register:
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				f.send(p.register(ctx, pc, fr))
			})
		case *linkproto.Unregister:
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				f.send(p.unregister(ctx, pc, fr))
			})
		case *linkproto.Forgotten:
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				pc.forgotten(ctx, fr)
			})
		case *linkproto.GoAway:
			p.cfg.Logger.Info("child leaving", "child", pc.name, "reason", fr.Reason)
			conn.Close(linkquic.Code(linkproto.CodeNoError), "goaway")
			return
		default:
			closeFor(conn, fmt.Errorf("%v from a child", fr.Type()), linkproto.CodeProtocol)
			return
		}
	}
}

// announce sends the restart hint (linkquic's Listener.Announce) to the
// last address of each child the store remembers, at most MaxChildren of
// them, the most recently seen: a child still connected to the parent
// that ran before this one probes at once, meets the stateless reset and
// redials, instead of noticing at its next heartbeat.
func (p *Parent) announce() {
	p.mu.Lock()
	addrs := p.hintAddrs
	p.mu.Unlock()
	if len(addrs) > p.cfg.MaxChildren {
		addrs = addrs[len(addrs)-p.cfg.MaxChildren:]
	}
	if len(addrs) == 0 {
		return
	}
	n := p.l.Announce(addrs)
	p.cfg.Logger.Info("restart announced to children's last addresses", "sent", n, "children", len(addrs))
}

// rememberAddr records a connected child's address durably when it
// changed, for the next start's announce.
func (p *Parent) rememberAddr(ctx context.Context, name string, a net.Addr) {
	ua, ok := a.(*net.UDPAddr)
	if !ok {
		return
	}
	ap := ua.AddrPort()
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	p.mu.Lock()
	same := p.addrs[name] == ap
	p.mu.Unlock()
	if same {
		return
	}
	if err := p.cfg.Store.SetLinkChildAddr(ctx, name, ap); err != nil {
		p.cfg.Logger.Warn("child's address not recorded", "child", name, "addr", ap, "err", err)
		return
	}
	p.mu.Lock()
	p.addrs[name] = ap
	p.mu.Unlock()
}

// attach makes pc the connection of the child name, returning the one it
// replaces; false when a new child would pass MaxChildren.
func (p *Parent) attach(name string, conn *linkquic.Conn, f *framer) (pc, old *parentConn, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i, known := p.index[name]
	if !known {
		if len(p.names) >= p.cfg.MaxChildren {
			return nil, nil, false
		}
		i = uint16(len(p.names))
		p.names = append(p.names, name)
		p.conns = append(p.conns, nil)
		p.digests = append(p.digests, linkproto.Digest{})
		p.index[name] = i
	}
	pc = &parentConn{p: p, idx: i, name: name, conn: conn, ctl: f, dirty: map[push.UAID]struct{}{},
		kick: make(chan struct{}, 1), bcKick: make(chan struct{}, 1), sentUpTo: map[push.UAID]uint64{},
		forgetKick: make(chan struct{}, 1), forgetting: map[uint64]push.UAID{}}
	old = p.conns[i]
	p.conns[i] = pc
	return pc, old, true
}

func (p *Parent) detach(pc *parentConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns[pc.idx] == pc {
		p.conns[pc.idx] = nil
	}
}

// view is the kept digest of the pairs this relay holds for child i, and
// the UAIDs it serves.
func (p *Parent) view(i uint16) (linkproto.Digest, []push.UAID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var us []push.UAID
	for u, j := range p.serves {
		if j == i {
			us = append(us, u)
		}
	}
	return p.digests[i], us
}

// rebuildDigests computes every child's kept digest from the store.
func (p *Parent) rebuildDigests() error {
	p.mu.Lock()
	serves := maps.Clone(p.serves)
	n := len(p.names)
	p.mu.Unlock()
	ds := make([]linkproto.Digest, n)
	for u, i := range serves {
		cs, err := p.cfg.Store.Channels(u)
		if err != nil {
			return err
		}
		for _, c := range cs {
			ds[i].Add(u, c.ID)
		}
	}
	p.mu.Lock()
	copy(p.digests, ds)
	p.mu.Unlock()
	return nil
}

// storeDigest is the digest of the pairs the store holds for the UAIDs us.
func (p *Parent) storeDigest(us []push.UAID) (linkproto.Digest, error) {
	var d linkproto.Digest
	for _, u := range us {
		cs, err := p.cfg.Store.Channels(u)
		if err != nil {
			return d, err
		}
		for _, c := range cs {
			d.Add(u, c.ID)
		}
	}
	return d, nil
}

// pairChanged keeps the digest of the child serving u when the pair
// (u, ch) was stored (added) or removed here.
func (p *Parent) pairChanged(u push.UAID, ch push.ChannelID, added bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i, ok := p.serves[u]
	if !ok {
		return
	}
	if added {
		p.digests[i].Add(u, ch)
	} else {
		p.digests[i].Remove(u, ch)
	}
}

// sendResync sends this relay's view of the pairs it holds for a child,
// the UAIDs us, as RESYNC chunks; the devices it forgot and has not yet
// told the child of, fs, count as held (their FORGETs follow), so the
// child does not register them again.
func (p *Parent) sendResync(f *framer, us []push.UAID, fs []store.LinkForget) error {
	slices.SortFunc(us, func(a, b push.UAID) int { return bytes.Compare(a[:], b[:]) })
	entries := make([]linkproto.ResyncEntry, 0, len(us)+len(fs))
	held := make(map[push.UAID]bool, len(fs))
	for _, u := range us {
		if len(fs) > 0 {
			held[u] = true
		}
		cs, err := p.cfg.Store.Channels(u)
		if err != nil {
			return err
		}
		if len(cs) == 0 {
			continue
		}
		e := linkproto.ResyncEntry{UAID: u, Channels: make([]push.ChannelID, len(cs))}
		for i, c := range cs {
			e.Channels[i] = c.ID
		}
		slices.SortFunc(e.Channels, func(a, b push.ChannelID) int { return bytes.Compare(a[:], b[:]) })
		entries = append(entries, e)
	}
	for _, fg := range fs {
		if held[fg.UAID] || len(fg.Channels) == 0 {
			continue
		}
		e := linkproto.ResyncEntry{UAID: fg.UAID, Channels: slices.Clone(fg.Channels)}
		slices.SortFunc(e.Channels, func(a, b push.ChannelID) int { return bytes.Compare(a[:], b[:]) })
		entries = append(entries, e)
	}
	slices.SortFunc(entries, func(a, b linkproto.ResyncEntry) int { return bytes.Compare(a.UAID[:], b.UAID[:]) })
	return linkproto.ChunkResync(entries, func(r linkproto.Resync) error { return f.send(&r) })
}

// register answers a child's REGISTER: the channel is minted by this
// relay's Endpoints (its own, or up its chain), stored here under the
// UAID, and the UAID recorded as the child's, durably, before the answer.
func (p *Parent) register(ctx context.Context, pc *parentConn, r *linkproto.Register) *linkproto.Registered {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.RequestTimeout)
	defer cancel()
	answer := func(st linkproto.Status, ep string) *linkproto.Registered {
		p.m.registers.With(fmt.Sprint(uint64(st))).Inc()
		return &linkproto.Registered{ID: r.ID, Status: st, Endpoint: ep}
	}
	eps := p.cfg.Endpoints
	keep := false
	if k, ok := eps.(relay.EndpointKeeper); ok {
		keep = k.KeepEndpoints()
	}
	reg := relay.Registration{UAID: r.UAID, Channel: r.Channel, Key: r.Key, SimplePush: r.SimplePush}
	old, existed, err := p.cfg.Store.Channel(r.UAID, r.Channel)
	if err != nil {
		return answer(linkproto.StatusError, "")
	}
	if existed && old.Endpoint != "" && bytes.Equal(old.Key, r.Key) {
		if err := p.claim(ctx, pc, r.UAID); err != nil {
			return answer(linkproto.StatusError, "")
		}
		return answer(linkproto.StatusOK, old.Endpoint)
	}
	ep, err := eps.Mint(ctx, reg)
	if err != nil {
		p.cfg.Logger.Info("child's register not minted", "child", pc.name, "err", err)
		return answer(linkproto.StatusUnavailable, "")
	}
	if len(ep) > linkproto.MaxEndpointLen {
		eps.Abandon(ctx, reg)
		return answer(linkproto.StatusError, "")
	}
	if err := p.claim(ctx, pc, r.UAID); err != nil {
		eps.Abandon(ctx, reg)
		return answer(linkproto.StatusError, "")
	}
	c := store.Channel{UAID: r.UAID, ID: r.Channel, Key: r.Key}
	if keep {
		c.Endpoint = ep
	}
	if err := p.cfg.Store.Register(ctx, c); err != nil {
		eps.Abandon(ctx, reg)
		switch {
		case errors.Is(err, store.ErrChannelConflict), errors.Is(err, store.ErrTombstoned):
			return answer(linkproto.StatusConflict, "")
		case errors.Is(err, store.ErrTooManyChannels):
			return answer(linkproto.StatusTooMany, "")
		case errors.Is(err, store.ErrBadChannel):
			return answer(linkproto.StatusBadRequest, "")
		}
		p.cfg.Logger.Error("child's register not stored", "child", pc.name, "err", err)
		return answer(linkproto.StatusError, "")
	}
	if !existed {
		p.pairChanged(r.UAID, r.Channel, true)
	}
	return answer(linkproto.StatusOK, ep)
}

// claim records durably that pc's child serves u; the pairs already
// stored under u move to its digest.
func (p *Parent) claim(ctx context.Context, pc *parentConn, u push.UAID) error {
	p.mu.Lock()
	i, ok := p.serves[u]
	p.mu.Unlock()
	if ok && i == pc.idx {
		return nil
	}
	if err := p.cfg.Store.SetLinkChild(ctx, u, pc.name); err != nil {
		p.cfg.Logger.Error("child's UAID not recorded", "child", pc.name, "err", err)
		return err
	}
	cs, err := p.cfg.Store.Channels(u)
	if err != nil {
		return err
	}
	p.mu.Lock()
	i, ok = p.serves[u]
	for _, c := range cs {
		if ok {
			p.digests[i].Remove(u, c.ID)
		}
		p.digests[pc.idx].Add(u, c.ID)
	}
	p.serves[u] = pc.idx
	n := len(p.serves)
	p.mu.Unlock()
	p.m.uaids.Set(float64(n))
	return nil
}

// unregister answers a child's UNREGISTER through this relay's
// Endpoints (an upstream passes it on) or the store.
func (p *Parent) unregister(ctx context.Context, pc *parentConn, r *linkproto.Unregister) *linkproto.Unregistered {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.RequestTimeout)
	defer cancel()
	var err error
	removed := false
	if un, ok := p.cfg.Endpoints.(relay.Unregisterer); ok {
		if _, removed, err = p.cfg.Store.Channel(r.UAID, r.Channel); err == nil {
			err = un.Unregister(ctx, r.UAID, r.Channel)
		}
	} else {
		removed, err = p.cfg.Store.Unregister(ctx, r.UAID, r.Channel)
	}
	if err == nil && removed {
		p.pairChanged(r.UAID, r.Channel, false)
	}
	st := linkproto.StatusOK
	if err != nil {
		p.cfg.Logger.Error("child's unregister not stored", "child", pc.name, "err", err)
		st = linkproto.StatusError
	}
	p.m.unregisters.With(fmt.Sprint(uint64(st))).Inc()
	return &linkproto.Unregistered{ID: r.ID, Status: st}
}

// parentConn is one child's connection on the parent.
type parentConn struct {
	p    *Parent
	idx  uint16
	name string
	conn *linkquic.Conn
	ctl  *framer
	data []*linkquic.SendStream
	kick chan struct{}
	// bcKick: the broadcast versions changed.
	bcKick chan struct{}
	// forgetKick: a device the child serves was forgotten (forget.go).
	forgetKick chan struct{}

	// FORGETs sent and not yet answered, by request id.
	fmu        sync.Mutex
	forgetID   uint64
	forgetting map[uint64]push.UAID

	mu sync.Mutex
	// dirty are the UAIDs that may have messages not sent yet.
	dirty map[push.UAID]struct{}
	// sweeping is set from the connect until the sender has looked at
	// every UAID with messages waiting in the store, walking them in
	// UAID order from sweepFrom (store.WaitingUAIDs, which skips the
	// UAIDs without messages: most of a child's, after a short outage)
	// and taking the child's into dirty up to sendBatch at a time, so
	// dirty (a map, which never shrinks) stays small. Written by the
	// sender only.
	sweeping                bool
	sweepFrom               push.UAID
	creditBytes, creditMsgs uint64
	ackedTo                 uint64
	inflightMsgs            int

	// The sender's own.
	seq                 uint64
	maxUpdate           int
	sentBytes, sentMsgs uint64
	inflight            []sentFrame
	sentUpTo            map[push.UAID]uint64
	builders            []linkproto.UpdateBuilder
	// deleting is set while a goroutine deletes acked messages (one
	// delete at a time), so the sender goes on sending during its
	// commit; it reports on deleted.
	deleting bool
	deleted  chan deletion
}

// deletion is a finished delete of acked messages.
type deletion struct {
	seqs map[push.UAID][]uint64
	msgs int
	err  error
}

// sentFrame is an UPDATE sent and not yet acked: the store's messages it
// carried.
type sentFrame struct {
	seq  uint64
	refs []msgRef
}

type msgRef struct {
	u   push.UAID
	seq uint64
}

func (pc *parentConn) mark(u push.UAID) {
	pc.mu.Lock()
	pc.dirty[u] = struct{}{}
	pc.mu.Unlock()
}

func (pc *parentConn) wake() { kick(pc.kick) }

// errNoCredit stops a Build when the next frame would pass the credit.
var errNoCredit = errors.New("no credit")

// readBatch bounds the messages read per UAID, and sendBatch the UAIDs
// taken per round.
const (
	readBatch = 100
	sendBatch = 256
)

// send is the connection's sender: it deletes what the child acked and
// sends what waits, within the credit, until the connection ends.
func (pc *parentConn) send(ctx context.Context) {
	pc.deleted = make(chan deletion, 1)
	defer func() {
		if pc.deleting {
			pc.deletedAcked(<-pc.deleted)
		}
	}()
	pc.builders = make([]linkproto.UpdateBuilder, len(pc.data))
	for i := range pc.builders {
		pc.builders[i].MaxPayload = max(min(pc.maxUpdate, maxUpdate), linkproto.MinUpdatePayload)
	}
	pc.wake()
	for {
		select {
		case <-pc.kick:
		case <-pc.conn.Done():
			return
		}
		if err := pc.deleteAcked(ctx); err != nil {
			pc.p.cfg.Logger.Error("acked messages not deleted", "child", pc.name, "err", err)
			closeFor(pc.conn, err, linkproto.CodeInternal)
			return
		}
		more, err := pc.sendSome(ctx)
		if err != nil {
			if pc.conn.Err() == nil {
				pc.p.cfg.Logger.Error("updates not sent", "child", pc.name, "err", err)
				closeFor(pc.conn, err, linkproto.CodeInternal)
			}
			return
		}
		if more {
			pc.wake()
		}
	}
}

// deleteAcked deletes from the store the messages of the frames the
// child's ACK covers, in one commit, on a goroutine of its own: the
// sender keeps sending during the commit's fsync instead of waiting for
// it every round (with few messages per round that wait was most of the
// round). One delete at a time; it first takes in the one that finished.
func (pc *parentConn) deleteAcked(ctx context.Context) error {
	if pc.deleting {
		select {
		case d := <-pc.deleted:
			if err := pc.deletedAcked(d); err != nil {
				return err
			}
		default:
			return nil
		}
	}
	pc.mu.Lock()
	acked := pc.ackedTo
	pc.mu.Unlock()
	n := 0
	for n < len(pc.inflight) && pc.inflight[n].seq <= acked {
		n++
	}
	if n == 0 {
		return nil
	}
	seqs := map[push.UAID][]uint64{}
	msgs := 0
	for _, f := range pc.inflight[:n] {
		for _, r := range f.refs {
			seqs[r.u] = append(seqs[r.u], r.seq)
			msgs++
		}
	}
	pc.inflight = slices.Delete(pc.inflight, 0, n)
	pc.deleting = true
	go func() {
		_, err := pc.p.cfg.Store.AckMany(ctx, seqs)
		pc.deleted <- deletion{seqs: seqs, msgs: msgs, err: err}
		pc.wake()
	}()
	return nil
}

// deletedAcked takes in a finished delete. Only now may the sender read
// those UAIDs from their first message again (sentUpTo kept it past
// what was acked while the delete was not committed).
func (pc *parentConn) deletedAcked(d deletion) error {
	pc.deleting = false
	if d.err != nil {
		return d.err
	}
	for u, ss := range d.seqs {
		if pc.sentUpTo[u] <= slices.Max(ss) {
			delete(pc.sentUpTo, u)
		}
	}
	pc.p.m.acked.Add(float64(d.msgs))
	pc.mu.Lock()
	pc.inflightMsgs -= d.msgs
	pc.mu.Unlock()
	return nil
}

// sendSome sends the waiting messages of up to sendBatch dirty UAIDs, and
// reports whether more may wait with credit to send them.
func (pc *parentConn) sendSome(ctx context.Context) (bool, error) {
	pc.mu.Lock()
	if pc.sentBytes >= pc.creditBytes || pc.sentMsgs >= pc.creditMsgs {
		pc.mu.Unlock()
		return false, nil
	}
	need := sendBatch - len(pc.dirty)
	pc.mu.Unlock()
	if pc.sweeping && need > 0 {
		if err := pc.sweepSome(need); err != nil {
			return false, err
		}
	}
	pc.mu.Lock()
	us := make([]push.UAID, 0, min(len(pc.dirty), sendBatch))
	for u := range pc.dirty {
		if len(us) == sendBatch {
			break
		}
		us = append(us, u)
		delete(pc.dirty, u)
	}
	more := len(pc.dirty) > 0 || pc.sweeping
	pc.mu.Unlock()
	if len(us) == 0 {
		return false, nil
	}
	n := len(pc.data)
	batches := make([][]push.Message, n)
	now := pc.p.cfg.Now()
	expired := map[push.UAID][]uint64{}
	for _, u := range us {
		ms, err := pc.p.cfg.Store.Messages(u, pc.sentUpTo[u], readBatch)
		if err != nil {
			return false, fmt.Errorf("read messages: %w", err)
		}
		if len(ms) == readBatch {
			pc.mark(u)
			more = true
		}
		s := int(u[15]) % n
		for i := range ms {
			m := &ms[i]
			ttl := m.Expiry.Sub(now).Truncate(time.Second)
			if ttl < time.Second {
				expired[u] = append(expired[u], m.Seq)
				continue
			}
			topic := m.Topic
			if m.Version != 0 {
				topic = ""
			}
			batches[s] = append(batches[s], push.Message{UAID: u, Channel: m.Channel, TTL: ttl, Urgency: m.Urgency,
				Topic: topic, Version: m.Version, Encoding: m.Encoding, Encryption: m.Encryption, CryptoKey: m.CryptoKey,
				Data: m.Data, Origin: push.Origin{Kind: push.OriginParent, ID: pc.p.originID(m.Seq)}})
		}
	}
	if len(expired) > 0 {
		// Nothing to send: the message's time is up.
		if _, err := pc.p.cfg.Store.AckMany(ctx, expired); err != nil {
			return false, fmt.Errorf("delete expired: %w", err)
		}
	}
	for s, b := range batches {
		if len(b) == 0 {
			continue
		}
		emit := func(seq uint64, frame []byte, msgs []push.Message) error {
			return pc.sendFrame(s, seq, frame, msgs)
		}
		_, err := pc.builders[s].Build(pc.seq, b, emit)
		if errors.Is(err, linkproto.ErrTooLarge) || errors.Is(err, linkproto.ErrMalformed) {
			// Build refuses the whole batch for one message the format
			// cannot carry: drop those, keep the rest.
			if b, err = pc.dropUncarriable(ctx, s, b); err == nil {
				_, err = pc.builders[s].Build(pc.seq, b, emit)
			}
		}
		if errors.Is(err, errNoCredit) {
			// What was not sent is read again when credit comes.
			for _, u := range us {
				pc.mark(u)
			}
			return false, nil
		}
		if err != nil {
			return false, err
		}
	}
	return more, nil
}

// sweepSome takes the next up to n UAIDs with messages waiting in the
// store into dirty, those this child serves; the sweep ends at the last.
func (pc *parentConn) sweepSome(n int) error {
	us, end, err := pc.p.cfg.Store.WaitingUAIDs(pc.sweepFrom, n)
	if err != nil {
		return fmt.Errorf("find waiting messages: %w", err)
	}
	if len(us) > 0 {
		next, ok := store.NextUAID(us[len(us)-1])
		end = end || !ok
		pc.sweepFrom = next
	}
	pc.p.mu.Lock()
	mine := us[:0]
	for _, u := range us {
		if i, ok := pc.p.serves[u]; ok && i == pc.idx {
			mine = append(mine, u)
		}
	}
	pc.p.mu.Unlock()
	pc.mu.Lock()
	for _, u := range mine {
		pc.dirty[u] = struct{}{}
	}
	if end {
		pc.sweeping = false
	}
	pc.mu.Unlock()
	return nil
}

// dropUncarriable deletes from the store the messages of b an UPDATE
// cannot carry (logged and counted: they would stall the link for good)
// and returns the others.
func (pc *parentConn) dropUncarriable(ctx context.Context, s int, b []push.Message) ([]push.Message, error) {
	good := b[:0:0]
	bad := map[push.UAID][]uint64{}
	for _, m := range b {
		_, err := pc.builders[s].Build(0, []push.Message{m}, func(uint64, []byte, []push.Message) error { return nil })
		if err != nil {
			pc.p.cfg.Logger.Warn("message the link cannot carry dropped", "child", pc.name, "uaid", m.UAID, "err", err)
			bad[m.UAID] = append(bad[m.UAID], originSeq(m.Origin.ID))
			continue
		}
		good = append(good, m)
	}
	if _, err := pc.p.cfg.Store.AckMany(ctx, bad); err != nil {
		return nil, fmt.Errorf("delete uncarriable messages: %w", err)
	}
	for _, ss := range bad {
		pc.p.m.dropped.Add(float64(len(ss)))
	}
	return good, nil
}

// sendFrame writes one UPDATE on data stream s if the credit allows it,
// and keeps it in flight until acked.
func (pc *parentConn) sendFrame(s int, seq uint64, frame []byte, msgs []push.Message) error {
	raw, _, err := linkproto.ParseFrame(frame)
	if err != nil {
		return err
	}
	size := uint64(len(raw.Payload))
	pc.mu.Lock()
	ok := pc.sentBytes+size <= pc.creditBytes && pc.sentMsgs+uint64(len(msgs)) <= pc.creditMsgs
	pc.mu.Unlock()
	if !ok {
		return errNoCredit
	}
	// Build numbers frames from the sequence it was given; the frames
	// this connection sends are numbered on from pc.seq.
	if seq != pc.seq {
		return fmt.Errorf("frame %d out of sequence (next %d)", seq, pc.seq)
	}
	pc.data[s].SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := pc.data[s].Write(frame); err != nil {
		return readErr(pc.conn, err)
	}
	refs := make([]msgRef, len(msgs))
	for i, m := range msgs {
		refs[i] = msgRef{u: m.UAID, seq: originSeq(m.Origin.ID)}
		pc.sentUpTo[m.UAID] = max(pc.sentUpTo[m.UAID], refs[i].seq)
	}
	pc.inflight = append(pc.inflight, sentFrame{seq: seq, refs: refs})
	pc.seq++
	pc.p.m.sent.Add(float64(len(msgs)))
	pc.p.m.frames.Inc()
	pc.mu.Lock()
	pc.sentBytes += size
	pc.sentMsgs += uint64(len(msgs))
	pc.inflightMsgs += len(msgs)
	pc.mu.Unlock()
	return nil
}

// sendBroadcasts sends the child the broadcast versions on the control
// stream: the whole map first (right after WELCOME and any RESYNC, as the
// sender and this start together), then, at each change, the ids whose
// version differs from what this connection sent. Changes that come while
// a frame is written are sent together in the next. A failed write
// closes the connection; the next one starts with the whole map again.
func (pc *parentConn) sendBroadcasts() {
	var sent map[string]string
	kick(pc.bcKick)
	for {
		select {
		case <-pc.bcKick:
		case <-pc.conn.Done():
			return
		}
		cur := pc.p.cfg.Broadcasts.Versions()
		var diff map[string]string
		for id, v := range cur {
			if old, ok := sent[id]; !ok || old != v {
				if diff == nil {
					diff = map[string]string{}
				}
				diff[id] = v
			}
		}
		if len(diff) == 0 {
			continue
		}
		if len(diff) > linkproto.MaxBroadcasts {
			// The registry holds at most broadcast.MaxIDs, which is
			// MaxBroadcasts; never more in one frame.
			for id := range diff {
				if len(diff) == linkproto.MaxBroadcasts {
					break
				}
				delete(diff, id)
			}
			kick(pc.bcKick)
		}
		if err := pc.ctl.send(&linkproto.Broadcast{Versions: diff}); err != nil {
			if pc.conn.Err() == nil {
				pc.p.cfg.Logger.Warn("broadcasts not sent", "child", pc.name, "err", err)
				closeFor(pc.conn, err, linkproto.CodeInternal)
			}
			return
		}
		pc.p.m.broadcasts.Add(float64(len(diff)))
		if sent == nil {
			sent = make(map[string]string, len(cur))
		}
		maps.Copy(sent, diff)
	}
}

// originID is the origin id the child stores a message under: the
// parent's store epoch and the message's sequence there. Sequences are
// unique only within one store file; with the epoch, a parent whose store
// was started afresh (or salvaged) cannot hand out an id the child
// already keeps for an older message, which it would drop as a duplicate.
func (p *Parent) originID(seq uint64) string {
	return string(binary.BigEndian.AppendUint64(p.epoch[:len(p.epoch):len(p.epoch)], seq))
}

// originSeq is the store sequence in an id originID made.
func originSeq(id string) uint64 {
	return binary.BigEndian.Uint64([]byte(id[len(id)-8:]))
}
