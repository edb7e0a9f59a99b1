//! One blocking TCP connection to a Strom server speaking the native
//! protocol: connect with a timeout, the `ApiVersions` handshake, requests
//! tagged with correlation ids, pipelining, and reconnects.
//!
//! Invariants:
//! - The handshake is the first request on every socket, including after a
//!   reconnect; no other request is written before it succeeded.
//! - Correlation ids are unique per [`Connection`] for its whole life (they
//!   are not reset by a reconnect), so a response can never be matched to
//!   the wrong request.
//! - A [`Connection::generation`] is unique among every connection of the
//!   process (one counter for all), so a request tracked as (connection
//!   route, correlation id, generation) can never be waited for on another
//!   connection that a client has since put in its place: the generations
//!   differ, and the request counts as lost.
//! - Responses that arrive for another id than the one awaited are stashed
//!   (at most [`ConnectionConfig::stashed_responses_max`]) and handed out when
//!   asked for; pipelined requests may be answered in any order.
//! - Any I/O error, timeout or undecodable response drops the socket: its
//!   byte stream is no longer trustworthy. Requests in flight on it are lost
//!   ([`Connection::generation`] tells callers that this happened). Only
//!   idempotent requests are retried by [`Connection::call`].
//! - Every wait is bounded: connect, write and read timeouts, bounded
//!   reconnect attempts with exponential backoff.

use crate::error::{Error, Result};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use strom_flatbuffers::protocol::{
    decode_response, encode_request, peek_message, ApiVersionsRequest, ApiVersionsResponse,
    ErrorCode, RequestBody, ResponseBody, MESSAGE_BYTES_MAX, PROTOCOL_VERSION_MAX,
    PROTOCOL_VERSION_MIN,
};

/// Bytes read from the socket at a time when no larger message is announced.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// The last generation handed out, by any connection of the process.
static GENERATIONS: AtomicU64 = AtomicU64::new(0);

/// Timeouts, retry bounds and limits of a [`Connection`].
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Name sent in the handshake (shows up in server logs).
    pub client_name: String,
    /// Longest wait for the TCP connection to be established.
    pub connect_timeout_ms: u64,
    /// Longest wait for a response, on top of any long-poll wait the request
    /// itself asks for; also the socket write timeout.
    pub request_timeout_ms: u64,
    /// Reconnect attempts after a failure before giving up (0: none).
    pub reconnect_attempts_max: u32,
    /// First backoff between reconnect attempts; doubles each attempt.
    pub reconnect_backoff_ms: u64,
    /// Cap on the backoff between reconnect attempts.
    pub reconnect_backoff_max_ms: u64,
    /// Largest response message accepted (the u32 total_len value).
    pub response_bytes_max: usize,
    /// Responses kept for ids nobody is waiting for yet.
    pub stashed_responses_max: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            client_name: format!("strom-client/{}", env!("CARGO_PKG_VERSION")),
            connect_timeout_ms: 5_000,
            request_timeout_ms: 30_000,
            reconnect_attempts_max: 5,
            reconnect_backoff_ms: 50,
            reconnect_backoff_max_ms: 2_000,
            response_bytes_max: MESSAGE_BYTES_MAX + (1 << 20),
            stashed_responses_max: 4_096,
        }
    }
}

/// A decoded response. For a fetch, `trailer` holds the stored frames of all
/// results back to back (cut it with `FetchResponse::split_trailer`); it is a
/// slice of the read buffer, not a copy.
#[derive(Debug, Clone)]
pub struct Response {
    pub correlation_id: u64,
    pub body: ResponseBody,
    pub trailer: Bytes,
}

/// A blocking connection; see the module docs.
pub struct Connection {
    addr_text: String,
    addr: SocketAddr,
    config: ConnectionConfig,
    stream: Option<TcpStream>,
    read_buf: BytesMut,
    write_buf: Vec<u8>,
    next_correlation_id: u64,
    stashed: HashMap<u64, Response>,
    server: ApiVersionsResponse,
    generation: u64,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr)
            .field("connected", &self.stream.is_some())
            .field("generation", &self.generation)
            .finish()
    }
}

/// Resolves `host:port` to its first address.
pub fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .map_err(|source| Error::Io {
            op: "resolve",
            addr: addr.to_owned(),
            source,
        })?
        .next()
        .ok_or_else(|| Error::Resolve {
            addr: addr.to_owned(),
        })
}

/// Whether sending `body` twice does no harm (everything but produce and
/// topic or partition creation and deletion).
pub(crate) fn is_idempotent(body: &RequestBody) -> bool {
    !matches!(
        body,
        RequestBody::Produce(_)
            | RequestBody::CreateTopics(_)
            | RequestBody::DeleteTopics(_)
            | RequestBody::CreatePartitions(_)
    )
}

impl Connection {
    /// Connects (retrying up to `reconnect_attempts_max` times) and performs
    /// the handshake.
    pub fn connect(addr: &str, config: ConnectionConfig) -> Result<Connection> {
        let resolved = resolve(addr)?;
        let mut conn = Connection {
            addr_text: addr.to_owned(),
            addr: resolved,
            config,
            stream: None,
            read_buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            write_buf: Vec::with_capacity(4096),
            next_correlation_id: 1,
            stashed: HashMap::new(),
            server: ApiVersionsResponse::default(),
            generation: 0,
        };
        conn.reconnect()?;
        Ok(conn)
    }

    /// The address this connection talks to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address as the caller gave it.
    pub fn addr_text(&self) -> &str {
        &self.addr_text
    }

    pub fn config(&self) -> &ConnectionConfig {
        &self.config
    }

    /// What the server said in the last handshake (versions and limits).
    pub fn server_info(&self) -> &ApiVersionsResponse {
        &self.server
    }

    /// Changed by every (re)connect, and unique among all connections of
    /// the process: a request sent under another generation will never be
    /// answered on this connection.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Sets how many times a failed (re)connect is tried again (a cluster
    /// client tries another node instead of waiting for this one).
    pub fn set_reconnect_attempts_max(&mut self, attempts: u32) {
        self.config.reconnect_attempts_max = attempts;
    }

    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    /// Drops the socket; the next request reconnects.
    pub fn disconnect(&mut self) {
        self.stream = None;
        self.read_buf.clear();
        self.stashed.clear();
    }

    /// Reconnects with bounded retries and exponential backoff, then
    /// performs the handshake.
    pub fn reconnect(&mut self) -> Result<()> {
        self.disconnect();
        let mut backoff_ms = self.config.reconnect_backoff_ms;
        let mut attempt = 0u32;
        loop {
            match self.try_connect() {
                Ok(()) => return Ok(()),
                Err(e)
                    if attempt < self.config.reconnect_attempts_max && e.is_connection_error() =>
                {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(backoff_ms));
                    backoff_ms = (backoff_ms * 2).min(self.config.reconnect_backoff_max_ms);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn try_connect(&mut self) -> Result<()> {
        self.disconnect();
        let timeout = Duration::from_millis(self.config.connect_timeout_ms.max(1));
        let stream = TcpStream::connect_timeout(&self.addr, timeout)
            .map_err(|source| self.io_error("connect", source))?;
        stream
            .set_nodelay(true)
            .map_err(|source| self.io_error("set_nodelay", source))?;
        stream
            .set_write_timeout(Some(Duration::from_millis(
                self.config.request_timeout_ms.max(1),
            )))
            .map_err(|source| self.io_error("set_write_timeout", source))?;
        self.stream = Some(stream);
        self.generation = GENERATIONS.fetch_add(1, Ordering::Relaxed) + 1;
        let body = RequestBody::ApiVersions(ApiVersionsRequest {
            client_name: self.config.client_name.clone(),
            min_version: PROTOCOL_VERSION_MIN,
            max_version: PROTOCOL_VERSION_MAX,
        });
        let id = self.send(&body, &[])?;
        let response = self.recv(id, 0)?;
        let info = match response.body {
            ResponseBody::ApiVersions(v) => v,
            ResponseBody::Error(e) => {
                self.disconnect();
                return Err(Error::server(e.error, &e.message, "handshake"));
            }
            other => {
                self.disconnect();
                return Err(Error::UnexpectedResponse {
                    request: "api_versions",
                    got: format!("{other:?}"),
                });
            }
        };
        if info.error != ErrorCode::None {
            self.disconnect();
            return Err(Error::server(info.error, &info.message, "handshake"));
        }
        if info.max_version < PROTOCOL_VERSION_MIN || info.min_version > PROTOCOL_VERSION_MAX {
            self.disconnect();
            return Err(Error::UnsupportedVersion {
                min: info.min_version,
                max: info.max_version,
                ours_min: PROTOCOL_VERSION_MIN,
                ours_max: PROTOCOL_VERSION_MAX,
            });
        }
        self.server = info;
        Ok(())
    }

    fn io_error(&self, op: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            op,
            addr: self.addr.to_string(),
            source,
        }
    }

    /// Writes one request (envelope, table, then the trailer parts in order)
    /// and returns its correlation id without waiting for the answer.
    /// Reconnects first if the socket was dropped.
    pub fn send(&mut self, body: &RequestBody, trailer: &[&[u8]]) -> Result<u64> {
        let declared = body.trailer_len();
        let given: u64 = trailer.iter().map(|t| t.len() as u64).sum();
        if declared != given {
            return Err(Error::InvalidArgument(format!(
                "{} request declares {declared} trailer bytes but {given} were given",
                body.name()
            )));
        }
        if self.stream.is_none() {
            self.reconnect()?;
        }
        let id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let head = encode_request(id, body).map_err(|source| Error::Protocol {
            addr: self.addr,
            source,
        })?;
        self.write_buf.clear();
        self.write_buf.extend_from_slice(&head);
        for part in trailer {
            self.write_buf.extend_from_slice(part);
        }
        let stream = self.stream.as_mut().expect("connected above");
        if let Err(source) = stream.write_all(&self.write_buf) {
            let err = if matches!(source.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                Error::Timeout {
                    op: "write",
                    addr: self.addr,
                    timeout_ms: self.config.request_timeout_ms,
                }
            } else {
                self.io_error("write", source)
            };
            self.disconnect();
            return Err(err);
        }
        if self.write_buf.capacity() > 4 << 20 {
            self.write_buf = Vec::with_capacity(4096);
        }
        Ok(id)
    }

    /// Waits for the response to `correlation_id`, stashing others. The wait
    /// is bounded by `request_timeout_ms + extra_wait_ms`. A timeout drops
    /// the connection.
    pub fn recv(&mut self, correlation_id: u64, extra_wait_ms: u64) -> Result<Response> {
        if let Some(r) = self.stashed.remove(&correlation_id) {
            return Ok(r);
        }
        let budget_ms = self.config.request_timeout_ms.saturating_add(extra_wait_ms);
        let deadline = Instant::now() + Duration::from_millis(budget_ms);
        loop {
            let response = match self.read_message(deadline, budget_ms) {
                Ok(r) => r,
                Err(e) => {
                    self.disconnect();
                    return Err(e);
                }
            };
            if response.correlation_id == correlation_id {
                return Ok(response);
            }
            if self.stashed.len() >= self.config.stashed_responses_max {
                self.disconnect();
                return Err(Error::InvalidArgument(format!(
                    "more than {} unclaimed responses stashed",
                    self.config.stashed_responses_max
                )));
            }
            self.stashed.insert(response.correlation_id, response);
        }
    }

    fn read_message(&mut self, deadline: Instant, budget_ms: u64) -> Result<Response> {
        loop {
            match peek_message(&self.read_buf, self.config.response_bytes_max) {
                Ok(Some(bounds)) => {
                    let message = self.read_buf.split_to(bounds.message_len).freeze();
                    let decoded = decode_response(&message).map_err(|source| Error::Protocol {
                        addr: self.addr,
                        source,
                    })?;
                    return Ok(Response {
                        correlation_id: decoded.correlation_id,
                        body: decoded.body,
                        trailer: message.slice(decoded.trailer),
                    });
                }
                Ok(None) => {}
                Err(source) => {
                    return Err(Error::Protocol {
                        addr: self.addr,
                        source,
                    })
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    op: "read",
                    addr: self.addr,
                    timeout_ms: budget_ms,
                });
            }
            let want = strom_flatbuffers::protocol::announced_len(&self.read_buf)
                .map(|n| n.saturating_sub(self.read_buf.len()))
                .unwrap_or(0)
                .clamp(READ_CHUNK_BYTES, self.config.response_bytes_max + 4);
            let stream = self
                .stream
                .as_mut()
                .ok_or(Error::Closed { addr: self.addr })?;
            stream
                .set_read_timeout(Some(deadline - now))
                .map_err(|source| Error::Io {
                    op: "set_read_timeout",
                    addr: self.addr.to_string(),
                    source,
                })?;
            let start = self.read_buf.len();
            self.read_buf.resize(start + want, 0);
            let result = stream.read(&mut self.read_buf[start..]);
            match result {
                Ok(0) => {
                    self.read_buf.truncate(start);
                    return Err(Error::Closed { addr: self.addr });
                }
                Ok(n) => self.read_buf.truncate(start + n),
                Err(e) if e.kind() == ErrorKind::Interrupted => self.read_buf.truncate(start),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    self.read_buf.truncate(start);
                    return Err(Error::Timeout {
                        op: "read",
                        addr: self.addr,
                        timeout_ms: budget_ms,
                    });
                }
                Err(source) => {
                    self.read_buf.truncate(start);
                    return Err(Error::Io {
                        op: "read",
                        addr: self.addr.to_string(),
                        source,
                    });
                }
            }
        }
    }

    /// Sends one request and waits for its answer. An error response for
    /// the whole request becomes [`Error::Server`]. Idempotent requests
    /// (everything but produce and topic/partition creation or deletion)
    /// are retried once over a fresh connection after a connection error.
    pub fn call(
        &mut self,
        body: &RequestBody,
        trailer: &[&[u8]],
        extra_wait_ms: u64,
    ) -> Result<Response> {
        let first = self.call_once(body, trailer, extra_wait_ms);
        match first {
            Err(e) if e.is_connection_error() && is_idempotent(body) => {
                self.reconnect()?;
                self.call_once(body, trailer, extra_wait_ms)
            }
            other => other,
        }
    }

    fn call_once(
        &mut self,
        body: &RequestBody,
        trailer: &[&[u8]],
        extra_wait_ms: u64,
    ) -> Result<Response> {
        let id = self.send(body, trailer)?;
        let response = self.recv(id, extra_wait_ms)?;
        if let ResponseBody::Error(e) = &response.body {
            return Err(Error::server(e.error, &e.message, body.name()));
        }
        Ok(response)
    }
}
