package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/cmd/pushrelay/internal/relayproc"
)

// The issue #5 scenarios (stuck, storm) run end to end on small sizes and
// print every figure docs/benchmarks.md records (halfopen: bench_test.go).
func TestE2EBenchStuck(t *testing.T) {
	cases := []struct {
		args []string
		want []string
		root bool // needs a network namespace
	}{
		{[]string{"stuck", "--healthy", "3", "--stuck", "3", "--stored", "20", "--direct", "5", "--duration", "2s"},
			[]string{"without stuck devices:", "with 3 stuck devices (rcvbuf 4096, mss 1448;", "healthy push->device latency: p50",
				"stuck devices' posts: 75 answered 201, 0 failed", "relay RSS: before", "hello timeout 2s: ", "probes closed after median",
				"healthy p99 with stuck devices / without:"}, false},
		{[]string{"stuck", "--vanish", "--baseline=false", "--healthy", "3", "--stuck", "3", "--stored", "20", "--direct", "5", "--duration", "2s"},
			[]string{"with 3 devices whose network vanished", "healthy push->device latency: p50", "stuck devices' posts: 75 answered 201, 0 failed"}, true},
		{[]string{"storm", "--n", "200", "--healthy", "2"},
			[]string{"reconnect storm: 200 devices reconnect at once: 200 back in", "0 failed", "per reconnecting device", "the relay kept running"}, false},
	}
	for _, c := range cases {
		t.Run(c.args[0], func(t *testing.T) {
			if c.root && os.Geteuid() != 0 {
				t.Skip("needs root for a network namespace")
			}
			cmd := exec.Command(binPath, append([]string{"bench"}, c.args...)...)
			cmd.Env = relayproc.Env()
			done := time.AfterFunc(2*time.Minute, func() { cmd.Process.Kill() })
			defer done.Stop()
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("bench %v: %v\n%s", c.args, err, out)
			}
			for _, w := range c.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("bench %v: no %q in\n%s", c.args, w, out)
				}
			}
		})
	}
}
