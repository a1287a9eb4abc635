package main

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/cmd/pushrelay/internal/relayproc"
)

// This file tests the relay link under faults with built binaries, each
// relay in its own network namespace, the two joined by one veth pair:
//
//	core 10.78.0.1 ── 10.78.0.2 edge   (the link: UDP port 7443 on the core)
//
// nftables drops the link's UDP as it arrives in either namespace (at
// random, or all of it); the kernel here has no netem. The test process stays in its
// own namespace and reaches each relay's HTTP and WebSocket listeners
// (127.0.0.1 inside the relay's namespace) through a TCP forwarder on its
// own loopback, whose every connection is dialed from a thread moved into
// the relay's namespace. The core's endpoints name its forwarder
// (public_url), so the app server posts to them as they are.
//
// Each test checks, as flow does, that every message the core answered
// 201 for reaches a device, and reports the duplicates devices saw.

const linkPort = "7443"

// linkLab is the two namespaces of one test.
type linkLab struct {
	t                  *testing.T
	core, edge         string
	coreIf, edgeIf     string
	coreAddr, edgeAddr string
}

// newLinkLab builds the namespaces, or skips the test saying why it
// cannot.
func newLinkLab(t *testing.T) *linkLab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (Debian: iproute2, nftables)", tool)
		}
	}
	id := os.Getpid() % 100000
	l := &linkLab{t: t, core: fmt.Sprintf("prlc%d", id), edge: fmt.Sprintf("prle%d", id),
		coreIf: fmt.Sprintf("prlc%dv", id), edgeIf: fmt.Sprintf("prle%dv", id),
		coreAddr: "10.78.0.1", edgeAddr: "10.78.0.2"}
	if err := runTool(t, "ip", "netns", "add", l.core); err != nil {
		t.Skipf("cannot create a network namespace here: %v", err)
	}
	t.Cleanup(func() {
		for _, ns := range []string{l.core, l.edge} {
			exec.Command("ip", "netns", "del", ns).Run()
		}
	})
	steps := [][]string{
		{"ip", "netns", "add", l.edge},
		{"ip", "link", "add", l.coreIf, "netns", l.core, "type", "veth", "peer", "name", l.edgeIf, "netns", l.edge},
		{"ip", "-n", l.core, "addr", "add", l.coreAddr + "/24", "dev", l.coreIf},
		{"ip", "-n", l.edge, "addr", "add", l.edgeAddr + "/24", "dev", l.edgeIf},
		{"ip", "-n", l.core, "link", "set", "lo", "up"},
		{"ip", "-n", l.edge, "link", "set", "lo", "up"},
		{"ip", "-n", l.core, "link", "set", l.coreIf, "up"},
		{"ip", "-n", l.edge, "link", "set", l.edgeIf, "up"},
		// Deleting the edge's first address keeps a second one in the
		// same subnet (the migration test moves the address so).
		{"ip", "netns", "exec", l.edge, "sysctl", "-qw", "net.ipv4.conf.all.promote_secondaries=1"},
		{"ip", "netns", "exec", l.edge, "sysctl", "-qw", "net.ipv4.conf." + l.edgeIf + ".promote_secondaries=1"},
	}
	for _, s := range steps {
		if err := runTool(t, s[0], s[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	for _, ns := range []string{l.core, l.edge} {
		if err := l.nft(ns, "add table inet prfaults\n"+
			"add chain inet prfaults in { type filter hook prerouting priority 0; }\n"); err != nil {
			t.Skipf("nftables is not available here: %v", err)
		}
	}
	return l
}

// nft runs an nft script in namespace ns.
func (l *linkLab) nft(ns, script string) error { return nftIn(ns, script) }

// nftIn runs an nft script in namespace ns.
func nftIn(ns, script string) error {
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// drop makes the link lose pct% of its UDP packets each way (100: the
// link is cut); 0 heals it. Packets are dropped as they arrive (each
// namespace's prerouting), as a lossy network loses them: a drop on
// output would fail the sender's sendmsg with EPERM instead, which
// quic-go takes for a dead connection.
func (l *linkLab) drop(pct int) {
	l.t.Helper()
	for ns, match := range map[string]string{l.core: "udp dport " + linkPort, l.edge: "udp sport " + linkPort} {
		script := "flush chain inet prfaults in\n"
		switch {
		case pct >= 100:
			script += "add rule inet prfaults in " + match + " drop\n"
		case pct > 0:
			script += fmt.Sprintf("add rule inet prfaults in %s numgen random mod 100 < %d counter drop\n", match, pct)
		}
		if err := l.nft(ns, script); err != nil {
			l.t.Fatal(err)
		}
	}
}

// rules lists the fault rules in place, with their counters.
func (l *linkLab) rules() string {
	var b strings.Builder
	for _, ns := range []string{l.core, l.edge} {
		out, _ := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", "inet", "prfaults").CombinedOutput()
		fmt.Fprintf(&b, "%s: %s\n", ns, out)
	}
	return b.String()
}

// sysSetns is setns(2)'s number by architecture (package syscall lacks
// it).
var sysSetns = map[string]uintptr{"amd64": 308, "arm64": 268, "riscv64": 268, "arm": 375, "386": 346}

// dialIn dials addr (TCP) from network namespace ns: on a thread of its
// own, moved into ns and never moved back (the goroutine ends locked, so
// the runtime discards the thread). The socket stays in ns.
func dialIn(ns, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open("/run/netns/" + ns)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer f.Close()
		nr, ok := sysSetns[runtime.GOARCH]
		if !ok {
			ch <- result{err: fmt.Errorf("setns: no system call number known for %s", runtime.GOARCH)}
			return
		}
		if _, _, errno := syscall.Syscall(nr, f.Fd(), syscall.CLONE_NEWNET, 0); errno != 0 {
			ch <- result{err: fmt.Errorf("setns %s: %w", ns, errno)}
			return
		}
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// forward is a TCP forwarder from this namespace's loopback to an address
// in a relay's namespace (the relay's listener now: set again after a
// restart).
type forward struct {
	ns     string
	ln     net.Listener
	target atomic.Pointer[string]

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newForward(t *testing.T, ns string) *forward {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &forward{ns: ns, ln: ln, conns: map[net.Conn]struct{}{}}
	f.wg.Go(f.accept)
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for c := range f.conns {
			c.Close()
		}
		f.conns = nil
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *forward) addr() string { return f.ln.Addr().String() }

func (f *forward) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		c.Close()
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *forward) untrack(c net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.conns, c)
	c.Close()
}

func (f *forward) accept() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		if !f.track(c) {
			return
		}
		f.wg.Go(func() {
			defer f.untrack(c)
			target := f.target.Load()
			if target == nil {
				return
			}
			up, err := dialIn(f.ns, *target)
			if err != nil {
				return
			}
			if !f.track(up) {
				return
			}
			defer f.untrack(up)
			done := make(chan struct{})
			go func() {
				io.Copy(up, c)
				up.(*net.TCPConn).CloseWrite()
				close(done)
			}()
			io.Copy(c, up)
			c.(*net.TCPConn).CloseWrite()
			<-done
		})
	}
}

// nsRelay is a relay run in a namespace on a data dir, started again
// (after a kill) on the same forwarders.
type nsRelay struct {
	t              *testing.T
	ns, dir        string
	args           []string
	dev, ep, admin *forward
	proc           *relayProc
}

func (l *linkLab) relay(ns string, args ...string) *nsRelay {
	return newNSRelay(l.t, ns, args...)
}

// newNSRelay is a relay in namespace ns on a data dir of its own (not
// started yet).
func newNSRelay(t *testing.T, ns string, args ...string) *nsRelay {
	return &nsRelay{t: t, ns: ns, dir: t.TempDir(), args: args,
		dev: newForward(t, ns), ep: newForward(t, ns), admin: newForward(t, ns)}
}

var announceLine = regexp.MustCompile(`^\s+(devices|endpoint|admin)\s+(\S+)`)

// start runs the relay and returns once /readyz (through its forwarder)
// says 200.
func (r *nsRelay) start() *relayProc {
	r.t.Helper()
	p := r.launch()
	if err := p.WaitReady(30 * time.Second); err != nil {
		r.t.Fatalf("relay in %s: %v\n%s", r.ns, err, tail(p.stderr.String(), 30))
	}
	return p
}

// launch runs the relay and returns once it announced its listeners
// (a site's member is ready only once its site formed).
func (r *nsRelay) launch() *relayProc {
	t := r.t
	t.Helper()
	args := append([]string{"netns", "exec", r.ns, binPath, "run", "--data-dir", r.dir,
		"--device-listen", "127.0.0.1:0", "--endpoint-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--stun-listen", "127.0.0.1:0", "--log-level", "debug"}, r.args...)
	p := &relayProc{t: t, stderr: &syncBuffer{}, Proc: &relayproc.Proc{Cmd: exec.Command("ip", args...), Done: make(chan struct{})}}
	p.Cmd.Env = relayproc.Env()
	p.Cmd.Stderr = p.stderr
	out, err := p.Cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	found := make(chan map[string]string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		seen := map[string]string{}
		for sc.Scan() {
			if m := announceLine.FindStringSubmatch(sc.Text()); m != nil {
				seen[m[1]] = m[2]
				if len(seen) == 3 {
					found <- seen
				}
			}
		}
		p.ExitErr = p.Cmd.Wait()
		close(p.Done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.Done:
		default:
			p.Kill()
		}
		if t.Failed() {
			t.Logf("%s relay stderr:\n%s", r.ns, tail(p.stderr.String(), 60))
		}
	})
	var seen map[string]string
	select {
	case seen = <-found:
	case <-p.Done:
		t.Fatalf("relay in %s exited at start: %v\n%s", r.ns, p.ExitErr, tail(p.stderr.String(), 30))
	case <-time.After(30 * time.Second):
		t.Fatalf("relay in %s did not start in 30s\n%s", r.ns, tail(p.stderr.String(), 30))
	}
	hostOf := func(s string) string {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatalf("announced %q: %v", s, err)
		}
		return u.Host
	}
	r.dev.target.Store(new(hostOf(seen["devices"])))
	r.ep.target.Store(new(hostOf(seen["endpoint"])))
	r.admin.target.Store(new(hostOf(seen["admin"])))
	p.Device = "ws://" + r.dev.addr() + "/"
	p.Endpoint = "http://" + r.ep.addr()
	p.Admin = "http://" + r.admin.addr()
	r.proc = p
	return p
}

// kill SIGKILLs the relay and waits for it to exit.
func (r *nsRelay) kill() {
	r.proc.Cmd.Process.Signal(syscall.SIGKILL)
	<-r.proc.Done
}

// linkPair starts the core and the edge in the lab, the link's timers
// short (keepalive 300ms, idle timeout 1500ms: a cut longer than that
// ends the connection), and n devices on the edge.
func (l *linkLab) linkPair(n int) (core, edge *nsRelay, f *flow) {
	l.t.Helper()
	keys := linkKeys(l.t, "core", "edge-1")
	timers := []string{"--link-keepalive", "300ms", "--link-idle-timeout", "1500ms"}
	// A 30 s cut at the flows' ~150 posts/s queues about 1,100 messages
	// per device at the core, past the default cap (1,000 per device,
	// then the oldest is dropped, by design and counted): the cap is
	// raised so that every message answered 201 must arrive.
	timers = append(timers, "--max-messages-per-uaid", "20000")
	core = l.relay(l.core, append(append([]string{"--relay-listen", l.coreAddr + ":" + linkPort}, timers...), keys["core"]...)...)
	core.args = append(core.args, "--public-url", "http://"+core.ep.addr())
	core.start()
	edge = l.relay(l.edge, append(append([]string{"--upstream", "quic://" + l.coreAddr + ":" + linkPort,
		"--upstream-backoff", "50ms"}, timers...), keys["edge-1"]...)...)
	edge.start()
	f = newFlow(l.t, edge.proc, n, &http.Client{Timeout: 3 * time.Second})
	for _, d := range f.devs {
		if ep := d.subs[0].endpoint; !strings.HasPrefix(ep, core.proc.Endpoint+"/") {
			l.t.Fatalf("endpoint %s is not the core's (%s)", ep, core.proc.Endpoint)
		}
	}
	return core, edge, f
}

// settle waits (up to limit) until the core holds nothing for the edge.
func settle(t *testing.T, core *relayProc, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for core.waiting() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the core still holds %d messages after %s", core.waiting(), limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// 5% of the link's packets lost each way while messages flow: QUIC
// resends them, every message arrives, and none twice.
func TestE2ELinkFaultLoss(t *testing.T) {
	l := newLinkLab(t)
	core, edge, f := l.linkPair(4)
	l.drop(5)
	f.start(1500, 3*time.Millisecond)
	f.waitCreated(1000, 30*time.Second)
	f.stopPosting()
	dups := f.finish(30 * time.Second)
	t.Logf("nft after the run:\n%s", grepLines(l.rules(), "drop"))
	if dups != 0 {
		t.Errorf("%d duplicates under packet loss alone, want 0", dups)
	}
	if n := edge.proc.metric(`pushrelay_link_up_connects_total{result="ok"}`); n != 1 {
		t.Logf("note: %v connects (the loss ended a connection)", n)
	}
	settle(t, core.proc, 10*time.Second)
	edge.proc.stop()
	core.proc.stop()
}

// linkCut is how long each cut of TestE2ELinkFaultCuts lasts:
// PUSHRELAY_LINK_CUT (a duration; the 30s), else 5s.
func linkCut(t *testing.T) time.Duration {
	if v := os.Getenv("PUSHRELAY_LINK_CUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("PUSHRELAY_LINK_CUT=%q: want a duration like 30s", v)
		}
		return d
	}
	return 5 * time.Second
}

// The link cut three times (every UDP packet of it dropped, longer than
// the idle timeout, so the connection ends) while the app server keeps
// posting to the core: after each heal the edge reconnects and the core
// sends what it kept; everything arrives.
func TestE2ELinkFaultCuts(t *testing.T) {
	cut := linkCut(t)
	l := newLinkLab(t)
	core, edge, f := l.linkPair(4)
	f.start(100000, 5*time.Millisecond)
	for i := range 3 {
		f.waitCreated(20, 20*time.Second)
		l.drop(100)
		before := f.created201()
		time.Sleep(cut)
		kept := core.proc.waiting()
		l.drop(0)
		healed := time.Now()
		// Posts continue; wait until the core has sent all it kept.
		deadline := healed.Add(30 * time.Second)
		for edge.proc.metric("pushrelay_link_up_connected") != 1 || core.proc.waiting() > 50 {
			if time.Now().After(deadline) {
				t.Fatalf("cut %d: the link did not come back within 30s of the heal", i+1)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("cut %d: %s, %d posts answered 201 meanwhile, %d kept at the core; back and drained in %s",
			i+1, cut, f.created201()-before, kept, time.Since(healed).Round(time.Millisecond))
		if kept == 0 {
			t.Errorf("cut %d: the core kept nothing during the cut: was the link cut?", i+1)
		}
	}
	f.waitCreated(20, 20*time.Second)
	f.stopPosting()
	dups := f.finish(30 * time.Second)
	if dups != 0 {
		t.Errorf("%d duplicates after cuts, want 0 (the edge's origin keys drop the core's resends)", dups)
	}
	if n := edge.proc.metric(`pushrelay_link_up_connects_total{result="ok"}`); n < 4 {
		t.Errorf("%v connects, want at least 4: each cut should outlast the idle timeout", n)
	}
	settle(t, core.proc, 10*time.Second)
	edge.proc.stop()
	core.proc.stop()
}

// The edge's address changes mid-stream (10.78.0.2 moves to 10.78.0.3):
// the edge notices that its route to the core now leaves from another
// address and migrates the connection (QUIC path validation) instead of
// redialing; nothing is lost, and the core sees the child at its new
// address.
func TestE2ELinkFaultMove(t *testing.T) {
	l := newLinkLab(t)
	core, edge, f := l.linkPair(4)
	f.start(100000, 3*time.Millisecond)
	f.waitCreated(200, 20*time.Second)
	connectsBefore := edge.proc.metric(`pushrelay_link_up_connects_total{result="ok"}`)
	if err := runTool(t, "ip", "-n", l.edge, "addr", "add", "10.78.0.3/24", "dev", l.edgeIf); err != nil {
		t.Fatal(err)
	}
	if err := runTool(t, "ip", "-n", l.edge, "addr", "del", l.edgeAddr+"/24", "dev", l.edgeIf); err != nil {
		t.Fatal(err)
	}
	moved := time.Now()
	deadline := moved.Add(15 * time.Second)
	// A migration is what should happen; a new connection (the old one
	// given up: on a loaded machine the tests' 1.5 s idle timeout can
	// end it around the move, and the new one starts from the new
	// address) loses nothing either, and is reported.
	for edge.proc.metric(`pushrelay_link_up_migrations_total{result="ok"}`)+
		edge.proc.metric(`pushrelay_link_up_migrations_total{result="error"}`) < 1 &&
		edge.proc.metric(`pushrelay_link_up_connects_total{result="ok"}`) == connectsBefore {
		if time.Now().After(deadline) {
			t.Fatalf("the edge did not react to its address change in 15s (no migration, no new connection)")
		}
		time.Sleep(20 * time.Millisecond)
	}
	reacted := time.Since(moved).Round(time.Millisecond)
	f.waitCreated(200, 20*time.Second)
	f.stopPosting()
	dups := f.finish(30 * time.Second)
	ok := edge.proc.metric(`pushrelay_link_up_migrations_total{result="ok"}`)
	connects := edge.proc.metric(`pushrelay_link_up_connects_total{result="ok"}`)
	t.Logf("address moved; the edge reacted in %s: migrations ok %v, connects %v", reacted, ok, connects)
	switch {
	case ok == 1 && connects == connectsBefore:
		// Migrated: the one connection kept.
	case connects > connectsBefore:
		t.Logf("the edge reconnected instead of migrating (%v connects before the move, %v after)", connectsBefore, connects)
	default:
		t.Errorf("want the connection migrated (1 migration, no new connect), got %v migrations and %v connects (%v before)", ok, connects, connectsBefore)
	}
	if dups != 0 {
		t.Errorf("%d duplicates after the move, want 0", dups)
	}
	children, _ := core.proc.status()["link"].(map[string]any)
	t.Logf("core's view of its children: %v", children["children"])
	settle(t, core.proc, 10*time.Second)
	edge.proc.stop()
	core.proc.stop()
}

// With 5% of the link's packets lost, the edge is SIGKILLed mid-stream
// and started again, then the core: every message the core answered 201
// for reaches a device.
func TestE2ELinkFaultKill(t *testing.T) {
	l := newLinkLab(t)
	core, edge, f := l.linkPair(4)
	l.drop(5)
	f.start(100000, 3*time.Millisecond)

	f.waitCreated(100, 20*time.Second)
	time.Sleep(time.Duration(100+rand.IntN(400)) * time.Millisecond)
	edge.kill()
	f.waitCreated(50, 20*time.Second) // the core keeps what comes meanwhile
	f.setEdge(edge.start())

	f.waitCreated(100, 20*time.Second)
	time.Sleep(time.Duration(100+rand.IntN(400)) * time.Millisecond)
	core.kill()
	time.Sleep(300 * time.Millisecond) // posts fail meanwhile: not counted
	core.start()

	f.waitCreated(200, 30*time.Second)
	f.stopPosting()
	dups := f.finish(40 * time.Second)
	// What a device can see twice is what it acked while the edge was
	// killed before deleting it: at most the inflight window per device.
	if limit := len(f.devs) * 100; dups > limit {
		t.Errorf("%d duplicates, more than %d", dups, limit)
	}
	settle(t, core.proc, 10*time.Second)
	edge.proc.stop()
	core.proc.stop()
}
