package wal

import "github.com/pushrelay/pushrelay/relay/metrics"

// walMetrics are a log's metrics, all named Options.MetricsPrefix + "_*".
type walMetrics struct {
	appends      metrics.Counter
	entries      metrics.Counter
	bytes        metrics.Counter
	fsyncs       metrics.Counter
	fsyncSeconds metrics.Observer
}

func newMetrics(r *metrics.Registry, prefix string, l *Log) *walMetrics {
	m := &walMetrics{
		appends:      r.Counter(prefix+"_appends_total", "Append calls made durable (one fdatasync each)."),
		entries:      r.Counter(prefix+"_entries_total", "Entries appended."),
		bytes:        r.Counter(prefix+"_bytes_written_total", "Bytes written to segment files (records and their 16-byte headers)."),
		fsyncs:       r.Counter(prefix+"_fsyncs_total", "fdatasyncs of segment files and fsyncs of the log's directory."),
		fsyncSeconds: r.Histogram(prefix+"_fsync_seconds", "Time an Append's fdatasync took.", metrics.LatencyBuckets),
	}
	r.GaugeFunc(prefix+"_segments", "Segment files in the log's directory.",
		func() float64 { return float64(l.nSegs.Load()) })
	return m
}
