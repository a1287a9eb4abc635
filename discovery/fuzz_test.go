package discovery

import (
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/pushrelay/pushrelay/relay/metrics"
)

// fuzzRegistry knows the test devices and accepts every bind without keeping
// it, so that a long fuzzing run doesn't grow.
type fuzzRegistry map[string]string

func (r fuzzRegistry) Key(username string) ([]byte, error) {
	if k, ok := r[username]; ok {
		return []byte(k), nil
	}
	return nil, ErrUnknownUser
}

func (r fuzzRegistry) Bind(username string, _ netip.AddrPort, _ time.Time) error {
	if _, ok := r[username]; !ok {
		return ErrUnknownUser
	}
	return nil
}

// fuzzSeeds are real frames: the RFC 5769 vectors, our device's request and
// plain requests. testdata/fuzz/FuzzServerPacket holds frozen copies.
func fuzzSeeds(t testing.TB) [][]byte {
	auth, _ := newRequest(t, testUAID, testKey, testStamp)
	padded, _ := paddedPlainRequest(t)
	bare := build(t, stun.BindingRequest, stun.TransactionID)
	return [][]byte{rfcRequest, rfcResponse4, rfcResponse6, auth, padded, bare}
}

// FuzzServerPacket feeds arbitrary datagrams through the server's per-packet
// handling, from an IPv4 and an IPv6 source. No input may panic, get an
// answer larger than itself, or get one that doesn't parse as the Binding
// success response to it, carrying its source.
func FuzzServerPacket(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	reg := fuzzRegistry{testUAID: testKey, otherUAID: otherKey, rfcUser: rfcPassword}
	cfg := Config{Registry: reg, Now: func() time.Time { return testStamp }}.withDefaults()
	h := newHandler(cfg, newServerMetrics(cfg.Metrics))
	// Rate limiting is tested elsewhere; here it would hide the rest.
	h.limit = newLimiter(1e12, 1<<30, maxSources, testStamp, metrics.NewRegistry().Gauge("g", ""))
	srcs := []netip.AddrPort{
		netip.MustParseAddrPort("192.0.2.1:40000"),
		netip.MustParseAddrPort("[2001:db8::1]:40000"),
	}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		orig := string(pkt)
		for _, src := range srcs {
			resp := h.handle(pkt, src)
			if string(pkt) != orig {
				t.Fatal("handle modified its input")
			}
			if resp == nil {
				continue
			}
			if len(resp) > len(pkt) {
				t.Fatalf("answer of %d bytes to %d bytes from %v", len(resp), len(pkt), src)
			}
			var txID [12]byte
			copy(txID[:], pkt[8:20])
			password := ""
			if m := stun.New(); stun.Decode(pkt, m) == nil {
				if u, err := m.Get(stun.AttrUsername); err == nil {
					password = reg[string(u)]
				}
			}
			got, err := ParseBindingResponse(resp, txID, password)
			if err != nil || got != src {
				t.Fatalf("answer to %x from %v: %v, %v", pkt, src, got, err)
			}
		}
	})
}

// FuzzParseBindingResponse checks that no input panics the device's parser
// and that what it accepts is STUN carrying a usable address.
func FuzzParseBindingResponse(f *testing.F) {
	f.Add(rfcResponse4)
	f.Add(rfcResponse6)
	f.Add(rfcRequest)
	for _, r := range serverResponses(f) {
		f.Add(r)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var txID [12]byte
		if len(b) >= 20 {
			copy(txID[:], b[8:20])
		}
		for _, password := range []string{rfcPassword, testKey, ""} {
			ap, err := ParseBindingResponse(b, txID, password)
			if err != nil {
				continue
			}
			if !IsSTUN(b) || !ap.IsValid() || ap.Addr().Is4In6() {
				t.Fatalf("accepted %x under %q: %v", b, password, ap)
			}
		}
	})
}

// serverResponses are the server's answers to our device's request and to a
// padded plain request.
func serverResponses(t testing.TB) [][]byte {
	h, _ := newTestHandler(t, newTestRegistry())
	src := netip.MustParseAddrPort("192.0.2.1:40000")
	auth, _ := newRequest(t, testUAID, testKey, testStamp)
	padded, _ := paddedPlainRequest(t)
	a := append([]byte(nil), h.handle(auth, src)...)
	p := append([]byte(nil), h.handle(padded, src)...)
	return [][]byte{a, p}
}

// TestFuzzCorpusIsLive keeps the frozen seeds useful: the device's request
// and the padded plain request in testdata must still be answered, or the
// fuzzer would start far from the code that matters.
func TestFuzzCorpusIsLive(t *testing.T) {
	for _, name := range []string{"device-request", "plain-padded"} {
		b, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzServerPacket", name))
		if err != nil {
			t.Fatal(err)
		}
		_, lit, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
		s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lit, "[]byte("), ")"))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		h, _ := newTestHandler(t, newTestRegistry())
		if h.handle([]byte(s), netip.MustParseAddrPort("192.0.2.1:40000")) == nil {
			t.Errorf("%s is not answered", name)
		}
	}
}
