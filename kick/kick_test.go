package kick

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pushrelay/pushrelay/discovery"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/store"
)

// presence is the hub's side of the kicker in these tests.
type presence struct {
	mu     sync.Mutex
	online map[push.UAID]bool
	proven map[push.UAID]bool
}

func (p *presence) Online(u push.UAID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.online[u]
}

func (p *presence) WakeProven(u push.UAID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.proven[u] = true
}

func (p *presence) set(u push.UAID, on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.online[u] = on
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type env struct {
	t     *testing.T
	st    *store.Store
	k     *Kicker
	reg   *metrics.Registry
	pres  *presence
	clock *clock // nil: real time
}

// openStoreAndSocket opens a real store in a temp dir and a UDP socket on
// loopback to send from, both closed at cleanup.
func openStoreAndSocket(tb testing.TB) (*store.Store, *net.UDPConn) {
	tb.Helper()
	st, err := store.Open(store.Options{Path: filepath.Join(tb.TempDir(), "s.db"), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return st, conn
}

// newEnv starts a kicker on a real store and a real UDP socket; cfg's
// zero fields take test-friendly values.
func newEnv(t *testing.T, cfg Config, fake bool) *env {
	t.Helper()
	st, conn := openStoreAndSocket(t)
	e := &env{t: t, st: st, reg: metrics.NewRegistry(), pres: &presence{online: map[push.UAID]bool{}, proven: map[push.UAID]bool{}}}
	if fake {
		e.clock = &clock{t: time.Now()}
		cfg.Now = e.clock.Now
	}
	keys, err := NewKeys(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Store, cfg.Sender, cfg.Keys, cfg.Metrics = st, UDPSender{Conn: conn}, keys, e.reg
	if cfg.Rate == 0 {
		cfg.Rate = -1
	}
	if cfg.TargetRate == 0 {
		cfg.TargetRate = -1
	}
	e.k, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.k.SetPresence(e.pres)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.k.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		e.k.Close()
	})
	return e
}

func (e *env) now() time.Time {
	if e.clock != nil {
		return e.clock.Now()
	}
	return time.Now()
}

// device makes a registered device with a wake socket on ip and returns
// its UAID and the socket.
func (e *env) device(n byte, ip string) (push.UAID, *net.UDPConn) {
	e.t.Helper()
	var u push.UAID
	u[0], u[15] = 0xd0, n
	if err := e.st.Register(context.Background(), store.Channel{UAID: u, ID: push.ChannelID{n}}); err != nil {
		e.t.Fatal(err)
	}
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(ip+":0")))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return u, c
}

func (e *env) hello(u push.UAID, c *net.UDPConn, auth bool, mobile *pushproto.MobileNetwork) pushproto.HelloReply {
	e.t.Helper()
	a := c.LocalAddr().(*net.UDPAddr).AddrPort()
	r, err := e.k.HelloWake(context.Background(), u, pushproto.Hello{
		Wake: &pushproto.WakeHostPort{IP: a.Addr().String(), Port: int(a.Port())}, WakeAuth: auth, Mobile: mobile}, netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *env) message(u push.UAID, n byte, urgency push.Urgency, ttl time.Duration) time.Time {
	e.t.Helper()
	now := e.now()
	m, err := e.st.Append(context.Background(), store.Message{UAID: u, Channel: push.ChannelID{n}, Received: now,
		TTL: ttl, Expiry: now.Add(ttl), Urgency: urgency, Data: []byte("x")})
	if err != nil {
		e.t.Fatal(err)
	}
	return m.Expiry
}

func (e *env) metric(series string) float64 { return e.reg.Value(series) }

// The tests that run a Kicker run in a synctest bubble: its timers, rate
// limits and backoff run on virtual time, which passes only while every
// goroutine of the test waits, so a busy machine cannot change what they
// see. The datagrams still go through real loopback sockets, read without
// blocking (tryRead).

// recv lets d of virtual time pass and returns the datagrams queued on c.
func recv(c *net.UDPConn, d time.Duration) [][]byte {
	time.Sleep(d)
	synctest.Wait()
	realSleep(time.Millisecond) // a datagram the kernel has not queued yet
	var out [][]byte
	for {
		b, ok := tryRead(c)
		if !ok {
			return out
		}
		out = append(out, b)
	}
}

// recvOne waits up to 5s of virtual time for one datagram.
func recvOne(t *testing.T, c *net.UDPConn) []byte {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		synctest.Wait()
		if b, ok := tryRead(c); ok {
			return b
		}
		realSleep(100 * time.Microsecond)
		if b, ok := tryRead(c); ok {
			return b
		}
	}
	t.Fatal("no wake datagram within 5s")
	return nil
}

// waitFor waits up to 5s of virtual time for f.
func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		synctest.Wait()
		if f() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func ranges(s string) Ranges {
	p, err := ParseCIDRs(s)
	if err != nil {
		panic(err)
	}
	return Ranges{CIDRs: p}
}

// A device whose claimed address is inside the ranges is accepted (201)
// and woken with the compatible datagram; once it connects it gets no
// more.
func TestWakeClaimedAddress(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{Ranges: ranges("127.0.0.0/24"), Interval: 100 * time.Millisecond}, false)
		u, c := e.device(1, "127.0.0.5")
		r := e.hello(u, c, false, nil)
		if r.Status != pushproto.StatusWake || r.WakeKey == "" || r.STUNAddr != "" {
			t.Fatalf("hello reply %+v", r)
		}
		e.k.Wake(u, e.message(u, 1, push.UrgencyNormal, time.Hour))
		got := recvOne(t, c)
		if want := "NOTIFY " + c.LocalAddr().String(); string(got) != want || len(got) > 64 {
			t.Errorf("datagram %q, want %q", got, want)
		}
		// The device reconnects: no retry reaches it.
		e.pres.set(u, true)
		e.k.Connected(u)
		if more := recv(c, 400*time.Millisecond); len(more) != 0 {
			t.Errorf("%d datagrams after connect", len(more))
		}
		if e.k.Pending() != 0 || e.metric(`pushrelay_wake_finished_total{reason="connected"}`) != 1 {
			t.Errorf("pending %d, finished %v", e.k.Pending(), e.metric(`pushrelay_wake_finished_total{reason="connected"}`))
		}
		if e.metric(`pushrelay_wake_datagrams_total{format="compat",kind="first"}`) != 1 {
			t.Error("datagram not counted")
		}
	})
}

// Authenticated datagrams carry a MAC under the device's key and a counter
// that grows with every retry; a datagram under another key, or altered,
// does not verify.
func TestAuthenticatedDatagram(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{Ranges: ranges("127.0.0.0/24"), Interval: 50 * time.Millisecond}, false)
		u, c := e.device(2, "127.0.0.6")
		r := e.hello(u, c, true, nil)
		key, err := ParseKey(r.WakeKey)
		if err != nil {
			t.Fatal(err)
		}
		e.k.Wake(u, e.message(u, 2, push.UrgencyHigh, time.Hour))
		first := append([]byte(nil), recvOne(t, c)...)
		second := recvOne(t, c) // a retry: the device did not connect
		if len(first) != AuthSize || len(first) > 64 {
			t.Fatalf("datagram %d bytes", len(first))
		}
		c1, ok1 := Verify(key, u, first)
		c2, ok2 := Verify(key, u, second)
		if !ok1 || !ok2 || c2 <= c1 {
			t.Errorf("verify %v %v, counters %d %d", ok1, ok2, c1, c2)
		}
		other := e.k.cfg.Keys.Key(push.UAID{9})
		if _, ok := Verify(other, u, first); ok {
			t.Error("verified under another device's key")
		}
		if _, ok := Verify(key, push.UAID{9}, first); ok {
			t.Error("verified for another UAID")
		}
		bad := append([]byte(nil), first...)
		bad[5] ^= 1
		if _, ok := Verify(key, u, bad); ok {
			t.Error("altered counter verified")
		}
		waitFor(t, "retry counted", func() bool {
			return e.metric(`pushrelay_wake_datagrams_total{format="auth",kind="retry"}`) >= 1
		})
	})
}

// A claimed address outside the ranges is never sent anything, and such a
// device is told 200.
func TestOutsideRangesNeverSent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{Ranges: ranges("10.0.0.0/8")}, false)
		u, c := e.device(3, "127.0.0.7")
		if r := e.hello(u, c, false, nil); r.Status != pushproto.StatusOK {
			t.Fatalf("status %d", r.Status)
		}
		e.k.Wake(u, e.message(u, 3, push.UrgencyHigh, time.Hour))
		waitFor(t, "drop", func() bool { return e.metric(`pushrelay_wake_dropped_total{reason="outside_ranges"}`) == 1 })
		if got := recv(c, 200*time.Millisecond); len(got) != 0 {
			t.Errorf("got %q", got)
		}
	})
}

// Ranges may be given per mobile network: a device is trusted inside its
// own network's ranges only.
func TestNetworkRanges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rg := Ranges{Networks: map[string][]netip.Prefix{"214-07": {netip.MustParsePrefix("127.0.0.0/24")}}}
		e := newEnv(t, Config{Ranges: rg}, false)
		u, c := e.device(4, "127.0.0.8")
		if r := e.hello(u, c, false, &pushproto.MobileNetwork{MCC: "214", MNC: "01"}); r.Status != pushproto.StatusOK {
			t.Errorf("other network: status %d", r.Status)
		}
		if r := e.hello(u, c, false, &pushproto.MobileNetwork{MCC: "214", MNC: "07"}); r.Status != pushproto.StatusWake {
			t.Errorf("own network: status %d", r.Status)
		}
		e.k.Wake(u, e.message(u, 4, push.UrgencyNormal, time.Hour))
		recvOne(t, c)
	})
}

// Retries back off and stop when the messages expire.
func TestRetriesStopAtExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{Ranges: ranges("127.0.0.0/24"), Interval: 40 * time.Millisecond}, false)
		u, c := e.device(5, "127.0.0.9")
		e.hello(u, c, false, nil)
		until := e.message(u, 5, push.UrgencyNormal, 400*time.Millisecond)
		e.k.Wake(u, until)
		got := recv(c, time.Until(until)+100*time.Millisecond)
		// 0, 40, 120, 280 ms; the next (600 ms) would come after expiry.
		if len(got) != 4 {
			t.Errorf("%d datagrams before expiry, want 4", len(got))
		}
		waitFor(t, "expiry", func() bool { return e.k.Pending() == 0 })
		if e.metric(`pushrelay_wake_finished_total{reason="expired"}`) != 1 {
			t.Error("expiry not counted")
		}
		if more := recv(c, 300*time.Millisecond); len(more) != 0 {
			t.Errorf("%d datagrams after expiry", len(more))
		}
	})
}

// Many messages for one device make one datagram per interval.
func TestCoalesce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{Ranges: ranges("127.0.0.0/24"), Interval: time.Hour}, false)
		u, c := e.device(6, "127.0.0.10")
		e.hello(u, c, false, nil)
		for i := range 20 {
			e.k.Wake(u, e.message(u, 6, push.UrgencyNormal, time.Duration(i+1)*time.Hour))
		}
		if got := recv(c, 300*time.Millisecond); len(got) != 1 {
			t.Errorf("%d datagrams for 20 messages, want 1", len(got))
		}
	})
}

// A device whose waiting messages are all low urgency is not woken by a
// lookup (the hub does not even ask for those), and one with nothing
// waiting neither.
func TestLowUrgencyAndNothingWaiting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{Ranges: ranges("127.0.0.0/24")}, false)
		u, c := e.device(7, "127.0.0.11")
		e.hello(u, c, false, nil)
		e.k.Wake(u, time.Time{})
		waitFor(t, "nothing waiting", func() bool { return e.metric(`pushrelay_wake_finished_total{reason="nothing_waiting"}`) == 1 })
		e.message(u, 7, push.UrgencyLow, time.Hour)
		e.message(u, 7, push.UrgencyVeryLow, time.Hour)
		e.k.Wake(u, time.Time{})
		waitFor(t, "nothing urgent", func() bool { return e.metric(`pushrelay_wake_finished_total{reason="nothing_urgent"}`) == 1 })
		if got := recv(c, 200*time.Millisecond); len(got) != 0 {
			t.Errorf("woken %d times for low urgency", len(got))
		}
		e.message(u, 7, push.UrgencyNormal, time.Hour)
		e.k.Wake(u, time.Time{})
		recvOne(t, c)
	})
}

// The global limit holds across devices; the per-target limit holds for
// many devices that claim one host.
func TestRateLimits(t *testing.T) {
	t.Run("global", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEnv(t, Config{Ranges: ranges("127.0.0.0/24"), Rate: 10, Burst: 3, Interval: time.Hour}, false)
			var conns []*net.UDPConn
			for i := range 20 {
				u, c := e.device(byte(10+i), fmt.Sprintf("127.0.0.%d", 20+i))
				e.hello(u, c, false, nil)
				e.k.Wake(u, e.message(u, byte(10+i), push.UrgencyNormal, time.Hour))
				conns = append(conns, c)
			}
			sent := func() float64 { return e.metric(`pushrelay_wake_datagrams_total{format="compat",kind="first"}`) }
			// Virtual time: the burst of 3 at once, then one per 100 ms.
			synctest.Wait()
			if got := sent(); got != 3 {
				t.Errorf("%v datagrams at once under burst 3", got)
			}
			time.Sleep(450 * time.Millisecond)
			synctest.Wait()
			if got := sent(); got != 3+4 {
				t.Errorf("%v datagrams in 0.45s under 10/s burst 3, want 7", got)
			}
			if e.metric(`pushrelay_wake_deferred_total{limit="global"}`) == 0 {
				t.Error("no deferral counted")
			}
			// All get theirs in the end: the last 100 ms apart.
			time.Sleep(1300 * time.Millisecond)
			synctest.Wait()
			if got := sent(); got != 20 {
				t.Errorf("%v datagrams after 1.75s, want 20", got)
			}
			got := 0
			for _, c := range conns {
				got += len(recv(c, 0))
			}
			if got != 20 {
				t.Errorf("devices received %d datagrams, want 20", got)
			}
		})
	})
	t.Run("target", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEnv(t, Config{Ranges: ranges("127.0.0.0/24"), TargetRate: 2, TargetBurst: 2, Interval: time.Hour}, false)
			var conns []*net.UDPConn
			for i := range 10 {
				u, c := e.device(byte(40+i), "127.0.0.40") // one host, ten ports
				e.hello(u, c, false, nil)
				e.k.Wake(u, e.message(u, byte(40+i), push.UrgencyNormal, time.Hour))
				conns = append(conns, c)
			}
			other, oc := e.device(60, "127.0.0.41")
			e.hello(other, oc, false, nil)
			e.k.Wake(other, e.message(other, 60, push.UrgencyNormal, time.Hour))
			recvOne(t, oc) // another host is not held up
			// Burst 2, then one per 500 ms: 2 at once, 4 after 1.2 s.
			count := func() int {
				n := 0
				for _, c := range conns {
					n += len(recv(c, 0))
				}
				return n
			}
			if got := count(); got != 2 {
				t.Errorf("%d datagrams to one host at once, want the burst of 2", got)
			}
			time.Sleep(1200 * time.Millisecond)
			if got := count(); got != 2 {
				t.Errorf("%d more datagrams to one host in 1.2s at 2/s, want 2", got)
			}
			if e.metric(`pushrelay_wake_deferred_total{limit="target"}`) == 0 {
				t.Error("no deferral counted")
			}
		})
	})
}

// STUN bindings: the observed address is recorded; a stamp not newer than
// the last accepted one never moves the address, even when that one was
// only remembered in memory; unknown devices are refused.
func TestBind(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{BindingTTL: time.Minute}, true)
		u, c := e.device(70, "127.0.0.70")
		r := e.hello(u, c, true, nil)
		if r.Status != pushproto.StatusOK {
			t.Errorf("unproven device: status %d", r.Status)
		}
		if key, err := e.k.Key(u.String()); err != nil || string(key) != r.WakeKey {
			t.Fatalf("Key: %q %v", key, err)
		}
		for _, name := range []string{"nothex", push.UAID{0xee}.String()} {
			if _, err := e.k.Key(name); !errors.Is(err, discovery.ErrUnknownUser) {
				t.Errorf("Key(%s): %v", name, err)
			}
			if err := bindNow(e.k, name, netip.MustParseAddrPort("127.0.0.1:1"), e.now()); !errors.Is(err, discovery.ErrUnknownUser) {
				t.Errorf("Bind(%s): %v", name, err)
			}
		}
		a := c.LocalAddr().(*net.UDPAddr).AddrPort()
		b := netip.MustParseAddrPort("127.0.0.99:4000")
		t0 := e.now()
		if err := bindNow(e.k, u.String(), a, t0); err != nil {
			t.Fatal(err)
		}
		for _, stamp := range []time.Time{t0, t0.Add(-time.Second)} {
			if err := bindNow(e.k, u.String(), b, stamp); !errors.Is(err, discovery.ErrReplay) {
				t.Errorf("replay at %v from elsewhere: %v", stamp.Sub(t0), err)
			}
		}
		// A refresh from the same address is not written, but its stamp is
		// remembered: replaying it from elsewhere fails too.
		e.clock.Add(time.Second)
		t1 := e.now()
		if err := bindNow(e.k, u.String(), a, t1); err != nil {
			t.Fatal(err)
		}
		if e.metric(`pushrelay_wake_bindings_total{result="refreshed"}`) != 1 {
			t.Error("refresh was written")
		}
		if err := bindNow(e.k, u.String(), b, t1); !errors.Is(err, discovery.ErrReplay) {
			t.Errorf("replayed refresh: %v", err)
		}
		// Now the device is accepted at hello and woken at the observed address.
		if r := e.hello(u, c, true, nil); r.Status != pushproto.StatusWake {
			t.Errorf("proven device: status %d", r.Status)
		}
		e.k.Wake(u, e.message(u, 70, push.UrgencyNormal, time.Hour))
		key, _ := ParseKey(r.WakeKey)
		if _, ok := Verify(key, u, recvOne(t, c)); !ok {
			t.Error("datagram does not verify")
		}
		e.pres.set(u, true)
		e.k.Connected(u)
		// A connected device that proves its address is told to the hub.
		e.clock.Add(time.Second)
		if err := bindNow(e.k, u.String(), a, e.now()); err != nil || !e.pres.proven[u] {
			t.Errorf("bind while online: %v, proven %v", err, e.pres.proven[u])
		}
		e.pres.set(u, false)
		// Past the binding TTL the address is stale: no datagram.
		e.clock.Add(2 * time.Minute)
		e.k.Wake(u, e.message(u, 70, push.UrgencyNormal, time.Hour))
		waitFor(t, "stale drop", func() bool { return e.metric(`pushrelay_wake_dropped_total{reason="stale_address"}`) == 1 })
		if got := recv(c, 100*time.Millisecond); len(got) != 0 {
			t.Errorf("stale address got %d datagrams", len(got))
		}
		// A new binding while a message waits wakes the device at once.
		if err := bindNow(e.k, u.String(), a, e.now()); err != nil {
			t.Fatal(err)
		}
		recvOne(t, c)
	})
}

func TestRecordRoundTrip(t *testing.T) {
	now := time.UnixMilli(time.Now().UnixMilli())
	for _, r := range []record{
		{},
		{auth: true, claimed: netip.MustParseAddrPort("10.1.2.3:2442"), claimedAt: now, network: "214-07"},
		{verified: netip.MustParseAddrPort("[2001:db8::1]:5000"), verifiedAt: now, stamp: 12345},
	} {
		got, err := decodeRecord(r.encode())
		if err != nil || got != r {
			t.Errorf("round trip %+v: %+v %v", r, got, err)
		}
	}
	full := (&record{network: "214-07"}).encode()
	for i := 1; i < len(full); i++ {
		if _, err := decodeRecord(full[:i]); err == nil {
			t.Errorf("truncated record of %d bytes decoded", i)
		}
	}
}

func TestSTUNAddrFor(t *testing.T) {
	local := netip.MustParseAddr("10.0.2.2")
	for adv, want := range map[string]string{
		":3478":             "10.0.2.2:3478",
		"0.0.0.0:3478":      "10.0.2.2:3478",
		"[::]:3478":         "10.0.2.2:3478",
		"192.0.2.1:3478":    "192.0.2.1:3478",
		"stun.example:3478": "stun.example:3478",
	} {
		if got := stunAddrFor(adv, local); got != want {
			t.Errorf("stunAddrFor(%q) = %q, want %q", adv, got, want)
		}
	}
	if got := stunAddrFor(":3478", netip.Addr{}); got != ":3478" {
		t.Errorf("without local: %q", got)
	}
}

func TestParseCIDRs(t *testing.T) {
	p, err := ParseCIDRs(" 10.0.0.0/8, 192.168.1.7 ,2001:db8::/32,")
	if err != nil || len(p) != 3 || p[1].Bits() != 32 {
		t.Fatalf("%v %v", p, err)
	}
	for _, bad := range []string{"10.0.0.0/33", "host.example", "10.0.0.0/8;"} {
		if _, err := ParseCIDRs(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	r := Ranges{CIDRs: p}
	if !r.Allows(netip.MustParseAddr("::ffff:10.9.9.9"), "") || r.Allows(netip.MustParseAddr("11.0.0.1"), "") {
		t.Error("Allows")
	}
}

func TestSecretFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wake.key")
	a, err := LoadOrCreateSecret(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := LoadOrCreateSecret(path)
	if err != nil || string(a) != string(b) || len(a) != 32 {
		t.Errorf("reloaded secret differs: %v", err)
	}
}

// After a restart the stamps of unwritten refreshes are gone: for a
// minute a fresh address does not move, so a request captured before the
// restart cannot be replayed from elsewhere. Then moves work again.
func TestBindAfterRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{BindingTTL: 10 * time.Minute}, true)
		u, c := e.device(80, "127.0.0.80")
		e.hello(u, c, true, nil)
		a := c.LocalAddr().(*net.UDPAddr).AddrPort()
		if err := bindNow(e.k, u.String(), a, e.now()); err != nil {
			t.Fatal(err)
		}
		e.clock.Add(time.Second)
		captured := e.now()
		if err := bindNow(e.k, u.String(), a, captured); err != nil { // a refresh, kept in memory only
			t.Fatal(err)
		}
		cfg := e.k.cfg
		cfg.Metrics = metrics.NewRegistry()
		restarted, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		b := netip.MustParseAddrPort("127.0.0.81:5000")
		e.clock.Add(10 * time.Second)
		if err := bindNow(restarted, u.String(), b, captured); !errors.Is(err, discovery.ErrReplay) {
			t.Errorf("captured refresh replayed after restart: %v", err)
		}
		// The device itself refreshes in place meanwhile.
		if err := bindNow(restarted, u.String(), a, e.now()); err != nil {
			t.Errorf("refresh in place after restart: %v", err)
		}
		e.clock.Add(restartHold)
		if err := bindNow(restarted, u.String(), b, e.now()); err != nil {
			t.Errorf("a real move after the hold: %v", err)
		}
		d, _, _ := e.st.Device(u)
		if r, _ := decodeRecord(d.Wake); r.verified != b {
			t.Errorf("verified %s, want %s", r.verified, b)
		}
	})
}

// appendAuth is the reference authenticated datagram, its MAC made with
// crypto/hmac as Verify checks it.
func appendAuth(b []byte, key []byte, u push.UAID, counter uint64) []byte {
	b = append(b, authMagic...)
	b = binary.BigEndian.AppendUint64(b, counter)
	return append(b, datagramMAC(key, u, b[len(b)-12:])[:16]...)
}

// The allocation-free HMAC of the kick loop agrees with crypto/hmac, for
// keys shorter and longer than a block, and the datagrams it makes verify.
func TestMacer(t *testing.T) {
	m := newMacer()
	for _, n := range []int{0, 16, 32, 64, 65, 100} {
		key := bytes.Repeat([]byte{byte(n)}, n)
		a, b := []byte("head"), []byte("tail of the message")
		want := hmac.New(sha256.New, key)
		want.Write(a)
		want.Write(b)
		if got := m.mac(key, a, b); !bytes.Equal(got, want.Sum(nil)) {
			t.Errorf("key of %d bytes: %x", n, got)
		}
	}
	keys, _ := NewKeys(bytes.Repeat([]byte{7}, 32))
	u := push.UAID{1, 2, 3}
	var key [keySize]byte
	keys.keyWith(m, u, &key)
	if !bytes.Equal(key[:], keys.Key(u)) {
		t.Fatal("keyWith differs from Key")
	}
	d := appendAuthWith(m, nil, key[:], u, 42)
	if c, ok := Verify(keys.Key(u), u, d); !ok || c != 42 || !bytes.Equal(d, appendAuth(nil, key[:], u, 42)) {
		t.Errorf("datagram %x does not verify", d)
	}
}

// STUN-proven addresses are rate-limited per mapping: two devices behind
// one NAT address (same IP, two ports) do not hold each other up, while
// two claims on one host do.
func TestTargetKeys(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{Ranges: ranges("127.0.0.0/24"), TargetRate: 0.5, TargetBurst: 1, Interval: time.Hour}, false)
		var proven, claimed []*net.UDPConn
		for i := range 2 {
			u, c := e.device(byte(90+i), "127.0.0.90")
			e.hello(u, c, true, nil)
			if err := bindNow(e.k, u.String(), c.LocalAddr().(*net.UDPAddr).AddrPort(), time.Now()); err != nil {
				t.Fatal(err)
			}
			e.k.Wake(u, e.message(u, byte(90+i), push.UrgencyNormal, time.Hour))
			proven = append(proven, c)
		}
		for i := range 2 {
			u, c := e.device(byte(95+i), "127.0.0.95")
			e.hello(u, c, false, nil)
			e.k.Wake(u, e.message(u, byte(95+i), push.UrgencyNormal, time.Hour))
			claimed = append(claimed, c)
		}
		for i, c := range proven {
			if len(recv(c, 500*time.Millisecond)) != 1 {
				t.Errorf("proven device %d behind a shared IP was held back", i)
			}
		}
		got := 0
		for _, c := range claimed {
			got += len(recv(c, 100*time.Millisecond))
		}
		if got != 1 {
			t.Errorf("two claims on one host got %d datagrams in ~0.6 s at 0.5/s burst 1, want 1", got)
		}
	})
}

// openAt opens the store file path; the test closes it.
func openAt(t *testing.T, path string, reg *metrics.Registry) *store.Store {
	t.Helper()
	st, err := store.Open(store.Options{Path: path, Logger: slog.New(slog.DiscardHandler), Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// storedRecord reads u's wake record from st.
func storedRecord(t *testing.T, st *store.Store, u push.UAID) record {
	t.Helper()
	d, ok, err := st.Device(u)
	if err != nil || !ok {
		t.Fatalf("device %s: %v %v", u, ok, err)
	}
	r, err := decodeRecord(d.Wake)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Refreshes in place write nothing until a flush, which is one commit for
// all of them; a crash (the store closed without the kicker's flush) loses
// only their freshness; after the store and the kicker are opened again,
// no request captured before the restart is accepted, from any address,
// while the device's own next refresh is, and a move waits for the hold.
func TestRefreshAcrossRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	clk := &clock{t: time.UnixMilli(1_800_000_000_000)}
	keys, err := NewKeys(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	_, conn := openStoreAndSocket(t)
	start := func(st *store.Store) *Kicker {
		k, err := New(Config{Store: st, Sender: UDPSender{Conn: conn}, Keys: keys, BindingTTL: 2 * time.Minute,
			Now: clk.Now, Metrics: metrics.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	sreg := metrics.NewRegistry()
	st := openAt(t, path, sreg)
	k := start(st)
	const n = 50
	us := make([]push.UAID, n)
	for i := range us {
		us[i][0], us[i][15] = 0xf0, byte(i)
		if err := st.Register(context.Background(), store.Channel{UAID: us[i], ID: push.ChannelID{byte(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	addr := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(1000+i))
	}
	elsewhere := netip.MustParseAddrPort("198.51.100.9:4000")
	clk.Add(time.Millisecond)
	for i, u := range us { // first bindings: moves, written at once
		if err := bindNow(k, u.String(), addr(i), clk.Now()); err != nil {
			t.Fatal(err)
		}
	}
	bound := clk.Now()
	commits := func() float64 { return sreg.Value("pushrelay_store_commits_total") }
	before := commits()
	var captured time.Time
	for range 3 { // three refreshes each, 30 s apart: memory only
		clk.Add(30 * time.Second)
		captured = clk.Now()
		for i, u := range us {
			if err := bindNow(k, u.String(), addr(i), captured); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := commits() - before; got != 0 {
		t.Errorf("%d refreshes in place made %v commits, want 0", 3*n, got)
	}
	if r := storedRecord(t, st, us[0]); !r.verifiedAt.Equal(bound) {
		t.Errorf("stored binding time moved to %v before any flush", r.verifiedAt)
	}
	// Memory keeps the device fresh although the store's time is 90 s old.
	k.snaps = []entry{{u: us[0]}} // k has no Run: readStates is ours to call
	k.readStates()
	if to, why := k.states[0].rec.target(clk.Now().Add(time.Minute), 2*time.Minute, &Ranges{}); why != "" || to != addr(0) {
		t.Errorf("target with memory's freshness: %s %q", to, why)
	}
	// The crash: the store closes, the kicker never flushes.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	clk.Add(5 * time.Second)
	st = openAt(t, path, metrics.NewRegistry())
	defer st.Close()
	k2 := start(st)
	defer k2.Close()
	for _, from := range []netip.AddrPort{addr(0), elsewhere} {
		if err := bindNow(k2, us[0].String(), from, captured); !errors.Is(err, discovery.ErrReplay) {
			t.Errorf("request captured before the restart replayed from %s: %v", from, err)
		}
	}
	if r := storedRecord(t, st, us[0]); r.verified != addr(0) {
		t.Errorf("binding moved to %s", r.verified)
	}
	// The stored time is stale after the crash (its binding is not used,
	// never a wrong one); the device's own next refresh revives it.
	clk.Add(time.Second)
	if err := bindNow(k2, us[0].String(), addr(0), clk.Now()); err != nil {
		t.Errorf("the device's next refresh: %v", err)
	}
	// A real move waits for the hold, then goes through.
	if err := bindNow(k2, us[1].String(), elsewhere, clk.Now()); !errors.Is(err, discovery.ErrReplay) {
		t.Errorf("move within the hold: %v", err)
	}
	clk.Add(restartHold)
	if err := bindNow(k2, us[1].String(), elsewhere, clk.Now()); err != nil {
		t.Errorf("move after the hold: %v", err)
	}
	if r := storedRecord(t, st, us[1]); r.verified != elsewhere {
		t.Errorf("moved binding stored as %s", r.verified)
	}
	// A flush (Close) writes the refresh; the record carries its stamp.
	refreshed := clk.Now().Add(-restartHold)
	if err := k2.Close(); err != nil {
		t.Fatal(err)
	}
	if r := storedRecord(t, st, us[0]); !r.verifiedAt.Equal(refreshed) || r.stamp != refreshed.UnixMilli() {
		t.Errorf("after flush: at %v stamp %d, want %v", r.verifiedAt, r.stamp, refreshed)
	}
}

// A flush writes every entry in one commit and empties the table; a full
// table writes refreshes at once instead of growing, and asks for a flush.
func TestFlushAndBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{BindingTTL: 2 * time.Minute, MaxFresh: 3, FlushInterval: time.Hour}, true)
		var us []push.UAID
		var as []netip.AddrPort
		for i := range 5 {
			u, c := e.device(byte(100+i), "127.0.0.1")
			e.hello(u, c, true, nil)
			us, as = append(us, u), append(as, c.LocalAddr().(*net.UDPAddr).AddrPort())
		}
		e.clock.Add(time.Millisecond)
		for i, u := range us {
			if err := bindNow(e.k, u.String(), as[i], e.now()); err != nil {
				t.Fatal(err)
			}
		}
		e.clock.Add(30 * time.Second)
		for i, u := range us {
			if err := bindNow(e.k, u.String(), as[i], e.now()); err != nil {
				t.Fatal(err)
			}
		}
		// Run may flush as soon as the table is full, so the split between
		// memory and written refreshes depends on timing; the bound does not.
		refreshed := e.metric(`pushrelay_wake_bindings_total{result="refreshed"}`)
		written := e.metric(`pushrelay_wake_bindings_total{result="written"}`)
		if refreshed < 3 || refreshed+written != 10 {
			t.Errorf("%v refreshes kept in memory, %v bindings written; want at least 3 and 10 in all", refreshed, written)
		}
		e.k.fmu.Lock()
		if n := len(e.k.fresh); n > 3 {
			t.Errorf("the table holds %d, over its bound of 3", n)
		}
		e.k.fmu.Unlock()
		// The table filled up, so Run flushes without waiting for the hour.
		waitFor(t, "the flush", func() bool { return e.metric(`pushrelay_wake_flushes_total{result="ok"}`) >= 1 })
		if err := e.k.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := e.metric("pushrelay_wake_fresh_bindings"); got != 0 {
			t.Errorf("%v bindings left in memory after a flush", got)
		}
		if got := e.metric("pushrelay_wake_flushed_bindings_total"); got != refreshed {
			t.Errorf("%v bindings flushed, want %v", got, refreshed)
		}
		for _, u := range us {
			d, _, _ := e.st.Device(u)
			if r, _ := decodeRecord(d.Wake); r.verifiedAt.UnixMilli() != e.now().UnixMilli() {
				t.Errorf("%s stored at %v, want %v", u, r.verifiedAt, e.now())
			}
		}
	})
}

// bindNow is Bind as the STUN server sees it, a move's write included.
func bindNow(k *Kicker, username string, addr netip.AddrPort, stamp time.Time) error {
	err := k.Bind(username, addr, stamp)
	if p, ok := errors.AsType[*discovery.Pending](err); ok {
		return p.Wait()
	}
	return err
}

// In a site (relay/site): WakeAfter holds a wake back by its delay, even
// one already due, and sends nothing once the message is gone; Drop
// forgets the device's addresses and its wake due, and a later binding
// starts again; OnBound hears of every binding accepted.
func TestWakeAfterDropOnBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var bound []push.UAID
		e := newEnv(t, Config{Ranges: ranges("127.0.0.0/24"), Interval: time.Second, OnBound: func(u push.UAID) {
			mu.Lock()
			bound = append(bound, u)
			mu.Unlock()
		}}, false)
		u, c := e.device(90, "127.0.0.90")
		if r := e.hello(u, c, false, nil); r.Status != pushproto.StatusWake {
			t.Fatalf("hello reply %+v", r)
		}
		mu.Lock()
		if len(bound) != 1 || bound[0] != u {
			t.Fatalf("OnBound heard %v after a hello accepted for wake", bound)
		}
		mu.Unlock()
		until := e.message(u, 90, push.UrgencyNormal, time.Hour)
		e.k.WakeAfter(u, until, 500*time.Millisecond)
		if got := recv(c, 400*time.Millisecond); len(got) != 0 {
			t.Fatalf("%d datagrams before the delay", len(got))
		}
		if got := recv(c, 200*time.Millisecond); len(got) != 1 {
			t.Fatalf("%d datagrams after the delay, want 1", len(got))
		}
		// Due again in a second: a WakeAfter holds it back longer.
		e.k.WakeAfter(u, until, 3*time.Second)
		if got := recv(c, 2500*time.Millisecond); len(got) != 0 {
			t.Fatalf("%d datagrams within the second delay", len(got))
		}
		if err := e.k.Drop(context.Background(), u); err != nil {
			t.Fatal(err)
		}
		if e.k.Pending() != 0 || e.metric(`pushrelay_wake_finished_total{reason="owner_moved"}`) != 1 {
			t.Fatalf("after Drop: pending %d", e.k.Pending())
		}
		if rec := storedRecord(t, e.st, u); rec.claimed.IsValid() || rec.verified.IsValid() {
			t.Fatalf("record after Drop %+v", rec)
		}
		e.k.Wake(u, until)
		if got := recv(c, 2*time.Second); len(got) != 0 {
			t.Fatalf("%d datagrams to a dropped binding", len(got))
		}
		// A second Drop finds nothing to forget and writes nothing.
		if err := e.k.Drop(context.Background(), u); err != nil {
			t.Fatal(err)
		}
		if n := e.metric(`pushrelay_wake_bindings_total{result="dropped"}`); n != 1 {
			t.Fatalf("dropped counted %v, want 1", n)
		}
		// The device says hello here again: it is woken again.
		e.hello(u, c, false, nil)
		e.k.Wake(u, until)
		if got := recv(c, 100*time.Millisecond); len(got) != 1 {
			t.Fatalf("%d datagrams after a new hello, want 1", len(got))
		}
	})
}

// Bindings lists the devices with a stored binding, and not one dropped.
func TestBindings(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{Ranges: ranges("127.0.0.0/24"), Interval: time.Second}, false)
		u, c := e.device(91, "127.0.0.91")
		v, _ := e.device(92, "127.0.0.92")
		if r := e.hello(u, c, false, nil); r.Status != pushproto.StatusWake {
			t.Fatalf("hello reply %+v", r)
		}
		if err := e.k.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		list := func() []push.UAID {
			var got []push.UAID
			if err := e.k.Bindings(func(u push.UAID) { got = append(got, u) }); err != nil {
				t.Fatal(err)
			}
			return got
		}
		if got := list(); len(got) != 1 || got[0] != u {
			t.Fatalf("Bindings = %v, want only %v (not %v, which never bound)", got, u, v)
		}
		if err := e.k.Drop(context.Background(), u); err != nil {
			t.Fatal(err)
		}
		if got := list(); len(got) != 0 {
			t.Fatalf("Bindings after Drop = %v", got)
		}
		// DropStored forgets every stored binding but those kept.
		w, cw := e.device(93, "127.0.0.93")
		for _, d := range []struct {
			u push.UAID
			c *net.UDPConn
		}{{u, c}, {w, cw}} {
			if r := e.hello(d.u, d.c, false, nil); r.Status != pushproto.StatusWake {
				t.Fatalf("hello reply %+v", r)
			}
		}
		if err := e.k.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		n, err := e.k.DropStored(context.Background(), func(x push.UAID) bool { return x == w })
		if err != nil || n != 1 {
			t.Fatalf("DropStored = %d, %v; want 1 (u's; w's kept)", n, err)
		}
		if got := list(); len(got) != 1 || got[0] != w {
			t.Fatalf("Bindings after DropStored = %v, want only %v", got, w)
		}
		if rec := storedRecord(t, e.st, u); rec.claimed.IsValid() || rec.verified.IsValid() {
			t.Fatalf("u's record after DropStored %+v", rec)
		}
	})
}
