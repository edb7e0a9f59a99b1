//! `strom-bench engine`: the partition log (strom-engine) against this
//! machine's raw limits, measured in the same run by the same binary.
//!
//! 1. Append throughput: 1 KiB records in ~1 MiB frames to one partition
//!    (Durability::Buffered, then one `flush()` inside the timing), as a ratio
//!    of `raw_odirect_write` of the same bytes (1 MiB blocks, depth 8).
//!    Measured sequentially (one appender) and with several appenders in
//!    flight; the better one is the figure, its mode named.
//! 2. Durable appends: 64 concurrent appenders of one 1 KiB record each with
//!    Durability::Durable (group commit); records/s and p50/p99/p99.9 latency
//!    as ratios of raw 4 KiB write+fdatasync latency.
//! 3. Recovery: a child process (this binary, hidden subcommand
//!    `engine-crash-child`) appends with Durability::Written until N bytes are
//!    on disk, prints "ready" and keeps appending; it is killed with SIGKILL
//!    and `Partition::open` (the recovery) is timed in a fresh executor.
//!
//! 4. Cleaner (log compaction): a partition of keyed records (values 1 KiB,
//!    `--cleaner-keys` keys, `--cleaner-bytes` of them in 64 MiB segments)
//!    is compacted by one unthrottled pass (`Partition::compact`); its read
//!    rate is the figure, as a ratio of raw O_DIRECT sequential read
//!    measured in the same run. Then, on one executor, a paced producer
//!    appends one 1 KiB record every millisecond (Durability::Written, as
//!    acks=leader) to another partition, for `--cleaner-secs` without the
//!    cleaner and again while the cleaner compacts a fresh copy of the data
//!    at the server's pace (`CLEANER_IO_BYTES_PER_SEC`): the append p50/p99
//!    with and without the cleaner, side by side.
//!
//! Every part runs in its own glommio executor pinned to one core, outside any
//! other executor; the data directories are removed afterwards.

use std::cell::{Cell, RefCell};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use serde_json::json;
use strom_engine::{Durability, EngineError, FlushPolicy, LogConfig, Partition, RecoveryReport};
use strom_flatbuffers::{BatchBuilder, RecordIn};

use crate::baseline::{self, ensure_memlock, names, BaselineOpts, Throughput};
use crate::report::{BenchError, Figure, LatencySummary, Report};

const MIB: usize = 1 << 20;
const GIB: u64 = 1 << 30;

/// Flags of `strom-bench engine`.
#[derive(clap::Args, Clone, Debug)]
pub struct EngineArgs {
    /// Directory for the data (created if missing; everything written is removed afterwards).
    #[arg(long, default_value = "./bench-data")]
    pub dir: PathBuf,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// CI smoke run: small sizes and short durations.
    #[arg(long)]
    pub quick: bool,
    /// Bytes appended by the throughput part [default: 2 GiB, 64 MiB with --quick].
    #[arg(long)]
    pub bytes: Option<u64>,
    /// Appenders in flight in the concurrent throughput mode (the sequential mode uses one).
    #[arg(long, default_value_t = 4)]
    pub append_tasks: usize,
    /// The partition's write_buffer_bytes in the throughput part.
    #[arg(long, default_value_t = MIB)]
    pub write_buffer_bytes: usize,
    /// The partition's unwritten_bytes_max in the throughput part [default: engine default].
    #[arg(long)]
    pub unwritten_bytes_max: Option<usize>,
    /// Concurrent durable appenders.
    #[arg(long, default_value_t = 64)]
    pub appenders: usize,
    /// Seconds the durable-append part runs [default: 5, 1 with --quick].
    #[arg(long)]
    pub durable_secs: Option<f64>,
    /// 4 KiB write+fdatasync pairs of the latency baseline [default: 2000, 200 with --quick].
    #[arg(long)]
    pub sync_ops: Option<u64>,
    /// Log bytes written before the SIGKILL [default: 2 GiB, 256 MiB with --quick].
    #[arg(long)]
    pub recovery_bytes: Option<u64>,
    /// Flush policy of the killed child, in ms (FlushPolicy::IntervalMs); 0 = Never.
    /// The recovery part runs once with 0 (worst case: the whole active
    /// segment is unflushed) and once with this value, unless it is 0.
    #[arg(long, default_value_t = 100)]
    pub crash_flush_ms: u64,
    /// Bytes of keyed records the cleaner part compacts [default: 1 GiB, 128 MiB with --quick].
    #[arg(long)]
    pub cleaner_bytes: Option<u64>,
    /// Distinct keys of the cleaner part's records.
    #[arg(long, default_value_t = 10_000)]
    pub cleaner_keys: u64,
    /// Seconds of each paced-producer run of the cleaner part [default: 5, 2 with --quick].
    #[arg(long)]
    pub cleaner_secs: Option<f64>,
    /// The cleaner's pace while the producer runs, bytes/s (the server's).
    #[arg(long, default_value_t = strom_engine::compaction::DEFAULT_CLEANER_IO_BYTES_PER_SEC)]
    pub cleaner_rate: u64,
    /// Parts to run (comma separated: append,durable,recovery,cleaner) [default: all].
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Core every executor is pinned to.
    #[arg(long, default_value_t = 0)]
    pub core: usize,
    /// Memory each glommio executor registers with io_uring (needs RLIMIT_MEMLOCK).
    #[arg(long, default_value_t = 4 * MIB)]
    pub io_memory: usize,
}

/// Flags of the hidden `engine-crash-child` subcommand.
#[derive(clap::Args, Clone, Debug)]
pub struct CrashChildArgs {
    /// The partition directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Print "ready" once this many bytes were appended (Durability::Written).
    #[arg(long)]
    pub bytes: u64,
    /// FlushPolicy::IntervalMs of the partition; 0 = Never.
    #[arg(long, default_value_t = 0)]
    pub flush_ms: u64,
    #[arg(long, default_value_t = 0)]
    pub core: usize,
    #[arg(long, default_value_t = 4 * MIB)]
    pub io_memory: usize,
}

/// Resolved sizes of one run.
#[derive(Clone, Debug)]
struct Plan {
    dir: PathBuf,
    append_bytes: u64,
    append_tasks: usize,
    write_buffer_bytes: usize,
    unwritten_bytes_max: usize,
    appenders: usize,
    durable_secs: f64,
    sync_ops: u64,
    recovery_bytes: u64,
    crash_flush_ms: u64,
    core: usize,
    io_memory: usize,
    append: bool,
    durable: bool,
    recovery: bool,
    cleaner: bool,
    cleaner_bytes: u64,
    cleaner_keys: u64,
    cleaner_secs: f64,
    cleaner_rate: u64,
}

impl Plan {
    fn new(a: &EngineArgs) -> Result<Self, BenchError> {
        let pick =
            |v: Option<u64>, full: u64, quick: u64| v.unwrap_or(if a.quick { quick } else { full });
        let parts: Vec<String> = a.only.iter().map(|s| s.trim().to_lowercase()).collect();
        for p in &parts {
            if !matches!(p.as_str(), "append" | "durable" | "recovery" | "cleaner") {
                return Err(BenchError::Config(format!(
                    "--only {p}: expected append, durable, recovery or cleaner"
                )));
            }
        }
        let on = |name: &str| parts.is_empty() || parts.iter().any(|p| p == name);
        let default_unwritten = LogConfig::default().unwritten_bytes_max;
        let plan = Plan {
            dir: a.dir.clone(),
            append_bytes: pick(a.bytes, 2 * GIB, 64 << 20),
            append_tasks: a.append_tasks,
            write_buffer_bytes: a.write_buffer_bytes,
            unwritten_bytes_max: a
                .unwritten_bytes_max
                .unwrap_or(default_unwritten.max(a.write_buffer_bytes)),
            appenders: a.appenders,
            durable_secs: a.durable_secs.unwrap_or(if a.quick { 1.0 } else { 5.0 }),
            sync_ops: pick(a.sync_ops, 2000, 200),
            recovery_bytes: pick(a.recovery_bytes, 2 * GIB, 256 << 20),
            crash_flush_ms: a.crash_flush_ms,
            core: a.core,
            io_memory: a.io_memory,
            append: on("append"),
            durable: on("durable"),
            recovery: on("recovery"),
            cleaner: on("cleaner"),
            cleaner_bytes: pick(a.cleaner_bytes, GIB, 128 << 20),
            cleaner_keys: a.cleaner_keys.max(1),
            cleaner_secs: a.cleaner_secs.unwrap_or(if a.quick { 2.0 } else { 5.0 }),
            cleaner_rate: a.cleaner_rate.max(1),
        };
        if plan.append_bytes < MIB as u64 || plan.append_tasks == 0 || plan.appenders == 0 {
            return Err(BenchError::Config(
                "--bytes must be at least 1 MiB; --append-tasks and --appenders positive".into(),
            ));
        }
        if !(plan.durable_secs.is_finite() && plan.durable_secs > 0.0) {
            return Err(BenchError::Config("--durable-secs must be positive".into()));
        }
        if plan.sync_ops == 0 || plan.recovery_bytes == 0 {
            return Err(BenchError::Config(
                "--sync-ops and --recovery-bytes must be positive".into(),
            ));
        }
        plan.append_config()
            .validate()
            .map_err(|e| BenchError::Config(e.to_string()))?;
        Ok(plan)
    }

    fn baseline_opts(&self, bytes: u64) -> BaselineOpts {
        BaselineOpts {
            dir: self.dir.clone(),
            bytes,
            block_size: MIB,
            depth: 8,
            sync_ops: self.sync_ops,
            cores: vec![self.core],
            io_memory: self.io_memory,
            ..BaselineOpts::default()
        }
    }

    fn append_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes: GIB,
            flush: FlushPolicy::Never,
            write_buffer_bytes: self.write_buffer_bytes,
            unwritten_bytes_max: self.unwritten_bytes_max,
            ..LogConfig::default()
        }
    }

    fn part_dir(&self, part: &str) -> PathBuf {
        self.dir
            .join(format!("strom-bench-{}-engine-{part}", std::process::id()))
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "dir": self.dir.display().to_string(),
            "append_bytes": self.append_bytes,
            "append_tasks": self.append_tasks,
            "write_buffer_bytes": self.write_buffer_bytes,
            "unwritten_bytes_max": self.unwritten_bytes_max,
            "segment_bytes": GIB,
            "appenders": self.appenders,
            "durable_secs": self.durable_secs,
            "sync_ops": self.sync_ops,
            "recovery_bytes": self.recovery_bytes,
            "crash_flush_ms": self.crash_flush_ms,
            "crash_segment_bytes": CRASH_SEGMENT_BYTES,
            "core": self.core,
            "io_memory": self.io_memory,
        })
    }
}

// ---------------------------------------------------------------------------
// Helpers

fn eng<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(EngineError) -> BenchError + 'a {
    move |e| BenchError::io(op, path, std::io::Error::other(e.to_string()))
}

/// Runs `make()`'s future on a fresh glommio executor pinned to `core`.
fn run_in_executor<G, F, T>(
    core: usize,
    io_memory: usize,
    op: &'static str,
    make: G,
) -> Result<T, BenchError>
where
    G: FnOnce() -> F + Send + 'static,
    F: std::future::Future<Output = Result<T, BenchError>> + 'static,
    T: Send + 'static,
{
    ensure_memlock(io_memory);
    let handle = LocalExecutorBuilder::new(Placement::Fixed(core))
        .name("strom-bench-engine")
        .io_memory(io_memory)
        .spawn(make)
        .map_err(|e| BenchError::Executor {
            op,
            message: e.to_string(),
        })?;
    match handle.join() {
        Ok(r) => r,
        Err(e) => Err(BenchError::Executor {
            op,
            message: e.to_string(),
        }),
    }
}

/// Removes a directory tree on drop (also on error paths).
struct RemoveDirOnDrop(PathBuf);

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Pseudo-random bytes (so no layer can elide zeros).
fn fill_random(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

/// One producer frame of `records` records whose values are `value_min` to
/// `value_min + spread - 1` bytes.
fn build_frame(records: usize, value_min: usize, spread: usize) -> Vec<u8> {
    let mut value = vec![0u8; value_min + spread];
    fill_random(&mut value, 0x9E37_79B9_7F4A_7C15);
    let ts = strom_engine::partition::now_ms();
    let mut b = BatchBuilder::new();
    for i in 0..records {
        let len = value_min + i % spread.max(1);
        b.push(&RecordIn {
            timestamp_ms: ts,
            key: None,
            value: Some(&value[..len]),
            headers: &[],
        });
    }
    b.finish()
}

/// The ~1 MiB frame of the throughput and recovery parts: 1,000 records of
/// 1,000 to 1,024 bytes.
fn big_frame() -> Vec<u8> {
    build_frame(1000, 1000, 25)
}

fn new_histogram() -> Result<Histogram<u64>, BenchError> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| BenchError::Config(format!("histogram: {e}")))
}

// ---------------------------------------------------------------------------
// 1. Append throughput

#[derive(Clone, Debug)]
struct AppendRun {
    tasks: usize,
    throughput: Throughput,
    appends: u64,
    frame_bytes: usize,
    writes: u64,
    fdatasyncs: u64,
}

impl AppendRun {
    fn mode(&self) -> String {
        if self.tasks == 1 {
            "sequential".into()
        } else {
            format!("{} appenders in flight", self.tasks)
        }
    }
}

/// Appends `bytes` (rounded up to whole frames) with `tasks` appenders and
/// Durability::Buffered, then `flush()`; the timing covers both.
fn run_append(plan: &Plan, tasks: usize) -> Result<AppendRun, BenchError> {
    let dir = plan.part_dir(&format!("append{tasks}"));
    let _ = std::fs::remove_dir_all(&dir);
    let _guard = RemoveDirOnDrop(dir.clone());
    let config = plan.append_config();
    let bytes = plan.append_bytes;
    run_in_executor(
        plan.core,
        plan.io_memory,
        "engine append",
        move || async move {
            let frame = Rc::new(big_frame());
            let frame_bytes = frame.len();
            let appends = bytes.div_ceil(frame_bytes as u64);
            let p = Partition::open(&dir, config)
                .await
                .map_err(eng("open partition", &dir))?;
            let next = Rc::new(Cell::new(0u64));
            // The frames the producers would have received from their
            // sockets, made before the clock starts: the engine's cost
            // (validate, stamp, one copy into DMA memory, write) is what is
            // timed, not the harness cloning a frame per append.
            let prepared: Rc<std::cell::RefCell<Vec<BytesMut>>> = Rc::new(std::cell::RefCell::new(
                (0..appends).map(|_| BytesMut::from(&frame[..])).collect(),
            ));
            let take = {
                let prepared = prepared.clone();
                let frame = frame.clone();
                move || {
                    prepared
                        .borrow_mut()
                        .pop()
                        .unwrap_or_else(|| BytesMut::from(&frame[..]))
                }
            };
            let start = Instant::now();
            if tasks == 1 {
                for _ in 0..appends {
                    p.append(take(), Durability::Buffered)
                        .await
                        .map_err(eng("append", &dir))?;
                }
            } else {
                let mut handles = Vec::with_capacity(tasks);
                for _ in 0..tasks {
                    let (p, next, take, dir) = (p.clone(), next.clone(), take.clone(), dir.clone());
                    handles.push(glommio::spawn_local(async move {
                        loop {
                            let i = next.get();
                            if i >= appends {
                                return Ok::<(), BenchError>(());
                            }
                            next.set(i + 1);
                            p.append(take(), Durability::Buffered)
                                .await
                                .map_err(eng("append", &dir))?;
                        }
                    }));
                }
                for h in handles {
                    h.await?;
                }
            }
            p.flush().await.map_err(eng("flush", &dir))?;
            let secs = start.elapsed().as_secs_f64();
            let stats = p.stats();
            p.close().await.map_err(eng("close", &dir))?;
            Ok(AppendRun {
                tasks,
                throughput: Throughput {
                    bytes: appends * frame_bytes as u64,
                    secs,
                },
                appends,
                frame_bytes,
                writes: stats.writes,
                fdatasyncs: stats.fdatasyncs,
            })
        },
    )
}

/// What the producer-side copy costs on its own: cloning the frame into a
/// fresh BytesMut, as the timed loop does before every append.
fn clone_rate(frame: &[u8], bytes: u64) -> Throughput {
    let n = bytes.div_ceil(frame.len() as u64);
    let start = Instant::now();
    for _ in 0..n {
        let b = BytesMut::from(frame);
        std::hint::black_box(&b);
    }
    Throughput {
        bytes: n * frame.len() as u64,
        secs: start.elapsed().as_secs_f64(),
    }
}

// ---------------------------------------------------------------------------
// 2. Durable appends

#[derive(Clone, Debug)]
struct DurableRun {
    records: u64,
    secs: f64,
    latency: LatencySummary,
    fdatasyncs: u64,
    writes: u64,
    frame_bytes: usize,
}

fn run_durable(plan: &Plan) -> Result<DurableRun, BenchError> {
    let dir = plan.part_dir("durable");
    let _ = std::fs::remove_dir_all(&dir);
    let _guard = RemoveDirOnDrop(dir.clone());
    let config = LogConfig {
        flush: FlushPolicy::Never,
        ..LogConfig::default()
    };
    let (appenders, secs) = (plan.appenders, plan.durable_secs);
    run_in_executor(
        plan.core,
        plan.io_memory,
        "engine durable appends",
        move || async move {
            let frame = Rc::new(build_frame(1, 1024, 1));
            let p = Partition::open(&dir, config)
                .await
                .map_err(eng("open partition", &dir))?;
            let before = p.stats();
            let hist = Rc::new(RefCell::new(new_histogram()?));
            let count = Rc::new(Cell::new(0u64));
            let start = Instant::now();
            let deadline = start + Duration::from_secs_f64(secs);
            let mut handles = Vec::with_capacity(appenders);
            for _ in 0..appenders {
                let (p, frame, dir) = (p.clone(), frame.clone(), dir.clone());
                let (hist, count) = (hist.clone(), count.clone());
                handles.push(glommio::spawn_local(async move {
                    while Instant::now() < deadline {
                        let buf = BytesMut::from(&frame[..]);
                        let t0 = Instant::now();
                        p.append(buf, Durability::Durable)
                            .await
                            .map_err(eng("durable append", &dir))?;
                        let ns = (t0.elapsed().as_nanos() as u64).max(1);
                        hist.borrow_mut().saturating_record(ns);
                        count.set(count.get() + 1);
                    }
                    Ok::<(), BenchError>(())
                }));
            }
            for h in handles {
                h.await?;
            }
            let secs = start.elapsed().as_secs_f64();
            let after = p.stats();
            p.close().await.map_err(eng("close", &dir))?;
            let latency = LatencySummary::from_histogram(&hist.borrow(), "ns").scaled(1e-3, "us");
            Ok(DurableRun {
                records: count.get(),
                secs,
                latency,
                fdatasyncs: after.fdatasyncs - before.fdatasyncs,
                writes: after.writes - before.writes,
                frame_bytes: frame.len(),
            })
        },
    )
}

// ---------------------------------------------------------------------------
// 4. Cleaner

struct CleanerRun {
    read: Throughput,
    bytes_written: u64,
    records_removed: u64,
    log_bytes_before: u64,
    log_bytes_after: u64,
    without: LatencySummary,
    with: LatencySummary,
    appends_without: u64,
    appends_with: u64,
    paced_bytes_read: u64,
}

/// A closed-segment log of keyed 1 KiB records, ~1 MiB frames.
async fn fill_keyed(p: &Partition, bytes: u64, keys: u64, dir: &Path) -> Result<(), BenchError> {
    let mut value = vec![0u8; 1024];
    fill_random(&mut value, 7);
    let ts = strom_engine::partition::now_ms();
    let mut written = 0u64;
    let mut k = 0u64;
    while written < bytes {
        let mut b = BatchBuilder::new();
        for _ in 0..1000 {
            let key = format!("key-{:08}", k % keys);
            k = k
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407)
                >> 1;
            b.push(&RecordIn {
                timestamp_ms: ts,
                key: Some(key.as_bytes()),
                value: Some(&value),
                headers: &[],
            });
        }
        let f = b.finish();
        written += f.len() as u64;
        p.append(BytesMut::from(&f[..]), Durability::Buffered)
            .await
            .map_err(eng("append", dir))?;
    }
    p.flush().await.map_err(eng("flush", dir))?;
    Ok(())
}

/// One record every millisecond with Durability::Written for `secs`;
/// latency histogram (ns) and appends.
async fn paced_appends(
    p: &Partition,
    secs: f64,
    dir: &Path,
) -> Result<(Histogram<u64>, u64), BenchError> {
    let frame = build_frame(1, 1024, 1);
    let mut hist = new_histogram()?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let due = start + Duration::from_millis(n);
        let now = Instant::now();
        if due > now {
            glommio::timer::sleep(due - now).await;
        }
        let t0 = Instant::now();
        p.append(BytesMut::from(&frame[..]), Durability::Written)
            .await
            .map_err(eng("paced append", dir))?;
        hist.saturating_record((t0.elapsed().as_nanos() as u64).max(1));
        n += 1;
    }
    Ok((hist, n))
}

fn run_cleaner(plan: &Plan) -> Result<CleanerRun, BenchError> {
    let dir = plan.part_dir("cleaner");
    let prod_dir = plan.part_dir("cleaner-producer");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&prod_dir);
    let _guard = RemoveDirOnDrop(dir.clone());
    let _guard2 = RemoveDirOnDrop(prod_dir.clone());
    let config = LogConfig {
        segment_bytes: 64 << 20,
        flush: FlushPolicy::Never,
        retention_ms: None,
        ..LogConfig::default()
    };
    let (bytes, keys, secs, rate) = (
        plan.cleaner_bytes,
        plan.cleaner_keys,
        plan.cleaner_secs,
        plan.cleaner_rate,
    );
    run_in_executor(
        plan.core,
        plan.io_memory,
        "engine cleaner",
        move || async move {
            use strom_engine::compaction::{CompactionConfig, Unthrottled};
            let ccfg = CompactionConfig {
                min_cleanable_dirty_ratio: 0.0,
                ..CompactionConfig::default()
            };
            // 1. One unthrottled pass over `bytes` of keyed records.
            let p = Partition::open(&dir, config.clone())
                .await
                .map_err(eng("open partition", &dir))?;
            fill_keyed(&p, bytes, keys, &dir).await?;
            // Roll the last data segment closed: one small append to a new one.
            let log_bytes_before = p.stats().log_bytes;
            let t0 = Instant::now();
            let run = p
                .compact(&ccfg, &mut Unthrottled)
                .await
                .map_err(eng("compact", &dir))?
                .ok_or_else(|| BenchError::Config("no compaction pass was due".into()))?;
            let pass_secs = t0.elapsed().as_secs_f64();
            let log_bytes_after = p.stats().log_bytes;
            p.close().await.map_err(eng("close", &dir))?;
            let _ = std::fs::remove_dir_all(&dir);
            // 2. Paced appends alone, then beside a paced pass over a fresh log.
            let producer = Partition::open(&prod_dir, config.clone())
                .await
                .map_err(eng("open producer partition", &prod_dir))?;
            let (without, appends_without) = paced_appends(&producer, secs, &prod_dir).await?;
            let p = Partition::open(&dir, config.clone())
                .await
                .map_err(eng("open partition", &dir))?;
            fill_keyed(&p, bytes, keys, &dir).await?;
            let cleaner = {
                let (p, dir) = (p.clone(), dir.clone());
                glommio::spawn_local(async move {
                    let mut throttle = strom_engine::RateThrottle::new(rate);
                    p.compact(&ccfg, &mut throttle)
                        .await
                        .map_err(eng("paced compact", &dir))
                })
            };
            let (with, appends_with) = paced_appends(&producer, secs, &prod_dir).await?;
            let paced = cleaner.await?;
            producer.close().await.map_err(eng("close", &prod_dir))?;
            p.close().await.map_err(eng("close", &dir))?;
            Ok(CleanerRun {
                read: Throughput {
                    bytes: run.bytes_read,
                    secs: pass_secs,
                },
                bytes_written: run.bytes_written,
                records_removed: run.records_removed,
                log_bytes_before,
                log_bytes_after,
                without: LatencySummary::from_histogram(&without, "ns").scaled(1e-3, "us"),
                with: LatencySummary::from_histogram(&with, "ns").scaled(1e-3, "us"),
                appends_without,
                appends_with,
                paced_bytes_read: paced.map_or(0, |r| r.bytes_read),
            })
        },
    )
}

// ---------------------------------------------------------------------------
// 3. Recovery after SIGKILL

/// Segment size of the recovery part: larger than the log, so the whole log
/// is one active segment and nothing but the flush policy (the checkpoint it
/// advances) bounds the recovery scan. With 1 GiB segments a roll (which
/// checkpoints) would land right at 2 GiB and hide the scan.
const CRASH_SEGMENT_BYTES: u64 = 3 * GIB;

fn crash_config(flush_ms: u64) -> LogConfig {
    LogConfig {
        segment_bytes: CRASH_SEGMENT_BYTES,
        flush: if flush_ms == 0 {
            FlushPolicy::Never
        } else {
            FlushPolicy::IntervalMs(flush_ms)
        },
        ..LogConfig::default()
    }
}

#[derive(Clone, Debug)]
struct RecoveryRun {
    flush_ms: u64,
    /// Bytes of segment files on disk after the kill.
    log_bytes: u64,
    segments: usize,
    secs: f64,
    report: RecoveryReport,
}

fn segment_bytes_on_disk(dir: &Path) -> (u64, usize) {
    let mut total = 0;
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().ends_with(".log") {
                n += 1;
                total += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    (total, n)
}

fn run_recovery(plan: &Plan, flush_ms: u64) -> Result<RecoveryRun, BenchError> {
    let dir = plan.part_dir(&format!("recovery-flush{flush_ms}"));
    let _ = std::fs::remove_dir_all(&dir);
    let _guard = RemoveDirOnDrop(dir.clone());
    let exe = std::env::current_exe().map_err(|e| BenchError::io("current_exe", "", e))?;
    let mut child = Command::new(&exe)
        .arg("engine-crash-child")
        .arg("--dir")
        .arg(&dir)
        .arg("--bytes")
        .arg(plan.recovery_bytes.to_string())
        .arg("--flush-ms")
        .arg(flush_ms.to_string())
        .arg("--core")
        .arg(plan.core.to_string())
        .arg("--io-memory")
        .arg(plan.io_memory.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| BenchError::io("spawn crash child", &exe, e))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut ready = false;
    for line in BufReader::new(stdout).lines() {
        match line {
            Ok(l) if l.trim() == "ready" => {
                ready = true;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    // SAFETY: plain libc call on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
    }
    let status = child
        .wait()
        .map_err(|e| BenchError::io("wait crash child", &exe, e))?;
    if !ready {
        return Err(BenchError::Config(format!(
            "crash child exited before \"ready\" ({status})"
        )));
    }
    let (log_bytes, segments) = segment_bytes_on_disk(&dir);
    let config = crash_config(flush_ms);
    let (secs, report) = run_in_executor(plan.core, plan.io_memory, "engine recovery", {
        let dir = dir.clone();
        move || async move {
            let start = Instant::now();
            let p = Partition::open(&dir, config)
                .await
                .map_err(eng("recover partition", &dir))?;
            let secs = start.elapsed().as_secs_f64();
            let report = p.recovery_report();
            p.close().await.map_err(eng("close", &dir))?;
            Ok((secs, report))
        }
    })?;
    Ok(RecoveryRun {
        flush_ms,
        log_bytes,
        segments,
        secs,
        report,
    })
}

/// The hidden `engine-crash-child` subcommand: appends ~1 MiB frames with
/// Durability::Written, prints "ready" after `bytes`, keeps appending until
/// killed (or a safety bound: twice `bytes` plus 1 GiB, or 60 s after ready).
pub fn crash_child(args: &CrashChildArgs) -> Result<(), BenchError> {
    // Die with the parent, so a crashed harness cannot leave a writer behind.
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let (dir, bytes) = (args.dir.clone(), args.bytes);
    let config = crash_config(args.flush_ms);
    run_in_executor(
        args.core,
        args.io_memory,
        "engine crash child",
        move || async move {
            let frame = big_frame();
            let p = Partition::open(&dir, config)
                .await
                .map_err(eng("open partition", &dir))?;
            let mut written = 0u64;
            let mut ready_at: Option<Instant> = None;
            let limit = bytes.saturating_mul(2).saturating_add(GIB);
            while written < limit && ready_at.is_none_or(|t| t.elapsed() < Duration::from_secs(60))
            {
                p.append(BytesMut::from(&frame[..]), Durability::Written)
                    .await
                    .map_err(eng("append", &dir))?;
                written += frame.len() as u64;
                if ready_at.is_none() && written >= bytes {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "ready");
                    let _ = out.flush();
                    ready_at = Some(Instant::now());
                }
            }
            Err(BenchError::Config(
                "crash child was not killed in time".into(),
            ))
        },
    )
}

// ---------------------------------------------------------------------------
// The mode

pub fn main(args: &EngineArgs) -> Result<(), BenchError> {
    let mut plan = Plan::new(args)?;
    let existed = plan.dir.exists();
    std::fs::create_dir_all(&plan.dir).map_err(|e| BenchError::io("create dir", &plan.dir, e))?;
    // The engine's directory fsync fails with EBADF on relative paths
    // (glommio `Directory::open`), so hand it an absolute one.
    let r = std::fs::canonicalize(&plan.dir)
        .map_err(|e| BenchError::io("canonicalize", &plan.dir, e))
        .and_then(|abs| {
            plan.dir = abs;
            run(&plan)
        });
    if !existed {
        let _ = std::fs::remove_dir(&plan.dir);
    }
    let report = r?;
    report.print();
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    Ok(())
}

fn gb(t: &Throughput) -> f64 {
    t.gbps()
}

fn run(plan: &Plan) -> Result<Report, BenchError> {
    let mut figures: Vec<Figure> = Vec::new();
    let mut latencies: Vec<(String, LatencySummary)> = Vec::new();
    let mut extra = serde_json::Map::new();

    if plan.append {
        // Raw baseline before and after the engine runs; the engine is judged
        // against the better of the two (the conservative ratio).
        let frame_len = big_frame().len() as u64;
        let total = plan.append_bytes.div_ceil(frame_len) * frame_len;
        let raw_bytes = total / MIB as u64 * MIB as u64;
        let raw_opts = plan.baseline_opts(raw_bytes.max(MIB as u64));
        let raw1 = baseline::run_odirect_write(&raw_opts)?;
        let seq = run_append(plan, 1)?;
        let conc = if plan.append_tasks > 1 {
            Some(run_append(plan, plan.append_tasks)?)
        } else {
            None
        };
        let raw2 = baseline::run_odirect_write(&raw_opts)?;
        let raw = if gb(&raw1) >= gb(&raw2) { raw1 } else { raw2 };
        let best = match &conc {
            Some(c) if gb(&c.throughput) > gb(&seq.throughput) => c.clone(),
            _ => seq.clone(),
        };
        let clone = clone_rate(&big_frame(), total.min(GIB));
        figures.push(Figure::new(names::ODIRECT_WRITE, gb(&raw), "GB/s"));
        figures.push(
            Figure::new("engine_append_throughput", gb(&best.throughput), "GB/s")
                .with_baseline(names::ODIRECT_WRITE, gb(&raw)),
        );
        figures.push(
            Figure::new(
                "engine_append_throughput_sequential",
                gb(&seq.throughput),
                "GB/s",
            )
            .with_baseline(names::ODIRECT_WRITE, gb(&raw)),
        );
        if let Some(c) = &conc {
            figures.push(
                Figure::new(
                    format!("engine_append_throughput_{}_tasks", c.tasks),
                    gb(&c.throughput),
                    "GB/s",
                )
                .with_baseline(names::ODIRECT_WRITE, gb(&raw)),
            );
        }
        figures.push(Figure::new("bench_frame_clone_rate", gb(&clone), "GB/s"));
        let run_json = |r: &AppendRun| {
            json!({
                "mode": r.mode(),
                "tasks": r.tasks,
                "bytes": r.throughput.bytes,
                "secs": r.throughput.secs,
                "gbps": r.throughput.gbps(),
                "appends": r.appends,
                "frame_bytes": r.frame_bytes,
                "writes": r.writes,
                "fdatasyncs": r.fdatasyncs,
            })
        };
        extra.insert(
            "append".into(),
            json!({
                "figure_mode": best.mode(),
                "raw_odirect_write_runs_gbps": [gb(&raw1), gb(&raw2)],
                "raw_bytes": raw_bytes,
                "sequential": run_json(&seq),
                "concurrent": conc.as_ref().map(run_json),
                "frame_clone_gbps": gb(&clone),
            }),
        );
        eprintln!(
            "append: figure mode = {}; raw runs {:.2} / {:.2} GB/s",
            best.mode(),
            gb(&raw1),
            gb(&raw2)
        );
    }

    if plan.durable {
        let raw = baseline::run_sync_latency(&plan.baseline_opts(MIB as u64))?;
        let d = run_durable(plan)?;
        let rate = d.records as f64 / d.secs;
        let per_sync = if d.fdatasyncs > 0 {
            d.records as f64 / d.fdatasyncs as f64
        } else {
            f64::NAN
        };
        figures.push(Figure::new(names::SYNC_4K, raw.ops_per_sec, "ops/s"));
        figures.push(Figure::new("engine_durable_appends", rate, "records/s"));
        let raw_name = format!("{}_latency", names::SYNC_4K);
        for (label, v, b) in [
            ("p50", d.latency.p50, raw.latency.p50),
            ("p99", d.latency.p99, raw.latency.p99),
            ("p99.9", d.latency.p99_9, raw.latency.p99_9),
        ] {
            figures.push(
                Figure::new(format!("engine_durable_append_latency_{label}"), v, "us")
                    .with_baseline(format!("{raw_name}_{label}"), b),
            );
        }
        figures.push(Figure::new(
            "engine_durable_fdatasyncs",
            d.fdatasyncs as f64,
            "fdatasyncs",
        ));
        figures.push(Figure::new(
            "engine_durable_records_per_fdatasync",
            per_sync,
            "records",
        ));
        latencies.push((raw_name, raw.latency.clone()));
        latencies.push(("engine_durable_append_latency".into(), d.latency.clone()));
        extra.insert(
            "durable".into(),
            json!({
                "appenders": plan.appenders,
                "records": d.records,
                "secs": d.secs,
                "records_per_sec": rate,
                "fdatasyncs": d.fdatasyncs,
                "writes": d.writes,
                "records_per_fdatasync": per_sync,
                "frame_bytes": d.frame_bytes,
            }),
        );
    }

    if plan.recovery {
        let mut variants = vec![0];
        if plan.crash_flush_ms != 0 {
            variants.push(plan.crash_flush_ms);
        }
        let mut runs = Vec::new();
        for ms in variants {
            let r = run_recovery(plan, ms)?;
            let tag = if ms == 0 {
                "flush_never".to_string()
            } else {
                format!("flush_{ms}ms")
            };
            figures.push(Figure::new(
                format!("engine_recovery_time_{tag}"),
                r.secs,
                "s",
            ));
            figures.push(Figure::new(
                format!("engine_recovery_log_size_{tag}"),
                r.log_bytes as f64 / GIB as f64,
                "GiB",
            ));
            figures.push(Figure::new(
                format!("engine_recovery_scanned_{tag}"),
                r.report.scanned_bytes as f64 / MIB as f64,
                "MiB",
            ));
            figures.push(Figure::new(
                format!("engine_recovery_truncated_{tag}"),
                r.report.truncated_bytes as f64,
                "bytes",
            ));
            runs.push(json!({
                "flush": if r.flush_ms == 0 { "never".to_string() } else { format!("interval {} ms", r.flush_ms) },
                "secs": r.secs,
                "log_bytes": r.log_bytes,
                "segments": r.segments,
                "clean_shutdown": r.report.clean_shutdown,
                "scanned_bytes": r.report.scanned_bytes,
                "truncated_bytes": r.report.truncated_bytes,
                "trimmed_zero_bytes": r.report.trimmed_zero_bytes,
                "truncation_reason": r.report.truncation_reason,
                "rebuilt_indexes": r.report.rebuilt_indexes,
                "removed_segments": r.report.removed_segments,
            }));
        }
        extra.insert("recovery".into(), json!(runs));
    }

    if plan.cleaner {
        let raw_opts =
            plan.baseline_opts((plan.cleaner_bytes / MIB as u64 * MIB as u64).max(MIB as u64));
        let (_, raw_read) = baseline::run_odirect_write_read(&raw_opts)?;
        let c = run_cleaner(plan)?;
        figures.push(Figure::new(names::ODIRECT_READ, gb(&raw_read), "GB/s"));
        figures.push(
            Figure::new("engine_cleaner_read_throughput", gb(&c.read), "GB/s")
                .with_baseline(names::ODIRECT_READ, gb(&raw_read)),
        );
        figures.push(Figure::new(
            "engine_cleaner_records_removed",
            c.records_removed as f64,
            "records",
        ));
        for (label, without, with) in [
            ("p50", c.without.p50, c.with.p50),
            ("p99", c.without.p99, c.with.p99),
            ("p99.9", c.without.p99_9, c.with.p99_9),
        ] {
            figures.push(
                Figure::new(
                    format!("engine_append_latency_with_cleaner_{label}"),
                    with,
                    "us",
                )
                .with_baseline(
                    format!("engine_append_latency_without_cleaner_{label}"),
                    without,
                ),
            );
        }
        latencies.push((
            "engine_append_latency_without_cleaner".into(),
            c.without.clone(),
        ));
        latencies.push(("engine_append_latency_with_cleaner".into(), c.with.clone()));
        extra.insert(
            "cleaner".into(),
            json!({
                "bytes": plan.cleaner_bytes,
                "keys": plan.cleaner_keys,
                "log_bytes_before": c.log_bytes_before,
                "log_bytes_after": c.log_bytes_after,
                "pass_bytes_read": c.read.bytes,
                "pass_secs": c.read.secs,
                "pass_bytes_written": c.bytes_written,
                "records_removed": c.records_removed,
                "raw_odirect_read_gbps": gb(&raw_read),
                "paced_rate_bytes_per_sec": plan.cleaner_rate,
                "paced_secs": plan.cleaner_secs,
                "paced_pass_bytes_read": c.paced_bytes_read,
                "appends_without": c.appends_without,
                "appends_with": c.appends_with,
            }),
        );
    }

    let mut params = plan.to_json();
    if let Some(obj) = params.as_object_mut() {
        obj.insert("results".into(), serde_json::Value::Object(extra));
    }
    let mut report = Report::new("engine", params);
    for f in figures {
        report.add_figure(f);
    }
    for (n, l) in latencies {
        report.add_latency(n, l);
    }
    Ok(report)
}
