// Package bench holds the load tools behind `pushrelay bench SCENARIO`:
// each starts the relay under test as a child process (internal/relayproc)
// on loopback port-0 listeners, drives it like devices and app servers do,
// and prints what it measured (docs/benchmarks.md records the figures and
// the commands). Every loop is bounded in count and time.
//
// The tools live here, out of the daemon's package main, which only
// dispatches the subcommand to Run. They stay a subcommand of the same
// binary, rather than a binary of their own, on purpose: the relay under
// test is the very binary that runs the bench (os.Executable), so a
// cross-built gateway binary is measured under qemu-user with nothing else
// to build or copy (PUSHRELAY_BENCH_EMULATOR), and every command recorded
// in docs/benchmarks.md runs as written. --relay (bench wake) still runs
// another build as the relay, to compare.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pushrelay/pushrelay/cmd/pushrelay/internal/relayproc"
	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/node"
	pushtypes "github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/store"
)

// Run is `pushrelay bench SCENARIO`: args are the scenario and its flags.
// defaults gives the relay's default value of a configuration key (the
// daemon's settings table), for scenarios that run the relay with it.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer, defaults func(key string) string) error {
	if len(args) == 0 {
		return errors.New("usage: pushrelay bench conns|throughput|batch|startup|drain|wake|stuck|storm|halfopen|broadcast|upstream|link|site [flags]")
	}
	switch args[0] {
	case "conns":
		return benchConns(ctx, args[1:], stdout, stderr)
	case "throughput":
		return benchThroughput(ctx, args[1:], stdout, stderr)
	case "batch":
		return benchBatch(ctx, args[1:], stdout, stderr)
	case "startup":
		return benchStartup(ctx, args[1:], stdout, stderr)
	case "drain":
		return benchDrain(ctx, args[1:], stdout, stderr)
	case "wake":
		return benchWake(ctx, args[1:], stdout, stderr)
	case "stuck":
		return benchStuck(ctx, args[1:], stdout, stderr)
	case "storm":
		return benchStorm(ctx, args[1:], stdout, stderr)
	case "halfopen":
		return benchHalfOpen(ctx, args[1:], stdout, stderr, defaults)
	case "broadcast":
		return benchBroadcast(ctx, args[1:], stdout, stderr)
	case "upstream":
		return benchUpstream(ctx, args[1:], stdout, stderr)
	case "link":
		return benchLink(ctx, args[1:], stdout, stderr)
	case "site":
		return benchSite(ctx, args[1:], stdout, stderr)
	case "broadcast-baseline":
		return benchBroadcastBaseline(ctx, args[1:], stdout, stderr)
	}
	return fmt.Errorf("bench: unknown scenario %q (conns, throughput, batch, startup, drain, wake, stuck, storm, halfopen, broadcast, upstream, link, site)", args[0])
}

// child is the relay under test, with the measurements the scenarios take
// of it.
type child struct{ *relayproc.Proc }

// startChild runs bin as the relay under test (relayproc.Start).
func startChild(ctx context.Context, bin, dataDir string, stderr io.Writer, extra ...string) (*child, error) {
	p, err := relayproc.Start(ctx, bin, dataDir, stderr, extra...)
	if err != nil {
		return nil, err
	}
	return &child{p}, nil
}

// benchRelay starts this binary as the relay under test on a fresh data
// dir; stop removes both.
func benchRelay(ctx context.Context, extra ...string) (c *child, stop func(), err error) {
	dir, cleanup, err := benchDir("")
	if err != nil {
		return nil, nil, err
	}
	c, err = startSelf(ctx, dir, extra...)
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	return c, func() { c.Stop(); cleanup() }, nil
}

// startSelf runs this binary as the relay under test, quietly. The load
// comes from one loopback address, so the connection caps are lifted
// (extra can set them again).
func startSelf(ctx context.Context, dataDir string, extra ...string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return startChild(ctx, self, dataDir, os.Stderr, append([]string{"--log-level", "warn",
		"--device-max-conns", "0", "--device-max-conns-per-ip", "0",
		"--endpoint-concurrency", "1048576", "--endpoint-max-conns-per-ip", "0"}, extra...)...)
}

// rss returns the child's resident set in bytes, after asking it to run a
// garbage collection (pprof's heap?gc=1) so the figure is not a GC phase.
func (c *child) rss(gc bool) (int64, error) {
	if gc {
		for range 2 {
			if resp, err := http.Get(c.Admin + "/debug/pprof/heap?gc=1"); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return procRSS(c.Cmd.Process.Pid)
}

// procCPU is the user and system CPU time process pid has used, from
// /proc (in clock ticks of 10 ms).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; count from its ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("bad /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("bad /proc stat")
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// selfCPU is the user and system CPU time this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no VmRSS")
}

func benchDir(keep string) (string, func(), error) {
	if keep != "" {
		return keep, func() {}, os.MkdirAll(keep, 0o700)
	}
	d, err := os.MkdirTemp("", "pushrelay-bench-")
	return d, func() { os.RemoveAll(d) }, err
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// benchConns measures relay memory per idle device connection.
func benchConns(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pushrelay bench conns", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("n", 10000, "idle device connections to open")
	workers := fs.Int("workers", 32, "connections opened in parallel")
	register := fs.Bool("register", true, "register one channel per device (as a real device would)")
	hold := fs.Duration("hold", 5*time.Second, "how long to hold the connections idle before measuring")
	pingInterval := fs.Duration("ping-interval", 0, "relay's ping_interval (0: its default); shorter than --hold measures idle devices that answer keepalive pings")
	profile := fs.String("heap-profile", "", "save the relay's heap profile (pprof) with the connections open to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var extra []string
	if *pingInterval > 0 {
		extra = append(extra, "--ping-interval", pingInterval.String())
	}
	c, stop, err := benchRelay(ctx, extra...)
	if err != nil {
		return err
	}
	defer stop()
	base, _ := c.rss(true)
	baseM := c.runtimeMetrics()
	fmt.Fprintf(stdout, "relay idle RSS before connections: %s\n", mib(base))

	clients := make([]*pushclient.Client, *n)
	var next, opened atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, *workers)
	start := time.Now()
	for range *workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= *n || ctx.Err() != nil {
					return
				}
				cl, err := pushclient.Dial(ctx, c.Device)
				if err == nil {
					_, err = cl.Hello("", pushclient.HelloOptions{})
				}
				if err == nil && *register {
					_, err = cl.Register(benchChannelID(i), "")
				}
				if err != nil {
					errc <- fmt.Errorf("connection %d: %w", i, err)
					return
				}
				clients[i] = cl
				if v := opened.Add(1); v%1000 == 0 {
					fmt.Fprintf(stderr, "  %d connections open (%.0f/s)\n", v, float64(v)/time.Since(start).Seconds())
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	defer func() {
		for _, cl := range clients {
			if cl != nil {
				cl.Abort()
			}
		}
	}()
	if err := <-errc; err != nil {
		return err
	}
	fmt.Fprintf(stderr, "  holding %d idle connections for %s\n", *n, *hold)
	// The clients answer the relay's pings only while reading: read until
	// the hold ends (each read ends in a timeout, after which the
	// connection is only held open, never read again).
	var holders sync.WaitGroup
	until := time.Now().Add(*hold)
	for _, cl := range clients {
		holders.Go(func() { cl.Read(until) })
	}
	holders.Wait()
	with, _ := c.rss(true)
	withM := c.runtimeMetrics()
	if *profile != "" {
		if err := c.saveProfile("heap", *profile); err != nil {
			return err
		}
	}
	per := float64(with-base) / float64(*n)
	fmt.Fprintf(stdout, "relay RSS with %d idle devices: %s\n", *n, mib(with))
	fmt.Fprintf(stdout, "per idle device connection: %.0f bytes (%.2f KiB) of RSS\n", per, per/1024)
	fmt.Fprintf(stdout, "  Go runtime, per connection:")
	for _, k := range []string{"go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes", "go_memstats_heap_idle_bytes", "go_memstats_heap_released_bytes",
		"go_memstats_gc_sys_bytes", "go_memstats_other_sys_bytes", "go_memstats_mspan_inuse_bytes", "go_goroutines"} {
		fmt.Fprintf(stdout, " %s %.0f", strings.TrimPrefix(strings.TrimSuffix(k, "_bytes"), "go_memstats_"), (withM[k]-baseM[k])/float64(*n))
	}
	fmt.Fprintln(stdout)
	return nil
}

// saveProfile writes one of the relay's pprof profiles to path.
func (c *child) saveProfile(name, path string) error {
	resp, err := http.Get(c.Admin + "/debug/pprof/" + name)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// metric reads one unlabelled metric from the relay's /metrics.
func (c *child) metric(name string) (float64, bool) {
	resp, err := http.Get(c.Admin + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

// runtimeMetrics reads the relay's Go runtime gauges from /metrics.
func (c *child) runtimeMetrics() map[string]float64 {
	out := map[string]float64{}
	resp, err := http.Get(c.Admin + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && strings.HasPrefix(f[0], "go_") {
			v, _ := strconv.ParseFloat(f[1], 64)
			out[f[0]] = v
		}
	}
	return out
}

// benchDev is a bench device: connected, registered, and with its POST
// (an encrypted payload of the given size) prepared once.
type benchDev struct {
	cl       *pushclient.Client
	endpoint string
	req      []byte
}

func newBenchDev(ctx context.Context, c *child, i, payload int) (d *benchDev, err error) {
	cl, err := pushclient.Dial(ctx, c.Device)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			cl.Abort()
		}
	}()
	if _, err := cl.Hello("", pushclient.HelloOptions{}); err != nil {
		return nil, err
	}
	r, err := cl.Register(benchChannelID(i), "")
	if err != nil {
		return nil, err
	}
	sub, err := ece.NewSubscription()
	if err != nil {
		return nil, err
	}
	body, err := ece.Encrypt(make([]byte, payload), sub.PublicKey(), sub.Auth)
	if err != nil {
		return nil, err
	}
	req, err := rawRequest(r.PushEndpoint, body, map[string]string{"TTL": "3600", "Content-Encoding": "aes128gcm"})
	if err != nil {
		return nil, err
	}
	return &benchDev{cl: cl, endpoint: r.PushEndpoint, req: req}, nil
}

func benchChannelID(i int) string {
	return fmt.Sprintf("%08x-0000-4000-8000-%012x", i, time.Now().UnixNano()&0xffffffffffff)
}

// benchThroughput measures durable end-to-end throughput: app servers POST
// (201 only after fsync), the relay delivers over WebSocket, devices ack.
func benchThroughput(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pushrelay bench throughput", flag.ContinueOnError)
	fs.SetOutput(stderr)
	devices := fs.Int("devices", 200, "connected devices (one channel each)")
	senders := fs.Int("senders", 128, "concurrent app-server connections posting")
	total := fs.Int("messages", 200000, "messages to send")
	rate := fs.Int("rate", 0, "messages per second to offer (0: as fast as the relay takes them)")
	limit := fs.Duration("max-time", 2*time.Minute, "stop after this long whatever was sent")
	payload := fs.Int("payload", 128, "plaintext bytes per message (encrypted once per device, aes128gcm)")
	cpuProfile := fs.String("cpu-profile", "", "save a 5s CPU profile of the relay under load to this file")
	allocProfile := fs.String("alloc-profile", "", "save the relay's allocation profile (pprof allocs) at the end to this file")
	loadThreads := fs.Int("load-threads", 1, "epoll loops (OS threads) the load generator shares the senders, devices and messages over")
	loadProfile := fs.String("load-cpu-profile", "", "save a 5s CPU profile of the load generator (this process), taken with --cpu-profile's, to this file")
	trace := fs.String("trace", "", "save a 2s execution trace of the relay under load (go tool trace; where a message's latency goes) to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, stop, err := benchRelay(ctx)
	if err != nil {
		return err
	}
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *limit)
	defer cancel()

	devs := make([]*benchDev, *devices)
	for i := range devs {
		d, err := newBenchDev(ctx, c, i, *payload)
		if err != nil {
			return err
		}
		defer d.cl.Abort()
		devs[i] = d
	}
	fmt.Fprintf(stderr, "  %d devices connected; sending %d messages with %d senders\n", *devices, *total, *senders)

	// Epoll loops drive the app servers' connections and take over the
	// devices' (benchloop_linux.go), one by default.
	gen, err := newLoadGroup(devs[0].endpoint, devs, *senders, int64(*total), *rate, *loadThreads)
	if err != nil {
		return err
	}
	relayCPU0, _ := procCPU(c.Cmd.Process.Pid)
	io0, _ := procIO(c.Cmd.Process.Pid)
	disk0, diskName, diskErr := diskWritten(os.TempDir()) // the data dir's device
	loadCPU0 := selfCPU()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- gen.run(ctx) }()
	if *cpuProfile != "" {
		go func() {
			time.Sleep(time.Second)
			if err := c.saveProfile("profile?seconds=5", *cpuProfile); err != nil {
				fmt.Fprintf(stderr, "cpu profile: %v\n", err)
			}
		}()
	}
	if *trace != "" {
		go func() {
			time.Sleep(time.Second)
			if err := c.saveProfile("trace?seconds=2", *trace); err != nil {
				fmt.Fprintf(stderr, "trace: %v\n", err)
			}
		}()
	}
	if *loadProfile != "" {
		go func() {
			time.Sleep(time.Second)
			if err := profileSelf(*loadProfile, 5*time.Second); err != nil {
				fmt.Fprintf(stderr, "load cpu profile: %v\n", err)
			}
		}()
	}
	progress := time.NewTicker(2 * time.Second)
	var runErr error
loop:
	for {
		select {
		case runErr = <-done:
			break loop
		case <-progress.C:
			el := time.Since(start).Seconds()
			fmt.Fprintf(stderr, "  %.0fs: %d posted (%.0f/s), %d acked\n", el, gen.sent(), float64(gen.sent())/el, gen.acked())
		}
	}
	elapsed := time.Since(start)
	relayCPU1, cpuErr := procCPU(c.Cmd.Process.Pid)
	io1, ioErr := procIO(c.Cmd.Process.Pid)
	disk1, _, diskErr1 := diskWritten(os.TempDir())
	loadCPU := selfCPU() - loadCPU0
	progress.Stop()
	if runErr != nil && !errors.Is(runErr, context.DeadlineExceeded) {
		return runErr
	}
	postDone := gen.postDone()
	if postDone == 0 {
		postDone = elapsed // not all answered in time
	}
	sent, failed, acked := gen.sent(), gen.failed(), gen.acked()
	if *allocProfile != "" {
		if err := c.saveProfile("allocs", *allocProfile); err != nil {
			fmt.Fprintf(stderr, "alloc profile: %v\n", err)
		}
	}
	cancel()

	all := gen.postLatencies()
	slices.Sort(all)
	pct := func(p float64) time.Duration { return quantile(all, p) }
	toDev, early, lostPosts, lostNotes := gen.deviceLatencies()
	slices.Sort(toDev)
	fmt.Fprintf(stdout, "machine: %d CPUs, %s/%s; relay and load generator share it\n", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(stdout, "devices %d, senders %d, offered rate %s, payload %d B, load generator loops %d\n", *devices, *senders, rateString(*rate), *payload, len(gen.loops))
	fmt.Fprintf(stdout, "posted (201) %d, failed %d, acked by devices %d\n", sent, failed, acked)
	fmt.Fprintf(stdout, "post throughput: %.0f msg/s over %s\n", float64(sent)/postDone.Seconds(), postDone.Truncate(time.Millisecond))
	fmt.Fprintf(stdout, "end-to-end (post → deliver → ack): %.0f msg/s over %s\n", float64(acked)/elapsed.Seconds(), elapsed.Truncate(time.Millisecond))
	fmt.Fprintf(stdout, "POST latency: p50 %s  p90 %s  p99 %s  max %s\n", pct(0.5), pct(0.9), pct(0.99), pct(1))
	// Each notification matched to its POST by message id (deliveries),
	// timed from the POST's write to the notification's read.
	fmt.Fprintf(stdout, "post → device latency: p50 %s  p90 %s  p99 %s  max %s\n",
		quantile(toDev, 0.5), quantile(toDev, 0.9), quantile(toDev, 0.99), quantile(toDev, 1))
	fmt.Fprintf(stdout, "post → device matched by message id: %d of %d posted (%d notifications read before their 201); unmatched: %d posts without a notification, %d notifications without a post\n",
		len(toDev), sent, early, lostPosts, lostNotes)
	if n := acked; n > 0 && cpuErr == nil {
		// CPU per message varies less than throughput on a shared machine.
		relayCPU := relayCPU1 - relayCPU0
		fmt.Fprintf(stdout, "CPU per message: relay %.1f µs (%.0f%% of a core), load generator %.1f µs (%.0f%%)\n",
			float64(relayCPU.Microseconds())/float64(n), 100*relayCPU.Seconds()/elapsed.Seconds(),
			float64(loadCPU.Microseconds())/float64(n), 100*loadCPU.Seconds()/elapsed.Seconds())
	}
	if n := acked; n > 0 && ioErr == nil && io0 != nil {
		// Flash wear (issue #10): what the relay wrote to the block
		// layer (its store) per message, the acks' writes included.
		fmt.Fprintf(stdout, "relay write_bytes per message: %.0f B\n", float64(io1["write_bytes"]-io0["write_bytes"])/float64(n))
	}
	if n := acked; n > 0 && diskErr == nil && diskErr1 == nil {
		// The same with the filesystem's own writes (its journal),
		// from the device's counters: every writer to it counts.
		fmt.Fprintf(stdout, "written to the data dir's disk (%s, all writers) per message: %.0f B\n", diskName, float64(disk1-disk0)/float64(n))
	}
	// The relay deletes what devices acked: an ack it refused would leave
	// its message behind.
	left := -1.0
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if v, ok := c.metric("pushrelay_store_messages_waiting"); ok {
			if left = v; left == 0 {
				break
			}
		}
	}
	fmt.Fprintf(stdout, "left in the relay's store after the acks: %.0f messages\n", left)
	if wals, ok := c.metric("pushrelay_store_wal_appends_total"); ok && wals > 0 {
		cps, _ := c.metric("pushrelay_store_checkpoints_total")
		syncs, _ := c.metric("pushrelay_store_wal_fsync_seconds_count")
		syncTime, _ := c.metric("pushrelay_store_wal_fsync_seconds_sum")
		fmt.Fprintf(stdout, "store: %.0f write-ahead log appends (%.1f messages each), %.0f checkpoints; an append's fdatasync took %.2f ms on average\n", wals, float64(acked)/wals, cps, 1000*syncTime/max(syncs, 1))
	}
	switch {
	case failed > 0:
		return fmt.Errorf("%d posts failed", failed)
	case acked < sent:
		return fmt.Errorf("%d of %d notifications acked in time", acked, sent)
	case left != 0:
		return fmt.Errorf("%.0f acked messages still in the relay's store", left)
	case lostPosts > 0 || lostNotes > 0:
		return fmt.Errorf("%d posts and %d notifications not matched by message id", lostPosts, lostNotes)
	}
	return nil
}

// profileSelf writes a CPU profile of this process over d to path.
func profileSelf(path string, d time.Duration) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return err
	}
	time.Sleep(d)
	pprof.StopCPUProfile()
	return f.Close()
}

func rateString(r int) string {
	if r == 0 {
		return "unlimited"
	}
	return strconv.Itoa(r) + "/s"
}

// benchStartup fills a store with waiting messages, then times the relay
// from exec to /readyz 200 and reads its idle RSS.
func benchStartup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pushrelay bench startup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	messages := fs.Int("messages", 1000000, "waiting messages to fill the store with")
	perDevice := fs.Int("per-device", 1000, "messages per device")
	keep := fs.String("data-dir", "", "use (and keep) this data dir; an existing fill is reused")
	runs := fs.Int("runs", 5, "starts to time")
	unclean := fs.Bool("unclean", false, "end each run with SIGKILL, so that every start verifies the store")
	walBytes := fs.Int("wal-bytes", 0, "start each run from the state a SIGKILL leaves with this many bytes of write-ahead log records not yet checkpointed (issue #10: 4 MiB, the checkpoint size, is the most); implies an unclean start")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir, cleanup, err := benchDir(*keep)
	if err != nil {
		return err
	}
	defer cleanup()
	if err := fillStore(ctx, filepath.Join(dir, "pushrelay.db"), *messages, *perDevice, stderr); err != nil {
		return err
	}
	var crashed string
	if *walBytes > 0 {
		if crashed, err = walCrashState(ctx, dir, *walBytes, *perDevice, stderr); err != nil {
			return err
		}
		defer os.RemoveAll(crashed)
	}
	var times []time.Duration
	var rss []int64
	for r := range *runs {
		if crashed != "" {
			if err := copyStoreFiles(crashed, dir); err != nil {
				return err
			}
		}
		t0 := time.Now()
		c, err := startSelf(ctx, dir, "--max-messages-per-uaid", strconv.Itoa(*perDevice))
		if err != nil {
			return err
		}
		ready := time.Since(t0)
		time.Sleep(time.Second)
		m, _ := c.rss(false)
		if *unclean {
			c.Kill()
		} else {
			c.Stop()
		}
		times = append(times, ready)
		rss = append(rss, m)
		fmt.Fprintf(stderr, "  run %d: ready in %s, idle RSS %s\n", r+1, ready.Truncate(time.Microsecond), mib(m))
	}
	slices.Sort(times)
	slices.Sort(rss)
	fmt.Fprintf(stdout, "store: %d waiting messages (%d per device), %s stops\n", *messages, *perDevice, map[bool]string{false: "clean", true: "unclean (SIGKILL)"}[*unclean])
	if *walBytes > 0 {
		fmt.Fprintf(stdout, "each start from a SIGKILL's state with %d bytes of write-ahead log to replay\n", *walBytes)
	}
	fmt.Fprintf(stdout, "start to ready (exec → /readyz 200), median of %d: %s (min %s, max %s)\n", *runs, times[len(times)/2].Truncate(time.Millisecond), times[0].Truncate(time.Millisecond), times[len(times)-1].Truncate(time.Millisecond))
	fmt.Fprintf(stdout, "idle RSS 1s after ready, median: %s\n", mib(rss[len(rss)/2]))
	return nil
}

// walCrashState appends to the store in dir, with no checkpoint, until its
// write-ahead log holds walBytes, and copies the file and the log (what a
// SIGKILL would leave) to a new directory it returns.
func walCrashState(ctx context.Context, dir string, walBytes, perDevice int, stderr io.Writer) (string, error) {
	path := filepath.Join(dir, "pushrelay.db")
	st, err := store.Open(store.Options{Path: path, MaxMessagesPerUAID: perDevice, CheckpointInterval: time.Hour, CheckpointBytes: 1 << 30})
	if err != nil {
		return "", err
	}
	defer st.Close()
	out, err := os.MkdirTemp("", "pushrelay-bench-crash-")
	if err != nil {
		return "", err
	}
	now := time.Now()
	var u pushtypes.UAID
	copy(u[:], fmt.Sprintf("dev%013d", 0))
	var ch pushtypes.ChannelID
	copy(ch[:], "channel-00000001")
	body := make([]byte, 200)
	n := 0
	for dirSize(path+".wal") < int64(walBytes) && ctx.Err() == nil {
		ms := make([]store.Message, 64)
		for i := range ms {
			ms[i] = store.Message{UAID: u, Channel: ch, Received: now, TTL: 30 * 24 * time.Hour,
				Expiry: now.Add(30 * 24 * time.Hour), Encoding: "aes128gcm", Data: body}
		}
		if _, err := st.AppendBatch(ctx, ms); err != nil {
			os.RemoveAll(out)
			return "", err
		}
		n += len(ms)
	}
	if err := copyStoreFiles(dir, out); err != nil {
		os.RemoveAll(out)
		return "", err
	}
	fmt.Fprintf(stderr, "  %d messages (%d bytes) in the write-ahead log, not checkpointed\n", n, dirSize(path+".wal"))
	return out, nil
}

// dirSize is the size of the files in dir.
func dirSize(dir string) int64 {
	es, _ := os.ReadDir(dir)
	var n int64
	for _, e := range es {
		if fi, err := e.Info(); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// copyStoreFiles copies pushrelay.db and its write-ahead log from one
// data dir to another (the keys too), replacing what was there.
func copyStoreFiles(from, to string) error {
	if err := os.RemoveAll(filepath.Join(to, "pushrelay.db.wal")); err != nil {
		return err
	}
	var walk func(rel string) error
	walk = func(rel string) error {
		es, err := os.ReadDir(filepath.Join(from, rel))
		if err != nil {
			return err
		}
		for _, e := range es {
			name := filepath.Join(rel, e.Name())
			if e.IsDir() {
				if name != "pushrelay.db.wal" {
					continue
				}
				if err := os.MkdirAll(filepath.Join(to, name), 0o700); err != nil {
					return err
				}
				if err := walk(name); err != nil {
					return err
				}
				continue
			}
			if err := copyFile(filepath.Join(from, name), filepath.Join(to, name)); err != nil {
				return err
			}
		}
		return nil
	}
	return walk("")
}

func copyFile(from, to string) error {
	r, err := os.Open(from)
	if err != nil {
		return err
	}
	defer r.Close()
	w, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, r); err != nil {
		w.Close()
		return err
	}
	return w.Close()
}

// fillStore writes messages into a fresh store file, unless it already
// holds at least that many.
func fillStore(ctx context.Context, path string, messages, perDevice int, stderr io.Writer) error {
	st, err := store.Open(store.Options{Path: path, MaxMessagesPerUAID: perDevice})
	if err != nil {
		return err
	}
	defer st.Close()
	if s, err := st.Stats(); err == nil && s.Devices+s.Channels == 0 {
		// The relay starts only on a store with its keys.
		if _, _, err := node.LoadKeys(filepath.Dir(path), 0, slog.New(slog.DiscardHandler)); err != nil {
			return err
		}
	}
	if s, err := st.Stats(); err == nil && s.Waiting >= int64(messages) {
		fmt.Fprintf(stderr, "  store already holds %d messages\n", s.Waiting)
		return nil
	}
	devicesN := (messages + perDevice - 1) / perDevice
	fmt.Fprintf(stderr, "  filling %d messages for %d devices...\n", messages, devicesN)
	body := make([]byte, 200)
	now := time.Now()
	dev := func(i int) (pushtypes.UAID, pushtypes.ChannelID) {
		var u pushtypes.UAID
		copy(u[:], fmt.Sprintf("dev%013d", i))
		var ch pushtypes.ChannelID
		copy(ch[:], "channel-00000001")
		return u, ch
	}
	var next, done atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 128)
	parallel := func(n int, f func(i int) error) {
		next.Store(0)
		for range 64 {
			wg.Go(func() {
				for ctx.Err() == nil {
					i := int(next.Add(1)) - 1
					if i >= n {
						return
					}
					if err := f(i); err != nil {
						errc <- err
						return
					}
				}
			})
		}
		wg.Wait()
	}
	parallel(devicesN, func(i int) error {
		u, ch := dev(i)
		return st.Register(ctx, store.Channel{UAID: u, ID: ch, Created: now})
	})
	start := time.Now()
	parallel(messages, func(i int) error {
		u, ch := dev(i / perDevice)
		_, err := st.Append(ctx, store.Message{UAID: u, Channel: ch, Received: now, TTL: 30 * 24 * time.Hour,
			Expiry: now.Add(30 * 24 * time.Hour), Encoding: "aes128gcm", Data: body})
		if v := done.Add(1); v%100000 == 0 {
			fmt.Fprintf(stderr, "  %d written (%.0f/s)\n", v, float64(v)/time.Since(start).Seconds())
		}
		return err
	})
	close(errc)
	return <-errc
}

// benchDrain measures a reconnect after an absence: devices go away,
// messages are stored for them, the devices come back, say hello and
// receive and ack everything that waited (as a woken device does).
func benchDrain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pushrelay bench drain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	devices := fs.Int("devices", 100, "devices")
	perDevice := fs.Int("messages", 500, "messages waiting per device")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, stop, err := benchRelay(ctx, "--max-messages-per-uaid", strconv.Itoa(*perDevice))
	if err != nil {
		return err
	}
	defer stop()
	devs := make([]*benchDev, *devices)
	for i := range devs {
		d, err := newBenchDev(ctx, c, i, 128)
		if err != nil {
			return err
		}
		d.cl.Close() // the device goes away; messages wait for it
		devs[i] = d
	}
	total := *devices * *perDevice
	fmt.Fprintf(stderr, "  storing %d messages for %d absent devices\n", total, *devices)
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 32)
	for range 32 {
		wg.Go(func() {
			p, err := newRawPoster(c.Endpoint)
			if err != nil {
				errc <- err
				return
			}
			defer p.close()
			for {
				i := int(next.Add(1)) - 1
				if i >= total {
					return
				}
				if code, err := p.do(devs[i%len(devs)].req); err != nil || code != 201 {
					errc <- fmt.Errorf("post: %d %v", code, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return err
	}
	fmt.Fprintf(stderr, "  %d devices reconnect\n", *devices)
	var acked atomic.Int64
	start := time.Now()
	for _, d := range devs {
		wg.Go(func() {
			cl, err := pushclient.Dial(ctx, c.Device)
			if err != nil {
				return
			}
			defer cl.Abort()
			if _, err := cl.Hello(d.cl.UAID, pushclient.HelloOptions{}); err != nil {
				return
			}
			for n := 0; n < *perDevice; n++ {
				f, err := cl.Next(time.Now().Add(30 * time.Second))
				if err != nil {
					return
				}
				cl.Ack(f)
				acked.Add(1)
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	fmt.Fprintf(stdout, "%d devices x %d waiting messages: all %d received and acked in %s (%.0f msg/s)\n",
		*devices, *perDevice, acked.Load(), el.Truncate(time.Millisecond), float64(acked.Load())/el.Seconds())
	if acked.Load() != int64(total) {
		return fmt.Errorf("only %d of %d messages arrived", acked.Load(), total)
	}
	return nil
}
