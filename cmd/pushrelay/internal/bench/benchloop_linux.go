//go:build linux

package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pushrelay/pushrelay/relay/pushproto"
)

// loadLoop is the throughput bench's load generator: the app servers'
// keep-alive HTTP/1.1 connections and the devices' WebSocket connections,
// all driven by one epoll loop on one goroutine with non-blocking reads
// and writes. It does what a goroutine per connection would (every POST
// is a real request with an encrypted payload whose answer is parsed;
// every notification is read as a WebSocket frame and acked with a masked
// ack frame), for much less CPU: a read only when epoll says there are
// bytes (Go's net package reads first and meets EAGAIN), no goroutine
// wake-ups, no encoding/json. The relay and its load share the machine,
// so what the load does not use, the relay can.
//
// Devices are set up (hello, register) by relay/pushclient; the loop takes
// their sockets over after that.
type loadLoop struct {
	epfd  int
	conns map[int32]*loopConn
	devs  []*benchDev
	addr  string // the endpoint listener's host:port

	total    int64
	interval time.Duration // between one poster's posts; 0: as soon as answered
	next     int64         // messages started
	answered int64         // posts answered or failed
	waiting  []*loopConn   // posters waiting for their due time
	postDone time.Duration // from start to the last answer
	start    time.Time
	lat      []time.Duration // POST written → 201 read
	dev      *deliveries     // POST written → notification read, matched by id

	sent, failed, acked atomic.Int64

	buf []byte // read buffer
	ack []byte // frame scratch
}

type loopConn struct {
	fd     int
	device bool
	in     []byte // read, not yet parsed
	out    []byte // not yet taken by the socket
	busy   bool   // a poster waiting for its answer
	t0     time.Time
	due    time.Time
}

func newLoadLoop(endpoint string, devs []*benchDev, senders int, total int64, rate int) (*loadLoop, error) {
	host, err := endpointHost(endpoint)
	if err != nil {
		return nil, err
	}
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	l := &loadLoop{epfd: epfd, conns: map[int32]*loopConn{}, devs: devs, addr: host, total: total,
		buf: make([]byte, 64<<10)}
	if rate > 0 {
		l.interval = time.Second * time.Duration(senders) / time.Duration(rate)
	}
	for _, d := range devs {
		fd, err := takeFD(d.cl.NetConn())
		if err != nil {
			l.close()
			return nil, err
		}
		if err := l.add(&loopConn{fd: fd, device: true}); err != nil {
			l.close()
			return nil, err
		}
	}
	for range senders {
		if _, err := l.dial(); err != nil {
			l.close()
			return nil, err
		}
	}
	return l, nil
}

// takeFD takes the socket of c: a duplicate descriptor, non-blocking, and
// c closed, so Go's own poller no longer watches (and wakes for) it.
func takeFD(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("%T has no descriptor", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(f uintptr) { fd, derr = syscall.Dup(int(f)) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("dup: %w", derr)
	}
	c.Close()
	syscall.CloseOnExec(fd)
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

func (l *loadLoop) add(c *loopConn) error {
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(c.fd)}
	if err := syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
		syscall.Close(c.fd)
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	l.conns[int32(c.fd)] = c
	return nil
}

// dial opens a poster connection.
func (l *loadLoop) dial() (*loopConn, error) {
	nc, err := net.DialTimeout("tcp", l.addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	fd, err := takeFD(nc)
	if err != nil {
		return nil, err
	}
	c := &loopConn{fd: fd}
	return c, l.add(c)
}

func (l *loadLoop) drop(c *loopConn) {
	syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, c.fd, nil)
	syscall.Close(c.fd)
	delete(l.conns, int32(c.fd))
}

func (l *loadLoop) close() {
	for _, c := range l.conns {
		syscall.Close(c.fd)
	}
	clear(l.conns)
	syscall.Close(l.epfd)
}

// run posts total messages and returns when every post is answered and
// every notification acked, or ctx is done.
func (l *loadLoop) run(ctx context.Context) error {
	defer l.close()
	l.start = time.Now()
	l.dev = newDeliveries(l.start, int(l.total))
	// At an offered rate the posters take turns, spread evenly over one
	// poster's interval: a steady stream, not every poster at once in a
	// burst each interval.
	posters := len(l.conns) - len(l.devs)
	k := 0
	for _, c := range l.conns {
		if !c.device {
			c.due = l.start.Add(-l.interval + l.interval*time.Duration(k)/time.Duration(max(posters, 1)))
			k++
			l.idle(c, l.start)
		}
	}
	events := make([]syscall.EpollEvent, 256)
	for ctx.Err() == nil {
		if l.answered == l.total && l.acked.Load() >= l.sent.Load() {
			return nil
		}
		timeout := 100 // ms; ctx is checked this often
		now := time.Now()
		for _, c := range l.waiting {
			if ms := int((c.due.Sub(now) + time.Millisecond - 1) / time.Millisecond); ms < timeout {
				timeout = max(ms, 0)
			}
		}
		n, err := syscall.EpollWait(l.epfd, events, timeout)
		if err != nil && !errors.Is(err, syscall.EINTR) {
			return fmt.Errorf("epoll_wait: %w", err)
		}
		now = time.Now()
		for _, ev := range events[:max(n, 0)] {
			c := l.conns[ev.Fd]
			if c == nil {
				continue
			}
			if ev.Events&syscall.EPOLLOUT != 0 {
				l.flush(c)
			}
			if ev.Events&(syscall.EPOLLIN|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 {
				l.readable(c, now)
			}
		}
		if len(l.waiting) > 0 {
			kept := l.waiting[:0]
			for _, c := range l.waiting {
				if !c.due.After(now) {
					l.post(c, now)
				} else {
					kept = append(kept, c)
				}
			}
			l.waiting = kept
		}
	}
	return ctx.Err()
}

// idle is a poster ready for its next post: now, or at its due time when
// a rate is offered.
func (l *loadLoop) idle(c *loopConn, now time.Time) {
	if l.interval == 0 {
		l.post(c, now)
		return
	}
	c.due = c.due.Add(l.interval)
	if c.due.After(now) {
		l.waiting = append(l.waiting, c)
		return
	}
	l.post(c, now)
}

func (l *loadLoop) post(c *loopConn, now time.Time) {
	if l.next >= l.total {
		return
	}
	i := l.next
	l.next++
	// The write's own time, not the loop's wake-up (now), which the
	// events handled before it may have left behind: both latencies run
	// from here.
	c.busy, c.t0 = true, time.Now()
	l.write(c, l.devs[int(i)%len(l.devs)].req)
}

// write sends b, keeping what the socket does not take for EPOLLOUT.
func (l *loadLoop) write(c *loopConn, b []byte) {
	if len(c.out) > 0 {
		c.out = append(c.out, b...)
		return
	}
	for len(b) > 0 {
		n, err := syscall.Write(c.fd, b)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			c.out = append(c.out, b...)
			ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLOUT, Fd: int32(c.fd)}
			syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_MOD, c.fd, &ev)
			return
		case err != nil:
			return // the read side sees the failure
		}
		b = b[n:]
	}
}

func (l *loadLoop) flush(c *loopConn) {
	out := c.out
	c.out = nil
	l.write(c, out)
	if len(c.out) == 0 {
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(c.fd)}
		syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_MOD, c.fd, &ev)
	}
}

func (l *loadLoop) readable(c *loopConn, now time.Time) {
	n, err := syscall.Read(c.fd, l.buf)
	for err == syscall.EINTR {
		n, err = syscall.Read(c.fd, l.buf)
	}
	if err == syscall.EAGAIN {
		return
	}
	if err != nil || n <= 0 {
		l.ended(c, now)
		return
	}
	in := l.buf[:n]
	if len(c.in) > 0 {
		c.in = append(c.in, in...)
		in = c.in
	}
	var used int
	if c.device {
		used, err = l.frames(c, in, now)
	} else {
		used, err = l.answers(c, in, now)
	}
	if err != nil {
		l.ended(c, now)
		return
	}
	c.in = append(c.in[:0], in[used:]...)
}

// ended handles a connection that closed or failed. A device is gone (at
// the end of a run, or the relay closed it: its acks will be missing); a
// poster's post failed, and a new connection takes its place.
func (l *loadLoop) ended(c *loopConn, now time.Time) {
	l.drop(c)
	if c.device {
		return
	}
	if c.busy {
		l.failed.Add(1)
		l.answer(now)
	}
	nc, err := l.dial()
	if err != nil {
		return
	}
	nc.due = c.due
	l.idle(nc, now)
}

func (l *loadLoop) answer(now time.Time) {
	if l.answered++; l.answered == l.total {
		l.postDone = now.Sub(l.start)
	}
}

// answers parses the relay's HTTP responses in b and returns how many
// bytes they took.
func (l *loadLoop) answers(c *loopConn, b []byte, now time.Time) (int, error) {
	used := 0
	for {
		code, n, closeConn, location, err := parseResponse(b[used:])
		if err != nil || n == 0 {
			return used, err
		}
		used += n
		if !c.busy {
			return used, errors.New("an answer to no request")
		}
		c.busy = false
		if code == 201 {
			l.lat = append(l.lat, now.Sub(c.t0))
			l.dev.posted(location, c.t0)
			l.sent.Add(1)
		} else {
			l.failed.Add(1)
		}
		l.answer(now)
		if closeConn {
			return used, errors.New("connection: close")
		}
		l.idle(c, now)
	}
}

// parseResponse reads one HTTP/1.1 response with a Content-Length body
// from the start of b: its status, its length (0 if b does not hold all of
// it yet), whether the server closes the connection after it, and its
// Location header (in b).
func parseResponse(b []byte) (code, n int, closeConn bool, location []byte, err error) {
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 {
		if len(b) > 64<<10 {
			return 0, 0, false, nil, errors.New("response header too long")
		}
		return 0, 0, false, nil, nil
	}
	head := b[:end]
	line, rest, _ := bytes.Cut(head, []byte("\r\n"))
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return 0, 0, false, nil, fmt.Errorf("bad status line %q", line)
	}
	code, err = atoiBytes(line[9:12])
	if err != nil {
		return 0, 0, false, nil, err
	}
	length := 0
	for len(rest) > 0 {
		var h []byte
		h, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		name, value, _ := bytes.Cut(h, []byte(":"))
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length, err = atoiBytes(value); err != nil {
				return 0, 0, false, nil, err
			}
		case bytes.EqualFold(name, []byte("Location")):
			location = value
		case bytes.EqualFold(name, []byte("Connection")) && bytes.EqualFold(value, []byte("close")):
			closeConn = true
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			return 0, 0, false, nil, errors.New("chunked responses are not expected from the relay")
		}
	}
	if len(b) < end+4+length {
		return 0, 0, false, nil, nil
	}
	return code, end + 4 + length, closeConn, location, nil
}

func atoiBytes(b []byte) (int, error) {
	if len(b) == 0 || len(b) > 9 {
		return 0, fmt.Errorf("bad number %q", b)
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("bad number %q", b)
		}
		n = n*10 + int(c-'0')
	}
	return n, nil
}

// frames handles the WebSocket frames from the relay in b (unmasked,
// unfragmented, as the relay writes them) and returns how many bytes they
// took: notifications are acked, pings answered.
func (l *loadLoop) frames(c *loopConn, b []byte, now time.Time) (int, error) {
	used := 0
	for {
		f := b[used:]
		if len(f) < 2 {
			return used, nil
		}
		if f[0]&0x70 != 0 || f[1]&0x80 != 0 {
			return used, errors.New("reserved bits or a mask from the relay")
		}
		op, size, hdr := f[0]&0x0f, int(f[1]&0x7f), 2
		switch size {
		case 126:
			if len(f) < 4 {
				return used, nil
			}
			size, hdr = int(binary.BigEndian.Uint16(f[2:])), 4
		case 127:
			if len(f) < 10 {
				return used, nil
			}
			n := binary.BigEndian.Uint64(f[2:])
			if n > 1<<20 {
				return used, errors.New("frame too big")
			}
			size, hdr = int(n), 10
		}
		if len(f) < hdr+size {
			return used, nil
		}
		if f[0]&0x80 == 0 || op == 0 {
			return used, errors.New("fragmented frame (the relay does not fragment)")
		}
		payload := f[hdr : hdr+size]
		used += hdr + size
		switch op {
		case 1:
			if err := l.notification(c, payload, now); err != nil {
				return used, err
			}
		case 8:
			return used, errors.New("closed by the relay")
		case 9:
			l.ack = appendClientFrame(l.ack[:0], 10, payload)
			l.write(c, l.ack)
		}
	}
}

var notificationHead = []byte(`{"messageType":"notification","channelID":"`)

// notification acks a notification frame, as a device does once it has
// it, and matches it to its POST. Other text frames are ignored.
func (l *loadLoop) notification(c *loopConn, frame []byte, now time.Time) error {
	if !bytes.HasPrefix(frame, notificationHead) {
		return nil
	}
	ch, ver, ok := notificationIDs(frame)
	if !ok {
		// Not in the relay's usual form: decode it the general way.
		f, err := pushproto.DecodeServer(frame)
		if err != nil {
			return err
		}
		ch, ver = f.ChannelID, f.Version
	}
	l.dev.notified(ver, now)
	ack := pushproto.EncodeAck([]pushproto.AckUpdate{{ChannelID: ch, Version: ver, Code: 100}})
	l.ack = appendClientFrame(l.ack[:0], 1, ack)
	l.write(c, l.ack)
	l.acked.Add(1)
	return nil
}

// notificationIDs reads the channelID and version of a notification frame
// written the way the relay writes them (those two first, no escapes).
func notificationIDs(frame []byte) (ch, ver string, ok bool) {
	rest := frame[len(notificationHead):]
	i := bytes.IndexByte(rest, '"')
	if i < 0 || bytes.IndexByte(rest[:i], '\\') >= 0 {
		return "", "", false
	}
	ch = string(rest[:i])
	rest, ok = bytes.CutPrefix(rest[i:], []byte(`","version":"`))
	if !ok {
		return "", "", false
	}
	i = bytes.IndexByte(rest, '"')
	if i <= 0 || bytes.IndexByte(rest[:i], '\\') >= 0 {
		return "", "", false
	}
	return ch, string(rest[:i]), true
}

// appendClientFrame appends a final frame of type op carrying payload,
// masked with a random key as RFC 6455 requires of clients.
func appendClientFrame(dst []byte, op byte, payload []byte) []byte {
	dst = append(dst, 0x80|op)
	switch n := len(payload); {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xffff:
		dst = append(dst, 0x80|126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	var key [4]byte
	binary.LittleEndian.PutUint32(key[:], rand.Uint32())
	dst = append(dst, key[:]...)
	for i, c := range payload {
		dst = append(dst, c^key[i&3])
	}
	return dst
}

// endpointHost is the host:port of an http:// endpoint URL.
func endpointHost(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "http" {
		return "", fmt.Errorf("the load loop needs an http:// endpoint, got %q", endpoint)
	}
	return u.Host, nil
}
