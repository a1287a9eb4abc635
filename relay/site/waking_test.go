package site

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/discovery"
	"github.com/pushrelay/pushrelay/kick"
	"github.com/pushrelay/pushrelay/relay/member"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/store"
)

// sessionSet is the devices with a session on a member, as its hub
// reports them to the site (Accepting) and the kicker (Online), and its
// metadata's socket digest.
type sessionSet struct {
	mu      sync.Mutex
	m       map[push.UAID]bool
	resyncs int
	resets  []push.UAID // CloseReset's devices, in order
}

func (s *sessionSet) set(u push.UAID, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[push.UAID]bool{}
	}
	s.m[u] = on
}

func (s *sessionSet) Accepting(u push.UAID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[u]
}

func (s *sessionSet) Online(u push.UAID) bool { return s.Accepting(u) }

// Resync counts the restores the site told the hub of.
func (s *sessionSet) Resync() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resyncs++
}
func (s *sessionSet) WakeProven(push.UAID) {}

// CloseReset records the devices whose session the site had closed.
func (s *sessionSet) CloseReset(u push.UAID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resets = append(s.resets, u)
}

func (s *sessionSet) closedForReset() []push.UAID {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.resets)
}

func (s *sessionSet) digest() member.Digest {
	d := member.NewDigest(0)
	s.mu.Lock()
	defer s.mu.Unlock()
	for u, on := range s.m {
		if on {
			d.Add(u.String())
		}
	}
	return d
}

// registry hands the STUN server's questions to the kicker (as
// relay/node does: each needs the other).
type registry struct{ k *kick.Kicker }

func (r *registry) Key(username string) ([]byte, error) { return r.k.Key(username) }
func (r *registry) Bind(username string, addr netip.AddrPort, stamp time.Time) error {
	return r.k.Bind(username, addr, stamp)
}

// startWaking gives x a kicker sending from its own STUN socket on
// 127.0.0.1, wired to its site as relay/node wires them, and returns
// the socket's address.
func startWaking(t *testing.T, x *tm, secret []byte) netip.AddrPort {
	t.Helper()
	keys, err := kick.NewKeys(secret)
	if err != nil {
		t.Fatal(err)
	}
	reg := &registry{}
	srv, err := discovery.Listen(discovery.Config{Listen: "127.0.0.1:0", Registry: reg, Logger: quietLogger(t, x.name)})
	if err != nil {
		t.Fatal(err)
	}
	k, err := kick.New(kick.Config{Store: x.st, Sender: srv, Keys: keys, OnBound: x.site.Bound, Interval: time.Second,
		Logger: quietLogger(t, x.name), Metrics: x.reg})
	if err != nil {
		t.Fatal(err)
	}
	reg.k = k
	x.kick = k
	k.SetPresence(&x.sessions)
	if err := x.site.SetWaking(k, &x.sessions); err != nil {
		t.Fatal(err)
	}
	x.st.OnStored(x.site.Stored)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { srv.Run(ctx) })
	wg.Go(func() { k.Run(ctx) })
	// Before x.stop (registered earlier, so run later) closes the store.
	t.Cleanup(func() {
		cancel()
		srv.Close()
		wg.Wait()
		k.Close()
	})
	return srv.Addr()
}

// sleeper is a device's wake socket on 127.0.0.1.
type sleeper struct {
	t    *testing.T
	u    push.UAID
	key  string
	sock *net.UDPConn
}

func newSleeper(t *testing.T, u push.UAID, secret []byte) *sleeper {
	keys, err := kick.NewKeys(secret)
	if err != nil {
		t.Fatal(err)
	}
	sock, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sock.Close() })
	return &sleeper{t: t, u: u, key: keys.KeyString(u), sock: sock}
}

// prove proves the wake socket's address to a member's STUN socket.
func (d *sleeper) prove(stun netip.AddrPort) {
	d.t.Helper()
	if _, err := discovery.Bind(d.sock, net.UDPAddrFromAddrPort(stun), d.u.String(), d.key, discovery.BindOptions{}); err != nil {
		d.t.Fatalf("prove to %s: %v", stun, err)
	}
}

// wakes returns where the wake datagrams that come within d came from.
func (d *sleeper) wakes(within time.Duration) []netip.AddrPort {
	from, _ := d.wakesAt(within)
	return from
}

// wakesAt is wakes, with when the first came.
func (d *sleeper) wakesAt(within time.Duration) (from []netip.AddrPort, first time.Time) {
	buf := make([]byte, 1500)
	d.sock.SetReadDeadline(time.Now().Add(within))
	defer d.sock.SetReadDeadline(time.Time{})
	for {
		n, src, err := d.sock.ReadFromUDPAddrPort(buf)
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				d.t.Fatal(err)
			}
			return from, first
		}
		if !discovery.IsSTUN(buf[:n]) {
			if len(from) == 0 {
				first = time.Now()
			}
			from = append(from, netip.AddrPortFrom(src.Addr().Unmap(), src.Port()))
		}
	}
}

// postUrgent appends one message of urgency normal for u through x.
func postUrgent(t *testing.T, x *tm, u push.UAID, ch push.ChannelID, data string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rs, err := x.site.Store().AppendBatch(ctx, []store.Message{{UAID: u, Channel: ch, TTL: time.Hour,
		Expiry: time.Now().Add(time.Hour), Urgency: push.UrgencyNormal, Data: []byte(data)}})
	if err != nil || rs[0].Err != nil {
		t.Fatalf("%s: post %s: %v %v", x.name, data, err, rs[0].Err)
	}
	return rs[0].Message.Seq
}

func metric(x *tm, series string) float64 { return x.reg.Value(series) }

// A wake datagram leaves from the member whose STUN socket the device
// proved its address to, whichever member took the post; once the device
// proved it to another member, only that one wakes it (the first forgot
// its binding on applying the wake owner entry); a device with a session
// on another member is not woken while that session takes its messages,
// and a wake held back for it goes after the recheck if the message still
// waits.
func TestSiteWake(t *testing.T) {
	ts := newTestSite(t, 3)
	a, b, c := ts.startThree()
	ms := []*tm{a, b, c}
	secret := []byte(strings.Repeat("w", 32))
	stun := map[*tm]netip.AddrPort{}
	byAddr := map[netip.AddrPort]string{}
	for _, x := range ms {
		stun[x] = startWaking(t, x, secret)
		byAddr[stun[x]] = x.name
	}
	waitFormed(t, ms)
	ctx := context.Background()
	u, ch := push.UAID{0xaa, 7}, push.ChannelID{0xcc, 7}
	if err := a.site.Store().Register(ctx, store.Channel{UAID: u, ID: ch}); err != nil {
		t.Fatal(err)
	}
	for _, x := range ms {
		waitUntil(t, 10*time.Second, x.name+" holds the device", func() bool {
			_, ok, _ := x.st.Device(u)
			return ok
		})
	}
	names := func(from []netip.AddrPort) []string {
		var out []string
		for _, f := range from {
			out = append(out, byAddr[f])
		}
		return out
	}
	onlyFrom := func(want *tm, what string, from []netip.AddrPort) {
		t.Helper()
		if len(from) == 0 {
			t.Fatalf("%s: no wake datagram; want one from %s's STUN socket %s", what, want.name, stun[want])
		}
		for _, f := range from {
			if f != stun[want] {
				t.Fatalf("%s: wake datagrams from %v (%v); want only from %s's STUN socket %s", what, from, names(from), want.name, stun[want])
			}
		}
	}
	d := newSleeper(t, u, secret)

	// Proven to a; the post to c wakes it from a's STUN socket, and only
	// from there.
	d.prove(stun[a])
	waitUntil(t, 10*time.Second, "a owns the device's waking", func() bool { return a.site.Owns(u) })
	seq := postUrgent(t, c, u, ch, "one")
	onlyFrom(a, "post to c, device proven to a", d.wakes(2*time.Second))
	if _, err := b.site.Store().Ack(ctx, u, seq); err != nil {
		t.Fatal(err)
	}

	// Proven to b now: a forgets its binding; the next post (to c again)
	// wakes it from b alone.
	d.prove(stun[b])
	waitUntil(t, 10*time.Second, "b owns the device's waking and a forgot its binding", func() bool {
		return b.site.Owns(u) && !a.site.Owns(u) && metric(a, "pushrelay_site_wake_bindings_dropped_total") == 1
	})
	seq = postUrgent(t, c, u, ch, "two")
	onlyFrom(b, "post to c, device proven to b after a", d.wakes(2*time.Second))
	if _, err := a.site.Store().Ack(ctx, u, seq); err != nil {
		t.Fatal(err)
	}

	// A session on c (which acks what it is sent): b, holding the
	// binding, holds the wake back; the ack comes within the recheck, so
	// nothing is sent.
	c.sessions.set(u, true)
	waitUntil(t, 10*time.Second, "b sees c's socket digest holding the device", func() bool {
		for _, in := range b.mem.Members() {
			if in.Name == "c" && len(in.Meta.SocketDigest) > 0 && in.Meta.SocketDigest.MayHold(u.String()) {
				return true
			}
		}
		return false
	})
	seq = postUrgent(t, a, u, ch, "three")
	if _, err := c.site.Store().Ack(ctx, u, seq); err != nil {
		t.Fatal(err)
	}
	if from := d.wakes(3 * time.Second); len(from) != 0 {
		t.Fatalf("device with a session on c that took its message woken from %v", names(from))
	}
	if n := metric(b, `pushrelay_site_wakes_total{decision="deferred"}`); n != 1 {
		t.Fatalf("b deferred %v wakes, want 1", n)
	}
	// Not taken by that session (it is gone, or a false positive of the
	// digest): the wake goes after the recheck, from b.
	start := time.Now()
	postUrgent(t, a, u, ch, "four")
	from, first := d.wakesAt(4 * time.Second)
	onlyFrom(b, "message the session on c did not take", from)
	if waited := first.Sub(start); waited < 2*time.Second {
		t.Fatalf("wake held back for a session elsewhere came after %s, before the 2 s recheck", waited)
	}
	if n := metric(c, `pushrelay_wake_datagrams_total{format="compat",kind="first"}`); n != 0 {
		t.Fatalf("c, which took every post but never held the binding, sent %v wake datagrams", n)
	}
}

// A member whose keys differ from the site's does not join it: it says
// why (KeysRefused, counted), the leader never adds it, the members in
// the site count and log it, and the site goes on.
func TestSiteKeysRefused(t *testing.T) {
	ts := newTestSite(t, 2)
	site, other := KeyPrints{Endpoint: 1, Wake: 2}, KeyPrints{Endpoint: 3, Wake: 2}
	ts.keys = map[string]KeyPrints{"a": site, "b": site, "c": other}
	a := ts.start("a")
	b := ts.start("b", a)
	waitUntil(t, 20*time.Second, "a site of two with a leader", func() bool {
		return a.site.InSite() && b.site.InSite() && leaderOf([]*tm{a, b}) != nil
	})
	c := ts.start("c", a)
	waitUntil(t, 10*time.Second, "c refused", func() bool { return c.site.KeysRefused() != "" })
	if why := c.site.KeysRefused(); !strings.Contains(why, "endpoint.key differs") || strings.Contains(why, "wake.key differs") {
		t.Fatalf("c refused for %q; want its endpoint.key named", why)
	}
	if n := metric(c, `pushrelay_site_keys_refused_total{side="self"}`); n != 1 {
		t.Fatalf("c counted %v refusals, want 1", n)
	}
	if metric(c, "pushrelay_site_keys_mismatch") != 1 {
		t.Fatal("c's keys_mismatch gauge is not 1")
	}
	l := leaderOf([]*tm{a, b})
	waitUntil(t, 10*time.Second, "the leader counts c refused", func() bool {
		return metric(l, `pushrelay_site_keys_refused_total{side="other"}`) == 1
	})
	// Refused for good: a few of the leader's rounds later, still out.
	time.Sleep(2500 * time.Millisecond)
	if c.site.InSite() || len(l.site.Status().Voters) != 2 {
		t.Fatalf("c in the site: %v, voters %d", c.site.InSite(), len(l.site.Status().Voters))
	}
	u, ch := push.UAID{0xaa, 8}, push.ChannelID{0xcc, 8}
	if err := b.site.Store().Register(context.Background(), store.Channel{UAID: u, ID: ch}); err != nil {
		t.Fatalf("the site without c: %v", err)
	}
}

// A new site's founders are the members with the same keys: the
// largest group, on a tie the one with the lowest id; members that
// report none go with it.
func TestFounders(t *testing.T) {
	in := func(id uint64, e, w uint64) member.Info {
		return member.Info{Name: string(rune('a' + id)), Meta: member.Meta{RaftID: id, EndpointKey: e, WakeKey: w}}
	}
	names := func(g []member.Info) string {
		var s string
		for _, x := range g {
			s += x.Name
		}
		return s
	}
	for _, c := range []struct {
		alive []member.Info
		want  string
	}{
		{[]member.Info{in(1, 1, 1), in(2, 1, 1), in(3, 1, 1)}, "bcd"},
		{[]member.Info{in(1, 9, 1), in(2, 1, 1), in(3, 1, 1)}, "cd"},
		{[]member.Info{in(1, 1, 1), in(2, 1, 9), in(3, 0, 0)}, "bd"},
		{[]member.Info{in(5, 1, 1), in(2, 1, 9), in(3, 0, 0)}, "cd"},
	} {
		if got := names(founders(c.alive)); got != c.want {
			t.Errorf("founders of %v: %s, want %s", names(c.alive), got, c.want)
		}
	}
}

// A member owns, from its start, the devices whose wake binding its
// store holds: a restarted member wakes them before they prove their
// address again (it once waited for their next STUN refresh).
func TestWakeOwnerAfterRestart(t *testing.T) {
	ts := newTestSite(t, 1)
	a := ts.start("a")
	secret := []byte(strings.Repeat("w", 32))
	stun := startWaking(t, a, secret)
	waitUntil(t, 20*time.Second, "a site of one", func() bool { return a.site.InSite() && leaderOf([]*tm{a}) != nil })
	ctx := context.Background()
	u, v, ch := push.UAID{0xab, 1}, push.UAID{0xab, 2}, push.ChannelID{0xcd, 1}
	for _, w := range []push.UAID{u, v} {
		if err := a.site.Store().Register(ctx, store.Channel{UAID: w, ID: ch}); err != nil {
			t.Fatal(err)
		}
	}
	newSleeper(t, u, secret).prove(stun)
	waitUntil(t, 10*time.Second, "a owns u's waking", func() bool { return a.site.Owns(u) })
	if err := a.kick.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// The member's site made anew over the same store, as at a restart.
	again, err := New(Config{Name: "a", Store: a.st, Dir: t.TempDir(), Members: func() []member.Info { return nil },
		ServerTLS: a.site.cfg.ServerTLS, ClientTLS: a.site.cfg.ClientTLS, Logger: quietLogger(t, "a again")})
	if err != nil {
		t.Fatal(err)
	}
	if again.Owns(u) {
		t.Fatal("owns u before SetWaking")
	}
	sess := &sessionSet{}
	if err := again.SetWaking(a.kick, sess); err != nil {
		t.Fatal(err)
	}
	if !again.Owns(u) || again.Owns(v) {
		t.Fatalf("after SetWaking: owns u %v (want true: its binding is in the store), v %v (want false: none)", again.Owns(u), again.Owns(v))
	}
	if _, n := again.WakeDigest(); n != 1 {
		t.Fatalf("WakeDigest counts %d devices, want 1", n)
	}

	// Restored from a snapshot (here the member's own file, standing for
	// another member's): it owns nothing, and the kicker forgets the
	// bindings the file brought, so a later start does not own them.
	var snap bytes.Buffer
	if _, err := a.st.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	if err := again.machine.Restore(&snap, 0); err != nil {
		t.Fatal(err)
	}
	if again.Owns(u) {
		t.Fatal("owns u after a restore")
	}
	if sess.resyncs != 1 {
		t.Fatalf("the hub was told of %d restores, want 1 (its sessions read their messages again)", sess.resyncs)
	}
	again.dropStored(ctx)
	var left []push.UAID
	if err := a.kick.Bindings(func(w push.UAID) { left = append(left, w) }); err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Fatalf("bindings left in the store after a restore: %v", left)
	}
}

// TestResetClosesSessionsElsewhere: a device reset at one member (the
// upstream's holder, whose upstream forgot it) has its session closed on
// every other member too, where it may be connected; the member that
// reset it closes its own (relay.Hub.ResetDevice), so the site does not
// ask it to.
func TestResetClosesSessionsElsewhere(t *testing.T) {
	ts := newTestSite(t, 3)
	a, b, c := ts.startThree()
	ms := []*tm{a, b, c}
	for _, x := range ms {
		startWaking(t, x, []byte(strings.Repeat("w", 32)))
	}
	waitFormed(t, ms)
	ctx := context.Background()
	u, ch := push.UAID{0xaa, 9}, push.ChannelID{0xcc, 9}
	if err := a.site.Store().Register(ctx, store.Channel{UAID: u, ID: ch}); err != nil {
		t.Fatal(err)
	}
	if err := a.site.Store().DeleteDevice(ctx, u); err != nil {
		t.Fatal(err)
	}
	for _, x := range []*tm{b, c} {
		waitUntil(t, 10*time.Second, x.name+" closed the reset device's session", func() bool {
			return slices.Equal(x.sessions.closedForReset(), []push.UAID{u})
		})
	}
	// Everything a proposed is applied on a once DeleteDevice returned.
	if got := a.sessions.closedForReset(); len(got) != 0 {
		t.Fatalf("the member that reset the device was asked to close %v; its hub closes its own", got)
	}
}
