package relay_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/token"
)

// A batch is answered per message: stored messages with their device's
// queue size, an unknown subscription with ErrNoSubscription, a TTL-0
// message delivered to a connected device; the connected device gets
// its messages, the offline one finds them at its next hello.
func TestPushBatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, nil)
		on := h.hello("")
		s1 := on.subscribe()
		off := h.hello("")
		s2 := off.subscribe()
		off.c.hangUp()
		off.released(5 * time.Second)
		waitFor(t, "the session to go", func() bool { return h.hub.Connected() == 1 })

		msg := func(s *sub, ttl time.Duration, data string) relay.Message {
			return relay.Message{Endpoint: s.ep, TTL: ttl, Data: []byte(data), Encoding: "aes128gcm"}
		}
		gone := relay.Message{Endpoint: token.Endpoint{UAID: [16]byte{1}, Channel: [16]byte{2}}, TTL: time.Minute}
		rs, err := h.hub.PushBatch(context.Background(), []relay.Message{
			msg(s1, time.Minute, "a"),
			gone,
			msg(s1, 0, "direct"),
			msg(s2, time.Minute, "b"),
			msg(s2, time.Minute, "c"),
			msg(s2, 0, "dropped"),
		})
		if err != nil {
			t.Fatal(err)
		}
		type want struct {
			stored, delivered bool
			queue             int
			err               error
		}
		for i, w := range []want{
			{stored: true, queue: 1},
			{err: relay.ErrNoSubscription},
			{delivered: true},
			{stored: true, queue: 1},
			{stored: true, queue: 2},
			{},
		} {
			r := rs[i]
			if r.Stored != w.stored || r.Delivered != w.delivered || r.Queue != w.queue || !errors.Is(r.Err, w.err) || (w.err == nil) != (r.Err == nil) {
				t.Errorf("result %d: %+v, want %+v", i, r, w)
			}
			if w.err == nil && r.ID == "" {
				t.Errorf("result %d has no id", i)
			}
		}
		// The direct message went out during the batch, the stored one
		// after its commit.
		if n := on.expect(pushproto.TypeNotification); payload(t, n) != "direct" {
			t.Errorf("first notification %q", payload(t, n))
		}
		n := on.expect(pushproto.TypeNotification)
		if payload(t, n) != "a" || n.Version != rs[0].ID {
			t.Errorf("second notification %q version %s, want a %s", payload(t, n), n.Version, rs[0].ID)
		}
		back := h.hello(off.uaid)
		for _, want := range []string{"b", "c"} {
			if n := back.expect(pushproto.TypeNotification); payload(t, n) != want {
				t.Errorf("offline device got %q, want %q", payload(t, n), want)
			}
		}
		if w := h.waiting(); w != 3 {
			t.Errorf("waiting %d, want 3", w)
		}

		// Push is the batch of one: its own failure is the error.
		if _, err := h.hub.Push(context.Background(), gone); !errors.Is(err, relay.ErrNoSubscription) {
			t.Errorf("Push to an unknown subscription: %v", err)
		}
		res := h.mustPush(s2, time.Minute, "d")
		if !res.Stored || res.Queue != 3 {
			t.Errorf("Push result %+v, want stored with queue 3", res)
		}
	})
}

// After Close a batch is refused as a whole.
func TestPushBatchClosing(t *testing.T) {
	h := newHarness(t, nil)
	h.hub.Close()
	if _, err := h.hub.PushBatch(context.Background(), []relay.Message{{TTL: time.Minute}}); !errors.Is(err, relay.ErrClosing) {
		t.Errorf("PushBatch after Close: %v", err)
	}
}
