//! Smoke tests of the `requests` and `kafka` modes: each runs briefly
//! against a spawned `strom-server` and checks that the JSON report holds
//! real (positive) figures with their same-run baselines.
//!
//! The server binary is `STROM_SERVER_BIN`, else `strom-server` next to the
//! `strom-bench` binary under test (built with `cargo build -p
//! strom-server` in the same profile when missing).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn bench_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_strom-bench"))
}

fn server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STROM_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let bench = bench_bin();
    let dir = bench.parent().expect("binary has a directory");
    let p = dir.join("strom-server");
    if !p.exists() {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "strom-server", "--bin", "strom-server"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build -p strom-server");
        assert!(status.success(), "cargo build -p strom-server failed");
    }
    assert!(
        p.exists(),
        "{} not found (set STROM_SERVER_BIN)",
        p.display()
    );
    p
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("strom-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs strom-bench with `args` plus `--spawn`, `--dir`, `--json` and
/// returns the JSON report.
fn run(name: &str, args: &[&str]) -> Value {
    let tmp = TempDir::new(name);
    let json = tmp.0.join("report.json");
    let out = Command::new(bench_bin())
        .args(args)
        .arg("--spawn")
        .arg("--server-bin")
        .arg(server_bin())
        .arg("--dir")
        .arg(tmp.0.join("data"))
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run strom-bench");
    assert!(
        out.status.success(),
        "strom-bench {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("read the JSON report");
    serde_json::from_str(&text).expect("the report is JSON")
}

/// The figure `name` of a report: (value, ratio).
fn figure(doc: &Value, name: &str) -> (f64, Option<f64>) {
    let f = doc["figures"]
        .as_array()
        .expect("figures")
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no figure {name} in {doc:#}"));
    (f["value"].as_f64().expect("a value"), f["ratio"].as_f64())
}

fn positive_with_ratio(doc: &Value, name: &str) {
    let (v, r) = figure(doc, name);
    assert!(v > 0.0, "{name} = {v}");
    let r = r.unwrap_or_else(|| panic!("{name} has no ratio"));
    assert!(r > 0.0 && r.is_finite(), "{name} ratio {r}");
}

fn check_requests(doc: &Value, shards: usize) {
    assert_eq!(doc["mode"], "requests");
    for f in [
        "requests",
        "request_latency_p50",
        "request_latency_p99",
        "request_latency_max",
        "server_cpu_per_request",
        "client_cpu_per_request",
        "response_bytes",
    ] {
        positive_with_ratio(doc, f);
    }
    assert!(figure(doc, "raw_tcp_pingpong_requests").0 > 0.0);
    assert!(figure(doc, "requests_per_shard").0 > 0.0);
    let per_shard = doc["connections_per_shard"].as_array().expect("per shard");
    assert_eq!(per_shard.len(), shards);
    let total: u64 = per_shard.iter().filter_map(Value::as_u64).sum();
    assert_eq!(total, 4);
    assert!(doc["server"]["requests"].as_u64().unwrap_or(0) > 0);
    assert!(doc["baseline"]["requests"].as_u64().unwrap_or(0) > 0);
    assert_eq!(doc["parameters"]["resolved"]["shards"], shards);
    let source = doc["shard_learnt_from"].as_str().unwrap_or("");
    if shards == 1 {
        assert_eq!(source, "single_shard");
    } else {
        assert!(source == "handshake" || source == "metrics", "{source}");
    }
}

const REQUESTS_QUICK: &[&str] = &[
    "requests",
    "--connections",
    "4",
    "--depth",
    "4",
    "--duration",
    "1.5",
    "--warmup",
    "0",
    "--baseline-secs",
    "0.5",
];

#[test]
fn requests_one_shard_local() {
    let mut args = REQUESTS_QUICK.to_vec();
    args.extend(["--cores", "1", "--placement", "local"]);
    let doc = run("requests-local", &args);
    check_requests(&doc, 1);
}

#[test]
fn requests_two_shards_forwarded() {
    let mut args = REQUESTS_QUICK.to_vec();
    args.extend(["--cores", "2", "--placement", "forwarded"]);
    let doc = run("requests-forwarded", &args);
    check_requests(&doc, 2);
}

#[test]
fn kafka_against_native() {
    let doc = run(
        "kafka",
        &[
            "kafka",
            "--cores",
            "1",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--tcp-secs",
            "0.3",
            "--batch-records",
            "100",
            "--prefill-bytes",
            "1048576",
        ],
    );
    assert_eq!(doc["mode"], "kafka");
    for f in [
        "native_produce_throughput",
        "kafka_produce_throughput",
        "kafka_produce_vs_native",
        "native_fetch_throughput",
        "kafka_fetch_throughput",
        "kafka_fetch_vs_native",
    ] {
        positive_with_ratio(&doc, f);
    }
    assert!(figure(&doc, "kafka_produce_api_version").0 >= 3.0);
    assert!(figure(&doc, "kafka_fetch_api_version").0 >= 4.0);
    assert!(doc["produce"]["kafka"]["records"].as_u64().unwrap_or(0) > 0);
    assert!(doc["fetch"]["kafka"]["records"].as_u64().unwrap_or(0) > 0);
}
