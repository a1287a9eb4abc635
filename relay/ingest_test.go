package relay_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushproto"
)

// A batch is answered per message: stored messages with their device's
// queue size, an unknown subscription with ErrNoSubscription, a TTL-0
// message delivered to a connected device; the connected device gets
// its messages, the offline one finds them at its next hello.
func TestIngestBatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, nil)
		on := h.hello("")
		s1 := on.subscribe()
		off := h.hello("")
		s2 := off.subscribe()
		off.c.hangUp()
		off.released(5 * time.Second)
		waitFor(t, "the session to go", func() bool { return h.hub.Connected() == 1 })

		msg := func(s *sub, ttl time.Duration, data string) push.Message {
			return push.Message{UAID: push.UAID(s.ep.UAID), Channel: push.ChannelID(s.ep.Channel), TTL: ttl, Data: []byte(data), Encoding: "aes128gcm"}
		}
		gone := push.Message{UAID: push.UAID{1}, Channel: push.ChannelID{2}, TTL: time.Minute}
		rs, err := h.hub.Ingest(context.Background(), []push.Message{
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
func TestIngestClosing(t *testing.T) {
	h := newHarness(t, nil)
	h.hub.Close()
	if _, err := h.hub.Ingest(context.Background(), []push.Message{{TTL: time.Minute}}); !errors.Is(err, relay.ErrClosing) {
		t.Errorf("Ingest after Close: %v", err)
	}
}

// A message whose origin key was ingested before reaches the device once:
// a duplicate in the same batch, in a later batch while the first waits,
// after the device acked it, and after a restart of the hub and its store
// are each answered as stored (Duplicate, the first one's id) and never
// sent again; the first message is delivered as usual.
func TestIngestOriginKeyOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "pushrelay.db")
		h := newHarnessAt(t, path, true, nil)
		d := h.hello("")
		s := d.subscribe()
		ctx := context.Background()
		msg := func(id byte, data string) push.Message {
			return push.Message{
				UAID: push.UAID(s.ep.UAID), Channel: push.ChannelID(s.ep.Channel),
				Origin: push.UpstreamOrigin(push.UAID{0xee}, push.ChannelID{0xcc}, fmt.Sprintf("v%d", id)),
				TTL:    time.Hour, Data: []byte(data), Encoding: "aes128gcm",
			}
		}
		check := func(what string, rs []relay.Result, err error, dup ...bool) {
			t.Helper()
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			for i, r := range rs {
				if r.Err != nil || !r.Stored || r.ID == "" || r.Duplicate != dup[i] {
					t.Errorf("%s: result %d %+v, want duplicate %v", what, i, r, dup[i])
				}
			}
		}
		rs, err := h.hub.Ingest(ctx, []push.Message{msg(1, "one"), msg(1, "one again"), msg(2, "two")})
		check("first batch", rs, err, false, true, false)
		if rs[1].ID != rs[0].ID {
			t.Errorf("duplicate's id %s, want the first's %s", rs[1].ID, rs[0].ID)
		}
		n1 := d.expect(pushproto.TypeNotification)
		n2 := d.expect(pushproto.TypeNotification)
		if payload(t, n1) != "one" || payload(t, n2) != "two" {
			t.Fatalf("delivered %q, %q", payload(t, n1), payload(t, n2))
		}
		// While they wait for the ack, and after it.
		rs, err = h.hub.Ingest(ctx, []push.Message{msg(2, "two again")})
		check("while waiting", rs, err, true)
		d.ack(n1, n2)
		waitFor(t, "the acks", func() bool { return h.waiting() == 0 })
		rs, err = h.hub.Ingest(ctx, []push.Message{msg(1, "one after ack"), msg(3, "three")})
		check("after the ack", rs, err, true, false)
		if n := d.expect(pushproto.TypeNotification); payload(t, n) != "three" {
			t.Fatalf("delivered %q, want three", payload(t, n))
		}
		d.expectNone(time.Second)
		uaid := d.uaid

		// A restart: a new hub on the same file. Three is still waiting
		// (unacked); the re-sent keys are all duplicates.
		d.c.hangUp()
		d.released(5 * time.Second)
		h.stop()
		h = newHarnessAt(t, path, true, nil)
		rs, err = h.hub.Ingest(ctx, []push.Message{msg(1, "x"), msg(2, "x"), msg(3, "x")})
		check("after a restart", rs, err, true, true, true)
		back := h.hello(uaid)
		if n := back.expect(pushproto.TypeNotification); payload(t, n) != "three" {
			t.Fatalf("after the restart the device got %q, want three", payload(t, n))
		}
		back.expectNone(time.Second)
		if w := h.waiting(); w != 1 {
			t.Errorf("waiting %d, want 1", w)
		}
	})
}

// A channel unregistered here while the upstream has not heard yet (a
// tombstone) takes no messages: its posts are answered as for a channel
// that does not exist.
func TestIngestTombstonedChannel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, nil)
		d := h.hello("")
		s := d.subscribe()
		u, ch := push.UAID(s.ep.UAID), push.ChannelID(s.ep.Channel)
		if ok, err := h.st.UnregisterLater(context.Background(), u, ch, push.UAID{9}); err != nil || !ok {
			t.Fatalf("unregister later: %v %v", ok, err)
		}
		rs, err := h.hub.Ingest(context.Background(), []push.Message{{UAID: u, Channel: ch, TTL: time.Minute, Data: []byte("x"), Encoding: "aes128gcm"}})
		if err != nil {
			t.Fatal(err)
		}
		if !errors.Is(rs[0].Err, relay.ErrNoSubscription) || rs[0].Stored {
			t.Fatalf("tombstoned channel: %+v", rs[0])
		}
	})
}
