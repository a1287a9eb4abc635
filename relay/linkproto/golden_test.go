package linkproto

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
)

// The worked examples of docs/relay-link.md: each fenced block whose info
// string is "hex NAME" holds the bytes of example NAME (text after '#' on
// a line is commentary). The test encodes each value and compares, and
// decodes the doc's bytes back to the value, so the doc cannot drift.
const docPath = "../../docs/relay-link.md"

func fill(b byte) (a [16]byte) {
	for i := range a {
		a[i] = b
	}
	return a
}

var (
	uaidA = push.UAID(fill(0xaa))
	uaidB = push.UAID(fill(0xbb))
	chan1 = push.ChannelID(fill(0x01))
	chan2 = push.ChannelID(fill(0x02))
)

func digestOf(pairs ...[2][16]byte) Digest {
	var d Digest
	for _, p := range pairs {
		d.Add(p[0], p[1])
	}
	return d
}

func parentID(n byte) push.Origin {
	return push.ParentOrigin([]byte{0, 0, 0, 0, 0, 0, 1, n})
}

// examples are the documented frames, by name.
func examples() map[string]Frame {
	key := append([]byte{0x04}, bytes.Repeat([]byte{0x42}, 64)...)
	return map[string]Frame{
		"hello": &Hello{
			Versions: []uint64{1}, Name: "edge-1", Resume: 41, MaxUpdate: MinUpdatePayload,
			Digest: digestOf([2][16]byte{uaidA, chan1}, [2][16]byte{uaidA, chan2}, [2][16]byte{uaidB, chan1}),
			Auth:   bytes.Repeat([]byte{0x5a}, 32),
		},
		"welcome": &Welcome{
			Version: 1, Name: "core", Next: 42, DataStreams: 4, Resync: true,
			Digest: digestOf([2][16]byte{uaidA, chan1}, [2][16]byte{uaidA, chan2}),
		},
		"refuse":       &Refuse{Code: CodeUnknownChild, Reason: "no trusted certificate"},
		"register":     &Register{ID: 7, UAID: uaidA, Channel: chan1, Key: key},
		"registered":   &Registered{ID: 7, Status: StatusOK, Endpoint: "https://push.example.net/wpush/v2/gAAAAABm"},
		"unregister":   &Unregister{ID: 8, UAID: uaidA, Channel: chan2},
		"unregistered": &Unregistered{ID: 8, Status: StatusOK},
		"forget":       &Forget{ID: 9, UAID: uaidB},
		"forgotten":    &Forgotten{ID: 9, Status: StatusOK},
		"credit":       &Credit{Bytes: 1 << 20, Messages: 4096},
		"ack":          &Ack{Seq: 41},
		"broadcast":    &Broadcast{Versions: map[string]string{"remote-settings/monitor_changes": "v1700", "fxa": "42"}},
		"resync": &Resync{Low: push.UAID{}, High: maxUAID, Entries: []ResyncEntry{
			{UAID: uaidA, Channels: []push.ChannelID{chan1, chan2}},
		}},
		"goaway": &GoAway{Code: CodeShutdown, LastSeq: 57, Reason: "restarting"},
		"update": &Update{Seq: 42, Messages: []push.Message{
			{UAID: uaidA, Channel: chan1, Origin: parentID(1), TTL: 60 * time.Second, Urgency: push.UrgencyHigh,
				Encoding: "aes128gcm", Data: []byte{0xde, 0xad, 0xbe, 0xef}},
			{UAID: uaidA, Channel: chan2, Origin: parentID(2), TTL: time.Hour, Topic: "news",
				Encoding: "aes128gcm", Data: []byte{1, 2, 3}},
			{UAID: uaidB, Channel: chan1, Origin: parentID(3), Urgency: push.UrgencyVeryLow, Version: 5},
		}},
	}
}

// docExamples reads the hex blocks of the doc.
func docExamples(t *testing.T) map[string][]byte {
	t.Helper()
	f, err := os.Open(docPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]byte{}
	name := ""
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		l := sc.Text()
		switch {
		case name == "" && strings.HasPrefix(l, "```hex "):
			name = strings.TrimSpace(strings.TrimPrefix(l, "```hex "))
			if _, dup := out[name]; dup {
				t.Fatalf("%s:%d: example %q twice", docPath, line, name)
			}
			out[name] = []byte{}
		case name != "" && strings.HasPrefix(l, "```"):
			name = ""
		case name != "":
			if i := strings.IndexByte(l, '#'); i >= 0 {
				l = l[:i]
			}
			b, err := hex.DecodeString(strings.Join(strings.Fields(l), ""))
			if err != nil {
				t.Fatalf("%s:%d: %v", docPath, line, err)
			}
			out[name] = append(out[name], b...)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestDocExamples(t *testing.T) {
	doc := docExamples(t)
	for name, f := range examples() {
		want, ok := doc[name]
		if !ok {
			t.Errorf("example %q is not in %s", name, docPath)
			continue
		}
		got, err := Append(nil, f)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: encodes to\n%s\nthe doc has\n%s", name, hex.Dump(got), hex.Dump(want))
		}
		back, n, err := Decode(want)
		if err != nil || n != len(want) || !reflect.DeepEqual(back, f) {
			t.Errorf("%s: the doc's bytes decode to %#v, %d, %v", name, back, n, err)
		}
	}
	for name := range doc {
		if _, ok := examples()[name]; !ok {
			t.Errorf("%s has example %q the test does not know", docPath, name)
		}
	}
}

// TestPrintExamples prints the examples' bytes, for writing the doc:
// LINKPROTO_PRINT=1 go test -run TestPrintExamples -v ./relay/linkproto
func TestPrintExamples(t *testing.T) {
	if os.Getenv("LINKPROTO_PRINT") == "" {
		t.Skip("set LINKPROTO_PRINT=1")
	}
	for name, f := range examples() {
		b, _ := Append(nil, f)
		fmt.Printf("== %s (%d bytes)\n%s", name, len(b), hex.Dump(b))
	}
}

// TestDocLimits checks the doc's table of frame types against the code.
func TestDocLimits(t *testing.T) {
	doc, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, l := range strings.Split(string(doc), "\n") {
		f := strings.Split(l, "|")
		if len(f) != 7 || !strings.HasPrefix(strings.TrimSpace(f[1]), "0x") {
			continue
		}
		var typ uint64
		if _, err := fmt.Sscanf(strings.TrimSpace(f[1]), "0x%x", &typ); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		ft := FrameType(typ)
		if !ft.Known() || strings.TrimSpace(f[2]) != ft.String() {
			t.Errorf("doc row %q: code says %s", l, ft)
			continue
		}
		seen++
		limit := strings.ReplaceAll(strings.TrimSpace(f[5]), ",", "")
		want := fmt.Sprint(ft.MaxPayload())
		if ft == TypeUpdate {
			want = "1 MiB"
			limit = limit[:5]
		}
		if limit != want {
			t.Errorf("doc says %s payload limit %q, code %s", ft, limit, want)
		}
		sender := map[Side]string{Child: "child", Parent: "parent", 0: "either"}[ft.Sender()]
		stream := map[Stream]string{StreamControl: "control", StreamData: "data"}[ft.Stream()]
		if strings.TrimSpace(f[3]) != stream || strings.TrimSpace(f[4]) != sender {
			t.Errorf("doc row %q: code says %s stream, sent by %s", l, stream, sender)
		}
	}
	if seen != len(types) {
		t.Errorf("doc lists %d frame types, code has %d", seen, len(types))
	}
}

// TestDocCodes checks the doc's table of codes against Code.String.
func TestDocCodes(t *testing.T) {
	doc, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, l := range strings.Split(string(doc), "\n") {
		f := strings.Split(l, "|")
		if len(f) != 5 || !strings.HasPrefix(strings.TrimSpace(f[1]), "0x") {
			continue
		}
		var c uint64
		if _, err := fmt.Sscanf(strings.TrimSpace(f[1]), "0x%x", &c); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		if got := Code(c).String(); got != strings.TrimSpace(f[2]) {
			t.Errorf("doc names code 0x%x %q, code %q", c, strings.TrimSpace(f[2]), got)
		}
		seen++
	}
	if seen != len(codeText) {
		t.Errorf("doc lists %d codes, code has %d", seen, len(codeText))
	}
}
