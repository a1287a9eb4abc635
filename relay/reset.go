package relay

import (
	"context"

	"github.com/pushrelay/pushrelay/relay/push"
)

// resetPage is how many of a reset device's messages ResetDevice counts
// per store read.
const resetPage = 1000

// ResetDevice forgets device u here, as its upstream forgot it (an
// upstream that answers the device's upstream hello with another UAID):
// its record, channels, stored messages and upstream identity go in one
// commit (store.DeleteDevice), the messages counted as dropped
// (pushrelay_messages_dropped_total{reason="upstream_reset"}), and its
// session, if one is open, is closed with 1000 "UAID reset". Its next
// hello with the old UAID is answered with a new UAID, as for any unknown
// UAID, and a device that gets a new UAID drops its subscriptions and
// registers again (Firefox fires pushsubscriptionchange). Config.Forgot
// hears of it (a relay link's parent tells the child serving the device).
// It returns how many stored messages were dropped.
func (h *Hub) ResetDevice(ctx context.Context, u push.UAID) (int, error) {
	n := 0
	for after := uint64(0); ; {
		ms, err := h.cfg.Store.Messages(u, after, resetPage)
		if err != nil {
			return 0, wrapStore("read messages", err)
		}
		n += len(ms)
		if len(ms) < resetPage {
			break
		}
		after = ms[len(ms)-1].Seq
	}
	cs, err := h.cfg.Store.Channels(u)
	if err != nil {
		return 0, wrapStore("read channels", err)
	}
	// Deleted before the close: a hello that follows the close finds no
	// device and gets a new UAID.
	if err := h.cfg.Store.DeleteDevice(ctx, u); err != nil {
		return 0, wrapStore("delete device", err)
	}
	if h.cfg.Forgot != nil {
		ids := make([]push.ChannelID, len(cs))
		for i, c := range cs {
			ids[i] = c.ID
		}
		h.cfg.Forgot(u, ids)
	}
	if n > 0 {
		h.m.dropped.With("upstream_reset").Add(float64(n))
	}
	h.CloseReset(u)
	return n, nil
}
