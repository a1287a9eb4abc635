package main

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/cmd/pushrelay/internal/relayproc"
)

// The load tool runs its scenarios end to end on small sizes, so it keeps
// working as the relay changes (the figures in docs/benchmarks.md come
// from it).
func TestE2EBenchTool(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"conns", "--n", "50", "--hold", "200ms"}, "per idle device connection:"},
		{[]string{"throughput", "--devices", "5", "--senders", "4", "--messages", "300"}, "end-to-end (post → deliver → ack):"},
		{[]string{"throughput", "--devices", "5", "--senders", "4", "--messages", "200", "--rate", "400"}, "POST latency:"},
		{[]string{"batch", "--devices", "5", "--senders", "4", "--batch", "50", "--messages", "300", "--rounds", "1"}, "batch/single stored:"},
		{[]string{"drain", "--devices", "5", "--messages", "40"}, "all 200 received and acked"},
		{[]string{"halfopen", "--n", "40", "--sources", "2", "--max-conns", "100", "--max-conns-per-ip", "10", "--hold", "1s"}, "endpoint connections open: 21; refused per source: 20;"},
		{[]string{"startup", "--messages", "500", "--per-device", "100", "--runs", "1"}, "start to ready"},
		{[]string{"upstream", "--n", "40", "--runs", "1", "--hold", "200ms", "--devices", "5", "--messages", "200"}, "relayed through held sessions, 5 devices"},
		{[]string{"broadcast", "--devices", "50", "--baseline-only"}, "baseline (one loop of wsock Conn.WriteFrame over 50 sockets"},
		{[]string{"link", "--uaids", "40", "--devices", "10", "--messages", "300", "--backlog", "300", "--outage", "0s", "--runs", "1",
			"--children", "2", "--hold", "200ms", "--phases", "memory,throughput,drain"}, "backlog drain over one link (median of 1):"},
		{[]string{"site", "--devices", "6", "--senders", "4", "--messages", "300", "--latency-messages", "3", "--runs", "1", "--failover-runs", "1"},
			"failover, leader SIGKILLed under load (median of 1):"},
	}
	for _, c := range cases {
		t.Run(c.args[0], func(t *testing.T) {
			cmd := exec.Command(binPath, append([]string{"bench"}, c.args...)...)
			cmd.Env = relayproc.Env()
			out, err := cmd.Output()
			if err != nil || !strings.Contains(string(out), c.want) {
				t.Fatalf("bench %v: %v\n%s", c.args, err, out)
			}
		})
	}
}

// bench broadcast runs end to end: the megaphone stub is polled, the relay
// takes the change, and either every device gets it (a relay that fans
// broadcasts out) or the bench says, within its timeout, that the relay
// took the version and sent it to none.
func TestE2EBenchBroadcast(t *testing.T) {
	cmd := exec.Command(binPath, "bench", "broadcast", "--devices", "30", "--timeout", "4s", "--baseline=false")
	cmd.Env = relayproc.Env()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	switch {
	case err == nil && strings.Contains(string(out), "relay fan-out (megaphone answer with the new version to the last of 30 devices):"):
	case err != nil && strings.Contains(stderr.String(), `the relay took the new version (pushrelay_broadcast_changes_total{source="megaphone"} = 2) but did not send it`):
	default:
		t.Fatalf("bench broadcast: %v\n%s\n%s", err, out, stderr.String())
	}
}

// bench throughput times every message from its POST to its device,
// matching each notification to its POST by message id (the 201's
// Location against the notification's version), not by order: at 4,000
// msg/s from eight connections each device has several posts in flight
// at once. Every message posted must be matched, none left over on either
// side.
func TestE2EBenchThroughputPostToDevice(t *testing.T) {
	// One load loop, and three: posters, devices, messages and rate
	// shared out (8 senders over 3 loops), each loop matching its own.
	for _, loops := range []string{"1", "3"} {
		t.Run("loops="+loops, func(t *testing.T) { benchPostToDevice(t, loops) })
	}
}

func benchPostToDevice(t *testing.T, loops string) {
	cmd := exec.Command(binPath, "bench", "throughput", "--devices", "3", "--senders", "8", "--messages", "600", "--rate", "4000", "--max-time", "30s", "--load-threads", loops)
	cmd.Env = relayproc.Env()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bench throughput: %v\n%s\n%s", err, out, stderr.String())
	}
	var posted, failed, acked, matched, of, early, lostPosts, lostNotes int
	var p50, p90, p99, pmax string
	for _, line := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(line, "devices "):
			if !strings.HasSuffix(line, "load generator loops "+loops) {
				t.Errorf("want %s load generator loops: %s", loops, line)
			}
		case strings.HasPrefix(line, "posted (201)"):
			fmt.Sscanf(line, "posted (201) %d, failed %d, acked by devices %d", &posted, &failed, &acked)
		case strings.HasPrefix(line, "post → device latency:"):
			fmt.Sscanf(line, "post → device latency: p50 %s  p90 %s  p99 %s  max %s", &p50, &p90, &p99, &pmax)
		case strings.HasPrefix(line, "post → device matched by message id:"):
			fmt.Sscanf(line, "post → device matched by message id: %d of %d posted (%d notifications read before their 201); unmatched: %d posts without a notification, %d notifications without a post",
				&matched, &of, &early, &lostPosts, &lostNotes)
		}
	}
	if posted != 600 || failed != 0 || acked != 600 {
		t.Fatalf("posted %d, failed %d, acked %d; want 600, 0, 600\n%s", posted, failed, acked, out)
	}
	if matched != posted || of != posted || early > matched || lostPosts != 0 || lostNotes != 0 {
		t.Fatalf("matched %d of %d (posted %d; %d early), unmatched %d posts and %d notifications\n%s", matched, of, posted, early, lostPosts, lostNotes, out)
	}
	for _, q := range []string{p50, p90, p99, pmax} {
		if d, err := time.ParseDuration(q); err != nil || d <= 0 {
			t.Fatalf("post → device quantiles %q %q %q %q\n%s", p50, p90, p99, pmax, out)
		}
	}
}
