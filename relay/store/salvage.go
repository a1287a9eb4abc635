package store

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
	bolt "go.etcd.io/bbolt"
)

// SalvageReport counts what Salvage copied and what it left behind.
type SalvageReport struct {
	Devices, Channels, Messages int64 // rows copied
	// Origins counts the origin keys copied (each with its expiry row,
	// so it still ends with its message's TTL).
	Origins int64
	// UpstreamIDs counts the upstream identities copied (with their
	// reverse and hello rows); Unregisters the unregisters still to be
	// sent upstream (with their tombstones).
	UpstreamIDs, Unregisters int64
	// DamagedRegions counts the pages skipped (each with the pages
	// below it) because they could not be read; BadRows the rows that
	// did not decode; Orphans the messages whose channel was lost.
	DamagedRegions, BadRows, Orphans int
	// WAL is what Salvage found in the write-ahead log beside src: its
	// Pending records (the acknowledged batches src lacked) were carried
	// into dst; its Other records, Problems and a torn tail were not.
	WAL  WALReport
	Took time.Duration
}

// salvageChunk is how many rows one write transaction of Salvage carries.
const salvageChunk = 4096

// Salvage copies every readable device, channel and message of the store
// file src, which it only reads, into dst, a new store file (it fails if
// dst exists). It reads the page trees itself (see pageFile): a damaged
// page is skipped, with the pages below it, and everything else is read. A channel whose device record was lost
// gets a new record; a message whose channel was lost is left behind (no
// endpoint can reach it). Message seqs are kept; the topic and expiry
// indexes and the totals are rebuilt, and so are the upstream identities'
// reverse and hello rows and the tombstones of the unregisters still to
// be sent upstream. dst carries no clean-close mark, so
// the first Open verifies it.
//
// The write-ahead log beside src (src+".wal", read only) holds the
// batches answered since src's last checkpoint. Its records after src's
// wal_index, when they were written for src (its epoch), are carried
// into dst: their net effect on each row (the last put, or a delete) is
// laid over src's rows as they are read, so the copy and the rebuilt
// indexes and totals see the store as the next start would have made it;
// their writes to the rebuilt buckets (topics, expiry, totals, the
// reverse rows) are dropped with src's. A message the log deletes (acked)
// is not copied even if src still holds it. dst gets a new epoch and no
// log of its own: the old log, put beside dst, is another file's and is
// never applied to it again.
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

	// Create dst with this build's schema (and no log: its first start
	// makes one), then write into it directly.
	s, err := Open(Options{Path: dst, NoWAL: true})
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
	geo, err := readGeometry(in)
	if err != nil {
		return rep, fmt.Errorf("salvage %s: bbolt cannot read its bucket list (%v): nothing can be read, restore a backup", src, err)
	}
	pf, err := openPageFile(src, geo)
	if err != nil {
		return rep, fmt.Errorf("salvage %s: %w", src, err)
	}
	defer pf.close()
	w := &salvageWriter{db: out, rep: &rep, in: in, pages: pf, geo: geo}
	err = w.readWAL(src)
	if err == nil {
		err = w.copyAll()
	}
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

	in    *bolt.DB // the damaged file, read only
	pages *pageFile
	geo   geometry

	// wal is the net effect of the log's records src lacks: per bucket,
	// per key, the last value put (nil: deleted); walSeqs the last
	// sequence each bucket was set to.
	wal     map[string]map[string][]byte
	walSeqs map[string]uint64
}

type salvageTx struct {
	devices, channels, messages, topics, expiry, origins *bolt.Bucket
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
			origins: tx.Bucket(bucketOrigins),
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

func (w *salvageWriter) copyAll() error {
	in := w.in
	// Devices, with their channel count zeroed: channels count themselves
	// in as they are copied.
	err := w.scan(bucketDevices, func(k, v []byte) error {
		var u push.UAID
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
	err = w.scan(bucketChannels, func(k, v []byte) error {
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
	err = w.scan(bucketMessages, func(k, v []byte) error {
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
	if err := w.copyOrigins(); err != nil {
		return err
	}
	if err := w.copyBroadcasts(); err != nil {
		return err
	}
	if err := w.copyUpstream(); err != nil {
		return err
	}
	if err := w.copyLinkChildren(bucketLinkChildren); err != nil {
		return err
	}
	if err := w.copyLinkChildren(bucketLinkForgets); err != nil {
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
		seq = max(seq, w.maxSeq, w.walSeqs[string(bucketMessages)])
		if err := tx.Bucket(bucketMessages).SetSequence(seq); err != nil {
			return err
		}
		meta := tx.Bucket(bucketMeta)
		if err := meta.Delete(metaClean); err != nil {
			return err
		}
		return putTotals(meta, totals{w.rep.Devices, w.rep.Channels, w.rep.Messages, w.rep.UpstreamIDs, w.rep.Unregisters})
	})
}

// readWAL reads src's epoch and wal_index (meta), and the log's records
// src lacks into w.wal (see Salvage).
func (w *salvageWriter) readWAL(src string) error {
	var (
		epoch []byte
		done  uint64
	)
	regions := w.rep.DamagedRegions
	err := w.scanFile(bucketMeta, func(k, v []byte) error {
		switch string(k) {
		case string(metaEpoch):
			epoch = bytes.Clone(v)
		case string(metaWALIndex):
			done, _ = beUint64(v)
		}
		return nil
	})
	if err != nil {
		return err
	}
	metaLost := w.rep.DamagedRegions > regions
	w.rep.DamagedRegions = regions // meta is not copied: not a region left behind
	w.wal, w.walSeqs = map[string]map[string][]byte{}, map[string]uint64{}
	// set records name's row k as v (nil: deleted).
	set := func(name, k, v []byte) {
		m := w.wal[string(name)]
		if m == nil {
			m = map[string][]byte{}
			w.wal[string(name)] = m
		}
		m[string(k)] = v
	}
	err = readWALPending(src, epoch, done, &w.rep.WAL, func(_ uint64, rec []byte) error {
		return eachRedo(rec,
			func(name, k, v []byte) error {
				set(name, k, append([]byte{}, v...)) // never nil
				return nil
			},
			func(name, k []byte) error {
				set(name, k, nil)
				return nil
			},
			func(name []byte, n uint64) error {
				w.walSeqs[string(name)] = n
				return nil
			})
	})
	if err != nil {
		return fmt.Errorf("salvage %s: %w", src, err)
	}
	if metaLost && w.rep.WAL.Other > 0 {
		w.rep.WAL.problem("the damaged file's meta rows (its epoch, the last record it holds) cannot be read: the log's %d records cannot be told to be its own, and are not carried", w.rep.WAL.Other)
	}
	return nil
}

// scan calls fn with every row of bucket name that can be read, with the
// log's rows laid over them (see Salvage), in key order; fn must copy
// what it keeps.
func (w *salvageWriter) scan(name []byte, fn func(k, v []byte) error) error {
	over := w.wal[string(name)]
	if len(over) == 0 {
		return w.scanFile(name, fn)
	}
	keys := slices.Sorted(maps.Keys(over))
	i := 0
	// before gives fn the log's rows below k (all that are left: nil).
	before := func(k []byte) error {
		for ; i < len(keys) && (k == nil || keys[i] < string(k)); i++ {
			if v := over[keys[i]]; v != nil {
				if err := fn([]byte(keys[i]), v); err != nil {
					return err
				}
			}
		}
		return nil
	}
	err := w.scanFile(name, func(k, v []byte) error {
		if err := before(k); err != nil {
			return err
		}
		if i < len(keys) && keys[i] == string(k) {
			v = over[keys[i]]
			i++
			if v == nil {
				return nil // deleted by the log
			}
		}
		return fn(k, v)
	})
	if err != nil {
		return err
	}
	return before(nil)
}

// scanFile calls fn with every row of bucket name that can be read from
// src, in key order; fn must copy what it keeps. A bucket with its own tree is read
// page by page (pageFile.walk): a damaged page is skipped with its
// subtree and counted. A small bucket kept inline in the root page is
// read through bbolt, with a panic counted as damage.
func (w *salvageWriter) scanFile(name []byte, fn func(k, v []byte) error) error {
	root, ok := w.geo.roots[string(name)]
	if !ok {
		w.rep.DamagedRegions++ // the bucket list lost it
		return nil
	}
	if root != 0 {
		var last []byte
		return w.pages.walk(root, func(k, v []byte, flags uint32) error {
			if flags&bucketLeafFlag != 0 || (last != nil && string(k) <= string(last)) {
				w.rep.BadRows++ // a nested bucket, or out of order
				return nil
			}
			last = append(last[:0], k...)
			return fn(k, v)
		}, func(uint64, string) { w.rep.DamagedRegions++ })
	}
	var ferr error
	err := guard(func() error {
		return w.in.View(func(tx *bolt.Tx) error {
			b := tx.Bucket(name)
			if b == nil {
				return nil
			}
			return b.ForEach(func(k, v []byte) error {
				ferr = fn(k, v)
				return ferr
			})
		})
	})
	if ferr != nil {
		return ferr
	}
	if err != nil {
		w.rep.DamagedRegions++
	}
	return nil
}

// copyOrigins copies the origin-key index (schema 5 and later), acked
// messages' keys included, and rebuilds the expiry row that ends each.
func (w *salvageWriter) copyOrigins() error {
	if _, ok := w.geo.roots[string(bucketOrigins)]; !ok {
		return nil
	}
	err := w.scan(bucketOrigins, func(k, v []byte) error {
		e, ok := decodeOriginValue(v)
		if _, err := push.DecodeOrigin(k); err != nil || !ok {
			w.rep.BadRows++
			return nil
		}
		key := bytes.Clone(k)
		w.rep.Origins++
		return w.add(func(t *salvageTx) error {
			if err := t.origins.Put(key, originValue(e.uaid, e.seq, e.expiry)); err != nil {
				return err
			}
			return t.expiry.Put(expiryKey(e.expiry, e.uaid, e.seq), key)
		})
	})
	if err != nil {
		return err
	}
	return w.flush()
}

// copyBroadcasts copies the broadcast versions, if the old file has them
// (schema 4 and later).
func (w *salvageWriter) copyBroadcasts() error {
	if _, ok := w.geo.roots[string(bucketBroadcasts)]; !ok {
		return nil
	}
	kept := map[string]string{}
	err := w.scan(bucketBroadcasts, func(k, v []byte) error {
		if len(k) == 0 || len(k) > MaxBroadcastLen || len(v) == 0 || len(v) > MaxBroadcastLen {
			w.rep.BadRows++
			return nil
		}
		kept[string(k)] = string(v)
		return nil
	})
	if err != nil || len(kept) == 0 {
		return err
	}
	return w.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketBroadcasts)
		for k, v := range kept {
			if err := b.Put([]byte(k), []byte(v)); err != nil {
				return err
			}
		}
		return nil
	})
}

// copyUpstream copies the upstream identities and the unregisters still
// to be sent upstream, if the old file has them (schema 6 and later). The
// reverse and hello rows are rebuilt from the identities, the tombstones
// from the outbox; an upstream UAID claimed by two devices (a damaged
// row) stays with the first.
func (w *salvageWriter) copyUpstream() error {
	if _, ok := w.geo.roots[string(bucketUpstream)]; ok {
		err := w.scan(bucketUpstream, func(k, v []byte) error {
			id, ok := decodeUpstream(k, v)
			if !ok {
				w.rep.BadRows++
				return nil
			}
			return w.add(func(t *salvageTx) error {
				tx := t.devices.Tx()
				rev := tx.Bucket(bucketUpstreamRev)
				if rev.Get(id.Upstream[:]) != nil {
					w.rep.BadRows++
					return nil
				}
				at := timeNanos(id.Helloed)
				if err := tx.Bucket(bucketUpstream).Put(deviceKey(id.Device), upstreamValue(id.Upstream, at)); err != nil {
					return err
				}
				if err := rev.Put(deviceKey(id.Upstream), deviceKey(id.Device)); err != nil {
					return err
				}
				w.rep.UpstreamIDs++
				return tx.Bucket(bucketHellos).Put(helloKey(at, id.Device), nil)
			})
		})
		if err != nil {
			return err
		}
	}
	var maxSeq uint64
	if _, ok := w.geo.roots[string(bucketUnregOutbox)]; ok {
		err := w.scan(bucketUnregOutbox, func(k, v []byte) error {
			p, ok := decodeOutbox(k, v)
			if !ok {
				w.rep.BadRows++
				return nil
			}
			maxSeq = max(maxSeq, p.Seq)
			return w.add(func(t *salvageTx) error {
				tx := t.devices.Tx()
				tomb := tx.Bucket(bucketTombstones)
				ck := channelKey(p.UAID, p.Channel)
				if tomb.Get(ck) != nil {
					// Two entries for one channel: the first is enough.
					return nil
				}
				if err := tx.Bucket(bucketUnregOutbox).Put(seqValue(p.Seq), encodeOutbox(p)); err != nil {
					return err
				}
				w.rep.Unregisters++
				return tomb.Put(ck, seqValue(p.Seq))
			})
		})
		if err != nil {
			return err
		}
	}
	if err := w.flush(); err != nil {
		return err
	}
	// Outbox seqs continue after the old file's, as message seqs do.
	var seq uint64
	if guard(func() error {
		return w.in.View(func(tx *bolt.Tx) error {
			if b := tx.Bucket(bucketUnregOutbox); b != nil {
				seq = b.Sequence()
			}
			return nil
		})
	}) != nil {
		w.rep.DamagedRegions++
	}
	return w.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketUnregOutbox).SetSequence(max(seq, maxSeq, w.walSeqs[string(bucketUnregOutbox)]))
	})
}
