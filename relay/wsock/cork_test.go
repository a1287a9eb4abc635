package wsock

import (
	"bytes"
	"net"
	"testing"
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
