package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/pushclient"
)

// The README's two-terminal demo, as binaries: `pushrelay device` prints a
// subscription, `pushrelay send` posts to it (encrypted, VAPID-signed), the
// device prints the decrypted text.
func TestE2EDeviceAndSendTools(t *testing.T) {
	p := startRelay(t, t.TempDir())
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "vapid.pem")
	out, err := exec.Command(binPath, "keygen", keyFile).Output()
	if err != nil {
		t.Fatalf("keygen: %v", err)
	}
	pub := strings.TrimSpace(strings.TrimPrefix(string(out), "vapid public key "))
	// keygen takes no flags: -h asks for usage and writes no file named -h.
	help := exec.Command(binPath, "keygen", "-h")
	help.Dir = dir
	if err := help.Run(); err == nil {
		t.Error("keygen -h succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "-h")); err == nil {
		t.Error("keygen -h wrote a key file named -h")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dev := exec.CommandContext(ctx, binPath, "device", "--server", p.Device, "--key", pub, "--count", "2",
		"--state", filepath.Join(dir, "device.json"))
	stdout, _ := dev.StdoutPipe()
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	sub := ""
	for lines.Scan() {
		if s, ok := strings.CutPrefix(lines.Text(), "subscription "); ok {
			sub = s
			break
		}
	}
	if sub == "" {
		t.Fatal("device printed no subscription")
	}
	var parsed struct {
		Endpoint string            `json:"endpoint"`
		Keys     map[string]string `json:"keys"`
	}
	if err := json.Unmarshal([]byte(sub), &parsed); err != nil || parsed.Keys["p256dh"] == "" || parsed.Keys["auth"] == "" {
		t.Fatalf("subscription line %q: %v", sub, err)
	}
	for i, args := range [][]string{
		{"send", "--subscription", sub, "--vapid-key", keyFile, "--data", "hello, device"},
		{"send", "--subscription", sub, "--vapid-key", keyFile, "--data", "legacy coding", "--encoding", "aesgcm", "--urgency", "high", "--topic", "t1"},
	} {
		out, err := exec.Command(binPath, args...).CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "201 Created location=") {
			t.Fatalf("send %d: %v %s", i, err, out)
		}
	}
	var got []string
	for lines.Scan() {
		if strings.HasPrefix(lines.Text(), "notification ") {
			got = append(got, lines.Text())
		}
	}
	if err := dev.Wait(); err != nil {
		t.Fatalf("device exit: %v (got %v)", err, got)
	}
	if len(got) != 2 || !strings.Contains(got[0], `encoding=aes128gcm data="hello, device"`) || !strings.Contains(got[1], `encoding=aesgcm data="legacy coding"`) {
		t.Fatalf("device printed %q", got)
	}
	// A send without the VAPID key to the bound endpoint fails with 401.
	out, err = exec.Command(binPath, "send", "--subscription", sub, "--data", "x").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "401") {
		t.Fatalf("unsigned send to v2: %v %s", err, out)
	}
}

// A real third-party sender: the web-push package from npm delivers an
// encrypted, VAPID-signed payload through the relay.
func TestE2EWebPushNPM(t *testing.T) {
	dir, _ := filepath.Abs("../../testdata/webpush-npm")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "web-push")); err != nil {
		t.Fatalf("web-push is not installed in %s: run `make test` (it runs npm ci there) — %v", dir, err)
	}
	out, err := exec.Command("node", filepath.Join(dir, "genkeys.js")).Output()
	if err != nil {
		t.Fatalf("genkeys: %v", err)
	}
	keys := strings.Fields(string(out))
	// web-push always speaks HTTPS, so the relay serves TLS with a
	// certificate for 127.0.0.1 that node is told to trust.
	certFile, keyFile, pool := selfSignedCert(t)
	p := startRelay(t, t.TempDir(), "--tls-cert-file", certFile, "--tls-key-file", keyFile)
	if !strings.HasPrefix(p.Device, "wss://") || !strings.HasPrefix(p.Endpoint, "https://") {
		t.Fatalf("TLS listeners announced as %s and %s", p.Device, p.Endpoint)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := pushclient.DialTLS(ctx, p.Device, &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Abort()
	if _, err := cl.Hello("", pushclient.HelloOptions{}); err != nil {
		t.Fatal(err)
	}
	d := &device{t: t, c: cl, subs: map[string]*testSub{}}
	s := d.register(keys[0])
	if !strings.HasPrefix(s.endpoint, "https://127.0.0.1:") || !strings.Contains(s.endpoint, "/wpush/v2/") {
		t.Fatalf("endpoint %q", s.endpoint)
	}
	sub, _ := json.Marshal(map[string]any{"endpoint": s.endpoint, "keys": map[string]string{
		"p256dh": b64(s.keys.PublicKey()), "auth": b64(s.keys.Auth)}})
	node := exec.Command("node", filepath.Join(dir, "send.js"), string(sub), "from node web-push", keys[0], keys[1])
	node.Env = append(os.Environ(), "NODE_EXTRA_CA_CERTS="+certFile)
	out, err = node.CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "status 201") {
		t.Fatalf("web-push send: %v %s", err, out)
	}
	if text, _ := d.receive(5 * time.Second); text != "from node web-push" {
		t.Fatalf("device got %q", text)
	}

	// The legacy aesgcm encoding: web-push puts salt in Encryption and dh
	// plus its VAPID key in Crypto-Key; the device gets them as autopush
	// sends them (unquoted, unpadded: web-push's are already) and decrypts.
	node = exec.Command("node", filepath.Join(dir, "send.js"), string(sub), "aesgcm from node", keys[0], keys[1])
	node.Env = append(os.Environ(), "NODE_EXTRA_CA_CERTS="+certFile, "CONTENT_ENCODING=aesgcm")
	if out, err = node.CombinedOutput(); err != nil || !strings.HasPrefix(string(out), "status 201") {
		t.Fatalf("web-push send aesgcm: %v %s", err, out)
	}
	n, err := cl.Next(time.Now().Add(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	h := n.Headers
	if h == nil || h.Encoding != "aesgcm" || !strings.HasPrefix(h.Encryption, "salt=") ||
		!strings.HasPrefix(h.CryptoKey, "dh=") || !strings.Contains(h.CryptoKey, ";p256ecdsa="+keys[0]) ||
		strings.Contains(h.Encryption+h.CryptoKey, `"`) || strings.HasSuffix(h.Encryption, "=") {
		t.Fatalf("aesgcm headers %+v", h)
	}
	raw, _ := b64url(n.Data)
	if plain, err := ece.DecryptAESGCM(raw, s.keys, h.Encryption, h.CryptoKey); err != nil || string(plain) != "aesgcm from node" {
		t.Fatalf("decrypt aesgcm: %q %v", plain, err)
	}
}

// selfSignedCert writes a certificate and key for 127.0.0.1 and returns a
// pool trusting it.
func selfSignedCert(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pushrelay test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	kd, _ := x509.MarshalECPrivateKey(key)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// SimplePush: a Firefox OS 1.x device (no use_webpush) gets /update/
// endpoints; PUT version=N reaches it as a SimplePush notification, newer
// versions replace older ones, and its integer ack removes the message.
func TestE2ESimplePush(t *testing.T) {
	p := startRelay(t, t.TempDir())
	c := dial(t, p)
	h, err := c.Hello("", pushclient.HelloOptions{Legacy: true})
	if err != nil {
		t.Fatal(err)
	}
	ch := newChannelID()
	r, err := c.Register(ch, "")
	if err != nil || !strings.Contains(r.PushEndpoint, "/update/") {
		t.Fatalf("legacy register: %v %+v", err, r)
	}
	c.Close()
	for _, v := range []string{"5", "7"} {
		if res := do(t, "PUT", r.PushEndpoint, []byte("version="+v), map[string]string{"Content-Type": "application/x-www-form-urlencoded"}); res.code != 201 {
			t.Fatalf("PUT version=%s: %d %s", v, res.code, res.body)
		}
	}
	if w := p.waiting(); w != 1 {
		t.Fatalf("waiting = %d, want 1 (newer version replaces older)", w)
	}
	c2 := dial(t, p)
	if _, err := c2.Hello(h.UAID, pushclient.HelloOptions{Legacy: true}); err != nil {
		t.Fatal(err)
	}
	n, err := c2.Next(time.Now().Add(5 * time.Second))
	if err != nil || len(n.Updates) != 1 || n.Updates[0].Version != 7 || n.Updates[0].ChannelID != ch {
		t.Fatalf("simplepush notification: %v %+v", err, n)
	}
	if err := c2.Ack(n); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "acked version deleted", func() bool { return p.waiting() == 0 })
}

// Broadcasts Firefox sends in hello and broadcast_subscribe are accepted
// and answered; WebPush {} pings are answered.
func TestE2EFirefoxHelloAndPing(t *testing.T) {
	p := startRelay(t, t.TempDir())
	c := dial(t, p)
	h, err := c.Hello("", pushclient.HelloOptions{Broadcasts: map[string]string{"remote-settings/monitor_changes": `"1"`}})
	if err != nil {
		t.Fatal(err)
	}
	if len(h.UAID) != 32 || !h.UseWebPush || h.Status != 200 {
		t.Fatalf("hello reply %+v", h)
	}
	if err := c.Ping(); err != nil {
		t.Fatalf("ping: %v", err)
	}
	c.SendJSON(map[string]any{"messageType": "broadcast_subscribe", "broadcasts": map[string]string{"x/y": "v1"}})
	b, err := c.Next(time.Now().Add(5 * time.Second))
	if err != nil || b.MessageType != "broadcast" {
		t.Fatalf("broadcast_subscribe answer: %v %+v", err, b)
	}
	// Pings closer than 45s apart close the socket (autopush: ExcessivePing).
	c.Send([]byte("{}"))
	_, err = c.Read(time.Now().Add(5 * time.Second))
	if ce, ok := err.(*pushclient.CloseError); !ok || ce.Code != 1011 {
		t.Fatalf("excessive ping: %v", err)
	}
}

func b64(b []byte) string {
	s := strings.TrimRight(base64URL(b), "=")
	return s
}

func base64URL(b []byte) string { return ece.EncodeKey(b) }
