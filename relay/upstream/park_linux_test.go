//go:build linux

package upstream_test

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net/http"
	"runtime/pprof"
	"strings"
	"testing"

	"github.com/pushrelay/pushrelay/relay/node"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/upstream/autopushtest"
)

// heldGoroutines counts the goroutines running a held session's code.
func heldGoroutines() int {
	var b bytes.Buffer
	pprof.Lookup("goroutine").WriteTo(&b, 2)
	n := 0
	for _, g := range strings.Split(b.String(), "\n\n") {
		if strings.Contains(g, "upstream.(*held)") {
			n++
		}
	}
	return n
}

// An idle held session parks on the link's poller: no goroutine runs for
// it. Notifications, several in a burst, still arrive through it, and the
// session parks again after each.
func TestHeldSessionsPark(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "ws", true: "wss"}[useTLS], func(t *testing.T) {
			upCfg := autopushtest.Config{}
			cfg := node.Config{}
			hc := http.DefaultClient
			if useTLS {
				srvTLS, roots, err := autopushtest.LoopbackTLS()
				if err != nil {
					t.Fatal(err)
				}
				upCfg.TLS = srvTLS
				cfg.UpstreamTLS = &tls.Config{RootCAs: roots}
				hc = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
			}
			up := startUpstream(t, upCfg)
			cfg.Upstream = up.URL()
			n := startNode(t, cfg)
			const devices = 5
			var devs []*pushclient.Client
			var endpoints, uaids []string
			for range devices {
				dev, endpoint, upUAID := setupRelayed(t, up, n)
				devs, endpoints, uaids = append(devs, dev), append(endpoints, endpoint), append(uaids, upUAID)
			}
			waitFor(t, "the held sessions", func() bool {
				for _, u := range uaids {
					if !up.Open(u) {
						return false
					}
				}
				return true
			})
			waitFor(t, "the held sessions to park", func() bool { return heldGoroutines() == 0 })
			for i, dev := range devs {
				for j := range 3 {
					postWith(t, hc, endpoints[i], fmt.Appendf(nil, "%d.%d", i, j))
				}
				got := receive(t, dev, 3)
				for j, g := range got {
					if want := fmt.Sprintf("%d.%d", i, j); g != want {
						t.Errorf("device %d got %q, want %q", i, g, want)
					}
				}
			}
			waitFor(t, "the held sessions to park again", func() bool { return heldGoroutines() == 0 })
			if s := up.Stats(); s.Hellos[uaids[0]] != 2 {
				t.Errorf("%d hellos, want 2: the held session reconnected", s.Hellos[uaids[0]])
			}
		})
	}
}

func postWith(t *testing.T, hc *http.Client, endpoint string, body []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", endpoint, bytes.NewReader(body))
	req.Header.Set("TTL", "600")
	req.Header.Set("Content-Encoding", "aes128gcm")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("post to %s: %s", endpoint, resp.Status)
	}
}
