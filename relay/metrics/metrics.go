// Package metrics is pushrelay's thin layer over the Prometheus client.
//
// Every other package declares its metrics through a *Registry and sees only
// the small interfaces below, so the Prometheus client is imported here and
// nowhere else. Names follow pushrelay_<area>_<what>; drop reasons and other
// small closed sets are labels.
package metrics

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

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
	reg *prometheus.Registry
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{reg: prometheus.NewRegistry()}
}

// OrNew returns r, or a fresh private registry when r is nil. Components use
// it so that a nil registry in their options means "don't export".
func OrNew(r *Registry) *Registry {
	if r == nil {
		return NewRegistry()
	}
	return r
}

// WithProcess adds the Go runtime and process collectors (RSS, open fds,
// goroutines, GC) to r. The daemon calls it once.
func (r *Registry) WithProcess() *Registry {
	r.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Counter registers a counter.
func (r *Registry) Counter(name, help string) Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	r.reg.MustRegister(c)
	return c
}

// CounterVec is a family of counters told apart by label values.
type CounterVec struct {
	v *prometheus.CounterVec
}

// CounterVec registers a labelled counter family.
func (r *Registry) CounterVec(name, help string, labels ...string) *CounterVec {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	r.reg.MustRegister(v)
	return &CounterVec{v: v}
}

// With returns the counter for the given label values, in label order.
func (c *CounterVec) With(values ...string) Counter {
	return c.v.WithLabelValues(values...)
}

// Gauge registers a gauge.
func (r *Registry) Gauge(name, help string) Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	r.reg.MustRegister(g)
	return g
}

// GaugeFunc registers a gauge whose value is read from f at scrape time.
func (r *Registry) GaugeFunc(name, help string, f func() float64) {
	r.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
}

// Histogram registers a histogram with the given bucket upper bounds.
func (r *Registry) Histogram(name, help string, buckets []float64) Observer {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
	r.reg.MustRegister(h)
	return h
}

// Handler serves the registry in the Prometheus text format.
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{Registry: r.reg})
}

// Value returns the current value of one counter or gauge series, named
// as the text exposition writes it: name, or name{label="value",...} with
// the labels in name order. A series that does not exist reads 0. For
// tests and tools.
func (r *Registry) Value(series string) float64 {
	mfs, err := r.reg.Gather()
	if err != nil {
		return 0
	}
	for _, mf := range mfs {
		if !strings.HasPrefix(series, mf.GetName()) {
			continue
		}
		for _, m := range mf.GetMetric() {
			if seriesName(mf.GetName(), m.GetLabel()) != series {
				continue
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetUntyped() != nil:
				return m.GetUntyped().GetValue()
			}
		}
	}
	return 0
}

func seriesName(name string, labels []*dto.LabelPair) string {
	if len(labels) == 0 {
		return name
	}
	var b strings.Builder
	b.WriteString(name)
	for i, l := range labels {
		if i == 0 {
			b.WriteByte('{')
		} else {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%q", l.GetName(), l.GetValue())
	}
	b.WriteByte('}')
	return b.String()
}

// LatencyBuckets are histogram bounds in seconds from 50µs to 2.5s, for
// commit and request latencies.
var LatencyBuckets = []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}

// SizeBuckets are histogram bounds for batch sizes.
var SizeBuckets = []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}

// GaugeVec is a family of gauges told apart by label values.
type GaugeVec struct {
	v *prometheus.GaugeVec
}

// GaugeVec registers a labelled gauge family.
func (r *Registry) GaugeVec(name, help string, labels ...string) *GaugeVec {
	v := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
	r.reg.MustRegister(v)
	return &GaugeVec{v: v}
}

// With returns the gauge for the given label values, in label order.
func (g *GaugeVec) With(values ...string) Gauge {
	return g.v.WithLabelValues(values...)
}
