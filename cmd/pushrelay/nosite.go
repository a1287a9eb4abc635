//go:build nosite

package main

// A build without the site (the tag nosite; make cross, until the site
// fits the gateways' 14 MiB budget: docs/benchmarks.md, "Gateway builds:
// room for the site"): cluster_listen is refused at start, and neither
// memberlist nor the consensus engine is linked.

import (
	"context"
	"io"
	"log/slog"

	"github.com/pushrelay/pushrelay/relay/node"
)

// errNoSite refuses the site's keys in a build without the site.
var errNoSite = cfgErr("cluster_listen: this build has no site support (gateway builds leave it out for now; docs/cluster.md)")

func runMember(context.Context, *Config, node.Config, *slog.Logger, io.Writer) error {
	return errNoSite
}

func (c *Config) clusterKeys() ([][]byte, error) { return nil, errNoSite }

func (c *Config) nodeName() (string, error) { return "", errNoSite }
