//! Every limit and default of the engine, in one place. Units are in the
//! names (`_bytes`, `_ms`, `_max`). Hard caps (`*_MAX`) bound what any
//! configuration may ask for; defaults (`DEFAULT_*`) are what a topic gets
//! when it says nothing.

/// Largest frame a partition accepts (a topic may configure less).
pub const FRAME_BYTES_MAX: usize = strom_flatbuffers::FRAME_BYTES_MAX;
/// Default cap on one frame (Kafka's message.max.bytes is about 1 MiB; ours
/// admits the 1 MiB batches of the benchmarks with headroom).
pub const DEFAULT_FRAME_BYTES_MAX: usize = 8 << 20;

/// Default segment size before a roll (Kafka and Iggy use 1 GiB).
pub const DEFAULT_SEGMENT_BYTES: u64 = 1 << 30;
/// Smallest segment size a topic may configure.
pub const SEGMENT_BYTES_MIN: u64 = 64 << 10;
/// Largest segment: positions in the offset index are u32.
pub const SEGMENT_BYTES_MAX: u64 = u32::MAX as u64;
/// Once the active segment is this full (percent of `segment_bytes`), the
/// next segment file is created and its first fallocate step taken in the
/// background, so that a roll only switches files (no I/O on the append
/// path). A topic with `segment_ms` prepares it at once.
pub const NEXT_SEGMENT_PREPARE_PERCENT: u64 = 50;
const _: () = assert!(NEXT_SEGMENT_PREPARE_PERCENT <= 100);

/// Segment files are grown with fallocate in steps of this many bytes.
pub const DEFAULT_PREALLOCATE_BYTES: u64 = 32 << 20;
/// A background preallocation step also writes zeros over its blocks
/// (`StorageFile::write_zeros`: later small writes become overwrites, which
/// ext4 issues without blocking) when the previous step started at least
/// this long ago, i.e. for a partition writing under about one step per
/// second (32 MB/s by default). Faster writers skip the zeros, which they
/// would wait for and then overwrite at once.
pub const ZERO_FILL_STEP_INTERVAL_MS_MIN: i64 = 1_000;

/// One sparse offset-index entry per this many log bytes (as Kafka).
pub const DEFAULT_INDEX_INTERVAL_BYTES: u32 = 4096;
/// Entries of one index file; 1 GiB / 4 KiB with headroom.
pub const INDEX_ENTRIES_MAX: usize = 1 << 20;
const _: () = assert!(
    INDEX_ENTRIES_MAX * 12 + crate::index::INDEX_FILE_HEADER_BYTES
        <= crate::storage::ATOMIC_FILE_BYTES_MAX
);

/// The largest aligned buffer one append is copied into before a write.
pub const DEFAULT_WRITE_BUFFER_BYTES: usize = 1 << 20;
/// The smallest write buffer the engine allocates.
pub const WRITE_BUFFER_BYTES_MIN: usize = 64 << 10;
/// Appended bytes not yet handed to the disk before an append must wait for
/// a write (back-pressure instead of an unbounded queue).
pub const DEFAULT_UNWRITTEN_BYTES_MAX: usize = 16 << 20;

/// Default tail-cache budget of all partitions of one shard together.
pub const DEFAULT_SHARD_CACHE_BYTES_MAX: usize = 256 << 20;
/// Default per-partition tail cache budget.
pub const DEFAULT_CACHE_BYTES_MAX: usize = 16 << 20;
/// Frames shorter than this are copied into memory the tail cache owns when
/// cached. A produce frame is a view into its connection's read buffer (the
/// server reads into 64 KiB to 1 MiB buffers); cached as a view, a small frame
/// of a cold partition would pin the whole buffer while the cache is charged
/// only the frame, and the cache budget would not bound memory. Larger frames
/// are kept as views (no second copy of large batches) and charged at least
/// [`CACHE_VIEW_CHARGE_BYTES_MIN`].
pub const CACHE_COPY_FRAME_BYTES_MAX: usize = 256 << 10;
/// The least a frame kept as a view is charged: the most memory a view may
/// pin beyond itself, the server's largest read buffer for a message it has
/// not yet seen whole (1 MiB, `server::limits` and the connections' read loops).
pub const CACHE_VIEW_CHARGE_BYTES_MIN: usize = 1 << 20;
const _: () = assert!(CACHE_COPY_FRAME_BYTES_MAX <= CACHE_VIEW_CHARGE_BYTES_MIN);
/// What each cached frame costs the cache budget beyond its bytes: the
/// allocation's header, the `Bytes` handle and its queue slot (rounded up).
pub const CACHE_FRAME_OVERHEAD_BYTES: usize = 64;
/// Frames a single read returns at most (bounds response assembly work).
pub const READ_FRAMES_MAX: usize = 4096;
/// Default read-ahead for sequential readers of data no longer cached.
pub const DEFAULT_READ_AHEAD_BYTES: usize = 1 << 20;
/// Smallest disk read the read path issues.
pub const READ_CHUNK_BYTES_MIN: usize = 64 << 10;

/// A recovery checkpoint is written after this many newly durable bytes, so
/// that start-up after a crash scans at most about this much.
pub const DEFAULT_CHECKPOINT_INTERVAL_BYTES: u64 = 64 << 20;

/// Free space kept for metadata, checkpoints and index files: appends stop
/// before the disk is completely full (Redpanda's storage_min_free_bytes).
pub const DEFAULT_DISK_RESERVE_BYTES: u64 = 8 << 20;

/// Largest checkpoint or index header file read at start-up.
pub const META_FILE_BYTES_MAX: usize = 64 << 10;

/// Segments one partition may hold open at once (files are opened lazily).
pub const OPEN_SEGMENTS_MAX: usize = 4096;

/// Producers one producer-state snapshot file may hold (the server keeps
/// at most as many per shard, so one partition's always fit).
pub const PRODUCER_SNAPSHOT_PRODUCERS_MAX: usize = 100_000;
/// Transactional producers one partition remembers (marker epochs and
/// ongoing transactions), and so one snapshot holds; past it the one with
/// the oldest last offset and no ongoing transaction is forgotten.
pub const TXN_SNAPSHOT_PRODUCERS_MAX: usize = 10_000;
/// Aborted transactions one partition remembers (Kafka's `.txnindex`), and
/// so one snapshot holds; past it the oldest is forgotten (logged).
pub const TXN_SNAPSHOT_ABORTED_MAX: usize = 50_000;
/// Batches remembered per producer in a snapshot (Kafka's five in flight).
pub const PRODUCER_SNAPSHOT_BATCHES_MAX: usize = 5;
/// Producer-state snapshots kept per partition: the newest, and older ones
/// to fall back on should it be damaged.
pub const PRODUCER_SNAPSHOTS_KEPT: usize = 2;
/// Snapshot files tried at open, newest first, before replaying from the
/// log start.
pub const PRODUCER_SNAPSHOT_CANDIDATES_MAX: usize = 8;
