package site

import "github.com/pushrelay/pushrelay/relay/metrics"

type siteMetrics struct {
	noQuorum        metrics.Counter
	changes         *metrics.CounterVec
	holderChanges   metrics.Counter
	holderStarts    metrics.Counter
	remoteRegisters *metrics.CounterVec

	wakes       *metrics.CounterVec
	owners      metrics.Counter
	ownerHeld   metrics.Counter
	dropped     metrics.Counter
	keysRefused *metrics.CounterVec
	linkRefused *metrics.CounterVec
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
	r.GaugeFunc("pushrelay_site_keys_mismatch", "1 while this member does not form or join the site because its endpoint.key or wake.key differs from the site's (/status keys_refused says which).", func() float64 {
		if s.KeysRefused() != "" {
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
	r.GaugeFunc("pushrelay_site_wake_owned", "Devices this member is the wake owner of (their wake address proven to its STUN socket, or their hello accepted for wake, and not since to another member's).", func() float64 {
		_, n := s.WakeDigest()
		return float64(n)
	})
	return &siteMetrics{
		noQuorum:        r.Counter("pushrelay_site_no_quorum_total", "Writes refused because the site could not commit them in time (answered 503 errno 126 to app servers)."),
		changes:         r.CounterVec("pushrelay_site_voter_changes_total", "Voter changes the leader made, by change (added: a new member; removed: one failed for cluster_reap_after).", "change"),
		wakes:           r.CounterVec("pushrelay_site_wakes_total", "Messages of urgency normal or high applied here for a device this member is the wake owner of, by decision (now: woken; deferred: another member may hold its session, so the wake waits 2 s and goes only if the message still waits; session_here: it has a session here).", "decision"),
		owners:          r.Counter("pushrelay_site_wake_owner_entries_total", "Devices this member named in wake owner entries committed to the site's log (it became their wake owner)."),
		ownerHeld:       r.Counter("pushrelay_site_wake_owner_held_total", "Wake owner announcements held back because this member announced the same device less than 5 s before (a device moving back and forth)."),
		dropped:         r.Counter("pushrelay_site_wake_bindings_dropped_total", "Wake bindings this member forgot because the device proved its address to another member."),
		keysRefused:     r.CounterVec("pushrelay_site_keys_refused_total", "Times a member was refused because its endpoint.key or wake.key differs from the site's, by side (self: this member was refused; other: this member refused another).", "side"),
		holderChanges:   r.Counter("pushrelay_site_holder_changes_total", "Holder entries applied that named another member to hold the site's upstream than the last."),
		linkRefused:     r.CounterVec("pushrelay_site_link_refused_total", "Times a member was refused the relay link to the parent because its link identity (link_name, link_cert) differs from the site's, by side (self: this member; other: this member refused another).", "side"),
		holderStarts:    r.Counter("pushrelay_site_holder_starts_total", "Times this member started the site's upstream (it came to hold it, or its upstream failed and ran again)."),
		remoteRegisters: r.CounterVec("pushrelay_site_upstream_registers_total", "Device registers this member asked of the upstream's holder through the log, by result (ok, refused, error: not proposed, timeout: no answer in time).", "result"),
	}
}
