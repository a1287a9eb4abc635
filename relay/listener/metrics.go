package listener

import "github.com/pushrelay/pushrelay/relay/metrics"

// Metrics are the guard's metric families in one registry, shared by every
// listener wrapped with them.
type Metrics struct {
	acceptErrors *metrics.CounterVec
	refused      *metrics.CounterVec
	full         *metrics.CounterVec
	open         *metrics.GaugeVec
}

// NewMetrics registers the guard's metrics in r (a private registry when r
// is nil). Call it once per registry.
func NewMetrics(r *metrics.Registry) *Metrics {
	r = metrics.OrNew(r)
	return &Metrics{
		acceptErrors: r.CounterVec("pushrelay_listener_accept_errors_total", "Failed accepts, retried after a backoff, by listener and reason (emfile, enfile, enobufs, enomem, econnaborted, other).", "listener", "reason"),
		refused:      r.CounterVec("pushrelay_listener_refused_total", "Connections closed as soon as accepted, by listener and reason (per_source: the source address had its maximum open).", "listener", "reason"),
		full:         r.CounterVec("pushrelay_listener_full_total", "Times a listener stopped accepting because its maximum of connections was open.", "listener"),
		open:         r.GaugeVec("pushrelay_listener_connections", "Connections open, by listener.", "listener"),
	}
}

// listenerMetrics are one listener's series.
type listenerMetrics struct {
	refusedPerSource metrics.Counter
	full             metrics.Counter
	open             metrics.Gauge
	acceptErrors     func(reason string) metrics.Counter
}

func (m *Metrics) forListener(name string) listenerMetrics {
	return listenerMetrics{
		refusedPerSource: m.refused.With(name, "per_source"),
		full:             m.full.With(name),
		open:             m.open.With(name),
		acceptErrors:     func(reason string) metrics.Counter { return m.acceptErrors.With(name, reason) },
	}
}
