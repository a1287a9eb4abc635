package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
	bolt "go.etcd.io/bbolt"
)

// The upstream link's state (schema 6):
//
//	upstream      uaid(16)                  → upstream uaid(16) | helloed(8)
//	upstream_rev  upstream uaid(16)         → uaid(16)
//	hellos        helloed(8) uaid(16)       → empty
//	tombstones    uaid(16) chid(16)         → outbox seq(8)
//	unreg_outbox  seq(8)                    → 1 | uaid(16) | chid(16) | upstream uaid(16) | at(8)
//
// upstream maps a device to the UAID that stands for it upstream and
// when it was last helloed there; upstream_rev is the reverse (a
// notification from upstream names the upstream UAID); hellos orders the
// devices by their last hello, so the link finds the oldest without a
// scan. A hello rewrites two small rows of these buckets, never the device
// record. unreg_outbox holds the unregisters still to be sent upstream, in
// the order they were made (the bucket's sequence numbers them);
// tombstones finds a channel's entry, and while it is there Append
// refuses the channel's messages with ErrTombstoned.
var (
	bucketUpstream    = []byte("upstream")
	bucketUpstreamRev = []byte("upstream_rev")
	bucketHellos      = []byte("hellos")
	bucketTombstones  = []byte("tombstones")
	bucketUnregOutbox = []byte("unreg_outbox")

	upstreamBuckets = [][]byte{bucketUpstream, bucketUpstreamRev, bucketHellos, bucketTombstones, bucketUnregOutbox}
)

// Version 6: the upstream link's buckets. Channel records written from
// now on are format 2 (with the upstream's endpoint); format 1 records
// stay as they are and still decode.
func migrateCreateUpstream(tx *bolt.Tx) error {
	for _, name := range upstreamBuckets {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	return nil
}

// UpstreamID is the identity that stands for a device upstream.
type UpstreamID struct {
	// Device is the device's own UAID, Upstream the UAID the upstream
	// knows it by.
	Device, Upstream push.UAID
	// Helloed is when the link last said hello upstream for it (zero:
	// never).
	Helloed time.Time
}

func upstreamValue(up push.UAID, helloed uint64) []byte {
	v := make([]byte, 24)
	copy(v, up[:])
	binary.BigEndian.PutUint64(v[16:], helloed)
	return v
}

func decodeUpstream(k, v []byte) (UpstreamID, bool) {
	var id UpstreamID
	if len(k) != 16 || len(v) != 24 {
		return id, false
	}
	copy(id.Device[:], k)
	copy(id.Upstream[:], v)
	id.Helloed = nanosTime(binary.BigEndian.Uint64(v[16:]))
	return id, true
}

func helloKey(helloed uint64, u push.UAID) []byte {
	k := make([]byte, 24)
	binary.BigEndian.PutUint64(k, helloed)
	copy(k[8:], u[:])
	return k
}

// UpstreamID returns the identity that stands for device u upstream, or
// false if it has none.
func (s *Store) UpstreamID(u push.UAID) (UpstreamID, bool, error) {
	var (
		id UpstreamID
		ok bool
	)
	err := s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketUpstream).Get(u[:])
		if v == nil {
			return nil
		}
		if id, ok = decodeUpstream(u[:], v); !ok {
			return corrupt("upstream row", u[:])
		}
		return nil
	})
	return id, ok, err
}

// DeviceFor returns the device that upstream UAID up stands for, or
// false if none.
func (s *Store) DeviceFor(up push.UAID) (push.UAID, bool, error) {
	var (
		u  push.UAID
		ok bool
	)
	err := s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketUpstreamRev).Get(up[:])
		if v == nil {
			return nil
		}
		if len(v) != 16 {
			return corrupt("upstream_rev row", up[:])
		}
		copy(u[:], v)
		ok = true
		return nil
	})
	return u, ok, err
}

// SetUpstreamID records that upstream UAID up stands for device u, last
// helloed at helloed (zero: not yet), replacing u's previous identity if
// any (after the upstream reset it; a first register uses AddUpstreamID). An up that already stands for
// another device fails with ErrUpstreamConflict; setting the identity u
// already has only updates helloed.
func (s *Store) SetUpstreamID(ctx context.Context, u, up push.UAID, helloed time.Time) error {
	at := timeNanos(helloed)
	return s.do(ctx, func(t *txn) error { return t.setUpstreamID(u, up, at) })
}

// setUpstreamID is SetUpstreamID in t.
func (t *txn) setUpstreamID(u, up push.UAID, at uint64) error {
	if v := t.upstreamRev.Get(up[:]); v != nil && !bytes.Equal(v, u[:]) {
		return reject(ErrUpstreamConflict)
	}
	if err := t.deleteUpstreamID(u); err != nil {
		return err
	}
	return t.putUpstreamID(u, up, at)
}

// AddUpstreamID records that upstream UAID up stands for device u, last
// helloed at helloed, unless u already has an identity: it returns the
// identity u has afterwards and whether this call made it. A caller that
// lost a race for a device's first register uses the identity returned
// and abandons its own up. An up that already stands for another device
// fails with ErrUpstreamConflict.
func (s *Store) AddUpstreamID(ctx context.Context, u, up push.UAID, helloed time.Time) (UpstreamID, bool, error) {
	at := timeNanos(helloed)
	var (
		id    UpstreamID
		added bool
	)
	err := s.do(ctx, func(t *txn) error {
		var err error
		id, added, err = t.addUpstreamID(u, up, at)
		return err
	})
	if err != nil {
		return UpstreamID{}, false, err
	}
	return id, added, nil
}

// addUpstreamID is AddUpstreamID in t.
func (t *txn) addUpstreamID(u, up push.UAID, at uint64) (UpstreamID, bool, error) {
	if v := t.upstream.Get(u[:]); v != nil {
		id, ok := decodeUpstream(u[:], v)
		if !ok {
			return id, false, corrupt("upstream row", u[:])
		}
		return id, false, nil
	}
	if t.upstreamRev.Get(up[:]) != nil {
		return UpstreamID{}, false, reject(ErrUpstreamConflict)
	}
	if err := t.putUpstreamID(u, up, at); err != nil {
		return UpstreamID{}, false, err
	}
	return UpstreamID{Device: u, Upstream: up, Helloed: nanosTime(at)}, true, nil
}

// putUpstreamID writes u's identity rows; u has none.
func (t *txn) putUpstreamID(u, up push.UAID, at uint64) error {
	t.delta.upstreamIDs++
	if err := t.upstream.Put(deviceKey(u), upstreamValue(up, at)); err != nil {
		return err
	}
	if err := t.upstreamRev.Put(deviceKey(up), deviceKey(u)); err != nil {
		return err
	}
	return t.hellos.Put(helloKey(at, u), nil)
}

// DeleteUpstreamID removes device u's upstream identity, reporting
// whether it had one. DeleteDevice removes it too.
func (s *Store) DeleteUpstreamID(ctx context.Context, u push.UAID) (bool, error) {
	var existed bool
	err := s.do(ctx, func(t *txn) error {
		existed = t.upstream.Get(u[:]) != nil
		return t.deleteUpstreamID(u)
	})
	return existed, err
}

// deleteUpstreamID removes u's identity rows, if any.
func (t *txn) deleteUpstreamID(u push.UAID) error {
	v := t.upstream.Get(u[:])
	if v == nil {
		return nil
	}
	id, ok := decodeUpstream(u[:], v)
	if !ok {
		return corrupt("upstream row", u[:])
	}
	if rv := t.upstreamRev.Get(id.Upstream[:]); bytes.Equal(rv, u[:]) {
		if err := t.upstreamRev.Delete(id.Upstream[:]); err != nil {
			return err
		}
	}
	if err := t.hellos.Delete(helloKey(timeNanos(id.Helloed), u)); err != nil {
		return err
	}
	t.delta.upstreamIDs--
	return t.upstream.Delete(u[:])
}

// Helloed records that the devices us were helloed upstream at at, in
// one commit. It rewrites each device's identity row and moves its row
// in the hello order; nothing else. Devices without an upstream identity
// are skipped. It returns how many it updated.
func (s *Store) Helloed(ctx context.Context, at time.Time, us ...push.UAID) (int, error) {
	if len(us) == 0 {
		return 0, nil
	}
	n := timeNanos(at)
	var updated int
	err := s.do(ctx, func(t *txn) error {
		updated = 0
		for _, u := range us {
			ok, err := t.helloed(u, n)
			if err != nil {
				return err
			}
			if ok {
				updated++
			}
		}
		return nil
	})
	return updated, err
}

// helloed records u's hello at n (Unix ns): its identity row and its
// place in the hello order. It reports false if u has no identity.
func (t *txn) helloed(u push.UAID, n uint64) (bool, error) {
	v := t.upstream.Get(u[:])
	if v == nil {
		return false, nil
	}
	id, ok := decodeUpstream(u[:], v)
	if !ok {
		return false, corrupt("upstream row", u[:])
	}
	if err := t.moveHello(u, timeNanos(id.Helloed), n); err != nil {
		return true, err
	}
	if timeNanos(id.Helloed) == n {
		return true, nil
	}
	return true, t.upstream.Put(deviceKey(u), upstreamValue(id.Upstream, n))
}

// moveHello moves u's row in the hello order from old to n.
func (t *txn) moveHello(u push.UAID, old, n uint64) error {
	if old == n {
		return nil
	}
	if err := t.hellos.Delete(helloKey(old, u)); err != nil {
		return err
	}
	return t.hellos.Put(helloKey(n, u), nil)
}

// HelloedBefore returns up to limit (all if limit <= 0) upstream
// identities last helloed before before (never helloed first), oldest
// first: the devices the link must hello again.
func (s *Store) HelloedBefore(before time.Time, limit int) ([]UpstreamID, error) {
	end := timeNanos(before)
	var out []UpstreamID
	err := s.scan(func(tx *bolt.Tx) error {
		ids := tx.Bucket(bucketUpstream)
		c := tx.Bucket(bucketHellos).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if len(k) != 24 {
				return corrupt("hello row", k)
			}
			if binary.BigEndian.Uint64(k) >= end {
				break
			}
			id, ok := decodeUpstream(k[8:], ids.Get(k[8:]))
			if !ok {
				return corrupt("hello row", k)
			}
			out = append(out, id)
			if limit > 0 && len(out) >= limit {
				break
			}
		}
		return nil
	})
	return out, err
}

// ---- unregisters waiting to be sent upstream ----

// PendingUnregister is an unregister still to be sent upstream.
type PendingUnregister struct {
	// Seq orders the entries (the order they were made) and names one
	// for UnregisterSent.
	Seq      uint64
	UAID     push.UAID
	Channel  push.ChannelID
	Upstream push.UAID // the upstream UAID to send it as
	At       time.Time // when the device unregistered
}

// outbox entry v1: ver | uaid(16) | chid(16) | upstream(16) | at(8)
const (
	outboxV1  = 1
	outboxLen = 1 + 16 + 16 + 16 + 8
)

func encodeOutbox(p PendingUnregister) []byte {
	v := make([]byte, outboxLen)
	v[0] = outboxV1
	copy(v[1:], p.UAID[:])
	copy(v[17:], p.Channel[:])
	copy(v[33:], p.Upstream[:])
	binary.BigEndian.PutUint64(v[49:], timeNanos(p.At))
	return v
}

func decodeOutbox(k, v []byte) (PendingUnregister, bool) {
	var p PendingUnregister
	if len(k) != 8 || len(v) != outboxLen || v[0] != outboxV1 {
		return p, false
	}
	p.Seq = binary.BigEndian.Uint64(k)
	copy(p.UAID[:], v[1:])
	copy(p.Channel[:], v[17:])
	copy(p.Upstream[:], v[33:])
	p.At = nanosTime(binary.BigEndian.Uint64(v[49:]))
	return p, true
}

// UnregisterLater unregisters channel id of device u here, as Unregister
// does, and in the same commit keeps its unregister to be sent upstream
// as upstream UAID up: an entry in the outbox (PendingUnregisters) and a
// tombstone that makes Append refuse the channel's messages with
// ErrTombstoned until UnregisterSent removes both. It reports false, and
// writes nothing, if the channel was not registered here; a channel
// already tombstoned keeps its first entry.
func (s *Store) UnregisterLater(ctx context.Context, u push.UAID, id push.ChannelID, up push.UAID) (bool, error) {
	var existed bool
	err := s.do(ctx, func(t *txn) error {
		var err error
		existed, err = t.unregisterLater(u, id, up)
		return err
	})
	return existed, err
}

// unregisterLater is UnregisterLater in t (the outbox entry made at t's
// time).
func (t *txn) unregisterLater(u push.UAID, id push.ChannelID, up push.UAID) (bool, error) {
	key := channelKey(u, id)
	if t.channels.Get(key) == nil {
		return false, nil
	}
	if err := t.unregister(u, id); err != nil {
		return false, err
	}
	if t.tombstones.Get(key) != nil {
		return true, nil
	}
	seq, err := t.unregOutbox.NextSequence()
	if err != nil {
		return false, err
	}
	p := PendingUnregister{UAID: u, Channel: id, Upstream: up, At: t.now}
	if err := t.unregOutbox.Put(seqValue(seq), encodeOutbox(p)); err != nil {
		return false, err
	}
	t.delta.unregs++
	return true, t.tombstones.Put(key, seqValue(seq))
}

// PendingUnregisters returns up to limit (all if limit <= 0) of the
// unregisters waiting to be sent upstream with Seq > afterSeq, in the
// order they were made.
func (s *Store) PendingUnregisters(afterSeq uint64, limit int) ([]PendingUnregister, error) {
	var out []PendingUnregister
	err := s.view(func(tx *bolt.Tx) error {
		if afterSeq == ^uint64(0) {
			return nil
		}
		c := tx.Bucket(bucketUnregOutbox).Cursor()
		for k, v := c.Seek(seqValue(afterSeq + 1)); k != nil; k, v = c.Next() {
			p, ok := decodeOutbox(k, v)
			if !ok {
				return corrupt("unreg_outbox row", k)
			}
			out = append(out, p)
			if limit > 0 && len(out) >= limit {
				break
			}
		}
		return nil
	})
	return out, err
}

// Tombstoned reports whether channel id of u has an unregister waiting to
// be sent upstream.
func (s *Store) Tombstoned(u push.UAID, id push.ChannelID) (bool, error) {
	var ok bool
	err := s.view(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucketTombstones).Get(channelKey(u, id)) != nil
		return nil
	})
	return ok, err
}

// UnregisterSent removes the outbox entries seqs (sent upstream, or no
// longer needed) and their tombstones, in one commit, and returns how
// many existed. Unknown seqs are ignored.
func (s *Store) UnregisterSent(ctx context.Context, seqs ...uint64) (int, error) {
	if len(seqs) == 0 {
		return 0, nil
	}
	var n int
	err := s.do(ctx, func(t *txn) error {
		var err error
		n, err = t.unregisterSent(seqs)
		return err
	})
	return n, err
}

// unregisterSent is UnregisterSent in t.
func (t *txn) unregisterSent(seqs []uint64) (int, error) {
	n := 0
	for _, seq := range seqs {
		k := seqValue(seq)
		v := t.unregOutbox.Get(k)
		if v == nil {
			continue
		}
		p, ok := decodeOutbox(k, v)
		if !ok {
			return n, corrupt("unreg_outbox row", k)
		}
		tk := channelKey(p.UAID, p.Channel)
		if cur, ok := beUint64(t.tombstones.Get(tk)); ok && cur == seq {
			if err := t.tombstones.Delete(tk); err != nil {
				return n, err
			}
		}
		if err := t.unregOutbox.Delete(k); err != nil {
			return n, err
		}
		t.delta.unregs--
		n++
	}
	return n, nil
}

// checkUpstream is Verify's walk of the upstream link's buckets (schema 6
// and later): every row decodes, and the identity, reverse and hello rows
// and the tombstones and outbox agree with each other.
func checkUpstream(tx *bolt.Tx, r *Report) {
	bk := map[string]*bolt.Bucket{}
	for _, name := range upstreamBuckets {
		b := tx.Bucket(name)
		if b == nil {
			r.problem("bucket %s missing", name)
			return
		}
		bk[string(name)] = b
	}
	bk["upstream"].ForEach(func(k, v []byte) error {
		id, ok := decodeUpstream(k, v)
		if !ok {
			r.problem("%v", corrupt("upstream row", k))
			return nil
		}
		if rv := bk["upstream_rev"].Get(id.Upstream[:]); !bytes.Equal(rv, k) {
			r.problem("upstream row %x has no reverse row", k)
		}
		if bk["hellos"].Get(helloKey(timeNanos(id.Helloed), id.Device)) == nil {
			r.problem("upstream row %x has no hello row", k)
		}
		return nil
	})
	bk["upstream_rev"].ForEach(func(k, v []byte) error {
		if len(k) != 16 || len(v) != 16 {
			r.problem("%v", corrupt("upstream_rev row", k))
		} else if id, ok := decodeUpstream(v, bk["upstream"].Get(v)); !ok || !bytes.Equal(id.Upstream[:], k) {
			r.problem("upstream_rev row %x names no identity", k)
		}
		return nil
	})
	bk["hellos"].ForEach(func(k, v []byte) error {
		if len(k) != 24 || len(v) != 0 {
			r.problem("%v", corrupt("hello row", k))
		} else if id, ok := decodeUpstream(k[8:], bk["upstream"].Get(k[8:])); !ok || timeNanos(id.Helloed) != binary.BigEndian.Uint64(k) {
			r.problem("hello row %x names no identity", k)
		}
		return nil
	})
	bk["unreg_outbox"].ForEach(func(k, v []byte) error {
		if _, ok := decodeOutbox(k, v); !ok {
			r.problem("%v", corrupt("unreg_outbox row", k))
		}
		return nil
	})
	bk["tombstones"].ForEach(func(k, v []byte) error {
		seq, ok := beUint64(v)
		if len(k) != 32 || !ok {
			r.problem("%v", corrupt("tombstone row", k))
			return nil
		}
		if p, ok := decodeOutbox(v, bk["unreg_outbox"].Get(v)); !ok || !bytes.Equal(channelKey(p.UAID, p.Channel), k) {
			r.problem("tombstone %x names no outbox entry (%d)", k, seq)
		}
		return nil
	})
}
