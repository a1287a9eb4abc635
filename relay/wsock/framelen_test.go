package wsock

import (
	"encoding/binary"
	"testing"
)

// FuzzFrameLen: the header parser Whole uses on bytes straight off the
// socket never panics, and a length it reports covers the header it read.
func FuzzFrameLen(f *testing.F) {
	f.Add([]byte{0x81, 0x96, 1, 2, 3, 4})                // a masked 22-byte text frame (a ping message)
	f.Add([]byte{0x8a, 0x80, 1, 2, 3, 4})                // a masked empty pong
	f.Add([]byte{0x81, 0xfe, 0x04, 0x00, 1, 2, 3, 4})    // 1 KiB announced
	f.Add([]byte{0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0}) // 2^63 announced
	f.Add([]byte{0x81})
	f.Fuzz(func(t *testing.T, b []byte) {
		n, ok := frameLen(b)
		if !ok {
			return
		}
		if n < 2 {
			t.Fatalf("frameLen(%x) = %d", b, n)
		}
		if b[1]&0x7f == 126 && n != 4+int(binary.BigEndian.Uint16(b[2:4]))+int(b[1]>>7)*4 {
			t.Fatalf("frameLen(%x) = %d", b, n)
		}
	})
}
