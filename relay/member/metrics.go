package member

import "github.com/pushrelay/pushrelay/relay/metrics"

type memberMetrics struct {
	members     *metrics.GaugeVec
	events      *metrics.CounterVec
	dropped     metrics.Counter
	rejoins     *metrics.CounterVec
	keyErrors   metrics.Counter
	keys        metrics.Gauge
	metaUpdates metrics.Counter
	conflicts   metrics.Counter
}

func newMemberMetrics(r *metrics.Registry) *memberMetrics {
	return &memberMetrics{
		members:     r.GaugeVec("pushrelay_member_members", "Members of the site known to this member, itself included, by state (alive, failed, left).", "state"),
		events:      r.CounterVec("pushrelay_member_events_total", "Membership events about other members, by kind (join, update, leave, fail, resync).", "kind"),
		dropped:     r.Counter("pushrelay_member_events_dropped_total", "Membership events dropped because the consumer's queue was full (an EventResync follows)."),
		rejoins:     r.CounterVec("pushrelay_member_joins_total", "Joins of a seed or a failed member's address (at start and by the rejoin loop), by result (ok, failed).", "result"),
		keyErrors:   r.Counter("pushrelay_member_key_errors_total", "Gossip messages refused because no installed key decrypts them, or because they were not encrypted."),
		keys:        r.Gauge("pushrelay_member_keys", "Gossip keys installed (the primary and those only decrypting)."),
		metaUpdates: r.Counter("pushrelay_member_meta_updates_total", "Metadata changes sent to the site."),
		conflicts:   r.Counter("pushrelay_member_name_conflicts_total", "Times two members claimed one name."),
	}
}
