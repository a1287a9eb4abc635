package wal

import (
	"bytes"
	"testing"
)

// FuzzDecodeRecord feeds the record decoder arbitrary bytes, seeded with
// real records: it never panics, never reads past what it was given, and
// what it accepts encodes back to the same bytes.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(appendRecord(nil, 1, []byte("hello"), true))
	f.Add(appendRecord(nil, 1<<40, nil, false))
	f.Add(appendRecord(appendRecord(nil, 7, entry(7), true), 8, entry(8), false))
	f.Add(appendRecord(nil, 3, bytes.Repeat([]byte{0xff}, 300), true)[:100])
	f.Add(make([]byte, headerSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRecord(b)
		if err != nil {
			return
		}
		if r.size > len(b) || r.size != headerSize+len(r.data) {
			t.Fatalf("record of %d bytes (data %d) from %d", r.size, len(r.data), len(b))
		}
		if again := appendRecord(nil, r.index, r.data, r.first); !bytes.Equal(again, b[:r.size]) {
			t.Fatalf("re-encoded %x, decoded from %x", again, b[:r.size])
		}
	})
}
