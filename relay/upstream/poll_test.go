package upstream_test

import (
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/node"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/upstream/autopushtest"
)

// metric reads one series of n's registry.
func metric(n *node.Node, series string) float64 { return n.Metrics().Value(series) }

// More devices than upstream_sessions: the first (connected here) is
// held and gets a post at once; the second is polled, and a backlog of
// 35 stored upstream while it was away is drained by a poll within the
// interval (the upstream ends with nothing stored for it), each message
// acked only once the edge's store held it, then delivered when the
// device comes back.
func TestPolledDevices(t *testing.T) {
	var (
		mu      sync.Mutex
		st      *store.Store
		devUAID push.UAID
		early   []string // versions acked before the store held them
		acked   int
	)
	up := startUpstream(t, autopushtest.Config{OnAck: func(uaid, version string) {
		mu.Lock()
		defer mu.Unlock()
		if st == nil || devUAID == (push.UAID{}) {
			return
		}
		id, _, _ := st.UpstreamID(devUAID)
		if uaid != id.Upstream.String() {
			return
		}
		acked++
		ms, err := st.Messages(devUAID, 0, 100)
		if err != nil || len(ms) < acked {
			early = append(early, version)
		}
	}})
	const interval = 500 * time.Millisecond
	n := startNode(t, node.Config{Upstream: up.URL(), UpstreamBackoffMin: 50 * time.Millisecond,
		UpstreamSessions: 1, UpstreamPollInterval: interval})
	mu.Lock()
	st = n.Store()
	mu.Unlock()

	dev1, endpoint1, up1 := setupRelayed(t, up, n)
	dev2, endpoint2, up2 := setupRelayed(t, up, n)
	waitFor(t, "one held, one polled", func() bool {
		return up.Open(up1) && metric(n, "pushrelay_upstream_polled") == 1
	})
	// Not up.Open(up2): a poll of the second device is open for a moment
	// every interval.
	if got := metric(n, "pushrelay_upstream_sessions_open"); got != 1 {
		t.Fatalf("%v held sessions open, want 1 (the second device is polled)", got)
	}
	// The held one: straight through.
	start := time.Now()
	post(t, endpoint1, []byte("held"))
	if got := receive(t, dev1, 1); got[0] != "held" {
		t.Errorf("held device got %q", got)
	}
	t.Logf("held device: post to receipt %v", time.Since(start))

	u2, _ := push.ParseUAID(dev2.UAID)
	dev2.Close()
	helloed, _, _ := n.Store().UpstreamID(u2)
	mu.Lock()
	devUAID = u2
	mu.Unlock()
	for i := range 35 {
		post(t, endpoint2, fmt.Appendf(nil, "m%02d", i))
	}
	start = time.Now()
	waitFor(t, "the backlog drained upstream", func() bool { return up.Pending(up2) == 0 })
	if d := time.Since(start); d > interval+interval/10+2*time.Second {
		t.Errorf("backlog drained after %v, interval %v", d, interval)
	}
	ms, err := n.Store().Messages(u2, 0, 100)
	if err != nil || len(ms) != 35 {
		// Failed once in CI under load (stored 0): say what the upstream
		// saw, to tell a loss (acked, not stored) from the upstream
		// forgetting the UAID.
		mu.Lock()
		t.Errorf("acks seen for the device: %d, of them before the edge held the message: %q", acked, early)
		mu.Unlock()
		t.Fatalf("edge stored %d of 35 (%v); upstream stats %+v", len(ms), err, up.Stats())
	}
	mu.Lock()
	if len(early) > 0 {
		t.Errorf("acked before the commit: %q", early)
	}
	mu.Unlock()
	if again, _, _ := n.Store().UpstreamID(u2); !again.Helloed.After(helloed.Helloed) {
		t.Errorf("a poll's hello not recorded: %v, before %v", again.Helloed, helloed.Helloed)
	}
	waitFor(t, "the poll counted", func() bool {
		return metric(n, `pushrelay_upstream_polls_total{result="drained"}`) >= 1
	})
	if r := metric(n, "pushrelay_upstream_poll_rounds_total"); r < 2 {
		t.Errorf("%v poll rounds, want a drain and a confirm at least", r)
	}
	if s := up.Stats(); s.Resets != 0 {
		t.Errorf("upstream reset %d UAIDs", s.Resets)
	}

	dev2 = dial(t, n.DeviceURL())
	if _, err := dev2.Hello(u2.String(), pushclient.HelloOptions{}); err != nil {
		t.Fatal(err)
	}
	// All 35, each once. Not in posting order: a post made while a poll
	// is connected goes to it at once (autopush sends directly to a
	// connected client), ahead of the stored ones the next batches bring.
	got := receive(t, dev2, 35)
	sorted := slices.Sorted(slices.Values(got))
	for i, g := range sorted {
		if g != fmt.Sprintf("m%02d", i) {
			t.Fatalf("device got %q", got)
		}
	}
	expectNothing(t, dev2, 200*time.Millisecond)
}

// A polled device that connects here is held from then on, in place of
// the least recently active held device that is not connected here
// (polled from then on); while every held device is connected, a
// device that connects stays polled.
func TestPromotionOnConnect(t *testing.T) {
	up := startUpstream(t, autopushtest.Config{})
	n := startNode(t, node.Config{Upstream: up.URL(), UpstreamBackoffMin: 50 * time.Millisecond,
		UpstreamSessions: 1, UpstreamPollInterval: time.Hour})
	dev1, _, up1 := setupRelayed(t, up, n)
	waitFor(t, "the first held", func() bool { return up.Open(up1) })
	u1 := dev1.UAID
	dev1.Close()
	// The second registers (it is connected here): the first, gone,
	// makes room.
	dev2, endpoint2, up2 := setupRelayed(t, up, n)
	waitFor(t, "the second held, the first polled", func() bool {
		return up.Open(up2) && !up.Open(up1) && metric(n, "pushrelay_upstream_polled") == 1
	})
	if d := metric(n, "pushrelay_upstream_demotions_total"); d != 1 {
		t.Errorf("%v demotions, want 1", d)
	}
	// The first comes back while the second is connected: stays polled.
	dev1 = dial(t, n.DeviceURL())
	if _, err := dev1.Hello(u1, pushclient.HelloOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if up.Open(up1) || !up.Open(up2) {
		t.Fatal("a held device connected here was evicted")
	}
	// The second leaves; the first reconnects and is held.
	dev2.Close()
	dev1.Close()
	dev1 = dial(t, n.DeviceURL())
	if _, err := dev1.Hello(u1, pushclient.HelloOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first held again", func() bool { return up.Open(up1) && !up.Open(up2) })
	post(t, endpoint2, []byte("for the polled one"))
	if p := up.Pending(up2); p != 1 {
		t.Errorf("upstream holds %d for the polled device, want 1 (polled hourly)", p)
	}
}

// A poll that fails (the upstream is down) is counted and retried after
// a backoff that grows.
func TestPollRetried(t *testing.T) {
	up := startUpstream(t, autopushtest.Config{})
	n := startNode(t, node.Config{Upstream: up.URL(), UpstreamBackoffMin: 50 * time.Millisecond,
		UpstreamSessions: 1, UpstreamPollInterval: 200 * time.Millisecond})
	dev1, _, _ := setupRelayed(t, up, n)
	setupRelayed(t, up, n)
	_ = dev1
	waitFor(t, "a good poll", func() bool {
		return metric(n, `pushrelay_upstream_polls_total{result="empty"}`) >= 1
	})
	up.Close()
	start := time.Now()
	waitFor(t, "three failed polls", func() bool {
		return metric(n, `pushrelay_upstream_polls_total{result="error"}`) >= 3
	})
	// 25-50 ms, 50-100 ms, then 100-200 ms: the third after 175 ms at
	// least (the first comes within one interval).
	if d := time.Since(start); d < 175*time.Millisecond {
		t.Errorf("three failed polls within %v: no backoff", d)
	}
}

// The confirm relies on the upstream answering a {} sent right after the
// hello only after the hello's first stored batch, and a {} after an ack
// only after the next batch that ack released. autopushtest models
// autopush so; a standalone pushrelay must answer the same way.
func TestPingAnsweredAfterStoredBatch(t *testing.T) {
	up := startUpstream(t, autopushtest.Config{})
	core := startNode(t, node.Config{})
	for _, tc := range []struct {
		name, url string
		batch     int // the most the upstream sends before the next ack
	}{
		{"autopushtest", up.URL(), 10},
		{"pushrelay", core.DeviceURL(), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, tc.url)
			if _, err := c.Hello("", pushclient.HelloOptions{}); err != nil {
				t.Fatal(err)
			}
			r, err := c.Register(pushproto.NewChannelID(), "")
			if err != nil || r.Status != 200 {
				t.Fatalf("register %+v %v", r, err)
			}
			uaid := c.UAID
			c.Close()
			for range 25 {
				postBare(t, r.PushEndpoint)
			}
			// Each round: hello, {} at once: the notifications before
			// its answer are stored ones. The first 20 rounds ack none
			// (each checks the answer waits for the stored ones); then
			// each acks them, and a new connection follows.
			total, distinct := 0, map[string]bool{}
			for round := 0; ; round++ {
				if round == 30 {
					t.Fatalf("not drained in 30 rounds (%d read)", total)
				}
				c := dial(t, tc.url)
				if _, err := c.Hello(uaid, pushclient.HelloOptions{}); err != nil {
					t.Fatal(err)
				}
				if err := c.Send(pushproto.PingReply); err != nil {
					t.Fatal(err)
				}
				var got []pushproto.ServerFrame
				for {
					f, err := c.Read(time.Now().Add(5 * time.Second))
					if err != nil {
						t.Fatalf("round %d: %v", round, err)
					}
					if f.MessageType == pushproto.TypePing {
						break
					}
					if f.MessageType == pushproto.TypeNotification {
						got = append(got, f)
					}
				}
				if round < 20 {
					if len(got) == 0 {
						t.Fatalf("round %d: the {} after the hello answered before the stored messages", round)
					}
					c.Close()
					continue
				}
				if len(got) == 0 {
					break
				}
				if tc.batch > 0 && len(got) > tc.batch {
					t.Errorf("round %d: %d before the {} answer, want at most a batch of %d", round, len(got), tc.batch)
				}
				total += len(got)
				for _, f := range got {
					distinct[f.Version] = true
				}
				if err := c.Ack(got...); err != nil {
					t.Fatal(err)
				}
				// A second {} on the connection is refused (45 s).
				c.Close()
			}
			// A new connection's hello may be read before the old one's
			// last ack was (autopush), or pushrelay deletes acked
			// messages a moment after: some come again (duplicates,
			// which the link's origin keys drop).
			if len(distinct) != 25 {
				t.Errorf("read %d (%d distinct) of 25 before the answers", total, len(distinct))
			}
		})
	}
}

// postBare posts without a body (a standalone pushrelay checks an
// aes128gcm body's header), expecting 201.
func postBare(t *testing.T, endpoint string) {
	t.Helper()
	req, _ := http.NewRequest("POST", endpoint, nil)
	req.Header.Set("TTL", "600")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("post: %s", resp.Status)
	}
}

// An edge whose upstream is a standalone pushrelay (a real hub) polls it
// as it polls autopush: a backlog of 35 kept by the core for a polled
// device is drained into the edge, and the core keeps none of it.
func TestPolledFromPushrelay(t *testing.T) {
	core := startNode(t, node.Config{})
	edge := startNode(t, node.Config{Upstream: core.DeviceURL(), UpstreamBackoffMin: 50 * time.Millisecond,
		UpstreamSessions: 1, UpstreamPollInterval: 300 * time.Millisecond})
	helloRegister := func() (*pushclient.Client, string) {
		dev := helloDevice(t, edge)
		r, err := dev.Register(pushproto.NewChannelID(), "")
		if err != nil || r.Status != 200 {
			t.Fatalf("register: %+v %v", r, err)
		}
		return dev, r.PushEndpoint
	}
	helloRegister() // held, and stays connected
	dev, endpoint := helloRegister()
	waitFor(t, "one polled", func() bool { return metric(edge, "pushrelay_upstream_polled") == 1 })
	u, _ := push.ParseUAID(dev.UAID)
	id, _, _ := edge.Store().UpstreamID(u)
	dev.Close()
	for range 35 {
		postBare(t, endpoint)
	}
	waitFor(t, "the backlog in the edge and gone from the core", func() bool {
		ms, _ := edge.Store().Messages(u, 0, 100)
		left, _ := core.Store().Messages(id.Upstream, 0, 100)
		return len(ms) == 35 && len(left) == 0
	})
	waitFor(t, "the poll counted", func() bool {
		return metric(edge, `pushrelay_upstream_polls_total{result="drained"}`) >= 1
	})
	if e := metric(edge, `pushrelay_upstream_polls_total{result="error"}`); e != 0 {
		t.Errorf("%v polls failed", e)
	}
	dev = dial(t, edge.DeviceURL())
	if _, err := dev.Hello(u.String(), pushclient.HelloOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range 35 {
		f, err := dev.Next(time.Now().Add(5 * time.Second))
		if err != nil {
			t.Fatalf("after %d: %v", i, err)
		}
		dev.Ack(f)
	}
	expectNothing(t, dev, 200*time.Millisecond)
}
