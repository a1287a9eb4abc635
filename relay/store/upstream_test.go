package store

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/push"
	bolt "go.etcd.io/bbolt"
)

func upuaid(n byte) push.UAID { return push.UAID{0xbb, n} }

// Channel records: format 1 (schemas 1 to 5) still decodes; format 2
// carries the key and the upstream's endpoint, each possibly empty, and
// a format 2 record whose lengths do not add up is corrupt.
func TestChannelRecordFormats(t *testing.T) {
	u, id := uaid(1), chid(2)
	created := time.Unix(1_700_000_000, 5)
	long := strings.Repeat("e", MaxEndpointLen)
	for _, c := range []Channel{
		{Created: created},
		{Created: created, Key: []byte{4, 1, 2, 3}},
		{Created: created, Endpoint: "https://push.example/wpush/v2/abc"},
		{Created: created, Key: []byte{4, 9}, Endpoint: long},
	} {
		c.UAID, c.ID = u, id
		v := encodeChannel(c)
		if v[0] != channelV2 {
			t.Fatalf("format %d", v[0])
		}
		got, err := decodeChannel(u, id, v)
		if err != nil || !got.Created.Equal(c.Created) || !bytes.Equal(got.Key, c.Key) || got.Endpoint != c.Endpoint {
			t.Errorf("v2 round trip of %+v: %+v, %v", c, got, err)
		}
		if c.Endpoint != "" {
			continue
		}
		got, err = decodeChannel(u, id, encodeChannelV1(c))
		if err != nil || !got.Created.Equal(c.Created) || !bytes.Equal(got.Key, c.Key) || got.Endpoint != "" {
			t.Errorf("v1 record of %+v: %+v, %v", c, got, err)
		}
	}
	for _, bad := range [][]byte{
		{channelV2, 0, 0, 0, 0, 0, 0, 0, 1},                 // no key length
		{channelV2, 0, 0, 0, 0, 0, 0, 0, 1, 5, 1, 2},        // key longer than the record
		append(encodeChannel(Channel{Endpoint: long}), 'x'), // endpoint too long
		{3, 0, 0, 0, 0, 0, 0, 0, 1},                         // unknown format
		{channelV1, 0, 0, 0},                                // short
	} {
		if _, err := decodeChannel(u, id, bad); !errors.Is(err, errCorrupt) {
			t.Errorf("decode %x: %v", bad, err)
		}
	}
}

// A channel registered through an upstream keeps the upstream's endpoint,
// across a restart; registering it again with the same one is a no-op,
// with another one a conflict.
func TestRegisterKeepsEndpoint(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "store.db")
	s := openTest(t, Options{Path: path})
	u := uaid(1)
	c := Channel{UAID: u, ID: chid(1), Key: []byte{4, 7}, Endpoint: "https://updates.push.example/wpush/v2/gAAAA"}
	if err := s.Register(ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := s.Register(ctx, c); err != nil {
		t.Fatalf("same register again: %v", err)
	}
	other := c
	other.Endpoint = "https://updates.push.example/wpush/v2/other"
	if err := s.Register(ctx, other); !errors.Is(err, ErrChannelConflict) {
		t.Fatalf("register with another endpoint: %v", err)
	}
	tooLong := c
	tooLong.ID, tooLong.Endpoint = chid(2), strings.Repeat("x", MaxEndpointLen+1)
	if err := s.Register(ctx, tooLong); !errors.Is(err, ErrBadChannel) {
		t.Fatalf("register with a long endpoint: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, Options{Path: path})
	got, ok, err := s.Channel(u, chid(1))
	if err != nil || !ok || got.Endpoint != c.Endpoint || !bytes.Equal(got.Key, c.Key) {
		t.Fatalf("after a restart: %+v %v %v", got, ok, err)
	}
	if _, ok, _ := s.Channel(u, chid(2)); ok {
		t.Fatal("the refused channel was stored")
	}
	checkDevice(t, s, u, 0, 1)
}

func mustUpstreamID(t *testing.T, s *Store, u push.UAID) (UpstreamID, bool) {
	t.Helper()
	id, ok, err := s.UpstreamID(u)
	if err != nil {
		t.Fatal(err)
	}
	return id, ok
}

func checkDeviceFor(t *testing.T, s *Store, up, want push.UAID, wantOK bool) {
	t.Helper()
	got, ok, err := s.DeviceFor(up)
	if err != nil || ok != wantOK || (ok && got != want) {
		t.Errorf("DeviceFor(%v) = %v, %v, %v; want %v, %v", up, got, ok, err, want, wantOK)
	}
}

func TestUpstreamIdentity(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "store.db")
	s := openTest(t, Options{Path: path})
	u1, u2 := uaid(1), uaid(2)
	at := time.Unix(1_700_000_000, 0)
	if _, ok := mustUpstreamID(t, s, u1); ok {
		t.Fatal("identity before any")
	}
	if err := s.SetUpstreamID(ctx, u1, upuaid(1), at); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUpstreamID(ctx, u2, upuaid(2), time.Time{}); err != nil {
		t.Fatal(err)
	}
	if id, ok := mustUpstreamID(t, s, u1); !ok || id.Upstream != upuaid(1) || id.Device != u1 || !id.Helloed.Equal(at) {
		t.Fatalf("UpstreamID = %+v %v", id, ok)
	}
	checkDeviceFor(t, s, upuaid(1), u1, true)
	checkDeviceFor(t, s, upuaid(2), u2, true)
	checkDeviceFor(t, s, upuaid(3), push.UAID{}, false)
	checkStats(t, s, Stats{UpstreamIDs: 2})

	// A first register that lost a race gets the identity made first.
	if id, added, err := s.AddUpstreamID(ctx, u1, upuaid(5), at.Add(time.Minute)); err != nil || added || id.Upstream != upuaid(1) || !id.Helloed.Equal(at) {
		t.Fatalf("AddUpstreamID over an identity = %+v, %v, %v", id, added, err)
	}
	checkDeviceFor(t, s, upuaid(5), push.UAID{}, false)
	if _, _, err := s.AddUpstreamID(ctx, uaid(3), upuaid(2), at); !errors.Is(err, ErrUpstreamConflict) {
		t.Fatalf("AddUpstreamID of another device's upstream uaid: %v", err)
	}
	if id, added, err := s.AddUpstreamID(ctx, uaid(3), upuaid(3), at); err != nil || !added || id.Upstream != upuaid(3) || id.Device != uaid(3) {
		t.Fatalf("AddUpstreamID = %+v, %v, %v", id, added, err)
	}
	if ok, err := s.DeleteUpstreamID(ctx, uaid(3)); err != nil || !ok {
		t.Fatalf("DeleteUpstreamID = %v, %v", ok, err)
	}
	// Another device cannot take an upstream UAID in use.
	if err := s.SetUpstreamID(ctx, u2, upuaid(1), at); !errors.Is(err, ErrUpstreamConflict) {
		t.Fatalf("taking another device's upstream uaid: %v", err)
	}
	// After an upstream reset the device gets a new one; the old one
	// no longer leads to it.
	if err := s.SetUpstreamID(ctx, u1, upuaid(9), at.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	checkDeviceFor(t, s, upuaid(1), push.UAID{}, false)
	checkDeviceFor(t, s, upuaid(9), u1, true)
	if ids := mustHelloedBefore(t, s, at.Add(1000*time.Hour), 0); len(ids) != 2 {
		t.Fatalf("hello order after the replace: %+v", ids)
	}

	// It survives a restart and Verify finds it sound.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if r, err := Verify(path, time.Second); err != nil {
		t.Fatalf("Verify: %v %+v", err, r)
	}
	s = openTest(t, Options{Path: path})
	checkDeviceFor(t, s, upuaid(9), u1, true)
	checkStats(t, s, Stats{UpstreamIDs: 2})

	if ok, err := s.DeleteUpstreamID(ctx, u1); err != nil || !ok {
		t.Fatalf("DeleteUpstreamID = %v, %v", ok, err)
	}
	if ok, err := s.DeleteUpstreamID(ctx, u1); err != nil || ok {
		t.Fatalf("DeleteUpstreamID again = %v, %v", ok, err)
	}
	checkDeviceFor(t, s, upuaid(9), push.UAID{}, false)

	// DeleteDevice takes the identity with it.
	mustRegister(t, s, u2, chid(1))
	if err := s.DeleteDevice(ctx, u2); err != nil {
		t.Fatal(err)
	}
	if _, ok := mustUpstreamID(t, s, u2); ok {
		t.Fatal("identity outlived its device")
	}
	checkDeviceFor(t, s, upuaid(2), push.UAID{}, false)
	if ids := mustHelloedBefore(t, s, at.Add(1000*time.Hour), 0); len(ids) != 0 {
		t.Fatalf("hello rows left: %+v", ids)
	}
	if n := bucketRows(t, s, bucketUpstream) + bucketRows(t, s, bucketUpstreamRev) + bucketRows(t, s, bucketHellos); n != 0 {
		t.Fatalf("%d identity rows left", n)
	}
	checkStats(t, s, Stats{})
}

func mustHelloedBefore(t *testing.T, s *Store, before time.Time, limit int) []UpstreamID {
	t.Helper()
	ids, err := s.HelloedBefore(before, limit)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func bucketRows(t *testing.T, s *Store, name []byte) int {
	t.Helper()
	n := 0
	if err := s.view(func(tx *bolt.Tx) error {
		n = keyCount(tx.Bucket(name))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

func devicesOf(ids []UpstreamID) []byte {
	var b []byte
	for _, id := range ids {
		b = append(b, id.Device[1])
	}
	return b
}

// The hello order: never helloed first, then oldest first; Helloed moves a
// device without rewriting its device record.
func TestHelloOrder(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	t0 := time.Unix(1_700_000_000, 0)
	for i := range byte(5) {
		u := uaid(i)
		mustRegister(t, s, u, chid(1))
		helloed := t0.Add(time.Duration(5-i) * time.Hour) // 4 is the oldest
		if i == 2 {
			helloed = time.Time{}
		}
		if err := s.SetUpstreamID(ctx, u, upuaid(i), helloed); err != nil {
			t.Fatal(err)
		}
	}
	if got := devicesOf(mustHelloedBefore(t, s, t0.Add(100*time.Hour), 0)); !bytes.Equal(got, []byte{2, 4, 3, 1, 0}) {
		t.Fatalf("order %v", got)
	}
	if got := devicesOf(mustHelloedBefore(t, s, t0.Add(100*time.Hour), 2)); !bytes.Equal(got, []byte{2, 4}) {
		t.Fatalf("limit 2: %v", got)
	}
	if got := devicesOf(mustHelloedBefore(t, s, t0.Add(3*time.Hour), 0)); !bytes.Equal(got, []byte{2, 4, 3}) {
		t.Fatalf("before +3h: %v", got)
	}

	deviceRow := func(u push.UAID) []byte {
		var v []byte
		s.view(func(tx *bolt.Tx) error { v = bytes.Clone(tx.Bucket(bucketDevices).Get(u[:])); return nil })
		return v
	}
	before := deviceRow(uaid(4))
	commits := s.nCommits.Load()
	later := t0.Add(10 * time.Hour)
	n, err := s.Helloed(ctx, later, uaid(4), uaid(2), uaid(7))
	if err != nil || n != 2 {
		t.Fatalf("Helloed = %d, %v (uaid 7 has no identity)", n, err)
	}
	if c := s.nCommits.Load() - commits; c != 1 {
		t.Fatalf("Helloed took %d commits", c)
	}
	if !bytes.Equal(deviceRow(uaid(4)), before) {
		t.Fatal("Helloed rewrote the device record")
	}
	if got := devicesOf(mustHelloedBefore(t, s, t0.Add(100*time.Hour), 0)); !bytes.Equal(got, []byte{3, 1, 0, 2, 4}) {
		t.Fatalf("order after Helloed: %v", got)
	}
	if id, _ := mustUpstreamID(t, s, uaid(4)); !id.Helloed.Equal(later) || id.Upstream != upuaid(4) {
		t.Fatalf("identity after Helloed: %+v", id)
	}
	// One hello row per identity, however often it is helloed.
	if _, err := s.Helloed(ctx, later.Add(time.Minute), uaid(4)); err != nil {
		t.Fatal(err)
	}
	if n := bucketRows(t, s, bucketHellos); n != 5 {
		t.Fatalf("%d hello rows", n)
	}
}

// An unregister kept for the upstream: the channel goes here at once, its
// messages with it, and while the entry waits its messages are refused
// with ErrTombstoned (counted) and it cannot be registered again; the
// entries list in order, survive a restart, and UnregisterSent ends them.
func TestUnregisterLater(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "store.db")
	clk := newClock()
	reg := metrics.NewRegistry()
	s := openTest(t, Options{Path: path, Now: clk.Now, Metrics: reg})
	u := uaid(1)
	for c := range byte(4) {
		mustRegister(t, s, u, chid(c))
	}
	mustAppend(t, s, msg(u, chid(1), "gone"))
	mustAppend(t, s, msg(u, chid(0), "kept"))

	if ok, err := s.UnregisterLater(ctx, u, chid(9), upuaid(1)); err != nil || ok {
		t.Fatalf("UnregisterLater of an unknown channel = %v, %v", ok, err)
	}
	for _, c := range []byte{1, 3, 2} {
		clk.Add(time.Second)
		if ok, err := s.UnregisterLater(ctx, u, chid(c), upuaid(1)); err != nil || !ok {
			t.Fatalf("UnregisterLater(%d) = %v, %v", c, ok, err)
		}
	}
	checkDevice(t, s, u, 1, 1)
	checkStats(t, s, Stats{Devices: 1, Channels: 1, Waiting: 1, PendingUnregisters: 3})
	if n := metricValue(t, reg, "pushrelay_store_unregisters_pending"); n != 3 {
		t.Fatalf("unregisters_pending %v", n)
	}
	if got := datas(mustMessages(t, s, u)); got != "kept" {
		t.Fatalf("messages %s", got)
	}
	if deletedMetric(t, reg, "unregistered") != 1 {
		t.Fatal("the channel's message was not counted as unregistered")
	}

	// Refused, single and in a batch, distinctly from an unknown channel.
	if _, err := s.Append(ctx, msg(u, chid(1), "late")); !errors.Is(err, ErrTombstoned) {
		t.Fatalf("Append to a tombstoned channel: %v", err)
	}
	rs, err := s.AppendBatch(ctx, []Message{msg(u, chid(3), "late")})
	if err != nil || !errors.Is(rs[0].Err, ErrTombstoned) {
		t.Fatalf("AppendBatch of one: %+v, %v", rs, err)
	}
	rs, err = s.AppendBatch(ctx, []Message{msg(u, chid(2), "late"), msg(u, chid(0), "ok"), msg(u, chid(9), "nobody")})
	if err != nil || !errors.Is(rs[0].Err, ErrTombstoned) || rs[1].Err != nil || !errors.Is(rs[2].Err, ErrNoChannel) || errors.Is(rs[2].Err, ErrTombstoned) {
		t.Fatalf("AppendBatch: %+v, %v", rs, err)
	}
	if n := metricValue(t, reg, "pushrelay_store_tombstoned_total"); n != 3 {
		t.Fatalf("tombstoned_total %v, want 3", n)
	}
	if err := s.Register(ctx, Channel{UAID: u, ID: chid(1)}); !errors.Is(err, ErrTombstoned) {
		t.Fatalf("Register of a tombstoned channel: %v", err)
	}
	// Unregistering it again changes nothing.
	if ok, err := s.UnregisterLater(ctx, u, chid(1), upuaid(1)); err != nil || ok {
		t.Fatalf("UnregisterLater again = %v, %v", ok, err)
	}

	// A restart keeps all of it.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if r, err := Verify(path, time.Second); err != nil {
		t.Fatalf("Verify: %v %+v", err, r)
	}
	s = openTest(t, Options{Path: path, Now: clk.Now})
	ps, err := s.PendingUnregisters(0, 0)
	if err != nil || len(ps) != 3 {
		t.Fatalf("PendingUnregisters = %+v, %v", ps, err)
	}
	t0 := time.Unix(1_700_000_000, 0)
	for i, c := range []byte{1, 3, 2} {
		p := ps[i]
		if p.UAID != u || p.Channel != chid(c) || p.Upstream != upuaid(1) || !p.At.Equal(t0.Add(time.Duration(i+1)*time.Second)) {
			t.Errorf("entry %d: %+v", i, p)
		}
		if i > 0 && p.Seq <= ps[i-1].Seq {
			t.Errorf("entry %d out of order: %+v", i, ps)
		}
	}
	if more, _ := s.PendingUnregisters(ps[0].Seq, 1); len(more) != 1 || more[0] != ps[1] {
		t.Fatalf("paging: %+v", more)
	}
	if _, err := s.Append(ctx, msg(u, chid(3), "late")); !errors.Is(err, ErrTombstoned) {
		t.Fatalf("after a restart: %v", err)
	}

	// Sent: the entry and its tombstone go; the channel is unknown now and
	// can be registered again.
	if n, err := s.UnregisterSent(ctx, ps[0].Seq, ps[1].Seq, 12345); err != nil || n != 2 {
		t.Fatalf("UnregisterSent = %d, %v", n, err)
	}
	if ok, _ := s.Tombstoned(u, chid(1)); ok {
		t.Fatal("tombstone left after UnregisterSent")
	}
	if ok, _ := s.Tombstoned(u, chid(2)); !ok {
		t.Fatal("the unsent entry lost its tombstone")
	}
	if _, err := s.Append(ctx, msg(u, chid(1), "late")); !errors.Is(err, ErrNoChannel) || errors.Is(err, ErrTombstoned) {
		t.Fatalf("Append after the unregister was sent: %v", err)
	}
	mustRegister(t, s, u, chid(1))
	mustAppend(t, s, msg(u, chid(1), "again"))
	if ps, _ := s.PendingUnregisters(0, 0); len(ps) != 1 || ps[0].Channel != chid(2) {
		t.Fatalf("left: %+v", ps)
	}
	checkStats(t, s, Stats{Devices: 1, Channels: 2, Waiting: 3, PendingUnregisters: 1})
	// A new entry after a restart numbers after the old ones.
	if _, err := s.UnregisterLater(ctx, u, chid(1), upuaid(1)); err != nil {
		t.Fatal(err)
	}
	if ps2, _ := s.PendingUnregisters(0, 0); len(ps2) != 2 || ps2[1].Seq <= ps[2].Seq {
		t.Fatalf("after a new one: %+v", ps2)
	}
	// DeleteDevice leaves the entries: the upstream still holds the
	// channels.
	if err := s.DeleteDevice(ctx, u); err != nil {
		t.Fatal(err)
	}
	if ps, _ := s.PendingUnregisters(0, 0); len(ps) != 2 {
		t.Fatalf("after DeleteDevice: %+v", ps)
	}
}

// Migration 6, from a version 5 file holding a device with a format 1
// channel record (a VAPID key, no endpoint), a message and an origin key:
// the record decodes as it was, messages still flow, and the upstream
// state works.
func TestMigrationFromV5(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "store.db")
	now := time.Unix(1_700_000_000, 0)
	u := uaid(1)
	key := []byte{4, 1, 2, 3, 4}
	writeRaw(t, path, func(tx *bolt.Tx) error {
		if _, _, err := migrate(tx, migrations[:5]); err != nil {
			return err
		}
		for _, name := range upstreamBuckets {
			if tx.Bucket(name) != nil {
				t.Errorf("schema 5 already has %s", name)
			}
		}
		if err := tx.Bucket(bucketDevices).Put(deviceKey(u), encodeDevice(Device{UAID: u, Created: now, LastSeen: now, Channels: 1})); err != nil {
			return err
		}
		if err := tx.Bucket(bucketChannels).Put(channelKey(u, chid(1)), encodeChannelV1(Channel{Created: now, Key: key})); err != nil {
			return err
		}
		m := Message{UAID: u, Channel: chid(1), Received: now, TTL: time.Hour, Expiry: now.Add(time.Hour), Data: []byte("old")}
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
	// A version 5 file verifies as one (Verify does not ask for the new
	// buckets).
	if r, err := Verify(path, time.Second); err != nil {
		t.Fatalf("Verify of the v5 file: %v %+v", err, r)
	}
	clk := &fakeClock{t: now}
	s := openTest(t, Options{Path: path, Now: clk.Now})
	if v := fileSchema(t, s); v != schemaVersion() {
		t.Fatalf("schema %d after migration", v)
	}
	checkBuckets(t, s)
	c, ok, err := s.Channel(u, chid(1))
	if err != nil || !ok || !bytes.Equal(c.Key, key) || c.Endpoint != "" || !c.Created.Equal(now) {
		t.Fatalf("old channel: %+v %v %v", c, ok, err)
	}
	// Registering it again as it was is still a no-op.
	if err := s.Register(ctx, Channel{UAID: u, ID: chid(1), Key: key}); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, s, msg(u, chid(1), "new"))
	if got := datas(mustMessages(t, s, u)); got != "old,new" {
		t.Fatalf("messages %s", got)
	}
	if err := s.SetUpstreamID(ctx, u, upuaid(1), now); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.UnregisterLater(ctx, u, chid(1), upuaid(1)); err != nil || !ok {
		t.Fatalf("UnregisterLater = %v, %v", ok, err)
	}
	checkStats(t, s, Stats{Devices: 1, Channels: 0, Waiting: 0, UpstreamIDs: 1, PendingUnregisters: 1})
}

// Verify finds rows of the upstream buckets that do not decode or do not
// agree with each other.
func TestVerifyUpstreamBuckets(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(tx *bolt.Tx) error
		want string
	}{
		{"hello row of no identity", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketHellos).Put(helloKey(7, uaid(9)), nil)
		}, "hello row"},
		{"reverse row of no identity", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketUpstreamRev).Put(deviceKey(upuaid(9)), deviceKey(uaid(9)))
		}, "upstream_rev row"},
		{"short identity", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketUpstream).Put(deviceKey(uaid(9)), []byte{1})
		}, "upstream row"},
		{"tombstone of no entry", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketTombstones).Put(channelKey(uaid(9), chid(9)), seqValue(99))
		}, "tombstone"},
		{"bad outbox entry", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketUnregOutbox).Put(seqValue(99), []byte{2, 0})
		}, "unreg_outbox row"},
		{"bad channel record", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketChannels).Put(channelKey(uaid(1), chid(5)), []byte{channelV2, 0, 0, 0, 0, 0, 0, 0, 0, 9})
		}, "channel"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "store.db")
			s, err := Open(Options{Path: path, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if err := s.Register(ctx, Channel{UAID: uaid(1), ID: chid(1), Endpoint: "https://x/1"}); err != nil {
				t.Fatal(err)
			}
			if err := s.SetUpstreamID(ctx, uaid(1), upuaid(1), time.Unix(1, 0)); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if r, err := Verify(path, time.Second); err != nil {
				t.Fatalf("sound file: %v %+v", err, r)
			}
			writeRaw(t, path, tc.edit)
			r, err := Verify(path, time.Second)
			if !errors.Is(err, ErrDamaged) || !strings.Contains(strings.Join(r.Problems, "\n"), tc.want) {
				t.Fatalf("Verify = %v %+v, want a problem naming %q", err, r.Problems, tc.want)
			}
		})
	}
}

// Salvage copies the upstream identities, the endpoints and the
// unregisters waiting for the upstream (with their tombstones), and the
// outbox numbering continues after them.
func TestSalvageUpstream(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src.db"), filepath.Join(dir, "dst.db")
	s, err := Open(Options{Path: src, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1_700_000_000, 0)
	for i := range byte(3) {
		u := uaid(i)
		for c := range byte(2) {
			if err := s.Register(ctx, Channel{UAID: u, ID: chid(c), Endpoint: "https://up/" + string('a'+rune(i)) + string('0'+rune(c))}); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.SetUpstreamID(ctx, u, upuaid(i), at.Add(time.Duration(i)*time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.UnregisterLater(ctx, uaid(0), chid(1), upuaid(0)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UnregisterLater(ctx, uaid(2), chid(0), upuaid(2)); err != nil {
		t.Fatal(err)
	}
	before, _ := s.PendingUnregisters(0, 0)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := Salvage(src, dst, time.Second)
	if err != nil || rep.UpstreamIDs != 3 || rep.Unregisters != 2 || rep.Channels != 4 || rep.BadRows != 0 {
		t.Fatalf("Salvage = %+v, %v", rep, err)
	}
	if r, err := Verify(dst, time.Second); err != nil {
		t.Fatalf("Verify the copy: %v %+v", err, r)
	}
	s = openTest(t, Options{Path: dst})
	checkStats(t, s, Stats{Devices: 3, Channels: 4, UpstreamIDs: 3, PendingUnregisters: 2})
	if got := devicesOf(mustHelloedBefore(t, s, at.Add(100*time.Hour), 0)); !bytes.Equal(got, []byte{0, 1, 2}) {
		t.Fatalf("hello order %v", got)
	}
	checkDeviceFor(t, s, upuaid(1), uaid(1), true)
	if c, ok, _ := s.Channel(uaid(1), chid(1)); !ok || c.Endpoint != "https://up/b1" {
		t.Fatalf("channel %+v", c)
	}
	after, _ := s.PendingUnregisters(0, 0)
	if len(after) != 2 || after[0] != before[0] || after[1] != before[1] {
		t.Fatalf("outbox %+v, was %+v", after, before)
	}
	if _, err := s.Append(ctx, msg(uaid(2), chid(0), "late")); !errors.Is(err, ErrTombstoned) {
		t.Fatalf("Append to a tombstoned channel after salvage: %v", err)
	}
	if _, err := s.UnregisterLater(ctx, uaid(1), chid(0), upuaid(1)); err != nil {
		t.Fatal(err)
	}
	if ps, _ := s.PendingUnregisters(before[1].Seq, 0); len(ps) != 1 || ps[0].Seq <= before[1].Seq {
		t.Fatalf("new entry after salvage: %+v", ps)
	}
}
