package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/pushclient"
)

// This file tests a site of three built binaries under faults (issue #9,
// point 5), each member in its own network namespace, the three joined
// by a bridge in a fourth:
//
//	m1 10.79.0.1 ─┐
//	m2 10.79.0.2 ─┼─ bridge (namespace hub)
//	m3 10.79.0.3 ─┘
//
// The gossip (UDP and TCP 7946) and the log (UDP 7947, QUIC) run over
// the bridge; nftables cuts one member off by dropping, as it arrives,
// every packet between it and the others. App servers and devices reach
// every member through forwarders on the test's loopback (linkfaults'
// forward), so a member cut off from the site is still reached by its
// clients, as a gateway cut off from its peers would be.
//
// Under a steady load (an app server posting to every member for
// devices spread over the three, devices that ack), each test makes one
// fault and checks, as flow does, that every post answered 201 reaches
// its device; it reports the duplicates, the time until every device's
// posts were answered 201 again, and the time until a member that was
// out rejoined and caught up (ready, and its applied index at the
// others' commit index of when it came back).

const (
	siteGossipPort = "7946"
	sitePeerPort   = "7947"
)

// siteLab is the namespaces of one test and the site's members.
type siteLab struct {
	t     *testing.T
	hub   string
	ns    []string // each member's namespace
	ifs   []string // each member's end of its veth pair
	addrs []string
	ms    []*nsRelay
	up    []atomic.Bool // a member's process is running (not killed)
	f     *flow

	mu    sync.Mutex
	posts []sitePost
}

// sitePost is one post of the load: for which device, to which member,
// when, and its answer (0: none).
type sitePost struct {
	dev, member int
	start, end  time.Time
	code        int
}

// newSiteLab builds the namespaces and starts a site of three members
// in them (extra: flags for every member), or skips the test saying why
// it cannot.
func newSiteLab(t *testing.T, extra ...string) *siteLab {
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
	l := &siteLab{t: t, hub: fmt.Sprintf("prs%dh", id), up: make([]atomic.Bool, 3)}
	if err := runTool(t, "ip", "netns", "add", l.hub); err != nil {
		t.Skipf("cannot create a network namespace here: %v", err)
	}
	t.Cleanup(func() {
		for _, ns := range append([]string{l.hub}, l.ns...) {
			exec.Command("ip", "netns", "del", ns).Run()
		}
	})
	steps := [][]string{
		{"ip", "-n", l.hub, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", l.hub, "link", "set", "br0", "up"},
	}
	for i := range 3 {
		ns := fmt.Sprintf("prs%dm%d", id, i+1)
		l.ns = append(l.ns, ns)
		l.ifs = append(l.ifs, ns+"v")
		l.addrs = append(l.addrs, fmt.Sprintf("10.79.0.%d", i+1))
		steps = append(steps,
			[]string{"ip", "netns", "add", ns},
			[]string{"ip", "link", "add", ns + "v", "netns", ns, "type", "veth", "peer", "name", ns + "h", "netns", l.hub},
			[]string{"ip", "-n", l.hub, "link", "set", ns + "h", "master", "br0"},
			[]string{"ip", "-n", l.hub, "link", "set", ns + "h", "up"},
			[]string{"ip", "-n", ns, "addr", "add", l.addrs[i] + "/24", "dev", ns + "v"},
			[]string{"ip", "-n", ns, "link", "set", "lo", "up"},
			[]string{"ip", "-n", ns, "link", "set", ns + "v", "up"})
	}
	for _, s := range steps {
		if err := runTool(t, s[0], s[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	for _, ns := range l.ns {
		if err := l.nft(ns, "add table inet prfaults\n"+
			"add chain inet prfaults in { type filter hook prerouting priority 0; }\n"); err != nil {
			t.Skipf("nftables is not available here: %v", err)
		}
	}

	// PUSHRELAY_SITE_LOGS names a directory that gets each member's
	// whole log when a test fails (the failure shows only their tails).
	if dir := os.Getenv("PUSHRELAY_SITE_LOGS"); dir != "" {
		t.Cleanup(func() {
			if !t.Failed() {
				return
			}
			for i, r := range l.ms {
				if r.proc != nil {
					name := filepath.Join(dir, fmt.Sprintf("%s-m%d.log", t.Name(), i+1))
					os.WriteFile(name, []byte(r.proc.stderr.String()), 0o644)
				}
			}
		})
	}

	// The members: one gossip key, link certificates from one CA, and
	// the first member's endpoint.key and wake.key copied to the others
	// before their first start (docs/cluster.md, "Starting a site").
	raw := make([]byte, 32)
	rand.Read(raw)
	gossip := base64.StdEncoding.EncodeToString(raw)
	keys := linkKeys(t, "m1", "m2", "m3")
	for i, ns := range l.ns {
		name := fmt.Sprintf("m%d", i+1)
		args := slices.Concat([]string{"--node-name", name,
			"--cluster-listen", l.addrs[i] + ":" + siteGossipPort, "--cluster-peer-listen", l.addrs[i] + ":" + sitePeerPort,
			"--cluster-key", gossip, "--cluster-expect", "3",
			// Every message answered 201 must arrive: a long fault
			// must not hit the per-device cap (then the oldest is
			// dropped, by design).
			"--max-messages-per-uaid", "20000"}, extra, keys[name])
		// Each member names the others in join, as docs/cluster.md
		// advises: the first one too, so that it finds the site when
		// it restarts (else it waits for the others' rejoin loops).
		var join []string
		for j := range 3 {
			if j != i {
				join = append(join, l.addrs[j]+":"+siteGossipPort)
			}
		}
		args = append(args, "--join", strings.Join(join, ","))
		r := newNSRelay(t, ns, args...)
		if i > 0 {
			for _, f := range []string{"endpoint.key", "wake.key"} {
				data, err := os.ReadFile(filepath.Join(l.ms[0].dir, f))
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(r.dir, f), data, 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
		r.launch()
		l.ms = append(l.ms, r)
		l.up[i].Store(true)
	}
	for _, r := range l.ms {
		if err := r.proc.WaitReady(30 * time.Second); err != nil {
			t.Fatalf("member in %s: %v\n%s", r.ns, err, tail(r.proc.stderr.String(), 30))
		}
	}
	return l
}

// nft runs an nft script in namespace ns.
func (l *siteLab) nft(ns, script string) error { return nftIn(ns, script) }

// cut drops every packet between member i and the others (each
// namespace drops as packets arrive); heal undoes it.
func (l *siteLab) cut(i int) {
	l.t.Helper()
	for j, ns := range l.ns {
		script := "flush chain inet prfaults in\n"
		if j == i {
			script += "add rule inet prfaults in iifname " + l.ifs[i] + " counter drop\n"
		} else {
			script += "add rule inet prfaults in ip saddr " + l.addrs[i] + " counter drop\n"
		}
		if err := l.nft(ns, script); err != nil {
			l.t.Fatal(err)
		}
	}
}

func (l *siteLab) heal() {
	l.t.Helper()
	for _, ns := range l.ns {
		if err := l.nft(ns, "flush chain inet prfaults in\n"); err != nil {
			l.t.Fatal(err)
		}
	}
}

// quick is an HTTP client that gives up on a stopped member.
var quick = &http.Client{Timeout: 2 * time.Second}

// siteStatus is member i's view of the log (nil if it does not answer).
func (l *siteLab) siteStatus(i int) map[string]any {
	if !l.up[i].Load() {
		return nil
	}
	resp, err := quick.Get(l.ms[i].proc.Admin + "/status?format=json")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var m map[string]any
	if json.NewDecoder(resp.Body).Decode(&m) != nil {
		return nil
	}
	cl, _ := m["cluster"].(map[string]any)
	st, _ := cl["site"].(map[string]any)
	return st
}

// leader is the member that leads the site now, as it says (-1: none
// found within 15 s).
func (l *siteLab) leader(not int) int {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		for i := range l.ms {
			if i == not {
				continue
			}
			if st := l.siteStatus(i); st != nil && st["state"] == "leader" {
				return i
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return -1
}

func num(st map[string]any, k string) uint64 {
	v, _ := st[k].(float64)
	return uint64(v)
}

// caughtUp waits (up to limit) until member i is ready (/readyz 200: it
// has a leader, which may be itself again) and has applied what the
// others had committed when this was called; it returns how long that
// took.
func (l *siteLab) caughtUp(i int, limit time.Duration) time.Duration {
	l.t.Helper()
	start := time.Now()
	var target uint64
	for j := range l.ms {
		if j != i {
			target = max(target, num(l.siteStatus(j), "commit"))
		}
	}
	deadline := start.Add(limit)
	for {
		st := l.siteStatus(i)
		if st != nil && num(st, "applied") >= target {
			if resp, err := quick.Get(l.ms[i].proc.Admin + "/readyz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					return time.Since(start)
				}
			}
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("m%d did not catch up within %s: its log %v, the others' commit then %d", i+1, limit, st, target)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// load starts n devices spread over the members (device k on member k
// mod 3; while its member is down it connects to the next one up) and
// an app server posting to every member in turn (one poster per member,
// a post every gap, so that a member that does not answer holds up only
// its own posts) for devices in turn.
func (l *siteLab) load(n int, gap time.Duration) {
	t := l.t
	t.Helper()
	f := &flow{t: t, client: &http.Client{Timeout: 5 * time.Second}, created: map[string]bool{}, got: map[string]int{},
		stopPost: make(chan struct{}), postDone: make(chan struct{})}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	t.Cleanup(func() { f.cancel(); f.wg.Wait() })
	home := map[*flowDevice]int{}
	for k := range n {
		d := connect(t, l.ms[k%3].proc, "")
		s := d.register("")
		d.c.Close()
		fd := &flowDevice{uaid: d.uaid, subs: []*testSub{s}}
		f.devs = append(f.devs, fd)
		home[fd] = k % 3
	}
	f.devURL = func(d *flowDevice) string {
		for j := range 3 {
			if m := (home[d] + j) % 3; l.up[m].Load() {
				return l.ms[m].proc.Device
			}
		}
		return l.ms[home[d]].proc.Device
	}
	l.f = f
	for _, d := range f.devs {
		f.wg.Go(func() { f.runDevice(d) })
	}
	var posters sync.WaitGroup
	for m := range l.ms {
		posters.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-f.stopPost:
					return
				case <-time.After(gap):
				}
				if !l.up[m].Load() {
					continue // an app server does not post to a dead member
				}
				k := (i + m) % n // every member posts for every device
				d := f.devs[k]
				s := d.subs[0]
				p := sitePost{dev: k, member: m, start: time.Now()}
				p.code = f.postTo(s, at(s.endpoint, l.ms[m].proc), fmt.Sprintf("m%d-%06d-%s", m+1, i, d.uaid[:8]))
				p.end = time.Now()
				l.mu.Lock()
				l.posts = append(l.posts, p)
				l.mu.Unlock()
			}
		})
	}
	go func() { posters.Wait(); close(f.postDone) }()
}

// back201 is how long after at every device had a post answered 201
// that was made after at (by any member): the time until every device's
// posts get 201 again. It fails the test if some device had none.
func (l *siteLab) back201(at time.Time) time.Duration {
	l.t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	first := map[int]time.Time{}
	for _, p := range l.posts {
		if p.code == 201 && !p.start.Before(at) {
			if f, ok := first[p.dev]; !ok || p.end.Before(f) {
				first[p.dev] = p.end
			}
		}
	}
	var worst time.Duration
	for k := range l.f.devs {
		f, ok := first[k]
		if !ok {
			l.t.Errorf("device %d had no post answered 201 after the fault", k)
			continue
		}
		worst = max(worst, f.Sub(at))
	}
	return worst
}

// answers counts member m's answers to posts made in [from, to] and
// answered by to.
func (l *siteLab) answers(m int, from, to time.Time) map[int]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[int]int{}
	for _, p := range l.posts {
		if p.member == m && !p.start.Before(from) && !p.end.After(to) {
			out[p.code]++
		}
	}
	return out
}

// probe posts text for the first device to member i itself (not
// through the load) and returns the answer's status, errno and
// Retry-After; a message answered 201 joins what must arrive.
func (l *siteLab) probe(i int, text string) (code, errno int, retry string) {
	l.t.Helper()
	s := l.f.devs[0].subs[0]
	body, err := ece.Encrypt([]byte(text), s.keys.PublicKey(), s.keys.Auth)
	if err != nil {
		l.t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", at(s.endpoint, l.ms[i].proc), bytes.NewReader(body))
	req.Header.Set("TTL", "600")
	req.Header.Set("Content-Encoding", "aes128gcm")
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		l.t.Fatalf("post to m%d: %v", i+1, err)
	}
	defer resp.Body.Close()
	var problem struct{ Errno int }
	json.NewDecoder(resp.Body).Decode(&problem)
	if resp.StatusCode == 201 {
		l.f.mu.Lock()
		l.f.created[text] = true
		l.f.mu.Unlock()
	}
	return resp.StatusCode, problem.Errno, resp.Header.Get("Retry-After")
}

// finish stops the load, waits for every message answered 201 to reach
// its device (failing the test for any lost), and reports the
// duplicates.
func (l *siteLab) finish() int {
	l.t.Helper()
	l.f.waitCreated(30, 30*time.Second)
	l.f.stopPosting()
	start := time.Now()
	dups := l.f.finish(60 * time.Second)
	l.t.Logf("the load stopped; the last deliveries took %s", time.Since(start).Round(time.Millisecond))
	return dups
}

// faultTime is a fault's duration from env (a duration like 20s), else
// def.
func faultTime(t *testing.T, env string, def time.Duration) time.Duration {
	if v := os.Getenv(env); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("%s=%q: want a duration like 20s", env, v)
		}
		return d
	}
	return def
}

const (
	siteDevices = 6
	sitePostGap = 15 * time.Millisecond // per member: about 200 posts/s over the site
	// siteSnapshotEvery: the wipe test's log compacted every this many
	// entries (a second or two of the load), so the wiped member is sent
	// a snapshot.
	siteSnapshotEvery = 200
)

// kill SIGKILLs member i under load; devices on it reconnect to another
// member with their UAIDs, the app server posts to the others; then it
// restarts on its data dir and catches up.
func (l *siteLab) kill(i int, what string) {
	t := l.t
	l.f.waitCreated(200, 20*time.Second)
	l.up[i].Store(false)
	at := time.Now()
	l.ms[i].kill()
	l.f.waitCreated(200, 30*time.Second)
	t.Logf("%s m%d SIGKILLed: every device's posts answered 201 again within %s (the first after the kill)", what, i+1, l.back201(at).Round(time.Millisecond))
	time.Sleep(time.Second)
	l.ms[i].launch()
	l.up[i].Store(true)
	t.Logf("m%d restarted on its data dir: rejoined and caught up in %s", i+1, l.caughtUp(i, 30*time.Second).Round(time.Millisecond))
}

// The leader SIGKILLed under load.
func TestE2ESiteFaultKillLeader(t *testing.T) {
	l := newSiteLab(t)
	l.load(siteDevices, sitePostGap)
	l.kill(l.leader(-1), "the leader")
	dups := l.finish()
	// An ack still in flight when its member dies goes with it: the
	// message comes again (at least once, as on one relay).
	t.Logf("duplicates: %d (acks in flight at the kill)", dups)
}

// A follower SIGKILLed under load.
func TestE2ESiteFaultKillFollower(t *testing.T) {
	l := newSiteLab(t)
	l.load(siteDevices, sitePostGap)
	l.kill((l.leader(-1)+1)%3, "a follower")
	dups := l.finish()
	t.Logf("duplicates: %d (acks in flight at the kill)", dups)
}

// The leader SIGSTOPped for PUSHRELAY_SITE_STOP (the 20s; 4s by
// default), then SIGCONT: the others elect a new leader meanwhile; the
// old one steps down and catches up.
func TestE2ESiteFaultStop(t *testing.T) {
	pause := faultTime(t, "PUSHRELAY_SITE_STOP", 4*time.Second)
	l := newSiteLab(t)
	l.load(siteDevices, sitePostGap)
	l.f.waitCreated(200, 20*time.Second)
	i := l.leader(-1)
	at := time.Now()
	l.ms[i].proc.Cmd.Process.Signal(syscall.SIGSTOP)
	l.up[i].Store(false) // no status asked meanwhile
	time.Sleep(pause)
	t.Logf("the leader m%d SIGSTOPped for %s: every device's posts answered 201 again within %s", i+1, pause, l.back201(at).Round(time.Millisecond))
	l.up[i].Store(true)
	l.ms[i].proc.Cmd.Process.Signal(syscall.SIGCONT)
	t.Logf("m%d SIGCONTed: rejoined and caught up in %s", i+1, l.caughtUp(i, 30*time.Second).Round(time.Millisecond))
	dups := l.finish()
	if dups != 0 {
		t.Logf("duplicates: %d (acks the stopped member held when it stopped)", dups)
	}
}

// The leader cut off from the others for PUSHRELAY_SITE_CUT (the issue's
// 30s; 5s by default), then healed: meanwhile the others go on under a
// new leader and the cut-off member acknowledges nothing (its posts
// answered 503); after the heal it rejoins and catches up.
func TestE2ESiteFaultPartition(t *testing.T) {
	cutFor := faultTime(t, "PUSHRELAY_SITE_CUT", 5*time.Second)
	// The log compacted often, so that the cut-off member is likely sent
	// a snapshot: its devices must then get what the snapshot brought
	// (Hub.Resync) without reconnecting.
	l := newSiteLab(t, "--cluster-snapshot-every", fmt.Sprint(siteSnapshotEvery))
	l.load(siteDevices, sitePostGap)
	l.f.waitCreated(200, 20*time.Second)
	i := l.leader(-1)
	l.cut(i)
	at := time.Now() // a post made from now on cannot be committed with i
	// Halfway through, an app server posts to the cut-off member: 503,
	// errno 126, Retry-After (its proposal, if any, is never committed:
	// the message must not reach the device).
	time.Sleep(cutFor / 2)
	code, errno, retry := l.probe(i, "to the cut-off member")
	t.Logf("a post to the cut-off m%d: %d errno %d Retry-After %q", i+1, code, errno, retry)
	if code != 503 || errno != 126 || retry == "" {
		t.Errorf("a post to the cut-off member: %d errno %d Retry-After %q, want 503 errno 126 with Retry-After", code, errno, retry)
	}
	time.Sleep(time.Until(at.Add(cutFor)))
	t.Logf("the leader m%d cut off for %s: every device's posts answered 201 again within %s", i+1, cutFor, l.back201(at).Round(time.Millisecond))
	healed := time.Now()
	l.heal()
	codes := l.answers(i, at, healed)
	t.Logf("m%d's answers while cut off (posts made and answered then): %v", i+1, codes)
	if codes[201] != 0 {
		t.Errorf("the cut-off member answered %d posts 201", codes[201])
	}
	t.Logf("healed: m%d rejoined and caught up in %s", i+1, l.caughtUp(i, 30*time.Second).Round(time.Millisecond))
	t.Logf("m%d caught up with %v snapshots received", i+1, l.ms[i].proc.metric("pushrelay_consensus_snapshots_received_total"))
	dups := l.finish()
	t.Logf("duplicates: %d", dups)
}

// A follower SIGKILLed and restarted with its data dir wiped but for
// endpoint.key and wake.key, as an operator restoring a member would:
// it comes back under its old name, so under its old consensus id, which
// the site still counts as a voter, and joins the site (the others say
// one exists). The leader had it at the index it last acknowledged and
// its refusals tell the leader its log is empty; the leader's log was
// compacted past it (snapshots every siteSnapshotEvery entries), so the
// leader sends it a snapshot (the store), then the log since.
// A device's hello on it right after its start keeps the device's UAID
// (it asks the site before it calls a UAID unknown). No message
// answered 201 is lost meanwhile: the other two hold them.
func TestE2ESiteFaultWipe(t *testing.T) {
	l := newSiteLab(t, "--cluster-snapshot-every", fmt.Sprint(siteSnapshotEvery))
	l.load(siteDevices, sitePostGap)
	l.f.waitCreated(200, 20*time.Second)
	lead := l.leader(-1)
	i := (lead + 1) % 3
	before := l.siteStatus(i)
	l.up[i].Store(false)
	at := time.Now()
	l.ms[i].kill()
	entries, err := os.ReadDir(l.ms[i].dir)
	if err != nil {
		t.Fatal(err)
	}
	var wiped []string
	for _, e := range entries {
		if e.Name() == "endpoint.key" || e.Name() == "wake.key" {
			continue
		}
		if err := os.RemoveAll(filepath.Join(l.ms[i].dir, e.Name())); err != nil {
			t.Fatal(err)
		}
		wiped = append(wiped, e.Name())
	}
	t.Logf("m%d SIGKILLed, its data dir wiped (%s), endpoint.key and wake.key kept", i+1, strings.Join(wiped, ", "))
	l.f.waitCreated(200, 30*time.Second)
	t.Logf("every device's posts answered 201 again within %s", l.back201(at).Round(time.Millisecond))
	l.ms[i].launch()
	l.up[i].Store(true)
	restarted := time.Now()
	// A device says hello to it at once, with its UAID: the member asks
	// the site before it calls a UAID unknown (site.Store.Device), so the
	// device keeps its UAID; until it can ask, the hello fails and the
	// device tries again, as devices do.
	hello := l.f.devs[0].uaid
	for deadline := restarted.Add(20 * time.Second); ; {
		c, err := pushclient.Dial(context.Background(), l.ms[i].proc.Device)
		if err == nil {
			h, err := c.Hello(hello, pushclient.HelloOptions{})
			c.Abort()
			if err == nil {
				if h.UAID != hello {
					t.Errorf("the wiped member gave device %s the UAID %s", hello, h.UAID)
				} else {
					t.Logf("a hello on m%d %s after its start kept its UAID", i+1, time.Since(restarted).Round(time.Millisecond))
				}
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no hello answered by the wiped member in 20s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	l.caughtUp(i, 30*time.Second)
	t.Logf("m%d restarted on an empty store: rejoined and caught up %s after its start", i+1, time.Since(restarted).Round(time.Millisecond))
	st := l.siteStatus(i)
	t.Logf("m%d's log: %v (consensus id before the wipe %v)", i+1, st, before["id"])
	if st["id"] != before["id"] {
		t.Errorf("the wiped member came back as %v, was %v", st["id"], before["id"])
	}
	if n := l.ms[i].proc.metric("pushrelay_consensus_snapshots_received_total"); n < 1 {
		t.Errorf("m%d received %v snapshots; the leader m%d's log was compacted past it", i+1, n, lead+1)
	} else {
		t.Logf("m%d caught up from %v snapshot(s) (leader m%d)", i+1, n, lead+1)
	}
	dups := l.finish()
	t.Logf("duplicates: %d", dups)
}
