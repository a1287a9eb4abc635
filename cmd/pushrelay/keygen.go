package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/pushrelay/pushrelay/relay/atomicfile"
	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/vapid"
)

// runKeygen is `pushrelay keygen FILE`: a VAPID key pair for an app server.
// The private key goes to FILE (PEM, 0600); the public key, which devices
// pass as --key, is printed.
func runKeygen(args []string, stdout io.Writer) error {
	if len(args) != 1 || strings.HasPrefix(args[0], "-") {
		// No flags: "-h" or "--help" is a request for this, not a file name.
		return errors.New("usage: pushrelay keygen FILE (writes a new VAPID private key to FILE and prints its public key)")
	}
	priv, err := vapid.GenerateKey()
	if err != nil {
		return err
	}
	pemBytes, err := vapid.MarshalPrivateKeyPEM(priv)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(args[0], pemBytes, 0o600); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "vapid public key %s\n", ece.EncodeKey(vapid.NewSigner(priv).PublicKey()))
	return nil
}
