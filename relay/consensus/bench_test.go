package consensus

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkPropose: proposals of 100 bytes on the leader of 3 members
// (loopback TCP+TLS, real files, everything fsynced) from 1, 16 and 64
// proposers at once; each Propose returns after commit and local apply.
// It reports proposals/s and, per proposal, the leader's log fsyncs and
// the state machine's (one per applied batch).
func BenchmarkPropose(b *testing.B) {
	for _, conc := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("proposers=%d", conc), func(b *testing.B) {
			c := newCluster(b, 3, Config{})
			l := c.waitLeader(0, 10*time.Second)
			// Warm up: connections made, followers matched.
			for i := range 10 {
				propose(b, l, fmt.Sprint("warm", i))
			}
			data := make([]byte, 100)
			writes0 := l.value("pushrelay_consensus_log_writes_total")
			smSyncs0 := l.sm.fsyncs.Load()
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for range conc {
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						if _, err := l.n.Propose(context.Background(), data); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "proposals/s")
			b.ReportMetric((l.value("pushrelay_consensus_log_writes_total")-writes0)/float64(b.N), "log-fsyncs/proposal")
			b.ReportMetric(float64(l.sm.fsyncs.Load()-smSyncs0)/float64(b.N), "sm-fsyncs/proposal")
		})
	}
}
