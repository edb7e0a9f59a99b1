//! Helpers of the Kafka-compatibility tests: start the real `strom-server`
//! with its Kafka listener on 127.0.0.1 port 0 and a unique data directory,
//! restart it on the same directory, find the client tools (kcat,
//! confluent-kafka, kafka-python) and run the Python scripts in
//! `server/tests/kafka/` with a time limit. A missing tool fails the test
//! under `CI=true` and is recorded as skipped elsewhere
//! (`scripts/install-test-deps` installs them).

#![allow(dead_code)]

pub mod certs;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A fresh temporary directory, removed when the returned guard (or the
/// server it is handed to) is dropped, unless `STROM_KEEP_TEST_DATA` is set.
pub fn temp_dir(tag: &str) -> strom_tests::TempDir {
    strom_tests::TempDir::new(&format!("strom-kafka-{tag}"))
}

pub struct KafkaServer {
    child: Option<Child>,
    pub native: SocketAddr,
    pub kafka: SocketAddr,
    pub data_dir: PathBuf,
    cores: usize,
    extra: Vec<String>,
    /// The temporary data directory this server owns; dropped (removed)
    /// after the child is killed.
    _owned_dir: Option<strom_tests::TempDir>,
}

impl KafkaServer {
    pub fn start(cores: usize, data_dir: impl Into<strom_tests::DataDir>) -> KafkaServer {
        Self::start_with(cores, data_dir, &[])
    }

    pub fn start_with(
        cores: usize,
        data_dir: impl Into<strom_tests::DataDir>,
        extra: &[&str],
    ) -> KafkaServer {
        let (data_dir, owned_dir) = data_dir.into().into_parts();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, native, kafka) = spawn(cores, &data_dir, &extra, None);
        KafkaServer {
            child: Some(child),
            native,
            kafka,
            data_dir,
            cores,
            extra,
            _owned_dir: owned_dir,
        }
    }

    pub fn bootstrap(&self) -> String {
        self.kafka.to_string()
    }

    /// SIGTERM, wait (bounded), then start again on the same directory and
    /// the same Kafka port (clients keep their bootstrap address).
    pub fn restart(&mut self) {
        self.stop();
        let (child, native, kafka) =
            spawn(self.cores, &self.data_dir, &self.extra, Some(self.kafka));
        self.child = Some(child);
        self.native = native;
        self.kafka = kafka;
    }

    /// SIGKILL (no clean close: nothing is synced or snapshotted), then
    /// start again on the same directory and Kafka port.
    pub fn kill_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let (child, native, kafka) =
            spawn(self.cores, &self.data_dir, &self.extra, Some(self.kafka));
        self.child = Some(child);
        self.native = native;
        self.kafka = kafka;
    }

    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill with a pid we own.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for KafkaServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(
    cores: usize,
    data_dir: &Path,
    extra: &[String],
    kafka: Option<SocketAddr>,
) -> (Child, SocketAddr, SocketAddr) {
    let kafka_arg = kafka
        .map(|a| a.to_string())
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let mut child = Command::new(env!("CARGO_BIN_EXE_strom-server"))
        .args(["--cores", &cores.to_string()])
        .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--kafka-listen", &kafka_arg])
        .args(extra)
        .arg("--data-dir")
        .arg(data_dir)
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
    let mut native = None;
    let mut kafka = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("server printed its lines");
        if let Some(a) = line.strip_prefix("listening native=") {
            native = Some(a.parse().expect("addr"));
        } else if let Some(a) = line.strip_prefix("listening kafka=") {
            kafka = Some(a.parse().expect("addr"));
        } else if line.starts_with("ready ") {
            break;
        }
    }
    (
        child,
        native.expect("native address"),
        kafka.expect("kafka address"),
    )
}

/// The kcat binary (Debian names it kafkacat in older releases).
pub fn kcat() -> Option<&'static str> {
    ["kcat", "kafkacat"].into_iter().find(|b| {
        Command::new(b)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    })
}

/// Whether `python3 -c "import MODULE"` works.
pub fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Fails under `CI=true`, records the skip elsewhere (see
/// [`strom_tests::skip_test`]).
pub fn skip(test: &str, what: &str) {
    strom_tests::skip_test(
        test,
        &format!("{what} is not installed (run scripts/install-test-deps)"),
    );
}

/// Runs `cmd`, killing it after `limit`; panics with its output on failure.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{desc}: {e}"));
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{desc} ran longer than {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "{desc} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `server/tests/kafka/SCRIPT` with python3 and returns its last
/// stdout line (each script prints one JSON summary last).
pub fn python(script: &str, args: &[&str], limit: Duration) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/kafka")
        .join(script);
    let mut cmd = Command::new("python3");
    cmd.arg(path).args(args);
    let out = run_bounded(cmd, limit);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("{script} printed nothing"))
        .to_owned()
}
