package member

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/leakcheck"
	"github.com/pushrelay/pushrelay/relay/metrics"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

// testTiming is quicker than LANTiming, with room for a loaded test
// machine (-race, two cores shared).
func testTiming() Timing {
	return Timing{
		ProbeInterval:    200 * time.Millisecond,
		ProbeTimeout:     100 * time.Millisecond,
		IndirectChecks:   2,
		SuspicionMult:    3,
		SuspicionMaxMult: 2,
		GossipInterval:   50 * time.Millisecond,
		GossipNodes:      3,
		GossipToTheDead:  time.Second,
		PushPullInterval: time.Second,
		TCPTimeout:       time.Second,
		DeadReclaim:      time.Second,
	}
}

// tWriter sends logs to t.Log until the test is over (memberlist's
// goroutines may still log while they end).
type tWriter struct {
	t    *testing.T
	mu   *sync.Mutex
	done *bool
}

func (w tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !*w.done {
		w.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

func testLogger(t *testing.T, name string) *slog.Logger {
	var mu sync.Mutex
	done := false
	t.Cleanup(func() { mu.Lock(); done = true; mu.Unlock() })
	return slog.New(slog.NewTextHandler(tWriter{t, &mu, &done}, &slog.HandlerOptions{Level: slog.LevelInfo})).With("member", name)
}

// recorder is a Handler that keeps every event.
type recorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *recorder) HandleEvent(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) all() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

func (r *recorder) has(kind EventKind, name string) bool {
	for _, e := range r.all() {
		if e.Kind == kind && e.Member.Name == name {
			return true
		}
	}
	return false
}

// tm is a member under test.
type tm struct {
	*Member
	rec *recorder
	reg *metrics.Registry
	run chan error
}

// start starts a member named name on 127.0.0.1:0, with testTiming
// unless set, joined to seeds; it is closed when the test ends.
func start(t *testing.T, name string, edit func(*Config), seeds ...*tm) *tm {
	t.Helper()
	x := &tm{rec: &recorder{}, reg: metrics.NewRegistry(), run: make(chan error, 1)}
	cfg := Config{
		Name: name, Listen: "127.0.0.1:0", Keys: [][]byte{testKey(1)},
		Timing: testTiming(), RejoinInterval: 300 * time.Millisecond, MetaInterval: 50 * time.Millisecond,
		Events: x.rec, Logger: testLogger(t, name), Metrics: x.reg,
	}
	for _, s := range seeds {
		cfg.Join = append(cfg.Join, s.Addr())
	}
	if edit != nil {
		edit(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	x.Member = m
	go func() { x.run <- m.Run(context.Background()) }()
	t.Cleanup(func() {
		m.Close()
		select {
		case <-x.run:
		case <-time.After(10 * time.Second):
			t.Errorf("%s: Run did not return after Close", name)
		}
	})
	return x
}

// kill shuts memberlist down without a leave, as a SIGKILL would stop it.
func (m *Member) kill() {
	m.killed.Store(true)
	m.ml.Shutdown()
}

// stateOf returns how x sees name ("" when it does not know it).
func (x *tm) stateOf(name string) string {
	for _, in := range x.Members() {
		if in.Name == name {
			return in.State.String()
		}
	}
	return ""
}

// waitFor polls cond every 20 ms until it holds, failing after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("after %s: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// allSee reports whether each of ms sees every name in state.
func allSee(ms []*tm, state string, names ...string) bool {
	for _, m := range ms {
		for _, n := range names {
			if m.stateOf(n) != state {
				return false
			}
		}
	}
	return true
}

func TestThreeJoinThroughOneSeed(t *testing.T) {
	a := start(t, "a", nil)
	b := start(t, "b", nil, a)
	c := start(t, "c", nil, a)
	ms := []*tm{a, b, c}
	waitFor(t, 10*time.Second, "every member sees 3 alive", func() bool { return allSee(ms, "alive", "a", "b", "c") })
	for _, in := range c.Members() {
		if in.Meta.Name != in.Name || in.Meta.RaftID != IDOf(in.Name) || in.MetaErr != "" {
			t.Errorf("c sees %s with meta %+v (%s)", in.Name, in.Meta, in.MetaErr)
		}
		if in.Self != (in.Name == "c") {
			t.Errorf("c sees %s with Self %v", in.Name, in.Self)
		}
	}
	waitFor(t, 5*time.Second, "a's handler got b's and c's joins", func() bool {
		return a.rec.has(EventJoin, "b") && a.rec.has(EventJoin, "c")
	})
	if a.rec.has(EventJoin, "a") {
		t.Error("a's handler got an event about a itself")
	}
	if v := a.reg.Value(`pushrelay_member_members{state="alive"}`); v != 3 {
		t.Errorf("a's alive members gauge %v, want 3", v)
	}
}

func TestMetadataPropagates(t *testing.T) {
	var cur atomic.Pointer[Meta]
	cur.Store(&Meta{LinkAddr: "127.0.0.1:4433", AdminAddr: "127.0.0.1:9090", Version: "v1"})
	a := start(t, "a", nil)
	b := start(t, "b", func(c *Config) {
		c.Meta = func() Meta { return *cur.Load() }
		c.MetaRefresh = time.Hour // only UpdateMeta sends a change
	}, a)
	waitFor(t, 10*time.Second, "a sees b with its link address", func() bool {
		for _, in := range a.Members() {
			if in.Name == "b" && in.Meta.LinkAddr == "127.0.0.1:4433" {
				return true
			}
		}
		return false
	})

	d := NewDigest(0)
	d.Add("uaid-on-b")
	next := Meta{LinkAddr: "127.0.0.1:4433", AdminAddr: "127.0.0.1:9090", Version: "v1",
		Load: 250, Sockets: 1, WakeBindings: 7, SocketDigest: d}
	cur.Store(&next)
	before := b.reg.Value("pushrelay_member_meta_updates_total")
	for range 50 {
		b.UpdateMeta()
	}
	var got Meta
	waitFor(t, 5*time.Second, "a gets b's update", func() bool {
		for _, e := range a.rec.all() {
			if e.Kind == EventUpdate && e.Member.Name == "b" && e.Member.Meta.Load == 250 {
				got = e.Member.Meta
				return true
			}
		}
		return false
	})
	if got.Sockets != 1 || got.WakeBindings != 7 || !got.SocketDigest.MayHold("uaid-on-b") || got.Name != "b" || got.RaftID != IDOf("b") {
		t.Fatalf("a got b's meta %+v", got)
	}
	// 50 calls in a row are one update (rate limited and coalesced).
	time.Sleep(200 * time.Millisecond)
	if n := b.reg.Value("pushrelay_member_meta_updates_total") - before; n != 1 {
		t.Errorf("50 UpdateMeta calls sent %v updates, want 1", n)
	}
}

// TestFailureDetection kills a member of three (no leave) with the
// tuned LANTiming and measures how long the others take to declare it
// failed.
func TestFailureDetection(t *testing.T) {
	lan := func(c *Config) { c.Timing = LANTiming() }
	a := start(t, "a", lan)
	b := start(t, "b", lan, a)
	c := start(t, "c", lan, a)
	waitFor(t, 10*time.Second, "3 alive", func() bool { return allSee([]*tm{a, b, c}, "alive", "a", "b", "c") })
	killed := time.Now()
	c.kill()
	bound := LANTiming().DetectionBound(3)
	took := waitFor(t, bound+2*time.Second, "a and b see c failed", func() bool {
		return a.stateOf("c") == "failed" && b.stateOf("c") == "failed"
	})
	t.Logf("c declared failed by both others %s after the kill (bound %s)", took.Round(time.Millisecond), bound)
	if took > bound {
		t.Errorf("detection took %s, over the bound %s", took, bound)
	}
	// The event reaches the recorder just after memberlist's state
	// changes (CI once checked in between).
	waitFor(t, 2*time.Second, "a's event of c's failure", func() bool { return a.rec.has(EventFail, "c") })
	if a.rec.has(EventLeave, "c") {
		t.Errorf("a's events about c: %v", a.rec.all())
	}
	_ = killed
}

func TestLeaveIsNotAFailure(t *testing.T) {
	a := start(t, "a", nil)
	b := start(t, "b", nil, a)
	waitFor(t, 10*time.Second, "2 alive", func() bool { return allSee([]*tm{a, b}, "alive", "a", "b") })
	closed := time.Now()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Close took %s", time.Since(closed).Round(time.Millisecond))
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	waitFor(t, 5*time.Second, "a sees b left", func() bool { return a.stateOf("b") == "left" })
	if !a.rec.has(EventLeave, "b") || a.rec.has(EventFail, "b") {
		t.Errorf("a's events about b: %v", a.rec.all())
	}
	if got := a.rejoinTargets(); got != nil {
		t.Errorf("a would chase %v, a member that left", got)
	}
}

// TestPartitionHeals cuts {a, b} from {c} until each side declared the
// other failed and stopped gossiping to it, then heals: with the rejoin
// loop both sides merge again; without it (RejoinInterval < 0) they do
// not, which is what the loop is for.
func TestPartitionHeals(t *testing.T) {
	for _, loop := range []bool{true, false} {
		t.Run(fmt.Sprintf("loop=%v", loop), func(t *testing.T) {
			f := NewFaults()
			edit := func(c *Config) {
				c.Faults = f
				if !loop {
					c.RejoinInterval = -1
				}
			}
			a := start(t, "a", edit)
			b := start(t, "b", edit, a)
			c := start(t, "c", edit, a)
			ms := []*tm{a, b, c}
			waitFor(t, 10*time.Second, "3 alive", func() bool { return allSee(ms, "alive", "a", "b", "c") })

			f.Cut([]string{"a", "b"}, []string{"c"})
			waitFor(t, 10*time.Second, "both sides see the other failed", func() bool {
				return allSee([]*tm{a, b}, "failed", "c") && allSee([]*tm{c}, "failed", "a", "b")
			})
			// Stay cut past GossipToTheDead, after which memberlist sends
			// nothing to the other side.
			time.Sleep(testTiming().GossipToTheDead + 500*time.Millisecond)
			f.Heal()
			healed := time.Now()
			if loop {
				took := waitFor(t, 10*time.Second, "every member sees 3 alive after the heal", func() bool { return allSee(ms, "alive", "a", "b", "c") })
				t.Logf("merged %s after the heal (rejoin interval 300 ms ± 25%%), %d packets dropped during the cut", took.Round(time.Millisecond), f.Drops())
				if a.reg.Value(`pushrelay_member_joins_total{result="ok"}`)+c.reg.Value(`pushrelay_member_joins_total{result="ok"}`) == 0 {
					t.Error("no rejoin counted")
				}
				return
			}
			// Without the loop: several push/pull intervals later, still split.
			time.Sleep(4 * testTiming().PushPullInterval)
			if allSee(ms, "alive", "a", "b", "c") {
				t.Fatal("the sides merged without the rejoin loop: the test no longer shows what the loop is for")
			}
			t.Logf("%s after the heal, without the loop: a sees c %s, c sees a %s", time.Since(healed).Round(time.Millisecond), a.stateOf("c"), c.stateOf("a"))
		})
	}
}

func TestWrongKeyRefused(t *testing.T) {
	a := start(t, "a", nil)
	b := start(t, "b", nil, a)
	waitFor(t, 10*time.Second, "2 alive", func() bool { return allSee([]*tm{a, b}, "alive", "a", "b") })
	x := start(t, "x", func(c *Config) { c.Keys = [][]byte{testKey(9)} }, a)
	waitFor(t, 5*time.Second, "a counts a key error", func() bool {
		return a.reg.Value("pushrelay_member_key_errors_total") > 0
	})
	time.Sleep(500 * time.Millisecond)
	if s := a.stateOf("x"); s != "" {
		t.Errorf("a knows x (%s), which has another key", s)
	}
	if n := len(x.Members()); n != 1 {
		t.Errorf("x knows %d members, want itself only", n)
	}
	if x.reg.Value(`pushrelay_member_joins_total{result="failed"}`) == 0 {
		t.Error("x's failed join not counted")
	}
	// No key at all is refused by Validate.
	if _, err := New(Config{Name: "y", Listen: "127.0.0.1:0"}); err == nil || !strings.Contains(err.Error(), "no gossip key") {
		t.Errorf("New without a key: %v", err)
	}
}

// TestKeyRotation rotates the site's key from k1 to k2 in the three
// documented steps, a through its keyring file, b and c through SetKeys;
// no member fails on the way, and at the end k1 opens nothing.
func TestKeyRotation(t *testing.T) {
	k1, k2 := testKey(1), testKey(2)
	ringFile := filepath.Join(t.TempDir(), "keyring")
	writeRing := func(keys ...[]byte) {
		var b strings.Builder
		b.WriteString("# gossip keys, primary first\n")
		for _, k := range keys {
			fmt.Fprintf(&b, "%s\n", encodeKey(k))
		}
		if err := os.WriteFile(ringFile, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeRing(k1)
	a := start(t, "a", func(c *Config) { c.Keys = nil; c.KeyringFile = ringFile; c.KeyringCheck = 50 * time.Millisecond })
	b := start(t, "b", nil, a)
	c := start(t, "c", nil, a)
	ms := []*tm{a, b, c}
	waitFor(t, 10*time.Second, "3 alive", func() bool { return allSee(ms, "alive", "a", "b", "c") })

	step := func(keys ...[]byte) {
		writeRing(keys...)
		for _, m := range []*tm{b, c} {
			if err := m.SetKeys(keys); err != nil {
				t.Fatal(err)
			}
		}
		want := KeyFingerprints(keys)
		waitFor(t, 2*time.Second, "a reloads its keyring file", func() bool { return slices.Equal(a.Keys(), want) })
		// A few probe rounds with the new keys.
		time.Sleep(5 * testTiming().ProbeInterval)
		if !allSee(ms, "alive", "a", "b", "c") {
			t.Fatalf("after installing %v: a member is not alive", want)
		}
	}
	step(k1, k2) // 1. add the new key everywhere
	step(k2, k1) // 2. make it primary everywhere
	step(k2)     // 3. remove the old one everywhere
	for _, m := range ms {
		for _, e := range m.rec.all() {
			if e.Kind == EventFail || e.Kind == EventLeave {
				t.Errorf("%s saw %s %s during the rotation", m.Name(), e.Member.Name, e.Kind)
			}
		}
	}
	old := start(t, "old", nil, a) // k1 only
	nw := start(t, "new", func(c *Config) { c.Keys = [][]byte{k2} }, b)
	waitFor(t, 10*time.Second, "the member with k2 joins", func() bool { return allSee(ms, "alive", "new") })
	if s := a.stateOf("old"); s != "" || len(old.Members()) != 1 {
		t.Errorf("the member with the removed key joined: a sees it %q, it knows %d", s, len(old.Members()))
	}
	_ = nw
}

// TestEventQueueFull blocks the handler: events past the queue are
// dropped and counted, and once the handler goes on it gets the queued
// events in order, then one resync with the whole membership.
func TestEventQueueFull(t *testing.T) {
	release := make(chan struct{})
	var (
		mu  sync.Mutex
		got []Event
	)
	a := start(t, "a", func(c *Config) {
		c.EventQueue = 2
		c.Events = HandlerFunc(func(e Event) {
			<-release
			mu.Lock()
			got = append(got, e)
			mu.Unlock()
		})
	})
	var others []*tm
	for _, n := range []string{"b", "c", "d", "e"} {
		others = append(others, start(t, n, nil, a))
	}
	waitFor(t, 10*time.Second, "a sees 5 alive", func() bool { return allSee([]*tm{a}, "alive", "a", "b", "c", "d", "e") })
	waitFor(t, 5*time.Second, "a drops events", func() bool { return a.reg.Value("pushrelay_member_events_dropped_total") > 0 })
	close(release)
	resync := func() int {
		mu.Lock()
		defer mu.Unlock()
		return slices.IndexFunc(got, func(e Event) bool { return e.Kind == EventResync })
	}
	waitFor(t, 5*time.Second, "a's handler gets a resync", func() bool { return resync() >= 0 })
	mu.Lock()
	defer mu.Unlock()
	// The two queued (and the one the handler was blocked on, if the
	// deliverer had taken it before the queue filled: the joins may all
	// come at once), then the resync.
	i := slices.IndexFunc(got, func(e Event) bool { return e.Kind == EventResync })
	if i != 2 && i != 3 {
		t.Errorf("the resync came after %d events, want 2 or 3: %v", i, got)
		return
	}
	for _, e := range got[:i] {
		if e.Kind != EventJoin {
			t.Errorf("before the resync: %v", e)
		}
	}
	last := got[i]
	var names []string
	for _, in := range last.Members {
		names = append(names, in.Name+"="+in.State.String())
	}
	if strings.Join(names, ",") != "a=alive,b=alive,c=alive,d=alive,e=alive" {
		t.Errorf("resync members: %v", names)
	}
	_ = others
}

func TestConfigErrors(t *testing.T) {
	good := Config{Name: "gw-1", Listen: "127.0.0.1:0", Keys: [][]byte{testKey(1)}}
	for _, tc := range []struct {
		edit func(*Config)
		want string
	}{
		{func(c *Config) { c.Name = "" }, "name"},
		{func(c *Config) { c.Name = "a b" }, "name"},
		{func(c *Config) { c.Listen = "nope" }, "listen"},
		{func(c *Config) { c.Join = []string{"10.0.0.1"} }, "join"},
		{func(c *Config) { c.Join = []string{"10.0.0.1:0"} }, "join"},
		{func(c *Config) { c.Keys = [][]byte{make([]byte, 20)} }, "20 bytes, want 16, 24 or 32"},
		{func(c *Config) { c.KeyringFile = "/nonexistent/ring" }, "keyring"},
		{func(c *Config) { c.Timing = LANTiming(); c.Timing.ProbeTimeout = time.Second }, "probe timeout"},
	} {
		c := good
		tc.edit(&c)
		if _, err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error with %q", c, err, tc.want)
		}
	}
	if _, err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseKey("c2hvcnQ="); err == nil {
		t.Error("a 5-byte key parsed")
	}
	if k, err := ParseKey(encodeKey(testKey(3))); err != nil || !bytes.Equal(k, testKey(3)) {
		t.Errorf("ParseKey: %v", err)
	}
}

func TestRunAfterClose(t *testing.T) {
	m, err := New(Config{Name: "a", Listen: "127.0.0.1:0", Keys: [][]byte{testKey(1)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Run(context.Background()); err != ErrClosed {
		t.Fatalf("Run after Close: %v", err)
	}
}

func encodeKey(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

// memberlistLANDefaults is memberlist's DefaultLANConfig as a Timing,
// for comparison.
func memberlistLANDefaults() Timing {
	return Timing{
		ProbeInterval: time.Second, ProbeTimeout: 500 * time.Millisecond, IndirectChecks: 3,
		SuspicionMult: 4, SuspicionMaxMult: 6, GossipInterval: 200 * time.Millisecond, GossipNodes: 3,
		GossipToTheDead: 30 * time.Second, PushPullInterval: 30 * time.Second, TCPTimeout: 10 * time.Second,
	}
}

// TestDetectionMeasure measures failure detection on sites of 3: runs
// kills with LANTiming and with memberlist's LAN defaults, and logs each
// time and the median. It takes about a minute, so it runs only with
// PUSHRELAY_MEMBER_MEASURE=N (N kills each):
//
//	PUSHRELAY_MEMBER_MEASURE=5 go test -count=1 -run TestDetectionMeasure -v ./relay/member
func TestDetectionMeasure(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("PUSHRELAY_MEMBER_MEASURE"))
	if n <= 0 {
		t.Skip("set PUSHRELAY_MEMBER_MEASURE=N to measure")
	}
	for _, tc := range []struct {
		name   string
		timing Timing
	}{{"LANTiming", LANTiming()}, {"memberlist LAN defaults", memberlistLANDefaults()}} {
		var took []time.Duration
		for i := range n {
			func() {
				edit := func(c *Config) { c.Timing = tc.timing; c.Logger = nil }
				a := start(t, fmt.Sprintf("a%d", i), edit)
				b := start(t, fmt.Sprintf("b%d", i), edit, a)
				c := start(t, fmt.Sprintf("c%d", i), edit, a)
				names := []string{a.Name(), b.Name(), c.Name()}
				waitFor(t, 10*time.Second, "3 alive", func() bool { return allSee([]*tm{a, b, c}, "alive", names...) })
				time.Sleep(time.Duration(i) * 137 * time.Millisecond) // vary the phase of the probe rounds
				c.kill()
				d := waitFor(t, 30*time.Second, "c failed", func() bool {
					return a.stateOf(c.Name()) == "failed" && b.stateOf(c.Name()) == "failed"
				})
				took = append(took, d)
				a.Close()
				b.Close()
			}()
		}
		slices.Sort(took)
		t.Logf("%s: declared failed by both others after %v; median %s, bound %s", tc.name, took, took[len(took)/2].Round(10*time.Millisecond), tc.timing.DetectionBound(3))
	}
}
