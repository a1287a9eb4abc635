package site

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/pushrelay/pushrelay/relay/member"
)

// One set of keys per site. Every member serves every device from its
// own store, so endpoint.key (which seals the endpoints handed out) and
// wake.key (from which every device's wake key derives) must be the same
// on every member: with another endpoint.key a member answers 404 to
// posts to endpoints the others made, with another wake.key its STUN
// socket refuses the devices' bindings. Each member carries fingerprints
// of both in its metadata (member.Meta.EndpointKey, WakeKey), and one
// whose fingerprints differ from the site's does not form or join it: it
// logs an error naming the file and what to do, and its KeysRefused is
// what /readyz (503) and /status show. The members in the site log which
// member they refused and why, and the leader never adds it as a voter.

// KeyPrints are the fingerprints of a member's endpoint.key and wake.key
// (cmd/pushrelay makes them with node.KeyPrint); zero: not checked.
type KeyPrints struct{ Endpoint, Wake uint64 }

// keyCheck is the keys' check state.
type keyCheck struct {
	mu      sync.Mutex
	refused string                 // why this member is refused; "" when it is not
	logged  map[string]member.Meta // others refused, by name, as logged
}

// KeysRefused says why this member does not form or join the site (its
// keys differ from the site's), or "".
func (s *Site) KeysRefused() string {
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	return s.keys.refused
}

// Keys are this member's key fingerprints (Config.Keys).
func (s *Site) Keys() KeyPrints { return s.cfg.Keys }

// printsOf is a member's fingerprints as its metadata reports them.
func printsOf(md member.Meta) KeyPrints { return KeyPrints{md.EndpointKey, md.WakeKey} }

// keysDiffer names the files whose fingerprints differ between this
// member and md ("" when they are the same, or either side reports none).
func (s *Site) keysDiffer(md member.Meta) string {
	mine, theirs := s.cfg.Keys, printsOf(md)
	if mine == (KeyPrints{}) || theirs == (KeyPrints{}) {
		return ""
	}
	var files []string
	if mine.Endpoint != theirs.Endpoint {
		files = append(files, "endpoint.key")
	}
	if mine.Wake != theirs.Wake {
		files = append(files, "wake.key")
	}
	return strings.Join(files, " and ")
}

// refuse records (and logs, once per reason) that this member's files
// differ from those of members names; "" files clears it.
func (s *Site) refuse(files string, names []string) {
	why := ""
	if files != "" {
		why = fmt.Sprintf("this member's %s differs from the site's (members %s): it does not form or join the site; copy endpoint.key and wake.key from a member of the site into this member's data dir, then restart it (docs/cluster.md, \"One set of keys\")",
			files, strings.Join(names, ", "))
	}
	s.keys.mu.Lock()
	was := s.keys.refused
	s.keys.refused = why
	s.keys.mu.Unlock()
	switch {
	case why != "" && why != was:
		s.m.keysRefused.With("self").Inc()
		s.cfg.Logger.Error("site: "+why, "files", files, "dir", s.cfg.Dir)
	case why == "" && was != "":
		s.cfg.Logger.Info("site: this member's keys are the site's now")
	}
}

// checkOthers (a member in the site) logs, once per member and keys,
// each alive member whose keys differ from this one's: it is refused.
// It returns their consensus ids: the leader does not add them.
func (s *Site) checkOthers() map[uint64]bool {
	var out map[uint64]bool
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	for _, in := range s.cfg.Members() {
		if in.Self || in.State != member.StateAlive {
			continue
		}
		files := s.keysDiffer(in.Meta)
		if files == "" {
			continue
		}
		if out == nil {
			out = map[uint64]bool{}
		}
		out[in.Meta.RaftID] = true
		if s.keys.logged == nil {
			s.keys.logged = map[string]member.Meta{}
		}
		if was, ok := s.keys.logged[in.Name]; ok && printsOf(was) == printsOf(in.Meta) {
			continue
		}
		s.keys.logged[in.Name] = in.Meta
		s.m.keysRefused.With("other").Inc()
		s.cfg.Logger.Error("site: member refused: its keys differ from this site's; it must get this site's endpoint.key and wake.key",
			"member", in.Name, "files", files,
			"its_endpoint_key", fmt.Sprintf("%016x", in.Meta.EndpointKey), "its_wake_key", fmt.Sprintf("%016x", in.Meta.WakeKey),
			"site_endpoint_key", fmt.Sprintf("%016x", s.cfg.Keys.Endpoint), "site_wake_key", fmt.Sprintf("%016x", s.cfg.Keys.Wake))
	}
	return out
}

// founders picks, among the alive members of a site not formed yet, those
// with the same keys: the largest such group, on a tie the one with the
// lowest id (every member picks alike from the same membership). Members
// that report no keys go with every group.
func founders(alive []member.Info) []member.Info {
	groups := map[KeyPrints][]member.Info{}
	var blank []member.Info
	for _, in := range alive {
		if k := printsOf(in.Meta); k != (KeyPrints{}) {
			groups[k] = append(groups[k], in)
		} else {
			blank = append(blank, in)
		}
	}
	if len(groups) <= 1 {
		return alive
	}
	minID := func(g []member.Info) uint64 {
		return slices.MinFunc(g, func(a, b member.Info) int { return cmp.Compare(a.Meta.RaftID, b.Meta.RaftID) }).Meta.RaftID
	}
	var best []member.Info
	for _, g := range groups {
		if best == nil || len(g) > len(best) || (len(g) == len(best) && minID(g) < minID(best)) {
			best = g
		}
	}
	return append(slices.Clone(best), blank...)
}
