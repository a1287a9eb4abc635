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
}

func newLinkMetrics(r *metrics.Registry) *linkMetrics {
	return &linkMetrics{
		open:        r.Gauge("pushrelay_upstream_sessions_open", "Held upstream sessions that said hello and are open."),
		connects:    r.CounterVec("pushrelay_upstream_connects_total", "Held-session connects to the upstream, by result (ok, error).", "result"),
		registers:   r.CounterVec("pushrelay_upstream_registers_total", "Registers passed to the upstream, by result (ok, refused, error).", "result"),
		messages:    r.CounterVec("pushrelay_upstream_messages_total", "Notifications from the upstream, by result (stored, duplicate, dropped_unregistered, dropped_bad, not_stored).", "result"),
		acks:        r.Counter("pushrelay_upstream_acks_total", "Notifications acked upstream (each after its durable ingest)."),
		resets:      r.CounterVec("pushrelay_upstream_resets_total", "Hellos the upstream answered with another UAID (it forgot ours), by via: held (a held session's hello; the device was reset here), request (a register's or unregister's own connection; the device was reset here), stale (for an identity the device no longer has: nothing to reset), failed (the reset could not be stored; the next hello tries again).", "via"),
		unregisters: r.Counter("pushrelay_upstream_unregisters_sent_total", "Devices' unregisters passed to the upstream (each kept durably until then)."),
	}
}
