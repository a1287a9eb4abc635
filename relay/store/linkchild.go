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
// the child; DeleteDevice moves it to link_forgets (schema 8):
//
//	link_forgets  uaid(16)  → len(1) child name | channel id(16)…
//
// a device this relay forgot (its upstream reset the UAID) that the child
// serving it has not yet been told of (the link's FORGET), with the
// channels it had (the child still has them until told: the parent's
// view of the child counts them); the row goes when the child answered.
var (
	bucketLinkChildren = []byte("link_children")
	bucketLinkForgets  = []byte("link_forgets")
)

// MaxChildNameLen bounds a child relay's name (the link's limit).
const MaxChildNameLen = 64

func migrateCreateLinkChildren(tx *bolt.Tx) error {
	if _, err := tx.CreateBucketIfNotExists(bucketLinkChildren); err != nil {
		return fmt.Errorf("create bucket %s: %w", bucketLinkChildren, err)
	}
	return nil
}

func migrateCreateLinkForgets(tx *bolt.Tx) error {
	if _, err := tx.CreateBucketIfNotExists(bucketLinkForgets); err != nil {
		return fmt.Errorf("create bucket %s: %w", bucketLinkForgets, err)
	}
	return nil
}

// forgetLinkChild is DeleteDevice's part: a UAID a child serves moves
// from link_children to link_forgets with its channels chans, so the child
// hears of it.
func (t *txn) forgetLinkChild(u push.UAID, chans []push.ChannelID) error {
	b := t.bucket(bucketLinkChildren)
	child := b.Get(u[:])
	if child == nil {
		return nil
	}
	v := make([]byte, 0, 1+len(child)+16*len(chans))
	v = append(append(v, byte(len(child))), child...)
	for _, c := range chans {
		v = append(v, c[:]...)
	}
	if err := t.bucket(bucketLinkForgets).Put(deviceKey(u), v); err != nil {
		return err
	}
	return b.Delete(u[:])
}

// LinkForget is a device this relay forgot that a child serves and has
// not yet been told of, with the channels it had.
type LinkForget struct {
	UAID     push.UAID
	Channels []push.ChannelID
}

// decodeLinkForget splits a link_forgets value into the child's name and
// the channels.
func decodeLinkForget(v []byte) (child []byte, chans []push.ChannelID, ok bool) {
	if len(v) < 2 || int(v[0]) == 0 || int(v[0]) > MaxChildNameLen || len(v) < 1+int(v[0]) || (len(v)-1-int(v[0]))%16 != 0 {
		return nil, nil, false
	}
	child, rest := v[1:1+int(v[0])], v[1+int(v[0]):]
	for ; len(rest) > 0; rest = rest[16:] {
		chans = append(chans, push.ChannelID(rest[:16]))
	}
	return child, chans, true
}

// LinkForgets returns up to max devices this relay forgot that child
// serves and has not yet been told of, in UAID order.
func (s *Store) LinkForgets(child string, max int) ([]LinkForget, error) {
	var out []LinkForget
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketLinkForgets).Cursor()
		for k, v := c.First(); k != nil && len(out) < max; k, v = c.Next() {
			name, chans, ok := decodeLinkForget(v)
			if len(k) != 16 || !ok {
				return corrupt("link_forgets row", k)
			}
			if string(name) == child {
				out = append(out, LinkForget{UAID: push.UAID(k), Channels: chans})
			}
		}
		return nil
	})
	return out, err
}

// LinkForgotten records that child was told it no longer serves u (it
// answered FORGOTTEN). A row naming another child stays.
func (s *Store) LinkForgotten(ctx context.Context, u push.UAID, child string) error {
	return s.do(ctx, func(t *txn) error { return t.linkForgotten(u, child) })
}

func (t *txn) linkForgotten(u push.UAID, child string) error {
	b := t.bucket(bucketLinkForgets)
	name, _, ok := decodeLinkForget(b.Get(u[:]))
	if !ok || string(name) != child {
		return nil
	}
	return b.Delete(u[:])
}

// SetLinkChild records that child serves u (replacing another child's
// claim: a device moved to another edge relay).
func (s *Store) SetLinkChild(ctx context.Context, u push.UAID, child string) error {
	if len(child) == 0 || len(child) > MaxChildNameLen {
		return fmt.Errorf("%w: child name of %d bytes", ErrBadChannel, len(child))
	}
	return s.do(ctx, func(t *txn) error { return t.setLinkChild(u, child) })
}

func (t *txn) setLinkChild(u push.UAID, child string) error {
	b := t.bucket(bucketLinkChildren)
	if string(b.Get(u[:])) == child {
		return nil
	}
	return b.Put(deviceKey(u), []byte(child))
}

// The relay link's parent side as a site's log writes it (relay/site):
// the Tx forms of SetLinkChild, LinkForgotten and SetLinkChildAddr, and
// the site's link epoch.

// SetLinkChild is Store.SetLinkChild in tx.
func (tx *Tx) SetLinkChild(u push.UAID, child string) error {
	if len(child) == 0 || len(child) > MaxChildNameLen {
		return fmt.Errorf("%w: child name of %d bytes", ErrBadChannel, len(child))
	}
	return tx.t.setLinkChild(u, child)
}

// LinkForgotten is Store.LinkForgotten in tx.
func (tx *Tx) LinkForgotten(u push.UAID, child string) error { return tx.t.linkForgotten(u, child) }

// metaLinkEpoch is the meta key of a site's link epoch: the first bytes
// of the origin ids its parent gives the messages it sends children,
// the same on every member (a member's own store epoch is its own).
var metaLinkEpoch = []byte("link_epoch")

// SetLinkEpoch records e as the site's link epoch unless one is
// recorded; it reports whether it did.
func (tx *Tx) SetLinkEpoch(e []byte) (bool, error) {
	if len(e) == 0 || len(e) > 32 {
		return false, fmt.Errorf("%w: link epoch of %d bytes", ErrBadChannel, len(e))
	}
	if tx.t.meta.Get(metaLinkEpoch) != nil {
		return false, nil
	}
	return true, tx.t.meta.Put(metaLinkEpoch, append([]byte(nil), e...))
}

// LinkEpoch is the site's link epoch (SetLinkEpoch), if one is recorded.
func (s *Store) LinkEpoch() ([]byte, bool, error) {
	var e []byte
	err := s.view(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(metaLinkEpoch); v != nil {
			e = append([]byte(nil), v...)
		}
		return nil
	})
	return e, e != nil, err
}

// LinkChildren calls fn with every UAID a child serves and the child's
// name (valid only during the call), in UAID order.
func (s *Store) LinkChildren(fn func(u push.UAID, child []byte)) error {
	return s.scan(func(tx *bolt.Tx) error {
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
	return s.scan(func(tx *bolt.Tx) error {
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

// validLinkRow checks a row of link_children or link_forgets.
func validLinkRow(bucket, k, v []byte) bool {
	if len(k) != 16 {
		return false
	}
	if string(bucket) == string(bucketLinkForgets) {
		_, _, ok := decodeLinkForget(v)
		return ok
	}
	return len(v) > 0 && len(v) <= MaxChildNameLen
}

// checkLinkChildren is Verify's walk of link_children (schema 7) or
// link_forgets (schema 8).
func checkLinkChildren(tx *bolt.Tx, r *Report, name []byte) {
	b := tx.Bucket(name)
	if b == nil {
		r.problem("bucket %s missing", name)
		return
	}
	b.ForEach(func(k, v []byte) error {
		if !validLinkRow(name, k, v) {
			r.problem("%v", corrupt(string(name)+" row", k))
		}
		return nil
	})
}

// copyLinkChildren is Salvage's copy of link_children or link_forgets,
// if the old file has it (schema 7, 8 and later).
func (w *salvageWriter) copyLinkChildren(name []byte) error {
	if _, ok := w.geo.roots[string(name)]; !ok {
		return nil
	}
	err := w.scan(name, func(k, v []byte) error {
		if !validLinkRow(name, k, v) {
			w.rep.BadRows++
			return nil
		}
		key, val := deviceKey(push.UAID(k)), append([]byte(nil), v...)
		return w.add(func(t *salvageTx) error {
			return t.devices.Tx().Bucket(name).Put(key, val)
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
