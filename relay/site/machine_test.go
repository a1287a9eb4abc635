package site

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/store"
)

func openStore(t *testing.T, now func() time.Time) *store.Store {
	t.Helper()
	s, err := store.Open(store.Options{Path: filepath.Join(t.TempDir(), "s.db"), Now: now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func encode(t *testing.T, es ...*Entry) [][]byte {
	t.Helper()
	var out [][]byte
	for _, e := range es {
		b, err := AppendEntry(nil, e)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// dump is a store's state as devices would be sent it, read at one time.
func dump(t *testing.T, s *store.Store, us ...push.UAID) string {
	t.Helper()
	var b bytes.Buffer
	for _, u := range us {
		cs, _ := s.Channels(u)
		ms, err := s.Messages(u, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s: %d channels;", u, len(cs))
		for _, m := range ms {
			fmt.Fprintf(&b, " %d:%s", m.Seq, m.Data)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// Two members apply the same committed batches to their own stores and
// reach the same state; each hears only its own proposals' results; a
// batch applied again (a replay after a crash) changes nothing.
func TestMachine(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	read := func() time.Time { return t0.Add(time.Minute) }
	u := push.UAID{0xaa, 1}
	ch := push.ChannelID{0xcc, 1}
	msgs := func(data ...string) []store.Message {
		var ms []store.Message
		for _, d := range data {
			ms = append(ms, store.Message{UAID: u, Channel: ch, Received: t0, TTL: time.Hour, Data: []byte(d)})
		}
		return ms
	}
	batches := [][][]byte{
		encode(t, &Entry{At: t0, Member: 1, Request: 1, Kind: KindRegister, UAID: u, Channel: ch, Created: t0}),
		encode(t,
			&Entry{At: t0, Member: 2, Request: 1, Kind: KindAppend, Messages: msgs("a", "b")},
			&Entry{At: t0, Member: 1, Request: 2, Kind: KindAppend, Messages: msgs("c")},
			&Entry{At: t0, Member: 1, Request: 3, Kind: KindRegister, UAID: u, Channel: ch, Created: t0, Key: []byte("k")},
		),
		encode(t, &Entry{At: t0, Member: 2, Request: 2, Kind: KindAck, UAID: u, Seqs: []uint64{1}}),
	}
	// The garbage entry is in the second batch's bytes.
	batches[1] = append(batches[1][:3], []byte("not an entry"))

	var states []string
	for member := uint64(1); member <= 2; member++ {
		st := openStore(t, read)
		m := NewMachine(st, member, slog.New(slog.NewTextHandler(io.Discard, nil)))
		c2, done2 := m.wait(2)
		c3, done3 := m.wait(3)
		index := uint64(0)
		for _, b := range batches {
			index += uint64(len(b))
			if err := m.Apply(index, b); err != nil {
				t.Fatal(err)
			}
		}
		if err := m.Apply(index, batches[2]); err != nil {
			t.Fatalf("replayed batch: %v", err)
		}
		if got := m.AppliedIndex(); got != index {
			t.Fatalf("applied %d, want %d", got, index)
		}
		if member == 1 {
			r := <-c2
			if len(r.Appends) != 1 || r.Appends[0].Err != nil || r.Appends[0].Message.Seq != 3 {
				t.Fatalf("member 1's append: %+v", r)
			}
			if r := <-c3; !errors.Is(r.Err, store.ErrChannelConflict) {
				t.Fatalf("member 1's conflicting register: %+v", r)
			}
		} else {
			select {
			case r := <-c2:
				// Member 2's request 2 is its ack.
				if r.N != 1 {
					t.Fatalf("member 2's ack: %+v", r)
				}
			default:
				t.Fatal("member 2 got no result for its ack")
			}
			select {
			case r := <-c3:
				t.Fatalf("member 2 got a result for a request it never made: %+v", r)
			default:
			}
		}
		done2()
		done3()
		states = append(states, dump(t, st, u))
	}
	if states[0] != states[1] {
		t.Fatalf("members differ:\n%s\n%s", states[0], states[1])
	}
	if want := fmt.Sprintf("%s: 1 channels; 2:b 3:c\n", u); states[0] != want {
		t.Fatalf("state %q, want %q", states[0], want)
	}
}
