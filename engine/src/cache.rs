//! The tail cache of one partition log: its most recent frames, verified and
//! stamped, shared between the log (which pushes and trims) and the
//! partition shell (which serves reads from it without waiting for the log).
//! I/O-free: plain state, borrowed synchronously and never across an await.
//!
//! Invariants:
//! - Cached frames are contiguous in offsets and end at the log end: the log
//!   pushes each appended frame, trims the front for retention and the back
//!   for truncation, so frame `i+1` starts where frame `i` ends.
//! - `bytes` is the sum of `cache_charge_bytes` of the cached frames, and the
//!   shard-wide total (`SHARD_CACHE`) counts it exactly once.
//! - `failed` mirrors the log's failed state: a failed log serves reads only
//!   through the log itself (durable records only), never from here.
//! - The budgets bound the memory cached frames hold: a frame below
//!   `CACHE_COPY_FRAME_BYTES_MAX` is copied into an allocation of its own
//!   (never pinning the read buffer it was cut from) and charged its length;
//!   a larger one stays a view, charged at least `CACHE_VIEW_CHARGE_BYTES_MIN`
//!   (what the buffer under it may hold); each also `CACHE_FRAME_OVERHEAD_BYTES`.

use std::collections::VecDeque;

use bytes::Bytes;
use strom_flatbuffers::FrameHeader;

use crate::limits::*;

thread_local! {
    /// Bytes held by the tail caches of every log on this thread (shard),
    /// and the shard's budget for them.
    static SHARD_CACHE: std::cell::Cell<(usize, usize)> =
        const { std::cell::Cell::new((0, DEFAULT_SHARD_CACHE_BYTES_MAX)) };
}

/// Sets the tail-cache budget shared by every log of the calling thread.
pub fn set_shard_cache_bytes_max(max_bytes: usize) {
    SHARD_CACHE.with(|c| c.set((c.get().0, max_bytes)));
}

/// Bytes currently cached by every log of the calling thread.
pub fn shard_cache_bytes() -> usize {
    SHARD_CACHE.with(|c| c.get().0)
}

fn shard_cache_over_budget() -> bool {
    SHARD_CACHE.with(|c| c.get().0 > c.get().1)
}

/// What a cached frame costs against the cache budgets: its bytes plus its
/// bookkeeping (allocation header, `Bytes` handle, queue slot); a frame kept
/// as a view of a larger buffer, at least what that buffer may hold.
pub fn cache_charge_bytes(frame: &Bytes) -> usize {
    let held = if frame.len() < CACHE_COPY_FRAME_BYTES_MAX {
        frame.len()
    } else {
        frame.len().max(CACHE_VIEW_CHARGE_BYTES_MIN)
    };
    held + CACHE_FRAME_OVERHEAD_BYTES
}

fn header(frame: &Bytes) -> &FrameHeader {
    FrameHeader::ref_from(frame).expect("cached frames are verified")
}

/// The recent frames of one log (see the module header).
#[derive(Debug, Default)]
pub struct TailCache {
    frames: VecDeque<Bytes>,
    bytes: usize,
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    /// The log failed: reads must go through the log (durable records only).
    pub(crate) failed: bool,
}

impl TailCache {
    /// Bytes cached, as charged against the log's and the shard's budget.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn first_offset(&self) -> Option<u64> {
        self.frames.front().map(|f| header(f).base_offset())
    }

    /// Caches a frame; evicts the oldest frames while over `budget_bytes` or
    /// while the shard's total is over the shard budget (the writer pays for
    /// its own room; memory stays bounded however many partitions a shard
    /// holds). A small frame is copied (see the module header).
    pub fn push(&mut self, frame: Bytes, budget_bytes: usize) {
        if let Some(last) = self.frames.back() {
            assert_eq!(
                header(last).next_offset(),
                header(&frame).base_offset(),
                "cached frames are contiguous"
            );
        }
        let frame = if frame.len() < CACHE_COPY_FRAME_BYTES_MAX {
            Bytes::copy_from_slice(&frame)
        } else {
            frame
        };
        self.add(cache_charge_bytes(&frame));
        self.frames.push_back(frame);
        while self.bytes > budget_bytes || shard_cache_over_budget() {
            match self.frames.pop_front() {
                Some(f) => self.remove(cache_charge_bytes(&f)),
                None => break,
            }
        }
    }

    /// Drops frames wholly below `log_start` (retention, DeleteRecords).
    pub fn trim_front(&mut self, log_start: u64) {
        while let Some(f) = self.frames.front() {
            let h = header(f);
            if h.next_offset() <= log_start && h.base_offset() < log_start {
                let f = self.frames.pop_front().expect("non-empty");
                self.remove(cache_charge_bytes(&f));
            } else {
                break;
            }
        }
    }

    /// Drops frames starting at or after `cut` (truncation).
    pub fn trim_back(&mut self, cut: u64) {
        while let Some(f) = self.frames.back() {
            if header(f).base_offset() >= cut {
                let f = self.frames.pop_back().expect("non-empty");
                self.remove(cache_charge_bytes(&f));
            } else {
                break;
            }
        }
    }

    /// Whole cached frames from the one holding `from_offset`, none ending
    /// past `end`, up to `max_bytes` (at least one frame). `None` if the
    /// cache does not hold `from_offset` (the caller reads from disk).
    pub fn read(&mut self, from_offset: u64, end: u64, max_bytes: usize) -> Option<Vec<Bytes>> {
        let first = self.first_offset()?;
        if first > from_offset || from_offset >= end {
            return None;
        }
        let i = self
            .frames
            .partition_point(|f| header(f).next_offset() <= from_offset);
        let mut out = Vec::new();
        let mut total = 0;
        for f in self.frames.iter().skip(i) {
            if header(f).next_offset() > end {
                break;
            }
            if !out.is_empty() && (total + f.len() > max_bytes || out.len() >= READ_FRAMES_MAX) {
                break;
            }
            total += f.len();
            out.push(f.clone());
        }
        if out.is_empty() {
            return None;
        }
        self.hits += 1;
        Some(out)
    }

    fn add(&mut self, charge_bytes: usize) {
        self.bytes += charge_bytes;
        SHARD_CACHE.with(|c| c.set((c.get().0 + charge_bytes, c.get().1)));
    }

    fn remove(&mut self, charge_bytes: usize) {
        assert!(self.bytes >= charge_bytes);
        self.bytes -= charge_bytes;
        SHARD_CACHE.with(|c| c.set((c.get().0.saturating_sub(charge_bytes), c.get().1)));
    }
}

impl Drop for TailCache {
    fn drop(&mut self) {
        // Give the shard budget back whatever way the log ends (close, crash, drop).
        let held = self.bytes;
        SHARD_CACHE.with(|c| c.set((c.get().0.saturating_sub(held), c.get().1)));
    }
}
