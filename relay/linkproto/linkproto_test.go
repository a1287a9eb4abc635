package linkproto

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

func TestVarint(t *testing.T) {
	for _, tc := range []struct {
		v   uint64
		hex []byte
	}{
		// RFC 9000 appendix A.1's examples.
		{151288809941952652, []byte{0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c}},
		{494878333, []byte{0x9d, 0x7f, 0x3e, 0x7d}},
		{15293, []byte{0x7b, 0xbd}},
		{37, []byte{0x25}},
		{0, []byte{0}},
		{63, []byte{0x3f}},
		{64, []byte{0x40, 0x40}},
		{MaxVarint, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}},
	} {
		got := AppendVarint(nil, tc.v)
		if !bytes.Equal(got, tc.hex) || VarintLen(tc.v) != len(got) {
			t.Errorf("%d encodes to %x, want %x", tc.v, got, tc.hex)
		}
		v, n, err := ReadVarint(append(got, 0xaa))
		if v != tc.v || n != len(got) || err != nil {
			t.Errorf("%x decodes to %d, %d, %v", got, v, n, err)
		}
		for i := range len(got) {
			if _, _, err := ReadVarint(got[:i]); !errors.Is(err, ErrShort) {
				t.Errorf("%x cut to %d bytes: %v, want ErrShort", got, i, err)
			}
		}
	}
	// RFC 9000 shows 37 also as 0x4025; the link accepts only the
	// shortest form.
	if _, _, err := ReadVarint([]byte{0x40, 0x25}); !errors.Is(err, ErrMalformed) {
		t.Errorf("non-minimal varint: %v", err)
	}
	if VarintLen(MaxVarint+1) != 0 {
		t.Error("VarintLen above 2^62-1")
	}
}

// Every example round-trips, and every prefix of it is ErrShort.
func TestRoundTripAndShort(t *testing.T) {
	for name, f := range examples() {
		b, err := Append([]byte("prefix"), f)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b = b[len("prefix"):]
		for i := range len(b) {
			if _, _, err := Decode(b[:i]); !errors.Is(err, ErrShort) {
				t.Fatalf("%s cut to %d of %d bytes: %v, want ErrShort", name, i, len(b), err)
			}
		}
		got, n, err := Decode(append(b, 0x09, 0x01))
		if err != nil || n != len(b) || !reflect.DeepEqual(got, f) {
			t.Fatalf("%s: decodes to %#v, %d, %v", name, got, n, err)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	ack := []byte{0x09, 0x01, 0x29}
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"unknown type", []byte{0x3f, 0x00}, ErrUnknownType},
		{"unknown type before its length", []byte{0x3f}, ErrUnknownType},
		{"huge length refused from the header", []byte{0x10, 0xbf, 0xff, 0xff, 0xff}, ErrTooLarge},
		{"ack payload over its limit", []byte{0x09, 0x09}, ErrTooLarge},
		{"trailing byte", []byte{0x09, 0x02, 0x29, 0x00}, ErrMalformed},
		{"varint past the payload", []byte{0x09, 0x01, 0x40}, ErrMalformed},
		{"non-minimal length", []byte{0x09, 0x40, 0x01, 0x29}, ErrMalformed},
		{"non-minimal value", []byte{0x09, 0x02, 0x40, 0x29}, ErrMalformed},
		{"welcome with unknown flag", mustAppend(t, &Welcome{Version: 1, Name: "p", DataStreams: 1}, func(b []byte) { b[7] = 2 }), ErrMalformed},
		{"refuse reason over its limit", append([]byte{0x03, 0x44, 0x02, 0x00, 0x44, 0x01}, bytes.Repeat([]byte{'x'}, 257)...), ErrTooLarge},
		{"registered status 0", []byte{0x05, 0x03, 0x07, 0x00, 0x00}, ErrMalformed},
		{"broadcast ids out of order", []byte{0x0a, 0x09, 0x02, 0x01, 'b', 0x01, '1', 0x01, 'a', 0x01, '1'}, ErrMalformed},
		{"broadcast count beyond the bytes", []byte{0x0a, 0x03, 0x44, 0x01, 0x00}, ErrTooLarge},
	} {
		_, _, err := Decode(tc.b)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %x: %v, want %v", tc.name, tc.b, err, tc.want)
		}
		if _, _, err := Decode(ack); err != nil {
			t.Fatal(err)
		}
	}
}

func mustAppend(t *testing.T, f Frame, edit func([]byte)) []byte {
	t.Helper()
	b, err := Append(nil, f)
	if err != nil {
		t.Fatal(err)
	}
	edit(b)
	return b
}

// The encoders refuse what the decoders would refuse, and leave the
// buffer as it was.
func TestAppendRefuses(t *testing.T) {
	long := strings.Repeat("x", 300)
	for name, f := range map[string]Frame{
		"hello without versions":  Hello{Name: "c", MaxUpdate: MinUpdatePayload},
		"hello without name":      Hello{Versions: []uint64{1}, MaxUpdate: MinUpdatePayload},
		"hello small max update":  Hello{Versions: []uint64{1}, Name: "c", MaxUpdate: 1000},
		"hello long auth":         Hello{Versions: []uint64{1}, Name: "c", MaxUpdate: MinUpdatePayload, Auth: make([]byte, 65)},
		"welcome 17 data streams": Welcome{Version: 1, Name: "p", DataStreams: 17},
		"refuse long reason":      Refuse{Reason: long},
		"register long key":       Register{Key: make([]byte, 129)},
		"registered status 42":    Registered{Status: 42},
		"ack over 2^62":           Ack{Seq: math.MaxUint64},
		"credit over 2^62":        Credit{Bytes: 1 << 62},
		"broadcast empty version": Broadcast{Versions: map[string]string{"a": ""}},
		"broadcast long id":       Broadcast{Versions: map[string]string{long: "1"}},
		"empty update":            Update{Seq: 1},
		"goaway long reason":      GoAway{Reason: long},
	} {
		b, err := Append([]byte{1, 2, 3}, f)
		if err == nil || !(errors.Is(err, ErrMalformed) || errors.Is(err, ErrTooLarge)) {
			t.Errorf("%s: %v", name, err)
		}
		if !bytes.Equal(b, []byte{1, 2, 3}) {
			t.Errorf("%s: left %x", name, b)
		}
	}
}

// The largest frames the field limits allow fit the frame limits.
func TestLimitsFit(t *testing.T) {
	long := func(n int) string { return strings.Repeat("x", n) }
	var bc = map[string]string{}
	for i := range MaxBroadcasts {
		bc[long(MaxBroadcastLen-4)+fmt.Sprintf("%04d", i)] = long(MaxBroadcastLen)
	}
	for name, f := range map[string]Frame{
		"hello": Hello{Versions: []uint64{MaxVarint, MaxVarint, MaxVarint, MaxVarint, MaxVarint, MaxVarint, MaxVarint, MaxVarint},
			Name: long(MaxNameLen), Resume: MaxVarint, MaxUpdate: MaxUpdatePayload, Auth: make([]byte, MaxAuthLen)},
		"welcome":      Welcome{Version: MaxVarint, Name: long(MaxNameLen), Next: MaxVarint, DataStreams: MaxDataStreams, Resync: true},
		"refuse":       Refuse{Code: MaxVarint, Reason: long(MaxReasonLen)},
		"register":     Register{ID: MaxVarint, SimplePush: true, Key: make([]byte, MaxKeyLen)},
		"registered":   Registered{ID: MaxVarint, Status: 599, Endpoint: long(MaxEndpointLen)},
		"unregister":   Unregister{ID: MaxVarint},
		"unregistered": Unregistered{ID: MaxVarint, Status: 599},
		"forget":       Forget{ID: MaxVarint},
		"forgotten":    Forgotten{ID: MaxVarint, Status: 599},
		"credit":       Credit{Bytes: MaxVarint, Messages: MaxVarint},
		"ack":          Ack{Seq: MaxVarint},
		"broadcast":    Broadcast{Versions: bc},
		"goaway":       GoAway{Code: MaxVarint, LastSeq: MaxVarint, Reason: long(MaxReasonLen)},
		"resync":       fullResync(),
	} {
		b, err := Append(nil, f)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if _, n, err := Decode(b); err != nil || n != len(b) {
			t.Errorf("%s: %d bytes decode: %v", name, len(b), err)
		}
	}
}

func TestReader(t *testing.T) {
	var stream []byte
	var want []Frame
	for _, name := range []string{"hello", "credit", "register", "ack", "broadcast", "resync", "goaway"} {
		f := examples()[name]
		want = append(want, f)
		stream, _ = Append(stream, f)
	}
	// Fed one byte at a time and in uneven pieces, the same frames come
	// out.
	for _, piece := range []int{1, 3, 7, 64, len(stream)} {
		r := Reader{Stream: StreamControl}
		var got []Frame
		for off := 0; off < len(stream); off += piece {
			r.Feed(stream[off:min(off+piece, len(stream))])
			for {
				raw, err := r.Next()
				if errors.Is(err, ErrShort) {
					break
				}
				if err != nil {
					t.Fatalf("piece %d: %v", piece, err)
				}
				f, err := raw.Decode()
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, f)
			}
		}
		if !reflect.DeepEqual(got, want) || r.Buffered() != 0 {
			t.Fatalf("piece %d: got %d frames, %d bytes left", piece, len(got), r.Buffered())
		}
	}

	// An UPDATE on the control stream, or a control frame on a data
	// stream, is refused from its header.
	upd, _ := Append(nil, examples()["update"])
	r := Reader{Stream: StreamControl}
	r.Feed(upd[:3])
	if _, err := r.Next(); !errors.Is(err, ErrUnknownType) {
		t.Errorf("update on the control stream: %v", err)
	}
	r = Reader{Stream: StreamData}
	r.Feed([]byte{0x09, 0x01})
	if _, err := r.Next(); !errors.Is(err, ErrUnknownType) {
		t.Errorf("ack on a data stream: %v", err)
	}
	// An UPDATE larger than the child announced is refused before its
	// payload arrives.
	r = Reader{Stream: StreamData, MaxUpdate: MinUpdatePayload}
	r.Feed(AppendVarint(AppendVarint(nil, uint64(TypeUpdate)), MinUpdatePayload+1))
	if _, err := r.Next(); !errors.Is(err, ErrTooLarge) {
		t.Errorf("update over MaxUpdate: %v", err)
	}
}

func TestCodes(t *testing.T) {
	if CodeUnknownChild.String() != "unknown child" || Code(0x99).String() != "code(0x99)" {
		t.Error(CodeUnknownChild, Code(0x99))
	}
	if CodeOf(ErrTooLarge) != CodeTooLarge || CodeOf(ErrMalformed) != CodeProtocol || CodeOf(nil) != CodeNoError {
		t.Error("CodeOf")
	}
	if TypeUpdate.String() != "UPDATE" || FrameType(0x99).String() != "type(0x99)" {
		t.Error(TypeUpdate, FrameType(0x99))
	}
}

// Counts and lengths that promise more than the frame holds are refused
// before anything is allocated for them.
func TestHostileCountsAllocateLittle(t *testing.T) {
	resync := append(append([]byte{0x0b, 0x23}, make([]byte, 16)...), bytes.Repeat([]byte{0xff}, 16)...)
	for name, b := range map[string][]byte{
		"broadcast of 1024":      {0x0a, 0x03, 0x44, 0x00, 0x00},
		"resync of 4096 uaids":   append(resync, 0x50, 0x00, 0x00),
		"update of 1024 groups":  {0x10, 0x04, 0x01, 0x44, 0x00, 0x00},
		"update data of 64 KiB":  {0x10, 0x05, 0x01, 0x01, 0xaa, 0x80, 0x01},
		"hello of 2^62 versions": {0x01, 0x09, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00},
	} {
		// TotalAlloc is the process's: another goroutine (the race
		// detector's, a test helper's) may allocate during one decode, so
		// the least of five is taken.
		least := ^uint64(0)
		for range 5 {
			var a, z runtime.MemStats
			runtime.ReadMemStats(&a)
			_, _, err := Decode(b)
			runtime.ReadMemStats(&z)
			if err == nil || !isOurs(err) {
				t.Errorf("%s: %v", name, err)
			}
			least = min(least, z.TotalAlloc-a.TotalAlloc)
		}
		if least > 1024 {
			t.Errorf("%s: %d bytes allocated for a %d-byte frame", name, least, len(b))
		}
	}
}

func TestChooseVersion(t *testing.T) {
	if v, ok := ChooseVersion([]uint64{3, 1}, []uint64{Version, 2}); v != 1 || !ok {
		t.Errorf("chose %d %v", v, ok)
	}
	if v, ok := ChooseVersion([]uint64{2, 1}, []uint64{1, 2}); v != 2 || !ok {
		t.Errorf("child's preference first: chose %d %v", v, ok)
	}
	if _, ok := ChooseVersion([]uint64{7}, []uint64{Version}); ok {
		t.Error("no common version chosen")
	}
}
