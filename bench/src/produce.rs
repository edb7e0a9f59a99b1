//! One producer connection: a writer thread that sends produce requests and
//! a reader thread that matches the answers to them (so writing never waits
//! for reading).
//!
//! * **Closed loop** (no `--rate`): up to `--inflight` requests in flight; the
//!   writer sends the next as soon as one is answered. Without keys, the
//!   frame of `--batch-records` records is built **once** and sent again and
//!   again (only the partition changes); with `stamp` (when consumers run)
//!   the send time is written into the first 8 bytes of every record's value
//!   and the payload and header CRCs are recomputed per send (the cost shows
//!   in `client_cpu_per_produced_gb`). With keys, frames are built per batch.
//!   Ack latency is per request: answer time minus send time.
//! * **Open loop** (`--rate`): record `n` of this producer is due at
//!   `t0 + n / rate`; the writer sleeps until the next due time (timer slack
//!   1 µs), collects every due record into the current partition's batch
//!   (at most `--batch-records`, held up to `--linger-ms`), stamps each
//!   record's *intended* time into its value, and sends. Ack latency is per
//!   record, from its intended time: a stall delays the schedule's records
//!   and they all count it (coordinated omission corrected, as wrk2).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use strom_client::partition_for_key;
use strom_flatbuffers::protocol::{
    Acks, ErrorCode, ProduceBatch, ProduceRequest, RequestBody, ResponseBody,
};
use strom_flatbuffers::{records, BatchBuilder, RecordIn, FRAME_HEADER_BYTES};

use crate::load::{clock_ns, pin_thread, record_all, Shared};
use crate::report::BenchError;
use crate::wire::{self, Reader, Writer};

/// How records get keys.
#[derive(Clone, Debug)]
pub enum KeyMode {
    None,
    /// 8 random bytes per record.
    Random,
    /// N distinct keys; `cdf` is the cumulative popularity (Zipf with the
    /// given exponent; uniform for 0).
    Distinct {
        n: usize,
        cdf: Arc<Vec<f64>>,
    },
}

impl KeyMode {
    pub fn parse(s: &str, skew: f64) -> Result<KeyMode, BenchError> {
        match s {
            "none" | "" => Ok(KeyMode::None),
            "random" => Ok(KeyMode::Random),
            n => {
                let n: usize = n.parse().map_err(|_| {
                    BenchError::Config(format!("--keys {s:?}: want none, random or a number"))
                })?;
                if n == 0 || !skew.is_finite() || skew < 0.0 {
                    return Err(BenchError::Config(
                        "--keys N needs N > 0 and --key-skew >= 0".into(),
                    ));
                }
                let w: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(skew)).collect();
                let total: f64 = w.iter().sum();
                let mut acc = 0.0;
                let cdf = w
                    .iter()
                    .map(|x| {
                        acc += x / total;
                        acc
                    })
                    .collect();
                Ok(KeyMode::Distinct {
                    n,
                    cdf: Arc::new(cdf),
                })
            }
        }
    }
}

pub struct ProducerSpec {
    pub id: usize,
    pub addr: String,
    pub topics: Arc<Vec<String>>,
    /// (topic index, partition) this producer writes when records have no key.
    pub partitions: Vec<(usize, u32)>,
    pub partitions_per_topic: u32,
    pub message_size: usize,
    pub batch_records: usize,
    pub linger_ns: u64,
    pub acks: Acks,
    pub inflight: usize,
    /// Open loop: this producer's records/s.
    pub rate: Option<f64>,
    /// Stop after this many records.
    pub budget: Option<u64>,
    pub stamp: bool,
    pub keys: KeyMode,
    pub writer_core: Option<usize>,
    pub reader_core: Option<usize>,
}

/// xorshift64*.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let b = self.next_u64().to_le_bytes();
            c.copy_from_slice(&b[..c.len()]);
        }
    }
}

/// Picks keys (and so partitions) for records.
struct Keys {
    mode: KeyMode,
    /// For N distinct keys: the key bytes and their partition.
    table: Vec<(Vec<u8>, u32)>,
    rng: Rng,
    random_key: [u8; 8],
}

impl Keys {
    fn new(mode: &KeyMode, partitions: u32, seed: u64) -> Keys {
        let table = match mode {
            KeyMode::Distinct { n, .. } => (0..*n)
                .map(|k| {
                    let key = format!("key-{k}").into_bytes();
                    let p = partition_for_key(&key, partitions);
                    (key, p)
                })
                .collect(),
            _ => Vec::new(),
        };
        Keys {
            mode: mode.clone(),
            table,
            rng: Rng::new(seed),
            random_key: [0; 8],
        }
    }

    fn keyed(&self) -> bool {
        !matches!(self.mode, KeyMode::None)
    }

    /// The next key and its partition (only when keyed).
    fn next(&mut self, partitions: u32) -> (&[u8], u32) {
        match &self.mode {
            KeyMode::Distinct { cdf, .. } => {
                let u = self.rng.unit();
                let i = cdf.partition_point(|&c| c < u).min(self.table.len() - 1);
                let (k, p) = &self.table[i];
                (k, *p)
            }
            _ => {
                self.random_key = self.rng.next_u64().to_le_bytes();
                let p = partition_for_key(&self.random_key, partitions);
                (&self.random_key, p)
            }
        }
    }
}

/// A frame built once whose records' send times can be re-stamped in place.
struct StampedFrame {
    frame: Vec<u8>,
    value_offsets: Vec<usize>,
    value_len: usize,
}

impl StampedFrame {
    fn build(records_n: usize, value: &[u8]) -> StampedFrame {
        let mut b = BatchBuilder::new();
        let ms = wall_ms();
        for _ in 0..records_n {
            b.push(&RecordIn {
                timestamp_ms: ms,
                key: None,
                value: Some(value),
                headers: &[],
            });
        }
        let frame = b.finish();
        let value_offsets = records(&frame)
            .expect("a frame we just built verifies")
            .filter_map(|r| {
                r.value
                    .map(|v| v.as_ptr() as usize - frame.as_ptr() as usize)
            })
            .collect();
        StampedFrame {
            frame,
            value_offsets,
            value_len: value.len(),
        }
    }

    /// Writes `ns` into every value, the wall time into the header, and
    /// recomputes both CRCs.
    fn restamp(&mut self, ns: u64) {
        let b = ns.to_le_bytes();
        for &o in self.value_offsets.iter().filter(|_| self.value_len >= 8) {
            self.frame[o..o + 8].copy_from_slice(&b);
        }
        let ms = wall_ms().to_le_bytes();
        // Header layout (docs/format.md): payload_crc @12, first_timestamp_ms
        // @32, max_timestamp_ms @40, header_crc @68 over [0, 68).
        self.frame[32..40].copy_from_slice(&ms);
        self.frame[40..48].copy_from_slice(&ms);
        let pcrc = crc32c::crc32c(&self.frame[FRAME_HEADER_BYTES..]);
        self.frame[12..16].copy_from_slice(&pcrc.to_le_bytes());
        let hcrc = crc32c::crc32c(&self.frame[..68]);
        self.frame[68..72].copy_from_slice(&hcrc.to_le_bytes());
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A finished open-loop batch: (topic index, partition), frame, intended times.
type Sealed = ((usize, u32), Vec<u8>, Vec<u64>);

/// What the reader needs to know about a request in flight.
struct Sent {
    id: u64,
    send_ns: u64,
    records: u64,
    payload: u64,
    wire: u64,
    /// Open loop: each record's intended send time.
    intended: Vec<u64>,
}

/// Requests in flight, for the closed loop's window.
struct Window {
    n: Mutex<usize>,
    cv: Condvar,
}

impl Window {
    fn acquire(&self, max: usize, shared: &Shared) -> bool {
        let mut g = self.n.lock().unwrap_or_else(|p| p.into_inner());
        while *g >= max {
            if shared.stopped() {
                return false;
            }
            g = self
                .cv
                .wait_timeout(g, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *g += 1;
        true
    }
    fn release(&self) {
        let mut g = self.n.lock().unwrap_or_else(|p| p.into_inner());
        *g = g.saturating_sub(1);
        self.cv.notify_one();
    }
}

/// Runs one producer connection until the run stops or its budget is spent.
pub fn run(spec: ProducerSpec, shared: Arc<Shared>) -> Result<(), BenchError> {
    let r = run_inner(&spec, &shared);
    shared.producers_running.fetch_sub(1, Ordering::SeqCst);
    if let Err(e) = &r {
        shared.fail(format!("producer {}: {e}", spec.id));
    }
    r
}

fn run_inner(spec: &ProducerSpec, shared: &Arc<Shared>) -> Result<(), BenchError> {
    pin_thread(spec.writer_core);
    let (writer, reader) = wire::connect(&spec.addr, &format!("producer-{}", spec.id))?;
    let window = Arc::new(Window {
        n: Mutex::new(0),
        cv: Condvar::new(),
    });
    let acks = spec.acks != Acks::None;
    let (tx, rx) = mpsc::channel::<Sent>();
    let reader_thread = if acks {
        let sh = shared.clone();
        let win = window.clone();
        let core = spec.reader_core;
        let open = spec.rate.is_some();
        Some(
            std::thread::Builder::new()
                .name(format!("producer-{}-acks", spec.id))
                .spawn(move || {
                    pin_thread(core);
                    let r = read_acks(reader, rx, &sh, &win, open);
                    if let Err(e) = &r {
                        sh.fail(format!("producer acks: {e}"));
                    }
                    r
                })
                .map_err(|e| BenchError::io("spawn thread", "producer-acks", e))?,
        )
    } else {
        drop(rx);
        drop(reader);
        None
    };
    let mut w = ProducerWriter {
        spec,
        shared,
        writer,
        tx: acks.then_some(tx),
        window: &window,
        rng: Rng::new(0xC0FFEE ^ spec.id as u64),
        keys: Keys::new(
            &spec.keys,
            spec.partitions_per_topic,
            0xBEEF ^ spec.id as u64,
        ),
        next_part: 0,
        sent_records: 0,
    };
    let result = match spec.rate {
        None => w.closed_loop(),
        Some(rate) => w.open_loop(rate),
    };
    let tx = w.tx.take();
    drop(tx);
    let acked = match reader_thread {
        Some(h) => h.join().map_err(|_| BenchError::ThreadPanic {
            name: "producer-acks",
        })?,
        None => Ok(()),
    };
    w.writer.shutdown();
    result.and(acked)
}

struct ProducerWriter<'a> {
    spec: &'a ProducerSpec,
    shared: &'a Arc<Shared>,
    writer: Writer,
    tx: Option<mpsc::Sender<Sent>>,
    window: &'a Window,
    rng: Rng,
    keys: Keys,
    next_part: usize,
    sent_records: u64,
}

impl ProducerWriter<'_> {
    fn budget_left(&self) -> Option<u64> {
        self.spec
            .budget
            .map(|b| b.saturating_sub(self.sent_records))
    }

    fn next_partition(&mut self) -> (usize, u32) {
        let p = self.spec.partitions[self.next_part % self.spec.partitions.len()];
        self.next_part += 1;
        p
    }

    /// Sends one request carrying `frames` (topic index, partition, frame).
    fn send(
        &mut self,
        frames: &[(usize, u32, &[u8])],
        records: u64,
        intended: Vec<u64>,
    ) -> Result<(), BenchError> {
        let body = RequestBody::Produce(ProduceRequest {
            acks: self.spec.acks,
            timeout_ms: 30_000,
            batches: frames
                .iter()
                .map(|(t, p, f)| ProduceBatch {
                    topic: self.spec.topics[*t].clone(),
                    partition: *p,
                    batch_len: f.len() as u32,
                })
                .collect(),
        });
        let trailer: Vec<&[u8]> = frames.iter().map(|f| f.2).collect();
        let wire: u64 = trailer.iter().map(|f| f.len() as u64).sum();
        let payload = records * self.spec.message_size as u64;
        let send_ns = clock_ns();
        // Register before writing so the reader can never see an unknown answer.
        let id = self.writer.next_id();
        if let Some(tx) = &self.tx {
            let _ = tx.send(Sent {
                id,
                send_ns,
                records,
                payload,
                wire,
                intended,
            });
        }
        let got = self.writer.send(&body, &trailer)?;
        debug_assert_eq!(got, id);
        self.sent_records += records;
        if self.tx.is_none() {
            // acks=none: counted once written.
            let s = self.shared;
            s.produced_records.fetch_add(records, Ordering::Relaxed);
            s.produced_bytes.fetch_add(payload, Ordering::Relaxed);
            s.produced_wire.fetch_add(wire, Ordering::Relaxed);
            s.produce_requests.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn closed_loop(&mut self) -> Result<(), BenchError> {
        let spec = self.spec;
        let mut value = vec![0u8; spec.message_size];
        self.rng.fill(&mut value);
        let acks = self.tx.is_some();
        let mut pre = (!self.keys.keyed()).then(|| StampedFrame::build(spec.batch_records, &value));
        let mut builders: HashMap<u32, (BatchBuilder, usize)> = HashMap::new();
        let topic = spec.id % spec.topics.len();
        while !self.shared.stopped() {
            let n = match self.budget_left() {
                Some(0) => break,
                Some(left) => left.min(spec.batch_records as u64) as usize,
                None => spec.batch_records,
            };
            if acks && !self.window.acquire(spec.inflight, self.shared) {
                break;
            }
            if let Some(pre) = pre.as_mut() {
                if n != spec.batch_records {
                    *pre = StampedFrame::build(n, &value);
                }
                if spec.stamp {
                    pre.restamp(clock_ns());
                }
                let (t, p) = self.next_partition();
                let frame = std::mem::take(&mut pre.frame);
                let r = self.send(&[(t, p, &frame)], n as u64, Vec::new());
                pre.frame = frame;
                r?;
            } else {
                // Keyed: fill per-partition batches until one is full.
                let ms = wall_ms();
                let full = loop {
                    if value.len() >= 8 {
                        value[..8].copy_from_slice(&clock_ns().to_le_bytes());
                    }
                    let (key, p) = self.keys.next(spec.partitions_per_topic);
                    let e = builders
                        .entry(p)
                        .or_insert_with(|| (BatchBuilder::new(), 0));
                    e.0.push(&RecordIn {
                        timestamp_ms: ms,
                        key: Some(key),
                        value: Some(&value),
                        headers: &[],
                    });
                    e.1 += 1;
                    if e.1 >= n {
                        break p;
                    }
                };
                let (mut b, count) = builders.remove(&full).expect("just filled");
                let frame = b.finish();
                builders.insert(full, (b, 0));
                self.send(&[(topic, full, &frame)], count as u64, Vec::new())?;
            }
        }
        Ok(())
    }

    fn open_loop(&mut self, rate: f64) -> Result<(), BenchError> {
        let spec = self.spec;
        let period = 1e9 / rate;
        let mut value = vec![0u8; spec.message_size];
        self.rng.fill(&mut value);
        let topic = spec.id % spec.topics.len();
        // Stagger producers so that 100 of them do not fire in lockstep.
        let t0 = clock_ns() + (self.rng.unit() * period) as u64;
        let mut scheduled: u64 = 0;
        // Open batches: partition -> (builder, intended times).
        let mut open: HashMap<(usize, u32), (BatchBuilder, Vec<u64>)> = HashMap::new();
        let mut current = self.next_partition();
        let budget = spec.budget.unwrap_or(u64::MAX);
        loop {
            let stopping = self.shared.stopped() || scheduled >= budget;
            let now = clock_ns();
            // Every record due by now joins a batch.
            let due = if now >= t0 {
                (((now - t0) as f64 / period) as u64 + 1).min(budget)
            } else {
                0
            };
            let ms = wall_ms();
            let mut sealed: Vec<Sealed> = Vec::new();
            while !stopping && scheduled < due {
                let intended = t0 + (scheduled as f64 * period) as u64;
                if value.len() >= 8 {
                    value[..8].copy_from_slice(&intended.to_le_bytes());
                }
                let (slot, key) = if self.keys.keyed() {
                    let (k, p) = self.keys.next(spec.partitions_per_topic);
                    ((topic, p), Some(k.to_vec()))
                } else {
                    (current, None)
                };
                let e = open
                    .entry(slot)
                    .or_insert_with(|| (BatchBuilder::new(), Vec::new()));
                e.0.push(&RecordIn {
                    timestamp_ms: ms,
                    key: key.as_deref(),
                    value: Some(&value),
                    headers: &[],
                });
                e.1.push(intended);
                scheduled += 1;
                if e.1.len() >= spec.batch_records {
                    let frame = e.0.finish();
                    let times = std::mem::take(&mut e.1);
                    sealed.push((slot, frame, times));
                    if !self.keys.keyed() {
                        current = self.next_partition();
                    }
                }
            }
            // Batches whose oldest record has waited `linger` go too.
            let now = clock_ns();
            let mut next_linger = u64::MAX;
            for (slot, (b, times)) in open.iter_mut() {
                if let Some(&first) = times.first() {
                    if stopping || first + spec.linger_ns <= now {
                        let frame = b.finish();
                        sealed.push((*slot, frame, std::mem::take(times)));
                    } else {
                        next_linger = next_linger.min(first + spec.linger_ns);
                    }
                }
            }
            if !sealed.is_empty() {
                if !self.keys.keyed() && sealed.iter().any(|s| s.0 == current) {
                    current = self.next_partition();
                }
                let records: u64 = sealed.iter().map(|s| s.2.len() as u64).sum();
                let intended: Vec<u64> = sealed.iter().flat_map(|s| s.2.iter().copied()).collect();
                let frames: Vec<(usize, u32, &[u8])> = sealed
                    .iter()
                    .map(|s| (s.0 .0, s.0 .1, s.1.as_slice()))
                    .collect();
                self.send(&frames, records, intended)?;
            }
            if stopping {
                break;
            }
            let next_due = t0 + (scheduled as f64 * period) as u64;
            // While a batch lingers, records that fall due join it on the
            // next wake-up with their own intended times, so waking for each
            // of them would only cost CPU: wake at the linger deadline or
            // when the batch would be full, whichever comes first.
            let wake = if next_linger == u64::MAX {
                next_due
            } else {
                let open_records = open.values().map(|(_, t)| t.len()).max().unwrap_or(0);
                let fill = spec.batch_records.saturating_sub(open_records).max(1) as f64;
                next_linger.min(next_due + ((fill - 1.0) * period) as u64)
            };
            let now = clock_ns();
            if wake > now {
                std::thread::sleep(Duration::from_nanos((wake - now).min(50_000_000)));
            }
        }
        Ok(())
    }
}

/// Matches answers to requests, records latencies and counts acked records.
fn read_acks(
    mut reader: Reader,
    rx: mpsc::Receiver<Sent>,
    shared: &Shared,
    window: &Window,
    open: bool,
) -> Result<(), BenchError> {
    let mut pending: HashMap<u64, Sent> = HashMap::new();
    let mut closed = false;
    let mut lats: Vec<u64> = Vec::with_capacity(1024);
    let addr = reader.addr().to_string();
    loop {
        // Learn about every request written so far.
        loop {
            match rx.try_recv() {
                Ok(s) => {
                    pending.insert(s.id, s);
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if pending.is_empty() {
            if closed {
                return Ok(());
            }
            match rx.recv() {
                Ok(s) => {
                    pending.insert(s.id, s);
                }
                Err(_) => return Ok(()),
            }
            continue;
        }
        let msg = reader.next_message()?;
        let now = clock_ns();
        let d = wire::decode(&addr, msg)?;
        let sent = match pending.remove(&d.correlation_id) {
            Some(s) => s,
            None => {
                // Written but not yet registered: wait for the registration.
                let mut found = None;
                while let Ok(s) = rx.recv() {
                    if s.id == d.correlation_id {
                        found = Some(s);
                        break;
                    }
                    pending.insert(s.id, s);
                }
                found.ok_or_else(|| {
                    BenchError::Config(format!("answer for unknown request {}", d.correlation_id))
                })?
            }
        };
        match d.body {
            ResponseBody::Produce(p) => {
                if let Some(bad) = p.results.iter().find(|r| r.error != ErrorCode::None) {
                    return Err(BenchError::Config(format!(
                        "produce to {}/{} failed: {:?} {}",
                        bad.topic, bad.partition, bad.error, bad.message
                    )));
                }
            }
            ResponseBody::Error(e) => {
                return Err(BenchError::Config(format!(
                    "produce failed: {:?} {}",
                    e.error, e.message
                )))
            }
            other => {
                return Err(BenchError::Config(format!(
                    "unexpected answer to produce: {other:?}"
                )))
            }
        }
        shared
            .produced_records
            .fetch_add(sent.records, Ordering::Relaxed);
        shared
            .produced_bytes
            .fetch_add(sent.payload, Ordering::Relaxed);
        shared.produced_wire.fetch_add(sent.wire, Ordering::Relaxed);
        shared.produce_requests.fetch_add(1, Ordering::Relaxed);
        lats.clear();
        if open {
            lats.extend(sent.intended.iter().map(|&t| now.saturating_sub(t)));
        } else {
            lats.push(now.saturating_sub(sent.send_ns));
        }
        record_all(&shared.ack_hist, &lats);
        if !open {
            window.release();
        }
    }
}
