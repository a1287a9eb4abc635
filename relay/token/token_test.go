package token

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func testCodec(t testing.TB, fill byte) *Codec {
	t.Helper()
	c, err := New(bytes.Repeat([]byte{fill}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestEndpointRoundTrip(t *testing.T) {
	c := testCodec(t, 1)
	e := Endpoint{UAID: [16]byte{1, 2, 3}, Channel: [16]byte{9, 8, 7}}
	tok := c.SealEndpoint(e)
	if strings.ContainsAny(tok, "+/=") {
		t.Fatalf("token is not base64url without padding: %s", tok)
	}
	got, err := c.OpenEndpoint(1, tok)
	if err != nil || got.UAID != e.UAID || got.Channel != e.Channel || got.KeyHash != nil {
		t.Fatalf("OpenEndpoint = %+v, %v", got, err)
	}
	if c.SealEndpoint(e) != tok {
		t.Fatal("the same subscription must get the same token")
	}
	if _, err := c.OpenEndpoint(2, tok); !errors.Is(err, ErrInvalid) {
		t.Fatalf("v1 token opened as v2: %v", err)
	}

	h := sha256.Sum256([]byte("key"))
	e.KeyHash = &h
	tok2 := c.SealEndpoint(e)
	got, err = c.OpenEndpoint(2, tok2)
	if err != nil || *got.KeyHash != h {
		t.Fatalf("v2 = %+v, %v", got, err)
	}
	if _, err := c.OpenEndpoint(1, tok2); !errors.Is(err, ErrInvalid) {
		t.Fatalf("v2 token opened as v1: %v", err)
	}
}

func TestForgeries(t *testing.T) {
	c := testCodec(t, 1)
	other := testCodec(t, 2)
	e := Endpoint{UAID: [16]byte{1}, Channel: [16]byte{2}}
	tok := c.SealEndpoint(e)
	id := c.SealMessageID(MessageID{UAID: e.UAID, Channel: e.Channel, Seq: 7})
	raw, _ := b64.DecodeString(tok)
	for i := range raw {
		flipped := append([]byte(nil), raw...)
		flipped[i] ^= 0x40
		if _, err := c.OpenEndpoint(1, b64.EncodeToString(flipped)); err == nil {
			t.Fatalf("token with byte %d flipped was accepted", i)
		}
	}
	for _, bad := range []string{"", "x", tok[:len(tok)-2], strings.Repeat("A", 600), "!!!!"} {
		if _, err := c.OpenEndpoint(1, bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("OpenEndpoint(%.20q) = %v", bad, err)
		}
	}
	if _, err := other.OpenEndpoint(1, tok); err == nil {
		t.Fatal("token opened under another key")
	}
	if _, err := c.OpenEndpoint(1, id); err == nil {
		t.Fatal("message id accepted as an endpoint token")
	}
	if _, err := c.OpenMessageID(tok); err == nil {
		t.Fatal("endpoint token accepted as a message id")
	}
}

func TestMessageID(t *testing.T) {
	c := testCodec(t, 3)
	m := MessageID{UAID: [16]byte{5}, Channel: [16]byte{6}, Seq: 1<<40 + 3}
	got, err := c.OpenMessageID(c.SealMessageID(m))
	if err != nil || got != m {
		t.Fatalf("OpenMessageID = %+v, %v", got, err)
	}
}

func TestKeyFileRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys", "endpoint.key")
	c1, err := LoadOrCreate(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", st.Mode(), err)
	}
	c1again, err := LoadOrCreate(path)
	if err != nil {
		t.Fatal(err)
	}
	e := Endpoint{UAID: [16]byte{1}, Channel: [16]byte{1}}
	old := c1.SealEndpoint(e)
	if _, err := c1again.OpenEndpoint(1, old); err != nil {
		t.Fatal("a reloaded key file must open its own tokens")
	}
	// Rotate: a new first line seals; the old line still opens.
	data, _ := os.ReadFile(path)
	newKey := b64.EncodeToString(bytes.Repeat([]byte{9}, KeySize))
	os.WriteFile(path, append([]byte("# rotated\n"+newKey+"\n"), data...), 0o600)
	c2, err := LoadOrCreate(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c2.OpenEndpoint(1, old); err != nil {
		t.Fatal("old token rejected after rotation")
	}
	if c2.SealEndpoint(e) == old {
		t.Fatal("rotation did not change the sealing key")
	}
	os.WriteFile(path, []byte("garbage\n"), 0o600)
	if _, err := LoadOrCreate(path); !errors.Is(err, ErrKeyFile) {
		t.Fatalf("bad key file: %v", err)
	}
}

func FuzzOpenEndpoint(f *testing.F) {
	c := testCodec(f, 1)
	h := sha256.Sum256([]byte("k"))
	f.Add(1, c.SealEndpoint(Endpoint{UAID: [16]byte{1}}))
	f.Add(2, c.SealEndpoint(Endpoint{UAID: [16]byte{1}, KeyHash: &h}))
	f.Add(1, "gAAAAABkZ3Yw")
	f.Fuzz(func(t *testing.T, v int, s string) {
		e, err := c.OpenEndpoint(v, s)
		if err != nil {
			return
		}
		// Anything that opens must re-seal to an equivalent token.
		if got, err := c.OpenEndpoint(e.Version(), c.SealEndpoint(e)); err != nil || got.UAID != e.UAID {
			t.Fatalf("reseal of %+v failed: %v", e, err)
		}
	})
}

func FuzzOpenMessageID(f *testing.F) {
	c := testCodec(f, 1)
	f.Add(c.SealMessageID(MessageID{Seq: 1}))
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = c.OpenMessageID(s)
	})
}

func BenchmarkSealMessageID(b *testing.B) {
	c := testCodec(b, 1)
	for i := 0; i < b.N; i++ {
		c.SealMessageID(MessageID{Seq: uint64(i)})
	}
}
