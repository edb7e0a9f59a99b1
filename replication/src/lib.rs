//! Strom's replication core: one Raft group per partition, driven through
//! raft-rs's I/O-free `RawNode` / `Ready` interface, and a deterministic
//! simulation of several replicas in one process.
//!
//! - [`storage`]: the [`LogStore`] seam raft-rs reads and the shell makes
//!   durable, and [`MemLog`], the in-memory model of the partition log (a
//!   synced prefix and an unsynced tail that a crash loses).
//! - [`core`]: [`ReplicaCore`], one replica: ticks, messages, proposals and
//!   storage completions in; actions out.
//! - [`sim`]: the seeded simulator (network faults, partitions, crashes,
//!   slow disks) with its safety and liveness checkers.
//! - [`engine_store`]: [`engine_store::EngineStore`], the durable
//!   `LogStore`: the Raft log as a strom-engine partition log (one entry =
//!   one frame, the term in `leader_epoch`), the hard state and snapshot in
//!   small atomically replaced files (layouts in `docs/format.md`).
//! - [`wire`]: the bounded, checksummed encoding of batches of Raft
//!   messages between nodes (raft-rs's protobuf decoder never sees bytes
//!   from the network).
//! - [`epochs`]: where each leader epoch (Raft term) ended, for Kafka's
//!   OffsetForLeaderEpoch (I/O-free).
//! - [`limits`], [`error`]: every limit, and one error enum per operation.
//!
//! `core`, `storage`, `sim` and `wire` do no I/O. `engine_store` does, only
//! through the engine's `Storage` trait (so it runs on the in-memory and
//! fault-injecting models in tests).
//! - [`shell`]: the glommio shell that runs a shard's replicas for real
//!   (one tick timer, persists, apply, proposals) with a TCP transport of
//!   wire batches per peer; the only module that knows sockets and glommio.

pub mod core;
pub mod engine_store;
pub mod epochs;
pub mod error;
pub mod limits;
pub mod rng;
pub mod shell;
pub mod sim;
pub mod storage;
pub mod wire;

pub use crate::core::{Acks, Action, ProposalId, ReplicaConfig, ReplicaCore};
pub use crate::error::{
    CompactError, ConfigError, OpenError, PersistError, ProposalError, ProposeError, StepError,
};
pub use crate::storage::{LogStore, MemLog};
pub use crate::wire::{decode_batch, encode_batch, peek_batch_len, Batch, BatchEncoder, WireError};
pub use raft;
