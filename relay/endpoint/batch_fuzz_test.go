package endpoint

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/pushrelay/pushrelay/relay/token"
)

// FuzzDecodeBatch feeds batch bodies (seeded with real ones from
// testdata/batch and one addressed to a real endpoint) to the decoder and
// each decoded message to the per-message validation: neither panics,
// every refusal is a documented status and errno, a decoded batch holds
// between one and the maximum of messages and survives a round trip, and
// an accepted message is within the single post's limits.
func FuzzDecodeBatch(f *testing.F) {
	files, _ := filepath.Glob("testdata/batch/*.json")
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	key := bytes.Repeat([]byte{7}, token.KeySize)
	tokens, err := token.New(key)
	if err != nil {
		f.Fatal(err)
	}
	const base = "https://push.example.net"
	ep := base + "/wpush/v1/" + tokens.SealEndpoint(token.Endpoint{UAID: [16]byte{1}, Channel: [16]byte{2}})
	seed, _ := json.Marshal(map[string]any{"messages": []any{
		map[string]any{"endpoint": ep, "ttl": 60, "encoding": "aes128gcm", "data": b64(make([]byte, 103))},
		map[string]any{"endpoint": ep, "ttl": "0", "topic": "t"},
	}})
	f.Add(seed)
	a, err := New(Config{Tokens: tokens, Pusher: failingPusher{}, PublicURL: base, BatchMaxMessages: 20})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		msgs, aerr := decodeBatch(body, a.cfg.BatchMaxMessages)
		if aerr != nil {
			if !(aerr.Code == 400 && aerr.Errno == 124 || aerr.Code == 413 && aerr.Errno == 104) {
				t.Fatalf("decodeBatch refused with %v", aerr)
			}
			return
		}
		if len(msgs) == 0 || len(msgs) > a.cfg.BatchMaxMessages {
			t.Fatalf("decoded %d messages", len(msgs))
		}
		again, _ := json.Marshal(batchRequest{Messages: msgs})
		back, aerr := decodeBatch(again, a.cfg.BatchMaxMessages)
		if aerr != nil || !reflect.DeepEqual(normalize(back), normalize(msgs)) {
			t.Fatalf("round trip: %v\n%+v\n%+v", aerr, back, msgs)
		}
		for _, auth := range []batchAuth{{token: true}, {}} {
			for i := range msgs {
				m, aerr := a.parseBatchMessage(&msgs[i], auth)
				if aerr != nil {
					if code, ok := knownErrnos[aerr.Errno]; !ok || code != aerr.Code {
						t.Fatalf("message %d refused with %v", i, aerr)
					}
					continue
				}
				if m.TTL < 0 || m.TTL > MaxTTL || len(m.Data) > a.cfg.MaxData || (len(m.Data) > 0) != (m.Encoding != "") {
					t.Fatalf("message %d accepted as %+v", i, m)
				}
			}
		}
	})
}

// normalize makes decoded messages comparable: a TTL's raw JSON is
// reduced to its value (spacing and string escapes vary) and an absent or
// empty one is null (which parseBatchMessage takes as absent).
func normalize(ms []batchMessage) []batchMessage {
	out := make([]batchMessage, len(ms))
	for i, m := range ms {
		var v any
		if len(m.TTL) == 0 || json.Unmarshal(m.TTL, &v) != nil {
			v = nil
		}
		m.TTL, _ = json.Marshal(v)
		out[i] = m
	}
	return out
}
