package megaphone

import (
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"testing"

	"github.com/pushrelay/pushrelay/relay/broadcast"
)

// FuzzDecode: Decode never panics; what it accepts is a map the registry
// takes (at most MaxIDs ids, each id and version passing broadcast.Check)
// and survives being encoded and decoded again; what it refuses is
// ErrBadAnswer. Seeded with answers as megaphone serves them.
func FuzzDecode(f *testing.F) {
	seeds, err := filepath.Glob("testdata/answers/*.json")
	if err != nil || len(seeds) == 0 {
		f.Fatalf("no seeds: %v", err)
	}
	for _, name := range seeds {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := Decode(body)
		if err != nil {
			if !errors.Is(err, ErrBadAnswer) {
				t.Fatalf("error %v is not ErrBadAnswer", err)
			}
			return
		}
		if len(m) > broadcast.MaxIDs {
			t.Fatalf("%d ids accepted", len(m))
		}
		for id, v := range m {
			if err := broadcast.Check(id, v); err != nil {
				t.Fatalf("accepted %q=%q: %v", id, v, err)
			}
		}
		again, err := json.Marshal(map[string]any{"broadcasts": m})
		if err != nil {
			t.Fatal(err)
		}
		m2, err := Decode(again)
		if err != nil || !maps.Equal(m, m2) {
			t.Fatalf("round trip: %v %v, was %v", m2, err, m)
		}
	})
}

// The seeds are what they claim: real answers decode, the refusal does not.
func TestSeeds(t *testing.T) {
	for name, want := range map[string]int{"remote-settings.json": 1, "several.json": 3, "empty.json": 0, "no-code.json": 1} {
		b, err := os.ReadFile(filepath.Join("testdata/answers", name))
		if err != nil {
			t.Fatal(err)
		}
		if m, err := Decode(b); err != nil || len(m) != want {
			t.Errorf("%s: %v %v", name, m, err)
		}
	}
	b, _ := os.ReadFile("testdata/answers/unauthorized.json")
	if _, err := Decode(b); !errors.Is(err, ErrBadAnswer) {
		t.Errorf("unauthorized.json: %v", err)
	}
}
