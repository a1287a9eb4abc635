package wsock

import (
	"errors"
	"net"
	"sync"
	"time"
)

// corkConn is the connection gorilla writes to. While corked, writes are
// gathered in memory and go out in one write when uncorked, so a batch of
// notifications to a device costs one syscall instead of one per frame.
// Control frames written meanwhile (a close from another goroutine) join
// the batch; uncork follows at once.
//
// It also coarsens deadlines: gorilla sets the write deadline before every
// frame and pushrelay extends the read deadline after every frame, and each
// of those re-arms a runtime timer. A deadline that moves later by less
// than an eighth of the time left to it (at most deadlineSlack) is not
// passed on, so a read or write may time out that much before its full
// timeout; earlier and cleared deadlines always pass.
type corkConn struct {
	net.Conn
	mu     sync.Mutex
	corked bool
	buf    []byte

	dmu           sync.Mutex // guards the applied deadlines, not held during I/O
	read, written time.Time  // the deadlines last passed on
}

// deadlineSlack is the most a deadline may fire earlier than asked. The
// timeouts it shortens are seconds (writes) to minutes (idle reads).
const deadlineSlack = time.Second

func (c *corkConn) SetReadDeadline(t time.Time) error {
	return c.setDeadline(&c.read, t, c.Conn.SetReadDeadline)
}

func (c *corkConn) SetWriteDeadline(t time.Time) error {
	return c.setDeadline(&c.written, t, c.Conn.SetWriteDeadline)
}

func (c *corkConn) SetDeadline(t time.Time) error {
	return errors.Join(c.SetReadDeadline(t), c.SetWriteDeadline(t))
}

func (c *corkConn) setDeadline(applied *time.Time, t time.Time, set func(time.Time) error) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if !t.IsZero() && !applied.IsZero() && !t.Before(*applied) {
		moved := t.Sub(*applied)
		if moved < deadlineSlack && moved < time.Until(t)/8 {
			return nil
		}
	}
	if err := set(t); err != nil {
		return err
	}
	*applied = t
	return nil
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
	err := c.flushLocked()
	c.buf = nil // an idle connection keeps no batch buffer
	return err
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
