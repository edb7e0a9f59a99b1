//! A transaction coordinator that dies between a durable PrepareCommit and
//! its markers finishes the commit when it restarts (issue 13,
//! "Transactions": "a coordinator that restarts in PrepareCommit/
//! PrepareAbort finishes writing the markers"). The server runs with
//! `STROM_TEST_TXN_FAULT=abort-after-prepare` (it aborts itself, SIGABRT, right
//! after the prepare record is fdatasync'd); it is started again without
//! it, and a read_committed consumer (confluent-kafka) must see the
//! transaction's values, exactly once.
//!
//! Alone in its binary: the fault goes to the server through this process's
//! environment.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;
use strom_tests::{run_with_timeout, skip_test, workspace_root, TestServer};

fn run(mode: &str, bootstrap: &str) -> Vec<(String, String)> {
    let mut cmd = Command::new("python3");
    cmd.arg(workspace_root().join("tests/kafka/ck_txn.py"))
        .args([mode, bootstrap, "txn-prepare"]);
    let (code, out, err) = run_with_timeout(&mut cmd, b"", Duration::from_secs(120));
    let out = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(code, 0, "ck_txn.py {mode} failed:\n{out}\n{err}");
    println!("ck_txn.py {mode}: {}", out.lines().last().unwrap_or(""));
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn list(kv: &[(String, String)], key: &str) -> Vec<String> {
    kv.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_else(|| panic!("no {key} in {kv:?}"))
}

#[test]
fn a_restarted_coordinator_finishes_a_prepared_commit() {
    let has = Command::new("python3")
        .args(["-c", "import confluent_kafka"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !has {
        skip_test(
            "kafka_txn_prepare_crash",
            "python3 cannot import confluent_kafka (run scripts/install-test-deps)",
        );
        return;
    }
    std::env::set_var(strom_server_fault_env(), "abort-after-prepare");
    let mut server = TestServer::start(1);
    std::env::remove_var(strom_server_fault_env());
    server.keep_kafka_port();
    let bootstrap = server.kafka_addr().expect("kafka").to_owned();
    let kv = run("commit-crash", &bootstrap);
    let outcome = kv
        .iter()
        .find(|(k, _)| k == "outcome")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert_ne!(
        outcome, "\"committed\"",
        "the server was to die before answering"
    );
    assert!(
        server
            .stderr()
            .contains("aborting after the prepare record"),
        "the fault did not fire:\n{}",
        server.stderr()
    );
    server.kill();
    server.start_again();
    let kv = run("read", &bootstrap);
    let expected: BTreeSet<String> = (0..10).map(|i| format!("P-{i}")).collect();
    let committed = list(&kv, "committed");
    assert_eq!(committed.len(), 10, "exactly once: {committed:?}");
    assert_eq!(
        committed.into_iter().collect::<BTreeSet<_>>(),
        expected,
        "the prepared commit was finished after the restart"
    );
    assert_eq!(list(&kv, "uncommitted").len(), 10);
}

/// The server's fault variable (`strom_server::txn::TXN_FAULT_ENV`; the
/// tests crate does not link the server).
fn strom_server_fault_env() -> &'static str {
    "STROM_TEST_TXN_FAULT"
}
