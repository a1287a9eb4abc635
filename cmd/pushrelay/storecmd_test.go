package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/node"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/wal"

	"github.com/pushrelay/pushrelay/cmd/pushrelay/internal/relayproc"
)

// damagedDir is a data dir written by the relay: one device, two
// channels, dmgMessages waiting messages of about 1.2 KB (a few per
// page), left by a SIGKILL (unclean) or a SIGTERM (clean).
type damagedDir struct {
	dir  string
	dev  *device
	sent map[string]bool
}

const dmgMessages = 120

func makeDataDir(t *testing.T, clean bool) *damagedDir {
	t.Helper()
	dir := t.TempDir()
	p := startRelay(t, dir)
	d := connect(t, p, "")
	subs := []*testSub{d.register(""), d.register("")}
	d.c.Close()
	sent := map[string]bool{}
	for i := range dmgMessages {
		text := fmt.Sprintf("m%03d-%s", i, strings.Repeat("x", 1200))
		mustCreated(t, push(t, subs[i%2], text, map[string]string{"TTL": "86400"}))
		sent[text] = true
	}
	if clean {
		p.stop()
	} else {
		// The file takes the store's write-ahead log at its
		// checkpoints, one 250 ms after the first write it lacks: the
		// tests damage, check and salvage the file, so it must hold
		// every message before the kill.
		time.Sleep(600 * time.Millisecond)
		p.Kill()
	}
	return &damagedDir{dir: dir, dev: d, sent: sent}
}

// clone copies the data dir's files (and the store's write-ahead log)
// into a new dir.
func (dd *damagedDir) clone(t *testing.T) string {
	t.Helper()
	dst := t.TempDir()
	copyDir(t, dd.dir, dst)
	return dst
}

func copyDir(t *testing.T, from, dst string) {
	t.Helper()
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.IsDir() {
			if err := os.Mkdir(filepath.Join(dst, e.Name()), 0o700); err != nil {
				t.Fatal(err)
			}
			copyDir(t, filepath.Join(from, e.Name()), filepath.Join(dst, e.Name()))
			continue
		}
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// messagePages finds the leaf pages of the messages bucket in a bbolt
// file by their headers (bbolt's layout: page id 8, flags 2, count 2,
// overflow 4, then 16-byte leaf elements flags, pos, ksize, vsize; the
// page size is in the meta page after its header, magic and version).
func messagePages(t *testing.T, path string) (pageSize int, ids []int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ne := binary.NativeEndian
	pageSize = int(ne.Uint32(b[16+8:]))
	for id := 2; (id+1)*pageSize <= len(b); id++ {
		p := b[id*pageSize:]
		if ne.Uint64(p) == uint64(id) && ne.Uint16(p[8:]) == 0x02 && ne.Uint16(p[10:]) > 0 && ne.Uint32(p[16+8:]) == 24 {
			ids = append(ids, id)
		}
	}
	if len(ids) < 4 {
		t.Fatalf("%s: only %d message pages", path, len(ids))
	}
	return pageSize, ids
}

func overwrite(t *testing.T, path string, b []byte, off int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, int64(off)); err != nil {
		t.Fatal(err)
	}
}

func randomPage(t *testing.T, path string) {
	pageSize, ids := messagePages(t, path)
	junk := make([]byte, pageSize)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range junk {
		junk[i] = byte(r.Uint32())
	}
	overwrite(t, path, junk, ids[len(ids)/2]*pageSize)
}

// runBin runs the binary to its end (at most 60 s) and returns its exit
// code, stdout and stderr.
func runBin(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, args...)
	cmd.Env = relayproc.Env()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%v did not end within 60s", args)
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, stdout.String(), stderr.String()
}

// runRelay starts `pushrelay run` on dir and returns its exit code and
// stderr when it ends by itself (a refused start); a relay that starts
// is stopped and reported as -1.
func runRelay(t *testing.T, dir string) (int, string) {
	t.Helper()
	code, _, stderr := runBin(t, "run", "--data-dir", dir, "--device-listen", "127.0.0.1:0",
		"--endpoint-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--stun-listen", "127.0.0.1:0",
		"--shutdown-timeout", "1s", "--log-level", "warn", "--public-url", "http://127.0.0.1:1")
	return code, stderr
}

// The relay refuses to start on a damaged, truncated or deleted state
// file, with exit status 1 and one line naming the file and what to do;
// it creates nothing in their place.
func TestE2EDamagedDataDir(t *testing.T) {
	unclean := makeDataDir(t, false)
	cases := []struct {
		name   string
		damage func(t *testing.T, dir string)
		want   []string // in the one line
	}{
		{"store page of random bytes", func(t *testing.T, dir string) {
			randomPage(t, filepath.Join(dir, node.StoreFile))
		}, []string{node.StoreFile, "damaged", "salvage", "backup"}},
		{"store page headers flipped", func(t *testing.T, dir string) {
			path := filepath.Join(dir, node.StoreFile)
			pageSize, ids := messagePages(t, path)
			b, _ := os.ReadFile(path)
			for _, id := range ids[:4] {
				for i := range 16 {
					b[id*pageSize+i] ^= 0x5a
				}
			}
			os.WriteFile(path, b, 0o600)
		}, []string{node.StoreFile, "damaged", "salvage"}},
		{"store truncated to half", func(t *testing.T, dir string) {
			path := filepath.Join(dir, node.StoreFile)
			fi, _ := os.Stat(path)
			os.Truncate(path, fi.Size()/2)
		}, []string{node.StoreFile, "damaged", "salvage"}},
		{"store empty", func(t *testing.T, dir string) {
			os.Truncate(filepath.Join(dir, node.StoreFile), 0)
		}, []string{node.StoreFile, "empty", "endpoint.key and wake.key exist", "delete"}},
		{"store deleted", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, node.StoreFile))
		}, []string{node.StoreFile, "missing", "backup"}},
		{"endpoint.key deleted", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, node.EndpointKeyFile))
		}, []string{node.EndpointKeyFile, "missing", "endpoint handed out", "backup"}},
		{"endpoint.key empty", func(t *testing.T, dir string) {
			os.Truncate(filepath.Join(dir, node.EndpointKeyFile), 0)
		}, []string{node.EndpointKeyFile, "empty", "backup"}},
		{"endpoint.key cut short", func(t *testing.T, dir string) {
			os.Truncate(filepath.Join(dir, node.EndpointKeyFile), 20)
		}, []string{node.EndpointKeyFile}},
		{"wake.key deleted", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, node.WakeKeyFile))
		}, []string{node.WakeKeyFile, "missing", "wake key", "backup"}},
		{"wake.key empty", func(t *testing.T, dir string) {
			os.Truncate(filepath.Join(dir, node.WakeKeyFile), 0)
		}, []string{node.WakeKeyFile, "empty"}},
		{"wake.key cut short", func(t *testing.T, dir string) {
			os.Truncate(filepath.Join(dir, node.WakeKeyFile), 20)
		}, []string{node.WakeKeyFile}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := unclean.clone(t)
			c.damage(t, dir)
			before := listDir(t, dir)
			code, stderr := runRelay(t, dir)
			line := strings.TrimSpace(stderr)
			if code != 1 || strings.Count(line, "\n") != 0 || !strings.HasPrefix(line, "pushrelay: ") {
				t.Fatalf("exit %d, want 1 with one line; stderr:\n%s", code, stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(line, w) {
					t.Errorf("the line does not say %q: %s", w, line)
				}
			}
			if after := listDir(t, dir); after != before {
				t.Errorf("the refused start changed the data dir:\n%s\nnow\n%s", before, after)
			}
		})
	}
	t.Run("fresh dir creates all", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "new")
		p := startRelay(t, dir)
		p.stop()
		for _, name := range []string{node.StoreFile, node.EndpointKeyFile, node.WakeKeyFile} {
			if st, _ := node.StateOf(filepath.Join(dir, name)); st != node.FilePresent {
				t.Errorf("%s is %s after the first start", name, st)
			}
		}
	})
	// A first start cut short after the store was made and before the
	// keys were written leaves a store with no device: the next start
	// makes the keys.
	t.Run("keys missing beside a store without devices", func(t *testing.T) {
		dir := t.TempDir()
		startRelay(t, dir).stop()
		os.Remove(filepath.Join(dir, node.EndpointKeyFile))
		os.Truncate(filepath.Join(dir, node.WakeKeyFile), 0)
		startRelay(t, dir).stop()
		for _, name := range []string{node.EndpointKeyFile, node.WakeKeyFile} {
			if st, _ := node.StateOf(filepath.Join(dir, name)); st != node.FilePresent {
				t.Errorf("%s is %s", name, st)
			}
		}
	})
	// allow_new_store: the operator expects a store lost beside its keys
	// (OpenWrt's sysupgrade keeps endpoint.key only).
	t.Run("store deleted, allow_new_store", func(t *testing.T) {
		dir := unclean.clone(t)
		os.Remove(filepath.Join(dir, node.StoreFile))
		os.Remove(filepath.Join(dir, node.WakeKeyFile))
		key, _ := os.ReadFile(filepath.Join(dir, node.EndpointKeyFile))
		p := startRelay(t, dir, "--allow-new-store", "true")
		p.stop()
		if !strings.Contains(p.stderr.String(), "allow_new_store") {
			t.Error("no warning about the new store")
		}
		if now, _ := os.ReadFile(filepath.Join(dir, node.EndpointKeyFile)); !bytes.Equal(now, key) {
			t.Error("endpoint.key was replaced")
		}
	})
	t.Run("all state deleted starts afresh", func(t *testing.T) {
		dir := unclean.clone(t)
		for _, name := range []string{node.StoreFile, node.EndpointKeyFile, node.WakeKeyFile} {
			os.Remove(filepath.Join(dir, name))
		}
		startRelay(t, dir).stop()
	})
}

// listDir describes a dir's files: name, size and, but for the store
// (which a refused start may have verified and marked clean), the
// modification time.
func listDir(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range ents {
		if e.Name() == node.StoreFile+".wal" {
			// The store's write-ahead log, which a refused start may
			// have emptied into the store (see below).
			fmt.Fprintf(&b, "%s/\n", e.Name())
			continue
		}
		fi, _ := e.Info()
		mtime := fi.ModTime().Format(time.RFC3339Nano)
		if e.Name() == node.StoreFile {
			mtime = ""
		}
		fmt.Fprintf(&b, "%s %d %s\n", e.Name(), fi.Size(), mtime)
	}
	return b.String()
}

// A page damaged while the relay was stopped cleanly is not checked at
// start; the relay serves, the first reads that meet it fail without
// ending the process (a crash loop before), and the next start verifies
// the store and refuses it.
func TestE2EDamageFoundWhileServing(t *testing.T) {
	dd := makeDataDir(t, true)
	dir := dd.clone(t)
	randomPage(t, filepath.Join(dir, node.StoreFile))
	p := startRelay(t, dir)
	c := dial(t, p)
	// The device's hello reads its backlog, which crosses the damaged
	// page: the relay fails the read (1011 to the device), logs it once
	// and stays up.
	c.Hello(dd.dev.uaid, pushclient.HelloOptions{})
	deadline := time.Now().Add(20 * time.Second)
	for p.metric("pushrelay_store_damaged") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the damaged page was never read")
		}
		if n, err := c.Next(time.Now().Add(100 * time.Millisecond)); err == nil {
			c.Ack(n)
		}
	}
	if code, _ := httpGet(p.Admin + "/status"); code == 0 {
		t.Fatal("the relay died")
	}
	// It says so where a load balancer looks, and more devices
	// reconnecting do not flood the log.
	if code, body := httpGet(p.Admin + "/readyz"); code != 503 || !strings.Contains(body, "damaged") {
		t.Errorf("/readyz on a damaged store: %d %s", code, body)
	}
	for range 5 {
		c := dial(t, p)
		c.Hello(dd.dev.uaid, pushclient.HelloOptions{})
		c.Next(time.Now().Add(200 * time.Millisecond))
	}
	p.stop()
	if n := strings.Count(p.stderr.String(), "level=ERROR"); n > 2 {
		t.Errorf("%d ERROR lines for one damaged store:\n%s", n, tail(p.stderr.String(), 20))
	}
	if n := strings.Count(p.stderr.String(), "store damaged: refusing"); n != 1 {
		t.Errorf("the damage was logged %d times", n)
	}
	code, stderr := runRelay(t, dir)
	if code != 1 || !strings.Contains(stderr, "damaged") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Fatalf("restart on the damaged store: exit %d, stderr %s", code, stderr)
	}
}

// check-store says ok for a sound store and refuses a damaged one with the
// same one line as run; salvage copies the readable messages, and a relay
// started on the salvaged file delivers exactly those.
func TestE2ECheckStoreAndSalvage(t *testing.T) {
	dd := makeDataDir(t, false)
	dir := dd.clone(t)
	code, stdout, stderr := runBin(t, "check-store", "--data-dir", dir)
	if code != 0 || !strings.Contains(stdout, "store ok") || !strings.Contains(stdout, strconv.Itoa(dmgMessages)+" messages") ||
		!strings.Contains(stdout, "the file holds every record") {
		t.Fatalf("check-store on a sound store: exit %d\n%s%s", code, stdout, stderr)
	}

	randomPage(t, filepath.Join(dir, node.StoreFile))
	code, stdout, stderr = runBin(t, "check-store", "--data-dir", dir)
	if line := strings.TrimSpace(stderr); code != 1 || strings.Count(line, "\n") != 0 || !strings.Contains(line, "salvage") {
		t.Fatalf("check-store on a damaged store: exit %d\n%s%s", code, stdout, stderr)
	}

	code, stdout, stderr = runBin(t, "salvage", "--data-dir", dir)
	if code != 0 {
		t.Fatalf("salvage: exit %d\n%s%s", code, stdout, stderr)
	}
	t.Logf("salvage said:\n%s", stdout)
	m := regexp.MustCompile(`(\d+) messages\n`).FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("salvage output: %s", stdout)
	}
	kept, _ := strconv.Atoi(m[1])
	if kept >= dmgMessages || kept < dmgMessages-10 {
		t.Fatalf("salvaged %d of %d messages: one page holds a few", kept, dmgMessages)
	}
	followSalvage(t, stdout)
	p := startRelay(t, dir)
	d := connect(t, p, dd.dev.uaid)
	d.subs = dd.dev.subs
	got := map[string]bool{}
	for len(got) < kept {
		text, _ := d.receive(10 * time.Second)
		if !dd.sent[text] || got[text] {
			t.Fatalf("received %.8q: not sent, or twice", text)
		}
		got[text] = true
	}
	d.expectNothing(500 * time.Millisecond)
	p.stop()
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// followSalvage does what salvage printed after "next:": the damaged
// file and its write-ahead log aside, the salvaged file into place.
func followSalvage(t *testing.T, stdout string) {
	t.Helper()
	m := regexp.MustCompile(`(?m)^next: (.*), then start the relay`).FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("salvage printed no next step:\n%s", stdout)
	}
	for _, cmd := range strings.Split(m[1], " && ") {
		f := strings.Fields(cmd)
		if len(f) != 3 || f[0] != "mv" {
			t.Fatalf("salvage's next step %q", cmd)
		}
		if err := os.Rename(f[1], f[2]); err != nil {
			t.Fatal(err)
		}
	}
}

// A relay killed with acknowledged messages only in its store's
// write-ahead log (store_checkpoint_interval 1m, so no checkpoint took
// them: with the default 250 ms the file would hold them): check-store
// counts the records the next start applies; salvage carries them into
// its copy, and a relay started on the copy, moved into place as salvage
// says, delivers every one.
func TestE2ESalvageCarriesWAL(t *testing.T) {
	dir := t.TempDir()
	p := startRelay(t, dir, "--store-checkpoint-interval", "1m")
	d := connect(t, p, "")
	sub := d.register("")
	d.c.Close()
	const n = 5
	sent := map[string]bool{}
	for i := range n {
		text := fmt.Sprintf("only in the log %d", i)
		mustCreated(t, push(t, sub, text, map[string]string{"TTL": "86400"}))
		sent[text] = true
	}
	time.Sleep(400 * time.Millisecond) // past the default interval
	p.Kill()

	code, stdout, stderr := runBin(t, "check-store", "--data-dir", dir)
	t.Logf("check-store said:\n%s", stdout)
	m := regexp.MustCompile(`(\d+) records \(\d+ bytes\) not yet in the file; the next start applies them`).FindStringSubmatch(stdout)
	if code != 0 || m == nil || !strings.Contains(stdout, "store ok") || !strings.Contains(stdout, " 0 messages") {
		t.Fatalf("check-store: exit %d\n%s%s", code, stdout, stderr)
	}
	if records, _ := strconv.Atoi(m[1]); records < n {
		t.Fatalf("check-store counts %d records for %d messages", records, n)
	}

	if !strings.Contains(stdout, "  with them: 1 devices, 1 channels") {
		t.Fatalf("check-store does not count the devices only in the log:\n%s", stdout)
	}
	// The device is only in the log (the file has none): its keys are
	// needed all the same, as the next start would say.
	nokey := t.TempDir()
	copyDir(t, dir, nokey)
	if err := os.Remove(filepath.Join(nokey, node.EndpointKeyFile)); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = runBin(t, "check-store", "--data-dir", nokey)
	if code == 0 || !strings.Contains(stderr, "holds devices but "+node.EndpointKeyFile+" is missing") {
		t.Fatalf("check-store with the log's device and no %s: exit %d\n%s%s", node.EndpointKeyFile, code, stdout, stderr)
	}

	// A copy whose log is damaged mid-way (whole records after it):
	// check-store exits 1 with the one line a damaged store gets.
	bad := t.TempDir()
	copyDir(t, dir, bad)
	segs, _ := filepath.Glob(filepath.Join(bad, node.StoreFile+".wal", "*.wal"))
	if len(segs) != 1 {
		t.Fatalf("log segments %v", segs)
	}
	// Where its records end: relay/wal reserves space after them.
	end, err := wal.RecordsEnd(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	// Its last append cut short instead: a torn tail, not damage.
	if err := os.Truncate(segs[0], end-5); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = runBin(t, "check-store", "--data-dir", bad)
	if code != 0 || !strings.Contains(stdout, "a torn append at its tail (") || !strings.Contains(stdout, "; the next start cuts it") ||
		!strings.Contains(stdout, strconv.Itoa(mustAtoi(t, m[1])-1)+" records") || !strings.Contains(stdout, "store ok") {
		t.Fatalf("check-store on a torn log: exit %d\n%s%s", code, stdout, stderr)
	}
	overwrite(t, segs[0], []byte("junk"), int(end/2))
	code, stdout, stderr = runBin(t, "check-store", "--data-dir", bad)
	if line := strings.TrimSpace(stderr); code != 1 || strings.Count(line, "\n") != 0 || !strings.Contains(line, "write-ahead log") || !strings.Contains(line, "salvage") ||
		!strings.Contains(stdout, "  damage: ") {
		t.Fatalf("check-store on a damaged log: exit %d\n%s%s", code, stdout, stderr)
	}

	code, stdout, stderr = runBin(t, "salvage", "--data-dir", dir)
	t.Logf("salvage said:\n%s", stdout)
	if code != 0 || !strings.Contains(stdout, "not yet in the file; carried into "+node.StoreFile+node.SalvagedSuffix) {
		t.Fatalf("salvage: exit %d\n%s%s", code, stdout, stderr)
	}
	followSalvage(t, stdout)
	if _, err := os.Stat(filepath.Join(dir, node.StoreFile+".damaged.wal")); err != nil {
		t.Fatalf("the old log was not moved aside: %v", err)
	}
	p = startRelay(t, dir)
	d2 := connect(t, p, d.uaid)
	d2.subs = d.subs
	got := map[string]bool{}
	for len(got) < n {
		text, _ := d2.receive(10 * time.Second)
		if !sent[text] || got[text] {
			t.Fatalf("received %q: not sent, or twice", text)
		}
		got[text] = true
	}
	d2.expectNothing(300 * time.Millisecond)
	p.stop()
}

// store_checkpoint_interval and store_checkpoint_bytes reach the store:
// with an interval of a minute, small writes make no checkpoint; past
// 64 KiB of log records one is made at once.
func TestE2EStoreCheckpointConfig(t *testing.T) {
	p := startRelay(t, t.TempDir(), "--store-checkpoint-interval", "1m", "--store-checkpoint-bytes", "64KiB")
	d := connect(t, p, "")
	sub := d.register("")
	d.c.Close()
	const metric = "pushrelay_store_checkpoints_total"
	before := p.metric(metric)
	for i := range 5 {
		mustCreated(t, push(t, sub, fmt.Sprintf("small %d", i), nil))
	}
	time.Sleep(400 * time.Millisecond) // past the default interval
	if n := p.metric(metric); n != before {
		t.Fatalf("%d checkpoints within the minute, after %d small writes", int(n-before), 5)
	}
	for i := range 40 { // about 2 KB of record each: 80 KB
		mustCreated(t, push(t, sub, fmt.Sprintf("big %d %s", i, strings.Repeat("x", 1500)), nil))
	}
	if n := p.metric(metric); n == before {
		t.Fatal("no checkpoint after 80 KB of log records, with store_checkpoint_bytes 64KiB")
	}
	p.stop()
}

// check-config checks the data dir without writing into it.
func TestE2ECheckConfigWritesNothing(t *testing.T) {
	dir := t.TempDir()
	for _, dataDir := range []string{dir, filepath.Join(dir, "sub", "missing")} {
		code, stdout, stderr := runBin(t, "check-config", "--data-dir", dataDir)
		if code != 0 || !strings.Contains(stdout, "configuration ok") {
			t.Fatalf("check-config --data-dir %s: exit %d\n%s%s", dataDir, code, stdout, stderr)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("check-config wrote into %s: %v", dir, ents)
	}
	file := filepath.Join(dir, "afile")
	os.WriteFile(file, nil, 0o600)
	if code, _, stderr := runBin(t, "check-config", "--data-dir", filepath.Join(file, "sub")); code != 2 || !strings.Contains(stderr, "not a directory") {
		t.Fatalf("check-config under a file: exit %d %s", code, stderr)
	}
}
