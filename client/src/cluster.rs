//! What a client knows of a Strom cluster, without I/O: the nodes and
//! their native addresses (from the handshake's `nodes`), each partition's
//! leader and leader epoch (from DescribeTopics), and the order in which to
//! try nodes when the current one is gone. [`crate::Client`] does the I/O
//! around it (see its docs for the leader-following rules).
//!
//! Invariants:
//! - At most [`NODES_MAX`] nodes are kept, each address at most
//!   [`NODE_ADDR_BYTES_MAX`] bytes; node id 0 (a single node) is never a
//!   cluster node. A server that sends more is believed only up to the
//!   limits.
//! - A partition's leader is replaced only by news of the same or a later
//!   leader epoch (epochs only grow in a cluster), so a node with a stale
//!   view cannot send the client back to a deposed leader once it knows a
//!   newer one. Forgetting a leader keeps its epoch as that floor.
//! - A topic whose leader was forgotten (an error named it wrong) is
//!   described at its next use; one whose last description named no leader
//!   (an election) is described again at most every
//!   [`LEADER_REFRESH_MIN_MS`], so an election costs one DescribeTopics per
//!   interval, not one per request.

use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use strom_flatbuffers::protocol::{NodeAddress, PartitionDescription};

/// Nodes a client keeps track of (a server cluster has at most 9).
pub const NODES_MAX: usize = 16;
/// Bootstrap addresses accepted in one `--server` list.
pub const BOOTSTRAP_ADDRS_MAX: usize = 16;
/// Longest node address accepted from a server (`host:port`).
pub const NODE_ADDR_BYTES_MAX: usize = 256;
/// Shortest interval between two DescribeTopics of one topic made because
/// a partition's leader is unknown.
pub const LEADER_REFRESH_MIN_MS: u64 = 20;
/// First pause before a request is retried after a leader error
/// (`NotLeader`, `LeaderNotAvailable`, a lost connection); doubles per
/// retry up to [`LEADER_RETRY_BACKOFF_MAX_MS`].
pub const LEADER_RETRY_BACKOFF_MS: u64 = 20;
pub const LEADER_RETRY_BACKOFF_MAX_MS: u64 = 500;

/// Splits a comma-separated list of `host:port` addresses (one or more;
/// blanks around commas ignored, repeats dropped).
pub fn parse_bootstrap(list: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for a in list.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        if a.len() > NODE_ADDR_BYTES_MAX {
            return Err(Error::InvalidArgument(format!(
                "server address of {} bytes (at most {NODE_ADDR_BYTES_MAX})",
                a.len()
            )));
        }
        if !out.iter().any(|o| o == a) {
            out.push(a.to_owned());
        }
    }
    if out.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no server address in {list:?}"
        )));
    }
    if out.len() > BOOTSTRAP_ADDRS_MAX {
        return Err(Error::InvalidArgument(format!(
            "{} server addresses (at most {BOOTSTRAP_ADDRS_MAX})",
            out.len()
        )));
    }
    Ok(out)
}

/// The next pause of a leader-error retry loop.
pub fn next_backoff(current_ms: u64) -> u64 {
    current_ms
        .saturating_mul(2)
        .clamp(LEADER_RETRY_BACKOFF_MS, LEADER_RETRY_BACKOFF_MAX_MS)
}

/// One partition's leader as the client believes it (`node` 0: unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Leader {
    pub node: u64,
    pub epoch: u64,
}

#[derive(Debug, Clone)]
struct TopicLeaders {
    partitions: Vec<Leader>,
    described_at: Instant,
    /// A leader was forgotten since the last description.
    stale: bool,
}

/// Nodes and partition leaders; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// node id -> native address (never empty).
    nodes: BTreeMap<u64, String>,
    leaders: HashMap<String, TopicLeaders>,
}

impl ClusterView {
    /// Learns the nodes a handshake named. `answering` is the node that
    /// answered and `dialed` the address the client reached it at, which
    /// stands in for its own entry when that is empty (a wildcard listener)
    /// and is preferred to it (it is known to work from here).
    pub fn learn_nodes(&mut self, answering: u64, dialed: &str, nodes: &[NodeAddress]) {
        for n in nodes {
            if n.id == 0 || n.native_addr.is_empty() || n.native_addr.len() > NODE_ADDR_BYTES_MAX {
                continue;
            }
            if n.id == answering {
                continue;
            }
            self.set_node(n.id, &n.native_addr);
        }
        if answering != 0 && !dialed.is_empty() && dialed.len() <= NODE_ADDR_BYTES_MAX {
            self.set_node(answering, dialed);
        }
    }

    fn set_node(&mut self, id: u64, addr: &str) {
        if self.nodes.len() >= NODES_MAX && !self.nodes.contains_key(&id) {
            return;
        }
        self.nodes.insert(id, addr.to_owned());
    }

    /// Node `id`'s native address, if known.
    pub fn node_addr(&self, id: u64) -> Option<&str> {
        self.nodes.get(&id).map(String::as_str)
    }

    /// Every known node id, ascending.
    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Learns `topic`'s leaders from a description (see the module
    /// invariants: an older epoch never replaces a newer one).
    pub fn learn_leaders(&mut self, topic: &str, parts: &[PartitionDescription], now: Instant) {
        let count = parts.len();
        let entry = self
            .leaders
            .entry(topic.to_owned())
            .or_insert_with(|| TopicLeaders {
                partitions: Vec::new(),
                described_at: now,
                stale: false,
            });
        entry.described_at = now;
        entry.stale = false;
        entry.partitions.resize(count, Leader::default());
        for p in parts {
            let Some(slot) = entry.partitions.get_mut(p.partition as usize) else {
                continue;
            };
            if p.leader_epoch < slot.epoch {
                continue; // a stale view
            }
            if p.leader_epoch == slot.epoch && p.leader_node == 0 && slot.node != 0 {
                continue; // the answering node does not know what we know
            }
            *slot = Leader {
                node: p.leader_node,
                epoch: p.leader_epoch,
            };
        }
    }

    /// The leader of `topic`/`partition`, if known.
    pub fn leader(&self, topic: &str, partition: u32) -> Option<u64> {
        self.leaders
            .get(topic)
            .and_then(|t| t.partitions.get(partition as usize))
            .map(|l| l.node)
            .filter(|&n| n != 0)
    }

    /// Whether the leader of `topic`/`partition` is unknown and the topic
    /// may be described again now.
    pub fn should_describe(&self, topic: &str, partition: u32, now: Instant) -> bool {
        if self.leader(topic, partition).is_some() {
            return false;
        }
        match self.leaders.get(topic) {
            None => true,
            Some(t) => {
                t.stale
                    || now.saturating_duration_since(t.described_at)
                        >= Duration::from_millis(LEADER_REFRESH_MIN_MS)
            }
        }
    }

    /// Forgets the leader of `topic`/`partition` (its epoch stays).
    pub fn forget_leader(&mut self, topic: &str, partition: u32) {
        if let Some(t) = self.leaders.get_mut(topic) {
            if let Some(l) = t.partitions.get_mut(partition as usize) {
                if l.node != 0 {
                    l.node = 0;
                    t.stale = true;
                }
            }
        }
    }

    /// Forgets every leadership of `node` (it could not be reached).
    pub fn forget_node(&mut self, node: u64) {
        for t in self.leaders.values_mut() {
            for l in &mut t.partitions {
                if l.node == node {
                    l.node = 0;
                    t.stale = true;
                }
            }
        }
    }

    /// Forgets everything known of `topic` (deleted, or unknown).
    pub fn forget_topic(&mut self, topic: &str) {
        self.leaders.remove(topic);
    }

    /// Where to go when node `current` (0: none) cannot serve: the known
    /// nodes in id order starting after `current` and wrapping around
    /// (`current` itself last), then the bootstrap addresses no known node
    /// has. Each entry is (node id or 0, address).
    pub fn candidates(&self, current: u64, bootstrap: &[String]) -> Vec<(u64, String)> {
        let mut out: Vec<(u64, String)> = self
            .nodes
            .range(current.saturating_add(1)..)
            .chain(self.nodes.range(..=current))
            .map(|(&id, a)| (id, a.clone()))
            .collect();
        for b in bootstrap {
            if !self.nodes.values().any(|a| a == b) {
                out.push((0, b.clone()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, addr: &str) -> NodeAddress {
        NodeAddress {
            id,
            native_addr: addr.into(),
        }
    }

    fn part(partition: u32, leader_node: u64, leader_epoch: u64) -> PartitionDescription {
        PartitionDescription {
            partition,
            leader_node,
            leader_epoch,
            ..Default::default()
        }
    }

    #[test]
    fn bootstrap_lists_are_split_trimmed_deduplicated_and_bounded() {
        assert_eq!(
            parse_bootstrap(" a:1, b:2,,a:1 ").expect("valid"),
            vec!["a:1".to_owned(), "b:2".to_owned()]
        );
        assert_eq!(parse_bootstrap("a:1").expect("valid"), vec!["a:1"]);
        assert!(parse_bootstrap(" , ").is_err());
        let many: Vec<String> = (0..=BOOTSTRAP_ADDRS_MAX)
            .map(|i| format!("h:{i}"))
            .collect();
        assert!(parse_bootstrap(&many.join(",")).is_err());
        assert!(parse_bootstrap(&"x".repeat(NODE_ADDR_BYTES_MAX + 1)).is_err());
    }

    #[test]
    fn nodes_are_learned_with_the_dialed_address_for_the_answering_one() {
        let mut v = ClusterView::default();
        v.learn_nodes(
            1,
            "10.0.0.1:9400",
            &[
                node(1, ""),
                node(2, "h2:9400"),
                node(3, ""),
                node(0, "zero:1"),
            ],
        );
        assert_eq!(v.node_addr(1), Some("10.0.0.1:9400"));
        assert_eq!(v.node_addr(2), Some("h2:9400"));
        assert_eq!(v.node_addr(3), None, "unknown address");
        assert_eq!(v.node_addr(0), None, "node 0 is never a cluster node");
        let many: Vec<NodeAddress> = (1..=NODES_MAX as u64 + 5)
            .map(|i| node(i, &format!("h{i}:1")))
            .collect();
        v.learn_nodes(0, "", &many);
        assert_eq!(v.node_ids().len(), NODES_MAX, "bounded");
    }

    #[test]
    fn an_older_epoch_never_replaces_a_newer_leader() {
        let now = Instant::now();
        let mut v = ClusterView::default();
        v.learn_leaders("t", &[part(0, 1, 3), part(1, 2, 3)], now);
        assert_eq!(v.leader("t", 0), Some(1));
        v.learn_leaders("t", &[part(0, 2, 2), part(1, 0, 3)], now);
        assert_eq!(v.leader("t", 0), Some(1), "stale epoch ignored");
        assert_eq!(
            v.leader("t", 1),
            Some(2),
            "same epoch, no leader known there"
        );
        v.learn_leaders("t", &[part(0, 0, 4)], now);
        assert_eq!(v.leader("t", 0), None, "an election in a later epoch");
        v.learn_leaders("t", &[part(0, 3, 4)], now);
        assert_eq!(v.leader("t", 0), Some(3));
        v.forget_leader("t", 0);
        assert_eq!(v.leader("t", 0), None);
        v.learn_leaders("t", &[part(0, 2, 3)], now);
        assert_eq!(v.leader("t", 0), None, "the forgotten epoch stays a floor");
        v.forget_node(2);
        assert_eq!(v.leader("t", 1), None);
        assert_eq!(v.leader("t", 7), None, "no such partition");
    }

    #[test]
    fn describes_for_a_missing_leader_are_spaced() {
        let t0 = Instant::now();
        let mut v = ClusterView::default();
        assert!(v.should_describe("t", 0, t0), "never described");
        v.learn_leaders("t", &[part(0, 0, 1)], t0);
        assert!(!v.should_describe("t", 0, t0));
        assert!(v.should_describe("t", 0, t0 + Duration::from_millis(LEADER_REFRESH_MIN_MS)));
        v.learn_leaders("t", &[part(0, 2, 1)], t0);
        assert!(
            !v.should_describe("t", 0, t0 + Duration::from_secs(9)),
            "known"
        );
        v.forget_leader("t", 0);
        assert!(v.should_describe("t", 0, t0), "forgotten: at once");
        v.learn_leaders("t", &[part(0, 0, 2)], t0);
        assert!(!v.should_describe("t", 0, t0), "described: spaced again");
    }

    #[test]
    fn candidates_start_after_the_current_node_and_end_with_unknown_bootstraps() {
        let mut v = ClusterView::default();
        v.learn_nodes(0, "", &[node(1, "a:1"), node(2, "b:2"), node(3, "c:3")]);
        let ids = |c: Vec<(u64, String)>| c.into_iter().map(|(i, _)| i).collect::<Vec<_>>();
        assert_eq!(ids(v.candidates(2, &[])), vec![3, 1, 2]);
        assert_eq!(ids(v.candidates(0, &[])), vec![1, 2, 3]);
        assert_eq!(
            v.candidates(3, &["b:2".into(), "d:4".into()]),
            vec![
                (1, "a:1".into()),
                (2, "b:2".into()),
                (3, "c:3".into()),
                (0, "d:4".into())
            ]
        );
    }

    #[test]
    fn backoff_doubles_within_bounds() {
        assert_eq!(next_backoff(0), LEADER_RETRY_BACKOFF_MS);
        assert_eq!(
            next_backoff(LEADER_RETRY_BACKOFF_MS),
            2 * LEADER_RETRY_BACKOFF_MS
        );
        assert_eq!(next_backoff(u64::MAX), LEADER_RETRY_BACKOFF_MAX_MS);
    }
}
