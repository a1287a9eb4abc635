package main

import (
	"math/rand/v2"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// This file tests the relay link end to end with built binaries: a core
// relay taking children (--relay-listen) and an edge relay linked to it
// (--upstream quic://), with keys made by `pushrelay keys`.

// linkKeys makes a site CA and the named relays' keys with the binary,
// and returns the flags each relay runs with.
func linkKeys(t *testing.T, names ...string) map[string][]string {
	t.Helper()
	dir := t.TempDir()
	keys := func(args ...string) {
		out, err := exec.Command(binPath, append([]string{"keys"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("pushrelay keys %v: %v\n%s", args, err, out)
		}
	}
	ca := filepath.Join(dir, "ca")
	keys("ca", "--dir", ca)
	flags := map[string][]string{}
	for _, n := range names {
		out := filepath.Join(dir, n)
		keys("issue", "--ca", ca, "--name", n, "--out", out)
		flags[n] = []string{"--link-cert", filepath.Join(out, n+".crt"), "--link-key", filepath.Join(out, n+".key"),
			"--link-ca", filepath.Join(ca, "ca.crt")}
	}
	return flags
}

// linkAddr is a parent's relay link address, from its /status.
func linkAddr(t *testing.T, p *relayProc) string {
	t.Helper()
	l, _ := p.status()["link"].(map[string]any)
	addr, _ := l["listen"].(string)
	if addr == "" {
		t.Fatalf("no relay link address in /status: %v", p.status())
	}
	return strings.TrimSuffix(addr, "/udp")
}

// The relay link under SIGKILL: devices on the edge register (their
// endpoints are the core's), an app server posts to the core, and the
// edge is killed at random points three times; every message the core
// answered 201 for reaches a device.
func TestE2ELinkKillChild(t *testing.T) {
	keys := linkKeys(t, "core", "edge-1")
	coreDir := t.TempDir()
	core := startRelay(t, coreDir, append([]string{"--relay-listen", "127.0.0.1:0"}, keys["core"]...)...)
	edgeDir := t.TempDir()
	edgeArgs := append([]string{"--upstream", "quic://" + linkAddr(t, core), "--upstream-backoff", "50ms"}, keys["edge-1"]...)
	edge := startRelay(t, edgeDir, edgeArgs...)

	f := newFlow(t, edge, 3, &http.Client{Timeout: 3 * time.Second})
	for _, d := range f.devs {
		if ep := d.subs[0].endpoint; !strings.HasPrefix(ep, core.Endpoint+"/") {
			t.Fatalf("endpoint %s is not the core's (%s)", ep, core.Endpoint)
		}
	}
	f.start(1500, 4*time.Millisecond)
	for range 3 {
		f.waitCreated(5, 20*time.Second)
		time.Sleep(time.Duration(100+rand.IntN(500)) * time.Millisecond)
		edge.Cmd.Process.Signal(syscall.SIGKILL)
		<-edge.Done
		// The core keeps what is posted while the edge is down.
		f.waitCreated(5, 20*time.Second)
		edge = startRelay(t, edgeDir, edgeArgs...)
		f.setEdge(edge)
	}
	f.waitCreated(20, 20*time.Second)
	f.stopPosting()
	dups := f.finish(30 * time.Second)
	// The core resends what the edge did not ack; the edge's origin keys
	// drop what it had stored. What a device can still see twice is a
	// message it acked while the edge was killed before deleting it (as
	// in TestE2EUpstreamKillEdge): at most the inflight window per
	// device per kill.
	if limit := 3 * len(f.devs) * 100; dups > limit {
		t.Errorf("%d duplicates, more than %d", dups, limit)
	}
	if n := core.waiting(); n != 0 {
		t.Errorf("the core still holds %d messages the edge has", n)
	}
	edge.stop()
	core.stop()
}

// A child the core does not trust is refused, and both say why.
func TestE2ELinkRefused(t *testing.T) {
	keys := linkKeys(t, "core")
	other := linkKeys(t, "edge-1")
	core := startRelay(t, t.TempDir(), append([]string{"--relay-listen", "127.0.0.1:0"}, keys["core"]...)...)
	// The edge trusts the core's CA, but its certificate is another's.
	args := append([]string{"--upstream", "quic://" + linkAddr(t, core), "--upstream-backoff", "50ms"}, other["edge-1"]...)
	args[len(args)-1] = keys["core"][len(keys["core"])-1]
	edge := startRelay(t, t.TempDir(), args...)
	deadline := time.Now().Add(10 * time.Second)
	for core.metric(`pushrelay_link_handshakes_total{result="bad_ca"}`) < 1 || !strings.Contains(edge.stderr.String(), "bad_ca") {
		if time.Now().After(deadline) {
			t.Fatalf("no refusal seen in 10s\ncore:\n%s\nedge:\n%s", tail(core.stderr.String(), 20), tail(edge.stderr.String(), 20))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("edge: %s", grepLines(edge.stderr.String(), "bad_ca"))
	edge.stop()
	core.stop()
}
