//! The Kafka wire protocol at the edge: a second listener on every shard
//! (SO_REUSEPORT, like the native one) that speaks Kafka to unmodified Kafka
//! clients, on the same shards, engine, metadata and routing.
//!
//! Layout:
//! - `codec.rs`: framing (4-byte size prefix), request heads, the supported
//!   API table, response encoding (header version per API and version).
//!   I/O-free.
//! - `translate.rs`: Kafka record batches (any codec) to Strom frames on
//!   produce, Strom frames to uncompressed Kafka record batches v2 on fetch.
//!   I/O-free. One canonical on-disk format: the Strom frame.
//! - `fanout.rs`: what each partition of a produce request is answered
//!   with, from the replies of the shards it went to. I/O-free.
//! - `decompress.rs`: codecs with a bound on the expanded size (a batch
//!   that would expand past it is refused, not inflated). I/O-free.
//! - `groups.rs`: the group APIs, translated onto the shared coordinator.
//! - `txn.rs`: the transactional APIs, translated onto the transaction
//!   coordinator (`crate::txn`).
//! - `splice.rs`: fetched records leave as buffers of their own instead of
//!   being copied into the encoded response. I/O-free.
//! - `sasl.rs`: SaslHandshake and SaslAuthenticate, and the gate that
//!   answers nothing else before authentication.
//! - `scram_admin.rs`: Describe/AlterUserScramCredentials on the store.
//! - `connection.rs`: one client connection; answers in request order.
//! - `handlers.rs`: one function per API: decode, translate into the
//!   operations layer's ops (`crate::ops`: the same produce, with the same
//!   idempotent-producer rules in `crate::producers`, fetch, long poll and
//!   DeleteRecords as every protocol), encode.
//!
//! Invariants:
//! - This edge owns no partition state: it translates, routes through
//!   `ops::fan_out` and encodes; idempotence lives in the operations layer.
//! - Nothing here panics on input bytes; every failure is a Kafka error code.

pub mod codec;
pub mod connection;
pub mod decompress;
pub mod fanout;
pub mod groups;
pub mod handlers;
pub mod sasl;
pub mod scram_admin;
pub mod splice;
pub mod translate;
pub mod txn;

use crate::producers::RefusalKind;
use crate::router::{ProduceError, Produced};
use crate::shard::Shard;
use glommio::net::TcpListener;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Mutex;

/// The Kafka listener's settings (from `config.rs`).
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `None`: no Kafka listener.
    pub listen: Option<SocketAddr>,
    /// Host and port told to clients; `None`: the address they connected to.
    pub advertise: Option<(String, u16)>,
    pub auto_create: bool,
    pub default_partitions: u32,
}

/// Parses `HOST:PORT` for `--kafka-advertise` (the host is not resolved).
pub fn parse_advertise(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("--kafka-advertise {s:?}: expected HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("--kafka-advertise {s:?}: bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(format!("--kafka-advertise {s:?}: expected HOST:PORT"));
    }
    Ok((host.to_owned(), port))
}

/// Process-wide Kafka state, shared by every shard. (Producer ids come
/// from `crate::producers::ProducerIds`, shared with the native protocol.)
pub struct KafkaShared {
    pub config: KafkaConfig,
    /// The address shard 0 bound (the port every other shard binds too).
    bound: Mutex<Option<SocketAddr>>,
}

impl KafkaShared {
    pub fn new(config: KafkaConfig) -> KafkaShared {
        KafkaShared {
            config,
            bound: Mutex::new(None),
        }
    }

    pub fn bound(&self) -> Option<SocketAddr> {
        *self.bound.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Binds the Kafka listener on this shard: the configured address on the
/// first shard, the port it got on every later one.
pub fn bind(shared: &KafkaShared) -> Result<Option<TcpListener>, String> {
    let Some(configured) = shared.config.listen else {
        return Ok(None);
    };
    let mut bound = shared.bound.lock().unwrap_or_else(|e| e.into_inner());
    let addr = bound.unwrap_or(configured);
    let listener = TcpListener::bind(addr).map_err(|e| {
        crate::error::ServerError::Bind {
            addr: addr.to_string(),
            reason: e.to_string(),
        }
        .to_string()
    })?;
    if bound.is_none() {
        *bound = Some(listener.local_addr().unwrap_or(addr));
    }
    Ok(Some(listener))
}

/// Accepts Kafka connections until shutdown.
pub async fn serve(shard: Rc<Shard>, listener: TcpListener) {
    crate::shard::accept_until_shutdown(
        &shard,
        listener,
        crate::metrics::Protocol::Kafka,
        shard.shared.tls.kafka.clone(),
        connection::serve,
    )
    .await;
}

/// What an append of one batch came to, in Kafka terms.
#[derive(Debug, Clone, Default)]
pub struct ProduceOutcome {
    pub error_code: i16,
    pub message: Option<String>,
    pub base_offset: i64,
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
}

/// A produce outcome in Kafka's terms: the operations layer's [`Produced`]
/// with its error as a Kafka code (idempotence refusals by name).
pub fn kafka_outcome(p: Produced) -> ProduceOutcome {
    match p {
        Ok(a) => ProduceOutcome {
            error_code: codec::NONE,
            message: None,
            base_offset: a.base_offset as i64,
            // CreateTime topics: the broker's time is not reported.
            log_append_time_ms: -1,
            log_start_offset: a.log_start_offset as i64,
        },
        Err(e) => {
            let (error_code, message) = match e {
                ProduceError::Wire(w) => (codec::wire_to_kafka(w.code), w.message),
                ProduceError::Refused(r) => (
                    match r.kind {
                        RefusalKind::OutOfOrderSequence => codec::OUT_OF_ORDER_SEQUENCE_NUMBER,
                        RefusalKind::DuplicateSequence => codec::DUPLICATE_SEQUENCE_NUMBER,
                        RefusalKind::InvalidProducerEpoch => codec::INVALID_PRODUCER_EPOCH,
                        RefusalKind::RecordWithoutKey => codec::INVALID_RECORD,
                    },
                    r.message,
                ),
            };
            ProduceOutcome {
                error_code,
                message: Some(message),
                base_offset: -1,
                ..Default::default()
            }
        }
    }
}
