package link

import (
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/linkquic"
	"github.com/pushrelay/pushrelay/relay/metrics"
)

// An idle child (its heartbeat a minute away) notices a restarted parent
// and is linked again within seconds: the parent remembered the child's
// address in its store, and the new one, on the same port and store with
// the same reset key, sends it the restart hint; the child's probe meets
// the stateless reset and it redials at once.
func TestRestartedParentNoticedByIdleChildThroughHint(t *testing.T) {
	key, err := linkquic.LoadResetKey(filepath.Join(t.TempDir(), linkquic.ResetKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	p := newPairEdit(t, 0, func(c *ChildConfig) {
		c.KeepAlive, c.IdleTimeout = time.Minute, 2*time.Minute
	}, func(c *ParentConfig) {
		c.ResetKey = key
		c.KeepAlive, c.IdleTimeout = time.Minute, 2*time.Minute
	})
	p.register()
	eventually(t, "the child's address recorded", func() bool {
		n := 0
		p.pst.LinkChildAddrs(func(name string, a netip.AddrPort) {
			if name == "edge-1" && a.Addr().IsLoopback() {
				n++
			}
		})
		return n == 1
	})
	connects := `pushrelay_link_up_connects_total{result="ok"}`
	if v := p.creg.Value(connects); v != 1 {
		t.Fatalf("%s = %v before the restart, want 1", connects, v)
	}
	// The parent dies without a word (its socket gone, no
	// CONNECTION_CLOSE), and a new one starts on its port and store.
	addr := p.parent.Addr().String()
	p.parent.l.Close()
	cfg := p.pcfg
	cfg.Listen = addr
	reg := metrics.NewRegistry()
	cfg.Metrics = reg
	np, err := NewParent(cfg)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	p.wg.Go(func() { np.Run(p.ctx) })
	eventually(t, "the idle child linked to the new parent", func() bool { return p.creg.Value(connects) == 2 })
	t.Logf("idle child linked again %v after the new parent started", time.Since(start))
	if v := p.creg.Value(`pushrelay_link_up_hints_total{result="probed"}`); v != 1 {
		t.Errorf("child's probed hints = %v, want 1", v)
	}
	if v := reg.Value("pushrelay_link_hints_sent_total"); v != 1 {
		t.Errorf("parent's hints sent = %v, want 1", v)
	}
	// The child works through the new parent.
	p.parent = np
	p.register()
}

// Hints that are garbled or come from an address other than the
// parent's make the child neither probe nor reconnect.
func TestForgedHintsIgnored(t *testing.T) {
	p := newPairWith(t, 0, func(c *ChildConfig) { c.KeepAlive = time.Minute })
	p.register()
	cs := p.parent.Children()
	if len(cs) != 1 || cs[0].Addr == "" {
		t.Fatalf("children %+v", cs)
	}
	to, err := net.ResolveUDPAddr("udp", cs[0].Addr)
	if err != nil {
		t.Fatal(err)
	}
	forger, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer forger.Close()
	hint := []byte{0x00, 'P', 'R', 'H', 1, 0, 0, 0} // docs/relay-link.md
	forger.WriteTo(hint, to)
	forger.WriteTo([]byte{0x00, 'P', 'R', 'X', 1, 0, 0, 0}, to)
	forger.WriteTo([]byte{0x00, 'P', 'R', 'H', 9, 0, 0, 0}, to)
	eventually(t, "the hints counted", func() bool {
		return p.creg.Value(`pushrelay_link_up_hints_total{result="wrong_addr"}`) == 1 &&
			p.creg.Value(`pushrelay_link_up_hints_total{result="malformed"}`) == 2
	})
	p.register() // a round trip on the link after the hints
	if v := p.creg.Value(`pushrelay_link_up_hints_total{result="probed"}`); v != 0 {
		t.Errorf("probed %v times for forged hints", v)
	}
	if v := p.creg.Value(`pushrelay_link_up_connects_total{result="ok"}`); v != 1 {
		t.Errorf("%v connects, want 1: a forged hint broke the link", v)
	}
}
