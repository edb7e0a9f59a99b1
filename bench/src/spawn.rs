//! `--spawn`: starts a local `strom-server` (the binary next to this one, or
//! `--server-bin`) with a fresh data directory, port 0 for every listener
//! (the Kafka listener only when asked for), waits for its `listening
//! native=ADDR` line (and the `http=` and `kafka=` lines printed before its
//! `ready` line), and stops it with SIGTERM when dropped (SIGKILL if it has
//! not exited after 15 s), then removes the data directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::report::BenchError;

pub struct SpawnedServer {
    child: Child,
    pub addr: String,
    /// The HTTP side port (`/metrics`), when the server printed it.
    pub http_addr: Option<String>,
    /// The Kafka listener, when started with one.
    pub kafka_addr: Option<String>,
    pub data_dir: PathBuf,
    pub binary: PathBuf,
    /// The parent directory, when this run created it (removed if empty).
    created_parent: Option<PathBuf>,
}

/// `strom-server` next to the running executable (target/release/).
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("strom-server")))
        .unwrap_or_else(|| PathBuf::from("strom-server"))
}

/// The flags of every mode that can start its own server.
#[derive(clap::Args, Clone, Debug, serde::Serialize)]
pub struct SpawnArgs {
    /// Start a local strom-server with a temporary data directory under
    /// --dir, and stop it afterwards.
    #[arg(long)]
    pub spawn: bool,
    /// strom-server binary for --spawn [default: next to strom-bench].
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Shards of the spawned server (its --cores) [default: all cores].
    #[arg(long)]
    pub cores: Option<usize>,
    /// Extra argument for the spawned server (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    pub server_arg: Vec<String>,
    /// Directory for the spawned server's data (and, in the network
    /// modes, the disk baseline's file).
    #[arg(long, default_value = "./bench-data")]
    pub dir: PathBuf,
}

impl SpawnArgs {
    /// Starts the server these flags describe; `kafka` also opens its Kafka
    /// listener on port 0.
    pub fn start(&self, kafka: bool) -> Result<SpawnedServer, BenchError> {
        let bin = self.server_bin.clone().unwrap_or_else(default_binary);
        SpawnedServer::start_with(&bin, &self.dir, self.cores, &self.server_arg, kafka)
    }
}

impl SpawnedServer {
    /// Starts the server with `--cores shards` (when given) and extra args;
    /// `kafka` also opens the Kafka listener on port 0.
    pub fn start_with(
        binary: &Path,
        parent_dir: &Path,
        shards: Option<usize>,
        extra: &[String],
        kafka: bool,
    ) -> Result<SpawnedServer, BenchError> {
        let existed = parent_dir.exists();
        std::fs::create_dir_all(parent_dir)
            .map_err(|e| BenchError::io("create dir", parent_dir, e))?;
        let parent = std::fs::canonicalize(parent_dir)
            .map_err(|e| BenchError::io("canonicalize", parent_dir, e))?;
        let data_dir = parent.join(format!("strom-bench-server-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| BenchError::io("create dir", &data_dir, e))?;
        let mut cmd = Command::new(binary);
        cmd.arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args(["--kafka-listen", if kafka { "127.0.0.1:0" } else { "off" }]);
        if let Some(n) = shards {
            cmd.arg("--cores").arg(n.to_string());
        }
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                // Nothing owns the directories yet: remove what this call made.
                let _ = std::fs::remove_dir_all(&data_dir);
                if !existed {
                    let _ = std::fs::remove_dir(&parent);
                }
                return Err(BenchError::io("spawn strom-server", binary, e));
            }
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Reads the start-up lines, then keeps draining stdout so the server
        // never blocks on a full pipe.
        std::thread::Builder::new()
            .name("server-stdout".into())
            .spawn(move || {
                // The server prints every `listening` line, then `ready`.
                let mut addrs = Listening::default();
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(a) = line.strip_prefix("listening native=") {
                        addrs.native = Some(a.trim().to_string());
                    } else if let Some(a) = line.strip_prefix("listening http=") {
                        addrs.http = Some(a.trim().to_string());
                    } else if let Some(a) = line.strip_prefix("listening kafka=") {
                        addrs.kafka = Some(a.trim().to_string());
                    } else if line.starts_with("ready") && addrs.native.is_some() {
                        let _ = tx.send(std::mem::take(&mut addrs));
                    }
                }
            })
            .map_err(|e| BenchError::io("spawn thread", binary, e))?;
        let mut server = SpawnedServer {
            child,
            addr: String::new(),
            http_addr: None,
            kafka_addr: None,
            data_dir,
            binary: binary.to_path_buf(),
            created_parent: (!existed).then(|| parent.clone()),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(a) => {
                    server.addr = a.native.unwrap_or_default();
                    server.http_addr = a.http;
                    server.kafka_addr = a.kafka;
                    if kafka && server.kafka_addr.is_none() {
                        return Err(BenchError::Config(
                            "strom-server printed no `listening kafka=` line".into(),
                        ));
                    }
                    return Ok(server);
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = server.child.try_wait() {
                        return Err(BenchError::Config(format!(
                            "strom-server exited during start-up: {status}"
                        )));
                    }
                }
                _ => {
                    return Err(BenchError::Config(
                        "strom-server did not print `listening native=` and `ready` within 60 s"
                            .into(),
                    ))
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The addresses a server printed before its `ready` line.
#[derive(Default)]
struct Listening {
    native: Option<String>,
    http: Option<String>,
    kafka: Option<String>,
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    eprintln!("strom-bench: strom-server ignored SIGTERM for 15 s; killing it");
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
        if let Some(p) = &self.created_parent {
            let _ = std::fs::remove_dir(p);
        }
    }
}
