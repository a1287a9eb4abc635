package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
)

// entry is a test log entry: its time and what it writes.
type entry struct {
	at    time.Time
	apply func(tx *Tx) error
}

// testLog is a replicated log's entries as a site would make them: each
// write's times set by the proposer, some rejected, expiry by the entry's
// time.
func testLog(t0 time.Time) []entry {
	a, b := uaid(1), uaid(2)
	reg := func(u push.UAID, ch push.ChannelID) func(*Tx) error {
		return func(tx *Tx) error { return tx.Register(Channel{UAID: u, ID: ch}) }
	}
	post := func(u push.UAID, ch push.ChannelID, data string, ttl time.Duration) func(*Tx) error {
		return func(tx *Tx) error {
			m := msg(u, ch, data)
			m.TTL = ttl
			_, err := tx.Append(m)
			return err
		}
	}
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	return []entry{
		{at(0), reg(a, chid(1))},
		{at(1 * time.Second), reg(b, chid(1))},
		{at(2 * time.Second), post(a, chid(1), "a1", time.Hour)},
		{at(2 * time.Second), post(a, chid(1), "a2", time.Minute)},
		{at(3 * time.Second), post(b, chid(1), "b1", time.Hour)},
		// Unknown channel: a rejection, the entry still applied.
		{at(3 * time.Second), post(b, chid(9), "nowhere", time.Hour)},
		{at(4 * time.Second), func(tx *Tx) error {
			if err := tx.Register(Channel{UAID: a, ID: chid(1), Key: []byte("other")}); !errors.Is(err, ErrChannelConflict) {
				return fmt.Errorf("conflicting register: %v", err)
			}
			return nil
		}},
		{at(5 * time.Second), func(tx *Tx) error { _, err := tx.Ack(a, 1); return err }},
		// a2's minute is over by this entry's time, whatever the clocks.
		{at(2 * time.Minute), func(tx *Tx) error { _, _, err := tx.Sweep(100); return err }},
		{at(3 * time.Minute), func(tx *Tx) error { return tx.PutBroadcasts(map[string]string{"bc": "v1"}) }},
		{at(4 * time.Minute), func(tx *Tx) error { return tx.DeleteDevice(b) }},
		{at(5 * time.Minute), post(a, chid(1), "a3", time.Hour)},
	}
}

// applyAll applies entries from index first on, each in an Apply of its
// own (concurrent Applies share commits in order).
func applyAll(t *testing.T, s *Store, es []entry, first uint64) {
	t.Helper()
	for i, e := range es {
		err := s.Apply(context.Background(), first+uint64(i), func(tx *Tx) error {
			tx.SetTime(e.at)
			return e.apply(tx)
		})
		if err != nil {
			t.Fatalf("entry %d: %v", first+uint64(i), err)
		}
	}
}

// state is what devices would be sent: every device's channels and
// messages, and the broadcasts.
func state(t *testing.T, s *Store) string {
	t.Helper()
	var b bytes.Buffer
	for _, u := range []push.UAID{uaid(1), uaid(2)} {
		cs, err := s.Channels(u)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			fmt.Fprintf(&b, "chan %x %x %s\n", u, c.ID, c.Created.UTC())
		}
		for _, m := range mustMessages(t, s, u) {
			fmt.Fprintf(&b, "msg %x %d %s %s %s\n", u, m.Seq, m.Data, m.Received.UTC(), m.Expiry.UTC())
		}
	}
	bc, err := s.Broadcasts()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "broadcasts %v\n", bc)
	return b.String()
}

// Two members apply the same entries with their clocks far apart and
// reach the same state; the applied index is recorded; an entry at or
// below it is refused without running.
func TestApplyDeterministic(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	log := testLog(t0)
	var states []string
	for _, skew := range []time.Duration{0, 90 * 24 * time.Hour} {
		clk := &fakeClock{t: time.Now().Add(skew)}
		s := openTest(t, Options{Now: clk.Now})
		applyAll(t, s, log, 1)
		if n, err := s.Applied(); err != nil || n != uint64(len(log)) {
			t.Fatalf("Applied = %d, %v", n, err)
		}
		ran := false
		err := s.Apply(context.Background(), uint64(len(log)), func(*Tx) error { ran = true; return nil })
		if !errors.Is(err, ErrApplied) || ran {
			t.Fatalf("re-applying the last entry: %v (ran %v)", err, ran)
		}
		// Reads hide what expired by the reader's clock: read both at
		// one time.
		clk.mu.Lock()
		clk.t = t0.Add(6 * time.Minute)
		clk.mu.Unlock()
		states = append(states, state(t, s))
	}
	if states[0] != states[1] {
		t.Fatalf("members differ:\n%s\nvs\n%s", states[0], states[1])
	}
	want := fmt.Sprintf("chan %x %x %s\nmsg %x 4 a3 %s %s\nbroadcasts map[bc:v1]\n",
		uaid(1), chid(1), t0.UTC(), uaid(1), t0.Add(5*time.Minute).UTC(), t0.Add(5*time.Minute+time.Hour).UTC())
	if states[0] != want {
		t.Fatalf("state:\n%s\nwant:\n%s", states[0], want)
	}
}

// An fn that fails writes nothing, not even the index; the entry can be
// applied again.
func TestApplyFailureWritesNothing(t *testing.T) {
	s := openTest(t, Options{})
	boom := errors.New("boom")
	err := s.Apply(context.Background(), 1, func(tx *Tx) error {
		if err := tx.Register(Channel{UAID: uaid(1), ID: chid(1)}); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Apply = %v", err)
	}
	if n, _ := s.Applied(); n != 0 {
		t.Fatalf("Applied = %d after a failed Apply", n)
	}
	if cs, _ := s.Channels(uaid(1)); len(cs) != 0 {
		t.Fatalf("a failed Apply wrote %v", cs)
	}
	applyAll(t, s, testLog(time.Unix(1_800_000_000, 0))[:1], 1)
	if cs, _ := s.Channels(uaid(1)); len(cs) != 1 {
		t.Fatalf("channels %v", cs)
	}
}

// A snapshot opened as a store has the same state and applied index, and
// the log continues on it as on the original.
func TestSnapshot(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	log := testLog(t0)
	clk := &fakeClock{t: t0.Add(10 * time.Minute)}
	s := openTest(t, Options{Now: clk.Now})
	applyAll(t, s, log[:8], 1)
	var buf bytes.Buffer
	index, err := s.Snapshot(&buf)
	if err != nil || index != 8 {
		t.Fatalf("Snapshot = %d, %v", index, err)
	}
	path := filepath.Join(t.TempDir(), "snap.db")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	r := openTest(t, Options{Path: path, Now: clk.Now})
	if n, _ := r.Applied(); n != 8 {
		t.Fatalf("restored Applied = %d", n)
	}
	if !reflect.DeepEqual(state(t, r), state(t, s)) {
		t.Fatalf("restored state differs")
	}
	applyAll(t, s, log[8:], 9)
	applyAll(t, r, log[8:], 9)
	if a, b := state(t, s), state(t, r); a != b {
		t.Fatalf("after the rest of the log:\n%s\nvs\n%s", a, b)
	}
}

// A member behind (or with an empty disk) restores another's snapshot
// while it runs: its state and applied index become the snapshot's, and
// the log continues on it; a damaged snapshot is refused and changes
// nothing.
func TestRestore(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	log := testLog(t0)
	clk := &fakeClock{t: t0.Add(10 * time.Minute)}
	a := openTest(t, Options{Now: clk.Now})
	applyAll(t, a, log[:8], 1)
	var snap bytes.Buffer
	if _, err := a.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	b := openTest(t, Options{Now: clk.Now})
	applyAll(t, b, log[:3], 1)
	before := state(t, b)

	bad := bytes.Clone(snap.Bytes())
	for i := 4096; i < len(bad); i += 512 {
		bad[i] ^= 0xff
	}
	if _, err := b.Restore(context.Background(), bytes.NewReader(bad)); err == nil {
		t.Fatal("a damaged snapshot was restored")
	}
	if _, err := b.Restore(context.Background(), bytes.NewReader(snap.Bytes()[:len(snap.Bytes())/2])); err == nil {
		t.Fatal("half a snapshot was restored")
	}
	if got := state(t, b); got != before {
		t.Fatalf("a refused restore changed the store:\n%s", got)
	}
	if n, _ := b.Applied(); n != 3 {
		t.Fatalf("Applied %d after refused restores", n)
	}

	// Writes queued around the restore: those before go to the old file,
	// those after to the new.
	index, err := b.Restore(context.Background(), bytes.NewReader(snap.Bytes()))
	if err != nil || index != 8 {
		t.Fatalf("Restore = %d, %v", index, err)
	}
	if got, want := state(t, b), state(t, a); got != want {
		t.Fatalf("restored:\n%s\nwant:\n%s", got, want)
	}
	st, _ := b.Stats()
	sa, _ := a.Stats()
	if st != sa {
		t.Fatalf("restored totals %+v, want %+v", st, sa)
	}
	if !bytes.Equal(a.Epoch(), b.Epoch()) {
		t.Fatal("the restored store kept its own epoch")
	}
	applyAll(t, a, log[8:], 9)
	applyAll(t, b, log[8:], 9)
	if x, y := state(t, a), state(t, b); x != y {
		t.Fatalf("after the rest of the log:\n%s\nvs\n%s", x, y)
	}
	// The file is whole at the next open.
	path := b.opts.Path
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(path, time.Second); err != nil {
		t.Fatalf("Verify after restore: %v", err)
	}
}
