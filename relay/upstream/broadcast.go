package upstream

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/pushrelay/pushrelay/relay/broadcast"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
)

// BroadcastRegistry is where the link keeps the upstream's broadcast
// versions, and whose ids it subscribes to upstream: broadcast.Registry.
type BroadcastRegistry interface {
	Versions() map[string]string
	OnChange(fn func(changed map[string]string))
	Set(ctx context.Context, source string, versions map[string]string) (map[string]string, error)
}

// BroadcastSource is the source the upstream's versions are set under in
// the registry (pushrelay_broadcast_changes_total{source="upstream"}).
const BroadcastSource = "upstream"

const (
	// notFoundFor is how long an id the upstream answered "Broadcast not
	// found" is not asked for again.
	notFoundFor = 10 * time.Minute
	// subscribeChunk is the most ids one hello or broadcast_subscribe
	// frame names: a pushrelay upstream refuses more
	// (pushproto.MaxBroadcasts), and frames stay far below autopush's
	// 64 KiB.
	subscribeChunk = pushproto.MaxBroadcasts
)

// bcast is the link's broadcast connection: one upstream connection,
// without a UAID, that subscribes to the union of the broadcast ids the
// relay serves (every id in the registry, persisted there) and the ids
// devices asked for that the registry does not hold yet (pending, in
// memory), and sets the versions the upstream answers in the registry.
//
// The hello carries no UAID and the connection never registers: autopush
// stores a new UAID only at its first register, so it leaves no state
// upstream. autopush answers a hello's or broadcast_subscribe's ids with
// the versions that differ from the ones named (the registry's, or ""
// for a pending id, so a known id always comes back) and unknown ids
// under "errors", and pushes later changes instead of a ping on its ping
// tick (300 s).
type bcast struct {
	l    *Link
	reg  BroadcastRegistry
	kick chan struct{} // the union grew

	mu       sync.Mutex
	pending  map[string]bool      // asked for by devices, not in reg yet
	notFound map[string]time.Time // pending ids the upstream did not know, and when
}

func newBcast(l *Link, reg BroadcastRegistry) *bcast {
	b := &bcast{l: l, reg: reg, kick: make(chan struct{}, 1), pending: map[string]bool{}, notFound: map[string]time.Time{}}
	// Ids set by other sources (megaphone, admin) join the union.
	reg.OnChange(func(map[string]string) { b.poke() })
	return b
}

func (b *bcast) poke() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// Versions and OnChange are the registry's (relay.Broadcasts).
func (b *bcast) Versions() map[string]string                 { return b.reg.Versions() }
func (b *bcast) OnChange(fn func(changed map[string]string)) { b.reg.OnChange(fn) }

// Want is the hub's report that a device subscribed to ids the registry
// does not hold (relay.BroadcastWanter). The ids join the union (while it
// holds fewer than broadcast.MaxIDs, and unless the upstream answered one
// "Broadcast not found" in the last notFoundFor) and are asked upstream;
// it returns those pending, which the hub subscribes the device to: the
// device is told their version when it arrives. It never blocks.
func (b *bcast) Want(ids []string) []string {
	cur := b.reg.Versions()
	now := b.l.cfg.Now()
	var out []string
	added, refused := false, 0
	b.mu.Lock()
	for _, id := range ids {
		if id == "" || len(id) > broadcast.MaxLen {
			continue
		}
		if _, ok := cur[id]; ok {
			continue
		}
		if b.pending[id] {
			out = append(out, id)
			continue
		}
		if at, ok := b.notFound[id]; ok && now.Sub(at) < notFoundFor {
			continue
		}
		if len(cur)+len(b.pending) >= broadcast.MaxIDs {
			refused++
			continue
		}
		b.pending[id] = true
		added = true
		out = append(out, id)
	}
	n := len(b.pending)
	b.mu.Unlock()
	b.l.m.bcPending.Set(float64(n))
	if refused > 0 {
		b.l.m.bcIDs.With("refused").Add(float64(refused))
	}
	if added {
		b.poke()
	}
	return out
}

// union is every id to subscribe to upstream, with the version to name:
// the registry's, or "" for a pending id.
func (b *bcast) union() map[string]string {
	u := maps.Clone(b.reg.Versions())
	if u == nil {
		u = map[string]string{}
	}
	b.mu.Lock()
	for id := range b.pending {
		if _, ok := u[id]; !ok {
			u[id] = ""
		}
	}
	b.mu.Unlock()
	return u
}

// run keeps the broadcast connection while the union is not empty,
// reconnecting after the held sessions' backoff, until ctx ends.
func (b *bcast) run(ctx context.Context) {
	l := b.l
	log := l.cfg.Logger.With("session", "broadcasts")
	backoff := l.cfg.BackoffMin
	for ctx.Err() == nil {
		if len(b.union()) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-b.kick:
				continue
			}
		}
		helloed, err := b.serve(ctx)
		if ctx.Err() != nil {
			return
		}
		if helloed {
			backoff = l.cfg.BackoffMin
		}
		wait := jitter(backoff)
		log.Info("upstream broadcast connection lost; reconnecting", "err", err, "in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(backoff*2, l.cfg.BackoffMax)
	}
}

// serve runs one broadcast connection: hello with the first ids, the
// rest and every later one in broadcast_subscribe frames, and the
// upstream's answers and changes into the registry.
func (b *bcast) serve(ctx context.Context) (helloed bool, err error) {
	l := b.l
	if err := l.pace.wait(ctx, nil); err != nil {
		return false, err
	}
	sent := map[string]bool{}
	first := b.nextChunk(sent)
	c, f, err := l.hello(ctx, "", pushclient.HelloOptions{Broadcasts: first})
	if err != nil {
		l.m.bcConnects.With("error").Inc()
		return false, err
	}
	stop := context.AfterFunc(ctx, func() { c.Abort() })
	defer func() {
		stop()
		c.Abort()
	}()
	l.m.bcConnects.With("ok").Inc()
	l.m.bcOpen.Set(1)
	defer l.m.bcOpen.Set(0)
	b.apply(ctx, f.Broadcasts)
	c.ExtendOnPing(l.cfg.ReadTimeout)

	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { b.subscribe(ctx, c, sent, done) })
	defer wg.Wait()
	defer close(done)
	for {
		f, err := c.Read(time.Now().Add(l.cfg.ReadTimeout))
		if err != nil {
			return true, fmt.Errorf("read: %w", err)
		}
		if f.MessageType == pushproto.TypeBroadcast {
			b.apply(ctx, f.Broadcasts)
		}
	}
}

// nextChunk returns up to subscribeChunk ids of the union not yet in
// sent, with their versions, and marks them sent; nil when none is left.
func (b *bcast) nextChunk(sent map[string]bool) map[string]string {
	u := b.union()
	ids := make([]string, 0, len(u))
	for id := range u {
		if !sent[id] {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	slices.Sort(ids)
	ids = ids[:min(len(ids), subscribeChunk)]
	chunk := make(map[string]string, len(ids))
	for _, id := range ids {
		chunk[id] = u[id]
		sent[id] = true
	}
	return chunk
}

// subscribe sends broadcast_subscribe for the ids of the union the
// connection has not named yet: at once, then whenever the union grows,
// until done. A failed send aborts the connection.
func (b *bcast) subscribe(ctx context.Context, c *pushclient.Client, sent map[string]bool, done <-chan struct{}) {
	for {
		for chunk := b.nextChunk(sent); chunk != nil; chunk = b.nextChunk(sent) {
			frame, _ := json.Marshal(map[string]any{"messageType": pushproto.TypeBroadcastSubscribe, "broadcasts": chunk})
			if err := c.Send(frame); err != nil {
				c.Abort()
				return
			}
		}
		select {
		case <-done:
			return
		case <-ctx.Done():
			return
		case <-b.kick:
		}
	}
}

// apply sets the versions of an upstream's broadcasts value in the
// registry and drops from the pending ids those it has now, and those the
// upstream does not know ("errors").
func (b *bcast) apply(ctx context.Context, m map[string]any) {
	l := b.l
	set := map[string]string{}
	var notFound []string
	for id, v := range m {
		if id == "errors" {
			if errs, ok := v.(map[string]any); ok {
				for eid := range errs {
					notFound = append(notFound, eid)
				}
			}
			continue
		}
		s, ok := v.(string)
		if !ok || broadcast.Check(id, s) != nil {
			l.m.bcIDs.With("bad").Inc()
			continue
		}
		set[id] = s
	}
	if len(set) > 0 {
		sctx, cancel := context.WithTimeout(ctx, l.cfg.RequestTimeout)
		changed, err := b.reg.Set(sctx, BroadcastSource, set)
		cancel()
		if err != nil {
			l.m.bcIDs.With("not_stored").Add(float64(len(set)))
			l.cfg.Logger.Warn("upstream broadcast versions not stored", "ids", len(set), "err", err)
			set = nil
		} else {
			l.m.bcIDs.With("changed").Add(float64(len(changed)))
		}
	}
	now := l.cfg.Now()
	b.mu.Lock()
	for id := range set {
		delete(b.pending, id)
	}
	nf := 0
	for _, id := range notFound {
		if !b.pending[id] {
			continue // a registry id another source serves, or not asked
		}
		delete(b.pending, id)
		if len(b.notFound) >= broadcast.MaxIDs {
			b.pruneNotFoundLocked(now)
		}
		b.notFound[id] = now
		nf++
	}
	n := len(b.pending)
	b.mu.Unlock()
	b.l.m.bcPending.Set(float64(n))
	if nf > 0 {
		l.m.bcIDs.With("not_found").Add(float64(nf))
	}
}

// pruneNotFoundLocked drops the expired not-found ids, and one more if
// none was, so the map stays under broadcast.MaxIDs. b.mu is held.
func (b *bcast) pruneNotFoundLocked(now time.Time) {
	n := len(b.notFound)
	maps.DeleteFunc(b.notFound, func(_ string, at time.Time) bool { return now.Sub(at) >= notFoundFor })
	if len(b.notFound) < n {
		return
	}
	for id := range b.notFound {
		delete(b.notFound, id)
		return
	}
}
