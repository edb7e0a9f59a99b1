//! `kafka`: produce and fetch through the server's Kafka listener with the
//! `kafka-protocol` codecs, each judged against the native protocol measured
//! in the same run, against the same server, with the same sizes.
//!
//! Order of a run: loopback TCP baselines (128 KiB and 1 MiB writes, from
//! `baseline.rs`) before the server starts; then, for `produce`, the native
//! `produce` mode (`load::run_native`, the same code as `strom-bench
//! produce`) on a fresh topic followed by Kafka producers on another fresh
//! topic of the same shape; for `fetch`, the native `consume` mode (12 MiB
//! prefilled per partition, re-read from the tail cache) and then Kafka
//! consumers re-reading **the same prefilled topic**. Every Kafka figure is
//! printed as a ratio of the native one (`kafka/native`) and of loopback.
//!
//! The Kafka side:
//! * **Producer = one thread, one connection**, closed loop with
//!   `--inflight` Produce requests in flight (the Kafka listener answers a
//!   connection in request order, so answers are matched FIFO and must
//!   carry the expected correlation id). The record batch (v2, no
//!   compression, `--batch-records` records of `--message-size` bytes, no
//!   producer id) is encoded once per partition with `RecordBatchEncoder`,
//!   and so is the whole request; only the correlation id (bytes 8..12 of
//!   the framed request) is patched per send, as the native producer re-sends
//!   its pre-built frame.
//! * **Consumer = one thread, one connection**, one Fetch in flight, the
//!   response read into one reusable buffer; records are counted from the
//!   record batch headers (base offset, last offset delta) without decoding
//!   the records, as the native consumer reads its frame headers only.
//! * Versions: the highest the server advertises in `ApiVersions`, up to
//!   Produce v9 and Fetch v12 (the versions this code was written against;
//!   later ones name topics by id).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use clap::Parser;
use hdrhistogram::Histogram;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, FetchRequest, FetchResponse,
    ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use serde_json::{json, Value};
use strom_client::{Client, OffsetSpec};

use crate::baseline::{self, names, BaselineOpts};
use crate::load::{
    self, clock_ns, cpu_secs, loadavg, new_hist, pin_thread, AcksArg, LoadArgs, Mode, NativeRun,
};
use crate::produce::Rng;
use crate::report::{write_json_value, BenchError, Figure, LatencySummary, Report};
use crate::spawn::SpawnArgs;
use crate::wire::RESPONSE_TIMEOUT;

/// Highest Produce version this code speaks (v10+ adds fields it ignores;
/// v13 names topics by id).
const PRODUCE_VERSION_MAX: i16 = 9;
/// Highest Fetch version this code speaks (v13 names topics by id).
const FETCH_VERSION_MAX: i16 = 12;
/// Largest Kafka response the bench accepts (a fetch is bounded by
/// `--fetch-max-bytes`; this is the sanity limit on the size prefix).
const RESPONSE_BYTES_MAX: usize = 256 << 20;
/// Produce timeout written into every request (ms).
const PRODUCE_TIMEOUT_MS: i32 = 30_000;
/// Offset of the correlation id in a framed request (size, key, version).
const CORRELATION_ID_AT: usize = 8;
/// Record batch v2 header: base offset @0 (8), batch length @8 (4), magic
/// @16 (1), last offset delta @23 (4); batch length counts from byte 12.
const BATCH_LENGTH_AT: usize = 8;
const MAGIC_AT: usize = 16;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BATCH_OVERHEAD_BYTES: usize = 12;
const BATCH_HEADER_BYTES: usize = 61;
const MIB: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Produce,
    Fetch,
}

/// Flags of `kafka`.
#[derive(clap::Args, Clone, Debug, serde::Serialize)]
pub struct KafkaArgs {
    /// Native listener of a running server (host:port); needs --kafka-server.
    #[arg(long, conflicts_with = "spawn", requires = "kafka_server")]
    pub server: Option<String>,
    /// Kafka listener of --server (host:port).
    #[arg(long)]
    pub kafka_server: Option<String>,
    /// Pid of --server, to read its CPU time from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Spawning a local server (--spawn, --server-bin, --cores,
    /// --server-arg, --dir).
    #[command(flatten)]
    #[serde(flatten)]
    pub local: SpawnArgs,
    /// Parts to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Part::Produce, Part::Fetch])]
    pub only: Vec<Part>,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    pub message_size: usize,
    /// Records per batch (one batch per produce request).
    #[arg(long, default_value_t = 1000)]
    pub batch_records: usize,
    /// leader (Kafka acks=1) or durable (acks=-1); none is not measured
    /// (no answers to pace a closed loop).
    #[arg(long, value_enum, default_value_t = AcksArg::Leader)]
    pub acks: AcksArg,
    /// Producer connections (each side).
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consumer connections (each side).
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Partitions per topic.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Produce requests in flight per connection.
    #[arg(long, default_value_t = 8)]
    pub inflight: usize,
    /// Measured seconds of each of the four runs (after its warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds run before measuring (whole seconds).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// fetch: bytes written per partition before measuring (re-read over
    /// and over by both sides).
    #[arg(long, default_value_t = 12 * MIB)]
    pub prefill_bytes: u64,
    /// Most bytes one fetch response may carry.
    #[arg(long, default_value_t = 16 << 20)]
    pub fetch_max_bytes: u32,
    /// Most bytes one partition contributes to a fetch.
    #[arg(long, default_value_t = 4 << 20)]
    pub partition_max_bytes: u32,
    /// Long-poll wait of a fetch (ms).
    #[arg(long, default_value_t = 100)]
    pub fetch_wait_ms: u32,
    /// Cores for the load threads (round robin) [default: all].
    #[arg(long, value_delimiter = ',')]
    pub client_cores: Vec<usize>,
    /// Seconds of each loopback TCP baseline.
    #[arg(long, default_value_t = 2.0)]
    pub tcp_secs: f64,
    /// Skip the loopback baselines.
    #[arg(long)]
    pub no_baseline: bool,
    /// Write everything as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A name for the run (scenario files set it).
    #[arg(long)]
    pub name: Option<String>,
}

fn cfg(msg: impl Into<String>) -> BenchError {
    BenchError::Config(msg.into())
}

fn net(op: &'static str, addr: &str, source: io::Error) -> BenchError {
    BenchError::Net {
        op,
        addr: addr.to_string(),
        source,
    }
}

fn proto(op: &'static str, addr: &str, e: impl std::fmt::Display) -> BenchError {
    net(
        op,
        addr,
        io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    )
}

fn check_args(a: &KafkaArgs) -> Result<(), BenchError> {
    if a.server.is_none() && !a.local.spawn {
        return Err(cfg(
            "give --server HOST:PORT --kafka-server HOST:PORT, or --spawn",
        ));
    }
    if a.acks == AcksArg::None {
        return Err(cfg(
            "kafka: --acks none has no answers to pace a closed loop; use leader or durable",
        ));
    }
    if a.message_size == 0
        || a.batch_records == 0
        || a.producers == 0
        || a.consumers == 0
        || a.partitions == 0
        || a.inflight == 0
    {
        return Err(cfg("--message-size, --batch-records, --producers, --consumers, --partitions, --inflight must be positive"));
    }
    if !(a.duration > 0.0 && a.duration.is_finite()) {
        return Err(cfg("--duration must be positive"));
    }
    if a.only.is_empty() {
        return Err(cfg("--only needs produce and/or fetch"));
    }
    Ok(())
}

// ------------------------------------------------------------ the codec

/// One Kafka connection on a blocking socket: framed requests out, framed
/// responses into one reusable buffer.
struct KafkaConn {
    stream: TcpStream,
    addr: String,
    next_cid: i32,
    buf: BytesMut,
}

/// A whole framed request (size prefix, header, body).
fn encode_request<R: Encodable + HeaderVersion>(
    key: ApiKey,
    version: i16,
    cid: i32,
    body: &R,
) -> Result<Vec<u8>, String> {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(cid)
        .with_client_id(Some(StrBytes::from_static_str("strom-bench")));
    let mut out = vec![0u8; 4];
    header
        .encode(&mut out, R::header_version(version))
        .map_err(|e| e.to_string())?;
    body.encode(&mut out, version).map_err(|e| e.to_string())?;
    let len = u32::try_from(out.len() - 4).map_err(|_| "request over 4 GiB".to_string())?;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

impl KafkaConn {
    fn connect(addr: &str) -> Result<KafkaConn, BenchError> {
        let stream = TcpStream::connect(addr).map_err(|e| net("connect", addr, e))?;
        stream
            .set_nodelay(true)
            .map_err(|e| net("set_nodelay", addr, e))?;
        stream
            .set_read_timeout(Some(RESPONSE_TIMEOUT))
            .map_err(|e| net("set_read_timeout", addr, e))?;
        Ok(KafkaConn {
            stream,
            addr: addr.to_string(),
            next_cid: 1,
            buf: BytesMut::new(),
        })
    }

    fn take_cid(&mut self) -> i32 {
        let c = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1).max(1);
        c
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), BenchError> {
        self.stream
            .write_all(bytes)
            .map_err(|e| net("write", &self.addr, e))
    }

    /// Sends one request; returns its correlation id.
    fn send<R: Encodable + HeaderVersion>(
        &mut self,
        key: ApiKey,
        version: i16,
        body: &R,
    ) -> Result<i32, BenchError> {
        let cid = self.take_cid();
        let req =
            encode_request(key, version, cid, body).map_err(|e| proto("encode", &self.addr, e))?;
        self.write(&req)?;
        Ok(cid)
    }

    /// The next response (without its size prefix). The buffer is reclaimed
    /// once every `Bytes` cut from the previous response has been dropped.
    fn read_response(&mut self) -> Result<Bytes, BenchError> {
        let mut len = [0u8; 4];
        self.stream
            .read_exact(&mut len)
            .map_err(|e| net("read", &self.addr, e))?;
        let n = u32::from_be_bytes(len) as usize;
        if n > RESPONSE_BYTES_MAX {
            return Err(proto(
                "read",
                &self.addr,
                format!("response of {n} bytes (most {RESPONSE_BYTES_MAX})"),
            ));
        }
        self.buf.clear();
        self.buf.reserve(n);
        self.buf.resize(n, 0);
        self.stream
            .read_exact(&mut self.buf[..])
            .map_err(|e| net("read", &self.addr, e))?;
        Ok(self.buf.split().freeze())
    }

    /// Reads and decodes the next response, which must carry `cid`.
    fn recv<R: Decodable + HeaderVersion>(
        &mut self,
        version: i16,
        cid: i32,
    ) -> Result<R, BenchError> {
        let mut b = self.read_response()?;
        let h = ResponseHeader::decode(&mut b, R::header_version(version))
            .map_err(|e| proto("decode response header", &self.addr, e))?;
        if h.correlation_id != cid {
            return Err(proto(
                "read",
                &self.addr,
                format!(
                    "answer for request {} where {cid} was awaited",
                    h.correlation_id
                ),
            ));
        }
        R::decode(&mut b, version).map_err(|e| proto("decode response", &self.addr, e))
    }
}

/// The highest Produce and Fetch versions both sides speak.
fn negotiate(addr: &str) -> Result<(i16, i16), BenchError> {
    let mut c = KafkaConn::connect(addr)?;
    let cid = c.send(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default())?;
    let r: ApiVersionsResponse = c.recv(0, cid)?;
    if r.error_code != 0 {
        return Err(proto(
            "ApiVersions",
            addr,
            format!("error code {}", r.error_code),
        ));
    }
    let pick = |key: ApiKey, ours: i16| -> Result<i16, BenchError> {
        let v = r
            .api_keys
            .iter()
            .find(|k| k.api_key == key as i16)
            .ok_or_else(|| proto("ApiVersions", addr, format!("{key:?} not served")))?;
        let v_max = v.max_version.min(ours);
        if v_max < v.min_version {
            return Err(proto(
                "ApiVersions",
                addr,
                format!(
                    "{key:?} versions {}..={} exclude ours",
                    v.min_version, v.max_version
                ),
            ));
        }
        Ok(v_max)
    };
    Ok((
        pick(ApiKey::Produce, PRODUCE_VERSION_MAX)?,
        pick(ApiKey::Fetch, FETCH_VERSION_MAX)?,
    ))
}

/// A record batch v2 of `n` records, encoded once.
fn record_batch(n: usize, message_size: usize, seed: u64) -> Result<Bytes, String> {
    let mut value = vec![0u8; message_size];
    Rng::new(seed).fill(&mut value);
    let value = Bytes::from(value);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // No producer id: base sequence -1. The encoder keeps records in
            // one batch only while offset - sequence stays the same.
            sequence: i as i32 - 1,
            timestamp: ms,
            key: None,
            value: Some(value.clone()),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(buf.freeze())
}

/// Records past `position` in a blob of record batches, and the next
/// position; a partial batch at the end (cut by the size limits) is left.
fn count_batches(blob: &[u8], position: i64) -> Result<(u64, i64), String> {
    let (mut at, mut records, mut next) = (0usize, 0u64, position);
    while blob.len() - at >= BATCH_HEADER_BYTES {
        let b = &blob[at..];
        let base = i64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
        let len = i32::from_be_bytes(
            b[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4]
                .try_into()
                .expect("4 bytes"),
        );
        let delta = i32::from_be_bytes(
            b[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4]
                .try_into()
                .expect("4 bytes"),
        );
        if b[MAGIC_AT] != 2 {
            return Err(format!(
                "record batch at {base}: magic {}, want 2",
                b[MAGIC_AT]
            ));
        }
        if len < (BATCH_HEADER_BYTES - BATCH_OVERHEAD_BYTES) as i32 || delta < 0 {
            return Err(format!(
                "record batch at {base}: length {len}, last offset delta {delta}"
            ));
        }
        let total = BATCH_OVERHEAD_BYTES + len as usize;
        if total > b.len() {
            break;
        }
        let end = base + i64::from(delta) + 1;
        if end > next {
            records += (end - base.max(next)) as u64;
            next = end;
        }
        at += total;
    }
    Ok((records, next))
}

// ------------------------------------------------------------ load threads

/// Counters the Kafka load threads share with the measuring thread.
struct KShared {
    stop: AtomicBool,
    records: AtomicU64,
    bytes: AtomicU64,
    requests: AtomicU64,
    /// Produce ack latency, ns.
    ack: Mutex<Histogram<u64>>,
    error: Mutex<Option<String>>,
}

impl KShared {
    fn new() -> KShared {
        KShared {
            stop: AtomicBool::new(false),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            ack: Mutex::new(new_hist()),
            error: Mutex::new(None),
        }
    }

    fn fail(&self, e: impl std::fmt::Display) {
        let mut g = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(e.to_string());
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn add(&self, records: u64, bytes: u64) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

struct KProducer {
    addr: String,
    /// One framed request per partition, correlation id patched per send.
    requests: Vec<Vec<u8>>,
    version: i16,
    inflight: usize,
    records: u64,
    payload: u64,
    core: Option<usize>,
}

fn kafka_produce(mut p: KProducer, sh: &KShared) -> Result<(), BenchError> {
    pin_thread(p.core);
    let mut c = KafkaConn::connect(&p.addr)?;
    let mut pending: VecDeque<(i32, u64)> = VecDeque::with_capacity(p.inflight);
    let mut lats: Vec<u64> = Vec::with_capacity(64);
    let mut next = 0usize;
    while !sh.stopped() {
        while pending.len() < p.inflight && !sh.stopped() {
            let cid = c.take_cid();
            let n = p.requests.len();
            let req = &mut p.requests[next % n];
            next += 1;
            req[CORRELATION_ID_AT..CORRELATION_ID_AT + 4].copy_from_slice(&cid.to_be_bytes());
            pending.push_back((cid, clock_ns()));
            c.write(req)?;
        }
        let Some((cid, sent)) = pending.pop_front() else {
            break;
        };
        let r: ProduceResponse = c.recv(p.version, cid)?;
        let now = clock_ns();
        for t in &r.responses {
            for part in &t.partition_responses {
                if part.error_code != 0 {
                    return Err(proto(
                        "produce",
                        &p.addr,
                        format!(
                            "{}/{}: error code {} {:?}",
                            t.name.0.as_str(),
                            part.index,
                            part.error_code,
                            part.error_message.as_ref().map(|m| m.as_str())
                        ),
                    ));
                }
            }
        }
        sh.add(p.records, p.payload);
        lats.push(now.saturating_sub(sent).max(1));
        if lats.len() == lats.capacity() {
            load::record_all(&sh.ack, &lats);
            lats.clear();
        }
    }
    load::record_all(&sh.ack, &lats);
    Ok(())
}

/// One partition a Kafka consumer re-reads, `[start, end)`.
#[derive(Clone, Debug)]
struct KRead {
    topic: String,
    partition: i32,
    position: i64,
    start: i64,
    end: i64,
}

struct KConsumer {
    addr: String,
    reads: Vec<KRead>,
    version: i16,
    message_size: u64,
    max_bytes: i32,
    partition_max_bytes: i32,
    wait_ms: i32,
    core: Option<usize>,
}

fn kafka_fetch(mut k: KConsumer, sh: &KShared) -> Result<(), BenchError> {
    pin_thread(k.core);
    let mut c = KafkaConn::connect(&k.addr)?;
    while !sh.stopped() {
        let topics: Vec<FetchTopic> = k
            .reads
            .iter()
            .map(|r| {
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(r.topic.clone())))
                    .with_partitions(vec![FetchPartition::default()
                        .with_partition(r.partition)
                        .with_current_leader_epoch(-1)
                        .with_fetch_offset(r.position)
                        .with_last_fetched_epoch(-1)
                        .with_log_start_offset(-1)
                        .with_partition_max_bytes(k.partition_max_bytes)])
            })
            .collect();
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(k.wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(k.max_bytes)
            .with_isolation_level(0)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(topics);
        let cid = c.send(ApiKey::Fetch, k.version, &req)?;
        let r: FetchResponse = c.recv(k.version, cid)?;
        if r.error_code != 0 {
            return Err(proto(
                "fetch",
                &k.addr,
                format!("error code {}", r.error_code),
            ));
        }
        let mut records = 0u64;
        for t in &r.responses {
            for part in &t.partitions {
                let read = k
                    .reads
                    .iter_mut()
                    .find(|x| x.partition == part.partition_index && *t.topic.0 == *x.topic)
                    .ok_or_else(|| {
                        proto(
                            "fetch",
                            &k.addr,
                            format!("answer for an unasked partition {}", part.partition_index),
                        )
                    })?;
                if part.error_code != 0 {
                    return Err(proto(
                        "fetch",
                        &k.addr,
                        format!(
                            "{}/{} at {}: error code {}",
                            read.topic, read.partition, read.position, part.error_code
                        ),
                    ));
                }
                let blob = part.records.as_deref().unwrap_or(&[]);
                let (n, next) =
                    count_batches(blob, read.position).map_err(|e| proto("fetch", &k.addr, e))?;
                records += n;
                read.position = if next >= read.end { read.start } else { next };
            }
        }
        sh.add(records, records * k.message_size);
    }
    Ok(())
}

/// The body of one load thread.
type LoadThread = Box<dyn FnOnce(&KShared) -> Result<(), BenchError> + Send>;

/// What one Kafka run measured.
struct KRun {
    secs: f64,
    bytes: u64,
    records: u64,
    requests: u64,
    ack: Histogram<u64>,
    client_cpu: Option<f64>,
    server_cpu: Option<f64>,
}

/// Starts the load threads, sleeps through the warm-up and the measured
/// window (progress once a second), stops them and returns the counts.
fn measure(
    label: &str,
    a: &KafkaArgs,
    server_pid: Option<u32>,
    threads: Vec<LoadThread>,
) -> Result<KRun, BenchError> {
    let sh = Arc::new(KShared::new());
    let handles: Vec<_> = threads
        .into_iter()
        .map(|f| {
            let sh = sh.clone();
            std::thread::spawn(move || {
                let r = f(&sh);
                if let Err(e) = &r {
                    sh.fail(e);
                }
            })
        })
        .collect();
    let snap = |sh: &KShared| {
        (
            sh.bytes.load(Ordering::Relaxed),
            sh.records.load(Ordering::Relaxed),
            sh.requests.load(Ordering::Relaxed),
        )
    };
    let start = clock_ns();
    let warm = (a.warmup.max(0.0).round() as u64) * 1_000_000_000;
    let end = warm + (a.duration * 1e9) as u64;
    let mut from = None;
    if warm == 0 {
        from = Some((
            start,
            snap(&sh),
            cpu_secs(None),
            server_pid.and_then(|p| cpu_secs(Some(p))),
        ));
    }
    let mut prev = (start, 0u64);
    let mut k = 1u64;
    while !sh.stopped() {
        let tick = (start + k * 1_000_000_000).min(start + end);
        let now = clock_ns();
        if now < tick {
            std::thread::sleep(Duration::from_nanos((tick - now).min(50_000_000)));
            continue;
        }
        let (bytes, _, _) = snap(&sh);
        let dt = (now - prev.0) as f64 / 1e9;
        eprintln!(
            "[{:6.1}s{}] {label} {:>8.1} MB/s",
            (now - start) as f64 / 1e9,
            if now - start <= warm { " warm-up" } else { "" },
            (bytes - prev.1) as f64 / dt / 1e6
        );
        prev = (now, bytes);
        if from.is_none() && now - start >= warm {
            from = Some((
                now,
                snap(&sh),
                cpu_secs(None),
                server_pid.and_then(|p| cpu_secs(Some(p))),
            ));
            sh.ack.lock().unwrap_or_else(|p| p.into_inner()).reset();
        }
        if now - start >= end {
            break;
        }
        k += 1;
    }
    let now = clock_ns();
    let after = snap(&sh);
    let (cc1, sc1) = (cpu_secs(None), server_pid.and_then(|p| cpu_secs(Some(p))));
    sh.stop.store(true, Ordering::SeqCst);
    for h in handles {
        h.join()
            .map_err(|_| BenchError::ThreadPanic { name: "kafka load" })?;
    }
    if let Some(e) = sh.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(cfg(format!("{label}: {e}")));
    }
    let (t0, c0, cc0, sc0) =
        from.ok_or_else(|| cfg(format!("{label}: stopped before measuring")))?;
    let secs = (now - t0).max(1) as f64 / 1e9;
    let per = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some((b - a) / secs),
        _ => None,
    };
    let ack = sh.ack.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(KRun {
        secs,
        bytes: after.0 - c0.0,
        records: after.1 - c0.1,
        requests: after.2 - c0.2,
        ack,
        client_cpu: per(cc0, cc1),
        server_cpu: per(sc0, sc1),
    })
}

// ------------------------------------------------------------ native side

#[derive(Parser)]
struct NativeCli {
    #[command(flatten)]
    load: LoadArgs,
}

/// The native `produce` / `consume` flags matching this run's.
fn native_args(a: &KafkaArgs, addr: &str, mode: Mode) -> Result<LoadArgs, BenchError> {
    let acks = match a.acks {
        AcksArg::Durable => "durable",
        _ => "leader",
    };
    let mut v: Vec<String> = vec!["native".into(), "--server".into(), addr.into()];
    let mut kv = |k: &str, val: String| {
        v.push(k.into());
        v.push(val);
    };
    kv("--message-size", a.message_size.to_string());
    kv("--batch-records", a.batch_records.to_string());
    kv("--acks", acks.into());
    kv("--partitions", a.partitions.to_string());
    kv("--inflight", a.inflight.to_string());
    kv("--duration", a.duration.to_string());
    kv("--warmup", a.warmup.to_string());
    kv("--fetch-max-bytes", a.fetch_max_bytes.to_string());
    kv("--partition-max-bytes", a.partition_max_bytes.to_string());
    kv("--fetch-wait-ms", a.fetch_wait_ms.to_string());
    if mode == Mode::Produce {
        kv("--producers", a.producers.to_string());
    } else {
        kv("--consumers", a.consumers.to_string());
        kv("--prefill-bytes", a.prefill_bytes.to_string());
        // Kafka re-reads the same prefilled topic afterwards.
        v.push("--keep-topics".into());
    }
    if !a.client_cores.is_empty() {
        let cores: Vec<String> = a.client_cores.iter().map(|c| c.to_string()).collect();
        v.push("--client-cores".into());
        v.push(cores.join(","));
    }
    v.push("--no-baseline".into());
    NativeCli::try_parse_from(v)
        .map(|c| c.load)
        .map_err(|e| cfg(format!("native flags: {e}")))
}

fn client_core(a: &KafkaArgs, k: usize) -> Option<usize> {
    let cores: Vec<usize> = if a.client_cores.is_empty() {
        core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect()
    } else {
        a.client_cores.clone()
    };
    (!cores.is_empty()).then(|| cores[k % cores.len()])
}

/// Partitions of producer (or consumer) `i` of `n`, as the native modes
/// assign them: i, i+n, ...; shared when there are fewer than `n`.
fn partitions_of(i: usize, n: usize, partitions: u32) -> Vec<u32> {
    let all: Vec<u32> = (0..partitions).collect();
    if all.len() >= n {
        all.into_iter().skip(i).step_by(n).collect()
    } else {
        vec![all[i % all.len()]]
    }
}

fn fresh_topic(addr: &str, a: &KafkaArgs, what: &str) -> Result<String, BenchError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let name = format!("strom-bench-kafka-{what}-{}-{stamp}", std::process::id());
    let mut c = Client::connect(addr).map_err(|e| cfg(format!("connect {addr}: {e}")))?;
    c.create_topic(&name, a.partitions, &[])
        .map_err(|e| cfg(format!("create topic {name}: {e}")))?;
    Ok(name)
}

fn delete_topics(addr: &str, topics: &[String]) {
    if let Ok(mut c) = Client::connect(addr) {
        for t in topics {
            let _ = c.delete_topic(t);
        }
    }
}

struct PartResult {
    native: NativeRun,
    kafka: KRun,
    version: i16,
}

fn run_produce(
    a: &KafkaArgs,
    addr: &str,
    kafka_addr: &str,
    pid: Option<u32>,
    version: i16,
) -> Result<PartResult, BenchError> {
    eprintln!("produce: native protocol");
    let native = load::run_native(
        addr,
        Mode::Produce,
        &native_args(a, addr, Mode::Produce)?,
        pid,
    )?;
    eprintln!("produce: Kafka protocol (Produce v{version})");
    let topic = fresh_topic(addr, a, "produce")?;
    let batch = record_batch(a.batch_records, a.message_size, 0xCAFE)
        .map_err(|e| cfg(format!("record batch: {e}")))?;
    let acks: i16 = if a.acks == AcksArg::Durable { -1 } else { 1 };
    let mut threads: Vec<LoadThread> = Vec::new();
    for i in 0..a.producers {
        let requests = partitions_of(i, a.producers, a.partitions)
            .into_iter()
            .map(|p| {
                let body = ProduceRequest::default()
                    .with_acks(acks)
                    .with_timeout_ms(PRODUCE_TIMEOUT_MS)
                    .with_topic_data(vec![TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_string(topic.clone())))
                        .with_partition_data(vec![PartitionProduceData::default()
                            .with_index(p as i32)
                            .with_records(Some(batch.clone()))])]);
                encode_request(ApiKey::Produce, version, 0, &body)
                    .map_err(|e| cfg(format!("encode produce: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let spec = KProducer {
            addr: kafka_addr.to_string(),
            requests,
            version,
            inflight: a.inflight,
            records: a.batch_records as u64,
            payload: (a.batch_records * a.message_size) as u64,
            // Native producers use cores 2i (writer) and 2i+1 (reader).
            core: client_core(a, 2 * i),
        };
        threads.push(Box::new(move |sh: &KShared| kafka_produce(spec, sh)));
    }
    let kafka = measure("kafka produce", a, pid, threads);
    delete_topics(addr, &[topic]);
    Ok(PartResult {
        native,
        kafka: kafka?,
        version,
    })
}

fn run_fetch(
    a: &KafkaArgs,
    addr: &str,
    kafka_addr: &str,
    pid: Option<u32>,
    version: i16,
) -> Result<PartResult, BenchError> {
    eprintln!("fetch: native protocol");
    let native = load::run_native(
        addr,
        Mode::Consume,
        &native_args(a, addr, Mode::Consume)?,
        pid,
    )?;
    let topics = native.topics.clone();
    let result = (|| {
        let mut c = Client::connect(addr).map_err(|e| cfg(format!("connect {addr}: {e}")))?;
        let mut reads = Vec::new();
        for p in 0..a.partitions {
            let name = &topics[0];
            let mut off = |spec| -> Result<i64, BenchError> {
                Ok(c.list_offset(name, p, spec)
                    .map_err(|e| cfg(format!("list offsets {name}/{p}: {e}")))?
                    .unwrap_or(0) as i64)
            };
            let start = off(OffsetSpec::Earliest)?;
            let end = off(OffsetSpec::Latest)?;
            if end <= start {
                return Err(cfg(format!("{name}/{p}: nothing prefilled")));
            }
            reads.push(KRead {
                topic: name.clone(),
                partition: p as i32,
                position: start,
                start,
                end,
            });
        }
        eprintln!("fetch: Kafka protocol (Fetch v{version}), same topic");
        let mut threads: Vec<LoadThread> = Vec::new();
        for i in 0..a.consumers {
            let mine: Vec<KRead> = partitions_of(i, a.consumers, a.partitions)
                .into_iter()
                .map(|p| reads[p as usize].clone())
                .collect();
            let spec = KConsumer {
                addr: kafka_addr.to_string(),
                reads: mine,
                version,
                message_size: a.message_size as u64,
                max_bytes: i32::try_from(a.fetch_max_bytes).unwrap_or(i32::MAX),
                partition_max_bytes: i32::try_from(a.partition_max_bytes).unwrap_or(i32::MAX),
                wait_ms: i32::try_from(a.fetch_wait_ms).unwrap_or(i32::MAX),
                // As the native consumers (after no producers): core i+1.
                core: client_core(a, i + 1),
            };
            threads.push(Box::new(move |sh: &KShared| kafka_fetch(spec, sh)));
        }
        measure("kafka fetch", a, pid, threads)
    })();
    delete_topics(addr, &topics);
    Ok(PartResult {
        native,
        kafka: result?,
        version,
    })
}

// ------------------------------------------------------------- report

fn us(h: &Histogram<u64>) -> LatencySummary {
    LatencySummary::from_histogram(h, "ns").scaled(1e-3, "us")
}

fn add_part(r: &mut Report, side: &str, p: &PartResult, tcp_mb: Option<f64>) {
    let with_tcp = |f: Figure| match tcp_mb {
        Some(b) => f.with_baseline(names::TCP_128K, b),
        None => f,
    };
    let nat = p.native.payload_bytes as f64 / p.native.measured_secs / 1e6;
    let kaf = p.kafka.bytes as f64 / p.kafka.secs / 1e6;
    r.add_figure(with_tcp(Figure::new(
        format!("native_{side}_throughput"),
        nat,
        "MB/s",
    )));
    r.add_figure(with_tcp(Figure::new(
        format!("kafka_{side}_throughput"),
        kaf,
        "MB/s",
    )));
    r.add_figure(
        Figure::new(format!("kafka_{side}_vs_native"), kaf, "MB/s")
            .with_baseline(format!("native_{side}_throughput"), nat),
    );
    r.add_figure(Figure::new(
        format!("native_{side}_records"),
        p.native.records as f64 / p.native.measured_secs,
        "rec/s",
    ));
    r.add_figure(Figure::new(
        format!("kafka_{side}_records"),
        p.kafka.records as f64 / p.kafka.secs,
        "rec/s",
    ));
    r.add_figure(Figure::new(
        format!("kafka_{side}_api_version"),
        f64::from(p.version),
        "v",
    ));
    // Server CPU per GB of record values: where the Kafka edge's extra work shows.
    let per_gb =
        |cores: Option<f64>, mbps: f64| cores.filter(|_| mbps > 0.0).map(|c| c / (mbps / 1e3));
    if let (Some(k), n) = (
        per_gb(p.kafka.server_cpu, kaf),
        per_gb(p.native.server_cpu, nat),
    ) {
        let f = Figure::new(format!("kafka_{side}_server_cpu_per_gb"), k, "core-s/GB");
        r.add_figure(match n {
            Some(n) => f.with_baseline(format!("native_{side}_server_cpu_per_gb"), n),
            None => f,
        });
    }
    if let Some(c) = p.kafka.client_cpu {
        r.add_figure(Figure::new(format!("kafka_{side}_client_cpu"), c, "cores"));
    }
    if !p.native.ack.is_empty() {
        r.add_latency(format!("native_{side}_ack_latency"), us(&p.native.ack));
    }
    if !p.kafka.ack.is_empty() {
        let k = us(&p.kafka.ack);
        if !p.native.ack.is_empty() {
            r.add_figure(
                Figure::new(format!("kafka_{side}_ack_latency_p99"), k.p99, "us").with_baseline(
                    format!("native_{side}_ack_latency_p99"),
                    us(&p.native.ack).p99,
                ),
            );
        }
        r.add_latency(format!("kafka_{side}_ack_latency"), k);
    }
}

fn part_json(p: &PartResult) -> Value {
    json!({
        "api_version": p.version,
        "native": {
            "measured_secs": p.native.measured_secs,
            "payload_bytes": p.native.payload_bytes,
            "records": p.native.records,
            "requests": p.native.requests,
            "client_cores": p.native.client_cpu,
            "server_cores": p.native.server_cpu,
        },
        "kafka": {
            "measured_secs": p.kafka.secs,
            "payload_bytes": p.kafka.bytes,
            "records": p.kafka.records,
            "requests": p.kafka.requests,
            "client_cores": p.kafka.client_cpu,
            "server_cores": p.kafka.server_cpu,
        },
    })
}

// ------------------------------------------------------------------ main

/// Entry point of `kafka`.
pub fn main(a: &KafkaArgs) -> Result<(), BenchError> {
    check_args(a)?;
    let load0 = loadavg();
    let (tcp128, tcp1m) = if a.no_baseline {
        (None, None)
    } else {
        let opts = BaselineOpts {
            dir: a.local.dir.clone(),
            tcp_secs: a.tcp_secs,
            cores: a.client_cores.clone(),
            ..BaselineOpts::default()
        };
        eprintln!(
            "baseline: loopback TCP, 128 KiB and 1 MiB writes, {} s each",
            a.tcp_secs
        );
        (
            Some(baseline::run_tcp_loopback(&opts, 128 * 1024)?.gbps() * 1e3),
            Some(baseline::run_tcp_loopback(&opts, 1 << 20)?.gbps() * 1e3),
        )
    };
    let server = if a.local.spawn {
        let s = a.local.start(true)?;
        eprintln!(
            "spawned {} (pid {}) native {} kafka {}",
            s.binary.display(),
            s.pid(),
            s.addr,
            s.kafka_addr.as_deref().unwrap_or("?")
        );
        Some(s)
    } else {
        None
    };
    let (addr, kafka_addr, pid) = match (&server, &a.server, &a.kafka_server) {
        (Some(s), _, _) => (
            s.addr.clone(),
            s.kafka_addr.clone().unwrap_or_default(),
            Some(s.pid()),
        ),
        (None, Some(n), Some(k)) => (n.clone(), k.clone(), a.server_pid),
        _ => return Err(cfg("give --server and --kafka-server, or --spawn")),
    };
    let (produce_v, fetch_v) = negotiate(&kafka_addr)?;
    let produce = if a.only.contains(&Part::Produce) {
        Some(run_produce(a, &addr, &kafka_addr, pid, produce_v)?)
    } else {
        None
    };
    let fetch = if a.only.contains(&Part::Fetch) {
        Some(run_fetch(a, &addr, &kafka_addr, pid, fetch_v)?)
    } else {
        None
    };
    drop(server);

    let mut r = Report::new("kafka", serde_json::to_value(a).unwrap_or(Value::Null));
    if let Some(l) = load0 {
        r.add_figure(Figure::new("machine_loadavg_1m_before", l, "threads"));
    }
    if let Some(t) = tcp128 {
        r.add_figure(Figure::new(names::TCP_128K, t, "MB/s"));
    }
    if let Some(t) = tcp1m {
        r.add_figure(Figure::new(names::TCP_1M, t, "MB/s"));
    }
    if let Some(p) = &produce {
        add_part(&mut r, "produce", p, tcp128);
    }
    if let Some(p) = &fetch {
        add_part(&mut r, "fetch", p, tcp128);
    }
    r.print();
    if let Some(path) = &a.json {
        let mut doc = r.to_json();
        if let Some(o) = doc.as_object_mut() {
            o.insert("name".into(), json!(a.name));
            o.insert(
                "baselines".into(),
                json!({ "raw_tcp_loopback_128k_mbps": tcp128, "raw_tcp_loopback_1m_mbps": tcp1m }),
            );
            o.insert(
                "produce".into(),
                produce.as_ref().map_or(Value::Null, part_json),
            );
            o.insert(
                "fetch".into(),
                fetch.as_ref().map_or(Value::Null, part_json),
            );
        }
        write_json_value(path, &doc)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn batch_is_counted_from_its_header() {
        let b = record_batch(5, 10, 1).unwrap();
        let set = RecordBatchDecoder::decode(&mut b.clone()).unwrap();
        assert_eq!(set.records.len(), 5);
        // Two batches back to back, rebased as a log would.
        let mut two = b.to_vec();
        let mut second = b.to_vec();
        second[..8].copy_from_slice(&5i64.to_be_bytes());
        two.extend_from_slice(&second);
        assert_eq!(count_batches(&two, 0).unwrap(), (10, 10));
        assert_eq!(count_batches(&two, 3).unwrap(), (7, 10));
        // A batch cut by the size limit is left for the next fetch.
        assert_eq!(count_batches(&two[..two.len() - 1], 0).unwrap(), (5, 5));
        assert!(count_batches(&[0u8; 70], 0).is_err());
    }

    #[test]
    fn correlation_id_is_at_byte_8() {
        let body = ProduceRequest::default().with_acks(1);
        let req = encode_request(ApiKey::Produce, 9, 0x01020304, &body).unwrap();
        assert_eq!(
            &req[CORRELATION_ID_AT..CORRELATION_ID_AT + 4],
            &[1, 2, 3, 4]
        );
        assert_eq!(
            u32::from_be_bytes(req[..4].try_into().unwrap()) as usize,
            req.len() - 4
        );
    }

    #[test]
    fn native_flags_parse() {
        let a = KafkaArgs {
            server: None,
            kafka_server: None,
            server_pid: None,
            local: SpawnArgs {
                spawn: true,
                server_bin: None,
                cores: None,
                server_arg: Vec::new(),
                dir: PathBuf::from("."),
            },
            only: vec![Part::Produce],
            message_size: 100,
            batch_records: 10,
            acks: AcksArg::Durable,
            producers: 2,
            consumers: 1,
            partitions: 3,
            inflight: 4,
            duration: 1.5,
            warmup: 0.0,
            prefill_bytes: MIB,
            fetch_max_bytes: 1 << 20,
            partition_max_bytes: 1 << 20,
            fetch_wait_ms: 10,
            client_cores: vec![0, 1],
            tcp_secs: 1.0,
            no_baseline: true,
            json: None,
            name: None,
        };
        let l = native_args(&a, "127.0.0.1:1", Mode::Produce).unwrap();
        assert_eq!(l.message_size, 100);
        assert_eq!(l.acks, AcksArg::Durable);
        assert_eq!(l.producers, Some(2));
        assert_eq!(l.partitions, 3);
        assert!(l.no_baseline);
        let c = native_args(&a, "127.0.0.1:1", Mode::Consume).unwrap();
        assert!(c.keep_topics);
        assert_eq!(c.prefill_bytes, Some(MIB));
        assert_eq!(partitions_of(1, 2, 3), vec![1]);
        assert_eq!(partitions_of(0, 2, 3), vec![0, 2]);
        assert_eq!(partitions_of(2, 3, 1), vec![0]);
    }
}
