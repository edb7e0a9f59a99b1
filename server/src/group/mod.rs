//! Consumer groups: a coordinator with Kafka's classic rebalance protocol
//! and committed offsets in an internal compacted log.
//!
//! - [`coordinator`]: the I/O-free state machine (groups, members,
//!   generations, session and rebalance timeouts, offsets in memory).
//! - [`assignor`]: range and round-robin, and the consumer-protocol byte
//!   encodings of subscriptions and assignments.
//! - [`records`]: the offsets log's record format (I/O-free).
//! - [`store`]: the offsets log on an engine partition per shard: replay,
//!   append, compaction, import of the old JSON files.
//! - [`service`]: the shell the native and Kafka handlers call; routes to
//!   the owning shard, drives the timers, completes pending joins/syncs.
//!
//! A group is owned by shard `crc32c(group) % shards`; only that shard
//! touches its state and its log.

pub mod assignor;
pub mod coordinator;
pub mod error;
pub mod native;
pub mod records;
pub mod service;
pub mod store;

#[cfg(test)]
mod sim;

#[allow(unused_imports)] // the Kafka listener's entry point
pub use error::GroupError;

/// Milliseconds since the Unix epoch (the shell's clock for the core).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The shard that coordinates `group`.
pub fn group_owner(group: &str, shards: usize) -> usize {
    (crc32c::crc32c(group.as_bytes()) as usize) % shards.max(1)
}
