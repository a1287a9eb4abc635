// Package metrics is pushrelay's thin layer over a metrics library.
//
// Every other package declares its metrics through a *Registry and sees only
// the small interfaces below, so the library (github.com/VictoriaMetrics/metrics,
// chosen over the Prometheus client because it writes the text format without
// the protobuf runtime: about 2 MB less in every gateway binary) is imported
// here and nowhere else. Names follow pushrelay_<area>_<what>; drop reasons
// and other small closed sets are labels.
//
// The library holds the values and writes the samples; this package writes
// each family's HELP and TYPE lines (the library's own carry no help text),
// keeps the label order Prometheus uses (by name), and answers Value.
package metrics

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"

	vm "github.com/VictoriaMetrics/metrics"
)

func init() {
	// Family metadata is on for every set; the HELP lines it writes are
	// rewritten with our text (or dropped) by writeTo.
	vm.ExposeMetadata(true)
}

// Counter only goes up.
type Counter interface {
	Inc()
	Add(float64)
}

// Gauge goes up and down.
type Gauge interface {
	Set(float64)
	Inc()
	Dec()
	Add(float64)
}

// Observer records a sample in a histogram.
type Observer interface {
	Observe(float64)
}

// Registry holds one process's metrics. The zero value is not usable; use
// NewRegistry. Each test, store or hub may own its own Registry, so names
// never collide between instances.
type Registry struct {
	set *vm.Set

	mu       sync.Mutex
	families map[string]family         // by family name
	series   map[string]func() float64 // counter and gauge series, by exposition name
}

// family is what the exposition says of a metric family.
type family struct {
	help, typ string
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{
		set:      vm.NewSet(),
		families: make(map[string]family),
		series:   make(map[string]func() float64),
	}
}

// OrNew returns r, or a fresh private registry when r is nil. Components use
// it so that a nil registry in their options means "don't export".
func OrNew(r *Registry) *Registry {
	if r == nil {
		return NewRegistry()
	}
	return r
}

// WithProcess adds the Go runtime and process metrics (go_*, process_*:
// RSS, open fds, goroutines, GC, go_gc_gomemlimit_bytes) to r. The daemon
// calls it once.
func (r *Registry) WithProcess() *Registry {
	r.set.RegisterMetricsWriter(func(w io.Writer) {
		vm.WriteGoMetrics(w)
		writeGoLimits(w)
		vm.WriteProcMetrics(w)
		vm.WriteFDMetrics(w)
	})
	return r
}

// writeGoLimits writes the memory limit, GOGC and GOMAXPROCS in force
// under the names the Prometheus Go collector gave them (operations.md
// documents go_gc_gomemlimit_bytes); the library names the first
// go_memlimit_bytes and the last go_gomaxprocs, and writes those too.
func writeGoLimits(w io.Writer) {
	s := []metrics.Sample{{Name: "/gc/gomemlimit:bytes"}, {Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	if s[0].Value.Kind() == metrics.KindUint64 {
		fmt.Fprintf(w, "# HELP go_gc_gomemlimit_bytes Go runtime memory limit (GOMEMLIMIT) in bytes.\n# TYPE go_gc_gomemlimit_bytes gauge\ngo_gc_gomemlimit_bytes %d\n", s[0].Value.Uint64())
	}
	if s[1].Value.Kind() == metrics.KindUint64 {
		fmt.Fprintf(w, "# HELP go_gc_gogc_percent Heap size target percentage (GOGC); 0 when off.\n# TYPE go_gc_gogc_percent gauge\ngo_gc_gogc_percent %d\n", s[1].Value.Uint64())
	}
	fmt.Fprintf(w, "# HELP go_sched_gomaxprocs_threads GOMAXPROCS: threads that can run Go code at once.\n# TYPE go_sched_gomaxprocs_threads gauge\ngo_sched_gomaxprocs_threads %d\n", runtime.GOMAXPROCS(0))
}

// declare records a family's HELP and TYPE. A name declared twice panics,
// as registering a series twice does.
func (r *Registry) declare(name, help, typ string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.families[name]; ok {
		panic(fmt.Sprintf("metrics: %s registered twice", name))
	}
	r.families[name] = family{help: help, typ: typ}
}

// newGauge registers one series in the library's set and for Value.
func (r *Registry) newGauge(series string, f func() float64) *vm.Gauge {
	g := r.set.NewGauge(series, f)
	r.mu.Lock()
	r.series[series] = g.Get
	r.mu.Unlock()
	return g
}

// counter is a Gauge of the library that refuses to go down, so Add takes
// fractions (the library's own Counter counts whole numbers).
type counter struct{ g *vm.Gauge }

func (c counter) Inc() { c.g.Add(1) }

func (c counter) Add(v float64) {
	if v < 0 {
		panic("metrics: counter cannot decrease")
	}
	c.g.Add(v)
}

// histogram adapts the library's Prometheus-style histogram.
type histogram struct{ h *vm.PrometheusHistogram }

func (h histogram) Observe(v float64) { h.h.Update(v) }

// Counter registers a counter.
func (r *Registry) Counter(name, help string) Counter {
	r.declare(name, help, "counter")
	return counter{r.newGauge(name, nil)}
}

// Gauge registers a gauge.
func (r *Registry) Gauge(name, help string) Gauge {
	r.declare(name, help, "gauge")
	return r.newGauge(name, nil)
}

// GaugeFunc registers a gauge whose value is read from f at scrape time.
func (r *Registry) GaugeFunc(name, help string, f func() float64) {
	r.declare(name, help, "gauge")
	r.newGauge(name, f)
}

// Histogram registers a histogram with the given bucket upper bounds.
func (r *Registry) Histogram(name, help string, buckets []float64) Observer {
	r.declare(name, help, "histogram")
	return histogram{r.set.NewPrometheusHistogramExt(name, buckets)}
}

// vec is a labelled family: its series are made on first use and kept.
type vec struct {
	r      *Registry
	name   string
	labels []string // as declared: With takes values in this order
	order  []int    // indexes of labels sorted by name: the exposition's order
	kids   sync.Map // joined label values -> *vm.Gauge
}

func (r *Registry) newVec(name, help, typ string, labels []string) *vec {
	r.declare(name, help, typ)
	order := make([]int, len(labels))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return strings.Compare(labels[a], labels[b]) })
	return &vec{r: r, name: name, labels: labels, order: order}
}

// with returns the series for values, making it on first use.
func (v *vec) with(values []string) *vm.Gauge {
	if len(values) != len(v.labels) {
		panic(fmt.Sprintf("metrics: %s takes %d label values, got %d", v.name, len(v.labels), len(values)))
	}
	var key string
	if len(values) == 1 {
		key = values[0]
	} else {
		key = strings.Join(values, "\xff")
	}
	if g, ok := v.kids.Load(key); ok {
		return g.(*vm.Gauge)
	}
	v.r.mu.Lock()
	defer v.r.mu.Unlock()
	if g, ok := v.kids.Load(key); ok {
		return g.(*vm.Gauge)
	}
	series := v.series(values)
	g := v.r.set.NewGauge(series, nil)
	v.r.series[series] = g.Get
	v.kids.Store(key, g)
	return g
}

// series names one series as the exposition writes it.
func (v *vec) series(values []string) string {
	if len(values) == 0 {
		return v.name
	}
	var b strings.Builder
	b.WriteString(v.name)
	for n, i := range v.order {
		if n == 0 {
			b.WriteByte('{')
		} else {
			b.WriteByte(',')
		}
		b.WriteString(v.labels[i])
		b.WriteString(`="`)
		b.WriteString(labelEscaper.Replace(values[i]))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

// labelEscaper escapes a label value as the text format requires.
var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

// helpEscaper escapes HELP text as the text format requires.
var helpEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`)

// CounterVec is a family of counters told apart by label values.
type CounterVec struct {
	v *vec
}

// CounterVec registers a labelled counter family.
func (r *Registry) CounterVec(name, help string, labels ...string) *CounterVec {
	return &CounterVec{v: r.newVec(name, help, "counter", labels)}
}

// With returns the counter for the given label values, in label order.
func (c *CounterVec) With(values ...string) Counter {
	return counter{c.v.with(values)}
}

// GaugeVec is a family of gauges told apart by label values.
type GaugeVec struct {
	v *vec
}

// GaugeVec registers a labelled gauge family.
func (r *Registry) GaugeVec(name, help string, labels ...string) *GaugeVec {
	return &GaugeVec{v: r.newVec(name, help, "gauge", labels)}
}

// With returns the gauge for the given label values, in label order.
func (g *GaugeVec) With(values ...string) Gauge {
	return g.v.with(values)
}

// Handler serves the registry in the Prometheus text format (0.0.4),
// gzipped when the scraper accepts it.
func (r *Registry) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var buf bytes.Buffer
		r.writeTo(&buf)
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		if !acceptsGzip(req.Header.Get("Accept-Encoding")) {
			w.Write(buf.Bytes())
			return
		}
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		zw.Write(buf.Bytes())
		zw.Close()
	})
}

func acceptsGzip(header string) bool {
	for part := range strings.SplitSeq(header, ",") {
		coding, params, _ := strings.Cut(part, ";")
		if strings.TrimSpace(coding) == "gzip" && strings.ReplaceAll(strings.TrimSpace(params), " ", "") != "q=0" {
			return true
		}
	}
	return false
}

// writeTo writes the exposition: the library's samples, with each family's
// HELP line carrying our text and its TYPE line our type. A HELP line the
// library wrote without text, for a family not declared here, is dropped
// (HELP is optional in the format; an empty one says nothing).
func (r *Registry) writeTo(w *bytes.Buffer) {
	var raw bytes.Buffer
	r.set.WritePrometheus(&raw)
	r.mu.Lock()
	defer r.mu.Unlock()
	for line := range bytes.Lines(raw.Bytes()) {
		if rest, ok := bytes.CutPrefix(line, []byte("# HELP ")); ok {
			name := string(bytes.TrimSpace(rest))
			if f, ok := r.families[name]; ok && f.help != "" {
				fmt.Fprintf(w, "# HELP %s %s\n", name, helpEscaper.Replace(f.help))
			} else if strings.ContainsRune(name, ' ') {
				w.Write(line) // a HELP line with its own text
			}
			continue
		}
		if rest, ok := bytes.CutPrefix(line, []byte("# TYPE ")); ok {
			name, _, _ := strings.Cut(string(rest), " ")
			if f, ok := r.families[name]; ok {
				fmt.Fprintf(w, "# TYPE %s %s\n", name, f.typ)
				continue
			}
		}
		w.Write(line)
	}
}

// Value returns the current value of one counter or gauge series, named
// as the text exposition writes it: name, or name{label="value",...} with
// the labels in name order. A series that does not exist reads 0. For
// tests and tools.
func (r *Registry) Value(series string) float64 {
	r.mu.Lock()
	f := r.series[series]
	r.mu.Unlock()
	if f == nil {
		return 0
	}
	return f()
}

// LatencyBuckets are histogram bounds in seconds from 50µs to 2.5s, for
// commit and request latencies.
var LatencyBuckets = []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}

// SizeBuckets are histogram bounds for batch sizes.
var SizeBuckets = []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}
