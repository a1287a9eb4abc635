package store

import (
	"context"
	"errors"
)

// AppendResult is one message's outcome in AppendBatch.
type AppendResult struct {
	// Message is the message as stored: Seq set, Received and Expiry
	// filled in when they were zero. Only valid when Err is nil.
	Message Message
	// Queue is the device's stored messages right after this one was
	// stored, and after any oldest message its cap dropped (expired
	// messages the sweeper has not removed yet included).
	Queue int
	// Duplicate is set when the message's origin key was appended before
	// and that message's TTL has not ended: nothing was stored, and
	// Message.Seq is the first one's seq. Waiting says whether the first
	// one still waits for its device; if not, it was acked (or deleted,
	// replaced, dropped) meanwhile. The caller acks its source again; the
	// device does not see the message twice.
	Duplicate, Waiting bool
	// Err is the message's own rejection (ErrNoChannel, ErrTombstoned,
	// ErrZeroTTL, ErrBadMessage, possibly wrapped), or nil when it was
	// stored.
	Err error
}

// AppendBatch stores ms in one transaction, so with one fsync, and
// returns one result per message in the order given. Each message is
// validated and applied as Append does (topic replacement, the per-device
// cap with drop-oldest), in order, as if appended one after another; a
// message's rejection is its result's Err and does not affect the others.
// A later message of the batch may replace an earlier one (same topic) or
// push it out (cap): the earlier still reports its Seq and the queue size
// it left. The error is for the batch as a whole (ErrClosed, a done ctx,
// a failed commit): then nothing of it was written.
//
// OnStored sees the batch's messages with the rest of its commit.
func (s *Store) AppendBatch(ctx context.Context, ms []Message) ([]AppendResult, error) {
	res := make([]AppendResult, len(ms))
	type pending struct {
		apply func(t *txn) error
		out   *appendOutcome
	}
	ops := make([]pending, len(ms))
	n, last := 0, -1
	for i := range ms {
		res[i].Message = ms[i]
		apply, out, err := s.appendOp(&res[i].Message)
		if err != nil {
			res[i].Err = err
			continue
		}
		ops[i] = pending{apply, out}
		n, last = n+1, i
	}
	var err error
	switch n {
	case 0:
		return res, nil
	case 1:
		// One message (every single post): its op as it is. Its only
		// rejections, ErrNoChannel and ErrTombstoned, come back as the
		// op's error.
		err = s.do(ctx, ops[last].apply)
		if errors.Is(err, ErrNoChannel) || errors.Is(err, ErrTombstoned) {
			res[last].Err, err = err, nil
		}
	default:
		err = s.do(ctx, func(t *txn) error {
			for i, op := range ops {
				if op.apply == nil {
					continue
				}
				// The commit may run the op again (after another op of
				// its transaction failed): each run starts from scratch.
				res[i].Err = nil
				err := op.apply(t)
				var r rejection
				switch {
				case err == nil:
				case errors.As(err, &r):
					res[i].Err = r.err
				default:
					return err
				}
			}
			return nil
		})
	}
	if err != nil {
		return nil, err
	}
	for i, op := range ops {
		if op.out != nil && res[i].Err == nil {
			op.out.fill(&res[i])
		}
	}
	return res, nil
}
