package main

import (
	"os/exec"
	"strings"
	"testing"

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
