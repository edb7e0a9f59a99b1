//! `EngineStore` on the fault-injecting storage: what a crash keeps and
//! loses, at every I/O step of a persist, and a seeded three-replica
//! cluster of `ReplicaCore`s over it that crashes (losing and tearing
//! unsynced writes) and must lose no acks=all acknowledgement.
//!
//! `FaultyStorage` futures complete at once, so `block_on` drives them.
//! A crash "at step k" arms `fail_after(k)` (every operation from the k-th
//! on fails with EIO), runs the persist, then `crash()`es the storage: the
//! unsynced writes settle as a random prefix, the next one possibly torn.
//!
//! - `STROM_ENGINE_STORE_SEEDS`: cluster schedules to run (default 200);
//! - `STROM_ENGINE_STORE_SEED`: replay one seed, with
//!   `STROM_ENGINE_STORE_TRACE=1` to print its events.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_lite::future::block_on;
use raft::eraftpb::{Entry, EntryType, HardState, Message, MessageType, Snapshot};
use raft::{GetEntriesContext, Storage as _, StorageError};
use strom_engine::storage::{FaultKind, FaultyStorage, Storage as _};
use strom_engine::{Log, LogConfig};
use strom_replication::engine_store::hard_state_slots;
use strom_replication::engine_store::{
    decode_snapshot, frame_term, EngineStore, StoreOpenError, StoreRecovery, HARD_STATE_FILE,
    HARD_STATE_SLOT_BYTES,
};
use strom_replication::rng::SplitMix64;
use strom_replication::{Acks, Action, LogStore, ProposalId, ReplicaConfig, ReplicaCore};

mod common;
use common::{frame, tag};

type Store = EngineStore<FaultyStorage>;

const VOTERS: [u64; 3] = [1, 2, 3];

fn dir() -> PathBuf {
    PathBuf::from("replica")
}

/// Small segments and steps, so that a few entries roll segments.
fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        segment_ms: None,
        retention_bytes: None,
        retention_ms: None,
        frame_bytes_max: 32 << 10,
        cache_bytes_max: 8 << 10,
        index_interval_bytes: 512,
        preallocate_bytes: 16 << 10,
        write_buffer_bytes: 64 << 10,
        unwritten_bytes_max: 128 << 10,
        read_ahead_bytes: 8 << 10,
        checkpoint_interval_bytes: 8 << 10,
        disk_reserve_bytes: 0,
        ..LogConfig::default()
    }
}

fn entry(index: u64, term: u64, tag: &str, records: usize) -> Entry {
    Entry {
        index,
        term,
        data: frame(tag, records),
        ..Default::default()
    }
}

fn noop(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        ..Default::default()
    }
}

fn conf_change(index: u64, term: u64) -> Entry {
    let mut e = Entry {
        index,
        term,
        data: Bytes::from_static(b"conf-change-bytes"),
        context: Bytes::from_static(b"ctx"),
        ..Default::default()
    };
    e.set_entry_type(EntryType::EntryConfChange);
    e
}

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

fn open(storage: &FaultyStorage) -> Result<(Store, StoreRecovery), StoreOpenError> {
    block_on(EngineStore::open(
        storage.clone(),
        &dir(),
        &VOTERS,
        config(),
        0,
    ))
}

fn persist_all(store: &mut Store) {
    let seq = store.write_seq();
    block_on(store.persist(seq, 0)).expect("persist");
    store.mark_synced(seq).expect("mark synced");
}

/// Persists everything staged with a crash at I/O step `k` of the persist;
/// returns whether the persist completed before the fault.
fn persist_crashing_at(storage: &FaultyStorage, store: Store, k: u64) -> bool {
    let seq = store.write_seq();
    storage.fail_after(k, FaultKind::Eio);
    let done = block_on(store.persist(seq, 0)).is_ok();
    drop(store);
    storage.crash();
    storage.clear_faults();
    done
}

/// (term, tag) of every entry from the first index on.
fn log_of(store: &Store) -> Vec<(u64, u64, Option<String>)> {
    (store.first_index()..=store.last_index())
        .map(|i| {
            let e = store.entry(i).expect("held");
            (i, e.term, tag(&e.data))
        })
        .collect()
}

fn list(storage: &FaultyStorage, dir: &Path) -> Vec<String> {
    block_on(storage.list(dir)).unwrap()
}

#[test]
fn persisted_entries_survive_a_crash_with_their_terms_and_unpersisted_do_not() {
    let storage = FaultyStorage::new(1);
    let (mut store, rec) = open(&storage).unwrap();
    assert!(rec.created);
    store.append(vec![
        noop(1, 1),
        entry(2, 1, "a", 2),
        entry(3, 1, "b", 1),
        noop(4, 2),
        entry(5, 2, "c", 3),
        conf_change(6, 3),
        entry(7, 3, "d", 1),
    ]);
    store.set_hard_state(hs(3, 2, 5));
    persist_all(&mut store);
    // Staged, never persisted.
    store.append(vec![entry(8, 3, "e", 1)]);
    store.set_hard_state(hs(4, 0, 7));
    assert_eq!(store.last_index(), 8);
    drop(store);
    storage.crash();

    let (store, rec) = open(&storage).unwrap();
    assert!(!rec.created);
    assert_eq!(rec.entries, 7);
    assert_eq!(rec.commit_clamped_from, None);
    assert_eq!(store.last_index(), 7, "entry 8 was never persisted");
    assert_eq!(store.hard_state(), &hs(3, 2, 5));
    let terms: Vec<u64> = (1..=7).map(|i| store.term(i).unwrap()).collect();
    assert_eq!(terms, vec![1, 1, 1, 2, 2, 3, 3]);
    // Offsets: a control frame takes one, a producer frame its records.
    let offsets: Vec<u64> = (1..=7)
        .map(|i| store.slot(i).unwrap().base_offset)
        .collect();
    assert_eq!(offsets, vec![0, 1, 3, 4, 5, 8, 9]);
    assert_eq!(store.offset_after(7), Some(10));
    // Frames carry the term in leader_epoch, control frames the marker.
    for i in 1..=7 {
        let s = store.slot(i).unwrap();
        assert_eq!(frame_term(&s.frame), Some(s.term));
        assert_eq!(s.is_control(), [1, 4, 6].contains(&i), "entry {i}");
    }
    // raft-rs reads back what it appended.
    let es = store
        .entries(1, 8, None, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(es.len(), 7);
    assert!(es[0].data.is_empty() && es[0].get_entry_type() == EntryType::EntryNormal);
    assert_eq!(tag(&es[1].data).as_deref(), Some("a"));
    assert_eq!(es[5].get_entry_type(), EntryType::EntryConfChange);
    assert_eq!(&es[5].data[..], b"conf-change-bytes");
    assert_eq!(&es[5].context[..], b"ctx");
    assert_eq!(tag(&es[6].data).as_deref(), Some("d"));
    // A size limit still returns at least one entry.
    let one = store
        .entries(2, 8, 1, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(store.voters(), VOTERS.to_vec());
}

#[test]
fn a_crash_at_any_step_of_a_persist_keeps_the_old_state_or_a_valid_newer_one() {
    let mut completed = false;
    let mut k = 0;
    let mut partial = 0;
    while !completed {
        let storage = FaultyStorage::new(100 + k);
        let (mut store, _) = open(&storage).unwrap();
        store.append((1..=4).map(|i| entry(i, 1, "old", 2)).collect());
        store.set_hard_state(hs(1, 1, 2));
        persist_all(&mut store);
        // Many frames (past a segment), then the hard state.
        store.append((5..=60).map(|i| entry(i, 2, "new", 3)).collect());
        store.set_hard_state(hs(2, 1, 40));
        completed = persist_crashing_at(&storage, store, k);
        let (store, _) = open(&storage).unwrap_or_else(|e| panic!("step {k}: {e}"));
        let hs_now = store.hard_state().clone();
        let last = store.last_index();
        assert!(
            hs_now == hs(1, 1, 2) || hs_now == hs(2, 1, 40),
            "step {k}: {hs_now:?}"
        );
        assert!(last >= 4, "step {k}: persisted entries lost ({last})");
        if hs_now.commit == 40 {
            assert_eq!(last, 60, "step {k}: the hard state came before its log");
        }
        if completed {
            assert_eq!(last, 60);
        } else if last > 4 && last < 60 {
            partial += 1;
        }
        for (i, term, t) in log_of(&store) {
            let want = if i <= 4 { (1, "old") } else { (2, "new") };
            assert_eq!(
                (term, t.as_deref()),
                (want.0, Some(want.1)),
                "step {k} entry {i}"
            );
        }
        k += 1;
    }
    assert!(k > 10, "the persist took {k} steps");
    assert!(partial > 0, "no crash left a partial log");
}

#[test]
fn a_conflicting_suffix_is_replaced_across_a_crash() {
    let storage = FaultyStorage::new(2);
    let (mut store, _) = open(&storage).unwrap();
    store.append((1..=5).map(|i| entry(i, 1, "t1", 2)).collect());
    store.set_hard_state(hs(1, 1, 2));
    persist_all(&mut store);
    // Staged only: a crash undoes the replacement.
    store.append(vec![entry(3, 2, "t2", 1)]);
    assert_eq!(store.last_index(), 3);
    drop(store);
    storage.crash();
    let (mut store, _) = open(&storage).unwrap();
    assert_eq!(store.last_index(), 5);
    assert_eq!(store.term(3).unwrap(), 1);
    // Persisted: the replacement holds.
    store.append(vec![entry(3, 2, "x", 1), entry(4, 2, "y", 4)]);
    persist_all(&mut store);
    drop(store);
    storage.crash();
    let (store, _) = open(&storage).unwrap();
    assert_eq!(
        log_of(&store),
        vec![
            (1, 1, Some("t1".into())),
            (2, 1, Some("t1".into())),
            (3, 2, Some("x".into())),
            (4, 2, Some("y".into())),
        ]
    );
    assert_eq!(
        store.slot(3).unwrap().base_offset,
        4,
        "after two 2-record frames"
    );
    assert_eq!(store.offset_after(4), Some(9));

    // A crash at every step of a replacement: the old suffix or a prefix
    // of the new one, never a mix, never below the commit.
    let mut k = 0;
    loop {
        let storage = FaultyStorage::new(200 + k);
        let (mut store, _) = open(&storage).unwrap();
        store.append((1..=30).map(|i| entry(i, 1, "t1", 2)).collect());
        store.set_hard_state(hs(1, 1, 10));
        persist_all(&mut store);
        store.append((11..=40).map(|i| entry(i, 2, "t2", 1)).collect());
        let done = persist_crashing_at(&storage, store, k);
        let (store, _) = open(&storage).unwrap();
        let log = log_of(&store);
        assert!(log.len() >= 10, "step {k}: committed entries lost");
        let replaced = log.iter().any(|(_, t, _)| *t == 2);
        for (i, term, t) in &log {
            let want = if *i <= 10 || !replaced {
                (1, "t1")
            } else {
                (2, "t2")
            };
            assert_eq!(
                (*term, t.as_deref()),
                (want.0, Some(want.1)),
                "step {k} entry {i}"
            );
        }
        if !replaced {
            assert!(
                log.len() == 30 || log.len() == 10,
                "step {k}: {}",
                log.len()
            );
        }
        if done {
            assert_eq!(log.len(), 40);
            break;
        }
        k += 1;
    }
}

#[test]
fn the_hard_state_round_trips_and_a_torn_write_keeps_the_old_one() {
    let storage = FaultyStorage::new(3);
    let (mut store, _) = open(&storage).unwrap();
    store.set_hard_state(hs(5, 2, 0));
    persist_all(&mut store);
    drop(store);
    storage.crash();
    let (store, _) = open(&storage).unwrap();
    assert_eq!(store.hard_state(), &hs(5, 2, 0));
    drop(store);

    let mut k = 0;
    let mut saw_old = false;
    loop {
        let storage = FaultyStorage::new(300 + k);
        let (mut store, _) = open(&storage).unwrap();
        store.set_hard_state(hs(5, 2, 0));
        persist_all(&mut store);
        store.set_hard_state(hs(6, 3, 0));
        let done = persist_crashing_at(&storage, store, k);
        let (store, rec) = open(&storage).unwrap_or_else(|e| panic!("step {k}: {e}"));
        let now = store.hard_state().clone();
        assert!(
            now == hs(5, 2, 0) || now == hs(6, 3, 0),
            "step {k}: {now:?}"
        );
        saw_old |= now == hs(5, 2, 0);
        if done {
            assert_eq!(now, hs(6, 3, 0));
            break;
        }
        // A torn write leaves at most its tmp file, removed at open.
        assert!(rec.leftovers_removed <= 1);
        k += 1;
    }
    assert!(saw_old && k >= 2, "steps {k}");

    // The file is two slots written in turn: creation wrote slot 0, the
    // persist above slot 1. A damaged older slot is ignored; with both
    // damaged the store refuses to open rather than start empty.
    let storage = FaultyStorage::new(4);
    let (mut store, _) = open(&storage).unwrap();
    store.append(vec![entry(1, 1, "a", 1)]);
    store.set_hard_state(hs(1, 1, 1));
    persist_all(&mut store);
    drop(store);
    storage.corrupt_byte(&dir().join(HARD_STATE_FILE), 20);
    let (store, _) = open(&storage).unwrap();
    assert_eq!(store.hard_state(), &hs(1, 1, 1));
    drop(store);
    storage.corrupt_byte(
        &dir().join(HARD_STATE_FILE),
        HARD_STATE_SLOT_BYTES as u64 + 20,
    );
    assert!(matches!(
        open(&storage),
        Err(StoreOpenError::HardStateCorrupt { .. })
    ));
    block_on(storage.remove(&dir().join(HARD_STATE_FILE))).unwrap();
    assert!(matches!(
        open(&storage),
        Err(StoreOpenError::MissingHardState { .. })
    ));
}

#[test]
fn a_version_1_hard_state_file_is_read_and_rewritten_as_two_slots() {
    let storage = FaultyStorage::new(5);
    let (mut store, _) = open(&storage).unwrap();
    store.append(vec![entry(1, 1, "a", 1), entry(2, 1, "b", 1)]);
    store.set_hard_state(hs(1, 1, 2));
    persist_all(&mut store);
    drop(store);
    // What the previous build wrote: the bare record, replaced whole.
    let path = dir().join(HARD_STATE_FILE);
    let slots = block_on(storage.read_all(&path, 1 << 16)).unwrap().unwrap();
    let newest = hard_state_slots::newest(&slots).unwrap();
    block_on(storage.write_atomic(&path, &newest.file.encode())).unwrap();
    let (mut store, rec) = open(&storage).unwrap();
    assert!(rec.hard_state_converted);
    assert_eq!(store.hard_state(), &hs(1, 1, 2));
    assert_eq!(store.last_index(), 2);
    store.set_hard_state(hs(2, 1, 2));
    persist_all(&mut store);
    drop(store);
    storage.crash();
    let (store, rec) = open(&storage).unwrap();
    assert!(!rec.hard_state_converted);
    assert_eq!(store.hard_state(), &hs(2, 1, 2));
}

#[test]
fn a_lazy_commit_is_written_only_with_a_term_or_vote_change() {
    let storage = FaultyStorage::new(6);
    let (mut store, _) = open(&storage).unwrap();
    store.set_lazy_commit(true);
    let entries: Vec<Entry> = (1..=6).map(|i| entry(i, 1, "x", 1)).collect();
    store.append(entries);
    store.set_hard_state(hs(1, 1, 2));
    persist_all(&mut store);
    // Only the commit moves: nothing reaches the hard-state file.
    store.set_hard_state(hs(1, 1, 5));
    persist_all(&mut store);
    drop(store);
    storage.crash();
    let (mut store, rec) = open(&storage).unwrap();
    assert_eq!(
        store.hard_state(),
        &hs(1, 1, 2),
        "the commit came back lower"
    );
    assert_eq!(store.last_index(), 6, "the log itself is durable");
    assert_eq!(rec.commit_clamped_from, None);
    // A new term is written at once, with the commit it carries.
    store.set_lazy_commit(true);
    store.set_hard_state(hs(1, 1, 5));
    store.set_hard_state(hs(2, 3, 6));
    persist_all(&mut store);
    drop(store);
    storage.crash();
    let (store, _) = open(&storage).unwrap();
    assert_eq!(store.hard_state(), &hs(2, 3, 6));
    drop(store);
    // Without it (the default) every commit is durable.
    let storage = FaultyStorage::new(7);
    let (mut store, _) = open(&storage).unwrap();
    store.append(vec![entry(1, 1, "a", 1), entry(2, 1, "b", 1)]);
    store.set_hard_state(hs(1, 1, 1));
    persist_all(&mut store);
    store.set_hard_state(hs(1, 1, 2));
    persist_all(&mut store);
    drop(store);
    storage.crash();
    let (store, _) = open(&storage).unwrap();
    assert_eq!(store.hard_state(), &hs(1, 1, 2));
}

#[test]
fn compaction_moves_the_log_start_durably() {
    let build = |seed: u64| {
        let storage = FaultyStorage::new(seed);
        let (mut store, _) = open(&storage).unwrap();
        store.append(
            (1..=10)
                .map(|i| entry(i, 1 + i / 4, &format!("e{i}"), 2))
                .collect(),
        );
        store.set_hard_state(hs(3, 1, 10));
        persist_all(&mut store);
        (storage, store)
    };
    let (storage, mut store) = build(5);
    let term6 = store.term(6).unwrap();
    let offset7 = store.slot(7).unwrap().base_offset;
    store.compact(6, term6, Bytes::from_static(b"snap@6"));
    assert_eq!(store.first_index(), 7);
    persist_all(&mut store);
    drop(store);
    storage.crash();
    let (mut store, rec) = open(&storage).unwrap();
    assert!(!rec.compaction_finished);
    assert_eq!(store.first_index(), 7);
    assert_eq!(store.snapshot_point().offset, offset7);
    assert_eq!(store.term(6).unwrap(), term6);
    assert_eq!(
        store.term(5),
        Err(raft::Error::Store(StorageError::Compacted))
    );
    assert_eq!(
        store.entries(6, 8, None, GetEntriesContext::empty(false)),
        Err(raft::Error::Store(StorageError::Compacted))
    );
    assert_eq!(tag(&store.entry(7).unwrap().data).as_deref(), Some("e7"));
    let snap = store.snapshot(0, 2).unwrap();
    assert_eq!(snap.get_metadata().index, 6);
    assert_eq!(snap.get_metadata().get_conf_state().voters, VOTERS.to_vec());
    let env = decode_snapshot(&snap.data).unwrap();
    assert_eq!(&env.data[..], b"snap@6");
    assert_eq!(env.point.offset, offset7);
    // The log goes on after the compacted prefix.
    let next = store.offset_after(10).unwrap();
    store.append(vec![entry(11, 3, "e11", 1)]);
    assert_eq!(store.slot(11).unwrap().base_offset, next);
    persist_all(&mut store);

    // A crash at every step of a compaction: before or after it, and a
    // compaction named but not carried out is finished at open.
    let mut k = 0;
    let mut finished = 0;
    loop {
        let (storage, mut store) = build(500 + k);
        let term6 = store.term(6).unwrap();
        store.compact(6, term6, Bytes::from_static(b"snap@6"));
        let done = persist_crashing_at(&storage, store, k);
        let (store, rec) = open(&storage).unwrap_or_else(|e| panic!("step {k}: {e}"));
        finished += usize::from(rec.compaction_finished);
        assert!(
            store.first_index() == 1 || store.first_index() == 7,
            "step {k}: {}",
            store.first_index()
        );
        assert_eq!(store.last_index(), 10, "step {k}");
        for (i, _, t) in log_of(&store) {
            assert_eq!(t, Some(format!("e{i}")), "step {k}");
        }
        if done {
            assert_eq!(store.first_index(), 7);
            break;
        }
        k += 1;
    }
    assert!(
        finished > 0,
        "no crash fell between the hard state and the cut"
    );
}

#[test]
fn an_installed_snapshot_restarts_the_log_at_the_leaders_offset() {
    // The leader's log, compacted through 8.
    let leader_storage = FaultyStorage::new(6);
    let (mut leader, _) = open(&leader_storage).unwrap();
    leader.append((1..=10).map(|i| entry(i, 2, "l", 3)).collect());
    leader.set_hard_state(hs(2, 1, 10));
    leader.compact(8, 2, Bytes::from_static(b"producers@8"));
    persist_all(&mut leader);
    let snap: Snapshot = leader.snapshot(0, 2).unwrap();
    let leader_offset9 = leader.slot(9).unwrap().base_offset;

    let follower = |seed: u64| {
        let storage = FaultyStorage::new(seed);
        let (mut store, _) = open(&storage).unwrap();
        store.append((1..=3).map(|i| entry(i, 1, "f", 1)).collect());
        store.set_hard_state(hs(1, 0, 1));
        persist_all(&mut store);
        (storage, store)
    };
    let (storage, mut store) = follower(7);
    store.install_snapshot(&snap);
    assert_eq!((store.first_index(), store.last_index()), (9, 8));
    persist_all(&mut store);
    store.append(vec![entry(9, 2, "l", 3)]);
    assert_eq!(store.slot(9).unwrap().base_offset, leader_offset9);
    persist_all(&mut store);
    drop(store);
    storage.crash();
    let (store, rec) = open(&storage).unwrap();
    assert_eq!(rec.leftovers_removed, 0);
    assert_eq!((store.first_index(), store.last_index()), (9, 9));
    assert_eq!(store.slot(9).unwrap().base_offset, leader_offset9);
    assert_eq!(store.hard_state().commit, 8);
    assert_eq!(store.term(8).unwrap(), 2);
    let names = list(&storage, &dir());
    assert!(names.contains(&"log.1".to_string()), "{names:?}");
    assert!(!names.contains(&"log.0".to_string()), "{names:?}");
    drop(store);

    // A crash at every step: the old log or the installed snapshot.
    let mut k = 0;
    loop {
        let (storage, mut store) = follower(700 + k);
        store.install_snapshot(&snap);
        let done = persist_crashing_at(&storage, store, k);
        let (store, _) = open(&storage).unwrap_or_else(|e| panic!("step {k}: {e}"));
        let bounds = (store.first_index(), store.last_index());
        assert!(bounds == (1, 3) || bounds == (9, 8), "step {k}: {bounds:?}");
        if bounds == (9, 8) {
            assert_eq!(store.snapshot_point().offset, leader_offset9);
        }
        let logs = list(&storage, &dir())
            .into_iter()
            .filter(|n| n.starts_with("log."))
            .count();
        assert_eq!(logs, 1, "step {k}: leftovers of the other generation");
        if done {
            assert_eq!(bounds, (9, 8));
            break;
        }
        k += 1;
    }
}

/// A disk that lost synced data: the commit is clamped to the log.
#[test]
fn a_commit_beyond_the_durable_log_is_clamped() {
    let storage = FaultyStorage::new(8);
    let (mut store, _) = open(&storage).unwrap();
    store.append((1..=5).map(|i| entry(i, 1, "a", 1)).collect());
    store.set_hard_state(hs(1, 1, 5));
    persist_all(&mut store);
    let cut = store.slot(4).unwrap().base_offset;
    drop(store);
    block_on(async {
        let log_dir = dir().join("log.0");
        let (mut log, _) = Log::open(storage.clone(), &log_dir, config(), 0)
            .await
            .unwrap();
        log.truncate_to(cut).await.unwrap();
        log.close(0).await.unwrap();
    });
    let (store, rec) = open(&storage).unwrap();
    assert_eq!(rec.commit_clamped_from, Some(5));
    assert_eq!(store.hard_state().commit, 3);
    assert_eq!(store.last_index(), 3);
}

#[test]
fn persists_run_in_any_order_and_a_failure_fails_the_store() {
    let storage = FaultyStorage::new(9);
    let (mut store, _) = open(&storage).unwrap();
    store.append(vec![entry(1, 1, "a", 1)]);
    let first = store.write_seq();
    store.append(vec![entry(2, 1, "b", 1)]);
    let second = store.write_seq();
    let early = store.persist(first, 0);
    let late = store.persist(second, 0);
    block_on(late).unwrap();
    block_on(early).unwrap();
    store.mark_synced(second).unwrap();
    assert_eq!(store.persisted_seq(), second);
    store.append(vec![entry(3, 1, "c", 1)]);
    storage.fail_after(0, FaultKind::Eio);
    assert!(block_on(store.persist(store.write_seq(), 0)).is_err());
    storage.clear_faults();
    store.append(vec![entry(4, 1, "d", 1)]);
    let err = block_on(store.persist(store.write_seq(), 0)).unwrap_err();
    assert!(err.to_string().contains("reopen"), "{err}");
}

// ----- a seeded cluster of replicas over the engine store -----

type Core = ReplicaCore<Store>;

struct Node {
    id: u64,
    storage: FaultyStorage,
    core: Option<Core>,
    down_until: u64,
    /// Persist requests due: (step, write sequence).
    persists: Vec<(u64, u64)>,
    applied: u64,
    proposals: HashMap<ProposalId, usize>,
}

struct InFlight {
    at: u64,
    from: usize,
    to: usize,
    msg: Message,
}

#[derive(Default, Debug)]
struct Totals {
    acked: u64,
    crashes: u64,
    crashes_mid_persist: u64,
    snapshots: u64,
    committed: u64,
}

struct Cluster {
    seed: u64,
    rng: SplitMix64,
    now: u64,
    nodes: Vec<Node>,
    net: Vec<InFlight>,
    isolated: Option<usize>,
    faults: bool,
    /// The cluster's committed log: index -> (term, proposal, base offset).
    committed: BTreeMap<u64, (u64, Option<usize>, u64)>,
    /// Acks=all acknowledgements: proposal -> index.
    acked: BTreeMap<usize, u64>,
    leaders: BTreeMap<u64, u64>,
    proposals: usize,
    totals: Totals,
    trace: bool,
}

fn proposal_tag(n: usize) -> String {
    format!("p{n}")
}

fn proposal_of(data: &[u8]) -> Option<usize> {
    tag(data).map(|t| t[1..].parse().expect("a proposal tag"))
}

impl Cluster {
    fn new(seed: u64) -> Self {
        let trace = std::env::var("STROM_ENGINE_STORE_TRACE").is_ok();
        let mut c = Cluster {
            seed,
            rng: SplitMix64::new(seed),
            now: 0,
            nodes: Vec::new(),
            net: Vec::new(),
            isolated: None,
            faults: true,
            committed: BTreeMap::new(),
            acked: BTreeMap::new(),
            leaders: BTreeMap::new(),
            proposals: 0,
            totals: Totals::default(),
            trace,
        };
        for id in VOTERS {
            c.nodes.push(Node {
                id,
                storage: FaultyStorage::new(seed.wrapping_mul(31).wrapping_add(id)),
                core: None,
                down_until: 0,
                persists: Vec::new(),
                applied: 0,
                proposals: HashMap::new(),
            });
        }
        for i in 0..c.nodes.len() {
            c.restart(i);
        }
        c
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[{}] {}", self.now, what());
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "seed {} step {}: {what}\nreplay: STROM_ENGINE_STORE_SEED={} STROM_ENGINE_STORE_TRACE=1 cargo test -p strom-replication --test engine_store -- --nocapture cluster",
            self.seed, self.now, self.seed
        );
    }

    fn restart(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.core.is_none());
        let opened = block_on(EngineStore::open(
            node.storage.clone(),
            &dir(),
            &VOTERS,
            config(),
            self.now as i64,
        ));
        let (store, rec) = match opened {
            Ok(s) => s,
            Err(e) => self.fail(format!("replica {} cannot reopen: {e}", i + 1)),
        };
        let mut cfg = ReplicaConfig::new(node.id, &VOTERS);
        cfg.election_ticks = 6;
        cfg.heartbeat_ticks = 2;
        cfg.msg_bytes_max = 1024;
        cfg.inflight_msgs_max = 4;
        cfg.timer_seed = self.seed ^ (node.id << 40) ^ self.now;
        // The disk never lies here: nothing synced may be missing.
        if rec.commit_clamped_from.is_some() || rec.log_restarted {
            self.fail(format!("replica {} lost synced data: {rec:?}", i + 1));
        }
        // What survived agrees with the committed log up to its commit.
        let point = store.snapshot_point();
        let commit = store.hard_state().commit;
        if commit > store.last_index() {
            self.fail(format!(
                "replica {} reopens with commit {commit} past its log",
                i + 1
            ));
        }
        for (&index, &(term, p, offset)) in self.committed.range(point.index + 1..commit + 1) {
            let slot = store.slot(index).expect("in the log");
            let got = (slot.term, proposal_of(&slot.frame), slot.base_offset);
            if got != (term, p, offset) {
                self.fail(format!(
                    "replica {} reopens with {got:?} at committed index {index}, committed {:?}",
                    i + 1,
                    (term, p, offset)
                ));
            }
        }
        if let Some(&(term, _, _)) = self.committed.get(&point.index) {
            assert_eq!(term, point.term, "snapshot point term");
        }
        let core = match ReplicaCore::open(cfg, store) {
            Ok(c) => c,
            Err(e) => self.fail(format!("replica {} core refuses its store: {e}", i + 1)),
        };
        let node = &mut self.nodes[i];
        node.applied = core.applied_index();
        node.core = Some(core);
        self.log(|| format!("restart {} ({rec:?})", i + 1));
        self.process(i);
    }

    /// Crashes replica `i`; `mid_persist` first runs its latest persist
    /// with a fault at a random I/O step.
    fn crash(&mut self, i: usize, mid_persist: bool) {
        let Some(core) = self.nodes[i].core.take() else {
            return;
        };
        let node = &mut self.nodes[i];
        let store = core.into_store();
        let last = node.persists.iter().map(|p| p.1).max();
        if let (true, Some(seq)) = (mid_persist, last) {
            // A fault at a random I/O step of the persist, then the crash:
            // a prefix of its steps lands, the unsynced tail is torn.
            let k = self.rng.below(40);
            node.storage.fail_after(k, FaultKind::Eio);
            let _ = block_on(store.persist(seq, self.now as i64));
            node.storage.clear_faults();
            self.totals.crashes_mid_persist += 1;
        }
        drop(store);
        node.storage.crash();
        node.persists.clear();
        node.proposals.clear();
        node.down_until = self.now + 1 + self.rng.below(8);
        self.totals.crashes += 1;
        self.log(|| format!("crash {} (mid persist: {mid_persist})", i + 1));
    }

    fn propose(&mut self, i: usize) {
        let n = self.proposals;
        self.proposals += 1;
        let data = frame(&proposal_tag(n), 1 + n % 3);
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        if let Ok(id) = core.propose(data, Acks::All) {
            self.nodes[i].proposals.insert(id, n);
            self.log(|| format!("propose #{n} at {}", i + 1));
        }
        self.process(i);
    }

    fn step(&mut self) {
        self.now += 1;
        let n = self.nodes.len();
        if self.faults {
            if self.rng.chance_per_mille(30) {
                self.isolated = match self.rng.below(3) {
                    0 => Some(self.rng.below(n as u64) as usize),
                    _ => None,
                };
                self.log(|| format!("isolated: {:?}", self.isolated));
            }
            for i in 0..n {
                if self.nodes[i].core.is_some() && self.rng.chance_per_mille(25) {
                    let mid = !self.nodes[i].persists.is_empty() && self.rng.below(4) != 0;
                    self.crash(i, mid);
                }
            }
        }
        for i in 0..n {
            if self.nodes[i].core.is_none() && self.nodes[i].down_until <= self.now {
                self.restart(i);
            }
        }
        self.deliver();
        self.complete_persists();
        if self
            .rng
            .chance_per_mille(if self.faults { 600 } else { 300 })
        {
            let leader =
                (0..n).find(|&i| self.nodes[i].core.as_ref().is_some_and(|c| c.is_leader()));
            let i = leader.unwrap_or_else(|| self.rng.below(n as u64) as usize);
            self.propose(i);
        }
        if self.faults && self.rng.chance_per_mille(60) {
            let i = self.rng.below(n as u64) as usize;
            if let Some(core) = self.nodes[i].core.as_mut() {
                let index = core.applied_index().saturating_sub(self.rng.below(3));
                if index > core.store().snapshot_point().index {
                    let data = Bytes::from(format!("snap@{index}"));
                    core.compact(index, data).expect("at or below applied");
                    self.log(|| format!("compact {} through {index}", i + 1));
                    self.process(i);
                }
            }
        }
        for i in 0..n {
            if let Some(core) = self.nodes[i].core.as_mut() {
                core.tick();
                self.process(i);
            }
        }
    }

    fn blocked(&self, from: usize, to: usize) -> bool {
        self.isolated.is_some_and(|x| x == from || x == to)
    }

    fn deliver(&mut self) {
        let now = self.now;
        let mut due = Vec::new();
        let mut k = 0;
        while k < self.net.len() {
            if self.net[k].at <= now {
                due.push(self.net.swap_remove(k));
            } else {
                k += 1;
            }
        }
        for m in due {
            let snapshot = m.msg.get_msg_type() == MessageType::MsgSnapshot;
            let dropped = self.faults && self.rng.chance_per_mille(50);
            let delivered =
                !dropped && !self.blocked(m.from, m.to) && self.nodes[m.to].core.is_some();
            let to_id = m.msg.to;
            if delivered {
                let core = self.nodes[m.to].core.as_mut().expect("up");
                if let Err(e) = core.step(m.msg) {
                    self.fail(format!("replica {} refused a message: {e}", m.to + 1));
                }
                self.process(m.to);
            }
            if snapshot {
                if let Some(core) = self.nodes[m.from].core.as_mut() {
                    core.report_snapshot(to_id, delivered);
                    self.process(m.from);
                }
            }
        }
    }

    fn complete_persists(&mut self) {
        for i in 0..self.nodes.len() {
            let now = self.now;
            let mut due: Vec<u64> = Vec::new();
            self.nodes[i].persists.retain(|&(at, seq)| {
                if at <= now {
                    due.push(seq);
                    false
                } else {
                    true
                }
            });
            for seq in due {
                let Some(core) = self.nodes[i].core.as_mut() else {
                    break;
                };
                if let Err(e) = block_on(core.store().persist(seq, now as i64)) {
                    self.fail(format!(
                        "replica {} persist failed without a fault: {e}",
                        i + 1
                    ));
                }
                core.on_persisted(seq).expect("a staged write");
                self.process(i);
            }
        }
    }

    fn process(&mut self, i: usize) {
        loop {
            let Some(core) = self.nodes[i].core.as_mut() else {
                return;
            };
            let actions = core.take_actions();
            if actions.is_empty() {
                break;
            }
            for a in actions {
                self.carry_out(i, a);
            }
        }
        let core = self.nodes[i].core.as_ref().expect("up");
        if core.is_leader() {
            let (term, id) = (core.term(), core.id());
            match self.leaders.insert(term, id) {
                Some(other) if other != id => {
                    self.fail(format!("replicas {other} and {id} both lead term {term}"))
                }
                _ => {}
            }
        }
    }

    fn carry_out(&mut self, i: usize, action: Action) {
        let id = i as u64 + 1;
        match action {
            Action::Persist { write_seq, .. } => {
                let delay = if self.faults { self.rng.below(4) } else { 0 };
                self.nodes[i].persists.push((self.now + delay, write_seq));
            }
            Action::Send(msg) => {
                let to = msg.to as usize - 1;
                let delay = if self.faults { self.rng.below(3) } else { 0 };
                self.net.push(InFlight {
                    at: self.now + delay,
                    from: i,
                    to,
                    msg,
                });
            }
            Action::Apply { entries } => {
                for e in entries {
                    let node = &mut self.nodes[i];
                    assert_eq!(e.index, node.applied + 1, "dense apply");
                    node.applied = e.index;
                    let store = node.core.as_ref().expect("up").store();
                    let slot = store.slot(e.index).expect("an applied entry is held");
                    if frame_term(&slot.frame) != Some(e.term) {
                        self.fail(format!("entry {} frame epoch is not its term", e.index));
                    }
                    let got = (e.term, proposal_of(&e.data), slot.base_offset);
                    match self.committed.get(&e.index) {
                        Some(c) if *c != got => self.fail(format!(
                            "replica {id} applies {got:?} at {}, where {c:?} was committed",
                            e.index
                        )),
                        Some(_) => {}
                        None => {
                            if let Some(p) = got.1 {
                                if let Some((&other, _)) =
                                    self.committed.iter().find(|(_, c)| c.1 == Some(p))
                                {
                                    self.fail(format!("#{p} committed at {other} and {}", e.index));
                                }
                            }
                            self.committed.insert(e.index, got);
                            self.totals.committed += 1;
                        }
                    }
                }
            }
            Action::InstallSnapshot { index, term, data } => {
                let env = decode_snapshot(&data).expect("an envelope");
                if env.data != format!("snap@{index}").as_bytes() || env.point.term != term {
                    self.fail(format!("replica {id}: snapshot at {index} carries {env:?}"));
                }
                match self.committed.get(&index) {
                    Some(c) if c.0 == term && c.2 < env.point.offset => {}
                    other => self.fail(format!(
                        "replica {id} installs ({index}, {term}) at offset {}; committed {other:?}",
                        env.point.offset
                    )),
                }
                self.nodes[i].applied = index;
                self.totals.snapshots += 1;
                self.log(|| format!("{id} installs a snapshot at {index}"));
            }
            Action::Acknowledged { id: pid, index, .. } => {
                let Some(n) = self.nodes[i].proposals.remove(&pid) else {
                    self.fail(format!("unknown proposal {pid:?}"));
                };
                match self.committed.get(&index) {
                    Some((_, Some(p), _)) if *p == n => {}
                    other => self.fail(format!(
                        "#{n} acknowledged at {index}, committed there: {other:?}"
                    )),
                }
                self.acked.insert(n, index);
                self.totals.acked += 1;
                self.log(|| format!("{id} acks #{n} at {index}"));
            }
            Action::ProposalFailed { id: pid, .. } => {
                self.nodes[i].proposals.remove(&pid);
            }
            Action::LeaderChanged { .. } => {}
        }
    }

    /// Faults stop; every replica comes back and catches up, and one more
    /// proposal is acknowledged.
    fn settle(&mut self) {
        self.faults = false;
        self.isolated = None;
        for i in 0..self.nodes.len() {
            if self.nodes[i].core.is_none() {
                self.restart(i);
            }
        }
        let mut last: Option<usize> = None;
        for _ in 0..400 {
            self.step();
            let top = self.committed.keys().next_back().copied().unwrap_or(0);
            let leader =
                (0..3).find(|&i| self.nodes[i].core.as_ref().is_some_and(|c| c.is_leader()));
            match (last, leader) {
                (Some(n), _)
                    if self.acked.contains_key(&n)
                        && self.nodes.iter().all(|node| node.applied >= top) =>
                {
                    return;
                }
                (Some(n), _) if self.acked.contains_key(&n) => {}
                (None, Some(l)) => {
                    let n = self.proposals;
                    self.propose(l);
                    last = Some(n);
                }
                (Some(n), Some(l)) if self.nodes[l].proposals.values().all(|&p| p != n) => {
                    let n = self.proposals;
                    self.propose(l);
                    last = Some(n);
                }
                _ => {}
            }
        }
        self.fail(format!(
            "no progress after healing: applied {:?}, committed up to {:?}",
            self.nodes.iter().map(|n| n.applied).collect::<Vec<_>>(),
            self.committed.keys().next_back()
        ));
    }

    /// Every acks=all acknowledgement is durable on a majority: after all
    /// replicas crash at once (losing their unsynced writes), a majority
    /// holds it (or a snapshot covering it), and once they are back every
    /// replica applies it.
    fn check_acked_survive_a_whole_cluster_crash(&mut self) {
        for i in 0..self.nodes.len() {
            self.crash(i, false);
        }
        for i in 0..self.nodes.len() {
            self.restart(i);
        }
        let acked: Vec<(usize, u64)> = self.acked.iter().map(|(&n, &i)| (n, i)).collect();
        for &(n, index) in &acked {
            let holders = self
                .nodes
                .iter()
                .filter(|node| {
                    let store = node.core.as_ref().expect("up").store();
                    index <= store.snapshot_point().index
                        || store
                            .slot(index)
                            .is_some_and(|s| proposal_of(&s.frame) == Some(n))
                })
                .count();
            if holders < 2 {
                self.fail(format!(
                    "acknowledged #{n} at {index} is durable on {holders} of 3"
                ));
            }
        }
        self.settle();
        for &(n, index) in &acked {
            for node in &self.nodes {
                if node.applied < index {
                    self.fail(format!(
                        "replica {} never applied acknowledged #{n}",
                        node.id
                    ));
                }
            }
        }
    }
}

fn run_cluster(seed: u64, steps: u64) -> Totals {
    let mut c = Cluster::new(seed);
    for _ in 0..steps {
        c.step();
    }
    c.settle();
    c.check_acked_survive_a_whole_cluster_crash();
    c.totals
}

#[test]
fn cluster_on_the_engine_store_loses_no_acknowledged_entry() {
    let env = |name: &str| std::env::var(name).ok().map(|v| v.parse::<u64>().unwrap());
    let seeds: Vec<u64> = match env("STROM_ENGINE_STORE_SEED") {
        Some(seed) => vec![seed],
        None => (0..env("STROM_ENGINE_STORE_SEEDS").unwrap_or(200)).collect(),
    };
    let mut t = Totals::default();
    for seed in seeds {
        let r = run_cluster(seed, 150);
        t.acked += r.acked;
        t.crashes += r.crashes;
        t.crashes_mid_persist += r.crashes_mid_persist;
        t.snapshots += r.snapshots;
        t.committed += r.committed;
    }
    eprintln!("{t:?}");
    assert!(
        t.acked > 0 && t.crashes_mid_persist > 0 && t.snapshots > 0,
        "{t:?}"
    );
}
