package store

import (
	"context"
	"errors"
	"maps"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// Broadcast versions survive a restart; a put changes only the ids it
// names; bad ids and versions are refused whole.
func TestBroadcastsPersist(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	ctx := context.Background()
	s := openTest(t, Options{Path: path})
	if got, err := s.Broadcasts(); err != nil || len(got) != 0 {
		t.Fatalf("new store: %v %v", got, err)
	}
	if err := s.PutBroadcasts(ctx, map[string]string{"remote-settings/monitor_changes": `"1700000000"`, "b": "v1"}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutBroadcasts(ctx, map[string]string{"b": "v2"}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutBroadcasts(ctx, map[string]string{"b": "v2"}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []map[string]string{{"": "v"}, {"id": ""}, {strings.Repeat("x", MaxBroadcastLen+1): "v"}, {"ok": "v", "id": strings.Repeat("v", MaxBroadcastLen+1)}} {
		if err := s.PutBroadcasts(ctx, bad); !errors.Is(err, ErrBadMessage) {
			t.Errorf("put %.20q: %v", bad, err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, Options{Path: path})
	want := map[string]string{"remote-settings/monitor_changes": `"1700000000"`, "b": "v2"}
	if got, err := s.Broadcasts(); err != nil || !maps.Equal(got, want) {
		t.Fatalf("after restart: %v %v, want %v", got, err, want)
	}
}

// Migration 4 adds the broadcasts bucket to a version 3 file, and Verify
// checks its rows.
func TestMigrationFromV3(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	writeRaw(t, path, func(tx *bolt.Tx) error {
		_, _, err := migrate(tx, migrations[:3])
		return err
	})
	s := openTest(t, Options{Path: path})
	if v := fileSchema(t, s); v != schemaVersion() || v < 4 {
		t.Fatalf("schema %d after migration", v)
	}
	if err := s.PutBroadcasts(context.Background(), map[string]string{"a": "1"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if r, err := Verify(path, 0); err != nil || len(r.Problems) != 0 {
		t.Fatalf("verify: %v %+v", err, r)
	}
	// A row no build writes is reported.
	writeRaw(t, path, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBroadcasts).Put([]byte("a"), nil)
	})
	if r, _ := Verify(path, 0); len(r.Problems) == 0 {
		t.Fatalf("verify passed an empty version: %+v", r)
	}
}
