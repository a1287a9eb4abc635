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
// While Run runs, up to Config.MaxSessions devices with an upstream
// identity have one held session each (devices connected here first,
// then the most recently active: store.Device.LastSeen, or the identity's
// last hello), the others are polled (below). A held session is a hello
// with its upstream UAID, then every notification the upstream sends goes into the core
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
// Held or polled: the link hears of local connects and disconnects
// (relay.PresenceWatcher, from the hub). A polled device that connects
// here is held from then on, in place of the least recently active held
// device not connected here (its session is ended and it is polled,
// first one interval on); while every held device is connected here, it
// stays polled. A device's first register holds it the same way. The
// link's state is one small record per identity (Link.devs) and a heap
// of the polled ones by due time.
//
// Polls: each polled device is polled every Config.PollInterval,
// jittered by a tenth (the first polls at start spread evenly over one
// interval, so that thousands do not poll at once); one scheduler starts
// those due, at most Config.MaxPolls at once, each connect paced with the
// held sessions' (Config.ConnectRate). A poll is up to maxRounds
// connections. Each connects, says hello (recorded with Store.Helloed:
// a poll is the weekly hello too) and sends the {} ping at once. autopush
// answers each client message in full before it reads the next (the
// hello's answer includes its first check of storage, up to 10 stored
// messages; an ack of a whole batch is answered with the next), and
// answers the first {} of every connection (last_ping starts at 0; a
// second within 45 s closes the connection). So a {} answered before any
// notification confirms that the upstream held nothing: the poll closes.
// Otherwise the notifications are stored and acked as a held session's
// (held.deliver: ingest, then the ack after the commit), which lets the
// upstream send the next batch; once the inbox is empty and nothing came
// for twice the {}'s round trip after the last ack, the connection is
// closed and the next one confirms. A poll that did not confirm within
// maxRounds is polled again after a backoff (result "more"); a failed
// one after the sessions' backoff, doubling; one that drained
// drainedMany (50) or more after an eighth of the interval: autopush
// deletes a UAID whose backlog reaches msg_limit (150), and polling sooner
// keeps a busy device under it unless the backhaul is down longer.
// Notifications sent directly (posted while the poll is connected) count
// as maybe more; autopush stores unacked direct ones at the close.
//
// Goroutines: one per held session while it connects, waits out its
// backoff or reads; an open session with nothing to read has none: its
// connection is parked on the link's poller (pushclient.Poller, epoll,
// Linux; elsewhere the goroutine stays, blocked in its read), whose wake
// (bytes, the read deadline, a close) starts a reader that parks again
// once nothing is buffered above the socket. One more per session while
// its notifications wait to be stored and acked; one for the poller; one
// for the
// link that sends the pending unregisters; one that schedules polls, and
// per running poll one, plus its reader and its ingester; and, with
// broadcasts, one for the broadcast connection and one more that sends
// its subscribes while it is connected. Held sessions and polls connect
// at most Config.ConnectRate times a second, all together, and each
// connects again after about
// Config.MaxSessionAge so that every identity says hello that often.
// Run ends when its context does or at Close; either way it returns once
// every goroutine it started has.
//
// Locks: Link.mu, a held session's mu, its inbox's mu and the broadcast
// connection's mu; never two at once, none held across a store call or a
// socket write.
package upstream
