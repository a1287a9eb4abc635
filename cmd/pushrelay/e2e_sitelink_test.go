package main

import (
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// linkChildAt is how parent p's /status shows its child name: whether it
// is connected, and from which address.
func linkChildAt(p *relayProc, name string) (connected bool, addr string, uaids int) {
	l, _ := p.status()["link"].(map[string]any)
	cs, _ := l["children"].([]any)
	for _, c := range cs {
		m, _ := c.(map[string]any)
		if m["name"] == name {
			connected, _ = m["connected"].(bool)
			addr, _ = m["addr"].(string)
			n, _ := m["uaids"].(float64)
			return connected, addr, int(n)
		}
	}
	return false, "", 0
}

// TestE2ESiteLinkChild runs a site of three built binaries as one child
// of a parent pushrelay (upstream quic://, the same link certificate on
// every member): one member holds the relay link; devices register at
// every member (their endpoints are the parent's) and get what app
// servers post to the parent. The holder is SIGKILLed while posts flow:
// another member holds the link and the parent sees the site connected
// again from it (both times printed), devices of the dead member move to
// another, every post the parent answered 201 reaches its device, and
// the parent holds none of them unacked.
func TestE2ESiteLinkChild(t *testing.T) {
	keys := linkKeys(t, "core", "site-a")
	core := startRelay(t, t.TempDir(), append([]string{"--relay-listen", "127.0.0.1:0"}, keys["core"]...)...)
	ps, _, _ := testSiteMembers(t, 3, append([]string{"--upstream", "quic://" + linkAddr(t, core), "--upstream-backoff", "50ms"}, keys["site-a"]...)...)
	deadline := time.Now().Add(20 * time.Second)
	h := holding(ps, -1)
	for ; h < 0 || !func() bool { c, _, _ := linkChildAt(core, "site-a"); return c }(); h = holding(ps, -1) {
		if time.Now().After(deadline) {
			t.Fatalf("no member holds the link to the parent within 20 s (holder m%d); core: %v", h+1, core.status()["link"])
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, addr0, _ := linkChildAt(core, "site-a")

	var out atomic.Int32
	out.Store(-1)
	f := newFlow(t, ps[0], 0, &http.Client{Timeout: 3 * time.Second})
	home := map[*flowDevice]int{}
	for i := range 6 {
		d := connect(t, ps[i%3], "")
		sub := d.register("")
		d.c.Close()
		if !strings.HasPrefix(sub.endpoint, core.Endpoint+"/") {
			t.Fatalf("m%d: endpoint %s is not the parent's (%s)", i%3+1, sub.endpoint, core.Endpoint)
		}
		fd := &flowDevice{uaid: d.uaid, subs: []*testSub{sub}}
		f.devs = append(f.devs, fd)
		home[fd] = i % 3
	}
	f.devURL = func(d *flowDevice) string {
		i := home[d]
		if int32(i) == out.Load() {
			i = (i + 1) % 3
		}
		return ps[i].Device
	}
	if _, _, n := linkChildAt(core, "site-a"); n != 6 {
		t.Fatalf("the parent serves %d devices through the site, want 6", n)
	}

	f.start(4000, 4*time.Millisecond)
	f.waitCreated(100, 20*time.Second)
	ps[h].Cmd.Process.Signal(syscall.SIGKILL)
	killed := time.Now()
	<-ps[h].Done
	out.Store(int32(h))
	next := -1
	var held, reopened time.Duration
	deadline = killed.Add(20 * time.Second)
	for held == 0 || reopened == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("within 20 s of the kill: holder m%d after %s, link re-opened after %s", next+1, held, reopened)
		}
		if held == 0 {
			if next = holding(ps, h); next >= 0 {
				held = time.Since(killed)
			}
		}
		if c, a, _ := linkChildAt(core, "site-a"); reopened == 0 && c && a != addr0 {
			reopened = time.Since(killed)
		}
		time.Sleep(10 * time.Millisecond)
	}
	f.waitCreated(100, 20*time.Second)
	f.stopPosting()
	dups := f.finish(30 * time.Second)
	t.Logf("holder m%d SIGKILLed: m%d holds the link after %s, the parent sees the site connected again after %s; %d posts answered 201; duplicates at devices %d",
		h+1, next+1, held.Round(time.Millisecond), reopened.Round(time.Millisecond), f.created201(), dups)
	// A device may see twice what it got and acked from the killed
	// member whose ack that member had not committed: at most its
	// inflight window (100) for each device that was there.
	if limit := 2 * 100; dups > limit {
		t.Errorf("%d duplicates, more than %d", dups, limit)
	}
	deadline = time.Now().Add(10 * time.Second)
	for core.waiting() != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := core.waiting(); n != 0 {
		t.Errorf("the parent still holds %d messages the site has", n)
	}
	if l, _ := core.status()["link"].(map[string]any); len(l["children"].([]any)) != 1 {
		t.Errorf("the parent knows the site as more than one child: %v", l["children"])
	}
	for i, p := range ps {
		if i != h {
			p.stop()
		}
	}
	core.stop()
}
