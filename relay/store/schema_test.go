package store

import (
	"context"
	"encoding/binary"
	"errors"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func fileSchema(t *testing.T, s *Store) uint64 {
	t.Helper()
	var v uint64
	if err := s.view(func(tx *bolt.Tx) (err error) { v, err = readSchema(tx); return err }); err != nil {
		t.Fatal(err)
	}
	return v
}

func checkBuckets(t *testing.T, s *Store) {
	t.Helper()
	if err := s.view(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketDevices, bucketChannels, bucketMessages, bucketTopics, bucketExpiry, bucketMeta, bucketBroadcasts, bucketOrigins, bucketUpstream, bucketUpstreamRev, bucketHellos, bucketTombstones, bucketUnregOutbox} {
			if tx.Bucket(b) == nil {
				t.Errorf("bucket %s missing", b)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// writeRaw creates a bbolt file and runs fn on it, as an older pushrelay
// would have.
func writeRaw(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fn != nil {
		if err := db.Update(fn); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestOpenNewFile(t *testing.T) {
	s := openTest(t, Options{})
	if v := fileSchema(t, s); v != schemaVersion() {
		t.Errorf("new file at schema %d, want %d", v, schemaVersion())
	}
	checkBuckets(t, s)
	checkStats(t, s, Stats{})
}

// Migration 1 (create buckets), from a version 0 file: a bbolt file with
// nothing in it.
func TestMigrationFromEmptyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	writeRaw(t, path, nil)
	s := openTest(t, Options{Path: path})
	if v := fileSchema(t, s); v != schemaVersion() {
		t.Errorf("schema %d, want %d", v, schemaVersion())
	}
	checkBuckets(t, s)
	checkStats(t, s, Stats{})
	mustRegister(t, s, uaid(1), chid(1))
	mustAppend(t, s, msg(uaid(1), chid(1), "x"))
}

// Migration 2 (totals in meta), from a version 1 file holding data.
func TestMigrationFromV1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	now := time.Unix(1_700_000_000, 0)
	var lastSeq uint64
	writeRaw(t, path, func(tx *bolt.Tx) error {
		if _, _, err := migrate(tx, migrations[:1]); err != nil {
			return err
		}
		for i, counts := range [][2]int{{2, 1}, {0, 2}, {3, 3}} { // waiting, channels
			u := uaid(byte(i))
			d := Device{UAID: u, Created: now, LastSeen: now, Waiting: counts[0], Channels: counts[1]}
			if err := tx.Bucket(bucketDevices).Put(deviceKey(u), encodeDevice(d)); err != nil {
				return err
			}
			for c := range counts[1] {
				if err := tx.Bucket(bucketChannels).Put(channelKey(u, chid(byte(c))), encodeChannelV1(Channel{Created: now})); err != nil {
					return err
				}
			}
			for range counts[0] {
				m := Message{UAID: u, Channel: chid(0), Received: now, TTL: 100 * 365 * 24 * time.Hour, Data: []byte("old")}
				m.Expiry = m.Received.Add(m.TTL)
				seq, err := tx.Bucket(bucketMessages).NextSequence()
				if err != nil {
					return err
				}
				lastSeq = seq
				if err := tx.Bucket(bucketMessages).Put(messageKey(u, seq), encodeMessage(&m)); err != nil {
					return err
				}
				if err := tx.Bucket(bucketExpiry).Put(expiryKey(timeNanos(m.Expiry), u, seq), nil); err != nil {
					return err
				}
			}
		}
		return nil
	})

	// Version 1 has no totals.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *bolt.Tx) error {
		if v, _ := readSchema(tx); v != 1 {
			t.Errorf("fixture at schema %d", v)
		}
		if tx.Bucket(bucketMeta).Get(metaWaiting) != nil {
			t.Error("fixture already has totals")
		}
		return nil
	})
	db.Close()

	s := openTest(t, Options{Path: path})
	if v := fileSchema(t, s); v != schemaVersion() {
		t.Errorf("schema %d after migration", v)
	}
	checkStats(t, s, Stats{Devices: 3, Channels: 6, Waiting: 5})
	if got := len(mustMessages(t, s, uaid(2))); got != 3 {
		t.Errorf("device 2 has %d messages", got)
	}
	// The migrated totals keep counting, and seqs continue.
	m := mustAppend(t, s, msg(uaid(1), chid(1), "new"))
	if m.Seq <= lastSeq {
		t.Errorf("seq %d after old %d", m.Seq, lastSeq)
	}
	if _, err := s.Ack(context.Background(), uaid(0), lastSeq-3, lastSeq-4); err != nil {
		t.Fatal(err)
	}
	checkStats(t, s, Stats{Devices: 3, Channels: 6, Waiting: 4})
}

// Migration 3 (per-device message counts leave the device record), from
// a version 2 file whose records hold counts, one of them wrong.
func TestMigrationFromV2(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	now := time.Unix(1_700_000_000, 0)
	writeRaw(t, path, func(tx *bolt.Tx) error {
		if _, _, err := migrate(tx, migrations[:2]); err != nil {
			return err
		}
		for i, counts := range [][2]int{{2, 2}, {0, 5}, {3, 3}} { // messages, count in the record
			u := uaid(byte(i))
			d := Device{UAID: u, Created: now, LastSeen: now, Waiting: counts[1], Channels: 1}
			if err := tx.Bucket(bucketDevices).Put(deviceKey(u), encodeDevice(d)); err != nil {
				return err
			}
			if err := tx.Bucket(bucketChannels).Put(channelKey(u, chid(0)), encodeChannelV1(Channel{Created: now})); err != nil {
				return err
			}
			for range counts[0] {
				m := Message{UAID: u, Channel: chid(0), Received: now, TTL: 100 * 365 * 24 * time.Hour, Data: []byte("old")}
				m.Expiry = m.Received.Add(m.TTL)
				seq, err := tx.Bucket(bucketMessages).NextSequence()
				if err != nil {
					return err
				}
				if err := tx.Bucket(bucketMessages).Put(messageKey(u, seq), encodeMessage(&m)); err != nil {
					return err
				}
				if err := tx.Bucket(bucketExpiry).Put(expiryKey(timeNanos(m.Expiry), u, seq), nil); err != nil {
					return err
				}
			}
		}
		return putTotals(tx.Bucket(bucketMeta), totals{devices: 3, channels: 3, waiting: 5})
	})

	s := openTest(t, Options{Path: path, MaxMessagesPerUAID: 3})
	if v := fileSchema(t, s); v != schemaVersion() {
		t.Errorf("schema %d after migration", v)
	}
	s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
			if n := binary.BigEndian.Uint32(v[17:]); n != 0 {
				t.Errorf("device %x still records %d messages", k, n)
			}
			return nil
		})
	})
	// Counts come from the messages themselves, whatever the records said.
	checkDevice(t, s, uaid(0), 2, 1)
	checkDevice(t, s, uaid(1), 0, 1)
	checkDevice(t, s, uaid(2), 3, 1)
	checkStats(t, s, Stats{Devices: 3, Channels: 3, Waiting: 5})
	// The cap counts the real messages: device 1 (recorded 5) keeps all
	// it gets up to 3, device 2 (at 3) drops its oldest.
	for range 3 {
		mustAppend(t, s, msg(uaid(1), chid(0), "new"))
	}
	mustAppend(t, s, msg(uaid(2), chid(0), "new"))
	checkDevice(t, s, uaid(1), 3, 1)
	checkDevice(t, s, uaid(2), 3, 1)
	if got := datas(mustMessages(t, s, uaid(2))); got != "old,old,new" {
		t.Errorf("device 2 holds %s", got)
	}
	checkStats(t, s, Stats{Devices: 3, Channels: 3, Waiting: 8})
}

func TestSchemaTooNew(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	writeRaw(t, path, func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucket(bucketMeta)
		if err != nil {
			return err
		}
		return meta.Put(metaSchema, seqValue(schemaVersion()+1))
	})
	for range 2 { // the failed Open released the file
		s, err := Open(Options{Path: path, LockTimeout: 100 * time.Millisecond})
		if err == nil {
			s.Close()
			t.Fatal("opened a newer file")
		}
		if !errors.Is(err, ErrSchemaTooNew) {
			t.Fatalf("Open: %v", err)
		}
	}
}

func TestMigrationsOrdered(t *testing.T) {
	for i, m := range migrations {
		if m.version != uint64(i+1) || m.name == "" || m.apply == nil {
			t.Errorf("migration %d: %+v", i, m)
		}
	}
}
