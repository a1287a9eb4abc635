package bench

import "testing"

// TestLoadGroupShares: the loops' senders, messages and rate add up to
// what was asked, each loop's in proportion to its senders.
func TestLoadGroupShares(t *testing.T) {
	for _, c := range []struct {
		senders, threads int
		total, rate      int64
	}{{64, 2, 30000, 0}, {8, 3, 601, 4000}, {3, 2, 3001, 1000}, {5, 5, 7, 3}} {
		var senders, total, rate int64
		before := int64(0)
		for k := range c.threads {
			n := share(int64(c.senders), c.threads, k)
			m, r := proportion(c.total, before, n, int64(c.senders)), proportion(c.rate, before, n, int64(c.senders))
			before += n
			senders, total, rate = senders+n, total+m, rate+r
			if want := c.total * n / int64(c.senders); m < want-1 || m > want+1 {
				t.Errorf("%+v: loop %d of %d senders gets %d messages, want about %d", c, k, n, m, want)
			}
		}
		if senders != int64(c.senders) || total != c.total || rate != c.rate {
			t.Errorf("%+v: loops add up to %d senders, %d messages, %d/s", c, senders, total, rate)
		}
	}
}
