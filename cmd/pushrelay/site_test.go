package main

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	mathrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testSiteMembers starts n built binaries as one new site (cluster_expect
// n): the first makes endpoint.key and wake.key, which the others are
// given before their first start (docs/cluster.md, "Starting a site"),
// so that any member takes any endpoint. It returns them once all are
// ready (the site formed), and the argument lists to restart each. extra
// is given to every member.
func testSiteMembers(t *testing.T, n int, extra ...string) ([]*relayProc, [][]string, []string) {
	t.Helper()
	raw := make([]byte, 32)
	rand.Read(raw)
	gossip := base64.StdEncoding.EncodeToString(raw)
	var names []string
	for i := range n {
		names = append(names, fmt.Sprintf("m%d", i+1))
	}
	keys := linkKeys(t, names...)
	dirs := make([]string, n)
	args := make([][]string, n)
	var ps []*relayProc
	// Fixed ports, as on a gateway: a member restarted on its data dir
	// is found where the others last saw it.
	gossipAddrs := make([]string, n)
	for i := range n {
		gossipAddrs[i] = freeTCPUDPPort(t)
	}
	for i, name := range names {
		dirs[i] = t.TempDir()
		mkArgs := func() {
			args[i] = slices.Concat([]string{"--node-name", name, "--cluster-listen", gossipAddrs[i], "--cluster-peer-listen", freeTCPUDPPort(t),
				"--cluster-key", gossip, "--cluster-expect", fmt.Sprint(n), "--log-level", "info"}, keys[name], extra)
			if i > 0 {
				args[i] = append(args[i], "--join", strings.Join(gossipAddrs[:i], ","))
			}
		}
		mkArgs()
		if i > 0 {
			for _, f := range []string{"endpoint.key", "wake.key"} {
				data, err := os.ReadFile(filepath.Join(dirs[0], f))
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dirs[i], f), data, 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
		// A port picked free may be taken by the time the member binds
		// it (the members started before bind ports of their own): then
		// the member gets other ones; no member started before names
		// this one's.
		var p *relayProc
		for try := 0; ; try++ {
			var err error
			if p, err = tryStartRelay(t, dirs[i], args[i]...); err == nil {
				break
			} else if try == 2 || !strings.Contains(err.Error(), "address already in use") {
				t.Fatal(err)
			}
			gossipAddrs[i] = freeTCPUDPPort(t)
			mkArgs()
		}
		ps = append(ps, p)
	}
	for _, p := range ps {
		if err := p.WaitReady(30 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	return ps, args, dirs
}

// siteState is /status's view of the site's log on p ("" when p has none).
func (p *relayProc) siteState() string {
	cl, _ := p.status()["cluster"].(map[string]any)
	st, _ := cl["site"].(map[string]any)
	s, _ := st["state"].(string)
	return s
}

// at is endpoint as member p serves it: the same path on p's listener.
func at(endpoint string, p *relayProc) string {
	i := strings.Index(endpoint, "/wpush/")
	return p.Endpoint + endpoint[i:]
}

// TestE2ESite runs a site of three built binaries: a device on one member
// gets what app servers post to any member; the leader is SIGKILLed while
// posts go on, the other two go on with a new leader (every post they
// answered 201 reaches the device, which moves to a surviving member if
// its own was the leader); the killed member restarts on its data dir,
// rejoins and catches up.
func TestE2ESite(t *testing.T) {
	ps, args, dirs := testSiteMembers(t, 3)
	var leader *relayProc
	for _, p := range ps {
		if p.siteState() == "leader" {
			leader = p
		}
	}
	if leader == nil {
		t.Fatal("no member leads the site")
	}
	home := ps[1] // the device's member
	d := connect(t, home, "")
	s := d.register("")
	sent := map[string]bool{}
	for i, p := range ps {
		text := fmt.Sprintf("to m%d", i+1)
		mustCreated(t, push(t, &testSub{channel: s.channel, endpoint: at(s.endpoint, p), keys: s.keys}, text, nil))
		sent[text] = true
	}
	got := map[string]int{}
	for range sent {
		text, _ := d.receive(10 * time.Second)
		got[text]++
	}
	for text := range sent {
		if got[text] != 1 {
			t.Fatalf("device got %v, want each of %v once", got, sent)
		}
	}

	// The device's acks are committed before the kill (an ack still in
	// flight when its member dies is lost with it, and the message comes
	// again: at least once, as on one relay).
	for _, p := range ps {
		deadline := time.Now().Add(10 * time.Second)
		for p.waiting() != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("acked messages still waiting: %d", p.waiting())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// The leader dies.
	leader.Cmd.Process.Signal(syscall.SIGKILL)
	<-leader.Done
	killed := slices.Index(ps, leader)
	var rest []*relayProc
	for _, p := range ps {
		if p != leader {
			rest = append(rest, p)
		}
	}
	if leader == home {
		d.c.Abort()
		d = connect(t, rest[0], d.uaid)
		d.subs[s.channel] = s
		home = rest[0]
	}
	start := time.Now()
	var failover time.Duration
	for i := 0; i < 40; i++ {
		p := rest[i%2]
		text := fmt.Sprintf("after %d", i)
		resp := push(t, &testSub{channel: s.channel, endpoint: at(s.endpoint, p), keys: s.keys}, text, nil)
		switch resp.StatusCode {
		case 201:
			sent[text] = true
			if failover == 0 {
				failover = time.Since(start)
			}
		case 503:
			time.Sleep(100 * time.Millisecond)
		default:
			t.Fatalf("post %d to a survivor: %s", i, resp.Status)
		}
	}
	t.Logf("first 201 after the leader's SIGKILL: %s", failover.Round(time.Millisecond))
	for len(got) < len(sent) {
		text, _ := d.receive(15 * time.Second)
		if got[text]++; got[text] > 1 {
			t.Errorf("duplicate %q", text)
		}
	}
	for text := range sent {
		if got[text] == 0 {
			t.Errorf("answered 201, never received: %q", text)
		}
	}

	// The killed member comes back on its data dir and catches up: it
	// serves the device's UAID with nothing left waiting.
	back := startRelay(t, dirs[killed], args[killed]...)
	if err := back.WaitReady(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for back.waiting() != home.waiting() {
		if time.Now().After(deadline) {
			t.Fatalf("the restarted member holds %d waiting, the others %d", back.waiting(), home.waiting())
		}
		time.Sleep(50 * time.Millisecond)
	}
	mustCreated(t, push(t, &testSub{channel: s.channel, endpoint: at(s.endpoint, back), keys: s.keys}, "via the restarted", nil))
	if text, _ := d.receive(10 * time.Second); text != "via the restarted" {
		t.Fatalf("got %q", text)
	}
}

// freeTCPUDPPort is a 127.0.0.1 port free for both TCP and UDP (the
// gossip takes both), as far as one can tell. It is taken below the
// kernel's ephemeral range: a port the kernel picks for port 0 can be
// handed, between this check and the member's own bind seconds later,
// to the local end of any outgoing connection of the tests running
// alongside (CI: the consensus port of a site member, bound when the site
// formed, was "address already in use").
func freeTCPUDPPort(t *testing.T) string {
	t.Helper()
	lo, hi := 20000, 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 2048 {
				lo, hi = n/2, n
			}
		}
	}
	for range 50 {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(lo+mathrand.IntN(hi-lo)))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		c, err := net.ListenPacket("udp", addr)
		l.Close()
		if err == nil {
			c.Close()
			return addr
		}
	}
	t.Fatal("no port free for TCP and UDP")
	return ""
}

// A build tagged nosite (a single relay) links neither memberlist nor the
// consensus engine and refuses cluster_listen at start, saying why.
func TestNoSiteBuild(t *testing.T) {
	out, err := exec.Command("go", "list", "-tags", "nosite nopprof", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.Contains(p, "memberlist") || strings.Contains(p, "hashicorp/raft") || strings.HasSuffix(p, "relay/consensus") || strings.HasSuffix(p, "relay/site") {
			t.Errorf("a nosite build links %s", p)
		}
	}
	bin := filepath.Join(t.TempDir(), "pushrelay-nosite")
	if out, err := exec.Command("go", "build", "-tags", "nosite", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build -tags nosite: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "run", "--data-dir", t.TempDir(), "--cluster-listen", "127.0.0.1:7946", "--cluster-key",
		base64.StdEncoding.EncodeToString(make([]byte, 32)))
	out, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "this build has no site support") {
		t.Fatalf("cluster_listen on a nosite build: %v\n%s", err, out)
	}
}
