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

/// Command-line flags. Every flag is optional so that the config file can
/// supply it.
#[derive(Debug, Parser, Default)]
#[command(name = "strom-server", version, about = "Strom streaming broker")]
pub struct Args {
    /// TOML file with any of: data_dir, listen, http, cores.
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
    /// Number of shards (one pinned executor each) [default: all cores]
    #[arg(long, value_name = "N")]
    pub cores: Option<usize>,
}

/// The TOML file's schema; unknown keys are refused.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub http: Option<String>,
    pub cores: Option<usize>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub http: SocketAddr,
    pub shards: usize,
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
        Ok(ServerConfig {
            data_dir,
            listen: parse_addr("--listen", &listen)?,
            http: parse_addr("--http", &http)?,
            shards,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
