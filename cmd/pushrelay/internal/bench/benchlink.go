package bench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/pushclient"
)

// benchLink measures the relay link (#8) with two built binaries on
// loopback: a parent (relay_listen) and a child (upstream quic://parent),
// both this binary, both fsyncing every commit before it is acked (their
// defaults), keys made by `pushrelay keys`. Phases (--phases, in order):
//
//   - memory: the parent's RSS with no child, then with the child
//     connected and no UAIDs (the cost of one connected child); after the
//     registers, the parent standalone on its store (no relay_listen)
//     against the parent with the child connected and settled, over the
//     UAIDs the child serves: the link's memory per UAID beyond the store.
//   - throughput: devices connected to the child, app servers posting to
//     the parent's endpoints; messages/s from the first post to the last
//     message a device read (each acked).
//   - notice: the parent SIGKILLed and restarted on the same data dir and
//     port (so with its stateless reset key and its children's
//     addresses, to which it sends the restart hint); the time from the
//     new parent's process start to the child noticing, while devices
//     register through the child (traffic up the link) and while the
//     link is idle.
//   - drain: the child stopped, --backlog messages posted to the parent,
//     the child started after --outage; the time until the parent has
//     had every one acked (stored, fsynced, at the child).
func benchLink(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pushrelay bench link", flag.ContinueOnError)
	fs.SetOutput(stderr)
	phases := fs.String("phases", "memory,throughput,notice,drain", "phases to run, in this order")
	uaids := fs.Int("uaids", 100000, "UAIDs registered through the child (one device, one channel each)")
	devices := fs.Int("devices", 1000, "devices connected to the child for the throughput and drain phases (the first of --uaids)")
	messages := fs.Int("messages", 50000, "messages posted per throughput run")
	senders := fs.Int("senders", 32, "app-server goroutines posting to the parent")
	backlog := fs.Int("backlog", 100000, "messages waiting at the parent when the child comes back (drain phase)")
	outage := fs.Duration("outage", 5*time.Minute, "how long the child is away in the drain phase (posting included)")
	runs := fs.Int("runs", 3, "runs of each measurement (the median is reported)")
	drainRuns := fs.Int("drain-runs", 1, "runs of the drain phase")
	children := fs.Int("children", 5, "children connected at once in the memory phase (at least 2: the first alone, then all)")
	workers := fs.Int("workers", 32, "registers through the child in parallel")
	hold := fs.Duration("hold", 3*time.Second, "settling time before a memory reading")
	drainProfile := fs.String("drain-profile", "", "save both relays' CPU profiles (pprof) over the first 3 s of the first drain to this path's .parent and .child files")
	logLevel := fs.String("log-level", "warn", "both relays' log_level (their logs go to stderr)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *devices > *uaids {
		return fmt.Errorf("--devices %d: at most --uaids (%d)", *devices, *uaids)
	}
	want := map[string]bool{}
	for _, p := range strings.Split(*phases, ",") {
		want[strings.TrimSpace(p)] = true
	}
	dir, cleanup, err := benchDir("")
	if err != nil {
		return err
	}
	defer cleanup()
	names := []string{"parent", "child"}
	for i := 2; i <= max(*children, 2); i++ {
		names = append(names, fmt.Sprintf("child-%d", i))
	}
	keys, err := linkKeys(filepath.Join(dir, "keys"), names...)
	if err != nil {
		return err
	}
	pdata, cdata := filepath.Join(dir, "parent"), filepath.Join(dir, "child")
	quiet := []string{"--log-level", *logLevel}
	parentArgs := func(listen string) []string {
		return append(append([]string{"--relay-listen", listen}, keys["parent"]...), quiet...)
	}
	parent, err := startSelf(ctx, pdata, parentArgs("127.0.0.1:0")...)
	if err != nil {
		return err
	}
	defer func() { parent.Stop() }()
	// A restarted parent listens where its endpoints say it does.
	standalone := append(slices.Clone(quiet), "--endpoint-listen", strings.TrimPrefix(parent.Endpoint, "http://"))
	parentArgs = func(listen string) []string {
		return append(append([]string{"--relay-listen", listen}, keys["parent"]...), standalone...)
	}
	addr, err := linkListen(parent)
	if err != nil {
		return err
	}
	childArgs := append(append([]string{"--upstream", "quic://" + addr, "--upstream-backoff", "50ms"}, keys["child"]...), quiet...)
	startLinked := func() (*child, error) {
		c, err := startSelf(ctx, cdata, childArgs...)
		if err != nil {
			return nil, err
		}
		if err := waitUntil(ctx, time.Minute, func() bool { v, _ := c.metric("pushrelay_link_up_connected"); return v == 1 }); err != nil {
			c.Stop()
			return nil, fmt.Errorf("the child did not connect: %w", err)
		}
		return c, nil
	}
	restartParent := func(args ...string) error {
		parent.Stop()
		parent, err = startSelf(ctx, pdata, args...)
		return err
	}
	fmt.Fprintf(stdout, "parent %s (link %s), child on %s; GOMAXPROCS of each relay: %d CPUs\n", parent.Endpoint, addr, cdata, runtime.NumCPU())

	var perChild float64
	if want["memory"] {
		var per []float64
		for run := range *runs {
			if err := restartParent(parentArgs(addr)...); err != nil {
				return err
			}
			time.Sleep(*hold)
			a0, n0, err := gcRSS(parent)
			if err != nil {
				return err
			}
			var cs []*child
			stopAll := func() {
				for _, c := range cs {
					c.Stop()
				}
			}
			// The first child's connect pays one-time costs (code paged
			// in, pools); what the others add is one more child's cost.
			var n1 int64
			for i := range max(*children, 2) {
				name, data := "child", cdata
				if i > 0 {
					name, data = fmt.Sprintf("child-%d", i+1), filepath.Join(dir, fmt.Sprintf("child-%d", i+1))
				}
				args := append(append([]string{"--upstream", "quic://" + addr, "--upstream-backoff", "50ms"}, keys[name]...), quiet...)
				c, err := startSelf(ctx, data, args...)
				if err != nil {
					stopAll()
					return err
				}
				cs = append(cs, c)
				if i > 0 {
					continue
				}
				if err := waitUntil(ctx, time.Minute, func() bool { v, _ := parent.metric("pushrelay_link_children_connected"); return v == 1 }); err != nil {
					stopAll()
					return fmt.Errorf("the child did not connect: %w", err)
				}
				time.Sleep(*hold)
				if _, n1, err = gcRSS(parent); err != nil {
					stopAll()
					return err
				}
			}
			if err := waitUntil(ctx, time.Minute, func() bool {
				v, _ := parent.metric("pushrelay_link_children_connected")
				return int(v) == len(cs)
			}); err != nil {
				stopAll()
				return fmt.Errorf("the children did not connect: %w", err)
			}
			time.Sleep(*hold)
			_, nAll, err := gcRSS(parent)
			stopAll()
			if err != nil {
				return err
			}
			p := float64(nAll-n1) / float64(len(cs)-1)
			per = append(per, p)
			fmt.Fprintf(stdout, "memory run %d: parent %s (anon %s) with no child, anon %s with one child connected (%+.0f KiB), %s with %d: %+.0f KiB per child after the first\n",
				run+1, mib(a0), mib(n0), mib(n1), float64(n1-n0)/1024, mib(nAll), len(cs), p/1024)
		}
		perChild = median(per)
		fmt.Fprintf(stdout, "parent's memory per connected child, no UAIDs, %d children (median of %d): %.0f KiB of anon RSS\n", *children, *runs, perChild/1024)
	}

	c, err := startLinked()
	if err != nil {
		return err
	}
	defer func() { c.Stop() }()
	ids := make([]string, *uaids)
	endpoints := make([]string, *uaids)
	start := time.Now()
	err = openAll(ctx, *uaids, *workers, 30*time.Minute, stderr, func(ctx context.Context, i int) error {
		cl, err := pushclient.Dial(ctx, c.Device)
		if err != nil {
			return err
		}
		defer cl.Abort()
		h, err := cl.Hello("", pushclient.HelloOptions{})
		if err != nil {
			return err
		}
		r, err := cl.Register(benchChannelID(i), "")
		if err != nil {
			return err
		}
		if r.Status != 200 || !strings.HasPrefix(r.PushEndpoint, parent.Endpoint+"/") {
			return fmt.Errorf("register through the child: status %d, endpoint %q", r.Status, r.PushEndpoint)
		}
		ids[i], endpoints[i] = h.UAID, r.PushEndpoint
		return nil
	})
	if err != nil {
		return err
	}
	took := time.Since(start)
	fmt.Fprintf(stdout, "%d devices registered through the child (each register answered by the parent) in %s: %.0f/s\n",
		*uaids, took.Round(time.Millisecond), float64(*uaids)/took.Seconds())

	if want["memory"] {
		var per, perAll []float64
		for run := range *runs {
			if err := restartParent(standalone...); err != nil {
				return err
			}
			time.Sleep(*hold)
			a0, n0, err := gcRSS(parent)
			if err != nil {
				return err
			}
			base := parent.runtimeMetrics()
			if err := restartParent(parentArgs(addr)...); err != nil {
				return err
			}
			if err := waitUntil(ctx, 2*time.Minute, func() bool {
				v, _ := parent.metric("pushrelay_link_children_connected")
				return v == 1
			}); err != nil {
				return fmt.Errorf("the child did not come back: %w", err)
			}
			time.Sleep(*hold)
			a1, n1, err := gcRSS(parent)
			if err != nil {
				return err
			}
			with := parent.runtimeMetrics()
			nu, _ := parent.metric("pushrelay_link_children_uaids")
			p, pa := (float64(n1-n0)-perChild)/float64(*uaids), float64(a1-a0)/float64(*uaids)
			per, perAll = append(per, p), append(perAll, pa)
			fmt.Fprintf(stdout, "memory run %d: parent standalone on its store %s (anon %s), with the child connected serving %.0f UAIDs %s (anon %s): %.1f B per UAID (anon, the connected child's %.0f KiB taken off: %.1f B); Go heap in use %+.1f B per UAID\n",
				run+1, mib(a0), mib(n0), nu, mib(a1), mib(n1), pa, perChild/1024, p,
				(with["go_memstats_heap_inuse_bytes"]-base["go_memstats_heap_inuse_bytes"])/float64(*uaids))
		}
		fmt.Fprintf(stdout, "parent's memory per UAID the child serves, %d UAIDs, beyond the store and the connected child (median of %d): %.1f B of anon RSS (all RSS, child included: %.1f B)\n",
			*uaids, *runs, median(per), median(perAll))
	}

	devIDs, devEPs := ids[:*devices], endpoints[:*devices]
	if want["throughput"] {
		var rates []float64
		for range *runs {
			r, err := linkMessages(ctx, parent, c, devIDs, devEPs, *messages, *senders, stdout)
			if err != nil {
				return err
			}
			rates = append(rates, r)
		}
		fmt.Fprintf(stdout, "messages over one link, HTTP posts to the parent to %d devices on the child (median of %d): %.0f msg/s\n", *devices, *runs, median(rates))
	}

	if want["notice"] {
		for _, flowing := range []bool{true, false} {
			var took []float64
			for range *runs {
				d, err := restartNotice(ctx, &parent, c, pdata, parentArgs(addr), flowing, stdout)
				if err != nil {
					return err
				}
				took = append(took, d.Seconds())
			}
			what := "idle link"
			if flowing {
				what = "registers flowing up the link"
			}
			fmt.Fprintf(stdout, "restarted parent noticed by the child, %s (median of %d): %.3f s after the new parent's process started\n", what, *runs, median(took))
		}
	}

	if want["drain"] {
		var rates []float64
		for range *drainRuns {
			c.Stop()
			down := time.Now()
			posted, err := post(ctx, devEPs, *backlog, *senders)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "drain: %d messages posted to the parent in %s (%.0f/s) with the child away\n",
				*backlog, posted.Round(time.Millisecond), float64(*backlog)/posted.Seconds())
			if wait := *outage - time.Since(down); wait > 0 {
				select {
				case <-time.After(wait):
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			acked0, _ := parent.metric("pushrelay_link_children_messages_acked_total")
			frames0, _ := parent.metric("pushrelay_link_children_updates_sent_total")
			pcommits0, _ := parent.metric("pushrelay_store_commits_total")
			cpu0, _ := procCPU(parent.Cmd.Process.Pid)
			wait0 := procRunWait(parent.Cmd.Process.Pid)
			t0 := time.Now()
			if c, err = startSelf(ctx, cdata, childArgs...); err != nil {
				return err
			}
			ready := time.Since(t0)
			ccpu0, _ := procCPU(c.Cmd.Process.Pid)
			cwait0 := procRunWait(c.Cmd.Process.Pid)
			_, canon0, _ := procRSSAnon(c.Cmd.Process.Pid)
			var profiles sync.WaitGroup
			if *drainProfile != "" {
				base := *drainProfile
				for who, r := range map[string]*child{"parent": parent, "child": c} {
					profiles.Go(func() {
						if err := r.saveProfile("profile?seconds=3", base+"."+who); err != nil {
							fmt.Fprintf(stderr, "%s's profile: %v\n", who, err)
						}
					})
				}
				*drainProfile = ""
			}
			if err := waitUntil(ctx, 10*time.Minute, func() bool {
				v, _ := parent.metric("pushrelay_link_children_messages_acked_total")
				return v-acked0 >= float64(*backlog)
			}); err != nil {
				v, _ := parent.metric("pushrelay_link_children_messages_acked_total")
				return fmt.Errorf("%.0f of %d acked: %w", v-acked0, *backlog, err)
			}
			d := time.Since(t0)
			profiles.Wait()
			cpu1, _ := procCPU(parent.Cmd.Process.Pid)
			ccpu1, _ := procCPU(c.Cmd.Process.Pid)
			wait1, cwait1 := procRunWait(parent.Cmd.Process.Pid), procRunWait(c.Cmd.Process.Pid)
			// What the drain left the child holding (the credit bounds
			// what it buffers; the runtime keeps freed heap a while).
			_, canon1, _ := procRSSAnon(c.Cmd.Process.Pid)
			stored, _ := c.metric(`pushrelay_link_up_messages_total{result="stored"}`)
			commits, _ := c.metric("pushrelay_store_commits_total")
			// The child's committer: its commits' time (taking the batch
			// to the fsync's end) over the drain's is how busy the one
			// goroutine every ingest waits for was.
			commitSecs, _ := c.metric("pushrelay_store_commit_seconds_sum")
			frames1, _ := parent.metric("pushrelay_link_children_updates_sent_total")
			pcommits1, _ := parent.metric("pushrelay_store_commits_total")
			rate := float64(*backlog) / (d - ready).Seconds()
			rates = append(rates, rate)
			fmt.Fprintf(stdout, "drain after a %s outage: %d messages acked by the child %s after its start (%s of it the child's own start): %.0f msg/s over the link; child stored %.0f in %.0f commits; CPU µs/message parent %.1f, child %.1f\n",
				outage.String(), *backlog, d.Round(time.Millisecond), ready.Round(time.Millisecond), rate, stored, commits,
				float64((cpu1-cpu0).Microseconds())/float64(*backlog), float64((ccpu1-ccpu0).Microseconds())/float64(*backlog))
			fmt.Fprintf(stdout, "  waiting for a CPU while runnable (all threads): parent %.2f s, child %.2f s; CPU used: parent %.2f s, child %.2f s\n",
				(wait1 - wait0).Seconds(), (cwait1 - cwait0).Seconds(), (cpu1 - cpu0).Seconds(), (ccpu1 - ccpu0).Seconds())
			fmt.Fprintf(stdout, "  the child's anonymous RSS: %.1f MiB when it was ready, %.1f MiB after the drain\n",
				float64(canon0)/(1<<20), float64(canon1)/(1<<20))
			fmt.Fprintf(stdout, "  %.0f UPDATEs (%.0f messages each); the child's commits took %.1f ms each, %.0f%% of the drain; the parent committed %.0f times\n",
				frames1-frames0, float64(*backlog)/max(frames1-frames0, 1), 1000*commitSecs/max(commits, 1), 100*commitSecs/d.Seconds(), pcommits1-pcommits0)
		}
		fmt.Fprintf(stdout, "backlog drain over one link (median of %d): %.0f msg/s\n", *drainRuns, median(rates))
	}
	return nil
}

// linkKeys makes a site CA and the named relays' keys with this binary's
// `pushrelay keys`, and returns the flags each relay runs with.
func linkKeys(dir string, names ...string) (map[string][]string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	keys := func(args ...string) error {
		out, err := exec.Command(self, append([]string{"keys"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("pushrelay keys %v: %w\n%s", args, err, out)
		}
		return nil
	}
	ca := filepath.Join(dir, "ca")
	if err := keys("ca", "--dir", ca); err != nil {
		return nil, err
	}
	flags := map[string][]string{}
	for _, n := range names {
		out := filepath.Join(dir, n)
		if err := keys("issue", "--ca", ca, "--name", n, "--out", out); err != nil {
			return nil, err
		}
		flags[n] = []string{"--link-cert", filepath.Join(out, n+".crt"), "--link-key", filepath.Join(out, n+".key"),
			"--link-ca", filepath.Join(ca, "ca.crt")}
	}
	return flags, nil
}

// linkListen is a parent's relay link address, from its /status.
func linkListen(c *child) (string, error) {
	resp, err := http.Get(c.Admin + "/status?format=json")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var st struct {
		Link struct {
			Listen string `json:"listen"`
		} `json:"link"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return "", fmt.Errorf("parent's /status: %w", err)
	}
	if st.Link.Listen == "" {
		return "", errors.New("no relay link address in the parent's /status")
	}
	return strings.TrimSuffix(st.Link.Listen, "/udp"), nil
}

// gcRSS is c's RSS and anonymous RSS after a garbage collection.
func gcRSS(c *child) (all, anon int64, err error) {
	if _, err := c.rss(true); err != nil {
		return 0, 0, err
	}
	return procRSSAnon(c.Cmd.Process.Pid)
}

// bodies makes one encrypted 64-byte body per endpoint.
func bodies(n int) ([][]byte, error) {
	out := make([][]byte, n)
	for i := range out {
		sub, err := ece.NewSubscription()
		if err != nil {
			return nil, err
		}
		if out[i], err = ece.Encrypt(make([]byte, 64), sub.PublicKey(), sub.Auth); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// post posts n messages round-robin to endpoints from senders
// goroutines, each on its own keep-alive connection (rawPoster, the
// bench's lean app server), and returns how long it took; any answer but
// 201 is an error.
func post(ctx context.Context, endpoints []string, n, senders int) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	bs, err := bodies(len(endpoints))
	if err != nil {
		return 0, err
	}
	reqs := make([][]byte, len(endpoints))
	for i, ep := range endpoints {
		if reqs[i], err = rawRequest(ep, bs[i], map[string]string{"TTL": "86400", "Content-Encoding": "aes128gcm"}); err != nil {
			return 0, err
		}
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, senders)
	start := time.Now()
	for range senders {
		rp, err := newRawPoster(endpoints[0])
		if err != nil {
			return 0, err
		}
		wg.Go(func() {
			defer rp.close()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				code, err := rp.do(reqs[i%len(reqs)])
				if err == nil && code != http.StatusCreated {
					err = fmt.Errorf("status %d", code)
				}
				if err != nil {
					errc <- fmt.Errorf("post: %w", err)
					cancel()
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// linkMessages connects the devices to the child, posts messages to their
// endpoints at the parent, and returns messages per second from the first
// post to the last notification the devices read (each acked).
func linkMessages(ctx context.Context, parent, c *child, uaids, endpoints []string, messages, senders int, stdout io.Writer) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	errc := make(chan error, len(uaids)+1)
	devs, err := startAckers(ctx, c.Device, uaids, messages, errc)
	if err != nil {
		return 0, err
	}
	defer devs.close()
	pcommits0, _ := parent.metric("pushrelay_store_commits_total")
	ccommits0, _ := c.metric("pushrelay_store_commits_total")
	frames0, _ := parent.metric("pushrelay_link_children_updates_sent_total")
	pcpu0, _ := procCPU(parent.Cmd.Process.Pid)
	ccpu0, _ := procCPU(c.Cmd.Process.Pid)
	start := time.Now()
	var posted time.Duration
	var perr error
	var posters sync.WaitGroup
	posters.Go(func() {
		posted, perr = post(ctx, endpoints, messages, senders)
		if perr != nil {
			errc <- perr
		}
	})
	select {
	case <-devs.done:
	case <-ctx.Done():
		return 0, fmt.Errorf("devices read %d of %d messages: %w", devs.got.Load(), messages, ctx.Err())
	case err := <-errc:
		cancel()
		return 0, err
	}
	took := time.Since(start)
	posters.Wait()
	pcpu1, _ := procCPU(parent.Cmd.Process.Pid)
	ccpu1, _ := procCPU(c.Cmd.Process.Pid)
	pcommits1, _ := parent.metric("pushrelay_store_commits_total")
	ccommits1, _ := c.metric("pushrelay_store_commits_total")
	frames1, _ := parent.metric("pushrelay_link_children_updates_sent_total")
	cancel()
	devs.close()
	fmt.Fprintf(stdout, "relayed %d messages (POST → parent store, fsync → UPDATE → child store, fsync → ACK; → %d devices, acked) in %s: %.0f msg/s (posting took %s); %.1f messages per UPDATE, parent %.0f commits, child %.0f commits; CPU µs/message parent %.1f, child %.1f\n",
		messages, len(uaids), took.Round(time.Millisecond), float64(messages)/took.Seconds(), posted.Round(time.Millisecond),
		float64(messages)/max(frames1-frames0, 1), pcommits1-pcommits0, ccommits1-ccommits0,
		float64((pcpu1-pcpu0).Microseconds())/float64(messages), float64((ccpu1-ccpu0).Microseconds())/float64(messages))
	return float64(messages) / took.Seconds(), nil
}

// restartNotice SIGKILLs the parent, starts it again on the same data
// dir and link port (its stateless reset key and its children's addresses
// kept there), and returns the time from the new parent's process start
// until the child noticed: its connected gauge fell, or, when the poll
// missed that, it had connected again (an upper bound). The poll runs
// from the kill on, since the child may notice before the new parent
// answers its readiness check. With flowing, devices register through the
// child all along, so the child keeps sending up the link.
func restartNotice(ctx context.Context, parent **child, c *child, pdata string, args []string, flowing bool, stdout io.Writer) (time.Duration, error) {
	fctx, stopFlow := context.WithCancel(ctx)
	var flow sync.WaitGroup
	var regs atomic.Int64
	if flowing {
		for w := range 4 {
			flow.Go(func() {
				for i := 0; fctx.Err() == nil && i < 100000; i++ {
					cl, err := pushclient.Dial(fctx, c.Device)
					if err != nil {
						time.Sleep(10 * time.Millisecond)
						continue
					}
					stop := context.AfterFunc(fctx, func() { cl.Abort() })
					if _, err := cl.Hello("", pushclient.HelloOptions{}); err == nil {
						if r, err := cl.Register(benchChannelID(1_000_000+w*100000+i), ""); err == nil && r.Status == 200 {
							regs.Add(1)
						}
					}
					stop()
					cl.Abort()
				}
			})
		}
		time.Sleep(time.Second)
	} else {
		time.Sleep(2 * time.Second)
	}
	defer func() { stopFlow(); flow.Wait() }()
	// Read here, not before the wait: the child counts its last
	// reconnect a moment after the parent sees it.
	ok0, _ := c.metric(`pushrelay_link_up_connects_total{result="ok"}`)
	old := *parent
	old.Kill()
	killed := time.Now()
	var noticed time.Time
	how := "link down"
	wctx, stopWatch := context.WithTimeout(ctx, 2*time.Minute)
	defer stopWatch()
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for wctx.Err() == nil {
			if v, ok := c.metric("pushrelay_link_up_connected"); ok && v == 0 {
				noticed = time.Now()
				return
			}
			if ok, _ := c.metric(`pushrelay_link_up_connects_total{result="ok"}`); ok > ok0 {
				noticed, how = time.Now(), "connected again"
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	started := time.Now()
	np, err := startSelf(ctx, pdata, args...)
	if err != nil {
		return 0, err
	}
	*parent = np
	ready := time.Now()
	select {
	case <-watched:
	case <-time.After(time.Minute):
		stopWatch()
		<-watched
	}
	if noticed.IsZero() {
		return 0, errors.New("the child did not notice the restarted parent within a minute")
	}
	if err := waitUntil(ctx, time.Minute, func() bool {
		v, _ := np.metric("pushrelay_link_children_connected")
		return v == 1
	}); err != nil {
		return 0, fmt.Errorf("the child did not reconnect: %w", err)
	}
	back := time.Since(started)
	d := noticed.Sub(started)
	fmt.Fprintf(stdout, "notice (flowing %v, %d registers through the child): new parent started %s after the kill, ready (admin answering) %s after its start; child saw %s %s after its start, linked again %s after it\n",
		flowing, regs.Load(), started.Sub(killed).Round(time.Millisecond), ready.Sub(started).Round(time.Millisecond), how,
		d.Round(time.Millisecond), back.Round(time.Millisecond))
	return d, nil
}

// procRunWait is how long pid's threads have waited for a CPU while
// runnable: the second field of each /proc/PID/task/TID/schedstat,
// summed (0 where the kernel has none). With the CPU time it tells a
// relay that waited for the disk or its peer from one that waited for
// the machine.
func procRunWait(pid int) time.Duration {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var sum int64
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) >= 2 {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			sum += n
		}
	}
	return time.Duration(sum)
}
