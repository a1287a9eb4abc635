package bench

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// benchHalfOpen measures what half-open HTTP requests cost the relay, and
// whether it keeps serving under them: --n connections to the endpoint
// listener (or the device listener) from --sources loopback addresses,
// each sending part of a request (a POST's headers and the first bytes of
// its body; a WebSocket upgrade's first header lines) and then nothing,
// held for --hold. An app server whose keep-alive connection was open before the
// flood posts to a device meanwhile; the device must receive each
// message. The relay runs with the endpoint caps given here (the
// configuration's defaults unless set), so one run with them and one with
// 0 show what the caps buy.
func benchHalfOpen(ctx context.Context, args []string, stdout, stderr io.Writer, defaults func(key string) string) error {
	fs := flag.NewFlagSet("pushrelay bench halfopen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("n", 15000, "half-open requests (connections) to open")
	sources := fs.Int("sources", 32, "loopback source addresses they come from (127.0.1.1 and up)")
	hold := fs.Duration("hold", 10*time.Second, "how long to hold them before measuring")
	workers := fs.Int("workers", 64, "connections opened in parallel")
	target := fs.String("listener", "endpoint", "endpoint or device")
	maxConns := fs.String("max-conns", "", "the relay's endpoint_concurrency or device_max_conns (default: the configuration's; 0: no cap)")
	maxPerIP := fs.String("max-conns-per-ip", "", "the relay's endpoint_max_conns_per_ip or device_max_conns_per_ip (default: the configuration's; 0: no cap)")
	memLimit := fs.String("memory-limit", "160MiB", "the relay's memory_limit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	capKey := "device_max_conns"
	switch *target {
	case "device":
	case "endpoint":
		capKey = "endpoint_concurrency"
	default:
		return fmt.Errorf("bench halfopen: --listener %q: want endpoint or device", *target)
	}
	for _, f := range []struct {
		v   *string
		key string
	}{{maxConns, capKey}, {maxPerIP, *target + "_max_conns_per_ip"}} {
		if *f.v == "" {
			*f.v = defaults(f.key)
		}
	}
	if *target == "endpoint" && *maxConns == "0" {
		*maxConns = "1048576" // endpoint_concurrency has no "no cap"
	}
	c, stop, err := benchRelay(ctx, "--"+strings.ReplaceAll(capKey, "_", "-"), *maxConns, "--"+*target+"-max-conns-per-ip", *maxPerIP,
		"--memory-limit", *memLimit)
	if err != nil {
		return err
	}
	defer stop()
	u, err := url.Parse(c.Endpoint)
	if *target == "device" {
		u, err = url.Parse(c.Device)
	}
	if err != nil {
		return err
	}
	dev, err := newBenchDev(ctx, c, 0, 3000)
	if err != nil {
		return fmt.Errorf("device: %w", err)
	}
	defer dev.cl.Abort()
	app, err := newRawPoster(dev.endpoint)
	if err != nil {
		return err
	}
	defer app.close()
	post := func() (time.Duration, error) {
		start := time.Now()
		code, err := app.do(dev.req)
		if err == nil && code != 201 {
			err = fmt.Errorf("status %d", code)
		}
		if err == nil {
			nt, nerr := dev.cl.Next(time.Now().Add(10 * time.Second))
			if nerr != nil {
				return 0, fmt.Errorf("device: %w", nerr)
			}
			err = dev.cl.Ack(nt)
		}
		return time.Since(start), err
	}
	if _, err := post(); err != nil {
		return fmt.Errorf("post before the flood: %w", err)
	}
	base, _ := c.rss(true)
	fmt.Fprintf(stdout, "relay RSS before the flood: %s (%s %s, per ip %s, memory_limit %s)\n", mib(base), capKey, *maxConns, *maxPerIP, *memLimit)

	// The flood. A dial to a full listener completes in the kernel's accept
	// queue; past the queue the kernel drops the SYN, and the dial gives
	// up after 250ms.
	partial := fmt.Appendf(nil, "POST /wpush/v1/flood HTTP/1.1\r\nHost: %s\r\nTTL: 60\r\nContent-Encoding: aes128gcm\r\nContent-Length: 4000\r\n\r\n%0100d", u.Host, 0)
	if *target == "device" {
		partial = fmt.Appendf(nil, "GET / HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n", u.Host)
	}
	conns := make([]net.Conn, *n)
	var next, opened, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range *workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= *n {
					return
				}
				src := net.IPv4(127, 0, byte(1+i%*sources/254), byte(1+i%*sources%254))
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 250 * time.Millisecond}
				nc, err := d.DialContext(ctx, "tcp", u.Host)
				if err == nil {
					nc.SetWriteDeadline(time.Now().Add(time.Second))
					_, err = nc.Write(partial)
				}
				if err != nil {
					failed.Add(1)
					if nc != nil {
						nc.Close()
					}
					continue
				}
				conns[i] = nc
				if v := opened.Add(1); v%5000 == 0 {
					fmt.Fprintf(stderr, "  %d half-open requests sent (%.0f/s)\n", v, float64(v)/time.Since(start).Seconds())
				}
			}
		})
	}
	wg.Wait()
	defer func() {
		for _, nc := range conns {
			if nc != nil {
				nc.Close()
			}
		}
	}()
	fmt.Fprintf(stdout, "flood: %d connections sent a partial request, %d could not connect (%s)\n", opened.Load(), failed.Load(), time.Since(start).Round(time.Millisecond))

	// Hold, posting through the app server's connection once a second.
	var worst time.Duration
	posts := 0
	var peak int64
	for end := time.Now().Add(*hold); time.Now().Before(end) && ctx.Err() == nil; {
		d, err := post()
		if err != nil {
			return fmt.Errorf("post during the flood: %w", err)
		}
		posts++
		worst = max(worst, d)
		if r, err := c.rss(false); err == nil {
			peak = max(peak, r)
		}
		time.Sleep(time.Second)
	}
	held, _ := c.rss(false)
	afterGC, _ := c.rss(true)
	metric := func(name string) float64 {
		v, _ := c.metric(name)
		return v
	}
	fmt.Fprintf(stdout, "relay RSS under the flood: %s (peak %s, %s after a forced GC): %+.1f MiB over the base\n",
		mib(held), mib(max(peak, held)), mib(afterGC), float64(max(peak, held)-base)/(1<<20))
	fmt.Fprintf(stdout, "%s connections open: %.0f; refused per source: %.0f; listener full: %.0f times\n", *target,
		metric(`pushrelay_listener_connections{listener="`+*target+`"}`),
		metric(`pushrelay_listener_refused_total{listener="`+*target+`",reason="per_source"}`),
		metric(`pushrelay_listener_full_total{listener="`+*target+`"}`))
	fmt.Fprintf(stdout, "app server on its earlier connection: %d posts, all 201 and delivered; slowest post → delivered %s\n", posts, worst.Round(time.Microsecond))
	return nil
}
