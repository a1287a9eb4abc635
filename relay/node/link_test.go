package node

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/linkauth"
	pushid "github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
)

func init() {
	// quic-go warns when it cannot get 7 MiB socket buffers, as it
	// cannot in an unprivileged test run.
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
}

// linkSite is a site CA and the relays it issued.
type linkSite struct{ dir string }

func newLinkSite(t *testing.T) *linkSite {
	t.Helper()
	s := &linkSite{dir: t.TempDir()}
	if _, err := linkauth.NewCA(filepath.Join(s.dir, "ca"), "", false); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *linkSite) creds(t *testing.T, name, token string) *linkauth.Credentials {
	t.Helper()
	out := filepath.Join(s.dir, "relays")
	cert, key := filepath.Join(out, name+".crt"), filepath.Join(out, name+".key")
	if _, err := os.Stat(cert); err != nil {
		if _, err := linkauth.Issue(filepath.Join(s.dir, "ca"), name, out, false); err != nil {
			t.Fatal(err)
		}
	}
	if token != "" {
		// A token child presents no certificate.
		cert, key = "", ""
		if name == "core" {
			cert, key = filepath.Join(out, name+".crt"), filepath.Join(out, name+".key")
		}
	}
	c, err := linkauth.Load(cert, key, filepath.Join(s.dir, "ca", linkauth.CACertFile), nil, token)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// parentConfig and childConfig are a core relay taking children and an
// edge relay linked to it.
func parentConfig(t *testing.T, site *linkSite, token string) Config {
	cfg := testConfig(t, "core")
	cfg.RelayListen = "127.0.0.1:0"
	cfg.LinkName = "core"
	cfg.LinkCredentials = site.creds(t, "core", token)
	return cfg
}

func childConfig(t *testing.T, site *linkSite, parent *Node, token string) Config {
	cfg := testConfig(t, "edge")
	cfg.Upstream = "quic://" + parent.RelayAddr().String()
	cfg.LinkName = "edge-1"
	cfg.LinkCredentials = site.creds(t, "edge-1", token)
	cfg.UpstreamBackoffMin, cfg.UpstreamBackoffMax = 50*time.Millisecond, 200*time.Millisecond
	return cfg
}

// eventually polls cond every 20 ms for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10s: %s", what)
		}
	}
}

// reconnect says hello again as s's device on n.
func reconnect(t *testing.T, n *Node, s *subscriber) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pushclient.Dial(ctx, n.DeviceURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Abort() })
	if h, err := c.Hello(s.uaid, pushclient.HelloOptions{}); err != nil || h.UAID != s.uaid {
		t.Fatalf("hello again: %v %+v", err, h)
	}
	s.c = c
}

// One tier: a device on the edge registers and gets the core's endpoint;
// what app servers post there reaches the device through the link; with
// the edge down the core keeps the messages, and they drain when it is
// back; an unregister on the edge reaches the core.
func TestRelayLink(t *testing.T) {
	site := newLinkSite(t)
	core := start(t, parentConfig(t, site, ""))
	ecfg := childConfig(t, site, core.Node, "")
	edge := start(t, ecfg)

	s := subscribe(t, edge.Node, "")
	if !strings.HasPrefix(s.endpoint, core.PublicURL()+"/") {
		t.Fatalf("endpoint %s is not the core's (%s)", s.endpoint, core.PublicURL())
	}
	postTo(t, s, "one")
	if got := receive(t, s); got != "one" {
		t.Fatalf("got %q", got)
	}
	code, body := httpGet(t, "http://"+core.AdminAddr().String()+"/status?format=json")
	if code != 200 || !strings.Contains(body, `"name":"edge-1","connected":true`) {
		t.Fatalf("core /status %d: %s", code, body)
	}

	// The device's ack is deleted in the background: wait for it, or
	// the message comes again after the restart (as it may after any).
	eventually(t, "the edge deleted what the device acked", func() bool {
		st, err := edge.Store().Stats()
		return err == nil && st.Waiting == 0
	})
	// The edge goes away; the core keeps what is posted meanwhile.
	edge.stop(t)
	postTo(t, s, "two")
	postTo(t, s, "three")
	edge = start(t, ecfg)
	reconnect(t, edge.Node, s)
	got := []string{receive(t, s), receive(t, s)}
	if got[0] != "two" || got[1] != "three" {
		t.Fatalf("after the outage got %q", got)
	}
	eventually(t, "the core deleted what the edge acked", func() bool {
		st, err := core.Store().Stats()
		return err == nil && st.Waiting == 0
	})
	code, body = httpGet(t, "http://"+edge.AdminAddr().String()+"/status?format=json")
	var st struct {
		Link struct {
			Parent struct {
				Name      string
				Connected bool
			}
		}
	}
	if code != 200 || json.Unmarshal([]byte(body), &st) != nil || !st.Link.Parent.Connected || st.Link.Parent.Name != "core" {
		t.Fatalf("edge /status %d: %s", code, body)
	}
	if code, page := httpGet(t, "http://"+core.AdminAddr().String()+"/status"); code != 200 || !strings.Contains(page, "child relay edge-1") {
		t.Fatalf("core /status page %d: %s", code, page)
	}

	// The unregister travels to the core: its endpoint is gone.
	if r, err := s.c.Unregister(s.channel); err != nil || r.Status != 200 {
		t.Fatalf("unregister: %v %+v", err, r)
	}
	u, _ := pushid.ParseUAID(s.uaid)
	ch, _ := pushid.ParseChannelID(s.channel)
	eventually(t, "the core forgot the channel", func() bool {
		_, ok, err := core.Store().Channel(u, ch)
		return err == nil && !ok
	})
	req, _ := http.NewRequest("POST", s.endpoint, nil)
	req.Header.Set("TTL", "60")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusGone {
		t.Fatalf("post after the unregister: %s", resp.Status)
	}
	edge.stop(t)
	core.stop(t)
}

// A child whose certificate the core does not trust, and one with the
// wrong token, are refused, and both ends say why; one with the right
// token (and no certificate) is taken.
func TestRelayLinkRefused(t *testing.T) {
	t.Run("ca", func(t *testing.T) {
		site, other := newLinkSite(t), newLinkSite(t)
		core := start(t, parentConfig(t, site, ""))
		ecfg := childConfig(t, other, core.Node, "")
		// The edge trusts the core's CA too; the core does not trust the
		// edge's.
		both := filepath.Join(t.TempDir(), "both.crt")
		a, _ := os.ReadFile(filepath.Join(site.dir, "ca", linkauth.CACertFile))
		b, _ := os.ReadFile(filepath.Join(other.dir, "ca", linkauth.CACertFile))
		os.WriteFile(both, append(a, b...), 0o600)
		var err error
		rel := filepath.Join(other.dir, "relays", "edge-1")
		if ecfg.LinkCredentials, err = linkauth.Load(rel+".crt", rel+".key", both, nil, ""); err != nil {
			t.Fatal(err)
		}
		edge := start(t, ecfg)
		eventually(t, "the core counted the refusal", func() bool {
			return core.reg.Value(`pushrelay_link_handshakes_total{result="bad_ca"}`) >= 1
		})
		eventually(t, "the edge says why", func() bool {
			st := edge.child.Status()
			return !st.Connected && st.LastError != ""
		})
		t.Logf("edge: %s", edge.child.Status().LastError)
	})
	t.Run("token accepted", func(t *testing.T) {
		site := newLinkSite(t)
		const tok = "right-token-right-token-right-token-1234567"
		core := start(t, parentConfig(t, site, tok))
		edge := start(t, childConfig(t, site, core.Node, tok))
		s := subscribe(t, edge.Node, "")
		postTo(t, s, "by token")
		if got := receive(t, s); got != "by token" {
			t.Fatalf("got %q", got)
		}
	})
	t.Run("token", func(t *testing.T) {
		site := newLinkSite(t)
		core := start(t, parentConfig(t, site, "right-token-right-token-right-token-1234567"))
		edge := start(t, childConfig(t, site, core.Node, "wrong-token-wrong-token-wrong-token-1234567"))
		eventually(t, "the core refused the child", func() bool {
			return core.reg.Value(`pushrelay_link_children_refused_total{code="unknown child"}`) >= 1
		})
		eventually(t, "the edge says why", func() bool {
			st := edge.child.Status()
			return !st.Connected && strings.Contains(st.LastError, "wrong token")
		})
		t.Logf("edge: %s", edge.child.Status().LastError)
	})
}

// Three tiers: device → edge → regional → core. The regional relay is a
// child of the core and a parent of the edge; the device's endpoint is
// the core's, and a post there reaches it through both links.
func TestRelayLinkThreeTiers(t *testing.T) {
	site := newLinkSite(t)
	core := start(t, parentConfig(t, site, ""))
	mcfg := childConfig(t, site, core.Node, "")
	mcfg.LinkName = "regional"
	mcfg.LinkCredentials = site.creds(t, "regional", "")
	mcfg.RelayListen = "127.0.0.1:0"
	regional := start(t, mcfg)
	edge := start(t, childConfig(t, site, regional.Node, ""))
	s := subscribe(t, edge.Node, "")
	if !strings.HasPrefix(s.endpoint, core.PublicURL()+"/") {
		t.Fatalf("endpoint %s is not the core's (%s)", s.endpoint, core.PublicURL())
	}
	for _, text := range []string{"three", "tiers"} {
		postTo(t, s, text)
		if got := receive(t, s); got != text {
			t.Fatalf("got %q, want %q", got, text)
		}
	}
	eventually(t, "every tier deleted what the next one acked", func() bool {
		for _, n := range []*running{core, regional} {
			if st, err := n.Store().Stats(); err != nil || st.Waiting != 0 {
				return false
			}
		}
		return true
	})
}

// Broadcasts flow down a chain of three tiers: the core's versions (its
// admin's) reach a device on the edge two links down, and so do their
// changes; each tier below keeps them under the source "parent".
func TestRelayLinkThreeTiersBroadcasts(t *testing.T) {
	const id = "remote-settings/monitor_changes"
	site := newLinkSite(t)
	core := start(t, parentConfig(t, site, ""))
	if _, err := core.broadcasts.Set(context.Background(), "admin", map[string]string{id: "1"}); err != nil {
		t.Fatal(err)
	}
	mcfg := childConfig(t, site, core.Node, "")
	mcfg.LinkName = "regional"
	mcfg.LinkCredentials = site.creds(t, "regional", "")
	mcfg.RelayListen = "127.0.0.1:0"
	regional := start(t, mcfg)
	edge := start(t, childConfig(t, site, regional.Node, ""))
	eventually(t, "the edge has the core's version", func() bool { return edge.broadcasts.Versions()[id] == "1" })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pushclient.Dial(ctx, edge.DeviceURL())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Abort()
	h, err := c.Hello("", pushclient.HelloOptions{Broadcasts: map[string]string{id: "0"}})
	if err != nil {
		t.Fatal(err)
	}
	if h.Broadcasts[id] != "1" {
		t.Fatalf("hello answered broadcasts %v, want %s: 1", h.Broadcasts, id)
	}
	if _, err := core.broadcasts.Set(context.Background(), "admin", map[string]string{id: "2"}); err != nil {
		t.Fatal(err)
	}
	f, err := c.Next(time.Now().Add(10 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if f.MessageType != pushproto.TypeBroadcast || f.Broadcasts[id] != "2" {
		t.Fatalf("device got %+v, want the broadcast %s: 2", f, id)
	}
	for name, n := range map[string]*running{"regional": regional, "edge": edge} {
		if got := n.Metrics().Value(`pushrelay_broadcast_changes_total{source="parent"}`); got != 2 {
			t.Errorf("%s: %v changes from the parent, want 2", name, got)
		}
	}
}
