package store

import "github.com/pushrelay/pushrelay/relay/metrics"

// storeMetrics are the store's metrics, all pushrelay_store_*.
type storeMetrics struct {
	commits       metrics.Counter
	commitErrors  metrics.Counter
	commitSeconds metrics.Observer
	batchSize     metrics.Observer
	checkpoints   metrics.Counter
	reads         metrics.Counter
	checkpointSec metrics.Observer
	stored        metrics.Counter
	deleted       [numReasons]metrics.Counter
	tombstoned    metrics.Counter
}

func newMetrics(r *metrics.Registry, s *Store) *storeMetrics {
	m := &storeMetrics{
		commits:       r.Counter("pushrelay_store_commits_total", "Write transactions committed (one fsync each)."),
		commitErrors:  r.Counter("pushrelay_store_commit_errors_total", "Write transactions that failed and were rolled back."),
		commitSeconds: r.Histogram("pushrelay_store_commit_seconds", "Time from taking a batch to its fsync completing.", metrics.LatencyBuckets),
		batchSize:     r.Histogram("pushrelay_store_batch_ops", "Operations per commit batch.", metrics.SizeBuckets),
		checkpoints:   r.Counter("pushrelay_store_checkpoints_total", "Checkpoints: the write-ahead log's batches committed to the store file."),
		reads:         r.Counter("pushrelay_store_committer_reads_total", "Reads run on the committer, between batches (write-ahead log on)."),
		checkpointSec: r.Histogram("pushrelay_store_checkpoint_seconds", "Time a checkpoint's commit took.", metrics.LatencyBuckets),
		stored:        r.Counter("pushrelay_store_messages_stored_total", "Messages appended."),
		tombstoned:    r.Counter("pushrelay_store_tombstoned_total", "Messages refused because their channel's unregister waits to be sent upstream."),
	}
	deleted := r.CounterVec("pushrelay_store_messages_deleted_total", "Messages removed, by reason.", "reason")
	for i, name := range reasonNames {
		m.deleted[i] = deleted.With(name)
	}
	r.GaugeFunc("pushrelay_store_messages_waiting", "Messages stored and not yet acked, deleted or expired.",
		func() float64 { return float64(s.nWait.Load()) })
	r.GaugeFunc("pushrelay_store_devices", "Devices with a record.",
		func() float64 { return float64(s.nDevices.Load()) })
	r.GaugeFunc("pushrelay_store_channels", "Registered channels.",
		func() float64 { return float64(s.nChans.Load()) })
	r.GaugeFunc("pushrelay_store_upstream_ids", "Devices with an identity at the upstream.",
		func() float64 { return float64(s.nUpstreamIDs.Load()) })
	r.GaugeFunc("pushrelay_store_unregisters_pending", "Unregisters kept to be sent to the upstream.",
		func() float64 { return float64(s.nUnregs.Load()) })
	r.GaugeFunc("pushrelay_store_damaged", "1 once a read or write found the file damaged (every store call then fails; see docs/operations.md).",
		func() float64 {
			if s.Damaged() != nil {
				return 1
			}
			return 0
		})
	r.GaugeFunc("pushrelay_store_queue_depth", "Operations waiting for the committer.",
		func() float64 { return float64(len(s.queue)) })
	return m
}
