package main

import (
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// linkParentOf is child p's /status view of its parent: connected, and
// the address dialed.
func linkParentOf(p *relayProc) (connected bool, addr string) {
	l, _ := p.status()["link"].(map[string]any)
	pa, _ := l["parent"].(map[string]any)
	connected, _ = pa["connected"].(bool)
	addr, _ = pa["addr"].(string)
	return connected, addr
}

// TestE2ESiteLinkParent runs a site of three built binaries as the
// parent of a child relay (relay_listen on every member; the child's
// upstream names the three): the member that holds the site's children
// takes the child, the others refuse it. Devices on the child get what
// app servers post to the members; the holder is SIGKILLed while posts
// flow (to the live members): another member holds, announces itself to
// the child (the restart hint from its link socket), and the child moves
// there (both times printed); every post answered 201 reaches its
// device, and the members hold none of them unacked.
func TestE2ESiteLinkParent(t *testing.T) {
	keys := linkKeys(t, "core", "edge-1")
	ps, _, _ := testSiteMembers(t, 3, append([]string{"--relay-listen", "127.0.0.1:0"}, keys["core"]...)...)
	var addrs []string
	for _, p := range ps {
		addrs = append(addrs, linkAddr(t, p))
	}
	edge := startRelay(t, t.TempDir(), append([]string{"--upstream", "quic://" + strings.Join(addrs, ","), "--upstream-backoff", "50ms"}, keys["edge-1"]...)...)
	deadline := time.Now().Add(20 * time.Second)
	h := holding(ps, -1)
	for ; h < 0 || !func() bool { c, a := linkParentOf(edge); return c && a == addrs[h] }(); h = holding(ps, -1) {
		if time.Now().After(deadline) {
			c, a := linkParentOf(edge)
			t.Fatalf("the child is not connected to the site's holder m%d within 20 s (connected %v to %s)", h+1, c, a)
		}
		time.Sleep(50 * time.Millisecond)
	}

	f := newFlow(t, edge, 6, &http.Client{Timeout: 3 * time.Second})
	for _, d := range f.devs {
		if ep := d.subs[0].endpoint; !strings.Contains(ep, "/wpush/") {
			t.Fatalf("endpoint %s is not a site member's", ep)
		}
	}
	f.start(0, time.Millisecond) // the devices only: the posts below
	var out atomic.Int32
	out.Store(-1)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for i := range 4000 {
			select {
			case <-stop:
				return
			case <-time.After(4 * time.Millisecond):
			}
			m := i % 3
			if int32(m) == out.Load() {
				m = (m + 1) % 3
			}
			d := f.devs[i%len(f.devs)]
			f.postTo(d.subs[0], at(d.subs[0].endpoint, ps[m]), fmt.Sprintf("m%05d-%s", i, d.uaid[:8]))
		}
	}()
	f.waitCreated(100, 20*time.Second)
	ps[h].Cmd.Process.Signal(syscall.SIGKILL)
	killed := time.Now()
	<-ps[h].Done
	out.Store(int32(h))
	next := -1
	var held, moved time.Duration
	deadline = killed.Add(20 * time.Second)
	for held == 0 || moved == 0 {
		if time.Now().After(deadline) {
			c, a := linkParentOf(edge)
			t.Fatalf("within 20 s of the kill: holder m%d after %s, the child moved after %s (connected %v to %s)", next+1, held, moved, c, a)
		}
		if held == 0 {
			if next = holding(ps, h); next >= 0 {
				held = time.Since(killed)
			}
		}
		if c, a := linkParentOf(edge); moved == 0 && next >= 0 && c && a == addrs[next] {
			moved = time.Since(killed)
		}
		time.Sleep(10 * time.Millisecond)
	}
	f.waitCreated(100, 20*time.Second)
	close(stop)
	<-done
	f.stopPosting()
	dups := f.finish(30 * time.Second)
	t.Logf("holder m%d SIGKILLed: m%d holds after %s, the child connected to it after %s; %d posts answered 201; duplicates at devices %d",
		h+1, next+1, held.Round(time.Millisecond), moved.Round(time.Millisecond), f.created201(), dups)
	// A device may see twice what it got and acked from the child
	// while the holder died before committing the child's ack: at most
	// the child's credit, bounded here by the inflight window per device.
	if limit := 6 * 100; dups > limit {
		t.Errorf("%d duplicates, more than %d", dups, limit)
	}
	for i, p := range ps {
		if i == h {
			continue
		}
		deadline := time.Now().Add(10 * time.Second)
		for p.waiting() != 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if n := p.waiting(); n != 0 {
			t.Errorf("m%d still holds %d messages the child has", i+1, n)
		}
	}
	if t.Failed() {
		for i, p := range append(ps, edge) {
			t.Logf("%d:\n%s", i+1, grepLines(p.stderr.String(), "link"))
		}
	}
	edge.stop()
	for i, p := range ps {
		if i != h {
			p.stop()
		}
	}
}
