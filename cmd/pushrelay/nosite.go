//go:build nosite

package main

// A build without the site (the tag nosite: a single relay, about 2.8
// MiB smaller on mips; make cross builds the site in): cluster_listen is
// refused at start, and neither memberlist nor the consensus engine is
// linked.

import (
	"context"
	"io"
	"log/slog"

	"github.com/pushrelay/pushrelay/relay/node"
)

// errNoSite refuses the site's keys in a build without the site.
var errNoSite = cfgErr("cluster_listen: this build has no site support (it was built with the tag nosite; docs/cluster.md)")

func runMember(context.Context, *Config, node.Config, *slog.Logger, io.Writer) error {
	return errNoSite
}

func (c *Config) clusterKeys() ([][]byte, error) { return nil, errNoSite }

func (c *Config) nodeName() (string, error) { return "", errNoSite }
