package store

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
	bolt "go.etcd.io/bbolt"
)

func originMsg(u push.UAID, ch push.ChannelID, data string, id byte, ttl time.Duration) Message {
	m := msg(u, ch, data)
	m.TTL = ttl
	m.Origin = push.ParentOrigin([]byte{0x0e, id})
	return m
}

// originRows counts the origin-key index and the expiry rows.
func originRows(t *testing.T, s *Store) (origins, expiry int) {
	t.Helper()
	if err := s.view(func(tx *bolt.Tx) error {
		// Not Stats().KeyN: it counts the committed pages only, and the
		// committer's transaction (the write-ahead log) holds more.
		origins, expiry = keyCount(tx.Bucket(bucketOrigins)), keyCount(tx.Bucket(bucketExpiry))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return origins, expiry
}

// keyCount counts b's keys.
func keyCount(b *bolt.Bucket) int {
	n := 0
	b.ForEach(func(_, _ []byte) error { n++; return nil })
	return n
}

func appendBatch(t *testing.T, s *Store, ms ...Message) []AppendResult {
	t.Helper()
	rs, err := s.AppendBatch(context.Background(), ms)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range rs {
		if r.Err != nil {
			t.Fatalf("message %d: %v", i, r.Err)
		}
	}
	return rs
}

// The same origin key is stored once, within one batch, across batches
// and across a restart; the second append reports the first's seq while
// it waits, and "no longer waiting" once it was acked; the key outlives
// the ack until the TTL ends, and the sweep then removes it.
func TestOriginIndex(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(Options{Path: path, Now: clk.Now, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	u := uaid(1)
	mustRegister(t, s, u, chid(1))

	// Within one batch: the second is a duplicate of the first; a message
	// without an origin key is never one.
	rs := appendBatch(t, s,
		originMsg(u, chid(1), "a", 1, time.Minute),
		originMsg(u, chid(1), "a-again", 1, time.Minute),
		msg(u, chid(1), "plain"), msg(u, chid(1), "plain"),
		originMsg(u, chid(1), "b", 2, time.Hour))
	if rs[0].Duplicate || !rs[1].Duplicate || !rs[1].Waiting || rs[1].Message.Seq != rs[0].Message.Seq {
		t.Fatalf("in-batch duplicate: %+v / %+v", rs[0], rs[1])
	}
	if rs[2].Duplicate || rs[3].Duplicate || rs[4].Duplicate {
		t.Fatalf("not duplicates: %+v %+v %+v", rs[2], rs[3], rs[4])
	}
	if got := datas(mustMessages(t, s, u)); got != "a,plain,plain,b" {
		t.Fatalf("stored %s", got)
	}
	// Across batches, and through Append.
	rs = appendBatch(t, s, originMsg(u, chid(1), "b-again", 2, time.Hour))
	if !rs[0].Duplicate || !rs[0].Waiting || rs[0].Message.Seq != 4 {
		t.Fatalf("cross-batch duplicate: %+v", rs[0])
	}
	if m := mustAppend(t, s, originMsg(u, chid(1), "a-3", 1, time.Minute)); m.Seq != 1 {
		t.Fatalf("Append of a duplicate: seq %d", m.Seq)
	}
	// Across a restart, both before and after the ack.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, Options{Path: path, Now: clk.Now})
	rs = appendBatch(t, s, originMsg(u, chid(1), "a-4", 1, time.Minute))
	if !rs[0].Duplicate || !rs[0].Waiting || rs[0].Message.Seq != 1 {
		t.Fatalf("duplicate after restart: %+v", rs[0])
	}
	if n, err := s.Ack(ctx, u, 1, 4); err != nil || n != 2 {
		t.Fatalf("Ack = %d, %v", n, err)
	}
	rs = appendBatch(t, s, originMsg(u, chid(1), "a-5", 1, time.Minute), originMsg(u, chid(1), "b-5", 2, time.Hour))
	for _, r := range rs {
		if !r.Duplicate || r.Waiting {
			t.Fatalf("duplicate of an acked message: %+v", r)
		}
	}
	if got := datas(mustMessages(t, s, u)); got != "plain,plain" {
		t.Fatalf("stored %s", got)
	}
	// Kept after the ack: two origin keys, their expiry rows and the two
	// plain messages' rows.
	if o, e := originRows(t, s); o != 2 || e != 4 {
		t.Fatalf("origins %d, expiry rows %d", o, e)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if r, err := Verify(path, 0); err != nil || len(r.Problems) != 0 {
		t.Fatalf("verify: %v %+v", err, r)
	}
	s = openTest(t, Options{Path: path, Now: clk.Now})

	// Past the first key's TTL it is no longer a duplicate (even before
	// the sweep), and the sweep removes only what ended.
	clk.Add(time.Minute)
	rs = appendBatch(t, s, originMsg(u, chid(1), "a-new", 1, time.Minute))
	if rs[0].Duplicate {
		t.Fatalf("expired key still a duplicate: %+v", rs[0])
	}
	if _, err := s.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	// The old row of key 1 was swept without taking the new one.
	rs = appendBatch(t, s, originMsg(u, chid(1), "a-new-again", 1, time.Minute))
	if !rs[0].Duplicate || !rs[0].Waiting {
		t.Fatalf("sweep removed the renewed key: %+v", rs[0])
	}
	clk.Add(2 * time.Hour)
	if _, err := s.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if o, e := originRows(t, s); o != 0 || e != 0 {
		t.Fatalf("after the TTLs: origins %d, expiry rows %d", o, e)
	}
}

// Origin keys do not pile up: many messages acked at once leave their
// keys until the TTL, and the sweep then leaves none.
func TestOriginIndexBounded(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	s := openTest(t, Options{Now: clk.Now, MaxMessagesPerUAID: 100})
	s.sweepChunk = 7
	u := uaid(1)
	mustRegister(t, s, u, chid(1))
	const n = 300
	for round := range n / 100 {
		ms := make([]Message, 100)
		for i := range ms {
			ms[i] = msg(u, chid(1), "x")
			ms[i].TTL = time.Duration(1+round) * time.Minute
			ms[i].Origin = push.ParentOrigin([]byte{byte(round), byte(i)})
		}
		rs := appendBatch(t, s, ms...)
		seqs := make([]uint64, len(rs))
		for i, r := range rs {
			seqs[i] = r.Message.Seq
		}
		if _, err := s.Ack(ctx, u, seqs...); err != nil {
			t.Fatal(err)
		}
	}
	if o, e := originRows(t, s); o != n || e != n {
		t.Fatalf("origins %d, expiry rows %d, want %d", o, e, n)
	}
	clk.Add(90 * time.Second)
	if _, err := s.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if o, _ := originRows(t, s); o != n-100 {
		t.Fatalf("after the first TTL: %d origins", o)
	}
	clk.Add(time.Hour)
	if _, err := s.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if o, e := originRows(t, s); o != 0 || e != 0 {
		t.Fatalf("after every TTL: origins %d, expiry rows %d", o, e)
	}
}

// Migration 5 adds the origin-key index to a version 4 file, whose
// expiry rows have no origin; its messages are swept as before.
func TestMigrationFromV4(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	now := time.Unix(1_700_000_000, 0)
	u := uaid(1)
	writeRaw(t, path, func(tx *bolt.Tx) error {
		if _, _, err := migrate(tx, migrations[:4]); err != nil {
			return err
		}
		if tx.Bucket(bucketOrigins) != nil {
			t.Error("schema 4 already has origins")
		}
		if err := tx.Bucket(bucketDevices).Put(deviceKey(u), encodeDevice(Device{UAID: u, Created: now, LastSeen: now, Channels: 1})); err != nil {
			return err
		}
		if err := tx.Bucket(bucketChannels).Put(channelKey(u, chid(1)), encodeChannelV1(Channel{Created: now})); err != nil {
			return err
		}
		m := Message{UAID: u, Channel: chid(1), Received: now, TTL: time.Minute, Expiry: now.Add(time.Minute), Data: []byte("old")}
		if err := tx.Bucket(bucketMessages).SetSequence(1); err != nil {
			return err
		}
		if err := tx.Bucket(bucketMessages).Put(messageKey(u, 1), encodeMessage(&m)); err != nil {
			return err
		}
		if err := tx.Bucket(bucketExpiry).Put(expiryKey(timeNanos(m.Expiry), u, 1), nil); err != nil {
			return err
		}
		return putTotals(tx.Bucket(bucketMeta), totals{devices: 1, channels: 1, waiting: 1})
	})
	clk := &fakeClock{t: now}
	s := openTest(t, Options{Path: path, Now: clk.Now})
	if v := fileSchema(t, s); v != schemaVersion() {
		t.Fatalf("schema %d after migration", v)
	}
	rs := appendBatch(t, s, originMsg(u, chid(1), "new", 1, time.Hour), originMsg(u, chid(1), "new", 1, time.Hour))
	if rs[0].Duplicate || !rs[1].Duplicate || rs[0].Message.Seq != 2 {
		t.Fatalf("after migration: %+v", rs)
	}
	clk.Add(time.Minute)
	if n, err := s.Sweep(context.Background()); err != nil || n != 1 {
		t.Fatalf("Sweep = %d, %v", n, err)
	}
	if got := datas(mustMessages(t, s, u)); got != "new" {
		t.Fatalf("stored %s", got)
	}
	checkBuckets(t, s)
}

// Salvage copies the origin keys, acked messages' included, so a message
// re-sent after a salvage is still not stored twice, and the copies still
// end with their TTL.
func TestSalvageOrigins(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src.db"), filepath.Join(dir, "dst.db")
	s, err := Open(Options{Path: src, Now: clk.Now, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	u := uaid(1)
	mustRegister(t, s, u, chid(1))
	rs := appendBatch(t, s, originMsg(u, chid(1), "a", 1, time.Hour), originMsg(u, chid(1), "b", 2, time.Hour))
	if _, err := s.Ack(ctx, u, rs[0].Message.Seq); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := Salvage(src, dst, time.Second)
	if err != nil || rep.Origins != 2 || rep.Messages != 1 {
		t.Fatalf("Salvage = %+v, %v", rep, err)
	}
	s = openTest(t, Options{Path: dst, Now: clk.Now})
	rs = appendBatch(t, s, originMsg(u, chid(1), "a", 1, time.Hour), originMsg(u, chid(1), "b", 2, time.Hour))
	if !rs[0].Duplicate || rs[0].Waiting || !rs[1].Duplicate || !rs[1].Waiting {
		t.Fatalf("after salvage: %+v", rs)
	}
	clk.Add(time.Hour)
	if _, err := s.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if o, e := originRows(t, s); o != 0 || e != 0 {
		t.Fatalf("after the TTL: origins %d, expiry rows %d", o, e)
	}
}

// A local key (a post to this relay) cannot come again: it is not indexed,
// and two posts that somehow carried the same one are both stored.
func TestLocalOriginNotIndexed(t *testing.T) {
	s := openTest(t, Options{})
	u, ch := uaid(1), chid(1)
	if err := s.Register(context.Background(), Channel{UAID: u, ID: ch}); err != nil {
		t.Fatal(err)
	}
	m := msg(u, ch, "post")
	m.TTL = time.Hour
	m.Origin = push.LocalOrigin([16]byte{1, 2, 3})
	rs := appendBatch(t, s, m, m)
	if rs[0].Duplicate || rs[1].Duplicate || rs[0].Message.Seq == rs[1].Message.Seq {
		t.Fatalf("local keys deduplicated: %+v", rs)
	}
	if o, e := originRows(t, s); o != 0 || e != 2 {
		t.Fatalf("%d origin rows and %d expiry rows, want 0 and 2", o, e)
	}
}
