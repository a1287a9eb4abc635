//go:build linux

package wsock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
)

// poller watches idle device sockets with an epoll instance of its own,
// so an idle device costs no goroutine at all. Each socket is registered
// one-shot: when it becomes readable the poller calls the function the
// core armed it with (which hands the socket to a worker) and forgets it
// until it is armed again. Go's own poller keeps watching the same socket
// for the reads and writes the worker does.
type poller struct {
	epfd int
	wake int // eventfd that interrupts epoll_wait on Close

	mu    sync.Mutex
	conns map[int32]*Conn

	closeOnce sync.Once
	done      chan struct{}
}

func newPoller() (*poller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wake, _, errno := syscall.Syscall(syscall.SYS_EVENTFD2, 0, syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if errno != 0 {
		syscall.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", errno)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: -1}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, int(wake), &ev); err != nil {
		syscall.Close(epfd)
		syscall.Close(int(wake))
		return nil, fmt.Errorf("epoll_ctl eventfd: %w", err)
	}
	return &poller{epfd: epfd, wake: int(wake), conns: map[int32]*Conn{}, done: make(chan struct{})}, nil
}

// run waits for events until close. epoll_wait blocks its thread, as a
// syscall; that is one thread for the whole listener.
func (p *poller) run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, p.close)
	defer stop()
	events := make([]syscall.EpollEvent, 256)
	for {
		n, err := syscall.EpollWait(p.epfd, events, -1)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			return fmt.Errorf("epoll_wait: %w", err)
		}
		for _, ev := range events[:n] {
			if ev.Fd == -1 {
				select {
				case <-p.done:
					syscall.Close(p.epfd)
					syscall.Close(p.wake)
					return nil
				default:
					continue
				}
			}
			p.mu.Lock()
			c := p.conns[ev.Fd]
			p.mu.Unlock()
			if c != nil {
				c.fire()
			}
		}
	}
}

func (p *poller) close() {
	p.closeOnce.Do(func() {
		close(p.done)
		one := [8]byte{1}
		syscall.Write(p.wake, one[:])
	})
}

// arm registers c's socket for one readiness event. It refuses a
// connection already forgotten, whose descriptor may be closed or reused.
func (p *poller) arm(c *Conn) error {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	if c.released {
		return errors.New("connection released")
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT, Fd: int32(c.fd)}
	op := syscall.EPOLL_CTL_MOD
	if !c.registered {
		op = syscall.EPOLL_CTL_ADD
		p.mu.Lock()
		p.conns[int32(c.fd)] = c
		p.mu.Unlock()
		c.registered = true
	}
	return syscall.EpollCtl(p.epfd, op, c.fd, &ev)
}

// forget removes c's socket before it is closed, so its descriptor number
// can be reused safely, and makes later arms fail.
func (p *poller) forget(c *Conn) {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	c.released = true
	if !c.registered {
		return
	}
	syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, c.fd, nil)
	p.mu.Lock()
	if p.conns[int32(c.fd)] == c {
		delete(p.conns, int32(c.fd))
	}
	p.mu.Unlock()
	c.registered = false
}

// socketFD returns the descriptor of a raw connection.
func socketFD(rc syscall.RawConn) int {
	fd := -1
	rc.Control(func(f uintptr) { fd = int(f) })
	return fd
}
