//! Every bound the server enforces, in one place. Units come last in each
//! name (`_bytes`, `_ms`, `_max`). Connection-level limits protect a shard
//! from one client; shard-level limits protect the process.

use strom_flatbuffers::protocol::MESSAGE_BYTES_MAX;
use strom_flatbuffers::FRAME_BYTES_MAX;

/// Largest `total_len` a request may declare (one maximal batch + table).
pub const REQUEST_BYTES_MAX: usize = MESSAGE_BYTES_MAX;
/// Largest batch frame any topic may accept.
pub const FRAME_BYTES_LIMIT: usize = FRAME_BYTES_MAX;
/// Requests one connection may have in flight; past it the server stops
/// reading that socket (back-pressure) until an answer goes out.
pub const INFLIGHT_REQUESTS_MAX: usize = 128;
/// Connections one shard serves at once; more are accepted and closed.
pub const CONNECTIONS_PER_SHARD_MAX: usize = 10_000;
/// A connection with nothing in flight that sends nothing for this long is
/// closed.
pub const IDLE_TIMEOUT_MS: u64 = 10 * 60 * 1000;
/// Partitions one fetch may name.
pub const FETCH_PARTITIONS_MAX: usize = 1_000;
/// Batches one produce request may carry.
pub const PRODUCE_BATCHES_MAX: usize = 10_000;
/// Longest long-poll wait honoured (longer requests are clamped).
pub const FETCH_WAIT_MAX_MS: u32 = 30_000;
/// Cancels of long-poll waits that arrived before their wait, remembered
/// per shard (`crate::waits`); past it the oldest is forgotten and that
/// wait, should it still arrive, runs to its own deadline.
pub const LONG_POLL_EARLY_CANCELS_MAX: usize = 256;
/// Largest fetch response trailer.
pub const FETCH_BYTES_MAX: usize = 64 << 20;
/// Fetched bytes one connection may hold in answers not yet written to its
/// socket (a consumer that stops reading stops getting more).
pub const CONNECTION_FETCH_BYTES_MAX: usize = 64 << 20;
/// Longest produce timeout honoured.
pub const PRODUCE_TIMEOUT_MAX_MS: u32 = 5 * 60 * 1000;
/// Topics one create/delete/describe request may name.
pub const TOPICS_PER_REQUEST_MAX: usize = 1_000;
/// Partitions one topic may have.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 10_000;
/// Topics the broker holds.
pub const TOPICS_MAX: usize = 100_000;
/// Offsets partitions of a new data directory: a group's committed offsets
/// and generation live in offsets partition `crc32c(group) % n`. The count
/// is written into the metadata when the directory is created and read
/// from there ever after, so changing this constant never moves a group of
/// an existing directory. Bounds how many shards coordinate groups.
pub const OFFSETS_PARTITIONS: u32 = 16;
const _: () = assert!(OFFSETS_PARTITIONS >= 1 && OFFSETS_PARTITIONS <= PARTITIONS_PER_TOPIC_MAX);
/// Longest consumer group name.
pub const GROUP_NAME_BYTES_MAX: usize = 249;
/// Longest committed-offset metadata string.
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;
/// Initial read buffer of a connection.
pub const READ_BUFFER_BYTES: usize = 64 << 10;
/// A connection's writer gathers the answers that are ready into one send
/// of about this many bytes.
pub const WRITE_BATCH_BYTES: usize = 64 << 10;
/// Trailer buffers shorter than this are copied into the send batch; longer
/// ones (fetched data) are sent from their own buffer.
pub const WRITE_COPY_BYTES_MAX: usize = 16 << 10;
/// Messages queued on one inter-shard channel.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;
/// Most messages one mesh send carries (`router::MeshBatch`); a longer
/// queue for a peer leaves in several sends.
pub const MESH_BATCH_MESSAGES_MAX: usize = 256;
/// io_uring registered buffer memory per executor.
pub const IO_MEMORY_BYTES: usize = 2 << 20;
/// How long shutdown waits for in-flight requests before closing anyway.
pub const SHUTDOWN_DRAIN_MS: u64 = 10_000;
/// How often a shard checks the process-wide shutdown flag.
pub const SHUTDOWN_POLL_MS: u64 = 20;
/// Client-error log lines per shard per second; the rest are counted and
/// reported as `suppressed` on the next line.
pub const CLIENT_ERROR_LOGS_PER_SEC_MAX: u32 = 10;
/// How long a `/metrics` scrape waits for the other shards' snapshots.
pub const METRICS_SCRAPE_TIMEOUT_MS: u64 = 2_000;
/// Longest HTTP request head read on the metrics port.
pub const HTTP_REQUEST_BYTES_MAX: usize = 8 << 10;

/// Largest Kafka request (the 4-byte size prefix's value) a client may send.
pub const KAFKA_REQUEST_BYTES_MAX: usize = 100 << 20;
/// Kafka requests one connection may have in flight; answers go out in
/// request order, as the Kafka protocol requires.
pub const KAFKA_INFLIGHT_REQUESTS_MAX: usize = 64;
/// Idempotent-producer states (one per producer and partition) one shard
/// remembers, across all its partitions; past it the least recently
/// appended-to goes, as Kafka expires idle producer ids. About 200 bytes
/// each (five remembered batches).
pub const KAFKA_PRODUCER_STATES_PER_SHARD_MAX: usize = 100_000;
/// Recent batches remembered per producer and partition for duplicate
/// detection (Kafka's max.in.flight.requests.per.connection bound).
pub const KAFKA_PRODUCER_BATCHES_MAX: usize = 5;
const _: () = assert!(
    KAFKA_PRODUCER_STATES_PER_SHARD_MAX <= strom_engine::limits::PRODUCER_SNAPSHOT_PRODUCERS_MAX
        && KAFKA_PRODUCER_BATCHES_MAX == strom_engine::limits::PRODUCER_SNAPSHOT_BATCHES_MAX,
    "one partition's producer state always fits one snapshot file"
);
/// A producer whose last batch (its `max_timestamp_ms`) is this old is
/// forgotten: Kafka's `producer.id.expiration.ms` and its default (one day).
pub const PRODUCER_ID_EXPIRATION_MS: i64 = 86_400_000;
/// How often each shard drops expired producers: Kafka's
/// `producer.id.expiration.check.interval.ms` default (10 minutes).
pub const PRODUCER_ID_EXPIRATION_CHECK_MS: u64 = 600_000;
/// A partition gets a new producer-state snapshot once this many bytes
/// were appended since its last one (or a segment rolled, or at a clean
/// close), so that a restart replays at most about this much of its log to
/// rebuild producer state (the engine's checkpoint interval).
pub const PRODUCER_SNAPSHOT_INTERVAL_BYTES: u64 = 64 << 20;
/// How often each shard looks for partitions due a producer-state snapshot.
pub const PRODUCER_SNAPSHOT_CHECK_MS: u64 = 1_000;
/// Reads one fetch may chain over the empty frames compaction leaves
/// (`ops::owner::read_past_gaps`) before it answers with what it has.
pub const FETCH_GAP_READS_MAX: usize = 64;
/// How often each shard's cleaner looks for compacted partitions with a
/// pass due (`min.cleanable.dirty.ratio`, `max.compaction.lag.ms`).
pub const CLEANER_CHECK_MS: u64 = 1_000;
/// The cleaner's I/O budget per shard: bytes read plus written per second
/// (passes run one at a time per shard). A pass also yields after every
/// 1 MiB chunk, so produce and fetch on the shard interleave with it.
pub const CLEANER_IO_BYTES_PER_SEC: u64 =
    strom_engine::compaction::DEFAULT_CLEANER_IO_BYTES_PER_SEC;
/// Memory of one pass's key -> offset map (passes run one at a time per
/// shard, so this bounds the cleaner's memory per shard).
pub const CLEANER_MAP_BYTES_MAX: usize = strom_engine::compaction::DEFAULT_OFFSET_MAP_BYTES_MAX;
/// After a failed producer-state snapshot, the next try of that partition
/// waits this long.
pub const PRODUCER_SNAPSHOT_RETRY_MS: u64 = 10_000;
/// Bytes one read of the replay that rebuilds producer state asks for.
pub const PRODUCER_REBUILD_READ_BYTES: usize = 1 << 20;

/// Topics one Kafka Metadata request may name.
pub const KAFKA_METADATA_TOPICS_MAX: usize = 10_000;

/// Period of each shard's keep-awake timer (bounds a lost cross-thread
/// wake-up to one period; see `shard::run`).
pub const REACTOR_NUDGE_MS: u64 = 50;

/// First wait after a failed attempt to reopen a partition whose log failed
/// (a failed write or fdatasync); each further failed attempt doubles it.
pub const PARTITION_REOPEN_BACKOFF_MIN_MS: u64 = 100;
/// Longest wait between attempts to reopen a failed partition: a disk that
/// stays broken is tried this often, for as long as the partition exists.
pub const PARTITION_REOPEN_BACKOFF_MAX_MS: u64 = 30_000;
const _: () = assert!(
    PARTITION_REOPEN_BACKOFF_MIN_MS >= 1
        && PARTITION_REOPEN_BACKOFF_MIN_MS <= PARTITION_REOPEN_BACKOFF_MAX_MS
);

/// Transactions (`crate::txn`): transactional ids the coordinator holds.
pub const TXN_IDS_MAX: usize = 100_000;
/// Bytes of one transactional id.
pub const TXN_ID_BYTES_MAX: usize = 4_096;
/// Partitions in one transaction.
pub const TXN_PARTITIONS_MAX: usize = 10_000;
/// Consumer groups in one transaction.
pub const TXN_GROUPS_MAX: usize = 64;
/// Pending offsets in one transaction.
pub const TXN_OFFSETS_MAX: usize = 10_000;
/// Bytes of one transaction log record (a larger state is refused).
pub const TXN_RECORD_BYTES_MAX: usize = 4 << 20;
/// Kafka's `transaction.max.timeout.ms` default: 15 minutes.
pub const TXN_MAX_TIMEOUT_MS: u32 = 900_000;
/// Kafka's `transactional.id.expiration.ms` default: 7 days.
pub const TXN_ID_EXPIRATION_MS: u64 = 7 * 24 * 3_600_000;
/// How often the coordinator looks for timed-out transactions, expired
/// ids and unfinished markers.
pub const TXN_TICK_MS: u64 = 500;
/// Compact the transaction log when it holds this many times more
/// records than live ids, and at least `TXN_LOG_COMPACT_RECORDS_MIN`.
pub const TXN_LOG_COMPACT_FACTOR: u64 = 4;
pub const TXN_LOG_COMPACT_RECORDS_MIN: u64 = 10_000;
