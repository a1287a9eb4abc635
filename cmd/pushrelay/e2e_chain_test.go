package main

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
)

// This file tests chains of relays with built binaries: device → edge →
// regional → core over two relay links, and device → edge → core → top
// where the core's upstream is a WebSocket one (#7) to an autopush-like
// top (a standalone pushrelay). Keys are made with `pushrelay keys`.

// freeUDPPort is a loopback UDP address free a moment ago: a parent that
// is restarted must listen where its children dial.
func freeUDPPort(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().String()
	c.Close()
	return addr
}

// waitMetric waits up to 10 s for p's sample to reach at least want.
func waitMetric(t *testing.T, p *relayProc, sample string, want float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for p.metric(sample) < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v after 10s, want %v", sample, p.metric(sample), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nextBroadcast waits for the broadcast frame telling c that id is now
// version want.
func nextBroadcast(t *testing.T, d *device, id, want string) {
	t.Helper()
	nextBroadcastFrom(t, d.c, id, want)
}

// nextBroadcastFrom waits (bounded) for c's next frame, which must be
// broadcast id at version want.
func nextBroadcastFrom(t *testing.T, c *pushclient.Client, id, want string) {
	t.Helper()
	f, err := c.Next(time.Now().Add(15 * time.Second))
	if err != nil {
		t.Fatalf("waiting for %s = %s: %v", id, want, err)
	}
	if f.MessageType != pushproto.TypeBroadcast || f.Broadcasts[id] != want {
		t.Fatalf("device got %+v, want the broadcast %s = %s", f, id, want)
	}
}

// unregisterReachesTop unregisters s on the edge and waits until a post
// to its endpoint at the top is answered 410: the unregister went up the
// chain.
func unregisterReachesTop(t *testing.T, edge *relayProc, uaid string, s *testSub) {
	t.Helper()
	d := connect(t, edge, uaid)
	if f, err := d.c.Unregister(s.channel); err != nil || f.Status != 200 {
		t.Fatalf("unregister: %v %+v", err, f)
	}
	d.c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp := push(t, s, "after unregister", nil)
		resp.Body.Close()
		if resp.StatusCode == http.StatusGone {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the top still answers %d for an unregistered channel after 10s", resp.StatusCode)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Three tiers of built binaries: devices on the edge register and get the
// core's endpoints; an app server posts to the core while the regional
// relay is SIGKILLed once mid-stream; every message the core answered 201
// for reaches a device (duplicates reported); the core's broadcast
// version and its change reach a device on the edge; an unregister on the
// edge travels up to the core.
func TestE2EChainThreeTiers(t *testing.T) {
	keys := linkKeys(t, "core", "regional", "edge-1")
	tokenFile, token := writeAdminToken(t)
	const id = "remote-settings/monitor_changes"
	core := startRelay(t, t.TempDir(), append([]string{"--relay-listen", "127.0.0.1:0", "--admin-token-file", tokenFile}, keys["core"]...)...)
	if code, v := adminCall(t, core, "PUT", "/broadcasts/"+id, token, `"1"`); code != 200 {
		t.Fatalf("PUT = %d %v", code, v)
	}
	regDir, regLink := t.TempDir(), freeUDPPort(t)
	regArgs := append([]string{"--upstream", "quic://" + linkAddr(t, core), "--upstream-backoff", "50ms",
		"--relay-listen", regLink}, keys["regional"]...)
	regional := startRelay(t, regDir, regArgs...)
	// The edge notices the regional relay's restart at its next
	// heartbeat (answered with a stateless reset): 200 ms here.
	edge := startRelay(t, t.TempDir(), append([]string{"--upstream", "quic://" + regLink, "--upstream-backoff", "50ms",
		"--link-keepalive", "200ms"}, keys["edge-1"]...)...)

	// Broadcasts: the core's version is on the edge, two links down.
	waitMetric(t, edge, `pushrelay_broadcast_changes_total{source="parent"}`, 1)
	// (Remote Settings' versions hold quotes.)
	c, got := bcastHello(t, edge, "", map[string]string{id: `"0"`})
	if fmt.Sprint(got) != fmt.Sprint(map[string]any{id: `"1"`}) {
		t.Fatalf("hello on the edge answered broadcasts %v, want %s: \"1\"", got, id)
	}
	if code, v := adminCall(t, core, "PUT", "/broadcasts/"+id, token, `"2"`); code != 200 {
		t.Fatalf("PUT = %d %v", code, v)
	}
	nextBroadcast(t, &device{t: t, c: c}, id, `"2"`)
	c.Abort()

	f := newFlow(t, edge, 3, &http.Client{Timeout: 3 * time.Second})
	for _, d := range f.devs {
		if ep := d.subs[0].endpoint; !strings.HasPrefix(ep, core.Endpoint+"/") {
			t.Fatalf("endpoint %s is not the core's (%s)", ep, core.Endpoint)
		}
	}
	f.start(1500, 2*time.Millisecond)
	f.waitCreated(100, 20*time.Second)
	time.Sleep(time.Duration(100+rand.IntN(300)) * time.Millisecond)
	regional.Cmd.Process.Signal(syscall.SIGKILL)
	<-regional.Done
	// The core keeps what is posted while the regional relay is down.
	f.waitCreated(20, 20*time.Second)
	regional = startRelay(t, regDir, regArgs...)
	f.waitCreated(200, 20*time.Second)
	f.stopPosting()
	dups := f.finish(30 * time.Second)
	// What the regional relay had stored and not yet sent on comes from
	// its store after the restart; what it had sent and the edge had not
	// acked comes again and the edge's origin keys drop it. A device can
	// see twice only what it acked while a copy was still on its way.
	if limit := len(f.devs) * 100; dups > limit {
		t.Errorf("%d duplicates, more than %d", dups, limit)
	}
	for name, p := range map[string]*relayProc{"core": core, "regional": regional} {
		if n := p.waiting(); n != 0 {
			t.Errorf("the %s still holds %d messages the tier below has", name, n)
		}
	}

	unregisterReachesTop(t, edge, f.devs[0].uaid, f.devs[0].subs[0])
	edge.stop()
	regional.stop()
	core.stop()
}

// A chain whose core has a WebSocket upstream (#7): device → edge → core →
// top, the top a standalone pushrelay (it speaks autopush's protocol).
// Endpoints are the top's; posts there reach the device through the
// core's held session and the link; a broadcast the core's operator names
// is fetched from the top and flows down to the edge, changes too; an
// unregister on the edge travels up to the top.
func TestE2EChainAutopushTop(t *testing.T) {
	keys := linkKeys(t, "core", "edge-1")
	tokenFile, token := writeAdminToken(t)
	const id = "remote-settings/monitor_changes"
	top := startRelay(t, t.TempDir(), "--admin-token-file", tokenFile)
	if code, v := adminCall(t, top, "PUT", "/broadcasts/"+id, token, `"5"`); code != 200 {
		t.Fatalf("PUT = %d %v", code, v)
	}
	core := startRelay(t, t.TempDir(), append([]string{"--upstream", top.Device, "--upstream-backoff", "50ms",
		"--relay-listen", "127.0.0.1:0", "--admin-token-file", tokenFile}, keys["core"]...)...)
	edge := startRelay(t, t.TempDir(), append([]string{"--upstream", "quic://" + linkAddr(t, core), "--upstream-backoff", "50ms"}, keys["edge-1"]...)...)

	// The core serves the id (its operator names it, at any version); its
	// upstream answers the top's version, which goes down the link.
	if code, v := adminCall(t, core, "PUT", "/broadcasts/"+id, token, `"any"`); code != 200 {
		t.Fatalf("PUT = %d %v", code, v)
	}
	waitMetric(t, core, `pushrelay_broadcast_changes_total{source="upstream"}`, 1)
	// The edge hears "any", then "5"; or "5" alone when both changes
	// came while one BROADCAST frame was being written (they go
	// together in the next, by design).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c, got := bcastHello(t, edge, "", map[string]string{id: `"0"`})
		c.Close()
		if fmt.Sprint(got) == fmt.Sprint(map[string]any{id: `"5"`}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the edge answers broadcasts %v after 10s, want %s: \"5\"", got, id)
		}
	}

	d := connect(t, edge, "")
	s := d.register("")
	if !strings.HasPrefix(s.endpoint, top.Endpoint+"/") {
		t.Fatalf("endpoint %s is not the top's (%s)", s.endpoint, top.Endpoint)
	}
	d.c.Close()
	c, got := bcastHello(t, edge, d.uaid, map[string]string{id: `"0"`})
	if fmt.Sprint(got) != fmt.Sprint(map[string]any{id: `"5"`}) {
		t.Fatalf("hello on the edge answered broadcasts %v, want %s: \"5\"", got, id)
	}
	d.c = c
	for i := range 3 {
		text := fmt.Sprintf("from the top %d", i)
		mustCreated(t, push(t, s, text, nil))
		if got, _ := d.receive(10 * time.Second); got != text {
			t.Fatalf("device got %q, want %q", got, text)
		}
	}
	if code, v := adminCall(t, top, "PUT", "/broadcasts/"+id, token, `"6"`); code != 200 {
		t.Fatalf("PUT = %d %v", code, v)
	}
	nextBroadcast(t, d, id, `"6"`)
	c.Abort()

	unregisterReachesTop(t, edge, d.uaid, s)
	edge.stop()
	core.stop()
	top.stop()
}
