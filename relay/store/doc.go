// Package store is pushrelay's durable state, kept in one bbolt file.
//
// It is the only package that imports bbolt; the rest of pushrelay sees
// typed methods (Register, Append, Messages, Ack, ...), the types in
// types.go and the domain types of package push. Values are copied out of transactions, never aliased.
//
// # Layout
//
// Flat top-level buckets with fixed-width big-endian keys, so cursor order
// is numeric order and one device's rows are one contiguous key range:
//
//	devices   uaid(16)                          → device record
//	channels  uaid(16) chid(16)                 → channel record
//	messages  uaid(16) seq(8)                   → message record
//	          (bucket sequence = last seq issued, global, persisted)
//	topics    uaid(16) chid(16) topic(≤255)     → seq(8)
//	expiry    expiry(8, Unix ns) uaid(16) seq(8) → origin key, or empty
//	meta      "schema"                          → version(8)
//	          "devices" | "channels" | "waiting" → total(8)
//	          "upstream_ids" | "unregs"          → total(8) (schema 6)
//	          "clean"                           → 1 (clean-close mark)
//	          "epoch"                           → 8 random bytes naming the file (Store.Epoch)
//	broadcasts id(≤128)                         → version(≤128)
//	origins   kind(1) id(≤96)                   → uaid(16) seq(8) expiry(8)
//	upstream      uaid(16)                      → upstream uaid(16) | helloed(8)
//	upstream_rev  upstream uaid(16)             → uaid(16)
//	hellos        helloed(8) uaid(16)           → empty
//	tombstones    uaid(16) chid(16)             → outbox seq(8)
//	unreg_outbox  seq(8)                        → 1 | uaid(16) | chid(16) | upstream uaid(16) | at(8)
//	              (bucket sequence = last outbox seq issued)
//	link_children uaid(16)                      → child relay name (schema 7: linkchild.go)
//
// Records start with a format byte:
//
//	device   1 | created(8) | lastSeen(8) | waiting(4) | channels(4) | wake…
//	         (waiting is 0 since schema 3: see below)
//	channel  2 | created(8) | keyLen(uvarint) | vapidKey | endpoint…
//	         (since schema 6; format 1, 1 | created(8) | vapidKey…, still
//	         decodes: records are not rewritten by the migration)
//	message  1 | chid(16) | received(8) | ttl(8) | expiry(8) | urgency(1) |
//	         version(8) | topic | encoding | encryption | cryptoKey | data…
//
// Times are Unix nanoseconds (0 = zero time); the four message strings are
// uvarint-length prefixed; the trailing field takes the rest of the value.
// Seq comes from the messages bucket's NextSequence, so a device's
// messages iterate in arrival order. Store-wide totals live in meta and
// a device's channel count in its record, so neither Open nor Stats
// scans. A device's message count is not stored (keeping it would
// rewrite the device record on every append and ack): the committer
// counts the device's rows the first time Append needs them for the cap
// and then keeps the count in memory; Device counts them. A channel's
// row implies its device's record.
//
// # Origin keys
//
// A message appended with an origin key (push.Origin: where it came from
// and its id there) is indexed in origins, in the same transaction, and
// its expiry row names the key. An append whose key is in the index and
// whose TTL has not ended stores nothing and reports the first (its seq,
// and whether it still waits), so a source that re-sends is acked again
// and the device sees the message once, across restarts. The key outlives
// the message's ack (removeMessage leaves an expiry row that names a key)
// and the sweep removes both when the TTL ends, so the index holds at most
// one row per message appended within the longest TTL.
//
// # Upstream state
//
// What the upstream link keeps (schema 6, upstream.go): per device, the
// UAID that stands for it upstream (upstream, with the reverse lookup in
// upstream_rev for notifications coming back) and when it was last
// helloed there, with hellos ordering the devices by that time so the
// oldest is found without a scan; a hello rewrites these two small rows,
// never the device record. A channel registered through an upstream
// keeps the endpoint the upstream returned in its record. An unregister
// the upstream has not heard yet is an entry in unreg_outbox, numbered in
// the order made, and a tombstone (found by channel) that makes Append
// refuse the channel's messages with ErrTombstoned, and Register the
// channel, until UnregisterSent removes both. DeleteDevice removes the
// identity but not the outbox entries: the upstream still holds those
// channels.
//
// # Schema
//
// migrations (schema.go) is an ordered list; Open applies the ones newer
// than the file in a single transaction and records the version. A file
// newer than the build is refused with ErrSchemaTooNew.
//
// # Group commit
//
// Every mutating method is durable when it returns. Callers queue an
// operation to one committer goroutine, which takes the first queued
// operation plus whatever else is already queued (up to MaxBatch) and
// commits them in one transaction, one fsync. It adds no delay: while one
// batch is being written the next one queues. An operation's own
// rejection (ErrNoChannel, ErrTooManyChannels, ...) does not affect the
// rest of its batch.
//
// After each commit that stored messages, the committer passes them to the
// function set with OnStored, in seq order and as they stand at the commit
// (one replaced or dropped by a later op of its batch is left out), so a
// consumer can deliver them without reading them back.
//
// # Damage
//
// Close writes the clean-close mark and Open removes it (one small commit
// each, none on the hot path), so a file without it was not closed
// cleanly; Open then verifies it (Verify: the page bounds, bbolt's
// consistency check and a walk decoding every row) before serving it,
// and refuses a damaged file with ErrDamaged. Every read and commit runs
// with bbolt's panics and memory faults turned into ErrDamaged: the first
// one marks the Store damaged (logged once, pushrelay_store_damaged 1),
// every later call fails with it, and Close leaves the mark off, so the
// next Open verifies. Salvage copies what can still be read into a new
// file, with the acknowledged batches the write-ahead log holds beyond
// the damaged file's checkpoint; VerifyWAL checks that log beside a
// stopped store without changing anything (check-store).
//
// # Concurrency
//
// Store.mu (shared by senders and readers, exclusive in Close) is the only
// lock; the committer owns the write side of the file and the in-memory
// totals. bbolt lets reads run beside the committer.
package store
