package store

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
)

// A parent's record of its children's last addresses survives a restart,
// keeps one address per child (the last set), and is bounded.
func TestLinkChildAddrs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	s, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a := netip.MustParseAddrPort("192.0.2.1:4000")
	b := netip.MustParseAddrPort("[2001:db8::1]:5000")
	for _, set := range []struct {
		name string
		addr netip.AddrPort
	}{{"edge-1", a}, {"edge-2", b}, {"edge-1", netip.MustParseAddrPort("[::ffff:192.0.2.9]:4001")}} {
		if err := s.SetLinkChildAddr(ctx, set.name, set.addr); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetLinkChildAddr(ctx, "", a); err == nil {
		t.Fatal("empty child name accepted")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := readLinkAddrs(t, s)
	want := "edge-2 [2001:db8::1]:5000, edge-1 192.0.2.9:4001, "
	if got != want {
		t.Fatalf("after a restart: %q, want %q", got, want)
	}
	for i := range MaxLinkChildAddrs + 10 {
		if err := s.SetLinkChildAddr(ctx, fmt.Sprintf("c%d", i), a); err != nil {
			t.Fatal(err)
		}
	}
	n, first := 0, ""
	if err := s.LinkChildAddrs(func(name string, _ netip.AddrPort) {
		if n == 0 {
			first = name
		}
		n++
	}); err != nil {
		t.Fatal(err)
	}
	if n != MaxLinkChildAddrs || first != "c10" {
		t.Fatalf("%d addresses kept, the oldest %q; want %d, c10", n, first, MaxLinkChildAddrs)
	}
}

func readLinkAddrs(t *testing.T, s *Store) string {
	t.Helper()
	var out string
	if err := s.LinkChildAddrs(func(name string, addr netip.AddrPort) { out += name + " " + addr.String() + ", " }); err != nil {
		t.Fatal(err)
	}
	return out
}

// A damaged record is reported, not misread.
func TestDecodeLinkAddrsDamaged(t *testing.T) {
	good := encodeLinkAddrs([]linkAddr{{"edge", netip.MustParseAddrPort("192.0.2.1:1")}})
	for _, v := range [][]byte{good[:len(good)-1], {0}, append([]byte{65}, good[1:]...)} {
		if _, err := decodeLinkAddrs(v); err == nil {
			t.Errorf("decode %x: no error", v)
		}
	}
	if es, err := decodeLinkAddrs(good); err != nil || len(es) != 1 {
		t.Fatalf("decode good: %v, %v", es, err)
	}
}
