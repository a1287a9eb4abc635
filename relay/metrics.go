package relay

import (
	"strconv"

	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/pushproto"
)

type hubMetrics struct {
	connections metrics.Gauge
	accepted    metrics.Counter
	hellos      *metrics.CounterVec // result: new, resumed, elsewhere
	frames      *metrics.CounterVec // messageType
	closes      *metrics.CounterVec // code
	registers   *metrics.CounterVec // status
	unregisters metrics.Counter
	pushed      *metrics.CounterVec // result: stored, direct, duplicate
	dropped     *metrics.CounterVec // reason
	delivered   metrics.Counter
	acked       *metrics.CounterVec // code
	nacks       metrics.Counter
	pings       metrics.Counter
	slow        *metrics.CounterVec // reason: timeout, error, outbox_full
	outbox      metrics.Gauge       // bytes queued for device sockets, all sessions

	// Children of the label values every message counts, resolved once.
	pushedStored, duplicates, ackedOK, framesAck metrics.Counter
}

func newHubMetrics(r *metrics.Registry) *hubMetrics {
	m := &hubMetrics{
		connections: r.Gauge("pushrelay_device_connections", "Device WebSocket sessions open now."),
		accepted:    r.Counter("pushrelay_device_connections_total", "Device connections accepted."),
		hellos:      r.CounterVec("pushrelay_device_hellos_total", "Completed hellos by result (new UAID, resumed, or elsewhere: the UAID of a child relay's device, answered with a new one).", "result"),
		frames:      r.CounterVec("pushrelay_device_frames_total", "Frames received from devices by messageType.", "type"),
		closes:      r.CounterVec("pushrelay_device_closes_total", "Device sessions closed by the relay, by WebSocket close code.", "code"),
		registers:   r.CounterVec("pushrelay_device_registers_total", "Register requests by reply status.", "status"),
		unregisters: r.Counter("pushrelay_device_unregisters_total", "Channels unregistered by devices."),
		pushed:      r.CounterVec("pushrelay_messages_in_total", "Messages ingested (stored; direct for TTL 0; duplicate: its origin key was ingested before, not stored again).", "result"),
		dropped:     r.CounterVec("pushrelay_messages_dropped_total", "Messages dropped by the hub, by reason.", "reason"),
		delivered:   r.Counter("pushrelay_messages_delivered_total", "Notifications written to device sockets."),
		acked:       r.CounterVec("pushrelay_messages_acked_total", "Acks received from devices by ack code.", "code"),
		nacks:       r.Counter("pushrelay_device_nacks_total", "Nacks received from devices."),
		pings:       r.Counter("pushrelay_device_pings_total", "WebPush {} pings answered."),
		outbox:      r.Gauge("pushrelay_device_outbox_bytes", "Bytes of frames queued for device sockets and not yet written, over all sessions (each is bounded by outbox_bytes plus 16 KiB of replies)."),
		slow:        r.CounterVec("pushrelay_device_write_failures_total", "Device sessions ended because the relay could not write to them: timeout (the device did not read within the write timeout), error (the socket failed), outbox_full (the device made the relay queue more replies than its outbox holds without reading).", "reason"),
	}
	m.pushedStored = m.pushed.With("stored")
	m.duplicates = m.pushed.With("duplicate")
	m.ackedOK = m.acked.With(strconv.Itoa(pushproto.AckOK))
	m.framesAck = m.frames.With(string(pushproto.TypeAck))
	return m
}

// bcastMetrics count broadcasts served to devices (broadcasts.go).
type bcastMetrics struct {
	frames        *metrics.CounterVec // kind: change, deferred_change, subscribe
	deferred      metrics.Counter
	subscriptions metrics.Gauge
	refused       metrics.Counter
}

func newBcastMetrics(r *metrics.Registry) *bcastMetrics {
	return &bcastMetrics{
		frames:        r.CounterVec("pushrelay_broadcast_frames_total", "Broadcast frames queued for devices: change (a version changed; one frame encoded per delta, shared), deferred_change (changes that came while the device's writer was busy, sent in one frame when it was done), subscribe (the answer to broadcast_subscribe).", "kind"),
		deferred:      r.Counter("pushrelay_broadcast_deferred_total", "Broadcast changes not queued at once because the device's writer was busy; each is sent when the writer is done, coalesced with later ones."),
		subscriptions: r.Gauge("pushrelay_broadcast_subscriptions", "Broadcast subscriptions of connected devices."),
		refused:       r.Counter("pushrelay_broadcast_subscriptions_refused_total", "Broadcast ids not subscribed because the session had 64 subscriptions already."),
	}
}
