//! One fetch for every protocol: read each partition once on its owning
//! shard; when fewer than `min_bytes` came back and no partition answered
//! with an error, long-poll until one of them grows (or the wait ends) and
//! read again; then keep whole frames within `max_bytes`.
//!
//! Invariants:
//! - The answer has exactly one [`FetchOut`] per [`FetchPart`], in order.
//! - Frames are whole stored frames, never cut; the first frame of the
//!   answer always goes, however large, so that a frame above `max_bytes`
//!   cannot stall a consumer; after it, a frame goes only if it fits.
//! - The wait never exceeds `max_wait_ms` (the caller clamps it to
//!   [`crate::limits::FETCH_WAIT_MAX_MS`]) and ends at shutdown; the waits
//!   it started on other shards end with it (`long_poll`).

use super::{collect, fan_out, long_poll, reply_error};
use crate::error::WireError;
use crate::router::{FetchItem, FetchOut, Op, Reply};
use crate::shard::Shard;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use strom_flatbuffers::protocol::ErrorCode;

/// One partition to read from `offset`, at most `max_bytes` of it.
#[derive(Debug, Clone)]
pub struct FetchPart {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub max_bytes: usize,
    /// Kafka's isolation level 1 (read_committed): only below the last
    /// stable offset, with the aborted transactions of the range.
    pub read_committed: bool,
}

/// A whole fetch: its partitions and its budget.
#[derive(Debug, Clone)]
pub struct FetchSpec {
    pub parts: Vec<FetchPart>,
    /// Most bytes of frames in the answer (whole frames; see the module docs).
    pub max_bytes: usize,
    /// Answer at once when at least this many bytes are there (at least 1).
    pub min_bytes: usize,
    pub max_wait_ms: u32,
}

/// Runs `spec`; one outcome per part, in order.
pub async fn fetch(shard: &Rc<Shard>, spec: &FetchSpec) -> Vec<FetchOut> {
    let deadline = Instant::now() + Duration::from_millis(u64::from(spec.max_wait_ms));
    let mut outs = read_all(shard, &spec.parts).await;
    let min_bytes = spec.min_bytes.max(1);
    let any_error = outs.iter().any(|o| o.error.is_some());
    if bytes_of(&outs) < min_bytes
        && !any_error
        && spec.max_wait_ms > 0
        && !shard.shutdown.is_fired()
    {
        // Wake when any partition grows past what this read saw.
        let mut per_shard: BTreeMap<usize, Vec<(String, u32, u64)>> = BTreeMap::new();
        for (p, o) in spec.parts.iter().zip(&outs) {
            if let Ok(s) = shard.owner(&p.topic, p.partition) {
                let seen = o.high_watermark.max(p.offset);
                per_shard
                    .entry(s)
                    .or_default()
                    .push((p.topic.clone(), p.partition, seen));
            }
        }
        if !per_shard.is_empty() {
            long_poll(shard, per_shard, deadline).await;
            outs = read_all(shard, &spec.parts).await;
        }
    }
    trim_to_budget(&mut outs, spec.max_bytes);
    outs
}

/// Keeps whole frames within `max_bytes` across all parts, in order; the
/// first frame always stays. A part whose next frame does not fit stops
/// there; a later part may still fit smaller frames.
pub fn trim_to_budget(outs: &mut [FetchOut], max_bytes: usize) {
    let mut budget = max_bytes;
    let mut any = false;
    for o in outs.iter_mut() {
        let mut keep = 0;
        for f in &o.frames {
            if any && f.len() > budget {
                break;
            }
            budget = budget.saturating_sub(f.len());
            any = true;
            keep += 1;
        }
        o.frames.truncate(keep);
    }
}

fn bytes_of(outs: &[FetchOut]) -> usize {
    outs.iter()
        .flat_map(|o| o.frames.iter())
        .map(|f| f.len())
        .sum()
}

fn out_of_reach(index: usize, e: WireError) -> FetchOut {
    FetchOut {
        index,
        error: Some(e),
        ..Default::default()
    }
}

/// Reads every partition once (no waiting), each on its owner; results by
/// part index. A shard that fails answers for its own parts only.
async fn read_all(shard: &Rc<Shard>, parts: &[FetchPart]) -> Vec<FetchOut> {
    let mut outs: Vec<Option<FetchOut>> = (0..parts.len()).map(|_| None).collect();
    let mut per_shard: BTreeMap<usize, Vec<FetchItem>> = BTreeMap::new();
    for (index, p) in parts.iter().enumerate() {
        match shard.owner(&p.topic, p.partition) {
            Ok(s) => per_shard.entry(s).or_default().push(FetchItem {
                index,
                topic: p.topic.clone(),
                partition: p.partition,
                offset: p.offset,
                max_bytes: p.max_bytes,
                read_committed: p.read_committed,
            }),
            Err(e) => outs[index] = Some(out_of_reach(index, e)),
        }
    }
    let mut waiting: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let ops: Vec<(usize, Op)> = per_shard
        .into_iter()
        .map(|(s, items)| {
            waiting.insert(s, items.iter().map(|i| i.index).collect());
            (s, Op::Fetch { items })
        })
        .collect();
    let n = ops.len();
    let rx = fan_out(shard, ops);
    for (target, reply) in collect(&rx, n, None).await {
        let indexes = waiting.remove(&target).unwrap_or_default();
        match reply {
            Reply::Fetch(fs) => {
                for f in fs {
                    let i = f.index;
                    outs[i] = Some(f);
                }
            }
            other => {
                let e = reply_error(other);
                for i in indexes {
                    outs[i] = Some(out_of_reach(i, e.clone()));
                }
            }
        }
    }
    outs.into_iter()
        .enumerate()
        .map(|(i, o)| {
            o.unwrap_or_else(|| out_of_reach(i, WireError::new(ErrorCode::Internal, "no answer")))
        })
        .collect()
}

/// The frames of a read_committed answer a consumer may see, for an edge
/// whose clients do not filter themselves (the native protocol; Kafka
/// clients get the aborted list instead and filter as Kafka's fetcher
/// does): transaction markers go, and so does every transactional frame of
/// a producer from the first offset of one of its `aborted` transactions
/// (`(producer id, first offset)`) up to its abort marker. Frames stay
/// whole and in order; nothing is copied.
pub fn committed_frames(frames: Vec<bytes::Bytes>, aborted: &[(i64, u64)]) -> Vec<bytes::Bytes> {
    use strom_flatbuffers::FrameHeader;
    let mut pending: Vec<(i64, u64)> = aborted.to_vec();
    pending.sort_by_key(|&(_, first)| std::cmp::Reverse(first));
    let mut aborting: std::collections::HashSet<i64> = std::collections::HashSet::new();
    frames
        .into_iter()
        .filter(|f| {
            // Stored frames passed verification: a header is there.
            let Some(h) = FrameHeader::ref_from(f) else {
                return false;
            };
            while pending
                .last()
                .is_some_and(|&(_, first)| first <= h.last_offset())
            {
                let (pid, _) = pending.pop().expect("checked");
                aborting.insert(pid);
            }
            let pid = h.producer_id.get();
            if h.is_control() {
                if !h.is_commit_marker() {
                    aborting.remove(&pid);
                }
                return false;
            }
            !(h.is_transactional() && aborting.contains(&pid))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn out(lens: &[usize]) -> FetchOut {
        FetchOut {
            frames: lens.iter().map(|&n| Bytes::from(vec![0u8; n])).collect(),
            ..Default::default()
        }
    }

    fn lens(outs: &[FetchOut]) -> Vec<Vec<usize>> {
        outs.iter()
            .map(|o| o.frames.iter().map(|f| f.len()).collect())
            .collect()
    }

    #[test]
    fn whole_frames_within_the_budget_and_the_first_always() {
        let mut o = vec![out(&[300, 300]), out(&[300])];
        trim_to_budget(&mut o, 700);
        assert_eq!(lens(&o), vec![vec![300, 300], vec![]]);
        // A first frame above the budget still goes, alone.
        let mut o = vec![out(&[5000, 10]), out(&[10])];
        trim_to_budget(&mut o, 100);
        assert_eq!(lens(&o), vec![vec![5000], vec![]]);
        // A part stops at the first frame that does not fit; a later part
        // may still fit a smaller one.
        let mut o = vec![out(&[60, 60]), out(&[10])];
        trim_to_budget(&mut o, 100);
        assert_eq!(lens(&o), vec![vec![60], vec![10]]);
    }

    #[test]
    fn committed_frames_drop_markers_and_aborted_transactions() {
        use bytes::Bytes;
        use strom_flatbuffers::frame::{ATTR_COMMIT, ATTR_CONTROL, ATTR_TRANSACTIONAL};
        use strom_flatbuffers::{stamp_base_offset, BatchBuilder, RecordIn};
        // (base offset, producer id, attribute bits); one record each.
        let f = |base: u64, pid: i64, bits: u16| {
            let mut b = BatchBuilder::new();
            b.set_txn_attributes(bits);
            if pid >= 0 {
                b.set_producer(pid, 0, 0);
            }
            b.push(&RecordIn {
                timestamp_ms: 1,
                key: None,
                value: Some(b"v"),
                headers: &[],
            });
            let mut v = b.finish();
            stamp_base_offset(&mut v, base);
            Bytes::from(v)
        };
        let t = ATTR_TRANSACTIONAL;
        let frames = vec![
            f(0, -1, 0),                             // plain
            f(1, 7, t),                              // 7: aborted below
            f(2, 8, t),                              // 8: committed below
            f(3, 7, t | ATTR_CONTROL),               // 7's abort marker
            f(4, 8, t | ATTR_CONTROL | ATTR_COMMIT), // 8's commit marker
            f(5, 7, t),                              // 7 again: a new, committed txn
            f(6, -1, 0),
        ];
        let kept: Vec<u64> = committed_frames(frames, &[(7, 1)])
            .iter()
            .map(|f| {
                strom_flatbuffers::FrameHeader::ref_from(f)
                    .unwrap()
                    .base_offset()
            })
            .collect();
        assert_eq!(kept, vec![0, 2, 5, 6]);
    }
}
