package linkauth

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A CA and a relay issued by it: files 0600 in 0700 dirs, the relay's
// certificate names it and chains to the CA, no file is replaced without
// force, and force replaces them.
func TestCAAndIssue(t *testing.T) {
	dir := t.TempDir()
	caDir, out := filepath.Join(dir, "ca"), filepath.Join(dir, "relays")
	ca, err := NewCA(caDir, "", false)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := Issue(caDir, "edge-1", out, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(caDir, CAKeyFile), filepath.Join(caDir, CACertFile), filepath.Join(out, "edge-1.key"), filepath.Join(out, "edge-1.crt")} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", p, st.Mode().Perm())
		}
	}
	for _, d := range []string{caDir, out} {
		if st, _ := os.Stat(d); st.Mode().Perm() != 0o700 {
			t.Errorf("%s mode %v, want 0700", d, st.Mode().Perm())
		}
	}
	if cert.Subject.CommonName != "edge-1" || len(cert.DNSNames) != 1 || cert.DNSNames[0] != "edge-1" {
		t.Errorf("certificate names %q %q", cert.Subject.CommonName, cert.DNSNames)
	}
	if cert.NotAfter.After(ca.NotAfter) {
		t.Error("relay certificate outlives its CA")
	}
	trust, err := LoadTrust(filepath.Join(caDir, CACertFile), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := trust.Verify([]*x509.Certificate{cert}); err != nil {
		t.Errorf("issued certificate does not verify: %v", err)
	}

	if _, err := NewCA(caDir, "", false); !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), "--force") {
		t.Errorf("second CA: %v, want refused with a hint of --force", err)
	}
	if _, err := Issue(caDir, "edge-1", out, false); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second issue: %v, want refused", err)
	}
	again, err := Issue(caDir, "edge-1", out, true)
	if err != nil {
		t.Fatal(err)
	}
	if Pin(again) == Pin(cert) {
		t.Error("--force kept the old key")
	}
	if _, err := NewCA(caDir, "", true); err != nil {
		t.Fatal(err)
	}
	// The old certificate is not from the new CA.
	trust, _ = LoadTrust(filepath.Join(caDir, CACertFile), nil)
	if err := trust.Verify([]*x509.Certificate{again}); !errors.Is(err, ErrBadCA) {
		t.Errorf("certificate of the replaced CA: %v, want ErrBadCA", err)
	}
}

func TestIssueErrors(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"", "-x", "a b", "edge/1", strings.Repeat("a", 64)} {
		if _, err := Issue("", name, dir, false); err == nil {
			t.Errorf("name %q taken", name)
		}
	}
	if _, err := Issue(filepath.Join(dir, "nope"), "edge-1", dir, false); err == nil || !strings.Contains(err.Error(), "load CA") {
		t.Errorf("missing CA: %v", err)
	}
	// A relay's own pair is not a CA.
	if _, err := Issue("", "edge-1", dir, false); err != nil {
		t.Fatal(err)
	}
	os.Rename(filepath.Join(dir, "edge-1.crt"), filepath.Join(dir, CACertFile))
	os.Rename(filepath.Join(dir, "edge-1.key"), filepath.Join(dir, CAKeyFile))
	if _, err := Issue(dir, "edge-2", dir, false); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Errorf("leaf as CA: %v", err)
	}
}

// The pin is base64 of SHA-256 of the DER SubjectPublicKeyInfo, and a
// trust of pins takes that key whatever signed it.
func TestPin(t *testing.T) {
	dir := t.TempDir()
	cert, err := Issue("", "edge-1", dir, false)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadCert(filepath.Join(dir, "edge-1.crt"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(loaded.RawSubjectPublicKeyInfo)
	if got, want := Pin(cert), base64.StdEncoding.EncodeToString(sum[:]); got != want || len(got) != 44 {
		t.Errorf("pin %q, want %q", got, want)
	}
	trust, err := LoadTrust("", []string{Pin(cert)})
	if err != nil {
		t.Fatal(err)
	}
	if err := trust.Verify([]*x509.Certificate{cert}); err != nil {
		t.Error(err)
	}
	other, _ := Issue("", "edge-2", dir, false)
	if err := trust.Verify([]*x509.Certificate{other}); !errors.Is(err, ErrUnknownPin) || Reason(err) != "unknown_pin" {
		t.Errorf("unpinned: %v", err)
	}
	if err := trust.Verify(nil); !errors.Is(err, ErrNoCertificate) || Reason(err) != "no_certificate" {
		t.Errorf("no certificate: %v", err)
	}
	for _, bad := range []string{"abc", base64.StdEncoding.EncodeToString([]byte("short"))} {
		if _, err := LoadTrust("", []string{bad}); err == nil {
			t.Errorf("pin %q taken", bad)
		}
	}
	if _, err := LoadTrust("", nil); err == nil {
		t.Error("a trust of nothing was made")
	}
	if _, err := LoadCert(filepath.Join(dir, "edge-1.key")); err == nil {
		t.Error("a key file read as a certificate")
	}
}

// The binding verifies only with the same token and exporter.
func TestBinding(t *testing.T) {
	tok, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	tok2, _ := NewToken()
	if len(tok) != 43 || tok == tok2 {
		t.Errorf("tokens %q %q", tok, tok2)
	}
	ex := []byte(strings.Repeat("e", 32))
	b := Binding([]byte(tok), ex)
	if err := VerifyBinding([]byte(tok), ex, b); err != nil {
		t.Error(err)
	}
	for _, c := range []struct {
		name         string
		token, ex, b []byte
	}{
		{"other token", []byte(tok2), ex, b},
		{"other connection", []byte(tok), []byte(strings.Repeat("f", 32)), b},
		{"truncated", []byte(tok), ex, b[:16]},
		{"empty", []byte(tok), ex, nil},
		{"no token", nil, ex, Binding(nil, ex)},
	} {
		if err := VerifyBinding(c.token, c.ex, c.b); !errors.Is(err, ErrWrongToken) || Reason(err) != "wrong_token" {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

func TestExpiredCertificateRefused(t *testing.T) {
	dir := t.TempDir()
	NewCA(dir, "", false)
	cert, err := Issue(dir, "edge-1", dir, false)
	if err != nil {
		t.Fatal(err)
	}
	trust, _ := LoadTrust(filepath.Join(dir, CACertFile), nil)
	old := *cert
	old.NotAfter = time.Now().Add(-time.Hour)
	// x509 checks the validity against the parsed fields.
	if err := trust.Verify([]*x509.Certificate{&old}); !errors.Is(err, ErrExpired) || Reason(err) != "expired" {
		t.Errorf("expired: %v", err)
	}
}
