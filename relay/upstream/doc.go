// Package upstream links a relay to an upstream autopush-compatible push
// server (Mozilla's autopush, or another pushrelay), speaking the device
// WebSocket protocol to it as one ordinary client per device UAID.
//
// A Link is the relay's relay.Endpoints: a device's first register makes
// its upstream identity (a hello without a UAID gives the upstream's, kept
// in the store with store.AddUpstreamID), registers the channel upstream
// with the device's channel ID and VAPID key, and answers the upstream's
// pushEndpoint unchanged; the hub stores it with the channel
// (relay.EndpointKeeper). Later registers reuse the identity, through the
// device's held session when it is open. Every wait on the upstream is
// bounded (Config.RequestTimeout) so that a register is answered well
// within Firefox's 10 s.
//
// A device's unregister (relay.Unregisterer) removes the channel here and
// keeps the unregister in the store's outbox, in one commit, without
// waiting on the network; while Run runs, a sender passes the outbox
// upstream (at start, at each new entry, and after a failure with the
// sessions' backoff).
//
// While Run runs, each device with an upstream identity (up to
// Config.MaxSessions) has one held session: a hello with its upstream
// UAID, then every notification the upstream sends goes into the core
// through the Ingester (origin key push.UpstreamOrigin(upstream UAID,
// channel, version), TTL Config.TTL, urgency normal: upstream frames carry
// neither) and is acked upstream only once Ingest returned it durable, a
// duplicate and a message for a channel unregistered here included. A
// message Ingest could not store is not acked: the session is closed and
// the upstream sends it again on the next connect. Lost sessions reconnect
// after a jittered exponential backoff (Config.BackoffMin doubling to
// Config.BackoffMax). The link never sends the {} ping (autopush closes a
// client that sends it more than once per 45 s); the upstream's WebSocket
// pings are answered, and each extends the session's read deadline
// (Config.ReadTimeout), so a session is dropped only when the upstream
// stopped sending even pings.
//
// Resets: an upstream that answers a hello for a device's upstream UAID
// with another UAID forgot the device (autopush: 60 days without a hello,
// or a backlog past msg_limit). The link then resets the device here
// through the Ingester given to Run, when it is a Resetter (the hub:
// channels, identity and stored messages deleted, its session closed, a
// new UAID at its next hello); the UAID the upstream gave is not kept. A
// held session that met a reset ends; a register that met one fails.
//
// Broadcasts: with Config.Broadcasts (the relay's broadcast.Registry) the
// link keeps one more connection, a hello without a UAID that never
// registers, subscribed to the registry's ids and to those devices asked
// for that it lacks (Link.Broadcasts is the hub's source, a
// relay.BroadcastWanter); the upstream's versions are set in the registry
// under the source "upstream" (broadcast.go).
//
// Batches: autopush sends stored messages 10 at a time and the next batch
// only when the whole one is acked. The session's reader queues each
// notification (at most Config.MaxInflight unacked); an ingester drains
// the queue up to 10 at a time, one Ingest call (one commit) and one ack
// frame per batch. autopush sends a partly acked batch again, whole, on
// the next connect; the origin keys make what was stored here duplicates,
// acked again and not delivered again.
//
// Goroutines: one per held session, parked in its read, and one more
// while its notifications wait to be stored and acked; one for the
// link that sends the pending unregisters; and, with broadcasts, one for
// the broadcast connection and one more that sends its subscribes while
// it is connected. Held sessions connect at most Config.ConnectRate
// times a second, all together, and each connects again after about
// Config.MaxSessionAge so that every identity says hello that often.
// Run ends when its context does or at Close; either way it returns once
// every goroutine it started has.
//
// Locks: Link.mu, a held session's mu, its inbox's mu and the broadcast
// connection's mu; never two at once, none held across a store call or a
// socket write.
package upstream
