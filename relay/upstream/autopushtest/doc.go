// Package autopushtest is a test upstream: an in-memory server that speaks
// the Mozilla push protocol and enforces the session, storage and delivery
// rules of autopush-rs (Mozilla's push service), so that pushrelay's
// upstream link is tested against autopush's behaviour and not only against
// another pushrelay. It stands in for a third-party service; nothing of the
// relay uses it outside tests.
//
// A Server listens on 127.0.0.1:0 (with TLS if Config.TLS is set: wss://
// and https://, as autopush is reached) with one HTTP server: GET on any path
// upgrades to the device WebSocket (through relay/wsock), and
// POST /push/{uaid}/{chid} is the endpoint side (the pushEndpoint a register
// answers; autopush's is /wpush/v1/{token}, a Fernet token of the same two
// ids). The post needs a TTL header (seconds); Topic and a body (sent as
// data, base64url, with Content-Encoding as headers.encoding) are optional.
// Answers: 201 with Location, 400 without a valid TTL, 410 for a UAID that
// does not exist (never registered, or reset) or a channel it does not hold.
//
// The rules, each with the autopush-rs source it comes from (paths under
// autoconnect/autoconnect-ws/ unless said otherwise):
//
//   - The first frame must be a text hello within Config.HelloTimeout (5 s),
//     else close 1011 "HandshakeTimeout" (src/handler.rs, src/error.rs). A
//     second hello closes 1011 "SM" (InvalidMessage "Already Hello'd",
//     autoconnect-ws-sm/src/identified/on_client_msg.rs).
//   - Close codes and reasons: 1000 only for a UAID reset, 1011 for every
//     other error, 1003 for a binary frame, 1002 for a frame over 64 KiB or
//     not UTF-8 (actix-http's defaults, inferred). The reason is the error
//     variant's name: "SM" for every state-machine error (ghost, excessive
//     ping, invalid message, reset), "Json" for an unparsable frame,
//     "HandshakeTimeout", "PongTimeout", "UnsupportedMessage", "Protocol"
//     (src/error.rs, autoconnect-ws-sm/src/error.rs).
//   - A hello with an unknown or invalid uaid gets a new one (32 hex digits),
//     not stored until its first register (deferred_add_user in
//     autoconnect-ws-sm/src/unidentified.rs and identified/on_client_msg.rs);
//     an existing UAID resumes, and a second connection for it ghosts the
//     first (closed 1011 "SM": ServerNotification::Disconnect,
//     autoconnect-common registry.rs and identified/on_server_notif.rs).
//   - register: the channelID must be a lower-case dashed UUID, else close
//     1011 "SM"; a key that is not base64url (padding tolerated) answers
//     status 400 with pushEndpoint "Failed to generate endpoint"
//     (on_client_msg.rs::register, autopush-common/src/endpoint.rs);
//     unregister answers 200 and the endpoint then answers 410.
//   - Stored messages (posted while the UAID had no connection, or left
//     unacked when a session ended) are sent on hello: topic messages first
//     (up to 11), then the others in batches of 10; the next batch only when
//     every message sent (direct ones too) is acked. Acked topic messages are
//     deleted one by one; the others only move the UAID's current_timestamp
//     when their whole batch is acked, so a partly acked batch is sent again
//     on the next connect (on_server_notif.rs::check_storage_advance,
//     increment_storage; on_client_msg.rs::ack, post_process_all_acked).
//     A post for a connected UAID is delivered directly.
//   - msg_limit (Config.MsgLimit, 150): a session that has read more than
//     that from storage without finding it empty deletes the UAID and closes
//     1000 "SM" (UaidReset, on_server_notif.rs::check_msg_limit).
//   - The WebPush ping {} (or {"messageType":"ping"}) is answered {} only if
//     45 s (Config.PingMin) passed since the last answered one, else close
//     1011 "SM" (ExcessivePing, on_client_msg.rs::ping). The first on a
//     connection is always answered (last_ping starts at 0).
//   - One goroutine per connection reads the client's messages and
//     writes every answer to one before it reads the next, as
//     identified_ws does (src/handler.rs): the hello's answer is followed
//     by the first stored batch, an ack of a whole batch by the next, and
//     a {} is answered after all of it. Direct notifications interleave
//     between client messages.
//   - Every Config.AutoPingInterval (300 s) the server sends a WebSocket ping,
//     or instead a broadcast frame when a subscribed broadcast changed; no
//     pong within Config.AutoPingTimeout (4 s) closes 1011 "PongTimeout"
//     (src/ping.rs). Here any frame that arrives after the ping counts as its
//     pong (relay/wsock reports when the peer was last heard, not what).
//   - A UAID that went Config.RouterTTL (60 days) without a hello is
//     forgotten: its endpoints answer 410 and a hello with it gets a new
//     UAID (MAX_ROUTER_TTL_SECS, autopush-common/src/lib.rs). Stored
//     messages' TTLs are capped at 30 days (MAX_NOTIFICATION_TTL_SECS).
//   - Broadcasts (SetBroadcast): a hello's broadcasts and broadcast_subscribe
//     subscribe to the known ids and answer the ones whose version differs;
//     unknown ids are answered under "errors" with "Broadcast not found"
//     (autoconnect-common/src/broadcast.rs).
//
// Simplifications: state is in memory and one node's (no router port, no
// AlreadyConnected across nodes); VAPID is not checked on posts (v2
// endpoints); stored messages expire with their TTL but delivered ones are
// dropped at once instead of by a sweep; nack is ignored; a post for a
// connected UAID whose queue (128) is full is stored, and it starts a
// storage check only if the session is not in one already.
//
// Stats returns counters a test can read: connections, hellos per UAID,
// notifications sent, sent again (a version already sent once), acked,
// UAID resets and UAIDs forgotten.
package autopushtest
