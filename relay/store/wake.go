package store

import (
	"bytes"
	"context"

	"github.com/pushrelay/pushrelay/relay/push"
)

// UpdateWakes rewrites the wake blobs of the devices us in ONE write
// transaction (one commit, one fsync): for each device that has a
// readable record, fn gets its index in us and its current blob, and
// returns the new blob, or nil (or the same bytes) to leave it. Devices
// without a record, or whose record cannot be decoded, are skipped. fn
// runs inside the transaction: it must be quick, must not call the store,
// and may run more than once for the same device if the commit is retried.
// UpdateWakes returns how many blobs it changed.
//
// The wake subsystem flushes with it what it keeps in memory between
// writes (when each device's STUN binding was last refreshed).
func (s *Store) UpdateWakes(ctx context.Context, us []push.UAID, fn func(i int, old []byte) []byte) (int, error) {
	var changed int
	err := s.do(ctx, func(t *txn) error {
		changed = 0
		for i, u := range us {
			d, ok, err := t.device(u)
			if err != nil || !ok {
				continue // a damaged record is not the flush's to fix
			}
			wake := fn(i, d.Wake)
			if wake == nil || bytes.Equal(wake, d.Wake) {
				continue
			}
			d.Wake = bytes.Clone(wake)
			if err := t.putDevice(d); err != nil {
				return err
			}
			changed++
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return changed, nil
}
