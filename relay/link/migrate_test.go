package link

import (
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// When the local address of the route to the parent changes, the child
// moves its connection to a new socket (QUIC migration) rather than
// redialing: one connect, the parent sees the new port, and messages keep
// flowing over the same connection.
func TestChildMigratesWhenRouteChanges(t *testing.T) {
	var moved atomic.Bool
	p := newPairWith(t, 0, func(c *ChildConfig) {
		c.PathCheck = 20 * time.Millisecond
		c.routeSource = func(net.Addr) netip.Addr {
			// Loopback cannot change its address: the test says when
			// the route's source changed.
			if moved.Load() {
				return netip.MustParseAddr("127.0.0.2")
			}
			return netip.MustParseAddr("127.0.0.1")
		}
	})
	u, ch := p.register()
	p.post(u, ch, 20)
	eventually(t, "the first messages reached the child", func() bool { return p.waiting(p.cst) == 20 })
	before := childLocal(p.child)
	moved.Store(true)
	eventually(t, "the child migrated", func() bool {
		return p.creg.Value(`pushrelay_link_up_migrations_total{result="ok"}`) == 1
	})
	if after := childLocal(p.child); after == before {
		t.Fatalf("the child's local address is still %s", after)
	}
	p.post(u, ch, 20)
	eventually(t, "the later messages reached the child", func() bool { return p.waiting(p.cst) == 40 })
	if n := p.creg.Value(`pushrelay_link_up_connects_total{result="ok"}`); n != 1 {
		t.Fatalf("%v connects, want the one connection kept", n)
	}
	if n := p.creg.Value(`pushrelay_link_up_migrations_total{result="ok"}`); n != 1 {
		t.Fatalf("%v migrations, want 1 (the source changed once)", n)
	}
}

// childLocal is the child's local address on its connection now, "" while
// down.
func childLocal(c *Child) string {
	c.mu.Lock()
	cc := c.cur
	c.mu.Unlock()
	if cc == nil {
		return ""
	}
	return cc.conn.LocalAddr().String()
}
