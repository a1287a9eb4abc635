package autopushtest_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/upstream/autopushtest"
)

const (
	chA = "0b5a9d4e-3c5b-4f7e-8a7b-2a2f3f4e5d6c"
	chB = "1c6b0e5f-4d6c-4a8f-9b8c-3b3a4a5f6e7d"
)

func start(t *testing.T, cfg autopushtest.Config) *autopushtest.Server {
	t.Helper()
	if cfg.Now == nil && cfg.PingMin == 0 {
		cfg.PingMin = time.Nanosecond // quiet pings freely
	}
	s, err := autopushtest.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func dial(t *testing.T, s *autopushtest.Server) *pushclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pushclient.Dial(ctx, s.URL())
	if err != nil {
		t.Fatal(err)
	}
	c.Timeout = 5 * time.Second
	t.Cleanup(func() { c.Abort() })
	return c
}

func hello(t *testing.T, c *pushclient.Client, uaid string) string {
	t.Helper()
	f, err := c.Hello(uaid, pushclient.HelloOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if f.Status != 200 || !f.UseWebPush || len(f.UAID) != 32 {
		t.Fatalf("hello reply %+v", f)
	}
	return f.UAID
}

func register(t *testing.T, c *pushclient.Client, chid string) string {
	t.Helper()
	f, err := c.Register(chid, "")
	if err != nil {
		t.Fatal(err)
	}
	if f.Status != 200 || f.PushEndpoint == "" {
		t.Fatalf("register reply %+v", f)
	}
	return f.PushEndpoint
}

// expectClose reads until the server's close frame and checks it.
func expectClose(t *testing.T, c *pushclient.Client, code int, reason string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for range 1000 {
		_, err := c.Read(deadline)
		if err == nil {
			continue
		}
		var ce *pushclient.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("want close %d %q, got %v", code, reason, err)
		}
		if ce.Code != code || ce.Reason != reason {
			t.Fatalf("closed %d %q, want %d %q", ce.Code, ce.Reason, code, reason)
		}
		return
	}
	t.Fatal("no close after 1000 frames")
}

func post(t *testing.T, endpoint string, ttl, topic, body string) int {
	t.Helper()
	req, err := http.NewRequest("POST", endpoint, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ttl != "" {
		req.Header.Set("TTL", ttl)
	}
	if topic != "" {
		req.Header.Set("Topic", topic)
	}
	if body != "" {
		req.Header.Set("Content-Encoding", "aes128gcm")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// registered makes a stored UAID with one channel and returns it and the
// channel's endpoint, the connection closed.
func registered(t *testing.T, s *autopushtest.Server) (string, string) {
	t.Helper()
	c := dial(t, s)
	uaid := hello(t, c, "")
	ep := register(t, c, chA)
	c.Close()
	waitIdle(t, s, uaid)
	return uaid, ep
}

// waitIdle waits until the UAID has no session, so that posts are stored.
func waitIdle(t *testing.T, s *autopushtest.Server, uaid string) {
	t.Helper()
	for range 500 {
		if !s.Open(uaid) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s still connected after 5s", uaid)
}

// batch reads n notifications, then checks nothing more comes for a
// moment.
func batch(t *testing.T, c *pushclient.Client, n int) []pushproto.ServerFrame {
	t.Helper()
	var fs []pushproto.ServerFrame
	for range n {
		f, err := c.Next(time.Now().Add(5 * time.Second))
		if err != nil {
			t.Fatalf("after %d of %d: %v", len(fs), n, err)
		}
		if f.MessageType != pushproto.TypeNotification {
			t.Fatalf("frame %+v", f)
		}
		fs = append(fs, f)
	}
	return fs
}

// quiet checks that no notification arrives: a {} ping is answered after
// everything the server wrote before it.
func quiet(t *testing.T, c *pushclient.Client) {
	t.Helper()
	if err := c.Send([]byte("{}")); err != nil {
		t.Fatal(err)
	}
	f, err := c.Read(time.Now().Add(5 * time.Second))
	if err != nil || f.MessageType != pushproto.TypePing {
		t.Fatalf("waiting for the ping's answer: %+v %v", f, err)
	}
}

func TestHelloTimeout(t *testing.T) {
	s := start(t, autopushtest.Config{HelloTimeout: 100 * time.Millisecond})
	c := dial(t, s)
	expectClose(t, c, 1011, "HandshakeTimeout")
}

func TestFirstFrameMustBeHello(t *testing.T) {
	s := start(t, autopushtest.Config{})
	c := dial(t, s)
	c.SendJSON(map[string]any{"messageType": "register", "channelID": chA})
	expectClose(t, c, 1011, "SM")

	c = dial(t, s)
	c.Send([]byte(`{"messageType":"hullo"}`))
	expectClose(t, c, 1011, "Json")

	c = dial(t, s)
	c.SendBinary([]byte(`{"messageType":"hello"}`))
	expectClose(t, c, 1003, "UnsupportedMessage")

	c = dial(t, s)
	c.Send([]byte(`{"messageType":"hello","x":"` + strings.Repeat("x", 64<<10) + `"}`))
	expectClose(t, c, 1002, "Protocol")
}

func TestSecondHelloCloses(t *testing.T) {
	s := start(t, autopushtest.Config{})
	c := dial(t, s)
	hello(t, c, "")
	c.SendJSON(map[string]any{"messageType": "hello"})
	expectClose(t, c, 1011, "SM")
}

func TestUAIDStoredAtFirstRegister(t *testing.T) {
	s := start(t, autopushtest.Config{})
	c := dial(t, s)
	first := hello(t, c, "")
	c.Close()
	if s.Exists(first) {
		t.Fatal("hello alone stored the UAID")
	}
	c = dial(t, s)
	second := hello(t, c, first)
	if second == first {
		t.Fatal("a UAID never registered was resumed")
	}
	register(t, c, chA)
	if !s.Exists(second) {
		t.Fatal("register did not store the UAID")
	}
	c.Close()
	c = dial(t, s)
	if got := hello(t, c, second); got != second {
		t.Fatalf("registered UAID not resumed: %s", got)
	}
	// A dashed form of the same UAID resumes it too.
	c.Close()
	c = dial(t, s)
	dashed := second[:8] + "-" + second[8:12] + "-" + second[12:16] + "-" + second[16:20] + "-" + second[20:]
	if got := hello(t, c, dashed); got != second {
		t.Fatalf("dashed UAID not resumed: %s", got)
	}
	if n := s.Stats().Hellos[second]; n != 3 {
		t.Fatalf("hellos for %s: %d, want 3", second, n)
	}
}

func TestGhost(t *testing.T) {
	s := start(t, autopushtest.Config{})
	uaid, ep := registered(t, s)
	old := dial(t, s)
	hello(t, old, uaid)
	if code := post(t, ep, "60", "", "first"); code != 201 {
		t.Fatalf("post: %d", code)
	}
	batch(t, old, 1) // and not acked
	nu := dial(t, s)
	hello(t, nu, uaid)
	expectClose(t, old, 1011, "SM")
	// What the ghost left unacked is stored and reaches the new
	// connection; posts go to it too.
	got := batch(t, nu, 1)
	if got[0].Data != "Zmlyc3Q" {
		t.Fatalf("got %+v", got[0])
	}
	if code := post(t, ep, "60", "", ""); code != 201 {
		t.Fatalf("post: %d", code)
	}
	batch(t, nu, 1)
	if st := s.Stats(); st.Connections != 3 || st.Hellos[uaid] != 3 || st.Resent != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestRegisterRules(t *testing.T) {
	s := start(t, autopushtest.Config{})
	c := dial(t, s)
	hello(t, c, "")
	f, err := c.Register(chA, "not base64!")
	if err != nil {
		t.Fatal(err)
	}
	if f.Status != 400 || f.PushEndpoint != "Failed to generate endpoint" {
		t.Fatalf("bad key: %+v", f)
	}
	f, err = c.Register(chB, "BOr5Ux4XhxZcnm7hTUMYNv5E5cbNLL9BnlO4G3zJ9eOQ5rjX0-z6-mXfCRUXHOa-mhPQ7TI5p-v2TU1G4Ojb9hE=")
	if err != nil || f.Status != 200 {
		t.Fatalf("padded key: %+v %v", f, err)
	}
	ep := register(t, c, chA)
	if code := post(t, ep, "60", "", "x"); code != 201 {
		t.Fatalf("post: %d", code)
	}
	batch(t, c, 1)
	u, err := c.Unregister(chA)
	if err != nil || u.Status != 200 {
		t.Fatalf("unregister: %+v %v", u, err)
	}
	if code := post(t, ep, "60", "", ""); code != 410 {
		t.Fatalf("post after unregister: %d, want 410", code)
	}
	if code := post(t, ep[:strings.LastIndex(ep, "/")+1]+chB, "", "", ""); code != 400 {
		t.Fatalf("post without TTL: %d, want 400", code)
	}
	c.SendJSON(map[string]any{"messageType": "register", "channelID": strings.ToUpper(chA)})
	expectClose(t, c, 1011, "SM")

	c = dial(t, s)
	hello(t, c, "")
	c.SendJSON(map[string]any{"messageType": "register", "channelID": strings.ReplaceAll(chA, "-", "")})
	expectClose(t, c, 1011, "SM")
}

func TestDirectDelivery(t *testing.T) {
	s := start(t, autopushtest.Config{})
	c := dial(t, s)
	hello(t, c, "")
	ep := register(t, c, chA)
	if code := post(t, ep, "60", "", "hi"); code != 201 {
		t.Fatalf("post: %d", code)
	}
	f := batch(t, c, 1)[0]
	if f.ChannelID != chA || f.Data != "aGk" || f.Headers == nil || f.Headers.Encoding != "aes128gcm" {
		t.Fatalf("notification %+v", f)
	}
	if err := c.Ack(f); err != nil {
		t.Fatal(err)
	}
	quiet(t, c)
	if st := s.Stats(); st.Sent != 1 || st.Acked != 1 || st.Resent != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestUnackedDirectIsStored(t *testing.T) {
	s := start(t, autopushtest.Config{})
	c := dial(t, s)
	uaid := hello(t, c, "")
	ep := register(t, c, chA)
	post(t, ep, "60", "", "")
	post(t, ep, "0", "", "") // TTL 0: not kept
	batch(t, c, 2)
	c.Close()
	waitIdle(t, s, uaid)
	c = dial(t, s)
	hello(t, c, uaid)
	batch(t, c, 1)
	quiet(t, c)
	if st := s.Stats(); st.Resent != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestBatchesOfTen: stored messages come 10 at a time, the next batch
// only when the whole batch is acked, and a partly acked batch comes again
// on the next connect.
func TestBatchesOfTen(t *testing.T) {
	var mu sync.Mutex
	acks := map[string]int{}
	s := start(t, autopushtest.Config{OnAck: func(uaid, version string) {
		mu.Lock()
		acks[version]++
		mu.Unlock()
	}})
	uaid, ep := registered(t, s)
	for i := range 25 {
		if code := post(t, ep, "600", "", fmt.Sprint(i)); code != 201 {
			t.Fatalf("post %d: %d", i, code)
		}
	}
	c := dial(t, s)
	hello(t, c, uaid)
	first := batch(t, c, 10)
	quiet(t, c)
	if err := c.Ack(first[:9]...); err != nil {
		t.Fatal(err)
	}
	quiet(t, c) // 9 of 10 acked: nothing more
	c.Close()
	waitIdle(t, s, uaid)

	c = dial(t, s)
	hello(t, c, uaid)
	again := batch(t, c, 10)
	for i := range again {
		if again[i].Version != first[i].Version {
			t.Fatalf("resent batch differs at %d", i)
		}
	}
	if st := s.Stats(); st.Resent != 10 {
		t.Fatalf("resent %d, want 10", st.Resent)
	}
	c.Ack(again...)
	next := batch(t, c, 10)
	c.Ack(next...)
	last := batch(t, c, 5)
	quiet(t, c)
	c.Ack(last...)
	quiet(t, c)
	if p := s.Pending(uaid); p != 0 {
		t.Fatalf("pending %d", p)
	}
	c.Close()
	waitIdle(t, s, uaid)
	c = dial(t, s)
	hello(t, c, uaid)
	quiet(t, c)
	st := s.Stats()
	if st.Sent != 35 || st.Resent != 10 || st.Acked != 9+25 {
		t.Fatalf("stats %+v", st)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(acks) != 25 {
		t.Fatalf("OnAck saw %d versions, want 25", len(acks))
	}
	for _, f := range first[:9] {
		if acks[f.Version] != 2 {
			t.Fatalf("a version acked in both sessions was reported %d times", acks[f.Version])
		}
	}
}

func TestTopicFirst(t *testing.T) {
	s := start(t, autopushtest.Config{})
	uaid, ep := registered(t, s)
	for i := range 3 {
		post(t, ep, "600", "", fmt.Sprint("plain", i))
	}
	post(t, ep, "600", "t1", "old")
	post(t, ep, "600", "t1", "new") // replaces old
	post(t, ep, "600", "t2", "two")
	c := dial(t, s)
	hello(t, c, uaid)
	topics := batch(t, c, 2)
	quiet(t, c)
	data := map[string]bool{}
	for _, f := range topics {
		data[f.Data] = true
	}
	if !data["bmV3"] || !data["dHdv"] { // "new", "two"
		t.Fatalf("topic batch %+v", topics)
	}
	c.Ack(topics[0])
	c.Close()
	waitIdle(t, s, uaid)
	// The acked topic message is gone, the other comes again first.
	c = dial(t, s)
	hello(t, c, uaid)
	again := batch(t, c, 1)
	quiet(t, c)
	if again[0].Version != topics[1].Version {
		t.Fatalf("topic again %+v", again)
	}
	c.Ack(again...)
	batch(t, c, 3)
}

func TestExcessivePing(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1e9, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	s := start(t, autopushtest.Config{Now: clock})
	c := dial(t, s)
	hello(t, c, "")
	if err := c.Ping(); err != nil {
		t.Fatal("first ping:", err)
	}
	advance(45 * time.Second)
	if err := c.Ping(); err != nil {
		t.Fatal("ping after 45s:", err)
	}
	advance(44 * time.Second)
	c.Send([]byte(`{"messageType":"ping"}`))
	expectClose(t, c, 1011, "SM")
}

func TestPongTimeout(t *testing.T) {
	s := start(t, autopushtest.Config{AutoPingInterval: 50 * time.Millisecond, AutoPingTimeout: 50 * time.Millisecond})
	// A client that reads answers the server's pings (gorilla answers
	// them while reading) and stays through several.
	good := dial(t, s)
	goodID := hello(t, good, "")
	// A client that stops reading never answers.
	read := make(chan error, 1)
	go func() {
		_, err := good.Read(time.Now().Add(30 * time.Second))
		read <- err
	}()
	defer func() { good.Abort(); <-read }()
	bad := dial(t, s)
	badID := hello(t, bad, "")
	for range 500 {
		if !s.Open(badID) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s.Open(badID) {
		t.Fatal("unanswered pings did not end the session")
	}
	expectClose(t, bad, 1011, "PongTimeout")
	if !s.Open(goodID) {
		t.Fatal("a client answering pings was closed")
	}
}

func TestMsgLimitResets(t *testing.T) {
	s := start(t, autopushtest.Config{MsgLimit: 20})
	uaid, ep := registered(t, s)
	for i := range 35 {
		post(t, ep, "600", "", fmt.Sprint(i))
	}
	c := dial(t, s)
	hello(t, c, uaid)
	c.Ack(batch(t, c, 10)...)
	c.Ack(batch(t, c, 10)...)
	expectClose(t, c, 1000, "SM")
	if s.Exists(uaid) {
		t.Fatal("UAID not deleted")
	}
	if code := post(t, ep, "60", "", ""); code != 410 {
		t.Fatalf("post to a reset UAID: %d, want 410", code)
	}
	c = dial(t, s)
	if got := hello(t, c, uaid); got == uaid {
		t.Fatal("reset UAID resumed")
	}
	if st := s.Stats(); st.Resets != 1 {
		t.Fatalf("resets %d", st.Resets)
	}
}

// TestMsgLimitNotReachedByDraining: a session that empties storage starts
// counting again (sent_from_storage is reset when storage is empty).
func TestMsgLimitNotReachedByDraining(t *testing.T) {
	s := start(t, autopushtest.Config{MsgLimit: 20})
	uaid, ep := registered(t, s)
	c := dial(t, s)
	hello(t, c, uaid)
	c.Close()
	waitIdle(t, s, uaid)
	for round := range 3 {
		for i := range 15 {
			post(t, ep, "600", "", fmt.Sprint(round, i))
		}
		c = dial(t, s)
		hello(t, c, uaid)
		c.Ack(batch(t, c, 10)...)
		c.Ack(batch(t, c, 5)...)
		quiet(t, c)
		c.Close()
		waitIdle(t, s, uaid)
	}
	if !s.Exists(uaid) || s.Stats().Resets != 0 {
		t.Fatal("reset though each session read 15")
	}
}

func TestBroadcasts(t *testing.T) {
	s := start(t, autopushtest.Config{AutoPingInterval: 50 * time.Millisecond, AutoPingTimeout: time.Second})
	s.SetBroadcast("a", "v1")
	s.SetBroadcast("b", "v1")
	c := dial(t, s)
	f, err := c.Hello("", pushclient.HelloOptions{Broadcasts: map[string]string{"a": "v0", "b": "v1", "x": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	if f.Broadcasts["a"] != "v1" || f.Broadcasts["b"] != nil ||
		fmt.Sprint(f.Broadcasts["errors"]) != "map[x:Broadcast not found]" {
		t.Fatalf("hello broadcasts %v", f.Broadcasts)
	}
	s.SetBroadcast("b", "v2")
	s.SetBroadcast("c", "v9") // not subscribed
	g, err := c.Next(time.Now().Add(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if g.MessageType != pushproto.TypeBroadcast || len(g.Broadcasts) != 1 || g.Broadcasts["b"] != "v2" {
		t.Fatalf("tick broadcast %+v", g)
	}
	c.SendJSON(map[string]any{"messageType": "broadcast_subscribe", "broadcasts": map[string]string{"c": "v1"}})
	g, err = c.Next(time.Now().Add(5 * time.Second))
	if err != nil || g.Broadcasts["c"] != "v9" {
		t.Fatalf("subscribe answer %+v %v", g, err)
	}
}

func TestCloseIsIdempotent(t *testing.T) {
	s, err := autopushtest.New(autopushtest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, s)
	hello(t, c, "")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	expectClose(t, c, 1001, "")
}

// TestAckedBatchNotResent: a wholly acked batch moves current_timestamp at
// once, so after a session that acked the first batch and part of the
// second only the second comes again.
func TestAckedBatchNotResent(t *testing.T) {
	s := start(t, autopushtest.Config{})
	uaid, ep := registered(t, s)
	for i := range 20 {
		post(t, ep, "600", "", fmt.Sprint(i))
	}
	c := dial(t, s)
	hello(t, c, uaid)
	c.Ack(batch(t, c, 10)...)
	second := batch(t, c, 10)
	c.Ack(second[:3]...)
	quiet(t, c)
	c.Close()
	waitIdle(t, s, uaid)
	c = dial(t, s)
	hello(t, c, uaid)
	again := batch(t, c, 10)
	quiet(t, c)
	for i := range again {
		if again[i].Version != second[i].Version {
			t.Fatalf("message %d sent again is not the second batch's", i)
		}
	}
	if st := s.Stats(); st.Resent != 10 {
		t.Fatalf("resent %d, want 10", st.Resent)
	}
	if p := s.Pending(uaid); p != 10 {
		t.Fatalf("pending %d, want 10", p)
	}
}

// TestExpiredSkipped: stored messages past their TTL are not sent, and a
// batch read that held only expired ones does not end the storage check.
func TestExpiredSkipped(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1e9, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := start(t, autopushtest.Config{Now: clock, PingMin: time.Nanosecond})
	uaid, ep := registered(t, s)
	for i := range 12 {
		post(t, ep, "10", "", fmt.Sprint("short", i))
	}
	post(t, ep, "10", "t", "topic")
	for i := range 3 {
		post(t, ep, "100", "", fmt.Sprint("long", i))
	}
	mu.Lock()
	now = now.Add(11 * time.Second)
	mu.Unlock()
	c := dial(t, s)
	hello(t, c, uaid)
	got := batch(t, c, 3)
	quiet(t, c)
	for _, f := range got {
		if !strings.HasPrefix(f.Data, "bG9uZ") { // "long"
			t.Fatalf("expired message sent: %+v", f)
		}
	}
}

// TestDirectHoldsTheNextBatch: a direct message sent during a stored batch
// must be acked too before the next batch comes (unacked_notifs counts
// both).
func TestDirectHoldsTheNextBatch(t *testing.T) {
	s := start(t, autopushtest.Config{})
	uaid, ep := registered(t, s)
	for i := range 15 {
		post(t, ep, "600", "", fmt.Sprint(i))
	}
	c := dial(t, s)
	hello(t, c, uaid)
	first := batch(t, c, 10)
	post(t, ep, "600", "", "direct")
	direct := batch(t, c, 1)
	if direct[0].Data != "ZGlyZWN0" {
		t.Fatalf("direct %+v", direct[0])
	}
	c.Ack(first...)
	quiet(t, c)
	c.Ack(direct...)
	batch(t, c, 5)
}

func TestBadFramesClose(t *testing.T) {
	s := start(t, autopushtest.Config{})
	for _, tc := range []struct {
		frame  string
		reason string
	}{
		{`{"messageType":"bogus"}`, "Json"},
		{`{"messageType":"ack","updates":"x"}`, "Json"},
		{`{"messageType":"unregister","channelID":"not-a-uuid"}`, "Json"},
		{`{"messageType":"register"}`, "Json"},
		{`not json`, "Json"},
		{`{"messageType":"hello"}`, "SM"},
	} {
		c := dial(t, s)
		hello(t, c, "")
		// nack is metrics only: it changes nothing.
		c.Send([]byte(`{"messageType":"nack","version":"x","code":301}`))
		quiet(t, c)
		c.Send([]byte(tc.frame))
		expectClose(t, c, 1011, tc.reason)
	}
}

// TestRouterTTL: a UAID that says hello within the router TTL is kept;
// one that goes past it without a hello is forgotten.
func TestRouterTTL(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1e9, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	s := start(t, autopushtest.Config{Now: clock, PingMin: time.Nanosecond})
	uaid, ep := registered(t, s)
	for range 3 {
		advance(59 * 24 * time.Hour)
		c := dial(t, s)
		if got := hello(t, c, uaid); got != uaid {
			t.Fatal("UAID forgotten within 60 days of its last hello")
		}
		c.Close()
		waitIdle(t, s, uaid)
	}
	advance(60*24*time.Hour + time.Second)
	if code := post(t, ep, "60", "", ""); code != 410 {
		t.Fatalf("post after 60 days: %d, want 410", code)
	}
	c := dial(t, s)
	if got := hello(t, c, uaid); got == uaid {
		t.Fatal("UAID resumed after 60 days without a hello")
	}
	if st := s.Stats(); st.Expired != 1 || st.Resets != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestTLS(t *testing.T) {
	serverTLS, roots, err := autopushtest.LoopbackTLS()
	if err != nil {
		t.Fatal(err)
	}
	s := start(t, autopushtest.Config{TLS: serverTLS})
	if !strings.HasPrefix(s.URL(), "wss://") {
		t.Fatal(s.URL())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pushclient.DialTLS(ctx, s.URL(), &tls.Config{RootCAs: roots})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Abort()
	hello(t, c, "")
	ep := register(t, c, chA)
	if !strings.HasPrefix(ep, "https://") {
		t.Fatal(ep)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	defer hc.CloseIdleConnections()
	req, _ := http.NewRequest("POST", ep, nil)
	req.Header.Set("TTL", "60")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("post: %d", resp.StatusCode)
	}
	batch(t, c, 1)
}

// TestManyClients drains stored batches for 40 UAIDs at once (under -race
// this checks the server's locking), each posting to itself meanwhile.
func TestManyClients(t *testing.T) {
	s := start(t, autopushtest.Config{})
	const n, per = 40, 12
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- oneClient(s, i, per)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	st := s.Stats()
	if st.Connections != 2*n || st.Acked != n*(per+1) || st.Resent != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func oneClient(s *autopushtest.Server, i, per int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pushclient.Dial(ctx, s.URL())
	if err != nil {
		return err
	}
	f, err := c.Hello("", pushclient.HelloOptions{})
	if err != nil {
		c.Abort()
		return err
	}
	uaid := f.UAID
	r, err := c.Register(chA, "")
	c.Close()
	if err != nil {
		return err
	}
	for range 500 {
		if !s.Open(uaid) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	for k := range per {
		req, _ := http.NewRequest("POST", r.PushEndpoint, strings.NewReader(fmt.Sprint(i, k)))
		req.Header.Set("TTL", "60")
		req.Header.Set("Content-Encoding", "aes128gcm")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 201 {
			return fmt.Errorf("client %d post %d: %d", i, k, resp.StatusCode)
		}
	}
	c, err = pushclient.Dial(ctx, s.URL())
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Hello(uaid, pushclient.HelloOptions{}); err != nil {
		return err
	}
	got := 0
	for _, size := range []int{10, per - 10} {
		var fs []pushproto.ServerFrame
		for range size {
			f, err := c.Next(time.Now().Add(5 * time.Second))
			if err != nil {
				return fmt.Errorf("client %d after %d: %w", i, got, err)
			}
			fs = append(fs, f)
			got++
		}
		if err := c.Ack(fs...); err != nil {
			return err
		}
	}
	// And one direct, now that it is connected.
	req, _ := http.NewRequest("POST", r.PushEndpoint, nil)
	req.Header.Set("TTL", "60")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	f, err = c.Next(time.Now().Add(5 * time.Second))
	if err != nil {
		return err
	}
	if err := c.Ack(f); err != nil {
		return err
	}
	if err := c.Ping(); err != nil { // the ack is read before the ping
		return err
	}
	return nil
}

// The first {} of every connection is answered, and after everything the
// messages before it made the server send: a {} right after the hello
// after the hello's first stored batch, a {} right after the ack of a
// whole batch after the next batch (autopush answers each client message
// in full before it reads the next: identified_ws in
// autoconnect-ws/src/handler.rs). The upstream link's polls confirm on
// this.
func TestPingAnsweredInOrder(t *testing.T) {
	now := time.Unix(1e9, 0)
	s := start(t, autopushtest.Config{Now: func() time.Time { return now }}) // PingMin 45 s
	uaid, ep := registered(t, s)
	for i := range 25 {
		if code := post(t, ep, "600", "", fmt.Sprint(i)); code != 201 {
			t.Fatalf("post %d: %d", i, code)
		}
	}
	// untilAnswer reads the notifications before the {} answer.
	untilAnswer := func(c *pushclient.Client) []pushproto.ServerFrame {
		t.Helper()
		var fs []pushproto.ServerFrame
		for {
			f, err := c.Read(time.Now().Add(5 * time.Second))
			if err != nil {
				t.Fatalf("after %d notifications: %v", len(fs), err)
			}
			switch f.MessageType {
			case pushproto.TypePing:
				return fs
			case pushproto.TypeNotification:
				fs = append(fs, f)
			}
		}
	}
	c := dial(t, s)
	hello(t, c, uaid)
	c.Send([]byte("{}"))
	if fs := untilAnswer(c); len(fs) != 10 {
		t.Fatalf("%d notifications before the answer to a {} after the hello, want the batch of 10", len(fs))
	}
	c.Close()
	waitIdle(t, s, uaid)

	c = dial(t, s)
	hello(t, c, uaid)
	first := batch(t, c, 10) // sent again: not acked
	c.Ack(first...)
	c.Send([]byte("{}"))
	if fs := untilAnswer(c); len(fs) != 10 {
		t.Fatalf("%d notifications before the answer to a {} after an ack, want the next batch of 10", len(fs))
	} else {
		c.Ack(fs...)
	}
	last := batch(t, c, 5)
	c.Ack(last...)
	c.Close()
	waitIdle(t, s, uaid)

	c = dial(t, s)
	hello(t, c, uaid)
	c.Send([]byte("{}"))
	if fs := untilAnswer(c); len(fs) != 0 {
		t.Fatalf("%d notifications with nothing stored", len(fs))
	}
	if p := s.Pending(uaid); p != 0 {
		t.Fatalf("pending %d", p)
	}
}
