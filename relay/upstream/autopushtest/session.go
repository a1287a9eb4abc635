package autopushtest

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/wsock"
)

// session is one WebSocket connection. Its reader goroutine only reads;
// run owns the state and every write, as autopush's per-client task does.
type session struct {
	s *Server
	c *wsock.Conn

	frames  chan []byte
	readErr chan error
	direct  chan *message // posts for this UAID (client_channel_capacity)
	check   chan struct{} // a post was stored: check storage
	ghost   chan struct{} // another connection said hello with this UAID
	stopc   chan struct{} // the server is closing
	done    chan struct{} // run has ended
	stopper sync.Once

	uaid            string
	stored          bool // the UAID is in s.users (registered, not reset)
	unackedDirect   map[string]*message
	unackedStored   map[string]*message
	highest         int64 // unacked_stored_highest
	checkStorage    bool
	includeTopic    bool
	incrementStore  bool
	sentFromStorage int
	lastPing        time.Time
	subs            map[string]bool
	bcCount         int

	waitingPong bool
	pingSent    time.Time
}

func newSession(s *Server, c *wsock.Conn) *session {
	return &session{
		s: s, c: c,
		frames:        make(chan []byte),
		readErr:       make(chan error, 1),
		direct:        make(chan *message, queueCap),
		check:         make(chan struct{}, 1),
		ghost:         make(chan struct{}, 1),
		stopc:         make(chan struct{}),
		done:          make(chan struct{}),
		unackedDirect: map[string]*message{},
		unackedStored: map[string]*message{},
		subs:          map[string]bool{},
	}
}

func (ss *session) stop() { ss.stopper.Do(func() { close(ss.stopc) }) }

// read passes text frames to run until an error or run's end, then
// finishes the closing handshake.
func (ss *session) read() {
	defer ss.s.wg.Done()
	defer ss.c.Release()
	for {
		f, err := ss.c.ReadFrame()
		if err != nil {
			ss.readErr <- err
			return
		}
		if f == nil {
			continue // only pongs
		}
		if len(f) > maxFrame {
			ss.readErr <- pushproto.ErrFrameTooBig
			return
		}
		select {
		case ss.frames <- append([]byte(nil), f...):
		case <-ss.done:
			return
		}
	}
}

// closeErr ends a session with a close frame.
type closeErr struct {
	code   int
	reason string
}

func (e *closeErr) Error() string { return e.reason }

var (
	errSM    = &closeErr{1011, ReasonSM}
	errJSON  = &closeErr{1011, ReasonJSON}
	errWrite = errors.New("write failed")
)

func (ss *session) run() {
	defer ss.s.wg.Done()
	err := ss.serve()
	code, reason := 1000, ""
	var ce *closeErr
	switch {
	case errors.As(err, &ce):
		code, reason = ce.code, ce.reason
	case errors.Is(err, pushproto.ErrBinaryFrame):
		code, reason = 1003, ReasonUnsupported
	case errors.Is(err, pushproto.ErrFrameTooBig), errors.Is(err, pushproto.ErrInvalidUTF8):
		code, reason = 1002, ReasonProtocol
	case errors.Is(err, errStopped):
		code = 1001
	}
	ss.finish()
	ss.c.Close(code, reason)
	close(ss.done)
}

var errStopped = errors.New("server closing")

// finish leaves the registry. Direct messages not acked (and not yet
// written) with a TTL are stored, as save_and_notify_unacked_direct_notifs
// does.
func (ss *session) finish() {
	s := ss.s
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.sessions, ss)
	u := s.users[ss.uaid]
	if u != nil && u.sess == ss {
		u.sess = nil
	}
	kept := false
	keep := func(m *message) {
		if u != nil && m.ttl > 0 {
			s.seq++
			m.sortkey = s.seq // after what current_timestamp passed
			s.storeLocked(u, m)
			kept = true
		}
	}
	unacked := make([]*message, 0, len(ss.unackedDirect))
	for _, m := range ss.unackedDirect {
		unacked = append(unacked, m)
	}
	sort.Slice(unacked, func(i, j int) bool { return unacked[i].sortkey < unacked[j].sortkey })
	for _, m := range unacked {
		keep(m)
	}
	for drained := false; !drained; {
		select {
		case m := <-ss.direct:
			keep(m)
		default:
			drained = true
		}
	}
	// The UAID's new connection (a ghost's successor) is told to look.
	if kept && u.sess != nil {
		select {
		case u.sess.check <- struct{}{}:
		default:
		}
	}
}

func (ss *session) serve() error {
	t := time.NewTimer(ss.s.cfg.HelloTimeout)
	defer t.Stop()
	select {
	case f := <-ss.frames:
		if err := ss.hello(f); err != nil {
			return err
		}
	case err := <-ss.readErr:
		return err
	case <-t.C:
		return &closeErr{1011, ReasonHandshakeTimeout}
	case <-ss.stopc:
		return errStopped
	}
	if ss.stored {
		if err := ss.checkStorageNow(); err != nil {
			return err
		}
	}
	t.Reset(ss.s.cfg.AutoPingInterval)
	for {
		var err error
		select {
		case f := <-ss.frames:
			err = ss.onFrame(f)
		case err = <-ss.readErr:
		case m := <-ss.direct:
			if m.ttl > 0 {
				ss.unackedDirect[m.version] = m
			}
			err = ss.send(m)
		case <-ss.check:
			if !ss.checkStorage {
				err = ss.checkStorageNow()
			}
		case <-ss.ghost:
			err = errSM
		case <-t.C:
			err = ss.tick(t)
		case <-ss.stopc:
			err = errStopped
		}
		if err != nil {
			return err
		}
	}
}

// tick is autopush's PingManager: a WebSocket ping (or a pending
// broadcast) every AutoPingInterval, and PongTimeout if nothing came back
// within AutoPingTimeout.
func (ss *session) tick(t *time.Timer) error {
	cfg := ss.s.cfg
	if ss.waitingPong {
		if ss.c.Idle() >= time.Since(ss.pingSent) {
			return &closeErr{1011, ReasonPongTimeout}
		}
		ss.waitingPong = false
		t.Reset(max(cfg.AutoPingInterval-cfg.AutoPingTimeout, time.Millisecond))
		return nil
	}
	if delta := ss.broadcastDelta(nil); len(delta) > 0 {
		t.Reset(cfg.AutoPingInterval)
		return ss.write(map[string]any{"messageType": "broadcast", "broadcasts": delta})
	}
	ss.pingSent = time.Now()
	if err := ss.c.Ping(); err != nil {
		return errWrite
	}
	ss.waitingPong = true
	t.Reset(cfg.AutoPingTimeout)
	return nil
}

func (ss *session) write(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := ss.c.WriteFrame(b); err != nil {
		return errWrite
	}
	return nil
}

func (ss *session) send(m *message) error {
	f := map[string]any{"messageType": "notification", "channelID": m.chid, "version": m.version}
	if m.data != "" {
		f["data"] = m.data
		f["headers"] = map[string]string{"encoding": m.encoding}
	}
	s := ss.s
	s.mu.Lock()
	s.stats.Sent++
	if s.sentBefore[m.version] {
		s.stats.Resent++
	}
	s.sentBefore[m.version] = true
	s.mu.Unlock()
	return ss.write(f)
}

type helloMsg struct {
	MessageType string            `json:"messageType"`
	UAID        *string           `json:"uaid"`
	Broadcasts  map[string]string `json:"broadcasts"`
}

func (ss *session) hello(f []byte) error {
	if isPing(f) {
		return errSM
	}
	var h helloMsg
	if err := json.Unmarshal(f, &h); err != nil || !known(h.MessageType) {
		return errJSON
	}
	if h.MessageType != "hello" {
		return errSM
	}
	s := ss.s
	s.mu.Lock()
	var u *user
	if h.UAID != nil {
		if id, err := push.ParseUAID(*h.UAID); err == nil {
			u = s.userLocked(id.String())
		}
	}
	if u != nil {
		ss.uaid, ss.stored = u.uaid, true
		u.seen = s.cfg.Now()
		if old := u.sess; old != nil {
			select {
			case old.ghost <- struct{}{}:
			default:
			}
		}
		u.sess = ss
	} else {
		ss.uaid = newUAID()
	}
	s.stats.Hellos[ss.uaid]++
	s.mu.Unlock()
	bc := ss.broadcastDelta(h.Broadcasts)
	if bc == nil {
		bc = map[string]any{}
	}
	return ss.write(map[string]any{"messageType": "hello", "uaid": ss.uaid, "status": 200,
		"use_webpush": true, "broadcasts": bc})
}

// broadcastDelta subscribes to req's known ids and returns the versions
// the client lacks: what changed since its last delta among its
// subscriptions, then req's ids whose version differs, and req's unknown
// ids under "errors" (broadcast.rs: subscribe_to_broadcasts,
// missing_broadcasts).
func (ss *session) broadcastDelta(req map[string]string) map[string]any {
	s := ss.s
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := map[string]any{}
	for id := range ss.subs {
		if b := s.bcast[id]; b.count > ss.bcCount {
			resp[id] = b.version
		}
	}
	ss.bcCount = s.bcastCount
	errs := map[string]string{}
	for id, ver := range req {
		b, ok := s.bcast[id]
		if !ok {
			errs[id] = "Broadcast not found"
			continue
		}
		if b.version != ver {
			resp[id] = b.version
		}
		ss.subs[id] = true
	}
	if len(errs) > 0 {
		resp["errors"] = errs
	}
	return resp
}

func isPing(f []byte) bool {
	var m map[string]json.RawMessage
	return json.Unmarshal(f, &m) == nil && len(m) == 0
}

func known(t string) bool {
	switch t {
	case "hello", "register", "unregister", "broadcast_subscribe", "ack", "nack", "ping":
		return true
	}
	return false
}

type clientMsg struct {
	MessageType string            `json:"messageType"`
	ChannelID   *string           `json:"channelID"`
	Key         *string           `json:"key"`
	Broadcasts  map[string]string `json:"broadcasts"`
	Updates     []struct {
		ChannelID string `json:"channelID"`
		Version   string `json:"version"`
	} `json:"updates"`
}

func (ss *session) onFrame(f []byte) error {
	if isPing(f) {
		return ss.ping()
	}
	var m clientMsg
	if err := json.Unmarshal(f, &m); err != nil || !known(m.MessageType) {
		return errJSON
	}
	switch m.MessageType {
	case "hello":
		return errSM // Already Hello'd
	case "ping":
		return ss.ping()
	case "register":
		if m.ChannelID == nil {
			return errJSON
		}
		return ss.register(*m.ChannelID, m.Key)
	case "unregister":
		if m.ChannelID == nil {
			return errJSON
		}
		return ss.unregister(*m.ChannelID)
	case "broadcast_subscribe":
		if m.Broadcasts == nil {
			return errJSON
		}
		if d := ss.broadcastDelta(m.Broadcasts); len(d) > 0 {
			return ss.write(map[string]any{"messageType": "broadcast", "broadcasts": d})
		}
		return nil
	case "ack":
		return ss.ack(m)
	}
	return nil // nack: metrics only
}

func (ss *session) ping() error {
	now := ss.s.cfg.Now()
	if !ss.lastPing.IsZero() && now.Sub(ss.lastPing) < ss.s.cfg.PingMin {
		return errSM // ExcessivePing
	}
	ss.lastPing = now
	if err := ss.c.WriteFrame([]byte("{}")); err != nil {
		return errWrite
	}
	return nil
}

func (ss *session) register(chid string, key *string) error {
	if _, err := push.ParseChannelID(chid); err != nil {
		return errSM // Invalid UUID format, not lower-case/dashed
	}
	reply := map[string]any{"messageType": "register", "channelID": chid}
	if key != nil {
		if _, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(*key, "=")); err != nil {
			reply["status"], reply["pushEndpoint"] = 400, "Failed to generate endpoint"
			return ss.write(reply)
		}
	}
	s := ss.s
	s.mu.Lock()
	u := s.users[ss.uaid]
	if u == nil {
		// deferred_add_user: a new UAID is stored at its first register.
		u = &user{uaid: ss.uaid, channels: map[string]string{}, topics: map[string]*message{}, sess: ss, seen: s.cfg.Now()}
		s.users[ss.uaid] = u
		ss.stored = true
	}
	k := ""
	if key != nil {
		k = *key
	}
	u.channels[chid] = k
	s.mu.Unlock()
	reply["status"], reply["pushEndpoint"] = 200, s.Endpoint(ss.uaid, chid)
	return ss.write(reply)
}

func (ss *session) unregister(chid string) error {
	id, err := push.ParseChannelID(strings.ToLower(chid))
	if err != nil {
		return errJSON // not a Uuid: serde fails
	}
	s := ss.s
	s.mu.Lock()
	if u := s.users[ss.uaid]; u != nil {
		delete(u.channels, id.String())
	}
	s.mu.Unlock()
	return ss.write(map[string]any{"messageType": "unregister", "channelID": id.String(), "status": 200})
}

func (ss *session) ack(m clientMsg) error {
	s := ss.s
	var acked []string
	s.mu.Lock()
	u := s.users[ss.uaid]
	for _, a := range m.Updates {
		if _, ok := ss.unackedDirect[a.Version]; ok {
			delete(ss.unackedDirect, a.Version)
			s.stats.Acked++
			acked = append(acked, a.Version)
			continue
		}
		if msg, ok := ss.unackedStored[a.Version]; ok {
			delete(ss.unackedStored, a.Version)
			s.stats.Acked++
			acked = append(acked, a.Version)
			if msg.topic != "" && u != nil {
				k := msg.chid + " " + msg.topic
				if u.topics[k] == msg {
					delete(u.topics, k)
				}
			}
		}
	}
	s.mu.Unlock()
	if s.cfg.OnAck != nil {
		for _, v := range acked {
			s.cfg.OnAck(ss.uaid, v)
		}
	}
	if len(ss.unackedDirect) > 0 || len(ss.unackedStored) > 0 {
		return nil
	}
	// post_process_all_acked
	if !ss.checkStorage {
		return nil
	}
	if ss.incrementStore {
		ss.increment()
	}
	return ss.storageLoop()
}

// checkStorageNow starts reading storage from the top (topic messages
// first), as on hello and on a stored post.
func (ss *session) checkStorageNow() error {
	ss.checkStorage, ss.includeTopic = true, true
	return ss.storageLoop()
}

// storageLoop is check_storage_loop: read until a batch has something to
// send (and check msg_limit) or storage is exhausted.
func (ss *session) storageLoop() error {
	for ss.checkStorage {
		msgs := ss.advance()
		if len(msgs) == 0 {
			continue
		}
		if ss.sentFromStorage > ss.s.cfg.MsgLimit {
			return ss.reset()
		}
		for _, m := range msgs {
			if err := ss.send(m); err != nil {
				return err
			}
		}
		return nil
	}
	if ss.incrementStore {
		ss.increment()
	}
	return nil
}

// advance is check_storage_advance: one read of storage.
func (ss *session) advance() []*message {
	s := ss.s
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.users[ss.uaid]
	if u == nil {
		ss.checkStorage = false
		return nil
	}
	from := u.current
	if !ss.includeTopic && ss.highest > from {
		from = ss.highest
	}
	msgs, topic, highest := s.fetchLocked(u, ss.includeTopic, from)
	ss.includeTopic = topic
	if topic {
		ss.incrementStore = false
	} else {
		if highest == 0 {
			ss.checkStorage = false
			ss.sentFromStorage = 0
			return nil
		}
		ss.highest = highest
		ss.incrementStore = true
	}
	for _, m := range msgs {
		ss.unackedStored[m.version] = m
	}
	ss.sentFromStorage += len(msgs)
	return msgs
}

// increment is increment_storage: the whole batch is acked, so
// current_timestamp moves past it.
func (ss *session) increment() {
	s := ss.s
	s.mu.Lock()
	if u := s.users[ss.uaid]; u != nil && ss.highest > u.current {
		u.current = ss.highest
	}
	s.mu.Unlock()
	ss.incrementStore = false
}

// reset is check_msg_limit's UaidReset: the UAID is deleted and the
// session closed with 1000.
func (ss *session) reset() error {
	s := ss.s
	s.mu.Lock()
	if u := s.users[ss.uaid]; u != nil {
		delete(s.users, ss.uaid)
		s.stats.Resets++
	}
	s.mu.Unlock()
	ss.unackedDirect = map[string]*message{}
	return &closeErr{1000, ReasonSM}
}
