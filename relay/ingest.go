package relay

import (
	"context"
	"errors"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/token"
)

// Ingest is the one way messages enter the core, whatever their source
// (the endpoint API, an upstream, a parent relay): it returns one result
// per message, in order. Every message with a TTL goes into one store
// commit: when Ingest returns, each is on disk or has its own Err
// (ErrNoSubscription for a channel that is not registered; when the
// commit failed as a whole, ErrClosing, ctx's error or the store's, the
// same for every message it carried), so the caller may then acknowledge
// its source.
//
// A message whose origin key was ingested before (while that one's TTL
// lasts; across restarts too) is not stored again and does not reach the
// device again: its result has Duplicate set, Stored set and the first
// one's ID. The caller acks its source as for a new message.
//
// A TTL-0 message is handed to its device's session if one is open and
// dropped otherwise; it is never stored, so its origin key is not kept.
// The error is ErrClosing when the hub was closing before it began; then
// nothing was done.
func (h *Hub) Ingest(ctx context.Context, ms []push.Message) ([]Result, error) {
	h.mu.Lock()
	closing := h.closing
	h.mu.Unlock()
	if closing {
		return nil, ErrClosing
	}
	now := h.cfg.Now()
	res := make([]Result, len(ms))
	toStore := make([]store.Message, 0, len(ms))
	// at maps toStore's entries to their index in ms; nil while they are
	// the same (no TTL-0 message so far).
	var at []int
	for i := range ms {
		m := &ms[i]
		u, ch := m.UAID, m.Channel
		if m.TTL <= 0 {
			if at == nil {
				at = make([]int, len(toStore), len(ms))
				for j := range at {
					at[j] = j
				}
			}
			r, err := h.pushDirect(u, ch, *m, now)
			r.Err = err
			res[i] = r
			continue
		}
		topic := m.Topic
		if m.Version != 0 {
			// SimplePush keeps only the latest version of a channel.
			topic = simplePushTopic
		}
		toStore = append(toStore, store.Message{
			UAID: u, Channel: ch,
			Received: now, TTL: m.TTL, Expiry: now.Add(m.TTL),
			Topic: topic, Urgency: m.Urgency,
			Encoding: m.Encoding, Encryption: m.Encryption, CryptoKey: m.CryptoKey,
			Data: m.Data, Version: m.Version, Origin: m.Origin,
		})
		if at != nil {
			at = append(at, i)
		}
	}
	if len(toStore) == 0 {
		return res, nil
	}
	stored, err := h.cfg.Store.AppendBatch(ctx, toStore)
	if err != nil {
		// Nothing of the commit was written: each message to store
		// fails with it (the direct ones keep their results).
		if errors.Is(err, store.ErrClosed) {
			err = ErrClosing
		} else {
			err = wrapStore("store messages", err)
		}
		for j := range toStore {
			res[index(at, j)].Err = err
		}
		return res, nil
	}
	for j, sr := range stored {
		i := index(at, j)
		if sr.Err != nil {
			if errors.Is(sr.Err, store.ErrNoChannel) || errors.Is(sr.Err, store.ErrTombstoned) {
				// A tombstoned channel was unregistered here; only the
				// upstream has not heard yet.
				res[i].Err = ErrNoSubscription
			} else {
				res[i].Err = wrapStore("store message", sr.Err)
			}
			continue
		}
		sm := &sr.Message
		if sr.Duplicate {
			// Stored before: the device has it or had it; nothing to
			// deliver or wake for.
			h.m.duplicates.Inc()
			id := h.cfg.Tokens.SealMessageID(token.MessageID{UAID: sm.UAID, Channel: sm.Channel, Seq: sm.Seq})
			res[i] = Result{ID: id, Stored: true, Duplicate: true}
			continue
		}
		h.m.pushedStored.Inc()
		// The committer has handed (or is handing) the message to the
		// device's session, if one was attached (stored).
		h.wakeFor(sm.UAID, ms[i].Urgency, sm.Expiry)
		id := h.cfg.Tokens.SealMessageID(token.MessageID{UAID: sm.UAID, Channel: sm.Channel, Seq: sm.Seq})
		res[i] = Result{ID: id, Stored: true, Queue: sr.Queue}
	}
	return res, nil
}

// wakeFor asks the waker to wake u for a stored message of urgency until
// its expiry, unless u has a session taking messages. Very-low and low
// urgency wait for the device's next connection.
func (h *Hub) wakeFor(u push.UAID, urg push.Urgency, expiry time.Time) {
	if h.cfg.Waker == nil || h.cfg.SiteWakes || !urg.AtLeast(push.UrgencyNormal) {
		return
	}
	if s := h.session(u); s == nil || !s.accepting() {
		h.cfg.Waker.Wake(u, expiry)
	}
}

// index is the index in a batch of its j-th stored message (at is nil when
// they are the same).
func index(at []int, j int) int {
	if at == nil {
		return j
	}
	return at[j]
}
