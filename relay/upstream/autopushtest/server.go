package autopushtest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/pushrelay/pushrelay/relay/wsock"
)

// Config holds autopush's settings; zero values take autopush's defaults.
// Tests shorten the ones they wait for.
type Config struct {
	// HelloTimeout is open_handshake_timeout (5 s).
	HelloTimeout time.Duration
	// AutoPingInterval is auto_ping_interval (300 s).
	AutoPingInterval time.Duration
	// AutoPingTimeout is auto_ping_timeout (4 s).
	AutoPingTimeout time.Duration
	// PingMin is the least time between answered {} pings (45 s).
	PingMin time.Duration
	// MsgLimit is msg_limit (150).
	MsgLimit int
	// RouterTTL is how long a UAID without a hello is kept
	// (MAX_ROUTER_TTL_SECS, 60 days): after it, posts answer 410 and a
	// hello with it gets a new UAID.
	RouterTTL time.Duration
	// Now is the clock for the {} ping rule and TTLs (time.Now).
	Now func() time.Time
	// TLS, if set, serves wss:// and https:// with it.
	TLS *tls.Config
	// OnAck, if set, is called with each acked version (one that was sent
	// and not yet acked) on the session's goroutine, before the server
	// reads storage for the next batch: a test checks there that the
	// client holds the message (on disk) when it acks. It must not block
	// for long.
	OnAck func(uaid, version string)
}

func (c *Config) setDefaults() {
	if c.HelloTimeout <= 0 {
		c.HelloTimeout = 5 * time.Second
	}
	if c.AutoPingInterval <= 0 {
		c.AutoPingInterval = 300 * time.Second
	}
	if c.AutoPingTimeout <= 0 {
		c.AutoPingTimeout = 4 * time.Second
	}
	if c.PingMin <= 0 {
		c.PingMin = 45 * time.Second
	}
	if c.MsgLimit <= 0 {
		c.MsgLimit = 150
	}
	if c.RouterTTL <= 0 {
		c.RouterTTL = 60 * 24 * time.Hour
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Close reasons, as autopush-rs names them.
const (
	ReasonSM               = "SM"
	ReasonJSON             = "Json"
	ReasonHandshakeTimeout = "HandshakeTimeout"
	ReasonPongTimeout      = "PongTimeout"
	ReasonUnsupported      = "UnsupportedMessage"
	ReasonProtocol         = "Protocol"
)

// batchSize and topicBatch are autopush's storage reads: 10 timestamp
// messages, 11 topic messages.
const (
	batchSize  = 10
	topicBatch = 11
	queueCap   = 128 // client_channel_capacity
)

// Stats are the counters a test reads.
type Stats struct {
	Connections int
	Hellos      map[string]int // by UAID answered
	Sent        int            // notifications written
	Resent      int            // of those, versions sent before
	Acked       int            // acks that matched an unacked notification
	Resets      int            // UAIDs deleted by msg_limit
	Expired     int            // UAIDs forgotten after RouterTTL without a hello
}

type message struct {
	chid, version, data, encoding, topic string
	ttl                                  int
	sortkey                              int64
	expires                              time.Time
}

type user struct {
	uaid     string
	channels map[string]string // chid → key
	msgs     []*message        // timestamp messages, sortkey ascending
	topics   map[string]*message
	current  int64 // current_timestamp: every message ≤ it was delivered
	sess     *session
	seen     time.Time // connected_at: the last hello (or the first register)
}

// userLocked returns a stored UAID, forgetting it first if it went
// RouterTTL without a hello.
func (s *Server) userLocked(uaid string) *user {
	u := s.users[uaid]
	if u != nil && u.sess == nil && s.cfg.Now().Sub(u.seen) > s.cfg.RouterTTL {
		delete(s.users, uaid)
		s.stats.Expired++
		return nil
	}
	return u
}

// Server is a running test upstream.
type Server struct {
	cfg  Config
	ln   net.Listener
	http *http.Server
	base string

	wg sync.WaitGroup

	mu         sync.Mutex
	users      map[string]*user
	sessions   map[*session]struct{}
	closed     bool
	seq        int64
	sentBefore map[string]bool
	stats      Stats
	bcast      map[string]bcastVal
	bcastCount int
}

type bcastVal struct {
	version string
	count   int // change count when last set
}

// New starts a server on 127.0.0.1:0.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("autopushtest: listen: %w", err)
	}
	scheme := "http"
	if cfg.TLS != nil {
		ln = tls.NewListener(ln, cfg.TLS)
		scheme = "https"
	}
	s := &Server{
		cfg:        cfg,
		ln:         ln,
		base:       scheme + "://" + ln.Addr().String(),
		users:      map[string]*user{},
		sessions:   map[*session]struct{}{},
		sentBefore: map[string]bool{},
		stats:      Stats{Hellos: map[string]int{}},
		bcast:      map[string]bcastVal{},
	}
	// wsock would close a frame over its limit with gorilla's 1009; read
	// larger ones and close them as actix does.
	ws := wsock.Handler(wsock.Options{MaxFrame: 4 * maxFrame}, s.accept)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /push/{uaid}/{chid}", s.post)
	mux.Handle("/", ws)
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.http.Serve(ln)
	}()
	return s, nil
}

// URL is the WebSocket URL devices (or a relay) connect to.
func (s *Server) URL() string {
	if s.cfg.TLS != nil {
		return "wss://" + s.ln.Addr().String() + "/"
	}
	return "ws://" + s.ln.Addr().String() + "/"
}

// Endpoint is the push endpoint of a UAID's channel, as register answers it.
func (s *Server) Endpoint(uaid, chid string) string {
	return s.base + "/push/" + uaid + "/" + chid
}

// Close stops the server: open sessions are closed with 1001 and every
// goroutine is waited for (a peer that does not answer the close frame
// delays it by at most two seconds).
// Idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for ss := range s.sessions {
		ss.stop()
	}
	s.mu.Unlock()
	// Shutdown drains the endpoint side; a connection accepted but never
	// sent a request counts as busy for 5 s (net/http's rule), and an
	// HTTP client may leave one such behind, so past a short grace the
	// rest is closed, as a server going away would.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.http.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = s.http.Close()
	}
	s.wg.Wait()
	if err != nil {
		return fmt.Errorf("autopushtest: shutdown: %w", err)
	}
	return nil
}

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Hellos = make(map[string]int, len(s.stats.Hellos))
	for k, v := range s.stats.Hellos {
		st.Hellos[k] = v
	}
	return st
}

// SetBroadcast sets a broadcast's version (megaphone's). Connected
// subscribers get it on their next ping tick, instead of the WebSocket
// ping, as autopush sends them.
func (s *Server) SetBroadcast(id, version string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bcastCount++
	s.bcast[id] = bcastVal{version: version, count: s.bcastCount}
}

// Exists reports whether a UAID is stored (registered and not reset).
func (s *Server) Exists(uaid string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.userLocked(uaid) != nil
}

// Open reports whether a connection that said hello with (or was given)
// this UAID is open.
func (s *Server) Open(uaid string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ss := range s.sessions {
		if ss.uaid == uaid {
			return true
		}
	}
	return false
}

// Pending is how many messages a UAID has stored and not yet delivered.
func (s *Server) Pending(uaid string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.userLocked(uaid)
	if u == nil {
		return 0
	}
	n := len(u.topics)
	for _, m := range u.msgs {
		if m.sortkey > u.current {
			n++
		}
	}
	return n
}

func (s *Server) accept(c *wsock.Conn) {
	ss := newSession(s, c)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close(1001, "")
		c.Release()
		return
	}
	s.sessions[ss] = struct{}{}
	s.stats.Connections++
	s.wg.Add(2)
	s.mu.Unlock()
	go ss.read()
	go ss.run()
}

func newUAID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// storeLocked keeps m for u; a topic message replaces the pending one of
// the same channel and topic.
func (s *Server) storeLocked(u *user, m *message) {
	if m.topic != "" {
		u.topics[m.chid+" "+m.topic] = m
		return
	}
	u.msgs = append(u.msgs, m)
}

// newMessageLocked makes a message with a fresh sortkey and version.
func (s *Server) newMessageLocked(uaid, chid, topic string, ttl int) *message {
	s.seq++
	m := &message{chid: chid, topic: topic, ttl: ttl, sortkey: s.seq,
		expires: s.cfg.Now().Add(time.Duration(ttl) * time.Second)}
	kind := "02"
	if topic != "" {
		kind = "01"
	}
	m.version = base64.RawURLEncoding.EncodeToString(
		fmt.Appendf(nil, "%s:%s:%s:%d", kind, uaid, chid, s.seq))
	return m
}

// errno writes autopush's JSON error body.
func errno(w http.ResponseWriter, code, no int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	if code == http.StatusGone {
		w.Header().Set("Cache-Control", "max-age=86400")
	}
	w.WriteHeader(code)
	fmt.Fprintf(w, `{"code":%d,"errno":%d,"error":%q,"message":%q}`, code, no, http.StatusText(code), msg)
}

const maxData = 5630 // max_data_bytes

const maxFrame = 64 << 10 // actix-http's ws::Codec default

// post is the endpoint: POST /push/{uaid}/{chid}.
func (s *Server) post(w http.ResponseWriter, r *http.Request) {
	ttlHdr := r.Header.Get("TTL")
	ttl, err := strconv.Atoi(ttlHdr)
	if err != nil {
		errno(w, http.StatusBadRequest, 111, "Missing TTL header")
		return
	}
	if ttl < 0 {
		errno(w, http.StatusBadRequest, 114, "Invalid TTL header")
		return
	}
	ttl = min(ttl, 30*24*3600)
	body, err := io.ReadAll(io.LimitReader(r.Body, maxData+1))
	if err != nil {
		errno(w, http.StatusBadRequest, 0, "Body read failed")
		return
	}
	n := len(body)
	if n > maxData {
		errno(w, http.StatusRequestEntityTooLarge, 104, "Data payload too large")
		return
	}
	enc := r.Header.Get("Content-Encoding")
	if n > 0 && enc != "aes128gcm" && enc != "aesgcm" {
		errno(w, http.StatusBadRequest, 110, "Unknown Content-Encoding")
		return
	}
	uaid, chid := r.PathValue("uaid"), r.PathValue("chid")

	s.mu.Lock()
	u := s.userLocked(uaid)
	if u == nil {
		s.mu.Unlock()
		errno(w, http.StatusGone, 103, "No such subscription")
		return
	}
	if _, ok := u.channels[chid]; !ok {
		s.mu.Unlock()
		errno(w, http.StatusGone, 106, "No such subscription")
		return
	}
	m := s.newMessageLocked(uaid, chid, r.Header.Get("Topic"), ttl)
	if n > 0 {
		m.data = base64.RawURLEncoding.EncodeToString(body[:n])
		m.encoding = enc
	}
	delivered := false
	if ss := u.sess; ss != nil {
		select {
		case ss.direct <- m:
			delivered = true
		default:
		}
	}
	if !delivered && ttl > 0 {
		s.storeLocked(u, m)
		if ss := u.sess; ss != nil {
			select {
			case ss.check <- struct{}{}:
			default:
			}
		}
	}
	s.mu.Unlock()
	w.Header().Set("Location", s.base+"/m/"+m.version)
	w.Header().Set("TTL", strconv.Itoa(ttl))
	w.WriteHeader(http.StatusCreated)
}

// fetchLocked reads storage as autopush's check_storage_advance: topic
// messages while includeTopic, else up to batchSize messages after
// from. It returns the messages (expired ones dropped) and the highest
// sortkey read, 0 if none was.
func (s *Server) fetchLocked(u *user, includeTopic bool, from int64) (msgs []*message, topic bool, highest int64) {
	now := s.cfg.Now()
	if includeTopic {
		var ts []*message
		for k, m := range u.topics {
			if now.After(m.expires) {
				delete(u.topics, k)
				continue
			}
			ts = append(ts, m)
		}
		sort.Slice(ts, func(i, j int) bool { return ts[i].sortkey < ts[j].sortkey })
		if len(ts) > topicBatch {
			ts = ts[:topicBatch]
		}
		if len(ts) > 0 {
			return ts, true, 0
		}
	}
	// Drop what current_timestamp passed: delivered, kept only until
	// autopush's TTL sweep.
	i := sort.Search(len(u.msgs), func(i int) bool { return u.msgs[i].sortkey > u.current })
	u.msgs = u.msgs[i:]
	j := sort.Search(len(u.msgs), func(i int) bool { return u.msgs[i].sortkey > from })
	read := u.msgs[j:min(j+batchSize, len(u.msgs))]
	for _, m := range read {
		highest = m.sortkey
		if !now.After(m.expires) {
			msgs = append(msgs, m)
		}
	}
	return msgs, false, highest
}
