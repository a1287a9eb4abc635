package linkproto

import (
	"encoding/binary"
	"errors"
	"reflect"
	"testing"

	"github.com/pushrelay/pushrelay/relay/push"
)

func uaidN(n int) (u push.UAID) {
	binary.BigEndian.PutUint64(u[8:], uint64(n)*0x9e3779b97f4a7c15>>1)
	binary.BigEndian.PutUint64(u[:], uint64(n))
	return u
}

func chanN(n int) (c push.ChannelID) {
	binary.BigEndian.PutUint64(c[:], uint64(n))
	return c
}

// fullResync is a chunk at both count limits.
func fullResync() Resync {
	r := Resync{High: maxUAID}
	for i := range MaxResyncUAIDs {
		e := ResyncEntry{UAID: uaidN(i + 1), Channels: []push.ChannelID{chanN(1)}}
		if i == 0 {
			for j := 2; j <= MaxResyncChannels-MaxResyncUAIDs+1; j++ {
				e.Channels = append(e.Channels, chanN(j))
			}
		}
		r.Entries = append(r.Entries, e)
	}
	return r
}

// A view of 10,000 UAIDs is cut into chunks within the limits that cover
// the UAID space in order, and read back entry for entry; the digest of
// what arrived equals the digest of what was sent.
func TestChunkResync(t *testing.T) {
	var view []ResyncEntry
	var sent Digest
	for i := range 10000 {
		e := ResyncEntry{UAID: uaidN(i + 1)}
		for j := range 1 + i%3 {
			e.Channels = append(e.Channels, chanN(j+1))
			sent.Add(e.UAID, chanN(j+1))
		}
		view = append(view, e)
	}
	var got []ResyncEntry
	var rr ResyncReader
	var recv Digest
	chunks, last := 0, false
	err := ChunkResync(view, func(c Resync) error {
		b, err := Append(nil, c)
		if err != nil {
			return err
		}
		f, n, err := Decode(b)
		if err != nil || n != len(b) {
			return err
		}
		c2 := *f.(*Resync)
		if last, err = rr.Add(c2); err != nil {
			return err
		}
		for _, e := range c2.Entries {
			for _, ch := range e.Channels {
				recv.Add(e.UAID, ch)
			}
		}
		got = append(got, c2.Entries...)
		chunks++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !last || chunks < 3 || !reflect.DeepEqual(got, view) || recv != sent {
		t.Fatalf("%d chunks, last %v, %d entries back of %d, digests %v %v", chunks, last, len(got), len(view), recv, sent)
	}

	// An empty view is one chunk covering everything.
	chunks = 0
	if err := ChunkResync(nil, func(c Resync) error {
		if c.Low != (push.UAID{}) || !c.Last() || len(c.Entries) != 0 {
			t.Errorf("empty view chunk %+v", c)
		}
		chunks++
		return nil
	}); err != nil || chunks != 1 {
		t.Fatalf("empty view: %d chunks, %v", chunks, err)
	}

	// Unsorted input and a UAID with too many channels are refused.
	unsorted := []ResyncEntry{view[1], view[0]}
	if err := ChunkResync(unsorted, func(Resync) error { return nil }); !errors.Is(err, ErrMalformed) {
		t.Errorf("unsorted view: %v", err)
	}
	big := ResyncEntry{UAID: uaidN(1)}
	for j := range MaxResyncChannels + 1 {
		big.Channels = append(big.Channels, chanN(j+1))
	}
	if err := ChunkResync([]ResyncEntry{big}, func(Resync) error { return nil }); !errors.Is(err, ErrTooLarge) {
		t.Errorf("%d channels: %v", len(big.Channels), err)
	}
}

func TestResyncReaderRefusesGaps(t *testing.T) {
	var rr ResyncReader
	if _, err := rr.Add(Resync{Low: uaidN(1), High: maxUAID}); !errors.Is(err, ErrMalformed) {
		t.Errorf("first chunk not at 0: %v", err)
	}
	rr = ResyncReader{}
	if _, err := rr.Add(Resync{High: uaidN(5)}); err != nil {
		t.Fatal(err)
	}
	if _, err := rr.Add(Resync{Low: uaidN(5), High: maxUAID}); !errors.Is(err, ErrMalformed) {
		t.Errorf("overlapping chunk: %v", err)
	}
	next := uaidN(5)
	next[15]++
	if last, err := rr.Add(Resync{Low: next, High: maxUAID}); err != nil || !last {
		t.Fatalf("next chunk: %v %v", last, err)
	}
	if _, err := rr.Add(Resync{High: maxUAID}); !errors.Is(err, ErrMalformed) {
		t.Errorf("chunk after the last: %v", err)
	}
}

func TestResyncDecodeRefuses(t *testing.T) {
	two := Resync{High: maxUAID, Entries: []ResyncEntry{
		{UAID: uaidN(1), Channels: []push.ChannelID{chanN(1)}},
		{UAID: uaidN(2), Channels: []push.ChannelID{chanN(1), chanN(2)}},
	}}
	good, err := Append(nil, two)
	if err != nil {
		t.Fatal(err)
	}
	hdr := 3 // type, 2-byte length
	for name, edit := range map[string]func(b []byte){
		"uaids out of order":    func(b []byte) { b[hdr+32+1+7] = 9 },            // first UAID 9, second 2,
		"channels out of order": func(b []byte) { b[len(b)-1-8] = 0 },            // last channel 0, before 1,
		"low above high":        func(b []byte) { b[hdr] = 0xff; b[hdr+16] = 0 }, // ff00.. > 00ff..,
	} {
		b := append([]byte(nil), good...)
		edit(b)
		if _, _, err := Decode(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
