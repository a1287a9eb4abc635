package kick

import (
	"net/netip"
	"time"
)

// bucket is a token bucket refilled at rate per second up to burst.
type bucket struct {
	tokens float64
	last   time.Time
}

// take spends one token if there is one; otherwise it reports how long
// until there will be.
func (b *bucket) take(now time.Time, rate float64, burst int) (bool, time.Duration) {
	if rate <= 0 {
		return true, 0
	}
	if b.last.IsZero() {
		b.tokens = float64(burst)
	} else if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.tokens = min(float64(burst), b.tokens+dt*rate)
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / rate * float64(time.Second))
}

// full reports whether b has refilled to burst by now, i.e. forgetting it
// changes nothing.
func (b *bucket) full(now time.Time, rate float64, burst int) bool {
	return b.tokens+now.Sub(b.last).Seconds()*rate >= float64(burst)
}

// targets limits datagrams per destination (the caller chooses the key: a
// host with port 0, or a host and port). Its table is bounded: buckets that
// have refilled are forgotten, and when it is still full a new target
// must wait.
type targets struct {
	rate  float64
	burst int
	max   int
	m     map[netip.AddrPort]*bucket
}

func newTargets(rate float64, burst, max int) *targets {
	return &targets{rate: rate, burst: burst, max: max, m: make(map[netip.AddrPort]*bucket)}
}

// take reports whether a datagram may go to a now; full is true when it
// may not because the table is full.
func (t *targets) take(a netip.AddrPort, now time.Time) (ok bool, wait time.Duration, full bool) {
	if t.rate <= 0 {
		return true, 0, false
	}
	b := t.m[a]
	if b == nil {
		if len(t.m) >= t.max {
			for k, v := range t.m {
				if v.full(now, t.rate, t.burst) {
					delete(t.m, k)
				}
			}
			if len(t.m) >= t.max {
				return false, time.Second / 10, true
			}
		}
		b = &bucket{}
		t.m[a] = b
	}
	ok, wait = b.take(now, t.rate, t.burst)
	return ok, wait, false
}
