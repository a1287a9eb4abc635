// Package broadcast keeps the versions of the relay's broadcasts, the
// small named values (autopush's megaphone) that every subscribed device
// is told about when they change: Firefox's Remote Settings uses one to
// tell every browser that a collection changed.
//
// A Registry holds the current versions in memory, as an immutable map
// that readers share without locking, and in the store, so they survive a
// restart. Set is the one way in, whatever the source (a megaphone poll,
// an operator's admin call, an upstream link): it persists what changed,
// publishes the new map, then calls the change listeners with only the
// ids that changed. Setting a version that is already current changes
// nothing and writes nothing.
package broadcast

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"

	"github.com/pushrelay/pushrelay/relay/metrics"
)

// MaxLen bounds an id and a version (bytes), as the device protocol bounds
// what a device may name.
const MaxLen = 128

// MaxIDs bounds how many broadcasts a relay serves.
const MaxIDs = 1024

// ErrBad is returned for an id or version that is empty or longer than
// MaxLen, or for a set that would exceed MaxIDs.
var ErrBad = errors.New("bad broadcast")

// Store is where versions are kept (store.Store).
type Store interface {
	Broadcasts() (map[string]string, error)
	PutBroadcasts(ctx context.Context, m map[string]string) error
}

// Registry holds the broadcasts' versions. Its methods are safe for
// concurrent use.
type Registry struct {
	st Store

	mu        sync.Mutex // serializes Set, so changes are persisted and published in order
	cur       atomic.Pointer[map[string]string]
	listeners []func(changed map[string]string) // under mu

	m *regMetrics
}

type regMetrics struct {
	ids     metrics.Gauge
	changes *metrics.CounterVec
}

// Open loads the stored versions.
func Open(st Store, reg *metrics.Registry) (*Registry, error) {
	cur, err := st.Broadcasts()
	if err != nil {
		return nil, fmt.Errorf("broadcast: load versions: %w", err)
	}
	reg = metrics.OrNew(reg)
	r := &Registry{st: st, m: &regMetrics{
		ids:     reg.Gauge("pushrelay_broadcasts", "Broadcast ids the relay serves."),
		changes: reg.CounterVec("pushrelay_broadcast_changes_total", "Broadcast versions changed, by source.", "source"),
	}}
	r.cur.Store(&cur)
	r.m.ids.Set(float64(len(cur)))
	return r, nil
}

// Versions returns every broadcast id with its current version. The map is
// shared: callers must not modify it.
func (r *Registry) Versions() map[string]string { return *r.cur.Load() }

// OnChange adds fn to the functions Set calls, after each change is
// durable and published, with the ids that changed and their new
// versions. fn runs on Set's caller with the Registry's lock held, so
// changes arrive in order; it must not block and must not call Set.
func (r *Registry) OnChange(fn func(changed map[string]string)) {
	r.mu.Lock()
	r.listeners = append(r.listeners, fn)
	r.mu.Unlock()
}

// Set gives the ids in versions those versions, from source (a label for
// metrics and logs: "megaphone", "admin", ...). Ids not named keep
// theirs. It returns the ids whose version changed; when none did,
// nothing is written. An invalid id or version fails the whole call with
// ErrBad and changes nothing.
func (r *Registry) Set(ctx context.Context, source string, versions map[string]string) (map[string]string, error) {
	for id, v := range versions {
		if err := Check(id, v); err != nil {
			return nil, err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	old := *r.cur.Load()
	changed := changedFrom(old, versions)
	if len(changed) == 0 {
		return changed, nil
	}
	ids := len(old)
	for id := range changed {
		if _, ok := old[id]; !ok {
			ids++
		}
	}
	if ids > MaxIDs {
		return nil, fmt.Errorf("%w: more than %d broadcast ids", ErrBad, MaxIDs)
	}
	if err := r.st.PutBroadcasts(ctx, changed); err != nil {
		return nil, fmt.Errorf("broadcast: store versions: %w", err)
	}
	r.publishLocked(source, old, changed)
	return changed, nil
}

// changedFrom is the ids of versions whose version old does not hold.
func changedFrom(old, versions map[string]string) map[string]string {
	changed := map[string]string{}
	for id, v := range versions {
		if cur, ok := old[id]; !ok || cur != v {
			changed[id] = v
		}
	}
	return changed
}

// publishLocked makes old with changed the current versions, counts them
// under source and tells the listeners. r.mu is held.
func (r *Registry) publishLocked(source string, old, changed map[string]string) {
	next := maps.Clone(old)
	maps.Copy(next, changed)
	r.cur.Store(&next)
	r.m.ids.Set(float64(len(next)))
	r.m.changes.With(source).Add(float64(len(changed)))
	for _, fn := range r.listeners {
		fn(changed)
	}
}

// Applied publishes versions another member of the site stored (through
// the site's replicated log, already in this relay's store): as Set, from
// source, without writing them again. Ids at the version the registry
// holds are left alone, so a change this relay made itself, heard back
// from the log, is not announced twice.
func (r *Registry) Applied(source string, versions map[string]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := *r.cur.Load()
	if changed := changedFrom(old, versions); len(changed) > 0 {
		r.publishLocked(source, old, changed)
	}
}

// Check validates one id and version.
func Check(id, version string) error {
	if id == "" || version == "" || len(id) > MaxLen || len(version) > MaxLen {
		return fmt.Errorf("%w: %.40q: id and version must be 1 to %d bytes", ErrBad, id, MaxLen)
	}
	return nil
}

// Diff compares what a device says it has (ids and versions) with cur:
// delta holds cur's version of each id the device has at another
// version, missing the ids cur does not hold. Either is nil when empty.
func Diff(cur, have map[string]string) (delta map[string]string, missing []string) {
	for id, v := range have {
		c, ok := cur[id]
		switch {
		case !ok:
			missing = append(missing, id)
		case c != v:
			if delta == nil {
				delta = map[string]string{}
			}
			delta[id] = c
		}
	}
	return delta, missing
}
