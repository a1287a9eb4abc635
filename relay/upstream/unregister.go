package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/store"
)

// unregisterBatch is how many pending unregisters the sender reads at once.
const unregisterBatch = 100

// Unregister removes a device's channel here and keeps its unregister to
// be sent upstream, in one commit (store.UnregisterLater: an outbox entry
// and a tombstone, so what the upstream sends for the channel meanwhile is
// acked and dropped); the sender passes it on while the link runs
// (relay.Unregisterer). A device without an upstream identity has only a
// local channel to remove.
func (l *Link) Unregister(ctx context.Context, u push.UAID, ch push.ChannelID) error {
	id, ok, err := l.cfg.Store.UpstreamID(u)
	if err != nil {
		return fmt.Errorf("upstream: read identity: %w", err)
	}
	if !ok {
		_, err := l.cfg.Store.Unregister(ctx, u, ch)
		return err
	}
	added, err := l.cfg.Store.UnregisterLater(ctx, u, ch, id.Upstream)
	if err != nil {
		return err
	}
	if added {
		l.KickUnregisters()
	}
	return nil
}

// KickUnregisters wakes the unregister sender: an unregister was added
// to the outbox by another writer (on a site, another member's, applied
// from the log here).
func (l *Link) KickUnregisters() {
	select {
	case l.unregKick <- struct{}{}:
	default:
	}
}

// sendUnregisters passes the pending unregisters upstream, oldest first,
// until ctx ends: at start, when Unregister adds one, and after a failure
// with the sessions' backoff.
func (l *Link) sendUnregisters(ctx context.Context) {
	backoff := l.cfg.BackoffMin
	var retry <-chan time.Time
	kick := true
	for {
		if !kick {
			select {
			case <-ctx.Done():
				return
			case <-l.unregKick:
			case <-retry:
			}
		}
		kick, retry = false, nil
		more, err := l.sendPendingUnregisters(ctx)
		if ctx.Err() != nil {
			return
		}
		switch {
		case err != nil:
			wait := jitter(backoff)
			l.cfg.Logger.Info("unregisters not sent upstream; retrying", "err", err, "in", wait)
			retry = time.After(wait)
			backoff = min(backoff*2, l.cfg.BackoffMax)
		case more:
			backoff, kick = l.cfg.BackoffMin, true
		default:
			backoff = l.cfg.BackoffMin
		}
	}
}

// sendPendingUnregisters sends up to unregisterBatch pending unregisters and
// reports whether more may wait.
func (l *Link) sendPendingUnregisters(ctx context.Context) (more bool, err error) {
	ps, err := l.cfg.Store.PendingUnregisters(0, unregisterBatch)
	if err != nil {
		return false, fmt.Errorf("read pending unregisters: %w", err)
	}
	for _, p := range ps {
		chid := p.Channel.String()
		frame, _ := json.Marshal(map[string]any{"messageType": "unregister", "channelID": chid, "code": 200})
		rctx, cancel := context.WithTimeout(ctx, l.cfg.RequestTimeout)
		_, err := l.request(rctx, store.UpstreamID{Device: p.UAID, Upstream: p.Upstream}, pushproto.TypeUnregister, chid, frame)
		cancel()
		// Any answer will do: autopush answers 200 whether or not it
		// had the channel. An upstream that forgot the UAID forgot the
		// channel too.
		if err != nil && !errors.Is(err, errReset) {
			return false, err
		}
		if _, err := l.cfg.Store.UnregisterSent(ctx, p.Seq); err != nil {
			return false, fmt.Errorf("record unregister sent: %w", err)
		}
		l.m.unregisters.Inc()
	}
	return len(ps) == unregisterBatch, nil
}
