package discovery

import (
	"net/netip"
	"time"

	"github.com/pushrelay/pushrelay/relay/metrics"
)

const (
	// maxSources bounds the limiter's table.
	maxSources = 1 << 16
	// sweepEvery is the least time between two sweeps of a full table, so
	// that a flood of new sources costs at most one scan per interval.
	sweepEvery = 100 * time.Millisecond
)

// limiter is a token bucket per source, in a table of at most max sources.
// A bucket that has refilled to the burst is forgotten when the table is
// full: a new bucket starts full, so forgetting it changes nothing. When no
// bucket can be forgotten, new sources are refused rather than let the table
// grow. There is no goroutine or timer: buckets refill lazily from the clock
// passed in. Not safe for concurrent use.
type limiter struct {
	rate    float64 // tokens per nanosecond
	burst   float64
	max     int
	base    time.Time // times are kept as nanoseconds since base
	swept   int64     // when the table was last swept
	buckets map[netip.Addr]bucket
	size    metrics.Gauge
}

type bucket struct {
	tokens float64
	last   int64 // when tokens was computed
}

func newLimiter(rate float64, burst, max int, now time.Time, size metrics.Gauge) *limiter {
	return &limiter{
		rate:    rate / float64(time.Second),
		burst:   float64(burst),
		max:     max,
		base:    now,
		swept:   -int64(sweepEvery),
		buckets: make(map[netip.Addr]bucket),
		size:    size,
	}
}

// allow spends a token of src's bucket and reports whether there was one.
func (l *limiter) allow(src netip.Addr, now time.Time) bool {
	key := sourceKey(src)
	t := int64(now.Sub(l.base))
	b, ok := l.buckets[key]
	if ok {
		b = l.refill(b, t)
	} else {
		if len(l.buckets) >= l.max && !l.sweep(t) {
			return false
		}
		b = bucket{tokens: l.burst, last: t}
	}
	allowed := b.tokens >= 1
	if allowed {
		b.tokens--
	}
	l.buckets[key] = b
	if !ok {
		l.size.Set(float64(len(l.buckets)))
	}
	return allowed
}

// refill returns b with the tokens earned since it was last computed. A clock
// that went backwards earns nothing.
func (l *limiter) refill(b bucket, t int64) bucket {
	if d := t - b.last; d > 0 {
		b.tokens = min(l.burst, b.tokens+float64(d)*l.rate)
		b.last = t
	}
	return b
}

// sweep forgets every full bucket, at most once per sweepEvery, and reports
// whether the table has room.
func (l *limiter) sweep(t int64) bool {
	if t-l.swept < int64(sweepEvery) {
		return false
	}
	l.swept = t
	for k, b := range l.buckets {
		if l.refill(b, t).tokens >= l.burst {
			delete(l.buckets, k)
		}
	}
	l.size.Set(float64(len(l.buckets)))
	return len(l.buckets) < l.max
}

// sourceKey is the unit of rate limiting: the IPv4 address, or the IPv6 /64,
// since one subscriber usually holds a whole /64 and could otherwise fill the
// table alone.
func sourceKey(a netip.Addr) netip.Addr {
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64) // never fails for a valid IPv6 address
		return p.Addr()
	}
	return a
}
