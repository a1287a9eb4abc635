package megaphone

import "github.com/pushrelay/pushrelay/relay/metrics"

// Poll results, the label of pushrelay_megaphone_polls_total.
const (
	resultOK          = "ok"          // answer read and applied (changed or not)
	resultStatus      = "status"      // the service answered with a status other than 2xx
	resultBadAnswer   = "bad_answer"  // the answer was not a valid broadcasts map; nothing changed
	resultTimeout     = "timeout"     // no whole answer within the request timeout
	resultUnreachable = "unreachable" // connect, TLS or read failed
	resultStore       = "store"       // the answer was good but could not be stored
)

type pollerMetrics struct {
	polls       *metrics.CounterVec
	lastSuccess metrics.Gauge
	changed     metrics.Counter
	failing     metrics.Gauge
}

func newMetrics(r *metrics.Registry) *pollerMetrics {
	r = metrics.OrNew(r)
	m := &pollerMetrics{
		polls:       r.CounterVec("pushrelay_megaphone_polls_total", "Polls of the megaphone service, by result (ok, status, bad_answer, timeout, unreachable, store).", "result"),
		lastSuccess: r.Gauge("pushrelay_megaphone_last_success_timestamp_seconds", "Unix time of the last poll whose answer was applied; 0 until one is."),
		changed:     r.Counter("pushrelay_megaphone_versions_changed_total", "Broadcast versions changed by megaphone answers."),
		failing:     r.Gauge("pushrelay_megaphone_consecutive_failures", "Polls failed in a row since the last good answer."),
	}
	for _, res := range []string{resultOK, resultStatus, resultBadAnswer, resultTimeout, resultUnreachable, resultStore} {
		m.polls.With(res)
	}
	return m
}
