package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/push"
)

// ---- helpers ----

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// openTest opens a store in a fresh temp dir (unless opts.Path is set)
// and closes it at the end of the test.
func openTest(t testing.TB, opts Options) *Store {
	t.Helper()
	if opts.Path == "" {
		opts.Path = filepath.Join(t.TempDir(), "store.db")
	}
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
		if _, bench := t.(*testing.B); bench {
			opts.Logger = slog.New(slog.DiscardHandler)
		}
	}
	s, err := Open(opts)
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

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func uaid(n byte) push.UAID      { return push.UAID{0xaa, n} }
func chid(n byte) push.ChannelID { return push.ChannelID{0xcc, n} }

func msg(u push.UAID, ch push.ChannelID, data string) Message {
	return Message{UAID: u, Channel: ch, TTL: time.Hour, Data: []byte(data)}
}

func mustRegister(t testing.TB, s *Store, u push.UAID, ch push.ChannelID) {
	t.Helper()
	if err := s.Register(context.Background(), Channel{UAID: u, ID: ch}); err != nil {
		t.Fatal(err)
	}
}

func mustAppend(t testing.TB, s *Store, m Message) Message {
	t.Helper()
	got, err := s.Append(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func datas(ms []Message) string {
	var b []string
	for _, m := range ms {
		b = append(b, string(m.Data))
	}
	return strings.Join(b, ",")
}

func mustMessages(t testing.TB, s *Store, u push.UAID) []Message {
	t.Helper()
	ms, err := s.Messages(u, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

func checkDevice(t testing.TB, s *Store, u push.UAID, waiting, channels int) {
	t.Helper()
	d, ok, err := s.Device(u)
	if err != nil || !ok {
		t.Fatalf("Device(%v) = %v, %v", u, ok, err)
	}
	if d.Waiting != waiting || d.Channels != channels {
		t.Errorf("device %v: waiting %d channels %d, want %d %d", u, d.Waiting, d.Channels, waiting, channels)
	}
}

func checkStats(t testing.TB, s *Store, want Stats) {
	t.Helper()
	got, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("Stats() = %+v, want %+v", got, want)
	}
}

// metricValue reads one series from the registry.
func metricValue(t testing.TB, r *metrics.Registry, series string) float64 { return r.Value(series) }

func deletedMetric(t testing.TB, r *metrics.Registry, reason string) float64 {
	return metricValue(t, r, fmt.Sprintf(`pushrelay_store_messages_deleted_total{reason=%q}`, reason))
}

// ---- behaviour ----

func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	reg := metrics.NewRegistry()
	s := openTest(t, Options{Metrics: reg})
	u, ch := uaid(1), chid(1)
	key := []byte{4, 1, 2, 3}
	if err := s.Register(ctx, Channel{UAID: u, ID: ch, Key: key}); err != nil {
		t.Fatal(err)
	}
	c, ok, err := s.Channel(u, ch)
	if err != nil || !ok || string(c.Key) != string(key) || c.Created.IsZero() {
		t.Fatalf("Channel = %+v, %v, %v", c, ok, err)
	}
	in := Message{
		UAID: u, Channel: ch, TTL: time.Minute, Urgency: push.UrgencyLow, Version: 7,
		Encoding: "aes128gcm", Data: []byte("one"),
	}
	m1 := mustAppend(t, s, in)
	if m1.Seq == 0 || m1.Received.IsZero() || !m1.Expiry.Equal(m1.Received.Add(time.Minute)) {
		t.Fatalf("Append returned %+v", m1)
	}
	m2 := mustAppend(t, s, msg(u, ch, "two"))
	m3 := mustAppend(t, s, msg(u, ch, "three"))
	if !(m1.Seq < m2.Seq && m2.Seq < m3.Seq) {
		t.Fatalf("seqs not increasing: %d %d %d", m1.Seq, m2.Seq, m3.Seq)
	}
	ms := mustMessages(t, s, u)
	if datas(ms) != "one,two,three" || !messagesEqual(ms[0], m1) {
		t.Fatalf("Messages = %s / %+v", datas(ms), ms[0])
	}
	checkDevice(t, s, u, 3, 1)
	checkStats(t, s, Stats{Devices: 1, Channels: 1, Waiting: 3})

	n, err := s.Ack(ctx, u, m1.Seq, m3.Seq, 999999)
	if err != nil || n != 2 {
		t.Fatalf("Ack = %d, %v", n, err)
	}
	if n, _ := s.Ack(ctx, u, m1.Seq); n != 0 {
		t.Errorf("second Ack of same seq = %d", n)
	}
	if got := datas(mustMessages(t, s, u)); got != "two" {
		t.Errorf("after ack: %s", got)
	}
	checkDevice(t, s, u, 1, 1)
	checkStats(t, s, Stats{Devices: 1, Channels: 1, Waiting: 1})
	if v := metricValue(t, reg, "pushrelay_store_messages_stored_total"); v != 3 {
		t.Errorf("stored metric %v", v)
	}
	if v := deletedMetric(t, reg, "acked"); v != 2 {
		t.Errorf("acked metric %v", v)
	}
	if v := metricValue(t, reg, "pushrelay_store_messages_waiting"); v != 1 {
		t.Errorf("waiting gauge %v", v)
	}
	if v := metricValue(t, reg, "pushrelay_store_commits_total"); v < 5 {
		t.Errorf("commits metric %v", v)
	}

	// Returned data never aliases bbolt's memory: it survives Close.
	ms = mustMessages(t, s, u)
	s.Close()
	if string(ms[0].Data) != "two" {
		t.Errorf("data changed after close: %q", ms[0].Data)
	}
}

func TestAppendRejections(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	u := uaid(1)
	if _, err := s.Append(ctx, msg(u, chid(1), "x")); !errors.Is(err, ErrNoChannel) {
		t.Errorf("append to unknown device: %v", err)
	}
	mustRegister(t, s, u, chid(1))
	if _, err := s.Append(ctx, msg(u, chid(2), "x")); !errors.Is(err, ErrNoChannel) {
		t.Errorf("append to unknown channel: %v", err)
	}
	m := msg(u, chid(1), "x")
	m.TTL = 0
	if _, err := s.Append(ctx, m); !errors.Is(err, ErrZeroTTL) {
		t.Errorf("ttl 0: %v", err)
	}
	m.TTL = -time.Second
	if _, err := s.Append(ctx, m); !errors.Is(err, ErrZeroTTL) {
		t.Errorf("ttl < 0: %v", err)
	}
	m = msg(u, chid(1), "x")
	m.Topic = strings.Repeat("t", MaxTopicLen+1)
	if _, err := s.Append(ctx, m); !errors.Is(err, ErrBadMessage) {
		t.Errorf("long topic: %v", err)
	}
	checkStats(t, s, Stats{Devices: 1, Channels: 1})

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Append(cctx, msg(u, chid(1), "x")); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled ctx: %v", err)
	}
	checkStats(t, s, Stats{Devices: 1, Channels: 1})
}

func TestOrderingAndPaging(t *testing.T) {
	s := openTest(t, Options{})
	a, b := uaid(1), uaid(2)
	mustRegister(t, s, a, chid(1))
	mustRegister(t, s, a, chid(2))
	mustRegister(t, s, b, chid(1))
	var want []string
	for i := range 20 {
		ch := chid(byte(1 + i%2))
		mustAppend(t, s, msg(a, ch, fmt.Sprint(i)))
		mustAppend(t, s, msg(b, chid(1), fmt.Sprint("b", i)))
		want = append(want, fmt.Sprint(i))
	}
	all := mustMessages(t, s, a)
	if datas(all) != strings.Join(want, ",") {
		t.Fatalf("order: %s", datas(all))
	}
	// Page through with afterSeq and limit.
	var got []string
	var after uint64
	for {
		page, err := s.Messages(a, after, 7)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		if len(page) > 7 {
			t.Fatalf("page of %d", len(page))
		}
		for _, m := range page {
			got = append(got, string(m.Data))
		}
		after = page[len(page)-1].Seq
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("paged: %v", got)
	}
	if ms, _ := s.Messages(a, ^uint64(0), 0); len(ms) != 0 {
		t.Errorf("after max seq: %d", len(ms))
	}
	if got := len(mustMessages(t, s, b)); got != 20 {
		t.Errorf("b has %d", got)
	}
}

func TestTopicReplacement(t *testing.T) {
	reg := metrics.NewRegistry()
	s := openTest(t, Options{Metrics: reg})
	u := uaid(1)
	mustRegister(t, s, u, chid(1))
	mustRegister(t, s, u, chid(2))
	withTopic := func(ch push.ChannelID, topic, data string) Message {
		m := msg(u, ch, data)
		m.Topic = topic
		return m
	}
	first := mustAppend(t, s, withTopic(chid(1), "weather", "rain"))
	mustAppend(t, s, msg(u, chid(1), "plain"))
	mustAppend(t, s, withTopic(chid(2), "weather", "other-channel"))
	second := mustAppend(t, s, withTopic(chid(1), "weather", "sun"))
	if second.Seq <= first.Seq {
		t.Errorf("replacement did not get a new seq")
	}
	if got := datas(mustMessages(t, s, u)); got != "plain,other-channel,sun" {
		t.Errorf("messages: %s", got)
	}
	checkDevice(t, s, u, 3, 2)
	checkStats(t, s, Stats{Devices: 1, Channels: 2, Waiting: 3})
	if v := deletedMetric(t, reg, "replaced_topic"); v != 1 {
		t.Errorf("replaced_topic metric %v", v)
	}
	// After the replacement is acked, the topic is free again.
	if n, _ := s.Ack(context.Background(), u, second.Seq); n != 1 {
		t.Fatal("ack failed")
	}
	mustAppend(t, s, withTopic(chid(1), "weather", "snow"))
	if got := datas(mustMessages(t, s, u)); got != "plain,other-channel,snow" {
		t.Errorf("messages: %s", got)
	}
	if v := deletedMetric(t, reg, "replaced_topic"); v != 1 {
		t.Errorf("replaced_topic metric %v after ack", v)
	}
}

func TestPerUAIDCapDropsOldest(t *testing.T) {
	reg := metrics.NewRegistry()
	s := openTest(t, Options{Metrics: reg, MaxMessagesPerUAID: 3})
	u, other := uaid(1), uaid(2)
	mustRegister(t, s, u, chid(1))
	mustRegister(t, s, other, chid(1))
	mustAppend(t, s, msg(other, chid(1), "o1"))
	for i := 1; i <= 5; i++ {
		mustAppend(t, s, msg(u, chid(1), fmt.Sprint("m", i)))
	}
	if got := datas(mustMessages(t, s, u)); got != "m3,m4,m5" {
		t.Errorf("messages: %s", got)
	}
	if got := datas(mustMessages(t, s, other)); got != "o1" {
		t.Errorf("other device touched: %s", got)
	}
	checkDevice(t, s, u, 3, 1)
	checkStats(t, s, Stats{Devices: 2, Channels: 2, Waiting: 4})
	if v := deletedMetric(t, reg, "dropped_cap"); v != 2 {
		t.Errorf("dropped_cap metric %v", v)
	}
}

func TestExpiryAndSweep(t *testing.T) {
	ctx := context.Background()
	reg := metrics.NewRegistry()
	clk := newClock()
	s := openTest(t, Options{Metrics: reg, Now: clk.Now})
	s.sweepChunk = 3 // exercise the multi-commit loop
	a, b := uaid(1), uaid(2)
	mustRegister(t, s, a, chid(1))
	mustRegister(t, s, b, chid(1))
	add := func(u push.UAID, ttl time.Duration, data, topic string) {
		m := msg(u, chid(1), data)
		m.TTL, m.Topic = ttl, topic
		mustAppend(t, s, m)
	}
	for i := range 4 {
		add(a, time.Second, fmt.Sprint("a-short", i), "")
		add(b, time.Second, fmt.Sprint("b-short", i), "")
	}
	add(a, time.Second, "a-topic", "tp")
	add(a, time.Hour, "a-long", "")
	add(b, time.Hour, "b-long", "")
	checkStats(t, s, Stats{Devices: 2, Channels: 2, Waiting: 11})

	clk.Add(time.Second) // Expiry == now counts as expired
	if got := datas(mustMessages(t, s, a)); got != "a-long" {
		t.Errorf("expired not hidden: %s", got)
	}
	checkDevice(t, s, a, 6, 1) // hidden, still stored until swept

	n, err := s.Sweep(ctx)
	if err != nil || n != 9 {
		t.Fatalf("Sweep = %d, %v", n, err)
	}
	checkDevice(t, s, a, 1, 1)
	checkDevice(t, s, b, 1, 1)
	checkStats(t, s, Stats{Devices: 2, Channels: 2, Waiting: 2})
	if v := deletedMetric(t, reg, "expired"); v != 9 {
		t.Errorf("expired metric %v", v)
	}
	if n, err := s.Sweep(ctx); err != nil || n != 0 {
		t.Errorf("second Sweep = %d, %v", n, err)
	}
	// The swept topic message's index row is gone: a new message with the
	// topic is not a replacement.
	add(a, time.Hour, "a-topic2", "tp")
	if v := deletedMetric(t, reg, "replaced_topic"); v != 0 {
		t.Errorf("replaced_topic %v", v)
	}
	if got := datas(mustMessages(t, s, a)); got != "a-long,a-topic2" {
		t.Errorf("after sweep: %s", got)
	}
}

func TestRunSweeps(t *testing.T) {
	clk := newClock()
	s := openTest(t, Options{Now: clk.Now, SweepInterval: 10 * time.Millisecond})
	u := uaid(1)
	mustRegister(t, s, u, chid(1))
	m := msg(u, chid(1), "x")
	m.TTL = time.Second
	mustAppend(t, s, m)
	clk.Add(time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, _ := s.Stats()
		if st.Waiting == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run did not sweep")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
	// Run also ends when the store closes.
	go func() { done <- s.Run(context.Background()) }()
	s.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after Close = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop on Close")
	}
}

func TestRegisterRules(t *testing.T) {
	ctx := context.Background()
	created := time.Unix(1_600_000_000, 0)
	s := openTest(t, Options{MaxChannelsPerUAID: 2})
	u := uaid(1)
	c := Channel{UAID: u, ID: chid(1), Created: created, Key: []byte("k1")}
	if err := s.Register(ctx, c); err != nil {
		t.Fatal(err)
	}
	d, ok, _ := s.Device(u)
	if !ok || !d.Created.Equal(created) || !d.LastSeen.Equal(created) {
		t.Errorf("device created as %+v", d)
	}
	if err := s.Register(ctx, c); err != nil {
		t.Errorf("same channel, same key: %v", err)
	}
	c2 := c
	c2.Key = []byte("k2")
	if err := s.Register(ctx, c2); !errors.Is(err, ErrChannelConflict) {
		t.Errorf("same channel, other key: %v", err)
	}
	c2.Key = nil
	if err := s.Register(ctx, c2); !errors.Is(err, ErrChannelConflict) {
		t.Errorf("same channel, no key: %v", err)
	}
	mustRegister(t, s, u, chid(2))
	if err := s.Register(ctx, Channel{UAID: u, ID: chid(3)}); !errors.Is(err, ErrTooManyChannels) {
		t.Errorf("third channel: %v", err)
	}
	checkDevice(t, s, u, 0, 2)
	checkStats(t, s, Stats{Devices: 1, Channels: 2})
	chs, err := s.Channels(u)
	if err != nil || len(chs) != 2 || chs[0].ID != chid(1) || chs[1].ID != chid(2) || string(chs[0].Key) != "k1" || chs[1].Key != nil {
		t.Errorf("Channels = %+v, %v", chs, err)
	}
	if chs, _ := s.Channels(uaid(9)); len(chs) != 0 {
		t.Errorf("unknown device has channels")
	}
	if _, ok, _ := s.Channel(u, chid(3)); ok {
		t.Errorf("rejected channel exists")
	}
}

func TestUnregister(t *testing.T) {
	ctx := context.Background()
	reg := metrics.NewRegistry()
	s := openTest(t, Options{Metrics: reg})
	u := uaid(1)
	mustRegister(t, s, u, chid(1))
	mustRegister(t, s, u, chid(2))
	for i := range 3 {
		m := msg(u, chid(1), fmt.Sprint("one", i))
		m.Topic = fmt.Sprint("t", i)
		mustAppend(t, s, m)
		mustAppend(t, s, msg(u, chid(2), fmt.Sprint("two", i)))
	}
	ok, err := s.Unregister(ctx, u, chid(1))
	if err != nil || !ok {
		t.Fatalf("Unregister = %v, %v", ok, err)
	}
	if got := datas(mustMessages(t, s, u)); got != "two0,two1,two2" {
		t.Errorf("messages: %s", got)
	}
	checkDevice(t, s, u, 3, 1)
	checkStats(t, s, Stats{Devices: 1, Channels: 1, Waiting: 3})
	if v := deletedMetric(t, reg, "unregistered"); v != 3 {
		t.Errorf("unregistered metric %v", v)
	}
	if ok, err := s.Unregister(ctx, u, chid(1)); ok || err != nil {
		t.Errorf("second Unregister = %v, %v", ok, err)
	}
	if _, err := s.Append(ctx, msg(u, chid(1), "x")); !errors.Is(err, ErrNoChannel) {
		t.Errorf("append after unregister: %v", err)
	}
	// Re-registering starts clean: the old topics are gone.
	mustRegister(t, s, u, chid(1))
	m := msg(u, chid(1), "again")
	m.Topic = "t0"
	mustAppend(t, s, m)
	if v := deletedMetric(t, reg, "replaced_topic"); v != 0 {
		t.Errorf("stale topic row replaced something")
	}
}

func TestDeleteDevice(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	u, other := uaid(1), uaid(2)
	for _, d := range []push.UAID{u, other} {
		mustRegister(t, s, d, chid(1))
		mustRegister(t, s, d, chid(2))
		for i := range 3 {
			m := msg(d, chid(byte(1+i%2)), "x")
			m.Topic = fmt.Sprint("t", i)
			mustAppend(t, s, m)
		}
	}
	if err := setWake(s, u, false, []byte("wake")); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteDevice(ctx, u); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.Device(u); ok {
		t.Error("device still there")
	}
	if chs, _ := s.Channels(u); len(chs) != 0 {
		t.Errorf("channels left: %d", len(chs))
	}
	if ms := mustMessages(t, s, u); len(ms) != 0 {
		t.Errorf("messages left: %d", len(ms))
	}
	checkDevice(t, s, other, 3, 2)
	checkStats(t, s, Stats{Devices: 1, Channels: 2, Waiting: 3})
	if err := s.DeleteDevice(ctx, u); err != nil {
		t.Errorf("deleting again: %v", err)
	}
	// No index rows survive for u.
	if err := s.view(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketChannels, bucketMessages, bucketTopics} {
			if keys := keysWithPrefix(tx.Bucket(b), u[:]); len(keys) != 0 {
				t.Errorf("bucket %s has %d rows for deleted device", b, len(keys))
			}
		}
		return tx.Bucket(bucketExpiry).ForEach(func(k, _ []byte) error {
			if string(k[8:24]) == string(u[:]) {
				t.Errorf("expiry row left for deleted device")
			}
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
}

func TestAppServerDelete(t *testing.T) {
	ctx := context.Background()
	reg := metrics.NewRegistry()
	s := openTest(t, Options{Metrics: reg})
	u := uaid(1)
	mustRegister(t, s, u, chid(1))
	mustRegister(t, s, u, chid(2))
	m := mustAppend(t, s, msg(u, chid(1), "x"))
	if ok, err := s.Delete(ctx, u, chid(2), m.Seq); ok || err != nil {
		t.Errorf("delete through the wrong channel = %v, %v", ok, err)
	}
	if ok, err := s.Delete(ctx, uaid(2), chid(1), m.Seq); ok || err != nil {
		t.Errorf("delete through the wrong device = %v, %v", ok, err)
	}
	if ok, err := s.Delete(ctx, u, chid(1), m.Seq); !ok || err != nil {
		t.Errorf("Delete = %v, %v", ok, err)
	}
	if ok, _ := s.Delete(ctx, u, chid(1), m.Seq); ok {
		t.Error("deleted twice")
	}
	checkDevice(t, s, u, 0, 2)
	checkStats(t, s, Stats{Devices: 1, Channels: 2})
	if v := deletedMetric(t, reg, "deleted"); v != 1 {
		t.Errorf("deleted metric %v", v)
	}
}

func TestTouchAndWake(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	u := uaid(1)
	if err := s.Touch(ctx, u, time.Now()); err != nil {
		t.Errorf("Touch of unknown device: %v", err)
	}
	if _, ok, _ := s.Device(u); ok {
		t.Error("Touch created a device")
	}
	if err := setWake(s, u, false, []byte("w")); !errors.Is(err, ErrNoDevice) {
		t.Errorf("UpdateWake of unknown device: %v", err)
	}
	mustRegister(t, s, u, chid(1))
	seen := time.Unix(1_800_000_000, 5)
	if err := s.Touch(ctx, u, seen); err != nil {
		t.Fatal(err)
	}
	wake := []byte{1, 2, 3}
	if err := setWake(s, u, false, wake); err != nil {
		t.Fatal(err)
	}
	wake[0] = 9 // the store keeps its own copy
	d, _, _ := s.Device(u)
	if !d.LastSeen.Equal(seen) || string(d.Wake) != "\x01\x02\x03" || d.Channels != 1 {
		t.Errorf("device %+v", d)
	}
	// fn sees the current blob; its error rejects the update.
	errNo := errors.New("no")
	err := s.UpdateWake(ctx, u, false, func(old []byte) ([]byte, error) {
		if string(old) != "\x01\x02\x03" {
			t.Errorf("fn got %x", old)
		}
		return nil, errNo
	})
	if !errors.Is(err, errNo) {
		t.Errorf("fn error: %v", err)
	}
	if d, _, _ := s.Device(u); string(d.Wake) != "\x01\x02\x03" {
		t.Errorf("rejected update wrote %x", d.Wake)
	}
	if err := setWake(s, u, false, nil); err != nil {
		t.Fatal(err)
	}
	if d, _, _ := s.Device(u); d.Wake != nil {
		t.Errorf("wake not cleared: %x", d.Wake)
	}
	// create makes a record for a device that said hello but has not
	// registered, counted like any other.
	v := uaid(7)
	if err := setWake(s, v, true, []byte("new")); err != nil {
		t.Fatal(err)
	}
	d, ok, _ := s.Device(v)
	if !ok || string(d.Wake) != "new" || d.Channels != 0 || d.Created.IsZero() {
		t.Errorf("created device %+v ok=%v", d, ok)
	}
	if st, _ := s.Stats(); st.Devices != 2 {
		t.Errorf("devices %d, want 2", st.Devices)
	}
}

func setWake(s *Store, u push.UAID, create bool, blob []byte) error {
	return s.UpdateWake(context.Background(), u, create, func([]byte) ([]byte, error) { return blob, nil })
}

// A rejected op in a batch leaves the others alone, and an op that fails
// hard has its writes rolled back while the rest of its batch commits.
func TestBatchIsolation(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	u := uaid(1)
	mustRegister(t, s, u, chid(1))

	// Park the committer so the next ops form one batch.
	release := make(chan struct{})
	parked := make(chan struct{})
	go s.do(ctx, func(*txn) error { close(parked); <-release; return nil })
	<-parked

	var wg sync.WaitGroup
	results := make([]error, 6)
	for i := range results {
		wg.Go(func() {
			switch i {
			case 0:
				_, results[i] = s.Append(ctx, msg(u, chid(9), "rejected"))
			case 1:
				results[i] = s.do(ctx, func(t *txn) error {
					if err := t.devices.Put(deviceKey(uaid(7)), encodeDevice(Device{})); err != nil {
						return err
					}
					return errors.New("disk on fire")
				})
			default:
				_, results[i] = s.Append(ctx, msg(u, chid(1), "ok"))
			}
		})
	}
	for len(s.queue) < len(results) {
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	if !errors.Is(results[0], ErrNoChannel) {
		t.Errorf("rejected op: %v", results[0])
	}
	if results[1] == nil || !strings.Contains(results[1].Error(), "disk on fire") {
		t.Errorf("failing op: %v", results[1])
	}
	for i, err := range results[2:] {
		if err != nil {
			t.Errorf("op %d: %v", i+2, err)
		}
	}
	if _, ok, _ := s.Device(uaid(7)); ok {
		t.Error("failed op's write was committed")
	}
	if got := len(mustMessages(t, s, u)); got != 4 {
		t.Errorf("%d messages committed, want 4", got)
	}
	checkStats(t, s, Stats{Devices: 1, Channels: 1, Waiting: 4})
}

// OnStored reports each commit's stored messages once, in seq order, as
// they stand when the batch commits: not a message a later op of the same
// batch replaced by topic or dropped for the cap, not a rejected one, not
// the writes of an op that failed and was rolled back.
func TestOnStoredReportsCommits(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{MaxMessagesPerUAID: 3})
	u := uaid(1)
	mustRegister(t, s, u, chid(1))
	reports := make(chan []Message, 10)
	s.OnStored(func(ms []Message) { reports <- ms })
	next := func() []Message {
		t.Helper()
		select {
		case ms := <-reports:
			return ms
		case <-time.After(5 * time.Second):
			t.Fatal("no report")
			return nil
		}
	}
	withTopic := func(topic, data string) Message {
		m := msg(u, chid(1), data)
		m.Topic = topic
		return m
	}

	// Park the committer so the next ops form one batch, queued in order.
	release := make(chan struct{})
	parked := make(chan struct{})
	go s.do(ctx, func(*txn) error { close(parked); <-release; return nil })
	<-parked
	ops := []func() (Message, error){
		func() (Message, error) { return s.Append(ctx, withTopic("t", "a")) },
		func() (Message, error) { return s.Append(ctx, msg(u, chid(1), "plain")) },
		func() (Message, error) { return s.Append(ctx, withTopic("t", "b")) }, // replaces a
		func() (Message, error) { return s.Append(ctx, msg(u, chid(9), "rejected")) },
		func() (Message, error) {
			return Message{}, s.do(ctx, func(t *txn) error { return errors.New("disk on fire") })
		},
		func() (Message, error) { return s.Append(ctx, msg(u, chid(1), "c")) },
		func() (Message, error) { return s.Append(ctx, msg(u, chid(1), "d")) }, // the cap drops plain
	}
	got := make([]Message, len(ops))
	errs := make([]error, len(ops))
	var wg sync.WaitGroup
	for i, op := range ops {
		wg.Go(func() { got[i], errs[i] = op() })
		for len(s.queue) < i+1 {
			time.Sleep(time.Millisecond)
		}
	}
	close(release)
	wg.Wait()
	for _, i := range []int{0, 1, 2, 5, 6} {
		if errs[i] != nil {
			t.Fatalf("op %d: %v", i, errs[i])
		}
	}
	first := next()
	if d := datas(first); d != "b,c,d" {
		t.Fatalf("reported %q, want b,c,d", d)
	}
	for i, j := range []int{2, 5, 6} {
		r := first[i]
		if r.Seq != got[j].Seq || r.UAID != u || r.Channel != chid(1) || r.Expiry.IsZero() {
			t.Errorf("reported %+v for op %d's %+v", r, j, got[j])
		}
	}
	if first[0].Topic != "t" {
		t.Errorf("topic %q not reported", first[0].Topic)
	}
	if d := datas(mustMessages(t, s, u)); d != "b,c,d" {
		t.Fatalf("stored %q", d)
	}

	// The reported data is the store's copy, not the caller's buffer.
	buf := []byte("mine")
	mustAppend(t, s, Message{UAID: u, Channel: chid(1), TTL: time.Hour, Data: buf})
	copy(buf, "XXXX")
	if d := datas(next()); d != "mine" {
		t.Fatalf("second report %q", d)
	}

	// Ops that store nothing are not reported, and nil unregisters.
	if _, err := s.Ack(ctx, u, got[5].Seq); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, s, msg(u, chid(1), "e"))
	if d := datas(next()); d != "e" {
		t.Fatalf("third report %q", d)
	}
	s.OnStored(nil)
	mustAppend(t, s, msg(u, chid(1), "f"))
	select {
	case ms := <-reports:
		t.Fatalf("reported %q after OnStored(nil)", datas(ms))
	case <-time.After(50 * time.Millisecond):
	}
}

func TestCloseIdempotentAndErrClosed(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	u := uaid(1)
	mustRegister(t, s, u, chid(1))
	for range 3 {
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	if _, err := s.Append(ctx, msg(u, chid(1), "x")); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close: %v", err)
	}
	if err := s.Register(ctx, Channel{UAID: u, ID: chid(2)}); !errors.Is(err, ErrClosed) {
		t.Errorf("Register after Close: %v", err)
	}
	if _, err := s.Messages(u, 0, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("Messages after Close: %v", err)
	}
	if _, _, err := s.Device(u); !errors.Is(err, ErrClosed) {
		t.Errorf("Device after Close: %v", err)
	}
	if _, err := s.Stats(); !errors.Is(err, ErrClosed) {
		t.Errorf("Stats after Close: %v", err)
	}
	if _, err := s.Sweep(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Sweep after Close: %v", err)
	}
	// The file lock was released.
	s2 := openTest(t, Options{Path: path, LockTimeout: 100 * time.Millisecond})
	checkStats(t, s2, Stats{Devices: 1, Channels: 1})
}

// Appends racing Close never hang; every one that succeeded is on disk.
func TestAppendDuringClose(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(Options{Path: path, QueueSize: 8, MaxBatch: 4, MaxMessagesPerUAID: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	u := uaid(1)
	mustRegister(t, s, u, chid(1))
	var (
		mu   sync.Mutex
		acks []uint64
		wg   sync.WaitGroup
	)
	for range 32 {
		wg.Go(func() {
			for {
				m, err := s.Append(ctx, msg(u, chid(1), "x"))
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				mu.Lock()
				acks = append(acks, m.Seq)
				mu.Unlock()
			}
		})
	}
	time.Sleep(50 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("appenders hang after Close")
	}
	s2 := openTest(t, Options{Path: path})
	checkAllPresent(t, s2, u, acks)
	st, _ := s2.Stats()
	if st.Waiting != int64(len(acks)) {
		t.Errorf("waiting %d, acked appends %d", st.Waiting, len(acks))
	}
}

func checkAllPresent(t *testing.T, s *Store, u push.UAID, seqs []uint64) {
	t.Helper()
	ms := mustMessages(t, s, u)
	have := make(map[uint64]bool, len(ms))
	for _, m := range ms {
		have[m.Seq] = true
	}
	missing := 0
	for _, seq := range seqs {
		if !have[seq] {
			missing++
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d acknowledged messages lost", missing, len(seqs))
	}
	if len(seqs) == 0 {
		t.Error("nothing was appended")
	}
}

func TestConcurrentDurability(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "store.db")
	reg := metrics.NewRegistry()
	s, err := Open(Options{Path: path, Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 40, 25
	for w := range writers {
		mustRegister(t, s, uaid(byte(w)), chid(1))
	}
	seqs := make([][]uint64, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				m, err := s.Append(ctx, msg(uaid(byte(w)), chid(1), fmt.Sprint(w, "-", i)))
				if err != nil {
					t.Error(err)
					return
				}
				seqs[w] = append(seqs[w], m.Seq)
			}
		})
	}
	wg.Wait()
	commits := metricValue(t, reg, "pushrelay_store_commits_total")
	t.Logf("%d appends in %v commits", writers*each, commits)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2 := openTest(t, Options{Path: path})
	checkStats(t, s2, Stats{Devices: writers, Channels: writers, Waiting: writers * each})
	for w := range writers {
		ms := mustMessages(t, s2, uaid(byte(w)))
		if len(ms) != each {
			t.Fatalf("writer %d: %d messages", w, len(ms))
		}
		for i, m := range ms {
			if m.Seq != seqs[w][i] || string(m.Data) != fmt.Sprint(w, "-", i) {
				t.Fatalf("writer %d message %d: seq %d data %q", w, i, m.Seq, m.Data)
			}
		}
	}
	// Seqs keep growing across reopen.
	mustRegister(t, s2, uaid(0), chid(1))
	m := mustAppend(t, s2, msg(uaid(0), chid(1), "after"))
	if m.Seq <= seqs[0][len(seqs[0])-1] {
		t.Errorf("seq went backwards after reopen: %d", m.Seq)
	}
}

func TestLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	openTest(t, Options{Path: path})
	start := time.Now()
	s, err := Open(Options{Path: path, LockTimeout: 100 * time.Millisecond})
	if err == nil {
		s.Close()
		t.Fatal("second Open succeeded")
	}
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "data dir in use") {
		t.Errorf("second Open: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("second Open took %v", d)
	}
}

func TestOptionsValidate(t *testing.T) {
	if _, err := Open(Options{}); err == nil {
		t.Error("Open without a path succeeded")
	}
	if err := (Options{Path: "x", MaxBatch: -1}).Validate(); err == nil {
		t.Error("negative MaxBatch accepted")
	}
	if _, err := Open(Options{Path: filepath.Join(t.TempDir(), "missing", "store.db")}); err == nil {
		t.Error("Open in a missing directory succeeded")
	}
}

func TestWakeStates(t *testing.T) {
	s := openTest(t, Options{})
	a, b, none := uaid(1), uaid(2), uaid(3)
	mustRegister(t, s, a, chid(1))
	mustRegister(t, s, b, chid(1))
	mustAppend(t, s, msg(b, chid(1), "x"))
	if err := setWake(s, a, false, []byte("wa")); err != nil {
		t.Fatal(err)
	}
	type st struct {
		ok, waiting bool
		wake        string
	}
	var got []st
	err := s.WakeStates([]push.UAID{a, b, none}, func(i int, ok bool, wake []byte, waiting bool) {
		got = append(got, st{ok, waiting, string(wake)})
	})
	want := []st{{true, false, "wa"}, {true, true, ""}, {false, false, ""}}
	if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("WakeStates = %v %v, want %v", got, err, want)
	}
}

// EachWake lists the devices with a wake blob, and only those.
func TestEachWake(t *testing.T) {
	s := openTest(t, Options{})
	a, b, c := uaid(1), uaid(2), uaid(3)
	for _, u := range []push.UAID{a, b, c} {
		mustRegister(t, s, u, chid(1))
	}
	if err := setWake(s, a, false, []byte("wa")); err != nil {
		t.Fatal(err)
	}
	if err := setWake(s, c, false, []byte("wc")); err != nil {
		t.Fatal(err)
	}
	var got []string
	if err := s.EachWake(func(u push.UAID, wake []byte) { got = append(got, u.String()+"="+string(wake)) }); err != nil {
		t.Fatal(err)
	}
	want := []string{a.String() + "=wa", c.String() + "=wc"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("EachWake = %v, want %v", got, want)
	}
}

// A store file keeps its epoch across opens; another file has another.
func TestEpoch(t *testing.T) {
	dir := t.TempDir()
	open := func(name string) *Store {
		s, err := Open(Options{Path: filepath.Join(dir, name)})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	a := open("a.db")
	e := a.Epoch()
	if len(e) != EpochLen || bytes.Equal(e, make([]byte, EpochLen)) {
		t.Fatalf("epoch %x", e)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	a = open("a.db")
	defer a.Close()
	if !bytes.Equal(a.Epoch(), e) {
		t.Errorf("epoch %x after reopening, was %x", a.Epoch(), e)
	}
	b := open("b.db")
	defer b.Close()
	if bytes.Equal(b.Epoch(), e) {
		t.Errorf("two files share the epoch %x", e)
	}
}
