//! `EngineStore`: the durable [`LogStore`]: the partition log of
//! `strom-engine` *is* the Raft log, plus a small fsynced hard-state file.
//!
//! # What it owns
//! One replica's directory on a [`Storage`]:
//! - `raft-hardstate`: term, vote, commit, the voters, the snapshot point
//!   and the log generation, in two 4 KiB slots written in place in turn
//!   (one block write and one fdatasync, never over the slot holding the
//!   newest durable state), so after a crash the newest valid slot is the
//!   old or the new state, never a mix ([`hard_state_slots`]; created
//!   whole with `Storage::write_atomic`). With [`EngineStore::set_lazy_commit`]
//!   a change of the commit index alone is not written;
//! - `raft-snapshot.<index, 20 digits>`: the snapshot point of the last
//!   compaction or installed snapshot with its opaque data (the producer
//!   state), written atomically before the hard state names it;
//! - `log.<generation>/`: a `strom_engine::Log` (segments, indexes,
//!   checkpoint). A new generation starts only when a snapshot from the
//!   leader replaces the whole log (see "Installing a snapshot").
//!
//! # One Raft entry, one frame
//! Entry `i` is the `i - s`-th frame of the engine log after the snapshot
//! point `s` (dense: frames follow each other with no gap in offsets, and
//! compaction moves the log start and the snapshot point together). Each
//! frame's header carries the entry's term in `leader_epoch` (Kafka's
//! partition leader epoch); the store stamps it (and the base offset) on
//! every frame it stages, whatever the producer wrote there.
//! - A normal entry with data is a producer frame: the entry's data *is*
//!   the frame (the shell proposes only frames that passed
//!   `validate_incoming`; staging checks their shape and panics otherwise,
//!   a programmer error; the engine validates them fully on append). Its
//!   records take `record_count` offsets. raft-rs reads the entry back as
//!   the stamped frame (base offset and leader epoch set), identical on
//!   every replica because offsets agree (log matching, and snapshots carry
//!   the offset, below).
//! - Every other entry (a leader's no-op: normal with empty data; a
//!   configuration change, v1 or v2) is a *control frame*: one record with
//!   key [`CONTROL_KEY`], timestamp 0, whose value holds the entry type,
//!   context and data ([`CONTROL_VALUE_VERSION`] layout below), with bit 31
//!   of `leader_epoch` set ([`CONTROL_EPOCH_BIT`]). It takes one offset.
//!   raft-rs reads it back exactly as it was appended (empty data for a
//!   no-op). Consumers skip a frame whose `leader_epoch` has bit 31 set
//!   ([`is_control_frame`], a header-only test): the Kafka edge would send
//!   it as a control batch (attribute bit 5) or leave the offset gap, as
//!   Kafka does for compacted batches. The bit cannot be forged by a
//!   producer: the store overwrites `leader_epoch` on every frame.
//!   *Workaround*: Kafka marks control batches with an attribute bit; the
//!   frame format defines attribute bits 0..=2 only and `validate_incoming`
//!   (hence `Log::append`) refuses any other, so the marker lives in the
//!   epoch's top bit until the engine accepts a control attribute from the
//!   replication layer (and refuses it from producers). Terms are therefore
//!   limited to [`TERM_MAX`] (2^31 - 1, the range of Kafka's i32 leader
//!   epoch), asserted.
//! - The Raft index is not written in the frame (the header has no free
//!   field: `reserved0`/`reserved1` must be zero and the producer fields
//!   belong to the producer). It is recovered by position: the hard-state
//!   file names the snapshot point (index, term, offset of the next frame),
//!   and the log start moves only together with it.
//!
//! In memory the store keeps the whole log since the snapshot point as
//! [`Slot`]s (term, base offset, frame): an index → (base offset, term) map
//! that also holds the bytes raft-rs reads synchronously. It is rebuilt on
//! open by reading every frame after the log start.
//!
//! # Memory bound
//! raft-rs's `Storage` is synchronous, so this first version answers every
//! read from memory and never returns `LogTemporarilyUnavailable`: it holds
//! every frame since the last compaction, plus `size_of::<Slot>()` (48)
//! bytes per entry and the `VecDeque`'s slack. That is bounded only by
//! compaction: [`EngineStore::memory_bytes`] reports it and
//! [`EngineStore::wants_compaction`] says when it passes
//! [`TAIL_MEMORY_BYTES_SOFT_MAX`], for the shell's retention to compact up
//! to the applied index (a leader also bounds its uncommitted tail with
//! raft-rs's `max_uncommitted_size`). Entries below the commit are also in
//! the engine's own tail cache up to its budget: that memory is counted
//! twice. The next step is to keep only the tail within a byte budget and
//! answer older reads with `LogTemporarilyUnavailable` when
//! `context.can_async()` (fetching them from the engine log), which needs
//! the core to forward raft-rs's `on_entries_fetched`; not built.
//!
//! # Staging and persisting
//! `LogStore` calls stage writes (numbered by the write sequence) in the
//! *written image* that raft-rs reads, and in a journal. The shell then runs
//! [`EngineStore::persist`]`(upto)`, an async task that holds no borrow of
//! the store (the core stays usable while it runs): it takes the journal's
//! writes `..= upto` and, in order,
//! - appends: `truncate_to(base offset of the first replaced entry)` when a
//!   conflicting suffix is replaced (the engine makes the cut durable at
//!   once), then `Log::append` of each frame;
//! - compaction: flush, write the snapshot file, write the hard state
//!   naming it, then `delete_records_before(offset after the index)`;
//! - an installed snapshot: see below;
//! - then `Log::flush` (fdatasync), and only then the hard-state file if it
//!   changed. The hard state is written only after the log it speaks of is
//!   durable, so a commit index on disk never passes the durable log.
//!
//! When it completes the shell calls `ReplicaCore::on_persisted(upto)`
//! (`mark_synced` asserts the persist ran). Persists may be started in any
//! order and concurrently: they run one at a time (an async mutex), and one
//! that finds its writes already done by a later one returns at once.
//!
//! A crash loses what was not persisted; a crash *during* a persist leaves a
//! prefix of its steps (each step is itself crash-atomic in the engine or
//! by atomic replace), which is always a valid Raft state: a replaced
//! suffix cut but not yet rewritten was not committed (the new leader does
//! not have it), and entries durable without their hard state were never
//! acknowledged (the core sends nothing before the whole persist). The
//! `MemLog` model is stricter (all of a persist or none of it); the
//! simulation in `tests/engine_store.rs` crashes at every I/O step.
//!
//! A persist that fails fails the store: every later persist fails too,
//! and the shell must reopen the replica from disk (fsyncgate: the engine
//! log fails itself for the same reason).
//!
//! # Opening
//! Reads the hard state (a missing file with log files present is an error,
//! never an empty restart), removes what a crash left half-made (tmp files,
//! snapshot files and log generations the hard state does not name), opens
//! the log, finishes a compaction cut short (log start behind the snapshot
//! point), restarts the log at the snapshot point if the log ends before it
//! (possible only if the disk lost synced data), reads every frame after
//! the log start to rebuild the slots (terms must not decrease, offsets must
//! be dense, control frames must decode), and clamps the commit index to
//! the last durable entry if it is beyond it (reported in
//! [`StoreRecovery::commit_clamped_from`]; the write order above should make
//! it impossible).
//!
//! # Installing a snapshot
//! The engine log cannot move its start past its end
//! (`delete_records_before` refuses an offset beyond the end, and
//! `truncate_to` only cuts), and after a snapshot the log must restart
//! empty at the leader's offset. So an install writes the snapshot file,
//! creates the next generation `log.<g+1>/` with only an engine checkpoint
//! whose log start is that offset (`Log::open` then creates its first
//! segment there: *workaround* through the public `checkpoint` format; the
//! engine should offer `Log::reset_to(offset)`), and then switches to it by
//! writing the hard state naming generation `g+1`: one atomic replace. The
//! old generation is removed afterwards (or by the next open).
//!
//! Snapshots carry the Kafka offset: [`raft::Storage::snapshot`] sends, and
//! `install_snapshot` expects, `Snapshot::data` as the store's envelope
//! (the snapshot file's bytes: point and crc, then the opaque data), so
//! `Action::InstallSnapshot::data` is that envelope too; the shell gets
//! the producer state with [`decode_snapshot`]. *Deviation*: the brief put
//! the snapshot data in the hard-state file; it is in its own file because
//! the hard state is rewritten on almost every persist (the commit moves)
//! and the producer state may be large.
//!
//! # Not built
//! Membership changes (conf-change entries are stored and read back, but
//! only voters are kept in the conf state; learners and joint consensus
//! are asserted absent), the bounded tail above, the fetch path (the shell
//! will read the engine log through this store), and engine retention,
//! which is forced off: only compaction moves the log start.
//!
//! # Layouts (all integers little-endian)
//! Hard-state file (`raft-hardstate`), 76 + 8 × voters + 4 bytes:
//! ```text
//!  0  4  magic "SRHS"
//!  4  4  version (1)
//!  8  8  term
//! 16  8  vote (0: none)
//! 24  8  commit
//! 32  8  snapshot index (0: never compacted)
//! 40  8  snapshot term
//! 48  8  snapshot offset: Kafka offset of the first entry after the
//!        snapshot point (the engine log's start)
//! 56  8  log generation (directory log.<generation>)
//! 64  4  snapshot crc (the crc field of the snapshot file it names; 0 if none)
//! 68  4  reserved (0)
//! 72  4  voter count n (1..=VOTERS_MAX)
//! 76  8n voter ids
//! 76+8n 4 crc32c of bytes [0, 76 + 8n)
//! ```
//! Snapshot envelope (file `raft-snapshot.<index:020>` and `Snapshot::data`):
//! ```text
//!  0  4  magic "SRSN"
//!  4  4  version (1)
//!  8  8  index
//! 16  8  term
//! 24  8  offset of the first entry after it
//! 32  4  data length d (<= SNAPSHOT_DATA_BYTES_MAX)
//! 36  4  crc32c of bytes [0, 36) followed by the data
//! 40  d  data (opaque: the producer state)
//! ```
//! Control record value (key [`CONTROL_KEY`]):
//! ```text
//!  0  1  version (1)
//!  1  1  raft entry type (0 normal, 1 conf change, 2 conf change v2)
//!  2  4  context length c
//!  6  c  context
//! 6+c    data (the rest; empty for a no-op)
//! ```

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use strom_engine::checkpoint::{Checkpoint, CHECKPOINT_FILE};
use strom_engine::storage::{IoError, Storage, StorageFile, WriteBuf, TMP_SUFFIX};
use strom_engine::{EngineError, Log, LogConfig, RecoveryReport};
use strom_flatbuffers::{
    peek_frame_len, records, stamp_base_offset, BatchBuilder, FrameHeader, RecordIn,
    FRAME_BYTES_MAX,
};

use crate::error::PersistError;
use crate::limits::VOTERS_MAX;
use crate::storage::LogStore;

// ----- names and limits -----

/// The hard-state file inside the replica's directory.
pub const HARD_STATE_FILE: &str = "raft-hardstate";
/// Prefix of snapshot files: `raft-snapshot.<index, 20 digits>`.
pub const SNAPSHOT_FILE_PREFIX: &str = "raft-snapshot.";
/// Prefix of log generations: `log.<generation>`.
pub const LOG_DIR_PREFIX: &str = "log.";

/// Bit 31 of a frame's `leader_epoch`: set on control frames (no-ops and
/// configuration changes), which consumers skip.
pub const CONTROL_EPOCH_BIT: u32 = 1 << 31;
/// The largest term a frame's `leader_epoch` can carry (Kafka's leader
/// epoch is an i32 too).
pub const TERM_MAX: u64 = (CONTROL_EPOCH_BIT - 1) as u64;
/// Key of the single record of a control frame.
pub const CONTROL_KEY: &[u8] = b"strom.raft.control";
/// Version byte of a control record's value.
pub const CONTROL_VALUE_VERSION: u8 = 1;

const HARD_STATE_MAGIC: [u8; 4] = *b"SRHS";
const HARD_STATE_VERSION: u32 = 1;
const HARD_STATE_FIXED_BYTES: usize = 76;
/// Largest hard-state record: the fixed part, `VOTERS_MAX` voters, the crc.
pub const HARD_STATE_FILE_BYTES_MAX: usize = HARD_STATE_FIXED_BYTES + 8 * VOTERS_MAX + 4;
/// One slot of the hard-state file: one O_DIRECT block.
pub const HARD_STATE_SLOT_BYTES: usize = strom_engine::storage::BLOCK_BYTES;
/// The hard-state file: two slots, overwritten in place in turn.
pub const HARD_STATE_SLOTS_FILE_BYTES: usize = 2 * HARD_STATE_SLOT_BYTES;
/// A slot's sequence number and record length, before the record.
const HARD_STATE_SLOT_HEADER_BYTES: usize = 12;
const _: () =
    assert!(HARD_STATE_SLOT_HEADER_BYTES + HARD_STATE_FILE_BYTES_MAX + 4 <= HARD_STATE_SLOT_BYTES);

const SNAPSHOT_MAGIC: [u8; 4] = *b"SRSN";
const SNAPSHOT_VERSION: u32 = 1;
/// Bytes of the snapshot envelope before the data.
pub const SNAPSHOT_HEADER_BYTES: usize = 40;
/// Largest opaque snapshot data (the producer state). `write_atomic` takes
/// at most 16 MiB; a snapshot also travels in one raft message.
pub const SNAPSHOT_DATA_BYTES_MAX: usize = 8 << 20;
const _: () = assert!(
    SNAPSHOT_HEADER_BYTES + SNAPSHOT_DATA_BYTES_MAX <= strom_engine::storage::ATOMIC_FILE_BYTES_MAX
);

/// Frames read per engine read while rebuilding the slots at open.
pub const OPEN_READ_BYTES: usize = 1 << 20;
/// Past this many bytes of entries held in memory, the store asks the shell
/// to compact ([`EngineStore::wants_compaction`]).
pub const TAIL_MEMORY_BYTES_SOFT_MAX: u64 = 256 << 20;

// ----- errors -----

/// Opening the store failed. Nothing was lost: the files are as they were
/// (apart from leftovers of an interrupted write, which are removed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreOpenError {
    #[error("{dir}: {op}: {source}", dir = .dir.display())]
    Engine {
        dir: PathBuf,
        op: &'static str,
        #[source]
        source: EngineError,
    },
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{path}: hard state unreadable: {reason}", path = .path.display())]
    HardStateCorrupt { path: PathBuf, reason: String },
    #[error("{path}: snapshot unreadable: {reason}", path = .path.display())]
    SnapshotCorrupt { path: PathBuf, reason: String },
    #[error("{dir}: log files without a hard state: refusing to start as an empty replica", dir = .dir.display())]
    MissingHardState { dir: PathBuf },
    #[error("{dir}: frame at offset {offset} is not a raft entry of this log: {reason}", dir = .dir.display())]
    LogCorrupt {
        dir: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("{dir}: log starts at offset {log_start}, after the snapshot point's {snapshot_offset}", dir = .dir.display())]
    LogStartAhead {
        dir: PathBuf,
        log_start: u64,
        snapshot_offset: u64,
    },
    #[error("invalid voters {voters:?} for a new store (1..={VOTERS_MAX} distinct non-zero ids)")]
    Voters { voters: Vec<u64> },
}

impl StoreOpenError {
    /// Whether opening again may succeed without an operator (an I/O error
    /// may be transient; damaged files are not).
    pub fn is_retriable(&self) -> bool {
        matches!(self, StoreOpenError::Io(_) | StoreOpenError::Engine { .. })
    }
}

/// A persist failed. The store refuses every later persist: the replica
/// must be reopened from disk (what reached it is then all there is).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorePersistError {
    #[error("{dir}: {op}: {source}", dir = .dir.display())]
    Engine {
        dir: PathBuf,
        op: &'static str,
        #[source]
        source: EngineError,
    },
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{dir}: an earlier persist failed ({reason}); reopen the replica", dir = .dir.display())]
    Failed { dir: PathBuf, reason: String },
    #[error("{dir}: persists still held the store after {persists} were awaited; not closed", dir = .dir.display())]
    CloseTimedOut { dir: PathBuf, persists: usize },
}

/// [`EngineStore::close`] awaits at most this many persists in flight.
pub const CLOSE_PERSISTS_MAX: usize = 1024;

// ----- the snapshot point and the files -----

/// The last entry covered by a snapshot: its index and term, and the Kafka
/// offset of the entry after it (the engine log's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotPoint {
    pub index: u64,
    pub term: u64,
    pub offset: u64,
}

/// The decoded hard-state file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HardStateFile {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
    pub snapshot: SnapshotPoint,
    /// The crc field of the snapshot envelope it names (0 if none).
    pub snapshot_crc: u32,
    pub log_generation: u64,
    pub voters: Vec<u64>,
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

impl HardStateFile {
    pub fn encode(&self) -> Vec<u8> {
        assert!(
            !self.voters.is_empty() && self.voters.len() <= VOTERS_MAX,
            "{} voters",
            self.voters.len()
        );
        let mut out = Vec::with_capacity(HARD_STATE_FILE_BYTES_MAX);
        out.extend_from_slice(&HARD_STATE_MAGIC);
        put_u32(&mut out, HARD_STATE_VERSION);
        put_u64(&mut out, self.term);
        put_u64(&mut out, self.vote);
        put_u64(&mut out, self.commit);
        put_u64(&mut out, self.snapshot.index);
        put_u64(&mut out, self.snapshot.term);
        put_u64(&mut out, self.snapshot.offset);
        put_u64(&mut out, self.log_generation);
        put_u32(&mut out, self.snapshot_crc);
        put_u32(&mut out, 0);
        put_u32(&mut out, self.voters.len() as u32);
        debug_assert_eq!(out.len(), HARD_STATE_FIXED_BYTES);
        for v in &self.voters {
            put_u64(&mut out, *v);
        }
        let crc = crc32c::crc32c(&out);
        put_u32(&mut out, crc);
        out
    }

    /// Decodes and checks a hard-state file; never panics on input bytes.
    pub fn decode(buf: &[u8]) -> Result<HardStateFile, String> {
        if buf.len() < HARD_STATE_FIXED_BYTES + 4 {
            return Err(format!("{} bytes, too short", buf.len()));
        }
        if buf[0..4] != HARD_STATE_MAGIC {
            return Err("bad magic".into());
        }
        let version = get_u32(buf, 4);
        if version != HARD_STATE_VERSION {
            return Err(format!(
                "version {version}, this build reads {HARD_STATE_VERSION}"
            ));
        }
        let n = get_u32(buf, 72) as usize;
        if n == 0 || n > VOTERS_MAX {
            return Err(format!("{n} voters"));
        }
        let end = HARD_STATE_FIXED_BYTES + 8 * n;
        if buf.len() != end + 4 {
            return Err(format!("{} bytes for {n} voters", buf.len()));
        }
        let stored = get_u32(buf, end);
        let computed = crc32c::crc32c(&buf[..end]);
        if stored != computed {
            return Err(format!(
                "checksum {stored:#010x}, computed {computed:#010x}"
            ));
        }
        if get_u32(buf, 68) != 0 {
            return Err("reserved bytes are not zero".into());
        }
        let file = HardStateFile {
            term: get_u64(buf, 8),
            vote: get_u64(buf, 16),
            commit: get_u64(buf, 24),
            snapshot: SnapshotPoint {
                index: get_u64(buf, 32),
                term: get_u64(buf, 40),
                offset: get_u64(buf, 48),
            },
            log_generation: get_u64(buf, 56),
            snapshot_crc: get_u32(buf, 64),
            voters: (0..n)
                .map(|i| get_u64(buf, HARD_STATE_FIXED_BYTES + 8 * i))
                .collect(),
        };
        if file.commit < file.snapshot.index {
            return Err(format!(
                "commit {} below the snapshot index {}",
                file.commit, file.snapshot.index
            ));
        }
        Ok(file)
    }
}

/// The two-slot hard-state file (see `docs/format.md`, "Hard state file").
///
/// Invariants: a slot is written only in place, with one O_DIRECT block
/// write and an fdatasync, and never the slot holding the newest durable
/// state, so a torn or lost write leaves that state readable; the newest
/// state is the valid slot with the highest sequence number; sequence
/// numbers start at 1 and only grow (0 marks an empty slot).
pub mod hard_state_slots {
    use super::{get_u32, get_u64, HardStateFile};
    use super::{
        HARD_STATE_FILE_BYTES_MAX, HARD_STATE_SLOTS_FILE_BYTES, HARD_STATE_SLOT_BYTES,
        HARD_STATE_SLOT_HEADER_BYTES,
    };

    /// The newest valid slot of a file.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Newest {
        /// 0 or 1.
        pub slot: usize,
        pub sequence: u64,
        pub file: HardStateFile,
    }

    /// One slot's bytes (`HARD_STATE_SLOT_BYTES`, zero padded).
    pub fn encode(sequence: u64, file: &HardStateFile) -> Vec<u8> {
        assert!(sequence > 0, "slot sequence numbers start at 1");
        let record = file.encode();
        let mut out = Vec::with_capacity(HARD_STATE_SLOT_BYTES);
        out.extend_from_slice(&sequence.to_le_bytes());
        out.extend_from_slice(&(record.len() as u32).to_le_bytes());
        out.extend_from_slice(&record);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out.resize(HARD_STATE_SLOT_BYTES, 0);
        out
    }

    /// Decodes one slot; never panics on input bytes. `Ok(None)`: empty.
    pub fn decode(buf: &[u8]) -> Result<Option<(u64, HardStateFile)>, String> {
        if buf.len() != HARD_STATE_SLOT_BYTES {
            return Err(format!("slot of {} bytes", buf.len()));
        }
        let sequence = get_u64(buf, 0);
        if sequence == 0 {
            return Ok(None);
        }
        let len = get_u32(buf, 8) as usize;
        if len > HARD_STATE_FILE_BYTES_MAX {
            return Err(format!("record of {len} bytes"));
        }
        let end = HARD_STATE_SLOT_HEADER_BYTES + len;
        let stored = get_u32(buf, end);
        let computed = crc32c::crc32c(&buf[..end]);
        if stored != computed {
            return Err(format!(
                "slot checksum {stored:#010x}, computed {computed:#010x}"
            ));
        }
        let file = HardStateFile::decode(&buf[HARD_STATE_SLOT_HEADER_BYTES..end])?;
        Ok(Some((sequence, file)))
    }

    /// The newest valid slot of a whole file. A damaged slot beside a valid
    /// one is what a torn write leaves and is ignored; no valid slot at all
    /// is an error.
    pub fn newest(buf: &[u8]) -> Result<Newest, String> {
        if buf.len() != HARD_STATE_SLOTS_FILE_BYTES {
            return Err(format!("{} bytes, not two slots", buf.len()));
        }
        let mut best: Option<Newest> = None;
        let mut errors = Vec::new();
        for slot in 0..2 {
            let at = slot * HARD_STATE_SLOT_BYTES;
            match decode(&buf[at..at + HARD_STATE_SLOT_BYTES]) {
                Ok(Some((sequence, file))) => {
                    if best.as_ref().is_none_or(|b| sequence > b.sequence) {
                        best = Some(Newest {
                            slot,
                            sequence,
                            file,
                        });
                    }
                }
                Ok(None) => {}
                Err(e) => errors.push(format!("slot {slot}: {e}")),
            }
        }
        best.ok_or_else(|| {
            if errors.is_empty() {
                "both slots are empty".to_owned()
            } else {
                errors.join("; ")
            }
        })
    }

    /// A whole new file: `file` in slot 0 with `sequence`, slot 1 empty.
    pub fn new_file(sequence: u64, file: &HardStateFile) -> Vec<u8> {
        let mut out = encode(sequence, file);
        out.resize(HARD_STATE_SLOTS_FILE_BYTES, 0);
        out
    }
}

/// Wraps opaque snapshot data with its point: the snapshot file's bytes and
/// the `Snapshot::data` raft-rs carries to a follower.
pub fn encode_snapshot(point: SnapshotPoint, data: &[u8]) -> Bytes {
    assert!(
        data.len() <= SNAPSHOT_DATA_BYTES_MAX,
        "snapshot data of {} bytes exceeds {SNAPSHOT_DATA_BYTES_MAX}",
        data.len()
    );
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + data.len());
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    put_u32(&mut out, SNAPSHOT_VERSION);
    put_u64(&mut out, point.index);
    put_u64(&mut out, point.term);
    put_u64(&mut out, point.offset);
    put_u32(&mut out, data.len() as u32);
    let mut crc = crc32c::crc32c(&out);
    crc = crc32c::crc32c_append(crc, data);
    put_u32(&mut out, crc);
    out.extend_from_slice(data);
    Bytes::from(out)
}

/// A decoded snapshot envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotEnvelope {
    pub point: SnapshotPoint,
    /// The opaque data (a view into the envelope).
    pub data: Bytes,
    pub crc: u32,
}

/// Decodes and checks a snapshot envelope (a snapshot file, or the data of
/// a `Snapshot` or of `Action::InstallSnapshot`); never panics on input.
pub fn decode_snapshot(buf: &Bytes) -> Result<SnapshotEnvelope, String> {
    if buf.len() < SNAPSHOT_HEADER_BYTES {
        return Err(format!("{} bytes, too short", buf.len()));
    }
    if buf[0..4] != SNAPSHOT_MAGIC {
        return Err("bad magic".into());
    }
    let version = get_u32(buf, 4);
    if version != SNAPSHOT_VERSION {
        return Err(format!(
            "version {version}, this build reads {SNAPSHOT_VERSION}"
        ));
    }
    let len = get_u32(buf, 32) as usize;
    if len > SNAPSHOT_DATA_BYTES_MAX || buf.len() != SNAPSHOT_HEADER_BYTES + len {
        return Err(format!("{} bytes for {len} bytes of data", buf.len()));
    }
    let stored = get_u32(buf, 36);
    let computed = crc32c::crc32c_append(crc32c::crc32c(&buf[..36]), &buf[SNAPSHOT_HEADER_BYTES..]);
    if stored != computed {
        return Err(format!(
            "checksum {stored:#010x}, computed {computed:#010x}"
        ));
    }
    Ok(SnapshotEnvelope {
        point: SnapshotPoint {
            index: get_u64(buf, 8),
            term: get_u64(buf, 16),
            offset: get_u64(buf, 24),
        },
        data: buf.slice(SNAPSHOT_HEADER_BYTES..),
        crc: stored,
    })
}

fn snapshot_file_name(index: u64) -> String {
    format!("{SNAPSHOT_FILE_PREFIX}{index:020}")
}

fn log_dir_name(generation: u64) -> String {
    format!("{LOG_DIR_PREFIX}{generation}")
}

// ----- frames -----

/// Whether a stored frame is a control frame (a no-op or a configuration
/// change) that consumers skip: bit 31 of its `leader_epoch`. Header only.
pub fn is_control_frame(frame: &[u8]) -> bool {
    FrameHeader::ref_from(frame).is_some_and(|h| h.leader_epoch.get() & CONTROL_EPOCH_BIT != 0)
}

/// The Raft term a stored frame carries (its `leader_epoch` without the
/// control bit), if it has a header.
pub fn frame_term(frame: &[u8]) -> Option<u64> {
    FrameHeader::ref_from(frame).map(|h| u64::from(h.leader_epoch.get() & !CONTROL_EPOCH_BIT))
}

const LEADER_EPOCH_POS: usize = std::mem::offset_of!(FrameHeader, leader_epoch);

/// Sets `leader_epoch` and `base_offset` and recomputes the header crc.
fn stamp(frame: &mut [u8], leader_epoch: u32, base_offset: u64) {
    frame[LEADER_EPOCH_POS..LEADER_EPOCH_POS + 4].copy_from_slice(&leader_epoch.to_le_bytes());
    // Restamps the header crc too.
    stamp_base_offset(frame, base_offset);
}

/// A producer frame's record count, after cheap shape checks (the engine
/// validates it fully on append).
fn producer_frame_records(data: &[u8]) -> Result<u64, String> {
    match peek_frame_len(data, FRAME_BYTES_MAX) {
        Err(e) => Err(e.to_string()),
        Ok(None) => Err(format!("{} bytes, shorter than a frame header", data.len())),
        Ok(Some(len)) if len != data.len() => Err(format!(
            "a frame of {len} bytes in {} bytes of data",
            data.len()
        )),
        Ok(Some(_)) => {
            let h = FrameHeader::ref_from(data).expect("a whole header");
            let count = h.record_count.get();
            if count == 0 || h.last_offset_delta.get() != count - 1 {
                return Err(format!(
                    "record count {count}, last offset delta {}",
                    h.last_offset_delta.get()
                ));
            }
            Ok(u64::from(count))
        }
    }
}

fn entry_type_code(t: EntryType) -> u8 {
    match t {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    }
}

/// The control frame of a no-op or configuration-change entry (unstamped).
fn control_frame(entry: &Entry) -> Vec<u8> {
    let mut value = Vec::with_capacity(6 + entry.context.len() + entry.data.len());
    value.push(CONTROL_VALUE_VERSION);
    value.push(entry_type_code(entry.get_entry_type()));
    put_u32(&mut value, entry.context.len() as u32);
    value.extend_from_slice(&entry.context);
    value.extend_from_slice(&entry.data);
    let mut b = BatchBuilder::new();
    b.push(&RecordIn {
        timestamp_ms: 0,
        key: Some(CONTROL_KEY),
        value: Some(&value),
        headers: &[],
    });
    b.finish()
}

/// What a control frame holds: (entry type, context, data), as views into
/// the frame. Never panics on input bytes.
fn decode_control(frame: &Bytes) -> Result<(EntryType, Bytes, Bytes), String> {
    let mut it = records(frame).map_err(|e| e.to_string())?;
    let record = it.next().ok_or("no record")?;
    if it.next().is_some() {
        return Err("more than one record".into());
    }
    if record.key != Some(CONTROL_KEY) {
        return Err("not the control key".into());
    }
    let value = record.value.ok_or("no value")?;
    if value.len() < 6 || value[0] != CONTROL_VALUE_VERSION {
        return Err("bad control value header".into());
    }
    let entry_type = match value[1] {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        t => return Err(format!("unknown entry type {t}")),
    };
    let context_len = get_u32(value, 2) as usize;
    if value.len() - 6 < context_len {
        return Err(format!("context of {context_len} bytes does not fit"));
    }
    let context = &value[6..6 + context_len];
    let data = &value[6 + context_len..];
    Ok((entry_type, frame.slice_ref(context), frame.slice_ref(data)))
}

// ----- the written image -----

/// One entry of the log in memory: its term, the Kafka offset of its first
/// record, and its frame as stored (stamped).
#[derive(Debug, Clone)]
pub struct Slot {
    pub term: u64,
    pub base_offset: u64,
    pub frame: Bytes,
}

impl Slot {
    pub fn next_offset(&self) -> u64 {
        FrameHeader::ref_from(&self.frame)
            .expect("a staged frame has a header")
            .next_offset()
    }

    pub fn is_control(&self) -> bool {
        is_control_frame(&self.frame)
    }

    /// The raft entry this slot stores, at `index`.
    fn entry(&self, index: u64) -> Entry {
        if self.is_control() {
            let (entry_type, context, data) =
                decode_control(&self.frame).expect("a control frame checked when staged or read");
            let mut e = Entry {
                term: self.term,
                index,
                data,
                context,
                ..Default::default()
            };
            e.set_entry_type(entry_type);
            e
        } else {
            Entry {
                term: self.term,
                index,
                data: self.frame.clone(),
                ..Default::default()
            }
        }
    }
}

/// The log as raft-rs sees it: everything staged.
#[derive(Debug, Clone, Default)]
struct Image {
    start: SnapshotPoint,
    /// The snapshot envelope of `start` (empty when never compacted).
    start_envelope: Bytes,
    slots: VecDeque<Slot>,
    /// Sum of the slots' frame lengths.
    frame_bytes: u64,
    hard_state: HardState,
    conf_state: ConfState,
}

impl Image {
    fn first_index(&self) -> u64 {
        self.start.index + 1
    }

    fn last_index(&self) -> u64 {
        self.start.index + self.slots.len() as u64
    }

    fn next_offset(&self) -> u64 {
        self.slots
            .back()
            .map_or(self.start.offset, |s| s.next_offset())
    }

    fn slot(&self, index: u64) -> Option<&Slot> {
        if index <= self.start.index {
            return None;
        }
        self.slots.get((index - self.start.index - 1) as usize)
    }

    fn term(&self, index: u64) -> Option<u64> {
        if index == self.start.index {
            return Some(self.start.term);
        }
        self.slot(index).map(|s| s.term)
    }

    /// Drops the slots from `index` on.
    fn truncate_from(&mut self, index: u64) {
        let keep = (index - self.start.index - 1) as usize;
        for s in self.slots.range(keep..) {
            self.frame_bytes -= s.frame.len() as u64;
        }
        self.slots.truncate(keep);
    }

    fn push(&mut self, slot: Slot) {
        debug_assert_eq!(slot.base_offset, self.next_offset(), "offsets are dense");
        debug_assert!(
            slot.term >= self.slots.back().map_or(self.start.term, |s| s.term),
            "terms never decrease along the log"
        );
        self.frame_bytes += slot.frame.len() as u64;
        self.slots.push_back(slot);
    }

    fn check(&self) {
        assert!(
            self.start.index <= self.hard_state.commit,
            "log start {} is above the commit {}",
            self.start.index,
            self.hard_state.commit
        );
        assert!(
            self.hard_state.commit <= self.last_index(),
            "commit {} is beyond the last entry {}",
            self.hard_state.commit,
            self.last_index()
        );
        if let (Some(first), Some(last)) = (self.slots.front(), self.slots.back()) {
            assert_eq!(first.base_offset, self.start.offset, "log start offset");
            assert!(
                first.term >= self.start.term,
                "terms go back at the log start"
            );
            assert!(last.term >= first.term, "terms go back along the log");
        }
    }
}

// ----- the journal and the disk -----

/// One staged write, kept until a persist takes it.
#[derive(Debug)]
enum Write {
    /// Slots from index `at` on (replacing any there).
    Append {
        at: u64,
        slots: Vec<Slot>,
    },
    HardState(HardState),
    Compact {
        point: SnapshotPoint,
        envelope: Bytes,
    },
    Install {
        point: SnapshotPoint,
        envelope: Bytes,
        voters: Vec<u64>,
    },
}

/// What is on disk, and the log: touched only by persists, one at a time.
struct Disk<S: Storage> {
    storage: S,
    dir: PathBuf,
    config: LogConfig,
    log: Log<S>,
    /// The hard-state file as last written.
    file: HardStateFile,
    /// The open hard-state file (opened by the first in-place write).
    hs_handle: Option<S::File>,
    /// Slot (0 or 1) and sequence number of the newest durable hard state.
    hs_slot: usize,
    hs_sequence: u64,
    /// Index of the last entry appended to the engine log.
    last_index: u64,
    failed: Option<String>,
}

struct Shared<S: Storage> {
    /// Staged writes not yet taken by a persist, oldest first.
    journal: RefCell<VecDeque<(u64, Write)>>,
    /// A hard state that changes only its commit index is not written
    /// ([`EngineStore::set_lazy_commit`]).
    lazy_commit: Cell<bool>,
    /// Highest write sequence number a completed persist covered.
    persisted_seq: Cell<u64>,
    disk: async_lock::Mutex<Disk<S>>,
}

fn engine<T>(
    dir: &Path,
    op: &'static str,
    r: Result<T, EngineError>,
) -> Result<T, StorePersistError> {
    r.map_err(|source| StorePersistError::Engine {
        dir: dir.to_path_buf(),
        op,
        source,
    })
}

/// Forces what the store owns: retention is compaction's decision.
fn store_log_config(mut config: LogConfig) -> LogConfig {
    config.retention_bytes = None;
    config.retention_ms = None;
    config
}

/// Why a new log generation could not be created (for open and persist).
enum CreateLogError {
    Io(IoError),
    Engine(PathBuf, EngineError),
}

impl From<IoError> for CreateLogError {
    fn from(e: IoError) -> Self {
        CreateLogError::Io(e)
    }
}

const CREATE_LOG_OP: &str = "open a new log generation";

impl From<CreateLogError> for StorePersistError {
    fn from(e: CreateLogError) -> Self {
        match e {
            CreateLogError::Io(e) => StorePersistError::Io(e),
            CreateLogError::Engine(dir, source) => StorePersistError::Engine {
                dir,
                op: CREATE_LOG_OP,
                source,
            },
        }
    }
}

impl From<CreateLogError> for StoreOpenError {
    fn from(e: CreateLogError) -> Self {
        match e {
            CreateLogError::Io(e) => StoreOpenError::Io(e),
            CreateLogError::Engine(dir, source) => StoreOpenError::Engine {
                dir,
                op: CREATE_LOG_OP,
                source,
            },
        }
    }
}

/// Creates log generation `log_dir` empty, starting at `offset` (any
/// offset: the workaround for the missing `Log::reset_to`).
async fn create_log_at<S: Storage>(
    storage: &S,
    log_dir: &Path,
    offset: u64,
    config: &LogConfig,
    now_ms: i64,
) -> Result<Log<S>, CreateLogError> {
    storage.remove_dir_all(log_dir).await?;
    storage.create_dir_all(log_dir).await?;
    let cp = Checkpoint {
        log_start_offset: offset,
        recovery_segment_base: offset,
        recovery_position: 0,
        recovery_offset: offset,
        clean: false,
    };
    storage
        .write_atomic(&log_dir.join(CHECKPOINT_FILE), &cp.encode())
        .await?;
    let (log, _) = Log::open(storage.clone(), log_dir, config.clone(), now_ms)
        .await
        .map_err(|e| CreateLogError::Engine(log_dir.to_path_buf(), e))?;
    let o = log.offsets();
    assert!(
        o.log_start_offset == offset && o.high_watermark == offset,
        "a new log generation at {offset} opened at {o:?}"
    );
    Ok(log)
}

impl<S: Storage> Disk<S> {
    fn log_dir(&self, generation: u64) -> PathBuf {
        self.dir.join(log_dir_name(generation))
    }

    /// Writes the hard-state file. The log it speaks of is durable.
    async fn write_hard_state(&mut self) -> Result<(), StorePersistError> {
        assert!(
            self.file.commit <= self.last_index,
            "hard state commit {} beyond the durable log ({})",
            self.file.commit,
            self.last_index
        );
        assert!(self.file.commit >= self.file.snapshot.index);
        // In place, into the slot that does not hold the newest durable
        // state: one block write and one fdatasync of a file whose size
        // and blocks never change (no journal commit, no rename).
        let path = self.dir.join(HARD_STATE_FILE);
        if self.hs_handle.is_none() {
            let Some(handle) = self.storage.open(&path).await? else {
                return Err(StorePersistError::Io(IoError::new(
                    "open the hard state",
                    &path,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the hard-state file is gone",
                    ),
                )));
            };
            self.hs_handle = Some(handle);
        }
        let handle = self.hs_handle.as_ref().expect("opened above");
        let slot = 1 - self.hs_slot;
        let sequence = self.hs_sequence + 1;
        let bytes = hard_state_slots::encode(sequence, &self.file);
        let mut buf = handle.alloc_buf(HARD_STATE_SLOT_BYTES);
        buf.as_mut_slice().copy_from_slice(&bytes);
        handle
            .write_at(buf, (slot * HARD_STATE_SLOT_BYTES) as u64)
            .await?;
        handle.fdatasync().await?;
        self.hs_slot = slot;
        self.hs_sequence = sequence;
        Ok(())
    }

    async fn flush(&mut self, now_ms: i64) -> Result<(), StorePersistError> {
        let durable = engine(&self.dir, "flush", self.log.flush(now_ms).await)?;
        assert_eq!(
            durable,
            self.log.offsets().high_watermark,
            "a flush leaves the log durable to its end"
        );
        Ok(())
    }

    async fn remove_snapshot_file(&self, index: u64) -> Result<(), StorePersistError> {
        if index > 0 {
            self.storage
                .remove(&self.dir.join(snapshot_file_name(index)))
                .await?;
        }
        Ok(())
    }

    /// Carries out `writes` in order (see the module documentation).
    async fn apply(
        &mut self,
        writes: Vec<(u64, Write)>,
        now_ms: i64,
        lazy_commit: bool,
    ) -> Result<(), StorePersistError> {
        let mut log_dirty = false;
        let mut hard_state_dirty = false;
        for (_, write) in writes {
            match write {
                Write::Append { at, slots } => {
                    let base = slots[0].base_offset;
                    let end = self.log.offsets().high_watermark;
                    if end > base {
                        let cut = engine(
                            &self.dir,
                            "truncate a replaced suffix",
                            self.log.truncate_to(base).await,
                        )?;
                        assert_eq!(cut, base, "the cut lands on the replaced entry's frame");
                    }
                    assert_eq!(
                        self.log.offsets().high_watermark,
                        base,
                        "the engine log ends where entry {at} begins"
                    );
                    for (i, slot) in slots.iter().enumerate() {
                        let info = engine(
                            &self.dir,
                            "append",
                            self.log
                                .append(BytesMut::from(&slot.frame[..]), now_ms)
                                .await,
                        )?;
                        assert_eq!(
                            info.base_offset,
                            slot.base_offset,
                            "entry {} got another offset than staged",
                            at + i as u64
                        );
                    }
                    self.last_index = at + slots.len() as u64 - 1;
                    log_dirty = true;
                }
                Write::HardState(hs) => {
                    let commit_only = self.file.term == hs.term && self.file.vote == hs.vote;
                    self.file.term = hs.term;
                    self.file.vote = hs.vote;
                    self.file.commit = hs.commit;
                    // Raft needs term and vote durable before it speaks;
                    // the commit index it can learn again from the leader.
                    hard_state_dirty |= !(lazy_commit && commit_only);
                }
                Write::Compact { point, envelope } => {
                    if log_dirty {
                        self.flush(now_ms).await?;
                        log_dirty = false;
                    }
                    let env = decode_snapshot(&envelope).expect("an envelope this store made");
                    self.storage
                        .write_atomic(&self.dir.join(snapshot_file_name(point.index)), &envelope)
                        .await?;
                    let old = self.file.snapshot.index;
                    self.file.snapshot = point;
                    self.file.snapshot_crc = env.crc;
                    self.write_hard_state().await?;
                    hard_state_dirty = false;
                    let start = engine(
                        &self.dir,
                        "delete records before the snapshot point",
                        self.log.delete_records_before(point.offset).await,
                    )?;
                    assert_eq!(start, point.offset);
                    if old != point.index {
                        self.remove_snapshot_file(old).await?;
                    }
                }
                Write::Install {
                    point,
                    envelope,
                    voters,
                } => {
                    let env = decode_snapshot(&envelope).expect("an envelope checked when staged");
                    self.storage
                        .write_atomic(&self.dir.join(snapshot_file_name(point.index)), &envelope)
                        .await?;
                    let old_generation = self.file.log_generation;
                    let generation = old_generation + 1;
                    let log = create_log_at(
                        &self.storage,
                        &self.log_dir(generation),
                        point.offset,
                        &self.config,
                        now_ms,
                    )
                    .await?;
                    let old_snapshot = self.file.snapshot.index;
                    self.file.snapshot = point;
                    self.file.snapshot_crc = env.crc;
                    self.file.log_generation = generation;
                    self.file.voters = voters;
                    self.file.commit = self.file.commit.max(point.index);
                    self.file.term = self.file.term.max(point.term);
                    self.last_index = point.index;
                    // The old generation's unflushed appends are discarded
                    // with it; the new one is empty and durable.
                    let old_log = std::mem::replace(&mut self.log, log);
                    log_dirty = false;
                    self.write_hard_state().await?;
                    hard_state_dirty = false;
                    drop(old_log);
                    self.storage
                        .remove_dir_all(&self.log_dir(old_generation))
                        .await?;
                    if old_snapshot != point.index {
                        self.remove_snapshot_file(old_snapshot).await?;
                    }
                }
            }
        }
        if log_dirty {
            self.flush(now_ms).await?;
        }
        if hard_state_dirty {
            self.write_hard_state().await?;
        }
        Ok(())
    }
}

// ----- the store -----

/// What [`EngineStore::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreRecovery {
    /// No hard state and no log: a new store was created.
    pub created: bool,
    /// The engine log's own recovery.
    pub log: RecoveryReport,
    /// Leftovers of interrupted writes removed (tmp files, unnamed
    /// snapshot files and log generations).
    pub leftovers_removed: usize,
    /// A compaction had named its snapshot point but not moved the log
    /// start yet: finished now.
    pub compaction_finished: bool,
    /// The log ended before the snapshot point (synced data lost): it was
    /// restarted empty at the snapshot point.
    pub log_restarted: bool,
    /// The hard state's commit was beyond the durable log and was clamped
    /// to its last entry (from this value).
    pub commit_clamped_from: Option<u64>,
    /// The hard-state file was in the version 1 layout (one record) and was
    /// rewritten as two slots.
    pub hard_state_converted: bool,
    pub entries: u64,
}

/// The durable [`LogStore`] over a `strom_engine::Log` (see the module
/// documentation).
pub struct EngineStore<S: Storage> {
    dir: PathBuf,
    written: Image,
    write_seq: u64,
    synced_seq: u64,
    shared: Rc<Shared<S>>,
}

impl<S: Storage> EngineStore<S> {
    /// Opens the replica store in `dir`, or creates it for a new group of
    /// `voters` (which are then durable at once, as every replica of a new
    /// group starts from the same state). For an existing store `voters`
    /// is not used: the core compares the stored voters with its
    /// configuration. The log configuration's retention is forced off, and
    /// its `frame_bytes_max` must admit the replicas' `proposal_bytes_max`
    /// (a frame the engine refuses fails the persist, hence the store).
    pub async fn open(
        storage: S,
        dir: &Path,
        voters: &[u64],
        config: LogConfig,
        now_ms: i64,
    ) -> Result<(Self, StoreRecovery), StoreOpenError> {
        let config = store_log_config(config);
        let mut recovery = StoreRecovery::default();
        storage.create_dir_all(dir).await?;
        let names = storage.list(dir).await?;
        let hs_path = dir.join(HARD_STATE_FILE);
        let corrupt_hs = |reason: String| StoreOpenError::HardStateCorrupt {
            path: hs_path.clone(),
            reason,
        };
        // Slot and sequence of the newest durable hard state.
        let mut hs_at = (0usize, 1u64);
        let mut file = match storage
            .read_all(&hs_path, HARD_STATE_SLOTS_FILE_BYTES)
            .await?
        {
            Some(bytes) if bytes.len() == HARD_STATE_SLOTS_FILE_BYTES => {
                let newest = hard_state_slots::newest(&bytes).map_err(corrupt_hs)?;
                hs_at = (newest.slot, newest.sequence);
                newest.file
            }
            Some(bytes) => {
                // Version 1 of the file: one record, replaced whole. Read
                // it and rewrite it as two slots (atomically, once).
                let file = HardStateFile::decode(&bytes).map_err(corrupt_hs)?;
                storage
                    .write_atomic(&hs_path, &hard_state_slots::new_file(1, &file))
                    .await?;
                recovery.hard_state_converted = true;
                file
            }
            None => {
                let ours = |n: &String| {
                    !n.ends_with(TMP_SUFFIX)
                        && (n.starts_with(LOG_DIR_PREFIX) || n.starts_with(SNAPSHOT_FILE_PREFIX))
                };
                if names.iter().any(ours) {
                    return Err(StoreOpenError::MissingHardState {
                        dir: dir.to_path_buf(),
                    });
                }
                let mut sorted = voters.to_vec();
                sorted.sort_unstable();
                sorted.dedup();
                if voters.is_empty()
                    || voters.len() > VOTERS_MAX
                    || sorted.len() != voters.len()
                    || voters.contains(&0)
                {
                    return Err(StoreOpenError::Voters {
                        voters: voters.to_vec(),
                    });
                }
                let file = HardStateFile {
                    voters: voters.to_vec(),
                    ..Default::default()
                };
                storage
                    .write_atomic(&hs_path, &hard_state_slots::new_file(1, &file))
                    .await?;
                recovery.created = true;
                file
            }
        };
        // Leftovers of interrupted writes.
        let current_log = log_dir_name(file.log_generation);
        let current_snapshot =
            (file.snapshot.index > 0).then(|| snapshot_file_name(file.snapshot.index));
        for name in &names {
            let path = dir.join(name);
            if name.ends_with(TMP_SUFFIX) {
                storage.remove(&path).await?;
            } else if name.starts_with(LOG_DIR_PREFIX) && *name != current_log {
                storage.remove_dir_all(&path).await?;
            } else if name.starts_with(SNAPSHOT_FILE_PREFIX)
                && Some(name) != current_snapshot.as_ref()
            {
                storage.remove(&path).await?;
            } else {
                continue;
            }
            recovery.leftovers_removed += 1;
        }
        // The snapshot the hard state names.
        let mut envelope = Bytes::new();
        if let Some(name) = &current_snapshot {
            let path = dir.join(name);
            let corrupt = |reason: String| StoreOpenError::SnapshotCorrupt {
                path: path.clone(),
                reason,
            };
            let bytes = storage
                .read_all(&path, SNAPSHOT_HEADER_BYTES + SNAPSHOT_DATA_BYTES_MAX)
                .await?
                .ok_or_else(|| corrupt("missing".into()))?;
            let env = decode_snapshot(&bytes).map_err(corrupt)?;
            if env.point != file.snapshot || env.crc != file.snapshot_crc {
                return Err(corrupt(format!(
                    "holds {:?} (crc {:#010x}), the hard state names {:?} (crc {:#010x})",
                    env.point, env.crc, file.snapshot, file.snapshot_crc
                )));
            }
            envelope = bytes;
        }
        // The log, reconciled with the snapshot point.
        let log_dir = dir.join(&current_log);
        let open_err = |op: &'static str| {
            let dir = log_dir.clone();
            move |source| StoreOpenError::Engine { dir, op, source }
        };
        let (mut log, report) = Log::open(storage.clone(), &log_dir, config.clone(), now_ms)
            .await
            .map_err(open_err("open the log"))?;
        recovery.log = report;
        let offsets = log.offsets();
        let point = file.snapshot;
        if offsets.high_watermark < point.offset {
            drop(log);
            let generation = file.log_generation + 1;
            let new_dir = dir.join(log_dir_name(generation));
            log = create_log_at(&storage, &new_dir, point.offset, &config, now_ms).await?;
            // Switch to the new generation (its commit is clamped below,
            // in memory; the next hard-state write stores it).
            file.log_generation = generation;
            hs_at = (0, hs_at.1 + 1);
            storage
                .write_atomic(&hs_path, &hard_state_slots::new_file(hs_at.1, &file))
                .await?;
            storage.remove_dir_all(&log_dir).await?;
            recovery.log_restarted = true;
        } else if offsets.log_start_offset < point.offset {
            log.delete_records_before(point.offset)
                .await
                .map_err(open_err("finish a compaction"))?;
            recovery.compaction_finished = true;
        } else if offsets.log_start_offset > point.offset {
            return Err(StoreOpenError::LogStartAhead {
                dir: log_dir,
                log_start: offsets.log_start_offset,
                snapshot_offset: point.offset,
            });
        }
        // Every frame after the log start becomes a slot.
        let mut image = Image {
            start: point,
            start_envelope: envelope,
            conf_state: ConfState {
                voters: file.voters.clone(),
                ..Default::default()
            },
            ..Default::default()
        };
        let end = log.offsets().high_watermark;
        let mut next = point.offset;
        let mut last_term = point.term;
        while next < end {
            let batch = log
                .read(next, OPEN_READ_BYTES)
                .await
                .map_err(open_err("read the log"))?;
            assert!(
                !batch.frames.is_empty(),
                "a read below the end returns a frame"
            );
            for frame in batch.frames {
                let corrupt = |reason: String| StoreOpenError::LogCorrupt {
                    dir: log_dir.clone(),
                    offset: next,
                    reason,
                };
                let h = FrameHeader::ref_from(&frame).expect("a verified frame");
                if h.base_offset() != next {
                    return Err(corrupt(format!("frame starts at {}", h.base_offset())));
                }
                let term = frame_term(&frame).expect("a header");
                if term == 0 || term < last_term {
                    return Err(corrupt(format!("term {term} after term {last_term}")));
                }
                if is_control_frame(&frame) {
                    decode_control(&frame).map_err(|r| corrupt(format!("control frame: {r}")))?;
                }
                next = h.next_offset();
                last_term = term;
                image.push(Slot {
                    term,
                    base_offset: h.base_offset(),
                    frame,
                });
            }
        }
        recovery.entries = image.slots.len() as u64;
        let last_index = image.last_index();
        let mut commit = file.commit;
        if commit > last_index {
            recovery.commit_clamped_from = Some(commit);
            commit = last_index;
        }
        image.hard_state = HardState {
            term: file.term,
            vote: file.vote,
            commit,
            ..Default::default()
        };
        image.check();
        let disk = Disk {
            storage,
            dir: dir.to_path_buf(),
            config,
            log,
            file: HardStateFile { commit, ..file },
            hs_handle: None,
            hs_slot: hs_at.0,
            hs_sequence: hs_at.1,
            last_index,
            failed: None,
        };
        let store = EngineStore {
            dir: dir.to_path_buf(),
            written: image,
            write_seq: 0,
            synced_seq: 0,
            shared: Rc::new(Shared {
                journal: RefCell::new(VecDeque::new()),
                persisted_seq: Cell::new(0),
                lazy_commit: Cell::new(false),
                disk: async_lock::Mutex::new(disk),
            }),
        };
        Ok((store, recovery))
    }

    /// With `lazy` on, a hard state that changes only the commit index is
    /// kept in memory and written with the next change of term or vote, a
    /// compaction or an installed snapshot: a persist whose only write is
    /// a new commit index does no I/O. After a crash the commit index may
    /// come back lower than it was (never lower than the snapshot point);
    /// Raft allows that (the leader tells it again), but an apply callback
    /// then sees entries above it once more: only for replicas that replay
    /// their applied entries on open (`ReplicaConfig::replay_applied`),
    /// whose state is rebuilt from the log rather than kept.
    pub fn set_lazy_commit(&self, lazy: bool) {
        self.shared.lazy_commit.set(lazy);
    }

    /// Makes the staged writes `..= upto` durable (see the module
    /// documentation); then the shell calls `ReplicaCore::on_persisted`.
    /// The future holds no borrow of the store.
    pub fn persist(
        &self,
        upto: u64,
        now_ms: i64,
    ) -> impl Future<Output = Result<(), StorePersistError>> + 'static {
        assert!(
            upto <= self.write_seq,
            "persist({upto}) of writes never staged (last {})",
            self.write_seq
        );
        let shared = self.shared.clone();
        async move {
            let mut disk = shared.disk.lock().await;
            if let Some(reason) = &disk.failed {
                return Err(StorePersistError::Failed {
                    dir: disk.dir.clone(),
                    reason: reason.clone(),
                });
            }
            if shared.persisted_seq.get() >= upto {
                return Ok(());
            }
            let writes: Vec<(u64, Write)> = {
                let mut journal = shared.journal.borrow_mut();
                let n = journal.iter().take_while(|(seq, _)| *seq <= upto).count();
                journal.drain(..n).collect()
            };
            match disk.apply(writes, now_ms, shared.lazy_commit.get()).await {
                Ok(()) => {
                    shared
                        .persisted_seq
                        .set(shared.persisted_seq.get().max(upto));
                    Ok(())
                }
                Err(e) => {
                    disk.failed = Some(e.to_string());
                    Err(e)
                }
            }
        }
    }

    /// Closes the engine log cleanly, once the persists in flight (tasks
    /// that hold the store) have ended: each is awaited through the disk
    /// mutex it holds while it runs, so nothing spins. At most
    /// [`CLOSE_PERSISTS_MAX`] of them.
    pub async fn close(self, now_ms: i64) -> Result<(), StorePersistError> {
        let mut held = self.shared;
        let mut waited = 0;
        let shared = loop {
            match Rc::try_unwrap(held) {
                Ok(shared) => break shared,
                Err(rc) if waited < CLOSE_PERSISTS_MAX => {
                    // A persist runs under the lock and its task ends in
                    // the poll that releases it.
                    drop(rc.disk.lock().await);
                    // Let a persist task not yet started take the lock.
                    futures_lite::future::yield_now().await;
                    held = rc;
                    waited += 1;
                }
                Err(_) => {
                    return Err(StorePersistError::CloseTimedOut {
                        dir: self.dir,
                        persists: waited,
                    })
                }
            }
        };
        let disk = shared.disk.into_inner();
        let dir = disk.dir.clone();
        if let Some(handle) = disk.hs_handle {
            handle.close().await?;
        }
        engine(&dir, "close", disk.log.close(now_ms).await)
    }

    // ----- queries -----

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Index of the first entry (snapshot index + 1).
    pub fn first_index(&self) -> u64 {
        self.written.first_index()
    }

    /// Index of the last staged entry.
    pub fn last_index(&self) -> u64 {
        self.written.last_index()
    }

    /// The staged hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.written.hard_state
    }

    /// The snapshot point the log starts after (staged).
    pub fn snapshot_point(&self) -> SnapshotPoint {
        self.written.start
    }

    /// The slot of entry `index` (its term, offset and frame), if held.
    pub fn slot(&self, index: u64) -> Option<&Slot> {
        self.written.slot(index)
    }

    /// The raft entry at `index`, as raft-rs reads it.
    pub fn entry(&self, index: u64) -> Option<Entry> {
        self.written.slot(index).map(|s| s.entry(index))
    }

    /// The Kafka offset after entry `index` (the high watermark once
    /// `index` is applied), for the snapshot point or a held entry.
    pub fn offset_after(&self, index: u64) -> Option<u64> {
        if index == self.written.start.index {
            return Some(self.written.start.offset);
        }
        self.written.slot(index).map(|s| s.next_offset())
    }

    /// Bytes of entries held in memory (frames plus slots).
    pub fn memory_bytes(&self) -> u64 {
        self.written.frame_bytes + (self.written.slots.len() * std::mem::size_of::<Slot>()) as u64
    }

    /// The entries held in memory exceed [`TAIL_MEMORY_BYTES_SOFT_MAX`]:
    /// the shell should compact up to the applied index.
    pub fn wants_compaction(&self) -> bool {
        self.memory_bytes() > TAIL_MEMORY_BYTES_SOFT_MAX
    }

    /// Highest write sequence number a completed persist covered.
    pub fn persisted_seq(&self) -> u64 {
        self.shared.persisted_seq.get()
    }

    // ----- staging -----

    fn stage(&mut self, write: Write) {
        self.written.check();
        self.write_seq += 1;
        self.shared
            .journal
            .borrow_mut()
            .push_back((self.write_seq, write));
    }

    /// The stored frame of `entry` at `base_offset` (stamped).
    fn frame_of(&self, entry: &Entry, base_offset: u64) -> Bytes {
        assert!(
            entry.term >= 1 && entry.term <= TERM_MAX,
            "entry {} has term {}: frames carry terms 1..={TERM_MAX}",
            entry.index,
            entry.term
        );
        let producer = entry.get_entry_type() == EntryType::EntryNormal && !entry.data.is_empty();
        let (mut frame, epoch) = if producer {
            if let Err(reason) = producer_frame_records(&entry.data) {
                panic!(
                    "entry {} (term {}) is not a record batch frame ({reason}): the shell proposes only frames that passed validate_incoming",
                    entry.index, entry.term
                );
            }
            assert!(
                entry.context.is_empty(),
                "entry {}: a producer frame carries no raft context",
                entry.index
            );
            (BytesMut::from(&entry.data[..]), entry.term as u32)
        } else {
            (
                BytesMut::from(&control_frame(entry)[..]),
                entry.term as u32 | CONTROL_EPOCH_BIT,
            )
        };
        stamp(&mut frame, epoch, base_offset);
        frame.freeze()
    }
}

impl<S: Storage> LogStore for EngineStore<S> {
    fn append(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first() else {
            return;
        };
        let at = first.index;
        let image = &self.written;
        assert!(
            at > image.start.index,
            "append at {at} overwrites the compacted log (start {})",
            image.start.index
        );
        assert!(
            at <= image.last_index() + 1,
            "append at {at} leaves a gap after {}",
            image.last_index()
        );
        let commit = image.hard_state.commit;
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.index, at + i as u64, "appended entries are not dense");
            if e.index <= commit {
                assert_eq!(
                    image.term(e.index),
                    Some(e.term),
                    "append of entry {} (term {}) overwrites a committed entry (commit {commit})",
                    e.index,
                    e.term
                );
            }
        }
        let mut offset = match image.slot(at) {
            Some(s) => s.base_offset,
            None => image.next_offset(),
        };
        let mut slots = Vec::with_capacity(entries.len());
        for e in &entries {
            let frame = self.frame_of(e, offset);
            let slot = Slot {
                term: e.term,
                base_offset: offset,
                frame,
            };
            offset = slot.next_offset();
            slots.push(slot);
        }
        self.written.truncate_from(at);
        for s in &slots {
            self.written.push(s.clone());
        }
        self.stage(Write::Append { at, slots });
    }

    fn set_hard_state(&mut self, hs: HardState) {
        let old = &self.written.hard_state;
        assert!(
            hs.term >= old.term,
            "hard state term goes back from {} to {}",
            old.term,
            hs.term
        );
        assert!(
            hs.commit >= old.commit,
            "hard state commit goes back from {} to {}",
            old.commit,
            hs.commit
        );
        self.written.hard_state = hs.clone();
        self.stage(Write::HardState(hs));
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) {
        let meta = snapshot.get_metadata();
        let env = match decode_snapshot(&snapshot.data) {
            Ok(env) => env,
            Err(reason) => panic!(
                "snapshot at {} from the leader is not an EngineStore envelope: {reason}",
                meta.index
            ),
        };
        assert_eq!(
            (env.point.index, env.point.term),
            (meta.index, meta.term),
            "snapshot envelope and metadata disagree"
        );
        let cs = meta.get_conf_state();
        assert!(
            cs.learners.is_empty() && cs.voters_outgoing.is_empty() && cs.learners_next.is_empty(),
            "membership changes are not built: {cs:?}"
        );
        let image = &mut self.written;
        assert!(
            meta.index >= image.hard_state.commit,
            "snapshot at {} is below the commit {}",
            meta.index,
            image.hard_state.commit
        );
        image.start = env.point;
        image.start_envelope = snapshot.data.clone();
        image.slots.clear();
        image.frame_bytes = 0;
        image.hard_state.commit = meta.index;
        image.hard_state.term = image.hard_state.term.max(meta.term);
        image.conf_state = ConfState {
            voters: cs.voters.clone(),
            ..Default::default()
        };
        self.stage(Write::Install {
            point: env.point,
            envelope: snapshot.data.clone(),
            voters: cs.voters.clone(),
        });
    }

    fn compact(&mut self, index: u64, term: u64, data: Bytes) {
        let image = &mut self.written;
        if index <= image.start.index {
            return;
        }
        assert!(
            index <= image.hard_state.commit,
            "compaction through {index} passes the commit {}",
            image.hard_state.commit
        );
        assert_eq!(
            image.term(index),
            Some(term),
            "compaction through {index} names the wrong term"
        );
        let point = SnapshotPoint {
            index,
            term,
            offset: image.slot(index).expect("held").next_offset(),
        };
        let drop = (index - image.start.index) as usize;
        for s in image.slots.drain(..drop) {
            image.frame_bytes -= s.frame.len() as u64;
        }
        let envelope = encode_snapshot(point, &data);
        image.start = point;
        image.start_envelope = envelope.clone();
        self.stage(Write::Compact { point, envelope });
    }

    fn write_seq(&self) -> u64 {
        self.write_seq
    }

    fn synced_seq(&self) -> u64 {
        self.synced_seq
    }

    fn mark_synced(&mut self, seq: u64) -> Result<(), PersistError> {
        if seq > self.write_seq {
            return Err(PersistError::AheadOfWrites {
                reported: seq,
                written: self.write_seq,
            });
        }
        assert!(
            seq <= self.synced_seq || seq <= self.shared.persisted_seq.get(),
            "write {seq} reported synced before persist({seq}) completed (persisted {})",
            self.shared.persisted_seq.get()
        );
        self.synced_seq = self.synced_seq.max(seq);
        Ok(())
    }

    fn voters(&self) -> Vec<u64> {
        self.written.conf_state.voters.clone()
    }
}

impl<S: Storage> raft::Storage for EngineStore<S> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.written.hard_state.clone(),
            self.written.conf_state.clone(),
        ))
    }

    /// Always from memory (see "Memory bound"): `context` is not used.
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let image = &self.written;
        if low < image.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        // raft-rs's contract: it never asks past the last entry.
        assert!(
            high <= image.last_index() + 1 && low <= high,
            "entries [{low}, {high}) asked of a log ending at {}",
            image.last_index()
        );
        let max_size = max_size.into();
        // Collect until the data alone passes the limit (an entry's encoded
        // size is at least its data), then let raft-rs cut exactly.
        let mut entries = Vec::new();
        let mut data_bytes = 0u64;
        for index in low..high {
            let e = image.slot(index).expect("in range").entry(index);
            data_bytes += e.data.len() as u64;
            entries.push(e);
            if max_size.is_some_and(|m| data_bytes > m) {
                break;
            }
        }
        raft::util::limit_size(&mut entries, max_size);
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let image = &self.written;
        if idx == image.start.index {
            return Ok(image.start.term);
        }
        if idx < image.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match image.term(idx) {
            Some(term) => Ok(term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.written.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.written.last_index())
    }

    /// The snapshot is the log start with its envelope; never compacted,
    /// or older than asked: not yet.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let image = &self.written;
        if image.start.index == 0 || image.start.index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot {
            data: image.start_envelope.clone(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = image.start.index;
        meta.term = image.start.term;
        meta.set_conf_state(image.conf_state.clone());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_costs_48_bytes_besides_its_frame() {
        assert_eq!(std::mem::size_of::<Slot>(), 48);
    }

    #[test]
    fn hard_state_file_round_trips_and_refuses_damage() {
        let file = HardStateFile {
            term: 7,
            vote: 2,
            commit: 40,
            snapshot: SnapshotPoint {
                index: 30,
                term: 6,
                offset: 1234,
            },
            snapshot_crc: 0xdead_beef,
            log_generation: 3,
            voters: vec![1, 2, 3],
        };
        let bytes = file.encode();
        assert_eq!(bytes.len(), 76 + 3 * 8 + 4);
        assert_eq!(&bytes[0..4], b"SRHS");
        assert_eq!(get_u64(&bytes, 24), 40, "commit at byte 24");
        assert_eq!(get_u64(&bytes, 48), 1234, "snapshot offset at byte 48");
        assert_eq!(HardStateFile::decode(&bytes), Ok(file.clone()));
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(HardStateFile::decode(&b).is_err(), "flip at {i}.{bit}");
            }
        }
        for len in 0..bytes.len() {
            assert!(HardStateFile::decode(&bytes[..len]).is_err());
        }
    }

    #[test]
    fn hard_state_slots_pick_the_newest_valid_one() {
        let a = HardStateFile {
            term: 1,
            vote: 1,
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        let b = HardStateFile {
            term: 2,
            commit: 5,
            ..a.clone()
        };
        let mut file = hard_state_slots::new_file(1, &a);
        assert_eq!(file.len(), HARD_STATE_SLOTS_FILE_BYTES);
        let got = hard_state_slots::newest(&file).unwrap();
        assert_eq!((got.slot, got.sequence, &got.file), (0, 1, &a));
        // The second write goes to slot 1 and wins by its sequence.
        file[HARD_STATE_SLOT_BYTES..].copy_from_slice(&hard_state_slots::encode(2, &b));
        let got = hard_state_slots::newest(&file).unwrap();
        assert_eq!((got.slot, got.sequence, &got.file), (1, 2, &b));
        // The third overwrites slot 0; a later sequence wins wherever it is.
        file[..HARD_STATE_SLOT_BYTES].copy_from_slice(&hard_state_slots::encode(3, &a));
        assert_eq!(hard_state_slots::newest(&file).unwrap().slot, 0);
        // A flip anywhere in the written part of the newest slot (a torn
        // write) falls back to the other one; in both, refuses.
        let written = 12 + a.encode().len() + 4;
        for i in 0..written {
            let mut torn = file.clone();
            torn[i] ^= 0x10;
            let got = hard_state_slots::newest(&torn);
            match got {
                Ok(n) => assert_eq!((n.slot, &n.file), (1, &b), "flip at {i}"),
                Err(e) => panic!("flip at {i}: {e}"),
            }
            torn[HARD_STATE_SLOT_BYTES + i] ^= 0x10;
            assert!(hard_state_slots::newest(&torn).is_err(), "flips at {i}");
        }
        assert!(hard_state_slots::newest(&file[..HARD_STATE_SLOT_BYTES]).is_err());
        assert!(hard_state_slots::newest(&[0; HARD_STATE_SLOTS_FILE_BYTES]).is_err());
        let mut long = file.clone();
        long[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(hard_state_slots::decode(&long[..HARD_STATE_SLOT_BYTES]).is_err());
    }

    #[test]
    fn snapshot_envelope_round_trips_and_refuses_damage() {
        let point = SnapshotPoint {
            index: 9,
            term: 2,
            offset: 77,
        };
        let env = encode_snapshot(point, b"producers");
        let d = decode_snapshot(&env).unwrap();
        assert_eq!(d.point, point);
        assert_eq!(&d.data[..], b"producers");
        for i in 0..env.len() {
            let mut b = env.to_vec();
            b[i] ^= 0x10;
            assert!(decode_snapshot(&Bytes::from(b)).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn control_frames_carry_the_entry_and_are_marked_in_the_epoch() {
        let mut e = Entry {
            term: 5,
            index: 12,
            data: Bytes::from_static(b"conf"),
            context: Bytes::from_static(b"ctx"),
            ..Default::default()
        };
        e.set_entry_type(EntryType::EntryConfChangeV2);
        let mut frame = BytesMut::from(&control_frame(&e)[..]);
        strom_flatbuffers::validate_incoming(&frame, &Default::default())
            .expect("the engine accepts it");
        stamp(&mut frame, 5 | CONTROL_EPOCH_BIT, 100);
        let frame = frame.freeze();
        strom_flatbuffers::verify_stored(&frame).expect("stamped crc");
        assert!(is_control_frame(&frame));
        assert_eq!(frame_term(&frame), Some(5));
        let slot = Slot {
            term: 5,
            base_offset: 100,
            frame,
        };
        assert_eq!(slot.next_offset(), 101, "a control frame takes one offset");
        let back = slot.entry(12);
        assert_eq!(back.get_entry_type(), EntryType::EntryConfChangeV2);
        assert_eq!(&back.data[..], b"conf");
        assert_eq!(&back.context[..], b"ctx");
        let noop = Entry {
            term: 5,
            index: 13,
            ..Default::default()
        };
        let f = Bytes::from(control_frame(&noop));
        let (t, c, d) = decode_control(&f).unwrap();
        assert_eq!(t, EntryType::EntryNormal);
        assert!(c.is_empty() && d.is_empty());
    }
}
