package linkquic

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The hint's bytes are the ones docs/relay-link.md shows: the fenced
// block that names the "pushrelay hint", its hex before each '#'.
func TestHintDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/relay-link.md")
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	for i, part := range strings.Split(string(doc), "```") {
		if i%2 == 1 && strings.Contains(part, "(pushrelay hint)") {
			blocks = append(blocks, part)
		}
	}
	if len(blocks) != 1 {
		t.Fatalf("%d blocks show the hint, want 1", len(blocks))
	}
	var hexed strings.Builder
	for _, line := range strings.Split(blocks[0], "\n") {
		line, _, _ = strings.Cut(line, "#")
		hexed.WriteString(strings.ReplaceAll(line, " ", ""))
	}
	got, err := hex.DecodeString(hexed.String())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, hintPacket()) {
		t.Errorf("docs/relay-link.md shows the hint as %x, it is %x", got, hintPacket())
	}
}

func TestHintBytes(t *testing.T) {
	p := hintPacket()
	if len(p) != hintSize || p[0]&0xc0 != 0 {
		t.Fatalf("hint %x: a QUIC packet's first byte, or not %d bytes", p, hintSize)
	}
	for _, c := range []struct {
		b    []byte
		want bool
	}{
		{p, true},
		{append(hintPacket(), 1, 2, 3), true}, // a later field ignored
		{p[:hintSize-1], false},
		{[]byte{0x00, 'P', 'R', 'H', 2, 0, 0, 0}, false}, // another version
		{[]byte{0x00, 'P', 'R', 'X', 1, 0, 0, 0}, false},
		{[]byte{0x40, 'P', 'R', 'H', 1, 0, 0, 0}, false},
		{nil, false},
	} {
		if got := isHint(c.b); got != c.want {
			t.Errorf("isHint(%x) = %v, want %v", c.b, got, c.want)
		}
	}
}

// hints collects what a child's OnHint reports.
type hints chan string

func (h hints) on(_ net.Addr, r string) {
	select {
	case h <- r:
	default:
	}
}

func (h hints) want(t *testing.T, r string) {
	t.Helper()
	select {
	case got := <-h:
		if got != r {
			t.Fatalf("hint result %q, want %q", got, r)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no hint result (want %q)", r)
	}
}

// An idle child with a one-minute heartbeat notices its parent's restart
// at once: the new parent (same port, same reset key) announces itself
// to the child's address, the child probes, the probe meets the stateless
// reset. Without the announce the child would wait for its heartbeat.
func TestRestartHintIdleChild(t *testing.T) {
	key, err := LoadResetKey(filepath.Join(t.TempDir(), ResetKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	s := newSite(t)
	pcreds := s.creds(t, "core-1")
	const idle, keepAlive = 2 * time.Minute, time.Minute
	p := listen(t, "127.0.0.1:0", pcreds, Config{ResetKey: key, IdleTimeout: idle})
	addr := p.addr()
	h := make(hints, 4)
	c, err := dial(t, addr, s.creds(t, "edge-1"), Config{IdleTimeout: idle, KeepAlive: keepAlive, OnHint: h.on})
	if err != nil {
		t.Fatal(err)
	}
	pc := accept(t, p)
	go func() {
		if ctl, err := pc.AcceptControl(ctx5(t)); err == nil {
			ctl.Write([]byte("welcome\n"))
		}
	}()
	if _, _, err := hello(ctx5(t), c, "edge-1"); err != nil {
		t.Fatal(err)
	}
	childAddr := pc.RemoteAddr().(*net.UDPAddr).AddrPort()
	time.Sleep(200 * time.Millisecond) // the exchange's acks settle
	p.l.Close()                        // no CONNECTION_CLOSE: the process is gone
	np := listen(t, addr, pcreds, Config{ResetKey: key, IdleTimeout: idle})
	start := time.Now()
	if n := np.l.Announce([]netip.AddrPort{childAddr}); n != 1 {
		t.Fatalf("Announce sent %d hints, want 1", n)
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the idle child did not notice the restart within 10 s (its heartbeat is a minute away)")
	}
	t.Logf("restarted parent noticed by an idle child in %v after the announce", time.Since(start))
	if ce, ok := errors.AsType[*CloseError](c.Err()); !ok || ce.Cause != "stateless_reset" {
		t.Errorf("child's link ended with %v, want a stateless reset", c.Err())
	}
	h.want(t, HintProbed)
	if v := np.reg.Value("pushrelay_link_hints_sent_total"); v != 1 {
		t.Errorf("pushrelay_link_hints_sent_total = %v, want 1", v)
	}
}

// A hint that is garbled, comes from an address other than the parent's,
// or comes too soon after the last probe makes no probe; a well-formed
// one from a parent that did not restart makes a probe the parent
// answers, and the link stays up.
func TestRestartHintForgedOrSpurious(t *testing.T) {
	s := newSite(t)
	p := listen(t, "127.0.0.1:0", s.creds(t, "core-1"), Config{})
	h := make(hints, 4)
	c, err := dial(t, p.addr(), s.creds(t, "edge-1"), Config{KeepAlive: time.Minute, OnHint: h.on})
	if err != nil {
		t.Fatal(err)
	}
	pc := accept(t, p)
	go func() {
		ctl, err := pc.AcceptControl(ctx5(t))
		if err != nil {
			return
		}
		for {
			line, err := readLine(ctl)
			if err != nil {
				return
			}
			ctl.Write([]byte(line + "\n"))
		}
	}()
	ctl, _, err := hello(ctx5(t), c, "edge-1")
	if err != nil {
		t.Fatal(err)
	}
	childAddr := pc.RemoteAddr().(*net.UDPAddr)
	other, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	other.WriteTo(hintPacket(), childAddr)
	h.want(t, HintWrongAddr)
	other.WriteTo([]byte{0x00, 'P', 'R', 'X', 1, 0, 0, 0}, childAddr)
	h.want(t, HintMalformed)
	p.l.Announce([]netip.AddrPort{childAddr.AddrPort()})
	h.want(t, HintProbed)
	p.l.Announce([]netip.AddrPort{childAddr.AddrPort()})
	h.want(t, HintTooSoon)
	// The probe was answered: the link still carries a round trip.
	if _, err := ctl.Write([]byte("still there\n")); err != nil {
		t.Fatal(err)
	}
	ctl.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := readLine(ctl); err != nil || line != "still there" {
		t.Fatalf("after the hints: %q, %v (link: %v)", line, err, c.Err())
	}
	if c.Err() != nil {
		t.Fatalf("the link ended: %v", c.Err())
	}
}
