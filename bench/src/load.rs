//! Shared machinery of the network modes (`produce`, `consume`, `e2e`): the
//! flags, the same-run baselines, the server (spawned or given), topic
//! set-up, the load threads, the once-a-second monitor (progress line,
//! per-second series, interval p99), and the report (summary table, JSON,
//! plot).
//!
//! Time is `CLOCK_MONOTONIC` in nanoseconds everywhere ([`clock_ns`]): it is
//! system-wide on Linux, so a timestamp written into a record by a producer
//! can be compared with the clock of a consumer in another process on the
//! same machine.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use strom_client::{Client, OffsetSpec};
use strom_flatbuffers::protocol::Acks;

use crate::baseline::{self, names, BaselineOpts};
use crate::consume::{self, ConsumerSpec, PartitionRead};
use crate::produce::{self, KeyMode, ProducerSpec};
use crate::report::{fmt_value, BenchError, Figure, LatencySummary, MachineInfo, Report};
use crate::spawn::SpawnArgs;

const MIB: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AcksArg {
    None,
    Leader,
    Durable,
}

impl AcksArg {
    pub fn wire(self) -> Acks {
        match self {
            AcksArg::None => Acks::None,
            AcksArg::Leader => Acks::Leader,
            AcksArg::Durable => Acks::Durable,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartArg {
    Earliest,
    Latest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Produce,
    Consume,
    E2e,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Produce => "produce",
            Mode::Consume => "consume",
            Mode::E2e => "e2e",
        }
    }
}

/// Flags of `produce`, `consume` and `e2e` (scenario files use the same
/// names with underscores).
#[derive(clap::Args, Clone, Debug, serde::Serialize)]
pub struct LoadArgs {
    /// Server to benchmark (host:port of the native listener).
    #[arg(long, conflicts_with = "spawn")]
    pub server: Option<String>,
    /// A cluster to benchmark: the native addresses of its nodes, comma
    /// separated. The topic is created through the controller and the load
    /// goes to its partition's leader (one topic of one partition).
    #[arg(long, conflicts_with_all = ["spawn", "server"], value_delimiter = ',')]
    pub cluster: Vec<String>,
    /// Spawning a local server (--spawn, --server-bin, --cores,
    /// --server-arg, --dir).
    #[command(flatten)]
    #[serde(flatten)]
    pub local: SpawnArgs,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    pub message_size: usize,
    /// Most records per batch (frame).
    #[arg(long, default_value_t = 1000)]
    pub batch_records: usize,
    /// Open loop: how long a batch may wait for more records (ms); 0 sends
    /// whatever is due at once.
    #[arg(long, default_value_t = 0.0)]
    pub linger_ms: f64,
    /// Acknowledgement level of produce requests.
    #[arg(long, value_enum, default_value_t = AcksArg::Leader)]
    pub acks: AcksArg,
    /// Producer connections [default: 1; 0 for consume].
    #[arg(long)]
    pub producers: Option<usize>,
    /// Consumer connections [default: 0 for produce, 1 otherwise].
    #[arg(long)]
    pub consumers: Option<usize>,
    /// Partitions per topic.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Topics.
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Record keys: none, random, or a number N of distinct keys.
    #[arg(long, default_value = "none")]
    pub keys: String,
    /// Zipf exponent of the key popularity with N distinct keys (0 = uniform).
    #[arg(long, default_value_t = 0.0)]
    pub key_skew: f64,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Records to produce in total instead of a duration.
    #[arg(long)]
    pub records: Option<u64>,
    /// Seconds run before measuring (whole seconds).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Open loop: total records/s over all producers, on a fixed schedule;
    /// latency counts from each record's intended send time. Without it,
    /// closed loop (as fast as acks allow).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Closed loop: produce requests in flight per connection.
    #[arg(long, default_value_t = 8)]
    pub inflight: usize,
    /// Cores for the load threads (round robin) [default: all].
    #[arg(long, value_delimiter = ',')]
    pub client_cores: Vec<usize>,
    /// Where consumers start [default: earliest for consume, latest for e2e].
    #[arg(long, value_enum)]
    pub consume_from: Option<StartArg>,
    /// consume: bytes written per partition before measuring [default:
    /// 12 MiB, inside the server's 16 MiB tail cache].
    #[arg(long)]
    pub prefill_bytes: Option<u64>,
    /// consume: re-read the prefilled range over and over [default: true
    /// when no producers run during the measurement].
    #[arg(long)]
    pub wrap: Option<bool>,
    /// Most bytes one fetch response may carry.
    #[arg(long, default_value_t = 16 << 20)]
    pub fetch_max_bytes: u32,
    /// Most bytes one partition contributes to a fetch.
    #[arg(long, default_value_t = 4 << 20)]
    pub partition_max_bytes: u32,
    /// Long-poll wait of a fetch (ms).
    #[arg(long, default_value_t = 100)]
    pub fetch_wait_ms: u32,
    /// Consumers verify every frame's checksums and FlatBuffers (as
    /// strom-client does); e2e always reads the records.
    #[arg(long)]
    pub verify: bool,
    /// Closed loop: re-stamp the send time into every record of a pre-built
    /// frame (and recompute its CRC) per send [default: when consumers run].
    #[arg(long)]
    pub stamp: Option<bool>,
    /// Topic configuration entries key=value (repeatable).
    #[arg(long)]
    pub topic_config: Vec<String>,
    /// Keep the topics afterwards (they are deleted by default).
    #[arg(long)]
    pub keep_topics: bool,
    /// Seconds of each loopback TCP baseline.
    #[arg(long, default_value_t = 2.0)]
    pub tcp_secs: f64,
    /// 4 KiB write+fdatasync pairs of the sync baseline (durable acks only).
    #[arg(long, default_value_t = 1000)]
    pub sync_ops: u64,
    /// Skip the baselines (figures then have no ratios).
    #[arg(long)]
    pub no_baseline: bool,
    /// Write everything as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw the latency percentile curve and throughput over time (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// A name for the run (scenario files set it).
    #[arg(long)]
    pub name: Option<String>,
}

/// The flags after mode defaults and checks.
#[derive(Clone, Debug)]
pub struct Plan {
    pub mode: Mode,
    pub producers: usize,
    pub consumers: usize,
    pub keys: KeyMode,
    pub consume_from: StartArg,
    pub prefill_bytes: u64,
    pub wrap: bool,
    pub stamp: bool,
    pub client_cores: Vec<usize>,
    pub warmup_secs: u64,
}

fn cfg(msg: impl Into<String>) -> BenchError {
    BenchError::Config(msg.into())
}

impl Plan {
    fn new(mode: Mode, a: &LoadArgs) -> Result<Plan, BenchError> {
        let producers = a.producers.unwrap_or(match mode {
            Mode::Consume => 0,
            _ => 1,
        });
        let consumers = a.consumers.unwrap_or(match mode {
            Mode::Produce => 0,
            _ => 1,
        });
        if producers == 0 && consumers == 0 {
            return Err(cfg("nothing to do: no producers and no consumers"));
        }
        if mode == Mode::E2e && (producers == 0 || consumers == 0) {
            return Err(cfg("e2e needs producers and consumers"));
        }
        if a.message_size < 8 && (consumers > 0 || mode == Mode::E2e) {
            return Err(cfg(
                "--message-size must be at least 8 (the send time is stamped in the value)",
            ));
        }
        if a.batch_records == 0 || a.partitions == 0 || a.topics == 0 || a.inflight == 0 {
            return Err(cfg(
                "--batch-records, --partitions, --topics, --inflight must be positive",
            ));
        }
        if a.duration.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) && a.records.is_none()
        {
            return Err(cfg("--duration must be positive"));
        }
        if let Some(r) = a.rate {
            if !(r > 0.0 && r.is_finite()) {
                return Err(cfg("--rate must be positive"));
            }
        }
        let keys = KeyMode::parse(&a.keys, a.key_skew)?;
        let client_cores = if a.client_cores.is_empty() {
            core_affinity::get_core_ids()
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.id)
                .collect()
        } else {
            a.client_cores.clone()
        };
        let consume_from = a.consume_from.unwrap_or(match mode {
            Mode::Consume => StartArg::Earliest,
            _ => StartArg::Latest,
        });
        let prefill_bytes = a.prefill_bytes.unwrap_or(match mode {
            Mode::Consume => 12 * MIB,
            _ => 0,
        });
        let wrap = a
            .wrap
            .unwrap_or(mode == Mode::Consume && producers == 0 && prefill_bytes > 0);
        Ok(Plan {
            mode,
            producers,
            consumers,
            keys,
            consume_from,
            prefill_bytes,
            wrap,
            stamp: a.stamp.unwrap_or(consumers > 0),
            client_cores,
            warmup_secs: a.warmup.max(0.0).round() as u64,
        })
    }
}

/// Monotonic clock, ns.
pub fn clock_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Pins the calling thread (best effort) and lowers its timer slack so that
/// open-loop sleeps wake on time.
pub fn pin_thread(core: Option<usize>) {
    if let Some(c) = core {
        let _ = core_affinity::set_for_current(core_affinity::CoreId { id: c });
    }
    // SAFETY: prctl with PR_SET_TIMERSLACK only changes this thread's slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0);
    }
}

pub fn new_hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 120_000_000_000, 3).expect("valid histogram bounds")
}

/// What the load threads share with the monitor.
pub struct Shared {
    pub stop: AtomicBool,
    pub produced_records: AtomicU64,
    pub produced_bytes: AtomicU64,
    pub produced_wire: AtomicU64,
    pub produce_requests: AtomicU64,
    pub consumed_records: AtomicU64,
    pub consumed_bytes: AtomicU64,
    pub consumed_wire: AtomicU64,
    pub fetch_requests: AtomicU64,
    /// Produce acknowledgement latency, ns (per request in closed loop, per
    /// record from its intended send time in open loop).
    pub ack_hist: Mutex<Histogram<u64>>,
    /// End-to-end latency, ns (per record, send time stamped in the value
    /// to the consumer's receipt).
    pub e2e_hist: Mutex<Histogram<u64>>,
    pub producers_running: AtomicUsize,
    pub error: Mutex<Option<String>>,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            produced_records: AtomicU64::new(0),
            produced_bytes: AtomicU64::new(0),
            produced_wire: AtomicU64::new(0),
            produce_requests: AtomicU64::new(0),
            consumed_records: AtomicU64::new(0),
            consumed_bytes: AtomicU64::new(0),
            consumed_wire: AtomicU64::new(0),
            fetch_requests: AtomicU64::new(0),
            ack_hist: Mutex::new(new_hist()),
            e2e_hist: Mutex::new(new_hist()),
            producers_running: AtomicUsize::new(0),
            error: Mutex::new(None),
        }
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Records the first error and stops the run.
    pub fn fail(&self, e: impl std::fmt::Display) {
        let mut g = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(e.to_string());
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    fn snapshot(&self) -> Counters {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            produced_records: l(&self.produced_records),
            produced_bytes: l(&self.produced_bytes),
            produced_wire: l(&self.produced_wire),
            produce_requests: l(&self.produce_requests),
            consumed_records: l(&self.consumed_records),
            consumed_bytes: l(&self.consumed_bytes),
            consumed_wire: l(&self.consumed_wire),
            fetch_requests: l(&self.fetch_requests),
        }
    }
}

pub fn record_all(h: &Mutex<Histogram<u64>>, values: &[u64]) {
    let mut g = h.lock().unwrap_or_else(|p| p.into_inner());
    for &v in values {
        g.saturating_record(v.max(1));
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    produced_records: u64,
    produced_bytes: u64,
    produced_wire: u64,
    produce_requests: u64,
    consumed_records: u64,
    consumed_bytes: u64,
    consumed_wire: u64,
    fetch_requests: u64,
}

impl Counters {
    fn minus(&self, o: &Counters) -> Counters {
        Counters {
            produced_records: self.produced_records - o.produced_records,
            produced_bytes: self.produced_bytes - o.produced_bytes,
            produced_wire: self.produced_wire - o.produced_wire,
            produce_requests: self.produce_requests - o.produce_requests,
            consumed_records: self.consumed_records - o.consumed_records,
            consumed_bytes: self.consumed_bytes - o.consumed_bytes,
            consumed_wire: self.consumed_wire - o.consumed_wire,
            fetch_requests: self.fetch_requests - o.fetch_requests,
        }
    }
}

/// One second of the run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SecondPoint {
    /// End of the interval, seconds since the load started.
    pub t: f64,
    pub warmup: bool,
    pub produced_records_per_sec: f64,
    pub produced_mb_per_sec: f64,
    pub consumed_records_per_sec: f64,
    pub consumed_mb_per_sec: f64,
    pub ack_p99_us: Option<f64>,
    pub e2e_p99_us: Option<f64>,
}

/// CPU seconds (user + system) of a process, from /proc.
pub fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat (1-based) are utime, stime; `rest` starts at field 3.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz.max(1.0))
}

struct Baselines {
    tcp_128k_gbps: Option<f64>,
    tcp_1m_gbps: Option<f64>,
    sync: Option<LatencySummary>,
    /// e2e: loopback TCP relay latency at the run's rate.
    relay: Option<LatencySummary>,
    /// Closed-loop produce: raw O_DIRECT write throughput (GB/s) and the
    /// latency of each write, the device's own bound and tail.
    disk_write: Option<(f64, LatencySummary)>,
}

fn run_baselines(a: &LoadArgs, plan: &Plan) -> Result<Baselines, BenchError> {
    if a.no_baseline {
        return Ok(Baselines {
            tcp_128k_gbps: None,
            tcp_1m_gbps: None,
            sync: None,
            relay: None,
            disk_write: None,
        });
    }
    let opts = BaselineOpts {
        dir: a.local.dir.clone(),
        tcp_secs: a.tcp_secs,
        sync_ops: a.sync_ops,
        cores: plan.client_cores.clone(),
        ..BaselineOpts::default()
    };
    eprintln!(
        "baseline: loopback TCP, 128 KiB and 1 MiB writes, {} s each",
        a.tcp_secs
    );
    let t128 = baseline::run_tcp_loopback(&opts, 128 * 1024)?;
    let t1m = baseline::run_tcp_loopback(&opts, 1 << 20)?;
    // e2e: loopback TCP's own latency at the same rate and message size.
    let relay = match (plan.mode, a.rate) {
        (Mode::E2e, Some(rate)) => {
            eprintln!(
                "baseline: loopback relay latency at {rate} msg/s, {} s",
                a.tcp_secs
            );
            Some(baseline::run_tcp_relay_latency(
                &opts,
                rate,
                a.message_size.max(8),
            )?)
        }
        _ => None,
    };
    // Closed-loop produce is bounded by the disk as well as by loopback.
    let disk_write = if plan.mode == Mode::Produce && a.rate.is_none() && a.acks != AcksArg::None {
        eprintln!("baseline: O_DIRECT sequential write with per-write latency");
        let (w, latency) = baseline::run_odirect_write_latency(&opts)?;
        Some((w.gbps(), latency))
    } else {
        None
    };
    let sync = if a.acks == AcksArg::Durable {
        eprintln!("baseline: {} x 4 KiB write+fdatasync", a.sync_ops);
        Some(baseline::run_sync_latency(&opts)?.latency)
    } else {
        None
    };
    Ok(Baselines {
        tcp_128k_gbps: Some(t128.gbps()),
        tcp_1m_gbps: Some(t1m.gbps()),
        sync,
        relay,
        disk_write,
    })
}

/// Everything a run measured, for the report, JSON and plot.
pub struct Outcome {
    pub series: Vec<SecondPoint>,
    pub ack: Histogram<u64>,
    pub e2e: Histogram<u64>,
    pub measured_secs: f64,
    totals: Counters,
    client_cpu: Option<f64>,
    server_cpu: Option<f64>,
    /// /proc/loadavg (1 minute) just before the load started.
    loadavg_start: Option<f64>,
}

/// The 1-minute load average (runnable threads, ours included).
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Entry point of `produce`, `consume` and `e2e`.
pub fn main(mode: Mode, a: &LoadArgs) -> Result<(), BenchError> {
    let plan = Plan::new(mode, a)?;
    if !a.cluster.is_empty() {
        return cluster_main(mode, a, &plan);
    }
    if a.server.is_none() && !a.local.spawn {
        return Err(cfg("give --server HOST:PORT, --cluster A,B,C or --spawn"));
    }
    let base = run_baselines(a, &plan)?;
    let server = if a.local.spawn {
        let s = a.local.start(false)?;
        eprintln!(
            "spawned {} (pid {}) listening on {}",
            s.binary.display(),
            s.pid(),
            s.addr
        );
        Some(s)
    } else {
        None
    };
    let addr = match (&server, &a.server) {
        (Some(s), _) => s.addr.clone(),
        (None, Some(a)) => a.clone(),
        (None, None) => unreachable!("checked above"),
    };
    let topics = create_topics(&addr, mode, a)?;
    let result = run_load(&addr, a, &plan, &topics, server.as_ref().map(|s| s.pid()));
    if !a.keep_topics {
        if let Ok(mut c) = Client::connect(&addr) {
            for t in topics.iter() {
                let _ = c.delete_topic(t);
            }
        }
    }
    drop(server);
    let outcome = result?;
    let report = build_report(mode, a, &plan, &base, &outcome);
    report.print();
    if let Some(path) = &a.json {
        let doc = json_doc(&report, a, &plan, &base, &outcome);
        write_json(path, &doc)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &a.plot {
        crate::plot::draw(path, &report_title(mode, a), &outcome)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// `--cluster`: baselines, the topic through the controller, the load on
/// the partition's leader, the report (no server CPU: three processes).
fn cluster_main(mode: Mode, a: &LoadArgs, plan: &Plan) -> Result<(), BenchError> {
    if a.topics != 1 || a.partitions != 1 {
        return Err(cfg("--cluster runs one topic of one partition"));
    }
    let base = run_baselines(a, plan)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let topics = loop {
        let mut last = String::new();
        let mut made = None;
        for addr in &a.cluster {
            match create_topics(addr, mode, a) {
                Ok(t) => {
                    made = Some(t);
                    break;
                }
                Err(e) => last = e.to_string(),
            }
        }
        if let Some(t) = made {
            break t;
        }
        if std::time::Instant::now() > deadline {
            return Err(cfg(format!(
                "no node of the cluster created the topic: {last}"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let leader = loop {
        let found = a.cluster.iter().find(|addr| {
            Client::connect(addr)
                .and_then(|mut c| c.describe_topic(&topics[0]))
                .is_ok_and(|d| {
                    d.partitions.first().is_some_and(|p| {
                        p.leader_node != 0
                            && a.cluster
                                .iter()
                                .position(|x| x == *addr)
                                .is_some_and(|i| p.leader_node as usize == i + 1)
                    })
                })
        });
        if let Some(l) = found {
            break l.clone();
        }
        if std::time::Instant::now() > deadline {
            return Err(cfg(
                "no leader for the benchmark topic (--cluster lists nodes 1, 2, 3... in order)",
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("cluster: topic {} led by {leader}", topics[0]);
    let result = run_load(&leader, a, plan, &topics, None);
    if !a.keep_topics {
        for addr in &a.cluster {
            if let Ok(mut c) = Client::connect(addr) {
                if c.delete_topic(&topics[0]).is_ok() {
                    break;
                }
            }
        }
    }
    let outcome = result?;
    let report = build_report(mode, a, plan, &base, &outcome);
    report.print();
    if let Some(path) = &a.json {
        let doc = json_doc(&report, a, plan, &base, &outcome);
        write_json(path, &doc)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// What one native run measured, for modes that compare another path with
/// the native one in the same run (`kafka`).
pub struct NativeRun {
    /// The topics the run used (kept when `--keep-topics` was given).
    pub topics: Arc<Vec<String>>,
    pub measured_secs: f64,
    /// Record value bytes produced (produce) or consumed (consume).
    pub payload_bytes: u64,
    pub records: u64,
    pub requests: u64,
    /// Produce ack latency, ns.
    pub ack: Histogram<u64>,
    /// Cores used over the measured window.
    pub client_cpu: Option<f64>,
    pub server_cpu: Option<f64>,
}

/// Runs `produce` or `consume` against a server that is already up: fresh
/// topics, prefill, warm-up, measurement; no baselines and no report.
/// Topics are deleted afterwards unless `a.keep_topics`.
pub fn run_native(
    addr: &str,
    mode: Mode,
    a: &LoadArgs,
    server_pid: Option<u32>,
) -> Result<NativeRun, BenchError> {
    let plan = Plan::new(mode, a)?;
    let topics = create_topics(addr, mode, a)?;
    let result = run_load(addr, a, &plan, &topics, server_pid);
    if !a.keep_topics {
        if let Ok(mut c) = Client::connect(addr) {
            for t in topics.iter() {
                let _ = c.delete_topic(t);
            }
        }
    }
    let o = result?;
    let t = &o.totals;
    let (payload_bytes, records, requests) = if mode == Mode::Consume {
        (t.consumed_bytes, t.consumed_records, t.fetch_requests)
    } else {
        (t.produced_bytes, t.produced_records, t.produce_requests)
    };
    Ok(NativeRun {
        topics,
        measured_secs: o.measured_secs,
        payload_bytes,
        records,
        requests,
        ack: o.ack,
        client_cpu: o.client_cpu,
        server_cpu: o.server_cpu,
    })
}

fn report_title(mode: Mode, a: &LoadArgs) -> String {
    format!(
        "strom-bench {}{}: {} B x {}/batch, acks={:?}, {} partition(s){}",
        mode.name(),
        a.name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default(),
        a.message_size,
        a.batch_records,
        a.acks,
        a.partitions,
        a.rate
            .map(|r| format!(", {} rec/s open loop", fmt_value(r)))
            .unwrap_or_else(|| ", closed loop".into())
    )
}

fn create_topics(addr: &str, mode: Mode, a: &LoadArgs) -> Result<Arc<Vec<String>>, BenchError> {
    let mut c = Client::connect(addr).map_err(|e| cfg(format!("connect {addr}: {e}")))?;
    let configs: Vec<(String, String)> = a
        .topic_config
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => Err(cfg(format!("--topic-config {kv:?}: want key=value"))),
        })
        .collect::<Result<_, _>>()?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mut names = Vec::new();
    for i in 0..a.topics {
        let name = format!(
            "strom-bench-{}-{}-{stamp}-{i}",
            mode.name(),
            std::process::id()
        );
        c.create_topic(&name, a.partitions, &configs)
            .map_err(|e| cfg(format!("create topic {name}: {e}")))?;
        names.push(name);
    }
    Ok(Arc::new(names))
}

/// Partitions (topic index, partition) of all topics.
fn all_partitions(topics: usize, partitions: u32) -> Vec<(usize, u32)> {
    (0..topics)
        .flat_map(|t| (0..partitions).map(move |p| (t, p)))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn producer_specs(
    addr: &str,
    a: &LoadArgs,
    plan: &Plan,
    topics: &Arc<Vec<String>>,
    count: usize,
    rate: Option<f64>,
    budget: Option<u64>,
    stamp: bool,
    thread_base: usize,
) -> Vec<ProducerSpec> {
    let parts = all_partitions(topics.len(), a.partitions);
    let core = |k: usize| {
        (!plan.client_cores.is_empty()).then(|| plan.client_cores[k % plan.client_cores.len()])
    };
    (0..count)
        .map(|i| {
            // Producer i writes partitions i, i+P, ...; with fewer partitions
            // than producers, producers share them.
            let mine: Vec<(usize, u32)> = if parts.len() >= count {
                parts.iter().copied().skip(i).step_by(count).collect()
            } else {
                vec![parts[i % parts.len()]]
            };
            let share = |x: u64| x / count as u64 + u64::from((i as u64) < x % count as u64);
            ProducerSpec {
                id: i,
                addr: addr.to_string(),
                topics: topics.clone(),
                partitions: mine,
                partitions_per_topic: a.partitions,
                message_size: a.message_size,
                batch_records: a.batch_records,
                linger_ns: (a.linger_ms.max(0.0) * 1e6) as u64,
                acks: a.acks.wire(),
                inflight: a.inflight,
                rate: rate.map(|r| r / count as f64),
                budget: budget.map(share),
                stamp,
                keys: plan.keys.clone(),
                writer_core: core(thread_base + 2 * i),
                reader_core: core(thread_base + 2 * i + 1),
            }
        })
        .collect()
}

/// Writes `plan.prefill_bytes` per partition (unmeasured) before a consume run.
fn prefill(
    addr: &str,
    a: &LoadArgs,
    plan: &Plan,
    topics: &Arc<Vec<String>>,
) -> Result<(), BenchError> {
    if plan.prefill_bytes == 0 {
        return Ok(());
    }
    let parts = all_partitions(topics.len(), a.partitions).len() as u64;
    let records = (plan.prefill_bytes * parts).div_ceil(a.message_size as u64);
    eprintln!(
        "prefill: {} records of {} B ({} MiB per partition)",
        records,
        a.message_size,
        plan.prefill_bytes / MIB
    );
    let shared = Arc::new(Shared::new());
    let specs = producer_specs(addr, a, plan, topics, 1, None, Some(records), true, 0);
    let handles: Vec<_> = specs
        .into_iter()
        .map(|s| {
            let sh = shared.clone();
            std::thread::spawn(move || produce::run(s, sh))
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| BenchError::ThreadPanic { name: "prefill" })??;
    }
    if let Some(e) = shared
        .error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(cfg(format!("prefill: {e}")));
    }
    Ok(())
}

fn run_load(
    addr: &str,
    a: &LoadArgs,
    plan: &Plan,
    topics: &Arc<Vec<String>>,
    server_pid: Option<u32>,
) -> Result<Outcome, BenchError> {
    prefill(addr, a, plan, topics)?;
    // Consumer start positions (and the range to re-read with --wrap).
    let parts = all_partitions(topics.len(), a.partitions);
    let mut reads = Vec::new();
    if plan.consumers > 0 {
        let mut c = Client::connect(addr).map_err(|e| cfg(format!("connect {addr}: {e}")))?;
        for &(t, p) in &parts {
            let name = &topics[t];
            let earliest = c
                .list_offset(name, p, OffsetSpec::Earliest)
                .map_err(|e| cfg(format!("list offsets {name}/{p}: {e}")))?
                .unwrap_or(0);
            let latest = c
                .list_offset(name, p, OffsetSpec::Latest)
                .map_err(|e| cfg(format!("list offsets {name}/{p}: {e}")))?
                .unwrap_or(0);
            let position = match plan.consume_from {
                StartArg::Earliest => earliest,
                StartArg::Latest => latest,
            };
            reads.push(PartitionRead {
                topic: name.clone(),
                partition: p,
                position,
                wrap: (plan.wrap && latest > earliest).then_some((earliest, latest)),
            });
        }
    }

    let shared = Arc::new(Shared::new());
    let budget = a.records;
    let producers = producer_specs(
        addr,
        a,
        plan,
        topics,
        plan.producers,
        a.rate,
        budget,
        plan.stamp,
        0,
    );
    let core = |k: usize| {
        (!plan.client_cores.is_empty()).then(|| plan.client_cores[k % plan.client_cores.len()])
    };
    let consumers: Vec<ConsumerSpec> = (0..plan.consumers)
        .map(|i| {
            let mine: Vec<PartitionRead> = if reads.len() >= plan.consumers {
                reads
                    .iter()
                    .skip(i)
                    .step_by(plan.consumers)
                    .cloned()
                    .collect()
            } else {
                vec![reads[i % reads.len()].clone()]
            };
            ConsumerSpec {
                id: i,
                addr: addr.to_string(),
                reads: mine,
                message_size: a.message_size,
                max_bytes: a.fetch_max_bytes,
                partition_max_bytes: a.partition_max_bytes,
                wait_ms: a.fetch_wait_ms,
                e2e: plan.mode == Mode::E2e,
                verify: a.verify,
                core: core(2 * plan.producers + i + 1),
            }
        })
        .collect();

    let load0 = loadavg();
    let client_cpu0 = cpu_secs(None);
    let server_cpu0 = server_pid.and_then(|p| cpu_secs(Some(p)));
    shared
        .producers_running
        .store(producers.len(), Ordering::SeqCst);
    let mut handles = Vec::new();
    for s in consumers {
        let sh = shared.clone();
        handles.push(("consumer", std::thread::spawn(move || consume::run(s, sh))));
    }
    for s in producers {
        let sh = shared.clone();
        handles.push(("producer", std::thread::spawn(move || produce::run(s, sh))));
    }
    let mut outcome = monitor(a, plan, &shared, client_cpu0, server_cpu0, server_pid);
    outcome.loadavg_start = load0;
    shared.stop.store(true, Ordering::SeqCst);
    for (name, h) in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => shared.fail(format!("{name}: {e}")),
            Err(_) => shared.fail(format!("{name} thread panicked")),
        }
    }
    if let Some(e) = shared
        .error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(cfg(format!("run failed: {e}")));
    }
    Ok(outcome)
}

fn p99_us(h: &Histogram<u64>) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(0.99) as f64 / 1e3)
}

fn take_hist(h: &Mutex<Histogram<u64>>) -> Histogram<u64> {
    let mut g = h.lock().unwrap_or_else(|p| p.into_inner());
    let out = g.clone();
    g.reset();
    out
}

/// Once a second: counters and interval histograms into the series, the
/// progress line, and (after the warm-up) the totals. Returns when the
/// duration is over, the record budget is done, or the run failed.
fn monitor(
    a: &LoadArgs,
    plan: &Plan,
    shared: &Shared,
    client_cpu0: Option<f64>,
    server_cpu0: Option<f64>,
    server_pid: Option<u32>,
) -> Outcome {
    let tty = unsafe { libc::isatty(2) } == 1;
    let start = clock_ns();
    let warm_ns = plan.warmup_secs * 1_000_000_000;
    let end_ns = if a.records.is_some() {
        u64::MAX
    } else {
        warm_ns + (a.duration * 1e9) as u64
    };
    let mut series = Vec::new();
    let mut ack_total = new_hist();
    let mut e2e_total = new_hist();
    let mut prev = shared.snapshot();
    let mut prev_t = start;
    let mut measured_from: Option<(u64, Counters, Option<f64>, Option<f64>)> = None;
    if warm_ns == 0 {
        measured_from = Some((start, prev, client_cpu0, server_cpu0));
    }
    let mut k = 1u64;
    let mut finished_at = None;
    loop {
        let tick = start + k * 1_000_000_000;
        let tick = tick.min(start.saturating_add(end_ns));
        let now = clock_ns();
        if tick > now {
            // Sleep in short steps so that the end of a record budget or an
            // error is seen quickly.
            std::thread::sleep(Duration::from_nanos((tick - now).min(50_000_000)));
            let done = shared.stopped()
                || (a.records.is_some()
                    && plan.producers > 0
                    && shared.producers_running.load(Ordering::SeqCst) == 0
                    && (plan.consumers == 0
                        || shared.consumed_records.load(Ordering::Relaxed)
                            >= shared.produced_records.load(Ordering::Relaxed)));
            if !done && clock_ns() < tick {
                continue;
            }
            if done {
                finished_at = Some(clock_ns());
            }
        }
        let now = finished_at.unwrap_or_else(clock_ns).max(prev_t + 1);
        let cur = shared.snapshot();
        let d = cur.minus(&prev);
        let dt = (now - prev_t) as f64 / 1e9;
        let ack = take_hist(&shared.ack_hist);
        let e2e = take_hist(&shared.e2e_hist);
        let t = (now - start) as f64 / 1e9;
        let warm = now - start <= warm_ns;
        if !warm {
            let _ = ack_total.add(&ack);
            let _ = e2e_total.add(&e2e);
        }
        let point = SecondPoint {
            t,
            warmup: warm,
            produced_records_per_sec: d.produced_records as f64 / dt,
            produced_mb_per_sec: d.produced_bytes as f64 / dt / 1e6,
            consumed_records_per_sec: d.consumed_records as f64 / dt,
            consumed_mb_per_sec: d.consumed_bytes as f64 / dt / 1e6,
            ack_p99_us: p99_us(&ack),
            e2e_p99_us: p99_us(&e2e),
        };
        let mut line = format!("[{t:6.1}s{}]", if warm { " warm-up" } else { "" });
        if plan.producers > 0 {
            line += &format!(
                " produce {:>8.1} MB/s {:>9} rec/s",
                point.produced_mb_per_sec,
                fmt_value(point.produced_records_per_sec)
            );
            if let Some(p) = point.ack_p99_us {
                line += &format!(" ack p99 {}us", fmt_value(p));
            }
        }
        if plan.consumers > 0 {
            line += &format!(
                " | consume {:>8.1} MB/s {:>9} rec/s",
                point.consumed_mb_per_sec,
                fmt_value(point.consumed_records_per_sec)
            );
            if let Some(p) = point.e2e_p99_us {
                line += &format!(" e2e p99 {}us", fmt_value(p));
            }
        }
        if tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
        series.push(point);
        prev = cur;
        prev_t = now;
        if measured_from.is_none() && now - start >= warm_ns {
            measured_from = Some((
                now,
                cur,
                cpu_secs(None),
                server_pid.and_then(|p| cpu_secs(Some(p))),
            ));
        }
        k += 1;
        if finished_at.is_some() || now - start >= end_ns || shared.stopped() {
            break;
        }
    }
    if tty {
        eprintln!();
    }
    shared.stop.store(true, Ordering::SeqCst);
    let end = clock_ns();
    let (from, c0, cc0, sc0) =
        measured_from.unwrap_or((start, Counters::default(), client_cpu0, server_cpu0));
    let measured_secs = (prev_t.max(from + 1) - from) as f64 / 1e9;
    let _ = end;
    let client_cpu = match (cpu_secs(None), cc0) {
        (Some(b), Some(a)) => Some((b - a) / measured_secs),
        _ => None,
    };
    let server_cpu = match (server_pid.and_then(|p| cpu_secs(Some(p))), sc0) {
        (Some(b), Some(a)) => Some((b - a) / measured_secs),
        _ => None,
    };
    Outcome {
        series,
        ack: ack_total,
        e2e: e2e_total,
        measured_secs,
        totals: prev.minus(&c0),
        client_cpu,
        server_cpu,
        loadavg_start: None,
    }
}

fn us(h: &Histogram<u64>) -> LatencySummary {
    LatencySummary::from_histogram(h, "ns").scaled(1e-3, "us")
}

/// The four rate figures of one direction: payload MB/s and wire MB/s (as
/// ratios of loopback TCP), records/s and requests/s. `counts` are
/// [payload bytes, wire bytes, records, requests] over `secs`.
fn add_rates(
    r: &mut Report,
    with_tcp: &dyn Fn(Figure) -> Figure,
    side: &str,
    requests_name: &str,
    counts: [u64; 4],
    secs: f64,
) {
    let [bytes, wire, records, requests] = counts.map(|c| c as f64 / secs);
    r.add_figure(with_tcp(Figure::new(
        format!("{side}_throughput"),
        bytes / 1e6,
        "MB/s",
    )));
    r.add_figure(with_tcp(Figure::new(
        format!("{side}_wire_throughput"),
        wire / 1e6,
        "MB/s",
    )));
    r.add_figure(Figure::new(format!("{side}_records"), records, "rec/s"));
    r.add_figure(Figure::new(requests_name, requests, "req/s"));
}

fn build_report(mode: Mode, a: &LoadArgs, plan: &Plan, base: &Baselines, o: &Outcome) -> Report {
    let mut r = Report::new(mode.name(), params_json(a, plan));
    if let Some(l) = o.loadavg_start {
        // Other work on the machine: 2.0 means two runnable threads besides ours.
        r.add_figure(Figure::new("machine_loadavg_1m_before", l, "threads"));
    }
    let secs = o.measured_secs.max(1e-9);
    let tcp_mb = base.tcp_128k_gbps.map(|g| g * 1e3);
    let with_tcp = |f: Figure| match tcp_mb {
        Some(b) => f.with_baseline(names::TCP_128K, b),
        None => f,
    };
    if let Some(g) = base.tcp_128k_gbps {
        r.add_figure(Figure::new(names::TCP_128K, g * 1e3, "MB/s"));
    }
    if let Some(g) = base.tcp_1m_gbps {
        r.add_figure(Figure::new(names::TCP_1M, g * 1e3, "MB/s"));
    }
    let t = &o.totals;
    if plan.producers > 0 {
        let rates = [
            t.produced_bytes,
            t.produced_wire,
            t.produced_records,
            t.produce_requests,
        ];
        add_rates(
            &mut r,
            &with_tcp,
            "produce",
            "produce_requests",
            rates,
            secs,
        );
        if let Some((disk_gbps, _)) = &base.disk_write {
            // The bound of a closed-loop produce: the lower of the disk and
            // loopback (a ratio against loopback alone hides a disk-bound run).
            let disk_mb = disk_gbps * 1e3;
            let (name, bound) = match tcp_mb {
                Some(t) if t < disk_mb => (names::TCP_128K, t),
                _ => (names::ODIRECT_WRITE, disk_mb),
            };
            r.add_figure(Figure::new(names::ODIRECT_WRITE, disk_mb, "MB/s"));
            r.add_figure(
                Figure::new(
                    "produce_throughput_vs_bound",
                    t.produced_bytes as f64 / secs / 1e6,
                    "MB/s",
                )
                .with_baseline(name, bound),
            );
        }
        if let Some(rate) = a.rate {
            let measured: Vec<f64> = o
                .series
                .iter()
                .filter(|p| !p.warmup)
                .map(|p| p.produced_records_per_sec)
                .collect();
            // The last point may be a partial second at the end of a budget.
            let min = measured.iter().copied().fold(f64::INFINITY, f64::min);
            if min.is_finite() {
                r.add_figure(
                    Figure::new("produce_min_second_rate", min, "rec/s")
                        .with_baseline("target_rate", rate),
                );
            }
        }
    }
    if plan.consumers > 0 {
        let rates = [
            t.consumed_bytes,
            t.consumed_wire,
            t.consumed_records,
            t.fetch_requests,
        ];
        add_rates(&mut r, &with_tcp, "consume", "fetch_requests", rates, secs);
    }
    let sync_p99 = base.sync.as_ref().map(|s| s.p99);
    if !o.ack.is_empty() {
        let s = us(&o.ack);
        if let Some(b) = sync_p99 {
            r.add_figure(
                Figure::new("produce_ack_latency_p99", s.p99, "us")
                    .with_baseline("raw_write4k_fdatasync_p99", b),
            );
        }
        if a.rate.is_some() && s.p99 > 0.0 {
            r.add_figure(
                Figure::new("produce_ack_p99_99_over_p99", s.p99_99 / s.p99, "x")
                    .with_baseline("target_max", 10.0),
            );
        }
        if let Some((_, w)) = &base.disk_write {
            r.add_figure(
                Figure::new("produce_ack_latency_p99_9_vs_raw_write", s.p99_9, "us")
                    .with_baseline("raw_odirect_write_latency_p99_9", w.p99_9),
            );
            r.add_figure(
                Figure::new("produce_ack_p99_9_over_p50", s.p99_9 / s.p50.max(1e-9), "x")
                    .with_baseline("target_max", 10.0),
            );
            r.add_latency("raw_odirect_write_latency", w.clone());
        }
        r.add_latency("produce_ack_latency", s);
    }
    if !o.e2e.is_empty() {
        let s = us(&o.e2e);
        let (bname, b) = match sync_p99 {
            Some(sp) => ("target_1ms_plus_raw_fdatasync_p99", 1000.0 + sp),
            None => ("target_1ms", 1000.0),
        };
        r.add_figure(Figure::new("e2e_latency_p99", s.p99, "us").with_baseline(bname, b));
        r.add_figure(
            Figure::new("e2e_latency_p99_9", s.p99_9, "us").with_baseline("target_5ms", 5000.0),
        );
        if let Some(relay) = &base.relay {
            // The same quantiles of loopback TCP alone, in the same run: on
            // a shared machine its tails move with the load.
            for (name, v, rv) in [
                ("p50", s.p50, relay.p50),
                ("p99", s.p99, relay.p99),
                ("p99_9", s.p99_9, relay.p99_9),
            ] {
                r.add_figure(
                    Figure::new(format!("e2e_latency_{name}_vs_relay"), v, "us")
                        .with_baseline(format!("raw_tcp_relay_latency_{name}"), rv),
                );
            }
            r.add_latency("raw_tcp_relay_latency", relay.clone());
        }
        r.add_latency("e2e_latency", s);
    }
    if let Some(c) = o.client_cpu {
        r.add_figure(Figure::new("client_cpu", c, "cores"));
        if plan.producers > 0 && t.produced_bytes > 0 {
            r.add_figure(Figure::new(
                "client_cpu_per_produced_gb",
                c * secs / (t.produced_bytes as f64 / 1e9),
                "core-s/GB",
            ));
        }
    }
    if let Some(c) = o.server_cpu {
        r.add_figure(Figure::new("server_cpu", c, "cores"));
    }
    if let Some(s) = &base.sync {
        r.add_latency("raw_write4k_fdatasync_latency", s.clone());
    }
    r
}

fn params_json(a: &LoadArgs, plan: &Plan) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "resolved".into(),
            json!({
                "producers": plan.producers,
                "consumers": plan.consumers,
                "consume_from": plan.consume_from,
                "prefill_bytes": plan.prefill_bytes,
                "wrap": plan.wrap,
                "stamp": plan.stamp,
                "client_cores": plan.client_cores,
                "warmup_secs": plan.warmup_secs,
                "loop": if a.rate.is_some() { "open" } else { "closed" },
            }),
        );
    }
    v
}

/// The histogram as percentile points (HdrHistogram's percentile
/// distribution, 5 ticks per half distance), values in µs.
fn percentile_points(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!([]);
    }
    let pts: Vec<Value> = h
        .iter_quantiles(5)
        .map(|v| {
            json!({
                "quantile": v.quantile_iterated_to(),
                "value_us": v.value_iterated_to() as f64 / 1e3,
                "count": v.count_since_last_iteration(),
            })
        })
        .collect();
    json!(pts)
}

pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_quantiles(5)
        .map(|v| (v.quantile_iterated_to(), v.value_iterated_to() as f64 / 1e3))
        .collect()
}

fn json_doc(r: &Report, a: &LoadArgs, plan: &Plan, base: &Baselines, o: &Outcome) -> Value {
    let figures: Vec<Value> = r
        .figures
        .iter()
        .map(|f| {
            json!({
                "name": f.name,
                "value": f.value,
                "unit": f.unit,
                "baseline": f.baseline.as_ref().map(|(n, v)| json!({"name": n, "value": v})),
                "ratio": f.ratio(),
            })
        })
        .collect();
    let latencies: Vec<Value> = r
        .latencies
        .iter()
        .map(|(n, s)| {
            let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.insert("name".into(), json!(n));
            }
            v
        })
        .collect();
    let unix_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({
        "mode": r.mode,
        "name": a.name,
        "unix_time": unix_time,
        "parameters": params_json(a, plan),
        "machine": serde_json::to_value(MachineInfo::detect()).unwrap_or(Value::Null),
        "figures": figures,
        "latencies": latencies,
        "baselines": {
            "raw_tcp_loopback_128k_gbps": base.tcp_128k_gbps,
            "raw_tcp_loopback_1m_gbps": base.tcp_1m_gbps,
            "raw_write4k_fdatasync_latency": base.sync,
        },
        "measured_secs": o.measured_secs,
        "cpu": { "client_cores": o.client_cpu, "server_cores": o.server_cpu },
        "loadavg_1m_before": o.loadavg_start,
        "series": o.series,
        "histograms": {
            "produce_ack_us": percentile_points(&o.ack),
            "e2e_us": percentile_points(&o.e2e),
        },
    })
}

pub fn write_json(path: &std::path::Path, doc: &Value) -> Result<(), BenchError> {
    let text = serde_json::to_string_pretty(doc).map_err(|source| BenchError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::write(path, text + "\n").map_err(|e| BenchError::io("write", path, e))
}
