package bench

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushrelay/pushrelay/relay/pushclient"
)

// benchSite measures a site of three members (docs/cluster.md), all this
// binary on loopback with fixed ports, against one relay on the same
// machine in the same window (issue #9, point 6). Phases (--phases, in
// order):
//
//   - throughput: app servers post round-robin over the members (the
//     single relay: to it), devices spread over the members read and ack;
//     messages/s from the first post to the last message a device read,
//     runs alternating site and single relay. Then each member's
//     anonymous RSS and the bytes it wrote to disk per message
//     (/proc/PID/io write_bytes) against the single relay's.
//   - latency: every device has one message in flight at a time (posted
//     to the members in turn): post → device latency, site and single.
//   - failover: posts go on to every member while the leader is
//     SIGKILLed; the time until a survivor leads, until the first post
//     sent after the kill is answered 201 and until every sender has had
//     a 201 again; the killed member then restarts on its data dir.
func benchSite(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pushrelay bench site", flag.ContinueOnError)
	fs.SetOutput(stderr)
	phases := fs.String("phases", "throughput,latency,failover", "phases to run, in this order")
	devices := fs.Int("devices", 300, "devices (one channel each), spread over the members")
	messages := fs.Int("messages", 20000, "messages posted per throughput run")
	senders := fs.Int("senders", 128, "app-server connections posting")
	latencyMessages := fs.Int("latency-messages", 20, "messages per device in the latency phase (one in flight per device)")
	runs := fs.Int("runs", 3, "throughput and latency runs of each (site and single relay alternate; the median is reported)")
	failoverRuns := fs.Int("failover-runs", 3, "leader kills")
	single := fs.Bool("single", true, "measure one relay too, in the same window")
	logLevel := fs.String("log-level", "warn", "the relays' log_level (their logs go to stderr)")
	heapProfile := fs.String("heap-profile", "", "after the throughput runs, save each site member's heap profile (in use, after a GC) to this path's .m1, .m2, ... files")
	cpuLimit := fs.Float64("cpu-limit", 0, "cores each relay process may use (a cgroup of its own per process, CPU bandwidth over 100 ms periods; needs root): each member and the single relay get the CPU of a gateway of their own; 0: no cap")
	cpuProfile := fs.String("cpu-profile", "", "save 5 s CPU profiles of the leader and a follower during the first site throughput run to this path's .leader and .follower files")
	if err := fs.Parse(args); err != nil {
		return err
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
	load0 := loadAvg()

	site, err := startSite(ctx, dir, 3, *logLevel, *cpuLimit)
	if err != nil {
		return err
	}
	defer site.stop()
	if err := site.register(ctx, *devices); err != nil {
		return err
	}
	systems := []*benchSys{site}
	if *single {
		c, err := startSelf(ctx, filepath.Join(dir, "single"), "--log-level", *logLevel)
		if err != nil {
			return err
		}
		one := &benchSys{name: "single relay", procs: []*child{c}, cpuLimit: *cpuLimit}
		defer one.stop()
		if err := one.capCPU(c); err != nil {
			return err
		}
		if err := one.register(ctx, *devices); err != nil {
			return err
		}
		systems = append(systems, one)
	}
	fmt.Fprintf(stdout, "site of %d members and one relay, all this binary on one machine (%d CPUs) with the load generator; %d devices, %d senders; load average at start %s\n",
		len(site.procs), runtime.NumCPU(), *devices, *senders, load0)
	if *cpuLimit > 0 {
		fmt.Fprintf(stdout, "each relay process capped at %.2f cores (its own cgroup); the load generator is not\n", *cpuLimit)
	}

	if want["throughput"] {
		rates := map[*benchSys][]float64{}
		perMsg := map[*benchSys][][]float64{}
		for run := range *runs {
			for _, s := range systems {
				prof := ""
				if run == 0 && s == site {
					prof = *cpuProfile
				}
				r, wb, err := s.throughput(ctx, *messages, *senders, prof, stdout, stderr)
				if err != nil {
					return fmt.Errorf("%s: %w", s.name, err)
				}
				rates[s] = append(rates[s], r)
				perMsg[s] = append(perMsg[s], wb)
			}
		}
		for _, s := range systems {
			fmt.Fprintf(stdout, "%s: durable throughput (post → fsync'd → device → ack), median of %d: %.0f msg/s\n", s.name, *runs, median(rates[s]))
		}
		if *single {
			fmt.Fprintf(stdout, "site/single throughput ratio: %.2f (target ≥ 0.50)\n", median(rates[site])/median(rates[systems[1]]))
		}
		for _, s := range systems {
			var parts []string
			for i, c := range s.procs {
				var wb []float64
				for _, r := range perMsg[s] {
					wb = append(wb, r[i])
				}
				_, anon, _ := gcRSS(c)
				if *heapProfile != "" && s == site {
					if err := c.saveProfile("heap?gc=1", *heapProfile+"."+s.memberName(i)); err != nil {
						fmt.Fprintf(stderr, "%s's heap profile: %v\n", s.memberName(i), err)
					}
				}
				parts = append(parts, fmt.Sprintf("%s: anon RSS %.1f MiB, %.0f B written to disk per message", s.memberName(i), float64(anon)/(1<<20), median(wb)))
			}
			fmt.Fprintf(stdout, "%s, after the runs (disk: median of %d): %s\n", s.name, *runs, strings.Join(parts, "; "))
		}
	}

	if want["latency"] {
		lats := map[*benchSys][]time.Duration{}
		for range *runs {
			for _, s := range systems {
				l, err := s.latency(ctx, *latencyMessages)
				if err != nil {
					return fmt.Errorf("%s latency: %w", s.name, err)
				}
				lats[s] = append(lats[s], l...)
			}
		}
		for _, s := range systems {
			l := lats[s]
			slices.Sort(l)
			fmt.Fprintf(stdout, "%s: post → device latency, %d devices with one message in flight each, %d messages (%d runs): p50 %s  p90 %s  p99 %s  max %s\n",
				s.name, *devices, len(l), *runs, pctl(l, 0.5), pctl(l, 0.9), pctl(l, 0.99), pctl(l, 1))
		}
	}

	if want["failover"] {
		var leaders, firsts, alls []float64
		for run := range *failoverRuns {
			f, err := site.failover(ctx, *senders, stdout)
			if err != nil {
				return fmt.Errorf("failover run %d: %w", run+1, err)
			}
			leaders, firsts, alls = append(leaders, f.leader.Seconds()), append(firsts, f.first.Seconds()), append(alls, f.all.Seconds())
		}
		fmt.Fprintf(stdout, "failover, leader SIGKILLed under load (median of %d): new leader known %.2f s, first post answered 201 %.2f s, every sender answered 201 again %.2f s after the kill\n",
			*failoverRuns, median(leaders), median(firsts), median(alls))
	}
	fmt.Fprintf(stdout, "load average at the end: %s\n", loadAvg())
	return nil
}

// benchSys is a relay or a site under test, with its devices: device i
// was registered at member i%len(procs) and is read there.
type benchSys struct {
	name  string
	procs []*child
	// For a site: each member's flags and data dir (to restart it).
	args  [][]string
	dirs  []string
	uaids []string
	paths []string // each device's endpoint path (/wpush/...)
	reqs  [][][]byte
	rd    *benchReaders
	// cpuLimit caps each process's CPU (capCPU); caps are the cgroups
	// to remove once the processes are gone.
	cpuLimit float64
	caps     []func()
}

// capCPU puts c in a cgroup of its own limited to s.cpuLimit cores.
func (s *benchSys) capCPU(c *child) error {
	release, err := capCPU(c.Cmd.Process.Pid, s.cpuLimit)
	if err != nil {
		return err
	}
	s.caps = append(s.caps, release)
	return nil
}

func (s *benchSys) memberName(i int) string {
	if len(s.procs) == 1 {
		return "relay"
	}
	return fmt.Sprintf("m%d", i+1)
}

func (s *benchSys) stop() {
	if s.rd != nil {
		s.rd.close()
	}
	for _, c := range s.procs {
		if c != nil {
			c.Stop()
		}
	}
	for _, release := range s.caps {
		release()
	}
	s.caps = nil
}

// startSite starts n members on dir's subdirectories with fixed ports,
// the same gossip key and link keys from `pushrelay keys`, endpoint.key
// and wake.key copied from the first member's data dir before the
// others' first start, and waits until every one is ready (the site
// formed).
func startSite(ctx context.Context, dir string, n int, logLevel string, cpuLimit float64) (*benchSys, error) {
	raw := make([]byte, 32)
	rand.Read(raw)
	gossip := base64.StdEncoding.EncodeToString(raw)
	s := &benchSys{name: fmt.Sprintf("site of %d", n), cpuLimit: cpuLimit}
	var names, addrs []string
	for i := range n {
		names = append(names, fmt.Sprintf("m%d", i+1))
		a, err := freeTCPUDP()
		if err != nil {
			return nil, err
		}
		addrs = append(addrs, a)
	}
	keys, err := linkKeys(filepath.Join(dir, "keys"), names...)
	if err != nil {
		return nil, err
	}
	for i, name := range names {
		peer, err := freeTCPUDP()
		if err != nil {
			return nil, err
		}
		args := slices.Concat([]string{"--node-name", name, "--cluster-listen", addrs[i], "--cluster-peer-listen", peer,
			"--cluster-key", gossip, "--cluster-expect", fmt.Sprint(n), "--log-level", logLevel}, keys[name])
		d := filepath.Join(dir, name)
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
		if i > 0 {
			args = append(args, "--join", strings.Join(addrs[:i], ","))
			for _, f := range []string{"endpoint.key", "wake.key"} {
				b, err := os.ReadFile(filepath.Join(s.dirs[0], f))
				if err != nil {
					s.stop()
					return nil, err
				}
				if err := os.WriteFile(filepath.Join(d, f), b, 0o600); err != nil {
					s.stop()
					return nil, err
				}
			}
		}
		c, err := startSelf(ctx, d, args...)
		if err != nil {
			s.stop()
			return nil, err
		}
		s.procs, s.args, s.dirs = append(s.procs, c), append(s.args, args), append(s.dirs, d)
		if err := s.capCPU(c); err != nil {
			s.stop()
			return nil, err
		}
	}
	for _, c := range s.procs {
		if err := c.WaitReady(time.Minute); err != nil {
			s.stop()
			return nil, fmt.Errorf("site did not form: %w", err)
		}
	}
	return s, nil
}

// freeTCPUDP is a loopback port free for both TCP and UDP.
func freeTCPUDP() (string, error) {
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		addr := l.Addr().String()
		c, err := net.ListenPacket("udp", addr)
		l.Close()
		if err == nil {
			c.Close()
			return addr, nil
		}
	}
	return "", errors.New("no loopback port free for TCP and UDP")
}

// register registers n devices (device i at member i%members), prepares
// each one's POST to every member, and connects them to read and ack.
func (s *benchSys) register(ctx context.Context, n int) error {
	s.uaids, s.paths = make([]string, n), make([]string, n)
	err := openAll(ctx, n, 16, 5*time.Minute, io.Discard, func(ctx context.Context, i int) error {
		cl, err := pushclient.Dial(ctx, s.procs[i%len(s.procs)].Device)
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
		j := strings.Index(r.PushEndpoint, "/wpush/")
		if r.Status != 200 || j < 0 {
			return fmt.Errorf("register: status %d, endpoint %q", r.Status, r.PushEndpoint)
		}
		s.uaids[i], s.paths[i] = h.UAID, r.PushEndpoint[j:]
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	bs, err := bodies(n)
	if err != nil {
		return err
	}
	s.reqs = make([][][]byte, n)
	for i := range n {
		for _, c := range s.procs {
			req, err := rawRequest(c.Endpoint+s.paths[i], bs[i], map[string]string{"TTL": "86400", "Content-Encoding": "aes128gcm"})
			if err != nil {
				return err
			}
			s.reqs[i] = append(s.reqs[i], req)
		}
	}
	s.rd = newBenchReaders(ctx, n)
	for i := range n {
		if err := s.rd.connect(ctx, i, s.procs[i%len(s.procs)].Device, s.uaids[i]); err != nil {
			return fmt.Errorf("%s: device %d: %w", s.name, i, err)
		}
	}
	return nil
}

// member is the member message i goes to: round-robin, shifted each
// round over the devices so that a device's messages go to every member.
func (s *benchSys) member(i int) int {
	return (i + i/len(s.uaids)) % len(s.procs)
}

// throughput posts n messages over the members from senders connections
// and waits until the devices read them all; it returns messages/s and
// each member's disk writes per message.
func (s *benchSys) throughput(ctx context.Context, n, senders int, profile string, stdout, stderr io.Writer) (float64, []float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	done := s.rd.expect(int64(n))
	type snap struct {
		io                                               map[string]int64
		cpu, runWait                                     time.Duration
		logWrites, logSecs, storeCommits, storeSecs, pro float64
	}
	read := func() []snap {
		var out []snap
		for _, c := range s.procs {
			var sn snap
			sn.io, _ = procIO(c.Cmd.Process.Pid)
			sn.cpu, _ = procCPU(c.Cmd.Process.Pid)
			sn.runWait = procRunWait(c.Cmd.Process.Pid)
			sn.logWrites, _ = c.metric("pushrelay_consensus_log_writes_total")
			sn.logSecs, _ = c.metric("pushrelay_consensus_log_write_seconds_sum")
			sn.storeCommits, _ = c.metric("pushrelay_store_commits_total")
			sn.storeSecs, _ = c.metric("pushrelay_store_commit_seconds_sum")
			sn.pro, _ = c.metric("pushrelay_consensus_proposals_total")
			out = append(out, sn)
		}
		return out
	}
	before := read()
	var profiles sync.WaitGroup
	if profile != "" && len(s.procs) > 1 {
		follower := false
		for _, c := range s.procs {
			role := "leader"
			if v, _ := c.metric("pushrelay_site_leader"); v != 1 {
				if follower {
					continue // one follower is enough
				}
				follower, role = true, "follower"
			}
			profiles.Go(func() {
				time.Sleep(500 * time.Millisecond)
				if err := c.saveProfile("profile?seconds=5", profile+"."+role); err != nil {
					fmt.Fprintf(stderr, "%s's profile: %v\n", role, err)
				}
			})
		}
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, senders+1)
	start := time.Now()
	for range senders {
		ps := make([]*rawPoster, len(s.procs))
		for m, c := range s.procs {
			var err error
			if ps[m], err = newRawPoster(c.Endpoint); err != nil {
				return 0, nil, err
			}
		}
		wg.Go(func() {
			defer func() {
				for _, p := range ps {
					p.close()
				}
			}()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				m := s.member(i)
				code, err := ps[m].do(s.reqs[i%len(s.reqs)][m])
				if err == nil && code != http.StatusCreated {
					err = fmt.Errorf("status %d", code)
				}
				if err != nil {
					errc <- fmt.Errorf("post to %s: %w", s.memberName(m), err)
					cancel()
					return
				}
			}
		})
	}
	select {
	case <-done:
	case <-ctx.Done():
		wg.Wait()
		select {
		case err := <-errc:
			return 0, nil, err
		default:
		}
		return 0, nil, fmt.Errorf("devices read %d of %d messages in time", s.rd.got.Load()-s.rd.base(n), n)
	case err := <-s.rd.errc:
		cancel()
		wg.Wait()
		return 0, nil, err
	}
	took := time.Since(start)
	wg.Wait()
	profiles.Wait()
	// The acks are written after the devices read: let them land
	// before the disk is read.
	for _, c := range s.procs {
		waitUntil(ctx, 5*time.Second, func() bool { v, ok := c.metric("pushrelay_store_messages_waiting"); return ok && v == 0 })
	}
	after := read()
	rate := float64(n) / took.Seconds()
	var wb []float64
	var parts []string
	var cpu time.Duration
	for i := range s.procs {
		a, b := after[i], before[i]
		w := float64(a.io["write_bytes"]-b.io["write_bytes"]) / float64(n)
		wb = append(wb, w)
		cpu += a.cpu - b.cpu
		p := fmt.Sprintf("%s: CPU %.1f µs/msg (%.0f%% of a core; runnable and waiting for a CPU %.0f%% of the run, summed over threads), %.0f B/msg written, %.0f store commits (%.1f ms each)", s.memberName(i),
			float64((a.cpu-b.cpu).Microseconds())/float64(n), 100*(a.cpu-b.cpu).Seconds()/took.Seconds(), 100*(a.runWait-b.runWait).Seconds()/took.Seconds(), w,
			a.storeCommits-b.storeCommits, 1000*(a.storeSecs-b.storeSecs)/max(a.storeCommits-b.storeCommits, 1))
		if len(s.procs) > 1 {
			p += fmt.Sprintf(", %.0f proposals, %.0f log writes (%.1f ms each)", a.pro-b.pro, a.logWrites-b.logWrites,
				1000*(a.logSecs-b.logSecs)/max(a.logWrites-b.logWrites, 1))
		}
		parts = append(parts, p)
	}
	fmt.Fprintf(stdout, "%s: %d messages posted and acked in %s: %.0f msg/s; CPU %.1f µs/message (all relays); %s\n",
		s.name, n, took.Round(time.Millisecond), rate, float64(cpu.Microseconds())/float64(n), strings.Join(parts, "; "))
	return rate, wb, nil
}

// latency has every device take msgs messages one at a time (each
// posted once the last was read, to the members in turn) and returns
// each post's time to the device.
func (s *benchSys) latency(ctx context.Context, msgs int) ([]time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	n := len(s.uaids)
	s.rd.expect(int64(n * msgs))
	out := make([][]time.Duration, n)
	var wg sync.WaitGroup
	errc := make(chan error, n)
	for d := range n {
		ps := make([]*rawPoster, len(s.procs))
		for m, c := range s.procs {
			var err error
			if ps[m], err = newRawPoster(c.Endpoint); err != nil {
				return nil, err
			}
		}
		wg.Go(func() {
			defer func() {
				for _, p := range ps {
					p.close()
				}
			}()
			for j := range msgs {
				m := (d + j) % len(s.procs)
				t0 := time.Now()
				code, err := ps[m].do(s.reqs[d][m])
				if err == nil && code != http.StatusCreated {
					err = fmt.Errorf("status %d", code)
				}
				if err != nil {
					errc <- fmt.Errorf("post to %s: %w", s.memberName(m), err)
					return
				}
				select {
				case <-s.rd.notify[d]:
				case <-ctx.Done():
					errc <- fmt.Errorf("device %d: message %d not read in time", d, j)
					return
				}
				out[d] = append(out[d], time.Since(t0))
			}
		})
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return nil, err
	}
	return slices.Concat(out...), nil
}

type failoverTimes struct{ leader, first, all time.Duration }

// failover posts to every member from senders connections, SIGKILLs the
// leader, and times the site's recovery; then it restarts the killed
// member on its data dir and reconnects its devices.
func (s *benchSys) failover(ctx context.Context, senders int, stdout io.Writer) (failoverTimes, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	var f failoverTimes
	leader := -1
	if err := waitUntil(ctx, 30*time.Second, func() bool {
		for i, c := range s.procs {
			if v, _ := c.metric("pushrelay_site_leader"); v == 1 {
				leader = i
				return true
			}
		}
		return false
	}); err != nil {
		return f, errors.New("no member leads the site")
	}
	var killedAt atomic.Pointer[time.Time]
	dead := atomic.Int32{}
	dead.Store(-1)
	var sent, ok, refused, failed atomic.Int64
	firstOK := make([]atomic.Int64, senders) // ns after the kill of this sender's first 201 to a post sent after it
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for k := range senders {
		ps := make([]*rawPoster, len(s.procs))
		for m, c := range s.procs {
			var err error
			if ps[m], err = newRawPoster(c.Endpoint); err != nil {
				return f, err
			}
		}
		wg.Go(func() {
			defer func() {
				for _, p := range ps {
					p.close()
				}
			}()
			for i := k; ; i += senders {
				select {
				case <-stop:
					return
				default:
				}
				m := s.member(i)
				if int32(m) == dead.Load() {
					m = (m + 1) % len(s.procs)
				}
				t0 := time.Now()
				code, err := ps[m].do(s.reqs[i%len(s.reqs)][m])
				sent.Add(1)
				switch {
				case err == nil && code == http.StatusCreated:
					ok.Add(1)
					if kt := killedAt.Load(); kt != nil && t0.After(*kt) && firstOK[k].Load() == 0 {
						firstOK[k].Store(int64(time.Since(*kt)))
					}
				case err == nil:
					refused.Add(1)
					time.Sleep(10 * time.Millisecond)
				default:
					failed.Add(1)
					time.Sleep(10 * time.Millisecond)
				}
			}
		})
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	time.Sleep(2 * time.Second)
	ok0 := ok.Load()
	if ok0 == 0 {
		return f, errors.New("no post answered 201 before the kill")
	}
	killed := s.procs[leader]
	for i := leader; i < len(s.uaids); i += len(s.procs) {
		s.rd.drop(i) // its devices lose their connections with it
	}
	dead.Store(int32(leader))
	now := time.Now()
	killedAt.Store(&now)
	killed.Kill()
	var survivors []*child
	for i, c := range s.procs {
		if i != leader {
			survivors = append(survivors, c)
		}
	}
	newLeader := ""
	if err := waitUntil(ctx, time.Minute, func() bool {
		for i, c := range s.procs {
			if i == leader {
				continue
			}
			if v, _ := c.metric("pushrelay_site_leader"); v == 1 {
				newLeader = s.memberName(i)
				return true
			}
		}
		return false
	}); err != nil {
		return f, errors.New("no survivor leads within a minute")
	}
	f.leader = time.Since(now)
	if err := waitUntil(ctx, time.Minute, func() bool {
		for k := range firstOK {
			if firstOK[k].Load() == 0 {
				return false
			}
		}
		return true
	}); err != nil {
		return f, errors.New("not every sender was answered 201 within a minute of the kill")
	}
	close(stop)
	wg.Wait()
	for k := range firstOK {
		d := time.Duration(firstOK[k].Load())
		if f.first == 0 || d < f.first {
			f.first = d
		}
		f.all = max(f.all, d)
	}
	fmt.Fprintf(stdout, "failover: leader %s SIGKILLed after %d posts answered 201; %s leads %s after the kill; first post answered 201 %s, every sender's %s after it; %d posts sent in all, %d answered 201, %d refused (503), %d failed (connection)\n",
		s.memberName(leader), ok0, newLeader, f.leader.Round(time.Millisecond), f.first.Round(time.Millisecond), f.all.Round(time.Millisecond),
		sent.Load(), ok.Load(), refused.Load(), failed.Load())

	// The killed member comes back on its data dir and catches up; its
	// devices come back to it.
	c, err := startSelf(ctx, s.dirs[leader], s.args[leader]...)
	if err != nil {
		return f, fmt.Errorf("restart %s: %w", s.memberName(leader), err)
	}
	s.procs[leader] = c
	if err := s.capCPU(c); err != nil {
		return f, err
	}
	if err := c.WaitReady(time.Minute); err != nil {
		return f, fmt.Errorf("restarted %s not ready: %w", s.memberName(leader), err)
	}
	for i := leader; i < len(s.uaids); i += len(s.procs) {
		if err := s.rd.connect(ctx, i, c.Device, s.uaids[i]); err != nil {
			return f, fmt.Errorf("device %d back to %s: %w", i, s.memberName(leader), err)
		}
	}
	return f, nil
}

// benchReaders are the devices of a benchSys, each reading and acking
// every notification on its connection. A reader that fails is quietly
// dropped when its connection was replaced (connect) or closed, and
// reported on errc otherwise.
type benchReaders struct {
	mu      sync.Mutex
	clients []*pushclient.Client
	notify  []chan struct{} // one a notification read, for latency
	got     atomic.Int64
	target  atomic.Int64
	done    chan struct{}
	errc    chan error
	readers sync.WaitGroup
	closed  bool
}

func newBenchReaders(ctx context.Context, n int) *benchReaders {
	r := &benchReaders{clients: make([]*pushclient.Client, n), errc: make(chan error, 4*n), done: make(chan struct{})}
	for range n {
		r.notify = append(r.notify, make(chan struct{}, 1024))
	}
	r.target.Store(-1)
	return r
}

// expect returns a channel closed once want more notifications were read
// (from now), and empties the devices' notify channels.
func (r *benchReaders) expect(want int64) <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ch := range r.notify {
		for len(ch) > 0 {
			<-ch
		}
	}
	r.done = make(chan struct{})
	r.target.Store(r.got.Load() + want)
	if r.got.Load() >= r.target.Load() {
		close(r.done)
	}
	return r.done
}

func (r *benchReaders) base(want int) int64 { return r.target.Load() - int64(want) }

// connect connects device i to url with its UAID and starts its reader,
// replacing its connection if it had one.
func (r *benchReaders) connect(ctx context.Context, i int, url, uaid string) error {
	cl, err := pushclient.Dial(ctx, url)
	if err != nil {
		return err
	}
	if _, err := cl.Hello(uaid, pushclient.HelloOptions{}); err != nil {
		cl.Abort()
		return err
	}
	r.mu.Lock()
	if old := r.clients[i]; old != nil {
		old.Abort()
	}
	r.clients[i] = cl
	r.mu.Unlock()
	r.readers.Go(func() {
		for {
			f, err := cl.Next(time.Now().Add(time.Hour))
			if err == nil {
				err = cl.Ack(f)
			}
			if err != nil {
				r.mu.Lock()
				current := r.clients[i] == cl && !r.closed
				r.mu.Unlock()
				if current {
					r.errc <- fmt.Errorf("device %d: %w", i, err)
				}
				return
			}
			select {
			case r.notify[i] <- struct{}{}:
			default:
			}
			if r.got.Add(1) == r.target.Load() {
				r.mu.Lock()
				close(r.done)
				r.mu.Unlock()
			}
		}
	})
	return nil
}

// drop forgets device i's connection without reporting its reader's end
// (its member was killed).
func (r *benchReaders) drop(i int) {
	r.mu.Lock()
	r.clients[i] = nil
	r.mu.Unlock()
}

func (r *benchReaders) close() {
	r.mu.Lock()
	r.closed = true
	cls := slices.Clone(r.clients)
	r.mu.Unlock()
	for _, cl := range cls {
		if cl != nil {
			cl.Abort()
		}
	}
	r.readers.Wait()
}

// pctl is the p quantile of sorted xs.
func pctl(xs []time.Duration, p float64) time.Duration {
	if len(xs) == 0 {
		return 0
	}
	return xs[min(len(xs)-1, int(float64(len(xs))*p))].Round(10 * time.Microsecond)
}

// loadAvg is the machine's load averages, from /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
