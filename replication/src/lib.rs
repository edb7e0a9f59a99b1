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
//! - [`limits`], [`error`]: every limit, and one error enum per operation.
//!
//! This crate does no I/O and knows nothing of sockets, files or glommio.

pub mod core;
pub mod error;
pub mod limits;
pub mod rng;
pub mod sim;
pub mod storage;

pub use crate::core::{Acks, Action, ProposalId, ReplicaConfig, ReplicaCore};
pub use crate::error::{
    CompactError, ConfigError, OpenError, PersistError, ProposalError, ProposeError, StepError,
};
pub use crate::storage::{LogStore, MemLog};
pub use raft;
