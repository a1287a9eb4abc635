package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestRegistryExports(t *testing.T) {
	r := NewRegistry()
	r.Counter("pushrelay_test_total", "a test counter").Add(3)
	r.CounterVec("pushrelay_test_drops_total", "drops", "reason").With("full").Inc()
	r.Gauge("pushrelay_test_gauge", "g").Set(7)
	r.GaugeVec("pushrelay_test_open", "gv", "listener").With("device").Add(5)
	r.GaugeFunc("pushrelay_test_func", "f", func() float64 { return 42 })
	r.Histogram("pushrelay_test_seconds", "h", LatencyBuckets).Observe(0.002)

	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		"pushrelay_test_total 3",
		`pushrelay_test_drops_total{reason="full"} 1`,
		"pushrelay_test_gauge 7",
		`pushrelay_test_open{listener="device"} 5`,
		"pushrelay_test_func 42",
		"pushrelay_test_seconds_count 1",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics output lacks %q", want)
		}
	}
	// Value reads the same series by the names the exposition shows.
	r.CounterVec("pushrelay_test_pairs_total", "two labels", "b", "a").With("x", "y").Add(2)
	for series, want := range map[string]float64{
		"pushrelay_test_total":                        3,
		`pushrelay_test_drops_total{reason="full"}`:   1,
		`pushrelay_test_pairs_total{a="y",b="x"}`:     2,
		"pushrelay_test_gauge":                        7,
		"pushrelay_test_func":                         42,
		`pushrelay_test_drops_total{reason="absent"}`: 0,
		"pushrelay_test_t":                            0,
	} {
		if got := r.Value(series); got != want {
			t.Errorf("Value(%s) = %v, want %v", series, got, want)
		}
	}
}

func TestOrNewIsolates(t *testing.T) {
	// Two components with nil registries must not collide on names.
	a, b := OrNew(nil), OrNew(nil)
	a.Counter("pushrelay_same_total", "x")
	b.Counter("pushrelay_same_total", "x")
}
