package kick

import (
	"context"
	"net/netip"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
)

// seen is the freshness of a device's STUN binding held in memory: the
// device's last authenticated request, stamped stamp (Unix ms), came at
// at from addr, the address its stored record already holds. A refresh
// in place changes only this; Run writes it to the store in one
// transaction per FlushInterval (and Close once more), so a device that
// keeps its NAT mapping open costs no store write per refresh.
type seen struct {
	addr  netip.AddrPort
	at    time.Time
	stamp int64
}

// overlay applies what memory knows about u's binding to rec, read from
// the store: a later refresh at the same address makes it fresher. An
// entry for another address is older than rec (a move is written at
// once) and is ignored.
func (k *Kicker) overlay(u push.UAID, rec *record) {
	k.fmu.Lock()
	s, ok := k.fresh[u]
	k.fmu.Unlock()
	if ok {
		s.apply(rec)
	}
}

func (s seen) apply(rec *record) {
	if rec.verified.IsValid() && s.addr == rec.verified && s.at.After(rec.verifiedAt) {
		rec.verifiedAt = s.at
	}
	if s.addr == rec.verified && s.stamp > rec.stamp {
		rec.stamp = s.stamp
	}
}

// remember records a refresh in place; false when the table is full (the
// caller then writes the refresh at once, and Run is asked to flush).
func (k *Kicker) remember(u push.UAID, s seen) bool {
	k.fmu.Lock()
	defer k.fmu.Unlock()
	if _, ok := k.fresh[u]; !ok && len(k.fresh) >= k.cfg.MaxFresh {
		k.flushSoon()
		return false
	}
	k.fresh[u] = s
	k.m.fresh.Set(float64(len(k.fresh)))
	return true
}

// forget drops u's entry if it holds a stamp not newer than stamp: a move
// stamped stamp was just written.
func (k *Kicker) forget(u push.UAID, stamp int64) {
	k.fmu.Lock()
	if s, ok := k.fresh[u]; ok && s.stamp <= stamp {
		delete(k.fresh, u)
		k.m.fresh.Set(float64(len(k.fresh)))
	}
	k.fmu.Unlock()
}

// lastStamp is the newest stamp memory holds for u, or 0.
func (k *Kicker) lastStamp(u push.UAID) int64 {
	k.fmu.Lock()
	defer k.fmu.Unlock()
	return k.fresh[u].stamp
}

func (k *Kicker) flushSoon() {
	select {
	case k.flushNow <- struct{}{}:
	default:
	}
}

// flushTimeout bounds one flush; a flush that fails keeps its entries for
// the next one.
const flushTimeout = 30 * time.Second

// Flush writes the freshness held in memory to the store in one
// transaction and forgets the entries written (or found older than the
// stored record) that no refresh replaced meanwhile. Run calls it every
// FlushInterval and Close once more; it is safe to call at any time.
func (k *Kicker) Flush(ctx context.Context) error {
	k.flushMu.Lock()
	defer k.flushMu.Unlock()
	k.fmu.Lock()
	if len(k.fresh) == 0 {
		k.fmu.Unlock()
		return nil
	}
	us := make([]push.UAID, 0, len(k.fresh))
	ss := make([]seen, 0, len(k.fresh))
	for u, s := range k.fresh {
		us = append(us, u)
		ss = append(ss, s)
	}
	k.fmu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, flushTimeout)
	defer cancel()
	start := time.Now()
	n, err := k.cfg.Store.UpdateWakes(ctx, us, func(i int, old []byte) []byte {
		r, err := decodeRecord(old)
		if err != nil || r.verified != ss[i].addr {
			return nil // unreadable, or moved since: the store is newer
		}
		ss[i].apply(&r)
		return r.encode()
	})
	k.m.flushSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		k.m.flushes.With("error").Inc()
		k.cfg.Logger.Warn("flush wake bindings", "bindings", len(us), "err", err)
		return err
	}
	k.m.flushes.With("ok").Inc()
	k.m.flushed.Add(float64(n))
	k.fmu.Lock()
	for i, u := range us {
		if k.fresh[u] == ss[i] {
			delete(k.fresh, u)
		}
	}
	k.m.fresh.Set(float64(len(k.fresh)))
	k.fmu.Unlock()
	return nil
}
