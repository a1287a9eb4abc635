package store

import (
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/wal"
)

// openWALLog opens the write-ahead log in dir (relay/wal), with its
// metrics (pushrelay_store_wal_*) in o.Metrics unless reopen: a log
// opened again after a failed write has them already.
func openWALLog(dir string, o Options, reopen bool) (*wal.Log, error) {
	reg := metrics.OrNew(o.Metrics)
	if reopen {
		reg = nil
	}
	return wal.Open(dir, wal.Options{
		Logger:        o.Logger,
		Metrics:       reg,
		MetricsPrefix: "pushrelay_store_wal",
	})
}
