// Package linkauth is the relay link's authentication: the keys an operator
// makes with `pushrelay keys`, the TLS configurations that check them, and
// the token binding. It uses the standard library's crypto only; the QUIC
// transport (relay/linkquic) takes the tls.Configs it builds.
//
// Three ways for a parent to know its children (and a child its parent):
//
//   - A site CA: `keys ca` makes a small CA (an ECDSA P-256 key and a
//     self-signed certificate), `keys issue` a relay's key and certificate
//     signed by it and naming the relay. Both ends present a certificate
//     and accept any peer whose chain ends at the site CA (mutual TLS).
//     The CA is the trust boundary: whoever holds a certificate it signed
//     may be a parent or a child of the site. No host name is checked (the
//     certificate names the relay, not its address).
//   - Pins: each end accepts a peer whose public key's pin (base64 of
//     SHA-256 of the DER SubjectPublicKeyInfo, what `keys pin` prints) is in
//     its list. Self-signed certificates are fine here.
//   - A shared token: the parent's certificate is checked by CA or pin as
//     above; the child sends no certificate and proves the token instead,
//     bound to the connection: its hello carries Binding(token, exporter),
//     where exporter is the TLS exporter of the connection with the label
//     ExporterLabel. A binding copied from another connection does not
//     verify, since each connection has its own exporter.
//
// A refused peer is told why in the TLS alert: unknown_ca (48) when the
// chain does not end at the CA, certificate_unknown (46) when the key is not
// pinned, certificate_expired (45) when it is out of its dates,
// certificate_required (116) when no certificate came. Reason names
// each case for logs and metric labels.
package linkauth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/pushrelay/pushrelay/relay/atomicfile"
)

// File names in a CA directory and in a relay's key directory.
const (
	CAKeyFile  = "ca.key"
	CACertFile = "ca.crt"
)

// Validity of what `keys` makes. There is no renewal: a site re-issues
// before the end (the dates are printed and shown by openssl x509).
const (
	CAValidity   = 20 * 365 * 24 * time.Hour
	CertValidity = 10 * 365 * 24 * time.Hour
)

// ExporterLabel is the TLS exporter label the token binding is computed
// over (RFC 8446 section 7.5), with no context.
const ExporterLabel = "EXPORTER-pushrelay-link-token"

// BindingSize is the size of a token binding (HMAC-SHA256) and of the
// exporter secret it is computed over.
const BindingSize = 32

// TokenSize is the number of random bytes in a token NewToken makes.
const TokenSize = 32

// Why a peer was refused. Each wraps the TLS alert the peer is sent.
var (
	ErrNoCertificate = fmt.Errorf("linkauth: peer sent no certificate%.0w", tls.AlertError(116))
	ErrBadCA         = fmt.Errorf("linkauth: peer certificate is not signed by the site CA%.0w", tls.AlertError(48))
	ErrUnknownPin    = fmt.Errorf("linkauth: peer public key is not pinned%.0w", tls.AlertError(46))
	ErrExpired       = fmt.Errorf("linkauth: peer certificate has expired or is not valid yet%.0w", tls.AlertError(45))
	ErrWrongToken    = errors.New("linkauth: wrong token (or a binding made for another connection)")
)

// Reason is a short label for why err refused a peer, for logs and metric
// labels: bad_ca, unknown_pin, no_certificate, expired, wrong_token, or "" when err
// is none of them.
func Reason(err error) string {
	switch {
	case errors.Is(err, ErrBadCA):
		return "bad_ca"
	case errors.Is(err, ErrUnknownPin):
		return "unknown_pin"
	case errors.Is(err, ErrNoCertificate):
		return "no_certificate"
	case errors.Is(err, ErrExpired):
		return "expired"
	case errors.Is(err, ErrWrongToken):
		return "wrong_token"
	}
	return ""
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$`)

// ValidName reports whether name can name a relay in a certificate: 1 to
// 63 letters, digits, dots and dashes, not starting with a dot or dash.
func ValidName(name string) bool { return nameRE.MatchString(name) }

// NewCA makes a site CA in dir (created 0700 if missing): ca.key and
// ca.crt, both 0600. It refuses to replace an existing CA unless force.
func NewCA(dir, name string, force bool) (*x509.Certificate, error) {
	if name == "" {
		name = "pushrelay site CA"
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("make CA dir: %w", err)
	}
	keyPath, certPath := filepath.Join(dir, CAKeyFile), filepath.Join(dir, CACertFile)
	if err := checkFree(force, keyPath, certPath); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("make CA key: %w", err)
	}
	tmpl, err := template(name, CAValidity)
	if err != nil {
		return nil, err
	}
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.MaxPathLenZero = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("make CA certificate: %w", err)
	}
	if err := writePair(keyPath, certPath, key, der, force); err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// Issue makes a relay's key and certificate naming it, signed by the CA in
// caDir, or self-signed when caDir is "" (for pins). It writes NAME.key and
// NAME.crt (0600) in outDir (created 0700 if missing) and refuses to
// replace them unless force. The certificate is good for both ends of a
// link (server and client auth), as a relay may be a parent and a child.
func Issue(caDir, name, outDir string, force bool) (*x509.Certificate, error) {
	if !ValidName(name) {
		return nil, fmt.Errorf("relay name %q: want 1 to 63 letters, digits, dots and dashes", name)
	}
	var caCert *x509.Certificate
	var caKey *ecdsa.PrivateKey
	if caDir != "" {
		var err error
		caCert, caKey, err = loadCA(caDir)
		if err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return nil, fmt.Errorf("make key dir: %w", err)
	}
	keyPath, certPath := filepath.Join(outDir, name+".key"), filepath.Join(outDir, name+".crt")
	if err := checkFree(force, keyPath, certPath); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("make key: %w", err)
	}
	tmpl, err := template(name, CertValidity)
	if err != nil {
		return nil, err
	}
	tmpl.DNSNames = []string{name}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	parent, signer := tmpl, any(key)
	if caCert != nil {
		if caCert.NotAfter.Before(tmpl.NotAfter) {
			tmpl.NotAfter = caCert.NotAfter
		}
		parent, signer = caCert, caKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		return nil, fmt.Errorf("make certificate: %w", err)
	}
	if err := writePair(keyPath, certPath, key, der, force); err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func template(name string, validity time.Duration) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("make serial: %w", err)
	}
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-time.Hour), // a gateway's clock a little behind
		NotAfter:     now.Add(validity),
	}, nil
}

func checkFree(force bool, paths ...string) error {
	if force {
		return nil
	}
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s exists (use --force to replace it): %w", p, fs.ErrExist)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

func writePair(keyPath, certPath string, key *ecdsa.PrivateKey, der []byte, force bool) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode key: %w", err)
	}
	write := atomicfile.Create
	if force {
		write = atomicfile.Write
	}
	if err := write(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return fmt.Errorf("write key: %w", err)
	}
	if err := write(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("write certificate: %w", err)
	}
	return nil
}

func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, nil, fmt.Errorf("load CA from %s: %w", dir, err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("load CA from %s: key is %T, want ECDSA", dir, pair.PrivateKey)
	}
	if !pair.Leaf.IsCA {
		return nil, nil, fmt.Errorf("load CA from %s: %s is not a CA certificate", dir, CACertFile)
	}
	return pair.Leaf, key, nil
}

// LoadCert reads the first certificate of a PEM file.
func LoadCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read certificate: %w", err)
	}
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, fmt.Errorf("%s: no PEM certificate in it", path)
		}
		if b.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			return c, nil
		}
	}
}

// Pin is a certificate's public key pin: standard base64 of SHA-256 of its
// DER SubjectPublicKeyInfo (what HPKP and `openssl pkey -pubin -outform der
// | openssl dgst -sha256 -binary | base64` compute). It survives re-issuing
// a certificate for the same key.
func Pin(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// NewToken returns a random shared token: TokenSize bytes, unpadded
// URL-safe base64 (43 characters).
func NewToken() (string, error) {
	b := make([]byte, TokenSize)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("make token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// Binding is what a child in token mode sends in its hello:
// HMAC-SHA256 keyed by the token over the connection's exporter secret.
func Binding(token, exporter []byte) []byte {
	m := hmac.New(sha256.New, token)
	m.Write(exporter)
	return m.Sum(nil)
}

// VerifyBinding checks a child's binding against the token and this
// connection's exporter secret in constant time; ErrWrongToken when it
// does not match.
func VerifyBinding(token, exporter, got []byte) error {
	if len(token) == 0 || len(exporter) == 0 || !hmac.Equal(Binding(token, exporter), got) {
		return ErrWrongToken
	}
	return nil
}

// Trust is what a relay accepts from its peer: a chain ending at one of
// CAs, or a leaf whose pin is in Pins (either suffices).
type Trust struct {
	CAs  *x509.CertPool
	Pins map[string]bool
}

// LoadTrust reads a CA file (PEM, may hold several) and takes a list of
// pins; either may be empty, not both.
func LoadTrust(caFile string, pins []string) (*Trust, error) {
	t := &Trust{Pins: map[string]bool{}}
	if caFile != "" {
		data, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read CA: %w", err)
		}
		t.CAs = x509.NewCertPool()
		if !t.CAs.AppendCertsFromPEM(data) {
			return nil, fmt.Errorf("%s: no PEM certificate in it", caFile)
		}
	}
	for _, p := range pins {
		raw, err := base64.StdEncoding.DecodeString(p)
		if err != nil || len(raw) != sha256.Size {
			return nil, fmt.Errorf("pin %q: want base64 of a SHA-256 (44 characters, what `pushrelay keys pin` prints)", p)
		}
		t.Pins[p] = true
	}
	if t.CAs == nil && len(t.Pins) == 0 {
		return nil, errors.New("no CA and no pins: nothing to trust a peer by")
	}
	return t, nil
}

// Verify checks a peer's certificates (leaf first) against t: the leaf's
// pin listed, or a chain to a CA. The errors are ErrNoCertificate, ErrBadCA
// and ErrUnknownPin, wrapped with detail.
func (t *Trust) Verify(certs []*x509.Certificate) error {
	if len(certs) == 0 {
		return ErrNoCertificate
	}
	leaf := certs[0]
	if t.Pins[Pin(leaf)] {
		return nil
	}
	if t.CAs == nil {
		return fmt.Errorf("%w: %q has pin %s", ErrUnknownPin, leaf.Subject.CommonName, Pin(leaf))
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         t.CAs,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if ie, ok := errors.AsType[x509.CertificateInvalidError](err); ok && ie.Reason == x509.Expired {
		return fmt.Errorf("%w: %q: %v", ErrExpired, leaf.Subject.CommonName, err)
	}
	if err != nil {
		if len(t.Pins) > 0 {
			return fmt.Errorf("%w (nor pinned: %s): %q: %v", ErrBadCA, Pin(leaf), leaf.Subject.CommonName, err)
		}
		return fmt.Errorf("%w: %q: %v", ErrBadCA, leaf.Subject.CommonName, err)
	}
	return nil
}

// PeerName is the relay name a verified certificate carries (its common
// name), "" for none.
func PeerName(certs []*x509.Certificate) string {
	if len(certs) == 0 {
		return ""
	}
	return certs[0].Subject.CommonName
}

// Credentials are one relay's side of the link: its own certificate (nil
// for a child in token mode), whom it trusts, and the token (token mode).
type Credentials struct {
	Cert  *tls.Certificate
	Trust *Trust
	Token []byte
}

// Load reads a relay's credentials: certFile and keyFile (its own, may be
// empty for a child in token mode), a CA file and/or pins, and a token.
func Load(certFile, keyFile, caFile string, pins []string, token string) (*Credentials, error) {
	c := &Credentials{}
	if certFile != "" || keyFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("load relay certificate: %w", err)
		}
		c.Cert = &pair
	}
	t, err := LoadTrust(caFile, pins)
	if err != nil {
		return nil, err
	}
	c.Trust = t
	if token != "" {
		c.Token = []byte(token)
	}
	return c, nil
}

// TokenMode reports whether the child authenticates by the token rather
// than a certificate.
func (c *Credentials) TokenMode() bool { return len(c.Token) > 0 }

// ServerTLS is the parent's TLS configuration: its certificate, and in CA
// or pin mode a client certificate checked by Trust (relay/linkquic logs
// and counts the refusals VerifyConnection returns). In token mode no
// client certificate is asked for (the link checks the binding).
func (c *Credentials) ServerTLS() (*tls.Config, error) {
	if c.Cert == nil {
		return nil, errors.New("a parent needs its own certificate and key")
	}
	conf := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{*c.Cert},
		// Asked for, not required by crypto/tls: VerifyConnection below
		// refuses a child without one, naming the reason.
		ClientAuth: tls.RequestClientCert,
	}
	if c.TokenMode() {
		conf.ClientAuth = tls.NoClientCert
		return conf, nil
	}
	trust := c.Trust
	// VerifyConnection, unlike VerifyPeerCertificate, runs on resumed
	// sessions too (with the certificates of the first handshake).
	conf.VerifyConnection = func(cs tls.ConnectionState) error {
		return trust.Verify(cs.PeerCertificates)
	}
	return conf, nil
}

// ClientTLS is the child's TLS configuration: its certificate unless in
// token mode, the parent's certificate checked by Trust, and a session
// cache so that a reconnect resumes (1-RTT; 0-RTT stays off). Make it
// once and dial with it each time: the session cache is in it.
func (c *Credentials) ClientTLS() *tls.Config {
	conf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The chain and the pin are checked below; there is no host name
		// to check (the certificate names a relay, not an address).
		InsecureSkipVerify: true,
		ClientSessionCache: tls.NewLRUClientSessionCache(4),
	}
	if c.Cert != nil && !c.TokenMode() {
		conf.Certificates = []tls.Certificate{*c.Cert}
	}
	trust := c.Trust
	conf.VerifyConnection = func(cs tls.ConnectionState) error {
		return trust.Verify(cs.PeerCertificates)
	}
	return conf
}
