package endpoint

import (
	"sync"
	"sync/atomic"
	"time"
)

// diskFull is the state "the store has no space left": set by the first
// push refused for it, cleared by the next write that succeeds (or by
// SpaceFreed). While it lasts the log gets one line per LogInterval with
// the count of refused pushes, instead of a line per push.
type diskFull struct {
	on       atomic.Bool // since is set: read without the lock by every push
	mu       sync.Mutex
	since    time.Time // zero: not full
	refused  int64     // pushes refused since
	logged   time.Time // last log line
	unlogged int64     // refused since that line
}

// DiskFull reports since when pushes have been refused for lack of space
// and how many; since is zero while the store writes.
func (a *API) DiskFull() (since time.Time, refused int64) {
	a.full.mu.Lock()
	defer a.full.mu.Unlock()
	return a.full.since, a.full.refused
}

// SpaceFreed ends the disk-full state without waiting for a push to
// succeed: the daemon calls it when a probe write in the data dir works.
// A push that still fails for space sets it again.
func (a *API) SpaceFreed() { a.storeWrote() }

// storeFull counts a push refused for lack of space and logs at most once
// per interval.
func (a *API) storeFull(err error) {
	now := a.cfg.Now()
	f := &a.full
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refused++
	f.unlogged++
	if f.since.IsZero() {
		f.since, f.logged, f.unlogged = now, now, 0
		f.on.Store(true)
		a.m.storeFull.Set(1)
		a.cfg.Logger.Error("store is out of space: pushes are refused with 507 until a write succeeds", "err", err)
		return
	}
	if now.Sub(f.logged) >= a.cfg.LogInterval {
		a.cfg.Logger.Warn("store still out of space", "since", f.since, "refused", f.unlogged, "refused_total", f.refused, "err", err)
		f.logged, f.unlogged = now, 0
	}
}

// storeWrote ends the disk-full state, if on.
func (a *API) storeWrote() {
	f := &a.full
	if !f.on.Load() {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.since.IsZero() {
		return
	}
	f.on.Store(false)
	a.cfg.Logger.Info("store writes again", "full_for", a.cfg.Now().Sub(f.since).Round(time.Millisecond), "refused", f.refused)
	f.since, f.refused, f.unlogged = time.Time{}, 0, 0
	a.m.storeFull.Set(0)
}
