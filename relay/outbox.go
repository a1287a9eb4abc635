package relay

import (
	"errors"
	"net"
	"time"

	"github.com/pushrelay/pushrelay/relay/pushproto"
)

// outbox is a session's bounded send queue, and the writer that empties
// it. The reader (replies), the pump (notifications), the hub (TTL-0
// messages) and the keepalive loop (pings, closes) queue without blocking;
// one goroutine of the session's own, started only while there is
// something to send, writes. A device that stops reading therefore blocks
// only its own writer: no shared worker, no lock and no other device waits
// for its socket. Its writer gives up at the adapter's write timeout (or
// at the close grace once a close is decided), and the session ends.
//
// Bounds, in bytes of encoded frames: notifications are queued only while
// the outbox holds less than Config.OutboxBytes (what they leave waits in
// the store, or in the session's queue of committed messages, which has
// the same budget); replies and control frames may go past it by
// replySlack, and a device that makes the relay queue more than that
// without reading is closed.
//
// All fields are guarded by session.mu.
type outbox struct {
	frames  [][]byte
	bytes   int      // encoded bytes of frames
	notes   int      // notifications among frames (the rest are replies)
	direct  int      // TTL-0 notifications among frames (counted as dropped if never written)
	pongs   [][]byte // ping payloads to answer, at most maxPongs
	ping    bool     // a keepalive ping is wanted
	close   *closeFrame
	writing bool // the writer goroutine is running
	// done: the close frame was written or a write failed; nothing more
	// goes out.
	done bool
}

type closeFrame struct {
	code   int
	reason string
}

// replySlack is how far replies and control frames may take an outbox past
// its notification budget.
const replySlack = 16 << 10

// maxPongs bounds the pings a session owes answers to; more are ignored
// (a peer that floods pings without reading gets no more pongs).
const maxPongs = 4

// closeGrace bounds a session's end once a close is decided: what is
// queued and the close frame must be written within it, or the socket is
// dropped.
const closeGrace = time.Second

// pendingLocked reports whether the writer has anything to do.
func (o *outbox) pendingLocked() bool {
	return !o.done && (len(o.frames) > 0 || len(o.pongs) > 0 || o.ping || o.close != nil)
}

// frame kinds, as the outbox counts them
const (
	kindReply = iota
	kindStored
	kindDirect
)

// queueLocked queues frame of the given kind. s.mu is held.
func (s *session) queueLocked(frame []byte, kind int) {
	s.out.frames = append(s.out.frames, frame)
	s.out.bytes += len(frame)
	s.hub.m.outbox.Add(float64(len(frame)))
	if kind != kindReply {
		s.out.notes++
	}
	if kind == kindDirect {
		s.out.direct++
	}
}

// write queues a reply frame. It reports false when the session is
// closing, or when the device has made the relay queue more than its
// outbox may hold without reading it: then the session is closed.
func (s *session) write(frame []byte) bool {
	s.mu.Lock()
	return s.writeAndUnlock(frame)
}

// writeAndUnlock is write with s.mu held; it unlocks it.
func (s *session) writeAndUnlock(frame []byte) bool {
	if s.closed {
		s.mu.Unlock()
		return false
	}
	if s.out.bytes+len(frame) > s.hub.cfg.OutboxBytes+replySlack {
		s.mu.Unlock()
		s.hub.m.slow.With("outbox_full").Inc()
		s.close(pushproto.CloseServerError, "not reading")
		return false
	}
	s.queueLocked(frame, kindReply)
	s.startWriterLocked()
	s.mu.Unlock()
	return true
}

// startWriterLocked starts the writer if there is work for it and it is
// not running. s.mu is held. The WaitGroup count taken here is safe: the
// session's own count is held until its writer releases it, and no writer
// is running.
func (s *session) startWriterLocked() {
	if s.out.writing || !(s.out.pendingLocked() || s.release) {
		return
	}
	s.out.writing = true
	s.hub.wg.Add(1)
	go s.writer()
}

// writer writes what is queued until the outbox is empty, then exits;
// when the session has finished it writes the close frame last and
// releases the socket. It is the only goroutine that writes to conn.
func (s *session) writer() {
	h := s.hub
	defer h.wg.Done()
	var frames [][]byte
	for {
		s.mu.Lock()
		if s.bpending {
			// Broadcast changes came while the last frames were written.
			s.flushBroadcastsLocked()
		}
		if !s.out.pendingLocked() {
			if s.release {
				s.mu.Unlock()
				s.released()
				return
			}
			// An idle session keeps no buffers.
			s.out.writing, s.out.frames = false, nil
			s.mu.Unlock()
			return
		}
		frames, s.out.frames = s.out.frames, frames[:0]
		pongs, ping, cf := s.out.pongs, s.out.ping, s.out.close
		s.out.pongs, s.out.ping = nil, false
		notes, direct := s.out.notes, s.out.direct
		s.out.notes, s.out.direct = 0, 0
		s.mu.Unlock()

		var err error
		for _, p := range pongs {
			if err = s.conn.Pong(p); err != nil {
				break
			}
		}
		if err == nil && len(frames) > 0 {
			if len(frames) == 1 {
				err = s.conn.WriteFrame(frames[0])
			} else {
				err = s.conn.WriteFrames(frames)
			}
			if err == nil && notes > 0 {
				h.m.delivered.Add(float64(notes))
			}
		}
		if err == nil && ping {
			err = s.conn.Ping()
		}
		if err == nil && cf != nil {
			err = s.conn.Close(cf.code, cf.reason)
		}
		n := 0
		for i, f := range frames {
			n += len(f)
			frames[i] = nil
		}

		s.mu.Lock()
		s.out.bytes -= n
		h.m.outbox.Add(-float64(n))
		if err != nil || cf != nil {
			// Nothing more goes out: after the close frame by the
			// protocol, after a failed write because the socket is broken
			// or the device did not read within the write timeout.
			s.out.done = true
			if dropped := s.out.direct; dropped > 0 {
				h.m.dropped.With("ttl0_closed").Add(float64(dropped))
			}
			h.m.outbox.Add(-float64(s.out.bytes))
			s.out.frames, s.out.bytes = nil, 0
			s.out.notes, s.out.direct = 0, 0
			s.out.pongs, s.out.ping, s.out.close = nil, false, nil
		}
		if err == nil && cf == nil {
			// Room again: a pump that stopped for it may go on.
			s.startPumpLocked()
		} else {
			s.mu.Unlock()
		}
		if err != nil {
			s.writeFailed(err, direct)
		}
	}
}

// writeFailed ends a session whose write failed: the reader is stopped (the
// socket is bounded at once) and the failure counted.
func (s *session) writeFailed(err error, direct int) {
	h := s.hub
	reason := "error"
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		reason = "timeout"
	}
	h.m.slow.With(reason).Inc()
	if direct > 0 {
		h.m.dropped.With("ttl0_write_failed").Add(float64(direct))
	}
	h.cfg.Logger.Debug("write to device failed", "uaid", s.uaidString(), "err", err)
	s.mu.Lock()
	s.closed = true
	if s.closedAt.IsZero() {
		s.closedAt = h.cfg.Now()
	}
	s.mu.Unlock()
	s.conn.Expire(0)
	if s.conn.Disarm() {
		s.finish() // nobody is reading
	}
}
