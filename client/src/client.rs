//! [`Client`]: a [`Connection`] plus a metadata cache (topic → partition
//! count) and the admin and offset calls. Producers and consumers are built
//! on top of one.
//!
//! Invariants:
//! - The metadata cache only holds what the server reported; an entry is
//!   dropped when a request about that topic fails with `UnknownTopic` or
//!   `UnknownPartition`, and refreshed on the next lookup.
//! - Per-topic and per-partition errors inside a successful response become
//!   [`Error::Server`] with the topic/partition as context; callers that
//!   want the partial results use the `*_results` variants.

use crate::connection::{Connection, ConnectionConfig, Response};
use crate::error::{check, Error, Result};
use std::collections::HashMap;
use strom_flatbuffers::protocol::{
    ApiVersionsResponse, CreatePartitionsRequest, CreateTopic, CreateTopicsRequest,
    DeleteTopicsRequest, DescribeGroupsRequest, DescribeTopicsRequest, ErrorCode, GroupDescription,
    GroupListing, HeartbeatRequest, InitProducerIdRequest, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, ListOffsetsPartition, ListOffsetsRequest, OffsetCommitPartition,
    OffsetCommitRequest, OffsetCommitResult, OffsetFetchRequest, OffsetFetchResult,
    PartitionsIncrease, RequestBody, ResetOffsetsRequest, ResetTo, ResponseBody, SyncGroupRequest,
    SyncGroupResponse, TopicDescription, TopicListing, TopicPartition, TopicResult,
    LIST_OFFSETS_EARLIEST, LIST_OFFSETS_LATEST,
};

/// Where a consumer starts, or what [`Client::list_offset`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The high watermark (the offset the next record will get).
    Latest,
    /// The first offset whose record has a timestamp at or after this (ms).
    Timestamp(i64),
    /// Exactly this offset.
    At(u64),
}

/// Which connection carries a partition's requests: the one the client was
/// given, or a direct connection to the shard that owns the partition
/// (see [`Client::route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Bootstrap,
    Shard(u16),
}

/// A direct connection to one shard, opened on first use.
#[derive(Debug)]
enum Direct {
    Unopened,
    Open(Box<Connection>),
    /// Connecting failed: that shard's partitions go through the bootstrap
    /// connection (the server forwards them) until the metadata is reset.
    Unreachable,
}

/// A connection with a metadata cache; see the module docs.
#[derive(Debug)]
pub struct Client {
    conn: Connection,
    partitions: HashMap<String, u32>,
    /// topic -> owning shard of each partition (from DescribeTopics).
    owners: HashMap<String, Vec<u16>>,
    /// Index = shard id; sized from the handshake's shard ports.
    direct: Vec<Direct>,
    /// The bootstrap connection's generation `direct` and `owners` belong to.
    direct_generation: u64,
    direct_enabled: bool,
}

fn unexpected(request: &'static str, body: &ResponseBody) -> Error {
    Error::UnexpectedResponse {
        request,
        got: format!("{body:?}"),
    }
}

fn topic_results_ok(results: Vec<TopicResult>) -> Result<()> {
    for r in results {
        check(r.error, &r.message, || format!("topic {}", r.name))?;
    }
    Ok(())
}

impl Client {
    /// Connects to `addr` (`host:port`) with default settings.
    pub fn connect(addr: &str) -> Result<Client> {
        Client::connect_with(addr, ConnectionConfig::default())
    }

    pub fn connect_with(addr: &str, config: ConnectionConfig) -> Result<Client> {
        Ok(Client::new(Connection::connect(addr, config)?))
    }

    pub fn new(conn: Connection) -> Client {
        let direct_generation = conn.generation();
        Client {
            conn,
            partitions: HashMap::new(),
            owners: HashMap::new(),
            direct: Vec::new(),
            direct_generation,
            direct_enabled: true,
        }
    }

    /// Whether partitions' requests go straight to their owning shard when
    /// the server offers direct ports (the default), or all through the
    /// bootstrap connection.
    pub fn set_direct(&mut self, enabled: bool) {
        self.direct_enabled = enabled;
    }

    /// Where the requests of `topic`/`partition` go: the owning shard's
    /// direct connection when the server advertises shard ports and that
    /// shard is reachable, else the bootstrap connection (whose shard
    /// forwards them). Learns the owners with one DescribeTopics per topic.
    pub fn route(&mut self, topic: &str, partition: u32) -> Route {
        if !self.direct_enabled {
            return Route::Bootstrap;
        }
        if self.direct_generation != self.conn.generation() {
            // Reconnected: the server may have restarted with other shards.
            self.owners.clear();
            self.direct.clear();
            self.direct_generation = self.conn.generation();
        }
        let ports = &self.conn.server_info().shard_ports;
        if ports.is_empty() {
            return Route::Bootstrap;
        }
        if self.direct.len() != ports.len() {
            self.direct = (0..ports.len()).map(|_| Direct::Unopened).collect();
        }
        if !self.owners.contains_key(topic) && self.describe_topic(topic).is_err() {
            return Route::Bootstrap;
        }
        let owner = match self
            .owners
            .get(topic)
            .and_then(|o| o.get(partition as usize))
        {
            Some(&s) => s,
            None => return Route::Bootstrap,
        };
        let Some(&port) = self.conn.server_info().shard_ports.get(usize::from(owner)) else {
            return Route::Bootstrap;
        };
        if owner == self.conn.server_info().shard_id {
            return Route::Bootstrap;
        }
        let slot = &mut self.direct[usize::from(owner)];
        if let Direct::Unopened = slot {
            let host = self.conn.addr().ip();
            let addr = std::net::SocketAddr::new(host, port).to_string();
            *slot = match Connection::connect(&addr, self.conn.config().clone()) {
                Ok(c) if c.server_info().shard_id == owner => Direct::Open(Box::new(c)),
                _ => Direct::Unreachable,
            };
        }
        match slot {
            Direct::Open(_) => Route::Shard(owner),
            _ => Route::Bootstrap,
        }
    }

    /// The route of `parts` when they all have the same one (they live on
    /// one shard), else the bootstrap connection, whose shard fans the
    /// request out. Bootstrap for no parts.
    pub fn common_route<'a>(&mut self, parts: impl IntoIterator<Item = (&'a str, u32)>) -> Route {
        let mut common = None;
        for (topic, partition) in parts {
            let r = self.route(topic, partition);
            match common {
                None => common = Some(r),
                Some(c) if c != r => return Route::Bootstrap,
                Some(_) => {}
            }
        }
        common.unwrap_or(Route::Bootstrap)
    }

    /// The connection of `route` (the bootstrap one when that shard's
    /// direct connection is not open).
    pub fn connection_on(&mut self, route: Route) -> &mut Connection {
        if let Route::Shard(s) = route {
            if let Some(Direct::Open(c)) = self.direct.get_mut(usize::from(s)) {
                return c;
            }
        }
        &mut self.conn
    }

    /// Forgets the direct connections and partition owners after a
    /// connection error on `route`: the server may have restarted with
    /// other shard ports, so the next [`Client::route`] learns them again
    /// (through the bootstrap connection, which re-makes itself).
    pub fn route_failed(&mut self, route: Route) {
        if let Route::Shard(_) = route {
            self.owners.clear();
            self.direct.clear();
        }
    }

    /// The server's handshake answer: versions and limits.
    pub fn server_info(&self) -> &ApiVersionsResponse {
        self.conn.server_info()
    }

    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Sends a request and waits for its answer (see [`Connection::call`]).
    pub fn call(&mut self, body: &RequestBody) -> Result<Response> {
        self.conn.call(body, &[], 0)
    }

    /// Forgets cached metadata for `topic` (after an `UnknownTopic`).
    pub fn invalidate(&mut self, topic: &str) {
        self.partitions.remove(topic);
        self.owners.remove(topic);
    }

    pub(crate) fn note_error(&mut self, topic: &str, code: ErrorCode) {
        if code == ErrorCode::UnknownTopic || code == ErrorCode::UnknownPartition {
            self.invalidate(topic);
        }
    }

    /// The partition count of `topic`, from the cache or the server.
    pub fn partition_count(&mut self, topic: &str) -> Result<u32> {
        if let Some(&n) = self.partitions.get(topic) {
            return Ok(n);
        }
        let d = self.describe_topic(topic)?;
        Ok(d.partitions.len() as u32)
    }

    /// A producer id for idempotent producing: a new one (`current`
    /// `None`), or an epoch bump of the caller's current id and epoch (the
    /// same id, epoch + 1, or a new id when the epoch is exhausted).
    /// Returns the id and epoch to stamp batches with.
    pub fn init_producer_id(&mut self, current: Option<(i64, i16)>) -> Result<(i64, i16)> {
        let (producer_id, producer_epoch) = current.unwrap_or((-1, -1));
        let body = RequestBody::InitProducerId(InitProducerIdRequest {
            producer_id,
            producer_epoch,
            ..Default::default()
        });
        match self.call(&body)?.body {
            ResponseBody::InitProducerId(r) => {
                check(r.error, &r.message, || "init_producer_id".to_owned())?;
                if r.producer_id < 0 || r.producer_epoch < 0 {
                    return Err(Error::UnexpectedResponse {
                        request: "init_producer_id",
                        got: format!("producer {} epoch {}", r.producer_id, r.producer_epoch),
                    });
                }
                Ok((r.producer_id, r.producer_epoch))
            }
            other => Err(unexpected("init_producer_id", &other)),
        }
    }

    // ------------------------------------------------------------ topics

    /// Creates one topic. Fails with `TopicAlreadyExists` if it exists.
    pub fn create_topic(
        &mut self,
        name: &str,
        partitions: u32,
        configs: &[(String, String)],
    ) -> Result<()> {
        let body = RequestBody::CreateTopics(CreateTopicsRequest {
            topics: vec![CreateTopic {
                name: name.to_owned(),
                partitions,
                configs: configs.to_vec(),
            }],
        });
        match self.call(&body)?.body {
            ResponseBody::CreateTopics(r) => topic_results_ok(r.results)?,
            other => return Err(unexpected("create_topics", &other)),
        }
        self.partitions.insert(name.to_owned(), partitions);
        Ok(())
    }

    pub fn delete_topic(&mut self, name: &str) -> Result<()> {
        self.invalidate(name);
        let body = RequestBody::DeleteTopics(DeleteTopicsRequest {
            names: vec![name.to_owned()],
        });
        match self.call(&body)?.body {
            ResponseBody::DeleteTopics(r) => topic_results_ok(r.results),
            other => Err(unexpected("delete_topics", &other)),
        }
    }

    /// Every topic with its partition count (refreshes the cache).
    pub fn list_topics(&mut self) -> Result<Vec<TopicListing>> {
        match self.call(&RequestBody::ListTopics)?.body {
            ResponseBody::ListTopics(r) => {
                self.partitions = r
                    .topics
                    .iter()
                    .map(|t| (t.name.clone(), t.partitions))
                    .collect();
                Ok(r.topics)
            }
            other => Err(unexpected("list_topics", &other)),
        }
    }

    /// Describes the named topics (all topics when `names` is empty). Each
    /// description carries its own error code.
    pub fn describe_topics(&mut self, names: &[String]) -> Result<Vec<TopicDescription>> {
        let body = RequestBody::DescribeTopics(DescribeTopicsRequest {
            names: names.to_vec(),
        });
        match self.call(&body)?.body {
            ResponseBody::DescribeTopics(r) => {
                for t in &r.topics {
                    if t.error == ErrorCode::None {
                        self.partitions
                            .insert(t.name.clone(), t.partitions.len() as u32);
                        let mut owners = vec![0u16; t.partitions.len()];
                        for p in &t.partitions {
                            if let Some(o) = owners.get_mut(p.partition as usize) {
                                *o = p.owner_shard;
                            }
                        }
                        self.owners.insert(t.name.clone(), owners);
                    } else {
                        self.partitions.remove(&t.name);
                        self.owners.remove(&t.name);
                    }
                }
                Ok(r.topics)
            }
            other => Err(unexpected("describe_topics", &other)),
        }
    }

    /// Describes one topic; its error code becomes an error.
    pub fn describe_topic(&mut self, name: &str) -> Result<TopicDescription> {
        let mut all = self.describe_topics(&[name.to_owned()])?;
        let Some(pos) = all.iter().position(|t| t.name == name) else {
            return Err(Error::UnknownTopic {
                topic: name.to_owned(),
            });
        };
        let d = all.swap_remove(pos);
        check(d.error, &d.message, || format!("topic {name}"))?;
        Ok(d)
    }

    /// Raises the partition count of `name` to `total`.
    pub fn create_partitions(&mut self, name: &str, total: u32) -> Result<()> {
        self.invalidate(name);
        let body = RequestBody::CreatePartitions(CreatePartitionsRequest {
            topics: vec![PartitionsIncrease {
                name: name.to_owned(),
                total,
            }],
        });
        match self.call(&body)?.body {
            ResponseBody::CreatePartitions(r) => topic_results_ok(r.results),
            other => Err(unexpected("create_partitions", &other)),
        }
    }

    // ----------------------------------------------------------- offsets

    /// Resolves one offset spec for one partition. `At(n)` is returned as
    /// is; `Timestamp` gives `None` when no record is that recent.
    pub fn list_offset(
        &mut self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<Option<u64>> {
        let timestamp = match spec {
            OffsetSpec::At(n) => return Ok(Some(n)),
            OffsetSpec::Earliest => LIST_OFFSETS_EARLIEST,
            OffsetSpec::Latest => LIST_OFFSETS_LATEST,
            OffsetSpec::Timestamp(t) => t,
        };
        let r = self.list_offsets(&[(topic.to_owned(), partition, timestamp)])?;
        Ok(r.into_iter().next().flatten())
    }

    /// ListOffsets for many (topic, partition, timestamp) at once; `None`
    /// where no record is at or after the timestamp.
    pub fn list_offsets(&mut self, parts: &[(String, u32, i64)]) -> Result<Vec<Option<u64>>> {
        // Parts that all live on one shard are asked there directly.
        let route = self.common_route(parts.iter().map(|(t, p, _)| (t.as_str(), *p)));
        let body = RequestBody::ListOffsets(ListOffsetsRequest {
            partitions: parts
                .iter()
                .map(|(topic, partition, timestamp)| ListOffsetsPartition {
                    topic: topic.clone(),
                    partition: *partition,
                    timestamp: *timestamp,
                })
                .collect(),
        });
        let results = match self.connection_on(route).call(&body, &[], 0)?.body {
            ResponseBody::ListOffsets(r) => r.results,
            other => return Err(unexpected("list_offsets", &other)),
        };
        if results.len() != parts.len() {
            return Err(Error::UnexpectedResponse {
                request: "list_offsets",
                got: format!("{} results for {} partitions", results.len(), parts.len()),
            });
        }
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            if r.error != ErrorCode::None {
                self.note_error(&r.topic, r.error);
            }
            check(r.error, &r.message, || {
                format!("{}/{}", r.topic, r.partition)
            })?;
            out.push(u64::try_from(r.offset).ok());
        }
        Ok(out)
    }

    /// Commits `offset` (the next offset to consume) for each (topic,
    /// partition) under `group`, outside group management (the server
    /// accepts this only while the group has no active members).
    pub fn commit_offsets(&mut self, group: &str, offsets: &[(String, u32, u64)]) -> Result<()> {
        self.commit_offsets_as(group, "", -1, offsets)
    }

    /// Commits `offset` (the next offset to consume) for each (topic,
    /// partition) under `group` as member `member_id` of `generation` (an
    /// empty id with generation -1: outside group management). A fenced
    /// member's commit fails with `UnknownMemberId` or `IllegalGeneration`;
    /// one during the sync phase with `RebalanceInProgress`.
    pub fn commit_offsets_as(
        &mut self,
        group: &str,
        member_id: &str,
        generation: i32,
        offsets: &[(String, u32, u64)],
    ) -> Result<()> {
        let body = RequestBody::OffsetCommit(OffsetCommitRequest {
            group: group.to_owned(),
            partitions: offsets
                .iter()
                .map(|(topic, partition, offset)| OffsetCommitPartition {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                    metadata: String::new(),
                })
                .collect(),
            member_id: member_id.to_owned(),
            generation,
        });
        match self.call(&body)?.body {
            ResponseBody::OffsetCommit(r) => {
                for p in r.results {
                    check(p.error, &p.message, || {
                        format!("commit {group} {}/{}", p.topic, p.partition)
                    })?;
                }
                Ok(())
            }
            other => Err(unexpected("offset_commit", &other)),
        }
    }

    /// The committed offsets of `group` for the given partitions (every
    /// partition the group committed when empty). Results keep their own
    /// error codes; `offset` is -1 where nothing was committed.
    pub fn fetch_offsets(
        &mut self,
        group: &str,
        partitions: &[(String, u32)],
    ) -> Result<Vec<OffsetFetchResult>> {
        let body = RequestBody::OffsetFetch(OffsetFetchRequest {
            group: group.to_owned(),
            partitions: partitions
                .iter()
                .map(|(topic, partition)| TopicPartition {
                    topic: topic.clone(),
                    partition: *partition,
                })
                .collect(),
        });
        match self.call(&body)?.body {
            ResponseBody::OffsetFetch(r) => Ok(r.results),
            other => Err(unexpected("offset_fetch", &other)),
        }
    }

    /// The committed offset of `group` for one partition, `None` if none.
    pub fn committed(&mut self, group: &str, topic: &str, partition: u32) -> Result<Option<u64>> {
        let results = self.fetch_offsets(group, &[(topic.to_owned(), partition)])?;
        for r in results {
            if r.topic == topic && r.partition == partition {
                check(r.error, &r.message, || {
                    format!("offsets of {group} {topic}/{partition}")
                })?;
                return Ok(u64::try_from(r.offset).ok());
            }
        }
        Ok(None)
    }

    // ------------------------------------------------------------ groups

    /// Sends a JoinGroup and waits for the end of the join phase (up to
    /// `extra_wait_ms` on top of the request timeout). The response keeps
    /// its error code: the caller decides whether to rejoin.
    pub fn join_group(
        &mut self,
        request: JoinGroupRequest,
        extra_wait_ms: u64,
    ) -> Result<JoinGroupResponse> {
        let body = RequestBody::JoinGroup(request);
        match self.conn.call(&body, &[], extra_wait_ms)?.body {
            ResponseBody::JoinGroup(r) => Ok(r),
            other => Err(unexpected("join_group", &other)),
        }
    }

    /// Sends a SyncGroup and waits for the assignment (up to
    /// `extra_wait_ms` on top of the request timeout). The response keeps
    /// its error code.
    pub fn sync_group(
        &mut self,
        request: SyncGroupRequest,
        extra_wait_ms: u64,
    ) -> Result<SyncGroupResponse> {
        let body = RequestBody::SyncGroup(request);
        match self.conn.call(&body, &[], extra_wait_ms)?.body {
            ResponseBody::SyncGroup(r) => Ok(r),
            other => Err(unexpected("sync_group", &other)),
        }
    }

    /// One heartbeat; `RebalanceInProgress`, `IllegalGeneration` and
    /// `UnknownMemberId` come back as [`Error::Server`] with that code.
    pub fn heartbeat(&mut self, group: &str, member_id: &str, generation: i32) -> Result<()> {
        let body = RequestBody::Heartbeat(HeartbeatRequest {
            group: group.to_owned(),
            member_id: member_id.to_owned(),
            generation,
        });
        match self.call(&body)?.body {
            ResponseBody::Heartbeat(s) => check(s.error, &s.message, || {
                format!("heartbeat {group} member {member_id} generation {generation}")
            }),
            other => Err(unexpected("heartbeat", &other)),
        }
    }

    /// Removes members from `group` at once (the group rebalances).
    pub fn leave_group(&mut self, group: &str, member_ids: &[String]) -> Result<()> {
        let body = RequestBody::LeaveGroup(LeaveGroupRequest {
            group: group.to_owned(),
            member_ids: member_ids.to_vec(),
        });
        match self.call(&body)?.body {
            ResponseBody::LeaveGroup(s) => {
                check(s.error, &s.message, || format!("leave group {group}"))
            }
            other => Err(unexpected("leave_group", &other)),
        }
    }

    /// Every group with its state, protocol type and member count.
    pub fn list_groups(&mut self) -> Result<Vec<GroupListing>> {
        match self.call(&RequestBody::ListGroups)?.body {
            ResponseBody::ListGroups(r) => Ok(r.groups),
            other => Err(unexpected("list_groups", &other)),
        }
    }

    /// Describes the named groups (all when `groups` is empty); each
    /// description keeps its own error code (`GroupIdNotFound`, state
    /// `Dead`, for an unknown group).
    pub fn describe_groups(&mut self, groups: &[String]) -> Result<Vec<GroupDescription>> {
        let body = RequestBody::DescribeGroups(DescribeGroupsRequest {
            groups: groups.to_vec(),
        });
        match self.call(&body)?.body {
            ResponseBody::DescribeGroups(r) => Ok(r.groups),
            other => Err(unexpected("describe_groups", &other)),
        }
    }

    /// Describes one group: members, their assignments, committed and end
    /// offsets and lag per partition. An unknown group is an error.
    pub fn describe_group(&mut self, group: &str) -> Result<GroupDescription> {
        let mut all = self.describe_groups(&[group.to_owned()])?;
        let Some(pos) = all.iter().position(|g| g.group == group) else {
            return Err(Error::UnexpectedResponse {
                request: "describe_groups",
                got: format!("no description of group {group}"),
            });
        };
        let d = all.swap_remove(pos);
        check(d.error, &d.message, || format!("group {group}"))?;
        Ok(d)
    }

    /// Sets `group`'s committed offsets for `topic` (`partitions` empty:
    /// all) to the earliest or latest offset or to `offset` (clamped into
    /// the partition's range by the server). The group must have no
    /// members (`NonEmptyGroup` otherwise). Returns the per-partition
    /// results (their message says the offset set).
    pub fn reset_offsets(
        &mut self,
        group: &str,
        topic: &str,
        partitions: &[u32],
        to: ResetTo,
        offset: u64,
    ) -> Result<Vec<OffsetCommitResult>> {
        let body = RequestBody::ResetOffsets(ResetOffsetsRequest {
            group: group.to_owned(),
            topic: topic.to_owned(),
            partitions: partitions.to_vec(),
            to,
            offset,
        });
        match self.call(&body)?.body {
            ResponseBody::ResetOffsets(r) => {
                check(r.error, &r.message, || {
                    format!("reset offsets of group {group} on {topic}")
                })?;
                for p in &r.results {
                    check(p.error, &p.message, || {
                        format!(
                            "reset offsets of group {group} on {}/{}",
                            p.topic, p.partition
                        )
                    })?;
                }
                Ok(r.results)
            }
            other => Err(unexpected("reset_offsets", &other)),
        }
    }
}
