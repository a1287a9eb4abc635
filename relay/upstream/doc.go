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
// While Run runs, each device with an upstream identity (up to
// Config.MaxSessions) has one held session: a hello with its upstream
// UAID, then every notification the upstream sends goes into the core
// through the Ingester (origin key push.UpstreamOrigin(upstream UAID,
// channel, version), TTL Config.TTL, urgency normal: upstream frames carry
// neither) and is acked upstream only once Ingest returned it durable, a
// duplicate and a message for a channel unregistered here included. A
// message Ingest could not store is not acked: the session is dropped and
// the upstream sends it again on the next connect. Lost sessions reconnect
// after a jittered exponential backoff (Config.BackoffMin doubling to
// Config.BackoffMax). The link never sends the {} ping (autopush closes a
// client that sends it more than once per 45 s); the upstream's WebSocket
// pings are answered, and each extends the session's read deadline
// (Config.ReadTimeout), so a session is dropped only when the upstream
// stopped sending even pings.
//
// Goroutines: one per held session, parked in its read, which also does
// the session's Ingest calls; so at most one notification per session is
// in flight between the upstream and the store.
package upstream
