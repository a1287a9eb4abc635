package relay

import (
	"sync"
	"time"
)

// workers runs the hub's short tasks (bursts of device frames, pumps, ack
// flushes, finishes) on goroutines that outlive a task and wait a while
// for the next. A fresh goroutine starts with a 2 KiB stack and grows it to
// decode JSON and call the store, copying as it goes; a reused one has
// grown already. At most max run at once; further tasks queue in order, so
// a wave of ten thousand pongs costs max stacks, not ten thousand. Idle
// workers exit after idleFor to twice that, so an idle relay keeps none:
// one timer, armed while any worker is idle, counts rounds of idleFor,
// and a worker that stayed idle through a whole round exits. (A timer per
// idle wait cost about 3% of the relay's CPU under load.)
//
// Tasks must not block for long: a task that waits on a device for an
// unbounded time belongs on its own goroutine (Hub.goWait).
type workers struct {
	wg      *sync.WaitGroup
	max     int
	idleFor time.Duration

	mu      sync.Mutex
	queue   []func()
	running int // workers alive
	idle    int // of which waiting for a task and not yet woken
	waking  int // of which woken or started and not yet back at the queue
	wake    *sync.Cond
	stopped bool
	round   uint64 // rounds of idleFor counted by the reaper
	reaping bool   // the reaper's timer is armed
	woken   uint64 // workers woken or started for a task, for tests
}

func newWorkers(wg *sync.WaitGroup, max int, idleFor time.Duration) *workers {
	w := &workers{wg: wg, max: max, idleFor: idleFor}
	w.wake = sync.NewCond(&w.mu)
	return w
}

// run queues f. The caller must hold a WaitGroup count (any live session
// does, and so does Run), so Add here is safe.
func (w *workers) run(f func()) {
	w.mu.Lock()
	w.enqueueLocked(f)
	w.mu.Unlock()
}

// enqueueLocked queues f and wakes or starts a worker for it, unless one
// is on its way to the queue already; w.mu is held.
func (w *workers) enqueueLocked(f func()) {
	w.queue = append(w.queue, f)
	if w.waking == 0 {
		w.wakeLocked()
	}
}

// wakeLocked wakes an idle worker, or starts one if there is room, to come
// for what is queued; w.mu is held.
//
// One worker on its way at a time, as Go's scheduler keeps one spinning
// thread: a worker is woken for the first task queued, and a task queued
// before it arrives wakes nobody. The worker that takes a task wakes
// another before running it if more wait, so no task waits behind one
// that blocks, only for the next worker to come. Waking a worker per task
// woke most for nothing under load (two wakes in three in bench
// throughput, two per message): a busy worker done with its task takes
// the next one before the woken worker is scheduled, which then only
// finds the queue empty and waits again.
func (w *workers) wakeLocked() {
	switch {
	case w.idle > 0:
		// The worker woken is no longer idle from now, not from when it
		// takes the lock.
		w.idle--
		w.waking++
		w.woken++
		w.wake.Signal()
	case w.running < w.max:
		w.running++
		w.waking++
		w.woken++
		w.wg.Add(1)
		go w.loop()
	}
}

func (w *workers) loop() {
	defer w.wg.Done()
	w.mu.Lock()
	w.waking-- // started to come for a task
	idleSince := w.round
	for {
		if len(w.queue) > 0 {
			f := w.queue[0]
			w.queue[0] = nil
			w.queue = w.queue[1:]
			if len(w.queue) > 0 && w.waking == 0 {
				w.wakeLocked() // for the next: f may block
			}
			w.mu.Unlock()
			f()
			w.mu.Lock()
			idleSince = w.round
			continue
		}
		if w.stopped || w.round-idleSince >= 2 {
			break // stopped, or idle from before one round to after the next
		}
		// Wait for work, but not for ever.
		w.idle++
		if !w.reaping {
			w.reaping = true
			time.AfterFunc(w.idleFor, w.reap)
		}
		w.wake.Wait() // whoever woke us counted us out of idle, into waking
		w.waking--
	}
	w.running--
	w.mu.Unlock()
}

// reap ends a round: idle workers look at the round, and those idle for a
// whole round exit. It runs again while any worker is idle.
func (w *workers) reap() {
	w.mu.Lock()
	w.round++
	w.reaping = w.idle > 0
	if w.reaping {
		time.AfterFunc(w.idleFor, w.reap)
	}
	w.waking += w.idle
	w.idle = 0 // all woken: each counts itself again if it waits on
	w.wake.Broadcast()
	w.mu.Unlock()
}

// stop makes idle workers exit once the queue is empty.
func (w *workers) stop() {
	w.mu.Lock()
	w.stopped = true
	w.waking += w.idle
	w.idle = 0
	w.wake.Broadcast()
	w.mu.Unlock()
}
