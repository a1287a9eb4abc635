package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/upstream/autopushtest"
)

// upstream_ca_file trusts a wss:// upstream's private CA: without it the
// upstream's certificate is refused (a register fails), with it the
// device's register and messages pass.
func TestE2EUpstreamCAFile(t *testing.T) {
	srvTLS, roots, err := autopushtest.LoopbackTLS()
	if err != nil {
		t.Fatal(err)
	}
	up, err := autopushtest.New(autopushtest.Config{TLS: srvTLS})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	caFile := filepath.Join(t.TempDir(), "upstream-ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvTLS.Certificates[0].Certificate[0]}), 0o644)

	untrusting := startRelay(t, t.TempDir(), "--upstream", up.URL())
	if r, err := connect(t, untrusting, "").c.Register(newChannelID(), ""); err != nil || r.Status == 200 {
		t.Errorf("register through an upstream whose certificate is not trusted: %+v, %v; want a refusal", r, err)
	}
	untrusting.stop()

	edge := startRelay(t, t.TempDir(), "--upstream", up.URL(), "--upstream-ca-file", caFile)
	d := connect(t, edge, "")
	s := d.register("")
	if !strings.HasPrefix(s.endpoint, "https://127.0.0.1:") {
		t.Fatalf("endpoint %s, want the wss:// upstream's", s.endpoint)
	}
	body, err := ece.Encrypt([]byte("over TLS"), s.keys.PublicKey(), s.keys.Auth)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", s.endpoint, bytes.NewReader(body))
	req.Header.Set("TTL", "60")
	req.Header.Set("Content-Encoding", "aes128gcm")
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	mustCreated(t, resp)
	if got, _ := d.receive(10 * time.Second); got != "over TLS" {
		t.Fatalf("device got %q", got)
	}
	edge.stop()
}

// upstream_ca_file: a missing file, one without a certificate, a bad
// certificate and a ws:// upstream are refused with one clear line; a
// good file trusts its CA.
func TestConfigUpstreamCAFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, body []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, body, 0o600)
		return p
	}
	srvTLS, _, err := autopushtest.LoopbackTLS()
	if err != nil {
		t.Fatal(err)
	}
	der := srvTLS.Certificates[0].Certificate[0]
	good := write("good.pem", append([]byte("# the upstream's CA\n"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...))
	wss := "--upstream=wss://push.example.net/"
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"missing", []string{wss, "--upstream-ca-file", filepath.Join(dir, "nope.pem")}, "upstream_ca_file: open"},
		{"not pem", []string{wss, "--upstream-ca-file", write("text.pem", []byte("hello\n"))}, "no PEM certificate"},
		{"only a key", []string{wss, "--upstream-ca-file", write("key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}}))}, "no PEM certificate"},
		{"bad certificate", []string{wss, "--upstream-ca-file", write("bad.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")}))}, "certificate 1"},
		{"ws upstream", []string{"--upstream=ws://push.example.net/", "--upstream-ca-file", good}, "not wss://"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := loadConfig("t", c.args, env(nil), &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("err = %v, want one line mentioning %q", err, c.want)
			}
		})
	}
	cfg, err := loadConfig("t", []string{wss, "--upstream-ca-file", good}, env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := cfg.nodeConfig(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if nc.UpstreamTLS == nil || nc.UpstreamTLS.RootCAs == nil {
		t.Fatalf("UpstreamTLS = %+v, want the file's CA in RootCAs", nc.UpstreamTLS)
	}
	cert, _ := x509.ParseCertificate(der)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: nc.UpstreamTLS.RootCAs}); err != nil {
		t.Errorf("the file's CA is not trusted: %v", err)
	}
	cfg, _ = loadConfig("t", []string{wss}, env(nil), &bytes.Buffer{})
	if nc, err := cfg.nodeConfig(slog.New(slog.DiscardHandler)); err != nil || nc.UpstreamTLS != nil {
		t.Errorf("without upstream_ca_file: UpstreamTLS %+v, %v; want nil (the system roots)", nc.UpstreamTLS, err)
	}
}
