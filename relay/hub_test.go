package relay_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/vapid"
)

// A device without a UAID, or with one the relay does not know, gets a new
// UAID; the new UAID is stored only at its first register; a device that
// comes back with a stored UAID (in either spelling) keeps it.
func TestHelloNewAndResumed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, nil)

		d := h.hello("")
		u, err := push.ParseUAID(d.uaid)
		if err != nil {
			t.Fatalf("new UAID %q: %v", d.uaid, err)
		}
		if _, ok, _ := h.st.Device(u); ok {
			t.Fatal("a UAID with no channel was stored at hello")
		}
		if st, _ := h.st.Stats(); st.Devices != 0 {
			t.Fatalf("devices = %d after hello alone", st.Devices)
		}
		if h.hub.Connected() != 1 {
			t.Fatalf("Connected = %d", h.hub.Connected())
		}

		// Until it registers, the UAID means nothing: coming back with it
		// gives another.
		d.c.hangUp()
		d.released(5 * time.Second)
		again := h.hello(d.uaid)
		if again.uaid == d.uaid {
			t.Fatal("an unregistered UAID was resumed")
		}
		unknown := h.hello("0123456789abcdef0123456789abcdef")
		if unknown.uaid == "0123456789abcdef0123456789abcdef" {
			t.Fatal("an unknown UAID was accepted")
		}
		garbage := h.hello("not-a-uaid")
		if garbage.uaid == "not-a-uaid" {
			t.Fatal("an invalid UAID was accepted")
		}

		again.subscribe()
		u, _ = push.ParseUAID(again.uaid)
		if _, ok, _ := h.st.Device(u); !ok {
			t.Fatal("UAID not stored at register")
		}
		again.c.hangUp()
		back := h.hello(again.uaid)
		if back.uaid != again.uaid {
			t.Fatalf("stored UAID not resumed: %s → %s", again.uaid, back.uaid)
		}
		// autopush-era devices may send it dashed and in upper case; the reply
		// is the canonical form.
		back.c.hangUp()
		x := strings.ToUpper(again.uaid)
		dashed := x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:]
		if d := h.hello(dashed); d.uaid != again.uaid {
			t.Fatalf("dashed UAID %s resumed as %s", dashed, d.uaid)
		}
	})
}

// Register gives a v1 endpoint without a key and a v2 endpoint bound to a
// valid P-256 key; a bad key is refused with 400 and the session goes on.
func TestRegisterEndpoints(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, func(c *relay.Config) { c.CheckKey = vapid.DecodePublicKey })
		d := h.hello("")
		u, _ := push.ParseUAID(d.uaid)

		ch1 := newChannelID()
		r := d.register(ch1, "")
		if r.Status != 200 || !strings.HasPrefix(r.PushEndpoint, publicURL+"/wpush/v1/") {
			t.Fatalf("keyless register: %+v", r)
		}
		ep := h.openEndpoint(r.PushEndpoint)
		if push.UAID(ep.UAID) != u || push.ChannelID(ep.Channel).String() != ch1 || ep.KeyHash != nil {
			t.Fatalf("v1 token carries %+v", ep)
		}
		// Registering again is idempotent: the same endpoint.
		if r2 := d.register(ch1, ""); r2.Status != 200 || r2.PushEndpoint != r.PushEndpoint {
			t.Fatalf("second register: %+v, want %s", r2, r.PushEndpoint)
		}

		priv, _ := vapid.GenerateKey()
		pub := vapid.NewSigner(priv).PublicKey()
		ch2 := newChannelID()
		r = d.register(ch2, ece.EncodeKey(pub))
		if r.Status != 200 || !strings.HasPrefix(r.PushEndpoint, publicURL+"/wpush/v2/") {
			t.Fatalf("keyed register: %+v", r)
		}
		ep = h.openEndpoint(r.PushEndpoint)
		if ep.KeyHash == nil || *ep.KeyHash != sha256.Sum256(pub) || push.ChannelID(ep.Channel).String() != ch2 {
			t.Fatalf("v2 token does not carry the key's hash: %+v", ep)
		}
		c, ok, err := h.st.Channel(u, push.ChannelID(ep.Channel))
		if err != nil || !ok || string(c.Key) != string(pub) {
			t.Fatalf("stored channel %+v %v %v", c, ok, err)
		}
		// The same channel with another key conflicts.
		other, _ := vapid.GenerateKey()
		if r := d.register(ch2, ece.EncodeKey(vapid.NewSigner(other).PublicKey())); r.Status != 409 || r.PushEndpoint != "" {
			t.Fatalf("register with a different key: %+v", r)
		}

		for _, bad := range []string{"not-a-key", ece.EncodeKey(pub[:64]), ece.EncodeKey(make([]byte, 65))} {
			ch := newChannelID()
			if r := d.register(ch, bad); r.Status != 400 || r.PushEndpoint != "" {
				t.Fatalf("register with key %q: %+v", bad, r)
			}
		}
		if st, _ := h.st.Stats(); st.Channels != 2 {
			t.Fatalf("channels = %d, want 2 (refused registers stored nothing)", st.Channels)
		}
		// The session is still good.
		d.subscribe()

		// A hub without a key checker refuses every key.
		h2 := newHarness(t, nil)
		d2 := h2.hello("")
		if r := d2.register(newChannelID(), ece.EncodeKey(pub)); r.Status != 400 {
			t.Fatalf("keyed register without CheckKey: %+v", r)
		}
	})
}

// A message pushed while the device is connected is delivered with its
// payload and content headers, and its version is a message id.
func TestPushWhileConnected(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, nil)
		d := h.hello("")
		s := d.subscribe()
		res, err := h.hub.Push(context.Background(), push.Message{
			UAID: push.UAID(s.ep.UAID), Channel: push.ChannelID(s.ep.Channel), TTL: time.Minute, Data: []byte("hello device"),
			Encoding: "aesgcm", Encryption: "salt=abc", CryptoKey: "dh=def",
		})
		if err != nil || !res.Stored || res.Delivered || res.ID == "" {
			t.Fatalf("Push = %+v, %v", res, err)
		}
		n := d.expect(pushproto.TypeNotification)
		if n.ChannelID != s.channel || payload(t, n) != "hello device" || n.Version != res.ID {
			t.Fatalf("notification %+v, want version %s", n, res.ID)
		}
		if n.Headers == nil || n.Headers.Encoding != "aesgcm" || n.Headers.Encryption != "salt=abc" || n.Headers.CryptoKey != "dh=def" {
			t.Fatalf("headers %+v", n.Headers)
		}
		// A message without data is a bare tickle.
		h.mustPush(s, time.Minute, "")
		if n := d.expect(pushproto.TypeNotification); n.Data != "" || n.Headers != nil {
			t.Fatalf("empty message arrived as %+v", n)
		}
	})
}

// Messages for an offline device are stored and arrive, in order, after
// its next hello; acked ones leave the store.
func TestOfflineDeliveredInOrder(t *testing.T) { bothModes(t, testOfflineDeliveredInOrder) }

func testOfflineDeliveredInOrder(t *testing.T, notify bool) {
	h := newHarnessMode(t, notify, nil)
	d := h.hello("")
	a, b := d.subscribe(), d.subscribe()
	d.c.hangUp()
	d.released(5 * time.Second)
	var want []string
	for i := range 6 {
		s := a
		if i%2 == 1 {
			s = b
		}
		text := fmt.Sprintf("m%d", i)
		if res := h.mustPush(s, time.Hour, text); !res.Stored {
			t.Fatalf("offline push not stored: %+v", res)
		}
		want = append(want, s.channel+"/"+text)
	}
	if w := h.waiting(); w != 6 {
		t.Fatalf("waiting = %d", w)
	}
	d2 := h.hello(d.uaid)
	var got []string
	for range 6 {
		n := d2.expect(pushproto.TypeNotification)
		got = append(got, n.ChannelID+"/"+payload(t, n))
		d2.ack(n)
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("delivered\n%v\nwant\n%v", got, want)
	}
	// What waited went out as one batch (one write where the adapter can).
	if n := d2.c.batches.Load(); n != 1 {
		t.Fatalf("6 waiting messages were written in %d batches, want 1", n)
	}
	waitFor(t, "acked messages deleted", func() bool { return h.waiting() == 0 })
	d2.expectNone(100 * time.Millisecond)
}

// With Window 3, a device with ten waiting messages has at most three
// unacked notifications at a time; each ack lets one more through.
func TestInflightWindow(t *testing.T) { bothModes(t, testInflightWindow) }

func testInflightWindow(t *testing.T, notify bool) {
	h := newHarnessMode(t, notify, func(c *relay.Config) { c.Window = 3 })
	d := h.hello("")
	s := d.subscribe()
	d.c.hangUp()
	for i := range 10 {
		h.mustPush(s, time.Hour, strconv.Itoa(i))
	}
	d2 := h.hello(d.uaid)
	var got []pushproto.ServerFrame
	for range 3 {
		got = append(got, d2.expect(pushproto.TypeNotification))
	}
	d2.expectNone(200 * time.Millisecond)

	d2.ack(got[0])
	got = append(got, d2.expect(pushproto.TypeNotification))
	d2.expectNone(200 * time.Millisecond)

	// Acking the rest in one frame opens the window for three more.
	d2.ack(got[1:4]...)
	for range 3 {
		got = append(got, d2.expect(pushproto.TypeNotification))
	}
	d2.expectNone(100 * time.Millisecond)
	d2.ack(got[4:]...)
	for range 3 {
		n := d2.expect(pushproto.TypeNotification)
		got = append(got, n)
		d2.ack(n)
	}
	for i, n := range got {
		if p := payload(t, n); p != strconv.Itoa(i) {
			t.Fatalf("notification %d carries %q", i, p)
		}
	}
	waitFor(t, "all acked messages deleted", func() bool { return h.waiting() == 0 })
	d2.expectNone(100 * time.Millisecond)
}

// An ack makes no worker come for its follow-ups: the flush that deletes
// the acked message and the pump that fills the room it makes in the
// window run on the burst's own goroutine once the burst is over. Queued,
// each woke a worker that mostly found the task gone, taken by the burst's
// worker done with the burst first. Only the burst itself wakes one (on
// the poller path; a parked reader has a goroutine of its own).
func TestAckWakesNoWorkerForFollowUps(t *testing.T) { bothModes(t, testAckWakesNoWorkerForFollowUps) }

func testAckWakesNoWorkerForFollowUps(t *testing.T, notify bool) {
	h := newHarnessMode(t, notify, func(c *relay.Config) { c.Window = 1 })
	d := h.hello("")
	s := d.subscribe()
	h.mustPush(s, time.Hour, "0")
	h.mustPush(s, time.Hour, "1")
	first := d.expect(pushproto.TypeNotification)
	synctest.Wait()
	before := relay.WorkersWoken(h.hub)
	d.ack(first) // room in the window: the pump sends the second
	if n := d.expect(pushproto.TypeNotification); payload(t, n) != "1" {
		t.Fatalf("after the ack: %+v, want the second message", n)
	}
	waitFor(t, "the acked message deleted", func() bool { return h.waiting() == 1 })
	synctest.Wait()
	want := uint64(0)
	if notify {
		want = 1 // the burst
	}
	if got := relay.WorkersWoken(h.hub) - before; got != want {
		t.Errorf("the ack woke %d workers, want %d", got, want)
	}
}

// Notifications a device received but did not ack come again, unchanged,
// on its next connection; acked ones do not.
func TestUnackedRedelivered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, nil)
		d := h.hello("")
		s := d.subscribe()
		var first []pushproto.ServerFrame
		for i := range 3 {
			h.mustPush(s, time.Hour, fmt.Sprintf("r%d", i))
			first = append(first, d.expect(pushproto.TypeNotification))
		}
		d.ack(first[0])
		waitFor(t, "the acked message deleted", func() bool { return h.waiting() == 2 })
		d.c.hangUp()
		d.released(5 * time.Second)

		d2 := h.hello(d.uaid)
		for _, want := range first[1:] {
			n := d2.expect(pushproto.TypeNotification)
			if n.Version != want.Version || n.Data != want.Data || n.ChannelID != want.ChannelID {
				t.Fatalf("redelivered %+v, want %+v", n, want)
			}
			d2.ack(n)
		}
		d2.expectNone(100 * time.Millisecond)
		waitFor(t, "acked messages deleted", func() bool { return h.waiting() == 0 })
		d2.c.hangUp()
		h.hello(d.uaid).expectNone(100 * time.Millisecond)
	})
}

// Acks from the wrong device, for the wrong channel, or with a version that
// is not a message id delete nothing.
func TestForeignAcksIgnored(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, nil)
		victim := h.hello("")
		vs := victim.subscribe()
		victim.c.hangUp()
		res := h.mustPush(vs, time.Hour, "private")

		attacker := h.hello("")
		as := attacker.subscribe()
		attacker.send(map[string]any{"messageType": "ack", "updates": []map[string]any{
			{"channelID": vs.channel, "version": res.ID, "code": 100},
			{"channelID": as.channel, "version": res.ID, "code": 100},
			{"channelID": as.channel, "version": "garbage", "code": 100},
		}})
		// The session survives bad acks and still answers.
		attacker.send(`{"messageType":"ping"}`)
		attacker.expect(pushproto.TypePing)
		if w := h.waiting(); w != 1 {
			t.Fatalf("waiting = %d after foreign acks", w)
		}
		// The owner still gets it.
		n := h.hello(victim.uaid).expect(pushproto.TypeNotification)
		if payload(t, n) != "private" {
			t.Fatalf("got %+v", n)
		}
	})
}

// TTL 0: handed straight to a connected device and never stored; dropped
// (not delivered) when the device is away.
func TestTTLZero(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, nil)
		d := h.hello("")
		s := d.subscribe()

		res := h.mustPush(s, 0, "now")
		if !res.Delivered || res.Stored || res.ID == "" {
			t.Fatalf("TTL 0 to a connected device: %+v", res)
		}
		n := d.expect(pushproto.TypeNotification)
		if payload(t, n) != "now" || n.ChannelID != s.channel {
			t.Fatalf("got %+v", n)
		}
		if w := h.waiting(); w != 0 {
			t.Fatalf("TTL 0 message stored: waiting = %d", w)
		}
		// Its id names no stored message.
		if err := h.hub.Delete(context.Background(), res.ID); !errors.Is(err, relay.ErrNoMessage) {
			t.Fatalf("Delete of a TTL-0 id: %v", err)
		}

		d.c.hangUp()
		d.released(5 * time.Second)
		waitFor(t, "the session to go", func() bool { return h.hub.Connected() == 0 })
		res = h.mustPush(s, 0, "never")
		if res.Delivered || res.Stored {
			t.Fatalf("TTL 0 to an offline device: %+v", res)
		}
		h.hello(d.uaid).expectNone(150 * time.Millisecond)
		if w := h.waiting(); w != 0 {
			t.Fatalf("waiting = %d", w)
		}
	})
}

// An app server can withdraw a waiting message by its id; it is then
// never delivered.
func TestDeleteByID(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, nil)
		d := h.hello("")
		s := d.subscribe()
		d.c.hangUp()
		gone := h.mustPush(s, time.Hour, "regret")
		kept := h.mustPush(s, time.Hour, "keep")
		ctx := context.Background()

		if err := h.hub.Delete(ctx, gone.ID); err != nil {
			t.Fatal(err)
		}
		if w := h.waiting(); w != 1 {
			t.Fatalf("waiting = %d after delete", w)
		}
		for name, id := range map[string]string{
			"deleted twice":    gone.ID,
			"garbage":          "abc",
			"endpoint token":   s.endpoint[strings.LastIndex(s.endpoint, "/")+1:],
			"empty":            "",
			"tampered kept id": kept.ID[:len(kept.ID)-2] + "AA",
		} {
			if err := h.hub.Delete(ctx, id); !errors.Is(err, relay.ErrNoMessage) {
				t.Errorf("%s: %v, want ErrNoMessage", name, err)
			}
		}
		d2 := h.hello(d.uaid)
		if n := d2.expect(pushproto.TypeNotification); payload(t, n) != "keep" {
			t.Fatalf("got %+v", n)
		}
		d2.expectNone(100 * time.Millisecond)
	})
}

// After unregister, pushes to the channel fail with ErrNoSubscription and
// its waiting messages are gone.
func TestUnregister(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, nil)
		d := h.hello("")
		s, other := d.subscribe(), d.subscribe()
		h.mustPush(s, time.Hour, "unread")
		d.expect(pushproto.TypeNotification)

		d.send(map[string]any{"messageType": "unregister", "channelID": s.channel, "code": 200})
		if r := d.expect(pushproto.TypeUnregister); r.Status != 200 || r.ChannelID != s.channel {
			t.Fatalf("unregister reply %+v", r)
		}
		for _, ttl := range []time.Duration{time.Hour, 0} {
			if _, err := h.push(s, ttl, "x"); !errors.Is(err, relay.ErrNoSubscription) {
				t.Fatalf("push TTL %s after unregister: %v", ttl, err)
			}
		}
		if w := h.waiting(); w != 0 {
			t.Fatalf("waiting = %d: unregister left messages", w)
		}
		// Unregistering an unknown channel is not an error (autopush).
		d.send(map[string]any{"messageType": "unregister", "channelID": newChannelID()})
		if r := d.expect(pushproto.TypeUnregister); r.Status != 200 {
			t.Fatalf("unregister unknown: %+v", r)
		}
		// The other channel still works.
		h.mustPush(other, time.Hour, "still")
		if n := d.expect(pushproto.TypeNotification); payload(t, n) != "still" {
			t.Fatalf("got %+v", n)
		}
		// A channel that never existed.
		ghost := &sub{ep: s.ep}
		ghost.ep.Channel[0] ^= 0xff
		if _, err := h.push(ghost, time.Hour, "x"); !errors.Is(err, relay.ErrNoSubscription) {
			t.Fatalf("push to a never-registered channel: %v", err)
		}
	})
}

// One socket per UAID: a newer connection closes the older one with 1011
// and gets the messages.
func TestOneSocketPerUAID(t *testing.T) { bothModes(t, testOneSocketPerUAID) }

func testOneSocketPerUAID(t *testing.T, notify bool) {
	h := newHarnessMode(t, notify, nil)
	d1 := h.hello("")
	s := d1.subscribe()
	d2 := h.hello(d1.uaid)
	if code, reason := d1.closedWith(5 * time.Second); code != pushproto.CloseServerError || !strings.Contains(reason, "replaced") {
		t.Fatalf("old socket closed with %d %q, want 1011", code, reason)
	}
	d1.released(5 * time.Second)
	waitFor(t, "one session", func() bool { return h.hub.Connected() == 1 })
	h.mustPush(s, time.Hour, "to the new socket")
	if n := d2.expect(pushproto.TypeNotification); payload(t, n) != "to the new socket" {
		t.Fatalf("got %+v", n)
	}
	d1.expectNone(50 * time.Millisecond)
}

// Close closes every session, before and after hello, with 1001, waits for
// them, refuses new work and is idempotent; Run returns.
func TestHubClose(t *testing.T) { bothModes(t, testHubClose) }

func testHubClose(t *testing.T, notify bool) {
	h := newHarnessMode(t, notify, nil)
	a := h.hello("")
	s := a.subscribe()
	b := h.hello("")
	silent := h.connect()

	if err := h.hub.Close(); err != nil {
		t.Fatal(err)
	}
	for name, d := range map[string]*device{"helloed": a, "second": b, "before hello": silent} {
		select {
		case <-d.c.released:
		default:
			t.Errorf("%s: not released when Close returned", name)
		}
		if code, _ := d.closedWith(time.Second); code != pushproto.CloseGoingAway {
			t.Errorf("%s: closed with %d, want 1001", name, code)
		}
	}
	if n := h.hub.Connected(); n != 0 {
		t.Fatalf("Connected = %d after Close", n)
	}
	select {
	case err := <-h.ran:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after Close")
	}

	done := make(chan struct{})
	go func() {
		h.hub.Close()
		h.hub.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("second Close blocked")
	}
	for _, ttl := range []time.Duration{time.Hour, 0} {
		if _, err := h.push(s, ttl, "late"); !errors.Is(err, relay.ErrClosing) {
			t.Fatalf("push TTL %s after Close: %v, want ErrClosing", ttl, err)
		}
	}
	if w := h.waiting(); w != 0 {
		t.Fatalf("a push after Close was stored (waiting %d)", w)
	}
	// A connection handed over after Close is turned away.
	late := h.connect()
	if code, _ := late.closedWith(time.Second); code != pushproto.CloseGoingAway {
		t.Fatalf("late connection closed with %d", code)
	}
	late.released(time.Second)
}

// A device that says nothing is closed after the hello timeout; anything
// but hello first is refused.
func TestHelloTimeoutAndOrder(t *testing.T) { bothModes(t, testHelloTimeoutAndOrder) }

func testHelloTimeoutAndOrder(t *testing.T, notify bool) {
	h := newHarnessMode(t, notify, func(c *relay.Config) { c.HelloTimeout = 150 * time.Millisecond })
	start := time.Now()
	d := h.connect()
	code, reason := d.closedWith(3 * time.Second)
	if code != pushproto.CloseServerError || reason != "hello timeout" {
		t.Fatalf("closed with %d %q", code, reason)
	}
	if el := time.Since(start); el < 140*time.Millisecond {
		t.Fatalf("closed after %s, before the hello timeout", el)
	}
	d.released(time.Second)

	d = h.connect()
	d.send(map[string]any{"messageType": "register", "channelID": newChannelID()})
	if code, reason := d.closedWith(time.Second); code != pushproto.CloseServerError || reason != "hello required" {
		t.Fatalf("register before hello: %d %q", code, reason)
	}
	// After hello the hello timeout no longer applies.
	d = h.hello("")
	d.expectNone(300 * time.Millisecond)
	d.send(`{"messageType":"ping"}`)
	d.expect(pushproto.TypePing)
}

// A SimplePush device (hello without use_webpush) gets /update/ endpoints,
// notifications as updates with integer versions, and its integer acks
// delete the messages — also Web Push messages, which it sees by seq.
func TestSimplePushDialect(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, nil)
		d := h.connect()
		d.hello("", true)
		ch := newChannelID()
		r := d.register(ch, "")
		if r.Status != 200 || !strings.HasPrefix(r.PushEndpoint, publicURL+"/update/") {
			t.Fatalf("legacy register: %+v", r)
		}
		s := &sub{channel: ch, endpoint: r.PushEndpoint, ep: h.openEndpoint(r.PushEndpoint)}

		if _, err := h.hub.Push(context.Background(), push.Message{UAID: push.UAID(s.ep.UAID), Channel: push.ChannelID(s.ep.Channel), TTL: time.Hour, Version: 42}); err != nil {
			t.Fatal(err)
		}
		n := d.expect(pushproto.TypeNotification)
		if len(n.Updates) != 1 || n.Updates[0].ChannelID != ch || n.Updates[0].Version != 42 || n.ChannelID != "" {
			t.Fatalf("SimplePush notification %+v", n)
		}
		d.send(fmt.Sprintf(`{"messageType":"ack","updates":[{"channelID":%q,"version":42}]}`, ch))
		waitFor(t, "integer ack deletes", func() bool { return h.waiting() == 0 })

		// A Web Push message reaches it as an update too, versioned by seq.
		h.mustPush(s, time.Hour, "ignored payload")
		n = d.expect(pushproto.TypeNotification)
		if len(n.Updates) != 1 || n.Updates[0].Version == 0 || n.Data != "" {
			t.Fatalf("Web Push message to a SimplePush device: %+v", n)
		}
		d.ack(n)
		waitFor(t, "seq ack deletes", func() bool { return h.waiting() == 0 })

		// Offline, a newer version replaces the older one.
		d.c.hangUp()
		for _, v := range []uint64{7, 9} {
			if _, err := h.hub.Push(context.Background(), push.Message{UAID: push.UAID(s.ep.UAID), Channel: push.ChannelID(s.ep.Channel), TTL: time.Hour, Version: v}); err != nil {
				t.Fatal(err)
			}
		}
		d2 := h.connect()
		d2.hello(d.uaid, true)
		n = d2.expect(pushproto.TypeNotification)
		if len(n.Updates) != 1 || n.Updates[0].Version != 9 {
			t.Fatalf("after two versions: %+v", n)
		}
		d2.expectNone(100 * time.Millisecond)
	})
}

// Run pings sessions that have been idle for PingInterval. One that answers
// (pongs) stays open; one that does not is closed with 1011 once the pong
// timeout has passed. Sessions still in hello are not pinged.
func TestKeepalive(t *testing.T) { bothModes(t, testKeepalive) }

func testKeepalive(t *testing.T, notify bool) {
	const interval, pongTimeout = 300 * time.Millisecond, 300 * time.Millisecond
	h := newHarnessMode(t, notify, func(c *relay.Config) {
		c.PingInterval = interval
		c.PongTimeout = pongTimeout
		c.HelloTimeout = 10 * time.Second
	})

	alive := h.connect()
	alive.c.autoPong.Store(true)
	alive.hello("", false)
	s := alive.subscribe()
	start := time.Now()
	dead := h.hello("")
	waiting := h.connect()

	code, reason := dead.closedWith(5 * time.Second)
	el := time.Since(start)
	if code != pushproto.CloseServerError || reason != "pong timeout" {
		t.Fatalf("silent device closed with %d %q", code, reason)
	}
	if el < interval+pongTimeout-50*time.Millisecond {
		t.Fatalf("silent device closed after %s, before ping interval + pong timeout", el)
	}
	if dead.c.pings.Load() == 0 {
		t.Fatal("silent device was closed without a ping")
	}

	// Let the answering device go through several intervals.
	time.Sleep(2 * interval)
	if alive.c.isClosed() {
		t.Fatal("a device answering pings was closed")
	}
	if n := alive.c.pings.Load(); n < 2 {
		t.Fatalf("answering device pinged %d times in %s", n, time.Since(start))
	}
	if n := waiting.c.pings.Load(); n != 0 {
		t.Fatalf("a session before hello was pinged %d times", n)
	}
	h.mustPush(s, time.Hour, "after pings")
	if n := alive.expect(pushproto.TypeNotification); payload(t, n) != "after pings" {
		t.Fatalf("got %+v", n)
	}
}

// WebPush {} pings closer together than MinPingInterval close the socket
// with 1011; spaced ones are answered; a negative MinPingInterval allows any
// rate.
func TestWebPushPingRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, func(c *relay.Config) { c.MinPingInterval = 150 * time.Millisecond })
		d := h.hello("")
		d.send("{}")
		d.expect(pushproto.TypePing)
		time.Sleep(200 * time.Millisecond)
		d.send(`{"messageType":"ping"}`)
		d.expect(pushproto.TypePing)
		d.send("{}")
		if code, reason := d.closedWith(time.Second); code != pushproto.CloseServerError || reason != "excessive ping" {
			t.Fatalf("rapid ping: closed with %d %q", code, reason)
		}

		h2 := newHarness(t, func(c *relay.Config) { c.MinPingInterval = -1 })
		d2 := h2.hello("")
		for range 5 {
			d2.send("{}")
			d2.expect(pushproto.TypePing)
		}
	})
}

// Many app servers pushing at once to a connected device with a small
// window: every message arrives exactly once, each sender's in the order it
// posted them, and the store ends empty.
func TestConcurrentPushesDelivered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, func(c *relay.Config) { c.Window = 4 })
		d := h.hello("")
		s := d.subscribe()
		const senders, each = 6, 25
		var wg sync.WaitGroup
		errs := make(chan error, senders*each)
		for w := range senders {
			wg.Go(func() {
				for i := range each {
					if _, err := h.push(s, time.Hour, fmt.Sprintf("%d/%d", w, i)); err != nil {
						errs <- err
					}
				}
			})
		}
		last := make([]int, senders)
		for i := range last {
			last[i] = -1
		}
		for range senders * each {
			n := d.next(10 * time.Second)
			var w, i int
			if _, err := fmt.Sscanf(payload(t, n), "%d/%d", &w, &i); err != nil {
				t.Fatal(err)
			}
			if i != last[w]+1 {
				t.Fatalf("sender %d: message %d after %d", w, i, last[w])
			}
			last[w] = i
			d.ack(n)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		waitFor(t, "store drained", func() bool { return h.waiting() == 0 })
		d.expectNone(100 * time.Millisecond)
	})
}

// The hello reply is the first frame of a session: a message pushed while
// the hub is still answering hello must not overtake it.
func TestNothingBeforeHelloReply(t *testing.T) { bothModes(t, testNothingBeforeHelloReply) }

func testNothingBeforeHelloReply(t *testing.T, notify bool) {
	h := newHarnessMode(t, notify, nil)
	d := h.hello("")
	s := d.subscribe()
	d.c.hangUp()
	d.released(5 * time.Second)

	d2 := h.connect()
	var once sync.Once
	d2.c.mu.Lock()
	d2.c.onIdle = func(timeout time.Duration) {
		if timeout == 5*time.Second {
			return // the hello timeout, set before the first read
		}
		// hello has attached the session and is about to reply: an app
		// server pushes now.
		once.Do(func() {
			if _, err := h.push(s, time.Hour, "early"); err != nil {
				t.Error(err)
			}
			// Give a pump, if one was started, time to write.
			deadline := time.Now().Add(500 * time.Millisecond)
			for len(d2.c.out) == 0 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
		})
	}
	d2.c.mu.Unlock()
	d2.send(map[string]any{"messageType": "hello", "use_webpush": true, "uaid": d.uaid})
	first := d2.next(5 * time.Second)
	if first.MessageType != pushproto.TypeHello {
		t.Fatalf("first frame of the session is %s %+v, want the hello reply", first.MessageType, first)
	}
	if n := d2.expect(pushproto.TypeNotification); payload(t, n) != "early" {
		t.Fatalf("got %+v", n)
	}
}

// bothModes runs f with connections that notify (plain TCP under the
// poller) and with connections the hub parks a goroutine on (TLS).
func bothModes(t *testing.T, f func(t *testing.T, notify bool)) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { f(t, m.notify) })
		})
	}
}

// A store replaced under the hub (a site member restored from another
// member's snapshot) brings messages the commit feed never offered:
// Resync has every session read them from the store.
func TestResyncAfterRestore(t *testing.T) {
	h := newHarness(t, nil)
	d := h.hello("")
	s := d.subscribe()
	u, err := push.ParseUAID(d.uaid)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := push.ParseChannelID(s.channel)
	if err != nil {
		t.Fatal(err)
	}
	// The other member's file: this one's, and a message more.
	var snap bytes.Buffer
	if _, err := h.st.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	other, err := store.Open(store.Options{Path: filepath.Join(t.TempDir(), "other.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ctx := context.Background()
	if _, err := other.Restore(ctx, &snap); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if _, err := other.Append(ctx, store.Message{UAID: u, Channel: ch, Data: []byte("came with the file"),
		Received: now, TTL: time.Hour, Expiry: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	snap.Reset()
	if _, err := other.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	if _, err := h.st.Restore(ctx, &snap); err != nil {
		t.Fatal(err)
	}
	d.expectNone(200 * time.Millisecond) // nothing offered it
	h.hub.Resync()
	n := d.expect(pushproto.TypeNotification)
	if got := payload(t, n); got != "came with the file" {
		t.Fatalf("after Resync the device got %q", got)
	}
	d.ack(n)
}
