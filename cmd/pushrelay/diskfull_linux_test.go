package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/pushrelay/pushrelay/relay/ece"
)

// A full disk is an operating state: pushes the store cannot write get 507
// errno 119 with Retry-After, the log says so once (not a line per push),
// /readyz is 503 and /status names the problem; freeing space resumes
// writes without a restart, and nothing that got a 201 is lost.
func TestE2EDiskFull(t *testing.T) {
	dir := smallTmpfs(t)
	data := filepath.Join(dir, "data")
	p := startRelay(t, data)
	d := connect(t, p, "")
	s := d.register("")
	d.c.Close()
	mustCreated(t, push(t, s, "before", nil))

	// Take every free byte of the file system.
	filler := filepath.Join(dir, "filler")
	fillDisk(t, filler)

	body, _ := ece.Encrypt([]byte(strings.Repeat("x", 3000)), s.keys.PublicKey(), s.keys.Auth)
	postFull := func() *http.Response {
		t.Helper()
		req, _ := http.NewRequest("POST", s.endpoint, bytes.NewReader(body))
		req.Header.Set("TTL", "3600")
		req.Header.Set("Content-Encoding", "aes128gcm")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(b))
		return resp
	}
	// bbolt may still have free pages in its file: push until it needs
	// more (bounded).
	stored := 1
	var resp *http.Response
	for i := 0; ; i++ {
		if i == 2000 {
			t.Fatal("2000 pushes stored on a full disk")
		}
		if resp = postFull(); resp.StatusCode != 201 {
			break
		}
		stored++
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 507 || !strings.Contains(string(b), `"errno":119`) || resp.Header.Get("Retry-After") != "60" {
		t.Fatalf("push on a full disk: %d %s Retry-After %q", resp.StatusCode, b, resp.Header.Get("Retry-After"))
	}
	const more = 200
	for i := range more {
		if r := postFull(); r.StatusCode != 507 {
			t.Fatalf("push %d on a full disk: %d", i, r.StatusCode)
		}
	}
	code, ready := httpGet(p.Admin + "/readyz")
	if code != 503 || !strings.Contains(ready, "store: disk full since") {
		t.Fatalf("/readyz on a full disk: %d %q", code, ready)
	}
	st := p.status()
	if st["ready"] != false || !strings.Contains(st["problems"].(map[string]any)["store"].(string), "pushes refused") {
		t.Fatalf("/status on a full disk: %v", st)
	}
	if v := p.metric("pushrelay_endpoint_store_full"); v != 1 {
		t.Fatalf("store_full gauge = %v", v)
	}
	logs := p.stderr.String()
	first := strings.Count(logs, "store is out of space")
	perPush := strings.Count(logs, `msg="push failed"`)
	storeLines := strings.Count(logs, "store commit failed") + strings.Count(logs, "store op failed")
	t.Logf("%d pushes stored, then %d refused; log: %d endpoint line(s), %d store line(s)", stored, more+1, first, storeLines)
	if first != 1 || perPush != 0 || storeLines > 1 {
		t.Fatalf("log: %d 'out of space' lines, %d 'push failed' lines and %d store lines for %d refused pushes", first, perPush, storeLines, more+1)
	}

	// Free the space: /readyz's probe sees it and pushes are stored again.
	os.Remove(filler)
	waitFor(t, "/readyz to be 200 after space was freed", func() bool {
		code, _ := httpGet(p.Admin + "/readyz")
		return code == 200
	})
	mustCreated(t, push(t, s, "after", nil))
	stored++
	if !strings.Contains(p.stderr.String(), "store writes again") {
		t.Fatal("the end of the disk-full state is not logged")
	}
	if w := p.waiting(); w != stored {
		t.Fatalf("waiting = %d, want the %d pushes that got 201", w, stored)
	}
	p.stop()
}

// fillDisk writes path until the file system has no space left.
func fillDisk(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for i := 0; i < 1<<14; i++ { // 1 GiB at most
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			// Fill the last partial chunk byte by byte in 4 KiB steps.
			for _, err := f.Write(chunk[:4096]); err == nil; _, err = f.Write(chunk[:4096]) {
			}
			return
		}
	}
	t.Fatal("the file system did not fill")
}

// A broadcast version the full store cannot write is answered 507 with
// Retry-After, as a push is, and is not published.
func TestE2EBroadcastDiskFull(t *testing.T) {
	dir := smallTmpfs(t)
	tokenFile, token := writeAdminToken(t)
	p := startRelay(t, filepath.Join(dir, "data"), "--admin-token-file", tokenFile)
	fillDisk(t, filepath.Join(dir, "filler"))

	// Long ids and versions, so the store needs new pages soon (bounded by
	// the 1,024 ids a relay serves).
	version := strings.Repeat("v", 128)
	stored := 0
	var code int
	var v map[string]any
	for i := range 1024 {
		id := fmt.Sprintf("%04d-%s", i, strings.Repeat("i", 123))
		if code, v = adminCall(t, p, "PUT", "/broadcasts/"+id, token, version); code != 200 {
			break
		}
		stored++
	}
	if code != 507 || !strings.Contains(fmt.Sprint(v["error"]), "full") {
		t.Fatalf("PUT on a full disk after %d stored: %d %v", stored, code, v)
	}
	_, list := adminCall(t, p, "GET", "/broadcasts", token, "")
	if got := len(list["broadcasts"].(map[string]any)); got != stored {
		t.Fatalf("%d broadcasts listed, want the %d stored", got, stored)
	}
	t.Logf("%d versions stored, then 507", stored)
}

// smallTmpfs mounts a 4 MiB tmpfs on a temp dir, unmounted at the test's
// end; the test is skipped where that is not allowed (not root).
func smallTmpfs(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=4m"); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}
