// Package listener guards the relay's TCP listeners: it wraps a
// net.Listener so that running out of descriptors or kernel memory never
// ends the process, and so that the number of open connections, overall and
// per source address, is bounded by configuration rather than by clients.
//
// # Accept errors
//
// Accept retries every error except the listener being closed: EMFILE,
// ENFILE, ENOBUFS, ENOMEM, ECONNABORTED and anything else. Between attempts
// it sleeps 5 ms, doubling to at most 1 s (the schedule net/http uses), and
// the sleep ends early when the listener is closed. Each error is counted in
// pushrelay_listener_accept_errors_total{listener,reason}; the log gets one
// line per interval with the number of errors since the last line. The
// servers above (net/http for devices and admin, fasthttp for the endpoint,
// which takes EMFILE for a permanent error) therefore never see a failed
// accept: they see a slow one, and only a closed listener ends them.
//
// # Connection caps
//
// MaxPerSource bounds the connections open from one source: one IPv4
// address, or one IPv6 /64 (what a single host or home network is given).
// A connection over it is closed at once, before any byte is read, and
// counted in pushrelay_listener_refused_total{listener,reason="per_source"}.
//
// MaxConns bounds the connections open on the listener. At the cap, Accept
// stops calling accept(2) until a connection closes; it does not accept and
// close. Waiting leaves new connections in the kernel's accept queue, which
// costs the relay no descriptor and no memory, and is bounded by the
// listen backlog (net.core.somaxconn); beyond it the kernel drops SYNs and
// clients retry with TCP's own backoff. A waiting client is served as soon
// as a slot frees, in arrival order, where accept-and-close would make
// every client, well-behaved ones included, reconnect and race, and would
// spend an accept, a descriptor and a log line per attempt during exactly
// the flood the cap is there to survive. Each time the cap is reached is
// counted in pushrelay_listener_full_total{listener} and logged once per
// interval.
//
// A connection's slots are released when it is closed: Conn.Close is
// idempotent and releases once. pushrelay_listener_connections{listener} is
// the number open.
//
// # Wrapped connections
//
// Conn keeps what the layers above look for on a *net.TCPConn:
// SyscallConn (the device listener's readiness poller takes the raw
// socket from it), CloseWrite, and NetConn to reach the TCP connection.
// TLS wraps after the guard (tls.NewListener(listener.Wrap(...))), so the
// TLS connection's Close closes the guarded one.
package listener

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// Backoff bounds of a failing accept, as net/http has them.
const (
	minBackoff = 5 * time.Millisecond
	maxBackoff = time.Second
)

// DefaultLogInterval is how often a repeating condition (accept errors,
// refusals, a full listener) is logged when Config.LogInterval is zero.
const DefaultLogInterval = 10 * time.Second

// Config sets up one guarded listener. The zero value of each limit means
// no limit.
type Config struct {
	// Name labels the metrics and log lines: "device", "endpoint", "admin".
	Name string
	// MaxConns is the most connections open at once; 0 is unlimited.
	MaxConns int
	// MaxPerSource is the most connections open at once from one IPv4
	// address or IPv6 /64; 0 is unlimited.
	MaxPerSource int
	// LogInterval is the least time between two log lines about the same
	// condition; 0 means DefaultLogInterval.
	LogInterval time.Duration
	Logger      *slog.Logger
	// Metrics are shared by the listeners of one registry (NewMetrics);
	// nil keeps them private.
	Metrics *Metrics
}

// Listener is a guarded net.Listener. Its Accept returns *Conn.
type Listener struct {
	inner  net.Listener
	cfg    Config
	log    *slog.Logger
	m      listenerMetrics
	slots  chan struct{} // one token per open connection; nil without MaxConns
	closed chan struct{}
	once   sync.Once

	mu     sync.Mutex
	source map[netip.Addr]int // open connections per source key

	errLog, refuseLog, fullLog rateLog

	// Tests replace these.
	now   func() time.Time
	sleep func(d time.Duration, stop <-chan struct{}) bool
}

// Wrap guards ln. Closing the returned listener closes ln.
func Wrap(ln net.Listener, cfg Config) *Listener {
	if cfg.LogInterval <= 0 {
		cfg.LogInterval = DefaultLogInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	l := &Listener{
		inner:  ln,
		cfg:    cfg,
		log:    cfg.Logger.With("listener", cfg.Name),
		m:      cfg.Metrics.forListener(cfg.Name),
		closed: make(chan struct{}),
		source: map[netip.Addr]int{},
		now:    time.Now,
		sleep:  sleepUnlessClosed,
	}
	if cfg.MaxConns > 0 {
		l.slots = make(chan struct{}, cfg.MaxConns)
	}
	return l
}

// Addr is the wrapped listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Close closes the wrapped listener and ends a waiting Accept. It is safe to
// call more than once. Connections already accepted stay open.
func (l *Listener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.inner.Close()
}

// Open is the number of connections accepted and not yet closed.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, c := range l.source {
		n += c
	}
	return n
}

// Accept waits for a connection within the caps. It returns an error only
// once the listener is closed (an error net/http and fasthttp both read as
// "closed").
func (l *Listener) Accept() (net.Conn, error) {
	var backoff time.Duration
	for {
		if err := l.takeSlot(); err != nil {
			return nil, err
		}
		c, err := l.inner.Accept()
		if err != nil {
			l.releaseSlot()
			if l.isClosed() || errors.Is(err, net.ErrClosed) {
				return nil, err
			}
			backoff = min(max(2*backoff, minBackoff), maxBackoff)
			l.acceptFailed(err, backoff)
			if !l.sleep(backoff, l.closed) {
				return nil, l.closedErr()
			}
			continue
		}
		backoff = 0
		key := sourceKey(c.RemoteAddr())
		if !l.admit(key) {
			l.m.refusedPerSource.Inc()
			c.Close()
			l.releaseSlot()
			if n, ok := l.refuseLog.note(l.now(), l.cfg.LogInterval); ok {
				l.log.Warn("connection refused: too many open from one source",
					"source", key.String(), "max_per_source", l.cfg.MaxPerSource, "refused", n)
			}
			continue
		}
		l.m.open.Inc()
		return &Conn{Conn: c, l: l, key: key}, nil
	}
}

// takeSlot reserves a place under MaxConns, waiting while the listener is
// full.
func (l *Listener) takeSlot() error {
	if l.slots == nil {
		return nil
	}
	select {
	case l.slots <- struct{}{}:
		return nil
	case <-l.closed:
		return l.closedErr()
	default:
	}
	l.m.full.Inc()
	if n, ok := l.fullLog.note(l.now(), l.cfg.LogInterval); ok {
		l.log.Warn("listener full: not accepting until a connection closes",
			"max_conns", l.cfg.MaxConns, "times", n)
	}
	select {
	case l.slots <- struct{}{}:
		return nil
	case <-l.closed:
		return l.closedErr()
	}
}

func (l *Listener) releaseSlot() {
	if l.slots != nil {
		<-l.slots
	}
}

// admit counts a connection from key, or says no when its source is at
// MaxPerSource.
func (l *Listener) admit(key netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cfg.MaxPerSource > 0 && l.source[key] >= l.cfg.MaxPerSource {
		return false
	}
	l.source[key]++
	return true
}

func (l *Listener) release(key netip.Addr) {
	l.mu.Lock()
	if l.source[key]--; l.source[key] <= 0 {
		delete(l.source, key)
	}
	l.mu.Unlock()
	l.m.open.Dec()
	l.releaseSlot()
}

func (l *Listener) acceptFailed(err error, retry time.Duration) {
	l.m.acceptErrors(reasonOf(err)).Inc()
	if n, ok := l.errLog.note(l.now(), l.cfg.LogInterval); ok {
		l.log.Error("accept failed; retrying", "err", err, "errors", n, "retry_in", retry)
	}
}

func (l *Listener) isClosed() bool {
	select {
	case <-l.closed:
		return true
	default:
		return false
	}
}

func (l *Listener) closedErr() error {
	return &net.OpError{Op: "accept", Net: l.inner.Addr().Network(), Addr: l.inner.Addr(), Err: net.ErrClosed}
}

func sleepUnlessClosed(d time.Duration, stop <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-stop:
		return false
	}
}

// sourceKey is what MaxPerSource counts by: the IPv4 address, or the /64 of
// an IPv6 one. An address that is not TCP/IP (a unix socket in a test) is
// one source.
func sourceKey(a net.Addr) netip.Addr {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return netip.Addr{}
	}
	ip = ip.Unmap()
	if ip.Is4() {
		return ip
	}
	return netip.PrefixFrom(ip.WithZone(""), 64).Masked().Addr()
}

// reasonOf names an accept error for the metric's reason label.
func reasonOf(err error) string {
	for _, r := range []struct {
		errno syscall.Errno
		name  string
	}{
		{syscall.EMFILE, "emfile"},
		{syscall.ENFILE, "enfile"},
		{syscall.ENOBUFS, "enobufs"},
		{syscall.ENOMEM, "enomem"},
		{syscall.ECONNABORTED, "econnaborted"},
	} {
		if errors.Is(err, r.errno) {
			return r.name
		}
	}
	return "other"
}

// rateLog lets one line through per interval and counts the events in
// between, so a flood of the same condition logs its size, not itself.
type rateLog struct {
	mu    sync.Mutex
	last  time.Time
	count int
}

// note records one event and reports whether to log now, with the number
// of events the line stands for.
func (r *rateLog) note(now time.Time, every time.Duration) (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.count++
	if !r.last.IsZero() && now.Sub(r.last) < every {
		return 0, false
	}
	n := r.count
	r.last, r.count = now, 0
	return n, true
}

// Conn is an accepted connection holding its listener's slots until closed.
type Conn struct {
	net.Conn
	l    *Listener
	key  netip.Addr
	once sync.Once
}

// Close closes the connection and releases its slots; later calls only
// close again (and report what the connection says).
func (c *Conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.key) })
	return err
}

// NetConn returns the accepted connection under the guard.
func (c *Conn) NetConn() net.Conn { return c.Conn }

// SyscallConn returns the raw socket, for readiness polling.
func (c *Conn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("listener: connection has no raw socket")
	}
	return sc.SyscallConn()
}

// CloseWrite shuts down the writing side, as net/http does before closing
// a connection it refused.
func (c *Conn) CloseWrite() error {
	cw, ok := c.Conn.(interface{ CloseWrite() error })
	if !ok {
		return errors.New("listener: connection cannot close its writing side")
	}
	return cw.CloseWrite()
}
