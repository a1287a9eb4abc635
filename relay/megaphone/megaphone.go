// Package megaphone polls a megaphone-compatible HTTP service for broadcast
// versions, as autopush's connection server does, and gives each answer to
// the relay's broadcast registry.
//
// A Poller asks GET <url> (with Authorization: Bearer <token> when a token
// is configured) once at start and then every Interval. The service answers
// {"broadcasts": {"<id>": "<version>", ...}}. A good answer is handed whole
// to the registry under the source "megaphone"; the registry writes and
// announces only the versions that changed, so an unchanged answer costs
// nothing. As in autopush, an id missing from a later answer keeps its last
// version: answers only add and update, never remove.
//
// An answer that is not valid (not JSON, no broadcasts object, more than
// broadcast.MaxIDs ids, an id or version refused by broadcast.Check, larger
// than MaxAnswer bytes) is refused whole: nothing changes. Failed polls back
// off, doubling the wait from Interval up to MaxBackoff, and are logged once
// per streak of failures (the rest at debug), with one line when the service
// answers again.
//
// One goroutine, Run's caller, does all the work; Close cancels a poll in
// flight and waits for Run to return.
package megaphone

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/pushrelay/pushrelay/relay/broadcast"
	"github.com/pushrelay/pushrelay/relay/metrics"
)

// Source is the registry's label for versions set from megaphone answers.
const Source = "megaphone"

// MaxAnswer bounds an answer's body (bytes). The largest valid answer,
// broadcast.MaxIDs ids and versions of broadcast.MaxLen bytes each, is
// about 270 KB; escapes and white space get the rest.
const MaxAnswer = 1 << 20

// Defaults of Config's zero values.
const (
	DefaultInterval   = 30 * time.Second // autopush's megaphone_poll_interval
	DefaultMaxBackoff = 5 * time.Minute
	DefaultTimeout    = 10 * time.Second
)

// ErrBadAnswer is returned by Decode for an answer that is not a valid
// broadcasts map.
var ErrBadAnswer = errors.New("bad megaphone answer")

// Registry is where versions go (broadcast.Registry).
type Registry interface {
	Set(ctx context.Context, source string, versions map[string]string) (map[string]string, error)
}

// Config configures a Poller.
type Config struct {
	// URL is the megaphone service's broadcasts URL (http or https).
	URL string
	// Token, when set, is sent as "Authorization: Bearer <Token>". A token
	// that already starts with "Bearer " (autopush's old setting held the
	// whole header value) is sent as it is.
	Token string
	// Interval between polls; DefaultInterval when zero.
	Interval time.Duration
	// MaxBackoff bounds the wait after failed polls; DefaultMaxBackoff when
	// zero, never less than Interval.
	MaxBackoff time.Duration
	// Timeout bounds one poll, from connect to the answer's last byte;
	// DefaultTimeout when zero, never more than Interval.
	Timeout time.Duration
	// Registry receives every good answer.
	Registry Registry
	// Transport, when set, replaces the HTTP transport (tests with a
	// private TLS root).
	Transport http.RoundTripper
	Logger    *slog.Logger
	Metrics   *metrics.Registry
}

// Poller polls one megaphone service.
type Poller struct {
	cfg    Config
	auth   string
	client *http.Client
	log    *slog.Logger
	m      *pollerMetrics

	// wait sleeps d or until ctx is done, reporting whether it slept;
	// tests replace it to see and drive the schedule.
	wait func(ctx context.Context, d time.Duration) bool

	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	closed bool
	runs   sync.WaitGroup
}

// New checks cfg and returns a Poller; nothing is sent until Run.
func New(cfg Config) (*Poller, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("megaphone: url %q: want an absolute http:// or https:// URL", cfg.URL)
	}
	if cfg.Registry == nil {
		return nil, errors.New("megaphone: no registry")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	cfg.MaxBackoff = max(cfg.MaxBackoff, cfg.Interval)
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	cfg.Timeout = min(cfg.Timeout, cfg.Interval)
	if strings.ContainsAny(cfg.Token, "\r\n") {
		return nil, errors.New("megaphone: token holds a line break")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	tr := cfg.Transport
	if tr == nil {
		tr = &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   cfg.Timeout,
			ResponseHeaderTimeout: cfg.Timeout,
			MaxIdleConns:          1,
			IdleConnTimeout:       2 * cfg.Interval,
			ForceAttemptHTTP2:     true,
		}
	}
	p := &Poller{
		cfg:    cfg,
		client: &http.Client{Transport: tr, Timeout: cfg.Timeout},
		log:    cfg.Logger,
		m:      newMetrics(cfg.Metrics),
		wait:   sleep,
	}
	switch {
	case cfg.Token == "":
	case strings.HasPrefix(cfg.Token, "Bearer "):
		p.auth = cfg.Token
	default:
		p.auth = "Bearer " + cfg.Token
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p, nil
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Run polls at once, then every Interval (backing off while polls fail),
// until ctx is done or Close is called. It returns nil: a service that is
// down is logged and counted, never fatal, and the relay serves the
// versions it has.
func (p *Poller) Run(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.runs.Add(1)
	p.mu.Unlock()
	defer p.runs.Done()
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	// Close cancels the poll in flight too.
	defer context.AfterFunc(p.ctx, stop)()
	fails := 0
	for ctx.Err() == nil {
		if err := p.poll(ctx); err != nil {
			if ctx.Err() != nil {
				break // cancelled, not failed
			}
			fails++
			p.m.failing.Set(float64(fails))
			if fails == 1 {
				p.log.Warn("megaphone poll failed; versions stay as they are and polls back off until it answers", "url", p.cfg.URL, "err", err)
			} else {
				p.log.Debug("megaphone poll failed again", "url", p.cfg.URL, "failures", fails, "err", err)
			}
		} else {
			if fails > 0 {
				p.log.Info("megaphone answers again", "url", p.cfg.URL, "failed_polls", fails)
			}
			fails = 0
			p.m.failing.Set(0)
		}
		if !p.wait(ctx, Backoff(p.cfg.Interval, p.cfg.MaxBackoff, fails)) {
			break
		}
	}
	return nil
}

// Backoff is the wait before the next poll after fails failed polls in a
// row: interval when none failed, doubled for each failure, at most max.
func Backoff(interval, max time.Duration, fails int) time.Duration {
	d := interval
	for i := 0; i < fails && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// Close stops Run, cancelling a poll in flight, and waits for it to
// return. It may be called more than once.
func (p *Poller) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	p.runs.Wait()
	p.client.CloseIdleConnections()
	return nil
}

// poll asks the service once and applies a good answer.
func (p *Poller) poll(ctx context.Context) error {
	versions, result, err := p.fetch(ctx)
	if err == nil {
		var changed map[string]string
		changed, err = p.cfg.Registry.Set(ctx, Source, versions)
		switch {
		case errors.Is(err, broadcast.ErrBad):
			// More ids than the relay serves, with those it has.
			result, err = resultBadAnswer, fmt.Errorf("%w: %w", ErrBadAnswer, err)
		case err != nil:
			result, err = resultStore, fmt.Errorf("megaphone: apply answer: %w", err)
		default:
			p.m.changed.Add(float64(len(changed)))
			p.m.lastSuccess.Set(float64(time.Now().UnixNano()) / 1e9)
			if len(changed) > 0 {
				p.log.Info("broadcast versions changed by megaphone", "changed", len(changed), "ids", len(versions))
			}
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	p.m.polls.With(result).Inc()
	return err
}

// fetch does the GET and decodes the answer.
func (p *Poller) fetch(ctx context.Context) (map[string]string, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.cfg.URL, nil)
	if err != nil {
		return nil, resultUnreachable, fmt.Errorf("megaphone: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	if p.auth != "" {
		req.Header.Set("Authorization", p.auth)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, netResult(err), fmt.Errorf("megaphone: get: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		return nil, resultStatus, fmt.Errorf("megaphone: get: status %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxAnswer+1))
	if err != nil {
		return nil, netResult(err), fmt.Errorf("megaphone: read answer: %w", err)
	}
	if len(body) > MaxAnswer {
		return nil, resultBadAnswer, fmt.Errorf("%w: larger than %d bytes", ErrBadAnswer, MaxAnswer)
	}
	versions, err := Decode(body)
	if err != nil {
		return nil, resultBadAnswer, err
	}
	return versions, resultOK, nil
}

func netResult(err error) string {
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return resultTimeout
	}
	return resultUnreachable
}

// Decode reads a megaphone answer, {"broadcasts": {"<id>": "<version>"}}:
// other top-level keys are ignored, as autopush ignores them; a missing or
// null broadcasts, a value that is not a string, more than broadcast.MaxIDs
// ids or an id or version refused by broadcast.Check is ErrBadAnswer.
func Decode(body []byte) (map[string]string, error) {
	var a struct {
		Broadcasts *map[string]string `json:"broadcasts"`
	}
	if len(body) > MaxAnswer {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrBadAnswer, MaxAnswer)
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadAnswer, err)
	}
	if a.Broadcasts == nil || *a.Broadcasts == nil {
		return nil, fmt.Errorf("%w: no broadcasts object", ErrBadAnswer)
	}
	m := *a.Broadcasts
	if len(m) > broadcast.MaxIDs {
		return nil, fmt.Errorf("%w: %d ids, at most %d", ErrBadAnswer, len(m), broadcast.MaxIDs)
	}
	for id, v := range m {
		if err := broadcast.Check(id, v); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadAnswer, err)
		}
	}
	return m, nil
}
