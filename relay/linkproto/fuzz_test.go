package linkproto

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/pushrelay/pushrelay/relay/push"
)

// Every decoder takes any bytes without panicking, returns one of the
// package's errors or a frame, and a frame it accepts encodes back to the
// same bytes (every frame has one encoding) and decodes to the same value.
// Decoding allocates in proportion to the input, never from a length field
// alone (allocBound).

// seedFrames are real frames: the doc's examples and a few more.
func seedFrames() map[string][]byte {
	out := map[string][]byte{}
	for name, f := range examples() {
		out[name], _ = Append(nil, f)
	}
	out["update64"] = update64(nilTB{})
	var rs []byte
	_ = ChunkResync([]ResyncEntry{{UAID: uaidA, Channels: []push.ChannelID{chan1}}}, func(c Resync) error {
		rs, _ = Append(nil, c)
		return nil
	})
	out["resync-one"] = rs
	return out
}

// allocBound is the most a decode of n input bytes may allocate: a few
// times the input (a push.Message is ~170 bytes for a 26-byte minimal
// message, a map slot and two strings for a 4-byte broadcast entry) plus
// a constant.
func allocBound(n int) uint64 { return 64*uint64(n) + 16<<10 }

// allocated runs f and returns the bytes it allocated, measured on one
// call in 8 (runtime.ReadMemStats stops the world, which would slow the
// fuzzers tenfold); 0 on the others.
func allocated(f func()) uint64 {
	if allocCalls++; allocCalls%8 != 0 {
		f()
		return 0
	}
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

var allocCalls int

func isOurs(err error) bool {
	return errors.Is(err, ErrShort) || errors.Is(err, ErrMalformed) || errors.Is(err, ErrTooLarge) || errors.Is(err, ErrUnknownType)
}

// checkDecode is the property every frame decoder must keep.
func checkDecode(t *testing.T, b []byte) {
	var f Frame
	var n int
	var err error
	if a := allocated(func() { f, n, err = Decode(b) }); a > allocBound(len(b)) {
		t.Fatalf("decoding %d bytes allocated %d", len(b), a)
	}
	if err != nil {
		if !isOurs(err) {
			t.Fatalf("%x: foreign error %v", b, err)
		}
		return
	}
	back, err := Append(nil, f)
	if err != nil {
		t.Fatalf("%x decodes to %#v, which does not encode: %v", b[:n], f, err)
	}
	if !bytes.Equal(back, b[:n]) {
		t.Fatalf("%x decodes to %#v, encodes to %x", b[:n], f, back)
	}
	again, m, err := Decode(back)
	if err != nil || m != n || !reflect.DeepEqual(again, f) {
		t.Fatalf("%x: second decode %#v, %v", back, again, err)
	}
}

func FuzzDecode(f *testing.F) {
	for _, b := range seedFrames() {
		f.Add(b)
	}
	f.Add([]byte{0x3f, 0x00})
	f.Add([]byte{0x10, 0xbf, 0xff, 0xff, 0xff})
	f.Fuzz(checkDecode)
}

// FuzzControl fuzzes the payload of each control frame apart, so the
// fuzzer's coverage guidance works on one decoder at a time.
func FuzzControl(f *testing.F) {
	for _, b := range seedFrames() {
		raw, _, err := ParseFrame(b)
		if err == nil && raw.Type != TypeUpdate {
			f.Add(byte(raw.Type), raw.Payload)
		}
	}
	f.Fuzz(func(t *testing.T, typ byte, p []byte) {
		ft := FrameType(typ % 0x10)
		if !ft.Known() || len(p) > ft.MaxPayload() {
			return
		}
		b := AppendVarint(nil, uint64(ft))
		b = AppendVarint(b, uint64(len(p)))
		checkDecode(t, append(b, p...))
	})
}

func FuzzUpdate(f *testing.F) {
	for _, name := range []string{"update", "update64"} {
		raw, _, _ := ParseFrame(seedFrames()[name])
		f.Add(raw.Payload)
	}
	var u Update
	f.Fuzz(func(t *testing.T, p []byte) {
		var err error
		if a := allocated(func() { err = DecodeUpdate(&u, p) }); a > allocBound(len(p)) {
			t.Fatalf("decoding %d bytes allocated %d", len(p), a)
		}
		if err != nil {
			if !isOurs(err) {
				t.Fatal(err)
			}
			return
		}
		if len(u.Messages)*minMessageLen > len(p) {
			t.Fatalf("%d messages from %d bytes", len(u.Messages), len(p))
		}
		back, err := Append(nil, u)
		if err != nil {
			t.Fatal(err)
		}
		raw, _, err := ParseFrame(back)
		if err != nil || !bytes.Equal(raw.Payload, p) {
			t.Fatalf("%x decodes to %d messages, encodes to %x, %v", p, len(u.Messages), raw.Payload, err)
		}
	})
}

func FuzzResync(f *testing.F) {
	for _, name := range []string{"resync", "resync-one"} {
		raw, _, _ := ParseFrame(seedFrames()[name])
		f.Add(raw.Payload)
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		if len(p) > MaxResyncPayload {
			return
		}
		b := AppendVarint(nil, uint64(TypeResync))
		b = AppendVarint(b, uint64(len(p)))
		checkDecode(t, append(b, p...))
	})
}

func FuzzReadVarint(f *testing.F) {
	f.Add([]byte{0x25})
	f.Add([]byte{0x40, 0x25})
	f.Add([]byte{0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c})
	f.Fuzz(func(t *testing.T, b []byte) {
		v, n, err := ReadVarint(b)
		if err != nil {
			if !isOurs(err) {
				t.Fatal(err)
			}
			return
		}
		if back := AppendVarint(nil, v); !bytes.Equal(back, b[:n]) {
			t.Fatalf("%x reads as %d, writes as %x", b[:n], v, back)
		}
	})
}

// FuzzReader feeds a stream in pieces of the fuzzer's choosing: the frames
// out are the frames Decode finds in the whole stream, whatever the cuts.
func FuzzReader(f *testing.F) {
	var stream []byte
	for _, name := range []string{"hello", "credit", "register", "ack", "broadcast", "resync"} {
		stream = append(stream, seedFrames()[name]...)
	}
	f.Add(stream, []byte{1, 5, 200})
	f.Add(seedFrames()["update64"], []byte{3})
	f.Fuzz(func(t *testing.T, stream, cuts []byte) {
		var want []RawFrame
		var wantErr error
		for rest := stream; ; {
			raw, n, err := ParseFrame(rest)
			if err != nil {
				wantErr = err
				break
			}
			want = append(want, RawFrame{raw.Type, bytes.Clone(raw.Payload)})
			rest = rest[n:]
		}
		var r Reader
		var got []RawFrame
		var gotErr error
		off := 0
	feed:
		for i := 0; off < len(stream); i++ {
			piece := len(stream) - off
			if i < len(cuts) {
				piece = min(piece, int(cuts[i])+1)
			}
			r.Feed(stream[off : off+piece])
			off += piece
			for {
				raw, err := r.Next()
				if errors.Is(err, ErrShort) {
					break
				}
				if err != nil {
					gotErr = err
					break feed
				}
				got = append(got, RawFrame{raw.Type, bytes.Clone(raw.Payload)})
			}
		}
		if len(got) != len(want) || !reflect.DeepEqual(got, want) {
			t.Fatalf("reader cut %d frames, ParseFrame %d", len(got), len(want))
		}
		// Same error class, except that the reader, fed everything, has
		// seen ErrShort where the stream ends mid-frame.
		if gotErr == nil {
			gotErr = ErrShort
		}
		if !errors.Is(wantErr, ErrShort) && fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
			t.Fatalf("reader error %v, ParseFrame %v", gotErr, wantErr)
		}
	})
}

// nilTB lets seedFrames build frames outside a test.
type nilTB struct{ testing.TB }

func (nilTB) Fatal(args ...any) { panic(fmt.Sprint(args...)) }

// TestWriteCorpus writes the seed frames into testdata/fuzz, the corpus
// committed with the package:
// LINKPROTO_WRITE_CORPUS=1 go test -run TestWriteCorpus ./relay/linkproto
func TestWriteCorpus(t *testing.T) {
	if os.Getenv("LINKPROTO_WRITE_CORPUS") == "" {
		t.Skip("set LINKPROTO_WRITE_CORPUS=1")
	}
	write := func(target, name string, args ...any) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		s := "go test fuzz v1\n"
		for _, a := range args {
			switch a := a.(type) {
			case []byte:
				s += fmt.Sprintf("[]byte(%q)\n", a)
			case byte:
				s += fmt.Sprintf("byte(%q)\n", a)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for name, b := range seedFrames() {
		write("FuzzDecode", name, b)
		raw, _, _ := ParseFrame(b)
		switch raw.Type {
		case TypeUpdate:
			write("FuzzUpdate", name, raw.Payload)
		case TypeResync:
			write("FuzzResync", name, raw.Payload)
			write("FuzzControl", name, byte(raw.Type), raw.Payload)
		default:
			write("FuzzControl", name, byte(raw.Type), raw.Payload)
		}
	}
}

// FuzzUpdateBuilder packs batches the fuzzer shapes (sizes, UAIDs, frame
// size): every frame stays within MaxPayload and decodes to what was
// emitted (build checks), and each UAID's messages come back complete and
// in order.
func FuzzUpdateBuilder(f *testing.F) {
	f.Add([]byte{1, 2, 3, 200, 255, 7}, uint32(0))
	f.Add(bytes.Repeat([]byte{0xff, 0x80}, 40), uint32(900_000))
	f.Fuzz(func(t *testing.T, shape []byte, frame uint32) {
		if len(shape) > 2000 {
			return
		}
		var in []push.Message
		for i, c := range shape {
			m := msg(uaidN(int(c%7)), i, int(c)*257%(MaxData+1))
			m.Topic = strings.Repeat("t", int(c)%40)
			m.Origin = push.ParentOrigin(bytes.Repeat([]byte{c}, 1+int(c)%push.MaxOriginID))
			in = append(in, m)
		}
		ub := UpdateBuilder{MaxPayload: MinUpdatePayload + int(frame%(MaxUpdatePayload-MinUpdatePayload+1))}
		frames, next := build(t, &ub, 5, in)
		if next != 5+uint64(len(frames)) {
			t.Fatalf("%d frames, next %d", len(frames), next)
		}
		got := map[push.UAID][]push.Message{}
		for _, fr := range frames {
			for _, m := range fr.Messages {
				got[m.UAID] = append(got[m.UAID], m)
			}
		}
		want := map[push.UAID][]push.Message{}
		for _, m := range in {
			want[m.UAID] = append(want[m.UAID], m)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatal("messages lost, reordered or changed")
		}
	})
}
