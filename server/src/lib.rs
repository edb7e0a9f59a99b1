//! `strom-server` as a library: the broker's layers, used by the thin
//! `main.rs` and by tests that run shards in-process.
//!
//! Layers, each importing only from the ones before it:
//! 1. foundations: `limits`, `error`, `config`, `metadata`, `metrics`,
//!    `shutdown`, `waits`, `alloc`, `gather` (gathered sends), `readbuf`
//!    (where socket reads land), `producers`
//!    (idempotent-producer rules), `txn_index` (a partition's open and
//!    aborted transactions and last stable offset), `producer_recovery`
//!    (their rebuild at open and snapshots), `tls` (listener TLS and the
//!    connection stream), `auth` (credentials and SASL), `acl` (the
//!    authorizer's decision, not wired yet),
//!    `engine` (the storage engine's API);
//! 2. `mesh`: moving owned messages between shards (no knowledge of what
//!    they mean);
//! 3. `shard`: one shard's state (partitions, metadata, router);
//! 4. `ops`: the protocol-neutral operations (produce, fetch and long poll,
//!    offsets, groups, admin), run on the shard that owns their partition;
//!    `txn`: the transaction coordinator (on shard 0) and its log;
//! 5. edges: `native` (the FlatBuffers protocol) and `kafka` (the Kafka wire
//!    protocol), and `http` (metrics, health): each decodes, translates into
//!    `ops`, and encodes;
//! 6. `node`: start-up, the shards' executors, listeners, shutdown.
//!
//! `tests/layers.rs` checks the imports against this order.

pub mod acl;
pub mod alloc;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod error;
pub mod gather;
pub mod group;
pub mod handlers;
pub mod http;
pub mod kafka;
pub mod limits;
pub mod metadata;
pub mod metrics;
pub mod node;
pub mod ops;
pub mod producer_recovery;
pub mod producers;
pub mod readbuf;
pub mod router;
pub mod serve;
pub mod shard;
pub mod shutdown;
pub mod tls;
pub mod txn;
pub mod txn_index;
pub mod waits;

/// The storage engine API the server codes against.
pub mod engine {
    pub use strom_engine::*;
    /// The server's partitions: on O_DIRECT files, or on the in-memory
    /// model when shards run in-process for tests (`Shared::storage`).
    pub type Partition = strom_engine::Partition<strom_engine::AnyStorage>;
}

/// The unit tests run under the allocator the binary installs (`main.rs`),
/// so `alloc`'s tests see what the server does.
#[cfg(test)]
#[global_allocator]
static TEST_GLOBAL: alloc::StromAlloc = alloc::StromAlloc;
