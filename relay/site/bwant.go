package site

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/broadcast"
)

// Broadcast ids devices ask for that nobody else did.
//
// A single relay with an upstream asks it for the broadcast ids its
// devices name and the registry lacks (relay.BroadcastWanter, the
// upstream link's). In a site only the holder's link talks to the
// upstream, and devices say hello to any member: a member that does not
// hold the upstream proposes the ids (a broadcast want entry, kind 17:
// nothing stored), and the holder, applying it, asks its link for them.
// The versions come back through the log (broadcasts entries) to every
// member's registry, and so to the devices subscribed. An id is proposed
// again after wantAgain if devices still name it and no version came: a
// want the holder missed (it changed just then) is asked again at a later
// hello.

const (
	// wantAgain is how long a member waits before proposing an id it
	// proposed already.
	wantAgain = time.Minute
	// wantQueue bounds the proposals waiting to be made.
	wantQueue = 16
)

// wanter is a holding whose link asks the upstream for broadcast ids
// (relay/upstream.Link's broadcasts, through relay/node's holding).
type wanter interface {
	Want(ids []string) []string
}

// wants is what this member proposed, and when.
type wants struct {
	mu    sync.Mutex
	asked map[string]time.Time
	q     chan []string
}

func newWants() *wants {
	return &wants{asked: map[string]time.Time{}, q: make(chan []string, wantQueue)}
}

// siteBroadcasts is the registry as a site member's hub sees it: the
// versions applied from the log, and Want through the site.
type siteBroadcasts struct {
	relay.Broadcasts
	s *Site
}

// Broadcasts wraps reg, this member's broadcast registry, for its hub:
// the ids devices ask for that reg lacks are asked of the upstream
// through the site's holder (relay.BroadcastWanter).
func (s *Site) Broadcasts(reg relay.Broadcasts) relay.Broadcasts {
	return siteBroadcasts{Broadcasts: reg, s: s}
}

// Want: on the holder, its link's Want; elsewhere the ids are proposed
// (at most once per wantAgain each) and returned as pending, so the
// device is told their versions when they arrive. Ids past
// broadcast.MaxIDs asked and not answered are not taken. It never
// blocks.
func (b siteBroadcasts) Want(ids []string) []string {
	s := b.s
	if s.up != nil {
		if w, ok := s.up.current().(wanter); ok {
			return w.Want(ids)
		}
	}
	cur := b.Versions()
	now := s.cfg.Now()
	w := s.bwant
	var out, propose []string
	w.mu.Lock()
	for _, id := range ids {
		if id == "" || len(id) > broadcast.MaxLen {
			continue
		}
		if _, ok := cur[id]; ok {
			continue
		}
		at, asked := w.asked[id]
		if asked && now.Sub(at) < wantAgain {
			out = append(out, id)
			continue
		}
		if !asked && len(w.asked)+len(cur) >= broadcast.MaxIDs {
			w.forgetLocked(now, cur)
			if len(w.asked)+len(cur) >= broadcast.MaxIDs {
				continue
			}
		}
		w.asked[id] = now
		out = append(out, id)
		propose = append(propose, id)
	}
	if len(propose) > 0 {
		select {
		case w.q <- propose:
		default:
			// Far behind: forget them, a later hello asks again.
			for _, id := range propose {
				delete(w.asked, id)
			}
		}
	}
	w.mu.Unlock()
	return out
}

// forgetLocked drops the ids asked long ago or answered since.
func (w *wants) forgetLocked(now time.Time, cur map[string]string) {
	for id, at := range w.asked {
		if _, ok := cur[id]; ok || now.Sub(at) >= wantAgain {
			delete(w.asked, id)
		}
	}
}

// proposeWants proposes the ids Want queued, until ctx ends.
func (s *Site) proposeWants(ctx context.Context) {
	w := s.bwant
	for {
		var ids []string
		select {
		case <-ctx.Done():
			return
		case ids = <-w.q:
		}
		// What queued meanwhile goes in the same entry.
		for more := true; more && len(ids) < maxBroadcasts; {
			select {
			case next := <-w.q:
				ids = append(ids, next...)
			default:
				more = false
			}
		}
		slices.Sort(ids)
		ids = slices.Compact(ids)
		if len(ids) > maxBroadcasts {
			ids = ids[:maxBroadcasts]
		}
		m := make(map[string]string, len(ids))
		for _, id := range ids {
			m[id] = ""
		}
		pctx, cancel := context.WithTimeout(ctx, s.proposeBound())
		_, err := s.st.propose(pctx, &Entry{Kind: KindBroadcastWant, Broadcasts: m})
		cancel()
		if err != nil && !errors.Is(err, ErrNoResult) {
			w.mu.Lock()
			for _, id := range ids {
				delete(w.asked, id)
			}
			w.mu.Unlock()
			s.cfg.Logger.Debug("site: broadcast ids not proposed", "ids", len(ids), "err", err)
		}
	}
}

// noteWant: the holder asks its link for the ids a member proposed.
func (s *Site) noteWant(e *Entry) {
	if s.up == nil {
		return
	}
	if w, ok := s.up.current().(wanter); ok {
		w.Want(slices.Sorted(maps.Keys(e.Broadcasts)))
	}
}
