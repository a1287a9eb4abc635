package store

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/push"
)

// Options configure a Store. The zero value of every field but Path is a
// usable default.
type Options struct {
	// Path is the bbolt file, created with mode 0600 if missing. Its
	// directory must exist.
	Path string
	// MaxMessagesPerUAID caps a device's stored messages; Append over the
	// cap drops the device's oldest message (counted as dropped_cap).
	// Default 1000.
	MaxMessagesPerUAID int
	// MaxChannelsPerUAID caps a device's channels. Default 1000.
	MaxChannelsPerUAID int
	// MaxBatch is the most operations one commit carries. Default 1024.
	MaxBatch int
	// QueueSize bounds the operations waiting for the committer; a
	// mutating call blocks (until its context is done) when it is full.
	// Default 4096.
	QueueSize int
	// SweepInterval is how often Run removes expired messages. Default 30s.
	SweepInterval time.Duration
	// LockTimeout is how long Open waits for another process to release
	// the file before failing with ErrLocked. Default 1s.
	LockTimeout time.Duration
	// MaxSize, when positive, caps the file size in bytes; writes that
	// would grow the file beyond it fail. Small 32-bit gateways set it
	// well under their mmap limit (about 2 GB on arm, 1 GB on mips).
	MaxSize int
	// VerifyAlways makes Open verify the file (see Verify) at every
	// open; by default it does so only after an unclean stop, that is
	// when the file lacks the mark Close writes.
	VerifyAlways bool
	// Metrics receives the store's metrics; nil keeps them private. A
	// Registry can hold the metrics of one Store only.
	Metrics *metrics.Registry
	// Logger; nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	// NoWAL turns the write-ahead log off: every batch is then its own
	// bbolt commit (two fdatasyncs and its pages), as a site's store has
	// it (the site's replicated log is its write-ahead log). With the
	// log on (the default), a batch's writes are appended to the log in
	// Path+".wal" (one fdatasync) and reach the file at checkpoints.
	NoWAL bool
	// CheckpointInterval is the longest the write-ahead log collects
	// batches before they are committed to the file. Default 250ms.
	CheckpointInterval time.Duration
	// CheckpointBytes is how many bytes of log records make a checkpoint
	// due sooner. Default 4 MiB.
	CheckpointBytes int
}

// Validate reports options Open would refuse.
func (o Options) Validate() error {
	switch {
	case o.Path == "":
		return errors.New("store: no path")
	case o.MaxMessagesPerUAID < 0, o.MaxChannelsPerUAID < 0, o.MaxBatch < 0, o.QueueSize < 0, o.MaxSize < 0:
		return errors.New("store: negative limit")
	case o.SweepInterval < 0, o.LockTimeout < 0, o.CheckpointInterval < 0, o.CheckpointBytes < 0:
		return errors.New("store: negative interval")
	}
	return nil
}

func (o Options) withDefaults() Options {
	if o.MaxMessagesPerUAID == 0 {
		o.MaxMessagesPerUAID = 1000
	}
	if o.MaxChannelsPerUAID == 0 {
		o.MaxChannelsPerUAID = 1000
	}
	if o.MaxBatch == 0 {
		o.MaxBatch = 1024
	}
	if o.QueueSize == 0 {
		o.QueueSize = 4096
	}
	if o.SweepInterval == 0 {
		o.SweepInterval = 30 * time.Second
	}
	if o.LockTimeout == 0 {
		o.LockTimeout = time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.CheckpointInterval == 0 {
		o.CheckpointInterval = 250 * time.Millisecond
	}
	if o.CheckpointBytes == 0 {
		o.CheckpointBytes = 4 << 20
	}
	return o
}

// Store is pushrelay's durable state. Its methods are safe for concurrent
// use. Every mutating method returns only once its change is on disk
// (fsynced) or has failed; concurrent mutations share one commit.
//
// Open starts the committer goroutine, so a Store works without Run; Run
// only adds the periodic TTL sweep. Close stops the committer.
type Store struct {
	opts Options
	// dbMu guards db and epoch, which only a Restore changes (on the
	// committer): readers hold it shared, the committer exclusively to
	// swap them.
	dbMu sync.RWMutex
	db   *bolt.DB
	log  *slog.Logger
	now  func() time.Time
	m    *storeMetrics
	// epoch is the file's Epoch, read at Open.
	epoch []byte

	// mu guards closed and the send side of queue: senders hold it shared
	// while they send, Close holds it exclusively to close queue, so no
	// send can hit a closed channel. The committer never takes it.
	mu      sync.RWMutex
	closed  bool
	queue   chan *op
	ops     sync.Pool     // of *op (newOp)
	closing chan struct{} // closed by Close; stops Run

	committerDone chan struct{}
	closeOnce     sync.Once
	closeErr      error

	// tot is the committed totals, owned by the committer; the atomics
	// publish them to Stats and the gauges.
	tot totals
	// waiting counts the messages of devices the committer has seen
	// lately, so that Append can apply the cap without a count kept on
	// disk (schema 3). Owned by the committer; bounded by maxCachedCounts.
	waiting                   map[push.UAID]int
	nDevices, nChans, nWait   atomic.Int64
	nUpstreamIDs, nUnregs     atomic.Int64
	nCommits                  atomic.Uint64 // successful commits, for benchmarks
	onStored                  atomic.Pointer[func([]Message)]
	maxMessages, maxChannels  int
	sweepChunk                int
	lastCommitErrLog          time.Time
	suppressedCommitErrorLogs int
	// damaged holds the first damage error (see damage); once set, every
	// call answers it.
	damaged atomic.Pointer[error]

	// w is the write-ahead log's state, owned by the committer; w.log is
	// nil when the log is off.
	w walState
}

// Open opens (creating if needed) the store at opts.Path, migrates its
// schema and starts the committer. After a clean stop nothing it does is
// proportional to the number of stored messages: counts live in meta, and
// bbolt reads its persisted freelist instead of walking the page tree.
// After an unclean stop (no clean-close mark, see Close) it first
// verifies the whole file as Verify does, and refuses a damaged one with
// an error wrapping ErrDamaged, as it does a file bbolt cannot open.
func Open(opts Options) (*Store, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	o := opts.withDefaults()
	db, err := openBolt(o, false)
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("open store %s: %w", o.Path, ErrLocked)
	}
	if err != nil {
		return nil, openError(o.Path, err)
	}
	if db, err = verifyAtOpen(db, o); err != nil {
		return nil, err
	}
	w, err := recoverWAL(db, o)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("open store %s: %w", o.Path, err), db.Close())
	}

	from, to, tot, epoch, err := load(db)
	if err != nil && w.log != nil {
		err = errors.Join(err, w.log.Close())
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("open store %s: %w", o.Path, err), db.Close())
	}
	switch {
	case from == 0 && to != 0:
		o.Logger.Info("store created", "path", o.Path, "schema", to)
	case from != to:
		o.Logger.Info("store schema migrated", "path", o.Path, "from", from, "to", to)
	}

	s := &Store{
		opts:          o,
		db:            db,
		log:           o.Logger,
		now:           o.Now,
		queue:         make(chan *op, o.QueueSize),
		ops:           sync.Pool{New: newOp},
		closing:       make(chan struct{}),
		committerDone: make(chan struct{}),
		tot:           tot,
		epoch:         epoch,
		maxMessages:   o.MaxMessagesPerUAID,
		maxChannels:   o.MaxChannelsPerUAID,
		sweepChunk:    sweepChunk,
		w:             w,
	}
	s.publish()
	s.m = newMetrics(metrics.OrNew(o.Metrics), s)
	go s.commitLoop()
	return s, nil
}

// EpochLen is the length of Store.Epoch.
const EpochLen = 8

// Epoch names this store file: 8 random bytes made when the file was
// created (or first opened by a build that keeps one), the same at every
// open, different for another file (a new data dir, a salvaged copy).
// Message sequences are unique only within one file: an id a relay hands
// out of its store (the relay link's origin ids) is the epoch and the
// sequence, so a store started afresh cannot reuse one.
func (s *Store) Epoch() []byte {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	return append([]byte(nil), s.epoch...)
}

// takeEpoch reads the file's epoch, making it if it has none.
func takeEpoch(db *bolt.DB) ([]byte, error) {
	var e []byte
	err := db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(metaEpoch); len(v) == EpochLen {
			e = append([]byte(nil), v...)
			return nil
		}
		e = make([]byte, EpochLen)
		if _, err := rand.Read(e); err != nil {
			return err
		}
		return meta.Put(metaEpoch, e)
	})
	return e, err
}

// load prepares an opened file (prepare) and takes its epoch, reporting
// a fault of bbolt's on a broken file as an error.
func load(db *bolt.DB) (from, to uint64, tot totals, epoch []byte, err error) {
	err = guard(func() (err error) {
		if from, to, tot, err = prepare(db); err != nil {
			return err
		}
		epoch, err = takeEpoch(db)
		return err
	})
	return from, to, tot, epoch, err
}

// prepare migrates the file to this build's schema if needed and reads the
// totals.
func prepare(db *bolt.DB) (from, to uint64, tot totals, err error) {
	err = db.View(func(tx *bolt.Tx) error {
		from, err = readSchema(tx)
		return err
	})
	if err != nil {
		return 0, 0, totals{}, err
	}
	to = from
	if from != schemaVersion() {
		err = db.Update(func(tx *bolt.Tx) error {
			_, to, err = migrate(tx, migrations)
			return err
		})
		if err != nil {
			return from, from, totals{}, err
		}
	}
	err = db.View(func(tx *bolt.Tx) error {
		tot, err = readTotals(tx.Bucket(bucketMeta))
		return err
	})
	return from, to, tot, err
}

// verifyAtOpen takes the clean-close mark and, if it was missing (or
// o.VerifyAlways), verifies the file. It verifies through a read-only
// handle of its own and then opens the file again: closing that handle
// unmaps the pages the walk read, which would otherwise stay in the
// relay's resident set (400 MiB for a million messages). It returns the
// handle to use, or closes everything and returns the error.
//
// With o.VerifyAlways the file is verified before anything is written to
// it (taking the mark is a commit): bbolt follows a damaged page's
// offsets with unsafe pointers, and a commit over one can, rarely, crash
// the process instead of failing.
func verifyAtOpen(db *bolt.DB, o Options) (*bolt.DB, error) {
	// A file cut short is found at every open: it costs one stat.
	if err := checkSize(db); err != nil {
		return nil, errors.Join(err, db.Close())
	}
	if o.VerifyAlways {
		db, err := reverify(db, o, "verify_always")
		if err != nil {
			return nil, err
		}
		if _, err := takeClean(db); err != nil {
			return nil, errors.Join(fmt.Errorf("open store %s: %w", o.Path, err), db.Close())
		}
		return db, nil
	}
	clean, err := takeClean(db)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("open store %s: %w", o.Path, err), db.Close())
	}
	if clean {
		return db, nil
	}
	return reverify(db, o, "unclean stop")
}

// reverify closes db, verifies the file through a read-only handle and
// opens it again; why is logged.
func reverify(db *bolt.DB, o Options, why string) (*bolt.DB, error) {
	if err := db.Close(); err != nil {
		return nil, fmt.Errorf("open store %s: %w", o.Path, err)
	}
	r, err := Verify(o.Path, o.LockTimeout)
	if err != nil {
		return nil, err // the caller reports it, on one line
	}
	o.Logger.Info("store verified", "path", o.Path, "why", why, "devices", r.Devices, "channels", r.Channels, "messages", r.Messages, "took", r.Took)
	db, err = openBolt(o, false)
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("open store %s: %w", o.Path, ErrLocked)
	}
	if err != nil {
		return nil, openError(o.Path, err)
	}
	return db, nil
}

// openBolt opens the file. The freelist is persisted: without it bbolt
// rebuilds the list at open by walking every page, which on a store of a
// million waiting messages reads the whole file into memory (400 MiB of
// resident pages for 0.3 s) — wrong for a gateway with 256 MiB of RAM.
// Writing the (map-typed) freelist costs each commit about one page; see
// docs/benchmarks.md. bbolt panics (or faults) on some broken files; that
// is reported as an error instead. readOnly opens for Verify and Salvage.
func openBolt(o Options, readOnly bool) (db *bolt.DB, err error) {
	err = guard(func() (err error) {
		db, err = bolt.Open(o.Path, 0o600, &bolt.Options{
			Timeout:        o.LockTimeout, // a second process fails fast with ErrLocked
			NoFreelistSync: false,
			FreelistType:   bolt.FreelistMapType,
			Mlock:          false,
			MaxSize:        o.MaxSize,
			ReadOnly:       readOnly,
			// Read-only, bbolt would load the freelist lazily, inside
			// tx.Check's goroutine; loaded here, a damaged one is an
			// error, not a fault.
			PreLoadFreelist: readOnly,
		})
		return err
	})
	return db, err
}

// Run removes expired messages every SweepInterval until ctx is done or
// the store is closed. It returns nil then; sweep errors are logged.
func (s *Store) Run(ctx context.Context) error {
	tick := time.NewTicker(s.opts.SweepInterval)
	defer tick.Stop()
	for {
		n, err := s.Sweep(ctx)
		switch {
		case errors.Is(err, ErrClosed) || ctx.Err() != nil:
			return nil
		case err != nil:
			s.log.Warn("store sweep failed", "err", err, "expired", n)
		case n > 0:
			s.log.Debug("store sweep", "expired", n)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.closing:
			return nil
		case <-tick.C:
		}
	}
}

// Close refuses new work (ErrClosed), lets the operations already queued
// commit, stops the committer, writes the clean-close mark (unless the
// store is damaged) and closes the file. It is idempotent and returns the
// same result every time.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		close(s.closing)
		close(s.queue)
		s.mu.Unlock()
		<-s.committerDone // after its last checkpoint
		if s.Damaged() == nil {
			// Failing here (a full disk) costs only a verification at
			// the next start.
			if err := markClean(s.db); err != nil {
				s.log.Warn("store not marked clean; the next start verifies it", "path", s.opts.Path, "err", err)
			}
		}
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("close store %s: %w", s.opts.Path, err)
		}
	})
	return s.closeErr
}

// Stats returns the store-wide totals as of the last commit.
func (s *Store) Stats() (Stats, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return Stats{}, ErrClosed
	}
	if err := s.Damaged(); err != nil {
		return Stats{}, err
	}
	return Stats{
		Devices: s.nDevices.Load(), Channels: s.nChans.Load(), Waiting: s.nWait.Load(),
		UpstreamIDs: s.nUpstreamIDs.Load(), PendingUnregisters: s.nUnregs.Load(),
	}, nil
}

func (s *Store) publish() {
	s.nDevices.Store(s.tot.devices)
	s.nChans.Store(s.tot.channels)
	s.nWait.Store(s.tot.waiting)
	s.nUpstreamIDs.Store(s.tot.upstreamIDs)
	s.nUnregs.Store(s.tot.unregs)
}

// view runs a read transaction unless the store is closed or damaged. A
// panic reading the file marks the store damaged.
func (s *Store) view(fn func(tx *bolt.Tx) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	if err := s.Damaged(); err != nil {
		return err
	}
	if s.w.log != nil {
		// The file holds the last checkpoint only: the committer reads
		// in its transaction, which holds every write answered.
		return s.readOnCommitter(fn)
	}
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	return s.guarded(func() error { return s.db.View(fn) })
}

// scan runs a read transaction over the whole file for a long walk: with
// the write-ahead log, after a checkpoint, so that it sees every write
// answered before it was called without holding up the committer.
func (s *Store) scan(fn func(tx *bolt.Tx) error) error {
	s.mu.RLock()
	wal := s.w.log != nil
	s.mu.RUnlock()
	if wal {
		if err := s.sendWait(&op{ctx: context.Background(), checkpoint: true, done: make(chan struct{}, 1)}); err != nil {
			return err
		}
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	if err := s.Damaged(); err != nil {
		return err
	}
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	return s.guarded(func() error { return s.db.View(fn) })
}

// ---- group commit ----

// An op is one mutation waiting for the committer.
type op struct {
	ctx context.Context
	// apply runs inside the batch's write transaction. It returns nil, a
	// rejection (the op's own outcome; it must have written nothing), or
	// any other error, which aborts the transaction.
	apply func(t *txn) error
	// restore, if set, names a verified snapshot file the committer puts
	// in place of the store's file (Restore), alone, between commits.
	restore string
	// read, if set, is a read the committer runs in its transaction,
	// between batches (the write-ahead log on; Store.view).
	read func(tx *bolt.Tx) error
	// checkpoint asks the committer for a checkpoint (Store.scan).
	checkpoint bool
	err        error         // the outcome, set by the committer
	done       chan struct{} // capacity 1: the committer sends once err is final
}

// newOp is the ops pool's constructor. Each store has its own pool (ops
// holds them for reuse: every mutation needs one, and its channel would be
// a second allocation), so that a store's channels belong to the goroutines
// that opened it (testing/synctest bubbles insist).
func newOp() any { return &op{done: make(chan struct{}, 1)} }

// finish hands o its outcome. The committer must not touch o afterwards:
// its caller may reuse it at once.
func (o *op) finish() { o.done <- struct{}{} }

// rejection marks an error as an op's logical outcome rather than a
// failure of the transaction.
type rejection struct{ err error }

func (r rejection) Error() string { return r.err.Error() }
func (r rejection) Unwrap() error { return r.err }

func reject(err error) error { return rejection{err} }

// do queues apply and waits for its commit. ctx bounds the wait for queue
// space, and an op whose ctx is done before its transaction starts is
// skipped; once applied, the call waits for the fsync, so a nil error
// always means durable and a non-nil error means nothing was written.
func (s *Store) do(ctx context.Context, apply func(t *txn) error) error {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return ErrClosed
	}
	if err := s.Damaged(); err != nil {
		s.mu.RUnlock()
		return err
	}
	o := s.ops.Get().(*op)
	o.ctx, o.apply = ctx, apply
	select {
	case s.queue <- o:
	case <-ctx.Done():
		s.mu.RUnlock()
		o.ctx, o.apply = nil, nil
		s.ops.Put(o)
		return ctx.Err()
	}
	s.mu.RUnlock()
	<-o.done
	err := o.err
	*o = op{done: o.done}
	s.ops.Put(o)
	return err
}

// commitLoop is the committer: it takes the first queued op, adds what
// else is already queued up to MaxBatch, commits them in one transaction
// and repeats. It never waits for more work to arrive, so a lone writer
// pays one fsync and, under load, the next batch forms while the current
// one is being written. With the write-ahead log, the reads taken with a
// batch run before its writes, or after them when the batch was applied
// while it filled (a slow log: fillWait), so that they see every write
// answered and none that is not; and an idle committer checkpoints once
// the log's oldest batch not in the file is CheckpointInterval old.
func (s *Store) commitLoop() {
	defer close(s.committerDone)
	defer s.closeWAL()
	batch := make([]*op, 0, s.opts.MaxBatch)
	var reads []*op
	var next *op
	for {
		o := next
		next = nil
		if o == nil {
			var ok bool
			if o, ok = s.nextOp(); !ok {
				return
			}
		}
		if o.restore != "" {
			s.flushStored()
			o.err = s.restoreOp(o.restore)
			o.finish()
			continue
		}
		batch, reads = batch[:0], reads[:0]
		if o.read != nil || o.checkpoint {
			reads = append(reads, o)
		} else {
			batch = append(batch, o)
		}
		var (
			fill    *time.Timer
			fillEnd time.Time
		)
	drain:
		for len(batch) < s.opts.MaxBatch {
			var (
				o  *op
				ok bool
			)
			select {
			case o, ok = <-s.queue:
			default:
				// Nothing queued. With a slow log, wait a little for
				// the batch to fill (s.fillWait); otherwise go.
				if fill == nil {
					d := s.fillWait()
					if d <= 0 {
						break drain
					}
					fillEnd = time.Now().Add(d)
					fill = time.NewTimer(min(d, fillGap))
				} else {
					left := time.Until(fillEnd)
					if left <= 0 {
						break drain
					}
					fill.Reset(min(left, fillGap))
				}
				// What came while the batch fills is applied
				// meanwhile; once it is as large as the last
				// batches, or failed, the wait is over.
				if len(batch) >= s.fillTarget() || !s.applyEarly(batch) {
					break drain
				}
				select {
				case o, ok = <-s.queue:
				case <-fill.C:
					break drain
				}
			}
			if !ok {
				break drain
			}
			switch {
			case o.restore != "":
				// After this batch, alone.
				next = o
				break drain
			case o.read != nil || o.checkpoint:
				reads = append(reads, o)
			default:
				batch = append(batch, o)
			}
		}
		if fill != nil {
			fill.Stop()
		}
		// The reads run before the batch (they see every write
		// answered and none that is not), unless the batch was applied
		// as it filled: then after it.
		early := s.w.early.t != nil || s.w.early.err != nil
		if !early {
			s.runReads(reads)
		}
		if len(batch) > 0 {
			if s.w.log != nil {
				s.commitWAL(batch)
			} else {
				s.commit(batch)
			}
		}
		if early {
			s.runReads(reads)
		}
		clear(reads)
		clear(batch) // drop references for the GC
	}
}

// runReads runs the reads taken with a batch, after handing the devices
// the messages deferStored kept (a device's read must not see a message
// before its notification).
func (s *Store) runReads(reads []*op) {
	if len(reads) == 0 {
		return
	}
	s.flushStored()
	for _, o := range reads {
		s.readOp(o)
	}
}

// commit applies batch in one write transaction and completes every op.
// If an op fails with a non-rejection error, the transaction is rolled
// back, that op gets the error and the rest are retried without it; if
// the commit itself fails, every op gets the error.
func (s *Store) commit(batch []*op) {
	start := time.Now()
	s.m.batchSize.Observe(float64(len(batch)))
	ops := batch
	for len(ops) > 0 {
		var t *txn
		failed := -1
		err := s.Damaged()
		if err == nil {
			err = s.guarded(func() error {
				return s.db.Update(func(tx *bolt.Tx) error {
					t = s.newTxn(tx, nil)
					t.batchLen = len(ops)
					var err error
					if failed, err = applyOps(t, ops); err != nil {
						return err
					}
					return putTotals(t.meta, s.tot.add(t.delta))
				})
			})
			if errors.Is(err, ErrDamaged) {
				failed = -1 // the file, not an op, failed
			}
		}
		if err == nil {
			s.committed(t, ops, start)
			return
		}
		var retry bool
		if ops, retry = s.failBatch(ops, failed, err); !retry {
			return
		}
	}
}

// committed adopts a batch's committed (or, with the write-ahead log,
// durably logged) transaction t: the counts and totals, the metrics, its
// callers answered, then its stored messages handed to OnStored.
func (s *Store) committed(t *txn, ops []*op, start time.Time) {
	s.keepCounts(t.waiting)
	s.tot = s.tot.add(t.delta)
	s.publish()
	s.nCommits.Add(1)
	s.m.commits.Inc()
	s.m.commitSeconds.Observe(time.Since(start).Seconds())
	t.countMetrics(s.m)
	for _, o := range ops {
		o.finish()
	}
	if fn := s.onStored.Load(); fn != nil && len(t.appended) > 0 {
		if ms := t.stillStored(); len(ms) > 0 && (s.w.log == nil || !s.deferStored(ms)) {
			(*fn)(ms)
		}
	}
}

// failBatch answers a batch whose transaction failed with err: the op at
// failed (if not -1) alone, and the rest are to be tried again (retry);
// or, the file damaged or the commit itself failed, every op.
func (s *Store) failBatch(ops []*op, failed int, err error) (rest []*op, retry bool) {
	s.m.commitErrors.Inc()
	if errors.Is(err, ErrDamaged) {
		// Logged once, by damage.
		for _, o := range ops {
			o.err = err
			o.finish()
		}
		return nil, false
	}
	if failed >= 0 {
		o := ops[failed]
		o.err = fmt.Errorf("store write: %w", err)
		o.finish()
		s.logCommitError("store op failed; retrying the rest of its batch", err)
		return slices.Delete(ops, failed, failed+1), true
	}
	err = fmt.Errorf("store commit: %w", err)
	s.logCommitError("store commit failed", err)
	for _, o := range ops {
		o.err = err
		o.finish()
	}
	return nil, false
}

// OnStored sets the function the committer calls after each commit that
// stored messages, with those of them still waiting when it committed, in
// seq order; nil removes it. Commits are reported one at a time, in the
// order they happened, after their callers were answered. fn runs on the
// committer: it must return quickly and must not call a mutating method
// (that would wait for the committer it is holding up). The slice and the
// messages are fn's to keep; the committer never touches them again.
func (s *Store) OnStored(fn func([]Message)) {
	if fn == nil {
		s.onStored.Store(nil)
		return
	}
	s.onStored.Store(&fn)
}

// maxCachedCounts bounds Store.waiting: past it the counts are forgotten
// and counted again as devices are seen (about 40 bytes each).
const maxCachedCounts = 1 << 16

// keepCounts adopts a committed transaction's message counts.
func (s *Store) keepCounts(counts map[push.UAID]int) {
	if len(counts) == 0 {
		return
	}
	if s.waiting == nil || len(s.waiting)+len(counts) > maxCachedCounts {
		s.waiting = make(map[push.UAID]int, len(counts))
	}
	for u, n := range counts {
		s.waiting[u] = n
	}
}

// logCommitError logs at most one commit error a second, so a failing
// disk does not flood the log; a disk that is full is an operating state
// the endpoint reports (once a minute), so the store says it once a
// minute too.
func (s *Store) logCommitError(msg string, err error) {
	now := time.Now()
	every := time.Second
	if IsNoSpace(err) {
		every = time.Minute
	}
	if now.Sub(s.lastCommitErrLog) < every {
		s.suppressedCommitErrorLogs++
		return
	}
	s.log.Error(msg, "err", err, "suppressed", s.suppressedCommitErrorLogs)
	s.lastCommitErrLog, s.suppressedCommitErrorLogs = now, 0
}

// applyOps runs ops in t. It returns the index of the op whose error must
// abort the transaction, or -1.
func applyOps(t *txn, ops []*op) (int, error) {
	for i, o := range ops {
		if err := o.ctx.Err(); err != nil {
			o.err = err
			continue
		}
		err := o.apply(t)
		var r rejection
		switch {
		case err == nil:
			o.err = nil
		case errors.As(err, &r):
			o.err = r.err
		default:
			return i, err
		}
	}
	return -1, nil
}

func (a totals) add(b totals) totals {
	return totals{
		devices:  max(a.devices+b.devices, 0),
		channels: max(a.channels+b.channels, 0),
		waiting:  max(a.waiting+b.waiting, 0),

		upstreamIDs: max(a.upstreamIDs+b.upstreamIDs, 0),
		unregs:      max(a.unregs+b.unregs, 0),
	}
}
