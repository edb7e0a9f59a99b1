//! The partition log: an ordered list of segments on a [`Storage`], written
//! with block-aligned direct writes, read through a tail cache, recovered
//! from a checkpoint after a crash.
//!
//! Invariants (asserted where cheap, checked by the simulation otherwise):
//! - Offsets are dense: segment `i+1` starts at the offset after the last
//!   record of segment `i`; frames inside a segment follow each other with no
//!   gap, in bytes and in offsets.
//! - `durable_offset <= written_offset <= next_offset` and
//!   `log_start_offset <= next_offset`; in bytes of the active segment,
//!   `durable_len <= written_frame_len <= written_len <= len_bytes`. Asserted
//!   wherever one of them changes (`assert_offsets`).
//! - A sync publishes a durable offset only if nothing cut or replaced the
//!   active segment since its target was taken: roll and truncation bump
//!   `sync_epoch`, and `complete_sync` ignores targets of an older epoch
//!   (the roll synced them itself; the truncation may have cut them).
//! - A failed fdatasync or data write fails the log (fsyncgate: the kernel
//!   may have dropped the dirty data, and a retried fdatasync would succeed
//!   without it); so does a truncation that failed half-way. A failed log
//!   refuses appends, writes, syncs, truncation and close with
//!   `EngineError::Failed` until it is reopened and recovered from the disk;
//!   reads of what it holds go on.
//! - The cache budgets bound the memory cached frames hold: a frame below
//!   `CACHE_COPY_FRAME_BYTES_MAX` is copied into an allocation of its own
//!   (never pinning the read buffer it was cut from) and charged its length;
//!   a larger one stays a view, charged at least `CACHE_VIEW_CHARGE_BYTES_MIN`
//!   (what the buffer under it may hold); each also `CACHE_FRAME_OVERHEAD_BYTES`.
//! - Bytes of the active segment below `written_len` are on disk; bytes from
//!   `align_down(written_len)` up to `len_bytes` live in the pending write
//!   buffers. A block that was written partially is rewritten whole by the
//!   next write (the tail block), never padded with a gap inside the log.
//! - Write buffers of one `write_pending` call cover disjoint blocks, so they
//!   are issued concurrently; calls are serialized by `&mut self`.
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
    /// Full buffers waiting to be written: (position, buffer).
    sealed: Vec<(u64, B)>,
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
    /// Writes of full buffers in flight, oldest first: (end position, ticket).
    in_flight: VecDeque<(u64, <S::File as StorageFile>::WriteTicket)>,
    /// A background fallocate of the active segment: (target size, ticket).
    prealloc_in_flight: Option<(u64, <S::File as StorageFile>::WriteTicket)>,
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
    preallocated_len: u64,
    failed: Option<String>,
    /// The failure may have left memory and disk disagreeing (a truncation
    /// failed half-way): reads are refused too.
    failed_unreadable: bool,
    stats: LogStats,
}

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
        let checkpoint = match storage.read_all(&cp_path, META_FILE_BYTES_MAX).await? {
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
            if name.ends_with(crate::storage::TMP_SUFFIX) {
                storage.remove(&dir.join(name)).await?;
            } else if let Some(base) = parse_segment_file_name(name) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        let cp = checkpoint.unwrap_or(Checkpoint {
            log_start_offset: bases.first().copied().unwrap_or(0),
            recovery_segment_base: bases.first().copied().unwrap_or(0),
            recovery_position: 0,
            recovery_offset: bases.first().copied().unwrap_or(0),
            clean: false,
        });
        report.clean_shutdown = cp.clean;
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
            prealloc_in_flight: None,
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
            preallocated_len: 0,
            failed: None,
            failed_unreadable: false,
            stats: LogStats::default(),
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
                if let Some(ix) = &index {
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
    /// `flush`).
    pub async fn append(
        &mut self,
        mut frame: BytesMut,
        now_ms: i64,
    ) -> Result<AppendInfo, EngineError> {
        self.check_not_failed()?;
        if frame.len() > self.config.frame_bytes_max {
            return Err(EngineError::FrameTooLarge {
                len_bytes: frame.len(),
                max_bytes: self.config.frame_bytes_max,
            });
        }
        let summary = validate_incoming(&frame, &self.limits)?;
        let frame_len = frame.len() as u64;
        if self.should_roll(frame_len, now_ms) {
            self.roll(now_ms).await?;
        }
        // Reserve disk space first: ENOSPC is reported here, before any state changes.
        let active_len = self.active().len_bytes;
        let need = align_up(active_len + frame_len);
        if need > self.preallocated_len {
            self.settle_prealloc().await?;
        }
        let step = self.config.preallocate_bytes.max(BLOCK_BYTES as u64);
        if need > self.preallocated_len {
            let target = align_up(need.div_ceil(step) * step)
                .min(align_up(self.config.segment_bytes).max(need));
            self.check_disk_reserve(target - self.preallocated_len)
                .await?;
            self.active_file().pre_allocate(target).await?;
            self.preallocated_len = target;
        }
        // Reserve the next step in the background once half of the current
        // one is used, so appends rarely wait for fallocate.
        let segment_cap = align_up(self.config.segment_bytes);
        if self.prealloc_in_flight.is_none()
            && self.preallocated_len < segment_cap
            && self.preallocated_len - need < step / 2
        {
            let target = (self.preallocated_len + step).min(segment_cap);
            // Reserve ahead only while that leaves the disk reserve intact;
            // otherwise the next step is taken (and refused) synchronously.
            if self
                .check_disk_reserve(target - self.preallocated_len)
                .await
                .is_ok()
            {
                let ticket = self.active_file().spawn_pre_allocate(target);
                self.prealloc_in_flight = Some((target, ticket));
            }
        }
        // Back-pressure: wait for the oldest writes (or write everything)
        // before more than `unwritten_bytes_max` waits for the disk.
        while self.unwritten_bytes() + frame.len() as u64 > self.config.unwritten_bytes_max as u64 {
            if self.in_flight.is_empty() {
                self.write_pending().await?;
                break;
            }
            self.complete_oldest_write().await?;
        }
        let base_offset = self.next_offset;
        stamp_base_offset(&mut frame, base_offset);
        let frame = frame.freeze();
        let header = FrameHeader::ref_from(&frame).expect("validated frame has a header");
        let next = header.next_offset();
        debug_assert_eq!(header.record_count.get(), summary.record_count);
        self.copy_into_buffers(&frame);
        // Full buffers go to the disk now, while the next appends are copied.
        self.start_sealed_writes();
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
        self.assert_offsets();
        Ok(AppendInfo {
            base_offset,
            last_offset: next - 1,
            append_time_ms: now_ms,
        })
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
                p.sealed.push((p.buf_pos, full));
                p.tail.clear();
                p.buf_fill = 0;
            }
        }
    }

    /// Hands every pending buffer to the disk (concurrently; they cover
    /// disjoint blocks) and waits for the writes. Afterwards everything
    /// appended survives a process crash.
    pub async fn write_pending(&mut self) -> Result<(), EngineError> {
        self.check_not_failed()?;
        self.start_sealed_writes();
        while !self.in_flight.is_empty() {
            self.complete_oldest_write().await?;
        }
        let Some(mut buf) = self.pending.buf.take() else {
            return Ok(());
        };
        let fill = self.pending.buf_fill;
        let pos = self.pending.buf_pos;
        // The next buffer restarts at the partial block, from `tail`.
        let block_start = align_down(fill as u64) as usize;
        self.pending.tail = buf.as_slice()[block_start..fill].to_vec();
        self.pending.buf_fill = 0;
        let end = pos + fill as u64;
        if end <= self.written_len {
            return Ok(());
        }
        let padded = align_up(fill as u64) as usize;
        buf.trim_to(padded);
        // Buffers are not zeroed on allocation: zero the padding.
        buf.as_mut_slice()[fill..padded].fill(0);
        // Every earlier write has completed: rewriting the tail block now
        // cannot race an older write of it.
        debug_assert!(self.in_flight.is_empty());
        let file = self.active_file();
        if let Err(e) = file.write_at(buf, pos).await {
            // The buffer is gone and the write may have landed in part; only
            // a reopen (recovery) can rebuild a consistent view of the tail.
            self.fail(format!("write failed: {e}"));
            return Err(e.into());
        }
        self.stats.writes += 1;
        self.mark_written(end);
        Ok(())
    }

    /// Starts the writes of every full (sealed) buffer at once. Full buffers
    /// cover disjoint blocks, and the tail block they may start with was
    /// written by a `write_pending` that has completed, so none overlaps a
    /// write in flight.
    fn start_sealed_writes(&mut self) {
        if self.pending.sealed.is_empty() {
            return;
        }
        let file = self.active_file();
        for (pos, buf) in std::mem::take(&mut self.pending.sealed) {
            let end = pos + buf.len() as u64;
            debug_assert!(self.in_flight.back().is_none_or(|(e, _)| *e <= pos));
            let ticket = file.clone().spawn_write(buf, pos);
            self.in_flight.push_back((end, ticket));
            self.stats.writes += 1;
        }
    }

    /// Waits for the oldest write in flight (writes complete in order of
    /// start for our accounting: `written_len` only moves forward over a
    /// contiguous prefix).
    async fn complete_oldest_write(&mut self) -> Result<(), EngineError> {
        let Some((end, ticket)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        if let Err(e) = ticket.await {
            self.fail(format!("write failed: {e}"));
            // Let the other writes finish before reporting: they hold buffers.
            while let Some((_, t)) = self.in_flight.pop_front() {
                let _ = t.await;
            }
            return Err(e.into());
        }
        self.mark_written(end);
        Ok(())
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

    /// NoSpace if taking `more_bytes` would leave less than the configured
    /// reserve free on the log's file system.
    async fn check_disk_reserve(&self, more_bytes: u64) -> Result<(), EngineError> {
        if self.config.disk_reserve_bytes == 0 {
            return Ok(());
        }
        if let Some(free) = self.storage.free_bytes(&self.dir).await? {
            if free < more_bytes.saturating_add(self.config.disk_reserve_bytes) {
                let msg = format!(
                    "{free} bytes free, {more_bytes} more would cut into the {} byte reserve",
                    self.config.disk_reserve_bytes
                );
                let source = std::io::Error::new(std::io::ErrorKind::StorageFull, msg);
                return Err(EngineError::NoSpace(crate::io_error::IoError::new(
                    "reserve", &self.dir, source,
                )));
            }
        }
        Ok(())
    }

    /// Waits for a background fallocate, if any. Must run before the active
    /// file is truncated or closed, so a late fallocate cannot grow a file
    /// after it was cut to its exact length.
    async fn settle_prealloc(&mut self) -> Result<(), EngineError> {
        if let Some((target, ticket)) = self.prealloc_in_flight.take() {
            ticket.await?;
            self.preallocated_len = self.preallocated_len.max(target);
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
        let active_base = self.active().base_offset;
        let behind = if self.checkpoint.recovery_segment_base == active_base {
            self.durable_len
                .saturating_sub(self.checkpoint.recovery_position)
        } else {
            u64::MAX
        };
        if behind >= self.config.checkpoint_interval_bytes {
            self.write_checkpoint(false).await?;
        }
        Ok(())
    }

    /// Persists the active index up to the durable point, then the checkpoint.
    async fn write_checkpoint(&mut self, clean: bool) -> Result<(), EngineError> {
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
        write_index_files(&self.storage, &self.dir, base, ix, durable_len, rel_limit).await?;
        let cp = Checkpoint {
            log_start_offset: self.log_start_offset,
            recovery_segment_base: base,
            recovery_position: durable_len,
            recovery_offset: durable_offset,
            clean,
        };
        self.storage
            .write_atomic(&self.dir.join(CHECKPOINT_FILE), &cp.encode())
            .await?;
        self.checkpoint = cp;
        Ok(())
    }

    /// Closes the active segment (synced, truncated to size, indexed) and
    /// starts a new one at the next offset.
    async fn roll(&mut self, now_ms: i64) -> Result<(), EngineError> {
        self.flush(now_ms).await?;
        self.settle_prealloc().await?;
        let base = self.active().base_offset;
        let len = self.active().len_bytes;
        let file = self.active_file();
        file.truncate(len).await?;
        let ix = self.active().index.as_ref().expect("index");
        let rel_limit = (self.next_offset - base) as u32;
        write_index_files(&self.storage, &self.dir, base, ix, len, rel_limit).await?;
        let new_base = self.next_offset;
        self.storage
            .remove(&self.dir.join(index_file_name(new_base)))
            .await?;
        self.storage
            .remove(&self.dir.join(time_index_file_name(new_base)))
            .await?;
        let new_file = self
            .storage
            .create(&self.dir.join(segment_file_name(new_base)))
            .await?;
        self.segments.insert(
            new_base,
            Segment {
                base_offset: new_base,
                file: Some(Rc::new(new_file)),
                len_bytes: 0,
                index: Some(SegmentIndex::new()),
                first_append_ms: None,
            },
        );
        debug_assert!(self.in_flight.is_empty());
        assert_eq!(
            self.durable_offset, new_base,
            "a roll closes a synced segment"
        );
        self.sync_epoch += 1;
        self.pending = Pending::empty();
        self.written_len = 0;
        self.written_frame_len = 0;
        self.durable_len = 0;
        self.preallocated_len = 0;
        self.read_ahead = None;
        self.assert_offsets();
        self.write_checkpoint(false).await?;
        self.close_excess_files();
        self.stats.segments_rolled += 1;
        tracing::info!(
            dir = %self.dir.display(),
            closed_base_offset = base,
            closed_bytes = len,
            new_base_offset = new_base,
            "segment rolled"
        );
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
    pub async fn apply_retention(&mut self, now_ms: i64) -> Result<usize, EngineError> {
        if self.config.retention_bytes.is_none() && self.config.retention_ms.is_none() {
            return Ok(0);
        }
        let bases: Vec<u64> = self.segments.keys().copied().collect();
        let mut infos = Vec::with_capacity(bases.len());
        for (i, &base) in bases.iter().enumerate() {
            if i + 1 < bases.len() && self.config.retention_ms.is_some() {
                self.ensure_loaded(base).await?;
            }
            let seg = &self.segments[&base];
            infos.push(crate::retention::SegmentInfo {
                base_offset: base,
                len_bytes: seg.len_bytes,
                max_timestamp_ms: seg
                    .index
                    .as_ref()
                    .map(|i| i.max_timestamp_ms)
                    .unwrap_or(i64::MIN),
            });
        }
        let n = crate::retention::segments_to_delete(
            &infos,
            self.config.retention_bytes,
            self.config.retention_ms,
            now_ms,
        );
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
    pub async fn delete_records_before(&mut self, offset: u64) -> Result<u64, EngineError> {
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
        // Syncs in flight must not publish what this may cut.
        self.sync_epoch += 1;
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
            sealed: Vec::new(),
            tail: Vec::new(),
            frame_ends: VecDeque::new(),
        }
    }
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
