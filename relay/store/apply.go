package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
	bolt "go.etcd.io/bbolt"
)

// Applying a replicated log (a site of relays, issue #9). On a member of
// a site every write that changes what devices are sent (messages, acks,
// deletes, registrations, unregistrations, device resets, broadcast
// versions, expiry) is an entry of the site's replicated log, and each
// member applies the committed entries to its own store in log order
// through Apply. An Apply is one op of the committer: it shares a
// transaction, so an fsync, with whatever else is queued, and records in
// the same commit the index of the last entry it applied (meta
// "applied"). After a crash the store holds exactly the entries up to
// Applied, and the log is replayed from there: nothing is applied twice
// and nothing is skipped.
//
// Every member must reach the same state from the same entries, so an
// entry carries its own time (Tx.SetTime): the times a write records and
// the expiry it checks come from the entry, never from the member's
// clock, and a message's Received and a channel's Created are set by the
// proposer before the entry is made. What only one member knows (a
// device's wake binding and last hello) is written by the member itself,
// outside the log, and never read by an entry's application. The upstream
// link's state (identities, hello times, the unregister outbox) is the
// site's, written through the log by the member that holds the upstream
// (applyupstream.go).

// metaApplied is the meta key of the index of the last log entry applied.
var metaApplied = []byte("applied")

// ErrApplied refuses an Apply of an entry at or below Applied: it is
// already in the store.
var ErrApplied = errors.New("store: log entry already applied")

// Applied returns the index of the last log entry applied (0: none).
func (s *Store) Applied() (uint64, error) {
	var n uint64
	err := s.view(func(tx *bolt.Tx) error {
		n, _ = beUint64(tx.Bucket(bucketMeta).Get(metaApplied))
		return nil
	})
	return n, err
}

// Apply runs fn, the application of the log's entries up to index, in
// one commit that also records index as applied. It fails with ErrApplied
// (and does not run fn) when index is not above Applied. fn may be run
// more than once (when another op of its transaction fails, the commit
// runs the rest again): each run must start from scratch, resetting what
// it collected. An error fn returns aborts its Apply: nothing of it is
// written.
func (s *Store) Apply(ctx context.Context, index uint64, fn func(tx *Tx) error) error {
	return s.do(ctx, func(t *txn) error {
		cur, _ := beUint64(t.meta.Get(metaApplied))
		if index <= cur {
			return reject(fmt.Errorf("%w: entry %d, applied %d", ErrApplied, index, cur))
		}
		saved := t.now
		defer func() { t.now = saved }()
		if err := fn(&Tx{s: s, t: t}); err != nil {
			return err
		}
		return t.meta.Put(metaApplied, binary.BigEndian.AppendUint64(nil, index))
	})
}

// Tx is the store as an Apply's fn sees it: the writes an entry makes,
// inside the Apply's transaction. A write's rejection (ErrNoChannel,
// ErrChannelConflict, ...) is its result and leaves the transaction
// going; any other error must be returned by fn.
type Tx struct {
	s *Store
	t *txn
}

// SetTime sets the time the following writes record and check expiry
// against: the entry's.
func (tx *Tx) SetTime(now time.Time) { tx.t.now = now }

// rejected splits err into a rejection's cause (a result) and any other
// error (fatal to the Apply).
func rejected(err error) (result, fatal error) {
	var r rejection
	if errors.As(err, &r) {
		return r.err, nil
	}
	return nil, err
}

// Append stores m as Store.Append does (a zero Received is the entry's
// time). The result's Err is m's rejection; the error is fatal.
func (tx *Tx) Append(m Message) (AppendResult, error) {
	if m.Received.IsZero() {
		m.Received = tx.t.now
	}
	res := AppendResult{Message: m}
	apply, out, err := tx.s.appendOp(&res.Message)
	if err != nil {
		res.Err = err
		return res, nil
	}
	if res.Err, err = rejected(apply(tx.t)); err != nil || res.Err != nil {
		return res, err
	}
	out.fill(&res)
	return res, nil
}

// Register adds channel c as Store.Register does (a zero Created is the
// entry's time); its rejection is returned as the error, like any other.
func (tx *Tx) Register(c Channel) error {
	if err := checkChannel(&c, tx.t.now); err != nil {
		return err
	}
	result, err := rejected(tx.t.register(channelKey(c.UAID, c.ID), encodeChannel(c), c))
	if err != nil {
		return err
	}
	return result
}

// Unregister removes a channel and its messages, as Store.Unregister.
func (tx *Tx) Unregister(u push.UAID, id push.ChannelID) (bool, error) {
	if tx.t.channels.Get(channelKey(u, id)) == nil {
		return false, nil
	}
	return true, tx.t.unregister(u, id)
}

// Ack deletes u's messages seqs, as Store.Ack.
func (tx *Tx) Ack(u push.UAID, seqs ...uint64) (int, error) { return tx.t.ack(u, seqs) }

// Delete removes message seq of channel ch of u, as Store.Delete.
func (tx *Tx) Delete(u push.UAID, ch push.ChannelID, seq uint64) (bool, error) {
	return tx.t.delete(u, ch, seq)
}

// DeleteDevice removes device u, as Store.DeleteDevice.
func (tx *Tx) DeleteDevice(u push.UAID) error { return tx.t.deleteDevice(u) }

// PutBroadcasts sets broadcast versions, as Store.PutBroadcasts.
func (tx *Tx) PutBroadcasts(m map[string]string) error {
	if err := checkBroadcastVersions(m); err != nil {
		return err
	}
	return tx.t.putBroadcasts(m)
}

// Sweep removes up to limit messages expired by the entry's time,
// reporting how many and whether more are due.
func (tx *Tx) Sweep(limit int) (int, bool, error) { return tx.t.sweep(limit) }

// Snapshot writes a consistent copy of the whole store file to w (bbolt's
// own format, which Open reads) and returns the index of the last log
// entry applied in that copy. It holds a read transaction for as long as
// w takes, not the committer.
func (s *Store) Snapshot(w io.Writer) (uint64, error) {
	var index uint64
	err := s.scan(func(tx *bolt.Tx) error {
		index, _ = beUint64(tx.Bucket(bucketMeta).Get(metaApplied))
		_, err := tx.WriteTo(w)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("store snapshot: %w", err)
	}
	return index, nil
}

// Restore replaces the whole store with a snapshot read from r
// (Snapshot's output, another member's), as a member that was away past
// the log's compaction, or started with an empty disk, catches up, and
// returns the snapshot's applied index. The snapshot is written next to
// the store's file and fsynced, verified as Verify does (a damaged or
// truncated one is refused and the store is left as it was), then put in
// the file's place by the committer, between two commits: what was
// queued before Restore is committed to the old file first, and every
// later read and write sees the new one. The snapshot's file is migrated
// to this build's schema if it is older. Everything the member kept only
// for itself (wake bindings it proved, hello times) goes with the old
// file.
func (s *Store) Restore(ctx context.Context, r io.Reader) (uint64, error) {
	tmp := s.opts.Path + ".restore"
	if err := writeSynced(tmp, r); err != nil {
		os.Remove(tmp)
		return 0, fmt.Errorf("store restore: %w", err)
	}
	if _, err := Verify(tmp, s.opts.LockTimeout); err != nil {
		os.Remove(tmp)
		return 0, fmt.Errorf("store restore: the snapshot: %w", err)
	}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		os.Remove(tmp)
		return 0, ErrClosed
	}
	o := &op{ctx: ctx, restore: tmp, done: make(chan struct{}, 1)}
	select {
	case s.queue <- o:
	case <-ctx.Done():
		s.mu.RUnlock()
		os.Remove(tmp)
		return 0, ctx.Err()
	}
	s.mu.RUnlock()
	<-o.done
	if o.err != nil {
		os.Remove(tmp)
		return 0, o.err
	}
	return s.Applied()
}

// writeSynced writes r to a new file at path and fsyncs it.
func writeSynced(path string, r io.Reader) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// swap puts the verified snapshot at path in place of the store's file
// (on the committer, between commits). If the new file cannot be opened
// the store is damaged: every call fails until the relay is restarted.
func (s *Store) swap(path string) error {
	s.dbMu.Lock()
	defer s.dbMu.Unlock()
	if err := s.db.Close(); err != nil {
		return s.damage(fmt.Errorf("%w: store restore: close the old file: %w", ErrDamaged, err))
	}
	if err := os.Rename(path, s.opts.Path); err != nil {
		return s.damage(fmt.Errorf("%w: store restore: %w", ErrDamaged, err))
	}
	if d, err := os.Open(filepath.Dir(s.opts.Path)); err == nil {
		d.Sync()
		d.Close()
	}
	db, err := openBolt(s.opts, false)
	if err != nil {
		return s.damage(fmt.Errorf("%w: store restore: open the snapshot: %w", ErrDamaged, err))
	}
	_, _, tot, epoch, err := load(db)
	if err != nil {
		db.Close()
		return s.damage(fmt.Errorf("%w: store restore: %w", ErrDamaged, err))
	}
	s.db, s.epoch, s.tot, s.waiting = db, epoch, tot, nil
	s.publish()
	s.log.Info("store restored from a snapshot", "path", s.opts.Path, "devices", tot.devices, "messages", tot.waiting)
	return nil
}
