package link

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/broadcast"
	"github.com/pushrelay/pushrelay/relay/endpoint"
	"github.com/pushrelay/pushrelay/relay/leakcheck"
	"github.com/pushrelay/pushrelay/relay/linkauth"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/token"
)

func TestMain(m *testing.M) {
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	leakcheck.Main(m)
}

// pair is a parent and a child relay in one process: real stores, hubs,
// a QUIC link on loopback, keys from a site CA.
type pair struct {
	t          testing.TB
	pst, cst   *store.Store
	phub, chub *relay.Hub
	parent     *Parent
	pcfg       ParentConfig
	ctx        context.Context
	child      *Child
	preg, creg *metrics.Registry
	pbc, cbc   *broadcast.Registry
	gate       *gate
	cancel     context.CancelFunc
	wg         sync.WaitGroup
}

// gate is the child's hub as the link's Ingester, with a test's hand on
// it: hold stops ingesting until released; failAfter makes the next
// ingest report a failure after the hub stored it (as a child killed
// between its commit and its ACK).
type gate struct {
	hub       *relay.Hub
	mu        sync.Mutex
	held      chan struct{} // nil: open
	failAfter atomic.Bool
	calls     atomic.Int64
}

func (g *gate) Ingest(ctx context.Context, ms []push.Message) ([]relay.Result, error) {
	g.mu.Lock()
	held := g.held
	g.mu.Unlock()
	if held != nil {
		select {
		case <-held:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	g.calls.Add(1)
	res, err := g.hub.Ingest(ctx, ms)
	if err == nil && g.failAfter.CompareAndSwap(true, false) {
		return nil, errors.New("test: failed after the commit")
	}
	return res, err
}

func (g *gate) hold() {
	g.mu.Lock()
	g.held = make(chan struct{})
	g.mu.Unlock()
}

func (g *gate) release() {
	g.mu.Lock()
	close(g.held)
	g.held = nil
	g.mu.Unlock()
}

func newPair(t testing.TB, creditMessages int) *pair {
	t.Helper()
	return newPairWith(t, creditMessages, nil)
}

// newPairWith is newPair with the child's config changed by edit first.
func newPairWith(t testing.TB, creditMessages int, edit func(*ChildConfig)) *pair {
	t.Helper()
	return newPairEdit(t, creditMessages, edit, nil)
}

// newPairEdit is newPair with the child's and the parent's configs
// changed by editChild and editParent first.
func newPairEdit(t testing.TB, creditMessages int, edit func(*ChildConfig), editParent func(*ParentConfig)) *pair {
	t.Helper()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	if _, err := linkauth.NewCA(ca, "", false); err != nil {
		t.Fatal(err)
	}
	creds := func(name string) *linkauth.Credentials {
		if _, err := linkauth.Issue(ca, name, dir, false); err != nil {
			t.Fatal(err)
		}
		c, err := linkauth.Load(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"), filepath.Join(ca, linkauth.CACertFile), nil, "")
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	key := make([]byte, token.KeySize)
	rand.Read(key)
	tokens, err := token.New(key)
	if err != nil {
		t.Fatal(err)
	}
	p := &pair{t: t, preg: metrics.NewRegistry(), creg: metrics.NewRegistry()}
	open := func(name string) *store.Store {
		s, err := store.Open(store.Options{Path: filepath.Join(dir, name+".db"), MaxMessagesPerUAID: 100000})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	p.pst, p.cst = open("core"), open("edge")
	minter, err := endpoint.NewMinter(tokens, "https://core.example.net")
	if err != nil {
		t.Fatal(err)
	}
	if p.pbc, err = broadcast.Open(p.pst, p.preg); err != nil {
		t.Fatal(err)
	}
	if p.cbc, err = broadcast.Open(p.cst, p.creg); err != nil {
		t.Fatal(err)
	}
	p.pcfg = ParentConfig{Listen: "127.0.0.1:0", Name: "core", Credentials: creds("core"),
		Store: p.pst, Endpoints: minter, Metrics: p.preg, Broadcasts: p.pbc}
	if editParent != nil {
		editParent(&p.pcfg)
	}
	p.parent, err = NewParent(p.pcfg)
	if err != nil {
		t.Fatal(err)
	}
	p.phub, err = relay.New(relay.Config{Store: p.pst, Tokens: tokens, Endpoints: minter, Stored: p.parent.Stored})
	if err != nil {
		t.Fatal(err)
	}
	ccfg := ChildConfig{Addr: p.parent.Addr().String(), Name: "edge-1", Credentials: creds("edge-1"),
		Store: p.cst, BackoffMin: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		CreditMessages: creditMessages, Metrics: p.creg, Broadcasts: p.cbc}
	if edit != nil {
		edit(&ccfg)
	}
	p.child, err = NewChild(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	p.chub, err = relay.New(relay.Config{Store: p.cst, Tokens: tokens, Endpoints: p.child})
	if err != nil {
		t.Fatal(err)
	}
	p.gate = &gate{hub: p.chub}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel, p.ctx = cancel, ctx
	p.wg.Go(func() { p.parent.Run(ctx) })
	p.wg.Go(func() { p.child.Run(ctx, p.gate) })
	t.Cleanup(p.close)
	return p
}

func (p *pair) close() {
	p.cancel()
	p.wg.Wait()
	p.phub.Close()
	p.chub.Close()
}

// register registers a channel of a new device on the child, as its hub
// does: Mint over the link, then the channel stored with the endpoint.
func (p *pair) register() (push.UAID, push.ChannelID) {
	p.t.Helper()
	var u push.UAID
	var ch push.ChannelID
	rand.Read(u[:])
	rand.Read(ch[:])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ep, err := p.child.Mint(ctx, relay.Registration{UAID: u, Channel: ch})
	if err != nil {
		p.t.Fatal(err)
	}
	if err := p.cst.Register(ctx, store.Channel{UAID: u, ID: ch, Endpoint: ep}); err != nil {
		p.t.Fatal(err)
	}
	return u, ch
}

// post stores n messages for (u, ch) at the parent, as its endpoint does.
func (p *pair) post(u push.UAID, ch push.ChannelID, n int) {
	p.t.Helper()
	ms := make([]push.Message, n)
	for i := range ms {
		ms[i] = push.Message{UAID: u, Channel: ch, TTL: time.Hour, Data: fmt.Appendf(nil, "m%d", i),
			Origin: push.Origin{Kind: push.OriginLocal, ID: fmt.Sprintf("post-%d-%x", i, u[:4])}}
	}
	for len(ms) > 0 {
		k := min(len(ms), 500)
		res, err := p.phub.Ingest(context.Background(), ms[:k])
		if err != nil {
			p.t.Fatal(err)
		}
		for _, r := range res {
			if r.Err != nil {
				p.t.Fatal(r.Err)
			}
		}
		ms = ms[k:]
	}
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10s: %s", what)
		}
	}
}

func (p *pair) waiting(s *store.Store) int64 {
	st, err := s.Stats()
	if err != nil {
		p.t.Fatal(err)
	}
	return st.Waiting
}

// The parent never has more messages in flight than the child's credit,
// and deletes them only once acked.
func TestCreditBoundsInFlight(t *testing.T) {
	const credit, total = 1024, 3000
	p := newPair(t, credit)
	u, ch := p.register()
	p.gate.hold()
	p.post(u, ch, total)
	eventually(t, "the parent filled the credit", func() bool {
		// The sender reads readBatch messages of a UAID at a time.
		return p.preg.Value("pushrelay_link_children_messages_sent_total") > credit-readBatch
	})
	// Give it the time to (wrongly) send more.
	time.Sleep(200 * time.Millisecond)
	if sent := p.preg.Value("pushrelay_link_children_messages_sent_total"); sent > credit {
		t.Fatalf("%v messages sent with a credit of %d", sent, credit)
	}
	if w := p.waiting(p.pst); w != total {
		t.Fatalf("the parent deleted messages before any ACK: %d of %d wait", w, total)
	}
	p.gate.release()
	eventually(t, "everything reached the child and left the parent", func() bool {
		return p.waiting(p.cst) == total && p.waiting(p.pst) == 0
	})
	if got := p.creg.Value(`pushrelay_link_up_messages_total{result="stored"}`); got != total {
		t.Fatalf("the child stored %v messages, want %d", got, total)
	}
}

// The child reads on while a commit is written: the UPDATEs that arrive
// during one ingest go into the next together (one commit, one fsync),
// in order, and are acked after it.
func TestFramesDuringCommitIngestedTogether(t *testing.T) {
	const total = 3000
	p := newPair(t, 0)
	u, ch := p.register()
	p.gate.hold()
	p.post(u, ch, total)
	p.child.mu.Lock()
	cc := p.child.cur
	p.child.mu.Unlock()
	eventually(t, "every frame reached the child", func() bool {
		cc.mu.Lock()
		defer cc.mu.Unlock()
		return cc.consumed == total
	})
	frames := p.preg.Value("pushrelay_link_children_updates_sent_total")
	if frames < 10 {
		t.Fatalf("only %v UPDATEs for %d messages: the test needs many", frames, total)
	}
	p.gate.release()
	eventually(t, "everything reached the child and left the parent", func() bool {
		return p.waiting(p.cst) == total && p.waiting(p.pst) == 0
	})
	// The first frame's ingest was held; everything after it came in
	// while it waited.
	if calls := p.gate.calls.Load(); calls > 3 {
		t.Fatalf("%d ingests for %v UPDATEs that all waited for one", calls, frames)
	}
	ms, err := p.cst.Messages(u, 0, 2*total)
	if err != nil || len(ms) != total {
		t.Fatalf("the child holds %d messages, want %d (%v)", len(ms), total, err)
	}
	for i, m := range ms {
		if want := fmt.Sprintf("m%d", i); string(m.Data) != want {
			t.Fatalf("message %d is %q, want %q: out of order", i, m.Data, want)
		}
	}
}

// A child that stored a frame and broke before its ACK is sent the frame
// again; its store keeps one copy of each message.
func TestResendAfterBreakStoredOnce(t *testing.T) {
	const total = 50
	p := newPair(t, 0)
	u, ch := p.register()
	p.gate.failAfter.Store(true)
	p.post(u, ch, total)
	eventually(t, "everything reached the child and left the parent", func() bool {
		return p.waiting(p.cst) == total && p.waiting(p.pst) == 0
	})
	if dups := p.creg.Value(`pushrelay_link_up_messages_total{result="duplicate"}`); dups < 1 {
		t.Fatalf("no duplicate after the break: the frame was not sent again (%v)", dups)
	}
	if got := p.creg.Value("pushrelay_link_up_connects_total{result=\"ok\"}"); got < 2 {
		t.Fatalf("%v connects, want a reconnect", got)
	}
	ms, err := p.cst.Messages(u, 0, 2*total)
	if err != nil || len(ms) != total {
		t.Fatalf("the child holds %d messages, want %d (%v)", len(ms), total, err)
	}
}

// An unregister on the child reaches the parent (through the child's
// outbox), and the child's digest matches the parent's view at the next
// connect.
func TestUnregisterOverLink(t *testing.T) {
	p := newPair(t, 0)
	u, ch := p.register()
	u2, _ := p.register()
	ctx := context.Background()
	if err := p.child.Unregister(ctx, u, ch); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the parent removed the channel", func() bool {
		_, ok, err := p.pst.Channel(u, ch)
		return err == nil && !ok
	})
	eventually(t, "the unregister left the child's outbox", func() bool {
		ps, err := p.cst.PendingUnregisters(0, 10)
		return err == nil && len(ps) == 0
	})
	if _, ok, _ := p.pst.Channel(u2, push.ChannelID{}); ok {
		t.Fatal("unexpected channel")
	}
	if n := p.preg.Value("pushrelay_link_children_digest_mismatches_total"); n != 0 {
		t.Fatalf("%v digest mismatches", n)
	}
}

// The parent keeps each child's digest as pairs come and go (register,
// a register retried, unregister) instead of reading the store at every
// connect; it always equals the digest of what the store holds, and a
// restarted parent builds the same from the store.
func TestKeptDigest(t *testing.T) {
	p := newPair(t, 0)
	ctx := context.Background()
	var us []push.UAID
	var chs []push.ChannelID
	for range 5 {
		u, ch := p.register()
		us, chs = append(us, u), append(chs, ch)
	}
	check := func(parent *Parent, where string, want uint64) {
		t.Helper()
		kept, served := parent.view(parent.index["edge-1"])
		sd, err := parent.storeDigest(served)
		if err != nil {
			t.Fatal(err)
		}
		if kept != sd || kept.Count != want {
			t.Fatalf("%s: kept digest %v, the store's %v, want %d pairs", where, kept, sd, want)
		}
	}
	check(p.parent, "after 5 registers", 5)
	// The child retries a register the parent already stored.
	if _, err := p.child.Mint(ctx, relay.Registration{UAID: us[1], Channel: chs[1]}); err != nil {
		t.Fatal(err)
	}
	check(p.parent, "after a register retried", 5)
	if err := p.child.Unregister(ctx, us[0], chs[0]); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the parent removed the channel", func() bool {
		_, ok, err := p.pst.Channel(us[0], chs[0])
		return err == nil && !ok
	})
	eventually(t, "the unregister was answered", func() bool {
		ps, err := p.cst.PendingUnregisters(0, 10)
		return err == nil && len(ps) == 0
	})
	check(p.parent, "after an unregister", 4)
	cfg := p.parent.cfg
	cfg.Metrics = nil
	restarted, err := NewParent(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer restarted.Close()
	check(restarted, "a restarted parent", 4)
	if n := p.preg.Value("pushrelay_link_children_digest_mismatches_total"); n != 0 {
		t.Fatalf("%v digest mismatches", n)
	}
}

// At a connect the parent walks the UAIDs with messages in its store,
// sendBatch at a time (not all at once in its dirty map, which would keep
// the map's memory for good), and takes the child's: what waits for more
// UAIDs than one batch, sent before the break and never acked, is all sent
// again; the parent's own devices' messages, between them in UAID order,
// stay; and the sweep is over after.
func TestConnectSweep(t *testing.T) {
	p := newPair(t, 0)
	const n, local = sendBatch + 44, 30
	us := make([]push.UAID, n)
	chs := make([]push.ChannelID, n)
	for i := range us {
		us[i], chs[i] = p.register()
	}
	ctx := context.Background()
	for i := range local {
		// Devices of the parent's own, no child's.
		u := push.UAID{0: byte(i * 8), 1: 0xee}
		if err := p.pst.Register(ctx, store.Channel{UAID: u, ID: push.ChannelID{1}}); err != nil {
			t.Fatal(err)
		}
		p.post(u, push.ChannelID{1}, 1)
	}
	p.gate.hold()
	for i := range us {
		p.post(us[i], chs[i], 1)
	}
	p.child.mu.Lock()
	cc := p.child.cur
	p.child.mu.Unlock()
	cc.conn.Close(0, "test: reconnect")
	p.gate.release()
	eventually(t, "everything reached the child", func() bool {
		return p.waiting(p.pst) == local && p.waiting(p.cst) == n
	})
	p.parent.mu.Lock()
	pc := p.parent.conns[p.parent.index["edge-1"]]
	p.parent.mu.Unlock()
	if pc == nil {
		t.Fatal("the child is not connected")
	}
	pc.mu.Lock()
	sweeping, dirty := pc.sweeping, len(pc.dirty)
	pc.mu.Unlock()
	if sweeping || dirty != 0 {
		t.Fatalf("after the sweep: still sweeping %v, %d dirty", sweeping, dirty)
	}
}

// A parent whose view of the child diverged (a channel lost, one too
// many) is fixed by the resync at the next connect, and the connect after
// finds the digests equal.
func TestResync(t *testing.T) {
	p := newPair(t, 0)
	u, ch := p.register()
	u2, ch2 := p.register()
	ctx := context.Background()
	// The parent loses one of the child's channels and holds one the
	// child does not have.
	if _, err := p.pst.Unregister(ctx, u, ch); err != nil {
		t.Fatal(err)
	}
	var extra push.ChannelID
	rand.Read(extra[:])
	if err := p.pst.Register(ctx, store.Channel{UAID: u2, ID: extra}); err != nil {
		t.Fatal(err)
	}
	// The parent sees the edit when it reads its store again, as a
	// parent restarted on it does (a running one keeps its digests as the
	// link changes the pairs: an edit behind its back is not seen).
	if err := p.parent.rebuildDigests(); err != nil {
		t.Fatal(err)
	}
	reconnect := func() {
		p.child.mu.Lock()
		cc := p.child.cur
		p.child.mu.Unlock()
		if cc != nil {
			cc.conn.Close(0, "test: reconnect")
		}
	}
	reconnect()
	eventually(t, "the resync fixed the parent", func() bool {
		_, ok1, _ := p.pst.Channel(u, ch)
		_, ok2, _ := p.pst.Channel(u2, ch2)
		_, ok3, _ := p.pst.Channel(u2, extra)
		// The child counts the resync once its fixes are answered.
		return ok1 && ok2 && !ok3 && p.creg.Value("pushrelay_link_up_resyncs_total") >= 1
	})
	// The parent's store is fixed before the child has the last answer
	// and counts the resync done.
	eventually(t, "the child counted the resync", func() bool { return p.creg.Value("pushrelay_link_up_resyncs_total") >= 1 })
	if n := p.creg.Value("pushrelay_link_up_resyncs_total"); n != 1 {
		t.Fatalf("%v resyncs", n)
	}
	mismatches := p.preg.Value("pushrelay_link_children_digest_mismatches_total")
	if mismatches != 1 {
		t.Fatalf("%v digest mismatches, want 1", mismatches)
	}
	before := p.creg.Value(`pushrelay_link_up_connects_total{result="ok"}`)
	reconnect()
	eventually(t, "the child reconnected", func() bool {
		return p.creg.Value(`pushrelay_link_up_connects_total{result="ok"}`) > before
	})
	if n := p.preg.Value("pushrelay_link_children_digest_mismatches_total"); n != mismatches {
		t.Fatalf("the digests still differ after the resync")
	}
}

// What the parent keeps in memory per UAID a child serves (its serves
// map) stays within the 100-byte target: measured over 100,000 UAIDs.
func TestParentMemoryPerUAID(t *testing.T) {
	const n = 100000
	us := make([]push.UAID, n)
	for i := range us {
		rand.Read(us[i][:])
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	p := &Parent{serves: map[push.UAID]uint16{}}
	for i, u := range us {
		p.serves[u] = uint16(i % 3)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := (float64(after.HeapAlloc) - float64(before.HeapAlloc)) / n
	t.Logf("parent memory per UAID a child serves: %.1f bytes (%d UAIDs; heap %d -> %d)", per, len(p.serves), before.HeapAlloc, after.HeapAlloc)
	runtime.KeepAlive(us)
	if per > 100 {
		t.Errorf("%.1f bytes per UAID, over the 100-byte target", per)
	}
}

// BenchmarkLinkDrain measures messages/s over one link: a backlog stored
// at the parent for 100 devices of the child (both stores fsyncing each
// commit) drains to the child. b.N is the backlog.
func BenchmarkLinkDrain(b *testing.B) {
	p := newPair(b, 0)
	const devs = 100
	us := make([]push.UAID, devs)
	chs := make([]push.ChannelID, devs)
	for i := range us {
		us[i], chs[i] = p.register()
	}
	p.gate.hold()
	for i := range us {
		p.post(us[i], chs[i], max(b.N/devs, 1))
	}
	want := int64(max(b.N/devs, 1) * devs)
	b.ResetTimer()
	start := time.Now()
	p.gate.release()
	for p.waiting(p.pst) != 0 || p.waiting(p.cst) != want {
		time.Sleep(time.Millisecond)
	}
	b.ReportMetric(float64(want)/time.Since(start).Seconds(), "msg/s")
}

// A stored message an UPDATE cannot carry (a header over the link's
// limit) is dropped, counted, and does not hold up the others.
func TestUncarriableDropped(t *testing.T) {
	p := newPair(t, 0)
	u, ch := p.register()
	p.gate.hold()
	bad := push.Message{UAID: u, Channel: ch, TTL: time.Hour, Encryption: strings.Repeat("a", 9000),
		Origin: push.Origin{Kind: push.OriginLocal, ID: "bad"}}
	if res, err := p.phub.Ingest(context.Background(), []push.Message{bad}); err != nil || res[0].Err != nil {
		t.Fatalf("store the message: %v %+v", err, res)
	}
	p.post(u, ch, 3)
	p.gate.release()
	eventually(t, "the others reached the child", func() bool {
		return p.waiting(p.cst) == 3 && p.waiting(p.pst) == 0
	})
	if n := p.preg.Value("pushrelay_link_children_messages_dropped_total"); n != 1 {
		t.Fatalf("%v dropped, want 1", n)
	}
}

// The origin id of a message is the parent's store epoch and its sequence
// there: a parent whose store was started afresh hands out sequences
// again, and the child must not take those messages for the ones it
// keeps under the same sequences from the old store.
func TestOriginIDsNameTheStore(t *testing.T) {
	p := newPair(t, 0)
	id := p.parent.originID(7)
	if len(id) != store.EpochLen+8 || id[:store.EpochLen] != string(p.pst.Epoch()) || originSeq(id) != 7 {
		t.Fatalf("origin id %x (epoch %x)", id, p.pst.Epoch())
	}
	u, ch := p.register()
	other, err := store.Open(store.Options{Path: filepath.Join(t.TempDir(), "fresh.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	fresh := &Parent{epoch: other.Epoch()}
	for i, pid := range []string{id, fresh.originID(7)} {
		res, err := p.chub.Ingest(context.Background(), []push.Message{{UAID: u, Channel: ch, TTL: time.Hour,
			Data: fmt.Appendf(nil, "m%d", i), Origin: push.Origin{Kind: push.OriginParent, ID: pid}}})
		if err != nil || res[0].Err != nil || res[0].Duplicate {
			t.Fatalf("message %d with origin id %x: %+v %v", i, pid, res, err)
		}
	}
	if ms, err := p.cst.Messages(u, 0, 10); err != nil || len(ms) != 2 {
		t.Fatalf("the child keeps %d messages, want 2 (%v)", len(ms), err)
	}
}

// reconnect closes the child's connection; it dials again at once.
func (p *pair) reconnect() {
	p.child.mu.Lock()
	cc := p.child.cur
	p.child.mu.Unlock()
	if cc != nil {
		cc.conn.Close(0, "test: reconnect")
	}
}

// hasVersions reports whether reg holds every version of want.
func hasVersions(reg *broadcast.Registry, want map[string]string) bool {
	cur := reg.Versions()
	for id, v := range want {
		if cur[id] != v {
			return false
		}
	}
	return true
}

// The parent's broadcast versions reach the child's registry: the whole
// map at each connect, then only what changes; the child keeps them under
// the source "parent" beside its own ids.
func TestBroadcastsDownTheLink(t *testing.T) {
	p := newPair(t, 0)
	ctx := context.Background()
	eventually(t, "the link is up", func() bool { return p.child.Status().Connected })
	if _, err := p.cbc.Set(ctx, "admin", map[string]string{"own": "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.pbc.Set(ctx, "admin", map[string]string{"a": "1", "b": "1"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the child has a and b", func() bool { return hasVersions(p.cbc, map[string]string{"a": "1", "b": "1"}) })
	if _, err := p.pbc.Set(ctx, "admin", map[string]string{"a": "2"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the child has a's change", func() bool { return hasVersions(p.cbc, map[string]string{"a": "2", "b": "1"}) })
	if got := p.preg.Value("pushrelay_link_children_broadcasts_sent_total"); got != 3 {
		t.Fatalf("%v versions sent, want 3 (a and b, then a's change alone)", got)
	}
	if got := p.creg.Value(`pushrelay_broadcast_changes_total{source="parent"}`); got != 3 {
		t.Fatalf("%v changes from the parent, want 3", got)
	}
	// At the next connect the whole map comes again: nothing changes.
	p.reconnect()
	eventually(t, "the whole map sent again", func() bool {
		return p.preg.Value("pushrelay_link_children_broadcasts_sent_total") == 5
	})
	eventually(t, "the child took it", func() bool {
		return p.creg.Value(`pushrelay_link_up_broadcasts_total{result="unchanged"}`) == 2
	})
	want := map[string]string{"own": "x", "a": "2", "b": "1"}
	if got := p.cbc.Versions(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("child's versions %v, want %v", got, want)
	}
	// A change made while the child is away reaches it at the connect.
	p.child.mu.Lock()
	cc := p.child.cur
	p.child.mu.Unlock()
	gone := cc.conn.Done()
	p.reconnect()
	<-gone
	if _, err := p.pbc.Set(ctx, "admin", map[string]string{"b": "2", "c": "1"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the child has b's change and c", func() bool { return hasVersions(p.cbc, map[string]string{"b": "2", "c": "1"}) })
}

// Past the registry's 1,024 ids the child keeps the versions of the ids
// it holds and as many new ones as fit, in id order, and counts the rest
// refused.
func TestBroadcastsPastTheLimit(t *testing.T) {
	p := newPair(t, 0)
	ctx := context.Background()
	own := map[string]string{}
	for i := range broadcast.MaxIDs - 1 {
		own[fmt.Sprintf("own-%04d", i)] = "1"
	}
	if _, err := p.cbc.Set(ctx, "admin", own); err != nil {
		t.Fatal(err)
	}
	if _, err := p.pbc.Set(ctx, "admin", map[string]string{"own-0000": "2", "p1": "1", "p2": "1"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the child took what fits", func() bool {
		return hasVersions(p.cbc, map[string]string{"own-0000": "2", "p1": "1"})
	})
	if _, ok := p.cbc.Versions()["p2"]; ok {
		t.Fatal("the child holds more than 1,024 ids")
	}
	if got := p.creg.Value(`pushrelay_link_up_broadcasts_total{result="refused"}`); got != 1 {
		t.Fatalf("%v refused, want 1", got)
	}
}
