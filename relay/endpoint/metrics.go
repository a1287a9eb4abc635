package endpoint

import "github.com/pushrelay/pushrelay/relay/metrics"

type apiMetrics struct {
	accepted     metrics.Counter
	errors       *metrics.CounterVec
	latency      metrics.Observer
	conns        metrics.Gauge
	refusedConns metrics.Counter
	storeFull    metrics.Gauge
}

func newAPIMetrics(r *metrics.Registry) *apiMetrics {
	return &apiMetrics{
		accepted:     r.Counter("pushrelay_endpoint_accepted_total", "Push requests answered 201."),
		errors:       r.CounterVec("pushrelay_endpoint_errors_total", "Push requests refused, by HTTP status and errno.", "status", "errno"),
		latency:      r.Histogram("pushrelay_endpoint_request_seconds", "Time from request to 201, including the durable write.", metrics.LatencyBuckets),
		conns:        r.Gauge("pushrelay_endpoint_connections", "App-server connections open."),
		refusedConns: r.Counter("pushrelay_endpoint_connections_refused_total", "App-server connections answered 503 because endpoint_concurrency were open."),
		storeFull:    r.Gauge("pushrelay_endpoint_store_full", "1 while pushes are refused because the store has no space left."),
	}
}
