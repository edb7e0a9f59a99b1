//! Server configuration: command-line flags (clap) over an optional TOML
//! file (`--config FILE`) over embedded defaults. A flag given on the command
//! line wins over the file; the file wins over the defaults.

use crate::error::ServerError;
use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_DATA_DIR: &str = "./data";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9400";
pub const DEFAULT_HTTP: &str = "127.0.0.1:9401";
pub const DEFAULT_KAFKA_LISTEN: &str = "127.0.0.1:9092";
/// Partition count of topics the Kafka listener creates on first use.
pub const DEFAULT_KAFKA_PARTITIONS: u32 = 1;

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Command-line flags. Every flag is optional so that the config file can
/// supply it.
#[derive(Debug, Parser, Default)]
#[command(name = "strom-server", version, about = "Strom streaming broker")]
pub struct Args {
    /// Log line format on stderr; the level filter comes from the STROM_LOG
    /// environment variable (e.g. `info`, `strom_server=debug`) [default: text]
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// TOML file with any of: data_dir, listen, http, shard_ports, cores,
    /// offsets_retention_ms, group_initial_rebalance_delay_ms,
    /// group_min_session_timeout_ms, group_max_session_timeout_ms,
    /// kafka_listen, kafka_advertise, kafka_auto_create, kafka_partitions,
    /// an [engine] table (engine defaults; see tuning/autotune), and
    /// [tls.kafka] / [tls.native] tables (cert_file, key_file,
    /// client_ca_file, client_auth = none|requested|required).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for topics and metadata [default: ./data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Native protocol address [default: 127.0.0.1:9400]
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// HTTP address for /health, /ready, /metrics [default: 127.0.0.1:9401]
    #[arg(long, value_name = "HOST:PORT")]
    pub http: Option<String>,
    /// Direct per-shard native ports, told to clients in the handshake so
    /// they reach a partition's owning shard with no cross-core hop:
    /// `auto` (any free port per shard, on the --listen host), `off`, or a
    /// first port BASE (shard i listens on BASE+i) [default: auto]
    #[arg(long, value_name = "auto|off|BASE")]
    pub shard_ports: Option<String>,
    /// Number of shards (one pinned executor each) [default: all cores]
    #[arg(long, value_name = "N")]
    pub cores: Option<usize>,
    /// How long an empty group's committed offsets are kept [default: 7 days]
    #[arg(long, value_name = "MS")]
    pub offsets_retention_ms: Option<u64>,
    /// How long the first rebalance of an empty group waits for more
    /// members [default: 3000]
    #[arg(long, value_name = "MS")]
    pub group_initial_rebalance_delay_ms: Option<u64>,
    /// Smallest session timeout a member may ask for [default: 6000]
    #[arg(long, value_name = "MS")]
    pub group_min_session_timeout_ms: Option<u32>,
    /// Largest session timeout a member may ask for [default: 1800000]
    #[arg(long, value_name = "MS")]
    pub group_max_session_timeout_ms: Option<u32>,
    /// Kafka protocol address, or "off" [default: 127.0.0.1:9092]
    #[arg(long, value_name = "HOST:PORT")]
    pub kafka_listen: Option<String>,
    /// Address Kafka clients are told to connect to (Metadata, FindCoordinator)
    /// [default: the address each client connected to]
    #[arg(long, value_name = "HOST:PORT")]
    pub kafka_advertise: Option<String>,
    /// Create unknown topics on a Kafka Metadata or Produce request [default: true]
    #[arg(long, value_name = "BOOL")]
    pub kafka_auto_create: Option<bool>,
    /// Partition count of topics created automatically [default: 1]
    #[arg(long, value_name = "N")]
    pub kafka_partitions: Option<u32>,
    /// Cluster mode: this node's id (>= 1, never reused). With --peer and
    /// --raft-listen; without them the node runs alone, as before.
    #[arg(long, value_name = "N")]
    pub node_id: Option<u64>,
    /// Cluster mode: shard 0's Raft address; shard s listens on its port + s
    #[arg(long, value_name = "HOST:PORT")]
    pub raft_listen: Option<String>,
    /// Cluster mode: another node, as ID,raft=HOST:PORT[,kafka=HOST:PORT][,native=HOST:PORT]
    /// (repeat for each peer; every node must run the same --cores)
    #[arg(long = "peer", value_name = "SPEC")]
    pub peers: Vec<String>,
}

/// The `[cluster]` table of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub node_id: Option<u64>,
    pub raft_listen: Option<String>,
    #[serde(default)]
    pub peers: Vec<String>,
    pub tick_ms: Option<u64>,
    pub election_ticks: Option<usize>,
    pub heartbeat_ticks: Option<usize>,
}

/// Engine settings every partition starts from (per-topic configs override
/// these; `shard_cache_bytes_max` is per shard, applied when a shard starts).
/// Only in the TOML file: `tuning/autotune` writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineDefaults {
    pub write_buffer_bytes: Option<usize>,
    pub unwritten_bytes_max: Option<usize>,
    pub cache_bytes_max: Option<usize>,
    pub shard_cache_bytes_max: Option<usize>,
    pub disk_reserve_bytes: Option<u64>,
    pub preallocate_bytes: Option<u64>,
    pub checkpoint_interval_bytes: Option<u64>,
}

impl EngineDefaults {
    /// The engine's LogConfig with these defaults applied.
    pub fn log_config(&self) -> strom_engine::LogConfig {
        let mut c = strom_engine::LogConfig::default();
        if let Some(v) = self.write_buffer_bytes {
            c.write_buffer_bytes = v;
        }
        if let Some(v) = self.unwritten_bytes_max {
            c.unwritten_bytes_max = v;
        }
        if let Some(v) = self.cache_bytes_max {
            c.cache_bytes_max = v;
        }
        if let Some(v) = self.disk_reserve_bytes {
            c.disk_reserve_bytes = v;
        }
        if let Some(v) = self.preallocate_bytes {
            c.preallocate_bytes = v;
        }
        if let Some(v) = self.checkpoint_interval_bytes {
            c.checkpoint_interval_bytes = v;
        }
        c
    }
}

static ENGINE_DEFAULTS: std::sync::OnceLock<EngineDefaults> = std::sync::OnceLock::new();

/// The process's engine defaults (set once at start-up).
pub fn engine_defaults() -> EngineDefaults {
    ENGINE_DEFAULTS.get().copied().unwrap_or_default()
}

/// The TOML file's schema; unknown keys are refused.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub http: Option<String>,
    pub shard_ports: Option<String>,
    pub cores: Option<usize>,
    pub offsets_retention_ms: Option<u64>,
    pub group_initial_rebalance_delay_ms: Option<u64>,
    pub group_min_session_timeout_ms: Option<u32>,
    pub group_max_session_timeout_ms: Option<u32>,
    pub kafka_listen: Option<String>,
    pub kafka_advertise: Option<String>,
    pub kafka_auto_create: Option<bool>,
    pub kafka_partitions: Option<u32>,
    /// `[engine]` table: see [`EngineDefaults`].
    pub engine: Option<EngineDefaults>,
    /// `[cluster]` table: see [`ClusterFile`].
    pub cluster: Option<ClusterFile>,
    /// `[tls.kafka]` / `[tls.native]` tables: see [`crate::tls::TlsFile`].
    pub tls: Option<crate::tls::TlsTables>,
    /// `[sasl]` table: see [`crate::auth::SaslFile`].
    pub sasl: Option<crate::auth::SaslFile>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub http: SocketAddr,
    pub shard_ports: ShardPorts,
    pub shards: usize,
    pub groups: crate::group::coordinator::CoordinatorConfig,
    pub kafka: crate::kafka::KafkaConfig,
    /// Cluster mode (`--node-id` and `--peer`), or None for a single node.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Each listener's TLS (PEM files read at start-up).
    pub tls: crate::tls::ListenerTls,
    /// The credential store and SASL settings (opened at start-up).
    pub auth: std::sync::Arc<crate::auth::Store>,
}

/// The cluster settings from the flags over the `[cluster]` table.
fn resolve_cluster(
    node_id: Option<u64>,
    raft_listen: Option<String>,
    peers: Vec<String>,
    file: Option<ClusterFile>,
) -> Result<Option<crate::cluster::ClusterConfig>, ServerError> {
    let file = file.unwrap_or_default();
    let node_id = node_id.or(file.node_id);
    let peers = if peers.is_empty() { file.peers } else { peers };
    let raft_listen = raft_listen.or(file.raft_listen);
    let Some(node_id) = node_id else {
        if !peers.is_empty() || raft_listen.is_some() {
            return Err(ServerError::Argument(
                "--peer and --raft-listen need --node-id".into(),
            ));
        }
        return Ok(None);
    };
    let raft_listen = raft_listen.ok_or_else(|| {
        ServerError::Argument("--node-id needs --raft-listen (this node's Raft address)".into())
    })?;
    let c = crate::cluster::ClusterConfig {
        node_id,
        raft_listen: parse_addr("--raft-listen", &raft_listen)?,
        peers: peers
            .iter()
            .map(|p| crate::cluster::PeerSpec::parse(p))
            .collect::<Result<_, _>>()?,
        tick_ms: file.tick_ms.unwrap_or(crate::cluster::DEFAULT_TICK_MS),
        election_ticks: file
            .election_ticks
            .unwrap_or(crate::cluster::DEFAULT_ELECTION_TICKS),
        heartbeat_ticks: file
            .heartbeat_ticks
            .unwrap_or(crate::cluster::DEFAULT_HEARTBEAT_TICKS),
    };
    c.validate()?;
    Ok(Some(c))
}

/// Where each shard's direct native listener goes (`--shard-ports`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardPorts {
    /// Any free port, one per shard, on the `--listen` host.
    Auto,
    /// No direct ports: clients reach partitions through any shard.
    Off,
    /// Shard i listens on `base + i`.
    Base(u16),
}

impl ShardPorts {
    pub fn parse(s: &str) -> Result<ShardPorts, ServerError> {
        match s {
            "auto" => Ok(ShardPorts::Auto),
            "off" => Ok(ShardPorts::Off),
            n => match n.parse::<u16>() {
                Ok(base) if base > 0 => Ok(ShardPorts::Base(base)),
                _ => Err(ServerError::Argument(format!(
                    "--shard-ports {s:?}: expected auto, off or a port number"
                ))),
            },
        }
    }

    /// The address shard `id` binds its direct listener on, if any.
    pub fn addr(self, listen: SocketAddr, id: usize) -> Result<Option<SocketAddr>, ServerError> {
        let port = match self {
            ShardPorts::Off => return Ok(None),
            ShardPorts::Auto => 0,
            ShardPorts::Base(base) => u16::try_from(usize::from(base) + id).map_err(|_| {
                ServerError::Argument(format!("--shard-ports {base}: shard {id} has no port"))
            })?,
        };
        Ok(Some(SocketAddr::new(listen.ip(), port)))
    }
}

fn parse_addr(what: &str, s: &str) -> Result<SocketAddr, ServerError> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ServerError::Argument(format!("{what}: cannot resolve {s:?}")))
}

pub fn load_file(path: &Path) -> Result<FileConfig, ServerError> {
    let text = std::fs::read_to_string(path).map_err(|e| ServerError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| ServerError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl ServerConfig {
    pub fn resolve(args: Args) -> Result<ServerConfig, ServerError> {
        let file = match &args.config {
            Some(p) => load_file(p)?,
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let http = args
            .http
            .or(file.http)
            .unwrap_or_else(|| DEFAULT_HTTP.to_owned());
        let available = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let shards = args.cores.or(file.cores).unwrap_or(available);
        if shards == 0 || shards > 1024 {
            return Err(ServerError::Argument(format!(
                "--cores {shards}: must be between 1 and 1024"
            )));
        }
        let kafka_listen = args
            .kafka_listen
            .or(file.kafka_listen)
            .unwrap_or_else(|| DEFAULT_KAFKA_LISTEN.to_owned());
        let kafka_listen = match kafka_listen.as_str() {
            "off" | "none" => None,
            a => Some(parse_addr("--kafka-listen", a)?),
        };
        let kafka_advertise = match args.kafka_advertise.or(file.kafka_advertise) {
            None => None,
            Some(a) => Some(crate::kafka::parse_advertise(&a).map_err(ServerError::Argument)?),
        };
        let kafka_partitions = args
            .kafka_partitions
            .or(file.kafka_partitions)
            .unwrap_or(DEFAULT_KAFKA_PARTITIONS);
        crate::metadata::validate_partition_count(kafka_partitions)
            .map_err(|e| ServerError::Argument(format!("--kafka-partitions: {}", e.message)))?;
        let d = crate::group::coordinator::CoordinatorConfig::default();
        let groups = crate::group::coordinator::CoordinatorConfig {
            offsets_retention_ms: args
                .offsets_retention_ms
                .or(file.offsets_retention_ms)
                .unwrap_or(d.offsets_retention_ms),
            initial_rebalance_delay_ms: args
                .group_initial_rebalance_delay_ms
                .or(file.group_initial_rebalance_delay_ms)
                .unwrap_or(d.initial_rebalance_delay_ms),
            session_timeout_min_ms: args
                .group_min_session_timeout_ms
                .or(file.group_min_session_timeout_ms)
                .unwrap_or(d.session_timeout_min_ms),
            session_timeout_max_ms: args
                .group_max_session_timeout_ms
                .or(file.group_max_session_timeout_ms)
                .unwrap_or(d.session_timeout_max_ms),
            // Member ids stay unique across restarts.
            member_id_nonce: crate::group::wall_ms(),
            ..d
        };
        if groups.session_timeout_min_ms > groups.session_timeout_max_ms {
            return Err(ServerError::Argument(
                "--group-min-session-timeout-ms exceeds --group-max-session-timeout-ms".into(),
            ));
        }
        let cluster = resolve_cluster(args.node_id, args.raft_listen, args.peers, file.cluster)?;
        let engine = file.engine.unwrap_or_default();
        engine
            .log_config()
            .validate()
            .map_err(|e| ServerError::Argument(format!("[engine] in the config file: {e}")))?;
        let _ = ENGINE_DEFAULTS.set(engine);
        let tls = file
            .tls
            .unwrap_or_default()
            .load()
            .map_err(|e| ServerError::Argument(format!("[tls] in the config file: {e}")))?;
        let sasl = file
            .sasl
            .unwrap_or_default()
            .resolve()
            .map_err(ServerError::Argument)?;
        let auth = std::sync::Arc::new(
            crate::auth::Store::open(&data_dir, sasl).map_err(ServerError::Argument)?,
        );
        Ok(ServerConfig {
            groups,
            data_dir,
            listen: parse_addr("--listen", &listen)?,
            http: parse_addr("--http", &http)?,
            shard_ports: ShardPorts::parse(
                args.shard_ports
                    .or(file.shard_ports)
                    .as_deref()
                    .unwrap_or("auto"),
            )?,
            shards,
            kafka: crate::kafka::KafkaConfig {
                listen: kafka_listen,
                advertise: kafka_advertise,
                auto_create: args
                    .kafka_auto_create
                    .or(file.kafka_auto_create)
                    .unwrap_or(true),
                default_partitions: kafka_partitions,
            },
            cluster,
            tls,
            auth,
        })
    }
}

/// The environment variable that injects a [`ProduceFault`]. Tests only:
/// it makes a healthy server misbehave on purpose.
pub const PRODUCE_FAULT_ENV: &str = "STROM_TEST_PRODUCE_FAULT";

/// A fault injected into the owner side of produce (every protocol's), so
/// that tests can show what a request spanning shards makes of one shard
/// failing while others succeed. Read once at start-up from
/// [`PRODUCE_FAULT_ENV`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceFault {
    /// `fail:SHARD`: that shard answers every produce op with a
    /// shard-level failure (as a dropped mesh call does), appending nothing.
    Fail { shard: usize },
    /// `delay:SHARD:MS`: that shard starts every produce op MS late (as
    /// a stalled disk would), then appends as usual.
    Delay { shard: usize, delay_ms: u64 },
}

impl ProduceFault {
    /// Parses `fail:SHARD` or `delay:SHARD:MS`.
    pub fn parse(s: &str) -> Result<ProduceFault, String> {
        let bad = || format!("{PRODUCE_FAULT_ENV}={s:?}: expected fail:SHARD or delay:SHARD:MS");
        let mut it = s.split(':');
        let kind = it.next().ok_or_else(bad)?;
        let shard: usize = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let fault = match kind {
            "fail" => ProduceFault::Fail { shard },
            "delay" => ProduceFault::Delay {
                shard,
                delay_ms: it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?,
            },
            _ => return Err(bad()),
        };
        if it.next().is_some() {
            return Err(bad());
        }
        Ok(fault)
    }

    pub fn from_env() -> Option<ProduceFault> {
        fault_from_env(PRODUCE_FAULT_ENV, ProduceFault::parse)
    }
}

/// A test-only fault read from the environment variable `name`: parsed
/// with `parse`, announced on stderr when set, ignored (with a warning)
/// when it does not parse.
pub fn fault_from_env<F: std::fmt::Debug>(
    name: &str,
    parse: impl FnOnce(&str) -> Result<F, String>,
) -> Option<F> {
    let v = std::env::var(name).ok()?;
    match parse(&v) {
        Ok(f) => {
            eprintln!("warning: {name}: injecting {f:?} (tests only)");
            Some(f)
        }
        Err(e) => {
            eprintln!("warning: {e}; no fault injected");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ProduceFault;

    #[test]
    fn produce_faults_parse_and_bad_ones_are_refused() {
        assert_eq!(
            ProduceFault::parse("fail:1"),
            Ok(ProduceFault::Fail { shard: 1 })
        );
        assert_eq!(
            ProduceFault::parse("delay:0:250"),
            Ok(ProduceFault::Delay {
                shard: 0,
                delay_ms: 250
            })
        );
        for bad in [
            "",
            "fail",
            "fail:x",
            "fail:1:2",
            "delay:1",
            "delay:1:x",
            "stall:1",
        ] {
            assert!(ProduceFault::parse(bad).is_err(), "{bad:?}");
        }
    }

    use super::*;

    #[test]
    fn shard_ports_parse_and_place_each_shard() {
        let listen: SocketAddr = "127.0.0.1:9400".parse().expect("addr");
        assert_eq!(ShardPorts::parse("auto").expect("auto"), ShardPorts::Auto);
        assert_eq!(ShardPorts::parse("off").expect("off"), ShardPorts::Off);
        let base = ShardPorts::parse("9500").expect("base");
        assert_eq!(
            base.addr(listen, 3).expect("fits"),
            Some("127.0.0.1:9503".parse().expect("addr"))
        );
        assert_eq!(
            ShardPorts::Auto.addr(listen, 1).expect("auto"),
            Some("127.0.0.1:0".parse().expect("addr"))
        );
        assert_eq!(ShardPorts::Off.addr(listen, 0).expect("off"), None);
        assert!(ShardPorts::parse("0").is_err());
        assert!(ShardPorts::parse("x").is_err());
        assert!(ShardPorts::Base(65535).addr(listen, 1).is_err());
    }

    #[test]
    fn the_engine_table_sets_partition_defaults_and_is_validated() {
        let dir = std::env::temp_dir().join(format!("strom-cfg-engine-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("e.toml");
        std::fs::write(
            &path,
            "[engine]\nwrite_buffer_bytes = 262144\nunwritten_bytes_max = 4194304\n",
        )
        .expect("write");
        let file = load_file(&path).expect("parses");
        let engine = file.engine.expect("engine table");
        let c = engine.log_config();
        assert_eq!(c.write_buffer_bytes, 256 << 10);
        assert_eq!(c.unwritten_bytes_max, 4 << 20);
        c.validate().expect("valid");
        std::fs::write(&path, "[engine]\nwrite_buffer_bytes = 1000\n").expect("write");
        let bad = load_file(&path)
            .expect("parses")
            .engine
            .expect("table")
            .log_config();
        assert!(bad.validate().is_err(), "not a multiple of 4096");
        std::fs::write(&path, "[engine]\nno_such_key = 1\n").expect("write");
        assert!(load_file(&path).is_err(), "unknown keys are refused");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn flags_win_over_file_and_defaults_fill_the_rest() {
        let dir = std::env::temp_dir().join(format!("strom-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("s.toml");
        std::fs::write(&path, "cores = 3\nlisten = \"127.0.0.1:1234\"\n").expect("write");
        let args = Args {
            config: Some(path.clone()),
            cores: Some(1),
            ..Args::default()
        };
        let c = ServerConfig::resolve(args).expect("resolve");
        assert_eq!(c.shards, 1);
        assert_eq!(c.listen.port(), 1234);
        assert_eq!(c.http.port(), 9401);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        std::fs::write(&path, "bogus = 1\n").expect("write");
        let args = Args {
            config: Some(path),
            ..Args::default()
        };
        assert!(ServerConfig::resolve(args).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
