package wsock

import (
	"bytes"
	"net"
	"testing"
	"time"
)

// countConn records each Write the cork passes down.
type countConn struct {
	net.Conn
	writes [][]byte
}

func (c *countConn) Write(p []byte) (int, error) {
	c.writes = append(c.writes, append([]byte(nil), p...))
	return len(p), nil
}

func TestCorkGathersWrites(t *testing.T) {
	under := &countConn{}
	c := &corkConn{Conn: under}
	c.Write([]byte("a")) // uncorked: straight through
	c.cork()
	c.Write([]byte("bb"))
	c.Write([]byte("ccc"))
	if len(under.writes) != 1 {
		t.Fatalf("corked writes went out early: %q", under.writes)
	}
	if err := c.uncork(); err != nil {
		t.Fatal(err)
	}
	if len(under.writes) != 2 || string(under.writes[1]) != "bbccc" {
		t.Fatalf("writes = %q, want [a bbccc]", under.writes)
	}
	if err := c.uncork(); err != nil || len(under.writes) != 2 {
		t.Fatal("an empty uncork must write nothing")
	}
	// A batch larger than maxCork is written as it grows, in order.
	c.cork()
	big := bytes.Repeat([]byte{'x'}, maxCork)
	c.Write(big)
	c.Write([]byte("tail"))
	c.uncork()
	var all []byte
	for _, w := range under.writes[2:] {
		all = append(all, w...)
	}
	if len(under.writes) != 4 || !bytes.Equal(all, append(big, "tail"...)) {
		t.Fatalf("oversized batch: %d writes, %d bytes", len(under.writes)-2, len(all))
	}
}

// deadlineConn records the deadlines the cork passes down.
type deadlineConn struct {
	net.Conn
	reads, writes []time.Time
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.reads = append(c.reads, t)
	return nil
}

func (c *deadlineConn) SetWriteDeadline(t time.Time) error {
	c.writes = append(c.writes, t)
	return nil
}

func TestCorkCoarsensDeadlines(t *testing.T) {
	under := &deadlineConn{}
	c := &corkConn{Conn: under}
	now := time.Now()
	steps := []struct {
		at     time.Time
		passed bool
	}{
		{now.Add(10 * time.Second), true},                         // the first
		{now.Add(10*time.Second + 100*time.Millisecond), false},   // a little later
		{now.Add(10*time.Second + 900*time.Millisecond), false},   // still within the slack
		{now.Add(11*time.Second + 500*time.Millisecond), true},    // a second later
		{now.Add(2 * time.Second), true},                          // earlier
		{time.Time{}, true},                                       // cleared
		{now.Add(2 * time.Second), true},                          // set again
		{now.Add(300 * time.Millisecond), true},                   // a short timeout
		{now.Add(400 * time.Millisecond), true},                   // moved more than an eighth of it
		{now.Add(400*time.Millisecond + time.Millisecond), false}, // moved less
	}
	for i, st := range steps {
		before := len(under.writes)
		c.SetWriteDeadline(st.at)
		if got := len(under.writes) > before; got != st.passed {
			t.Fatalf("step %d: passed = %v, want %v", i, got, st.passed)
		}
	}
	// Read deadlines are kept apart from write deadlines.
	c.SetReadDeadline(now.Add(10 * time.Second))
	c.SetReadDeadline(now.Add(10*time.Second + time.Millisecond))
	if len(under.reads) != 1 {
		t.Fatalf("read deadlines passed: %v, want only the first", under.reads)
	}
	// SetDeadline sets both.
	c.SetDeadline(time.Time{})
	if len(under.reads) != 2 || len(under.writes) != 8 {
		t.Fatalf("SetDeadline passed %d reads, %d writes", len(under.reads), len(under.writes))
	}
}
