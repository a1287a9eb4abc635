package relay

import (
	"errors"
	"hash/maphash"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/token"
)

// session is one device connection. The reader goroutine (run) owns the
// fields above mu; mu guards the rest. Only the session's writer (see
// outbox) writes to conn.
type session struct {
	hub  *Hub
	conn Conn

	// reader-owned
	uaid     push.UAID
	helloed  bool
	lastPing time.Time
	// simplePush is set for devices that did not say use_webpush (Firefox
	// OS 1.x): they get SimplePush endpoints and notifications, and ack
	// integer versions.
	simplePush bool

	started time.Time // for the hello timeout

	after followUps // what the frames read so far asked to start

	mu           sync.Mutex
	ready        bool // hello done; keepalive may ping
	closed       bool // no more work may start
	wake         bool // accepted for UDP wake: close with 4774 when idle
	closedAt     time.Time
	finished     bool // the reader is done: the writer releases the socket
	release      bool // finish asked the writer to release the socket
	lastPingSent time.Time
	inflight     map[uint64]uint64 // notifications sent and not yet acked: sentHash → seq
	lastSent     uint64            // highest seq sent on this session
	pumpWanted   bool              // the store may hold messages to send
	pumping      bool              // a pump goroutine is running
	pingOwed     bool              // a {} answer waits for the pump
	acks         []uint64          // acked seqs to delete
	flushing     bool              // an ack flusher is running, or will after the burst
	out          outbox

	// synced is set once the pump has read every stored message past
	// lastSent and no commit came meanwhile: from then on the hub hands
	// the session each message it commits for the device (offer), and
	// queued holds those not yet sent, in seq order, so the pump sends
	// them without reading them back. queuedBytes is their data's size,
	// bounded like the outbox.
	synced      bool
	queued      []*store.Message
	queuedBytes int

	// bsubs are the session's broadcast subscriptions, each with the
	// version its device has; bpending is set when a change came while
	// the writer was busy: the writer sends it when done (broadcasts.go).
	bsubs    []bcastSub
	bpending bool
}

// start begins serving a newly accepted connection.
func (s *session) start() {
	s.conn.OnPing(s.onPing)
	s.conn.SetIdleTimeout(s.hub.cfg.HelloTimeout)
	s.wait()
}

// onPing queues the answer to a transport ping from the device. It runs
// on the reading goroutine and never blocks.
func (s *session) onPing(payload []byte) {
	s.mu.Lock()
	if !s.closed && len(s.out.pongs) < maxPongs {
		s.out.pongs = append(s.out.pongs, payload)
		s.startWriterLocked()
	}
	s.mu.Unlock()
}

// wait arranges for the next burst of frames: through the adapter's
// poller when it has one, so the idle session holds no goroutine, else on
// a worker parked in WaitReadable.
func (s *session) wait() {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		s.finish()
		return
	}
	if s.conn.Notify(s.onReadable) {
		return
	}
	s.hub.goWait(func() {
		if err := s.conn.WaitReadable(); err != nil {
			s.readFailed(err)
			s.finish()
			return
		}
		s.burstOwn()
	})
}

// onReadable is called by the adapter's poller; it must not block.
func (s *session) onReadable() { s.hub.goOwned(s.burst) }

// burst reads on a shared worker what the poller said is there. A frame
// that has only partly arrived is not waited for here: the rest of the
// burst goes to a goroutine of the session's own, so a device that sends
// half a frame and stops holds no worker.
func (s *session) burst() {
	end := s.readBurst(true)
	after := s.takeAfter()
	switch end {
	case burstMore:
		s.wait()
	case burstPartial:
		s.hub.goWait(s.burstOwn)
	default:
		s.finish()
	}
	after.run(s)
}

// burstOwn reads a burst that may wait for the device, on the session's
// own goroutine (goWait).
func (s *session) burstOwn() {
	end := s.readBurst(false)
	after := s.takeAfter()
	if end == burstMore {
		s.wait()
	} else {
		s.finish()
	}
	after.run(s)
}

// followUps is what the frames of a burst asked to start: a pump (acks
// freed room in the window) and a flush of the acks. The burst's own
// goroutine runs them once the burst is over and the reading handed on,
// instead of queueing them as it reads: queued, each woke an idle worker
// that mostly found the task gone, taken by the burst's worker done with
// the burst first. Before a further frame of the burst is read they
// are queued as before: the burst may wait on the store for that frame (a
// register), or on the device (burstOwn).
type followUps struct{ pump, flush bool }

// takeAfter takes the follow-ups the burst asked for; only the reader
// calls it, before it hands the reading on.
func (s *session) takeAfter() followUps {
	f := s.after
	s.after = followUps{}
	return f
}

// queue has workers run the follow-ups; the caller is the reader, so
// holds the session's count.
func (f followUps) queue(s *session) {
	if f.pump {
		s.hub.goOwned(s.pump)
	}
	if f.flush {
		s.hub.goOwned(s.flushAcks)
	}
}

// run runs the follow-ups on the calling goroutine, the pump first: it
// does not wait on the store's sync, the flush does.
func (f followUps) run(s *session) {
	if f.pump {
		s.pump()
	}
	if f.flush {
		s.flushAcks()
	}
}

// How a burst of reading ended.
const (
	burstMore    = iota // read all there was; wait for more
	burstPartial        // a frame is only partly here (shared workers only)
	burstEnd            // the session must end
)

// readBurst reads and handles frames until the adapter holds no more
// buffered bytes. On a shared worker it stops before a frame that has not
// wholly arrived.
func (s *session) readBurst(shared bool) int {
	h := s.hub
	for {
		s.takeAfter().queue(s) // nothing unless a frame came before
		if shared && !s.conn.Whole() {
			return burstPartial
		}
		frame, err := s.conn.ReadFrame()
		if err != nil {
			s.readFailed(err)
			return burstEnd
		}
		if frame == nil {
			return burstMore // only pongs were pending
		}
		msg, err := pushproto.DecodeClient(frame)
		if err != nil {
			h.m.frames.With("invalid").Inc()
			h.cfg.Logger.Debug("bad frame from device", "remote", s.conn.RemoteAddr(), "uaid", s.uaidString(), "err", err)
			s.close(pushproto.CloseServerError, pushproto.Reason(err))
			return burstEnd
		}
		if !s.handle(msg) {
			return burstEnd
		}
		if !s.conn.Buffered() {
			return burstMore
		}
	}
}

// localAddr is the relay's address the device connected to, if the
// adapter knows it.
func (s *session) localAddr() netip.Addr {
	c, ok := s.conn.(interface{ LocalAddr() net.Addr })
	if !ok {
		return netip.Addr{}
	}
	if ta, ok := c.LocalAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

func (s *session) uaidString() string {
	if !s.helloed {
		return ""
	}
	return s.uaid.String()
}

func (s *session) readFailed(err error) {
	var ne net.Error
	switch {
	case errors.Is(err, pushproto.ErrBinaryFrame):
		s.close(pushproto.CloseUnsupported, "binary frames are not accepted")
	case errors.Is(err, pushproto.ErrFrameTooBig):
		s.close(pushproto.CloseTooBig, "frame too big")
	case errors.Is(err, pushproto.ErrInvalidUTF8):
		s.hub.m.frames.With("invalid").Inc()
		s.close(pushproto.CloseInvalidData, "text frame is not valid UTF-8")
	case errors.As(err, &ne) && ne.Timeout():
		if !s.helloed {
			s.close(pushproto.CloseServerError, "hello timeout")
		} else {
			s.close(pushproto.CloseServerError, "pong timeout")
		}
	}
	// Otherwise the peer closed or the socket failed: finish closes it.
}

// finish ends the session once nobody reads it any more: it leaves the
// hub and has the writer send what is queued, then the close frame (a
// normal one unless a close was decided), then release the socket. It
// never blocks, and runs once, on whichever goroutine last owned the
// reading.
func (s *session) finish() {
	s.mu.Lock()
	if s.finished {
		s.mu.Unlock()
		return
	}
	s.finished, s.closed, s.release = true, true, true
	if s.out.close == nil && !s.out.done {
		s.out.close = &closeFrame{code: pushproto.CloseNormal}
	}
	s.startWriterLocked()
	s.mu.Unlock()
	s.hub.detach(s)
}

// released is the session's last step, on its writer: the close frame is
// out (or could not be written), the reader is done.
func (s *session) released() {
	h := s.hub
	s.conn.Release()
	s.mu.Lock()
	unacked := s.wake && (len(s.inflight) > 0 || s.pumpWanted || len(s.queued) > 0)
	s.queued, s.queuedBytes = nil, 0
	s.mu.Unlock()
	if unacked && h.cfg.Waker != nil {
		// Messages went out without an ack, or were not sent: the device
		// sleeps now, so wake it for them. (Messages stored after the
		// close was decided are handed to the waker by Push.)
		h.cfg.Waker.Wake(s.uaid, time.Time{})
	}
	h.m.connections.Dec()
	h.wg.Done()
}

// close decides the session's end: the close frame is queued after what
// is already queued, the socket is bounded to closeGrace, and the reader
// then fails and finishes. It never blocks, so the keepalive loop and the
// hub may call it for any session. The first close decided wins.
func (s *session) close(code int, reason string) {
	s.mu.Lock()
	if s.out.close != nil || s.out.done || s.finished {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.closedAt = s.hub.cfg.Now()
	s.out.close = &closeFrame{code: code, reason: reason}
	s.startWriterLocked()
	s.mu.Unlock()
	s.hub.m.closes.With(strconv.Itoa(code)).Inc()
	s.conn.Expire(closeGrace)
	if s.conn.Disarm() {
		s.finish() // nobody is reading
	}
}

// check is the keepalive loop's look at one session.
func (s *session) check(now time.Time) {
	h := s.hub
	s.mu.Lock()
	ready, closed, finished, wake := s.ready, s.closed, s.finished, s.wake
	closedAt, lastPing := s.closedAt, s.lastPingSent
	s.mu.Unlock()
	switch {
	case finished:
	case closed:
		// A close was sent while the poller watched the socket and the
		// peer has not answered it: stop waiting.
		if !closedAt.IsZero() && now.Sub(closedAt) > 2*closeGrace && s.conn.Disarm() {
			s.finish()
		}
	case !ready:
		if now.Sub(s.started) > h.cfg.HelloTimeout {
			s.close(pushproto.CloseServerError, "hello timeout")
		}
	default:
		idle := s.conn.Idle()
		switch {
		case idle > h.cfg.PingInterval+h.cfg.PongTimeout:
			s.close(pushproto.CloseServerError, "pong timeout")
		case wake && idle >= h.cfg.WakeIdleClose:
			s.close(pushproto.CloseWake, "UDP wake")
		case idle >= h.cfg.PingInterval && now.Sub(lastPing) >= h.cfg.PingInterval:
			s.ping(now)
		}
	}
}

// ping has the writer send a transport ping; the keepalive loop calls it
// and does not wait for the socket.
func (s *session) ping(now time.Time) {
	s.mu.Lock()
	if !s.closed {
		s.out.ping = true
		s.lastPingSent = now
		s.startWriterLocked()
	}
	s.mu.Unlock()
}

// handle processes one decoded frame; false ends the session.
func (s *session) handle(msg any) bool {
	h := s.hub
	if hello, ok := msg.(pushproto.Hello); ok {
		h.m.frames.With(string(pushproto.TypeHello)).Inc()
		if s.helloed {
			s.close(pushproto.CloseServerError, "already hello'd")
			return false
		}
		return s.hello(hello)
	}
	if !s.helloed {
		h.m.frames.With("before_hello").Inc()
		s.close(pushproto.CloseServerError, "hello required")
		return false
	}
	switch m := msg.(type) {
	case pushproto.Register:
		h.m.frames.With(string(pushproto.TypeRegister)).Inc()
		return s.register(m)
	case pushproto.Unregister:
		h.m.frames.With(string(pushproto.TypeUnregister)).Inc()
		return s.unregister(m)
	case pushproto.Ack:
		h.m.framesAck.Inc()
		s.ack(m)
		return true
	case pushproto.Nack:
		h.m.frames.With(string(pushproto.TypeNack)).Inc()
		h.m.nacks.Inc()
		return true
	case pushproto.Ping:
		h.m.frames.With(string(pushproto.TypePing)).Inc()
		now := h.cfg.Now()
		if h.cfg.MinPingInterval > 0 && !s.lastPing.IsZero() && now.Sub(s.lastPing) < h.cfg.MinPingInterval {
			s.close(pushproto.CloseServerError, "excessive ping")
			return false
		}
		s.lastPing = now
		h.m.pings.Inc()
		// As autopush, answer after what the frames before it made the
		// session send (the stored messages a hello or an ack lets
		// out): a client that reads the answer before any notification
		// knows nothing was waiting (the upstream link's polls).
		s.mu.Lock()
		if s.pumping {
			s.pingOwed = true
			s.mu.Unlock()
			return true
		}
		return s.writeAndUnlock(pushproto.PingReply)
	case pushproto.BroadcastSubscribe:
		h.m.frames.With(string(pushproto.TypeBroadcastSubscribe)).Inc()
		return s.broadcastSubscribe(m.Broadcasts)
	}
	return true
}

func (s *session) hello(m pushproto.Hello) bool {
	h := s.hub
	result := "new"
	u, err := push.ParseUAID(m.UAID)
	if err == nil {
		_, ok, err := h.cfg.Store.Device(u)
		if err != nil {
			h.storageFailed("read device", u, err)
			s.close(pushproto.CloseServerError, "storage error")
			return false
		}
		if ok {
			result = "resumed"
			if h.cfg.ServedElsewhere != nil && h.cfg.ServedElsewhere(u) {
				// A child relay's device: its messages go down the
				// link, its registrations come up it. Serving it here
				// too would deliver twice and let two relays change
				// its channels; it is a new device to this relay.
				result = "elsewhere"
			}
		}
	}
	if result != "resumed" {
		// Like autopush, a new UAID is only stored at its first register.
		u = newUAID()
	}
	s.uaid = u
	s.helloed = true
	s.simplePush = !m.UseWebPush
	if !h.attach(s) {
		s.close(pushproto.CloseGoingAway, "server shutting down")
		return false
	}
	h.m.hellos.With(result).Inc()
	s.conn.SetIdleTimeout(h.cfg.PingInterval + h.cfg.PongTimeout + h.cfg.PingInterval/10)
	reply := pushproto.HelloReply{Status: pushproto.StatusOK}
	if h.cfg.Waker != nil {
		h.cfg.Waker.Connected(u)
		if m.Wake != nil {
			r, err := h.cfg.Waker.HelloWake(h.ctx, u, m, s.localAddr())
			if err != nil {
				// The device stays on its WebSocket: nothing is lost.
				h.cfg.Logger.Warn("record wake address", "uaid", u.String(), "err", err)
			} else {
				reply = r
			}
		}
	}
	reply.UAID = u.String()
	if reply.Status == pushproto.StatusWake {
		s.mu.Lock()
		s.wake = true
		s.mu.Unlock()
	} else {
		reply.Status = pushproto.StatusOK
	}
	if !s.helloReply(reply, m.Broadcasts) {
		return false
	}
	if result == "resumed" {
		if err := h.cfg.Store.Touch(h.ctx, u, h.cfg.Now()); err != nil {
			h.cfg.Logger.Warn("record device last seen", "uaid", u.String(), "err", err)
		}
	}
	s.mu.Lock()
	s.ready = true
	s.mu.Unlock()
	// Pushes that arrived between attach and now only marked the store as
	// holding messages; send them (and, for a resumed device, what waited).
	s.kick()
	return true
}

func (s *session) register(m pushproto.Register) bool {
	h := s.hub
	ch, err := push.ParseChannelID(m.ChannelID)
	if err != nil {
		s.close(pushproto.CloseServerError, "invalid channelID")
		return false
	}
	var key []byte
	if m.Key != "" {
		if h.cfg.CheckKey != nil {
			key, err = h.cfg.CheckKey(m.Key)
		} else {
			err = errors.New("keys not supported")
		}
		if err != nil {
			h.m.registers.With("400").Inc()
			return s.write(pushproto.EncodeRegister(m.ChannelID, 400, ""))
		}
	}
	reg := Registration{UAID: s.uaid, Channel: ch, Key: key, SimplePush: s.simplePush}
	endpoint, err := h.cfg.Endpoints.Mint(h.ctx, reg)
	if err != nil {
		h.cfg.Logger.Warn("endpoint not minted", "uaid", s.uaid, "channel", ch, "err", err)
		h.m.registers.With("500").Inc()
		return s.write(pushproto.EncodeRegister(m.ChannelID, 500, ""))
	}
	c := store.Channel{UAID: s.uaid, ID: ch, Created: h.cfg.Now(), Key: key}
	if k, ok := h.cfg.Endpoints.(EndpointKeeper); ok && k.KeepEndpoints() {
		c.Endpoint = endpoint
	}
	err = h.cfg.Store.Register(h.ctx, c)
	status := 200
	switch {
	case err == nil:
	case errors.Is(err, store.ErrChannelConflict):
		status = 409
	case errors.Is(err, store.ErrTooManyChannels):
		status = 413
	default:
		h.storageFailed("register channel", s.uaid, err)
		status = 500
	}
	h.m.registers.With(strconv.Itoa(status)).Inc()
	if status != 200 {
		h.cfg.Endpoints.Abandon(h.ctx, reg)
		endpoint = ""
	}
	return s.write(pushproto.EncodeRegister(m.ChannelID, status, endpoint))
}

func (s *session) unregister(m pushproto.Unregister) bool {
	h := s.hub
	ch, err := push.ParseChannelID(m.ChannelID)
	if err != nil {
		s.close(pushproto.CloseServerError, "invalid channelID")
		return false
	}
	status := 200
	if un, ok := h.cfg.Endpoints.(Unregisterer); ok {
		err = un.Unregister(h.ctx, s.uaid, ch)
	} else {
		_, err = h.cfg.Store.Unregister(h.ctx, s.uaid, ch)
	}
	if err != nil {
		h.storageFailed("unregister channel", s.uaid, err)
		status = 500
	} else {
		h.m.unregisters.Inc()
		s.mu.Lock()
		s.dropQueuedLocked(func(m *store.Message) bool { return m.Channel == ch })
		s.mu.Unlock()
	}
	return s.write(pushproto.EncodeUnregister(m.ChannelID, status))
}

func (s *session) ack(m pushproto.Ack) {
	h := s.hub
	s.mu.Lock()
	for _, up := range m.Updates {
		if up.Code == pushproto.AckOK {
			h.m.ackedOK.Inc()
		} else {
			h.m.acked.With(strconv.Itoa(up.Code)).Inc()
		}
		key := sentHash(up.ChannelID, up.Version)
		if seq, ok := s.inflight[key]; ok {
			delete(s.inflight, key)
			s.acks = append(s.acks, seq)
			continue
		}
		// Not in flight as sent: a message id from an earlier connection
		// (or written differently) still names a message of this device.
		id, err := h.cfg.Tokens.OpenMessageID(up.Version)
		if err != nil || push.UAID(id.UAID) != s.uaid || push.ChannelID(id.Channel).String() != up.ChannelID {
			h.m.dropped.With("ack_unknown").Inc()
			continue
		}
		for k, seq := range s.inflight {
			if seq == id.Seq {
				delete(s.inflight, k)
			}
		}
		s.acks = append(s.acks, id.Seq)
	}
	if len(s.acks) > 0 && !s.flushing {
		// The reader holds the session's count: no ticket needed.
		s.flushing = true
		s.after.flush = true
	}
	if s.claimPumpLocked() {
		s.after.pump = true
	}
	s.mu.Unlock()
}

// flushAcks deletes acked messages. It does not hold up the reader: a
// delete lost to a crash only means the device sees the message again.
func (s *session) flushAcks() {
	h := s.hub
	for {
		s.mu.Lock()
		seqs := s.acks
		s.acks = nil
		if len(seqs) == 0 {
			s.flushing = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		if _, err := h.cfg.Store.Ack(h.ctx, s.uaid, seqs...); err != nil {
			h.cfg.Logger.Warn("delete acked messages", "uaid", s.uaid.String(), "n", len(seqs), "err", err)
		}
	}
}

// kick tells the session the store may hold new messages for it.
func (s *session) kick() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.pumpWanted = true
	s.startPumpLocked()
}

// startPumpLocked starts a pump if there is something to send and room
// for it (in the window and in the outbox), then unlocks s.mu. Nothing
// goes out before the hello reply: hello kicks once ready. The pump runs
// on a shared worker: it reads the store and queues, and never waits for
// the device. The WaitGroup ticket is taken under s.mu while the session
// is open, so its own count is still held (callers such as the committer
// and Push hold none).
func (s *session) startPumpLocked() {
	start := s.claimPumpLocked()
	s.mu.Unlock()
	if start {
		s.hub.goOwned(s.pump)
	}
}

// claimPumpLocked reports whether a pump is to start now; if so it is
// counted as running, its ticket taken, and the caller runs s.pump or
// has it run. s.mu is held.
func (s *session) claimPumpLocked() bool {
	start := s.ready && !s.closed && !s.pumping && (s.pumpWanted || len(s.queued) > 0) && s.roomLocked() > 0
	if start {
		s.pumping = true
		s.hub.wg.Add(1)
	}
	return start
}

// roomLocked is how many more notifications may be queued now: the
// window's free slots, or none while the outbox is at its budget.
func (s *session) roomLocked() int {
	if s.out.bytes >= s.hub.cfg.OutboxBytes {
		return 0
	}
	return s.hub.cfg.Window - len(s.inflight)
}

// maxQueued bounds the committed messages a session holds for sending;
// past it (or past the outbox budget in bytes) the session reads them from
// the store when it has room.
const maxQueued = 128

// offer hands the session a message just committed for its device. Called
// in seq order (Hub.stored): a synced session queues it, dropping a queued
// message it replaces by topic; any other reads the store again.
func (s *session) offer(m *store.Message) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	switch {
	case !s.synced:
		s.pumpWanted = true
	case len(s.queued) >= maxQueued || s.queuedBytes+len(m.Data) > s.hub.cfg.OutboxBytes:
		// Too far behind to hold in memory: what is queued is on disk
		// past lastSent, and the pump reads it from there.
		s.synced, s.queued, s.queuedBytes, s.pumpWanted = false, nil, 0, true
	case m.Seq > s.lastSent:
		if m.Topic != "" {
			s.dropQueuedLocked(func(q *store.Message) bool {
				return q.Channel == m.Channel && q.Topic == m.Topic
			})
		}
		s.queued = append(s.queued, m)
		s.queuedBytes += len(m.Data)
	}
	s.startPumpLocked()
}

// resync makes the session read the store past lastSent again, dropping
// what it queued (Hub.Resync).
func (s *session) resync() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.synced, s.queued, s.queuedBytes, s.pumpWanted = false, nil, 0, true
	s.startPumpLocked()
}

// dropQueuedLocked removes the queued messages drop selects. s.mu is held.
func (s *session) dropQueuedLocked(drop func(*store.Message) bool) {
	s.queued = slices.DeleteFunc(s.queued, func(m *store.Message) bool {
		if drop(m) {
			s.queuedBytes -= len(m.Data)
			return true
		}
		return false
	})
}

// accepting reports whether the session will still send what is stored
// for it; false means it is closing.
func (s *session) accepting() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.closed
}

// sendDirect queues a TTL-0 frame. A TTL-0 message is never stored, so
// when the session is closing (or not past hello) or its outbox is at its
// budget it is dropped: the reason is returned for the caller to count.
func (s *session) sendDirect(frame []byte) (dropped string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed || !s.ready:
		return "ttl0_closed"
	case s.out.bytes+len(frame) > s.hub.cfg.OutboxBytes:
		return "ttl0_outbox_full"
	}
	s.queueLocked(frame, kindDirect)
	s.startWriterLocked()
	return ""
}

// pump queues notifications for stored messages past lastSent, keeping at
// most Window in flight and the outbox within its budget. Until the
// session is synced it reads them from the store; then it takes what
// offer queued. Either way they go out in seq order whatever order commits
// are reported in. It runs on a worker with a WaitGroup ticket
// (startPumpLocked) and never waits for the device.
func (s *session) pump() {
	h := s.hub
	defer h.wg.Done()
	for {
		s.mu.Lock()
		room := s.roomLocked()
		if s.closed || room <= 0 {
			s.pumpDoneLocked()
			s.mu.Unlock()
			return
		}
		budget := h.cfg.OutboxBytes - s.out.bytes
		var send []outgoing
		read := false
		switch {
		case len(s.queued) > 0:
			s.dropExpiredLocked(h.cfg.Now())
			n := fitting(s.queued, room, budget)
			send = s.markSent(s.queued[:n])
			for _, m := range s.queued[:n] {
				s.queuedBytes -= len(m.Data)
			}
			clear(s.queued[:n])
			s.queued = s.queued[n:]
			if len(s.queued) == 0 {
				s.queued = nil
			}
		case s.pumpWanted:
			s.pumpWanted, read = false, true
		}
		if len(send) == 0 && !read {
			s.pumpDoneLocked()
			s.mu.Unlock()
			return
		}
		after := s.lastSent
		s.mu.Unlock()

		if read {
			msgs, err := h.cfg.Store.Messages(s.uaid, after, room)
			if err != nil {
				h.storageFailed("read waiting messages", s.uaid, err)
				s.pumpStopped()
				s.close(pushproto.CloseServerError, "storage error")
				return
			}
			ptrs := make([]*store.Message, len(msgs))
			for i := range msgs {
				ptrs[i] = &msgs[i]
			}
			n := fitting(ptrs, room, budget)
			s.mu.Lock()
			send = s.markSent(ptrs[:n])
			switch {
			case len(msgs) == room || n < len(msgs):
				s.pumpWanted = true // there may be more, or there is
			case !s.pumpWanted:
				// Read to the end, and no commit for the device came
				// during the read: offer now sees every later one.
				s.synced = true
			}
			s.mu.Unlock()
		}
		s.queueMessages(send)
	}
}

// fitting is how many of msgs, at most room, fit in budget bytes of
// frames; at least one when there is room, so a message larger than the
// whole budget still goes (alone).
func fitting(msgs []*store.Message, room, budget int) int {
	n, used := 0, 0
	for _, m := range msgs[:min(room, len(msgs))] {
		used += frameCost(m)
		if n > 0 && used > budget {
			break
		}
		n++
	}
	return n
}

// frameCost estimates the size of m's notification frame: its data in
// base64 and the fixed fields.
func frameCost(m *store.Message) int {
	return (len(m.Data)+2)/3*4 + len(m.Encoding) + len(m.Encryption) + len(m.CryptoKey) + 256
}

// dropExpiredLocked drops queued messages whose TTL ran out while they
// waited for room (the store's sweep deletes them). s.mu is held.
func (s *session) dropExpiredLocked(now time.Time) {
	s.dropQueuedLocked(func(m *store.Message) bool { return !m.Expiry.After(now) })
}

// outgoing is a notification about to be written: the message and the
// channelID and version the device sees and acks it by.
type outgoing struct {
	m   *store.Message
	key sentKey
}

// markSent takes the messages of msgs past lastSent as sent: in flight
// until acked. s.mu is held.
func (s *session) markSent(msgs []*store.Message) []outgoing {
	if s.inflight == nil {
		s.inflight = make(map[uint64]uint64, len(msgs))
	}
	var send []outgoing
	for _, m := range msgs {
		if m.Seq <= s.lastSent {
			continue
		}
		key := s.keyFor(m)
		s.inflight[sentHash(key.channel, key.version)] = m.Seq
		s.lastSent = m.Seq
		send = append(send, outgoing{m, key})
	}
	return send
}

// frameBufs lends queueMessages the scratch buffer it encodes a batch
// into.
var frameBufs = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// maxPooledFrames keeps a rare large batch's buffer out of the pool.
const maxPooledFrames = 64 << 10

// queueMessages encodes notifications for msgs and queues them for the
// writer, in one allocation of exactly their size: what a session holds
// for a device that does not read is what its outbox counts. If the
// session closed meanwhile they are dropped: they wait in the store.
func (s *session) queueMessages(msgs []outgoing) {
	if len(msgs) == 0 {
		return
	}
	bp := frameBufs.Get().(*[]byte)
	scratch := (*bp)[:0]
	ends := make([]int, len(msgs))
	for i, o := range msgs {
		scratch = s.appendFrame(scratch, o.m, o.key)
		ends[i] = len(scratch)
	}
	buf := append([]byte(nil), scratch...)
	if cap(scratch) <= maxPooledFrames {
		*bp = scratch[:0]
		frameBufs.Put(bp)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	start := 0
	for _, end := range ends {
		s.queueLocked(buf[start:end:end], kindStored)
		start = end
	}
	s.startWriterLocked()
}

// pumpDoneLocked marks the pump stopped and queues the {} answer that
// waited for it. s.mu is held.
func (s *session) pumpDoneLocked() {
	s.pumping = false
	if s.pingOwed && !s.closed {
		s.pingOwed = false
		s.queueLocked(pushproto.PingReply, kindReply)
		s.startWriterLocked()
	}
}

func (s *session) pumpStopped() {
	s.mu.Lock()
	s.pumping = false
	s.mu.Unlock()
}

// sentKey names a notification as the device sees and acks it.
type sentKey struct{ channel, version string }

// sentSeed keys sentHash.
var sentSeed = maphash.MakeSeed()

// sentHash is what a session keeps of a notification in flight: a seeded
// hash of its channelID and version, 8 bytes instead of the 130 of the
// strings (a session may hold Window of them, and a relay tens of
// thousands of sessions). A collision among one session's hundred or so
// (odds near 1 in 10^15) would let the ack of one delete the other, a
// message already written to the same device.
func sentHash(channel, version string) uint64 {
	var h maphash.Hash
	h.SetSeed(sentSeed)
	h.WriteString(channel)
	h.WriteByte(0)
	h.WriteString(version)
	return h.Sum64()
}

// simplePushVersion is the version a SimplePush device sees: the one the
// app server PUT, or the message's seq for a Web Push message.
func simplePushVersion(m store.Message) uint64 {
	if m.Version != 0 {
		return m.Version
	}
	return m.Seq
}

// keyFor is how the device sees and acks m in the session's dialect: a
// SimplePush version number, or a sealed message id.
func (s *session) keyFor(m *store.Message) sentKey {
	key := sentKey{channel: m.Channel.String()}
	if s.simplePush {
		key.version = strconv.FormatUint(simplePushVersion(*m), 10)
	} else {
		key.version = s.hub.cfg.Tokens.SealMessageID(token.MessageID{UAID: m.UAID, Channel: m.Channel, Seq: m.Seq})
	}
	return key
}

// directFrame builds the frame of a TTL-0 message, which is never acked,
// in the session's dialect.
func (s *session) directFrame(m *store.Message) []byte {
	return s.appendFrame(nil, m, s.keyFor(m))
}

// appendFrame appends the notification frame of m, sent as key, to b.
func (s *session) appendFrame(b []byte, m *store.Message, key sentKey) []byte {
	if s.simplePush {
		return append(b, pushproto.EncodeSimplePushNotification([]pushproto.SimplePushUpdate{{ChannelID: key.channel, Version: simplePushVersion(*m)}})...)
	}
	return appendNotification(b, key.channel, key.version, m.Data, m.Encoding, m.Encryption, m.CryptoKey, 0)
}

func appendNotification(b []byte, channelID, version string, data []byte, encoding, encryption, cryptoKey string, ttl int) []byte {
	n := pushproto.Notification{ChannelID: channelID, Version: version, TTL: ttl}
	if len(data) > 0 {
		n.RawData = data
		n.Headers = &pushproto.Headers{Encoding: encoding, Encryption: encryption, CryptoKey: cryptoKey}
	}
	return pushproto.AppendNotification(b, n)
}
