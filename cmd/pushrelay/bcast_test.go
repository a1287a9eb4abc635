package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"

	"github.com/pushrelay/pushrelay/cmd/pushrelay/internal/relayproc"
)

// writeAdminToken writes a token file as the docs say to make one.
func writeAdminToken(t *testing.T) (path, token string) {
	t.Helper()
	token = "e2e-admin-token-0123456789abcdef"
	path = filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, token
}

// adminCall makes one broadcast call on the relay's admin listener.
func adminCall(t *testing.T, p *relayProc, method, path, token, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, p.Admin+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var v map[string]any
	json.Unmarshal(b, &v)
	return resp.StatusCode, v
}

// bcastHello connects a device that names broadcasts in its hello and
// returns it with the reply's broadcasts.
func bcastHello(t *testing.T, p *relayProc, uaid string, have map[string]string) (*pushclient.Client, map[string]any) {
	t.Helper()
	c := dial(t, p)
	h, err := c.Hello(uaid, pushclient.HelloOptions{Broadcasts: have})
	if err != nil {
		t.Fatal(err)
	}
	return c, h.Broadcasts
}

// TestE2EBroadcasts: an operator sets a version with the admin call, and
// every connected device subscribed to it gets it once; devices that did
// not subscribe get nothing; the versions survive a restart, so a device
// that says hello with an old one gets the new one in the reply.
func TestE2EBroadcasts(t *testing.T) {
	tokenFile, token := writeAdminToken(t)
	dataDir := t.TempDir()
	p := startRelay(t, dataDir, "--admin-token-file", tokenFile)

	// Firefox's Remote Settings broadcast: its version holds quotes.
	const id = "remote-settings/monitor_changes"
	if code, v := adminCall(t, p, "PUT", "/broadcasts/"+id, token, `"1000"`); code != 200 {
		t.Fatalf("PUT = %d %v", code, v)
	}
	if code, _ := adminCall(t, p, "PUT", "/broadcasts/"+id, "wrong-token-wrong-token", `"9"`); code != 401 {
		t.Fatalf("PUT with a wrong token = %d", code)
	}

	const subscribed, others = 20, 5
	var subs, rest []*pushclient.Client
	for i := range subscribed {
		c, got := bcastHello(t, p, "", map[string]string{id: `"999"`, "nobody/serves-this": "1"})
		if want := fmt.Sprint(map[string]any{id: `"1000"`, "errors": map[string]any{"nobody/serves-this": "Broadcast not found"}}); fmt.Sprint(got) != want {
			t.Fatalf("device %d: hello broadcasts %v, want %s", i, got, want)
		}
		subs = append(subs, c)
	}
	for range others {
		c, got := bcastHello(t, p, "", nil)
		if len(got) != 0 {
			t.Fatalf("hello without broadcasts answered %v", got)
		}
		rest = append(rest, c)
	}
	// One device subscribes after hello, as Firefox does for a broadcast
	// it learns of later.
	late, _ := bcastHello(t, p, "", nil)
	if err := late.SendJSON(map[string]any{"messageType": "broadcast_subscribe", "broadcasts": map[string]string{id: `"1000"`}}); err != nil {
		t.Fatal(err)
	}
	if err := late.Ping(); err != nil { // the subscribe is handled
		t.Fatal(err)
	}
	subs = append(subs, late)

	if code, v := adminCall(t, p, "PUT", "/broadcasts/"+id, token, `"1001"`); code != 200 || fmt.Sprint(v["changed"]) != fmt.Sprint(map[string]any{id: `"1001"`}) {
		t.Fatalf("PUT = %d %v", code, v)
	}
	for i, c := range subs {
		f, err := c.Next(time.Now().Add(5 * time.Second))
		if err != nil {
			t.Fatalf("subscribed device %d: %v", i, err)
		}
		if f.MessageType != pushproto.TypeBroadcast || fmt.Sprint(f.Broadcasts) != fmt.Sprint(map[string]any{id: `"1001"`}) {
			t.Fatalf("subscribed device %d got %+v", i, f)
		}
	}
	// The same version again changes nothing and sends nothing.
	if code, v := adminCall(t, p, "PUT", "/broadcasts/"+id, token, `"1001"`); code != 200 || len(v["changed"].(map[string]any)) != 0 {
		t.Fatalf("PUT of the current version = %d %v", code, v)
	}
	for i, c := range append(subs, rest...) {
		if f, err := c.Read(time.Now().Add(100 * time.Millisecond)); err == nil {
			t.Fatalf("device %d got %+v after an unchanged PUT (or without subscribing)", i, f)
		}
	}
	if got := p.metric(`pushrelay_broadcast_subscriptions`); got != subscribed+1 {
		t.Errorf("subscriptions = %v, want %d", got, subscribed+1)
	}
	code, v := adminCall(t, p, "GET", "/broadcasts", token, "")
	if code != 200 || fmt.Sprint(v["broadcasts"]) != fmt.Sprint(map[string]any{id: `"1001"`}) {
		t.Fatalf("GET = %d %v", code, v)
	}
	p.stop()

	// Versions survive the restart.
	p = startRelay(t, dataDir, "--admin-token-file", tokenFile)
	if _, got := bcastHello(t, p, "", map[string]string{id: `"1000"`}); fmt.Sprint(got) != fmt.Sprint(map[string]any{id: `"1001"`}) {
		t.Fatalf("hello with the old version after a restart: %v", got)
	}
	if _, got := bcastHello(t, p, "", map[string]string{id: `"1001"`}); len(got) != 0 {
		t.Fatalf("hello with the current version after a restart: %v", got)
	}
	p.stop()
}

// TestE2EBroadcastCallsOff: without admin_token_file the calls answer 404
// and say how to turn them on; a token file too short is refused at start.
func TestE2EBroadcastCallsOff(t *testing.T) {
	p := startRelay(t, t.TempDir())
	code, v := adminCall(t, p, "PUT", "/broadcasts/a", "whatever-token-here", "1")
	if code != 404 || !strings.Contains(fmt.Sprint(v["error"]), "admin_token_file") {
		t.Fatalf("PUT without a token file = %d %v", code, v)
	}
	p.stop()

	short := filepath.Join(t.TempDir(), "short.token")
	os.WriteFile(short, []byte("abc\n"), 0o600)
	cmd := exec.Command(binPath, "check-config", "--data-dir", t.TempDir(), "--admin-token-file", short)
	cmd.Env = relayproc.Env()
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "head -c 32 /dev/urandom") {
		t.Fatalf("check-config with a short token: %v %s", err, out)
	}
}
