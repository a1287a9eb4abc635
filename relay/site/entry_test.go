package site

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/store"
)

// sampleEntries are one entry of every kind, as members make them.
func sampleEntries() []*Entry {
	at := time.Unix(1_800_000_000, 123456789)
	u := push.UAID{0xaa, 1}
	ch := push.ChannelID{0xcc, 2}
	return []*Entry{
		{At: at, Member: 7, Request: 1, Kind: KindAppend, Messages: []store.Message{
			{UAID: u, Channel: ch, Origin: push.LocalOrigin([16]byte{1, 2, 3}), Received: at, TTL: time.Hour,
				Expiry: at.Add(time.Hour), Urgency: push.UrgencyHigh, Topic: "t", Encoding: "aes128gcm", Data: []byte("hello")},
			{UAID: u, Channel: ch, Origin: push.ParentOrigin([]byte("parent-id")), Received: at, TTL: time.Minute,
				Expiry: at.Add(time.Minute), Version: 42},
		}},
		{At: at, Member: 7, Request: 2, Kind: KindAck, UAID: u, Seqs: []uint64{1, 2, 300000}},
		{At: at, Member: 8, Request: 3, Kind: KindDelete, UAID: u, Channel: ch, Seqs: []uint64{9}},
		{At: at, Member: 8, Request: 4, Kind: KindRegister, UAID: u, Channel: ch, Created: at, Key: []byte{4, 5, 6}, Endpoint: "https://push.example.net/wpush/v2/x"},
		{At: at, Member: 8, Request: 5, Kind: KindUnregister, UAID: u, Channel: ch},
		{At: at, Member: 9, Request: 6, Kind: KindReset, UAID: u},
		{At: at, Member: 9, Request: 7, Kind: KindBroadcasts, Broadcasts: map[string]string{"remote-settings/monitor_changes": "\"1700000000000\""}},
		{At: at, Member: 9, Request: 8, Kind: KindBroadcastWant, Broadcasts: map[string]string{"remote-settings/monitor_changes": "", "x": ""}},
		{At: at, Member: 9, Request: 1 << 40, Kind: KindSweep, Limit: 1000},
		{At: at, Member: 9, Request: 8, Kind: KindWakeOwner, UAIDs: []push.UAID{u, {0xbb, 3}}},
		{At: at, Member: 9, Request: 8, Kind: KindHolder, Holder: 9, Term: 12},
		{At: at, Member: 7, Request: 9, Kind: KindRegisterRequest, UAID: u, Channel: ch, Key: []byte{4, 5, 6}},
		{At: at, Member: 9, Request: 10, Kind: KindRegisterResult, ForMember: 7, ForRequest: 9, Endpoint: "https://push.example.net/wpush/v2/y"},
		{At: at, Member: 9, Request: 11, Kind: KindRegisterResult, ForMember: 7, ForRequest: 9, Error: "upstream: register answered status 500"},
		{At: at, Member: 9, Request: 12, Kind: KindUpstreamID, Op: OpAdd, UAID: u, Upstream: push.UAID{0xbb, 3}, Helloed: at},
		{At: at, Member: 9, Request: 13, Kind: KindUpstreamID, Op: OpDelete, UAID: u},
		{At: at, Member: 9, Request: 14, Kind: KindHellos, Hellos: []Hello{{UAID: u, At: at}, {UAID: push.UAID{2}, At: at.Add(time.Second)}}},
		{At: at, Member: 7, Request: 15, Kind: KindOutbox, Op: OpLater, UAID: u, Channel: ch, Upstream: push.UAID{0xbb, 3}},
		{At: at, Member: 9, Request: 16, Kind: KindOutbox, Op: OpSent, Seqs: []uint64{1, 70000}},
		{At: at, Member: 8, Request: 17, Kind: KindLink, Op: OpIdentity, LinkPrint: 0x0123456789abcdef, LinkName: "site-a"},
		{At: at, Member: 8, Request: 18, Kind: KindLink, Op: OpLinkChild, UAID: u, LinkName: "edge-1"},
		{At: at, Member: 8, Request: 19, Kind: KindLink, Op: OpLinkForgotten, UAID: u, LinkName: "edge-1"},
		{At: at, Member: 8, Request: 20, Kind: KindLink, Op: OpLinkChildAddr, LinkName: "edge-1", LinkAddr: netip.MustParseAddrPort("192.0.2.7:4433")},
		{At: at, Member: 8, Request: 21, Kind: KindLink, Op: OpLinkAcks, Acks: map[push.UAID][]uint64{u: {1, 2}, {0xbb}: {9}}},
		{At: at, Member: 8, Request: 22, Kind: KindLink, Op: OpLinkEpoch, LinkEpoch: []byte{1, 2, 3, 4, 5, 6, 7, 8}},
	}
}

func TestEntryRoundTrip(t *testing.T) {
	for _, e := range sampleEntries() {
		b, err := AppendEntry(nil, e)
		if err != nil {
			t.Fatalf("kind %d: %v", e.Kind, err)
		}
		got, err := DecodeEntry(b)
		if err != nil {
			t.Fatalf("kind %d: decode: %v", e.Kind, err)
		}
		got.At, e.At = got.At.UTC(), e.At.UTC()
		for i := range got.Messages {
			for _, m := range []*store.Message{&got.Messages[i], &e.Messages[i]} {
				m.Received, m.Expiry = m.Received.UTC(), m.Expiry.UTC()
			}
		}
		got.Created, e.Created = got.Created.UTC(), e.Created.UTC()
		got.Helloed, e.Helloed = got.Helloed.UTC(), e.Helloed.UTC()
		for i := range got.Hellos {
			got.Hellos[i].At, e.Hellos[i].At = got.Hellos[i].At.UTC(), e.Hellos[i].At.UTC()
		}
		if !reflect.DeepEqual(got, e) {
			t.Errorf("kind %d:\n got %+v\nwant %+v", e.Kind, got, e)
		}
		// Every strict prefix is refused, as are trailing bytes.
		for n := range len(b) {
			if _, err := DecodeEntry(b[:n]); !errors.Is(err, ErrBadEntry) {
				t.Fatalf("kind %d: %d of %d bytes: %v", e.Kind, n, len(b), err)
			}
		}
		if _, err := DecodeEntry(append(bytes.Clone(b), 0)); !errors.Is(err, ErrBadEntry) {
			t.Fatalf("kind %d: trailing byte: %v", e.Kind, err)
		}
	}
}

func TestEntryRefused(t *testing.T) {
	for name, e := range map[string]*Entry{
		"no messages":   {Kind: KindAppend},
		"unknown kind":  {Kind: 99},
		"delete 2 seqs": {Kind: KindDelete, Seqs: []uint64{1, 2}},
		"bad origin":    {Kind: KindAppend, Messages: []store.Message{{Origin: push.Origin{Kind: 9, ID: "x"}}}},
		"no hellos":     {Kind: KindHellos},
		"upstream op":   {Kind: KindUpstreamID, Op: 9},
		"outbox op":     {Kind: KindOutbox, Op: 3},
	} {
		if _, err := AppendEntry(nil, e); !errors.Is(err, ErrBadEntry) {
			t.Errorf("%s: %v", name, err)
		}
	}
	b, _ := AppendEntry(nil, sampleEntries()[0])
	b[0] = 2
	if _, err := DecodeEntry(b); !errors.Is(err, ErrBadEntry) {
		t.Errorf("version 2: %v", err)
	}
}

// FuzzDecodeEntry: entries come from peers (the log is replicated over the
// network): any bytes decode to an entry or ErrBadEntry, never a panic,
// and a decoded entry encodes back to bytes that decode to the same.
func FuzzDecodeEntry(f *testing.F) {
	for _, e := range sampleEntries() {
		b, err := AppendEntry(nil, e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeEntry(b)
		if err != nil {
			if !errors.Is(err, ErrBadEntry) {
				t.Fatalf("error %v is not ErrBadEntry", err)
			}
			return
		}
		again, err := AppendEntry(nil, e)
		if err != nil {
			// A decoded entry the encoder refuses (a zero-length batch is
			// refused by both): only what the encoder's limits add.
			t.Fatalf("re-encode: %v", err)
		}
		e2, err := DecodeEntry(again)
		if err != nil {
			t.Fatalf("decode of re-encoded: %v", err)
		}
		if e.Kind != e2.Kind || len(e.Messages) != len(e2.Messages) || len(e.Seqs) != len(e2.Seqs) || len(e.Broadcasts) != len(e2.Broadcasts) {
			t.Fatalf("round trip changed the entry: %+v vs %+v", e, e2)
		}
	})
}
