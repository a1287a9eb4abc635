package pushproto

import (
	"reflect"
	"strings"
	"testing"
)

const testChan = "0b5a9d4e-3c5b-4f7e-8a7b-2a2f3f4e5d6c"

// The canonical-ack decoder either declines or agrees with encoding/json.
func checkAckAgrees(t *testing.T, frame []byte) (fast bool) {
	t.Helper()
	a, ok := decodeCanonicalAck(frame)
	if !ok {
		return false
	}
	slow, err := decodeClientJSON(frame)
	if err != nil {
		t.Fatalf("fast path accepted what encoding/json refuses (%v): %q", err, frame)
	}
	if !reflect.DeepEqual(slow, a) {
		t.Fatalf("fast path %+v, encoding/json %+v, for %q", a, slow, frame)
	}
	return true
}

func TestCanonicalAck(t *testing.T) {
	upd := func(v string, code string) string {
		return `{"channelID":"` + testChan + `","version":"` + v + `","code":` + code + `}`
	}
	frame := func(us ...string) string {
		return `{"messageType":"ack","updates":[` + strings.Join(us, ",") + `]}`
	}
	fast := []string{
		realFrames[7],
		frame(upd("gAAAAABk", "100")),
		frame(upd("gAAAAABk", "100"), upd("x-_=.~", "102"), upd("v", "0")),
		frame(upd("v", "-7")),
		frame(upd("v", "999999999")),
		frame(upd(strings.Repeat("a", MaxVersionLen), "100")),
		string(EncodeAck([]AckUpdate{{ChannelID: testChan, Version: "AbC", Code: 100}, {ChannelID: testChan, Version: "d", Code: 101}})),
	}
	for _, f := range fast {
		if !checkAckAgrees(t, []byte(f)) {
			t.Errorf("canonical ack not taken by the fast path: %s", f)
		}
		m, err := DecodeClient([]byte(f))
		if _, ok := m.(Ack); !ok || err != nil {
			t.Errorf("DecodeClient(%s) = %#v, %v", f, m, err)
		}
	}
	// Valid but not canonical, or invalid: declined here, decided by
	// encoding/json.
	slow := []string{
		frame(),
		frame(upd("v", "100")) + " ",
		`{"messageType":"ack", "updates":[` + upd("v", "100") + `]}`,
		frame(upd("v", "100") + " "),
		frame(upd(`a\"b`, "100")),
		frame(upd("é", "100")),
		frame(upd("", "100")),
		frame(upd(strings.Repeat("a", MaxVersionLen+1), "100")),
		frame(upd("v", "0100")),
		frame(upd("v", "1e2")),
		frame(upd("v", "1.0")),
		frame(upd("v", `"100"`)),
		frame(upd("v", "2147483648")),
		frame(upd("v", "1000000000")),
		frame(upd("v", "-")),
		frame(`{"channelID":"` + testChan + `","version":17,"code":100}`),
		frame(`{"channelID":"` + testChan + `","version":"v"}`),
		frame(`{"version":"v","channelID":"` + testChan + `","code":100}`),
		frame(`{"channelID":"` + strings.ToUpper(testChan) + `","version":"v","code":100}`),
		frame(upd("v", "100")+",", upd("v", "100")),
		frame(upd("v", "100"), ""),
		frame(upd("v", "100")) + "}",
		frame(upd("v", "100"))[:len(frame(upd("v", "100")))-1],
		`{"messageType":"ack","updates":[` + upd("v", "100") + `],"extra":1}`,
		`{"messageType":"ack","updates":[` + upd(`{"channelID":"`, "100") + `]}`,
	}
	for _, f := range slow {
		if checkAckAgrees(t, []byte(f)) {
			t.Errorf("fast path took a frame it should leave to encoding/json: %s", f)
		}
	}
	many := make([]string, MaxAckUpdates+1)
	for i := range many {
		many[i] = upd("v", "100")
	}
	if checkAckAgrees(t, []byte(frame(many...))) {
		t.Error("fast path took more than MaxAckUpdates updates")
	}
	if !checkAckAgrees(t, []byte(frame(many[1:]...))) {
		t.Error("fast path declined MaxAckUpdates updates")
	}
}

func FuzzCanonicalAck(f *testing.F) {
	f.Add([]byte(realFrames[7]))
	f.Add(EncodeAck([]AckUpdate{{ChannelID: testChan, Version: "AbC", Code: 100}, {ChannelID: testChan, Version: "d", Code: -101}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		checkAckAgrees(t, b)
	})
}

func BenchmarkDecodeAck(b *testing.B) {
	frame := EncodeAck([]AckUpdate{{ChannelID: testChan, Version: strings.Repeat("gAAAAABk", 12), Code: 100}})
	b.Run("canonical", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeClient(frame); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decodeClientJSON(frame); err != nil {
				b.Fatal(err)
			}
		}
	})
}
