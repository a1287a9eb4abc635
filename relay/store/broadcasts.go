package store

import (
	"context"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// bucketBroadcasts holds the relay's broadcast versions (schema 4):
//
//	broadcasts  id(≤MaxBroadcastLen) → version(≤MaxBroadcastLen)
//
// A few dozen rows at most, written only when a version changes.
var bucketBroadcasts = []byte("broadcasts")

// MaxBroadcastLen bounds a broadcast id and a version, as the device
// protocol bounds what a device may name.
const MaxBroadcastLen = 128

// Version 4: the broadcasts bucket.
func migrateCreateBroadcasts(tx *bolt.Tx) error {
	if _, err := tx.CreateBucketIfNotExists(bucketBroadcasts); err != nil {
		return fmt.Errorf("create bucket %s: %w", bucketBroadcasts, err)
	}
	return nil
}

// Broadcasts returns every broadcast id with its version.
func (s *Store) Broadcasts() (map[string]string, error) {
	out := map[string]string{}
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBroadcasts).ForEach(func(k, v []byte) error {
			out[string(k)] = string(v)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// PutBroadcasts sets the versions of the broadcasts in m, in one commit;
// ids not in m keep theirs. Rows whose version is already the one given
// are not rewritten. An empty id or version, or one longer than
// MaxBroadcastLen, fails the whole call with ErrBadMessage and writes
// nothing.
func (s *Store) PutBroadcasts(ctx context.Context, m map[string]string) error {
	if err := checkBroadcastVersions(m); err != nil {
		return err
	}
	return s.do(ctx, func(t *txn) error { return t.putBroadcasts(m) })
}

// checkBroadcastVersions refuses an empty or too long id or version.
func checkBroadcastVersions(m map[string]string) error {
	for id, v := range m {
		if id == "" || v == "" || len(id) > MaxBroadcastLen || len(v) > MaxBroadcastLen {
			return fmt.Errorf("%w: broadcast %.40q: id and version must be 1 to %d bytes", ErrBadMessage, id, MaxBroadcastLen)
		}
	}
	return nil
}

// putBroadcasts is PutBroadcasts in t, m checked.
func (t *txn) putBroadcasts(m map[string]string) error {
	b := t.bucket(bucketBroadcasts)
	for id, v := range m {
		if string(b.Get([]byte(id))) == v {
			continue
		}
		if err := b.Put([]byte(id), []byte(v)); err != nil {
			return err
		}
	}
	return nil
}

// checkBroadcasts is Verify's walk of the broadcasts bucket.
func checkBroadcasts(tx *bolt.Tx, r *Report) {
	b := tx.Bucket(bucketBroadcasts)
	if b == nil {
		r.problem("bucket %s missing", bucketBroadcasts)
		return
	}
	b.ForEach(func(k, v []byte) error {
		if len(k) == 0 || len(k) > MaxBroadcastLen || len(v) == 0 || len(v) > MaxBroadcastLen {
			r.problem("%v", corrupt("broadcast row", k))
		}
		return nil
	})
}
