//! The wire encoding of raft message batches (`strom_replication::wire`).
//!
//! - A real cluster: two raft groups on three nodes run elections,
//!   appends, a leader change and a snapshot with *every* message crossing
//!   the wire encoding (the decoded copy is what the receiver steps), each
//!   decoded message compared with its original field by field and through
//!   raft-rs's own protobuf encoding.
//! - Seeded random messages with every field set: encode/decode identity,
//!   canonical bytes, stream framing with `peek_batch_len`.
//! - Every truncation and every single-byte corruption refused; targeted
//!   structural corruptions (behind a forged checksum) refused with the
//!   right error; every limit accepted at its maximum and refused one past
//!   it, on both sides.
//! - A bounded fuzz-style loop (random bytes, mutated batches) through the
//!   fuzz target's own check, with decoding allocations measured against
//!   the input length by a counting allocator.
//! - The fuzz corpus (`fuzz/corpus/replication_wire/`) replayed;
//!   `write_seed_corpus` (ignored) rebuilds its seeds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protobuf::Message as PbMessage;
use protobuf::ProtobufEnum;
use strom_replication::raft::eraftpb::{
    ConfState, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMetadata,
};
use strom_replication::rng::SplitMix64;
use strom_replication::wire::{
    self, decode_batch, encode_batch, peek_batch_len, stamp_checksum, BatchEncoder, BatchHeader,
    EntryHeader, MessageHeader, Place, SnapshotHeader, WireError, BATCH_BYTES_MAX,
    BATCH_HEADER_BYTES, CONTEXT_BYTES_MAX, ENTRIES_PER_MESSAGE_MAX, ENTRY_BYTES_MAX,
    ENTRY_HEADER_BYTES, LEARNERS_MAX, MESSAGES_PER_BATCH_MAX, MESSAGE_HEADER_BYTES,
    SNAPSHOT_BYTES_MAX, VOTERS_MAX,
};
use strom_replication::{Acks, Action, MemLog, ReplicaConfig, ReplicaCore};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::FromBytes;

// ------------------------------------------------------------ allocations

/// Counts the bytes this thread asks the allocator for (tests run on
/// several threads; each measures only its own).
struct CountingAlloc;

thread_local! {
    static ALLOCATED_BYTES: Cell<usize> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    let _ = ALLOCATED_BYTES.try_with(|c| c.set(c.get() + bytes));
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Bytes allocated (in total, not at peak) while decoding `buf`.
fn decode_measured(buf: &[u8]) -> (Result<wire::Batch, WireError>, usize) {
    let before = ALLOCATED_BYTES.with(|c| c.get());
    let r = decode_batch(buf);
    let after = ALLOCATED_BYTES.with(|c| c.get());
    (r, after - before)
}

/// Decoding allocates at most this many bytes per input byte (the
/// `Message`/`Entry` structs and boxes, and one copy of each payload), plus
/// a constant.
const DECODE_ALLOC_PER_INPUT_BYTE_MAX: usize = 6;
const DECODE_ALLOC_BYTES_BASE: usize = 256;

fn assert_alloc_bounded(input_len: usize, allocated: usize) {
    assert!(
        allocated <= DECODE_ALLOC_PER_INPUT_BYTE_MAX * input_len + DECODE_ALLOC_BYTES_BASE,
        "decoding {input_len} bytes allocated {allocated}"
    );
}

// ------------------------------------------------------------ comparisons

fn pb(m: &Message) -> Vec<u8> {
    m.write_to_bytes().expect("protobuf encodes")
}

/// `decoded` is `original`: equal as structs and byte for byte under
/// raft-rs's own protobuf encoding (which covers every field and the
/// presence of the optional sub-messages).
fn assert_same(original: &[(u64, Message)], decoded: &[(u64, Message)]) {
    assert_eq!(original.len(), decoded.len());
    for (i, ((g0, m0), (g1, m1))) in original.iter().zip(decoded).enumerate() {
        assert_eq!(g0, g1, "group of message {i}");
        assert_eq!(pb(m0), pb(m1), "protobuf bytes of message {i}");
        assert_eq!(m0, m1, "message {i}");
        assert_eq!(
            m0.snapshot.is_some(),
            m1.snapshot.is_some(),
            "snapshot presence {i}"
        );
    }
}

fn encode(from: u64, to: u64, msgs: &[(u64, Message)]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_batch(from, to, msgs, &mut out).expect("encode");
    out
}

/// Encode, decode, compare, re-encode: the batch survives the wire.
fn round_trip(from: u64, to: u64, msgs: &[(u64, Message)]) -> Vec<u8> {
    let buf = encode(from, to, msgs);
    assert_eq!(peek_batch_len(&buf), Ok(Some(buf.len())));
    let (decoded, allocated) = decode_measured(&buf);
    let batch = decoded.expect("decode");
    assert_alloc_bounded(buf.len(), allocated);
    assert_eq!((batch.from_node, batch.to_node), (from, to));
    assert_same(msgs, &batch.messages);
    assert_eq!(encode(from, to, &batch.messages), buf, "canonical");
    buf
}

// ------------------------------------------------------------ a real cluster

const NODES: [u64; 3] = [1, 2, 3];
const GROUPS: [u64; 2] = [7, 1 << 40];

/// Three nodes, each a replica of every group; everything they send each
/// other crosses the wire encoding, batched per (sender, receiver).
struct Cluster {
    cores: BTreeMap<(u64, u64), ReplicaCore<MemLog>>,
    isolated: BTreeSet<u64>,
    outbox: BTreeMap<(u64, u64), Vec<(u64, Message)>>,
    applied: BTreeMap<(u64, u64), BTreeMap<u64, Bytes>>,
    snapshots_installed: usize,
    seen: [usize; 19],
    rejects_seen: usize,
    batches: usize,
    wire_bytes: usize,
    protobuf_bytes: usize,
}

impl Cluster {
    fn new() -> Self {
        let mut cores = BTreeMap::new();
        for &node in &NODES {
            for &group in &GROUPS {
                let mut cfg = ReplicaConfig::new(node, &NODES);
                cfg.timer_seed = node.wrapping_mul(31).wrapping_add(group);
                // Small appends, so that catching up takes many of them.
                cfg.msg_bytes_max = 4096;
                cores.insert(
                    (node, group),
                    ReplicaCore::open(cfg, MemLog::new(&NODES)).expect("open"),
                );
            }
        }
        Cluster {
            cores,
            isolated: BTreeSet::new(),
            outbox: BTreeMap::new(),
            applied: BTreeMap::new(),
            snapshots_installed: 0,
            seen: [0; 19],
            rejects_seen: 0,
            batches: 0,
            wire_bytes: 0,
            protobuf_bytes: 0,
        }
    }

    fn core(&mut self, node: u64, group: u64) -> &mut ReplicaCore<MemLog> {
        self.cores.get_mut(&(node, group)).expect("core")
    }

    /// Carries out every action until the replicas are quiet: syncs
    /// complete at once, messages go to the outbox.
    fn drain(&mut self) {
        loop {
            let mut any = false;
            let keys: Vec<(u64, u64)> = self.cores.keys().copied().collect();
            for (node, group) in keys {
                let actions = self.core(node, group).take_actions();
                let mut syncs = Vec::new();
                for a in actions {
                    any = true;
                    match a {
                        Action::Persist { write_seq, .. } => syncs.push(write_seq),
                        Action::Send(m) => self
                            .outbox
                            .entry((node, m.to))
                            .or_default()
                            .push((group, m)),
                        Action::Apply { entries } => {
                            let log = self.applied.entry((node, group)).or_default();
                            for e in entries {
                                log.insert(e.index, e.data);
                            }
                        }
                        Action::InstallSnapshot { .. } => self.snapshots_installed += 1,
                        _ => {}
                    }
                }
                for seq in syncs {
                    self.core(node, group).on_persisted(seq).expect("sync");
                }
            }
            if !any {
                return;
            }
        }
    }

    /// Sends every outbox as one batch per (sender, receiver) through the
    /// encoding; the receivers step the decoded copies.
    fn deliver(&mut self) {
        let outbox = std::mem::take(&mut self.outbox);
        for ((from, to), msgs) in outbox {
            let buf = round_trip(from, to, &msgs);
            self.batches += 1;
            self.wire_bytes += buf.len();
            let batch = decode_batch(&buf).expect("decode");
            for ((group, decoded), (_, original)) in batch.messages.into_iter().zip(&msgs) {
                self.protobuf_bytes += pb(original).len();
                self.seen[decoded.get_msg_type() as usize] += 1;
                if decoded.reject {
                    self.rejects_seen += 1;
                }
                let snapshot = decoded.get_msg_type() == MessageType::MsgSnapshot;
                let delivered = !self.isolated.contains(&from) && !self.isolated.contains(&to);
                if delivered {
                    if let Err(e) = self.core(to, group).step(decoded) {
                        panic!("node {to} group {group} refused a decoded message: {e}");
                    }
                }
                if snapshot {
                    self.core(from, group).report_snapshot(to, delivered);
                }
            }
        }
        self.drain();
    }

    fn step(&mut self) {
        for core in self.cores.values_mut() {
            core.tick();
        }
        self.drain();
        self.deliver();
    }

    fn leader(&self, group: u64) -> Option<u64> {
        let leaders: Vec<u64> = NODES
            .iter()
            .copied()
            .filter(|&n| !self.isolated.contains(&n) && self.cores[&(n, group)].is_leader())
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }

    fn run_until(&mut self, what: &str, steps_max: usize, done: impl Fn(&Cluster) -> bool) {
        for _ in 0..steps_max {
            if done(self) {
                return;
            }
            self.step();
        }
        assert!(done(self), "not reached in {steps_max} steps: {what}");
    }

    fn propose(&mut self, group: u64, payload: Bytes) {
        let leader = self.leader(group).expect("a leader");
        self.core(leader, group)
            .propose(payload, Acks::All)
            .expect("propose");
        self.drain();
    }

    fn all_applied(&self, group: u64) -> bool {
        let leader = self.leader(group);
        let Some(leader) = leader else { return false };
        let target = self.cores[&(leader, group)].last_index();
        NODES
            .iter()
            .all(|&n| self.cores[&(n, group)].applied_index() == target)
    }
}

fn payload(rng: &mut SplitMix64, i: usize) -> Bytes {
    let len = match i % 5 {
        0 => 1,
        1 => 100,
        2 => rng.range(1, 3000) as usize,
        3 => 17,
        _ => rng.range(5000, 40_000) as usize,
    };
    Bytes::from(
        (0..len)
            .map(|k| (k as u64 ^ rng.next_u64()) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// Two groups on three nodes run entirely over the wire encoding:
/// elections (pre-vote and vote), appends, heartbeats, a partitioned
/// follower that falls behind a compaction and catches up by snapshot, and
/// a leader change. Every message is compared with its decoded copy; the
/// replicas end with the same applied logs.
#[test]
fn raft_cluster_runs_over_the_wire() {
    let mut c = Cluster::new();
    let mut rng = SplitMix64::new(0x5EED);
    for &g in &GROUPS {
        c.run_until("a leader", 300, |c| c.leader(g).is_some());
    }
    for i in 0..30 {
        for &g in &GROUPS {
            c.propose(g, payload(&mut rng, i));
        }
        c.step();
    }
    for &g in &GROUPS {
        c.run_until("everything applied", 300, |c| c.all_applied(g));
    }

    // A follower of the first group is cut off, falls behind a compaction
    // and must catch up through a snapshot.
    let g = GROUPS[0];
    let leader = c.leader(g).expect("leader");
    let behind = *NODES.iter().find(|&&n| n != leader).expect("a follower");
    c.isolated.insert(behind);
    for i in 0..20 {
        c.propose(g, payload(&mut rng, i));
        c.step();
    }
    c.run_until("majority applied", 300, |c| {
        let t = c.cores[&(leader, g)].last_index();
        c.cores[&(leader, g)].applied_index() == t
    });
    let applied = c.cores[&(leader, g)].applied_index();
    c.core(leader, g)
        .compact(applied, Bytes::from_static(b"log start and producer state"))
        .expect("compact");
    c.drain();
    c.isolated.clear();
    c.run_until("the follower caught up", 500, |c| c.all_applied(g));
    assert!(c.snapshots_installed >= 1, "a snapshot was installed");
    assert!(c.seen[MessageType::MsgSnapshot as usize] >= 1);

    // The second group's leader is cut off: the others elect a new one in a
    // higher term; the old one learns of it once healed.
    let g = GROUPS[1];
    let old = c.leader(g).expect("leader");
    let term = c.cores[&(old, g)].term();
    c.isolated.insert(old);
    c.run_until("a new leader", 500, |c| {
        c.leader(g)
            .is_some_and(|l| l != old && c.cores[&(l, g)].term() > term)
    });
    c.propose(g, Bytes::from_static(b"after failover"));
    c.isolated.clear();
    c.run_until("the old leader follows", 500, |c| c.all_applied(g));

    for t in [
        MessageType::MsgRequestPreVote,
        MessageType::MsgRequestPreVoteResponse,
        MessageType::MsgRequestVote,
        MessageType::MsgRequestVoteResponse,
        MessageType::MsgAppend,
        MessageType::MsgAppendResponse,
        MessageType::MsgHeartbeat,
        MessageType::MsgHeartbeatResponse,
        MessageType::MsgSnapshot,
    ] {
        assert!(c.seen[t as usize] > 0, "no {t:?} crossed the wire");
    }
    assert!(c.rejects_seen > 0, "no rejection crossed the wire");
    // Same entries at the same indexes everywhere.
    for &g in &GROUPS {
        let mut merged: BTreeMap<u64, &Bytes> = BTreeMap::new();
        for &n in &NODES {
            for (i, d) in c.applied.get(&(n, g)).into_iter().flatten() {
                if let Some(prev) = merged.insert(*i, d) {
                    assert_eq!(prev, d, "group {g} index {i}");
                }
            }
        }
        assert!(merged.len() >= 30, "group {g} applied {}", merged.len());
    }
    eprintln!(
        "{} batches, {} messages {:?}, {} wire bytes vs {} protobuf bytes",
        c.batches,
        c.seen.iter().sum::<usize>(),
        c.seen,
        c.wire_bytes,
        c.protobuf_bytes
    );
}

// ------------------------------------------------------------ random messages

fn random_u64(rng: &mut SplitMix64) -> u64 {
    match rng.below(6) {
        0 => 0,
        1 => rng.below(10),
        2 => u64::MAX - rng.below(3),
        3 => 1 << rng.below(64),
        _ => rng.next_u64(),
    }
}

fn random_bytes(rng: &mut SplitMix64, max: usize) -> Bytes {
    let len = match rng.below(10) {
        0..=4 => 0,
        5..=8 => rng.range(1, 33) as usize,
        _ => rng.below(max as u64 + 1) as usize,
    };
    Bytes::from((0..len).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>())
}

fn random_ids(rng: &mut SplitMix64, max: usize) -> Vec<u64> {
    let n = rng.below(max as u64 + 1) as usize;
    (0..n).map(|_| random_u64(rng)).collect()
}

fn random_entry(rng: &mut SplitMix64) -> Entry {
    let mut e = Entry::default();
    e.set_entry_type(EntryType::from_i32(rng.below(3) as i32).expect("entry type"));
    e.term = random_u64(rng);
    e.index = random_u64(rng);
    e.data = random_bytes(rng, 2048);
    e.context = random_bytes(rng, 64);
    e.sync_log = rng.chance_per_mille(100);
    e
}

fn random_snapshot(rng: &mut SplitMix64) -> Snapshot {
    let mut s = Snapshot {
        data: random_bytes(rng, 4096),
        ..Snapshot::default()
    };
    if rng.chance_per_mille(800) {
        let mut meta = SnapshotMetadata {
            index: random_u64(rng),
            term: random_u64(rng),
            ..SnapshotMetadata::default()
        };
        if rng.chance_per_mille(800) {
            meta.set_conf_state(ConfState {
                voters: random_ids(rng, VOTERS_MAX),
                learners: random_ids(rng, LEARNERS_MAX),
                voters_outgoing: random_ids(rng, VOTERS_MAX),
                learners_next: random_ids(rng, LEARNERS_MAX),
                auto_leave: rng.chance_per_mille(500),
                ..ConfState::default()
            });
        }
        s.set_metadata(meta);
    }
    s
}

fn random_message(rng: &mut SplitMix64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::from_i32(rng.below(19) as i32).expect("message type"));
    m.to = random_u64(rng);
    m.from = random_u64(rng);
    m.term = random_u64(rng);
    m.log_term = random_u64(rng);
    m.index = random_u64(rng);
    m.commit = random_u64(rng);
    m.commit_term = random_u64(rng);
    m.reject = rng.chance_per_mille(300);
    m.reject_hint = random_u64(rng);
    m.request_snapshot = random_u64(rng);
    m.priority = random_u64(rng) as i64;
    m.deprecated_priority = random_u64(rng);
    m.context = random_bytes(rng, 256);
    let entries = match rng.below(20) {
        0..=9 => 0,
        10..=17 => rng.range(1, 5),
        18 => rng.range(5, 50),
        _ => rng.range(50, 400),
    };
    m.entries = (0..entries)
        .map(|_| random_entry(rng))
        .collect::<Vec<_>>()
        .into();
    if rng.chance_per_mille(200) {
        m.set_snapshot(random_snapshot(rng));
    }
    m
}

fn random_batch(rng: &mut SplitMix64) -> (u64, u64, Vec<(u64, Message)>) {
    let n = match rng.below(10) {
        0 => 0,
        1..=7 => rng.range(1, 8),
        _ => rng.range(8, 64),
    };
    let msgs = (0..n)
        .map(|_| (random_u64(rng), random_message(rng)))
        .collect();
    (random_u64(rng).max(1), random_u64(rng).max(1), msgs)
}

/// Seeded random batches with every field of every message, entry,
/// snapshot and conf state drawn (extremes included): decode(encode(b)) is
/// b, and the bytes are canonical.
#[test]
fn random_batches_round_trip() {
    let mut rng = SplitMix64::new(1);
    let mut bytes = 0;
    for _ in 0..1500 {
        let (from, to, msgs) = random_batch(&mut rng);
        bytes += round_trip(from, to, &msgs).len();
    }
    eprintln!("{bytes} bytes round-tripped");
}

/// Batches back to back on a stream, arriving in random pieces, framed with
/// `peek_batch_len` (an incomplete batch is `Ok(None)` or a length beyond
/// what has arrived, never an error).
#[test]
fn stream_framing_with_peek() {
    let mut rng = SplitMix64::new(2);
    let mut stream = Vec::new();
    let mut sent = Vec::new();
    for _ in 0..60 {
        let (from, to, msgs) = random_batch(&mut rng);
        encode_batch(from, to, &msgs, &mut stream).expect("encode");
        sent.push(msgs);
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut received = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let n = (rng.range(1, 3000) as usize).min(stream.len() - at);
        buf.extend_from_slice(&stream[at..at + n]);
        at += n;
        loop {
            match peek_batch_len(&buf).expect("peek") {
                Some(len) if len <= buf.len() => {
                    let batch = decode_batch(&buf[..len]).expect("decode");
                    received.push(batch.messages);
                    buf.drain(..len);
                }
                _ => break,
            }
        }
    }
    assert!(buf.is_empty());
    assert_eq!(received.len(), sent.len());
    for (s, r) in sent.iter().zip(&received) {
        assert_same(s, r);
    }
}

// ------------------------------------------------------------ refusals

/// A small batch of realistic messages: votes, heartbeats, an append with
/// entries and a snapshot with a conf state.
fn sample_batch() -> Vec<(u64, Message)> {
    let mut out = Vec::new();
    let mut hb = Message::default();
    hb.set_msg_type(MessageType::MsgHeartbeat);
    (hb.to, hb.from, hb.term, hb.commit) = (2, 1, 5, 40);
    out.push((7, hb.clone()));
    hb.set_msg_type(MessageType::MsgHeartbeatResponse);
    (hb.to, hb.from) = (1, 2);
    out.push((8, hb));
    let mut app = Message::default();
    app.set_msg_type(MessageType::MsgAppend);
    (
        app.to,
        app.from,
        app.term,
        app.log_term,
        app.index,
        app.commit,
    ) = (3, 1, 5, 5, 41, 40);
    let mut e = Entry::default();
    (e.term, e.index, e.data) = (5, 42, Bytes::from_static(b"record batch frame"));
    let mut e2 = e.clone();
    (e2.index, e2.context) = (43, Bytes::from_static(b"ctx"));
    app.entries = vec![e, e2].into();
    out.push((9, app));
    let mut vote = Message::default();
    vote.set_msg_type(MessageType::MsgRequestVoteResponse);
    (vote.to, vote.from, vote.term, vote.reject) = (1, 3, 6, true);
    vote.context = Bytes::from_static(b"CampaignTransfer");
    out.push((10, vote));
    let mut snap = Message::default();
    snap.set_msg_type(MessageType::MsgSnapshot);
    (snap.to, snap.from, snap.term) = (2, 1, 5);
    let mut s = Snapshot {
        data: Bytes::from_static(b"log start 42"),
        ..Snapshot::default()
    };
    let mut meta = SnapshotMetadata {
        index: 42,
        term: 5,
        ..SnapshotMetadata::default()
    };
    meta.set_conf_state(ConfState::from((vec![1, 2, 3], vec![4])));
    s.set_metadata(meta);
    snap.set_snapshot(s);
    out.push((11, snap));
    out
}

/// Every prefix of a valid batch is refused by `decode_batch`, and
/// `peek_batch_len` reports it incomplete; with the length and checksum
/// forged to fit the prefix, the body is still refused.
#[test]
fn every_truncation_is_refused() {
    let mut rng = SplitMix64::new(3);
    let mut inputs = vec![encode(1, 2, &sample_batch())];
    while inputs.len() < 12 {
        let (from, to, msgs) = random_batch(&mut rng);
        let b = encode(from, to, &msgs);
        if b.len() < 6000 {
            inputs.push(b);
        }
    }
    let mut checked = 0;
    for full in &inputs {
        for cut in 0..full.len() {
            let prefix = &full[..cut];
            assert!(decode_batch(prefix).is_err(), "prefix {cut} decodes");
            match peek_batch_len(prefix) {
                Ok(None) => assert!(cut < BATCH_HEADER_BYTES),
                Ok(Some(len)) => assert_eq!(len, full.len()),
                Err(e) => panic!("peek of prefix {cut}: {e}"),
            }
            if cut >= BATCH_HEADER_BYTES {
                let mut forged = prefix.to_vec();
                let (h, _) = BatchHeader::mut_from_prefix(&mut forged[..]).expect("header");
                h.batch_len = U32::new(cut as u32);
                stamp_checksum(&mut forged);
                assert!(
                    decode_batch(&forged).is_err(),
                    "forged prefix {cut} decodes"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 5000, "{checked}");
}

/// Every single-byte corruption of a valid batch is refused: bytes of the
/// magic, version, flags, reserved and length fields by their own checks,
/// every other byte by the checksum.
#[test]
fn every_single_byte_corruption_is_refused() {
    let mut rng = SplitMix64::new(4);
    let mut inputs = vec![encode(1, 2, &sample_batch())];
    while inputs.len() < 4 {
        let (from, to, msgs) = random_batch(&mut rng);
        let b = encode(from, to, &msgs);
        if b.len() < 3000 {
            inputs.push(b);
        }
    }
    let mut checked = 0;
    for good in &inputs {
        for pos in 0..good.len() {
            for xor in [0x01, 0x80, 0xFF, rng.range(1, 256) as u8] {
                let mut bad = good.clone();
                bad[pos] ^= xor;
                let err = decode_batch(&bad).expect_err("a corrupted batch decodes");
                match pos {
                    0..=3 => assert!(matches!(err, WireError::BadMagic { .. }), "{err}"),
                    4 => assert!(matches!(err, WireError::UnsupportedVersion { .. })),
                    5 => assert!(matches!(err, WireError::UnknownFlags { .. })),
                    6 | 7 => assert!(matches!(err, WireError::ReservedNonZero { .. })),
                    8..=11 => assert!(matches!(
                        err,
                        WireError::LengthMismatch { .. }
                            | WireError::BatchTooShort { .. }
                            | WireError::BatchTooLarge { .. }
                    )),
                    _ => assert!(
                        matches!(err, WireError::Checksum { .. }),
                        "byte {pos} ^ {xor:#x}: {err}"
                    ),
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 4000, "{checked}");
}

/// Offsets of the parts of `sample_batch()`'s append (message 2) and
/// snapshot (message 4).
struct SampleOffsets {
    append: usize,
    append_entry0: usize,
    snapshot_message: usize,
    snapshot: usize,
}

fn sample_offsets() -> SampleOffsets {
    let msgs = sample_batch();
    let mut at = BATCH_HEADER_BYTES;
    let mut offsets = Vec::new();
    for (_, m) in &msgs {
        offsets.push(at);
        at += MESSAGE_HEADER_BYTES + m.context.len();
        for e in m.get_entries() {
            at += ENTRY_HEADER_BYTES + e.data.len() + e.context.len();
        }
        if let Some(s) = m.snapshot.as_ref() {
            at += wire::SNAPSHOT_HEADER_BYTES + s.data.len() + 8 * 4;
        }
    }
    assert_eq!(at, encode(1, 2, &msgs).len());
    SampleOffsets {
        append: offsets[2],
        append_entry0: offsets[2] + MESSAGE_HEADER_BYTES,
        snapshot_message: offsets[4],
        snapshot: offsets[4] + MESSAGE_HEADER_BYTES,
    }
}

/// Applies `patch` to a valid sample batch, forges length and checksum, and
/// returns the decoder's verdict.
fn forged(patch: impl FnOnce(&mut Vec<u8>)) -> Result<wire::Batch, WireError> {
    let mut buf = encode(1, 2, &sample_batch());
    patch(&mut buf);
    let len = buf.len() as u32;
    if let Ok((h, _)) = BatchHeader::mut_from_prefix(&mut buf[..]) {
        h.batch_len = U32::new(len);
    }
    stamp_checksum(&mut buf);
    let (r, allocated) = decode_measured(&buf);
    assert_alloc_bounded(buf.len(), allocated);
    r
}

fn message_header(buf: &mut [u8], at: usize) -> &mut MessageHeader {
    MessageHeader::mut_from_prefix(&mut buf[at..])
        .expect("message")
        .0
}

fn entry_header(buf: &mut [u8], at: usize) -> &mut EntryHeader {
    EntryHeader::mut_from_prefix(&mut buf[at..])
        .expect("entry")
        .0
}

fn snapshot_header(buf: &mut [u8], at: usize) -> &mut SnapshotHeader {
    SnapshotHeader::mut_from_prefix(&mut buf[at..])
        .expect("snapshot")
        .0
}

/// Structurally invalid batches behind a valid checksum (what a buggy or
/// hostile peer could send) are refused with the error that names the
/// problem, before any allocation the bytes cannot back.
#[test]
fn forged_structural_corruptions_are_refused() {
    let o = sample_offsets();
    assert!(forged(|_| {}).is_ok());
    let m2 = Place::Message { message: 2 };
    let e0 = Place::Entry {
        message: 2,
        entry: 0,
    };
    let s4 = Place::Snapshot { message: 4 };

    let r = forged(|b| message_header(b, o.append).msg_type = 19);
    assert_eq!(
        r,
        Err(WireError::UnknownMessageType {
            place: m2,
            value: 19
        })
    );
    let r = forged(|b| entry_header(b, o.append_entry0).entry_type = 3);
    assert_eq!(
        r,
        Err(WireError::UnknownEntryType {
            place: e0,
            value: 3
        })
    );
    let r = forged(|b| message_header(b, o.append).flags = 4);
    assert_eq!(
        r,
        Err(WireError::UnknownFlags {
            place: m2,
            flags: 4
        })
    );
    let r = forged(|b| message_header(b, o.append).reserved = U16::new(1));
    assert_eq!(r, Err(WireError::ReservedNonZero { place: m2 }));
    let r = forged(|b| entry_header(b, o.append_entry0).flags = 2);
    assert_eq!(
        r,
        Err(WireError::UnknownFlags {
            place: e0,
            flags: 2
        })
    );
    let r = forged(|b| snapshot_header(b, o.snapshot).reserved0 = 1);
    assert_eq!(r, Err(WireError::ReservedNonZero { place: s4 }));
    let r = forged(|b| snapshot_header(b, o.snapshot).flags = 8);
    assert_eq!(
        r,
        Err(WireError::UnknownFlags {
            place: s4,
            flags: 8
        })
    );

    // Counts and lengths over their limits.
    let r = forged(|b| {
        message_header(b, o.append).entry_count = U32::new(ENTRIES_PER_MESSAGE_MAX as u32 + 1)
    });
    assert!(
        matches!(
            r,
            Err(WireError::TooMany {
                what: "entries",
                ..
            })
        ),
        "{r:?}"
    );
    let r = forged(|b| message_header(b, o.append).context_len = U32::new(u32::MAX));
    assert!(
        matches!(
            r,
            Err(WireError::TooLong {
                what: "message context",
                ..
            })
        ),
        "{r:?}"
    );
    let r = forged(|b| entry_header(b, o.append_entry0).data_len = U32::new(u32::MAX));
    assert!(
        matches!(
            r,
            Err(WireError::TooLong {
                what: "entry data",
                ..
            })
        ),
        "{r:?}"
    );
    let r =
        forged(|b| snapshot_header(b, o.snapshot).voters_count = U16::new(VOTERS_MAX as u16 + 1));
    assert!(
        matches!(r, Err(WireError::TooMany { what: "voters", .. })),
        "{r:?}"
    );
    let r = forged(|b| {
        let (h, _) = BatchHeader::mut_from_prefix(&mut b[..]).expect("h");
        h.message_count = U32::new(MESSAGES_PER_BATCH_MAX as u32 + 1);
    });
    assert!(
        matches!(
            r,
            Err(WireError::TooMany {
                what: "messages",
                ..
            })
        ),
        "{r:?}"
    );

    // Counts within limits that the bytes cannot hold: refused before the
    // allocation (forged() measures it).
    let r = forged(|b| {
        let (h, _) = BatchHeader::mut_from_prefix(&mut b[..]).expect("h");
        h.message_count = U32::new(MESSAGES_PER_BATCH_MAX as u32);
    });
    assert!(
        matches!(
            r,
            Err(WireError::Truncated {
                place: Place::Batch,
                ..
            })
        ),
        "{r:?}"
    );
    let r = forged(|b| {
        message_header(b, o.append).entry_count = U32::new(ENTRIES_PER_MESSAGE_MAX as u32)
    });
    assert!(
        matches!(r, Err(WireError::Truncated { place, .. }) if place == m2),
        "{r:?}"
    );
    let r = forged(|b| entry_header(b, o.append_entry0).data_len = U32::new(1 << 20));
    assert!(matches!(r, Err(WireError::Truncated { .. })), "{r:?}");

    // Fewer or more messages than the bytes hold.
    let r = forged(|b| {
        let (h, _) = BatchHeader::mut_from_prefix(&mut b[..]).expect("h");
        h.message_count = U32::new(4);
    });
    assert!(matches!(r, Err(WireError::TrailingBytes { .. })), "{r:?}");
    let r = forged(|b| b.push(0));
    assert_eq!(r, Err(WireError::TrailingBytes { count: 1 }));
    let r = forged(|b| {
        let (h, _) = BatchHeader::mut_from_prefix(&mut b[..]).expect("h");
        h.message_count = U32::new(6);
    });
    assert!(matches!(r, Err(WireError::Truncated { .. })), "{r:?}");

    // Node ids.
    let r = forged(|b| {
        let (h, _) = BatchHeader::mut_from_prefix(&mut b[..]).expect("h");
        h.from_node = U64::new(0);
    });
    assert_eq!(r, Err(WireError::ZeroNodeId { side: "sender" }));

    // Snapshot presence: metadata fields without metadata, conf state
    // fields without a conf state.
    let r = forged(|b| snapshot_header(b, o.snapshot).flags = 0);
    assert!(matches!(r, Err(WireError::NonCanonical { .. })), "{r:?}");
    let r = forged(|b| snapshot_header(b, o.snapshot).flags = wire::SNAPSHOT_FLAG_METADATA);
    assert!(matches!(r, Err(WireError::NonCanonical { .. })), "{r:?}");
    // The snapshot flag cleared: its bytes are left over.
    let r = forged(|b| message_header(b, o.snapshot_message).flags = 0);
    assert!(matches!(r, Err(WireError::TrailingBytes { .. })), "{r:?}");
}

fn message_with(f: impl FnOnce(&mut Message)) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    f(&mut m);
    m
}

/// Encodes `msg` alone, expecting success, and checks that it decodes.
fn fits(msg: Message) {
    let msgs = vec![(1, msg)];
    let buf = encode(1, 2, &msgs);
    let batch = decode_batch(&buf).expect("a message at its limits decodes");
    assert_same(&msgs, &batch.messages);
}

/// Encodes `msg` alone after some bytes already in `out`, expecting a
/// refusal that leaves `out` untouched.
fn refused(msg: Message) -> WireError {
    let mut out = b"earlier batches".to_vec();
    let err = encode_batch(1, 2, &[(1, msg)], &mut out).expect_err("over a limit");
    assert_eq!(out, b"earlier batches");
    err
}

/// Every limit holds at its maximum and refuses one past it when encoding
/// (and the decoder agrees at the maximum).
#[test]
fn limits_on_encode() {
    let bytes = |n: usize| Bytes::from(vec![0x5A; n]);
    fits(message_with(|m| m.context = bytes(CONTEXT_BYTES_MAX)));
    let e = refused(message_with(|m| m.context = bytes(CONTEXT_BYTES_MAX + 1)));
    assert!(
        matches!(
            e,
            WireError::TooLong {
                what: "message context",
                ..
            }
        ),
        "{e}"
    );

    let entry = |data: usize, context: usize| {
        let mut e = Entry::default();
        (e.data, e.context) = (bytes(data), bytes(context));
        e
    };
    fits(message_with(|m| {
        m.entries = vec![entry(ENTRY_BYTES_MAX, CONTEXT_BYTES_MAX)].into()
    }));
    let e = refused(message_with(|m| {
        m.entries = vec![entry(ENTRY_BYTES_MAX + 1, 0)].into()
    }));
    assert!(
        matches!(
            e,
            WireError::TooLong {
                what: "entry data",
                ..
            }
        ),
        "{e}"
    );
    let e = refused(message_with(|m| {
        m.entries = vec![entry(0, 0), entry(0, CONTEXT_BYTES_MAX + 1)].into()
    }));
    assert_eq!(
        e,
        WireError::TooLong {
            place: Place::Entry {
                message: 0,
                entry: 1
            },
            what: "entry context",
            len_bytes: CONTEXT_BYTES_MAX as u64 + 1,
            max_bytes: CONTEXT_BYTES_MAX as u64,
        }
    );

    fits(message_with(|m| {
        m.entries = vec![Entry::default(); ENTRIES_PER_MESSAGE_MAX].into()
    }));
    let e = refused(message_with(|m| {
        m.entries = vec![Entry::default(); ENTRIES_PER_MESSAGE_MAX + 1].into()
    }));
    assert!(
        matches!(
            e,
            WireError::TooMany {
                what: "entries",
                ..
            }
        ),
        "{e}"
    );

    let snapshot = |voters: usize, learners: usize, data: usize| {
        let mut s = Snapshot {
            data: bytes(data),
            ..Snapshot::default()
        };
        let mut meta = SnapshotMetadata::default();
        let voters: Vec<u64> = (1..=voters as u64).collect();
        let learners: Vec<u64> = (100..100 + learners as u64).collect();
        meta.set_conf_state(ConfState {
            voters: voters.clone(),
            voters_outgoing: voters,
            learners: learners.clone(),
            learners_next: learners,
            ..ConfState::default()
        });
        s.set_metadata(meta);
        s
    };
    fits(message_with(|m| {
        m.set_snapshot(snapshot(VOTERS_MAX, LEARNERS_MAX, SNAPSHOT_BYTES_MAX))
    }));
    let e = refused(message_with(|m| {
        m.set_snapshot(snapshot(VOTERS_MAX + 1, 0, 0))
    }));
    assert!(
        matches!(e, WireError::TooMany { what: "voters", .. }),
        "{e}"
    );
    let e = refused(message_with(|m| {
        m.set_snapshot(snapshot(0, LEARNERS_MAX + 1, 0))
    }));
    assert!(
        matches!(
            e,
            WireError::TooMany {
                what: "learners",
                ..
            }
        ),
        "{e}"
    );
    let e = refused(message_with(|m| {
        m.set_snapshot(snapshot(0, 0, SNAPSHOT_BYTES_MAX + 1))
    }));
    assert!(
        matches!(
            e,
            WireError::TooLong {
                what: "snapshot data",
                ..
            }
        ),
        "{e}"
    );

    // Messages per batch.
    let many = vec![(1, Message::default()); MESSAGES_PER_BATCH_MAX];
    let buf = encode(1, 2, &many);
    assert_eq!(
        decode_batch(&buf).expect("decode").messages.len(),
        many.len()
    );
    let mut too_many = many;
    too_many.push((1, Message::default()));
    let mut out = Vec::new();
    let e = encode_batch(1, 2, &too_many, &mut out).expect_err("too many");
    assert!(
        matches!(
            e,
            WireError::TooMany {
                what: "messages",
                ..
            }
        ),
        "{e}"
    );
    assert!(out.is_empty());

    // Node ids.
    let mut out = Vec::new();
    assert_eq!(
        encode_batch(0, 2, &[], &mut out),
        Err(WireError::ZeroNodeId { side: "sender" })
    );
    assert_eq!(
        encode_batch(1, 0, &[], &mut out),
        Err(WireError::ZeroNodeId { side: "receiver" })
    );
    assert!(out.is_empty());
}

/// A batch fills up: the encoder refuses the message that would pass
/// `BATCH_BYTES_MAX` (leaving the batch as it was, ready to finish), and a
/// fresh batch takes it.
#[test]
fn batch_bytes_limit_on_encode() {
    let big = Bytes::from(vec![7u8; ENTRY_BYTES_MAX]);
    let append = message_with(|m| {
        let e = Entry {
            data: big.clone(),
            ..Entry::default()
        };
        m.entries = vec![e].into();
    });
    let mut out = Vec::new();
    let mut enc = BatchEncoder::new(&mut out, 1, 2).expect("encoder");
    let mut pushed = 0;
    let err = loop {
        let before = enc.len_bytes();
        match enc.push(pushed, &append) {
            Ok(()) => pushed += 1,
            Err(e) => {
                assert_eq!(enc.len_bytes(), before, "a refused push leaves the batch");
                break e;
            }
        }
    };
    assert!(matches!(err, WireError::BatchFull { .. }), "{err}");
    assert_eq!(pushed, 3);
    let len = enc.finish();
    assert!(len <= BATCH_BYTES_MAX);
    assert_eq!(out.len(), len);
    let batch = decode_batch(&out).expect("a full batch decodes");
    assert_eq!(batch.messages.len(), 3);
    let four = vec![(1, append); 4];
    let e = encode_batch(1, 2, &four, &mut Vec::new()).expect_err("too large");
    assert!(matches!(e, WireError::BatchFull { .. }), "{e}");

    // A single message larger than any batch can hold: not BatchFull (a
    // fresh batch would not help).
    let huge = message_with(|m| {
        let e = Entry {
            data: big.clone(),
            ..Entry::default()
        };
        m.entries = vec![e; 4].into();
    });
    let e = refused(huge);
    assert!(
        matches!(
            e,
            WireError::TooLong {
                what: "message",
                ..
            }
        ),
        "{e}"
    );
}

// ------------------------------------------------------------ fuzz-style

fn mutate(rng: &mut SplitMix64, buf: &mut Vec<u8>) {
    let interesting: [u32; 9] = [
        0,
        1,
        u32::MAX,
        u32::MAX / 2,
        MESSAGES_PER_BATCH_MAX as u32,
        ENTRIES_PER_MESSAGE_MAX as u32 + 1,
        CONTEXT_BYTES_MAX as u32,
        BATCH_BYTES_MAX as u32,
        buf.len() as u32,
    ];
    for _ in 0..rng.range(1, 4) {
        let len = buf.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len as u64) as usize;
                buf[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len as u64) as usize;
                buf[i] = rng.next_u64() as u8;
            }
            2 if len >= 4 => {
                let i = rng.below(len as u64 - 3) as usize;
                let v = interesting[rng.below(interesting.len() as u64) as usize];
                buf[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            3 => buf.truncate(rng.below(len as u64 + 1) as usize),
            4 => {
                let i = rng.below(len as u64 + 1) as usize;
                let n = rng.range(1, 16) as usize;
                let junk: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                buf.splice(i..i, junk);
            }
            5 if len > 0 => {
                let i = rng.below(len as u64) as usize;
                let n = (rng.range(1, 64) as usize).min(len - i);
                buf.drain(i..i + n);
            }
            _ => {}
        }
    }
}

/// Random bytes and mutated valid batches (with and without the checksum
/// repaired) never make the decoder panic, and its allocations stay within
/// a small multiple of the input. Runs the fuzz target's own check.
/// `STROM_WIRE_FUZZ_SECS=N` runs for N seconds instead of at most 60,000
/// inputs in 3 s; `STROM_WIRE_FUZZ_SEED` picks another seed.
#[test]
fn fuzz_style_inputs_never_panic() {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let long = env("STROM_WIRE_FUZZ_SECS");
    let (runs_max, budget) = match long {
        Some(secs) => (usize::MAX, Duration::from_secs(secs)),
        None => (60_000, Duration::from_secs(3)),
    };
    let seed = env("STROM_WIRE_FUZZ_SEED").unwrap_or(5);
    eprintln!("seed {seed} (replay: STROM_WIRE_FUZZ_SEED={seed})");
    let started = Instant::now();
    let mut rng = SplitMix64::new(seed);
    let mut valid = vec![encode(1, 2, &sample_batch())];
    while valid.len() < 32 {
        let (from, to, msgs) = random_batch(&mut rng);
        let b = encode(from, to, &msgs);
        if b.len() < 20_000 {
            valid.push(b);
        }
    }
    let mut runs = 0;
    let mut decoded = 0;
    while runs < runs_max && started.elapsed() < budget {
        let mut input = match rng.below(4) {
            0 => {
                let n = rng.below(400) as usize;
                (0..n).map(|_| rng.next_u64() as u8).collect()
            }
            1 => {
                // A valid header shape in front of random bytes.
                let mut b = valid[0][..BATCH_HEADER_BYTES].to_vec();
                let n = rng.below(400) as usize;
                b.extend((0..n).map(|_| rng.next_u64() as u8));
                b
            }
            _ => valid[rng.below(valid.len() as u64) as usize].clone(),
        };
        mutate(&mut rng, &mut input);
        if rng.chance_per_mille(500) && input.len() >= BATCH_HEADER_BYTES {
            let len = input.len() as u32;
            let (h, _) = BatchHeader::mut_from_prefix(&mut input[..]).expect("header");
            h.batch_len = U32::new(len);
            stamp_checksum(&mut input);
        }
        let (r, allocated) = decode_measured(&input);
        assert_alloc_bounded(input.len(), allocated);
        decoded += usize::from(r.is_ok());
        wire::fuzz_check(&input);
        runs += 1;
    }
    eprintln!(
        "{runs} inputs, {decoded} decoded, in {:?}",
        started.elapsed()
    );
    assert!(runs >= 2_000, "only {runs} inputs in the time budget");
}

/// The worst cases for allocation per input byte: many empty messages,
/// many empty entries, many snapshots with metadata and a conf state.
#[test]
fn decode_allocation_is_bounded() {
    let empty = vec![(1, Message::default()); 10_000];
    let entries = vec![(
        1,
        message_with(|m| m.entries = vec![Entry::default(); 100_000].into()),
    )];
    let mut snap = Snapshot::default();
    let mut meta = SnapshotMetadata::default();
    meta.set_conf_state(ConfState::default());
    snap.set_metadata(meta);
    let snaps = vec![(1, message_with(|m| m.set_snapshot(snap.clone()))); 10_000];
    for (what, msgs) in [
        ("messages", empty),
        ("entries", entries),
        ("snapshots", snaps),
    ] {
        let buf = encode(1, 2, &msgs);
        let (r, allocated) = decode_measured(&buf);
        r.expect("decode");
        eprintln!(
            "{what}: {} bytes decoded with {allocated} allocated ({:.2} per byte)",
            buf.len(),
            allocated as f64 / buf.len() as f64
        );
        assert_alloc_bounded(buf.len(), allocated);
    }
}

// ------------------------------------------------------------ fuzz corpus

const FUZZ_TARGET: &str = "replication_wire";

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(FUZZ_TARGET)
}

/// Replays every committed input of the `replication_wire` fuzz target
/// through the target's own check.
#[test]
fn fuzz_corpus_replays() {
    let dir = corpus_dir();
    let started = Instant::now();
    let mut n = 0;
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for e in entries {
        let p = e.expect("corpus entry").path();
        if p.is_file() {
            let data = std::fs::read(&p).expect("read corpus file");
            eprintln!("replaying {}", p.display());
            wire::fuzz_check(&data);
            n += 1;
        }
    }
    eprintln!("{FUZZ_TARGET}: {n} inputs in {:?}", started.elapsed());
    assert!(n >= 6, "{n} corpus inputs");
}

/// Rewrites the hand-made seeds of `fuzz/corpus/replication_wire/`.
#[test]
#[ignore = "rewrites fuzz/corpus seeds"]
fn write_seed_corpus() {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).expect("mkdir");
    let write = |name: &str, data: &[u8]| std::fs::write(dir.join(name), data).expect("write");
    let sample = sample_batch();
    write("seed-empty", &encode(1, 2, &[]));
    write("seed-mixed", &encode(1, 2, &sample));
    write("seed-heartbeats", &encode(3, 1, &sample[..2]));
    write("seed-append", &encode(1, 3, &sample[2..3]));
    write("seed-snapshot", &encode(1, 2, &sample[4..]));
    let mut rng = SplitMix64::new(6);
    loop {
        let (from, to, msgs) = random_batch(&mut rng);
        let b = encode(from, to, &msgs);
        if (1000..4000).contains(&b.len()) {
            write("seed-random", &b);
            break;
        }
    }
    let mut bad = encode(1, 2, &sample);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    write("seed-bad-checksum", &bad);
    let good = encode(1, 2, &sample);
    write("seed-truncated", &good[..good.len() - 5]);
}
