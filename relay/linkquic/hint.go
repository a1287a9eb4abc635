package linkquic

import (
	"bytes"
	"net"
	"net/netip"
	"time"

	"github.com/quic-go/quic-go"
)

// A restart hint is the datagram a parent sends, from its listening
// socket, to each child's last address when it starts (Listener.Announce).
// It is not QUIC: its first byte has the two top bits clear, which QUIC
// packets never have (RFC 9000 section 17: the fixed bit 0x40 is set), so
// quic-go hands it to the child's hint reader instead of dropping it.
//
//	offset  size  value
//	0       4     magic 0x00 0x50 0x52 0x48 ("\x00PRH", pushrelay hint)
//	4       1     version, 1
//	5       3     zero (a child ignores them)
//
// A child that reads one from its parent's address sends a heartbeat at
// once (at most one a HintProbeInterval): a restarted parent answers it
// with a stateless reset, so the child redials now instead of at its next
// heartbeat; a parent that did not restart just acks it. The hint carries
// no secret and is never believed by itself: a forged one costs the child
// one small packet a second.
const (
	hintSize    = 8
	hintVersion = 1
	// HintProbeInterval is the least time between two probes a child
	// sends for hints.
	HintProbeInterval = time.Second
)

var hintMagic = []byte{0x00, 'P', 'R', 'H'}

// hintPacket is the restart hint's bytes.
func hintPacket() []byte {
	b := make([]byte, hintSize)
	copy(b, hintMagic)
	b[4] = hintVersion
	return b
}

// isHint reports whether b is a restart hint of a version this build
// knows. It is a pure function of b.
func isHint(b []byte) bool {
	return len(b) >= hintSize && bytes.Equal(b[:4], hintMagic) && b[4] == hintVersion
}

// Hint results, as OnHint reports them.
const (
	HintProbed    = "probed"     // a probe sent to the parent
	HintMalformed = "malformed"  // not a hint (garbled, another version)
	HintWrongAddr = "wrong_addr" // a hint from an address other than the parent's
	HintTooSoon   = "too_soon"   // within HintProbeInterval of the last probe
)

// Announce sends the restart hint to each address from the listening
// socket and returns how many were sent; an address that cannot be sent
// to (unreachable, wrong family) is skipped.
func (l *Listener) Announce(addrs []netip.AddrPort) int {
	p := hintPacket()
	n := 0
	for _, a := range addrs {
		if _, err := l.tr.WriteTo(p, net.UDPAddrFromAddrPort(a)); err != nil {
			l.log.Debug("link: restart hint not sent", "addr", a, "err", err)
			continue
		}
		n++
	}
	l.m.hints.Add(float64(n))
	return n
}

// readHints reads non-QUIC packets on one of the child's sockets until
// the connection ends (or the socket closes), acting on restart hints.
func (c *Conn) readHints(tr *quic.Transport) {
	defer c.hintsWG.Done()
	buf := make([]byte, 64)
	for {
		n, from, err := tr.ReadNonQUICPacket(c.qc.Context(), buf)
		if err != nil {
			return
		}
		r := c.hint(buf[:n], from, time.Now())
		if c.cfg.OnHint != nil {
			c.cfg.OnHint(from, r)
		}
	}
}

// hint decides what a non-QUIC packet from from asks, and probes.
func (c *Conn) hint(b []byte, from net.Addr, now time.Time) string {
	if !isHint(b) {
		return HintMalformed
	}
	if !sameAddr(from, c.qc.RemoteAddr()) {
		return HintWrongAddr
	}
	c.probeMu.Lock()
	if !c.lastProbe.IsZero() && now.Sub(c.lastProbe) < HintProbeInterval {
		c.probeMu.Unlock()
		return HintTooSoon
	}
	c.lastProbe = now
	c.probeMu.Unlock()
	// The heartbeat: large enough for a stateless reset in answer.
	_ = c.qc.SendDatagram(make([]byte, heartbeatSize))
	return HintProbed
}

func sameAddr(a, b net.Addr) bool {
	ua, ok1 := a.(*net.UDPAddr)
	ub, ok2 := b.(*net.UDPAddr)
	if !ok1 || !ok2 {
		return false
	}
	pa, pb := ua.AddrPort(), ub.AddrPort()
	return pa.Addr().Unmap() == pb.Addr().Unmap() && pa.Port() == pb.Port()
}
