package admin

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pushrelay/pushrelay/relay/broadcast"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/store"
)

const testToken = "s3cret-token-of-the-operator"

// bcastServer is an admin listener on 127.0.0.1:0 serving the broadcast
// calls of a registry kept in a real store.
func bcastServer(t *testing.T, token string) (*httptest.Server, *broadcast.Registry, *store.Store) {
	t.Helper()
	st, err := store.Open(store.Options{Path: filepath.Join(t.TempDir(), "pushrelay.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	reg := metrics.NewRegistry()
	br, err := broadcast.Open(st, reg)
	if err != nil {
		t.Fatal(err)
	}
	s := New(reg, func() Status { return Status{} })
	s.ServeBroadcasts(br, token)
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return srv, br, st
}

func call(t *testing.T, srv *httptest.Server, method, path, token, body string) (int, http.Header, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s %s: %d %q is not JSON", method, path, resp.StatusCode, b)
	}
	return resp.StatusCode, resp.Header, v
}

func TestBroadcastCalls(t *testing.T) {
	srv, br, _ := bcastServer(t, testToken)

	code, _, v := call(t, srv, "PUT", "/broadcasts/remote-settings/monitor_changes", testToken, "\"1700000000000\"\n")
	if code != 200 || v["changed"].(map[string]any)["remote-settings/monitor_changes"] != `"1700000000000"` {
		t.Fatalf("PUT = %d %v", code, v)
	}
	if got := br.Versions()["remote-settings/monitor_changes"]; got != `"1700000000000"` {
		t.Fatalf("registry holds %q", got)
	}
	// The same version again changes nothing.
	if code, _, v := call(t, srv, "PUT", "/broadcasts/remote-settings/monitor_changes", testToken, `"1700000000000"`); code != 200 || len(v["changed"].(map[string]any)) != 0 {
		t.Fatalf("PUT of the current version = %d %v", code, v)
	}
	if code, _, v := call(t, srv, "PUT", "/broadcasts/b", testToken, "v1"); code != 200 || len(v["changed"].(map[string]any)) != 1 {
		t.Fatalf("PUT b = %d %v", code, v)
	}
	code, _, v = call(t, srv, "GET", "/broadcasts", testToken, "")
	got := v["broadcasts"].(map[string]any)
	if code != 200 || len(got) != 2 || got["b"] != "v1" {
		t.Fatalf("GET = %d %v", code, v)
	}

	for _, tc := range []struct{ name, path, body string }{
		{"empty version", "/broadcasts/a", "  \n"},
		{"long version", "/broadcasts/a", strings.Repeat("v", broadcast.MaxLen+1)},
		{"long id", "/broadcasts/" + strings.Repeat("i", broadcast.MaxLen+1), "v"},
	} {
		if code, _, v := call(t, srv, "PUT", tc.path, testToken, tc.body); code != 400 || v["error"] == nil {
			t.Errorf("%s: %d %v, want 400", tc.name, code, v)
		}
	}
	if code, _, _ := call(t, srv, "PUT", "/broadcasts/a", testToken, strings.Repeat("v", maxVersionBody+1)); code != 413 {
		t.Errorf("huge body: %d, want 413", code)
	}
	if len(br.Versions()) != 2 {
		t.Fatalf("refused calls changed the registry: %v", br.Versions())
	}
}

func TestBroadcastCallsAuth(t *testing.T) {
	srv, br, _ := bcastServer(t, testToken)
	for _, tok := range []string{"", "wrong", testToken + "x", testToken[:len(testToken)-1]} {
		for _, m := range []string{"GET /broadcasts", "PUT /broadcasts/a"} {
			method, path, _ := strings.Cut(m, " ")
			code, hdr, v := call(t, srv, method, path, tok, "v")
			if code != 401 || !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") || v["error"] == nil {
				t.Errorf("%s with token %q: %d %v, want 401", m, tok, code, v)
			}
		}
	}
	// A Basic header holding the token is not a bearer token.
	req, _ := http.NewRequest("GET", srv.URL+"/broadcasts", nil)
	req.Header.Set("Authorization", "Basic "+testToken)
	if resp, err := srv.Client().Do(req); err != nil || resp.StatusCode != 401 {
		t.Errorf("Basic auth: %v %v", resp.StatusCode, err)
	}
	if len(br.Versions()) != 0 {
		t.Fatalf("unauthenticated calls changed the registry: %v", br.Versions())
	}
}

func TestBroadcastCallsOff(t *testing.T) {
	srv, _, _ := bcastServer(t, "")
	code, _, v := call(t, srv, "PUT", "/broadcasts/a", testToken, "v")
	if code != 404 || !strings.Contains(v["error"].(string), "admin_token_file") {
		t.Fatalf("PUT with the calls off = %d %v", code, v)
	}
	if code, _, _ := call(t, srv, "GET", "/broadcasts", "", ""); code != 404 {
		t.Fatalf("GET with the calls off = %d", code)
	}
}

// TestBroadcastCallStoreFails: a version the store cannot write is
// answered 503 and not published.
func TestBroadcastCallStoreFails(t *testing.T) {
	srv, br, st := bcastServer(t, testToken)
	st.Close()
	code, hdr, v := call(t, srv, "PUT", "/broadcasts/a", testToken, "v1")
	if code != 503 || hdr.Get("Retry-After") == "" || v["error"] == nil {
		t.Fatalf("PUT on a closed store = %d %v %v", code, hdr, v)
	}
	if len(br.Versions()) != 0 {
		t.Fatalf("a version not stored was published: %v", br.Versions())
	}
}
