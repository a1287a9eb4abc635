package site

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/token"
	"github.com/pushrelay/pushrelay/relay/upstream"
	"github.com/pushrelay/pushrelay/relay/upstream/autopushtest"
)

var _ upstream.Store = (*Store)(nil)

// linkHolding runs a relay/upstream Link into a member's hub, as the node
// does.
type linkHolding struct {
	*upstream.Link
	hub *relay.Hub
}

func (h linkHolding) Run(ctx context.Context) error { return h.Link.Run(ctx, h.hub) }

// withUpstream gives every member of ts the upstream up: a hub writing
// through the member's site store, and the site's upstream, whose
// holdings are links to up.
func withUpstream(t *testing.T, ts *testSite, up *autopushtest.Server) {
	key := bytes.Repeat([]byte{3}, token.KeySize)
	tokens, err := token.New(key)
	if err != nil {
		t.Fatal(err)
	}
	ts.setup = func(x *tm) {
		shared := upstream.NewMetrics(x.reg)
		log := quietLogger(t, x.name)
		x.up = x.site.Upstream(func() (Holding, error) {
			l, err := upstream.New(upstream.Config{URL: up.URL(), Store: x.site.Store(), BackoffMin: 50 * time.Millisecond,
				BackoffMax: 200 * time.Millisecond, RequestTimeout: 2 * time.Second, Logger: log.With("c", "upstream"), Shared: shared})
			if err != nil {
				return nil, err
			}
			return linkHolding{l, x.hub}, nil
		}, 2*time.Second)
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

// holderOf is the member that runs the upstream now, if one does.
func holderOf(ms []*tm) *tm {
	for _, x := range ms {
		if x.site.Holding() {
			return x
		}
	}
	return nil
}

// register registers a channel of device u at member x as the hub does:
// its endpoint from the site's upstream, then the channel through the log.
func register(t *testing.T, x *tm, u push.UAID, ch push.ChannelID) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ep, err := x.up.Mint(ctx, relay.Registration{UAID: u, Channel: ch})
	if err != nil {
		t.Fatalf("%s: register: %v", x.name, err)
	}
	if err := x.site.Store().Register(ctx, store.Channel{UAID: u, ID: ch, Endpoint: ep}); err != nil {
		t.Fatalf("%s: store channel: %v", x.name, err)
	}
	return ep
}

// upPoster posts unique payloads to upstream endpoints, one every gap, and
// keeps those answered 201.
type upPoster struct {
	mu      sync.Mutex
	created map[string]bool
	failed  int
	stop    chan struct{}
	done    chan struct{}
}

func startPosting(eps []string, max int, gap time.Duration) *upPoster {
	p := &upPoster{created: map[string]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	c := &http.Client{Timeout: 3 * time.Second}
	go func() {
		defer close(p.done)
		for i := range max {
			select {
			case <-p.stop:
				return
			case <-time.After(gap):
			}
			text := fmt.Sprintf("m%05d", i)
			req, _ := http.NewRequest("POST", eps[i%len(eps)], strings.NewReader(text))
			req.Header.Set("TTL", "600")
			req.Header.Set("Content-Encoding", "aes128gcm")
			resp, err := c.Do(req)
			p.mu.Lock()
			if err == nil && resp.StatusCode == 201 {
				p.created[text] = true
			} else {
				p.failed++
			}
			p.mu.Unlock()
			if err == nil {
				resp.Body.Close()
			}
		}
	}()
	return p
}

func (p *upPoster) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.created)
}

func (p *upPoster) finish() map[string]bool {
	close(p.stop)
	<-p.done
	return p.created
}

// delivered counts each payload in x's own store for the devices us:
// what the member's devices are sent.
func delivered(t *testing.T, x *tm, us []push.UAID) map[string]int {
	t.Helper()
	return storedIn(t, x.st, us)
}

// storedIn counts each payload in st for the devices us.
func storedIn(t *testing.T, st *store.Store, us []push.UAID) map[string]int {
	t.Helper()
	got := map[string]int{}
	for _, u := range us {
		ms, err := st.Messages(u, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			got[string(m.Data)]++
		}
	}
	return got
}

// A site of three with an upstream: the leader comes to hold the
// upstream sessions; devices register at any member (a non-holder asks
// the holder through the log) and the holder's sessions bring their
// messages into every member's store. The holder is killed under a
// steady load of upstream posts: another member holds the sessions
// within seconds, re-opens them from the replicated identities, and
// every message the upstream answered 201 for reaches every surviving
// member's store once, none twice.
// upSite is a site of three with an upstream and a device registered at
// each member.
type upSite struct {
	up  *autopushtest.Server
	ms  []*tm
	us  []push.UAID // the devices
	ups []string    // their upstream UAIDs
	eps []string    // their channels' upstream endpoints
}

func newUpSite(t *testing.T) *upSite {
	up, err := autopushtest.New(autopushtest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	ts := newTestSite(t, 3)
	withUpstream(t, ts, up)
	a, b, c := ts.startThree()
	s := &upSite{up: up, ms: []*tm{a, b, c}}
	waitUntil(t, 20*time.Second, "a member holds the upstream", func() bool { return holderOf(s.ms) != nil })
	h := holderOf(s.ms)
	if !h.site.Leader() {
		t.Fatalf("%s holds the upstream but does not lead", h.name)
	}
	hid, _ := h.site.Holder()
	for _, x := range s.ms {
		waitUntil(t, 5*time.Second, x.name+" applied the holder entry", func() bool { id, _ := x.site.Holder(); return id == hid })
	}
	// A device on each member registers there: two of them at a member
	// that does not hold the upstream.
	for i, x := range s.ms {
		u, ch := push.UAID{0xd0, byte(i)}, push.ChannelID{0xc0, byte(i)}
		ep := register(t, x, u, ch)
		if !strings.Contains(ep, "/push/") {
			t.Fatalf("%s: endpoint %q is not the upstream's", x.name, ep)
		}
		s.us, s.eps = append(s.us, u), append(s.eps, ep)
	}
	for i, u := range s.us {
		// Every member holds each identity (replicated), not only the
		// holder that made it.
		for _, x := range s.ms {
			var id store.UpstreamID
			waitUntil(t, 5*time.Second, fmt.Sprintf("device %d's upstream identity on %s", i, x.name), func() bool {
				var ok bool
				var err error
				id, ok, err = x.st.UpstreamID(u)
				return err == nil && ok
			})
			if x == c {
				s.ups = append(s.ups, id.Upstream.String())
			}
		}
	}
	waitUntil(t, 10*time.Second, "the holder's sessions open", s.allOpen)
	return s
}

func (s *upSite) allOpen() bool {
	for _, u := range s.ups {
		if !s.up.Open(u) {
			return false
		}
	}
	return true
}

// storedOnce waits (bounded) until every payload in want is in st (the
// store of name) for the devices us, what saying which messages those
// are, fails the test for any stored twice and logs the counts.
func storedOnce(t *testing.T, name string, st *store.Store, us []push.UAID, want map[string]bool, what string) {
	t.Helper()
	var got map[string]int
	waitUntil(t, 20*time.Second, name+" stored every message "+what, func() bool {
		got = storedIn(t, st, us)
		for text := range want {
			if got[text] == 0 {
				return false
			}
		}
		return true
	})
	dups := 0
	for text, k := range got {
		if k > 1 {
			dups += k - 1
			t.Errorf("%s: %q stored %d times", name, text, k)
		}
	}
	t.Logf("%s: %d distinct messages stored, %d duplicates", name, len(got), dups)
}

// checkStored waits until every payload in created is in each of ms's
// stores and fails the test for any stored twice.
func (s *upSite) checkStored(t *testing.T, created map[string]bool, ms ...*tm) {
	t.Helper()
	for _, x := range ms {
		storedOnce(t, x.name, x.st, s.us, created, "answered 201")
	}
	for i, u := range s.ups {
		waitUntil(t, 10*time.Second, fmt.Sprintf("the upstream holds nothing unacked for device %d", i), func() bool { return s.up.Pending(u) == 0 })
	}
}

// A site of three with an upstream: the leader comes to hold the
// upstream sessions; devices register at any member (a non-holder asks
// the holder through the log) and the holder's sessions bring their
// messages into every member's store. The holder is killed under a
// steady load of upstream posts: another member holds the sessions
// within seconds, re-opens them from the replicated identities, and
// every message the upstream answered 201 for reaches every surviving
// member's store once, none twice.
func TestSiteUpstreamHolderFailover(t *testing.T) {
	s := newUpSite(t)
	ms, eps := s.ms, s.eps
	allOpen := s.allOpen
	h := holderOf(ms)
	p := startPosting(eps, 3000, 3*time.Millisecond)
	waitUntil(t, 10*time.Second, "posts answered", func() bool { return p.count() >= 50 })
	killed := time.Now()
	h.stop()
	var rest []*tm
	for _, x := range ms {
		if x != h {
			rest = append(rest, x)
		}
	}
	waitUntil(t, 15*time.Second, "another member holds the upstream", func() bool { return holderOf(rest) != nil })
	held := time.Since(killed)
	waitUntil(t, 15*time.Second, "the sessions re-opened", allOpen)
	reopened := time.Since(killed)
	n := p.count()
	waitUntil(t, 10*time.Second, "posts answered after the failover", func() bool { return p.count() >= n+50 })
	created := p.finish()
	t.Logf("holder %s killed: %s holds after %s, sessions re-opened after %s; %d posts answered 201, %d not",
		h.name, holderOf(rest).name, held.Round(time.Millisecond), reopened.Round(time.Millisecond), len(created), p.failed)

	// Every message the upstream took reaches every surviving member's
	// store, once; the upstream holds none unacked.
	s.checkStored(t, created, rest...)

	// A new device registers at the member that does not hold: the
	// new holder answers through the log.
	var other *tm
	for _, x := range rest {
		if !x.site.Holding() {
			other = x
		}
	}
	u, ch := push.UAID{0xd9}, push.ChannelID{0xc9}
	ep := register(t, other, u, ch)
	if !strings.Contains(ep, "/push/") {
		t.Fatalf("register at a non-holder after the failover: endpoint %q", ep)
	}
	text := "after"
	req, _ := http.NewRequest("POST", ep, strings.NewReader(text))
	req.Header.Set("TTL", "600")
	req.Header.Set("Content-Encoding", "aes128gcm")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 201 {
		t.Fatalf("post to the new device's endpoint: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	waitUntil(t, 10*time.Second, "the new device's message stored on the non-holder", func() bool {
		return delivered(t, other, []push.UAID{u})[text] == 1
	})
}

// The holder is cut off from the others (its consensus transport drops
// everything) under a steady load of upstream posts: it stops its
// upstream once it no longer leads (CheckQuorum: within an election
// timeout), another member holds it, and when the cut heals every
// message the upstream answered 201 for is in every member's store once.
// The time both ran the upstream is logged (negative: none).
func TestSiteUpstreamHolderCutOff(t *testing.T) {
	s := newUpSite(t)
	h := holderOf(s.ms)
	var rest []*tm
	for _, x := range s.ms {
		if x != h {
			rest = append(rest, x)
		}
	}
	p := startPosting(s.eps, 3000, 3*time.Millisecond)
	waitUntil(t, 10*time.Second, "posts answered", func() bool { return p.count() >= 50 })
	cut := time.Now()
	h.site.node.Load().SetDropFilter(func(uint64) bool { return true })
	var stopped, held time.Duration
	waitUntil(t, 10*time.Second, "the cut-off holder stops and another holds", func() bool {
		if stopped == 0 && !h.site.Holding() {
			stopped = time.Since(cut)
		}
		if held == 0 && holderOf(rest) != nil {
			held = time.Since(cut)
		}
		return stopped != 0 && held != 0
	})
	waitUntil(t, 15*time.Second, "the sessions re-opened", s.allOpen)
	n := p.count()
	waitUntil(t, 10*time.Second, "posts answered after the cut", func() bool { return p.count() >= n+50 })
	h.site.node.Load().SetDropFilter(nil)
	created := p.finish()
	t.Logf("holder %s cut off: it stopped its upstream after %s, %s held it after %s (both ran it for %s); %d posts answered 201, %d not",
		h.name, stopped.Round(time.Millisecond), holderOf(rest).name, held.Round(time.Millisecond), (stopped - held).Round(time.Millisecond), len(created), p.failed)
	if h.site.Holding() {
		t.Errorf("%s holds the upstream again after the heal", h.name)
	}
	s.checkStored(t, created, s.ms...)
}

// A device's unregister at a member that does not hold the upstream goes
// into the replicated outbox and the holder sends it upstream (its
// endpoint then answers 410); a register at such a member while the
// upstream is down gets the holder's error, within the bound.
func TestSiteUpstreamUnregisterAndRefusalAnywhere(t *testing.T) {
	s := newUpSite(t)
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
	u, ch := s.us[i], push.ChannelID{0xc0, byte(i)}
	if err := other.up.Unregister(ctx, u, ch); err != nil {
		t.Fatal(err)
	}
	for _, x := range s.ms {
		waitUntil(t, 5*time.Second, x.name+" removed the channel", func() bool {
			_, ok, err := x.st.Channel(u, ch)
			return err == nil && !ok
		})
	}
	status := func() int {
		req, _ := http.NewRequest("POST", s.eps[i], strings.NewReader("late"))
		req.Header.Set("TTL", "60")
		req.Header.Set("Content-Encoding", "aes128gcm")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	waitUntil(t, 10*time.Second, "the upstream forgot the unregistered channel (410)", func() bool { return status() == http.StatusGone })
	for _, x := range s.ms {
		waitUntil(t, 10*time.Second, x.name+"'s outbox empty", func() bool {
			ps, err := x.st.PendingUnregisters(0, 0)
			return err == nil && len(ps) == 0
		})
	}

	s.up.Close()
	start := time.Now()
	_, err := other.up.Mint(ctx, relay.Registration{UAID: push.UAID{0xd7}, Channel: push.ChannelID{0xc7}})
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "the upstream's holder") {
		t.Fatalf("register with the upstream down, at a non-holder: %v", err)
	}
	if took > 3*time.Second+time.Second {
		t.Errorf("the refusal took %s, over the bound (1.5 × 2 s)", took)
	}
	t.Logf("refused after %s: %v", took.Round(time.Millisecond), err)
}

// A member that stopped leading may name itself the holder in the new
// leader's term just before it knows (a pause: it read the new term
// before it learnt it no longer leads; seen with SIGSTOP in
// TestE2ESiteUpstreamStop): its entry commits through the new leader.
// The leader then names itself again, and an older term's entry changes
// nothing: the upstream does not stay without a holder.
func TestSiteUpstreamHolderReclaimed(t *testing.T) {
	s := newUpSite(t)
	h := holderOf(s.ms)
	var f *tm
	for _, x := range s.ms {
		if x != h {
			f = x
			break
		}
	}
	hid, term := h.site.Holder()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := f.site.st.propose(ctx, &Entry{Kind: KindHolder, Holder: f.site.ID(), Term: term}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the leader names itself the holder again and runs the upstream", func() bool {
		id, _ := h.site.Holder()
		return id == hid && h.site.Holding()
	})
	if f.site.Holding() {
		t.Errorf("%s runs the upstream without leading", f.name)
	}
	for _, x := range s.ms {
		waitUntil(t, 5*time.Second, x.name+" applied the leader's holder entry", func() bool { id, _ := x.site.Holder(); return id == hid })
	}
	// An older term's entry is not applied.
	if _, err := f.site.st.propose(ctx, &Entry{Kind: KindHolder, Holder: f.site.ID(), Term: term - 1}); err != nil {
		t.Fatal(err)
	}
	at, _ := f.st.Applied()
	for _, x := range s.ms {
		waitUntil(t, 5*time.Second, x.name+" applied the older term's entry", func() bool { n, _ := x.st.Applied(); return n >= at })
		if id, tm := x.site.Holder(); id != hid || tm < term {
			t.Errorf("%s: holder %x term %d after an older term's entry, want %x", x.name, id, tm, hid)
		}
	}
	waitUntil(t, 10*time.Second, "the sessions open", s.allOpen)
}
