package main

import (
	"strings"
	"testing"
	"time"
)

// Two built binaries: an edge relay whose upstream is a standalone
// pushrelay. A device on the edge gets the core's endpoint; an app server
// posts to it; the edge, holding the device's session with the core,
// stores the message, acks it there, and delivers it.
func TestE2EUpstream(t *testing.T) {
	core := startRelay(t, t.TempDir())
	edge := startRelay(t, t.TempDir(), "--upstream", core.Device, "--upstream-backoff", "100ms")

	d := connect(t, edge, "")
	s := d.register("")
	if !strings.HasPrefix(s.endpoint, core.Endpoint+"/") {
		t.Fatalf("device got endpoint %s, want one of the upstream's (%s)", s.endpoint, core.Endpoint)
	}
	mustCreated(t, push(t, s, "through the core", nil))
	if got, _ := d.receive(10 * time.Second); got != "through the core" {
		t.Fatalf("device got %q", got)
	}
	// The edge acked upstream: the core holds nothing for the device.
	for i := 0; core.waiting() != 0; i++ {
		if i == 100 {
			t.Fatalf("the core still holds %d messages", core.waiting())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// While the device is away, the edge keeps what comes.
	d.c.Close()
	mustCreated(t, push(t, s, "kept at the edge", nil))
	for i := 0; edge.waiting() != 1; i++ {
		if i == 100 {
			t.Fatalf("the edge holds %d messages, want 1", edge.waiting())
		}
		time.Sleep(50 * time.Millisecond)
	}
	d2 := connect(t, edge, d.uaid)
	d2.subs = d.subs
	if got, _ := d2.receive(10 * time.Second); got != "kept at the edge" {
		t.Fatalf("device got %q", got)
	}
	if v := edge.metric(`pushrelay_upstream_acks_total`); v != 2 {
		t.Errorf("edge acked %v upstream, want 2", v)
	}
	st, _ := edge.status()["upstream"].(map[string]any)
	if st == nil || st["url"] != core.Device || st["held_sessions"] != 1.0 || st["open_sessions"] != 1.0 {
		t.Errorf("edge /status upstream: %v", edge.status()["upstream"])
	}
	if _, ok := core.status()["upstream"]; ok {
		t.Errorf("standalone /status names an upstream")
	}
	edge.stop()
	core.stop()
}

// Past upstream_sessions the edge polls: with one session, a device
// connected to the edge is held and a second, away, is polled every
// second; what the core keeps for the second reaches the edge within the
// interval and the device when it comes back. /status shows one held and
// one polled.
func TestE2EUpstreamPolled(t *testing.T) {
	core := startRelay(t, t.TempDir())
	edge := startRelay(t, t.TempDir(), "--upstream", core.Device, "--upstream-backoff", "100ms",
		"--upstream-sessions", "1", "--upstream-poll-interval", "1s")
	held := connect(t, edge, "")
	held.register("")
	d := connect(t, edge, "")
	s := d.register("")
	d.c.Close()
	mustCreated(t, push(t, s, "polled through", nil))
	for i := 0; edge.waiting() != 1 || core.waiting() != 0; i++ {
		if i == 60 { // 3 s: the interval, jittered, and the poll
			t.Fatalf("the edge holds %d messages, the core %d; want 1 and 0", edge.waiting(), core.waiting())
		}
		time.Sleep(50 * time.Millisecond)
	}
	st, _ := edge.status()["upstream"].(map[string]any)
	if st == nil || st["held_sessions"] != 1.0 || st["polled"] != 1.0 || st["poll_lag"] == "" {
		t.Errorf("edge /status upstream: %v", edge.status()["upstream"])
	}
	d2 := connect(t, edge, d.uaid)
	d2.subs = d.subs
	if got, _ := d2.receive(10 * time.Second); got != "polled through" {
		t.Fatalf("device got %q", got)
	}
	// The poll is counted when it ends: after the round that confirms
	// nothing more waits, a moment after the message was stored.
	for i := 0; edge.metric(`pushrelay_upstream_polls_total{result="drained"}`) < 1; i++ {
		if i == 100 {
			t.Fatalf("edge counted %v drained polls", edge.metric(`pushrelay_upstream_polls_total{result="drained"}`))
		}
		time.Sleep(50 * time.Millisecond)
	}
	edge.stop()
	core.stop()
}
