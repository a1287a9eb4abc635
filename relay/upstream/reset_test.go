package upstream_test

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/node"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/upstream"
	"github.com/pushrelay/pushrelay/relay/upstream/autopushtest"
)

// fakeClock is an upstream's clock a test moves forward.
type fakeClock struct{ skew atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Now().Add(time.Duration(c.skew.Load())) }
func (c *fakeClock) advance(d time.Duration) { c.skew.Add(int64(d)) }

const sixtyOneDays = 61 * 24 * time.Hour

// checkForgotten fails unless the store holds nothing of device u.
func checkForgotten(t *testing.T, st *store.Store, u push.UAID) {
	t.Helper()
	if _, ok, err := st.Device(u); ok || err != nil {
		t.Errorf("device %s still stored (%v)", u, err)
	}
	if _, ok, err := st.UpstreamID(u); ok || err != nil {
		t.Errorf("device %s still has an upstream identity (%v)", u, err)
	}
	if cs, err := st.Channels(u); len(cs) != 0 || err != nil {
		t.Errorf("device %s still has channels %v (%v)", u, cs, err)
	}
	if ms, err := st.Messages(u, 0, 0); len(ms) != 0 || err != nil {
		t.Errorf("device %s still has %d messages (%v)", u, len(ms), err)
	}
}

// registerAndReceive registers a channel for dev and checks that a post
// to its endpoint reaches dev; it returns the endpoint.
func registerAndReceive(t *testing.T, dev *pushclient.Client, text string) string {
	t.Helper()
	r, err := dev.Register(pushproto.NewChannelID(), "")
	if err != nil || r.Status != 200 {
		t.Fatalf("register: %+v %v", r, err)
	}
	post(t, r.PushEndpoint, []byte(text))
	if got := receive(t, dev, 1); got[0] != text {
		t.Errorf("device got %q, want %q", got, text)
	}
	return r.PushEndpoint
}

// An upstream that forgot a device's UAID (60 days without a hello: here
// the edge was down and the upstream's clock moved on) answers the held
// session's hello with another UAID. The edge resets the device: its
// channels, identity and messages go, its next hello with the old UAID
// gets a new UAID, and its new register makes a new upstream identity
// whose endpoint works.
func TestResetAfterExpiry(t *testing.T) {
	var clock fakeClock
	up := startUpstream(t, autopushtest.Config{Now: clock.now})
	cfg := node.Config{Upstream: up.URL(), UpstreamBackoffMin: 50 * time.Millisecond, DataDir: t.TempDir()}
	n := startNode(t, cfg)
	dev, endpoint, upUAID := setupRelayed(t, up, n)
	old := dev.UAID
	oldU, _ := push.ParseUAID(old)
	waitFor(t, "the held session", func() bool { return up.Open(upUAID) })
	dev.Close()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the session to end", func() bool { return !up.Open(upUAID) })
	clock.advance(sixtyOneDays)
	if s := postStatus(t, endpoint); s != 410 {
		t.Fatalf("the forgotten endpoint answered %d, want 410", s)
	}

	n = startNode(t, cfg)
	waitFor(t, "the reset", func() bool {
		return n.Metrics().Value(`pushrelay_upstream_resets_total{via="held"}`) == 1
	})
	checkForgotten(t, n.Store(), oldU)
	if got := n.Metrics().Value("pushrelay_upstream_sessions_open"); got != 0 {
		t.Errorf("%v sessions open after the reset", got)
	}

	dev = dial(t, n.DeviceURL())
	if _, err := dev.Hello(old, pushclient.HelloOptions{}); err != nil {
		t.Fatal(err)
	}
	if dev.UAID == old {
		t.Fatal("the reset device kept its UAID")
	}
	if got := n.Metrics().Value(`pushrelay_device_hellos_total{result="new"}`); got != 1 {
		t.Errorf("hellos new = %v, want 1", got)
	}
	ep := registerAndReceive(t, dev, "after the reset")
	if ep == endpoint {
		t.Error("the new register got the old endpoint")
	}
	u, _ := push.ParseUAID(dev.UAID)
	id, ok, err := n.Store().UpstreamID(u)
	if !ok || err != nil || id.Upstream.String() == upUAID {
		t.Errorf("new identity %+v %v %v (old upstream UAID %s)", id, ok, err, upUAID)
	}
}

// autopush deletes a UAID whose session read more than msg_limit stored
// messages without emptying its storage, and closes the session 1000. The
// held session's next hello gets another UAID: the edge resets the device
// while it is connected (closed 1000 "UAID reset"), dropping the stored
// messages it had relayed (counted), and the device reconnects with a new
// UAID.
func TestResetAtMsgLimit(t *testing.T) {
	up := startUpstream(t, autopushtest.Config{MsgLimit: 15})
	// The backoff leaves time to fill the upstream's storage while the
	// held session is away.
	n := startNode(t, node.Config{Upstream: up.URL(), UpstreamBackoffMin: 2 * time.Second})
	dev, endpoint, upUAID := setupRelayed(t, up, n)
	old := dev.UAID
	oldU, _ := push.ParseUAID(old)
	waitFor(t, "the held session", func() bool { return up.Open(upUAID) })
	// A ghost's hello ends the held session (autopush ghosts the older
	// connection); what it is sent and does not ack is stored when it
	// goes.
	ghost := dial(t, up.URL())
	if _, err := ghost.Hello(upUAID, pushclient.HelloOptions{}); err != nil {
		t.Fatal(err)
	}
	for range 30 {
		post(t, endpoint, []byte("backlog"))
	}
	ghost.Abort()
	waitFor(t, "the backlog stored upstream", func() bool { return up.Pending(upUAID) == 30 })

	// The held session reconnects, is sent 10, then reset; its next
	// hello gets a new UAID.
	f, err := dev.Next(time.Now().Add(10 * time.Second))
	for err == nil {
		f, err = dev.Next(time.Now().Add(10 * time.Second))
	}
	var ce *pushclient.CloseError
	if !errors.As(err, &ce) || ce.Code != pushproto.CloseNormal || ce.Reason != "UAID reset" {
		t.Fatalf("device session ended with %v (last frame %+v), want 1000 UAID reset", err, f)
	}
	if up.Stats().Resets != 1 {
		t.Errorf("upstream resets %d", up.Stats().Resets)
	}
	// Counted once the hub's reset returned, just after the close.
	waitFor(t, "the reset counted", func() bool {
		return n.Metrics().Value(`pushrelay_upstream_resets_total{via="held"}`) == 1
	})
	if got := n.Metrics().Value(`pushrelay_messages_dropped_total{reason="upstream_reset"}`); got != 10 {
		t.Errorf("messages dropped by the reset = %v, want 10", got)
	}
	checkForgotten(t, n.Store(), oldU)

	dev = dial(t, n.DeviceURL())
	if _, err := dev.Hello(old, pushclient.HelloOptions{}); err != nil {
		t.Fatal(err)
	}
	if dev.UAID == old {
		t.Fatal("the reset device kept its UAID")
	}
	registerAndReceive(t, dev, "after the reset")
}

// A register for a device whose session is not held (here: past
// MaxSessions) goes over a connection of its own; when its hello gets
// another UAID the device is reset here as from a held session, and the
// register fails (the hub answers it 500).
func TestResetOnRequest(t *testing.T) {
	var clock fakeClock
	up := startUpstream(t, autopushtest.Config{Now: clock.now})
	n := startNode(t, node.Config{})
	st := n.Store()
	link, err := upstream.New(upstream.Config{
		URL: up.URL(), Store: st, MaxSessions: 1, BackoffMin: 50 * time.Millisecond,
		Logger: testLogger(t, "link"), Metrics: n.Metrics(),
	})
	if err != nil {
		t.Fatal(err)
	}
	runLink(t, link, n.Hub())
	mint := func(u push.UAID) (push.ChannelID, error) { return mintFor(link, st, u) }
	held := helloDevice(t, n)
	heldU, _ := push.ParseUAID(held.UAID)
	if _, err := mint(heldU); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the held session", func() bool { _, open := link.Sessions(); return open == 1 })
	dev := helloDevice(t, n)
	u, _ := push.ParseUAID(dev.UAID)
	if _, err := mint(u); err != nil {
		t.Fatal(err)
	}
	if h, _ := link.Sessions(); h != 1 {
		t.Fatalf("%d sessions held, want 1", h)
	}
	// The register's own connection closes after its answer, not
	// before: the upstream counts a UAID connected until then, and
	// would not expire it (seen under qemu in CI).
	id, ok, err := st.UpstreamID(u)
	if err != nil || !ok {
		t.Fatalf("the second device's upstream identity: %v %v", ok, err)
	}
	waitFor(t, "the register's own connection closed", func() bool { return !up.Open(id.Upstream.String()) })
	// The unheld device's UAID expires upstream; the held one's does not
	// (it is connected).
	clock.advance(sixtyOneDays)
	if _, err := mint(u); err == nil {
		t.Fatal("a register for a forgotten UAID succeeded")
	}
	if got := n.Metrics().Value(`pushrelay_upstream_resets_total{via="request"}`); got != 1 {
		t.Errorf("resets via request = %v", got)
	}
	checkForgotten(t, st, u)
	_, err = dev.Next(time.Now().Add(5 * time.Second))
	var ce *pushclient.CloseError
	if !errors.As(err, &ce) || ce.Code != pushproto.CloseNormal || ce.Reason != "UAID reset" {
		t.Fatalf("device session ended with %v, want 1000 UAID reset", err)
	}
	if _, ok, _ := st.UpstreamID(heldU); !ok {
		t.Error("the held device lost its identity")
	}
	// A register the device sent just before its session closed does not
	// make the UAID it loses a new identity.
	if _, err := mint(u); err == nil {
		t.Error("a register for the UAID just reset succeeded")
	}
	checkForgotten(t, st, u)
}

// A polled device (past MaxSessions) whose UAID the upstream forgot meets
// the reset at its next poll's hello: it is reset here as from a held
// session, and is polled no more.
func TestResetOnPoll(t *testing.T) {
	var clock fakeClock
	up := startUpstream(t, autopushtest.Config{Now: clock.now})
	n := startNode(t, node.Config{})
	st := n.Store()
	link, err := upstream.New(upstream.Config{
		URL: up.URL(), Store: st, MaxSessions: 1, PollInterval: 300 * time.Millisecond,
		BackoffMin: 50 * time.Millisecond, Logger: testLogger(t, "link"), Metrics: n.Metrics(),
	})
	if err != nil {
		t.Fatal(err)
	}
	runLink(t, link, n.Hub())
	mint := func(u push.UAID) error { _, err := mintFor(link, st, u); return err }
	held := helloDevice(t, n)
	heldU, _ := push.ParseUAID(held.UAID)
	if err := mint(heldU); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the held session", func() bool { _, open := link.Sessions(); return open == 1 })
	dev := helloDevice(t, n)
	u, _ := push.ParseUAID(dev.UAID)
	if err := mint(u); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a poll of the device", func() bool {
		return n.Metrics().Value(`pushrelay_upstream_polls_total{result="empty"}`) >= 1
	})
	clock.advance(sixtyOneDays)
	waitFor(t, "the reset at a poll", func() bool {
		return n.Metrics().Value(`pushrelay_upstream_resets_total{via="poll"}`) == 1
	})
	checkForgotten(t, st, u)
	_, err = dev.Next(time.Now().Add(5 * time.Second))
	var ce *pushclient.CloseError
	if !errors.As(err, &ce) || ce.Code != pushproto.CloseNormal || ce.Reason != "UAID reset" {
		t.Fatalf("device session ended with %v, want 1000 UAID reset", err)
	}
	if got := n.Metrics().Value(`pushrelay_upstream_polls_total{result="reset"}`); got != 1 {
		t.Errorf("polls reset = %v, want 1", got)
	}
	// Forgotten: not polled again.
	polls := n.Metrics().Value(`pushrelay_upstream_poll_rounds_total`)
	time.Sleep(time.Second)
	if got := n.Metrics().Value(`pushrelay_upstream_poll_rounds_total`); got != polls {
		t.Errorf("poll rounds went on after the reset: %v → %v", polls, got)
	}
	if p, _ := link.Polled(); p != 0 {
		t.Errorf("%d devices polled after the reset, want 0", p)
	}
	if _, ok, _ := st.UpstreamID(heldU); !ok {
		t.Error("the held device lost its identity")
	}
}
