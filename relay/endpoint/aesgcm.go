package endpoint

import (
	"regexp"
	"strings"
)

// padding matches a parameter value's trailing base64 padding: a run of
// base64url characters, one or more '=', then a separator or the end.
// The pattern is autopush's (autoendpoint's notification_headers.rs), so
// the values a device is handed are byte for byte what autopush hands it.
var padding = regexp.MustCompile(`([0-9A-Za-z\-_]+)=+([,;]|$)`)

// normalizeCryptoHeader is what autopush does to the Encryption and
// Crypto-Key values of an aesgcm message before they reach the device:
// every double quote removed, then the trailing '=' padding of each
// parameter value stripped. Nothing else changes: `keyid="p256dh";
// salt="abc=="` becomes `keyid=p256dh; salt=abc`. The values were already
// checked (checkContent) with quotes and padding allowed; VAPID reads the
// request's own Crypto-Key, not this.
func normalizeCryptoHeader(v string) string {
	if v == "" {
		return v
	}
	v = strings.ReplaceAll(v, `"`, "")
	if !strings.Contains(v, "=") {
		return v
	}
	return padding.ReplaceAllString(v, "$1$2")
}
