package relay_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/pushproto"
)

// These tests run in a synctest bubble: time is virtual and moves only when
// every goroutine of the test waits on it. A healthy device's notification
// that arrives "within 1s" there arrived without anything waiting on a
// stuck device's write timeout, however busy the machine is.

// TestStuckDevicesHurtOnlyThemselves: three devices stop reading while
// messages are posted to them. Pushes return at once, a healthy device
// gets each of its notifications with no delay, a connection that says
// nothing is closed at its hello timeout, the stuck devices hold no more
// than their outbox budget, and they are closed at the write timeout with
// their stored messages still waiting.
func TestStuckDevicesHurtOnlyThemselves(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { testStuckDevices(t, mode.notify) })
		})
	}
}

func testStuckDevices(t *testing.T, notify bool) {
	const (
		nStuck       = 3
		stored       = 200
		direct       = 20
		outboxBytes  = 16 << 10
		writeTimeout = 10 * time.Second
		helloTimeout = 3 * time.Second
	)
	reg := metrics.NewRegistry()
	h := newHarnessMode(t, notify, func(c *relay.Config) {
		c.Metrics = reg
		c.OutboxBytes = outboxBytes
		c.HelloTimeout = helloTimeout
	})
	healthy := h.hello("")
	hs := healthy.subscribe()

	var stuck []*device
	var subs []*sub
	for range nStuck {
		d := h.hello("")
		subs = append(subs, d.subscribe())
		d.c.stick(writeTimeout)
		stuck = append(stuck, d)
	}
	silent := h.connect() // never says hello
	helloFrom := time.Now()

	data := strings.Repeat("x", 4000)
	for i := range stored {
		for _, s := range subs {
			h.mustPush(s, time.Hour, fmt.Sprintf("%d%s", i, data))
		}
		if i%10 == 0 {
			for _, s := range subs {
				h.mustPush(s, 0, "ttl0"+data)
			}
		}
	}
	// Pushes took no virtual time: none waited for a stuck socket.
	if d := time.Since(helloFrom); d > 0 {
		t.Errorf("pushing to stuck devices took %s of virtual time", d)
	}

	// The healthy device gets every push at once.
	for i := range 20 {
		h.mustPush(hs, time.Hour, fmt.Sprint("healthy ", i))
		n := healthy.next(time.Millisecond)
		if got := payload(t, n); got != fmt.Sprint("healthy ", i) {
			t.Fatalf("healthy device got %q", got)
		}
		healthy.ack(n)
		time.Sleep(100 * time.Millisecond)
	}

	// What the stuck devices hold is their outbox, not their messages.
	if got, limit := reg.Value("pushrelay_device_outbox_bytes"), float64(nStuck*(outboxBytes+16<<10)); got > limit {
		t.Errorf("outbox bytes %.0f, want at most %.0f", got, limit)
	}

	// The silent connection is closed at its hello timeout (within the
	// keepalive's tick), whatever the stuck devices' writers are doing.
	code, reason := silent.closedWith(helloTimeout + 2*time.Second)
	if el := time.Since(helloFrom); code != pushproto.CloseServerError || reason != "hello timeout" || el > helloTimeout+time.Second {
		t.Errorf("silent connection closed with %d %q after %s, want hello timeout after %s", code, reason, el, helloTimeout)
	}

	// The stuck devices are closed once a write has waited writeTimeout;
	// everything stored for them still waits.
	for _, d := range stuck {
		d.released(writeTimeout + 5*time.Second)
	}
	if got := reg.Value(`pushrelay_device_write_failures_total{reason="timeout"}`); got != nStuck {
		t.Errorf("write failures (timeout) = %v, want %d", got, nStuck)
	}
	if got := h.waiting(); got != nStuck*stored {
		t.Errorf("waiting messages = %d, want %d", got, nStuck*stored)
	}
	var drops float64
	for _, r := range []string{"ttl0_outbox_full", "ttl0_closed", "ttl0_write_failed"} {
		drops += reg.Value(`pushrelay_messages_dropped_total{reason="` + r + `"}`)
	}
	if want := float64(nStuck * stored / 10); drops != want {
		t.Errorf("TTL-0 messages dropped = %v, want %v (every one sent to a stuck device)", drops, want)
	}
	if got := reg.Value("pushrelay_device_outbox_bytes"); got != 0 {
		t.Errorf("outbox bytes after the stuck devices closed = %v", got)
	}
	healthy.expectNone(time.Second)
}

// TestFloodWithoutReadingIsClosed: a device that keeps asking without
// reading the answers is closed once its replies fill its outbox.
func TestFloodWithoutReadingIsClosed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := metrics.NewRegistry()
		h := newHarness(t, func(c *relay.Config) { c.Metrics = reg; c.OutboxBytes = 4 << 10 })
		d := h.hello("")
		d.c.stick(0)
		req := `{"messageType":"broadcast_subscribe","broadcasts":{` + strings.Repeat(`"b":"v",`, 40) + `"c":"v"}}`
		for range 500 {
			d.send(req)
		}
		synctest.Wait()
		if got := reg.Value(`pushrelay_device_write_failures_total{reason="outbox_full"}`); got != 1 {
			t.Fatalf("outbox_full closes = %v, want 1", got)
		}
		d.released(5 * time.Second)
	})
}

// TestTransportPingAnsweredByWriter: the device's pings are answered by
// the session's writer, not on the reading goroutine.
func TestTransportPingAnsweredByWriter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, nil)
		d := h.hello("")
		d.c.devicePing([]byte("p1"))
		synctest.Wait()
		d.c.mu.Lock()
		got := d.c.pongsOut
		d.c.mu.Unlock()
		if len(got) != 1 || !bytes.Equal(got[0], []byte("p1")) {
			t.Fatalf("pongs written: %q", got)
		}
	})
}

// TestPartialFrameHoldsNoWorker: a device that sends half a frame and
// stops is waited for on a goroutine of its session's own, not on one of
// the hub's shared workers, which other devices' frames need.
func TestPartialFrameHoldsNoWorker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, nil)
		slow := h.hello("")
		slow.c.partial.Store(true)
		synctest.Wait()  // the session is armed again after its hello
		slow.c.arrived() // the poller sees bytes: half a frame
		synctest.Wait()
		slow.c.mu.Lock()
		reader := slow.c.partialReader
		slow.c.mu.Unlock()
		if reader == "" {
			t.Fatal("the partial frame was not read")
		}
		if strings.Contains(reader, "(*workers).loop") || !strings.Contains(reader, "goWait") {
			t.Fatalf("a partial frame is waited for on a shared worker:\n%s", reader)
		}
		// The rest arrives: the session goes on as usual.
		slow.c.partial.Store(false)
		slow.send(`{"messageType":"ping"}`)
		slow.expect(pushproto.TypePing)
		other := h.hello("")
		other.send(`{"messageType":"ping"}`)
		other.expect(pushproto.TypePing)
	})
}
