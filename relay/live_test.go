package relay_test

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushproto"
)

// A connected device that has caught up gets each new message from the
// commit that stored it: the hub does not read it back from the store.
func TestLiveMessagesNotReadBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
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
	})
}

// A device that stops acking stops getting notifications at its window,
// while more messages are stored than a session holds in memory; as it
// acks, every message comes exactly once, in order, from memory and then
// from the store.
func TestLiveBacklogOverflowsToStore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
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
	})
}

// A message waiting in a session's memory for room in the window is
// replaced by a newer one with its topic, as in the store; one that
// expires meanwhile is not sent; an unregistered channel's are dropped.
func TestLiveQueueFollowsStore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, func(c *relay.Config) { c.Window = 1 })
		d := h.hello("")
		s, other := d.subscribe(), d.subscribe()
		h.mustPush(s, time.Hour, "first")
		first := d.expect(pushproto.TypeNotification) // the window is full now

		push := func(s *sub, ttl time.Duration, topic, data string) {
			t.Helper()
			m := push.Message{UAID: push.UAID(s.ep.UAID), Channel: push.ChannelID(s.ep.Channel), TTL: ttl, Topic: topic, Data: []byte(data), Encoding: "aes128gcm"}
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
	})
}

// An ack names a message by the version it was sent with; one written
// differently (padded base64 here) still names it: the message is deleted
// and leaves the window.
func TestAckOfRewrittenVersion(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
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
	})
}

// Pushes, acks, skipped acks and reconnects interleave over several
// devices with a small window, so sessions move between reading the store
// and taking messages from commits many times. Within each connection
// notifications come in seq order and skip no message that still waits (one
// not acked and not replaceable by topic); at the end every message that
// was not replaced has arrived and the store is empty. It runs in real
// time, not in a synctest bubble: it needs goroutines truly running at once
// to interleave.
func TestLiveStress(t *testing.T) {
	h := newHarness(t, func(c *relay.Config) { c.Window = 3 })
	rng := rand.New(rand.NewPCG(1, 2))
	const devices, each = 4, 200
	type state struct {
		d       *device
		subs    []*sub
		lastSeq uint64 // in the current connection
		lastN   int    // the push number last received on it, or -1
		onConn  int    // notifications on the current connection
		unacked int    // of which not acked: at the window, it is stuck
		got     map[string]bool
		acked   map[int]bool
	}
	ds := make([]*state, devices)
	for i := range ds {
		d := h.hello("")
		ds[i] = &state{d: d, subs: []*sub{d.subscribe(), d.subscribe()}, lastN: -1, got: map[string]bool{}, acked: map[int]bool{}}
	}
	lastTopic := make([]string, devices)
	var wg sync.WaitGroup
	errs := make(chan error, devices)
	for i, st := range ds {
		wg.Go(func() {
			for n := range each {
				data := fmt.Sprintf("%d/%d", i, n)
				m := push.Message{UAID: push.UAID(st.subs[n%2].ep.UAID), Channel: push.ChannelID(st.subs[n%2].ep.Channel), TTL: time.Hour, Data: []byte(data), Encoding: "aes128gcm"}
				if n%5 == 0 {
					m.Topic = "t"
					m.UAID, m.Channel = push.UAID(st.subs[0].ep.UAID), push.ChannelID(st.subs[0].ep.Channel)
					lastTopic[i] = data
				}
				if _, err := h.hub.Push(t.Context(), m); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	pushed := make(chan struct{})
	go func() { wg.Wait(); close(pushed) }()

	// read takes up to max of the frames a device has been sent, checks
	// their order and acks most of them; ackAll acks every one.
	read := func(st *state, max int, ackAll bool) int {
		n := 0
		for n < max {
			var b []byte
			select {
			case b = <-st.d.c.out:
			default:
				return n
			}
			f, err := pushproto.DecodeServer(b)
			if err != nil || f.MessageType != pushproto.TypeNotification {
				t.Fatalf("frame %q: %v", b, err)
			}
			id, err := h.tokens.OpenMessageID(f.Version)
			if err != nil {
				t.Fatal(err)
			}
			if id.Seq <= st.lastSeq {
				t.Fatalf("seq %d after %d on one connection", id.Seq, st.lastSeq)
			}
			st.lastSeq = id.Seq
			data := payload(t, f)
			var dev, pn int
			if _, err := fmt.Sscanf(data, "%d/%d", &dev, &pn); err != nil {
				t.Fatal(err)
			}
			// One sender per device posts in order, so push numbers
			// follow seqs: a gap may hold only acked or replaceable ones.
			if st.lastN >= 0 {
				for k := st.lastN + 1; k < pn; k++ {
					if k%5 != 0 && !st.acked[k] {
						t.Fatalf("device %d got %d after %d on one connection; %d waits", dev, pn, st.lastN, k)
					}
				}
			}
			st.lastN = pn
			st.got[data] = true
			st.onConn++
			n++
			if ackAll || rng.IntN(10) < 8 {
				st.d.ack(f)
				st.acked[pn] = true
			} else {
				st.unacked++
			}
		}
		return n
	}
	reconnects := 0
	reconnect := func(st *state) {
		reconnects++
		st.d.c.hangUp()
		st.d = h.hello(st.d.uaid)
		st.lastSeq, st.lastN, st.onConn, st.unacked = 0, -1, 0, 0
	}
	deadline := time.Now().Add(20 * time.Second)
	for done := false; !done; {
		select {
		case <-pushed:
			done = true
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("pushes did not finish in time")
		}
		for _, st := range ds {
			// One frame a round, slower than the senders, so backlogs
			// build up; a connection stuck at its window is replaced.
			read(st, 1, false)
			if st.unacked == 3 || st.onConn >= 20+rng.IntN(40) {
				reconnect(st)
			}
		}
		time.Sleep(time.Millisecond)
	}
	if reconnects < 4 {
		t.Fatalf("only %d reconnects while pushing: the test did not interleave", reconnects)
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// A last connection each takes and acks what is left.
	for _, st := range ds {
		reconnect(st)
	}
	for quiet := time.Now(); time.Since(quiet) < 300*time.Millisecond; {
		if time.Now().After(deadline) {
			t.Fatal("the rest did not arrive in time")
		}
		moved := 0
		for _, st := range ds {
			moved += read(st, 1000, true)
		}
		if moved > 0 {
			quiet = time.Now()
		}
		time.Sleep(time.Millisecond)
	}
	for i, st := range ds {
		for n := range each {
			data := fmt.Sprintf("%d/%d", i, n)
			if (n%5 != 0 || data == lastTopic[i]) && !st.got[data] {
				t.Errorf("device %d never got %s", i, data)
			}
		}
	}
	waitFor(t, "store drained", func() bool { return h.waiting() == 0 })
}
