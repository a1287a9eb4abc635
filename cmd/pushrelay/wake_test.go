package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/discovery"
	"github.com/pushrelay/pushrelay/kick"
	pushtypes "github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"

	"github.com/pushrelay/pushrelay/cmd/pushrelay/internal/relayproc"
)

// sleeper is a test device that sleeps: a wake socket on its own loopback
// address (127.77.0.N port 5000, away from the bench's 127.0.x.y), a UAID and one subscription.
type sleeper struct {
	t     *testing.T
	p     *relayProc
	sock  *net.UDPConn
	addr  netip.AddrPort
	uaid  string
	sub   *testSub
	hello pushproto.ServerFrame
}

// newSleeper binds ip:5000, says hello with it as wakeup_hostport
// (wake_auth as asked), registers one channel and closes the WebSocket.
func newSleeper(t *testing.T, p *relayProc, ip string, auth bool) *sleeper {
	t.Helper()
	sock, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), 5000)))
	if err != nil {
		t.Fatalf("wake socket: %v", err)
	}
	t.Cleanup(func() { sock.Close() })
	s := &sleeper{t: t, p: p, sock: sock, addr: sock.LocalAddr().(*net.UDPAddr).AddrPort()}
	d := s.connect(auth)
	s.sub = d.register("")
	d.c.Close()
	return s
}

// connect says hello as this device (a new one the first time).
func (s *sleeper) connect(auth bool) *device {
	s.t.Helper()
	c := dial(s.t, s.p)
	h, err := c.Hello(s.uaid, pushclient.HelloOptions{Wake: s.addr, WakeAuth: auth})
	if err != nil {
		s.t.Fatal(err)
	}
	s.uaid, s.hello = h.UAID, h
	return &device{t: s.t, c: c, uaid: h.UAID, subs: map[string]*testSub{}}
}

// bindRequest builds an authenticated STUN request for this device.
func (s *sleeper) bindRequest(password string) ([]byte, [12]byte) {
	s.t.Helper()
	req, tx, err := discovery.NewBindingRequest(s.uaid, password, time.Now())
	if err != nil {
		s.t.Fatal(err)
	}
	return req, tx
}

// bind proves the wake address with STUN and returns what the relay saw.
func (s *sleeper) bind() netip.AddrPort {
	s.t.Helper()
	ap, err := discovery.Bind(s.sock, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(s.hello.STUN)), s.uaid, s.hello.WakeKey,
		discovery.BindOptions{Tries: 1, Wait: 2 * time.Second})
	if err != nil {
		s.t.Fatal(err)
	}
	return ap
}

func sendUDP(t *testing.T, c *net.UDPConn, b []byte, to string) {
	t.Helper()
	ap, err := netip.ParseAddrPort(to)
	if err != nil {
		t.Fatalf("address %q: %v", to, err)
	}
	if _, err := c.WriteToUDPAddrPort(b, ap); err != nil {
		t.Fatal(err)
	}
}

// read returns the next datagram, or nil after d.
func (s *sleeper) read(d time.Duration) []byte {
	buf := make([]byte, 1500)
	s.sock.SetReadDeadline(time.Now().Add(d))
	n, err := s.sock.Read(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

// datagrams counts what arrives within d.
func (s *sleeper) datagrams(d time.Duration) [][]byte {
	var out [][]byte
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if b := s.read(time.Until(end)); b != nil {
			out = append(out, append([]byte(nil), b...))
		}
	}
	return out
}

func (s *sleeper) verify(b []byte) bool {
	key, err := kick.ParseKey(s.hello.WakeKey)
	if err != nil {
		s.t.Fatal(err)
	}
	u, _ := pushtypes.ParseUAID(s.uaid)
	_, ok := kick.Verify(key, u, b)
	return ok
}

// A device sleeps; an app server posts; the datagram arrives; the device
// reconnects, receives, acks and gets no more datagrams.
func TestWakeCycle(t *testing.T) {
	p := startRelay(t, t.TempDir(), "--wake-interval", "300ms", "--wake-idle-close", "500ms")
	s := newSleeper(t, p, "127.77.0.11", true)
	if s.hello.Status != pushproto.StatusOK || s.hello.WakeKey == "" || s.hello.STUN != p.STUN {
		t.Fatalf("hello before STUN: %+v (stun listener %s)", s.hello, p.STUN)
	}
	if seen := s.bind(); seen != s.addr {
		t.Fatalf("relay saw %s, want %s", seen, s.addr)
	}
	mustCreated(t, push(t, s.sub, "wake up", nil))
	b := s.read(5 * time.Second)
	if b == nil || len(b) > 64 || !s.verify(b) {
		t.Fatalf("wake datagram %q", b)
	}
	d := s.connect(true)
	if d.c.UAID != s.uaid || s.hello.Status != pushproto.StatusWake {
		t.Fatalf("reconnect: uaid %s status %d", d.c.UAID, s.hello.Status)
	}
	d.subs[s.sub.channel] = s.sub
	if text, _ := d.receive(5 * time.Second); text != "wake up" {
		t.Fatalf("got %q", text)
	}
	// The relay closes the idle session with 4774 so the device sleeps.
	_, err := d.c.Read(time.Now().Add(5 * time.Second))
	if ce, ok := err.(*pushclient.CloseError); !ok || ce.Code != pushproto.CloseWake {
		t.Fatalf("want close 4774, got %v", err)
	}
	// Three retry intervals pass: nothing more arrives.
	if more := s.datagrams(time.Second); len(more) != 0 {
		t.Errorf("%d datagrams after the ack", len(more))
	}
	if n := p.metric(`pushrelay_wake_datagrams_total{format="auth",kind="first"}`); n != 1 {
		t.Errorf("sent %v first datagrams", n)
	}
	if n := p.metric(`pushrelay_wake_datagrams_total{format="auth",kind="retry"}`); n != 0 {
		t.Errorf("sent %v retries", n)
	}
	if p.waiting() != 0 {
		t.Error("message still waiting")
	}
}

// The same cycle with `pushrelay device --wake`, the tool a person runs.
func TestWakeDeviceTool(t *testing.T) {
	p := startRelay(t, t.TempDir(), "--wake-idle-close", "2s")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, "device", "--server", p.Device, "--wake", "127.77.0.12", "--count", "2", "--timeout", "50s")
	cmd.Env = relayproc.Env()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var sub string
	expect := func(prefix string) string {
		t.Helper()
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("device exited before %q; stderr:\n%s", prefix, stderr.String())
				}
				if strings.HasPrefix(l, "subscription ") && sub == "" {
					sub = strings.TrimPrefix(l, "subscription ")
				}
				if strings.HasPrefix(l, prefix) {
					return l
				}
			case <-ctx.Done():
				t.Fatalf("no %q; stderr:\n%s", prefix, stderr.String())
			}
		}
	}
	if l := expect("stun "); !strings.HasSuffix(l, "127.77.0.12:5000") {
		t.Errorf("stun line %q", l)
	}
	expect("sleeping")
	for i, text := range []string{"first", "second"} {
		send := exec.Command(binPath, "send", "--subscription", sub, "--data", text)
		send.Env = relayproc.Env()
		if b, err := send.CombinedOutput(); err != nil {
			t.Fatalf("send: %v\n%s", err, b)
		}
		expect("woken by 28-byte datagram")
		if l := expect("notification "); !strings.Contains(l, fmt.Sprintf("data=%q", text)) {
			t.Errorf("notification %d: %q", i, l)
		}
		if i == 0 {
			expect("sleeping")
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("device: %v\n%s", err, stderr.String())
	}
	if n := p.metric(`pushrelay_wake_datagrams_total{format="auth",kind="first"}`); n != 2 {
		t.Errorf("%v datagrams for two messages", n)
	}
}

// Low and very-low urgency wait for the next connection.
func TestWakeLowUrgency(t *testing.T) {
	p := startRelay(t, t.TempDir(), "--wake-cidrs", "127.77.0.13/32")
	s := newSleeper(t, p, "127.77.0.13", false)
	if s.hello.Status != pushproto.StatusWake {
		t.Fatalf("claimed address inside wake_cidrs: status %d", s.hello.Status)
	}
	for _, u := range []string{"low", "very-low"} {
		mustCreated(t, push(t, s.sub, u, map[string]string{"Urgency": u}))
	}
	if got := s.datagrams(700 * time.Millisecond); len(got) != 0 {
		t.Fatalf("low urgency woke the device: %q", got)
	}
	mustCreated(t, push(t, s.sub, "normal", nil))
	if b := s.read(5 * time.Second); !strings.HasPrefix(string(b), "NOTIFY 127.77.0.13:5000") {
		t.Fatalf("compatible datagram %q", b)
	}
	d := s.connect(false)
	d.subs[s.sub.channel] = s.sub
	got := map[string]bool{}
	for range 3 {
		text, _ := d.receive(5 * time.Second)
		got[text] = true
	}
	if len(got) != 3 {
		t.Errorf("after wake got %v", got)
	}
}

// Retries back off and stop when the message expires.
func TestWakeExpiryStopsRetries(t *testing.T) {
	p := startRelay(t, t.TempDir(), "--wake-cidrs", "127.77.0.14", "--wake-interval", "200ms")
	s := newSleeper(t, p, "127.77.0.14", false)
	mustCreated(t, push(t, s.sub, "soon gone", map[string]string{"TTL": "2"}))
	got := s.datagrams(2500 * time.Millisecond)
	// 0, 0.2, 0.6, 1.4 s; the next would be at 3 s, after expiry. A busy
	// machine may delay a retry, never add one.
	if len(got) < 2 || len(got) > 4 {
		t.Errorf("%d datagrams before expiry, want 2 to 4", len(got))
	}
	if more := s.datagrams(1500 * time.Millisecond); len(more) != 0 {
		t.Errorf("%d datagrams after expiry", len(more))
	}
	if p.metric(`pushrelay_wake_finished_total{reason="expired"}`) != 1 || p.metric("pushrelay_wake_pending") != 0 {
		t.Error("expiry not recorded")
	}
}

// A claimed address outside the allowed ranges is never sent anything.
func TestWakeOutsideRanges(t *testing.T) {
	p := startRelay(t, t.TempDir(), "--wake-cidrs", "127.77.0.0/30")
	out := newSleeper(t, p, "127.77.0.15", false)
	in := newSleeper(t, p, "127.77.0.2", false)
	if out.hello.Status != pushproto.StatusOK || in.hello.Status != pushproto.StatusWake {
		t.Fatalf("statuses outside %d inside %d", out.hello.Status, in.hello.Status)
	}
	mustCreated(t, push(t, out.sub, "x", map[string]string{"Urgency": "high"}))
	mustCreated(t, push(t, in.sub, "y", nil))
	if in.read(5*time.Second) == nil {
		t.Fatal("device inside the range not woken")
	}
	if got := out.datagrams(time.Second); len(got) != 0 {
		t.Errorf("outside address got %q", got)
	}
	if p.metric(`pushrelay_wake_dropped_total{reason="outside_ranges"}`) != 1 {
		t.Error("drop not counted")
	}
}

// Spoofed STUN requests (wrong key, unknown UAID, a real request replayed
// from another address) never move a device's address.
func TestWakeSpoofedSTUN(t *testing.T) {
	p := startRelay(t, t.TempDir())
	s := newSleeper(t, p, "127.77.0.16", true)
	s.bind()
	attacker, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.77.0.17:5000")))
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	noAnswer := func(what string) {
		t.Helper()
		buf := make([]byte, 1500)
		attacker.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if n, err := attacker.Read(buf); err == nil {
			t.Errorf("%s: attacker got a %d-byte answer", what, n)
		}
	}
	// A fresh request from the device's socket (stamps count in
	// milliseconds and must grow), captured...
	time.Sleep(5 * time.Millisecond)
	captured, _ := s.bindRequest(s.hello.WakeKey)
	sendUDP(t, s.sock, captured, s.hello.STUN)
	if s.read(2*time.Second) == nil {
		t.Fatal("no answer to the device")
	}
	// ...and replayed from elsewhere.
	sendUDP(t, attacker, captured, s.hello.STUN)
	noAnswer("replay")
	wrongKey, _ := s.bindRequest("AAAAAAAAAAAAAAAAAAAAAA")
	sendUDP(t, attacker, wrongKey, s.hello.STUN)
	noAnswer("wrong key")
	other := *s
	other.uaid = strings.Repeat("ab", 16)
	unknown, _ := other.bindRequest(s.hello.WakeKey)
	sendUDP(t, attacker, unknown, s.hello.STUN)
	noAnswer("unknown uaid")
	for result, want := range map[string]float64{"replay": 1, "bad_integrity": 1, "unknown_user": 1, "bound": 2} {
		if got := p.metric(`pushrelay_stun_requests_total{result="` + result + `"}`); got != want {
			t.Errorf("stun %s: %v, want %v", result, got, want)
		}
	}
	// The wake still goes to the device, never to the attacker.
	mustCreated(t, push(t, s.sub, "x", nil))
	if b := s.read(5 * time.Second); b == nil || !s.verify(b) {
		t.Fatalf("device datagram %q", b)
	}
	buf := make([]byte, 1500)
	attacker.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if n, err := attacker.Read(buf); err == nil {
		t.Errorf("attacker got %q", buf[:n])
	}
}

// The global limit and the per-target limit hold, counted in datagrams
// that arrive.
func TestWakeRateLimits(t *testing.T) {
	t.Run("global", func(t *testing.T) {
		p := startRelay(t, t.TempDir(), "--wake-cidrs", "127.77.1.0/24", "--wake-rate", "5", "--wake-interval", "1h")
		var ss []*sleeper
		for i := range 20 {
			ss = append(ss, newSleeper(t, p, fmt.Sprintf("127.77.1.%d", 10+i), false))
		}
		start := time.Now()
		for _, s := range ss {
			mustCreated(t, push(t, s.sub, "x", nil))
		}
		// Burst 10, then 5/s: 20 take at least 2 s.
		arrived := make(chan time.Time, len(ss))
		for _, s := range ss {
			go func() {
				if s.read(15*time.Second) != nil {
					arrived <- time.Now()
				}
			}()
		}
		var last time.Time
		for range ss {
			select {
			case at := <-arrived:
				last = at
			case <-time.After(20 * time.Second):
				t.Fatal("not every device was woken")
			}
		}
		if took := last.Sub(start); took < 1500*time.Millisecond {
			t.Errorf("20 wakes at 5/s (burst 10) took only %v", took)
		}
		if p.metric(`pushrelay_wake_deferred_total{limit="global"}`) == 0 {
			t.Error("no deferral counted")
		}
	})
	t.Run("target", func(t *testing.T) {
		p := startRelay(t, t.TempDir(), "--wake-cidrs", "127.77.2.0/24", "--wake-target-rate", "1", "--wake-interval", "1h")
		var ss []*sleeper
		for i := range 8 {
			// Eight devices claim one host (ports 5000 + i).
			s := &sleeper{t: t, p: p}
			sock, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(fmt.Sprintf("127.77.2.9:%d", 5000+i))))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { sock.Close() })
			s.sock, s.addr = sock, sock.LocalAddr().(*net.UDPAddr).AddrPort()
			d := s.connect(false)
			s.sub = d.register("")
			d.c.Close()
			ss = append(ss, s)
		}
		for _, s := range ss {
			mustCreated(t, push(t, s.sub, "x", nil))
		}
		time.Sleep(time.Second)
		total := 0
		for _, s := range ss {
			total += len(s.datagrams(10 * time.Millisecond))
		}
		// Burst 3, then 1/s: within about a second at most 4 or 5.
		if total < 3 || total > 5 {
			t.Errorf("%d datagrams to one host in ~1s, want 3 to 5", total)
		}
		if p.metric(`pushrelay_wake_deferred_total{limit="target"}`) == 0 {
			t.Error("no deferral counted")
		}
	})
}

// A request the relay accepted just before a crash (a refresh, its stamp
// only in memory, never flushed) is not accepted by the restarted relay,
// from the device's own address or from another; the device's next
// refresh is, and the wake goes to it.
func TestWakeReplayAfterCrash(t *testing.T) {
	dir := t.TempDir()
	p := startRelay(t, dir)
	s := newSleeper(t, p, "127.77.0.30", true)
	s.bind() // a move: written at once
	time.Sleep(5 * time.Millisecond)
	captured, _ := s.bindRequest(s.hello.WakeKey)
	sendUDP(t, s.sock, captured, s.hello.STUN)
	if s.read(10*time.Second) == nil {
		t.Fatal("no answer to the refresh")
	}
	if got := p.metric(`pushrelay_wake_bindings_total{result="refreshed"}`); got != 1 {
		t.Fatalf("refreshed in memory: %v, want 1", got)
	}
	p.Kill() // a crash: no flush
	p = startRelay(t, dir)
	s.p = p
	d := s.connect(true) // learns the new STUN address
	d.c.Close()
	attacker, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.77.0.31:5000")))
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	sendUDP(t, s.sock, captured, s.hello.STUN)
	sendUDP(t, attacker, captured, s.hello.STUN)
	// The relay handles datagrams in order: once it counted both, neither
	// was answered if nothing is queued.
	deadline := time.Now().Add(10 * time.Second)
	for p.metric(`pushrelay_stun_requests_total{result="replay"}`) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("replays counted: %v, want 2", p.metric(`pushrelay_stun_requests_total{result="replay"}`))
		}
		time.Sleep(10 * time.Millisecond)
	}
	for name, c := range map[string]*net.UDPConn{"device": s.sock, "attacker": attacker} {
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, err := c.Read(make([]byte, 1500)); err == nil {
			t.Errorf("a request captured before the crash, replayed from the %s's address, was answered (%d bytes)", name, n)
		}
	}
	if got := p.metric(`pushrelay_stun_requests_total{result="bound"}`); got != 0 {
		t.Errorf("bound %v after replays, want 0", got)
	}
	if ap := s.bind(); ap != s.addr {
		t.Errorf("the device's own refresh mapped to %s", ap)
	}
	// The endpoint is the same but for the new listener's port.
	sub := *s.sub
	sub.endpoint = p.Endpoint + sub.endpoint[strings.Index(sub.endpoint, "/wpush/"):]
	mustCreated(t, push(t, &sub, "x", nil))
	if b := s.read(10 * time.Second); b == nil || !s.verify(b) {
		t.Fatalf("device datagram %q", b)
	}
}
