package site

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pushrelay/pushrelay/relay/member"
)

// One child identity per site. With a quic:// upstream the whole site is
// one child of its parent, whichever member holds the link: every member
// must present the same name, with the same certificate (or token), or
// the parent would see another child at each holder change (whose
// devices it does not serve), or refuse it. Each member announces its
// identity (LinkIdentity: the link name and a fingerprint of the name
// and the certificate, relay/link.IdentityPrint) through the log (a
// KindLink OpIdentity entry, nothing stored) when it starts, after a
// snapshot replaced its store, and at each change of holder; every
// member keeps the identities announced by the members alive. The
// identity of more than half the members alive is the site's; a member
// holds the link only while its own is (so a site starting waits, a
// tick or two, for a majority to announce theirs), and one whose
// identity is not the site's is refused: it never holds the link (it
// stops it at once), it logs an error naming the members that differ,
// and its /readyz answers 503 with the reason (LinkRefused). The others
// log once each member they refused. Without a majority for any
// identity (two members that differ, the third away) nobody holds the
// link: the parent keeps the site's messages meanwhile.

// LinkIdentity is what a member presents on the relay link to the
// parent: its link name and a fingerprint of the name and of its
// certificate or token (relay/link.IdentityPrint).
type LinkIdentity struct {
	Name  string
	Print uint64
}

// linkIDs is the identities announced, by member, and this member's
// refusal.
type linkIDs struct {
	mu       sync.Mutex
	by       map[uint64]LinkIdentity
	announce bool // this member's identity is to be announced (again)
	tried    time.Time
	refused  string // why this member does not hold the link; "" when it may
	logged   map[uint64]LinkIdentity
}

// announceEvery bounds how often a member proposes its identity.
const announceEvery = time.Second

// LinkRefused says why this member does not hold the relay link to the
// parent (its link identity differs from the site's), or "".
func (s *Site) LinkRefused() string {
	s.lid.mu.Lock()
	defer s.lid.mu.Unlock()
	return s.lid.refused
}

// noteLinkID keeps a member's announced identity (on the applying
// goroutine).
func (s *Site) noteLinkID(e *Entry) {
	s.lid.mu.Lock()
	if s.lid.by == nil {
		s.lid.by = map[uint64]LinkIdentity{}
	}
	s.lid.by[e.Member] = LinkIdentity{Name: e.LinkName, Print: e.LinkPrint}
	s.lid.mu.Unlock()
	if s.up != nil {
		s.up.wake()
	}
}

// reannounceLinkID makes this member announce its identity again (a new
// holder was named, or the store was replaced by a snapshot: the other
// members, or this one, may have lost the identities they kept).
func (s *Site) reannounceLinkID() {
	s.lid.mu.Lock()
	s.lid.announce = true
	s.lid.mu.Unlock()
}

// announceLinkID proposes this member's identity when it is due (the
// holder's loop, every tick, with the link configured).
func (s *Site) announceLinkID(ctx context.Context) {
	now := s.cfg.Now()
	s.lid.mu.Lock()
	_, known := s.lid.by[s.id]
	due := (s.lid.announce || !known) && now.Sub(s.lid.tried) >= announceEvery
	if due {
		s.lid.tried, s.lid.announce = now, false
	}
	s.lid.mu.Unlock()
	if !due || !s.InSite() {
		return
	}
	id := s.up.identity
	pctx, cancel := context.WithTimeout(ctx, s.proposeBound())
	defer cancel()
	if _, err := s.st.propose(pctx, &Entry{Kind: KindLink, Op: OpIdentity, LinkName: id.Name, LinkPrint: id.Print}); err != nil && !errors.Is(err, ErrNoResult) {
		s.lid.mu.Lock()
		s.lid.announce = true
		s.lid.mu.Unlock()
		s.cfg.Logger.Debug("site: link identity not announced", "err", err)
	}
}

// checkLinkID decides whether this member's identity is the site's,
// from the identities announced by the members alive, records and logs
// the outcome, and reports whether this member may hold the link: its
// identity is that of more than half the members alive. Fewer of them
// may have announced theirs yet (a site starting, a holder change): the
// member waits, refused nothing. Another identity than its own held by
// more than half of them refuses it.
func (s *Site) checkLinkID() (hold bool) {
	mine := s.up.identity
	alive := map[uint64]string{s.id: s.cfg.Name}
	for _, in := range s.cfg.Members() {
		if in.State == member.StateAlive && in.Meta.RaftID != 0 {
			alive[in.Meta.RaftID] = in.Name
		}
	}
	s.lid.mu.Lock()
	defer s.lid.mu.Unlock()
	groups := map[LinkIdentity][]uint64{mine: {s.id}}
	for id, li := range s.lid.by {
		if _, ok := alive[id]; ok && id != s.id {
			groups[li] = append(groups[li], id)
		}
	}
	var site *LinkIdentity
	for li, g := range groups {
		if 2*len(g) > len(alive) {
			site = &li
		}
	}
	var differ []string
	for li, g := range groups {
		if li == mine {
			continue
		}
		for _, id := range g {
			differ = append(differ, alive[id])
			if site == nil || *site != mine {
				continue
			}
			if s.lid.logged == nil {
				s.lid.logged = map[uint64]LinkIdentity{}
			}
			if was, ok := s.lid.logged[id]; !ok || was != li {
				s.lid.logged[id] = li
				s.m.linkRefused.With("other").Inc()
				s.cfg.Logger.Error("site: member refused on the relay link: its link identity differs from this site's; it must present the same link_name with the same link_cert and link_key",
					"member", alive[id], "its_link_name", li.Name, "its_link_print", fmt.Sprintf("%016x", li.Print),
					"site_link_name", mine.Name, "site_link_print", fmt.Sprintf("%016x", mine.Print))
			}
		}
	}
	slices.SortFunc(differ, cmp.Compare)
	why := ""
	if site != nil && *site != mine {
		why = fmt.Sprintf("this member's relay link identity (link_name %q, link_cert %016x) differs from the site's (link_name %q, %016x; members %s): it does not hold the link to the parent; copy link_cert and link_key from a member of the site and set the same link_name, then restart it (docs/cluster.md, \"A site as a child\")",
			mine.Name, mine.Print, site.Name, site.Print, strings.Join(differ, ", "))
	}
	was := s.lid.refused
	s.lid.refused = why
	switch {
	case why != "" && why != was:
		s.m.linkRefused.With("self").Inc()
		s.cfg.Logger.Error("site: " + why)
	case why == "" && was != "":
		s.cfg.Logger.Info("site: this member's relay link identity is the site's now")
	}
	return site != nil && *site == mine
}
