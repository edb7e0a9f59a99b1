//! Consumer groups: a coordinator with Kafka's classic rebalance protocol
//! and committed offsets in an internal compacted log.
//!
//! - [`coordinator`]: the I/O-free state machine (groups, members,
//!   generations, session and rebalance timeouts, offsets in memory).
//! - [`assignor`]: range and round-robin, and the consumer-protocol byte
//!   encodings of subscriptions and assignments.
//! - [`records`]: the offsets log's record format (I/O-free).
//! - [`store`]: one offsets partition (an engine partition): replay,
//!   append, compaction.
//! - [`migrate`]: start-up migration of format-1 directories (one offsets
//!   log per shard) into the offsets partitions.
//! - [`service`]: the shell the native and Kafka handlers call; routes to
//!   the owning shard, drives the timers, completes pending joins/syncs.
//!
//! Placement (invariants):
//! - a group's offsets and generation live in offsets partition
//!   [`offsets_partition`]`(group) = crc32c(group) % offsets_partitions`,
//!   where the count is fixed in the metadata when the data directory is
//!   created: it never depends on the shard count;
//! - offsets partition `p` is owned by the shard the metadata's placement
//!   gives it ([`Placement::offsets_partition_owner`], the same function
//!   as for topic partitions), so the group's coordinator is
//!   [`group_shard`]; only that shard touches the group's state and log.
//!   A restart with another shard count moves whole offsets partitions.

pub mod assignor;
pub mod coordinator;
pub mod error;
pub mod migrate;
pub mod native;
pub mod records;
pub mod service;
pub mod store;

#[cfg(test)]
mod sim;

use crate::metadata::Placement;

#[allow(unused_imports)] // the Kafka listener's entry point
pub use error::GroupError;

/// Milliseconds since the Unix epoch (the shell's clock for the core).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The offsets partition holding `group` (of `offsets_partitions`).
pub fn offsets_partition(group: &str, offsets_partitions: u32) -> u32 {
    assert!(offsets_partitions >= 1, "no offsets partitions");
    crc32c::crc32c(group.as_bytes()) % offsets_partitions
}

/// The shard that coordinates `group` under `placement`.
pub fn group_shard(group: &str, placement: &Placement) -> usize {
    placement.offsets_partition_owner(offsets_partition(group, placement.offsets_partitions))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defect this placement fixes: a group's home must not depend on
    /// the shard count, and under every shard count exactly one shard owns
    /// it.
    #[test]
    fn a_group_keeps_its_offsets_partition_whatever_the_shard_count() {
        let groups: Vec<String> = (0..200).map(|i| format!("group-{i}")).collect();
        for g in &groups {
            let p = offsets_partition(g, 16);
            assert!(p < 16);
            for shards in 1..=12 {
                let placement = Placement::new(shards, shards as u64, 16);
                // Same partition under every placement, owned by the shard
                // that owns that partition.
                assert_eq!(offsets_partition(g, placement.offsets_partitions), p);
                assert_eq!(
                    group_shard(g, &placement),
                    placement.offsets_partition_owner(p)
                );
                assert!(placement
                    .offsets_partitions_of(group_shard(g, &placement))
                    .contains(&p));
            }
        }
        // Groups spread over every offsets partition.
        let used: std::collections::BTreeSet<u32> =
            groups.iter().map(|g| offsets_partition(g, 16)).collect();
        assert_eq!(used.len(), 16);
        // The old function, crc32c % shards, put "g-00".."g-11" on both
        // shards of two; whatever the new placement, one shard owns all.
        let one = Placement::new(1, 2, 16);
        assert!((0..12).all(|i| group_shard(&format!("g-{i:02}"), &one) == 0));
    }
}
