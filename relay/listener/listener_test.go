package listener

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pushrelay/pushrelay/relay/metrics"
)

// guard is a guarded listener on 127.0.0.1:0 whose accepted connections
// arrive on a channel; the accept loop ends when the test does.
type guard struct {
	*Listener
	reg      *metrics.Registry
	accepted chan net.Conn
}

func newGuard(t *testing.T, cfg Config) *guard {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := metrics.NewRegistry()
	cfg.Metrics = NewMetrics(reg)
	if cfg.Name == "" {
		cfg.Name = "test"
	}
	cfg.Logger = slog.New(slog.NewTextHandler(tWriter{t}, nil))
	g := &guard{Listener: Wrap(inner, cfg), reg: reg, accepted: make(chan net.Conn, 100)}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := g.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("Accept: %v, want a closed-listener error", err)
				}
				return
			}
			g.accepted <- c
		}
	})
	t.Cleanup(func() {
		g.Close()
		wg.Wait()
		close(g.accepted)
		for c := range g.accepted {
			c.Close()
		}
	})
	return g
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// dialFrom connects to g from the local address src (any of 127.0.0.0/8).
func dialFrom(t *testing.T, g *guard, src string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", g.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// next returns the next accepted connection.
func (g *guard) next(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c := <-g.accepted:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no connection accepted within 5s")
		return nil
	}
}

// closedByServer reports whether the server closed c (EOF or reset) rather
// than holding it open, waiting at most 5s.
func closedByServer(t *testing.T, c net.Conn) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return err != nil
}

// waitFor polls cond for up to 5s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// heldOpen reports whether c is still open from the server's side: a read
// times out instead of ending.
func heldOpen(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	return errors.Is(err, os.ErrDeadlineExceeded)
}

func TestMaxPerSource(t *testing.T) {
	g := newGuard(t, Config{MaxPerSource: 2})

	// Two open from 127.0.0.2 are accepted, the third is closed at once.
	c1 := dialFrom(t, g, "127.0.0.2")
	s1 := g.next(t)
	c2 := dialFrom(t, g, "127.0.0.2")
	g.next(t)
	c3 := dialFrom(t, g, "127.0.0.2")
	if !closedByServer(t, c3) {
		t.Fatal("a third connection from one source was held open")
	}
	if got := g.reg.Value(`pushrelay_listener_refused_total{listener="test",reason="per_source"}`); got != 1 {
		t.Errorf("refused per_source = %v, want 1", got)
	}
	// Another source is not affected.
	dialFrom(t, g, "127.0.0.3")
	g.next(t)
	if got := g.Open(); got != 3 {
		t.Errorf("Open() = %d, want 3", got)
	}
	if got := g.reg.Value(`pushrelay_listener_connections{listener="test"}`); got != 3 {
		t.Errorf("connections gauge = %v, want 3", got)
	}
	if !heldOpen(c2) {
		t.Error("an accepted connection was closed")
	}

	// Closing one frees its source's slot.
	s1.Close()
	if !closedByServer(t, c1) {
		t.Fatal("server-side close did not reach the client")
	}
	c4 := dialFrom(t, g, "127.0.0.2")
	g.next(t)
	if !heldOpen(c4) {
		t.Fatal("a connection after its source's slot was freed was not accepted")
	}
	if got := g.reg.Value(`pushrelay_listener_refused_total{listener="test",reason="per_source"}`); got != 1 {
		t.Errorf("refused per_source = %v, want still 1", got)
	}
}

func TestMaxConnsWaitsForASlot(t *testing.T) {
	g := newGuard(t, Config{MaxConns: 2})
	dialFrom(t, g, "127.0.0.2")
	s1 := g.next(t)
	dialFrom(t, g, "127.0.0.3")
	g.next(t)

	// The third connection waits in the kernel's accept queue: it is not
	// accepted, and not closed either.
	c3 := dialFrom(t, g, "127.0.0.4")
	waitFor(t, "the listener to count itself full", func() bool {
		return g.reg.Value(`pushrelay_listener_full_total{listener="test"}`) == 1
	})
	if !heldOpen(c3) {
		t.Fatal("a connection over the overall cap was closed")
	}
	select {
	case <-g.accepted:
		t.Fatal("a connection over the overall cap was accepted")
	default:
	}

	// A slot freed: it is accepted.
	s1.Close()
	s3 := g.next(t)
	if got := s3.RemoteAddr().(*net.TCPAddr).IP.String(); got != "127.0.0.4" {
		t.Errorf("accepted %s, want the waiting 127.0.0.4", got)
	}
	if got := g.Open(); got != 2 {
		t.Errorf("Open() = %d, want 2", got)
	}
}

func TestCloseReleasesOnce(t *testing.T) {
	g := newGuard(t, Config{MaxConns: 1, MaxPerSource: 1})
	dialFrom(t, g, "127.0.0.2")
	s := g.next(t)
	for range 3 {
		s.Close()
	}
	if got := g.Open(); got != 0 {
		t.Fatalf("Open() = %d after closing the only connection, want 0", got)
	}
	if got := g.reg.Value(`pushrelay_listener_connections{listener="test"}`); got != 0 {
		t.Fatalf("connections gauge = %v, want 0", got)
	}
	// The one slot is free again (a second release would have panicked
	// or let two in; a lost one would block this).
	c := dialFrom(t, g, "127.0.0.2")
	g.next(t)
	if !heldOpen(c) {
		t.Fatal("connection after the release was not accepted")
	}
}

func TestCloseEndsAWaitingAccept(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := Wrap(inner, Config{Name: "test", MaxConns: 1})
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	done := make(chan error, 1)
	go func() {
		_, err := l.Accept() // full: waits
		done <- err
	}()
	l.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) || !strings.Contains(err.Error(), "use of closed network connection") {
			t.Fatalf("Accept after Close: %v, want net.ErrClosed (fasthttp matches its text)", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end a waiting Accept")
	}
	if err := l.Close(); err == nil {
		t.Log("second Close returned nil")
	}
}

func TestSleepUnlessClosed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		stop := make(chan struct{})
		start := time.Now()
		if !sleepUnlessClosed(time.Second, stop) {
			t.Fatal("sleep reported closed")
		}
		if got := time.Since(start); got != time.Second {
			t.Fatalf("slept %v, want 1s", got)
		}
		go func() {
			time.Sleep(10 * time.Millisecond)
			close(stop)
		}()
		start = time.Now()
		if sleepUnlessClosed(time.Second, stop) {
			t.Fatal("sleep did not report the close")
		}
		if got := time.Since(start); got != 10*time.Millisecond {
			t.Fatalf("close ended the sleep after %v, want 10ms", got)
		}
	})
}

func TestSourceKey(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{"192.0.2.7", "192.0.2.7"},
		{"::ffff:192.0.2.7", "192.0.2.7"},
		{"2001:db8:1:2:aaaa::1", "2001:db8:1:2::"},
		{"2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::"},
		{"2001:db8:1:3::1", "2001:db8:1:3::"},
		{"fe80::1%eth0", "fe80::"},
	} {
		ip, zone, _ := strings.Cut(tc.addr, "%")
		got := sourceKey(&net.TCPAddr{IP: net.ParseIP(ip), Zone: zone, Port: 1234})
		if got != netip.MustParseAddr(tc.want) {
			t.Errorf("sourceKey(%s) = %s, want %s", tc.addr, got, tc.want)
		}
	}
}

func TestConnExposesTheSocket(t *testing.T) {
	g := newGuard(t, Config{MaxConns: 4})
	dialFrom(t, g, "127.0.0.2")
	s := g.next(t)
	sc, ok := s.(syscall.Conn)
	if !ok {
		t.Fatal("guarded connection is not a syscall.Conn: the device poller could not watch it")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	innerRaw, _ := s.(*Conn).NetConn().(*net.TCPConn).SyscallConn()
	fd := func(rc syscall.RawConn) (fd uintptr) {
		rc.Control(func(f uintptr) { fd = f })
		return fd
	}
	if fd(raw) != fd(innerRaw) {
		t.Fatalf("SyscallConn gives fd %d, the TCP connection has %d", fd(raw), fd(innerRaw))
	}
	if _, ok := s.(interface{ CloseWrite() error }); !ok {
		t.Fatal("guarded connection lost CloseWrite")
	}
}

func TestTLSOverTheGuard(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := metrics.NewRegistry()
	g := Wrap(inner, Config{Name: "tls", MaxConns: 1, Metrics: NewMetrics(reg)})
	ln := tls.NewListener(g, &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}})
	var wg sync.WaitGroup
	defer wg.Wait() // after the Close below
	defer ln.Close()
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// Echo one line, then close: closing the TLS connection must
			// release the guard's slot.
			buf := make([]byte, 5)
			if _, err := io.ReadFull(c, buf); err == nil {
				c.Write(buf)
			}
			c.Close()
		}
	})
	for i := range 3 { // MaxConns 1: each needs the previous one's slot
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", g.Addr().String(), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("hello"))
		got, err := io.ReadAll(c)
		c.Close()
		if !bytes.Equal(got, []byte("hello")) {
			t.Fatalf("round %d: echoed %q (%v)", i, got, err)
		}
	}
	waitFor(t, "the last TLS connection's slot to be released", func() bool { return g.Open() == 0 })
}

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
