package node

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	pushid "github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/store"
)

// A device the core forgets (its upstream reset the UAID: the core's hub
// ResetDevice, as relay/upstream calls it) is forgotten on the edge that
// serves it too: its session there is closed 1000 "UAID reset", its next
// hello gets a new UAID, and the core's view of the edge's pairs stays
// equal to the edge's own (no resync at the next connect would bring the
// dead channel back). An edge that was away hears it at its next connect.
// A hello at the core with the UAID of a device the edge serves is
// answered with a new UAID.
func TestRelayLinkForget(t *testing.T) {
	site := newLinkSite(t)
	core := start(t, parentConfig(t, site, ""))
	ecfg := childConfig(t, site, core.Node, "")
	edge := start(t, ecfg)
	ctx := context.Background()

	a := subscribe(t, edge.Node, "")
	b := subscribe(t, edge.Node, "")
	postTo(t, a, "before")
	if got := receive(t, a); got != "before" {
		t.Fatalf("got %q", got)
	}
	ua, _ := pushid.ParseUAID(a.uaid)
	ub, _ := pushid.ParseUAID(b.uaid)

	// Served by the edge: a hello at the core gets a new UAID.
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	direct, err := pushclient.Dial(hctx, core.DeviceURL())
	if err != nil {
		t.Fatal(err)
	}
	if h, err := direct.Hello(a.uaid, pushclient.HelloOptions{}); err != nil || h.UAID == a.uaid {
		t.Fatalf("hello at the core with the edge's UAID: %v %+v", err, h)
	}
	direct.Abort()
	if got := core.Metrics().Value(`pushrelay_device_hellos_total{result="elsewhere"}`); got != 1 {
		t.Errorf("hellos elsewhere = %v", got)
	}

	// Connected: the edge forgets a at once.
	if _, err := core.Hub().ResetDevice(ctx, ua); err != nil {
		t.Fatal(err)
	}
	_, err = a.c.Next(time.Now().Add(10 * time.Second))
	var ce *pushclient.CloseError
	if !errors.As(err, &ce) || ce.Code != pushproto.CloseNormal || ce.Reason != "UAID reset" {
		t.Fatalf("edge session of the forgotten device ended with %v, want 1000 UAID reset", err)
	}
	eventually(t, "the edge answered the forget", func() bool {
		fs, err := core.Store().LinkForgets("edge-1", 10)
		return err == nil && len(fs) == 0 &&
			core.Metrics().Value(`pushrelay_link_children_forgets_total{result="answered"}`) == 1
	})
	if _, ok, _ := edge.Store().Device(ua); ok {
		t.Fatal("the edge still has the forgotten device")
	}
	c2, err := pushclient.Dial(hctx, edge.DeviceURL())
	if err != nil {
		t.Fatal(err)
	}
	if h, err := c2.Hello(a.uaid, pushclient.HelloOptions{}); err != nil || h.UAID == a.uaid {
		t.Fatalf("hello at the edge after the forget: %v %+v", err, h)
	}
	c2.Abort()

	// Away: the edge hears it at its next connect, and the digests agree
	// (no resync).
	edge.stop(t)
	if _, err := core.Hub().ResetDevice(ctx, ub); err != nil {
		t.Fatal(err)
	}
	if fs, _ := core.Store().LinkForgets("edge-1", 10); len(fs) != 1 || fs[0].UAID != ub {
		t.Fatalf("kept forgets %v", fs)
	}
	edge = start(t, ecfg)
	eventually(t, "the edge forgot the device it was away for", func() bool {
		_, ok, err := edge.Store().Device(ub)
		fs, _ := core.Store().LinkForgets("edge-1", 10)
		return err == nil && !ok && len(fs) == 0
	})
	if got := edge.Metrics().Value(`pushrelay_link_up_forgets_total{result="forgotten"}`); got != 1 {
		t.Errorf("edge forgets after its restart = %v", got)
	}
	for _, n := range []*running{core, edge} {
		if got := n.Metrics().Value(`pushrelay_link_up_digest_mismatches_total`) + n.Metrics().Value(`pushrelay_link_children_digest_mismatches_total`); got != 0 {
			t.Errorf("digest mismatches: %v", got)
		}
	}

	// The edge forgot a device on its own before it heard the core did
	// (an answer lost with the link): the views differ, the resync
	// removes the pair only the core's view has, the FORGET finds
	// nothing, and the next connect agrees.
	c := subscribe(t, edge.Node, "")
	uc, _ := pushid.ParseUAID(c.uaid)
	edge.stop(t)
	if _, err := core.Hub().ResetDevice(ctx, uc); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(store.Options{Path: filepath.Join(ecfg.DataDir, "pushrelay.db")})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteDevice(ctx, uc); err != nil {
		t.Fatal(err)
	}
	st.Close()
	edge = start(t, ecfg)
	eventually(t, "the forget answered after the resync", func() bool {
		fs, _ := core.Store().LinkForgets("edge-1", 10)
		return len(fs) == 0 && edge.Metrics().Value(`pushrelay_link_up_forgets_total{result="unknown"}`) == 1 &&
			edge.Metrics().Value(`pushrelay_link_up_resyncs_total`) == 1
	})
	edge.stop(t)
	edge = start(t, ecfg)
	eventually(t, "the edge connected again", func() bool {
		return core.Metrics().Value(`pushrelay_link_children_connected`) == 1
	})
	if got := edge.Metrics().Value(`pushrelay_link_up_digest_mismatches_total`); got != 0 {
		t.Errorf("digest mismatch after the resync: %v", got)
	}
	edge.stop(t)
	core.stop(t)
}
