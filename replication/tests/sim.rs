//! The deterministic multi-replica simulation, over many seeds (see
//! `strom_replication::sim` for what each schedule injects and checks).
//!
//! - `STROM_REPL_SIM_SEEDS`: schedules to run (default 10,000);
//! - `STROM_REPL_SIM_BASE_SEED`: first seed (default 0);
//! - `STROM_REPL_SIM_SEED`: replay one seed (with `STROM_REPL_SIM_TRACE=1`
//!   to print its events).
//!
//! A failure prints its seed and the command that replays it. Three tests
//! break the system on purpose (synced data lost on crash, acks=leader held
//! to acks=all's promise, messages sent before their writes are durable) and
//! require the checkers to notice in a good share of seeds.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use strom_replication::sim::{Sabotage, Sim, SimConfig, SimReport, Violation, ViolationKind};

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v:?} is not a number"),
    }
}

fn replay_hint(seed: u64) -> String {
    format!(
        "replay: STROM_REPL_SIM_SEED={seed} STROM_REPL_SIM_TRACE=1 cargo test -p strom-replication --test sim simulation_seeds -- --nocapture"
    )
}

/// One schedule; a panic inside a replica becomes an error naming the seed.
fn run_one(cfg: SimConfig) -> Result<SimReport, String> {
    let seed = cfg.seed;
    match catch_unwind(AssertUnwindSafe(|| Sim::run(cfg))) {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(v)) => Err(v.to_string()),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("seed {seed}: panic: {msg}"))
        }
    }
}

#[derive(Default)]
struct Totals {
    schedules: u64,
    five_replicas: u64,
    report: SimReport,
    failures: Vec<(u64, String)>,
}

impl Totals {
    fn add(&mut self, cfg: &SimConfig, r: Result<SimReport, String>) {
        self.schedules += 1;
        if cfg.nodes == 5 {
            self.five_replicas += 1;
        }
        match r {
            Ok(r) => {
                let t = &mut self.report;
                t.steps += r.steps;
                t.proposals += r.proposals;
                t.acked_all += r.acked_all;
                t.acked_leader += r.acked_leader;
                t.committed_max += r.committed_max;
                t.crashes += r.crashes;
                t.elections += r.elections;
                t.snapshots_installed += r.snapshots_installed;
                t.messages_sent += r.messages_sent;
                t.messages_dropped += r.messages_dropped;
            }
            Err(e) => self.failures.push((cfg.seed, e)),
        }
    }
}

#[test]
fn simulation_seeds() {
    if let Some(seed) = env_u64("STROM_REPL_SIM_SEED") {
        let mut cfg = SimConfig::from_seed(seed);
        cfg.trace = std::env::var_os("STROM_REPL_SIM_TRACE").is_some();
        eprintln!("{cfg:?}");
        match run_one(cfg) {
            Ok(report) => eprintln!("seed {seed} passed: {report:?}"),
            Err(e) => panic!("{e}"),
        }
        return;
    }
    let seeds = env_u64("STROM_REPL_SIM_SEEDS").unwrap_or(10_000);
    let base = env_u64("STROM_REPL_SIM_BASE_SEED").unwrap_or(0);
    let threads: u64 = 2;
    let started = Instant::now();
    let totals: Vec<Totals> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut totals = Totals::default();
                    let mut i = t;
                    while i < seeds {
                        let cfg = SimConfig::from_seed(base.wrapping_add(i));
                        let r = run_one(cfg.clone());
                        totals.add(&cfg, r);
                        i += threads;
                    }
                    totals
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(t) => t,
                Err(_) => panic!("a simulation thread panicked outside a schedule"),
            })
            .collect()
    });
    let mut all = Totals::default();
    for t in totals {
        all.schedules += t.schedules;
        all.five_replicas += t.five_replicas;
        let (a, r) = (&mut all.report, &t.report);
        a.steps += r.steps;
        a.proposals += r.proposals;
        a.acked_all += r.acked_all;
        a.acked_leader += r.acked_leader;
        a.committed_max += r.committed_max;
        a.crashes += r.crashes;
        a.elections += r.elections;
        a.snapshots_installed += r.snapshots_installed;
        a.messages_sent += r.messages_sent;
        a.messages_dropped += r.messages_dropped;
        all.failures.extend(t.failures);
    }
    all.failures.sort();
    eprintln!(
        "{} schedules ({} with 5 replicas) in {:.1?}: {:?}",
        all.schedules,
        all.five_replicas,
        started.elapsed(),
        all.report
    );
    if let Some((seed, first)) = all.failures.first() {
        panic!(
            "{} of {} schedules failed; first: {first}\n{}",
            all.failures.len(),
            all.schedules,
            replay_hint(*seed)
        );
    }
    assert_eq!(all.schedules, seeds);
    // The schedules must exercise what they claim to.
    if seeds >= 1000 {
        let r = &all.report;
        assert!(r.acked_all > seeds, "few acknowledgements: {r:?}");
        assert!(r.crashes > seeds / 2, "few crashes: {r:?}");
        assert!(r.snapshots_installed > seeds / 10, "few snapshots: {r:?}");
        assert!(r.elections > seeds, "few elections: {r:?}");
        assert!(all.five_replicas > seeds / 20);
    }
}

#[test]
fn a_seed_replays_identically() {
    for seed in [1, 2, 3, 77, 1234] {
        let a = Sim::run(SimConfig::from_seed(seed));
        let b = Sim::run(SimConfig::from_seed(seed));
        match (a, b) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "seed {seed} diverged"),
            (a, b) => panic!("seed {seed}: {a:?} / {b:?}"),
        }
    }
}

/// What the checkers made of sabotaged schedules.
struct Caught {
    seeds: u64,
    violations: Vec<Violation>,
    panicked: u64,
}

impl Caught {
    fn summary(&self) -> String {
        let mut kinds: Vec<(String, usize)> = Vec::new();
        for v in &self.violations {
            let k = format!("{:?}", v.kind);
            match kinds.iter_mut().find(|(n, _)| *n == k) {
                Some((_, c)) => *c += 1,
                None => kinds.push((k, 1)),
            }
        }
        format!(
            "{} of {} sabotaged seeds caught by a checker ({} panicked inside a replica first); by checker: {kinds:?}; first: {}",
            self.violations.len(),
            self.seeds,
            self.panicked,
            self.violations
                .first()
                .map(|v| v.to_string())
                .unwrap_or_default()
        )
    }

    fn count(&self, kind: ViolationKind) -> usize {
        self.violations.iter().filter(|v| v.kind == kind).count()
    }
}

/// Runs `seeds` sabotaged schedules.
fn sabotaged(sabotage: Sabotage, adjust: fn(&mut SimConfig), seeds: u64) -> Caught {
    let mut caught = Caught {
        seeds,
        violations: Vec::new(),
        panicked: 0,
    };
    for seed in 0..seeds {
        let mut cfg = SimConfig::from_seed(seed);
        cfg.sabotage = sabotage;
        adjust(&mut cfg);
        match catch_unwind(AssertUnwindSafe(|| Sim::run(cfg))) {
            Ok(Ok(_)) => {}
            Ok(Err(v)) => caught.violations.push(v),
            // The sabotage may break raft-rs's own assumptions, and an
            // assertion inside a replica may fire before a checker does.
            Err(_) => caught.panicked += 1,
        }
    }
    caught
}

#[test]
fn checkers_catch_synced_entries_lost_on_crash() {
    let c = sabotaged(
        Sabotage::LoseSyncedEntriesOnCrash,
        |cfg| cfg.crash_per_mille = cfg.crash_per_mille.max(15),
        100,
    );
    eprintln!("lose synced entries on crash: {}", c.summary());
    let durability =
        c.count(ViolationKind::AckedLost) + c.count(ViolationKind::NotDurableOnMajority);
    assert!(durability >= 10, "{}", c.summary());
}

#[test]
fn checkers_catch_acknowledging_at_the_leader_append() {
    let c = sabotaged(
        Sabotage::LeaderAcksCountAsDurable,
        |cfg| cfg.acks_leader_per_mille = 1000,
        200,
    );
    eprintln!("acknowledge at the leader's append: {}", c.summary());
    assert!(c.count(ViolationKind::AckedLost) >= 5, "{}", c.summary());
    assert_eq!(c.panicked, 0, "acks=leader breaks nothing inside raft");
}

#[test]
fn checkers_catch_messages_sent_before_persisting() {
    let c = sabotaged(
        Sabotage::SendBeforePersist,
        |cfg| {
            cfg.crash_per_mille = cfg.crash_per_mille.max(15);
            cfg.sync_delay_steps_max = cfg.sync_delay_steps_max.max(6);
        },
        100,
    );
    eprintln!("send before persisting: {}", c.summary());
    assert!(c.violations.len() >= 10, "{}", c.summary());
}
