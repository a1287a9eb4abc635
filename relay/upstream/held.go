package upstream

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/store"
)

// held is one device's held session with the upstream.
type held struct {
	l  *Link
	id store.UpstreamID

	mu sync.Mutex
	c  *pushclient.Client // nil while not connected
	// pending are the register and unregister replies awaited over c, by
	// type and channel ID.
	pending map[string]chan pushproto.ServerFrame
}

// errReset ends a held session whose UAID the upstream forgot.
var errReset = errors.New("upstream answered hello with another UAID")

// run connects, serves and reconnects after a jittered exponential
// backoff until ctx ends.
func (h *held) run(ctx context.Context) {
	l := h.l
	log := l.cfg.Logger.With("uaid", h.id.Device, "upstream_uaid", h.id.Upstream)
	defer func() {
		l.mu.Lock()
		delete(l.sessions, h.id.Device)
		l.mu.Unlock()
	}()
	backoff := l.cfg.BackoffMin
	for ctx.Err() == nil {
		helloed, err := h.serve(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errReset) {
			// Giving the device a new identity is not built yet.
			l.m.resets.Inc()
			log.Error("upstream forgot the device's UAID; session no longer held", "err", err)
			return
		}
		if helloed {
			backoff = l.cfg.BackoffMin
		}
		wait := jitter(backoff)
		log.Info("upstream session lost; reconnecting", "err", err, "in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(backoff*2, l.cfg.BackoffMax)
	}
}

// serve runs one connection: connect, hello, then notifications until
// the connection fails or ctx ends. helloed reports whether the hello
// was answered.
func (h *held) serve(ctx context.Context) (helloed bool, err error) {
	l := h.l
	dctx, cancel := context.WithTimeout(ctx, l.cfg.RequestTimeout)
	c, err := l.dial(dctx)
	if err != nil {
		cancel()
		l.m.connects.With("error").Inc()
		return false, err
	}
	stop := context.AfterFunc(ctx, func() { c.Abort() })
	defer func() {
		stop()
		c.Abort()
	}()
	helloDone := context.AfterFunc(dctx, func() { c.Abort() })
	_, err = c.Hello(h.id.Upstream.String(), pushclient.HelloOptions{})
	helloDone()
	cancel()
	if err != nil {
		l.m.connects.With("error").Inc()
		return false, fmt.Errorf("hello: %w", err)
	}
	l.m.connects.With("ok").Inc()
	if c.UAID != h.id.Upstream.String() {
		return true, fmt.Errorf("%w (%s for %s)", errReset, c.UAID, h.id.Upstream)
	}
	if _, err := l.cfg.Store.Helloed(ctx, l.cfg.Now(), h.id.Device); err != nil {
		l.cfg.Logger.Warn("record upstream hello", "uaid", h.id.Device, "err", err)
	}
	// autopush pings every 300 s: a read times out only when the pings
	// stopped, not while the device merely gets nothing.
	c.ExtendOnPing(l.cfg.ReadTimeout)
	h.mu.Lock()
	h.c = c
	h.mu.Unlock()
	l.m.open.Inc()
	defer func() {
		l.m.open.Dec()
		h.mu.Lock()
		h.c = nil
		for k, ch := range h.pending {
			close(ch)
			delete(h.pending, k)
		}
		h.mu.Unlock()
	}()
	for {
		f, err := c.Read(time.Now().Add(l.cfg.ReadTimeout))
		if err != nil {
			return true, fmt.Errorf("read: %w", err)
		}
		switch f.MessageType {
		case pushproto.TypeNotification:
			if err := h.deliver(ctx, c, f); err != nil {
				return true, err
			}
		case pushproto.TypeRegister, pushproto.TypeUnregister:
			h.mu.Lock()
			key := string(f.MessageType) + ":" + f.ChannelID
			if ch := h.pending[key]; ch != nil {
				ch <- f
				delete(h.pending, key)
			}
			h.mu.Unlock()
		}
	}
}

// deliver ingests one notification and acks it upstream once it is
// durable here, or dropped for good. An error leaves it unacked and ends
// the connection: the upstream sends it again on the next.
func (h *held) deliver(ctx context.Context, c *pushclient.Client, f pushproto.ServerFrame) error {
	l := h.l
	ack := func() error {
		if err := c.Send(pushproto.EncodeAck([]pushproto.AckUpdate{{ChannelID: f.ChannelID, Version: f.Version, Code: pushproto.AckOK}})); err != nil {
			return fmt.Errorf("ack: %w", err)
		}
		l.m.acks.Inc()
		return nil
	}
	ch, err := push.ParseChannelID(f.ChannelID)
	var data []byte
	if err == nil {
		data, err = base64.RawURLEncoding.DecodeString(strings.TrimRight(f.Data, "="))
	}
	if err != nil || f.Version == "" || len(f.Updates) > 0 {
		// Nothing here could ever store it; holding it upstream would
		// only block the batches behind it.
		l.m.messages.With("dropped_bad").Inc()
		l.cfg.Logger.Warn("upstream notification dropped: malformed", "uaid", h.id.Device, "channel", f.ChannelID, "err", err)
		return ack()
	}
	m := push.Message{
		UAID: h.id.Device, Channel: ch,
		Origin:  push.UpstreamOrigin(h.id.Upstream, ch, f.Version),
		TTL:     l.cfg.TTL,
		Urgency: push.UrgencyNormal,
		Data:    data,
	}
	if f.Headers != nil {
		m.Encoding, m.Encryption, m.CryptoKey = f.Headers.Encoding, f.Headers.Encryption, f.Headers.CryptoKey
	}
	l.mu.Lock()
	in := l.in
	l.mu.Unlock()
	res, err := in.Ingest(ctx, []push.Message{m})
	if err == nil && len(res) != 1 {
		err = fmt.Errorf("ingest returned %d results for 1 message", len(res))
	}
	if err == nil {
		err = res[0].Err
	}
	switch {
	case err == nil && res[0].Duplicate:
		l.m.messages.With("duplicate").Inc()
	case err == nil:
		l.m.messages.With("stored").Inc()
	case errors.Is(err, relay.ErrNoSubscription):
		l.m.messages.With("dropped_unregistered").Inc()
	default:
		l.m.messages.With("not_stored").Inc()
		return fmt.Errorf("ingest: %w", err)
	}
	return ack()
}

// request sends frame over the open connection and waits for the reply of
// type t for chid. ok is false when the session is not open (nothing was
// sent).
func (h *held) request(ctx context.Context, t pushproto.MessageType, chid string, frame []byte) (pushproto.ServerFrame, bool, error) {
	key := string(t) + ":" + chid
	rc := make(chan pushproto.ServerFrame, 1)
	h.mu.Lock()
	c := h.c
	if c == nil {
		h.mu.Unlock()
		return pushproto.ServerFrame{}, false, nil
	}
	if h.pending[key] != nil {
		h.mu.Unlock()
		return pushproto.ServerFrame{}, true, fmt.Errorf("upstream: a %s for %s is already waiting", t, chid)
	}
	h.pending[key] = rc
	h.mu.Unlock()
	fail := func(err error) (pushproto.ServerFrame, bool, error) {
		h.mu.Lock()
		if h.pending[key] == rc {
			delete(h.pending, key)
		}
		h.mu.Unlock()
		return pushproto.ServerFrame{}, true, err
	}
	if err := c.Send(frame); err != nil {
		return fail(fmt.Errorf("upstream: send %s: %w", t, err))
	}
	select {
	case f, ok := <-rc:
		if !ok {
			return pushproto.ServerFrame{}, true, fmt.Errorf("upstream: session lost before the %s reply", t)
		}
		return f, true, nil
	case <-ctx.Done():
		return fail(fmt.Errorf("upstream: waiting for the %s reply: %w", t, ctx.Err()))
	}
}
