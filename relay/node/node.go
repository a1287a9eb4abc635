// Package node assembles one relay from a Config: the store and its keys,
// the broadcast registry and the megaphone poller, the hub, the endpoint
// API, the device listener (WebSocket, behind the admin's device routes),
// the admin listener, waking and STUN. It is what `pushrelay run` runs,
// as a library: New binds every listener (port 0 picks a port, and the
// accessors report the real address), Run serves until its context is done
// and then drains, bounded by Config.ShutdownTimeout, and Close is
// idempotent. Tests run several nodes in one process.
//
// A node owns nothing global: its metrics go to its own registry, its logs
// to Config.Logger, its HTTP handlers to their own muxes. The Go runtime's
// memory limit is the process's, not a node's, so the daemon sets it
// (cmd/pushrelay), not this package.
//
// Goroutines: Run starts one per part (listeners, store sweeps, the hub's
// keepalive, the device poller, waking, STUN, megaphone) and waits for all
// of them before it returns; the parts own and wait for theirs. New starts
// only the store's committer, which Close stops on a node that never ran.
package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushrelay/pushrelay/discovery"
	"github.com/pushrelay/pushrelay/kick"
	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/admin"
	"github.com/pushrelay/pushrelay/relay/broadcast"
	"github.com/pushrelay/pushrelay/relay/endpoint"
	"github.com/pushrelay/pushrelay/relay/link"
	"github.com/pushrelay/pushrelay/relay/linkauth"
	"github.com/pushrelay/pushrelay/relay/linkquic"
	"github.com/pushrelay/pushrelay/relay/listener"
	"github.com/pushrelay/pushrelay/relay/megaphone"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/token"
	"github.com/pushrelay/pushrelay/relay/upstream"
	"github.com/pushrelay/pushrelay/relay/vapid"
	"github.com/pushrelay/pushrelay/relay/wsock"
)

// Config is one relay's configuration, already parsed and checked: files
// named by the daemon's configuration (tokens, certificates) are read by
// the daemon and handed over here as values. Zero values of the parts'
// settings take the parts' defaults; the daemon passes its own defaults.
type Config struct {
	// DataDir holds the store and its keys (state.go). It must exist.
	DataDir string
	// AllowNewStore starts on a new, empty store beside existing keys.
	AllowNewStore bool
	// VerifyStore verifies the store at every start, not only after an
	// unclean stop (store.Options.VerifyAlways).
	VerifyStore bool
	// StoreCheckpointInterval and StoreCheckpointBytes say when the
	// store's write-ahead log is checkpointed into the file
	// (store.Options.CheckpointInterval, CheckpointBytes; 0: the
	// store's defaults).
	StoreCheckpointInterval time.Duration
	StoreCheckpointBytes    int

	// Listen addresses; port 0 picks a free port. Empty device and
	// endpoint addresses mean 127.0.0.1:0; an empty admin address turns
	// the admin listener off, an empty STUN address turns STUN off.
	DeviceListen   string
	EndpointListen string
	AdminListen    string
	STUNListen     string
	// STUNAdvertise is the STUN host:port told to devices (default: the
	// listener's).
	STUNAdvertise string

	// PublicURL is the base of push endpoints (default: the endpoint
	// listener's address, with a warning).
	PublicURL string
	// TLS, when set, serves the device (wss) and endpoint (https)
	// listeners over TLS.
	TLS *tls.Config
	// AdminToken turns on the admin listener's broadcast calls.
	AdminToken string
	// BatchToken authenticates POST /wpush/batch for v1 endpoints.
	BatchToken []byte

	HelloTimeout       time.Duration
	PingInterval       time.Duration
	WriteTimeout       time.Duration
	ShutdownTimeout    time.Duration // default 10s
	SweepInterval      time.Duration
	MaxFrameBytes      int
	MaxDataBytes       int
	MaxChannelsPerUAID int
	MaxMessagesPerUAID int
	InflightWindow     int
	OutboxBytes        int

	EndpointConcurrency    int
	EndpointRequestTimeout time.Duration
	BatchMaxMessages       int
	BatchConcurrency       int
	DeviceMaxConns         int // 0: no cap
	DeviceMaxConnsPerIP    int // 0: no cap
	EndpointMaxConnsPerIP  int // 0: no cap

	STUNRate          int
	WakeRanges        kick.Ranges
	WakeIdleClose     time.Duration
	WakeInterval      time.Duration
	WakeMaxBackoff    time.Duration
	WakeBindingTTL    time.Duration
	WakeFlushInterval time.Duration
	WakeFreshMax      int
	WakeRate          int // wake datagrams per second; 0: unlimited
	WakeTargetRate    int // per target; 0: unlimited

	// Upstream, when set (ws:// or wss://), makes this relay hold its
	// devices' sessions with an autopush-compatible server: endpoints are
	// the upstream's and its notifications are stored and delivered here
	// (relay/upstream). quic://host:port makes it a child of a parent
	// pushrelay over the relay link (relay/link; LinkCredentials
	// required). Empty: standalone, endpoints are this relay's.
	Upstream string
	// UpstreamTLS is used for a wss:// upstream (nil: system roots).
	UpstreamTLS *tls.Config
	// UpstreamTTL is the TTL given to the upstream's notifications (24h).
	UpstreamTTL time.Duration
	// UpstreamBackoffMin and UpstreamBackoffMax bound the reconnect
	// backoff of a held upstream session (5s, 10m).
	UpstreamBackoffMin time.Duration
	UpstreamBackoffMax time.Duration
	// UpstreamConnectRate bounds held sessions' and polls' connects per
	// second (100).
	UpstreamConnectRate int
	// UpstreamSessions bounds the held upstream sessions (10000); the
	// other devices are polled every UpstreamPollInterval (15m).
	UpstreamSessions     int
	UpstreamPollInterval time.Duration

	// RelayListen, when set, makes this relay a parent: it accepts child
	// relays on this UDP address (QUIC, relay/link; LinkCredentials
	// required) and sends them their devices' messages.
	RelayListen string
	// LinkName is this relay's name on the relay link (default "relay").
	LinkName string
	// LinkCredentials are the relay link's keys (linkauth.Load), for
	// both ends.
	LinkCredentials *linkauth.Credentials
	// LinkKeepAlive and LinkIdleTimeout tune the link's transport
	// (linkquic's defaults).
	LinkKeepAlive, LinkIdleTimeout time.Duration

	// MegaphoneURL, when set, is polled for broadcast versions.
	MegaphoneURL          string
	MegaphoneToken        string
	MegaphonePollInterval time.Duration

	// Cluster, when set, is called on each /status for its cluster
	// section: the site membership (cmd/pushrelay's relay/member).
	Cluster func() *admin.ClusterStatus

	// NewSite, when set, makes this relay a member of a site
	// (relay/site, which cmd/pushrelay wires): the writes that decide
	// what devices are sent go through the site's replicated log, so
	// every member serves every device from its own store. It is called
	// once the store is open. Its upstream (ws://, wss:// or quic://) is
	// held by one member at a time, and so are its relay link children
	// (RelayListen: every member listens, the holder takes them).
	NewSite func(SiteParams) (Site, error)

	// Version is reported by /status and the ready lines.
	Version string
	// Logger receives the node's logs (default: discarded).
	Logger *slog.Logger
	// Metrics is the node's registry (default: a new one, with the Go
	// runtime's and the process's collectors).
	Metrics *metrics.Registry
	// OnReady, when set, is called by Run once every part serves and
	// /readyz says 200, before Run waits for its context; it must return
	// promptly.
	OnReady func(*Node)
}

// defaultShutdownTimeout bounds the drain when Config.ShutdownTimeout is 0.
const defaultShutdownTimeout = 10 * time.Second

// ErrClosed is returned by Run on a node that was closed, or ran already.
var ErrClosed = errors.New("node: closed")

// Node is one relay: what New builds and Run serves.
type Node struct {
	cfg     Config
	log     *slog.Logger
	reg     *metrics.Registry
	store   *store.Store
	hub     *relay.Hub
	kick    *kick.Kicker
	stun    *discovery.Server // nil when STUN is off
	udp     *net.UDPConn      // the kicker's socket when STUN is off
	ws      *wsock.Server
	api     *endpoint.API
	admin   *admin.Server
	started time.Time

	// broadcasts holds the broadcast versions, kept in the store: the hub
	// serves them to devices, the admin calls and the megaphone poller
	// set them.
	broadcasts *broadcast.Registry
	megaphone  *megaphone.Poller // nil without megaphone_url
	link       *upstream.Link    // nil without a ws(s):// upstream
	child      *link.Child       // nil without a quic:// upstream, and in a site
	// heldChild is the site's relay link to the parent while this member
	// holds it (a quic:// upstream in a site), else nil.
	heldChild atomic.Pointer[link.Child]
	parent    *link.Parent // nil without relay_listen
	site      Site         // nil outside a site

	listeners map[string]net.Listener
	servers   map[string]*http.Server
	tls       bool // device and endpoint listeners serve TLS
	publicURL string
	ready     atomic.Bool

	// mu guards state and stopRun; Run and Close meet there.
	mu        sync.Mutex
	state     runState
	stopRun   context.CancelCauseFunc
	runDone   chan struct{}
	closeOnce sync.Once
	closeErr  error // the store's close, whoever closed it
}

type runState int

const (
	stateNew runState = iota
	stateRunning
	stateClosed
)

// scheme adds the TLS "s" (http → https, ws → wss) when TLS is on.
func (d *Node) scheme(plain string) string {
	if d.tls {
		return plain + "s"
	}
	return plain
}

// New opens the store and its keys in cfg.DataDir, binds every listener
// and builds every part; nothing runs until Run. On error everything it
// opened is closed again.
func New(cfg Config) (_ *Node, err error) {
	if cfg.DataDir == "" {
		return nil, errors.New("node: DataDir is empty")
	}
	if cfg.DeviceListen == "" {
		cfg.DeviceListen = "127.0.0.1:0"
	}
	if cfg.EndpointListen == "" {
		cfg.EndpointListen = "127.0.0.1:0"
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = defaultShutdownTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	d := &Node{cfg: cfg, log: cfg.Logger, started: time.Now(), reg: cfg.Metrics,
		listeners: map[string]net.Listener{}, servers: map[string]*http.Server{},
		runDone: make(chan struct{})}
	if d.reg == nil {
		d.reg = metrics.NewRegistry().WithProcess()
	}
	// The store and the keys, together (state.go): checked after an
	// unclean stop, never replaced silently.
	var (
		tokens     *token.Codec
		wakeSecret []byte
	)
	d.store, tokens, wakeSecret, err = openState(&cfg, d.reg, d.log)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, d.release())
		}
	}()
	// What the hub and the broadcast registry write: the store, or in a
	// site the site's log in front of it.
	var hubStore SiteWriter = d.store
	if cfg.NewSite != nil {
		var keys KeyPrints
		if keys, err = readKeyPrints(cfg.DataDir); err != nil {
			return nil, err
		}
		d.site, err = cfg.NewSite(SiteParams{Store: d.store, DataDir: cfg.DataDir, Keys: keys, Metrics: d.reg, Logger: d.log.With("component", "site")})
		if err != nil {
			return nil, err
		}
		hubStore = d.site.Writer()
	}
	d.broadcasts, err = broadcast.Open(hubStore, d.reg)
	if err != nil {
		return nil, err
	}
	if d.site != nil {
		d.site.OnBroadcasts(func(m map[string]string) { d.broadcasts.Applied("site", m) })
	}
	if err := d.listen(); err != nil {
		return nil, err
	}
	if cfg.TLS != nil {
		d.tls = true
		for _, name := range []string{"device", "endpoint"} {
			d.listeners[name] = tls.NewListener(d.listeners[name], cfg.TLS)
		}
	}
	publicURL := cfg.PublicURL
	if publicURL == "" {
		publicURL = d.scheme("http") + "://" + displayAddr(d.listeners["endpoint"].Addr())
		d.log.Warn("public_url is not set; endpoints name this host as "+publicURL+", which only local app servers can reach", "public_url", publicURL)
	}
	d.publicURL = publicURL
	if err := d.startWake(wakeSecret); err != nil {
		return nil, err
	}
	var endpoints relay.Endpoints
	linkName := cfg.LinkName
	if linkName == "" {
		linkName = "relay"
	}
	if (strings.HasPrefix(cfg.Upstream, "quic://") || cfg.RelayListen != "") && cfg.LinkCredentials == nil {
		return nil, errors.New("node: the relay link needs its keys (link_cert and link_key, link_ca or link_pins, or link_token)")
	}
	if addr, ok := strings.CutPrefix(cfg.Upstream, "quic://"); ok && d.site != nil {
		// In a site the relay link to the parent is held by one member
		// at a time, as a ws:// upstream is (relay/site, holder.go): a
		// child of its own each time it comes to hold it, writing the
		// link's state (the unregister outbox, forgotten devices)
		// through the site's log. Every member presents the same name:
		// the parent sees one child.
		childStore, ok := hubStore.(link.ChildStore)
		if !ok {
			return nil, errors.New("node: the site's store does not keep the relay link's state")
		}
		childConfig := link.ChildConfig{
			Addr: addr, Name: linkName, Credentials: cfg.LinkCredentials, Store: childStore,
			BackoffMin: cfg.UpstreamBackoffMin, BackoffMax: cfg.UpstreamBackoffMax,
			KeepAlive: cfg.LinkKeepAlive, IdleTimeout: cfg.LinkIdleTimeout, Broadcasts: d.broadcasts,
			Logger: d.log.With("component", "link"), Shared: link.NewChildMetrics(d.reg),
		}
		if _, err := link.NewChild(childConfig); err != nil {
			return nil, err // a bad name or address fails the start, not each holding
		}
		newHolding := func() (Holding, error) {
			c, err := link.NewChild(childConfig)
			if err != nil {
				return nil, err
			}
			return childHolding{c, d}, nil
		}
		endpoints = d.site.UpstreamLink(newHolding, 0, linkName, link.IdentityPrint(linkName, cfg.LinkCredentials))
	} else if addr, ok := strings.CutPrefix(cfg.Upstream, "quic://"); ok {
		d.child, err = link.NewChild(link.ChildConfig{
			Addr: addr, Name: linkName, Credentials: cfg.LinkCredentials, Store: d.store,
			BackoffMin: cfg.UpstreamBackoffMin, BackoffMax: cfg.UpstreamBackoffMax,
			KeepAlive: cfg.LinkKeepAlive, IdleTimeout: cfg.LinkIdleTimeout, Broadcasts: d.broadcasts,
			Logger: d.log.With("component", "link"), Metrics: d.reg,
		})
		if err != nil {
			return nil, err
		}
		endpoints = d.child
	} else if cfg.Upstream != "" && d.site != nil {
		// In a site one member at a time holds the upstream sessions
		// (relay/site, holder.go): a link of its own each time it comes
		// to hold them, writing the link's state through the site's log.
		upStore, ok := hubStore.(upstream.Store)
		if !ok {
			return nil, errors.New("node: the site's store does not keep the upstream link's state")
		}
		shared := upstream.NewMetrics(d.reg)
		newHolding := func() (Holding, error) {
			l, err := upstream.New(upstream.Config{
				URL: cfg.Upstream, TLS: cfg.UpstreamTLS, Store: upStore, TTL: cfg.UpstreamTTL,
				BackoffMin: cfg.UpstreamBackoffMin, BackoffMax: cfg.UpstreamBackoffMax,
				ConnectRate: cfg.UpstreamConnectRate, Broadcasts: d.broadcasts,
				MaxSessions: cfg.UpstreamSessions, PollInterval: cfg.UpstreamPollInterval,
				Logger: d.log.With("component", "upstream"), Shared: shared,
			})
			if err != nil {
				return nil, err
			}
			return linkHolding{l, d.hub}, nil
		}
		if _, err := upstream.New(upstream.Config{URL: cfg.Upstream, Store: upStore, Shared: shared}); err != nil {
			return nil, err // a bad URL fails the start, not each holding
		}
		endpoints = d.site.Upstream(newHolding, 0)
	} else if cfg.Upstream != "" {
		d.link, err = upstream.New(upstream.Config{
			URL: cfg.Upstream, TLS: cfg.UpstreamTLS, Store: d.store, TTL: cfg.UpstreamTTL,
			BackoffMin: cfg.UpstreamBackoffMin, BackoffMax: cfg.UpstreamBackoffMax,
			ConnectRate: cfg.UpstreamConnectRate, Broadcasts: d.broadcasts,
			MaxSessions: cfg.UpstreamSessions, PollInterval: cfg.UpstreamPollInterval,
			Logger: d.log.With("component", "upstream"), Metrics: d.reg,
		})
		if err != nil {
			return nil, err
		}
		endpoints = d.link
	} else {
		endpoints, err = endpoint.NewMinter(tokens, publicURL)
		if err != nil {
			return nil, err
		}
	}
	var (
		stored    func([]store.Message)
		forgot    func(push.UAID, []push.ChannelID)
		elsewhere func(push.UAID) bool
	)
	if cfg.RelayListen != "" {
		var resetKey *[32]byte
		resetKey, err = linkquic.LoadResetKey(filepath.Join(cfg.DataDir, linkquic.ResetKeyFile))
		if err != nil {
			return nil, fmt.Errorf("relay link: %w", err)
		}
		pcfg := link.ParentConfig{
			Listen: cfg.RelayListen, Name: linkName, Credentials: cfg.LinkCredentials, ResetKey: resetKey,
			Store: d.store, Endpoints: endpoints, KeepAlive: cfg.LinkKeepAlive, IdleTimeout: cfg.LinkIdleTimeout,
			Broadcasts: d.broadcasts, Logger: d.log.With("component", "link-parent"), Metrics: d.reg,
		}
		if d.site != nil {
			// In a site every member listens and the one that holds
			// the site's upstream takes the children (relay/site,
			// parent.go), writing their state through the site's log.
			ps, ok := hubStore.(link.ParentStore)
			if !ok {
				return nil, errors.New("node: the site's store does not keep the relay link's children")
			}
			pcfg.Store, pcfg.SiteMember, pcfg.HolderAddr = ps, true, d.site.HolderLinkAddr
		}
		d.parent, err = link.NewParent(pcfg)
		if err != nil {
			return nil, err
		}
		if d.site != nil {
			d.site.LinkParent(d.parent)
		}
		stored, forgot, elsewhere = d.parent.Stored, d.parent.Forgot, d.parent.Serves
	}
	if d.site != nil {
		// Every member decides from its own commit feed whether to wake
		// a device: the one holding its wake binding does; the holder's
		// link parent sends its children theirs.
		if parentStored := stored; parentStored != nil {
			stored = func(ms []store.Message) {
				d.site.Stored(ms)
				parentStored(ms)
			}
		} else {
			stored = d.site.Stored
		}
	}
	var bsrc relay.Broadcasts = d.broadcasts
	switch {
	case d.link != nil:
		// Ids devices ask for that the registry lacks are asked upstream.
		bsrc = d.link.Broadcasts()
	case d.site != nil && cfg.Upstream != "" && !strings.HasPrefix(cfg.Upstream, "quic://"):
		// In a site, through the member that holds the upstream.
		bsrc = d.site.Broadcasts(d.broadcasts)
	}
	d.hub, err = relay.New(relay.Config{
		Store:           hubStore,
		Tokens:          tokens,
		Endpoints:       endpoints,
		CheckKey:        vapid.DecodePublicKey,
		HelloTimeout:    cfg.HelloTimeout,
		PingInterval:    cfg.PingInterval,
		Window:          cfg.InflightWindow,
		OutboxBytes:     cfg.OutboxBytes,
		Waker:           d.kick,
		WakeIdleClose:   cfg.WakeIdleClose,
		SiteWakes:       d.site != nil,
		Broadcasts:      bsrc,
		Stored:          stored,
		Forgot:          forgot,
		ServedElsewhere: elsewhere,
		Logger:          d.log.With("component", "devices"),
		Metrics:         d.reg,
	})
	if err != nil {
		return nil, err
	}
	d.kick.SetPresence(d.hub)
	if d.site != nil {
		if err := d.site.SetWaking(d.kick, d.hub); err != nil {
			return nil, err
		}
	}
	d.api, err = endpoint.New(endpoint.Config{
		Tokens: tokens, Pusher: d.hub, PublicURL: publicURL, MaxData: cfg.MaxDataBytes,
		Concurrency: cfg.EndpointConcurrency, RequestTimeout: cfg.EndpointRequestTimeout,
		Logger: d.log.With("component", "endpoint"), Metrics: d.reg,
		BatchMaxMessages: cfg.BatchMaxMessages, BatchConcurrency: cfg.BatchConcurrency, BatchToken: cfg.BatchToken,
	})
	if err != nil {
		return nil, err
	}
	if err := d.startMegaphone(); err != nil {
		return nil, err
	}
	d.admin = admin.New(d.reg, d.status)
	d.admin.AddCheck("store", d.checkStore)
	if d.site != nil {
		// A member that cannot commit acknowledges nothing: load
		// balancers must send app servers and devices elsewhere.
		d.admin.AddCheck("site", d.site.Check)
	}
	// The upstream or the parent being away does not make this relay
	// unready (its devices are served locally all the same), but /readyz
	// and /status say so.
	if d.link != nil {
		d.admin.AddWarning("upstream", func() error {
			if held, open := d.link.Sessions(); held > 0 && open == 0 {
				return fmt.Errorf("none of the %d held sessions is open: the upstream or the backhaul is down (or they are still connecting)", held)
			}
			return nil
		})
	}
	if d.child != nil {
		d.admin.AddWarning("relay link", func() error {
			if st := d.child.Status(); !st.Connected {
				if st.LastError != "" {
					return fmt.Errorf("not connected to the parent %s: %s", st.Addr, st.LastError)
				}
				return fmt.Errorf("not connected to the parent %s", st.Addr)
			}
			return nil
		})
	} else if d.site != nil && strings.HasPrefix(cfg.Upstream, "quic://") {
		d.admin.AddWarning("relay link", func() error {
			c := d.heldChild.Load()
			if c == nil {
				return nil // another member holds the link
			}
			if st := c.Status(); !st.Connected {
				if st.LastError != "" {
					return fmt.Errorf("not connected to the parent %s: %s", st.Addr, st.LastError)
				}
				return fmt.Errorf("not connected to the parent %s", st.Addr)
			}
			return nil
		})
	}
	if cfg.AdminToken != "" {
		d.admin.ServeBroadcasts(d.broadcasts, cfg.AdminToken)
	}
	return d, nil
}

// makeServers makes the device listener's WebSocket server (its poller
// holds descriptors, so it is made only by Run, which closes it) and the
// HTTP servers.
func (d *Node) makeServers() {
	errLog := log.New(&slogWriter{d.log}, "", 0)
	d.ws = wsock.NewServer(wsock.Options{MaxFrame: int64(d.cfg.MaxFrameBytes), WriteTimeout: d.cfg.WriteTimeout},
		func(c *wsock.Conn) { d.hub.Accept(c) })
	d.servers["device"] = &http.Server{
		Handler:           d.admin.DeviceHandler(d.ws),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          errLog,
	}
	if _, ok := d.listeners["admin"]; ok {
		d.servers["admin"] = &http.Server{Handler: d.admin, ReadHeaderTimeout: 10 * time.Second, ErrorLog: errLog}
	}
}

// Run serves until ctx is done (the daemon's SIGTERM) or Close is called,
// then shuts down gracefully: stop taking requests, let in-flight pushes
// finish, close device sockets with 1001, flush the store, within
// Config.ShutdownTimeout. It returns the first part's failure, if one
// stopped the node; nil after a requested stop. Run may be called once.
func (d *Node) Run(ctx context.Context) (err error) {
	d.mu.Lock()
	if d.state != stateNew {
		d.mu.Unlock()
		return ErrClosed
	}
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	d.state, d.stopRun = stateRunning, stop
	d.mu.Unlock()
	defer close(d.runDone)
	defer func() {
		cerr := d.store.Close()
		if cerr != nil {
			cerr = fmt.Errorf("close store: %w", cerr)
		}
		d.closeErr = cerr
		if err == nil {
			err = cerr
		}
	}()

	d.makeServers()
	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	// The first part to fail stops the daemon; what fails after it (most
	// likely because of it) is not waited for.
	errc := make(chan error, 1)
	start := func(what string, run func() error) {
		wg.Go(func() {
			if err := run(); err != nil {
				err = fmt.Errorf("%s: %w", what, err)
				select {
				case errc <- err:
				default:
					// Not the first failure: it does not change the exit
					// status, but it is not hidden either.
					d.log.Error("after the first failure", "err", err)
				}
			}
		})
	}
	start("endpoint listener", func() error { return d.api.Serve(d.listeners["endpoint"]) })
	for name, srv := range d.servers {
		ln := d.listeners[name]
		start(name+" listener", func() error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	if d.site != nil {
		// The site's leader proposes the expiry sweeps: every member
		// removes the same messages.
		start("site", func() error { return d.site.Run(runCtx) })
	} else {
		start("store", func() error { return d.store.Run(runCtx) })
	}
	start("devices", func() error { return d.hub.Run(runCtx) })
	start("device poller", func() error { return d.ws.Run(runCtx) })
	start("wake", func() error { return d.kick.Run(runCtx) })
	if d.stun != nil {
		start("stun listener", func() error { return d.stun.Run(runCtx) })
	}
	if d.megaphone != nil {
		start("megaphone", func() error { return d.megaphone.Run(runCtx) })
	}
	if d.link != nil {
		start("upstream", func() error { return d.link.Run(runCtx, d.hub) })
	}
	if d.child != nil {
		start("relay link", func() error { return d.child.Run(runCtx, d.hub) })
	}
	if d.parent != nil {
		start("relay link listener", func() error { return d.parent.Run(runCtx) })
	}
	d.setReady(true)
	if d.cfg.OnReady != nil {
		d.cfg.OnReady(d)
	}

	var runErr error
	select {
	case <-ctx.Done():
		d.log.Info("shutting down", "reason", context.Cause(ctx))
	case runErr = <-errc:
		d.log.Error("fatal", "err", runErr)
	}
	d.shutdown()
	cancel()
	wg.Wait()
	d.log.Info("stopped")
	return runErr
}

// Close stops a running node as its context would, and waits for Run to
// return; a node that never ran has everything New opened closed. It is
// idempotent and returns the store's close error every time.
func (d *Node) Close() error {
	d.closeOnce.Do(func() {
		d.mu.Lock()
		was := d.state
		d.state = stateClosed
		d.mu.Unlock()
		if was == stateRunning {
			d.stopRun(ErrClosed)
			<-d.runDone
			return
		}
		d.closeErr = d.release()
	})
	return d.closeErr
}

// release closes what New opened, for a node that did not run: each part
// that exists, the kicker before the store it flushes to.
func (d *Node) release() error {
	d.closeListeners()
	var errs []error
	if d.megaphone != nil {
		errs = append(errs, d.megaphone.Close())
	}
	if d.parent != nil {
		errs = append(errs, d.parent.Close())
	}
	if d.api != nil {
		errs = append(errs, d.api.Close())
	}
	if d.hub != nil {
		errs = append(errs, d.hub.Close())
	}
	if d.kick != nil {
		errs = append(errs, d.kick.Close())
	}
	if err := d.store.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close store: %w", err))
	}
	return errors.Join(errs...)
}

// listen binds every listener behind a guard (relay/listener): accept
// errors are retried, never fatal, and connections are capped.
func (d *Node) listen() error {
	lm := listener.NewMetrics(d.reg)
	for _, l := range []struct {
		name, addr        string
		max, maxPerSource int
	}{
		{"device", d.cfg.DeviceListen, d.cfg.DeviceMaxConns, d.cfg.DeviceMaxConnsPerIP},
		// The endpoint's overall cap is endpoint_concurrency, which the
		// API answers with a 503 app servers understand.
		{"endpoint", d.cfg.EndpointListen, 0, d.cfg.EndpointMaxConnsPerIP},
		{"admin", d.cfg.AdminListen, 0, 0},
	} {
		if l.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			return fmt.Errorf("%s listener: %w", l.name, err)
		}
		d.listeners[l.name] = listener.Wrap(ln, listener.Config{Name: l.name, MaxConns: l.max, MaxPerSource: l.maxPerSource,
			Logger: d.log.With("component", "listener"), Metrics: lm})
	}
	return nil
}

func (d *Node) closeListeners() {
	for _, ln := range d.listeners {
		ln.Close()
	}
	if d.stun != nil {
		d.stun.Close()
	}
	if d.udp != nil {
		d.udp.Close()
	}
}

// startWake sets up waking: keys from the wake secret, the STUN
// listener (the kicker sends from its socket, so NAT mappings the device
// opened let the datagram in) or, with STUN off, a plain UDP socket.
func (d *Node) startWake(secret []byte) error {
	cfg := d.cfg
	keys, err := kick.NewKeys(secret)
	if err != nil {
		return err
	}
	// The STUN server and the kicker need each other; reg is filled in
	// before either runs.
	reg := &wakeRegistry{}
	var sender kick.Sender
	advertise := ""
	if cfg.STUNListen != "" {
		d.stun, err = discovery.Listen(discovery.Config{
			Listen: cfg.STUNListen, Registry: reg,
			Rate: float64(cfg.STUNRate), Burst: 2 * cfg.STUNRate,
			Metrics: d.reg, Logger: d.log.With("component", "stun"),
		})
		if err != nil {
			return fmt.Errorf("stun listener: %w", err)
		}
		sender = d.stun
		advertise = cfg.STUNAdvertise
		if advertise == "" {
			advertise = d.stun.Addr().String()
		}
	} else {
		d.udp, err = net.ListenUDP("udp", nil)
		if err != nil {
			return fmt.Errorf("wake socket: %w", err)
		}
		sender = kick.UDPSender{Conn: d.udp}
	}
	unlimited := func(n int) float64 {
		if n == 0 {
			return -1
		}
		return float64(n)
	}
	var onBound func(push.UAID)
	if d.site != nil {
		onBound = d.site.Bound
	}
	d.kick, err = kick.New(kick.Config{
		Store: d.store, Sender: sender, Keys: keys, Ranges: cfg.WakeRanges, STUNAddr: advertise, OnBound: onBound,
		BindingTTL: cfg.WakeBindingTTL, Interval: cfg.WakeInterval, MaxBackoff: cfg.WakeMaxBackoff,
		Rate: unlimited(cfg.WakeRate), TargetRate: unlimited(cfg.WakeTargetRate),
		FlushInterval: cfg.WakeFlushInterval, MaxFresh: cfg.WakeFreshMax,
		Metrics: d.reg, Logger: d.log.With("component", "wake"),
	})
	if err != nil {
		return err
	}
	reg.k = d.kick
	return nil
}

// startMegaphone makes, with megaphone_url set, the poller that feeds the
// broadcast registry; Run runs it and shutdown closes it.
func (d *Node) startMegaphone() error {
	if d.cfg.MegaphoneURL == "" {
		return nil
	}
	var err error
	d.megaphone, err = megaphone.New(megaphone.Config{
		URL: d.cfg.MegaphoneURL, Token: d.cfg.MegaphoneToken, Interval: d.cfg.MegaphonePollInterval,
		Registry: d.broadcasts, Metrics: d.reg, Logger: d.log.With("component", "megaphone"),
	})
	return err
}

// wakeRegistry hands the STUN server's questions to the kicker.
type wakeRegistry struct{ k *kick.Kicker }

func (r *wakeRegistry) Key(username string) ([]byte, error) { return r.k.Key(username) }
func (r *wakeRegistry) Bind(username string, addr netip.AddrPort, stamp time.Time) error {
	return r.k.Bind(username, addr, stamp)
}

// shutdown drains in order: readiness off, no new requests, in-flight pushes
// finish (each is durable before its 201), device sessions get 1001 and
// their pending acks are written. The store is closed by Run.
func (d *Node) shutdown() {
	d.setReady(false)
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.ShutdownTimeout)
	defer cancel()
	if err := d.api.Shutdown(ctx); err != nil {
		d.log.Warn("drain endpoint listener", "err", err)
		d.api.Close()
	}
	if err := d.servers["device"].Shutdown(ctx); err != nil {
		d.log.Warn("drain device listener", "err", err)
		d.servers["device"].Close()
	}
	logErr := func(what string, err error) {
		if err != nil {
			d.log.Warn(what, "err", err)
		}
	}
	if d.megaphone != nil {
		logErr("close megaphone", d.megaphone.Close())
	}
	if err := d.hub.Shutdown(ctx); err != nil {
		d.log.Warn("close device sessions", "err", err)
	}
	logErr("close endpoint listener", d.api.Close())
	logErr("close device poller", d.ws.Close())
	// STUN first: its last bindings are then in the kicker's final flush.
	if d.stun != nil {
		logErr("close stun listener", d.stun.Close())
	}
	logErr("close wake", d.kick.Close())
	if d.udp != nil {
		logErr("close wake socket", d.udp.Close())
	}
	if srv, ok := d.servers["admin"]; ok {
		if err := srv.Shutdown(ctx); err != nil {
			logErr("drain admin listener", err)
			logErr("close admin listener", srv.Close())
		}
	}
}

// checkStore fails while the store is damaged, or while pushes are refused
// for lack of space. In the second case each call writes a 64 KiB probe in
// the data dir: once it fits, writes resume (SpaceFreed) without waiting
// for a push to get through, which a load balancer watching /readyz would
// never send.
func (d *Node) checkStore() error {
	if err := d.store.Damaged(); err != nil {
		// Logged once by the store; the next start refuses the file with
		// the recovery steps.
		return fmt.Errorf("damaged: %w; restart the relay to have it checked", err)
	}
	since, refused := d.api.DiskFull()
	if since.IsZero() {
		return nil
	}
	if store.ProbeSpace(d.cfg.DataDir, 64<<10) == nil {
		d.api.SpaceFreed()
		return nil
	}
	return fmt.Errorf("disk full since %s (%d pushes refused)", since.UTC().Format(time.RFC3339), refused)
}

func (d *Node) status() admin.Status {
	st := admin.Status{
		Version:     d.cfg.Version,
		Uptime:      time.Since(d.started).Truncate(time.Second).String(),
		Connections: d.hub.Connected(),
		WakePending: d.kick.Pending(),
		Listeners:   map[string]string{},
	}
	if s, err := d.store.Stats(); err == nil {
		st.Devices, st.Channels, st.Waiting = s.Devices, s.Channels, s.Waiting
	}
	for name, ln := range d.listeners {
		st.Listeners[name] = ln.Addr().String()
	}
	if d.stun != nil {
		st.Listeners["stun"] = d.stun.Addr().String() + "/udp"
	}
	if d.link != nil {
		u := &admin.UpstreamStatus{URL: d.link.URL()}
		if pu, err := url.Parse(u.URL); err == nil {
			u.URL = pu.Redacted()
		}
		u.Held, u.Open = d.link.Sessions()
		var lag time.Duration
		u.Polled, lag = d.link.Polled()
		u.PollLag = lag.Round(time.Millisecond).String()
		if s, err := d.store.Stats(); err == nil {
			u.PendingUnregisters = s.PendingUnregisters
		}
		st.Upstream = u
	}
	child := d.child
	if child == nil {
		child = d.heldChild.Load() // in a site: while this member holds the link
	}
	if child != nil || d.parent != nil {
		st.Link = &admin.LinkStatus{}
		if child != nil {
			cs := child.Status()
			st.Link.Parent = &admin.LinkParent{Name: cs.Parent, Addr: cs.Addr, Connected: cs.Connected,
				Since: cs.Since, Acked: cs.Acked, LastError: cs.LastError}
		}
		if d.parent != nil {
			st.Link.Listen = d.parent.Addr().String() + "/udp"
			for _, c := range d.parent.Children() {
				st.Link.Children = append(st.Link.Children, admin.LinkChild(c))
			}
		}
	}
	if d.cfg.Cluster != nil {
		st.Cluster = d.cfg.Cluster()
		if st.Cluster != nil && d.site != nil {
			st.Cluster.Site = d.site.Status()
		}
	}
	return st
}

// Announce prints where to connect, one "name url" line each, so people and
// tests (which bind port 0) can find the listeners; the daemon calls it
// from OnReady.
func (d *Node) Announce(w io.Writer) {
	fmt.Fprintf(w, "pushrelay %s ready (data in %s)\n", d.cfg.Version, d.cfg.DataDir)
	fmt.Fprintf(w, "  devices      %s\n", d.DeviceURL())
	fmt.Fprintf(w, "  app servers  %s/wpush/v1/{token}  (each device gets its endpoint at register)\n", d.publicURL)
	fmt.Fprintf(w, "  endpoint     %s/\n", d.EndpointURL())
	if d.stun != nil {
		fmt.Fprintf(w, "  stun         %s (udp; devices prove wake addresses, wake datagrams come from here)\n", d.stun.Addr())
	}
	if d.parent != nil {
		fmt.Fprintf(w, "  relay link   %s (udp; child relays connect here: upstream quic://…)\n", d.parent.Addr())
	}
	if ln, ok := d.listeners["admin"]; ok {
		fmt.Fprintf(w, "  admin        http://%s/status\n", displayAddr(ln.Addr()))
	}
	d.log.Info("ready", "device", d.listeners["device"].Addr().String(), "endpoint", d.listeners["endpoint"].Addr().String(), "public_url", d.publicURL)
}

// DeviceAddr is the device listener's address, its port resolved.
func (d *Node) DeviceAddr() net.Addr { return d.listeners["device"].Addr() }

// EndpointAddr is the endpoint listener's address, its port resolved.
func (d *Node) EndpointAddr() net.Addr { return d.listeners["endpoint"].Addr() }

// AdminAddr is the admin listener's address, or nil when it is off.
func (d *Node) AdminAddr() net.Addr {
	if ln, ok := d.listeners["admin"]; ok {
		return ln.Addr()
	}
	return nil
}

// STUNAddr is the STUN listener's UDP address; not valid when STUN is off.
func (d *Node) STUNAddr() netip.AddrPort {
	if d.stun == nil {
		return netip.AddrPort{}
	}
	return d.stun.Addr()
}

// DeviceURL is where a local device connects: ws://host:port/ (wss with
// TLS).
func (d *Node) DeviceURL() string {
	return d.scheme("ws") + "://" + displayAddr(d.DeviceAddr()) + "/"
}

// EndpointURL is the endpoint listener's base URL as a local app server
// dials it, without a trailing slash.
func (d *Node) EndpointURL() string {
	return d.scheme("http") + "://" + displayAddr(d.EndpointAddr())
}

// RelayAddr is the relay link's listening address (UDP), nil when this
// relay takes no children.
func (d *Node) RelayAddr() net.Addr {
	if d.parent == nil {
		return nil
	}
	return d.parent.Addr()
}

// PublicURL is the base of the push endpoints handed to devices.
func (d *Node) PublicURL() string { return d.publicURL }

// Store returns the node's store, for tests that look at what it holds.
func (d *Node) Store() *store.Store { return d.store }

// Hub returns the node's hub.
func (d *Node) Hub() *relay.Hub { return d.hub }

// Metrics is the node's registry.
func (d *Node) Metrics() *metrics.Registry { return d.reg }

// Admin is the admin handler (/metrics, /readyz, /status...), to serve or
// call without the admin listener.
func (d *Node) Admin() http.Handler { return d.admin }

// Ready reports what /readyz reports: serving and not shutting down, the
// store neither damaged nor out of space.
func (d *Node) Ready() bool { return d.ready.Load() && d.checkStore() == nil }

// setReady flips /readyz and Ready together.
func (d *Node) setReady(v bool) {
	d.ready.Store(v)
	d.admin.SetReady(v)
}

// displayAddr turns a listener address into one a local client can dial.
func displayAddr(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	host := ta.IP.String()
	if ta.IP == nil || ta.IP.IsUnspecified() {
		host = "localhost"
	}
	return net.JoinHostPort(host, strconv.Itoa(ta.Port))
}

// slogWriter routes net/http's error log (TLS handshake noise, panics in
// handlers) into the structured log.
type slogWriter struct{ l *slog.Logger }

func (w *slogWriter) Write(p []byte) (int, error) {
	w.l.Warn("http server", "msg", string(trimNL(p)))
	return len(p), nil
}

func trimNL(p []byte) []byte {
	for len(p) > 0 && (p[len(p)-1] == '\n' || p[len(p)-1] == '\r') {
		p = p[:len(p)-1]
	}
	return p
}

// Site is this relay's part of its site (nil outside one).
func (d *Node) Site() Site { return d.site }

// Site is a relay's part of its site (relay/site.Site, adapted by
// cmd/pushrelay): the store its hub writes through, and what the node
// runs and reports of it.
type Site interface {
	// Writer is the store the hub and the broadcast registry write
	// through: the site's log in front of the node's store.
	Writer() SiteWriter
	// OnBroadcasts sets fn to hear of the broadcast versions applied
	// from the site's log (broadcast.Registry.Applied). Called before
	// Run.
	OnBroadcasts(fn func(map[string]string))
	// Broadcasts wraps the registry for the hub when the site has an
	// upstream: ids devices name that it lacks are asked of the upstream
	// through the member that holds it (relay.BroadcastWanter).
	Broadcasts(reg relay.Broadcasts) relay.Broadcasts
	// Check says why this member cannot acknowledge writes now (not in
	// a site yet, no leader reachable), or nil: /readyz's check.
	Check() error
	// Status is /status's view of the site's log (nil before this
	// member holds it).
	Status() *admin.SiteStatus
	// SetWaking hands the site the node's kicker and hub (before Run);
	// Stored is the hub's hook on the member's commit feed, from which
	// the site wakes the devices whose wake binding this member holds;
	// Bound hears of every wake binding the kicker accepted
	// (kick.Config.OnBound). Neither blocks.
	SetWaking(k SiteKicker, sessions SiteSessions) error
	Stored(ms []store.Message)
	Bound(u push.UAID)
	Run(ctx context.Context) error
	// Upstream makes the site's upstream on this member: newHolding
	// runs it while the member holds it; the result is what the hub
	// registers through. requestTimeout 0: the upstream's default.
	Upstream(newHolding func() (Holding, error), requestTimeout time.Duration) relay.Endpoints
	// UpstreamLink is Upstream for the relay link to a parent (a
	// quic:// upstream): newHolding runs a relay/link.Child; name and
	// fingerprint are this relay's identity on the link (link.IdentityPrint),
	// which must be the site's to hold it.
	UpstreamLink(newHolding func() (Holding, error), requestTimeout time.Duration, name string, fingerprint uint64) relay.Endpoints
	// LinkParent makes the relay link listener (relay_listen) the site's:
	// it takes children while this member holds (before Run).
	LinkParent(p *link.Parent)
	// HolderLinkAddr is the relay link address of the member that takes
	// children now ("" when unknown).
	HolderLinkAddr() string
}

// SiteKicker is the node's kicker as the site drives it (kick.Kicker).
type SiteKicker interface {
	Wake(u push.UAID, until time.Time)
	WakeAfter(u push.UAID, until time.Time, delay time.Duration)
	Drop(ctx context.Context, u push.UAID) error
	Bindings(fn func(u push.UAID)) error
	DropStored(ctx context.Context, keep func(push.UAID) bool) (int, error)
}

// SiteSessions is the node's hub as the site asks it (relay.Hub).
type SiteSessions interface {
	Accepting(u push.UAID) bool
	Resync()
	CloseReset(u push.UAID)
}

// Holding is one run of a site's upstream on the member that holds it
// (relay/site.Holding): a relay/upstream.Link and the hub it ingests into.
type Holding interface {
	Run(ctx context.Context) error
	Mint(ctx context.Context, r relay.Registration) (string, error)
	Abandon(ctx context.Context, r relay.Registration)
	KickUnregisters()
}

// linkHolding runs a link into the hub.
type linkHolding struct {
	*upstream.Link
	hub *relay.Hub
}

func (h linkHolding) Run(ctx context.Context) error { return h.Link.Run(ctx, h.hub) }

// Want asks the link's upstream for broadcast ids a device named at any
// member (relay.BroadcastWanter; relay/site calls it on the holder).
func (h linkHolding) Want(ids []string) []string {
	if w, ok := h.Link.Broadcasts().(relay.BroadcastWanter); ok {
		return w.Want(ids)
	}
	return nil
}

// childHolding runs the site's relay link to the parent into the hub,
// shown in /status while it runs.
type childHolding struct {
	*link.Child
	d *Node
}

func (h childHolding) Run(ctx context.Context) error {
	h.d.heldChild.Store(h.Child)
	defer h.d.heldChild.CompareAndSwap(h.Child, nil)
	return h.Child.Run(ctx, h.d.hub)
}

// SiteWriter is what the hub and the broadcast registry write through.
type SiteWriter interface {
	relay.Store
	broadcast.Store
}

// SiteParams is what NewSite gets from the node: its store, data dir,
// metrics and logger.
type SiteParams struct {
	Store   *store.Store
	DataDir string
	// Keys are the fingerprints of the data dir's endpoint.key and
	// wake.key: every member of a site must hold the same keys.
	Keys    KeyPrints
	Metrics *metrics.Registry
	Logger  *slog.Logger
}
