package wsock

import (
	"net"
	"sync"
)

// corkConn is the connection gorilla writes to. While corked, writes are
// gathered in memory and go out in one write when uncorked, so a batch of
// notifications to a device costs one syscall instead of one per frame.
// Control frames written meanwhile (a close from another goroutine) join
// the batch; uncork follows at once.
type corkConn struct {
	net.Conn
	mu     sync.Mutex
	corked bool
	buf    []byte
}

// maxCork bounds what a batch gathers before it is written anyway.
const maxCork = 64 << 10

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		return c.Conn.Write(p)
	}
	c.buf = append(c.buf, p...)
	if len(c.buf) >= maxCork {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (c *corkConn) cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// uncork writes what was gathered and stops gathering.
func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	return c.flushLocked()
}

func (c *corkConn) flushLocked() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	if cap(c.buf) > maxCork {
		c.buf = nil
	} else {
		c.buf = c.buf[:0]
	}
	return err
}
