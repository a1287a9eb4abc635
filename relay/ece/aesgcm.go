package ece

import (
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strconv"
)

// Legacy "aesgcm" constants (draft-ietf-webpush-encryption-04 section 3,
// draft-ietf-httpbis-encryption-encoding-03 section 2).
const (
	aesgcmAuthInfo  = "Content-Encoding: auth\x00"
	aesgcmCEKInfo   = "Content-Encoding: aesgcm\x00"
	aesgcmPadSize   = 2
	aesgcmKeyLabel  = "P-256\x00"
	aesgcmMinRecord = aesgcmPadSize + TagSize // smallest encrypted record
)

// EncryptAESGCM encrypts plaintext for a subscription using the legacy
// "aesgcm" content encoding and returns the body together with the values
// for the Encryption ("salt=...") and Crypto-Key ("dh=...") request
// headers. The message is a single record with rs 4096 and no padding;
// plaintexts longer than MaxAESGCMPlaintextSize are rejected with
// ErrTooLarge. New code should use Encrypt ("aes128gcm").
func EncryptAESGCM(plaintext, uaPublic, authSecret []byte) (body []byte, encryptionHeader, cryptoKeyHeader string, err error) {
	eph, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, "", "", fmt.Errorf("ece: generating ephemeral key: %w", err)
	}
	salt := make([]byte, SaltSize)
	if _, err := rand.Read(salt); err != nil {
		return nil, "", "", fmt.Errorf("ece: generating salt: %w", err)
	}
	return encryptAESGCMWith(plaintext, uaPublic, authSecret, salt, eph)
}

// encryptAESGCMWith is EncryptAESGCM with a caller-chosen salt and
// ephemeral key, for reproducing published vectors in tests.
func encryptAESGCMWith(plaintext, uaPublic, authSecret, salt []byte, eph *ecdh.PrivateKey) ([]byte, string, string, error) {
	if len(plaintext) > MaxAESGCMPlaintextSize {
		return nil, "", "", fmt.Errorf("%w: %d bytes, at most %d fit one record", ErrTooLarge, len(plaintext), MaxAESGCMPlaintextSize)
	}
	if len(authSecret) != AuthSecretSize {
		return nil, "", "", fmt.Errorf("%w: got %d bytes, want %d", ErrBadAuthSecret, len(authSecret), AuthSecretSize)
	}
	if len(salt) != SaltSize {
		return nil, "", "", fmt.Errorf("%w: salt is %d bytes, want %d", ErrMalformed, len(salt), SaltSize)
	}
	if eph == nil || eph.Curve() != ecdh.P256() {
		return nil, "", "", fmt.Errorf("%w: ephemeral key must be P-256", ErrBadKey)
	}
	ua, err := parsePublicKey(uaPublic)
	if err != nil {
		return nil, "", "", err
	}
	asPublic := eph.PublicKey().Bytes()
	key, nonce, err := deriveAESGCM(eph, ua, authSecret, salt, uaPublic, asPublic)
	if err != nil {
		return nil, "", "", err
	}
	aead, err := newGCM(key)
	if err != nil {
		return nil, "", "", err
	}
	record := make([]byte, aesgcmPadSize, aesgcmPadSize+len(plaintext))
	record = append(record, plaintext...) // zero padding length, no padding
	body := aead.Seal(nil, recordNonce(nonce, 0), record, nil)
	return body, "salt=" + EncodeKey(salt), "dh=" + EncodeKey(asPublic), nil
}

// deriveAESGCM derives the aesgcm content encryption key and base nonce:
//
//	IKM   = HKDF(auth_secret, ecdh_secret, "Content-Encoding: auth" || 0x00, 32)
//	PRK   = HKDF-Extract(salt, IKM)
//	ctx   = "P-256" || 0x00 || len(ua) || ua_public || len(as) || as_public
//	CEK   = HKDF-Expand(PRK, "Content-Encoding: aesgcm" || 0x00 || ctx, 16)
//	NONCE = HKDF-Expand(PRK, "Content-Encoding: nonce" || 0x00 || ctx, 12)
//
// with the lengths as 16-bit big-endian integers.
func deriveAESGCM(priv *ecdh.PrivateKey, peer *ecdh.PublicKey, authSecret, salt, uaPublic, asPublic []byte) (key, nonce []byte, err error) {
	secret, err := priv.ECDH(peer)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: ecdh: %w", ErrBadKey, err)
	}
	ikm, err := hkdf.Key(sha256.New, secret, authSecret, aesgcmAuthInfo, 32)
	if err != nil {
		return nil, nil, fmt.Errorf("ece: hkdf: %w", err)
	}
	prk, err := hkdf.Extract(sha256.New, ikm, salt)
	if err != nil {
		return nil, nil, fmt.Errorf("ece: hkdf: %w", err)
	}
	ctx := make([]byte, 0, len(aesgcmKeyLabel)+4+len(uaPublic)+len(asPublic))
	ctx = append(ctx, aesgcmKeyLabel...)
	ctx = binary.BigEndian.AppendUint16(ctx, uint16(len(uaPublic)))
	ctx = append(ctx, uaPublic...)
	ctx = binary.BigEndian.AppendUint16(ctx, uint16(len(asPublic)))
	ctx = append(ctx, asPublic...)
	if key, err = hkdf.Expand(sha256.New, prk, aesgcmCEKInfo+string(ctx), 16); err != nil {
		return nil, nil, fmt.Errorf("ece: hkdf: %w", err)
	}
	if nonce, err = hkdf.Expand(sha256.New, prk, nonceInfo+string(ctx), 12); err != nil {
		return nil, nil, fmt.Errorf("ece: hkdf: %w", err)
	}
	return key, nonce, nil
}

// ParseAESGCMHeaders extracts and validates the legacy aesgcm parameters
// from the Encryption and Crypto-Key header values: the 16-byte salt and
// the record size (default 4096, at least MinAESGCMRecordSize) from the
// first Encryption element carrying a salt, and the sender's 65-byte
// P-256 public key from the Crypto-Key "dh" parameter. If the Encryption
// element names a keyid, the Crypto-Key element with the same keyid is
// used; otherwise the first element with a dh. Other parameters such as
// p256ecdsa are ignored.
func ParseAESGCMHeaders(encryptionHeader, cryptoKeyHeader string) (salt []byte, rs uint32, dh []byte, err error) {
	salt, rs, dh, err = aesgcmParams(encryptionHeader, cryptoKeyHeader)
	if err != nil {
		return nil, 0, nil, err
	}
	if len(salt) != SaltSize {
		return nil, 0, nil, fmt.Errorf("%w: salt is %d bytes, want %d", ErrMalformed, len(salt), SaltSize)
	}
	if _, err := parsePublicKey(dh); err != nil {
		return nil, 0, nil, err
	}
	return salt, rs, dh, nil
}

// aesgcmParams extracts the salt, record size and dh key without checking
// the lengths of the decoded values.
func aesgcmParams(encryptionHeader, cryptoKeyHeader string) (salt []byte, rs uint32, dh []byte, err error) {
	encList, err := ParseHeaderList(encryptionHeader)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("encryption header: %w", err)
	}
	var enc map[string]string
	for _, e := range encList {
		if _, ok := e["salt"]; ok {
			enc = e
			break
		}
	}
	if enc == nil {
		return nil, 0, nil, fmt.Errorf("%w: encryption header has no salt", ErrMalformed)
	}
	if salt, err = DecodeKey(enc["salt"]); err != nil {
		return nil, 0, nil, fmt.Errorf("salt: %w", err)
	}
	rs = DefaultRecordSize
	if v, ok := enc["rs"]; ok {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return nil, 0, nil, fmt.Errorf("%w: rs %q is not a 32-bit decimal integer", ErrRecordSize, truncate(v))
		}
		rs = uint32(n)
	}
	if rs < MinAESGCMRecordSize {
		return nil, 0, nil, fmt.Errorf("%w: rs %d is below %d", ErrRecordSize, rs, MinAESGCMRecordSize)
	}

	ckList, err := ParseHeaderList(cryptoKeyHeader)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("crypto-key header: %w", err)
	}
	keyID, wantID := enc["keyid"]
	found := false
	for _, ck := range ckList {
		v, ok := ck["dh"]
		if !ok {
			continue
		}
		if id, hasID := ck["keyid"]; wantID && (!hasID || id != keyID) {
			continue
		}
		if dh, err = DecodeKey(v); err != nil {
			return nil, 0, nil, fmt.Errorf("dh: %w", err)
		}
		found = true
		break
	}
	if !found {
		if wantID {
			return nil, 0, nil, fmt.Errorf("%w: crypto-key header has no dh for keyid %q", ErrMalformed, truncate(keyID))
		}
		return nil, 0, nil, fmt.Errorf("%w: crypto-key header has no dh", ErrMalformed)
	}
	return salt, rs, dh, nil
}

// DecryptAESGCM decrypts a legacy "aesgcm" body for sub, taking the salt,
// record size and sender key from the Encryption and Crypto-Key header
// values (see ParseAESGCMHeaders). Each encrypted record is rs+16 bytes
// except the last, which must be shorter: a body that ends exactly on a
// record boundary lacks its terminating record and is rejected as
// ErrTruncated. Each record's plaintext starts with a 16-bit padding
// length followed by that many zero octets.
func DecryptAESGCM(body []byte, sub *Subscription, encryptionHeader, cryptoKeyHeader string) ([]byte, error) {
	if err := sub.check(); err != nil {
		return nil, err
	}
	salt, rs, dh, err := ParseAESGCMHeaders(encryptionHeader, cryptoKeyHeader)
	if err != nil {
		return nil, err
	}
	recSize := uint64(rs) + TagSize
	if len(body) == 0 || uint64(len(body))%recSize == 0 {
		return nil, fmt.Errorf("%w: body of %d bytes has no final short record", ErrTruncated, len(body))
	}
	as, err := parsePublicKey(dh)
	if err != nil {
		return nil, err
	}
	key, nonce, err := deriveAESGCM(sub.Private, as, sub.Auth, salt, sub.PublicKey(), dh)
	if err != nil {
		return nil, err
	}
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(body))
	for seq := uint64(0); len(body) > 0; seq++ {
		n := len(body)
		if uint64(n) > recSize {
			n = int(recSize)
		}
		rec := body[:n]
		body = body[n:]
		if len(rec) < aesgcmMinRecord {
			return nil, fmt.Errorf("%w: record %d is %d bytes, shorter than %d", ErrMalformed, seq, len(rec), aesgcmMinRecord)
		}
		pt, err := aead.Open(nil, recordNonce(nonce, seq), rec, nil)
		if err != nil {
			return nil, fmt.Errorf("%w: record %d: %w", ErrDecrypt, seq, err)
		}
		pad := int(binary.BigEndian.Uint16(pt))
		if pad > len(pt)-aesgcmPadSize {
			return nil, fmt.Errorf("%w: record %d: padding length %d exceeds record", ErrPadding, seq, pad)
		}
		for _, b := range pt[aesgcmPadSize : aesgcmPadSize+pad] {
			if b != 0 {
				return nil, fmt.Errorf("%w: record %d: non-zero padding", ErrPadding, seq)
			}
		}
		out = append(out, pt[aesgcmPadSize+pad:]...)
	}
	return out, nil
}
