package ece

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

func TestAESGCMDraftVectorDecrypt(t *testing.T) {
	sub := mustSub(t, draftUAPrivate, draftAuth)
	if got := EncodeKey(sub.PublicKey()); got != draftUAPublic {
		t.Fatalf("ua public = %s", got)
	}
	pt, err := DecryptAESGCM(mustKey(t, draftCiphertext), sub, draftEncryption, draftCryptoKey)
	if err != nil {
		t.Fatal(err)
	}
	if string(pt) != draftPlaintext {
		t.Errorf("plaintext = %q", pt)
	}
}

func TestAESGCMDraftVectorEncrypt(t *testing.T) {
	k, err := x509.ParsePKCS8PrivateKey(mustKey(t, draftASPrivatePKCS8))
	if err != nil {
		t.Fatal(err)
	}
	as, err := k.(*ecdsa.PrivateKey).ECDH()
	if err != nil {
		t.Fatal(err)
	}
	if got := EncodeKey(as.PublicKey().Bytes()); got != draftASPublic {
		t.Fatalf("sender public = %s, want %s", got, draftASPublic)
	}
	body, enc, ck, err := encryptAESGCMWith([]byte(draftPlaintext), mustKey(t, draftUAPublic),
		mustKey(t, draftAuth), mustKey(t, draftSalt), as)
	if err != nil {
		t.Fatal(err)
	}
	if got := EncodeKey(body); got != draftCiphertext {
		t.Errorf("ciphertext = %s, want %s", got, draftCiphertext)
	}
	if enc != "salt="+draftSalt || ck != "dh="+draftASPublic {
		t.Errorf("headers = %q, %q", enc, ck)
	}
}

func TestAESGCMEcecVectors(t *testing.T) {
	for _, v := range ececAESGCMVectors {
		t.Run(v.desc, func(t *testing.T) {
			sub := mustSub(t, v.recvPriv, v.auth)
			pt, err := DecryptAESGCM(mustKey(t, v.ciphertext), sub, v.encryption, v.cryptoKey)
			if err != nil {
				t.Fatal(err)
			}
			if string(pt) != v.plaintext {
				t.Errorf("plaintext = %q, want %q", pt, v.plaintext)
			}
		})
	}
}

// Header parameter vectors from ecec's aesgcm tests (8-byte salts and
// keys, so they exercise parsing only, not length validation).
func TestAESGCMParamsEcec(t *testing.T) {
	valid := []struct {
		desc, cryptoKey, encryption string
		rs                          uint32
		salt, dh                    []byte
	}{
		{"multiple keys", "keyid=p256dh;dh=Iy1Je2Kv11A,p256ecdsa=o2M8QfiEKuI", "keyid=p256dh;salt=upk1yFkp1xI", 4096,
			[]byte{0xba, 0x99, 0x35, 0xc8, 0x59, 0x29, 0xd7, 0x12}, []byte{0x23, 0x2d, 0x49, 0x7b, 0x62, 0xaf, 0xd7, 0x50}},
		{"quoted key param", `dh="byfHbUffc-k"`, "salt=C11AvAsp6Gc", 4096,
			[]byte{0x0b, 0x5d, 0x40, 0xbc, 0x0b, 0x29, 0xe8, 0x67}, []byte{0x6f, 0x27, 0xc7, 0x6d, 0x47, 0xdf, 0x73, 0xe9}},
		{"quoted salt param and rs = 24", "dh=ybuT4VDz-Bg", `salt="H7U7wcIoIKs"; rs=24`, 24,
			[]byte{0x1f, 0xb5, 0x3b, 0xc1, 0xc2, 0x28, 0x20, 0xab}, []byte{0xc9, 0xbb, 0x93, 0xe1, 0x50, 0xf3, 0xf8, 0x18}},
	}
	for _, v := range valid {
		salt, rs, dh, err := aesgcmParams(v.encryption, v.cryptoKey)
		if err != nil {
			t.Errorf("%s: %v", v.desc, err)
			continue
		}
		if rs != v.rs || !bytes.Equal(salt, v.salt) || !bytes.Equal(dh, v.dh) {
			t.Errorf("%s: got rs=%d salt=%x dh=%x", v.desc, rs, salt, dh)
		}
	}
	invalid := []struct {
		desc, cryptoKey, encryption string
		err                         error
	}{
		{"invalid record size", "dh=pbmv1QkcEDY", "salt=Esao8aTBfIk;rs=bad", ErrRecordSize},
		{"crypto-key missing param value", "dh=", "dh=Esao8aTBfIk", ErrMalformed},
		{"bad encryption header", "dh=pbmv1QkcEDY", "=Esao8aTBfIk", ErrMalformed},
		{"mismatched key ids", "keyid=p256dh;dh=pbmv1QkcEDY", "keyid=different;salt=Esao8aTBfIk", ErrMalformed},
		{"invalid base64url salt", "dh=pbmv1QkcEDY", "salt=99999", ErrMalformed},
		{"invalid base64url dh", "dh=zzzzz", "salt=Esao8aTBfIk", ErrMalformed},
		// Not from ecec.
		{"rs too small", "dh=pbmv1QkcEDY", "salt=Esao8aTBfIk;rs=2", ErrRecordSize},
		{"rs negative", "dh=pbmv1QkcEDY", "salt=Esao8aTBfIk;rs=-5", ErrRecordSize},
		{"rs overflows", "dh=pbmv1QkcEDY", "salt=Esao8aTBfIk;rs=4294967296", ErrRecordSize},
		{"no crypto-key", "", "salt=Esao8aTBfIk", ErrMalformed},
		{"only p256ecdsa", "p256ecdsa=pbmv1QkcEDY", "salt=Esao8aTBfIk", ErrMalformed},
		{"unterminated quote", `dh="pbmv1QkcEDY`, "salt=Esao8aTBfIk", ErrMalformed},
	}
	for _, v := range invalid {
		if _, _, _, err := aesgcmParams(v.encryption, v.cryptoKey); !errors.Is(err, v.err) {
			t.Errorf("%s: err = %v, want %v", v.desc, err, v.err)
		}
	}
}

func TestParseAESGCMHeaders(t *testing.T) {
	salt, rs, dh, err := ParseAESGCMHeaders(draftEncryption, draftCryptoKey)
	if err != nil {
		t.Fatal(err)
	}
	if EncodeKey(salt) != draftSalt || rs != 4096 || EncodeKey(dh) != draftASPublic {
		t.Errorf("got %s %d %s", EncodeKey(salt), rs, EncodeKey(dh))
	}
	// Real-world shapes: VAPID key alongside, comma or semicolon separated,
	// padded base64, upper-case names, keyid selection.
	const vapidKey = "BA1Hxzyi1RUM1b5wjxsn7nGxAszw2u61m164i3MrAIxHF6YK5h4SDYic-dRuU_RCPCfA5aq9ojSwk5Y2EmClBPs"
	for _, ck := range []string{
		"dh=" + draftASPublic + ";p256ecdsa=" + vapidKey,
		"p256ecdsa=" + vapidKey + ", dh=" + draftASPublic,
		"DH=" + draftASPublic + "=",
		`keyid=a;dh=` + vapidKey + `, keyid="dhkey";dh=` + draftASPublic,
	} {
		enc := "salt=" + draftSalt + "; rs=4096"
		if strings.Contains(ck, "keyid") {
			enc = "keyid=dhkey;" + enc
		}
		_, _, dh, err := ParseAESGCMHeaders(enc, ck)
		if err != nil || EncodeKey(dh) != draftASPublic {
			t.Errorf("Crypto-Key %q: dh=%s err=%v", ck, EncodeKey(dh), err)
		}
	}
	if _, _, _, err := ParseAESGCMHeaders("salt=AAAA", draftCryptoKey); !errors.Is(err, ErrMalformed) {
		t.Errorf("short salt: err = %v, want ErrMalformed", err)
	}
	if _, _, _, err := ParseAESGCMHeaders(draftEncryption, `keyid=dhkey;dh=`+draftSalt); !errors.Is(err, ErrBadKey) {
		t.Errorf("short dh: err = %v, want ErrBadKey", err)
	}
}

func TestAESGCMRoundTrip(t *testing.T) {
	sub, err := NewSubscription()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 1, 100, MaxAESGCMPlaintextSize} {
		pt := bytes.Repeat([]byte{'p'}, n)
		body, enc, ck, err := EncryptAESGCM(pt, sub.PublicKey(), sub.Auth)
		if err != nil {
			t.Fatalf("len %d: %v", n, err)
		}
		if len(body) != n+2+TagSize || len(body) > MaxMessageSize {
			t.Errorf("len %d: body is %d bytes", n, len(body))
		}
		got, err := DecryptAESGCM(body, sub, enc, ck)
		if err != nil {
			t.Fatalf("len %d: %v", n, err)
		}
		if !bytes.Equal(got, pt) {
			t.Errorf("len %d: mismatch", n)
		}
		// Firefox-style headers with rs spelled out and extra params.
		got, err = DecryptAESGCM(body, sub, enc+";rs=4096", ck+";p256ecdsa="+EncodeKey(sub.PublicKey()))
		if err != nil || !bytes.Equal(got, pt) {
			t.Errorf("len %d with extra params: %v", n, err)
		}
	}
	if _, _, _, err := EncryptAESGCM(make([]byte, MaxAESGCMPlaintextSize+1), sub.PublicKey(), sub.Auth); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized: err = %v, want ErrTooLarge", err)
	}
	if _, _, _, err := EncryptAESGCM(nil, sub.PublicKey(), sub.Auth[:8]); !errors.Is(err, ErrBadAuthSecret) {
		t.Errorf("short auth: err = %v, want ErrBadAuthSecret", err)
	}
}

// sealAESGCMFor builds an aesgcm body from explicit record plaintexts
// (each starting with its own padding length) for sub.
func sealAESGCMFor(t *testing.T, sub *Subscription, records ...[]byte) (body []byte, enc, ck string) {
	t.Helper()
	eph, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ua, err := parsePublicKey(sub.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	salt := bytes.Repeat([]byte{9}, SaltSize)
	key, nonce, err := deriveAESGCM(eph, ua, sub.Auth, salt, sub.PublicKey(), eph.PublicKey().Bytes())
	if err != nil {
		t.Fatal(err)
	}
	aead, err := newGCM(key)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range records {
		body = aead.Seal(body, recordNonce(nonce, uint64(i)), r, nil)
	}
	return body, "salt=" + EncodeKey(salt), "dh=" + EncodeKey(eph.PublicKey().Bytes())
}

func rec(pad int, data string) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(pad))
	return append(append(b, make([]byte, pad)...), data...)
}

func TestDecryptAESGCMRejects(t *testing.T) {
	sub, err := NewSubscription()
	if err != nil {
		t.Fatal(err)
	}
	// rs=6: full records carry 6 plaintext octets (22 encrypted).
	body, enc, ck := sealAESGCMFor(t, sub, rec(1, "abc"), rec(0, "defg"), rec(0, "h"))
	enc6 := enc + ";rs=6"
	if got, err := DecryptAESGCM(body, sub, enc6, ck); err != nil || string(got) != "abcdefgh" {
		t.Fatalf("multi-record = %q, %v", got, err)
	}

	full, enc, ck := sealAESGCMFor(t, sub, rec(1, "abc"), rec(0, "defg"))
	if _, err := DecryptAESGCM(full, sub, enc+";rs=6", ck); !errors.Is(err, ErrTruncated) {
		t.Errorf("no short final record: err = %v, want ErrTruncated", err)
	}
	withTrailer, enc, ck := sealAESGCMFor(t, sub, rec(1, "abc"), rec(0, "defg"), rec(0, ""))
	if got, err := DecryptAESGCM(withTrailer, sub, enc+";rs=6", ck); err != nil || string(got) != "abcdefg" {
		t.Errorf("padding-only trailer = %q, %v", got, err)
	}

	badPad := rec(2, "x")
	badPad[3] = 1
	tests := []struct {
		name    string
		records [][]byte
		err     error
	}{
		{"padding length overruns", [][]byte{{0, 5, 0, 0}}, ErrPadding},
		{"padding length 0xffff", [][]byte{{0xff, 0xff, 'a'}}, ErrPadding},
		{"non-zero padding", [][]byte{badPad}, ErrPadding},
		{"record below pad size", [][]byte{{0}}, ErrMalformed},
	}
	for _, tc := range tests {
		b, enc, ck := sealAESGCMFor(t, sub, tc.records...)
		if _, err := DecryptAESGCM(b, sub, enc, ck); !errors.Is(err, tc.err) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.err)
		}
	}

	good, enc, ck := sealAESGCMFor(t, sub, rec(0, "hello"))
	flipped := append([]byte{}, good...)
	flipped[0] ^= 1
	other, err := NewSubscription()
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name     string
		body     []byte
		sub      *Subscription
		enc, ck  string
		expected error
	}{
		{"good", good, sub, enc, ck, nil},
		{"empty body", nil, sub, enc, ck, ErrTruncated},
		{"flipped", flipped, sub, enc, ck, ErrDecrypt},
		{"other subscription", good, other, enc, ck, ErrDecrypt},
		{"wrong salt", good, sub, "salt=" + EncodeKey(make([]byte, 16)), ck, ErrDecrypt},
		{"missing salt", good, sub, "rs=4096", ck, ErrMalformed},
		{"missing dh", good, sub, enc, "p256ecdsa=" + EncodeKey(sub.PublicKey()), ErrMalformed},
		{"dh off curve", good, sub, enc, "dh=" + EncodeKey(append([]byte{4}, make([]byte, 64)...)), ErrBadKey},
		{"nil subscription", good, nil, enc, ck, ErrBadKey},
	}
	for _, c := range checks {
		got, err := DecryptAESGCM(c.body, c.sub, c.enc, c.ck)
		if c.expected == nil {
			if err != nil || string(got) != "hello" {
				t.Errorf("%s: %q, %v", c.name, got, err)
			}
			continue
		}
		if !errors.Is(err, c.expected) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.expected)
		}
	}
}
