package site

import "github.com/pushrelay/pushrelay/relay/metrics"

type siteMetrics struct {
	noQuorum        metrics.Counter
	changes         *metrics.CounterVec
	holderChanges   metrics.Counter
	holderStarts    metrics.Counter
	remoteRegisters *metrics.CounterVec
}

func newSiteMetrics(r *metrics.Registry, s *Site) *siteMetrics {
	r.GaugeFunc("pushrelay_site_in_site", "1 once this member holds the site's log (formed the site or joined it).", func() float64 {
		if s.InSite() {
			return 1
		}
		return 0
	})
	r.GaugeFunc("pushrelay_site_leader", "1 while this member leads the site.", func() float64 {
		if s.Leader() {
			return 1
		}
		return 0
	})
	r.GaugeFunc("pushrelay_site_holder", "1 while this member holds the site's upstream sessions (runs its upstream).", func() float64 {
		if s.Holding() {
			return 1
		}
		return 0
	})
	return &siteMetrics{
		holderChanges:   r.Counter("pushrelay_site_holder_changes_total", "Holder entries applied that named another member to hold the site's upstream than the last."),
		holderStarts:    r.Counter("pushrelay_site_holder_starts_total", "Times this member started the site's upstream (it came to hold it, or its upstream failed and ran again)."),
		remoteRegisters: r.CounterVec("pushrelay_site_upstream_registers_total", "Device registers this member asked of the upstream's holder through the log, by result (ok, refused, error: not proposed, timeout: no answer in time).", "result"),
		noQuorum:        r.Counter("pushrelay_site_no_quorum_total", "Writes refused because the site could not commit them in time (answered 503 errno 126 to app servers)."),
		changes:         r.CounterVec("pushrelay_site_voter_changes_total", "Voter changes the leader made, by change (added: a new member; removed: one failed for cluster_reap_after).", "change"),
	}
}
