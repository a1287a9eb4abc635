package upstream

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// Twenty callers at once at 100 per second: the first goes at once, the
// last 190 ms later, each 10 ms after the one before.
func TestPacerSpacesCallers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &pacer{every: 10 * time.Millisecond}
		start := time.Now()
		var (
			mu  sync.Mutex
			ats []time.Duration
			wg  sync.WaitGroup
		)
		for range 20 {
			wg.Go(func() {
				if err := p.wait(context.Background(), nil); err != nil {
					t.Error(err)
				}
				mu.Lock()
				ats = append(ats, time.Since(start))
				mu.Unlock()
			})
		}
		wg.Wait()
		seen := map[time.Duration]bool{}
		for _, at := range ats {
			if at%(10*time.Millisecond) != 0 || at > 190*time.Millisecond || seen[at] {
				t.Errorf("turns at %v", ats)
				break
			}
			seen[at] = true
		}
		// Idle for a while: the next goes at once.
		time.Sleep(time.Second)
		before := time.Now()
		p.wait(context.Background(), nil)
		if d := time.Since(before); d != 0 {
			t.Errorf("after an idle second the next waited %v", d)
		}
	})
}

// jitter stays in [d/2, d].
func TestJitterBounds(t *testing.T) {
	for _, d := range []time.Duration{time.Millisecond, 5 * time.Second, 10 * time.Minute} {
		for range 1000 {
			if j := jitter(d); j < d/2 || j > d {
				t.Fatalf("jitter(%v) = %v", d, j)
			}
		}
	}
}

// A receive from skip ends a wait at once: a register's connect is not
// queued behind a reconnect storm.
func TestPacerSkip(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := pacer{every: time.Hour}
		if err := p.wait(context.Background(), nil); err != nil {
			t.Fatal(err)
		}
		skip := make(chan struct{}, 1)
		start := time.Now()
		go func() {
			time.Sleep(time.Second)
			skip <- struct{}{}
		}()
		if err := p.wait(context.Background(), skip); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d != time.Second {
			t.Errorf("waited %v, want 1s (the skip)", d)
		}
	})
}
