package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v3"
)

// Server is the STUN server. Listen binds it, Run serves, Close stops it.
type Server struct {
	conn *net.UDPConn
	addr netip.AddrPort
	h    *handler
	met  *serverMetrics

	closing   chan struct{} // closed by Close
	closeOnce sync.Once
	closeErr  error

	mu      sync.Mutex
	started bool          // Run was called
	runDone chan struct{} // closed when Run returns

	// Bindings being written, their answers waiting (see Pending): slots
	// bounds them, jobs is waited for by Run.
	slots chan struct{}
	jobs  sync.WaitGroup
	wmu   sync.Mutex
	warn  logLimit // their storage errors
}

// Listen validates cfg and binds its UDP socket.
func Listen(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	ua, err := net.ResolveUDPAddr("udp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("discovery: listen %s: %w", cfg.Listen, err)
	}
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("discovery: listen %s: %w", cfg.Listen, err)
	}
	la := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	met := newServerMetrics(cfg.Metrics)
	return &Server{
		conn:    conn,
		addr:    netip.AddrPortFrom(la.Addr().Unmap(), la.Port()),
		h:       newHandler(cfg, met),
		met:     met,
		closing: make(chan struct{}),
		slots:   make(chan struct{}, cfg.MaxPending),
		warn:    logLimit{every: time.Second},
	}, nil
}

// Addr returns the address the socket is bound to, with port 0 resolved.
func (s *Server) Addr() netip.AddrPort { return s.addr }

// Run reads and answers datagrams until ctx is done or Close is called, and
// then returns nil. It returns an error if the socket fails otherwise. Run
// may be called once.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	select {
	case <-s.closing:
		s.mu.Unlock()
		return nil
	default:
	}
	if s.started {
		s.mu.Unlock()
		return errors.New("discovery: Run called twice")
	}
	s.started = true
	s.runDone = make(chan struct{})
	s.mu.Unlock()
	defer close(s.runDone)
	defer s.jobs.Wait()

	// A read deadline in the past wakes the blocked read; the socket stays
	// open for WriteTo until Close.
	stop := context.AfterFunc(ctx, func() { _ = s.conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()

	// One byte more than maxPacket, so that a larger datagram shows up as
	// such instead of being silently truncated.
	buf := make([]byte, maxPacket+1)
	for {
		n, src, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("discovery: read %s: %w", s.addr, err)
		}
		resp := s.h.handle(buf[:n], src)
		if job := s.h.pending; job != nil {
			s.finish(job)
			continue
		}
		if resp == nil {
			continue
		}
		if _, err := s.conn.WriteToUDPAddrPort(resp, src); err != nil {
			s.met.writeErrors.Inc()
			s.h.writeFailed(src, err)
		}
	}
}

// finish waits for job's binding to be written on another goroutine and
// then answers it, so the next datagrams are read meanwhile. With
// MaxPending jobs already waiting it blocks until one is done.
func (s *Server) finish(job *deferred) {
	s.slots <- struct{}{}
	s.jobs.Go(func() {
		defer func() { <-s.slots }()
		res := resultBound
		err := job.wait()
		switch {
		case err == nil:
		case errors.Is(err, ErrReplay):
			res = resultReplay
		case errors.Is(err, ErrUnknownUser):
			res = resultUnknownUser
		default:
			res = resultError
			s.wmu.Lock()
			n, ok := s.warn.allow(s.h.now())
			s.wmu.Unlock()
			if ok {
				s.h.log.Warn("stun registry error", "op", "bind", "username", job.username, "err", err, "suppressed", n)
			}
		}
		s.met.results[res].Inc()
		if res != resultBound {
			return
		}
		var xor [20]byte
		resp := buildResponse(stun.New(), xor[:0], job.txID, job.src, job.key)
		if _, err := s.conn.WriteToUDPAddrPort(resp, job.src); err != nil {
			s.met.writeErrors.Inc()
		}
	})
}

// WriteTo sends b to to from the STUN socket. It is safe for concurrent use
// and may be called while Run runs.
func (s *Server) WriteTo(b []byte, to netip.AddrPort) error {
	if _, err := s.conn.WriteToUDPAddrPort(b, to); err != nil {
		return fmt.Errorf("discovery: write to %s: %w", to, err)
	}
	return nil
}

// Close stops Run, closes the socket and waits for Run to return. It may be
// called more than once; later calls return the first call's result.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.closing)
		if err := s.conn.Close(); err != nil {
			s.closeErr = fmt.Errorf("discovery: close %s: %w", s.addr, err)
		}
		s.mu.Lock()
		done := s.runDone
		s.mu.Unlock()
		if done != nil {
			<-done
		}
	})
	return s.closeErr
}
