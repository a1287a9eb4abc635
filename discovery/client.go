package discovery

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// BindOptions tunes Bind. Zero values take the defaults in parentheses.
type BindOptions struct {
	Tries int           // requests sent before giving up (3)
	Wait  time.Duration // wait for the first answer; each retry waits twice as long (1s)
	// Other, if set, gets each datagram that is not STUN and arrives while
	// Bind waits (a wake datagram on a wake socket); it must not keep b.
	Other func(b []byte)
}

// ErrNoAnswer: Bind got no authenticated answer.
var ErrNoAnswer = errors.New("discovery: no authenticated stun answer")

// Bind is the device's side of the exchange: it sends authenticated
// Binding requests for username from conn (the wake socket) to server and
// returns the address the server observed, once an answer verifies under
// password. conn's read deadline is cleared when it returns.
func Bind(conn *net.UDPConn, server *net.UDPAddr, username, password string, o BindOptions) (netip.AddrPort, error) {
	if o.Tries <= 0 {
		o.Tries = 3
	}
	if o.Wait <= 0 {
		o.Wait = time.Second
	}
	defer conn.SetReadDeadline(time.Time{})
	buf := make([]byte, 1500)
	wait := o.Wait
	for range o.Tries {
		req, txID, err := NewBindingRequest(username, password, time.Now())
		if err != nil {
			return netip.AddrPort{}, err
		}
		if _, err := conn.WriteToUDP(req, server); err != nil {
			return netip.AddrPort{}, fmt.Errorf("stun bind: %w", err)
		}
		conn.SetReadDeadline(time.Now().Add(wait))
		wait *= 2
		for {
			n, err := conn.Read(buf)
			if err != nil {
				break // timed out: send again
			}
			if !IsSTUN(buf[:n]) {
				if o.Other != nil {
					o.Other(buf[:n])
				}
				continue
			}
			if ap, err := ParseBindingResponse(buf[:n], txID, password); err == nil {
				return ap, nil
			}
			// An answer to an earlier request, or not ours: keep waiting.
		}
	}
	return netip.AddrPort{}, fmt.Errorf("%w after %d requests to %s", ErrNoAnswer, o.Tries, server)
}
