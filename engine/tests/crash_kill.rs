//! Real crash test: a child process appends to a partition on O_DIRECT files
//! and is killed with SIGKILL at random moments, 20 times over the same
//! directory. After every kill the log is recovered in this process and every
//! append the child acknowledged (Durable and Written alike: both survive a
//! process crash) must be present byte for byte (payload crc32c), offsets
//! dense, and recovery must scan only the tail past the last checkpoint.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use strom_engine::{LogConfig, Partition};
use strom_flatbuffers::{verify_stored, FRAME_HEADER_BYTES};

const KILLS: u64 = 20;

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("strom-crash-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Recovers the partition and returns base offset -> (next offset, payload crc).
fn recover_and_read(dir: &Path) -> (BTreeMap<u64, (u64, u32)>, u64, strom_engine::RecoveryReport) {
    let dir = dir.to_path_buf();
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move {
            let config = LogConfig {
                segment_bytes: 4 << 20,
                frame_bytes_max: 1 << 20,
                checkpoint_interval_bytes: 1 << 20,
                ..LogConfig::default()
            };
            let p = Partition::open(&dir, config)
                .await
                .expect("recovery must succeed");
            let report = p.recovery_report();
            let o = p.offsets();
            let mut frames = BTreeMap::new();
            let mut at = o.log_start_offset;
            while at < o.high_watermark {
                let batch = p.read(at, 1 << 20).await.expect("read after recovery");
                assert!(!batch.frames.is_empty(), "hole at {at}");
                for f in &batch.frames {
                    let h = verify_stored(f).expect("no corrupt frame is ever served");
                    assert_eq!(h.base_offset(), at, "offsets are dense");
                    at = h.next_offset();
                    frames.insert(
                        h.base_offset(),
                        (at, crc32c::crc32c(&f[FRAME_HEADER_BYTES..])),
                    );
                }
            }
            p.close().await.expect("clean close");
            (frames, o.high_watermark, report)
        })
        .expect("executor")
        .join()
        .expect("join")
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let dir = temp_dir();
    let child_bin = env!("CARGO_BIN_EXE_strom-engine-crash-child");
    let mut acked: BTreeMap<u64, (u64, u32)> = BTreeMap::new();
    let started = Instant::now();
    for round in 0..KILLS {
        let mut child = Command::new(child_bin)
            .arg(&dir)
            .arg(round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        // Kill after a pseudo-random number of acknowledgements (10..400).
        let kill_after = 10 + (round * 7919) % 390;
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen < kill_after && Instant::now() < deadline {
            let Some(Ok(line)) = lines.next() else { break };
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() == 5 && parts[0] == "ack" {
                let base: u64 = parts[2].parse().expect("base");
                let next: u64 = parts[3].parse().expect("next");
                let crc: u32 = parts[4].parse().expect("crc");
                acked.insert(base, (next, crc));
                seen += 1;
            }
        }
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        // Acks already printed before the kill landed count too.
        for line in lines.map_while(Result::ok) {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() == 5 && parts[0] == "ack" {
                acked.insert(
                    parts[2].parse().expect("base"),
                    (
                        parts[3].parse().expect("next"),
                        parts[4].parse().expect("crc"),
                    ),
                );
            }
        }
        let status = child.wait().expect("wait");
        assert!(
            seen > 0,
            "round {round}: child acknowledged nothing ({status:?})"
        );

        let (frames, hw, report) = recover_and_read(&dir);
        for (base, (next, crc)) in &acked {
            match frames.get(base) {
                Some((n, c)) => {
                    assert_eq!((n, c), (next, crc), "round {round}: acknowledged frame {base} changed");
                }
                None => panic!("round {round}: acknowledged frame {base} lost (recovered hw {hw}, report {report:?})"),
            }
        }
        // Recovery reads only what lies past the last checkpoint (1 MiB
        // interval) plus the active segment's index, not the whole log.
        assert!(
            report.scanned_bytes <= 4 << 20,
            "round {round}: recovery scanned {} bytes",
            report.scanned_bytes
        );
        // Everything recovered is now the ground truth (unacked appends may
        // have survived too; they are kept from here on).
        acked = frames;
    }
    assert!(started.elapsed() < Duration::from_secs(300));
    let _ = std::fs::remove_dir_all(&dir);
}
