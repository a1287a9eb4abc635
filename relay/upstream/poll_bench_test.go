package upstream_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/node"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/upstream"
	"github.com/pushrelay/pushrelay/relay/upstream/autopushtest"
)

// benchNode runs a standalone relay for a benchmark.
func benchNode(b *testing.B, cfg node.Config) *node.Node {
	b.Helper()
	cfg.DataDir = b.TempDir()
	cfg.Logger = slog.New(slog.DiscardHandler)
	n, err := node.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	go n.Run(context.Background())
	b.Cleanup(func() { n.Close() })
	for i := 0; !n.Ready(); i++ {
		if i == 500 {
			b.Fatal("node not ready")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return n
}

// BenchmarkPollRate measures polls per second (connect, TLS handshake,
// hello, the {} confirm, close) of one link against autopushtest over
// wss:// on loopback (the TLS session resumed): 3,000 identities, one held and the rest polled
// every second, unpaced (upstream_connect_rate out of the way), at most
// the default 32 polls at once. b.N polls are timed after a second of
// warm-up; nothing is stored upstream, so each poll is one connection.
func BenchmarkPollRate(b *testing.B) {
	const devices = 3000
	serverTLS, roots, err := autopushtest.LoopbackTLS()
	if err != nil {
		b.Fatal(err)
	}
	up, err := autopushtest.New(autopushtest.Config{TLS: serverTLS})
	if err != nil {
		b.Fatal(err)
	}
	defer up.Close()
	n := benchNode(b, node.Config{})
	reg := metrics.NewRegistry()
	link, err := upstream.New(upstream.Config{
		URL: up.URL(), TLS: &tls.Config{RootCAs: roots}, Store: n.Store(),
		MaxSessions: 1, PollInterval: time.Second, ConnectRate: -1,
		Logger: slog.New(slog.DiscardHandler), Metrics: reg,
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, devices)
	for range 16 {
		wg.Go(func() {
			for range devices / 16 {
				var u push.UAID
				var ch push.ChannelID
				rand.Read(u[:])
				rand.Read(ch[:])
				if _, err := link.Mint(ctx, relay.Registration{UAID: u, Channel: ch}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- link.Run(ctx, n.Hub()) }()
	defer func() {
		cancel()
		<-done
	}()
	polls := func() float64 {
		return reg.Value(`pushrelay_upstream_polls_total{result="empty"}`) +
			reg.Value(`pushrelay_upstream_polls_total{result="drained"}`)
	}
	time.Sleep(time.Second)
	if errs := reg.Value(`pushrelay_upstream_polls_total{result="error"}`); errs > 0 {
		b.Fatalf("%v polls failed", errs)
	}
	b.ResetTimer()
	start, from, cpu := time.Now(), polls(), cpuTime()
	for polls()-from < float64(b.N) {
		if ctx.Err() != nil {
			b.Fatal("timed out")
		}
		time.Sleep(5 * time.Millisecond)
	}
	el, cpu := time.Since(start), cpuTime()-cpu
	b.StopTimer()
	got := polls() - from
	b.ReportMetric(got/el.Seconds(), "polls/s")
	// The process's CPU (link, edge and test upstream together) per
	// poll: what the rate would be on idle cores, when the machine is
	// shared.
	b.ReportMetric(float64(cpu.Microseconds())/got, "cpu-µs/poll")
	if errs := reg.Value(`pushrelay_upstream_polls_total{result="error"}`); errs > 0 {
		b.Errorf("%v polls failed", errs)
	}
}

// BenchmarkPolledLatency measures upstream POST (201) to the receipt on
// a device connected to the edge whose identity is polled (every 500 ms:
// upstream_sessions is 1 and the held device is connected too), one
// message at a time, over wss://, each posted at a random point of the
// poll schedule. The bound is the interval (jittered up
// to 550 ms) plus the poll.
func BenchmarkPolledLatency(b *testing.B) {
	const interval = 500 * time.Millisecond
	serverTLS, roots, err := autopushtest.LoopbackTLS()
	if err != nil {
		b.Fatal(err)
	}
	up, err := autopushtest.New(autopushtest.Config{TLS: serverTLS})
	if err != nil {
		b.Fatal(err)
	}
	defer up.Close()
	n := benchNode(b, node.Config{Upstream: up.URL(), UpstreamTLS: &tls.Config{RootCAs: roots},
		UpstreamSessions: 1, UpstreamPollInterval: interval})
	setupRelayed(b, up, n) // held, and stays connected
	dev, endpoint, upUAID := setupRelayed(b, up, n)
	time.Sleep(2 * interval)
	if up.Open(upUAID) {
		b.Fatal("the second device is held")
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	defer hc.CloseIdleConnections()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		req, _ := http.NewRequest("POST", endpoint, strings.NewReader("polled"))
		req.Header.Set("TTL", "600")
		req.Header.Set("Content-Encoding", "aes128gcm")
		resp, err := hc.Do(req)
		if err != nil || resp.StatusCode != 201 {
			b.Fatalf("post: %v %v", resp, err)
		}
		resp.Body.Close()
		f, err := dev.Next(time.Now().Add(interval + 5*time.Second))
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		dev.Ack(f)
		// The next post at a random point of the poll schedule, after
		// this poll's confirming round.
		b.StopTimer()
		time.Sleep(interval/5 + mrand.N(interval))
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Milliseconds()), "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Milliseconds()), "max-ms")
	if lat[len(lat)-1] > interval+interval/10+time.Second {
		b.Errorf("max latency %v over the interval (%v, jittered) and 1 s", lat[len(lat)-1], interval)
	}
}
