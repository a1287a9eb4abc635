//go:build !notools

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/pushrelay/pushrelay/discovery"
	"github.com/pushrelay/pushrelay/kick"
	pushtypes "github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
)

// wakeDevice is `pushrelay device --wake ADDR`: a device that sleeps. It
// connects with its wake address in hello, registers, proves the address
// with STUN when the relay offers it, drains what waits, closes its socket
// and waits for a wake datagram, refreshing its STUN binding meanwhile.
type wakeDevice struct {
	o      *deviceOpts
	st     *deviceState
	sock   *net.UDPConn
	addr   netip.AddrPort // the wake socket's own address
	stdout io.Writer
	stderr io.Writer

	key         []byte // raw wake key, for authenticated datagrams
	keyString   string // the STUN password
	stun        string
	refresh     time.Duration
	lastCounter uint64
}

// parseWakeAddr accepts IP or IP:port; the port defaults to 5000
// (Telefónica's wake-up port).
func parseWakeAddr(s string) (netip.AddrPort, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a, 5000), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("--wake %q: want IP or IP:port", s)
	}
	return ap, nil
}

func runWakeDevice(ctx context.Context, o *deviceOpts, st *deviceState, stdout, stderr io.Writer) error {
	addr, err := parseWakeAddr(o.wake)
	if err != nil {
		return err
	}
	sock, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return fmt.Errorf("wake socket: %w", err)
	}
	defer sock.Close()
	stop := context.AfterFunc(ctx, func() { sock.SetReadDeadline(time.Now()) })
	defer stop()
	d := &wakeDevice{o: o, st: st, sock: sock, addr: sock.LocalAddr().(*net.UDPAddr).AddrPort(), stdout: stdout, stderr: stderr}
	seen := 0
	backoff := time.Second
	for {
		accepted, err := d.awake(ctx, &seen)
		if ctx.Err() != nil || (o.count > 0 && seen >= o.count) {
			if errors.Is(ctx.Err(), context.DeadlineExceeded) && o.count > 0 && seen < o.count {
				return fmt.Errorf("timed out after %d of %d notifications", seen, o.count)
			}
			return nil
		}
		if err != nil {
			fmt.Fprintf(stderr, "connection lost: %v; reconnecting in %s\n", err, backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, time.Minute)
			continue
		}
		backoff = time.Second
		if !accepted {
			return errors.New("the relay did not accept this device for UDP wake (hello status 200 and no STUN); it would have to stay connected")
		}
		if err := d.sleep(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

// awake is one connection: hello with the wake address, STUN if offered,
// drain, close. It reports whether the relay can wake the device.
func (d *wakeDevice) awake(ctx context.Context, seen *int) (bool, error) {
	c, hello, err := openSession(ctx, d.o, d.st, pushclient.HelloOptions{Wake: d.addr, WakeAuth: !d.o.wakeCompat}, d.stdout, d.stderr)
	if err != nil {
		return false, err
	}
	defer c.Close()
	accepted := hello.Status == pushproto.StatusWake
	d.keyString, d.stun = hello.WakeKey, hello.STUN
	d.refresh = time.Duration(hello.WakeRefresh) * time.Second
	if d.key, err = kick.ParseKey(hello.WakeKey); err != nil && !d.o.wakeCompat {
		return false, fmt.Errorf("hello reply: %w", err)
	}
	if d.stun != "" {
		seenAt, err := d.bind()
		if err != nil {
			fmt.Fprintf(d.stderr, "stun %s: %v\n", d.stun, err)
		} else {
			fmt.Fprintf(d.stdout, "stun relay sees the wake socket at %s\n", seenAt)
			accepted = true
		}
	}
	if err := readNotifications(ctx, c, d.o, d.st, d.stdout, seen, d.o.quiet); err != nil {
		return accepted, err
	}
	return accepted, nil
}

// bind proves the wake address to the relay's STUN listener.
func (d *wakeDevice) bind() (netip.AddrPort, error) {
	to, err := net.ResolveUDPAddr("udp", d.stun)
	if err != nil {
		return netip.AddrPort{}, err
	}
	// A wake datagram while binding: we are awake anyway, but its counter
	// counts.
	return discovery.Bind(d.sock, to, d.st.UAID, d.keyString, discovery.BindOptions{Other: func(b []byte) { d.datagram(b) }})
}

// sleep waits for a wake datagram, refreshing the STUN binding every
// WakeRefresh. It returns when woken.
func (d *wakeDevice) sleep(ctx context.Context) error {
	fmt.Fprintf(d.stdout, "sleeping; wake socket %s\n", d.addr)
	buf := make([]byte, 1500)
	nextRefresh := time.Now().Add(d.refresh)
	for {
		deadline := time.Time{}
		if d.stun != "" && d.refresh > 0 {
			deadline = nextRefresh
		}
		d.sock.SetReadDeadline(deadline)
		n, from, err := d.sock.ReadFromUDPAddrPort(buf)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			if _, err := d.bind(); err != nil {
				fmt.Fprintf(d.stderr, "stun refresh: %v\n", err)
			}
			nextRefresh = time.Now().Add(d.refresh)
			continue
		}
		if err != nil {
			return fmt.Errorf("wake socket: %w", err)
		}
		if discovery.IsSTUN(buf[:n]) {
			continue // a late answer to a refresh
		}
		if d.datagram(buf[:n]) {
			fmt.Fprintf(d.stdout, "woken by %d-byte datagram from %s\n", n, from)
			return nil
		}
	}
}

// datagram reports whether b wakes the device: any datagram does in
// compatible mode; otherwise its MAC must verify and its counter grow.
func (d *wakeDevice) datagram(b []byte) bool {
	if d.o.wakeCompat {
		return true
	}
	u, err := pushtypes.ParseUAID(d.st.UAID)
	if err != nil {
		return false
	}
	counter, ok := kick.Verify(d.key, u, b)
	if !ok || counter <= d.lastCounter {
		fmt.Fprintf(d.stderr, "ignored a wake datagram that does not verify (%d bytes, %s)\n", len(b), strconv.Quote(string(b[:min(len(b), 16)])))
		return false
	}
	d.lastCounter = counter
	return true
}
