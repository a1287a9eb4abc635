package discovery

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"net/netip"
	"time"

	"github.com/pion/stun/v3"
)

// handler decides what to answer to one datagram. It owns no socket, so
// tests and the fuzz target drive it directly. Not safe for concurrent use:
// the server calls it from its one reader goroutine.
type handler struct {
	reg     Registry
	now     func() time.Time
	maxSkew time.Duration
	limit   *limiter
	met     *serverMetrics
	log     *slog.Logger
	debug   logLimit // per-packet drop reasons
	warn    logLimit // registry storage errors

	req, resp *stun.Message // reused for every datagram
	xor       [20]byte      // XOR-MAPPED-ADDRESS value buffer

	// pending is set by handle when the registry's Bind returned a
	// *Pending: the answer comes later (the server's finish).
	pending *deferred
}

// deferred is an authenticated request whose binding is being written:
// what the answer needs once it is.
type deferred struct {
	wait     func() error
	src      netip.AddrPort
	txID     [stun.TransactionIDSize]byte
	key      []byte
	username string
}

func newHandler(cfg Config, met *serverMetrics) *handler {
	now := cfg.Now()
	return &handler{
		reg:     cfg.Registry,
		now:     cfg.Now,
		maxSkew: cfg.MaxSkew,
		limit:   newLimiter(cfg.Rate, cfg.Burst, maxSources, now, met.sources),
		met:     met,
		log:     cfg.Logger,
		debug:   logLimit{every: time.Second / 10},
		warn:    logLimit{every: time.Second},
		req:     stun.New(),
		resp:    stun.New(),
	}
}

// handle returns the answer to pkt from src, or nil to drop it, and counts
// the result. The answer is never larger than pkt and is valid until the next
// call.
func (h *handler) handle(pkt []byte, src netip.AddrPort) []byte {
	h.pending = nil
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	now := h.now()
	var (
		resp []byte
		res  result
		err  error
	)
	if !h.limit.allow(src.Addr(), now) {
		res = resultRateLimited
	} else {
		resp, res, err = h.answer(pkt, src, now)
	}
	if resp != nil && len(resp) > len(pkt) {
		resp, res = nil, resultAmplification
	}
	if h.pending != nil {
		return nil // counted when its write is done
	}
	h.met.results[res].Inc()
	if resp == nil {
		h.dropped(res, src, err, now)
	}
	return resp
}

// answer does the work of handle, before the rate limit's and the size's
// last word.
func (h *handler) answer(pkt []byte, src netip.AddrPort, now time.Time) ([]byte, result, error) {
	if !src.IsValid() || src.Port() == 0 || len(pkt) > maxPacket || !IsSTUN(pkt) {
		return nil, resultMalformed, nil
	}
	req := h.req
	if err := stun.Decode(pkt, req); err != nil {
		return nil, resultMalformed, err
	}
	if req.Type != stun.BindingRequest {
		return nil, resultNotBinding, nil
	}
	if req.Contains(stun.AttrUsername) || req.Contains(stun.AttrMessageIntegrity) {
		return h.authenticated(src, now)
	}
	if req.Contains(stun.AttrFingerprint) {
		if err := checkFingerprint(req); err != nil {
			return nil, resultBadRequest, err
		}
	}
	// Only XOR-MAPPED-ADDRESS: anything more would let fewer requests
	// through the amplification check.
	return h.respond(src, nil), resultPlain, nil
}

// authenticated checks h.req as a device's Binding request and records the
// device at src.
func (h *handler) authenticated(src netip.AddrPort, now time.Time) ([]byte, result, error) {
	req := h.req
	user, err := req.Get(stun.AttrUsername)
	if err != nil || len(user) == 0 {
		return nil, resultBadRequest, errNoUsername
	}
	ts, err := req.Get(attrTime)
	if err != nil || len(ts) != 8 {
		return nil, resultBadRequest, errNoTime
	}
	if err := checkTrailer(req); err != nil {
		return nil, resultBadRequest, err
	}
	// Only a USERNAME of a few bytes makes the signed answer larger, but
	// know it before asking the registry.
	if authResponseSize(src) > len(req.Raw) {
		return nil, resultAmplification, nil
	}
	username := string(user)
	key, err := h.reg.Key(username)
	switch {
	case errors.Is(err, ErrUnknownUser):
		return nil, resultUnknownUser, err
	case err != nil:
		h.storageError("key", username, err, now)
		return nil, resultError, err
	case len(key) == 0:
		// Anyone could sign for an empty key.
		err = errEmptyKey
		h.storageError("key", username, err, now)
		return nil, resultError, err
	}
	if err := checkIntegrity(req, key); err != nil {
		return nil, resultBadIntegrity, err
	}
	stamp := time.UnixMilli(int64(binary.BigEndian.Uint64(ts)))
	if d := now.Sub(stamp); d > h.maxSkew || d < -h.maxSkew {
		return nil, resultStale, nil
	}
	var pending *Pending
	switch err := h.reg.Bind(username, src, stamp); {
	case errors.As(err, &pending):
		h.pending = &deferred{wait: pending.Wait, src: src, txID: req.TransactionID, key: bytes.Clone(key), username: username}
		return nil, resultBound, nil
	case errors.Is(err, ErrReplay):
		return nil, resultReplay, err
	case errors.Is(err, ErrUnknownUser):
		return nil, resultUnknownUser, err
	case err != nil:
		h.storageError("bind", username, err, now)
		return nil, resultError, err
	}
	return h.respond(src, key), resultBound, nil
}

// authResponseSize is the size of the answer to an authenticated request
// from src: header, XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY, FINGERPRINT.
func authResponseSize(src netip.AddrPort) int {
	n := headerSize + 4 + 4 + 4 + 4 + integritySize + 4 + fingerprintSize
	if !src.Addr().Unmap().Is4() {
		n += 12
	}
	return n
}

// respond builds the Binding success response to h.req in h.resp: the
// XOR-MAPPED-ADDRESS of src and, under a non-nil key, MESSAGE-INTEGRITY and
// FINGERPRINT.
func (h *handler) respond(src netip.AddrPort, key []byte) []byte {
	return buildResponse(h.resp, h.xor[:0], h.req.TransactionID, src, key)
}

// buildResponse builds in m the Binding success response to the request
// with transaction ID txID from src; xor is scratch space.
func buildResponse(m *stun.Message, xor []byte, txID [stun.TransactionIDSize]byte, src netip.AddrPort, key []byte) []byte {
	m.Reset()
	m.Type = stun.BindingSuccess
	m.TransactionID = txID
	m.WriteHeader()
	m.Add(stun.AttrXORMappedAddress, appendXORAddr(xor, src, m.TransactionID))
	if key != nil {
		// Neither fails: the message has no FINGERPRINT yet.
		_ = stun.MessageIntegrity(key).AddTo(m)
		_ = stun.Fingerprint.AddTo(m)
	}
	return m.Raw
}

// dropped logs a drop at Debug, rate-limited.
func (h *handler) dropped(res result, src netip.AddrPort, err error, now time.Time) {
	if !h.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	if n, ok := h.debug.allow(now); ok {
		h.log.Debug("stun drop", "result", res.String(), "src", src, "err", err, "suppressed", n)
	}
}

// writeFailed logs a failed response write at Debug, rate-limited.
func (h *handler) writeFailed(dst netip.AddrPort, err error) {
	if !h.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	if n, ok := h.debug.allow(h.now()); ok {
		h.log.Debug("stun write", "dst", dst, "err", err, "suppressed", n)
	}
}

// storageError logs a registry failure at Warn, rate-limited.
func (h *handler) storageError(op, username string, err error, now time.Time) {
	if n, ok := h.warn.allow(now); ok {
		h.log.Warn("stun registry error", "op", op, "username", username, "err", err, "suppressed", n)
	}
}

// logLimit lets one log line through per interval and counts the rest.
type logLimit struct {
	every      time.Duration
	next       time.Time
	suppressed int
}

// allow reports whether to log now and how many lines were suppressed since
// the last one.
func (l *logLimit) allow(now time.Time) (int, bool) {
	if now.Before(l.next) {
		l.suppressed++
		return 0, false
	}
	n := l.suppressed
	l.suppressed, l.next = 0, now.Add(l.every)
	return n, true
}
