package relay_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"
	"unsafe"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/broadcast"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/pushproto"
)

// bcastHarness is a hub serving the broadcasts of a real registry kept in
// the harness's store.
type bcastHarness struct {
	*harness
	reg *broadcast.Registry
	m   *metrics.Registry
}

func newBcastHarness(t testing.TB, initial map[string]string, tweak func(*relay.Config)) *bcastHarness {
	t.Helper()
	b := &bcastHarness{m: metrics.NewRegistry()}
	b.harness = newHarness(t, func(c *relay.Config) {
		r, err := broadcast.Open(c.Store.(*countingStore).Store, b.m)
		if err != nil {
			t.Fatal(err)
		}
		if len(initial) > 0 {
			if _, err := r.Set(context.Background(), "test", initial); err != nil {
				t.Fatal(err)
			}
		}
		b.reg = r
		c.Broadcasts = r
		c.Metrics = b.m
		if tweak != nil {
			tweak(c)
		}
	})
	return b
}

func (b *bcastHarness) set(id, v string) {
	b.t.Helper()
	if _, err := b.reg.Set(context.Background(), "test", map[string]string{id: v}); err != nil {
		b.t.Fatal(err)
	}
}

// helloWith connects and says hello naming broadcasts; it returns the
// device and the reply's broadcasts.
func (b *bcastHarness) helloWith(have map[string]string) (*device, map[string]any) {
	b.t.Helper()
	d := b.connect()
	d.send(map[string]any{"messageType": "hello", "use_webpush": true, "broadcasts": have})
	f := d.expect(pushproto.TypeHello)
	if f.Status != 200 {
		b.t.Fatalf("hello reply %+v", f)
	}
	d.uaid = f.UAID
	return d, f.Broadcasts
}

func (d *device) subscribeBroadcasts(have map[string]string) {
	d.t.Helper()
	d.send(map[string]any{"messageType": "broadcast_subscribe", "broadcasts": have})
}

// expectBroadcast checks the next frame is a broadcast with exactly want.
func (d *device) expectBroadcast(want map[string]any) {
	d.t.Helper()
	f := d.expect(pushproto.TypeBroadcast)
	if !equalJSON(f.Broadcasts, want) {
		d.t.Fatalf("broadcast %v, want %v", f.Broadcasts, want)
	}
}

func equalJSON(got, want map[string]any) bool {
	return fmt.Sprint(got) == fmt.Sprint(want) // fmt sorts map keys
}

var notFound = "Broadcast not found"

// TestBroadcastHello: hello's reply holds the current version of each
// named id the device has at another version, and the unknown ids under
// "errors"; {} when there is nothing to say.
func TestBroadcastHello(t *testing.T) {
	b := newBcastHarness(t, map[string]string{"a": "v2", "b": "v1"}, nil)
	_, got := b.helloWith(map[string]string{"a": "v1", "b": "v1", "x": "v0"})
	want := map[string]any{"a": "v2", "errors": map[string]any{"x": notFound}}
	if !equalJSON(got, want) {
		t.Fatalf("hello broadcasts %v, want %v", got, want)
	}
	if _, got := b.helloWith(map[string]string{"a": "v2", "b": "v1"}); len(got) != 0 {
		t.Fatalf("hello with current versions: broadcasts %v, want {}", got)
	}
	if _, got := b.helloWith(nil); len(got) != 0 {
		t.Fatalf("hello without broadcasts: %v, want {}", got)
	}
	// The first hello subscribed a and b (x is unknown: not remembered),
	// the second a and b.
	if got := b.m.Value("pushrelay_broadcast_subscriptions"); got != 4 {
		t.Fatalf("subscriptions = %v, want 4", got)
	}
}

// TestBroadcastSubscribe: broadcast_subscribe answers as hello does, with
// no frame when there is nothing to say; an unknown id is answered and
// not subscribed, so its later creation is not sent (as autopush).
func TestBroadcastSubscribe(t *testing.T) {
	b := newBcastHarness(t, map[string]string{"a": "v2", "b": "v1"}, nil)
	d, _ := b.helloWith(nil)
	d.subscribeBroadcasts(map[string]string{"a": "v1"})
	d.expectBroadcast(map[string]any{"a": "v2"})
	d.subscribeBroadcasts(map[string]string{"b": "v1", "a": "v2"})
	d.subscribeBroadcasts(map[string]string{"x": "1"})
	d.expectBroadcast(map[string]any{"errors": map[string]any{"x": notFound}})
	d.expectNone(100 * time.Millisecond)

	b.set("x", "2")
	b.set("b", "v2")
	d.expectBroadcast(map[string]any{"b": "v2"})
	d.expectNone(100 * time.Millisecond)
	if got := b.m.Value(`pushrelay_broadcast_frames_total{kind="subscribe"}`); got != 2 {
		t.Fatalf("subscribe answers = %v, want 2", got)
	}
}

// TestBroadcastNoRegistry: without a source of broadcasts every id is
// answered as not found, as before broadcasts were served.
func TestBroadcastNoRegistry(t *testing.T) {
	h := newHarness(t, nil)
	d := h.connect()
	d.send(map[string]any{"messageType": "hello", "use_webpush": true, "broadcasts": map[string]string{"a": "1"}})
	f := d.expect(pushproto.TypeHello)
	if want := map[string]any{"errors": map[string]any{"a": notFound}}; !equalJSON(f.Broadcasts, want) {
		t.Fatalf("hello broadcasts %v, want %v", f.Broadcasts, want)
	}
	d.subscribeBroadcasts(map[string]string{"b": "1"})
	d.expectBroadcast(map[string]any{"errors": map[string]any{"b": notFound}})
	d.subscribeBroadcasts(map[string]string{})
	d.expectNone(100 * time.Millisecond)
}

// TestBroadcastFanOut: a change goes once to every connected device
// subscribed to its id, in one frame encoded once per delta; devices not
// subscribed get nothing; setting the current version again sends
// nothing.
func TestBroadcastFanOut(t *testing.T) {
	b := newBcastHarness(t, map[string]string{"a": "1", "b": "1"}, nil)
	var onlyA, onlyB, both, none []*device
	for range 10 {
		d, _ := b.helloWith(map[string]string{"a": "1"})
		onlyA = append(onlyA, d)
	}
	for range 4 {
		d, _ := b.helloWith(map[string]string{"b": "1"})
		onlyB = append(onlyB, d)
	}
	for range 3 {
		d, _ := b.helloWith(map[string]string{"a": "1"})
		d.subscribeBroadcasts(map[string]string{"b": "1"})
		both = append(both, d)
	}
	for range 3 {
		d, _ := b.helloWith(nil)
		none = append(none, d)
	}
	all := slicesConcat(onlyA, onlyB, both, none)
	for _, d := range all {
		d.c.shared.Store(true)
		d.send(`{}`) // a round trip: every subscribe above is handled
		d.expect(pushproto.TypePing)
	}

	b.set("a", "2")
	var first unsafe.Pointer
	for _, d := range slicesConcat(onlyA, both) {
		raw := <-d.c.out
		f, err := pushproto.DecodeServer(raw)
		if err != nil || f.MessageType != pushproto.TypeBroadcast || !equalJSON(f.Broadcasts, map[string]any{"a": "2"}) {
			t.Fatalf("after a change: %s", raw)
		}
		if first == nil {
			first = unsafe.Pointer(unsafe.SliceData(raw))
		} else if unsafe.Pointer(unsafe.SliceData(raw)) != first {
			t.Fatal("the same delta was encoded more than once")
		}
	}
	b.set("a", "2") // unchanged
	for _, d := range all {
		d.expectNone(50 * time.Millisecond)
	}

	if _, err := b.reg.Set(context.Background(), "test", map[string]string{"a": "3", "b": "3"}); err != nil {
		t.Fatal(err)
	}
	for _, d := range onlyA {
		d.expectBroadcast(map[string]any{"a": "3"})
	}
	for _, d := range onlyB {
		d.expectBroadcast(map[string]any{"b": "3"})
	}
	for _, d := range both {
		d.expectBroadcast(map[string]any{"a": "3", "b": "3"})
	}
	for _, d := range all {
		d.expectNone(50 * time.Millisecond)
	}
	if got, want := b.m.Value(`pushrelay_broadcast_frames_total{kind="change"}`), float64(13+17); got != want {
		t.Fatalf("change frames = %v, want %v", got, want)
	}
}

func slicesConcat(ss ...[]*device) []*device {
	var out []*device
	for _, s := range ss {
		out = append(out, s...)
	}
	return out
}

// TestBroadcastStuckDevice: a device whose writer is stuck on a write
// delays nobody; it gets the changes that came meanwhile in one frame
// once the write is done, and nothing twice.
func TestBroadcastStuckDevice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBcastHarness(t, map[string]string{"a": "1", "b": "1"}, nil)
		stuck, _ := b.helloWith(map[string]string{"a": "1", "b": "1"})
		other, _ := b.helloWith(map[string]string{"a": "1"})
		synctest.Wait()

		stuck.c.stick(0)
		stuck.send(`{}`) // the answer's write blocks
		synctest.Wait()
		if stuck.c.writers.Load() != 1 {
			t.Fatal("the stuck device's writer is not blocked")
		}
		start := time.Now()
		// Waiting between the changes lets the other device's writer
		// finish each frame: only the stuck device defers.
		b.set("a", "2")
		synctest.Wait()
		b.set("b", "2")
		synctest.Wait()
		b.set("a", "3")
		if el := time.Since(start); el != 0 {
			t.Fatalf("Set took %s of the bubble's time", el)
		}
		synctest.Wait()
		for _, v := range []string{"2", "3"} {
			select {
			case raw := <-other.c.out:
				f, _ := pushproto.DecodeServer(raw)
				if !equalJSON(f.Broadcasts, map[string]any{"a": v}) {
					t.Fatalf("other device got %s, want a=%s", raw, v)
				}
			default:
				t.Fatalf("other device has not got a=%s while one device is stuck", v)
			}
		}
		if got := b.m.Value("pushrelay_broadcast_deferred_total"); got != 3 {
			t.Fatalf("deferred = %v, want 3", got)
		}

		stuck.c.unstick()
		synctest.Wait()
		stuck.expect(pushproto.TypePing)
		stuck.expectBroadcast(map[string]any{"a": "3", "b": "2"})
		stuck.expectNone(time.Second)
		b.set("b", "3")
		stuck.expectBroadcast(map[string]any{"b": "3"})
		if got := b.m.Value(`pushrelay_broadcast_frames_total{kind="deferred_change"}`); got != 1 {
			t.Fatalf("deferred frames = %v, want 1", got)
		}
	})
}

// TestBroadcastSessionEndUnsubscribes: a session that ends leaves the
// index: nothing is kept for it and later changes cost it nothing.
func TestBroadcastSessionEndUnsubscribes(t *testing.T) {
	b := newBcastHarness(t, map[string]string{"a": "1", "b": "1"}, nil)
	var ds []*device
	for range 20 {
		d, _ := b.helloWith(map[string]string{"a": "1", "b": "1"})
		ds = append(ds, d)
	}
	waitFor(t, "subscriptions", func() bool { return b.m.Value("pushrelay_broadcast_subscriptions") == 40 })
	for _, d := range ds[:15] {
		d.c.hangUp()
	}
	for _, d := range ds[:15] {
		d.released(5 * time.Second)
	}
	waitFor(t, "subscriptions after hang-ups", func() bool { return b.m.Value("pushrelay_broadcast_subscriptions") == 10 })
	b.set("a", "2")
	for _, d := range ds[15:] {
		d.expectBroadcast(map[string]any{"a": "2"})
	}
	if got := b.m.Value(`pushrelay_broadcast_frames_total{kind="change"}`); got != 5 {
		t.Fatalf("change frames = %v, want 5 (only live sessions)", got)
	}
	b.hub.Close()
	if got := b.m.Value("pushrelay_broadcast_subscriptions"); got != 0 {
		t.Fatalf("subscriptions after close = %v, want 0", got)
	}
	b.set("a", "3") // no session: nothing to do, nothing kept
}

// TestBroadcastSubscriptionCap: a session holds at most
// MaxSubscriptions; ids past it are not subscribed.
func TestBroadcastSubscriptionCap(t *testing.T) {
	ids := map[string]string{}
	for i := range relay.MaxSubscriptions + 10 {
		ids[fmt.Sprintf("id%03d", i)] = "1"
	}
	b := newBcastHarness(t, ids, nil)
	first := map[string]string{}
	for i := range relay.MaxSubscriptions {
		first[fmt.Sprintf("id%03d", i)] = "1"
	}
	d, got := b.helloWith(first)
	if len(got) != 0 {
		t.Fatalf("hello broadcasts %v", got)
	}
	d.subscribeBroadcasts(map[string]string{"id070": "0", "id071": "0"})
	d.send(`{}`)
	d.expect(pushproto.TypePing) // no broadcast answer: nothing subscribed
	if got := b.m.Value("pushrelay_broadcast_subscriptions_refused_total"); got != 2 {
		t.Fatalf("refused = %v, want 2", got)
	}
	if got := b.m.Value("pushrelay_broadcast_subscriptions"); got != relay.MaxSubscriptions {
		t.Fatalf("subscriptions = %v", got)
	}
}

// TestBroadcastConcurrentSubscribeAndSet: devices that subscribe while
// versions change all end with the last version, each version at most
// once and in order.
func TestBroadcastConcurrentSubscribeAndSet(t *testing.T) {
	b := newBcastHarness(t, map[string]string{"a": "0"}, nil)
	const devices, changes = 30, 40
	ds := make([]*device, devices)
	for i := range ds {
		ds[i], _ = b.helloWith(nil)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 1; i <= changes; i++ {
			b.set("a", fmt.Sprint(i))
		}
	})
	for _, d := range ds {
		d.subscribeBroadcasts(map[string]string{"a": "0"})
	}
	wg.Wait()
	for i, d := range ds {
		last := -1
		for last != changes {
			f := d.next(5 * time.Second)
			if f.MessageType != pushproto.TypeBroadcast {
				t.Fatalf("device %d: %s frame", i, f.MessageType)
			}
			var v int
			fmt.Sscan(fmt.Sprint(f.Broadcasts["a"]), &v)
			if v <= last {
				t.Fatalf("device %d: a=%d after a=%d", i, v, last)
			}
			last = v
		}
		d.expectNone(20 * time.Millisecond)
	}
}

// BenchmarkBroadcastFanOut: one version change (stored, then sent) to
// 10,000 subscribed sessions, until every session's writer has written
// its frame to its in-memory connection. ns/device is the time per op
// over the sessions; set-ns/op the time Set took (the store's commit and
// the queueing in every outbox).
func BenchmarkBroadcastFanOut(b *testing.B) {
	const n = 10000
	bh := newBcastHarness(b, map[string]string{"a": "0"}, nil)
	ds := make([]*device, n)
	for i := range ds {
		c := newPipeConn(true)
		c.out = make(chan []byte, 4) // 10,000 default buffers would take 1 GB
		c.shared.Store(true)
		bh.hub.Accept(c)
		d := &device{t: b, h: bh.harness, c: c}
		d.send(map[string]any{"messageType": "hello", "use_webpush": true, "broadcasts": map[string]string{"a": "0"}})
		d.expect(pushproto.TypeHello)
		ds[i] = d
	}
	v := 0
	var inSet time.Duration
	for b.Loop() {
		v++
		start := time.Now()
		bh.set("a", strconv.Itoa(v))
		inSet += time.Since(start)
		for _, d := range ds {
			<-d.c.out
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/device")
	// Set returns once the change is stored and queued in every outbox.
	b.ReportMetric(float64(inSet.Nanoseconds())/float64(b.N), "set-ns/op")
}

// TestBroadcastChangesWhileDevicesLeave: changes racing sessions that end
// leave nothing behind: no subscription and no queued byte.
func TestBroadcastChangesWhileDevicesLeave(t *testing.T) {
	b := newBcastHarness(t, map[string]string{"a": "0", "b": "0"}, nil)
	const devices = 30
	ds := make([]*device, devices)
	for i := range ds {
		ds[i], _ = b.helloWith(map[string]string{"a": "0", "b": "0"})
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 1; i <= 50; i++ {
			if _, err := b.reg.Set(context.Background(), "test", map[string]string{"a": strconv.Itoa(i), "b": strconv.Itoa(i % 7)}); err != nil {
				t.Error(err)
				return
			}
		}
	})
	for i, d := range ds {
		if i%2 == 0 {
			// Some leave with frames still queued, each write failing
			// after a write timeout as on a socket.
			d.c.stick(500 * time.Millisecond)
		}
		d.c.hangUp()
	}
	wg.Wait()
	for _, d := range ds {
		d.released(5 * time.Second)
	}
	waitFor(t, "subscriptions gone", func() bool { return b.m.Value("pushrelay_broadcast_subscriptions") == 0 })
	waitFor(t, "outboxes empty", func() bool { return b.m.Value("pushrelay_device_outbox_bytes") == 0 })
}
