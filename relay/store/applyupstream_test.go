package store

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
)

// The upstream link's writes applied from a log (a site's holder) leave
// the store as the Store's own writes do: two stores, one written
// directly and one through Apply, end with the same identities, hello
// order, outbox, tombstones and results.
func TestApplyUpstreamSameAsDirect(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	t0 := time.Unix(1_800_000_000, 0)
	var now atomic.Pointer[time.Time]
	now.Store(&t0)
	direct := openTest(t, Options{Path: filepath.Join(dir, "direct.db"), Now: func() time.Time { return *now.Load() }})
	applied := openTest(t, Options{Path: filepath.Join(dir, "applied.db")})
	a, b := uaid(1), uaid(2)
	upA, upB := uaid(0x41), uaid(0x42)
	for _, s := range []*Store{direct, applied} {
		for _, u := range []struct{ u, ch byte }{{1, 1}, {1, 2}, {2, 1}} {
			if err := s.Register(ctx, Channel{UAID: uaid(u.u), ID: chid(u.ch)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	var index uint64
	apply := func(at time.Time, fn func(tx *Tx) error) {
		t.Helper()
		index++
		if err := applied.Apply(ctx, index, func(tx *Tx) error { tx.SetTime(at); return fn(tx) }); err != nil {
			t.Fatal(err)
		}
	}

	// Identities: added, added again (the first stays), one conflict.
	d1, add1, err := direct.AddUpstreamID(ctx, a, upA, t0)
	var a1 UpstreamID
	var aAdd bool
	apply(t0, func(tx *Tx) error { var err error; a1, aAdd, err = tx.AddUpstreamID(a, upA, t0); return err })
	if err != nil || d1 != a1 || add1 != aAdd || !aAdd {
		t.Fatalf("add: direct %v %v %v, applied %v %v", d1, add1, err, a1, aAdd)
	}
	_, _, err = direct.AddUpstreamID(ctx, b, upA, t0)
	apply(t0, func(tx *Tx) error {
		if _, _, err := tx.AddUpstreamID(b, upA, t0); !errors.Is(err, ErrUpstreamConflict) {
			t.Errorf("applied conflicting add: %v", err)
		}
		return nil
	})
	if !errors.Is(err, ErrUpstreamConflict) {
		t.Errorf("direct conflicting add: %v", err)
	}
	if _, _, err := direct.AddUpstreamID(ctx, b, upB, time.Time{}); err != nil {
		t.Fatal(err)
	}
	apply(t0, func(tx *Tx) error { _, _, err := tx.AddUpstreamID(b, upB, time.Time{}); return err })

	// Hellos, an unregister kept for the upstream, one sent.
	if _, err := direct.Helloed(ctx, t0.Add(time.Hour), a, b); err != nil {
		t.Fatal(err)
	}
	apply(t0, func(tx *Tx) error {
		for _, u := range []push.UAID{a, b} {
			if _, err := tx.Helloed(u, t0.Add(time.Hour)); err != nil {
				return err
			}
		}
		return nil
	})
	at := t0.Add(2 * time.Hour)
	now.Store(&at)
	for _, ch := range []byte{1, 2} {
		if _, err := direct.UnregisterLater(ctx, a, chid(ch), upA); err != nil {
			t.Fatal(err)
		}
		apply(at, func(tx *Tx) error { _, err := tx.UnregisterLater(a, chid(ch), upA); return err })
	}
	if n, err := direct.UnregisterSent(ctx, 1); err != nil || n != 1 {
		t.Fatalf("direct sent: %d %v", n, err)
	}
	apply(at, func(tx *Tx) error {
		if n, err := tx.UnregisterSent(1); err != nil || n != 1 {
			t.Errorf("applied sent: %d %v", n, err)
		}
		return nil
	})
	apply(at, func(tx *Tx) error { return tx.SetHolder(7, 3) })

	type view struct {
		IDs     []UpstreamID
		Pending []PendingUnregister
		Tomb    [2]bool
	}
	read := func(s *Store) view {
		var v view
		var err error
		if v.IDs, err = s.HelloedBefore(t0.Add(24*time.Hour), 0); err != nil {
			t.Fatal(err)
		}
		for i := range v.IDs {
			v.IDs[i].Helloed = v.IDs[i].Helloed.UTC()
		}
		if v.Pending, err = s.PendingUnregisters(0, 0); err != nil {
			t.Fatal(err)
		}
		for i := range v.Pending {
			v.Pending[i].At = v.Pending[i].At.UTC()
		}
		for i, ch := range []byte{1, 2} {
			v.Tomb[i], _ = s.Tombstoned(a, chid(ch))
		}
		return v
	}
	if dv, av := read(direct), read(applied); !reflect.DeepEqual(dv, av) {
		t.Errorf("direct and applied differ:\n direct %+v\napplied %+v", dv, av)
	} else if len(dv.IDs) != 2 || len(dv.Pending) != 1 || dv.Tomb != [2]bool{false, true} {
		t.Errorf("unexpected state: %+v", dv)
	}
	if m, term, err := applied.Holder(); err != nil || m != 7 || term != 3 {
		t.Errorf("holder %d, term %d, %v", m, term, err)
	}
}
