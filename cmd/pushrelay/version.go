package main

import (
	"runtime"
	"runtime/debug"
)

// Set by the linker: -X main.version=... -X main.commit=...
// -X main.target=linux/armv7 (the build target, with its ARM/MIPS variant).
var (
	version = "dev"
	commit  = ""
	target  = ""
)

func versionString() string {
	c := commit
	if c == "" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" {
					c = s.Value
				}
			}
		}
	}
	if c == "" {
		c = "unknown"
	}
	t := target
	if t == "" {
		t = runtime.GOOS + "/" + runtime.GOARCH
	}
	return "pushrelay " + version + " commit " + c + " " + t + " " + runtime.Version()
}
