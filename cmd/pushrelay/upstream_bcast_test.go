package main

import (
	"testing"
	"time"
)

// Two built binaries: an edge relay whose upstream is a standalone
// pushrelay serving a broadcast. A device on the edge names the broadcast,
// which the edge does not serve yet: the edge asks the core and the
// device gets the core's version, then the core's change. The edge's
// broadcast connection leaves no device behind on the core.
func TestE2EUpstreamBroadcasts(t *testing.T) {
	tokenFile, token := writeAdminToken(t)
	core := startRelay(t, t.TempDir(), "--admin-token-file", tokenFile)
	const id = "remote-settings/monitor_changes"
	if code, v := adminCall(t, core, "PUT", "/broadcasts/"+id, token, `"1"`); code != 200 {
		t.Fatalf("PUT = %d %v", code, v)
	}
	edge := startRelay(t, t.TempDir(), "--upstream", core.Device, "--upstream-backoff", "100ms")

	dev, got := bcastHello(t, edge, "", map[string]string{id: `"0"`})
	if len(got) != 0 {
		t.Fatalf("hello answered %v, want nothing yet (the edge asks its upstream)", got)
	}
	nextBroadcastFrom(t, dev, id, `"1"`)
	if code, v := adminCall(t, core, "PUT", "/broadcasts/"+id, token, `"2"`); code != 200 {
		t.Fatalf("PUT = %d %v", code, v)
	}
	nextBroadcastFrom(t, dev, id, `"2"`)
	if v := edge.metric(`pushrelay_broadcast_changes_total{source="upstream"}`); v != 2 {
		t.Errorf("edge changes from the upstream = %v, want 2", v)
	}
	if v := core.metric(`pushrelay_store_devices`); v != 0 {
		t.Errorf("the core stored %v devices, want none", v)
	}
	edge.stop()
	core.stop()
}

// A site of three built binaries whose upstream is a standalone pushrelay
// serving a broadcast. A device on a member that does not hold the
// upstream names the broadcast, which no member serves yet: that member
// proposes the id, the holder asks the upstream, and the device gets the
// upstream's version through the site's log, then its change.
func TestE2ESiteUpstreamBroadcasts(t *testing.T) {
	tokenFile, token := writeAdminToken(t)
	core := startRelay(t, t.TempDir(), "--admin-token-file", tokenFile)
	defer core.stop()
	const id = "remote-settings/monitor_changes"
	if code, v := adminCall(t, core, "PUT", "/broadcasts/"+id, token, `"1"`); code != 200 {
		t.Fatalf("PUT = %d %v", code, v)
	}
	ps, _, _ := testSiteMembers(t, 3, "--upstream", core.Device, "--upstream-backoff", "50ms")
	deadline := time.Now().Add(20 * time.Second)
	h := holding(ps, -1)
	for ; h < 0; h = holding(ps, -1) {
		if time.Now().After(deadline) {
			t.Fatal("no member holds the upstream")
		}
		time.Sleep(50 * time.Millisecond)
	}
	other := ps[(h+1)%3]
	dev, got := bcastHello(t, other, "", map[string]string{id: `"0"`})
	if len(got) != 0 {
		t.Fatalf("hello answered %v, want nothing yet (the site asks its upstream)", got)
	}
	nextBroadcastFrom(t, dev, id, `"1"`)
	if code, v := adminCall(t, core, "PUT", "/broadcasts/"+id, token, `"2"`); code != 200 {
		t.Fatalf("PUT = %d %v", code, v)
	}
	nextBroadcastFrom(t, dev, id, `"2"`)
}
