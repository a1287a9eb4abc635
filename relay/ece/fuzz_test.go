package ece

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// sentinels lists every exported error class; each error from a decoder
// must wrap one of them.
var sentinels = []error{ErrMalformed, ErrRecordSize, ErrBadKey, ErrBadAuthSecret, ErrDecrypt, ErrPadding, ErrTruncated, ErrTooLarge}

func classified(err error) bool {
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

func FuzzDecrypt(f *testing.F) {
	sub := mustSub(f, rfc8291UAPrivate, rfc8291Auth)
	good := mustKey(f, rfc8291Body)
	f.Add(good)
	f.Add(good[:HeaderSize+PublicKeySize])
	f.Add(good[:len(good)-1])
	f.Add(mustKey(f, rfc8188Ex1Body))
	f.Add(mustKey(f, rfc8188Ex2Body))
	f.Add([]byte{})
	f.Add(make([]byte, HeaderSize))
	f.Fuzz(func(t *testing.T, body []byte) {
		pt, err := Decrypt(body, sub)
		if err != nil {
			if pt != nil {
				t.Fatal("plaintext returned with error")
			}
			if !classified(err) {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		// Only the genuine message (or one differing in header fields
		// that are not authenticated, like rs) can decrypt.
		if string(pt) != rfc8291Plaintext {
			t.Fatalf("forged plaintext %q", pt)
		}
	})
}

func FuzzParseAES128GCMHeader(f *testing.F) {
	f.Add(mustKey(f, rfc8291Body))
	f.Add(mustKey(f, rfc8188Ex1Body))
	f.Add(mustKey(f, rfc8188Ex2Body))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, body []byte) {
		salt, rs, keyID, err := ParseAES128GCMHeader(body)
		if err != nil {
			if !classified(err) {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		if len(salt) != SaltSize || rs < MinRecordSize || HeaderSize+len(keyID) >= len(body) {
			t.Fatalf("accepted inconsistent header: salt %d rs %d keyid %d body %d", len(salt), rs, len(keyID), len(body))
		}
		if !bytes.Equal(salt, body[:SaltSize]) || !bytes.Equal(keyID, body[HeaderSize:HeaderSize+len(keyID)]) {
			t.Fatal("salt or key id not taken from the body")
		}
	})
}

func FuzzDecryptAESGCM(f *testing.F) {
	sub := mustSub(f, draftUAPrivate, draftAuth)
	f.Add(mustKey(f, draftCiphertext), draftEncryption, draftCryptoKey)
	f.Add(mustKey(f, draftCiphertext), "salt="+draftSalt+";rs=3", "dh="+draftASPublic+";p256ecdsa=BA1Hxzyi1RUM1b5wjxsn7nGxAszw2u61m164i3MrAIxHF6YK5h4SDYic-dRuU_RCPCfA5aq9ojSwk5Y2EmClBPs")
	for _, v := range ececAESGCMVectors {
		f.Add(mustKey(f, v.ciphertext), v.encryption, v.cryptoKey)
	}
	f.Fuzz(func(t *testing.T, body []byte, enc, ck string) {
		pt, err := DecryptAESGCM(body, sub, enc, ck)
		if err != nil {
			if pt != nil {
				t.Fatal("plaintext returned with error")
			}
			if !classified(err) {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		if string(pt) != draftPlaintext {
			t.Fatalf("forged plaintext %q", pt)
		}
	})
}

func FuzzHeaderParams(f *testing.F) {
	for _, s := range []string{
		draftEncryption,
		draftCryptoKey,
		"salt=zCU18Rw3A5aB_Xi-vfixmA; rs=24",
		"keyid=p256dh;dh=Iy1Je2Kv11A,p256ecdsa=o2M8QfiEKuI",
		`salt="H7U7wcIoIKs"; rs=24`,
		"dh=BNoRDbb84JGm8g5Z5CFxurSqsXWJ11ItfXEWYVLE85Y7CYkDjXsIEc4aqxYaQ1G8BqkXCJ6DPpDrWtdWj_mugHU;p256ecdsa=BA1Hxzyi1RUM1b5wjxsn7nGxAszw2u61m164i3MrAIxHF6YK5h4SDYic-dRuU_RCPCfA5aq9ojSwk5Y2EmClBPs",
		`a="q\"uote\\"`,
		"=Esao8aTBfIk",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		flat := ParseHeaderParams(h)
		if flat == nil {
			t.Fatal("nil map")
		}
		for k := range flat {
			if k == "" || k != strings.ToLower(k) {
				t.Fatalf("bad name %q", k)
			}
		}
		list, err := ParseHeaderList(h)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		// Every strictly parsed parameter is visible in the lenient view
		// unless an earlier element already used the name.
		for _, m := range list {
			if len(m) == 0 {
				t.Fatal("empty element returned")
			}
			for k := range m {
				if _, ok := flat[k]; !ok {
					t.Fatalf("%q parsed strictly but not leniently", k)
				}
			}
		}
		_, _, _, _ = aesgcmParams(h, h)
	})
}

func FuzzDecodeKey(f *testing.F) {
	for _, s := range []string{rfc8291UAPublic, rfc8291Auth, rfc8291Auth + "==", "=", "a", "-_-_AQ=="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := DecodeKey(s)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		// Decoding is lenient about padding but re-encoding is canonical
		// and must decode to the same bytes.
		again, err := DecodeKey(EncodeKey(b))
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("re-encoding failed: %v", err)
		}
	})
}
