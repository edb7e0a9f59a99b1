//! Metrics: what each shard counts, and the Prometheus text rendering of
//! `/metrics`.
//!
//! Design: every shard owns its [`ShardMetrics`] (plain `Cell`s and
//! `RefCell`s inside its `Shard`; no atomics, no locks on the data path).
//! A scrape on shard 0's HTTP port sends [`crate::router::Op::Metrics`] to
//! every shard over the mesh; each shard answers with a [`ShardSnapshot`]
//! rendered on its own thread (its counters, its partitions' engine stats,
//! its consumer groups' committed offsets, its tail-cache bytes), and shard
//! 0 merges the snapshots family by family ([`render`]), computing consumer
//! lag from the committed offsets and the owners' high watermarks.
//!
//! Invariants: every family is written once with its `# HELP` and `# TYPE`
//! lines, followed by all its samples; label values are escaped
//! ([`escape`]); counters only grow while the process runs (per-partition
//! counters restart with the partition); histogram buckets are cumulative
//! and end with `le="+Inf"` equal to `_count`.

use crate::limits::CLIENT_ERROR_LOGS_PER_SEC_MAX;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::time::{Duration, Instant};
use strom_engine::partition::{SyncStats, GROUP_COMMIT_BOUNDS_RECORDS, SYNC_LATENCY_BOUNDS_US};

/// Request latency buckets: the engine's fdatasync buckets (50 µs .. 10 s).
pub const LATENCY_BOUNDS_US: &[u64] = &SYNC_LATENCY_BOUNDS_US;

/// Which listener a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Native,
    Kafka,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Native => "native",
            Protocol::Kafka => "kafka",
        }
    }
}

/// The label of a Kafka API (the ones the edge serves; "other" else).
pub fn kafka_api_name(key: kafka_protocol::messages::ApiKey) -> &'static str {
    use kafka_protocol::messages::ApiKey as K;
    match key {
        K::Produce => "produce",
        K::Fetch => "fetch",
        K::ListOffsets => "list_offsets",
        K::Metadata => "metadata",
        K::OffsetCommit => "offset_commit",
        K::OffsetFetch => "offset_fetch",
        K::FindCoordinator => "find_coordinator",
        K::JoinGroup => "join_group",
        K::Heartbeat => "heartbeat",
        K::LeaveGroup => "leave_group",
        K::SyncGroup => "sync_group",
        K::DescribeGroups => "describe_groups",
        K::ListGroups => "list_groups",
        K::ApiVersions => "api_versions",
        K::CreateTopics => "create_topics",
        K::DeleteTopics => "delete_topics",
        K::DeleteRecords => "delete_records",
        K::InitProducerId => "init_producer_id",
        K::DescribeConfigs => "describe_configs",
        K::CreatePartitions => "create_partitions",
        K::SaslHandshake => "sasl_handshake",
        K::SaslAuthenticate => "sasl_authenticate",
        K::DescribeUserScramCredentials => "describe_user_scram_credentials",
        K::AlterUserScramCredentials => "alter_user_scram_credentials",
        _ => "other",
    }
}

thread_local! {
    /// Kafka error code -> its name, made once per code and shard (at most
    /// one small string per i16 value: bounded).
    static KAFKA_ERROR_NAMES: RefCell<HashMap<i16, &'static str>> = RefCell::new(HashMap::new());
}

/// The stable name of a Kafka error code ("None" for 0, "Unknown" for codes
/// the protocol crate does not know).
pub fn kafka_error_name(code: i16) -> &'static str {
    if code == 0 {
        return "None";
    }
    KAFKA_ERROR_NAMES.with(|m| {
        *m.borrow_mut().entry(code).or_insert_with(|| {
            match kafka_protocol::ResponseError::try_from_code(code) {
                Some(e) => Box::leak(format!("{e:?}").into_boxed_str()),
                None => "Unknown",
            }
        })
    })
}

/// A fixed-bucket histogram (per bucket, not cumulative, until rendered).
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    buckets: Vec<u64>,
    sum_us: u64,
    count: u64,
}

impl Histogram {
    pub fn observe_us(&mut self, us: u64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; LATENCY_BOUNDS_US.len() + 1];
        }
        let i = LATENCY_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        self.buckets[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.count += 1;
    }
}

/// One partition's traffic as the server sees it (the engine counts its
/// own appends, syncs and cache use).
#[derive(Debug, Default)]
pub struct PartitionTraffic {
    pub records_in: Cell<u64>,
    pub bytes_in: Cell<u64>,
    pub records_out: Cell<u64>,
    pub bytes_out: Cell<u64>,
}

/// A shard's counters. Only its own executor touches them.
#[derive(Default)]
pub struct ShardMetrics {
    pub connections_open: Cell<u64>,
    pub connections_refused: Cell<u64>,
    /// Long-poll waits running on this shard (`crate::waits`).
    pub long_poll_waits: Cell<u64>,
    /// Socket bytes, both protocols.
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    /// Records appended to / read from the partitions this shard owns.
    pub records_in: Cell<u64>,
    pub records_out: Cell<u64>,
    /// Connections closed because their byte stream could not be framed.
    pub framing_errors: Cell<u64>,
    /// Partitions reopened after their log failed (`Shard::engine_error`).
    pub partition_reopens: Cell<u64>,
    /// Operations sent to each other shard, by target shard id.
    forwarded: RefCell<BTreeMap<usize, u64>>,
    /// Failures of work no client waits for (background flush, retention,
    /// directory removal), by kind; each is also logged.
    background_errors: RefCell<BTreeMap<&'static str, u64>>,
    /// (protocol, api, error name) -> requests.
    requests: RefCell<HashMap<(Protocol, &'static str, &'static str), u64>>,
    /// (protocol, api) -> latency.
    latency: RefCell<HashMap<(Protocol, &'static str), Histogram>>,
    log_limit: ErrorLogLimit,
}

impl ShardMetrics {
    pub fn add(counter: &Cell<u64>, n: u64) {
        counter.set(counter.get().wrapping_add(n));
    }

    pub fn sub(counter: &Cell<u64>, n: u64) {
        counter.set(counter.get().saturating_sub(n));
    }

    pub fn forwarded(&self, target: usize) {
        *self.forwarded.borrow_mut().entry(target).or_insert(0) += 1;
    }

    /// Counts one failure of background work of `kind` (a short static
    /// name: "flush", "retention", "remove_topic_dir", ...).
    pub fn count_background_error(&self, kind: &'static str) {
        *self.background_errors.borrow_mut().entry(kind).or_insert(0) += 1;
    }

    /// Counts one answered request and its latency. `error` is the error
    /// code's stable name ("None" when it succeeded).
    pub fn request(
        &self,
        protocol: Protocol,
        api: &'static str,
        error: &'static str,
        took: Duration,
    ) {
        *self
            .requests
            .borrow_mut()
            .entry((protocol, api, error))
            .or_insert(0) += 1;
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency
            .borrow_mut()
            .entry((protocol, api))
            .or_default()
            .observe_us(us);
    }

    /// Logs a client error, at most `CLIENT_ERROR_LOGS_PER_SEC_MAX` lines a
    /// second per shard; the next line that gets through says how many were
    /// suppressed.
    pub fn client_error(
        &self,
        shard: usize,
        protocol: Protocol,
        api: &str,
        error: &str,
        message: &str,
    ) {
        if let Some(suppressed) = self.log_limit.admit(Instant::now()) {
            tracing::warn!(
                shard,
                protocol = protocol.name(),
                api,
                error,
                suppressed,
                "client error: {message}"
            );
        }
    }
}

/// A one-second window of client-error log lines.
#[derive(Default)]
struct ErrorLogLimit {
    window: Cell<Option<Instant>>,
    lines: Cell<u32>,
    suppressed: Cell<u64>,
}

impl ErrorLogLimit {
    /// `Some(suppressed since the last line)` when a line may be written.
    fn admit(&self, now: Instant) -> Option<u64> {
        let fresh = self
            .window
            .get()
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1));
        if fresh {
            self.window.set(Some(now));
            self.lines.set(0);
        }
        if self.lines.get() >= CLIENT_ERROR_LOGS_PER_SEC_MAX {
            self.suppressed.set(self.suppressed.get() + 1);
            return None;
        }
        self.lines.set(self.lines.get() + 1);
        Some(self.suppressed.replace(0))
    }
}

/// Samples grouped by metric family, in first-use order.
#[derive(Default)]
pub struct Exposition {
    families: Vec<Family>,
}

struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: String,
}

impl Exposition {
    fn family(
        &mut self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
    ) -> &mut String {
        let i = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family {
                    name,
                    kind,
                    help,
                    samples: String::new(),
                });
                self.families.len() - 1
            }
        };
        &mut self.families[i].samples
    }

    /// One sample; `labels` are (name, unescaped value).
    pub fn sample(
        &mut self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) {
        let out = self.family(name, kind, help);
        out.push_str(name);
        write_labels(out, labels, None);
        let _ = writeln!(out, " {value}");
    }

    pub fn counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        v: u64,
    ) {
        self.sample(name, "counter", help, labels, v);
    }

    pub fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        v: impl std::fmt::Display,
    ) {
        self.sample(name, "gauge", help, labels, v);
    }

    /// A histogram from per-bucket counts (`bounds.len() + 1` of them, the
    /// last one unbounded); `scale` turns a bound into the exposed unit.
    #[allow(clippy::too_many_arguments)]
    pub fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        bounds: &[u64],
        buckets: &[u64],
        sum: f64,
        scale: f64,
    ) {
        debug_assert_eq!(buckets.len(), bounds.len() + 1);
        let out = self.family(name, "histogram", help);
        let mut cumulative = 0u64;
        for (i, n) in buckets.iter().enumerate() {
            cumulative += n;
            let le = match bounds.get(i) {
                Some(&b) => format_float(b as f64 * scale),
                None => "+Inf".to_owned(),
            };
            out.push_str(name);
            out.push_str("_bucket");
            write_labels(out, labels, Some(&le));
            let _ = writeln!(out, " {cumulative}");
        }
        out.push_str(name);
        out.push_str("_sum");
        write_labels(out, labels, None);
        let _ = writeln!(out, " {}", format_float(sum));
        out.push_str(name);
        out.push_str("_count");
        write_labels(out, labels, None);
        let _ = writeln!(out, " {cumulative}");
    }

    /// Appends `other`'s samples to the same families here.
    fn merge(&mut self, other: Exposition) {
        for f in other.families {
            self.family(f.name, f.kind, f.help).push_str(&f.samples);
        }
    }

    /// Prometheus text exposition format, version 0.0.4.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
            out.push_str(&f.samples);
        }
        out
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        escape(out, v);
        out.push('"');
    }
    out.push('}');
}

/// Label value escaping: backslash, double quote and newline.
pub fn escape(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Floats as Prometheus reads them (`NaN`, `+Inf`, plain decimals).
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{v}")
    }
}

/// One partition's state as its owner saw it at the scrape.
pub struct PartitionSnapshot {
    pub topic: String,
    pub partition: u32,
    pub offsets: strom_engine::Offsets,
    pub stats: strom_engine::LogStats,
    pub sync: SyncStats,
    pub records_in: u64,
    pub bytes_in: u64,
    pub records_out: u64,
    pub bytes_out: u64,
    /// The log cleaner's counters, for a compacted partition.
    pub cleaner: Option<strom_engine::CleanerStats>,
}

/// What one shard answers to a scrape.
pub struct ShardSnapshot {
    pub shard: usize,
    pub exposition: Exposition,
    /// (topic, partition, high watermark) of the partitions it owns.
    pub high_watermarks: Vec<(String, u32, u64)>,
    /// (group, topic, partition, committed offset) of the groups it
    /// coordinates.
    pub committed: Vec<(String, String, u32, u64)>,
}

impl ShardMetrics {
    /// Renders this shard's own series (called on the shard's thread).
    pub fn snapshot(
        &self,
        shard: usize,
        partitions: Vec<PartitionSnapshot>,
        committed: Vec<(String, String, u32, u64)>,
        cache_bytes: usize,
    ) -> ShardSnapshot {
        let mut x = Exposition::default();
        let s = shard.to_string();
        let sl: &[(&str, &str)] = &[("shard", &s)];
        x.gauge(
            "strom_connections_open",
            "Open client connections (native and Kafka).",
            sl,
            self.connections_open.get(),
        );
        x.gauge(
            "strom_long_poll_waits",
            "Long-poll fetch waits running on this shard (ended when their fetch is answered).",
            sl,
            self.long_poll_waits.get(),
        );
        x.counter(
            "strom_connections_refused_total",
            "Connections refused at the per-shard connection limit.",
            sl,
            self.connections_refused.get(),
        );
        x.counter(
            "strom_shard_received_bytes_total",
            "Bytes read from client sockets.",
            sl,
            self.bytes_in.get(),
        );
        x.counter(
            "strom_shard_sent_bytes_total",
            "Bytes written to client sockets.",
            sl,
            self.bytes_out.get(),
        );
        x.counter(
            "strom_shard_records_in_total",
            "Records appended to the partitions this shard owns.",
            sl,
            self.records_in.get(),
        );
        x.counter(
            "strom_shard_records_out_total",
            "Records read from the partitions this shard owns.",
            sl,
            self.records_out.get(),
        );
        x.counter(
            "strom_framing_errors_total",
            "Connections closed because their bytes could not be framed.",
            sl,
            self.framing_errors.get(),
        );
        x.counter(
            "strom_partition_reopens_total",
            "Partitions reopened from disk after their log failed (a failed write or fdatasync); each attempt is logged, failed attempts count as background errors of kind reopen_partition.",
            sl,
            self.partition_reopens.get(),
        );
        for (kind, n) in self.background_errors.borrow().iter() {
            x.counter(
                "strom_background_errors_total",
                "Failures of work no client waits for (background flush, retention, directory removal), by kind; each is logged.",
                &[("shard", &s), ("kind", kind)],
                *n,
            );
        }
        for (target, n) in self.forwarded.borrow().iter() {
            let t = target.to_string();
            x.counter(
                "strom_forwarded_requests_total",
                "Operations this shard sent over the mesh to the shard owning their partition or group.",
                &[("shard", &s), ("target", &t)],
                *n,
            );
        }
        let mut requests: Vec<_> = self
            .requests
            .borrow()
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        requests.sort_unstable();
        for ((protocol, api, error), n) in requests {
            x.counter(
                "strom_requests_total",
                "Requests answered, by protocol, API and error code (None = success; the first error of a multi-partition answer).",
                &[
                    ("shard", &s),
                    ("protocol", protocol.name()),
                    ("api", api),
                    ("error", error),
                ],
                n,
            );
        }
        let latency = self.latency.borrow();
        let mut keys: Vec<_> = latency.keys().copied().collect();
        keys.sort_unstable();
        for key in keys {
            let h = &latency[&key];
            x.histogram(
                "strom_request_duration_seconds",
                "Time from a request's decoding to its answer being queued, by protocol and API.",
                &[("shard", &s), ("protocol", key.0.name()), ("api", key.1)],
                LATENCY_BOUNDS_US,
                &h.buckets,
                h.sum_us as f64 / 1e6,
                1e-6,
            );
        }
        x.gauge(
            "strom_shard_cache_bytes",
            "Bytes held by the tail caches of every partition of this shard.",
            sl,
            cache_bytes,
        );
        let (hits, misses) = partitions.iter().fold((0, 0), |(h, m), p| {
            (h + p.stats.cache_hits, m + p.stats.cache_misses)
        });
        x.gauge(
            "strom_shard_cache_hit_ratio",
            "Reads served from the tail cache / all reads, over this shard's open partitions (NaN before any read).",
            sl,
            format_float(ratio(hits, misses)),
        );
        let mut high_watermarks = Vec::with_capacity(partitions.len());
        for p in &partitions {
            partition_series(&mut x, &s, p);
            high_watermarks.push((p.topic.clone(), p.partition, p.offsets.high_watermark));
        }
        ShardSnapshot {
            shard,
            exposition: x,
            high_watermarks,
            committed,
        }
    }
}

fn ratio(hits: u64, misses: u64) -> f64 {
    if hits + misses == 0 {
        f64::NAN
    } else {
        hits as f64 / (hits + misses) as f64
    }
}

fn partition_series(x: &mut Exposition, shard: &str, p: &PartitionSnapshot) {
    let part = p.partition.to_string();
    let l: &[(&str, &str)] = &[("shard", shard), ("topic", &p.topic), ("partition", &part)];
    x.counter(
        "strom_partition_records_in_total",
        "Records appended to the partition since it was opened.",
        l,
        p.records_in,
    );
    x.counter(
        "strom_partition_bytes_in_total",
        "Stored frame bytes appended to the partition since it was opened.",
        l,
        p.bytes_in,
    );
    x.counter(
        "strom_partition_records_out_total",
        "Records read from the partition by fetches since it was opened.",
        l,
        p.records_out,
    );
    x.counter(
        "strom_partition_bytes_out_total",
        "Stored frame bytes read from the partition by fetches since it was opened.",
        l,
        p.bytes_out,
    );
    if let Some(c) = &p.cleaner {
        x.counter(
            "strom_cleaner_runs_total",
            "Compaction passes started on the partition (a pass was due).",
            l,
            c.runs,
        );
        x.counter(
            "strom_cleaner_completed_runs_total",
            "Compaction passes that swapped every cleaned segment in and moved the cleaner checkpoint.",
            l,
            c.completed_runs,
        );
        x.counter(
            "strom_cleaner_failed_runs_total",
            "Compaction passes that failed (retried at the next check).",
            l,
            c.failed_runs,
        );
        x.counter(
            "strom_cleaner_read_bytes_total",
            "Segment bytes the cleaner read.",
            l,
            c.bytes_read,
        );
        x.counter(
            "strom_cleaner_written_bytes_total",
            "Cleaned segment bytes the cleaner wrote.",
            l,
            c.bytes_written,
        );
        x.counter(
            "strom_cleaner_records_removed_total",
            "Records the cleaner removed (superseded, or tombstones past delete.retention.ms).",
            l,
            c.records_removed,
        );
        x.counter(
            "strom_cleaner_segments_swapped_total",
            "Cleaned segments swapped in place of the originals.",
            l,
            c.segments_swapped,
        );
        x.counter(
            "strom_cleaner_busy_microseconds_total",
            "Time the cleaner spent in passes, throttle sleeps included.",
            l,
            c.busy_us,
        );
        x.gauge(
            "strom_cleaner_dirty_ratio",
            "Dirty bytes / closed segment bytes at the cleaner's last check.",
            l,
            format_float(c.dirty_ratio),
        );
    }
    x.gauge(
        "strom_partition_high_watermark",
        "The offset the next append gets.",
        l,
        p.offsets.high_watermark,
    );
    x.gauge(
        "strom_partition_log_start_offset",
        "The first offset still readable.",
        l,
        p.offsets.log_start_offset,
    );
    x.gauge(
        "strom_partition_durable_offset",
        "Offsets below this are fdatasync'd.",
        l,
        p.offsets.durable_offset,
    );
    x.gauge(
        "strom_partition_log_bytes",
        "Bytes of the partition's segments.",
        l,
        p.stats.log_bytes,
    );
    x.gauge(
        "strom_partition_log_segments",
        "Segments of the partition.",
        l,
        p.stats.segments,
    );
    x.counter(
        "strom_partition_segments_rolled_total",
        "Active segments closed and replaced since the partition was opened.",
        l,
        p.stats.segments_rolled,
    );
    x.counter(
        "strom_partition_segments_deleted_total",
        "Segments removed by retention or record deletion since the partition was opened.",
        l,
        p.stats.segments_deleted,
    );
    x.counter(
        "strom_partition_fdatasyncs_total",
        "Every fdatasync of the partition's data (group commit, roll, flush, close).",
        l,
        p.stats.fdatasyncs,
    );
    x.counter(
        "strom_partition_disk_writes_total",
        "Direct writes of the partition's data.",
        l,
        p.stats.writes,
    );
    x.counter(
        "strom_partition_cache_hits_total",
        "Reads served from the tail cache.",
        l,
        p.stats.cache_hits,
    );
    x.counter(
        "strom_partition_cache_misses_total",
        "Reads that went to the disk.",
        l,
        p.stats.cache_misses,
    );
    x.gauge(
        "strom_partition_cache_hit_ratio",
        "cache_hits / (cache_hits + cache_misses) since the partition was opened (NaN before any read).",
        l,
        format_float(ratio(p.stats.cache_hits, p.stats.cache_misses)),
    );
    x.counter(
        "strom_partition_fdatasync_failures_total",
        "Group-commit fdatasyncs that failed (the partition then refuses writes until reopened).",
        l,
        p.sync.failures,
    );
    x.counter(
        "strom_partition_background_errors_total",
        "Background flushes and retention runs of the partition that failed (each is logged).",
        l,
        p.sync.background_errors,
    );
    x.histogram(
        "strom_partition_fdatasync_seconds",
        "Latency of the partition's group-commit fdatasyncs.",
        l,
        &SYNC_LATENCY_BOUNDS_US,
        &p.sync.latency_buckets,
        p.sync.latency_us_sum as f64 / 1e6,
        1e-6,
    );
    x.histogram(
        "strom_partition_group_commit_records",
        "Records made durable by one group-commit fdatasync.",
        l,
        &GROUP_COMMIT_BOUNDS_RECORDS,
        &p.sync.records_buckets,
        p.sync.records_sum as f64,
        1.0,
    );
}

/// Merges every shard's snapshot into one exposition; consumer lag comes
/// from the committed offsets and the owners' high watermarks.
pub fn render(mut snapshots: Vec<ShardSnapshot>, expected_shards: usize) -> String {
    snapshots.sort_by_key(|s| s.shard);
    let mut x = Exposition::default();
    x.gauge(
        "strom_scrape_shards",
        "Shards that answered this scrape (fewer than strom_shards during start-up or shutdown).",
        &[],
        snapshots.len(),
    );
    x.gauge("strom_shards", "Shards configured.", &[], expected_shards);
    let mut hwm: HashMap<(String, u32), u64> = HashMap::new();
    let mut committed = Vec::new();
    for s in snapshots {
        x.merge(s.exposition);
        for (t, p, h) in s.high_watermarks {
            hwm.insert((t, p), h);
        }
        committed.extend(s.committed);
    }
    committed.sort();
    for (group, topic, p, offset) in committed {
        let part = p.to_string();
        let l: &[(&str, &str)] = &[("group", &group), ("topic", &topic), ("partition", &part)];
        x.gauge(
            "strom_group_committed_offset",
            "The next offset the group will consume, as committed.",
            l,
            offset,
        );
        if let Some(&end) = hwm.get(&(topic.clone(), p)) {
            x.gauge(
                "strom_group_lag",
                "Records between the group's committed offset and the partition's high watermark.",
                l,
                end.saturating_sub(offset),
            );
        }
    }
    x.text()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_histograms_are_cumulative() {
        let mut x = Exposition::default();
        x.counter("a_total", "A.", &[("topic", "q\"\\\nx")], 3);
        x.histogram("h", "H.", &[], &[1, 10], &[1, 2, 3], 0.5, 1.0);
        let t = x.text();
        assert!(t.contains("a_total{topic=\"q\\\"\\\\\\nx\"} 3\n"), "{t}");
        assert!(t.contains("h_bucket{le=\"1\"} 1\n"), "{t}");
        assert!(t.contains("h_bucket{le=\"10\"} 3\n"), "{t}");
        assert!(t.contains("h_bucket{le=\"+Inf\"} 6\n"), "{t}");
        assert!(t.contains("h_count 6\n"), "{t}");
        assert_eq!(t.matches("# TYPE h histogram").count(), 1);
    }

    #[test]
    fn merged_families_keep_one_header() {
        let m = ShardMetrics::default();
        let a = m.snapshot(0, Vec::new(), Vec::new(), 0);
        let b = m.snapshot(1, Vec::new(), vec![("g".into(), "t".into(), 0, 5)], 0);
        let t = render(vec![b, a], 2);
        assert_eq!(t.matches("# TYPE strom_connections_open gauge").count(), 1);
        assert_eq!(t.matches("strom_connections_open{").count(), 2);
        assert!(
            t.contains("strom_group_committed_offset{group=\"g\",topic=\"t\",partition=\"0\"} 5")
        );
    }

    #[test]
    fn client_error_lines_are_limited_per_second() {
        let l = ErrorLogLimit::default();
        let t0 = Instant::now();
        let admitted = (0..100).filter(|_| l.admit(t0).is_some()).count();
        assert_eq!(admitted, CLIENT_ERROR_LOGS_PER_SEC_MAX as usize);
        let next = l.admit(t0 + Duration::from_secs(1));
        assert_eq!(next, Some(100 - CLIENT_ERROR_LOGS_PER_SEC_MAX as u64));
    }
}
