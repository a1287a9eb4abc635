package discovery

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

// slowRegistry's Bind for testUAID returns a Pending that waits for a
// release, as a registry that writes a moved binding to disk does.
type slowRegistry struct {
	*testRegistry
	release chan error
}

func (r *slowRegistry) Bind(username string, addr netip.AddrPort, stamp time.Time) error {
	if username != testUAID {
		return r.testRegistry.Bind(username, addr, stamp)
	}
	return &Pending{Wait: func() error { return <-r.release }}
}

// A binding being written does not hold up other devices' requests; its
// answer comes once the write is done, and is counted then; a write that
// fails as a replay is not answered.
func TestPendingBind(t *testing.T) {
	reg := &slowRegistry{testRegistry: newTestRegistry(), release: make(chan error)}
	cfg := testConfig(t, reg)
	s := startServer(t, cfg)
	slow := dial(t, s)
	req, txID := newRequest(t, testUAID, testKey, testStamp)
	if _, err := slow.Write(req); err != nil {
		t.Fatal(err)
	}
	// Another device is answered while the first binding is written.
	other := dial(t, s)
	oreq, _ := newRequest(t, otherUAID, otherKey, testStamp)
	if exchange(t, other, oreq, 10*time.Second) == nil {
		t.Fatal("another device was held up behind a pending binding")
	}
	if tryRead(slow) != nil || requests(t, cfg.Metrics, "bound") != 1 {
		t.Fatal("the pending binding was answered or counted before its write")
	}
	reg.release <- nil
	resp := receive(t, slow, 10*time.Second)
	if resp == nil {
		t.Fatal("no answer once the binding was written")
	}
	if got, err := ParseBindingResponse(resp, txID, testKey); err != nil || got != localAddr(slow) {
		t.Errorf("answer: %s, %v", got, err)
	}
	handled(t, cfg.Metrics, 2)
	// A write that fails, or turns out a replay: no answer.
	req2, _ := newRequest(t, testUAID, testKey, testStamp.Add(time.Millisecond))
	if _, err := slow.Write(req2); err != nil {
		t.Fatal(err)
	}
	reg.release <- errors.New("disk on fire")
	handled(t, cfg.Metrics, 3)
	if n := requests(t, cfg.Metrics, "error"); n != 1 {
		t.Errorf("error = %v, want 1", n)
	}
	req3, _ := newRequest(t, testUAID, testKey, testStamp.Add(2*time.Millisecond))
	if _, err := slow.Write(req3); err != nil {
		t.Fatal(err)
	}
	reg.release <- ErrReplay
	handled(t, cfg.Metrics, 4)
	if n := requests(t, cfg.Metrics, "replay"); n != 1 {
		t.Errorf("replay = %v, want 1", n)
	}
	if resp := tryRead(slow); resp != nil {
		t.Errorf("a refused binding was answered (%d bytes)", len(resp))
	}
}
