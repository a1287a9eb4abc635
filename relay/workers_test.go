package relay

import (
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// Workers run every task, leave when idle, and come back for new work.
func TestWorkersRunAndRetire(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var wg sync.WaitGroup
		w := newWorkers(&wg, 4, 10*time.Millisecond)
		running := func() int {
			w.mu.Lock()
			defer w.mu.Unlock()
			return w.running
		}
		waitRetired := func() {
			t.Helper()
			for deadline := time.Now().Add(10 * time.Second); running() > 0; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("%d idle workers did not exit", running())
				}
			}
		}
		var done atomic.Int64
		var tasks sync.WaitGroup
		for range 100 {
			tasks.Add(1)
			wg.Add(1) // the caller's count, as a session holds one
			w.run(func() {
				defer tasks.Done()
				defer wg.Done()
				done.Add(1)
			})
		}
		tasks.Wait()
		if done.Load() != 100 {
			t.Fatalf("%d of 100 tasks ran", done.Load())
		}
		if n := running(); n > 4 {
			t.Fatalf("%d workers, max 4", n)
		}
		waitRetired()
		tasks.Add(1)
		wg.Add(1)
		w.run(func() { defer tasks.Done(); defer wg.Done() })
		tasks.Wait()
		waitRetired()
		w.stop()
		wg.Wait()
	})
}

// Two tasks queued while one worker is idle both start at once: the
// second does not wait behind the first (which, were it to block, would
// hold it up for as long).
func TestWorkersSecondTaskNotBehindFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var wg sync.WaitGroup
		w := newWorkers(&wg, 4, time.Hour)
		wg.Add(1)
		w.run(wg.Done) // leaves one idle worker
		synctest.Wait()
		release := make(chan struct{})
		second := make(chan struct{})
		// Queued together, before the woken worker can take the lock.
		w.mu.Lock()
		wg.Add(2)
		w.enqueueLocked(func() { defer wg.Done(); <-release })
		w.enqueueLocked(func() { defer wg.Done(); close(second) })
		w.mu.Unlock()
		select {
		case <-second:
		case <-time.After(time.Minute):
			t.Fatal("the second task waited behind the first")
		}
		close(release)
		w.stop()
		wg.Wait()
	})
}
