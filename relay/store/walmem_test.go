package store

import (
	"context"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pushrelay/pushrelay/relay/push"
)

// BenchmarkOpenTxHeap measures the live heap the committer's open
// transaction holds per byte of write-ahead log records since the last
// checkpoint (the memory store_checkpoint_bytes bounds, cmd/pushrelay's
// config.go): 1,000 devices, appends of 300-byte messages in batches of
// 64, up to 16 MiB of records, then the checkpoint's time.
//
//	go test -run '^$' -bench OpenTxHeap -benchtime 1x ./relay/store/
func BenchmarkOpenTxHeap(b *testing.B) {
	for range b.N {
		path := filepath.Join(b.TempDir(), "s.db")
		s := openTest(b, Options{Path: path, CheckpointInterval: time.Hour, CheckpointBytes: 1 << 30, MaxMessagesPerUAID: 1 << 20})
		dev := func(d int) push.UAID { return push.UAID{0xbb, byte(d), byte(d >> 8)} }
		ctx := context.Background()
		for d := range 1000 {
			mustRegister(b, s, dev(d), chid(1))
		}
		checkpoint := func() {
			if err := s.scan(func(*bolt.Tx) error { return nil }); err != nil {
				b.Fatal(err)
			}
		}
		checkpoint()
		var ms runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms)
		base := ms.HeapAlloc
		data := strings.Repeat("x", 300)
		logged := 0
		for i := 0; logged < 16<<20; i++ {
			batch := make([]Message, 64)
			for j := range batch {
				batch[j] = msg(dev((i*64+j)%1000), chid(1), data)
			}
			if _, err := s.AppendBatch(ctx, batch); err != nil {
				b.Fatal(err)
			}
			s.readOnCommitter(func(*bolt.Tx) error { logged = s.w.bytes; return nil })
		}
		runtime.GC()
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(ms.HeapAlloc-base)/float64(logged), "heap-B/log-B")
		start := time.Now()
		checkpoint()
		b.ReportMetric(float64(time.Since(start).Milliseconds()), "checkpoint-ms")
		s.Close()
	}
}
