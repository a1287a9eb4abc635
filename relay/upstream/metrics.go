package upstream

import "github.com/pushrelay/pushrelay/relay/metrics"

type linkMetrics struct {
	open        metrics.Gauge
	connects    *metrics.CounterVec
	registers   *metrics.CounterVec
	messages    *metrics.CounterVec
	acks        metrics.Counter
	resets      *metrics.CounterVec
	unregisters metrics.Counter
	polled      metrics.Gauge
	polls       *metrics.CounterVec
	pollRounds  metrics.Counter
	pollLag     metrics.Observer
	demotions   metrics.Counter

	bcOpen     metrics.Gauge
	bcConnects *metrics.CounterVec
	bcPending  metrics.Gauge
	bcIDs      *metrics.CounterVec
}

// Metrics are a link's metrics, registered once: links that run one
// after another on one registry (a site's holder, relay/site) share them
// through Config.Shared.
type Metrics struct{ m *linkMetrics }

// NewMetrics registers the link's metrics in r.
func NewMetrics(r *metrics.Registry) *Metrics { return &Metrics{newLinkMetrics(r)} }

func newLinkMetrics(r *metrics.Registry) *linkMetrics {
	return &linkMetrics{
		open:        r.Gauge("pushrelay_upstream_sessions_open", "Held upstream sessions that said hello and are open."),
		connects:    r.CounterVec("pushrelay_upstream_connects_total", "Held-session connects to the upstream, by result (ok, error).", "result"),
		registers:   r.CounterVec("pushrelay_upstream_registers_total", "Registers passed to the upstream, by result (ok, refused, error).", "result"),
		messages:    r.CounterVec("pushrelay_upstream_messages_total", "Notifications from the upstream, by result (stored, duplicate, dropped_unregistered, dropped_bad, not_stored).", "result"),
		acks:        r.Counter("pushrelay_upstream_acks_total", "Notifications acked upstream (each after its durable ingest)."),
		resets:      r.CounterVec("pushrelay_upstream_resets_total", "Hellos the upstream answered with another UAID (it forgot ours), by via: held (a held session's hello; the device was reset here), poll (a poll's hello; likewise), request (a register's or unregister's own connection; the device was reset here), stale (for an identity the device no longer has: nothing to reset), failed (the reset could not be stored; the next hello tries again).", "via"),
		polled:      r.Gauge("pushrelay_upstream_polled", "Device identities polled instead of held (upstream_sessions are held)."),
		polls:       r.CounterVec("pushrelay_upstream_polls_total", "Polls of devices not held, by result (empty, drained, more, error, reset).", "result"),
		pollRounds:  r.Counter("pushrelay_upstream_poll_rounds_total", "Connections polls made (a poll that drained something confirms with another)."),
		pollLag:     r.Histogram("pushrelay_upstream_poll_lag_seconds", "How late each poll started after its due time.", []float64{0.01, 0.1, 1, 5, 15, 60, 300, 900}),
		demotions:   r.Counter("pushrelay_upstream_demotions_total", "Held devices polled from then on to make room for a device that connected here."),
		unregisters: r.Counter("pushrelay_upstream_unregisters_sent_total", "Devices' unregisters passed to the upstream (each kept durably until then)."),

		bcOpen:     r.Gauge("pushrelay_upstream_broadcast_connected", "1 while the upstream broadcast connection is open (it said hello)."),
		bcConnects: r.CounterVec("pushrelay_upstream_broadcast_connects_total", "Connects of the upstream broadcast connection, by result (ok, error).", "result"),
		bcPending:  r.Gauge("pushrelay_upstream_broadcasts_pending", "Broadcast ids devices asked for that the relay asked upstream and has no version of yet."),
		bcIDs:      r.CounterVec("pushrelay_upstream_broadcast_ids_total", "Broadcast ids from or for the upstream, by result: changed (a version set in the registry), not_found (the upstream does not know an id devices asked for), refused (the relay's 1,024 ids are reached: not asked upstream), bad (an invalid id or version from the upstream), not_stored (the registry could not store a version).", "result"),
	}
}
