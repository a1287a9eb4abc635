package metrics

import (
	"io"
	"net/http/httptest"
	"strconv"
	"testing"
)

func BenchmarkCounterInc(b *testing.B) {
	c := NewRegistry().Counter("pushrelay_bench_total", "bench")
	for b.Loop() {
		c.Inc()
	}
}

func BenchmarkCounterVecWithInc(b *testing.B) {
	v := NewRegistry().CounterVec("pushrelay_bench_drops_total", "bench", "reason")
	for b.Loop() {
		v.With("full").Inc()
	}
}

func BenchmarkHistogramObserve(b *testing.B) {
	h := NewRegistry().Histogram("pushrelay_bench_seconds", "bench", LatencyBuckets)
	for b.Loop() {
		h.Observe(0.003)
	}
}

// BenchmarkScrape serves one /metrics of a registry shaped like the
// daemon's: about 120 series, two histograms, and the Go and process
// metrics.
func BenchmarkScrape(b *testing.B) {
	r := NewRegistry().WithProcess()
	for i := range 60 {
		r.Counter("pushrelay_bench_c"+strconv.Itoa(i)+"_total", "a counter").Add(float64(i))
	}
	for i := range 10 {
		v := r.CounterVec("pushrelay_bench_v"+strconv.Itoa(i)+"_total", "a family", "reason")
		for j := range 4 {
			v.With("r" + strconv.Itoa(j)).Inc()
		}
	}
	for i := range 20 {
		r.Gauge("pushrelay_bench_g"+strconv.Itoa(i), "a gauge").Set(float64(i))
	}
	for i := range 2 {
		r.Histogram("pushrelay_bench_h"+strconv.Itoa(i)+"_seconds", "a histogram", LatencyBuckets).Observe(0.002)
	}
	h := r.Handler()
	var n int64
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		if rec.Code != 200 {
			b.Fatal(rec.Code)
		}
		n, _ = io.Copy(io.Discard, rec.Body)
	}
	b.ReportMetric(float64(n), "body-bytes")
}
