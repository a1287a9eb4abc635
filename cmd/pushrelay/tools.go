//go:build !notools

package main

import (
	"context"
	"io"

	"github.com/pushrelay/pushrelay/cmd/pushrelay/internal/bench"
)

// runDevTool runs a developer or test tool (device, send, bench); ok is
// false for any other command. Gateway builds (`make cross`) leave the tools
// out with the build tag notools (tools_off.go); `make build`, `go build` and
// `go test` keep them.
func runDevTool(ctx context.Context, cmd string, args []string, stdout, stderr io.Writer) (ok bool, err error) {
	switch cmd {
	case "device":
		return true, runDevice(ctx, args, stdout, stderr)
	case "send":
		return true, runSend(ctx, args, stdout, stderr)
	case "bench":
		return true, bench.Run(ctx, args, stdout, stderr, settingDefault)
	}
	return false, nil
}
