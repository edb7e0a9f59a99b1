//! Per-shard counters, rendered as Prometheus text on `/metrics`. Each shard
//! writes only its own slot (relaxed atomics, no contention); the HTTP task
//! reads them all.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Request kinds counted separately, in the order of their label values.
pub const REQUEST_KINDS: &[&str] = &[
    "api_versions",
    "create_topics",
    "delete_topics",
    "list_topics",
    "describe_topics",
    "create_partitions",
    "produce",
    "fetch",
    "list_offsets",
    "offset_commit",
    "offset_fetch",
    "invalid",
];

#[derive(Default)]
pub struct ShardMetrics {
    requests: [AtomicU64; 12],
    pub errors: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_refused: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub forwarded: AtomicU64,
}

impl ShardMetrics {
    pub fn request(&self, kind: &str) {
        let i = REQUEST_KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(REQUEST_KINDS.len() - 1);
        self.requests[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}

/// (name, type, help, which counter) of one per-shard series.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardMetrics) -> &AtomicU64,
);

pub struct Metrics {
    pub shards: Vec<ShardMetrics>,
}

impl Metrics {
    pub fn new(shards: usize) -> Metrics {
        Metrics {
            shards: (0..shards).map(|_| ShardMetrics::default()).collect(),
        }
    }

    /// Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP strom_requests_total Requests decoded, by shard and kind."
        );
        let _ = writeln!(out, "# TYPE strom_requests_total counter");
        for (s, m) in self.shards.iter().enumerate() {
            for (k, kind) in REQUEST_KINDS.iter().enumerate() {
                let v = m.requests[k].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "strom_requests_total{{shard=\"{s}\",kind=\"{kind}\"}} {v}"
                );
            }
        }
        let gauges: [Series; 6] = [
            (
                "strom_request_errors_total",
                "counter",
                "Requests answered with an error.",
                |m| &m.errors,
            ),
            (
                "strom_connections_open",
                "gauge",
                "Open client connections.",
                |m| &m.connections_open,
            ),
            (
                "strom_connections_refused_total",
                "counter",
                "Connections refused at the per-shard limit.",
                |m| &m.connections_refused,
            ),
            (
                "strom_bytes_in_total",
                "counter",
                "Bytes read from clients.",
                |m| &m.bytes_in,
            ),
            (
                "strom_bytes_out_total",
                "counter",
                "Bytes written to clients.",
                |m| &m.bytes_out,
            ),
            (
                "strom_forwarded_total",
                "counter",
                "Partition operations forwarded to another shard.",
                |m| &m.forwarded,
            ),
        ];
        for (name, kind, help, get) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (s, m) in self.shards.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{shard=\"{s}\"}} {}",
                    get(m).load(Ordering::Relaxed)
                );
            }
        }
        out
    }
}
