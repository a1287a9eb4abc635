package member

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// goldenMeta and its encoding pin the format: a change that breaks
// version 1 must change the version byte.
var goldenMeta = Meta{
	Name: "gw-1", RaftID: 0x0102030405060708,
	RaftAddr: "10.0.0.1:7947", LinkAddr: "10.0.0.1:4433", AdminAddr: "127.0.0.1:9090",
	Version: "v0.9.0", Load: 300, Sockets: 2, WakeBindings: 1,
	SocketDigest: Digest{0x80, 0x01}, WakeDigest: Digest{0x10},
}

// goldenHex is goldenMeta's encoding: version 1, then tag, length, value:
// 01 name "gw-1", 02 raft id, 03 raft, 04 link and 05 admin addresses,
// 06 version, 07 load 300 (uvarint ac02), 08 sockets 2, 09 wake bindings 1,
// 0a and 0b the digests.
const goldenHex = "01010467772d3102080102030405060708030d31302e302e302e313a37393437040d31302e302e302e313a34343333050e3132372e302e302e313a39303930060676302e392e300702ac020801020901010a0280010b0110"

func TestMetaGolden(t *testing.T) {
	b, err := EncodeMeta(goldenMeta)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(b); got != goldenHex {
		t.Fatalf("encoding\n got %s\nwant %s", got, goldenHex)
	}
	m, err := DecodeMeta(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(m, goldenMeta) {
		t.Fatalf("decoded %+v", m)
	}
}

func TestMetaUnknownFieldSkipped(t *testing.T) {
	b, _ := EncodeMeta(Meta{Name: "a", Leaving: true, InSite: true})
	// A later version's field 99, then one more known field.
	b = append(b, 99, 3, 'x', 'y', 'z', tagVersion, 2, 'v', '2')
	m, err := DecodeMeta(b)
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "a" || !m.Leaving || !m.InSite || m.Version != "v2" {
		t.Fatalf("decoded %+v", m)
	}
}

func TestMetaErrors(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		want error
	}{
		{nil, ErrMetaEmpty},
		{[]byte{2, 1, 1, 'a'}, ErrMetaVersion},
		{[]byte{1, tagName, 5, 'a'}, ErrMetaTruncate},
		{[]byte{1, tagName, 0x80}, ErrMetaTruncate},
		{[]byte{1, tagRaftID, 2, 1, 2}, ErrMetaField},
		{[]byte{1, tagSockets, 2, 0x80, 0x80}, ErrMetaField},
		{[]byte{1, tagSocketDigest, 3, 1, 2, 3}, ErrMetaField},
		{[]byte{1, tagLoad, 5, 0x80, 0x80, 0x80, 0x80, 0x10}, ErrMetaField},
		{make([]byte, MetaMaxSize+1), ErrMetaTooLarge},
	} {
		if _, err := DecodeMeta(tc.in); !errors.Is(err, tc.want) {
			t.Errorf("%x: %v, want %v", tc.in, err, tc.want)
		}
	}
}

// TestMetaFits fills every field as long as config allows: the digests
// are folded to fit 512 bytes, and every UAID added still tests
// positive.
func TestMetaFits(t *testing.T) {
	long := strings.Repeat("x", 63)
	sd, wd := NewDigest(0), NewDigest(0)
	var uaids []string
	for i := range 300 {
		u := fmt.Sprintf("%032x", i*7919)
		uaids = append(uaids, u)
		sd.Add(u)
		wd.Add(u)
	}
	m := Meta{Name: long, RaftID: IDOf(long), RaftAddr: "[2001:db8::1234:5678]:65535", LinkAddr: "[2001:db8::1234:5678]:65535",
		AdminAddr: "[2001:db8::1234:5678]:65535", Version: "v1.2.3-45-gabcdef0-dirty" + strings.Repeat("+", 100), Load: 1000,
		Sockets: 1 << 40, WakeBindings: 1 << 40, SocketDigest: sd, WakeDigest: wd, Leaving: true, InSite: true}
	b, err := EncodeMeta(m)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > MetaMaxSize {
		t.Fatalf("%d bytes", len(b))
	}
	got, err := DecodeMeta(b)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d bytes; digests %d and %d bytes", len(b), len(got.SocketDigest), len(got.WakeDigest))
	for _, u := range uaids {
		if !got.SocketDigest.MayHold(u) || !got.WakeDigest.MayHold(u) {
			t.Fatalf("%s lost in the folded digest", u)
		}
	}
	if _, err := EncodeMeta(Meta{Name: strings.Repeat("y", 600)}); !errors.Is(err, ErrMetaTooLarge) {
		t.Errorf("a 600-byte name: %v", err)
	}
}

// TestDigestFalsePositives measures the rate the doc quotes.
func TestDigestFalsePositives(t *testing.T) {
	for _, n := range []int{100, 500} {
		d := NewDigest(0)
		for i := range n {
			d.Add(fmt.Sprintf("in-%d", i))
		}
		fp := 0
		const probes = 10000
		for i := range probes {
			if d.MayHold(fmt.Sprintf("out-%d", i)) {
				fp++
			}
		}
		t.Logf("%d UAIDs in 1024 bits: %.1f%% false positives", n, 100*float64(fp)/probes)
		if n == 100 && fp > probes/10 {
			t.Errorf("%d%% false positives with 100 UAIDs", fp*100/probes)
		}
	}
	if !Digest(nil).MayHold("x") {
		t.Error("an unreported digest must not rule a UAID out")
	}
}

func TestIDOf(t *testing.T) {
	if IDOf("gw-1") == IDOf("gw-2") || IDOf("gw-1") != IDOf("gw-1") || IDOf("") == 0 {
		t.Fatal("IDOf")
	}
}

// FuzzDecodeMeta: DecodeMeta never panics, and what it accepts encodes
// back to what decodes the same.
func FuzzDecodeMeta(f *testing.F) {
	g, _ := hex.DecodeString(goldenHex)
	f.Add(g)
	b, _ := EncodeMeta(Meta{Name: "a", Leaving: true})
	f.Add(b)
	f.Add([]byte{1, 99, 3, 'x', 'y', 'z'})
	f.Add([]byte{1, tagSocketDigest, 0x80, 0x01})
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := DecodeMeta(in)
		if err != nil {
			return
		}
		out, err := EncodeMeta(m)
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", m, err)
		}
		m2, err := DecodeMeta(out)
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip: %+v / %+v, %v", m, m2, err)
		}
		if len(out) > len(in) && !bytes.Equal(out, in) {
			// Re-encoding drops unknown fields and empty values; it
			// never grows (digests are kept as they came).
			t.Fatalf("re-encoding grew %d → %d bytes", len(in), len(out))
		}
	})
}

// The keys' fingerprints are fields 20 and 21, 8 bytes each; a wrong
// length is refused, as for the raft id.
func TestMetaKeyFingerprints(t *testing.T) {
	in := Meta{Name: "a", EndpointKey: 0x0102030405060708, WakeKey: 0xfffefdfcfbfaf9f8}
	b, err := EncodeMeta(in)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte{tagEndpointKey, 8, 1, 2, 3, 4, 5, 6, 7, 8}) || !bytes.Contains(b, []byte{tagWakeKey, 8, 0xff, 0xfe}) {
		t.Fatalf("encoding %x", b)
	}
	m, err := DecodeMeta(b)
	if err != nil || !reflect.DeepEqual(m, in) {
		t.Fatalf("decoded %+v, %v", m, err)
	}
	bad := append(append([]byte(nil), b[:len(b)-20]...), tagEndpointKey, 7, 1, 2, 3, 4, 5, 6, 7)
	if _, err := DecodeMeta(bad); !errors.Is(err, ErrMetaField) {
		t.Fatalf("7-byte fingerprint: %v", err)
	}
}
