package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/pushrelay/pushrelay/kick"
	"github.com/pushrelay/pushrelay/relay/linkauth"
)

// Config is the daemon's whole configuration. Every field is one key of the
// YAML file, one environment variable (PUSHRELAY_ + upper-case key) and one
// flag (-- + key with dashes); precedence is flag > env > file > default.
type Config struct {
	DataDir       string
	AllowNewStore bool
	// StoreVerifyAlways: store_verify_always.
	StoreVerifyAlways bool
	DeviceListen      string
	EndpointListen    string
	AdminListen       string
	AdminTokenFile    string
	PublicURL         string
	LogLevel          string
	LogFormat         string
	TLSCertFile       string
	TLSKeyFile        string

	// StoreCheckpointInterval, StoreCheckpointBytes:
	// store_checkpoint_interval, store_checkpoint_bytes.
	StoreCheckpointInterval time.Duration
	StoreCheckpointBytes    int64

	HelloTimeout       time.Duration
	PingInterval       time.Duration
	WriteTimeout       time.Duration
	ShutdownTimeout    time.Duration
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
	BatchTokenFile         string
	DeviceMaxConns         int
	DeviceMaxConnsPerIP    int
	EndpointMaxConnsPerIP  int
	MemoryLimit            int64

	STUNListen        string
	STUNAdvertise     string
	STUNRate          int
	WakeCIDRs         string
	WakeNetworks      string
	WakeIdleClose     time.Duration
	WakeInterval      time.Duration
	WakeMaxBackoff    time.Duration
	WakeBindingTTL    time.Duration
	WakeFlushInterval time.Duration
	WakeFreshMax      int
	WakeRate          int
	WakeTargetRate    int

	MegaphoneURL          string
	MegaphoneToken        string
	MegaphoneTokenFile    string
	MegaphonePollInterval time.Duration

	Upstream             string
	UpstreamTTL          time.Duration
	UpstreamBackoffMin   time.Duration
	UpstreamConnectRate  int
	UpstreamSessions     int
	UpstreamPollInterval time.Duration
	UpstreamCAFile       string
	UpstreamTLSPQ        bool

	RelayListen     string
	LinkName        string
	LinkCert        string
	LinkKey         string
	LinkCA          string
	LinkPins        string
	LinkToken       string
	LinkTokenFile   string
	LinkKeepAlive   time.Duration
	LinkIdleTimeout time.Duration

	NodeName              string
	ClusterListen         string
	ClusterAdvertise      string
	Join                  string
	ClusterKey            string
	ClusterKeyringFile    string
	ClusterRejoinInterval time.Duration
	ClusterProbeInterval  time.Duration
	ClusterProbeTimeout   time.Duration
	ClusterSuspicionMult  int
	ClusterPeerListen     string
	ClusterSnapshotEvery  int
	ClusterExpect         int
	ClusterReapAfter      time.Duration
}

// minUpstreamPoll and maxUpstreamPoll bound upstream_poll_interval: each
// poll is a connection upstream, and a poll is what keeps a polled
// device's backlog under autopush's msg_limit (150) and its UAID said
// hello to (autopush forgets one after 60 days).
const (
	minUpstreamPoll = time.Second
	maxUpstreamPoll = 24 * time.Hour
)

// The bounds of store_checkpoint_interval and store_checkpoint_bytes.
// Below 10 ms checkpoints (a bbolt commit: two fdatasyncs and the pages
// the batches dirtied, 6 ms and more on a gateway's flash) would run
// nearly back to back and the write-ahead log would save nothing; past a
// minute the batches a crash leaves to replay, and the memory of the
// transaction that holds them (below), grow with no gain worth it: the
// page rewrites saved level off once a checkpoint spans many batches.
// 64 KiB is a few batches at saturation; 256 MiB is a replay of seconds
// at start, a quarter of what a mips gateway's bbolt can map (1 GiB).
// The open transaction keeps the pages it dirtied in the heap until the
// checkpoint (1.5 bytes of live heap per byte of records, appends of
// 300-byte messages), and a start replays the log in one transaction:
// with memory_limit set, store_checkpoint_bytes is raised past its
// default only within an eighth of it (20 MiB of the default 160 MiB).
const (
	minCheckpointInterval = 10 * time.Millisecond
	maxCheckpointInterval = time.Minute
	minCheckpointBytes    = 64 << 10
	maxCheckpointBytes    = 256 << 20
	defCheckpointBytes    = 4 << 20 // the store's default
)

// minMegaphonePoll is the shortest megaphone_poll_interval: the service is
// shared by every relay of a deployment, and a version a second late is
// not late.
const minMegaphonePoll = time.Second

// setting binds one key to a field of a Config.
type setting struct {
	key  string
	help string
	def  string
	set  func(c *Config, v string) error
	get  func(c *Config) string
}

func (s setting) flagName() string { return strings.ReplaceAll(s.key, "_", "-") }
func (s setting) envName() string  { return "PUSHRELAY_" + strings.ToUpper(s.key) }

func strSetting(key, def, help string, f func(*Config) *string) setting {
	return setting{key: key, def: def, help: help,
		set: func(c *Config, v string) error { *f(c) = v; return nil },
		get: func(c *Config) string { return *f(c) }}
}

func durSetting(key, def, help string, f func(*Config) *time.Duration) setting {
	return setting{key: key, def: def, help: help,
		set: func(c *Config, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil {
				return fmt.Errorf("not a duration (like 5s or 2m)")
			}
			if d <= 0 {
				return fmt.Errorf("must be positive")
			}
			*f(c) = d
			return nil
		},
		get: func(c *Config) string { return f(c).String() }}
}

func intSetting(key, def string, lo, hi int, help string, f func(*Config) *int) setting {
	return setting{key: key, def: def, help: help,
		set: func(c *Config, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("not an integer")
			}
			if n < lo || n > hi {
				return fmt.Errorf("must be between %d and %d", lo, hi)
			}
			*f(c) = n
			return nil
		},
		get: func(c *Config) string { return strconv.Itoa(*f(c)) }}
}

// byteUnits are the suffixes sizeSetting takes, longest first.
var byteUnits = []struct {
	suffix string
	n      int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"kB", 1e3}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9},
	{"B", 1},
}

// parseBytes reads a size: a whole number of bytes, optionally followed by
// B, kB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024).
func parseBytes(v string) (int64, error) {
	num, mult := strings.TrimSpace(v), int64(1)
	for _, u := range byteUnits {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.n
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, errors.New("not a size (like 200MiB, 256MB or 0)")
	}
	return n * mult, nil
}

// formatBytes writes a size back in the largest binary unit that divides it.
func formatBytes(n int64) string {
	for _, u := range []struct {
		suffix string
		n      int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.n == 0 {
			return strconv.FormatInt(n/u.n, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

func sizeSetting(key, def, help string, f func(*Config) *int64) setting {
	return setting{key: key, def: def, help: help,
		set: func(c *Config, v string) error {
			n, err := parseBytes(v)
			if err != nil {
				return err
			}
			*f(c) = n
			return nil
		},
		get: func(c *Config) string { return formatBytes(*f(c)) }}
}

func boolSetting(key, def, help string, f func(*Config) *bool) setting {
	return setting{key: key, def: def, help: help,
		set: func(c *Config, v string) error {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("not a boolean (true, false, 1 or 0)")
			}
			*f(c) = b
			return nil
		},
		get: func(c *Config) string { return strconv.FormatBool(*f(c)) }}
}

// settings lists every key. docs/configuration.md is generated from the
// same table (pushrelay check-config --print-defaults).
var settings = []setting{
	strSetting("data_dir", "./data", "directory for the message store and the endpoint key", func(c *Config) *string { return &c.DataDir }),
	boolSetting("allow_new_store", "false", "start with a new, empty store when pushrelay.db is missing or empty beside existing keys (OpenWrt's sysupgrade keeps endpoint.key, not the store); otherwise such a start is refused", func(c *Config) *bool { return &c.AllowNewStore }),
	boolSetting("store_verify_always", "false", "verify pushrelay.db at every start, before anything is written to it, not only after an unclean stop: for flash suspected of damaging data at rest (a start then reads the whole file: 0.8 s for 1,000,000 waiting messages on this machine, docs/benchmarks.md)", func(c *Config) *bool { return &c.StoreVerifyAlways }),
	durSetting("store_checkpoint_interval", "250ms", "longest the store's write-ahead log collects acknowledged batches before they are committed to pushrelay.db (10ms to 1m): longer rewrites fewer pages of the file (flash wear) but leaves more to replay at the next start after a crash", func(c *Config) *time.Duration { return &c.StoreCheckpointInterval }),
	sizeSetting("store_checkpoint_bytes", "4MiB", "bytes of write-ahead log records that make a checkpoint due before store_checkpoint_interval (64KiB to 256MiB; above 4MiB, at most an eighth of memory_limit): bounds the replay at start and the memory of the transaction that holds the batches", func(c *Config) *int64 { return &c.StoreCheckpointBytes }),
	strSetting("device_listen", ":8080", "address of the device WebSocket listener", func(c *Config) *string { return &c.DeviceListen }),
	strSetting("endpoint_listen", ":8082", "address of the app-server HTTP listener", func(c *Config) *string { return &c.EndpointListen }),
	strSetting("admin_listen", "127.0.0.1:9090", "address of the admin listener (/metrics, /healthz, /readyz, /status, pprof); empty disables", func(c *Config) *string { return &c.AdminListen }),
	strSetting("admin_token_file", "", "file holding the bearer token of the admin listener's broadcast calls (GET /broadcasts, PUT /broadcasts/{id}); empty turns them off", func(c *Config) *string { return &c.AdminTokenFile }),
	strSetting("public_url", "", "base URL of push endpoints as app servers reach them (default: http://<endpoint listen address>)", func(c *Config) *string { return &c.PublicURL }),
	strSetting("tls_cert_file", "", "PEM certificate chain: serve the device (wss) and endpoint (https) listeners over TLS", func(c *Config) *string { return &c.TLSCertFile }),
	strSetting("tls_key_file", "", "PEM private key for tls_cert_file", func(c *Config) *string { return &c.TLSKeyFile }),
	strSetting("log_level", "info", "debug, info, warn or error", func(c *Config) *string { return &c.LogLevel }),
	strSetting("log_format", "text", "text or json", func(c *Config) *string { return &c.LogFormat }),
	durSetting("hello_timeout", "5s", "a device must send hello within this time", func(c *Config) *time.Duration { return &c.HelloTimeout }),
	durSetting("ping_interval", "5m", "WebSocket ping to a device idle this long; no pong within 4s closes it", func(c *Config) *time.Duration { return &c.PingInterval }),
	durSetting("write_timeout", "10s", "bound on each write to a device", func(c *Config) *time.Duration { return &c.WriteTimeout }),
	durSetting("shutdown_timeout", "10s", "how long SIGTERM waits for requests to drain", func(c *Config) *time.Duration { return &c.ShutdownTimeout }),
	durSetting("sweep_interval", "30s", "how often expired messages are deleted", func(c *Config) *time.Duration { return &c.SweepInterval }),
	intSetting("max_frame_bytes", "32768", 1024, 1<<20, "largest WebSocket frame accepted from a device", func(c *Config) *int { return &c.MaxFrameBytes }),
	intSetting("max_data_bytes", "5630", 1, 1<<16, "largest message body accepted from an app server (autopush's limit)", func(c *Config) *int { return &c.MaxDataBytes }),
	intSetting("max_channels_per_uaid", "1000", 1, 1<<20, "channels one device may register", func(c *Config) *int { return &c.MaxChannelsPerUAID }),
	intSetting("max_messages_per_uaid", "1000", 1, 1<<20, "messages kept per device; beyond it the oldest is dropped", func(c *Config) *int { return &c.MaxMessagesPerUAID }),
	intSetting("inflight_window", "100", 1, 10000, "notifications sent to a device before it must ack", func(c *Config) *int { return &c.InflightWindow }),
	intSetting("outbox_bytes", "32768", 4096, 16<<20, "bytes of notifications queued for one device's socket; the rest waits in the store", func(c *Config) *int { return &c.OutboxBytes }),
	intSetting("endpoint_concurrency", "1024", 1, 1<<20, "app-server connections served at once (about 10 KiB each, 18 KiB while a request is read); one more is answered 503 with Retry-After and closed", func(c *Config) *int { return &c.EndpointConcurrency }),
	intSetting("batch_max_messages", "100", 1, 10000, "messages one POST /wpush/batch may carry; its body may take, per message, max_data_bytes in base64 plus 1 KiB", func(c *Config) *int { return &c.BatchMaxMessages }),
	intSetting("batch_concurrency", "4", 1, 1024, "batch bodies read and held at once; one more batch is answered 503 with Retry-After, unread", func(c *Config) *int { return &c.BatchConcurrency }),
	strSetting("batch_token_file", "", "file holding the app-server token (at least 16 characters) that authenticates POST /wpush/batch for v1 endpoints (Authorization: Bearer <token>); empty refuses token batches", func(c *Config) *string { return &c.BatchTokenFile }),
	durSetting("endpoint_request_timeout", "5s", "how long a push waits for the store before it is answered 503 with Retry-After", func(c *Config) *time.Duration { return &c.EndpointRequestTimeout }),
	intSetting("device_max_conns", "10000", 0, 1<<24, "device connections open at once; at the cap the listener stops accepting until one closes (0: no cap)", func(c *Config) *int { return &c.DeviceMaxConns }),
	intSetting("device_max_conns_per_ip", "256", 0, 1<<24, "device connections open at once from one IPv4 address or IPv6 /64; more are closed at once (0: no cap)", func(c *Config) *int { return &c.DeviceMaxConnsPerIP }),
	intSetting("endpoint_max_conns_per_ip", "512", 0, 1<<24, "app-server connections open at once from one IPv4 address or IPv6 /64; more are closed at once (0: no cap)", func(c *Config) *int { return &c.EndpointMaxConnsPerIP }),
	sizeSetting("memory_limit", "160MiB", "soft limit of the Go runtime's memory (like 200MiB; 0: none); GOMEMLIMIT in the environment wins over it", func(c *Config) *int64 { return &c.MemoryLimit }),
	strSetting("stun_listen", ":3478", "UDP address of the STUN listener, where devices prove their wake address and from which wake datagrams are sent; empty disables STUN", func(c *Config) *string { return &c.STUNListen }),
	strSetting("stun_advertise", "", "STUN host:port told to devices (default: the listener's port on the address the device connected to)", func(c *Config) *string { return &c.STUNAdvertise }),
	intSetting("stun_rate", "20", 1, 1<<20, "STUN requests per second accepted from one source address (burst twice that)", func(c *Config) *int { return &c.STUNRate }),
	strSetting("wake_cidrs", "", "comma-separated CIDRs inside which a device's claimed wake address (hello wakeup_hostport) is trusted without STUN; empty trusts none", func(c *Config) *string { return &c.WakeCIDRs }),
	strSetting("wake_networks", "", "ranges per mobile network, trusted like wake_cidrs for devices whose hello names that network: mcc-mnc=CIDR[,CIDR...] joined by ';', e.g. 214-07=10.64.0.0/10", func(c *Config) *string { return &c.WakeNetworks }),
	durSetting("wake_idle_close", "10s", "a device accepted for UDP wake is closed with 4774 after this long without traffic, so it sleeps", func(c *Config) *time.Duration { return &c.WakeIdleClose }),
	durSetting("wake_interval", "10s", "a sleeping device gets one wake datagram per interval; retries start after it and double", func(c *Config) *time.Duration { return &c.WakeInterval }),
	durSetting("wake_max_backoff", "5m", "longest gap between wake retries while messages wait", func(c *Config) *time.Duration { return &c.WakeMaxBackoff }),
	durSetting("wake_binding_ttl", "2m", "a STUN-proven wake address is used for this long after the device's last STUN request from it (devices refresh every quarter of it)", func(c *Config) *time.Duration { return &c.WakeBindingTTL }),
	durSetting("wake_flush_interval", "1h", "how often the freshness of STUN bindings refreshed in place, kept in memory, is written to the store, in one transaction (also at shutdown); a move to a new address is written at once", func(c *Config) *time.Duration { return &c.WakeFlushInterval }),
	intSetting("wake_fresh_max", "100000", 1, 1<<24, "most devices whose binding freshness memory holds between flushes (about 120 bytes each); past it a refresh is written at once and a flush starts", func(c *Config) *int { return &c.WakeFreshMax }),
	intSetting("wake_rate", "1000", 0, 1<<24, "wake datagrams per second across all devices; 0 means unlimited", func(c *Config) *int { return &c.WakeRate }),
	strSetting("megaphone_url", "", "URL of a megaphone-compatible service polled for broadcast versions (GET, answer {\"broadcasts\": {id: version}}); empty polls none", func(c *Config) *string { return &c.MegaphoneURL }),
	strSetting("megaphone_token_file", "", "file holding the token sent to the megaphone service as Authorization: Bearer <token> (one line)", func(c *Config) *string { return &c.MegaphoneTokenFile }),
	strSetting("megaphone_token", "", "the megaphone token itself, when not in megaphone_token_file (it then shows in the config and, as a flag, in ps)", func(c *Config) *string { return &c.MegaphoneToken }),
	durSetting("megaphone_poll_interval", "30s", "how often the megaphone service is polled (at least 1s); after failed polls the wait doubles, up to 5m or the interval if longer", func(c *Config) *time.Duration { return &c.MegaphonePollInterval }),
	strSetting("upstream", "", "ws:// or wss:// URL of an autopush-compatible server (autopush, or another pushrelay) to relay for: devices get its endpoints and this relay holds their sessions with it (in a site: the member that leads holds them, the same upstream on every member); quic://host:port of a parent pushrelay's relay_listen (several, comma-separated, for a parent site's members): one relay link carries all devices (link_* keys; in a site: the member that leads holds it, the whole site one child of the parent under one link_name); empty runs standalone", func(c *Config) *string { return &c.Upstream }),
	strSetting("relay_listen", "", "UDP host:port where child relays connect over the relay link (QUIC, ALPN pushrelay/1; needs link_cert and link_key); in a site: every member listens, the one that leads takes the children and the others refuse them naming it (give children every member's address); empty takes no children", func(c *Config) *string { return &c.RelayListen }),
	strSetting("link_name", "", "this relay's name on the relay link (default: link_cert's name, else the host name); with certificates, the name the certificate carries", func(c *Config) *string { return &c.LinkName }),
	strSetting("link_cert", "", "this relay's link certificate (pushrelay keys issue: NAME.crt); a parent needs one, a child in token mode has none", func(c *Config) *string { return &c.LinkCert }),
	strSetting("link_key", "", "the private key of link_cert (NAME.key)", func(c *Config) *string { return &c.LinkKey }),
	strSetting("link_ca", "", "site CA certificate(s) trusted on the relay link (pushrelay keys ca: ca.crt)", func(c *Config) *string { return &c.LinkCA }),
	strSetting("link_pins", "", "comma-separated public key pins trusted on the relay link (pushrelay keys pin), instead of or besides link_ca", func(c *Config) *string { return &c.LinkPins }),
	strSetting("link_token", "", "shared relay link token (pushrelay keys token): a child proves it instead of a certificate, a parent requires it; it shows in the config and, as a flag, in ps: prefer link_token_file", func(c *Config) *string { return &c.LinkToken }),
	strSetting("link_token_file", "", "file holding the shared relay link token (first line)", func(c *Config) *string { return &c.LinkTokenFile }),
	durSetting("link_keepalive", "15s", "how often a child relay sends its parent a heartbeat on an idle link: it keeps NAT mappings, and a restarted parent answers it with a stateless reset, so an idle child notices the restart within this", func(c *Config) *time.Duration { return &c.LinkKeepAlive }),
	durSetting("link_idle_timeout", "60s", "how long the relay link may carry nothing from the other end before it is given up and the child redials (longer than link_keepalive)", func(c *Config) *time.Duration { return &c.LinkIdleTimeout }),
	durSetting("upstream_ttl", "24h", "TTL given to each notification from the upstream (its frames carry none)", func(c *Config) *time.Duration { return &c.UpstreamTTL }),
	durSetting("upstream_backoff", "5s", "first wait before reconnecting a lost upstream session (jittered, doubling up to 10m)", func(c *Config) *time.Duration { return &c.UpstreamBackoffMin }),
	strSetting("upstream_ca_file", "", "PEM file of CA certificates trusted for a wss:// upstream, in addition to the system's roots (for an upstream with a private CA)", func(c *Config) *string { return &c.UpstreamCAFile }),
	boolSetting("upstream_tls_pq", "true", "offer a wss:// upstream the post-quantum hybrid key exchange X25519MLKEM768 (Go's default); false offers X25519 (and P-256) only, whose smaller handshake leaves each held session some 5 KiB less memory", func(c *Config) *bool { return &c.UpstreamTLSPQ }),
	intSetting("upstream_connect_rate", "100", 1, 1<<20, "upstream session connects per second, all devices together (a register's own connect is not paced)", func(c *Config) *int { return &c.UpstreamConnectRate }),
	intSetting("upstream_sessions", "10000", 1, 1<<24, "device identities that keep an open upstream session (devices connected here first, then the most recently active); the others are polled", func(c *Config) *int { return &c.UpstreamSessions }),
	durSetting("upstream_poll_interval", "15m", "how often each device without a held upstream session is polled (1s to 24h; jittered, spread out)", func(c *Config) *time.Duration { return &c.UpstreamPollInterval }),
	strSetting("node_name", "", "this relay's name on its site (cluster): 1 to 63 letters, digits, dots, dashes and underscores, unique on the site and stable across restarts (its consensus id is derived from it); default: the host name", func(c *Config) *string { return &c.NodeName }),
	strSetting("cluster_listen", "", "host:port (UDP and TCP) of the site's gossip (memberlist) with its peer relays; empty runs alone (docs/cluster.md)", func(c *Config) *string { return &c.ClusterListen }),
	strSetting("cluster_advertise", "", "host:port told to the site's other members, when cluster_listen's is not the one they reach (default: cluster_listen's; with 0.0.0.0, the first private address)", func(c *Config) *string { return &c.ClusterAdvertise }),
	strSetting("join", "", "comma-separated host:port of site members to join (their cluster_listen); joined at start and again by the rejoin loop while one is missing", func(c *Config) *string { return &c.Join }),
	strSetting("cluster_key", "", "the site's gossip key: base64 of 16, 24 or 32 random bytes (head -c 32 /dev/urandom | base64), the same on every member; it shows in the config and, as a flag, in ps: prefer cluster_keyring_file", func(c *Config) *string { return &c.ClusterKey }),
	strSetting("cluster_keyring_file", "", "file of gossip keys, one base64 key a line, the first used to encrypt, all to decrypt; read again every 10s, which is how keys are rotated (docs/cluster.md)", func(c *Config) *string { return &c.ClusterKeyringFile }),
	durSetting("cluster_rejoin_interval", "15s", "how often (±25%) a member joins its seeds and the members it saw fail, while one is missing: how the two sides of a healed partition merge", func(c *Config) *time.Duration { return &c.ClusterRejoinInterval }),
	durSetting("cluster_probe_interval", "400ms", "how often each member probes another for failure detection (a dead member is declared failed in about 5 to 10 of these)", func(c *Config) *time.Duration { return &c.ClusterProbeInterval }),
	durSetting("cluster_probe_timeout", "200ms", "how long a probe waits for its ack before others are asked to probe too (shorter than cluster_probe_interval)", func(c *Config) *time.Duration { return &c.ClusterProbeTimeout }),
	intSetting("cluster_suspicion_mult", "3", 1, 100, "a member that missed its probes is suspected for this many probe intervals (up to twice that while no other member confirms) before it is declared failed, unless it refutes", func(c *Config) *int { return &c.ClusterSuspicionMult }),
	strSetting("cluster_peer_listen", "", "host:port (TCP, TLS) of the site's replicated log between members (default: cluster_listen's host, its port + 1); peers authenticate with the site's keys (link_cert, link_key, link_ca or link_pins)", func(c *Config) *string { return &c.ClusterPeerListen }),
	intSetting("cluster_snapshot_every", "10000", 100, 100000000, "a snapshot of the site's log is recorded (its metadata only: the store is the snapshot) and the log compacted every this many entries, half of them kept for members a little behind; a member further behind, or with an empty disk, is sent the store", func(c *Config) *int { return &c.ClusterSnapshotEvery }),
	intSetting("cluster_expect", "3", 1, 9, "how many members a new site waits for before it forms (the same on every member started for a new site; a member that finds a site joins it whatever this says)", func(c *Config) *int { return &c.ClusterExpect }),
	durSetting("cluster_reap_after", "72h", "a member failed for this long is removed from the site's voters by the leader (it may rejoin later as a new member)", func(c *Config) *time.Duration { return &c.ClusterReapAfter }),
	intSetting("wake_target_rate", "1", 0, 1<<24, "wake datagrams per second to one target (burst 3): a claimed address per IP, a STUN-proven one per address and port; 0 means unlimited", func(c *Config) *int { return &c.WakeTargetRate }),
}

func findSetting(key string) (setting, bool) {
	for _, s := range settings {
		if s.key == key {
			return s, true
		}
	}
	return setting{}, false
}

// configError is a configuration problem, reported on one line.
type configError struct{ msg string }

func (e *configError) Error() string { return "config: " + e.msg }

func cfgErr(format string, args ...any) error { return &configError{fmt.Sprintf(format, args...)} }

// loadConfig composes defaults, the file named by --config (or
// PUSHRELAY_CONFIG), the environment and the flags in args, then validates.
func loadConfig(name string, args []string, getenv func(string) (string, bool), stderr io.Writer) (*Config, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	// Errors are reported by the caller on one line; only -h prints usage.
	fs.SetOutput(io.Discard)
	configFile, _ := getenv("PUSHRELAY_CONFIG")
	configPath := fs.String("config", configFile, "YAML config file")
	flagVals := map[string]*string{}
	for _, s := range settings {
		v := new(string)
		flagVals[s.key] = v
		fs.StringVar(v, s.flagName(), "", s.help+" (default "+strconv.Quote(s.def)+", env "+s.envName()+")")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fmt.Fprintf(stderr, "usage: %s [flags]\n", name)
			fs.PrintDefaults()
			return nil, err
		}
		return nil, cfgErr("%v", err)
	}
	if fs.NArg() > 0 {
		return nil, cfgErr("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	c := &Config{}
	for _, s := range settings {
		if err := s.set(c, s.def); err != nil && s.def != "" {
			panic("bad default for " + s.key)
		}
	}
	if *configPath != "" {
		if err := applyFile(c, *configPath); err != nil {
			return nil, err
		}
	}
	for _, s := range settings {
		// Set is set, even to "": PUSHRELAY_STUN_LISTEN= turns STUN off.
		if v, ok := getenv(s.envName()); ok {
			if err := s.set(c, v); err != nil {
				return nil, cfgErr("%s=%q: %v", s.envName(), v, err)
			}
		}
	}
	for _, s := range settings {
		if set[s.flagName()] {
			v := *flagVals[s.key]
			if err := s.set(c, v); err != nil {
				return nil, cfgErr("--%s %q: %v", s.flagName(), v, err)
			}
		}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func applyFile(c *Config, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return cfgErr("read %s: %v", path, errors.Unwrap(err))
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return cfgErr("%s: %v", path, err)
	}
	if len(doc.Content) == 0 {
		return nil // empty file
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return cfgErr("%s: line %d: want a mapping of keys to values", path, root.Line)
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		s, ok := findSetting(k.Value)
		if !ok {
			return cfgErr("%s: line %d: unknown key %q", path, k.Line, k.Value)
		}
		if v.Kind != yaml.ScalarNode {
			return cfgErr("%s: line %d: %s: want a single value", path, v.Line, k.Value)
		}
		if v.Tag == "!!null" {
			continue
		}
		if err := s.set(c, v.Value); err != nil {
			return cfgErr("%s: line %d: %s %q: %v", path, v.Line, k.Value, v.Value, err)
		}
	}
	return nil
}

// Validate checks what single settings cannot: addresses, the data dir, the
// public URL and enumerations.
// validateCheckpoint checks store_checkpoint_interval and
// store_checkpoint_bytes (see minCheckpointInterval).
func (c *Config) validateCheckpoint() error {
	if d := c.StoreCheckpointInterval; d < minCheckpointInterval || d > maxCheckpointInterval {
		return cfgErr("store_checkpoint_interval %s: must be between %s and %s", d, minCheckpointInterval, maxCheckpointInterval)
	}
	n := c.StoreCheckpointBytes
	if n < minCheckpointBytes || n > maxCheckpointBytes {
		return cfgErr("store_checkpoint_bytes %s: must be between %s and %s", formatBytes(n), formatBytes(minCheckpointBytes), formatBytes(maxCheckpointBytes))
	}
	if c.MemoryLimit > 0 && n > c.MemoryLimit/8 && n > defCheckpointBytes {
		return cfgErr("store_checkpoint_bytes %s: must be at most an eighth of memory_limit %s (the batches between checkpoints are held in memory, 1.5 bytes for each byte of them)", formatBytes(n), formatBytes(c.MemoryLimit))
	}
	return nil
}

func (c *Config) Validate() error {
	for _, a := range []struct{ key, val string }{
		{"device_listen", c.DeviceListen},
		{"endpoint_listen", c.EndpointListen},
		{"admin_listen", c.AdminListen},
	} {
		if a.val == "" && a.key == "admin_listen" {
			continue
		}
		if err := checkListen(a.val); err != nil {
			return cfgErr("%s %q: %v", a.key, a.val, err)
		}
	}
	if c.PublicURL != "" {
		u, err := url.Parse(c.PublicURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return cfgErr("public_url %q: want an absolute http:// or https:// URL", c.PublicURL)
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return cfgErr("log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		return cfgErr("log_format %q: want text or json", c.LogFormat)
	}
	if c.DataDir == "" {
		return cfgErr("data_dir is empty")
	}
	if err := c.validateCheckpoint(); err != nil {
		return err
	}
	if c.STUNListen != "" {
		if err := checkListen(c.STUNListen); err != nil {
			return cfgErr("stun_listen %q: %v", c.STUNListen, err)
		}
	}
	if c.STUNAdvertise != "" {
		if _, port, err := net.SplitHostPort(c.STUNAdvertise); err != nil || port == "" || port == "0" {
			return cfgErr("stun_advertise %q: want host:port", c.STUNAdvertise)
		}
	}
	if _, err := c.wakeRanges(); err != nil {
		return err
	}
	if err := c.validateMegaphone(); err != nil {
		return err
	}
	// The site's checks first: a member's link keys are the site's.
	if err := c.validateCluster(); err != nil {
		return err
	}
	if err := c.validateUpstream(); err != nil {
		return err
	}
	if _, err := c.batchToken(); err != nil {
		return err
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return cfgErr("tls_cert_file and tls_key_file go together")
	}
	if c.TLSCertFile != "" {
		if _, err := c.tlsConfig(); err != nil {
			return err
		}
	}
	if c.AdminTokenFile != "" {
		if c.AdminListen == "" {
			return cfgErr("admin_token_file is set but admin_listen is empty: the broadcast calls are served on the admin listener")
		}
		if _, _, err := c.adminToken(); err != nil {
			return err
		}
	}
	return nil
}

func (c *Config) validateUpstream() error {
	if err := c.validateLink(); err != nil {
		return err
	}
	if c.Upstream == "" || strings.HasPrefix(c.Upstream, "quic://") {
		return nil
	}
	u, err := url.Parse(c.Upstream)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" || u.Fragment != "" {
		return cfgErr("upstream %q: want an absolute ws:// or wss:// URL, or quic://host:port", c.Upstream)
	}
	if c.UpstreamCAFile != "" {
		if u.Scheme != "wss" {
			return cfgErr("upstream_ca_file is set but upstream %q is not wss://", u.Redacted())
		}
		if _, err := c.upstreamTLS(); err != nil {
			return err
		}
	}
	return nil
}

// linkUsed reports whether the relay link is configured, at either end.
func (c *Config) linkUsed() bool {
	return c.RelayListen != "" || strings.HasPrefix(c.Upstream, "quic://") || c.ClusterListen != ""
}

// validateLink checks the relay link's keys: relay_listen and a quic://
// upstream each need them, and they load.
func (c *Config) validateLink() error {
	if addrs, ok := strings.CutPrefix(c.Upstream, "quic://"); ok {
		// Several addresses: a parent site's members (docs/cluster.md).
		for addr := range strings.SplitSeq(addrs, ",") {
			if host, port, err := net.SplitHostPort(strings.TrimSpace(addr)); err != nil || host == "" || port == "" || port == "0" {
				return cfgErr("upstream %q: want quic://host:port[,host:port...]", c.Upstream)
			}
		}
		if c.UpstreamCAFile != "" {
			return cfgErr("upstream_ca_file is for a wss:// upstream; a quic:// upstream trusts link_ca or link_pins")
		}
	}
	if c.LinkIdleTimeout <= c.LinkKeepAlive {
		return cfgErr("link_idle_timeout %s must be longer than link_keepalive %s", c.LinkIdleTimeout, c.LinkKeepAlive)
	}
	if c.RelayListen != "" {
		if _, _, err := net.SplitHostPort(c.RelayListen); err != nil {
			return cfgErr("relay_listen %q: want host:port", c.RelayListen)
		}
		if c.LinkCert == "" {
			return cfgErr("relay_listen needs link_cert and link_key: a parent presents a certificate to its children")
		}
	}
	if !c.linkUsed() {
		for key, v := range map[string]string{"link_cert": c.LinkCert, "link_ca": c.LinkCA, "link_pins": c.LinkPins, "link_token": c.LinkToken, "link_token_file": c.LinkTokenFile} {
			if v != "" {
				return cfgErr("%s is set but neither relay_listen, a quic:// upstream nor cluster_listen is", key)
			}
		}
		return nil
	}
	_, err := c.linkCredentials()
	return err
}

// validateCluster checks the site membership's keys: cluster_listen needs
// a gossip key, and join and the keys are for cluster_listen.
func (c *Config) validateCluster() error {
	if c.ClusterListen == "" {
		for key, v := range map[string]string{"join": c.Join, "cluster_key": c.ClusterKey, "cluster_keyring_file": c.ClusterKeyringFile, "cluster_advertise": c.ClusterAdvertise} {
			if v != "" {
				return cfgErr("%s is set but cluster_listen is not: the site's gossip needs an address of its own", key)
			}
		}
		return nil
	}
	if err := checkListen(c.ClusterListen); err != nil {
		return cfgErr("cluster_listen %q: %v", c.ClusterListen, err)
	}
	if c.ClusterAdvertise != "" {
		if host, port, err := net.SplitHostPort(c.ClusterAdvertise); err != nil || host == "" || port == "" || port == "0" {
			return cfgErr("cluster_advertise %q: want host:port", c.ClusterAdvertise)
		}
	}
	for _, j := range c.joinAddrs() {
		if host, port, err := net.SplitHostPort(j); err != nil || host == "" || port == "" || port == "0" {
			return cfgErr("join %q: want host:port[,host:port...]", j)
		}
	}
	if c.ClusterProbeTimeout >= c.ClusterProbeInterval {
		return cfgErr("cluster_probe_timeout %s must be shorter than cluster_probe_interval %s", c.ClusterProbeTimeout, c.ClusterProbeInterval)
	}
	if _, err := c.nodeName(); err != nil {
		return err
	}
	if _, err := c.clusterKeys(); err != nil {
		return err
	}
	// An upstream (ws://, wss:// or a quic:// relay link) and the relay
	// link's children (relay_listen) are held by one member at a time
	// (docs/cluster.md).
	if c.LinkCert == "" {
		return cfgErr("cluster_listen needs link_cert and link_key (and link_ca or link_pins): the site's members authenticate each other with them")
	}
	_, err := c.peerListen()
	return err
}

// peerListen is cluster_peer_listen, by default cluster_listen's host
// with its port + 1 (memberlist takes the port itself for UDP and TCP).
func (c *Config) peerListen() (string, error) {
	if c.ClusterPeerListen != "" {
		if err := checkListen(c.ClusterPeerListen); err != nil {
			return "", cfgErr("cluster_peer_listen %q: %v", c.ClusterPeerListen, err)
		}
		return c.ClusterPeerListen, nil
	}
	host, port, err := net.SplitHostPort(c.ClusterListen)
	if err != nil {
		return "", cfgErr("cluster_listen %q: %v", c.ClusterListen, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p <= 0 || p >= 65535 {
		return "", cfgErr("cluster_listen %q: with port 0 (or the last), set cluster_peer_listen", c.ClusterListen)
	}
	return net.JoinHostPort(host, strconv.Itoa(p+1)), nil
}

// joinAddrs splits join.
func (c *Config) joinAddrs() []string {
	var out []string
	for j := range strings.SplitSeq(c.Join, ",") {
		if j = strings.TrimSpace(j); j != "" {
			out = append(out, j)
		}
	}
	return out
}

// linkCredentials loads the relay link's keys.
func (c *Config) linkCredentials() (*linkauth.Credentials, error) {
	if (c.LinkCert == "") != (c.LinkKey == "") {
		return nil, cfgErr("link_cert and link_key go together")
	}
	if c.LinkCA == "" && c.LinkPins == "" {
		return nil, cfgErr("the relay link needs link_ca or link_pins: whom to trust at the other end")
	}
	if c.LinkToken != "" && c.LinkTokenFile != "" {
		return nil, cfgErr("link_token and link_token_file: set one")
	}
	tok := c.LinkToken
	if c.LinkTokenFile != "" {
		data, err := os.ReadFile(c.LinkTokenFile)
		if err != nil {
			return nil, cfgErr("link_token_file: %v", err)
		}
		tok, _, _ = strings.Cut(string(data), "\n")
		if tok = strings.TrimSpace(tok); tok == "" {
			return nil, cfgErr("link_token_file %s: empty", c.LinkTokenFile)
		}
	}
	if c.LinkCert == "" && tok == "" {
		return nil, cfgErr("the relay link needs link_cert and link_key, or (a child) link_token")
	}
	var pins []string
	for p := range strings.SplitSeq(c.LinkPins, ",") {
		if p = strings.TrimSpace(p); p != "" {
			pins = append(pins, p)
		}
	}
	creds, err := linkauth.Load(c.LinkCert, c.LinkKey, c.LinkCA, pins, tok)
	if err != nil {
		return nil, cfgErr("relay link keys: %v", err)
	}
	return creds, nil
}

// linkName is the relay's name on the link: link_name, else the name in
// link_cert, else the host name.
func (c *Config) linkName() (string, error) {
	name := c.LinkName
	if name == "" && c.LinkCert != "" {
		cert, err := linkauth.LoadCert(c.LinkCert)
		if err != nil {
			return "", cfgErr("link_cert: %v", err)
		}
		name = linkauth.PeerName([]*x509.Certificate{cert})
	}
	if name == "" {
		name, _ = os.Hostname()
	}
	if !linkauth.ValidName(name) {
		return "", cfgErr("link_name %q: 1 to 63 letters, digits, dots and dashes", name)
	}
	return name, nil
}

// upstreamTLS is the TLS configuration for a wss:// upstream: nil (the
// system roots, Go's key exchanges) without upstream_ca_file and with
// upstream_tls_pq; else the system roots and, with upstream_ca_file, every
// certificate of the file (the system roots none where the system has
// none), and without upstream_tls_pq, X25519 and P-256 only.
func (c *Config) upstreamTLS() (*tls.Config, error) {
	if c.Upstream == "" || (c.UpstreamCAFile == "" && c.UpstreamTLSPQ) {
		return nil, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if !c.UpstreamTLSPQ {
		// X25519MLKEM768's key shares (1.2 KB each way) grow the
		// connection's TLS buffers for good.
		conf.CurvePreferences = []tls.CurveID{tls.X25519, tls.CurveP256}
	}
	if c.UpstreamCAFile == "" {
		return conf, nil
	}
	data, err := os.ReadFile(c.UpstreamCAFile)
	if err != nil {
		return nil, cfgErr("upstream_ca_file: %v", err)
	}
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	n := 0
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, cfgErr("upstream_ca_file %s: certificate %d: %v", c.UpstreamCAFile, n+1, oneLine(err))
		}
		roots.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, cfgErr("upstream_ca_file %s: no PEM certificate in it", c.UpstreamCAFile)
	}
	conf.RootCAs = roots
	return conf, nil
}

func (c *Config) validateMegaphone() error {
	if c.UpstreamPollInterval < minUpstreamPoll || c.UpstreamPollInterval > maxUpstreamPoll {
		return cfgErr("upstream_poll_interval %s: must be from %s to %s", c.UpstreamPollInterval, minUpstreamPoll, maxUpstreamPoll)
	}
	if c.MegaphonePollInterval < minMegaphonePoll {
		return cfgErr("megaphone_poll_interval %s: must be at least %s", c.MegaphonePollInterval, minMegaphonePoll)
	}
	if c.MegaphoneURL == "" {
		if c.MegaphoneToken != "" || c.MegaphoneTokenFile != "" {
			return cfgErr("a megaphone token is set but megaphone_url is not")
		}
		return nil
	}
	u, err := url.Parse(c.MegaphoneURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Fragment != "" {
		return cfgErr("megaphone_url %q: want an absolute http:// or https:// URL", c.MegaphoneURL)
	}
	if u.User != nil {
		return cfgErr("megaphone_url %q: put credentials in megaphone_token_file, not in the URL", u.Redacted())
	}
	_, err = c.megaphoneToken()
	return err
}

// megaphoneToken returns the megaphone token, from megaphone_token or the
// first line of megaphone_token_file.
func (c *Config) megaphoneToken() (string, error) {
	if c.MegaphoneToken != "" && c.MegaphoneTokenFile != "" {
		return "", cfgErr("megaphone_token and megaphone_token_file: set one")
	}
	tok := c.MegaphoneToken
	if c.MegaphoneTokenFile != "" {
		data, err := os.ReadFile(c.MegaphoneTokenFile)
		if err != nil {
			return "", cfgErr("megaphone_token_file: %v", err)
		}
		tok, _, _ = strings.Cut(string(data), "\n")
		tok = strings.TrimSpace(tok)
		if tok == "" {
			return "", cfgErr("megaphone_token_file %s: empty", c.MegaphoneTokenFile)
		}
	}
	if strings.ContainsAny(tok, "\r\n") || strings.TrimSpace(tok) != tok {
		return "", cfgErr("megaphone_token: leading or trailing space or a line break")
	}
	return tok, nil
}

// minAdminToken is the shortest admin token accepted.
const minAdminToken = 16

// adminToken reads the admin token from admin_token_file (surrounding
// whitespace trimmed). open reports that the file may be read by other
// users than its owner. An empty admin_token_file gives "".
func (c *Config) adminToken() (token string, open bool, err error) {
	if c.AdminTokenFile == "" {
		return "", false, nil
	}
	f, err := os.Open(c.AdminTokenFile)
	if err != nil {
		return "", false, cfgErr("admin_token_file: %v", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", false, cfgErr("admin_token_file: %v", err)
	}
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return "", false, cfgErr("admin_token_file: %v", err)
	}
	token = strings.TrimSpace(string(b))
	if len(token) < minAdminToken || strings.ContainsAny(token, " \t\r\n") {
		return "", false, cfgErr("admin_token_file %s: want one token of at least %d characters on one line (make one with: head -c 32 /dev/urandom | base64 > %s; chmod 600 %s)",
			c.AdminTokenFile, minAdminToken, c.AdminTokenFile, c.AdminTokenFile)
	}
	return token, fi.Mode().Perm()&0o077 != 0, nil
}

// tlsConfig loads the certificate, or returns nil when TLS is off.
func (c *Config) tlsConfig() (*tls.Config, error) {
	if c.TLSCertFile == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile)
	if err != nil {
		return nil, cfgErr("tls_cert_file/tls_key_file: %v", oneLine(err))
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", " ") }

func checkListen(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("want host:port or :port")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return errors.New("port must be a number from 0 to 65535")
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		return errors.New("host must be an IP address, localhost or empty")
	}
	return nil
}

// checkDataDir makes sure the data dir exists and is writable.
func checkDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return cfgErr("data_dir %q: %v", dir, errors.Unwrap(err))
	}
	probe, err := os.CreateTemp(dir, ".write-test-*")
	if err != nil {
		return cfgErr("data_dir %q is not writable: %v", dir, errors.Unwrap(err))
	}
	probe.Close()
	os.Remove(probe.Name())
	return nil
}

// dump writes the effective configuration as YAML, in table order.
func (c *Config) dump(w io.Writer) {
	for _, s := range settings {
		v := s.get(c)
		if (s.key == "megaphone_token" || s.key == "cluster_key") && v != "" {
			v = "(set, not shown)"
		}
		fmt.Fprintf(w, "%s: %q\n", s.key, v)
	}
}

// wakeRanges parses wake_cidrs and wake_networks.
func (c *Config) wakeRanges() (kick.Ranges, error) {
	var r kick.Ranges
	var err error
	if r.CIDRs, err = kick.ParseCIDRs(c.WakeCIDRs); err != nil {
		return r, cfgErr("wake_cidrs: %v", err)
	}
	for _, part := range strings.Split(c.WakeNetworks, ";") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		network, cidrs, ok := strings.Cut(part, "=")
		mcc, mnc, ok2 := strings.Cut(strings.TrimSpace(network), "-")
		if !ok || !ok2 || mcc == "" || mnc == "" {
			return r, cfgErr("wake_networks %q: want mcc-mnc=CIDR[,CIDR...]", part)
		}
		p, err := kick.ParseCIDRs(cidrs)
		if err != nil || len(p) == 0 {
			return r, cfgErr("wake_networks %q: want mcc-mnc=CIDR[,CIDR...]", part)
		}
		if r.Networks == nil {
			r.Networks = map[string][]netip.Prefix{}
		}
		key := kick.NetworkKey(mcc, mnc)
		r.Networks[key] = append(r.Networks[key], p...)
	}
	return r, nil
}

// minBatchToken is the shortest batch token taken.
const minBatchToken = 16

// batchToken reads the batch token from batch_token_file (surrounding
// white space removed), or returns nil when none is configured.
func (c *Config) batchToken() ([]byte, error) {
	if c.BatchTokenFile == "" {
		return nil, nil
	}
	b, err := os.ReadFile(c.BatchTokenFile)
	if err != nil {
		return nil, cfgErr("batch_token_file: %v", oneLine(err))
	}
	tok := []byte(strings.TrimSpace(string(b)))
	if len(tok) < minBatchToken || strings.ContainsAny(string(tok), " \t\r\n") {
		return nil, cfgErr("batch_token_file %q: want one token of at least %d characters, no white space inside", c.BatchTokenFile, minBatchToken)
	}
	return tok, nil
}

func (c *Config) dataPath(name string) string { return filepath.Join(c.DataDir, name) }
