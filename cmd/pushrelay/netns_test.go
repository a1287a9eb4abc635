package main

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/cmd/pushrelay/internal/relayproc"
)

// netLab is three network namespaces made for one test: a device behind a
// NAT, the NAT, and the relay's network.
//
//	dev 10.77.1.2 ── 10.77.1.1 nat 10.77.2.1 ── 10.77.2.2 relay
//
// The NAT masquerades onto ports 40000-40100, so the device's own port
// (which it claims in hello) is never the one the relay sees.
type netLab struct {
	t               *testing.T
	dev, nat, relay string
}

func runTool(t *testing.T, name string, args ...string) error {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// newNetLab builds the namespaces, or skips the test saying why it cannot.
func newNetLab(t *testing.T) *netLab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (Debian: iproute2, nftables)", tool)
		}
	}
	id := os.Getpid() % 100000
	l := &netLab{t: t, dev: fmt.Sprintf("prd%d", id), nat: fmt.Sprintf("prn%d", id), relay: fmt.Sprintf("prr%d", id)}
	if err := runTool(t, "ip", "netns", "add", l.dev); err != nil {
		t.Skipf("cannot create a network namespace here: %v", err)
	}
	t.Cleanup(func() {
		for _, ns := range []string{l.dev, l.nat, l.relay} {
			exec.Command("ip", "netns", "del", ns).Run()
		}
	})
	dv, nd := fmt.Sprintf("prd%dv", id), fmt.Sprintf("prn%dd", id)
	nr, rv := fmt.Sprintf("prn%dr", id), fmt.Sprintf("prr%dv", id)
	steps := [][]string{
		{"ip", "netns", "add", l.nat},
		{"ip", "netns", "add", l.relay},
		{"ip", "link", "add", dv, "netns", l.dev, "type", "veth", "peer", "name", nd, "netns", l.nat},
		{"ip", "link", "add", nr, "netns", l.nat, "type", "veth", "peer", "name", rv, "netns", l.relay},
		{"ip", "-n", l.dev, "addr", "add", "10.77.1.2/24", "dev", dv},
		{"ip", "-n", l.nat, "addr", "add", "10.77.1.1/24", "dev", nd},
		{"ip", "-n", l.nat, "addr", "add", "10.77.2.1/24", "dev", nr},
		{"ip", "-n", l.relay, "addr", "add", "10.77.2.2/24", "dev", rv},
		{"ip", "-n", l.dev, "link", "set", "lo", "up"},
		{"ip", "-n", l.relay, "link", "set", "lo", "up"},
		{"ip", "-n", l.dev, "link", "set", dv, "up"},
		{"ip", "-n", l.nat, "link", "set", nd, "up"},
		{"ip", "-n", l.nat, "link", "set", nr, "up"},
		{"ip", "-n", l.relay, "link", "set", rv, "up"},
		{"ip", "-n", l.dev, "route", "add", "default", "via", "10.77.1.1"},
		{"ip", "netns", "exec", l.nat, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
	}
	for _, s := range steps {
		if err := runTool(t, s[0], s[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	rules := fmt.Sprintf("table ip pushrelay_test {\n chain post {\n  type nat hook postrouting priority srcnat;\n  oifname %q meta l4proto { tcp, udp } masquerade to :40000-40100\n }\n}\n", nr)
	cmd := exec.Command("ip", "netns", "exec", l.nat, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("nftables NAT is not available here: %v: %s", err, out)
	}
	return l
}

// start runs the built binary inside namespace ns and returns a reader of
// its stdout lines; it is killed at cleanup.
func (l *netLab) start(ctx context.Context, ns string, args ...string) (<-chan string, *syncBuffer) {
	l.t.Helper()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, binPath}, args...)...)
	cmd.Env = relayproc.Env()
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		l.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	lines := make(chan string, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		cmd.Wait()
	}()
	l.t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if l.t.Failed() {
			l.t.Logf("%s %s stderr:\n%s", ns, args[0], tail(stderr.String(), 30))
		}
	})
	return lines, stderr
}

// expectLine waits for a line with prefix and returns it.
func expectLine(t *testing.T, ctx context.Context, lines <-chan string, prefix string) string {
	t.Helper()
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("process ended before %q", prefix)
			}
			if strings.HasPrefix(strings.TrimSpace(l), prefix) {
				return strings.TrimSpace(l)
			}
		case <-ctx.Done():
			t.Fatalf("no line %q in time", prefix)
		}
	}
}

// A device behind a NAT is woken at the address STUN taught the relay: the
// NAT's address and a port it chose, not the address the device claims
// (which the relay cannot even route to).
func TestWakeBehindNAT(t *testing.T) {
	l := newNetLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	relay, _ := l.start(ctx, l.relay, "run", "--data-dir", t.TempDir(),
		"--device-listen", "10.77.2.2:0", "--endpoint-listen", "10.77.2.2:0", "--admin-listen", "",
		"--stun-listen", "10.77.2.2:0", "--wake-idle-close", "1s", "--log-level", "debug")
	devURL := strings.Fields(expectLine(t, ctx, relay, "devices"))[1]
	stunAddr := strings.Fields(expectLine(t, ctx, relay, "stun"))[1]

	dev, devErr := l.start(ctx, l.dev, "device", "--server", devURL, "--wake", "10.77.1.2:5000", "--count", "1", "--timeout", "50s")
	sub := strings.TrimPrefix(expectLine(t, ctx, dev, "subscription "), "subscription ")
	seen := strings.TrimPrefix(expectLine(t, ctx, dev, "stun relay sees the wake socket at "), "stun relay sees the wake socket at ")
	mapped, err := netip.ParseAddrPort(seen)
	if err != nil {
		t.Fatal(err)
	}
	if mapped.Addr() != netip.MustParseAddr("10.77.2.1") || mapped.Port() < 40000 || mapped.Port() > 40100 {
		t.Fatalf("relay saw the device at %s, want the NAT's 10.77.2.1:40000-40100", mapped)
	}
	expectLine(t, ctx, dev, "sleeping")

	send := exec.CommandContext(ctx, "ip", "netns", "exec", l.relay, binPath, "send", "--subscription", sub, "--data", "through the NAT")
	send.Env = relayproc.Env()
	if out, err := send.CombinedOutput(); err != nil {
		t.Fatalf("send: %v\n%s", err, out)
	}
	if w := expectLine(t, ctx, dev, "woken by "); !strings.HasSuffix(w, "from "+stunAddr) {
		t.Errorf("%q: the datagram should come from the STUN socket %s", w, stunAddr)
	}
	if n := expectLine(t, ctx, dev, "notification "); !strings.Contains(n, `data="through the NAT"`) {
		t.Errorf("notification %q", n)
	}
	for range dev {
	}
	if strings.Contains(devErr.String(), "ignored a wake datagram") {
		t.Errorf("device saw a datagram it could not verify:\n%s", devErr.String())
	}
}
