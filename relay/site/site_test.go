package site

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/kick"
	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/link"
	"github.com/pushrelay/pushrelay/relay/linkauth"
	"github.com/pushrelay/pushrelay/relay/member"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/store"
)

func init() {
	// quic-go warns when it cannot get 7 MiB socket buffers, as it
	// cannot in an unprivileged test run.
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
}

// testSite is a site's keys and its members, all in this process on
// 127.0.0.1: real gossip, real QUIC, real store files.
type testSite struct {
	t      *testing.T
	dir    string
	expect int
	// keys are the members' key fingerprints by name (none: unchecked).
	keys map[string]KeyPrints
	// setup, if set, is run on each member before its site runs.
	setup func(x *tm)
}

func newTestSite(t *testing.T, expect int) *testSite {
	ts := &testSite{t: t, dir: t.TempDir(), expect: expect}
	if _, err := linkauth.NewCA(filepath.Join(ts.dir, "ca"), "", false); err != nil {
		t.Fatal(err)
	}
	return ts
}

// tm is one running member.
type tm struct {
	name string
	dir  string
	st   *store.Store
	site *Site
	mem  *member.Member
	reg  *metrics.Registry
	// sessions are the devices with a session on the member, as its hub
	// would report them (waking_test.go).
	sessions sessionSet
	// kick is the member's kicker once startWaking gave it one.
	kick *kick.Kicker
	// up and hub: the site's upstream and the member's hub (holder_test.go).
	up  *Upstream
	hub *relay.Hub
	// lp is the member's relay link parent (parent_test.go).
	lp *link.Parent

	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

func quietLogger(t *testing.T, name string) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("m", name)
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// start runs member name on its data dir (kept across restarts of the
// same name), joined to seeds.
func (ts *testSite) start(name string, seeds ...*tm) *tm {
	t := ts.t
	t.Helper()
	keys := filepath.Join(ts.dir, "keys")
	if _, err := os.Stat(filepath.Join(keys, name+".crt")); err != nil {
		if _, err := linkauth.Issue(filepath.Join(ts.dir, "ca"), name, keys, false); err != nil {
			t.Fatal(err)
		}
	}
	creds, err := linkauth.Load(filepath.Join(keys, name+".crt"), filepath.Join(keys, name+".key"),
		filepath.Join(ts.dir, "ca", linkauth.CACertFile), nil, "")
	if err != nil {
		t.Fatal(err)
	}
	server, err := creds.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	x := &tm{name: name, dir: filepath.Join(ts.dir, name), reg: metrics.NewRegistry()}
	log := quietLogger(t, name)
	if err := os.MkdirAll(x.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	x.st, err = store.Open(store.Options{Path: filepath.Join(x.dir, "pushrelay.db"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	x.site, err = New(Config{
		Name: name, Store: x.st, Dir: x.dir, Listen: "127.0.0.1:0",
		ServerTLS: server, ClientTLS: creds.ClientTLS(),
		Members: func() []member.Info { return x.mem.Members() },
		Expect:  ts.expect, Settle: 300 * time.Millisecond, Tick: 50 * time.Millisecond,
		ProposeTimeout: 3 * time.Second, SweepInterval: time.Hour,
		Keys:   ts.keys[name],
		Logger: log, Metrics: x.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	var join []string
	for _, s := range seeds {
		join = append(join, s.mem.Addr())
	}
	x.mem, err = member.New(member.Config{
		Name: name, Listen: "127.0.0.1:0", Join: join, Keys: [][]byte{bytes.Repeat([]byte{7}, 32)},
		Meta: func() member.Meta {
			k := x.site.Keys()
			wd, wn := x.site.WakeDigest()
			return member.Meta{RaftAddr: x.site.Addr(), InSite: x.site.InSite(), EndpointKey: k.Endpoint, WakeKey: k.Wake,
				SocketDigest: x.sessions.digest(), WakeDigest: wd, WakeBindings: wn}
		},
		MetaInterval: 50 * time.Millisecond, MetaRefresh: 100 * time.Millisecond,
		Timing: member.Timing{
			ProbeInterval: 200 * time.Millisecond, ProbeTimeout: 100 * time.Millisecond, IndirectChecks: 2,
			SuspicionMult: 3, SuspicionMaxMult: 2, GossipInterval: 50 * time.Millisecond, GossipNodes: 3,
			GossipToTheDead: time.Second, PushPullInterval: time.Second, TCPTimeout: time.Second, DeadReclaim: time.Second,
		},
		RejoinInterval: 300 * time.Millisecond, Logger: log, Metrics: x.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	if ts.setup != nil {
		ts.setup(x)
	}
	ctx, cancel := context.WithCancel(context.Background())
	x.cancel = cancel
	x.wg.Go(func() { x.mem.Run(ctx) })
	x.wg.Go(func() {
		if err := x.site.Run(ctx); err != nil {
			t.Errorf("%s: site Run: %v", name, err)
		}
	})
	t.Cleanup(x.stop)
	return x
}

// startThree starts members a, b and c, b and c joining through a.
func (ts *testSite) startThree() (a, b, c *tm) {
	a = ts.start("a")
	return a, ts.start("b", a), ts.start("c", a)
}

// stop ends the member: its site, its gossip (without a leave when
// abrupt: as a SIGKILL would), its store.
func (x *tm) stop() {
	x.once.Do(func() {
		x.site.Close()
		x.cancel()
		x.mem.Close()
		x.wg.Wait()
		x.st.Close()
	})
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", d, what)
		}
	}
}

// waitFormed waits until every member of ms holds the site's log with
// them all as voters, and one of them leads.
func waitFormed(t *testing.T, ms []*tm) {
	t.Helper()
	waitUntil(t, 20*time.Second, fmt.Sprintf("a site of %d with a leader", len(ms)), func() bool {
		for _, x := range ms {
			if !x.site.InSite() || len(x.site.Status().Voters) != len(ms) {
				return false
			}
		}
		return leaderOf(ms) != nil
	})
}

func leaderOf(ms []*tm) *tm {
	for _, x := range ms {
		if x.site.Leader() {
			return x
		}
	}
	return nil
}

// post appends one message for u on ch through x's replicated store.
func post(t *testing.T, x *tm, u push.UAID, ch push.ChannelID, data string) store.AppendResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rs, err := x.site.Store().AppendBatch(ctx, []store.Message{{UAID: u, Channel: ch, TTL: time.Hour, Data: []byte(data)}})
	if err != nil {
		t.Fatalf("%s: post %s: %v", x.name, data, err)
	}
	if rs[0].Err != nil {
		t.Fatalf("%s: post %s refused: %v", x.name, data, rs[0].Err)
	}
	return rs[0]
}

// datas is what x's own store holds for u.
func datas(t *testing.T, x *tm, u push.UAID) []string {
	t.Helper()
	ms, err := x.st.Messages(u, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range ms {
		out = append(out, fmt.Sprintf("%d:%s", m.Seq, m.Data))
	}
	return out
}

// Three members form a site; a write on any is applied on all, in the
// same order with the same seqs; an ack on another deletes everywhere;
// the leader killed, the others elect one and go on; a fourth member that
// comes later is added as a voter by the leader and catches up.
func TestSite(t *testing.T) {
	ts := newTestSite(t, 3)
	a, b, c := ts.startThree()
	ms := []*tm{a, b, c}
	waitFormed(t, ms)

	ctx := context.Background()
	u, ch := push.UAID{0xaa, 1}, push.ChannelID{0xcc, 1}
	if err := b.site.Store().Register(ctx, store.Channel{UAID: u, ID: ch}); err != nil {
		t.Fatal(err)
	}
	post(t, b, u, ch, "one")
	post(t, c, u, ch, "two")
	r := post(t, a, u, ch, "three")
	want := datas(t, a, u) // a posted last: it applied all three
	if len(want) != 3 {
		t.Fatalf("a holds %v right after its post", want)
	}
	for _, x := range ms {
		waitUntil(t, 10*time.Second, x.name+" holds the three", func() bool { return slices.Equal(datas(t, x, u), want) })
	}
	if n, err := c.site.Store().Ack(ctx, u, r.Message.Seq); err != nil || n != 1 {
		t.Fatalf("ack on c: %d, %v", n, err)
	}
	for _, x := range ms {
		waitUntil(t, 10*time.Second, x.name+" deleted the acked message", func() bool { return len(datas(t, x, u)) == 2 })
	}

	// The leader goes; the others elect one and go on.
	old := leaderOf(ms)
	old.stop()
	var rest []*tm
	for _, x := range ms {
		if x != old {
			rest = append(rest, x)
		}
	}
	start := time.Now()
	waitUntil(t, 20*time.Second, "a new leader", func() bool { l := leaderOf(rest); return l != nil && l != old })
	t.Logf("new leader %s after %s", leaderOf(rest).name, time.Since(start).Round(time.Millisecond))
	post(t, rest[0], u, ch, "four")
	post(t, rest[1], u, ch, "five")
	// The last to post has applied both.
	want = datas(t, rest[1], u)
	if len(want) != 4 {
		t.Fatalf("%s holds %v", rest[1].name, want)
	}
	waitUntil(t, 10*time.Second, "both survivors hold the same", func() bool { return slices.Equal(datas(t, rest[0], u), want) })

	// A fourth member is added by the leader and catches up.
	d := ts.start("d", rest[0])
	waitUntil(t, 30*time.Second, "d added as a voter and caught up", func() bool {
		return d.site.InSite() && len(leaderOf(rest).site.Status().Voters) == 4 && slices.Equal(datas(t, d, u), want)
	})
	post(t, d, u, ch, "six")
	waitUntil(t, 10*time.Second, "d's post on the others", func() bool { return len(datas(t, rest[0], u)) == len(want)+1 })
}

// A member tells the site its log's address before its node is up, when
// its configuration names one: the members that form a site need each
// other's addresses from the start (with the address only once the node
// is up, it reached the others at the membership's next refresh, 10 s
// later with the binary's defaults, and a leader lost meanwhile left
// followers that could not reach each other to elect another).
func TestAddrBeforeRun(t *testing.T) {
	st, err := store.Open(store.Options{Path: filepath.Join(t.TempDir(), "pushrelay.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, c := range []struct{ listen, advertise, want string }{
		{"10.0.0.1:7947", "", "10.0.0.1:7947"},
		{"gw-1.lan:7947", "", "gw-1.lan:7947"},
		{"0.0.0.0:7947", "10.0.0.1:7947", "10.0.0.1:7947"},
		{"0.0.0.0:7947", "", ""},
		{"[::]:7947", "", ""},
		{"127.0.0.1:0", "", ""},
		{":7947", "", ""},
	} {
		s, err := New(Config{Name: "m1", Store: st, Dir: t.TempDir(), Listen: c.listen, Advertise: c.advertise,
			ServerTLS: &tls.Config{}, ClientTLS: &tls.Config{}, Members: func() []member.Info { return nil }})
		if err != nil {
			t.Fatal(err)
		}
		if got := s.Addr(); got != c.want {
			t.Errorf("listen %q advertise %q: Addr() = %q before Run, want %q", c.listen, c.advertise, got, c.want)
		}
	}
}

// A UAID this member does not hold yet may be one the site registered
// and it has not applied (it was out): Device asks the site before it
// says "unknown" (to a hello: a new UAID, the device's registrations
// lost to it), and fails without a quorum to ask.
func TestDeviceWaitsForTheSite(t *testing.T) {
	ts := newTestSite(t, 3)
	a, b, c := ts.startThree()
	ms := []*tm{a, b, c}
	waitFormed(t, ms)
	l := leaderOf(ms)
	var f *tm
	for _, x := range ms {
		if x != l {
			f = x
		}
	}
	f.site.node.Load().SetDropFilter(func(uint64) bool { return true })
	u, ch := push.UAID{0xaa, 2}, push.ChannelID{0xcc, 2}
	if err := l.site.Store().Register(context.Background(), store.Channel{UAID: u, ID: ch}); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := f.site.Store().Device(u); ok || !errors.Is(err, relay.ErrNoQuorum) {
		t.Fatalf("Device on a member cut off from the site: %v, %v; want an error wrapping ErrNoQuorum", ok, err)
	}
	f.site.node.Load().SetDropFilter(nil)
	if _, ok, err := f.site.Store().Device(u); !ok || err != nil {
		t.Fatalf("Device right after the heal: %v, %v; want the device the site registered", ok, err)
	}
	if _, ok, err := f.site.Store().Device(push.UAID{0xaa, 3}); ok || err != nil {
		t.Fatalf("Device of a UAID the site never had: %v, %v; want unknown", ok, err)
	}
}
