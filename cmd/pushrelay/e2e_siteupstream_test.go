package main

import (
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/upstream/autopushtest"
)

// holding is the member of ps that holds the site's upstream now (its
// pushrelay_site_holder is 1), or -1; skip is a member not asked (dead
// or stopped).
func holding(ps []*relayProc, skip int) int {
	for i, p := range ps {
		if i != skip && p.metric("pushrelay_site_holder") == 1 {
			return i
		}
	}
	return -1
}

// upSite is a site of three built binaries with an autopushtest
// upstream, the member holding it (h), and a flow of six devices, two
// registered at each member (those at the others ask the holder through
// the site's log); a device whose member is out (out) connects to the
// next one.
type upSite struct {
	t   *testing.T
	up  *autopushtest.Server
	ps  []*relayProc
	h   int
	f   *flow
	out atomic.Int32
}

func newUpSite(t *testing.T) *upSite {
	t.Helper()
	up, err := autopushtest.New(autopushtest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	s := &upSite{t: t, up: up}
	s.out.Store(-1)
	s.ps, _, _ = testSiteMembers(t, 3, "--upstream", up.URL(), "--upstream-backoff", "50ms")
	ps := s.ps
	deadline := time.Now().Add(20 * time.Second)
	for s.h = holding(ps, -1); s.h < 0; s.h = holding(ps, -1) {
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
	want := siteOf(ps[s.h])["holder"]
	if hold, _ := siteOf(ps[s.h])["holding"].(bool); !hold || want == nil || want == "none" {
		t.Fatalf("the holder's /status: holder %v, holding %v", want, siteOf(ps[s.h])["holding"])
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

	s.f = newFlow(t, ps[0], 0, &http.Client{Timeout: 3 * time.Second})
	home := map[*flowDevice]int{}
	for i := range 6 {
		d := connect(t, ps[i%3], "")
		sub := d.register("")
		d.c.Close()
		fd := &flowDevice{uaid: d.uaid, subs: []*testSub{sub}}
		s.f.devs = append(s.f.devs, fd)
		home[fd] = i % 3
	}
	s.f.devURL = func(d *flowDevice) string {
		i := home[d]
		if int32(i) == s.out.Load() {
			i = (i + 1) % 3
		}
		return ps[i].Device
	}
	s.waitOpen("before the fault", 15*time.Second)
	return s
}

// allOpen reports whether autopushtest has an open session for every
// device.
func (s *upSite) allOpen() bool {
	for _, d := range s.f.devs {
		if !s.up.Open(endpointUAID(d.subs[0].endpoint)) {
			return false
		}
	}
	return true
}

func (s *upSite) waitOpen(what string, limit time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(limit)
	for !s.allOpen() {
		if time.Now().After(deadline) {
			s.t.Fatalf("%s: not every device's upstream session open within %s", what, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitHolder waits until a member other than skip holds the upstream.
func (s *upSite) waitHolder(skip int, limit time.Duration) int {
	s.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		if n := holding(s.ps, skip); n >= 0 {
			return n
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("no member but m%d holds the upstream within %s", skip+1, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// finish stops the posts, checks that nothing answered 201 was lost and
// that the upstream holds nothing unacked, and returns the duplicates
// devices saw.
func (s *upSite) finish() int {
	s.t.Helper()
	s.f.waitCreated(100, 20*time.Second)
	s.f.stopPosting()
	dups := s.f.finish(30 * time.Second)
	for _, d := range s.f.devs {
		u := endpointUAID(d.subs[0].endpoint)
		deadline := time.Now().Add(10 * time.Second)
		for s.up.Pending(u) != 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if n := s.up.Pending(u); n != 0 {
			s.t.Errorf("autopushtest still holds %d messages for device %s", n, d.uaid)
		}
	}
	if st := s.up.Stats(); st.Resets != 0 {
		s.t.Errorf("the upstream reset %d UAIDs", st.Resets)
	}
	return dups
}

// TestE2ESiteUpstream runs a site of three built binaries with an
// upstream (autopushtest, autopush's rules): one member holds the
// upstream sessions; devices register at every member and get what app
// servers post to the upstream. The holder is SIGKILLed while posts
// flow: another member holds the sessions and re-opens them (the time
// is printed), devices of the dead member move to another, and every
// post the upstream answered 201 reaches its device.
func TestE2ESiteUpstream(t *testing.T) {
	s := newUpSite(t)
	h := s.h
	s.f.start(4000, 4*time.Millisecond)
	s.f.waitCreated(100, 20*time.Second)
	s.ps[h].Cmd.Process.Signal(syscall.SIGKILL)
	killed := time.Now()
	<-s.ps[h].Done
	s.out.Store(int32(h))
	next := s.waitHolder(h, 20*time.Second)
	held := time.Since(killed)
	s.waitOpen("after the kill", 20*time.Second)
	reopened := time.Since(killed)
	dups := s.finish()
	t.Logf("holder m%d SIGKILLed: m%d holds the upstream after %s, every device's session re-opened after %s; duplicates at devices %d",
		h+1, next+1, held.Round(time.Millisecond), reopened.Round(time.Millisecond), dups)
	// What a device may see twice is what it got and acked from the
	// killed member whose ack that member had not committed: at most its
	// inflight window (100) for each device that was there.
	if limit := 2 * 100; dups > limit {
		t.Errorf("%d duplicates, more than %d", dups, limit)
	}
	for i, p := range s.ps {
		if i != h {
			p.stop()
		}
	}
}

// TestE2ESiteUpstreamStop SIGSTOPs the holder for 5 s while posts flow:
// another member holds the sessions; at SIGCONT the old holder, which
// held its sessions open meanwhile, finds it no longer leads and stops
// its upstream. Every post the upstream answered 201 reaches its device;
// duplicates are counted.
func TestE2ESiteUpstreamStop(t *testing.T) {
	s := newUpSite(t)
	h := s.h
	s.f.start(6000, 4*time.Millisecond)
	s.f.waitCreated(100, 20*time.Second)
	s.ps[h].Cmd.Process.Signal(syscall.SIGSTOP)
	stopped := time.Now()
	s.out.Store(int32(h))
	next := s.waitHolder(h, 20*time.Second)
	held := time.Since(stopped)
	s.waitOpen("after the stop", 20*time.Second)
	reopened := time.Since(stopped)
	time.Sleep(5*time.Second - time.Since(stopped))
	s.ps[h].Cmd.Process.Signal(syscall.SIGCONT)
	resumed := time.Now()
	deadline := resumed.Add(10 * time.Second)
	for s.ps[h].metric("pushrelay_site_holder") != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("m%d still holds the upstream 10 s after SIGCONT", h+1)
		}
		time.Sleep(10 * time.Millisecond)
	}
	gaveUp := time.Since(resumed)
	s.out.Store(-1)
	if n := holding(s.ps, h); n != next {
		t.Errorf("m%d holds the upstream after SIGCONT, want m%d", n+1, next+1)
	}
	s.waitOpen("after SIGCONT", 20*time.Second)
	dups := s.finish()
	if t.Failed() {
		for i, p := range s.ps {
			var lines []string
			for _, l := range strings.Split(p.stderr.String(), "\n") {
				if strings.Contains(l, "upstream") || strings.Contains(l, "holder") || strings.Contains(l, "leader") {
					lines = append(lines, l)
				}
			}
			if len(lines) > 80 {
				lines = lines[len(lines)-80:]
			}
			t.Logf("m%d:\n%s", i+1, strings.Join(lines, "\n"))
		}
	}
	t.Logf("holder m%d SIGSTOPped 5 s: m%d holds after %s, sessions re-opened after %s; the old holder stopped its upstream %s after SIGCONT; duplicates at devices %d",
		h+1, next+1, held.Round(time.Millisecond), reopened.Round(time.Millisecond), gaveUp.Round(time.Millisecond), dups)
	if limit := 2 * 100; dups > limit {
		t.Errorf("%d duplicates, more than %d", dups, limit)
	}
}
