//! The client's one error type. Server-side failures keep the stable wire
//! [`ErrorCode`] and the server's message; local failures say which
//! operation, address, topic or partition they concern.

use std::net::SocketAddr;
use strom_flatbuffers::protocol::{error_name, ErrorCode, ProtocolError};
use strom_flatbuffers::FrameError;

/// Everything that can go wrong in the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an error code (for the request as a whole,
    /// or for the partition/topic named in `context`).
    #[error("{context}: server error {code_name} ({code}): {message}", code = .code.0, code_name = error_name(*.code))]
    Server {
        code: ErrorCode,
        message: String,
        context: String,
    },
    #[error("{op} {addr}: {source}")]
    Io {
        op: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not resolve {addr}: no address")]
    Resolve { addr: String },
    #[error("{op} {addr}: timed out after {timeout_ms} ms")]
    Timeout {
        op: &'static str,
        addr: SocketAddr,
        timeout_ms: u64,
    },
    #[error("connection to {addr} closed by the server")]
    Closed { addr: SocketAddr },
    #[error("protocol error from {addr}: {source}")]
    Protocol {
        addr: SocketAddr,
        #[source]
        source: ProtocolError,
    },
    #[error("corrupt frame in {topic}/{partition}: {source}")]
    Frame {
        topic: String,
        partition: u32,
        #[source]
        source: FrameError,
    },
    #[error("unexpected response to {request}: {got}")]
    UnexpectedResponse { request: &'static str, got: String },
    #[error(
        "server speaks protocol versions {min}..={max}, this client speaks {ours_min}..={ours_max}"
    )]
    UnsupportedVersion {
        min: u16,
        max: u16,
        ours_min: u16,
        ours_max: u16,
    },
    #[error("unknown topic {topic}")]
    UnknownTopic { topic: String },
    #[error("topic {topic} has {partitions} partitions, there is no partition {partition}")]
    UnknownPartition {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    #[error("record of {len_bytes} bytes exceeds the batch limit of {max_bytes} bytes")]
    RecordTooLarge { len_bytes: usize, max_bytes: usize },
    /// Produced with `acks = none`: the server does not answer, so the
    /// record's offset is never known.
    #[error("sent with acks=none: no offset is reported")]
    NotAcknowledged,
    /// A request failed earlier on this producer (e.g. the connection broke
    /// with the batch in flight): whether it was appended is unknown.
    #[error("{topic}/{partition}: batch outcome unknown: {reason}")]
    Undetermined {
        topic: String,
        partition: u32,
        reason: String,
    },
    /// With resends: the batch could not be delivered within the
    /// producer's `delivery_timeout_ms`, and no attempt can have stored it
    /// (it was never sent, or every attempt was lost before it was
    /// written). Its records are not stored.
    #[error("{topic}/{partition}: not delivered within {timeout_ms} ms, not stored: {reason}")]
    DeliveryTimeout {
        topic: String,
        partition: u32,
        timeout_ms: u64,
        reason: String,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// The wire error code, when the server reported one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when the connection is unusable after this error (so a
    /// reconnect may help).
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Error::Io { .. }
                | Error::Timeout { .. }
                | Error::Closed { .. }
                | Error::Protocol { .. }
        )
    }

    pub(crate) fn server(code: ErrorCode, message: &str, context: impl Into<String>) -> Error {
        Error::Server {
            code,
            message: message.to_owned(),
            context: context.into(),
        }
    }
}

/// `Ok(())` for `ErrorCode::None`, else a [`Error::Server`].
pub(crate) fn check(
    code: ErrorCode,
    message: &str,
    context: impl FnOnce() -> String,
) -> Result<()> {
    if code == ErrorCode::None {
        Ok(())
    } else {
        Err(Error::server(code, message, context()))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
