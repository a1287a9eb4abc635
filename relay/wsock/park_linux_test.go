//go:build linux

package wsock_test

import (
	"bufio"
	"context"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/wsock"
)

// rawServer is a WebSocket server written by hand, so that a test decides
// how frames are cut into writes: it answers the handshake and hands the
// connection to the test.
func rawServer(t *testing.T, useTLS bool) (url string, roots *x509.CertPool, conns <-chan net.Conn) {
	t.Helper()
	ch := make(chan net.Conn, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
		nc, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Protocol: push-notification\r\nSec-WebSocket-Accept: " + base64.StdEncoding.EncodeToString(sum[:]) + "\r\n\r\n")
		brw.Flush()
		ch <- nc
	})
	var srv *httptest.Server
	if useTLS {
		srv = httptest.NewTLSServer(h)
		roots = x509.NewCertPool()
		roots.AddCert(srv.Certificate())
		url = "wss" + strings.TrimPrefix(srv.URL, "https")
	} else {
		srv = httptest.NewServer(h)
		url = "ws" + strings.TrimPrefix(srv.URL, "http")
	}
	t.Cleanup(srv.Close)
	return url, roots, ch
}

// frame encodes an unmasked server frame.
func frame(op byte, p []byte) []byte {
	b := []byte{0x80 | op}
	switch {
	case len(p) < 126:
		b = append(b, byte(len(p)))
	case len(p) < 1<<16:
		b = append(b, 126)
		b = binary.BigEndian.AppendUint16(b, uint16(len(p)))
	default:
		b = append(b, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(len(p)))
	}
	return append(b, p...)
}

// parkedReader reads c the way the upstream link's held sessions do: it
// parks whenever nothing is buffered above the socket, and a wake starts
// a new reader. Messages go to out, the final error to failed.
type parkedReader struct {
	c      *wsock.ClientConn
	p      *wsock.Poller
	out    chan string
	failed chan error
	parks  atomic.Int32
	parked atomic.Bool // parked and not woken since
}

func (r *parkedReader) read(woke bool) {
	for {
		if !woke && !r.c.Pending() && r.c.Park(r.p, func() { r.parked.Store(false); go r.read(true) }) {
			r.parks.Add(1)
			r.parked.Store(true)
			return
		}
		woke = false
		b, ok, err := r.c.Receive()
		if err != nil {
			r.failed <- err
			return
		}
		if ok {
			r.out <- string(b)
		}
	}
}

func startPoller(t *testing.T) *wsock.Poller {
	t.Helper()
	p, err := wsock.NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-ran; err != nil {
			t.Errorf("Poller.Run: %v", err)
		}
	})
	return p
}

// A parked client reader misses nothing buffered above its socket: frames
// that arrive in one write (which TLS hands over as one record, and our
// read buffer takes only part of), a frame larger than the read buffer,
// and pings, answered, before more frames. Each burst is read, then the
// reader parks again.
func TestClientParkReadsEverything(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "ws", true: "wss"}[useTLS], func(t *testing.T) {
			url, roots, conns := rawServer(t, useTLS)
			p := startPoller(t)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := wsock.Dial(ctx, url, &tls.Config{RootCAs: roots})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Abort()
			srv := <-conns
			defer srv.Close()
			r := &parkedReader{c: c, p: p, out: make(chan string, 100), failed: make(chan error, 1)}
			c.SetReadDeadline(time.Now().Add(time.Minute))
			r.read(false)
			if r.parks.Load() != 1 {
				t.Fatal("the idle reader did not park")
			}
			expect := func(want ...string) {
				t.Helper()
				for _, w := range want {
					select {
					case got := <-r.out:
						if got != w {
							t.Fatalf("got %.40q, want %.40q", got, w)
						}
					case err := <-r.failed:
						t.Fatalf("read failed: %v", err)
					case <-time.After(5 * time.Second):
						t.Fatalf("%.40q never read: stuck in a buffer above the socket", w)
					}
				}
			}
			// Several notifications in one write, longer together than
			// the read buffer.
			var burst []byte
			var want []string
			for i := range 12 {
				m := strings.Repeat(string(rune('a'+i)), 100)
				burst = append(burst, frame(1, []byte(m))...)
				want = append(want, m)
			}
			srv.Write(burst)
			expect(want...)
			// One frame larger than the read buffer, then a small one in
			// the same write.
			big := strings.Repeat("x", 5000)
			srv.Write(append(frame(1, []byte(big)), frame(1, []byte("after big"))...))
			expect(big, "after big")
			// A ping, answered; then frames in separate writes.
			srv.Write(frame(9, []byte("hi")))
			br := bufio.NewReader(srv)
			srv.SetReadDeadline(time.Now().Add(5 * time.Second))
			pong := make([]byte, 2+4+2)
			if _, err := io.ReadFull(br, pong); err != nil || pong[0] != 0x8a || pong[1]&0x7f != 2 {
				t.Fatalf("pong: % x, %v", pong, err)
			}
			srv.Write(frame(1, []byte("one")))
			srv.Write(frame(1, []byte("two")))
			expect("one", "two")
			if n := r.parks.Load(); n < 4 {
				t.Errorf("reader parked %d times, want at least 4 (once per burst)", n)
			}
			// Close while parked wakes the reader with an error.
			waitParked(t, r)
			c.Abort()
			select {
			case err := <-r.failed:
				if err == nil {
					t.Fatal("no error after Abort")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the parked reader was not woken by Abort")
			}
		})
	}
}

// A parked reader is woken when its read deadline passes, and Receive then
// reports the timeout.
func TestClientParkDeadline(t *testing.T) {
	url, _, conns := rawServer(t, false)
	p := startPoller(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := wsock.Dial(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Abort()
	srv := <-conns
	defer srv.Close()
	r := &parkedReader{c: c, p: p, out: make(chan string, 1), failed: make(chan error, 1)}
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	r.read(false)
	if r.parks.Load() != 1 {
		t.Fatal("the idle reader did not park")
	}
	select {
	case err := <-r.failed:
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("got %v, want a timeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the parked reader was not woken at its deadline")
	}
}

// waitParked waits until r's reader has parked.
func waitParked(t *testing.T, r *parkedReader) {
	t.Helper()
	for range 500 {
		if r.parked.Load() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the reader did not park")
}
