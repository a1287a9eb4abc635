package metrics

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// golden is the exposition of goldenRegistry: families sorted by name,
// labels by name, HELP text escaped, histograms with cumulative le buckets,
// _sum and _count. It is what the Prometheus client wrote before the
// switch: this test run against the old metrics.go differed only by the
// client's own promhttp_metric_handler_errors_total family and an
// "; escaping=underscores" in the Content-Type.
const golden = `# HELP pushrelay_g_bytes bytes queued
# TYPE pushrelay_g_bytes gauge
pushrelay_g_bytes 1.5
# HELP pushrelay_g_func read at scrape time
# TYPE pushrelay_g_func gauge
pushrelay_g_func 42
# HELP pushrelay_g_open open, by listener
# TYPE pushrelay_g_open gauge
pushrelay_g_open{listener="admin"} 0
pushrelay_g_open{listener="device"} 5
# HELP pushrelay_h_batch messages per batch
# TYPE pushrelay_h_batch histogram
pushrelay_h_batch_bucket{le="1"} 1
pushrelay_h_batch_bucket{le="2"} 1
pushrelay_h_batch_bucket{le="4"} 2
pushrelay_h_batch_bucket{le="8"} 2
pushrelay_h_batch_bucket{le="16"} 2
pushrelay_h_batch_bucket{le="32"} 2
pushrelay_h_batch_bucket{le="64"} 2
pushrelay_h_batch_bucket{le="128"} 2
pushrelay_h_batch_bucket{le="256"} 2
pushrelay_h_batch_bucket{le="512"} 2
pushrelay_h_batch_bucket{le="1024"} 2
pushrelay_h_batch_bucket{le="+Inf"} 3
pushrelay_h_batch_sum 2004
pushrelay_h_batch_count 3
# HELP pushrelay_h_seconds request to 201
# TYPE pushrelay_h_seconds histogram
pushrelay_h_seconds_bucket{le="5e-05"} 0
pushrelay_h_seconds_bucket{le="0.0001"} 0
pushrelay_h_seconds_bucket{le="0.00025"} 0
pushrelay_h_seconds_bucket{le="0.0005"} 0
pushrelay_h_seconds_bucket{le="0.001"} 0
pushrelay_h_seconds_bucket{le="0.0025"} 1
pushrelay_h_seconds_bucket{le="0.005"} 1
pushrelay_h_seconds_bucket{le="0.01"} 1
pushrelay_h_seconds_bucket{le="0.025"} 1
pushrelay_h_seconds_bucket{le="0.05"} 1
pushrelay_h_seconds_bucket{le="0.1"} 1
pushrelay_h_seconds_bucket{le="0.25"} 1
pushrelay_h_seconds_bucket{le="0.5"} 1
pushrelay_h_seconds_bucket{le="1"} 1
pushrelay_h_seconds_bucket{le="2.5"} 1
pushrelay_h_seconds_bucket{le="+Inf"} 1
pushrelay_h_seconds_sum 0.002
pushrelay_h_seconds_count 1
# HELP pushrelay_pairs_total two labels, declared b then a: written a then b
# TYPE pushrelay_pairs_total counter
pushrelay_pairs_total{a="y",b="x"} 2
pushrelay_pairs_total{a="y\"q\\\n",b="z"} 1
# HELP pushrelay_test_drops_total drops by reason
# TYPE pushrelay_test_drops_total counter
pushrelay_test_drops_total{reason="full"} 1
pushrelay_test_drops_total{reason="ttl0"} 2
# HELP pushrelay_test_total a test counter; "quoted", a \\ backslash\nand a second line
# TYPE pushrelay_test_total counter
pushrelay_test_total 3
`

func goldenRegistry() *Registry {
	r := NewRegistry()
	r.Counter("pushrelay_test_total", "a test counter; \"quoted\", a \\ backslash\nand a second line").Add(3)
	drops := r.CounterVec("pushrelay_test_drops_total", "drops by reason", "reason")
	drops.With("ttl0").Add(2)
	drops.With("full").Inc()
	r.CounterVec("pushrelay_empty_total", "a family with no series yet: not written", "reason")
	pairs := r.CounterVec("pushrelay_pairs_total", "two labels, declared b then a: written a then b", "b", "a")
	pairs.With("x", "y").Add(2)
	pairs.With("z", "y\"q\\\n").Inc()
	r.Gauge("pushrelay_g_bytes", "bytes queued").Set(1.5)
	open := r.GaugeVec("pushrelay_g_open", "open, by listener", "listener")
	open.With("device").Add(5)
	open.With("admin").Inc()
	open.With("admin").Dec()
	r.GaugeFunc("pushrelay_g_func", "read at scrape time", func() float64 { return 42 })
	r.Histogram("pushrelay_h_seconds", "request to 201", LatencyBuckets).Observe(0.002)
	h := r.Histogram("pushrelay_h_batch", "messages per batch", SizeBuckets)
	h.Observe(1)
	h.Observe(3)
	h.Observe(2000)
	return r
}

func scrape(t *testing.T, r *Registry, acceptEncoding string) (body []byte, contentType, contentEncoding string) {
	t.Helper()
	req := httptest.NewRequest("GET", "/metrics", nil)
	if acceptEncoding != "" {
		req.Header.Set("Accept-Encoding", acceptEncoding)
	}
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, req)
	if rec.Code != 200 {
		t.Fatalf("status %d", rec.Code)
	}
	return rec.Body.Bytes(), rec.Header().Get("Content-Type"), rec.Header().Get("Content-Encoding")
}

func TestExpositionGolden(t *testing.T) {
	body, ctype, enc := scrape(t, goldenRegistry(), "")
	if ctype != "text/plain; version=0.0.4; charset=utf-8" || enc != "" {
		t.Errorf("Content-Type %q, Content-Encoding %q", ctype, enc)
	}
	if string(body) != golden {
		t.Errorf("exposition differs from the golden text:\n%s", lineDiff(golden, string(body)))
	}
}

// lineDiff lists the lines only one side has.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for _, l := range w {
		if !slices.Contains(g, l) {
			b.WriteString("- " + l + "\n")
		}
	}
	for _, l := range g {
		if !slices.Contains(w, l) {
			b.WriteString("+ " + l + "\n")
		}
	}
	if b.Len() == 0 {
		return "(same lines, other order)"
	}
	return b.String()
}

func TestExpositionGzip(t *testing.T) {
	body, _, enc := scrape(t, goldenRegistry(), "deflate, gzip;q=1.0")
	if enc != "gzip" {
		t.Fatalf("Content-Encoding %q, want gzip", enc)
	}
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	plain, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if string(plain) != golden {
		t.Errorf("gzipped exposition differs:\n%s", lineDiff(golden, string(plain)))
	}
	if _, _, enc := scrape(t, goldenRegistry(), "gzip;q=0"); enc != "" {
		t.Errorf("gzip;q=0 answered with Content-Encoding %q", enc)
	}
}

// parse reads an exposition with the Prometheus text parser (the one
// promtool uses), which refuses a family split in two, a second HELP or
// TYPE line, a sample of the wrong type and malformed labels or values.
func parse(t *testing.T, body []byte) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("the Prometheus text parser refuses the exposition: %v\n%s", err, body)
	}
	return mfs
}

// TestExpositionParses scrapes a registry with the Go and process metrics
// through the Prometheus parser, and checks the families operators and
// docs/operations.md rely on, their types, and our HELP text.
func TestExpositionParses(t *testing.T) {
	r := goldenRegistry().WithProcess()
	body, _, _ := scrape(t, r, "")
	mfs := parse(t, body)
	for name, typ := range map[string]dto.MetricType{
		"pushrelay_test_total":          dto.MetricType_COUNTER,
		"pushrelay_test_drops_total":    dto.MetricType_COUNTER,
		"pushrelay_g_open":              dto.MetricType_GAUGE,
		"pushrelay_h_seconds":           dto.MetricType_HISTOGRAM,
		"go_goroutines":                 dto.MetricType_GAUGE,
		"go_threads":                    dto.MetricType_GAUGE,
		"go_gc_duration_seconds":        dto.MetricType_SUMMARY,
		"go_gc_gomemlimit_bytes":        dto.MetricType_GAUGE,
		"go_gc_gogc_percent":            dto.MetricType_GAUGE,
		"go_sched_gomaxprocs_threads":   dto.MetricType_GAUGE,
		"go_memstats_heap_alloc_bytes":  dto.MetricType_GAUGE,
		"go_memstats_sys_bytes":         dto.MetricType_GAUGE,
		"go_info":                       dto.MetricType_GAUGE,
		"process_resident_memory_bytes": dto.MetricType_GAUGE,
		"process_virtual_memory_bytes":  dto.MetricType_GAUGE,
		"process_open_fds":              dto.MetricType_GAUGE,
		"process_max_fds":               dto.MetricType_GAUGE,
		"process_cpu_seconds_total":     dto.MetricType_COUNTER,
		"process_start_time_seconds":    dto.MetricType_GAUGE,
	} {
		mf := mfs[name]
		if mf == nil {
			t.Errorf("%s missing", name)
			continue
		}
		if mf.GetType() != typ {
			t.Errorf("%s has type %v, want %v", name, mf.GetType(), typ)
		}
	}
	if got := mfs["pushrelay_test_drops_total"].GetHelp(); got != "drops by reason" {
		t.Errorf("HELP of pushrelay_test_drops_total = %q", got)
	}
	if got := mfs["pushrelay_test_total"].GetHelp(); got != "a test counter; \"quoted\", a \\ backslash\nand a second line" {
		t.Errorf("HELP of pushrelay_test_total = %q", got)
	}
	// qemu-user (make test-arm) fakes /proc/self/stat with the RSS left 0.
	if v := mfs["process_resident_memory_bytes"].GetMetric()[0].GetGauge().GetValue(); v < 1<<20 && os.Getenv("PUSHRELAY_TEST_EXEC") == "" {
		t.Errorf("process_resident_memory_bytes = %v", v)
	}
	if v := mfs["process_open_fds"].GetMetric()[0].GetGauge().GetValue(); v < 3 {
		t.Errorf("process_open_fds = %v", v)
	}
	if v := mfs["go_goroutines"].GetMetric()[0].GetGauge().GetValue(); v < 1 {
		t.Errorf("go_goroutines = %v", v)
	}
	h := mfs["pushrelay_h_batch"].GetMetric()[0].GetHistogram()
	if h.GetSampleCount() != 3 || h.GetSampleSum() != 2004 || len(h.GetBucket()) != len(SizeBuckets)+1 {
		t.Errorf("pushrelay_h_batch parsed as %v", h)
	}
	for _, mf := range mfs {
		if mf.GetType() == dto.MetricType_UNTYPED {
			t.Errorf("%s has no TYPE line", mf.GetName())
		}
	}
}

// TestConcurrentUse makes series from many goroutines while scraping; with
// -race it checks the registry's locking, and every increment is counted.
func TestConcurrentUse(t *testing.T) {
	r := NewRegistry()
	v := r.CounterVec("pushrelay_conc_total", "c", "worker", "kind")
	r.GaugeFunc("pushrelay_conc_func", "reads a vec's series", func() float64 { return r.Value(`pushrelay_conc_total{kind="a",worker="0"}`) })
	const workers, rounds = 4, 500
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				v.With(strconv.Itoa(w), []string{"a", "b"}[i%2]).Inc()
			}
		})
	}
	bodies := make(chan []byte, 20)
	wg.Go(func() {
		defer close(bodies)
		for range 20 {
			rec := httptest.NewRecorder()
			r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
			bodies <- rec.Body.Bytes()
		}
	})
	wg.Wait()
	for body := range bodies {
		parse(t, body)
	}
	for w := range workers {
		for _, k := range []string{"a", "b"} {
			series := `pushrelay_conc_total{kind="` + k + `",worker="` + strconv.Itoa(w) + `"}`
			if got := r.Value(series); got != rounds/2 {
				t.Errorf("%s = %v, want %d", series, got, rounds/2)
			}
		}
	}
}

func TestMisuse(t *testing.T) {
	for name, f := range map[string]func(r *Registry){
		"counter twice":       func(r *Registry) { r.Counter("a_total", "x"); r.Counter("a_total", "x") },
		"vec after counter":   func(r *Registry) { r.Counter("a_total", "x"); r.CounterVec("a_total", "x", "l") },
		"wrong label count":   func(r *Registry) { r.CounterVec("a_total", "x", "l").With("1", "2") },
		"counter goes down":   func(r *Registry) { r.Counter("a_total", "x").Add(-1) },
		"invalid metric name": func(r *Registry) { r.Gauge("a-b", "x") },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Errorf("%s did not panic", name)
				}
			}()
			f(NewRegistry())
		})
	}
}
