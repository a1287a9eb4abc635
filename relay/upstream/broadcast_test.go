package upstream_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/node"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/upstream/autopushtest"
)

// nextBroadcast reads frames until a broadcast frame (5 s) and returns its
// broadcasts.
func nextBroadcast(t *testing.T, c *pushclient.Client) map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		f, err := c.Next(deadline)
		if err != nil {
			t.Fatalf("waiting for a broadcast: %v", err)
		}
		if f.MessageType == pushproto.TypeBroadcast {
			return f.Broadcasts
		}
	}
}

const rsID = "remote-settings/monitor_changes"

// A device on the edge subscribes to a broadcast the edge does not know
// yet: it is told nothing at hello, the edge asks the upstream (its
// broadcast connection), and the device gets the upstream's version when
// it arrives; when the upstream's version changes (pushed on its ping
// tick) the device gets the change. An id the upstream does not know
// either is counted and never answered. A device that comes later is
// answered from the edge's registry at hello.
func TestUpstreamBroadcasts(t *testing.T) {
	up := startUpstream(t, autopushtest.Config{AutoPingInterval: 100 * time.Millisecond, AutoPingTimeout: 80 * time.Millisecond})
	up.SetBroadcast(rsID, "v1")
	n := startNode(t, node.Config{Upstream: up.URL(), UpstreamBackoffMin: 50 * time.Millisecond})
	m := n.Metrics()

	dev := dial(t, n.DeviceURL())
	r, err := dev.Hello("", pushclient.HelloOptions{Broadcasts: map[string]string{rsID: "v0", "nope": "v0"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Broadcasts) != 0 {
		t.Errorf("hello answered broadcasts %v, want none (both ids are being asked upstream)", r.Broadcasts)
	}
	if got := nextBroadcast(t, dev); fmt.Sprint(got) != fmt.Sprint(map[string]any{rsID: "v1"}) {
		t.Fatalf("device got broadcast %v, want %s: v1", got, rsID)
	}
	waitFor(t, "the unknown id answered", func() bool {
		return m.Value(`pushrelay_upstream_broadcast_ids_total{result="not_found"}`) == 1
	})
	if got := m.Value("pushrelay_upstream_broadcasts_pending"); got != 0 {
		t.Errorf("pending = %v", got)
	}
	if got := m.Value("pushrelay_upstream_broadcast_connected"); got != 1 {
		t.Errorf("connected = %v", got)
	}

	up.SetBroadcast(rsID, "v2")
	if got := nextBroadcast(t, dev); fmt.Sprint(got) != fmt.Sprint(map[string]any{rsID: "v2"}) {
		t.Fatalf("device got broadcast %v, want %s: v2", got, rsID)
	}
	if got := m.Value(`pushrelay_broadcast_changes_total{source="upstream"}`); got != 2 {
		t.Errorf("changes from the upstream = %v, want 2", got)
	}

	later := dial(t, n.DeviceURL())
	r, err = later.Hello("", pushclient.HelloOptions{Broadcasts: map[string]string{rsID: "v1"}})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(r.Broadcasts) != fmt.Sprint(map[string]any{rsID: "v2"}) {
		t.Errorf("a later device's hello answered %v, want %s: v2", r.Broadcasts, rsID)
	}
	// The unknown id is not asked again for a while: the next device
	// naming it is answered "Broadcast not found", as autopush answers.
	r, err = dial(t, n.DeviceURL()).Hello("", pushclient.HelloOptions{Broadcasts: map[string]string{"nope": "v0"}})
	if err != nil || len(r.Broadcasts) != 1 || r.Broadcasts["errors"] == nil {
		t.Errorf("hello with a not-found id answered %+v %v, want it under errors", r.Broadcasts, err)
	}
	// One broadcast connection served it all.
	if got := m.Value(`pushrelay_upstream_broadcast_connects_total{result="ok"}`); got != 1 {
		t.Errorf("broadcast connects = %v, want 1", got)
	}
}

// The ids the edge serves are kept (in its registry) across a restart: the
// restarted edge subscribes upstream to them before any device asks, so a
// change made while it was down is served at the next device's hello.
func TestUpstreamBroadcastsAfterRestart(t *testing.T) {
	up := startUpstream(t, autopushtest.Config{})
	up.SetBroadcast(rsID, "v1")
	cfg := node.Config{Upstream: up.URL(), UpstreamBackoffMin: 50 * time.Millisecond, DataDir: t.TempDir()}
	n := startNode(t, cfg)
	dev := dial(t, n.DeviceURL())
	if _, err := dev.Hello("", pushclient.HelloOptions{Broadcasts: map[string]string{rsID: "v0"}}); err != nil {
		t.Fatal(err)
	}
	if got := nextBroadcast(t, dev); fmt.Sprint(got) != fmt.Sprint(map[string]any{rsID: "v1"}) {
		t.Fatalf("device got broadcast %v", got)
	}
	dev.Close()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	up.SetBroadcast(rsID, "v2")
	n = startNode(t, cfg)
	waitFor(t, "the version from the upstream", func() bool {
		return n.Metrics().Value(`pushrelay_broadcast_changes_total{source="upstream"}`) == 1
	})
	r, err := dial(t, n.DeviceURL()).Hello("", pushclient.HelloOptions{Broadcasts: map[string]string{rsID: "v1"}})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(r.Broadcasts) != fmt.Sprint(map[string]any{rsID: "v2"}) {
		t.Errorf("hello answered %v, want %s: v2", r.Broadcasts, rsID)
	}
}

// Devices asking for more ids than one frame names (64) between them: the
// broadcast connection asks for them all, 64 to a frame, and every device
// gets the versions of its own.
func TestUpstreamBroadcastsMany(t *testing.T) {
	up := startUpstream(t, autopushtest.Config{})
	const devices, each = 3, 60
	for i := range devices * each {
		up.SetBroadcast(fmt.Sprintf("id-%03d", i), fmt.Sprintf("v%d", i))
	}
	n := startNode(t, node.Config{Upstream: up.URL(), UpstreamBackoffMin: 50 * time.Millisecond})
	var devs []*pushclient.Client
	for d := range devices {
		want := map[string]string{}
		for i := d * each; i < (d+1)*each; i++ {
			want[fmt.Sprintf("id-%03d", i)] = "old"
		}
		dev := dial(t, n.DeviceURL())
		if _, err := dev.Hello("", pushclient.HelloOptions{Broadcasts: want}); err != nil {
			t.Fatal(err)
		}
		devs = append(devs, dev)
	}
	for d, dev := range devs {
		got := map[string]any{}
		for len(got) < each {
			for id, v := range nextBroadcast(t, dev) {
				got[id] = v
			}
		}
		for i := d * each; i < (d+1)*each; i++ {
			if id := fmt.Sprintf("id-%03d", i); got[id] != fmt.Sprintf("v%d", i) {
				t.Errorf("device %d: %s = %v", d, id, got[id])
			}
		}
	}
	if got := n.Metrics().Value(`pushrelay_broadcast_changes_total{source="upstream"}`); got != devices*each {
		t.Errorf("changes from the upstream = %v, want %d", got, devices*each)
	}
}
