// Package consensus is the site's replicated log: hashicorp/raft
// (github.com/hashicorp/raft, imported here only, with go-hclog, its
// logger, adapted to slog) with our own log store, snapshot store and
// stream layer. The log is durable in a relay/wal log (raftlog in the
// data dir); peers talk over TCP with mutual TLS from the site's keys
// (relay/linkauth), ALPN "pushrelay-peer/2".
//
// # API
//
//	n, err := consensus.New(consensus.Config{ID: id, Peers: peers, Dir: dir, ...}, sm)
//	go n.Run(ctx)
//	idx, err := n.Propose(ctx, data) // committed by a quorum and applied here, or ErrNoQuorum
//	err = n.ReadBarrier(ctx)         // this member applied what the site had committed
//	n.AddVoter(ctx, id, addr); n.RemoveVoter(ctx, id)
//	n.Leader(); n.Status()
//	n.Close()
//
// The StateMachine gets committed entries in batches, in log order, with
// the index of the batch's last entry, and records that index atomically
// with what it applied (AppliedIndex): nothing at or below it is applied
// again, after a restart or a snapshot. Its Snapshot streams the whole
// state to a member behind the compacted log; Restore takes it there.
//
// # The engine
//
// Run starts raft (New only opens the log and binds the socket): a new
// site's members bootstrap the same configuration (Peers, sorted by id);
// a member with a log restarts from it; a Join member waits to be added.
// Raft's FSM goroutine hands committed entries to fsm.ApplyBatch (raft's
// BatchingFSM, up to Config.MaxAppend entries at a time): the batch's
// commands go to the StateMachine in one Apply (one store commit), the
// leader's empty entries, barriers and configurations are only counted
// as applied. The leader gathers the proposals waiting to be handed to it
// into one append and one log write (raft's group commit), so many
// concurrent Proposes share one fsync. (Not BatchApplyCh: a proposal
// raft buffered when it shut down is never answered.)
// The leader steps down when it hears from no quorum for an election
// timeout (LeaderLeaseTimeout), and pre-vote keeps a member cut off from
// disturbing the others when it returns.
//
// # Storage
//
// logstore.go: raft's LogStore on a relay/wal log in Dir/raftlog (one
// Append, so one write and one fdatasync, per StoreLogs; entries in a
// compact versioned format; no gaps: raft empties the log after
// installing a snapshot), its StableStore (term, vote) and the snapshot
// record in one small file there written atomically (stable.go).
// migrate.go: a raft.db of the hashicorp/raft era (relay/store's Log) is
// moved into raftlog at the first start and renamed raft.db.migrated.
// snapshots.go: raft's SnapshotStore, where the
// state machine's store IS the snapshot. A snapshot taken (every
// SnapshotEvery entries, keeping CatchUpEntries in the log for members a
// little behind) records raft's metadata only, one small write, never a
// copy of the store on flash; raft then compacts the log. To send one,
// the live state is spooled to a file (raft's protocol says its size
// first), then removed; a received one is spooled, restored, removed.
// The live state may be past the metadata's index: Restore allows it,
// and the entries in between are skipped where it is restored.
// NoSnapshotRestoreOnStart: the store already holds the state at start.
// A raft.db of the etcd raft engine is refused, naming the file
// (store.ErrLogFormat).
//
// # Proposals
//
// An entry's data is the proposer's id and a proposal id (16 bytes), then
// the payload. The proposer waits for its entry to be applied here and
// learns its index. Only the leader appends: a follower forwards its
// proposals (and read barriers and configuration changes) to the leader
// over a connection of this package's own on the peer port (forward.go),
// the leader appends and answers once committed and applied there, and
// the follower waits until it has applied that index, so the caller
// reads its own write. Without a leader within ProposeTimeout:
// ErrNoQuorum. When the outcome is unknown (the leader lost its
// leadership, the request or its answer was lost), the proposer waits
// for another leader to confirm its commit index in its own term and
// applies through it: its entry was then applied, or ErrLeaderChanged.
//
// # Transport
//
// transport.go: raft's NetworkTransport on a stream layer of TCP with
// TLS; connections are sorted on their first byte (raft's, or this
// package's forwards). A wrapper over raft's transport holds the drop
// filter (SetDropFilter: every request to or from a filtered peer fails,
// both ways, as in a partition), the message metrics, and what the
// leader learns of each peer's replication (Status). Appends are not
// pipelined (hashicorp/raft#541).
//
// # Goroutines and locks
//
// Raft runs its own goroutines (main loop, FSM, snapshots, one
// replication and one heartbeat per peer); Close shuts them down. Run
// owns the observer (leader changes, elections) and the snapshotter; a
// Propose on the leader waits for raft's future on a goroutine of the
// node's. The stream layer runs an accept loop and one goroutine per
// connection being sorted or served; the transport wrapper one reader of
// raft's consumer. Close waits for all of them. Node.mu guards the
// waiters and the wake-up channels and is never held across a call into
// raft or the network.
package consensus
