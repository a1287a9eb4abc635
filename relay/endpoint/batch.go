package endpoint

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/token"
	"github.com/pushrelay/pushrelay/relay/vapid"
)

// POST /wpush/batch: many messages in one request, stored in one commit,
// answered per message (docs/endpoint-api.md).
//
// Memory is bounded by configuration: single posts keep the MaxData body
// limit; a batch request gets BatchMaxBytes, and only while it holds one
// of BatchConcurrency slots, taken when its head has been read (bodyLimit)
// and given back when it has been answered. A batch that
// finds every slot taken gets 503 errno 121 without its body being read.

// Batch defaults.
const (
	// DefaultBatchMaxMessages bounds the messages of one batch.
	DefaultBatchMaxMessages = 100
	// DefaultBatchConcurrency is how many batch bodies are held at once.
	DefaultBatchConcurrency = 4
	// batchOverhead is what one message of a batch may take besides its
	// data in base64: the endpoint URL, the TTL, topic, urgency and
	// content headers, with their JSON names.
	batchOverhead = 1024
)

var batchPath = []byte("/wpush/batch")

// batchMaxBytes is the body limit of a batch: each message at MaxData,
// base64-encoded, with batchOverhead, plus 1 KiB for the envelope.
func batchMaxBytes(maxMessages, maxData int) int {
	return maxMessages*(4*((maxData+2)/3)+batchOverhead) + 1024
}

// Errors of the batch route (errnos 124 and 125 are pushrelay's own).
var (
	errBadBatch     = &apiError{400, 124, "Malformed batch", 0}
	errNoBatchToken = &apiError{401, 125, "This relay has no batch token configured (batch_token_file)", 0}
	errBatchBusy    = &apiError{503, 121, "Too many batches in progress, try again", 1}
)

// batchMetrics are the batch route's metrics.
type batchMetrics struct {
	accepted, refused metrics.Counter
	size              metrics.Observer
	results           *metrics.CounterVec // status, errno
}

func newBatchMetrics(r *metrics.Registry) *batchMetrics {
	batches := r.CounterVec("pushrelay_endpoint_batches_total", "Batch requests: accepted (answered 200 with one result per message) or refused as a whole.", "result")
	return &batchMetrics{
		accepted: batches.With("accepted"),
		refused:  batches.With("refused"),
		size:     r.Histogram("pushrelay_endpoint_batch_messages", "Messages per accepted batch.", metrics.SizeBuckets),
		results:  r.CounterVec("pushrelay_endpoint_batch_results_total", "Messages of accepted batches by their own status and errno (0 for 201).", "status", "errno"),
	}
}

// batchGate holds the slots of batch bodies. A slot is taken for a request
// when its head is read and marked against the request's key (exchange.key:
// the same for the connection's life); it is given back when the request
// has been answered (handle) or could not be read (readFailed). A mark
// older than stale (a connection that broke off where the server calls
// neither) is reclaimed when no slot is free.
type batchGate struct {
	slots chan struct{}
	stale time.Duration
	now   func() time.Time

	mu    sync.Mutex
	marks map[any]gateMark
	n     atomic.Int32 // len(marks), read without mu on every request
}

type gateMark struct {
	held bool // a slot is held; false: refused for want of one
	at   time.Time
}

func newBatchGate(n int, stale time.Duration, now func() time.Time) *batchGate {
	return &batchGate{slots: make(chan struct{}, n), stale: stale, now: now, marks: map[any]gateMark{}}
}

// take tries to take a slot for h and records the outcome.
func (g *batchGate) take(h any) bool {
	g.release(h) // a mark left by this connection's last request
	held := g.tryTake()
	if !held {
		g.reclaim()
		held = g.tryTake()
	}
	g.mu.Lock()
	g.marks[h] = gateMark{held: held, at: g.now()}
	g.n.Store(int32(len(g.marks)))
	g.mu.Unlock()
	return held
}

func (g *batchGate) tryTake() bool {
	select {
	case g.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

// mark returns h's mark.
func (g *batchGate) mark(h any) (gateMark, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	m, ok := g.marks[h]
	return m, ok
}

// release forgets h's mark and gives back its slot.
func (g *batchGate) release(h any) {
	if g.n.Load() == 0 {
		return
	}
	g.mu.Lock()
	m, ok := g.marks[h]
	delete(g.marks, h)
	g.n.Store(int32(len(g.marks)))
	g.mu.Unlock()
	if ok && m.held {
		<-g.slots
	}
}

// reclaim gives back the slots of marks older than stale.
func (g *batchGate) reclaim() {
	now := g.now()
	var freed int
	g.mu.Lock()
	for h, m := range g.marks {
		if now.Sub(m.at) > g.stale {
			delete(g.marks, h)
			if m.held {
				freed++
			}
		}
	}
	g.n.Store(int32(len(g.marks)))
	g.mu.Unlock()
	for range freed {
		<-g.slots
	}
}

// bodyLimit is the body limit of a request whose head has been read: a
// batch gets its limit if it gets a slot, and otherwise a limit of one
// byte, so that its body is not read (the answer is 503, from readFailed
// or postBatch). Other requests keep the server's limit, MaxData (0).
func (a *API) bodyLimit(key any, post bool, uri []byte) int {
	if !post || !isBatchURI(uri) {
		return 0
	}
	if a.batch.take(key) {
		return a.batchMax
	}
	return 1
}

func isBatchURI(uri []byte) bool {
	rest, ok := bytes.CutPrefix(uri, batchPath)
	return ok && (len(rest) == 0 || rest[0] == '?')
}

// batchUnread answers a batch request whose body was not read for want of
// a slot, and reports whether it was one.
func (a *API) batchUnread(ctx exchange) bool {
	m, ok := a.batch.mark(ctx.key())
	if !ok {
		return false
	}
	a.batch.release(ctx.key())
	if m.held {
		return false
	}
	a.bm.refused.Inc()
	a.answer(ctx, errBatchBusy)
	ctx.closeConn()
	return true
}

// batchRequest is the body of a batch.
type batchRequest struct {
	Messages []batchMessage `json:"messages"`
}

// batchMessage is one message of a batch: what a single POST carries in
// its URL, headers and body.
type batchMessage struct {
	Endpoint   string          `json:"endpoint"`
	Token      string          `json:"token"`
	Version    string          `json:"version"`
	TTL        json.RawMessage `json:"ttl"`
	Topic      string          `json:"topic"`
	Urgency    string          `json:"urgency"`
	Encoding   string          `json:"encoding"`
	Encryption string          `json:"encryption"`
	CryptoKey  string          `json:"crypto_key"`
	Data       string          `json:"data"`
}

// decodeBatch decodes a batch body: one JSON object with a "messages"
// array of at most maxMessages objects, nothing after it; unknown fields
// are ignored. Each message is checked later, on its own. It decodes in
// place (json.Unmarshal): a json.Decoder would first copy the body into a
// buffer of its own, up to twice its size.
func decodeBatch(body []byte, maxMessages int) ([]batchMessage, *apiError) {
	var req batchRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, errBadBatch.with(jsonProblem(err))
	}
	switch {
	case req.Messages == nil:
		return nil, errBadBatch.with(`want {"messages": [...]}`)
	case len(req.Messages) == 0:
		return nil, errBadBatch.with("no messages")
	case len(req.Messages) > maxMessages:
		return nil, errTooLarge.with(fmt.Sprintf("more than %d messages in a batch", maxMessages))
	}
	return req.Messages, nil
}

// jsonProblem says what is wrong with a body in a line.
func jsonProblem(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("not JSON at byte %d", syn.Offset)
	case errors.As(err, &typ):
		return fmt.Sprintf("%s: want %s", typ.Field, typ.Type)
	}
	return err.Error()
}

// batchAuth is how a batch authenticated: with the batch token (for v1
// endpoints) or with VAPID (for v2 endpoints bound to keyHash).
type batchAuth struct {
	token   bool
	keyHash [32]byte
}

// authenticateBatch checks a batch's Authorization once for the whole
// request. "Bearer <token>" without a Crypto-Key p256ecdsa key is the
// batch token; anything else is VAPID, in the forms a single post takes.
func (a *API) authenticateBatch(ctx exchange) (batchAuth, *apiError) {
	auth := strings.TrimSpace(header(ctx, "Authorization"))
	if auth == "" {
		return batchAuth{}, errAuth.with("a batch needs Authorization: vapid (v2 endpoints) or Bearer with the batch token (v1 endpoints)")
	}
	cryptoKey := header(ctx, "Crypto-Key")
	scheme, rest, _ := strings.Cut(auth, " ")
	if strings.EqualFold(scheme, "bearer") && !hasParam(cryptoKey, "p256ecdsa") {
		if len(a.cfg.BatchToken) == 0 {
			return batchAuth{}, errNoBatchToken
		}
		if subtle.ConstantTimeCompare([]byte(strings.TrimSpace(rest)), a.cfg.BatchToken) != 1 {
			return batchAuth{}, errAuth.with("wrong batch token")
		}
		return batchAuth{token: true}, nil
	}
	creds, err := vapid.ParseAuthorization(auth, cryptoKey)
	if err != nil {
		return batchAuth{}, errAuth.with(err.Error())
	}
	if _, err := vapid.Verify(creds, a.audience, a.cfg.Now()); err != nil {
		return batchAuth{}, errAuth.with(err.Error())
	}
	return batchAuth{keyHash: vapid.KeyHash(creds.PublicKey)}, nil
}

// permits checks that the batch's authentication covers ep.
func (b batchAuth) permits(ep token.Endpoint) *apiError {
	switch {
	case b.token && ep.KeyHash != nil:
		return errAuth.with("a batch authenticated with the batch token cannot post to a VAPID-bound (v2) endpoint; sign the batch with its VAPID key")
	case !b.token && ep.KeyHash == nil:
		return errAuth.with("a VAPID-signed batch cannot post to an unbound (v1) endpoint; authenticate with the batch token")
	case !b.token && *ep.KeyHash != b.keyHash:
		return errAuth.with("VAPID key does not match the subscription")
	}
	return nil
}

// batchResult is one message's answer.
type batchResult struct {
	Status    int    `json:"status"`
	Location  string `json:"location,omitempty"`
	QueueSize *int   `json:"queue_size,omitempty"`
	Errno     int    `json:"errno,omitempty"`
	Error     string `json:"error,omitempty"`
	Message   string `json:"message,omitempty"`
}

func failedResult(e *apiError) batchResult {
	return batchResult{Status: e.Code, Errno: e.Errno, Error: http.StatusText(e.Code), Message: e.Message}
}

// postBatch serves POST /wpush/batch.
func (a *API) postBatch(ctx exchange) {
	h := ctx.key()
	if m, ok := a.batch.mark(h); !ok {
		// Its head was not recognized as a batch's (an absolute URI): its
		// body was read under MaxData; it still needs a slot.
		if !a.batch.take(h) {
			a.refuseBatch(ctx, errBatchBusy)
			return
		}
	} else if !m.held {
		a.refuseBatch(ctx, errBatchBusy)
		ctx.closeConn()
		return
	}
	auth, aerr := a.authenticateBatch(ctx)
	if aerr != nil {
		a.refuseBatch(ctx, aerr)
		return
	}
	items, aerr := decodeBatch(ctx.body(), a.cfg.BatchMaxMessages)
	if aerr != nil {
		a.refuseBatch(ctx, aerr)
		return
	}
	// The decoded fields are copies: the body's buffer can go back to
	// the server's pool while the store writes.
	ctx.dropBody()
	results := make([]batchResult, len(items))
	msgs := make([]push.Message, 0, len(items))
	at := make([]int, 0, len(items)) // index in items of each msgs entry
	for i := range items {
		m, aerr := a.parseBatchMessage(&items[i], auth)
		if aerr != nil {
			results[i] = failedResult(aerr)
			continue
		}
		msgs = append(msgs, m)
		at = append(at, i)
	}
	items = nil // the decoded strings can go
	if len(msgs) > 0 {
		pctx, cancel := context.WithTimeout(a.ctx, a.cfg.RequestTimeout)
		rs, err := a.cfg.Pusher.Ingest(pctx, msgs)
		cancel()
		if err != nil {
			a.refuseBatch(ctx, a.storeFailed("batch push", err))
			return
		}
		a.batchResults(results, at, rs)
	}
	body, err := json.Marshal(struct {
		Results []batchResult `json:"results"`
	}{results})
	if err != nil {
		a.refuseBatch(ctx, errInternal)
		return
	}
	for _, r := range results {
		errno := r.Errno
		a.bm.results.With(strconv.Itoa(r.Status), strconv.Itoa(errno)).Inc()
	}
	a.bm.accepted.Inc()
	a.bm.size.Observe(float64(len(results)))
	ctx.setHeader("Content-Type", "application/json")
	ctx.setStatus(http.StatusOK)
	ctx.setBody(append(body, '\n'))
}

// batchResults fills in the results of the messages the hub took.
func (a *API) batchResults(results []batchResult, at []int, rs []relay.Result) {
	var (
		lastErr  error
		lastAErr *apiError
		wrote    bool
	)
	for j, r := range rs {
		i := at[j]
		switch {
		case r.Err == nil:
			results[i] = batchResult{Status: http.StatusCreated, Location: a.location + r.ID}
			if r.Stored {
				q := r.Queue
				results[i].QueueSize = &q
				wrote = true
			}
		case errors.Is(r.Err, relay.ErrNoSubscription):
			results[i] = failedResult(errNoSub)
		default:
			// A failed commit fails all its messages with one error:
			// classify (and log) it once.
			if r.Err != lastErr {
				lastErr, lastAErr = r.Err, a.storeFailed("batch push", r.Err)
			}
			results[i] = failedResult(lastAErr)
		}
	}
	if wrote {
		a.storeWrote()
	}
}

// refuseBatch answers a batch as a whole with e.
func (a *API) refuseBatch(ctx exchange, e *apiError) {
	a.bm.refused.Inc()
	a.fail(ctx, e)
}

// parseBatchMessage validates one message of a batch as a single POST
// validates its request.
func (a *API) parseBatchMessage(b *batchMessage, auth batchAuth) (push.Message, *apiError) {
	ep, aerr := a.batchEndpoint(b)
	if aerr != nil {
		return push.Message{}, aerr
	}
	if aerr := auth.permits(ep); aerr != nil {
		return push.Message{}, aerr
	}
	m := a.messageFor(ep)
	if len(b.TTL) == 0 || string(b.TTL) == "null" {
		return m, errMissingTTL
	}
	ttl := string(b.TTL)
	if b.TTL[0] == '"' {
		if err := json.Unmarshal(b.TTL, &ttl); err != nil {
			return m, errBadTTL.with("not an integer")
		}
	}
	if m.TTL, aerr = ParseTTL([]string{ttl}); aerr != nil {
		return m, aerr
	}
	if m.Topic, aerr = ParseTopic(b.Topic); aerr != nil {
		return m, aerr
	}
	if m.Urgency, aerr = ParseUrgency(b.Urgency); aerr != nil {
		return m, aerr
	}
	if b.Data == "" {
		return m, nil
	}
	// base64url, with or without padding; its decoded size is the body's.
	raw := strings.TrimRight(b.Data, "=")
	if base64.RawURLEncoding.DecodedLen(len(raw)) > a.cfg.MaxData {
		return m, errTooLarge
	}
	data, err := base64.RawURLEncoding.DecodeString(raw)
	if err != nil {
		return m, errBadBatch.with("data is not base64url")
	}
	get := func(name string) string {
		switch name {
		case "Content-Encoding":
			return b.Encoding
		case "Encryption":
			return b.Encryption
		case "Crypto-Key":
			return b.CryptoKey
		}
		return ""
	}
	enc, aerr := checkContent(get, data)
	if aerr != nil {
		return m, aerr
	}
	m.Data, m.Encoding = data, enc
	if enc == "aesgcm" {
		// As for a single post, the device gets them in autopush's form.
		m.Encryption, m.CryptoKey = normalizeCryptoHeader(b.Encryption), normalizeCryptoHeader(b.CryptoKey)
	}
	return m, nil
}

// batchEndpoint opens a message's subscription: its endpoint URL (one
// this relay minted: public URL + /wpush/[v1/|v2/]token) or its token
// and version ("v1", the default, or "v2").
func (a *API) batchEndpoint(b *batchMessage) (token.Endpoint, *apiError) {
	tok, v := b.Token, b.Version
	switch {
	case b.Endpoint != "" && (b.Token != "" || b.Version != ""):
		return token.Endpoint{}, errBadBatch.with("a message has an endpoint or a token and version, not both")
	case b.Endpoint != "":
		rest, ok := strings.CutPrefix(b.Endpoint, strings.TrimSuffix(a.cfg.PublicURL, "/")+"/wpush/")
		if !ok {
			return token.Endpoint{}, errNotFound.with("not an endpoint of this relay")
		}
		v = ""
		if ver, t, ok := strings.Cut(rest, "/"); ok {
			v, rest = ver, t
		}
		tok = rest
	case b.Token == "":
		return token.Endpoint{}, errBadBatch.with("a message needs an endpoint or a token")
	}
	version := 1
	switch v {
	case "", "v1":
	case "v2":
		version = 2
	default:
		return token.Endpoint{}, errNotFound.with("version must be v1 or v2")
	}
	ep, err := a.cfg.Tokens.OpenEndpoint(version, tok)
	if err != nil {
		return token.Endpoint{}, errBadToken
	}
	return ep, nil
}
