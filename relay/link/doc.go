// Package link is the relay link (#8) between a child relay and its
// parent pushrelay: one QUIC connection (relay/linkquic, authenticated by
// relay/linkauth) carrying all the child's devices, in the frames of
// relay/linkproto. docs/relay-link.md is the protocol; this package is
// both ends of it.
//
// Child (upstream quic://host:port): the relay's relay.Endpoints. Mint is
// a REGISTER over the control stream, answered with the endpoint minted at
// the top of the chain (the hub stores it with the channel:
// relay.EndpointKeeper); Unregister keeps the unregister in the store's
// outbox with a tombstone (store.UnregisterLater) and a sender passes it
// on while the link is up. Run dials, says HELLO (its name, the last
// sequence it acked, the digest of every channel in its store, and in
// token mode the token's binding to the connection), grants CREDIT, and
// ingests every UPDATE through the hub (Ingest: origin key (parent, the
// parent's id)), then ACKs it and raises the credit by what it took. Each
// data stream is read on while its last ingest commits, and the frames
// that arrived meanwhile go through the hub together, in order (one
// commit, one fsync, for them all). A lost connection is redialed after a jittered
// exponential backoff. When the local address of the route to the parent
// changes, the connection moves to a new socket on it (QUIC connection
// migration, linkquic's Conn.Migrate) instead of redialing.
//
// Parent (relay_listen): accepts children, checks the token binding (or
// that the certificate names the child it says it is), answers REGISTER
// through the relay's own Endpoints (standalone minter, or its own
// upstream), records durably which child serves the UAID
// (store.SetLinkChild), and stores the channel under the UAID as for a
// local device. Messages for such UAIDs are stored by the hub as for any
// device; the hub reports each commit (relay.Config.Stored) and the
// child's connection sends them: a sender reads each marked UAID's
// waiting messages from the store, packs them into UPDATEs (a UAID always
// on the same data stream, so its messages keep their order), within the
// child's credit, and deletes them (store.AckMany, one commit) only when
// an ACK covers their frame. The origin id of a message is the store's
// epoch and its sequence there (Parent.originID), the same on every
// resend and never reused by a store started afresh. At each connect the
// sender walks the UAIDs that have messages in the store
// (store.WaitingUAIDs, which seeks past those without any) and marks the
// child's, so whatever was not acked is sent again; the child's origin
// keys drop the copies (at most the credit window of them).
//
// A restarted parent is noticed at once: the parent records each child's
// address in its store when it connects from a new one
// (store.SetLinkChildAddr) and, when it starts, sends each remembered
// address linkquic's restart hint from its listening socket. A child that
// gets the hint from its parent's address probes; the parent, restarted
// with the same stateless reset key, answers with a reset, and the child
// redials after 50 to 100 ms instead of its backoff (a reset after a link
// that was up means the parent is back). A child idle on its heartbeat
// (link_keepalive) would otherwise notice only at its next one.
//
// In a site of relays (relay/site) the child's Store is the site's log in
// front of the member's store (ChildStore), and a new Child runs on each
// member that comes to hold the link; the parent's Store likewise
// (ParentStore), every member's Parent listening and only the holder's
// taking children (ParentConfig.SiteMember, Parent.Hold: the others
// refuse busy), with the site's epoch in the origin ids. A child may be
// given several parent addresses (a parent site's members): it moves to
// the next after a failed connect, and to another of them whose restart
// hint it gets.
//
// Broadcasts (ParentConfig.Broadcasts, ChildConfig.Broadcasts: the
// relays' broadcast.Registry): the parent sends each child every id of
// its registry with its version once the connection is up, then, at each
// change, what differs from what it sent on that connection (one
// goroutine per connection, woken by the registry's change listener); the
// child sets them in its registry under the source "parent" on its
// control stream's goroutine, in frame order. On a middle tier the one
// registry is both, so versions flow down a chain tier by tier.
//
// Sequences are numbered per connection from the HELLO's resume point
// plus one; the parent's durable queue is the store's messages
// themselves, not a separate log.
//
// Memory on the parent per UAID a child serves: one map entry (the UAID
// and a 2-byte child index), plus, while a child is connected, the marks
// of UAIDs with messages not yet read and the frames in flight (bounded by
// the credit), and 40 bytes per child for its digest. The parent keeps
// each child's digest (of the pairs it holds for the child's UAIDs): built
// from the store when it starts, then changed on every register,
// unregister and claim the link makes (linkproto.Digest's O(1) Add and
// Remove), so a connect reads nothing from the store. Only when a child's
// HELLO digest differs is the digest rebuilt from the store, which
// decides; then, still differing, the parent sends its view (RESYNC) after
// WELCOME and the child fixes it with REGISTERs and UNREGISTERs. A device
// the parent's hub resets (its upstream forgot the UAID) leaves the kept
// digest at once (Parent.Forgot, relay.Config.Forgot), and the child is
// told with FORGET (forget.go), kept durably until it answers; until
// then the child's view counts the device's pairs. The child's digest is
// computed from its store at each connect.
//
// A hello at the parent with the UAID of a device a child serves is
// answered with a new UAID (Parent.Serves, relay.Config.ServedElsewhere):
// a device is served by the relay it registered through.
//
// Goroutines: the child's Run holds one for the connection's control
// stream, one accepting data streams and one per data stream (each
// ingesting), one watching the route to the parent (migrating the
// connection when its local address changes), and one unregister sender.
// The parent's Run accepts; each child has one goroutine on its control
// stream, one sender, one sending broadcasts, one sending FORGETs, one
// recording its address at the connect, one deleting acked messages
// while such a commit is under way (the sender goes on sending
// meanwhile), and one per register, unregister or FORGOTTEN being
// handled (at most 16 at once); the child one per FORGET being handled
// (at most 16 at once).
//
// Locks: the broadcast registry's lock (its change listener runs under
// it) before Parent.mu; Parent.mu before a connection's mu, never the
// other way; the child's mu and a connection's mu are never held
// together. No lock of this package is held across a store call or a
// stream write.
package link
