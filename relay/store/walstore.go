package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pushrelay/pushrelay/relay/wal"
)

// The write-ahead log (issue #10). Without it every batch of ops is a
// bbolt commit: two fdatasyncs and the rewrite of every page it touched,
// 6 ms and more on a gateway's flash. With it the committer keeps one
// bbolt write transaction open across batches: each batch's ops run in it
// (seeing the earlier batches' writes), the writes they made are appended
// to the log as one redo record (redo.go) with one fdatasync, and only
// then are the batch's callers answered and its messages handed on
// (OnStored). A checkpoint commits the transaction, with bbolt's own
// fsyncs, recording in the same commit (meta "wal_index") the index of
// the last record it holds, and drops the log's records up to it. The
// file is thus always a consistent state at a checkpoint, and the log
// holds every answered batch since.
//
// Reads (Store.view) run on the committer, between batches, in its
// transaction: they see exactly the batches that were answered. Long
// walks (Store.scan) ask for a checkpoint and then read the file in a
// read transaction of their own.
//
// An op's error that used to abort its batch's transaction, or a failed
// append to the log, rolls the transaction back; the next batch starts a
// new one and applies the log's records since the checkpoint again, as
// Open does after a crash (recoverWAL).

// metaWALIndex is the meta key of the index of the last write-ahead log
// record the file holds.
var metaWALIndex = []byte("wal_index")

// walSuffix names the log's directory beside the file.
const walSuffix = ".wal"

// walState is the committer's write-ahead log state.
type walState struct {
	log *wal.Log // nil: no log
	// done is the index of the last record the file holds (meta
	// wal_index).
	done uint64
	// tx is the open write transaction, nil when none is: then the
	// file and the log's records after done are the state.
	tx *bolt.Tx
	// since is when tx was begun; bytes counts the records it holds
	// beyond done.
	since time.Time
	bytes int
	// untrimmed counts the bytes appended since the log was last emptied.
	untrimmed int
	// broken is set when an append failed: relay/wal then refuses every
	// write, so the log is opened again (its torn tail cut) before the
	// next batch; the record that failed, if whole, is dropped.
	broken uint64
	// failedAt is when the last checkpoint failed (zero: it did not):
	// the next is tried an interval later, not at every batch.
	failedAt time.Time
	rec      redo
	// lastSync is how long the last append took (fillWait); recent
	// holds the sizes of the last few batches appended, nBatches counts
	// them all (lastBatch, fillTarget).
	lastSync time.Duration
	recent   [8]int
	nBatches int
	// early is the batch being filled, applied as it fills (applyEarly).
	early earlyApply
	// stored holds the messages of answered batches not yet handed to
	// OnStored (deferStored).
	stored []Message
	// appendHook, set by tests, runs before each append (its time
	// counts as the append's); its error fails the append as the log's
	// would.
	appendHook func(index uint64) error
}

// dirty reports records the file does not hold yet.
func (w *walState) dirty() bool { return w.log != nil && w.log.LastIndex() > w.done }

// next is the index of the next record.
func (w *walState) next() uint64 { return max(w.log.LastIndex(), w.done) + 1 }

// readWALIndex returns meta wal_index (0 without one: a file written
// without the log).
func readWALIndex(tx *bolt.Tx) uint64 {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return 0
	}
	n, _ := beUint64(meta.Get(metaWALIndex))
	return n
}

// recoverWAL opens the log beside the file and applies the records the
// file does not hold (those after meta wal_index) in one commit. A file
// with no log (written without one) has nothing to apply. With o.NoWAL
// the log is recovered if it exists and then closed.
func recoverWAL(db *bolt.DB, o Options) (walState, error) {
	dir := o.Path + walSuffix
	if o.NoWAL && !exists(dir) {
		return walState{}, nil
	}
	l, err := openWALLog(dir, o, false)
	if err != nil {
		return walState{}, fmt.Errorf("write-ahead log: %w", err)
	}
	w := walState{log: l}
	fail := func(err error) (walState, error) { return walState{}, errors.Join(err, l.Close()) }
	var epoch []byte
	if err := db.View(func(tx *bolt.Tx) error {
		w.done = readWALIndex(tx)
		if meta := tx.Bucket(bucketMeta); meta != nil {
			epoch = bytes.Clone(meta.Get(metaEpoch))
		}
		return nil
	}); err != nil {
		return fail(err)
	}
	if last := l.LastIndex(); last > w.done {
		if rec, err := l.Get(last); err != nil {
			return fail(fmt.Errorf("write-ahead log: %w", err))
		} else if e := redoEpoch(rec); len(epoch) != EpochLen || !bytes.Equal(e, epoch) {
			// Written for another file: the one this replaced (a new
			// store, a salvaged copy, a backup put back).
			o.Logger.Warn("store write-ahead log left by another store file; not applied", "path", o.Path, "records", last-max(w.done, l.FirstIndex()-1))
			if err := l.TruncateFront(last + 1); err != nil {
				return fail(fmt.Errorf("write-ahead log: %w", err))
			}
		}
	}
	if last := l.LastIndex(); last > w.done {
		if first := l.FirstIndex(); first > w.done+1 {
			return fail(fmt.Errorf("%w: the write-ahead log starts at record %d but the file holds only up to %d", ErrDamaged, first, w.done))
		}
		start := time.Now()
		size := 0
		err := db.Update(func(tx *bolt.Tx) error {
			var err error
			if size, err = replayWAL(tx, l, w.done); err != nil {
				return err
			}
			return tx.Bucket(bucketMeta).Put(metaWALIndex, seqValue(last))
		})
		if err != nil {
			return fail(fmt.Errorf("replay the write-ahead log: %w", err))
		}
		o.Logger.Info("store write-ahead log replayed", "path", o.Path, "records", last-w.done, "from", w.done+1, "to", last, "bytes", size, "took", time.Since(start))
		w.done = last
	}
	// Every record is in the file now: the log starts afresh, its next
	// record w.done+1 (TruncateFront past the last empties it).
	if l.LastIndex() != 0 {
		if err := l.TruncateFront(l.LastIndex() + 1); err != nil {
			return fail(fmt.Errorf("write-ahead log: %w", err))
		}
	}
	if o.NoWAL {
		return walState{}, l.Close()
	}
	return w, nil
}

// replayWAL applies l's records after done in tx and returns their size.
func replayWAL(tx *bolt.Tx, l *wal.Log, done uint64) (int, error) {
	if l.LastIndex() <= done {
		return 0, nil
	}
	size := 0
	err := l.Range(done+1, func(i uint64, rec []byte) error {
		size += len(rec)
		// bbolt keeps the keys and values until the commit.
		if err := applyRedo(tx, bytes.Clone(rec)); err != nil {
			return fmt.Errorf("record %d: %w", i, err)
		}
		return nil
	})
	return size, err
}

// exists reports whether path exists.
func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// walTrimBytes is how many bytes of records make a checkpoint empty the
// log (relay/wal's segment size): emptying it costs a few fsyncs, and the
// records the file holds are skipped at the next open anyway.
const walTrimBytes = 8 << 20

// nextOp waits for the next op, handing the devices their messages
// (flushStored) when nothing comes for a while, and checkpointing when the
// log's oldest batch the file lacks is due while it waits.
func (s *Store) nextOp() (*op, bool) {
	if len(s.w.stored) > 0 {
		// The messages deferStored kept go to their devices once the
		// committer is idle: when nothing comes for fillGap.
		t := time.NewTimer(fillGap)
		select {
		case o, ok := <-s.queue:
			t.Stop()
			return o, ok
		case <-t.C:
		}
		s.flushStored()
	}
	if s.w.log == nil || !s.w.dirty() {
		o, ok := <-s.queue
		return o, ok
	}
	for s.w.dirty() {
		wait := s.checkpointDue()
		if wait <= 0 {
			s.checkpoint()
			break
		}
		t := time.NewTimer(wait)
		select {
		case o, ok := <-s.queue:
			t.Stop()
			return o, ok
		case <-t.C:
		}
	}
	o, ok := <-s.queue
	return o, ok
}

// fillWait returns how long the committer may wait for a batch to fill
// before it appends it. On a log whose append (its fdatasync) takes
// milliseconds, as on a gateway's flash, the callers the last batch
// answered come back (the next POST, the device's ack) while the next
// batch's fdatasync runs, and so wait for two of them: with a 3 ms
// fdatasync (4.3 ms under strace) and 64 senders, batches held a third
// of the posts in flight and POST p50 was 9 ms (7,200 msg/s). So, after
// a batch of more than one op, the committer waits for more as long as
// they keep coming (a gap of fillGap ends it) and the batch is smaller
// than the last few (fillTarget), for up to half the last append's time
// (at most 2 ms), applying what comes meanwhile (applyEarly); the last
// batches' messages reach their devices when the wait is over
// (deferStored). A lone writer, or a disk that syncs in less than
// fillMinSync, never waits.
func (s *Store) fillWait() time.Duration {
	if s.w.log == nil || s.w.lastSync < fillMinSync || s.w.lastBatch() < 2 {
		return 0
	}
	return min(s.w.lastSync/2, 2*time.Millisecond)
}

// fillTarget is the batch size that ends a wait for the batch to fill
// before its time is up: the largest of the last few batches. Once every
// caller the last batches answered is back, waiting longer only delays
// them.
func (s *Store) fillTarget() int {
	return max(slices.Max(s.w.recent[:]), 2)
}

// lastBatch is the size of the last batch appended (0: none yet).
func (w *walState) lastBatch() int {
	if w.nBatches == 0 {
		return 0
	}
	return w.recent[(w.nBatches-1)%len(w.recent)]
}

// appended notes a batch of n ops appended in d.
func (w *walState) appended(n int, d time.Duration) {
	w.lastSync = d
	w.recent[w.nBatches%len(w.recent)] = n
	w.nBatches++
}

// earlyApply is a batch applied while it fills: with a slow log the
// committer waits for the batch to fill (fillWait), and applies the ops
// that have come meanwhile, so that once the wait ends only the append
// is left. Reads wait until the batch is answered: the transaction holds
// writes that are not durable yet.
type earlyApply struct {
	t *txn
	n int // ops of the batch applied
	// err is the error that stopped the batch (failed: the op's index
	// in the batch, or -1 when the transaction itself failed).
	err    error
	failed int
}

// applyEarly applies the ops of batch not applied yet (earlyApply). It
// reports false when the batch has failed: waiting for more is no use.
func (s *Store) applyEarly(batch []*op) bool {
	e := &s.w.early
	if e.err != nil {
		return false
	}
	if e.n == len(batch) {
		return true
	}
	if e.t == nil {
		err := s.Damaged()
		if err == nil {
			err = s.begin()
		}
		if err != nil {
			e.err, e.failed = err, -1
			return false
		}
		s.w.rec.reset(s.epoch)
		e.t = s.newTxn(s.w.tx, &s.w.rec)
		e.t.batchLen = s.fillTarget()
	}
	var failed int
	err := s.guarded(func() error {
		var err error
		failed, err = applyOps(e.t, batch[e.n:])
		return err
	})
	if err != nil {
		if failed >= 0 && !errors.Is(err, ErrDamaged) {
			failed += e.n
		} else {
			failed = -1
		}
		e.err, e.failed = err, failed
		return false
	}
	e.n = len(batch)
	return true
}

// applyWAL applies ops in the committer's transaction (after those
// applyEarly applied, on the batch's first try) and returns the
// transaction, the index of the op that failed (-1: none, or the
// transaction itself) and the error.
func (s *Store) applyWAL(ops []*op) (*txn, int, error) {
	e := s.w.early
	s.w.early = earlyApply{}
	if e.err != nil {
		return nil, e.failed, e.err
	}
	t := e.t
	if t == nil {
		err := s.Damaged()
		if err == nil {
			err = s.begin()
		}
		if err != nil {
			return nil, -1, err
		}
		s.w.rec.reset(s.epoch)
		t = s.newTxn(s.w.tx, &s.w.rec)
		t.batchLen = len(ops)
	}
	failed := -1
	err := s.guarded(func() error {
		var err error
		if failed, err = applyOps(t, ops[e.n:]); err != nil {
			if failed >= 0 {
				failed += e.n
			}
			return err
		}
		if t.delta != (totals{}) {
			return putTotals(t.meta, s.tot.add(t.delta))
		}
		return nil
	})
	if errors.Is(err, ErrDamaged) {
		failed = -1
	}
	return t, failed, err
}

// deferStored keeps a batch's stored messages for OnStored until the
// committer next waits for the disk or for work (flushStored), when the
// log is slow and the batch was not alone (fillWait): the devices' work
// (the notifications written, the acks read back) then runs while the
// next batch's fdatasync does, instead of competing for the CPU with the
// callers the batch answered while the next batch fills. It reports
// whether it kept them.
func (s *Store) deferStored(ms []Message) bool {
	if s.fillWait() <= 0 {
		return false
	}
	s.w.stored = append(s.w.stored, ms...)
	return true
}

// flushStored hands the messages deferStored kept to OnStored.
func (s *Store) flushStored() {
	if len(s.w.stored) == 0 {
		return
	}
	ms := s.w.stored
	s.w.stored = nil // OnStored's to keep
	if fn := s.onStored.Load(); fn != nil {
		(*fn)(ms)
	}
}

const (
	// fillMinSync is the append time below which a batch never waits.
	fillMinSync = 500 * time.Microsecond
	// fillGap ends a wait for the batch to fill when nothing arrives.
	fillGap = time.Millisecond
)

// checkpointDue returns how long until a checkpoint is due (<= 0: now).
func (s *Store) checkpointDue() time.Duration {
	if !s.w.failedAt.IsZero() {
		return s.opts.CheckpointInterval - time.Since(s.w.failedAt)
	}
	if s.w.bytes >= s.opts.CheckpointBytes {
		return 0
	}
	return s.opts.CheckpointInterval - time.Since(s.w.since)
}

// sendWait queues o and waits for the committer to finish it.
func (s *Store) sendWait(o *op) error {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return ErrClosed
	}
	s.queue <- o
	s.mu.RUnlock()
	<-o.done
	return o.err
}

// readOnCommitter runs fn on the committer, between batches. The caller
// holds s.mu shared, so the queue is open; it is held until the read is
// done, as a mutation's is while it is queued.
func (s *Store) readOnCommitter(fn func(tx *bolt.Tx) error) error {
	o := s.ops.Get().(*op)
	o.ctx, o.read = context.Background(), fn
	s.queue <- o
	<-o.done
	err := o.err
	*o = op{done: o.done}
	s.ops.Put(o)
	return err
}

// readOp runs a read or checkpoint op on the committer.
func (s *Store) readOp(o *op) {
	switch {
	case o.checkpoint:
		o.err = s.Damaged()
		if o.err == nil && s.w.dirty() {
			o.err = s.checkpoint()
		}
	default:
		s.m.reads.Inc()
		o.err = s.Damaged()
		if o.err == nil {
			// After a rollback the transaction is made again first:
			// the file lacks the log's latest batches.
			o.err = s.begin()
		}
		if o.err == nil {
			o.err = s.guarded(func() error { return o.read(s.w.tx) })
		}
	}
	o.finish()
}

// begin opens the committer's transaction if none is open, applying the
// log's records after the checkpoint (after a rollback, or a failed
// checkpoint).
func (s *Store) begin() error {
	if s.w.tx != nil {
		return nil
	}
	if err := s.repairWAL(); err != nil {
		return err
	}
	return s.guarded(func() error {
		tx, err := s.db.Begin(true)
		if err != nil {
			return err
		}
		s.w.since = time.Now()
		if s.w.bytes, err = replayWAL(tx, s.w.log, s.w.done); err != nil {
			tx.Rollback()
			return s.damage(fmt.Errorf("%w: store: apply the write-ahead log again: %w", ErrDamaged, err))
		}
		s.w.tx = tx
		return nil
	})
}

// repairWAL opens the log again after a failed append (relay/wal refuses
// writes after one): its torn tail is cut, and a record the failed append
// left whole (written, its fdatasync failed) is dropped: it was never
// answered.
func (s *Store) repairWAL() error {
	if s.w.broken == 0 {
		return nil
	}
	s.w.log.Close() // it failed already
	l, err := openWALLog(s.opts.Path+walSuffix, s.opts, true)
	if err != nil {
		return fmt.Errorf("store: open the write-ahead log again: %w", err)
	}
	if l.LastIndex() >= s.w.broken {
		if err := l.TruncateBack(s.w.broken - 1); err != nil {
			l.Close()
			return fmt.Errorf("store: drop the failed record from the write-ahead log: %w", err)
		}
	}
	s.w.log, s.w.broken = l, 0
	return nil
}

// rollback drops the committer's transaction: what it held beyond the
// checkpoint is in the log, or was never answered.
func (s *Store) rollback() {
	if s.w.tx == nil {
		return
	}
	tx := s.w.tx
	s.w.tx = nil
	s.guarded(func() error { return tx.Rollback() })
}

// checkpoint commits the committer's transaction with the index of the
// last record it holds, then drops the log's records up to it.
func (s *Store) checkpoint() error {
	s.flushStored()
	if !s.w.dirty() {
		return nil
	}
	if err := s.begin(); err != nil {
		return err
	}
	start := time.Now()
	last := s.w.log.LastIndex()
	tx := s.w.tx
	s.w.tx = nil
	err := s.guarded(func() error {
		if err := tx.Bucket(bucketMeta).Put(metaWALIndex, seqValue(last)); err != nil {
			tx.Rollback()
			return err
		}
		return tx.Commit()
	})
	if err != nil {
		s.w.failedAt = time.Now()
		s.m.commitErrors.Inc()
		err = fmt.Errorf("store checkpoint: %w", err)
		s.logCommitError("store checkpoint failed; the write-ahead log keeps its batches", err)
		return err
	}
	s.w.failedAt = time.Time{}
	s.w.done = last
	s.m.checkpoints.Inc()
	s.m.checkpointSec.Observe(time.Since(start).Seconds())
	if s.w.untrimmed >= walTrimBytes {
		if err := s.w.log.TruncateFront(last + 1); err != nil {
			s.log.Warn("store write-ahead log not emptied", "err", err)
		} else {
			s.w.untrimmed = 0
		}
	}
	return nil
}

// closeWAL checkpoints and closes the log (the committer's last act).
func (s *Store) closeWAL() {
	s.flushStored()
	if s.w.log == nil {
		return
	}
	if s.Damaged() == nil {
		if s.checkpoint() == nil && s.repairWAL() == nil {
			if last := s.w.log.LastIndex(); last != 0 && last <= s.w.done {
				if err := s.w.log.TruncateFront(last + 1); err != nil {
					s.log.Warn("store write-ahead log not emptied", "err", err)
				}
			}
		}
	}
	s.rollback()
	if err := s.w.log.Close(); err != nil {
		s.log.Warn("store write-ahead log close failed", "err", err)
	}
}

// restoreOp is a Restore on the committer: with the log, the file is
// checkpointed first, and the snapshot's file records that it holds every
// record of this log (they are the old file's, not its).
func (s *Store) restoreOp(path string) error {
	if s.w.log == nil {
		return s.swap(path)
	}
	if err := s.checkpoint(); err != nil {
		return err
	}
	s.rollback()
	if err := s.swap(path); err != nil {
		return err
	}
	done := s.w.log.LastIndex()
	err := s.guarded(func() error {
		return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(metaWALIndex, seqValue(done)) })
	})
	if err != nil {
		return s.damage(fmt.Errorf("%w: store restore: %w", ErrDamaged, err))
	}
	s.w.done = done
	return nil
}

// commitWAL is commit with the write-ahead log: the batch runs in the
// committer's transaction and its writes are appended to the log (one
// fdatasync) before its callers are answered.
func (s *Store) commitWAL(batch []*op) {
	start := time.Now()
	s.m.batchSize.Observe(float64(len(batch)))
	ops := batch
	for len(ops) > 0 {
		t, failed, err := s.applyWAL(ops)
		if err == nil {
			// The last batches' messages go to their devices while
			// this one is synced (or now: it writes nothing).
			s.flushStored()
		}
		if err == nil && !s.w.rec.empty() {
			next := s.w.next()
			t0 := time.Now()
			if h := s.w.appendHook; h != nil {
				err = h(next)
			}
			if err == nil {
				err = s.w.log.Append(next, s.w.rec.b)
				s.w.appended(len(ops), time.Since(t0))
			}
			if err != nil {
				s.w.broken = next
			} else {
				s.w.bytes += len(s.w.rec.b)
				s.w.untrimmed += len(s.w.rec.b)
			}
		}
		if err == nil {
			s.committed(t, ops, start)
			if s.checkpointDue() <= 0 {
				s.checkpoint()
			}
			return
		}
		// The transaction holds writes that were not answered: it goes,
		// and the next one applies the log again.
		s.rollback()
		var retry bool
		if ops, retry = s.failBatch(ops, failed, err); !retry {
			return
		}
	}
}
