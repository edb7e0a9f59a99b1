//! Strom's own wire encoding of raft messages between two nodes: one
//! *batch* carries the messages of many raft groups (one group per
//! partition) from one node to another, so that the heartbeats of 1,000
//! idle partitions cross a (shard, peer) connection as one write.
//!
//! Why not raft-rs's protobuf encoding: the protobuf 2.x decoder recurses
//! without bound on crafted nested input (a stack overflow, not an error),
//! and it takes lengths and counts from the input before it has the bytes.
//! Bytes from the network therefore never reach it; this module decodes
//! them into `raft::eraftpb::Message` structs itself.
//!
//! The byte layout is specified in `docs/format.md` ("Wire: batches of raft
//! messages"); this module
//! is its only implementation. Fixed-size little-endian headers
//! ([`BatchHeader`], [`MessageHeader`], [`EntryHeader`],
//! [`SnapshotHeader`]) followed by the variable parts they count.
//!
//! Invariants:
//! - Every field of raft-rs 0.7's `Message`, `Entry`, `Snapshot`,
//!   `SnapshotMetadata` and `ConfState` is carried, including the
//!   deprecated ones (`deprecated_priority`, `sync_log`) and the presence
//!   of the optional sub-messages, so that a decoded message is equal to
//!   the original, field for field (protobuf's `unknown_fields` and
//!   `cached_size` are not carried: raft-rs never sets them).
//! - The encoding is canonical: a decoded batch re-encodes to exactly the
//!   bytes it came from (reserved bytes and unused flag bits are 0, absent
//!   parts are all zero).
//! - The encoder refuses what the decoder would refuse: every limit below
//!   is checked on both sides, so a batch this build writes is one this
//!   build reads.
//! - The decoder never panics on input, checks the crc32c (which covers
//!   every byte of the batch but the checksum itself) before it reads a
//!   message, bounds every count and length by its limit *and* by the bytes
//!   left before it allocates, and so allocates at most a small multiple of
//!   the input length (the `Message` and `Entry` structs plus one copy of
//!   each data and context payload).
//! - An incomplete batch on a stream is `Ok(None)` from [`peek_batch_len`],
//!   not an error.
//!
//! What this module does not check: whether the messages make sense to
//! raft (a peer is trusted to run the protocol; `ReplicaCore::step`
//! filters message types and senders), nor whether `from_node` is who the
//! connection says it is (the transport's concern).
//!
//! Everything here is I/O-free.

use std::fmt;

use bytes::Bytes;
use raft::eraftpb::{
    ConfState, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMetadata,
};
use zerocopy::little_endian::{I64, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::limits;

// ------------------------------------------------------------------ limits

/// Bytes of one batch, header included. A receiver may buffer this much per
/// connection before it can check a batch. It holds the largest single
/// message with room to spare (asserted below): an append of one
/// proposal-sized entry, or a snapshot.
pub const BATCH_BYTES_MAX: usize = 32 << 20;
/// Messages in one batch: the heartbeats and responses of this many groups
/// may share one write (1,000 idle partitions need a few percent of it).
pub const MESSAGES_PER_BATCH_MAX: usize = 1 << 16;
/// Entries in one message. raft-rs bounds an append by the protobuf size of
/// its entries (`max_size_per_msg`, [`limits::DEFAULT_MSG_BYTES_MAX`]); an
/// entry costs at least [`PROTOBUF_ENTRY_BYTES_MIN`] of it, so this is at
/// least `DEFAULT_MSG_BYTES_MAX / 4 + 1` (asserted below).
pub const ENTRIES_PER_MESSAGE_MAX: usize = 1 << 19;
/// Bytes of one entry's `data`: one record batch frame, at most
/// [`limits::PROPOSAL_BYTES_MAX`] (asserted below); conf changes and
/// read-index contexts are far smaller.
pub const ENTRY_BYTES_MAX: usize = 8 << 20;
/// Bytes of one `context` (a message's or an entry's). raft-rs puts small
/// tags there (`CampaignTransfer`, read-index request ids).
pub const CONTEXT_BYTES_MAX: usize = 64 << 10;
/// Bytes of one snapshot's `data` (Strom's: the log start and producer
/// state, not the log itself).
pub const SNAPSHOT_BYTES_MAX: usize = 16 << 20;
/// Ids in each of a conf state's voter lists (`voters`, `voters_outgoing`):
/// the group limit of this crate.
pub const VOTERS_MAX: usize = limits::VOTERS_MAX;
/// Ids in each of a conf state's learner lists (`learners`,
/// `learners_next`).
pub const LEARNERS_MAX: usize = limits::VOTERS_MAX;
/// The smallest protobuf size raft-rs counts for a log entry against
/// `max_size_per_msg` (term and index of at least 1, one byte each plus a
/// tag). Only used to size [`ENTRIES_PER_MESSAGE_MAX`].
pub const PROTOBUF_ENTRY_BYTES_MIN: usize = 4;

// ------------------------------------------------------------------ layout

/// "SRFT" (Strom raft) read as a little-endian u32.
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"SRFT");
/// The only wire version this build reads and writes.
pub const BATCH_VERSION: u8 = 1;
/// Size of [`BatchHeader`].
pub const BATCH_HEADER_BYTES: usize = 36;
/// Size of [`MessageHeader`].
pub const MESSAGE_HEADER_BYTES: usize = 108;
/// Size of [`EntryHeader`].
pub const ENTRY_HEADER_BYTES: usize = 28;
/// Size of [`SnapshotHeader`].
pub const SNAPSHOT_HEADER_BYTES: usize = 32;
/// Offset of `crc` in the batch header. The checksum covers bytes
/// `[0, CRC_POS)` then `[BATCH_HEADER_BYTES, batch_len)`: everything but
/// itself.
pub const CRC_POS: usize = 32;

/// [`MessageHeader::flags`]: `reject` is true.
pub const MESSAGE_FLAG_REJECT: u8 = 1 << 0;
/// [`MessageHeader::flags`]: a snapshot section follows the entries.
pub const MESSAGE_FLAG_SNAPSHOT: u8 = 1 << 1;
const MESSAGE_FLAGS_KNOWN: u8 = MESSAGE_FLAG_REJECT | MESSAGE_FLAG_SNAPSHOT;
/// [`EntryHeader::flags`]: the deprecated `sync_log` is true.
pub const ENTRY_FLAG_SYNC_LOG: u8 = 1 << 0;
const ENTRY_FLAGS_KNOWN: u8 = ENTRY_FLAG_SYNC_LOG;
/// [`SnapshotHeader::flags`]: the snapshot has `metadata`.
pub const SNAPSHOT_FLAG_METADATA: u8 = 1 << 0;
/// [`SnapshotHeader::flags`]: the metadata has a `conf_state`.
pub const SNAPSHOT_FLAG_CONF_STATE: u8 = 1 << 1;
/// [`SnapshotHeader::flags`]: the conf state's `auto_leave` is true.
pub const SNAPSHOT_FLAG_AUTO_LEAVE: u8 = 1 << 2;
const SNAPSHOT_FLAGS_KNOWN: u8 =
    SNAPSHOT_FLAG_METADATA | SNAPSHOT_FLAG_CONF_STATE | SNAPSHOT_FLAG_AUTO_LEAVE;

/// The fixed header of a batch.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct BatchHeader {
    /// [`BATCH_MAGIC`].
    pub magic: U32,
    /// [`BATCH_VERSION`].
    pub version: u8,
    /// No flags are defined in version 1: must be 0.
    pub flags: u8,
    /// Must be 0.
    pub reserved: U16,
    /// Bytes of the whole batch, header included.
    pub batch_len: U32,
    /// Messages that follow the header.
    pub message_count: U32,
    /// The sending node (never 0).
    pub from_node: U64,
    /// The receiving node (never 0).
    pub to_node: U64,
    /// crc32c of bytes `[0, 32)` then `[36, batch_len)`.
    pub crc: U32,
}

/// The fixed part of one message; the message's `context`, its entries and
/// its optional snapshot follow.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct MessageHeader {
    /// The raft group (Strom: one per partition).
    pub group_id: U64,
    /// raft-rs `MessageType`, 0..=18.
    pub msg_type: u8,
    /// [`MESSAGE_FLAG_REJECT`], [`MESSAGE_FLAG_SNAPSHOT`]; other bits 0.
    pub flags: u8,
    /// Must be 0.
    pub reserved: U16,
    /// Entries that follow the context.
    pub entry_count: U32,
    pub to: U64,
    pub from: U64,
    pub term: U64,
    pub log_term: U64,
    pub index: U64,
    pub commit: U64,
    pub commit_term: U64,
    pub reject_hint: U64,
    pub request_snapshot: U64,
    pub priority: I64,
    pub deprecated_priority: U64,
    /// Bytes of `context` that follow this header.
    pub context_len: U32,
}

/// The fixed part of one entry; its `data` then its `context` follow.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct EntryHeader {
    /// raft-rs `EntryType`, 0..=2.
    pub entry_type: u8,
    /// [`ENTRY_FLAG_SYNC_LOG`]; other bits 0.
    pub flags: u8,
    /// Must be 0.
    pub reserved: U16,
    pub data_len: U32,
    pub term: U64,
    pub index: U64,
    pub context_len: U32,
}

/// The fixed part of a message's snapshot; the conf state's id lists (in
/// the order of the counts) then the snapshot `data` follow.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SnapshotHeader {
    /// [`SNAPSHOT_FLAG_METADATA`], [`SNAPSHOT_FLAG_CONF_STATE`],
    /// [`SNAPSHOT_FLAG_AUTO_LEAVE`]; other bits 0.
    pub flags: u8,
    /// Must be 0.
    pub reserved0: u8,
    pub voters_count: U16,
    pub learners_count: U16,
    pub voters_outgoing_count: U16,
    pub learners_next_count: U16,
    /// Must be 0.
    pub reserved1: U16,
    pub data_len: U32,
    /// `metadata.index`.
    pub index: U64,
    /// `metadata.term`.
    pub term: U64,
}

const _: () = assert!(core::mem::size_of::<BatchHeader>() == BATCH_HEADER_BYTES);
const _: () = assert!(core::mem::size_of::<MessageHeader>() == MESSAGE_HEADER_BYTES);
const _: () = assert!(core::mem::size_of::<EntryHeader>() == ENTRY_HEADER_BYTES);
const _: () = assert!(core::mem::size_of::<SnapshotHeader>() == SNAPSHOT_HEADER_BYTES);
const _: () = assert!(CRC_POS + 4 == BATCH_HEADER_BYTES);
// Lengths are summed in usize (message_wire_len) without overflow checks.
const _: () = assert!(usize::BITS == 64);
// Lengths and counts fit their fields.
const _: () = assert!(BATCH_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(MESSAGES_PER_BATCH_MAX <= u32::MAX as usize);
const _: () = assert!(ENTRIES_PER_MESSAGE_MAX <= u32::MAX as usize);
const _: () = assert!(VOTERS_MAX <= u16::MAX as usize && LEARNERS_MAX <= u16::MAX as usize);
// Every proposal fits an entry, and an append of one such entry fits a batch.
const _: () = assert!(ENTRY_BYTES_MAX >= limits::PROPOSAL_BYTES_MAX);
const _: () = assert!(
    BATCH_HEADER_BYTES
        + MESSAGE_HEADER_BYTES
        + CONTEXT_BYTES_MAX
        + ENTRY_HEADER_BYTES
        + ENTRY_BYTES_MAX
        + CONTEXT_BYTES_MAX
        <= BATCH_BYTES_MAX
);
// A snapshot message with full conf state lists fits a batch.
const _: () = assert!(
    BATCH_HEADER_BYTES
        + MESSAGE_HEADER_BYTES
        + CONTEXT_BYTES_MAX
        + SNAPSHOT_HEADER_BYTES
        + 8 * 2 * (VOTERS_MAX + LEARNERS_MAX)
        + SNAPSHOT_BYTES_MAX
        <= BATCH_BYTES_MAX
);
// The largest append raft-rs builds with the default `max_size_per_msg`:
// a first entry of any size, then entries while their protobuf sizes add up
// to at most the limit, each at least PROTOBUF_ENTRY_BYTES_MIN; their data is
// within their protobuf size.
const DEFAULT_APPEND_ENTRIES_MAX: usize =
    limits::DEFAULT_MSG_BYTES_MAX as usize / PROTOBUF_ENTRY_BYTES_MIN + 1;
const _: () = assert!(ENTRIES_PER_MESSAGE_MAX >= DEFAULT_APPEND_ENTRIES_MAX);
const _: () = assert!(
    BATCH_HEADER_BYTES
        + MESSAGE_HEADER_BYTES
        + DEFAULT_APPEND_ENTRIES_MAX * ENTRY_HEADER_BYTES
        + limits::DEFAULT_MSG_BYTES_MAX as usize
        + ENTRY_BYTES_MAX
        <= BATCH_BYTES_MAX
);

/// raft-rs message types by wire value (the protobuf enum values).
const MESSAGE_TYPES: [MessageType; 19] = [
    MessageType::MsgHup,
    MessageType::MsgBeat,
    MessageType::MsgPropose,
    MessageType::MsgAppend,
    MessageType::MsgAppendResponse,
    MessageType::MsgRequestVote,
    MessageType::MsgRequestVoteResponse,
    MessageType::MsgSnapshot,
    MessageType::MsgHeartbeat,
    MessageType::MsgHeartbeatResponse,
    MessageType::MsgUnreachable,
    MessageType::MsgSnapStatus,
    MessageType::MsgCheckQuorum,
    MessageType::MsgTransferLeader,
    MessageType::MsgTimeoutNow,
    MessageType::MsgReadIndex,
    MessageType::MsgReadIndexResp,
    MessageType::MsgRequestPreVote,
    MessageType::MsgRequestPreVoteResponse,
];

/// raft-rs entry types by wire value.
const ENTRY_TYPES: [EntryType; 3] = [
    EntryType::EntryNormal,
    EntryType::EntryConfChange,
    EntryType::EntryConfChangeV2,
];

// ------------------------------------------------------------------ errors

/// Where in a batch a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Batch,
    /// The message at this position of the batch (from 0).
    Message {
        message: u32,
    },
    /// An entry of a message.
    Entry {
        message: u32,
        entry: u32,
    },
    /// The snapshot of a message.
    Snapshot {
        message: u32,
    },
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Batch => write!(f, "batch"),
            Place::Message { message } => write!(f, "message {message}"),
            Place::Entry { message, entry } => write!(f, "message {message} entry {entry}"),
            Place::Snapshot { message } => write!(f, "message {message} snapshot"),
        }
    }
}

/// A batch that cannot be encoded, or bytes that are not a valid batch.
/// Nothing here is retriable as is: the same bytes fail the same way. On a
/// connection every decoding error means a broken or hostile peer: drop the
/// connection (raft retries).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("bad magic {found:#010x} (expected {BATCH_MAGIC:#010x})")]
    BadMagic { found: u32 },
    #[error("unsupported wire version {found} (this build speaks {BATCH_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("{place}: unknown flags {flags:#04x}")]
    UnknownFlags { place: Place, flags: u8 },
    #[error("{place}: reserved bytes are not zero")]
    ReservedNonZero { place: Place },
    #[error("batch length {len_bytes} is shorter than its {BATCH_HEADER_BYTES}-byte header")]
    BatchTooShort { len_bytes: usize },
    #[error("batch length {len_bytes} exceeds {max_bytes}")]
    BatchTooLarge { len_bytes: usize, max_bytes: usize },
    #[error("the batch header says {declared} bytes, the buffer holds {actual}")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("{side} node id is 0")]
    ZeroNodeId { side: &'static str },
    #[error("{place}: {count} {what} exceed the limit of {max}")]
    TooMany {
        place: Place,
        what: &'static str,
        count: u64,
        max: u64,
    },
    #[error("{place}: {what} of {len_bytes} bytes exceeds {max_bytes}")]
    TooLong {
        place: Place,
        what: &'static str,
        len_bytes: u64,
        max_bytes: u64,
    },
    #[error("{place}: needs {need_bytes} bytes at offset {offset}, only {have_bytes} remain")]
    Truncated {
        place: Place,
        offset: usize,
        need_bytes: usize,
        have_bytes: usize,
    },
    #[error("{count} bytes follow the last message")]
    TrailingBytes { count: usize },
    #[error("{place}: unknown message type {value}")]
    UnknownMessageType { place: Place, value: u8 },
    #[error("{place}: unknown entry type {value}")]
    UnknownEntryType { place: Place, value: u8 },
    #[error("{place}: {reason}")]
    NonCanonical { place: Place, reason: &'static str },
    /// Encoding: the batch is too full for this message; a fresh batch may
    /// take it.
    #[error(
        "{place}: {message_bytes} more bytes would grow the batch of {len_bytes} past {max_bytes}"
    )]
    BatchFull {
        place: Place,
        len_bytes: usize,
        message_bytes: usize,
        max_bytes: usize,
    },
}

// ------------------------------------------------------------------ encoding

/// Bytes `msg` takes in a batch, after checking it against every limit.
/// `index` is its position in the batch (for error context).
fn message_wire_len(msg: &Message, index: u32) -> Result<usize, WireError> {
    let place = Place::Message { message: index };
    let mut len = MESSAGE_HEADER_BYTES;
    len += check_len(
        place,
        "message context",
        msg.context.len(),
        CONTEXT_BYTES_MAX,
    )?;
    let entries = msg.get_entries();
    check_count(place, "entries", entries.len(), ENTRIES_PER_MESSAGE_MAX)?;
    for (i, e) in entries.iter().enumerate() {
        let place = Place::Entry {
            message: index,
            entry: i as u32,
        };
        len += ENTRY_HEADER_BYTES;
        len += check_len(place, "entry data", e.data.len(), ENTRY_BYTES_MAX)?;
        len += check_len(place, "entry context", e.context.len(), CONTEXT_BYTES_MAX)?;
    }
    if let Some(snap) = msg.snapshot.as_ref() {
        let place = Place::Snapshot { message: index };
        len += SNAPSHOT_HEADER_BYTES;
        if let Some(cs) = snap.metadata.as_ref().and_then(|m| m.conf_state.as_ref()) {
            let ids = check_count(place, "voters", cs.voters.len(), VOTERS_MAX)?
                + check_count(place, "learners", cs.learners.len(), LEARNERS_MAX)?
                + check_count(
                    place,
                    "voters_outgoing",
                    cs.voters_outgoing.len(),
                    VOTERS_MAX,
                )?
                + check_count(place, "learners_next", cs.learners_next.len(), LEARNERS_MAX)?;
            len += 8 * ids;
        }
        len += check_len(place, "snapshot data", snap.data.len(), SNAPSHOT_BYTES_MAX)?;
    }
    // Cannot overflow: every part is bounded by its limit, and at most
    // ENTRIES_PER_MESSAGE_MAX entries of at most ~8 MiB each sum to ~2^42
    // (usize is 64 bits: asserted at the top).
    Ok(len)
}

fn check_len(place: Place, what: &'static str, len: usize, max: usize) -> Result<usize, WireError> {
    if len > max {
        return Err(WireError::TooLong {
            place,
            what,
            len_bytes: len as u64,
            max_bytes: max as u64,
        });
    }
    Ok(len)
}

fn check_count(
    place: Place,
    what: &'static str,
    count: usize,
    max: usize,
) -> Result<usize, WireError> {
    if count > max {
        return Err(WireError::TooMany {
            place,
            what,
            count: count as u64,
            max: max as u64,
        });
    }
    Ok(count)
}

/// Builds one batch at the end of a caller's buffer, message by message,
/// without allocating per message. A message that does not fit is refused
/// and leaves the buffer as it was; dropping the encoder without
/// [`BatchEncoder::finish`] removes the partial batch.
#[derive(Debug)]
pub struct BatchEncoder<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    count: u32,
    finished: bool,
}

impl<'a> BatchEncoder<'a> {
    /// Starts a batch from node `from_node` to node `to_node` at the end of
    /// `out`.
    pub fn new(out: &'a mut Vec<u8>, from_node: u64, to_node: u64) -> Result<Self, WireError> {
        check_nodes(from_node, to_node)?;
        let start = out.len();
        let header = BatchHeader {
            magic: U32::new(BATCH_MAGIC),
            version: BATCH_VERSION,
            flags: 0,
            reserved: U16::new(0),
            batch_len: U32::new(0),
            message_count: U32::new(0),
            from_node: U64::new(from_node),
            to_node: U64::new(to_node),
            crc: U32::new(0),
        };
        out.extend_from_slice(header.as_bytes());
        Ok(BatchEncoder {
            out,
            start,
            count: 0,
            finished: false,
        })
    }

    /// Bytes of the batch so far, header included.
    pub fn len_bytes(&self) -> usize {
        self.out.len() - self.start
    }

    pub fn message_count(&self) -> usize {
        self.count as usize
    }

    /// Appends `msg` of group `group_id`. Refused, with the buffer
    /// unchanged, when the message breaks a limit or the batch is full
    /// ([`WireError::BatchFull`]: finish this batch and start another).
    pub fn push(&mut self, group_id: u64, msg: &Message) -> Result<(), WireError> {
        let index = self.count;
        let place = Place::Message { message: index };
        if self.message_count() >= MESSAGES_PER_BATCH_MAX {
            return Err(WireError::TooMany {
                place: Place::Batch,
                what: "messages",
                count: self.message_count() as u64 + 1,
                max: MESSAGES_PER_BATCH_MAX as u64,
            });
        }
        let message_bytes = message_wire_len(msg, index)?;
        let len_bytes = self.len_bytes();
        if message_bytes > BATCH_BYTES_MAX - len_bytes {
            if len_bytes == BATCH_HEADER_BYTES {
                return Err(WireError::TooLong {
                    place,
                    what: "message",
                    len_bytes: message_bytes as u64,
                    max_bytes: (BATCH_BYTES_MAX - BATCH_HEADER_BYTES) as u64,
                });
            }
            return Err(WireError::BatchFull {
                place,
                len_bytes,
                message_bytes,
                max_bytes: BATCH_BYTES_MAX,
            });
        }
        let before = self.out.len();
        self.out.reserve(message_bytes);
        write_message(self.out, group_id, msg);
        assert_eq!(self.out.len() - before, message_bytes, "message_wire_len");
        self.count += 1;
        Ok(())
    }

    /// Stamps length, count and checksum; returns the batch's length.
    pub fn finish(mut self) -> usize {
        let len = self.len_bytes();
        assert!((BATCH_HEADER_BYTES..=BATCH_BYTES_MAX).contains(&len));
        let batch = &mut self.out[self.start..];
        let Ok((header, _)) = BatchHeader::mut_from_prefix(batch) else {
            unreachable!("the encoder wrote the header");
        };
        header.batch_len = U32::new(len as u32);
        header.message_count = U32::new(self.count);
        stamp_checksum(batch);
        self.finished = true;
        len
    }
}

impl Drop for BatchEncoder<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.out.truncate(self.start);
        }
    }
}

fn check_nodes(from_node: u64, to_node: u64) -> Result<(), WireError> {
    if from_node == 0 {
        return Err(WireError::ZeroNodeId { side: "sender" });
    }
    if to_node == 0 {
        return Err(WireError::ZeroNodeId { side: "receiver" });
    }
    Ok(())
}

/// Appends one batch of `messages` (each with its group id) from node
/// `from_node` to node `to_node` to `out`. Refuses, leaving `out` as it
/// was, anything over a limit: what this writes, [`decode_batch`] reads.
pub fn encode_batch(
    from_node: u64,
    to_node: u64,
    messages: &[(u64, Message)],
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    if messages.len() > MESSAGES_PER_BATCH_MAX {
        return Err(WireError::TooMany {
            place: Place::Batch,
            what: "messages",
            count: messages.len() as u64,
            max: MESSAGES_PER_BATCH_MAX as u64,
        });
    }
    let mut enc = BatchEncoder::new(out, from_node, to_node)?;
    for (group_id, msg) in messages {
        enc.push(*group_id, msg)?;
    }
    enc.finish();
    Ok(())
}

fn write_message(out: &mut Vec<u8>, group_id: u64, msg: &Message) {
    let mut flags = 0;
    if msg.reject {
        flags |= MESSAGE_FLAG_REJECT;
    }
    let snapshot = msg.snapshot.as_ref();
    if snapshot.is_some() {
        flags |= MESSAGE_FLAG_SNAPSHOT;
    }
    let entries = msg.get_entries();
    let header = MessageHeader {
        group_id: U64::new(group_id),
        msg_type: msg.get_msg_type() as u8,
        flags,
        reserved: U16::new(0),
        entry_count: U32::new(entries.len() as u32),
        to: U64::new(msg.to),
        from: U64::new(msg.from),
        term: U64::new(msg.term),
        log_term: U64::new(msg.log_term),
        index: U64::new(msg.index),
        commit: U64::new(msg.commit),
        commit_term: U64::new(msg.commit_term),
        reject_hint: U64::new(msg.reject_hint),
        request_snapshot: U64::new(msg.request_snapshot),
        priority: I64::new(msg.priority),
        deprecated_priority: U64::new(msg.deprecated_priority),
        context_len: U32::new(msg.context.len() as u32),
    };
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&msg.context);
    for e in entries {
        let header = EntryHeader {
            entry_type: e.get_entry_type() as u8,
            flags: if e.sync_log { ENTRY_FLAG_SYNC_LOG } else { 0 },
            reserved: U16::new(0),
            data_len: U32::new(e.data.len() as u32),
            term: U64::new(e.term),
            index: U64::new(e.index),
            context_len: U32::new(e.context.len() as u32),
        };
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&e.data);
        out.extend_from_slice(&e.context);
    }
    if let Some(snap) = snapshot {
        write_snapshot(out, snap);
    }
}

fn write_snapshot(out: &mut Vec<u8>, snap: &Snapshot) {
    static NO_IDS: Vec<u64> = Vec::new();
    let meta = snap.metadata.as_ref();
    let cs = meta.and_then(|m| m.conf_state.as_ref());
    let mut flags = 0;
    if meta.is_some() {
        flags |= SNAPSHOT_FLAG_METADATA;
    }
    if let Some(cs) = cs {
        flags |= SNAPSHOT_FLAG_CONF_STATE;
        if cs.auto_leave {
            flags |= SNAPSHOT_FLAG_AUTO_LEAVE;
        }
    }
    let lists: [&Vec<u64>; 4] = match cs {
        Some(cs) => [
            &cs.voters,
            &cs.learners,
            &cs.voters_outgoing,
            &cs.learners_next,
        ],
        None => [&NO_IDS; 4],
    };
    let header = SnapshotHeader {
        flags,
        reserved0: 0,
        voters_count: U16::new(lists[0].len() as u16),
        learners_count: U16::new(lists[1].len() as u16),
        voters_outgoing_count: U16::new(lists[2].len() as u16),
        learners_next_count: U16::new(lists[3].len() as u16),
        reserved1: U16::new(0),
        data_len: U32::new(snap.data.len() as u32),
        index: U64::new(meta.map_or(0, |m| m.index)),
        term: U64::new(meta.map_or(0, |m| m.term)),
    };
    out.extend_from_slice(header.as_bytes());
    for list in lists {
        for id in list {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }
    out.extend_from_slice(&snap.data);
}

/// crc32c of a whole batch but its checksum field.
fn batch_crc(batch: &[u8]) -> u32 {
    debug_assert!(batch.len() >= BATCH_HEADER_BYTES);
    crc32c::crc32c_append(
        crc32c::crc32c(&batch[..CRC_POS]),
        &batch[BATCH_HEADER_BYTES..],
    )
}

/// Recomputes the checksum of the batch that fills `batch` (whatever its
/// header says). Returns false when `batch` is shorter than a header.
/// Fuzzing and test helper only: it makes corrupted bytes pass the checksum
/// so that the structural checks behind it can be exercised.
#[doc(hidden)]
pub fn stamp_checksum(batch: &mut [u8]) -> bool {
    if batch.len() < BATCH_HEADER_BYTES {
        return false;
    }
    let crc = batch_crc(batch);
    batch[CRC_POS..BATCH_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    true
}

// ------------------------------------------------------------------ decoding

/// A decoded batch: who sent it, to whom, and its messages with their group
/// ids, in the order they were pushed.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub from_node: u64,
    pub to_node: u64,
    pub messages: Vec<(u64, Message)>,
}

/// Two-pass framing on a stream, first pass: the full length of the batch
/// that starts `buf` (which may hold less of it, or more after it), or
/// `Ok(None)` when fewer than [`BATCH_HEADER_BYTES`] bytes have arrived.
/// Checks the header's magic, version, flags, reserved bytes and length
/// bounds; the checksum and the body are [`decode_batch`]'s.
pub fn peek_batch_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    let Ok((header, _)) = BatchHeader::ref_from_prefix(buf) else {
        return Ok(None);
    };
    check_header_shape(header).map(Some)
}

/// Checks what can be checked without the body; returns the batch length.
fn check_header_shape(header: &BatchHeader) -> Result<usize, WireError> {
    if header.magic.get() != BATCH_MAGIC {
        return Err(WireError::BadMagic {
            found: header.magic.get(),
        });
    }
    if header.version != BATCH_VERSION {
        return Err(WireError::UnsupportedVersion {
            found: header.version,
        });
    }
    if header.flags != 0 {
        return Err(WireError::UnknownFlags {
            place: Place::Batch,
            flags: header.flags,
        });
    }
    if header.reserved.get() != 0 {
        return Err(WireError::ReservedNonZero {
            place: Place::Batch,
        });
    }
    let len = header.batch_len.get() as usize;
    if len < BATCH_HEADER_BYTES {
        return Err(WireError::BatchTooShort { len_bytes: len });
    }
    if len > BATCH_BYTES_MAX {
        return Err(WireError::BatchTooLarge {
            len_bytes: len,
            max_bytes: BATCH_BYTES_MAX,
        });
    }
    Ok(len)
}

/// Decodes and validates one whole batch: `buf` must hold exactly the
/// batch (frame it with [`peek_batch_len`]). Checks, in order: the header's
/// shape, the exact length, the checksum, the node ids, then every message,
/// and that nothing follows the last one. Never panics on any input.
pub fn decode_batch(buf: &[u8]) -> Result<Batch, WireError> {
    let Ok((header, body)) = BatchHeader::ref_from_prefix(buf) else {
        return Err(WireError::Truncated {
            place: Place::Batch,
            offset: 0,
            need_bytes: BATCH_HEADER_BYTES,
            have_bytes: buf.len(),
        });
    };
    let declared = check_header_shape(header)?;
    if declared != buf.len() {
        return Err(WireError::LengthMismatch {
            declared,
            actual: buf.len(),
        });
    }
    let stored = header.crc.get();
    let computed = batch_crc(buf);
    if stored != computed {
        return Err(WireError::Checksum { stored, computed });
    }
    let (from_node, to_node) = (header.from_node.get(), header.to_node.get());
    check_nodes(from_node, to_node)?;
    let count = header.message_count.get() as usize;
    check_count(Place::Batch, "messages", count, MESSAGES_PER_BATCH_MAX)?;
    let mut r = Reader {
        buf: body,
        pos: 0,
        base: BATCH_HEADER_BYTES,
    };
    // Every message takes at least its header: refuse a count the bytes
    // cannot hold before allocating for it.
    r.check_room(Place::Batch, count, MESSAGE_HEADER_BYTES)?;
    let mut messages = Vec::with_capacity(count);
    for i in 0..count {
        messages.push(read_message(&mut r, i as u32)?);
    }
    if r.remaining() != 0 {
        return Err(WireError::TrailingBytes {
            count: r.remaining(),
        });
    }
    Ok(Batch {
        from_node,
        to_node,
        messages,
    })
}

/// A cursor over a batch body; `base` is the body's offset in the batch
/// (for error context).
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn truncated(&self, place: Place, need_bytes: usize) -> WireError {
        WireError::Truncated {
            place,
            offset: self.base + self.pos,
            need_bytes,
            have_bytes: self.remaining(),
        }
    }

    /// Refuses `count` items of at least `item_bytes` each when the rest of
    /// the batch cannot hold them.
    fn check_room(&self, place: Place, count: usize, item_bytes: usize) -> Result<(), WireError> {
        match count.checked_mul(item_bytes) {
            Some(need) if need <= self.remaining() => Ok(()),
            need => Err(self.truncated(place, need.unwrap_or(usize::MAX))),
        }
    }

    fn take(&mut self, place: Place, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.remaining() {
            return Err(self.truncated(place, n));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn header<T: FromBytes + KnownLayout + Immutable + Unaligned>(
        &mut self,
        place: Place,
    ) -> Result<&'a T, WireError> {
        let n = core::mem::size_of::<T>();
        let bytes = self.take(place, n)?;
        T::ref_from_bytes(bytes).map_err(|_| self.truncated(place, n))
    }

    /// `len` bytes (checked against `max` first) copied once.
    fn bytes(
        &mut self,
        place: Place,
        what: &'static str,
        len: u32,
        max: usize,
    ) -> Result<Bytes, WireError> {
        let len = check_len(place, what, len as usize, max)?;
        let s = self.take(place, len)?;
        Ok(if s.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(s)
        })
    }

    /// `count` little-endian u64 ids (checked against `max` first).
    fn ids(
        &mut self,
        place: Place,
        what: &'static str,
        count: u16,
        max: usize,
    ) -> Result<Vec<u64>, WireError> {
        let count = check_count(place, what, count as usize, max)?;
        let s = self.take(place, 8 * count)?;
        Ok(s.chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                u64::from_le_bytes(b)
            })
            .collect())
    }
}

fn read_message(r: &mut Reader<'_>, index: u32) -> Result<(u64, Message), WireError> {
    let place = Place::Message { message: index };
    let h: &MessageHeader = r.header(place)?;
    let Some(msg_type) = MESSAGE_TYPES.get(h.msg_type as usize).copied() else {
        return Err(WireError::UnknownMessageType {
            place,
            value: h.msg_type,
        });
    };
    if h.flags & !MESSAGE_FLAGS_KNOWN != 0 {
        return Err(WireError::UnknownFlags {
            place,
            flags: h.flags,
        });
    }
    if h.reserved.get() != 0 {
        return Err(WireError::ReservedNonZero { place });
    }
    let entry_count = h.entry_count.get() as usize;
    check_count(place, "entries", entry_count, ENTRIES_PER_MESSAGE_MAX)?;
    let mut m = Message::default();
    m.set_msg_type(msg_type);
    m.to = h.to.get();
    m.from = h.from.get();
    m.term = h.term.get();
    m.log_term = h.log_term.get();
    m.index = h.index.get();
    m.commit = h.commit.get();
    m.commit_term = h.commit_term.get();
    m.reject = h.flags & MESSAGE_FLAG_REJECT != 0;
    m.reject_hint = h.reject_hint.get();
    m.request_snapshot = h.request_snapshot.get();
    m.priority = h.priority.get();
    m.deprecated_priority = h.deprecated_priority.get();
    m.context = r.bytes(
        place,
        "message context",
        h.context_len.get(),
        CONTEXT_BYTES_MAX,
    )?;
    r.check_room(place, entry_count, ENTRY_HEADER_BYTES)?;
    let mut entries = Vec::with_capacity(entry_count);
    for i in 0..entry_count {
        let place = Place::Entry {
            message: index,
            entry: i as u32,
        };
        entries.push(read_entry(r, place)?);
    }
    m.entries = entries.into();
    if h.flags & MESSAGE_FLAG_SNAPSHOT != 0 {
        m.set_snapshot(read_snapshot(r, Place::Snapshot { message: index })?);
    }
    Ok((h.group_id.get(), m))
}

fn read_entry(r: &mut Reader<'_>, place: Place) -> Result<Entry, WireError> {
    let h: &EntryHeader = r.header(place)?;
    let Some(entry_type) = ENTRY_TYPES.get(h.entry_type as usize).copied() else {
        return Err(WireError::UnknownEntryType {
            place,
            value: h.entry_type,
        });
    };
    if h.flags & !ENTRY_FLAGS_KNOWN != 0 {
        return Err(WireError::UnknownFlags {
            place,
            flags: h.flags,
        });
    }
    if h.reserved.get() != 0 {
        return Err(WireError::ReservedNonZero { place });
    }
    let mut e = Entry::default();
    e.set_entry_type(entry_type);
    e.term = h.term.get();
    e.index = h.index.get();
    e.sync_log = h.flags & ENTRY_FLAG_SYNC_LOG != 0;
    e.data = r.bytes(place, "entry data", h.data_len.get(), ENTRY_BYTES_MAX)?;
    e.context = r.bytes(
        place,
        "entry context",
        h.context_len.get(),
        CONTEXT_BYTES_MAX,
    )?;
    Ok(e)
}

fn read_snapshot(r: &mut Reader<'_>, place: Place) -> Result<Snapshot, WireError> {
    let h: &SnapshotHeader = r.header(place)?;
    if h.flags & !SNAPSHOT_FLAGS_KNOWN != 0 {
        return Err(WireError::UnknownFlags {
            place,
            flags: h.flags,
        });
    }
    if h.reserved0 != 0 || h.reserved1.get() != 0 {
        return Err(WireError::ReservedNonZero { place });
    }
    let has_meta = h.flags & SNAPSHOT_FLAG_METADATA != 0;
    let has_cs = h.flags & SNAPSHOT_FLAG_CONF_STATE != 0;
    let any_ids = h.voters_count.get() != 0
        || h.learners_count.get() != 0
        || h.voters_outgoing_count.get() != 0
        || h.learners_next_count.get() != 0;
    if !has_meta && (has_cs || h.index.get() != 0 || h.term.get() != 0) {
        return Err(WireError::NonCanonical {
            place,
            reason: "metadata fields without metadata",
        });
    }
    if !has_cs && (h.flags & SNAPSHOT_FLAG_AUTO_LEAVE != 0 || any_ids) {
        return Err(WireError::NonCanonical {
            place,
            reason: "conf state fields without a conf state",
        });
    }
    let cs = ConfState {
        voters: r.ids(place, "voters", h.voters_count.get(), VOTERS_MAX)?,
        learners: r.ids(place, "learners", h.learners_count.get(), LEARNERS_MAX)?,
        voters_outgoing: r.ids(
            place,
            "voters_outgoing",
            h.voters_outgoing_count.get(),
            VOTERS_MAX,
        )?,
        learners_next: r.ids(
            place,
            "learners_next",
            h.learners_next_count.get(),
            LEARNERS_MAX,
        )?,
        auto_leave: h.flags & SNAPSHOT_FLAG_AUTO_LEAVE != 0,
        ..ConfState::default()
    };
    let mut snap = Snapshot {
        data: r.bytes(place, "snapshot data", h.data_len.get(), SNAPSHOT_BYTES_MAX)?,
        ..Snapshot::default()
    };
    if has_meta {
        let mut meta = SnapshotMetadata {
            index: h.index.get(),
            term: h.term.get(),
            ..SnapshotMetadata::default()
        };
        if has_cs {
            meta.set_conf_state(cs);
        }
        snap.set_metadata(meta);
    }
    Ok(snap)
}

// ------------------------------------------------------------------ fuzzing

/// The body of the `replication_wire` fuzz target
/// (`fuzz/fuzz_targets/replication_wire.rs`), here so that the corpus
/// replay test (`replication/tests/wire.rs`) runs the very same checks.
/// Panics only on a broken invariant, never on malformed input.
///
/// A fuzzer cannot forge crc32c, so the bytes are checked twice: as given,
/// and with magic, version, length and checksum repaired so that mutations
/// reach the structural checks behind them.
pub fn fuzz_check(data: &[u8]) {
    check_bytes(data);
    if (BATCH_HEADER_BYTES..=BATCH_BYTES_MAX).contains(&data.len()) {
        let mut fixed = data.to_vec();
        if let Ok((h, _)) = BatchHeader::mut_from_prefix(&mut fixed[..]) {
            h.magic = U32::new(BATCH_MAGIC);
            h.version = BATCH_VERSION;
            h.batch_len = U32::new(data.len() as u32);
        }
        stamp_checksum(&mut fixed);
        check_bytes(&fixed);
    }
}

fn check_bytes(data: &[u8]) {
    let peeked = peek_batch_len(data);
    let decoded = decode_batch(data);
    match &peeked {
        Ok(None) => assert!(data.len() < BATCH_HEADER_BYTES),
        Ok(Some(len)) => assert!((BATCH_HEADER_BYTES..=BATCH_BYTES_MAX).contains(len)),
        Err(e) => assert!(decoded.is_err(), "peek refused what decodes: {e}"),
    }
    if let Ok(batch) = decoded {
        assert_eq!(peeked, Ok(Some(data.len())), "peek of a valid batch");
        // Canonical: what decodes re-encodes to the same bytes.
        let mut again = Vec::with_capacity(data.len());
        let r = encode_batch(batch.from_node, batch.to_node, &batch.messages, &mut again);
        assert_eq!(r, Ok(()), "a decoded batch re-encodes");
        assert!(again == data, "re-encoding differs from the decoded bytes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_tables_match_raft_values() {
        for (i, t) in MESSAGE_TYPES.iter().enumerate() {
            assert_eq!(*t as usize, i);
        }
        for (i, t) in ENTRY_TYPES.iter().enumerate() {
            assert_eq!(*t as usize, i);
        }
    }

    #[test]
    fn empty_batch_round_trips() {
        let mut out = vec![0xAA];
        encode_batch(1, 2, &[], &mut out).unwrap();
        assert_eq!(out.len(), 1 + BATCH_HEADER_BYTES);
        assert_eq!(peek_batch_len(&out[1..]), Ok(Some(BATCH_HEADER_BYTES)));
        let b = decode_batch(&out[1..]).unwrap();
        assert_eq!((b.from_node, b.to_node, b.messages.len()), (1, 2, 0));
    }

    #[test]
    fn dropped_encoder_leaves_buffer_untouched() {
        let mut out = b"prefix".to_vec();
        {
            let mut enc = BatchEncoder::new(&mut out, 1, 2).unwrap();
            enc.push(5, &Message::default()).unwrap();
        }
        assert_eq!(out, b"prefix");
    }
}
