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
//! - `splice.rs`: fetched records leave as buffers of their own instead of
//!   being copied into the encoded response. I/O-free.
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
pub mod splice;
pub mod translate;

use crate::producers::RefusalKind;
use crate::router::{ProduceError, Produced};
use crate::shard::Shard;
use glommio::net::TcpListener;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
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

/// Process-wide Kafka state, shared by every shard.
pub struct KafkaShared {
    pub config: KafkaConfig,
    /// The address shard 0 bound (the port every other shard binds too).
    bound: Mutex<Option<SocketAddr>>,
    next_producer_id: AtomicI64,
}

/// Producer ids advance by this step; a node's ids are its node id
/// modulo it, so nodes of one cluster (ids below it) never hand out the
/// same producer id (the idempotence state is keyed by it).
pub const PRODUCER_ID_STRIDE: i64 = 16;
const _: () = assert!(strom_replication::limits::VOTERS_MAX < PRODUCER_ID_STRIDE as usize);

impl KafkaShared {
    /// `node_id`: the cluster node id (0 on a single node).
    pub fn new(config: KafkaConfig, node_id: u64) -> KafkaShared {
        // Producer ids stay unique across restarts without being stored:
        // the start time in ms, shifted past 2^16 allocations per ms of
        // run time; and across the nodes of a cluster by their residue.
        let start_ms = crate::engine::partition::now_ms().max(1);
        let residue = (node_id % PRODUCER_ID_STRIDE as u64) as i64;
        KafkaShared {
            config,
            bound: Mutex::new(None),
            next_producer_id: AtomicI64::new((start_ms << 20) + residue),
        }
    }

    pub fn bound(&self) -> Option<SocketAddr> {
        *self.bound.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn allocate_producer_id(&self) -> i64 {
        self.next_producer_id
            .fetch_add(PRODUCER_ID_STRIDE, Ordering::Relaxed)
    }

    /// Makes every id allocated from now on larger than `id` (one found in
    /// a partition's rebuilt producer state), keeping this node's residue:
    /// a producer id is never handed out twice, even if the clock went
    /// back across a restart, as long as the state naming it survives.
    pub fn note_producer_id(&self, id: i64) {
        self.next_producer_id.fetch_max(
            next_producer_id_above(id, self.residue()),
            Ordering::Relaxed,
        );
    }

    fn residue(&self) -> i64 {
        self.next_producer_id
            .load(Ordering::Relaxed)
            .rem_euclid(PRODUCER_ID_STRIDE)
    }
}

/// The smallest id above `id` that is `residue` modulo the stride.
fn next_producer_id_above(id: i64, residue: i64) -> i64 {
    debug_assert!((0..PRODUCER_ID_STRIDE).contains(&residue));
    let base = id - id.rem_euclid(PRODUCER_ID_STRIDE) + residue;
    if base > id {
        base
    } else {
        base.saturating_add(PRODUCER_ID_STRIDE)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Producer ids come from the start time, so ids after a restart are
    /// larger, unless the clock went back: then an id a surviving producer
    /// state names could be handed out again. The rebuilt state raises the
    /// floor above every id it names.
    #[test]
    fn ids_after_a_noted_one_are_larger_and_keep_the_residue() {
        assert_eq!(next_producer_id_above(100, 3), 115);
        assert_eq!(next_producer_id_above(96, 3), 99);
        assert_eq!(next_producer_id_above(99, 3), 115);
        assert_eq!(next_producer_id_above(-1, 0), 0);
        let config = KafkaConfig {
            listen: None,
            advertise: None,
            auto_create: false,
            default_partitions: 1,
        };
        let k = KafkaShared::new(config, 5);
        let first = k.allocate_producer_id();
        assert_eq!(first.rem_euclid(PRODUCER_ID_STRIDE), 5);
        // An id below what is allocated changes nothing.
        k.note_producer_id(first - 100);
        assert_eq!(k.allocate_producer_id(), first + PRODUCER_ID_STRIDE);
        // One far above (a clock that went back) lifts the floor.
        let seen = first + (1 << 30) + 7;
        k.note_producer_id(seen);
        let next = k.allocate_producer_id();
        assert!(
            next > seen && next - seen <= PRODUCER_ID_STRIDE,
            "{next} {seen}"
        );
        assert_eq!(next.rem_euclid(PRODUCER_ID_STRIDE), 5);
    }
}
