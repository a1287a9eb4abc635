package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/member"
)

func TestConfigClusterErrors(t *testing.T) {
	dir := t.TempDir()
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	short := base64.StdEncoding.EncodeToString(make([]byte, 20))
	ring := filepath.Join(dir, "ring")
	os.WriteFile(ring, []byte("# none\n"), 0o600)
	cl := []string{"--cluster-listen", "127.0.0.1:0", "--node-name", "gw-1"}
	siteKeys := linkKeys(t, "gw-1")["gw-1"]
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"join without listen", []string{"--join", "10.0.0.2:7946"}, "join is set but cluster_listen is not"},
		{"key without listen", []string{"--cluster-key", key}, "cluster_key is set but cluster_listen is not"},
		{"listen without key", cl, "cluster_listen needs cluster_key or cluster_keyring_file"},
		{"bad key length", append(cl, "--cluster-key", short), "cluster_key: 20 bytes, want 16, 24 or 32"},
		{"key not base64", append(cl, "--cluster-key", "not base64!"), "cluster_key: not base64"},
		{"key and file", append(cl, "--cluster-key", key, "--cluster-keyring-file", ring), "set one"},
		{"empty keyring", append(cl, "--cluster-keyring-file", ring), "no key in it"},
		{"bad join", append(cl, "--cluster-key", key, "--join", "10.0.0.2"), `join "10.0.0.2"`},
		{"bad listen", []string{"--cluster-listen", "nowhere", "--cluster-key", key}, "cluster_listen"},
		{"bad name", []string{"--cluster-listen", ":0", "--cluster-key", key, "--node-name", "gw 1"}, `node_name "gw 1"`},
		{"probe timeout", append(cl, "--cluster-key", key, "--cluster-probe-timeout", "1s"), "cluster_probe_timeout 1s must be shorter"},
		{"no site keys", append(cl, "--cluster-key", key), "cluster_listen needs link_cert and link_key"},
		{"port 0, no peer listen", slices.Concat(cl, []string{"--cluster-key", key}, siteKeys), "set cluster_peer_listen"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := loadConfig("t", c.args, env(nil), &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to contain %q", err, c.want)
			}
		})
	}
	// A ws:// upstream, or a quic:// one (the relay link to a parent), is
	// held by one member at a time: allowed.
	for _, up := range []string{"ws://10.0.0.9:8080", "quic://10.0.0.9:8443"} {
		if _, err := loadConfig("t", slices.Concat(cl, siteKeys, []string{"--cluster-key", key, "--cluster-peer-listen", "127.0.0.1:0", "--upstream", up}), env(nil), &bytes.Buffer{}); err != nil {
			t.Fatalf("a site member with upstream %s: %v", up, err)
		}
	}
	// The site as a parent: every member listens, the holder takes the
	// children.
	if _, err := loadConfig("t", slices.Concat(cl, siteKeys, []string{"--cluster-key", key, "--cluster-peer-listen", "127.0.0.1:0", "--relay-listen", "127.0.0.1:0"}), env(nil), &bytes.Buffer{}); err != nil {
		t.Fatalf("a site member with relay_listen: %v", err)
	}
	cfg, err := loadConfig("t", slices.Concat(cl, siteKeys, []string{"--cluster-key", key, "--join", "10.0.0.2:7946, 10.0.0.3:7946", "--cluster-peer-listen", "127.0.0.1:0"}), env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	var dump bytes.Buffer
	cfg.dump(&dump)
	if strings.Contains(dump.String(), key) {
		t.Error("the effective config shows cluster_key")
	}
	if got := cfg.joinAddrs(); len(got) != 2 || got[1] != "10.0.0.3:7946" {
		t.Errorf("join %v", got)
	}
}

// clusterMembers reads /status's cluster section: name → state.
func (p *relayProc) clusterMembers() map[string]string {
	out := map[string]string{}
	cl, _ := p.status()["cluster"].(map[string]any)
	ms, _ := cl["members"].([]any)
	for _, m := range ms {
		m := m.(map[string]any)
		out[m["name"].(string)], _ = m["state"].(string)
	}
	return out
}

// TestE2EClusterMembership runs three built binaries as one site: b and
// c join a; every /status lists three alive members; c is SIGKILLed and
// the others list it failed within the tuned detection bound; b stops
// (SIGTERM) and a lists it left, not failed.
func TestE2EClusterMembership(t *testing.T) {
	raw := make([]byte, 32)
	rand.Read(raw)
	key := base64.StdEncoding.EncodeToString(raw)
	keys := linkKeys(t, "a", "b", "c")
	first := t.TempDir()
	node := func(name string, join ...string) *relayProc {
		args := slices.Concat([]string{"--node-name", name, "--cluster-listen", "127.0.0.1:0", "--cluster-peer-listen", "127.0.0.1:0",
			"--cluster-key", key, "--log-level", "info"}, keys[name])
		dir := first
		if len(join) > 0 {
			args = append(args, "--join", strings.Join(join, ","))
			// One set of keys per site: the first member's (docs/cluster.md).
			dir = t.TempDir()
			for _, f := range []string{"endpoint.key", "wake.key"} {
				data, err := os.ReadFile(filepath.Join(first, f))
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, f), data, 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
		return startRelay(t, dir, args...)
	}
	a := node("a")
	cl, _ := a.status()["cluster"].(map[string]any)
	seed, _ := cl["addr"].(string)
	if seed == "" {
		t.Fatalf("a's /status has no cluster address: %v", a.status())
	}
	b := node("b", seed)
	c := node("c", seed)
	relays := map[string]*relayProc{"a": a, "b": b, "c": c}

	waitUntil := func(limit time.Duration, what string, cond func() bool) time.Duration {
		t.Helper()
		start := time.Now()
		for !cond() {
			if time.Since(start) > limit {
				for n, p := range relays {
					t.Logf("%s sees %v", n, p.clusterMembers())
				}
				t.Fatalf("after %s: %s", limit, what)
			}
			time.Sleep(20 * time.Millisecond)
		}
		return time.Since(start)
	}
	see := func(ps []*relayProc, want map[string]string) func() bool {
		return func() bool {
			for _, p := range ps {
				got := p.clusterMembers()
				for n, s := range want {
					if got[n] != s {
						return false
					}
				}
			}
			return true
		}
	}
	waitUntil(15*time.Second, "every /status lists 3 alive members",
		see([]*relayProc{a, b, c}, map[string]string{"a": "alive", "b": "alive", "c": "alive"}))
	// The three form the site (cluster_expect 3): each is ready then.
	for _, p := range []*relayProc{a, b, c} {
		if err := p.WaitReady(20 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	// The metadata carries the version and the admin address.
	cl, _ = b.status()["cluster"].(map[string]any)
	for _, m := range cl["members"].([]any) {
		m := m.(map[string]any)
		if m["version"] != version || m["admin_addr"] == "" {
			t.Errorf("b sees %v", m)
		}
	}

	c.Cmd.Process.Signal(syscall.SIGKILL)
	<-c.Done
	delete(relays, "c")
	bound := member.LANTiming().DetectionBound(3)
	took := waitUntil(bound+2*time.Second, "a and b list c failed",
		see([]*relayProc{a, b}, map[string]string{"a": "alive", "b": "alive", "c": "failed"}))
	t.Logf("c listed failed by a and b %s after SIGKILL (bound %s, polled every 20 ms)", took.Round(time.Millisecond), bound)
	if v := a.metric(`pushrelay_member_members{state="failed"}`); v != 1 {
		t.Errorf("a's failed members gauge %v", v)
	}

	b.stop()
	delete(relays, "b")
	waitUntil(5*time.Second, "a lists b left", see([]*relayProc{a}, map[string]string{"b": "left", "c": "failed"}))
	a.stop()
}
