package linkproto

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
)

func msg(u push.UAID, i int, data int) push.Message {
	m := push.Message{
		UAID: u, Channel: chanN(i % 4), Origin: push.ParentOrigin([]byte(fmt.Sprintf("q%08d", i))),
		TTL: time.Duration(i%1000) * time.Second, Urgency: push.Urgency(i % 4), Encoding: "aes128gcm",
	}
	if data > 0 {
		m.Data = bytes.Repeat([]byte{byte(i)}, data)
	}
	return m
}

// build runs the builder and decodes what it emits.
func build(t *testing.T, ub *UpdateBuilder, seq uint64, in []push.Message) (frames []Update, next uint64) {
	t.Helper()
	next, err := ub.Build(seq, in, func(s uint64, frame []byte, ms []push.Message) error {
		f, n, err := Decode(frame)
		if err != nil || n != len(frame) {
			return fmt.Errorf("frame %d: %w", s, err)
		}
		u := *f.(*Update)
		if u.Seq != s || !reflect.DeepEqual(u.Messages, ms) {
			return fmt.Errorf("frame %d decodes to other messages than emitted", s)
		}
		max := ub.MaxPayload
		if max == 0 {
			max = DefaultUpdatePayload
		}
		if raw, _, _ := ParseFrame(frame); len(raw.Payload) > max {
			return fmt.Errorf("frame %d: %d-byte payload", s, len(raw.Payload))
		}
		frames = append(frames, u)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return frames, next
}

// A batch interleaving many UAIDs comes out grouped by UAID, each UAID's
// messages in their order and in one group per frame, split into frames
// that respect the size and count limits, numbered consecutively; every
// message arrives once with its parent origin.
func TestUpdateBuilder(t *testing.T) {
	var in []push.Message
	for i := range 3000 {
		in = append(in, msg(uaidN(i%37), i, i%700))
	}
	ub := UpdateBuilder{}
	frames, next := build(t, &ub, 100, in)
	if next != 100+uint64(len(frames)) || len(frames) < 4 {
		t.Fatalf("%d frames, next %d", len(frames), next)
	}
	perUAID := map[push.UAID][]push.Message{}
	for i, f := range frames {
		if f.Seq != 100+uint64(i) {
			t.Fatalf("frame %d has sequence %d", i, f.Seq)
		}
		if len(f.Messages) > MaxUpdateMessages {
			t.Fatalf("frame %d: %d messages", i, len(f.Messages))
		}
		seen := map[push.UAID]bool{}
		for j, m := range f.Messages {
			if j > 0 && m.UAID != f.Messages[j-1].UAID {
				if seen[m.UAID] {
					t.Fatalf("frame %d: %s in two groups", i, m.UAID)
				}
			}
			seen[m.UAID] = true
			perUAID[m.UAID] = append(perUAID[m.UAID], m)
		}
	}
	for u, got := range perUAID {
		var want []push.Message
		for _, m := range in {
			if m.UAID == u {
				want = append(want, m)
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: %d messages back, %d sent, or out of order", u, len(got), len(want))
		}
	}

	// Many small messages are cut by count.
	in = in[:0]
	for i := range 2500 {
		in = append(in, msg(uaidA, i, 0))
	}
	frames, _ = build(t, &UpdateBuilder{MaxPayload: MaxUpdatePayload}, 1, in)
	if len(frames) != 3 || len(frames[0].Messages) != MaxUpdateMessages {
		t.Fatalf("2500 small messages: %d frames", len(frames))
	}
}

// The largest message the limits allow fits the smallest frame a child
// may announce.
func TestUpdateLargestMessage(t *testing.T) {
	big := func(n int) string { return strings.Repeat("k", n) }
	m := push.Message{
		UAID: uaidA, Channel: chan1, Origin: push.ParentOrigin(bytes.Repeat([]byte{1}, push.MaxOriginID)),
		TTL: MaxTTLSeconds * time.Second, Urgency: push.UrgencyHigh, Version: MaxVarint,
		Topic: big(MaxTopicLen), Encoding: big(MaxContentHeaderLen), Encryption: big(MaxContentHeaderLen),
		CryptoKey: big(MaxContentHeaderLen), Data: make([]byte, MaxData),
	}
	frames, _ := build(t, &UpdateBuilder{MaxPayload: MinUpdatePayload}, 1, []push.Message{m, m})
	if len(frames) != 2 {
		t.Fatalf("%d frames", len(frames))
	}
}

// A message the format cannot carry fails the batch before any frame.
func TestUpdateBuilderRefuses(t *testing.T) {
	ok := msg(uaidA, 1, 10)
	for name, bad := range map[string]func(*push.Message){
		"local origin": func(m *push.Message) { m.Origin = push.LocalOrigin([16]byte{1}) },
		"no origin":    func(m *push.Message) { m.Origin = push.Origin{} },
		"urgency 9":    func(m *push.Message) { m.Urgency = 9 },
		"data 64 KiB+": func(m *push.Message) { m.Data = make([]byte, MaxData+1) },
		"long topic":   func(m *push.Message) { m.Topic = strings.Repeat("t", MaxTopicLen+1) },
		"ttl 2^32 s":   func(m *push.Message) { m.TTL = (MaxTTLSeconds + 1) * time.Second },
	} {
		m := msg(uaidB, 2, 10)
		bad(&m)
		emitted := 0
		_, err := (&UpdateBuilder{}).Build(1, []push.Message{ok, m}, func(uint64, []byte, []push.Message) error { emitted++; return nil })
		if err == nil || emitted != 0 {
			t.Errorf("%s: %v, %d frames out", name, err, emitted)
		}
	}
	if _, err := (&UpdateBuilder{MaxPayload: 1000}).Build(1, []push.Message{ok}, nil); !errors.Is(err, ErrTooLarge) {
		t.Errorf("1000-byte frames: %v", err)
	}
}

// DecodeUpdate reuses the message array and allocates a fixed few times
// per frame, not per message.
func TestDecodeUpdateAllocs(t *testing.T) {
	frame := update64(t)
	raw, _, err := ParseFrame(frame)
	if err != nil {
		t.Fatal(err)
	}
	var u Update
	if err := DecodeUpdate(&u, raw.Payload); err != nil || len(u.Messages) != 64 {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() {
		if err := DecodeUpdate(&u, raw.Payload); err != nil {
			t.Fatal(err)
		}
	}); n > 2 {
		t.Fatalf("%v allocs per 64-message frame", n)
	}
}

// update64 is a 64-message UPDATE for 16 devices with 200-byte bodies,
// a typical batch.
func update64(tb testing.TB) []byte {
	var in []push.Message
	for i := range 64 {
		in = append(in, msg(uaidN(i%16), i, 200))
	}
	var out []byte
	_, err := (&UpdateBuilder{}).Build(1, in, func(_ uint64, f []byte, _ []push.Message) error {
		out = append(out, f...)
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// BenchmarkUpdate64 packs, encodes and decodes a 64-message UPDATE.
func BenchmarkUpdate64(b *testing.B) {
	var in []push.Message
	for i := range 64 {
		in = append(in, msg(uaidN(i%16), i, 200))
	}
	ub := UpdateBuilder{}
	var u Update
	b.ReportAllocs()
	for b.Loop() {
		_, err := ub.Build(1, in, func(_ uint64, f []byte, _ []push.Message) error {
			raw, _, err := ParseFrame(f)
			if err != nil {
				return err
			}
			return DecodeUpdate(&u, raw.Payload)
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/64, "ns/msg")
}

// BenchmarkUpdate64Decode decodes a 64-message UPDATE payload.
func BenchmarkUpdate64Decode(b *testing.B) {
	raw, _, err := ParseFrame(update64(b))
	if err != nil {
		b.Fatal(err)
	}
	var u Update
	b.ReportAllocs()
	for b.Loop() {
		if err := DecodeUpdate(&u, raw.Payload); err != nil {
			b.Fatal(err)
		}
	}
}
