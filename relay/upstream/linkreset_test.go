package upstream_test

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/linkauth"
	"github.com/pushrelay/pushrelay/relay/node"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/upstream/autopushtest"
)

// A chain whose top is autopush: device → edge → core → upstream. When
// the upstream forgets a device's UAID (60 days without a hello), the
// core resets the device and tells the edge over the relay link
// (FORGET): the device's session on the edge is closed 1000 "UAID
// reset" and its next hello there gets a new UAID, so its browser
// subscribes again, to endpoints the upstream knows.
func TestResetDownTheLink(t *testing.T) {
	var clock fakeClock
	up := startUpstream(t, autopushtest.Config{Now: clock.now})
	dir := t.TempDir()
	ca, relays := filepath.Join(dir, "ca"), filepath.Join(dir, "relays")
	if _, err := linkauth.NewCA(ca, "", false); err != nil {
		t.Fatal(err)
	}
	creds := func(name string) *linkauth.Credentials {
		if _, err := linkauth.Issue(ca, name, relays, false); err != nil {
			t.Fatal(err)
		}
		c, err := linkauth.Load(filepath.Join(relays, name+".crt"), filepath.Join(relays, name+".key"),
			filepath.Join(ca, linkauth.CACertFile), nil, "")
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// One held session: the second device is polled (once a day), so
	// nothing says hello for it upstream while the clock moves.
	core := startNode(t, node.Config{
		Upstream: up.URL(), UpstreamSessions: 1, UpstreamPollInterval: 24 * time.Hour,
		RelayListen: "127.0.0.1:0", LinkName: "core", LinkCredentials: creds("core"),
	})
	edge := startNode(t, node.Config{
		Upstream: "quic://" + core.RelayAddr().String(), LinkName: "edge-1", LinkCredentials: creds("edge-1"),
		UpstreamBackoffMin: 50 * time.Millisecond, UpstreamBackoffMax: 200 * time.Millisecond,
	})
	var devs []*pushclient.Client
	for range 2 {
		dev := helloDevice(t, edge)
		if r, err := dev.Register(pushproto.NewChannelID(), ""); err != nil || r.Status != 200 {
			t.Fatalf("register: %+v %v", r, err)
		}
		devs = append(devs, dev)
	}
	var polled *pushclient.Client
	waitFor(t, "one device held upstream, the other not", func() bool {
		open := 0
		polled = nil
		for _, d := range devs {
			u, _ := push.ParseUAID(d.UAID)
			id, ok, err := core.Store().UpstreamID(u)
			if err != nil || !ok {
				return false
			}
			if up.Open(id.Upstream.String()) {
				open++
			} else {
				polled = d
			}
		}
		return open == 1 && polled != nil
	})
	old := polled.UAID
	u, _ := push.ParseUAID(old)

	// The polled device's UAID expires upstream; its next register finds
	// that out at the core, which resets it, and the edge follows.
	clock.advance(sixtyOneDays)
	if r, err := polled.Register(pushproto.NewChannelID(), ""); err == nil && r.Status == 200 {
		t.Fatalf("a register for a forgotten UAID succeeded: %+v", r)
	}
	_, err := polled.Next(time.Now().Add(10 * time.Second))
	for err == nil {
		_, err = polled.Next(time.Now().Add(10 * time.Second))
	}
	var ce *pushclient.CloseError
	if !errors.As(err, &ce) || ce.Code != pushproto.CloseNormal || ce.Reason != "UAID reset" {
		t.Fatalf("the edge's session of the reset device ended with %v, want 1000 UAID reset", err)
	}
	waitFor(t, "the core's reset and the edge's answer", func() bool {
		fs, _ := core.Store().LinkForgets("edge-1", 10)
		return core.Metrics().Value(`pushrelay_upstream_resets_total{via="request"}`) == 1 && len(fs) == 0
	})
	checkForgotten(t, core.Store(), u)
	if _, ok, _ := edge.Store().Device(u); ok {
		t.Fatal("the edge still has the reset device")
	}
	again := dial(t, edge.DeviceURL())
	if h, err := again.Hello(old, pushclient.HelloOptions{}); err != nil || h.UAID == old {
		t.Fatalf("hello on the edge with the reset UAID: %+v %v", h, err)
	}
	// A register with the new UAID makes a fresh identity upstream.
	if r, err := again.Register(pushproto.NewChannelID(), ""); err != nil || r.Status != 200 {
		t.Fatalf("register after the reset: %+v %v", r, err)
	}
}
