package endpoint

import (
	"context"
	"crypto/sha256"
	"strings"
	"testing"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/token"
)

// The minter makes the three local endpoint forms, and each opens to the
// device's UAID and channel (v2 with the key's hash).
func TestMinter(t *testing.T) {
	key := make([]byte, token.KeySize)
	tokens, err := token.New(key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewMinter(tokens, ""); err == nil {
		t.Error("a minter without a public URL")
	}
	m, err := NewMinter(tokens, "https://push.example.test")
	if err != nil {
		t.Fatal(err)
	}
	r := relay.Registration{UAID: push.UAID{1}, Channel: push.ChannelID{2}}
	vapidKey := []byte{4, 5, 6}
	for _, c := range []struct {
		simplePush bool
		key        []byte
		prefix     string
		version    int
	}{
		{false, nil, "https://push.example.test/wpush/v1/", 1},
		{true, nil, "https://push.example.test/update/", 1},
		{false, vapidKey, "https://push.example.test/wpush/v2/", 2},
		{true, vapidKey, "https://push.example.test/wpush/v2/", 2},
	} {
		r.SimplePush, r.Key = c.simplePush, c.key
		url, err := m.Mint(context.Background(), r)
		if err != nil || !strings.HasPrefix(url, c.prefix) {
			t.Fatalf("Mint(%+v) = %q, %v; want %s…", r, url, err, c.prefix)
		}
		ep, err := tokens.OpenEndpoint(c.version, strings.TrimPrefix(url, c.prefix))
		if err != nil || ep.UAID != r.UAID || ep.Channel != r.Channel {
			t.Fatalf("%s opens to %+v, %v", url, ep, err)
		}
		if (ep.KeyHash != nil) != (c.key != nil) || (c.key != nil && *ep.KeyHash != sha256.Sum256(c.key)) {
			t.Errorf("%s: key hash %v", url, ep.KeyHash)
		}
	}
	m.Abandon(context.Background(), r)
}
