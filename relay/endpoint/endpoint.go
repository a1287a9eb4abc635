// Package endpoint is the HTTP API app servers push to: Web Push (RFC 8030)
// with VAPID (RFC 8292) as autopush serves it, and SimplePush's version PUT.
//
//	POST   /wpush/v1/{token}   message to a subscription
//	POST   /wpush/v2/{token}   message to a VAPID-bound subscription
//	POST   /wpush/{token}      same as v1
//	PUT    /update/{token}     SimplePush: body or query version=N
//	DELETE /m/{id}             withdraw a waiting message
//
// Every error is JSON {code, errno, error, message, more_info} with
// autopush's errno where autopush has one (docs/endpoint-api.md lists them).
// Nothing is stored unless the whole request is valid.
package endpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/token"
	"github.com/pushrelay/pushrelay/relay/vapid"
)

// Pusher is what the API needs from the relay core.
type Pusher interface {
	Push(ctx context.Context, m relay.Message) (relay.Result, error)
	Delete(ctx context.Context, id string) error
}

// Limits fixed by the protocol.
const (
	// MaxTTL caps the TTL header, like autopush (30 days).
	MaxTTL = 30 * 24 * time.Hour
	// MaxTopicLen is RFC 8030's limit on Topic.
	MaxTopicLen = 32
	// DefaultMaxData is the largest body accepted (RFC 8030 §7.2: 4096).
	DefaultMaxData = 4096
)

// Config configures the API.
type Config struct {
	Tokens *token.Codec
	Pusher Pusher
	// PublicURL is the base of endpoints; its origin is the VAPID audience.
	PublicURL string
	MaxData   int
	Logger    *slog.Logger
	Metrics   *metrics.Registry
	Now       func() time.Time
}

// API serves the endpoint routes.
type API struct {
	cfg      Config
	audience string
	mux      *http.ServeMux
	m        *apiMetrics
}

// New returns the API handler.
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
	a := &API{cfg: cfg, audience: u.Scheme + "://" + u.Host, mux: http.NewServeMux(), m: newAPIMetrics(metrics.OrNew(cfg.Metrics))}
	a.mux.HandleFunc("POST /wpush/{version}/{token}", a.postWebPush)
	a.mux.HandleFunc("POST /wpush/{token}", a.postWebPush)
	a.mux.HandleFunc("PUT /update/{token}", a.putSimplePush)
	a.mux.HandleFunc("DELETE /m/{id}", a.deleteMessage)
	a.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		a.fail(w, r, errNotFound)
	})
	return a, nil
}

// ServeHTTP implements http.Handler.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mux.ServeHTTP(w, r)
}

// apiError is an error response.
type apiError struct {
	Code    int
	Errno   int
	Message string
}

func (e *apiError) Error() string { return fmt.Sprintf("%d errno %d: %s", e.Code, e.Errno, e.Message) }

func (e *apiError) with(detail string) *apiError {
	c := *e
	c.Message = e.Message + ": " + detail
	return &c
}

// The errors of the API. Errnos are autopush's (docs/src/errors.md); 115
// and 116 are pushrelay's own.
var (
	errNotFound      = &apiError{404, 102, "Invalid URL endpoint"}
	errBadToken      = &apiError{404, 102, "Invalid subscription token"}
	errNoSub         = &apiError{410, 106, "No such subscription"}
	errTooLarge      = &apiError{413, 104, "Data payload too large"}
	errMissingCrypto = &apiError{400, 101, "Missing necessary crypto keys"}
	errBadCrypto     = &apiError{400, 110, "Invalid crypto headers"}
	errMissingTTL    = &apiError{400, 111, "Missing TTL header"}
	errBadTTL        = &apiError{400, 114, "Invalid TTL header"}
	errBadTopic      = &apiError{400, 113, "Invalid Topic header"}
	errBadUrgency    = &apiError{400, 115, "Invalid Urgency header"}
	errBadVersion    = &apiError{400, 116, "Invalid SimplePush version"}
	errAuth          = &apiError{401, 109, "Invalid authentication"}
	errNoMessage     = &apiError{404, 102, "No such message"}
	errUnavailable   = &apiError{503, 202, "Service unavailable, try again"}
	errInternal      = &apiError{500, 999, "An internal error occurred"}
)

func (a *API) fail(w http.ResponseWriter, r *http.Request, e *apiError) {
	a.m.errors.With(strconv.Itoa(e.Code), strconv.Itoa(e.Errno)).Inc()
	h := w.Header()
	h.Set("Content-Type", "application/json")
	switch e.Code {
	case http.StatusGone:
		h.Set("Cache-Control", "max-age=86400")
	case http.StatusServiceUnavailable:
		h.Set("Retry-After", "120")
	}
	w.WriteHeader(e.Code)
	json.NewEncoder(w).Encode(struct {
		Code     int    `json:"code"`
		Errno    int    `json:"errno"`
		Error    string `json:"error"`
		Message  string `json:"message"`
		MoreInfo string `json:"more_info"`
	}{e.Code, e.Errno, http.StatusText(e.Code), e.Message, "docs/endpoint-api.md"})
	a.cfg.Logger.Debug("endpoint request refused", "method", r.Method, "path", r.URL.Path, "status", e.Code, "errno", e.Errno, "message", e.Message)
}

func (a *API) postWebPush(w http.ResponseWriter, r *http.Request) {
	start := a.cfg.Now()
	version := 1
	if v := r.PathValue("version"); v != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(v, "v"))
		if err != nil || !strings.HasPrefix(v, "v") {
			a.fail(w, r, errNotFound)
			return
		}
		version = n
	}
	ep, err := a.cfg.Tokens.OpenEndpoint(version, r.PathValue("token"))
	if err != nil {
		a.fail(w, r, errBadToken)
		return
	}
	msg, aerr := a.parseWebPush(r, ep)
	if aerr != nil {
		a.fail(w, r, aerr)
		return
	}
	a.push(w, r, msg, start)
}

// parseWebPush validates everything about a Web Push request before
// anything is stored.
func (a *API) parseWebPush(r *http.Request, ep token.Endpoint) (relay.Message, *apiError) {
	m := relay.Message{Endpoint: ep}
	if aerr := a.checkVAPID(r, ep); aerr != nil {
		return m, aerr
	}
	ttl, aerr := ParseTTL(r.Header.Values("TTL"))
	if aerr != nil {
		return m, aerr
	}
	m.TTL = ttl
	if m.Topic, aerr = ParseTopic(r.Header.Get("Topic")); aerr != nil {
		return m, aerr
	}
	if m.Urgency, aerr = ParseUrgency(r.Header.Get("Urgency")); aerr != nil {
		return m, aerr
	}
	body, aerr := a.readBody(r)
	if aerr != nil {
		return m, aerr
	}
	if len(body) > 0 {
		enc, aerr := checkContent(r.Header, body)
		if aerr != nil {
			return m, aerr
		}
		m.Data = body
		m.Encoding = enc
		if enc == "aesgcm" {
			m.Encryption = r.Header.Get("Encryption")
			m.CryptoKey = r.Header.Get("Crypto-Key")
		}
	}
	return m, nil
}

func (a *API) readBody(r *http.Request) ([]byte, *apiError) {
	if r.ContentLength > int64(a.cfg.MaxData) {
		return nil, errTooLarge
	}
	if r.ContentLength >= 0 {
		// The usual case: the length is known (net/http delivers exactly
		// that many bytes), so read into one buffer of that size.
		body := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, body); err != nil {
			return nil, errBadCrypto.with("reading body: " + err.Error())
		}
		return body, nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, int64(a.cfg.MaxData)+1))
	if err != nil {
		return nil, errBadCrypto.with("reading body: " + err.Error())
	}
	if len(body) > a.cfg.MaxData {
		return nil, errTooLarge
	}
	return body, nil
}

// checkVAPID verifies the VAPID credentials if any were sent, and requires
// them, with the bound key, for a v2 endpoint.
func (a *API) checkVAPID(r *http.Request, ep token.Endpoint) *apiError {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		if ep.KeyHash != nil {
			return errAuth.with("this endpoint requires VAPID")
		}
		return nil
	}
	creds, err := vapid.ParseAuthorization(auth, r.Header.Get("Crypto-Key"))
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
// the encoding.
func checkContent(h http.Header, body []byte) (string, *apiError) {
	enc := strings.ToLower(strings.TrimSpace(h.Get("Content-Encoding")))
	switch enc {
	case "aes128gcm":
		if hasParam(h.Get("Encryption"), "salt") || hasParam(h.Get("Crypto-Key"), "dh") {
			return "", errBadCrypto.with("aes128gcm carries its salt and key in the body, not in Encryption/Crypto-Key")
		}
		if _, _, _, err := ece.ParseAES128GCMHeader(body); err != nil {
			return "", errBadCrypto.with(err.Error())
		}
		return enc, nil
	case "aesgcm":
		if !hasParam(h.Get("Encryption"), "salt") {
			return "", errMissingCrypto.with("aesgcm needs Encryption: salt=")
		}
		if !hasParam(h.Get("Crypto-Key"), "dh") {
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
func ParseUrgency(s string) (store.Urgency, *apiError) {
	if s == "" {
		return store.UrgencyNormal, nil
	}
	u, err := store.ParseUrgency(strings.ToLower(strings.TrimSpace(s)))
	if err != nil {
		return 0, errBadUrgency.with("want very-low, low, normal or high")
	}
	return u, nil
}

func (a *API) push(w http.ResponseWriter, r *http.Request, m relay.Message, start time.Time) {
	res, err := a.cfg.Pusher.Push(r.Context(), m)
	switch {
	case err == nil:
	case errors.Is(err, relay.ErrNoSubscription):
		a.fail(w, r, errNoSub)
		return
	case errors.Is(err, relay.ErrClosing):
		a.fail(w, r, errUnavailable)
		return
	default:
		a.cfg.Logger.Error("push failed", "err", err)
		a.fail(w, r, errInternal)
		return
	}
	h := w.Header()
	h.Set("Location", strings.TrimSuffix(a.cfg.PublicURL, "/")+"/m/"+res.ID)
	h.Set("TTL", strconv.FormatInt(int64(m.TTL/time.Second), 10))
	w.WriteHeader(http.StatusCreated)
	a.m.accepted.Inc()
	a.m.latency.Observe(a.cfg.Now().Sub(start).Seconds())
}

// putSimplePush accepts a SimplePush version update. The version is an
// integer from the form body or query (version=N); without one the current
// time in seconds is used, as SimplePush servers did.
func (a *API) putSimplePush(w http.ResponseWriter, r *http.Request) {
	start := a.cfg.Now()
	ep, err := a.cfg.Tokens.OpenEndpoint(1, r.PathValue("token"))
	if err != nil {
		a.fail(w, r, errBadToken)
		return
	}
	body, aerr := a.readBody(r)
	if aerr != nil {
		a.fail(w, r, aerr)
		return
	}
	v, aerr := ParseSimplePushVersion(string(body), r.URL.RawQuery, start)
	if aerr != nil {
		a.fail(w, r, aerr)
		return
	}
	a.push(w, r, relay.Message{Endpoint: ep, TTL: MaxTTL, Version: v, Urgency: store.UrgencyNormal}, start)
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

func (a *API) deleteMessage(w http.ResponseWriter, r *http.Request) {
	err := a.cfg.Pusher.Delete(r.Context(), r.PathValue("id"))
	switch {
	case err == nil:
		w.WriteHeader(http.StatusNoContent)
	case errors.Is(err, relay.ErrNoMessage):
		a.fail(w, r, errNoMessage)
	case errors.Is(err, relay.ErrClosing):
		a.fail(w, r, errUnavailable)
	default:
		a.cfg.Logger.Error("delete failed", "err", err)
		a.fail(w, r, errInternal)
	}
}
