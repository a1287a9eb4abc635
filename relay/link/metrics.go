package link

import "github.com/pushrelay/pushrelay/relay/metrics"

type childMetrics struct {
	connected        metrics.Gauge
	connects         *metrics.CounterVec
	registers        *metrics.CounterVec
	messages         *metrics.CounterVec
	acks             metrics.Counter
	unregisters      metrics.Counter
	digestMismatches metrics.Counter
	resyncs          metrics.Counter
	migrations       *metrics.CounterVec
	broadcasts       *metrics.CounterVec
	forgets          *metrics.CounterVec
	hints            *metrics.CounterVec
}

// ChildMetrics are a child's metrics, registered once and shared by the
// Children made one after another on a site's member (each time it comes
// to hold the link): ChildConfig.Shared.
type ChildMetrics struct{ m *childMetrics }

// NewChildMetrics registers the child's metrics in r.
func NewChildMetrics(r *metrics.Registry) *ChildMetrics { return &ChildMetrics{newChildMetrics(r)} }

func newChildMetrics(r *metrics.Registry) *childMetrics {
	return &childMetrics{
		connected:        r.Gauge("pushrelay_link_up_connected", "1 while this relay's link to its parent is up (WELCOME received)."),
		connects:         r.CounterVec("pushrelay_link_up_connects_total", "Connects to the parent, by result (ok, refused, error).", "result"),
		registers:        r.CounterVec("pushrelay_link_up_registers_total", "Registers passed to the parent, by result (ok, refused, error).", "result"),
		messages:         r.CounterVec("pushrelay_link_up_messages_total", "Messages from the parent, by result (stored, duplicate, dropped_unregistered, not_stored).", "result"),
		acks:             r.Counter("pushrelay_link_up_acks_total", "ACKs sent to the parent (each after the durable ingest of what it covers)."),
		unregisters:      r.Counter("pushrelay_link_up_unregisters_sent_total", "Devices' unregisters passed to the parent (each kept durably until then)."),
		digestMismatches: r.Counter("pushrelay_link_up_digest_mismatches_total", "WELCOMEs whose digest of this relay's channels differed from its own."),
		resyncs:          r.Counter("pushrelay_link_up_resyncs_total", "Resyncs done: the parent's view compared with the store and fixed with registers and unregisters."),
		migrations:       r.CounterVec("pushrelay_link_up_migrations_total", "Moves of the link to a new local address after the route to the parent changed, by result (ok, error: then it redials).", "result"),
		hints:            r.CounterVec("pushrelay_link_up_hints_total", "Non-QUIC packets on the link's socket, by result (probed: a restart hint from the parent's address, answered with a probe; malformed; wrong_addr: a hint from another address; too_soon: within a second of the last probe).", "result"),
		broadcasts:       r.CounterVec("pushrelay_link_up_broadcasts_total", "Broadcast versions from the parent, by result (set, unchanged, refused: past the registry's 1,024 ids, not_stored).", "result"),
		forgets:          r.CounterVec("pushrelay_link_up_forgets_total", "Devices the parent forgot (FORGET: its upstream reset the UAID), by result (forgotten, unknown: not here, error).", "result"),
	}
}

type parentMetrics struct {
	connected        metrics.Gauge
	uaids            metrics.Gauge
	refused          *metrics.CounterVec
	registers        *metrics.CounterVec
	unregisters      *metrics.CounterVec
	sent             metrics.Counter
	frames           metrics.Counter
	acked            metrics.Counter
	dropped          metrics.Counter
	digestMismatches metrics.Counter
	broadcasts       metrics.Counter
	forgets          *metrics.CounterVec
}

func newParentMetrics(r *metrics.Registry) *parentMetrics {
	return &parentMetrics{
		connected:        r.Gauge("pushrelay_link_children_connected", "Child relays connected (past HELLO)."),
		uaids:            r.Gauge("pushrelay_link_children_uaids", "UAIDs served by child relays."),
		forgets:          r.CounterVec("pushrelay_link_children_forgets_total", "FORGETs of devices this relay forgot (its upstream reset them) for the children serving them, by result (sent, answered, refused: the child answered an error, error: not recorded).", "result"),
		refused:          r.CounterVec("pushrelay_link_children_refused_total", "Children refused after HELLO, by code (unknown child, no common protocol version, busy, internal error).", "code"),
		registers:        r.CounterVec("pushrelay_link_children_registers_total", "Children's registers answered, by status.", "status"),
		unregisters:      r.CounterVec("pushrelay_link_children_unregisters_total", "Children's unregisters answered, by status.", "status"),
		sent:             r.Counter("pushrelay_link_children_messages_sent_total", "Messages sent to children (resends after a break included)."),
		frames:           r.Counter("pushrelay_link_children_updates_sent_total", "UPDATE frames sent to children."),
		acked:            r.Counter("pushrelay_link_children_messages_acked_total", "Messages children acked (deleted here then)."),
		dropped:          r.Counter("pushrelay_link_children_messages_dropped_total", "Messages for children deleted unsent because an UPDATE cannot carry them (over a field's limit)."),
		digestMismatches: r.Counter("pushrelay_link_children_digest_mismatches_total", "HELLOs whose digest differed from this relay's view of the child (each answered with a resync)."),
		broadcasts:       r.Counter("pushrelay_link_children_broadcasts_sent_total", "Broadcast versions sent to children in BROADCAST frames (the whole map at each connect, then changes)."),
	}
}
