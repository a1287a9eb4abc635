package store

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/pushrelay/pushrelay/relay/push"
	bolt "go.etcd.io/bbolt"
)

// Bucket names and meta keys. The tree is drawn in doc.go.
var (
	bucketDevices  = []byte("devices")
	bucketChannels = []byte("channels")
	bucketMessages = []byte("messages")
	bucketTopics   = []byte("topics")
	bucketExpiry   = []byte("expiry")
	bucketMeta     = []byte("meta")
	bucketOrigins  = []byte("origins")

	metaSchema   = []byte("schema")
	metaDevices  = []byte("devices")
	metaChannels = []byte("channels")
	metaWaiting  = []byte("waiting")
	// Schema 6: upstream identities and unregisters kept for the upstream.
	metaUpstreamIDs = []byte("upstream_ids")
	metaUnregs      = []byte("unregs")
	// metaEpoch names this store file: random, made once (Store.Epoch).
	metaEpoch = []byte("epoch")
)

// A migration moves the file from version-1 to version. Migrations run in
// order inside the one transaction Open uses, so a file is either fully at
// the old version or fully at the new one.
type migration struct {
	version uint64
	name    string
	apply   func(tx *bolt.Tx) error
}

// migrations is the schema history. Append only; never edit a released
// entry, since files in the field were written by it.
var migrations = []migration{
	{1, "create buckets", migrateCreateBuckets},
	{2, "keep device, channel and waiting totals in meta", migrateCountTotals},
	{3, "per-device message counts leave the device record", migrateDropDeviceWaiting},
	{4, "broadcast versions", migrateCreateBroadcasts},
	{5, "origin-key index", migrateCreateOrigins},
	{6, "upstream identities, hello order, unregister outbox; channel records v2", migrateCreateUpstream},
	{7, "relay link: the child serving each UAID", migrateCreateLinkChildren},
	{8, "relay link: devices forgotten here, to tell their child", migrateCreateLinkForgets},
}

// schemaVersion is the version this build writes.
func schemaVersion() uint64 { return migrations[len(migrations)-1].version }

// readSchema returns the file's schema version; a file without a meta
// bucket or schema key (new or empty) is version 0.
func readSchema(tx *bolt.Tx) (uint64, error) {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return 0, nil
	}
	v := meta.Get(metaSchema)
	if v == nil {
		return 0, nil
	}
	n, ok := beUint64(v)
	if !ok {
		return 0, corrupt("meta", metaSchema)
	}
	return n, nil
}

// migrate applies the entries of list newer than the file's version and
// records the new version. It returns the versions before and after.
func migrate(tx *bolt.Tx, list []migration) (from, to uint64, err error) {
	from, err = readSchema(tx)
	if err != nil {
		return 0, 0, err
	}
	latest := list[len(list)-1].version
	if from > latest {
		return from, from, fmt.Errorf("%w: file is version %d, this build knows up to %d", ErrSchemaTooNew, from, latest)
	}
	to = from
	for _, m := range list {
		if m.version <= from {
			continue
		}
		if err := m.apply(tx); err != nil {
			return from, to, fmt.Errorf("migrate to schema %d (%s): %w", m.version, m.name, err)
		}
		to = m.version
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return from, to, err
		}
		if err := meta.Put(metaSchema, seqValue(to)); err != nil {
			return from, to, err
		}
	}
	return from, to, nil
}

// Version 1: the buckets.
func migrateCreateBuckets(tx *bolt.Tx) error {
	for _, name := range [][]byte{bucketDevices, bucketChannels, bucketMessages, bucketTopics, bucketExpiry, bucketMeta} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	return nil
}

// Version 2: totals in meta, so Open and Stats never scan. Computed once
// from the device records, which already carry per-device counts; this
// reads every device, never every message.
func migrateCountTotals(tx *bolt.Tx) error {
	var devices, channels, waiting uint64
	err := tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
		var u push.UAID
		if len(k) != len(u) {
			return corrupt("device key", k)
		}
		copy(u[:], k)
		d, err := decodeDevice(u, v)
		if err != nil {
			return err
		}
		devices++
		channels += uint64(d.Channels)
		waiting += uint64(d.Waiting)
		return nil
	})
	if err != nil {
		return err
	}
	return putTotals(tx.Bucket(bucketMeta), totals{devices: int64(devices), channels: int64(channels), waiting: int64(waiting)})
}

// Version 3: a device's message count is no longer kept in its record,
// where every append and every ack rewrote it; the committer counts a
// device's rows when it needs the count (for the cap) and remembers it.
// The record's field stays, always 0. This reads every device, never
// every message.
func migrateDropDeviceWaiting(tx *bolt.Tx) error {
	b := tx.Bucket(bucketDevices)
	var keys [][]byte
	err := b.ForEach(func(k, v []byte) error {
		if len(v) < deviceFixed || v[0] != deviceV1 {
			return corrupt("device", k)
		}
		if binary.BigEndian.Uint32(v[17:]) != 0 {
			keys = append(keys, bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range keys {
		v := bytes.Clone(b.Get(k))
		binary.BigEndian.PutUint32(v[17:], 0)
		if err := b.Put(k, v); err != nil {
			return err
		}
	}
	return nil
}

// totals are the store-wide counters kept in meta. A file from before
// schema 6 has no upstreamIDs or unregs key: both read as 0, right for
// its empty buckets.
type totals struct{ devices, channels, waiting, upstreamIDs, unregs int64 }

func readTotals(meta *bolt.Bucket) (totals, error) {
	var t totals
	for _, f := range []struct {
		key []byte
		dst *int64
	}{{metaDevices, &t.devices}, {metaChannels, &t.channels}, {metaWaiting, &t.waiting}, {metaUpstreamIDs, &t.upstreamIDs}, {metaUnregs, &t.unregs}} {
		v := meta.Get(f.key)
		if v == nil {
			continue
		}
		n, ok := beUint64(v)
		if !ok {
			return totals{}, corrupt("meta", f.key)
		}
		*f.dst = int64(n)
	}
	return t, nil
}

func putTotals(meta interface{ Put(k, v []byte) error }, t totals) error {
	for _, f := range []struct {
		key []byte
		n   int64
	}{{metaDevices, t.devices}, {metaChannels, t.channels}, {metaWaiting, t.waiting}, {metaUpstreamIDs, t.upstreamIDs}, {metaUnregs, t.unregs}} {
		v := make([]byte, 8)
		binary.BigEndian.PutUint64(v, uint64(max(f.n, 0)))
		if err := meta.Put(f.key, v); err != nil {
			return err
		}
	}
	return nil
}

// Version 5: the origin-key index. Existing messages have no origin key,
// so the bucket starts empty and the expiry rows stay as they are.
func migrateCreateOrigins(tx *bolt.Tx) error {
	if _, err := tx.CreateBucketIfNotExists(bucketOrigins); err != nil {
		return fmt.Errorf("create bucket %s: %w", bucketOrigins, err)
	}
	return nil
}
