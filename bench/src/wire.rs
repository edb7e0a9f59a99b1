//! The native protocol over a plain blocking `std::net::TcpStream`, for the
//! load generators: the handshake, requests written with one vectored write
//! (envelope + batch frames, no copy of the frames), and a reader that hands
//! out whole response messages from a growable buffer without copying them.
//!
//! The bench speaks the codec (`strom_flatbuffers::protocol`) directly instead
//! of going through `strom_client::Producer`, so that it can keep many produce
//! requests in flight per connection, send pre-built frames, and read
//! responses on a second thread: the harness must not be the bottleneck.

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use strom_flatbuffers::protocol::{
    decode_response, encode_request, peek_message, ApiVersionsRequest, DecodedResponse, ErrorCode,
    RequestBody, ResponseBody, MESSAGE_BYTES_MAX, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN,
};

use crate::report::BenchError;

/// Longest wait for any single response before the bench gives up.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

fn net(op: &'static str, addr: &str, source: io::Error) -> BenchError {
    BenchError::Net {
        op,
        addr: addr.to_string(),
        source,
    }
}

fn proto(op: &'static str, addr: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Net {
        op,
        addr: addr.to_string(),
        source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    }
}

/// The writing half of a connection: assigns correlation ids and writes
/// requests.
pub struct Writer {
    stream: TcpStream,
    addr: String,
    next_id: u64,
}

/// The reading half: hands out whole response messages.
pub struct Reader {
    stream: TcpStream,
    addr: String,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// Connects, sets TCP_NODELAY, performs the `ApiVersions` handshake and
/// returns both halves.
pub fn connect(addr: &str, name: &str) -> Result<(Writer, Reader), BenchError> {
    let stream = TcpStream::connect(addr).map_err(|e| net("connect", addr, e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| net("set_nodelay", addr, e))?;
    stream
        .set_read_timeout(Some(RESPONSE_TIMEOUT))
        .map_err(|e| net("set_read_timeout", addr, e))?;
    let read_half = stream
        .try_clone()
        .map_err(|e| net("clone socket", addr, e))?;
    let mut w = Writer {
        stream,
        addr: addr.to_string(),
        next_id: 1,
    };
    let mut r = Reader {
        stream: read_half,
        addr: addr.to_string(),
        buf: vec![0u8; 256 << 10],
        start: 0,
        end: 0,
    };
    let body = RequestBody::ApiVersions(ApiVersionsRequest {
        client_name: format!("strom-bench/{name}"),
        min_version: PROTOCOL_VERSION_MIN,
        max_version: PROTOCOL_VERSION_MAX,
    });
    w.send(&body, &[])?;
    let msg = r.next_message()?;
    let d = decode(addr, msg)?;
    match d.body {
        ResponseBody::ApiVersions(v) if v.error == ErrorCode::None => Ok((w, r)),
        other => Err(proto("handshake", addr, format!("{other:?}"))),
    }
}

/// Decodes one response message.
pub fn decode(addr: &str, msg: &[u8]) -> Result<DecodedResponse, BenchError> {
    decode_response(msg).map_err(|e| proto("decode response", addr, e))
}

impl Writer {
    /// Writes one request (envelope, then the trailer parts) with vectored
    /// writes and returns its correlation id.
    pub fn send(&mut self, body: &RequestBody, trailer: &[&[u8]]) -> Result<u64, BenchError> {
        let id = self.next_id;
        self.next_id += 1;
        let head = encode_request(id, body).map_err(|e| proto("encode", &self.addr, e))?;
        let mut parts: Vec<IoSlice<'_>> = Vec::with_capacity(1 + trailer.len());
        parts.push(IoSlice::new(&head));
        parts.extend(trailer.iter().map(|t| IoSlice::new(t)));
        write_all_vectored(&mut self.stream, &mut parts)
            .map_err(|e| net("write", &self.addr, e))?;
        Ok(id)
    }

    /// The correlation id the next request will carry.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

fn write_all_vectored(s: &mut TcpStream, mut parts: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        match s.write_vectored(parts) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut parts, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Reader {
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The next whole response message (length prefix included), borrowed
    /// from the read buffer until the next call.
    pub fn next_message(&mut self) -> Result<&[u8], BenchError> {
        loop {
            let avail = &self.buf[self.start..self.end];
            match peek_message(avail, MESSAGE_BYTES_MAX + (64 << 20)) {
                Ok(Some(b)) => {
                    let s = self.start;
                    self.start += b.message_len;
                    return Ok(&self.buf[s..s + b.message_len]);
                }
                Ok(None) => {}
                Err(e) => return Err(proto("read response", &self.addr, e)),
            }
            // Make room: move the partial message to the front, grow if the
            // announced message does not fit.
            let need = strom_flatbuffers::protocol::announced_len(avail).unwrap_or(8);
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if need > self.buf.len() {
                self.buf.resize(need.next_power_of_two(), 0);
            }
            let n = loop {
                match self.stream.read(&mut self.buf[self.end..]) {
                    Ok(0) => {
                        return Err(net(
                            "read",
                            &self.addr,
                            io::Error::new(io::ErrorKind::UnexpectedEof, "server closed"),
                        ))
                    }
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(net("read", &self.addr, e)),
                }
            };
            self.end += n;
        }
    }
}
