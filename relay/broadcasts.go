package relay

import (
	"slices"
	"strings"
	"sync"

	"github.com/pushrelay/pushrelay/relay/pushproto"
)

// Broadcasts is where the hub takes broadcast versions from
// (broadcast.Registry). Versions returns the current versions as a map
// the hub never modifies; OnChange registers a function called, in order
// and without blocking, with the ids whose version changed and their new
// versions.
//
// With none (Config.Broadcasts nil) the relay serves no broadcasts: every
// id a device names is answered "Broadcast not found".
type Broadcasts interface {
	Versions() map[string]string
	OnChange(fn func(changed map[string]string))
}

// BroadcastWanter is implemented by Broadcasts that can fetch ids they do
// not hold yet (an upstream link's). When a device names such ids the hub
// calls Want with them; the ids it returns are being fetched, and the
// device is subscribed to them as to known ones: it is told nothing about
// them until a version arrives (through OnChange), then that version.
// Want must not block.
type BroadcastWanter interface {
	Want(ids []string) []string
}

// MaxSubscriptions bounds the broadcasts one session is subscribed to,
// over its hello and every broadcast_subscribe. Ids past it are not
// subscribed and not answered (counted in
// pushrelay_broadcast_subscriptions_refused_total).
const MaxSubscriptions = 64

// broadcasts is the hub's side of broadcasting: an index from each
// broadcast id to the sessions subscribed to it, so a change costs work
// in proportion to its subscribers.
//
// Which ids become subscriptions follows autopush: those the relay knows
// when the device names them; an unknown id is answered under "errors"
// and is not remembered.
//
// A session keeps, for each of its subscriptions, the version its device
// has (said in hello or subscribe, or was last sent). A change is sent to
// a subscribed session whose device does not have it yet: the frame is
// encoded once for every session that gets the same delta and queued in
// each session's outbox. A session whose writer is busy (its device has
// not taken what was written before, or is taking it now) is only marked;
// its writer sends the delta between what the device has and what is
// current once it is done with the write, so however many changes come
// meanwhile it sends one frame, and never a version twice.
//
// Lock order: broadcasts.mu and session.mu are never held together.
// Subscribing adds the session to the index first, then (under
// session.mu) reads the versions and records what the device has, so a
// change published in between is either seen by that read or found by
// the change's walk of the index.
type broadcasts struct {
	src Broadcasts
	m   *bcastMetrics

	mu     sync.Mutex
	topics map[string]*bcastTopic

	// scratch of changed; only its caller (serialized by the source) uses
	// it.
	scratch []*session
}

// bcastTopic is one broadcast id with its subscribed sessions.
type bcastTopic struct {
	id   string
	subs map[*session]struct{}
}

// bcastSub is one subscription of a session: the id (through its topic,
// which also interns the id string) and the version the device has.
type bcastSub struct {
	t    *bcastTopic
	have string
}

func newBroadcasts(src Broadcasts, m *bcastMetrics) *broadcasts {
	b := &broadcasts{src: src, m: m, topics: map[string]*bcastTopic{}}
	src.OnChange(b.changed)
	return b
}

// subscribe adds s to the index for the ids of want that the relay knows
// and s is not yet subscribed to, up to MaxSubscriptions in all, and
// returns their topics. Only s's reader calls it, before finish.
func (b *broadcasts) subscribe(s *session, want map[string]string) []*bcastTopic {
	cur := b.src.Versions()
	s.mu.Lock()
	n := len(s.bsubs)
	var known, unknown []string
	for id := range want {
		if s.subscribedLocked(id) {
			continue
		}
		if _, ok := cur[id]; ok {
			known = append(known, id)
		} else {
			unknown = append(unknown, id)
		}
	}
	s.mu.Unlock()
	if w, ok := b.src.(BroadcastWanter); ok && len(unknown) > 0 {
		slices.Sort(unknown)
		known = append(known, w.Want(unknown)...)
	}
	if len(known) == 0 {
		return nil
	}
	slices.Sort(known) // which ids fit under the cap does not depend on map order
	if room := MaxSubscriptions - n; len(known) > room {
		b.m.refused.Add(float64(len(known) - max(room, 0)))
		known = known[:max(room, 0)]
	}
	topics := make([]*bcastTopic, 0, len(known))
	b.mu.Lock()
	for _, id := range known {
		t := b.topics[id]
		if t == nil {
			t = &bcastTopic{id: id, subs: map[*session]struct{}{}}
			b.topics[id] = t
		}
		t.subs[s] = struct{}{}
		topics = append(topics, t)
	}
	b.mu.Unlock()
	b.m.subscriptions.Add(float64(len(topics)))
	return topics
}

// subscribedLocked reports whether s is subscribed to id. s.mu is held.
func (s *session) subscribedLocked(id string) bool {
	for _, sub := range s.bsubs {
		if sub.t.id == id {
			return true
		}
	}
	return false
}

// unsubscribe removes s from the index; the session has finished.
func (b *broadcasts) unsubscribe(s *session) {
	s.mu.Lock()
	subs := s.bsubs
	s.bsubs, s.bpending = nil, false
	s.mu.Unlock()
	if len(subs) == 0 {
		return
	}
	b.mu.Lock()
	for _, sub := range subs {
		delete(sub.t.subs, s)
		if len(sub.t.subs) == 0 {
			delete(b.topics, sub.t.id)
		}
	}
	b.mu.Unlock()
	b.m.subscriptions.Add(-float64(len(subs)))
}

// answer records new subscriptions of s (topics, from subscribe) with the
// versions the device said it has (want), and returns what the device
// must be told: the current version of each subscription its device does
// not have (new ones and, after a subscribe, changes not yet sent), and
// the ids of want that are not subscriptions because the relay does not
// know them, under "errors". s.mu is held. Returns nil when there is
// nothing to say.
func (b *broadcasts) answerLocked(s *session, topics []*bcastTopic, want map[string]string) map[string]any {
	for _, t := range topics {
		s.bsubs = append(s.bsubs, bcastSub{t: t})
	}
	cur := b.src.Versions()
	var out map[string]any
	put := func(k string, v any) {
		if out == nil {
			out = map[string]any{}
		}
		out[k] = v
	}
	for i := range s.bsubs {
		sub := &s.bsubs[i]
		if v, ok := want[sub.t.id]; ok {
			sub.have = v // what the device says it has now
		}
		// An id being fetched (BroadcastWanter) has no version yet.
		if v, ok := cur[sub.t.id]; ok && v != sub.have {
			put(sub.t.id, v)
			sub.have = v
		}
	}
	s.bpending = false // everything due is in this answer
	var missing map[string]string
	for id := range want {
		if _, ok := cur[id]; !ok && !s.subscribedLocked(id) {
			if missing == nil {
				missing = map[string]string{}
			}
			missing[id] = "Broadcast not found"
		}
	}
	if missing != nil {
		put("errors", missing)
	}
	return out
}

// helloReply queues the hello reply with its broadcasts: the current
// version of each id the device named and the relay knows, when it
// differs from the device's, and the unknown ids under "errors" ({} when
// there is nothing to say).
func (s *session) helloReply(reply pushproto.HelloReply, want map[string]string) bool {
	b := s.hub.bc
	if b == nil {
		reply.Broadcasts = pushproto.BroadcastErrors(want)
		return s.write(pushproto.EncodeHello(reply))
	}
	topics := b.subscribe(s, want)
	s.mu.Lock()
	reply.Broadcasts = b.answerLocked(s, topics, want)
	return s.writeAndUnlock(pushproto.EncodeHello(reply))
}

// broadcastSubscribe subscribes the session to the ids the device names
// and answers with a broadcast frame as hello does, or not at all when
// there is nothing to say.
func (s *session) broadcastSubscribe(want map[string]string) bool {
	b := s.hub.bc
	if b == nil {
		if len(want) == 0 {
			return true
		}
		return s.write(pushproto.EncodeBroadcast(pushproto.BroadcastErrors(want)))
	}
	topics := b.subscribe(s, want)
	s.mu.Lock()
	out := b.answerLocked(s, topics, want)
	if out == nil {
		s.mu.Unlock()
		return true
	}
	b.m.frames.With("subscribe").Inc()
	return s.writeAndUnlock(pushproto.EncodeBroadcast(out))
}

// changed is the source's report of a change: every session subscribed to
// a changed id whose device does not have that version is sent it. It
// never blocks on a device: frames are queued in outboxes, and a session
// whose writer is busy is marked for its writer to send the delta later
// (flushBroadcastsLocked).
func (b *broadcasts) changed(changed map[string]string) {
	ss := b.scratch[:0]
	b.mu.Lock()
	if len(changed) == 1 {
		for id := range changed {
			if t := b.topics[id]; t != nil {
				for s := range t.subs {
					ss = append(ss, s)
				}
			}
		}
	} else {
		seen := map[*session]struct{}{}
		for id := range changed {
			if t := b.topics[id]; t != nil {
				for s := range t.subs {
					if _, dup := seen[s]; !dup {
						seen[s] = struct{}{}
						ss = append(ss, s)
					}
				}
			}
		}
	}
	b.mu.Unlock()

	// Frames by delta: the sorted ids, joined, name the frame of their
	// changed versions.
	frames := map[string][]byte{}
	var ids []string
	var sent, deferred int
	for _, s := range ss {
		s.mu.Lock()
		if s.closed || s.out.done {
			s.mu.Unlock()
			continue
		}
		ids = ids[:0]
		for _, sub := range s.bsubs {
			if v, ok := changed[sub.t.id]; ok && sub.have != v {
				ids = append(ids, sub.t.id)
			}
		}
		switch {
		case len(ids) == 0:
		case s.out.writing || s.bpending:
			// The writer sends it when done with what it is writing.
			s.bpending = true
			deferred++
		default:
			slices.Sort(ids)
			key := strings.Join(ids, "\x00")
			frame, ok := frames[key]
			if !ok {
				delta := make(map[string]any, len(ids))
				for _, id := range ids {
					delta[id] = changed[id]
				}
				frame = pushproto.EncodeBroadcast(delta)
				frames[key] = frame
			}
			for i := range s.bsubs {
				if v, ok := changed[s.bsubs[i].t.id]; ok {
					s.bsubs[i].have = v
				}
			}
			s.queueLocked(frame, kindReply)
			s.startWriterLocked()
			sent++
		}
		s.mu.Unlock()
	}
	clear(ss)
	b.scratch = ss
	if sent > 0 {
		b.m.frames.With("change").Add(float64(sent))
	}
	if deferred > 0 {
		b.m.deferred.Add(float64(deferred))
	}
}

// flushBroadcastsLocked queues, for a session marked by changed, one
// frame with the current version of each subscription its device does not
// have. Its writer calls it between writes. s.mu is held.
func (s *session) flushBroadcastsLocked() {
	b := s.hub.bc
	s.bpending = false
	if b == nil || s.closed || s.out.done {
		return
	}
	cur := b.src.Versions()
	var delta map[string]any
	for i := range s.bsubs {
		sub := &s.bsubs[i]
		if v, ok := cur[sub.t.id]; ok && v != sub.have {
			if delta == nil {
				delta = map[string]any{}
			}
			delta[sub.t.id] = v
			sub.have = v
		}
	}
	if delta == nil {
		return
	}
	s.queueLocked(pushproto.EncodeBroadcast(delta), kindReply)
	b.m.frames.With("deferred_change").Inc()
}
