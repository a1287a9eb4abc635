package megaphone

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/broadcast"
	"github.com/pushrelay/pushrelay/relay/leakcheck"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/store"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

// service is a megaphone on a real loopback socket: it answers what the
// test sets and records what it was asked.
type service struct {
	mu     sync.Mutex
	status int
	body   string
	hold   chan struct{} // when set, answers wait for it (or the client leaving)
	auths  []string
	asked  chan struct{}

	ln  net.Listener
	srv *http.Server
}

func newService(t *testing.T) *service {
	t.Helper()
	s := &service{status: 200, body: `{"broadcasts":{}}`, asked: make(chan struct{}, 100)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.start(t, ln)
	return s
}

func (s *service) start(t *testing.T, ln net.Listener) {
	s.ln = ln
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serve)}
	srv := s.srv
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
}

// down closes the listener, so polls are refused.
func (s *service) down() { s.srv.Close() }

// up listens again on the same address.
func (s *service) up(t *testing.T) {
	ln, err := net.Listen("tcp", s.ln.Addr().String())
	if err != nil {
		t.Fatalf("listen again on %s: %v", s.ln.Addr(), err)
	}
	s.start(t, ln)
}

func (s *service) url() string { return "http://" + s.ln.Addr().String() + "/v1/broadcasts" }

func (s *service) set(status int, body string) {
	s.mu.Lock()
	s.status, s.body = status, body
	s.mu.Unlock()
}

func (s *service) auth(i int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i >= len(s.auths) {
		return "(not asked)"
	}
	return s.auths[i]
}

// holdAnswers makes answers wait until the returned func is called.
func (s *service) holdAnswers() (release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hold = make(chan struct{})
	return sync.OnceFunc(func() { close(s.hold) })
}

func (s *service) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.auths = append(s.auths, r.Header.Get("Authorization"))
	status, body, hold := s.status, s.body, s.hold
	s.mu.Unlock()
	select {
	case s.asked <- struct{}{}:
	default:
	}
	if hold != nil {
		select {
		case <-hold:
		case <-r.Context().Done():
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write([]byte(body))
}

// logBuf collects log lines.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuf) count(level string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), "level="+level)
}

// env is a Poller on a real store, stepped by the test: each poll ends in
// the wait, which hands the test the delay it would sleep.
type env struct {
	t      *testing.T
	svc    *service
	st     *store.Store
	bc     *broadcast.Registry
	reg    *metrics.Registry
	p      *Poller
	logs   *logBuf
	steps  chan time.Duration
	resume chan struct{}
	parked bool // the poller waits in e.resume
	done   chan error
}

const testInterval = time.Second

func newEnv(t *testing.T, tweak func(*Config)) *env {
	t.Helper()
	e := &env{t: t, svc: newService(t), reg: metrics.NewRegistry(), logs: &logBuf{}, steps: make(chan time.Duration), resume: make(chan struct{})}
	var err error
	e.st, err = store.Open(store.Options{Path: filepath.Join(t.TempDir(), "store.db"), Metrics: e.reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.st.Close() })
	if e.bc, err = broadcast.Open(e.st, e.reg); err != nil {
		t.Fatal(err)
	}
	cfg := Config{URL: e.svc.url(), Token: "s3cret", Interval: testInterval, MaxBackoff: 5 * testInterval,
		Registry: e.bc, Metrics: e.reg, Logger: slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if tweak != nil {
		tweak(&cfg)
	}
	if e.p, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	e.p.wait = func(ctx context.Context, d time.Duration) bool {
		select {
		case e.steps <- d:
		case <-ctx.Done():
			return false
		}
		// Parked until the test's next step, so it can change the
		// service between polls.
		select {
		case <-e.resume:
			return true
		case <-ctx.Done():
			return false
		}
	}
	return e
}

func (e *env) run() {
	e.done = make(chan error, 1)
	go func() { e.done <- e.p.Run(context.Background()) }()
	e.t.Cleanup(func() {
		e.p.Close()
		if err := <-e.done; err != nil {
			e.t.Errorf("run: %v", err)
		}
	})
}

// step lets the poller go on (after its first poll, which Run does at
// once), waits for the next poll to end and returns the wait after it.
func (e *env) step() time.Duration {
	e.t.Helper()
	if e.parked {
		e.resume <- struct{}{}
	}
	e.parked = true
	select {
	case d := <-e.steps:
		return d
	case <-time.After(10 * time.Second):
		e.t.Fatal("no poll ended within 10s")
		return 0
	}
}

func (e *env) value(series string) float64 { return e.reg.Value(series) }

func (e *env) wantVersions(want map[string]string) {
	e.t.Helper()
	if got := e.bc.Versions(); !maps.Equal(got, want) {
		e.t.Fatalf("versions %v, want %v", got, want)
	}
	stored, err := e.st.Broadcasts()
	if err != nil || !maps.Equal(stored, want) {
		e.t.Fatalf("stored versions %v (%v), want %v", stored, err, want)
	}
}

// A good answer is applied at once, with the token sent; an unchanged one
// writes nothing; an id missing from a later answer keeps its version.
func TestPollApplies(t *testing.T) {
	e := newEnv(t, nil)
	rs := "remote-settings/monitor_changes"
	e.svc.set(200, `{"code":200,"broadcasts":{"`+rs+`":"\"1700000000000\"","foo/bar":"v1"}}`)
	e.run()
	if d := e.step(); d != testInterval {
		t.Fatalf("wait after a good poll %v, want %v", d, testInterval)
	}
	e.wantVersions(map[string]string{rs: `"1700000000000"`, "foo/bar": "v1"})
	if e.svc.auth(0) != "Bearer s3cret" {
		t.Fatalf("Authorization %q", e.svc.auth(0))
	}
	if v := e.value("pushrelay_megaphone_versions_changed_total"); v != 2 {
		t.Fatalf("versions changed %v", v)
	}
	if v := e.value("pushrelay_megaphone_last_success_timestamp_seconds"); v < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Fatalf("last success %v", v)
	}

	commits := e.value("pushrelay_store_commits_total")
	e.step()
	if got := e.value("pushrelay_store_commits_total"); got != commits {
		t.Fatalf("an unchanged answer committed %v times", got-commits)
	}
	if v := e.value("pushrelay_megaphone_versions_changed_total"); v != 2 {
		t.Fatalf("versions changed %v after an unchanged answer", v)
	}

	e.svc.set(200, `{"code":200,"broadcasts":{"foo/bar":"v2"}}`)
	e.step()
	e.wantVersions(map[string]string{rs: `"1700000000000"`, "foo/bar": "v2"})
	if v := e.value(`pushrelay_megaphone_polls_total{result="ok"}`); v != 3 {
		t.Fatalf("ok polls %v", v)
	}
	if n := e.logs.count("WARN"); n != 0 {
		t.Fatalf("%d warnings:\n%s", n, e.logs.buf.String())
	}
}

// No token, no Authorization header; a token given with its "Bearer "
// (autopush's old setting held the whole header) is not doubled.
func TestToken(t *testing.T) {
	for _, c := range []struct{ token, want string }{{"", ""}, {"Bearer abc", "Bearer abc"}} {
		e := newEnv(t, func(cfg *Config) { cfg.Token = c.token })
		e.run()
		e.step()
		if e.svc.auth(0) != c.want {
			t.Errorf("token %q: Authorization %q, want %q", c.token, e.svc.auth(0), c.want)
		}
	}
}

// A bad answer is refused whole: nothing changes, nothing is written, and
// the streak of failures is logged once.
func TestBadAnswersChangeNothing(t *testing.T) {
	e := newEnv(t, nil)
	e.svc.set(200, `{"broadcasts":{"a":"1"}}`)
	e.run()
	e.step()
	good := map[string]string{"a": "1"}
	e.wantVersions(good)
	many := map[string]string{}
	for i := range broadcast.MaxIDs + 1 {
		many[fmt.Sprintf("id%d", i)] = "1"
	}
	manyBody := `{"broadcasts":` + mustJSON(t, many) + `}`
	almost := map[string]string{}
	for i := range broadcast.MaxIDs {
		almost[fmt.Sprintf("id%d", i)] = "1"
	}
	almostBody := `{"broadcasts":` + mustJSON(t, almost) + `}` // with "a", one more than the relay serves
	long := strings.Repeat("v", broadcast.MaxLen+1)
	cases := []struct {
		name, result string
		status       int
		body         string
	}{
		{"not json", resultBadAnswer, 200, `<html>oops</html>`},
		{"empty body", resultBadAnswer, 200, ``},
		{"no broadcasts", resultBadAnswer, 200, `{"code":200}`},
		{"null broadcasts", resultBadAnswer, 200, `{"broadcasts":null}`},
		{"a number", resultBadAnswer, 200, `{"broadcasts":{"a":"2","b":1}}`},
		{"empty version", resultBadAnswer, 200, `{"broadcasts":{"a":"2","b":""}}`},
		{"long version", resultBadAnswer, 200, `{"broadcasts":{"a":"2","b":"` + long + `"}}`},
		{"trailing garbage", resultBadAnswer, 200, `{"broadcasts":{"a":"2"}} x`},
		{"too many ids", resultBadAnswer, 200, manyBody},
		{"too many with those held", resultBadAnswer, 200, almostBody},
		{"too large", resultBadAnswer, 200, `{"broadcasts":{"a":"2"},"pad":"` + strings.Repeat(" ", MaxAnswer) + `"}`},
		{"unauthorized", resultStatus, 401, `{"code":401,"error":"Unauthorized"}`},
		{"server error", resultStatus, 500, `{"broadcasts":{"a":"2"}}`},
	}
	commits := e.value("pushrelay_store_commits_total")
	for i, c := range cases {
		e.svc.set(c.status, c.body)
		before := e.value(`pushrelay_megaphone_polls_total{result="` + c.result + `"}`)
		if d := e.step(); d != Backoff(testInterval, 5*testInterval, i+1) {
			t.Errorf("%s: wait %v", c.name, d)
		}
		if got := e.value(`pushrelay_megaphone_polls_total{result="` + c.result + `"}`); got != before+1 {
			t.Errorf("%s: %s polls went from %v to %v", c.name, c.result, before, got)
		}
		e.wantVersions(good)
	}
	if got := e.value("pushrelay_store_commits_total"); got != commits {
		t.Fatalf("bad answers committed %v times", got-commits)
	}
	if v := e.value("pushrelay_megaphone_consecutive_failures"); v != float64(len(cases)) {
		t.Fatalf("consecutive failures %v", v)
	}
	if n := e.logs.count("WARN"); n != 1 {
		t.Fatalf("%d warnings for one streak of failures:\n%s", n, e.logs.buf.String())
	}
	e.svc.set(200, `{"broadcasts":{"a":"2"}}`)
	e.step()
	e.wantVersions(map[string]string{"a": "2"})
	if !strings.Contains(e.logs.buf.String(), "megaphone answers again") {
		t.Fatal("no line when the service answered again")
	}
	e.svc.set(500, ``)
	e.step()
	if n := e.logs.count("WARN"); n != 2 {
		t.Fatalf("a new streak logged %d warnings in all, want 2", n)
	}
}

func mustJSON(t *testing.T, m map[string]string) string {
	var b strings.Builder
	b.WriteString("{")
	first := true
	for k, v := range m {
		if !first {
			b.WriteString(",")
		}
		first = false
		fmt.Fprintf(&b, "%q:%q", k, v)
	}
	b.WriteString("}")
	return b.String()
}

// A service that is down: polls back off up to MaxBackoff, and when it is
// back the answer is applied and the interval is the normal one again.
func TestServiceDownThenBack(t *testing.T) {
	e := newEnv(t, nil)
	e.svc.set(200, `{"broadcasts":{"a":"1"}}`)
	e.svc.down()
	e.run()
	want := []time.Duration{2 * testInterval, 4 * testInterval, 5 * testInterval, 5 * testInterval, 5 * testInterval}
	for i, w := range want {
		if d := e.step(); d != w {
			t.Fatalf("wait after %d failures %v, want %v", i+1, d, w)
		}
	}
	if v := e.value(`pushrelay_megaphone_polls_total{result="unreachable"}`); v != float64(len(want)) {
		t.Fatalf("unreachable polls %v", v)
	}
	if v := e.value("pushrelay_megaphone_last_success_timestamp_seconds"); v != 0 {
		t.Fatalf("last success %v before any", v)
	}
	e.wantVersions(map[string]string{})
	e.svc.up(t)
	if d := e.step(); d != testInterval {
		t.Fatalf("wait after the service came back %v", d)
	}
	e.wantVersions(map[string]string{"a": "1"})
	if n := e.logs.count("WARN"); n != 1 {
		t.Fatalf("%d warnings:\n%s", n, e.logs.buf.String())
	}
}

func TestBackoff(t *testing.T) {
	for _, c := range []struct {
		interval, max time.Duration
		fails         int
		want          time.Duration
	}{
		{30 * time.Second, 5 * time.Minute, 0, 30 * time.Second},
		{30 * time.Second, 5 * time.Minute, 1, time.Minute},
		{30 * time.Second, 5 * time.Minute, 3, 4 * time.Minute},
		{30 * time.Second, 5 * time.Minute, 4, 5 * time.Minute},
		{30 * time.Second, 5 * time.Minute, 1000, 5 * time.Minute},
		{time.Hour, 5 * time.Minute, 2, 5 * time.Minute},
	} {
		if got := Backoff(c.interval, c.max, c.fails); got != c.want {
			t.Errorf("Backoff(%v, %v, %d) = %v, want %v", c.interval, c.max, c.fails, got, c.want)
		}
	}
}

// Close during a poll the service is slow to answer cancels it and
// returns without waiting for the request timeout; Close again is fine.
func TestCloseDuringSlowPoll(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Interval, c.Timeout = time.Hour, time.Hour })
	defer e.svc.holdAnswers()()
	e.done = make(chan error, 1)
	go func() { e.done <- e.p.Run(context.Background()) }()
	select {
	case <-e.svc.asked:
	case <-time.After(10 * time.Second):
		t.Fatal("not polled at start")
	}
	closed := make(chan error, 1)
	go func() { closed <- e.p.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close waited for the slow poll")
	}
	if err := <-e.done; err != nil {
		t.Fatal(err)
	}
	if err := e.p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if v := e.value(`pushrelay_megaphone_polls_total{result="timeout"}`) + e.value(`pushrelay_megaphone_polls_total{result="unreachable"}`); v != 0 {
		t.Fatalf("a poll cancelled by Close counted as failed (%v)", v)
	}
}

// A service that answers too slowly fails the poll as a timeout.
func TestSlowAnswerTimesOut(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Timeout = 50 * time.Millisecond })
	defer e.svc.holdAnswers()()
	e.run()
	e.step()
	if v := e.value(`pushrelay_megaphone_polls_total{result="timeout"}`); v != 1 {
		t.Fatalf("timeout polls %v", v)
	}
}

func TestNewRefuses(t *testing.T) {
	bc := &broadcast.Registry{}
	for _, c := range []Config{
		{URL: "", Registry: bc},
		{URL: "ftp://example.com/", Registry: bc},
		{URL: "/v1/broadcasts", Registry: bc},
		{URL: "http://127.0.0.1/"},
		{URL: "http://127.0.0.1/", Registry: bc, Token: "a\nb"},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v) accepted", c)
		}
	}
}

func TestDecode(t *testing.T) {
	got, err := Decode([]byte(`{"code": 200, "broadcasts": {"remote-settings/monitor_changes": "\"1700000000000\"", "foo/bar": "v1"}}`))
	if err != nil || !maps.Equal(got, map[string]string{"remote-settings/monitor_changes": `"1700000000000"`, "foo/bar": "v1"}) {
		t.Fatalf("%v %v", got, err)
	}
	if got, err := Decode([]byte(`{"broadcasts":{}}`)); err != nil || len(got) != 0 {
		t.Fatalf("empty: %v %v", got, err)
	}
	for _, bad := range []string{``, `null`, `[]`, `"x"`, `{}`, `{"broadcasts":[]}`, `{"broadcasts":{"a":null}}`, `{"broadcasts":{"a":"1"}}{}`} {
		if _, err := Decode([]byte(bad)); !errors.Is(err, ErrBadAnswer) {
			t.Errorf("Decode(%s): %v", bad, err)
		}
	}
}
