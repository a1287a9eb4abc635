package main

import (
	"runtime"
	"runtime/debug"
)

// Set by the linker: -X main.version=... -X main.commit=...
var (
	version = "dev"
	commit  = ""
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
	return "pushrelay " + version + " commit " + c + " " + runtime.GOOS + "/" + runtime.GOARCH + " " + runtime.Version()
}
