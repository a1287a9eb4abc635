// Package endpoint is the HTTP API app servers push to: Web Push (RFC 8030)
// with VAPID (RFC 8292) as autopush serves it, and SimplePush's version PUT.
//
//	POST   /wpush/v1/{token}   message to a subscription
//	POST   /wpush/v2/{token}   message to a VAPID-bound subscription
//	POST   /wpush/{token}      same as v1
//	PUT    /update/{token}     SimplePush: body or query version=N
//	DELETE /m/{id}             withdraw a waiting message
//	POST   /wpush/batch        many messages, answered one by one (batch.go)
//
// Every error is JSON {code, errno, error, message, more_info} with
// autopush's errno where autopush has one (docs/endpoint-api.md lists them).
// Nothing is stored unless the whole request is valid.
//
// The API serves HTTP/1.1 with github.com/valyala/fasthttp, which this
// package alone imports (server_fasthttp.go): every message costs one
// request, and net/http's per-request machinery (a background read, header
// maps, a context) was a quarter of the relay's CPU per message
// (docs/benchmarks.md). Builds tagged nofasthttp (mips and mipsle, whose
// flash has no room for both servers) serve it with net/http instead
// (server_nethttp.go). The handlers are written once, against exchange
// (exchange.go), and answer the same on both.
//
// Bounds: at most Concurrency connections are served (more are answered 503
// at once), each push waits at most RequestTimeout for the store (then 503),
// and a store out of space refuses pushes with 507, logged once per
// LogInterval, until a write succeeds again. Framing follows RFC 9112:
// Content-Length with Transfer-Encoding is refused (400) and the connection
// closed, a transfer coding other than chunked is 501, and a head with bare
// LF line ends is refused at once rather than left to the read timeout.
package endpoint

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/token"
	"github.com/pushrelay/pushrelay/relay/vapid"
)

// Pusher is what the API needs from the relay core.
type Pusher interface {
	// Ingest stores messages in one commit (see relay.Hub.Ingest). Every
	// message the API hands it carries a local origin key of its own.
	Ingest(ctx context.Context, ms []push.Message) ([]relay.Result, error)
	Delete(ctx context.Context, id string) error
}

// messageFor starts the message of a post to ep, with a new local origin
// key, unique to the post.
func (a *API) messageFor(ep token.Endpoint) push.Message {
	return push.Message{UAID: push.UAID(ep.UAID), Channel: push.ChannelID(ep.Channel), Origin: push.LocalOrigin(a.localID())}
}

// localID makes a local origin id: the clock's nanoseconds, big-endian,
// then 8 random bytes, unique to the post and in the order posts came.
// The store does not index local keys (nothing can send a post again);
// the key names the message to whatever handles it next.
func (a *API) localID() [16]byte {
	var id [16]byte
	binary.BigEndian.PutUint64(id[:8], uint64(time.Now().UnixNano()))
	rand.Read(id[8:]) // never fails (crypto/rand)
	return id
}

// Limits fixed by the protocol.
const (
	// MaxTTL caps the TTL header, like autopush (30 days).
	MaxTTL = 30 * 24 * time.Hour
	// MaxTopicLen is RFC 8030's limit on Topic.
	MaxTopicLen = 32
	// DefaultMaxData is the largest body accepted: autopush's
	// max_data_bytes, so a sender autopush takes is taken here too. RFC
	// 8030 §7.2 only sets a floor (a push service MUST accept 4096
	// bytes); senders that pad generously or base64-encode a 4 KB payload
	// send more, and autopush answers them 201.
	DefaultMaxData = 5630
	// MaxHeaderBytes bounds a request's line and headers together. A VAPID
	// Authorization header is under 1 KiB.
	MaxHeaderBytes = 8192
	// DefaultConcurrency is how many app-server connections are served at
	// once unless configured: each costs about 10 KiB open and 18 KiB while
	// a 4 KiB request is read (buffers, request state, goroutine), so 1024
	// stay under 20 MiB on a 256 MB gateway (docs/operations.md). fasthttp's
	// own default is 262,144.
	DefaultConcurrency = 1024
	// DefaultRequestTimeout bounds a push's wait for the store.
	DefaultRequestTimeout = 5 * time.Second
)

// Config configures the API.
type Config struct {
	Tokens *token.Codec
	Pusher Pusher
	// PublicURL is the base of endpoints; its origin is the VAPID audience.
	PublicURL string
	MaxData   int
	// ReadTimeout bounds reading one request (30s), WriteTimeout writing
	// its answer (30s), IdleTimeout a keep-alive connection's wait for the
	// next request (120s).
	ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	// Concurrency caps the connections served at once (DefaultConcurrency);
	// one more is answered 503 errno 121 and closed.
	Concurrency int
	// RequestTimeout bounds a push's or delete's wait for the store
	// (DefaultRequestTimeout); past it the answer is 503 errno 120.
	RequestTimeout time.Duration
	// LogInterval is how often a store out of space is logged while pushes
	// keep being refused (1 minute).
	LogInterval time.Duration
	Logger      *slog.Logger
	Metrics     *metrics.Registry
	Now         func() time.Time

	// BatchMaxMessages bounds a batch's messages
	// (DefaultBatchMaxMessages); its body may take, per message, MaxData
	// in base64 plus 1 KiB. BatchConcurrency bounds the batch bodies held
	// at once (DefaultBatchConcurrency). BatchToken authenticates batches
	// to v1 endpoints; empty refuses them.
	BatchMaxMessages, BatchConcurrency int
	BatchToken                         []byte
}

// API serves the endpoint routes. Serve it on a listener with Serve; stop
// it with Shutdown (drain) or Close.
type API struct {
	cfg      Config
	audience string
	location string // public URL + "/m/"
	srv      server
	m        *apiMetrics
	// ctx is what pushes run under: not cancelled by Shutdown, which lets
	// requests in flight finish, only by Close.
	ctx    context.Context
	cancel context.CancelFunc

	// refusal is the whole answer to a connection over the cap.
	refusal []byte
	// wrapConn gives the server a connection the listener accepted.
	wrapConn func(c *conn) net.Conn

	open atomic.Int64 // connections counted under Concurrency

	mu        sync.Mutex
	listeners []*listener
	stopped   bool

	full diskFull

	batch    *batchGate
	batchMax int // a batch's body limit
	bm       *batchMetrics
}

// New returns the API.
func New(cfg Config) (*API, error) {
	if cfg.Tokens == nil || cfg.Pusher == nil {
		return nil, errors.New("endpoint: Tokens and Pusher are required")
	}
	u, err := url.Parse(cfg.PublicURL)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return nil, fmt.Errorf("endpoint: public url %q is not an absolute URL", cfg.PublicURL)
	}
	if cfg.MaxData <= 0 {
		cfg.MaxData = DefaultMaxData
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&cfg.ReadTimeout, 30 * time.Second}, {&cfg.WriteTimeout, 30 * time.Second}, {&cfg.IdleTimeout, 120 * time.Second},
		{&cfg.RequestTimeout, DefaultRequestTimeout}, {&cfg.LogInterval, time.Minute}} {
		if *d.v <= 0 {
			*d.v = d.def
		}
	}
	a := &API{
		cfg:      cfg,
		audience: u.Scheme + "://" + u.Host,
		location: strings.TrimSuffix(cfg.PublicURL, "/") + "/m/",
		m:        newAPIMetrics(metrics.OrNew(cfg.Metrics)),
	}
	if cfg.Concurrency <= 0 {
		a.cfg.Concurrency = DefaultConcurrency
	}
	if cfg.BatchMaxMessages <= 0 {
		a.cfg.BatchMaxMessages = DefaultBatchMaxMessages
	}
	if cfg.BatchConcurrency <= 0 {
		a.cfg.BatchConcurrency = DefaultBatchConcurrency
	}
	a.batchMax = batchMaxBytes(a.cfg.BatchMaxMessages, cfg.MaxData)
	a.batch = newBatchGate(a.cfg.BatchConcurrency, cfg.ReadTimeout+cfg.RequestTimeout+cfg.WriteTimeout, cfg.Now)
	a.bm = newBatchMetrics(metrics.OrNew(cfg.Metrics))
	a.refusal = refusal(errBusy)
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.srv = newServer(a)
	return a, nil
}

// Serve answers app servers on ln (plain or TLS) until Shutdown or Close;
// it returns nil then.
func (a *API) Serve(ln net.Listener) error {
	a.mu.Lock()
	if a.stopped {
		a.mu.Unlock()
		ln.Close()
		return nil
	}
	// Shutdown closes the listeners itself: fasthttp's Shutdown does not
	// see a listener whose Serve has not reached its accept loop yet.
	l := newListener(ln, a)
	a.listeners = append(a.listeners, l)
	a.mu.Unlock()
	if err := a.srv.serve(l); err != nil {
		return fmt.Errorf("endpoint: %w", err)
	}
	return nil
}

// Shutdown stops accepting, closes idle connections and waits for requests
// in flight (each push is durable before its 201) until ctx ends.
func (a *API) Shutdown(ctx context.Context) error {
	a.mu.Lock()
	a.stopped = true
	lns := a.listeners
	a.listeners = nil
	a.mu.Unlock()
	for _, ln := range lns {
		ln.Close() // Serve returns nil
		// Neither server closes a connection still waiting for its first
		// request at once: fasthttp waits for its read timeout, net/http
		// for 5 seconds.
		ln.closeUnused()
	}
	for _, ln := range lns {
		ln.refusals.Wait()
	}
	err := a.srv.shutdown(ctx)
	for _, ln := range lns {
		ln.waitLingering()
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("endpoint: drain: %w", err)
	}
	return nil
}

// Close stops the API at once: pushes still waiting for the store give up
// (their app servers get no 201 and will retry). It is safe to call more
// than once and after Shutdown.
func (a *API) Close() error {
	a.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	a.Shutdown(ctx)
	return nil
}

// handle serves a request whose head and body have been read; framing is
// what the server found wrong with its framing, if anything. Neither
// server may see a handler's panic (fasthttp would end the process), so
// handle recovers it: the request gets 500 errno 999 and the panic is
// logged.
func (a *API) handle(x exchange, framing *apiError) {
	defer func() {
		if p := recover(); p != nil {
			a.cfg.Logger.Error("endpoint handler panicked", "method", string(x.method()), "path", string(x.path()), "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			x.resetResponse()
			a.answer(x, errInternal)
			x.closeConn()
		}
	}()
	defer a.batch.release(x.key())
	if framing != nil {
		// What follows on the connection cannot be trusted to start a
		// request (RFC 9112 §6.3).
		a.fail(x, framing)
		x.closeConn()
		return
	}
	a.route(x)
}

// checkFraming refuses what fasthttp lets through of RFC 9112 §6: a
// Transfer-Encoding with a Content-Length (a proxy framing by length would
// see another request in the body) and the identity coding, which fasthttp
// accepts although RFC 9112 dropped it. raw is the request's header lines;
// fasthttp refuses other codings and repeated Transfer-Encoding itself.
func checkFraming(raw []byte) *apiError {
	var te, cl bool
	var coding []byte
	for len(raw) > 0 {
		line, rest, _ := bytes.Cut(raw, []byte("\n"))
		raw = rest
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		switch {
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			te, coding = true, bytes.TrimSpace(value)
		case bytes.EqualFold(name, []byte("Content-Length")):
			cl = true
		}
	}
	switch {
	case te && cl:
		return errFraming
	case te && !bytes.EqualFold(coding, []byte("chunked")):
		return errCoding.with(fmt.Sprintf("transfer coding %q", coding))
	}
	return nil
}

func (a *API) route(ctx exchange) {
	path := ctx.path()
	switch string(ctx.method()) {
	case http.MethodPost:
		if bytes.Equal(path, batchPath) {
			a.postBatch(ctx)
			return
		}
		if rest, ok := bytes.CutPrefix(path, []byte("/wpush/")); ok {
			version, tok, ok := bytes.Cut(rest, []byte("/"))
			if !ok {
				a.postWebPush(ctx, "", rest)
				return
			}
			if len(version) > 0 && !bytes.ContainsRune(tok, '/') {
				a.postWebPush(ctx, string(version), tok)
				return
			}
		}
	case http.MethodPut:
		if tok, ok := bytes.CutPrefix(path, []byte("/update/")); ok && !bytes.ContainsRune(tok, '/') {
			a.putSimplePush(ctx, tok)
			return
		}
	case http.MethodDelete:
		if id, ok := bytes.CutPrefix(path, []byte("/m/")); ok && !bytes.ContainsRune(id, '/') {
			a.deleteMessage(ctx, id)
			return
		}
	}
	a.fail(ctx, errNotFound)
}

// readFailed answers a request the server could not read (e says why),
// and the connection is closed after the answer. A batch refused a slot
// gets 503 (batchUnread) whatever stopped its body.
func (a *API) readFailed(ctx exchange, e *apiError) {
	if a.batchUnread(ctx) {
		return
	}
	a.answer(ctx, e)
	ctx.closeConn()
	a.cfg.Logger.Debug("endpoint request unreadable", "remote", ctx.remoteAddr().String(), "status", e.Code, "errno", e.Errno, "message", e.Message)
}

// apiError is an error response. Retry, in seconds, is sent as
// Retry-After when set.
type apiError struct {
	Code    int
	Errno   int
	Message string
	Retry   int
}

func (e *apiError) Error() string { return fmt.Sprintf("%d errno %d: %s", e.Code, e.Errno, e.Message) }

func (e *apiError) with(detail string) *apiError {
	c := *e
	c.Message = e.Message + ": " + detail
	return &c
}

// The errors of the API. Errnos are autopush's (docs/src/errors.md); 115
// to 118 are pushrelay's own.
var (
	errNotFound      = &apiError{404, 102, "Invalid URL endpoint", 0}
	errBadToken      = &apiError{404, 102, "Invalid subscription token", 0}
	errNoSub         = &apiError{410, 106, "No such subscription", 0}
	errTooLarge      = &apiError{413, 104, "Data payload too large", 0}
	errMissingCrypto = &apiError{400, 101, "Missing necessary crypto keys", 0}
	errBadCrypto     = &apiError{400, 110, "Invalid crypto headers", 0}
	errMissingTTL    = &apiError{400, 111, "Missing TTL header", 0}
	errBadTTL        = &apiError{400, 114, "Invalid TTL header", 0}
	errBadTopic      = &apiError{400, 113, "Invalid Topic header", 0}
	errBadUrgency    = &apiError{400, 115, "Invalid Urgency header", 0}
	errBadVersion    = &apiError{400, 116, "Invalid SimplePush version", 0}
	errAuth          = &apiError{401, 109, "Invalid authentication", 0}
	errNoMessage     = &apiError{404, 102, "No such message", 0}
	errUnavailable   = &apiError{503, 202, "Service unavailable, try again", 120}
	errInternal      = &apiError{500, 999, "An internal error occurred", 0}
	// What the server could not read as a request.
	errMalformed      = &apiError{400, 117, "Malformed HTTP request", 0}
	errHeaderTooLarge = &apiError{431, 118, "Request headers too large", 0}
	// Operating states: the store out of space or too slow, too many
	// connections.
	errNoSpace   = &apiError{507, 119, "The relay's storage is full, try again later", 60}
	errStoreSlow = &apiError{503, 120, "The relay could not store the message in time, try again", 10}
	errBusy      = &apiError{503, 121, "Too many connections, try again", 5}
	errNoQuorum  = &apiError{503, 126, "This relay cannot reach a majority of its site, try again", 2}
	errFraming   = &apiError{400, 122, "Content-Length with Transfer-Encoding", 0}
	errCoding    = &apiError{501, 123, "Unsupported Transfer-Encoding", 0}
)

// fail refuses a request with e and logs it.
func (a *API) fail(ctx exchange, e *apiError) {
	a.answer(ctx, e)
	a.cfg.Logger.Debug("endpoint request refused", "method", string(ctx.method()), "path", string(ctx.path()), "status", e.Code, "errno", e.Errno, "message", e.Message)
}

// answer writes e as the JSON error response and counts it.
func (a *API) answer(ctx exchange, e *apiError) {
	a.m.errors.With(strconv.Itoa(e.Code), strconv.Itoa(e.Errno)).Inc()
	ctx.setHeader("Content-Type", "application/json")
	switch e.Code {
	case http.StatusGone:
		ctx.setHeader("Cache-Control", "max-age=86400")
	}
	if e.Retry > 0 {
		ctx.setHeader("Retry-After", strconv.Itoa(e.Retry))
	}
	ctx.setStatus(e.Code)
	ctx.setBody(errorBody(e))
}

func errorBody(e *apiError) []byte {
	body, _ := json.Marshal(struct {
		Code     int    `json:"code"`
		Errno    int    `json:"errno"`
		Error    string `json:"error"`
		Message  string `json:"message"`
		MoreInfo string `json:"more_info"`
	}{e.Code, e.Errno, http.StatusText(e.Code), e.Message, "docs/endpoint-api.md"})
	return append(body, '\n')
}

// refusal is the raw answer e, written to a connection the server does not
// see (or instead of the server's own answer), which is closed after it.
func refusal(e *apiError) []byte {
	body := errorBody(e)
	retry := ""
	if e.Retry > 0 {
		retry = "Retry-After: " + strconv.Itoa(e.Retry) + "\r\n"
	}
	return fmt.Appendf(nil, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n%sConnection: close\r\nContent-Length: %d\r\n\r\n%s",
		e.Code, http.StatusText(e.Code), retry, len(body), body)
}

// header returns a request header's value, "" when absent.
func header(ctx exchange, name string) string {
	return ctx.header(name)
}

func (a *API) postWebPush(ctx exchange, v string, tok []byte) {
	start := a.cfg.Now()
	version := 1
	if v != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(v, "v"))
		if err != nil || !strings.HasPrefix(v, "v") {
			a.fail(ctx, errNotFound)
			return
		}
		version = n
	}
	ep, err := a.cfg.Tokens.OpenEndpoint(version, string(tok))
	if err != nil {
		a.fail(ctx, errBadToken)
		return
	}
	msg, aerr := a.parseWebPush(ctx, ep)
	if aerr != nil {
		a.fail(ctx, aerr)
		return
	}
	a.push(ctx, msg, start)
}

// parseWebPush validates everything about a Web Push request before
// anything is stored.
func (a *API) parseWebPush(ctx exchange, ep token.Endpoint) (push.Message, *apiError) {
	m := a.messageFor(ep)
	if aerr := a.checkVAPID(ctx, ep); aerr != nil {
		return m, aerr
	}
	var ttls []string
	ttls = ctx.headerValues("TTL", ttls)
	ttl, aerr := ParseTTL(ttls)
	if aerr != nil {
		return m, aerr
	}
	m.TTL = ttl
	if m.Topic, aerr = ParseTopic(header(ctx, "Topic")); aerr != nil {
		return m, aerr
	}
	if m.Urgency, aerr = ParseUrgency(header(ctx, "Urgency")); aerr != nil {
		return m, aerr
	}
	body := ctx.body()
	if len(body) > 0 {
		get := func(name string) string { return header(ctx, name) }
		enc, aerr := checkContent(get, body)
		if aerr != nil {
			return m, aerr
		}
		// The server reuses the request's buffer once the handler
		// returns.
		m.Data = bytes.Clone(body)
		m.Encoding = enc
		if enc == "aesgcm" {
			m.Encryption = normalizeCryptoHeader(get("Encryption"))
			m.CryptoKey = normalizeCryptoHeader(get("Crypto-Key"))
		}
	}
	return m, nil
}

// checkVAPID verifies the VAPID credentials if any were sent, and requires
// them, with the bound key, for a v2 endpoint.
func (a *API) checkVAPID(ctx exchange, ep token.Endpoint) *apiError {
	auth := header(ctx, "Authorization")
	if auth == "" {
		if ep.KeyHash != nil {
			return errAuth.with("this endpoint requires VAPID")
		}
		return nil
	}
	creds, err := vapid.ParseAuthorization(auth, header(ctx, "Crypto-Key"))
	if err != nil {
		return errAuth.with(err.Error())
	}
	if _, err := vapid.Verify(creds, a.audience, a.cfg.Now()); err != nil {
		return errAuth.with(err.Error())
	}
	if ep.KeyHash != nil && vapid.KeyHash(creds.PublicKey) != *ep.KeyHash {
		return errAuth.with("VAPID key does not match the subscription")
	}
	return nil
}

// checkContent validates the content coding of a non-empty body and returns
// the encoding; get reads a request header.
func checkContent(get func(name string) string, body []byte) (string, *apiError) {
	enc := strings.ToLower(strings.TrimSpace(get("Content-Encoding")))
	switch enc {
	case "aes128gcm":
		if hasParam(get("Encryption"), "salt") || hasParam(get("Crypto-Key"), "dh") {
			return "", errBadCrypto.with("aes128gcm carries its salt and key in the body, not in Encryption/Crypto-Key")
		}
		if _, _, _, err := ece.ParseAES128GCMHeader(body); err != nil {
			return "", errBadCrypto.with(err.Error())
		}
		return enc, nil
	case "aesgcm":
		if !hasParam(get("Encryption"), "salt") {
			return "", errMissingCrypto.with("aesgcm needs Encryption: salt=")
		}
		if !hasParam(get("Crypto-Key"), "dh") {
			return "", errMissingCrypto.with("aesgcm needs Crypto-Key: dh=")
		}
		return enc, nil
	case "":
		return "", errMissingCrypto.with("a body needs Content-Encoding aes128gcm or aesgcm")
	default:
		return "", errBadCrypto.with("unsupported Content-Encoding")
	}
}

func hasParam(header, name string) bool {
	_, ok := ece.ParseHeaderParams(header)[name]
	return ok
}

// ParseTTL reads the TTL header: required, a non-negative integer number of
// seconds, capped at MaxTTL.
func ParseTTL(values []string) (time.Duration, *apiError) {
	if len(values) == 0 || strings.TrimSpace(values[0]) == "" {
		return 0, errMissingTTL
	}
	if len(values) > 1 {
		return 0, errBadTTL.with("more than one TTL header")
	}
	s := strings.TrimSpace(values[0])
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		if len(s) > 0 && strings.Trim(s, "0123456789") == "" {
			return MaxTTL, nil // all digits but too big for int64: cap it
		}
		return 0, errBadTTL.with("not an integer")
	}
	if n < 0 {
		return 0, errBadTTL.with("negative")
	}
	if n > int64(MaxTTL/time.Second) {
		return MaxTTL, nil
	}
	return time.Duration(n) * time.Second, nil
}

// ParseTopic checks the Topic header: at most 32 characters of the base64url
// alphabet.
func ParseTopic(s string) (string, *apiError) {
	if s == "" {
		return "", nil
	}
	if len(s) > MaxTopicLen {
		return "", errBadTopic.with("longer than 32 characters")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return "", errBadTopic.with("not base64url")
		}
	}
	return s, nil
}

// ParseUrgency checks the Urgency header (RFC 8030 §5.3); absent is normal.
func ParseUrgency(s string) (push.Urgency, *apiError) {
	if s == "" {
		return push.UrgencyNormal, nil
	}
	u, err := push.ParseUrgency(strings.ToLower(strings.TrimSpace(s)))
	if err != nil {
		return 0, errBadUrgency.with("want very-low, low, normal or high")
	}
	return u, nil
}

func (a *API) push(ctx exchange, m push.Message, start time.Time) {
	pctx, cancel := context.WithTimeout(a.ctx, a.cfg.RequestTimeout)
	var res relay.Result
	rs, err := a.cfg.Pusher.Ingest(pctx, []push.Message{m})
	if err == nil {
		res, err = rs[0], rs[0].Err
	}
	cancel()
	switch {
	case err == nil:
		if res.Stored {
			a.storeWrote()
		}
	case errors.Is(err, relay.ErrNoSubscription):
		a.fail(ctx, errNoSub)
		return
	default:
		a.fail(ctx, a.storeFailed("push", err))
		return
	}
	ctx.setHeader("Location", a.location+res.ID)
	ctx.setHeader("TTL", strconv.FormatInt(int64(m.TTL/time.Second), 10))
	ctx.setStatus(http.StatusCreated)
	a.m.accepted.Inc()
	a.m.latency.Observe(a.cfg.Now().Sub(start).Seconds())
}

// putSimplePush accepts a SimplePush version update. The version is an
// integer from the form body or query (version=N); without one the current
// time in seconds is used, as SimplePush servers did.
func (a *API) putSimplePush(ctx exchange, tok []byte) {
	start := a.cfg.Now()
	ep, err := a.cfg.Tokens.OpenEndpoint(1, string(tok))
	if err != nil {
		a.fail(ctx, errBadToken)
		return
	}
	v, aerr := ParseSimplePushVersion(string(ctx.body()), string(ctx.query()), start)
	if aerr != nil {
		a.fail(ctx, aerr)
		return
	}
	m := a.messageFor(ep)
	m.TTL, m.Version, m.Urgency = MaxTTL, v, push.UrgencyNormal
	a.push(ctx, m, start)
}

// ParseSimplePushVersion reads version=N from a form body or query string.
func ParseSimplePushVersion(body, query string, now time.Time) (uint64, *apiError) {
	for _, src := range []string{body, query} {
		vals, err := url.ParseQuery(strings.TrimSpace(src))
		if err != nil {
			return 0, errBadVersion.with("not a form")
		}
		if s := vals.Get("version"); s != "" {
			n, err := strconv.ParseUint(s, 10, 63)
			if err != nil || n == 0 {
				return 0, errBadVersion.with("version must be a positive integer")
			}
			return n, nil
		}
	}
	return uint64(now.Unix()), nil
}

func (a *API) deleteMessage(ctx exchange, id []byte) {
	dctx, cancel := context.WithTimeout(a.ctx, a.cfg.RequestTimeout)
	err := a.cfg.Pusher.Delete(dctx, string(id))
	cancel()
	switch {
	case err == nil:
		ctx.setStatus(http.StatusNoContent)
	case errors.Is(err, relay.ErrNoMessage):
		a.fail(ctx, errNoMessage)
	default:
		a.fail(ctx, a.storeFailed("delete", err))
	}
}

// storeFailed classifies what the relay core returned for a push or delete
// (op) and returns the answer.
func (a *API) storeFailed(op string, err error) *apiError {
	switch {
	case errors.Is(err, relay.ErrClosing), errors.Is(err, context.Canceled):
		return errUnavailable
	case errors.Is(err, relay.ErrNoQuorum):
		return errNoQuorum
	case errors.Is(err, context.DeadlineExceeded):
		return errStoreSlow
	case store.IsNoSpace(err):
		a.storeFull(err)
		return errNoSpace
	default:
		a.cfg.Logger.Error(op+" failed", "err", err)
		return errInternal
	}
}
