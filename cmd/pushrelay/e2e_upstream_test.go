package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/upstream/autopushtest"
)

// This file tests the upstream link end to end with built binaries: an
// edge relay (`pushrelay --upstream`) SIGKILLed while messages flow, its
// upstream (a standalone pushrelay, or autopushtest enforcing autopush's
// rules) killed or cut off for a while, and a wss:// upstream trusted
// through upstream_ca_file.

// freePort returns a loopback address free a moment ago, for a relay that
// must come back on the same port (its endpoints name it).
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// flow is an app server posting unique payloads to the upstream
// endpoints of devices that are on the edge relay, and those devices,
// which reconnect to the edge (wherever it listens now) whenever their
// connection drops, ack what they get and count it.
type flow struct {
	t      *testing.T
	client *http.Client
	edge   atomic.Pointer[string] // the edge's device URL now
	devs   []*flowDevice
	// devURL, when set, is where device d connects now (a site: its
	// member, or another while its own is down); else the edge.
	devURL func(d *flowDevice) string

	mu       sync.Mutex
	created  map[string]bool // payloads the upstream answered 201 for
	got      map[string]int  // payloads devices received, times
	posts    int
	failed   int // posts not answered 201 (the upstream down)
	reconns  int // device reconnects
	problems []string

	stopPost chan struct{}
	postDone chan struct{}
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

type flowDevice struct {
	uaid string
	subs []*testSub
}

// newFlow connects n devices to the edge, each registering one channel
// (whose endpoint is the upstream's), and returns them still connected
// through their own goroutines once the caller calls start.
func newFlow(t *testing.T, edge *relayProc, n int, client *http.Client) *flow {
	t.Helper()
	f := &flow{t: t, client: client, created: map[string]bool{}, got: map[string]int{},
		stopPost: make(chan struct{}), postDone: make(chan struct{})}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	t.Cleanup(func() { f.cancel(); f.wg.Wait() })
	f.setEdge(edge)
	for range n {
		d := connect(t, edge, "")
		s := d.register("")
		d.c.Close()
		f.devs = append(f.devs, &flowDevice{uaid: d.uaid, subs: []*testSub{s}})
	}
	return f
}

func (f *flow) setEdge(p *relayProc) { u := p.Device; f.edge.Store(&u) }

func (f *flow) problem(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.problems) < 20 {
		f.problems = append(f.problems, fmt.Sprintf(format, args...))
	}
}

// start runs the devices and the poster, which posts up to max messages,
// one every gap, until stopPosting.
func (f *flow) start(max int, gap time.Duration) {
	for _, d := range f.devs {
		f.wg.Add(1)
		go func() { defer f.wg.Done(); f.runDevice(d) }()
	}
	go func() {
		defer close(f.postDone)
		for i := 0; i < max; i++ {
			select {
			case <-f.stopPost:
				return
			case <-time.After(gap):
			}
			d := f.devs[i%len(f.devs)]
			f.post(d.subs[0], fmt.Sprintf("m%05d-%s", i, d.uaid[:8]))
		}
	}()
}

func (f *flow) post(s *testSub, text string) { f.postTo(s, s.endpoint, text) }

// postTo posts text for s to endpoint and returns the answer's status
// (0: no answer).
func (f *flow) postTo(s *testSub, endpoint, text string) int {
	body, err := ece.Encrypt([]byte(text), s.keys.PublicKey(), s.keys.Auth)
	if err != nil {
		f.problem("encrypt: %v", err)
		return 0
	}
	req, _ := http.NewRequest("POST", endpoint, bytes.NewReader(body))
	req.Header.Set("TTL", "600")
	req.Header.Set("Content-Encoding", "aes128gcm")
	resp, err := f.client.Do(req)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.posts++
	if err != nil {
		f.failed++
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode == 201 {
		f.created[text] = true
	} else {
		f.failed++
	}
	return resp.StatusCode
}

// stopPosting stops the poster and waits for its last post.
func (f *flow) stopPosting() {
	close(f.stopPost)
	<-f.postDone
}

// runDevice keeps one device connected to the edge with its UAID: a
// connection that fails (the edge killed) is made again.
func (f *flow) runDevice(d *flowDevice) {
	byChannel := map[string]*testSub{}
	for _, s := range d.subs {
		byChannel[s.channel] = s
	}
	first := true
	// seenOn is the connection (counted per device) each payload first
	// came on: a payload again on the same connection is a relay bug, not
	// the redelivery of a restart.
	seenOn := map[string]int{}
	conn := 0
	for f.ctx.Err() == nil {
		if !first {
			f.mu.Lock()
			f.reconns++
			f.mu.Unlock()
			select {
			case <-f.ctx.Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
		first = false
		conn++
		var url string
		if f.devURL != nil {
			url = f.devURL(d)
		} else {
			url = *f.edge.Load()
		}
		dctx, cancel := context.WithTimeout(f.ctx, 2*time.Second)
		c, err := pushclient.Dial(dctx, url)
		cancel()
		if err != nil {
			continue
		}
		stop := context.AfterFunc(f.ctx, func() { c.Abort() })
		h, err := c.Hello(d.uaid, pushclient.HelloOptions{})
		if err == nil && h.UAID != d.uaid {
			f.problem("device %s was given UAID %s on reconnect", d.uaid, h.UAID)
		}
		for err == nil {
			var n pushproto.ServerFrame
			n, err = c.Next(time.Now().Add(time.Minute))
			if err != nil {
				break
			}
			s := byChannel[n.ChannelID]
			if s == nil {
				f.problem("notification for unknown channel %s", n.ChannelID)
				continue
			}
			raw, derr := b64url(n.Data)
			var plain []byte
			if derr == nil {
				plain, derr = ece.Decrypt(raw, s.keys)
			}
			if derr != nil {
				f.problem("decrypt: %v", derr)
				continue
			}
			if c, ok := seenOn[string(plain)]; ok && c == conn {
				f.problem("device %s got %q twice on one connection", d.uaid, plain)
			} else if !ok {
				seenOn[string(plain)] = conn
			}
			f.mu.Lock()
			f.got[string(plain)]++
			f.mu.Unlock()
			err = c.Ack(n)
		}
		stop()
		c.Abort()
	}
}

// missing lists the payloads answered 201 that no device got.
func (f *flow) missing() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for p := range f.created {
		if f.got[p] == 0 {
			out = append(out, p)
		}
	}
	return out
}

// finish waits (up to limit) until every payload answered 201 reached a
// device, stops the devices, fails the test for any lost, and returns how
// many deliveries were duplicates.
func (f *flow) finish(limit time.Duration) (dups int) {
	f.t.Helper()
	deadline := time.Now().Add(limit)
	for len(f.missing()) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	// A short grace for duplicates still on their way.
	time.Sleep(300 * time.Millisecond)
	f.cancel()
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.problems {
		f.t.Error(p)
	}
	for _, n := range f.got {
		if n > 1 {
			dups += n - 1
		}
	}
	if miss := f.missing0(); len(miss) > 0 {
		if len(miss) > 10 {
			miss = miss[:10]
		}
		f.t.Errorf("%d of %d messages answered 201 never reached a device, e.g. %v", len(f.missing0()), len(f.created), miss)
	}
	if len(f.created) == 0 {
		f.t.Error("no post was answered 201")
	}
	f.t.Logf("posts %d, answered 201 %d, not 201 %d, received %d distinct, duplicates %d, device reconnects %d",
		f.posts, len(f.created), f.failed, len(f.got), dups, f.reconns)
	return dups
}

func (f *flow) missing0() []string {
	var out []string
	for p := range f.created {
		if f.got[p] == 0 {
			out = append(out, p)
		}
	}
	return out
}

// created201 is how many posts were answered 201 so far.
func (f *flow) created201() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.created)
}

// waitCreated waits until at least n more posts were answered 201.
func (f *flow) waitCreated(n int, limit time.Duration) {
	f.t.Helper()
	want := f.created201() + n
	deadline := time.Now().Add(limit)
	for f.created201() < want {
		if time.Now().After(deadline) {
			f.t.Fatalf("only %d posts answered 201 in %s, want %d", f.created201(), limit, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// killEdge SIGKILLs the edge after a random 100–600 ms of flow and starts
// it again on the same data dir, returning the new process.
func (f *flow) killEdge(edge *relayProc, dataDir string, extra ...string) *relayProc {
	f.t.Helper()
	f.waitCreated(5, 20*time.Second)
	time.Sleep(time.Duration(100+rand.IntN(500)) * time.Millisecond)
	edge.Cmd.Process.Signal(syscall.SIGKILL)
	<-edge.Done
	edge = startRelay(f.t, dataDir, extra...)
	f.setEdge(edge)
	return edge
}

// The SIGKILL loop against a standalone pushrelay as the upstream (it
// speaks autopush's protocol): the edge is killed at random points while
// an app server posts to the upstream endpoints its devices got, five
// times, and the upstream itself once; every message the upstream
// answered 201 for reaches a device.
func TestE2EUpstreamKillEdge(t *testing.T) {
	coreDir := t.TempDir()
	coreArgs := []string{"--device-listen", freePort(t), "--endpoint-listen", freePort(t)}
	core := startRelay(t, coreDir, coreArgs...)
	edgeDir := t.TempDir()
	edgeArgs := []string{"--upstream", core.Device, "--upstream-backoff", "50ms"}
	edge := startRelay(t, edgeDir, edgeArgs...)

	f := newFlow(t, edge, 3, &http.Client{Timeout: 3 * time.Second})
	f.start(1500, 4*time.Millisecond)
	for i := range 5 {
		edge = f.killEdge(edge, edgeDir, edgeArgs...)
		if i == 2 {
			// The upstream too, once: the edge's sessions reconnect
			// (posts meanwhile fail and are not counted).
			f.waitCreated(5, 20*time.Second)
			time.Sleep(time.Duration(100+rand.IntN(300)) * time.Millisecond)
			core.Cmd.Process.Signal(syscall.SIGKILL)
			<-core.Done
			core = startRelay(t, coreDir, coreArgs...)
		}
	}
	f.waitCreated(20, 20*time.Second)
	f.stopPosting()
	dups := f.finish(30 * time.Second)
	// The origin keys make a message the upstream sends again (stored
	// here, killed before the ack) a duplicate the edge drops. What a
	// device can still see twice is a message it got and acked while the
	// edge was killed before it deleted it (the session deletes acked
	// messages in the background, relay/session.go flushAcks): delivered
	// again on the next connection, at most the inflight window (100) of
	// each device at each kill. Twice on one connection is a bug (finish
	// fails on it).
	if limit := 6 * len(f.devs) * 100; dups > limit {
		t.Errorf("%d duplicates, more than %d", dups, limit)
	}
	edge.stop()
	core.stop()
}

// The same loop against autopushtest, which enforces autopush's batch and
// ack rules, as the upstream.
func TestE2EUpstreamKillEdgeAutopush(t *testing.T) {
	up, err := autopushtest.New(autopushtest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	edgeDir := t.TempDir()
	edgeArgs := []string{"--upstream", up.URL(), "--upstream-backoff", "50ms"}
	edge := startRelay(t, edgeDir, edgeArgs...)

	f := newFlow(t, edge, 3, &http.Client{Timeout: 3 * time.Second})
	f.start(1500, 4*time.Millisecond)
	for range 5 {
		edge = f.killEdge(edge, edgeDir, edgeArgs...)
	}
	f.waitCreated(20, 20*time.Second)
	f.stopPosting()
	dups := f.finish(30 * time.Second)
	if limit := 5 * len(f.devs) * 100; dups > limit {
		t.Errorf("%d duplicates, more than %d", dups, limit)
	}
	st := up.Stats()
	t.Logf("autopushtest: %d connections, %d sent, %d sent again, %d acked, %d resets", st.Connections, st.Sent, st.Resent, st.Acked, st.Resets)
	if st.Resets != 0 {
		t.Errorf("the upstream reset %d UAIDs", st.Resets)
	}
	for _, d := range f.devs {
		if n := up.Pending(endpointUAID(d.subs[0].endpoint)); n != 0 {
			t.Errorf("autopushtest still holds %d messages for device %s", n, d.uaid)
		}
	}
	edge.stop()
}

// endpointUAID is the UAID in an autopushtest endpoint (/push/{uaid}/{chid}).
func endpointUAID(endpoint string) string {
	parts := strings.Split(endpoint, "/")
	if len(parts) < 2 {
		return ""
	}
	return parts[len(parts)-2]
}

// cutProxy forwards TCP connections to an upstream; cut closes its
// listener and every connection (the link to the upstream down: the
// edge's connects are refused while an app server still reaches the
// upstream), restore listens again on the same port.
type cutProxy struct {
	t      *testing.T
	addr   string
	target string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	p := &cutProxy{t: t, addr: freePort(t), target: target, conns: map[net.Conn]struct{}{}}
	p.restore()
	t.Cleanup(func() { p.cut(); p.wg.Wait() })
	return p
}

func (p *cutProxy) restore() {
	p.t.Helper()
	var ln net.Listener
	var err error
	for range 50 {
		if ln, err = net.Listen("tcp", p.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		p.t.Fatalf("proxy: %v", err)
	}
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			if p.ln != ln {
				// Cut while this one was being made.
				p.mu.Unlock()
				c.Close()
				u.Close()
				continue
			}
			p.conns[c], p.conns[u] = struct{}{}, struct{}{}
			p.mu.Unlock()
			for _, pair := range [][2]net.Conn{{c, u}, {u, c}} {
				p.wg.Add(1)
				go func() {
					defer p.wg.Done()
					io.Copy(pair[0], pair[1])
					pair[0].Close()
					pair[1].Close()
					p.mu.Lock()
					delete(p.conns, pair[0])
					delete(p.conns, pair[1])
					p.mu.Unlock()
				}()
			}
		}
	}()
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
}

// upstreamStatus is the edge's /status "upstream" object.
func upstreamStatus(p *relayProc) (held, open int) {
	st, _ := p.status()["upstream"].(map[string]any)
	if st == nil {
		p.t.Fatalf("/status has no upstream: %v", p.status())
	}
	h, _ := st["held_sessions"].(float64)
	o, _ := st["open_sessions"].(float64)
	return int(h), int(o)
}

// waitOpen waits until the edge has want open upstream sessions, calling
// each (if set) every 20 ms meanwhile.
func waitOpen(t *testing.T, p *relayProc, want int, limit time.Duration, each func()) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		if each != nil {
			each()
		}
		held, open := upstreamStatus(p)
		if open == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("edge has %d of %d upstream sessions open after %s, want %d open", open, held, limit, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The upstream unreachable for a while (the link to it cut, autopushtest
// still taking posts): the edge serves its local devices on, /readyz stays
// 200 (local devices are still served; a load balancer must not take the
// edge out) while /status shows no upstream session open; what was posted
// upstream meanwhile reaches the devices once the link is back; and the
// sessions come back at most upstream_connect_rate a second, not in a
// stampede.
func TestE2EUpstreamOutage(t *testing.T) {
	up, err := autopushtest.New(autopushtest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	px := newCutProxy(t, strings.TrimSuffix(strings.TrimPrefix(up.URL(), "ws://"), "/"))
	const n, rate = 20, 8
	edge := startRelay(t, t.TempDir(), "--upstream", "ws://"+px.addr+"/", "--upstream-backoff", "100ms",
		"--upstream-connect-rate", fmt.Sprint(rate))
	devs := make([]*device, n)
	for i := range devs {
		devs[i] = connect(t, edge, "")
		devs[i].register("")
		if i > 0 {
			devs[i].c.Close()
		}
	}
	waitOpen(t, edge, n, 20*time.Second, nil)

	px.cut()
	waitOpen(t, edge, 0, 10*time.Second, nil)
	// Messages posted upstream meanwhile are kept there.
	for i, d := range devs {
		for _, s := range d.subs {
			mustCreated(t, push(t, s, fmt.Sprintf("during the outage %d", i), nil))
		}
	}
	if code, body := httpGet(edge.Admin + "/readyz"); code != 200 || !strings.Contains(body, "warning: upstream: none of the 20 held sessions is open") {
		t.Errorf("/readyz with the upstream down = %d %q, want 200 (local devices are still served) and the upstream's warning", code, body)
	}
	if code, _ := httpGet(edge.Admin + "/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if held, open := upstreamStatus(edge); held != n || open != 0 {
		t.Errorf("/status upstream: %d held, %d open; want %d held, 0 open", held, open, n)
	}
	// Local service goes on: a new device and a returning one say hello;
	// the first device's connection was never dropped.
	connect(t, edge, "")
	back := connect(t, edge, devs[1].uaid)
	if back.uaid != devs[1].uaid {
		t.Errorf("returning device got UAID %s, want %s", back.uaid, devs[1].uaid)
	}
	back.subs = devs[1].subs
	devs[1] = back
	// A register, which needs the upstream, is refused, not left hanging.
	r, err := connect(t, edge, "").c.Register(newChannelID(), "")
	if err != nil || r.Status == 200 {
		t.Errorf("register with the upstream down: %+v, %v; want a refusal", r, err)
	}
	time.Sleep(time.Second)
	if v := edge.metric(`pushrelay_upstream_connects_total{result="error"}`); v == 0 {
		_, body := httpGet(edge.Admin + "/metrics")
		t.Errorf("no failed upstream connect counted during the outage:\n%s", grepLines(body, "pushrelay_upstream_"))
	}

	// Back: the sessions reconnect paced, at most rate a second (and one
	// at once).
	before := up.Stats().Connections
	px.restore()
	t0 := time.Now()
	maxSeen := 0.0
	waitOpen(t, edge, n, 30*time.Second, func() {
		conns := up.Stats().Connections - before
		allowed := 3 + float64(rate)*time.Since(t0).Seconds()
		if float64(conns) > allowed {
			t.Fatalf("%d upstream connects %s after the upstream came back: more than %d/s", conns, time.Since(t0), rate)
		}
		maxSeen = max(maxSeen, float64(conns)/max(time.Since(t0).Seconds(), 0.001))
	})
	t.Logf("%d sessions back in %s (%d connects)", n, time.Since(t0).Round(time.Millisecond), up.Stats().Connections-before)
	if code, body := httpGet(edge.Admin + "/readyz"); code != 200 || strings.Contains(body, "warning") {
		t.Errorf("/readyz with the upstream back = %d %q, want 200 and no warning", code, body)
	}
	for i, d := range devs {
		if i > 1 {
			d = connect(t, edge, d.uaid)
			d.subs = devs[i].subs
		}
		if got, _ := d.receive(10 * time.Second); got != fmt.Sprintf("during the outage %d", i) {
			t.Errorf("device %d got %q", i, got)
		}
	}
	for i, d := range devs {
		if p := up.Pending(endpointUAID(d.subs[firstChannel(d)].endpoint)); p != 0 {
			t.Errorf("the upstream still holds %d messages for device %d", p, i)
		}
	}
	edge.stop()
}

func firstChannel(d *device) string {
	for ch := range d.subs {
		return ch
	}
	return ""
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
