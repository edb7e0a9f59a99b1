//! Consumer groups end to end: real `strom-server` processes, `strom
//! consume --group` processes and the Rust [`GroupConsumer`].
//!
//! - Three consumer processes share a 6-partition topic and consume 60,000
//!   records: none missed, none delivered by two members within one
//!   generation; one is SIGKILLed (no leave) and its partitions move to the
//!   others after the session timeout; a new one joins and gets a share;
//!   `strom group list|describe|reset-offsets` are checked against it.
//! - The library consumer: explicit commits, rebalance callbacks, fenced
//!   commits refused (old generation, unknown member, expired zombie), a
//!   clean leave that rebalances at once, committed offsets and the
//!   generation surviving a server SIGKILL and restart.
//!
//! The servers run with `--group-min-session-timeout-ms 1000` and
//! `--group-initial-rebalance-delay-ms 0` so that session expiry takes two
//! seconds, not six.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strom_client::{
    Acks, Assignment, AutoOffsetReset, Client, ConnectionConfig, ErrorCode, GroupConfig,
    GroupConsumer, GroupDescription, Producer, ProducerConfig, ProducerRecord, RebalanceListener,
};
use strom_flatbuffers::protocol::{GroupProtocol, JoinGroupRequest, SyncGroupRequest};
use strom_tests::{run_with_timeout, strom_bin, TempDir, TestServer};

/// Session timeout of the consumers (the server's minimum is 1000 here).
const SESSION_MS: u32 = 2_000;
/// Bound on any one wait for the group or the records.
const WAIT: Duration = Duration::from_secs(90);
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

fn start_server(dir: &TempDir) -> TestServer {
    TestServer::start_in(
        2,
        dir.path(),
        &[
            "--group-min-session-timeout-ms",
            "1000",
            "--group-initial-rebalance-delay-ms",
            "0",
        ],
    )
}

fn quick() -> ConnectionConfig {
    ConnectionConfig {
        connect_timeout_ms: 2_000,
        request_timeout_ms: 10_000,
        reconnect_attempts_max: 2,
        ..Default::default()
    }
}

fn strom(addr: &str, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(strom_bin());
    cmd.arg("--server").arg(addr).args(args);
    let (code, out, err) = run_with_timeout(&mut cmd, b"", CLI_TIMEOUT);
    (code, String::from_utf8_lossy(&out).into_owned(), err)
}

/// Produces `ids` to `topic`, record `id` to partition `id % partitions`
/// with value `id`; returns (partition, offset) -> id.
fn produce(
    addr: &str,
    topic: &str,
    partitions: u32,
    ids: std::ops::Range<u64>,
) -> Vec<(u32, u64, u64)> {
    let mut p = Producer::connect(
        addr,
        ProducerConfig {
            acks: Acks::Leader,
            ..Default::default()
        },
    )
    .expect("producer");
    let mut sent = Vec::new();
    let mut out = Vec::new();
    for id in ids {
        let value = id.to_string();
        let part = (id % u64::from(partitions)) as u32;
        p.send(&ProducerRecord::new(topic, value.as_bytes()).partition(part))
            .expect("send");
        sent.push((part, id));
        if sent.len() >= 10_000 {
            for ((part, id), r) in sent.drain(..).zip(p.flush()) {
                out.push((part, r.expect("acknowledged"), id));
            }
        }
    }
    for ((part, id), r) in sent.drain(..).zip(p.flush()) {
        out.push((part, r.expect("acknowledged"), id));
    }
    out
}

fn describe(client: &mut Client, group: &str) -> Option<GroupDescription> {
    client.describe_group(group).ok()
}

/// (member id, partitions) of a described group.
fn owners(d: &GroupDescription) -> BTreeMap<String, Vec<u32>> {
    d.members
        .iter()
        .map(|m| {
            (
                m.member_id.clone(),
                m.partitions
                    .iter()
                    .flat_map(|tp| tp.partitions.clone())
                    .collect(),
            )
        })
        .collect()
}

/// Waits until `group` is Stable with `members` members owning
/// `per_member` partitions each; returns the description.
fn wait_balanced(
    client: &mut Client,
    group: &str,
    members: usize,
    per_member: usize,
) -> GroupDescription {
    let deadline = Instant::now() + WAIT;
    loop {
        let d = describe(client, group);
        if let Some(d) = &d {
            let o = owners(d);
            if d.state == "Stable"
                && o.len() == members
                && o.values().all(|ps| ps.len() == per_member)
            {
                return d.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "group {group} not balanced over {members} members within {WAIT:?}: {d:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ------------------------------------------------------------ CLI members

#[derive(Debug, Clone, PartialEq, Eq)]
struct Delivery {
    proc: usize,
    member: String,
    generation: i32,
    partition: u32,
    offset: u64,
    value: u64,
}

/// A `strom consume --group` child process; SIGKILLed on drop.
struct ConsumerProc {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl ConsumerProc {
    fn spawn(
        idx: usize,
        addr: &str,
        topic: &str,
        group: &str,
        sink: Arc<Mutex<Vec<Delivery>>>,
    ) -> Self {
        let session = SESSION_MS.to_string();
        let mut child = Command::new(strom_bin())
            .args(["--server", addr, "consume", topic, "--group", group])
            .args(["--from-beginning", "--session-timeout-ms", &session])
            .args([
                "--format",
                "{member} {generation} {partition} {offset} {value}",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strom consume");
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let f: Vec<&str> = line.split(' ').collect();
                assert_eq!(f.len(), 5, "consumer {idx} printed {line:?}");
                let d = Delivery {
                    proc: idx,
                    member: f[0].to_owned(),
                    generation: f[1].parse().expect("generation"),
                    partition: f[2].parse().expect("partition"),
                    offset: f[3].parse().expect("offset"),
                    value: f[4].parse().expect("value"),
                };
                sink.lock().expect("sink").push(d);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr");
        let e2 = stderr.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut s);
            e2.lock().expect("stderr").push_str(&s);
        });
        ConsumerProc { child, stderr }
    }

    /// SIGKILL: no LeaveGroup, no last commit.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn assert_running(&mut self, name: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            std::thread::sleep(Duration::from_millis(200));
            panic!(
                "{name} exited with {status}: {}",
                self.stderr.lock().expect("stderr")
            );
        }
    }
}

impl Drop for ConsumerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until every (partition, offset) of `produced` was delivered.
fn wait_delivered(
    sink: &Arc<Mutex<Vec<Delivery>>>,
    produced: &[(u32, u64, u64)],
    procs: &mut [ConsumerProc],
    alive: &[bool],
) {
    let want: BTreeSet<(u32, u64)> = produced.iter().map(|(p, o, _)| (*p, *o)).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let missing = {
            let got: BTreeSet<(u32, u64)> = sink
                .lock()
                .expect("sink")
                .iter()
                .map(|d| (d.partition, d.offset))
                .collect();
            want.difference(&got).count()
        };
        if missing == 0 {
            return;
        }
        for (i, p) in procs.iter_mut().enumerate() {
            if alive[i] {
                p.assert_running(&format!("consumer {i}"));
            }
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} records not delivered within {WAIT:?}",
            want.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_consumer_processes_share_60k_records_survive_a_kill_and_take_in_a_joiner() {
    const PARTS: u32 = 6;
    let dir = TempDir::new("strom-groups");
    let server = start_server(&dir);
    let addr = server.addr().to_owned();
    let topic = "events";
    let group = "g3";
    let mut admin = Client::connect_with(&addr, quick()).expect("admin");
    admin.create_topic(topic, PARTS, &[]).expect("create");

    let sink: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let mut procs: Vec<ConsumerProc> = (0..3)
        .map(|i| ConsumerProc::spawn(i, &addr, topic, group, sink.clone()))
        .collect();
    let mut alive = vec![true; 3];
    wait_balanced(&mut admin, group, 3, 2);

    // Phase 1: 60,000 records over three members.
    let mut produced = produce(&addr, topic, PARTS, 0..60_000);
    wait_delivered(&sink, &produced, &mut procs, &alive);
    {
        let got = sink.lock().expect("sink");
        let per_proc: Vec<usize> = (0..3)
            .map(|i| got.iter().filter(|d| d.proc == i).count())
            .collect();
        assert!(
            per_proc.iter().all(|&n| n >= 10_000),
            "every member consumed its share: {per_proc:?}"
        );
    }

    // Phase 2: SIGKILL consumer 0; its partitions move after the session
    // timeout.
    let before = describe(&mut admin, group).expect("described");
    let killed_member = sink
        .lock()
        .expect("sink")
        .iter()
        .rev()
        .find(|d| d.proc == 0)
        .map(|d| d.member.clone())
        .expect("consumer 0 delivered");
    let killed_parts = owners(&before)
        .get(&killed_member)
        .cloned()
        .expect("consumer 0 owns partitions");
    let killed_at = Instant::now();
    procs[0].kill();
    alive[0] = false;
    let after = wait_balanced(&mut admin, group, 2, 3);
    let moved_after = killed_at.elapsed();
    assert!(
        after.generation > before.generation,
        "{} -> {}",
        before.generation,
        after.generation
    );
    assert!(!owners(&after).contains_key(&killed_member));
    assert!(
        moved_after >= Duration::from_millis(u64::from(SESSION_MS) - 500),
        "partitions moved after {moved_after:?}, before the session timeout"
    );
    let phase2 = produce(&addr, topic, PARTS, 60_000..66_000);
    wait_delivered(&sink, &phase2, &mut procs, &alive);
    {
        let got = sink.lock().expect("sink");
        for &p in &killed_parts {
            let last = phase2
                .iter()
                .rfind(|(pp, _, _)| *pp == p)
                .expect("produced");
            let d = got
                .iter()
                .find(|d| d.partition == p && d.offset == last.1)
                .expect("delivered");
            assert!(d.proc != 0 && d.generation >= after.generation, "{d:?}");
        }
    }
    produced.extend(phase2);

    // Phase 3: a new member joins and gets a share.
    procs.push(ConsumerProc::spawn(3, &addr, topic, group, sink.clone()));
    alive.push(true);
    let joined = wait_balanced(&mut admin, group, 3, 2);
    let phase3 = produce(&addr, topic, PARTS, 66_000..72_000);
    wait_delivered(&sink, &phase3, &mut procs, &alive);
    {
        let got = sink.lock().expect("sink");
        let new_member = got
            .iter()
            .filter(|d| d.proc == 3 && d.value >= 66_000)
            .count();
        assert!(
            new_member >= 2_000,
            "the joiner consumed {new_member} new records"
        );
        assert!(got
            .iter()
            .filter(|d| d.proc == 3)
            .all(|d| d.generation >= joined.generation));
    }
    produced.extend(phase3);

    // Every record delivered, with its value; no (generation, partition)
    // consumed by two members.
    {
        let got = sink.lock().expect("sink");
        let expect: HashMap<(u32, u64), u64> =
            produced.iter().map(|(p, o, id)| ((*p, *o), *id)).collect();
        let mut owner: HashMap<(i32, u32), &str> = HashMap::new();
        for d in got.iter() {
            assert_eq!(
                expect.get(&(d.partition, d.offset)),
                Some(&d.value),
                "{d:?} is not what was produced there"
            );
            let o = owner
                .entry((d.generation, d.partition))
                .or_insert(&d.member);
            assert_eq!(
                *o, d.member,
                "partition {} delivered to two members in generation {}",
                d.partition, d.generation
            );
        }
        let delivered: BTreeSet<(u32, u64)> = got.iter().map(|d| (d.partition, d.offset)).collect();
        assert_eq!(delivered.len(), expect.len(), "every record delivered");
        let dups = got.len() - delivered.len();
        eprintln!(
            "{} records, {} deliveries ({dups} redelivered after the kill), generations {:?}",
            expect.len(),
            got.len(),
            got.iter().map(|d| d.generation).collect::<BTreeSet<_>>()
        );
    }

    // The CLI sees the group: list, describe with lag 0 once committed.
    let (code, out, err) = strom(&addr, &["group", "list"]);
    assert_eq!(code, 0, "{err}");
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with(group))
        .unwrap_or_else(|| panic!("{group} not listed: {out}"))
        .split_whitespace()
        .collect();
    assert_eq!(row, [group, "Stable", "3"], "{out}");
    assert!(out.starts_with("GROUP"), "{out}");
    let per_part = 72_000 / u64::from(PARTS);
    let deadline = Instant::now() + WAIT;
    let members: BTreeSet<String> = owners(&joined).into_keys().collect();
    loop {
        let (code, out, err) = strom(&addr, &["group", "describe", group]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("State: Stable") && out.contains("Members: 3"),
            "{out}"
        );
        let header = out
            .lines()
            .find(|l| l.starts_with("TOPIC"))
            .expect("offsets table");
        assert_eq!(
            header.split_whitespace().collect::<Vec<_>>(),
            [
                "TOPIC",
                "PARTITION",
                "COMMITTED-OFFSET",
                "END-OFFSET",
                "LAG",
                "MEMBER-ID",
                "CLIENT-ID"
            ]
        );
        let rows: Vec<Vec<&str>> = out
            .lines()
            .filter(|l| l.starts_with(topic))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows.len(), PARTS as usize, "{out}");
        let done = rows
            .iter()
            .all(|r| r[2] == per_part.to_string() && r[3] == per_part.to_string() && r[4] == "0");
        if done {
            for r in &rows {
                assert!(members.contains(r[5]), "{r:?} owned by a member: {out}");
                assert_eq!(r[6], "strom-cli");
            }
            break;
        }
        assert!(Instant::now() < deadline, "lag never reached 0: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Reset refused while the group has members.
    let (code, _, err) = strom(
        &addr,
        &[
            "group",
            "reset-offsets",
            group,
            "--topic",
            topic,
            "--to-earliest",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("active members"), "{err}");
    // Argument errors.
    let (code, _, err) = strom(&addr, &["group", "reset-offsets", group, "--topic", topic]);
    assert_eq!(code, 1, "{err}");

    for (i, p) in procs.iter_mut().enumerate() {
        if alive[i] {
            p.kill();
            alive[i] = false;
        }
    }
    // Killed, not left: the group empties after the session timeout.
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, out, _) = strom(&addr, &["group", "list"]);
        assert_eq!(code, 0);
        if out
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == [group, "Empty", "0"])
        {
            break;
        }
        assert!(Instant::now() < deadline, "group never emptied: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let committed = |admin: &mut Client| -> Vec<i64> {
        let mut r = admin
            .fetch_offsets(
                group,
                &(0..PARTS)
                    .map(|p| (topic.to_owned(), p))
                    .collect::<Vec<_>>(),
            )
            .expect("fetch offsets");
        r.sort_by_key(|r| r.partition);
        r.into_iter().map(|r| r.offset).collect()
    };
    let (code, out, err) = strom(
        &addr,
        &[
            "group",
            "reset-offsets",
            group,
            "--topic",
            topic,
            "--to-earliest",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("TOPIC"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with(topic)).count(),
        6,
        "{out}"
    );
    assert_eq!(committed(&mut admin), vec![0; 6]);
    let (_, out, _) = strom(&addr, &["group", "describe", group]);
    assert!(out.contains("State: Empty"), "{out}");
    assert!(
        out.lines()
            .filter(|l| l.starts_with(topic))
            .all(|l| l.split_whitespace().nth(4) == Some(&per_part.to_string()[..])),
        "lag = end offset after reset to earliest: {out}"
    );
    let (code, _, err) = strom(
        &addr,
        &[
            "group",
            "reset-offsets",
            group,
            "--topic",
            topic,
            "--to-offset",
            "5000",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(committed(&mut admin), vec![5_000; 6]);
    let (code, out, err) = strom(
        &addr,
        &[
            "group",
            "reset-offsets",
            group,
            "--topic",
            topic,
            "--partition",
            "2",
            "--to-offset",
            "99999999",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert_eq!(
        committed(&mut admin),
        vec![5_000, 5_000, per_part as i64, 5_000, 5_000, 5_000],
        "clamped to the end offset"
    );
    let (code, _, err) = strom(
        &addr,
        &[
            "group",
            "reset-offsets",
            group,
            "--topic",
            topic,
            "--to-latest",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(committed(&mut admin), vec![per_part as i64; 6]);
    let (code, _, err) = strom(&addr, &["group", "describe", "no-such-group"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("GroupIdNotFound") || err.contains("not"),
        "{err}"
    );
    drop(server);
}

// ------------------------------------------------------- library consumer

#[derive(Default)]
struct Events(Arc<Mutex<Vec<String>>>);

impl RebalanceListener for Events {
    fn on_revoked(&mut self, revoked: &[Assignment]) {
        self.0
            .lock()
            .expect("events")
            .push(format!("revoked {}", revoked.len()));
    }
    fn on_lost(&mut self, lost: &[Assignment]) {
        self.0
            .lock()
            .expect("events")
            .push(format!("lost {}", lost.len()));
    }
    fn on_assigned(&mut self, assigned: &[Assignment], generation: i32) {
        self.0
            .lock()
            .expect("events")
            .push(format!("assigned {} gen {generation}", assigned.len()));
    }
}

fn group_config(group: &str, session_ms: u32) -> GroupConfig {
    let mut c = GroupConfig::new(group);
    c.client_id = "lib-test".into();
    c.session_timeout_ms = session_ms;
    c.rebalance_timeout_ms = 20_000;
    c.auto_offset_reset = AutoOffsetReset::Earliest;
    c.enable_auto_commit = false;
    c.connection = quick();
    c
}

/// Polls until `n` records were handed out (bounded by [`WAIT`]); returns
/// (partition, offset) of each.
fn consume_n(c: &mut GroupConsumer, n: usize) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} records",
            out.len()
        );
        for f in c.poll(Duration::from_millis(200)).expect("poll") {
            out.extend(f.records().map(|r| (f.partition, r.offset)));
        }
    }
    out
}

/// Polls (handing out nothing new is fine) until `cond` holds.
fn poll_until(c: &mut GroupConsumer, what: &str, mut cond: impl FnMut(&mut GroupConsumer) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond(c) {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        c.poll(Duration::from_millis(100)).expect("poll");
    }
}

fn committed_map(client: &mut Client, group: &str, topic: &str, parts: u32) -> Vec<i64> {
    let mut r = client
        .fetch_offsets(
            group,
            &(0..parts)
                .map(|p| (topic.to_owned(), p))
                .collect::<Vec<_>>(),
        )
        .expect("fetch offsets");
    r.sort_by_key(|r| r.partition);
    r.into_iter().map(|r| r.offset).collect()
}

#[test]
fn group_consumer_commits_fences_zombies_leaves_cleanly_and_offsets_survive_sigkill() {
    const PARTS: u32 = 3;
    let dir = TempDir::new("strom-groups-lib");
    let mut server = start_server(&dir);
    let addr = server.addr().to_owned();
    let topic = "lib";
    let group = "glib";
    let mut admin = Client::connect_with(&addr, quick()).expect("admin");
    admin.create_topic(topic, PARTS, &[]).expect("create");
    produce(&addr, topic, PARTS, 0..3_000);

    // One member: everything, then an explicit commit.
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut a = GroupConsumer::connect(&addr, group_config(group, SESSION_MS)).expect("a");
    a.set_rebalance_listener(Box::new(Events(events.clone())));
    a.subscribe(&[topic]).expect("subscribe");
    let got = consume_n(&mut a, 3_000);
    assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), 3_000);
    assert_eq!(a.assignments().len(), 3);
    a.commit().expect("commit");
    assert_eq!(
        committed_map(&mut admin, group, topic, PARTS),
        vec![1_000; 3]
    );
    let gen_a = a.generation();
    assert!(gen_a >= 1);

    // Fenced commits are refused and change nothing.
    let stale = admin
        .commit_offsets_as(group, a.member_id(), gen_a - 1, &[(topic.into(), 0, 1)])
        .expect_err("old generation");
    assert_eq!(stale.code(), Some(ErrorCode::IllegalGeneration), "{stale}");
    let ghost = admin
        .commit_offsets_as(group, "ghost", gen_a, &[(topic.into(), 0, 1)])
        .expect_err("unknown member");
    assert_eq!(ghost.code(), Some(ErrorCode::UnknownMemberId), "{ghost}");
    let simple = admin
        .commit_offsets(group, &[(topic.into(), 0, 1)])
        .expect_err("outside group management while the group has members");
    assert_eq!(simple.code(), Some(ErrorCode::UnknownMemberId), "{simple}");
    assert_eq!(
        committed_map(&mut admin, group, topic, PARTS),
        vec![1_000; 3]
    );

    // A zombie: joins (taking a share), then never heartbeats. `a` rejoins
    // for it; after its session it is removed and its commit is refused.
    let zaddr = addr.clone();
    let zombie = std::thread::spawn(move || {
        let mut z = Client::connect_with(&zaddr, quick()).expect("zombie");
        let j = z
            .join_group(
                JoinGroupRequest {
                    group: "glib".into(),
                    member_id: String::new(),
                    client_id: "zombie".into(),
                    protocol_type: "consumer".into(),
                    protocols: vec![GroupProtocol {
                        name: "range".into(),
                        metadata: Vec::new(),
                    }],
                    session_timeout_ms: 1_000,
                    rebalance_timeout_ms: 20_000,
                    topics: vec!["lib".into()],
                    coordinator_assigns: true,
                },
                20_000,
            )
            .expect("zombie join");
        assert_eq!(j.error, ErrorCode::None, "{}", j.message);
        let s = z
            .sync_group(
                SyncGroupRequest {
                    group: "glib".into(),
                    member_id: j.member_id.clone(),
                    generation: j.generation,
                    assignments: Vec::new(),
                },
                20_000,
            )
            .expect("zombie sync");
        assert_eq!(s.error, ErrorCode::None, "{}", s.message);
        (z, j.member_id, j.generation, s.partitions)
    });
    // `a` must rejoin for the zombie's join to complete.
    poll_until(&mut a, "a rejoins with the zombie", |a| {
        a.generation() > gen_a
    });
    let (mut z, zid, zgen, zparts) = zombie.join().expect("zombie thread");
    assert_eq!(zgen, a.generation());
    let zcount: usize = zparts.iter().map(|tp| tp.partitions.len()).sum();
    assert_eq!(
        zcount + a.assignments().len(),
        3,
        "shared between a and the zombie"
    );
    // The zombie's session runs out; `a` gets everything back.
    poll_until(&mut a, "a takes the zombie's partitions", |a| {
        a.assignments().len() == 3 && a.generation() > zgen
    });
    let late = z
        .commit_offsets_as(group, &zid, zgen, &[(topic.into(), 0, 1)])
        .expect_err("expired zombie");
    assert!(
        matches!(
            late.code(),
            Some(ErrorCode::UnknownMemberId) | Some(ErrorCode::IllegalGeneration)
        ),
        "{late}"
    );
    assert_eq!(
        committed_map(&mut admin, group, topic, PARTS),
        vec![1_000; 3]
    );
    {
        let ev = events.lock().expect("events").clone();
        assert!(ev.len() >= 5, "{ev:?}");
        assert_eq!(ev[0], format!("assigned 3 gen {gen_a}"), "{ev:?}");
        assert_eq!(ev[1], "revoked 3", "{ev:?}");
        assert!(
            ev.last().expect("event").starts_with("assigned 3 gen"),
            "{ev:?}"
        );
    }

    // A second member with a long session joins, then leaves cleanly on
    // drop: `a` gets its partitions back well before that session ends.
    let mut b = GroupConsumer::connect(&addr, group_config(group, 30_000)).expect("b");
    b.subscribe(&[topic]).expect("subscribe b");
    let b_thread = std::thread::spawn(move || {
        poll_until(&mut b, "b gets a share", |b| !b.assignments().is_empty());
        b
    });
    poll_until(&mut a, "a shares with b", |a| a.assignments().len() < 3);
    let b = b_thread.join().expect("b thread");
    assert_eq!(b.assignments().len() + a.assignments().len(), 3);
    let left_at = Instant::now();
    b.close().expect("b leaves");
    poll_until(&mut a, "a after b left", |a| a.assignments().len() == 3);
    assert!(
        left_at.elapsed() < Duration::from_secs(10),
        "a clean leave rebalances at once, took {:?}",
        left_at.elapsed()
    );

    // More records, consumed and committed; then a server SIGKILL.
    produce(&addr, topic, PARTS, 3_000..4_500);
    let got = consume_n(&mut a, 1_500);
    assert!(
        got.iter().all(|(_, o)| *o >= 1_000),
        "resumed after the commit"
    );
    a.commit().expect("commit");
    let before = committed_map(&mut admin, group, topic, PARTS);
    assert_eq!(before, vec![1_500; 3]);
    let last_gen = a.generation();
    a.close().expect("a leaves");
    drop(z);
    drop(admin);
    server.kill();
    server.start_again();
    let addr = server.addr().to_owned();
    let mut admin = Client::connect_with(&addr, quick()).expect("admin after restart");
    assert_eq!(committed_map(&mut admin, group, topic, PARTS), before);
    // A new member starts at the committed offsets, in a later generation.
    let mut c = GroupConsumer::connect(&addr, group_config(group, SESSION_MS)).expect("c");
    c.subscribe(&[topic]).expect("subscribe c");
    let first = c.poll(Duration::from_secs(2)).expect("poll c");
    assert!(first.is_empty(), "nothing after the committed offsets yet");
    assert!(c.generation() > last_gen, "{} > {last_gen}", c.generation());
    for p in 0..PARTS {
        assert_eq!(c.position(topic, p), Some(1_500));
    }
    produce(&addr, topic, PARTS, 4_500..4_503);
    let got = consume_n(&mut c, 3);
    let mut got: Vec<(u32, u64)> = got;
    got.sort();
    assert_eq!(got, vec![(0, 1_500), (1, 1_500), (2, 1_500)]);
    c.close().expect("c leaves");
    let d = admin.describe_group(group).expect("describe");
    assert_eq!(d.state, "Empty");
    assert!(d.members.is_empty());
}

/// Committed offsets and the generation of every group in `want`, checked
/// three ways: `strom group list`, an offset fetch, and `describe`.
fn check_groups(
    server: &TestServer,
    topic: &str,
    parts: u32,
    want: &BTreeMap<String, (Vec<i64>, i32)>,
    when: &str,
) {
    let addr = server.addr();
    let (code, out, err) = strom(addr, &["group", "list"]);
    assert_eq!(code, 0, "{when}: strom group list: {err}");
    let listed: BTreeSet<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut admin = Client::connect_with(addr, quick()).expect("admin");
    for (group, (offsets, generation)) in want {
        assert!(
            listed.contains(group.as_str()),
            "{when}: `strom group list` lacks {group} (cores {}):\n{out}\nstderr:\n{}",
            server.cores(),
            server.stderr()
        );
        assert_eq!(
            &committed_map(&mut admin, group, topic, parts),
            offsets,
            "{when}: committed offsets of {group} (cores {})",
            server.cores()
        );
        let d = admin.describe_group(group).expect("describe");
        assert_eq!(d.state, "Empty", "{when}: {group}");
        assert_eq!(
            d.generation,
            *generation,
            "{when}: generation of {group} (cores {})",
            server.cores()
        );
    }
}

/// Joins `group` as its only member and leaves again: a later generation,
/// which it returns (as `describe` shows it once the group is Empty).
fn bump_generation(addr: &str, group: &str) -> i32 {
    let mut c = Client::connect_with(addr, quick()).expect("member");
    let j = c
        .join_group(
            JoinGroupRequest {
                group: group.into(),
                member_id: String::new(),
                client_id: "bump".into(),
                protocol_type: "consumer".into(),
                protocols: vec![GroupProtocol {
                    name: "range".into(),
                    metadata: Vec::new(),
                }],
                session_timeout_ms: 1_000,
                rebalance_timeout_ms: 20_000,
                topics: Vec::new(),
                coordinator_assigns: true,
            },
            20_000,
        )
        .expect("join");
    assert_eq!(j.error, ErrorCode::None, "{}", j.message);
    let s = c
        .sync_group(
            SyncGroupRequest {
                group: group.into(),
                member_id: j.member_id.clone(),
                generation: j.generation,
                assignments: Vec::new(),
            },
            20_000,
        )
        .expect("sync");
    assert_eq!(s.error, ErrorCode::None, "{}", s.message);
    c.leave_group(group, &[j.member_id]).expect("leave");
    // The last member leaving ends that generation too.
    let d = c.describe_group(group).expect("describe");
    assert_eq!(d.state, "Empty", "{group} after the leave");
    assert!(d.generation >= j.generation, "{group}: {d:?}");
    d.generation
}

/// Regression: committed offsets vanished when the shard count changed.
/// Groups were owned by shard `crc32c(group) % shards` and their offsets
/// lived in that shard's own log; restarted with `--cores 1`, the log of
/// shard 1 was never opened again and every group it held (about half)
/// silently restarted from `auto.offset.reset`. Offsets now live in a fixed
/// number of offsets partitions recorded in the metadata, placed like topic
/// partitions, so a shard-count change moves them whole.
#[test]
fn committed_offsets_and_generations_survive_shard_count_changes() {
    const PARTS: u32 = 4;
    const GROUPS: usize = 12;
    let topic = "moves";
    let dir = TempDir::new("strom-groups-reshard");
    let mut server = start_server(&dir);
    assert_eq!(server.cores(), 2);
    let addr = server.addr().to_owned();
    let mut admin = Client::connect_with(&addr, quick()).expect("admin");
    admin.create_topic(topic, PARTS, &[]).expect("create");
    produce(&addr, topic, PARTS, 0..400);

    // Twelve groups, each with its own offsets; four also have generations.
    let mut want: BTreeMap<String, (Vec<i64>, i32)> = BTreeMap::new();
    let commit =
        |admin: &mut Client, want: &mut BTreeMap<String, (Vec<i64>, i32)>, g: &str, base: u64| {
            let offsets: Vec<(String, u32, u64)> = (0..PARTS)
                .map(|p| (topic.to_owned(), p, base + u64::from(p)))
                .collect();
            admin.commit_offsets(g, &offsets).expect("commit");
            let e: &mut (Vec<i64>, i32) = want.entry(g.to_owned()).or_insert((Vec::new(), 0));
            e.0 = offsets.iter().map(|(_, _, o)| *o as i64).collect();
        };
    for i in 0..GROUPS {
        let g = format!("g-{i:02}");
        if i % 3 == 0 {
            let generation = bump_generation(&addr, &g);
            want.entry(g.clone()).or_insert((Vec::new(), 0)).1 = generation;
        }
        commit(&mut admin, &mut want, &g, 1 + i as u64 * 5);
    }
    drop(admin);
    check_groups(&server, topic, PARTS, &want, "before any restart");

    // Two shards to one: every group is still there, exactly as committed.
    server.set_cores(1);
    server.restart();
    check_groups(&server, topic, PARTS, &want, "after 2 -> 1 cores");

    // More commits and a new generation under one shard.
    let addr = server.addr().to_owned();
    let mut admin = Client::connect_with(&addr, quick()).expect("admin");
    for i in (0..GROUPS).step_by(2) {
        commit(&mut admin, &mut want, &format!("g-{i:02}"), 50 + i as u64);
    }
    commit(&mut admin, &mut want, "g-new", 60);
    let generation = bump_generation(&addr, "g-01");
    assert!(generation > want["g-01"].1);
    want.get_mut("g-01").expect("g-01").1 = generation;
    drop(admin);
    check_groups(&server, topic, PARTS, &want, "after commits under 1 core");

    // And back to two shards.
    server.set_cores(2);
    server.restart();
    check_groups(&server, topic, PARTS, &want, "after 1 -> 2 cores");

    // A consumer resumes exactly where its group committed, in a later
    // generation: it gets every record from the committed offsets on, and
    // none before.
    let addr = server.addr().to_owned();
    let (offsets, generation) = want["g-03"].clone();
    let mut c = GroupConsumer::connect(&addr, group_config("g-03", SESSION_MS)).expect("c");
    c.subscribe(&[topic]).expect("subscribe");
    let left: usize = offsets.iter().map(|o| 100 - *o as usize).sum();
    let mut got = consume_n(&mut c, left);
    got.sort_unstable();
    let expected: Vec<(u32, u64)> = (0..PARTS)
        .flat_map(|p| (offsets[p as usize] as u64..100).map(move |o| (p, o)))
        .collect();
    assert_eq!(got, expected);
    assert!(
        c.generation() > generation,
        "{} > {generation}",
        c.generation()
    );
    c.close().expect("leave");
}
