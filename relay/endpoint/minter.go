package endpoint

import (
	"context"
	"errors"
	"strconv"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/token"
	"github.com/pushrelay/pushrelay/relay/vapid"
)

// Minter is the standalone relay's relay.Endpoints: it seals this relay's
// own token endpoints, the ones the API below serves (v1 without a key,
// v2 bound to the VAPID key's hash, /update/ for SimplePush devices). It
// lives beside the API so that the URL forms are made and parsed in one
// package. Minting is pure: it never fails and Abandon has nothing to
// undo.
type Minter struct {
	tokens *token.Codec
	base   string
}

// NewMinter mints endpoints under publicURL (e.g. https://push.example.net)
// with tokens.
func NewMinter(tokens *token.Codec, publicURL string) (*Minter, error) {
	if tokens == nil || publicURL == "" {
		return nil, errors.New("endpoint minter: tokens and public URL are required")
	}
	return &Minter{tokens: tokens, base: publicURL}, nil
}

// Mint returns the endpoint for r.
func (m *Minter) Mint(_ context.Context, r relay.Registration) (string, error) {
	e := token.Endpoint{UAID: r.UAID, Channel: r.Channel}
	if r.SimplePush && r.Key == nil {
		return m.base + "/update/" + m.tokens.SealEndpoint(e), nil
	}
	if r.Key != nil {
		sum := vapid.KeyHash(r.Key) // the hash checkVAPID compares
		e.KeyHash = &sum
	}
	return m.base + "/wpush/v" + strconv.Itoa(e.Version()) + "/" + m.tokens.SealEndpoint(e), nil
}

// Abandon does nothing: a local endpoint holds no state of its own.
func (*Minter) Abandon(context.Context, relay.Registration) {}
