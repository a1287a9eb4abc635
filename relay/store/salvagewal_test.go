package store

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
)

// salvageWALChildEnv, when set to a store path, turns TestSalvageCarriesWAL
// into the child: it opens the store with a checkpoint an hour away, acks
// and appends on every device, reports each answered, says "done" and
// waits to be killed.
const salvageWALChildEnv = "PUSHRELAY_STORE_SALVAGE_WAL_CHILD"

// pageKeys returns the keys of the rows on leaf page id (bbolt's layout:
// a 16-byte page header, then 16-byte elements flags, pos, ksize, vsize,
// pos counted from the element).
func pageKeys(t *testing.T, path string, pageSize, id int) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p := b[id*pageSize : (id+1)*pageSize]
	ne := binary.NativeEndian
	var keys []string
	for i := range int(ne.Uint16(p[10:])) {
		e := 16 + 16*i
		pos, ksize := int(ne.Uint32(p[e+4:])), int(ne.Uint32(p[e+8:]))
		keys = append(keys, string(p[e+pos:e+pos+ksize]))
	}
	return keys
}

// TestSalvageCarriesWAL: a relay killed with acknowledged acks and
// appends only in its write-ahead log (its checkpoint an hour away), its
// file then damaged on one page of messages: salvage carries the log's
// records into the copy, and the copy, moved into place with the old log
// moved aside as docs/operations.md says, holds every acknowledged
// message whose page was not damaged, and none that was acked.
func TestSalvageCarriesWAL(t *testing.T) {
	if path := os.Getenv(salvageWALChildEnv); path != "" {
		salvageWALChild(path)
		return
	}
	path := fillDamageStore(t)

	cmd, stdout, watchdog := startChild(t, "TestSalvageCarriesWAL", salvageWALChildEnv+"="+path)
	appended := map[string]bool{} // "device seq", answered
	acked := map[string]bool{}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		var (
			what   string
			d, seq int
		)
		if sc.Text() == "done" {
			break
		}
		if _, err := fmt.Sscanf(sc.Text(), "%s %d %d", &what, &d, &seq); err != nil {
			t.Fatalf("child printed %q", sc.Text())
		}
		map[string]map[string]bool{"appended": appended, "acked": acked}[what][fmt.Sprint(d, seq)] = true
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	watchdog.Stop()
	if len(appended) != 3*dmgDevices || len(acked) != 2*dmgDevices {
		t.Fatalf("the child answered %d appends and %d acks", len(appended), len(acked))
	}

	// The store as the next start would make it (file and log).
	truth := map[string]string{} // "device seq" → data
	{
		cp := copyStore(t, path, t.TempDir())
		s := openTest(t, Options{Path: cp})
		for d := range dmgDevices {
			for _, m := range mustMessages(t, s, uaid(byte(d))) {
				truth[fmt.Sprint(d, m.Seq)] = string(m.Data)
			}
		}
		s.Close()
	}
	for k := range appended {
		if _, ok := truth[k]; !ok {
			t.Fatalf("appended %s is not in the store the log makes", k)
		}
	}
	if want := dmgDevices*dmgPerDevice + len(appended) - len(acked); len(truth) != want {
		t.Fatalf("the store the log makes holds %d messages, want %d", len(truth), want)
	}

	// One page of messages damaged.
	pageSize, ids, _ := leafPages(t, path, 24)
	id := ids[len(ids)/2]
	lost := map[string]bool{}
	for _, k := range pageKeys(t, path, pageSize, id) {
		u, seq, ok := splitMessageKey([]byte(k))
		if !ok {
			t.Fatalf("page %d holds key %x", id, k)
		}
		lost[fmt.Sprint(int(u[1]), seq)] = true
	}
	damagePage(t, path, pageSize, id, 5)

	out := path + ".salvaged"
	rep, err := Salvage(path, out, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("salvage: %+v", rep)
	if rep.WAL.Pending != 3*dmgDevices+dmgDevices || len(rep.WAL.Problems) != 0 || rep.WAL.Other != 0 {
		t.Fatalf("salvage carried %d records (%v), want %d", rep.WAL.Pending, rep.WAL.Problems, 4*dmgDevices)
	}
	if _, err := os.Stat(out + walSuffix); !os.IsNotExist(err) {
		t.Fatalf("salvage made a log beside its copy: %v", err)
	}

	// docs/operations.md, "Damaged store".
	for _, mv := range [][2]string{{path, path + ".damaged"}, {path + walSuffix, path + ".damaged" + walSuffix}, {out, path}} {
		if err := os.Rename(mv[0], mv[1]); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 2 { // the second open replays nothing twice
		s := openTest(t, Options{Path: path})
		got := map[string]string{}
		for d := range dmgDevices {
			for _, m := range mustMessages(t, s, uaid(byte(d))) {
				got[fmt.Sprint(d, m.Seq)] = string(m.Data)
			}
		}
		want := 0
		for k, data := range truth {
			if lost[k] {
				continue
			}
			want++
			if got[k] != data {
				t.Fatalf("round %d: message %s: %.12q, want %.12q", round, k, got[k], data)
			}
		}
		for k := range acked {
			if _, ok := got[k]; ok {
				t.Fatalf("round %d: acked message %s is back", round, k)
			}
		}
		if len(got) != want {
			t.Fatalf("round %d: %d messages, want %d", round, len(got), want)
		}
		checkStats(t, s, Stats{Devices: dmgDevices, Channels: dmgDevices, Waiting: int64(want)})
		checkScanCounts(t, s)
		if round == 0 {
			m := mustAppend(t, s, msg(uaid(1), chid(1), "after"))
			for k := range truth {
				var d, seq int
				fmt.Sscan(k, &d, &seq)
				if uint64(seq) >= m.Seq {
					t.Fatalf("append after salvage: seq %d, the log reached %d", m.Seq, seq)
				}
			}
			truth[fmt.Sprint(1, m.Seq)] = "after"
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func salvageWALChild(path string) {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(2)
	}
	s, err := Open(Options{Path: path, Logger: slog.New(slog.DiscardHandler), CheckpointInterval: time.Hour, CheckpointBytes: 1 << 30})
	if err != nil {
		fail(err)
	}
	ctx := context.Background()
	for d := range dmgDevices {
		u := uaid(byte(d))
		ms, err := s.Messages(u, 0, 2)
		if err != nil {
			fail(err)
		}
		if _, err := s.Ack(ctx, u, ms[0].Seq, ms[1].Seq); err != nil {
			fail(err)
		}
		fmt.Println("acked", d, ms[0].Seq)
		fmt.Println("acked", d, ms[1].Seq)
		for i := range 3 {
			m, err := s.Append(ctx, msg(u, chid(1), fmt.Sprintf("%03d-log-%d", d, i)))
			if err != nil {
				fail(err)
			}
			fmt.Println("appended", d, m.Seq)
		}
	}
	fmt.Println("done")
	time.Sleep(time.Minute) // killed before
	os.Exit(3)
}

// TestSalvageWALWorkload: salvage of a sound file whose log holds writes
// of every kind (walWorkload after a checkpoint) makes the store the next
// start would have made from the file and the log: the same rows, the
// rebuilt ones included, but for the new file's epoch.
func TestSalvageWALWorkload(t *testing.T) {
	clock := newClock()
	path := filepath.Join(t.TempDir(), "store.db")
	s := openTest(t, Options{Path: path, Now: clock.Now, CheckpointInterval: time.Hour, CheckpointBytes: 1 << 30})
	walWorkload(t, s, clock, 0)
	if err := s.EachWake(func(push.UAID, []byte) {}); err != nil { // a checkpoint
		t.Fatal(err)
	}
	walWorkload(t, s, clock, 1)
	want := dump(t, s)
	cp := copyStore(t, path, t.TempDir())
	s.Close()

	out := cp + ".salvaged"
	rep, err := Salvage(cp, out, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("salvage: %+v", rep)
	if rep.WAL.Pending == 0 || len(rep.WAL.Problems) != 0 || rep.DamagedRegions+rep.BadRows+rep.Orphans != 0 {
		t.Fatalf("salvage: %+v", rep)
	}
	got := dumpFile(t, out)
	epoch := "meta " + string(metaEpoch)
	if got[epoch] == want[epoch] || len(got[epoch]) != EpochLen {
		t.Fatalf("the copy's epoch %x, the file's %x", got[epoch], want[epoch])
	}
	delete(got, epoch)
	delete(want, epoch)
	diffDumps(t, got, want)
}

// TestSalvageWALNotCarried: the records of a damaged log before the
// damage are carried, the rest reported; another file's are not carried.
func TestSalvageWALNotCarried(t *testing.T) {
	cp, _ := crashedWithLog(t, 12)
	seg := lastSegment(t, cp)
	writeAt(t, seg, []byte("junk"), recordsEnd(t, seg)/2)
	rep, err := Salvage(cp, cp+".salvaged", 0)
	t.Logf("salvage: %+v, %v", rep.WAL, err)
	if err != nil || rep.WAL.Pending == 0 || rep.WAL.Pending >= 12 || len(rep.WAL.Problems) != 1 {
		t.Fatalf("salvage of a damaged log: %+v, %v", rep.WAL, err)
	}
	s := openTest(t, Options{Path: cp + ".salvaged"})
	checkStats(t, s, Stats{Devices: 2, Channels: 2, Waiting: int64(rep.WAL.Pending)})
	s.Close()

	cp, _ = crashedWithLog(t, 5)
	other := filepath.Join(t.TempDir(), "other.db")
	o := openTest(t, Options{Path: other})
	o.Close()
	copyFile(t, other, cp)
	rep, err = Salvage(cp, cp+".salvaged", 0)
	if err != nil || rep.WAL.Pending != 0 || rep.WAL.Other != 7 {
		t.Fatalf("salvage beside another file's log: %+v, %v", rep.WAL, err)
	}
}
