//! Consumer groups end to end, with real server processes and the raw
//! protocol codec: members that join, sync and heartbeat in their own
//! threads; assignments, session expiry, a newcomer's rebalance, fencing,
//! durability of committed offsets across SIGKILL, describe/list/reset.

mod common;

use common::{temp_dir, Client, Server};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use strom_flatbuffers::protocol::*;

const SESSION_MS: u32 = 1_500;

fn start(cores: usize, data_dir: impl Into<strom_tests::DataDir>) -> Server {
    let (data_dir, owned_dir) = data_dir.into().into_parts();
    let mut child = Command::new(env!("CARGO_BIN_EXE_strom-server"))
        .args(["--cores", &cores.to_string()])
        .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--kafka-listen", "off"])
        .args(["--group-initial-rebalance-delay-ms", "300"])
        .args(["--group-min-session-timeout-ms", "500"])
        .arg("--data-dir")
        .arg(&data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn strom-server");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let (mut native, mut http) = (None, None);
    while native.is_none() || http.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("server printed its listening lines");
        if let Some(a) = line.strip_prefix("listening native=") {
            native = Some(a.parse::<SocketAddr>().expect("addr"));
        } else if let Some(a) = line.strip_prefix("listening http=") {
            http = Some(a.parse::<SocketAddr>().expect("addr"));
        }
    }
    Server {
        child: Some(child),
        native: native.expect("native"),
        http: http.expect("http"),
        data_dir,
        cores,
        owned_dir,
    }
}

/// What a member last synced: (generation, partitions of topic "t").
type Views = Arc<Mutex<BTreeMap<usize, (i32, String, BTreeSet<u32>)>>>;

/// A consumer that follows the protocol in its own thread until `stop`
/// (then it simply falls silent: no LeaveGroup, like a killed process).
fn member(addr: SocketAddr, n: usize, views: Views, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.handshake();
        let mut member_id = String::new();
        'rejoin: while !stop.load(Ordering::SeqCst) {
            let j = match c.call(RequestBody::JoinGroup(JoinGroupRequest {
                group: "g".into(),
                member_id: member_id.clone(),
                client_id: format!("m{n}"),
                protocol_type: "consumer".into(),
                protocols: vec![GroupProtocol {
                    name: "range".into(),
                    metadata: vec![],
                }],
                session_timeout_ms: SESSION_MS,
                rebalance_timeout_ms: 5_000,
                topics: vec!["t".into()],
                coordinator_assigns: true,
            })) {
                ResponseBody::JoinGroup(j) => j,
                other => panic!("unexpected {other:?}"),
            };
            match j.error {
                ErrorCode::None => {}
                ErrorCode::UnknownMemberId => {
                    member_id.clear();
                    continue;
                }
                _ => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            member_id = j.member_id.clone();
            let s = match c.call(RequestBody::SyncGroup(SyncGroupRequest {
                group: "g".into(),
                member_id: member_id.clone(),
                generation: j.generation,
                assignments: vec![],
            })) {
                ResponseBody::SyncGroup(s) => s,
                other => panic!("unexpected {other:?}"),
            };
            if s.error != ErrorCode::None {
                continue;
            }
            let mine: BTreeSet<u32> = s
                .partitions
                .iter()
                .filter(|t| t.topic == "t")
                .flat_map(|t| t.partitions.iter().copied())
                .collect();
            views
                .lock()
                .expect("lock")
                .insert(n, (j.generation, member_id.clone(), mine));
            loop {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(150));
                let h = match c.call(RequestBody::Heartbeat(HeartbeatRequest {
                    group: "g".into(),
                    member_id: member_id.clone(),
                    generation: j.generation,
                })) {
                    ResponseBody::Heartbeat(h) => h,
                    other => panic!("unexpected {other:?}"),
                };
                match h.error {
                    ErrorCode::None => {}
                    ErrorCode::UnknownMemberId => {
                        member_id.clear();
                        continue 'rejoin;
                    }
                    _ => continue 'rejoin,
                }
            }
        }
    })
}

/// Waits until the members in `who` all synced the same generation and
/// their partitions of "t" are disjoint and complete.
fn wait_balanced(
    views: &Views,
    who: &[usize],
    partitions: u32,
) -> (i32, BTreeMap<usize, (String, BTreeSet<u32>)>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        {
            let v = views.lock().expect("lock");
            let gens: BTreeSet<i32> = who.iter().filter_map(|n| v.get(n).map(|x| x.0)).collect();
            if gens.len() == 1 && who.iter().all(|n| v.contains_key(n)) {
                let mut all = BTreeSet::new();
                let mut disjoint = true;
                for n in who {
                    for p in &v[n].2 {
                        disjoint &= all.insert(*p);
                    }
                }
                if disjoint && all.len() == partitions as usize {
                    let g = *gens.iter().next().expect("one");
                    let out = who
                        .iter()
                        .map(|n| (*n, (v[n].1.clone(), v[n].2.clone())))
                        .collect();
                    return (g, out);
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no balanced assignment: {:?}",
            views.lock().expect("lock")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn commit(
    c: &mut Client,
    member_id: &str,
    generation: i32,
    partition: u32,
    offset: u64,
) -> ErrorCode {
    match c.call(RequestBody::OffsetCommit(OffsetCommitRequest {
        group: "g".into(),
        member_id: member_id.into(),
        generation,
        partitions: vec![OffsetCommitPartition {
            topic: "t".into(),
            partition,
            offset,
            metadata: format!("by {member_id}"),
        }],
    })) {
        ResponseBody::OffsetCommit(r) => r.results[0].error,
        other => panic!("unexpected {other:?}"),
    }
}

fn fetch_offsets(c: &mut Client) -> BTreeMap<u32, i64> {
    match c.call(RequestBody::OffsetFetch(OffsetFetchRequest {
        group: "g".into(),
        partitions: vec![],
    })) {
        ResponseBody::OffsetFetch(r) => r.results.iter().map(|r| (r.partition, r.offset)).collect(),
        other => panic!("unexpected {other:?}"),
    }
}

fn describe(c: &mut Client) -> GroupDescription {
    match c.call(RequestBody::DescribeGroups(DescribeGroupsRequest {
        groups: vec!["g".into()],
    })) {
        ResponseBody::DescribeGroups(mut r) => r.groups.remove(0),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn members_share_partitions_rebalance_on_expiry_and_join_and_zombies_are_fenced() {
    let server = start(2, temp_dir("groups"));
    let mut admin = server.client();
    admin.create_topic("t", 6);
    let views: Views = Arc::default();
    let stops: Vec<Arc<AtomicBool>> = (0..4).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let mut threads: Vec<_> = (0..3)
        .map(|n| member(server.native, n, views.clone(), stops[n].clone()))
        .collect();

    // Three members over six partitions: disjoint and complete, two each.
    let (g1, a1) = wait_balanced(&views, &[0, 1, 2], 6);
    for (_, ps) in a1.values() {
        assert_eq!(ps.len(), 2, "{a1:?}");
    }
    let d = describe(&mut admin);
    assert_eq!(d.state, "Stable");
    assert_eq!(d.members.len(), 3);
    assert_eq!(d.generation, g1);

    // Member 0 commits in its generation; offsets and lag show up.
    let (id0, ps0) = a1[&0].clone();
    let p0 = *ps0.iter().next().expect("a partition");
    admin.produce("t", Acks::Leader, &[(p0, common::batch("x", 10))]);
    assert_eq!(commit(&mut admin, &id0, g1, p0, 4), ErrorCode::None);
    let d = describe(&mut admin);
    let row = d.offsets.iter().find(|o| o.partition == p0).expect("row");
    assert_eq!((row.committed_offset, row.end_offset, row.lag), (4, 10, 6));

    // Member 0 stops heartbeating (no leave): after the session timeout its
    // partitions move to the other two.
    stops[0].store(true, Ordering::SeqCst);
    threads.remove(0).join().expect("member 0");
    views.lock().expect("lock").remove(&0);
    let t0 = Instant::now();
    let (g2, a2) = wait_balanced(&views, &[1, 2], 6);
    assert!(g2 > g1);
    assert!(t0.elapsed() >= Duration::from_millis(u64::from(SESSION_MS) / 2));
    for (_, ps) in a2.values() {
        assert_eq!(ps.len(), 3, "{a2:?}");
    }
    // The zombie's commit is fenced.
    let e = commit(&mut admin, &id0, g1, p0, 9);
    assert!(
        e == ErrorCode::UnknownMemberId || e == ErrorCode::IllegalGeneration,
        "zombie commit answered {e:?}"
    );
    // A live member with a stale generation is fenced too.
    let (id1, _) = a2[&1].clone();
    assert_eq!(
        commit(&mut admin, &id1, g1, p0, 9),
        ErrorCode::IllegalGeneration
    );
    // A commit outside group management is refused while members exist.
    assert_eq!(
        commit(&mut admin, "", -1, p0, 9),
        ErrorCode::UnknownMemberId
    );
    assert_eq!(fetch_offsets(&mut admin)[&p0], 4);

    // A newcomer triggers a rebalance and gets its share.
    threads.push(member(server.native, 3, views.clone(), stops[3].clone()));
    let (g3, a3) = wait_balanced(&views, &[1, 2, 3], 6);
    assert!(g3 > g2);
    assert_eq!(a3[&3].1.len(), 2, "{a3:?}");

    // Reset is refused while the group has members.
    let reset = |c: &mut Client, to: ResetTo, offset: u64| match c.call(RequestBody::ResetOffsets(
        ResetOffsetsRequest {
            group: "g".into(),
            topic: "t".into(),
            partitions: vec![],
            to,
            offset,
        },
    )) {
        ResponseBody::ResetOffsets(r) => r,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(
        reset(&mut admin, ResetTo::Latest, 0).error,
        ErrorCode::NonEmptyGroup
    );

    // Everyone leaves cleanly: the group is Empty, and reset works.
    for s in &stops {
        s.store(true, Ordering::SeqCst);
    }
    for t in threads {
        t.join().expect("member");
    }
    let ids: Vec<String> = views
        .lock()
        .expect("lock")
        .values()
        .map(|v| v.1.clone())
        .collect();
    match admin.call(RequestBody::LeaveGroup(LeaveGroupRequest {
        group: "g".into(),
        member_ids: ids[ids.len() - 3..].to_vec(),
    })) {
        ResponseBody::LeaveGroup(r) => assert_eq!(r.error, ErrorCode::None, "{}", r.message),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(describe(&mut admin).state, "Empty");
    let r = reset(&mut admin, ResetTo::Latest, 0);
    assert_eq!(r.error, ErrorCode::None, "{}", r.message);
    let offs = fetch_offsets(&mut admin);
    assert_eq!(offs[&p0], 10);
    assert_eq!(offs.len(), 6);
    let r = reset(&mut admin, ResetTo::Offset, 3);
    assert_eq!(r.error, ErrorCode::None);
    assert_eq!(fetch_offsets(&mut admin)[&p0], 3);
    match admin.call(RequestBody::ListGroups) {
        ResponseBody::ListGroups(l) => {
            assert!(l
                .groups
                .iter()
                .any(|g| g.group == "g" && g.state == "Empty"))
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn committed_offsets_survive_sigkill_and_restart() {
    let dir = temp_dir("groups-kill");
    let mut server = start(2, dir.clone());
    let mut c = server.client();
    c.create_topic("t", 6);
    for p in 0..6 {
        assert_eq!(
            commit(&mut c, "", -1, p, 100 + u64::from(p)),
            ErrorCode::None
        );
    }
    // Overwrites: the latest commit wins after replay.
    assert_eq!(commit(&mut c, "", -1, 2, 7), ErrorCode::None);
    let before = fetch_offsets(&mut c);
    let mut child = server.child.take().expect("child");
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    drop(server);
    let server = start(2, dir);
    let mut c = server.client();
    let after = fetch_offsets(&mut c);
    assert_eq!(before, after);
    assert_eq!(after[&2], 7);
    assert_eq!(after[&5], 105);
}
