package admin

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/pushrelay/pushrelay/relay/metrics"
)

func get(t *testing.T, srv *httptest.Server, path string, hdr ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", srv.URL+path, nil)
	if len(hdr) == 2 {
		req.Header.Set(hdr[0], hdr[1])
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestEndpoints(t *testing.T) {
	reg := metrics.NewRegistry()
	reg.Counter("pushrelay_x_total", "x").Inc()
	s := New(reg, func() Status {
		return Status{Version: "v-test", Connections: 3, Listeners: map[string]string{"device": "127.0.0.1:1"}}
	})
	srv := httptest.NewServer(s)
	defer srv.Close()

	if code, _ := get(t, srv, "/healthz"); code != 200 {
		t.Fatalf("healthz = %d", code)
	}
	if code, _ := get(t, srv, "/readyz"); code != 503 {
		t.Fatalf("readyz before ready = %d", code)
	}
	s.SetReady(true)
	if code, _ := get(t, srv, "/readyz"); code != 200 {
		t.Fatalf("readyz after ready = %d", code)
	}
	if code, body := get(t, srv, "/metrics"); code != 200 || !strings.Contains(body, "pushrelay_x_total 1") {
		t.Fatalf("metrics = %d %s", code, body)
	}
	code, body := get(t, srv, "/status", "Accept", "application/json")
	var st Status
	if code != 200 || json.Unmarshal([]byte(body), &st) != nil || st.Connections != 3 || !st.Ready {
		t.Fatalf("status json = %d %s", code, body)
	}
	if code, body := get(t, srv, "/status"); code != 200 || !strings.Contains(body, "v-test") {
		t.Fatalf("status page = %d %s", code, body)
	}
	want := 200
	if !pprofBuilt {
		want = 501
	}
	if code, _ := get(t, srv, "/debug/pprof/"); code != want {
		t.Fatalf("pprof = %d, want %d", code, want)
	}
}

func TestStatusPageEscapes(t *testing.T) {
	s := New(metrics.NewRegistry(), func() Status {
		return Status{Version: "<script>x</script>", Listeners: map[string]string{"device": "a&b"}}
	})
	srv := httptest.NewServer(s)
	defer srv.Close()
	_, body := get(t, srv, "/status")
	if strings.Contains(body, "<script>") || !strings.Contains(body, "&lt;script&gt;") || !strings.Contains(body, "a&amp;b") {
		t.Fatalf("status page does not escape: %s", body)
	}
}

// A failing check makes the relay not ready, says why on /readyz and lists
// it on /status; it clears when the check passes again.
func TestChecks(t *testing.T) {
	s := New(metrics.NewRegistry(), func() Status { return Status{Version: "v"} })
	var full atomic.Bool
	s.AddCheck("store", func() error {
		if full.Load() {
			return errors.New("disk full since 01:02:03 (7 pushes refused)")
		}
		return nil
	})
	s.SetReady(true)
	srv := httptest.NewServer(s)
	defer srv.Close()
	if code, _ := get(t, srv, "/readyz"); code != 200 {
		t.Fatalf("readyz with passing checks = %d", code)
	}
	full.Store(true)
	if code, body := get(t, srv, "/readyz"); code != 503 || !strings.Contains(body, "store: disk full since 01:02:03") {
		t.Fatalf("readyz with a failing check = %d %q", code, body)
	}
	code, body := get(t, srv, "/status?format=json")
	var st Status
	if code != 200 || json.Unmarshal([]byte(body), &st) != nil || st.Ready || !strings.HasPrefix(st.Problems["store"], "disk full since") {
		t.Fatalf("status json = %d %s", code, body)
	}
	if _, body := get(t, srv, "/status"); !strings.Contains(body, "problem: store") {
		t.Fatalf("status page lacks the problem: %s", body)
	}
	full.Store(false)
	if code, _ := get(t, srv, "/readyz"); code != 200 {
		t.Fatalf("readyz after the check passes = %d", code)
	}
	if _, body := get(t, srv, "/status?format=json"); strings.Contains(body, "problems") {
		t.Fatalf("problems left in %s", body)
	}
}

// A warning does not make the relay unready: /readyz answers 200 and
// says it; /status lists it. A failing check still answers 503.
func TestWarnings(t *testing.T) {
	s := New(metrics.NewRegistry(), func() Status { return Status{} })
	s.SetReady(true)
	var down atomic.Bool
	s.AddWarning("upstream", func() error {
		if down.Load() {
			return errors.New("none open")
		}
		return nil
	})
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec.Code, rec.Body.String()
	}
	if code, body := get("/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz = %d %q", code, body)
	}
	down.Store(true)
	if code, body := get("/readyz"); code != 200 || body != "ready\nwarning: upstream: none open\n" {
		t.Errorf("/readyz with a warning = %d %q", code, body)
	}
	if _, body := get("/status?format=json"); !strings.Contains(body, `"warnings":{"upstream":"none open"}`) {
		t.Errorf("/status does not list the warning: %s", body)
	}
	s.AddCheck("store", func() error { return errors.New("full") })
	if code, _ := get("/readyz"); code != 503 {
		t.Errorf("/readyz with a failing check = %d, want 503", code)
	}
}
