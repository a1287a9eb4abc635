package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/pushrelay/pushrelay/relay/admin"
	"github.com/pushrelay/pushrelay/relay/linkauth"
	"github.com/pushrelay/pushrelay/relay/member"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/node"
	"github.com/pushrelay/pushrelay/relay/site"
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

// runDaemon runs the relay (relay/node) until ctx is cancelled (SIGTERM,
// SIGINT), then lets it shut down gracefully. What it adds to the node is
// the process's part: the data dir check, the Go runtime's memory limit,
// the files the configuration names, and the ready lines on stdout.
func runDaemon(ctx context.Context, cfg *Config, stdout, stderr io.Writer) error {
	log := newLogger(cfg, stderr)
	// What libraries write with the standard log package (the metrics
	// library's /proc read errors, net/http's) goes through the same
	// structured handler, not bare to stderr.
	slog.SetDefault(log)
	if err := checkDataDir(cfg.DataDir); err != nil {
		return err
	}
	applyMemoryLimit(cfg.MemoryLimit, os.Getenv, log)
	nc, err := cfg.nodeConfig(log)
	if err != nil {
		return err
	}
	nc.OnReady = func(n *node.Node) { n.Announce(stdout) }
	if cfg.ClusterListen == "" {
		n, err := node.New(nc)
		if err != nil {
			return err
		}
		return n.Run(ctx)
	}
	return runMember(ctx, cfg, nc, log, stdout)
}

// runMember runs the relay as a member of its site (cluster_listen): the
// gossip listener is opened first (a port in use fails the start), the
// membership runs once the node serves (it tells the site the node's
// addresses), /status gets its cluster section, and the member leaves
// the site when the node stops. The node writes through the site's
// replicated log (relay/site), which forms or joins the site from what
// the membership shows.
func runMember(ctx context.Context, cfg *Config, nc node.Config, log *slog.Logger, stdout io.Writer) error {
	if nc.Metrics == nil {
		nc.Metrics = metrics.NewRegistry().WithProcess()
	}
	var served atomic.Pointer[node.Node] // set once the node serves
	mc, err := cfg.memberConfig(log, nc.Metrics, func() member.Meta { return nodeMeta(served.Load(), cfg.DeviceMaxConns) })
	if err != nil {
		return err
	}
	site, err := member.New(mc)
	if err != nil {
		return err
	}
	nc.Cluster = func() *admin.ClusterStatus { return clusterStatus(site) }
	if nc.Site, err = cfg.siteConfig(mc.Name, site.Addr(), nc.LinkCredentials, site.Members); err != nil {
		return errors.Join(err, site.Close())
	}
	siteDone := make(chan error, 1)
	var started atomic.Bool
	nc.OnReady = func(n *node.Node) {
		n.Announce(stdout)
		fmt.Fprintf(stdout, "  cluster      %s (udp and tcp; member %s of the site: others --join here)\n", site.Addr(), site.Name())
		fmt.Fprintf(stdout, "  site log     %s (udp, quic: the replicated log between members)\n", nc.Site.Listen)
		served.Store(n)
		started.Store(true)
		go func() { siteDone <- site.Run(ctx) }()
	}
	n, err := node.New(nc)
	if err != nil {
		return errors.Join(err, site.Close())
	}
	err = n.Run(ctx)
	cerr := site.Close()
	if started.Load() {
		cerr = <-siteDone
	}
	return errors.Join(err, cerr)
}

// siteConfig translates the cluster keys into the site's: the replicated
// log's listener, the site's keys (the link's credentials), how many
// members a new site waits for and when a failed one is removed. A
// wildcard listener is advertised at the host the gossip advertises
// (gossip, its address).
func (c *Config) siteConfig(name, gossip string, creds *linkauth.Credentials, members func() []member.Info) (*site.Config, error) {
	listen, err := c.peerListen()
	if err != nil {
		return nil, err
	}
	var advertise string
	if host, port, _ := net.SplitHostPort(listen); host == "" || net.ParseIP(host).IsUnspecified() {
		if ghost, _, err := net.SplitHostPort(gossip); err == nil {
			advertise = net.JoinHostPort(ghost, port)
		}
	}
	server, err := creds.ServerTLS()
	if err != nil {
		return nil, cfgErr("cluster: the site's keys: %v", err)
	}
	return &site.Config{
		Name: name, Listen: listen, Advertise: advertise, ServerTLS: server, ClientTLS: creds.ClientTLS(),
		Members: members, Expect: c.ClusterExpect, ReapAfter: c.ClusterReapAfter,
	}, nil
}

// memberConfig translates the cluster keys into the membership's
// configuration; meta tells the site about this relay.
func (c *Config) memberConfig(log *slog.Logger, reg *metrics.Registry, meta func() member.Meta) (member.Config, error) {
	name, err := c.nodeName()
	if err != nil {
		return member.Config{}, err
	}
	keys, err := c.clusterKeys()
	if err != nil {
		return member.Config{}, err
	}
	t := member.LANTiming()
	t.ProbeInterval = c.ClusterProbeInterval
	t.ProbeTimeout = c.ClusterProbeTimeout
	t.SuspicionMult = c.ClusterSuspicionMult
	return member.Config{
		Name:           name,
		Listen:         c.ClusterListen,
		Advertise:      c.ClusterAdvertise,
		Join:           c.joinAddrs(),
		Keys:           keys,
		KeyringFile:    c.ClusterKeyringFile,
		Meta:           meta,
		Timing:         t,
		RejoinInterval: c.ClusterRejoinInterval,
		Logger:         log.With("component", "cluster"),
		Metrics:        reg,
	}, nil
}

// nodeMeta is what this relay tells its site: its addresses, version and
// device connections. The UAID digests and wake bindings are left for
// when the site routes wakes (the node does not list them yet).
func nodeMeta(n *node.Node, maxConns int) member.Meta {
	md := member.Meta{Version: version}
	if n == nil {
		return md
	}
	if st := n.Site(); st != nil {
		md.RaftAddr, md.InSite = st.Addr(), st.InSite()
	}
	if a := n.RelayAddr(); a != nil {
		md.LinkAddr = a.String()
	}
	if a := n.AdminAddr(); a != nil {
		md.AdminAddr = a.String()
	}
	conns := n.Hub().Connected()
	md.Sockets = uint64(conns)
	if maxConns > 0 {
		md.Load = uint32(min(1000, conns*1000/maxConns))
	}
	return md
}

// clusterStatus is /status's cluster section.
func clusterStatus(m *member.Member) *admin.ClusterStatus {
	cs := &admin.ClusterStatus{Name: m.Name(), Addr: m.Addr(), Keys: m.Keys(), Members: []admin.ClusterMember{}}
	for _, in := range m.Members() {
		cs.Members = append(cs.Members, admin.ClusterMember{
			Name: in.Name, Addr: in.Addr, State: in.State.String(), Since: in.Since.UTC().Format(time.RFC3339Nano),
			Version: in.Meta.Version, LinkAddr: in.Meta.LinkAddr, AdminAddr: in.Meta.AdminAddr,
			Load: in.Meta.Load, Sockets: in.Meta.Sockets, WakeBindings: in.Meta.WakeBindings,
		})
	}
	return cs
}

// nodeConfig translates the daemon's configuration into the node's,
// reading the files it names.
func (c *Config) nodeConfig(log *slog.Logger) (node.Config, error) {
	tlsConf, err := c.tlsConfig()
	if err != nil {
		return node.Config{}, err
	}
	batchToken, err := c.batchToken()
	if err != nil {
		return node.Config{}, err
	}
	ranges, err := c.wakeRanges()
	if err != nil {
		return node.Config{}, err
	}
	upstreamTLS, err := c.upstreamTLS()
	if err != nil {
		return node.Config{}, err
	}
	var (
		linkCreds *linkauth.Credentials
		linkName  string
	)
	if c.linkUsed() {
		if linkCreds, err = c.linkCredentials(); err != nil {
			return node.Config{}, err
		}
		if linkName, err = c.linkName(); err != nil {
			return node.Config{}, err
		}
	}
	var megaphoneToken string
	if c.MegaphoneURL != "" {
		if megaphoneToken, err = c.megaphoneToken(); err != nil {
			return node.Config{}, err
		}
	}
	adminToken, open, err := c.adminToken()
	if err != nil {
		return node.Config{}, err
	}
	if open {
		log.Warn("admin_token_file may be read by other users: chmod 600 it", "file", c.AdminTokenFile)
	}
	return node.Config{
		DataDir:       c.DataDir,
		AllowNewStore: c.AllowNewStore,

		DeviceListen:   c.DeviceListen,
		EndpointListen: c.EndpointListen,
		AdminListen:    c.AdminListen,
		STUNListen:     c.STUNListen,
		STUNAdvertise:  c.STUNAdvertise,
		PublicURL:      c.PublicURL,
		TLS:            tlsConf,
		AdminToken:     adminToken,
		BatchToken:     batchToken,

		HelloTimeout:       c.HelloTimeout,
		PingInterval:       c.PingInterval,
		WriteTimeout:       c.WriteTimeout,
		ShutdownTimeout:    c.ShutdownTimeout,
		SweepInterval:      c.SweepInterval,
		MaxFrameBytes:      c.MaxFrameBytes,
		MaxDataBytes:       c.MaxDataBytes,
		MaxChannelsPerUAID: c.MaxChannelsPerUAID,
		MaxMessagesPerUAID: c.MaxMessagesPerUAID,
		InflightWindow:     c.InflightWindow,
		OutboxBytes:        c.OutboxBytes,

		EndpointConcurrency:    c.EndpointConcurrency,
		EndpointRequestTimeout: c.EndpointRequestTimeout,
		BatchMaxMessages:       c.BatchMaxMessages,
		BatchConcurrency:       c.BatchConcurrency,
		DeviceMaxConns:         c.DeviceMaxConns,
		DeviceMaxConnsPerIP:    c.DeviceMaxConnsPerIP,
		EndpointMaxConnsPerIP:  c.EndpointMaxConnsPerIP,

		STUNRate:          c.STUNRate,
		WakeRanges:        ranges,
		WakeIdleClose:     c.WakeIdleClose,
		WakeInterval:      c.WakeInterval,
		WakeMaxBackoff:    c.WakeMaxBackoff,
		WakeBindingTTL:    c.WakeBindingTTL,
		WakeFlushInterval: c.WakeFlushInterval,
		WakeFreshMax:      c.WakeFreshMax,
		WakeRate:          c.WakeRate,
		WakeTargetRate:    c.WakeTargetRate,

		MegaphoneURL:          c.MegaphoneURL,
		MegaphoneToken:        megaphoneToken,
		MegaphonePollInterval: c.MegaphonePollInterval,

		Upstream:             c.Upstream,
		UpstreamTLS:          upstreamTLS,
		UpstreamTTL:          c.UpstreamTTL,
		UpstreamBackoffMin:   c.UpstreamBackoffMin,
		UpstreamConnectRate:  c.UpstreamConnectRate,
		UpstreamSessions:     c.UpstreamSessions,
		UpstreamPollInterval: c.UpstreamPollInterval,

		RelayListen:     c.RelayListen,
		LinkName:        linkName,
		LinkCredentials: linkCreds,
		LinkKeepAlive:   c.LinkKeepAlive,
		LinkIdleTimeout: c.LinkIdleTimeout,

		Version: version,
		Logger:  log,
		Metrics: nil, // the node's own, with the process collectors
	}, nil
}
