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
	conns map[int32]pollee
	shut  bool // epfd is closed (or closing): arm and forget touch it no more

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
	return &poller{epfd: epfd, wake: int(wake), conns: map[int32]pollee{}, done: make(chan struct{})}, nil
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
					p.mu.Lock()
					p.shut = true
					syscall.Close(p.epfd)
					p.mu.Unlock()
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
// connection already forgotten, whose descriptor may be closed or reused,
// and any once the poller stopped.
func (p *poller) arm(c pollee) error {
	r := c.reg()
	r.pmu.Lock()
	defer r.pmu.Unlock()
	if r.released {
		return errors.New("connection released")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shut {
		return errors.New("poller stopped")
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT, Fd: int32(r.fd)}
	op := syscall.EPOLL_CTL_MOD
	if !r.registered {
		op = syscall.EPOLL_CTL_ADD
	}
	if err := syscall.EpollCtl(p.epfd, op, r.fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	if !r.registered {
		p.conns[int32(r.fd)] = c
		r.registered = true
	}
	return nil
}

// forget removes c's socket before it is closed, so its descriptor number
// can be reused safely, and makes later arms fail.
func (p *poller) forget(c pollee) {
	r := c.reg()
	r.pmu.Lock()
	defer r.pmu.Unlock()
	r.released = true
	if !r.registered {
		return
	}
	p.mu.Lock()
	if !p.shut {
		syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, r.fd, nil)
	}
	if p.conns[int32(r.fd)] == c {
		delete(p.conns, int32(r.fd))
	}
	p.mu.Unlock()
	r.registered = false
}

// socketFD returns the descriptor of a raw connection.
func socketFD(rc syscall.RawConn) int {
	fd := -1
	rc.Control(func(f uintptr) { fd = int(f) })
	return fd
}
