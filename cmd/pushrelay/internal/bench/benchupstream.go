package bench

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/upstream/autopushtest"
)

// benchUpstream measures an edge relay's held upstream sessions over TLS:
// the upstream is autopushtest (autopush's rules, in memory, in this
// process) serving wss:// with a loopback certificate the edge trusts
// through upstream_ca_file. n devices register through the edge (each
// becomes an identity upstream, so the edge holds a session for it);
// then, in each run, the edge starts on that store standalone (no link:
// the baseline) and again with the upstream, and the RSS difference once
// every session is open, over n, is the memory of one held session. With
// --messages, devices connected to the edge then receive messages posted
// to the upstream as fast as it takes them: each is stored (fsync) at the
// edge before its ack goes upstream, then delivered and acked by the
// device.
func benchUpstream(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pushrelay bench upstream", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("n", 2000, "devices, each with a held upstream session")
	runs := fs.Int("runs", 3, "baseline/held RSS pairs measured (the median is reported)")
	hold := fs.Duration("hold", 3*time.Second, "how long the sessions are held open before measuring")
	workers := fs.Int("workers", 16, "registers through the edge in parallel")
	devices := fs.Int("devices", 0, "devices connected to the edge for the message phase (0: no message phase)")
	messages := fs.Int("messages", 20000, "messages posted upstream in the message phase")
	senders := fs.Int("senders", 32, "app-server goroutines posting upstream")
	rate := fs.Int("connect-rate", 200, "the edge's upstream_connect_rate (held-session connects per second)")
	pq := fs.Bool("upstream-tls-pq", true, "the edge's upstream_tls_pq (false: X25519 key exchange, not X25519MLKEM768)")
	logLevel := fs.String("edge-log-level", "warn", "the edge's log_level (its log goes to stderr)")
	cpuProfile := fs.String("cpu-profile", "", "save the edge's CPU profile (pprof) over the first 5 s of the first message run to this file")
	profile := fs.String("heap-profile", "", "save the edge's heap profile (pprof) with the sessions open (last run) to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *devices > *n {
		return fmt.Errorf("--devices %d: at most --n (%d)", *devices, *n)
	}
	srvTLS, roots, err := autopushtest.LoopbackTLS()
	if err != nil {
		return err
	}
	up, err := autopushtest.New(autopushtest.Config{TLS: srvTLS})
	if err != nil {
		return err
	}
	defer up.Close()
	dir, cleanup, err := benchDir("")
	if err != nil {
		return err
	}
	defer cleanup()
	caFile := filepath.Join(dir, "upstream-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvTLS.Certificates[0].Certificate[0]}), 0o600); err != nil {
		return err
	}
	data := filepath.Join(dir, "data")
	linked := []string{"--upstream", up.URL(), "--upstream-ca-file", caFile, "--upstream-connect-rate", fmt.Sprint(*rate), "--upstream-backoff", "1s", "--log-level", *logLevel,
		"--upstream-tls-pq=" + fmt.Sprint(*pq)}

	edge, err := startSelf(ctx, data, linked...)
	if err != nil {
		return err
	}
	uaids := make([]string, *n)
	endpoints := make([]string, *n)
	start := time.Now()
	err = openAll(ctx, *n, *workers, 10*time.Minute, stderr, func(ctx context.Context, i int) error {
		cl, err := pushclient.Dial(ctx, edge.Device)
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
		if r.Status != 200 {
			return fmt.Errorf("register: status %d", r.Status)
		}
		uaids[i], endpoints[i] = h.UAID, r.PushEndpoint
		return nil
	})
	if err != nil {
		edge.Stop()
		return err
	}
	fmt.Fprintf(stderr, "  %d devices registered through the edge in %s\n", *n, time.Since(start).Round(time.Millisecond))
	edge.Stop()

	var perAll, perAnon []float64
	for run := range *runs {
		base, err := startSelf(ctx, data)
		if err != nil {
			return err
		}
		time.Sleep(*hold)
		base.rss(true)
		baseAll, baseAnon, err := procRSSAnon(base.Cmd.Process.Pid)
		baseM := base.runtimeMetrics()
		base.Stop()
		if err != nil {
			return err
		}

		edge, err = startSelf(ctx, data, linked...)
		if err != nil {
			return err
		}
		t0 := time.Now()
		if err := waitUntil(ctx, 5*time.Minute, func() bool {
			v, _ := edge.metric("pushrelay_upstream_sessions_open")
			return int(v) == *n
		}); err != nil {
			v, _ := edge.metric("pushrelay_upstream_sessions_open")
			edge.Stop()
			return fmt.Errorf("%d of %d upstream sessions open: %w", int(v), *n, err)
		}
		opened := time.Since(t0)
		failed, _ := edge.metric(`pushrelay_upstream_connects_total{result="error"}`)
		time.Sleep(*hold)
		edge.rss(true)
		all, anon, err := procRSSAnon(edge.Cmd.Process.Pid)
		if err != nil {
			edge.Stop()
			return err
		}
		withM := edge.runtimeMetrics()
		pa, pn := float64(all-baseAll)/float64(*n), float64(anon-baseAnon)/float64(*n)
		perAll, perAnon = append(perAll, pa), append(perAnon, pn)
		fmt.Fprintf(stdout, "run %d: standalone %s (anon %s), %d held sessions open in %s (%.0f failed connects): %s (anon %s); per held session %.2f KiB (anon %.2f KiB)\n",
			run+1, mib(baseAll), mib(baseAnon), *n, opened.Round(time.Millisecond), failed, mib(all), mib(anon), pa/1024, pn/1024)
		fmt.Fprintf(stdout, "  Go runtime, per session:")
		for _, k := range []string{"go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes", "go_memstats_heap_idle_bytes",
			"go_memstats_gc_sys_bytes", "go_memstats_other_sys_bytes", "go_memstats_mspan_inuse_bytes", "go_goroutines"} {
			fmt.Fprintf(stdout, " %s %.0f", strings.TrimPrefix(strings.TrimSuffix(k, "_bytes"), "go_memstats_"), (withM[k]-baseM[k])/float64(*n))
		}
		fmt.Fprintln(stdout)
		if run < *runs-1 {
			edge.Stop()
		}
	}
	defer edge.Stop()
	fmt.Fprintf(stdout, "per held upstream session over TLS (%d sessions, median of %d): %.2f KiB of RSS (anon %.2f KiB)\n",
		*n, *runs, median(perAll)/1024, median(perAnon)/1024)
	if *profile != "" {
		if err := edge.saveProfile("heap", *profile); err != nil {
			return err
		}
	}
	if *devices == 0 {
		return nil
	}
	var rates []float64
	for run := range *runs {
		prof := ""
		if run == 0 {
			prof = *cpuProfile
		}
		r, err := relayMessages(ctx, edge, roots, uaids[:*devices], endpoints[:*devices], *messages, *senders, prof, stdout)
		if err != nil {
			return err
		}
		rates = append(rates, r)
	}
	fmt.Fprintf(stdout, "relayed through held sessions, %d devices (median of %d): %.0f msg/s\n", *devices, *runs, median(rates))
	return nil
}

// relayMessages connects the devices to the edge (their sessions held
// upstream), posts messages to their upstream endpoints from senders
// goroutines, and reports messages per second from the first post to the
// last notification the devices read (each acked), returned. With
// cpuProfile, the edge's CPU profile over the first 5 s is saved there.
func relayMessages(ctx context.Context, edge *child, roots *x509.CertPool, uaids, endpoints []string,
	messages, senders int, cpuProfile string, stdout io.Writer) (rate float64, err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	payloads, err := bodies(len(endpoints))
	if err != nil {
		return 0, err
	}
	errc := make(chan error, len(uaids)+senders)
	devs, err := startAckers(ctx, edge.Device, uaids, messages, errc)
	if err != nil {
		return 0, err
	}
	defer devs.close()
	acks0, _ := edge.metric("pushrelay_upstream_acks_total")
	commits0, _ := edge.metric("pushrelay_store_commits_total")
	cpu0, _ := procCPU(edge.Cmd.Process.Pid)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots}, MaxIdleConnsPerHost: senders}}
	defer client.CloseIdleConnections()
	var next, refused atomic.Int64
	var posters sync.WaitGroup
	if cpuProfile != "" {
		posters.Go(func() {
			if err := edge.saveProfile("profile?seconds=5", cpuProfile); err != nil {
				errc <- fmt.Errorf("cpu profile: %w", err)
			}
		})
	}
	start := time.Now()
	for range senders {
		posters.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= messages || ctx.Err() != nil {
					return
				}
				d := i % len(endpoints)
				req, _ := http.NewRequestWithContext(ctx, "POST", endpoints[d], bytes.NewReader(payloads[d]))
				req.Header.Set("TTL", "3600")
				req.Header.Set("Content-Encoding", "aes128gcm")
				resp, err := client.Do(req)
				if err != nil {
					errc <- fmt.Errorf("post: %w", err)
					cancel()
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusCreated {
					refused.Add(1)
				}
			}
		})
	}
	posters.Wait()
	posted := time.Since(start)
	select {
	case <-devs.done:
	case <-ctx.Done():
	case err := <-errc:
		cancel()
		return 0, err
	}
	took := time.Since(start)
	cpu1, _ := procCPU(edge.Cmd.Process.Pid)
	acks1, _ := edge.metric("pushrelay_upstream_acks_total")
	commits1, _ := edge.metric("pushrelay_store_commits_total")
	cancel()
	devs.close()
	if r := refused.Load(); r > 0 {
		return 0, fmt.Errorf("the upstream refused %d posts", r)
	}
	if g := devs.got.Load(); g < int64(messages) {
		return 0, fmt.Errorf("devices read %d of %d messages", g, messages)
	}
	fmt.Fprintf(stdout, "relayed %d messages (upstream POST → edge store, fsync → ack upstream → %d devices, acked) in %s: %.0f msg/s (posting took %s); edge: %.0f upstream acks, %.0f commits (%.1f messages per fsync), CPU %.1f µs/message\n",
		messages, len(uaids), took.Round(time.Millisecond), float64(messages)/took.Seconds(), posted.Round(time.Millisecond),
		acks1-acks0, commits1-commits0, float64(messages)/max(commits1-commits0, 1), float64((cpu1-cpu0).Microseconds())/float64(messages))
	return float64(messages) / took.Seconds(), nil
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
