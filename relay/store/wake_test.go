package store

import (
	"bytes"
	"context"
	"testing"

	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/push"
)

// UpdateWakes changes many devices' wake blobs in one commit, skips those
// without a record and leaves those fn declines.
func TestUpdateWakes(t *testing.T) {
	reg := metrics.NewRegistry()
	s := openTest(t, Options{Metrics: reg})
	ctx := context.Background()
	var us []push.UAID
	for i := range 4 {
		u := push.UAID{0xaa, byte(i)}
		if err := s.UpdateWake(ctx, u, true, func([]byte) ([]byte, error) { return []byte{byte(i)}, nil }); err != nil {
			t.Fatal(err)
		}
		us = append(us, u)
	}
	us = append(us, push.UAID{0xbb}) // no record
	before := reg.Value("pushrelay_store_commits_total")
	seen := map[int][]byte{}
	n, err := s.UpdateWakes(ctx, us, func(i int, old []byte) []byte {
		seen[i] = bytes.Clone(old)
		switch i {
		case 0:
			return nil // declined
		case 1:
			return old // unchanged
		}
		return []byte{0x10 + byte(i)}
	})
	if err != nil || n != 2 {
		t.Fatalf("UpdateWakes: %d changed, %v; want 2", n, err)
	}
	if got := reg.Value("pushrelay_store_commits_total") - before; got != 1 {
		t.Errorf("%v commits, want 1", got)
	}
	if _, ok := seen[4]; ok {
		t.Error("fn called for a device without a record")
	}
	for i, want := range [][]byte{{0}, {1}, {0x12}, {0x13}} {
		d, ok, err := s.Device(us[i])
		if err != nil || !ok || !bytes.Equal(d.Wake, want) {
			t.Errorf("device %d: wake %x (%v %v), want %x", i, d.Wake, ok, err, want)
		}
	}
	if _, ok, _ := s.Device(us[4]); ok {
		t.Error("UpdateWakes created a device")
	}
}
