//! Network faults, pauses and crashes against a real 3-node cluster: three
//! `strom-server` processes whose Raft traffic goes through a
//! [`FaultProxy`] (one link per directed pair, `"i->j"` carrying node i's
//! Raft connection to node j; see [`strom_tests::cluster`]), each history
//! judged by the checker ([`strom_tests::checker`]).
//!
//! Every scenario but the last produces unique values with acks=all
//! (Durable) to partition 0 of a 1-partition topic through `strom_client`
//! and records each attempt: `Ok(offset)`, `Failed` only for refusals made
//! before anything was written ("...is not the leader; node N is",
//! `LeaderNotAvailable`), `Unknown` for everything else. It ends the same
//! way ([`Scenario::finish`]): every link healed, one more produce
//! acknowledged, every node reporting the same leader (which names itself),
//! leader epoch and high watermark within [`AGREE_WAIT_MS`], and the
//! leader's committed log read whole; the checker must find nothing lost
//! or moved, nothing twice, nothing never sent, no refused value present,
//! each producer's acknowledged values in order.
//!
//! Scenarios (each its own test, under [`SCENARIO_BUDGET_MS`]):
//! - the partition leader isolated both ways (every link from and to it
//!   blackholed), then healed;
//! - its outgoing links dropped (it hears, cannot speak), and separately
//!   its incoming links dropped (it speaks, cannot hear);
//!   in these three, while the cut lasts, produces keep going to the old
//!   leader (fresh connections; client ports are never proxied): an `Ok`
//!   it answers must be in the majority's log at that offset (the checker),
//!   and none may be answered `Ok` for a produce sent more than
//!   [`ELECTION_TIMEOUT_MS`] after the cut. The majority must elect a new
//!   leader within [`ELECTION_WAIT_MS`] and acknowledge new produces; the
//!   old leader must stop claiming leadership within the same bound; the
//!   proxy's counters must show that the cut dropped real traffic; after
//!   the heal the old leader must be a follower reporting the new leader;
//! - the leader SIGSTOPped for [`STOP_MS`] (several election timeouts):
//!   a produce sent to it while stopped (on a connection made before) is
//!   judged by the checker, the others must elect a leader meanwhile and
//!   acknowledge produces, and once SIGCONTed the old leader must step
//!   down (report another leader) within [`ELECTION_WAIT_MS`];
//! - all three SIGKILLed together (links delayed by [`CRASH_DELAY_MS`], two
//!   produces in flight) and restarted from their data directories: every
//!   acknowledged record must be there; and the same with the produced
//!   topic created after another one (server bug 1, below, now fixed);
//! - the controller (the node `create_topic` succeeds on) SIGKILLed right
//!   after a CreateTopics was sent to it from a thread, in
//!   [`CREATE_ROUNDS`] rounds with different topic names and kill delays:
//!   after its restart (and a barrier topic created and seen by every
//!   node, so every earlier metadata entry is settled there) every node
//!   must agree the topic exists with all its partitions (and a produce to
//!   each eventually succeeds) or exists nowhere; a creation that was
//!   answered `Ok` must exist (server bug 1);
//! - a follower SIGKILLed while its peers' links to it are blackholed,
//!   restarted at once (server bug 2, below, now fixed).
//!
//! One cluster at a time ([`serial`]): on two shared cores the election
//! bounds should measure the cluster, not a neighbouring test. Every child
//! is SIGKILLed on drop, so a failing test leaves no process behind. Every
//! scenario also fails if any node's stderr reports a panic.
//!
//! # Server bug 1, fixed: a restart deleted replicas (these tests failed 10 of 10)
//! A restarted cluster node re-applies its metadata log from the start
//! against an empty topic table: `serve.rs` spawns the metadata apply task
//! (`ops::cluster::apply_metadata`) before `shard.apply(initial_metadata)`
//! has put the stored metadata in force, and the metadata group re-applies
//! its committed entries on open (`replay_on_open`), so the task sees
//! `cluster_meta_index` 0 and applies entry after entry. Each step stores
//! the older table to `meta/topics.json` (its `cluster_meta_index` moves
//! backwards) and fans out `Op::Apply`, whose `apply_replicated` removes
//! every group whose topic is not in that older table *and deletes its
//! directory* (Raft log and hard state), then re-creates it empty when a
//! later entry names it again. Seen as: the restarted node logs `topic
//! created` for topics it had; its replicas of every topic created after
//! the first are empty; a leader's heartbeat then panics its shard
//! (`raft_log.rs:292: to_commit N is out of range [last_index 0]`), and
//! when all three restart, every acknowledged record of such a topic is
//! gone (the log restarts at epoch 1; the checker reports each one lost
//! and its offset holding a later value). Fixed: the apply task starts
//! only once the stored metadata is in force, and an entry applied over a
//! newer version is a panic (an invariant), not a rewrite.
//!
//! # Server bug 2, fixed: a restart refused for up to 60 s
//! strom-server refuses to start while any socket of its killed
//! predecessor lingers on its Raft port: since b7df6ac it checks the
//! port with a plain `std::net::TcpListener::bind` (SO_REUSEADDR) before
//! glommio's bind (SO_REUSEPORT only), and the connections glommio
//! accepted carry no SO_REUSEADDR, so their FIN-WAIT-2 or TIME-WAIT
//! remnants make that bind fail ("raft address ... is in use", exit 1).
//! A peer that has nothing to send (a follower) or cannot reach the node
//! keeps its end open and the remnant lasts up to 60 s; after a graceful
//! close on both sides (all nodes killed) TIME-WAIT lasts 60 s. The
//! harness retries such a start for [`RAFT_ADDR_IN_USE_WAIT_MS`] and,
//! through the proxy, resets a killed node's connections
//! (`Cluster::kill`, `Cluster::kill_all`); this test does neither. Fixed:
//! the server now probes its Raft port by connecting to it (refused when
//! something accepts there), which lingering sockets do not disturb.
//!
//! [`RAFT_ADDR_IN_USE_WAIT_MS`]: strom_tests::cluster::RAFT_ADDR_IN_USE_WAIT_MS
//!
//! # What the checks were seen to catch
//! Deliberately sabotaged runs while this file was written, then reverted:
//! every leadership error counted as acknowledged (the three isolation
//! scenarios: "acknowledged produces sent more than 700 ms after the
//! cut"; SIGSTOP and kill-all: lost, inconsistent and reordered values);
//! the cut not applied (isolation: no leader among the majority); the
//! leader not SIGSTOPped (no leader among the others); never SIGCONTed
//! (the old leader never reports another leader); the links not healed
//! at the end (the nodes do not agree); the partition's files removed on
//! every node before the restart (kill-all: 10 lost); one node asked
//! about another topic name (controller: the nodes disagree).
//!
//! [`FaultProxy`]: strom_tests::faultproxy::FaultProxy

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use strom_client::ErrorCode;
use strom_tests::checker::{self, History, Outcome};
use strom_tests::cluster::{
    lock_history, read_final, top_acked, Attempt, Cluster, Recorder, NODES,
};
use strom_tests::faultproxy::{Direction, Fault};
use strom_tests::server_bin;

const TOPIC: &str = "faults";
/// One election timeout, with margin: 30-60 ticks of 10 ms without a
/// heartbeat (`strom_server::cluster::DEFAULT_ELECTION_TICKS`); a leader
/// that hears from no majority for as long steps down (check_quorum).
const ELECTION_TIMEOUT_MS: u64 = 700;
/// A new leader exists within this after a fault; a cut-off or resumed
/// old leader stops claiming leadership within it too. A wide margin for
/// two noisy cores.
const ELECTION_WAIT_MS: u64 = 10_000;
/// Every node agrees on the leader, its epoch and the high watermark
/// within this after the heal.
const AGREE_WAIT_MS: u64 = 10_000;
/// Each scenario, from its cluster's start to its last check.
const SCENARIO_BUDGET_MS: u64 = 40_000;
/// Acknowledged produces per phase of a scenario.
const ACKED_PER_PHASE: usize = 5;
/// Produces sent to a cut-off old leader, at most.
const MINORITY_ATTEMPTS_MAX: usize = 20;
/// ... and at least for this long after the cut (so several are sent
/// more than [`ELECTION_TIMEOUT_MS`] after it).
const MINORITY_WINDOW_MS: u64 = 1_500;
/// Pause between two of them.
const MINORITY_PAUSE_MS: u64 = 100;
/// How long a SIGSTOPped leader stays stopped.
const STOP_MS: u64 = 2_000;
/// Delay on every link while the last produces before the crash of all
/// three are made (widens the window of entries in flight).
const CRASH_DELAY_MS: u64 = 20;
/// Rounds of the controller-kill scenario.
const CREATE_ROUNDS: usize = 3;
/// Partitions of each topic created while its controller dies.
const CREATE_PARTITIONS: u32 = 3;
/// Between handing CreateTopics to the sending thread and the kill, per
/// round.
const CREATE_KILL_DELAYS_MS: [u64; CREATE_ROUNDS] = [1, 5, 20];
/// Pause between two polls.
const POLL_MS: u64 = 20;

/// One cluster at a time in this test binary (see the module docs): the
/// lock, taken once the binaries are built (which may take minutes, before
/// any scenario clock starts).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A failed scenario poisons the lock; the next one still runs.
    let guard = LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = server_bin();
    guard
}

fn all_nodes() -> Vec<u64> {
    (1..=NODES).collect()
}

fn others(old: u64) -> Vec<u64> {
    all_nodes().into_iter().filter(|&n| n != old).collect()
}

/// A scoped thread's result; its panic, passed on.
fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// The leader node `id` reports for partition 0 of [`TOPIC`] (0: none),
/// if it answers.
fn reported_leader(cluster: &Cluster, id: u64) -> Option<u64> {
    let d = cluster.describe(id, TOPIC).ok()?;
    d.partitions
        .iter()
        .find(|p| p.partition == 0)
        .map(|p| p.leader_node)
}

/// Polls node `old` until it reports a leader other than itself (0, none,
/// counts when `none_counts`), at most until `deadline`: the leader it
/// names then.
fn wait_stepped_down(
    cluster: &Cluster,
    old: u64,
    none_counts: bool,
    deadline: Instant,
) -> Option<u64> {
    loop {
        if let Some(l) = reported_leader(cluster, old) {
            if l != old && (l != 0 || none_counts) {
                return Some(l);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
}

// ------------------------------------------------------------------ scenario

/// A running scenario: its proxied cluster with [`TOPIC`] created, its
/// clock and its history.
struct Scenario {
    name: &'static str,
    started: Instant,
    deadline: Instant,
    cluster: Cluster,
    history: Arc<Mutex<History>>,
}

impl Scenario {
    fn start(name: &'static str) -> Scenario {
        Scenario::start_after(name, &[])
    }

    /// [`Scenario::start`], with `earlier` topics (1 partition each)
    /// created before [`TOPIC`].
    fn start_after(name: &'static str, earlier: &[&str]) -> Scenario {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(SCENARIO_BUDGET_MS);
        let cluster = Cluster::start_proxied();
        for topic in earlier {
            cluster.create_topic(topic, 1, deadline);
        }
        cluster.create_topic(TOPIC, 1, deadline);
        println!(
            "{name}: cluster up, topic created after {:?}",
            started.elapsed()
        );
        Scenario {
            name,
            started,
            deadline,
            cluster,
            history: Arc::new(Mutex::new(History::new())),
        }
    }

    fn recorder(&self, producer: u64) -> Recorder {
        Recorder::new(&self.history, producer, self.name, TOPIC, 0)
    }

    /// The leader of partition 0 among `among`, waiting at most
    /// [`ELECTION_WAIT_MS`] from `since`: (leader, epoch, elected after).
    fn wait_leader(&self, among: &[u64], since: Instant) -> (u64, u64, Duration) {
        let by = self
            .deadline
            .min(since + Duration::from_millis(ELECTION_WAIT_MS));
        let (l, epoch) = self
            .cluster
            .wait_leader(among, TOPIC, 0, by)
            .unwrap_or_else(|| {
                panic!(
                    "{}: no leader among {among:?} within {ELECTION_WAIT_MS} ms\n{}",
                    self.name,
                    self.cluster.stderr_excerpts()
                )
            });
        (l, epoch, since.elapsed())
    }

    /// One line per link: what it forwarded and dropped.
    fn link_summary(&self) -> String {
        let proxy = self.cluster.proxy();
        let mut out = String::new();
        for name in proxy.link_names() {
            let s = proxy.stats(&name).expect("a link of this proxy");
            out.push_str(&format!(
                "\n  link {name}: {} B forwarded, {} B dropped, {} connections, {} torn resets",
                s.client_to_upstream.forwarded_bytes,
                s.client_to_upstream.dropped_bytes,
                s.forwarded,
                s.torn_resets
            ));
        }
        out
    }

    /// Heals every link, has one more produce acknowledged, waits for
    /// every node to agree (leader, epoch, high watermark; `old`, if
    /// given, must then be a follower of another node), reads the leader's
    /// log and checks the history against it.
    fn finish(&self, producer: &mut Recorder, old: Option<u64>) {
        let name = self.name;
        self.cluster.proxy().heal_all();
        let healed_at = Instant::now();
        let all = all_nodes();
        producer.produce_acked(&self.cluster, &all, self.deadline);
        let agree_by = self
            .deadline
            .min(Instant::now() + Duration::from_millis(AGREE_WAIT_MS));
        let agreed = self
            .cluster
            .wait_agreement(TOPIC, 0, agree_by)
            .unwrap_or_else(|views| {
                panic!(
                    "{name}: the nodes did not agree on partition 0 within {AGREE_WAIT_MS} ms \
                     of the heal; (node, (leader, epoch, high watermark)): {views:?}\n{}",
                    self.cluster.stderr_excerpts()
                )
            });
        println!(
            "{name}: {:?} after the heal every node reports leader {} epoch {} high watermark {}",
            healed_at.elapsed(),
            agreed.leader,
            agreed.epoch,
            agreed.high_watermark
        );
        if let Some(old) = old {
            assert_ne!(
                agreed.leader, old,
                "{name}: after the heal the old leader {old} leads again (epoch {}); \
                 expected a follower of the new leader",
                agreed.epoch
            );
        }
        let (from, read) = read_final(&self.cluster, &all, TOPIC, 0, self.deadline);
        let history = lock_history(&self.history).clone();
        let report = checker::check(history.ops(), std::slice::from_ref(&read))
            .expect("a well-formed history");
        println!("{name}: read node {from} ({:?}): {report}", read.covered);
        assert!(
            report.is_valid(),
            "{name}: the history is not valid:\n{report}"
        );
        assert_eq!(
            read.covered.end, agreed.high_watermark,
            "{name}: the leader's read ends elsewhere than the agreed high watermark"
        );
        let top = top_acked(&history).expect("at least one acknowledged produce");
        assert!(
            top < read.covered.end,
            "{name}: acknowledged offset {top} not covered"
        );
        self.cluster.assert_no_panic(name);
        let wall = self.started.elapsed();
        println!("{name}: WALL {wall:?}");
        assert!(
            wall < Duration::from_millis(SCENARIO_BUDGET_MS),
            "{name} took {wall:?}"
        );
    }
}

fn show(attempts: &[(Duration, Attempt)]) -> String {
    attempts
        .iter()
        .map(|(after, a)| {
            format!(
                "\n  sent {} ms after the cut, answered {} ms later: {:?} {}",
                ms(*after),
                ms(a.answered_at - a.sent_at),
                a.outcome,
                a.error.as_deref().unwrap_or("")
            )
        })
        .collect()
}

// ------------------------------------------------------------------ isolation

/// Which of the leader's links a scenario cuts, and how.
#[derive(Debug, Clone, Copy)]
struct Cut {
    /// The links the leader sends on.
    outgoing: Option<Fault>,
    /// The links the others send to the leader on.
    incoming: Option<Fault>,
}

impl Cut {
    /// Applies the cut to the links of `old`; returns the links cut.
    fn apply(self, s: &Scenario, old: u64) -> Vec<String> {
        let mut cut = Vec::new();
        for (fault, links) in [
            (self.outgoing, strom_tests::cluster::links_from(old)),
            (self.incoming, strom_tests::cluster::links_to(old)),
        ] {
            if let Some(fault) = fault {
                s.cluster
                    .proxy()
                    .set_many(&links, fault)
                    .expect("the cluster's links");
                cut.extend(links);
            }
        }
        cut
    }
}

fn isolation_scenario(name: &'static str, cut: Cut) {
    let _one_at_a_time = serial();
    let s = Scenario::start(name);
    let all = all_nodes();
    let mut majority = s.recorder(1);
    majority.produce_n_acked(&s.cluster, &all, ACKED_PER_PHASE, s.deadline);
    let (old, old_epoch, _) = s.wait_leader(&all, Instant::now());
    let majority_nodes = others(old);

    // One produce in flight at the cut (any outcome; the checker judges).
    let mut in_flight = s.recorder(2);
    let mut conn = in_flight
        .connect(&s.cluster, old)
        .unwrap_or_else(|e| panic!("{name}: the old leader is unreachable: {e}"));
    let mut minority = s.recorder(3);
    let majority_done = AtomicBool::new(false);
    let (before, cut_links, cut_at, attempts, stepped_down, elected) = std::thread::scope(|sc| {
        let in_flight = sc.spawn(|| in_flight.produce_on(&mut conn));
        std::thread::sleep(Duration::from_millis(2));
        let cut_links = cut.apply(&s, old);
        let cut_at = Instant::now();
        // Moved into the threads: references, and the instant of the cut.
        let (s, majority_done, majority_nodes) = (&s, &majority_done, &majority_nodes);
        let (majority, minority) = (&mut majority, &mut minority);
        let minority_thread = sc.spawn(move || {
            let mut attempts = Vec::new();
            let mut unreachable = Vec::new();
            let mut stepped = None;
            while attempts.len() + unreachable.len() < MINORITY_ATTEMPTS_MAX
                && Instant::now() < s.deadline
                && (cut_at.elapsed() < Duration::from_millis(MINORITY_WINDOW_MS)
                    || !majority_done.load(Ordering::Acquire))
            {
                match minority.produce_to(&s.cluster, old) {
                    Ok(a) => attempts.push((a.sent_at - cut_at, a)),
                    Err(e) => unreachable.push((cut_at.elapsed(), e)),
                }
                if stepped.is_none() {
                    let names = reported_leader(&s.cluster, old).filter(|&l| l != old);
                    stepped = names.map(|l| (cut_at.elapsed(), l));
                }
                std::thread::sleep(Duration::from_millis(MINORITY_PAUSE_MS));
            }
            // check_quorum: a leader that hears from no majority steps down
            // by itself; one that hears the new leader follows it.
            if stepped.is_none() {
                let by = s
                    .deadline
                    .min(cut_at + Duration::from_millis(ELECTION_WAIT_MS));
                stepped =
                    wait_stepped_down(&s.cluster, old, true, by).map(|l| (cut_at.elapsed(), l));
            }
            (attempts, unreachable, stepped)
        });
        let majority_thread = sc.spawn(move || {
            let (new, epoch, after) = s.wait_leader(majority_nodes, cut_at);
            majority.produce_n_acked(&s.cluster, majority_nodes, ACKED_PER_PHASE, s.deadline);
            majority_done.store(true, Ordering::Release);
            (new, epoch, after, cut_at.elapsed())
        });
        let before = join(in_flight);
        let elected = join(majority_thread);
        let (attempts, unreachable, stepped) = join(minority_thread);
        (
            before,
            cut_links,
            cut_at,
            (attempts, unreachable),
            stepped,
            elected,
        )
    });
    let (attempts, unreachable) = attempts;
    let (new, new_epoch, elected_after, majority_acked_after) = elected;
    println!(
        "{name}: node {old} (epoch {old_epoch}) cut; node {new} led the majority after \
         {elected_after:?} (epoch {new_epoch}), {ACKED_PER_PHASE} acknowledged \
         {majority_acked_after:?} after the cut\n{name}: in flight at the cut: {:?} {}\n\
         {name}: produces to the old leader:{}\n{name}: the old leader could not be asked \
         (time after the cut, why): {unreachable:?}",
        before.outcome,
        before.error.as_deref().unwrap_or(""),
        show(&attempts)
    );
    assert_ne!(
        new, old,
        "{name}: the cut-off node {old} still leads the majority"
    );
    assert!(
        new_epoch > old_epoch,
        "{name}: new epoch {new_epoch} <= {old_epoch}"
    );
    let late = Duration::from_millis(ELECTION_TIMEOUT_MS);
    let late_acked: Vec<&(Duration, Attempt)> = attempts
        .iter()
        .filter(|(after, a)| *after >= late && matches!(a.outcome, Outcome::Ok { .. }))
        .collect();
    assert!(
        late_acked.is_empty(),
        "{name}: the cut-off old leader {old} acknowledged produces sent more than \
         {ELECTION_TIMEOUT_MS} ms after the cut: {late_acked:?}"
    );
    let late_sent = attempts.iter().filter(|(after, _)| *after >= late).count();
    assert!(
        late_sent >= 2,
        "{name}: only {late_sent} produces reached the old leader more than \
         {ELECTION_TIMEOUT_MS} ms after the cut; the check above proves little"
    );
    let (stepped_after, names) = stepped_down.unwrap_or_else(|| {
        panic!(
            "{name}: the cut-off old leader {old} still claimed to lead (or did not answer) \
             {ELECTION_WAIT_MS} ms after the cut\n{}",
            s.cluster.stderr_excerpts()
        )
    });
    println!(
        "{name}: the old leader first reported another leader {stepped_after:?} after the cut \
         (it named {names}, 0: none)"
    );

    // The cut was real. The old leader sends to every follower (its
    // heartbeats, its campaigns), so each of its cut outgoing links
    // dropped bytes; the others send to it when they answer it or
    // campaign, so at least one cut incoming link did.
    let proxy = s.cluster.proxy();
    let dropped = |l: &String| {
        proxy
            .stats(l)
            .expect("a cut link")
            .client_to_upstream
            .dropped_bytes
            > 0
    };
    let (outgoing, incoming): (Vec<&String>, Vec<&String>) = cut_links
        .iter()
        .partition(|l| l.starts_with(&format!("{old}->")));
    assert!(
        outgoing.iter().all(|l| dropped(l)),
        "{name}: a cut outgoing link dropped nothing:{}",
        s.link_summary()
    );
    assert!(
        incoming.is_empty() || incoming.iter().any(|l| dropped(l)),
        "{name}: no cut incoming link dropped anything:{}",
        s.link_summary()
    );
    println!(
        "{name}: links before the heal ({:?} after the cut):{}",
        cut_at.elapsed(),
        s.link_summary()
    );
    s.finish(&mut majority, Some(old));
}

#[test]
fn leader_isolated_both_ways_acknowledges_nothing_and_rejoins_as_follower() {
    isolation_scenario(
        "isolated-both-ways",
        Cut {
            outgoing: Some(Fault::Blackhole),
            incoming: Some(Fault::Blackhole),
        },
    );
}

#[test]
fn leader_that_cannot_send_acknowledges_nothing() {
    isolation_scenario(
        "outgoing-cut",
        Cut {
            outgoing: Some(Fault::DropOneWay(Direction::ClientToUpstream)),
            incoming: None,
        },
    );
}

#[test]
fn leader_that_cannot_hear_acknowledges_nothing() {
    isolation_scenario(
        "incoming-cut",
        Cut {
            outgoing: None,
            incoming: Some(Fault::DropOneWay(Direction::ClientToUpstream)),
        },
    );
}

// ------------------------------------------------------------------ pause

#[test]
fn leader_paused_past_the_election_timeout_steps_down_and_acknowledges_nothing_stale() {
    let name = "sigstop";
    let _one_at_a_time = serial();
    let s = Scenario::start(name);
    let all = all_nodes();
    let mut majority = s.recorder(1);
    majority.produce_n_acked(&s.cluster, &all, ACKED_PER_PHASE, s.deadline);
    let (old, old_epoch, _) = s.wait_leader(&all, Instant::now());
    let majority_nodes = others(old);

    // Connected (handshake done, partition count known) before the stop,
    // so its produce is written to the stopped node's socket at once.
    let mut paused = s.recorder(2);
    let mut conn = paused
        .connect(&s.cluster, old)
        .unwrap_or_else(|e| panic!("{name}: the old leader is unreachable: {e}"));
    s.cluster.node(old).signal(libc::SIGSTOP);
    let stopped_at = Instant::now();
    let (while_stopped, (new, new_epoch, elected_after), resumed_at) = std::thread::scope(|sc| {
        let sent = sc.spawn(|| paused.produce_on(&mut conn));
        let elected = s.wait_leader(&majority_nodes, stopped_at);
        majority.produce_n_acked(&s.cluster, &majority_nodes, ACKED_PER_PHASE, s.deadline);
        let left =
            (stopped_at + Duration::from_millis(STOP_MS)).saturating_duration_since(Instant::now());
        std::thread::sleep(left);
        s.cluster.node(old).signal(libc::SIGCONT);
        let resumed_at = Instant::now();
        (join(sent), elected, resumed_at)
    });
    let stopped_for = resumed_at - stopped_at;
    // Right after the resume: whatever it answers is judged by the checker.
    let after: Vec<Result<Attempt, String>> =
        (0..2).map(|_| paused.produce_to(&s.cluster, old)).collect();
    let by = s
        .deadline
        .min(resumed_at + Duration::from_millis(ELECTION_WAIT_MS));
    let names = wait_stepped_down(&s.cluster, old, false, by);
    println!(
        "{name}: node {old} (epoch {old_epoch}) stopped for {stopped_for:?}; node {new} led \
         after {elected_after:?} (epoch {new_epoch}); the produce sent while stopped: {:?} \
         {} (answered {:?} after the resume); after the resume: {:?}; the old leader names \
         {names:?} {:?} after the resume",
        while_stopped.outcome,
        while_stopped.error.as_deref().unwrap_or(""),
        while_stopped
            .answered_at
            .saturating_duration_since(resumed_at),
        after
            .iter()
            .map(|a| a.as_ref().map(|a| (a.outcome, a.error.clone())))
            .collect::<Vec<_>>(),
        resumed_at.elapsed()
    );
    assert_ne!(new, old);
    assert!(
        while_stopped.sent_at < resumed_at,
        "{name}: the produce was not sent while the leader was stopped"
    );
    assert!(
        names.is_some(),
        "{name}: the resumed old leader {old} did not report another leader within \
         {ELECTION_WAIT_MS} ms\n{}",
        s.cluster.stderr_excerpts()
    );
    s.finish(&mut majority, Some(old));
}

// ------------------------------------------------------------------ crash

#[test]
fn all_nodes_killed_together_keep_every_acknowledged_record() {
    kill_all_scenario("kill-all", &[]);
}

/// All three SIGKILLed and restarted; the produced topic created after
/// `earlier` topics.
fn kill_all_scenario(name: &'static str, earlier: &[&str]) {
    let _one_at_a_time = serial();
    let mut s = Scenario::start_after(name, earlier);
    let all = all_nodes();
    let mut producer = s.recorder(1);
    producer.produce_n_acked(&s.cluster, &all, ACKED_PER_PHASE, s.deadline);
    let links = s.cluster.proxy().link_names();
    s.cluster
        .proxy()
        .set_many(
            &links,
            Fault::Delay {
                delay_ms: CRASH_DELAY_MS,
            },
        )
        .expect("the cluster's links");
    producer.produce_n_acked(&s.cluster, &all, ACKED_PER_PHASE, s.deadline);
    let (leader, _, _) = s.wait_leader(&all, Instant::now());
    // Two produces in flight at the crash, connected first.
    let mut flying: Vec<(Recorder, strom_tests::cluster::Connected)> = (0..2)
        .filter_map(|i| {
            let r = s.recorder(10 + i);
            let c = r.connect(&s.cluster, leader).ok()?;
            Some((r, c))
        })
        .collect();
    let killed_at = std::thread::scope(|sc| {
        let handles: Vec<_> = flying
            .iter_mut()
            .map(|(r, c)| sc.spawn(move || r.produce_on(c)))
            .collect();
        std::thread::sleep(Duration::from_millis(5));
        let killed_at = Instant::now();
        s.cluster.kill_all();
        for h in handles {
            let a = join(h);
            println!(
                "{name}: in flight at the crash: {:?} {}",
                a.outcome,
                a.error.as_deref().unwrap_or("")
            );
        }
        killed_at
    });
    let top_before = top_acked(&lock_history(&s.history)).unwrap_or(0);
    for id in all_nodes() {
        s.cluster.restart(id);
    }
    let (new, _, recovered_after) = s.wait_leader(&all, killed_at);
    producer.produce_n_acked(&s.cluster, &all, ACKED_PER_PHASE, s.deadline);
    println!(
        "{name}: all killed with offset {top_before} acknowledged; node {new} led \
         {recovered_after:?} after the kill"
    );
    s.finish(&mut producer, None);
}

// ------------------------------------------------------------------ controller

/// What one node says of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TopicState {
    /// Exists, with this many partitions, each open with a known leader.
    Ready(usize),
    Absent,
}

/// Node `id`'s settled view of `topic`: `Ready` once every partition is
/// listed without error and with a leader, `Absent` on UnknownTopic when
/// `absent_is_final` (else it waits on); `Err` (the last answer) if neither
/// by `deadline`.
fn topic_state(
    cluster: &Cluster,
    id: u64,
    topic: &str,
    partitions: u32,
    absent_is_final: bool,
    deadline: Instant,
) -> Result<TopicState, String> {
    loop {
        let answer = match cluster.client(id) {
            None => Err(format!("node {id}: cannot connect")),
            Some(mut c) => match c.describe_topic(topic) {
                Ok(d) => {
                    let ready = d.partitions.len() == partitions as usize
                        && d.partitions
                            .iter()
                            .all(|p| p.error == ErrorCode::None && p.leader_node != 0);
                    if ready {
                        return Ok(TopicState::Ready(d.partitions.len()));
                    }
                    Err(format!("node {id}: not ready yet: {:?}", d.partitions))
                }
                Err(strom_client::Error::UnknownTopic { .. })
                | Err(strom_client::Error::Server {
                    code: ErrorCode::UnknownTopic,
                    ..
                }) if absent_is_final => return Ok(TopicState::Absent),
                Err(e) => Err(format!("node {id}: {e}")),
            },
        };
        if Instant::now() >= deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
}

/// The controller: the node `create_topic` of a fresh probe topic
/// succeeds on (every node tried in turn, until `deadline`).
fn find_controller(cluster: &Cluster, probe: &str, deadline: Instant) -> u64 {
    let mut last = String::new();
    while Instant::now() < deadline {
        for id in all_nodes() {
            let Some(mut c) = cluster.client(id) else {
                continue;
            };
            match c.create_topic(probe, 1, &[]) {
                Ok(()) => return id,
                Err(e) => last = format!("node {id}: {e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
    panic!("no node created {probe} in time; last: {last}");
}

#[test]
fn controller_killed_during_create_topics_leaves_all_or_nothing() {
    let name = "controller-kill";
    let _one_at_a_time = serial();
    let mut s = Scenario::start(name);
    let all = all_nodes();
    let mut rounds = Vec::new();
    for (round, delay_ms) in CREATE_KILL_DELAYS_MS.iter().copied().enumerate() {
        let round_started = Instant::now();
        let controller = find_controller(&s.cluster, &format!("probe-{round}"), s.deadline);
        let topic = format!("created-{round}");
        let mut client = s
            .cluster
            .client(controller)
            .unwrap_or_else(|| panic!("{name}: controller {controller} unreachable"));
        let answer = std::thread::scope(|sc| {
            let sender = sc.spawn(|| client.create_topic(&topic, CREATE_PARTITIONS, &[]));
            std::thread::sleep(Duration::from_millis(delay_ms));
            s.cluster.kill(controller);
            join(sender)
        });
        let mark = s.cluster.node(controller).stderr_len();
        let restarted =
            std::panic::catch_unwind(AssertUnwindSafe(|| s.cluster.restart(controller)));
        if let Err(panic) = restarted {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            let since = s.cluster.node(controller).stderr_since(mark);
            let replayed: Vec<&str> = since
                .lines()
                .filter_map(|l| l.split_once("topic created ").map(|(_, t)| t))
                .collect();
            panic!(
                "{name}: round {round}: controller {controller} did not come back after its \
                 SIGKILL (CreateTopics {topic} answered {answer:?}):\n{why}\n\
                 After the restart it logged `topic created` for topics it already had before \
                 the kill (it re-applied the metadata log from the start while its stored \
                 metadata was not yet in force, and removed the replicas of every later \
                 topic; see the module docs): {replayed:?}"
            );
        }
        // A barrier: once this topic is created (through whichever node
        // controls now) and a node shows it, every metadata entry before
        // it is committed and applied on that node (entries apply in log
        // order), so what the node then says of the other topic is final.
        let barrier = format!("barrier-{round}");
        s.cluster.create_topic(&barrier, 1, s.deadline);
        let mut states = Vec::new();
        for id in all.iter().copied() {
            let b = topic_state(&s.cluster, id, &barrier, 1, false, s.deadline)
                .unwrap_or_else(|e| panic!("{name}: barrier {barrier} not settled: {e}"));
            assert_eq!(
                b,
                TopicState::Ready(1),
                "{name}: barrier {barrier} on node {id}"
            );
            let state = topic_state(&s.cluster, id, &topic, CREATE_PARTITIONS, true, s.deadline)
                .unwrap_or_else(|e| {
                    panic!(
                        "{name}: round {round}: node {id} neither shows {topic} ready nor \
                         unknown: {e}\n{}",
                        s.cluster.stderr_excerpts()
                    )
                });
            states.push((id, state));
        }
        println!(
            "{name}: round {round}: CreateTopics {topic} to controller {controller}, killed \
             {delay_ms} ms later: answer {answer:?}; nodes: {states:?} ({:?})",
            round_started.elapsed()
        );
        let first = states[0].1.clone();
        assert!(
            states.iter().all(|(_, st)| *st == first),
            "{name}: round {round}: the nodes disagree about {topic}: {states:?}"
        );
        if answer.is_ok() {
            assert_eq!(
                first,
                TopicState::Ready(CREATE_PARTITIONS as usize),
                "{name}: round {round}: {topic} was created (answered Ok) but is absent"
            );
        }
        if first != TopicState::Absent {
            for p in 0..CREATE_PARTITIONS {
                let mut r = Recorder::new(
                    &s.history,
                    100 + 10 * round as u64 + u64::from(p),
                    name,
                    &topic,
                    p,
                );
                r.produce_acked(&s.cluster, &all, s.deadline);
            }
        }
        rounds.push((delay_ms, answer.is_ok(), first));
    }
    println!("{name}: (kill delay ms, answered Ok, state) per round: {rounds:?}");
    s.cluster.assert_no_panic(name);
    let wall = s.started.elapsed();
    println!("{name}: WALL {wall:?}");
    assert!(
        wall < Duration::from_millis(SCENARIO_BUDGET_MS),
        "{name} took {wall:?}"
    );
}

#[test]
fn all_nodes_killed_together_keep_the_records_of_a_later_topic() {
    kill_all_scenario("kill-all-later-topic", &["created-first"]);
}

// ------------------------------------------------------------------ restart

#[test]
fn killed_node_restarts_while_a_peer_link_to_it_is_down() {
    let name = "restart-cut-off";
    let _one_at_a_time = serial();
    let mut s = Scenario::start(name);
    let all = all_nodes();
    let mut producer = s.recorder(1);
    producer.produce_n_acked(&s.cluster, &all, ACKED_PER_PHASE, s.deadline);
    let (leader, _, _) = s.wait_leader(&all, Instant::now());
    let follower = others(leader)[0];
    // The follower's peers cannot reach it (their connections stay open,
    // their bytes are dropped) when it crashes; it restarts still cut off.
    let inbound = strom_tests::cluster::links_to(follower);
    s.cluster
        .proxy()
        .set_many(&inbound, Fault::Blackhole)
        .expect("the cluster's links");
    // The node itself, not `Cluster::kill` (whose workaround resets the
    // links).
    s.cluster.node_mut(follower).kill();
    let killed_at = Instant::now();
    s.cluster.restart(follower);
    println!(
        "{name}: node {follower} restarted {:?} after its kill",
        killed_at.elapsed()
    );
    s.finish(&mut producer, None);
}
