package site

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/store"
)

// Machine is the site's state machine (relay/consensus calls it): each
// batch of committed entries is applied to the member's store in one
// store.Apply, so one commit and one fsync, which records the batch's
// last index with them. Results of this member's own proposals go to the
// callers waiting for them (Machine.wait).
type Machine struct {
	st     *store.Store
	member uint64
	log    *slog.Logger

	mu      sync.Mutex
	waiting map[uint64]chan Result

	// onBroadcasts hears of every broadcasts entry applied, after its
	// commit, on the applying goroutine: it must not block.
	onBroadcasts func(map[string]string)
	// onWakeOwners hears of every wake owner entry applied, after its
	// commit, on the applying goroutine: it must not block.
	onWakeOwners func(owner uint64, us []push.UAID)
	// onReset hears of every device reset entry applied (the member
	// that proposed it, the device), after its commit, on the applying
	// goroutine: it must not block.
	onReset func(by uint64, u push.UAID)
	// onRestored hears that the store was replaced by a snapshot, after
	// the swap, on the restoring goroutine: it must not block.
	onRestored func()
	// onUpstream hears of every holder, register request, outbox and
	// link entry applied, after its commit, on the applying goroutine: it must
	// not block (holder.go).
	onUpstream func(*Entry)
	// answers: this member's register requests waiting for the holder's
	// result entry, by request.
	answers map[uint64]chan *Entry
}

// Result is what applying an entry did, for the member that proposed it.
type Result struct {
	// Appends: one per message of an append entry.
	Appends []store.AppendResult
	// N: an ack's messages deleted.
	N int
	// Existed: a delete's message, or an unregister's channel, was there.
	Existed bool
	// Err: a register's rejection (store.ErrChannelConflict, ...), or an
	// entry the store refused as a whole (ErrBadMessage broadcasts), or
	// an upstream identity's (store.ErrUpstreamConflict).
	Err error
	// UpstreamID and Added: an upstream identity's add.
	UpstreamID store.UpstreamID
	Added      bool
}

// NewMachine is the state machine of member on st.
func NewMachine(st *store.Store, member uint64, log *slog.Logger) *Machine {
	return &Machine{st: st, member: member, log: log, waiting: map[uint64]chan Result{}, answers: map[uint64]chan *Entry{}}
}

// wait registers request r of this member; its Result is sent on the
// returned channel (capacity 1) when its entry is applied here. done
// forgets it.
func (m *Machine) wait(r uint64) (ch <-chan Result, done func()) {
	c := make(chan Result, 1)
	m.mu.Lock()
	m.waiting[r] = c
	m.mu.Unlock()
	return c, func() {
		m.mu.Lock()
		delete(m.waiting, r)
		m.mu.Unlock()
	}
}

// awaitAnswer registers this member's register request r; the holder's
// result entry for it is sent on the returned channel (capacity 1) when
// applied here. done forgets it.
func (m *Machine) awaitAnswer(r uint64) (ch <-chan *Entry, done func()) {
	c := make(chan *Entry, 1)
	m.mu.Lock()
	m.answers[r] = c
	m.mu.Unlock()
	return c, func() {
		m.mu.Lock()
		delete(m.answers, r)
		m.mu.Unlock()
	}
}

// applied is one of this member's entries applied, with its result.
type applied struct {
	request uint64
	res     Result
}

// Apply applies a batch of committed entries whose last is at index. An
// entry that does not decode is skipped, logged: every member holds the
// same bytes and skips it alike.
func (m *Machine) Apply(index uint64, data [][]byte) error {
	es := make([]*Entry, 0, len(data))
	for _, b := range data {
		e, err := DecodeEntry(b)
		if err != nil {
			m.log.Error("site log entry skipped: it does not decode", "index_up_to", index, "err", err)
			continue
		}
		es = append(es, e)
	}
	var mine []applied
	var bcasts []map[string]string
	var owners, ups, resets []*Entry
	err := m.st.Apply(context.Background(), index, func(tx *store.Tx) error {
		mine, bcasts, owners, ups, resets = mine[:0], bcasts[:0], owners[:0], ups[:0], resets[:0]
		for _, e := range es {
			tx.SetTime(e.At)
			res, err := applyEntry(tx, e)
			if err != nil {
				return fmt.Errorf("site: apply %s entry: %w", e.Kind, err)
			}
			if e.Member == m.member {
				mine = append(mine, applied{e.Request, res})
			}
			if e.Kind == KindBroadcasts && res.Err == nil {
				bcasts = append(bcasts, e.Broadcasts)
			}
			switch e.Kind {
			case KindWakeOwner:
				owners = append(owners, e)
			case KindReset:
				resets = append(resets, e)
			case KindHolder:
				if !res.Existed {
					ups = append(ups, e)
				}
			case KindRegisterRequest, KindRegisterResult, KindLink, KindBroadcastWant:
				ups = append(ups, e)
			case KindOutbox:
				if e.Op == OpLater && res.Existed {
					ups = append(ups, e)
				}
			}
		}
		return nil
	})
	if errors.Is(err, store.ErrApplied) {
		return nil
	}
	if err != nil {
		return err
	}
	if m.onBroadcasts != nil {
		for _, b := range bcasts {
			m.onBroadcasts(b)
		}
	}
	if m.onWakeOwners != nil {
		for _, e := range owners {
			m.onWakeOwners(e.Member, e.UAIDs)
		}
	}
	if m.onReset != nil {
		for _, e := range resets {
			m.onReset(e.Member, e.UAID)
		}
	}
	m.mu.Lock()
	for _, a := range mine {
		if c, ok := m.waiting[a.request]; ok {
			c <- a.res
			delete(m.waiting, a.request)
		}
	}
	for _, e := range ups {
		if e.Kind != KindRegisterResult || e.ForMember != m.member {
			continue
		}
		if c, ok := m.answers[e.ForRequest]; ok {
			c <- e
			delete(m.answers, e.ForRequest)
		}
	}
	m.mu.Unlock()
	if m.onUpstream != nil {
		for _, e := range ups {
			if e.Kind != KindRegisterResult {
				m.onUpstream(e)
			}
		}
	}
	return nil
}

// applyEntry makes e's writes in tx. The error is fatal to the batch;
// rejections are results.
func applyEntry(tx *store.Tx, e *Entry) (Result, error) {
	var r Result
	var err error
	switch e.Kind {
	case KindAppend:
		r.Appends = make([]store.AppendResult, len(e.Messages))
		for i, msg := range e.Messages {
			if r.Appends[i], err = tx.Append(msg); err != nil {
				return r, err
			}
		}
	case KindAck:
		r.N, err = tx.Ack(e.UAID, e.Seqs...)
	case KindDelete:
		r.Existed, err = tx.Delete(e.UAID, e.Channel, e.Seqs[0])
	case KindRegister:
		err = tx.Register(store.Channel{UAID: e.UAID, ID: e.Channel, Created: e.Created, Key: e.Key, Endpoint: e.Endpoint})
		if isRejection(err) {
			r.Err, err = err, nil
		}
	case KindUnregister:
		r.Existed, err = tx.Unregister(e.UAID, e.Channel)
	case KindReset:
		err = tx.DeleteDevice(e.UAID)
	case KindBroadcasts:
		err = tx.PutBroadcasts(e.Broadcasts)
		if errors.Is(err, store.ErrBadMessage) {
			r.Err, err = err, nil
		}
	case KindSweep:
		_, _, err = tx.Sweep(e.Limit)
	case KindHolder:
		// A holder entry of an older term than the holder named (a
		// member that stopped leading proposed it late) changes nothing.
		var term uint64
		if _, term, err = tx.Holder(); err == nil && e.Term >= term {
			err = tx.SetHolder(e.Holder, e.Term)
		} else if err == nil {
			r.Existed = true // stale: not applied
		}
	case KindRegisterRequest, KindRegisterResult, KindBroadcastWant:
		// Nothing stored: the holder hears of the request, the asking
		// member of its result.
	case KindLink:
		switch e.Op {
		case OpIdentity:
			// Nothing stored: every member hears of it (linkid.go).
		case OpLinkChild:
			err = tx.SetLinkChild(e.UAID, e.LinkName)
		case OpLinkForgotten:
			err = tx.LinkForgotten(e.UAID, e.LinkName)
		case OpLinkChildAddr:
			err = tx.SetLinkChildAddr(e.LinkName, e.LinkAddr)
		case OpLinkAcks:
			for u, seqs := range e.Acks {
				var k int
				if k, err = tx.Ack(u, seqs...); err != nil {
					break
				}
				r.N += k
			}
		case OpLinkEpoch:
			r.Added, err = tx.SetLinkEpoch(e.LinkEpoch)
		}
		if errors.Is(err, store.ErrBadChannel) {
			r.Err, err = err, nil
		}
	case KindUpstreamID:
		switch e.Op {
		case OpAdd:
			r.UpstreamID, r.Added, err = tx.AddUpstreamID(e.UAID, e.Upstream, e.Helloed)
		case OpSet:
			err = tx.SetUpstreamID(e.UAID, e.Upstream, e.Helloed)
		case OpDelete:
			r.Existed, err = tx.DeleteUpstreamID(e.UAID)
		}
		if errors.Is(err, store.ErrUpstreamConflict) {
			r.Err, err = err, nil
		}
	case KindHellos:
		for _, h := range e.Hellos {
			var ok bool
			if ok, err = tx.Helloed(h.UAID, h.At); err != nil {
				break
			}
			if ok {
				r.N++
			}
		}
	case KindOutbox:
		switch e.Op {
		case OpLater:
			r.Existed, err = tx.UnregisterLater(e.UAID, e.Channel, e.Upstream)
		case OpSent:
			r.N, err = tx.UnregisterSent(e.Seqs...)
		}
	}
	return r, err
}

// isRejection reports whether a register's error is its own outcome, the
// same on every member, not a failure of the store.
func isRejection(err error) bool {
	for _, r := range []error{store.ErrChannelConflict, store.ErrTombstoned, store.ErrTooManyChannels, store.ErrBadChannel} {
		if errors.Is(err, r) {
			return true
		}
	}
	return false
}

// AppliedIndex is the store's applied index.
func (m *Machine) AppliedIndex() uint64 {
	n, err := m.st.Applied()
	if err != nil {
		m.log.Error("site: applied index not read", "err", err)
	}
	return n
}

// Snapshot writes the member's store.
func (m *Machine) Snapshot(w io.Writer) error {
	_, err := m.st.Snapshot(w)
	return err
}

// Restore replaces the member's store with another member's snapshot.
func (m *Machine) Restore(r io.Reader, index uint64) error {
	got, err := m.st.Restore(context.Background(), r)
	if err != nil {
		return err
	}
	if got < index {
		return fmt.Errorf("site: snapshot at index %d, wanted at least %d", got, index)
	}
	m.log.Info("site: store restored from a member's snapshot", "applied", got)
	if m.onRestored != nil {
		m.onRestored()
	}
	return nil
}

// String names a kind, for logs.
func (k Kind) String() string {
	names := map[Kind]string{KindAppend: "append", KindAck: "ack", KindDelete: "delete", KindRegister: "register",
		KindUnregister: "unregister", KindReset: "reset", KindBroadcasts: "broadcasts", KindSweep: "sweep",
		KindHolder: "holder", KindRegisterRequest: "register request", KindRegisterResult: "register result",
		KindUpstreamID: "upstream id", KindHellos: "hellos", KindOutbox: "outbox", KindLink: "link", KindWakeOwner: "wake owner", KindBroadcastWant: "broadcast want"}
	if n, ok := names[k]; ok {
		return n
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}
