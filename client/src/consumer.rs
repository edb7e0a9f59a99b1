//! [`Consumer`]: reads explicitly assigned partitions with long-poll
//! fetches and hands out stored frames whose records are read zero-copy.
//!
//! Invariants:
//! - Every frame is checked with [`verify_stored`] (checksums) and the
//!   FlatBuffers verifier before it is handed out; a bad frame is an
//!   [`Error::Frame`] and the position does not move past it.
//! - A partition's position is the next offset to hand out. A fetch may
//!   return a frame that starts before it (the server sends whole frames);
//!   [`FetchedFrame::records`] skips the records below the position the
//!   frame was fetched at, so no record is handed out twice.
//! - Positions only move forward through [`Consumer::poll`] and only by
//!   whole frames; [`Consumer::seek`] moves them anywhere.
//! - A per-partition error (e.g. `OffsetOutOfRange`) fails the whole poll
//!   without moving any position, so nothing is skipped; the caller decides
//!   (seek, or give up).

use crate::client::{Client, OffsetSpec};
use crate::connection::{Connection, ConnectionConfig};
use crate::error::{check, Error, Result};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strom_flatbuffers::protocol::{
    frames, FetchPartition, FetchRequest, RequestBody, ResponseBody,
};
use strom_flatbuffers::{records, verify_stored, FrameHeader, RecordView};

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Longest time the server holds one fetch waiting for `min_bytes`.
    pub max_wait_ms: u32,
    /// The server answers as soon as this many bytes are available.
    pub min_bytes: u32,
    /// Most bytes one fetch response may carry.
    pub max_bytes: u32,
    /// Most bytes one partition contributes to a fetch response (a frame
    /// larger than this is still returned whole when it is the first).
    pub partition_max_bytes: u32,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 16 << 20,
            partition_max_bytes: 2 << 20,
        }
    }
}

/// One assigned partition and where reading continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub topic: Arc<str>,
    pub partition: u32,
    /// The next offset to hand out.
    pub position: u64,
    /// The high watermark the last fetch reported (0 before any fetch).
    pub high_watermark: u64,
}

/// One verified stored frame from a fetch.
#[derive(Debug, Clone)]
pub struct FetchedFrame {
    pub topic: Arc<str>,
    pub partition: u32,
    /// The whole frame, header included (a slice of the response buffer).
    pub frame: Bytes,
    /// Records below this offset were handed out before and are skipped.
    pub skip_before: u64,
}

impl FetchedFrame {
    /// The frame's header, read in place.
    pub fn header(&self) -> &FrameHeader {
        FrameHeader::ref_from(&self.frame).expect("verified at poll")
    }

    /// The records of this frame not handed out before, read zero-copy.
    pub fn records(&self) -> impl Iterator<Item = RecordView<'_>> + '_ {
        let skip = self.skip_before;
        records(&self.frame)
            .expect("verified at poll")
            .filter(move |r| r.offset >= skip)
    }
}

/// A consumer of explicitly assigned partitions; see the module docs.
#[derive(Debug)]
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    assignments: Vec<Assignment>,
}

impl Consumer {
    pub fn connect(addr: &str, config: ConsumerConfig) -> Result<Consumer> {
        let conn = Connection::connect(addr, ConnectionConfig::default())?;
        Ok(Consumer::new(Client::new(conn), config))
    }

    pub fn new(client: Client, config: ConsumerConfig) -> Consumer {
        Consumer {
            client,
            config,
            assignments: Vec::new(),
        }
    }

    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    pub fn assignments(&self) -> &[Assignment] {
        &self.assignments
    }

    /// The position of an assigned partition.
    pub fn position(&self, topic: &str, partition: u32) -> Option<u64> {
        self.find(topic, partition)
            .map(|i| self.assignments[i].position)
    }

    fn find(&self, topic: &str, partition: u32) -> Option<usize> {
        self.assignments
            .iter()
            .position(|a| &*a.topic == topic && a.partition == partition)
    }

    fn resolve(&mut self, topic: &str, partition: u32, from: OffsetSpec) -> Result<u64> {
        match self.client.list_offset(topic, partition, from)? {
            Some(n) => Ok(n),
            // No record that recent: start at the end.
            None => Ok(self
                .client
                .list_offset(topic, partition, OffsetSpec::Latest)?
                .unwrap_or(0)),
        }
    }

    /// Adds (or moves) a partition, starting at `from`.
    pub fn assign(&mut self, topic: &str, partition: u32, from: OffsetSpec) -> Result<()> {
        let count = self.client.partition_count(topic)?;
        if partition >= count {
            return Err(Error::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                partitions: count,
            });
        }
        let position = self.resolve(topic, partition, from)?;
        match self.find(topic, partition) {
            Some(i) => self.assignments[i].position = position,
            None => self.assignments.push(Assignment {
                topic: Arc::from(topic),
                partition,
                position,
                high_watermark: 0,
            }),
        }
        Ok(())
    }

    /// Assigns every partition of `topic`, each starting at `from`.
    pub fn assign_topic(&mut self, topic: &str, from: OffsetSpec) -> Result<u32> {
        let count = self.client.partition_count(topic)?;
        for p in 0..count {
            self.assign(topic, p, from)?;
        }
        Ok(count)
    }

    /// Moves an assigned partition's position.
    pub fn seek(&mut self, topic: &str, partition: u32, to: OffsetSpec) -> Result<()> {
        self.assign(topic, partition, to)
    }

    pub fn unassign(&mut self, topic: &str, partition: u32) {
        self.assignments
            .retain(|a| !(&*a.topic == topic && a.partition == partition));
    }

    /// Fetches from every assigned partition, waiting (long poll) up to
    /// `timeout` for data. Returns the new frames, verified, in partition
    /// order; empty when nothing arrived in time.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<FetchedFrame>> {
        if self.assignments.is_empty() {
            return Err(Error::InvalidArgument(
                "poll with no partition assigned".into(),
            ));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left_ms = deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u64;
            let out = self.fetch_once(left_ms)?;
            if !out.is_empty() || Instant::now() >= deadline {
                return Ok(out);
            }
        }
    }

    fn fetch_once(&mut self, wait_ms: u64) -> Result<Vec<FetchedFrame>> {
        let server_wait_max = match self.client.server_info().fetch_wait_max_ms {
            0 => u32::MAX,
            n => n,
        };
        let max_wait_ms =
            (wait_ms.min(u64::from(self.config.max_wait_ms)) as u32).min(server_wait_max);
        let body = RequestBody::Fetch(FetchRequest {
            max_wait_ms,
            min_bytes: self.config.min_bytes,
            max_bytes: self.config.max_bytes,
            partitions: self
                .assignments
                .iter()
                .map(|a| FetchPartition {
                    topic: a.topic.to_string(),
                    partition: a.partition,
                    offset: a.position,
                    partition_max_bytes: self.config.partition_max_bytes,
                })
                .collect(),
        });
        // When every assigned partition lives on one shard, read them from
        // that shard directly; otherwise one request through the bootstrap
        // connection, whose shard fans it out (one long poll for all).
        let parts: Vec<(Arc<str>, u32)> = self
            .assignments
            .iter()
            .map(|a| (a.topic.clone(), a.partition))
            .collect();
        let route = self
            .client
            .common_route(parts.iter().map(|(t, p)| (&**t, *p)));
        let response = self
            .client
            .connection_on(route)
            .call(&body, &[], u64::from(max_wait_ms))?;
        let fetch = match response.body {
            ResponseBody::Fetch(f) => f,
            other => {
                return Err(Error::UnexpectedResponse {
                    request: "fetch",
                    got: format!("{other:?}"),
                })
            }
        };
        if fetch.results.len() != self.assignments.len() {
            return Err(Error::UnexpectedResponse {
                request: "fetch",
                got: format!(
                    "{} results for {} partitions",
                    fetch.results.len(),
                    self.assignments.len()
                ),
            });
        }
        let pieces =
            fetch
                .split_trailer(response.trailer)
                .ok_or_else(|| Error::UnexpectedResponse {
                    request: "fetch",
                    got: "trailer does not match the declared lengths".into(),
                })?;
        // Check everything before moving any position.
        let mut out = Vec::new();
        let mut moves = Vec::with_capacity(self.assignments.len());
        for ((a, r), blob) in self.assignments.iter().zip(&fetch.results).zip(pieces) {
            if r.topic != *a.topic || r.partition != a.partition {
                return Err(Error::UnexpectedResponse {
                    request: "fetch",
                    got: format!(
                        "result for {}/{} where {}/{} was asked",
                        r.topic, r.partition, a.topic, a.partition
                    ),
                });
            }
            if r.error != strom_flatbuffers::protocol::ErrorCode::None {
                self.client.note_error(&r.topic, r.error);
            }
            check(r.error, &r.message, || {
                format!("fetch {}/{} at offset {}", a.topic, a.partition, a.position)
            })?;
            let mut position = a.position;
            for frame in frames(&blob) {
                let frame = frame.map_err(|source| Error::Frame {
                    topic: a.topic.to_string(),
                    partition: a.partition,
                    source,
                })?;
                let header = verify_stored(frame).map_err(|source| Error::Frame {
                    topic: a.topic.to_string(),
                    partition: a.partition,
                    source,
                })?;
                let next = header.next_offset();
                // The FlatBuffers verifier, so FetchedFrame::records cannot fail.
                records(frame).map(drop).map_err(|source| Error::Frame {
                    topic: a.topic.to_string(),
                    partition: a.partition,
                    source,
                })?;
                if next <= position {
                    continue;
                }
                let start = frame.as_ptr() as usize - blob.as_ptr() as usize;
                out.push(FetchedFrame {
                    topic: a.topic.clone(),
                    partition: a.partition,
                    frame: blob.slice(start..start + frame.len()),
                    skip_before: position,
                });
                position = next;
            }
            moves.push((position, r.high_watermark));
        }
        for (a, (position, hw)) in self.assignments.iter_mut().zip(moves) {
            a.position = position;
            a.high_watermark = hw;
        }
        Ok(out)
    }

    /// Commits every assigned partition's position under `group`.
    pub fn commit(&mut self, group: &str) -> Result<()> {
        let offsets: Vec<(String, u32, u64)> = self
            .assignments
            .iter()
            .map(|a| (a.topic.to_string(), a.partition, a.position))
            .collect();
        self.client.commit_offsets(group, &offsets)
    }
}
