package broadcast

import (
	"context"
	"errors"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pushrelay/pushrelay/relay/leakcheck"
	"github.com/pushrelay/pushrelay/relay/store"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

func openStore(t *testing.T, path string) *store.Store {
	t.Helper()
	s, err := store.Open(store.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Set persists and publishes only what changed, tells the listeners once
// per change, and versions survive a restart.
func TestRegistrySet(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	st := openStore(t, path)
	r, err := Open(st, nil)
	if err != nil {
		t.Fatal(err)
	}
	var calls []map[string]string
	r.OnChange(func(c map[string]string) { calls = append(calls, c) })
	ctx := context.Background()

	got, err := r.Set(ctx, "admin", map[string]string{"a": "1", "b": "1"})
	if err != nil || !maps.Equal(got, map[string]string{"a": "1", "b": "1"}) {
		t.Fatalf("first set: %v %v", got, err)
	}
	before := r.Versions()
	got, err = r.Set(ctx, "megaphone", map[string]string{"a": "1", "b": "2"})
	if err != nil || !maps.Equal(got, map[string]string{"b": "2"}) {
		t.Fatalf("second set: %v %v", got, err)
	}
	if before["b"] != "1" {
		t.Fatal("a published map was changed in place")
	}
	if got, err = r.Set(ctx, "megaphone", map[string]string{"a": "1", "b": "2"}); err != nil || len(got) != 0 {
		t.Fatalf("unchanged set: %v %v", got, err)
	}
	if len(calls) != 2 || !maps.Equal(calls[1], map[string]string{"b": "2"}) {
		t.Fatalf("listener calls %v", calls)
	}
	for _, bad := range []map[string]string{{"": "1"}, {"c": ""}, {"c": "1", strings.Repeat("x", MaxLen+1): "1"}} {
		if _, err := r.Set(ctx, "admin", bad); !errors.Is(err, ErrBad) {
			t.Errorf("set %.30q: %v", bad, err)
		}
	}
	if _, ok := r.Versions()["c"]; ok || len(calls) != 2 {
		t.Fatal("a refused set changed something")
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = openStore(t, path)
	defer st.Close()
	r, err = Open(st, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v := r.Versions(); !maps.Equal(v, map[string]string{"a": "1", "b": "2"}) {
		t.Fatalf("after restart: %v", v)
	}
}

// A store that cannot write leaves the versions as they were.
func TestRegistrySetStoreFails(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "store.db"))
	r, err := Open(st, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	called := false
	r.OnChange(func(map[string]string) { called = true })
	if _, err := r.Set(context.Background(), "admin", map[string]string{"a": "1"}); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("set on a closed store: %v", err)
	}
	if len(r.Versions()) != 0 || called {
		t.Fatal("a failed write was published")
	}
}

func TestRegistryMaxIDs(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "store.db"))
	defer st.Close()
	r, err := Open(st, nil)
	if err != nil {
		t.Fatal(err)
	}
	many := map[string]string{}
	for i := range MaxIDs + 1 {
		many[strings.Repeat("i", 1+i%100)+string(rune('a'+i/100))] = "1"
	}
	if _, err := r.Set(context.Background(), "admin", many); !errors.Is(err, ErrBad) {
		t.Fatalf("set of %d ids: %v", len(many), err)
	}
}

func TestDiff(t *testing.T) {
	cur := map[string]string{"a": "2", "b": "1"}
	delta, missing := Diff(cur, map[string]string{"a": "1", "b": "1", "x": "0"})
	if !maps.Equal(delta, map[string]string{"a": "2"}) || !slices.Equal(missing, []string{"x"}) {
		t.Fatalf("delta %v missing %v", delta, missing)
	}
	if delta, missing := Diff(cur, map[string]string{"b": "1"}); delta != nil || missing != nil {
		t.Fatalf("nothing to tell: %v %v", delta, missing)
	}
}
