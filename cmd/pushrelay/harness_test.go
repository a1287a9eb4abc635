package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/cmd/pushrelay/internal/relayproc"
	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/leakcheck"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
)

// binPath is the pushrelay binary built once for the end-to-end tests.
var binPath string

// binTags are the build tags binPath is built with: the test binary's own
// that change the daemon (tags_nofasthttp_test.go), so that `go test -tags
// nofasthttp` runs the end-to-end tests against a nofasthttp daemon.
var binTags []string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pushrelay-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "pushrelay")
	build := exec.Command("go", "build", "-tags", strings.Join(binTags, ","), "-o", binPath, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building pushrelay:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		// Tests that run the daemon in-process (run) leave nothing behind.
		if err := leakcheck.Check(5 * time.Second); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// relayProc is a pushrelay binary running with port-0 listeners.
type relayProc struct {
	*relayproc.Proc
	t      *testing.T
	stderr *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startRelay runs the binary on dataDir and waits until /readyz says 200.
func startRelay(t *testing.T, dataDir string, extra ...string) *relayProc {
	t.Helper()
	p, err := tryStartRelay(t, dataDir, extra...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// tryStartRelay is startRelay returning the start's error (with the
// relay's stderr) instead of failing the test.
func tryStartRelay(t *testing.T, dataDir string, extra ...string) (*relayProc, error) {
	t.Helper()
	p := &relayProc{t: t, stderr: &syncBuffer{}}
	c, err := relayproc.Start(context.Background(), binPath, dataDir, p.stderr, append([]string{"--log-level", "debug"}, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("%v\nstderr:\n%s", err, tail(p.stderr.String(), 40))
	}
	p.Proc = c
	t.Cleanup(func() {
		select {
		case <-p.Done:
		default:
			p.Kill()
		}
		if t.Failed() {
			t.Logf("relay stderr:\n%s", tail(p.stderr.String(), 60))
		}
	})
	return p, nil
}

func tail(s string, lines int) string {
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// stop sends SIGTERM and checks the relay exits 0.
func (p *relayProc) stop() {
	p.t.Helper()
	p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.Done:
	case <-time.After(20 * time.Second):
		p.Cmd.Process.Kill()
		p.t.Fatal("relay did not exit after SIGTERM")
	}
	if p.ExitErr != nil {
		p.t.Fatalf("relay exit after SIGTERM: %v\nstderr:\n%s", p.ExitErr, tail(p.stderr.String(), 30))
	}
}

func httpGet(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// status reads /status as JSON.
func (p *relayProc) status() map[string]any {
	p.t.Helper()
	code, body := httpGet(p.Admin + "/status?format=json")
	if code != 200 {
		p.t.Fatalf("/status = %d %s", code, body)
	}
	var m map[string]any
	json.Unmarshal([]byte(body), &m)
	return m
}

func (p *relayProc) waiting() int {
	return int(p.status()["waiting_messages"].(float64))
}

// metric returns the value of one sample line of /metrics (0 if absent).
func (p *relayProc) metric(sample string) float64 {
	p.t.Helper()
	_, body := httpGet(p.Admin + "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, sample+" ") {
			var v float64
			fmt.Sscan(strings.TrimPrefix(line, sample+" "), &v)
			return v
		}
	}
	return 0
}

// device is a test device with its subscriptions' keys.
type device struct {
	t    *testing.T
	c    *pushclient.Client
	uaid string
	subs map[string]*testSub // by channel ID
}

type testSub struct {
	channel  string
	endpoint string
	keys     *ece.Subscription
}

// dial opens a raw device connection (no hello yet), dropped at cleanup.
func dial(t *testing.T, p *relayProc) *pushclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pushclient.Dial(ctx, p.Device)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Abort() })
	return c
}

func connect(t *testing.T, p *relayProc, uaid string) *device {
	t.Helper()
	c := dial(t, p)
	h, err := c.Hello(uaid, pushclient.HelloOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return &device{t: t, c: c, uaid: h.UAID, subs: map[string]*testSub{}}
}

func newChannelID() string { return pushproto.NewChannelID() }

func (d *device) register(key string) *testSub {
	d.t.Helper()
	ch := newChannelID()
	r, err := d.c.Register(ch, key)
	if err != nil {
		d.t.Fatal(err)
	}
	if r.Status != 200 || r.PushEndpoint == "" {
		d.t.Fatalf("register: status %d endpoint %q", r.Status, r.PushEndpoint)
	}
	keys, _ := ece.NewSubscription()
	s := &testSub{channel: ch, endpoint: r.PushEndpoint, keys: keys}
	d.subs[ch] = s
	return s
}

// push posts an encrypted message and returns the response.
func push(t *testing.T, s *testSub, text string, hdr map[string]string) *http.Response {
	t.Helper()
	body, err := ece.Encrypt([]byte(text), s.keys.PublicKey(), s.keys.Auth)
	if err != nil {
		t.Fatal(err)
	}
	return post(t, s.endpoint, body, mergeHeaders(map[string]string{"TTL": "60", "Content-Encoding": "aes128gcm"}, hdr))
}

func mergeHeaders(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		if v == "" {
			delete(out, k)
		} else {
			out[k] = v
		}
	}
	return out
}

func post(t *testing.T, url string, body []byte, hdr map[string]string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func mustCreated(t *testing.T, resp *http.Response) {
	t.Helper()
	if resp.StatusCode != 201 {
		t.Fatalf("push: %s", resp.Status)
	}
}

// receive waits for one notification, decrypts it and returns the text.
func (d *device) receive(timeout time.Duration) (string, string) {
	d.t.Helper()
	n, err := d.c.Next(time.Now().Add(timeout))
	if err != nil {
		d.t.Fatalf("waiting for a notification: %v", err)
	}
	s := d.subs[n.ChannelID]
	if s == nil {
		d.t.Fatalf("notification for unknown channel %s", n.ChannelID)
	}
	if n.Data == "" {
		return "", n.Version
	}
	raw, err := b64url(n.Data)
	if err != nil {
		d.t.Fatal(err)
	}
	plain, err := ece.Decrypt(raw, s.keys)
	if err != nil {
		d.t.Fatalf("decrypt: %v", err)
	}
	if err := d.c.Ack(n); err != nil {
		d.t.Fatal(err)
	}
	return string(plain), n.Version
}

// expectNothing checks no notification arrives within d.
func (d *device) expectNothing(wait time.Duration) {
	d.t.Helper()
	n, err := d.c.Next(time.Now().Add(wait))
	if err == nil {
		d.t.Fatalf("unexpected notification %+v", n)
	}
}

func b64url(s string) ([]byte, error) { return ece.DecodeKey(s) }
