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
//! - Cluster mode ([`Client`]'s module docs): each partition is fetched
//!   from its leader, one request per leader node, all sent before any
//!   answer is awaited. A leader error ([`crate::client::is_leader_error`]:
//!   `NotLeader`, `LeaderNotAvailable`, `PartitionUnavailable`, a lost
//!   connection) does not fail the poll: that partition's position stays,
//!   its leader is looked up again, and the poll tries again after a
//!   back-off until its timeout. Only when partitions have had nothing but
//!   leader errors for [`ConsumerConfig::leader_wait_ms`] does a poll fail
//!   with the last one.

use crate::client::{is_leader_error, Client, OffsetSpec, Route};
use crate::cluster;
use crate::connection::{ConnectionConfig, Response};
use crate::error::{check, Error, Result};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strom_flatbuffers::protocol::{
    frames, ErrorCode, FetchPartition, FetchRequest, RequestBody, ResponseBody,
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
    /// Cluster mode: how long fetches may meet nothing but leader errors
    /// (an election, a dead leader) before a poll reports the last one.
    pub leader_wait_ms: u64,
    /// Kafka's read_committed: only what committed transactions (and plain
    /// producers) wrote, up to the last stable offset; the server leaves
    /// out aborted transactions and markers. Off: every data record, as a
    /// Kafka read_uncommitted consumer sees.
    pub read_committed: bool,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 16 << 20,
            partition_max_bytes: 2 << 20,
            leader_wait_ms: 30_000,
            read_committed: false,
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
    /// Cluster mode: since when fetches met only leader errors, and the
    /// last of them (None after a fetch without one).
    leader_trouble: Option<(Instant, Error)>,
}

/// What one fetch response did for the assignments it covered.
struct Taken {
    /// (assignment index, new position, high watermark).
    moves: Vec<(usize, u64, u64)>,
    /// A leader error, where one came back (cluster mode).
    leader_error: Option<Error>,
}

impl Consumer {
    /// Connects to `addrs` (one or more `host:port`, comma separated).
    pub fn connect(addrs: &str, config: ConsumerConfig) -> Result<Consumer> {
        let client = Client::connect_with(addrs, ConnectionConfig::default())?;
        Ok(Consumer::new(client, config))
    }

    pub fn new(client: Client, config: ConsumerConfig) -> Consumer {
        Consumer {
            client,
            config,
            assignments: Vec::new(),
            leader_trouble: None,
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
        let mut backoff_ms = 0;
        loop {
            let left_ms = deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u64;
            let out = self.fetch_once(left_ms)?;
            if !out.is_empty() || Instant::now() >= deadline {
                return Ok(out);
            }
            let Some((since, _)) = &self.leader_trouble else {
                continue;
            };
            if since.elapsed() >= Duration::from_millis(self.config.leader_wait_ms) {
                let (_, e) = self.leader_trouble.take().expect("checked");
                return Err(e);
            }
            backoff_ms = cluster::next_backoff(backoff_ms);
            let pause = Duration::from_millis(backoff_ms)
                .min(deadline.saturating_duration_since(Instant::now()));
            std::thread::sleep(pause);
        }
    }

    fn fetch_once(&mut self, wait_ms: u64) -> Result<Vec<FetchedFrame>> {
        let server_wait_max = match self.client.server_info().fetch_wait_max_ms {
            0 => u32::MAX,
            n => n,
        };
        let max_wait_ms =
            (wait_ms.min(u64::from(self.config.max_wait_ms)) as u32).min(server_wait_max);
        if self.client.follows_leaders() {
            return self.fetch_at_leaders(max_wait_ms);
        }
        // When every assigned partition lives on one shard, read them from
        // that shard directly; otherwise one request through the bootstrap
        // connection, whose shard fans it out (one long poll for all).
        let all: Vec<usize> = (0..self.assignments.len()).collect();
        let body = self.fetch_request(&all, max_wait_ms);
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
        let mut out = Vec::new();
        let taken = self.take(&all, response, false, &mut out)?;
        self.apply(taken.moves);
        Ok(out)
    }

    fn fetch_request(&self, idx: &[usize], max_wait_ms: u32) -> RequestBody {
        RequestBody::Fetch(FetchRequest {
            max_wait_ms,
            min_bytes: self.config.min_bytes,
            max_bytes: self.config.max_bytes,
            partitions: idx
                .iter()
                .map(|&i| {
                    let a = &self.assignments[i];
                    FetchPartition {
                        topic: a.topic.to_string(),
                        partition: a.partition,
                        offset: a.position,
                        partition_max_bytes: self.config.partition_max_bytes,
                    }
                })
                .collect(),
            read_committed: self.config.read_committed,
        })
    }

    /// Cluster mode: one fetch per leader, all sent before any answer is
    /// awaited; leader errors are noted, not returned (module docs).
    fn fetch_at_leaders(&mut self, max_wait_ms: u32) -> Result<Vec<FetchedFrame>> {
        let mut by_route: Vec<(Route, Vec<usize>)> = Vec::new();
        for i in 0..self.assignments.len() {
            let (topic, partition) = {
                let a = &self.assignments[i];
                (a.topic.clone(), a.partition)
            };
            let route = self.client.route(&topic, partition);
            match by_route.iter_mut().find(|(r, _)| *r == route) {
                Some((_, v)) => v.push(i),
                None => by_route.push((route, vec![i])),
            }
        }
        let mut sent = Vec::with_capacity(by_route.len());
        for (route, idx) in by_route {
            let body = self.fetch_request(&idx, max_wait_ms);
            let conn = self.client.connection_on(route);
            let id = conn.send(&body, &[]).map(|id| (id, conn.generation()));
            sent.push((route, idx, id));
        }
        let mut out = Vec::new();
        let mut moves = Vec::new();
        let mut leader_error: Option<Error> = None;
        // Every answer is awaited even after a failure, so that none is
        // left to pile up on its connection.
        let mut failed: Option<Error> = None;
        for (route, idx, id) in sent {
            let answer = id.and_then(|(id, generation)| {
                let conn = self.client.connection_on(route);
                if conn.generation() != generation {
                    return Err(Error::Closed { addr: conn.addr() });
                }
                let response = conn.recv(id, u64::from(max_wait_ms))?;
                if let ResponseBody::Error(e) = &response.body {
                    return Err(Error::server(e.error, &e.message, "fetch"));
                }
                Ok(response)
            });
            match answer {
                Ok(_) if failed.is_some() => {}
                Ok(response) => match self.take(&idx, response, true, &mut out) {
                    Ok(taken) => {
                        moves.extend(taken.moves);
                        if taken.leader_error.is_some() {
                            leader_error = taken.leader_error;
                        }
                    }
                    Err(e) => failed = Some(e),
                },
                Err(e) if is_leader_error(&e) => {
                    if e.is_connection_error() {
                        self.client.route_failed(route);
                    }
                    leader_error = Some(e);
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        self.apply(moves);
        match leader_error {
            None => self.leader_trouble = None,
            Some(e) => {
                let since = self
                    .leader_trouble
                    .take()
                    .map_or_else(Instant::now, |(t, _)| t);
                // Progress elsewhere is not progress here: the clock runs
                // until a fetch meets no leader error at all.
                self.leader_trouble = Some((since, e));
            }
        }
        Ok(out)
    }

    /// Checks one fetch response covering the assignments `idx` and takes
    /// its new frames into `out`; nothing moves until [`Consumer::apply`].
    /// With `leader_errors`, a partition's leader error is noted in the
    /// result instead of failing it.
    fn take(
        &mut self,
        idx: &[usize],
        response: Response,
        leader_errors: bool,
        out: &mut Vec<FetchedFrame>,
    ) -> Result<Taken> {
        let fetch = match response.body {
            ResponseBody::Fetch(f) => f,
            other => {
                return Err(Error::UnexpectedResponse {
                    request: "fetch",
                    got: format!("{other:?}"),
                })
            }
        };
        if fetch.results.len() != idx.len() {
            return Err(Error::UnexpectedResponse {
                request: "fetch",
                got: format!(
                    "{} results for {} partitions",
                    fetch.results.len(),
                    idx.len()
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
        let mut taken = Taken {
            moves: Vec::with_capacity(idx.len()),
            leader_error: None,
        };
        for ((&i, r), blob) in idx.iter().zip(&fetch.results).zip(pieces) {
            let a = &self.assignments[i];
            if r.topic != *a.topic || r.partition != a.partition {
                return Err(Error::UnexpectedResponse {
                    request: "fetch",
                    got: format!(
                        "result for {}/{} where {}/{} was asked",
                        r.topic, r.partition, a.topic, a.partition
                    ),
                });
            }
            let (topic, partition, position) = (a.topic.clone(), a.partition, a.position);
            if r.error != ErrorCode::None {
                self.client.note_error(&r.topic, r.partition, r.error);
            }
            let checked = check(r.error, &r.message, || {
                format!("fetch {topic}/{partition} at offset {position}")
            });
            match checked {
                Err(e) if leader_errors && is_leader_error(&e) => {
                    taken.leader_error = Some(e);
                    continue;
                }
                other => other?,
            }
            let mut next_position = position;
            for frame in frames(&blob) {
                let frame = frame.map_err(|source| Error::Frame {
                    topic: topic.to_string(),
                    partition,
                    source,
                })?;
                let header = verify_stored(frame).map_err(|source| Error::Frame {
                    topic: topic.to_string(),
                    partition,
                    source,
                })?;
                let next = header.next_offset();
                // The FlatBuffers verifier, so FetchedFrame::records cannot fail.
                records(frame).map(drop).map_err(|source| Error::Frame {
                    topic: topic.to_string(),
                    partition,
                    source,
                })?;
                if next <= next_position {
                    continue;
                }
                // A transaction marker (a Kafka producer's transaction,
                // `docs/format.md`, control frames) is not data: the
                // position moves past it, nothing is handed out.
                if header.is_control() {
                    next_position = next;
                    continue;
                }
                let start = frame.as_ptr() as usize - blob.as_ptr() as usize;
                out.push(FetchedFrame {
                    topic: topic.clone(),
                    partition,
                    frame: blob.slice(start..start + frame.len()),
                    skip_before: next_position,
                });
                next_position = next;
            }
            // Frames a read_committed fetch left out (aborted data) still
            // move the position, or the next fetch would return nothing
            // again from the same place.
            if r.read_through > next_position && r.read_through <= r.high_watermark {
                next_position = r.read_through;
            }
            taken.moves.push((i, next_position, r.high_watermark));
        }
        Ok(taken)
    }

    /// Moves the positions a fetch established.
    fn apply(&mut self, moves: Vec<(usize, u64, u64)>) {
        for (i, position, hw) in moves {
            if let Some(a) = self.assignments.get_mut(i) {
                debug_assert!(position >= a.position, "positions only move forward");
                a.position = position;
                a.high_watermark = hw;
            }
        }
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
