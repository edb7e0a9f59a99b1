//! One consumer connection: long-poll fetches of its partitions, one fetch
//! in flight (the next position depends on the answer), responses read into
//! one reusable buffer without copying.
//!
//! Per frame the consumer reads the 72-byte header in place (offsets, record
//! count) and counts the records at or past its position. With `--verify` it
//! also checks every frame's checksums and FlatBuffers, as strom-client does.
//! In `e2e` mode it reads every record and takes the send time the producer
//! stamped into the first 8 bytes of the value: end-to-end latency is the
//! receipt time of the response minus that stamp.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use strom_flatbuffers::protocol::{
    frames, ErrorCode, FetchPartition, FetchRequest, RequestBody, ResponseBody,
};
use strom_flatbuffers::{records, verify_stored, FrameHeader};

use crate::load::{clock_ns, pin_thread, record_all, Shared};
use crate::report::BenchError;
use crate::wire;

/// One partition a consumer reads.
#[derive(Clone, Debug)]
pub struct PartitionRead {
    pub topic: String,
    pub partition: u32,
    /// The next offset to read.
    pub position: u64,
    /// Re-read `[start, end)` over and over: back to `start` at `end`.
    pub wrap: Option<(u64, u64)>,
}

pub struct ConsumerSpec {
    pub id: usize,
    pub addr: String,
    pub reads: Vec<PartitionRead>,
    pub message_size: usize,
    pub max_bytes: u32,
    pub partition_max_bytes: u32,
    pub wait_ms: u32,
    pub e2e: bool,
    pub verify: bool,
    pub core: Option<usize>,
}

pub fn run(spec: ConsumerSpec, shared: Arc<Shared>) -> Result<(), BenchError> {
    let r = run_inner(spec, &shared);
    if let Err(e) = &r {
        shared.fail(format!("consumer: {e}"));
    }
    r
}

fn bad(what: impl Into<String>) -> BenchError {
    BenchError::Config(what.into())
}

fn run_inner(mut spec: ConsumerSpec, shared: &Shared) -> Result<(), BenchError> {
    pin_thread(spec.core);
    let (mut writer, mut reader) = wire::connect(&spec.addr, &format!("consumer-{}", spec.id))?;
    let mut lats: Vec<u64> = Vec::with_capacity(16 << 10);
    let size = spec.message_size as u64;
    let addr = spec.addr.clone();
    while !shared.stopped() {
        let body = RequestBody::Fetch(FetchRequest {
            max_wait_ms: spec.wait_ms,
            min_bytes: 1,
            max_bytes: spec.max_bytes,
            partitions: spec
                .reads
                .iter()
                .map(|r| FetchPartition {
                    topic: r.topic.clone(),
                    partition: r.partition,
                    offset: r.position,
                    partition_max_bytes: spec.partition_max_bytes,
                })
                .collect(),
            read_committed: false,
        });
        let id = writer.send(&body, &[])?;
        let msg = reader.next_message()?;
        let now = clock_ns();
        let d = wire::decode(&addr, msg)?;
        if d.correlation_id != id {
            return Err(bad(format!(
                "fetch answer id {} where {id} was awaited",
                d.correlation_id
            )));
        }
        let fetch = match d.body {
            ResponseBody::Fetch(f) => f,
            ResponseBody::Error(e) => {
                return Err(bad(format!("fetch failed: {:?} {}", e.error, e.message)))
            }
            other => return Err(bad(format!("unexpected answer to fetch: {other:?}"))),
        };
        if fetch.results.len() != spec.reads.len() {
            return Err(bad("fetch answered another number of partitions"));
        }
        let mut at = d.trailer.start;
        let (mut recs, mut wire_bytes) = (0u64, 0u64);
        lats.clear();
        for (r, read) in fetch.results.iter().zip(spec.reads.iter_mut()) {
            if r.error != ErrorCode::None {
                return Err(bad(format!(
                    "fetch {}/{} at {}: {:?} {}",
                    r.topic, r.partition, read.position, r.error, r.message
                )));
            }
            let len = r.bytes_len as usize;
            let blob = msg
                .get(at..at + len)
                .ok_or_else(|| bad("fetch trailer shorter than declared"))?;
            at += len;
            wire_bytes += len as u64;
            for frame in frames(blob) {
                let frame = frame.map_err(|e| bad(format!("fetched frame: {e}")))?;
                let h = if spec.verify {
                    verify_stored(frame).map_err(|e| bad(format!("fetched frame: {e}")))?
                } else {
                    FrameHeader::ref_from(frame).ok_or_else(|| bad("short frame"))?
                };
                let next = h.next_offset();
                if next <= read.position {
                    continue;
                }
                let from = h.base_offset().max(read.position);
                if spec.e2e || spec.verify {
                    let it = records(frame).map_err(|e| bad(format!("fetched frame: {e}")))?;
                    for rec in it.filter(|x| x.offset >= from) {
                        if spec.e2e {
                            if let Some(v) = rec.value.and_then(|v| v.get(..8)) {
                                let sent = u64::from_le_bytes(v.try_into().expect("8 bytes"));
                                lats.push(now.saturating_sub(sent));
                            }
                        }
                    }
                }
                recs += next - from;
                read.position = next;
            }
            if let Some((start, end)) = read.wrap {
                if read.position >= end {
                    read.position = start;
                }
            }
        }
        shared.fetch_requests.fetch_add(1, Ordering::Relaxed);
        shared.consumed_records.fetch_add(recs, Ordering::Relaxed);
        shared
            .consumed_bytes
            .fetch_add(recs * size, Ordering::Relaxed);
        shared
            .consumed_wire
            .fetch_add(wire_bytes, Ordering::Relaxed);
        if !lats.is_empty() {
            record_all(&shared.e2e_hist, &lats);
        }
    }
    writer.shutdown();
    Ok(())
}
