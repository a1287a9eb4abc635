package link

import (
	"context"

	"github.com/pushrelay/pushrelay/relay/linkproto"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/store"
)

// Forgetting a device down the chain. When this relay forgets a device a
// child serves (relay.Hub.ResetDevice: its upstream reset the UAID, so
// its channels and endpoints are gone up the chain), the store moves the
// UAID's link_children row to link_forgets in the same commit, and the
// child is sent FORGET until it answers FORGOTTEN: at once if connected,
// else at its next connect. The child forgets the device too (its session
// is closed, its next hello gets a new UAID, and its browser subscribes
// again), and a child that is itself a parent passes it down. Without
// it, a device behind a child would keep channels whose endpoints the top
// of the chain no longer knows, and the next resync would register them
// again under new endpoints no app server has.

// forgetBatch bounds the FORGETs read and sent per round.
const forgetBatch = 256

// Forgot hears of a device this relay forgot (relay.Config.Forgot), with
// the channels it had: if a child served it, the child's digest loses
// them and the child is told.
func (p *Parent) Forgot(u push.UAID, chans []push.ChannelID) {
	p.mu.Lock()
	i, ok := p.serves[u]
	if !ok {
		p.mu.Unlock()
		return
	}
	for _, ch := range chans {
		p.digests[i].Remove(u, ch)
	}
	delete(p.serves, u)
	n := len(p.serves)
	pc := p.conns[i]
	p.mu.Unlock()
	p.m.uaids.Set(float64(n))
	if pc != nil {
		kick(pc.forgetKick)
	}
}

// Serves reports whether a child serves device u
// (relay.Config.ServedElsewhere).
func (p *Parent) Serves(u push.UAID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.serves[u]
	return ok
}

// withForgets is d, a child's digest as this relay holds it, with the
// pairs of the devices fs it forgot and has not yet told the child of.
func withForgets(d linkproto.Digest, fs []store.LinkForget) linkproto.Digest {
	for _, f := range fs {
		for _, ch := range f.Channels {
			d.Add(f.UAID, ch)
		}
	}
	return d
}

// sendForgets sends the child the FORGETs kept for it, at the connect and
// whenever another comes, until ctx ends or the connection does. Each is
// sent once per connection; an answer that is not OK leaves the row for
// the next connect.
func (pc *parentConn) sendForgets(ctx context.Context) {
	p := pc.p
	sent := map[push.UAID]bool{}
	for {
		us, err := p.cfg.Store.LinkForgets(pc.name, forgetBatch+len(sent))
		if err != nil {
			p.cfg.Logger.Error("forgotten devices not read", "child", pc.name, "err", err)
		}
		for _, fg := range us {
			u := fg.UAID
			if sent[u] {
				continue
			}
			pc.fmu.Lock()
			pc.forgetID++
			id := pc.forgetID
			pc.forgetting[id] = u
			pc.fmu.Unlock()
			if err := pc.ctl.send(&linkproto.Forget{ID: id, UAID: u}); err != nil {
				return
			}
			sent[u] = true
			p.m.forgets.With("sent").Inc()
		}
		select {
		case <-ctx.Done():
			return
		case <-pc.conn.Done():
			return
		case <-pc.forgetKick:
		}
	}
}

// forgotten handles the child's FORGOTTEN: the row goes.
func (pc *parentConn) forgotten(ctx context.Context, f *linkproto.Forgotten) {
	p := pc.p
	pc.fmu.Lock()
	u, ok := pc.forgetting[f.ID]
	delete(pc.forgetting, f.ID)
	pc.fmu.Unlock()
	if !ok {
		return
	}
	if f.Status != linkproto.StatusOK {
		p.m.forgets.With("refused").Inc()
		p.cfg.Logger.Warn("child did not forget a device; told again at its next connect", "child", pc.name, "uaid", u, "status", uint64(f.Status))
		return
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.RequestTimeout)
	defer cancel()
	if err := p.cfg.Store.LinkForgotten(ctx, u, pc.name); err != nil {
		p.m.forgets.With("error").Inc()
		p.cfg.Logger.Error("child's answer to a forget not recorded; told again at its next connect", "child", pc.name, "uaid", u, "err", err)
		return
	}
	p.m.forgets.With("answered").Inc()
}

// Resetter forgets a device on the child when the parent did: the hub
// (relay.Hub.ResetDevice), which closes its session and tells the
// child's own children. Run uses the Ingester it is given when that is
// also a Resetter; otherwise the device only leaves the store.
type Resetter interface {
	ResetDevice(ctx context.Context, u push.UAID) (dropped int, err error)
}

// forget handles the parent's FORGET on the child and answers it.
func (c *Child) forget(ctx context.Context, cc *childConn, in Ingester, f *linkproto.Forget) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	st := linkproto.StatusOK
	result := "forgotten"
	_, known, err := c.cfg.Store.Device(f.UAID)
	switch {
	case err != nil:
	case !known:
		result = "unknown"
	default:
		dropped := 0
		if r, ok := in.(Resetter); ok {
			dropped, err = r.ResetDevice(ctx, f.UAID)
		} else {
			err = c.cfg.Store.DeleteDevice(ctx, f.UAID)
		}
		if err == nil {
			c.cfg.Logger.Warn("the parent forgot a device (its upstream reset the UAID): device reset, it gets a new UAID at its next hello",
				"uaid", f.UAID, "messages_dropped", dropped)
		}
	}
	if err != nil {
		st, result = linkproto.StatusError, "error"
		c.cfg.Logger.Error("device the parent forgot not forgotten here", "uaid", f.UAID, "err", err)
	}
	c.m.forgets.With(result).Inc()
	cc.ctl.send(&linkproto.Forgotten{ID: f.ID, Status: st})
}
