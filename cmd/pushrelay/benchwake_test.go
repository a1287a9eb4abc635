package main

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/pushrelay/pushrelay/cmd/pushrelay/internal/relayproc"
)

// bench wake runs end to end on a few devices: every device is woken by
// exactly one datagram, reconnects and acks, with the compatible datagram
// on trusted ranges and with authenticated datagrams on STUN-proven
// addresses. Port 0 keeps it clear of anything else on the machine.
func TestE2EBenchWake(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"cidrs", []string{"--devices", "50"},
			[]string{"all 50 devices woken and acked", "devices with exactly 1: 50,", "relay sent 50 (first 50, retry 0)", "wake limits off"}},
		{"stun-auth", []string{"--devices", "20", "--auth", "--stun"},
			[]string{"all 20 devices woken and acked", "devices with exactly 1: 20,", "wrong or bad MAC: 0", "authenticated datagrams"}},
		// Refreshes in place for 3 s at 60× (a flush a second): none
		// written one by one.
		{"refresh", []string{"--devices", "20", "--refresh", "3s", "--compress", "60", "--flush-interval", "1m"},
			[]string{"refresh: 20 devices refresh", "every 500ms", "replay 0, error 0", "bindings written 0, refreshed in memory", "bytes written per device per day"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cmd := exec.Command(binPath, append([]string{"bench", "wake", "--port", "0", "--timeout", "60s"}, c.args...)...)
			cmd.Env = relayproc.Env()
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("bench wake %v: %v\n%s", c.args, err, out)
			}
			for _, w := range c.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("bench wake %v: no %q in\n%s", c.args, w, out)
				}
			}
		})
	}
}
