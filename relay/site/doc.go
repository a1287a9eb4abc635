// Package site makes several relays on one site act as one (issue #9):
// the writes that decide what devices are sent (messages, acks, deletes,
// registrations, unregistrations, device resets, broadcast versions,
// expiry) become entries of a replicated log (relay/consensus), and each
// member applies the committed entries to its own store
// (store.Store.Apply), so any member can serve any device from its own
// disk, and the store's commit feed drives delivery on every member as it
// does on a single relay.
//
// A site's upstream (a ws:// or wss:// one, relay/upstream, or the relay
// link to a parent, relay/link.Child) is held by one member at a time,
// the leader, named by a holder entry; the upstream link's state is
// written through the log, and a register at another member is asked of
// the holder through the log (holder.go). The whole site is one child of
// its parent: every member presents the same link identity (linkid.go).
// The holder also takes the site's own relay link children
// (relay_listen), the parent side's state written through the log
// (parent.go).
//
// Files: the log entry's encoding (entry.go, fuzzed), the state machine
// (machine.go), the store the relay core writes through (store.go), the
// member's part of the site (site.go), the upstream's holder (holder.go),
// the link identity (linkid.go), the link parent (parent.go).
package site
