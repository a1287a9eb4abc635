package discovery

import "github.com/pushrelay/pushrelay/relay/metrics"

// result is what became of one datagram: the label of
// pushrelay_stun_requests_total.
type result int

const (
	resultBound         result = iota // authenticated request accepted and answered
	resultPlain                       // unauthenticated request answered
	resultAmplification               // unauthenticated request dropped: the answer would be larger
	resultMalformed                   // not STUN, undecodable, or larger than maxPacket
	resultNotBinding                  // STUN, but not a Binding request
	resultBadRequest                  // missing or misplaced USERNAME, PUSHRELAY-TIME, MESSAGE-INTEGRITY, FINGERPRINT; bad FINGERPRINT
	resultBadIntegrity                // MESSAGE-INTEGRITY doesn't match the device's key
	resultUnknownUser                 // the registry doesn't know USERNAME
	resultReplay                      // the registry refused the stamp (not newer than the last accepted)
	resultStale                       // PUSHRELAY-TIME outside MaxSkew
	resultRateLimited                 // the source's bucket was empty, or the bucket table full
	resultError                       // registry storage error
	numResults
)

var resultLabels = [numResults]string{
	resultBound:         "bound",
	resultPlain:         "plain",
	resultAmplification: "amplification",
	resultMalformed:     "malformed",
	resultNotBinding:    "not_binding",
	resultBadRequest:    "bad_request",
	resultBadIntegrity:  "bad_integrity",
	resultUnknownUser:   "unknown_user",
	resultReplay:        "replay",
	resultStale:         "stale",
	resultRateLimited:   "rate_limited",
	resultError:         "error",
}

func (r result) String() string { return resultLabels[r] }

// serverMetrics are the pushrelay_stun_* metrics of one Server.
type serverMetrics struct {
	results     [numResults]metrics.Counter
	writeErrors metrics.Counter
	sources     metrics.Gauge
}

func newServerMetrics(r *metrics.Registry) *serverMetrics {
	m := &serverMetrics{
		writeErrors: r.Counter("pushrelay_stun_write_errors_total",
			"STUN responses the socket failed to send."),
		sources: r.Gauge("pushrelay_stun_rate_limit_sources",
			"Sources (IPv4 addresses, IPv6 /64s) in the STUN rate limiter's table."),
	}
	v := r.CounterVec("pushrelay_stun_requests_total",
		"Datagrams received by the STUN server, by what became of them.", "result")
	for i := range m.results {
		m.results[i] = v.With(result(i).String())
	}
	return m
}
