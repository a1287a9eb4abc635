package main

import (
	"context"
	"io"
	"log/slog"
	"os"

	"github.com/pushrelay/pushrelay/relay/linkauth"
	"github.com/pushrelay/pushrelay/relay/node"
)

func newLogger(cfg *Config, w io.Writer) *slog.Logger {
	var lvl slog.Level
	lvl.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: lvl}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// runDaemon runs the relay (relay/node) until ctx is cancelled (SIGTERM,
// SIGINT), then lets it shut down gracefully. What it adds to the node is
// the process's part: the data dir check, the Go runtime's memory limit,
// the files the configuration names, and the ready lines on stdout.
func runDaemon(ctx context.Context, cfg *Config, stdout, stderr io.Writer) error {
	log := newLogger(cfg, stderr)
	// What libraries write with the standard log package (the metrics
	// library's /proc read errors, net/http's) goes through the same
	// structured handler, not bare to stderr.
	slog.SetDefault(log)
	if err := checkDataDir(cfg.DataDir); err != nil {
		return err
	}
	applyMemoryLimit(cfg.MemoryLimit, os.Getenv, log)
	nc, err := cfg.nodeConfig(log)
	if err != nil {
		return err
	}
	nc.OnReady = func(n *node.Node) { n.Announce(stdout) }
	if cfg.ClusterListen == "" {
		n, err := node.New(nc)
		if err != nil {
			return err
		}
		return n.Run(ctx)
	}
	return runMember(ctx, cfg, nc, log, stdout)
}

// nodeConfig translates the daemon's configuration into the node's,
// reading the files it names.
func (c *Config) nodeConfig(log *slog.Logger) (node.Config, error) {
	tlsConf, err := c.tlsConfig()
	if err != nil {
		return node.Config{}, err
	}
	batchToken, err := c.batchToken()
	if err != nil {
		return node.Config{}, err
	}
	ranges, err := c.wakeRanges()
	if err != nil {
		return node.Config{}, err
	}
	upstreamTLS, err := c.upstreamTLS()
	if err != nil {
		return node.Config{}, err
	}
	var (
		linkCreds *linkauth.Credentials
		linkName  string
	)
	if c.linkUsed() {
		if linkCreds, err = c.linkCredentials(); err != nil {
			return node.Config{}, err
		}
		if linkName, err = c.linkName(); err != nil {
			return node.Config{}, err
		}
	}
	var megaphoneToken string
	if c.MegaphoneURL != "" {
		if megaphoneToken, err = c.megaphoneToken(); err != nil {
			return node.Config{}, err
		}
	}
	adminToken, open, err := c.adminToken()
	if err != nil {
		return node.Config{}, err
	}
	if open {
		log.Warn("admin_token_file may be read by other users: chmod 600 it", "file", c.AdminTokenFile)
	}
	return node.Config{
		DataDir:       c.DataDir,
		AllowNewStore: c.AllowNewStore,
		VerifyStore:   c.StoreVerifyAlways,

		StoreCheckpointInterval: c.StoreCheckpointInterval,
		StoreCheckpointBytes:    int(c.StoreCheckpointBytes),

		DeviceListen:   c.DeviceListen,
		EndpointListen: c.EndpointListen,
		AdminListen:    c.AdminListen,
		STUNListen:     c.STUNListen,
		STUNAdvertise:  c.STUNAdvertise,
		PublicURL:      c.PublicURL,
		TLS:            tlsConf,
		AdminToken:     adminToken,
		BatchToken:     batchToken,

		HelloTimeout:       c.HelloTimeout,
		PingInterval:       c.PingInterval,
		WriteTimeout:       c.WriteTimeout,
		ShutdownTimeout:    c.ShutdownTimeout,
		SweepInterval:      c.SweepInterval,
		MaxFrameBytes:      c.MaxFrameBytes,
		MaxDataBytes:       c.MaxDataBytes,
		MaxChannelsPerUAID: c.MaxChannelsPerUAID,
		MaxMessagesPerUAID: c.MaxMessagesPerUAID,
		InflightWindow:     c.InflightWindow,
		OutboxBytes:        c.OutboxBytes,

		EndpointConcurrency:    c.EndpointConcurrency,
		EndpointRequestTimeout: c.EndpointRequestTimeout,
		BatchMaxMessages:       c.BatchMaxMessages,
		BatchConcurrency:       c.BatchConcurrency,
		DeviceMaxConns:         c.DeviceMaxConns,
		DeviceMaxConnsPerIP:    c.DeviceMaxConnsPerIP,
		EndpointMaxConnsPerIP:  c.EndpointMaxConnsPerIP,

		STUNRate:          c.STUNRate,
		WakeRanges:        ranges,
		WakeIdleClose:     c.WakeIdleClose,
		WakeInterval:      c.WakeInterval,
		WakeMaxBackoff:    c.WakeMaxBackoff,
		WakeBindingTTL:    c.WakeBindingTTL,
		WakeFlushInterval: c.WakeFlushInterval,
		WakeFreshMax:      c.WakeFreshMax,
		WakeRate:          c.WakeRate,
		WakeTargetRate:    c.WakeTargetRate,

		MegaphoneURL:          c.MegaphoneURL,
		MegaphoneToken:        megaphoneToken,
		MegaphonePollInterval: c.MegaphonePollInterval,

		Upstream:             c.Upstream,
		UpstreamTLS:          upstreamTLS,
		UpstreamTTL:          c.UpstreamTTL,
		UpstreamBackoffMin:   c.UpstreamBackoffMin,
		UpstreamConnectRate:  c.UpstreamConnectRate,
		UpstreamSessions:     c.UpstreamSessions,
		UpstreamPollInterval: c.UpstreamPollInterval,

		RelayListen:     c.RelayListen,
		LinkName:        linkName,
		LinkCredentials: linkCreds,
		LinkKeepAlive:   c.LinkKeepAlive,
		LinkIdleTimeout: c.LinkIdleTimeout,

		Version: version,
		Logger:  log,
		Metrics: nil, // the node's own, with the process collectors
	}, nil
}
