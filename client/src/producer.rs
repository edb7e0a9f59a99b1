//! [`Producer`]: batches records per partition and sends them as produce
//! requests, pipelined, reporting every record's offset.
//!
//! - **Batching.** Each (topic, partition) has one open batch (a
//!   [`BatchBuilder`]). It is sealed when adding a record would take it past
//!   `batch_bytes`, when it is older than `linger_ms` at the next
//!   [`Producer::send`] or [`Producer::poll`], or on [`Producer::flush`].
//!   Sealed batches of several partitions travel in one produce request of
//!   at most `request_bytes_max` trailer bytes.
//! - **Partitioning.** An explicit partition wins. Otherwise a record with a
//!   key goes to `murmur2(key) & 0x7fff_ffff % partitions`, the function and
//!   seed Kafka's default partitioner uses (so the same key lands on the
//!   same partition number as with a Kafka client); a null key goes round
//!   robin per topic.
//! - **Offsets.** A record's offset is its batch's `base_offset` plus its
//!   index in the batch. [`Producer::flush`] returns one result per record
//!   sent since the previous flush, in send order ([`RecordHandle::index`]).
//! - **Pipelining and order.** Up to `inflight_requests_max` produce
//!   requests are in flight; the producer waits for the oldest before
//!   sending more. The server runs a connection's requests concurrently, so
//!   a partition has at most one batch in flight: its next batch waits for
//!   the answer (like Kafka's `max.in.flight.requests.per.connection=1`,
//!   per partition). Records of one partition, and so of one key, are
//!   stored in send order. With `acks = none` there is no answer to wait
//!   for and this order is not guaranteed.
//! - **Driving it.** There is no background thread: batches move on
//!   [`Producer::send`], [`Producer::poll`] and [`Producer::flush`]. Call
//!   `poll` when idle so lingering batches go out.
//! - **Failures.** A server error fails the records of that batch with its
//!   code. If the connection breaks with requests in flight, their records
//!   fail with [`Error::Undetermined`] (they may or may not be stored); they
//!   are not resent, so a record is never written twice by this producer.
//!   With `acks = none` the server never answers and records report
//!   [`Error::NotAcknowledged`].

use crate::client::{Client, Route};
use crate::connection::{Connection, ConnectionConfig};
use crate::error::{Error, Result};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use strom_flatbuffers::protocol::{
    Acks, ErrorCode, ProduceBatch, ProduceRequest, RequestBody, ResponseBody,
};
use strom_flatbuffers::{BatchBuilder, RecordIn, FRAME_HEADER_BYTES};

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub acks: Acks,
    /// A batch is sealed before it grows past this (clamped to the server's
    /// `frame_bytes_max`).
    pub batch_bytes: usize,
    /// How long a batch may wait for more records.
    pub linger_ms: u64,
    /// Most trailer bytes (batches) in one produce request.
    pub request_bytes_max: usize,
    /// Produce requests awaiting an answer at once.
    pub inflight_requests_max: usize,
    /// How long the server may take to append (and sync, for durable acks).
    pub timeout_ms: u32,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::Leader,
            batch_bytes: 64 << 10,
            linger_ms: 5,
            request_bytes_max: 1 << 20,
            inflight_requests_max: 8,
            timeout_ms: 30_000,
        }
    }
}

/// One record to send. `timestamp_ms: None` means now.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProducerRecord<'a> {
    pub topic: &'a str,
    pub partition: Option<u32>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, &'a [u8])],
    pub timestamp_ms: Option<i64>,
}

impl<'a> ProducerRecord<'a> {
    /// A record with a value and nothing else.
    pub fn new(topic: &'a str, value: &'a [u8]) -> Self {
        ProducerRecord {
            topic,
            value: Some(value),
            ..Default::default()
        }
    }

    pub fn key(mut self, key: &'a [u8]) -> Self {
        self.key = Some(key);
        self
    }

    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub fn headers(mut self, headers: &'a [(&'a str, &'a [u8])]) -> Self {
        self.headers = headers;
        self
    }

    pub fn timestamp_ms(mut self, ts: i64) -> Self {
        self.timestamp_ms = Some(ts);
        self
    }

    fn estimated_bytes(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 24)
            .sum();
        self.key.map_or(0, <[u8]>::len) + self.value.map_or(0, <[u8]>::len) + headers + 48
    }
}

/// Identifies a sent record; its result is at [`RecordHandle::index`] in
/// the vector the next [`Producer::flush`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordHandle {
    seq: u64,
    index: usize,
    partition: u32,
}

impl RecordHandle {
    /// Position of this record among those sent since the last flush.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The partition the record was assigned to.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Position among every record this producer was given.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

struct OpenBatch {
    builder: BatchBuilder,
    seqs: Vec<u64>,
    opened: Instant,
}

struct SealedBatch {
    topic: String,
    partition: u32,
    frame: Vec<u8>,
    seqs: Vec<u64>,
}

struct InFlight {
    /// The connection it was sent on.
    route: Route,
    correlation_id: u64,
    generation: u64,
    batches: Vec<(String, u32, Vec<u64>)>,
}

/// Kafka's murmur2 (seed 0x9747b28c), as used by its default partitioner.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for a non-null key.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    ((murmur2(key) as u32) & 0x7fff_ffff) % partitions
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn copy_error(e: &Error, topic: &str, partition: u32) -> Error {
    match e {
        Error::Server {
            code,
            message,
            context,
        } => Error::Server {
            code: *code,
            message: message.clone(),
            context: context.clone(),
        },
        Error::NotAcknowledged => Error::NotAcknowledged,
        other => Error::Undetermined {
            topic: topic.to_owned(),
            partition,
            reason: other.to_string(),
        },
    }
}

/// A batching producer; see the module docs.
pub struct Producer {
    client: Client,
    config: ProducerConfig,
    open: HashMap<(String, u32), OpenBatch>,
    sealed: VecDeque<SealedBatch>,
    inflight: VecDeque<InFlight>,
    round_robin: HashMap<String, u32>,
    /// Results of records `first_seq..next_seq`; `None` while pending.
    results: VecDeque<Option<Result<u64>>>,
    first_seq: u64,
    next_seq: u64,
}

impl Producer {
    /// Connects to `addr` with default connection settings.
    pub fn connect(addr: &str, config: ProducerConfig) -> Result<Producer> {
        let conn = Connection::connect(addr, ConnectionConfig::default())?;
        Ok(Producer::new(Client::new(conn), config))
    }

    pub fn new(client: Client, mut config: ProducerConfig) -> Producer {
        let frame_max = client_frame_max(&client);
        config.batch_bytes = config.batch_bytes.clamp(FRAME_HEADER_BYTES + 64, frame_max);
        config.request_bytes_max = config.request_bytes_max.max(config.batch_bytes);
        config.inflight_requests_max = config.inflight_requests_max.max(1);
        Producer {
            client,
            config,
            open: HashMap::new(),
            sealed: VecDeque::new(),
            inflight: VecDeque::new(),
            round_robin: HashMap::new(),
            results: VecDeque::new(),
            first_seq: 0,
            next_seq: 0,
        }
    }

    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    pub fn config(&self) -> &ProducerConfig {
        &self.config
    }

    /// Records sent since the last flush.
    pub fn pending(&self) -> usize {
        self.results.len()
    }

    fn choose_partition(&mut self, record: &ProducerRecord<'_>) -> Result<u32> {
        let count = self.client.partition_count(record.topic)?;
        if count == 0 {
            return Err(Error::UnknownTopic {
                topic: record.topic.to_owned(),
            });
        }
        if let Some(p) = record.partition {
            if p >= count {
                return Err(Error::UnknownPartition {
                    topic: record.topic.to_owned(),
                    partition: p,
                    partitions: count,
                });
            }
            return Ok(p);
        }
        if let Some(key) = record.key {
            return Ok(partition_for_key(key, count));
        }
        let next = self.round_robin.entry(record.topic.to_owned()).or_insert(0);
        let p = *next % count;
        *next = next.wrapping_add(1);
        Ok(p)
    }

    /// Adds a record to its partition's batch. Errors here (unknown topic or
    /// partition, oversized record, a connection that cannot be re-made)
    /// mean the record was not accepted and has no handle.
    pub fn send(&mut self, record: &ProducerRecord<'_>) -> Result<RecordHandle> {
        let frame_max = client_frame_max(&self.client);
        let size = record.estimated_bytes() + FRAME_HEADER_BYTES;
        if size > frame_max {
            return Err(Error::RecordTooLarge {
                len_bytes: size,
                max_bytes: frame_max,
            });
        }
        let partition = self.choose_partition(record)?;
        let key = (record.topic.to_owned(), partition);
        let needs_seal = self.open.get(&key).is_some_and(|b| {
            !b.builder.is_empty() && b.builder.estimated_bytes() + size > self.config.batch_bytes
        });
        if needs_seal {
            self.seal(&key);
        }
        let seq = self.next_seq;
        let batch = self.open.entry(key).or_insert_with(|| OpenBatch {
            builder: BatchBuilder::new(),
            seqs: Vec::new(),
            opened: Instant::now(),
        });
        if batch.builder.is_empty() {
            batch.opened = Instant::now();
        }
        batch.builder.push(&RecordIn {
            timestamp_ms: record.timestamp_ms.unwrap_or_else(now_ms),
            key: record.key,
            value: record.value,
            headers: record.headers,
        });
        batch.seqs.push(seq);
        self.next_seq += 1;
        self.results.push_back(None);
        let index = (seq - self.first_seq) as usize;
        self.poll();
        Ok(RecordHandle {
            seq,
            index,
            partition,
        })
    }

    fn seal(&mut self, key: &(String, u32)) {
        if let Some(b) = self.open.get_mut(key) {
            if b.builder.is_empty() {
                return;
            }
            let frame = b.builder.finish();
            let seqs = std::mem::take(&mut b.seqs);
            self.sealed.push_back(SealedBatch {
                topic: key.0.clone(),
                partition: key.1,
                frame,
                seqs,
            });
        }
    }

    /// Seals batches older than `linger_ms` and sends sealed batches.
    pub fn poll(&mut self) {
        let linger = Duration::from_millis(self.config.linger_ms);
        let due: Vec<(String, u32)> = self
            .open
            .iter()
            .filter(|(_, b)| !b.builder.is_empty() && b.opened.elapsed() >= linger)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.seal(&k);
        }
        self.send_sealed(false);
    }

    /// Sends sealed batches, at most one per partition per request and
    /// never one for a partition whose previous batch is still in flight
    /// (so pipelining cannot reorder a partition). Batches held back that
    /// way wait for a later call, unless `drain` is set or more than
    /// `inflight_requests_max` of them pile up: then it waits for answers.
    fn send_sealed(&mut self, drain: bool) {
        while !self.sealed.is_empty() {
            while self.inflight.len() >= self.config.inflight_requests_max {
                self.await_oldest();
            }
            let mut taken: HashSet<(String, u32)> = self
                .inflight
                .iter()
                .flat_map(|r| r.batches.iter().map(|b| (b.0.clone(), b.1)))
                .collect();
            let mut batches = Vec::new();
            let mut held = VecDeque::new();
            let mut bytes = 0usize;
            while let Some(b) = self.sealed.pop_front() {
                let key = (b.topic.clone(), b.partition);
                let full =
                    !batches.is_empty() && bytes + b.frame.len() > self.config.request_bytes_max;
                if full || taken.contains(&key) {
                    held.push_back(b);
                    continue;
                }
                taken.insert(key);
                bytes += b.frame.len();
                batches.push(b);
            }
            self.sealed = held;
            if batches.is_empty() {
                if self.inflight.is_empty() {
                    unreachable!("with nothing in flight the first sealed batch is sendable");
                }
                if drain || self.sealed.len() > self.config.inflight_requests_max {
                    self.await_oldest();
                    continue;
                }
                return;
            }
            // One request per owning shard: each goes straight to its
            // shard when the server offers direct ports (`Client::route`).
            let mut by_route: Vec<(Route, Vec<SealedBatch>)> = Vec::new();
            for b in batches {
                let route = self.client.route(&b.topic, b.partition);
                match by_route.iter_mut().find(|(r, _)| *r == route) {
                    Some((_, v)) => v.push(b),
                    None => by_route.push((route, vec![b])),
                }
            }
            for (route, batches) in by_route {
                self.send_request(route, batches);
            }
        }
    }

    /// Sends one produce request of `batches` on `route`'s connection and
    /// tracks it (or settles its records when it cannot be sent).
    fn send_request(&mut self, route: Route, batches: Vec<SealedBatch>) {
        let body = RequestBody::Produce(ProduceRequest {
            acks: self.config.acks,
            timeout_ms: self.config.timeout_ms,
            batches: batches
                .iter()
                .map(|b| ProduceBatch {
                    topic: b.topic.clone(),
                    partition: b.partition,
                    batch_len: b.frame.len() as u32,
                })
                .collect(),
        });
        let trailer: Vec<&[u8]> = batches.iter().map(|b| b.frame.as_slice()).collect();
        let conn = self.client.connection_on(route);
        let sent = conn.send(&body, &trailer);
        let generation = conn.generation();
        let meta: Vec<(String, u32, Vec<u64>)> = batches
            .into_iter()
            .map(|b| (b.topic, b.partition, b.seqs))
            .collect();
        match sent {
            Ok(correlation_id) if self.config.acks != Acks::None => {
                self.inflight.push_back(InFlight {
                    route,
                    correlation_id,
                    generation,
                    batches: meta,
                });
            }
            Ok(_) => {
                for (topic, partition, seqs) in &meta {
                    self.fail(seqs, &Error::NotAcknowledged, topic, *partition);
                }
            }
            Err(e) => {
                // The request was not (completely) written: nothing of it
                // can have been appended, but say "undetermined" anyway
                // since a partial write is indistinguishable here.
                for (topic, partition, seqs) in &meta {
                    self.fail(seqs, &e, topic, *partition);
                }
            }
        }
    }

    fn set_result(&mut self, seq: u64, result: Result<u64>) {
        if seq < self.first_seq {
            return;
        }
        if let Some(slot) = self.results.get_mut((seq - self.first_seq) as usize) {
            *slot = Some(result);
        }
    }

    fn fail(&mut self, seqs: &[u64], e: &Error, topic: &str, partition: u32) {
        for &seq in seqs {
            self.set_result(seq, Err(copy_error(e, topic, partition)));
        }
    }

    /// Waits for the oldest in-flight request and records its outcome.
    fn await_oldest(&mut self) {
        let Some(req) = self.inflight.pop_front() else {
            return;
        };
        let conn = self.client.connection_on(req.route);
        let outcome = if conn.generation() != req.generation {
            Err(Error::Undetermined {
                topic: String::new(),
                partition: 0,
                reason: "connection was re-established with the request in flight".into(),
            })
        } else {
            let extra = u64::from(self.config.timeout_ms);
            conn.recv(req.correlation_id, extra)
        };
        let response = match outcome {
            Ok(r) => r,
            Err(e) => {
                for (topic, partition, seqs) in &req.batches {
                    self.fail(seqs, &e, topic, *partition);
                }
                return;
            }
        };
        let results = match response.body {
            ResponseBody::Produce(p) if p.results.len() == req.batches.len() => p.results,
            ResponseBody::Error(e) => {
                for (topic, partition, seqs) in &req.batches {
                    let err =
                        Error::server(e.error, &e.message, format!("produce {topic}/{partition}"));
                    self.fail(seqs, &err, topic, *partition);
                }
                return;
            }
            other => {
                let err = Error::UnexpectedResponse {
                    request: "produce",
                    got: format!("{other:?}"),
                };
                for (topic, partition, seqs) in &req.batches {
                    self.fail(seqs, &err, topic, *partition);
                }
                return;
            }
        };
        for ((topic, partition, seqs), r) in req.batches.iter().zip(results) {
            if r.error != ErrorCode::None {
                self.client.note_error(topic, r.error);
                let err =
                    Error::server(r.error, &r.message, format!("produce {topic}/{partition}"));
                self.fail(seqs, &err, topic, *partition);
                continue;
            }
            let expected_last = r.base_offset + seqs.len() as u64 - 1;
            if r.last_offset != expected_last {
                let err = Error::UnexpectedResponse {
                    request: "produce",
                    got: format!(
                        "{topic}/{partition}: base {} last {} for {} records",
                        r.base_offset,
                        r.last_offset,
                        seqs.len()
                    ),
                };
                self.fail(seqs, &err, topic, *partition);
                continue;
            }
            for (i, &seq) in seqs.iter().enumerate() {
                self.set_result(seq, Ok(r.base_offset + i as u64));
            }
        }
    }

    /// Sends every open batch, waits for every answer, and returns the
    /// result of each record sent since the previous flush, in send order.
    pub fn flush(&mut self) -> Vec<Result<u64>> {
        let keys: Vec<(String, u32)> = self.open.keys().cloned().collect();
        for k in keys {
            self.seal(&k);
        }
        self.send_sealed(true);
        while !self.inflight.is_empty() {
            self.await_oldest();
        }
        self.first_seq = self.next_seq;
        self.results
            .drain(..)
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(Error::Undetermined {
                        topic: String::new(),
                        partition: 0,
                        reason: "no outcome recorded".into(),
                    })
                })
            })
            .collect()
    }
}

/// The largest frame the server accepts (from the handshake).
fn client_frame_max(client: &Client) -> usize {
    match client.server_info().frame_bytes_max as usize {
        0 => strom_flatbuffers::FRAME_BYTES_MAX,
        n => n.min(strom_flatbuffers::FRAME_BYTES_MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (input, want) in cases {
            assert_eq!(
                murmur2(input),
                *want,
                "murmur2({:?})",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn key_partitioning_is_stable_and_in_range() {
        for n in 1..20 {
            for k in 0..100u32 {
                let key = k.to_le_bytes();
                let p = partition_for_key(&key, n);
                assert!(p < n);
                assert_eq!(p, partition_for_key(&key, n));
            }
        }
    }
}
