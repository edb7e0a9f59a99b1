//! `requests`: many small produce requests from one event-loop thread, to
//! measure what the server spends per request rather than per byte.
//!
//! One thread, pinned to `--client-core` (default: the last core), drives
//! `--connections` non-blocking TCP connections through one level-triggered
//! `epoll` loop (raw `libc::epoll`; nothing else is needed). Each connection
//! keeps `--depth` produce requests (native protocol) of
//! `--records-per-request` records (default one) in flight:
//! request *k* of a connection is built once, with correlation id *k*, and
//! re-sent the moment its answer arrives (closed loop, no allocation per
//! request on the client). With `--acks none` the server does not answer;
//! the loop then re-queues the `--depth` requests each time its write buffer
//! has drained, and counts requests once written.
//!
//! Placement: the server accepts each connection on whichever shard the
//! kernel's SO_REUSEPORT hash picks. A server that announces per-shard
//! ports (`shard_ports` in `ApiVersions`) names the serving shard in every
//! handshake (`shard_id`), and the bench reads it there. Otherwise (an
//! older server, or `--shard-ports off`; `shard_id` then reads 0 either
//! way) the bench derives it without help from the server: it opens
//! connections one at a time and reads `strom_connections_open{shard=..}`
//! from the server's `/metrics` before and after each handshake; the shard
//! whose gauge rose accepted it. Partition owners come from
//! `DescribeTopics` (`owner_shard`). `local` then sends only to partitions
//! of the accepting shard, `forwarded` only to partitions of another shard,
//! `any` to all.
//!
//! Same-run baseline (before the server starts): the same event loop, the
//! same connections x depth and the same request bytes against a trivial
//! responder thread (pinned to `--responder-core`, default the first core,
//! where shard 0 runs) that frames each request, reads its correlation id
//! and writes back a pre-encoded produce answer of the server's shape. Every
//! server figure is printed as a ratio of that ping-pong: requests/s,
//! latency percentiles, CPU per request (server vs responder, client vs
//! client).
//!
//! Invariants: a slot has exactly one request in flight (acks != none); an
//! answer whose correlation id is not a slot, or that carries an error,
//! fails the run with the connection's index and shard.
//!
//! Open loop (`--rate R`): the same loop and connections, but requests go
//! out on a fixed schedule instead of when answers come back. Connection
//! *i* of *n* sends request *k* at `start + (i / n + k) * interval`, with
//! `interval = n * records_per_request / R` (so the connections together
//! send R records/s, their requests evenly interleaved), whether or not
//! earlier requests were answered. A timerfd wakes the loop at the next due
//! time, the next second boundary or the end (no polling). Each request of
//! a connection carries one `--records-per-request` frame to the one
//! partition the connection was given (connections spread evenly over the
//! partitions that `--placement` allows). Latency runs from the *scheduled*
//! time to the answer (no coordinated omission: a late client or a slow
//! server both count). Bounded: a connection holds at most
//! `outstanding_cap` requests outstanding (at most [`OUTSTANDING_MAX`] and
//! [`OUTSTANDING_BYTES_MAX`] over all connections); a request due beyond
//! that is not sent and counted as missed, and the schedule goes on. A
//! produce error answer is counted; a connection that fails (read or write
//! error, peer closed, an answer that does not decode or matches no
//! request) is counted, dropped, and its later requests counted as down.
//! After the measured window the loop waits at most [`DRAIN_MS`] for the
//! answers still outstanding; those still missing are recorded at their
//! age then (a lower bound) and counted as unanswered. Nothing here waits
//! on the server, so a stalled server cannot stretch the run. The per-second
//! series (records completed by answer time, p99 of the answers in that
//! second) is printed as a text chart, written to `--json`, and drawn with
//! `--plot FILE.svg`.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use strom_client::Client;
use strom_flatbuffers::protocol::{
    announced_len, decode_response, encode_request, encode_response, peek_correlation_id,
    peek_message, ApiVersionsRequest, ApiVersionsResponse, ErrorCode, ProduceBatch, ProduceRequest,
    ProduceResponse, ProduceResult, RequestBody, ResponseBody, MESSAGE_BYTES_MAX,
    PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN,
};
use strom_flatbuffers::{BatchBuilder, RecordIn};

use crate::load::{clock_ns, cpu_secs, loadavg, new_hist, pin_thread, AcksArg};
use crate::produce::Rng;
use crate::report::{fmt_value, write_json_value, BenchError, Figure, LatencySummary, Report};
use crate::spawn::SpawnArgs;

/// Most connections one run opens (one epoll loop drives them all).
pub const CONNECTIONS_MAX: usize = 4096;
/// Most requests in flight per connection (the server's own limit, from
/// its `ApiVersions` answer, may be lower and is checked too).
pub const DEPTH_MAX: usize = 1024;
/// Largest record value.
pub const MESSAGE_SIZE_MAX: usize = 1 << 20;
/// Largest answer the loop accepts (a one-record produce answer is ~100 B).
const RESPONSE_BYTES_MAX: usize = 1 << 20;
/// Events taken from epoll per wait.
const EPOLL_EVENTS_MAX: usize = 256;
/// Longest epoll wait, so that the clock is looked at (ms).
const EPOLL_WAIT_MS: i32 = 10;
/// First size of each connection's read buffer; grows to the largest message.
const READ_BUFFER_BYTES: usize = 64 << 10;
/// A run fails when no answer arrived for this long with requests in flight.
const STALL_NS: u64 = 60_000_000_000;
/// Scrapes of `/metrics` per connection before its shard is declared unknown.
const SHARD_PROBE_TRIES: usize = 20;
/// Longest wait for the handshake or a `/metrics` answer.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Produce timeout written into every request (ms).
const PRODUCE_TIMEOUT_MS: u32 = 30_000;
/// Most records in one produce request (`--records-per-request`).
pub const RECORDS_PER_REQUEST_MAX: usize = 100_000;
/// Largest frame one request carries (records x value bytes, before framing).
pub const REQUEST_VALUE_BYTES_MAX: usize = 16 << 20;
/// Open loop: most requests outstanding (sent, not answered) per connection.
pub const OUTSTANDING_MAX: usize = 1024;
/// Open loop: most request bytes outstanding over all connections, which
/// bounds the client's memory when the server stalls (each connection gets
/// its share, in whole requests, between 1 and [`OUTSTANDING_MAX`]).
pub const OUTSTANDING_BYTES_MAX: usize = 256 << 20;
/// Open loop: longest wait for outstanding answers after the window (ms).
pub const DRAIN_MS: u64 = 5_000;
/// Open loop: shortest interval between two requests of one connection (ns).
const INTERVAL_NS_MIN: f64 = 1_000.0;
/// Longest run (warm-up + measured, s), which bounds the per-second series.
const RUN_SECS_MAX: f64 = 86_400.0;
/// Distinct error messages kept (with counts) for the report.
const ERROR_SAMPLES_MAX: usize = 8;
/// Longest epoll wait of the open loop, a safety net behind its timer (ms).
const OPEN_WAIT_MS: i32 = 1_000;
/// epoll token of the open loop's timerfd (connections use their index).
const TIMER_TOKEN: usize = usize::MAX;
/// Correlation id a request head is encoded with, to find where to patch
/// the real one (the slot) before each send.
const CID_MARKER: u64 = 0x5354_524F_4D5F_4349;
/// Most columns of the text chart (seconds are grouped beyond), and the
/// rows of its throughput panel (tenths of the target rate, up to 1.2x).
const CHART_COLUMNS_MAX: usize = 100;
const CHART_ROWS: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Only partitions owned by the shard that accepted the connection.
    Local,
    /// Only partitions owned by another shard (needs 2 or more shards).
    Forwarded,
    /// Every partition of the topic.
    Any,
}

/// Flags of `requests`.
#[derive(clap::Args, Clone, Debug, serde::Serialize)]
pub struct RequestsArgs {
    /// Server to benchmark (host:port of the native listener).
    #[arg(long, conflicts_with = "spawn")]
    pub server: Option<String>,
    /// HTTP side port of --server (host:port); its /metrics tells which
    /// shard accepted each connection (needed for local/forwarded).
    #[arg(long)]
    pub http: Option<String>,
    /// Pid of --server, to read its CPU time from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Spawning a local server (--spawn, --server-bin, --cores,
    /// --server-arg, --dir).
    #[command(flatten)]
    #[serde(flatten)]
    pub local: SpawnArgs,
    /// TCP connections, all driven by the one event-loop thread.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Produce requests in flight per connection (closed loop; ignored
    /// with --rate).
    #[arg(long, default_value_t = 8)]
    pub depth: usize,
    /// Open loop: records/s over all connections, on a fixed schedule per
    /// connection (without it: closed loop, --depth in flight).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Records in each produce request (one frame).
    #[arg(long, default_value_t = 1)]
    pub records_per_request: usize,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 100)]
    pub message_size: usize,
    /// Partitions of the (fresh) topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Acknowledgement level of the produce requests.
    #[arg(long, value_enum, default_value_t = AcksArg::Leader)]
    pub acks: AcksArg,
    /// Which partitions a connection sends to, relative to the shard that
    /// accepted it.
    #[arg(long, value_enum, default_value_t = Placement::Any)]
    pub placement: Placement,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds run before measuring (both runs).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Measured seconds of the ping-pong baseline.
    #[arg(long, default_value_t = 5.0)]
    pub baseline_secs: f64,
    /// Core of the event-loop thread [default: the last core].
    #[arg(long)]
    pub client_core: Option<usize>,
    /// Core of the baseline's responder thread [default: the first core,
    /// where the server's shard 0 runs].
    #[arg(long)]
    pub responder_core: Option<usize>,
    /// Skip the ping-pong baseline (figures then have no ratios).
    #[arg(long)]
    pub no_baseline: bool,
    /// Keep the topic afterwards (it is deleted by default).
    #[arg(long)]
    pub keep_topics: bool,
    /// A config of the benchmark's topic, key=value (repeatable), e.g.
    /// retention.bytes=268435456 for a long run on a small disk.
    #[arg(long = "topic-config", value_name = "KEY=VALUE")]
    #[serde(default)]
    pub topic_config: Vec<String>,
    /// Write everything as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Open loop: draw throughput and p99 per second into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
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

fn secs_ns(s: f64) -> u64 {
    (s.max(0.0) * 1e9) as u64
}

fn check_args(a: &RequestsArgs) -> Result<(), BenchError> {
    if a.server.is_none() && !a.local.spawn {
        return Err(cfg("give --server HOST:PORT or --spawn"));
    }
    if a.connections == 0 || a.connections > CONNECTIONS_MAX {
        return Err(cfg(format!("--connections must be 1..={CONNECTIONS_MAX}")));
    }
    if a.depth == 0 || a.depth > DEPTH_MAX {
        return Err(cfg(format!("--depth must be 1..={DEPTH_MAX}")));
    }
    if a.message_size > MESSAGE_SIZE_MAX {
        return Err(cfg(format!(
            "--message-size must be at most {MESSAGE_SIZE_MAX}"
        )));
    }
    if a.partitions == 0 {
        return Err(cfg("--partitions must be positive"));
    }
    if a.records_per_request == 0 || a.records_per_request > RECORDS_PER_REQUEST_MAX {
        return Err(cfg(format!(
            "--records-per-request must be 1..={RECORDS_PER_REQUEST_MAX}"
        )));
    }
    if a.records_per_request.saturating_mul(a.message_size.max(1)) > REQUEST_VALUE_BYTES_MAX {
        return Err(cfg(format!(
            "--records-per-request x --message-size must be at most {REQUEST_VALUE_BYTES_MAX} bytes"
        )));
    }
    if a.warmup + a.duration > RUN_SECS_MAX {
        return Err(cfg(format!(
            "--warmup + --duration must be at most {RUN_SECS_MAX} s"
        )));
    }
    match a.rate {
        None if a.plot.is_some() => return Err(cfg("--plot needs --rate (open loop)")),
        None => {}
        Some(r) if !(r > 0.0 && r.is_finite()) => return Err(cfg("--rate must be positive")),
        Some(_) if a.acks == AcksArg::None => {
            return Err(cfg(
                "--rate needs answers to time: --acks leader or durable",
            ))
        }
        Some(r) => {
            let i = interval_ns(r, a.connections, a.records_per_request);
            if i < INTERVAL_NS_MIN {
                return Err(cfg(format!(
                    "--rate {r}: one connection would send a request every {i:.0} ns \
                     (at least {INTERVAL_NS_MIN} ns): raise --connections or --records-per-request"
                )));
            }
        }
    }
    for (flag, v) in [
        ("--duration", a.duration),
        ("--baseline-secs", a.baseline_secs),
    ] {
        if !(v > 0.0 && v.is_finite()) {
            return Err(cfg(format!("{flag} must be positive")));
        }
    }
    if !(a.warmup >= 0.0 && a.warmup.is_finite()) {
        return Err(cfg("--warmup must be 0 or more"));
    }
    Ok(())
}

// ------------------------------------------------------------------ epoll

/// An epoll instance (level-triggered registrations), closed on drop.
struct Epoll(RawFd);

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 has no memory preconditions.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll(fd))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: usize, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events,
            u64: token as u64,
        };
        // SAFETY: `ev` lives across the call; the kernel copies it.
        if unsafe { libc::epoll_ctl(self.0, op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for events; an interrupted wait returns none.
    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        let max = events.len().min(i32::MAX as usize) as i32;
        // SAFETY: the kernel writes at most `max` events into `events`.
        let n = unsafe { libc::epoll_wait(self.0, events.as_mut_ptr(), max, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

const IN: u32 = libc::EPOLLIN as u32;
const OUT: u32 = libc::EPOLLOUT as u32;
const ERR: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;

/// One non-blocking socket with its read buffer (whole messages are cut
/// from it, two-pass framing) and write buffer (flushed until the socket
/// would block; EPOLLOUT is asked for only while bytes are pending).
struct Pipe {
    stream: TcpStream,
    token: usize,
    inbuf: Vec<u8>,
    in_start: usize,
    in_end: usize,
    out: Vec<u8>,
    out_at: usize,
    /// Interest registered with epoll right now.
    interest: u32,
    /// Interest wanted while nothing is pending to write.
    base_interest: u32,
}

impl Pipe {
    fn new(stream: TcpStream, token: usize, base_interest: u32) -> io::Result<Pipe> {
        stream.set_nonblocking(true)?;
        Ok(Pipe {
            stream,
            token,
            inbuf: vec![0; READ_BUFFER_BYTES],
            in_start: 0,
            in_end: 0,
            out: Vec::new(),
            out_at: 0,
            interest: base_interest,
            base_interest,
        })
    }

    fn register(&self, ep: &Epoll) -> io::Result<()> {
        ep.ctl(
            libc::EPOLL_CTL_ADD,
            self.stream.as_raw_fd(),
            self.token,
            self.interest,
        )
    }

    /// Writes pending bytes until done or the socket would block, then
    /// asks epoll for EPOLLOUT only if bytes are left. True when drained.
    fn flush(&mut self, ep: &Epoll) -> io::Result<bool> {
        while self.out_at < self.out.len() {
            match self.stream.write(&self.out[self.out_at..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let drained = self.out_at == self.out.len();
        if drained {
            self.out.clear();
            self.out_at = 0;
        }
        let want = if drained {
            self.base_interest
        } else {
            self.base_interest | OUT
        };
        if want != self.interest {
            ep.ctl(
                libc::EPOLL_CTL_MOD,
                self.stream.as_raw_fd(),
                self.token,
                want,
            )?;
            self.interest = want;
        }
        Ok(drained)
    }

    /// One read into the buffer (level-triggered: called again while data
    /// is left). Makes room for a partial message first. `Ok(0)` = would
    /// block; the peer closing is an error.
    fn read_some(&mut self) -> io::Result<usize> {
        if self.in_start == self.in_end {
            self.in_start = 0;
            self.in_end = 0;
        } else if self.in_start > 0 && self.in_end == self.inbuf.len() {
            self.inbuf.copy_within(self.in_start..self.in_end, 0);
            self.in_end -= self.in_start;
            self.in_start = 0;
        }
        let need = announced_len(&self.inbuf[self.in_start..self.in_end]).unwrap_or(0);
        if self.in_end == self.inbuf.len() || need > self.inbuf.len() {
            let len = (self.inbuf.len() * 2).max(need.next_power_of_two());
            self.inbuf.resize(len, 0);
        }
        loop {
            match self.stream.read(&mut self.inbuf[self.in_end..]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed")),
                Ok(n) => {
                    self.in_end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The range of the next whole message in `inbuf`, if it has arrived.
    fn next_message(&mut self, len_max: usize) -> Result<Option<(usize, usize)>, String> {
        match peek_message(&self.inbuf[self.in_start..self.in_end], len_max) {
            Ok(Some(b)) => {
                let s = self.in_start;
                self.in_start += b.message_len;
                Ok(Some((s, b.message_len)))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

// --------------------------------------------------------------- the loop

/// One client connection of the loop.
struct LoopConn {
    pipe: Pipe,
    /// Request of each slot, pre-encoded with correlation id = slot.
    requests: Arc<Vec<Vec<u8>>>,
    /// Send time of each slot's request in flight (ns).
    sent_ns: Vec<u64>,
    /// Requests in the write buffer (acks=none counts them when written).
    out_requests: u64,
    /// Accepting shard, when known (for error messages).
    shard: Option<usize>,
    last_answer_ns: u64,
}

/// How the loop runs.
struct LoopPlan {
    depth: usize,
    /// Answers are expected (acks != none).
    answers: bool,
    warmup_ns: u64,
    measure_ns: u64,
    label: &'static str,
}

/// CPU seconds of the peer (server process or responder thread).
type CpuProbe = Box<dyn Fn() -> Option<f64> + Send>;

/// What one loop run measured (over the measured window).
struct LoopResult {
    requests: u64,
    response_bytes: u64,
    responses: u64,
    secs: f64,
    /// Per request, send to answer, ns.
    latency: Histogram<u64>,
    client_cpu_secs: f64,
    peer_cpu_secs: Option<f64>,
}

/// CPU time of the calling thread (s).
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// A decoded produce answer: the request it is for, and its error if any.
struct Answer {
    correlation_id: u64,
    /// The first failed result, or the request's error, as text.
    error: Option<String>,
}

/// Decodes a produce answer. An error answer is a value; an answer that
/// does not decode or is not a produce answer is an `Err`.
fn parse_answer(msg: &[u8]) -> Result<Answer, String> {
    let d = decode_response(msg).map_err(|e| format!("decode answer: {e}"))?;
    let error = match d.body {
        ResponseBody::Produce(p) => {
            p.results
                .iter()
                .find(|r| r.error != ErrorCode::None)
                .map(|bad| {
                    format!(
                        "produce to {}/{} failed: {:?} {}",
                        bad.topic, bad.partition, bad.error, bad.message
                    )
                })
        }
        ResponseBody::Error(e) => Some(format!("request failed: {:?} {}", e.error, e.message)),
        other => return Err(format!("unexpected answer to produce: {other:?}")),
    };
    Ok(Answer {
        correlation_id: d.correlation_id,
        error,
    })
}

/// The slot a produce answer is for; any error in it fails the run.
fn check_answer(msg: &[u8], depth: usize) -> Result<usize, String> {
    let a = parse_answer(msg)?;
    if let Some(e) = a.error {
        return Err(e);
    }
    let slot = usize::try_from(a.correlation_id).unwrap_or(usize::MAX);
    if slot >= depth {
        return Err(format!("answer for unknown request {}", a.correlation_id));
    }
    Ok(slot)
}

#[derive(Clone, Copy, Default)]
struct Totals {
    requests: u64,
    response_bytes: u64,
    responses: u64,
}

/// Runs the closed loop on the calling thread: warm-up, then the measured
/// window; a progress line every second.
fn drive(
    conns: &mut [LoopConn],
    plan: &LoopPlan,
    peer_cpu: &CpuProbe,
) -> Result<LoopResult, BenchError> {
    let ep = Epoll::new().map_err(|e| net("epoll_create", plan.label, e))?;
    let start = clock_ns();
    for c in conns.iter_mut() {
        if !plan.answers {
            // No answers pace acks=none: stay interested in writability and
            // queue the depth's requests again whenever the buffer drained.
            c.pipe.base_interest = IN | OUT;
            c.pipe.interest = IN | OUT;
        }
        c.pipe
            .register(&ep)
            .map_err(|e| net("epoll_ctl", plan.label, e))?;
        for slot in 0..plan.depth {
            c.pipe.out.extend_from_slice(&c.requests[slot]);
            c.sent_ns[slot] = start;
        }
        c.out_requests = plan.depth as u64;
        c.last_answer_ns = start;
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EPOLL_EVENTS_MAX];
    let mut latency = new_hist();
    let mut slots: Vec<usize> = Vec::with_capacity(plan.depth);
    let mut t = Totals::default();
    let warm_end = start + plan.warmup_ns;
    let end = warm_end + plan.measure_ns;
    let mut measured_from: Option<(u64, Totals, f64, Option<f64>)> = None;
    if plan.warmup_ns == 0 {
        measured_from = Some((start, t, thread_cpu_secs(), peer_cpu()));
    }
    let mut next_tick = start + 1_000_000_000;
    let mut tick_requests = 0u64;
    let conn_err = |c: &LoopConn, i: usize, what: String| {
        cfg(format!(
            "{} connection {i} (shard {}): {what}",
            plan.label,
            c.shard.map_or("?".to_string(), |s| s.to_string())
        ))
    };
    // Write the first requests.
    for (i, c) in conns.iter_mut().enumerate() {
        if c.pipe
            .flush(&ep)
            .map_err(|e| conn_err(c, i, e.to_string()))?
            && !plan.answers
        {
            t.requests += std::mem::take(&mut c.out_requests);
        }
    }
    loop {
        let n = ep
            .wait(&mut events, EPOLL_WAIT_MS)
            .map_err(|e| net("epoll_wait", plan.label, e))?;
        for ev in &events[..n] {
            let (flags, token) = (ev.events, ev.u64 as usize);
            let Some(c) = conns.get_mut(token) else {
                return Err(cfg(format!("epoll returned unknown token {token}")));
            };
            if flags & (IN | ERR) != 0 {
                c.pipe
                    .read_some()
                    .map_err(|e| conn_err(c, token, format!("read: {e}")))?;
                let now = clock_ns();
                slots.clear();
                while let Some((s, len)) = c
                    .pipe
                    .next_message(RESPONSE_BYTES_MAX)
                    .map_err(|e| conn_err(c, token, e))?
                {
                    let msg = &c.pipe.inbuf[s..s + len];
                    if !plan.answers {
                        // acks=none: the server answers only errors.
                        let why = check_answer(msg, usize::MAX)
                            .err()
                            .unwrap_or_else(|| "an answer to an acks=none request".into());
                        return Err(conn_err(c, token, why));
                    }
                    let slot = check_answer(msg, plan.depth).map_err(|e| conn_err(c, token, e))?;
                    slots.push(slot);
                    t.response_bytes += len as u64;
                    t.responses += 1;
                }
                for &slot in &slots {
                    let _ = latency.record(now.saturating_sub(c.sent_ns[slot]).max(1));
                    c.pipe.out.extend_from_slice(&c.requests[slot]);
                    c.sent_ns[slot] = now;
                }
                if !slots.is_empty() {
                    t.requests += slots.len() as u64;
                    c.last_answer_ns = now;
                    c.pipe
                        .flush(&ep)
                        .map_err(|e| conn_err(c, token, format!("write: {e}")))?;
                }
            }
            if flags & OUT != 0 {
                if !plan.answers && c.pipe.out.is_empty() {
                    for slot in 0..plan.depth {
                        c.pipe.out.extend_from_slice(&c.requests[slot]);
                    }
                    c.out_requests = plan.depth as u64;
                }
                let drained = c
                    .pipe
                    .flush(&ep)
                    .map_err(|e| conn_err(c, token, format!("write: {e}")))?;
                if drained && !plan.answers {
                    t.requests += std::mem::take(&mut c.out_requests);
                }
            }
        }
        let now = clock_ns();
        if now < next_tick && now < end {
            continue;
        }
        if plan.answers {
            if let Some((i, c)) = conns
                .iter()
                .enumerate()
                .find(|(_, c)| now.saturating_sub(c.last_answer_ns) > STALL_NS)
            {
                return Err(conn_err(c, i, "no answer for 60 s".into()));
            }
        }
        let warm = now < warm_end;
        eprintln!(
            "[{:6.1}s{}] {} {:>9} req/s",
            (now - start) as f64 / 1e9,
            if warm { " warm-up" } else { "" },
            plan.label,
            fmt_value(
                (t.requests - tick_requests) as f64 * 1e9
                    / (now + 1_000_000_000 - next_tick) as f64
            )
        );
        tick_requests = t.requests;
        next_tick += 1_000_000_000;
        if measured_from.is_none() && !warm {
            measured_from = Some((now, t, thread_cpu_secs(), peer_cpu()));
            latency.reset();
        }
        if now >= end {
            let (from, t0, c0, p0) = measured_from.unwrap_or((start, Totals::default(), 0.0, None));
            let peer = match (peer_cpu(), p0) {
                (Some(b), Some(a)) => Some(b - a),
                _ => None,
            };
            return Ok(LoopResult {
                requests: t.requests - t0.requests,
                response_bytes: t.response_bytes - t0.response_bytes,
                responses: t.responses - t0.responses,
                secs: (now - from).max(1) as f64 / 1e9,
                latency,
                client_cpu_secs: thread_cpu_secs() - c0,
                peer_cpu_secs: peer,
            });
        }
    }
}

/// Runs [`drive`] on a new thread pinned to `core`.
fn drive_on(
    mut conns: Vec<LoopConn>,
    plan: LoopPlan,
    peer_cpu: CpuProbe,
    core: Option<usize>,
) -> Result<LoopResult, BenchError> {
    run_pinned("requests-loop", core, move || {
        drive(&mut conns, &plan, &peer_cpu)
    })
}

/// Runs `f` on a new thread named `name`, pinned to `core`, and returns
/// its result (a panic is [`BenchError::ThreadPanic`]).
fn run_pinned<T: Send + 'static>(
    name: &'static str,
    core: Option<usize>,
    f: impl FnOnce() -> Result<T, BenchError> + Send + 'static,
) -> Result<T, BenchError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            pin_thread(core);
            f()
        })
        .map_err(|e| BenchError::io("spawn thread", name, e))?
        .join()
        .map_err(|_| BenchError::ThreadPanic { name })?
}

// -------------------------------------------------------- open loop: core

/// Interval between two requests of one connection (ns) such that
/// `connections` together send `rate` records/s in requests of
/// `records_per_request` records.
fn interval_ns(rate: f64, connections: usize, records_per_request: usize) -> f64 {
    1e9 * connections as f64 * records_per_request as f64 / rate
}

/// Requests each connection may have outstanding: its share of
/// [`OUTSTANDING_BYTES_MAX`] in whole requests, within 1..=[`OUTSTANDING_MAX`].
fn outstanding_cap(connections: usize, request_bytes: usize) -> usize {
    let share = OUTSTANDING_BYTES_MAX / (connections.max(1) * request_bytes.max(1));
    share.clamp(1, OUTSTANDING_MAX)
}

/// The fixed schedule of one connection's requests (I/O-free): request `k`
/// is due at `first_ns + k * interval_ns` (rounded down to the ns), whatever
/// became of the requests before it.
#[derive(Clone, Copy, Debug)]
struct Schedule {
    first_ns: u64,
    interval_ns: f64,
    /// The first request not taken yet.
    next: u64,
}

impl Schedule {
    /// Connection `index` of `connections` starts `index / connections` of
    /// an interval after `start_ns`, so that all requests interleave evenly.
    fn new(start_ns: u64, interval_ns: f64, index: usize, connections: usize) -> Schedule {
        assert!(
            interval_ns.is_finite() && interval_ns >= 1.0,
            "{interval_ns}"
        );
        assert!(index < connections, "{index} of {connections}");
        let phase = interval_ns * index as f64 / connections as f64;
        Schedule {
            first_ns: start_ns + phase as u64,
            interval_ns,
            next: 0,
        }
    }

    fn due_ns(&self, k: u64) -> u64 {
        self.first_ns + (k as f64 * self.interval_ns) as u64
    }

    fn next_due_ns(&self) -> u64 {
        self.due_ns(self.next)
    }

    /// The due time of the next request if it is due by `now_ns` and
    /// scheduled before `end_ns`; the schedule moves past it.
    fn take(&mut self, now_ns: u64, end_ns: u64) -> Option<u64> {
        let due = self.next_due_ns();
        if due > now_ns || due >= end_ns {
            return None;
        }
        self.next += 1;
        debug_assert!(self.next_due_ns() >= due);
        Some(due)
    }
}

/// The requests outstanding on one connection (I/O-free): slot `s`, which
/// is also the request's correlation id, holds its due time. At most `cap`
/// at once; a request due while all are taken is not sent (missed).
struct Slots {
    due_ns: Vec<Option<u64>>,
    free: Vec<u32>,
}

impl Slots {
    fn new(cap: usize) -> Slots {
        assert!(cap > 0 && cap <= OUTSTANDING_MAX, "cap {cap}");
        Slots {
            due_ns: vec![None; cap],
            free: (0..cap as u32).rev().collect(),
        }
    }

    fn outstanding(&self) -> usize {
        self.due_ns.len() - self.free.len()
    }

    /// A free slot for a request due at `due_ns`, or `None` at the cap.
    fn take(&mut self, due_ns: u64) -> Option<u32> {
        let s = self.free.pop()?;
        let entry = &mut self.due_ns[s as usize];
        assert!(entry.is_none(), "slot {s} was free and taken");
        *entry = Some(due_ns);
        Some(s)
    }

    /// Frees the slot an answer names: its request's due time, or `None`
    /// when no request is outstanding there.
    fn complete(&mut self, slot: u64) -> Option<u64> {
        let s = usize::try_from(slot).ok()?;
        let due = self.due_ns.get_mut(s)?.take()?;
        self.free.push(s as u32);
        debug_assert!(self.free.len() <= self.due_ns.len());
        Some(due)
    }

    /// Frees every slot (a failed connection, the end of a run), calling
    /// `f` with each outstanding request's due time; returns how many.
    fn clear(&mut self, mut f: impl FnMut(u64)) -> usize {
        let mut n = 0;
        for (s, entry) in self.due_ns.iter_mut().enumerate() {
            if let Some(due) = entry.take() {
                f(due);
                self.free.push(s as u32);
                n += 1;
            }
        }
        assert_eq!(self.free.len(), self.due_ns.len());
        n
    }
}

/// What happened to an open loop's requests (counts of requests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
struct OpenCounts {
    /// Queued on their connection (sent).
    sent: u64,
    /// Answered without error.
    completed: u64,
    /// Answered with an error (a failed result or a request error).
    errors: u64,
    /// Due while their connection had its cap outstanding: not sent.
    missed: u64,
    /// Due after their connection had failed: not sent.
    down: u64,
    /// Outstanding on a connection when it failed.
    lost: u64,
    /// Connections that failed.
    failures: u64,
    response_bytes: u64,
}

impl OpenCounts {
    fn minus(&self, o: &OpenCounts) -> OpenCounts {
        OpenCounts {
            sent: self.sent - o.sent,
            completed: self.completed - o.completed,
            errors: self.errors - o.errors,
            missed: self.missed - o.missed,
            down: self.down - o.down,
            lost: self.lost - o.lost,
            failures: self.failures - o.failures,
            response_bytes: self.response_bytes - o.response_bytes,
        }
    }
}

/// One second of an open-loop run.
#[derive(Clone, Debug, serde::Serialize)]
struct OpenSecond {
    /// Start of the second, in seconds from the start of the measured
    /// window (warm-up seconds are negative).
    t: i64,
    warmup: bool,
    /// Part of the second inside the run (1 but maybe for the last).
    secs: f64,
    /// Records whose request was answered without error in this second.
    completed_records: u64,
    completed_records_per_sec: f64,
    sent_requests: u64,
    missed_requests: u64,
    down_requests: u64,
    error_answers: u64,
    /// Of the answers in this second, scheduled time to answer (us).
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    max_us: Option<f64>,
}

/// The second `t_ns` falls in, counted from `window_ns` (the start of the
/// measured window); warm-up seconds are negative.
fn second_of(t_ns: u64, window_ns: u64) -> i64 {
    (i128::from(t_ns) - i128::from(window_ns)).div_euclid(1_000_000_000) as i64
}

/// The per-second series of a run (I/O-free): counts and a histogram of
/// the answers' latency for the current second, closed at its end.
struct Seconds {
    start_ns: u64,
    window_ns: u64,
    end_ns: u64,
    records_per_request: u64,
    /// The second being filled, and the counts when it began.
    cur: i64,
    from: OpenCounts,
    hist: Histogram<u64>,
    points: Vec<OpenSecond>,
}

impl Seconds {
    fn new(start_ns: u64, window_ns: u64, end_ns: u64, records_per_request: u64) -> Seconds {
        assert!(start_ns <= window_ns && window_ns < end_ns);
        let n = second_of(end_ns - 1, window_ns) - second_of(start_ns, window_ns) + 1;
        Seconds {
            start_ns,
            window_ns,
            end_ns,
            records_per_request,
            cur: second_of(start_ns, window_ns),
            from: OpenCounts::default(),
            hist: new_hist(),
            points: Vec::with_capacity(usize::try_from(n).unwrap_or(0)),
        }
    }

    /// The time the current second ends (within the run).
    fn next_boundary_ns(&self) -> u64 {
        let b = i128::from(self.window_ns) + i128::from(self.cur + 1) * 1_000_000_000;
        u64::try_from(b).unwrap_or(u64::MAX).min(self.end_ns)
    }

    /// Closes every second that ended by `now_ns` (not past the run's end),
    /// given the counts so far; returns how many were closed.
    fn advance(&mut self, now_ns: u64, counts: &OpenCounts) -> usize {
        let upto = second_of(now_ns.min(self.end_ns), self.window_ns);
        let mut n = 0;
        while self.cur < upto {
            self.close(counts);
            n += 1;
        }
        n
    }

    /// Closes the seconds left up to the end of the run.
    fn finish(&mut self, counts: &OpenCounts) -> usize {
        let last = second_of(self.end_ns - 1, self.window_ns);
        let mut n = 0;
        while self.cur <= last {
            self.close(counts);
            n += 1;
        }
        n
    }

    fn close(&mut self, counts: &OpenCounts) {
        let d = counts.minus(&self.from);
        let ns = |b: i64| {
            let t = i128::from(self.window_ns) + i128::from(b) * 1_000_000_000;
            t.clamp(i128::from(self.start_ns), i128::from(self.end_ns))
        };
        let secs = (ns(self.cur + 1) - ns(self.cur)) as f64 / 1e9;
        let q =
            |q: f64| (!self.hist.is_empty()).then(|| self.hist.value_at_quantile(q) as f64 / 1e3);
        let records = d.completed * self.records_per_request;
        self.points.push(OpenSecond {
            t: self.cur,
            warmup: self.cur < 0,
            secs,
            completed_records: records,
            completed_records_per_sec: records as f64 / secs.max(1e-9),
            sent_requests: d.sent,
            missed_requests: d.missed,
            down_requests: d.down,
            error_answers: d.errors,
            p50_us: q(0.5),
            p99_us: q(0.99),
            max_us: (!self.hist.is_empty()).then(|| self.hist.max() as f64 / 1e3),
        });
        self.hist.reset();
        self.from = *counts;
        self.cur += 1;
    }
}

/// Distinct messages with their counts, at most [`ERROR_SAMPLES_MAX`] kinds
/// (later kinds are only counted in the totals).
#[derive(Default)]
struct Samples(Vec<(String, u64)>);

impl Samples {
    fn add(&mut self, msg: String) {
        if let Some(e) = self.0.iter_mut().find(|(m, _)| *m == msg) {
            e.1 += 1;
        } else if self.0.len() < ERROR_SAMPLES_MAX {
            self.0.push((msg, 1));
        }
    }
}

/// The 1-2-5 levels (1, 2, 5, 10, 20, ...) from the largest at or below
/// `lo` to the smallest at or above `hi` (both positive).
fn levels_125(lo: f64, hi: f64) -> Vec<f64> {
    assert!(lo > 0.0 && hi >= lo, "{lo} {hi}");
    let mut out = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    'outer: loop {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            // Rounding: 10^k from powf may be a hair off.
            let v = (v * 1e9).round() / 1e9;
            if v <= lo * (1.0 + 1e-9) {
                out.clear();
            }
            out.push(v);
            if v >= hi * (1.0 - 1e-9) {
                break 'outer;
            }
        }
        decade *= 10.0;
    }
    out
}

/// A text chart of the measured seconds, to paste into a README: records
/// completed per second as bars, one row per tenth of the target up to
/// 1.2x (`-` marks the target, `.` 0.9 of it: a column reaches a row only
/// when its value does; `^` tops a column above the chart), above the ack p99 per second as bars on 1-2-5 levels (a
/// column reaches a level when its p99 is at or above it). A column holds
/// `ceil(seconds / CHART_COLUMNS_MAX)` seconds: the lowest throughput and
/// the highest p99 among them.
fn ascii_chart(points: &[OpenSecond], target: f64) -> String {
    use std::fmt::Write as _;
    let measured: Vec<&OpenSecond> = points.iter().filter(|p| !p.warmup).collect();
    if measured.is_empty() || target.is_nan() || target <= 0.0 {
        return String::new();
    }
    let per = measured.len().div_ceil(CHART_COLUMNS_MAX);
    let groups: Vec<&[&OpenSecond]> = measured.chunks(per).collect();
    let rates: Vec<f64> = groups
        .iter()
        .map(|g| {
            g.iter()
                .map(|p| p.completed_records_per_sec)
                .fold(f64::INFINITY, f64::min)
        })
        .collect();
    let p99s: Vec<Option<f64>> = groups
        .iter()
        .map(|g| {
            g.iter()
                .filter_map(|p| p.p99_us)
                .map(|v| v / 1e3)
                .reduce(f64::max)
        })
        .collect();
    let cols = groups.len();
    let label_w = 8;
    let mut out = String::new();
    let axis = |out: &mut String| {
        let _ = writeln!(out, "{:>label_w$} +{}", "", "-".repeat(cols));
        let right = format!("{} s", measured.len());
        let under = if cols > right.len() + 1 {
            format!("0{}{right}", " ".repeat(cols - right.len()))
        } else {
            format!("0 .. {right}")
        };
        let _ = writeln!(out, "{:>label_w$}  {under}", "");
    };

    // Throughput: rows of a tenth of the target up to 1.2 x target; a
    // column above that (catching up after a stall) ends in '^'.
    let step = target / 10.0;
    let rows = CHART_ROWS;
    let _ = writeln!(
        out,
        "completed records/s per second ({per} s per column, lowest shown; '-' target {}, '.' 0.9 x target, '^' above the chart)",
        fmt_value(target)
    );
    for r in (1..=rows).rev() {
        let level = step * r as f64;
        let mark = match r {
            10 => '-',
            9 => '.',
            _ => ' ',
        };
        let line: String = rates
            .iter()
            .map(|&v| {
                if r == rows && v > level * (1.0 + 1e-9) {
                    '^'
                } else if v >= level * (1.0 - 1e-9) {
                    '#'
                } else {
                    mark
                }
            })
            .collect();
        let _ = writeln!(out, "{:>label_w$} |{}", fmt_value(level), line.trim_end());
    }
    axis(&mut out);

    // p99 on 1-2-5 levels.
    let present: Vec<f64> = p99s
        .iter()
        .flatten()
        .copied()
        .filter(|v| *v > 0.0)
        .collect();
    if present.is_empty() {
        let _ = writeln!(out, "ack p99 per second: no answers");
        return out;
    }
    let lo = present.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = present.iter().copied().fold(0.0, f64::max);
    let levels = levels_125(lo, hi);
    let _ = writeln!(
        out,
        "ack p99 per second, ms ({per} s per column, highest shown; a column reaches a level at or below its p99)"
    );
    for &level in levels.iter().rev() {
        let line: String = p99s
            .iter()
            .map(|v| match v {
                Some(v) if *v >= level * (1.0 - 1e-9) => '#',
                _ => ' ',
            })
            .collect();
        let _ = writeln!(out, "{:>label_w$} |{}", fmt_value(level), line.trim_end());
    }
    axis(&mut out);
    out
}

// -------------------------------------------------------- open loop: I/O

/// A `CLOCK_MONOTONIC` timerfd (the clock of [`clock_ns`]) armed at
/// absolute times; closed on drop.
struct Timer(RawFd);

impl Timer {
    fn new() -> io::Result<Timer> {
        // SAFETY: timerfd_create has no memory preconditions.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Timer(fd))
    }

    /// Fires once at `at_ns` (already past: at once).
    fn arm_at(&self, at_ns: u64) -> io::Result<()> {
        let at_ns = at_ns.max(1); // 0 would disarm it
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: `spec` lives across the call; a null old value is allowed.
        let r = unsafe {
            libc::timerfd_settime(self.0, libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut())
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Consumes an expiry (nothing to consume is fine).
    fn clear(&self) {
        let mut n = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `n`.
        let _ = unsafe { libc::read(self.0, n.as_mut_ptr().cast(), n.len()) };
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// One connection of the open loop.
struct OpenConn {
    pipe: Pipe,
    /// False once the connection failed (deregistered, shut down).
    alive: bool,
    /// Envelope and table of this connection's requests; the correlation id
    /// at `cid_at` is set to the slot before each send.
    head: Vec<u8>,
    cid_at: usize,
    /// The frame every request carries (shared by all connections).
    frame: Arc<Vec<u8>>,
    /// Set when the loop starts.
    schedule: Option<Schedule>,
    slots: Slots,
    /// Accepting shard, when known, and the one partition it sends to.
    shard: Option<usize>,
    partition: u32,
}

impl OpenConn {
    fn describe(&self, label: &str, i: usize) -> String {
        format!(
            "{label} connection {i} (shard {}, partition {})",
            self.shard.map_or("?".to_string(), |s| s.to_string()),
            self.partition
        )
    }

    /// Queues every request due by `now_ns` (scheduled before `end_ns`) or
    /// counts it as missed (cap) or down (failed connection). True when
    /// something was queued.
    fn queue_due(&mut self, now_ns: u64, end_ns: u64, counts: &mut OpenCounts) -> bool {
        let mut queued = false;
        let Some(schedule) = self.schedule.as_mut() else {
            return false;
        };
        while let Some(due) = schedule.take(now_ns, end_ns) {
            if !self.alive {
                counts.down += 1;
                continue;
            }
            let Some(slot) = self.slots.take(due) else {
                counts.missed += 1;
                continue;
            };
            set_correlation_id(&mut self.head, self.cid_at, u64::from(slot));
            self.pipe.out.extend_from_slice(&self.head);
            self.pipe.out.extend_from_slice(&self.frame);
            counts.sent += 1;
            queued = true;
        }
        queued
    }

    /// Drops a failed connection: deregistered, shut down, its outstanding
    /// requests counted as lost.
    fn fail(&mut self, ep: &Epoll, counts: &mut OpenCounts) {
        assert!(self.alive, "a connection fails once");
        self.alive = false;
        let _ = ep.ctl(
            libc::EPOLL_CTL_DEL,
            self.pipe.stream.as_raw_fd(),
            self.pipe.token,
            0,
        );
        let _ = self.pipe.stream.shutdown(std::net::Shutdown::Both);
        self.pipe.out.clear();
        self.pipe.out_at = 0;
        counts.failures += 1;
        counts.lost += self.slots.clear(|_| {}) as u64;
    }
}

/// How the open loop runs.
struct OpenPlan {
    records_per_request: u64,
    interval_ns: f64,
    warmup_ns: u64,
    measure_ns: u64,
    drain_ns: u64,
    label: &'static str,
}

/// What one open-loop run measured.
struct OpenResult {
    /// Over the measured window (by the time things happened).
    counts: OpenCounts,
    secs: f64,
    /// Requests scheduled in the window, scheduled time to answer (ns);
    /// those unanswered at the end at their age then.
    latency: Histogram<u64>,
    /// Requests still outstanding when the loop gave up waiting.
    unanswered: u64,
    /// Every second, warm-up included.
    series: Vec<OpenSecond>,
    client_cpu_secs: f64,
    peer_cpu_secs: Option<f64>,
    errors: Vec<(String, u64)>,
    failures: Vec<(String, u64)>,
}

/// Runs the open loop on the calling thread: warm-up, measured window,
/// then at most `drain_ns` for the answers still outstanding.
fn drive_open(
    conns: &mut [OpenConn],
    plan: &OpenPlan,
    peer_cpu: &CpuProbe,
) -> Result<OpenResult, BenchError> {
    use std::cmp::Reverse;
    let ep = Epoll::new().map_err(|e| net("epoll_create", plan.label, e))?;
    let timer = Timer::new().map_err(|e| net("timerfd_create", plan.label, e))?;
    ep.ctl(libc::EPOLL_CTL_ADD, timer.0, TIMER_TOKEN, IN)
        .map_err(|e| net("epoll_ctl", plan.label, e))?;
    for c in conns.iter() {
        c.pipe
            .register(&ep)
            .map_err(|e| net("epoll_ctl", plan.label, e))?;
    }
    let start = clock_ns();
    let window = start + plan.warmup_ns;
    let end = window + plan.measure_ns.max(1);
    let drain_end = end + plan.drain_ns;
    let n = conns.len();
    let mut due = std::collections::BinaryHeap::with_capacity(n);
    for (i, c) in conns.iter_mut().enumerate() {
        let s = Schedule::new(start, plan.interval_ns, i, n);
        due.push(Reverse((s.next_due_ns(), i)));
        c.schedule = Some(s);
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EPOLL_EVENTS_MAX];
    let mut counts = OpenCounts::default();
    let mut latency = new_hist();
    let mut seconds = Seconds::new(start, window, end, plan.records_per_request);
    let mut errors = Samples::default();
    let mut failures = Samples::default();
    let mut at_window: Option<(OpenCounts, f64, Option<f64>)> = None;
    let mut at_end: Option<(OpenCounts, f64, Option<f64>)> = None;
    let snapshot = |c: &OpenCounts| (*c, thread_cpu_secs(), peer_cpu());
    let mut printed = 0;
    timer
        .arm_at(start)
        .map_err(|e| net("timerfd_settime", plan.label, e))?;
    let last_now = loop {
        let got = ep
            .wait(&mut events, OPEN_WAIT_MS)
            .map_err(|e| net("epoll_wait", plan.label, e))?;
        let now = clock_ns();
        // Seconds and window edges first: what follows happened at `now`.
        seconds.advance(now, &counts);
        if at_window.is_none() && now >= window {
            at_window = Some(snapshot(&counts));
        }
        if at_end.is_none() && now >= end {
            seconds.finish(&counts);
            at_end = Some(snapshot(&counts));
        }
        for p in &seconds.points[printed..] {
            eprintln!(
                "[{:>5}s{}] {} {:>9} rec/s  p99 {:>8} ms  sent {} missed {} down {} errors {}",
                p.t,
                if p.warmup { " warm-up" } else { "" },
                plan.label,
                fmt_value(p.completed_records_per_sec),
                p.p99_us.map_or("-".into(), |v| fmt_value(v / 1e3)),
                p.sent_requests,
                p.missed_requests,
                p.down_requests,
                p.error_answers,
            );
        }
        printed = seconds.points.len();

        for ev in &events[..got] {
            let (flags, token) = (ev.events, ev.u64 as usize);
            if token == TIMER_TOKEN {
                timer.clear();
                continue;
            }
            let Some(c) = conns.get_mut(token) else {
                return Err(cfg(format!("epoll returned unknown token {token}")));
            };
            if !c.alive {
                continue;
            }
            let mut failed: Option<String> = None;
            if flags & (IN | ERR) != 0 {
                match c.pipe.read_some() {
                    Err(e) => failed = Some(format!("read: {e}")),
                    Ok(_) => loop {
                        let (s, len) = match c.pipe.next_message(RESPONSE_BYTES_MAX) {
                            Ok(Some(m)) => m,
                            Ok(None) => break,
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        };
                        counts.response_bytes += len as u64;
                        let answer = match parse_answer(&c.pipe.inbuf[s..s + len]) {
                            Ok(a) => a,
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        };
                        let Some(due_ns) = c.slots.complete(answer.correlation_id) else {
                            failed = Some(format!(
                                "answer for unknown request {}",
                                answer.correlation_id
                            ));
                            break;
                        };
                        if let Some(e) = answer.error {
                            counts.errors += 1;
                            errors.add(e);
                            continue;
                        }
                        counts.completed += 1;
                        let ns = now.saturating_sub(due_ns).max(1);
                        seconds.hist.saturating_record(ns);
                        if (window..end).contains(&due_ns) {
                            latency.saturating_record(ns);
                        }
                    },
                }
            }
            if failed.is_none() && flags & OUT != 0 {
                if let Err(e) = c.pipe.flush(&ep) {
                    failed = Some(format!("write: {e}"));
                }
            }
            if let Some(why) = failed {
                failures.add(format!("{}: {why}", c.describe(plan.label, token)));
                c.fail(&ep, &mut counts);
            }
        }

        // Everything due by now (scheduled before the end) goes out.
        while let Some(&Reverse((due_ns, i))) = due.peek() {
            if due_ns > now {
                break;
            }
            due.pop();
            let c = &mut conns[i];
            if c.queue_due(now, end, &mut counts) {
                if let Err(e) = c.pipe.flush(&ep) {
                    failures.add(format!("{}: write: {e}", c.describe(plan.label, i)));
                    c.fail(&ep, &mut counts);
                }
            }
            let next = c.schedule.map_or(u64::MAX, |s| s.next_due_ns());
            if next < end {
                due.push(Reverse((next, i)));
            }
        }

        if now >= end {
            let outstanding: usize = conns
                .iter()
                .filter(|c| c.alive)
                .map(|c| c.slots.outstanding())
                .sum();
            if outstanding == 0 || now >= drain_end {
                break now;
            }
        }
        let wake = if now < end {
            let next_due = due.peek().map_or(end, |r| r.0 .0);
            next_due.min(seconds.next_boundary_ns()).min(end)
        } else {
            drain_end
        };
        timer
            .arm_at(wake)
            .map_err(|e| net("timerfd_settime", plan.label, e))?;
    };
    // Answers that never came count at their age now (a lower bound).
    let mut unanswered = 0u64;
    for c in conns.iter_mut().filter(|c| c.alive) {
        unanswered += c.slots.clear(|due_ns| {
            if (window..end).contains(&due_ns) {
                latency.saturating_record(last_now.saturating_sub(due_ns).max(1));
            }
        }) as u64;
    }
    let (c0, cpu0, peer0) = at_window.unwrap_or((OpenCounts::default(), 0.0, None));
    let (c1, cpu1, peer1) = at_end.unwrap_or_else(|| snapshot(&counts));
    Ok(OpenResult {
        counts: c1.minus(&c0),
        secs: (end - window) as f64 / 1e9,
        latency,
        unanswered,
        series: std::mem::take(&mut seconds.points),
        client_cpu_secs: cpu1 - cpu0,
        peer_cpu_secs: match (peer1, peer0) {
            (Some(b), Some(a)) => Some(b - a),
            _ => None,
        },
        errors: errors.0,
        failures: failures.0,
    })
}

/// Runs [`drive_open`] on a new thread pinned to `core`.
fn drive_open_on(
    mut conns: Vec<OpenConn>,
    plan: OpenPlan,
    peer_cpu: CpuProbe,
    core: Option<usize>,
) -> Result<OpenResult, BenchError> {
    run_pinned("requests-open", core, move || {
        drive_open(&mut conns, &plan, &peer_cpu)
    })
}

// ------------------------------------------------------------- requests

/// A frame holding `records` records of `message_size` pseudo-random bytes
/// each (built once per run and re-sent).
fn records_frame(message_size: usize, records: usize) -> Vec<u8> {
    assert!(records > 0, "a frame holds at least one record");
    let mut values = vec![0u8; message_size * records];
    Rng::new(0x5EED).fill(&mut values);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut b = BatchBuilder::new();
    for r in 0..records {
        b.push(&RecordIn {
            timestamp_ms: ms,
            key: None,
            value: Some(&values[r * message_size..(r + 1) * message_size]),
            headers: &[],
        });
    }
    b.finish()
}

/// The body of a produce request carrying one frame of `frame_len` bytes.
fn produce_body(topic: &str, partition: u32, acks: AcksArg, frame_len: usize) -> RequestBody {
    RequestBody::Produce(ProduceRequest {
        acks: acks.wire(),
        timeout_ms: PRODUCE_TIMEOUT_MS,
        batches: vec![ProduceBatch {
            topic: topic.to_string(),
            partition,
            batch_len: frame_len as u32,
        }],
    })
}

/// The whole request (envelope, table, frame) of one slot.
fn produce_request(
    slot: usize,
    topic: &str,
    partition: u32,
    acks: AcksArg,
    frame: &[u8],
) -> Result<Vec<u8>, BenchError> {
    let body = produce_body(topic, partition, acks, frame.len());
    let mut head = encode_request(slot as u64, &body).map_err(|e| cfg(format!("encode: {e}")))?;
    head.extend_from_slice(frame);
    Ok(head)
}

/// Writes `id` as the correlation id of a request head (see [`produce_head`]).
fn set_correlation_id(head: &mut [u8], at: usize, id: u64) {
    head[at..at + 8].copy_from_slice(&id.to_le_bytes());
}

/// The head (envelope and table) of a produce request to `partition`
/// followed by a frame of `frame_len` bytes, and the offset of its
/// correlation id, which the open loop overwrites with the slot before
/// each send (so a head is encoded once per connection, not per request).
fn produce_head(
    topic: &str,
    partition: u32,
    acks: AcksArg,
    frame_len: usize,
) -> Result<(Vec<u8>, usize), BenchError> {
    let body = produce_body(topic, partition, acks, frame_len);
    // A marker that is not the field's default, so the field is written.
    let head = encode_request(CID_MARKER, &body).map_err(|e| cfg(format!("encode: {e}")))?;
    let marker = CID_MARKER.to_le_bytes();
    let mut found = head
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker)
        .map(|(i, _)| i);
    let (Some(at), None) = (found.next(), found.next()) else {
        return Err(cfg("the correlation id is not once in the request head"));
    };
    // The id a reader sees is the one patched in.
    let mut probe = head.clone();
    for id in [0, 1, OUTSTANDING_MAX as u64 - 1] {
        set_correlation_id(&mut probe, at, id);
        if peek_correlation_id(&probe) != Some(id) {
            return Err(cfg(format!(
                "patching the correlation id at byte {at} does not give {id}"
            )));
        }
    }
    Ok((head, at))
}

/// The pre-encoded answers of the baseline responder, one per slot, shaped
/// as the server's (same topic name, one result, realistic offsets).
fn baseline_answers(topic: &str, depth: usize) -> Result<Vec<Vec<u8>>, BenchError> {
    (0..depth)
        .map(|slot| {
            let body = ResponseBody::Produce(ProduceResponse {
                results: vec![ProduceResult {
                    topic: topic.to_string(),
                    partition: 1,
                    error: ErrorCode::None,
                    message: String::new(),
                    base_offset: 1_234_567,
                    last_offset: 1_234_567,
                    append_time_ms: 1_764_460_800_000,
                    log_start_offset: 1,
                }],
            });
            encode_response(slot as u64, &body).map_err(|e| cfg(format!("encode: {e}")))
        })
        .collect()
}

// ------------------------------------------------------------- baseline

/// The trivial peer of the baseline: frames requests, answers each with the
/// pre-encoded answer of its correlation id (nothing with acks=none).
fn respond(
    streams: Vec<TcpStream>,
    answers: &[Vec<u8>],
    stop: &AtomicBool,
) -> Result<(), BenchError> {
    let ep = Epoll::new().map_err(|e| net("epoll_create", "responder", e))?;
    let mut pipes = Vec::with_capacity(streams.len());
    for (i, s) in streams.into_iter().enumerate() {
        let p = Pipe::new(s, i, IN).map_err(|e| net("set_nonblocking", "responder", e))?;
        p.register(&ep)
            .map_err(|e| net("epoll_ctl", "responder", e))?;
        pipes.push(p);
    }
    // The client closes its side at the end of its run, maybe with requests
    // unanswered (a reset): that ends the connection, not the baseline.
    let closed_by_peer = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
        )
    };
    let mut open = pipes.len();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EPOLL_EVENTS_MAX];
    while open > 0 && !stop.load(Ordering::Relaxed) {
        let n = ep
            .wait(&mut events, EPOLL_WAIT_MS)
            .map_err(|e| net("epoll_wait", "responder", e))?;
        for ev in &events[..n] {
            let (flags, token) = (ev.events, ev.u64 as usize);
            let Some(p) = pipes.get_mut(token) else {
                return Err(cfg(format!("epoll returned unknown token {token}")));
            };
            let mut result = Ok(());
            if flags & (IN | ERR) != 0 {
                result = p.read_some().map(|_| ());
                while let Some((s, len)) = p
                    .next_message(MESSAGE_BYTES_MAX)
                    .map_err(|e| cfg(format!("responder: {e}")))?
                {
                    if answers.is_empty() {
                        continue;
                    }
                    let cid = peek_correlation_id(&p.inbuf[s..s + len])
                        .ok_or_else(|| cfg("responder: request without correlation id"))?;
                    let answer = usize::try_from(cid)
                        .ok()
                        .and_then(|c| answers.get(c))
                        .ok_or_else(|| cfg(format!("responder: unknown correlation id {cid}")))?;
                    p.out.extend_from_slice(answer);
                }
            }
            if result.is_ok() && !p.out.is_empty() {
                result = p.flush(&ep).map(|_| ());
            }
            match result {
                Ok(()) => {}
                Err(e) if closed_by_peer(&e) => {
                    ep.ctl(libc::EPOLL_CTL_DEL, p.stream.as_raw_fd(), token, 0)
                        .map_err(|e| net("epoll_ctl", "responder", e))?;
                    open -= 1;
                }
                Err(e) => return Err(net("serve", "responder", e)),
            }
        }
    }
    Ok(())
}

/// CPU seconds of one thread of this process, from /proc (the same tick
/// resolution as the server's figure).
fn thread_cpu_from_proc(tid: i32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz.max(1.0))
}

/// Runs `run` over `n` loopback connections served by [`respond`] (a thread
/// pinned to `responder_core` answering with `answers`), giving it a probe
/// of the responder thread's CPU; stops the responder afterwards.
fn with_responder<R>(
    n: usize,
    answers: Vec<Vec<u8>>,
    responder_core: Option<usize>,
    run: impl FnOnce(Vec<TcpStream>, CpuProbe) -> Result<R, BenchError>,
) -> Result<R, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| net("bind", "127.0.0.1:0", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| net("local_addr", "127.0.0.1:0", e))?
        .to_string();
    let mut clients = Vec::with_capacity(n);
    let mut served = Vec::with_capacity(n);
    for _ in 0..n {
        let c = TcpStream::connect(&addr).map_err(|e| net("connect", &addr, e))?;
        c.set_nodelay(true)
            .map_err(|e| net("set_nodelay", &addr, e))?;
        let (s, _) = listener.accept().map_err(|e| net("accept", &addr, e))?;
        s.set_nodelay(true)
            .map_err(|e| net("set_nodelay", &addr, e))?;
        served.push(s);
        clients.push(c);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tid = Arc::new(AtomicI32::new(0));
    let responder = {
        let (stop, tid) = (stop.clone(), tid.clone());
        std::thread::Builder::new()
            .name("requests-responder".into())
            .spawn(move || {
                pin_thread(responder_core);
                // SAFETY: gettid has no preconditions.
                tid.store(unsafe { libc::gettid() }, Ordering::SeqCst);
                let r = respond(served, &answers, &stop);
                if r.is_err() {
                    stop.store(true, Ordering::SeqCst);
                }
                r
            })
            .map_err(|e| BenchError::io("spawn thread", "requests-responder", e))?
    };
    while tid.load(Ordering::SeqCst) == 0 && !responder.is_finished() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let probe_tid = tid.load(Ordering::SeqCst);
    let result = run(clients, Box::new(move || thread_cpu_from_proc(probe_tid)));
    stop.store(true, Ordering::SeqCst);
    let responded = responder.join().map_err(|_| BenchError::ThreadPanic {
        name: "requests-responder",
    })?;
    let r = result?;
    responded?;
    Ok(r)
}

/// The ping-pong baseline: the same loop, connections, depth and request
/// bytes against [`respond`] on loopback.
fn run_pingpong(
    a: &RequestsArgs,
    requests: &Arc<Vec<Vec<u8>>>,
    answers: Vec<Vec<u8>>,
    client_core: Option<usize>,
    responder_core: Option<usize>,
) -> Result<LoopResult, BenchError> {
    let answers = if a.acks == AcksArg::None {
        Vec::new()
    } else {
        answers
    };
    with_responder(a.connections, answers, responder_core, |streams, probe| {
        let mut clients = Vec::with_capacity(streams.len());
        for (i, c) in streams.into_iter().enumerate() {
            clients.push(LoopConn {
                pipe: Pipe::new(c, i, IN).map_err(|e| net("set_nonblocking", "loopback", e))?,
                requests: requests.clone(),
                sent_ns: vec![0; a.depth],
                out_requests: 0,
                shard: None,
                last_answer_ns: 0,
            });
        }
        let plan = LoopPlan {
            depth: a.depth,
            answers: a.acks != AcksArg::None,
            warmup_ns: secs_ns(a.warmup.min(1.0)),
            measure_ns: secs_ns(a.baseline_secs),
            label: "ping-pong",
        };
        drive_on(clients, plan, probe, client_core)
    })
}

/// The open loop's ping-pong baseline: the same schedule, caps and request
/// bytes (partition 0) against [`respond`] on loopback.
fn run_open_pingpong(
    a: &RequestsArgs,
    topic: &str,
    frame: &Arc<Vec<u8>>,
    plan: OpenPlan,
    cap: usize,
    client_core: Option<usize>,
    responder_core: Option<usize>,
) -> Result<OpenResult, BenchError> {
    let answers = baseline_answers(topic, cap)?;
    with_responder(a.connections, answers, responder_core, |streams, probe| {
        let links = streams
            .into_iter()
            .map(|stream| Link {
                stream,
                shard: None,
                parts: vec![0],
            })
            .collect();
        let conns = open_conns(a, "loopback", topic, frame, cap, links)?;
        drive_open_on(conns, plan, probe, client_core)
    })
}

// ------------------------------------------------------------- the server

/// Connects and performs the `ApiVersions` handshake on a blocking socket;
/// returns the stream and the server's answer (its in-flight limit per
/// connection, the serving shard).
fn handshake(addr: &str) -> Result<(TcpStream, ApiVersionsResponse), BenchError> {
    let mut s = TcpStream::connect(addr).map_err(|e| net("connect", addr, e))?;
    s.set_nodelay(true)
        .map_err(|e| net("set_nodelay", addr, e))?;
    s.set_read_timeout(Some(SETUP_TIMEOUT))
        .map_err(|e| net("set_read_timeout", addr, e))?;
    let body = RequestBody::ApiVersions(ApiVersionsRequest {
        client_name: "strom-bench/requests".into(),
        min_version: PROTOCOL_VERSION_MIN,
        max_version: PROTOCOL_VERSION_MAX,
    });
    let req = encode_request(0, &body).map_err(|e| cfg(format!("encode: {e}")))?;
    s.write_all(&req).map_err(|e| net("write", addr, e))?;
    let mut buf = vec![0u8; 4096];
    let mut have = 0;
    let len = loop {
        if let Some(b) = peek_message(&buf[..have], RESPONSE_BYTES_MAX)
            .map_err(|e| cfg(format!("handshake with {addr}: {e}")))?
        {
            break b.message_len;
        }
        if let Some(need) = announced_len(&buf[..have]) {
            if need > buf.len() {
                buf.resize(need, 0);
            }
        }
        let n = s.read(&mut buf[have..]).map_err(|e| net("read", addr, e))?;
        if n == 0 {
            return Err(net(
                "read",
                addr,
                io::Error::new(io::ErrorKind::UnexpectedEof, "server closed"),
            ));
        }
        have += n;
    };
    let d = decode_response(&buf[..len]).map_err(|e| cfg(format!("handshake with {addr}: {e}")))?;
    match d.body {
        ResponseBody::ApiVersions(v) if v.error == ErrorCode::None => {
            s.set_read_timeout(None)
                .map_err(|e| net("set_read_timeout", addr, e))?;
            Ok((s, v))
        }
        other => Err(cfg(format!("handshake with {addr}: {other:?}"))),
    }
}

/// `strom_connections_open` per shard, from the server's `/metrics`.
fn connections_open(http: &str) -> Result<Vec<(usize, u64)>, BenchError> {
    let mut s = TcpStream::connect(http).map_err(|e| net("connect", http, e))?;
    s.set_read_timeout(Some(SETUP_TIMEOUT))
        .map_err(|e| net("set_read_timeout", http, e))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: strom\r\n\r\n")
        .map_err(|e| net("write", http, e))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| net("read /metrics", http, e))?;
    Ok(parse_connections_open(&text))
}

/// `strom_connections_open{shard="N"} V` lines of a Prometheus exposition.
fn parse_connections_open(text: &str) -> Vec<(usize, u64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("strom_connections_open{")?;
            let (labels, value) = rest.split_once('}')?;
            let shard = labels
                .split(',')
                .find_map(|kv| kv.trim().strip_prefix("shard=\""))?
                .trim_end_matches('"')
                .parse()
                .ok()?;
            let value = value.trim().parse::<f64>().ok()? as u64;
            Some((shard, value))
        })
        .collect()
}

/// The shard whose gauge rose by one between two scrapes.
fn risen_shard(before: &[(usize, u64)], after: &[(usize, u64)]) -> Option<usize> {
    let mut risen = after.iter().filter(|(s, v)| {
        let b = before.iter().find(|(t, _)| t == s).map_or(0, |x| x.1);
        *v == b + 1
    });
    let first = risen.next()?.0;
    let others_same = after
        .iter()
        .filter(|(s, _)| *s != first)
        .all(|(s, v)| before.iter().find(|(t, _)| t == s).map(|x| x.1) == Some(*v));
    others_same.then_some(first)
}

/// How the shard that accepted each connection was learnt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum ShardSource {
    /// One shard: every connection is on it.
    SingleShard,
    /// The handshake's `shard_id` (servers that announce `shard_ports`).
    Handshake,
    /// `strom_connections_open` before and after each connection.
    Metrics,
    /// Not known (placement `any` only).
    Unknown,
}

/// Opens `n` connections, each handshaken, and the shard that accepted
/// each, by `source` (with `Metrics`: one connection at a time, a scrape of
/// `http` after each).
fn open_connections(
    addr: &str,
    http: Option<&str>,
    source: ShardSource,
    n: usize,
    depth: usize,
) -> Result<Vec<(TcpStream, Option<usize>)>, BenchError> {
    let mut out = Vec::with_capacity(n);
    let mut before = match (source, http) {
        (ShardSource::Metrics, Some(h)) => Some(connections_open(h)?),
        _ => None,
    };
    for i in 0..n {
        let (s, v) = handshake(addr)?;
        let inflight_max = v.inflight_requests_max;
        if depth > inflight_max as usize {
            return Err(cfg(format!(
                "--depth {depth} exceeds the server's {inflight_max} requests in flight per connection"
            )));
        }
        let mut shard = match source {
            ShardSource::SingleShard => Some(0),
            ShardSource::Handshake => Some(usize::from(v.shard_id)),
            ShardSource::Metrics | ShardSource::Unknown => None,
        };
        if let (Some(h), Some(b)) = (http, before.as_mut()) {
            for _ in 0..SHARD_PROBE_TRIES {
                let after = connections_open(h)?;
                shard = risen_shard(b, &after);
                *b = after;
                if shard.is_some() {
                    break;
                }
                // Another connection came or went meanwhile: look again.
                std::thread::sleep(Duration::from_millis(5));
            }
            if shard.is_none() {
                return Err(cfg(format!(
                    "connection {i}: /metrics at {h} did not show which shard accepted it"
                )));
            }
        }
        out.push((s, shard));
    }
    Ok(out)
}

/// The partitions each connection sends to, by placement.
fn eligible_partitions(
    placement: Placement,
    shards: usize,
    owners: &[usize],
    conn_shard: Option<usize>,
) -> Result<Vec<u32>, BenchError> {
    if placement == Placement::Forwarded && shards < 2 {
        return Err(cfg(
            "--placement forwarded needs a server with 2 or more shards",
        ));
    }
    let all = 0..owners.len() as u32;
    let parts: Vec<u32> = match (placement, conn_shard) {
        (Placement::Any, _) => all.collect(),
        (_, None) => return Err(cfg("--placement local/forwarded needs to know each connection's shard (--spawn, or --http with --server)")),
        (Placement::Local, Some(s)) => all.filter(|&p| owners[p as usize] == s).collect(),
        (Placement::Forwarded, Some(s)) => all.filter(|&p| owners[p as usize] != s).collect(),
    };
    if parts.is_empty() {
        return Err(cfg(format!(
            "no partition fits --placement {placement:?} for shard {conn_shard:?}: raise --partitions"
        )));
    }
    Ok(parts)
}

/// One handshaken connection to the server, with the shard that accepted
/// it (when known) and the partitions it may send to.
struct Link {
    stream: TcpStream,
    shard: Option<usize>,
    parts: Vec<u32>,
}

/// The server's side of a run: topic, connections, placement.
struct ServerSetup {
    shards: usize,
    links: Vec<Link>,
    per_shard: Vec<usize>,
    source: ShardSource,
}

fn setup_server(
    a: &RequestsArgs,
    addr: &str,
    http: Option<&str>,
    topic: &str,
) -> Result<ServerSetup, BenchError> {
    let mut admin = Client::connect(addr).map_err(|e| cfg(format!("connect {addr}: {e}")))?;
    let info = admin.server_info();
    let shards = usize::from(info.shard_count.max(1));
    // A server that announces per-shard ports also names the serving shard
    // in every handshake; an older one leaves `shard_id` at 0, so only
    // /metrics can tell.
    let source = if shards == 1 {
        ShardSource::SingleShard
    } else if !info.shard_ports.is_empty() {
        ShardSource::Handshake
    } else if http.is_some() {
        ShardSource::Metrics
    } else {
        ShardSource::Unknown
    };
    let configs: Vec<(String, String)> = a
        .topic_config
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| cfg(format!("--topic-config {kv:?}: want key=value")))
        })
        .collect::<Result<_, _>>()?;
    admin
        .create_topic(topic, a.partitions, &configs)
        .map_err(|e| cfg(format!("create topic {topic}: {e}")))?;
    let desc = admin
        .describe_topic(topic)
        .map_err(|e| cfg(format!("describe topic {topic}: {e}")))?;
    let mut owners = vec![0usize; a.partitions as usize];
    for p in &desc.partitions {
        if let Some(o) = owners.get_mut(p.partition as usize) {
            *o = usize::from(p.owner_shard);
        }
    }
    // The open loop has one request in flight per slot too, but no fixed
    // depth: the server's limit only makes it stop reading (back-pressure).
    let depth = if a.rate.is_some() { 1 } else { a.depth };
    let streams = open_connections(addr, http, source, a.connections, depth)?;
    drop(admin);
    let mut per_shard = vec![0usize; shards];
    let mut links = Vec::with_capacity(streams.len());
    for (stream, shard) in streams {
        if let Some(c) = shard.and_then(|s| per_shard.get_mut(s)) {
            *c += 1;
        }
        let parts = eligible_partitions(a.placement, shards, &owners, shard)?;
        links.push(Link {
            stream,
            shard,
            parts,
        });
    }
    Ok(ServerSetup {
        shards,
        links,
        per_shard,
        source,
    })
}

/// The closed loop's connections: slot *k* of connection *i* sends to
/// eligible partition *(i + k) mod n*.
fn closed_conns(
    a: &RequestsArgs,
    addr: &str,
    topic: &str,
    frame: &[u8],
    links: Vec<Link>,
) -> Result<Vec<LoopConn>, BenchError> {
    let mut conns = Vec::with_capacity(links.len());
    for (i, l) in links.into_iter().enumerate() {
        let parts = &l.parts;
        let requests = (0..a.depth)
            .map(|slot| {
                produce_request(slot, topic, parts[(i + slot) % parts.len()], a.acks, frame)
            })
            .collect::<Result<Vec<_>, _>>()?;
        conns.push(LoopConn {
            pipe: Pipe::new(l.stream, i, IN).map_err(|e| net("set_nonblocking", addr, e))?,
            requests: Arc::new(requests),
            sent_ns: vec![0; a.depth],
            out_requests: 0,
            shard: l.shard,
            last_answer_ns: 0,
        });
    }
    Ok(conns)
}

/// The partition of each open-loop connection: connections with the same
/// eligible partitions take them in turn, so they spread evenly (100
/// connections over 10 partitions: 10 on each). With `any` every connection
/// is in one group; with `local`/`forwarded`, one group per shard.
fn spread_partitions(placement: Placement, links: &[(Option<usize>, &[u32])]) -> Vec<u32> {
    let mut turn: Vec<(Option<usize>, usize)> = Vec::new();
    links
        .iter()
        .map(|&(shard, parts)| {
            assert!(!parts.is_empty(), "eligible_partitions never returns none");
            let group = if placement == Placement::Any {
                None
            } else {
                shard
            };
            let k = match turn.iter_mut().find(|(g, _)| *g == group) {
                Some((_, k)) => k,
                None => {
                    turn.push((group, 0));
                    &mut turn.last_mut().expect("just pushed").1
                }
            };
            let p = parts[*k % parts.len()];
            *k += 1;
            p
        })
        .collect()
}

/// The open loop's connections, each with its partition, request head and
/// outstanding cap.
fn open_conns(
    a: &RequestsArgs,
    addr: &str,
    topic: &str,
    frame: &Arc<Vec<u8>>,
    cap: usize,
    links: Vec<Link>,
) -> Result<Vec<OpenConn>, BenchError> {
    let view: Vec<(Option<usize>, &[u32])> = links
        .iter()
        .map(|l| (l.shard, l.parts.as_slice()))
        .collect();
    let partitions = spread_partitions(a.placement, &view);
    let mut conns = Vec::with_capacity(links.len());
    for (i, (l, partition)) in links.into_iter().zip(partitions).enumerate() {
        let (head, cid_at) = produce_head(topic, partition, a.acks, frame.len())?;
        conns.push(OpenConn {
            pipe: Pipe::new(l.stream, i, IN).map_err(|e| net("set_nonblocking", addr, e))?,
            alive: true,
            head,
            cid_at,
            frame: frame.clone(),
            schedule: None,
            slots: Slots::new(cap),
            shard: l.shard,
            partition,
        });
    }
    Ok(conns)
}

// --------------------------------------------------------------- report

fn us(h: &Histogram<u64>) -> LatencySummary {
    LatencySummary::from_histogram(h, "ns").scaled(1e-3, "us")
}

fn per_request_us(cpu_secs: Option<f64>, requests: u64) -> Option<f64> {
    cpu_secs
        .filter(|_| requests > 0)
        .map(|c| c * 1e6 / requests as f64)
}

fn build_report(
    a: &RequestsArgs,
    shards: usize,
    per_shard: &[usize],
    load0: Option<f64>,
    base: Option<&LoopResult>,
    r: &LoopResult,
) -> Report {
    let mut rep = Report::new("requests", params_json(a, shards));
    if let Some(l) = load0 {
        rep.add_figure(Figure::new("machine_loadavg_1m_before", l, "threads"));
    }
    let with = |f: Figure, name: &str, v: Option<f64>| match v {
        Some(v) => f.with_baseline(name, v),
        None => f,
    };
    let rate = |x: &LoopResult| x.requests as f64 / x.secs;
    let base_rate = base.map(rate);
    if let Some(b) = base_rate {
        rep.add_figure(Figure::new("raw_tcp_pingpong_requests", b, "req/s"));
    }
    rep.add_figure(with(
        Figure::new("requests", rate(r), "req/s"),
        "raw_tcp_pingpong_requests",
        base_rate,
    ));
    rep.add_figure(Figure::new(
        "requests_per_shard",
        rate(r) / shards.max(1) as f64,
        "req/s",
    ));
    if a.records_per_request > 1 {
        rep.add_figure(Figure::new(
            "records",
            rate(r) * a.records_per_request as f64,
            "rec/s",
        ));
    }
    if a.acks != AcksArg::None {
        let s = us(&r.latency);
        let b = base.map(|b| us(&b.latency));
        for (name, v, bv) in [
            ("p50", s.p50, b.as_ref().map(|b| b.p50)),
            ("p99", s.p99, b.as_ref().map(|b| b.p99)),
            ("p99_9", s.p99_9, b.as_ref().map(|b| b.p99_9)),
            ("max", s.max, b.as_ref().map(|b| b.max)),
        ] {
            rep.add_figure(with(
                Figure::new(format!("request_latency_{name}"), v, "us"),
                &format!("raw_tcp_pingpong_latency_{name}"),
                bv,
            ));
        }
        rep.add_latency("request_latency", s);
        if let Some(b) = b {
            rep.add_latency("raw_tcp_pingpong_latency", b);
        }
    }
    let base_peer = base.and_then(|b| per_request_us(b.peer_cpu_secs, b.requests));
    if let Some(v) = per_request_us(r.peer_cpu_secs, r.requests) {
        rep.add_figure(with(
            Figure::new("server_cpu_per_request", v, "us"),
            "raw_responder_cpu_per_request",
            base_peer,
        ));
        rep.add_figure(Figure::new(
            "server_cpu",
            r.peer_cpu_secs.unwrap_or(0.0) / r.secs,
            "cores",
        ));
    }
    let base_client = base.and_then(|b| per_request_us(Some(b.client_cpu_secs), b.requests));
    if let Some(v) = per_request_us(Some(r.client_cpu_secs), r.requests) {
        rep.add_figure(with(
            Figure::new("client_cpu_per_request", v, "us"),
            "raw_pingpong_client_cpu_per_request",
            base_client,
        ));
        rep.add_figure(Figure::new(
            "client_cpu",
            r.client_cpu_secs / r.secs,
            "cores",
        ));
    }
    if r.responses > 0 {
        rep.add_figure(with(
            Figure::new(
                "response_bytes",
                r.response_bytes as f64 / r.responses as f64,
                "B",
            ),
            "raw_pingpong_response_bytes",
            base.filter(|b| b.responses > 0)
                .map(|b| b.response_bytes as f64 / b.responses as f64),
        ));
    }
    for (s, n) in per_shard.iter().enumerate() {
        rep.add_figure(Figure::new(
            format!("connections_on_shard_{s}"),
            *n as f64,
            "conns",
        ));
    }
    rep
}

/// What the open loop was asked to do, for its report.
struct OpenSpec {
    rate: f64,
    interval_ns: f64,
    cap: usize,
    request_bytes: usize,
}

/// The measured seconds that lie wholly in the window (a last partial
/// second would look slow for no reason); all measured ones if none is.
fn full_seconds(series: &[OpenSecond]) -> Vec<&OpenSecond> {
    let full: Vec<&OpenSecond> = series
        .iter()
        .filter(|p| !p.warmup && p.secs >= 0.999)
        .collect();
    if full.is_empty() {
        series.iter().filter(|p| !p.warmup).collect()
    } else {
        full
    }
}

#[allow(clippy::too_many_arguments)]
fn build_open_report(
    a: &RequestsArgs,
    spec: &OpenSpec,
    shards: usize,
    per_shard: &[usize],
    load0: Option<f64>,
    base: Option<&OpenResult>,
    r: &OpenResult,
) -> Report {
    let mut rep = Report::new("requests", params_json(a, shards));
    if let Some(l) = load0 {
        rep.add_figure(Figure::new("machine_loadavg_1m_before", l, "threads"));
    }
    let with = |f: Figure, name: &str, v: Option<f64>| match v {
        Some(v) => f.with_baseline(name, v),
        None => f,
    };
    let rpr = a.records_per_request as f64;
    let rate = spec.rate;
    rep.add_figure(Figure::new("target_rate", rate, "rec/s"));
    rep.add_figure(
        Figure::new("records", r.counts.completed as f64 * rpr / r.secs, "rec/s")
            .with_baseline("target_rate", rate),
    );
    let full = full_seconds(&r.series);
    let min = full
        .iter()
        .map(|p| p.completed_records_per_sec)
        .fold(f64::INFINITY, f64::min);
    if min.is_finite() {
        rep.add_figure(
            Figure::new("min_second_records", min, "rec/s").with_baseline("target_rate", rate),
        );
        let below = full
            .iter()
            .filter(|p| p.completed_records_per_sec < 0.9 * rate)
            .count();
        rep.add_figure(Figure::new(
            "seconds_below_0_9_of_rate",
            below as f64,
            format!("of {} s", full.len()),
        ));
    }
    rep.add_figure(Figure::new(
        "requests_sent",
        r.counts.sent as f64 / r.secs,
        "req/s",
    ));
    rep.add_figure(Figure::new(
        "request_interval_per_connection",
        spec.interval_ns / 1e6,
        "ms",
    ));
    rep.add_figure(Figure::new("request_bytes", spec.request_bytes as f64, "B"));
    rep.add_figure(Figure::new(
        "outstanding_cap_per_connection",
        spec.cap as f64,
        "reqs",
    ));
    if !r.latency.is_empty() {
        let s = us(&r.latency);
        let b = base
            .filter(|b| !b.latency.is_empty())
            .map(|b| us(&b.latency));
        for (name, v, bv) in [
            ("p50", s.p50, b.as_ref().map(|b| b.p50)),
            ("p99", s.p99, b.as_ref().map(|b| b.p99)),
            ("p99_9", s.p99_9, b.as_ref().map(|b| b.p99_9)),
            ("p99_99", s.p99_99, b.as_ref().map(|b| b.p99_99)),
            ("max", s.max, b.as_ref().map(|b| b.max)),
        ] {
            rep.add_figure(with(
                Figure::new(format!("ack_latency_{name}"), v, "us"),
                &format!("raw_tcp_pingpong_ack_latency_{name}"),
                bv,
            ));
        }
        if s.p99 > 0.0 {
            rep.add_figure(
                Figure::new("ack_p99_99_over_p99", s.p99_99 / s.p99, "x")
                    .with_baseline("target_max", 10.0),
            );
        }
        rep.add_latency("ack_latency", s);
        if let Some(b) = b {
            rep.add_latency("raw_tcp_pingpong_ack_latency", b);
        }
    }
    let c = &r.counts;
    for (name, v, unit) in [
        ("missed_requests", c.missed, "reqs"),
        ("down_requests", c.down, "reqs"),
        ("error_answers", c.errors, "reqs"),
        ("lost_requests", c.lost, "reqs"),
        ("unanswered_requests", r.unanswered, "reqs"),
        ("connection_failures", c.failures, "conns"),
    ] {
        rep.add_figure(Figure::new(name, v as f64, unit));
    }
    let per_req = |x: &OpenResult, cpu: Option<f64>| per_request_us(cpu, x.counts.completed);
    if let Some(v) = per_req(r, r.peer_cpu_secs) {
        rep.add_figure(with(
            Figure::new("server_cpu_per_request", v, "us"),
            "raw_responder_cpu_per_request",
            base.and_then(|b| per_req(b, b.peer_cpu_secs)),
        ));
        rep.add_figure(Figure::new(
            "server_cpu",
            r.peer_cpu_secs.unwrap_or(0.0) / r.secs,
            "cores",
        ));
    }
    if let Some(v) = per_req(r, Some(r.client_cpu_secs)) {
        rep.add_figure(with(
            Figure::new("client_cpu_per_request", v, "us"),
            "raw_pingpong_client_cpu_per_request",
            base.and_then(|b| per_req(b, Some(b.client_cpu_secs))),
        ));
    }
    rep.add_figure(Figure::new(
        "client_cpu",
        r.client_cpu_secs / r.secs,
        "cores",
    ));
    for (s, n) in per_shard.iter().enumerate() {
        rep.add_figure(Figure::new(
            format!("connections_on_shard_{s}"),
            *n as f64,
            "conns",
        ));
    }
    rep
}

fn open_result_json(r: &OpenResult, records_per_request: usize) -> Value {
    let samples = |v: &[(String, u64)]| {
        v.iter()
            .map(|(m, n)| json!({ "message": m, "count": n }))
            .collect::<Vec<_>>()
    };
    json!({
        "measured_secs": r.secs,
        "counts": r.counts,
        "completed_records": r.counts.completed * records_per_request as u64,
        "records_per_sec": (r.counts.completed * records_per_request as u64) as f64 / r.secs,
        "unanswered": r.unanswered,
        "client_cpu_secs": r.client_cpu_secs,
        "peer_cpu_secs": r.peer_cpu_secs,
        "errors": samples(&r.errors),
        "failures": samples(&r.failures),
        "series": r.series,
    })
}

fn params_json(a: &RequestsArgs, shards: usize) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("resolved".into(), json!({ "shards": shards }));
    }
    v
}

fn result_json(r: &LoopResult) -> Value {
    json!({
        "requests": r.requests,
        "measured_secs": r.secs,
        "requests_per_sec": r.requests as f64 / r.secs,
        "responses": r.responses,
        "response_bytes": r.response_bytes,
        "client_cpu_secs": r.client_cpu_secs,
        "peer_cpu_secs": r.peer_cpu_secs,
    })
}

// ----------------------------------------------------------------- main

/// Where a run's server is: spawned (kept alive by the handle) or given.
struct Target {
    server: Option<crate::spawn::SpawnedServer>,
    addr: String,
    http: Option<String>,
    pid: Option<u32>,
}

fn start_target(a: &RequestsArgs) -> Result<Target, BenchError> {
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
    let (addr, http, pid) = match (&server, &a.server) {
        (Some(s), _) => (s.addr.clone(), s.http_addr.clone(), Some(s.pid())),
        (None, Some(addr)) => (addr.clone(), a.http.clone(), a.server_pid),
        (None, None) => return Err(cfg("give --server HOST:PORT or --spawn")),
    };
    Ok(Target {
        server,
        addr,
        http,
        pid,
    })
}

/// Deletes the run's topic (unless kept) and stops a spawned server.
fn finish_target(a: &RequestsArgs, t: Target, topic: &str) {
    if !a.keep_topics {
        if let Ok(mut c) = Client::connect(&t.addr) {
            let _ = c.delete_topic(topic);
        }
    }
    drop(t.server);
}

/// Entry point of `requests`.
pub fn main(a: &RequestsArgs) -> Result<(), BenchError> {
    check_args(a)?;
    let cores: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let client_core = a.client_core.or(cores.last().copied());
    let responder_core = a.responder_core.or(cores.first().copied());
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let topic = format!("strom-bench-requests-{}-{stamp}", std::process::id());
    let frame = records_frame(a.message_size, a.records_per_request);
    let load0 = loadavg();
    if let Some(rate) = a.rate {
        return main_open(a, rate, &topic, frame, load0, client_core, responder_core);
    }

    let base = if a.no_baseline {
        None
    } else {
        eprintln!(
            "baseline: loopback ping-pong, {} connections x depth {}, {} s",
            a.connections, a.depth, a.baseline_secs
        );
        let reqs = (0..a.depth)
            .map(|slot| produce_request(slot, &topic, 1, a.acks, &frame))
            .collect::<Result<Vec<_>, _>>()?;
        let answers = baseline_answers(&topic, a.depth)?;
        Some(run_pingpong(
            a,
            &Arc::new(reqs),
            answers,
            client_core,
            responder_core,
        )?)
    };

    let target = start_target(a)?;
    let pid = target.pid;
    let setup = setup_server(a, &target.addr, target.http.as_deref(), &topic);
    let result = setup.and_then(|s| {
        eprintln!(
            "{} connections on {} shard(s) {:?} (learnt from {:?}), placement {:?}",
            a.connections, s.shards, s.per_shard, s.source, a.placement
        );
        let conns = closed_conns(a, &target.addr, &topic, &frame, s.links)?;
        let plan = LoopPlan {
            depth: a.depth,
            answers: a.acks != AcksArg::None,
            warmup_ns: secs_ns(a.warmup),
            measure_ns: secs_ns(a.duration),
            label: "server",
        };
        let probe: CpuProbe = Box::new(move || pid.and_then(|p| cpu_secs(Some(p))));
        let r = drive_on(conns, plan, probe, client_core)?;
        Ok((s.shards, s.per_shard, s.source, r))
    });
    finish_target(a, target, &topic);
    let (shards, per_shard, source, r) = result?;
    let report = build_report(a, shards, &per_shard, load0, base.as_ref(), &r);
    report.print();
    if let Some(path) = &a.json {
        let mut doc = report.to_json();
        if let Some(o) = doc.as_object_mut() {
            o.insert("name".into(), json!(a.name));
            o.insert("topic".into(), json!(topic));
            o.insert("connections_per_shard".into(), json!(per_shard));
            o.insert("shard_learnt_from".into(), json!(source));
            o.insert("server".into(), result_json(&r));
            o.insert(
                "baseline".into(),
                base.as_ref().map_or(Value::Null, result_json),
            );
        }
        write_json_value(path, &doc)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// `requests --rate`: the open loop (see the module header).
fn main_open(
    a: &RequestsArgs,
    rate: f64,
    topic: &str,
    frame: Vec<u8>,
    load0: Option<f64>,
    client_core: Option<usize>,
    responder_core: Option<usize>,
) -> Result<(), BenchError> {
    let frame = Arc::new(frame);
    let interval = interval_ns(rate, a.connections, a.records_per_request);
    let request_bytes = produce_head(topic, 0, a.acks, frame.len())?.0.len() + frame.len();
    let cap = outstanding_cap(a.connections, request_bytes);
    let spec = OpenSpec {
        rate,
        interval_ns: interval,
        cap,
        request_bytes,
    };
    let plan = |label, warmup: f64, measure: f64| OpenPlan {
        records_per_request: a.records_per_request as u64,
        interval_ns: interval,
        warmup_ns: secs_ns(warmup),
        measure_ns: secs_ns(measure),
        drain_ns: DRAIN_MS * 1_000_000,
        label,
    };
    eprintln!(
        "open loop: {} records/s over {} connections: each sends a request of {} records ({} B) every {:.3} ms, at most {cap} outstanding",
        fmt_value(rate),
        a.connections,
        a.records_per_request,
        request_bytes,
        interval / 1e6
    );
    let base = if a.no_baseline {
        None
    } else {
        eprintln!(
            "baseline: loopback ping-pong on the same schedule, {} s",
            a.baseline_secs
        );
        Some(run_open_pingpong(
            a,
            topic,
            &frame,
            plan("ping-pong", a.warmup.min(1.0), a.baseline_secs),
            cap,
            client_core,
            responder_core,
        )?)
    };

    let target = start_target(a)?;
    let pid = target.pid;
    let setup = setup_server(a, &target.addr, target.http.as_deref(), topic);
    let result = setup.and_then(|s| {
        let conns = open_conns(a, &target.addr, topic, &frame, cap, s.links)?;
        let mut per_partition = vec![0usize; a.partitions as usize];
        for c in &conns {
            if let Some(n) = per_partition.get_mut(c.partition as usize) {
                *n += 1;
            }
        }
        eprintln!(
            "{} connections on {} shard(s) {:?} (learnt from {:?}), placement {:?}, per partition {:?}",
            a.connections, s.shards, s.per_shard, s.source, a.placement, per_partition
        );
        let probe: CpuProbe = Box::new(move || pid.and_then(|p| cpu_secs(Some(p))));
        let r = drive_open_on(
            conns,
            plan("server", a.warmup, a.duration),
            probe,
            client_core,
        )?;
        Ok((s.shards, s.per_shard, s.source, per_partition, r))
    });
    finish_target(a, target, topic);
    let (shards, per_shard, source, per_partition, r) = result?;
    let report = build_open_report(a, &spec, shards, &per_shard, load0, base.as_ref(), &r);
    report.print();
    for (what, list) in [
        ("error answer", &r.errors),
        ("connection failure", &r.failures),
    ] {
        for (m, n) in list {
            println!("{what} x{n}: {m}");
        }
    }
    println!();
    print!("{}", ascii_chart(&r.series, rate));
    if let Some(path) = &a.plot {
        let points: Vec<crate::plot::SecondSample> = r
            .series
            .iter()
            .filter(|p| !p.warmup)
            .map(|p| crate::plot::SecondSample {
                t: p.t as f64,
                records_per_sec: p.completed_records_per_sec,
                p99_ms: p.p99_us.map(|v| v / 1e3),
            })
            .collect();
        let title = format!(
            "requests --rate {} --connections {} --records-per-request {} --message-size {}",
            fmt_value(rate),
            a.connections,
            a.records_per_request,
            a.message_size
        );
        crate::plot::draw_seconds(path, &title, &points, rate)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &a.json {
        let mut doc = report.to_json();
        if let Some(o) = doc.as_object_mut() {
            o.insert("name".into(), json!(a.name));
            o.insert("topic".into(), json!(topic));
            o.insert("connections_per_shard".into(), json!(per_shard));
            o.insert("connections_per_partition".into(), json!(per_partition));
            o.insert("shard_learnt_from".into(), json!(source));
            o.insert(
                "open_loop".into(),
                json!({
                    "rate": rate,
                    "records_per_request": a.records_per_request,
                    "interval_ms": interval / 1e6,
                    "request_bytes": request_bytes,
                    "outstanding_cap_per_connection": cap,
                    "drain_ms": DRAIN_MS,
                }),
            );
            o.insert("server".into(), open_result_json(&r, a.records_per_request));
            o.insert(
                "baseline".into(),
                base.as_ref()
                    .map_or(Value::Null, |b| open_result_json(b, a.records_per_request)),
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

    #[test]
    fn connections_open_lines() {
        let text = "# TYPE strom_connections_open gauge\n\
                    strom_connections_open{shard=\"0\"} 3\n\
                    strom_connections_open{shard=\"1\"} 0\n\
                    strom_connections_refused_total{shard=\"0\"} 0\n";
        let v = parse_connections_open(text);
        assert_eq!(v, vec![(0, 3), (1, 0)]);
        assert_eq!(risen_shard(&v, &[(0, 3), (1, 1)]), Some(1));
        assert_eq!(risen_shard(&v, &[(0, 4), (1, 0)]), Some(0));
        // Two changes at once: ambiguous.
        assert_eq!(risen_shard(&v, &[(0, 4), (1, 1)]), None);
        assert_eq!(risen_shard(&v, &v), None);
    }

    #[test]
    fn placement_picks_partitions() {
        let owners = [0, 1, 0, 1];
        let p = |pl, s| eligible_partitions(pl, 2, &owners, s);
        assert_eq!(p(Placement::Local, Some(1)).unwrap(), vec![1, 3]);
        assert_eq!(p(Placement::Forwarded, Some(1)).unwrap(), vec![0, 2]);
        assert_eq!(p(Placement::Any, None).unwrap(), vec![0, 1, 2, 3]);
        assert!(p(Placement::Local, None).is_err());
        assert!(eligible_partitions(Placement::Forwarded, 1, &[0, 0], Some(0)).is_err());
        assert!(eligible_partitions(Placement::Local, 2, &[0, 0], Some(1)).is_err());
    }

    #[test]
    fn baseline_answers_match_slots() {
        let answers = baseline_answers("t", 4).unwrap();
        for (slot, a) in answers.iter().enumerate() {
            assert_eq!(check_answer(a, 4).unwrap(), slot);
        }
        assert!(check_answer(&answers[3], 3).is_err());
    }

    /// 100 connections at 50,000 records/s: in requests of 100 records each
    /// connection sends every 200 ms, in requests of 10 every 20 ms; the
    /// brief's small run (20 connections, 5,000/s, 10 per request) every
    /// 40 ms.
    #[test]
    fn open_loop_intervals() {
        assert_eq!(interval_ns(50_000.0, 100, 100), 200_000_000.0);
        assert_eq!(interval_ns(50_000.0, 100, 10), 20_000_000.0);
        assert_eq!(interval_ns(5_000.0, 20, 10), 40_000_000.0);
    }

    #[test]
    fn schedule_due_times_interleave_and_never_drift() {
        let start = 1_000_000_000;
        let interval = 200_000_000.0;
        // Connection 3 of 4 starts three quarters of an interval late.
        let mut s = Schedule::new(start, interval, 3, 4);
        assert_eq!(s.due_ns(0), start + 150_000_000);
        assert_eq!(s.due_ns(1), start + 350_000_000);
        // Request k is due at start + phase + k * interval exactly, however
        // late it is taken (no drift after 10 minutes of 5 per second).
        assert_eq!(s.due_ns(3_000), start + 150_000_000 + 3_000 * 200_000_000);
        // Nothing is due before its time.
        assert_eq!(s.take(start + 149_999_999, u64::MAX), None);
        assert_eq!(
            s.take(start + 150_000_000, u64::MAX),
            Some(start + 150_000_000)
        );
        assert_eq!(s.take(start + 150_000_000, u64::MAX), None);
        // A loop that wakes late takes every request due meanwhile, each
        // with its own scheduled time (latency counts from there).
        let late = start + 1_000_000_000;
        let taken: Vec<u64> = std::iter::from_fn(|| s.take(late, u64::MAX)).collect();
        assert_eq!(
            taken,
            vec![
                start + 350_000_000,
                start + 550_000_000,
                start + 750_000_000,
                start + 950_000_000
            ]
        );
        // Nothing scheduled at or after the end is taken.
        let end = start + 1_150_000_000;
        assert_eq!(s.take(u64::MAX, end), None);
        assert_eq!(s.next_due_ns(), start + 1_150_000_000);
        // Four connections together: one request every interval / 4.
        let mut all: Vec<u64> = (0..4)
            .flat_map(|i| {
                let s = Schedule::new(start, interval, i, 4);
                (0..3).map(move |k| s.due_ns(k))
            })
            .collect();
        all.sort_unstable();
        let gaps: Vec<u64> = all.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|&g| g == 50_000_000), "{gaps:?}");
    }

    #[test]
    fn slots_cap_outstanding_and_free_on_answer() {
        let mut s = Slots::new(3);
        let a = s.take(10).unwrap();
        let b = s.take(20).unwrap();
        let c = s.take(30).unwrap();
        assert_eq!(s.outstanding(), 3);
        // At the cap: the next request is missed, not queued.
        assert_eq!(s.take(40), None);
        assert_eq!(s.outstanding(), 3);
        // Answers may come in any order; each frees its slot once.
        assert_eq!(s.complete(u64::from(b)), Some(20));
        assert_eq!(s.complete(u64::from(b)), None);
        assert_eq!(s.complete(99), None);
        assert_eq!(s.outstanding(), 2);
        let d = s.take(50).unwrap();
        assert_eq!(d, b);
        assert_eq!(s.complete(u64::from(a)), Some(10));
        let mut left = Vec::new();
        assert_eq!(s.clear(|due| left.push(due)), 2);
        left.sort_unstable();
        assert_eq!(left, vec![30, 50]);
        assert_eq!(s.outstanding(), 0);
        assert_eq!(s.complete(u64::from(c)), None);
    }

    /// A server that stops answering: the schedule goes on, the first
    /// `cap` requests are sent and every later one is counted as missed;
    /// when answers come back, sending resumes on the same schedule.
    #[test]
    fn backlog_beyond_the_cap_is_missed_and_the_schedule_kept() {
        let interval = 20_000_000.0; // 50 requests/s
        let mut sched = Schedule::new(0, interval, 0, 1);
        let mut slots = Slots::new(8);
        let (mut sent, mut missed) = (Vec::new(), 0u64);
        fn step(
            now: u64,
            sched: &mut Schedule,
            slots: &mut Slots,
            sent: &mut Vec<(u32, u64)>,
            missed: &mut u64,
        ) {
            while let Some(due) = sched.take(now, u64::MAX) {
                match slots.take(due) {
                    Some(slot) => sent.push((slot, due)),
                    None => *missed += 1,
                }
            }
        }
        // One second of stall: 50 requests due (0 ms .. 980 ms).
        step(999_999_999, &mut sched, &mut slots, &mut sent, &mut missed);
        assert_eq!(sent.len(), 8);
        assert_eq!(missed, 42);
        assert_eq!(sched.next_due_ns(), 1_000_000_000);
        // All answers arrive; the next due request goes out on schedule.
        for &(slot, _) in &sent {
            assert!(slots.complete(u64::from(slot)).is_some());
        }
        step(
            1_000_000_000,
            &mut sched,
            &mut slots,
            &mut sent,
            &mut missed,
        );
        assert_eq!(sent.len(), 9);
        assert_eq!(sent[8].1, 1_000_000_000);
        assert_eq!(missed, 42);
    }

    #[test]
    fn outstanding_cap_by_bytes() {
        // 100 connections of ~103 KB requests: 2.6 MiB each, 25 requests.
        assert_eq!(outstanding_cap(100, 103_000), 26);
        // Small requests: the count cap.
        assert_eq!(outstanding_cap(100, 1_100), OUTSTANDING_MAX);
        // Huge ones: still one.
        assert_eq!(outstanding_cap(4096, 16 << 20), 1);
    }

    #[test]
    fn seconds_are_counted_from_the_window() {
        assert_eq!(second_of(5_000_000_000, 5_000_000_000), 0);
        assert_eq!(second_of(4_999_999_999, 5_000_000_000), -1);
        assert_eq!(second_of(3_000_000_000, 5_000_000_000), -2);
        assert_eq!(second_of(6_500_000_000, 5_000_000_000), 1);
        // 1.5 s warm-up, 2.5 s measured: seconds -2 (0.5 s), -1, 0, 1, 2 (0.5 s).
        let (start, window) = (10_000_000_000u64, 11_500_000_000u64);
        let end = window + 2_500_000_000;
        let mut s = Seconds::new(start, window, end, 10);
        let mut c = OpenCounts {
            completed: 5,
            ..OpenCounts::default()
        };
        assert_eq!(s.advance(window - 1, &c), 1);
        assert_eq!(s.points[0].t, -2);
        assert!((s.points[0].secs - 0.5).abs() < 1e-9);
        assert_eq!(s.points[0].completed_records, 50);
        assert_eq!(s.points[0].completed_records_per_sec, 100.0);
        s.hist.saturating_record(2_000_000);
        c.completed = 7;
        assert_eq!(s.advance(window + 1_000_000_000, &c), 2);
        assert_eq!(s.points[1].t, -1);
        assert!(s.points[1].warmup);
        assert_eq!(s.points[1].completed_records, 20);
        assert!((s.points[1].p99_us.unwrap() - 2_000.0).abs() < 5.0);
        assert_eq!(s.points[2].t, 0);
        assert!(!s.points[2].warmup);
        assert_eq!(s.points[2].p99_us, None);
        assert_eq!(s.next_boundary_ns(), window + 2_000_000_000);
        assert_eq!(s.advance(u64::MAX, &c), 1);
        assert_eq!(s.next_boundary_ns(), end);
        assert_eq!(s.finish(&c), 1);
        assert_eq!(s.points.len(), 5);
        assert!((s.points[4].secs - 0.5).abs() < 1e-9);
        assert_eq!(s.finish(&c), 0);
        assert_eq!(full_seconds(&s.points).len(), 2);
    }

    #[test]
    fn head_patching_sets_the_correlation_id() {
        let frame = records_frame(16, 3);
        let (mut head, at) = produce_head("t", 7, AcksArg::Leader, frame.len()).unwrap();
        for id in [0u64, 5, 1023] {
            set_correlation_id(&mut head, at, id);
            let mut msg = head.clone();
            msg.extend_from_slice(&frame);
            assert_eq!(peek_correlation_id(&msg), Some(id));
            let b = peek_message(&msg, MESSAGE_BYTES_MAX).unwrap().unwrap();
            assert_eq!(b.message_len, msg.len());
        }
    }

    #[test]
    fn partitions_spread_evenly() {
        let all: Vec<u32> = (0..10).collect();
        let links: Vec<(Option<usize>, &[u32])> = (0..100).map(|_| (None, &all[..])).collect();
        let p = spread_partitions(Placement::Any, &links);
        for part in 0..10 {
            assert_eq!(p.iter().filter(|&&x| x == part).count(), 10);
        }
        // Local: each shard's connections take turns over its partitions.
        let (even, odd) = ([0u32, 2], [1u32, 3]);
        let links = [
            (Some(0), &even[..]),
            (Some(1), &odd[..]),
            (Some(0), &even[..]),
            (Some(0), &even[..]),
            (Some(1), &odd[..]),
        ];
        assert_eq!(
            spread_partitions(Placement::Local, &links),
            vec![0, 1, 2, 0, 3]
        );
    }

    #[test]
    fn chart_shows_target_and_dips() {
        let mk = |t: i64, rate: f64, p99_ms: f64| OpenSecond {
            t,
            warmup: t < 0,
            secs: 1.0,
            completed_records: rate as u64,
            completed_records_per_sec: rate,
            sent_requests: 0,
            missed_requests: 0,
            down_requests: 0,
            error_answers: 0,
            p50_us: Some(p99_ms * 500.0),
            p99_us: Some(p99_ms * 1e3),
            max_us: Some(p99_ms * 2e3),
        };
        let mut pts: Vec<OpenSecond> = (0..20).map(|t| mk(t, 50_000.0, 2.0)).collect();
        pts[7] = mk(7, 20_000.0, 300.0);
        pts[8] = mk(8, 80_000.0, 2.0);
        pts.insert(0, mk(-1, 1.0, 1.0));
        let chart = ascii_chart(&pts, 50_000.0);
        let lines: Vec<&str> = chart.lines().collect();
        let row = |label: &str| {
            *lines
                .iter()
                .find(|l| l.trim_start().starts_with(&format!("{label} |")))
                .unwrap_or_else(|| panic!("no row {label}:\n{chart}"))
        };
        // 12 rows of 5,000 up to 60,000; the target row is full but for the
        // dip at second 7, which shows the target mark there.
        assert!(row("60000").ends_with("|        ^"), "{chart}");
        assert!(row("55000").ends_with("|        #"), "{chart}");
        assert!(row("50000").ends_with("|#######-############"), "{chart}");
        assert!(row("45000").ends_with("|#######.############"), "{chart}");
        assert!(row("20000").ends_with("|####################"), "{chart}");
        assert!(chart.contains("20 s"), "{chart}");
        // p99 levels 2, 5, ..., 500 ms: only the 300 ms second reaches 200.
        assert!(row("500.0").ends_with('|'), "{chart}");
        assert!(row("200.0").ends_with("|       #"), "{chart}");
        assert!(row("2.00").ends_with("|####################"), "{chart}");
        assert_eq!(ascii_chart(&[], 1.0), "");
    }

    #[test]
    fn levels_one_two_five() {
        assert_eq!(
            levels_125(2.0, 300.0),
            vec![2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]
        );
        assert_eq!(levels_125(0.3, 0.7), vec![0.2, 0.5, 1.0]);
        assert_eq!(levels_125(1.0, 1.0), vec![1.0]);
    }

    /// Open-loop flags for tests against a local peer.
    fn test_args() -> RequestsArgs {
        RequestsArgs {
            server: None,
            http: None,
            server_pid: None,
            local: SpawnArgs {
                spawn: false,
                server_bin: None,
                cores: None,
                server_arg: Vec::new(),
                dir: PathBuf::from("."),
            },
            connections: 4,
            depth: 1,
            rate: Some(4_000.0),
            records_per_request: 10,
            message_size: 100,
            partitions: 1,
            acks: AcksArg::Leader,
            placement: Placement::Any,
            duration: 1.0,
            warmup: 0.2,
            baseline_secs: 1.0,
            client_core: None,
            responder_core: None,
            no_baseline: false,
            keep_topics: false,
            topic_config: Vec::new(),
            json: None,
            plot: None,
            name: None,
        }
    }

    /// The open loop against the responder on loopback: on schedule, every
    /// request answered, nothing missed.
    #[test]
    fn open_loop_runs_against_the_responder() {
        let a = test_args();
        let given = |f: &dyn Fn(&mut RequestsArgs)| {
            let mut b = a.clone();
            b.server = Some("127.0.0.1:1".into());
            f(&mut b);
            check_args(&b)
        };
        assert!(given(&|_| {}).is_ok());
        assert!(given(&|b| b.acks = AcksArg::None).is_err());
        assert!(given(&|b| b.rate = Some(0.0)).is_err());
        assert!(given(&|b| b.records_per_request = 0).is_err());
        // One request per microsecond and connection at most.
        assert!(given(&|b| b.rate = Some(1e9)).is_err());
        assert!(given(&|b| {
            b.rate = None;
            b.plot = Some(PathBuf::from("x.svg"));
        })
        .is_err());
        let frame = Arc::new(records_frame(100, 10));
        let interval = interval_ns(4_000.0, 4, 10);
        let plan = OpenPlan {
            records_per_request: 10,
            interval_ns: interval,
            warmup_ns: 200_000_000,
            measure_ns: 1_000_000_000,
            drain_ns: 1_000_000_000,
            label: "test",
        };
        let r = run_open_pingpong(&a, "t", &frame, plan, 16, None, None).unwrap();
        // 4 connections x 100 requests/s x 1 s, give or take the edges.
        assert!((380..=420).contains(&r.counts.sent), "{:?}", r.counts);
        assert!(r.counts.completed >= 380, "{:?}", r.counts);
        assert_eq!(r.counts.missed + r.counts.errors + r.counts.failures, 0);
        assert_eq!(r.unanswered, 0);
        assert!(r.latency.len() >= 380);
        let measured: Vec<&OpenSecond> = r.series.iter().filter(|p| !p.warmup).collect();
        assert_eq!(measured.len(), 1);
        assert!(measured[0].completed_records >= 3_800, "{:?}", measured[0]);
        assert!(r.series.iter().any(|p| p.warmup));
    }

    /// Error answers and a peer that hangs up are counted, not fatal, and
    /// the run still ends on time.
    #[test]
    fn open_loop_counts_errors_and_failures() {
        let mut a = test_args();
        a.connections = 2;
        let frame = Arc::new(records_frame(10, 1));
        let interval = interval_ns(400.0, 2, 1);
        let plan = || OpenPlan {
            records_per_request: 1,
            interval_ns: interval,
            warmup_ns: 0,
            measure_ns: 300_000_000,
            drain_ns: 100_000_000,
            label: "test",
        };
        // Every answer is an error.
        let bad: Vec<Vec<u8>> = (0..8u64)
            .map(|slot| {
                let body = ResponseBody::Produce(ProduceResponse {
                    results: vec![ProduceResult {
                        topic: "t".into(),
                        partition: 0,
                        error: ErrorCode::InvalidRequest,
                        message: "no".into(),
                        base_offset: 0,
                        last_offset: 0,
                        append_time_ms: 0,
                        log_start_offset: 0,
                    }],
                });
                encode_response(slot, &body).unwrap()
            })
            .collect();
        let r = with_responder(2, bad, None, |streams, probe| {
            let links = streams
                .into_iter()
                .map(|stream| Link {
                    stream,
                    shard: None,
                    parts: vec![0],
                })
                .collect();
            let conns = open_conns(&a, "loopback", "t", &frame, 8, links)?;
            drive_open_on(conns, plan(), probe, None)
        })
        .unwrap();
        assert!(r.counts.sent >= 100, "{:?}", r.counts);
        assert_eq!(r.counts.errors, r.counts.sent, "{:?}", r.counts);
        assert_eq!(r.counts.completed + r.counts.failures, 0);
        assert_eq!(r.errors.len(), 1);
        assert!(r.errors[0].0.contains("InvalidRequest"), "{:?}", r.errors);
        assert!(r.latency.is_empty());

        // A peer that reads nothing and hangs up at once.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let links: Vec<Link> = (0..2)
            .map(|_| {
                let stream = TcpStream::connect(addr).unwrap();
                drop(listener.accept().unwrap());
                Link {
                    stream,
                    shard: None,
                    parts: vec![0],
                }
            })
            .collect();
        let conns = open_conns(&a, "loopback", "t", &frame, 8, links).unwrap();
        let t0 = std::time::Instant::now();
        let r = drive_open_on(conns, plan(), Box::new(|| None), None).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert_eq!(r.counts.failures, 2, "{:?}", r.counts);
        assert!(r.counts.down > 0, "{:?}", r.counts);
        assert_eq!(r.counts.completed, 0);
        assert!(!r.failures.is_empty());
    }

    /// The loop against the responder, end to end on loopback.
    #[test]
    fn pingpong_runs() {
        let a = RequestsArgs {
            server: None,
            http: None,
            server_pid: None,
            local: SpawnArgs {
                spawn: false,
                server_bin: None,
                cores: None,
                server_arg: Vec::new(),
                dir: PathBuf::from("."),
            },
            connections: 3,
            depth: 4,
            rate: None,
            records_per_request: 1,
            message_size: 100,
            partitions: 1,
            acks: AcksArg::Leader,
            placement: Placement::Any,
            duration: 0.3,
            warmup: 0.0,
            baseline_secs: 0.3,
            client_core: None,
            responder_core: None,
            no_baseline: false,
            keep_topics: false,
            topic_config: Vec::new(),
            json: None,
            plot: None,
            name: None,
        };
        let frame = records_frame(100, 1);
        let reqs = (0..4)
            .map(|s| produce_request(s, "t", 0, AcksArg::Leader, &frame))
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let r = run_pingpong(
            &a,
            &Arc::new(reqs),
            baseline_answers("t", 4).unwrap(),
            None,
            None,
        )
        .unwrap();
        assert!(r.requests > 0);
        assert_eq!(r.latency.len(), r.requests);
        assert!(r.peer_cpu_secs.is_some());
    }
}
