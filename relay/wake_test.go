package relay_test

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushproto"
)

// recWaker records what the hub asks of the wake subsystem.
type recWaker struct {
	mu        sync.Mutex
	status    int
	fail      error
	hellos    int
	wakes     []wakeCall
	connected []push.UAID
}

type wakeCall struct {
	u     push.UAID
	until time.Time
}

func (w *recWaker) HelloWake(_ context.Context, u push.UAID, h pushproto.Hello, _ netip.Addr) (pushproto.HelloReply, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.hellos++
	if w.fail != nil {
		return pushproto.HelloReply{}, w.fail
	}
	return pushproto.HelloReply{Status: w.status, WakeKey: "key-" + h.Wake.IP, STUNAddr: "127.0.0.1:3478", WakeRefresh: 30}, nil
}

func (w *recWaker) Wake(u push.UAID, until time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.wakes = append(w.wakes, wakeCall{u, until})
}

func (w *recWaker) Connected(u push.UAID) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.connected = append(w.connected, u)
}

func (w *recWaker) calls() ([]wakeCall, []push.UAID, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]wakeCall(nil), w.wakes...), append([]push.UAID(nil), w.connected...), w.hellos
}

func wakeHarness(t *testing.T, notify bool, w *recWaker) *harness {
	return newHarnessMode(t, notify, func(c *relay.Config) {
		c.Waker = w
		c.WakeIdleClose = 300 * time.Millisecond
	})
}

// wakeHello says hello with a wake address and returns the reply.
func (d *device) wakeHello(uaid string) pushproto.ServerFrame {
	d.t.Helper()
	m := map[string]any{"messageType": "hello", "use_webpush": true,
		"wakeup_hostport": map[string]any{"ip": "10.1.2.3", "port": 2442}}
	if uaid != "" {
		m["uaid"] = uaid
	}
	d.send(m)
	f := d.expect(pushproto.TypeHello)
	d.uaid = f.UAID
	return f
}

// A device accepted for wake gets 201 with the wake fields and is closed
// with 4774 once idle; every hello tells the waker the device is back.
func TestWakeAcceptedSessionSleeps(t *testing.T) { bothModes(t, testWakeAcceptedSessionSleeps) }

func testWakeAcceptedSessionSleeps(t *testing.T, notify bool) {
	w := &recWaker{status: pushproto.StatusWake}
	h := wakeHarness(t, notify, w)
	d := h.connect()
	f := d.wakeHello("")
	if f.Status != pushproto.StatusWake || f.WakeKey != "key-10.1.2.3" || f.STUN != "127.0.0.1:3478" || f.WakeRefresh != 30 {
		t.Fatalf("hello reply %+v", f)
	}
	start := time.Now()
	code, reason := d.closedWith(5 * time.Second)
	if code != pushproto.CloseWake || reason != "UDP wake" {
		t.Fatalf("closed with %d %q, want 4774", code, reason)
	}
	if el := time.Since(start); el < 250*time.Millisecond {
		t.Errorf("closed after %s, before the idle close", el)
	}
	// A plain hello is not asked about waking, and stays open.
	plain := h.hello("")
	plain.expectNone(700 * time.Millisecond)
	if plain.c.isClosed() {
		t.Error("a device that did not ask for wake was closed")
	}
	_, connected, hellos := w.calls()
	if hellos != 1 || len(connected) != 2 {
		t.Errorf("HelloWake %d times, Connected %d times; want 1 and 2", hellos, len(connected))
	}
}

// A waker that cannot record the address leaves the device on its
// WebSocket: 200, no wake fields, no 4774.
func TestWakeHelloFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := &recWaker{status: pushproto.StatusWake, fail: errors.New("disk full")}
		h := wakeHarness(t, true, w)
		d := h.connect()
		if f := d.wakeHello(""); f.Status != pushproto.StatusOK || f.WakeKey != "" {
			t.Fatalf("hello reply %+v", f)
		}
		d.expectNone(700 * time.Millisecond)
		if d.c.isClosed() {
			t.Error("closed although the waker failed")
		}
	})
}

// Push asks for a wake only for an offline device and a message of urgency
// normal or high, with the message's expiry.
func TestPushWakesOfflineDevice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := &recWaker{status: pushproto.StatusOK}
		h := wakeHarness(t, true, w)
		d := h.hello("")
		s := d.subscribe()
		h.mustPush(s, time.Hour, "online")
		d.ack(d.expect(pushproto.TypeNotification))
		if wakes, _, _ := w.calls(); len(wakes) != 0 {
			t.Fatalf("woke an online device: %v", wakes)
		}
		d.c.hangUp()
		waitFor(t, "session gone", func() bool { return h.hub.Connected() == 0 })
		for _, u := range []push.Urgency{push.UrgencyVeryLow, push.UrgencyLow} {
			if _, err := h.hub.Push(context.Background(), push.Message{UAID: push.UAID(s.ep.UAID), Channel: push.ChannelID(s.ep.Channel), TTL: time.Hour, Urgency: u}); err != nil {
				t.Fatal(err)
			}
		}
		if wakes, _, _ := w.calls(); len(wakes) != 0 {
			t.Fatalf("low urgency woke: %v", wakes)
		}
		before := time.Now()
		for _, u := range []push.Urgency{push.UrgencyNormal, push.UrgencyHigh} {
			if _, err := h.hub.Push(context.Background(), push.Message{UAID: push.UAID(s.ep.UAID), Channel: push.ChannelID(s.ep.Channel), TTL: time.Hour, Urgency: u}); err != nil {
				t.Fatal(err)
			}
		}
		wakes, _, _ := w.calls()
		if len(wakes) != 2 {
			t.Fatalf("wakes %v, want 2", wakes)
		}
		for _, c := range wakes {
			if c.u.String() != d.uaid || c.until.Before(before.Add(time.Hour-time.Second)) {
				t.Errorf("wake %v, want %s until about an hour from now", c, d.uaid)
			}
		}
	})
}

// A wake session that ends with a notification unacked asks for a wake
// (the messages are looked up); one that acked everything does not.
func TestWakeSessionEndsUnacked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := &recWaker{status: pushproto.StatusWake}
		h := wakeHarness(t, true, w)
		d := h.connect()
		d.wakeHello("")
		s := d.subscribe()
		h.mustPush(s, time.Hour, "acked")
		d.ack(d.expect(pushproto.TypeNotification))
		if code, _ := d.closedWith(5 * time.Second); code != pushproto.CloseWake {
			t.Fatalf("close %d", code)
		}
		waitFor(t, "session gone", func() bool { return h.hub.Connected() == 0 })
		if wakes, _, _ := w.calls(); len(wakes) != 0 {
			t.Fatalf("woke after everything was acked: %v", wakes)
		}

		d2 := h.connect()
		d2.wakeHello(d.uaid)
		h.mustPush(s, time.Hour, "not acked")
		d2.expect(pushproto.TypeNotification)
		if code, _ := d2.closedWith(5 * time.Second); code != pushproto.CloseWake {
			t.Fatalf("close %d", code)
		}
		waitFor(t, "a wake for the unacked message", func() bool {
			wakes, _, _ := w.calls()
			return len(wakes) == 1 && wakes[0].u.String() == d.uaid && wakes[0].until.IsZero()
		})
	})
}

// In a site (SiteWakes) Ingest does not ask the waker: every member
// decides from its own commit feed (relay/site). Accepting and
// EachSession report the sessions past hello the site asks about.
func TestSiteWakesLeaveWakingToTheSite(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := &recWaker{status: pushproto.StatusOK}
		h := newHarnessMode(t, true, func(c *relay.Config) {
			c.Waker = w
			c.SiteWakes = true
		})
		d := h.hello("")
		s := d.subscribe()
		u := push.UAID(s.ep.UAID)
		var seen []push.UAID
		h.hub.EachSession(func(x push.UAID) { seen = append(seen, x) })
		if !h.hub.Accepting(u) || len(seen) != 1 || seen[0] != u {
			t.Fatalf("Accepting %v, EachSession %v; want the device's session", h.hub.Accepting(u), seen)
		}
		d.c.hangUp()
		waitFor(t, "session gone", func() bool { return h.hub.Connected() == 0 })
		if h.hub.Accepting(u) {
			t.Fatal("Accepting after the session ended")
		}
		if _, err := h.hub.Push(context.Background(), push.Message{UAID: u, Channel: push.ChannelID(s.ep.Channel), TTL: time.Hour, Urgency: push.UrgencyHigh}); err != nil {
			t.Fatal(err)
		}
		if wakes, _, _ := w.calls(); len(wakes) != 0 {
			t.Fatalf("Ingest asked the waker in a site: %v", wakes)
		}
	})
}
