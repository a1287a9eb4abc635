package site

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/push"
)

// The site as the parent of child relays (relay_listen on its members,
// issue #9 point 3): every member listens, and the member that holds the
// site's upstream (the holder, holder.go: the leader) takes the children;
// the others refuse them busy, naming the holder's link address, and a
// child with the site's members' addresses tries the next (relay/link).
// What the parent keeps for its children is written through the log
// (KindLink entries, this file): which child serves each UAID, the
// forgets a child answered, each child's last address, and the messages
// children acked (deleted on every member); every member applies it, and
// each member's parent hears of every claim (NoteChild), so the hub of
// any member knows which devices a child serves. A member that comes to
// hold reloads the children's state from its store and sends the restart
// hint to every child's last address: a child still connected to the
// last holder moves to it at once. The origin ids of the messages sent
// down name the site's link epoch (OpLinkEpoch: proposed once by the
// first holder, the same on every member), not a member's store epoch, so
// a message resent by the next holder has the id it had, and the child's
// origin keys drop the copy.

// LinkParent is the node's relay/link.Parent as the site drives it.
type LinkParent interface {
	// Hold takes children until ctx ends, with the site's epoch.
	Hold(ctx context.Context, epoch []byte) error
	// NoteChild hears that child serves u (applied from the log).
	NoteChild(u push.UAID, child string)
	// Reload reads the children's state from the store again (after a
	// snapshot replaced it), while it does not Hold.
	Reload() error
}

// LinkParent makes this member's relay link listener the site's: it
// takes children while this member holds (Hold, with the upstream's
// holding if any). Call it before Run.
func (s *Site) LinkParent(p LinkParent) {
	s.holder().parent = p
}

// HolderLinkAddr is the relay link address (relay_listen) of the member
// that holds the site's children now, from its gossip metadata ("" when
// unknown).
func (s *Site) HolderLinkAddr() string {
	hid, _ := s.Holder()
	if hid == 0 {
		return ""
	}
	for _, in := range s.cfg.Members() {
		if in.Meta.RaftID == hid {
			return in.Meta.LinkAddr
		}
	}
	return ""
}

// newHolding makes what this member runs while it holds: the upstream's
// holding, the link parent's, or both together.
func (s *Site) newHolding(ctx context.Context) (Holding, error) {
	h := s.up
	var up Holding
	if h.newHolding != nil {
		var err error
		if up, err = h.newHolding(); err != nil {
			return nil, err
		}
	}
	if h.parent == nil {
		return up, nil
	}
	epoch, err := s.linkEpoch(ctx)
	if err != nil {
		return nil, fmt.Errorf("site: the link epoch: %w", err)
	}
	return &parentHolding{up: up, parent: h.parent, epoch: epoch}, nil
}

// linkEpoch is the site's link epoch, proposed when the store has none
// (8 random bytes; the first applied stays).
func (s *Site) linkEpoch(ctx context.Context) ([]byte, error) {
	if e, ok, err := s.st.LinkEpoch(); err != nil || ok {
		return e, err
	}
	e := make([]byte, 8)
	rand.Read(e)
	pctx, cancel := context.WithTimeout(ctx, s.proposeBound())
	defer cancel()
	if _, err := s.st.propose(pctx, &Entry{Kind: KindLink, Op: OpLinkEpoch, LinkEpoch: e}); err != nil && !errors.Is(err, ErrNoResult) {
		return nil, err
	}
	e, ok, err := s.st.LinkEpoch()
	if err == nil && !ok {
		err = errors.New("site: no link epoch after its entry")
	}
	return e, err
}

// parentHolding runs the link parent's Hold beside the upstream's
// holding (if any); either ending ends both.
type parentHolding struct {
	up     Holding
	parent LinkParent
	epoch  []byte
}

func (p *parentHolding) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	if p.up != nil {
		wg.Go(func() {
			defer cancel()
			errs[0] = p.up.Run(ctx)
		})
	}
	wg.Go(func() {
		defer cancel()
		errs[1] = p.parent.Hold(ctx, p.epoch)
	})
	wg.Wait()
	return errors.Join(errs...)
}

func (p *parentHolding) Mint(ctx context.Context, r relay.Registration) (string, error) {
	if p.up == nil {
		return "", errors.New("site: no upstream")
	}
	return p.up.Mint(ctx, r)
}

func (p *parentHolding) Abandon(ctx context.Context, r relay.Registration) {
	if p.up != nil {
		p.up.Abandon(ctx, r)
	}
}

func (p *parentHolding) KickUnregisters() {
	if p.up != nil {
		p.up.KickUnregisters()
	}
}

// DeviceOnline and DeviceOffline pass on to the upstream's holding.
func (p *parentHolding) DeviceOnline(u push.UAID) {
	if pw, ok := p.up.(relay.PresenceWatcher); ok {
		pw.DeviceOnline(u)
	}
}

func (p *parentHolding) DeviceOffline(u push.UAID) {
	if pw, ok := p.up.(relay.PresenceWatcher); ok {
		pw.DeviceOffline(u)
	}
}

// reloadLinkParent reads the link parent's state from the store again
// when a snapshot replaced it (restored), unless this member holds: a
// holder's parent reloads when it comes to hold, and leaders do not get
// snapshots. On the holder's loop.
func (s *Site) reloadLinkParent(holding bool) {
	h := s.up
	if h.parent == nil || holding || !s.parentStale.CompareAndSwap(true, false) {
		return
	}
	if err := h.parent.Reload(); err != nil {
		s.parentStale.Store(true)
		s.cfg.Logger.Warn("site: the link parent's children not read again after a snapshot", "err", err)
	}
}

// noteLinkParent hears of a link entry applied here (on the applying
// goroutine).
func (s *Site) noteLinkParent(e *Entry) {
	if e.Op == OpLinkChild && s.up != nil && s.up.parent != nil {
		s.up.parent.NoteChild(e.UAID, e.LinkName)
	}
}

// ---- the link parent's writes, through the log ----

// SetLinkChild proposes that child serves u (store.Store.SetLinkChild).
func (s *Store) SetLinkChild(ctx context.Context, u push.UAID, child string) error {
	r, err := s.propose(ctx, &Entry{Kind: KindLink, Op: OpLinkChild, UAID: u, LinkName: child})
	if err != nil {
		return err
	}
	return r.Err
}

// LinkForgotten proposes that child was told it no longer serves u.
func (s *Store) LinkForgotten(ctx context.Context, u push.UAID, child string) error {
	r, err := s.propose(ctx, &Entry{Kind: KindLink, Op: OpLinkForgotten, UAID: u, LinkName: child})
	if err != nil {
		return err
	}
	return r.Err
}

// SetLinkChildAddr proposes child's last address.
func (s *Store) SetLinkChildAddr(ctx context.Context, child string, addr netip.AddrPort) error {
	r, err := s.propose(ctx, &Entry{Kind: KindLink, Op: OpLinkChildAddr, LinkName: child, LinkAddr: addr})
	if err != nil {
		return err
	}
	return r.Err
}

// AckMany proposes deleting the messages children acked
// (store.Store.AckMany), split in entries of at most maxSeqs.
func (s *Store) AckMany(ctx context.Context, seqs map[push.UAID][]uint64) (int, error) {
	n := 0
	for len(seqs) > 0 {
		part, count := map[push.UAID][]uint64{}, 0
		for u, ss := range seqs {
			if count > 0 && count+len(ss) > maxSeqs {
				break
			}
			part[u], count = ss, count+len(ss)
		}
		for u := range part {
			delete(seqs, u)
		}
		r, err := s.propose(ctx, &Entry{Kind: KindLink, Op: OpLinkAcks, Acks: part})
		if err != nil {
			return n, err
		}
		n += r.N
	}
	return n, nil
}
