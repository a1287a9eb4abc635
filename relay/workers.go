package relay

import (
	"sync"
	"time"
)

// workers runs the hub's short tasks (bursts of device frames, pumps, ack
// flushes) on goroutines that outlive a task and wait a while for the
// next. A fresh goroutine starts with a 2 KiB stack and grows it to decode
// JSON and call the store, copying as it goes; a reused one has grown
// already. Idle workers exit after idleFor, so an idle relay keeps none.
type workers struct {
	wg      *sync.WaitGroup
	tasks   chan func() // unbuffered: a send succeeds only if a worker is idle
	quit    chan struct{}
	idleFor time.Duration
}

func newWorkers(wg *sync.WaitGroup, idleFor time.Duration) *workers {
	return &workers{wg: wg, tasks: make(chan func()), quit: make(chan struct{}), idleFor: idleFor}
}

// run runs f on an idle worker, or on a new one. The caller must hold a
// WaitGroup count (any live session does), so Add here is safe.
func (w *workers) run(f func()) {
	select {
	case w.tasks <- f:
	default:
		w.wg.Add(1)
		go w.loop(f)
	}
}

func (w *workers) loop(f func()) {
	defer w.wg.Done()
	t := time.NewTimer(w.idleFor)
	defer t.Stop()
	for {
		f()
		f = nil
		t.Reset(w.idleFor)
		select {
		case f = <-w.tasks:
		case <-t.C:
			return
		case <-w.quit:
			return
		}
	}
}

// stop makes idle workers exit; running tasks finish.
func (w *workers) stop() { close(w.quit) }
