package store

import (
	"context"
	"fmt"

	"github.com/pushrelay/pushrelay/relay/push"
	bolt "go.etcd.io/bbolt"
)

// What a parent relay keeps for the relay link (schema 7): which child
// relay serves each UAID registered over the link.
//
//	link_children  uaid(16)  → child name (1 to MaxChildNameLen bytes)
//
// The row is written with the UAID's first register over the link, before
// its channel, so that a message posted for the channel is known to go to
// the child; DeleteDevice removes it.
var bucketLinkChildren = []byte("link_children")

// MaxChildNameLen bounds a child relay's name (the link's limit).
const MaxChildNameLen = 64

func migrateCreateLinkChildren(tx *bolt.Tx) error {
	if _, err := tx.CreateBucketIfNotExists(bucketLinkChildren); err != nil {
		return fmt.Errorf("create bucket %s: %w", bucketLinkChildren, err)
	}
	return nil
}

// SetLinkChild records that child serves u (replacing another child's
// claim: a device moved to another edge relay).
func (s *Store) SetLinkChild(ctx context.Context, u push.UAID, child string) error {
	if len(child) == 0 || len(child) > MaxChildNameLen {
		return fmt.Errorf("%w: child name of %d bytes", ErrBadChannel, len(child))
	}
	return s.do(ctx, func(t *txn) error {
		b := t.tx.Bucket(bucketLinkChildren)
		if string(b.Get(u[:])) == child {
			return nil
		}
		return b.Put(deviceKey(u), []byte(child))
	})
}

// LinkChildren calls fn with every UAID a child serves and the child's
// name (valid only during the call), in UAID order.
func (s *Store) LinkChildren(fn func(u push.UAID, child []byte)) error {
	return s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketLinkChildren).ForEach(func(k, v []byte) error {
			if len(k) != 16 || len(v) == 0 || len(v) > MaxChildNameLen {
				return corrupt("link_children row", k)
			}
			fn(push.UAID(k), v)
			return nil
		})
	})
}

// EachChannel calls fn with every registered channel's UAID and id, in
// order (a child relay's link digest at each connect).
func (s *Store) EachChannel(fn func(u push.UAID, id push.ChannelID)) error {
	return s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketChannels).ForEach(func(k, _ []byte) error {
			u, id, ok := splitChannelKey(k)
			if !ok {
				return corrupt("channel key", k)
			}
			fn(u, id)
			return nil
		})
	})
}

// AckMany is Ack of several devices' messages in one commit: the parent
// relay deletes what a child's ACK covers. It returns how many existed.
func (s *Store) AckMany(ctx context.Context, seqs map[push.UAID][]uint64) (int, error) {
	if len(seqs) == 0 {
		return 0, nil
	}
	var n int
	err := s.do(ctx, func(t *txn) error {
		n = 0
		for u, ss := range seqs {
			k, err := t.ack(u, ss)
			n += k
			if err != nil {
				return err
			}
		}
		return nil
	})
	return n, err
}

// checkLinkChildren is Verify's walk of link_children (schema 7).
func checkLinkChildren(tx *bolt.Tx, r *Report) {
	b := tx.Bucket(bucketLinkChildren)
	if b == nil {
		r.problem("bucket %s missing", bucketLinkChildren)
		return
	}
	b.ForEach(func(k, v []byte) error {
		if len(k) != 16 || len(v) == 0 || len(v) > MaxChildNameLen {
			r.problem("%v", corrupt("link_children row", k))
		}
		return nil
	})
}

// copyLinkChildren is Salvage's copy of link_children, if the old file
// has it (schema 7 and later).
func (w *salvageWriter) copyLinkChildren() error {
	if _, ok := w.geo.roots[string(bucketLinkChildren)]; !ok {
		return nil
	}
	err := w.scan(bucketLinkChildren, func(k, v []byte) error {
		if len(k) != 16 || len(v) == 0 || len(v) > MaxChildNameLen {
			w.rep.BadRows++
			return nil
		}
		key, val := deviceKey(push.UAID(k)), append([]byte(nil), v...)
		return w.add(func(t *salvageTx) error {
			return t.devices.Tx().Bucket(bucketLinkChildren).Put(key, val)
		})
	})
	if err != nil {
		return err
	}
	return w.flush()
}

// WaitingUAIDs returns, in UAID order, up to limit UAIDs from from
// (inclusive) on that have rows in messages (expired ones not yet swept
// included), and whether the walk reached the end. It seeks from one such
// UAID to the next, so the UAIDs without messages cost nothing: the
// parent relay's sweep over a child's UAIDs at each connect, of which
// most have none. No index is kept for it (no write pays for it): the
// messages bucket is keyed by UAID first.
func (s *Store) WaitingUAIDs(from push.UAID, limit int) (us []push.UAID, end bool, err error) {
	limit = max(limit, 1)
	err = s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketMessages).Cursor()
		k, _ := c.Seek(from[:])
		for {
			if k == nil {
				end = true
				return nil
			}
			if len(k) != 24 {
				return corrupt("message key", k)
			}
			if len(us) >= limit {
				return nil
			}
			u := push.UAID(k[:16])
			us = append(us, u)
			next, ok := NextUAID(u)
			if !ok {
				end = true
				return nil
			}
			k, _ = c.Seek(next[:])
		}
	})
	return us, end, err
}

// NextUAID is the UAID after u in key order; false after the last.
func NextUAID(u push.UAID) (push.UAID, bool) {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]++
		if u[i] != 0 {
			return u, true
		}
	}
	return u, false
}
