package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pushrelay/pushrelay/relay/linkauth"
)

func keys(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), append([]string{"keys"}, args...), func(string) (string, bool) { return "", false }, &out, &errOut)
	return out.String(), err
}

// `pushrelay keys`: a site CA, a relay issued by it, the pin printed by
// issue equal to keys pin's, a self-signed relay, a token; files 0600,
// nothing replaced without --force.
func TestKeysCommand(t *testing.T) {
	dir := t.TempDir()
	caDir, out := filepath.Join(dir, "ca"), filepath.Join(dir, "relays")
	if _, err := keys(t, "ca", "--dir", caDir); err != nil {
		t.Fatal(err)
	}
	issued, err := keys(t, "issue", "--ca", caDir, "--name", "edge-1", "--out", out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(issued, "signed by the CA") {
		t.Errorf("issue printed %q", issued)
	}
	pin, err := keys(t, "pin", "--cert", filepath.Join(out, "edge-1.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pin = strings.TrimSpace(pin)
	if len(pin) != 44 || !strings.Contains(issued, "pin "+pin) {
		t.Errorf("keys pin %q; issue printed %q", pin, issued)
	}
	for _, f := range []string{filepath.Join(caDir, "ca.key"), filepath.Join(caDir, "ca.crt"), filepath.Join(out, "edge-1.key"), filepath.Join(out, "edge-1.crt")} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v", f, st.Mode().Perm())
		}
	}
	creds, err := linkauth.Load(filepath.Join(out, "edge-1.crt"), filepath.Join(out, "edge-1.key"), filepath.Join(caDir, "ca.crt"), nil, "")
	if err != nil || creds.Cert == nil {
		t.Fatalf("load what keys made: %v", err)
	}

	before, _ := os.ReadFile(filepath.Join(out, "edge-1.key"))
	if _, err := keys(t, "issue", "--ca", caDir, "--name", "edge-1", "--out", out); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Errorf("issue over an existing key: %v, want refused with a hint of --force", err)
	}
	if _, err := keys(t, "ca", "--dir", caDir); err == nil {
		t.Error("a second CA replaced the first")
	}
	if after, _ := os.ReadFile(filepath.Join(out, "edge-1.key")); !bytes.Equal(before, after) {
		t.Error("the refused issue changed the key")
	}
	if _, err := keys(t, "issue", "--ca", caDir, "--name", "edge-1", "--out", out, "--force"); err != nil {
		t.Errorf("--force: %v", err)
	}

	self, err := keys(t, "issue", "--name", "core-1", "--out", out)
	if err != nil || !strings.Contains(self, "self-signed") {
		t.Errorf("self-signed issue: %q, %v", self, err)
	}

	tok, err := keys(t, "token")
	if err != nil || len(strings.TrimSpace(tok)) != 43 {
		t.Errorf("token %q, %v", tok, err)
	}

	for _, bad := range [][]string{
		{},
		{"nope"},
		{"ca"},
		{"issue", "--name", "edge-2"},
		{"issue", "--name", "bad name", "--out", out},
		{"issue", "--ca", filepath.Join(dir, "missing"), "--name", "edge-2", "--out", out},
		{"pin"},
		{"pin", "--cert", filepath.Join(out, "edge-1.key")},
		{"token", "extra"},
	} {
		if _, err := keys(t, bad...); err == nil {
			t.Errorf("keys %q succeeded", bad)
		}
	}
}
