package consensus

import "github.com/pushrelay/pushrelay/relay/metrics"

// nodeMetrics are the node's metrics, all pushrelay_consensus_*.
type nodeMetrics struct {
	proposals     metrics.Counter
	forwards      metrics.Counter
	fwdDials      metrics.Counter
	proposeFailed *metrics.CounterVec
	commits       metrics.Counter
	applies       metrics.Counter
	logWrites     metrics.Counter
	logSeconds    metrics.Observer
	entriesPerW   metrics.Observer
	elections     metrics.Counter
	leaderChanges metrics.Counter
	snapshots     metrics.Counter
	snapSent      metrics.Counter
	snapSentBytes metrics.Observer
	snapRecv      metrics.Counter
	snapRecvBytes metrics.Observer
	drops         *metrics.CounterVec
	sent          metrics.Counter
	received      metrics.Counter
}

func newNodeMetrics(r *metrics.Registry, n *Node) *nodeMetrics {
	m := &nodeMetrics{
		proposals:     r.Counter("pushrelay_consensus_proposals_total", "Entries proposed on this member (Propose calls that reached the engine)."),
		forwards:      r.Counter("pushrelay_consensus_proposals_forwarded_total", "Entries this member proposed while another member led, forwarded to the leader."),
		fwdDials:      r.Counter("pushrelay_consensus_forward_dials_total", "Connections this member dialed to a leader for its forwarded requests (kept and reused; a new one per request in flight beyond those idle)."),
		proposeFailed: r.CounterVec("pushrelay_consensus_propose_failures_total", "Proposals not known committed, by reason (no_quorum, leader_changed: the leader it went to was replaced and the new one's first entry is applied without it, canceled, closed).", "reason"),
		commits:       r.Counter("pushrelay_consensus_commits_total", "Committed entries applied on this member."),
		applies:       r.Counter("pushrelay_consensus_applies_total", "Batches of committed entries handed to the state machine."),
		logWrites:     r.Counter("pushrelay_consensus_log_writes_total", "Log transactions committed (one fsync each): a batch of entries, a term or vote, a snapshot record, a compaction."),
		logSeconds:    r.Histogram("pushrelay_consensus_log_write_seconds", "Time of one log transaction, fsync included.", metrics.LatencyBuckets),
		entriesPerW:   r.Histogram("pushrelay_consensus_entries_per_write", "Entries made durable per log write.", metrics.SizeBuckets),
		elections:     r.Counter("pushrelay_consensus_elections_total", "Elections this member started (became a candidate)."),
		leaderChanges: r.Counter("pushrelay_consensus_leader_changes_total", "Times the leader this member knows changed (to none included)."),
		snapshots:     r.Counter("pushrelay_consensus_snapshots_total", "Snapshots recorded and log compactions done on this member."),
		snapSent:      r.Counter("pushrelay_consensus_snapshots_sent_total", "Snapshots opened to be sent to a member behind the compacted log (the live state spooled)."),
		snapSentBytes: r.Histogram("pushrelay_consensus_snapshot_sent_bytes", "Size of each snapshot streamed to a member.", metrics.SizeBuckets),
		snapRecv:      r.Counter("pushrelay_consensus_snapshots_received_total", "Snapshots received from the leader."),
		snapRecvBytes: r.Histogram("pushrelay_consensus_snapshot_received_bytes", "Size of each snapshot received.", metrics.SizeBuckets),
		drops:         r.CounterVec("pushrelay_consensus_send_drops_total", "Requests to or from a peer that failed (raft sends again), by reason (unreachable, filter).", "reason"),
		sent:          r.Counter("pushrelay_consensus_messages_sent_total", "Requests to peers answered."),
		received:      r.Counter("pushrelay_consensus_messages_received_total", "Requests received from peers."),
	}
	r.GaugeFunc("pushrelay_consensus_term", "The current term.", func() float64 { return float64(n.term.Load()) })
	r.GaugeFunc("pushrelay_consensus_leader", "1 while this member is the leader.", func() float64 {
		if n.leader.Load() == n.id {
			return 1
		}
		return 0
	})
	r.GaugeFunc("pushrelay_consensus_applied_index", "The last log index applied here.", func() float64 { return float64(n.applied.Load()) })
	return m
}
