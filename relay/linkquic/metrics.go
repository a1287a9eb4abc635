package linkquic

import "github.com/pushrelay/pushrelay/relay/metrics"

type linkMetrics struct {
	handshakes *metrics.CounterVec
	open       metrics.Gauge
	closes     *metrics.CounterVec
	hints      metrics.Counter
}

func newLinkMetrics(r *metrics.Registry) *linkMetrics {
	return &linkMetrics{
		handshakes: r.CounterVec("pushrelay_link_handshakes_total", "Children's link handshakes on this parent, by result (ok, bad_ca, unknown_pin, no_certificate, expired, wrong_alpn, wrong_token).", "result"),
		open:       r.Gauge("pushrelay_link_conns_open", "Child links connected to this parent."),
		closes:     r.CounterVec("pushrelay_link_closes_total", "Child links that ended on this parent, by cause (local, remote, idle_timeout, stateless_reset, tls, transport).", "cause"),
		hints:      r.Counter("pushrelay_link_hints_sent_total", "Restart hints this parent sent to its children's last addresses when it started."),
	}
}
