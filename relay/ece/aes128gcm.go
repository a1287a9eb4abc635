package ece

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// HKDF info strings, RFC 8291 section 3.4 and RFC 8188 section 2.2/2.3.
const (
	webPushInfo      = "WebPush: info\x00"
	aes128gcmCEKInfo = "Content-Encoding: aes128gcm\x00"
	nonceInfo        = "Content-Encoding: nonce\x00"
)

// Padding delimiters, RFC 8188 section 2.
const (
	delimRecord = 0x01 // every record but the last
	delimFinal  = 0x02 // the last record
)

// Encrypt encrypts plaintext for the subscription identified by uaPublic
// (the 65-byte "p256dh" key) and authSecret (the 16-byte "auth" value),
// producing an RFC 8291 "aes128gcm" message body: a fresh ephemeral key, a
// random 16-byte salt, rs 4096, and a single record ending in the 0x02
// delimiter with no further padding. Plaintexts longer than
// MaxPlaintextSize are rejected with ErrTooLarge so that the body fits the
// 4096 bytes a push service must accept.
func Encrypt(plaintext, uaPublic, authSecret []byte) ([]byte, error) {
	if len(plaintext) > MaxPlaintextSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d fit one record", ErrTooLarge, len(plaintext), MaxPlaintextSize)
	}
	eph, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ece: generating ephemeral key: %w", err)
	}
	salt := make([]byte, SaltSize)
	if _, err := rand.Read(salt); err != nil {
		return nil, fmt.Errorf("ece: generating salt: %w", err)
	}
	return encryptWith(plaintext, uaPublic, authSecret, salt, eph)
}

// encryptWith is Encrypt with caller-chosen salt and ephemeral key. It
// exists so tests can reproduce the RFC 8291 example; reusing a salt and
// key pair across messages would be catastrophic, so it is not exported.
func encryptWith(plaintext, uaPublic, authSecret, salt []byte, eph *ecdh.PrivateKey) ([]byte, error) {
	if len(plaintext) > MaxPlaintextSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d fit one record", ErrTooLarge, len(plaintext), MaxPlaintextSize)
	}
	if len(authSecret) != AuthSecretSize {
		return nil, fmt.Errorf("%w: got %d bytes, want %d", ErrBadAuthSecret, len(authSecret), AuthSecretSize)
	}
	if len(salt) != SaltSize {
		return nil, fmt.Errorf("%w: salt is %d bytes, want %d", ErrMalformed, len(salt), SaltSize)
	}
	if eph == nil || eph.Curve() != ecdh.P256() {
		return nil, fmt.Errorf("%w: ephemeral key must be P-256", ErrBadKey)
	}
	ua, err := parsePublicKey(uaPublic)
	if err != nil {
		return nil, err
	}
	asPublic := eph.PublicKey().Bytes()
	ikm, err := webPushIKM(eph, ua, authSecret, uaPublic, asPublic)
	if err != nil {
		return nil, err
	}
	key, nonce, err := deriveAES128GCM(ikm, salt)
	if err != nil {
		return nil, err
	}
	record := make([]byte, 0, len(plaintext)+1)
	record = append(append(record, plaintext...), delimFinal)
	return sealAES128GCM(key, nonce, salt, asPublic, DefaultRecordSize, [][]byte{record})
}

// webPushIKM computes the RFC 8291 section 3.3 input keying material:
// HKDF(auth_secret, ecdh_secret, "WebPush: info" || 0x00 || ua_public ||
// as_public, 32).
func webPushIKM(priv *ecdh.PrivateKey, peer *ecdh.PublicKey, authSecret, uaPublic, asPublic []byte) ([]byte, error) {
	secret, err := priv.ECDH(peer)
	if err != nil {
		return nil, fmt.Errorf("%w: ecdh: %w", ErrBadKey, err)
	}
	info := make([]byte, 0, len(webPushInfo)+2*PublicKeySize)
	info = append(append(append(info, webPushInfo...), uaPublic...), asPublic...)
	ikm, err := hkdf.Key(sha256.New, secret, authSecret, string(info), 32)
	if err != nil {
		return nil, fmt.Errorf("ece: hkdf: %w", err)
	}
	return ikm, nil
}

// deriveAES128GCM derives the content encryption key and base nonce of
// RFC 8188 section 2.2 and 2.3 from the input keying material and salt.
func deriveAES128GCM(ikm, salt []byte) (key, nonce []byte, err error) {
	prk, err := hkdf.Extract(sha256.New, ikm, salt)
	if err != nil {
		return nil, nil, fmt.Errorf("ece: hkdf: %w", err)
	}
	if key, err = hkdf.Expand(sha256.New, prk, aes128gcmCEKInfo, 16); err != nil {
		return nil, nil, fmt.Errorf("ece: hkdf: %w", err)
	}
	if nonce, err = hkdf.Expand(sha256.New, prk, nonceInfo, 12); err != nil {
		return nil, nil, fmt.Errorf("ece: hkdf: %w", err)
	}
	return key, nonce, nil
}

// newGCM returns AES-128-GCM keyed with key.
func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("ece: aes: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("ece: gcm: %w", err)
	}
	return aead, nil
}

// recordNonce returns base XOR seq, where seq is the record sequence
// number as a 96-bit big-endian integer (RFC 8188 section 2.3).
func recordNonce(base []byte, seq uint64) []byte {
	n := make([]byte, len(base))
	copy(n, base)
	var s [8]byte
	binary.BigEndian.PutUint64(s[:], seq)
	for i := range s {
		n[len(n)-8+i] ^= s[i]
	}
	return n
}

// sealAES128GCM writes the aes128gcm header (salt, rs, keyID) followed by
// each record, which must already carry its delimiter and padding and be
// at most rs-16 bytes long.
func sealAES128GCM(key, nonce, salt, keyID []byte, rs uint32, records [][]byte) ([]byte, error) {
	if len(keyID) > 255 {
		return nil, fmt.Errorf("%w: key id is %d bytes, at most 255", ErrMalformed, len(keyID))
	}
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	size := HeaderSize + len(keyID)
	for _, r := range records {
		size += len(r) + TagSize
	}
	out := make([]byte, 0, size)
	out = append(out, salt...)
	out = binary.BigEndian.AppendUint32(out, rs)
	out = append(out, byte(len(keyID)))
	out = append(out, keyID...)
	for i, r := range records {
		if uint64(len(r))+TagSize > uint64(rs) {
			return nil, fmt.Errorf("%w: record %d does not fit rs %d", ErrRecordSize, i, rs)
		}
		out = aead.Seal(out, recordNonce(nonce, uint64(i)), r, nil)
	}
	return out, nil
}

// ParseAES128GCMHeader parses and validates the RFC 8188 header at the
// start of an aes128gcm body without needing any keys, as a push service
// can do on receipt. It checks that the body holds the full header, that
// rs is at least MinRecordSize, that the key ID does not overrun the body,
// and that the ciphertext that follows is non-empty and does not end in a
// record too short to hold a delimiter and tag. The returned salt and
// keyID alias body.
//
// For Web Push (RFC 8291) the key ID must additionally be the sender's
// 65-byte public key; Decrypt checks that.
func ParseAES128GCMHeader(body []byte) (salt []byte, rs uint32, keyID []byte, err error) {
	salt, rs, keyID, _, err = splitAES128GCM(body)
	return salt, rs, keyID, err
}

// splitAES128GCM is ParseAES128GCMHeader that also returns the ciphertext.
func splitAES128GCM(body []byte) (salt []byte, rs uint32, keyID, ciphertext []byte, err error) {
	if len(body) < HeaderSize {
		return nil, 0, nil, nil, fmt.Errorf("%w: body is %d bytes, shorter than the %d-byte header", ErrMalformed, len(body), HeaderSize)
	}
	salt = body[:SaltSize]
	rs = binary.BigEndian.Uint32(body[SaltSize:])
	idlen := int(body[SaltSize+4])
	if rs < MinRecordSize {
		return nil, 0, nil, nil, fmt.Errorf("%w: rs %d is below %d", ErrRecordSize, rs, MinRecordSize)
	}
	if HeaderSize+idlen > len(body) {
		return nil, 0, nil, nil, fmt.Errorf("%w: key id length %d exceeds body", ErrMalformed, idlen)
	}
	keyID = body[HeaderSize : HeaderSize+idlen]
	ciphertext = body[HeaderSize+idlen:]
	if len(ciphertext) == 0 {
		return nil, 0, nil, nil, fmt.Errorf("%w: no records after header", ErrTruncated)
	}
	if last := uint64(len(ciphertext)) % uint64(rs); last != 0 && last <= TagSize {
		return nil, 0, nil, nil, fmt.Errorf("%w: final record is %d bytes, too short for delimiter and tag", ErrMalformed, last)
	}
	return salt, rs, keyID, ciphertext, nil
}

// Decrypt decrypts an RFC 8291 "aes128gcm" message body for sub. Bodies of
// any number of records are accepted (RFC 8188 section 2): every record
// must authenticate, end its content with delimiter 0x01 (0x02 for the
// last record) followed only by zero padding, and the final record must
// be present. The key ID must be the sender's 65-byte P-256 public key.
func Decrypt(body []byte, sub *Subscription) ([]byte, error) {
	if err := sub.check(); err != nil {
		return nil, err
	}
	return openAES128GCM(body, func(keyID []byte) ([]byte, error) {
		if len(keyID) != PublicKeySize {
			return nil, fmt.Errorf("%w: key id is %d bytes, want the %d-byte sender key", ErrBadKey, len(keyID), PublicKeySize)
		}
		as, err := parsePublicKey(keyID)
		if err != nil {
			return nil, err
		}
		return webPushIKM(sub.Private, as, sub.Auth, sub.PublicKey(), keyID)
	})
}

// openAES128GCM decrypts an RFC 8188 body, obtaining the input keying
// material from the key ID through ikmFor.
func openAES128GCM(body []byte, ikmFor func(keyID []byte) ([]byte, error)) ([]byte, error) {
	salt, rs, keyID, ciphertext, err := splitAES128GCM(body)
	if err != nil {
		return nil, err
	}
	ikm, err := ikmFor(keyID)
	if err != nil {
		return nil, err
	}
	key, nonce, err := deriveAES128GCM(ikm, salt)
	if err != nil {
		return nil, err
	}
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(ciphertext))
	for seq := uint64(0); len(ciphertext) > 0; seq++ {
		n := len(ciphertext)
		if uint64(n) > uint64(rs) {
			n = int(rs)
		}
		rec := ciphertext[:n]
		ciphertext = ciphertext[n:]
		last := len(ciphertext) == 0
		if len(rec) <= TagSize {
			// Unreachable after splitAES128GCM's checks; kept as a guard.
			return nil, fmt.Errorf("%w: record %d too short", ErrMalformed, seq)
		}
		pt, err := aead.Open(nil, recordNonce(nonce, seq), rec, nil)
		if err != nil {
			return nil, fmt.Errorf("%w: record %d: %w", ErrDecrypt, seq, err)
		}
		data, err := unpadAES128GCM(pt, last)
		if err != nil {
			return nil, fmt.Errorf("record %d: %w", seq, err)
		}
		out = append(out, data...)
	}
	return out, nil
}

// unpadAES128GCM strips the zero padding and delimiter from a decrypted
// aes128gcm record.
func unpadAES128GCM(pt []byte, last bool) ([]byte, error) {
	i := len(pt) - 1
	for i >= 0 && pt[i] == 0 {
		i--
	}
	if i < 0 {
		return nil, fmt.Errorf("%w: record has no delimiter", ErrPadding)
	}
	switch d := pt[i]; {
	case d == delimFinal && last:
	case d == delimRecord && !last:
	case d == delimRecord && last:
		return nil, fmt.Errorf("%w: last record has a non-final delimiter", ErrTruncated)
	case d == delimFinal && !last:
		return nil, fmt.Errorf("%w: final delimiter before the last record", ErrPadding)
	default:
		return nil, fmt.Errorf("%w: unknown delimiter 0x%02x", ErrPadding, d)
	}
	return pt[:i], nil
}
