package main

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/cmd/pushrelay/internal/relayproc"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/store"
)

// waitMetric polls the relay's /metrics until sample has want, for at most
// 15 s.
func (p *relayProc) waitMetric(sample string, want float64) {
	p.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		got := p.metric(sample)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s = %v after 15s, want %v", sample, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The built binary with --megaphone-url: the versions the service serves
// (token from a file, sent as a bearer token) end up in the relay and in
// its store; a later change is applied, a service that fails is logged
// once and changes nothing, and the versions survive a restart with the
// service gone.
func TestE2EMegaphone(t *testing.T) {
	rs := "remote-settings/monitor_changes"
	stub, err := relayproc.NewMegaphoneStub("t0ken", map[string]string{rs: `"1700000000000"`, "foo/bar": "v1"})
	if err != nil {
		t.Fatal(err)
	}
	defer stub.Close()
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "megaphone.token")
	if err := os.WriteFile(tokFile, []byte("t0ken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	p := startRelay(t, data, "--megaphone-url", stub.URL(), "--megaphone-token-file", tokFile, "--megaphone-poll-interval", "1s")
	p.waitMetric(`pushrelay_broadcast_changes_total{source="megaphone"}`, 2)
	p.waitMetric("pushrelay_broadcasts", 2)
	if _, bad := stub.Counts(); bad != 0 {
		t.Fatalf("%d polls without the bearer token", bad)
	}

	// A device that has an old version is told the megaphone's in its
	// hello reply, and then the next change as it is polled; one that
	// follows only the other id hears nothing of it.
	dev, told := bcastHello(t, p, "", map[string]string{rs: `"0"`})
	defer dev.Abort()
	if fmt.Sprint(told) != fmt.Sprint(map[string]any{rs: `"1700000000000"`}) {
		t.Fatalf("hello reply broadcasts %v", told)
	}
	other, told := bcastHello(t, p, "", map[string]string{"foo/bar": "v1"})
	defer other.Abort()
	if len(told) != 0 {
		t.Fatalf("up-to-date hello got %v", told)
	}

	stub.Set(200, map[string]string{rs: `"1700000005000"`})
	p.waitMetric(`pushrelay_broadcast_changes_total{source="megaphone"}`, 3)
	p.waitMetric("pushrelay_megaphone_versions_changed_total", 3)
	f, err := dev.Next(time.Now().Add(5 * time.Second))
	if err != nil || f.MessageType != pushproto.TypeBroadcast || fmt.Sprint(f.Broadcasts) != fmt.Sprint(map[string]any{rs: `"1700000005000"`}) {
		t.Fatalf("subscribed device got %+v, %v", f, err)
	}
	if f, err := other.Next(time.Now().Add(300 * time.Millisecond)); err == nil {
		t.Fatalf("device not subscribed to %s got %+v", rs, f)
	}

	stub.Set(503, nil)
	p.waitMetric("pushrelay_megaphone_consecutive_failures", 2)
	if n := strings.Count(p.stderr.String(), "megaphone poll failed;"); n != 1 {
		t.Fatalf("%d warnings for two failed polls in a row, want 1", n)
	}
	if v := p.metric(`pushrelay_megaphone_polls_total{result="status"}`); v < 2 {
		t.Fatalf("status failures counted %v", v)
	}
	p.stop()

	st, err := store.Open(store.Options{Path: filepath.Join(data, "pushrelay.db")})
	if err != nil {
		t.Fatal(err)
	}
	got, err := st.Broadcasts()
	st.Close()
	want := map[string]string{rs: `"1700000005000"`, "foo/bar": "v1"}
	if err != nil || !maps.Equal(got, want) {
		t.Fatalf("stored versions %v (%v), want %v", got, err, want)
	}

	// The service gone: the relay starts, is ready, serves what it had.
	stub.Close()
	p = startRelay(t, data, "--megaphone-url", stub.URL(), "--megaphone-poll-interval", "1s")
	p.waitMetric(`pushrelay_megaphone_polls_total{result="unreachable"}`, 1)
	if v := p.metric("pushrelay_broadcasts"); v != 2 {
		t.Fatalf("broadcasts after a restart with the service down: %v", v)
	}
	if code, body := httpGet(p.Admin + "/readyz"); code != 200 {
		t.Fatalf("/readyz with the megaphone down: %d %s", code, body)
	}
	p.stop()
}
