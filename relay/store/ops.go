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

// sweepChunk bounds the expired messages one sweep transaction removes, so
// a large backlog does not make one huge commit.
const sweepChunk = 10000

// ---- devices ----

// Device returns u's record, or false if it has none.
func (s *Store) Device(u push.UAID) (Device, bool, error) {
	var (
		d  Device
		ok bool
	)
	err := s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketDevices).Get(u[:])
		if v == nil {
			return nil
		}
		var err error
		d, err = decodeDevice(u, v)
		ok = err == nil
		d.Waiting = countMessages(tx.Bucket(bucketMessages), u)
		return err
	})
	return d, ok, err
}

// WakeStates reads in one read transaction what the wake subsystem needs
// about each device of us: whether it has a record, its wake blob, and
// whether any message waits for it. fn is called once per device, in
// order; wake is valid only during the call.
func (s *Store) WakeStates(us []push.UAID, fn func(i int, ok bool, wake []byte, waiting bool)) error {
	return s.view(func(tx *bolt.Tx) error {
		devices := tx.Bucket(bucketDevices)
		c := tx.Bucket(bucketMessages).Cursor()
		for i, u := range us {
			v := devices.Get(u[:])
			if v == nil {
				fn(i, false, nil, false)
				continue
			}
			d, err := decodeDevice(u, v)
			if err != nil {
				return err
			}
			k, _ := c.Seek(u[:])
			fn(i, true, d.Wake, k != nil && bytes.HasPrefix(k, u[:]))
		}
		return nil
	})
}

// EachWake calls fn with every device that has a wake blob, in UAID
// order, in one read transaction; wake is valid only during the call.
// It reads every device record: for a start, not a hot path.
func (s *Store) EachWake(fn func(u push.UAID, wake []byte)) error {
	return s.scan(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
			var u push.UAID
			if len(k) != len(u) {
				return nil
			}
			copy(u[:], k)
			d, err := decodeDevice(u, v)
			if err != nil {
				return err
			}
			if len(d.Wake) > 0 {
				fn(u, d.Wake)
			}
			return nil
		})
	})
}

// Touch sets u's LastSeen to now if u has a record; otherwise it does
// nothing.
func (s *Store) Touch(ctx context.Context, u push.UAID, now time.Time) error {
	return s.do(ctx, func(t *txn) error {
		d, ok, err := t.device(u)
		if err != nil || !ok {
			return err
		}
		d.LastSeen = now
		return t.putDevice(d)
	})
}

// UpdateWake replaces u's wake blob (owned by the wake subsystem, stored
// verbatim) with what fn returns for the current one, atomically: fn runs
// inside the write transaction, so it must be quick and must not block or
// call the store. When fn returns an error nothing is written and
// UpdateWake returns it. When fn returns a blob equal to the old one
// nothing is written either. Without a record for u, fn sees nil and
// UpdateWake creates the record (as Register would) if create is true,
// and otherwise fails with ErrNoDevice.
func (s *Store) UpdateWake(ctx context.Context, u push.UAID, create bool, fn func(old []byte) ([]byte, error)) error {
	return s.do(ctx, func(t *txn) error {
		d, ok, err := t.device(u)
		if err != nil {
			return err
		}
		if !ok && !create {
			return reject(ErrNoDevice)
		}
		wake, err := fn(d.Wake)
		if err != nil {
			return reject(err)
		}
		if ok && bytes.Equal(wake, d.Wake) {
			return nil
		}
		if !ok {
			now := t.now
			d = Device{UAID: u, Created: now, LastSeen: now}
			t.delta.devices++
		}
		d.Wake = bytes.Clone(wake)
		return t.putDevice(d)
	})
}

// DeleteDevice removes u's record, channels and messages (counted as
// unregistered) and its upstream identity. Unregisters waiting to be sent
// upstream stay (UnregisterLater). Deleting an unknown device is not an
// error.
func (s *Store) DeleteDevice(ctx context.Context, u push.UAID) error {
	return s.do(ctx, func(t *txn) error { return t.deleteDevice(u) })
}

// deleteDevice is DeleteDevice in t.
func (t *txn) deleteDevice(u push.UAID) error {
	_, ok, err := t.device(u)
	if err != nil {
		return err
	}
	seqs, hs, err := t.uaidMessages(u, nil)
	if err != nil {
		return err
	}
	for i, seq := range seqs {
		if err := t.removeMessage(u, seq, hs[i], reasonUnregistered); err != nil {
			return err
		}
	}
	var chans []push.ChannelID
	for _, k := range keysWithPrefix(t.channels.Bucket, u[:]) {
		if _, id, ok := splitChannelKey(k); ok {
			chans = append(chans, id)
		}
		if err := t.channels.Delete(k); err != nil {
			return err
		}
		t.delta.channels--
	}
	if err := t.deleteUpstreamID(u); err != nil {
		return err
	}
	if err := t.forgetLinkChild(u, chans); err != nil {
		return err
	}
	// Topic rows all went with their messages; this catches strays.
	for _, k := range keysWithPrefix(t.topics.Bucket, u[:]) {
		if err := t.topics.Delete(k); err != nil {
			return err
		}
	}
	if ok {
		t.delta.devices--
		return t.devices.Delete(u[:])
	}
	return nil
}

// ---- channels ----

// Register adds channel c, creating its device's record if needed (with
// Created and LastSeen set to c.Created, or now if that is zero).
// Registering an existing channel again with an equal Key and Endpoint is
// a no-op; with another Key or Endpoint it fails with ErrChannelConflict
// (a caller with an upstream reads the stored Endpoint with Channel
// first and answers it). A device over MaxChannelsPerUAID gets
// ErrTooManyChannels; a channel whose unregister still waits to be sent
// upstream gets ErrTombstoned; an Endpoint longer than MaxEndpointLen,
// ErrBadChannel.
func (s *Store) Register(ctx context.Context, c Channel) error {
	if err := checkChannel(&c, s.now()); err != nil {
		return err
	}
	key := channelKey(c.UAID, c.ID)
	val := encodeChannel(c)
	return s.do(ctx, func(t *txn) error { return t.register(key, val, c) })
}

// checkChannel refuses an Endpoint over MaxEndpointLen and sets a zero
// Created to now: Register's, and an applied entry's (Tx.Register).
func checkChannel(c *Channel, now time.Time) error {
	if len(c.Endpoint) > MaxEndpointLen {
		return fmt.Errorf("%w: endpoint longer than %d bytes", ErrBadChannel, MaxEndpointLen)
	}
	if c.Created.IsZero() {
		c.Created = now
	}
	return nil
}

// register is Register in t: key and val are c's row.
func (t *txn) register(key, val []byte, c Channel) error {
	if v := t.channels.Get(key); v != nil {
		old, err := decodeChannel(c.UAID, c.ID, v)
		if err != nil {
			return err
		}
		if bytes.Equal(old.Key, c.Key) && old.Endpoint == c.Endpoint {
			return nil
		}
		return reject(ErrChannelConflict)
	}
	if t.tombstones.Get(key) != nil {
		return reject(ErrTombstoned)
	}
	d, ok, err := t.device(c.UAID)
	if err != nil {
		return err
	}
	if ok && d.Channels >= t.maxChannels {
		return reject(ErrTooManyChannels)
	}
	if !ok {
		d = Device{UAID: c.UAID, Created: c.Created, LastSeen: c.Created}
		t.delta.devices++
	}
	if err := t.channels.Put(key, val); err != nil {
		return err
	}
	d.Channels++
	t.delta.channels++
	return t.putDevice(d)
}

// Channel returns one channel, or false if it is not registered.
func (s *Store) Channel(u push.UAID, id push.ChannelID) (Channel, bool, error) {
	var (
		c  Channel
		ok bool
	)
	err := s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketChannels).Get(channelKey(u, id))
		if v == nil {
			return nil
		}
		var err error
		c, err = decodeChannel(u, id, v)
		ok = err == nil
		return err
	})
	return c, ok, err
}

// Channels returns u's channels ordered by ID.
func (s *Store) Channels(u push.UAID) ([]Channel, error) {
	var out []Channel
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketChannels).Cursor()
		for k, v := c.Seek(u[:]); k != nil && bytes.HasPrefix(k, u[:]); k, v = c.Next() {
			var id push.ChannelID
			copy(id[:], k[16:])
			ch, err := decodeChannel(u, id, v)
			if err != nil {
				return err
			}
			out = append(out, ch)
		}
		return nil
	})
	return out, err
}

// Unregister removes a channel and its waiting messages (counted as
// unregistered). It reports false if the channel did not exist.
func (s *Store) Unregister(ctx context.Context, u push.UAID, id push.ChannelID) (bool, error) {
	key := channelKey(u, id)
	var existed bool
	err := s.do(ctx, func(t *txn) error {
		existed = false
		if t.channels.Get(key) == nil {
			return nil
		}
		existed = true
		return t.unregister(u, id)
	})
	return existed, err
}

// unregister removes registered channel id of u and its waiting messages.
func (t *txn) unregister(u push.UAID, id push.ChannelID) error {
	d, ok, err := t.device(u)
	if err != nil {
		return err
	}
	seqs, hs, err := t.uaidMessages(u, &id)
	if err != nil {
		return err
	}
	for i, seq := range seqs {
		if err := t.removeMessage(u, seq, hs[i], reasonUnregistered); err != nil {
			return err
		}
	}
	if err := t.channels.Delete(channelKey(u, id)); err != nil {
		return err
	}
	t.delta.channels--
	if !ok {
		return nil
	}
	d.Channels--
	return t.putDevice(d)
}

// ---- messages ----

// Append stores m and returns it with its Seq (and Received and Expiry
// filled in when they were zero). A message whose origin key was appended
// before, while that one's TTL lasts, is not stored again: Append returns
// it with the first one's Seq (AppendBatch tells more). The channel must
// be registered (ErrNoChannel, or ErrTombstoned while its unregister waits
// to be sent upstream: the caller acks the message upstream and drops
// it); m.TTL must be positive (ErrZeroTTL). A waiting message
// with the same non-empty Topic on the same channel is replaced (counted
// as replaced_topic) and the new one gets a new Seq. If the device then
// holds more than MaxMessagesPerUAID messages its oldest are dropped
// (counted as dropped_cap).
func (s *Store) Append(ctx context.Context, m Message) (Message, error) {
	apply, out, err := s.appendOp(&m)
	if err != nil {
		return Message{}, err
	}
	if err := s.do(ctx, apply); err != nil {
		return Message{}, err
	}
	m.Seq = out.seq
	return m, nil
}

// fill copies the outcome into an append's result.
func (o *appendOutcome) fill(r *AppendResult) {
	r.Message.Seq, r.Queue = o.seq, o.queue
	r.Duplicate, r.Waiting = o.dup, o.waiting
}

// appendOutcome is where an append op leaves what it did: the message's
// seq and its device's message count right after it (and after any
// drop-oldest it caused).
type appendOutcome struct {
	seq   uint64
	queue int
	// dup: the origin key was appended before (seq is the first's);
	// waiting: the first still waits.
	dup, waiting bool
}

// appendOp validates and completes m and returns the op that stores it
// and where that op leaves its outcome. Encoding happens here, in the
// caller's goroutine, not in the committer. AppendBatch runs several of
// these ops as one.
func (s *Store) appendOp(m *Message) (func(t *txn) error, *appendOutcome, error) {
	if m.TTL <= 0 {
		return nil, nil, ErrZeroTTL
	}
	if len(m.Topic) > MaxTopicLen {
		return nil, nil, fmt.Errorf("%w: topic longer than %d bytes", ErrBadMessage, MaxTopicLen)
	}
	if m.Received.IsZero() {
		m.Received = s.now()
	}
	if m.Expiry.IsZero() {
		m.Expiry = m.Received.Add(m.TTL)
	}
	var okey []byte
	if !m.Origin.IsZero() {
		var err error
		if okey, err = m.Origin.AppendBinary(nil); err != nil {
			return nil, nil, fmt.Errorf("%w: %w", ErrBadMessage, err)
		}
		if m.Origin.Kind == push.OriginLocal {
			// A local key names a post to this relay: nothing can send
			// it again, so an index row for it would be a write (a page
			// per commit, on flash) that no lookup ever reads.
			okey = nil
		}
	}
	m.Seq = 0
	val := encodeMessage(m)
	exp := timeNanos(m.Expiry)
	u, ch, topic := m.UAID, m.Channel, m.Topic
	out := new(appendOutcome)
	seq := &out.seq
	// What the stored hook sees: the caller's message with its data in
	// val, which nothing changes after this (the caller's buffer may be
	// reused once Append returns).
	stored := *m
	if len(m.Data) > 0 {
		stored.Data = val[len(val)-len(m.Data):]
	}
	apply := func(t *txn) error {
		out.dup, out.waiting = false, false
		if okey != nil {
			// The same origin key again while the first one's TTL lasts:
			// report the first, store nothing.
			if first, ok, err := t.origin(okey); err != nil {
				return err
			} else if ok {
				out.dup, out.seq, out.queue = true, first.seq, 0
				out.waiting = t.messages.Get(messageKey(first.uaid, first.seq)) != nil
				return nil
			}
		}
		// A channel implies its device's record (Register writes both,
		// DeleteDevice removes both).
		if ck := channelKey(u, ch); t.channels.Get(ck) == nil {
			if t.tombstones.Get(ck) != nil {
				t.tombstoned++
				return reject(ErrTombstoned)
			}
			return reject(ErrNoChannel)
		}
		var tk []byte
		if topic != "" {
			tk = topicKey(u, ch, topic)
			if old, ok := beUint64(t.topics.Get(tk)); ok {
				h, found, err := t.header(u, old)
				if err != nil {
					return err
				}
				if found {
					if err := t.removeMessage(u, old, h, reasonReplacedTopic); err != nil {
						return err
					}
				}
			}
		}
		n := t.messageCount(u)
		var err error
		if *seq, err = t.messages.NextSequence(); err != nil {
			return err
		}
		if err := t.messages.Put(messageKey(u, *seq), val); err != nil {
			return err
		}
		// The expiry row names the origin key (if any), so the sweep
		// removes the key when the TTL ends, acked or not.
		if err := t.expiry.Put(expiryKey(exp, u, *seq), okey); err != nil {
			return err
		}
		if okey != nil {
			if err := t.origins.Put(okey, originValue(u, *seq, exp)); err != nil {
				return err
			}
		}
		if tk != nil {
			if err := t.topics.Put(tk, seqValue(*seq)); err != nil {
				return err
			}
		}
		t.waiting[u] = n + 1
		t.delta.waiting++
		t.stored++
		if t.keepAppended {
			stored.Seq = *seq
			t.addAppended(stored)
		}
		for n := n + 1; n > t.maxMessages; n-- {
			dropped, err := t.dropOldest(u)
			if err != nil {
				return err
			}
			if !dropped {
				break
			}
		}
		out.queue = t.messageCount(u)
		return nil
	}
	return apply, out, nil
}

// Messages returns up to limit (all if limit <= 0) of u's unexpired
// messages with Seq > afterSeq, in Seq order.
func (s *Store) Messages(u push.UAID, afterSeq uint64, limit int) ([]Message, error) {
	now := timeNanos(s.now())
	var out []Message
	err := s.view(func(tx *bolt.Tx) error {
		if afterSeq == ^uint64(0) {
			return nil
		}
		c := tx.Bucket(bucketMessages).Cursor()
		for k, v := c.Seek(messageKey(u, afterSeq+1)); k != nil && bytes.HasPrefix(k, u[:]); k, v = c.Next() {
			seq := binary.BigEndian.Uint64(k[16:])
			if len(v) >= messageFixed && binary.BigEndian.Uint64(v[33:]) <= now {
				continue // expired, waiting for the sweeper
			}
			m, err := decodeMessage(u, seq, v)
			if err != nil {
				return err
			}
			out = append(out, m)
			if limit > 0 && len(out) >= limit {
				break
			}
		}
		return nil
	})
	return out, err
}

// Ack deletes u's messages with the given seqs (counted as acked) and
// returns how many existed. Unknown seqs are ignored.
func (s *Store) Ack(ctx context.Context, u push.UAID, seqs ...uint64) (int, error) {
	if len(seqs) == 0 {
		return 0, nil
	}
	var n int
	err := s.do(ctx, func(t *txn) (err error) {
		n, err = t.ack(u, seqs)
		return err
	})
	return n, err
}

// ack deletes u's messages with the given seqs (counted as acked),
// returning how many existed.
func (t *txn) ack(u push.UAID, seqs []uint64) (int, error) {
	n := 0
	for _, seq := range seqs {
		h, ok, err := t.header(u, seq)
		if err != nil {
			return n, err
		}
		if !ok {
			continue
		}
		if err := t.removeMessage(u, seq, h, reasonAcked); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// Delete removes message seq if it belongs to channel ch of u (the app
// server's DELETE, counted as deleted), reporting whether it did.
func (s *Store) Delete(ctx context.Context, u push.UAID, ch push.ChannelID, seq uint64) (bool, error) {
	var deleted bool
	err := s.do(ctx, func(t *txn) (err error) {
		deleted, err = t.delete(u, ch, seq)
		return err
	})
	return deleted, err
}

// delete is Delete in t.
func (t *txn) delete(u push.UAID, ch push.ChannelID, seq uint64) (bool, error) {
	h, ok, err := t.header(u, seq)
	if err != nil || !ok || h.channel != ch {
		return false, err
	}
	if err := t.removeMessage(u, seq, h, reasonDeleted); err != nil {
		return false, err
	}
	return true, nil
}

// Sweep removes every message whose Expiry has passed, using the expiry
// index, at most sweepChunk per commit, and returns how many it removed.
// Run calls it every SweepInterval.
func (s *Store) Sweep(ctx context.Context) (int, error) {
	total := 0
	for {
		var n int
		var more bool
		err := s.do(ctx, func(t *txn) (err error) {
			n, more, err = t.sweep(s.sweepChunk)
			return err
		})
		total += n
		if err != nil || !more {
			return total, err
		}
	}
}

// sweep removes up to limit messages whose Expiry passed by t.now,
// reporting how many and whether more are due.
func (t *txn) sweep(limit int) (n int, more bool, err error) {
	now := timeNanos(t.now)
	var keys, okeys [][]byte
	c := t.expiry.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) != 32 {
			return n, more, corrupt("expiry key", k)
		}
		if binary.BigEndian.Uint64(k) > now {
			break
		}
		if len(keys) == limit {
			more = true
			break
		}
		keys = append(keys, bytes.Clone(k))
		okeys = append(okeys, bytes.Clone(v))
	}
	for i, k := range keys {
		// The origin key (if any) ends with the TTL, whether the
		// message was acked or still waits.
		if err := t.dropOrigin(okeys[i], k[8:]); err != nil {
			return n, more, err
		}
		var u push.UAID
		copy(u[:], k[8:24])
		seq := binary.BigEndian.Uint64(k[24:])
		h, ok, err := t.header(u, seq)
		if err != nil {
			return n, more, err
		}
		if !ok {
			// A stray index row; drop it.
			if err := t.expiry.Delete(k); err != nil {
				return n, more, err
			}
			continue
		}
		if err := t.removeMessage(u, seq, h, reasonExpired); err != nil {
			return n, more, err
		}
		// Normally removeMessage already did; this guarantees
		// progress even if the row and the record disagree.
		if err := t.expiry.Delete(k); err != nil {
			return n, more, err
		}
		n++
	}
	return n, more, nil
}
