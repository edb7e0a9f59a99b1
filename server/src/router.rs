//! Inter-shard routing. Every partition operation names its owning shard;
//! `ops::call` runs it in place when this shard owns it, otherwise
//! [`Router::forward`] sends it over the channel mesh as an owned message
//! ([`Op`]) and awaits the owned answer ([`Reply`]). No `Rc`, no lock
//! crosses a shard: messages hold `Bytes`/`BytesMut` and plain structs.
//!
//! Messages are batched per peer and loop turn: calls and answers are queued
//! in an outbox, and one flush task per peer, scheduled behind the tasks
//! that are ready now, sends everything queued as one [`MeshBatch`]. A burst
//! of N forwarded requests wakes the peer once instead of N times (each
//! wake-up is an eventfd write and often an inter-processor interrupt).
//!
//! Invariants:
//! - Nothing on the mesh path waits on a send: `forward` and `answer` only
//!   queue; the flush task sends; the receive loop completes calls with a
//!   non-blocking local send and runs each incoming call in its own task,
//!   so two shards calling each other cannot deadlock.
//! - Messages to one peer leave in the order they were queued.
//! - A batch that cannot be sent (the peer is gone) fails its calls with
//!   `ShuttingDown`; none waits forever.
//! - Mesh peer ids are assigned in join order; `peer_of` maps shard ids to
//!   them (filled at start-up through a shared table).

use crate::engine::Durability;
use crate::error::WireError;
use crate::limits::MESH_BATCH_MESSAGES_MAX;
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
    OffsetFetchRequest, OffsetFetchResponse, PartitionDescription, TopicResults,
};

/// One batch for one partition; `index` is its position in the request
/// (several batches of one partition may share it).
pub struct ProduceItem {
    pub index: usize,
    pub topic: String,
    pub partition: u32,
    pub frame: BytesMut,
    /// Set for a batch of an idempotent producer: checked and recorded
    /// against its sequence (`crate::producers`), whatever the protocol.
    pub producer: Option<crate::producers::ProducerBatch>,
}

/// Where one produce item was stored.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub base_offset: u64,
    pub last_offset: u64,
    /// The broker's append time; -1 for a duplicate answered from producer
    /// state (its time is not kept).
    pub append_time_ms: i64,
    pub log_start_offset: u64,
}

/// Why one produce item was not stored.
#[derive(Debug, Clone)]
pub enum ProduceError {
    Wire(WireError),
    /// Refused by the idempotent-producer rules.
    Refused(crate::producers::Refusal),
}

/// What one produce item came to; each edge encodes it in its protocol.
pub type Produced = Result<Appended, ProduceError>;

pub struct FetchItem {
    pub index: usize,
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub max_bytes: usize,
    /// Kafka's isolation level 1: only frames below the last stable offset.
    pub read_committed: bool,
}

/// One partition's fetch outcome; `frames` are the stored frames, whole.
#[derive(Default)]
pub struct FetchOut {
    pub index: usize,
    pub error: Option<WireError>,
    pub high_watermark: u64,
    /// The last stable offset (the high watermark with no open transaction).
    pub last_stable_offset: u64,
    pub log_start_offset: u64,
    pub frames: Vec<Bytes>,
    /// read_committed: the aborted transactions in the range read, as
    /// (producer id, first offset).
    pub aborted: Vec<(i64, u64)>,
}

/// One transaction marker for one partition (`Op::TxnMarkers`).
#[derive(Debug, Clone)]
pub struct TxnMarker {
    pub topic: String,
    pub partition: u32,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
}

/// Metadata changes; executed on shard 0 only.
pub enum AdminOp {
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    CreatePartitions(CreatePartitionsRequest),
    /// Kafka's AlterConfigs (`replace`: the topic's configs become exactly
    /// these) and IncrementalAlterConfigs (set or delete each key).
    AlterConfigs(Vec<AlterTopicConfigs>),
}

/// The config changes of one topic.
#[derive(Debug, Clone)]
pub struct AlterTopicConfigs {
    pub topic: String,
    pub replace: bool,
    /// key -> new value, or `None`: back to the default.
    pub changes: Vec<(String, Option<String>)>,
    /// Validate only; change nothing.
    pub validate_only: bool,
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
        /// Latest means the last stable offset (Kafka's isolation level 1).
        read_committed: bool,
    },
    /// Writes transaction markers (control batches) into partitions this
    /// shard owns, durably; one result per marker, in order.
    TxnMarkers {
        items: Vec<TxnMarker>,
    },
    /// A transaction coordinator operation, on shard 0.
    Txn(crate::txn::TxnOp),
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
    /// Advances each partition's log start to the offset (-1: its high
    /// watermark): Kafka's DeleteRecords. (index, topic, partition, offset).
    DeleteRecords {
        items: Vec<(usize, String, u32, i64)>,
    },
    /// A snapshot of the shard's metrics (for a `/metrics` scrape).
    Metrics,
    /// Where leader epochs ended (Kafka's OffsetForLeaderEpoch).
    EpochEnds {
        items: Vec<(usize, EpochQuery)>,
    },
}

/// One partition of Kafka's OffsetForLeaderEpoch: where `leader_epoch`
/// ended, asked by a client that believes the leader is in
/// `current_leader_epoch` (-1: no check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochQuery {
    pub topic: String,
    pub partition: u32,
    pub current_leader_epoch: i32,
    pub leader_epoch: i32,
}

/// The answer to one [`EpochQuery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EpochAnswer {
    /// The epoch at or below the one asked that the log holds, and where it
    /// ended; (-1, -1) when the asked one is later than any held (Kafka's
    /// UNDEFINED_EPOCH / UNDEFINED_EPOCH_OFFSET).
    Ended {
        leader_epoch: i32,
        end_offset: i64,
    },
    /// `current_leader_epoch` is older than the leader's (FENCED_LEADER_EPOCH).
    Fenced {
        leader_epoch: u64,
    },
    /// `current_leader_epoch` is newer than the leader's (UNKNOWN_LEADER_EPOCH).
    UnknownEpoch {
        leader_epoch: u64,
    },
    Failed(WireError),
}

pub enum Reply {
    Produce(Vec<(usize, Produced)>),
    Fetch(Vec<FetchOut>),
    Done,
    ListOffsets(Vec<(usize, ListOffsetsResult)>),
    Describe(Vec<PartitionDescription>),
    OffsetCommit(OffsetCommitResponse),
    OffsetFetch(OffsetFetchResponse),
    Topics(TopicResults),
    /// (index, the new log start offset or why not).
    DeleteRecords(Vec<(usize, Result<u64, WireError>)>),
    Group(crate::group::service::GroupReply),
    Metrics(Box<crate::metrics::ShardSnapshot>),
    EpochEnds(Vec<(usize, EpochAnswer)>),
    TxnMarkers(Vec<Result<(), WireError>>),
    Txn(crate::txn::TxnReply),
    Failed(WireError),
}

pub enum MeshMsg {
    Call { id: u64, op: Op },
    Reply { id: u64, reply: Reply },
}

/// What one mesh send carries: every message this shard had for one peer
/// in one turn of its loop (at most [`MESH_BATCH_MESSAGES_MAX`]), so a
/// burst of calls costs the peer one wake-up, not one per call.
pub type MeshBatch = Vec<MeshMsg>;

/// Calls awaiting their answer, by call id.
type Pending = Rc<RefCell<HashMap<u64, LocalSender<Reply>>>>;

/// Messages waiting for the next send to each peer.
struct Outbox {
    senders: Senders<MeshBatch>,
    /// The router's calls awaiting answers (to fail those a send lost).
    pending: Pending,
    /// Index = mesh peer id.
    queued: RefCell<Vec<Vec<MeshMsg>>>,
    /// Index = mesh peer id: a flush task is scheduled.
    flushing: RefCell<Vec<bool>>,
}

/// The sending side of this shard's mesh plus the calls awaiting answers.
pub struct Router {
    pub shard_id: usize,
    outbox: Option<Rc<Outbox>>,
    /// shard id -> mesh peer id.
    peer_of: Vec<usize>,
    pending: Pending,
    next_id: Cell<u64>,
    /// The long-poll waits this shard runs (for any shard's fetches).
    pub waits: Rc<WaitRegistry>,
}

impl Router {
    pub fn new(
        shard_id: usize,
        senders: Option<Senders<MeshBatch>>,
        peer_of: Vec<usize>,
    ) -> Router {
        let pending: Pending = Rc::new(RefCell::new(HashMap::new()));
        let outbox = senders.map(|senders| {
            let peers = senders.nr_consumers();
            Rc::new(Outbox {
                senders,
                pending: pending.clone(),
                queued: RefCell::new((0..peers).map(|_| Vec::new()).collect()),
                flushing: RefCell::new(vec![false; peers]),
            })
        });
        Router {
            shard_id,
            outbox,
            peer_of,
            pending,
            next_id: Cell::new(0),
            waits: Rc::new(WaitRegistry::default()),
        }
    }

    /// Sends `op` to `target` (never this shard) and awaits the answer.
    pub async fn forward(&self, target: usize, op: Op) -> Reply {
        debug_assert_ne!(target, self.shard_id, "forwarding to self");
        let (Some(outbox), Some(&peer)) = (&self.outbox, self.peer_of.get(target)) else {
            return Reply::Failed(WireError::new(
                ErrorCode::Internal,
                format!("no route to shard {target}"),
            ));
        };
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(id, tx);
        // A failed send completes the call with ShuttingDown (the flush).
        Outbox::enqueue(outbox, peer, MeshMsg::Call { id, op });
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
    pub fn answer(&self, peer: usize, id: u64, reply: Reply) {
        if let Some(outbox) = &self.outbox {
            Outbox::enqueue(outbox, peer, MeshMsg::Reply { id, reply });
        }
    }
}

impl Outbox {
    /// Queues `msg` for `peer` and makes sure a flush is scheduled. The
    /// flush runs after the tasks that are ready now (one yield), so every
    /// message of this loop turn leaves in one send.
    fn enqueue(this: &Rc<Outbox>, peer: usize, msg: MeshMsg) {
        this.queued.borrow_mut()[peer].push(msg);
        let mut flushing = this.flushing.borrow_mut();
        if flushing[peer] {
            return;
        }
        flushing[peer] = true;
        let outbox = this.clone();
        glommio::spawn_local(async move {
            futures_lite::future::yield_now().await;
            loop {
                let batch: MeshBatch = {
                    let mut q = outbox.queued.borrow_mut();
                    let n = q[peer].len().min(MESH_BATCH_MESSAGES_MAX);
                    q[peer].drain(..n).collect()
                };
                if batch.is_empty() {
                    outbox.flushing.borrow_mut()[peer] = false;
                    return;
                }
                let calls: Vec<u64> = batch
                    .iter()
                    .filter_map(|m| match m {
                        MeshMsg::Call { id, .. } => Some(*id),
                        MeshMsg::Reply { .. } => None,
                    })
                    .collect();
                if outbox.senders.send_to(peer, batch).await.is_err() {
                    // The peer is gone: its calls will never be answered.
                    for id in calls {
                        if let Some(tx) = outbox.pending.borrow_mut().remove(&id) {
                            let _ = tx.try_send(Reply::Failed(WireError::new(
                                ErrorCode::ShuttingDown,
                                format!("mesh peer {peer} is gone"),
                            )));
                        }
                    }
                }
            }
        })
        .detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::channels::channel_mesh::MeshBuilder;
    use glommio::LocalExecutorBuilder;

    /// The story: every forwarded call was its own mesh send, so a burst of
    /// N calls cost the peer N wake-ups. Now the calls queued in one loop
    /// turn leave as one batch, and every call still gets its own answer.
    #[test]
    fn calls_queued_in_one_turn_leave_as_one_batch_and_each_is_answered() {
        const CALLS: usize = 100;
        let mesh: MeshBuilder<MeshBatch, _> = MeshBuilder::full(2, 1024);
        let (m0, m1) = (mesh.clone(), mesh);
        let peer = std::thread::spawn(move || {
            LocalExecutorBuilder::default()
                .spawn(move || async move {
                    let (senders, mut receivers) = m1.join().await.expect("join");
                    let mut sizes = Vec::new();
                    let mut answered = 0;
                    let from = 1 - senders.peer_id();
                    let (_, rx) = receivers.streams().pop().expect("one stream");
                    while answered < CALLS {
                        let batch = rx.recv().await.expect("batch");
                        sizes.push(batch.len());
                        let replies: MeshBatch = batch
                            .into_iter()
                            .map(|m| match m {
                                MeshMsg::Call { id, .. } => MeshMsg::Reply {
                                    id,
                                    reply: Reply::Done,
                                },
                                MeshMsg::Reply { .. } => panic!("a reply to nobody"),
                            })
                            .collect();
                        answered += replies.len();
                        senders.send_to(from, replies).await.expect("send replies");
                    }
                    sizes
                })
                .expect("executor")
                .join()
                .expect("peer")
        });
        let done = LocalExecutorBuilder::default()
            .spawn(move || async move {
                let (senders, _receivers) = m0.join().await.expect("join");
                let me = senders.peer_id();
                let other = 1 - me;
                let mut peer_of = vec![0; 2];
                peer_of[0] = me;
                peer_of[1] = other;
                let router = Rc::new(Router::new(0, Some(senders), peer_of));
                // The replies arrive on _receivers: complete them as the
                // shard's receive loop would.
                let r2 = router.clone();
                let mut receivers = _receivers;
                let (_, rx) = receivers.streams().pop().expect("one stream");
                glommio::spawn_local(async move {
                    while let Some(batch) = rx.recv().await {
                        for m in batch {
                            if let MeshMsg::Reply { id, reply } = m {
                                r2.complete(id, reply);
                            }
                        }
                    }
                })
                .detach();
                let calls: Vec<_> = (0..CALLS)
                    .map(|_| {
                        let r = router.clone();
                        glommio::spawn_local(async move { r.forward(1, Op::Metrics).await })
                    })
                    .collect();
                let mut ok = 0;
                for c in calls {
                    if matches!(c.await, Reply::Done) {
                        ok += 1;
                    }
                }
                ok
            })
            .expect("executor")
            .join()
            .expect("caller");
        let sizes = peer.join().expect("peer thread");
        assert_eq!(done, CALLS, "every call answered");
        assert_eq!(sizes.iter().sum::<usize>(), CALLS);
        assert!(
            sizes.len() <= 2,
            "{CALLS} calls made in one turn took {} sends: {sizes:?}",
            sizes.len()
        );
    }
}
