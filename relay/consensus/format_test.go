package consensus

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pushrelay/pushrelay/relay/linkauth"
	"github.com/pushrelay/pushrelay/relay/store"
)

// A raft.db written by the former engine (etcd raft; testdata/etcd-raft.db
// has its layout: buckets log and meta) is refused at start with an error
// naming the file and what to do, not read as an empty log.
func TestFormerEngineLogRefused(t *testing.T) {
	dir := t.TempDir()
	old, err := os.ReadFile("testdata/etcd-raft.db")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, store.LogFile)
	if err := os.WriteFile(path, old, 0o600); err != nil {
		t.Fatal(err)
	}
	caDir, keyDir := filepath.Join(t.TempDir(), "ca"), t.TempDir()
	if _, err := linkauth.NewCA(caDir, "", false); err != nil {
		t.Fatal(err)
	}
	if _, err := linkauth.Issue(caDir, "m1", keyDir, false); err != nil {
		t.Fatal(err)
	}
	creds, err := linkauth.Load(filepath.Join(keyDir, "m1.crt"), filepath.Join(keyDir, "m1.key"),
		filepath.Join(caDir, linkauth.CACertFile), nil, "")
	if err != nil {
		t.Fatal(err)
	}
	server, err := creds.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	sm, err := openListSM(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer sm.Close()
	n, err := New(Config{ID: 1, Peers: map[uint64]string{1: ""}, Dir: dir, Listen: "127.0.0.1:0",
		ServerTLS: server, ClientTLS: creds.ClientTLS()}, sm)
	if err == nil {
		n.Close()
		t.Fatal("New opened a log of the former engine")
	}
	if !errors.Is(err, store.ErrLogFormat) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "remove this file and the member's store") {
		t.Fatalf("New: %v", err)
	}
	t.Log(err)
}
