//! strom-tests: the harness for end-to-end scenarios. [`TestServer`] runs
//! the real `strom-server` binary on loopback with its own ports (port 0)
//! and its own data directory, so tests run in parallel.
//!
//! Binaries: the harness runs `cargo test --workspace --no-run` (same
//! profile as the test) once per test process before the first server
//! starts. Under `cargo test --workspace` that is a no-op (the binaries were
//! just built with the same features: `strom-server` and `strom-client`
//! have integration tests, so cargo builds their binaries); under
//! `cargo test -p strom-tests` it builds them, so tests never run stale
//! binaries. Set `STROM_TEST_NO_BUILD=1` to skip that step (then build them
//! yourself first), or `STROM_SERVER_BIN` / `STROM_BIN` to use other
//! binaries.
//!
//! Every wait is bounded: server start-up ([`START_TIMEOUT_MS`]), shutdown
//! ([`STOP_TIMEOUT_MS`], then SIGKILL). The child is killed on drop, and its
//! data directory removed (kept when `STROM_KEEP_TEST_DATA=1`).

pub mod checker;
pub mod cluster;
pub mod faultproxy;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest wait for a server to print its `listening` line.
pub const START_TIMEOUT_MS: u64 = 60_000;
/// Longest wait for a server to exit after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT_MS: u64 = 20_000;

/// Environment variable naming a file that every skipped test appends one
/// line to (`scripts/test` sets it and prints the list at the end).
pub const SKIP_LOG_ENV: &str = "STROM_SKIP_LOG";

/// A test that cannot run calls this and returns. Under `CI=true` a missing
/// tool is a failure: it panics with `reason`. Elsewhere it prints a
/// `SKIPPED` line and appends `test: reason` to the file named by
/// [`SKIP_LOG_ENV`], so a green run still shows what did not run.
pub fn skip_test(test: &str, reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} cannot run under CI=true: {reason}");
    }
    println!("SKIPPED {test}: {reason}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        use std::io::Write;
        let line = format!("{test}: {reason}\n");
        // One short O_APPEND write per line: parallel tests do not interleave.
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = appended {
            eprintln!("cannot record the skip of {test} in {path:?}: {e}");
        }
    }
}

/// The workspace root (where `Cargo.toml` with `[workspace]` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `target/<profile>`, the directory of the test executable's `deps/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

fn build_binaries() -> Result<(), String> {
    if std::env::var_os("STROM_TEST_NO_BUILD").is_some() {
        return Ok(());
    }
    let dir = bin_dir();
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_owned();
    let target_dir = dir.parent().expect("target dir").to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["test", "--workspace", "--no-run", "--quiet"])
        .arg("--target-dir")
        .arg(&target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd
        .output()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo test --workspace --no-run (building the binaries) failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn ensure_built() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(e) = BUILT.get_or_init(build_binaries) {
        panic!("{e}");
    }
}

fn binary(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    ensure_built();
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found; run `cargo test --workspace --no-run` first (or set {env})",
        p.display()
    );
    p
}

/// The `strom-server` binary.
pub fn server_bin() -> PathBuf {
    binary("STROM_SERVER_BIN", "strom-server")
}

/// The `strom-replica` binary (one replication node per process, a test
/// tool of the replication crate; `STROM_REPLICA_BIN` overrides it).
pub fn replica_bin() -> PathBuf {
    binary("STROM_REPLICA_BIN", "strom-replica")
}

/// The `strom` CLI binary.
pub fn strom_bin() -> PathBuf {
    binary("STROM_BIN", "strom")
}

/// splitmix64: seeded choices (kill delays, keys, bursts) without a
/// dependency, the same sequence for the same seed on every machine.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// In `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        self.next_u64() % n
    }

    /// In `lo..=hi` (`lo <= hi`).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "between({lo}, {hi})");
        lo + self.next_u64() % (hi - lo).saturating_add(1)
    }
}

/// A name no other test (in this or another process) uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}

/// A directory removed on drop (unless `STROM_KEEP_TEST_DATA` is set).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("STROM_KEEP_TEST_DATA").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl std::ops::Deref for TempDir {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

/// The data directory of a test server: a temporary one the server owns
/// (removed once the server is gone), or a path the test keeps (to restart
/// another server on it, say) and removes itself.
pub enum DataDir {
    Owned(TempDir),
    Kept(PathBuf),
}

impl From<TempDir> for DataDir {
    fn from(d: TempDir) -> Self {
        DataDir::Owned(d)
    }
}

impl From<PathBuf> for DataDir {
    fn from(p: PathBuf) -> Self {
        DataDir::Kept(p)
    }
}

impl DataDir {
    /// The path, and the guard that removes it if the server owns it.
    pub fn into_parts(self) -> (PathBuf, Option<TempDir>) {
        match self {
            DataDir::Owned(d) => (d.0.clone(), Some(d)),
            DataDir::Kept(p) => (p, None),
        }
    }
}

/// A running `strom-server` child process; see the crate docs.
pub struct TestServer {
    child: Option<Child>,
    addr: String,
    http_addr: Option<String>,
    cores: u32,
    /// The server's stdout lines after `listening` (drained by a thread).
    lines: std::sync::Arc<Mutex<Vec<String>>>,
    stderr_path: PathBuf,
    /// A data directory outside `dir` (see [`TestServer::start_in`]).
    data_dir_override: Option<PathBuf>,
    /// Flags added after the harness's own.
    extra_args: Vec<String>,
    /// `--kafka-listen` of the next start (port 0 until
    /// [`TestServer::keep_kafka_port`]).
    kafka_listen: String,
    /// The Kafka address the running process printed.
    kafka_addr: Option<String>,
    // Dropped last: the data outlives the process.
    dir: TempDir,
}

impl TestServer {
    /// Starts a server with `cores` shards in a fresh data directory.
    pub fn start(cores: u32) -> TestServer {
        let dir = TempDir::new("strom-test");
        let mut s = TestServer {
            child: None,
            addr: String::new(),
            http_addr: None,
            cores,
            lines: Default::default(),
            stderr_path: dir.path().join("server.stderr"),
            data_dir_override: None,
            extra_args: Vec::new(),
            kafka_listen: "127.0.0.1:0".into(),
            kafka_addr: None,
            dir,
        };
        s.spawn();
        s
    }

    /// Starts a server with `cores` shards whose data directory is
    /// `data_dir` (which the caller owns and removes, e.g. a mount point),
    /// with `extra_args` after the harness's own flags. The server's stderr
    /// still goes to a temporary directory of its own.
    pub fn start_in(cores: u32, data_dir: &Path, extra_args: &[&str]) -> TestServer {
        let dir = TempDir::new("strom-test");
        let mut s = TestServer {
            child: None,
            addr: String::new(),
            http_addr: None,
            cores,
            lines: Default::default(),
            stderr_path: dir.path().join("server.stderr"),
            data_dir_override: Some(data_dir.to_path_buf()),
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            kafka_listen: "127.0.0.1:0".into(),
            kafka_addr: None,
            dir,
        };
        s.spawn();
        s
    }

    /// The shard count the next start uses (after [`TestServer::kill`] or
    /// [`TestServer::stop`]; the running process keeps its own).
    pub fn set_cores(&mut self, cores: u32) {
        self.cores = cores;
    }

    /// The shard count of the current (or next) process.
    pub fn cores(&self) -> u32 {
        self.cores
    }

    /// The running process's id, if one is running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Native protocol address (`127.0.0.1:PORT`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn http_addr(&self) -> Option<&str> {
        self.http_addr.as_deref()
    }

    /// The Kafka listener's address (`127.0.0.1:PORT`) of the running
    /// process.
    pub fn kafka_addr(&self) -> Option<&str> {
        self.kafka_addr.as_deref()
    }

    /// Later starts bind the Kafka port the running process got, so that
    /// Kafka clients keep their bootstrap address across a kill and restart.
    pub fn keep_kafka_port(&mut self) {
        if let Some(a) = &self.kafka_addr {
            self.kafka_listen = a.clone();
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        match &self.data_dir_override {
            Some(d) => d.clone(),
            None => self.dir.path().join("data"),
        }
    }

    /// The server's stderr so far (for assertion messages).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .expect("stderr file");
        let mut child = Command::new(server_bin())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args(["--kafka-listen", &self.kafka_listen])
            .args(["--cores", &self.cores.to_string()])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn strom-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        let lines = self.lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                lines.lock().expect("lines").push(line.clone());
                let _ = tx.send(line);
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        let mut native = None;
        let mut http = None;
        let mut kafka = None;
        while native.is_none() || http.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("listening native=") {
                        native = Some(a.trim().to_owned());
                    }
                    if let Some(a) = line.strip_prefix("listening http=") {
                        http = Some(a.trim().to_owned());
                    }
                    if let Some(a) = line.strip_prefix("listening kafka=") {
                        kafka = Some(a.trim().to_owned());
                    }
                    // Some builds print both on one line.
                    for word in line.split_whitespace() {
                        if let Some(a) = word.strip_prefix("native=") {
                            native.get_or_insert_with(|| a.to_owned());
                        }
                        if let Some(a) = word.strip_prefix("http=") {
                            http.get_or_insert_with(|| a.to_owned());
                        }
                    }
                    if native.is_some() && line.starts_with("ready") {
                        break;
                    }
                }
                Err(_) => {
                    self.kill();
                    panic!(
                        "strom-server did not print `listening native=` within {START_TIMEOUT_MS} ms; stderr:\n{}",
                        self.stderr()
                    );
                }
            }
        }
        self.addr = native.expect("native address");
        self.http_addr = http;
        self.kafka_addr = kafka;
    }

    /// Stops the server with SIGTERM (a clean shutdown), waiting at most
    /// [`STOP_TIMEOUT_MS`] before SIGKILL. Returns whether it exited by
    /// itself with status 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_millis(STOP_TIMEOUT_MS);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }

    /// Kills the server with SIGKILL (a crash), without waiting for it to
    /// flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Clean stop, then start again on the same data directory (new ports).
    /// Panics if the clean stop did not exit 0.
    pub fn restart(&mut self) {
        let clean = self.stop();
        assert!(
            clean,
            "strom-server did not shut down cleanly; stderr:\n{}",
            self.stderr()
        );
        self.spawn();
    }

    /// Start again after [`TestServer::kill`] or [`TestServer::stop`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "server still running");
        self.spawn();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `cmd` with `stdin` bytes, bounded by `timeout`; returns (exit code,
/// stdout, stderr). Panics on timeout (after killing the child).
pub fn run_with_timeout(
    cmd: &mut Command,
    stdin: &[u8],
    timeout: Duration,
) -> (i32, Vec<u8>, String) {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().expect("try_wait") {
            Some(s) => break s,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} did not finish within {timeout:?}");
            }
        }
    };
    let _ = writer.join();
    let stdout = out_t.join().expect("stdout thread");
    let stderr = err_t.join().expect("stderr thread");
    (status.code().unwrap_or(-1), stdout, stderr)
}
