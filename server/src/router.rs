//! Inter-shard routing. Every partition operation names its owning shard;
//! `handlers::call` runs it in place when this shard owns it, otherwise
//! [`Router::forward`] sends it over the channel mesh as an owned message
//! ([`Op`]) and awaits the owned answer ([`Reply`]). No `Rc`, no lock crosses a shard: messages hold
//! `Bytes`/`BytesMut` and plain structs.
//!
//! Invariants:
//! - The mesh receive loop never blocks on a send: it completes pending calls
//!   with a non-blocking local send and runs each incoming call in its own
//!   task, so two shards calling each other cannot deadlock.
//! - Mesh peer ids are assigned in join order; `peer_of` maps shard ids to
//!   them (filled at start-up through a shared table).

use crate::engine::Durability;
use crate::error::WireError;
use crate::metadata::Metadata;
use crate::waits::{WaitId, WaitRegistry};
use bytes::{Bytes, BytesMut};
use glommio::channels::channel_mesh::Senders;
use glommio::channels::local_channel::{self, LocalSender};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use strom_flatbuffers::protocol::{
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, ErrorCode,
    ListOffsetsPartition, ListOffsetsResult, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, PartitionDescription, ProduceResult, TopicResults,
};

/// One batch for one partition; `index` is its position in the request.
pub struct ProduceItem {
    pub index: usize,
    pub topic: String,
    pub partition: u32,
    pub frame: BytesMut,
}

pub struct FetchItem {
    pub index: usize,
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub max_bytes: usize,
}

/// One partition's fetch outcome; `frames` are the stored frames, whole.
pub struct FetchOut {
    pub index: usize,
    pub error: Option<WireError>,
    pub high_watermark: u64,
    pub log_start_offset: u64,
    pub frames: Vec<Bytes>,
}

/// Metadata changes; executed on shard 0 only.
pub enum AdminOp {
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    CreatePartitions(CreatePartitionsRequest),
}

/// An operation executed by the shard that owns its partitions (or group,
/// or, for `Admin`, shard 0).
pub enum Op {
    Produce {
        items: Vec<ProduceItem>,
        durability: Durability,
    },
    Fetch {
        items: Vec<FetchItem>,
    },
    /// Resolves when any (topic, partition) has data past its offset, after
    /// `wait_ms`, or when `CancelWait { id }` arrives.
    Wait {
        id: WaitId,
        items: Vec<(String, u32, u64)>,
        wait_ms: u64,
    },
    /// Ends the wait `id` (its fetch was answered); see `crate::waits`.
    CancelWait {
        id: WaitId,
    },
    ListOffsets {
        items: Vec<(usize, ListOffsetsPartition)>,
    },
    Describe {
        items: Vec<(String, u32)>,
    },
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    Admin(AdminOp),
    /// Apply a new metadata snapshot (broadcast by shard 0).
    Apply(Metadata),
    /// Consumer group coordination, on the group's owner.
    Group(crate::group::service::GroupOp),
    /// Kafka edge operations (idempotent produce, delete records).
    Kafka(crate::kafka::KafkaOp),
    /// A snapshot of the shard's metrics (for a `/metrics` scrape).
    Metrics,
}

pub enum Reply {
    Produce(Vec<(usize, ProduceResult)>),
    Fetch(Vec<FetchOut>),
    Done,
    ListOffsets(Vec<(usize, ListOffsetsResult)>),
    Describe(Vec<PartitionDescription>),
    OffsetCommit(OffsetCommitResponse),
    OffsetFetch(OffsetFetchResponse),
    Topics(TopicResults),
    Kafka(crate::kafka::KafkaReply),
    Group(crate::group::service::GroupReply),
    Metrics(Box<crate::metrics::ShardSnapshot>),
    Failed(WireError),
}

pub enum MeshMsg {
    Call { id: u64, op: Op },
    Reply { id: u64, reply: Reply },
}

/// The sending side of this shard's mesh plus the calls awaiting answers.
pub struct Router {
    pub shard_id: usize,
    senders: Option<Senders<MeshMsg>>,
    /// shard id -> mesh peer id.
    peer_of: Vec<usize>,
    pending: RefCell<HashMap<u64, LocalSender<Reply>>>,
    next_id: Cell<u64>,
    /// The long-poll waits this shard runs (for any shard's fetches).
    pub waits: Rc<WaitRegistry>,
}

impl Router {
    pub fn new(shard_id: usize, senders: Option<Senders<MeshMsg>>, peer_of: Vec<usize>) -> Router {
        Router {
            shard_id,
            senders,
            peer_of,
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            waits: Rc::new(WaitRegistry::default()),
        }
    }

    /// Sends `op` to `target` (never this shard) and awaits the answer.
    pub async fn forward(&self, target: usize, op: Op) -> Reply {
        debug_assert_ne!(target, self.shard_id, "forwarding to self");
        let (Some(senders), Some(&peer)) = (&self.senders, self.peer_of.get(target)) else {
            return Reply::Failed(WireError::new(
                ErrorCode::Internal,
                format!("no route to shard {target}"),
            ));
        };
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(id, tx);
        if senders
            .send_to(peer, MeshMsg::Call { id, op })
            .await
            .is_err()
        {
            self.pending.borrow_mut().remove(&id);
            return Reply::Failed(WireError::new(
                ErrorCode::ShuttingDown,
                format!("shard {target} is gone"),
            ));
        }
        let reply = rx.recv().await;
        self.pending.borrow_mut().remove(&id);
        reply.unwrap_or_else(|| {
            Reply::Failed(WireError::new(
                ErrorCode::Internal,
                format!("shard {target} dropped the call"),
            ))
        })
    }

    /// Completes a pending call (from the mesh receive loop; never blocks).
    pub fn complete(&self, id: u64, reply: Reply) {
        if let Some(tx) = self.pending.borrow_mut().remove(&id) {
            let _ = tx.try_send(reply);
        }
    }

    /// Sends an answer back to the shard that called (from a call's task).
    pub async fn answer(&self, peer: usize, id: u64, reply: Reply) {
        if let Some(senders) = &self.senders {
            let _ = senders.send_to(peer, MeshMsg::Reply { id, reply }).await;
        }
    }
}
