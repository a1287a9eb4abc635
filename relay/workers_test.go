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

// Tasks queued while a woken worker is on its way to the queue wake no
// other: that one takes the first and wakes the next worker for the rest.
// (Waking one per task woke most for nothing under load: a worker done
// with its task took the tasks before the woken ones were scheduled.)
func TestWorkersOneWokenAtATime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var wg sync.WaitGroup
		w := newWorkers(&wg, 4, time.Hour)
		// Two idle workers: two tasks that run at once.
		release := make(chan struct{})
		wg.Add(2)
		w.run(func() { defer wg.Done(); <-release })
		w.run(func() { defer wg.Done(); <-release })
		synctest.Wait()
		close(release)
		synctest.Wait()
		w.mu.Lock()
		if w.running != 2 || w.idle != 2 {
			t.Fatalf("%d workers, %d idle; want 2 and 2", w.running, w.idle)
		}
		before := w.woken
		// Queued together, as a burst queues an ack flush and a pump.
		var tasks sync.WaitGroup
		tasks.Add(2)
		wg.Add(2)
		w.enqueueLocked(func() { defer wg.Done(); tasks.Done() })
		w.enqueueLocked(func() { defer wg.Done(); tasks.Done() })
		if n := w.woken - before; n != 1 {
			t.Errorf("two tasks queued together woke %d workers, want 1", n)
		}
		w.mu.Unlock()
		tasks.Wait()
		w.stop()
		wg.Wait()
	})
}

// Tasks queued at once that all block each get a worker, up to max: each
// worker woken wakes the next before running its task.
func TestWorkersBlockedTasksUpToMax(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var wg sync.WaitGroup
		w := newWorkers(&wg, 4, time.Hour)
		release := make(chan struct{})
		var started atomic.Int64
		for range 6 {
			wg.Add(1)
			w.run(func() {
				defer wg.Done()
				started.Add(1)
				<-release
			})
		}
		synctest.Wait()
		if n := started.Load(); n != 4 {
			t.Fatalf("%d of 6 blocking tasks started with max 4, want 4", n)
		}
		close(release)
		synctest.Wait()
		if n := started.Load(); n != 6 {
			t.Fatalf("%d of 6 tasks ran", n)
		}
		// Idle again: a blocking task queued behind one woken worker still
		// gets another.
		block := make(chan struct{})
		done := make(chan struct{})
		w.mu.Lock()
		wg.Add(2)
		w.enqueueLocked(func() { defer wg.Done(); <-block })
		w.enqueueLocked(func() { defer wg.Done(); close(done) })
		w.mu.Unlock()
		<-done // would hang (a synctest deadlock) behind the first
		close(block)
		w.stop()
		wg.Wait()
	})
}
