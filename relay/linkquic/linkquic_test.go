package linkquic

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pushrelay/pushrelay/relay/leakcheck"
	"github.com/pushrelay/pushrelay/relay/linkauth"
	"github.com/pushrelay/pushrelay/relay/linkproto"
	"github.com/pushrelay/pushrelay/relay/metrics"
)

func TestMain(m *testing.M) {
	// quic-go warns (log.Printf) when it cannot get 7 MiB socket buffers,
	// as it cannot in an unprivileged test run.
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	code := m.Run()
	if code == 0 {
		if err := quicLeftover(5 * time.Second); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	if code == 0 {
		if err := leakcheck.Check(5 * time.Second); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// quicLeftover fails the run if quic-go's goroutines outlive the tests:
// leakcheck counts only ours, and a Conn or Listener that did not close
// its transport leaves quic-go's running.
func quicLeftover(grace time.Duration) error {
	var left string
	for deadline := time.Now().Add(grace); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		left = ""
		buf := make([]byte, 1<<20)
		for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
			if strings.Contains(g, "github.com/quic-go/quic-go") {
				left += g + "\n\n"
			}
		}
		if left == "" {
			return nil
		}
	}
	return fmt.Errorf("quic-go goroutines left running after the tests:\n\n%s", left)
}

// logBuf is a log the test reads back.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
	t   *testing.T
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.t.Logf("%s", bytes.TrimSpace(p))
	return l.buf.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// site is a CA directory with relays issued by it.
type site struct {
	dir string
}

func newSite(t *testing.T) *site {
	t.Helper()
	s := &site{dir: t.TempDir()}
	if _, err := linkauth.NewCA(filepath.Join(s.dir, "ca"), "", false); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *site) issue(t *testing.T, name string) (cert, key string) {
	t.Helper()
	if _, err := linkauth.Issue(filepath.Join(s.dir, "ca"), name, filepath.Join(s.dir, "relays"), false); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(s.dir, "relays", name+".crt"), filepath.Join(s.dir, "relays", name+".key")
}

func (s *site) caFile() string { return filepath.Join(s.dir, "ca", linkauth.CACertFile) }

// creds loads a relay issued by the site, trusting the site's CA.
func (s *site) creds(t *testing.T, name string) *linkauth.Credentials {
	t.Helper()
	cert, key := s.issue(t, name)
	c, err := linkauth.Load(cert, key, s.caFile(), nil, "")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// parent is a listening parent relay.
type parent struct {
	l   *Listener
	reg *metrics.Registry
	log *logBuf
}

func listen(t *testing.T, addr string, c *linkauth.Credentials, cfg Config) *parent {
	t.Helper()
	p := &parent{reg: metrics.NewRegistry(), log: &logBuf{t: t}}
	tlsConf, err := c.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	cfg.TLS = tlsConf
	cfg.Metrics = p.reg
	cfg.Logger = slog.New(slog.NewTextHandler(p.log, nil))
	p.l, err = Listen(addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.l.Close() })
	return p
}

func (p *parent) addr() string { return p.l.Addr().String() }

func (p *parent) handshakes(result string) float64 {
	return p.reg.Value(fmt.Sprintf(`pushrelay_link_handshakes_total{result="%s"}`, result))
}

func dial(t *testing.T, addr string, c *linkauth.Credentials, cfg Config) (*Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	cfg.TLS = c.ClientTLS()
	conn, err := Dial(ctx, addr, cfg)
	if err == nil {
		t.Cleanup(func() { conn.Close(CodeNone, "") })
	}
	return conn, err
}

func accept(t *testing.T, p *parent) *Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := p.l.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(CodeNone, "") })
	return c
}

func ctx5(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// hello is the child's side of a control-stream exchange: it writes msg
// and reads the parent's answer up to a newline.
func hello(ctx context.Context, c *Conn, msg string) (*Stream, string, error) {
	s, err := c.OpenControl(ctx)
	if err != nil {
		return nil, "", err
	}
	if _, err := s.Write([]byte(msg + "\n")); err != nil {
		return nil, "", err
	}
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := readLine(s)
	return s, line, err
}

func readLine(r io.Reader) (string, error) {
	var b []byte
	one := make([]byte, 1)
	for {
		if _, err := io.ReadFull(r, one); err != nil {
			return string(b), err
		}
		if one[0] == '\n' {
			return string(b), nil
		}
		b = append(b, one[0])
	}
}

// A round trip over mutual TLS: the control stream both ways, four data
// streams parent to child, each end seeing the other's relay name, and
// the exporter equal at both ends.
func TestRoundTrip(t *testing.T) {
	s := newSite(t)
	p := listen(t, "127.0.0.1:0", s.creds(t, "core-1"), Config{})
	child, err := dial(t, p.addr(), s.creds(t, "edge-1"), Config{})
	if err != nil {
		t.Fatal(err)
	}
	if got := child.Peer(); got != "core-1" {
		t.Errorf("child sees parent %q, want core-1", got)
	}
	done := make(chan error, 1)
	var pc *Conn
	go func() {
		ctx := ctx5(t)
		pc = accept(t, p)
		ctl, err := pc.AcceptControl(ctx)
		if err != nil {
			done <- err
			return
		}
		line, err := readLine(ctl)
		if err != nil {
			done <- err
			return
		}
		if _, err := ctl.Write([]byte("welcome " + line + "\n")); err != nil {
			done <- err
			return
		}
		for i := range 4 {
			ds, err := pc.OpenData(ctx)
			if err != nil {
				done <- err
				return
			}
			msg := bytes.Repeat([]byte{byte('a' + i)}, 300<<10) // beyond the initial window
			if _, err := ds.Write(msg); err != nil {
				done <- err
				return
			}
			if err := ds.Close(); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	ctx := ctx5(t)
	_, answer, err := hello(ctx, child, "edge-1")
	if err != nil {
		t.Fatal(err)
	}
	if answer != "welcome edge-1" {
		t.Errorf("answer %q", answer)
	}
	seen := map[byte]bool{}
	for range 4 {
		ds, err := child.AcceptData(ctx)
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(ds)
		if err != nil {
			t.Fatal(err)
		}
		if len(data) != 300<<10 || bytes.Count(data, data[:1]) != len(data) {
			t.Fatalf("data stream: %d bytes, not 300 KiB of one letter", len(data))
		}
		seen[data[0]] = true
	}
	if len(seen) != 4 {
		t.Errorf("data streams carried %d distinct payloads, want 4", len(seen))
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := pc.Peer(); got != "edge-1" {
		t.Errorf("parent sees child %q, want edge-1", got)
	}
	ec, err := child.Exporter()
	if err != nil {
		t.Fatal(err)
	}
	ep, err := pc.Exporter()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ec, ep) || len(ec) != 32 {
		t.Errorf("exporters differ: %x / %x", ec, ep)
	}
	if got := p.handshakes("ok"); got != 1 {
		t.Errorf("ok handshakes %v, want 1", got)
	}
}

// refusedChild dials p with c and returns the error its first control
// exchange ends with (the parent's verdict on a child's certificate
// arrives after the child's handshake completes).
func refusedChild(t *testing.T, p *parent, c *linkauth.Credentials) error {
	t.Helper()
	conn, err := dial(t, p.addr(), c, Config{})
	if err != nil {
		return err
	}
	_, _, err = hello(ctx5(t), conn, "me")
	if err == nil {
		t.Fatal("a refused child's hello got an answer")
	}
	return err
}

func wantRefusal(t *testing.T, p *parent, err error, childWords, reason string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), childWords) {
		t.Errorf("child's error %v, want it to say %q", err, childWords)
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.handshakes(reason) != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := p.handshakes(reason); got != 1 {
		t.Errorf("parent counted %v %s refusals, want 1", got, reason)
	}
	if !strings.Contains(p.log.String(), "reason="+reason) {
		t.Errorf("parent's log does not name %s:\n%s", reason, p.log.String())
	}
}

// A child with a certificate from another site's CA is refused: the
// parent logs and counts bad_ca, the child's error says so.
func TestMutualTLSRefusesOtherCA(t *testing.T) {
	s, other := newSite(t), newSite(t)
	p := listen(t, "127.0.0.1:0", s.creds(t, "core-1"), Config{})
	stranger := other.creds(t, "edge-x")
	stranger.Trust = s.creds(t, "unused").Trust // it trusts the parent
	err := refusedChild(t, p, stranger)
	wantRefusal(t, p, err, "not signed by its site CA (bad_ca)", "bad_ca")
	if ce, ok := errors.AsType[*CloseError](err); !ok || ce.Cause != "tls" {
		t.Errorf("child's error is %T %v, want a *CloseError of cause tls", err, err)
	}
}

// A child refuses a parent whose certificate is not from its CA: Dial
// fails and names the reason.
func TestChildRefusesParentOfOtherCA(t *testing.T) {
	s, other := newSite(t), newSite(t)
	p := listen(t, "127.0.0.1:0", other.creds(t, "core-x"), Config{})
	_, err := dial(t, p.addr(), s.creds(t, "edge-1"), Config{})
	if err == nil || !strings.Contains(err.Error(), "not signed by the site CA") {
		t.Fatalf("dial error %v, want it to name the CA", err)
	}
	if !errors.Is(err, linkauth.ErrBadCA) {
		t.Errorf("dial error does not match ErrBadCA")
	}
}

// A child with no certificate at all is refused in mutual TLS.
func TestMutualTLSRefusesNoCertificate(t *testing.T) {
	s := newSite(t)
	p := listen(t, "127.0.0.1:0", s.creds(t, "core-1"), Config{})
	anon, err := linkauth.Load("", "", s.caFile(), nil, "")
	if err != nil {
		t.Fatal(err)
	}
	err = refusedChild(t, p, anon)
	wantRefusal(t, p, err, "no_certificate", "no_certificate")
}

// pinned makes a self-signed relay and returns its credentials (trusting
// pins) and its own pin.
func pinned(t *testing.T, dir, name string, trust ...string) (*linkauth.Credentials, string) {
	t.Helper()
	cert, err := linkauth.Issue("", name, dir, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(trust) == 0 {
		trust = []string{"47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="} // sha256("")
	}
	c, err := linkauth.Load(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"), "", trust, "")
	if err != nil {
		t.Fatal(err)
	}
	return c, linkauth.Pin(cert)
}

// Pins: self-signed relays that list each other's pins connect; a child
// whose pin the parent does not list is refused with unknown_pin.
func TestPins(t *testing.T) {
	dir := t.TempDir()
	parentCreds, parentPin := pinned(t, dir, "core-1")
	childCreds, childPin := pinned(t, dir, "edge-1", parentPin)
	strangerCreds, _ := pinned(t, dir, "edge-x", parentPin)
	parentCreds.Trust.Pins[childPin] = true

	p := listen(t, "127.0.0.1:0", parentCreds, Config{})
	c, err := dial(t, p.addr(), childCreds, Config{})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		pc := accept(t, p)
		if ctl, err := pc.AcceptControl(ctx5(t)); err == nil {
			ctl.Write([]byte("welcome\n"))
		}
	}()
	if _, answer, err := hello(ctx5(t), c, "edge-1"); err != nil || answer != "welcome" {
		t.Fatalf("pinned child: %q, %v", answer, err)
	}

	err = refusedChild(t, p, strangerCreds)
	wantRefusal(t, p, err, "not pinned there (unknown_pin)", "unknown_pin")

	// And a child that does not pin the parent refuses it.
	wrongPin, _ := pinned(t, dir, "edge-2")
	_, err = dial(t, p.addr(), wrongPin, Config{})
	if !errors.Is(err, linkauth.ErrUnknownPin) || !strings.Contains(err.Error(), "not pinned") {
		t.Errorf("dial error %v, want unknown pin", err)
	}
}

// tokenParent serves children in token mode: it reads a binding line
// (hex) on the control stream and welcomes or refuses the child.
func tokenParent(t *testing.T, p *parent, token []byte, n int) {
	t.Helper()
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	wg.Go(func() {
		for range n {
			ctx := ctx5(t)
			pc, err := p.l.Accept(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			t.Cleanup(func() { pc.Close(CodeNone, "") })
			ctl, err := pc.AcceptControl(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			line, err := readLine(ctl)
			if err != nil {
				t.Error(err)
				return
			}
			var binding []byte
			fmt.Sscanf(line, "%x", &binding)
			if err := pc.VerifyBinding(token, binding); err != nil {
				pc.Refuse(err)
				continue
			}
			ctl.Write([]byte("welcome\n"))
		}
	})
}

// Token mode: the child sends no certificate but HMAC(token, exporter);
// the right token is welcomed, a wrong one refused with wrong_token, and
// a binding replayed from another connection refused too.
func TestTokenBinding(t *testing.T) {
	s := newSite(t)
	token, err := linkauth.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	parentCreds := s.creds(t, "core-1")
	parentCreds.Token = []byte(token)
	p := listen(t, "127.0.0.1:0", parentCreds, Config{})
	tokenParent(t, p, []byte(token), 3)

	child := func(tok string) *Conn {
		c, err := linkauth.Load("", "", s.caFile(), nil, tok)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := dial(t, p.addr(), c, Config{})
		if err != nil {
			t.Fatal(err)
		}
		return conn
	}
	good := child(token)
	binding, err := good.Binding([]byte(token))
	if err != nil {
		t.Fatal(err)
	}
	if _, answer, err := hello(ctx5(t), good, fmt.Sprintf("%x", binding)); err != nil || answer != "welcome" {
		t.Fatalf("right token: %q, %v", answer, err)
	}

	wrong := child("not-the-token")
	wb, _ := wrong.Binding([]byte("not-the-token"))
	_, _, err = hello(ctx5(t), wrong, fmt.Sprintf("%x", wb))
	wantRefusal(t, p, err, "wrong token", "wrong_token")
	if ce, ok := errors.AsType[*CloseError](err); !ok || ce.Cause != "remote" || ce.Code != linkproto.CodeUnknownChild {
		t.Errorf("wrong token: %v, want a remote close with linkproto's code unknown child", err)
	}

	// A binding seen on one connection (good's) replayed on another.
	replay := child(token)
	_, _, err = hello(ctx5(t), replay, fmt.Sprintf("%x", binding))
	if err == nil || !strings.Contains(err.Error(), "wrong token") {
		t.Errorf("replayed binding: %v, want refused", err)
	}
	if got := p.handshakes("wrong_token"); got != 2 {
		t.Errorf("wrong_token refusals %v, want 2", got)
	}
}

// A client that does not offer pushrelay/1 is refused with wrong_alpn;
// our child dialing a server of another protocol says so too.
func TestWrongALPN(t *testing.T) {
	s := newSite(t)
	p := listen(t, "127.0.0.1:0", s.creds(t, "core-1"), Config{})
	child := s.creds(t, "edge-1")
	tlsConf := child.ClientTLS()
	tlsConf.NextProtos = []string{"h3"}
	ctx := ctx5(t)
	qc, err := quic.DialAddr(ctx, p.addr(), tlsConf, nil)
	if err == nil {
		qc.CloseWithError(0, "")
		t.Fatal("a client speaking h3 was let in")
	}
	if got := p.handshakes("wrong_alpn"); got != 1 {
		t.Errorf("wrong_alpn refusals %v, want 1", got)
	}
	if !strings.Contains(p.log.String(), "reason=wrong_alpn") {
		t.Errorf("log does not name wrong_alpn:\n%s", p.log.String())
	}

	// A QUIC server speaking h3 only.
	serverCreds := s.creds(t, "web")
	stls, _ := serverCreds.ServerTLS()
	stls.NextProtos = []string{"h3"}
	ln, err := quic.ListenAddr("127.0.0.1:0", stls, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = dial(t, ln.Addr().String(), child, Config{})
	if err == nil || !strings.Contains(err.Error(), "wrong_alpn") {
		t.Errorf("dial to an h3 server: %v, want wrong_alpn", err)
	}
}

// A listener with an ALPN of its own (a peer protocol) refuses a link
// child and takes a dialer naming the same ALPN, which may open Streams
// bidirectional streams at once.
func TestOwnALPNAndStreams(t *testing.T) {
	s := newSite(t)
	peerCfg := Config{ALPN: "pushrelay-test/1", Streams: 2}
	p := listen(t, "127.0.0.1:0", s.creds(t, "core-1"), peerCfg)
	child := s.creds(t, "edge-1")
	if _, err := dial(t, p.addr(), child, Config{}); err == nil || !strings.Contains(err.Error(), "wrong_alpn") {
		t.Errorf("a link child dialing a peer listener: %v, want wrong_alpn", err)
	}
	if got := p.handshakes("wrong_alpn"); got != 1 {
		t.Errorf("wrong_alpn refusals %v, want 1", got)
	}
	c, err := dial(t, p.addr(), child, peerCfg)
	if err != nil {
		t.Fatal(err)
	}
	pc := accept(t, p)
	ctx := ctx5(t)
	for i := range 2 {
		st, err := c.OpenControl(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := pc.AcceptControl(ctx); err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
	}
	// A third is held back until one of the two ends.
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := c.OpenControl(short); err == nil {
		t.Error("a third stream opened with Streams 2")
	}
}

// A second dial resumes the TLS session (the child's session cache), and
// mutual TLS still knows the child by name.
func TestSessionResumption(t *testing.T) {
	s := newSite(t)
	p := listen(t, "127.0.0.1:0", s.creds(t, "core-1"), Config{})
	cc := s.creds(t, "edge-1")
	cfg := Config{TLS: cc.ClientTLS()}
	for i := range 2 {
		ctx := ctx5(t)
		c, err := Dial(ctx, p.addr(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		pc := accept(t, p)
		// Exchange on the control stream, so the session ticket arrives.
		go func() {
			if ctl, err := pc.AcceptControl(ctx); err == nil {
				ctl.Write([]byte("welcome\n"))
			}
		}()
		if _, _, err := hello(ctx, c, "x"); err != nil {
			t.Fatal(err)
		}
		if got, want := c.Resumed(), i == 1; got != want {
			t.Errorf("dial %d: resumed %v, want %v", i, got, want)
		}
		if pc.Peer() != "edge-1" {
			t.Errorf("dial %d: parent sees %q", i, pc.Peer())
		}
		c.Close(CodeNone, "")
	}
}

// Close sends its code and reason once; later calls do nothing more and
// return the same.
func TestCloseIdempotent(t *testing.T) {
	s := newSite(t)
	p := listen(t, "127.0.0.1:0", s.creds(t, "core-1"), Config{})
	c, err := dial(t, p.addr(), s.creds(t, "edge-1"), Config{})
	if err != nil {
		t.Fatal(err)
	}
	pc := accept(t, p)
	first := pc.Close(CodeShutdown, "parent stopping")
	for range 3 {
		if err := pc.Close(CodeInternal, "again"); err != first {
			t.Errorf("second Close %v, first %v", err, first)
		}
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("child did not see the close")
	}
	ce, ok := errors.AsType[*CloseError](c.Err())
	if !ok || ce.Cause != "remote" || ce.Code != CodeShutdown || ce.Reason != "parent stopping" {
		t.Errorf("child sees %v, want remote shutdown \"parent stopping\"", c.Err())
	}
	if c.Close(CodeNone, "") != c.Close(CodeNone, "") {
		t.Error("child's Close not idempotent")
	}

	// The child's Close reaches the parent before its socket closes.
	c2, err := dial(t, p.addr(), s.creds(t, "edge-2"), Config{})
	if err != nil {
		t.Fatal(err)
	}
	pc2 := accept(t, p)
	if err := c2.Close(CodeProtocol, "bad frame"); err != nil {
		t.Errorf("child's Close: %v", err)
	}
	select {
	case <-pc2.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("parent did not see the child's close")
	}
	ce, ok = errors.AsType[*CloseError](pc2.Err())
	if !ok || ce.Cause != "remote" || ce.Code != CodeProtocol || ce.Reason != "bad frame" {
		t.Errorf("parent sees %v, want remote protocol \"bad frame\"", pc2.Err())
	}
	// The count is taken just after the connection's context ends.
	for deadline := time.Now().Add(5 * time.Second); p.reg.Value("pushrelay_link_conns_open") != 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if got := p.reg.Value(`pushrelay_link_closes_total{cause="remote"}`); got != 1 {
		t.Errorf("remote closes counted %v, want 1", got)
	}
	if got := p.reg.Value(`pushrelay_link_closes_total{cause="local"}`); got != 1 {
		t.Errorf("local closes counted %v, want 1", got)
	}
	if got := p.reg.Value("pushrelay_link_conns_open"); got != 0 {
		t.Errorf("open conns %v, want 0", got)
	}
	first = p.l.Close()
	if first != nil {
		t.Errorf("listener Close: %v", first)
	}
	if err := p.l.Close(); err != first {
		t.Errorf("second listener Close: %v", err)
	}
}

// The reset key is made once, 0600, and read back the same.
func TestResetKeyPersisted(t *testing.T) {
	path := filepath.Join(t.TempDir(), ResetKeyFile)
	k1, err := LoadResetKey(path)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := LoadResetKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if *k1 != *k2 {
		t.Error("reset key changed between loads")
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("reset key mode %v", st.Mode().Perm())
	}
	os.WriteFile(path, []byte("short"), 0o600)
	if _, err := LoadResetKey(path); err == nil {
		t.Error("a 5-byte key was taken")
	}
}

// restartNotice connects a child, stops the parent without a word (as a
// crash does) and starts a new one on the same port with key2, then has
// the child send; it returns how long the child took to see its link end
// and why.
func restartNotice(t *testing.T, key1, key2 *[32]byte, idle time.Duration) (time.Duration, error) {
	return restartNoticeKeepAlive(t, key1, key2, idle, 0, true)
}

func restartNoticeKeepAlive(t *testing.T, key1, key2 *[32]byte, idle, keepAlive time.Duration, send bool) (time.Duration, error) {
	s := newSite(t)
	pcreds := s.creds(t, "core-1")
	p := listen(t, "127.0.0.1:0", pcreds, Config{ResetKey: key1, IdleTimeout: idle})
	addr := p.addr()
	c, err := dial(t, addr, s.creds(t, "edge-1"), Config{IdleTimeout: idle, KeepAlive: keepAlive})
	if err != nil {
		t.Fatal(err)
	}
	pc := accept(t, p)
	go func() {
		if ctl, err := pc.AcceptControl(ctx5(t)); err == nil {
			ctl.Write([]byte("welcome\n"))
		}
	}()
	ctl, _, err := hello(ctx5(t), c, "edge-1")
	if err != nil {
		t.Fatal(err)
	}
	// Let the acks of the exchange settle, so the write below is what
	// meets the new parent.
	time.Sleep(200 * time.Millisecond)
	p.l.Close() // no CONNECTION_CLOSE: the process is gone
	listen(t, addr, pcreds, Config{ResetKey: key2, IdleTimeout: idle})
	select {
	case <-c.Done():
		t.Fatalf("the child saw its link end before it sent: %v", c.Err())
	default:
	}
	start := time.Now()
	if send {
		ctl.Write([]byte("after the restart\n"))
	}
	select {
	case <-c.Done():
	case <-time.After(idle + 10*time.Second):
		t.Fatal("the child never noticed")
	}
	return time.Since(start), c.Err()
}

// Close codes are linkproto's numbering, one for REFUSE, GOAWAY and the
// close: the code a parent closes with is the one the child reads, with
// linkproto's meaning, and this package's named codes are linkproto's
// (Refuse once closed with 2, which the protocol calls "no common
// version").
func TestCloseCodesAreTheProtocols(t *testing.T) {
	for named, want := range map[Code]linkproto.Code{CodeNone: linkproto.CodeNoError, CodeProtocol: linkproto.CodeProtocol,
		CodeRefused: linkproto.CodeUnknownChild, CodeShutdown: linkproto.CodeShutdown, CodeInternal: linkproto.CodeInternal} {
		if named != want {
			t.Errorf("linkquic's %v is %d, linkproto's is %d", named, uint64(named), uint64(want))
		}
	}
	s := newSite(t)
	p := listen(t, "127.0.0.1:0", s.creds(t, "core-1"), Config{})
	ccreds := s.creds(t, "edge-1")
	for _, code := range []linkproto.Code{linkproto.CodeVersion, linkproto.CodeReplaced, linkproto.CodeBusy, linkproto.CodeShutdown} {
		c, err := dial(t, p.addr(), ccreds, Config{})
		if err != nil {
			t.Fatal(err)
		}
		pc := accept(t, p)
		pc.Close(code, "bye")
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("%v: the child never saw the close", code)
		}
		ce, ok := errors.AsType[*CloseError](c.Err())
		if !ok || ce.Cause != "remote" || ce.Code != code || !strings.Contains(ce.Error(), code.String()) {
			t.Errorf("closed with %v: the child read %v", code, c.Err())
		}
	}
	// Refuse: the child is not allowed here.
	c, err := dial(t, p.addr(), ccreds, Config{})
	if err != nil {
		t.Fatal(err)
	}
	accept(t, p).Refuse(errors.New("not on the list"))
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("refused: the child never saw the close")
	}
	if ce, ok := errors.AsType[*CloseError](c.Err()); !ok || ce.Code != linkproto.CodeUnknownChild {
		t.Errorf("refused: the child read %v, want linkproto's %v", c.Err(), linkproto.CodeUnknownChild)
	}
}

// A parent restarted with its persisted reset key answers the child's
// next packet with a stateless reset: the child notices within a round
// trip, far under the idle timeout.
func TestRestartedParentNoticedAtOnce(t *testing.T) {
	key, err := LoadResetKey(filepath.Join(t.TempDir(), ResetKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	took, err := restartNotice(t, key, key, 30*time.Second)
	t.Logf("restarted parent (same reset key) noticed in %v", took)
	if ce, ok := errors.AsType[*CloseError](err); !ok || ce.Cause != "stateless_reset" {
		t.Errorf("child's link ended with %v, want a stateless reset", err)
	}
	if took > 2*time.Second {
		t.Errorf("noticed after %v, want well under the 30 s idle timeout", took)
	}
}

// A child with nothing to send learns of the restart from the reset that
// answers its next keepalive: within one keepalive period (15 s by
// default), here 500 ms.
func TestRestartedParentNoticedByIdleChild(t *testing.T) {
	key, err := LoadResetKey(filepath.Join(t.TempDir(), ResetKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	const keepAlive = 500 * time.Millisecond
	took, err := restartNoticeKeepAlive(t, key, key, 30*time.Second, keepAlive, false)
	t.Logf("restarted parent noticed by an idle child in %v (keepalive %v)", took, keepAlive)
	if ce, ok := errors.AsType[*CloseError](err); !ok || ce.Cause != "stateless_reset" {
		t.Errorf("child's link ended with %v, want a stateless reset", err)
	}
	if took > keepAlive+2*time.Second {
		t.Errorf("noticed after %v, want within about one keepalive (%v)", took, keepAlive)
	}
}

// With a new key (a parent that did not keep it) the child cannot tell
// the reset from noise and waits out the idle timeout: why the key is
// kept in the data dir.
func TestRestartedParentWithNewKeyNoticedAtIdleTimeout(t *testing.T) {
	dir := t.TempDir()
	k1, err := LoadResetKey(filepath.Join(dir, "1"))
	if err != nil {
		t.Fatal(err)
	}
	k2, err := LoadResetKey(filepath.Join(dir, "2"))
	if err != nil {
		t.Fatal(err)
	}
	const idle = 2 * time.Second
	took, err := restartNotice(t, k1, k2, idle)
	t.Logf("restarted parent (new reset key) noticed in %v", took)
	if ce, ok := errors.AsType[*CloseError](err); !ok || ce.Cause != "idle_timeout" {
		t.Errorf("child's link ended with %v, want an idle timeout", err)
	}
	if took < idle*3/4 {
		t.Errorf("noticed after %v, before the %v idle timeout", took, idle)
	}
}

// The child moves to a new UDP socket mid-connection; the parent follows
// and data still flows both ways.
func TestMigration(t *testing.T) {
	s := newSite(t)
	p := listen(t, "127.0.0.1:0", s.creds(t, "core-1"), Config{})
	c, err := dial(t, p.addr(), s.creds(t, "edge-1"), Config{})
	if err != nil {
		t.Fatal(err)
	}
	pc := accept(t, p)
	ctx := ctx5(t)
	echo := make(chan error, 1)
	go func() {
		ctl, err := pc.AcceptControl(ctx)
		if err != nil {
			echo <- err
			return
		}
		for {
			line, err := readLine(ctl)
			if err != nil {
				echo <- err
				return
			}
			if _, err := ctl.Write([]byte("echo " + line + " from " + pc.RemoteAddr().String() + "\n")); err != nil {
				echo <- err
				return
			}
		}
	}()
	ctl, answer, err := hello(ctx, c, "one")
	if err != nil {
		t.Fatal(err)
	}
	port := func(a net.Addr) string { return strconv.Itoa(a.(*net.UDPAddr).Port) }
	before := port(c.LocalAddr())
	if !strings.HasSuffix(answer, ":"+before) {
		t.Fatalf("answer %q", answer)
	}
	if err := c.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	after := port(c.LocalAddr())
	if after == before {
		t.Fatalf("local address still %s after Migrate", after)
	}
	// The parent moves to the new path once it sees a non-probing packet
	// from it: the answers name the address it sends to.
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; ; i++ {
		ctl.Write([]byte(fmt.Sprintf("msg%d\n", i)))
		line, err := readLine(ctl)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(line, fmt.Sprintf("echo msg%d from ", i)) && strings.HasSuffix(line, ":"+after) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("parent still answers %q, want it at %s", line, after)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A data stream after the move.
	go func() {
		if ds, err := pc.OpenData(ctx); err == nil {
			ds.Write(bytes.Repeat([]byte("z"), 100<<10))
			ds.Close()
		}
	}()
	ds, err := c.AcceptData(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if data, err := io.ReadAll(ds); err != nil || len(data) != 100<<10 {
		t.Fatalf("data after migration: %d bytes, %v", len(data), err)
	}
	if err := pc.Migrate(ctx); err == nil {
		t.Error("the parent's end migrated")
	}
	c.Close(CodeNone, "")
	<-echo
}

// BenchmarkDataStreams measures the transport alone: the parent writes
// 200-byte records on 4 data streams over loopback, the child reads them
// (mutual TLS, default windows). Reports records/s.
func BenchmarkDataStreams(b *testing.B) {
	dir := b.TempDir()
	if _, err := linkauth.NewCA(filepath.Join(dir, "ca"), "", false); err != nil {
		b.Fatal(err)
	}
	load := func(name string) *linkauth.Credentials {
		if _, err := linkauth.Issue(filepath.Join(dir, "ca"), name, dir, false); err != nil {
			b.Fatal(err)
		}
		c, err := linkauth.Load(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"), filepath.Join(dir, "ca", linkauth.CACertFile), nil, "")
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	stls, _ := load("core-1").ServerTLS()
	l, err := Listen("127.0.0.1:0", Config{TLS: stls, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	ctx := b.Context()
	child, err := Dial(ctx, l.Addr().String(), Config{TLS: load("edge-1").ClientTLS()})
	if err != nil {
		b.Fatal(err)
	}
	defer child.Close(CodeNone, "")
	pc, err := l.Accept(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer pc.Close(CodeNone, "")
	const streams, rec = 4, 200
	per := b.N/streams + 1
	var wg sync.WaitGroup
	b.SetBytes(rec)
	b.ResetTimer()
	for range streams {
		wg.Go(func() {
			ds, err := pc.OpenData(ctx)
			if err != nil {
				b.Error(err)
				return
			}
			buf := bytes.Repeat([]byte("m"), rec*64)
			for left := per; left > 0; left -= 64 {
				n := min(left, 64)
				if _, err := ds.Write(buf[:n*rec]); err != nil {
					b.Error(err)
					return
				}
			}
			ds.Close()
		})
	}
	for range streams {
		ds, err := child.AcceptData(ctx)
		if err != nil {
			b.Fatal(err)
		}
		wg.Go(func() {
			n, err := io.Copy(io.Discard, ds)
			if err != nil || n != int64(per*rec) {
				b.Errorf("read %d bytes, %v", n, err)
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(streams*per)/b.Elapsed().Seconds(), "records/s")
}
