package main

import (
	"log/slog"
	"math"
	"runtime/debug"
)

// applyMemoryLimit sets the Go runtime's soft memory limit from
// memory_limit (0: none). GOMEMLIMIT in the environment wins: the runtime
// has already applied it at start, and whoever set it by hand meant it.
func applyMemoryLimit(limit int64, getenv func(string) string, log *slog.Logger) {
	if env := getenv("GOMEMLIMIT"); env != "" {
		log.Info("memory limit from GOMEMLIMIT; memory_limit not applied", "GOMEMLIMIT", env, "memory_limit", formatBytes(limit))
		return
	}
	if limit == 0 {
		debug.SetMemoryLimit(math.MaxInt64)
		return
	}
	debug.SetMemoryLimit(limit)
	log.Info("memory limit set", "memory_limit", formatBytes(limit))
}
