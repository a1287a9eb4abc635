package upstream

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/store"
)

// Resetter forgets a device here when its upstream forgot it: the hub
// (relay.Hub.ResetDevice). Run uses the Ingester it is given when that is
// also a Resetter; otherwise a reset only deletes the device from the
// store (store.DeleteDevice), leaving any live session open.
type Resetter interface {
	ResetDevice(ctx context.Context, u push.UAID) (dropped int, err error)
}

// reset handles an upstream that answered the hello for id with another
// UAID, got (via names the path: "held" for a held session's hello,
// "poll" for a poll's, "request" for a register's or unregister's own
// connection). autopush
// forgets a UAID after 60 days without a hello, or when its backlog passed
// msg_limit: the device's upstream channels and endpoints are gone. The
// device is reset here (Resetter): it gets a new UAID at its next hello
// and its next register makes a fresh upstream identity through Mint.
// The UAID the upstream gave is not kept: autopush stores a new UAID only
// at its first register, so the hello left nothing upstream. For
// resetHold after, Mint refuses the device's old UAID: a register it sent
// just before its session was closed makes no new identity for it.
//
// A hello for an identity the device no longer has (a pending unregister
// of an older identity) resets nothing and is only counted (via
// "stale"). An error leaves the device as it was: the next hello tries
// again.
func (l *Link) reset(ctx context.Context, id store.UpstreamID, got, via string) error {
	cur, ok, err := l.cfg.Store.UpstreamID(id.Device)
	if err != nil {
		return fmt.Errorf("upstream: read identity: %w", err)
	}
	if !ok || cur.Upstream != id.Upstream {
		l.m.resets.With("stale").Inc()
		return nil
	}
	l.markReset(id.Device)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.cfg.RequestTimeout)
	defer cancel()
	l.mu.Lock()
	r, _ := l.in.(Resetter)
	l.mu.Unlock()
	dropped := 0
	if r != nil {
		dropped, err = r.ResetDevice(ctx, id.Device)
	} else {
		err = l.cfg.Store.DeleteDevice(ctx, id.Device)
	}
	if err != nil {
		l.m.resets.With("failed").Inc()
		return fmt.Errorf("upstream: reset device %s: %w", id.Device, err)
	}
	l.m.resets.With(via).Inc()
	l.mu.Lock()
	l.forgetLocked(id.Device)
	l.mu.Unlock()
	l.cfg.Logger.Warn("upstream forgot the device's UAID: device reset, it gets a new UAID at its next hello",
		"uaid", id.Device, "upstream_uaid", id.Upstream, "new_upstream_uaid", got, "via", via, "messages_dropped", dropped)
	return nil
}

// resetError is errReset with the UAID the upstream answered.
type resetError struct {
	got string
	was push.UAID
}

func (e *resetError) Error() string {
	return fmt.Sprintf("%v (%s for %s)", errReset, e.got, e.was)
}

func (e *resetError) Is(target error) bool { return target == errReset }

// resetUAID is the UAID the upstream answered in err, a resetError.
func resetUAID(err error) string {
	if re, ok := errors.AsType[*resetError](err); ok {
		return re.got
	}
	return ""
}

// resetHold is how long Mint refuses a device after its reset: a register
// the device sent just before its session was closed must not make it a
// new identity under the UAID it is about to lose.
const resetHold = time.Minute

// errDeviceReset refuses a register for a device just reset.
var errDeviceReset = errors.New("upstream: the device was reset (its upstream forgot it); it gets a new UAID at its next hello")

// markReset records that u is being reset, and forgets the marks older
// than resetHold.
func (l *Link) markReset(u push.UAID) {
	now := l.cfg.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	maps.DeleteFunc(l.resetAt, func(_ push.UAID, at time.Time) bool { return now.Sub(at) > resetHold })
	l.resetAt[u] = now
}

// wasReset reports whether u was reset in the last resetHold.
func (l *Link) wasReset(u push.UAID) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	at, ok := l.resetAt[u]
	return ok && l.cfg.Now().Sub(at) <= resetHold
}
