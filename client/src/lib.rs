//! strom-client: a blocking Rust client for Strom's native protocol.
//!
//! - [`Connection`]: one TCP connection; handshake, correlation ids,
//!   pipelining, timeouts and bounded reconnects.
//! - [`Client`]: a connection plus a metadata cache; admin calls (topics,
//!   partitions), list offsets, consumer-group offset commit and fetch.
//! - [`Producer`]: per-partition batching by size and linger time, key
//!   partitioning (Kafka's murmur2), pipelined produce, per-record offsets;
//!   optional resends, and optional idempotence (producer id and sequences:
//!   a resent batch is stored once).
//! - [`Consumer`]: explicit assignment, long-poll fetch, verified frames,
//!   zero-copy records, positions and commits.
//! - [`GroupConsumer`]: a consumer-group member: subscription, assignment
//!   by the server's coordinator, heartbeats, auto or explicit commits,
//!   rebalance callbacks, clean leave.
//!
//! Everything is synchronous std::net I/O: no runtime, one thread per
//! connection user. The wire codec and batch framing are
//! `strom_flatbuffers::{protocol, frame}`.

pub mod client;
pub mod cluster;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod group;
pub mod producer;

#[cfg(test)]
mod mock;

pub use client::{Client, OffsetSpec, Route};
pub use connection::{Connection, ConnectionConfig, Response};
pub use consumer::{Assignment, Consumer, ConsumerConfig, FetchedFrame};
pub use error::{Error, Result};
pub use group::{
    AssignmentStrategy, AutoOffsetReset, GroupConfig, GroupConsumer, RebalanceListener,
};
pub use producer::{
    murmur2, partition_for_key, Producer, ProducerConfig, ProducerRecord, ProducerStats,
    RecordHandle, KAFKA_IDEMPOTENT_INFLIGHT_MAX, PARTITION_INFLIGHT_BATCHES_MAX,
};
pub use strom_flatbuffers::protocol::{
    Acks, ErrorCode, GroupDescription, GroupListing, OffsetCommitResult, ResetTo,
};
pub use strom_flatbuffers::RecordView;

#[cfg(test)]
mod tests;
