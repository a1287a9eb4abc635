package store

import (
	"bytes"
	"errors"
	"fmt"
	"math/big"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// SalvageReport counts what Salvage copied and what it left behind.
type SalvageReport struct {
	Devices, Channels, Messages int64 // rows copied
	// DamagedRegions counts the key ranges stepped over because bbolt
	// could not read them; BadRows the rows that did not decode;
	// Orphans the messages whose channel was lost.
	DamagedRegions, BadRows, Orphans int
	Took                             time.Duration
}

// salvageChunk is how many rows one write transaction of Salvage carries.
const salvageChunk = 4096

// Salvage copies every readable device, channel and message of the store
// file src, which it only reads, into dst, a new store file (it fails if
// dst exists). Pages bbolt cannot read are stepped over: the scan resumes
// at the first key after them. A channel whose device record was lost
// gets a new record; a message whose channel was lost is left behind (no
// endpoint can reach it). Message seqs are kept; the topic and expiry
// indexes and the totals are rebuilt. dst carries no clean-close mark, so
// the first Open verifies it.
func Salvage(src, dst string, lockTimeout time.Duration) (SalvageReport, error) {
	start := time.Now()
	var rep SalvageReport
	if _, err := os.Lstat(dst); err == nil {
		return rep, fmt.Errorf("salvage into %s: %w", dst, os.ErrExist)
	}
	in, err := openBolt(Options{Path: src, LockTimeout: max(lockTimeout, time.Millisecond)}, true)
	if errors.Is(err, bolt.ErrTimeout) {
		return rep, fmt.Errorf("salvage %s: %w", src, ErrLocked)
	}
	if err != nil {
		return rep, fmt.Errorf("salvage %s: bbolt cannot open it (%v): nothing can be read, restore a backup", src, err)
	}
	defer in.Close()

	// Create dst with this build's schema, then write into it directly.
	s, err := Open(Options{Path: dst})
	if err != nil {
		return rep, fmt.Errorf("salvage: create %s: %w", dst, err)
	}
	if err := s.Close(); err != nil {
		return rep, fmt.Errorf("salvage: create %s: %w", dst, err)
	}
	out, err := openBolt(Options{Path: dst, LockTimeout: time.Second}, false)
	if err != nil {
		return rep, fmt.Errorf("salvage: open %s: %w", dst, err)
	}
	w := &salvageWriter{db: out, rep: &rep}
	err = w.copyAll(in)
	if cerr := out.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("salvage: close %s: %w", dst, cerr)
	}
	rep.Took = time.Since(start)
	return rep, err
}

// salvageWriter buffers rows and writes them to the new file in chunks.
type salvageWriter struct {
	db      *bolt.DB
	rep     *SalvageReport
	pending []func(t *salvageTx) error
	maxSeq  uint64
}

type salvageTx struct {
	devices, channels, messages, topics, expiry *bolt.Bucket
}

func (w *salvageWriter) add(fn func(t *salvageTx) error) error {
	w.pending = append(w.pending, fn)
	if len(w.pending) >= salvageChunk {
		return w.flush()
	}
	return nil
}

func (w *salvageWriter) flush() error {
	if len(w.pending) == 0 {
		return nil
	}
	err := w.db.Update(func(tx *bolt.Tx) error {
		t := &salvageTx{
			devices: tx.Bucket(bucketDevices), channels: tx.Bucket(bucketChannels),
			messages: tx.Bucket(bucketMessages), topics: tx.Bucket(bucketTopics), expiry: tx.Bucket(bucketExpiry),
		}
		t.messages.FillPercent, t.expiry.FillPercent = appendFillPercent, appendFillPercent
		for _, fn := range w.pending {
			if err := fn(t); err != nil {
				return err
			}
		}
		return nil
	})
	clear(w.pending)
	w.pending = w.pending[:0]
	if err != nil {
		return fmt.Errorf("salvage: write: %w", err)
	}
	return nil
}

func (w *salvageWriter) copyAll(in *bolt.DB) error {
	// Devices, with their channel count zeroed: channels count themselves
	// in as they are copied.
	err := w.scan(in, bucketDevices, 16, func(k, v []byte) error {
		var u UAID
		copy(u[:], k)
		d, err := decodeDevice(u, v)
		if len(k) != 16 || err != nil {
			w.rep.BadRows++
			return nil
		}
		d.Channels, d.Waiting = 0, 0
		w.rep.Devices++
		return w.add(func(t *salvageTx) error { return t.devices.Put(deviceKey(u), encodeDevice(d)) })
	})
	if err != nil {
		return err
	}
	err = w.scan(in, bucketChannels, 32, func(k, v []byte) error {
		u, id, ok := splitChannelKey(k)
		c, err := decodeChannel(u, id, v)
		if !ok || err != nil {
			w.rep.BadRows++
			return nil
		}
		w.rep.Channels++
		return w.add(func(t *salvageTx) error {
			var d Device
			if dv := t.devices.Get(u[:]); dv != nil {
				d, _ = decodeDevice(u, dv)
			} else {
				d = Device{UAID: u, Created: c.Created, LastSeen: c.Created}
				w.rep.Devices++
			}
			d.Channels++
			if err := t.channels.Put(channelKey(u, id), encodeChannel(c)); err != nil {
				return err
			}
			return t.devices.Put(deviceKey(u), encodeDevice(d))
		})
	})
	if err != nil {
		return err
	}
	if err := w.flush(); err != nil {
		return err
	}
	err = w.scan(in, bucketMessages, 24, func(k, v []byte) error {
		u, seq, ok := splitMessageKey(k)
		h, err := decodeHeader(u, seq, v)
		if ok && err == nil {
			_, err = decodeMessage(u, seq, v)
		}
		if !ok || err != nil {
			w.rep.BadRows++
			return nil
		}
		w.maxSeq = max(w.maxSeq, seq)
		val := bytes.Clone(v)
		return w.add(func(t *salvageTx) error {
			if t.channels.Get(channelKey(u, h.channel)) == nil {
				w.rep.Orphans++
				return nil
			}
			if h.topic != "" {
				// Seqs ascend within a device: this one replaces an older
				// message with its topic, as Append would have.
				tk := topicKey(u, h.channel, h.topic)
				if old, ok := beUint64(t.topics.Get(tk)); ok {
					if ov := t.messages.Get(messageKey(u, old)); ov != nil {
						oh, _ := decodeHeader(u, old, ov)
						if err := t.expiry.Delete(expiryKey(oh.expiry, u, old)); err != nil {
							return err
						}
						if err := t.messages.Delete(messageKey(u, old)); err != nil {
							return err
						}
						w.rep.Messages--
					}
				}
				if err := t.topics.Put(tk, seqValue(seq)); err != nil {
					return err
				}
			}
			if err := t.messages.Put(messageKey(u, seq), val); err != nil {
				return err
			}
			w.rep.Messages++
			return t.expiry.Put(expiryKey(h.expiry, u, seq), nil)
		})
	})
	if err != nil {
		return err
	}
	if err := w.flush(); err != nil {
		return err
	}
	// The last seq issued: the old file's if it can be read, and never
	// below a copied message's.
	var seq uint64
	if guard(func() error {
		return in.View(func(tx *bolt.Tx) error {
			if b := tx.Bucket(bucketMessages); b != nil {
				seq = b.Sequence()
			}
			return nil
		})
	}) != nil {
		w.rep.DamagedRegions++
	}
	return w.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketMessages).SetSequence(max(seq, w.maxSeq)); err != nil {
			return err
		}
		meta := tx.Bucket(bucketMeta)
		if err := meta.Delete(metaClean); err != nil {
			return err
		}
		return putTotals(meta, totals{w.rep.Devices, w.rep.Channels, w.rep.Messages})
	})
}

// scan calls fn with every row of bucket name in db that bbolt can read,
// in key order; fn must copy what it keeps. When reading panics (a
// damaged page), scan steps over the damaged key range (see stepOver)
// and goes on. keyLen is the width of the bucket's keys.
func (w *salvageWriter) scan(db *bolt.DB, name []byte, keyLen int, fn func(k, v []byte) error) error {
	var from []byte
	for {
		var (
			last []byte
			ferr error
		)
		err := guard(func() error {
			return db.View(func(tx *bolt.Tx) error {
				b := tx.Bucket(name)
				if b == nil {
					return nil
				}
				c := b.Cursor()
				k, v := c.First()
				if from != nil {
					k, v = c.Seek(from)
				}
				for ; k != nil; k, v = c.Next() {
					if ferr = fn(k, v); ferr != nil {
						return nil
					}
					last = append(last[:0], k...)
				}
				return nil
			})
		})
		if ferr != nil {
			return ferr
		}
		if err == nil {
			return nil
		}
		if !errors.Is(err, ErrDamaged) {
			return fmt.Errorf("salvage: read %s: %w", name, err)
		}
		w.rep.DamagedRegions++
		base := last
		if base == nil {
			base = from
		}
		next, ok := stepOver(db, name, base, keyLen)
		if !ok {
			return nil // nothing readable after base
		}
		from = next
	}
}

// stepOver finds the smallest key after base at which a cursor Seek in
// bucket name reads without panicking, that is the first key of the first
// readable page after the damaged one (a branch page sends every key of
// a page's range to that page, so a Seek panics exactly for the keys below
// the next page's first key). It probes base+1, base+2, base+4, ... and
// then bisects; keys are compared as keyLen-byte integers.
func stepOver(db *bolt.DB, name []byte, base []byte, keyLen int) ([]byte, bool) {
	key := func(n *big.Int) []byte { return n.FillBytes(make([]byte, keyLen)) }
	readable := func(n *big.Int) bool {
		return guard(func() error {
			return db.View(func(tx *bolt.Tx) error {
				if b := tx.Bucket(name); b != nil {
					b.Cursor().Seek(key(n))
				}
				return nil
			})
		}) == nil
	}
	b := make([]byte, keyLen)
	copy(b, base)
	lo := new(big.Int).SetBytes(b)
	limit := new(big.Int).Lsh(big.NewInt(1), uint(8*keyLen))
	var hi *big.Int
	for i := 0; hi == nil; i++ {
		c := new(big.Int).Add(lo, new(big.Int).Lsh(big.NewInt(1), uint(i)))
		last := c.Cmp(limit) >= 0
		if last {
			c.Sub(limit, big.NewInt(1))
			if c.Cmp(lo) <= 0 {
				return nil, false
			}
		}
		switch {
		case readable(c):
			hi = c
		case last:
			return nil, false
		default:
			lo = c
		}
	}
	one := big.NewInt(1)
	for new(big.Int).Sub(hi, lo).Cmp(one) > 0 {
		mid := new(big.Int).Rsh(new(big.Int).Add(lo, hi), 1)
		if readable(mid) {
			hi = mid
		} else {
			lo = mid
		}
	}
	return key(hi), true
}
