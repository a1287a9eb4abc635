package upstream

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/store"
)

// Ingester is where notifications from the upstream go: the hub.
type Ingester interface {
	Ingest(ctx context.Context, ms []push.Message) ([]relay.Result, error)
}

// Store is what the link reads and writes of the relay's store
// (relay/store.Store's methods of these names).
type Store interface {
	Channel(u push.UAID, id push.ChannelID) (store.Channel, bool, error)
	Device(u push.UAID) (store.Device, bool, error)
	Unregister(ctx context.Context, u push.UAID, id push.ChannelID) (bool, error)
	DeleteDevice(ctx context.Context, u push.UAID) error

	UpstreamID(u push.UAID) (store.UpstreamID, bool, error)
	AddUpstreamID(ctx context.Context, u, up push.UAID, helloed time.Time) (store.UpstreamID, bool, error)
	DeleteUpstreamID(ctx context.Context, u push.UAID) (bool, error)
	Helloed(ctx context.Context, at time.Time, us ...push.UAID) (int, error)
	HelloedBefore(before time.Time, limit int) ([]store.UpstreamID, error)

	UnregisterLater(ctx context.Context, u push.UAID, id push.ChannelID, up push.UAID) (bool, error)
	PendingUnregisters(afterSeq uint64, limit int) ([]store.PendingUnregister, error)
	UnregisterSent(ctx context.Context, seqs ...uint64) (int, error)
}

var _ Store = (*store.Store)(nil)

// Config configures a Link. Zero values take the defaults in parentheses.
type Config struct {
	// URL is the upstream's WebSocket URL, ws:// or wss://.
	URL string
	// TLS is used for wss:// (nil: the system roots), with a TLS session
	// cache of its own if it has none.
	TLS *tls.Config
	// Store holds the upstream identities and the channels' endpoints:
	// the relay's *store.Store, or on a member of a site the site's
	// store, which writes them through the site's log (relay/site).
	Store Store
	// TTL is the TTL given to every notification from the upstream,
	// whose frames carry none (upstream_ttl, 24h).
	TTL time.Duration
	// RequestTimeout bounds a connect, a hello and a register or
	// unregister upstream, each call of Mint and Abandon in all (5s).
	RequestTimeout time.Duration
	// BackoffMin and BackoffMax bound the jittered exponential backoff
	// between a held session's connects (5s, 10m).
	BackoffMin, BackoffMax time.Duration
	// ReadTimeout drops a held session from which nothing arrived for
	// this long; autopush pings every 300 s (11m).
	ReadTimeout time.Duration
	// MaxSessions bounds the held sessions (upstream_sessions, 10000):
	// devices connected here first, then the most recently active; the
	// others are polled.
	MaxSessions int
	// PollInterval is how often each device that is not held is polled
	// (upstream_poll_interval, 15m), jittered by a tenth.
	PollInterval time.Duration
	// MaxPolls bounds the polls running at once (32).
	MaxPolls int
	// ConnectRate bounds the held sessions' connects per second, all
	// together (100; negative: unbounded), so that thousands of sessions
	// coming back after an outage do not stampede the upstream. A
	// register's own connection is not paced: a device waits for it.
	ConnectRate int
	// MaxSessionAge closes a held session after about this long (jittered
	// by half) and connects again: every identity says hello at least
	// this often; autopush forgets a UAID after 60 days without (7 days).
	MaxSessionAge time.Duration
	// MaxInflight bounds the notifications a held session has read and
	// not yet acked (100); past it the session reads nothing more until
	// a batch is stored and acked.
	MaxInflight int
	// Broadcasts, if set, is the relay's broadcast registry: the link
	// subscribes upstream to its ids and to those devices ask for, and
	// sets the upstream's versions in it (broadcast.go).
	Broadcasts BroadcastRegistry

	Logger  *slog.Logger
	Metrics *metrics.Registry
	// Shared, if set, are the metrics this link counts in, registered
	// before (NewMetrics); Metrics is not used then.
	Shared *Metrics
	Now    func() time.Time
}

func (c *Config) setDefaults() {
	if c.TTL <= 0 {
		c.TTL = 24 * time.Hour
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 5 * time.Second
	}
	if c.BackoffMin <= 0 {
		c.BackoffMin = 5 * time.Second
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = 10 * time.Minute
	}
	if c.BackoffMax < c.BackoffMin {
		c.BackoffMax = c.BackoffMin
	}
	if c.ReadTimeout <= 0 {
		c.ReadTimeout = 11 * time.Minute
	}
	if c.MaxSessions <= 0 {
		c.MaxSessions = 10000
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 15 * time.Minute
	}
	if c.MaxPolls <= 0 {
		// A poll is a few round trips and usually finds nothing: 32 at
		// once pass far more than the connect rate lets start, and
		// bound the goroutines and sockets polls take.
		c.MaxPolls = 32
	}
	if c.ConnectRate == 0 {
		c.ConnectRate = 100
	}
	if c.MaxSessionAge <= 0 {
		c.MaxSessionAge = 7 * 24 * time.Hour
	}
	if c.MaxInflight <= 0 {
		c.MaxInflight = 100
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Link is a relay's link to its upstream: its relay.Endpoints, and the
// held sessions that bring the upstream's notifications in.
type Link struct {
	cfg  Config
	m    *linkMetrics
	pace pacer

	mu       sync.Mutex
	sessions map[push.UAID]*held // by device UAID
	devs     map[push.UAID]*dev  // every identity, while Run runs
	queue    pollQueue           // the polled devices not being polled, by due time
	polling  int                 // polls running
	pollKick chan struct{}       // wakes the poll scheduler
	lastLag  time.Duration       // the latest poll's lag behind its due time
	// resetAt holds the devices reset in the last resetHold (reset.go).
	resetAt map[push.UAID]time.Time
	in      Ingester
	ctx     context.Context // Run's, nil until Run
	stopped bool            // Run is waiting for its goroutines: start none
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	// poller watches the held sessions' idle connections, from Run
	// (Linux; nil elsewhere: each has a goroutine blocked in its read).
	poller *pushclient.Poller

	// unregKick wakes the unregister sender.
	unregKick chan struct{}
	// bc is the broadcast connection; nil without Config.Broadcasts.
	bc *bcast
}

// New makes a Link; Run starts its held sessions.
func New(cfg Config) (*Link, error) {
	if !strings.HasPrefix(cfg.URL, "ws://") && !strings.HasPrefix(cfg.URL, "wss://") {
		return nil, fmt.Errorf("upstream: URL %q is not ws:// or wss://", cfg.URL)
	}
	if cfg.Store == nil {
		return nil, errors.New("upstream: Store is required")
	}
	cfg.setDefaults()
	if strings.HasPrefix(cfg.URL, "wss://") {
		// Sessions and polls connect again and again: resuming the TLS
		// session skips the certificate exchange and its checks.
		t := &tls.Config{}
		if cfg.TLS != nil {
			t = cfg.TLS.Clone()
		}
		if t.ClientSessionCache == nil {
			t.ClientSessionCache = tls.NewLRUClientSessionCache(0)
		}
		if t.ServerName == "" {
			// Named here, every connection shares this config
			// instead of a copy naming the server.
			if u, err := url.Parse(cfg.URL); err == nil {
				t.ServerName = u.Hostname()
			}
		}
		cfg.TLS = t
	}
	var m *linkMetrics
	if cfg.Shared != nil {
		m = cfg.Shared.m
	} else {
		m = newLinkMetrics(metrics.OrNew(cfg.Metrics))
	}
	l := &Link{cfg: cfg, m: m, sessions: map[push.UAID]*held{},
		devs: map[push.UAID]*dev{}, resetAt: map[push.UAID]time.Time{}, pollKick: make(chan struct{}, 1), unregKick: make(chan struct{}, 1)}
	if cfg.ConnectRate > 0 {
		l.pace.every = time.Second / time.Duration(cfg.ConnectRate)
	}
	if cfg.Broadcasts != nil {
		l.bc = newBcast(l, cfg.Broadcasts)
	}
	return l, nil
}

// Broadcasts is what the hub serves broadcasts from (relay.Broadcasts):
// the registry's versions, and the ids devices ask for that it does not
// hold asked upstream (relay.BroadcastWanter). Nil without
// Config.Broadcasts.
func (l *Link) Broadcasts() relay.Broadcasts {
	if l.bc == nil {
		return nil
	}
	return l.bc
}

// Sessions reports how many device identities have a held session, and
// how many of those are connected now.
func (l *Link) Sessions() (n, open int) {
	l.mu.Lock()
	hs := make([]*held, 0, len(l.sessions))
	for _, h := range l.sessions {
		hs = append(hs, h)
	}
	l.mu.Unlock()
	for _, h := range hs {
		h.mu.Lock()
		if h.c != nil {
			open++
		}
		h.mu.Unlock()
	}
	return len(hs), open
}

// URL is the upstream's URL.
func (l *Link) URL() string { return l.cfg.URL }

// KeepEndpoints makes the hub store the upstream's endpoint with each
// channel (relay.EndpointKeeper).
func (l *Link) KeepEndpoints() bool { return true }

// Run holds a session for every device with an upstream identity (and
// every one Mint makes meanwhile), delivering their notifications to in,
// until ctx ends; then it closes them and returns when they are gone.
func (l *Link) Run(ctx context.Context, in Ingester) error {
	l.mu.Lock()
	if l.ctx != nil || l.stopped {
		l.mu.Unlock()
		return ErrClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	l.ctx, l.in, l.cancel = ctx, in, cancel
	if p, err := pushclient.NewPoller(); err == nil {
		l.poller = p
		l.wg.Go(func() {
			if err := p.Run(ctx); err != nil {
				l.cfg.Logger.Error("upstream poller failed", "err", err)
			}
		})
	}
	l.mu.Unlock()
	// Identities Mint makes from here on are added by Mint; those read
	// here may include some of them (add skips a known one).
	ids, err := l.identities()
	if err != nil {
		l.mu.Lock()
		l.stopped = true
		l.mu.Unlock()
		cancel() // the poller
		l.wg.Wait()
		return fmt.Errorf("upstream: read identities: %w", err)
	}
	for _, id := range ids {
		l.add(id.UpstreamID, id.active, false)
	}
	l.wg.Go(func() { l.sendUnregisters(ctx) })
	l.wg.Go(func() { l.schedulePolls(ctx) })
	if l.bc != nil {
		l.wg.Go(func() { l.bc.run(ctx) })
	}
	<-ctx.Done()
	l.mu.Lock()
	l.stopped = true
	hs := make([]*held, 0, len(l.sessions))
	for _, h := range l.sessions {
		hs = append(hs, h)
	}
	l.mu.Unlock()
	// Their contexts ended with ctx; this closes their connections.
	for _, h := range hs {
		h.abort()
	}
	l.wg.Wait()
	return nil
}

// ErrClosed is returned by Run on a link that ran or was closed.
var ErrClosed = errors.New("upstream: link closed")

// Close stops Run, as its context ending would, and waits for the held
// sessions to end. It is idempotent; a link closed before Run never runs.
func (l *Link) Close() error {
	l.mu.Lock()
	l.stopped = true
	cancel := l.cancel
	l.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	l.wg.Wait()
	return nil
}

func (l *Link) session(u push.UAID) *held {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sessions[u]
}

// Mint registers r's channel upstream and returns the upstream's endpoint
// (relay.Endpoints). A device without an upstream identity gets one first.
// A channel already stored here is answered with its stored endpoint,
// without the upstream.
func (l *Link) Mint(ctx context.Context, r relay.Registration) (string, error) {
	if r.SimplePush {
		l.m.registers.With("refused").Inc()
		return "", errors.New("upstream: SimplePush channels are not relayed")
	}
	if l.wasReset(r.UAID) {
		l.m.registers.With("refused").Inc()
		return "", errDeviceReset
	}
	if c, ok, err := l.cfg.Store.Channel(r.UAID, r.Channel); err != nil {
		return "", fmt.Errorf("upstream: read channel: %w", err)
	} else if ok && c.Endpoint != "" {
		return c.Endpoint, nil
	}
	ctx, cancel := context.WithTimeout(ctx, l.cfg.RequestTimeout)
	defer cancel()
	id, ok, err := l.cfg.Store.UpstreamID(r.UAID)
	if err != nil {
		return "", fmt.Errorf("upstream: read identity: %w", err)
	}
	reg := registerFrame(r)
	var f pushproto.ServerFrame
	if ok {
		f, err = l.request(ctx, id, pushproto.TypeRegister, r.Channel.String(), reg)
	} else {
		f, id, err = l.firstRegister(ctx, r, reg)
	}
	if err != nil {
		l.m.registers.With("error").Inc()
		return "", err
	}
	if f.Status != 200 || f.PushEndpoint == "" || len(f.PushEndpoint) > store.MaxEndpointLen {
		l.m.registers.With("refused").Inc()
		return "", fmt.Errorf("upstream: register answered status %d, endpoint of %d bytes", f.Status, len(f.PushEndpoint))
	}
	l.m.registers.With("ok").Inc()
	// The device is connected here: it registers.
	l.add(id, l.cfg.Now(), true)
	return f.PushEndpoint, nil
}

// firstRegister makes r's device an upstream identity: hello without a
// UAID, register (autopush keeps a new UAID only from its first
// register), then store the mapping.
func (l *Link) firstRegister(ctx context.Context, r relay.Registration, reg []byte) (pushproto.ServerFrame, store.UpstreamID, error) {
	var f pushproto.ServerFrame
	var up push.UAID
	err := l.oneShot(ctx, "", func(c *pushclient.Client) error {
		var err error
		if up, err = push.ParseUAID(c.UAID); err != nil {
			return fmt.Errorf("upstream UAID: %w", err)
		}
		if err := c.Send(reg); err != nil {
			return err
		}
		f, err = c.Expect(pushproto.TypeRegister)
		return err
	})
	if err != nil || f.Status != 200 {
		return f, store.UpstreamID{}, err
	}
	id, _, err := l.cfg.Store.AddUpstreamID(ctx, r.UAID, up, l.cfg.Now())
	if err != nil {
		// The upstream keeps an identity no device stands for; it
		// forgets it after 60 days without a hello.
		return f, id, fmt.Errorf("upstream: store identity: %w", err)
	}
	if id.Upstream != up {
		return f, id, errors.New("upstream: the device got another upstream identity meanwhile")
	}
	if l.wasReset(r.UAID) {
		// The device was reset while this register was upstream: the
		// identity must not outlive it.
		if _, err := l.cfg.Store.DeleteUpstreamID(ctx, r.UAID); err != nil {
			l.cfg.Logger.Warn("identity of a reset device not removed", "uaid", r.UAID, "err", err)
		}
		return f, id, errDeviceReset
	}
	return f, id, nil
}

// request sends a register or unregister for id's device and returns the
// reply: over its held session (waiting for it to open, within ctx) when
// it has one, else over a connection of its own.
func (l *Link) request(ctx context.Context, id store.UpstreamID, t pushproto.MessageType, chid string, frame []byte) (pushproto.ServerFrame, error) {
	if h := l.session(id.Device); h != nil {
		if h.waitOpen(ctx) {
			if f, ok, err := h.request(ctx, t, chid, frame); ok || err != nil {
				return f, err
			}
		} else if ctx.Err() != nil {
			return pushproto.ServerFrame{}, fmt.Errorf("upstream: the device's held session did not open: %w", ctx.Err())
		}
	}
	var f pushproto.ServerFrame
	err := l.oneShot(ctx, id.Upstream.String(), func(c *pushclient.Client) error {
		if c.UAID != id.Upstream.String() {
			return &resetError{got: c.UAID, was: id.Upstream}
		}
		if err := c.Send(frame); err != nil {
			return err
		}
		var err error
		f, err = c.Expect(t)
		return err
	})
	if errors.Is(err, errReset) {
		// The upstream forgot the device: reset it here too.
		if rerr := l.reset(ctx, id, resetUAID(err), "request"); rerr != nil {
			l.cfg.Logger.Error("upstream forgot the device's UAID; reset failed", "uaid", id.Device, "err", rerr)
		}
	}
	return f, err
}

// oneShot connects, says hello with uaid, runs do and closes, all within
// ctx.
func (l *Link) oneShot(ctx context.Context, uaid string, do func(*pushclient.Client) error) error {
	c, _, err := l.hello(ctx, uaid, pushclient.HelloOptions{})
	if err != nil {
		return fmt.Errorf("upstream: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { c.Abort() })
	defer func() {
		stop()
		c.Close()
	}()
	if err := do(c); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		return fmt.Errorf("upstream: %w", err)
	}
	return nil
}

// hello connects and says hello with uaid (empty: a new client) and
// o, both within RequestTimeout of ctx. On an error nothing is left open.
func (l *Link) hello(ctx context.Context, uaid string, o pushclient.HelloOptions) (*pushclient.Client, pushproto.ServerFrame, error) {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.RequestTimeout)
	defer cancel()
	c, err := l.dial(ctx)
	if err != nil {
		return nil, pushproto.ServerFrame{}, err
	}
	stop := context.AfterFunc(ctx, func() { c.Abort() })
	f, err := c.Hello(uaid, o)
	stop()
	if err != nil {
		c.Abort()
		return nil, f, fmt.Errorf("hello: %w", err)
	}
	return c, f, nil
}

func (l *Link) dial(ctx context.Context) (*pushclient.Client, error) {
	c, err := pushclient.DialWith(ctx, l.cfg.URL, pushclient.DialOptions{TLS: l.cfg.TLS})
	if err != nil {
		return nil, fmt.Errorf("upstream: connect: %w", err)
	}
	c.Timeout = l.cfg.RequestTimeout
	if d, ok := ctx.Deadline(); ok {
		c.Timeout = time.Until(d)
	}
	return c, nil
}

// Abandon unregisters r's channel upstream, unless the channel is stored
// here (a register the store refused as a conflict must not undo the
// channel it has). A failure is logged.
func (l *Link) Abandon(ctx context.Context, r relay.Registration) {
	if _, ok, err := l.cfg.Store.Channel(r.UAID, r.Channel); err != nil || ok {
		return
	}
	id, ok, err := l.cfg.Store.UpstreamID(r.UAID)
	if err != nil || !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, l.cfg.RequestTimeout)
	defer cancel()
	chid := r.Channel.String()
	frame, _ := json.Marshal(map[string]any{"messageType": "unregister", "channelID": chid, "code": 200})
	if _, err := l.request(ctx, id, pushproto.TypeUnregister, chid, frame); err != nil {
		l.cfg.Logger.Warn("abandoned channel not unregistered upstream", "uaid", r.UAID, "channel", chid, "err", err)
	}
}

func registerFrame(r relay.Registration) []byte {
	m := map[string]any{"messageType": "register", "channelID": r.Channel.String()}
	if len(r.Key) > 0 {
		m["key"] = base64.RawURLEncoding.EncodeToString(r.Key)
	}
	b, _ := json.Marshal(m)
	return b
}

// jitter returns a duration in [d/2, d].
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}
