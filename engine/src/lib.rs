//! strom-engine: the partition log of Strom.
//!
//! Layout (an I/O-free core with a thin I/O shell):
//! - I/O-free: [`config`], [`limits`], [`index`], [`scan`], [`retention`],
//!   [`checkpoint`], [`producer_snapshot`], [`cache`] — plain functions over bytes and state, unit-tested
//!   without io_uring.
//! - [`storage`]: the only door to files, with DMA (glommio, O_DIRECT),
//!   memory and fault-injecting implementations.
//! - [`log`]: the partition log over any storage; the simulation drives it
//!   over the fault-injecting storage.
//! - [`partition`]: the glommio shell: one log on DMA files with group commit,
//!   background flushing and retention, and long-poll waiters.
//!
//! The engine knows nothing of sockets or wire protocols.

pub mod cache;
pub mod checkpoint;
pub mod compaction;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzz_checks;
pub mod index;
pub mod io_error;
pub mod limits;
pub mod log;
pub mod partition;
pub mod producer_snapshot;
pub mod retention;
pub mod scan;
pub mod storage;

pub use config::{ConfigError, FlushPolicy, LogConfig};
pub use error::EngineError;
pub use log::{AppendInfo, Log, LogStats, Offsets, ReadBatch, RecoveryReport};
pub use partition::{
    remove_partition_dir, remove_partition_dir_on, CleanerStats, CompactionRun, Durability,
    Partition, RateThrottle, SnapshotLoad, SyncStats,
};
pub use storage::AnyStorage;
