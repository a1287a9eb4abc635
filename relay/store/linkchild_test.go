package store

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
	bolt "go.etcd.io/bbolt"
)

// A parent's record of which child serves a UAID survives a restart,
// Verify and Salvage, and goes with DeleteDevice; AckMany deletes
// several devices' messages in one commit.
func TestLinkChildren(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.db")
	s, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a, b := push.UAID{1}, push.UAID{2}
	for _, u := range []push.UAID{a, b} {
		if err := s.SetLinkChild(ctx, u, "edge-1"); err != nil {
			t.Fatal(err)
		}
		if err := s.Register(ctx, Channel{UAID: u, ID: push.ChannelID{9}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetLinkChild(ctx, b, "edge-2"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetLinkChild(ctx, b, ""); err == nil {
		t.Fatal("empty child name accepted")
	}
	var seqs []uint64
	for _, u := range []push.UAID{a, b} {
		m, err := s.Append(ctx, Message{UAID: u, Channel: push.ChannelID{9}, TTL: time.Hour, Received: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, m.Seq)
	}
	n, err := s.AckMany(ctx, map[push.UAID][]uint64{a: {seqs[0]}, b: {seqs[1], seqs[1] + 100}})
	if err != nil || n != 2 {
		t.Fatalf("AckMany = %d, %v; want 2", n, err)
	}
	if ms, _ := s.Messages(a, 0, 10); len(ms) != 0 {
		t.Fatalf("%d messages left after AckMany", len(ms))
	}
	var chans int
	if err := s.EachChannel(func(push.UAID, push.ChannelID) { chans++ }); err != nil || chans != 2 {
		t.Fatalf("EachChannel saw %d, %v", chans, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(path, time.Second); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	dst := filepath.Join(dir, "salvaged.db")
	if _, err := Salvage(path, dst, time.Second); err != nil {
		t.Fatalf("Salvage: %v", err)
	}
	for _, p := range []string{path, dst} {
		s, err := Open(Options{Path: p})
		if err != nil {
			t.Fatal(err)
		}
		got := map[push.UAID]string{}
		if err := s.LinkChildren(func(u push.UAID, c []byte) { got[u] = string(c) }); err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[a] != "edge-1" || got[b] != "edge-2" {
			t.Errorf("%s: children %v", filepath.Base(p), got)
		}
		if err := s.DeleteDevice(ctx, a); err != nil {
			t.Fatal(err)
		}
		clear(got)
		s.LinkChildren(func(u push.UAID, c []byte) { got[u] = string(c) })
		if _, ok := got[a]; ok || len(got) != 1 {
			t.Errorf("%s: after DeleteDevice, children %v", filepath.Base(p), got)
		}
		s.Close()
	}
}

// A device forgotten here (DeleteDevice: its upstream reset it) that a
// child serves is kept in link_forgets for that child until it answered;
// the record survives a restart, Verify and Salvage.
func TestLinkForgets(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.db")
	s, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a, b, c := push.UAID{1}, push.UAID{2}, push.UAID{3}
	for u, child := range map[push.UAID]string{a: "edge-1", b: "edge-2", c: "edge-1"} {
		if err := s.SetLinkChild(ctx, u, child); err != nil {
			t.Fatal(err)
		}
		if err := s.Register(ctx, Channel{UAID: u, ID: push.ChannelID{9}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range []push.UAID{c, a, b} {
		if err := s.DeleteDevice(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	// A device no child serves leaves no row.
	if err := s.Register(ctx, Channel{UAID: push.UAID{4}, ID: push.ChannelID{9}}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteDevice(ctx, push.UAID{4}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(path, time.Second); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	dst := filepath.Join(dir, "salvaged.db")
	if _, err := Salvage(path, dst, time.Second); err != nil {
		t.Fatalf("Salvage: %v", err)
	}
	for _, p := range []string{path, dst} {
		s, err := Open(Options{Path: p})
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.LinkForgets("edge-1", 10)
		if err != nil || len(got) != 2 || got[0].UAID != a || got[1].UAID != c || len(got[0].Channels) != 1 || got[0].Channels[0] != (push.ChannelID{9}) {
			t.Errorf("%s: edge-1 forgets %v, %v", filepath.Base(p), got, err)
		}
		if got, _ := s.LinkForgets("edge-1", 1); len(got) != 1 {
			t.Errorf("%s: max 1 gave %v", filepath.Base(p), got)
		}
		if got, _ := s.LinkForgets("edge-2", 10); len(got) != 1 || got[0].UAID != b {
			t.Errorf("%s: edge-2 forgets %v", filepath.Base(p), got)
		}
		n := 0
		s.LinkChildren(func(push.UAID, []byte) { n++ })
		if n != 0 {
			t.Errorf("%s: %d link_children rows left", filepath.Base(p), n)
		}
		// Another child's answer removes nothing; the child's own does.
		if err := s.LinkForgotten(ctx, a, "edge-2"); err != nil {
			t.Fatal(err)
		}
		if err := s.LinkForgotten(ctx, b, "edge-2"); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.LinkForgets("edge-1", 10); len(got) != 2 {
			t.Errorf("%s: after another child's answer, edge-1 forgets %v", filepath.Base(p), got)
		}
		if got, _ := s.LinkForgets("edge-2", 10); len(got) != 0 {
			t.Errorf("%s: after the answer, edge-2 forgets %v", filepath.Base(p), got)
		}
		s.Close()
	}
}

// Migration 8 adds link_forgets to a version 7 file.
func TestMigrationFromV7(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	writeRaw(t, path, func(tx *bolt.Tx) error {
		if _, _, err := migrate(tx, migrations[:7]); err != nil {
			return err
		}
		if tx.Bucket(bucketLinkForgets) != nil {
			t.Error("schema 7 already has link_forgets")
		}
		return tx.Bucket(bucketLinkChildren).Put(deviceKey(push.UAID{1}), []byte("edge-1"))
	})
	s := openTest(t, Options{Path: path})
	if v := fileSchema(t, s); v != schemaVersion() {
		t.Fatalf("schema %d after migration", v)
	}
	if err := s.DeleteDevice(context.Background(), push.UAID{1}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.LinkForgets("edge-1", 10); err != nil || len(got) != 1 {
		t.Fatalf("after migration: forgets %v, %v", got, err)
	}
}

// WaitingUAIDs walks the UAIDs that have messages, in UAID order, in
// pieces of limit, skipping those with none (registered or not), and says
// when it reached the end; NextUAID carries across bytes.
func TestWaitingUAIDs(t *testing.T) {
	s, err := Open(Options{Path: filepath.Join(t.TempDir(), "s.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	var want []push.UAID
	for i := range 40 {
		u := push.UAID{0: byte(i), 15: 0xff}
		if err := s.Register(ctx, Channel{UAID: u, ID: push.ChannelID{9}}); err != nil {
			t.Fatal(err)
		}
		if i%3 != 0 {
			continue // registered, nothing waiting
		}
		for range 1 + i%4 {
			if _, err := s.Append(ctx, Message{UAID: u, Channel: push.ChannelID{9}, TTL: time.Hour, Received: time.Now()}); err != nil {
				t.Fatal(err)
			}
		}
		want = append(want, u)
	}
	var got []push.UAID
	var from push.UAID
	for calls := 0; ; calls++ {
		if calls > len(want) {
			t.Fatal("the walk does not end")
		}
		us, end, err := s.WaitingUAIDs(from, 4)
		if err != nil {
			t.Fatal(err)
		}
		if len(us) > 4 {
			t.Fatalf("%d UAIDs for a limit of 4", len(us))
		}
		got = append(got, us...)
		if end {
			break
		}
		from, _ = NextUAID(us[len(us)-1])
	}
	if !slices.Equal(got, want) {
		t.Fatalf("walk found %x\nwant %x", got, want)
	}
	// From the middle, inclusive.
	if us, _, _ := s.WaitingUAIDs(want[3], 1); len(us) != 1 || us[0] != want[3] {
		t.Fatalf("from %x: %x", want[3], us)
	}
	if n, ok := NextUAID(push.UAID{3: 1, 15: 0xff}); !ok || n != (push.UAID{3: 1, 14: 1}) {
		t.Fatalf("NextUAID carried to %x", n)
	}
	var last push.UAID
	for i := range last {
		last[i] = 0xff
	}
	if _, ok := NextUAID(last); ok {
		t.Fatal("a UAID after the last")
	}
}
