//! `requests`: many small produce requests from one event-loop thread, to
//! measure what the server spends per request rather than per byte.
//!
//! One thread, pinned to `--client-core` (default: the last core), drives
//! `--connections` non-blocking TCP connections through one level-triggered
//! `epoll` loop (raw `libc::epoll`; nothing else is needed). Each connection
//! keeps `--depth` one-record produce requests (native protocol) in flight:
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
    /// One-record produce requests in flight per connection.
    #[arg(long, default_value_t = 8)]
    pub depth: usize,
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

/// The slot a produce answer is for; any error in it fails the run.
fn check_answer(msg: &[u8], depth: usize) -> Result<usize, String> {
    let d = decode_response(msg).map_err(|e| format!("decode answer: {e}"))?;
    match d.body {
        ResponseBody::Produce(p) => {
            if let Some(bad) = p.results.iter().find(|r| r.error != ErrorCode::None) {
                return Err(format!(
                    "produce to {}/{} failed: {:?} {}",
                    bad.topic, bad.partition, bad.error, bad.message
                ));
            }
        }
        ResponseBody::Error(e) => {
            return Err(format!("request failed: {:?} {}", e.error, e.message))
        }
        other => return Err(format!("unexpected answer to produce: {other:?}")),
    }
    let slot = usize::try_from(d.correlation_id).unwrap_or(usize::MAX);
    if slot >= depth {
        return Err(format!("answer for unknown request {}", d.correlation_id));
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
    std::thread::Builder::new()
        .name("requests-loop".into())
        .spawn(move || {
            pin_thread(core);
            drive(&mut conns, &plan, &peer_cpu)
        })
        .map_err(|e| BenchError::io("spawn thread", "requests-loop", e))?
        .join()
        .map_err(|_| BenchError::ThreadPanic {
            name: "requests-loop",
        })?
}

// ------------------------------------------------------------- requests

/// A frame holding one record of `message_size` pseudo-random bytes.
fn one_record_frame(message_size: usize) -> Vec<u8> {
    let mut value = vec![0u8; message_size];
    Rng::new(0x5EED).fill(&mut value);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut b = BatchBuilder::new();
    b.push(&RecordIn {
        timestamp_ms: ms,
        key: None,
        value: Some(&value),
        headers: &[],
    });
    b.finish()
}

/// The whole request (envelope, table, frame) of one slot.
fn produce_request(
    slot: usize,
    topic: &str,
    partition: u32,
    acks: AcksArg,
    frame: &[u8],
) -> Result<Vec<u8>, BenchError> {
    let body = RequestBody::Produce(ProduceRequest {
        acks: acks.wire(),
        timeout_ms: PRODUCE_TIMEOUT_MS,
        batches: vec![ProduceBatch {
            topic: topic.to_string(),
            partition,
            batch_len: frame.len() as u32,
        }],
    });
    let mut head = encode_request(slot as u64, &body).map_err(|e| cfg(format!("encode: {e}")))?;
    head.extend_from_slice(frame);
    Ok(head)
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

/// The ping-pong baseline: the same loop, connections, depth and request
/// bytes against [`respond`] on loopback.
fn run_pingpong(
    a: &RequestsArgs,
    requests: &Arc<Vec<Vec<u8>>>,
    answers: Vec<Vec<u8>>,
    client_core: Option<usize>,
    responder_core: Option<usize>,
) -> Result<LoopResult, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| net("bind", "127.0.0.1:0", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| net("local_addr", "127.0.0.1:0", e))?
        .to_string();
    let mut clients = Vec::with_capacity(a.connections);
    let mut served = Vec::with_capacity(a.connections);
    for i in 0..a.connections {
        let c = TcpStream::connect(&addr).map_err(|e| net("connect", &addr, e))?;
        c.set_nodelay(true)
            .map_err(|e| net("set_nodelay", &addr, e))?;
        let (s, _) = listener.accept().map_err(|e| net("accept", &addr, e))?;
        s.set_nodelay(true)
            .map_err(|e| net("set_nodelay", &addr, e))?;
        served.push(s);
        clients.push(LoopConn {
            pipe: Pipe::new(c, i, IN).map_err(|e| net("set_nonblocking", &addr, e))?,
            requests: requests.clone(),
            sent_ns: vec![0; a.depth],
            out_requests: 0,
            shard: None,
            last_answer_ns: 0,
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tid = Arc::new(AtomicI32::new(0));
    let responder = {
        let (stop, tid) = (stop.clone(), tid.clone());
        let answers = if a.acks == AcksArg::None {
            Vec::new()
        } else {
            answers
        };
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
    let plan = LoopPlan {
        depth: a.depth,
        answers: a.acks != AcksArg::None,
        warmup_ns: secs_ns(a.warmup.min(1.0)),
        measure_ns: secs_ns(a.baseline_secs),
        label: "ping-pong",
    };
    let result = drive_on(
        clients,
        plan,
        Box::new(move || thread_cpu_from_proc(probe_tid)),
        client_core,
    );
    stop.store(true, Ordering::SeqCst);
    let responded = responder.join().map_err(|_| BenchError::ThreadPanic {
        name: "requests-responder",
    })?;
    let r = result?;
    responded?;
    Ok(r)
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

/// The server's side of a run: topic, connections, placement.
struct ServerSetup {
    shards: usize,
    conns: Vec<LoopConn>,
    per_shard: Vec<usize>,
    source: ShardSource,
}

fn setup_server(
    a: &RequestsArgs,
    addr: &str,
    http: Option<&str>,
    topic: &str,
    frame: &[u8],
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
    admin
        .create_topic(topic, a.partitions, &[])
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
    let streams = open_connections(addr, http, source, a.connections, a.depth)?;
    drop(admin);
    let mut per_shard = vec![0usize; shards];
    let mut conns = Vec::with_capacity(streams.len());
    for (i, (stream, shard)) in streams.into_iter().enumerate() {
        if let Some(c) = shard.and_then(|s| per_shard.get_mut(s)) {
            *c += 1;
        }
        let parts = eligible_partitions(a.placement, shards, &owners, shard)?;
        let requests = (0..a.depth)
            .map(|slot| {
                produce_request(slot, topic, parts[(i + slot) % parts.len()], a.acks, frame)
            })
            .collect::<Result<Vec<_>, _>>()?;
        conns.push(LoopConn {
            pipe: Pipe::new(stream, i, IN).map_err(|e| net("set_nonblocking", addr, e))?,
            requests: Arc::new(requests),
            sent_ns: vec![0; a.depth],
            out_requests: 0,
            shard,
            last_answer_ns: 0,
        });
    }
    Ok(ServerSetup {
        shards,
        conns,
        per_shard,
        source,
    })
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
    let frame = one_record_frame(a.message_size);
    let load0 = loadavg();

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
    let setup = setup_server(a, &addr, http.as_deref(), &topic, &frame);
    let result = setup.and_then(|s| {
        eprintln!(
            "{} connections on {} shard(s) {:?} (learnt from {:?}), placement {:?}",
            a.connections, s.shards, s.per_shard, s.source, a.placement
        );
        let plan = LoopPlan {
            depth: a.depth,
            answers: a.acks != AcksArg::None,
            warmup_ns: secs_ns(a.warmup),
            measure_ns: secs_ns(a.duration),
            label: "server",
        };
        let probe: CpuProbe = Box::new(move || pid.and_then(|p| cpu_secs(Some(p))));
        let r = drive_on(s.conns, plan, probe, client_core)?;
        Ok((s.shards, s.per_shard, s.source, r))
    });
    if !a.keep_topics {
        if let Ok(mut c) = Client::connect(&addr) {
            let _ = c.delete_topic(&topic);
        }
    }
    drop(server);
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
            json: None,
            name: None,
        };
        let frame = one_record_frame(100);
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
