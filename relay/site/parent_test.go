package site

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
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

var _ link.ParentStore = (*Store)(nil)
var _ LinkParent = (*link.Parent)(nil)

// siteCreds issues name a link certificate from ts's CA.
func siteCreds(t *testing.T, ts *testSite, name string) *linkauth.Credentials {
	ca := filepath.Join(ts.dir, "ca")
	out := filepath.Join(ts.dir, "issued-"+name)
	if _, err := linkauth.Issue(ca, name, out, false); err != nil {
		t.Fatal(err)
	}
	creds, err := linkauth.Load(filepath.Join(out, name+".crt"), filepath.Join(out, name+".key"), filepath.Join(ca, linkauth.CACertFile), nil, "")
	if err != nil {
		t.Fatal(err)
	}
	return creds
}

// withLinkParent makes every member of ts a relay link parent (as
// relay_listen does in a site): a link.Parent on 127.0.0.1 writing
// through the member's site store, and a hub whose commits it hears.
func withLinkParent(t *testing.T, ts *testSite) {
	creds := siteCreds(t, ts, "core")
	tokens, err := token.New(bytes.Repeat([]byte{5}, token.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	minter, err := endpoint.NewMinter(tokens, "https://core.example.net")
	if err != nil {
		t.Fatal(err)
	}
	ts.setup = func(x *tm) {
		log := quietLogger(t, x.name)
		var err error
		x.lp, err = link.NewParent(link.ParentConfig{Listen: "127.0.0.1:0", Name: "core", Credentials: creds, Store: x.site.Store(),
			SiteMember: true, HolderAddr: x.site.HolderLinkAddr, Endpoints: minter, Logger: log.With("c", "parent"), Metrics: x.reg})
		if err != nil {
			t.Fatal(err)
		}
		x.site.LinkParent(x.lp)
		x.hub, err = relay.New(relay.Config{Store: x.site.Store(), Tokens: tokens, Endpoints: minter, Stored: x.lp.Stored,
			Forgot: x.lp.Forgot, ServedElsewhere: x.lp.Serves, Logger: log, Metrics: x.reg})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { x.hub.Run(ctx) })
		wg.Go(func() { x.lp.Run(ctx) })
		t.Cleanup(func() { cancel(); wg.Wait() })
	}
}

// testChild is a standalone child relay of the site: its own store and
// hub, and a link.Child with every member's link address.
type testChild struct {
	st    *store.Store
	hub   *relay.Hub
	child *link.Child

	mu      sync.Mutex
	origins []push.Origin // of every message the link ingested
}

// Ingest is the child's hub as the link's Ingester, keeping the origins.
func (tc *testChild) Ingest(ctx context.Context, ms []push.Message) ([]relay.Result, error) {
	tc.mu.Lock()
	for _, m := range ms {
		tc.origins = append(tc.origins, m.Origin)
	}
	tc.mu.Unlock()
	return tc.hub.Ingest(ctx, ms)
}

func newTestChild(t *testing.T, ts *testSite, ms []*tm) *testChild {
	var addrs []string
	for _, x := range ms {
		addrs = append(addrs, x.lp.Addr().String())
	}
	tc := &testChild{}
	var err error
	tc.st, err = store.Open(store.Options{Path: filepath.Join(ts.dir, "edge.db"), MaxMessagesPerUAID: 100000})
	if err != nil {
		t.Fatal(err)
	}
	tc.child, err = link.NewChild(link.ChildConfig{Addr: strings.Join(addrs, ","), Name: "edge-1", Credentials: siteCreds(t, ts, "edge-1"),
		Store: tc.st, BackoffMin: 50 * time.Millisecond, BackoffMax: 200 * time.Millisecond, RequestTimeout: 2 * time.Second,
		Logger: quietLogger(t, "edge").With("c", "link"), Metrics: metrics.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := token.New(bytes.Repeat([]byte{9}, token.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	tc.hub, err = relay.New(relay.Config{Store: tc.st, Tokens: tokens, Endpoints: tc.child})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { tc.hub.Run(ctx) })
	wg.Go(func() { tc.child.Run(ctx, tc) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		tc.hub.Close()
		tc.st.Close()
	})
	return tc
}

// register registers a new device's channel at the child, as its hub
// does: Mint over the link, then the channel stored with the endpoint.
func (tc *testChild) register(t *testing.T, u push.UAID, ch push.ChannelID) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ep, err := tc.child.Mint(ctx, relay.Registration{UAID: u, Channel: ch})
	if err != nil {
		t.Fatal(err)
	}
	if err := tc.st.Register(ctx, store.Channel{UAID: u, ID: ch, Endpoint: ep}); err != nil {
		t.Fatal(err)
	}
}

// A site of three as the parent of a child relay (relay_listen on every
// member): the member that holds takes the child, the others refuse it
// (it tries the next address); its devices' registers are claimed
// through the log, so every member knows the child serves them. Messages
// are posted at every member under a steady load and the holder is
// stopped: the next holder announces itself to the child (the restart
// hint), which moves there at once; every message a member acknowledged
// reaches the child's store once, every surviving member's store drains
// (the acks went through the log), and an unregister at the child
// reaches every member.
func TestSiteLinkParentFailover(t *testing.T) {
	ts := newTestSite(t, 3)
	withLinkParent(t, ts)
	a, b, c := ts.startThree()
	ms := []*tm{a, b, c}
	waitUntil(t, 20*time.Second, "a member holds", func() bool { return holderOf(ms) != nil })
	tc := newTestChild(t, ts, ms)
	waitUntil(t, 10*time.Second, "the child connected", func() bool { return tc.child.Status().Connected })
	h := holderOf(ms)
	if got, want := tc.child.Addr(), h.lp.Addr().String(); got != want {
		t.Fatalf("the child is connected to %s, not the holder %s's %s", got, h.name, want)
	}
	var us []push.UAID
	var chs []push.ChannelID
	for i := range 3 {
		u, ch := push.UAID{0xe0, byte(i)}, push.ChannelID{0xe1, byte(i)}
		tc.register(t, u, ch)
		us, chs = append(us, u), append(chs, ch)
	}
	for _, x := range ms {
		waitUntil(t, 5*time.Second, x.name+" knows the child serves the devices", func() bool {
			for _, u := range us {
				if !x.lp.Serves(u) {
					return false
				}
			}
			return true
		})
	}

	// Posts at every member, round robin, one every 3 ms.
	var mu sync.Mutex
	acked := map[string]bool{}
	stop, done := make(chan struct{}), make(chan struct{})
	dead := make(chan *tm, 1)
	go func() {
		defer close(done)
		var out *tm
		for i := range 3000 {
			select {
			case <-stop:
				return
			case out = <-dead:
			case <-time.After(3 * time.Millisecond):
			}
			x := ms[i%3]
			if x == out {
				continue
			}
			text := fmt.Sprintf("p%05d", i)
			k := i % len(us)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			res, err := x.hub.Ingest(ctx, []push.Message{{UAID: us[k], Channel: chs[k], TTL: time.Hour, Data: []byte(text),
				Origin: push.Origin{Kind: push.OriginLocal, ID: text}}})
			cancel()
			if err == nil && res[0].Err == nil {
				mu.Lock()
				acked[text] = true
				mu.Unlock()
			}
		}
	}()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	waitUntil(t, 10*time.Second, "posts acknowledged", func() bool { return count() >= 50 })
	dead <- h
	killed := time.Now()
	h.stop()
	var rest []*tm
	for _, x := range ms {
		if x != h {
			rest = append(rest, x)
		}
	}
	waitUntil(t, 15*time.Second, "another member holds", func() bool { return holderOf(rest) != nil })
	held := time.Since(killed)
	n := holderOf(rest)
	waitUntil(t, 15*time.Second, "the child connected to the new holder", func() bool {
		st := tc.child.Status()
		return st.Connected && st.Addr == n.lp.Addr().String()
	})
	moved := time.Since(killed)
	k := count()
	waitUntil(t, 10*time.Second, "posts acknowledged after the failover", func() bool { return count() >= k+50 })
	close(stop)
	<-done
	t.Logf("holder %s stopped: %s holds after %s, the child connected to it after %s; %d messages acknowledged",
		h.name, n.name, held.Round(time.Millisecond), moved.Round(time.Millisecond), len(acked))

	storedOnce(t, "the child", tc.st, us, acked, "acknowledged")
	// Every message's origin id names the site's link epoch, the same
	// on every member (not the epoch of the store of the member that
	// sent it): a message the next holder sends again keeps its id.
	epoch, ok, err := rest[0].st.LinkEpoch()
	if err != nil || !ok {
		t.Fatalf("no link epoch: %v", err)
	}
	for _, x := range rest[1:] {
		if e, _, _ := x.st.LinkEpoch(); !bytes.Equal(e, epoch) {
			t.Errorf("%s's link epoch %x, %s's %x", x.name, e, rest[0].name, epoch)
		}
	}
	tc.mu.Lock()
	for _, o := range tc.origins {
		if o.Kind != push.OriginParent || !bytes.HasPrefix([]byte(o.ID), epoch) {
			t.Fatalf("origin %v does not name the site's link epoch %x", o, epoch)
		}
	}
	t.Logf("%d messages came down the link", len(tc.origins))
	tc.mu.Unlock()
	for _, x := range rest {
		waitUntil(t, 10*time.Second, x.name+" holds nothing the child has", func() bool {
			for _, u := range us {
				ms, err := x.st.Messages(u, 0, 0)
				if err != nil || len(ms) != 0 {
					return false
				}
			}
			return true
		})
	}

	// An unregister at the child reaches every member.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tc.child.Unregister(ctx, us[0], chs[0]); err != nil {
		t.Fatal(err)
	}
	for _, x := range rest {
		waitUntil(t, 10*time.Second, x.name+" removed the unregistered channel", func() bool {
			_, ok, err := x.st.Channel(us[0], chs[0])
			return err == nil && !ok
		})
	}
}
