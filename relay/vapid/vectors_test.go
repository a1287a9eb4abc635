package vapid

import "time"

// RFC 8292 section 2.4 example (also used in the older draft-form
// "Authorization: WebPush" / "Crypto-Key: p256ecdsa=" examples).
const (
	rfcToken = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9." +
		"eyJhdWQiOiJodHRwczovL3B1c2guZXhhbXBsZS5uZXQiLCJleHAiOjE0NTM1MjM3NjgsInN1YiI6Im1haWx0bzpwdXNoQGV4YW1wbGUuY29tIn0." +
		"i3CYb7t4xfxCDquptFOepC9GAu_HLGkMlMuCGSK2rpiUfnK9ojFwDXb1JrErtmysazNjjvW2L9OkSSHzvoD1oA"
	rfcKey      = "BA1Hxzyi1RUM1b5wjxsn7nGxAszw2u61m164i3MrAIxHF6YK5h4SDYic-dRuU_RCPCfA5aq9ojSwk5Y2EmClBPs"
	rfcAudience = "https://push.example.net"
	rfcSubject  = "mailto:push@example.com"
	rfcExp      = 1453523768
	// SHA-256 of the decoded rfcKey, computed independently (Python hashlib).
	rfcKeyHash = "55e2a4de94fa76f38efdbf68ab4e212fc64099a7aec4497941faef2e29164cbd"
)

var rfcNow = time.Unix(rfcExp, 0).Add(-time.Hour)

// A token produced by an independent implementation: Node.js 20's
// crypto.sign('sha256', ..., {dsaEncoding: 'ieee-p1363'}) with a freshly
// generated throwaway P-256 key. The private key is included in three
// encodings as exported by Node (SEC 1 PEM, PKCS #8 PEM, JWK "d").
const (
	nodeToken = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9." +
		"eyJhdWQiOiJodHRwczovL3VwZGF0ZXMucHVzaC5leGFtcGxlLm9yZyIsImV4cCI6MTc2NzIyNTYwMCwic3ViIjoibWFpbHRvOm9wc0BleGFtcGxlLm9yZyJ9." +
		"bo5-LZa1MPc_LM0vVOyB77Y3c7Tz1SSyJMlTpu5_L2wPKQQRwOB55BT65QSQlQy0-WDmRdZaPjzqMcgIW3GWdw"
	nodeKey      = "BI2yFgdbEBfKNmsBxfbPDMvjmFZ0MGDTVTUeS3LecUuGfxwdpChn4OqWzKh9Lz7eWilONVZlrM-wG6UaSAmQRf8"
	nodeAudience = "https://updates.push.example.org"
	nodeSubject  = "mailto:ops@example.org"
	nodeExp      = 1767225600
	nodeRawPriv  = "2pVB0Brc_2dJOEHc6D4f0CiDzibl71pYskcNQfGUEYM"
	nodeSEC1PEM  = `-----BEGIN EC PRIVATE KEY-----
MHcCAQEEINqVQdAa3P9nSThB3Og+H9Aog84m5e9aWLJHDUHxlBGDoAoGCCqGSM49
AwEHoUQDQgAEjbIWB1sQF8o2awHF9s8My+OYVnQwYNNVNR5Lct5xS4Z/HB2kKGfg
6pbMqH0vPt5aKU41VmWsz7AbpRpICZBF/w==
-----END EC PRIVATE KEY-----
`
	nodePKCS8PEM = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg2pVB0Brc/2dJOEHc
6D4f0CiDzibl71pYskcNQfGUEYOhRANCAASNshYHWxAXyjZrAcX2zwzL45hWdDBg
01U1Hkty3nFLhn8cHaQoZ+DqlsyofS8+3lopTjVWZazPsBulGkgJkEX/
-----END PRIVATE KEY-----
`
)

var nodeNow = time.Unix(nodeExp, 0).Add(-12 * time.Hour)

// RFC 8291 Appendix A application server key pair: a raw private scalar
// and its public key, published independently of this code.
const (
	rfc8291ASPrivate = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"
	rfc8291ASPublic  = "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"
)
