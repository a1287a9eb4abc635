package relay_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/pushproto"
)

// A connected device that has caught up gets each new message from the
// commit that stored it: the hub does not read it back from the store.
func TestLiveMessagesNotReadBack(t *testing.T) {
	h := newHarness(t, nil)
	d := h.hello("")
	s := d.subscribe()
	// The hello's read, then one message, whichever way it comes.
	h.mustPush(s, time.Hour, "warm-up")
	d.ack(d.expect(pushproto.TypeNotification))
	before := h.reads.Load()
	for i := range 20 {
		h.mustPush(s, time.Hour, strconv.Itoa(i))
		n := d.expect(pushproto.TypeNotification)
		if p := payload(t, n); p != strconv.Itoa(i) {
			t.Fatalf("notification %d carries %q", i, p)
		}
		d.ack(n)
	}
	if n := h.reads.Load() - before; n != 0 {
		t.Fatalf("the store was read %d times for 20 live messages", n)
	}
	waitFor(t, "acked messages deleted", func() bool { return h.waiting() == 0 })
}

// A device that stops acking stops getting notifications at its window,
// while more messages are stored than a session holds in memory; as it
// acks, every message comes exactly once, in order, from memory and then
// from the store.
func TestLiveBacklogOverflowsToStore(t *testing.T) {
	h := newHarness(t, func(c *relay.Config) { c.Window = 2 })
	d := h.hello("")
	s := d.subscribe()
	const total = 300
	for i := range total {
		h.mustPush(s, time.Hour, strconv.Itoa(i))
	}
	for i := range total {
		n := d.next(5 * time.Second)
		if n.MessageType != pushproto.TypeNotification {
			t.Fatalf("frame %d: %+v", i, n)
		}
		if p := payload(t, n); p != strconv.Itoa(i) {
			t.Fatalf("notification %d carries %q", i, p)
		}
		d.ack(n)
	}
	d.expectNone(100 * time.Millisecond)
	waitFor(t, "acked messages deleted", func() bool { return h.waiting() == 0 })
	// Caught up again: the next message comes without a read.
	before := h.reads.Load()
	h.mustPush(s, time.Hour, "after")
	if p := payload(t, d.expect(pushproto.TypeNotification)); p != "after" {
		t.Fatalf("got %q", p)
	}
	if n := h.reads.Load() - before; n != 0 {
		t.Fatalf("%d reads after catching up", n)
	}
}

// A message waiting in a session's memory for room in the window is
// replaced by a newer one with its topic, as in the store; one that
// expires meanwhile is not sent; an unregistered channel's are dropped.
func TestLiveQueueFollowsStore(t *testing.T) {
	h := newHarness(t, func(c *relay.Config) { c.Window = 1 })
	d := h.hello("")
	s, other := d.subscribe(), d.subscribe()
	h.mustPush(s, time.Hour, "first")
	first := d.expect(pushproto.TypeNotification) // the window is full now

	push := func(s *sub, ttl time.Duration, topic, data string) {
		t.Helper()
		m := relay.Message{Endpoint: s.ep, TTL: ttl, Topic: topic, Data: []byte(data), Encoding: "aes128gcm"}
		if _, err := h.hub.Push(t.Context(), m); err != nil {
			t.Fatal(err)
		}
	}
	push(s, time.Hour, "weather", "rain")
	push(s, 50*time.Millisecond, "", "brief")
	push(other, time.Hour, "", "unsubscribed")
	push(s, time.Hour, "weather", "sun")
	push(s, time.Hour, "", "plain")
	time.Sleep(100 * time.Millisecond) // brief expires
	d.send(map[string]any{"messageType": "unregister", "channelID": other.channel})
	if r := d.expect(pushproto.TypeUnregister); r.Status != 200 {
		t.Fatalf("unregister: %+v", r)
	}

	d.ack(first)
	var got []string
	for range 2 {
		n := d.expect(pushproto.TypeNotification)
		got = append(got, payload(t, n))
		d.ack(n)
	}
	if got[0] != "sun" || got[1] != "plain" {
		t.Fatalf("delivered %q, want [sun plain]", got)
	}
	d.expectNone(150 * time.Millisecond)
}

// An ack names a message by the version it was sent with; one written
// differently (padded base64 here) still names it: the message is deleted
// and leaves the window.
func TestAckOfRewrittenVersion(t *testing.T) {
	h := newHarness(t, func(c *relay.Config) { c.Window = 1 })
	d := h.hello("")
	s := d.subscribe()
	h.mustPush(s, time.Hour, "a")
	h.mustPush(s, time.Hour, "b")
	n := d.expect(pushproto.TypeNotification)
	if p := payload(t, n); p != "a" {
		t.Fatalf("got %q", p)
	}
	d.expectNone(100 * time.Millisecond) // the window is full
	n.Version += "=="
	d.ack(n)
	if p := payload(t, d.expect(pushproto.TypeNotification)); p != "b" {
		t.Fatalf("got %q after the ack", p)
	}
	waitFor(t, "a deleted", func() bool { return h.waiting() == 1 })
}
