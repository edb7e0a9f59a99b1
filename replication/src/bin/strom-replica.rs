//! `strom-replica`: one replication [`Node`](strom_replication::shell::Node)
//! in its own process, for the crash tests in `tests/crash_kill.rs` (a test
//! tool, not the server: no Kafka protocol, no config file).
//!
//! ```text
//! strom-replica --id 1 --listen 127.0.0.1:7001 --peer 2=127.0.0.1:7002 \
//!     --peer 3=127.0.0.1:7003 --data-dir /tmp/n1 --groups 1
//! ```
//!
//! Groups are numbered `1..=N`; every group's voters are this node and its
//! peers. Once the node runs, the process prints `ready` on stdout, then
//! serves a line protocol on stdin/stdout, one request at a time. Every
//! request starts with a sequence number that its answer repeats, so that a
//! client can drop the late answer of a request it gave up on:
//!
//! ```text
//! <seq> propose <group> <hex payload>  ->  <seq> ok <index> <term>
//!                                          <seq> notleader <hint, 0 if none>
//!                                          <seq> err <message>
//! <seq> leader <group>                 ->  <seq> leader <id, 0 if none>
//! <seq> log <group>                    ->  <seq> log <index>:<term>:<hex> ...
//! ```
//!
//! A payload travels as the value of a one-record producer frame, proposed
//! with acks=all; `log` gives every applied entry from the log start, with
//! the record value of producer frames and `-` for no-ops and control
//! batches. A proposal unanswered after [`PROPOSE_WAIT_MS`] answers
//! `err timeout` (its outcome is unknown, as is that of `notleader` after
//! acceptance). End of stdin stops the node abruptly (as a crash would) and
//! ends the process, so a client that dies leaves no replica behind.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use strom_flatbuffers::{BatchBuilder, RecordIn};
use strom_replication::engine_store::is_control_frame;
use strom_replication::shell::{NodeConfig, NodeThread, ShellProposeError, GROUPS_MAX};
use strom_replication::{Acks, ProposalError, ProposeError};

/// A proposal not answered within this is answered `err timeout`.
const PROPOSE_WAIT_MS: u64 = 2_000;
/// Bytes of one request line, at most.
const REQUEST_BYTES_MAX: usize = 64 << 10;

struct Args {
    id: u64,
    listen: SocketAddr,
    peers: Vec<(u64, SocketAddr)>,
    data_dir: PathBuf,
    groups: u64,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut id = None;
    let mut listen = None;
    let mut peers = Vec::new();
    let mut data_dir = None;
    let mut groups = 1u64;
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--id" => id = Some(value.parse().map_err(|e| format!("--id {value}: {e}"))?),
            "--listen" => {
                listen = Some(
                    value
                        .parse()
                        .map_err(|e| format!("--listen {value}: {e}"))?,
                );
            }
            "--peer" => {
                let (pid, addr) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--peer {value}: expected id=addr"))?;
                let pid = pid.parse().map_err(|e| format!("--peer {value}: {e}"))?;
                let addr = addr.parse().map_err(|e| format!("--peer {value}: {e}"))?;
                peers.push((pid, addr));
            }
            "--data-dir" => data_dir = Some(PathBuf::from(value)),
            "--groups" => {
                groups = value
                    .parse()
                    .map_err(|e| format!("--groups {value}: {e}"))?;
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if groups == 0 || groups > GROUPS_MAX as u64 {
        return Err(format!("--groups {groups}: must be 1..={GROUPS_MAX}"));
    }
    Ok(Args {
        id: id.ok_or("--id is required")?,
        listen: listen.ok_or("--listen is required")?,
        peers,
        data_dir: data_dir.ok_or("--data-dir is required")?,
        groups,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A producer frame of one record whose value is `payload`.
fn frame(payload: &[u8]) -> Bytes {
    let mut b = BatchBuilder::new();
    b.push(&RecordIn {
        timestamp_ms: 1_000,
        key: None,
        value: Some(payload),
        headers: &[],
    });
    Bytes::from(b.finish())
}

/// The payload of a stored frame, as hex; `-` for a no-op or control frame.
fn payload_hex(data: &[u8]) -> String {
    if data.is_empty() || is_control_frame(data) {
        return "-".into();
    }
    match strom_flatbuffers::records(data)
        .ok()
        .and_then(|mut r| r.next())
    {
        Some(r) => hex(r.value.unwrap_or_default()),
        None => "?".into(),
    }
}

/// Whether the proposal was refused or dropped for want of leadership.
fn is_not_leader(e: &ShellProposeError) -> bool {
    matches!(
        e,
        ShellProposeError::Refused {
            source: ProposeError::NotLeader { .. },
            ..
        } | ShellProposeError::Failed {
            source: ProposalError::NotLeader { .. },
            ..
        }
    )
}

/// The answer to one request (the line after its sequence number).
fn answer(node: &NodeThread, request: &str) -> String {
    let words: Vec<&str> = request.split_ascii_whitespace().collect();
    let group = words.get(1).and_then(|g| g.parse::<u64>().ok());
    match (words.first().copied(), group) {
        (Some("propose"), Some(g)) => {
            let Some(payload) = words.get(2).and_then(|h| unhex(h)) else {
                return "err bad hex payload".into();
            };
            let (tx, rx) = std::sync::mpsc::channel();
            node.propose(g, frame(&payload), Acks::All, 0, tx);
            match rx.recv_timeout(Duration::from_millis(PROPOSE_WAIT_MS)) {
                Ok((_, Ok((index, term)))) => format!("ok {index} {term}"),
                Ok((_, Err(e))) if is_not_leader(&e) => {
                    format!("notleader {}", e.leader_hint().unwrap_or(0))
                }
                Ok((_, Err(e))) => format!("err {e}"),
                Err(_) => "err timeout".into(),
            }
        }
        (Some("leader"), Some(g)) => format!("leader {}", node.leader(g).unwrap_or(0)),
        (Some("log"), Some(g)) => {
            let mut out = String::from("log");
            for (index, term, data) in node.applied_log(g) {
                out.push_str(&format!(" {index}:{term}:{}", payload_hex(&data)));
            }
            out
        }
        _ => format!("err unknown request {request:?}"),
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("strom-replica: {e}");
            return ExitCode::from(2);
        }
    };
    let id = args.id;
    let cfg = NodeConfig::new(
        id,
        args.listen,
        args.peers,
        args.data_dir,
        (1..=args.groups).collect(),
    );
    let node = match NodeThread::spawn(cfg, |_| {}) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("strom-replica {id}: start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "ready").and_then(|()| out.flush()).is_err() {
        node.kill();
        return ExitCode::FAILURE;
    }
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let reply = if line.len() > REQUEST_BYTES_MAX {
            format!("0 err request over {REQUEST_BYTES_MAX} bytes")
        } else {
            let (seq, request) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            format!("{seq} {}", answer(&node, request))
        };
        if writeln!(out, "{reply}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    node.kill();
    ExitCode::SUCCESS
}
