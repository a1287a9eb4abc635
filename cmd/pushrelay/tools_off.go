//go:build notools

package main

import (
	"context"
	"fmt"
	"io"
)

// runDevTool, in a gateway build (tag notools, `make cross`), answers the
// developer and test tools' commands (device, send, bench), left out to keep
// the binary within the gateway size budget (docs/benchmarks.md, "Gateway
// builds: room for the site"), with an error saying where to find them.
func runDevTool(_ context.Context, cmd string, _ []string, _, _ io.Writer) (ok bool, err error) {
	switch cmd {
	case "device", "send", "bench":
		return true, fmt.Errorf("pushrelay %s is a developer tool, left out of gateway builds (tag notools): use a build from `make build` or `go build ./cmd/pushrelay`", cmd)
	}
	return false, nil
}
