package leakcheck_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/leakcheck"
	"github.com/pushrelay/pushrelay/relay/wsock"
)

// A goroutine running our code is reported until it ends.
func TestLeftoverFindsOurGoroutines(t *testing.T) {
	srv := wsock.Handler(wsock.Options{}, nil).(*wsock.Server)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		srv.Run(ctx)
		close(done)
	}()
	time.Sleep(10 * time.Millisecond)
	left := leakcheck.Leftover()
	if len(left) != 1 || !strings.Contains(left[0], "wsock.(*Server).Run") {
		t.Fatalf("leftover goroutines: %q, want the one in wsock.(*Server).Run", left)
	}
	if err := leakcheck.Check(50 * time.Millisecond); err == nil {
		t.Fatal("Check passed with a goroutine of ours running")
	}
	cancel()
	<-done
	if err := leakcheck.Check(time.Second); err != nil {
		t.Fatal(err)
	}
}
