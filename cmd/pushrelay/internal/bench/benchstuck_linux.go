package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
)

// vanishLab is a network namespace for devices whose network vanishes:
// one end of a veth pair (MTU 1500) is in it, the other in the bench's own
// namespace with the relay's device listener on it.
//
//	relay 10.78.0.1 (this namespace) ── veth ── 10.78.0.2 stuck devices
//
// drop then makes every packet on the pair disappear, both ways, as a
// phone's does when it leaves coverage: the relay's writes to those
// devices are never acknowledged.
type vanishLab struct {
	ns, host, dev string
	nsFile        *os.File
}

// vanishRelayAddr is the relay's address on the pair.
const vanishRelayAddr = "10.78.0.1"

func labTool(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func newVanishLab() (*vanishLab, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("--vanish needs root (a network namespace)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, errors.New("--vanish needs ip (Debian: iproute2)")
	}
	id := os.Getpid() % 100000
	l := &vanishLab{ns: fmt.Sprintf("prv%d", id), host: fmt.Sprintf("prv%dh", id), dev: fmt.Sprintf("prv%dd", id)}
	if err := labTool("ip", "netns", "add", l.ns); err != nil {
		return nil, err
	}
	for _, s := range [][]string{
		{"ip", "link", "add", l.host, "type", "veth", "peer", "name", l.dev, "netns", l.ns},
		{"ip", "addr", "add", vanishRelayAddr + "/24", "dev", l.host},
		{"ip", "link", "set", l.host, "mtu", "1500", "up"},
		{"ip", "-n", l.ns, "addr", "add", "10.78.0.2/24", "dev", l.dev},
		{"ip", "-n", l.ns, "link", "set", l.dev, "mtu", "1500", "up"},
		{"ip", "-n", l.ns, "link", "set", "lo", "up"},
	} {
		if err := labTool(s...); err != nil {
			l.close()
			return nil, err
		}
	}
	f, err := os.Open("/var/run/netns/" + l.ns)
	if err != nil {
		l.close()
		return nil, err
	}
	l.nsFile = f
	return l, nil
}

// close deletes the namespace and with it the veth pair.
func (l *vanishLab) close() {
	if l.nsFile != nil {
		l.nsFile.Close()
	}
	exec.Command("ip", "link", "del", l.host).Run()
	exec.Command("ip", "netns", "del", l.ns).Run()
}

// drop makes the pair lose every packet, both ways: the devices' end is
// set down, so the relay's end has no carrier and the veth drops what the
// relay sends (its address and routes stay; nothing tells the relay).
// netem would be the usual tool, but it is often not built.
func (l *vanishLab) drop() error {
	return labTool("ip", "-n", l.ns, "link", "set", l.dev, "down")
}

func setns(fd uintptr) error {
	if sysSetns == 0 {
		return errors.New("setns: not wired up on " + runtime.GOARCH)
	}
	if _, _, e := syscall.RawSyscall(sysSetns, fd, syscall.CLONE_NEWNET, 0); e != 0 {
		return e
	}
	return nil
}

// dialer returns a dial function that opens its sockets in the lab's
// namespace (a socket stays in the namespace it was made in). The dial
// runs on a thread of its own that switches namespace and back.
func (l *vanishLab) dialer(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			home, err := os.Open("/proc/thread-self/ns/net")
			if err != nil {
				runtime.UnlockOSThread()
				ch <- result{nil, err}
				return
			}
			defer home.Close()
			if err := setns(l.nsFile.Fd()); err != nil {
				runtime.UnlockOSThread()
				ch <- result{nil, fmt.Errorf("setns: %w", err)}
				return
			}
			c, err := d.DialContext(ctx, network, addr)
			if setns(home.Fd()) == nil {
				runtime.UnlockOSThread()
			} // else the thread ends with this goroutine, still locked
			ch <- result{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}
