package relay_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushproto"
)

// upstreamEndpoints stands where an upstream's Endpoints will: it answers
// with a fixed upstream-like URL per channel, or fails, and records what
// it was asked.
type upstreamEndpoints struct {
	mu        sync.Mutex
	fail      error
	minted    []relay.Registration
	abandoned []relay.Registration
}

func (e *upstreamEndpoints) Mint(_ context.Context, r relay.Registration) (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.fail != nil {
		return "", e.fail
	}
	e.minted = append(e.minted, r)
	return "https://updates.push.example.com/wpush/v2/upstream-" + r.Channel.String(), nil
}

func (e *upstreamEndpoints) Abandon(_ context.Context, r relay.Registration) {
	e.mu.Lock()
	e.abandoned = append(e.abandoned, r)
	e.mu.Unlock()
}

// The hub answers a register with the endpoint its Endpoints mints,
// unchanged, and never mints one itself. Minting comes before the store:
// a failed mint is answered 500 and stores nothing; a channel the store
// then refuses (here 409, the same channel with another key) is answered
// without an endpoint and abandoned.
func TestRegisterMintsThroughEndpoints(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		eps := &upstreamEndpoints{}
		h := newHarness(t, func(c *relay.Config) {
			c.Endpoints = eps
			c.CheckKey = func(k string) ([]byte, error) { return []byte(k), nil }
		})
		d := h.hello("")
		ch := newChannelID()
		r := d.register(ch, "key-a")
		if r.Status != 200 || r.PushEndpoint != "https://updates.push.example.com/wpush/v2/upstream-"+ch {
			t.Fatalf("register: %+v", r)
		}
		eps.mu.Lock()
		if len(eps.minted) != 1 || eps.minted[0].Channel.String() != ch || eps.minted[0].UAID.String() != d.uaid ||
			string(eps.minted[0].Key) != "key-a" || eps.minted[0].SimplePush {
			t.Errorf("minted %+v", eps.minted)
		}
		eps.mu.Unlock()

		// The same channel with another key: minted, refused by the store
		// (409), abandoned.
		if r := d.register(ch, "key-b"); r.Status != 409 || r.PushEndpoint != "" {
			t.Fatalf("conflicting register: %+v", r)
		}
		eps.mu.Lock()
		if len(eps.abandoned) != 1 || eps.abandoned[0].Channel.String() != ch || string(eps.abandoned[0].Key) != "key-b" {
			t.Errorf("abandoned %+v", eps.abandoned)
		}
		eps.fail = errors.New("upstream unreachable")
		eps.mu.Unlock()

		// A failed mint: 500, nothing stored.
		ch2 := newChannelID()
		if r := d.register(ch2, ""); r.Status != 500 || r.PushEndpoint != "" {
			t.Fatalf("register with a failing mint: %+v", r)
		}
		u, _ := push.ParseUAID(d.uaid)
		id, _ := push.ParseChannelID(ch2)
		if _, ok, err := h.st.Channel(u, id); ok || err != nil {
			t.Errorf("failed register stored its channel: %v %v", ok, err)
		}
		if r := d.register(newChannelID(), ""); r.Status != 500 {
			t.Fatalf("second register with a failing mint: %+v", r)
		}
		d.expectNone(time.Second) // and the session goes on
	})
}

// keepingEndpoints is upstreamEndpoints whose endpoints the hub must store.
type keepingEndpoints struct{ upstreamEndpoints }

func (*keepingEndpoints) KeepEndpoints() bool { return true }

// An Endpoints that is an EndpointKeeper has its endpoint stored with the
// channel; the standalone kind does not.
func TestRegisterKeepsEndpoint(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		for _, keep := range []bool{false, true} {
			var eps relay.Endpoints = &upstreamEndpoints{}
			if keep {
				eps = &keepingEndpoints{}
			}
			h := newHarness(t, func(c *relay.Config) { c.Endpoints = eps })
			d := h.hello("")
			ch := newChannelID()
			r := d.register(ch, "")
			if r.Status != 200 {
				t.Fatalf("register: %+v", r)
			}
			u, _ := push.ParseUAID(d.uaid)
			id, _ := push.ParseChannelID(ch)
			c, ok, err := h.st.Channel(u, id)
			if !ok || err != nil {
				t.Fatalf("channel not stored: %v %v", ok, err)
			}
			want := ""
			if keep {
				want = r.PushEndpoint
			}
			if c.Endpoint != want {
				t.Errorf("keep=%v: stored endpoint %q, want %q", keep, c.Endpoint, want)
			}
		}
	})
}

// unregisteringEndpoints records unregisters and removes the channel, as
// an upstream's Endpoints does (durably, before it returns).
type unregisteringEndpoints struct {
	upstreamEndpoints
	st interface {
		Unregister(context.Context, push.UAID, push.ChannelID) (bool, error)
	}
	unregistered []push.ChannelID
	fail         error
}

func (e *unregisteringEndpoints) Unregister(ctx context.Context, u push.UAID, ch push.ChannelID) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.fail != nil {
		return e.fail
	}
	e.unregistered = append(e.unregistered, ch)
	_, err := e.st.Unregister(ctx, u, ch)
	return err
}

// An Endpoints that is an Unregisterer takes the device's unregisters; its
// failure is answered 500.
func TestUnregisterThroughEndpoints(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		eps := &unregisteringEndpoints{}
		h := newHarness(t, func(c *relay.Config) { c.Endpoints = eps })
		eps.st = h.st
		d := h.hello("")
		ch := newChannelID()
		if r := d.register(ch, ""); r.Status != 200 {
			t.Fatalf("register: %+v", r)
		}
		if r := unregister(d, ch); r.Status != 200 {
			t.Fatalf("unregister: %+v", r)
		}
		eps.mu.Lock()
		if len(eps.unregistered) != 1 || eps.unregistered[0].String() != ch {
			t.Errorf("unregistered %v", eps.unregistered)
		}
		eps.fail = errors.New("store failed")
		eps.mu.Unlock()
		u, _ := push.ParseUAID(d.uaid)
		id, _ := push.ParseChannelID(ch)
		if _, ok, err := h.st.Channel(u, id); ok || err != nil {
			t.Errorf("channel still stored: %v %v", ok, err)
		}
		if r := unregister(d, newChannelID()); r.Status != 500 {
			t.Fatalf("failed unregister answered %+v", r)
		}
	})
}

func unregister(d *device, ch string) pushproto.ServerFrame {
	d.t.Helper()
	d.send(map[string]any{"messageType": "unregister", "channelID": ch})
	return d.expect(pushproto.TypeUnregister)
}
