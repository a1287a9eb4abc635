package member

import "github.com/hashicorp/memberlist"

// One small adapter per memberlist interface, as serf does. memberlist
// calls them on its own goroutines, some under its locks: each takes the
// Member's mutex briefly and never blocks.

// delegate serves this member's metadata. The site exchanges no user
// messages and no user state through memberlist.
type delegate struct{ m *Member }

func (d delegate) NodeMeta(limit int) []byte {
	d.m.mu.Lock()
	defer d.m.mu.Unlock()
	if len(d.m.meta) > limit {
		return nil // EncodeMeta keeps it within MetaMaxSize; never here
	}
	return append([]byte(nil), d.m.meta...)
}

func (delegate) NotifyMsg([]byte)                           {}
func (delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (delegate) LocalState(join bool) []byte                { return nil }
func (delegate) MergeRemoteState(buf []byte, join bool)     {}

// events records joins, updates and leaves (failures among them).
type events struct{ m *Member }

func (e events) NotifyJoin(n *memberlist.Node)   { e.m.observe(EventJoin, n) }
func (e events) NotifyLeave(n *memberlist.Node)  { e.m.observe(EventLeave, n) }
func (e events) NotifyUpdate(n *memberlist.Node) { e.m.observe(EventUpdate, n) }

// conflicts logs a second member claiming this member's name, or two
// others claiming one name: node names must be unique on a site.
type conflicts struct{ m *Member }

func (c conflicts) NotifyConflict(existing, other *memberlist.Node) {
	c.m.met.conflicts.Inc()
	c.m.log.Error("cluster: two members claim one name (node_name must be unique on the site)",
		"name", existing.Name, "known_addr", existing.Address(), "other_addr", other.Address())
}
