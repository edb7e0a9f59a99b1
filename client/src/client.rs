//! [`Client`]: a [`Connection`] plus a metadata cache (topic → partition
//! count) and the admin and offset calls. Producers and consumers are built
//! on top of one.
//!
//! # Cluster mode: following leaders
//! A client is given one or more bootstrap addresses (`"a:1,b:2,c:3"`) and
//! connects to the first that answers. When the handshake says the server
//! is a cluster node (`ApiVersionsResponse.node_id` not 0), the client:
//! - learns every node's native address from the handshake (`nodes`) and
//!   each partition's leader and leader epoch from DescribeTopics
//!   ([`crate::cluster::ClusterView`]);
//! - sends a partition's produce, fetch and list-offsets requests to its
//!   leader ([`Client::route`] gives [`Route::Node`]), over one connection
//!   per node, opened on first use (at most [`crate::cluster::NODES_MAX`]);
//!   while the leader is unknown they go to the main connection, whose node
//!   refuses them (`NotLeader`, `LeaderNotAvailable`) unless it leads;
//! - forgets a leader on `NotLeader`, `LeaderNotAvailable` or
//!   `PartitionUnavailable` for its partition ([`Client::note_error`]) and
//!   every leadership of a node whose connection failed
//!   ([`Client::route_failed`]), and describes the topic again (at most
//!   every [`crate::cluster::LEADER_REFRESH_MIN_MS`]) when it next needs the
//!   leader. Who retries: the producer, only as its resend rules allow; the
//!   consumer's fetch and [`Client::list_offsets`] always, with bounded
//!   back-off ([`crate::cluster::LEADER_RETRY_BACKOFF_MS`] doubling to
//!   [`crate::cluster::LEADER_RETRY_BACKOFF_MAX_MS`]) until their deadline;
//! - moves the main connection (metadata, admin, groups, producer ids) to
//!   the next node when its node cannot be reached: idempotent requests
//!   are then sent again there; a topic change is sent only over a
//!   connection that is up, and one whose answer was lost is not sent again
//!   (its outcome is unknown);
//! - sends a topic change refused with `NotController` to the next node,
//!   until one accepts or [`ConnectionConfig::request_timeout_ms`] has
//!   passed (Kafka's admin client retries `NOT_CONTROLLER` the same way; a
//!   change whose first answer was "outcome unknown" can then come back as
//!   `TopicAlreadyExists` or `UnknownTopic`).
//!
//! A single node (handshake `node_id` 0) is served exactly as before, with
//! direct shard connections; in cluster mode requests go to the leader
//! node's main port and that node forwards them to the owning shard.
//!
//! Invariants:
//! - The metadata cache only holds what the server reported; an entry is
//!   dropped when a request about that topic fails with `UnknownTopic` or
//!   `UnknownPartition`, and refreshed on the next lookup.
//! - Per-topic and per-partition errors inside a successful response become
//!   [`Error::Server`] with the topic/partition as context; callers that
//!   want the partial results use the `*_results` variants.
//! - A [`Route`] names a connection, not a socket: after the client moved
//!   or re-made a connection, a request tracked under its route has another
//!   generation than the connection the route now leads to, so it counts
//!   as lost (see `crate::connection`).

use crate::cluster::{self, ClusterView};
use crate::connection::{is_idempotent, Connection, ConnectionConfig, Response};
use crate::error::{check, Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
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

/// Which connection carries a partition's requests: the main one (the
/// bootstrap connection, or in cluster mode the node the client moved to),
/// a direct connection to the shard that owns the partition (single node),
/// or the connection to the node that leads it (cluster mode; see
/// [`Client::route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Bootstrap,
    Shard(u16),
    Node(u64),
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
    /// The addresses the client was given, in order.
    bootstrap: Vec<String>,
    /// Cluster mode: nodes and partition leaders.
    cluster: ClusterView,
    /// Cluster mode: connections to nodes other than `conn`'s, opened on
    /// first use (at most `cluster::NODES_MAX`).
    nodes: BTreeMap<u64, Connection>,
    /// See [`Client::set_follow_leaders`] (default on).
    follow_leaders: bool,
    /// The reconnect attempts the caller configured (the main connection
    /// uses them unless the client follows leaders).
    reconnect_attempts_max: u32,
}

/// True for the errors after which a partition's request is worth sending
/// again once its leader is found again: a lost connection, or the
/// partition's node saying it does not (or not yet) lead it.
pub fn is_leader_error(e: &Error) -> bool {
    e.is_connection_error()
        || matches!(
            e.code(),
            Some(
                ErrorCode::NotLeader
                    | ErrorCode::LeaderNotAvailable
                    | ErrorCode::PartitionUnavailable
                    | ErrorCode::ShuttingDown
            )
        )
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

/// Connects to the first of `addrs` that answers (see
/// [`Client::connect_with`]).
fn connect_any(addrs: &[String], config: &ConnectionConfig) -> Result<Connection> {
    let once = ConnectionConfig {
        reconnect_attempts_max: 0,
        ..config.clone()
    };
    let mut backoff_ms = config.reconnect_backoff_ms;
    let mut last: Option<Error> = None;
    for round in 0..=config.reconnect_attempts_max {
        if round > 0 {
            std::thread::sleep(Duration::from_millis(backoff_ms));
            backoff_ms = (backoff_ms.saturating_mul(2)).min(config.reconnect_backoff_max_ms);
        }
        for a in addrs {
            match Connection::connect(a, once.clone()) {
                Ok(mut c) => {
                    c.set_reconnect_attempts_max(config.reconnect_attempts_max);
                    return Ok(c);
                }
                Err(e) if e.is_connection_error() || matches!(e, Error::Resolve { .. }) => {
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::InvalidArgument("no server address".into())))
}

impl Client {
    /// Connects to `addrs` (one or more `host:port`, comma separated) with
    /// default settings.
    pub fn connect(addrs: &str) -> Result<Client> {
        Client::connect_with(addrs, ConnectionConfig::default())
    }

    /// Connects to the first of `addrs` (one or more `host:port`, comma
    /// separated) that answers. One address: exactly
    /// [`Connection::connect`]. Several: each is tried once per round, for
    /// `1 + reconnect_attempts_max` rounds with the connection's back-off
    /// between rounds.
    pub fn connect_with(addrs: &str, config: ConnectionConfig) -> Result<Client> {
        let list = cluster::parse_bootstrap(addrs)?;
        let conn = match list.as_slice() {
            [one] => Connection::connect(one, config)?,
            _ => connect_any(&list, &config)?,
        };
        let mut c = Client::new(conn);
        c.bootstrap = list;
        Ok(c)
    }

    /// A client over `conn` (its address is the only bootstrap address).
    pub fn new(conn: Connection) -> Client {
        let direct_generation = conn.generation();
        let bootstrap = vec![conn.addr_text().to_owned()];
        let reconnect_attempts_max = conn.config().reconnect_attempts_max;
        let mut c = Client {
            conn,
            partitions: HashMap::new(),
            owners: HashMap::new(),
            direct: Vec::new(),
            direct_generation,
            direct_enabled: true,
            bootstrap,
            cluster: ClusterView::default(),
            nodes: BTreeMap::new(),
            follow_leaders: true,
            reconnect_attempts_max,
        };
        c.adopt_main();
        c
    }

    /// Whether the server is a cluster node (its handshake named its node).
    pub fn is_cluster(&self) -> bool {
        self.conn.server_info().node_id != 0
    }

    /// Whether requests follow partition leaders and the controller (see
    /// the module docs): in cluster mode, unless turned off with
    /// [`Client::set_follow_leaders`].
    pub fn follows_leaders(&self) -> bool {
        self.follow_leaders && self.is_cluster()
    }

    /// Turns leader following off (or on again): everything then goes to
    /// the main connection's node, which answers `NotLeader`,
    /// `LeaderNotAvailable` or `NotController` where it cannot serve, and a
    /// failed connection is re-made to the same node only (for tests and
    /// tools that must talk to one node).
    pub fn set_follow_leaders(&mut self, on: bool) {
        self.follow_leaders = on;
        if on {
            self.adopt_main();
        } else {
            self.conn
                .set_reconnect_attempts_max(self.reconnect_attempts_max);
        }
    }

    /// The node the main connection talks to (0: a single node).
    pub fn node_id(&self) -> u64 {
        self.conn.server_info().node_id
    }

    /// What the client knows of the cluster (empty for a single node).
    pub fn cluster_view(&self) -> &ClusterView {
        &self.cluster
    }

    /// Learns the nodes the main connection's handshake named; when the
    /// client follows leaders a failed reconnect is not tried again on the
    /// spot (the client tries another node instead).
    fn adopt_main(&mut self) {
        let info = self.conn.server_info();
        if info.node_id == 0 {
            return;
        }
        let (id, nodes) = (info.node_id, info.nodes.clone());
        self.cluster.learn_nodes(id, self.conn.addr_text(), &nodes);
        if self.follow_leaders {
            self.conn.set_reconnect_attempts_max(0);
        }
    }

    /// Settings of a connection to another node: one connect attempt.
    fn node_config(&self) -> ConnectionConfig {
        ConnectionConfig {
            reconnect_attempts_max: 0,
            ..self.conn.config().clone()
        }
    }

    /// Cluster mode: makes the main connection one to another node than
    /// the current one (which failed or refused), trying the candidates of
    /// [`ClusterView::candidates`] once each. The old main connection is
    /// kept as that node's connection.
    fn move_main(&mut self) -> Result<()> {
        let current = self.node_id();
        let mut last: Option<Error> = None;
        for (id, addr) in self.cluster.candidates(current, &self.bootstrap) {
            if id != 0 && id == current {
                // Last resort: the node we are leaving, once more.
                match self.conn.reconnect() {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                }
            }
            let taken = match self.nodes.remove(&id) {
                Some(c) if c.is_connected() => Ok(c),
                Some(mut c) => c.reconnect().map(|()| c),
                None => Connection::connect(&addr, self.node_config()),
            };
            match taken {
                Ok(c) => {
                    if c.server_info().node_id == 0 {
                        // Not a cluster node (a stale bootstrap address).
                        last = Some(Error::UnexpectedResponse {
                            request: "api_versions",
                            got: format!("{addr}: a single node, not a cluster node"),
                        });
                        continue;
                    }
                    let old = std::mem::replace(&mut self.conn, c);
                    let old_id = old.server_info().node_id;
                    if old_id != 0 && old_id != self.node_id() {
                        self.nodes.insert(old_id, old);
                    }
                    self.adopt_main();
                    return Ok(());
                }
                Err(e) => {
                    if id != 0 {
                        self.cluster.forget_node(id);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::InvalidArgument("no node to connect to".into())))
    }

    /// Cluster mode: makes sure the main connection is up, moving it to
    /// another node if its own cannot be reached.
    fn ensure_main(&mut self) -> Result<()> {
        if self.conn.is_connected() {
            return Ok(());
        }
        match self.conn.reconnect() {
            Ok(()) => Ok(()),
            Err(e) if e.is_connection_error() && self.follows_leaders() => {
                self.cluster.forget_node(self.node_id());
                self.move_main()
            }
            Err(e) => Err(e),
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
    ///
    /// In cluster mode: the partition's leader ([`Route::Node`], also when
    /// it is the main connection's node), learned with a DescribeTopics
    /// when unknown; the main connection when no leader is known, or when
    /// the leader cannot be reached (its leaderships are then forgotten).
    pub fn route(&mut self, topic: &str, partition: u32) -> Route {
        if self.follows_leaders() {
            return self.route_to_leader(topic, partition);
        }
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

    fn route_to_leader(&mut self, topic: &str, partition: u32) -> Route {
        if self
            .cluster
            .should_describe(topic, partition, Instant::now())
        {
            // An error leaves the leader unknown: the main connection's
            // node then answers for it (and refuses if it does not lead).
            let _ = self.describe_topic(topic);
        }
        let Some(leader) = self.cluster.leader(topic, partition) else {
            return Route::Bootstrap;
        };
        if leader == self.node_id() {
            // Named by node, not as "the main connection": if the main
            // connection moves to another node, requests in flight here
            // are still found on this one (kept among the node
            // connections).
            return Route::Node(leader);
        }
        if self.open_node(leader) {
            Route::Node(leader)
        } else {
            self.cluster.forget_node(leader);
            Route::Bootstrap
        }
    }

    /// Cluster mode: whether the connection to node `id` is up (opened or
    /// re-made now if needed, one attempt).
    fn open_node(&mut self, id: u64) -> bool {
        if let Some(c) = self.nodes.get_mut(&id) {
            return c.is_connected() || c.reconnect().is_ok();
        }
        if self.nodes.len() >= cluster::NODES_MAX {
            return false;
        }
        let Some(addr) = self.cluster.node_addr(id).map(str::to_owned) else {
            return false;
        };
        match Connection::connect(&addr, self.node_config()) {
            Ok(c) if c.server_info().node_id == id => {
                let nodes = c.server_info().nodes.clone();
                self.cluster.learn_nodes(id, &addr, &nodes);
                self.nodes.insert(id, c);
                true
            }
            _ => false,
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
        match route {
            Route::Shard(s) => {
                if let Some(Direct::Open(c)) = self.direct.get_mut(usize::from(s)) {
                    return c;
                }
            }
            Route::Node(id) if id != self.conn.server_info().node_id => {
                if let Some(c) = self.nodes.get_mut(&id) {
                    return c;
                }
            }
            Route::Node(_) | Route::Bootstrap => {}
        }
        &mut self.conn
    }

    /// After a connection error on `route`. Single node: forgets the
    /// direct connections and partition owners (the server may have
    /// restarted with other shard ports, so the next [`Client::route`]
    /// learns them again through the bootstrap connection, which re-makes
    /// itself). Cluster mode: forgets every leadership of that node, so the
    /// next [`Client::route`] asks who leads now.
    pub fn route_failed(&mut self, route: Route) {
        match route {
            Route::Shard(_) => {
                self.owners.clear();
                self.direct.clear();
            }
            Route::Node(id) => self.cluster.forget_node(id),
            Route::Bootstrap if self.is_cluster() => self.cluster.forget_node(self.node_id()),
            Route::Bootstrap => {}
        }
    }

    /// The server's handshake answer: versions and limits.
    pub fn server_info(&self) -> &ApiVersionsResponse {
        self.conn.server_info()
    }

    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Sends a request on the main connection and waits for its answer
    /// (see [`Connection::call`]). In cluster mode, an idempotent request
    /// whose node cannot be reached is sent again to another node; any
    /// other request is sent only once the main connection is up.
    pub fn call(&mut self, body: &RequestBody) -> Result<Response> {
        self.call_waiting(body, 0)
    }

    fn call_waiting(&mut self, body: &RequestBody, extra_wait_ms: u64) -> Result<Response> {
        if !self.follows_leaders() {
            return self.conn.call(body, &[], extra_wait_ms);
        }
        self.ensure_main()?;
        match self.conn.call(body, &[], extra_wait_ms) {
            Err(e) if e.is_connection_error() && is_idempotent(body) => {
                self.cluster.forget_node(self.node_id());
                self.move_main()?;
                self.conn.call(body, &[], extra_wait_ms)
            }
            other => other,
        }
    }

    /// A topic change on the main connection; in cluster mode refusals
    /// with `NotController` move it to the next node and try again, until
    /// one accepts or the request timeout has passed (see the module docs).
    fn admin_call(&mut self, body: &RequestBody) -> Result<Vec<TopicResult>> {
        let deadline =
            Instant::now() + Duration::from_millis(self.conn.config().request_timeout_ms);
        let mut backoff_ms = 0;
        let mut refusals = 0usize;
        loop {
            let results = match self.call(body)?.body {
                ResponseBody::CreateTopics(r)
                | ResponseBody::DeleteTopics(r)
                | ResponseBody::CreatePartitions(r) => r.results,
                other => return Err(unexpected("topic change", &other)),
            };
            let refused =
                !results.is_empty() && results.iter().all(|r| r.error == ErrorCode::NotController);
            if !refused || !self.follows_leaders() || Instant::now() >= deadline {
                return Ok(results);
            }
            refusals += 1;
            // A full round of refusals: an election; wait a little.
            if refusals.is_multiple_of(self.cluster.node_ids().len().max(1)) {
                backoff_ms = cluster::next_backoff(backoff_ms);
                std::thread::sleep(Duration::from_millis(backoff_ms));
            }
            self.move_main()?;
        }
    }

    /// Forgets cached metadata for `topic` (after an `UnknownTopic`).
    pub fn invalidate(&mut self, topic: &str) {
        self.partitions.remove(topic);
        self.owners.remove(topic);
        self.cluster.forget_topic(topic);
    }

    /// Updates the caches after `code` came back for `topic`/`partition`:
    /// an unknown topic or partition drops the topic's metadata; in cluster
    /// mode a leader error forgets the partition's leader.
    pub fn note_error(&mut self, topic: &str, partition: u32, code: ErrorCode) {
        match code {
            ErrorCode::UnknownTopic | ErrorCode::UnknownPartition => self.invalidate(topic),
            ErrorCode::NotLeader
            | ErrorCode::LeaderNotAvailable
            | ErrorCode::PartitionUnavailable => self.cluster.forget_leader(topic, partition),
            _ => {}
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
        topic_results_ok(self.admin_call(&body)?)?;
        self.partitions.insert(name.to_owned(), partitions);
        Ok(())
    }

    pub fn delete_topic(&mut self, name: &str) -> Result<()> {
        self.invalidate(name);
        let body = RequestBody::DeleteTopics(DeleteTopicsRequest {
            names: vec![name.to_owned()],
        });
        topic_results_ok(self.admin_call(&body)?)
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
                        if self.is_cluster() {
                            self.cluster
                                .learn_leaders(&t.name, &t.partitions, Instant::now());
                        }
                    } else {
                        self.invalidate(&t.name);
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

    /// Describes one topic as its partitions' leaders see it: in cluster
    /// mode, each partition's offsets come from its leader (a follower's
    /// may lag, or be 0 while its replica opens), its leader and epoch from
    /// the node that knows the latest epoch. A single node: the same as
    /// [`Client::describe_topic`].
    pub fn describe_topic_at_leaders(&mut self, name: &str) -> Result<TopicDescription> {
        let mut d = self.describe_topic(name)?;
        if !self.follows_leaders() {
            return Ok(d);
        }
        let leaders: Vec<u64> = {
            let mut l: Vec<u64> = d
                .partitions
                .iter()
                .filter_map(|p| self.cluster.leader(name, p.partition))
                .filter(|&n| n != self.node_id())
                .collect();
            l.sort_unstable();
            l.dedup();
            l
        };
        let body = RequestBody::DescribeTopics(DescribeTopicsRequest {
            names: vec![name.to_owned()],
        });
        for node in leaders {
            if !self.open_node(node) {
                continue;
            }
            let Some(conn) = self.nodes.get_mut(&node) else {
                continue;
            };
            let Ok(Response {
                body: ResponseBody::DescribeTopics(r),
                ..
            }) = conn.call(&body, &[], 0)
            else {
                continue;
            };
            let Some(theirs) = r.topics.into_iter().find(|t| t.name == name) else {
                continue;
            };
            for p in theirs.partitions {
                let Some(mine) = d.partitions.iter_mut().find(|x| x.partition == p.partition)
                else {
                    continue;
                };
                if p.leader_node == node && p.leader_epoch >= mine.leader_epoch {
                    *mine = p;
                }
            }
        }
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
        topic_results_ok(self.admin_call(&body)?)
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
    /// where no record is at or after the timestamp. In cluster mode each
    /// partition is asked of its leader, and leader errors
    /// ([`is_leader_error`]) are retried with back-off until the request
    /// timeout has passed.
    pub fn list_offsets(&mut self, parts: &[(String, u32, i64)]) -> Result<Vec<Option<u64>>> {
        if !self.follows_leaders() {
            // Parts that all live on one shard are asked there directly.
            let route = self.common_route(parts.iter().map(|(t, p, _)| (t.as_str(), *p)));
            return self.list_offsets_on(route, parts);
        }
        let deadline =
            Instant::now() + Duration::from_millis(self.conn.config().request_timeout_ms);
        let mut backoff_ms = 0;
        loop {
            match self.list_offsets_at_leaders(parts) {
                Err(e) if is_leader_error(&e) && Instant::now() < deadline => {
                    backoff_ms = cluster::next_backoff(backoff_ms);
                    std::thread::sleep(Duration::from_millis(backoff_ms));
                }
                other => return other,
            }
        }
    }

    /// One ListOffsets per leader (cluster mode), results in `parts` order.
    fn list_offsets_at_leaders(
        &mut self,
        parts: &[(String, u32, i64)],
    ) -> Result<Vec<Option<u64>>> {
        let mut by_route: Vec<(Route, Vec<usize>)> = Vec::new();
        for (i, (topic, partition, _)) in parts.iter().enumerate() {
            let route = self.route(topic, *partition);
            match by_route.iter_mut().find(|(r, _)| *r == route) {
                Some((_, v)) => v.push(i),
                None => by_route.push((route, vec![i])),
            }
        }
        let mut out = vec![None; parts.len()];
        for (route, idx) in by_route {
            let asked: Vec<(String, u32, i64)> = idx.iter().map(|&i| parts[i].clone()).collect();
            let got = self.list_offsets_on(route, &asked)?;
            for (i, o) in idx.into_iter().zip(got) {
                out[i] = o;
            }
        }
        Ok(out)
    }

    fn list_offsets_on(
        &mut self,
        route: Route,
        parts: &[(String, u32, i64)],
    ) -> Result<Vec<Option<u64>>> {
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
        let answer = self.connection_on(route).call(&body, &[], 0);
        let results = match answer {
            Ok(r) => match r.body {
                ResponseBody::ListOffsets(r) => r.results,
                other => return Err(unexpected("list_offsets", &other)),
            },
            Err(e) => {
                if e.is_connection_error() {
                    self.route_failed(route);
                }
                return Err(e);
            }
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
                self.note_error(&r.topic, r.partition, r.error);
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
        match self.call_waiting(&body, extra_wait_ms)?.body {
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
        match self.call_waiting(&body, extra_wait_ms)?.body {
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
