// Package member is a relay's membership of its site: who the site's
// peer relays are, which are alive, and what each says about itself. It
// is the one package that imports github.com/hashicorp/memberlist (SWIM
// gossip: failure detection by probes, dissemination by gossip, full
// syncs over TCP). What the site holds as true (messages, acks,
// registrations) is not here: that is the consensus engine's
// (relay/consensus); this package tells it who is there.
//
// # Use
//
//	m, err := member.New(member.Config{
//		Name:   "gw-1",               // node_name, unique on the site
//		Listen: "10.0.0.1:7946",      // cluster_listen (UDP and TCP)
//		Join:   []string{"10.0.0.2:7946"},
//		Keys:   [][]byte{key},        // cluster_key / cluster_keyring_file
//		Meta:   func() member.Meta { ... }, // addresses, load, devices
//		Events: handler,              // join, update, leave, fail, resync
//	})
//	go m.Run(ctx)   // joins, then keeps the membership until ctx ends
//	m.Members()     // snapshot: name, address, state, metadata
//	m.UpdateMeta()  // something in Meta changed: tell the site (rate-limited)
//	m.Close()       // leave gracefully (bounded), shut down; idempotent
//
// # Identity and metadata
//
// A member is its Name; IDOf(Name) is its raft id (the first 8 bytes of
// the name's SHA-256, never 0), so the consensus group and the gossip
// agree on who is who without a registry. Meta, at most 512 bytes
// (memberlist's limit), carries the name and id, the raft, relay link and
// admin addresses, the version, the load, how many devices the member
// holds a socket and a wake binding for, and a Bloom digest of each set
// of UAIDs (Digest: up to 1024 bits, folded smaller when the rest needs
// the room), so a leader can send a wake to the member that holds the
// device's binding without asking every member. The encoding is a version
// byte and tagged fields (EncodeMeta, DecodeMeta; unknown tags skipped,
// fuzzed). Config.Meta is polled every MetaRefresh and after UpdateMeta;
// a change is sent (memberlist's UpdateNode, an alive broadcast) at most
// once per MetaInterval.
//
// # Events
//
// memberlist reports joins, updates and leaves on its own goroutines;
// the Member tells a failure from a leave (a leaving member says so in its
// metadata just before it leaves) and queues the event. One goroutine of
// the Member's hands queued events to Config.Events in order. The queue
// holds EventQueue events: when it is full, new events are dropped and
// counted (pushrelay_member_events_dropped_total) until the handler has
// taken the queued ones; it then gets one EventResync carrying the whole
// membership, to rebuild its view from. memberlist is never blocked by a
// slow handler. Events about this member itself are not delivered;
// Members includes it.
//
// # Failure detection
//
// Timing defaults to LANTiming (why those values: its doc and
// docs/cluster.md). A member killed without leaving is declared failed by
// the others within Timing.DetectionBound (3.9 s on a site of 3 with
// LANTiming; measured 1.6-2.8 s, median 1.84 s), against 5.4-6.8 s with
// memberlist's LAN defaults (TestDetectionMeasure).
//
// # The rejoin loop
//
// memberlist does not merge two sides of a partition once it heals: each
// side declared the other failed, stops probing it, and gossips to it
// only for GossipToTheDead. So every RejoinInterval (±25%), while a
// member is failed, or this one is alone though it has seeds, the Member
// joins its seeds and the failed members' addresses; a join is a full
// state exchange, after which both sides see each other alive. Members
// that left gracefully are not chased. Failed and left members are
// forgotten after ReapAfter.
//
// # Keys
//
// Gossip is always encrypted and authenticated (AES-GCM, memberlist's
// keyring): the first key encrypts, every installed key is tried to
// decrypt, and unencrypted gossip is refused. SetKeys (or a change of
// KeyringFile, read every KeyringCheck) installs a new set while running,
// which is how keys are rotated: add the new key everywhere, make it
// primary everywhere, remove the old one everywhere (docs/cluster.md).
// Gossip refused for its key is counted (pushrelay_member_key_errors_total)
// and logged at most once per 10 s.
//
// # Goroutines and locks
//
// memberlist runs its own (listeners, probes, gossip, push/pull). The
// Member runs two under Run, both ended and waited for by Close: the
// event deliverer and the maintainer (metadata, rejoin loop, reaping,
// keyring file). Faults, in tests, adds one per member that filters
// incoming packets. There is one lock, Member.mu, over the member table,
// the event queue and the metadata; it is held briefly and nothing is
// called under it, so memberlist's callbacks (which it calls under its
// own locks) never wait on anything but it.
package member
