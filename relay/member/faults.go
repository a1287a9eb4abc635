package member

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Faults cuts links between members for tests: every member given the
// same Faults (Config.Faults) sends through a wrapper around memberlist's
// real NetTransport that drops what goes to, and what comes from, a
// member it is cut from. UDP packets are dropped silently, as a lost
// packet is; TCP dials fail at once, as to an unreachable host. A cut is
// symmetric. Connections open when the cut is made are left alone
// (memberlist's are short: one exchange each).
type Faults struct {
	mu    sync.Mutex
	names map[string]string // gossip address → member name
	cut   map[[2]string]bool
	drops atomic.Int64
}

// NewFaults returns a fault injector with no cut.
func NewFaults() *Faults {
	return &Faults{names: map[string]string{}, cut: map[[2]string]bool{}}
}

// Cut cuts every member of a from every member of b, by name.
func (f *Faults) Cut(a, b []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, x := range a {
		for _, y := range b {
			f.cut[pair(x, y)] = true
		}
	}
}

// Heal removes every cut.
func (f *Faults) Heal() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.cut)
}

// Drops counts packets dropped and dials refused.
func (f *Faults) Drops() int64 { return f.drops.Load() }

func pair(a, b string) [2]string {
	if a > b {
		a, b = b, a
	}
	return [2]string{a, b}
}

// blocked reports whether traffic between from and the member at addr
// (or named name) is cut, counting it.
func (f *Faults) blocked(from, name, addr string) bool {
	f.mu.Lock()
	if name == "" {
		name = f.names[addr]
	}
	cut := name != "" && f.cut[pair(from, name)]
	f.mu.Unlock()
	if cut {
		f.drops.Add(1)
	}
	return cut
}

var errCut = errors.New("member: faults: link cut")

// faultTransport wraps a member's NetTransport.
type faultTransport struct {
	f       *Faults
	name    string
	inner   *memberlist.NetTransport
	packets chan *memberlist.Packet
	done    chan struct{}
	wg      sync.WaitGroup
	once    sync.Once
}

func (f *Faults) wrap(name string, inner *memberlist.NetTransport) *faultTransport {
	t := &faultTransport{f: f, name: name, inner: inner, packets: make(chan *memberlist.Packet), done: make(chan struct{})}
	t.wg.Add(1)
	go t.forward()
	return t
}

// forward passes incoming packets on, but those from a cut member.
func (t *faultTransport) forward() {
	defer t.wg.Done()
	for {
		select {
		case <-t.done:
			return
		case p := <-t.inner.PacketCh():
			if t.f.blocked(t.name, "", p.From.String()) {
				continue
			}
			select {
			case t.packets <- p:
			case <-t.done:
				return
			}
		}
	}
}

func (t *faultTransport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	addr, p, err := t.inner.FinalAdvertiseAddr(ip, port)
	if err == nil {
		t.f.mu.Lock()
		t.f.names[net.JoinHostPort(addr.String(), itoa(p))] = t.name
		t.f.mu.Unlock()
	}
	return addr, p, err
}

func (t *faultTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (t *faultTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if t.f.blocked(t.name, a.Name, a.Addr) {
		return time.Now(), nil
	}
	return t.inner.WriteToAddress(b, a)
}

func (t *faultTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }

func (t *faultTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (t *faultTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if t.f.blocked(t.name, a.Name, a.Addr) {
		return nil, errCut
	}
	return t.inner.DialAddressTimeout(a, timeout)
}

func (t *faultTransport) StreamCh() <-chan net.Conn { return t.inner.StreamCh() }

func (t *faultTransport) Shutdown() error {
	err := t.inner.Shutdown()
	t.once.Do(func() { close(t.done) })
	t.wg.Wait()
	return err
}
