// Package site makes several relays on one site act as one (issue #9):
// the writes that decide what devices are sent (messages, acks, deletes,
// registrations, unregistrations, device resets, broadcast versions,
// expiry) become entries of a replicated log (relay/consensus), and each
// member applies the committed entries to its own store
// (store.Store.Apply), so any member can serve any device from its own
// disk, and the store's commit feed drives delivery on every member as it
// does on a single relay.
//
// A site's upstream (a ws:// or wss:// one, relay/upstream) is held by one
// member at a time, the leader, named by a holder entry; the upstream
// link's state is written through the log, and a register at another
// member is asked of the holder through the log (holder.go).
//
// Files: the log entry's encoding (entry.go, fuzzed), the state machine
// (machine.go), the store the relay core writes through (store.go), the
// member's part of the site (site.go), the upstream's holder (holder.go).
package site
