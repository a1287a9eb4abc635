package store

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
	bolt "go.etcd.io/bbolt"
)

// The upstream link's state as a site's log writes it (issue #9): on a
// member of a site the upstream sessions are held by one member at a
// time, the holder, and what the link keeps in the store (identities,
// hello times, the unregister outbox and its tombstones) is written
// through the log, so that every member holds it and a new holder
// continues where the old one stopped. These are the Tx forms of the
// Store's upstream writes, with the same results.

// metaHolder is the meta key of the site's holder: member(8) | term(8).
var metaHolder = []byte("holder")

// AddUpstreamID is Store.AddUpstreamID in tx; ErrUpstreamConflict is
// returned as the error, as any rejection.
func (tx *Tx) AddUpstreamID(u, up push.UAID, helloed time.Time) (UpstreamID, bool, error) {
	id, added, err := tx.t.addUpstreamID(u, up, timeNanos(helloed))
	if result, fatal := rejected(err); fatal != nil {
		return id, added, fatal
	} else if result != nil {
		return id, added, result
	}
	return id, added, nil
}

// SetUpstreamID is Store.SetUpstreamID in tx; ErrUpstreamConflict is
// returned as the error.
func (tx *Tx) SetUpstreamID(u, up push.UAID, helloed time.Time) error {
	result, err := rejected(tx.t.setUpstreamID(u, up, timeNanos(helloed)))
	if err != nil {
		return err
	}
	return result
}

// DeleteUpstreamID is Store.DeleteUpstreamID in tx.
func (tx *Tx) DeleteUpstreamID(u push.UAID) (bool, error) {
	existed := tx.t.upstream.Get(u[:]) != nil
	return existed, tx.t.deleteUpstreamID(u)
}

// Helloed records device u's hello at at (Store.Helloed), reporting false
// if u has no upstream identity.
func (tx *Tx) Helloed(u push.UAID, at time.Time) (bool, error) {
	return tx.t.helloed(u, timeNanos(at))
}

// UnregisterLater is Store.UnregisterLater in tx (the outbox entry made
// at the entry's time).
func (tx *Tx) UnregisterLater(u push.UAID, id push.ChannelID, up push.UAID) (bool, error) {
	return tx.t.unregisterLater(u, id, up)
}

// UnregisterSent is Store.UnregisterSent in tx.
func (tx *Tx) UnregisterSent(seqs ...uint64) (int, error) { return tx.t.unregisterSent(seqs) }

// SetHolder records the site's holder: member, named by the leader of
// term.
func (tx *Tx) SetHolder(member, term uint64) error {
	v := binary.BigEndian.AppendUint64(nil, member)
	return tx.t.meta.Put(metaHolder, binary.BigEndian.AppendUint64(v, term))
}

// Holder is Store.Holder in tx.
func (tx *Tx) Holder() (member, term uint64, err error) {
	return decodeHolder(tx.t.meta.Get(metaHolder))
}

func decodeHolder(v []byte) (member, term uint64, err error) {
	if v == nil {
		return 0, 0, nil
	}
	if len(v) != 16 {
		return 0, 0, fmt.Errorf("store: holder meta of %d bytes", len(v))
	}
	return binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:]), nil
}

// Holder returns the site's holder the log last named and the term of
// the leader that named it (0, 0: none yet).
func (s *Store) Holder() (member, term uint64, err error) {
	err = s.view(func(tx *bolt.Tx) error {
		var err error
		member, term, err = decodeHolder(tx.Bucket(bucketMeta).Get(metaHolder))
		return err
	})
	return member, term, err
}
