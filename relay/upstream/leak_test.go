package upstream_test

import (
	"testing"

	"github.com/pushrelay/pushrelay/relay/leakcheck"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }
