//! The transaction coordinator's core, I/O-free (Kafka's
//! `TransactionCoordinator` and `TransactionMetadata` state machine): one
//! [`TxnMeta`] per transactional id. Every operation first *plans* the
//! next state ([`TxnCoordinator::plan_init`], `plan_add_partitions`, ...)
//! without changing anything; the shell writes the planned state to the
//! transaction log (durably) and only then [`TxnCoordinator::apply`]s it,
//! so the in-memory state is always what the log says.
//!
//! States: Empty -> Ongoing (AddPartitions / AddOffsets) -> PrepareCommit
//! or PrepareAbort (EndTxn, InitProducerId while Ongoing, timeout) ->
//! CompleteCommit or CompleteAbort (once every marker is durable and, for
//! a commit, the offsets are committed) -> Ongoing again or Empty (init).
//!
//! Invariants:
//! - A producer id and epoch only grow for a transactional id (epoch + 1
//!   on every init; a new id when the epoch is exhausted); a request with
//!   an older epoch is fenced.
//! - Partitions, groups and offsets are non-empty only in Ongoing and the
//!   Prepare states; a Complete state keeps them until the next
//!   transaction starts only for the markers' retry (`Prepare*`).
//! - An abort forced by the coordinator (init while Ongoing, timeout)
//!   bumps the epoch first, so its markers fence the old producer on every
//!   partition of the transaction.

use crate::limits::{TXN_GROUPS_MAX, TXN_IDS_MAX, TXN_OFFSETS_MAX, TXN_PARTITIONS_MAX};
use std::collections::{BTreeMap, BTreeSet, HashMap};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TxnState {
    Empty = 0,
    Ongoing = 1,
    PrepareCommit = 2,
    PrepareAbort = 3,
    CompleteCommit = 4,
    CompleteAbort = 5,
}

impl TxnState {
    pub fn from_u8(b: u8) -> Option<TxnState> {
        Some(match b {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            _ => return None,
        })
    }

    pub fn is_prepare(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// (group, topic, partition) -> (offset, metadata).
pub type PendingOffsets = BTreeMap<(String, String, u32), (u64, String)>;

/// One transactional id's state (what a transaction log record holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub epoch: i16,
    pub timeout_ms: u32,
    pub state: TxnState,
    pub partitions: BTreeSet<(String, u32)>,
    pub groups: BTreeSet<String>,
    pub offsets: PendingOffsets,
    /// When the current transaction started (Ongoing), wall-clock ms.
    pub start_ms: u64,
    /// Last change, wall-clock ms (for transactional.id expiration).
    pub update_ms: u64,
}

impl TxnMeta {
    pub fn new(producer_id: i64, epoch: i16, timeout_ms: u32, now_ms: u64) -> TxnMeta {
        TxnMeta {
            producer_id,
            epoch,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            groups: BTreeSet::new(),
            offsets: BTreeMap::new(),
            start_ms: now_ms,
            update_ms: now_ms,
        }
    }
}

/// Why a transactional request was refused (Kafka's codes of the same
/// names; [`TxnError::kafka_code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TxnError {
    #[error("transaction timeout {timeout_ms} ms is not in 1..={max_ms}")]
    InvalidTimeout { timeout_ms: i64, max_ms: u32 },
    #[error("transactional id {txn_id:?}: epoch {epoch} is fenced by epoch {current}")]
    Fenced {
        txn_id: String,
        epoch: i16,
        current: i16,
    },
    #[error("transactional id {txn_id:?}: producer id {given} is not its producer id")]
    InvalidMapping { txn_id: String, given: i64 },
    #[error("transactional id {txn_id:?}: {op} is not allowed in state {state:?}")]
    InvalidState {
        txn_id: String,
        op: &'static str,
        state: TxnState,
    },
    #[error("transactional id {txn_id:?}: its previous transaction is still completing")]
    Concurrent { txn_id: String },
    #[error("transactional id {txn_id:?}: {what} exceeds the limit of {max}")]
    TooMany {
        txn_id: String,
        what: &'static str,
        max: usize,
    },
    #[error("invalid transactional id {0:?}")]
    InvalidId(String),
    #[error("the transaction coordinator is loading")]
    Loading,
    #[error("the transaction coordinator is not available: {0}")]
    NotAvailable(String),
}

/// Kafka error codes.
pub mod codes {
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const INVALID_REQUEST: i16 = 42;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const INVALID_TXN_STATE: i16 = 48;
    pub const INVALID_PRODUCER_ID_MAPPING: i16 = 49;
    pub const INVALID_TRANSACTION_TIMEOUT: i16 = 50;
    pub const CONCURRENT_TRANSACTIONS: i16 = 51;
    pub const PRODUCER_FENCED: i16 = 90;
}

impl TxnError {
    /// The Kafka code; `fenced_code` is what a stale epoch gets in the
    /// API version asked (PRODUCER_FENCED from the versions that know it,
    /// INVALID_PRODUCER_EPOCH before).
    pub fn kafka_code(&self, fenced_code: i16) -> i16 {
        match self {
            TxnError::InvalidTimeout { .. } => codes::INVALID_TRANSACTION_TIMEOUT,
            TxnError::Fenced { .. } => fenced_code,
            TxnError::InvalidMapping { .. } => codes::INVALID_PRODUCER_ID_MAPPING,
            TxnError::InvalidState { .. } => codes::INVALID_TXN_STATE,
            TxnError::Concurrent { .. } => codes::CONCURRENT_TRANSACTIONS,
            TxnError::TooMany { .. } | TxnError::InvalidId(_) => codes::INVALID_REQUEST,
            TxnError::Loading => codes::COORDINATOR_LOAD_IN_PROGRESS,
            TxnError::NotAvailable(_) => codes::COORDINATOR_NOT_AVAILABLE,
        }
    }
}

/// Settings (Kafka's broker configs of the same meaning).
#[derive(Debug, Clone, Copy)]
pub struct TxnConfig {
    /// `transaction.max.timeout.ms`.
    pub max_timeout_ms: u32,
    /// `transactional.id.expiration.ms`.
    pub id_expiration_ms: u64,
}

/// What an init must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitPlan {
    /// Persist this state, then answer with its id and epoch.
    Persist(TxnMeta),
    /// A transaction is open: persist this PrepareAbort (epoch bumped),
    /// complete it, then plan the init again.
    AbortFirst(TxnMeta),
}

/// The coordinator's state: every transactional id it knows.
#[derive(Debug)]
pub struct TxnCoordinator {
    config: TxnConfig,
    txns: HashMap<String, TxnMeta>,
}

fn check_id(txn_id: &str) -> Result<(), TxnError> {
    if txn_id.is_empty() || txn_id.len() > crate::limits::TXN_ID_BYTES_MAX {
        return Err(TxnError::InvalidId(txn_id.to_owned()));
    }
    Ok(())
}

impl TxnCoordinator {
    pub fn new(config: TxnConfig) -> TxnCoordinator {
        TxnCoordinator {
            config,
            txns: HashMap::new(),
        }
    }

    pub fn get(&self, txn_id: &str) -> Option<&TxnMeta> {
        self.txns.get(txn_id)
    }

    pub fn len(&self) -> usize {
        self.txns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }

    /// Every (id, state), for snapshots of the log.
    pub fn all(&self) -> impl Iterator<Item = (&String, &TxnMeta)> {
        self.txns.iter()
    }

    /// Makes a persisted state current (`None`: the id was removed).
    pub fn apply(&mut self, txn_id: &str, m: Option<TxnMeta>) {
        match m {
            Some(m) => {
                debug_assert!(
                    m.state == TxnState::Ongoing
                        || m.state.is_prepare()
                        || (m.partitions.is_empty() && m.offsets.is_empty()),
                    "only an open or preparing transaction holds partitions"
                );
                self.txns.insert(txn_id.to_owned(), m);
            }
            None => {
                self.txns.remove(txn_id);
            }
        }
        assert!(self.txns.len() <= TXN_IDS_MAX, "transactional ids bounded");
    }

    /// The ids in a Prepare state (their markers must be written), e.g.
    /// after a restart.
    pub fn preparing(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .txns
            .iter()
            .filter(|(_, m)| m.state.is_prepare())
            .map(|(id, _)| id.clone())
            .collect();
        v.sort();
        v
    }

    fn fence(&self, txn_id: &str, producer_id: i64, epoch: i16) -> Result<&TxnMeta, TxnError> {
        check_id(txn_id)?;
        let Some(m) = self.txns.get(txn_id) else {
            return Err(TxnError::InvalidMapping {
                txn_id: txn_id.to_owned(),
                given: producer_id,
            });
        };
        if m.producer_id != producer_id {
            return Err(TxnError::InvalidMapping {
                txn_id: txn_id.to_owned(),
                given: producer_id,
            });
        }
        if epoch < m.epoch {
            return Err(TxnError::Fenced {
                txn_id: txn_id.to_owned(),
                epoch,
                current: m.epoch,
            });
        }
        if epoch > m.epoch {
            // A newer epoch than the coordinator ever gave: not this id's.
            return Err(TxnError::InvalidMapping {
                txn_id: txn_id.to_owned(),
                given: producer_id,
            });
        }
        Ok(m)
    }

    /// InitProducerId with a transactional id. `allocate` hands out a new
    /// producer id. `caller` is the (id, epoch) the client sent (KIP-360),
    /// or (-1, -1).
    pub fn plan_init(
        &self,
        now_ms: u64,
        txn_id: &str,
        timeout_ms: i64,
        caller: (i64, i16),
        allocate: impl FnOnce() -> i64,
    ) -> Result<InitPlan, TxnError> {
        check_id(txn_id)?;
        if timeout_ms < 1 || timeout_ms > i64::from(self.config.max_timeout_ms) {
            return Err(TxnError::InvalidTimeout {
                timeout_ms,
                max_ms: self.config.max_timeout_ms,
            });
        }
        let timeout_ms = timeout_ms as u32;
        let Some(m) = self.txns.get(txn_id) else {
            if self.txns.len() >= TXN_IDS_MAX {
                return Err(TxnError::TooMany {
                    txn_id: txn_id.to_owned(),
                    what: "transactional ids",
                    max: TXN_IDS_MAX,
                });
            }
            return Ok(InitPlan::Persist(TxnMeta::new(
                allocate(),
                0,
                timeout_ms,
                now_ms,
            )));
        };
        // KIP-360: a caller that names an id and epoch must name the
        // current ones (or the one before, a retry of the last bump).
        if caller.0 >= 0 && (caller.0 != m.producer_id || caller.1 < m.epoch - 1) {
            if caller.0 == m.producer_id {
                return Err(TxnError::Fenced {
                    txn_id: txn_id.to_owned(),
                    epoch: caller.1,
                    current: m.epoch,
                });
            }
            return Err(TxnError::InvalidMapping {
                txn_id: txn_id.to_owned(),
                given: caller.0,
            });
        }
        match m.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => Err(TxnError::Concurrent {
                txn_id: txn_id.to_owned(),
            }),
            TxnState::Ongoing => {
                let mut next = m.clone();
                next.state = TxnState::PrepareAbort;
                if next.epoch < i16::MAX - 1 {
                    next.epoch += 1;
                }
                next.update_ms = now_ms;
                Ok(InitPlan::AbortFirst(next))
            }
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                let mut next = if m.epoch >= i16::MAX - 1 {
                    TxnMeta::new(allocate(), 0, timeout_ms, now_ms)
                } else {
                    let mut n = TxnMeta::new(m.producer_id, m.epoch + 1, timeout_ms, now_ms);
                    n.start_ms = m.start_ms;
                    n
                };
                next.state = TxnState::Empty;
                Ok(InitPlan::Persist(next))
            }
        }
    }

    /// The state after adding partitions and groups (None: nothing
    /// changes, answer at once).
    pub fn plan_add(
        &self,
        now_ms: u64,
        txn_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, u32)],
        group: Option<&str>,
    ) -> Result<Option<TxnMeta>, TxnError> {
        let m = self.fence(txn_id, producer_id, epoch)?;
        let mut next = m.clone();
        match m.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                return Err(TxnError::Concurrent {
                    txn_id: txn_id.to_owned(),
                })
            }
            TxnState::Ongoing => {}
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                next.state = TxnState::Ongoing;
                next.start_ms = now_ms;
                next.partitions.clear();
                next.groups.clear();
                next.offsets.clear();
            }
        }
        for p in partitions {
            next.partitions.insert(p.clone());
        }
        if let Some(g) = group {
            next.groups.insert(g.to_owned());
        }
        if next.partitions.len() > TXN_PARTITIONS_MAX {
            return Err(TxnError::TooMany {
                txn_id: txn_id.to_owned(),
                what: "partitions in one transaction",
                max: TXN_PARTITIONS_MAX,
            });
        }
        if next.groups.len() > TXN_GROUPS_MAX {
            return Err(TxnError::TooMany {
                txn_id: txn_id.to_owned(),
                what: "groups in one transaction",
                max: TXN_GROUPS_MAX,
            });
        }
        if next == *m {
            return Ok(None);
        }
        next.update_ms = now_ms;
        Ok(Some(next))
    }

    /// TxnOffsetCommit: the offsets are kept with the transaction and
    /// reach the group only when it commits.
    pub fn plan_offsets(
        &self,
        now_ms: u64,
        txn_id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
        offsets: &[(String, u32, u64, String)],
    ) -> Result<TxnMeta, TxnError> {
        let m = self.fence(txn_id, producer_id, epoch)?;
        if m.state != TxnState::Ongoing || !m.groups.contains(group) {
            return Err(TxnError::InvalidState {
                txn_id: txn_id.to_owned(),
                op: "TxnOffsetCommit (the group must be added first)",
                state: m.state,
            });
        }
        let mut next = m.clone();
        for (t, p, o, meta) in offsets {
            next.offsets
                .insert((group.to_owned(), t.clone(), *p), (*o, meta.clone()));
        }
        if next.offsets.len() > TXN_OFFSETS_MAX {
            return Err(TxnError::TooMany {
                txn_id: txn_id.to_owned(),
                what: "offsets in one transaction",
                max: TXN_OFFSETS_MAX,
            });
        }
        next.update_ms = now_ms;
        Ok(next)
    }

    /// EndTxn: `Ok(Some(prepare))` to persist and complete; `Ok(None)`:
    /// already done (a retry), answer success.
    pub fn plan_end(
        &self,
        now_ms: u64,
        txn_id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<Option<TxnMeta>, TxnError> {
        let m = self.fence(txn_id, producer_id, epoch)?;
        let invalid = |state| TxnError::InvalidState {
            txn_id: txn_id.to_owned(),
            op: if commit { "commit" } else { "abort" },
            state,
        };
        match (m.state, commit) {
            (TxnState::Ongoing, _) => {
                let mut next = m.clone();
                next.state = if commit {
                    TxnState::PrepareCommit
                } else {
                    TxnState::PrepareAbort
                };
                next.update_ms = now_ms;
                Ok(Some(next))
            }
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => Ok(None),
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                Err(TxnError::Concurrent {
                    txn_id: txn_id.to_owned(),
                })
            }
            (s, _) => Err(invalid(s)),
        }
    }

    /// The Complete state that follows a Prepare once its markers (and
    /// offsets) are durable.
    pub fn plan_complete(&self, now_ms: u64, txn_id: &str) -> Option<TxnMeta> {
        let m = self.txns.get(txn_id)?;
        let state = match m.state {
            TxnState::PrepareCommit => TxnState::CompleteCommit,
            TxnState::PrepareAbort => TxnState::CompleteAbort,
            _ => return None,
        };
        let mut next = TxnMeta::new(m.producer_id, m.epoch, m.timeout_ms, m.start_ms);
        next.state = state;
        next.update_ms = now_ms;
        Some(next)
    }

    /// Ongoing transactions past their timeout, each as the PrepareAbort
    /// (epoch bumped, fencing the producer) to persist and complete.
    pub fn timed_out(&self, now_ms: u64) -> Vec<(String, TxnMeta)> {
        let mut out: Vec<(String, TxnMeta)> = self
            .txns
            .iter()
            .filter(|(_, m)| {
                m.state == TxnState::Ongoing
                    && now_ms.saturating_sub(m.start_ms) > u64::from(m.timeout_ms)
            })
            .map(|(id, m)| {
                let mut next = m.clone();
                next.state = TxnState::PrepareAbort;
                if next.epoch < i16::MAX - 1 {
                    next.epoch += 1;
                }
                next.update_ms = now_ms;
                (id.clone(), next)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Ids with no transaction open, unused for `id_expiration_ms`: to be
    /// removed (tombstone).
    pub fn expired(&self, now_ms: u64) -> Vec<String> {
        let mut v: Vec<String> = self
            .txns
            .iter()
            .filter(|(_, m)| {
                matches!(
                    m.state,
                    TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
                ) && now_ms.saturating_sub(m.update_ms) >= self.config.id_expiration_ms
            })
            .map(|(id, _)| id.clone())
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: TxnConfig = TxnConfig {
        max_timeout_ms: 900_000,
        id_expiration_ms: 1_000_000,
    };

    fn init(c: &mut TxnCoordinator, now: u64, id: &str, next_pid: i64) -> (i64, i16) {
        match c.plan_init(now, id, 60_000, (-1, -1), || next_pid) {
            Ok(InitPlan::Persist(m)) => {
                let r = (m.producer_id, m.epoch);
                c.apply(id, Some(m));
                r
            }
            other => panic!("init: {other:?}"),
        }
    }

    fn apply_some(c: &mut TxnCoordinator, id: &str, m: Option<TxnMeta>) {
        if let Some(m) = m {
            c.apply(id, Some(m));
        }
    }

    #[test]
    fn commit_cycle_fencing_and_retries() {
        let mut c = TxnCoordinator::new(CFG);
        let (pid, e0) = init(&mut c, 0, "t", 100);
        assert_eq!((pid, e0), (100, 0));
        let parts = vec![("a".to_owned(), 0u32), ("a".to_owned(), 1)];
        let m = c.plan_add(1, "t", pid, 0, &parts, None).expect("add");
        apply_some(&mut c, "t", m);
        assert_eq!(c.get("t").map(|m| m.state), Some(TxnState::Ongoing));
        // The same partitions again: nothing to persist.
        assert_eq!(c.plan_add(2, "t", pid, 0, &parts, None), Ok(None));
        // Offsets need their group added first.
        let off = vec![("in".to_owned(), 0u32, 5u64, String::new())];
        assert!(matches!(
            c.plan_offsets(2, "t", pid, 0, "g", &off),
            Err(TxnError::InvalidState { .. })
        ));
        let m = c.plan_add(2, "t", pid, 0, &[], Some("g")).expect("group");
        apply_some(&mut c, "t", m);
        let m = c.plan_offsets(3, "t", pid, 0, "g", &off).expect("offsets");
        c.apply("t", Some(m));
        // Commit: prepare, then complete; a retry of the commit succeeds,
        // an abort of a committed transaction is refused.
        let p = c
            .plan_end(4, "t", pid, 0, true)
            .expect("end")
            .expect("prepare");
        assert_eq!(p.state, TxnState::PrepareCommit);
        assert_eq!(p.offsets.len(), 1);
        c.apply("t", Some(p));
        assert_eq!(c.preparing(), vec!["t".to_owned()]);
        assert!(matches!(
            c.plan_end(5, "t", pid, 0, true),
            Err(TxnError::Concurrent { .. })
        ));
        assert!(matches!(
            c.plan_add(5, "t", pid, 0, &parts, None),
            Err(TxnError::Concurrent { .. })
        ));
        let done = c.plan_complete(6, "t").expect("complete");
        assert_eq!(done.state, TxnState::CompleteCommit);
        assert!(done.partitions.is_empty() && done.offsets.is_empty());
        c.apply("t", Some(done));
        assert_eq!(c.plan_end(7, "t", pid, 0, true), Ok(None), "a retry");
        assert!(matches!(
            c.plan_end(7, "t", pid, 0, false),
            Err(TxnError::InvalidState { .. })
        ));
        // A second producer with the same id: the epoch goes up and the
        // first one is fenced everywhere.
        let (pid2, e1) = init(&mut c, 8, "t", 999);
        assert_eq!((pid2, e1), (pid, 1));
        let fenced = c.plan_add(9, "t", pid, 0, &parts, None);
        assert!(matches!(fenced, Err(TxnError::Fenced { current: 1, .. })));
        assert_eq!(
            fenced.unwrap_err().kafka_code(codes::PRODUCER_FENCED),
            codes::PRODUCER_FENCED
        );
        assert!(matches!(
            c.plan_end(9, "t", pid, 0, true),
            Err(TxnError::Fenced { .. })
        ));
        assert!(matches!(
            c.plan_add(9, "t", 12345, 1, &parts, None),
            Err(TxnError::InvalidMapping { .. })
        ));
    }

    #[test]
    fn init_while_ongoing_aborts_first_with_a_bumped_epoch() {
        let mut c = TxnCoordinator::new(CFG);
        let (pid, _) = init(&mut c, 0, "t", 7);
        let m = c
            .plan_add(1, "t", pid, 0, &[("a".into(), 0)], None)
            .expect("add");
        apply_some(&mut c, "t", m);
        let plan = c.plan_init(2, "t", 60_000, (-1, -1), || 8).expect("plan");
        let InitPlan::AbortFirst(abort) = plan else {
            panic!("{plan:?}")
        };
        assert_eq!((abort.state, abort.epoch), (TxnState::PrepareAbort, 1));
        assert_eq!(abort.partitions.len(), 1, "markers go to its partitions");
        c.apply("t", Some(abort));
        assert!(matches!(
            c.plan_init(3, "t", 60_000, (-1, -1), || 8),
            Err(TxnError::Concurrent { .. })
        ));
        let done = c.plan_complete(4, "t").expect("complete");
        c.apply("t", Some(done));
        let (p2, e2) = init(&mut c, 5, "t", 8);
        assert_eq!((p2, e2), (pid, 2));
    }

    #[test]
    fn timeouts_expiry_and_limits() {
        let mut c = TxnCoordinator::new(CFG);
        assert!(matches!(
            c.plan_init(0, "t", 900_001, (-1, -1), || 1),
            Err(TxnError::InvalidTimeout { .. })
        ));
        assert!(matches!(
            c.plan_init(0, "", 1_000, (-1, -1), || 1),
            Err(TxnError::InvalidId(_))
        ));
        let InitPlan::Persist(m) = c.plan_init(0, "t", 1_000, (-1, -1), || 1).expect("init") else {
            panic!()
        };
        c.apply("t", Some(m));
        let m = c
            .plan_add(100, "t", 1, 0, &[("a".into(), 0)], None)
            .expect("add");
        apply_some(&mut c, "t", m);
        assert!(c.timed_out(1_100).is_empty(), "not yet");
        let out = c.timed_out(1_101);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].1.state, out[0].1.epoch),
            (TxnState::PrepareAbort, 1)
        );
        c.apply("t", Some(out[0].1.clone()));
        let done = c.plan_complete(1_200, "t").expect("complete");
        c.apply("t", Some(done));
        // The old producer is fenced by the abort's epoch.
        assert!(matches!(
            c.plan_end(1_300, "t", 1, 0, true),
            Err(TxnError::Fenced { .. })
        ));
        assert!(c.expired(1_200 + 999_999).is_empty());
        assert_eq!(c.expired(1_200 + 1_000_000), vec!["t".to_owned()]);
    }
}
