// Package discovery is the relay's STUN service: it learns the UDP wake
// address of devices of our own and gives the kick path a socket to wake them
// from.
//
// A device that sleeps is woken by a datagram to its wake socket. To prove
// which address that is, the device sends RFC 8489 Binding requests from the
// wake socket, authenticated with the short-term credential mechanism:
//
//	USERNAME          the device's UAID (32 lower-case hex characters)
//	PUSHRELAY-TIME    0xC0DE, comprehension-optional: 8-byte big-endian Unix
//	                  time in milliseconds when the request was made
//	MESSAGE-INTEGRITY HMAC-SHA1 keyed with the wake key string's bytes, as the
//	                  hello reply sent it (no SASLprep, no hashing)
//	FINGERPRINT       last
//
// The server records the source address it observed (never one the device
// claims) through a Registry and answers with XOR-MAPPED-ADDRESS,
// MESSAGE-INTEGRITY and FINGERPRINT. Requests that fail any check are dropped
// without an answer and counted in pushrelay_stun_requests_total by result.
// Unauthenticated Binding requests are answered only when the answer is no
// larger than the request, so the server can't be used as an amplifier.
// Every datagram first spends a token of its source's bucket (per IPv4
// address, per IPv6 /64).
//
// The kick path sends wake datagrams through [Server.WriteTo], from the STUN
// socket itself: a NAT keeps one mapping per 5-tuple, and the one the device
// opened with its Binding requests is the one a wake datagram can come back
// through.
//
// This package is the only one that imports github.com/pion/stun; the rest of
// the relay sees the types below.
package discovery

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"time"

	"github.com/pushrelay/pushrelay/relay/metrics"
)

// Registry is what the STUN server needs from the wake subsystem (implemented
// elsewhere, in kick/). The server calls it from one goroutine, and the
// Wait of a Pending that Bind returned from others.
type Registry interface {
	// Key returns the STUN password for the device named by USERNAME, or
	// an error wrapping ErrUnknownUser.
	Key(username string) ([]byte, error)
	// Bind records that the device was observed at addr by an
	// authenticated request stamped at stamp. It returns an error wrapping
	// ErrReplay when stamp is not newer than the last one it accepted for
	// the device (or the address may not move yet), ErrUnknownUser, or a
	// storage error. It may return a *Pending when recording needs a slow
	// write: the server then answers once the write is done.
	Bind(username string, addr netip.AddrPort, stamp time.Time) error
}

// Pending is what Registry.Bind returns when the binding must be written
// before it is answered (a device that moved): Wait does the write and
// returns what Bind would have. The server calls Wait on another goroutine
// (at most MaxPending at once, then it waits for one to finish), so the
// requests of other devices are not held up behind a commit, and
// concurrent writes can share one.
type Pending struct {
	Wait func() error
}

func (p *Pending) Error() string { return "discovery: binding pending" }

var (
	// ErrUnknownUser is wrapped by Registry errors for a USERNAME that
	// names no device.
	ErrUnknownUser = errors.New("discovery: unknown stun user")
	// ErrReplay is wrapped by Registry.Bind errors for a request whose stamp
	// is not newer than the last one accepted for the device.
	ErrReplay = errors.New("discovery: stun request replayed")
)

// Defaults for the zero values of Config.
const (
	defaultListen  = ":3478"
	defaultRate    = 20
	defaultBurst   = 40
	defaultMaxSkew = 30 * time.Second
	defaultPending = 256
)

// Config configures a Server. Zero values mean the defaults given per field;
// only Registry is required.
type Config struct {
	// Listen is the UDP address to bind, e.g. ":3478" or "127.0.0.1:0".
	// Empty means ":3478".
	Listen string
	// Registry looks up keys and records observed addresses.
	Registry Registry
	// Rate is the requests per second each source may send (default 20).
	// A source is an IPv4 address or an IPv6 /64.
	Rate float64
	// Burst is how many requests a source may send at once (default 40).
	Burst int
	// MaxSkew is how far PUSHRELAY-TIME may be from now (default 30s).
	MaxSkew time.Duration
	// MaxPending bounds the bindings being written at once, each with
	// its answer waiting (default 256).
	MaxPending int
	// Metrics receives the pushrelay_stun_* metrics; nil means a private
	// registry.
	Metrics *metrics.Registry
	// Logger receives warnings and, at Debug, rate-limited per-packet drop
	// reasons; nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Validate reports a configuration Listen would refuse.
func (c Config) Validate() error {
	switch {
	case c.Registry == nil:
		return errors.New("discovery: config: no registry")
	case !(c.Rate >= 0) || math.IsInf(c.Rate, 0): // also NaN
		return fmt.Errorf("discovery: config: rate %v is not a finite non-negative number", c.Rate)
	case c.Burst < 0:
		return fmt.Errorf("discovery: config: negative burst %d", c.Burst)
	case c.MaxSkew < 0:
		return fmt.Errorf("discovery: config: negative max skew %v", c.MaxSkew)
	case c.MaxPending < 0:
		return fmt.Errorf("discovery: config: negative max pending %d", c.MaxPending)
	}
	return nil
}

// withDefaults returns c with its zero values filled in.
func (c Config) withDefaults() Config {
	if c.Listen == "" {
		c.Listen = defaultListen
	}
	if c.Rate == 0 {
		c.Rate = defaultRate
	}
	if c.Burst == 0 {
		c.Burst = defaultBurst
	}
	if c.MaxSkew == 0 {
		c.MaxSkew = defaultMaxSkew
	}
	if c.MaxPending == 0 {
		c.MaxPending = defaultPending
	}
	c.Metrics = metrics.OrNew(c.Metrics)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}
