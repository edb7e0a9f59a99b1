//! A fault-injecting TCP proxy for end-to-end tests: in-process, std threads
//! and loopback sockets only, no root, no `iptables`. A test tool, not a data
//! path: it favours obvious behaviour over throughput.
//!
//! [`FaultProxy::start`] takes named *links*, each an upstream address, and
//! gives each its own listener on `127.0.0.1` (port 0). Every connection
//! accepted on a link's listener is forwarded to the link's upstream (a new
//! upstream connection per accepted one), in both directions. The test
//! points its processes at the links' addresses and, at any time, sets a
//! [`Fault`] per link: [`Fault::Heal`], [`Fault::Blackhole`],
//! [`Fault::DropOneWay`], [`Fault::Delay`] or [`Fault::Reset`].
//!
//! # Threads
//! One acceptor per link; per forwarded connection two *pumps*, one per
//! [`Direction`], each reading chunks (at most [`ProxyConfig::chunk_bytes`])
//! from one socket and writing them to the other. Every blocking call has a
//! timeout of at most [`POLL_MS`] (socket read and write timeouts), so a
//! pump sees a fault change, a reset or the shutdown flag within that time;
//! nothing spins. A blocked `accept` is woken by `shutdown(2)` on the
//! listener when the proxy is dropped.
//!
//! # Invariants
//! - Within one connection and direction, bytes are delivered in the order
//!   they were read, each chunk whole or not at all, never duplicated.
//! - Faults are consulted when a chunk is read *and* again just before it is
//!   written, so a fault set by [`FaultProxy::set`] applies to every byte
//!   not yet written when `set` returns (at most the chunk being written at
//!   that moment still gets through).
//! - A stream with a hole is never resumed: once a direction of a
//!   connection has discarded bytes (Blackhole, DropOneWay), everything it
//!   reads later is discarded too, and as soon as the link's fault no longer
//!   drops that direction (Heal, Delay) the connection is reset (counted in
//!   [`LinkStats::torn_resets`]). Real TCP never delivers a stream with a
//!   hole; endpoints reconnect instead of parsing garbage.
//! - Bounded: connections per link ([`ProxyConfig::connections_per_link_max`];
//!   more are reset at accept), bytes held by a delay queue per direction
//!   ([`ProxyConfig::delay_queue_bytes_max`]; past it the connection is
//!   reset, counted), delays ([`DELAY_MS_MAX`]), links ([`LINKS_MAX`]).
//! - Resets are real RSTs: `SO_LINGER` with a zero timeout, then close.
//! - Dropping the [`FaultProxy`] stops every thread and joins it (bounded by
//!   [`POLL_MS`] plus [`ProxyConfig::upstream_connect_timeout_ms`]) and
//!   closes every socket it opened.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ------------------------------------------------------------------ limits

/// Longest a proxy thread blocks in one call (read, write, accept excepted)
/// before it looks at the fault, the connection's state and the shutdown
/// flag again.
pub const POLL_MS: u64 = 20;
/// Links of one proxy.
pub const LINKS_MAX: usize = 64;
/// Hard cap on [`ProxyConfig::connections_per_link_max`].
pub const CONNECTIONS_PER_LINK_MAX: usize = 1024;
/// Hard cap on [`ProxyConfig::chunk_bytes`].
pub const CHUNK_BYTES_MAX: usize = 1 << 20;
/// Hard cap on [`ProxyConfig::delay_queue_bytes_max`].
pub const DELAY_QUEUE_BYTES_MAX: usize = 256 << 20;
/// Longest [`Fault::Delay`].
pub const DELAY_MS_MAX: u64 = 60_000;
/// Hard cap on [`ProxyConfig::upstream_connect_timeout_ms`].
pub const UPSTREAM_CONNECT_TIMEOUT_MS_MAX: u64 = 10_000;

/// Default of [`ProxyConfig::connections_per_link_max`].
pub const DEFAULT_CONNECTIONS_PER_LINK_MAX: usize = 16;
/// Default of [`ProxyConfig::chunk_bytes`].
pub const DEFAULT_CHUNK_BYTES: usize = 16 << 10;
/// Default of [`ProxyConfig::delay_queue_bytes_max`].
pub const DEFAULT_DELAY_QUEUE_BYTES_MAX: usize = 8 << 20;
/// Default of [`ProxyConfig::upstream_connect_timeout_ms`].
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS: u64 = 500;
const _: () = assert!(DEFAULT_CONNECTIONS_PER_LINK_MAX <= CONNECTIONS_PER_LINK_MAX);
const _: () = assert!(DEFAULT_CHUNK_BYTES <= CHUNK_BYTES_MAX);
const _: () = assert!(DEFAULT_CHUNK_BYTES <= DEFAULT_DELAY_QUEUE_BYTES_MAX);
const _: () = assert!(DEFAULT_DELAY_QUEUE_BYTES_MAX <= DELAY_QUEUE_BYTES_MAX);
const _: () = assert!(DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS <= UPSTREAM_CONNECT_TIMEOUT_MS_MAX);

/// The proxy's bounds; [`ProxyConfig::default`] suits most tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Connections of one link open at once (including those still
    /// connecting upstream); more are reset at accept.
    pub connections_per_link_max: usize,
    /// Bytes asked of one read; a delayed chunk is held whole.
    pub chunk_bytes: usize,
    /// Bytes one direction of one connection may hold in its delay queue;
    /// past this the connection is reset.
    pub delay_queue_bytes_max: usize,
    /// A connection to the upstream that takes longer fails (the accepted
    /// client connection is then reset).
    pub upstream_connect_timeout_ms: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connections_per_link_max: DEFAULT_CONNECTIONS_PER_LINK_MAX,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            delay_queue_bytes_max: DEFAULT_DELAY_QUEUE_BYTES_MAX,
            upstream_connect_timeout_ms: DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS,
        }
    }
}

impl ProxyConfig {
    fn validate(&self) -> Result<(), ProxyError> {
        let check = |field: &'static str, value: u64, min: u64, max: u64| {
            if value < min || value > max {
                Err(ProxyError::Config {
                    field,
                    value,
                    min,
                    max,
                })
            } else {
                Ok(())
            }
        };
        check(
            "connections_per_link_max",
            self.connections_per_link_max as u64,
            1,
            CONNECTIONS_PER_LINK_MAX as u64,
        )?;
        check(
            "chunk_bytes",
            self.chunk_bytes as u64,
            1,
            CHUNK_BYTES_MAX as u64,
        )?;
        check(
            "delay_queue_bytes_max",
            self.delay_queue_bytes_max as u64,
            self.chunk_bytes as u64,
            DELAY_QUEUE_BYTES_MAX as u64,
        )?;
        check(
            "upstream_connect_timeout_ms",
            self.upstream_connect_timeout_ms,
            1,
            UPSTREAM_CONNECT_TIMEOUT_MS_MAX,
        )
    }
}

// ------------------------------------------------------------------ errors

/// Starting or steering a proxy failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProxyError {
    /// A [`ProxyConfig`] field outside its bounds.
    Config {
        field: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    TooManyLinks {
        count: usize,
        max: usize,
    },
    DuplicateLink {
        link: String,
    },
    UnknownLink {
        link: String,
    },
    DelayTooLong {
        link: String,
        delay_ms: u64,
        max_ms: u64,
    },
    /// Binding the link's listener on 127.0.0.1 failed.
    Bind {
        link: String,
        source: io::Error,
    },
    /// Starting the link's acceptor thread failed.
    Spawn {
        link: String,
        source: io::Error,
    },
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::Config {
                field,
                value,
                min,
                max,
            } => write!(
                f,
                "proxy config: {field} is {value}, outside [{min}, {max}]"
            ),
            ProxyError::TooManyLinks { count, max } => {
                write!(f, "{count} links exceed the proxy's {max}")
            }
            ProxyError::DuplicateLink { link } => write!(f, "link {link:?} is named twice"),
            ProxyError::UnknownLink { link } => write!(f, "no link named {link:?}"),
            ProxyError::DelayTooLong {
                link,
                delay_ms,
                max_ms,
            } => write!(
                f,
                "link {link:?}: a delay of {delay_ms} ms exceeds {max_ms} ms"
            ),
            ProxyError::Bind { link, source } => {
                write!(f, "link {link:?}: bind 127.0.0.1:0: {source}")
            }
            ProxyError::Spawn { link, source } => {
                write!(f, "link {link:?}: start its acceptor thread: {source}")
            }
        }
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProxyError::Bind { source, .. } | ProxyError::Spawn { source, .. } => Some(source),
            _ => None,
        }
    }
}

// ------------------------------------------------------------------ faults

/// Which way bytes travel on a forwarded connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the process that connected to the link to the upstream.
    ClientToUpstream,
    /// From the upstream back to that process.
    UpstreamToClient,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::ClientToUpstream => 0,
            Direction::UpstreamToClient => 1,
        }
    }
}

/// What a link does to its traffic. Set with [`FaultProxy::set`], any time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything (the initial state).
    Heal,
    /// Both directions: bytes are read and discarded; connections stay open
    /// and new ones are accepted (and connected upstream).
    Blackhole,
    /// Bytes travelling this way are read and discarded; the other way is
    /// forwarded.
    DropOneWay(Direction),
    /// Every chunk is held this long before it is written, in order.
    Delay { delay_ms: u64 },
    /// Every open connection of the link is reset (RST, both sides) when
    /// this is set, and new ones are reset at accept while it stays set.
    Reset,
}

impl Fault {
    fn drops(self, dir: Direction) -> bool {
        match self {
            Fault::Blackhole | Fault::Reset => true,
            Fault::DropOneWay(d) => d == dir,
            Fault::Heal | Fault::Delay { .. } => false,
        }
    }

    fn delay(self) -> Option<Duration> {
        match self {
            Fault::Delay { delay_ms } if delay_ms > 0 => Some(Duration::from_millis(delay_ms)),
            _ => None,
        }
    }
}

// ------------------------------------------------------------------ stats

/// Counters of one direction of one link, over all its connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Bytes written to the other side.
    pub forwarded_bytes: u64,
    /// Bytes read and discarded (a fault, or a torn stream).
    pub dropped_bytes: u64,
}

/// Counters of one link (a snapshot; see [`FaultProxy::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub client_to_upstream: DirectionStats,
    pub upstream_to_client: DirectionStats,
    /// Connections accepted on the link's listener (refused ones included).
    pub accepted: u64,
    /// Connections forwarded (the upstream connection succeeded).
    pub forwarded: u64,
    /// Connections open now (including those still connecting upstream).
    pub open: u64,
    /// Reset at accept: the link's fault was [`Fault::Reset`].
    pub refused_reset: u64,
    /// Reset at accept: [`ProxyConfig::connections_per_link_max`] were open.
    pub refused_over_limit: u64,
    /// Reset at accept: the upstream connection failed.
    pub upstream_connect_failures: u64,
    /// Open connections reset by [`Fault::Reset`].
    pub resets: u64,
    /// Connections reset because a delay queue outgrew its bound.
    pub delay_overflows: u64,
    /// Connections reset when healed after they had dropped bytes.
    pub torn_resets: u64,
    /// Connections closed after a socket error on either side.
    pub socket_errors: u64,
}

#[derive(Default)]
struct Counters {
    forwarded_bytes: [AtomicU64; 2],
    dropped_bytes: [AtomicU64; 2],
    accepted: AtomicU64,
    forwarded: AtomicU64,
    refused_reset: AtomicU64,
    refused_over_limit: AtomicU64,
    upstream_connect_failures: AtomicU64,
    resets: AtomicU64,
    delay_overflows: AtomicU64,
    torn_resets: AtomicU64,
    socket_errors: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

// ------------------------------------------------------------------ proxy

struct Link {
    name: String,
    /// Where new connections go ([`FaultProxy::set_upstream`] moves it).
    upstream: Mutex<SocketAddr>,
    listener: TcpListener,
    listen_addr: SocketAddr,
    fault: Mutex<Fault>,
    /// Connections whose pumps run (for [`Fault::Reset`]).
    conns: Mutex<Vec<Arc<Conn>>>,
    /// Connections accepted and not yet finished (the limit counts these).
    open: AtomicUsize,
    counters: Counters,
}

impl Link {
    fn fault(&self) -> Fault {
        *lock(&self.fault)
    }
}

/// State every thread of a proxy shares.
struct Shared {
    config: ProxyConfig,
    shutdown: AtomicBool,
}

/// One forwarded connection: the accepted client socket and the upstream
/// one. Closed when the last `Arc` goes (after both pumps end).
struct Conn {
    client: TcpStream,
    upstream: TcpStream,
    /// Set once: the pumps stop without a graceful half-close.
    closing: AtomicBool,
}

impl Conn {
    /// Marks the connection for an RST close; true the first time.
    fn abort(&self) -> bool {
        if self.closing.swap(true, Ordering::AcqRel) {
            return false;
        }
        // Best effort: a socket already dead closes without an RST anyway.
        let _ = set_linger_zero(&self.client);
        let _ = set_linger_zero(&self.upstream);
        true
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}

/// `SO_LINGER {on, 0}`: the socket's close sends an RST.
fn set_linger_zero(s: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `s` owns an open socket for the duration of the call, and the
    // option value is a `libc::linger` of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast::<libc::c_void>(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Resets a connection the proxy will not forward.
fn refuse(client: TcpStream) {
    let _ = set_linger_zero(&client);
    drop(client);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A pump that panicked leaves consistent data behind (plain values).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running proxy; see the module documentation. Dropping it stops it.
pub struct FaultProxy {
    links: Vec<Arc<Link>>,
    shared: Arc<Shared>,
    acceptors: Vec<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy with [`ProxyConfig::default`]: one listener on
    /// 127.0.0.1 per `(name, upstream)` link.
    pub fn start<S: AsRef<str>>(links: &[(S, SocketAddr)]) -> Result<FaultProxy, ProxyError> {
        FaultProxy::start_with(ProxyConfig::default(), links)
    }

    /// Starts a proxy with `config`.
    pub fn start_with<S: AsRef<str>>(
        config: ProxyConfig,
        links: &[(S, SocketAddr)],
    ) -> Result<FaultProxy, ProxyError> {
        config.validate()?;
        if links.len() > LINKS_MAX {
            return Err(ProxyError::TooManyLinks {
                count: links.len(),
                max: LINKS_MAX,
            });
        }
        let shared = Arc::new(Shared {
            config,
            shutdown: AtomicBool::new(false),
        });
        // Dropped on an early return: stops whatever already started.
        let mut proxy = FaultProxy {
            links: Vec::with_capacity(links.len()),
            shared,
            acceptors: Vec::with_capacity(links.len()),
        };
        for (name, upstream) in links {
            let name = name.as_ref().to_owned();
            if proxy.links.iter().any(|l| l.name == name) {
                return Err(ProxyError::DuplicateLink { link: name });
            }
            let bound = TcpListener::bind("127.0.0.1:0").and_then(|l| {
                let addr = l.local_addr()?;
                Ok((l, addr))
            });
            let (listener, listen_addr) = bound.map_err(|source| ProxyError::Bind {
                link: name.clone(),
                source,
            })?;
            let link = Arc::new(Link {
                name: name.clone(),
                upstream: Mutex::new(*upstream),
                listener,
                listen_addr,
                fault: Mutex::new(Fault::Heal),
                conns: Mutex::new(Vec::new()),
                open: AtomicUsize::new(0),
                counters: Counters::default(),
            });
            let (l, s) = (link.clone(), proxy.shared.clone());
            let acceptor = std::thread::Builder::new()
                .name(format!("proxy-{name}"))
                .spawn(move || accept_loop(&l, &s))
                .map_err(|source| ProxyError::Spawn {
                    link: name.clone(),
                    source,
                })?;
            proxy.links.push(link);
            proxy.acceptors.push(acceptor);
        }
        Ok(proxy)
    }

    fn link(&self, name: &str) -> Result<&Arc<Link>, ProxyError> {
        self.links
            .iter()
            .find(|l| l.name == name)
            .ok_or_else(|| ProxyError::UnknownLink {
                link: name.to_owned(),
            })
    }

    /// The address to connect to instead of the link's upstream.
    pub fn addr(&self, link: &str) -> Result<SocketAddr, ProxyError> {
        Ok(self.link(link)?.listen_addr)
    }

    /// The upstream address of `link`.
    pub fn upstream(&self, link: &str) -> Result<SocketAddr, ProxyError> {
        Ok(*lock(&self.link(link)?.upstream))
    }

    /// Points `link` at another upstream (a server restarted on another
    /// port): connections accepted from now on go there; open ones keep
    /// theirs. Clients keep the link's address across the move.
    pub fn set_upstream(&self, link: &str, upstream: SocketAddr) -> Result<(), ProxyError> {
        *lock(&self.link(link)?.upstream) = upstream;
        Ok(())
    }

    /// The names of every link, in the order given to `start`.
    pub fn link_names(&self) -> Vec<String> {
        self.links.iter().map(|l| l.name.clone()).collect()
    }

    /// The link's current fault.
    pub fn fault(&self, link: &str) -> Result<Fault, ProxyError> {
        Ok(self.link(link)?.fault())
    }

    /// Sets the fault of `link`; it applies to every byte not yet written
    /// when this returns. [`Fault::Reset`] also resets every open
    /// connection of the link.
    pub fn set(&self, link: &str, fault: Fault) -> Result<(), ProxyError> {
        let l = self.link(link)?;
        if let Fault::Delay { delay_ms } = fault {
            if delay_ms > DELAY_MS_MAX {
                return Err(ProxyError::DelayTooLong {
                    link: link.to_owned(),
                    delay_ms,
                    max_ms: DELAY_MS_MAX,
                });
            }
        }
        *lock(&l.fault) = fault;
        if fault == Fault::Reset {
            for conn in lock(&l.conns).iter() {
                if conn.abort() {
                    bump(&l.counters.resets, 1);
                }
            }
        }
        Ok(())
    }

    /// Sets `fault` on every link named in `links`; stops at the first
    /// unknown name (links before it are set).
    pub fn set_many<S: AsRef<str>>(&self, links: &[S], fault: Fault) -> Result<(), ProxyError> {
        links.iter().try_for_each(|l| self.set(l.as_ref(), fault))
    }

    /// [`Fault::Heal`] on every link.
    pub fn heal_all(&self) {
        for l in &self.links {
            *lock(&l.fault) = Fault::Heal;
        }
    }

    /// A snapshot of the link's counters.
    pub fn stats(&self, link: &str) -> Result<LinkStats, ProxyError> {
        let l = self.link(link)?;
        let c = &l.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Ok(LinkStats {
            client_to_upstream: DirectionStats {
                forwarded_bytes: get(&c.forwarded_bytes[0]),
                dropped_bytes: get(&c.dropped_bytes[0]),
            },
            upstream_to_client: DirectionStats {
                forwarded_bytes: get(&c.forwarded_bytes[1]),
                dropped_bytes: get(&c.dropped_bytes[1]),
            },
            accepted: get(&c.accepted),
            forwarded: get(&c.forwarded),
            open: l.open.load(Ordering::Relaxed) as u64,
            refused_reset: get(&c.refused_reset),
            refused_over_limit: get(&c.refused_over_limit),
            upstream_connect_failures: get(&c.upstream_connect_failures),
            resets: get(&c.resets),
            delay_overflows: get(&c.delay_overflows),
            torn_resets: get(&c.torn_resets),
            socket_errors: get(&c.socket_errors),
        })
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        for l in &self.links {
            // Wakes a blocked accept(2) (Linux answers EINVAL); the pumps
            // see the flag within POLL_MS.
            // SAFETY: shutdown(2) on a socket the link owns and keeps open.
            unsafe {
                libc::shutdown(l.listener.as_raw_fd(), libc::SHUT_RDWR);
            }
        }
        for a in self.acceptors.drain(..) {
            let _ = a.join();
        }
    }
}

/// Accepts connections on the link until shutdown; each forwarded one runs
/// on a thread of its own, joined here.
fn accept_loop(link: &Arc<Link>, shared: &Arc<Shared>) {
    let mut handles: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let accepted = link.listener.accept();
        if shared.shutdown.load(Ordering::Acquire) {
            break;
        }
        // Join the threads of finished connections (bounded list).
        let (done, running): (Vec<_>, Vec<_>) =
            handles.drain(..).partition(JoinHandle::is_finished);
        handles = running;
        for h in done {
            let _ = h.join();
        }
        let client = match accepted {
            Ok((client, _)) => client,
            Err(_) => {
                // EMFILE and the like: try again a little later.
                std::thread::sleep(Duration::from_millis(POLL_MS));
                continue;
            }
        };
        bump(&link.counters.accepted, 1);
        if link.fault() == Fault::Reset {
            bump(&link.counters.refused_reset, 1);
            refuse(client);
            continue;
        }
        if link.open.load(Ordering::Acquire) >= shared.config.connections_per_link_max {
            bump(&link.counters.refused_over_limit, 1);
            refuse(client);
            continue;
        }
        link.open.fetch_add(1, Ordering::AcqRel);
        let (l, s) = (link.clone(), shared.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("proxy-{}-conn", link.name))
            .spawn(move || {
                serve(&l, &s, client);
                l.open.fetch_sub(1, Ordering::AcqRel);
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(_) => {
                // The closure (and the client socket) is dropped: closed.
                link.open.fetch_sub(1, Ordering::AcqRel);
                bump(&link.counters.socket_errors, 1);
            }
        }
    }
    for h in handles {
        let _ = h.join();
    }
}

/// Connects upstream and pumps both directions until both end.
fn serve(link: &Arc<Link>, shared: &Arc<Shared>, client: TcpStream) {
    let timeout = Duration::from_millis(shared.config.upstream_connect_timeout_ms);
    let target = *lock(&link.upstream);
    let upstream = match TcpStream::connect_timeout(&target, timeout) {
        Ok(u) => u,
        Err(_) => {
            bump(&link.counters.upstream_connect_failures, 1);
            refuse(client);
            return;
        }
    };
    let poll = Some(Duration::from_millis(POLL_MS));
    let setup = [&client, &upstream].iter().try_for_each(|s| {
        s.set_nodelay(true)?;
        s.set_read_timeout(poll)?;
        s.set_write_timeout(poll)
    });
    let conn = Arc::new(Conn {
        client,
        upstream,
        closing: AtomicBool::new(false),
    });
    if setup.is_err() {
        bump(&link.counters.socket_errors, 1);
        conn.abort();
        return;
    }
    bump(&link.counters.forwarded, 1);
    lock(&link.conns).push(conn.clone());
    // A Reset set between the accept and the registration above.
    if link.fault() == Fault::Reset && conn.abort() {
        bump(&link.counters.resets, 1);
    }
    let (l, s, c) = (link.clone(), shared.clone(), conn.clone());
    let back = std::thread::Builder::new()
        .name(format!("proxy-{}-back", link.name))
        .spawn(move || pump(&l, &s, &c, Direction::UpstreamToClient));
    match back {
        Ok(back) => {
            pump(link, shared, &conn, Direction::ClientToUpstream);
            let _ = back.join();
        }
        Err(_) => {
            bump(&link.counters.socket_errors, 1);
            conn.abort();
        }
    }
    lock(&link.conns).retain(|c| !Arc::ptr_eq(c, &conn));
    // The last reference: both sockets close here (RST if aborted).
}

/// Writes all of `data` to `dst`, giving up when the connection closes, the
/// proxy stops or the direction starts dropping (then `Ok(false)`: the
/// chunk counts as dropped, the stream as torn).
fn write_chunk(
    link: &Link,
    shared: &Shared,
    conn: &Conn,
    dir: Direction,
    mut dst: &TcpStream,
    data: &[u8],
) -> io::Result<bool> {
    let mut written = 0;
    while written < data.len() {
        if shared.shutdown.load(Ordering::Acquire) || conn.is_closing() {
            return Err(io::ErrorKind::ConnectionAborted.into());
        }
        if link.fault().drops(dir) {
            return Ok(false);
        }
        match dst.write(&data[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// How one direction of a connection ended.
enum PumpEnd {
    /// The source sent EOF and everything read was written: half-close.
    Eof,
    /// Shutdown, or the connection was aborted elsewhere.
    Stopped,
    /// This pump aborted the connection (counted by the caller).
    Abort,
}

/// One direction of one connection: reads chunks from the source and
/// writes them (now, later, or never, per the link's fault) to the other
/// side. See the module invariants.
fn pump(link: &Link, shared: &Shared, conn: &Conn, dir: Direction) {
    let (mut src, dst) = match dir {
        Direction::ClientToUpstream => (&conn.client, &conn.upstream),
        Direction::UpstreamToClient => (&conn.upstream, &conn.client),
    };
    let d = dir.index();
    let counters = &link.counters;
    let config = &shared.config;
    let mut buf = vec![0u8; config.chunk_bytes];
    // Chunks waiting for their time, oldest first; `queued_bytes` is their
    // total, at most `delay_queue_bytes_max`.
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut queued_bytes = 0usize;
    let mut torn = false;
    let mut eof = false;
    let mut read_timeout = Duration::from_millis(POLL_MS);
    let end = loop {
        if shared.shutdown.load(Ordering::Acquire) || conn.is_closing() {
            break PumpEnd::Stopped;
        }
        let fault = link.fault();
        if torn && !fault.drops(dir) {
            if conn.abort() {
                bump(&counters.torn_resets, 1);
            }
            break PumpEnd::Stopped;
        }
        // Write every chunk that is due, in order.
        let now = Instant::now();
        let mut failed = false;
        while queue.front().is_some_and(|(due, _)| *due <= now) {
            let Some((_, chunk)) = queue.pop_front() else {
                break;
            };
            queued_bytes -= chunk.len();
            if torn || link.fault().drops(dir) {
                torn = true;
                bump(&counters.dropped_bytes[d], chunk.len() as u64);
                continue;
            }
            match write_chunk(link, shared, conn, dir, dst, &chunk) {
                Ok(true) => bump(&counters.forwarded_bytes[d], chunk.len() as u64),
                Ok(false) => {
                    torn = true;
                    bump(&counters.dropped_bytes[d], chunk.len() as u64);
                }
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            break PumpEnd::Abort;
        }
        if eof {
            match queue.front() {
                None => break PumpEnd::Eof,
                Some((due, _)) => {
                    let wait = due.saturating_duration_since(Instant::now());
                    std::thread::sleep(wait.min(Duration::from_millis(POLL_MS)));
                    continue;
                }
            }
        }
        // Read the next chunk, waking in time for the queue's head.
        let timeout = match queue.front() {
            Some((due, _)) => due
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), Duration::from_millis(POLL_MS)),
            None => Duration::from_millis(POLL_MS),
        };
        if timeout != read_timeout {
            if src.set_read_timeout(Some(timeout)).is_err() {
                break PumpEnd::Abort;
            }
            read_timeout = timeout;
        }
        let n = match src.read(&mut buf) {
            Ok(0) => {
                eof = true;
                continue;
            }
            Ok(n) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(_) => break PumpEnd::Abort,
        };
        let fault = link.fault();
        if torn || fault.drops(dir) {
            torn = true;
            bump(&counters.dropped_bytes[d], n as u64);
            continue;
        }
        let chunk = &buf[..n];
        match fault.delay() {
            None if queue.is_empty() => match write_chunk(link, shared, conn, dir, dst, chunk) {
                Ok(true) => bump(&counters.forwarded_bytes[d], n as u64),
                Ok(false) => {
                    torn = true;
                    bump(&counters.dropped_bytes[d], n as u64);
                }
                Err(_) => break PumpEnd::Abort,
            },
            delay => {
                // Behind delayed chunks even when healed: order is kept.
                let due = Instant::now() + delay.unwrap_or_default();
                queued_bytes += n;
                queue.push_back((due, chunk.to_vec()));
                if queued_bytes > config.delay_queue_bytes_max {
                    if conn.abort() {
                        bump(&counters.delay_overflows, 1);
                    }
                    bump(&counters.dropped_bytes[d], queued_bytes as u64);
                    break PumpEnd::Stopped;
                }
            }
        }
    };
    match end {
        PumpEnd::Eof => {
            // The source is done: pass the EOF on, keep the other way open.
            if dst.shutdown(Shutdown::Write).is_err() && conn.abort() {
                bump(&counters.socket_errors, 1);
            }
        }
        PumpEnd::Stopped => {}
        PumpEnd::Abort => {
            if conn.abort() {
                bump(&counters.socket_errors, 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{self, Receiver};

    /// A loopback server for the tests: echoes what it receives, reports
    /// every received chunk on `received`, and (when started with
    /// [`EchoServer::start_sharing`]) hands a clone of every accepted socket
    /// to `accepted`, to send unsolicited bytes (a clone held there keeps
    /// the socket open after the echo thread ends). Stops when dropped.
    struct EchoServer {
        addr: SocketAddr,
        received: Receiver<Vec<u8>>,
        accepted: Receiver<TcpStream>,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl EchoServer {
        fn start() -> EchoServer {
            EchoServer::spawn(false)
        }

        fn start_sharing() -> EchoServer {
            EchoServer::spawn(true)
        }

        fn spawn(share: bool) -> EchoServer {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo server");
            listener
                .set_nonblocking(true)
                .expect("nonblocking listener");
            let addr = listener.local_addr().expect("echo address");
            let (rx_tx, received) = mpsc::channel();
            let (acc_tx, accepted) = mpsc::channel();
            let stop = Arc::new(AtomicBool::new(false));
            let stop2 = stop.clone();
            let thread = std::thread::spawn(move || {
                let mut conns: Vec<JoinHandle<()>> = Vec::new();
                while !stop2.load(Ordering::Acquire) {
                    let s = match listener.accept() {
                        Ok((s, _)) => s,
                        Err(_) => {
                            // Test scaffolding only: a 5 ms accept poll.
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    };
                    s.set_nonblocking(false).expect("blocking socket");
                    s.set_read_timeout(Some(Duration::from_millis(POLL_MS)))
                        .expect("read timeout");
                    if share {
                        let _ = acc_tx.send(s.try_clone().expect("clone"));
                    }
                    let (tx, stop3) = (rx_tx.clone(), stop2.clone());
                    conns.push(std::thread::spawn(move || {
                        let mut s = s;
                        let mut buf = [0u8; 4096];
                        while !stop3.load(Ordering::Acquire) {
                            match s.read(&mut buf) {
                                Ok(0) => return,
                                Ok(n) => {
                                    let _ = tx.send(buf[..n].to_vec());
                                    if s.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e) if is_timeout(&e) => {}
                                Err(_) => return,
                            }
                        }
                    }));
                }
                for c in conns {
                    let _ = c.join();
                }
            });
            EchoServer {
                addr,
                received,
                accepted,
                stop,
                thread: Some(thread),
            }
        }

        /// Everything received within `wait`, concatenated.
        fn drain(&self, wait: Duration) -> Vec<u8> {
            self.receive(usize::MAX, wait)
        }

        /// What is received until `n` bytes came or `wait` passed.
        fn receive(&self, n: usize, wait: Duration) -> Vec<u8> {
            let deadline = Instant::now() + wait;
            let mut out = Vec::new();
            while out.len() < n {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.received.recv_timeout(left) {
                    Ok(chunk) => out.extend_from_slice(&chunk),
                    Err(_) => break,
                }
            }
            out
        }
    }

    impl Drop for EchoServer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Release);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn proxy_to(server: &EchoServer) -> FaultProxy {
        FaultProxy::start(&[("a", server.addr)]).expect("start the proxy")
    }

    fn connect(proxy: &FaultProxy) -> TcpStream {
        let s = TcpStream::connect(proxy.addr("a").expect("link a")).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        s
    }

    /// Reads exactly `n` bytes within `wait`, or what came before it.
    fn read_for(s: &mut TcpStream, n: usize, wait: Duration) -> Vec<u8> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while out.len() < n && Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => out.extend_from_slice(&buf[..k]),
                Err(e) if is_timeout(&e) => {}
                Err(_) => break,
            }
        }
        out
    }

    /// What a read on `s` sees within `wait`: data, EOF or an error kind.
    fn read_outcome(s: &mut TcpStream, wait: Duration) -> Result<usize, io::ErrorKind> {
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 64];
        loop {
            match s.read(&mut buf) {
                Ok(n) => return Ok(n),
                Err(e) if is_timeout(&e) && Instant::now() < deadline => {}
                Err(e) => return Err(e.kind()),
            }
        }
    }

    /// The link's counters once `settled` holds of them (a pump counts a
    /// chunk just after writing it, so a reader may see the bytes first),
    /// or after 5 s, whatever they are then.
    fn stats_when(proxy: &FaultProxy, settled: impl Fn(&LinkStats) -> bool) -> LinkStats {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let st = proxy.stats("a").expect("stats");
            if settled(&st) || Instant::now() >= deadline {
                return st;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn echo_round_trip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
        s.write_all(msg).expect("write");
        read_for(s, msg.len(), Duration::from_secs(5))
    }

    const QUIET: Duration = Duration::from_millis(300);

    #[test]
    fn heal_forwards_both_ways_and_counts() {
        let server = EchoServer::start();
        let proxy = proxy_to(&server);
        let mut c = connect(&proxy);
        assert_eq!(echo_round_trip(&mut c, b"hello"), b"hello");
        let st = stats_when(&proxy, |st| st.upstream_to_client.forwarded_bytes == 5);
        assert_eq!(st.client_to_upstream.forwarded_bytes, 5);
        assert_eq!(st.upstream_to_client.forwarded_bytes, 5);
        assert_eq!((st.accepted, st.forwarded, st.open), (1, 1, 1));
        assert_eq!(st.client_to_upstream.dropped_bytes, 0);
        assert!(matches!(
            proxy.set("nope", Fault::Heal),
            Err(ProxyError::UnknownLink { .. })
        ));
        assert!(matches!(
            proxy.set(
                "a",
                Fault::Delay {
                    delay_ms: DELAY_MS_MAX + 1
                }
            ),
            Err(ProxyError::DelayTooLong { .. })
        ));
    }

    #[test]
    fn blackhole_discards_both_ways_keeps_the_connection_and_heal_restores() {
        let server = EchoServer::start_sharing();
        let proxy = proxy_to(&server);
        let mut c = connect(&proxy);
        assert_eq!(echo_round_trip(&mut c, b"before"), b"before");
        let mut upstream_side = server.accepted.recv().expect("accepted");
        let _ = server.drain(Duration::from_millis(50));

        proxy.set("a", Fault::Blackhole).expect("set");
        c.write_all(b"lost").expect("writes still succeed");
        upstream_side
            .write_all(b"lost too")
            .expect("upstream writes too");
        assert_eq!(server.drain(QUIET), b"", "nothing reaches the upstream");
        assert_eq!(
            read_for(&mut c, 1, QUIET),
            b"",
            "nothing reaches the client"
        );
        let st = stats_when(&proxy, |st| st.upstream_to_client.dropped_bytes == 8);
        assert_eq!(st.client_to_upstream.dropped_bytes, 4);
        assert_eq!(st.upstream_to_client.dropped_bytes, 8);
        assert_eq!(st.open, 1, "the connection stays open");
        // New connections are still accepted (and also blackholed).
        let mut c2 = connect(&proxy);
        c2.write_all(b"x").expect("write");
        assert_eq!(read_for(&mut c2, 1, QUIET), b"");

        proxy.set("a", Fault::Heal).expect("heal");
        // The torn connections are reset; a new one works.
        assert_eq!(
            read_outcome(&mut c, Duration::from_secs(2)),
            Err(io::ErrorKind::ConnectionReset)
        );
        let mut fresh = connect(&proxy);
        assert_eq!(echo_round_trip(&mut fresh, b"after"), b"after");
        assert!(proxy.stats("a").expect("stats").torn_resets >= 1);
    }

    #[test]
    fn a_connection_that_lost_nothing_survives_a_blackhole() {
        let server = EchoServer::start();
        let proxy = proxy_to(&server);
        let mut c = connect(&proxy);
        assert_eq!(echo_round_trip(&mut c, b"one"), b"one");
        proxy.set("a", Fault::Blackhole).expect("set");
        std::thread::sleep(Duration::from_millis(100));
        proxy.set("a", Fault::Heal).expect("heal");
        assert_eq!(echo_round_trip(&mut c, b"two"), b"two");
        assert_eq!(proxy.stats("a").expect("stats").torn_resets, 0);
    }

    #[test]
    fn drop_client_to_upstream_discards_only_that_way() {
        let server = EchoServer::start_sharing();
        let proxy = proxy_to(&server);
        let mut c = connect(&proxy);
        assert_eq!(echo_round_trip(&mut c, b"hi"), b"hi");
        let mut upstream_side = server.accepted.recv().expect("accepted");
        let _ = server.drain(Duration::from_millis(50));

        proxy
            .set("a", Fault::DropOneWay(Direction::ClientToUpstream))
            .expect("set");
        c.write_all(b"dropped").expect("write");
        assert_eq!(server.drain(QUIET), b"", "client bytes never arrive");
        upstream_side.write_all(b"down").expect("write");
        assert_eq!(read_for(&mut c, 4, Duration::from_secs(5)), b"down");
        let st = stats_when(&proxy, |st| st.client_to_upstream.dropped_bytes == 7);
        assert_eq!(st.client_to_upstream.dropped_bytes, 7);
        assert_eq!(st.upstream_to_client.dropped_bytes, 0);
    }

    #[test]
    fn drop_upstream_to_client_discards_only_that_way() {
        let server = EchoServer::start();
        let proxy = proxy_to(&server);
        let mut c = connect(&proxy);
        assert_eq!(echo_round_trip(&mut c, b"hi"), b"hi");
        let _ = server.drain(Duration::from_millis(50));

        proxy
            .set("a", Fault::DropOneWay(Direction::UpstreamToClient))
            .expect("set");
        c.write_all(b"up").expect("write");
        assert_eq!(
            server.receive(2, Duration::from_secs(5)),
            b"up",
            "client bytes arrive"
        );
        assert_eq!(read_for(&mut c, 1, QUIET), b"", "the echo does not");
        let st = stats_when(&proxy, |st| st.upstream_to_client.dropped_bytes == 2);
        assert_eq!(st.upstream_to_client.dropped_bytes, 2);
        assert_eq!(st.client_to_upstream.dropped_bytes, 0);

        proxy.set("a", Fault::Heal).expect("heal");
        let mut fresh = connect(&proxy);
        assert_eq!(echo_round_trip(&mut fresh, b"back"), b"back");
    }

    #[test]
    fn delay_holds_every_chunk_and_keeps_order() {
        const DELAY_MS: u64 = 400;
        let server = EchoServer::start();
        let proxy = proxy_to(&server);
        let mut c = connect(&proxy);
        assert_eq!(echo_round_trip(&mut c, b"warm"), b"warm");

        proxy
            .set("a", Fault::Delay { delay_ms: DELAY_MS })
            .expect("set");
        let started = Instant::now();
        let mut sent = Vec::new();
        for i in 0..50u32 {
            let msg = format!("<{i}>");
            c.write_all(msg.as_bytes()).expect("write");
            sent.extend_from_slice(msg.as_bytes());
        }
        let got = read_for(&mut c, sent.len(), Duration::from_secs(10));
        let elapsed = started.elapsed();
        assert_eq!(got, sent, "every byte, in order");
        // Held once each way.
        assert!(
            elapsed >= Duration::from_millis(2 * DELAY_MS),
            "round trip {elapsed:?} under twice the delay"
        );

        // Back to Heal: traffic flows without the delay.
        proxy.set("a", Fault::Heal).expect("heal");
        let started = Instant::now();
        assert_eq!(echo_round_trip(&mut c, b"quick"), b"quick");
        let healed = started.elapsed();
        assert!(
            healed < Duration::from_millis(2 * DELAY_MS),
            "healed round trip {healed:?}"
        );
        assert_eq!(proxy.stats("a").expect("stats").torn_resets, 0);
    }

    #[test]
    fn delay_queue_over_its_bound_resets_the_connection() {
        let server = EchoServer::start();
        let config = ProxyConfig {
            chunk_bytes: 1024,
            delay_queue_bytes_max: 8 * 1024,
            ..ProxyConfig::default()
        };
        let proxy = FaultProxy::start_with(config, &[("a", server.addr)]).expect("proxy");
        let mut c = connect(&proxy);
        proxy
            .set("a", Fault::Delay { delay_ms: 10_000 })
            .expect("set");
        // Writes may fail once the proxy resets the connection (and then
        // consume the reset's error: a later read sees EOF).
        let _ = c.write_all(&[7u8; 64 * 1024]);
        let outcome = read_outcome(&mut c, Duration::from_secs(5));
        assert!(
            matches!(outcome, Err(io::ErrorKind::ConnectionReset) | Ok(0)),
            "{outcome:?}"
        );
        let st = proxy.stats("a").expect("stats");
        assert_eq!(st.delay_overflows, 1);
        assert!(st.client_to_upstream.dropped_bytes > 8 * 1024);
        assert_eq!(server.drain(Duration::from_millis(50)), b"");
    }

    #[test]
    fn reset_sends_rst_to_both_sides_and_refuses_new_connections() {
        // A bare listener as the upstream: only this test reads its sockets,
        // so the RST's error reaches this test's read.
        let upstream = TcpListener::bind("127.0.0.1:0").expect("bind");
        let proxy =
            FaultProxy::start(&[("a", upstream.local_addr().expect("addr"))]).expect("proxy");
        let mut c = connect(&proxy);
        c.write_all(b"hi").expect("write");
        let (mut up, _) = upstream.accept().expect("the proxy connects upstream");
        up.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        assert_eq!(read_for(&mut up, 2, Duration::from_secs(5)), b"hi");
        up.write_all(b"yo").expect("write");
        assert_eq!(read_for(&mut c, 2, Duration::from_secs(5)), b"yo");

        proxy.set("a", Fault::Reset).expect("set");
        assert_eq!(
            read_outcome(&mut c, Duration::from_secs(2)),
            Err(io::ErrorKind::ConnectionReset)
        );
        assert_eq!(
            read_outcome(&mut up, Duration::from_secs(2)),
            Err(io::ErrorKind::ConnectionReset)
        );
        // A new connection is accepted by the kernel, then reset, and never
        // reaches the upstream.
        let mut c2 = connect(&proxy);
        let outcome = read_outcome(&mut c2, Duration::from_secs(2));
        assert!(
            matches!(outcome, Err(io::ErrorKind::ConnectionReset) | Ok(0)),
            "{outcome:?}"
        );
        upstream.set_nonblocking(true).expect("nonblocking");
        assert!(upstream.accept().is_err(), "nothing reached the upstream");
        let st = proxy.stats("a").expect("stats");
        assert_eq!((st.resets, st.refused_reset), (1, 1));

        proxy.set("a", Fault::Heal).expect("heal");
        upstream.set_nonblocking(false).expect("blocking");
        let mut fresh = connect(&proxy);
        fresh.write_all(b"ok").expect("write");
        let (mut up2, _) = upstream.accept().expect("healed: forwarded again");
        up2.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        assert_eq!(read_for(&mut up2, 2, Duration::from_secs(5)), b"ok");
    }

    #[test]
    fn connections_over_the_limit_are_reset() {
        let server = EchoServer::start();
        let config = ProxyConfig {
            connections_per_link_max: 2,
            ..ProxyConfig::default()
        };
        let proxy = FaultProxy::start_with(config, &[("a", server.addr)]).expect("proxy");
        let mut a = connect(&proxy);
        let mut b = connect(&proxy);
        assert_eq!(echo_round_trip(&mut a, b"a"), b"a");
        assert_eq!(echo_round_trip(&mut b, b"b"), b"b");
        let mut c = connect(&proxy);
        let outcome = read_outcome(&mut c, Duration::from_secs(2));
        assert!(
            matches!(outcome, Err(io::ErrorKind::ConnectionReset) | Ok(0)),
            "{outcome:?}"
        );
        assert_eq!(proxy.stats("a").expect("stats").refused_over_limit, 1);
        // A slot frees when a connection ends.
        drop(a);
        let deadline = Instant::now() + Duration::from_secs(5);
        while proxy.stats("a").expect("stats").open > 1 {
            assert!(
                Instant::now() < deadline,
                "the closed connection never ended"
            );
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
        let mut d = connect(&proxy);
        assert_eq!(echo_round_trip(&mut d, b"d"), b"d");
    }

    #[test]
    fn an_unreachable_upstream_resets_the_client() {
        // A port nobody listens on: bound, noted, released.
        let dead = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let proxy = FaultProxy::start(&[("a", dead)]).expect("proxy");
        let mut c = connect(&proxy);
        let outcome = read_outcome(&mut c, Duration::from_secs(3));
        assert!(
            matches!(outcome, Err(io::ErrorKind::ConnectionReset) | Ok(0)),
            "{outcome:?}"
        );
        assert_eq!(
            proxy.stats("a").expect("stats").upstream_connect_failures,
            1
        );
    }

    #[test]
    fn eof_is_passed_on_as_a_half_close() {
        let server = EchoServer::start();
        let proxy = proxy_to(&server);
        let mut c = connect(&proxy);
        c.write_all(b"last words").expect("write");
        c.shutdown(Shutdown::Write).expect("half-close");
        assert_eq!(read_for(&mut c, 10, Duration::from_secs(5)), b"last words");
        // The server saw EOF and closed: the proxy passes that on too.
        assert_eq!(read_outcome(&mut c, Duration::from_secs(5)), Ok(0));
    }

    #[test]
    fn dropping_the_proxy_stops_everything_promptly() {
        let server = EchoServer::start();
        let proxy = FaultProxy::start(&[("a", server.addr), ("b", server.addr)]).expect("proxy");
        let addr = proxy.addr("a").expect("a");
        let mut c = connect(&proxy);
        assert_eq!(echo_round_trip(&mut c, b"x"), b"x");
        proxy
            .set("a", Fault::Delay { delay_ms: 10_000 })
            .expect("set");
        c.write_all(b"held").expect("write");
        let _idle = connect(&proxy);
        let started = Instant::now();
        drop(proxy);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "drop took {took:?}");
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
            "the listener is closed"
        );
        // The client's connection was closed as well.
        assert!(matches!(
            read_outcome(&mut c, Duration::from_secs(2)),
            Ok(0) | Err(io::ErrorKind::ConnectionReset)
        ));
    }

    #[test]
    fn bad_configurations_and_names_are_refused() {
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let bad = ProxyConfig {
            chunk_bytes: 0,
            ..ProxyConfig::default()
        };
        assert!(matches!(
            FaultProxy::start_with(bad, &[("a", addr)]),
            Err(ProxyError::Config {
                field: "chunk_bytes",
                ..
            })
        ));
        assert!(matches!(
            FaultProxy::start(&[("a", addr), ("a", addr)]),
            Err(ProxyError::DuplicateLink { .. })
        ));
        let many: Vec<(String, SocketAddr)> =
            (0..=LINKS_MAX).map(|i| (format!("l{i}"), addr)).collect();
        assert!(matches!(
            FaultProxy::start(&many),
            Err(ProxyError::TooManyLinks { .. })
        ));
    }
}
