package member

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pushrelay/pushrelay/relay/metrics"
)

// Config configures a Member. Name, Listen and Keys are required; the
// rest have defaults (Validate fills them in a copy).
type Config struct {
	// Name is this member's stable name on the site (node_name): 1 to 63
	// letters, digits, dots, dashes and underscores, unique on the site.
	Name string
	// Listen is the gossip address, host:port, for both UDP and TCP
	// (cluster_listen). Port 0 picks a free port (the same for both).
	Listen string
	// Advertise is the host:port told to the others, when it differs
	// from Listen's (NAT, or Listen on 0.0.0.0); default: Listen's, with
	// an unspecified host replaced by the machine's first private IP.
	Advertise string
	// Join are seeds, host:port, joined at Run and by the rejoin loop
	// (join). Empty starts a site of one that others join.
	Join []string
	// Keys are the gossip keys (AES-128, -192 or -256: 16, 24 or 32
	// bytes); the first encrypts, all are tried to decrypt. Gossip is
	// always encrypted and authenticated: at least one key is required.
	Keys [][]byte
	// KeyringFile, when set, holds the keys instead (ReadKeyring's
	// format: one base64 key a line, the first primary) and is read
	// again every KeyringCheck: a change is installed while running,
	// which is how keys are rotated (docs/cluster.md).
	KeyringFile  string
	KeyringCheck time.Duration

	// Meta returns what this member tells the others (addresses, load,
	// device counts and digests). It is called on the Member's own
	// goroutine every MetaRefresh, and after UpdateMeta; Name and RaftID
	// are filled in when empty. Nil reports only those two.
	Meta func() Meta
	// MetaInterval is the shortest time between two metadata updates
	// (each is an alive broadcast to the site), MetaRefresh how often Meta
	// is polled for a change without UpdateMeta.
	MetaInterval time.Duration
	MetaRefresh  time.Duration

	// Events receives membership events on a goroutine of the Member's,
	// in order (see Handler). Nil ignores them.
	Events Handler
	// EventQueue bounds the events waiting for Events (256); past it new
	// events are dropped and counted, and Events gets one Resync once
	// there is room again.
	EventQueue int

	// Timing tunes failure detection and gossip (LANTiming by default).
	Timing Timing

	// RejoinInterval is how often (jittered by ±25%) the Member joins its
	// seeds and the members it saw fail, while one of them is missing:
	// memberlist alone does not merge two sides of a healed partition.
	// Negative turns the loop off (tests show what it is for).
	RejoinInterval time.Duration
	// ReapAfter is how long a failed member is kept (and chased by the
	// rejoin loop) before it is forgotten; a left member is forgotten
	// after it too, but never chased.
	ReapAfter time.Duration
	// LeaveTimeout bounds Close's graceful leave (the broadcast of the
	// leave); Close then shuts down regardless.
	LeaveTimeout time.Duration

	// Faults, when set, routes this member's traffic through a fault
	// injector (tests cut and heal links between named members).
	Faults *Faults

	Logger  *slog.Logger
	Metrics *metrics.Registry
}

// Timing is memberlist's failure detection and gossip tuning.
type Timing struct {
	// ProbeInterval is how often each member probes one other (round
	// robin); ProbeTimeout how long it waits for the ack before asking
	// IndirectChecks others to probe it too.
	ProbeInterval  time.Duration
	ProbeTimeout   time.Duration
	IndirectChecks int
	// SuspicionMult: a member that failed a probe is suspected for
	// SuspicionMult × ProbeInterval (× log10 of the site's size, at
	// least 1) before it is declared failed, unless it refutes; up to
	// SuspicionMaxMult times that while no other member confirms.
	SuspicionMult    int
	SuspicionMaxMult int
	// GossipInterval is how often queued broadcasts are sent to
	// GossipNodes random members; GossipToTheDead how long a failed one
	// still gets them.
	GossipInterval  time.Duration
	GossipNodes     int
	GossipToTheDead time.Duration
	// PushPullInterval is how often a full state sync (TCP) is made with
	// one random member.
	PushPullInterval time.Duration
	// TCPTimeout bounds a TCP exchange (join, push/pull, TCP probe
	// fallback).
	TCPTimeout time.Duration
	// DeadReclaim is how soon a failed member's name may come back from
	// another address (a gateway whose DHCP lease moved).
	DeadReclaim time.Duration
}

// LANTiming is the tuning for a site of gateways on one LAN (the
// defaults; docs/cluster.md, "Membership", says why):
//
//   - probe every 400 ms, ack within 200 ms: a LAN's round trip is under
//     a millisecond, but a gateway's CPU stalls in a flash write or a GC
//     for tens of milliseconds, and a probe missed that way must not
//     start a suspicion;
//   - suspicion 3 × 400 ms = 1.2 s (up to 2× while unconfirmed): long
//     enough for a member that is only slow to hear it is suspected and
//     refute it, short enough that a dead member is declared within
//     about 2-3 s on a site of 3 to 9, against 6-7 s with memberlist's
//     LAN defaults (1 s probes, 4 × 1 s suspicion up to 6×);
//   - gossip every 100 ms to 3 members, state sync every 5 s: a small
//     site's full state is a few hundred bytes, and a sync is what
//     repairs a metadata change whose gossip was missed (a member's
//     consensus address, its socket digest).
func LANTiming() Timing {
	return Timing{
		ProbeInterval:    400 * time.Millisecond,
		ProbeTimeout:     200 * time.Millisecond,
		IndirectChecks:   2,
		SuspicionMult:    3,
		SuspicionMaxMult: 2,
		GossipInterval:   100 * time.Millisecond,
		GossipNodes:      3,
		GossipToTheDead:  15 * time.Second,
		PushPullInterval: 5 * time.Second,
		TCPTimeout:       2 * time.Second,
		DeadReclaim:      30 * time.Second,
	}
}

// DetectionBound is the longest a member that dies (no leave) should
// take to be declared failed by the others with timing t on a site of
// n members, when the network is quiet: the others' probe rounds reach
// it, the probe and its indirect checks time out, the suspicion runs to
// its maximum (no confirmation), and the news is gossiped.
func (t Timing) DetectionBound(n int) time.Duration {
	if n < 2 {
		n = 2
	}
	scale := 1.0
	if n >= 10 {
		scale = float64(len(strconv.Itoa(n)) - 1) // log10, floor
	}
	suspicion := time.Duration(float64(t.SuspicionMult*t.SuspicionMaxMult) * scale * float64(t.ProbeInterval))
	return time.Duration(n-1)*t.ProbeInterval + // until a probe round reaches it
		t.ProbeInterval + // direct and indirect probes (bounded by the interval)
		suspicion +
		3*t.GossipInterval
}

// Defaults filled in by Validate.
const (
	DefaultRejoinInterval = 15 * time.Second
	DefaultReapAfter      = 72 * time.Hour
	DefaultLeaveTimeout   = 2 * time.Second
	DefaultMetaInterval   = time.Second
	DefaultMetaRefresh    = 10 * time.Second
	DefaultKeyringCheck   = 10 * time.Second
	DefaultEventQueue     = 256
)

// Validate checks c and returns a copy with the defaults filled in.
func (c Config) Validate() (Config, error) {
	if !ValidName(c.Name) {
		return c, fmt.Errorf("member: name %q: 1 to 63 letters, digits, dots, dashes and underscores", c.Name)
	}
	if err := checkHostPort(c.Listen, true); err != nil {
		return c, fmt.Errorf("member: listen %q: %w", c.Listen, err)
	}
	if c.Advertise != "" {
		if err := checkHostPort(c.Advertise, false); err != nil {
			return c, fmt.Errorf("member: advertise %q: %w", c.Advertise, err)
		}
	}
	for _, j := range c.Join {
		if err := checkHostPort(j, false); err != nil {
			return c, fmt.Errorf("member: join %q: %w", j, err)
		}
	}
	if c.KeyringFile != "" {
		keys, err := ReadKeyring(c.KeyringFile)
		if err != nil {
			return c, err
		}
		c.Keys = keys
	}
	if len(c.Keys) == 0 {
		return c, errors.New("member: no gossip key: site gossip is always encrypted")
	}
	for i, k := range c.Keys {
		if err := checkKey(k); err != nil {
			return c, fmt.Errorf("member: key %d: %w", i+1, err)
		}
	}
	if c.Timing == (Timing{}) {
		c.Timing = LANTiming()
	}
	t := &c.Timing
	if t.ProbeInterval <= 0 || t.ProbeTimeout <= 0 || t.ProbeTimeout >= t.ProbeInterval {
		return c, fmt.Errorf("member: probe timeout %s must be positive and shorter than the probe interval %s", t.ProbeTimeout, t.ProbeInterval)
	}
	if t.SuspicionMult < 1 || t.SuspicionMaxMult < 1 || t.GossipInterval <= 0 || t.GossipNodes < 1 || t.PushPullInterval <= 0 || t.TCPTimeout <= 0 || t.GossipToTheDead <= 0 {
		return c, errors.New("member: timing: every value must be positive")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.RejoinInterval, DefaultRejoinInterval)
	def(&c.ReapAfter, DefaultReapAfter)
	def(&c.LeaveTimeout, DefaultLeaveTimeout)
	def(&c.MetaInterval, DefaultMetaInterval)
	def(&c.MetaRefresh, DefaultMetaRefresh)
	def(&c.KeyringCheck, DefaultKeyringCheck)
	if c.EventQueue <= 0 {
		c.EventQueue = DefaultEventQueue
	}
	return c, nil
}

// ValidName reports whether name can name a member: 1 to 63 letters,
// digits, dots, dashes and underscores.
func ValidName(name string) bool {
	if name == "" || len(name) > 63 {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

func checkHostPort(addr string, portZero bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("want host:port")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || (n == 0 && !portZero) {
		return errors.New("want a port from 1 to 65535")
	}
	if host == "" && !portZero {
		return errors.New("want a host")
	}
	return nil
}

func checkKey(k []byte) error {
	switch len(k) {
	case 16, 24, 32:
		return nil
	}
	return fmt.Errorf("%d bytes, want 16, 24 or 32 (an AES-128, -192 or -256 key; make one with: head -c 32 /dev/urandom | base64)", len(k))
}

// ParseKey decodes a gossip key: standard base64 of 16, 24 or 32 bytes.
func ParseKey(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, errors.New("not base64 (make one with: head -c 32 /dev/urandom | base64)")
	}
	if err := checkKey(k); err != nil {
		return nil, err
	}
	return k, nil
}

// ReadKeyring reads a keyring file: one base64 key a line (ParseKey),
// blank lines and lines starting with # ignored; the first key is the
// primary (it encrypts), the others only decrypt. At least one key.
func ReadKeyring(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("member: keyring: %w", err)
	}
	var keys [][]byte
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := ParseKey(line)
		if err != nil {
			return nil, fmt.Errorf("member: keyring %s: line %d: %w", path, n, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("member: keyring %s: no key in it", path)
	}
	return keys, nil
}
