package bench

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/pushclient"
)

// benchBatch compares, in one run against one relay, the messages per
// second app servers get stored through single posts and through POST
// /wpush/batch: rounds alternate the two modes, each sending the same
// number of messages to the same connected devices, which ack them all.
func benchBatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pushrelay bench batch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	devices := fs.Int("devices", 200, "connected devices (one channel each), acking what they get")
	senders := fs.Int("senders", 128, "concurrent app-server connections posting single messages")
	batchSenders := fs.Int("batch-senders", 4, "concurrent app-server connections posting batches (the relay's batch_concurrency is set to it)")
	batchSize := fs.Int("batch", 100, "messages per batch")
	total := fs.Int("messages", 50000, "messages per mode and round")
	rounds := fs.Int("rounds", 3, "rounds; each runs both modes, in alternating order")
	payload := fs.Int("payload", 128, "plaintext bytes per message (aes128gcm)")
	limit := fs.Duration("max-time", 5*time.Minute, "stop after this long whatever was sent")
	offline := fs.Bool("offline", false, "devices disconnect after registering: only the storing is measured (messages stay in the store)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *devices < 1 || *senders < 1 || *batchSenders < 1 || *batchSize < 1 || *total < 1 || *rounds < 1 {
		return errors.New("bench batch: every count must be positive")
	}
	tokenFile, err := os.CreateTemp("", "pushrelay-bench-batch-token-*")
	if err != nil {
		return err
	}
	defer os.Remove(tokenFile.Name())
	const secret = "bench-batch-token-0123456789abcdef"
	tokenFile.WriteString(secret + "\n")
	tokenFile.Close()
	c, stop, err := benchRelay(ctx, "--batch-token-file", tokenFile.Name(),
		"--batch-concurrency", fmt.Sprint(*batchSenders), "--batch-max-messages", fmt.Sprint(*batchSize),
		"--max-messages-per-uaid", "1000000")
	if err != nil {
		return err
	}
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *limit)
	defer cancel()

	// Devices, each with its single post and its batch entry prepared.
	var acked atomic.Int64
	singles := make([][]byte, *devices)
	entries := make([][]byte, *devices)
	clients := make([]*pushclient.Client, *devices)
	var readers sync.WaitGroup
	defer func() {
		for _, cl := range clients {
			if cl != nil {
				cl.Abort()
			}
		}
		readers.Wait()
	}()
	for i := range *devices {
		cl, err := pushclient.Dial(ctx, c.Device)
		if err != nil {
			return err
		}
		clients[i] = cl
		if _, err := cl.Hello("", pushclient.HelloOptions{}); err != nil {
			return err
		}
		r, err := cl.Register(benchChannelID(i), "")
		if err != nil {
			return err
		}
		sub, err := ece.NewSubscription()
		if err != nil {
			return err
		}
		body, err := ece.Encrypt(make([]byte, *payload), sub.PublicKey(), sub.Auth)
		if err != nil {
			return err
		}
		if singles[i], err = rawRequest(r.PushEndpoint, body, map[string]string{"TTL": "3600", "Content-Encoding": "aes128gcm"}); err != nil {
			return err
		}
		entries[i], _ = json.Marshal(map[string]any{"endpoint": r.PushEndpoint, "ttl": 3600, "encoding": "aes128gcm",
			"data": base64.RawURLEncoding.EncodeToString(body)})
		if *offline {
			cl.Close()
			clients[i] = nil
			continue
		}
		readers.Go(func() {
			for {
				n, err := cl.Next(time.Now().Add(time.Hour))
				if err != nil {
					return
				}
				if cl.Ack(n) != nil {
					return
				}
				acked.Add(1)
			}
		})
	}
	// Batch requests: batch k carries the devices from k*batchSize on,
	// round robin; as many distinct bodies as it takes to cover every
	// device once, at most 64.
	nBodies := min(64, max(1, *devices / *batchSize + 1))
	batches := make([][]byte, nBodies)
	batchURL := c.Endpoint + "/wpush/batch"
	for k := range batches {
		var b bytes.Buffer
		b.WriteString(`{"messages":[`)
		for j := range *batchSize {
			if j > 0 {
				b.WriteByte(',')
			}
			b.Write(entries[(k**batchSize+j)%*devices])
		}
		b.WriteString("]}")
		if batches[k], err = rawRequest(batchURL, b.Bytes(), map[string]string{"Authorization": "Bearer " + secret, "Content-Type": "application/json"}); err != nil {
			return err
		}
	}
	fmt.Fprintf(stderr, "  %d devices connected; %d messages per mode and round\n", *devices, *total)

	// result is one mode's run: time to the last 201, time to the last
	// ack, the relay's CPU time and its peak anonymous resident set.
	type result struct {
		post, e2e time.Duration
		cpu       time.Duration
		peakRSS   int64
	}
	var single, batch []result
	run := func(useBatch bool) (result, error) {
		var (
			next   atomic.Int64 // requests handed out
			failed atomic.Int64
			wg     sync.WaitGroup
			errMu  sync.Mutex
			runErr error
		)
		per, n, reqs := int64(1), *senders, singles
		if useBatch {
			per, n, reqs = int64(*batchSize), *batchSenders, batches
		}
		requests := (int64(*total) + per - 1) / per
		start := acked.Load()
		var peak atomic.Int64
		sampled := make(chan struct{})
		stopSampling := make(chan struct{})
		go func() {
			defer close(sampled)
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for {
				// The anonymous part: the store's mapped file, which
				// grows as messages pile up, is left out.
				if _, anon, err := procRSSAnon(c.Cmd.Process.Pid); err == nil && anon > peak.Load() {
					peak.Store(anon)
				}
				select {
				case <-stopSampling:
					return
				case <-tick.C:
				}
			}
		}()
		defer func() { close(stopSampling); <-sampled }()
		cpu0, _ := procCPU(c.Cmd.Process.Pid)
		t0 := time.Now()
		for range n {
			wg.Go(func() {
				p, err := newRawPoster(c.Endpoint)
				if err != nil {
					errMu.Lock()
					runErr = err
					errMu.Unlock()
					return
				}
				p.keep = useBatch
				defer p.close()
				for ctx.Err() == nil {
					k := next.Add(1) - 1
					if k >= requests {
						return
					}
					code, err := p.do(reqs[k%int64(len(reqs))])
					switch {
					case err != nil:
						errMu.Lock()
						runErr = err
						errMu.Unlock()
						return
					case useBatch && code == 200:
						if got := bytes.Count(p.body, []byte(`"status":201`)); got != *batchSize {
							failed.Add(int64(*batchSize - got))
						}
					case useBatch:
						failed.Add(per)
					case code != 201:
						failed.Add(1)
					}
				}
			})
		}
		wg.Wait()
		post := time.Since(t0)
		if runErr != nil {
			return result{}, runErr
		}
		if f := failed.Load(); f > 0 {
			return result{}, fmt.Errorf("%d messages not stored", f)
		}
		want := start + requests*per
		for !*offline && acked.Load() < want {
			if ctx.Err() != nil {
				return result{}, fmt.Errorf("%d of %d acked in time", acked.Load()-start, want-start)
			}
			time.Sleep(2 * time.Millisecond)
		}
		e2e := time.Since(t0)
		cpu1, _ := procCPU(c.Cmd.Process.Pid)
		return result{post: post, e2e: e2e, cpu: cpu1 - cpu0, peakRSS: peak.Load()}, nil
	}
	sent := int64(*total)
	if r := int64(*total) % int64(*batchSize); r != 0 {
		sent = int64(*total) + int64(*batchSize) - r // batches are whole
	}
	rate := func(n int64, d time.Duration) float64 { return float64(n) / d.Seconds() }
	for r := range *rounds {
		for _, useBatch := range []bool{r%2 == 1, r%2 == 0} {
			res, err := run(useBatch)
			if err != nil {
				return err
			}
			n, mode := int64(*total), "single"
			if useBatch {
				n, mode = sent, "batch"
				batch = append(batch, res)
			} else {
				single = append(single, res)
			}
			fmt.Fprintf(stderr, "  round %d %s: %.0f msg/s stored, %.0f msg/s acked, relay CPU %.1f µs/msg, peak anonymous RSS %s\n",
				r+1, mode, rate(n, res.post), rate(n, res.e2e), float64(res.cpu.Microseconds())/float64(n), mib(res.peakRSS))
		}
	}
	medianOf := func(rs []result, f func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	median := func(rs []result, n int64, e2e bool) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			d := r.post
			if e2e {
				d = r.e2e
			}
			v[i] = rate(n, d)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	fmt.Fprintf(stdout, "machine: %d CPUs, %s/%s; relay and load generator share it\n", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(stdout, "devices %d, payload %d B, %d messages per mode and round, %d rounds\n", *devices, *payload, *total, *rounds)
	acks := func(rs []result, n int64) string {
		if *offline {
			return "devices offline"
		}
		return fmt.Sprintf("%.0f msg/s acked by devices", median(rs, n, true))
	}
	fmt.Fprintf(stdout, "single posts (%d connections): median %.0f msg/s stored (201), %s\n",
		*senders, median(single, int64(*total), false), acks(single, int64(*total)))
	fmt.Fprintf(stdout, "batches of %d (%d connections): median %.0f msg/s stored (201 in the results), %s\n",
		*batchSize, *batchSenders, median(batch, sent, false), acks(batch, sent))
	cpuPer := func(n int64) func(result) float64 {
		return func(r result) float64 { return float64(r.cpu.Microseconds()) / float64(n) }
	}
	maxRSS := func(rs []result) int64 {
		var m int64
		for _, r := range rs {
			m = max(m, r.peakRSS)
		}
		return m
	}
	fmt.Fprintf(stdout, "relay CPU per message (median): single %.1f µs, batch %.1f µs; relay peak anonymous RSS: single %s, batch %s\n",
		medianOf(single, cpuPer(int64(*total))), medianOf(batch, cpuPer(sent)), mib(maxRSS(single)), mib(maxRSS(batch)))
	fmt.Fprintf(stdout, "batch/single stored: %.2fx\n", median(batch, sent, false)/median(single, int64(*total), false))
	return nil
}
