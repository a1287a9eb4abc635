package main

import (
	"net/http"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/upstream/autopushtest"
)

// holding is the member of ps that holds the site's upstream now (its
// pushrelay_site_holder is 1), or -1; skip is a member not asked (dead).
func holding(ps []*relayProc, skip int) int {
	for i, p := range ps {
		if i != skip && p.metric("pushrelay_site_holder") == 1 {
			return i
		}
	}
	return -1
}

// TestE2ESiteUpstream runs a site of three built binaries with an
// upstream (autopushtest, autopush's rules): one member holds the
// upstream sessions; devices register at every member (those at the
// others ask the holder through the site's log) and get what app
// servers post to the upstream. The holder is SIGKILLed while posts
// flow: another member holds the sessions and re-opens them (the time
// is printed), devices of the dead member move to another, and every
// post the upstream answered 201 reaches its device.
func TestE2ESiteUpstream(t *testing.T) {
	up, err := autopushtest.New(autopushtest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	ps, _, _ := testSiteMembers(t, 3, "--upstream", up.URL(), "--upstream-backoff", "50ms")
	var h int
	deadline := time.Now().Add(20 * time.Second)
	for h = holding(ps, -1); h < 0; h = holding(ps, -1) {
		if time.Now().After(deadline) {
			t.Fatal("no member holds the upstream")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// /status names the holder alike on every member.
	siteOf := func(p *relayProc) map[string]any {
		cl, _ := p.status()["cluster"].(map[string]any)
		st, _ := cl["site"].(map[string]any)
		return st
	}
	want := siteOf(ps[h])["holder"]
	if hold, _ := siteOf(ps[h])["holding"].(bool); !hold || want == nil || want == "none" {
		t.Fatalf("the holder's /status: holder %v, holding %v", want, siteOf(ps[h])["holding"])
	}
	for i, p := range ps {
		deadline := time.Now().Add(5 * time.Second)
		for siteOf(p)["holder"] != want {
			if time.Now().After(deadline) {
				t.Fatalf("m%d's /status names holder %v, the holder %v", i+1, siteOf(p)["holder"], want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// Two devices on each member, each registered there.
	f := newFlow(t, ps[0], 0, &http.Client{Timeout: 3 * time.Second})
	home := map[*flowDevice]int{}
	for i := range 6 {
		d := connect(t, ps[i%3], "")
		s := d.register("")
		d.c.Close()
		fd := &flowDevice{uaid: d.uaid, subs: []*testSub{s}}
		f.devs = append(f.devs, fd)
		home[fd] = i % 3
	}
	var dead atomic.Int32
	dead.Store(-1)
	f.devURL = func(d *flowDevice) string {
		i := home[d]
		if int32(i) == dead.Load() {
			i = (i + 1) % 3
		}
		return ps[i].Device
	}
	allOpen := func() bool {
		for _, d := range f.devs {
			if !up.Open(endpointUAID(d.subs[0].endpoint)) {
				return false
			}
		}
		return true
	}
	waitOpenWithin := func(what string, limit time.Duration) {
		deadline := time.Now().Add(limit)
		for !allOpen() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not every device's upstream session open within %s", what, limit)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitOpenWithin("before the kill", 15*time.Second)

	f.start(4000, 4*time.Millisecond)
	f.waitCreated(100, 20*time.Second)
	ps[h].Cmd.Process.Signal(syscall.SIGKILL)
	killed := time.Now()
	<-ps[h].Done
	dead.Store(int32(h))
	var next int
	for next = holding(ps, h); next < 0; next = holding(ps, h) {
		if time.Since(killed) > 20*time.Second {
			t.Fatal("no other member holds the upstream")
		}
		time.Sleep(10 * time.Millisecond)
	}
	held := time.Since(killed)
	waitOpenWithin("after the kill", 20*time.Second)
	reopened := time.Since(killed)
	f.waitCreated(100, 20*time.Second)
	f.stopPosting()
	dups := f.finish(30 * time.Second)
	t.Logf("holder m%d SIGKILLed: m%d holds the upstream after %s, every device's session re-opened after %s; duplicates at devices %d",
		h+1, next+1, held.Round(time.Millisecond), reopened.Round(time.Millisecond), dups)
	// What a device may see twice is what it got and acked from the
	// killed member whose ack that member had not committed: at most its
	// inflight window (100) for each device that was there.
	if limit := 2 * 100; dups > limit {
		t.Errorf("%d duplicates, more than %d", dups, limit)
	}
	for _, d := range f.devs {
		if n := up.Pending(endpointUAID(d.subs[0].endpoint)); n != 0 {
			t.Errorf("autopushtest still holds %d messages for device %s", n, d.uaid)
		}
	}
	if st := up.Stats(); st.Resets != 0 {
		t.Errorf("the upstream reset %d UAIDs", st.Resets)
	}
	for i, p := range ps {
		if i != h {
			p.stop()
		}
	}
}
