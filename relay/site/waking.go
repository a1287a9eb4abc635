package site

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/pushrelay/pushrelay/relay/member"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/store"
)

// Waking in a site (issue #9, point 3). A wake datagram must leave from
// the STUN socket the device proved its address to: its NAT mapping is
// per socket. So the member a device proved its address to (or whose
// hello accepted it for wake) is its one wake owner, and it is the only
// member that ever wakes it:
//
//   - Every member decides from its own commit feed (Stored: the
//     messages its store applied from the log, whoever ingested them),
//     not only the member that took the post. A message of urgency
//     normal or high for a device this member owns wakes it, unless the
//     device has a session taking messages here, or probably on another
//     member (its UAID in that member's SocketDigest): then the wake
//     waits WakeRecheck first. A Bloom false positive costs a sleeping
//     device that delay, no more: after it the wake goes if the message
//     still waits (the kicker finds nothing waiting once the device's
//     ack, made on the other member, is applied here).
//   - A member that accepts a binding (Bound) proposes a wake owner
//     entry (KindWakeOwner) unless it already owns the device: only when
//     the owner changes (or after this member restarted), batched, and
//     at most once per WakeOwnerGap per device. Every other member, on
//     applying it, forgets its own binding for the device (Kicker.Drop),
//     so a device that moved from X to Y is woken by Y alone.
//
// Which devices a member owns is held in memory (about 60 bytes each).
// At start (SetWaking) a member owns the devices whose binding its store
// holds: another member's later claim, applied here, would have made it
// forget the binding. (A member stopped between applying such a claim
// and forgetting its binding keeps both: it wakes the device too, from a
// mapping that is probably gone, until the device proves its address
// again anywhere; the device ignores a datagram it did not ask for.)

// Kicker is the member's waker as the site drives it (kick.Kicker).
type Kicker interface {
	Wake(u push.UAID, until time.Time)
	WakeAfter(u push.UAID, until time.Time, delay time.Duration)
	Drop(ctx context.Context, u push.UAID) error
	Bindings(fn func(u push.UAID)) error
	DropStored(ctx context.Context, keep func(push.UAID) bool) (int, error)
}

// Sessions is the member's hub as the site asks it (relay.Hub): waking
// asks whether a device has a session here; a restore from another
// member's snapshot has every session read its device's messages again
// (they came with the new file, not through the commit feed); a device
// another member reset (its upstream forgot it) has its session here
// closed 1000 "UAID reset", so that it says hello again and gets a new
// UAID.
type Sessions interface {
	Accepting(u push.UAID) bool
	Resync()
	CloseReset(u push.UAID)
}

// maxOwnedTracked bounds the devices waking remembers (owned, or owned
// once and proposed recently).
const maxOwnedTracked = 1 << 20

// ownState is what this member knows of its part in a device's waking.
type ownState struct {
	holds    bool      // this member is the device's wake owner
	proposed time.Time // when this member last proposed it
	batch    uint64    // the proposal in flight that names it, 0 none
}

type waking struct {
	k    Kicker
	sess Sessions

	mu       sync.Mutex
	owned    map[push.UAID]*ownState
	announce map[push.UAID]struct{} // to propose
	drops    map[push.UAID]struct{} // to forget (another member owns them)
	// dropStored: the store was restored from another member's snapshot;
	// the kicker must forget the bindings in it (that member's).
	dropStored bool
	batch      uint64
	kick       chan struct{}
}

func newWaking() *waking {
	return &waking{owned: map[push.UAID]*ownState{}, announce: map[push.UAID]struct{}{},
		drops: map[push.UAID]struct{}{}, kick: make(chan struct{}, 1)}
}

func (w *waking) poke() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// SetWaking hands the site this member's kicker and hub: from then on
// the member wakes the devices it owns from its commit feed (Stored).
// The member owns the devices whose binding its store holds (read here).
// Call it before Run.
func (s *Site) SetWaking(k Kicker, sess Sessions) error {
	w := s.wake
	var held []push.UAID
	if err := k.Bindings(func(u push.UAID) { held = append(held, u) }); err != nil {
		return fmt.Errorf("site: waking: %w", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.k, w.sess = k, sess
	for _, u := range held {
		if _, dropping := w.drops[u]; dropping || w.owned[u] != nil {
			continue
		}
		w.makeRoom()
		w.owned[u] = &ownState{holds: true}
	}
	return nil
}

// Bound tells the site that this member accepted a wake binding for u
// (kick.Config.OnBound): it becomes u's wake owner, and says so to the
// site unless it already did. It never blocks.
func (s *Site) Bound(u push.UAID) {
	w := s.wake
	w.mu.Lock()
	o := w.owned[u]
	if o == nil {
		w.makeRoom()
		o = &ownState{}
		w.owned[u] = o
	}
	fresh := !o.holds
	o.holds = true
	if fresh && o.batch == 0 {
		w.announce[u] = struct{}{}
	}
	w.mu.Unlock()
	if fresh {
		w.poke()
	}
}

// makeRoom forgets a device when the table is full, one this member does
// not own if it finds one soon; w.mu is held.
func (w *waking) makeRoom() {
	if len(w.owned) < maxOwnedTracked {
		return
	}
	n := 0
	for u, o := range w.owned {
		if !o.holds || n >= 64 {
			delete(w.owned, u)
			return
		}
		n++
	}
}

// Owns reports whether this member is u's wake owner.
func (s *Site) Owns(u push.UAID) bool {
	s.wake.mu.Lock()
	defer s.wake.mu.Unlock()
	o := s.wake.owned[u]
	return o != nil && o.holds
}

// WakeDigest is a digest of the devices this member is the wake owner
// of, and how many (member.Meta.WakeDigest, WakeBindings).
func (s *Site) WakeDigest() (member.Digest, uint64) {
	d := member.NewDigest(0)
	var n uint64
	s.wake.mu.Lock()
	defer s.wake.mu.Unlock()
	for u, o := range s.wake.owned {
		if o.holds {
			d.Add(u.String())
			n++
		}
	}
	return d, n
}

// Stored is the hub's hook on this member's commit feed
// (relay.Config.Stored): it wakes the devices this member owns for the
// messages of urgency normal or high just applied. It runs on the store's
// committer and does not block.
func (s *Site) Stored(ms []store.Message) {
	w := s.wake
	w.mu.Lock()
	k, sess := w.k, w.sess
	w.mu.Unlock()
	if k == nil {
		return
	}
	var others []member.Digest
	looked := false
	for i := range ms {
		m := &ms[i]
		if !m.Urgency.AtLeast(push.UrgencyNormal) {
			continue
		}
		w.mu.Lock()
		o := w.owned[m.UAID]
		owns := o != nil && o.holds
		w.mu.Unlock()
		if !owns {
			continue
		}
		if sess != nil && sess.Accepting(m.UAID) {
			s.m.wakes.With("session_here").Inc()
			continue
		}
		if !looked {
			others, looked = s.otherSockets(), true
		}
		elsewhere := false
		for _, d := range others {
			if d.MayHold(m.UAID.String()) {
				elsewhere = true
				break
			}
		}
		if elsewhere {
			s.m.wakes.With("deferred").Inc()
			k.WakeAfter(m.UAID, m.Expiry, s.cfg.WakeRecheck)
			continue
		}
		s.m.wakes.With("now").Inc()
		k.Wake(m.UAID, m.Expiry)
	}
}

// otherSockets is the socket digests of the other alive members (an
// empty digest, from a member that reports none, may hold any UAID).
func (s *Site) otherSockets() []member.Digest {
	var out []member.Digest
	for _, in := range s.cfg.Members() {
		if in.Self || in.State != member.StateAlive {
			continue
		}
		out = append(out, in.Meta.SocketDigest)
	}
	return out
}

// restored: this member's store was replaced by another member's
// snapshot. The sessions here read their devices' messages again (those
// that came with the file were never in the commit feed). The wake
// records in it are that member's, and the owner
// entries the snapshot stands for were never applied here: this member
// owns nothing until devices prove their address to it again, and the
// kicker forgets the bindings the file brought (runWaking), so that a
// later start does not take them for this member's own.
func (s *Site) restored() {
	s.reannounceLinkID()
	if s.up != nil {
		s.parentStale.Store(true)
		s.up.wake()
	}
	w := s.wake
	w.mu.Lock()
	if w.sess != nil {
		// The messages that came with the file reach the sessions here.
		defer w.sess.Resync()
	}
	clear(w.owned)
	clear(w.announce)
	clear(w.drops)
	w.dropStored = true
	w.mu.Unlock()
	w.poke()
}

// wakeOwners is a wake owner entry applied here (on the applying
// goroutine, after its commit): this member's own marks its proposal
// done; another member's makes this one forget its bindings for those
// devices, except those this member proposed since (its entry comes
// later in the log, so it wins).
func (s *Site) wakeOwners(owner uint64, us []push.UAID) {
	w := s.wake
	w.mu.Lock()
	defer w.mu.Unlock()
	if owner == s.id {
		for _, u := range us {
			if o := w.owned[u]; o != nil {
				o.batch = 0
			}
		}
		return
	}
	for _, u := range us {
		o := w.owned[u]
		if o != nil && o.batch != 0 {
			continue
		}
		if o != nil {
			o.holds = false
		}
		delete(w.announce, u)
		w.drops[u] = struct{}{}
	}
	if len(us) > 0 {
		w.poke()
	}
}

// resetApplied closes the session here of a device another member reset
// (the upstream's holder, whose upstream forgot it: relay.Hub.ResetDevice
// there closes the session only on that member). The member that
// proposed the reset closes its own session itself, after the commit.
func (s *Site) resetApplied(by uint64, u push.UAID) {
	if by == s.id {
		return
	}
	s.wake.mu.Lock()
	sess := s.wake.sess
	s.wake.mu.Unlock()
	if sess != nil {
		sess.CloseReset(u)
	}
}

// maxOwnerBatch is the most devices one wake owner entry names.
const maxOwnerBatch = 1000

// runWaking proposes this member's new ownerships and forgets the
// bindings others took, until ctx ends.
func (s *Site) runWaking(ctx context.Context) {
	w := s.wake
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.kick:
		case <-tick.C:
		}
		s.dropStored(ctx)
		s.dropBindings(ctx)
		s.proposeOwners(ctx)
	}
}

// dropStored has the kicker forget the bindings a restored snapshot
// brought (restored), until it succeeds.
func (s *Site) dropStored(ctx context.Context) {
	w := s.wake
	w.mu.Lock()
	k, do := w.k, w.dropStored
	w.dropStored = false
	w.mu.Unlock()
	if !do || k == nil {
		return
	}
	// Devices that proved their address here since the restore keep it.
	n, err := k.DropStored(ctx, s.Owns)
	if err != nil {
		s.cfg.Logger.Warn("site: the wake bindings a snapshot brought not forgotten yet; retrying", "forgot", n, "err", err)
		w.mu.Lock()
		w.dropStored = true
		w.mu.Unlock()
		return
	}
	s.cfg.Logger.Info("site: forgot the wake bindings the snapshot brought (another member's)", "bindings", n)
}

// dropBindings has the kicker forget the bindings of the devices other
// members took.
func (s *Site) dropBindings(ctx context.Context) {
	w := s.wake
	w.mu.Lock()
	k := w.k
	var us []push.UAID
	for u := range w.drops {
		us = append(us, u)
	}
	clear(w.drops)
	w.mu.Unlock()
	if k == nil {
		return
	}
	for _, u := range us {
		if ctx.Err() != nil {
			return
		}
		if err := k.Drop(ctx, u); err != nil {
			s.cfg.Logger.Warn("site: wake binding another member took not forgotten here", "uaid", u.String(), "err", err)
			continue
		}
		s.m.dropped.Inc()
	}
}

// proposeOwners proposes one wake owner entry for the devices waiting to
// be announced, those proposed within WakeOwnerGap waiting longer.
func (s *Site) proposeOwners(ctx context.Context) {
	w := s.wake
	now := s.cfg.Now()
	w.mu.Lock()
	var us []push.UAID
	for u := range w.announce {
		o := w.owned[u]
		if o == nil || !o.holds {
			delete(w.announce, u)
			continue
		}
		if !o.proposed.IsZero() && now.Sub(o.proposed) < s.cfg.WakeOwnerGap {
			s.m.ownerHeld.Inc()
			continue
		}
		us = append(us, u)
		if len(us) == maxOwnerBatch {
			break
		}
	}
	if len(us) == 0 {
		w.mu.Unlock()
		return
	}
	w.batch++
	batch := w.batch
	for _, u := range us {
		delete(w.announce, u)
		o := w.owned[u]
		o.batch, o.proposed = batch, now
	}
	w.mu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err := s.st.propose(pctx, &Entry{Kind: KindWakeOwner, UAIDs: us})
	cancel()
	if err == nil {
		s.m.owners.Add(float64(len(us)))
	}
	w.mu.Lock()
	for _, u := range us {
		if o := w.owned[u]; o != nil && o.batch == batch {
			// Not applied here (it failed, or its result is unknown):
			// propose it again.
			o.batch = 0
			if o.holds {
				w.announce[u] = struct{}{}
			}
		}
	}
	w.mu.Unlock()
	if err != nil && ctx.Err() == nil {
		s.cfg.Logger.Warn("site: wake owner entry not committed; proposed again later", "devices", len(us), "err", err)
	}
}
