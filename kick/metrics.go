package kick

import "github.com/pushrelay/pushrelay/relay/metrics"

type kickMetrics struct {
	sent       [2][2]metrics.Counter // [auth][retry]
	deferred   *metrics.CounterVec   // limit
	dropped    *metrics.CounterVec   // reason
	finished   *metrics.CounterVec   // reason
	sendErrors metrics.Counter
	hellos     *metrics.CounterVec // result
	bindings   *metrics.CounterVec // result
	pending    metrics.Gauge

	fresh        metrics.Gauge
	flushes      *metrics.CounterVec // result
	flushed      metrics.Counter
	flushSeconds metrics.Observer
}

func newKickMetrics(r *metrics.Registry) *kickMetrics {
	sent := r.CounterVec("pushrelay_wake_datagrams_total", "Wake datagrams sent, by format (compat, auth) and kind (first, retry).", "format", "kind")
	return &kickMetrics{
		sent: [2][2]metrics.Counter{
			{sent.With("compat", "first"), sent.With("compat", "retry")},
			{sent.With("auth", "first"), sent.With("auth", "retry")},
		},
		deferred:   r.CounterVec("pushrelay_wake_deferred_total", "Wake datagrams held back by a rate limit (global, target, target_table_full); they go later.", "limit"),
		dropped:    r.CounterVec("pushrelay_wake_dropped_total", "Wakes given up although messages wait, by reason (stale_address, outside_ranges, unknown_device, queue_full, store_error, bad_record).", "reason"),
		finished:   r.CounterVec("pushrelay_wake_finished_total", "Wakes ended normally, by reason (connected, expired, nothing_waiting, nothing_urgent, not_wakeable: an offline device that left no wake address; owner_moved: in a site, another member became its wake owner).", "reason"),
		sendErrors: r.Counter("pushrelay_wake_send_errors_total", "Wake datagrams the socket refused; they are retried like any other."),
		hellos:     r.CounterVec("pushrelay_wake_hellos_total", "Hellos with wake fields, by result (accepted: status 201; not_accepted: 200).", "result"),
		bindings:   r.CounterVec("pushrelay_wake_bindings_total", "Authenticated STUN bindings accepted, by result (written: a move, written to the store before the answer; refreshed: a refresh in place, kept in memory until the next flush; dropped: in a site, forgotten because the device proved its address to another member).", "result"),
		pending:    r.Gauge("pushrelay_wake_pending", "Devices with a wake due."),

		fresh:        r.Gauge("pushrelay_wake_fresh_bindings", "Bindings refreshed in place whose freshness is held in memory, not yet flushed to the store (at most wake_fresh_max)."),
		flushes:      r.CounterVec("pushrelay_wake_flushes_total", "Flushes of the bindings' freshness to the store (one transaction each), by result (ok, error).", "result"),
		flushed:      r.Counter("pushrelay_wake_flushed_bindings_total", "Bindings whose freshness a flush wrote."),
		flushSeconds: r.Histogram("pushrelay_wake_flush_seconds", "Time one flush took, commit included.", []float64{.001, .005, .01, .05, .1, .5, 1, 5, 30}),
	}
}

func (m *kickMetrics) sentCounter(auth, retry bool) metrics.Counter {
	return m.sent[b2i(auth)][b2i(retry)]
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
