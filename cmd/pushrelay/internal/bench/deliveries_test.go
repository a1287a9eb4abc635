package bench

import (
	"fmt"
	"testing"
	"time"
)

// A notification is matched to its POST by id whichever is read first,
// and never by order: two POSTs to one device answered in one order and
// delivered in the other keep their own times.
func TestDeliveriesMatchByID(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	d := newDeliveries(t0, 4)

	// a: the 201 first, then the notification.
	d.posted([]byte("http://relay/m/aaa"), at(1))
	d.notified("aaa", at(4))
	// b and c posted to one device: c is delivered before b, and c's
	// notification is read before its 201.
	d.posted([]byte("http://relay/m/bbb"), at(2))
	d.notified("ccc", at(5))
	d.posted([]byte("http://relay/m/ccc"), at(3))
	d.notified("bbb", at(10))

	want := []time.Duration{3 * time.Millisecond, 2 * time.Millisecond, 8 * time.Millisecond}
	if fmt.Sprint(d.lat) != fmt.Sprint(want) {
		t.Fatalf("latencies %v, want %v", d.lat, want)
	}
	if p, n := d.unmatched(); p != 0 || n != 0 || len(d.pending) != 0 {
		t.Fatalf("unmatched %d posts, %d notifications, %d pending; want none", p, n, len(d.pending))
	}
	if d.early != 1 {
		t.Fatalf("%d notifications counted before their 201, want 1 (c)", d.early)
	}

	// What never matches is counted on its side: a 201 with no
	// notification, one with no id, a notification of no POST, and one
	// read twice before its 201.
	d.posted([]byte("http://relay/m/ddd"), at(11))
	d.posted(nil, at(12))
	d.notified("eee", at(13))
	d.notified("fff", at(14))
	d.notified("fff", at(15))
	if p, n := d.unmatched(); p != 2 || n != 3 {
		t.Fatalf("unmatched %d posts, %d notifications; want 2 and 3", p, n)
	}
	if len(d.lat) != 3 {
		t.Fatalf("%d latencies after the unmatched ones, want 3", len(d.lat))
	}
}

// The load generator's hot loop pays at most the one string of a 201 read
// before its notification, and nothing when the notification came first.
func TestDeliveriesAllocations(t *testing.T) {
	const n = 1000
	ids := make([]string, n)
	locs := make([][]byte, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("gAAAAAB%080d", i)
		locs[i] = []byte("http://127.0.0.1:1/m/" + ids[i])
	}
	now := time.Now()
	d := newDeliveries(now, 0)
	round := func(postFirst bool) {
		d.lat = d.lat[:0]
		for i := range ids {
			if postFirst {
				d.posted(locs[i], now)
				d.notified(ids[i], now)
			} else {
				d.notified(ids[i], now)
				d.posted(locs[i], now)
			}
		}
	}
	round(true) // grows the map and the slice once
	if a := testing.AllocsPerRun(5, func() { round(true) }); a > n+1 {
		t.Errorf("201 first: %.0f allocations per %d messages", a, n)
	}
	if a := testing.AllocsPerRun(5, func() { round(false) }); a > 1 {
		t.Errorf("notification first: %.0f allocations per %d messages", a, n)
	}
}
