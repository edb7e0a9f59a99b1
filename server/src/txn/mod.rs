//! Kafka transactions: the transaction coordinator and its durable log.
//!
//! - `coordinator.rs`: the I/O-free state machine (plan, persist, apply).
//! - `records.rs`: the transaction log's records (`docs/format.md`).
//! - this file: the shell. One coordinator per node, on shard 0 (every
//!   transactional id; Kafka's FindCoordinator answers this node). Its log
//!   is an engine partition at `<data>/internal/__transaction_state-0/`:
//!   every state change is appended there durably (fdatasync) before it is
//!   applied or answered, and replayed at start-up. A transaction found in
//!   PrepareCommit/PrepareAbort at start-up (a crash between EndTxn and its
//!   markers) is finished by a background task once every shard is up.
//!   Markers go through the operations layer (`Op::TxnMarkers`) to the
//!   shard owning each partition, which appends a control frame under the
//!   partition's producer lane and waits until it is durable; a commit's
//!   offsets go to the group coordinator (`GroupOp::TxnCommit`). Only once
//!   all of that is durable is the Complete state written.
//!
//! Invariants:
//! - Every change goes through `persist`, which holds `lock` (one change
//!   of the log at a time, so the log's order is the core's) and applies
//!   to the core only after the append is durable. The lock is never held
//!   while markers are written (a transaction being completed is in a
//!   Prepare state, which refuses other changes to that id with
//!   CONCURRENT_TRANSACTIONS).
//! - One completion per id at a time (`completing`).
//! - No `RefCell` borrow is held across an `.await`.
//! - Cluster mode: the coordinator is not started; every transactional
//!   request answers COORDINATOR_NOT_AVAILABLE.

pub mod coordinator;
pub mod records;

use crate::engine::{AnyStorage, Durability, EngineError, LogConfig, Partition};
use crate::error::WireError;
use crate::limits::{
    TXN_ID_EXPIRATION_MS, TXN_LOG_COMPACT_FACTOR, TXN_LOG_COMPACT_RECORDS_MIN, TXN_MAX_TIMEOUT_MS,
    TXN_RECORD_BYTES_MAX, TXN_TICK_MS,
};
use crate::ops::{call, collect, fan_out};
use crate::router::{Op, Reply, TxnMarker};
use crate::shard::Shard;
use bytes::BytesMut;
use coordinator::{InitPlan, TxnConfig, TxnCoordinator, TxnError, TxnMeta, TxnState};
use glommio::sync::Semaphore;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use strom_flatbuffers::frame::{ATTR_COMMIT, ATTR_CONTROL, ATTR_TRANSACTIONAL};
use strom_flatbuffers::{BatchBuilder, RecordIn};

/// Test-only fault: with this variable set to `abort-after-prepare`, the
/// process aborts (SIGABRT, nothing flushed) right after a PrepareCommit
/// or PrepareAbort of EndTxn is durable and before any marker is written,
/// so that a test can prove a restarted coordinator finishes the markers
/// (`tests/tests/kafka_txn_prepare_crash.rs`).
pub const TXN_FAULT_ENV: &str = "STROM_TEST_TXN_FAULT";

/// Bytes read per step of the replay.
const REPLAY_READ_BYTES: usize = 4 << 20;

/// The transaction log's directory.
pub fn log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("internal").join("__transaction_state-0")
}

/// A control frame holding one transaction marker, as Kafka writes it: one
/// record whose key is (version 0: i16, type: i16, 0 abort / 1 commit) and
/// whose value is (version 0: i16, coordinator epoch: i32), big-endian;
/// attribute bits 4 and 5 (and 6 for a commit, `docs/format.md`), the
/// producer id and epoch, no sequence.
pub fn marker_frame(producer_id: i64, epoch: i16, commit: bool) -> BytesMut {
    let mut b = BatchBuilder::new();
    b.set_producer(producer_id, epoch, -1);
    b.set_txn_attributes(ATTR_TRANSACTIONAL | ATTR_CONTROL | if commit { ATTR_COMMIT } else { 0 });
    let key: [u8; 4] = [0, 0, 0, u8::from(commit)];
    let value: [u8; 6] = [0; 6];
    b.push(&RecordIn {
        timestamp_ms: crate::group::wall_ms() as i64,
        key: Some(&key),
        value: Some(&value),
        headers: &[],
    });
    BytesMut::from(&b.finish()[..])
}

/// A transactional request for the coordinator (shard 0).
#[derive(Debug, Clone)]
pub enum TxnOp {
    Init {
        txn_id: String,
        timeout_ms: i64,
        producer_id: i64,
        epoch: i16,
    },
    Add {
        txn_id: String,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<(String, u32)>,
        group: Option<String>,
    },
    Offsets {
        txn_id: String,
        producer_id: i64,
        epoch: i16,
        group: String,
        offsets: Vec<(String, u32, u64, String)>,
    },
    End {
        txn_id: String,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    },
}

pub enum TxnReply {
    Init(Result<(i64, i16), TxnError>),
    Done(Result<(), TxnError>),
}

struct Inner {
    /// None until the log is loaded (and always in cluster mode).
    core: RefCell<Option<TxnCoordinator>>,
    log: RefCell<Option<Partition>>,
    /// Records in the log, live or not (compaction trigger).
    records: Cell<u64>,
    lock: Semaphore,
    completing: RefCell<HashSet<String>>,
}

/// The coordinator's shell (used on shard 0).
#[derive(Clone)]
pub struct TxnShard {
    inner: Rc<Inner>,
}

impl Default for TxnShard {
    fn default() -> Self {
        TxnShard::new()
    }
}

fn log_config() -> LogConfig {
    LogConfig {
        retention_ms: None,
        retention_bytes: None,
        segment_bytes: 64 << 20,
        ..LogConfig::default()
    }
}

fn config() -> TxnConfig {
    TxnConfig {
        max_timeout_ms: TXN_MAX_TIMEOUT_MS,
        id_expiration_ms: TXN_ID_EXPIRATION_MS,
    }
}

fn not_available(e: impl std::fmt::Display) -> TxnError {
    TxnError::NotAvailable(e.to_string())
}

/// Frames holding `records` (key, value), one record per frame so that a
/// state change is all or nothing.
fn record_frame(txn_id: &str, m: Option<&TxnMeta>) -> Result<BytesMut, TxnError> {
    let key = records::encode_key(txn_id);
    let value = m.map(records::encode_value);
    let len = key.len() + value.as_ref().map_or(0, Vec::len);
    if len > TXN_RECORD_BYTES_MAX {
        return Err(TxnError::TooMany {
            txn_id: txn_id.to_owned(),
            what: "bytes of the transaction's state",
            max: TXN_RECORD_BYTES_MAX,
        });
    }
    let mut b = BatchBuilder::new();
    b.push(&RecordIn {
        timestamp_ms: crate::group::wall_ms() as i64,
        key: Some(&key),
        value: value.as_deref(),
        headers: &[],
    });
    Ok(BytesMut::from(&b.finish()[..]))
}

impl TxnShard {
    pub fn new() -> TxnShard {
        TxnShard {
            inner: Rc::new(Inner {
                core: RefCell::new(None),
                log: RefCell::new(None),
                records: Cell::new(0),
                lock: Semaphore::new(1),
                completing: RefCell::new(HashSet::new()),
            }),
        }
    }

    /// Shard 0, single node: opens and replays the transaction log, then
    /// starts the task that finishes interrupted transactions and ticks
    /// timeouts. A log that cannot be read leaves the coordinator
    /// unavailable (COORDINATOR_NOT_AVAILABLE), never guessing.
    pub async fn load(&self, shard: &Rc<Shard>) {
        if shard.id != 0 || shard.replication.is_some() {
            return;
        }
        let dir = log_dir(&shard.data_dir);
        match open_log(&dir).await {
            Err(e) => {
                shard.metrics().count_background_error("txn_log_open");
                tracing::error!(dir = %dir.display(), error = %e, "transaction log: open failed; transactions unavailable");
            }
            Ok((part, replayed, count)) => {
                let mut core = TxnCoordinator::new(config());
                for (id, m) in replayed {
                    core.apply(&id, m);
                }
                tracing::info!(
                    ids = core.len(),
                    records = count,
                    preparing = core.preparing().len(),
                    "transaction log loaded"
                );
                *self.inner.core.borrow_mut() = Some(core);
                *self.inner.log.borrow_mut() = Some(part);
                self.inner.records.set(count);
                glommio::spawn_local(self.clone().upkeep(shard.clone())).detach();
            }
        }
    }

    pub async fn close(&self) {
        let _g = self.inner.lock.acquire_permit(1).await;
        let log = self.inner.log.borrow_mut().take();
        if let Some(part) = log {
            if let Err(e) = part.close().await {
                tracing::error!(error = %e, "transaction log: close failed");
            }
        }
    }

    /// Waits for every shard, finishes interrupted transactions, then
    /// ticks: timeouts, expired ids, markers still owed.
    async fn upkeep(self, shard: Rc<Shard>) {
        while shard.shared.ready.load(Ordering::SeqCst) < shard.shards {
            if shard.shutdown.is_fired() {
                return;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        while !shard.shutdown.is_fired() {
            self.tick(&shard).await;
            glommio::timer::sleep(Duration::from_millis(TXN_TICK_MS)).await;
        }
    }

    async fn tick(&self, shard: &Rc<Shard>) {
        let now = crate::group::wall_ms();
        let (timed_out, expired, preparing) = {
            let core = self.inner.core.borrow();
            let Some(core) = core.as_ref() else { return };
            (core.timed_out(now), core.expired(now), core.preparing())
        };
        for (id, _) in timed_out {
            // Planned again under the lock: the id may have changed since.
            let aborted = self
                .change_to(
                    |core| {
                        let next = core
                            .timed_out(now)
                            .into_iter()
                            .find(|(t, _)| *t == id)
                            .map(|(_, m)| Some(m));
                        let found = next.is_some();
                        Ok((next, found))
                    },
                    &id,
                )
                .await;
            if let Ok(true) = aborted {
                tracing::warn!(txn_id = %id, "transaction timed out: aborting");
                let _ = self.complete(shard, &id).await;
            }
        }
        for id in preparing {
            let _ = self.complete(shard, &id).await;
        }
        for id in expired {
            let removed = self
                .change_to(
                    |core| {
                        let gone = core.expired(now).contains(&id);
                        Ok((gone.then_some(None), gone))
                    },
                    &id,
                )
                .await;
            if let Ok(true) = removed {
                tracing::info!(txn_id = %id, "transactional id expired");
            }
        }
        self.compact_if_due().await;
    }

    /// Appends `txn_id`'s new state durably, then applies it. The caller
    /// planned it from the current state; it is re-planned by nobody else
    /// in between because every plan-and-persist holds `lock`.
    async fn persist(&self, txn_id: &str, m: Option<TxnMeta>) -> Result<(), TxnError> {
        let frame = record_frame(txn_id, m.as_ref())?;
        let Some(part) = self.inner.log.borrow().clone() else {
            return Err(TxnError::Loading);
        };
        part.append(frame, Durability::Durable)
            .await
            .map_err(|e| not_available(format!("transaction log append: {e}")))?;
        self.inner.records.set(self.inner.records.get() + 1);
        if let Some(core) = self.inner.core.borrow_mut().as_mut() {
            core.apply(txn_id, m);
        }
        Ok(())
    }

    /// Plans with the core under the lock and persists the result (a new
    /// state, or nothing).
    async fn change<T>(
        &self,
        plan: impl FnOnce(&TxnCoordinator) -> Result<(Option<TxnMeta>, T), TxnError>,
        txn_id: &str,
    ) -> Result<T, TxnError> {
        self.change_to(
            |core| plan(core).map(|(next, out)| (next.map(Some), out)),
            txn_id,
        )
        .await
    }

    /// [`TxnShard::change`] that may also remove the id (`Some(None)`).
    async fn change_to<T>(
        &self,
        plan: impl FnOnce(&TxnCoordinator) -> Result<(Option<Option<TxnMeta>>, T), TxnError>,
        txn_id: &str,
    ) -> Result<T, TxnError> {
        let Ok(_permit) = self.inner.lock.acquire_permit(1).await else {
            return Err(not_available("shutting down"));
        };
        let (next, out) = {
            let core = self.inner.core.borrow();
            let Some(core) = core.as_ref() else {
                return Err(TxnError::Loading);
            };
            plan(core)?
        };
        if let Some(m) = next {
            self.persist(txn_id, m).await?;
        }
        Ok(out)
    }

    /// Writes the markers (and a commit's offsets) of `txn_id`, which is
    /// in a Prepare state, then persists its Complete state.
    async fn complete(&self, shard: &Rc<Shard>, txn_id: &str) -> Result<(), TxnError> {
        if !self.inner.completing.borrow_mut().insert(txn_id.to_owned()) {
            return Err(TxnError::Concurrent {
                txn_id: txn_id.to_owned(),
            });
        }
        let r = self.complete_inner(shard, txn_id).await;
        self.inner.completing.borrow_mut().remove(txn_id);
        if let Err(e) = &r {
            tracing::warn!(txn_id, error = %e, "transaction markers not all written; retried by the coordinator's tick");
        }
        r
    }

    async fn complete_inner(&self, shard: &Rc<Shard>, txn_id: &str) -> Result<(), TxnError> {
        let meta = self
            .inner
            .core
            .borrow()
            .as_ref()
            .and_then(|c| c.get(txn_id).cloned());
        let Some(m) = meta.filter(|m| m.state.is_prepare()) else {
            return Ok(());
        };
        let commit = m.state == TxnState::PrepareCommit;
        // Markers, per owning shard.
        let mut per_shard: BTreeMap<usize, Vec<TxnMarker>> = BTreeMap::new();
        for (topic, p) in &m.partitions {
            match shard.owner(topic, *p) {
                Ok(s) => per_shard.entry(s).or_default().push(TxnMarker {
                    topic: topic.clone(),
                    partition: *p,
                    producer_id: m.producer_id,
                    producer_epoch: m.epoch,
                    commit,
                }),
                // A topic (or partition) that is gone has nothing to mark.
                Err(e) if is_gone(&e) => {}
                Err(e) => return Err(not_available(e.message)),
            }
        }
        let ops: Vec<(usize, Op)> = per_shard
            .into_iter()
            .map(|(s, items)| (s, Op::TxnMarkers { items }))
            .collect();
        let n = ops.len();
        let rx = fan_out(shard, ops);
        for (_, reply) in collect(&rx, n, None).await {
            match reply {
                Reply::TxnMarkers(rs) => {
                    for r in rs {
                        r.map_err(|e| not_available(e.message))?;
                    }
                }
                other => return Err(not_available(crate::ops::reply_error(other).message)),
            }
        }
        if commit {
            let mut by_group: BTreeMap<&str, Vec<crate::group::coordinator::OffsetCommit>> =
                BTreeMap::new();
            for ((g, t, p), (o, meta)) in &m.offsets {
                by_group
                    .entry(g)
                    .or_default()
                    .push(crate::group::coordinator::OffsetCommit {
                        topic: t.clone(),
                        partition: *p,
                        offset: *o,
                        metadata: meta.clone(),
                    });
            }
            for (g, offsets) in by_group {
                let results = crate::group::service::txn_commit(shard, g, offsets)
                    .await
                    .map_err(not_available)?;
                for r in results {
                    // An offset of a topic deleted since is dropped, as
                    // Kafka drops it; anything else is retried.
                    if let Err(e) = r {
                        if !matches!(
                            e,
                            crate::group::error::GroupError::UnknownTopic { .. }
                                | crate::group::error::GroupError::UnknownPartition { .. }
                        ) {
                            return Err(not_available(e));
                        }
                    }
                }
            }
        }
        let now = crate::group::wall_ms();
        self.change(|core| Ok((core.plan_complete(now, txn_id), ())), txn_id)
            .await
    }

    /// Owner side of a [`TxnOp`] (shard 0).
    pub async fn execute(&self, shard: &Rc<Shard>, op: TxnOp) -> TxnReply {
        if shard.replication.is_some() {
            let e = not_available("transactions are not available in cluster mode");
            return match op {
                TxnOp::Init { .. } => TxnReply::Init(Err(e)),
                _ => TxnReply::Done(Err(e)),
            };
        }
        let now = crate::group::wall_ms();
        match op {
            TxnOp::Init {
                txn_id,
                timeout_ms,
                producer_id,
                epoch,
            } => {
                // At most a few rounds: an open transaction is aborted
                // first, then the init is planned again.
                for _ in 0..3 {
                    let ids = &shard.shared.producer_ids;
                    let planned = self
                        .change(
                            |core| {
                                let plan = core.plan_init(
                                    now,
                                    &txn_id,
                                    timeout_ms,
                                    (producer_id, epoch),
                                    || ids.allocate(),
                                )?;
                                Ok(match plan {
                                    InitPlan::Persist(m) => {
                                        let r = (m.producer_id, m.epoch);
                                        (Some(m), Some(r))
                                    }
                                    InitPlan::AbortFirst(m) => (Some(m), None),
                                })
                            },
                            &txn_id,
                        )
                        .await;
                    match planned {
                        Err(e) => return TxnReply::Init(Err(e)),
                        Ok(Some(r)) => return TxnReply::Init(Ok(r)),
                        Ok(None) => {
                            if let Err(e) = self.complete(shard, &txn_id).await {
                                return TxnReply::Init(Err(e));
                            }
                        }
                    }
                }
                TxnReply::Init(Err(TxnError::Concurrent { txn_id }))
            }
            TxnOp::Add {
                txn_id,
                producer_id,
                epoch,
                partitions,
                group,
            } => TxnReply::Done(
                self.change(
                    |core| {
                        let next = core.plan_add(
                            now,
                            &txn_id,
                            producer_id,
                            epoch,
                            &partitions,
                            group.as_deref(),
                        )?;
                        Ok((next, ()))
                    },
                    &txn_id,
                )
                .await,
            ),
            TxnOp::Offsets {
                txn_id,
                producer_id,
                epoch,
                group,
                offsets,
            } => TxnReply::Done(
                self.change(
                    |core| {
                        let next =
                            core.plan_offsets(now, &txn_id, producer_id, epoch, &group, &offsets)?;
                        Ok((Some(next), ()))
                    },
                    &txn_id,
                )
                .await,
            ),
            TxnOp::End {
                txn_id,
                producer_id,
                epoch,
                commit,
            } => {
                let prepared = self
                    .change(
                        |core| {
                            let next = core.plan_end(now, &txn_id, producer_id, epoch, commit)?;
                            let todo = next.is_some();
                            Ok((next, todo))
                        },
                        &txn_id,
                    )
                    .await;
                match prepared {
                    Err(e) => TxnReply::Done(Err(e)),
                    Ok(false) => TxnReply::Done(Ok(())),
                    // Answered once the markers are durable (the client's
                    // next transaction then never meets this one's
                    // Prepare state); a failure leaves the Prepare state
                    // for the tick to finish, and the retry of EndTxn gets
                    // CONCURRENT_TRANSACTIONS until it has.
                    Ok(true) => {
                        if std::env::var(TXN_FAULT_ENV).as_deref() == Ok("abort-after-prepare") {
                            tracing::error!("{TXN_FAULT_ENV}: aborting after the prepare record");
                            std::process::abort();
                        }
                        TxnReply::Done(self.complete(shard, &txn_id).await)
                    }
                }
            }
        }
    }

    /// Rewrites the log with one record per live id when it holds
    /// `TXN_LOG_COMPACT_FACTOR` times more records (see `docs/format.md`).
    async fn compact_if_due(&self) {
        let live = self.inner.core.borrow().as_ref().map_or(0, |c| c.len()) as u64;
        let records = self.inner.records.get();
        if records < TXN_LOG_COMPACT_RECORDS_MIN || records <= TXN_LOG_COMPACT_FACTOR * live {
            return;
        }
        let Ok(_permit) = self.inner.lock.acquire_permit(1).await else {
            return;
        };
        let Some(part) = self.inner.log.borrow().clone() else {
            return;
        };
        // The log's own start moves past every record that a fresh copy of
        // the live state, appended now, supersedes: append the live state
        // again, then drop everything before it.
        let snapshot: Vec<(String, TxnMeta)> = self
            .inner
            .core
            .borrow()
            .as_ref()
            .map(|c| c.all().map(|(id, m)| (id.clone(), m.clone())).collect())
            .unwrap_or_default();
        let start = part.offsets().high_watermark;
        for (id, m) in &snapshot {
            let Ok(frame) = record_frame(id, Some(m)) else {
                return;
            };
            if part.append(frame, Durability::Buffered).await.is_err() {
                return;
            }
        }
        let end = part.offsets().high_watermark;
        if part.sync_to(end).await.is_err() {
            return;
        }
        match part.delete_records_before(start).await {
            Ok(_) => {
                self.inner.records.set(snapshot.len() as u64);
                tracing::info!(
                    live = snapshot.len(),
                    dropped = records,
                    "transaction log compacted"
                );
            }
            Err(e) => tracing::warn!(error = %e, "transaction log: compaction failed"),
        }
    }
}

fn is_gone(e: &WireError) -> bool {
    use strom_flatbuffers::protocol::ErrorCode;
    matches!(
        e.code,
        ErrorCode::UnknownTopic | ErrorCode::UnknownPartition
    )
}

type Replayed = Vec<(String, Option<TxnMeta>)>;

async fn open_log(dir: &Path) -> Result<(Partition, Replayed, u64), String> {
    let d = dir.to_path_buf();
    glommio::executor()
        .spawn_blocking(move || std::fs::create_dir_all(&d))
        .await
        .map_err(|e| format!("create {}: {e}", dir.display()))?;
    let engine = |e: EngineError| format!("{}: {e}", dir.display());
    let part = Partition::open_on(AnyStorage::dma(), dir, log_config(), true)
        .await
        .map_err(engine)?;
    let mut out = Vec::new();
    let mut offset = part.offsets().log_start_offset;
    let end = part.offsets().high_watermark;
    let mut count = 0u64;
    while offset < end {
        let batch = part.read(offset, REPLAY_READ_BYTES).await.map_err(engine)?;
        if batch.frames.is_empty() {
            break;
        }
        for f in &batch.frames {
            let recs = strom_flatbuffers::records(f).map_err(|e| format!("{e}"))?;
            for r in recs {
                offset = r.offset + 1;
                if r.offset < part.offsets().log_start_offset {
                    continue;
                }
                let id = records::decode_key(r.key.unwrap_or_default())
                    .map_err(|e| format!("offset {}: {e}", r.offset))?;
                let m = match r.value {
                    None => None,
                    Some(v) => Some(
                        records::decode_value(v)
                            .map_err(|e| format!("offset {}: {e}", r.offset))?,
                    ),
                };
                out.push((id, m));
                count += 1;
            }
        }
    }
    Ok((part, out, count))
}

/// Sends `op` to the coordinator (shard 0).
pub async fn request(shard: &Rc<Shard>, op: TxnOp) -> TxnReply {
    let init = matches!(op, TxnOp::Init { .. });
    match call(shard, 0, Op::Txn(op)).await {
        Reply::Txn(r) => r,
        other => {
            let e = not_available(crate::ops::reply_error(other).message);
            if init {
                TxnReply::Init(Err(e))
            } else {
                TxnReply::Done(Err(e))
            }
        }
    }
}
