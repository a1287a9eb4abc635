//go:build !nosite

package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/discovery"
)

// wakesFrom returns where the wake datagrams (not STUN) that reach s's
// wake socket within d come from, verifying each.
func (s *sleeper) wakesFrom(d time.Duration) []string {
	s.t.Helper()
	from, _ := s.wakesFromAt(d)
	return from
}

// wakesFromAt is wakesFrom, with when the first came.
func (s *sleeper) wakesFromAt(d time.Duration) (from []string, first time.Time) {
	s.t.Helper()
	buf := make([]byte, 1500)
	end := time.Now().Add(d)
	defer s.sock.SetReadDeadline(time.Time{})
	for time.Now().Before(end) {
		s.sock.SetReadDeadline(end)
		n, src, err := s.sock.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		if discovery.IsSTUN(buf[:n]) {
			continue
		}
		if !s.verify(buf[:n]) {
			s.t.Fatalf("wake datagram from %s does not verify", src)
		}
		if len(from) == 0 {
			first = time.Now()
		}
		from = append(from, netip.AddrPortFrom(src.Addr().Unmap(), src.Port()).String())
	}
	return from, first
}

// argValue is the value following flag in args.
func argValue(args []string, flag string) string {
	if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}

// TestE2ESiteWake runs a site of three built binaries with STUN on
// 127.0.0.1: a device proves its wake address to X and sleeps; a post to
// C wakes it with a datagram from X's STUN socket (its NAT mapping is
// X's); once it proved its address to Y, only Y wakes it (X forgot its
// binding); while it holds a WebSocket to C, Y does not wake it; a
// fourth member started with another endpoint.key is refused (its
// /readyz 503 naming the file), and the site goes on without it.
func TestE2ESiteWake(t *testing.T) {
	ps, args, dirs := testSiteMembers(t, 3, "--wake-idle-close", "300ms")
	x, y, c := ps[0], ps[1], ps[2]
	names := map[string]string{x.STUN: "X", y.STUN: "Y", c.STUN: "C"}
	who := func(from []string) []string {
		var out []string
		for _, f := range from {
			out = append(out, names[f]+"="+f)
		}
		return out
	}
	onlyFrom := func(want *relayProc, what string, from []string) {
		t.Helper()
		if len(from) == 0 {
			t.Fatalf("%s: no wake datagram; want one from %s (STUN %s)", what, names[want.STUN], want.STUN)
		}
		for _, f := range from {
			if f != want.STUN {
				t.Fatalf("%s: wake datagrams from %v; want only from %s (STUN %s)", what, who(from), names[want.STUN], want.STUN)
			}
		}
	}
	// wakeUp: the woken device connects to p, takes the message, acks
	// it and goes back to sleep (p closes its idle session with 4774).
	wakeUp := func(s *sleeper, p *relayProc, want string) {
		t.Helper()
		s.p = p
		d := s.connect(true)
		d.subs[s.sub.channel] = s.sub
		if text, _ := d.receive(10 * time.Second); text != want {
			t.Fatalf("woken device got %q, want %q", text, want)
		}
		waitFor(t, "the ack applied everywhere", func() bool { return x.waiting()+y.waiting()+c.waiting() == 0 })
		d.c.Close()
	}

	// Proven to X.
	s := newSleeper(t, x, "127.77.0.41", true)
	if s.hello.STUN != x.STUN {
		t.Fatalf("hello on X names STUN %s, want X's %s", s.hello.STUN, x.STUN)
	}
	s.bind()
	waitFor(t, "X owns the device's waking", func() bool { return x.metric("pushrelay_site_wake_owned") == 1 })
	posted := time.Now()
	mustCreated(t, push(t, &testSub{channel: s.sub.channel, endpoint: at(s.sub.endpoint, c), keys: s.sub.keys}, "one", nil))
	from, first := s.wakesFromAt(1500 * time.Millisecond)
	onlyFrom(x, "post to C, device proven to X", from)
	t.Logf("post to C to X's wake datagram: %s", first.Sub(posted).Round(time.Millisecond))
	wakeUp(s, x, "one")

	// Proven to Y: X forgets its binding; Y alone wakes it.
	s.p = y
	s.connect(true).c.Close()
	if s.hello.STUN != y.STUN {
		t.Fatalf("hello on Y names STUN %s, want Y's %s", s.hello.STUN, y.STUN)
	}
	s.bind()
	waitFor(t, "Y owns the device's waking, X forgot it", func() bool {
		return y.metric("pushrelay_site_wake_owned") == 1 && x.metric("pushrelay_site_wake_owned") == 0 &&
			x.metric("pushrelay_site_wake_bindings_dropped_total") == 1
	})
	mustCreated(t, push(t, &testSub{channel: s.sub.channel, endpoint: at(s.sub.endpoint, c), keys: s.sub.keys}, "two", nil))
	onlyFrom(y, "post to C, device proven to Y after X", s.wakesFrom(1500*time.Millisecond))
	wakeUp(s, y, "two")

	// A WebSocket to C: Y holds the binding but holds the wake back, and
	// the session on C takes the message within the recheck.
	d := connect(t, c, s.uaid)
	d.subs[s.sub.channel] = s.sub
	waitFor(t, "Y sees C's socket", func() bool {
		cl, _ := y.status()["cluster"].(map[string]any)
		ms, _ := cl["members"].([]any)
		for _, m := range ms {
			mm, _ := m.(map[string]any)
			if mm["name"] == "m3" && mm["sockets"] == float64(1) {
				return true
			}
		}
		return false
	})
	mustCreated(t, push(t, &testSub{channel: s.sub.channel, endpoint: at(s.sub.endpoint, x), keys: s.sub.keys}, "three", nil))
	if text, _ := d.receive(10 * time.Second); text != "three" {
		t.Fatalf("device on C got %q", text)
	}
	if from := s.wakesFrom(3 * time.Second); len(from) != 0 {
		t.Fatalf("device with a WebSocket to C woken from %v", who(from))
	}
	if n := y.metric(`pushrelay_site_wakes_total{decision="deferred"}`); n != 1 {
		t.Fatalf("Y deferred %v wakes, want 1", n)
	}
	d.c.Close()

	// A fourth member with the site's wake.key but its own endpoint.key.
	dir := t.TempDir()
	wk, err := os.ReadFile(filepath.Join(dirs[0], "wake.key"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "wake.key"), wk, 0o600); err != nil {
		t.Fatal(err)
	}
	odd := startRelay(t, dir, append([]string{"--node-name", "m4", "--cluster-listen", freeTCPUDPPort(t), "--cluster-peer-listen", freeUDPPort(t),
		"--cluster-key", argValue(args[0], "--cluster-key"), "--cluster-expect", "3", "--join", argValue(args[0], "--cluster-listen")},
		linkKeys(t, "m4")["m4"]...)...)
	waitFor(t, "m4 refused", func() bool { return odd.metric(`pushrelay_site_keys_refused_total{side="self"}`) == 1 })
	code, body := httpGet(odd.Admin + "/readyz")
	if code != 503 || !strings.Contains(body, "endpoint.key differs") || strings.Contains(body, "wake.key differs") {
		t.Fatalf("m4's /readyz: %d %q; want 503 naming endpoint.key", code, body)
	}
	cl, _ := odd.status()["cluster"].(map[string]any)
	if why, _ := cl["keys_refused"].(string); !strings.Contains(why, "endpoint.key") {
		t.Fatalf("m4's /status keys_refused %q", why)
	}
	var leader *relayProc
	for _, p := range ps {
		if p.siteState() == "leader" {
			leader = p
		}
	}
	waitFor(t, "the leader refused m4", func() bool {
		return leader.metric(`pushrelay_site_keys_refused_total{side="other"}`) == 1
	})
	if !strings.Contains(leader.stderr.String(), "member refused") || !strings.Contains(leader.stderr.String(), "m4") {
		t.Fatal("the leader did not log m4's refusal")
	}
	st, _ := leader.status()["cluster"].(map[string]any)
	site, _ := st["site"].(map[string]any)
	if v, _ := site["voters"].([]any); len(v) != 3 {
		t.Fatalf("voters %v; m4 must not be added", v)
	}
	for _, p := range ps {
		if code, body := httpGet(p.Admin + "/readyz"); code != 200 {
			t.Fatalf("a member of the site unready: %d %q", code, body)
		}
	}
	mustCreated(t, push(t, &testSub{channel: s.sub.channel, endpoint: at(s.sub.endpoint, c), keys: s.sub.keys}, "four", nil))
}
