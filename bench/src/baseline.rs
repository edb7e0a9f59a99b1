//! `strom-bench baseline`: this machine's raw limits, measured in the same run
//! as the figures they judge.
//!
//! * raw O_DIRECT sequential write and read (glommio `DmaFile`, 1 MiB, depth 8),
//!   the ceiling for the engine's append and fetch paths;
//! * raw 4 KiB write + fdatasync latency, one at a time, the floor for durable acks;
//! * raw loopback TCP, one stream, 128 KiB writes (the headline, as iperf3) and
//!   1 MiB writes (the ceiling), the ceiling for network paths.
//!
//! [`run_baseline`] runs them all; the `run_*` functions run one part each, so
//! another mode can take only the baselines it needs.

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Once;
use std::thread;
use std::time::{Duration, Instant};

use glommio::io::{DmaBuffer, DmaFile, OpenOptions};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::report::{BenchError, Figure, LatencySummary, Report};

const MIB: usize = 1 << 20;

/// Options of the baseline measurements (also the `baseline` subcommand's flags).
#[derive(clap::Args, Clone, Debug)]
pub struct BaselineOpts {
    /// Directory for the temporary data files (created if missing; files removed afterwards).
    #[arg(long, default_value = "./bench-data")]
    pub dir: PathBuf,
    /// Bytes written then read by the O_DIRECT sequential baselines.
    #[arg(long, default_value_t = 1 << 30)]
    pub bytes: u64,
    /// Block size of the O_DIRECT sequential baselines.
    #[arg(long, default_value_t = MIB)]
    pub block_size: usize,
    /// I/Os kept in flight by the O_DIRECT sequential baselines.
    #[arg(long, default_value_t = 8)]
    pub depth: usize,
    /// Number of 4 KiB write + fdatasync pairs timed one at a time.
    #[arg(long, default_value_t = 2000)]
    pub sync_ops: u64,
    /// Seconds each loopback TCP baseline runs.
    #[arg(long, default_value_t = 3.0)]
    pub tcp_secs: f64,
    /// Core ids to use (comma separated; default all). Glommio runs on the first;
    /// the TCP sink runs on the first and the sender on the second.
    #[arg(long, value_delimiter = ',')]
    pub cores: Vec<usize>,
    /// Memory glommio registers with io_uring per executor (needs RLIMIT_MEMLOCK).
    #[arg(long, default_value_t = 4 * MIB)]
    pub io_memory: usize,
}

impl Default for BaselineOpts {
    fn default() -> Self {
        BaselineOpts {
            dir: PathBuf::from("./bench-data"),
            bytes: 1 << 30,
            block_size: MIB,
            depth: 8,
            sync_ops: 2000,
            tcp_secs: 3.0,
            cores: Vec::new(),
            io_memory: 4 * MIB,
        }
    }
}

impl BaselineOpts {
    /// The options as a JSON object, for a report's parameters.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "dir": self.dir.display().to_string(),
            "bytes": self.bytes,
            "block_size": self.block_size,
            "depth": self.depth,
            "sync_ops": self.sync_ops,
            "tcp_secs": self.tcp_secs,
            "cores": self.cores,
            "io_memory": self.io_memory,
        })
    }

    /// The cores to use: `--cores` checked against the machine's, or all of them.
    pub fn resolve_cores(&self) -> Result<Vec<usize>, BenchError> {
        let available: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        if self.cores.is_empty() {
            return Ok(if available.is_empty() {
                vec![0]
            } else {
                available
            });
        }
        for c in &self.cores {
            if !available.is_empty() && !available.contains(c) {
                return Err(BenchError::Config(format!(
                    "core {c} is not available (available: {available:?})"
                )));
            }
        }
        Ok(self.cores.clone())
    }
}

/// A transfer of `bytes` in `secs`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Throughput {
    pub bytes: u64,
    pub secs: f64,
}

impl Throughput {
    /// 10^9 bytes per second.
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e9
    }
    /// 2^20 bytes per second.
    pub fn mibps(&self) -> f64 {
        self.bytes as f64 / self.secs / MIB as f64
    }
}

/// 4 KiB write + fdatasync pairs, one at a time.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncLatency {
    /// Per pair, in microseconds.
    pub latency: LatencySummary,
    pub ops_per_sec: f64,
}

/// The disk baselines.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskBaselines {
    pub write: Throughput,
    pub read: Throughput,
    pub sync: SyncLatency,
}

/// All baselines of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct BaselineResults {
    pub odirect_write_gbps: f64,
    pub odirect_write_mibps: f64,
    pub odirect_read_gbps: f64,
    /// 4 KiB write + fdatasync, in microseconds.
    pub sync_latency: LatencySummary,
    pub sync_ops_per_sec: f64,
    pub tcp_128k_gbps: f64,
    pub tcp_1m_gbps: f64,
}

/// Names of the baseline figures, for other modes' `Figure::with_baseline`.
#[allow(dead_code)] // used by the engine mode
pub mod names {
    pub const ODIRECT_WRITE: &str = "raw_odirect_write";
    pub const ODIRECT_READ: &str = "raw_odirect_read";
    pub const SYNC_4K: &str = "raw_write4k_fdatasync";
    pub const TCP_128K: &str = "raw_tcp_loopback_128k";
    pub const TCP_1M: &str = "raw_tcp_loopback_1m";
}

impl BaselineResults {
    /// The figures, in GB/s (and MiB/s, ops/s), without baselines of their own.
    pub fn figures(&self) -> Vec<Figure> {
        vec![
            Figure::new(names::ODIRECT_WRITE, self.odirect_write_gbps, "GB/s"),
            Figure::new("raw_odirect_write_mib", self.odirect_write_mibps, "MiB/s"),
            Figure::new(names::ODIRECT_READ, self.odirect_read_gbps, "GB/s"),
            Figure::new(names::SYNC_4K, self.sync_ops_per_sec, "ops/s"),
            Figure::new(names::TCP_128K, self.tcp_128k_gbps, "GB/s"),
            Figure::new(names::TCP_1M, self.tcp_1m_gbps, "GB/s"),
        ]
    }

    /// Adds the figures and the sync latency summary to `report`.
    pub fn add_to(&self, report: &mut Report) {
        for f in self.figures() {
            report.add_figure(f);
        }
        report.add_latency(
            format!("{}_latency", names::SYNC_4K),
            self.sync_latency.clone(),
        );
    }
}

/// Runs every baseline: disk first (write, read, sync latency), then loopback TCP.
pub fn run_baseline(opts: &BaselineOpts) -> Result<BaselineResults, BenchError> {
    // Check the options every part needs before spending time on the disk.
    opts.resolve_cores()?;
    DiskParams::new(opts)?;
    if !(opts.tcp_secs.is_finite() && opts.tcp_secs > 0.0) {
        return Err(BenchError::Config(format!(
            "--tcp-secs {} must be positive",
            opts.tcp_secs
        )));
    }
    let disk = run_disk_baselines(opts)?;
    let tcp_128k = run_tcp_loopback(opts, 128 * 1024)?;
    let tcp_1m = run_tcp_loopback(opts, MIB)?;
    Ok(BaselineResults {
        odirect_write_gbps: disk.write.gbps(),
        odirect_write_mibps: disk.write.mibps(),
        odirect_read_gbps: disk.read.gbps(),
        sync_latency: disk.sync.latency,
        sync_ops_per_sec: disk.sync.ops_per_sec,
        tcp_128k_gbps: tcp_128k.gbps(),
        tcp_1m_gbps: tcp_1m.gbps(),
    })
}

/// The three disk baselines, in one glommio executor.
pub fn run_disk_baselines(opts: &BaselineOpts) -> Result<DiskBaselines, BenchError> {
    let p = DiskParams::new(opts)?;
    with_data_dir(&opts.dir, || {
        run_in_executor(opts, "disk baselines", move || async move {
            let (write, read, _) = seq_write_read(&p, true).await?;
            let sync = sync_latency(&p).await?;
            Ok(DiskBaselines {
                write,
                read: read.unwrap_or(write),
                sync,
            })
        })
    })
}

/// Raw O_DIRECT sequential write only (file removed afterwards).
#[allow(dead_code)] // used by the engine mode
pub fn run_odirect_write(opts: &BaselineOpts) -> Result<Throughput, BenchError> {
    let p = DiskParams::new(opts)?;
    with_data_dir(&opts.dir, || {
        run_in_executor(opts, "O_DIRECT write", move || async move {
            Ok(seq_write_read(&p, false).await?.0)
        })
    })
}

/// Raw O_DIRECT sequential write: throughput and the latency of each write
/// (`--block` bytes, `--depth` in flight), the device's own tail under a
/// sustained write (file removed afterwards).
pub fn run_odirect_write_latency(
    opts: &BaselineOpts,
) -> Result<(Throughput, LatencySummary), BenchError> {
    let p = DiskParams::new(opts)?;
    with_data_dir(&opts.dir, || {
        run_in_executor(opts, "O_DIRECT write latency", move || async move {
            let (w, _, latency) = seq_write_read(&p, false).await?;
            Ok((w, latency))
        })
    })
}

/// Raw O_DIRECT sequential write, then read of the same file.
#[allow(dead_code)] // used by the engine mode
pub fn run_odirect_write_read(opts: &BaselineOpts) -> Result<(Throughput, Throughput), BenchError> {
    let p = DiskParams::new(opts)?;
    with_data_dir(&opts.dir, || {
        run_in_executor(opts, "O_DIRECT write+read", move || async move {
            let (w, r, _) = seq_write_read(&p, true).await?;
            Ok((w, r.unwrap_or(w)))
        })
    })
}

/// Raw 4 KiB write + fdatasync latency, one pair at a time.
#[allow(dead_code)] // used by the engine mode
pub fn run_sync_latency(opts: &BaselineOpts) -> Result<SyncLatency, BenchError> {
    let p = DiskParams::new(opts)?;
    with_data_dir(&opts.dir, || {
        run_in_executor(opts, "4 KiB write+fdatasync", move || async move {
            sync_latency(&p).await
        })
    })
}

/// The `baseline` subcommand: runs, prints, optionally writes JSON.
#[derive(clap::Args, Clone, Debug)]
pub struct BaselineArgs {
    #[command(flatten)]
    pub opts: BaselineOpts,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn main(args: &BaselineArgs) -> Result<(), BenchError> {
    let results = run_baseline(&args.opts)?;
    let mut params = args.opts.to_json();
    if let Some(obj) = params.as_object_mut() {
        obj.insert("cores".into(), json!(args.opts.resolve_cores()?));
    }
    let mut report = Report::new("baseline", params);
    results.add_to(&mut report);
    report.print();
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Memlock and executors

static MEMLOCK: Once = Once::new();

/// Raises RLIMIT_MEMLOCK to unlimited when root; otherwise warns (once) if the
/// limit is below what glommio's registered `io_memory` needs.
pub fn ensure_memlock(io_memory: usize) {
    MEMLOCK.call_once(|| {
        // Ring memory comes on top of io_memory; ask for a margin.
        let need = (io_memory as libc::rlim_t).saturating_add(4 * MIB as libc::rlim_t);
        let set = |cur: libc::rlim_t, max: libc::rlim_t| {
            let l = libc::rlimit {
                rlim_cur: cur,
                rlim_max: max,
            };
            // SAFETY: plain libc call on a stack rlimit.
            unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &l) == 0 }
        };
        let get = || {
            let mut l = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: plain libc call filling a stack rlimit.
            (unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut l) } == 0).then_some(l)
        };
        // SAFETY: geteuid has no preconditions.
        let is_root = unsafe { libc::geteuid() } == 0;
        let mut raise_err = None;
        if is_root && !set(libc::RLIM_INFINITY, libc::RLIM_INFINITY) {
            // Root without CAP_SYS_RESOURCE (e.g. in a container) cannot pass the hard limit.
            raise_err = Some(std::io::Error::last_os_error());
        }
        let Some(lim) = get() else { return };
        if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < need {
            // Take what the hard limit allows.
            set(lim.rlim_max, lim.rlim_max);
        }
        let Some(lim) = get() else { return };
        if lim.rlim_cur == libc::RLIM_INFINITY || lim.rlim_cur >= need {
            return;
        }
        let why = match raise_err {
            Some(e) => format!("running as root but raising it to unlimited failed ({e})"),
            None => "not running as root".to_string(),
        };
        eprintln!(
            "warning: RLIMIT_MEMLOCK is {} bytes and {why}; glommio registers io_memory \
             ({io_memory} bytes) plus its rings with io_uring and needs about {need} bytes. \
             Raise it (`ulimit -l unlimited`, memlock in /etc/security/limits.conf, \
             LimitMEMLOCK= in systemd), lower --io-memory, or run as root.",
            lim.rlim_cur
        );
    });
}

/// Runs `make()`'s future on a fresh glommio executor pinned to the first core.
fn run_in_executor<G, F, T>(opts: &BaselineOpts, op: &'static str, make: G) -> Result<T, BenchError>
where
    G: FnOnce() -> F + Send + 'static,
    F: std::future::Future<Output = Result<T, BenchError>> + 'static,
    T: Send + 'static,
{
    ensure_memlock(opts.io_memory);
    let core = opts.resolve_cores()?[0];
    let handle = LocalExecutorBuilder::new(Placement::Fixed(core))
        .name("strom-bench-baseline")
        .io_memory(opts.io_memory)
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

/// Creates the data directory if needed and removes it afterwards if it was
/// created here and is empty.
fn with_data_dir<T>(
    dir: &Path,
    f: impl FnOnce() -> Result<T, BenchError>,
) -> Result<T, BenchError> {
    let existed = dir.exists();
    std::fs::create_dir_all(dir).map_err(|e| BenchError::io("create dir", dir, e))?;
    let r = f();
    if !existed {
        let _ = std::fs::remove_dir(dir);
    }
    r
}

/// Removes the file on drop (also on error paths).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Disk

#[derive(Clone, Debug)]
struct DiskParams {
    dir: PathBuf,
    bytes: u64,
    block: usize,
    depth: usize,
    sync_ops: u64,
}

impl DiskParams {
    fn new(o: &BaselineOpts) -> Result<Self, BenchError> {
        if o.block_size == 0 || o.block_size & 4095 != 0 {
            return Err(BenchError::Config(format!(
                "--block-size {} must be a positive multiple of 4096",
                o.block_size
            )));
        }
        let bytes = o.bytes / o.block_size as u64 * o.block_size as u64;
        if bytes == 0 {
            return Err(BenchError::Config(format!(
                "--bytes {} is smaller than one block ({})",
                o.bytes, o.block_size
            )));
        }
        if o.depth == 0 || o.sync_ops == 0 {
            return Err(BenchError::Config(
                "--depth and --sync-ops must be positive".into(),
            ));
        }
        Ok(DiskParams {
            dir: o.dir.clone(),
            bytes,
            block: o.block_size,
            depth: o.depth,
            sync_ops: o.sync_ops,
        })
    }

    fn file(&self, kind: &str) -> PathBuf {
        self.dir
            .join(format!("strom-bench-{}-{kind}.dat", std::process::id()))
    }
}

/// Fills a buffer with pseudo-random bytes (so no layer can elide zeros).
fn fill_random(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Makes glommio's per-thread iopoll probe for `dir`'s device give the right answer.
///
/// glommio 0.9 decides, on the first `DmaFile` opened on a device in each
/// executor thread, whether to use the IOPOLL ring, by reading the file's first
/// block and treating `ENOTSUP` as "no iopoll". On a new, empty file that read
/// hits EOF and succeeds without reaching the device, so glommio caches "iopoll
/// supported"; later reads on a device without poll queues (this virtio disk)
/// then fail with `EOPNOTSUPP`, and writes go through the poll ring. Opening a
/// file that holds one real block first makes the probe honest.
async fn prime_iopoll_probe(dir: &Path) -> Result<(), BenchError> {
    let path = dir.join(format!("strom-bench-{}-probe.dat", std::process::id()));
    let _guard = RemoveOnDrop(path.clone());
    std::fs::write(&path, vec![0x5Au8; 4096]).map_err(|e| BenchError::io("write", &path, e))?;
    let f = DmaFile::open(&path)
        .await
        .map_err(|e| BenchError::io("open O_DIRECT (iopoll probe)", &path, e))?;
    f.close()
        .await
        .map_err(|e| BenchError::io("close", &path, e))?;
    Ok(())
}

async fn create_dma(path: &Path) -> Result<DmaFile, BenchError> {
    if let Some(dir) = path.parent() {
        prime_iopoll_probe(dir).await?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(path)
        .await
        .map_err(|e| BenchError::io("open O_DIRECT", path, e))
}

/// Writes `p.bytes` in `p.block` writes with `p.depth` in flight, then one
/// fdatasync (timed); then, if `read`, reads the file back the same way.
/// The file is fallocated first (untimed), as fio does by default.
/// Sequential O_DIRECT writes of the whole file (`p.depth` in flight),
/// then optionally reads; also the latency of each write.
async fn seq_write_read(
    p: &DiskParams,
    read: bool,
) -> Result<(Throughput, Option<Throughput>, LatencySummary), BenchError> {
    let path = p.file("seq");
    let _guard = RemoveOnDrop(path.clone());
    let file = Rc::new(create_dma(&path).await?);
    file.pre_allocate(p.bytes, false)
        .await
        .map_err(|e| BenchError::io("fallocate", &path, e))?;

    // One reusable buffer per in-flight write.
    let bufs: Vec<Rc<DmaBuffer>> = (0..p.depth)
        .map(|i| {
            let mut b = file.alloc_dma_buffer(p.block);
            fill_random(b.as_bytes_mut(), 0x9E37_79B9_7F4A_7C15 ^ i as u64);
            Rc::new(b)
        })
        .collect();

    let next = Rc::new(Cell::new(0u64));
    let hist = Rc::new(std::cell::RefCell::new(
        Histogram::<u64>::new(3).map_err(|e| BenchError::Config(e.to_string()))?,
    ));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(p.depth);
    for buf in bufs {
        let (file, next, path, hist) = (file.clone(), next.clone(), path.clone(), hist.clone());
        let (total, block) = (p.bytes, p.block);
        tasks.push(glommio::spawn_local(async move {
            loop {
                let off = next.get();
                if off >= total {
                    return Ok(());
                }
                next.set(off + block as u64);
                let began = Instant::now();
                let n = file
                    .write_rc_at(buf.clone(), off)
                    .await
                    .map_err(|e| BenchError::io("write O_DIRECT", &path, e))?;
                let _ = hist
                    .borrow_mut()
                    .record(began.elapsed().as_nanos().max(1) as u64);
                if n != block {
                    return Err(BenchError::Short {
                        op: "write O_DIRECT",
                        path: path.clone(),
                        offset: off,
                        got: n,
                        want: block,
                    });
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    file.fdatasync()
        .await
        .map_err(|e| BenchError::io("fdatasync", &path, e))?;
    let write = Throughput {
        bytes: p.bytes,
        secs: start.elapsed().as_secs_f64(),
    };

    let read = if read {
        let next = Rc::new(Cell::new(0u64));
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(p.depth);
        for _ in 0..p.depth {
            let (file, next, path) = (file.clone(), next.clone(), path.clone());
            let (total, block) = (p.bytes, p.block);
            tasks.push(glommio::spawn_local(async move {
                loop {
                    let off = next.get();
                    if off >= total {
                        return Ok(());
                    }
                    next.set(off + block as u64);
                    let r = file
                        .read_at_aligned(off, block)
                        .await
                        .map_err(|e| BenchError::io("read O_DIRECT", &path, e))?;
                    if r.len() != block {
                        return Err(BenchError::Short {
                            op: "read O_DIRECT",
                            path: path.clone(),
                            offset: off,
                            got: r.len(),
                            want: block,
                        });
                    }
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        Some(Throughput {
            bytes: p.bytes,
            secs: start.elapsed().as_secs_f64(),
        })
    } else {
        None
    };

    drop(file); // closes the fd; the guard removes the file
    let latency = LatencySummary::from_histogram(&hist.borrow(), "ns").scaled(1e-3, "us");
    Ok((write, read, latency))
}

/// `p.sync_ops` pairs of (4 KiB O_DIRECT write at the next 4 KiB position,
/// fdatasync), one at a time, over a fallocated file.
async fn sync_latency(p: &DiskParams) -> Result<SyncLatency, BenchError> {
    const BLOCK: usize = 4096;
    let path = p.file("sync");
    let _guard = RemoveOnDrop(path.clone());
    let file = Rc::new(create_dma(&path).await?);
    file.pre_allocate(p.sync_ops * BLOCK as u64, false)
        .await
        .map_err(|e| BenchError::io("fallocate", &path, e))?;
    let mut buf = file.alloc_dma_buffer(BLOCK);
    fill_random(buf.as_bytes_mut(), 0xD1B5_4A32_D192_ED03);
    let buf = Rc::new(buf);

    // 1 ns .. 60 s, 3 significant digits.
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| BenchError::Config(format!("histogram: {e}")))?;
    let start = Instant::now();
    for i in 0..p.sync_ops {
        let off = i * BLOCK as u64;
        let t0 = Instant::now();
        let n = file
            .write_rc_at(buf.clone(), off)
            .await
            .map_err(|e| BenchError::io("write O_DIRECT", &path, e))?;
        if n != BLOCK {
            return Err(BenchError::Short {
                op: "write O_DIRECT",
                path: path.clone(),
                offset: off,
                got: n,
                want: BLOCK,
            });
        }
        file.fdatasync()
            .await
            .map_err(|e| BenchError::io("fdatasync", &path, e))?;
        let ns = (t0.elapsed().as_nanos() as u64).max(1);
        hist.saturating_record(ns);
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(SyncLatency {
        latency: LatencySummary::from_histogram(&hist, "ns").scaled(1e-3, "us"),
        ops_per_sec: p.sync_ops as f64 / secs,
    })
}

// ---------------------------------------------------------------------------
// Loopback TCP

fn pin(core: usize) {
    // Best effort: an unpinned run is still a measurement.
    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: core });
}

/// One loopback TCP stream for `opts.tcp_secs`: a sink thread that only counts
/// bytes and a sender thread writing `write_size` bytes at a time, pinned to
/// different cores when there are two. Blocking std sockets, default buffers,
/// Nagle on. Throughput = bytes received / (first write .. EOF at the sink).
pub fn run_tcp_loopback(opts: &BaselineOpts, write_size: usize) -> Result<Throughput, BenchError> {
    let duration = match Duration::try_from_secs_f64(opts.tcp_secs) {
        Ok(d) if write_size > 0 && !d.is_zero() => d,
        _ => {
            return Err(BenchError::Config(format!(
                "TCP write size ({write_size}) and --tcp-secs ({}) must be positive",
                opts.tcp_secs
            )))
        }
    };
    let cores = opts.resolve_cores()?;
    let sink_core = cores[0];
    let send_core = cores[1 % cores.len()];

    let (listener, addr) = bind_loopback()?;
    let addr_s = addr.to_string();

    let sink = {
        let a = addr_s.clone();
        thread::Builder::new()
            .name("tcp-sink".into())
            .spawn(move || -> Result<(u64, Instant), BenchError> {
                pin(sink_core);
                let net = |op, source| BenchError::Net {
                    op,
                    addr: a.clone(),
                    source,
                };
                let (mut s, _) = listener.accept().map_err(|e| net("accept", e))?;
                let mut buf = vec![0u8; write_size];
                let mut total = 0u64;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => return Ok((total, Instant::now())),
                        Ok(n) => total += n as u64,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(net("read", e)),
                    }
                }
            })
            .map_err(|source| BenchError::Net {
                op: "spawn sink thread",
                addr: addr_s.clone(),
                source,
            })?
    };

    let sender = {
        let a = addr_s.clone();
        thread::Builder::new()
            .name("tcp-send".into())
            .spawn(move || -> Result<Instant, BenchError> {
                pin(send_core);
                let net = |op, source| BenchError::Net {
                    op,
                    addr: a.clone(),
                    source,
                };
                let mut s = TcpStream::connect(addr).map_err(|e| net("connect", e))?;
                let mut buf = vec![0u8; write_size];
                fill_random(&mut buf, 0x2545_F491_4F6C_DD1D);
                let start = Instant::now();
                let deadline = start + duration;
                while Instant::now() < deadline {
                    s.write_all(&buf).map_err(|e| net("write", e))?;
                }
                s.shutdown(Shutdown::Write)
                    .map_err(|e| net("shutdown", e))?;
                Ok(start)
            })
            .map_err(|source| BenchError::Net {
                op: "spawn sender thread",
                addr: addr_s.clone(),
                source,
            })?
    };

    let sent = sender
        .join()
        .map_err(|_| BenchError::ThreadPanic { name: "tcp-send" });
    // If the sender failed before connecting, unblock the sink's accept.
    if !matches!(sent, Ok(Ok(_))) {
        let _ = TcpStream::connect(addr);
    }
    let received = sink
        .join()
        .map_err(|_| BenchError::ThreadPanic { name: "tcp-sink" })?;
    let start = sent??;
    let (bytes, end) = received?;
    Ok(Throughput {
        bytes,
        secs: end.duration_since(start).as_secs_f64(),
    })
}

/// A listener on a free loopback port, and its address.
fn bind_loopback() -> Result<(TcpListener, std::net::SocketAddr), BenchError> {
    let net = |op: &'static str, source: std::io::Error| BenchError::Net {
        op,
        addr: "127.0.0.1:0".into(),
        source,
    };
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| net("bind", e))?;
    let addr = listener.local_addr().map_err(|e| net("local_addr", e))?;
    Ok((listener, addr))
}

/// The e2e baseline: what loopback TCP alone does to a message's latency on
/// this machine right now. A sender writes `message_bytes` messages on an
/// open-loop schedule of `rate` per second (each stamped with its intended
/// send time, as the e2e producer stamps records), a relay thread copies the
/// byte stream to a second connection (a broker that does nothing), and a
/// receiver records intended-time-to-arrival, for `opts.tcp_secs`.
pub fn run_tcp_relay_latency(
    opts: &BaselineOpts,
    rate: f64,
    message_bytes: usize,
) -> Result<LatencySummary, BenchError> {
    if rate.is_nan()
        || rate <= 0.0
        || message_bytes < 8
        || opts.tcp_secs.is_nan()
        || opts.tcp_secs <= 0.0
    {
        return Err(BenchError::Config(format!(
            "relay baseline: rate {rate}, message {message_bytes} B, {} s",
            opts.tcp_secs
        )));
    }
    let cores = opts.resolve_cores()?;
    let relay_core = cores[0];
    let client_core = cores[1 % cores.len()];
    let net = |op: &'static str, source: std::io::Error| BenchError::Net {
        op,
        addr: "127.0.0.1".into(),
        source,
    };
    let (l_in, a_in) = bind_loopback()?;
    let (l_out, a_out) = bind_loopback()?;
    let base = Instant::now();
    let total = (rate * opts.tcp_secs).ceil() as u64;
    let relay = thread::Builder::new()
        .name("tcp-relay".into())
        .spawn(move || -> std::io::Result<()> {
            pin(relay_core);
            let (mut from, _) = l_in.accept()?;
            let mut to = TcpStream::connect(a_out)?;
            to.set_nodelay(true)?;
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = from.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                to.write_all(&buf[..n])?;
            }
        })
        .map_err(|e| BenchError::io("spawn thread", "tcp-relay", e))?;
    let sender = thread::Builder::new()
        .name("tcp-relay-send".into())
        .spawn(move || -> std::io::Result<()> {
            pin(client_core);
            let mut s = TcpStream::connect(a_in)?;
            s.set_nodelay(true)?;
            let mut msg = vec![0u8; message_bytes];
            let period_ns = 1e9 / rate;
            for n in 0..total {
                let due_ns = (n as f64 * period_ns) as u64;
                let now_ns = base.elapsed().as_nanos() as u64;
                if due_ns > now_ns {
                    thread::sleep(Duration::from_nanos(due_ns - now_ns));
                }
                msg[..8].copy_from_slice(&due_ns.to_le_bytes());
                s.write_all(&msg)?;
            }
            s.shutdown(Shutdown::Write)
        })
        .map_err(|e| BenchError::io("spawn thread", "tcp-relay-send", e))?;
    pin(client_core);
    let (mut sink, _) = l_out.accept().map_err(|e| net("accept", e))?;
    let mut hist = Histogram::<u64>::new(3).map_err(|e| BenchError::Config(e.to_string()))?;
    let mut msg = vec![0u8; message_bytes];
    for _ in 0..total {
        sink.read_exact(&mut msg).map_err(|e| net("read", e))?;
        let now_ns = base.elapsed().as_nanos() as u64;
        let mut stamp = [0u8; 8];
        stamp.copy_from_slice(&msg[..8]);
        let _ = hist.record(now_ns.saturating_sub(u64::from_le_bytes(stamp)).max(1));
    }
    let joined = |h: thread::JoinHandle<std::io::Result<()>>, what: &'static str| match h.join() {
        Ok(r) => r.map_err(|e| net(what, e)),
        Err(_) => Err(BenchError::Config(format!("{what} thread panicked"))),
    };
    joined(sender, "relay send")?;
    joined(relay, "relay")?;
    Ok(LatencySummary::from_histogram(&hist, "ns").scaled(1e-3, "us"))
}
