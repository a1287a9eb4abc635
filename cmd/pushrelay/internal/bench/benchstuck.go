package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
)

// This file holds the bench scenarios of issue #5: devices that stop
// reading (stuck), a reconnect storm (storm) and half-open HTTP requests
// (halfopen). Each runs the relay as a child process, measures its RSS
// throughout, and has healthy devices take pushes during the attack to
// show whether the relay kept serving them.

// rssSampler reads a child's RSS every period until stopped, keeping the
// peaks of the whole and of its anonymous part (the heap and stacks;
// the rest is mostly the store's file pages, which the kernel can drop).
type rssSampler struct {
	peak, peakAnon atomic.Int64
	stop           chan struct{}
	done           chan struct{}
}

func sampleRSS(c *child, period time.Duration) *rssSampler {
	s := &rssSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			if all, anon, err := procRSSAnon(c.Cmd.Process.Pid); err == nil {
				s.peak.Store(max(s.peak.Load(), all))
				s.peakAnon.Store(max(s.peakAnon.Load(), anon))
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// end stops sampling and returns the peaks (all, anonymous).
func (s *rssSampler) end() (int64, int64) {
	close(s.stop)
	<-s.done
	return s.peak.Load(), s.peakAnon.Load()
}

// procRSSAnon is a process's resident set and its anonymous part, in bytes.
func procRSSAnon(pid int) (all, anon int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	var found int
	for _, line := range strings.Split(string(b), "\n") {
		for _, f := range []struct {
			key string
			v   *int64
		}{{"VmRSS:", &all}, {"RssAnon:", &anon}} {
			if rest, ok := strings.CutPrefix(line, f.key); ok {
				kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				if err != nil {
					return 0, 0, err
				}
				*f.v = kb * 1024
				found++
			}
		}
	}
	if found != 2 {
		return 0, 0, errors.New("no VmRSS or RssAnon in /proc status")
	}
	return all, anon, nil
}

// prober is a set of healthy devices: each gets a push every interval,
// reads it and acks it, and the time from POST to the notification read
// is one latency sample. A device sends its next push only after the last
// arrived (or after the wait bound), so a stall shows as one long sample
// and fewer pushes rather than a queue.
type prober struct {
	devs     []*benchDev
	interval time.Duration
	wait     time.Duration // longest wait for one notification

	mu   sync.Mutex
	lat  []time.Duration
	lost atomic.Int64
}

// newProber connects n healthy devices, numbered from first.
func newProber(ctx context.Context, c *child, n, first int, interval time.Duration) (*prober, error) {
	p := &prober{interval: interval, wait: 30 * time.Second}
	for i := range n {
		d, err := newBenchDev(ctx, c, first+i, 128)
		if err != nil {
			p.close()
			return nil, fmt.Errorf("healthy device %d: %w", i, err)
		}
		p.devs = append(p.devs, d)
	}
	return p, nil
}

func (p *prober) close() {
	for _, d := range p.devs {
		d.cl.Abort()
	}
}

// run pushes to every device until until (or ctx ends) and returns when
// each device's last push arrived or was given up.
func (p *prober) run(ctx context.Context, endpoint string, until time.Time) {
	var wg sync.WaitGroup
	for i, d := range p.devs {
		wg.Go(func() {
			poster, err := newRawPoster(endpoint)
			if err != nil {
				p.lost.Add(1)
				return
			}
			defer poster.close()
			// Spread the devices' ticks over the interval.
			next := time.Now().Add(p.interval * time.Duration(i) / time.Duration(len(p.devs)))
			for ctx.Err() == nil && next.Before(until) {
				time.Sleep(time.Until(next))
				t0 := time.Now()
				next = t0.Add(p.interval)
				if code, err := poster.do(d.req); err != nil || code != 201 {
					p.lost.Add(1)
					continue
				}
				f, err := d.cl.Next(t0.Add(p.wait))
				if err != nil {
					// Not arrived within the bound: this device stops (a
					// late arrival would be taken for the next push's).
					p.lost.Add(1)
					return
				}
				lat := time.Since(t0)
				d.cl.Ack(f)
				p.mu.Lock()
				p.lat = append(p.lat, lat)
				p.mu.Unlock()
			}
		})
	}
	wg.Wait()
}

// samples returns the latencies so far, sorted.
func (p *prober) samples() []time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := slices.Clone(p.lat)
	slices.Sort(out)
	return out
}

// quantile of sorted durations (0 if none).
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*q))]
}

func latencyLine(sorted []time.Duration) string {
	r := func(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  max %s  (%d pushes)",
		r(quantile(sorted, 0.5)), r(quantile(sorted, 0.9)), r(quantile(sorted, 0.99)), r(quantile(sorted, 1)), len(sorted))
}

// helloProbe opens a device connection that never says hello and returns
// how long the relay took to close it (bounded by limit).
func helloProbe(ctx context.Context, c *child, limit time.Duration) (time.Duration, error) {
	t0 := time.Now()
	cl, err := pushclient.Dial(ctx, c.Device)
	if err != nil {
		return 0, err
	}
	defer cl.Abort()
	for {
		if _, err := cl.Read(t0.Add(limit)); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return 0, fmt.Errorf("not closed within %s", limit)
			}
			return time.Since(t0), nil
		}
	}
}

// stuckOpts are bench stuck's flags.
type stuckOpts struct {
	healthy, stuck        int
	stored, direct, size  int
	interval, duration    time.Duration
	rcvbuf, mss           int
	writeTimeout, helloTO time.Duration
	pingInterval          time.Duration
	baseline              bool
	posters               int
	vanish                bool
	control               bool       // the "stuck" devices read and ack: the same load, nobody stuck
	lab                   *vanishLab // the stuck devices' namespace, with vanish
}

// benchStuck measures issue #5 point 1: healthy devices' push latency
// while other devices stop reading with messages piling up for them,
// against the same run without them; the relay's RSS meanwhile; and
// whether a hello timeout fires on time.
func benchStuck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pushrelay bench stuck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o stuckOpts
	fs.IntVar(&o.healthy, "healthy", 100, "healthy devices (read and ack everything)")
	fs.IntVar(&o.stuck, "stuck", 500, "devices that hello, register, then never read again")
	fs.IntVar(&o.stored, "stored", 150, "stored messages (TTL 1h) posted to each stuck device")
	fs.IntVar(&o.direct, "direct", 50, "TTL-0 messages posted to each stuck device")
	fs.IntVar(&o.size, "size", 4000, "bytes of each message posted to a stuck device (aes128gcm body)")
	fs.DurationVar(&o.interval, "interval", 250*time.Millisecond, "each healthy device gets a push this often")
	fs.DurationVar(&o.duration, "duration", 20*time.Second, "how long healthy devices are measured (the stuck devices' messages are posted meanwhile)")
	fs.IntVar(&o.rcvbuf, "rcvbuf", 4096, "stuck devices' SO_RCVBUF, set before connect")
	fs.IntVar(&o.mss, "mss", 1448, "stuck devices' TCP_MAXSEG, set before connect")
	fs.DurationVar(&o.writeTimeout, "write-timeout", 10*time.Second, "relay's write_timeout")
	fs.DurationVar(&o.helloTO, "hello-timeout", 2*time.Second, "relay's hello_timeout (the hello probe measures it)")
	fs.DurationVar(&o.pingInterval, "ping-interval", time.Second, "relay's ping_interval (0: its default of 5m); shorter than --duration has the keepalive loop ping, and time out, the stuck devices")
	fs.BoolVar(&o.baseline, "baseline", true, "first run the same load without the stuck devices, for comparison")
	fs.IntVar(&o.posters, "posters", 16, "app-server connections posting to the stuck devices")
	fs.BoolVar(&o.vanish, "vanish", false, "the stuck devices' network vanishes instead: they sit in a network namespace behind a veth pair (MTU 1500) whose packets are all dropped once they registered (needs root and ip)")
	control := fs.Bool("control", false, "also run the same load with the would-be stuck devices reading and acking everything, to tell what stuck sockets cost the others from what the extra load costs")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var base, ctl []time.Duration
	if *control {
		co := o
		co.control, co.vanish = true, false
		fmt.Fprintf(stderr, "control: %d devices that read everything\n", o.stuck)
		r, err := stuckRun(ctx, co, o.stuck, stdout, stderr)
		if err != nil {
			return fmt.Errorf("control: %w", err)
		}
		ctl = r
	}
	if o.baseline {
		fmt.Fprintf(stderr, "baseline: %d healthy devices, no stuck ones\n", o.healthy)
		r, err := stuckRun(ctx, o, 0, stdout, stderr)
		if err != nil {
			return fmt.Errorf("baseline: %w", err)
		}
		base = r
	}
	fmt.Fprintf(stderr, "with %d stuck devices\n", o.stuck)
	with, err := stuckRun(ctx, o, o.stuck, stdout, stderr)
	if err != nil {
		return err
	}
	if base != nil {
		b, w := quantile(base, 0.99), quantile(with, 0.99)
		if b > 0 {
			fmt.Fprintf(stdout, "healthy p99 with stuck devices / without: %s / %s = %.1fx (target after issue #5: <= 2x)\n",
				w.Round(100*time.Microsecond), b.Round(100*time.Microsecond), float64(w)/float64(b))
		}
	}
	if ctl != nil {
		b, w := quantile(ctl, 0.99), quantile(with, 0.99)
		if b > 0 {
			fmt.Fprintf(stdout, "healthy p99 with stuck devices / with the same devices reading: %s / %s = %.1fx\n",
				w.Round(100*time.Microsecond), b.Round(100*time.Microsecond), float64(w)/float64(b))
		}
	}
	return nil
}

// stuckRun is one run of bench stuck on a fresh relay with nStuck stuck
// devices; it prints its figures and returns the healthy latencies.
func stuckRun(ctx context.Context, o stuckOpts, nStuck int, stdout, stderr io.Writer) ([]time.Duration, error) {
	extra := []string{"--write-timeout", o.writeTimeout.String(), "--hello-timeout", o.helloTO.String(),
		"--max-messages-per-uaid", strconv.Itoa(max(1000, o.stored))}
	if o.pingInterval > 0 {
		extra = append(extra, "--ping-interval", o.pingInterval.String())
	}
	if o.vanish && nStuck > 0 {
		lab, err := newVanishLab()
		if err != nil {
			return nil, err
		}
		defer lab.close()
		o.lab = lab
		extra = append(extra, "--device-listen", vanishRelayAddr+":0")
	}
	c, stop, err := benchRelay(ctx, extra...)
	if err != nil {
		return nil, err
	}
	defer stop()
	c.rss(true)
	rss0, anon0, _ := procRSSAnon(c.Cmd.Process.Pid)
	healthy, err := newProber(ctx, c, o.healthy, 0, o.interval)
	if err != nil {
		return nil, err
	}
	defer healthy.close()
	stuck, err := connectStuck(ctx, c, nStuck, o, stderr)
	defer func() {
		for _, s := range stuck {
			s.cl.Abort()
		}
	}()
	if err != nil {
		return nil, err
	}
	var readers sync.WaitGroup
	defer readers.Wait()
	if o.control {
		// The control: the same devices read and ack all they get.
		for _, d := range stuck {
			readers.Go(func() {
				for {
					f, err := d.cl.Read(time.Now().Add(10 * time.Minute))
					if err != nil {
						return
					}
					if f.MessageType == pushproto.TypeNotification {
						d.cl.Ack(f)
					}
				}
			})
		}
	}
	if o.lab != nil {
		if err := o.lab.drop(); err != nil {
			return nil, err
		}
		fmt.Fprintf(stderr, "  the stuck devices' network vanished (their veth end is down: every packet dropped)\n")
	}
	peak := sampleRSS(c, 100*time.Millisecond)
	delivered0, _ := c.metric("pushrelay_messages_delivered_total")
	start := time.Now()
	until := start.Add(o.duration)
	var posted, postFailed atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() { healthy.run(ctx, c.Endpoint, until) })
	if nStuck > 0 {
		wg.Go(func() { postStuck(ctx, c.Endpoint, stuck, o, until, &posted, &postFailed) })
	}
	// Hello probes, one after another through the run (at least one): each a connection
	// that never says hello, timed until the relay closes it.
	var hello []time.Duration
	var helloErr error
	wg.Go(func() {
		for ctx.Err() == nil {
			d, err := helloProbe(ctx, c, o.helloTO+o.writeTimeout+30*time.Second)
			if err != nil {
				helloErr = err
				return
			}
			hello = append(hello, d)
			if time.Now().Add(o.helloTO).After(until) {
				return
			}
		}
	})
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	progress := time.NewTicker(2 * time.Second)
	defer progress.Stop()
	shown := false
	lastDelivered := delivered0
wait:
	for {
		select {
		case <-done:
			break wait
		case <-progress.C:
			d, _ := c.metric("pushrelay_messages_delivered_total")
			r, anon, _ := procRSSAnon(c.Cmd.Process.Pid)
			s := healthy.samples()
			fmt.Fprintf(stderr, "  %2.0fs: healthy %d pushes (max %s), delivered_total +%.0f (+%.0f in 2s), stuck posts %d (failed %d), RSS %s (anonymous %s)\n",
				time.Since(start).Seconds(), len(s), quantile(s, 1).Round(time.Millisecond), d-delivered0, d-lastDelivered,
				posted.Load(), postFailed.Load(), mib(r), mib(anon))
			lastDelivered = d
			if !shown && nStuck > 0 {
				shown = true
				showSocket(stuck[0].cl.NetConn(), stderr)
			}
		}
	}
	delivered1, _ := c.metric("pushrelay_messages_delivered_total")
	peakDuring, peakAnon := peak.end()
	// The stuck devices hang up; what the relay keeps afterwards.
	for _, s := range stuck {
		s.cl.Abort()
	}
	time.Sleep(2 * time.Second)
	c.rss(true)
	rssAfter, anonAfter, _ := procRSSAnon(c.Cmd.Process.Pid)

	lat := healthy.samples()
	label := "without stuck devices"
	switch {
	case nStuck > 0 && o.control:
		label = fmt.Sprintf("with %d devices that read and ack everything (control; rcvbuf %d, mss %d; %d stored + %d TTL-0 x %d B each)", nStuck, o.rcvbuf, o.mss, o.stored, o.direct, o.size)
	case nStuck > 0 && o.lab != nil:
		label = fmt.Sprintf("with %d devices whose network vanished (%d stored + %d TTL-0 x %d B each)", nStuck, o.stored, o.direct, o.size)
	case nStuck > 0:
		label = fmt.Sprintf("with %d stuck devices (rcvbuf %d, mss %d; %d stored + %d TTL-0 x %d B each)", nStuck, o.rcvbuf, o.mss, o.stored, o.direct, o.size)
	}
	fmt.Fprintf(stdout, "%d healthy devices, a push every %s each, for %s, %s:\n", o.healthy, o.interval, o.duration, label)
	fmt.Fprintf(stdout, "  healthy push->device latency: %s, %d not delivered within %s\n", latencyLine(lat), healthy.lost.Load(), healthy.wait)
	fmt.Fprintf(stdout, "  messages_delivered_total: +%.0f during the run\n", delivered1-delivered0)
	if nStuck > 0 {
		fmt.Fprintf(stdout, "  stuck devices' posts: %d answered 201, %d failed\n", posted.Load(), postFailed.Load())
	}
	fmt.Fprintf(stdout, "  relay RSS: before %s, peak %s, after the stuck devices hung up %s; anonymous: %s, %s, %s\n",
		mib(rss0), mib(peakDuring), mib(rssAfter), mib(anon0), mib(peakAnon), mib(anonAfter))
	slices.Sort(hello)
	switch {
	case helloErr != nil:
		fmt.Fprintf(stdout, "  hello timeout %s: probe: %v\n", o.helloTO, helloErr)
	case len(hello) > 0:
		fmt.Fprintf(stdout, "  hello timeout %s: %d probes closed after median %s, worst %s (%s late; target after issue #5: within 1s)\n",
			o.helloTO, len(hello), quantile(hello, 0.5).Round(time.Millisecond), quantile(hello, 1).Round(time.Millisecond),
			(quantile(hello, 1) - o.helloTO).Round(time.Millisecond))
	}
	return lat, nil
}

// stuckDev is a device that stopped reading, with its two prepared
// POSTs (stored and TTL 0).
type stuckDev struct {
	cl             *pushclient.Client
	stored, direct []byte
}

// connectStuck connects n devices with a small receive buffer and MSS:
// hello and register, then they never read again.
func connectStuck(ctx context.Context, c *child, n int, o stuckOpts, stderr io.Writer) ([]*stuckDev, error) {
	devs := make([]*stuckDev, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 16)
	dial := pushclient.DialOptions{Net: &net.Dialer{Control: pushclient.Shape(o.rcvbuf, o.mss)}}
	if o.lab != nil {
		dial.DialContext = o.lab.dialer(dial.Net)
	}
	for range min(16, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				d, err := newStuckDev(ctx, c, 1_000_000+i, dial, o.size)
				if err != nil {
					errc <- fmt.Errorf("stuck device %d: %w", i, err)
					return
				}
				devs[i] = d
			}
		})
	}
	wg.Wait()
	close(errc)
	devs = slices.DeleteFunc(devs, func(d *stuckDev) bool { return d == nil })
	if err := <-errc; err != nil {
		return devs, err
	}
	if n > 0 {
		fmt.Fprintf(stderr, "  %d stuck devices connected and registered\n", n)
	}
	return devs, nil
}

func newStuckDev(ctx context.Context, c *child, i int, dial pushclient.DialOptions, size int) (*stuckDev, error) {
	cl, err := pushclient.DialWith(ctx, c.Device, dial)
	if err != nil {
		return nil, err
	}
	d := &stuckDev{cl: cl}
	r, err := func() (string, error) {
		if _, err := cl.Hello("", pushclient.HelloOptions{}); err != nil {
			return "", err
		}
		r, err := cl.Register(benchChannelID(i), "")
		return r.PushEndpoint, err
	}()
	if err == nil {
		d.stored, d.direct, err = stuckRequests(r, size)
	}
	if err != nil {
		cl.Abort()
		return nil, err
	}
	return d, nil
}

// stuckRequests prepares the stored and TTL-0 POSTs of size bytes each.
func stuckRequests(endpoint string, size int) (stored, direct []byte, err error) {
	sub, err := ece.NewSubscription()
	if err != nil {
		return nil, nil, err
	}
	// aes128gcm adds an 86-byte header, a padding delimiter and a 16-byte tag.
	body, err := ece.Encrypt(make([]byte, max(1, size-103)), sub.PublicKey(), sub.Auth)
	if err != nil {
		return nil, nil, err
	}
	hdr := map[string]string{"Content-Encoding": "aes128gcm", "TTL": "3600"}
	if stored, err = rawRequest(endpoint, body, hdr); err != nil {
		return nil, nil, err
	}
	hdr["TTL"] = "0"
	direct, err = rawRequest(endpoint, body, hdr)
	return stored, direct, err
}

// postStuck posts every stuck device its messages, round by round (one
// message to each device per round, stored ones first, TTL-0 ones last),
// until all are posted or until.
func postStuck(ctx context.Context, endpoint string, devs []*stuckDev, o stuckOpts, until time.Time, posted, failed *atomic.Int64) {
	total := int64(len(devs) * (o.stored + o.direct))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range o.posters {
		wg.Go(func() {
			p, err := newRawPoster(endpoint)
			if err != nil {
				return
			}
			defer p.close()
			for ctx.Err() == nil && time.Now().Before(until) {
				k := next.Add(1) - 1
				if k >= total {
					return
				}
				d, round := devs[k%int64(len(devs))], int(k/int64(len(devs)))
				req := d.stored
				if round >= o.stored {
					req = d.direct
				}
				if code, err := p.do(req); err != nil || code != 201 {
					failed.Add(1)
					continue
				}
				posted.Add(1)
			}
		})
	}
	wg.Wait()
}

// showSocket prints what `ss -tmi` says of both ends of a connection, to
// check the receive buffer and MSS took effect.
func showSocket(nc net.Conn, w io.Writer) {
	local, ok := nc.LocalAddr().(*net.TCPAddr)
	if !ok {
		return
	}
	out, err := exec.Command("ss", "-tmiH", fmt.Sprintf("( sport = :%d or dport = :%d )", local.Port, local.Port)).CombinedOutput()
	if err != nil {
		fmt.Fprintf(w, "  ss -tmi: %v\n", err)
		return
	}
	fmt.Fprintf(w, "  ss -tmi of one stuck device's connection (its end and the relay's):\n")
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fmt.Fprintf(w, "    %s\n", strings.TrimSpace(line))
	}
}

// hostPort is an http:// URL's host:port.
func hostPort(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", err
	}
	return u.Host, nil
}

// srcAddr spreads bench connections over loopback source addresses,
// 8,000 to each (127.0.0.2, 127.0.0.3, …), so tens of thousands of them
// (and their TIME_WAITs) do not run out of ephemeral ports.
func srcAddr(i int) *net.TCPAddr {
	return &net.TCPAddr{IP: wakeAddr(i / 8000).AsSlice()}
}

// attack is what bench storm and halfopen share: a relay, healthy devices
// taking pushes throughout, RSS sampled, and progress lines.
type attack struct {
	c       *child
	healthy *prober
	peak    *rssSampler
	rss0    int64
	anon0   int64
	cancel  context.CancelFunc
	done    chan struct{}
	start   time.Time
}

func startAttack(ctx context.Context, c *child, healthy, first int, interval time.Duration) (*attack, error) {
	p, err := newProber(ctx, c, healthy, first, interval)
	if err != nil {
		return nil, err
	}
	a := &attack{c: c, healthy: p, done: make(chan struct{}), start: time.Now()}
	c.rss(true)
	a.rss0, a.anon0, _ = procRSSAnon(c.Cmd.Process.Pid)
	a.peak = sampleRSS(c, 100*time.Millisecond)
	hctx, cancel := context.WithCancel(ctx)
	a.cancel = cancel
	go func() {
		defer close(a.done)
		p.run(hctx, c.Endpoint, time.Now().Add(24*time.Hour))
	}()
	return a, nil
}

func (a *attack) progress(w io.Writer, what string) {
	r, anon, _ := procRSSAnon(a.c.Cmd.Process.Pid)
	s := a.healthy.samples()
	fmt.Fprintf(w, "  %4.1fs: %s; relay RSS %s (anonymous %s); healthy %d pushes, max %s\n",
		time.Since(a.start).Seconds(), what, mib(r), mib(anon), len(s), quantile(s, 1).Round(time.Millisecond))
}

// end stops the healthy devices and the sampler and prints the figures.
func (a *attack) end(w io.Writer, n int, what string) {
	a.cancel()
	<-a.done
	peak, peakAnon := a.peak.end()
	a.healthy.close()
	fmt.Fprintf(w, "  relay RSS: before %s, peak %s (+%.1f KiB per %s); anonymous: before %s, peak %s\n",
		mib(a.rss0), mib(peak), float64(peak-a.rss0)/1024/float64(max(n, 1)), what, mib(a.anon0), mib(peakAnon))
	fmt.Fprintf(w, "  healthy push->device latency during it: %s, %d not delivered within %s\n",
		latencyLine(a.healthy.samples()), a.healthy.lost.Load(), a.healthy.wait)
	select {
	case <-a.c.Done:
		fmt.Fprintf(w, "  the relay EXITED: %v\n", a.c.ExitErr)
	default:
		fmt.Fprintf(w, "  the relay kept running\n")
	}
}

// benchStorm measures a reconnect storm (issue #5 point 2): n devices
// connect, hello and register, all go away, then all reconnect at once.
func benchStorm(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pushrelay bench storm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("n", 9000, "devices in the storm")
	healthy := fs.Int("healthy", 10, "healthy devices taking a push every --interval throughout")
	interval := fs.Duration("interval", 250*time.Millisecond, "each healthy device gets a push this often")
	limit := fs.Duration("max-time", 60*time.Second, "give up on the reconnects after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, stop, err := benchRelay(ctx)
	if err != nil {
		return err
	}
	defer stop()

	// The devices register once, then go away.
	uaids := make([]string, *n)
	var next, opened atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 32)
	for range 32 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= *n || ctx.Err() != nil {
					return
				}
				cl, err := pushclient.DialWith(ctx, c.Device, pushclient.DialOptions{Net: &net.Dialer{LocalAddr: srcAddr(i)}})
				if err == nil {
					_, err = cl.Hello("", pushclient.HelloOptions{})
					if err == nil {
						_, err = cl.Register(benchChannelID(i), "")
					}
					cl.Abort()
				}
				if err != nil {
					errc <- fmt.Errorf("device %d: %w", i, err)
					return
				}
				uaids[i] = cl.UAID
				if v := opened.Add(1); v%1000 == 0 {
					fmt.Fprintf(stderr, "  %d devices registered\n", v)
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return err
	}
	time.Sleep(time.Second) // the relay sees them gone
	a, err := startAttack(ctx, c, *healthy, *n, *interval)
	if err != nil {
		return err
	}

	// All reconnect at once, from fresh source ports.
	fmt.Fprintf(stderr, "  %d devices reconnect at once\n", *n)
	sctx, cancel := context.WithTimeout(ctx, *limit)
	defer cancel()
	clients := make([]*pushclient.Client, *n)
	var back, failed atomic.Int64
	gate := make(chan struct{})
	for i := range *n {
		wg.Go(func() {
			<-gate
			cl, err := pushclient.DialWith(sctx, c.Device, pushclient.DialOptions{Net: &net.Dialer{LocalAddr: srcAddr(*n + i)}})
			if err == nil {
				if _, err = cl.Hello(uaids[i], pushclient.HelloOptions{}); err != nil {
					cl.Abort()
				}
			}
			if err != nil {
				failed.Add(1)
				return
			}
			clients[i] = cl
			back.Add(1)
		})
	}
	t0 := time.Now()
	close(gate)
	all := make(chan struct{})
	go func() { wg.Wait(); close(all) }()
	tick := time.NewTicker(time.Second)
wait:
	for {
		select {
		case <-all:
			break wait
		case <-tick.C:
			a.progress(stderr, fmt.Sprintf("%d reconnected, %d failed", back.Load(), failed.Load()))
		}
	}
	tick.Stop()
	took := time.Since(t0)
	// Hold them a moment with the healthy devices still pushing.
	time.Sleep(2 * time.Second)
	withAll, _ := c.rss(true)
	fmt.Fprintf(stdout, "reconnect storm: %d devices reconnect at once: %d back in %s, %d failed\n", *n, back.Load(), took.Round(time.Millisecond), failed.Load())
	a.end(stdout, *n, "reconnecting device")
	fmt.Fprintf(stdout, "  relay RSS with all %d connected (after GC): %s\n", *n, mib(withAll))
	for _, cl := range clients {
		if cl != nil {
			cl.Abort()
		}
	}
	return nil
}
