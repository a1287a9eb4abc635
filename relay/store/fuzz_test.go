package store

import (
	"bytes"
	"testing"
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
