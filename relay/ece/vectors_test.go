package ece

import (
	"crypto/ecdh"
	"testing"
)

// RFC 8291 section 5 / Appendix A: "Push Message Encryption Example".
const (
	rfc8291Plaintext = "When I grow up, I want to be a watermelon"
	rfc8291UAPrivate = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"
	rfc8291UAPublic  = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
	rfc8291ASPrivate = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"
	rfc8291ASPublic  = "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"
	rfc8291Auth      = "BTBZMqHH6r4Tts7J_aSIgg"
	rfc8291Salt      = "DGv6ra1nlYgDCS1FRnbzlw"
	rfc8291Body      = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml" +
		"mlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPT" +
		"pK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
)

// RFC 8188 section 3.1 (single record) and 3.2 (multiple records).
const (
	rfc8188Plaintext = "I am the walrus"

	rfc8188Ex1IKM   = "yqdlZ-tYemfogSmv7Ws5PQ"
	rfc8188Ex1Salt  = "I1BsxtFttlv3u_Oo94xnmw"
	rfc8188Ex1CEK   = "_wniytB-ofscZDh4tbSjHw"
	rfc8188Ex1Nonce = "Bcs8gkIRKLI8GeI8"
	rfc8188Ex1Body  = "I1BsxtFttlv3u_Oo94xnmwAAEAAA-NAVub2qFgBEuQKRapoZu-IxkIva3MEB1PD-ly8Thjg"

	rfc8188Ex2IKM  = "BO3ZVPxUlnLORbVGMpbT1Q"
	rfc8188Ex2Body = "uNCkWiNYzKTnBN9ji3-qWAAAABkCYTHOG8chz_gnvgOqdGYovxyjuqRyJFjEDyoF" +
		"1Fvkj6hQPdPHI51OEUKEpgz3SsLWIqS_uA"
)

// Legacy aesgcm example of draft-ietf-httpbis-encryption-encoding-02 /
// draft-ietf-webpush-encryption-03/04, as carried in the ecec and Chromium
// (GCMMessageCryptographerReferenceTest.ReferenceDraft03) test suites.
const (
	draftPlaintext = "I am the walrus"
	draftUAPrivate = "9FWl15_QUQAWDaD3k3l50ZBZQJ4au27F1V4F0uLSD_M"
	draftUAPublic  = "BCEkBjzL8Z3C-oi2Q7oE5t2Np-p7osjGLg93qUP0wvqRT21EEWyf0cQDQcakQMqz4hQKYOQ3il2nNZct4HgAUQU"
	draftAuth      = "R29vIGdvbyBnJyBqb29iIQ"
	draftSalt      = "lngarbyKfMoi9Z75xYXmkg"
	draftASPublic  = "BNoRDbb84JGm8g5Z5CFxurSqsXWJ11ItfXEWYVLE85Y7CYkDjXsIEc4aqxYaQ1G8BqkXCJ6DPpDrWtdWj_mugHU"
	// The sender's private key, PKCS #8 DER in base64url, from Chromium.
	draftASPrivatePKCS8 = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgnCScek-QpEjmOOlT-rQ38nZz" +
		"vdPlqa00Zy0i6m2OJvahRANCAATaEQ22_OCRpvIOWeQhcbq0qrF1iddSLX1xFmFSxPOWOwmJ" +
		"A417CBHOGqsWGkNRvAapFwiegz6Q61rXVo_5roB1"
	draftCiphertext = "6nqAQUME8hNqw5J3kl8cpVVJylXKYqZOeseZG8UueKpA"
	draftCryptoKey  = `keyid="dhkey"; dh="` + draftASPublic + `"`
	draftEncryption = `keyid="dhkey"; salt="` + draftSalt + `"`
)

// ecec (mozilla-services/ecec) aesgcm decryption vectors with small record
// sizes, multiple records and padding.
var ececAESGCMVectors = []struct {
	desc, plaintext, recvPriv, auth, ciphertext, cryptoKey, encryption string
}{
	{
		desc:       "padSize = 2, rs = 24, pad = 0",
		plaintext:  "Some message",
		recvPriv:   "4h23G_KkXC9TvBSK2v0Q7ImpS2YAuRd8hQyN0rFAwBg",
		auth:       "aTDc6JebzR6eScy2oLo4RQ",
		ciphertext: "Oo34w2F9VVnTMFfKtdx48AZWQ9Li9M6DauWJVgXU",
		cryptoKey:  "dh=BCHFVrflyxibGLlgztLwKelsRZp4gqX3tNfAKFaxAcBhpvYeN1yIUMrxaDKiLh4LNKPtj0BOXGdr-IQ-QP82Wjo",
		encryption: "salt=zCU18Rw3A5aB_Xi-vfixmA; rs=24",
	},
	{
		desc:      "padSize = 2, rs = 8, pad = 16",
		plaintext: "Yet another message",
		recvPriv:  "4h23G_KkXC9TvBSK2v0Q7ImpS2YAuRd8hQyN0rFAwBg",
		auth:      "6plwZnSpVUbF7APDXus3UQ",
		ciphertext: "uEC5B_tR-fuQ3delQcrzrDCp40W6ipMZjGZ78USDJ5sMj-" +
			"6bAOVG3AK6JqFl9E6AoWiBYYvMZfwThVxmDnw6RHtVeLKFM5DWgl1Ewk" +
			"OohwH2EhiDD0gM3io-d79WKzOPZE9rDWUSv64JstImSfX_" +
			"ADQfABrvbZkeaWxh53EG59QMOElFJqHue4dMURpsMXg",
		cryptoKey:  "dh=BEaA4gzA3i0JDuirGhiLgymS4hfFX7TNTdEhSk_HBlLpkjgCpjPL5c-GL9uBGIfa_fhGNKKFhXz1k9Kyens2ZpQ",
		encryption: "salt=ZFhzj0S-n29g9P2p4-I7tA; rs=8",
	},
	{
		desc:      "padSize = 2, rs = 3, pad = 0",
		plaintext: "Small record size",
		recvPriv:  "4h23G_KkXC9TvBSK2v0Q7ImpS2YAuRd8hQyN0rFAwBg",
		auth:      "g2rWVHUCpUxgcL9Tz7vyeQ",
		ciphertext: "oY4e5eDatDVt2fpQylxbPJM-3vrfhDasfPc8Q1PWt4tPfMVbz_sDNL_" +
			"cvr0DXXkdFzS1lxsJsj550USx4MMl01ihjImXCjrw9R5xFgFrCAqJD3G" +
			"wXA1vzS4T5yvGVbUp3SndMDdT1OCcEofTn7VC6xZ-" +
			"zP8rzSQfDCBBxmPU7OISzr8Z4HyzFCGJeBfqiZ7yUfNlKF1x5UaZ4X6i" +
			"U_TXx5KlQy_" +
			"toV1dXZ2eEAMHJUcSdArvB6zRpFdEIxdcHcJyo1BIYgAYTDdAIy__" +
			"IJVCPY_b2CE5W_" +
			"6ohlYKB7xDyH8giNuWWXAgBozUfScLUVjPC38yJTpAUi6w6pXgXUWffe" +
			"nde5FreQpnMFL1L4G-38wsI_-" +
			"ISIOzdO8QIrXHxmtc1S5xzYu8bMqSgCinvCEwdeGFCmighRjj8t1zRWo" +
			"0D14rHbQLPR_b1P5SvEeJTtS9Nm3iibM",
		cryptoKey:  "dh=BCg6ZIGuE2ZNm2ti6Arf4CDVD_8--aLXAGLYhpghwjl1xxVjTLLpb7zihuEOGGbyt8Qj0_fYHBP4ObxwJNl56bk",
		encryption: "salt=5LIDBXbvkBvvb7ZdD-T4PQ; rs=3",
	},
}

// mustKey decodes a base64url test constant.
func mustKey(t testing.TB, s string) []byte {
	t.Helper()
	b, err := DecodeKey(s)
	if err != nil {
		t.Fatalf("DecodeKey(%q): %v", s, err)
	}
	return b
}

// mustSub builds a subscription from a raw base64url private scalar and
// auth secret.
func mustSub(t testing.TB, priv, auth string) *Subscription {
	t.Helper()
	k, err := ecdh.P256().NewPrivateKey(mustKey(t, priv))
	if err != nil {
		t.Fatalf("NewPrivateKey: %v", err)
	}
	return &Subscription{Private: k, Auth: mustKey(t, auth)}
}

// mustPriv parses a raw base64url P-256 private scalar.
func mustPriv(t testing.TB, s string) *ecdh.PrivateKey {
	t.Helper()
	k, err := ecdh.P256().NewPrivateKey(mustKey(t, s))
	if err != nil {
		t.Fatalf("NewPrivateKey: %v", err)
	}
	return k
}
