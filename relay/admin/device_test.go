package admin

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/pushrelay/pushrelay/relay/metrics"
)

// The device listener serves the WebSocket root and autopush's health
// paths; every other path is a JSON 404, another method a JSON 405.
func TestDeviceHandler(t *testing.T) {
	s := New(metrics.NewRegistry(), func() Status { return Status{Version: "v-test", Connections: 7} })
	var wsHits int
	ws := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wsHits++
		w.WriteHeader(http.StatusUpgradeRequired)
	})
	srv := httptest.NewServer(s.DeviceHandler(ws))
	defer srv.Close()
	do := func(method, path string) (int, map[string]any, http.Header) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body, resp.Header
	}

	if code, _, _ := do("GET", "/"); code != 426 || wsHits != 1 {
		t.Fatalf("GET / = %d (ws handler hit %d times)", code, wsHits)
	}
	if code, _, _ := do("GET", "/?x=1"); code != 426 || wsHits != 2 {
		t.Fatalf("GET /?x=1 = %d", code)
	}
	for _, p := range []string{"/push/0123", "/notif/0123", "/wpush/v1/abc", "/ws", "/health/x"} {
		code, body, hdr := do("GET", p)
		if code != 404 || body["code"] != 404.0 || body["errno"] != 102.0 || body["error"] != "Not Found" || body["message"] == "" ||
			hdr.Get("Content-Type") != "application/json" {
			t.Errorf("GET %s = %d %v", p, code, body)
		}
	}
	for _, m := range []string{"POST", "PUT", "DELETE"} {
		code, body, hdr := do(m, "/")
		if code != 405 || body["code"] != 405.0 || hdr.Get("Allow") == "" {
			t.Errorf("%s / = %d %v", m, code, body)
		}
		if code, _, _ := do(m, "/nowhere"); code != 404 {
			t.Errorf("%s /nowhere = %d", m, code)
		}
	}
	if wsHits != 2 {
		t.Fatalf("ws handler hit %d times", wsHits)
	}

	// Not ready yet: the health paths say so.
	if code, body, _ := do("GET", "/health"); code != 503 || body["status"] != "ERROR" {
		t.Fatalf("health before ready = %d %v", code, body)
	}
	s.SetReady(true)
	for _, p := range []string{"/health", "/__heartbeat__"} {
		code, body, _ := do("GET", p)
		if code != 200 || body["status"] != "OK" || body["version"] != "v-test" || body["connections"] != 7.0 {
			t.Errorf("GET %s = %d %v", p, code, body)
		}
	}
	if code, body, _ := do("GET", "/status"); code != 200 || body["status"] != "OK" || body["version"] != "v-test" || body["connections"] != nil {
		t.Errorf("GET /status = %d %v", code, body)
	}
	if code, _, _ := do("GET", "/__lbheartbeat__"); code != 200 {
		t.Errorf("lbheartbeat = %d", code)
	}
	if code, body, _ := do("GET", "/__version__"); code != 200 || body["version"] != "v-test" {
		t.Errorf("version = %d %v", code, body)
	}
	// A failing check turns health to ERROR; the load-balancer heartbeat
	// only says the process runs.
	s.AddCheck("store", func() error { return errors.New("disk full") })
	if code, body, _ := do("GET", "/__heartbeat__"); code != 503 || body["status"] != "ERROR" {
		t.Errorf("heartbeat with a failing check = %d %v", code, body)
	}
	if code, _, _ := do("GET", "/__lbheartbeat__"); code != 200 {
		t.Errorf("lbheartbeat with a failing check = %d", code)
	}
}
