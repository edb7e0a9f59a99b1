//! Observability end to end: a real `strom-server` (2 shards, port 0 for
//! native and Kafka, a free fixed port for HTTP so that `/ready` can be
//! polled from the first moment). The test produces durably, fetches,
//! commits a group offset, speaks one Kafka request, then scrapes
//! `/metrics`, validates the exposition format line by line, and checks that
//! the series exist with values that match what it did.

mod common;

use common::{batch, temp_dir, Client};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use strom_flatbuffers::protocol::*;

struct Proc {
    child: Child,
    native: SocketAddr,
    kafka: SocketAddr,
    http: SocketAddr,
    ready_statuses: Vec<u16>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path`: (status, body); `None` when the port does not answer.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Starts the server with its HTTP port known in advance and polls
/// `/ready` until the `ready` line: every answer seen is kept.
fn start(data_dir: &std::path::Path) -> Proc {
    let http: SocketAddr = {
        let l = TcpListener::bind("127.0.0.1:0").expect("probe port");
        l.local_addr().expect("addr")
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_strom-server"))
        .args(["--cores", "2", "--listen", "127.0.0.1:0"])
        .args(["--kafka-listen", "127.0.0.1:0"])
        .arg("--http")
        .arg(http.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .env("STROM_LOG", "info")
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
    let mut ready_statuses = Vec::new();
    let (mut native, mut kafka) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "server not ready within 30 s");
        if let Some((status, _)) = http_get(http, "/ready") {
            ready_statuses.push(status);
        }
        match rx.recv_timeout(Duration::from_millis(5)) {
            Ok(line) => {
                if let Some(a) = line.strip_prefix("listening native=") {
                    native = Some(a.parse().expect("addr"));
                } else if let Some(a) = line.strip_prefix("listening kafka=") {
                    kafka = Some(a.parse().expect("addr"));
                } else if line.starts_with("ready ") {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("server exited during start-up: {e}"),
        }
    }
    Proc {
        child,
        native: native.expect("native address"),
        kafka: kafka.expect("kafka address"),
        http,
        ready_statuses,
    }
}

/// One sample: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses `{k="v",...}` (with `\\`, `\"`, `\n` escapes); returns the labels
/// and the rest of the line.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("no {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let key = &rest[..eq];
        if !valid_name(key) {
            return Err(format!("bad label name {key:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(key.to_owned(), value).is_some() {
            return Err(format!("label {key} twice"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        }
    }
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        v => v.parse::<f64>().map_err(|e| format!("value {v:?}: {e}")),
    }
}

/// Validates the whole exposition line by line; returns every sample.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut help: HashSet<String> = HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut seen_samples_of: HashSet<String> = HashSet::new();
    let mut samples = Vec::new();
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for (n, line) in text.lines().enumerate() {
        let at = |m: &str| format!("line {}: {m}: {line:?}", n + 1);
        assert!(!line.is_empty(), "{}", at("empty line"));
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(valid_name(name), "{}", at("bad name"));
            assert!(!text.is_empty(), "{}", at("empty help"));
            assert!(help.insert(name.to_owned()), "{}", at("HELP twice"));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{}",
                at("bad type")
            );
            assert!(help.contains(name), "{}", at("TYPE before HELP"));
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "{}",
                at("TYPE twice")
            );
            assert!(
                !seen_samples_of.contains(name),
                "{}",
                at("TYPE after samples")
            );
            continue;
        }
        assert!(!line.starts_with('#'), "{}", at("unexpected comment"));
        let name_end = line.find(['{', ' ']).expect("sample has a value");
        let name = &line[..name_end];
        assert!(valid_name(name), "{}", at("bad metric name"));
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).unwrap_or_else(|e| panic!("{}", at(&e)))
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let rest = rest.strip_prefix(' ').expect("space before the value");
        let mut parts = rest.split(' ');
        let value =
            parse_value(parts.next().expect("value")).unwrap_or_else(|e| panic!("{}", at(&e)));
        if let Some(ts) = parts.next() {
            ts.parse::<i64>()
                .unwrap_or_else(|_| panic!("{}", at("bad timestamp")));
        }
        assert!(parts.next().is_none(), "{}", at("trailing fields"));
        // The family: histograms expose _bucket, _sum and _count.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| types.get(*base).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("{}", at("sample without TYPE")));
        assert!(help.contains(family), "{}", at("sample without HELP"));
        if kind == "counter" {
            assert!(value >= 0.0, "{}", at("negative counter"));
        }
        if name.ends_with("_bucket") && kind == "histogram" {
            assert!(labels.contains_key("le"), "{}", at("bucket without le"));
        }
        seen_samples_of.insert(family.to_owned());
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    check_histograms(&samples, &types);
    samples
}

/// A series: its family name and labels (without `le`).
type SeriesKey = (String, BTreeMap<String, String>);

/// Buckets are cumulative, end with +Inf, and +Inf equals _count.
fn check_histograms(samples: &[Sample], types: &HashMap<String, String>) {
    let mut series: BTreeMap<SeriesKey, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: HashMap<SeriesKey, f64> = HashMap::new();
    for s in samples {
        if let Some(base) = s.name.strip_suffix("_bucket") {
            if types.get(base).map(String::as_str) != Some("histogram") {
                continue;
            }
            let mut labels = s.labels.clone();
            let le = parse_value(&labels.remove("le").expect("le")).expect("le value");
            series
                .entry((base.to_owned(), labels))
                .or_default()
                .push((le, s.value));
        } else if let Some(base) = s.name.strip_suffix("_count") {
            if types.get(base).map(String::as_str) == Some("histogram") {
                counts.insert((base.to_owned(), s.labels.clone()), s.value);
            }
        }
    }
    assert!(!series.is_empty(), "some histogram series");
    for (key, buckets) in series {
        for w in buckets.windows(2) {
            assert!(w[0].0 < w[1].0, "{key:?}: le ascending");
            assert!(w[0].1 <= w[1].1, "{key:?}: buckets cumulative");
        }
        let last = buckets.last().expect("a bucket");
        assert!(last.0.is_infinite(), "{key:?}: ends with +Inf");
        assert_eq!(Some(&last.1), counts.get(&key), "{key:?}: +Inf == _count");
    }
}

/// The sum of `name` over the samples whose labels include `with`.
fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

fn exists(samples: &[Sample], name: &str) -> bool {
    samples.iter().any(|s| s.name == name)
}

/// A Kafka ApiVersions v0 request (correlation id 7, null client id).
fn kafka_api_versions(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).expect("kafka connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let req: [u8; 14] = [0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 7, 0xff, 0xff];
    s.write_all(&req).expect("kafka write");
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("kafka answer");
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).expect("kafka answer body");
    assert_eq!(&body[..4], &[0, 0, 0, 7], "correlation id");
}

/// A group name that a label value must escape.
const ESCAPED_GROUP: &str = "esc \"g\" \\ \n end";

#[test]
fn metrics_health_and_ready_on_a_real_server() {
    let dir = temp_dir("metrics");
    let server = start(&dir);
    // /ready: only 503 before the ready line (if the poll caught start-up
    // at all), 200 after it.
    assert!(
        server.ready_statuses.iter().all(|s| *s == 503 || *s == 200),
        "{:?}",
        server.ready_statuses
    );
    println!("/ready during start-up: {:?}", server.ready_statuses);
    assert_eq!(http_get(server.http, "/ready").map(|r| r.0), Some(200));
    assert_eq!(http_get(server.http, "/health").map(|r| r.0), Some(200));
    assert_eq!(http_get(server.http, "/nope").map(|r| r.0), Some(404));

    let mut c = Client::connect(server.native);
    c.handshake();
    c.create_topic("obs", 2);
    let mut produced_bytes = 0usize;
    let mut produced = [0u64; 2];
    for (p, n) in [(0u32, 10usize), (0, 10), (0, 10), (1, 5), (1, 5)] {
        let frame = batch(&format!("p{p}"), n);
        produced_bytes += frame.len();
        produced[p as usize] += n as u64;
        let r = c
            .produce("obs", Acks::Durable, &[(p, frame)])
            .expect("durable produce answers");
        assert_eq!(
            r.results[0].error,
            ErrorCode::None,
            "{}",
            r.results[0].message
        );
    }
    let (f0, t0) = c.fetch("obs", 0, 0, 0);
    assert_eq!(f0.error, ErrorCode::None);
    assert_eq!(common::values(&t0).len() as u64, produced[0]);
    let (f1, _) = c.fetch("obs", 1, 0, 0);
    assert_eq!(f1.error, ErrorCode::None);
    // An error answer, counted by its code.
    let (bad, _) = c.fetch("no-such-topic", 0, 0, 0);
    assert_eq!(bad.error, ErrorCode::UnknownTopic);
    // Commits outside group management: lag = high watermark - offset. The
    // second group's name needs escaping in a label value.
    for (group, offset) in [("g1", 12), (ESCAPED_GROUP, 3)] {
        match c.call(RequestBody::OffsetCommit(OffsetCommitRequest {
            group: group.into(),
            partitions: vec![OffsetCommitPartition {
                topic: "obs".into(),
                partition: 0,
                offset,
                ..Default::default()
            }],
            member_id: String::new(),
            generation: -1,
        })) {
            ResponseBody::OffsetCommit(r) => {
                assert_eq!(
                    r.results[0].error,
                    ErrorCode::None,
                    "{}",
                    r.results[0].message
                )
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    kafka_api_versions(server.kafka);

    let (status, body) = http_get(server.http, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200);
    let samples = parse_exposition(&body);

    assert_eq!(
        sum(&samples, "strom_scrape_shards", &[]),
        2.0,
        "both shards answered"
    );
    let obs = |p: &'static str| [("topic", "obs"), ("partition", p)];
    // Bytes in: the socket saw at least the frames; the partitions stored
    // exactly them.
    assert!(sum(&samples, "strom_shard_received_bytes_total", &[]) >= produced_bytes as f64);
    assert_eq!(
        sum(
            &samples,
            "strom_partition_bytes_in_total",
            &[("topic", "obs")]
        ),
        produced_bytes as f64
    );
    assert!(sum(&samples, "strom_shard_sent_bytes_total", &[]) > 0.0);
    for (p, label) in [(0usize, "0"), (1, "1")] {
        let l = obs(label);
        assert_eq!(
            sum(&samples, "strom_partition_high_watermark", &l),
            produced[p] as f64
        );
        assert_eq!(
            sum(&samples, "strom_partition_records_in_total", &l),
            produced[p] as f64
        );
        assert_eq!(
            sum(&samples, "strom_partition_records_out_total", &l),
            produced[p] as f64
        );
        assert_eq!(
            sum(&samples, "strom_partition_durable_offset", &l),
            produced[p] as f64
        );
        assert_eq!(sum(&samples, "strom_partition_log_start_offset", &l), 0.0);
        assert!(sum(&samples, "strom_partition_fdatasync_seconds_count", &l) > 0.0);
        assert!(sum(&samples, "strom_partition_fdatasyncs_total", &l) > 0.0);
        assert!(
            sum(&samples, "strom_partition_group_commit_records_sum", &l) >= produced[p] as f64
        );
        assert!(sum(&samples, "strom_partition_log_bytes", &l) > 0.0);
        assert!(sum(&samples, "strom_partition_log_segments", &l) >= 1.0);
        let reads = sum(&samples, "strom_partition_cache_hits_total", &l)
            + sum(&samples, "strom_partition_cache_misses_total", &l);
        assert!(reads >= 1.0, "the fetch read partition {p}");
        let ratio = sum(&samples, "strom_partition_cache_hit_ratio", &l);
        assert!((0.0..=1.0).contains(&ratio), "hit ratio {ratio}");
    }
    assert_eq!(
        sum(&samples, "strom_shard_records_in_total", &[]),
        (produced[0] + produced[1]) as f64
    );
    // Label escaping round-trips.
    let e = [
        ("group", ESCAPED_GROUP),
        ("topic", "obs"),
        ("partition", "0"),
    ];
    assert_eq!(
        sum(&samples, "strom_group_lag", &e),
        (produced[0] - 3) as f64
    );
    // Group lag after the commit.
    let g = [("group", "g1"), ("topic", "obs"), ("partition", "0")];
    assert_eq!(sum(&samples, "strom_group_committed_offset", &g), 12.0);
    assert_eq!(
        sum(&samples, "strom_group_lag", &g),
        (produced[0] - 12) as f64
    );
    // Requests by protocol, API and error code, with latency histograms.
    let ok_produce = [
        ("protocol", "native"),
        ("api", "produce"),
        ("error", "None"),
    ];
    assert_eq!(sum(&samples, "strom_requests_total", &ok_produce), 5.0);
    let bad_fetch = [
        ("protocol", "native"),
        ("api", "fetch"),
        ("error", "UnknownTopic"),
    ];
    assert_eq!(sum(&samples, "strom_requests_total", &bad_fetch), 1.0);
    let kafka = [
        ("protocol", "kafka"),
        ("api", "api_versions"),
        ("error", "None"),
    ];
    assert_eq!(sum(&samples, "strom_requests_total", &kafka), 1.0);
    let produce_latency = [("protocol", "native"), ("api", "produce")];
    assert_eq!(
        sum(
            &samples,
            "strom_request_duration_seconds_count",
            &produce_latency
        ),
        5.0
    );
    assert!(
        sum(
            &samples,
            "strom_request_duration_seconds_sum",
            &produce_latency
        ) > 0.0
    );
    // Connections and the rest exist.
    assert!(sum(&samples, "strom_connections_open", &[]) >= 1.0);
    for name in [
        "strom_connections_refused_total",
        "strom_shard_cache_bytes",
        "strom_shard_cache_hit_ratio",
        "strom_framing_errors_total",
        "strom_partition_bytes_out_total",
        "strom_partition_segments_rolled_total",
        "strom_partition_segments_deleted_total",
        "strom_partition_fdatasync_failures_total",
        "strom_partition_group_commit_records_bucket",
    ] {
        assert!(exists(&samples, name), "{name} is exposed");
    }
    // With two shards some operation crossed the mesh (the scrape itself
    // does), counted by its target.
    assert!(sum(&samples, "strom_forwarded_requests_total", &[]) >= 1.0);
    drop(c);
    drop(dir);
}

#[test]
fn the_exposition_parser_rejects_what_prometheus_would() {
    let ok = "# HELP a A.\n# TYPE a counter\na{x=\"q\\\"\\\\\\n\"} 1\n";
    let s = parse_exposition(&format!(
        "{ok}# HELP h H.\n# TYPE h histogram\nh_bucket{{le=\"1\"}} 1\nh_bucket{{le=\"+Inf\"}} 2\nh_sum 3\nh_count 2\n"
    ));
    assert_eq!(s[0].labels["x"], "q\"\\\n");
    for bad in [
        "a 1\n",                                       // no HELP/TYPE
        "# HELP a A.\n# TYPE a counter\na{x=\"1} 1\n", // unterminated
        "# HELP a A.\n# TYPE a counter\na one\n",      // bad value
    ] {
        let r = std::panic::catch_unwind(|| {
            parse_exposition(&format!("{bad}# HELP h H.\n# TYPE h histogram\nh_bucket{{le=\"+Inf\"}} 0\nh_sum 0\nh_count 0\n"))
        });
        assert!(r.is_err(), "{bad:?} must be rejected");
    }
}
