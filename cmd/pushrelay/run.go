package main

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
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/pushrelay/pushrelay/discovery"
	"github.com/pushrelay/pushrelay/kick"
	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/admin"
	"github.com/pushrelay/pushrelay/relay/broadcast"
	"github.com/pushrelay/pushrelay/relay/endpoint"
	"github.com/pushrelay/pushrelay/relay/listener"
	"github.com/pushrelay/pushrelay/relay/megaphone"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/token"
	"github.com/pushrelay/pushrelay/relay/vapid"
	"github.com/pushrelay/pushrelay/relay/wsock"
)

func newLogger(cfg *Config, w io.Writer) *slog.Logger {
	var lvl slog.Level
	lvl.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: lvl}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// daemon is one running relay: what runDaemon builds and tears down.
type daemon struct {
	cfg     *Config
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

	listeners map[string]net.Listener
	servers   map[string]*http.Server
	tls       bool // device and endpoint listeners serve TLS
}

// scheme adds the TLS "s" (http → https, ws → wss) when TLS is on.
func (d *daemon) scheme(plain string) string {
	if d.tls {
		return plain + "s"
	}
	return plain
}

// runDaemon runs the relay until ctx is cancelled (SIGTERM, SIGINT), then
// shuts down gracefully: stop taking requests, let in-flight pushes finish,
// close device sockets with 1001, flush the store.
func runDaemon(ctx context.Context, cfg *Config, stdout, stderr io.Writer) (err error) {
	d := &daemon{cfg: cfg, log: newLogger(cfg, stderr), started: time.Now(),
		listeners: map[string]net.Listener{}, servers: map[string]*http.Server{}}
	if err := checkDataDir(cfg.DataDir); err != nil {
		return err
	}
	d.reg = metrics.NewRegistry().WithProcess()
	applyMemoryLimit(cfg.MemoryLimit, os.Getenv, d.log)
	// The store and the keys, together (storecmd.go): checked after an
	// unclean stop, never replaced silently.
	var (
		tokens     *token.Codec
		wakeSecret []byte
	)
	d.store, tokens, wakeSecret, err = openState(cfg, d.reg, d.log)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := d.store.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close store: %w", cerr)
		}
	}()
	d.broadcasts, err = broadcast.Open(d.store, d.reg)
	if err != nil {
		return err
	}
	if err := d.listen(); err != nil {
		d.closeListeners()
		return err
	}
	tlsConf, err := cfg.tlsConfig()
	if err != nil {
		d.closeListeners()
		return err
	}
	if tlsConf != nil {
		d.tls = true
		for _, name := range []string{"device", "endpoint"} {
			d.listeners[name] = tls.NewListener(d.listeners[name], tlsConf)
		}
	}
	publicURL := cfg.PublicURL
	if publicURL == "" {
		publicURL = d.scheme("http") + "://" + displayAddr(d.listeners["endpoint"].Addr())
		d.log.Warn("public_url is not set; endpoints name this host as "+publicURL+", which only local app servers can reach", "public_url", publicURL)
	}
	if err := d.startWake(wakeSecret); err != nil {
		d.closeListeners()
		return err
	}
	minter, err := endpoint.NewMinter(tokens, publicURL)
	if err != nil {
		d.closeListeners()
		return err
	}
	d.hub, err = relay.New(relay.Config{
		Store:         d.store,
		Tokens:        tokens,
		Endpoints:     minter,
		CheckKey:      vapid.DecodePublicKey,
		HelloTimeout:  cfg.HelloTimeout,
		PingInterval:  cfg.PingInterval,
		Window:        cfg.InflightWindow,
		OutboxBytes:   cfg.OutboxBytes,
		Waker:         d.kick,
		WakeIdleClose: cfg.WakeIdleClose,
		Broadcasts:    d.broadcasts,
		Logger:        d.log.With("component", "devices"),
		Metrics:       d.reg,
	})
	if err != nil {
		d.closeListeners()
		return err
	}
	d.kick.SetPresence(d.hub)
	batchToken, err := cfg.batchToken()
	if err != nil {
		d.closeListeners()
		return err
	}
	d.api, err = endpoint.New(endpoint.Config{
		Tokens: tokens, Pusher: d.hub, PublicURL: publicURL, MaxData: cfg.MaxDataBytes,
		Concurrency: cfg.EndpointConcurrency, RequestTimeout: cfg.EndpointRequestTimeout,
		Logger: d.log.With("component", "endpoint"), Metrics: d.reg,
		BatchMaxMessages: cfg.BatchMaxMessages, BatchConcurrency: cfg.BatchConcurrency, BatchToken: batchToken,
	})
	if err != nil {
		d.closeListeners()
		return err
	}
	if err := d.startMegaphone(); err != nil {
		d.closeListeners()
		return err
	}
	d.admin = admin.New(d.reg, d.status)
	d.admin.AddCheck("store", d.checkStore)
	if err := d.serveBroadcastCalls(); err != nil {
		d.closeListeners()
		return err
	}

	errLog := log.New(&slogWriter{d.log}, "", 0)
	d.ws = wsock.NewServer(wsock.Options{MaxFrame: int64(cfg.MaxFrameBytes), WriteTimeout: cfg.WriteTimeout},
		func(c *wsock.Conn) { d.hub.Accept(c) })
	d.servers["device"] = &http.Server{
		Handler:           d.admin.DeviceHandler(d.ws),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          errLog,
	}
	if _, ok := d.listeners["admin"]; ok {
		d.servers["admin"] = &http.Server{Handler: d.admin, ReadHeaderTimeout: 10 * time.Second, ErrorLog: errLog}
	}

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
	start("store", func() error { return d.store.Run(runCtx) })
	start("devices", func() error { return d.hub.Run(runCtx) })
	start("device poller", func() error { return d.ws.Run(runCtx) })
	start("wake", func() error { return d.kick.Run(runCtx) })
	if d.stun != nil {
		start("stun listener", func() error { return d.stun.Run(runCtx) })
	}
	if d.megaphone != nil {
		start("megaphone", func() error { return d.megaphone.Run(runCtx) })
	}
	d.admin.SetReady(true)
	d.announce(stdout, publicURL)

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

// listen binds every listener behind a guard (relay/listener): accept
// errors are retried, never fatal, and connections are capped.
func (d *daemon) listen() error {
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

func (d *daemon) closeListeners() {
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
func (d *daemon) startWake(secret []byte) error {
	cfg := d.cfg
	keys, err := kick.NewKeys(secret)
	if err != nil {
		return err
	}
	ranges, err := cfg.wakeRanges()
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
	d.kick, err = kick.New(kick.Config{
		Store: d.store, Sender: sender, Keys: keys, Ranges: ranges, STUNAddr: advertise,
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
// broadcast registry; runDaemon runs it and shutdown closes it.
func (d *daemon) startMegaphone() error {
	if d.cfg.MegaphoneURL == "" {
		return nil
	}
	token, err := d.cfg.megaphoneToken()
	if err != nil {
		return err
	}
	d.megaphone, err = megaphone.New(megaphone.Config{
		URL: d.cfg.MegaphoneURL, Token: token, Interval: d.cfg.MegaphonePollInterval,
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
// their pending acks are written. The store is closed by runDaemon.
func (d *daemon) shutdown() {
	d.admin.SetReady(false)
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

// serveBroadcastCalls turns on the admin listener's broadcast calls when
// admin_token_file names a token.
func (d *daemon) serveBroadcastCalls() error {
	token, open, err := d.cfg.adminToken()
	if err != nil || token == "" {
		return err
	}
	if open {
		d.log.Warn("admin_token_file may be read by other users: chmod 600 it", "file", d.cfg.AdminTokenFile)
	}
	d.admin.ServeBroadcasts(d.broadcasts, token)
	return nil
}

// checkStore fails while the store is damaged, or while pushes are refused
// for lack of space. In the second case each call writes a 64 KiB probe in
// the data dir: once it fits, writes resume (SpaceFreed) without waiting
// for a push to get through, which a load balancer watching /readyz would
// never send.
func (d *daemon) checkStore() error {
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

func (d *daemon) status() admin.Status {
	st := admin.Status{
		Version:     version,
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
	return st
}

// announce prints where to connect, one "name url" line each, so people and
// tests (which bind port 0) can find the listeners.
func (d *daemon) announce(w io.Writer, publicURL string) {
	fmt.Fprintf(w, "pushrelay %s ready (data in %s)\n", version, d.cfg.DataDir)
	fmt.Fprintf(w, "  devices      %s://%s/\n", d.scheme("ws"), displayAddr(d.listeners["device"].Addr()))
	fmt.Fprintf(w, "  app servers  %s/wpush/v1/{token}  (each device gets its endpoint at register)\n", publicURL)
	fmt.Fprintf(w, "  endpoint     %s://%s/\n", d.scheme("http"), displayAddr(d.listeners["endpoint"].Addr()))
	if d.stun != nil {
		fmt.Fprintf(w, "  stun         %s (udp; devices prove wake addresses, wake datagrams come from here)\n", d.stun.Addr())
	}
	if ln, ok := d.listeners["admin"]; ok {
		fmt.Fprintf(w, "  admin        http://%s/status\n", displayAddr(ln.Addr()))
	}
	d.log.Info("ready", "device", d.listeners["device"].Addr().String(), "endpoint", d.listeners["endpoint"].Addr().String(), "public_url", publicURL)
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
