// Package consensus is the site's replicated log: etcd's raft engine
// (go.etcd.io/raft/v3, imported here only) with our own storage and
// transport. The log is durable in relay/store's Log (raft.db in the data
// dir); peers talk over relay/linkquic under their own ALPN
// ("pushrelay-peer/1"), with mutual TLS from the site's keys
// (relay/linkauth).
//
// # API
//
//	n, err := consensus.New(consensus.Config{ID: id, Peers: peers, Dir: dir, ...}, sm)
//	go n.Run(ctx)
//	idx, err := n.Propose(ctx, data) // committed by a quorum and applied here, or ErrNoQuorum
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
// # The Ready loop
//
// Run's goroutine owns the engine's Ready channel. For each Ready, in
// this order: a snapshot received from the leader is restored into the
// state machine (from the file the transport spooled it to); the
// snapshot record, the new entries and the hard state are written in ONE
// log transaction (one fsync; skipped when raft says nothing must sync,
// a Ready that only moves the commit index); only then are the messages
// queued to the peers (the leader queues its own before the write: Raft
// thesis 10.2.1); then the committed entries are handed, in order,
// to the applier goroutine, which applies them (normal entries in
// batches, configuration changes between them, each recorded in the log)
// while the loop goes on to the next Ready; then every SnapshotEvery
// applied entries a snapshot record is written and the log compacted,
// keeping CatchUpEntries. Then Advance. A snapshot from the leader waits
// until the applier has applied everything before it. Proposals arriving
// meanwhile wait in the engine's unstable log, so the next Ready carries
// all of them: many concurrent Proposes share one fsync.
//
// # Proposals
//
// An entry's data is the proposer's id and a proposal id (16 bytes), then
// the payload. The proposer waits for its entry to be applied here and
// learns its index; a follower's proposal is forwarded to the leader by
// the engine. Without a known leader within ProposeTimeout, or when the
// engine drops the proposal (a candidate), Propose returns ErrNoQuorum.
// CheckQuorum and PreVote are on: a leader that cannot reach a quorum
// steps down after an election timeout, and what it appended alone is
// never committed (the next leader's log replaces it).
//
// # Transport
//
// See transport.go: one dialed connection per peer and direction, a
// bounded send queue per peer (a full queue drops and counts; raft sends
// again), snapshots on a stream of their own, written straight from the
// state machine onto the stream and spooled to a file on the receiver.
//
// # Goroutines and locks
//
// The engine runs one goroutine (raft.Node). Run is the Ready loop and
// owns the applier goroutine (it waits for it on return). The
// transport runs an accept loop, one reader per accepted connection and
// stream, one writer per peer, one per snapshot being sent; Close waits
// for all of them. Lock order: transport.mu, then a peer's mu; Node.mu is
// never held while taking either.
package consensus
