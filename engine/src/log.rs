//! The partition log: an ordered list of segments on a [`Storage`], written
//! with block-aligned direct writes, read through a tail cache, recovered
//! from a checkpoint after a crash.
//!
//! The log is a state machine mutated in synchronous sections
//! ([`Log::try_append`], [`Log::request_write`], [`Log::sync_target`],
//! [`Log::complete_sync`], [`Log::complete_job`], [`Log::read_now`]); the
//! I/O they need leaves as [`Job`]s ([`Log::take_jobs`]) that a driver runs
//! without holding the log, in any order, and feeds back. The partition
//! shell runs each job as a task; this type's async methods (`append`,
//! `write_pending`, `flush`, `read`, ...) drive the same sections with the
//! jobs run inline.
//!
//! Invariants (asserted where cheap, checked by the simulation otherwise):
//! - Offsets are dense: segment `i+1` starts at the offset after the last
//!   record of segment `i`; frames inside a segment follow each other with no
//!   gap, in bytes and in offsets.
//! - `durable_offset <= written_offset <= next_offset` and
//!   `log_start_offset <= next_offset`; in bytes of the active segment,
//!   `durable_len <= written_frame_len <= written_len <= len_bytes`. Asserted
//!   wherever one of them changes (`assert_offsets`).
//! - `written_len` moves only over the contiguous prefix of completed writes
//!   (`in_flight`, oldest first; writes complete in any order).
//! - No two writes in flight overlap: a write (a full buffer, or the tail
//!   block rewritten) is issued only when no write in flight covers its
//!   first block, so an older write of a block never lands after a newer one.
//! - A sync publishes a durable offset only if nothing cut or replaced the
//!   active segment since its target was taken: roll and truncation bump
//!   `sync_epoch`, and `complete_sync` ignores targets of an older epoch.
//!   While a segment closed by a roll is not synced (`closing`), nothing
//!   past it is published durable: syncs of the new segment are deferred.
//! - A roll switches to the prepared next file only when the active segment
//!   is completely written; the closed segment's sync, truncation, index
//!   files, the rename of `next.segment` and the checkpoint are jobs, in that
//!   order; recovery adopts `next.segment` or removes it.
//! - A failed fdatasync or data write fails the log (fsyncgate: the kernel
//!   may have dropped the dirty data, and a retried fdatasync would succeed
//!   without it); so do a truncation that failed half-way and a failed
//!   closing job of a roll. A failed log refuses appends, writes, syncs,
//!   truncation, retention, DeleteRecords and close with
//!   `EngineError::Failed` until it is reopened and recovered from the disk;
//!   reads of what it holds go on. `append` never reports an error for a
//!   frame it appended (a job failing afterwards fails the log instead).
//! - One checkpoint job at a time, none while a roll closes a segment; a
//!   checkpoint written inline waits for the job, so an older checkpoint
//!   never replaces a newer one.
//! - The cache budgets bound the memory cached frames hold (see `cache.rs`).
//! - Bytes of the active segment below `written_len` are on disk; bytes from
//!   `align_down(written_len)` up to `len_bytes` live in the pending write
//!   buffers. A block that was written partially is rewritten whole by the
//!   next write (the tail block), never padded with a gap inside the log.
//! - A disk read started by `read_now` is installed only if no truncation or
//!   deletion ran meanwhile (`read_epoch`).
//! - Every frame returned by `read` passed `verify_stored` (checksums) either
//!   on append (cache) or when read from disk. A corrupt frame is an error,
//!   never data.
//! - Closed segments are truncated to their exact length, fully synced, and
//!   have index files, before the checkpoint moves past them.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use strom_flatbuffers::{stamp_base_offset, validate_incoming, FrameHeader, FrameLimits};

use crate::cache::TailCache;
use crate::checkpoint::{Checkpoint, CheckpointError, CHECKPOINT_FILE};
use crate::config::{FlushPolicy, LogConfig};
use crate::error::EngineError;
use crate::index::SegmentIndex;
use crate::limits::*;
use crate::scan::{scan, ScanStop};
use crate::storage::{align_down, align_up, Storage, StorageFile, WriteBuf, BLOCK_BYTES};

/// What an append assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: u64,
    pub last_offset: u64,
    pub append_time_ms: i64,
}

/// What one fdatasync of the active segment covers: taken by
/// [`Log::sync_target`] after `write_pending`, handed back with the sync's
/// result to [`Log::complete_sync`].
#[derive(Debug)]
pub struct SyncTarget<F> {
    pub file: Rc<F>,
    /// Offsets below this are covered once the sync succeeds.
    pub offset: u64,
    /// Bytes of the active segment covered.
    pub len_bytes: u64,
    /// `Log::sync_epoch` when the target was taken.
    epoch: u64,
}

/// Why [`Log::try_append`] could not append now; the driver waits (without
/// holding the log) and tries again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// `unwritten_bytes_max` is reached: wait for a write to complete.
    Write,
    /// The segment needs more preallocated space, or a roll needs the next
    /// segment file (or the previous roll's jobs): wait for a job.
    Space,
}

/// The outcome of [`Log::try_append`].
#[derive(Debug)]
pub enum AppendStep {
    Done(AppendInfo),
    /// Not appended; the frame is handed back.
    Blocked(BytesMut, Blocked),
}

/// Identifies a job for [`Log::complete_job`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobId {
    /// A data write of the active segment (its sequence number).
    Write(u64),
    /// A fallocate of the active segment to `target` bytes; `foreground`
    /// if an append waits for it (its error is the append's).
    Prealloc { target: u64, foreground: bool },
    /// Index files and checkpoint at a recovery point.
    Checkpoint,
    /// Creating and preallocating the next segment file (`NEXT_SEGMENT_FILE`).
    PrepareSegment,
    /// The fdatasync of a segment closed by a roll.
    CloseSync,
    /// A group-commit fdatasync of the active segment (its sequence number;
    /// see [`Log::request_sync`]).
    Sync(u64),
    /// Truncation to size and index files of a segment closed by a roll,
    /// the rename of the new active file to its name, then the checkpoint.
    CloseFinish,
}

/// The file a roll switches to, created ahead under a fixed name (its base
/// offset is known only at the roll). Recovery adopts it when its first
/// frame continues the log, and removes it otherwise.
pub const NEXT_SEGMENT_FILE: &str = "next.segment";

/// The next segment file, prepared in the background.
enum NextSegment<F> {
    None,
    /// The job fills the slot with the created, preallocated file.
    Preparing(Rc<RefCell<Option<(F, u64)>>>),
    Ready {
        file: Rc<F>,
        preallocated_len: u64,
    },
}

/// A segment closed by a roll whose fdatasync, truncation, index files and
/// the checkpoint after it are still running as jobs. All its data was
/// written before the switch; it is read from its file meanwhile.
struct Closing<F> {
    base: u64,
    file: Rc<F>,
    len: u64,
    /// The offset after its last record (the new active segment's base).
    end_offset: u64,
    /// Its fdatasync completed: offsets up to `end_offset` are durable.
    synced: bool,
    /// A sync of the new active segment completed first: (offset, length)
    /// it made durable, published once this segment is synced.
    deferred_durable: Option<(u64, u64)>,
}

/// I/O the log started: the driver runs `fut` without holding the log and
/// hands the result to [`Log::complete_job`] (in any order).
pub struct Job {
    pub id: JobId,
    pub fut: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), EngineError>>>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({:?})", self.id)
    }
}

/// A data write in flight: `pos..phys_end` on disk, data up to `end`.
#[derive(Debug)]
struct InFlight {
    seq: u64,
    pos: u64,
    phys_end: u64,
    end: u64,
    done: bool,
}

/// What a read needs next ([`Log::read_now`]).
pub enum ReadStep<F> {
    Done(Result<ReadBatch, EngineError>),
    /// Read these bytes of a segment file (holding nothing), hand them to
    /// [`Log::offer_read_ahead`], and ask again.
    Fetch {
        file: Rc<F>,
        segment_base: u64,
        position: u64,
        len: usize,
        epoch: u64,
    },
    /// The read needs the log across awaits (a segment to open or index,
    /// the unwritten tail, a failed log): use [`Log::read`].
    Exclusive,
}

/// Frames returned by a read, whole and verified.
#[derive(Debug, Clone, Default)]
pub struct ReadBatch {
    pub frames: Vec<Bytes>,
    pub high_watermark: u64,
    pub log_start_offset: u64,
}

impl ReadBatch {
    pub fn bytes(&self) -> usize {
        self.frames.iter().map(|f| f.len()).sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offsets {
    pub log_start_offset: u64,
    /// The offset the next append gets (Kafka's log end offset; readers see
    /// everything below it).
    pub high_watermark: u64,
    /// Offsets below this are fdatasync'd.
    pub durable_offset: u64,
    /// Offsets below this have been handed to the disk (survive a process
    /// crash, not a power loss).
    pub written_offset: u64,
}

/// What recovery did at open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// No checkpoint file and no segment: a new, empty log was created.
    pub created: bool,
    /// The last close was clean (true for a created log: nothing to recover).
    pub clean_shutdown: bool,
    pub segments: usize,
    pub scanned_bytes: u64,
    /// Bytes of torn or corrupt data cut from the end of the log.
    pub truncated_bytes: u64,
    pub truncation_reason: Option<String>,
    /// Zeros past the end of the log (write padding, preallocated space)
    /// trimmed from the active segment: not data.
    pub trimmed_zero_bytes: u64,
    pub rebuilt_indexes: usize,
    pub removed_segments: usize,
    /// Producer-state snapshots past the recovered end of the log, removed
    /// (they name batches the log no longer holds).
    pub removed_producer_snapshots: usize,
    /// Compaction swaps committed before a crash and finished at open.
    pub finished_swaps: usize,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    pub appended_frames: u64,
    pub appended_bytes: u64,
    pub writes: u64,
    pub fdatasyncs: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub disk_read_bytes: u64,
    pub segments: u64,
    pub log_bytes: u64,
    /// Active segments closed and replaced by a new one.
    pub segments_rolled: u64,
    /// Segments removed by retention or DeleteRecords.
    pub segments_deleted: u64,
    /// Cleaned segments swapped in by compaction.
    pub segments_cleaned: u64,
}

struct Segment<F> {
    base_offset: u64,
    file: Option<Rc<F>>,
    len_bytes: u64,
    /// Loaded lazily for closed segments; always present for the active one.
    index: Option<SegmentIndex>,
    /// When the first frame was appended in this process (for roll by age).
    first_append_ms: Option<i64>,
}

/// Write state of the active segment.
struct Pending<B> {
    /// The buffer being filled; starts at file position `buf_pos` (aligned).
    buf: Option<B>,
    buf_pos: u64,
    buf_fill: usize,
    /// Buffers waiting to be written, in order: (position, buffer, end of
    /// the data in it). Issued as soon as no write in flight overlaps them.
    sealed: VecDeque<(u64, B, u64)>,
    /// End of the data handed to `sealed` or to writes.
    issued_len: u64,
    /// Bytes of the partial last block (`len % BLOCK`), kept to start the
    /// next buffer when `buf` is None.
    tail: Vec<u8>,
    /// Frame ends not yet written: (end position, next offset).
    frame_ends: VecDeque<(u64, u64)>,
}

struct ReadAhead {
    segment_base: u64,
    position: u64,
    bytes: Bytes,
}

pub struct Log<S: Storage> {
    storage: S,
    dir: PathBuf,
    config: LogConfig,
    limits: FrameLimits,
    segments: BTreeMap<u64, Segment<S::File>>,
    pending: Pending<<S::File as StorageFile>::Buf>,
    /// Data writes in flight, oldest first (they may complete in any order;
    /// `written_len` moves over the contiguous prefix of completed ones).
    in_flight: VecDeque<InFlight>,
    next_write_seq: u64,
    /// Offsets below this should be written: a tail write is issued
    /// whenever the partial block can be written and this is not reached.
    write_wanted: u64,
    /// Jobs started and not yet taken by a driver.
    jobs: Vec<Job>,
    /// The target of a fallocate in flight.
    prealloc_in_flight: Option<u64>,
    /// The error of a foreground fallocate, for the append that waited.
    prealloc_error: Option<EngineError>,
    /// A checkpoint job is in flight: (checkpoint it writes).
    checkpoint_in_flight: Option<Checkpoint>,
    next_segment: NextSegment<S::File>,
    /// The error of the last failed preparation of the next segment, for
    /// the append that needs it.
    next_segment_error: Option<EngineError>,
    closing: Option<Closing<S::File>>,
    next_offset: u64,
    log_start_offset: u64,
    written_offset: u64,
    /// End of the last complete frame written.
    written_frame_len: u64,
    /// Bytes of the active segment handed to the disk.
    written_len: u64,
    durable_offset: u64,
    durable_len: u64,
    /// Bumped whenever the active segment is replaced (roll) or cut
    /// (truncation): a sync target of an older epoch may not publish.
    sync_epoch: u64,
    checkpoint: Checkpoint,
    unflushed_bytes: u64,
    oldest_unflushed_ms: Option<i64>,
    /// The tail cache, shared with the partition shell (which serves reads
    /// from it without waiting for the log); borrowed, never across an await.
    cache: Rc<RefCell<TailCache>>,
    read_ahead: Option<ReadAhead>,
    /// Bumped whenever segment bytes may change under a read in flight
    /// (truncation, deletion): a disk read started before is not installed.
    read_epoch: u64,
    preallocated_len: u64,
    /// When the last preallocation step of the active segment started
    /// (decides whether the next one writes zeros).
    last_prealloc_ms: i64,
    failed: Option<String>,
    /// The failure may have left memory and disk disagreeing (a truncation
    /// failed half-way): reads are refused too.
    failed_unreadable: bool,
    stats: LogStats,
    /// Group commit: the highest offset (exclusive) a caller wants durable.
    sync_wanted: u64,
    /// Group-commit fdatasyncs in flight, oldest first (at most
    /// [`SYNCS_IN_FLIGHT_MAX`]).
    syncs: Vec<SyncInFlight<S::File>>,
    sync_seq: u64,
    /// Finished group-commit fdatasyncs not yet taken by the shell
    /// ([`Log::take_sync_outcomes`]); bounded by the shell taking them after
    /// every section.
    sync_outcomes: Vec<SyncOutcome>,
}

/// A group-commit fdatasync in flight.
struct SyncInFlight<F> {
    seq: u64,
    target: SyncTarget<F>,
    /// Offsets it makes durable beyond what was durable or covered when it
    /// started (the group it commits).
    records: u64,
    /// Its duration, set by the job when the fdatasync returns.
    took_us: Rc<std::cell::Cell<u64>>,
}

/// How one group-commit fdatasync ended, for the shell's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    Synced { took_us: u64, records: u64 },
    Failed,
}

/// Group-commit fdatasyncs of one log in flight at once: a caller arriving
/// during a sync starts the next one instead of waiting a whole round, and
/// the rest wait for one of these two.
pub const SYNCS_IN_FLIGHT_MAX: usize = 2;

pub use crate::cache::{set_shard_cache_bytes_max, shard_cache_bytes};

pub fn segment_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.log")
}

fn index_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.index")
}

fn time_index_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.timeindex")
}

/// Parses `<20 digits>.log`; anything else is not a segment.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl<S: Storage> Log<S> {
    /// Opens (or creates) the log in `dir`, recovering after an unclean stop.
    /// `_now_ms` keeps the verbs' common clock argument; recovery needs no time.
    pub async fn open(
        storage: S,
        dir: &Path,
        config: LogConfig,
        _now_ms: i64,
    ) -> Result<(Self, RecoveryReport), EngineError> {
        config.validate()?;
        storage.create_dir_all(dir).await?;
        let mut report = RecoveryReport::default();
        let cp_path = dir.join(CHECKPOINT_FILE);
        let cp_bytes = storage.read_all(&cp_path, META_FILE_BYTES_MAX).await?;
        let had_checkpoint_file = cp_bytes.is_some();
        let checkpoint = match cp_bytes {
            None => None,
            Some(bytes) => match Checkpoint::decode(&bytes) {
                Ok(c) => Some(c),
                Err(CheckpointError::UnsupportedVersion { found }) => {
                    return Err(EngineError::UnsupportedFormat {
                        path: cp_path,
                        found,
                        supported: crate::checkpoint::CHECKPOINT_VERSION,
                    })
                }
                // A damaged checkpoint costs a full scan, never data.
                Err(_) => None,
            },
        };
        let names = storage.list(dir).await?;
        let mut bases: Vec<u64> = Vec::new();
        for name in &names {
            if name.ends_with(crate::storage::TMP_SUFFIX)
                || name.ends_with(crate::compaction::CLEANED_SUFFIX)
            {
                // A cleaned segment not committed by its rename to `.swap`:
                // the pass rolls back, the old segment stays.
                storage.remove(&dir.join(name)).await?;
            } else if let Some(base) = parse_segment_file_name(name) {
                bases.push(base);
            } else if let Some(base) = crate::compaction::parse_swap_file_name(name) {
                // A committed swap that crashed before its rename over the
                // old segment: finish it (indexes of the old one first).
                remove_index_files(&storage, dir, base).await?;
                storage
                    .rename(&dir.join(name), &dir.join(segment_file_name(base)))
                    .await?;
                report.finished_swaps += 1;
                bases.push(base);
            }
        }
        bases.sort_unstable();
        bases.dedup();
        // The next segment file a roll prepared: a roll that switched to it
        // may have crashed before renaming it (its first frame then follows
        // the last named segment; recovery checks that offsets continue).
        // Otherwise it is empty, or not part of the log: remove it.
        if names.iter().any(|n| n == NEXT_SEGMENT_FILE) {
            let path = dir.join(NEXT_SEGMENT_FILE);
            let first = first_frame_base(&storage, &path).await?;
            match (first, bases.last()) {
                (Some(b), Some(&last)) if b > last => {
                    storage
                        .rename(&path, &dir.join(segment_file_name(b)))
                        .await?;
                    bases.push(b);
                }
                _ => storage.remove(&path).await?,
            }
        }
        let cp = checkpoint.unwrap_or(Checkpoint {
            log_start_offset: bases.first().copied().unwrap_or(0),
            recovery_segment_base: bases.first().copied().unwrap_or(0),
            recovery_position: 0,
            recovery_offset: bases.first().copied().unwrap_or(0),
            clean: false,
        });
        // A damaged checkpoint still counts as unclean; only a directory with
        // neither a checkpoint nor a segment is a new log.
        report.created = !had_checkpoint_file && bases.is_empty();
        report.clean_shutdown = cp.clean || report.created;
        let log_start = cp.log_start_offset;

        // Segments entirely below the log start were deleted by retention
        // after the checkpoint advanced; finish the job.
        while bases.len() >= 2 && bases[1] <= log_start {
            let base = bases.remove(0);
            remove_segment_files(&storage, dir, base).await?;
            report.removed_segments += 1;
        }

        let mut log = Log {
            storage: storage.clone(),
            dir: dir.to_path_buf(),
            limits: FrameLimits {
                frame_bytes_max: config.frame_bytes_max,
                records_max: strom_flatbuffers::frame::FRAME_RECORDS_MAX,
            },
            config,
            segments: BTreeMap::new(),
            pending: Pending::empty(),
            in_flight: VecDeque::new(),
            next_write_seq: 0,
            write_wanted: 0,
            jobs: Vec::new(),
            prealloc_in_flight: None,
            prealloc_error: None,
            checkpoint_in_flight: None,
            next_segment: NextSegment::None,
            next_segment_error: None,
            closing: None,
            next_offset: 0,
            log_start_offset: log_start,
            written_offset: 0,
            written_frame_len: 0,
            written_len: 0,
            durable_offset: 0,
            durable_len: 0,
            sync_epoch: 0,
            checkpoint: cp,
            unflushed_bytes: 0,
            oldest_unflushed_ms: None,
            cache: Rc::new(RefCell::new(TailCache::default())),
            read_ahead: None,
            read_epoch: 0,
            preallocated_len: 0,
            last_prealloc_ms: 0,
            failed: None,
            failed_unreadable: false,
            stats: LogStats::default(),
            sync_wanted: 0,
            syncs: Vec::new(),
            sync_seq: 0,
            sync_outcomes: Vec::new(),
        };

        if bases.is_empty() {
            let base = log_start.max(cp.recovery_offset);
            let file = storage.create(&dir.join(segment_file_name(base))).await?;
            log.segments.insert(
                base,
                Segment {
                    base_offset: base,
                    file: Some(Rc::new(file)),
                    len_bytes: 0,
                    index: Some(SegmentIndex::new()),
                    first_append_ms: None,
                },
            );
            log.next_offset = base;
            log.log_start_offset = log_start.max(base);
        } else {
            for &base in &bases {
                let path = dir.join(segment_file_name(base));
                let file = storage
                    .open(&path)
                    .await?
                    .ok_or_else(|| EngineError::Corrupt {
                        path: path.clone(),
                        position: 0,
                        reason: "segment vanished during open".into(),
                    })?;
                let len = file.size().await?;
                log.segments.insert(
                    base,
                    Segment {
                        base_offset: base,
                        file: Some(Rc::new(file)),
                        len_bytes: len,
                        index: None,
                        first_append_ms: None,
                    },
                );
            }
            log.recover(&bases, &mut report).await?;
        }
        report.segments = log.segments.len();
        log.written_offset = log.next_offset;
        log.durable_offset = log.next_offset;
        let active_len = log.active().len_bytes;
        log.written_len = active_len;
        log.written_frame_len = active_len;
        log.durable_len = active_len;
        // Keep the partial tail block to start the next write buffer.
        let tail_len = (active_len % BLOCK_BYTES as u64) as usize;
        if tail_len > 0 {
            let file = log.active_file();
            let tail = file.read_at(align_down(active_len), tail_len).await?;
            log.pending.tail = tail.to_vec();
        }
        log.log_start_offset = log.log_start_offset.min(log.next_offset);
        // Producer-state snapshots past the recovered end describe frames
        // the log no longer holds; they go before anything is appended at
        // those offsets again (a crash before this removes them next time:
        // the end cannot grow before they are gone).
        for offset in crate::producer_snapshot::snapshots_past(&names, log.next_offset) {
            let name = crate::producer_snapshot::producer_snapshot_file_name(offset);
            storage.remove(&dir.join(name)).await?;
            report.removed_producer_snapshots += 1;
        }
        // A new checkpoint: recovery point at the end, not clean any more.
        log.write_checkpoint(false).await?;
        log.check_invariants();
        Ok((log, report))
    }

    /// Scans from the recovery point, truncates at the first torn or corrupt
    /// frame, loads or rebuilds the active segment's index.
    async fn recover(
        &mut self,
        bases: &[u64],
        report: &mut RecoveryReport,
    ) -> Result<(), EngineError> {
        let cp = self.checkpoint;
        let last_base = *bases.last().expect("at least one segment");
        let mut stop_here: Option<(u64, u64)> = None; // (segment base, valid len)
        let mut next_offset = cp.recovery_offset;
        let start_i = bases
            .iter()
            .rposition(|&b| b <= cp.recovery_segment_base)
            .unwrap_or(0);
        for (i, &base) in bases.iter().enumerate().skip(start_i) {
            let seg_len = self.segments[&base].len_bytes;
            let (from_pos, from_offset) =
                if base == cp.recovery_segment_base && cp.recovery_position <= seg_len {
                    (cp.recovery_position, cp.recovery_offset)
                } else if base == cp.recovery_segment_base {
                    // The segment was truncated after the checkpoint was written
                    // (truncate_to, then a crash before the new checkpoint): the
                    // recovery point is void, scan the whole segment.
                    (0, base)
                } else {
                    (0, base)
                };
            if i > start_i && base != next_offset {
                // A segment that does not continue the offsets: drop it and what follows.
                stop_here = Some((bases[i - 1], self.segments[&bases[i - 1]].len_bytes));
                report.truncation_reason =
                    Some(format!("segment {base} does not start at {next_offset}"));
                break;
            }
            let is_last = base == last_base;
            let need_index = is_last;
            // Load the checkpointed index of this segment when it is the active one.
            let mut index = None;
            if need_index {
                index = self.load_index_file(base, seg_len).await?;
                if let Some(ix) = index.as_mut() {
                    if ix.covered_bytes > from_pos && from_offset >= base {
                        // A checkpoint job writes the index files, then the
                        // checkpoint: a crash in between leaves an index
                        // past the recovery point (of durable data). Cut it
                        // back to the point instead of rebuilding it all.
                        ix.truncate_to_position(from_pos, (from_offset - base) as u32);
                    }
                    if ix.covered_bytes != from_pos {
                        index = None;
                    }
                }
            }
            let (scan_from_pos, scan_from_offset, mut ix) = match index {
                Some(ix) => (from_pos, from_offset, Some(ix)),
                None if need_index => {
                    report.rebuilt_indexes += 1;
                    (0, base, Some(SegmentIndex::new()))
                }
                None => (from_pos, from_offset, None),
            };
            let (valid_end, end_offset, reason) = self
                .scan_segment(
                    base,
                    scan_from_pos,
                    scan_from_offset,
                    seg_len,
                    ix.as_mut(),
                    report,
                )
                .await?;
            next_offset = end_offset;
            if valid_end < seg_len && reason.is_none() && bases.get(i + 1) == Some(&end_offset) {
                // A segment closed by a roll that crashed before its
                // truncation: preallocated zeros past its end, and the next
                // segment continues exactly there. Trim it and go on.
                let seg = self.segments.get_mut(&base).expect("segment");
                seg.file.as_ref().expect("open").truncate(valid_end).await?;
                seg.len_bytes = valid_end;
                report.trimmed_zero_bytes += seg_len - valid_end;
                if let Some(ix) = ix {
                    seg.index = Some(ix);
                }
                continue;
            }
            if valid_end < seg_len {
                if reason.is_some() {
                    report.truncated_bytes += seg_len - valid_end;
                    report.truncation_reason = reason;
                } else {
                    report.trimmed_zero_bytes += seg_len - valid_end;
                }
                stop_here = Some((base, valid_end));
                if let Some(ix) = ix {
                    self.segments.get_mut(&base).expect("segment").index = Some(ix);
                }
                break;
            }
            if let Some(ix) = ix {
                self.segments.get_mut(&base).expect("segment").index = Some(ix);
            }
        }
        if let Some((base, valid_len)) = stop_here {
            // Drop every later segment: its offsets would not be dense.
            let later: Vec<u64> = self.segments.range(base + 1..).map(|(&b, _)| b).collect();
            for b in later {
                self.segments.remove(&b);
                remove_segment_files(&self.storage, &self.dir, b).await?;
                report.removed_segments += 1;
            }
            let seg = self.segments.get_mut(&base).expect("segment");
            if seg.len_bytes != valid_len {
                seg.file.as_ref().expect("open").truncate(valid_len).await?;
                seg.len_bytes = valid_len;
            }
            if seg.index.is_none() {
                // The stop segment becomes active: rebuild its index by a
                // full scan, and believe the scan, not the checkpoint, about
                // where its valid data ends (damage below the recovery
                // point must truncate here, not crash the next append).
                let mut ix = SegmentIndex::new();
                let len = seg.len_bytes;
                let (end, end_offset, reason) = self
                    .scan_segment(base, 0, base, len, Some(&mut ix), report)
                    .await?;
                let seg = self.segments.get_mut(&base).expect("segment");
                if end < len {
                    seg.file.as_ref().expect("open").truncate(end).await?;
                    seg.len_bytes = end;
                    if reason.is_some() {
                        report.truncated_bytes += len - end;
                        report.truncation_reason = reason;
                    } else {
                        report.trimmed_zero_bytes += len - end;
                    }
                }
                seg.index = Some(ix);
                next_offset = end_offset;
                report.rebuilt_indexes += 1;
            }
        }
        // next_offset comes from the scan of the last segment kept.
        self.next_offset = next_offset;
        // The data we scanned came from the device; make it durable before the
        // checkpoint says so.
        self.active_file().fdatasync().await?;
        Ok(())
    }

    /// Scans `[from_pos, seg_len)` of a segment in chunks, verifying frames and
    /// feeding `index`. Returns (valid end, next offset, truncation reason).
    async fn scan_segment(
        &mut self,
        base: u64,
        from_pos: u64,
        from_offset: u64,
        seg_len: u64,
        mut index: Option<&mut SegmentIndex>,
        report: &mut RecoveryReport,
    ) -> Result<(u64, u64, Option<String>), EngineError> {
        let file = self.segments[&base].file.clone().expect("open");
        let interval = self.config.index_interval_bytes;
        let mut pos = from_pos;
        let mut expected = from_offset;
        let mut chunk = DEFAULT_READ_AHEAD_BYTES;
        while pos < seg_len {
            let want = chunk.min((seg_len - pos) as usize);
            let buf = file.read_at(pos, want).await?;
            report.scanned_bytes += buf.len() as u64;
            let (frames, stop) = scan(&buf, pos, expected);
            for f in &frames {
                if f.next_offset - base > u64::from(u32::MAX) {
                    // Relative offsets are u32: a frame claiming offsets past
                    // that cannot belong to this segment (a forged file).
                    let reason = format!(
                        "frame at byte {} spans past the segment's offset range",
                        f.position
                    );
                    return Ok((f.position, expected, Some(reason)));
                }
                if let Some(ix) = index.as_deref_mut() {
                    ix.observe(
                        (f.base_offset - base) as u32,
                        f.position,
                        f.len_bytes,
                        f.max_timestamp_ms,
                        interval,
                    );
                }
                expected = f.next_offset;
                pos = f.position + f.len_bytes;
            }
            match stop {
                ScanStop::End => {}
                ScanStop::Incomplete { needed_bytes } => {
                    if pos + needed_bytes > seg_len {
                        return Ok((pos, expected, Some(format!("torn frame at byte {pos}"))));
                    }
                    chunk = chunk.max(needed_bytes as usize);
                }
                // Zeros: the end of written data (write padding or preallocated
                // space), not damage; no truncation reason.
                ScanStop::Zeros => return Ok((pos, expected, None)),
                ScanStop::NewerVersion { found } => {
                    return Err(EngineError::UnsupportedFormat {
                        path: self.dir.join(segment_file_name(base)),
                        found: u32::from(found),
                        supported: u32::from(strom_flatbuffers::frame::FRAME_VERSION),
                    })
                }
                ScanStop::Corrupt(e) => {
                    return Ok((
                        pos,
                        expected,
                        Some(format!("corrupt frame at byte {pos}: {e}")),
                    ))
                }
                ScanStop::OffsetGap { expected: x, found } => {
                    return Ok((
                        pos,
                        expected,
                        Some(format!(
                            "offset gap at byte {pos}: expected {x}, found {found}"
                        )),
                    ))
                }
            }
            if buf.len() < want {
                return Ok((pos, expected, Some(format!("short read at byte {pos}"))));
            }
        }
        Ok((pos, expected, None))
    }

    async fn load_index_file(
        &self,
        base: u64,
        seg_len: u64,
    ) -> Result<Option<SegmentIndex>, EngineError> {
        let o = self
            .storage
            .read_all(&self.dir.join(index_file_name(base)), 64 << 20)
            .await?;
        let t = self
            .storage
            .read_all(&self.dir.join(time_index_file_name(base)), 64 << 20)
            .await?;
        match (o, t) {
            (Some(o), Some(t)) => Ok(SegmentIndex::decode(&o, &t, base, seg_len).ok()),
            _ => Ok(None),
        }
    }

    fn active(&self) -> &Segment<S::File> {
        self.segments
            .values()
            .next_back()
            .expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment<S::File> {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has an active segment")
    }

    fn active_file(&self) -> Rc<S::File> {
        self.active()
            .file
            .clone()
            .expect("the active segment is open")
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Changes the configuration; takes effect from the next operation.
    pub fn set_config(&mut self, config: LogConfig) -> Result<(), EngineError> {
        config.validate()?;
        self.limits.frame_bytes_max = config.frame_bytes_max;
        self.config = config;
        Ok(())
    }

    pub fn offsets(&self) -> Offsets {
        Offsets {
            log_start_offset: self.log_start_offset,
            high_watermark: self.next_offset,
            durable_offset: self.durable_offset,
            written_offset: self.written_offset,
        }
    }

    pub fn stats(&self) -> LogStats {
        let mut s = self.stats;
        s.segments = self.segments.len() as u64;
        s.log_bytes = self.segments.values().map(|s| s.len_bytes).sum();
        let cache = self.cache.borrow();
        s.cache_hits = cache.hits;
        s.cache_misses = cache.misses;
        s
    }

    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// The segments the cleaner may read and rewrite (I/O-free): closed,
    /// synced and indexed ones, below the checkpoint's recovery segment and
    /// never the active one, from the first segment on, in order.
    pub fn compaction_segments(&self) -> Vec<crate::compaction::SegmentStat> {
        let active = self.active().base_offset;
        let limit = self.checkpoint.recovery_segment_base.min(active);
        let mut out = Vec::new();
        let mut iter = self.segments.range(..limit).peekable();
        while let Some((&base, seg)) = iter.next() {
            let end = match iter.peek() {
                Some((&next, _)) => next,
                None => match self.segments.range(base + 1..).next() {
                    Some((&next, _)) => next,
                    None => break,
                },
            };
            out.push(crate::compaction::SegmentStat {
                base_offset: base,
                end_offset: end,
                len_bytes: seg.len_bytes,
                max_timestamp_ms: seg.index.as_ref().map(|ix| ix.max_timestamp_ms),
            });
        }
        out
    }

    /// Swaps a cleaned segment in place of `<base>.log` (exclusive: the
    /// caller holds the log with no job in flight). If the segment changed
    /// since the pass planned it (retention, DeleteRecords), the cleaned
    /// file is removed and `Ok(false)` returned. Steps: rename
    /// `<base>.log.cleaned` to `<base>.log.swap` (the commit point: from
    /// here recovery finishes the swap), remove the old indexes, rename
    /// the swap file over `<base>.log`, write the new indexes. A failure
    /// after the commit point fails the log (reopen finishes the swap).
    pub async fn install_cleaned(
        &mut self,
        c: &crate::compaction::CleanedSegment,
    ) -> Result<bool, EngineError> {
        use crate::compaction::{cleaned_file_name, swap_file_name};
        self.check_not_failed()?;
        let base = c.base_offset;
        let cleaned = self.dir.join(cleaned_file_name(base));
        let current = self
            .segments
            .get(&base)
            .is_some_and(|s| s.len_bytes == c.old_len_bytes)
            && base < self.checkpoint.recovery_segment_base
            && base != self.active().base_offset
            && base >= self.segments.keys().next().copied().unwrap_or(u64::MAX);
        if !current {
            self.storage.remove(&cleaned).await?;
            return Ok(false);
        }
        assert_eq!(
            c.index.covered_bytes, c.new_len_bytes,
            "the index covers the cleaned segment"
        );
        let swap = self.dir.join(swap_file_name(base));
        self.storage.rename(&cleaned, &swap).await?;
        match self.finish_swap(base, c).await {
            Ok(()) => {
                self.stats.segments_cleaned += 1;
                Ok(true)
            }
            Err(e) => {
                self.fail_unreadable(format!("compaction swap of segment {base} failed: {e}"));
                Err(e)
            }
        }
    }

    async fn finish_swap(
        &mut self,
        base: u64,
        c: &crate::compaction::CleanedSegment,
    ) -> Result<(), EngineError> {
        // Readers in flight hold the old file; nothing they read is
        // installed after this (read epoch).
        self.read_epoch += 1;
        if self
            .read_ahead
            .as_ref()
            .is_some_and(|r| r.segment_base == base)
        {
            self.read_ahead = None;
        }
        {
            let seg = self.segments.get_mut(&base).expect("checked");
            seg.file = None;
            seg.index = None;
        }
        remove_index_files(&self.storage, &self.dir, base).await?;
        let path = self.dir.join(segment_file_name(base));
        self.storage
            .rename(
                &self.dir.join(crate::compaction::swap_file_name(base)),
                &path,
            )
            .await?;
        let file = self
            .storage
            .open(&path)
            .await?
            .ok_or_else(|| EngineError::Corrupt {
                path: path.clone(),
                position: 0,
                reason: "cleaned segment vanished after its swap".into(),
            })?;
        write_index_files(
            &self.storage,
            &self.dir,
            base,
            &c.index,
            c.new_len_bytes,
            u32::MAX,
        )
        .await?;
        let end = self
            .segments
            .range(base + 1..)
            .next()
            .map(|(&b, _)| b)
            .expect("a cleaned segment is never the last");
        let seg = self.segments.get_mut(&base).expect("checked");
        seg.file = Some(Rc::new(file));
        seg.len_bytes = c.new_len_bytes;
        seg.index = Some(c.index.clone());
        // Cached frames of the old segment hold records the cleaner
        // removed: readers of those offsets go to the new file.
        self.cache.borrow_mut().trim_front(end);
        Ok(())
    }

    /// Fails the log: it refuses appends, writes, syncs, truncation and
    /// close until it is reopened (the first reason is kept).
    pub fn fail(&mut self, reason: String) {
        if self.failed.is_none() {
            tracing::error!(
                dir = %self.dir.display(),
                reason = %reason,
                "partition log failed; it refuses writes until it is reopened"
            );
            self.failed = Some(reason);
            self.cache.borrow_mut().failed = true;
        }
    }

    /// Fails the log and refuses reads as well: for a failure after which
    /// memory may not describe the files any more.
    fn fail_unreadable(&mut self, reason: String) {
        self.fail(reason);
        self.failed_unreadable = true;
    }

    fn check_not_failed(&self) -> Result<(), EngineError> {
        match &self.failed {
            Some(reason) => Err(EngineError::Failed {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Validates and appends one producer frame, assigning its offsets. The
    /// frame is stamped in place, kept in the tail cache, and copied once into
    /// aligned write buffers; it is not yet on disk (see `write_pending`,
    /// `flush`). Runs every job it needs inline (see [`Log::try_append`]).
    pub async fn append(
        &mut self,
        frame: BytesMut,
        now_ms: i64,
    ) -> Result<AppendInfo, EngineError> {
        let mut frame = frame;
        loop {
            match self.try_append(frame, now_ms)? {
                AppendStep::Done(info) => {
                    // The frame is appended: a job that fails now fails the
                    // log, and the next operation reports it.
                    let _ = self.drive_jobs().await;
                    return Ok(info);
                }
                AppendStep::Blocked(f, why) => {
                    frame = f;
                    let _ = why;
                    self.drive_jobs().await?;
                    self.check_not_failed()?;
                }
            }
        }
    }

    /// Appends one frame now, or says what it waits for (synchronous: the
    /// caller holds the log only for this call). Full buffers are handed to
    /// write jobs at once; a fallocate step ahead is started as a job once
    /// half of the current step is used. The driver runs the jobs
    /// ([`Log::take_jobs`]) and, when blocked, waits for a completion (or
    /// runs [`Log::roll_if_due`]) before trying again.
    pub fn try_append(
        &mut self,
        mut frame: BytesMut,
        now_ms: i64,
    ) -> Result<AppendStep, EngineError> {
        self.check_not_failed()?;
        if frame.len() > self.config.frame_bytes_max {
            return Err(EngineError::FrameTooLarge {
                len_bytes: frame.len(),
                max_bytes: self.config.frame_bytes_max,
            });
        }
        // What may block is decided first: a blocked append is tried again
        // after each completion, and validation (checksums, FlatBuffers
        // verification of up to `frame_bytes_max` bytes) runs only once it
        // can go on.
        let frame_len = frame.len() as u64;
        if self.should_roll(frame_len, now_ms) {
            if let Some(why) = self.try_switch_segment(now_ms)? {
                return Ok(AppendStep::Blocked(frame, why));
            }
        }
        // Reserve disk space first: ENOSPC is reported here, before any state changes.
        let active_len = self.active().len_bytes;
        let need = align_up(active_len + frame_len);
        let step = self.config.preallocate_bytes.max(BLOCK_BYTES as u64);
        if need > self.preallocated_len {
            if let Some(e) = self.prealloc_error.take() {
                return Err(e);
            }
            if self.prealloc_in_flight.is_none() {
                let target = align_up(need.div_ceil(step) * step)
                    .min(align_up(self.config.segment_bytes).max(need));
                self.last_prealloc_ms = now_ms;
                self.start_prealloc(target, true, false);
            }
            return Ok(AppendStep::Blocked(frame, Blocked::Space));
        }
        // Reserve the next step in the background once half of the current
        // one is used, so appends rarely wait for fallocate.
        let segment_cap = align_up(self.config.segment_bytes);
        if self.prealloc_in_flight.is_none()
            && self.preallocated_len < segment_cap
            && self.preallocated_len - need < step / 2
        {
            let target = (self.preallocated_len + step).min(segment_cap);
            // Zeros only for a partition that fills its steps slowly (a
            // latency-sensitive rate far below the disk's): there they make
            // every small write a plain overwrite. A bulk writer would wait
            // for zeros it then overwrites at once, writing its bytes twice.
            let zeros =
                now_ms.saturating_sub(self.last_prealloc_ms) >= ZERO_FILL_STEP_INTERVAL_MS_MIN;
            self.last_prealloc_ms = now_ms;
            self.start_prealloc(target, false, zeros);
        }
        // Back-pressure: wait for writes before more than
        // `unwritten_bytes_max` waits for the disk.
        let unwritten = self.unwritten_bytes();
        if unwritten > 0 && unwritten + frame_len > self.config.unwritten_bytes_max as u64 {
            self.request_write(self.next_offset);
            return Ok(AppendStep::Blocked(frame, Blocked::Write));
        }
        let summary = validate_incoming(&frame, &self.limits)?;
        let base_offset = self.next_offset;
        stamp_base_offset(&mut frame, base_offset);
        let frame = frame.freeze();
        let header = FrameHeader::ref_from(&frame).expect("validated frame has a header");
        let next = header.next_offset();
        debug_assert_eq!(header.record_count.get(), summary.record_count);
        self.copy_into_buffers(&frame);
        let interval = self.config.index_interval_bytes;
        let seg = self.active_mut();
        let position = seg.len_bytes;
        let rel = (base_offset - seg.base_offset) as u32;
        seg.index.as_mut().expect("active index").observe(
            rel,
            position,
            frame_len,
            summary.max_timestamp_ms,
            interval,
        );
        seg.len_bytes += frame_len;
        seg.first_append_ms.get_or_insert(now_ms);
        let end = seg.len_bytes;
        self.pending.frame_ends.push_back((end, next));
        self.next_offset = next;
        self.unflushed_bytes += frame_len;
        self.oldest_unflushed_ms.get_or_insert(now_ms);
        self.stats.appended_frames += 1;
        self.stats.appended_bytes += frame_len;
        self.cache_push(frame);
        // Full buffers go to the disk now, while the next appends are copied.
        self.issue_writes();
        self.maybe_prepare_next_segment();
        self.assert_offsets();
        Ok(AppendStep::Done(AppendInfo {
            base_offset,
            last_offset: next - 1,
            append_time_ms: now_ms,
        }))
    }

    /// Starts a fallocate of the active segment to `target` (after checking
    /// the disk reserve) as a job.
    fn start_prealloc(&mut self, target: u64, foreground: bool, zeros: bool) {
        debug_assert!(self.prealloc_in_flight.is_none());
        let more = target.saturating_sub(self.preallocated_len);
        let storage = self.storage.clone();
        let dir = self.dir.clone();
        let reserve = self.config.disk_reserve_bytes;
        let file = self.active_file();
        // No data lies at or past `preallocated_len` (appends wait for
        // space), so zeros may go there. Never for a foreground step: an
        // append waiting for space should not also wait for the zeros.
        debug_assert!(!(foreground && zeros));
        let zeros_from = self.preallocated_len;
        self.prealloc_in_flight = Some(target);
        self.jobs.push(Job {
            id: JobId::Prealloc { target, foreground },
            fut: Box::pin(async move {
                check_disk_reserve(&storage, &dir, reserve, more).await?;
                file.pre_allocate(target).await?;
                if zeros {
                    file.write_zeros(zeros_from, target).await?;
                }
                Ok(())
            }),
        });
    }

    /// Rolls the segment if `should_roll` says so for a frame of `frame_len`
    /// bytes, and runs the roll's jobs inline.
    pub async fn roll_if_due(&mut self, frame_len: u64, now_ms: i64) -> Result<(), EngineError> {
        self.check_not_failed()?;
        if self.should_roll(frame_len, now_ms) {
            self.roll(now_ms).await?;
        }
        Ok(())
    }

    /// Starts preparing the next segment file once the active one is
    /// `NEXT_SEGMENT_PREPARE_PERCENT` full (at once with `segment_ms`).
    fn maybe_prepare_next_segment(&mut self) {
        if !matches!(self.next_segment, NextSegment::None)
            || self.closing.is_some()
            || self.next_segment_error.is_some()
            || self.failed.is_some()
        {
            return;
        }
        let len = self.active().len_bytes;
        if self.config.segment_ms.is_some()
            || len.saturating_mul(100)
                >= self
                    .config
                    .segment_bytes
                    .saturating_mul(NEXT_SEGMENT_PREPARE_PERCENT)
        {
            self.start_prepare_next_segment();
        }
    }

    fn start_prepare_next_segment(&mut self) {
        debug_assert!(matches!(self.next_segment, NextSegment::None));
        debug_assert!(
            self.closing.is_none(),
            "the previous next file is renamed first"
        );
        let slot = Rc::new(RefCell::new(None));
        self.next_segment = NextSegment::Preparing(slot.clone());
        let storage = self.storage.clone();
        let dir = self.dir.clone();
        let reserve = self.config.disk_reserve_bytes;
        let step = self
            .config
            .preallocate_bytes
            .max(BLOCK_BYTES as u64)
            .min(align_up(self.config.segment_bytes));
        self.jobs.push(Job {
            id: JobId::PrepareSegment,
            fut: Box::pin(async move {
                check_disk_reserve(&storage, &dir, reserve, step).await?;
                let file = storage.create(&dir.join(NEXT_SEGMENT_FILE)).await?;
                file.pre_allocate(step).await?;
                file.write_zeros(0, step).await?;
                *slot.borrow_mut() = Some((file, step));
                Ok(())
            }),
        });
    }

    /// The roll itself, synchronous: once the next file is prepared and
    /// every byte of the active segment is written, the next file becomes
    /// the active segment, and the closed one's fdatasync starts as a job
    /// (its truncation, index files, the rename of the new file and the
    /// checkpoint follow as another). Otherwise says what to wait for.
    fn try_switch_segment(&mut self, now_ms: i64) -> Result<Option<Blocked>, EngineError> {
        if self.closing.is_some() {
            // The previous roll's jobs are still running.
            return Ok(Some(Blocked::Space));
        }
        match &self.next_segment {
            NextSegment::None => {
                if let Some(e) = self.next_segment_error.take() {
                    return Err(e);
                }
                self.start_prepare_next_segment();
                return Ok(Some(Blocked::Space));
            }
            NextSegment::Preparing(_) => return Ok(Some(Blocked::Space)),
            NextSegment::Ready { .. } => {}
        }
        if self.written_offset < self.next_offset
            || !self.in_flight.is_empty()
            || !self.pending.sealed.is_empty()
        {
            self.request_write(self.next_offset);
            return Ok(Some(Blocked::Write));
        }
        if self.prealloc_in_flight.is_some() {
            // A fallocate of the closing file must land before its truncation.
            return Ok(Some(Blocked::Space));
        }
        let NextSegment::Ready {
            file,
            preallocated_len,
        } = std::mem::replace(&mut self.next_segment, NextSegment::None)
        else {
            unreachable!("checked above")
        };
        let old_base = self.active().base_offset;
        let old_len = self.active().len_bytes;
        let old_file = self.active_file();
        let new_base = self.next_offset;
        assert_eq!(
            self.written_offset, new_base,
            "a roll closes a written segment"
        );
        assert_eq!(self.written_frame_len, old_len);
        self.segments.insert(
            new_base,
            Segment {
                base_offset: new_base,
                file: Some(file),
                len_bytes: 0,
                index: Some(SegmentIndex::new()),
                first_append_ms: None,
            },
        );
        self.closing = Some(Closing {
            base: old_base,
            file: old_file.clone(),
            len: old_len,
            end_offset: new_base,
            synced: self.durable_offset == new_base,
            deferred_durable: None,
        });
        self.sync_epoch += 1;
        self.pending = Pending::empty();
        self.written_len = 0;
        self.written_frame_len = 0;
        self.durable_len = 0;
        self.preallocated_len = preallocated_len;
        self.stats.segments_rolled += 1;
        self.jobs.push(Job {
            id: JobId::CloseSync,
            fut: Box::pin(async move { Ok(old_file.fdatasync().await?) }),
        });
        self.close_excess_files();
        self.assert_offsets();
        tracing::info!(
            dir = %self.dir.display(),
            closed_base_offset = old_base,
            closed_bytes = old_len,
            new_base_offset = new_base,
            now_ms,
            "segment rolled"
        );
        Ok(None)
    }

    /// The closed segment is synced: publish its end as durable (and what a
    /// sync of the new segment made durable meanwhile), then start the job
    /// that truncates it, writes its index files, renames the new file to
    /// its name and writes the checkpoint at the new segment's start.
    fn closed_segment_synced(&mut self) {
        let c = self.closing.as_mut().expect("closing");
        c.synced = true;
        let (base, len, end_offset, file) = (c.base, c.len, c.end_offset, c.file.clone());
        let deferred = c.deferred_durable.take();
        self.durable_offset = self.durable_offset.max(end_offset);
        if let Some((offset, l)) = deferred {
            self.mark_durable(offset, l);
        }
        if self.durable_offset >= self.next_offset {
            self.unflushed_bytes = 0;
            self.oldest_unflushed_ms = None;
        }
        self.assert_offsets();
        let index = self.segments[&base].index.as_ref().map(|ix| {
            (
                ix.encode_offsets(base, len),
                ix.encode_times(base, len, u32::MAX),
            )
        });
        let new_base = end_offset;
        let cp = Checkpoint {
            log_start_offset: self.log_start_offset,
            recovery_segment_base: new_base,
            recovery_position: 0,
            recovery_offset: new_base,
            clean: false,
        };
        let storage = self.storage.clone();
        let dir = self.dir.clone();
        self.jobs.push(Job {
            id: JobId::CloseFinish,
            fut: Box::pin(async move {
                file.truncate(len).await?;
                if let Some((o, t)) = index {
                    storage
                        .write_atomic(&dir.join(index_file_name(base)), &o)
                        .await?;
                    storage
                        .write_atomic(&dir.join(time_index_file_name(base)), &t)
                        .await?;
                }
                // Index files a truncation left under the new base are stale.
                storage.remove(&dir.join(index_file_name(new_base))).await?;
                storage
                    .remove(&dir.join(time_index_file_name(new_base)))
                    .await?;
                storage
                    .rename(
                        &dir.join(NEXT_SEGMENT_FILE),
                        &dir.join(segment_file_name(new_base)),
                    )
                    .await?;
                storage
                    .write_atomic(&dir.join(CHECKPOINT_FILE), &cp.encode())
                    .await?;
                Ok(())
            }),
        });
        self.checkpoint_in_flight = Some(cp);
    }

    /// Whether a segment closed by a roll still waits for its jobs.
    pub fn closing_segment(&self) -> bool {
        self.closing.is_some()
    }

    /// Closes the active segment and starts a new one at the next offset,
    /// running every job inline (the drivers that hold the log: this type's
    /// async methods).
    async fn roll(&mut self, now_ms: i64) -> Result<(), EngineError> {
        loop {
            match self.try_switch_segment(now_ms)? {
                None => break,
                Some(_) => self.drive_jobs().await?,
            }
            self.check_not_failed()?;
        }
        self.drive_jobs().await?;
        self.check_not_failed()?;
        Ok(())
    }

    /// Jobs started since the last call, for the driver to run.
    pub fn take_jobs(&mut self) -> Vec<Job> {
        std::mem::take(&mut self.jobs)
    }

    /// Runs every job inline, until none is left (the drivers that hold the
    /// log across awaits: this type's async methods). Returns the first
    /// error of a data write.
    async fn drive_jobs(&mut self) -> Result<(), EngineError> {
        let mut first_err = None;
        loop {
            let jobs = self.take_jobs();
            if jobs.is_empty() {
                break;
            }
            for job in jobs {
                let r = job.fut.await;
                if let (JobId::Write(_), Err(e)) = (job.id, &r) {
                    if first_err.is_none() {
                        first_err = Some(EngineError::Failed {
                            reason: format!("write failed: {e}"),
                        });
                    }
                }
                self.complete_job(job.id, r);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Takes the result of a job. A failed data write fails the log; a
    /// failed background fallocate is forgotten (the next append that needs
    /// the space takes it in the foreground), a failed foreground one is
    /// the error of the append waiting for it; a failed checkpoint leaves
    /// the previous one in place (recovery scans more).
    pub fn complete_job(&mut self, id: JobId, result: Result<(), EngineError>) {
        match id {
            JobId::Write(seq) => self.complete_write(seq, result),
            JobId::Prealloc { target, foreground } => {
                debug_assert_eq!(self.prealloc_in_flight, Some(target));
                self.prealloc_in_flight = None;
                match result {
                    Ok(()) => self.preallocated_len = self.preallocated_len.max(target),
                    Err(e) if foreground => self.prealloc_error = Some(e),
                    Err(e) => {
                        tracing::debug!(dir = %self.dir.display(), error = %e, "fallocate ahead failed")
                    }
                }
            }
            JobId::Checkpoint => {
                let cp = self
                    .checkpoint_in_flight
                    .take()
                    .expect("checkpoint in flight");
                match result {
                    Ok(()) => self.checkpoint = cp,
                    Err(e) => {
                        tracing::warn!(dir = %self.dir.display(), error = %e, "checkpoint failed")
                    }
                }
            }
            JobId::PrepareSegment => {
                let NextSegment::Preparing(slot) =
                    std::mem::replace(&mut self.next_segment, NextSegment::None)
                else {
                    panic!("a prepared segment without its job")
                };
                match result {
                    Ok(()) => {
                        let (file, preallocated_len) = slot.borrow_mut().take().expect("filled");
                        self.next_segment = NextSegment::Ready {
                            file: Rc::new(file),
                            preallocated_len,
                        };
                    }
                    Err(e) => self.next_segment_error = Some(e),
                }
            }
            JobId::CloseSync => match result {
                Ok(()) => {
                    self.stats.fdatasyncs += 1;
                    if self.failed.is_none() {
                        self.closed_segment_synced();
                    } else {
                        self.closing = None;
                    }
                }
                Err(e) => {
                    // fsyncgate, as for any fdatasync.
                    self.fail(format!("fdatasync of a closed segment failed: {e}"));
                    self.closing = None;
                }
            },
            JobId::Sync(seq) => self.complete_group_sync(seq, result),
            JobId::CloseFinish => {
                let cp = self.checkpoint_in_flight.take().expect("its checkpoint");
                self.closing = None;
                match result {
                    Ok(()) => self.checkpoint = cp,
                    // The closed segment may keep its preallocated tail and
                    // the new one its prepared name: a reopen repairs both.
                    Err(e) => self.fail(format!("closing a rolled segment failed: {e}")),
                }
                self.maybe_prepare_next_segment();
            }
        }
        // A write, a roll's sync or a sync completed: a group commit may be
        // due (or possible again).
        self.issue_syncs();
    }

    /// Group commit, decided here: asks for every offset below `upto` to
    /// become durable. Writes what is not written yet; an fdatasync starts
    /// once something written is neither durable nor covered by a sync in
    /// flight, at most [`SYNCS_IN_FLIGHT_MAX`] at a time. Every caller that
    /// asks while two syncs run is committed together by the next one, and
    /// the next one starts as soon as a sync or a write completes (in
    /// [`Log::complete_job`]), so no caller has to elect itself the syncer.
    /// The driver runs the jobs and waits for `durable_offset`.
    pub fn request_sync(&mut self, upto: u64) {
        let upto = upto.min(self.next_offset);
        self.sync_wanted = self.sync_wanted.max(upto);
        self.request_write(self.sync_wanted);
        self.issue_syncs();
    }

    /// What the group-commit syncs in flight of the current epoch cover.
    fn sync_covered(&self) -> u64 {
        self.syncs
            .iter()
            .filter(|s| s.target.epoch == self.sync_epoch)
            .map(|s| s.target.offset)
            .max()
            .unwrap_or(0)
    }

    /// Starts a group-commit fdatasync if one is wanted and would cover
    /// something new (see [`Log::request_sync`]).
    fn issue_syncs(&mut self) {
        if self.failed.is_some() || self.syncs.len() >= SYNCS_IN_FLIGHT_MAX {
            return;
        }
        if self
            .closing
            .as_ref()
            .is_some_and(|c| !c.synced && self.written_offset <= c.end_offset)
        {
            // Nothing of the new segment is written: the closed segment's
            // own fdatasync (a job) publishes its end.
            return;
        }
        let wanted = self.sync_wanted.min(self.next_offset);
        let done = self.durable_offset.max(self.sync_covered());
        if wanted <= self.durable_offset || wanted <= done || self.written_offset <= done {
            return;
        }
        // Larger groups: with a sync already running, a second one waits
        // until what is wanted is written (or no write is in flight), so it
        // covers the appends whose writes are on their way instead of
        // starting one sync per write completion. The first sync never
        // waits, so a stream of appends cannot starve the syncs.
        let writes_pending = self.in_flight.iter().any(|w| !w.done);
        if !self.syncs.is_empty() && self.written_offset < wanted && writes_pending {
            return;
        }
        let target = self.sync_target();
        let records = target.offset - done;
        let took_us = Rc::new(std::cell::Cell::new(0));
        let (file, took) = (target.file.clone(), took_us.clone());
        self.sync_seq += 1;
        let seq = self.sync_seq;
        self.syncs.push(SyncInFlight {
            seq,
            target,
            records,
            took_us,
        });
        self.jobs.push(Job {
            id: JobId::Sync(seq),
            fut: Box::pin(async move {
                let started = std::time::Instant::now();
                let r = file.fdatasync().await;
                took.set(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
                r.map_err(EngineError::from)
            }),
        });
    }

    /// Takes the result of a group-commit fdatasync: as [`Log::complete_sync`].
    fn complete_group_sync(&mut self, seq: u64, result: Result<(), EngineError>) {
        let i = self
            .syncs
            .iter()
            .position(|s| s.seq == seq)
            .expect("a sync in flight");
        let sync = self.syncs.remove(i);
        match result {
            Err(e) => {
                self.fail(format!("fdatasync failed: {e}"));
                self.sync_outcomes.push(SyncOutcome::Failed);
            }
            Ok(()) => {
                self.stats.fdatasyncs += 1;
                if sync.target.epoch == self.sync_epoch && self.failed.is_none() {
                    self.mark_durable(sync.target.offset, sync.target.len_bytes);
                }
                self.sync_outcomes.push(SyncOutcome::Synced {
                    took_us: sync.took_us.get(),
                    records: sync.records,
                });
            }
        }
    }

    /// Group-commit fdatasyncs finished since the last call (for statistics).
    pub fn take_sync_outcomes(&mut self) -> Vec<SyncOutcome> {
        std::mem::take(&mut self.sync_outcomes)
    }

    fn should_roll(&self, frame_len: u64, now_ms: i64) -> bool {
        let a = self.active();
        if a.len_bytes == 0 {
            return false;
        }
        if a.len_bytes + frame_len > self.config.segment_bytes {
            return true;
        }
        match (self.config.segment_ms, a.first_append_ms) {
            (Some(ms), Some(first)) => {
                now_ms.saturating_sub(first) >= i64::try_from(ms).unwrap_or(i64::MAX)
            }
            _ => false,
        }
    }

    fn copy_into_buffers(&mut self, mut bytes: &[u8]) {
        // Size buffers by the whole frame, not by what is left of it: a
        // 1.05 MB frame must not leave a 64 KiB buffer behind that turns every
        // other write into a small one.
        let frame_len = bytes.len();
        let active_len = self.active().len_bytes;
        let file = self.active_file();
        let p = &mut self.pending;
        while !bytes.is_empty() {
            if p.buf.is_none() {
                // A new buffer starts at the block holding the log's end so
                // far (this frame's bytes already copied included); `tail`
                // holds that block's bytes.
                let end_now = active_len + (frame_len - bytes.len()) as u64;
                let start = align_down(end_now);
                debug_assert_eq!(p.tail.len() as u64, end_now - start);
                let want = align_up((p.tail.len() + frame_len) as u64) as usize;
                let max = self.config.write_buffer_bytes.max(WRITE_BUFFER_BYTES_MIN);
                // End buffers on multiples of the buffer size, so that full
                // buffers land as aligned `max`-byte writes.
                let to_boundary = (max as u64 - start % max as u64) as usize;
                let cap = want.clamp(WRITE_BUFFER_BYTES_MIN, max).min(to_boundary);
                debug_assert!(cap > p.tail.len() && cap.is_multiple_of(BLOCK_BYTES));
                let mut buf = file.alloc_buf(cap);
                buf.as_mut_slice()[..p.tail.len()].copy_from_slice(&p.tail);
                p.buf_fill = p.tail.len();
                p.buf_pos = start;
                p.buf = Some(buf);
            }
            let buf = p.buf.as_mut().expect("buffer");
            let room = buf.len() - p.buf_fill;
            let n = room.min(bytes.len());
            buf.as_mut_slice()[p.buf_fill..p.buf_fill + n].copy_from_slice(&bytes[..n]);
            p.buf_fill += n;
            bytes = &bytes[n..];
            if p.buf_fill == buf.len() {
                // Full buffers end on a block boundary: no partial block.
                let full = p.buf.take().expect("buffer");
                let end = p.buf_pos + full.len() as u64;
                p.issued_len = end;
                p.sealed.push_back((p.buf_pos, full, end));
                p.tail.clear();
                p.buf_fill = 0;
            }
        }
    }

    /// Hands every pending buffer to the disk and waits for the writes.
    /// Afterwards everything appended survives a process crash.
    pub async fn write_pending(&mut self) -> Result<(), EngineError> {
        self.check_not_failed()?;
        let target = self.next_offset;
        loop {
            self.request_write(target);
            if self.jobs.is_empty() {
                break;
            }
            self.drive_jobs().await?;
        }
        self.check_not_failed()?;
        assert!(
            self.written_offset >= target,
            "write_pending left data behind"
        );
        Ok(())
    }

    /// Asks for every offset below `upto` to be written: issues what can be
    /// issued now (synchronous); the rest is issued as earlier writes
    /// complete ([`Log::complete_job`]). The driver runs the jobs.
    pub fn request_write(&mut self, upto: u64) {
        self.write_wanted = self.write_wanted.max(upto.min(self.next_offset));
        self.issue_writes();
    }

    /// Whether a write of blocks from `pos` would overlap a write in flight
    /// (the tail block of the previous write): it must wait, or an older
    /// write of that block could land after the newer one.
    fn overlaps_in_flight(&self, pos: u64) -> bool {
        self.in_flight.iter().any(|w| !w.done && w.phys_end > pos)
    }

    /// Issues the sealed buffers that overlap no write in flight, in order;
    /// then, if offsets below `write_wanted` wait in the partial buffer, seals
    /// it as a tail write (its partial block is rewritten by the next one).
    fn issue_writes(&mut self) {
        if self.failed.is_some() {
            return;
        }
        loop {
            if let Some(&(pos, _, _)) = self.pending.sealed.front() {
                if self.overlaps_in_flight(pos) {
                    return;
                }
                let (pos, buf, end) = self.pending.sealed.pop_front().expect("front");
                self.start_write(pos, buf, end);
                continue;
            }
            if self.written_offset >= self.write_wanted || self.pending.buf.is_none() {
                return;
            }
            let fill = self.pending.buf_fill;
            let pos = self.pending.buf_pos;
            let end = pos + fill as u64;
            if end <= self.pending.issued_len || self.overlaps_in_flight(pos) {
                return;
            }
            let mut buf = self.pending.buf.take().expect("buffer");
            // The next buffer restarts at the partial block, from `tail`.
            let block_start = align_down(fill as u64) as usize;
            self.pending.tail = buf.as_slice()[block_start..fill].to_vec();
            self.pending.buf_fill = 0;
            let padded = align_up(fill as u64) as usize;
            buf.trim_to(padded);
            // Buffers are not zeroed on allocation: zero the padding.
            buf.as_mut_slice()[fill..padded].fill(0);
            self.pending.issued_len = end;
            self.pending.sealed.push_back((pos, buf, end));
        }
    }

    fn start_write(&mut self, pos: u64, buf: <S::File as StorageFile>::Buf, end: u64) {
        let phys_end = pos + buf.len() as u64;
        debug_assert!(!self.overlaps_in_flight(pos));
        debug_assert!(self.in_flight.back().is_none_or(|w| w.end <= end));
        let seq = self.next_write_seq;
        self.next_write_seq += 1;
        let ticket = self.active_file().spawn_write(buf, pos);
        self.in_flight.push_back(InFlight {
            seq,
            pos,
            phys_end,
            end,
            done: false,
        });
        self.stats.writes += 1;
        self.jobs.push(Job {
            id: JobId::Write(seq),
            fut: Box::pin(async move { ticket.await.map_err(EngineError::from) }),
        });
    }

    /// A data write completed. `written_len` only moves forward over the
    /// contiguous prefix of completed writes; a failure fails the log.
    fn complete_write(&mut self, seq: u64, result: Result<(), EngineError>) {
        let w = self
            .in_flight
            .iter_mut()
            .find(|w| w.seq == seq)
            .expect("a write in flight");
        w.done = true;
        if let Err(e) = result {
            // The buffer is gone and the write may have landed in part; only
            // a reopen (recovery) can rebuild a consistent view of the tail.
            let pos = w.pos;
            self.fail(format!("write at byte {pos} failed: {e}"));
        }
        while self.in_flight.front().is_some_and(|w| w.done) {
            let w = self.in_flight.pop_front().expect("front");
            if self.failed.is_none() {
                self.mark_written(w.end);
            }
        }
        self.issue_writes();
    }

    /// Bytes up to `end` of the active segment are on the disk.
    fn mark_written(&mut self, end: u64) {
        self.written_len = self.written_len.max(end);
        while let Some(&(e, next)) = self.pending.frame_ends.front() {
            if e <= self.written_len {
                self.written_offset = next;
                self.written_frame_len = e;
                self.pending.frame_ends.pop_front();
            } else {
                break;
            }
        }
        self.assert_offsets();
    }

    /// Waits for every job (a background fallocate included). Must run
    /// before the active file is truncated or closed, so a late fallocate
    /// cannot grow a file after it was cut to its exact length.
    async fn settle_prealloc(&mut self) -> Result<(), EngineError> {
        self.drive_jobs().await?;
        debug_assert!(self.prealloc_in_flight.is_none());
        if let Some(e) = self.prealloc_error.take() {
            return Err(e);
        }
        Ok(())
    }

    fn unwritten_bytes(&self) -> u64 {
        self.active().len_bytes - self.written_len
    }

    /// What an fdatasync of the active file now covers. Call after
    /// `write_pending`; run the fdatasync (the log may be used meanwhile) and
    /// hand its result to [`Log::complete_sync`].
    pub fn sync_target(&self) -> SyncTarget<S::File> {
        SyncTarget {
            file: self.active_file(),
            offset: self.written_offset,
            len_bytes: self.written_frame_len,
            epoch: self.sync_epoch,
        }
    }

    /// Takes the result of an fdatasync of `target`. A failure fails the
    /// log (fsyncgate: the dirty data may be gone, and a retried fdatasync
    /// would succeed without it) and is returned. A success publishes the
    /// target's durable offset unless a roll or truncation came in between
    /// (then it publishes nothing: the roll synced everything itself, the
    /// truncation may have cut what the target covers).
    pub fn complete_sync(
        &mut self,
        target: &SyncTarget<S::File>,
        result: Result<(), crate::io_error::IoError>,
    ) -> Result<(), EngineError> {
        if let Err(e) = result {
            self.fail(format!("fdatasync failed: {e}"));
            return Err(e.into());
        }
        self.stats.fdatasyncs += 1;
        if target.epoch == self.sync_epoch {
            self.mark_durable(target.offset, target.len_bytes);
        }
        Ok(())
    }

    /// Bytes up to `len` and offsets below `offset` of the active segment
    /// (same epoch) are durable.
    fn mark_durable(&mut self, offset: u64, len: u64) {
        if let Some(c) = self.closing.as_mut().filter(|c| !c.synced) {
            // Offsets of the new segment are durable only once everything
            // before them is: wait for the closed segment's fdatasync.
            let (o, l) = c.deferred_durable.unwrap_or((0, 0));
            c.deferred_durable = Some((o.max(offset), l.max(len)));
            return;
        }
        assert!(
            offset <= self.written_offset && len <= self.written_frame_len,
            "durable ({offset}, {len}) past written ({}, {})",
            self.written_offset,
            self.written_frame_len
        );
        // Targets of one epoch grow together; syncs may complete out of order.
        self.durable_offset = self.durable_offset.max(offset);
        self.durable_len = self.durable_len.max(len);
        if self.durable_offset >= self.next_offset {
            self.unflushed_bytes = 0;
            self.oldest_unflushed_ms = None;
        }
        self.assert_offsets();
    }

    /// Write everything pending and fdatasync; returns the durable offset.
    pub async fn flush(&mut self, _now_ms: i64) -> Result<u64, EngineError> {
        // A roll's jobs first: the closed segment's sync publishes its end.
        self.drive_jobs().await?;
        self.check_not_failed()?;
        self.write_pending().await?;
        let target = self.sync_target();
        if target.offset > self.durable_offset {
            let result = target.file.fdatasync().await;
            self.complete_sync(&target, result)?;
        }
        self.maybe_checkpoint().await?;
        Ok(self.durable_offset)
    }

    /// Whether the flush policy wants an fdatasync now.
    pub fn flush_due(&self, now_ms: i64) -> bool {
        if self.next_offset == self.durable_offset {
            return false;
        }
        match self.config.flush {
            FlushPolicy::EveryAppend => true,
            FlushPolicy::IntervalMs(ms) => self
                .oldest_unflushed_ms
                .is_some_and(|t| now_ms.saturating_sub(t) >= i64::try_from(ms).unwrap_or(i64::MAX)),
            FlushPolicy::Bytes(b) => self.unflushed_bytes >= b,
            FlushPolicy::Never => false,
        }
    }

    /// Writes a checkpoint (and the active index) once enough durable bytes
    /// accumulated past the last one, bounding the next recovery scan.
    pub async fn maybe_checkpoint(&mut self) -> Result<(), EngineError> {
        self.start_checkpoint_if_due();
        self.drive_jobs().await
    }

    /// Starts a checkpoint job (index files of the active segment up to the
    /// durable point, then the checkpoint) once `checkpoint_interval_bytes`
    /// of durable data accumulated past the last one. One at a time; the
    /// index is encoded now (synchronously), so appends go on meanwhile.
    pub fn start_checkpoint_if_due(&mut self) {
        if self.checkpoint_in_flight.is_some() || self.closing.is_some() || self.failed.is_some() {
            return;
        }
        let active_base = self.active().base_offset;
        let behind = if self.checkpoint.recovery_segment_base == active_base {
            self.durable_len
                .saturating_sub(self.checkpoint.recovery_position)
        } else {
            u64::MAX
        };
        if behind < self.config.checkpoint_interval_bytes {
            return;
        }
        let (cp, o, t) = self.checkpoint_at_durable_point(false);
        self.checkpoint_in_flight = Some(cp);
        let storage = self.storage.clone();
        let dir = self.dir.clone();
        let base = cp.recovery_segment_base;
        self.jobs.push(Job {
            id: JobId::Checkpoint,
            fut: Box::pin(async move {
                storage
                    .write_atomic(&dir.join(index_file_name(base)), &o)
                    .await?;
                storage
                    .write_atomic(&dir.join(time_index_file_name(base)), &t)
                    .await?;
                storage
                    .write_atomic(&dir.join(CHECKPOINT_FILE), &cp.encode())
                    .await?;
                Ok(())
            }),
        });
    }

    /// The checkpoint at the durable point of the active segment, and the
    /// encoded offset and time index files covering up to it.
    fn checkpoint_at_durable_point(&self, clean: bool) -> (Checkpoint, Vec<u8>, Vec<u8>) {
        let seg = self.active();
        let base = seg.base_offset;
        let durable_len = if self.durable_offset == self.next_offset {
            seg.len_bytes
        } else {
            self.durable_len
        };
        let durable_offset = self.durable_offset.max(base);
        let ix = seg.index.as_ref().expect("active index");
        let rel_limit = (durable_offset - base) as u32;
        let o = ix.encode_offsets(base, durable_len);
        let t = ix.encode_times(base, durable_len, rel_limit);
        let cp = Checkpoint {
            log_start_offset: self.log_start_offset,
            recovery_segment_base: base,
            recovery_position: durable_len,
            recovery_offset: durable_offset,
            clean,
        };
        (cp, o, t)
    }

    /// Persists the active index up to the durable point, then the checkpoint.
    async fn write_checkpoint(&mut self, clean: bool) -> Result<(), EngineError> {
        // A checkpoint job in flight must land first: an older checkpoint
        // must never replace a newer one.
        if self.checkpoint_in_flight.is_some() {
            self.drive_jobs().await?;
        }
        let (cp, o, t) = self.checkpoint_at_durable_point(clean);
        let base = cp.recovery_segment_base;
        self.storage
            .write_atomic(&self.dir.join(index_file_name(base)), &o)
            .await?;
        self.storage
            .write_atomic(&self.dir.join(time_index_file_name(base)), &t)
            .await?;
        self.storage
            .write_atomic(&self.dir.join(CHECKPOINT_FILE), &cp.encode())
            .await?;
        self.checkpoint = cp;
        Ok(())
    }

    fn close_excess_files(&mut self) {
        let open = self.segments.values().filter(|s| s.file.is_some()).count();
        if open > OPEN_SEGMENTS_MAX {
            let n = open - OPEN_SEGMENTS_MAX;
            for seg in self.segments.values_mut().take(n) {
                seg.file = None;
                seg.index = None;
            }
        }
    }

    fn cache_push(&mut self, frame: Bytes) {
        self.cache
            .borrow_mut()
            .push(frame, self.config.cache_bytes_max);
    }

    /// Bytes cached by this log, as charged against its and the shard's budget.
    pub fn cache_bytes(&self) -> usize {
        self.cache.borrow().bytes()
    }

    /// The tail cache, for readers that must not wait for the log.
    pub fn tail_cache(&self) -> Rc<RefCell<TailCache>> {
        self.cache.clone()
    }

    /// Whole frames from the one holding `from_offset`, up to `max_bytes`
    /// (at least one frame whenever one exists at `from_offset`). A failed
    /// log serves only durable records (what a reopen will find), or nothing
    /// if its failure may have left memory disagreeing with the files.
    pub async fn read(
        &mut self,
        from_offset: u64,
        max_bytes: usize,
    ) -> Result<ReadBatch, EngineError> {
        let end = match &self.failed {
            None => self.next_offset,
            Some(reason) if self.failed_unreadable => {
                return Err(EngineError::Failed {
                    reason: reason.clone(),
                })
            }
            Some(_) => self.durable_offset,
        };
        let mut out = self.read_below(end, from_offset, max_bytes).await?;
        if end < self.next_offset {
            // Frames end on durable_offset: it is a frame boundary.
            let keep = out
                .frames
                .iter()
                .take_while(|f| FrameHeader::ref_from(f).expect("verified").next_offset() <= end)
                .count();
            out.frames.truncate(keep);
        }
        Ok(out)
    }

    /// `read` with `end` as the high watermark (`next_offset`, or less).
    async fn read_below(
        &mut self,
        end: u64,
        from_offset: u64,
        max_bytes: usize,
    ) -> Result<ReadBatch, EngineError> {
        assert!(end <= self.next_offset);
        let mut out = ReadBatch {
            frames: Vec::new(),
            high_watermark: end,
            log_start_offset: self.log_start_offset,
        };
        if from_offset < self.log_start_offset || from_offset > end {
            return Err(EngineError::OffsetOutOfRange {
                offset: from_offset,
                log_start_offset: self.log_start_offset,
                high_watermark: end,
            });
        }
        if from_offset == end {
            return Ok(out);
        }
        if let Some(frames) = self.cache.borrow_mut().read(from_offset, end, max_bytes) {
            out.frames = frames;
            return Ok(out);
        }
        self.cache.borrow_mut().misses += 1;
        self.read_from_disk(from_offset, max_bytes, &mut out)
            .await?;
        Ok(out)
    }

    /// A read as a synchronous step: served from the tail cache or the
    /// read-ahead buffer, or the disk read it needs (done by the caller
    /// without holding the log), or `Exclusive`. Returns fewer bytes than
    /// `max_bytes` when the buffer ends (at least one frame).
    pub fn read_now(&mut self, from_offset: u64, max_bytes: usize) -> ReadStep<S::File> {
        if self.failed.is_some() {
            return ReadStep::Exclusive;
        }
        let end = self.next_offset;
        let mut out = ReadBatch {
            frames: Vec::new(),
            high_watermark: end,
            log_start_offset: self.log_start_offset,
        };
        if from_offset < self.log_start_offset || from_offset > end {
            return ReadStep::Done(Err(EngineError::OffsetOutOfRange {
                offset: from_offset,
                log_start_offset: self.log_start_offset,
                high_watermark: end,
            }));
        }
        if from_offset == end {
            return ReadStep::Done(Ok(out));
        }
        if let Some(frames) = self.cache.borrow_mut().read(from_offset, end, max_bytes) {
            out.frames = frames;
            return ReadStep::Done(Ok(out));
        }
        let Some((&base, seg)) = self.segments.range(..=from_offset).next_back() else {
            return ReadStep::Exclusive;
        };
        let active_base = self.active().base_offset;
        let (Some(file), Some(index)) = (seg.file.as_ref(), seg.index.as_ref()) else {
            return ReadStep::Exclusive;
        };
        if base == active_base && self.written_offset <= from_offset {
            return ReadStep::Exclusive;
        }
        let readable_end = if base == active_base {
            self.written_frame_len
        } else {
            seg.len_bytes
        };
        let (_, mut pos) = index.lookup((from_offset - base) as u32);
        let mut need = 0usize;
        if let Some(r) = self
            .read_ahead
            .as_ref()
            .filter(|r| r.segment_base == base && r.position <= pos)
            .filter(|r| pos < r.position + r.bytes.len() as u64)
        {
            let chunk = r.bytes.slice((pos - r.position) as usize..);
            let chunk = chunk.slice(..chunk.len().min((readable_end - pos) as usize));
            let path = || self.dir.join(segment_file_name(base));
            let mut total = 0usize;
            let mut at = 0usize;
            while at + strom_flatbuffers::FRAME_HEADER_BYTES <= chunk.len()
                && out.frames.len() < READ_FRAMES_MAX
            {
                let len = match strom_flatbuffers::peek_frame_len(&chunk[at..], FRAME_BYTES_MAX) {
                    Ok(Some(len)) => len,
                    Ok(None) => break,
                    Err(e) => {
                        return ReadStep::Done(Err(EngineError::Corrupt {
                            path: path(),
                            position: pos + at as u64,
                            reason: e.to_string(),
                        }))
                    }
                };
                if at + len > chunk.len() {
                    need = len;
                    break;
                }
                let frame = chunk.slice(at..at + len);
                let header = match strom_flatbuffers::verify_stored(&frame) {
                    Ok(h) => h,
                    Err(e) => {
                        return ReadStep::Done(Err(EngineError::Corrupt {
                            path: path(),
                            position: pos + at as u64,
                            reason: e.to_string(),
                        }))
                    }
                };
                if header.next_offset() <= from_offset {
                    at += len;
                    continue;
                }
                if out.frames.is_empty() && header.base_offset() > from_offset {
                    return ReadStep::Done(Err(EngineError::Corrupt {
                        path: path(),
                        position: pos + at as u64,
                        reason: format!(
                            "index points past offset {from_offset} (frame starts at {})",
                            header.base_offset()
                        ),
                    }));
                }
                if !out.frames.is_empty() && total + len > max_bytes {
                    break;
                }
                total += len;
                at += len;
                out.frames.push(frame);
                if total >= max_bytes {
                    break;
                }
            }
            if !out.frames.is_empty() {
                self.cache.borrow_mut().misses += 1;
                return ReadStep::Done(Ok(out));
            }
            pos += at as u64;
        }
        if pos >= readable_end {
            return ReadStep::Exclusive;
        }
        let sequential = self
            .read_ahead
            .as_ref()
            .is_some_and(|r| r.segment_base == base);
        let want = if sequential {
            self.config.read_ahead_bytes
        } else {
            READ_CHUNK_BYTES_MIN
        };
        let len = want
            .max(max_bytes.min(FRAME_BYTES_MAX))
            .max(need)
            .min((readable_end - pos) as usize);
        ReadStep::Fetch {
            file: file.clone(),
            segment_base: base,
            position: pos,
            len,
            epoch: self.read_epoch,
        }
    }

    /// Installs bytes a [`ReadStep::Fetch`] read, unless the segment may
    /// have changed since (`read_epoch`).
    pub fn offer_read_ahead(&mut self, segment_base: u64, position: u64, bytes: Bytes, epoch: u64) {
        if epoch != self.read_epoch || !self.segments.contains_key(&segment_base) {
            return;
        }
        self.stats.disk_read_bytes += bytes.len() as u64;
        self.read_ahead = Some(ReadAhead {
            segment_base,
            position,
            bytes,
        });
    }

    async fn read_from_disk(
        &mut self,
        from_offset: u64,
        max_bytes: usize,
        out: &mut ReadBatch,
    ) -> Result<(), EngineError> {
        let (&base, _) = self.segments.range(..=from_offset).next_back().ok_or(
            EngineError::OffsetOutOfRange {
                offset: from_offset,
                log_start_offset: self.log_start_offset,
                high_watermark: self.next_offset,
            },
        )?;
        let active_base = self.active().base_offset;
        if base == active_base && self.written_offset <= from_offset {
            self.write_pending().await?;
        }
        self.ensure_loaded(base).await?;
        let seg = &self.segments[&base];
        let readable_end = if base == active_base {
            self.written_frame_len
        } else {
            seg.len_bytes
        };
        let rel = (from_offset - base) as u32;
        let (_, mut pos) = seg.index.as_ref().expect("loaded").lookup(rel);
        let file = seg.file.clone().expect("loaded");
        let path = self.dir.join(segment_file_name(base));
        let mut total = 0usize;
        let sequential = self
            .read_ahead
            .as_ref()
            .is_some_and(|r| r.segment_base == base);
        loop {
            if pos >= readable_end || out.frames.len() >= READ_FRAMES_MAX {
                break;
            }
            // Serve from the read-ahead buffer when it holds `pos`.
            let chunk = match &self.read_ahead {
                Some(r)
                    if r.segment_base == base
                        && r.position <= pos
                        && pos < r.position + r.bytes.len() as u64 =>
                {
                    r.bytes.slice((pos - r.position) as usize..)
                }
                _ => {
                    let want = if sequential {
                        self.config.read_ahead_bytes
                    } else {
                        READ_CHUNK_BYTES_MIN
                    };
                    let want = want
                        .max(max_bytes.min(FRAME_BYTES_MAX))
                        .min((readable_end - pos) as usize);
                    let b = file.read_at(pos, want).await?;
                    self.stats.disk_read_bytes += b.len() as u64;
                    self.read_ahead = Some(ReadAhead {
                        segment_base: base,
                        position: pos,
                        bytes: b.clone(),
                    });
                    b
                }
            };
            let chunk = chunk.slice(..chunk.len().min((readable_end - pos) as usize));
            let mut at = 0usize;
            let mut progressed = false;
            while at + strom_flatbuffers::FRAME_HEADER_BYTES <= chunk.len() {
                let len = match strom_flatbuffers::peek_frame_len(&chunk[at..], FRAME_BYTES_MAX) {
                    Ok(Some(len)) => len,
                    Ok(None) => break,
                    Err(e) => {
                        return Err(EngineError::Corrupt {
                            path,
                            position: pos + at as u64,
                            reason: e.to_string(),
                        })
                    }
                };
                if at + len > chunk.len() {
                    break;
                }
                let frame = chunk.slice(at..at + len);
                let header =
                    strom_flatbuffers::verify_stored(&frame).map_err(|e| EngineError::Corrupt {
                        path: path.clone(),
                        position: pos + at as u64,
                        reason: e.to_string(),
                    })?;
                let next = header.next_offset();
                at += len;
                progressed = true;
                if next <= from_offset {
                    continue;
                }
                if out.frames.is_empty() && header.base_offset() > from_offset {
                    // The index sent us past the offset asked for: a wrong
                    // (if checksum-valid) index must never make records
                    // vanish silently.
                    return Err(EngineError::Corrupt {
                        path,
                        position: pos + (at - len) as u64,
                        reason: format!(
                            "index points past offset {from_offset} (frame starts at {})",
                            header.base_offset()
                        ),
                    });
                }
                if !out.frames.is_empty()
                    && (total + len > max_bytes || out.frames.len() >= READ_FRAMES_MAX)
                {
                    return Ok(());
                }
                total += len;
                out.frames.push(frame);
                if total >= max_bytes {
                    return Ok(());
                }
            }
            pos += at as u64;
            if !progressed {
                // A frame larger than the chunk: read exactly it.
                let header = file
                    .read_at(pos, strom_flatbuffers::FRAME_HEADER_BYTES)
                    .await?;
                let len = match strom_flatbuffers::peek_frame_len(&header, FRAME_BYTES_MAX) {
                    Ok(Some(len)) => len,
                    Ok(None) => {
                        return Err(EngineError::Corrupt {
                            path,
                            position: pos,
                            reason: "short frame header".into(),
                        })
                    }
                    Err(e) => {
                        return Err(EngineError::Corrupt {
                            path,
                            position: pos,
                            reason: e.to_string(),
                        })
                    }
                };
                let b = file.read_at(pos, len).await?;
                self.stats.disk_read_bytes += b.len() as u64;
                self.read_ahead = Some(ReadAhead {
                    segment_base: base,
                    position: pos,
                    bytes: b,
                });
            }
        }
        Ok(())
    }

    async fn ensure_loaded(&mut self, base: u64) -> Result<(), EngineError> {
        let seg = self.segments.get(&base).expect("segment exists");
        if seg.file.is_none() {
            let path = self.dir.join(segment_file_name(base));
            let file = self
                .storage
                .open(&path)
                .await?
                .ok_or_else(|| EngineError::Corrupt {
                    path: path.clone(),
                    position: 0,
                    reason: "segment file missing".into(),
                })?;
            self.segments.get_mut(&base).expect("segment").file = Some(Rc::new(file));
        }
        if self.segments[&base].index.is_none() {
            let len = self.segments[&base].len_bytes;
            let ix = match self.load_index_file(base, len).await? {
                Some(ix) if ix.covered_bytes == len => ix,
                _ => {
                    let mut ix = SegmentIndex::new();
                    let mut report = RecoveryReport::default();
                    let (end, _, reason) = self
                        .scan_segment(base, 0, base, len, Some(&mut ix), &mut report)
                        .await?;
                    if end < len {
                        // Keep the damaged region out of every read.
                        return Err(EngineError::Corrupt {
                            path: self.dir.join(segment_file_name(base)),
                            position: end,
                            reason: reason.unwrap_or_else(|| {
                                "zeros before the end of a closed segment".to_owned()
                            }),
                        });
                    }
                    write_index_files(&self.storage, &self.dir, base, &ix, len, u32::MAX).await?;
                    ix
                }
            };
            self.segments.get_mut(&base).expect("segment").index = Some(ix);
        }
        Ok(())
    }

    /// The first offset whose record timestamp is >= `ts_ms`, or None.
    pub async fn offset_for_timestamp(&mut self, ts_ms: i64) -> Result<Option<u64>, EngineError> {
        let bases: Vec<u64> = self.segments.keys().copied().collect();
        for base in bases {
            if self.segments[&base].len_bytes == 0 {
                continue;
            }
            self.ensure_loaded(base).await?;
            let ix = self.segments[&base].index.as_ref().expect("loaded");
            if ix.max_timestamp_ms < ts_ms {
                continue;
            }
            let rel = ix.lookup_time(ts_ms);
            let seg_end = self
                .segments
                .range(base + 1..)
                .next()
                .map(|(&b, _)| b)
                .unwrap_or(self.next_offset);
            // A time entry past the segment's end (a damaged index) must not
            // send the scan past the log: start from the segment's base.
            let mut from = base.saturating_add(u64::from(rel));
            if from >= seg_end {
                from = base;
            }
            let mut from = from.max(self.log_start_offset);
            while from < seg_end {
                let batch = self.read(from, 1 << 20).await?;
                if batch.frames.is_empty() {
                    break;
                }
                for f in &batch.frames {
                    let h = FrameHeader::ref_from(f).expect("verified");
                    from = h.next_offset();
                    if h.max_timestamp_ms.get() < ts_ms {
                        continue;
                    }
                    let recs = strom_flatbuffers::records(f).map_err(EngineError::InvalidFrame)?;
                    for r in recs {
                        if r.timestamp_ms >= ts_ms && r.offset >= self.log_start_offset {
                            return Ok(Some(r.offset));
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// Deletes whole closed segments past retention; returns how many.
    /// A failed log refuses it (see `delete_records_before`).
    /// Whether [`Log::apply_retention`] could delete anything now, decided
    /// without I/O: false when no retention is set, when only the active
    /// segment exists, or when the segments' sizes and (loaded) timestamps
    /// say nothing is due. A segment whose index is not loaded counts as
    /// possibly expired. Lets the shell skip taking the log exclusively
    /// (which waits for every write in flight) on a retention tick that has
    /// nothing to do, i.e. almost every tick.
    pub fn retention_may_delete(&self, now_ms: i64) -> bool {
        if self.config.retention_bytes.is_none() && self.config.retention_ms.is_none() {
            return false;
        }
        if self.segments.len() < 2 {
            return false;
        }
        // Unknown: as old as can be, so time retention says "due".
        self.segments_due(now_ms, i64::MIN + 1) > 0
    }

    /// How many of the oldest segments retention deletes now; a segment
    /// whose index is not loaded counts with `unloaded_max_timestamp_ms`.
    fn segments_due(&self, now_ms: i64, unloaded_max_timestamp_ms: i64) -> usize {
        let infos: Vec<crate::retention::SegmentInfo> = self
            .segments
            .iter()
            .map(|(&base, seg)| crate::retention::SegmentInfo {
                base_offset: base,
                len_bytes: seg.len_bytes,
                max_timestamp_ms: seg
                    .index
                    .as_ref()
                    .map(|i| i.max_timestamp_ms)
                    .unwrap_or(unloaded_max_timestamp_ms),
            })
            .collect();
        crate::retention::segments_to_delete(
            &infos,
            self.config.retention_bytes,
            self.config.retention_ms,
            now_ms,
        )
    }

    pub async fn apply_retention(&mut self, now_ms: i64) -> Result<usize, EngineError> {
        self.check_not_failed()?;
        if self.config.retention_bytes.is_none() && self.config.retention_ms.is_none() {
            return Ok(0);
        }
        let bases: Vec<u64> = self.segments.keys().copied().collect();
        if self.config.retention_ms.is_some() {
            for &base in &bases[..bases.len().saturating_sub(1)] {
                self.ensure_loaded(base).await?;
            }
        }
        let n = self.segments_due(now_ms, i64::MIN);
        if n == 0 {
            return Ok(0);
        }
        let new_start = bases[n];
        self.advance_log_start(new_start).await?;
        tracing::info!(
            dir = %self.dir.display(),
            segments = n,
            log_start_offset = new_start,
            retention_bytes = ?self.config.retention_bytes,
            retention_ms = ?self.config.retention_ms,
            "retention deleted segments"
        );
        Ok(n)
    }

    /// Advances the log start offset (Kafka's DeleteRecords); returns it.
    /// A failed log refuses it: the start could pass the durable offset and
    /// the segments that a reopen would recover.
    pub async fn delete_records_before(&mut self, offset: u64) -> Result<u64, EngineError> {
        self.check_not_failed()?;
        if offset > self.next_offset {
            return Err(EngineError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                high_watermark: self.next_offset,
            });
        }
        if offset > self.log_start_offset {
            self.advance_log_start(offset).await?;
        }
        Ok(self.log_start_offset)
    }

    /// Persists the new start first, then deletes segments wholly below it
    /// (a crash in between leaves files that the next open removes).
    async fn advance_log_start(&mut self, new_start: u64) -> Result<(), EngineError> {
        assert!(new_start <= self.next_offset);
        let new_start = new_start.max(self.log_start_offset);
        let mut cp = self.checkpoint;
        cp.log_start_offset = new_start;
        // Persist first and change memory only on success: a failed write
        // (ENOSPC) must leave readers and the next start-up seeing the same
        // log start, not hide records that are still on disk.
        self.storage
            .write_atomic(&self.dir.join(CHECKPOINT_FILE), &cp.encode())
            .await?;
        self.checkpoint = cp;
        self.log_start_offset = new_start;
        self.assert_offsets();
        let bases: Vec<u64> = self.segments.keys().copied().collect();
        for w in bases.windows(2) {
            if w[1] <= self.log_start_offset {
                self.segments.remove(&w[0]);
                remove_segment_files(&self.storage, &self.dir, w[0]).await?;
                self.stats.segments_deleted += 1;
                if self
                    .read_ahead
                    .as_ref()
                    .is_some_and(|r| r.segment_base == w[0])
                {
                    self.read_ahead = None;
                    self.read_epoch += 1;
                    self.read_epoch += 1;
                }
            }
        }
        self.cache.borrow_mut().trim_front(self.log_start_offset);
        Ok(())
    }

    /// Removes every record at or after `offset` (rounded down to the start
    /// of the frame holding it). Returns the new high watermark. A failure
    /// half-way fails the log: memory and disk may disagree until a reopen.
    pub async fn truncate_to(&mut self, offset: u64) -> Result<u64, EngineError> {
        self.check_not_failed()?;
        if offset >= self.next_offset {
            return Ok(self.next_offset);
        }
        // Syncs in flight must not publish what this may cut, and what was
        // wanted durable past the cut is gone (its waiters see `Truncated`).
        self.sync_epoch += 1;
        self.sync_wanted = self.sync_wanted.min(offset);
        let r = self.truncate_to_inner(offset).await;
        if let Err(e) = &r {
            self.fail_unreadable(format!("truncation to offset {offset} failed: {e}"));
        }
        r
    }

    async fn truncate_to_inner(&mut self, offset: u64) -> Result<u64, EngineError> {
        let offset = offset.max(self.log_start_offset);
        self.write_pending().await?;
        self.settle_prealloc().await?;
        // Producer-state snapshots past the cut go first: a crash later in
        // the cut must not leave one naming frames that are gone. The cut
        // lands on the last frame boundary at or below `offset`, and
        // snapshots are written at frame boundaries, so one at or below
        // `offset` stays valid.
        let names = self.storage.list(&self.dir).await?;
        for snap in crate::producer_snapshot::snapshots_past(&names, offset) {
            let name = crate::producer_snapshot::producer_snapshot_file_name(snap);
            self.storage.remove(&self.dir.join(name)).await?;
        }
        // Drop whole segments at or after the offset, keeping at least one.
        let first_base = *self.segments.keys().next().expect("segment");
        let later: Vec<u64> = self
            .segments
            .range(offset.max(first_base + 1)..)
            .map(|(&b, _)| b)
            .collect();
        // Newest first, so a crash half-way leaves a contiguous log.
        for b in later.into_iter().rev() {
            self.segments.remove(&b);
            remove_segment_files(&self.storage, &self.dir, b).await?;
        }
        let base = self.active().base_offset;
        self.ensure_loaded(base).await?;
        // Find the frame boundary at or below `offset` by scanning the segment.
        let seg_len = self.active().len_bytes;
        let mut ix = SegmentIndex::new();
        let mut report = RecoveryReport::default();
        let file = self.active_file();
        let mut cut_pos = 0u64;
        let mut cut_offset = base;
        {
            let mut pos = 0u64;
            while pos < seg_len {
                let h = file
                    .read_at(pos, strom_flatbuffers::FRAME_HEADER_BYTES)
                    .await?;
                let Some(hdr) = FrameHeader::ref_from(&h) else {
                    break;
                };
                if hdr.next_offset() > offset {
                    break;
                }
                pos += hdr.frame_len() as u64;
                cut_pos = pos;
                cut_offset = hdr.next_offset();
            }
        }
        self.scan_segment(base, 0, base, cut_pos, Some(&mut ix), &mut report)
            .await?;
        file.truncate(cut_pos).await?;
        file.fdatasync().await?;
        let seg = self.active_mut();
        seg.len_bytes = cut_pos;
        seg.index = Some(ix);
        self.next_offset = cut_offset;
        // The frame holding the log start may be cut: the log is then empty
        // and starts at the cut (as Kafka's truncate-fully).
        self.log_start_offset = self.log_start_offset.min(cut_offset);
        self.written_offset = cut_offset;
        self.durable_offset = cut_offset;
        self.written_len = cut_pos;
        self.written_frame_len = cut_pos;
        self.durable_len = cut_pos;
        self.preallocated_len = 0;
        self.read_ahead = None;
        self.read_epoch += 1;
        debug_assert!(self.in_flight.is_empty());
        self.pending = Pending::empty();
        let tail_len = (cut_pos % BLOCK_BYTES as u64) as usize;
        if tail_len > 0 {
            self.pending.tail = file.read_at(align_down(cut_pos), tail_len).await?.to_vec();
        }
        self.cache.borrow_mut().trim_back(cut_offset);
        self.write_checkpoint(false).await?;
        self.check_invariants();
        Ok(self.next_offset)
    }

    /// Flushes, writes the indexes and a clean checkpoint, closes files.
    pub async fn close(mut self, now_ms: i64) -> Result<(), EngineError> {
        self.check_not_failed()?;
        self.flush(now_ms).await?;
        self.settle_prealloc().await?;
        let len = self.active().len_bytes;
        let file = self.active_file();
        file.truncate(len).await?;
        self.write_checkpoint(true).await?;
        if let NextSegment::Ready { file, .. } =
            std::mem::replace(&mut self.next_segment, NextSegment::None)
        {
            if let Ok(f) = Rc::try_unwrap(file) {
                f.close().await?;
            }
            self.storage
                .remove(&self.dir.join(NEXT_SEGMENT_FILE))
                .await?;
        }
        for (_, seg) in std::mem::take(&mut self.segments) {
            if let Some(f) = seg.file {
                if let Ok(f) = Rc::try_unwrap(f) {
                    f.close().await?;
                }
            }
        }
        Ok(())
    }

    /// The offset and length invariants of the module header; cheap, so
    /// asserted wherever one of them changes.
    fn assert_offsets(&self) {
        assert!(
            self.durable_offset <= self.written_offset && self.written_offset <= self.next_offset,
            "durable {} <= written {} <= end {}",
            self.durable_offset,
            self.written_offset,
            self.next_offset
        );
        assert!(
            self.log_start_offset <= self.next_offset,
            "log start {} <= end {}",
            self.log_start_offset,
            self.next_offset
        );
        let len = self.active().len_bytes;
        assert!(
            self.durable_len <= self.written_frame_len
                && self.written_frame_len <= self.written_len
                && self.written_len <= len,
            "durable {} <= written frames {} <= written {} <= length {} bytes",
            self.durable_len,
            self.written_frame_len,
            self.written_len,
            len
        );
    }

    fn check_invariants(&self) {
        self.assert_offsets();
        let mut prev: Option<u64> = None;
        for &b in self.segments.keys() {
            if let Some(p) = prev {
                assert!(p < b, "segments out of order");
            }
            prev = Some(b);
        }
        assert!(self.active().base_offset <= self.next_offset);
    }

    /// Checks every index entry of every segment against a full scan of the
    /// segment: each must point at the start of a frame with the offset it
    /// names. For tests and `strom-server` diagnostics; reads every byte.
    pub async fn check_indexes_against_scan(&mut self) -> Result<(), String> {
        let bases: Vec<u64> = self.segments.keys().copied().collect();
        let active_base = self.active().base_offset;
        for base in bases {
            self.ensure_loaded(base).await.map_err(|e| e.to_string())?;
            let seg = &self.segments[&base];
            let len = if base == active_base {
                self.written_frame_len
            } else {
                seg.len_bytes
            };
            let file = seg.file.clone().expect("loaded");
            let bytes = file
                .read_at(0, len as usize)
                .await
                .map_err(|e| e.to_string())?;
            let (frames, stop) = scan(&bytes, 0, base);
            if !matches!(stop, ScanStop::End) {
                return Err(format!("segment {base}: scan stopped early: {stop:?}"));
            }
            let starts: std::collections::HashMap<u64, u64> =
                frames.iter().map(|f| (f.position, f.base_offset)).collect();
            let bases_set: std::collections::HashSet<u64> =
                frames.iter().map(|f| f.base_offset).collect();
            let ix = seg.index.as_ref().expect("loaded");
            for e in &ix.offsets {
                let pos = u64::from(e.position.get());
                let off = base + u64::from(e.relative_offset.get());
                if pos >= len && base == active_base {
                    continue; // not yet written
                }
                match starts.get(&pos) {
                    Some(&b) if b == off => {}
                    other => {
                        return Err(format!(
                            "segment {base}: entry ({off}, {pos}) but scan has {other:?}"
                        ))
                    }
                }
            }
            for t in &ix.times {
                let off = base + u64::from(t.relative_offset.get());
                if !(bases_set.contains(&off) || base == active_base && off >= self.written_offset)
                {
                    return Err(format!(
                        "segment {base}: time entry at {off} is not a frame start"
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl<B> Pending<B> {
    fn empty() -> Self {
        Pending {
            buf: None,
            buf_pos: 0,
            buf_fill: 0,
            sealed: VecDeque::new(),
            issued_len: 0,
            tail: Vec::new(),
            frame_ends: VecDeque::new(),
        }
    }
}

/// The base offset of the first frame of a file, if it holds a whole,
/// verified frame at its start.
async fn first_frame_base<S: Storage>(
    storage: &S,
    path: &Path,
) -> Result<Option<u64>, EngineError> {
    let Some(file) = storage.open(path).await? else {
        return Ok(None);
    };
    let header = file
        .read_at(0, strom_flatbuffers::FRAME_HEADER_BYTES)
        .await?;
    let len = match strom_flatbuffers::peek_frame_len(&header, FRAME_BYTES_MAX) {
        Ok(Some(len)) => len,
        _ => return Ok(None),
    };
    let frame = file.read_at(0, len).await?;
    file.close().await?;
    Ok(strom_flatbuffers::verify_stored(&frame)
        .ok()
        .map(|h| h.base_offset()))
}

/// NoSpace if taking `more_bytes` would leave less than `reserve_bytes`
/// free on the file system holding `dir`.
async fn check_disk_reserve<S: Storage>(
    storage: &S,
    dir: &Path,
    reserve_bytes: u64,
    more_bytes: u64,
) -> Result<(), EngineError> {
    if reserve_bytes == 0 {
        return Ok(());
    }
    if let Some(free) = storage.free_bytes(dir).await? {
        if free < more_bytes.saturating_add(reserve_bytes) {
            let msg = format!(
                "{free} bytes free, {more_bytes} more would cut into the {reserve_bytes} byte reserve"
            );
            let source = std::io::Error::new(std::io::ErrorKind::StorageFull, msg);
            return Err(EngineError::NoSpace(crate::io_error::IoError::new(
                "reserve", dir, source,
            )));
        }
    }
    Ok(())
}

/// Writes a segment's offset and time index files (each atomically),
/// covering its first `covered_len` bytes and relative offsets below `rel_limit`.
async fn write_index_files<S: Storage>(
    storage: &S,
    dir: &Path,
    base: u64,
    ix: &SegmentIndex,
    covered_len: u64,
    rel_limit: u32,
) -> Result<(), EngineError> {
    let o = ix.encode_offsets(base, covered_len);
    let t = ix.encode_times(base, covered_len, rel_limit);
    storage
        .write_atomic(&dir.join(index_file_name(base)), &o)
        .await?;
    storage
        .write_atomic(&dir.join(time_index_file_name(base)), &t)
        .await?;
    Ok(())
}

impl<S: Storage> Drop for Log<S> {
    fn drop(&mut self) {
        // Give the shard budget back whatever way the log ends (close, crash,
        // drop), even while a partition shell still holds the cache.
        self.cache.borrow_mut().trim_back(0);
    }
}

async fn remove_index_files<S: Storage>(
    storage: &S,
    dir: &Path,
    base: u64,
) -> Result<(), EngineError> {
    storage.remove(&dir.join(index_file_name(base))).await?;
    storage
        .remove(&dir.join(time_index_file_name(base)))
        .await?;
    Ok(())
}

async fn remove_segment_files<S: Storage>(
    storage: &S,
    dir: &Path,
    base: u64,
) -> Result<(), EngineError> {
    // Indexes first: a crash in between leaves a segment without indexes
    // (rebuilt on demand), never indexes without their segment that a later
    // segment with the same base could mistake for its own.
    storage.remove(&dir.join(index_file_name(base))).await?;
    storage
        .remove(&dir.join(time_index_file_name(base)))
        .await?;
    storage.remove(&dir.join(segment_file_name(base))).await?;
    Ok(())
}

/// Removes a whole partition directory (after its log was closed).
pub async fn remove_log_dir<S: Storage>(storage: &S, dir: &Path) -> Result<(), EngineError> {
    storage.remove_dir_all(dir).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The write-job rules of the synchronous core, driven by hand: jobs are
    //! taken and completed in the order a test chooses.
    use super::*;
    use crate::storage::FaultyStorage;
    use futures_lite::future::block_on;
    use strom_flatbuffers::{BatchBuilder, RecordIn};

    fn cfg() -> LogConfig {
        LogConfig {
            segment_bytes: 1 << 20,
            frame_bytes_max: 128 << 10,
            write_buffer_bytes: 64 << 10,
            unwritten_bytes_max: 1 << 20,
            preallocate_bytes: 1 << 20,
            flush: FlushPolicy::Never,
            retention_ms: None,
            ..LogConfig::default()
        }
    }

    fn frame(value_len: usize) -> BytesMut {
        let mut b = BatchBuilder::new();
        let v = vec![7u8; value_len];
        b.push(&RecordIn {
            timestamp_ms: 1,
            key: None,
            value: Some(&v),
            headers: &[],
        });
        BytesMut::from(&b.finish()[..])
    }

    fn open() -> Log<FaultyStorage> {
        let storage = FaultyStorage::new(7);
        let (mut log, _) = block_on(Log::open(storage, Path::new("/t"), cfg(), 0)).expect("open");
        // Preallocate the whole segment, so appends start no fallocate job.
        match log.try_append(frame(10), 0).expect("append") {
            AppendStep::Blocked(f, Blocked::Space) => {
                block_on(log.drive_jobs()).expect("fallocate");
                assert!(matches!(log.try_append(f, 0), Ok(AppendStep::Done(_))));
            }
            other => panic!("{other:?}"),
        }
        block_on(log.write_pending()).expect("write");
        assert!(log.take_jobs().is_empty());
        log
    }

    fn append(log: &mut Log<FaultyStorage>, value_len: usize) -> u64 {
        match log.try_append(frame(value_len), 0).expect("append") {
            AppendStep::Done(info) => info.last_offset + 1,
            AppendStep::Blocked(_, why) => panic!("blocked: {why:?}"),
        }
    }

    fn run(log: &mut Log<FaultyStorage>, job: Job) {
        let r = block_on(job.fut);
        log.complete_job(job.id, r);
    }

    /// The retention tick's I/O-free check says "nothing due" exactly when
    /// retention would delete nothing, so skipping the exclusive run on it
    /// never skips a deletion.
    #[test]
    fn the_retention_check_agrees_with_retention() {
        let config = LogConfig {
            segment_bytes: 64 << 10,
            frame_bytes_max: 32 << 10,
            preallocate_bytes: 64 << 10,
            retention_bytes: Some(200 << 10),
            ..cfg()
        };
        let storage = FaultyStorage::new(9);
        let (mut log, _) = block_on(Log::open(storage, Path::new("/r"), config, 0)).expect("open");
        assert!(!log.retention_may_delete(0), "only the active segment");
        let mut was_due = false;
        for _ in 0..40 {
            block_on(log.append(frame(12 << 10), 0)).expect("append");
            let due = log.retention_may_delete(0);
            let deleted = block_on(log.apply_retention(0)).expect("retention");
            assert_eq!(due, deleted > 0, "check and retention disagree");
            was_due |= due;
        }
        assert!(was_due, "retention ran at least once");
        assert!(log.segments.len() >= 2);
    }

    /// The partial tail block is rewritten by each tail write; a newer tail
    /// write is issued only after the older write of that block completed,
    /// so it can never be overtaken by it.
    #[test]
    fn a_tail_block_write_waits_for_the_older_write_of_that_block() {
        let mut log = open();
        let end1 = append(&mut log, 100);
        log.request_write(end1);
        let mut first = log.take_jobs();
        assert_eq!(first.len(), 1, "one tail write");
        let end2 = append(&mut log, 100);
        log.request_write(end2);
        assert!(
            log.take_jobs().is_empty(),
            "a second write of the tail block was issued while the first is in flight"
        );
        assert_eq!(log.offsets().written_offset, end1 - 1);
        run(&mut log, first.pop().expect("job"));
        assert_eq!(log.offsets().written_offset, end1);
        // The completion issued the newer tail write.
        let second = log.take_jobs();
        assert_eq!(second.len(), 1);
        for job in second {
            run(&mut log, job);
        }
        assert_eq!(log.offsets().written_offset, end2);
        block_on(log.check_indexes_against_scan()).expect("on disk as appended");
    }

    /// Full buffers are written concurrently and may complete in any order;
    /// the written offset only moves over the contiguous written prefix.
    #[test]
    fn written_offset_moves_only_over_a_contiguous_prefix() {
        let mut log = open();
        let before = log.offsets().written_offset;
        // Three 60 KiB frames fill two 64 KiB buffers: two full-buffer writes.
        let mut ends = Vec::new();
        for _ in 0..3 {
            ends.push(append(&mut log, 60 << 10));
        }
        let mut jobs = log.take_jobs();
        assert_eq!(jobs.len(), 2, "{jobs:?}");
        let second = jobs.pop().expect("second");
        let first = jobs.pop().expect("first");
        run(&mut log, second);
        assert_eq!(
            log.offsets().written_offset,
            before,
            "written past a write still in flight"
        );
        run(&mut log, first);
        let w = log.offsets().written_offset;
        assert!(w >= ends[1] && w < ends[2], "written {w}, ends {ends:?}");
        block_on(log.write_pending()).expect("write");
        assert_eq!(log.offsets().written_offset, ends[2]);
        block_on(log.check_indexes_against_scan()).expect("on disk as appended");
    }

    /// A failed write fails the log, even when a later write completes first.
    #[test]
    fn a_failed_write_fails_the_log_whatever_the_completion_order() {
        let mut log = open();
        for _ in 0..3 {
            append(&mut log, 60 << 10);
        }
        let before = log.offsets().written_offset;
        let mut jobs = log.take_jobs();
        let second = jobs.pop().expect("second");
        let first = jobs.pop().expect("first");
        run(&mut log, second);
        log.complete_job(
            first.id,
            Err(EngineError::Failed {
                reason: "injected".into(),
            }),
        );
        assert!(log.failed().is_some());
        assert_eq!(log.offsets().written_offset, before);
        assert!(matches!(
            log.try_append(frame(10), 0),
            Err(EngineError::Failed { .. })
        ));
    }
}
