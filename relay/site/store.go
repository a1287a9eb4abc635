package site

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/consensus"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/store"
)

// Proposer is the consensus engine as the site's store needs it
// (relay/consensus.Node): Propose returns once data is committed by a
// quorum and applied on this member, or an error wrapping ErrNoQuorum.
type Proposer interface {
	Propose(ctx context.Context, data []byte) (uint64, error)
}

// Store is a member's store as the relay core uses it (relay.Store):
// reads come from the member's own store; the writes that decide what
// devices are sent are proposed to the site's log and return once
// committed by a quorum and applied here (so a read that follows sees
// them), with the result this member's application gave. What only this
// member knows (a device's last-seen time) is written to its own store
// directly. OnStored is the member's own commit feed: every member's
// sessions hear of every message as its entry is applied there.
type Store struct {
	*store.Store
	m      *Machine
	p      Proposer
	member uint64
	now    func() time.Time
	next   atomic.Uint64

	// hellos: the upstream link's hello times, not proposed yet.
	hmu    sync.Mutex
	hellos map[push.UAID]time.Time
}

var _ relay.Store = (*Store)(nil)

// ErrNoResult: the entry was committed but this member's application of
// it gave no result (its store was replaced by a snapshot past it
// meanwhile): the write happened; what it returned is unknown.
var ErrNoResult = errors.New("site: committed, result unknown")

// NewStore is member's view of the site's store: st its own, m the state
// machine the consensus engine p applies entries with.
func NewStore(st *store.Store, m *Machine, p Proposer, now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{Store: st, m: m, p: p, member: m.member, now: now}
}

// readBarrier is what Device needs of the Proposer (Site.ReadBarrier).
type readBarrier interface {
	ReadBarrier(ctx context.Context) error
}

// Device reads device u from this member's store. A UAID it does not
// hold may be one the site registered and this member has not applied
// yet (it was out, or restarted with an empty disk): before it answers
// "unknown" (to a hello: a new UAID, the device's registrations lost to
// it) it waits until it has applied what the site had committed
// (ReadBarrier, within the propose bound) and reads again. Without a
// quorum to ask it fails, wrapping relay.ErrNoQuorum.
func (s *Store) Device(u push.UAID) (store.Device, bool, error) {
	d, ok, err := s.Store.Device(u)
	if err != nil || ok {
		return d, ok, err
	}
	b, can := s.p.(readBarrier)
	if !can {
		return d, ok, err
	}
	if err := b.ReadBarrier(context.Background()); err != nil {
		return store.Device{}, false, fmt.Errorf("site: device %s: %w", u, err)
	}
	return s.Store.Device(u)
}

// propose makes e this member's next proposal (its Request, unless the
// caller took one already from s.next) and waits for its result.
func (s *Store) propose(ctx context.Context, e *Entry) (Result, error) {
	e.Member = s.member
	if e.Request == 0 {
		e.Request = s.next.Add(1)
	}
	if e.At.IsZero() {
		e.At = s.now()
	}
	b, err := AppendEntry(nil, e)
	if err != nil {
		return Result{}, err
	}
	c, done := s.m.wait(e.Request)
	defer done()
	for try := 0; ; try++ {
		_, err := s.p.Propose(ctx, b)
		if err == nil {
			break
		}
		// Proposed again when the leader it went to died without it: an
		// ack, a delete or a registration applied twice is applied once.
		// A message is not (an app server's post has no origin key the
		// store remembers): its 503 goes back to the app server.
		if try < 3 && e.Kind.idempotent() && errors.Is(err, consensus.ErrLeaderChanged) {
			continue
		}
		return Result{}, fmt.Errorf("site: %s: %w", e.Kind, err)
	}
	select {
	case r := <-c:
		return r, nil
	default:
		return Result{}, ErrNoResult
	}
}

// AppendBatch proposes ms as one entry (store.Store.AppendBatch's
// semantics: a result per message).
func (s *Store) AppendBatch(ctx context.Context, ms []store.Message) ([]store.AppendResult, error) {
	at := s.now()
	batch := make([]store.Message, len(ms))
	for i, m := range ms {
		if m.Received.IsZero() {
			m.Received = at
		}
		batch[i] = m
	}
	r, err := s.propose(ctx, &Entry{At: at, Kind: KindAppend, Messages: batch})
	if err != nil {
		return nil, err
	}
	return r.Appends, nil
}

// Register proposes channel c.
func (s *Store) Register(ctx context.Context, c store.Channel) error {
	at := s.now()
	if c.Created.IsZero() {
		c.Created = at
	}
	r, err := s.propose(ctx, &Entry{At: at, Kind: KindRegister, UAID: c.UAID, Channel: c.ID, Created: c.Created, Key: c.Key, Endpoint: c.Endpoint})
	if err != nil {
		return err
	}
	return r.Err
}

// Unregister proposes removing a channel.
func (s *Store) Unregister(ctx context.Context, u push.UAID, id push.ChannelID) (bool, error) {
	r, err := s.propose(ctx, &Entry{Kind: KindUnregister, UAID: u, Channel: id})
	return r.Existed, err
}

// Ack proposes deleting u's messages seqs.
func (s *Store) Ack(ctx context.Context, u push.UAID, seqs ...uint64) (int, error) {
	if len(seqs) == 0 {
		return 0, nil
	}
	r, err := s.propose(ctx, &Entry{Kind: KindAck, UAID: u, Seqs: seqs})
	return r.N, err
}

// Delete proposes an app server's delete of message seq.
func (s *Store) Delete(ctx context.Context, u push.UAID, ch push.ChannelID, seq uint64) (bool, error) {
	r, err := s.propose(ctx, &Entry{Kind: KindDelete, UAID: u, Channel: ch, Seqs: []uint64{seq}})
	return r.Existed, err
}

// DeleteDevice proposes forgetting device u.
func (s *Store) DeleteDevice(ctx context.Context, u push.UAID) error {
	_, err := s.propose(ctx, &Entry{Kind: KindReset, UAID: u})
	return err
}

// PutBroadcasts proposes broadcast versions.
func (s *Store) PutBroadcasts(ctx context.Context, m map[string]string) error {
	r, err := s.propose(ctx, &Entry{Kind: KindBroadcasts, Broadcasts: m})
	if err != nil {
		return err
	}
	return r.Err
}

// ProposeSweep proposes removing up to limit messages expired by now; each
// member removes the same ones.
func (s *Store) ProposeSweep(ctx context.Context, limit int) error {
	_, err := s.propose(ctx, &Entry{Kind: KindSweep, Limit: limit})
	return err
}

// idempotent reports whether an entry of kind k applied twice leaves the
// store as applied once.
// A register request is not: the holder would register upstream again.
func (k Kind) idempotent() bool { return k != KindAppend && k != KindRegisterRequest }
