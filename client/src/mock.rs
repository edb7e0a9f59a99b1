//! A tiny in-process fake server for unit tests: it speaks the real codec
//! (`decode_request` / `encode_response`) over a real loopback socket, keeps
//! partitions as vectors of stamped frames, and can answer pipelined
//! requests in reverse order to prove correlation-id matching. It hands out
//! producer ids and checks idempotent batches with a one-batch memory per
//! producer and partition (enough for a producer with one batch per
//! partition in flight), and can lose answers (append, then close the
//! connection: a crash after the write), refuse batches with given codes,
//! and forget its producers (a restart).
//!
//! [`MockCluster`]: several listeners (nodes 1..=n) over one shared state,
//! playing a cluster: the handshake names the node and every node's
//! address, DescribeTopics names [`State::leader`], produce, fetch and
//! list-offsets off the leader are refused (`NotLeader` naming it, or
//! `LeaderNotAvailable` while it is 0), topic changes off
//! [`State::controller`] get `NotController`, and a node in
//! [`State::down`] closes every connection (a dead process).

use bytes::BytesMut;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use strom_flatbuffers::protocol::*;
use strom_flatbuffers::{stamp_base_offset, validate_incoming, FrameHeader, FrameLimits};

/// A producer's last batch on a partition: epoch, first and last sequence,
/// base and last offset.
pub type LastBatch = (i16, i32, i32, u64, u64);

#[derive(Default)]
pub struct State {
    /// topic → partitions → frames.
    pub topics: HashMap<String, Vec<Vec<Vec<u8>>>>,
    pub offsets: HashMap<(String, String, u32), u64>,
    /// Answer every N requests in a burst, in reverse order.
    pub reverse_batch: usize,
    /// Producer ids handed out so far.
    pub producer_ids: i64,
    /// (topic, partition, producer id) -> its last batch.
    pub producers: HashMap<(String, u32, i64), LastBatch>,
    /// The next produce requests to carry out and then leave unanswered,
    /// closing the connection.
    pub lose_answers: usize,
    /// Codes to refuse the next produce batches with (nothing appended).
    pub refuse: VecDeque<ErrorCode>,
    /// Produce requests received.
    pub produce_requests: usize,
    /// Set by a lost answer: the serving thread closes the connection.
    close_now: bool,
    /// Cluster mode: every node and its address (empty: a single node).
    pub cluster_nodes: Vec<(u64, String)>,
    /// Cluster mode: the leader of every partition (0: an election), its
    /// epoch, and the controller.
    pub leader: u64,
    pub epoch: u64,
    pub controller: u64,
    /// Cluster mode: nodes that are "dead" (close every connection).
    pub down: HashSet<u64>,
}

pub struct Mock {
    pub addr: String,
    pub state: Arc<Mutex<State>>,
}

impl Mock {
    pub fn start(reverse_batch: usize) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let state = Arc::new(Mutex::new(State {
            reverse_batch,
            ..Default::default()
        }));
        listen(listener, state.clone(), 0);
        Mock { addr, state }
    }
}

/// Accepts connections for node `node` (0: a single node) until the
/// process ends.
fn listen(listener: TcpListener, state: Arc<Mutex<State>>, node: u64) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            if state.lock().expect("lock").down.contains(&node) {
                continue; // dropped: closed at once
            }
            let s = state.clone();
            std::thread::spawn(move || serve(stream, s, node));
        }
    });
}

/// Nodes 1..=n of a pretend cluster over one state (see the module docs).
pub struct MockCluster {
    /// Index i: node i + 1's address.
    pub addrs: Vec<String>,
    pub state: Arc<Mutex<State>>,
}

impl MockCluster {
    /// `n` nodes; node `leader` leads every partition and is the controller.
    pub fn start(n: u64, leader: u64) -> MockCluster {
        let listeners: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let addrs: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().expect("addr").to_string())
            .collect();
        let state = Arc::new(Mutex::new(State {
            cluster_nodes: (1..=n).zip(addrs.iter().cloned()).collect(),
            leader,
            epoch: 1,
            controller: leader,
            ..Default::default()
        }));
        for (i, l) in listeners.into_iter().enumerate() {
            listen(l, state.clone(), i as u64 + 1);
        }
        MockCluster { addrs, state }
    }

    /// Every node's address, comma separated.
    pub fn bootstrap(&self) -> String {
        self.addrs.join(",")
    }

    /// Moves leadership (0: an election) to a later epoch.
    pub fn set_leader(&self, leader: u64) {
        let mut st = self.state.lock().expect("lock");
        st.leader = leader;
        st.epoch += 1;
    }
}

/// Cluster mode: the refusal of a partition request on `node`, if it does
/// not lead.
fn not_leader(st: &State, node: u64) -> Option<(ErrorCode, String)> {
    if st.cluster_nodes.is_empty() || node == st.leader {
        return None;
    }
    Some(match st.leader {
        0 => (ErrorCode::LeaderNotAvailable, "an election".to_owned()),
        l => (
            ErrorCode::NotLeader,
            format!("this node is not the leader; node {l} is"),
        ),
    })
}

fn hw(parts: &[Vec<u8>]) -> u64 {
    parts
        .last()
        .map(|f| FrameHeader::ref_from(f).expect("stored").next_offset())
        .unwrap_or(0)
}

fn handle(
    state: &Mutex<State>,
    req: &DecodedRequest,
    message: &[u8],
    node: u64,
) -> Option<(ResponseBody, Vec<u8>)> {
    let mut st = state.lock().expect("lock");
    let cluster = !st.cluster_nodes.is_empty();
    let body = match &req.body {
        RequestBody::ApiVersions(_) => ResponseBody::ApiVersions(ApiVersionsResponse {
            min_version: 1,
            max_version: 1,
            frame_bytes_max: 1 << 20,
            fetch_wait_max_ms: 1_000,
            shard_count: 1,
            node_id: node,
            nodes: st
                .cluster_nodes
                .iter()
                .map(|(id, a)| NodeAddress {
                    id: *id,
                    native_addr: a.clone(),
                })
                .collect(),
            ..Default::default()
        }),
        RequestBody::CreateTopics(c) => {
            let mut results = Vec::new();
            for t in &c.topics {
                let error = if cluster && node != st.controller {
                    ErrorCode::NotController
                } else if st.topics.contains_key(&t.name) {
                    ErrorCode::TopicAlreadyExists
                } else {
                    st.topics
                        .insert(t.name.clone(), vec![Vec::new(); t.partitions as usize]);
                    ErrorCode::None
                };
                results.push(TopicResult {
                    name: t.name.clone(),
                    error,
                    message: String::new(),
                });
            }
            ResponseBody::CreateTopics(TopicResults { results })
        }
        RequestBody::DescribeTopics(d) => ResponseBody::DescribeTopics(DescribeTopicsResponse {
            topics: d
                .names
                .iter()
                .map(|n| match st.topics.get(n) {
                    Some(ps) => TopicDescription {
                        name: n.clone(),
                        partitions: ps
                            .iter()
                            .enumerate()
                            .map(|(i, p)| PartitionDescription {
                                partition: i as u32,
                                high_watermark: hw(p),
                                leader_node: if cluster { st.leader } else { 0 },
                                leader_epoch: if cluster { st.epoch } else { 0 },
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    },
                    None => TopicDescription {
                        name: n.clone(),
                        error: ErrorCode::UnknownTopic,
                        message: "no such topic".into(),
                        ..Default::default()
                    },
                })
                .collect(),
        }),
        RequestBody::InitProducerId(r) => {
            let (producer_id, producer_epoch) = if r.producer_id >= 0 && r.producer_epoch >= 0 {
                (r.producer_id, r.producer_epoch + 1)
            } else {
                st.producer_ids += 1;
                (1000 + st.producer_ids, 0)
            };
            ResponseBody::InitProducerId(InitProducerIdResponse {
                producer_id,
                producer_epoch,
                ..Default::default()
            })
        }
        RequestBody::Produce(p) => {
            st.produce_requests += 1;
            let mut at = req.trailer.start;
            let mut results = Vec::new();
            for b in &p.batches {
                let frame = message[at..at + b.batch_len as usize].to_vec();
                at += b.batch_len as usize;
                let mut r = ProduceResult {
                    topic: b.topic.clone(),
                    partition: b.partition,
                    ..Default::default()
                };
                if let Some((code, message)) = not_leader(&st, node) {
                    r.error = code;
                    r.message = message;
                } else if let Some(code) = st.refuse.pop_front() {
                    r.error = code;
                    r.message = "refused by the mock".into();
                } else {
                    append(&mut st, b, frame, &mut r);
                }
                results.push(r);
            }
            if st.lose_answers > 0 {
                st.lose_answers -= 1;
                st.close_now = true;
                return None;
            }
            if p.acks == Acks::None {
                return None;
            }
            ResponseBody::Produce(ProduceResponse { results })
        }
        RequestBody::Fetch(f) => {
            let mut results = Vec::new();
            let mut trailer = Vec::new();
            for fp in &f.partitions {
                let mut r = FetchResult {
                    topic: fp.topic.clone(),
                    partition: fp.partition,
                    ..Default::default()
                };
                if let Some((code, message)) = not_leader(&st, node) {
                    r.error = code;
                    r.message = message;
                    results.push(r);
                    continue;
                }
                match st
                    .topics
                    .get(&fp.topic)
                    .and_then(|t| t.get(fp.partition as usize))
                {
                    None => r.error = ErrorCode::UnknownTopic,
                    Some(part) => {
                        r.high_watermark = hw(part);
                        if fp.offset > r.high_watermark {
                            r.error = ErrorCode::OffsetOutOfRange;
                        } else {
                            let before = trailer.len();
                            for frame in part {
                                let h = FrameHeader::ref_from(frame).expect("stored");
                                if h.next_offset() > fp.offset {
                                    trailer.extend_from_slice(frame);
                                }
                            }
                            r.bytes_len = (trailer.len() - before) as u32;
                        }
                    }
                }
                results.push(r);
            }
            return Some((ResponseBody::Fetch(FetchResponse { results }), trailer));
        }
        RequestBody::ListOffsets(l) => ResponseBody::ListOffsets(ListOffsetsResponse {
            results: l
                .partitions
                .iter()
                .map(|p| {
                    if let Some((error, message)) = not_leader(&st, node) {
                        return ListOffsetsResult {
                            topic: p.topic.clone(),
                            partition: p.partition,
                            error,
                            message,
                            ..Default::default()
                        };
                    }
                    let part = &st.topics[&p.topic][p.partition as usize];
                    ListOffsetsResult {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        offset: if p.timestamp == LIST_OFFSETS_EARLIEST {
                            0
                        } else {
                            hw(part) as i64
                        },
                        ..Default::default()
                    }
                })
                .collect(),
        }),
        RequestBody::OffsetCommit(c) => {
            for p in &c.partitions {
                st.offsets
                    .insert((c.group.clone(), p.topic.clone(), p.partition), p.offset);
            }
            ResponseBody::OffsetCommit(OffsetCommitResponse {
                results: c
                    .partitions
                    .iter()
                    .map(|p| OffsetCommitResult {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        ..Default::default()
                    })
                    .collect(),
            })
        }
        RequestBody::OffsetFetch(f) => ResponseBody::OffsetFetch(OffsetFetchResponse {
            results: f
                .partitions
                .iter()
                .map(|p| OffsetFetchResult {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    offset: st
                        .offsets
                        .get(&(f.group.clone(), p.topic.clone(), p.partition))
                        .map_or(-1, |o| *o as i64),
                    ..Default::default()
                })
                .collect(),
        }),
        _ => ResponseBody::Error(ErrorResponse {
            error: ErrorCode::InvalidRequest,
            message: "mock does not do this".into(),
        }),
    };
    Some((body, Vec::new()))
}

/// Appends one batch, with the idempotence check (fills `r`).
fn append(st: &mut State, b: &ProduceBatch, mut frame: Vec<u8>, r: &mut ProduceResult) {
    let summary = match validate_incoming(&frame, &FrameLimits::default()) {
        Err(e) => {
            r.error = ErrorCode::CorruptBatch;
            r.message = e.to_string();
            return;
        }
        Ok(s) => s,
    };
    let h = *FrameHeader::ref_from(&frame).expect("validated");
    let (id, epoch, first) = (
        h.producer_id.get(),
        h.producer_epoch.get(),
        h.base_sequence.get(),
    );
    let last = first.wrapping_add(summary.record_count as i32 - 1);
    let key = (b.topic.clone(), b.partition, id);
    if id >= 0 {
        if let Some(&(e, f, l, base, last_off)) = st.producers.get(&key) {
            if epoch < e {
                r.error = ErrorCode::InvalidProducerEpoch;
                return;
            }
            if epoch == e && (f, l) == (first, last) {
                r.base_offset = base;
                r.last_offset = last_off;
                r.append_time_ms = -1;
                return;
            }
            if (epoch > e && first != 0) || (epoch == e && first != l.wrapping_add(1)) {
                r.error = ErrorCode::OutOfOrderSequence;
                r.message = format!("expected sequence {}", l.wrapping_add(1));
                return;
            }
        }
    }
    let Some(part) = st
        .topics
        .get_mut(&b.topic)
        .and_then(|t| t.get_mut(b.partition as usize))
    else {
        r.error = ErrorCode::UnknownTopic;
        return;
    };
    let base = hw(part);
    stamp_base_offset(&mut frame, base);
    part.push(frame);
    r.base_offset = base;
    r.last_offset = base + u64::from(summary.record_count) - 1;
    if id >= 0 {
        st.producers
            .insert(key, (epoch, first, last, r.base_offset, r.last_offset));
    }
}

fn serve(mut stream: TcpStream, state: Arc<Mutex<State>>, node: u64) {
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        loop {
            let bounds = match peek_message(&buf, MESSAGE_BYTES_MAX) {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(_) => return,
            };
            let message = buf.split_to(bounds.message_len);
            let Ok(req) = decode_request(&message) else {
                return;
            };
            if state.lock().expect("lock").down.contains(&node) {
                return; // a dead node answers nothing
            }
            let answer = handle(&state, &req, &message, node);
            {
                let mut st = state.lock().expect("lock");
                if st.close_now {
                    st.close_now = false;
                    return;
                }
            }
            let Some((body, trailer)) = answer else {
                continue;
            };
            let mut out = encode_response(req.correlation_id, &body).expect("encode");
            out.extend_from_slice(&trailer);
            let reverse = state.lock().expect("lock").reverse_batch;
            if reverse > 1 && !matches!(req.body, RequestBody::ApiVersions(_)) {
                held.push(out);
                if held.len() >= reverse {
                    for m in held.drain(..).rev() {
                        if stream.write_all(&m).is_err() {
                            return;
                        }
                    }
                }
            } else if stream.write_all(&out).is_err() {
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
