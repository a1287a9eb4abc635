package bench

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pushrelay/pushrelay/discovery"
	"github.com/pushrelay/pushrelay/kick"
	"github.com/pushrelay/pushrelay/relay/ece"
	pushtypes "github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
)

// maxWakeDevices is how many distinct loopback addresses wakeAddr hands
// out: 127.0.X.Y with Y in 1..254, X in 0..255, less 127.0.0.1.
const maxWakeDevices = 254*256 - 1

// wakeAddr is bench device i's wake address: 127.0.0.2, 127.0.0.3, …,
// 127.0.0.254, 127.0.1.1, … (never 127.0.0.1, never .0 or .255).
func wakeAddr(i int) netip.Addr {
	k := i + 1
	return netip.AddrFrom4([4]byte{127, 0, byte(k / 254), byte(k%254 + 1)})
}

// wakeDev is one sleeping device of bench wake: a UDP wake socket of its
// own, the relay's answers to its first hello, and its prepared POST.
type wakeDev struct {
	conn     *net.UDPConn
	addr     netip.AddrPort // where conn is bound
	uaid     string
	u        pushtypes.UAID
	key      []byte // raw wake key, for --auth
	stunAddr string // from the hello reply, for --refresh
	password string // the wake key string: the STUN password
	endpoint string
	req      []byte

	// Owned by the device's receiver goroutine until it returns.
	datagrams   int
	bad         int // wrong content, bad MAC or a counter that did not grow
	lastCounter uint64
	woke        time.Time // first datagram
	acked       time.Time // ack sent
	accepted    bool      // the reconnect hello said 201
	err         error     // last reconnect failure
}

// wakeOpts are bench wake's flags that the device goroutines need.
type wakeOpts struct {
	devices, port, workers, posters, wakeRate, payload int
	auth, stun                                         bool
	timeout                                            time.Duration
	cpuProfile                                         string

	// The refresh scenario (--refresh): see benchwakerefresh.go.
	refresh       time.Duration
	compress      float64
	flushInterval time.Duration
	relayBin      string
	moveStorm     bool
}

// benchWake measures the wake path (issue #3): N devices say hello with a
// UDP wake address, register and go to sleep (close their WebSocket); one
// message is posted for each; the relay sends each a datagram; each device
// reconnects, receives its notification, acks and closes. It reports the
// times from the first post to the last datagram and the last ack, the
// datagrams received against those the relay counted, and the relay's
// resident memory per sleeping device.
func benchWake(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pushrelay bench wake", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o wakeOpts
	fs.IntVar(&o.devices, "devices", 10000, "sleeping devices, each with a UDP wake socket on its own loopback address (127.0.X.Y)")
	fs.IntVar(&o.port, "port", 5000, "UDP port of every wake socket (0: a free one per socket)")
	fs.IntVar(&o.workers, "workers", 64, "devices registering, or reconnecting after their datagram, in parallel")
	fs.IntVar(&o.posters, "posters", 128, "app-server connections posting in parallel")
	fs.IntVar(&o.wakeRate, "wake-rate", 0, "the relay's wake_rate, datagrams per second across all devices (0: unlimited); wake_target_rate is always unlimited")
	fs.IntVar(&o.payload, "payload", 32, "plaintext bytes per message (aes128gcm)")
	fs.BoolVar(&o.auth, "auth", false, "devices ask for authenticated datagrams (wake_auth) and check each MAC and counter")
	fs.BoolVar(&o.stun, "stun", false, "devices prove their wake address with an authenticated STUN request instead of the relay trusting 127.0.0.0/8 (wake_cidrs)")
	fs.DurationVar(&o.timeout, "timeout", 3*time.Minute, "give up after this long (plus --refresh, and the minute --move-storm waits)")
	fs.StringVar(&o.cpuProfile, "cpu-profile", "", "save a CPU profile of the relay from the first post (5s at most) to this file")
	fs.DurationVar(&o.refresh, "refresh", 0, "instead of posting, let the sleeping devices refresh their STUN bindings (from the same address) for this long and report the bytes the relay wrote per device per day (implies --stun)")
	fs.Float64Var(&o.compress, "compress", 1, "with --refresh: time compression; the relay's wake_binding_ttl (2m), hence the refresh interval (30s), and --flush-interval are divided by it, and the bytes written are scaled back")
	fs.DurationVar(&o.flushInterval, "flush-interval", time.Hour, "with --refresh: the relay's wake_flush_interval before compression; 0 leaves the flag out (for a relay built before it existed)")
	fs.BoolVar(&o.moveStorm, "move-storm", false, "instead of posting, every sleeping device moves at once (a new wake socket, as after a NAT rebinding) and proves its new address with STUN; reports how fast the relay answered the moves, each written to the store before its answer (implies --stun)")
	fs.StringVar(&o.relayBin, "relay", "", "run this pushrelay binary as the relay under test instead of this one (e.g. an older build, to compare)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case o.devices < 1 || o.devices > maxWakeDevices:
		return fmt.Errorf("bench wake: --devices must be 1 to %d", maxWakeDevices)
	case o.workers < 1 || o.posters < 1:
		return errors.New("bench wake: --workers and --posters must be positive")
	case o.port < 0 || o.port > 65535:
		return errors.New("bench wake: bad --port")
	case o.wakeRate < 0:
		return errors.New("bench wake: --wake-rate must be 0 (unlimited) or more")
	case o.refresh < 0 || !(o.compress >= 1) || o.flushInterval < 0:
		return errors.New("bench wake: --refresh and --flush-interval must not be negative, --compress at least 1")
	}
	if o.refresh > 0 || o.moveStorm {
		o.stun = true
	}
	// One UDP socket per device, plus the WebSockets and posters open at
	// once and the relay's own handful; Go raised the soft limit to the
	// hard one at start.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		if need := uint64(o.devices + o.workers + o.posters + 64); need > lim.Cur {
			return fmt.Errorf("bench wake: %d devices need about %d open files and the limit (ulimit -n) is %d: use fewer --devices or raise it", o.devices, need, lim.Cur)
		}
	}
	// The refresh run and the move storm's wait come on top of --timeout.
	limit := o.timeout + o.refresh
	if o.moveStorm {
		limit += moveHold
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()

	extra := []string{"--wake-rate", strconv.Itoa(o.wakeRate), "--wake-target-rate", "0"}
	if !o.stun {
		extra = append(extra, "--wake-cidrs", "127.0.0.0/8")
	}
	if o.refresh > 0 {
		extra = append(extra, refreshRelayFlags(&o)...)
	}
	c, stop, err := benchRelayBin(ctx, o.relayBin, extra...)
	if err != nil {
		return err
	}
	started := time.Now()
	defer stop()
	limits := "wake limits off (--wake-rate 0 --wake-target-rate 0)"
	if o.wakeRate > 0 {
		limits = fmt.Sprintf("wake limit %d datagrams/s overall (--wake-rate %d), per target off (--wake-target-rate 0)", o.wakeRate, o.wakeRate)
	}
	how := "claimed wakeup_hostport trusted inside --wake-cidrs 127.0.0.0/8"
	if o.stun {
		how = "address proven by an authenticated STUN request"
	}
	format := "compatible NOTIFY datagrams"
	if o.auth {
		format = "authenticated datagrams (wake_auth), MAC checked with kick.Verify"
	}
	fmt.Fprintf(stdout, "machine: %d CPUs, %s/%s; relay and load generator share it\n", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(stdout, "%d sleeping devices; %s; %s; %s\n", o.devices, limits, how, format)

	base, _ := c.rss(true)
	baseStatus := procStatus(c.Cmd.Process.Pid)
	baseM := c.runtimeMetrics()

	// The devices' wake sockets.
	devs := make([]*wakeDev, o.devices)
	defer func() {
		for _, d := range devs {
			if d != nil {
				d.conn.Close()
			}
		}
	}()
	for i := range devs {
		conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(wakeAddr(i), uint16(o.port))))
		if err != nil {
			return fmt.Errorf("wake socket %d: %w", i, err)
		}
		devs[i] = &wakeDev{conn: conn, addr: conn.LocalAddr().(*net.UDPAddr).AddrPort()}
	}

	// Each device says hello with its wake address, registers one channel
	// and goes to sleep.
	start := time.Now()
	var next, ready atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, o.workers)
	for range o.workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(devs) {
					return
				}
				if err := devs[i].setup(ctx, c, i, &o); err != nil {
					errc <- fmt.Errorf("device %d (%s): %w", i, devs[i].addr, err)
					return
				}
				if v := ready.Add(1); v%1000 == 0 {
					fmt.Fprintf(stderr, "  %d devices registered and asleep (%.0f/s)\n", v, float64(v)/time.Since(start).Seconds())
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("registering devices: %w", err)
	}
	fmt.Fprintf(stderr, "  %d devices registered in %s\n", o.devices, time.Since(start).Truncate(time.Millisecond))
	// Asleep: no session open and no wake scheduled (each session's end
	// schedules a look that finds nothing waiting).
	if !waitMetrics(c, 30*time.Second, func(m map[string]float64) bool {
		return m["pushrelay_device_connections"] == 0 && m["pushrelay_wake_pending"] == 0
	}) {
		return errors.New("the relay still holds sessions or wakes 30s after the devices closed")
	}
	asleep, _ := c.rss(true)
	asleepStatus := procStatus(c.Cmd.Process.Pid)
	asleepM := c.runtimeMetrics()
	if o.refresh > 0 {
		return refreshDevices(ctx, c, devs, &o, stdout, stderr)
	}
	if o.moveStorm {
		return moveStorm(ctx, c, devs, &o, started, stdout)
	}
	before, err := scrapeMetrics(c.Admin)
	if err != nil {
		return err
	}

	// One receiver per wake socket: on its first datagram the device
	// reconnects, takes its notification, acks and closes.
	devCtx, devCancel := context.WithCancel(ctx)
	defer devCancel()
	sem := make(chan struct{}, o.workers)
	var woken, acked, failed atomic.Int64
	var receivers sync.WaitGroup
	for _, d := range devs {
		receivers.Go(func() { d.serve(devCtx, c, &o, sem, &woken, &acked, &failed) })
	}
	stopReceivers := func() {
		devCancel()
		for _, d := range devs {
			d.conn.Close()
		}
		receivers.Wait()
	}
	defer stopReceivers()

	var profiling sync.WaitGroup
	if o.cpuProfile != "" {
		profiling.Go(func() {
			if err := c.saveProfile("profile?seconds=5", o.cpuProfile); err != nil {
				fmt.Fprintf(stderr, "cpu profile: %v\n", err)
			}
		})
	}

	// One message per device, urgency normal, TTL 3600.
	t0 := time.Now()
	var posted, postFailed atomic.Int64
	var postNext atomic.Int64
	var posters sync.WaitGroup
	for range o.posters {
		posters.Go(func() {
			p, err := newRawPoster(devs[0].endpoint)
			if err != nil {
				postFailed.Add(1)
				return
			}
			defer p.close()
			for ctx.Err() == nil {
				i := int(postNext.Add(1)) - 1
				if i >= len(devs) {
					return
				}
				if code, err := p.do(devs[i].req); err != nil || code != 201 {
					postFailed.Add(1)
					continue
				}
				posted.Add(1)
			}
		})
	}
	postsDone := make(chan struct{})
	var tPosted time.Duration
	go func() {
		posters.Wait()
		tPosted = time.Since(t0)
		close(postsDone)
	}()
	progress := time.NewTicker(2 * time.Second)
	defer progress.Stop()
	for acked.Load()+failed.Load() < int64(o.devices) && ctx.Err() == nil {
		select {
		case <-progress.C:
			fmt.Fprintf(stderr, "  %.0fs: %d posted, %d woken, %d acked\n", time.Since(t0).Seconds(), posted.Load(), woken.Load(), acked.Load())
		case <-time.After(5 * time.Millisecond):
		}
	}
	<-postsDone
	// Let the relay finish: once no wake is scheduled it sends no more,
	// and any late datagram (a retry, a wake after the device closed) is
	// counted below.
	settled := waitMetrics(c, 15*time.Second, func(m map[string]float64) bool { return m["pushrelay_wake_pending"] == 0 })
	time.Sleep(200 * time.Millisecond)
	stopReceivers()
	profiling.Wait()
	after, err := scrapeMetrics(c.Admin)
	if err != nil {
		return err
	}
	delta := func(name, label string) float64 {
		return sumMetric(after, name, label) - sumMetric(before, name, label)
	}

	// Tally what the devices saw.
	var received, once, more, none, bad, accepted, ackedN int
	var firstDG, lastDG, lastAck time.Duration
	firstDG = -1
	var lastErr error
	for _, d := range devs {
		received += d.datagrams
		bad += d.bad
		switch {
		case d.datagrams == 0:
			none++
		case d.datagrams == 1:
			once++
		default:
			more++
		}
		if !d.woke.IsZero() {
			at := d.woke.Sub(t0)
			if firstDG < 0 || at < firstDG {
				firstDG = at
			}
			lastDG = max(lastDG, at)
		}
		if !d.acked.IsZero() {
			ackedN++
			lastAck = max(lastAck, d.acked.Sub(t0))
		}
		if d.accepted {
			accepted++
		}
		if d.err != nil {
			lastErr = d.err
		}
	}
	ms := func(d time.Duration) string { return d.Truncate(100 * time.Microsecond).String() }
	fmt.Fprintf(stdout, "posts: %d of %d answered 201 in %s (%.0f posts/s, %d posters)\n", posted.Load(), o.devices, ms(tPosted), float64(posted.Load())/tPosted.Seconds(), o.posters)
	fmt.Fprintf(stdout, "first post → all datagrams received: %s (first at %s; %.0f datagrams/s from first to last)\n",
		ms(lastDG), ms(max(firstDG, 0)), float64(o.devices-none)/max(lastDG-firstDG, time.Millisecond).Seconds())
	fmt.Fprintf(stdout, "first post → all acked: %s (%d devices reconnected, said hello, took their notification and acked, %d in parallel)\n", ms(lastAck), ackedN, o.workers)
	fmt.Fprintf(stdout, "datagrams: received %d (devices with exactly 1: %d, more than 1: %d, none: %d, wrong or bad MAC: %d); relay sent %.0f (first %.0f, retry %.0f), send errors %.0f, dropped %.0f, deferred %.0f\n",
		received, once, more, none, bad,
		delta("pushrelay_wake_datagrams_total", ""), delta("pushrelay_wake_datagrams_total", `kind="first"`), delta("pushrelay_wake_datagrams_total", `kind="retry"`), delta("pushrelay_wake_send_errors_total", ""),
		delta("pushrelay_wake_dropped_total", ""), delta("pushrelay_wake_deferred_total", ""))
	fmt.Fprintf(stdout, "relay: acks %.0f, delivered %.0f, reconnect hellos answered 201: %d of %d\n",
		delta("pushrelay_messages_acked_total", ""), delta("pushrelay_messages_delivered_total", ""), accepted, ackedN)
	per := float64(asleep-base) / float64(o.devices)
	fmt.Fprintf(stdout, "relay RSS: %s before devices, %s with %d devices asleep: %.0f bytes (%.2f KiB) per sleeping device\n", mib(base), mib(asleep), o.devices, per, per/1024)
	fmt.Fprintf(stdout, "  per sleeping device: anonymous %.0f B, file-backed (store mmap) %.0f B; Go heap in use %.0f B, goroutines %.3f; store file %s\n",
		(asleepStatus["RssAnon"]-baseStatus["RssAnon"])/float64(o.devices), (asleepStatus["RssFile"]-baseStatus["RssFile"])/float64(o.devices),
		(asleepM["go_memstats_heap_inuse_bytes"]-baseM["go_memstats_heap_inuse_bytes"])/float64(o.devices),
		(asleepM["go_goroutines"]-baseM["go_goroutines"])/float64(o.devices), storeSize(c))

	switch {
	case posted.Load() != int64(o.devices):
		return fmt.Errorf("%d of %d posts failed", int64(o.devices)-posted.Load(), o.devices)
	case ackedN != o.devices:
		return fmt.Errorf("only %d of %d devices were woken and acked (last error: %v)", ackedN, o.devices, lastErr)
	case bad > 0:
		return fmt.Errorf("%d datagrams were wrong", bad)
	case delta("pushrelay_messages_acked_total", "") != float64(o.devices):
		return fmt.Errorf("the relay counted %.0f acks for %d devices", delta("pushrelay_messages_acked_total", ""), o.devices)
	case !settled:
		return errors.New("the relay still had wakes scheduled 15s after the last ack")
	}
	fmt.Fprintf(stdout, "all %d devices woken and acked\n", o.devices)
	return nil
}

// setup makes d a sleeping device: hello with its wake address, one
// channel, a POST prepared for it, and its WebSocket closed.
func (d *wakeDev) setup(ctx context.Context, c *child, i int, o *wakeOpts) error {
	cl, err := pushclient.Dial(ctx, c.Device)
	if err != nil {
		return err
	}
	defer cl.Abort()
	r, err := cl.Hello("", pushclient.HelloOptions{Wake: d.addr, WakeAuth: o.auth})
	if err != nil {
		return err
	}
	switch {
	case o.stun && (r.Status != pushproto.StatusOK || r.STUN == ""):
		// Not proven yet: a plain hello, with what the STUN request needs.
		return fmt.Errorf("hello: status %d, stun %q; want 200 and a STUN address before the address is proven", r.Status, r.STUN)
	case !o.stun && r.Status != pushproto.StatusWake:
		return fmt.Errorf("hello: status %d, want %d (accepted for UDP wake)", r.Status, pushproto.StatusWake)
	}
	d.uaid, d.stunAddr, d.password = r.UAID, r.STUN, r.WakeKey
	if d.u, err = pushtypes.ParseUAID(r.UAID); err != nil {
		return err
	}
	if d.key, err = kick.ParseKey(r.WakeKey); err != nil {
		return err
	}
	reg, err := cl.Register(benchChannelID(i), "")
	if err != nil {
		return err
	}
	if reg.PushEndpoint == "" {
		return fmt.Errorf("register: status %d, no endpoint", reg.Status)
	}
	if o.stun {
		// The device exists once it has a channel: now prove the address.
		if err := d.bind(r.STUN, r.WakeKey); err != nil {
			return err
		}
	}
	sub, err := ece.NewSubscription()
	if err != nil {
		return err
	}
	body, err := ece.Encrypt(make([]byte, o.payload), sub.PublicKey(), sub.Auth)
	if err != nil {
		return err
	}
	d.endpoint = reg.PushEndpoint
	d.req, err = rawRequest(reg.PushEndpoint, body, map[string]string{"TTL": "3600", "Urgency": "normal", "Content-Encoding": "aes128gcm"})
	if err != nil {
		return err
	}
	return cl.Close() // the device sleeps
}

// bind proves the wake socket's address with STUN and checks the relay saw
// the socket's own address.
func (d *wakeDev) bind(stunAddr, password string) error {
	to, err := netip.ParseAddrPort(stunAddr)
	if err != nil {
		return fmt.Errorf("stun address %q: %w", stunAddr, err)
	}
	mapped, err := discovery.Bind(d.conn, net.UDPAddrFromAddrPort(to), d.uaid, password, discovery.BindOptions{})
	if err != nil {
		return err
	}
	if mapped != d.addr {
		return fmt.Errorf("stun mapped %s to %s", d.addr, mapped)
	}
	return nil
}

// serve reads d's wake socket until it is closed: it checks and counts
// every datagram and, on one while the device has not acked yet, wakes the
// device (at most sem devices at once).
func (d *wakeDev) serve(ctx context.Context, c *child, o *wakeOpts, sem chan struct{}, woken, acked, failed *atomic.Int64) {
	buf := make([]byte, 256)
	wantNotify := "NOTIFY " + d.addr.String()
	for {
		n, err := d.conn.Read(buf)
		if err != nil {
			return // closed at the end of the run
		}
		now := time.Now()
		d.datagrams++
		b := buf[:n]
		if o.auth {
			ctr, ok := kick.Verify(d.key, d.u, b)
			if !ok || ctr <= d.lastCounter {
				d.bad++
			}
			d.lastCounter = max(d.lastCounter, ctr)
		} else if string(b) != wantNotify {
			d.bad++
		}
		if d.woke.IsZero() {
			d.woke = now
			woken.Add(1)
		}
		if !d.acked.IsZero() || ctx.Err() != nil {
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			continue
		}
		err = d.wake(ctx, c, o)
		<-sem
		if err != nil {
			if d.err == nil {
				failed.Add(1)
			}
			d.err = err
			continue // a retry datagram may come
		}
		if d.err != nil {
			failed.Add(-1)
			d.err = nil
		}
		acked.Add(1)
	}
}

// wake is the device's answer to its datagram: reconnect, hello with its
// UAID (and wake address, as devices always send it), take the
// notification, ack it and close.
func (d *wakeDev) wake(ctx context.Context, c *child, o *wakeOpts) error {
	cl, err := pushclient.Dial(ctx, c.Device)
	if err != nil {
		return err
	}
	defer cl.Abort()
	r, err := cl.Hello(d.uaid, pushclient.HelloOptions{Wake: d.addr, WakeAuth: o.auth})
	if err != nil {
		return err
	}
	if r.UAID != d.uaid {
		return fmt.Errorf("hello: got uaid %s, want %s", r.UAID, d.uaid)
	}
	deadline := time.Now().Add(30 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	f, err := cl.Next(deadline)
	if err != nil {
		return fmt.Errorf("waiting for the notification: %w", err)
	}
	if err := cl.Ack(f); err != nil {
		return err
	}
	d.acked = time.Now()
	d.accepted = r.Status == pushproto.StatusWake
	return cl.Close()
}

// scrapeMetrics reads every series of the relay's /metrics, keyed by name
// and labels as printed.
func scrapeMetrics(admin string) (map[string]float64, error) {
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}

// sumMetric adds up the series of name whose labels contain label ("" for
// all of them).
func sumMetric(m map[string]float64, name, label string) float64 {
	var s float64
	for k, v := range m {
		series, labels, _ := strings.Cut(k, "{")
		if series == name && strings.Contains(labels, label) {
			s += v
		}
	}
	return s
}

// waitMetrics polls /metrics until ok says so or limit passes.
func waitMetrics(c *child, limit time.Duration, ok func(map[string]float64) bool) bool {
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if m, err := scrapeMetrics(c.Admin); err == nil && ok(m) {
			return true
		}
	}
	return false
}

// procStatus reads the memory lines of /proc/PID/status (VmRSS, RssAnon,
// RssFile, …) in bytes.
func procStatus(pid int) map[string]float64 {
	out := map[string]float64{}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		if f := strings.Fields(v); len(f) == 2 && f[1] == "kB" {
			if kb, err := strconv.ParseFloat(f[0], 64); err == nil {
				out[k] = kb * 1024
			}
		}
	}
	return out
}

// storeSize is the size of the child's store file, for the report.
func storeSize(c *child) string {
	i := slices.Index(c.Cmd.Args, "--data-dir")
	if i < 0 || i+1 >= len(c.Cmd.Args) {
		return "?"
	}
	fi, err := os.Stat(filepath.Join(c.Cmd.Args[i+1], "pushrelay.db"))
	if err != nil {
		return "?"
	}
	return mib(fi.Size())
}
