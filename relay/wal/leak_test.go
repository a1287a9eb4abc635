package wal

import (
	"testing"

	"github.com/pushrelay/pushrelay/relay/leakcheck"
)

// TestMain fails the run if a test leaves a goroutine of ours behind.
func TestMain(m *testing.M) { leakcheck.Main(m) }
