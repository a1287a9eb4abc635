package store

import (
	"bytes"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// The channel and outbox records decode from any bytes without panicking;
// what decodes encodes to a record that decodes the same (format 1
// channel records are written back as format 2; a time past 2262 reads
// back as the zero time, as it always has).
func FuzzChannelRecord(f *testing.F) {
	u, id := uaid(1), chid(1)
	f.Add(encodeChannel(Channel{Key: []byte{4, 1}, Endpoint: "https://up/x"}))
	f.Add(encodeChannelV1(Channel{Key: []byte{4, 1}}))
	f.Add([]byte{channelV2, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeChannel(u, id, b)
		if err != nil {
			return
		}
		if len(c.Endpoint) > MaxEndpointLen {
			t.Fatalf("accepted a %d-byte endpoint", len(c.Endpoint))
		}
		again, err := decodeChannel(u, id, encodeChannel(c))
		if err != nil || timeNanos(again.Created) != timeNanos(c.Created) || !bytes.Equal(again.Key, c.Key) || again.Endpoint != c.Endpoint {
			t.Fatalf("%x decodes to %+v, then to %+v, %v", b, c, again, err)
		}
	})
}

// An outbox entry decodes from any bytes without panicking, and what
// decodes encodes back.
func FuzzOutboxRecord(f *testing.F) {
	f.Add(seqValue(7), encodeOutbox(PendingUnregister{UAID: uaid(1), Channel: chid(2), Upstream: upuaid(3)}))
	f.Fuzz(func(t *testing.T, k, v []byte) {
		p, ok := decodeOutbox(k, v)
		if !ok {
			return
		}
		// All but the time, which reads back clamped past 2262.
		if !bytes.Equal(seqValue(p.Seq), k) || !bytes.Equal(encodeOutbox(p)[:outboxLen-8], v[:outboxLen-8]) {
			t.Fatalf("%x %x decodes to %+v, which encodes otherwise", k, v, p)
		}
	})
}

// redoWrite is one decoded write of a redo record.
type redoWrite struct {
	kind   byte
	bucket string
	key    string
	value  string
	seq    uint64
}

func decodeRedo(b []byte) ([]redoWrite, error) {
	var ws []redoWrite
	err := eachRedo(b,
		func(name, k, v []byte) error {
			ws = append(ws, redoWrite{kind: redoPut, bucket: string(name), key: string(k), value: string(v)})
			return nil
		},
		func(name, k []byte) error {
			ws = append(ws, redoWrite{kind: redoDelete, bucket: string(name), key: string(k)})
			return nil
		},
		func(name []byte, n uint64) error {
			ws = append(ws, redoWrite{kind: redoSeq, bucket: string(name), seq: n})
			return nil
		})
	return ws, err
}

// A redo record decodes from any bytes without panicking, all or
// nothing; what decodes encodes to a record that decodes the same. Seeded
// with the records of a store's real workload.
func FuzzRedoRecord(f *testing.F) {
	for _, rec := range workloadRecords(f) {
		f.Add(rec)
	}
	f.Add([]byte{redoVersion, 1, 2, 3, 4, 5, 6, 7, 8, redoPut, 0, 1, 'k', 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		ws, err := decodeRedo(b)
		if err != nil {
			return
		}
		var r redo
		r.reset(redoEpoch(b))
		for _, w := range ws {
			id, ok := redoBucketID([]byte(w.bucket))
			if !ok {
				t.Fatalf("decoded bucket %q has no id", w.bucket)
			}
			switch w.kind {
			case redoPut:
				r.put(id, []byte(w.key), []byte(w.value))
			case redoDelete:
				r.del(id, []byte(w.key))
			case redoSeq:
				r.seq(id, w.seq)
			}
		}
		again, err := decodeRedo(r.b)
		if err != nil || !slices.Equal(again, ws) {
			t.Fatalf("%x decodes to %v, which encodes to %x: %v, %v", b, ws, r.b, again, err)
		}
	})
}

// workloadRecords runs walWorkload and returns its log's records.
func workloadRecords(tb testing.TB) [][]byte {
	t := tb
	dir := t.TempDir()
	path := filepath.Join(dir, "store.db")
	clock := newClock()
	s, err := Open(Options{Path: path, Now: clock.Now, CheckpointInterval: time.Hour, CheckpointBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	walWorkload(t, s, clock, 0)
	cp := copyStore(t, path, t.TempDir())
	s.Close()
	l, err := openWALLog(cp+walSuffix, Options{}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var recs [][]byte
	l.Range(l.FirstIndex(), func(_ uint64, rec []byte) error {
		recs = append(recs, bytes.Clone(rec))
		return nil
	})
	if len(recs) < 20 {
		t.Fatalf("the workload made %d records", len(recs))
	}
	return recs
}
