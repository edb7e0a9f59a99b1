//! Cluster mode: the node's identity and peers, and the replication
//! runtime each shard runs (a `strom_replication::shell::Node`).
//!
//! # Shape
//! - Every node of a cluster runs the same `--cores`. Shard `s` of every
//!   node owns the same partitions (the placement is a pure function of
//!   topic id, partition and shard count) and runs their Raft groups; it
//!   listens for Raft traffic on `raft_listen.port + s` and talks to shard
//!   `s` of every peer. So messages and heartbeats are batched per (shard,
//!   peer) connection and no Raft traffic crosses the mesh.
//! - Every partition is one Raft group whose voters are all the nodes
//!   (replication factor = node count, at most `VOTERS_MAX`); its group id
//!   is [`partition_group`]. The partition log is the Raft log
//!   (`strom_replication::engine_store`), in the partition's directory.
//! - Topic metadata is group [`META_GROUP`] on shard 0 (Kafka's KRaft
//!   controller, Redpanda's raft0). Its entries are [`MetaEntry`]s: the
//!   whole cluster-wide topic table, and the metadata version it was
//!   computed from. Every node applies them in log order; an entry whose
//!   base is not the version in force is a lost race and changes nothing
//!   (the same decision on every node: it depends only on the log).
//!
//! # Invariants
//! - A node id is never 0 and is distinct from every peer's.
//! - The metadata version (`Metadata::cluster_meta_index`) only grows; an
//!   entry at or below it is never applied again (so a restart that
//!   replays the metadata log cannot resurrect a deleted topic or delete a
//!   live one).
//! - A proposal is answered only after its entry is committed (acks=all)
//!   or the leader's own copy is durable (acks=leader).

use crate::error::ServerError;
use crate::metadata::TopicMeta;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use strom_flatbuffers::{BatchBuilder, RecordIn};

/// The metadata group's id (on shard 0 of every node).
pub const META_GROUP: u64 = 1;
/// Largest partition number a group id can carry.
pub const GROUP_PARTITION_BITS: u32 = 32;
/// Bytes of one metadata entry's JSON, at most (it must fit one frame).
pub const META_ENTRY_BYTES_MAX: usize = 512 << 10;
/// Version of [`MetaEntry`]'s JSON.
pub const META_ENTRY_VERSION: u32 = 1;
/// Default Raft timing of a server node: 10 ms ticks, a leader heartbeat
/// every 3 ticks, an election after 30 to 60 quiet ticks (300-600 ms). The
/// replication crate's 100 ms default is for its simulation and tests; on
/// a shared machine whose fdatasync can take 100 ms it elects needlessly.
pub const DEFAULT_TICK_MS: u64 = 10;
pub const DEFAULT_HEARTBEAT_TICKS: usize = 3;
pub const DEFAULT_ELECTION_TICKS: usize = 30;
/// Record key of a metadata entry's one record.
pub const META_ENTRY_KEY: &[u8] = b"strom-meta";

/// The Raft group of partition `p` of topic `topic_id`: never
/// [`META_GROUP`], distinct for distinct (topic, partition).
pub fn partition_group(topic_id: u64, p: u32) -> u64 {
    assert!(
        topic_id < (1 << 31),
        "topic id {topic_id} beyond the group id space"
    );
    ((topic_id + 1) << GROUP_PARTITION_BITS) | u64::from(p)
}

/// One peer node: its id and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub id: u64,
    /// Shard 0's Raft address (shard `s` listens on port + `s`).
    pub raft: SocketAddr,
    /// Where Kafka clients reach it (for Metadata answers).
    pub kafka: Option<SocketAddr>,
    /// Where native clients reach it.
    pub native: Option<SocketAddr>,
}

impl PeerSpec {
    /// Parses `ID,raft=HOST:PORT[,kafka=HOST:PORT][,native=HOST:PORT]`.
    pub fn parse(s: &str) -> Result<PeerSpec, ServerError> {
        let bad = |why: &str| ServerError::Argument(format!("--peer {s:?}: {why}"));
        let mut parts = s.split(',');
        let id: u64 =
            parts.next().unwrap_or("").trim().parse().map_err(|_| {
                bad("expected ID,raft=HOST:PORT[,kafka=HOST:PORT][,native=HOST:PORT]")
            })?;
        let mut raft = None;
        let mut kafka = None;
        let mut native = None;
        for part in parts {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad("expected key=HOST:PORT"))?;
            let addr = resolve(v.trim()).ok_or_else(|| bad(&format!("cannot resolve {v:?}")))?;
            match k.trim() {
                "raft" => raft = Some(addr),
                "kafka" => kafka = Some(addr),
                "native" => native = Some(addr),
                other => return Err(bad(&format!("unknown key {other:?}"))),
            }
        }
        Ok(PeerSpec {
            id,
            raft: raft.ok_or_else(|| bad("raft=HOST:PORT is required"))?,
            kafka,
            native,
        })
    }
}

fn resolve(s: &str) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs().ok()?.next()
}

/// This node's place in a cluster (`--node-id`, `--raft-listen`, `--peer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub node_id: u64,
    /// Shard 0's Raft listener (shard `s` listens on port + `s`).
    pub raft_listen: SocketAddr,
    pub peers: Vec<PeerSpec>,
    /// Raft tick length.
    pub tick_ms: u64,
    /// Ticks without a leader's heartbeat before a follower campaigns.
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
}

impl ClusterConfig {
    pub fn validate(&self) -> Result<(), ServerError> {
        let bad = |why: String| Err(ServerError::Argument(why));
        if self.node_id == 0 {
            return bad("--node-id 0 is reserved".into());
        }
        let mut ids: Vec<u64> = self.peers.iter().map(|p| p.id).collect();
        ids.push(self.node_id);
        ids.sort_unstable();
        if ids.contains(&0) || ids.windows(2).any(|w| w[0] == w[1]) {
            return bad(format!("node ids must be distinct and non-zero: {ids:?}"));
        }
        if ids.len() > strom_replication::limits::VOTERS_MAX {
            return bad(format!(
                "{} nodes: at most {} (every node replicates every partition)",
                ids.len(),
                strom_replication::limits::VOTERS_MAX
            ));
        }
        if self.tick_ms == 0
            || self.heartbeat_ticks == 0
            || self.heartbeat_ticks >= self.election_ticks
        {
            return bad(
                "raft timing: need tick_ms > 0 and 0 < heartbeat_ticks < election_ticks".into(),
            );
        }
        Ok(())
    }

    /// Every node id, sorted.
    pub fn nodes(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.peers.iter().map(|p| p.id).collect();
        ids.push(self.node_id);
        ids.sort_unstable();
        ids
    }

    /// Where shard `shard` listens for Raft traffic, and where it reaches
    /// each peer's shard `shard`.
    pub fn shard_addrs(
        &self,
        shard: usize,
    ) -> Result<(SocketAddr, Vec<(u64, SocketAddr)>), ServerError> {
        let at = |a: SocketAddr| -> Result<SocketAddr, ServerError> {
            let port = usize::from(a.port()) + shard;
            let port = u16::try_from(port).map_err(|_| {
                ServerError::Argument(format!(
                    "raft port {} has no room for shard {shard}",
                    a.port()
                ))
            })?;
            Ok(SocketAddr::new(a.ip(), port))
        };
        let listen = if self.raft_listen.port() == 0 {
            self.raft_listen
        } else {
            at(self.raft_listen)?
        };
        let peers = self
            .peers
            .iter()
            .map(|p| Ok((p.id, at(p.raft)?)))
            .collect::<Result<Vec<_>, ServerError>>()?;
        Ok((listen, peers))
    }

    pub fn peer(&self, id: u64) -> Option<&PeerSpec> {
        self.peers.iter().find(|p| p.id == id)
    }
}

/// One entry of the metadata group: the cluster-wide topic table after a
/// change, and the metadata version (the index of the last applied entry)
/// it was computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaEntry {
    pub version: u32,
    pub base_index: u64,
    pub next_topic_id: u64,
    pub topics: BTreeMap<String, TopicMeta>,
}

/// The entry as the one-record frame the Raft log stores.
pub fn meta_entry_frame(entry: &MetaEntry) -> Result<Bytes, String> {
    let json = serde_json::to_vec(entry).map_err(|e| format!("encode metadata entry: {e}"))?;
    if json.len() > META_ENTRY_BYTES_MAX {
        return Err(format!(
            "metadata entry of {} bytes exceeds {META_ENTRY_BYTES_MAX}",
            json.len()
        ));
    }
    let mut b = BatchBuilder::new();
    b.push(&RecordIn {
        timestamp_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        key: Some(META_ENTRY_KEY),
        value: Some(&json),
        headers: &[],
    });
    Ok(Bytes::from(b.finish()))
}

/// The entry a committed metadata frame holds; an error for anything else
/// (the metadata group holds only these, so an error is a bug or damage,
/// and the node refuses to apply it).
pub fn decode_meta_entry(frame: &[u8]) -> Result<MetaEntry, String> {
    let mut records =
        strom_flatbuffers::records(frame).map_err(|e| format!("metadata frame: {e}"))?;
    let r = records.next().ok_or("metadata frame without a record")?;
    if r.key != Some(META_ENTRY_KEY) {
        return Err("metadata frame with a foreign key".into());
    }
    let value = r.value.ok_or("metadata frame without a value")?;
    if value.len() > META_ENTRY_BYTES_MAX {
        return Err(format!("metadata entry of {} bytes", value.len()));
    }
    let e: MetaEntry = serde_json::from_slice(value).map_err(|e| format!("metadata entry: {e}"))?;
    if e.version != META_ENTRY_VERSION {
        return Err(format!("metadata entry version {}", e.version));
    }
    Ok(e)
}

/// One shard's replication runtime (see the module documentation).
pub struct Replication {
    pub node: strom_replication::shell::Node,
    pub config: std::sync::Arc<ClusterConfig>,
    /// Shard 0: the index of the last metadata entry this node has applied
    /// (or skipped as a lost race), and its change event.
    pub meta_applied: std::cell::Cell<u64>,
    pub meta_event: event_listener::Event,
}

/// The engine log of every Raft group: small segments and preallocation
/// (the store serves reads from its own memory and compacts at 256 MiB, so
/// a big tail cache or 1 GiB segments only cost disk and memory per idle
/// partition: with the single-node defaults, 1,000 new groups
/// preallocated 7 GB per node), the frame limit of `defaults`.
pub fn replica_log_config(defaults: strom_engine::LogConfig) -> strom_engine::LogConfig {
    strom_engine::LogConfig {
        frame_bytes_max: defaults.frame_bytes_max,
        unwritten_bytes_max: defaults.frame_bytes_max.max(4 << 20),
        disk_reserve_bytes: defaults.disk_reserve_bytes,
        segment_bytes: 32 << 20,
        ..strom_replication::shell::small_log_config()
    }
}

/// Committed metadata entries (index, stored frame), in log order, for
/// shard 0's apply task.
pub type MetaEntries = glommio::channels::local_channel::LocalReceiver<(u64, Bytes)>;

/// Starts shard `shard`'s replication node: binds its Raft port, and on
/// shard 0 opens the metadata group (`data_dir/cluster/meta`). Partition
/// groups are added as the metadata names them.
pub async fn start(
    config: std::sync::Arc<ClusterConfig>,
    shard: usize,
    data_dir: &std::path::Path,
    log: strom_engine::LogConfig,
    producers: std::rc::Rc<crate::producers::Producers>,
) -> Result<(Replication, Option<MetaEntries>), ServerError> {
    use strom_replication::shell::{ApplyEvent, Node, NodeConfig};
    let (listen, peers) = config.shard_addrs(shard)?;
    let mut nc = NodeConfig::new(
        config.node_id,
        listen,
        peers,
        data_dir.join("cluster"),
        Vec::new(),
    );
    nc.tick_ms = config.tick_ms;
    nc.election_ticks = config.election_ticks;
    nc.heartbeat_ticks = config.heartbeat_ticks;
    nc.log = log;
    // Producer state is rebuilt from the log at every open; the metadata
    // apply skips what `cluster_meta_index` says is applied.
    nc.replay_on_open = true;
    let (tx, rx) = glommio::channels::local_channel::new_unbounded();
    let on_apply = move |e: ApplyEvent| {
        if let ApplyEvent::Entry {
            group, index, data, ..
        } = e
        {
            if data.is_empty() || strom_replication::engine_store::is_control_frame(&data) {
                return;
            }
            if group == META_GROUP {
                let _ = tx.try_send((index, data));
            } else {
                record_producer(&producers, group, &data);
            }
        }
    };
    let node = Node::start(nc, on_apply)
        .await
        .map_err(|e| ServerError::Executor(format!("shard {shard}: replication: {e}")))?;
    if shard == 0 {
        node.add_group(META_GROUP, &data_dir.join("cluster").join("meta"))
            .await
            .map_err(|e| ServerError::Executor(format!("metadata group: {e}")))?;
    }
    let r = Replication {
        node,
        config,
        meta_applied: std::cell::Cell::new(0),
        meta_event: event_listener::Event::new(),
    };
    Ok((r, (shard == 0).then_some(rx)))
}

/// The partition a group id stands for (inverse of [`partition_group`]).
pub fn group_partition(group: u64) -> Option<crate::producers::PartitionKey> {
    let topic = group >> GROUP_PARTITION_BITS;
    (topic >= 1).then(|| crate::producers::PartitionKey {
        topic_id: topic - 1,
        partition: group as u32,
    })
}

/// Idempotent-producer state follows the replicated log: every committed
/// frame of an idempotent producer is recorded when applied, on every
/// replica, so a new leader knows every batch its predecessor committed
/// (a retry of one is answered as a duplicate, not appended again).
/// Applied synchronously, before the proposal's answer.
fn record_producer(producers: &crate::producers::Producers, group: u64, frame: &[u8]) {
    let Some(key) = group_partition(group) else {
        return;
    };
    let Some(h) = strom_flatbuffers::FrameHeader::ref_from(frame) else {
        return;
    };
    let Some((b, base, last)) = crate::producers::ProducerBatch::of_frame(h) else {
        return;
    };
    // A replayed entry (a restart applies the log again) is a duplicate.
    if let crate::producers::Check::Append = producers.check(key, &b) {
        producers.record(key, &b, base, last, h.max_timestamp_ms.get());
    }
}

/// The wire error for a proposal or read this node cannot serve as a
/// follower: `NotLeader` naming the leader, or `LeaderNotAvailable`.
pub fn not_leader(what: &str, leader: Option<u64>) -> crate::error::WireError {
    use strom_flatbuffers::protocol::ErrorCode;
    match leader {
        Some(l) => crate::error::WireError::new(
            ErrorCode::NotLeader,
            format!("{what}: this node is not the leader; node {l} is"),
        ),
        None => crate::error::WireError::new(
            ErrorCode::LeaderNotAvailable,
            format!("{what}: no leader at this moment (an election is running); retry"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_log_config_is_valid_and_small() {
        let c = replica_log_config(strom_engine::LogConfig::default());
        c.validate().expect("valid");
        assert!(c.preallocate_bytes <= 1 << 20);
        assert_eq!(
            c.frame_bytes_max,
            strom_engine::LogConfig::default().frame_bytes_max
        );
    }

    #[test]
    fn group_ids_are_distinct_and_never_the_metadata_group() {
        let mut seen = std::collections::BTreeSet::new();
        for t in 0..50u64 {
            for p in [0u32, 1, 2, 1000, u32::MAX] {
                let g = partition_group(t, p);
                assert_ne!(g, META_GROUP);
                assert!(seen.insert(g), "group {g} twice");
            }
        }
    }

    #[test]
    fn peers_parse_and_bad_ones_are_refused() {
        let p = PeerSpec::parse("2,raft=127.0.0.1:9500,kafka=127.0.0.1:9093,native=127.0.0.1:9402")
            .expect("valid");
        assert_eq!(p.id, 2);
        assert_eq!(p.raft.port(), 9500);
        assert_eq!(p.kafka.map(|a| a.port()), Some(9093));
        for bad in [
            "",
            "x,raft=127.0.0.1:1",
            "2",
            "2,kafka=127.0.0.1:1",
            "2,raft=nowhere",
            "2,bogus=127.0.0.1:1",
        ] {
            assert!(PeerSpec::parse(bad).is_err(), "{bad:?} accepted");
        }
        let mut c = ClusterConfig {
            node_id: 1,
            raft_listen: "127.0.0.1:9500".parse().unwrap(),
            peers: vec![p.clone()],
            tick_ms: 10,
            election_ticks: 10,
            heartbeat_ticks: 2,
        };
        assert!(c.validate().is_ok());
        c.peers.push(PeerSpec { id: 1, ..p });
        assert!(c.validate().is_err(), "a duplicate id is refused");
    }

    #[test]
    fn a_metadata_entry_round_trips_and_foreign_frames_are_refused() {
        let mut topics = BTreeMap::new();
        topics.insert(
            "t".to_owned(),
            TopicMeta {
                name: "t".into(),
                id: 3,
                partitions: 2,
                configs: BTreeMap::new(),
            },
        );
        let e = MetaEntry {
            version: META_ENTRY_VERSION,
            base_index: 7,
            next_topic_id: 4,
            topics,
        };
        let frame = meta_entry_frame(&e).expect("encodes");
        assert_eq!(decode_meta_entry(&frame).expect("decodes"), e);
        let mut b = BatchBuilder::new();
        b.push(&RecordIn {
            timestamp_ms: 1,
            key: None,
            value: Some(b"{}"),
            headers: &[],
        });
        assert!(decode_meta_entry(&b.finish()).is_err());
        assert!(decode_meta_entry(&[1, 2, 3]).is_err());
    }
}
