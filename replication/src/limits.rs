//! Every limit and default of the replication core, in one place. Units are
//! in the names (`_ticks`, `_bytes`, `_max`). Hard caps (`*_MAX`) bound what
//! any configuration may ask for; defaults (`DEFAULT_*`) are what a replica
//! gets when it says nothing. Time is counted in ticks: the shell decides how
//! long a tick is (one timer per shard for all its groups).

/// Ticks without a word from a leader before a follower campaigns. raft-rs
/// draws each timeout from `[election_ticks, 2 * election_ticks)`.
pub const DEFAULT_ELECTION_TICKS: usize = 10;
/// Ticks between a leader's heartbeats.
pub const DEFAULT_HEARTBEAT_TICKS: usize = 2;
const _: () = assert!(DEFAULT_HEARTBEAT_TICKS < DEFAULT_ELECTION_TICKS);

/// Append messages in flight to one follower during optimistic replication
/// (raft-rs `max_inflight_msgs`).
pub const DEFAULT_INFLIGHT_MSGS_MAX: usize = 256;
/// Entries carried by one append message, in bytes (raft-rs
/// `max_size_per_msg`; one entry is always sent even if larger).
pub const DEFAULT_MSG_BYTES_MAX: u64 = 1 << 20;
/// Bytes of proposals appended by a leader but not yet committed; past this,
/// proposals are refused (raft-rs `max_uncommitted_size`): back-pressure
/// instead of an unbounded log tail.
pub const DEFAULT_UNCOMMITTED_BYTES_MAX: u64 = 64 << 20;
/// Bytes of committed entries handed out by one `Ready` (raft-rs
/// `max_committed_size_per_ready`).
pub const DEFAULT_COMMITTED_BYTES_PER_READY_MAX: u64 = 16 << 20;

/// The largest proposal payload (one record batch frame). The engine's
/// default frame cap is 8 MiB; a topic may configure less.
pub const PROPOSAL_BYTES_MAX: usize = 8 << 20;
/// Proposals a leader tracks while waiting for their commit; past this,
/// proposals are refused.
pub const DEFAULT_PENDING_PROPOSALS_MAX: usize = 16 * 1024;
/// Hard cap on pending proposals any configuration may ask for.
pub const PENDING_PROPOSALS_MAX: usize = 1 << 20;

/// Voters in one group. Kafka's replication factor is rarely above 5; raft
/// needs a majority of them for every commit.
pub const VOTERS_MAX: usize = 9;
const _: () = assert!(VOTERS_MAX % 2 == 1);
