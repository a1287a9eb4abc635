package store

import (
	"encoding/binary"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Redo records (issue #10). With the write-ahead log on, every put,
// delete and sequence change a batch of ops makes is recorded, through the
// bucket handles txn hands out, as one redo record, and the record is
// appended to the log (one fdatasync) before the batch's callers are
// answered. Applying a record makes its writes again, in order: applying
// it twice leaves the file as applying it once did.
//
// A record is: version (1 byte, redoVersion), the epoch of the file it
// was written for (EpochLen bytes: a log left beside another file, a new
// one or a salvaged copy, is not applied to it), then its writes, each
//
//	kind (1 byte) | bucket id (1 byte) | then by kind:
//	redoPut:    uvarint len(key) | key | uvarint len(value) | value
//	redoDelete: uvarint len(key) | key
//	redoSeq:    uvarint sequence
//
// A bucket id is the bucket's index in redoBuckets, which is append-only:
// a record names buckets by it for as long as records of that version can
// be in a log.

const redoVersion = 1

const (
	redoPut    = 1
	redoDelete = 2
	redoSeq    = 3
)

// redoBuckets are the top-level buckets a record can name. Append only.
var redoBuckets = [][]byte{
	bucketDevices, bucketChannels, bucketMessages, bucketTopics, bucketExpiry, bucketMeta, bucketOrigins,
	bucketBroadcasts, bucketUpstream, bucketUpstreamRev, bucketHellos, bucketTombstones, bucketUnregOutbox,
	bucketLinkChildren, bucketLinkForgets,
}

// redoBucketID returns name's id in redoBuckets.
func redoBucketID(name []byte) (byte, bool) {
	for i, b := range redoBuckets {
		if string(b) == string(name) {
			return byte(i), true
		}
	}
	return 0, false
}

// errRedo reports a record that cannot be decoded.
var errRedo = errors.New("store: bad redo record")

// redo is the record a batch is writing; nil records nothing.
type redo struct{ b []byte }

func (r *redo) put(id byte, k, v []byte) {
	r.b = append(r.b, redoPut, id)
	r.b = binary.AppendUvarint(r.b, uint64(len(k)))
	r.b = append(r.b, k...)
	r.b = binary.AppendUvarint(r.b, uint64(len(v)))
	r.b = append(r.b, v...)
}

func (r *redo) del(id byte, k []byte) {
	r.b = append(r.b, redoDelete, id)
	r.b = binary.AppendUvarint(r.b, uint64(len(k)))
	r.b = append(r.b, k...)
}

func (r *redo) seq(id byte, n uint64) {
	r.b = append(r.b, redoSeq, id)
	r.b = binary.AppendUvarint(r.b, n)
}

// reset starts a new record for the file of epoch e.
func (r *redo) reset(e []byte) { r.b = append(append(r.b[:0], redoVersion), e...) }

// empty reports a record with no writes.
func (r *redo) empty() bool { return len(r.b) <= 1+EpochLen }

// redoEpoch returns the epoch of the file record was written for, or nil
// if it is too short to hold one.
func redoEpoch(record []byte) []byte {
	if len(record) < 1+EpochLen {
		return nil
	}
	return record[1 : 1+EpochLen]
}

// bucket is a bucket handle of a txn: reads go to bbolt, writes go to
// bbolt and, when rec is set, into the batch's redo record. Cursors are
// bbolt's: an op must not delete through one (no op does; writes go
// through Put and Delete here).
type bucket struct {
	*bolt.Bucket
	id  byte
	rec *redo
}

// Put writes k=v.
func (b *bucket) Put(k, v []byte) error {
	if err := b.Bucket.Put(k, v); err != nil {
		return err
	}
	if b.rec != nil {
		b.rec.put(b.id, k, v)
	}
	return nil
}

// Delete removes k.
func (b *bucket) Delete(k []byte) error {
	if err := b.Bucket.Delete(k); err != nil {
		return err
	}
	if b.rec != nil {
		b.rec.del(b.id, k)
	}
	return nil
}

// NextSequence returns the bucket's next sequence.
func (b *bucket) NextSequence() (uint64, error) {
	n, err := b.Bucket.NextSequence()
	if err == nil && b.rec != nil {
		b.rec.seq(b.id, n)
	}
	return n, err
}

// SetSequence sets the bucket's sequence.
func (b *bucket) SetSequence(n uint64) error {
	if err := b.Bucket.SetSequence(n); err != nil {
		return err
	}
	if b.rec != nil {
		b.rec.seq(b.id, n)
	}
	return nil
}

// wrapBucket returns tx's bucket name with writes recorded in rec (nil:
// not recorded), or nil if the file has no such bucket.
func wrapBucket(tx *bolt.Tx, name []byte, rec *redo) *bucket {
	b := tx.Bucket(name)
	if b == nil {
		return nil
	}
	id, ok := redoBucketID(name)
	if !ok && rec != nil {
		panic(fmt.Sprintf("store: bucket %q has no redo id", name))
	}
	return &bucket{Bucket: b, id: id, rec: rec}
}

// eachRedo decodes record and calls put, del and seq for its writes in
// order. It checks the whole record before the first call, so a bad
// record applies nothing.
func eachRedo(record []byte, put func(b []byte, k, v []byte) error, del func(b []byte, k []byte) error, seq func(b []byte, n uint64) error) error {
	for pass := range 2 {
		check := pass == 0
		if len(record) < 1+EpochLen || record[0] != redoVersion {
			return fmt.Errorf("%w: version", errRedo)
		}
		p := record[1+EpochLen:]
		field := func() ([]byte, bool) {
			n, w := binary.Uvarint(p)
			if w <= 0 || n > uint64(len(p)-w) {
				return nil, false
			}
			v := p[w : w+int(n) : w+int(n)]
			p = p[w+int(n):]
			return v, true
		}
		for len(p) > 0 {
			if len(p) < 2 {
				return fmt.Errorf("%w: short write", errRedo)
			}
			kind, id := p[0], int(p[1])
			p = p[2:]
			if id >= len(redoBuckets) {
				return fmt.Errorf("%w: bucket id %d", errRedo, id)
			}
			name := redoBuckets[id]
			var err error
			switch kind {
			case redoPut:
				k, ok := field()
				if !ok || len(k) == 0 {
					return fmt.Errorf("%w: put key", errRedo)
				}
				v, ok := field()
				if !ok {
					return fmt.Errorf("%w: put value", errRedo)
				}
				if !check {
					err = put(name, k, v)
				}
			case redoDelete:
				k, ok := field()
				if !ok || len(k) == 0 {
					return fmt.Errorf("%w: delete key", errRedo)
				}
				if !check {
					err = del(name, k)
				}
			case redoSeq:
				n, w := binary.Uvarint(p)
				if w <= 0 {
					return fmt.Errorf("%w: sequence", errRedo)
				}
				p = p[w:]
				if !check {
					err = seq(name, n)
				}
			default:
				return fmt.Errorf("%w: kind %d", errRedo, kind)
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// applyRedo makes record's writes in tx.
func applyRedo(tx *bolt.Tx, record []byte) error {
	bucket := func(name []byte) (*bolt.Bucket, error) {
		b := tx.Bucket(name)
		if b == nil {
			return nil, fmt.Errorf("%w: no bucket %q", errRedo, name)
		}
		if appendOrdered(name) {
			b.FillPercent = appendFillPercent
		}
		return b, nil
	}
	return eachRedo(record,
		func(name, k, v []byte) error {
			b, err := bucket(name)
			if err != nil {
				return err
			}
			// bbolt keeps k and v until the commit: they point into
			// record, which the caller must not reuse before then.
			return b.Put(k, v)
		},
		func(name, k []byte) error {
			b, err := bucket(name)
			if err != nil {
				return err
			}
			return b.Delete(k)
		},
		func(name []byte, n uint64) error {
			b, err := bucket(name)
			if err != nil {
				return err
			}
			return b.SetSequence(n)
		})
}
