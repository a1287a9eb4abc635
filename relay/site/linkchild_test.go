package site

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/endpoint"
	"github.com/pushrelay/pushrelay/relay/link"
	"github.com/pushrelay/pushrelay/relay/linkauth"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/token"
)

var _ link.ChildStore = (*Store)(nil)

// childHolding runs a relay link to the parent into a member's hub, as
// the node does.
type childHolding struct {
	*link.Child
	hub *relay.Hub
}

func (h childHolding) Run(ctx context.Context) error { return h.Child.Run(ctx, h.hub) }

// testParent is a standalone parent relay in this process: its own store
// and hub, a link.Parent on 127.0.0.1 with a certificate from the site's
// CA.
type testParent struct {
	st     *store.Store
	hub    *relay.Hub
	parent *link.Parent
}

// siteChildName is the one name every member presents on the link.
const siteChildName = "site-a"

// newTestParent starts a parent trusting ts's CA.
func newTestParent(t *testing.T, ts *testSite) *testParent {
	ca := filepath.Join(ts.dir, "ca")
	out := filepath.Join(ts.dir, "core")
	if _, err := linkauth.Issue(ca, "core", out, false); err != nil {
		t.Fatal(err)
	}
	creds, err := linkauth.Load(filepath.Join(out, "core.crt"), filepath.Join(out, "core.key"), filepath.Join(ca, linkauth.CACertFile), nil, "")
	if err != nil {
		t.Fatal(err)
	}
	tp := &testParent{}
	tp.st, err = store.Open(store.Options{Path: filepath.Join(out, "core.db"), MaxMessagesPerUAID: 100000})
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := token.New(bytes.Repeat([]byte{5}, token.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	minter, err := endpoint.NewMinter(tokens, "https://core.example.net")
	if err != nil {
		t.Fatal(err)
	}
	tp.parent, err = link.NewParent(link.ParentConfig{Listen: "127.0.0.1:0", Name: "core", Credentials: creds,
		Store: tp.st, Endpoints: minter, Metrics: metrics.NewRegistry(), Logger: quietLogger(t, "core")})
	if err != nil {
		t.Fatal(err)
	}
	tp.hub, err = relay.New(relay.Config{Store: tp.st, Tokens: tokens, Endpoints: minter, Stored: tp.parent.Stored})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { tp.parent.Run(ctx) })
	wg.Go(func() { tp.hub.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		tp.hub.Close()
		tp.st.Close()
	})
	return tp
}

// child is the site as the parent sees it.
func (tp *testParent) child() link.ChildInfo {
	for _, c := range tp.parent.Children() {
		if c.Name == siteChildName {
			return c
		}
	}
	return link.ChildInfo{}
}

// withLinkUpstream gives every member of ts the relay link to tp as its
// upstream: one certificate naming siteChildName, shared by the members,
// and a hub writing through the member's site store.
// Members named in odd get a certificate of their own, naming
// siteChildName too (another key): another identity.
func withLinkUpstream(t *testing.T, ts *testSite, tp *testParent, odd ...string) {
	ca := filepath.Join(ts.dir, "ca")
	issue := func(dir string) *linkauth.Credentials {
		out := filepath.Join(ts.dir, dir)
		if _, err := linkauth.Issue(ca, siteChildName, out, false); err != nil {
			t.Fatal(err)
		}
		creds, err := linkauth.Load(filepath.Join(out, siteChildName+".crt"), filepath.Join(out, siteChildName+".key"),
			filepath.Join(ca, linkauth.CACertFile), nil, "")
		if err != nil {
			t.Fatal(err)
		}
		return creds
	}
	shared := issue(siteChildName)
	tokens, err := token.New(bytes.Repeat([]byte{3}, token.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	addr := tp.parent.Addr().String()
	ts.setup = func(x *tm) {
		log := quietLogger(t, x.name)
		m := link.NewChildMetrics(x.reg)
		creds := shared
		if slices.Contains(odd, x.name) {
			creds = issue("odd-" + x.name)
		}
		x.up = x.site.UpstreamLink(func() (Holding, error) {
			c, err := link.NewChild(link.ChildConfig{Addr: addr, Name: siteChildName, Credentials: creds, Store: x.site.Store(),
				RequestTimeout: 2 * time.Second, BackoffMin: 50 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
				Logger: log.With("c", "link"), Shared: m})
			if err != nil {
				return nil, err
			}
			return childHolding{c, x.hub}, nil
		}, 2*time.Second, LinkIdentity{Name: siteChildName, Print: link.IdentityPrint(siteChildName, creds)})
		x.hub, err = relay.New(relay.Config{Store: x.site.Store(), Tokens: tokens, Endpoints: x.up, Logger: log, Metrics: x.reg})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); x.hub.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
}

// linkSite is a site of three as one child of a parent, a device
// registered at each member.
type linkSite struct {
	tp  *testParent
	ms  []*tm
	us  []push.UAID
	chs []push.ChannelID
}

func newLinkSite(t *testing.T) *linkSite {
	ts := newTestSite(t, 3)
	tp := newTestParent(t, ts)
	withLinkUpstream(t, ts, tp)
	a, b, c := ts.startThree()
	s := &linkSite{tp: tp, ms: []*tm{a, b, c}}
	waitUntil(t, 20*time.Second, "a member holds the link", func() bool { return holderOf(s.ms) != nil })
	waitUntil(t, 10*time.Second, "the parent sees the site connected", func() bool { return tp.child().Connected })
	for i, x := range s.ms {
		// Two of them at a member that does not hold the link: asked
		// of the holder through the log.
		u, ch := push.UAID{0xd0, byte(i)}, push.ChannelID{0xc0, byte(i)}
		ep := register(t, x, u, ch)
		if !bytes.Contains([]byte(ep), []byte("core.example.net")) {
			t.Fatalf("%s: endpoint %q is not the parent's", x.name, ep)
		}
		s.us, s.chs = append(s.us, u), append(s.chs, ch)
	}
	waitUntil(t, 5*time.Second, "the parent serves the three devices through the site", func() bool { return tp.child().UAIDs == 3 })
	return s
}

// parentPoster stores messages at the parent for the site's devices, as
// its endpoint does, one batch every gap, and keeps those it committed
// (acknowledged to the app server).
type parentPoster struct {
	mu    sync.Mutex
	acked map[string]bool
	stop  chan struct{}
	done  chan struct{}
}

func startParentPosts(tp *testParent, us []push.UAID, chs []push.ChannelID, max int, gap time.Duration) *parentPoster {
	p := &parentPoster{acked: map[string]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for i := range max {
			select {
			case <-p.stop:
				return
			case <-time.After(gap):
			}
			text := fmt.Sprintf("m%05d", i)
			k := i % len(us)
			res, err := tp.hub.Ingest(context.Background(), []push.Message{{UAID: us[k], Channel: chs[k], TTL: time.Hour,
				Data: []byte(text), Origin: push.Origin{Kind: push.OriginLocal, ID: text}}})
			if err == nil && res[0].Err == nil {
				p.mu.Lock()
				p.acked[text] = true
				p.mu.Unlock()
			}
		}
	}()
	return p
}

func (p *parentPoster) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.acked)
}

func (p *parentPoster) finish() map[string]bool {
	close(p.stop)
	<-p.done
	return p.acked
}

// checkStored waits until every payload in acked is in each of ms's
// stores and the parent holds none unacked, and fails the test for any
// stored twice.
func (s *linkSite) checkStored(t *testing.T, acked map[string]bool, ms ...*tm) {
	t.Helper()
	for _, x := range ms {
		storedOnce(t, x.name, x.st, s.us, acked, "the parent acknowledged")
	}
	waitUntil(t, 10*time.Second, "the parent holds nothing unacked", func() bool {
		st, err := s.tp.st.Stats()
		return err == nil && st.Waiting == 0
	})
}

// A site of three as a child of a parent relay (a quic:// upstream): the
// leader holds the relay link, devices register at any member (a
// non-holder asks the holder through the log), and the parent's
// messages reach every member's store. The holder is stopped under a
// steady load of posts at the parent: another member holds the link and
// the parent sees the same child connected again within seconds; every
// message the parent acknowledged reaches every surviving member once,
// and the parent's store is drained (the new holder acked them all).
func TestSiteLinkHolderFailover(t *testing.T) {
	s := newLinkSite(t)
	h := holderOf(s.ms)
	p := startParentPosts(s.tp, s.us, s.chs, 3000, 3*time.Millisecond)
	waitUntil(t, 10*time.Second, "posts acknowledged", func() bool { return p.count() >= 50 })
	killed := time.Now()
	h.stop()
	var rest []*tm
	for _, x := range s.ms {
		if x != h {
			rest = append(rest, x)
		}
	}
	waitUntil(t, 15*time.Second, "another member holds the link", func() bool { return holderOf(rest) != nil })
	held := time.Since(killed)
	waitUntil(t, 15*time.Second, "the parent sees the site connected again", func() bool { return s.tp.child().Connected })
	reopened := time.Since(killed)
	n := p.count()
	waitUntil(t, 10*time.Second, "posts acknowledged after the failover", func() bool { return p.count() >= n+50 })
	acked := p.finish()
	t.Logf("holder %s stopped: %s holds after %s, the link re-opened after %s; %d messages acknowledged at the parent",
		h.name, holderOf(rest).name, held.Round(time.Millisecond), reopened.Round(time.Millisecond), len(acked))
	if cs := s.tp.parent.Children(); len(cs) != 1 {
		t.Errorf("the parent knows %d children, want the site as one: %+v", len(cs), cs)
	}
	s.checkStored(t, acked, rest...)

	// A new device registers at the member that does not hold the link:
	// the new holder registers it at the parent.
	var other *tm
	for _, x := range rest {
		if !x.site.Holding() {
			other = x
		}
	}
	u, ch := push.UAID{0xd9}, push.ChannelID{0xc9}
	register(t, other, u, ch)
	res, err := s.tp.hub.Ingest(context.Background(), []push.Message{{UAID: u, Channel: ch, TTL: time.Hour, Data: []byte("after"),
		Origin: push.Origin{Kind: push.OriginLocal, ID: "after"}}})
	if err != nil || res[0].Err != nil {
		t.Fatalf("post at the parent for the new device: %v %v", err, res)
	}
	waitUntil(t, 10*time.Second, "the new device's message stored on the non-holder", func() bool {
		return delivered(t, other, []push.UAID{u})["after"] == 1
	})
}

// A device's unregister at a member that does not hold the link goes
// into the replicated outbox; the holder's link sends it to the parent,
// which removes the channel, and every member's outbox empties.
func TestSiteLinkUnregisterAnywhere(t *testing.T) {
	s := newLinkSite(t)
	h := holderOf(s.ms)
	var other *tm
	var i int
	for j, x := range s.ms {
		if x != h {
			other, i = x, j
			break
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u, ch := s.us[i], s.chs[i]
	if _, ok, err := s.tp.st.Channel(u, ch); err != nil || !ok {
		t.Fatalf("the parent does not hold the channel before the unregister: %v %v", ok, err)
	}
	if err := other.up.Unregister(ctx, u, ch); err != nil {
		t.Fatal(err)
	}
	for _, x := range s.ms {
		waitUntil(t, 5*time.Second, x.name+" removed the channel", func() bool {
			_, ok, err := x.st.Channel(u, ch)
			return err == nil && !ok
		})
	}
	waitUntil(t, 10*time.Second, "the parent removed the channel", func() bool {
		_, ok, err := s.tp.st.Channel(u, ch)
		return err == nil && !ok
	})
	for _, x := range s.ms {
		waitUntil(t, 10*time.Second, x.name+"'s outbox empty", func() bool {
			ps, err := x.st.PendingUnregisters(0, 0)
			return err == nil && len(ps) == 0
		})
	}
}

// A member whose link certificate is another's (the same name, another
// key) is refused the link: it says why (LinkRefused, /readyz), the
// others name it in their logs, and it never holds the link, even when
// it leads: the parent only ever sees the site's identity. The refused
// member is made the leader (the others stopped, then restarted) to
// check that it does not hold.
func TestSiteLinkIdentityRefused(t *testing.T) {
	ts := newTestSite(t, 3)
	tp := newTestParent(t, ts)
	withLinkUpstream(t, ts, tp, "c")
	a, b, c := ts.startThree()
	ms := []*tm{a, b, c}
	waitUntil(t, 20*time.Second, "c is refused", func() bool { return c.site.LinkRefused() != "" })
	why := c.site.LinkRefused()
	if !strings.Contains(why, "differs from the site's") || !strings.Contains(why, "a, b") {
		t.Errorf("c's refusal: %q", why)
	}
	t.Logf("c: %s", why)
	// c comes to lead: the leader is cut off (its consensus transport
	// drops everything) until the other two elect c, at most 8 times.
	for round := 0; !c.site.Leader(); round++ {
		if round == 8 {
			t.Skip("c never came to lead in 8 elections")
		}
		var l *tm
		waitUntil(t, 10*time.Second, "a leader", func() bool { l = leaderOf(ms); return l != nil })
		if l == c {
			break
		}
		l.site.node.Load().SetDropFilter(func(uint64) bool { return true })
		waitUntil(t, 10*time.Second, "another leader", func() bool { n := leaderOf(ms); return n != nil && n != l && !l.site.Leader() })
		l.site.node.Load().SetDropFilter(nil)
	}
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if c.site.Holding() {
			t.Fatal("c holds the link with another identity")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Another member leads again: it holds the link, with the site's
	// identity.
	c.site.node.Load().SetDropFilter(func(uint64) bool { return true })
	waitUntil(t, 20*time.Second, "a or b holds the link", func() bool { h := holderOf(ms); return h != nil && h != c })
	c.site.node.Load().SetDropFilter(nil)
	waitUntil(t, 10*time.Second, "the parent sees the site connected", func() bool { return tp.child().Connected })
	if cs := tp.parent.Children(); len(cs) != 1 {
		t.Errorf("the parent knows %d children: %+v", len(cs), cs)
	}
	if n := tp.parent.Children()[0]; n.Name != siteChildName {
		t.Errorf("the parent's child: %+v", n)
	}
	waitUntil(t, 5*time.Second, "a and b not refused", func() bool { return a.site.LinkRefused() == "" && b.site.LinkRefused() == "" })
}
