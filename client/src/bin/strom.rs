//! `strom`: the command-line client, in the spirit of kafka-topics,
//! kafka-console-producer and kafka-console-consumer.
//!
//! Exit codes: 0 on success, 1 on any error (usage errors included), with a
//! one-line message on stderr.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::{BufRead, BufWriter, ErrorKind, Read, Write};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;
use strom_client::{
    Acks, AssignmentStrategy, AutoOffsetReset, Client, ConnectionConfig, Consumer, ConsumerConfig,
    Error, ErrorCode, GroupConfig, GroupConsumer, OffsetSpec, Producer, ProducerConfig,
    ProducerRecord, RecordView, ResetTo,
};

/// Lines buffered between the stdin reader thread and the producer.
const STDIN_LINES_QUEUED_MAX: usize = 4_096;
/// Longest stdin line accepted (one record).
const LINE_BYTES_MAX: usize = 16 << 20;

#[derive(Parser)]
#[command(
    name = "strom",
    version,
    about = "Command-line client for the Strom streaming platform"
)]
struct Cli {
    /// Server address (native protocol): one HOST:PORT, or several comma
    /// separated (the nodes of a cluster: the first that answers is used,
    /// and requests follow partition leaders and the controller from
    /// there). The default comes from the STROM_SERVER environment
    /// variable, else 127.0.0.1:9400.
    #[arg(
        long,
        global = true,
        default_value_t = default_server(),
        value_name = "HOST:PORT[,HOST:PORT...]"
    )]
    server: String,
    /// Longest wait for the server to answer one request (ms).
    #[arg(long, global = true, default_value_t = 30_000, value_name = "MS")]
    request_timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Produce one record per line of standard input.
    Produce(ProduceArgs),
    /// Print records of a topic to standard output.
    Consume(ConsumeArgs),
    /// List and describe consumer groups; reset their offsets.
    #[command(subcommand)]
    Group(GroupCommand),
}

#[derive(Subcommand)]
enum GroupCommand {
    /// List consumer groups with their state and member count.
    List,
    /// Show a group's members and, per partition, the owning member, the
    /// committed offset, the end offset (high watermark) and the lag.
    Describe { group: String },
    /// Set a group's committed offsets for a topic. Only while the group
    /// has no members (stop its consumers first).
    #[command(group(
        clap::ArgGroup::new("target")
            .required(true)
            .args(["to_earliest", "to_latest", "to_offset"])
    ))]
    ResetOffsets {
        group: String,
        #[arg(long)]
        topic: String,
        /// Only this partition (default: all partitions of the topic).
        #[arg(long)]
        partition: Option<u32>,
        /// To each partition's log start offset.
        #[arg(long)]
        to_earliest: bool,
        /// To each partition's end offset (skip everything so far).
        #[arg(long)]
        to_latest: bool,
        /// To this offset (clamped into each partition's range).
        #[arg(long, value_name = "N")]
        to_offset: Option<u64>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum StrategyArg {
    /// Per topic, consecutive ranges of partitions.
    Range,
    /// All partitions dealt out one by one.
    Roundrobin,
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Topic configuration, e.g. `retention.ms=86400000` (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_config)]
        configs: Vec<(String, String)>,
    },
    /// List topic names.
    List,
    /// Show a topic's configuration and partitions.
    Describe { name: String },
    /// Delete a topic and its data.
    Delete { name: String },
}

#[derive(Clone, Copy, ValueEnum)]
enum AcksArg {
    /// Fire and forget: the server does not answer.
    None,
    /// Answer once the owning shard appended the batch.
    Leader,
    /// Answer once the batch is on disk (fdatasync).
    Durable,
}

#[derive(Args)]
struct ProduceArgs {
    topic: String,
    /// Split each line at the first SEP into key and value (a line without
    /// SEP gets a null key).
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    #[arg(long, value_enum, default_value = "leader")]
    acks: AcksArg,
    /// Send every record to this partition (default: by key hash, round
    /// robin for lines without a key).
    #[arg(long)]
    partition: Option<u32>,
    /// How long a batch waits for more lines (ms).
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Largest batch (bytes).
    #[arg(long, default_value_t = 64 << 10)]
    batch_bytes: usize,
    /// Print "PARTITION OFFSET" for every record once it is acknowledged.
    #[arg(long)]
    print_offsets: bool,
    /// Idempotent producing: a producer id and per-partition sequences, and
    /// batches whose answer is lost are resent without being stored twice
    /// (while the server remembers the producer). Needs --acks leader or
    /// durable. In a cluster this is what carries a produce through a
    /// leader change: batches refused by a deposed leader or lost with it
    /// are resent to the new one (without it they fail, and only later
    /// lines go to the new leader).
    #[arg(long)]
    idempotent: bool,
}

#[derive(Args)]
#[command(
    after_help = "With --group G the consumer joins consumer group G: the server's group \
coordinator shares the topic's partitions out between all consumers of G (rebalancing when one \
joins, leaves or stops heartbeating for --session-timeout-ms), each partition starts at G's \
committed offset (or where --from-beginning/the end says when G has none), and the position is \
committed after every batch printed. With --group and --partition the consumer reads that \
partition itself and uses G only to store offsets (accepted while G has no members). \
See also `strom group list|describe|reset-offsets`."
)]
struct ConsumeArgs {
    topic: String,
    /// Start at the earliest offset (default: only new records).
    #[arg(long, conflicts_with = "offset")]
    from_beginning: bool,
    /// Start at this offset (in every consumed partition).
    #[arg(long)]
    offset: Option<u64>,
    /// Consume only this partition (default: all).
    #[arg(long)]
    partition: Option<u32>,
    /// Exit after printing this many records (default: follow until
    /// interrupted).
    #[arg(long)]
    count: Option<u64>,
    /// Consume as a member of this consumer group (see below).
    #[arg(long)]
    group: Option<String>,
    /// With --group: the coordinator removes this consumer when it has not
    /// heard from it this long (within the server's bounds).
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    session_timeout_ms: u32,
    /// With --group: how the coordinator shares partitions out.
    #[arg(long, value_enum, default_value = "range")]
    assignment_strategy: StrategyArg,
    /// Output template: {key} {value} {offset} {partition} {timestamp}
    /// {headers} {topic}, and with --group {member} {generation}; \t and \n
    /// are escapes. Null keys and values print as "null".
    #[arg(long, default_value = "{value}")]
    format: String,
    /// Give up after this long without a new record (ms; default: never).
    #[arg(long)]
    idle_timeout_ms: Option<u64>,
    /// Only committed data (Kafka's isolation.level=read_committed): up to
    /// the last stable offset, without aborted transactions.
    #[arg(long)]
    read_committed: bool,
}

fn default_server() -> String {
    std::env::var("STROM_SERVER")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "127.0.0.1:9400".to_owned())
}

fn parse_config(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return if usage {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::BrokenPipe) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strom: {e}");
            ExitCode::from(1)
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Client(#[from] Error),
    #[error("{0}")]
    Msg(String),
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        source: std::io::Error,
    },
    #[error("output closed")]
    BrokenPipe,
}

fn out_err(source: std::io::Error) -> CliError {
    if source.kind() == ErrorKind::BrokenPipe {
        CliError::BrokenPipe
    } else {
        CliError::Io {
            op: "write stdout",
            source,
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    let config = ConnectionConfig {
        request_timeout_ms: cli.request_timeout_ms,
        client_name: format!("strom-cli/{}", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    };
    let client = Client::connect_with(&cli.server, config.clone())?;
    match cli.command {
        Command::Topic(t) => topic(client, t),
        Command::Produce(p) => produce(client, p),
        Command::Consume(c) => match (&c.group, c.partition) {
            (Some(_), None) => consume_group(&cli.server, config, c),
            _ => consume(client, c),
        },
        Command::Group(g) => group(client, g),
    }
}

fn topic(mut client: Client, cmd: TopicCommand) -> Result<(), CliError> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cmd {
        TopicCommand::Create {
            name,
            partitions,
            configs,
        } => {
            client.create_topic(&name, partitions, &configs)?;
            writeln!(out, "Created topic {name}.").map_err(out_err)?;
        }
        TopicCommand::List => {
            let mut topics = client.list_topics()?;
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            for t in topics {
                writeln!(out, "{}", t.name).map_err(out_err)?;
            }
        }
        TopicCommand::Describe { name } => {
            // In a cluster each partition's offsets as its leader has them.
            let d = client.describe_topic_at_leaders(&name)?;
            let configs: Vec<String> = d.configs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(
                out,
                "Topic: {}\tPartitions: {}\tConfigs: {}",
                d.name,
                d.partitions.len(),
                configs.join(",")
            )
            .map_err(out_err)?;
            for p in &d.partitions {
                write!(
                    out,
                    "\tPartition: {}\tLogStartOffset: {}\tHighWatermark: {}\tShard: {}",
                    p.partition, p.log_start_offset, p.high_watermark, p.owner_shard
                )
                .map_err(out_err)?;
                if p.leader_node != 0 {
                    write!(
                        out,
                        "\tLeader: {}\tLeaderEpoch: {}",
                        p.leader_node, p.leader_epoch
                    )
                    .map_err(out_err)?;
                }
                if p.error != strom_client::ErrorCode::None {
                    write!(out, "\tError: {:?} {}", p.error, p.message).map_err(out_err)?;
                }
                writeln!(out).map_err(out_err)?;
            }
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name)?;
            writeln!(out, "Deleted topic {name}.").map_err(out_err)?;
        }
    }
    Ok(())
}

enum Line {
    Data(Vec<u8>),
    Failed(std::io::Error),
}

fn produce(client: Client, args: ProduceArgs) -> Result<(), CliError> {
    let acks = match args.acks {
        AcksArg::None => Acks::None,
        AcksArg::Leader => Acks::Leader,
        AcksArg::Durable => Acks::Durable,
    };
    let mut producer = Producer::new(
        client,
        ProducerConfig {
            acks,
            linger_ms: args.linger_ms,
            batch_bytes: args.batch_bytes,
            idempotent: args.idempotent,
            ..Default::default()
        },
    );
    // Fail early on an unknown topic or partition.
    let count = producer.client().partition_count(&args.topic)?;
    if let Some(p) = args.partition {
        if p >= count {
            return Err(Error::UnknownPartition {
                topic: args.topic.clone(),
                partition: p,
                partitions: count,
            }
            .into());
        }
    }
    // A reader thread, so that lingering batches go out while stdin is idle.
    let (tx, rx) = mpsc::sync_channel::<Line>(STDIN_LINES_QUEUED_MAX);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        loop {
            let mut line = Vec::new();
            match input
                .by_ref()
                .take(LINE_BYTES_MAX as u64 + 1)
                .read_until(b'\n', &mut line)
            {
                Ok(0) => return,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    } else if line.len() > LINE_BYTES_MAX {
                        let e = std::io::Error::new(
                            ErrorKind::InvalidData,
                            format!("a line is longer than {LINE_BYTES_MAX} bytes"),
                        );
                        let _ = tx.send(Line::Failed(e));
                        return;
                    }
                    if tx.send(Line::Data(line)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Line::Failed(e));
                    return;
                }
            }
        }
    });
    let sep = args
        .key_separator
        .as_deref()
        .map(str::as_bytes)
        .filter(|s| !s.is_empty());
    let linger = Duration::from_millis(args.linger_ms.max(1));
    let mut sent = 0u64;
    let mut failed = 0u64;
    let mut first_error: Option<String> = None;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut report = |results: Vec<strom_client::Result<u64>>,
                      partitions: &mut Vec<u32>,
                      out: &mut BufWriter<std::io::StdoutLock<'_>>|
     -> Result<(), CliError> {
        for (r, p) in results.into_iter().zip(partitions.drain(..)) {
            match r {
                Ok(offset) if args.print_offsets => {
                    writeln!(out, "{p} {offset}").map_err(out_err)?
                }
                Ok(_) | Err(Error::NotAcknowledged) => {}
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        out.flush().map_err(out_err)
    };
    let mut partitions = Vec::new();
    loop {
        match rx.recv_timeout(linger) {
            Ok(Line::Data(line)) => {
                let (key, value) = match sep.and_then(|s| find(&line, s).map(|i| (i, s.len()))) {
                    Some((i, n)) => (Some(&line[..i]), &line[i + n..]),
                    None => (None, &line[..]),
                };
                let record = ProducerRecord {
                    topic: &args.topic,
                    partition: args.partition,
                    key,
                    value: Some(value),
                    ..Default::default()
                };
                let h = producer.send(&record)?;
                partitions.push(h.partition());
                sent += 1;
                if producer.pending() >= 100_000 {
                    let results = producer.flush();
                    report(results, &mut partitions, &mut out)?;
                }
            }
            Ok(Line::Failed(e)) => {
                let results = producer.flush();
                report(results, &mut partitions, &mut out)?;
                return Err(CliError::Io {
                    op: "read stdin",
                    source: e,
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if producer.pending() > 0 {
                    let results = producer.flush();
                    report(results, &mut partitions, &mut out)?;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let results = producer.flush();
    report(results, &mut partitions, &mut out)?;
    if failed > 0 {
        return Err(CliError::Msg(format!(
            "{failed} of {sent} records failed; first error: {}",
            first_error.unwrap_or_default()
        )));
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One piece of a parsed `--format` template.
enum Piece {
    Text(String),
    Key,
    Value,
    Offset,
    Partition,
    Timestamp,
    Headers,
    Topic,
    Member,
    Generation,
}

fn parse_format(template: &str) -> Result<Vec<Piece>, CliError> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = template;
    while let Some(c) = rest.chars().next() {
        if c == '{' {
            let end = rest
                .find('}')
                .ok_or_else(|| CliError::Msg(format!("--format: unclosed '{{' in {template:?}")))?;
            let piece = match &rest[1..end] {
                "key" => Piece::Key,
                "value" => Piece::Value,
                "offset" => Piece::Offset,
                "partition" => Piece::Partition,
                "timestamp" => Piece::Timestamp,
                "headers" => Piece::Headers,
                "topic" => Piece::Topic,
                "member" => Piece::Member,
                "generation" => Piece::Generation,
                other => {
                    return Err(CliError::Msg(format!(
                        "--format: unknown field {{{other}}} (known: key value offset partition timestamp headers topic member generation)"
                    )))
                }
            };
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(piece);
            rest = &rest[end + 1..];
        } else if c == '\\' {
            match rest[1..].chars().next() {
                Some('t') => text.push('\t'),
                Some('n') => text.push('\n'),
                Some('\\') => text.push('\\'),
                Some(o) => {
                    text.push('\\');
                    text.push(o);
                }
                None => text.push('\\'),
            }
            rest = &rest[1 + rest[1..].chars().next().map_or(0, char::len_utf8)..];
        } else {
            text.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// The group membership a record was consumed under (for {member} and
/// {generation}).
#[derive(Clone, Copy)]
struct Member<'a> {
    id: &'a str,
    generation: i32,
}

const NO_MEMBER: Member<'static> = Member {
    id: "",
    generation: -1,
};

fn render(
    out: &mut impl Write,
    pieces: &[Piece],
    topic: &str,
    partition: u32,
    r: &RecordView<'_>,
    member: Member<'_>,
) -> std::io::Result<()> {
    for p in pieces {
        match p {
            Piece::Text(t) => out.write_all(t.as_bytes())?,
            Piece::Key => out.write_all(r.key.unwrap_or(b"null"))?,
            Piece::Value => out.write_all(r.value.unwrap_or(b"null"))?,
            Piece::Offset => write!(out, "{}", r.offset)?,
            Piece::Partition => write!(out, "{partition}")?,
            Piece::Timestamp => write!(out, "{}", r.timestamp_ms)?,
            Piece::Topic => out.write_all(topic.as_bytes())?,
            Piece::Member => out.write_all(member.id.as_bytes())?,
            Piece::Generation => write!(out, "{}", member.generation)?,
            Piece::Headers => {
                for (i, (k, v)) in r.headers().enumerate() {
                    if i > 0 {
                        out.write_all(b",")?;
                    }
                    out.write_all(k.as_bytes())?;
                    out.write_all(b"=")?;
                    out.write_all(v)?;
                }
            }
        }
    }
    out.write_all(b"\n")
}

fn consume(client: Client, args: ConsumeArgs) -> Result<(), CliError> {
    let pieces = parse_format(&args.format)?;
    let mut consumer = Consumer::new(
        client,
        ConsumerConfig {
            read_committed: args.read_committed,
            ..ConsumerConfig::default()
        },
    );
    let count = consumer.client().partition_count(&args.topic)?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) => vec![p],
        None => (0..count).collect(),
    };
    let fallback = if args.from_beginning {
        OffsetSpec::Earliest
    } else {
        OffsetSpec::Latest
    };
    for &p in &partitions {
        let mut from = match args.offset {
            Some(n) => OffsetSpec::At(n),
            None => fallback,
        };
        if let (Some(group), None) = (&args.group, args.offset) {
            if let Some(committed) = consumer.client().committed(group, &args.topic, p)? {
                from = OffsetSpec::At(committed);
            }
        }
        consumer.assign(&args.topic, p, from)?;
    }
    // The next offset to commit per partition: one past the last record
    // printed, so --count never commits records it did not print.
    let mut commit_at: Vec<(String, u32, u64)> = consumer
        .assignments()
        .iter()
        .map(|a| (a.topic.to_string(), a.partition, a.position))
        .collect();
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let limit = args.count.unwrap_or(u64::MAX);
    let mut idle = Duration::ZERO;
    let poll_wait = Duration::from_millis(500);
    while printed < limit {
        let frames = consumer.poll(poll_wait)?;
        if frames.is_empty() {
            idle += poll_wait;
            if args
                .idle_timeout_ms
                .is_some_and(|ms| idle >= Duration::from_millis(ms))
            {
                return Err(CliError::Msg(format!(
                    "no new record for {} ms after {printed} records",
                    idle.as_millis()
                )));
            }
            continue;
        }
        idle = Duration::ZERO;
        'frames: for f in &frames {
            let slot = commit_at.iter().position(|c| c.1 == f.partition);
            for r in f.records() {
                if printed >= limit {
                    break 'frames;
                }
                render(&mut out, &pieces, &args.topic, f.partition, &r, NO_MEMBER)
                    .map_err(out_err)?;
                printed += 1;
                if let Some(i) = slot {
                    commit_at[i].2 = r.offset + 1;
                }
            }
        }
        out.flush().map_err(out_err)?;
        if let Some(group) = &args.group {
            consumer.client().commit_offsets(group, &commit_at)?;
        }
    }
    Ok(())
}

/// `strom consume TOPIC --group G` without --partition: a group member.
fn consume_group(
    server: &str,
    connection: ConnectionConfig,
    args: ConsumeArgs,
) -> Result<(), CliError> {
    let group = args.group.clone().expect("called with a group");
    if args.offset.is_some() {
        return Err(CliError::Msg(
            "--offset needs --partition (with --group alone the group's committed offsets \
             decide; see `strom group reset-offsets`)"
                .into(),
        ));
    }
    let pieces = parse_format(&args.format)?;
    let mut config = GroupConfig::new(group);
    config.client_id = "strom-cli".to_owned();
    config.session_timeout_ms = args.session_timeout_ms;
    config.consumer.read_committed = args.read_committed;
    config.strategy = match args.assignment_strategy {
        StrategyArg::Range => AssignmentStrategy::Range,
        StrategyArg::Roundrobin => AssignmentStrategy::RoundRobin,
    };
    config.auto_offset_reset = if args.from_beginning {
        AutoOffsetReset::Earliest
    } else {
        AutoOffsetReset::Latest
    };
    // Commits are explicit: after every printed batch, exactly up to the
    // last printed record (so --count never commits what it did not print).
    config.enable_auto_commit = false;
    config.connection = connection;
    let mut consumer = GroupConsumer::connect(server, config)?;
    consumer.subscribe(&[args.topic.as_str()])?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let limit = args.count.unwrap_or(u64::MAX);
    let mut idle = Duration::ZERO;
    let poll_wait = Duration::from_millis(500);
    while printed < limit {
        let started = std::time::Instant::now();
        let frames = consumer.poll(poll_wait)?;
        if frames.is_empty() {
            idle += started.elapsed().max(poll_wait);
            if args
                .idle_timeout_ms
                .is_some_and(|ms| idle >= Duration::from_millis(ms))
            {
                return Err(CliError::Msg(format!(
                    "no new record for {} ms after {printed} records",
                    idle.as_millis()
                )));
            }
            continue;
        }
        idle = Duration::ZERO;
        let member = Member {
            id: consumer.member_id(),
            generation: consumer.generation(),
        };
        let mut commit_at: Vec<(String, u32, u64)> = Vec::new();
        'frames: for f in &frames {
            for r in f.records() {
                if printed >= limit {
                    break 'frames;
                }
                render(&mut out, &pieces, &f.topic, f.partition, &r, member).map_err(out_err)?;
                printed += 1;
                match commit_at
                    .iter_mut()
                    .find(|c| c.1 == f.partition && *c.0 == *f.topic)
                {
                    Some(c) => c.2 = r.offset + 1,
                    None => commit_at.push((f.topic.to_string(), f.partition, r.offset + 1)),
                }
            }
        }
        out.flush().map_err(out_err)?;
        match consumer.commit_offsets(&commit_at) {
            Ok(()) => {}
            // Rebalancing or fenced: the next poll rejoins; the records are
            // delivered again to whoever owns them next.
            Err(e)
                if matches!(
                    e.code(),
                    Some(ErrorCode::RebalanceInProgress)
                        | Some(ErrorCode::IllegalGeneration)
                        | Some(ErrorCode::UnknownMemberId)
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    consumer.close()?;
    Ok(())
}

/// Formats rows as left-aligned columns separated by two spaces.
fn table(out: &mut impl Write, rows: &[Vec<String>]) -> std::io::Result<()> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                let pad = widths[c] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn offset_text(n: i64) -> String {
    if n < 0 {
        "-".to_owned()
    } else {
        n.to_string()
    }
}

fn group(mut client: Client, cmd: GroupCommand) -> Result<(), CliError> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cmd {
        GroupCommand::List => {
            let mut groups = client.list_groups()?;
            groups.sort_by(|a, b| a.group.cmp(&b.group));
            let mut rows = vec![vec!["GROUP".into(), "STATE".into(), "MEMBERS".into()]];
            for g in groups {
                rows.push(vec![g.group, g.state, g.members.to_string()]);
            }
            table(&mut out, &rows).map_err(out_err)?;
        }
        GroupCommand::Describe { group } => {
            let d = client.describe_group(&group)?;
            writeln!(
                out,
                "Group: {}\tState: {}\tGeneration: {}\tProtocol: {}\tMembers: {}",
                d.group,
                d.state,
                d.generation,
                if d.protocol_name.is_empty() {
                    "-"
                } else {
                    &d.protocol_name
                },
                d.members.len()
            )
            .map_err(out_err)?;
            // Who owns each partition.
            let mut owner: std::collections::HashMap<(String, u32), (String, String)> =
                std::collections::HashMap::new();
            for m in &d.members {
                for tp in &m.partitions {
                    for p in &tp.partitions {
                        owner.insert(
                            (tp.topic.clone(), *p),
                            (m.member_id.clone(), m.client_id.clone()),
                        );
                    }
                }
            }
            writeln!(out).map_err(out_err)?;
            let mut rows = vec![vec![
                "TOPIC".into(),
                "PARTITION".into(),
                "COMMITTED-OFFSET".into(),
                "END-OFFSET".into(),
                "LAG".into(),
                "MEMBER-ID".into(),
                "CLIENT-ID".into(),
            ]];
            let mut offsets = d.offsets.clone();
            offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
            for o in offsets {
                let (m, c) = owner
                    .get(&(o.topic.clone(), o.partition))
                    .cloned()
                    .unwrap_or_else(|| ("-".into(), "-".into()));
                rows.push(vec![
                    o.topic,
                    o.partition.to_string(),
                    offset_text(o.committed_offset),
                    offset_text(o.end_offset),
                    offset_text(o.lag),
                    m,
                    c,
                ]);
            }
            table(&mut out, &rows).map_err(out_err)?;
            if !d.members.is_empty() {
                writeln!(out).map_err(out_err)?;
                let mut rows = vec![vec![
                    "MEMBER-ID".into(),
                    "CLIENT-ID".into(),
                    "HOST".into(),
                    "ASSIGNMENT".into(),
                ]];
                for m in &d.members {
                    let assignment: Vec<String> = m
                        .partitions
                        .iter()
                        .map(|tp| {
                            let ps: Vec<String> =
                                tp.partitions.iter().map(u32::to_string).collect();
                            format!("{}:{}", tp.topic, ps.join(","))
                        })
                        .collect();
                    rows.push(vec![
                        m.member_id.clone(),
                        m.client_id.clone(),
                        if m.client_host.is_empty() {
                            "-".into()
                        } else {
                            m.client_host.clone()
                        },
                        if assignment.is_empty() {
                            "-".into()
                        } else {
                            assignment.join(" ")
                        },
                    ]);
                }
                table(&mut out, &rows).map_err(out_err)?;
            }
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            partition,
            to_earliest,
            to_latest,
            to_offset,
        } => {
            let (to, offset) = match (to_earliest, to_latest, to_offset) {
                (true, _, _) => (ResetTo::Earliest, 0),
                (_, true, _) => (ResetTo::Latest, 0),
                (_, _, Some(n)) => (ResetTo::Offset, n),
                _ => {
                    return Err(CliError::Msg(
                        "one of --to-earliest, --to-latest, --to-offset N is required".into(),
                    ))
                }
            };
            let partitions: Vec<u32> = partition.into_iter().collect();
            match client.reset_offsets(&group, &topic, &partitions, to, offset) {
                Ok(_) => {}
                Err(e) if e.code() == Some(ErrorCode::NonEmptyGroup) => {
                    return Err(CliError::Msg(format!(
                        "group {group} has active members; offsets can only be reset while \
                         the group is empty (stop its consumers and wait for their session \
                         timeout, then retry)"
                    )))
                }
                Err(e) => return Err(e.into()),
            }
            let count = client.partition_count(&topic)?;
            let asked: Vec<(String, u32)> = match partition {
                Some(p) => vec![(topic.clone(), p)],
                None => (0..count).map(|p| (topic.clone(), p)).collect(),
            };
            let mut rows = vec![vec![
                "TOPIC".into(),
                "PARTITION".into(),
                "NEW-OFFSET".into(),
            ]];
            let mut results = client.fetch_offsets(&group, &asked)?;
            results.sort_by_key(|r| r.partition);
            for r in results {
                rows.push(vec![
                    r.topic,
                    r.partition.to_string(),
                    offset_text(r.offset),
                ]);
            }
            table(&mut out, &rows).map_err(out_err)?;
        }
    }
    Ok(())
}
