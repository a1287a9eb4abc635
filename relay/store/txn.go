package store

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"slices"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
	bolt "go.etcd.io/bbolt"
)

// reason says why a message left the store; it is the label of
// pushrelay_store_messages_deleted_total.
type reason int

const (
	reasonAcked reason = iota
	reasonExpired
	reasonReplacedTopic
	reasonDroppedCap
	reasonUnregistered
	reasonDeleted
	numReasons
)

var reasonNames = [numReasons]string{
	reasonAcked:         "acked",
	reasonExpired:       "expired",
	reasonReplacedTopic: "replaced_topic",
	reasonDroppedCap:    "dropped_cap",
	reasonUnregistered:  "unregistered",
	reasonDeleted:       "deleted",
}

// txn is one batch's write transaction with its buckets and the effects
// to publish if it commits. Ops keep the channel counts in the device
// records, report store-wide changes in delta, and keep the committer's
// per-device message counts (Store.waiting) through waiting.
type txn struct {
	tx                                                         *bolt.Tx
	devices, channels, messages, topics, expiry, meta, origins *bucket
	// The upstream link's buckets (schema 6, upstream.go).
	upstream, upstreamRev, hellos, tombstones, unregOutbox *bucket
	// rec is the batch's redo record when the store has a write-ahead
	// log (nil otherwise): every write through the buckets above and
	// through bucket() goes into it.
	rec                      *redo
	now                      time.Time
	maxMessages, maxChannels int

	delta   totals
	stored  int
	deleted [numReasons]int
	// tombstoned counts appends refused with ErrTombstoned.
	tombstoned int

	// cached is the committer's count of messages per device, read only;
	// waiting holds this transaction's counts, which replace those in
	// cached if it commits.
	cached  map[push.UAID]int
	waiting map[push.UAID]int

	// appended collects the messages this transaction stored, in seq
	// order, when the Store has a stored hook; gone marks (by index) those
	// removed later in the same transaction: a topic or the cap can replace
	// a message of the same batch.
	appended []Message
	gone     []bool
	// keepAppended says whether to collect them; batchLen sizes appended.
	keepAppended bool
	batchLen     int
}

// newTxn starts a batch in tx; rec (nil: none) records its writes.
func (s *Store) newTxn(tx *bolt.Tx, rec *redo) *txn {
	t := &txn{
		tx:          tx,
		rec:         rec,
		devices:     wrapBucket(tx, bucketDevices, rec),
		channels:    wrapBucket(tx, bucketChannels, rec),
		messages:    wrapBucket(tx, bucketMessages, rec),
		topics:      wrapBucket(tx, bucketTopics, rec),
		expiry:      wrapBucket(tx, bucketExpiry, rec),
		meta:        wrapBucket(tx, bucketMeta, rec),
		origins:     wrapBucket(tx, bucketOrigins, rec),
		upstream:    wrapBucket(tx, bucketUpstream, rec),
		upstreamRev: wrapBucket(tx, bucketUpstreamRev, rec),
		hellos:      wrapBucket(tx, bucketHellos, rec),
		tombstones:  wrapBucket(tx, bucketTombstones, rec),
		unregOutbox: wrapBucket(tx, bucketUnregOutbox, rec),
		now:         s.now(),
		maxMessages: s.maxMessages,
		maxChannels: s.maxChannels,
		cached:      s.waiting,
	}
	t.keepAppended = s.onStored.Load() != nil
	// Messages and expiry rows are queues: appended at the tail of a key
	// range (a device's seqs, expiry times) and removed from its head.
	// bbolt's default half-full split doubles their size on disk.
	t.messages.FillPercent = appendFillPercent
	t.expiry.FillPercent = appendFillPercent
	// Local origin ids start with the clock, so they too are appended
	// in order, mostly.
	t.origins.FillPercent = appendFillPercent
	return t
}

const appendFillPercent = 0.9

// appendOrdered reports the buckets newTxn fills to appendFillPercent.
func appendOrdered(name []byte) bool {
	switch string(name) {
	case string(bucketMessages), string(bucketExpiry), string(bucketOrigins):
		return true
	}
	return false
}

// bucket returns the transaction's handle of bucket name, writes
// recorded like those of its fields.
func (t *txn) bucket(name []byte) *bucket { return wrapBucket(t.tx, name, t.rec) }

func (t *txn) countMetrics(m *storeMetrics) {
	if t.stored > 0 {
		m.stored.Add(float64(t.stored))
	}
	if t.tombstoned > 0 {
		m.tombstoned.Add(float64(t.tombstoned))
	}
	for r, n := range t.deleted {
		if n > 0 {
			m.deleted[r].Add(float64(n))
		}
	}
}

func (t *txn) device(u push.UAID) (Device, bool, error) {
	v := t.devices.Get(u[:])
	if v == nil {
		return Device{}, false, nil
	}
	d, err := decodeDevice(u, v)
	return d, err == nil, err
}

func (t *txn) putDevice(d Device) error {
	return t.devices.Put(deviceKey(d.UAID), encodeDevice(d))
}

// header decodes the index fields of message u/seq, or reports it absent.
func (t *txn) header(u push.UAID, seq uint64) (msgHeader, bool, error) {
	v := t.messages.Get(messageKey(u, seq))
	if v == nil {
		return msgHeader{}, false, nil
	}
	h, err := decodeHeader(u, seq, v)
	return h, err == nil, err
}

// messageCount returns how many messages u has: from this transaction's
// or the committer's count, or else counted (up to the cap, a few
// thousand rows at most) and remembered.
func (t *txn) messageCount(u push.UAID) int {
	if n, ok := t.waiting[u]; ok {
		return n
	}
	n, ok := t.cached[u]
	if !ok {
		n = countMessages(t.messages.Bucket, u)
	}
	if t.waiting == nil {
		t.waiting = make(map[push.UAID]int)
	}
	t.waiting[u] = n
	return n
}

// addMessages records that u's message count changed by delta, where
// the count is known; an unknown count is counted when it is needed.
func (t *txn) addMessages(u push.UAID, delta int) {
	if n, ok := t.waiting[u]; ok {
		t.waiting[u] = max(n+delta, 0)
		return
	}
	if n, ok := t.cached[u]; ok {
		if t.waiting == nil {
			t.waiting = make(map[push.UAID]int)
		}
		t.waiting[u] = max(n+delta, 0)
	}
}

// countMessages counts u's rows in the messages bucket.
func countMessages(messages *bolt.Bucket, u push.UAID) int {
	n := 0
	c := messages.Cursor()
	for k, _ := c.Seek(u[:]); k != nil && bytes.HasPrefix(k, u[:]); k, _ = c.Next() {
		n++
	}
	return n
}

// removeMessage deletes message u/seq and its index rows and counts it
// under why.
func (t *txn) removeMessage(u push.UAID, seq uint64, h msgHeader, why reason) error {
	if err := t.messages.Delete(messageKey(u, seq)); err != nil {
		return err
	}
	// An expiry row that names an origin key stays until the TTL ends:
	// the sweep removes it with the key.
	if ek := expiryKey(h.expiry, u, seq); len(t.expiry.Get(ek)) == 0 {
		if err := t.expiry.Delete(ek); err != nil {
			return err
		}
	}
	if h.topic != "" {
		tk := topicKey(u, h.channel, h.topic)
		if cur, ok := beUint64(t.topics.Get(tk)); ok && cur == seq {
			if err := t.topics.Delete(tk); err != nil {
				return err
			}
		}
	}
	t.delta.waiting--
	t.deleted[why]++
	t.addMessages(u, -1)
	t.unappend(seq)
	return nil
}

// addAppended records a message this transaction stored.
func (t *txn) addAppended(m Message) {
	if t.appended == nil {
		t.appended = make([]Message, 0, t.batchLen)
	}
	t.appended = append(t.appended, m)
}

// stillStored returns the messages this transaction appended and did not
// remove again, in seq order, in the transaction's array.
func (t *txn) stillStored() []Message {
	if t.gone == nil {
		return t.appended
	}
	out := t.appended[:0]
	for i, m := range t.appended {
		if i >= len(t.gone) || !t.gone[i] {
			out = append(out, m)
		}
	}
	return out
}

// unappend marks message seq gone if this transaction appended it.
func (t *txn) unappend(seq uint64) {
	if len(t.appended) == 0 || seq < t.appended[0].Seq {
		return
	}
	i, ok := slices.BinarySearchFunc(t.appended, seq, func(m Message, seq uint64) int {
		return cmp.Compare(m.Seq, seq)
	})
	if !ok {
		return
	}
	if t.gone == nil {
		t.gone = make([]bool, 0, cap(t.appended))
	}
	if i >= len(t.gone) {
		t.gone = append(t.gone, make([]bool, i+1-len(t.gone))...)
	}
	t.gone[i] = true
}

// dropOldest removes u's oldest message; false if it has none. An
// expired message is counted as expired, not as dropped.
func (t *txn) dropOldest(u push.UAID) (bool, error) {
	k, v := t.messages.Cursor().Seek(u[:])
	if k == nil || !bytes.HasPrefix(k, u[:]) {
		return false, nil
	}
	seq := binary.BigEndian.Uint64(k[16:])
	h, err := decodeHeader(u, seq, v)
	if err != nil {
		return false, err
	}
	why := reasonDroppedCap
	if h.expiry <= timeNanos(t.now) {
		why = reasonExpired
	}
	if err := t.removeMessage(u, seq, h, why); err != nil {
		return false, err
	}
	return true, nil
}

// uaidMessages returns the seqs and headers of u's messages, optionally
// only those of channel ch.
func (t *txn) uaidMessages(u push.UAID, ch *push.ChannelID) ([]uint64, []msgHeader, error) {
	var (
		seqs []uint64
		hs   []msgHeader
	)
	c := t.messages.Cursor()
	for k, v := c.Seek(u[:]); k != nil && bytes.HasPrefix(k, u[:]); k, v = c.Next() {
		seq := binary.BigEndian.Uint64(k[16:])
		h, err := decodeHeader(u, seq, v)
		if err != nil {
			return nil, nil, err
		}
		if ch != nil && h.channel != *ch {
			continue
		}
		seqs = append(seqs, seq)
		hs = append(hs, h)
	}
	return seqs, hs, nil
}

// keysWithPrefix copies the keys of b that start with prefix.
func keysWithPrefix(b *bolt.Bucket, prefix []byte) [][]byte {
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	return keys
}

// originEntry is an origins row: the message first appended with the key.
type originEntry struct {
	uaid   push.UAID
	seq    uint64
	expiry uint64
}

// originValue encodes an origins row: uaid(16) | seq(8) | expiry(8).
func originValue(u push.UAID, seq, expiry uint64) []byte {
	v := make([]byte, 32)
	copy(v, u[:])
	binary.BigEndian.PutUint64(v[16:], seq)
	binary.BigEndian.PutUint64(v[24:], expiry)
	return v
}

func decodeOriginValue(v []byte) (originEntry, bool) {
	if len(v) != 32 {
		return originEntry{}, false
	}
	var e originEntry
	copy(e.uaid[:], v)
	e.seq = binary.BigEndian.Uint64(v[16:])
	e.expiry = binary.BigEndian.Uint64(v[24:])
	return e, true
}

// origin returns the message first appended with origin key okey, unless
// its TTL has ended (a row the sweep has not removed yet is ignored, and
// replaced by the next append with the key).
func (t *txn) origin(okey []byte) (originEntry, bool, error) {
	v := t.origins.Get(okey)
	if v == nil {
		return originEntry{}, false, nil
	}
	e, ok := decodeOriginValue(v)
	if !ok {
		return originEntry{}, false, corrupt("origin row", okey)
	}
	return e, e.expiry > timeNanos(t.now), nil
}

// dropOrigin removes origin key okey (none if empty) if its row still
// names message useq (uaid(16) | seq(8)): a later append with the key may
// have taken it over.
func (t *txn) dropOrigin(okey, useq []byte) error {
	if len(okey) == 0 {
		return nil
	}
	if v := t.origins.Get(okey); len(v) == 32 && bytes.Equal(v[:24], useq) {
		return t.origins.Delete(okey)
	}
	return nil
}
