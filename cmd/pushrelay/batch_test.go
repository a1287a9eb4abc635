package main

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/vapid"
)

type batchAnswer struct {
	code    int
	errno   int
	body    string
	results []struct {
		Status    int    `json:"status"`
		Location  string `json:"location"`
		QueueSize *int   `json:"queue_size"`
		Errno     int    `json:"errno"`
		Message   string `json:"message"`
	}
}

func postBatch(t *testing.T, p *relayProc, hdr map[string]string, msgs ...map[string]any) batchAnswer {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"messages": msgs})
	r := do(t, "POST", p.Endpoint+"/wpush/batch", body, hdr)
	a := batchAnswer{code: r.code, errno: r.errno, body: r.body}
	if r.code == 200 {
		var out struct {
			Results json.RawMessage `json:"results"`
		}
		json.Unmarshal([]byte(r.body), &out)
		if err := json.Unmarshal(out.Results, &a.results); err != nil {
			t.Fatalf("batch answer %q: %v", r.body, err)
		}
	}
	return a
}

// batchMessage is a batch entry carrying text encrypted for s.
func batchMessage(t *testing.T, s *testSub, text string) map[string]any {
	t.Helper()
	body, err := ece.Encrypt([]byte(text), s.keys.PublicKey(), s.keys.Auth)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]any{"endpoint": s.endpoint, "ttl": 60, "encoding": "aes128gcm", "data": base64.RawURLEncoding.EncodeToString(body)}
}

// The built binary takes a batch with successes and failures: each is
// answered in order, the successes reach connected devices at once and
// offline ones at their next hello, the queue sizes are the devices', and
// the per-device cap drops the oldest as for single posts.
func TestE2EBatch(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(t.TempDir(), "batch.token")
	const secret = "e2e-batch-token-0123456789"
	if err := os.WriteFile(tokenFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startRelay(t, dir, "--batch-token-file", tokenFile, "--max-messages-per-uaid", "3", "--batch-max-messages", "10")
	on := connect(t, p, "")
	sOn := on.register("")
	off := connect(t, p, "")
	sOff := off.register("")
	off.c.Close()
	priv, _ := vapid.GenerateKey()
	signer := vapid.NewSigner(priv)
	keyed := connect(t, p, "")
	sV := keyed.register(ece.EncodeKey(signer.PublicKey()))

	tokenAuth := map[string]string{"Authorization": "Bearer " + secret}
	r := postBatch(t, p, tokenAuth,
		batchMessage(t, sOn, "to the connected device"),
		batchMessage(t, sOff, "b1"),
		batchMessage(t, sOff, "b2"),
		map[string]any{"token": "not-a-token", "ttl": 60},
		batchMessage(t, sOff, "b3"),
		batchMessage(t, sV, "needs vapid"),
		map[string]any{"endpoint": sOn.endpoint},
		batchMessage(t, sOff, "b4"),
	)
	if r.code != 200 || len(r.results) != 8 {
		t.Fatalf("batch: %d %s", r.code, r.body)
	}
	want := []struct{ status, errno, queue int }{
		{201, 0, 1}, {201, 0, 1}, {201, 0, 2}, {404, 102, 0}, {201, 0, 3}, {401, 109, 0}, {400, 111, 0}, {201, 0, 3},
	}
	for i, w := range want {
		got := r.results[i]
		q := 0
		if got.QueueSize != nil {
			q = *got.QueueSize
		}
		if got.Status != w.status || got.Errno != w.errno || q != w.queue {
			t.Errorf("result %d: %+v queue %d, want %+v", i, got, q, w)
		}
		if w.status == 201 && !strings.HasPrefix(got.Location, p.Endpoint+"/m/") {
			t.Errorf("result %d: location %q", i, got.Location)
		}
	}
	if text, _ := on.receive(5 * time.Second); text != "to the connected device" {
		t.Errorf("connected device got %q", text)
	}
	back := connect(t, p, off.uaid)
	back.subs = off.subs
	var got []string
	for range 3 {
		text, _ := back.receive(5 * time.Second)
		got = append(got, text)
	}
	if strings.Join(got, ",") != "b2,b3,b4" {
		t.Errorf("offline device got %v, want the cap to have dropped b1", got)
	}
	back.expectNothing(200 * time.Millisecond)
	if v := p.metric(`pushrelay_store_messages_deleted_total{reason="dropped_cap"}`); v != 1 {
		t.Errorf("dropped_cap = %v", v)
	}

	// A VAPID-signed batch reaches the v2 subscription bound to its key.
	auth, _ := signer.Header(p.Endpoint, "mailto:ops@example.net", time.Now().Add(time.Hour))
	r = postBatch(t, p, map[string]string{"Authorization": auth}, batchMessage(t, sV, "signed batch"), batchMessage(t, sOn, "v1 needs the token"))
	if r.code != 200 || r.results[0].Status != 201 || r.results[1].Status != 401 || r.results[1].Errno != 109 {
		t.Fatalf("vapid batch: %d %s", r.code, r.body)
	}
	if text, _ := keyed.receive(5 * time.Second); text != "signed batch" {
		t.Errorf("keyed device got %q", text)
	}

	// Whole-request refusals.
	if r := postBatch(t, p, nil, batchMessage(t, sOn, "x")); r.code != 401 || r.errno != 109 {
		t.Errorf("unauthenticated: %d %s", r.code, r.body)
	}
	many := make([]map[string]any, 11)
	for i := range many {
		many[i] = map[string]any{"endpoint": sOn.endpoint, "ttl": 0}
	}
	if r := postBatch(t, p, tokenAuth, many...); r.code != 413 || r.errno != 104 {
		t.Errorf("11 messages: %d %s", r.code, r.body)
	}
	if r := do(t, "POST", p.Endpoint+"/wpush/batch", []byte("{"), tokenAuth); r.code != 400 || r.errno != 124 {
		t.Errorf("malformed: %d %s", r.code, r.body)
	}
	if v := p.metric(`pushrelay_endpoint_batches_total{result="accepted"}`); v != 2 {
		t.Errorf("accepted batches = %v", v)
	}
	if v := p.metric(`pushrelay_endpoint_batches_total{result="refused"}`); v != 3 {
		t.Errorf("refused batches = %v", v)
	}
	p.stop()
}
