package main

import (
	"bytes"
	"crypto/tls"
	"log/slog"
	"slices"
	"testing"
)

// upstream_tls_pq false offers a wss:// upstream X25519 and P-256 only;
// by default the TLS config is Go's (nil: X25519MLKEM768 first).
func TestConfigUpstreamTLSPQ(t *testing.T) {
	wss := "--upstream=wss://push.example.net/"
	for _, c := range []struct {
		args []string
		env  map[string]string
		want []tls.CurveID // nil: no config of ours
	}{
		{[]string{wss}, nil, nil},
		{[]string{wss, "--upstream-tls-pq=false"}, nil, []tls.CurveID{tls.X25519, tls.CurveP256}},
		{[]string{wss}, map[string]string{"PUSHRELAY_UPSTREAM_TLS_PQ": "false"}, []tls.CurveID{tls.X25519, tls.CurveP256}},
	} {
		cfg, err := loadConfig("t", c.args, env(c.env), &bytes.Buffer{})
		if err != nil {
			t.Fatal(err)
		}
		nc, err := cfg.nodeConfig(slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case c.want == nil && nc.UpstreamTLS != nil:
			t.Errorf("%v %v: UpstreamTLS %+v, want nil (Go's defaults)", c.args, c.env, nc.UpstreamTLS)
		case c.want != nil && (nc.UpstreamTLS == nil || !slices.Equal(nc.UpstreamTLS.CurvePreferences, c.want) || nc.UpstreamTLS.RootCAs != nil):
			t.Errorf("%v %v: UpstreamTLS %+v, want curves %v and the system roots", c.args, c.env, nc.UpstreamTLS, c.want)
		}
	}
}
