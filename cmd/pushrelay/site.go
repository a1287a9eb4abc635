//go:build !nosite

package main

// The relay as a member of a site (cluster_listen): the membership
// (relay/member, memberlist) and the replicated log (relay/site,
// relay/consensus, hashicorp/raft). Builds with the tag nosite leave them out
// (nosite.go); make cross builds them in, within the gateways' 14 MiB
// budget (docs/benchmarks.md, "Gateway builds: room for the site").

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/admin"
	"github.com/pushrelay/pushrelay/relay/link"
	"github.com/pushrelay/pushrelay/relay/linkauth"
	"github.com/pushrelay/pushrelay/relay/member"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/node"
	pushtypes "github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/site"
	"github.com/pushrelay/pushrelay/relay/store"
)

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
	var (
		served atomic.Pointer[node.Node] // set once the node serves
		part   atomic.Pointer[site.Site] // set once the node made it
	)
	mc, err := cfg.memberConfig(log, nc.Metrics, func() member.Meta {
		return nodeMeta(served.Load(), part.Load(), cfg.DeviceMaxConns)
	})
	if err != nil {
		return err
	}
	mem, err := member.New(mc)
	if err != nil {
		return err
	}
	nc.Cluster = func() *admin.ClusterStatus { return clusterStatus(mem, part.Load()) }
	sc, err := cfg.siteConfig(mc.Name, mem.Addr(), nc.LinkCredentials, mem.Members)
	if err != nil {
		return errors.Join(err, mem.Close())
	}
	nc.NewSite = func(p node.SiteParams) (node.Site, error) {
		c := *sc
		c.Store, c.Dir, c.Metrics, c.Logger = p.Store, p.DataDir, p.Metrics, p.Logger
		c.Keys = site.KeyPrints{Endpoint: p.Keys.Endpoint, Wake: p.Keys.Wake}
		s, err := site.New(c)
		if err != nil {
			return nil, err
		}
		part.Store(s)
		return siteAdapter{s}, nil
	}
	memDone := make(chan error, 1)
	var started atomic.Bool
	nc.OnReady = func(n *node.Node) {
		n.Announce(stdout)
		fmt.Fprintf(stdout, "  cluster      %s (udp and tcp; member %s of the site: others --join here)\n", mem.Addr(), mem.Name())
		fmt.Fprintf(stdout, "  site log     %s (tcp, tls: the replicated log between members)\n", sc.Listen)
		served.Store(n)
		started.Store(true)
		go func() { memDone <- mem.Run(ctx) }()
	}
	n, err := node.New(nc)
	if err != nil {
		return errors.Join(err, mem.Close())
	}
	err = n.Run(ctx)
	cerr := mem.Close()
	if started.Load() {
		cerr = <-memDone
	}
	return errors.Join(err, cerr)
}

// siteAdapter is relay/site's Site as the node runs it (node.Site).
type siteAdapter struct{ s *site.Site }

func (a siteAdapter) Writer() node.SiteWriter                          { return a.s.Store() }
func (a siteAdapter) OnBroadcasts(fn func(map[string]string))          { a.s.OnBroadcasts(fn) }
func (a siteAdapter) Broadcasts(reg relay.Broadcasts) relay.Broadcasts { return a.s.Broadcasts(reg) }
func (a siteAdapter) Run(ctx context.Context) error                    { return a.s.Run(ctx) }
func (a siteAdapter) Stored(ms []store.Message)                        { a.s.Stored(ms) }
func (a siteAdapter) Bound(u pushtypes.UAID)                           { a.s.Bound(u) }
func (a siteAdapter) SetWaking(k node.SiteKicker, sess node.SiteSessions) error {
	return a.s.SetWaking(k, sess)
}

// Upstream is the site's upstream, held by one member at a time.
func (a siteAdapter) Upstream(newHolding func() (node.Holding, error), timeout time.Duration) relay.Endpoints {
	return a.s.Upstream(func() (site.Holding, error) { return newHolding() }, timeout)
}

// UpstreamLink is the site's relay link to a parent, held by one member
// at a time.
func (a siteAdapter) UpstreamLink(newHolding func() (node.Holding, error), timeout time.Duration, name string, fingerprint uint64) relay.Endpoints {
	return a.s.UpstreamLink(func() (site.Holding, error) { return newHolding() }, timeout, site.LinkIdentity{Name: name, Print: fingerprint})
}

// LinkParent makes the relay link listener the site's.
func (a siteAdapter) LinkParent(p *link.Parent) { a.s.LinkParent(p) }

// HolderLinkAddr is the link address of the member that takes children.
func (a siteAdapter) HolderLinkAddr() string { return a.s.HolderLinkAddr() }

// Check: a member that cannot commit acknowledges nothing, and load
// balancers must send app servers and devices elsewhere.
func (a siteAdapter) Check() error {
	if why := a.s.KeysRefused(); why != "" {
		return errors.New(why)
	}
	if why := a.s.LinkRefused(); why != "" {
		return errors.New(why)
	}
	switch {
	case !a.s.InSite():
		return errors.New("not in a site yet: waiting for cluster_expect members, or to be added by the leader")
	case a.s.Status().Leader == 0:
		return errors.New("no leader: this member cannot reach a majority of the site")
	}
	return nil
}

// Status is /status's view of the site's log.
func (a siteAdapter) Status() *admin.SiteStatus {
	if !a.s.InSite() {
		return nil
	}
	cs := a.s.Status()
	hex := func(id uint64) string {
		if id == 0 {
			return "none"
		}
		return fmt.Sprintf("%016x", id)
	}
	ss := &admin.SiteStatus{ID: hex(cs.ID), Leader: hex(cs.Leader), State: cs.State, Term: cs.Term,
		Commit: cs.Commit, Applied: cs.Applied, Voters: []string{}}
	for _, v := range cs.Voters {
		ss.Voters = append(ss.Voters, hex(v))
	}
	if a.s.HasUpstream() {
		h, _ := a.s.Holder()
		ss.Holder, ss.Holding = hex(h), a.s.Holding()
	}
	for _, p := range cs.Peers {
		ss.Peers = append(ss.Peers, admin.SitePeer{ID: hex(p.ID), Addr: p.Addr, Match: p.Match,
			Lag: cs.Commit - min(p.Match, cs.Commit), State: p.State, Active: p.Active})
	}
	return ss
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
		SnapshotEvery: uint64(max(c.ClusterSnapshotEvery, 0)),
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
		// Sessions come and go: the others see this member's socket
		// digest within about 2 s (sent only when it changed).
		MetaRefresh:    2 * time.Second,
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

// nodeMeta is what this relay tells its site: its addresses, version,
// device connections (and a digest of their UAIDs: a member that holds a
// device's wake binding does not wake it while it probably has a session
// here), the wake bindings it holds, and its keys' fingerprints.
func nodeMeta(n *node.Node, s *site.Site, maxConns int) member.Meta {
	md := member.Meta{Version: version}
	if s != nil {
		md.RaftAddr, md.InSite = s.Addr(), s.InSite()
		md.WakeDigest, md.WakeBindings = s.WakeDigest()
		k := s.Keys()
		md.EndpointKey, md.WakeKey = k.Endpoint, k.Wake
	}
	if n == nil {
		return md
	}
	sd := member.NewDigest(0)
	n.Hub().EachSession(func(u pushtypes.UAID) { sd.Add(u.String()) })
	md.SocketDigest = sd
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
func clusterStatus(m *member.Member, s *site.Site) *admin.ClusterStatus {
	cs := &admin.ClusterStatus{Name: m.Name(), Addr: m.Addr(), Keys: m.Keys(), Members: []admin.ClusterMember{}}
	if s != nil {
		cs.KeysRefused = s.KeysRefused()
	}
	fp := func(p uint64) string {
		if p == 0 {
			return ""
		}
		return fmt.Sprintf("%016x", p)
	}
	for _, in := range m.Members() {
		cs.Members = append(cs.Members, admin.ClusterMember{
			Name: in.Name, Addr: in.Addr, State: in.State.String(), Since: in.Since.UTC().Format(time.RFC3339Nano),
			Version: in.Meta.Version, LinkAddr: in.Meta.LinkAddr, AdminAddr: in.Meta.AdminAddr,
			Load: in.Meta.Load, Sockets: in.Meta.Sockets, WakeBindings: in.Meta.WakeBindings,
			EndpointKey: fp(in.Meta.EndpointKey), WakeKey: fp(in.Meta.WakeKey),
		})
	}
	return cs
}

// clusterKeys returns cluster_key as the one key, or nil with
// cluster_keyring_file (the member reads and watches the file itself),
// after checking the file's keys.
func (c *Config) clusterKeys() ([][]byte, error) {
	switch {
	case c.ClusterKey != "" && c.ClusterKeyringFile != "":
		return nil, cfgErr("cluster_key and cluster_keyring_file: set one")
	case c.ClusterKey != "":
		k, err := member.ParseKey(c.ClusterKey)
		if err != nil {
			return nil, cfgErr("cluster_key: %v", err)
		}
		return [][]byte{k}, nil
	case c.ClusterKeyringFile != "":
		if _, err := member.ReadKeyring(c.ClusterKeyringFile); err != nil {
			return nil, cfgErr("cluster_keyring_file: %v", strings.TrimPrefix(err.Error(), "member: "))
		}
		return nil, nil
	}
	return nil, cfgErr("cluster_listen needs cluster_key or cluster_keyring_file: the site's gossip is always encrypted (make a key with: head -c 32 /dev/urandom | base64)")
}

// nodeName is the relay's name on its site: node_name, else the host
// name.
func (c *Config) nodeName() (string, error) {
	name := c.NodeName
	if name == "" {
		name, _ = os.Hostname()
	}
	if !member.ValidName(name) {
		return "", cfgErr("node_name %q: 1 to 63 letters, digits, dots, dashes and underscores (set node_name when the host name is not)", name)
	}
	return name, nil
}
