package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushrelay/pushrelay/discovery"
)

// The refresh scenario of bench wake (--refresh, issue #5 point 6): the
// devices sleep with STUN-proven addresses and refresh them, from the same
// address, as a sleeping device does every wake_refresh; the report is the
// bytes the relay process wrote meanwhile (/proc/PID/io), scaled to bytes
// per device per day at the default refresh interval.
//
// Time compression: with --compress c the relay runs with wake_binding_ttl
// 2m/c (so wake_refresh, the devices' interval, is 30s/c) and
// wake_flush_interval --flush-interval/c, and the devices refresh every
// 30s/c. One wall second is then c seconds of a real gateway's life, as far
// as the wake path goes: the bytes written in T are scaled by 86400/(T·c).

// defaultBindingTTL is the relay's default wake_binding_ttl; devices
// refresh every quarter of it.
const defaultBindingTTL = 2 * time.Minute

func refreshRelayFlags(o *wakeOpts) []string {
	scale := func(d time.Duration) string { return time.Duration(float64(d) / o.compress).String() }
	f := []string{"--wake-binding-ttl", scale(defaultBindingTTL)}
	if o.flushInterval > 0 {
		f = append(f, "--wake-flush-interval", scale(o.flushInterval))
	}
	return f
}

// benchRelayBin is benchRelay with another binary when bin is set.
func benchRelayBin(ctx context.Context, bin string, extra ...string) (*child, func(), error) {
	if bin == "" {
		return benchRelay(ctx, extra...)
	}
	dir, cleanup, err := benchDir("")
	if err != nil {
		return nil, nil, err
	}
	c, err := startChild(ctx, bin, dir, os.Stderr, append([]string{"--log-level", "warn"}, extra...)...)
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	return c, func() { c.Stop(); cleanup() }, nil
}

// procIO reads /proc/PID/io: write_bytes (what the process caused to be
// written to the block layer), wchar (bytes passed to write calls) and
// syscw.
func procIO(pid int) (map[string]int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
			out[k] = n
		}
	}
	return out, nil
}

// refreshDevices runs the refresh scenario on the sleeping devs and
// reports.
func refreshDevices(ctx context.Context, c *child, devs []*wakeDev, o *wakeOpts, stdout, stderr io.Writer) error {
	interval := time.Duration(float64(defaultBindingTTL/4) / o.compress)
	n := len(devs)
	fmt.Fprintf(stdout, "refresh: %d devices refresh their STUN binding from the same address every %s for %s (compression %g: wake_binding_ttl %s, wake_flush_interval %s; one wall second is %g s of a gateway's day)\n",
		n, interval, o.refresh, o.compress, time.Duration(float64(defaultBindingTTL)/o.compress), flushLabel(o), o.compress)
	server, err := netip.ParseAddrPort(devs[0].stunAddr)
	if err != nil {
		return fmt.Errorf("stun address %q: %w", devs[0].stunAddr, err)
	}
	to := net.UDPAddrFromAddrPort(server)
	// Drain the answers, so a device's socket never fills, and count them.
	var answered atomic.Int64
	var readers sync.WaitGroup
	for _, d := range devs {
		readers.Go(func() {
			buf := make([]byte, 256)
			for {
				if _, err := d.conn.Read(buf); err != nil {
					return
				}
				answered.Add(1)
			}
		})
	}
	defer func() {
		for _, d := range devs {
			d.conn.Close()
		}
		readers.Wait()
	}()

	pid := c.Cmd.Process.Pid
	before, err := procIO(pid)
	if err != nil {
		return err
	}
	mBefore, err := scrapeMetrics(c.Admin)
	if err != nil {
		return err
	}
	// Device i sends at i·interval/n, then every interval: an even
	// spread, paced by one goroutine that sends whatever is due.
	t0 := time.Now()
	var sent, sendErrs int64
	step := interval / time.Duration(n)
	if step <= 0 {
		step = 1
	}
	total := int64(o.refresh / step)
	for k := int64(0); k < total && ctx.Err() == nil; {
		due := t0.Add(time.Duration(k) * step)
		if wait := time.Until(due); wait > 0 {
			time.Sleep(min(wait, 10*time.Millisecond))
			continue
		}
		for ; k < total && !t0.Add(time.Duration(k)*step).After(time.Now()); k++ {
			d := devs[k%int64(n)]
			req, _, err := discovery.NewBindingRequest(d.uaid, d.password, time.Now())
			if err == nil {
				_, err = d.conn.WriteToUDP(req, to)
			}
			if err != nil {
				sendErrs++
				continue
			}
			sent++
		}
	}
	time.Sleep(500 * time.Millisecond) // the last answers
	wall := time.Since(t0)
	after, err := procIO(pid)
	if err != nil {
		return err
	}
	mAfter, err := scrapeMetrics(c.Admin)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("refresh: %w", err)
	}
	delta := func(name, label string) float64 {
		return sumMetric(mAfter, name, label) - sumMetric(mBefore, name, label)
	}
	wb, wc, sw := after["write_bytes"]-before["write_bytes"], after["wchar"]-before["wchar"], after["syscw"]-before["syscw"]
	simDay := 86400 / (wall.Seconds() * o.compress) // simulated days in the run, inverted
	bound := delta("pushrelay_stun_requests_total", `result="bound"`)
	fmt.Fprintf(stdout, "requests: sent %d (send errors %d), answered %d; relay: bound %.0f, replay %.0f, error %.0f, rate_limited %.0f; bindings written %.0f, refreshed in memory %.0f; flushes %.0f (%.0f bindings); store commits %.0f\n",
		sent, sendErrs, answered.Load(), bound,
		delta("pushrelay_stun_requests_total", `result="replay"`), delta("pushrelay_stun_requests_total", `result="error"`), delta("pushrelay_stun_requests_total", `result="rate_limited"`),
		delta("pushrelay_wake_bindings_total", `result="written"`), delta("pushrelay_wake_bindings_total", `result="refreshed"`),
		delta("pushrelay_wake_flushes_total", ""), delta("pushrelay_wake_flushed_bindings_total", ""),
		delta("pushrelay_store_commits_total", ""))
	fmt.Fprintf(stdout, "relay process in %s: write_bytes %d (to the block layer: the store), wchar %d and %d write calls (sockets included)\n", wall.Truncate(time.Millisecond), wb, wc, sw)
	perDay := float64(wb) / float64(n) * simDay
	fmt.Fprintf(stdout, "bytes written per device per day (write_bytes, time-scaled): %.0f B (%.2f KB)\n", perDay, perDay/1000)
	if bound > 0 {
		perRefresh := float64(wb) / bound
		perDevDay := perRefresh * float64(24*time.Hour/(defaultBindingTTL/4))
		fmt.Fprintf(stdout, "per answered refresh: %.0f B; at %d refreshes per device per day (one per 30s): %.0f B (%.2f KB) per device per day\n",
			perRefresh, 24*time.Hour/(defaultBindingTTL/4), perDevDay, perDevDay/1000)
	}
	if want := float64(sent) * 0.95; bound < want {
		fmt.Fprintf(stdout, "note: the relay answered only %.0f of %d refreshes: it did not keep up, so the time-scaled figure is a lower bound; the per-refresh one holds\n", bound, sent)
	}
	if sent == 0 {
		return errors.New("refresh: nothing sent")
	}
	return nil
}

func flushLabel(o *wakeOpts) string {
	if o.flushInterval == 0 {
		return "(the relay's own)"
	}
	return time.Duration(float64(o.flushInterval) / o.compress).String()
}

// moveHold is how long after its start the relay holds proven addresses
// in place (kick's restartHold), plus a margin.
const moveHold = 65 * time.Second

// moveStorm: every device moves at once (--move-storm): it closes its wake
// socket, opens another on the same address (a new port, as a NAT
// rebinding gives) and binds it with STUN, retrying as a device does
// (three tries, a second apart), o.workers devices at a time. Each move is
// written to the store before its answer: the report is how fast the
// relay answered them.
func moveStorm(ctx context.Context, c *child, devs []*wakeDev, o *wakeOpts, started time.Time, stdout io.Writer) error {
	if wait := time.Until(started.Add(moveHold)); wait > 0 {
		fmt.Fprintf(stdout, "move storm: waiting %s for the relay's first minute (addresses do not move then)\n", wait.Truncate(time.Second))
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	server, err := netip.ParseAddrPort(devs[0].stunAddr)
	if err != nil {
		return fmt.Errorf("stun address %q: %w", devs[0].stunAddr, err)
	}
	to := net.UDPAddrFromAddrPort(server)
	mBefore, err := scrapeMetrics(c.Admin)
	if err != nil {
		return err
	}
	var next, moved, failed atomic.Int64
	var lastErr atomic.Value
	t0 := time.Now()
	var wg sync.WaitGroup
	for range o.workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(devs) {
					return
				}
				d := devs[i]
				d.conn.Close()
				conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(d.addr.Addr(), 0)))
				if err != nil {
					failed.Add(1)
					lastErr.Store(err)
					continue
				}
				d.conn = conn
				got, err := discovery.Bind(conn, to, d.uaid, d.password, discovery.BindOptions{})
				if err == nil && got != conn.LocalAddr().(*net.UDPAddr).AddrPort() {
					err = fmt.Errorf("stun mapped %s", got)
				}
				if err != nil {
					failed.Add(1)
					lastErr.Store(err)
					continue
				}
				moved.Add(1)
			}
		})
	}
	wg.Wait()
	took := time.Since(t0)
	mAfter, err := scrapeMetrics(c.Admin)
	if err != nil {
		return err
	}
	delta := func(name, label string) float64 {
		return sumMetric(mAfter, name, label) - sumMetric(mBefore, name, label)
	}
	fmt.Fprintf(stdout, "move storm: %d of %d devices moved and were answered in %s (%.0f moves/s, %d devices at a time); failed %d\n",
		moved.Load(), len(devs), took.Truncate(time.Millisecond), float64(moved.Load())/took.Seconds(), o.workers, failed.Load())
	commits := delta("pushrelay_store_commits_total", "")
	fmt.Fprintf(stdout, "relay: bindings written %.0f, refreshed %.0f; stun requests %.0f (bound %.0f, replay %.0f, rate_limited %.0f); store commits %.0f (%.1f moves per commit)\n",
		delta("pushrelay_wake_bindings_total", `result="written"`), delta("pushrelay_wake_bindings_total", `result="refreshed"`),
		delta("pushrelay_stun_requests_total", ""), delta("pushrelay_stun_requests_total", `result="bound"`),
		delta("pushrelay_stun_requests_total", `result="replay"`), delta("pushrelay_stun_requests_total", `result="rate_limited"`),
		commits, delta("pushrelay_wake_bindings_total", `result="written"`)/max(commits, 1))
	if failed.Load() > 0 {
		return fmt.Errorf("%d devices could not move (last error: %v)", failed.Load(), lastErr.Load())
	}
	return nil
}
