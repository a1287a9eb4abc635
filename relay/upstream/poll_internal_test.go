package upstream

import (
	"context"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/store"
)

// testLink is a Link marked running under ctx without Run (no scheduler,
// nothing read from st), to check who is held and when polls are due.
// Its URL refuses connections: held sessions it starts fail and back off.
func testLink(t *testing.T, ctx context.Context, st *store.Store, cfg Config) *Link {
	t.Helper()
	cfg.URL, cfg.Store = "ws://127.0.0.1:1", st
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l.ctx = ctx
	return l
}

func openStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(store.Options{Path: filepath.Join(t.TempDir(), "s.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func uaid(i int) push.UAID {
	var u push.UAID
	u[0], u[1], u[2] = 1, byte(i>>8), byte(i)
	return u
}

// 10,000 polled devices at start poll spread evenly over one interval,
// not at once: each tenth of the interval gets about a tenth of them.
func TestFirstPollsSpread(t *testing.T) {
	st := openStore(t)
	synctest.Test(t, func(t *testing.T) {
		const n, interval = 10000, 15 * time.Minute
		l := testLink(t, t.Context(), st, Config{MaxSessions: 1, PollInterval: interval})
		l.sessions[uaid(1<<15)] = &held{} // the one session, taken
		now := time.Now()
		for i := range n {
			l.add(store.UpstreamID{Device: uaid(i), Upstream: uaid(i)}, now, false)
		}
		if len(l.queue) != n {
			t.Fatalf("%d polled, want %d", len(l.queue), n)
		}
		var tenths [10]int
		for _, d := range l.queue {
			off := d.due.Sub(now)
			if off < 0 || off >= interval {
				t.Fatalf("first poll due %v after start, want within the interval", off)
			}
			tenths[off*10/interval]++
		}
		for i, c := range tenths {
			if c < n/10*8/10 || c > n/10*12/10 {
				t.Errorf("tenth %d of the interval has %d first polls (all: %v)", i, c, tenths)
			}
		}
		for range 1000 {
			if d := l.nextInterval(); d < interval*9/10 || d > interval*11/10 {
				t.Fatalf("next interval %v, want within a tenth of %v", d, interval)
			}
		}
	})
}

// A polled device that connects here takes the place of the least
// recently active held device not connected here, which is polled from
// then on, one interval later; with every held device connected, it
// stays polled.
func TestPromotionEvictsLeastActive(t *testing.T) {
	st := openStore(t)
	synctest.Test(t, func(t *testing.T) {
		const interval = time.Hour
		ctx, cancel := context.WithCancel(t.Context())
		reg := metrics.NewRegistry()
		l := testLink(t, ctx, st, Config{MaxSessions: 3, PollInterval: interval, Metrics: reg})
		t0 := time.Now()
		id := func(i int) store.UpstreamID { return store.UpstreamID{Device: uaid(i), Upstream: uaid(i)} }
		l.add(id(0), t0, true)                   // held, connected here, least active
		l.add(id(1), t0.Add(time.Minute), false) // held, away: the victim
		l.add(id(2), t0.Add(time.Hour), false)   // held, away, more active
		l.add(id(3), t0.Add(-time.Hour), false)  // polled
		if len(l.sessions) != 3 || l.devs[uaid(3)].idx < 0 {
			t.Fatalf("held %d, the fourth queued at %d", len(l.sessions), l.devs[uaid(3)].idx)
		}
		time.Sleep(time.Minute)
		l.DeviceOnline(uaid(3))
		for _, i := range []int{0, 2, 3} {
			if l.sessions[uaid(i)] == nil {
				t.Errorf("device %d not held", i)
			}
		}
		v := l.devs[uaid(1)]
		if l.sessions[uaid(1)] != nil || v.idx < 0 {
			t.Fatal("the least active away device was not demoted to polled")
		}
		if off := v.due.Sub(time.Now()); off < interval*9/10 || off > interval*11/10 {
			t.Errorf("the demoted device's first poll due in %v, want about %v", off, interval)
		}
		if d := reg.Value("pushrelay_upstream_demotions_total"); d != 1 {
			t.Errorf("%v demotions", d)
		}
		if p := reg.Value("pushrelay_upstream_polled"); p != 1 {
			t.Errorf("polled gauge %v, want 1", p)
		}
		// Everyone held is connected here now but 2; once 2 connects too,
		// a polled device that connects stays polled.
		l.DeviceOnline(uaid(2))
		l.DeviceOnline(uaid(1))
		if l.sessions[uaid(1)] != nil || v.idx < 0 {
			t.Error("a device was evicted though every held one is connected here")
		}
		// Gone from here: 0 is the least active away, and makes room.
		l.DeviceOffline(uaid(0))
		time.Sleep(time.Minute)
		l.DeviceOnline(uaid(1))
		if l.sessions[uaid(1)] == nil || l.sessions[uaid(0)] != nil {
			t.Error("device 1 not held in place of device 0")
		}
		cancel()
		l.wg.Wait()
	})
}
