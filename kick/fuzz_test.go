package kick

import (
	"bytes"
	"testing"

	"github.com/pushrelay/pushrelay/relay/push"
)

// FuzzVerify feeds arbitrary datagrams to the device-side check: nothing
// but a datagram made with the key verifies, and nothing panics.
func FuzzVerify(f *testing.F) {
	keys, _ := NewKeys(make([]byte, 32))
	u := push.UAID{0xd0, 15: 1}
	key := keys.Key(u)
	good := appendAuth(nil, key, u, 1_763_000_000_000_000)
	f.Add(good)
	f.Add([]byte("NOTIFY 127.0.0.5:5000"))
	f.Add(good[:AuthSize-1])
	f.Add(append(append([]byte(nil), good...), 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		counter, ok := Verify(key, u, b)
		if ok && !bytes.Equal(b, appendAuth(nil, key, u, counter)) {
			t.Fatalf("verified %x, which is not the datagram for counter %d", b, counter)
		}
	})
}

// FuzzDecodeRecord: a wake blob that decodes encodes back to itself.
func FuzzDecodeRecord(f *testing.F) {
	f.Add([]byte{})
	f.Add((&record{auth: true, network: "214-07"}).encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRecord(b)
		if err != nil || len(b) == 0 {
			return
		}
		again, err := decodeRecord(r.encode())
		if err != nil || again != r {
			t.Fatalf("%x: %+v re-decoded as %+v (%v)", b, r, again, err)
		}
	})
}
