// Package site makes several relays on one site act as one (issue #9):
// the writes that decide what devices are sent (messages, acks, deletes,
// registrations, unregistrations, device resets, broadcast versions,
// expiry) become entries of a replicated log (relay/consensus), and each
// member applies the committed entries to its own store
// (store.Store.Apply), so any member can serve any device from its own
// disk, and the store's commit feed drives delivery on every member as it
// does on a single relay.
//
// This file's slice: the log entry's encoding (entry.go), fuzzed.
package site
