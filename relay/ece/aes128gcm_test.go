package ece

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

func TestRFC8291Encrypt(t *testing.T) {
	as := mustPriv(t, rfc8291ASPrivate)
	if got := EncodeKey(as.PublicKey().Bytes()); got != rfc8291ASPublic {
		t.Fatalf("as_public = %s, want %s", got, rfc8291ASPublic)
	}
	body, err := encryptWith([]byte(rfc8291Plaintext), mustKey(t, rfc8291UAPublic),
		mustKey(t, rfc8291Auth), mustKey(t, rfc8291Salt), as)
	if err != nil {
		t.Fatal(err)
	}
	if got := EncodeKey(body); got != rfc8291Body {
		t.Errorf("body\n got %s\nwant %s", got, rfc8291Body)
	}
}

func TestRFC8291Decrypt(t *testing.T) {
	sub := mustSub(t, rfc8291UAPrivate, rfc8291Auth)
	if got := EncodeKey(sub.PublicKey()); got != rfc8291UAPublic {
		t.Fatalf("ua_public = %s, want %s", got, rfc8291UAPublic)
	}
	pt, err := Decrypt(mustKey(t, rfc8291Body), sub)
	if err != nil {
		t.Fatal(err)
	}
	if string(pt) != rfc8291Plaintext {
		t.Errorf("plaintext = %q, want %q", pt, rfc8291Plaintext)
	}

	salt, rs, keyID, err := ParseAES128GCMHeader(mustKey(t, rfc8291Body))
	if err != nil {
		t.Fatal(err)
	}
	if EncodeKey(salt) != rfc8291Salt || rs != 4096 || EncodeKey(keyID) != rfc8291ASPublic {
		t.Errorf("header = %s %d %s", EncodeKey(salt), rs, EncodeKey(keyID))
	}
}

func TestRFC8188Example1(t *testing.T) {
	ikm := mustKey(t, rfc8188Ex1IKM)
	salt := mustKey(t, rfc8188Ex1Salt)
	key, nonce, err := deriveAES128GCM(ikm, salt)
	if err != nil {
		t.Fatal(err)
	}
	if EncodeKey(key) != rfc8188Ex1CEK || EncodeKey(nonce) != rfc8188Ex1Nonce {
		t.Errorf("CEK, NONCE = %s, %s; want %s, %s", EncodeKey(key), EncodeKey(nonce), rfc8188Ex1CEK, rfc8188Ex1Nonce)
	}
	body, err := sealAES128GCM(key, nonce, salt, nil, 4096, [][]byte{[]byte(rfc8188Plaintext + "\x02")})
	if err != nil {
		t.Fatal(err)
	}
	if got := EncodeKey(body); got != rfc8188Ex1Body {
		t.Errorf("body\n got %s\nwant %s", got, rfc8188Ex1Body)
	}
	pt, err := openAES128GCM(mustKey(t, rfc8188Ex1Body), fixedIKM(t, ikm, ""))
	if err != nil {
		t.Fatal(err)
	}
	if string(pt) != rfc8188Plaintext {
		t.Errorf("plaintext = %q", pt)
	}
}

func TestRFC8188Example2(t *testing.T) {
	ikm := mustKey(t, rfc8188Ex2IKM)
	want := mustKey(t, rfc8188Ex2Body)
	salt, rs, keyID, err := ParseAES128GCMHeader(want)
	if err != nil {
		t.Fatal(err)
	}
	if rs != 25 || string(keyID) != "a1" {
		t.Fatalf("rs, keyid = %d, %q; want 25, \"a1\"", rs, keyID)
	}
	key, nonce, err := deriveAES128GCM(ikm, salt)
	if err != nil {
		t.Fatal(err)
	}
	// Two records: 7 octets + delimiter + one padding octet, then 8 + final delimiter.
	body, err := sealAES128GCM(key, nonce, salt, []byte("a1"), 25, [][]byte{
		[]byte("I am th\x01\x00"),
		[]byte("e walrus\x02"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(body, want) {
		t.Errorf("body\n got %s\nwant %s", EncodeKey(body), rfc8188Ex2Body)
	}
	pt, err := openAES128GCM(want, fixedIKM(t, ikm, "a1"))
	if err != nil {
		t.Fatal(err)
	}
	if string(pt) != rfc8188Plaintext {
		t.Errorf("plaintext = %q", pt)
	}
	// Dropping the second record leaves a body whose last record carries
	// the non-final delimiter.
	if _, err := openAES128GCM(want[:len(want)-25], fixedIKM(t, ikm, "a1")); !errors.Is(err, ErrTruncated) {
		t.Errorf("truncated: err = %v, want ErrTruncated", err)
	}
	// Swapping the records breaks authentication.
	swapped := append(append(append([]byte{}, want[:23]...), want[48:]...), want[23:48]...)
	if _, err := openAES128GCM(swapped, fixedIKM(t, ikm, "a1")); !errors.Is(err, ErrDecrypt) {
		t.Errorf("swapped: err = %v, want ErrDecrypt", err)
	}
}

func fixedIKM(t *testing.T, ikm []byte, wantID string) func([]byte) ([]byte, error) {
	return func(keyID []byte) ([]byte, error) {
		if string(keyID) != wantID {
			t.Errorf("key id = %q, want %q", keyID, wantID)
		}
		return ikm, nil
	}
}

func TestEncryptRoundTrip(t *testing.T) {
	sub, err := NewSubscription()
	if err != nil {
		t.Fatal(err)
	}
	if pub := sub.PublicKey(); len(pub) != PublicKeySize || pub[0] != 4 {
		t.Fatalf("PublicKey() = %x", pub)
	}
	if len(sub.Auth) != AuthSecretSize {
		t.Fatalf("auth is %d bytes", len(sub.Auth))
	}
	for _, n := range []int{0, 1, 15, 16, 17, 1000, MaxPlaintextSize} {
		pt := bytes.Repeat([]byte{byte(n)}, n)
		body, err := Encrypt(pt, sub.PublicKey(), sub.Auth)
		if err != nil {
			t.Fatalf("len %d: %v", n, err)
		}
		if want := HeaderSize + PublicKeySize + n + 1 + TagSize; len(body) != want {
			t.Errorf("len %d: body is %d bytes, want %d", n, len(body), want)
		}
		if len(body) > MaxMessageSize {
			t.Errorf("len %d: body exceeds %d bytes", n, MaxMessageSize)
		}
		salt, rs, keyID, err := ParseAES128GCMHeader(body)
		if err != nil || len(salt) != SaltSize || rs != DefaultRecordSize || len(keyID) != PublicKeySize {
			t.Errorf("len %d: header %x %d %x %v", n, salt, rs, keyID, err)
		}
		got, err := Decrypt(body, sub)
		if err != nil {
			t.Fatalf("len %d: decrypt: %v", n, err)
		}
		if !bytes.Equal(got, pt) {
			t.Errorf("len %d: round trip mismatch", n)
		}
	}
	if _, err := Encrypt(make([]byte, MaxPlaintextSize+1), sub.PublicKey(), sub.Auth); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized: err = %v, want ErrTooLarge", err)
	}
}

func TestEncryptFresh(t *testing.T) {
	sub, err := NewSubscription()
	if err != nil {
		t.Fatal(err)
	}
	a, err := Encrypt([]byte("x"), sub.PublicKey(), sub.Auth)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Encrypt([]byte("x"), sub.PublicKey(), sub.Auth)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a[:SaltSize], b[:SaltSize]) {
		t.Error("salt reused")
	}
	if bytes.Equal(a[HeaderSize:HeaderSize+PublicKeySize], b[HeaderSize:HeaderSize+PublicKeySize]) {
		t.Error("ephemeral key reused")
	}
}

func TestEncryptBadInputs(t *testing.T) {
	sub, err := NewSubscription()
	if err != nil {
		t.Fatal(err)
	}
	pub := sub.PublicKey()
	offCurve := append([]byte{}, pub...)
	offCurve[64] ^= 1
	compressed := append([]byte{2 + pub[64]&1}, pub[1:33]...)
	for name, key := range map[string][]byte{
		"nil":        nil,
		"compressed": compressed,
		"off curve":  offCurve,
		"infinity":   {0},
		"zero point": append([]byte{4}, make([]byte, 64)...),
	} {
		if _, err := Encrypt([]byte("x"), key, sub.Auth); !errors.Is(err, ErrBadKey) {
			t.Errorf("%s key: err = %v, want ErrBadKey", name, err)
		}
		if _, _, _, err := EncryptAESGCM([]byte("x"), key, sub.Auth); !errors.Is(err, ErrBadKey) {
			t.Errorf("aesgcm %s key: err = %v, want ErrBadKey", name, err)
		}
	}
	for _, n := range []int{0, 15, 17, 32} {
		if _, err := Encrypt([]byte("x"), pub, make([]byte, n)); !errors.Is(err, ErrBadAuthSecret) {
			t.Errorf("auth of %d bytes: err = %v, want ErrBadAuthSecret", n, err)
		}
	}
}

// sealFor builds an aes128gcm Web Push body for sub from explicit,
// already padded records, so tests can craft bodies Encrypt never emits.
func sealFor(t *testing.T, sub *Subscription, rs uint32, records ...string) []byte {
	t.Helper()
	eph, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ua, err := parsePublicKey(sub.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	asPub := eph.PublicKey().Bytes()
	ikm, err := webPushIKM(eph, ua, sub.Auth, sub.PublicKey(), asPub)
	if err != nil {
		t.Fatal(err)
	}
	salt := bytes.Repeat([]byte{7}, SaltSize)
	key, nonce, err := deriveAES128GCM(ikm, salt)
	if err != nil {
		t.Fatal(err)
	}
	recs := make([][]byte, len(records))
	for i, r := range records {
		recs[i] = []byte(r)
	}
	body, err := sealAES128GCM(key, nonce, salt, asPub, rs, recs)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

func TestDecryptRecords(t *testing.T) {
	sub, err := NewSubscription()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		rs      uint32
		records []string
		want    string
		err     error
	}{
		{"single, padded", 4096, []string{"hello\x02\x00\x00\x00"}, "hello", nil},
		{"empty content", 4096, []string{"\x02"}, "", nil},
		{"multi, full last record", 16 + 8, []string{"hello\x01\x00\x00", "world!!\x02"}, "helloworld!!", nil},
		{"multi, short last record", 16 + 8, []string{"abcdefg\x01", "abcdefg\x01", "h\x02"}, "abcdefgabcdefgh", nil},
		{"padding only record", 16 + 4, []string{"\x01\x00\x00\x00", "ab\x02"}, "ab", nil},
		{"all zero", 4096, []string{"\x00\x00\x00"}, "", ErrPadding},
		{"no delimiter", 4096, []string{"hello"}, "", ErrPadding},
		{"bad delimiter", 4096, []string{"hello\x03\x00"}, "", ErrPadding},
		{"non-final delimiter last", 4096, []string{"hello\x01"}, "", ErrTruncated},
		{"final delimiter early", 16 + 4, []string{"abc\x02", "d\x02"}, "", ErrPadding},
		{"last non-zero octet is the delimiter", 4096, []string{"a\x02\x00b\x02\x00"}, "a\x02\x00b", nil},
		{"non-zero after final delimiter", 4096, []string{"hello\x02\x00\x01"}, "", ErrTruncated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := sealFor(t, sub, tc.rs, tc.records...)
			got, err := Decrypt(body, sub)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err = %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("plaintext = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestDecryptRejects(t *testing.T) {
	sub := mustSub(t, rfc8291UAPrivate, rfc8291Auth)
	good := mustKey(t, rfc8291Body)
	mod := func(f func(b []byte) []byte) []byte {
		return f(append([]byte{}, good...))
	}
	setRS := func(rs uint32) []byte {
		return mod(func(b []byte) []byte { binary.BigEndian.PutUint32(b[16:], rs); return b })
	}
	tests := []struct {
		name string
		body []byte
		err  error
	}{
		{"empty", nil, ErrMalformed},
		{"short header", good[:20], ErrMalformed},
		{"header only", good[:HeaderSize+PublicKeySize], ErrTruncated},
		{"idlen overruns", good[:HeaderSize+10], ErrMalformed},
		{"rs 0", setRS(0), ErrRecordSize},
		{"rs 17", setRS(17), ErrRecordSize},
		{"rs 18 leaves short final record", setRS(18), ErrMalformed},
		{"rs 29 splits record", setRS(29), ErrDecrypt},
		{"rs max", setRS(1<<32 - 1), nil},
		{"final record only tag", mod(func(b []byte) []byte { return b[:HeaderSize+PublicKeySize+16] }), ErrMalformed},
		{"truncated tag", mod(func(b []byte) []byte { return b[:len(b)-1] }), ErrDecrypt},
		{"extra byte", mod(func(b []byte) []byte { return append(b, 0) }), ErrDecrypt},
		{"flipped ciphertext", mod(func(b []byte) []byte { b[HeaderSize+PublicKeySize] ^= 1; return b }), ErrDecrypt},
		{"flipped salt", mod(func(b []byte) []byte { b[0] ^= 1; return b }), ErrDecrypt},
		{"idlen 64", mod(func(b []byte) []byte { b[20] = 64; return b }), ErrBadKey},
		{"idlen 0", mod(func(b []byte) []byte { b[20] = 0; return b }), ErrBadKey},
		{"key not on curve", mod(func(b []byte) []byte { b[HeaderSize+64] ^= 1; return b }), ErrBadKey},
		{"compressed key prefix", mod(func(b []byte) []byte { b[HeaderSize] = 2; return b }), ErrBadKey},
		{"other valid key", mod(func(b []byte) []byte {
			copy(b[HeaderSize:], mustKey(t, rfc8291UAPublic))
			return b
		}), ErrDecrypt},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pt, err := Decrypt(tc.body, sub)
			if tc.err == nil {
				if err != nil || string(pt) != rfc8291Plaintext {
					t.Fatalf("Decrypt = %q, %v", pt, err)
				}
				return
			}
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if pt != nil {
				t.Errorf("plaintext returned with error")
			}
		})
	}

	wrongAuth := mustSub(t, rfc8291UAPrivate, rfc8291Salt)
	if _, err := Decrypt(good, wrongAuth); !errors.Is(err, ErrDecrypt) {
		t.Errorf("wrong auth: err = %v, want ErrDecrypt", err)
	}
	if _, err := Decrypt(good, nil); !errors.Is(err, ErrBadKey) {
		t.Errorf("nil subscription: err = %v, want ErrBadKey", err)
	}
	if _, err := Decrypt(good, &Subscription{Private: sub.Private, Auth: []byte("short")}); !errors.Is(err, ErrBadAuthSecret) {
		t.Errorf("short auth: err = %v, want ErrBadAuthSecret", err)
	}
	x, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Decrypt(good, &Subscription{Private: x, Auth: sub.Auth}); !errors.Is(err, ErrBadKey) {
		t.Errorf("X25519 subscription: err = %v, want ErrBadKey", err)
	}
}

func TestParseAES128GCMHeader(t *testing.T) {
	salt, rs, keyID, err := ParseAES128GCMHeader(mustKey(t, rfc8188Ex1Body))
	if err != nil {
		t.Fatal(err)
	}
	if EncodeKey(salt) != rfc8188Ex1Salt || rs != 4096 || len(keyID) != 0 {
		t.Errorf("got %s %d %q", EncodeKey(salt), rs, keyID)
	}
	// A body of two full records ending on the boundary is structurally fine.
	body := append(make([]byte, HeaderSize), make([]byte, 2*18)...)
	binary.BigEndian.PutUint32(body[16:], 18)
	if _, _, _, err := ParseAES128GCMHeader(body); err != nil {
		t.Errorf("two full records: %v", err)
	}
	if _, _, _, err := ParseAES128GCMHeader(body[:len(body)-2]); !errors.Is(err, ErrMalformed) {
		t.Errorf("16-byte final record: err = %v, want ErrMalformed", err)
	}
	if _, _, _, err := ParseAES128GCMHeader(body[:len(body)-1]); err != nil {
		t.Errorf("17-byte final record: %v", err)
	}
}

func TestKeyEncoding(t *testing.T) {
	raw := []byte{0xfb, 0xff, 0xbf, 0x01}
	if got := EncodeKey(raw); got != "-_-_AQ" {
		t.Errorf("EncodeKey = %q", got)
	}
	for _, s := range []string{"-_-_AQ", "-_-_AQ=="} {
		b, err := DecodeKey(s)
		if err != nil || !bytes.Equal(b, raw) {
			t.Errorf("DecodeKey(%q) = %x, %v", s, b, err)
		}
	}
	for _, s := range []string{"+/+/AQ", "-_-_AQ=", "-_-_A", "-_-_AQ===", "a b", "=="} {
		if _, err := DecodeKey(s); !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeKey(%q): err = %v, want ErrMalformed", s, err)
		}
	}
	// Subscription keys as browsers hand them out, padded or not.
	pub := mustKey(t, rfc8291UAPublic)
	padded := rfc8291UAPublic + strings.Repeat("=", (4-len(rfc8291UAPublic)%4)%4)
	if b, err := DecodeKey(padded); err != nil || !bytes.Equal(b, pub) {
		t.Errorf("padded p256dh: %v", err)
	}
}
