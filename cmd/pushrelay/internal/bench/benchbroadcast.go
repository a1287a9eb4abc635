package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pushrelay/pushrelay/cmd/pushrelay/internal/relayproc"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/wsock"
)

// benchBroadcast is `pushrelay bench broadcast`: how long one broadcast
// version change takes to reach every connected, subscribed device, beside
// a baseline of a bare write loop over as many WebSockets in the same run.
//
// The relay under test polls a megaphone stub the bench serves on
// loopback (every --poll-interval). N devices say hello subscribed to one
// id at its current version; the stub then serves a new version, and the
// figure is the time from the first answer carrying it to the last device
// reading the broadcast frame.
//
// The baseline is a child process (this binary, `bench
// broadcast-baseline`) serving WebSockets with relay/wsock, the relay's
// device listener code: gorilla's upgrade, then Conn.WriteFrame, which
// writes the frame header and payload with one writev on the TCP socket,
// the relay's own write path. One goroutine writes the same broadcast frame
// to N connections in turn, each read by a client in this process as the
// relay's devices are; the figure is from the "go" sent to the child to
// the last client reading the frame. It has none of the relay's work (no
// hub, no per-device outbox, no JSON per device) and no poll.
func benchBroadcast(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pushrelay bench broadcast", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("devices", 10000, "devices connected and subscribed (and baseline connections)")
	workers := fs.Int("workers", 32, "connections opened in parallel")
	id := fs.String("id", "remote-settings/monitor_changes", "broadcast id")
	poll := fs.Duration("poll-interval", time.Second, "the relay's megaphone_poll_interval (at least 1s)")
	timeout := fs.Duration("timeout", time.Minute, "how long to wait for every device to have the change (and for each connection phase)")
	baseline := fs.Bool("baseline", true, "measure the baseline write loop first")
	baselineOnly := fs.Bool("baseline-only", false, "measure the baseline only")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *baselineOnly {
		*baseline = true
	}
	if *n < 1 || *workers < 1 || *timeout <= 0 || *poll < time.Second {
		return errors.New("bench broadcast: --devices and --workers at least 1, --timeout positive, --poll-interval at least 1s")
	}
	// The clients are in this process, the servers (relay, baseline) in
	// children.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		if need := uint64(*n + 64); need > lim.Cur {
			return fmt.Errorf("bench broadcast: %d devices need about %d open files and the limit (ulimit -n) is %d: use fewer --devices or raise it", *n, need, lim.Cur)
		}
	}
	const v1, v2 = `"1700000000000"`, `"1700000060000"`
	frame, err := json.Marshal(map[string]any{"messageType": "broadcast", "broadcasts": map[string]string{*id: v2}})
	if err != nil {
		return err
	}

	var base time.Duration
	if *baseline {
		fmt.Fprintf(stderr, "baseline: %d WebSocket connections to a relay/wsock server in a child process\n", *n)
		base, err = broadcastBaseline(ctx, *n, *workers, *timeout, frame, stderr)
		if err != nil {
			return fmt.Errorf("bench broadcast: baseline: %w", err)
		}
		fmt.Fprintf(stdout, "baseline (one loop of wsock Conn.WriteFrame over %d sockets, start to last frame read): %s\n", *n, base.Round(time.Microsecond))
		if *baselineOnly {
			return nil
		}
	}

	stub, err := relayproc.NewMegaphoneStub("bench-token", map[string]string{*id: v1})
	if err != nil {
		return err
	}
	defer stub.Close()
	c, stop, err := benchRelay(ctx, "--megaphone-url", stub.URL(), "--megaphone-token", "bench-token",
		"--megaphone-poll-interval", poll.String())
	if err != nil {
		return err
	}
	defer stop()
	if err := waitUntil(ctx, *timeout, func() bool { v, _ := c.metric("pushrelay_broadcasts"); return v >= 1 }); err != nil {
		return fmt.Errorf("bench broadcast: the relay did not take the megaphone's first answer within %s (pushrelay_broadcasts stays 0)", *timeout)
	}

	fmt.Fprintf(stderr, "relay: connecting %d devices subscribed to %s at %s\n", *n, *id, v1)
	clients := make([]*pushclient.Client, *n)
	defer func() {
		for _, cl := range clients {
			if cl != nil {
				cl.Abort()
			}
		}
	}()
	err = openAll(ctx, *n, *workers, *timeout, stderr, func(ctx context.Context, i int) error {
		cl, err := pushclient.Dial(ctx, c.Device)
		if err != nil {
			return err
		}
		clients[i] = cl
		_, err = cl.Hello("", pushclient.HelloOptions{Broadcasts: map[string]string{*id: v1}})
		return err
	})
	if err != nil {
		return fmt.Errorf("bench broadcast: %w", err)
	}

	// Every device reads until it has the new version.
	got := make([]time.Time, *n)
	var have atomic.Int64
	var readers sync.WaitGroup
	deadline := time.Now().Add(*timeout + 2**poll)
	for i, cl := range clients {
		readers.Go(func() {
			for {
				f, err := cl.Next(deadline)
				if err != nil {
					return
				}
				if f.MessageType == pushproto.TypeBroadcast && f.Broadcasts[*id] == v2 {
					got[i] = time.Now()
					have.Add(1)
					return
				}
			}
		})
	}
	stub.Set(200, map[string]string{*id: v2})
	fmt.Fprintf(stderr, "relay: the megaphone serves %s=%s from now; waiting for %d devices (at most %s after it is served)\n", *id, v2, *n, *timeout)
	progress := time.Now()
	for have.Load() < int64(*n) && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
		if s := stub.Served(); !s.IsZero() && time.Since(s) > *timeout {
			break
		}
		if time.Since(progress) >= time.Second {
			progress = time.Now()
			fmt.Fprintf(stderr, "  %d of %d devices have it\n", have.Load(), *n)
		}
	}
	served := stub.Served()
	if k := have.Load(); k < int64(*n) {
		// Unblock the readers: their deadline may be a while off.
		for _, cl := range clients {
			cl.Abort()
		}
		readers.Wait()
		applied, _ := c.metric(`pushrelay_broadcast_changes_total{source="megaphone"}`)
		why := "the relay took the new version (pushrelay_broadcast_changes_total{source=\"megaphone\"} = %.0f) but did not send it to its devices: a build without broadcast fan-out (main before the bcast branch) sends none"
		if served.IsZero() {
			why = "the megaphone stub was never polled for the new version (%.0f changes applied)"
		}
		return fmt.Errorf("bench broadcast: %d of %d devices had %s=%s %s after it was served; "+why,
			k, *n, *id, v2, *timeout, applied)
	}
	readers.Wait()
	slices.SortFunc(got, func(a, b time.Time) int { return a.Compare(b) })
	last, first, med := got[len(got)-1].Sub(served), got[0].Sub(served), got[len(got)/2].Sub(served)
	fmt.Fprintf(stdout, "relay fan-out (megaphone answer with the new version to the last of %d devices): %s (first %s, median %s)\n",
		*n, last.Round(time.Microsecond), first.Round(time.Microsecond), med.Round(time.Microsecond))
	if *baseline && base > 0 {
		fmt.Fprintf(stdout, "ratio relay/baseline: %.2f (target ≤ 2)\n", float64(last)/float64(base))
	}
	return nil
}

// waitUntil polls cond every 20 ms until it holds, for at most limit.
func waitUntil(ctx context.Context, limit time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return errors.New("timed out")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// openAll runs open for 0..n-1 on workers goroutines, with a progress
// line every 1000, and stops at the first error or after limit.
func openAll(ctx context.Context, n, workers int, limit time.Duration, stderr io.Writer, open func(context.Context, int) error) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var next, opened atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := open(ctx, i); err != nil {
					errc <- fmt.Errorf("connection %d: %w", i, err)
					cancel()
					return
				}
				if v := opened.Add(1); v%1000 == 0 {
					fmt.Fprintf(stderr, "  %d connections open (%.0f/s)\n", v, float64(v)/time.Since(start).Seconds())
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return err
	}
	if int(opened.Load()) < n {
		return fmt.Errorf("%d of %d connections open after %s", opened.Load(), n, limit)
	}
	return nil
}

// broadcastBaseline starts the baseline server (this binary, `bench
// broadcast-baseline`, a child process as the relay is), opens n WebSocket
// clients to it, and times one loop writing frame to each connection: from
// the go sent to the child to the last client reading the frame.
func broadcastBaseline(ctx context.Context, n, workers int, limit time.Duration, frame []byte, stderr io.Writer) (time.Duration, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 3*limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, self, "bench", "broadcast-baseline", "--frame", string(frame))
	cmd.Env = relayproc.Env()
	cmd.Stderr = stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return 0, err
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() {
		in.Close() // the child releases its connections and exits
		cmd.Wait()
	}()
	out := bufio.NewScanner(outPipe)
	if !out.Scan() {
		return 0, errors.New("the baseline server said nothing")
	}
	url, ok := strings.CutPrefix(out.Text(), "listening ")
	if !ok {
		return 0, fmt.Errorf("the baseline server said %q", out.Text())
	}

	clients := make([]*wsock.ClientConn, n)
	defer func() {
		for _, cl := range clients {
			if cl != nil {
				cl.Abort()
			}
		}
	}()
	err = openAll(ctx, n, workers, limit, stderr, func(ctx context.Context, i int) error {
		cl, err := wsock.Dial(ctx, url, nil)
		clients[i] = cl
		return err
	})
	if err != nil {
		return 0, err
	}
	var last atomic.Int64 // UnixNano of the latest read
	var readers sync.WaitGroup
	var failed atomic.Int64
	deadline := time.Now().Add(limit)
	for _, cl := range clients {
		readers.Go(func() {
			b, err := cl.Read(deadline)
			if err != nil || !bytes.Equal(b, frame) {
				failed.Add(1)
				return
			}
			now := time.Now().UnixNano()
			for {
				old := last.Load()
				if now <= old || last.CompareAndSwap(old, now) {
					return
				}
			}
		})
	}
	start := time.Now()
	if _, err := fmt.Fprintf(in, "go %d\n", n); err != nil {
		return 0, err
	}
	readers.Wait()
	if out.Scan() {
		fmt.Fprintf(stderr, "  baseline server: %s\n", out.Text())
	}
	if k := failed.Load(); k > 0 {
		return 0, fmt.Errorf("%d of %d clients did not read the frame within %s", k, n, limit)
	}
	return time.Unix(0, last.Load()).Sub(start), nil
}

// benchBroadcastBaseline is the baseline's server, `pushrelay bench
// broadcast-baseline --frame F`: a relay/wsock server on loopback that
// prints "listening ws://ADDR/", takes connections, and on "go N" on its
// stdin writes F to the first N in one loop of Conn.WriteFrame, then
// prints how long the loop took. It exits when stdin closes.
func benchBroadcastBaseline(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pushrelay bench broadcast-baseline", flag.ContinueOnError)
	fs.SetOutput(stderr)
	frame := fs.String("frame", "", "the frame to write")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var mu sync.Mutex
	var conns []*wsock.Conn
	accepted := make(chan struct{}, 1<<20)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: wsock.Handler(wsock.Options{}, func(c *wsock.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		accepted <- struct{}{}
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer func() {
		srv.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Release()
		}
	}()
	fmt.Fprintf(stdout, "listening ws://%s/\n", ln.Addr())
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var n int
		if _, err := fmt.Sscanf(in.Text(), "go %d", &n); err != nil {
			return fmt.Errorf("baseline: %q: want go N", in.Text())
		}
		for range n {
			select {
			case <-accepted:
			case <-time.After(time.Minute):
				return errors.New("baseline: not every connection arrived")
			}
		}
		mu.Lock()
		loop := conns[:n]
		mu.Unlock()
		b := []byte(*frame)
		start := time.Now()
		for _, c := range loop {
			if err := c.WriteFrame(b); err != nil {
				return fmt.Errorf("baseline: write: %w", err)
			}
		}
		fmt.Fprintf(stdout, "wrote %d frames in %s\n", n, time.Since(start).Round(time.Microsecond))
	}
	return nil
}
