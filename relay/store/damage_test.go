package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Damage tests: a store file is damaged the way disks and power cuts do
// it (random bytes over one page, flipped bytes, truncation) and every
// outcome is an error, never a panic that ends the process.

const (
	dmgDevices   = 40
	dmgPerDevice = 30
)

// fillDamageStore writes dmgDevices devices with one channel and
// dmgPerDevice 300-byte messages each (about a hundred pages), closes it
// cleanly and returns its path.
func fillDamageStore(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pushrelay.db")
	// One checkpoint, at Close: the tests pick pages by their header,
	// and the copies earlier checkpoints left in free pages would be
	// found too.
	s, err := Open(Options{Path: path, Logger: testLogger(t), CheckpointInterval: time.Hour, CheckpointBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for d := range dmgDevices {
		u := uaid(byte(d))
		if err := s.Register(ctx, Channel{UAID: u, ID: chid(1)}); err != nil {
			t.Fatal(err)
		}
		for i := range dmgPerDevice {
			if _, err := s.Append(ctx, msg(u, chid(1), fmt.Sprintf("%03d-%03d-%s", d, i, strings.Repeat("x", 292)))); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.PutBroadcasts(ctx, map[string]string{"remote-settings/monitor_changes": `"1700000000"`}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// leafPages returns the ids and row counts of the leaf pages whose first
// key is keyLen bytes long (24: messages, 16: devices), read from the
// page headers (bbolt's page layout: id 8, flags 2, count 2, overflow 4,
// then 16-byte leaf elements: flags, pos, ksize, vsize).
func leafPages(t *testing.T, path string, keyLen int) (pageSize int, ids []int, counts []int) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	pageSize = db.Info().PageSize
	db.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const leafFlag = 0x02
	for id := 2; (id+1)*pageSize <= len(b); id++ {
		p := b[id*pageSize:]
		if binary.NativeEndian.Uint64(p) != uint64(id) || binary.NativeEndian.Uint16(p[8:]) != leafFlag {
			continue
		}
		count := int(binary.NativeEndian.Uint16(p[10:]))
		if count == 0 || int(binary.NativeEndian.Uint32(p[16+8:])) != keyLen {
			continue
		}
		ids = append(ids, id)
		counts = append(counts, count)
	}
	if len(ids) == 0 {
		t.Fatalf("only %d leaf pages with %d-byte keys", len(ids), keyLen)
	}
	return pageSize, ids, counts
}

// damagePage writes random bytes over page id.
func damagePage(t *testing.T, path string, pageSize, id int, seed uint64) {
	t.Helper()
	junk := make([]byte, pageSize)
	r := rand.New(rand.NewPCG(seed, 1))
	for i := range junk {
		junk[i] = byte(r.Uint32())
	}
	writeAt(t, path, junk, int64(id*pageSize))
}

func writeAt(t *testing.T, path string, b []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// unmark removes the clean-close mark, as a crash would have left it.
func unmark(t *testing.T, path string) {
	t.Helper()
	writeRaw(t, path, func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Delete(metaClean) })
}

// readAll reads every device's messages and returns the first error.
func readAll(s *Store) (n int, err error) {
	for d := range dmgDevices {
		ms, err := s.Messages(uaid(byte(d)), 0, 0)
		if err != nil {
			return n, err
		}
		n += len(ms)
	}
	return n, nil
}

func TestVerifySoundStore(t *testing.T) {
	path := fillDamageStore(t)
	r, err := Verify(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	if r.Devices != dmgDevices || r.Channels != dmgDevices || r.Messages != dmgDevices*dmgPerDevice || len(r.Problems) != 0 {
		t.Fatalf("report %+v", r)
	}
	// Verify wrote nothing: the clean mark is still there.
	s, err := Open(Options{Path: path, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// An unclean stop leaves no mark; the next Open verifies and refuses a
// page of random bytes, and Verify says the same. (The check must catch
// the page: without it Open succeeds and the first read panics, which
// TestDamagedReadsDoNotPanic shows is contained.)
func TestOpenAfterUncleanStopRefusesDamagedPage(t *testing.T) {
	for _, keyLen := range []int{24, 16} { // a messages page, a devices page
		t.Run(fmt.Sprintf("key%d", keyLen), func(t *testing.T) {
			path := fillDamageStore(t)
			unmark(t, path)
			pageSize, ids, _ := leafPages(t, path, keyLen)
			damagePage(t, path, pageSize, ids[len(ids)/2], uint64(keyLen))

			_, err := Open(Options{Path: path, Logger: testLogger(t)})
			if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), path) {
				t.Fatalf("Open of a damaged file after an unclean stop: %v", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			r, err := Verify(path, 0)
			if !errors.Is(err, ErrDamaged) || len(r.Problems) == 0 {
				t.Fatalf("Verify: %v %+v", err, r)
			}
			// Refused again, not served: the failed Open left no mark.
			if _, err := Open(Options{Path: path, Logger: testLogger(t)}); !errors.Is(err, ErrDamaged) {
				t.Fatalf("second Open: %v", err)
			}
		})
	}
}

// A page damaged while the relay was stopped cleanly is not checked at
// Open (that is the fast path); the read that meets it gets an error, the
// store answers errors from then on, Close leaves no clean mark, and the
// next Open verifies and refuses the file.
func TestDamagedReadsDoNotPanic(t *testing.T) {
	path := fillDamageStore(t)
	pageSize, ids, _ := leafPages(t, path, 24)
	damagePage(t, path, pageSize, ids[len(ids)/2], 7)

	s, err := Open(Options{Path: path, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Open after a clean stop should not verify: %v", err)
	}
	_, err = readAll(s)
	if !errors.Is(err, ErrDamaged) {
		t.Fatalf("reading every message: %v, want ErrDamaged", err)
	}
	if _, err := s.Stats(); !errors.Is(err, ErrDamaged) {
		t.Errorf("Stats after damage: %v", err)
	}
	if err := s.Register(context.Background(), Channel{UAID: uaid(200), ID: chid(1)}); !errors.Is(err, ErrDamaged) {
		t.Errorf("Register after damage: %v", err)
	}
	if _, err := s.Messages(uaid(0), 0, 0); !errors.Is(err, ErrDamaged) {
		t.Errorf("a read of a sound page after damage: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Options{Path: path, Logger: testLogger(t)}); !errors.Is(err, ErrDamaged) {
		t.Fatalf("Open after the damage was seen: %v, want ErrDamaged", err)
	}
}

// A panic in the committer's transaction is contained the same way.
func TestDamagedWriteDoesNotPanic(t *testing.T) {
	path := fillDamageStore(t)
	pageSize, ids, _ := leafPages(t, path, 24)
	for _, id := range ids {
		damagePage(t, path, pageSize, id, uint64(id))
	}
	s, err := Open(Options{Path: path, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	var werr error
	for d := range dmgDevices {
		if _, werr = s.Append(ctx, msg(uaid(byte(d)), chid(1), "more")); werr != nil {
			break
		}
	}
	if !errors.Is(werr, ErrDamaged) {
		t.Fatalf("Append into damaged pages: %v", werr)
	}
	if _, err := s.Append(ctx, msg(uaid(0), chid(1), "again")); !errors.Is(err, ErrDamaged) {
		t.Fatalf("Append after damage: %v", err)
	}
}

// Flipped bytes anywhere, truncation and junk files: Open, Verify, reads
// and Salvage return errors or work, and never panic. The flipped files
// carry the clean-stop mark (they were damaged at rest), so they are
// opened with VerifyAlways: without it bbolt trusts the file, and a
// commit over a page whose offsets were flipped can, rarely, crash the
// runtime ("found bad pointer in Go heap", CI, once) rather than panic;
// docs/operations.md says so and names store_verify_always.
func TestDamageNeverPanics(t *testing.T) {
	base := fillDamageStore(t)
	orig, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	try := func(t *testing.T, path string, verifyAlways bool) {
		t.Helper()
		Verify(path, 0)
		os.Remove(path + ".salvaged")
		Salvage(path, path+".salvaged", 0)
		s, err := Open(Options{Path: path, VerifyAlways: verifyAlways, Logger: testLogger(t)})
		if err != nil {
			return
		}
		readAll(s)
		s.Append(context.Background(), msg(uaid(1), chid(1), "x"))
		s.Close()
	}
	dir := t.TempDir()
	for seed := range uint64(12) {
		t.Run(fmt.Sprintf("flip64-%d", seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 2))
			b := append([]byte(nil), orig...)
			for range 64 {
				b[r.IntN(len(b))] ^= byte(1 + r.IntN(255))
			}
			path := filepath.Join(dir, fmt.Sprintf("flip%d.db", seed))
			os.WriteFile(path, b, 0o600)
			try(t, path, true)
		})
	}
	for _, frac := range []int{2, 3, 10} {
		t.Run(fmt.Sprintf("truncate-1/%d", frac), func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("trunc%d.db", frac))
			os.WriteFile(path, orig[:len(orig)/frac], 0o600)
			try(t, path, false)
			if _, err := Verify(path, 0); err == nil {
				t.Errorf("Verify accepted a file cut to 1/%d", frac)
			}
		})
	}
	t.Run("junk", func(t *testing.T) {
		path := filepath.Join(dir, "junk.db")
		junk := make([]byte, 64<<10)
		for i := range junk {
			junk[i] = byte(i * 7)
		}
		os.WriteFile(path, junk, 0o600)
		try(t, path, false)
		if _, err := Open(Options{Path: path}); !errors.Is(err, ErrDamaged) {
			t.Errorf("Open of junk: %v", err)
		}
	})
}

// Salvage steps over a damaged page and copies every other row: exactly
// the damaged page's messages are lost, the copy verifies, and a store
// opened on it serves the rest and takes new messages after the old seqs.
func TestSalvage(t *testing.T) {
	path := fillDamageStore(t)
	pageSize, ids, counts := leafPages(t, path, 24)
	bad := len(ids) / 2
	damagePage(t, path, pageSize, ids[bad], 3)
	// A device page too: the channels still bring their devices back.
	dps, dids, _ := leafPages(t, path, 16)
	_ = dps
	damagePage(t, path, pageSize, dids[0], 4)

	out := path + ".salvaged"
	rep, err := Salvage(path, out, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("salvage: %+v", rep)
	want := dmgDevices*dmgPerDevice - counts[bad]
	if rep.Messages != int64(want) || rep.Channels != dmgDevices || rep.Devices != dmgDevices || rep.DamagedRegions != 2 {
		t.Fatalf("salvaged %+v, want %d messages, %d channels and devices, 2 damaged regions", rep, want, dmgDevices)
	}
	if _, err := Salvage(path, out, 0); !errors.Is(err, os.ErrExist) {
		t.Fatalf("salvage over an existing file: %v", err)
	}
	r, err := Verify(out, 0)
	if err != nil || r.Messages != int64(want) {
		t.Fatalf("verify the salvaged file: %v %+v", err, r)
	}
	s := openTest(t, Options{Path: out})
	n, err := readAll(s)
	if err != nil || n != want {
		t.Fatalf("read %d messages (%v), want %d", n, err, want)
	}
	checkStats(t, s, Stats{Devices: dmgDevices, Channels: dmgDevices, Waiting: int64(want)})
	// Every salvaged message is intact.
	for d := range dmgDevices {
		for _, m := range mustMessages(t, s, uaid(byte(d))) {
			if !strings.HasPrefix(string(m.Data), fmt.Sprintf("%03d-", d)) || len(m.Data) != 300 {
				t.Fatalf("device %d holds %q", d, m.Data[:12])
			}
		}
	}
	if b, err := s.Broadcasts(); err != nil || b["remote-settings/monitor_changes"] != `"1700000000"` {
		t.Fatalf("broadcasts after salvage: %v %v", b, err)
	}
	m, err := s.Append(context.Background(), msg(uaid(1), chid(1), "new"))
	if err != nil || m.Seq <= dmgDevices*dmgPerDevice {
		t.Fatalf("append after salvage: seq %d, %v", m.Seq, err)
	}
}

func TestVerifyLocked(t *testing.T) {
	s := openTest(t, Options{})
	start := time.Now()
	if _, err := Verify(s.opts.Path, 50*time.Millisecond); !errors.Is(err, ErrLocked) {
		t.Fatalf("Verify of a store in use: %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatal("Verify did not give up")
	}
}

// A file the system refuses to open is not called damaged.
func TestOpenErrorNotDamage(t *testing.T) {
	dir := t.TempDir() // a directory where the file should be
	_, err := Open(Options{Path: dir})
	if err == nil || errors.Is(err, ErrDamaged) {
		t.Fatalf("Open of a directory: %v", err)
	}
	if _, err := Verify(filepath.Join(dir, "missing.db"), 0); err == nil || errors.Is(err, ErrDamaged) {
		t.Fatalf("Verify of a missing file: %v", err)
	}
}

// A file cut short is refused at every Open, clean mark or not (bbolt
// faults reading its freelist past the end, or its length falls short of
// the pages its meta page counts), unless only the room bbolt had grown
// it by went.
func TestOpenRefusesTruncatedAfterCleanStop(t *testing.T) {
	for _, frac := range []int64{2, 3, 10} {
		path := fillDamageStore(t)
		fi, _ := os.Stat(path)
		if err := os.Truncate(path, fi.Size()*(frac-1)/frac); err != nil {
			t.Fatal(err)
		}
		s, err := Open(Options{Path: path, Logger: testLogger(t)})
		if err == nil {
			// Only the room bbolt had grown the file by went: every
			// page is there.
			n, rerr := readAll(s)
			s.Close()
			if rerr != nil || n != dmgDevices*dmgPerDevice {
				t.Fatalf("cut to %d/%d, opened: read %d messages, %v", frac-1, frac, n, rerr)
			}
			continue
		}
		if !errors.Is(err, ErrDamaged) {
			t.Fatalf("Open of a file cut to %d/%d: %v", frac-1, frac, err)
		}
	}
}

// VerifyAlways verifies after a clean stop too, before it writes
// anything to the file (taking the clean-stop mark is a commit).
func TestVerifyAlways(t *testing.T) {
	path := fillDamageStore(t)
	s, err := Open(Options{Path: path, VerifyAlways: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	pageSize, ids, _ := leafPages(t, path, 24)
	damagePage(t, path, pageSize, ids[0], 9)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Options{Path: path, VerifyAlways: true, Logger: testLogger(t)}); !errors.Is(err, ErrDamaged) {
		t.Fatalf("Open with VerifyAlways of a damaged file closed cleanly: %v", err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Error("Open with VerifyAlways wrote to a damaged file before refusing it")
	}
}
