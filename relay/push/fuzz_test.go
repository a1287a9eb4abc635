package push

import (
	"bytes"
	"testing"
)

// DecodeOrigin takes any bytes without panicking; what it accepts is at
// most 1+MaxOriginID bytes and encodes back to the same bytes.
func FuzzDecodeOrigin(f *testing.F) {
	f.Add([]byte{1, 0xaa})
	f.Add([]byte{2})
	f.Add(append([]byte{3}, bytes.Repeat([]byte{7}, MaxOriginID+1)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := DecodeOrigin(b)
		if err != nil {
			return
		}
		if len(b) > 1+MaxOriginID {
			t.Fatalf("accepted %d bytes", len(b))
		}
		back, err := o.AppendBinary(nil)
		if err != nil || !bytes.Equal(back, b) {
			t.Fatalf("%x decodes to %v, encodes to %x, %v", b, o, back, err)
		}
	})
}
