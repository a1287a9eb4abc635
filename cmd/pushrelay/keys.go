package main

import (
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/pushrelay/pushrelay/relay/linkauth"
)

var errKeysUsage = errors.New(`usage: pushrelay keys ca|issue|pin|token [flags] (the relay link's keys; pushrelay keys COMMAND -h for help)
  keys ca --dir D                       make a site CA in D (ca.key, ca.crt)
  keys issue --ca D --name N --out O    make relay N's key and certificate in O, signed by the CA in D
  keys issue --name N --out O           the same, self-signed (to pin it)
  keys pin --cert F                     print a certificate's public key pin
  keys token                            print a new random shared token`)

// runKeys is `pushrelay keys`: it makes the relay link's keys (see
// relay/linkauth and docs/relay-keys.md).
func runKeys(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errKeysUsage
	}
	cmd, rest := args[0], args[1:]
	fs := flag.NewFlagSet("pushrelay keys "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	force := func() *bool { return fs.Bool("force", false, "replace existing files") }
	switch cmd {
	case "ca":
		dir := fs.String("dir", "", "directory for the CA's ca.key and ca.crt (made 0700 if missing)")
		name := fs.String("name", "pushrelay site CA", "the CA's common name")
		f := force()
		if err := parseKeys(fs, rest); err != nil {
			return err
		}
		if *dir == "" {
			return errors.New("keys ca: --dir is required")
		}
		ca, err := linkauth.NewCA(*dir, *name, *f)
		if err != nil {
			return fmt.Errorf("keys ca: %w", err)
		}
		fmt.Fprintf(stdout, "site CA %q: %s (keep %s secret; give %s to every relay of the site)\n",
			*name, *dir, filepath.Join(*dir, linkauth.CAKeyFile), filepath.Join(*dir, linkauth.CACertFile))
		printCert(stdout, ca)
		return nil
	case "issue":
		caDir := fs.String("ca", "", "CA directory (from keys ca); empty: a self-signed certificate, to pin")
		name := fs.String("name", "", "the relay's name (letters, digits, dots, dashes)")
		out := fs.String("out", "", "directory for NAME.key and NAME.crt (made 0700 if missing)")
		f := force()
		if err := parseKeys(fs, rest); err != nil {
			return err
		}
		if *name == "" || *out == "" {
			return errors.New("keys issue: --name and --out are required")
		}
		cert, err := linkauth.Issue(*caDir, *name, *out, *f)
		if err != nil {
			return fmt.Errorf("keys issue: %w", err)
		}
		by := "self-signed"
		if *caDir != "" {
			by = "signed by the CA in " + *caDir
		}
		fmt.Fprintf(stdout, "relay %s: %s, %s (%s)\n", *name,
			filepath.Join(*out, *name+".crt"), filepath.Join(*out, *name+".key"), by)
		printCert(stdout, cert)
		return nil
	case "pin":
		certFile := fs.String("cert", "", "certificate file (PEM)")
		if err := parseKeys(fs, rest); err != nil {
			return err
		}
		if *certFile == "" {
			return errors.New("keys pin: --cert is required")
		}
		cert, err := linkauth.LoadCert(*certFile)
		if err != nil {
			return fmt.Errorf("keys pin: %w", err)
		}
		fmt.Fprintln(stdout, linkauth.Pin(cert))
		return nil
	case "token":
		if err := parseKeys(fs, rest); err != nil {
			return err
		}
		tok, err := linkauth.NewToken()
		if err != nil {
			return fmt.Errorf("keys token: %w", err)
		}
		fmt.Fprintln(stdout, tok)
		return nil
	case "-h", "--help", "help":
		fmt.Fprintln(stdout, errKeysUsage.Error())
		return nil
	}
	return errKeysUsage
}

func parseKeys(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected argument %q: %w", fs.Name(), fs.Arg(0), errKeysUsage)
	}
	return nil
}

func printCert(w io.Writer, c *x509.Certificate) {
	fmt.Fprintf(w, "  valid until %s\n  pin %s\n", c.NotAfter.UTC().Format(time.DateOnly), linkauth.Pin(c))
}
