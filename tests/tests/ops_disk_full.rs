//! Full disk: the server's data directory is a small ext4 filesystem (a
//! 64 MiB image, loop-mounted by the test itself; when not root or when
//! mounting fails it fails under `CI=true` and is recorded as skipped
//! elsewhere, see `strom_tests::skip_test`). Each scenario
//!
//! 1. writes a known data set (durable acks) to topic `keep`;
//! 2. floods topic `filler` until the disk is full, and requires the
//!    producer's failure to be the `NotEnoughSpace` error code (not a dropped
//!    connection, not `Internal`); then `keep` too gets `NotEnoughSpace`,
//!    and repeated attempts keep getting it on the same connection;
//! 3. while the disk is full, reads back every acknowledged record of both
//!    topics byte for byte with dense offsets (consumers keep reading,
//!    nothing written is damaged) and checks the server still answers
//!    metadata requests.
//!
//! Then, by test:
//!
//! - `..._keeps_data_across_restarts`: restarts on the still-full disk (a
//!   clean stop, then SIGKILL and start), reads everything back intact, and
//!   producing still gets `NotEnoughSpace`.
//! - `..._after_deleting_a_topic` / `..._after_retention`: deletes `filler`
//!   (or lets its time retention expire its segments), checks the
//!   filesystem got the space back, produces to `keep` again until that
//!   succeeds (bounded), creates a topic, then restarts (clean, then
//!   SIGKILL) and reads every acknowledged record of `keep` again, byte for
//!   byte. Both are `#[ignore]`d: they fail on bugs (see their reasons).
//!
//! The mount is undone and the image removed by a drop guard, even when an
//! assertion fails (the server, declared later, is killed first).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use strom_client::{
    Acks, Client, ConnectionConfig, Consumer, ConsumerConfig, Error, ErrorCode, OffsetSpec,
    Producer, ProducerConfig, ProducerRecord,
};
use strom_tests::{unique_name, TestServer};

/// Size of the filesystem image.
const IMAGE_BYTES: u64 = 64 << 20;
/// Segment size of the test topics: preallocation never reaches past it,
/// so a partition reserves at most this much ahead.
const SEGMENT_BYTES: &str = "1048576";
/// Value size of the flood's records.
const FLOOD_VALUE_BYTES: usize = 16 << 10;
/// Give up if the flood writes this much without a full disk.
const FLOOD_BYTES_MAX: u64 = 2 * IMAGE_BYTES;
/// Whole-test wall-clock bound.
const TEST_BUDGET_MS: u64 = 110_000;

/// A loop-mounted ext4 image; unmounted and removed on drop.
struct LoopMount {
    base: PathBuf,
    mnt: PathBuf,
    mounted: bool,
}

fn run(cmd: &mut Command) -> Result<(), String> {
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "{cmd:?}: {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{cmd:?}: {e}")),
    }
}

impl LoopMount {
    /// Makes and mounts the image, or says why it cannot.
    fn new() -> Result<LoopMount, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: mounting a filesystem image needs root".into());
        }
        let base = std::env::temp_dir().join(unique_name("strom-diskfull"));
        let mnt = base.join("mnt");
        std::fs::create_dir_all(&mnt).map_err(|e| format!("mkdir {}: {e}", mnt.display()))?;
        let mut guard = LoopMount {
            base,
            mnt,
            mounted: false,
        };
        let img = guard.base.join("fs.img");
        let f = std::fs::File::create(&img).map_err(|e| format!("create image: {e}"))?;
        f.set_len(IMAGE_BYTES)
            .map_err(|e| format!("truncate image: {e}"))?;
        drop(f);
        run(Command::new("mkfs.ext4").arg("-q").arg("-F").arg(&img))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&guard.mnt))?;
        guard.mounted = true;
        Ok(guard)
    }

    fn path(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if self.mounted {
            let mut ok = false;
            for _ in 0..50 {
                if run(Command::new("umount").arg(&self.mnt)).is_ok() {
                    ok = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !ok {
                // Still busy (a process we cannot see?): detach it lazily so
                // that the image can go.
                let lazy = run(Command::new("umount").arg("-l").arg(&self.mnt));
                eprintln!(
                    "umount {} failed; lazy unmount: {lazy:?}",
                    self.mnt.display()
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// Free bytes of the filesystem holding `path` (for root: f_bfree).
fn free_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: statvfs writes into the zeroed struct we pass; `c` is a valid
    // NUL-terminated path.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    assert_eq!(rc, 0, "statvfs {}", path.display());
    s.f_bfree as u64 * s.f_frsize as u64
}

fn conn_config() -> ConnectionConfig {
    ConnectionConfig {
        connect_timeout_ms: 2_000,
        request_timeout_ms: 30_000,
        ..Default::default()
    }
}

/// The value of record `id` of a topic tagged `tag`, `len` bytes.
fn value_of(tag: u64, id: u64, len: usize) -> Vec<u8> {
    let mut x = tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ id.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut v = Vec::with_capacity(len + 8);
    v.extend_from_slice(&id.to_le_bytes());
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len.max(8));
    v
}

/// Acknowledged records of one topic: (partition, offset) → (id, value length).
type Acked = HashMap<(u32, u64), (u64, usize)>;

struct Topic {
    name: &'static str,
    tag: u64,
    partitions: u32,
    acked: Acked,
    next_id: u64,
    /// Records are stamped this far from now (negative: in the past, so
    /// that time retention removes them soon).
    timestamp_shift_ms: i64,
    /// Retention may have removed a prefix of the log.
    may_expire: bool,
}

impl Topic {
    fn new(name: &'static str, tag: u64, partitions: u32) -> Topic {
        Topic {
            name,
            tag,
            partitions,
            acked: HashMap::new(),
            next_id: 0,
            timestamp_shift_ms: 0,
            may_expire: false,
        }
    }

    /// Sends `count` records of `len` bytes round robin and flushes; records
    /// the acknowledged ones and returns every error.
    fn produce(&mut self, p: &mut Producer, count: u64, len: usize) -> Vec<Error> {
        let mut sent = Vec::new();
        let mut errors = Vec::new();
        for _ in 0..count {
            let id = self.next_id;
            self.next_id += 1;
            let part = (id % u64::from(self.partitions)) as u32;
            let v = value_of(self.tag, id, len);
            let record = ProducerRecord::new(self.name, &v)
                .partition(part)
                .timestamp_ms(now_ms() + self.timestamp_shift_ms);
            match p.send(&record) {
                Ok(_) => sent.push((id, part)),
                Err(e) => {
                    errors.push(e);
                    break;
                }
            }
        }
        for ((id, part), r) in sent.into_iter().zip(p.flush()) {
            match r {
                Ok(off) => {
                    let prev = self.acked.insert((part, off), (id, len));
                    assert!(
                        prev.is_none(),
                        "{}/{part}/{off} acknowledged twice",
                        self.name
                    );
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    /// Reads every partition from its start to its end and checks that every
    /// acknowledged record is there, byte for byte, and offsets are dense.
    /// Returns the bytes of values read and how many acknowledged records
    /// retention removed (only when `may_expire`).
    fn verify(&self, addr: &str, what: &str) -> (u64, usize) {
        let mut consumer = Consumer::new(
            Client::connect_with(addr, conn_config()).expect("connect consumer"),
            ConsumerConfig {
                max_wait_ms: 50,
                ..Default::default()
            },
        );
        let mut found = 0usize;
        let mut expired = 0usize;
        let mut bytes = 0u64;
        for part in 0..self.partitions {
            let end = consumer
                .client()
                .list_offset(self.name, part, OffsetSpec::Latest)
                .unwrap_or_else(|e| panic!("{what}: latest of {}/{part}: {e}", self.name))
                .unwrap_or(0);
            consumer
                .assign(self.name, part, OffsetSpec::Earliest)
                .unwrap_or_else(|e| panic!("{what}: assign {}/{part}: {e}", self.name));
            let mut next = consumer.position(self.name, part).expect("assigned");
            if self.may_expire {
                expired += self
                    .acked
                    .keys()
                    .filter(|(p, o)| *p == part && *o < next)
                    .count();
            } else {
                assert_eq!(next, 0, "{what}: {}/{part} lost its start", self.name);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while next < end {
                assert!(
                    Instant::now() < deadline,
                    "{what}: {}/{part} stuck at {next} of {end}",
                    self.name
                );
                let frames = match consumer.poll(Duration::from_millis(200)) {
                    Ok(frames) => frames,
                    // Retention may delete the oldest segment while we read
                    // it: start again from the new earliest offset.
                    Err(e) if self.may_expire && e.to_string().contains("OffsetOutOfRange") => {
                        consumer
                            .assign(self.name, part, OffsetSpec::Earliest)
                            .unwrap_or_else(|e| {
                                panic!("{what}: re-assign {}/{part}: {e}", self.name)
                            });
                        let start = consumer.position(self.name, part).expect("assigned");
                        assert!(
                            start >= next,
                            "{what}: {}/{part} start moved back",
                            self.name
                        );
                        expired += self
                            .acked
                            .keys()
                            .filter(|(p, o)| *p == part && *o >= next && *o < start)
                            .count();
                        next = start;
                        continue;
                    }
                    Err(e) => panic!("{what}: poll {}/{part}: {e}", self.name),
                };
                for f in frames {
                    for r in f.records() {
                        assert_eq!(r.offset, next, "{what}: {}/{part} not dense", self.name);
                        next += 1;
                        let v = r.value.unwrap_or_default();
                        bytes += v.len() as u64;
                        if let Some(&(id, len)) = self.acked.get(&(part, r.offset)) {
                            assert!(
                                v == value_of(self.tag, id, len).as_slice(),
                                "{what}: {}/{part}/{} (record {id}) damaged",
                                self.name,
                                r.offset
                            );
                            found += 1;
                        }
                    }
                }
            }
            consumer.unassign(self.name, part);
        }
        assert_eq!(
            found + expired,
            self.acked.len(),
            "{what}: acknowledged records of {} missing ({expired} removed by retention)",
            self.name
        );
        (bytes, expired)
    }
}

/// Restarts on a disk that is still full (a clean stop, then a SIGKILL)
/// and checks that everything acknowledged is intact and that producing
/// still gets the clear `NotEnoughSpace`.
fn restart_while_full(server: &mut TestServer, keep: &Topic, filler: &Topic) {
    let clean = server.stop();
    assert!(
        clean,
        "clean shutdown on a full disk failed; stderr:\n{}",
        server.stderr()
    );
    server.start_again();
    keep.verify(server.addr(), "full, after clean restart");
    filler.verify(server.addr(), "full, after clean restart");
    server.kill();
    server.start_again();
    keep.verify(server.addr(), "full, after SIGKILL restart");
    filler.verify(server.addr(), "full, after SIGKILL restart");
    let mut p = Producer::new(
        Client::connect_with(server.addr(), conn_config()).expect("connect"),
        ProducerConfig {
            acks: Acks::Durable,
            ..Default::default()
        },
    );
    // A scratch copy: nothing it writes is checked later.
    let mut probe = Topic::new(filler.name, filler.tag + 100, filler.partitions);
    probe.next_id = 1 << 40;
    let mut refused = false;
    for _ in 0..200 {
        let errs = probe.produce(&mut p, 16, FLOOD_VALUE_BYTES);
        if !errs.is_empty() {
            assert!(
                errs.iter().all(is_no_space),
                "after restart on a full disk: {errs:?}\nstderr:\n{}",
                server.stderr()
            );
            refused = true;
            break;
        }
    }
    assert!(refused, "a full disk accepted 50 MiB after a restart");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn is_no_space(e: &Error) -> bool {
    e.code() == Some(ErrorCode::NotEnoughSpace)
}

/// How the scenario gets space back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Free {
    /// DeleteTopics on the filler while the disk is full.
    DeleteTopic,
    /// The filler's time retention removes its closed segments (its records
    /// are stamped in the past so they expire seconds after the flood).
    Retention,
}

/// Filler retention in `Free::Retention` mode, and how far in the past its
/// records are stamped: they expire `FILLER_RETENTION_MS +
/// FILLER_SHIFT_MS` after being written (plus up to the engine's 10 s
/// retention check interval).
const FILLER_RETENTION_MS: i64 = 60_000;
const FILLER_SHIFT_MS: i64 = -45_000;

#[test]
fn a_full_disk_refuses_writes_clearly_and_keeps_data_across_restarts() {
    scenario(None);
}

#[test]
fn a_full_disk_recovers_after_deleting_a_topic() {
    scenario(Some(Free::DeleteTopic));
}

#[test]
fn a_full_disk_recovers_after_retention() {
    scenario(Some(Free::Retention));
}

/// The scenario of the module docs; with `free: None` it stops after the
/// full-disk checks with restarts while the disk is still full.
fn scenario(free: Option<Free>) {
    // Build (or find) the binaries first: the time bound is the test's own.
    strom_tests::server_bin();
    let began = Instant::now();
    let mount = match LoopMount::new() {
        Ok(m) => m,
        Err(reason) => {
            strom_tests::skip_test(&format!("ops_disk_full ({free:?})"), &reason);
            return;
        }
    };
    let data_dir = mount.path().join("data");
    let free_at_start = free_bytes(mount.path());
    let mut server = TestServer::start_in(1, &data_dir, &[]);
    let addr = server.addr().to_owned();
    let configs = [
        ("segment.bytes".to_owned(), SEGMENT_BYTES.to_owned()),
        ("retention.ms".to_owned(), "-1".to_owned()),
    ];
    let mut admin = Client::connect_with(&addr, conn_config()).expect("connect admin");
    let mut keep = Topic::new("keep", 1, 2);
    let mut filler = Topic::new("filler", 2, 2);
    admin
        .create_topic(keep.name, keep.partitions, &configs)
        .expect("create keep");
    let filler_configs = match free {
        None | Some(Free::DeleteTopic) => configs.to_vec(),
        Some(Free::Retention) => {
            filler.timestamp_shift_ms = FILLER_SHIFT_MS;
            filler.may_expire = true;
            vec![
                ("segment.bytes".to_owned(), SEGMENT_BYTES.to_owned()),
                ("retention.ms".to_owned(), FILLER_RETENTION_MS.to_string()),
            ]
        }
    };
    admin
        .create_topic(filler.name, filler.partitions, &filler_configs)
        .expect("create filler");

    // 1. A known data set, durable.
    let mut durable = Producer::new(
        Client::connect_with(&addr, conn_config()).expect("connect"),
        ProducerConfig {
            acks: Acks::Durable,
            ..Default::default()
        },
    );
    for _ in 0..8 {
        let errs = keep.produce(&mut durable, 250, 1000);
        assert!(errs.is_empty(), "producing the known set: {errs:?}");
    }
    println!(
        "wrote {} records to keep; filesystem free {} KiB of {} KiB",
        keep.acked.len(),
        free_bytes(mount.path()) >> 10,
        free_at_start >> 10
    );

    // 2. Flood until full.
    let mut flood = Producer::new(
        Client::connect_with(&addr, conn_config()).expect("connect"),
        ProducerConfig {
            acks: Acks::Leader,
            batch_bytes: 256 << 10,
            inflight_requests_max: 4,
            ..Default::default()
        },
    );
    let mut flooded = 0u64;
    let full_error = loop {
        assert!(
            flooded < FLOOD_BYTES_MAX,
            "{flooded} bytes accepted on a {IMAGE_BYTES}-byte filesystem without a full-disk error"
        );
        let errs = filler.produce(&mut flood, 64, FLOOD_VALUE_BYTES);
        flooded += 64 * FLOOD_VALUE_BYTES as u64;
        if let Some(e) = errs.first() {
            assert!(
                errs.iter().all(is_no_space),
                "a full disk must give NotEnoughSpace, got: {errs:?}\nserver stderr:\n{}",
                server.stderr()
            );
            break e.to_string();
        }
    };
    let free_when_full = free_bytes(mount.path());
    println!("[{:?}] flood done", began.elapsed());
    println!(
        "disk full after about {} KiB of flood ({} acknowledged records in filler); \
         free {} KiB; producer error: {full_error}",
        flooded >> 10,
        filler.acked.len(),
        free_when_full >> 10
    );
    // The other topic is full too, and says so (bounded: its active segment
    // may still have preallocated room).
    let mut keep_full = false;
    for _ in 0..200 {
        let errs = keep.produce(&mut durable, 16, 4096);
        if !errs.is_empty() {
            assert!(
                errs.iter().all(is_no_space),
                "keep on a full disk: {errs:?}\nserver stderr:\n{}",
                server.stderr()
            );
            keep_full = true;
            break;
        }
    }
    assert!(
        keep_full,
        "keep never reported NotEnoughSpace on a full disk"
    );
    println!("[{:?}] keep full", began.elapsed());
    // Repeated attempts keep getting the same clear answer, and the
    // connection stays usable. A roll may still free a little (the closed
    // segment's preallocated tail is trimmed, the next segment was reserved
    // ahead), so an attempt may succeed; every failure is NotEnoughSpace,
    // and the disk is full again within a bounded number of attempts.
    let mut refused = 0;
    for _ in 0..200 {
        let errs = filler.produce(&mut flood, 4, FLOOD_VALUE_BYTES);
        assert!(
            errs.iter().all(is_no_space),
            "on a full disk only NotEnoughSpace: {errs:?}"
        );
        if !errs.is_empty() {
            refused += 1;
            if refused == 3 {
                break;
            }
        }
    }
    assert_eq!(refused, 3, "the disk did not stay full");
    println!("[{:?}] refused 3 times", began.elapsed());

    // 3. Readers are unaffected; nothing written is damaged.
    let t = Instant::now();
    let (keep_bytes, _) = keep.verify(&addr, "while full");
    let (filler_bytes, expired) = filler.verify(&addr, "while full");
    assert_eq!(expired, 0, "retention ran before the disk was full");
    println!(
        "while full: read {} KiB of keep and {} KiB of filler intact in {:?}",
        keep_bytes >> 10,
        filler_bytes >> 10,
        t.elapsed()
    );
    let topics = admin.list_topics().expect("metadata while full");
    assert_eq!(topics.len(), 2, "{topics:?}");

    let Some(free) = free else {
        drop((durable, flood, admin));
        restart_while_full(&mut server, &keep, &filler);
        println!(
            "ops_disk_full (stays full): {} keep and {} filler records intact across a clean \
             and a SIGKILL restart on the full disk; total {:?}",
            keep.acked.len(),
            filler.acked.len(),
            began.elapsed()
        );
        assert!(began.elapsed() < Duration::from_millis(TEST_BUDGET_MS));
        return;
    };

    // 4. Deletion or retention frees space; producing resumes.
    let wait = match free {
        Free::DeleteTopic => {
            admin.delete_topic(filler.name).unwrap_or_else(|e| {
                panic!(
                    "delete filler on a full disk: {e}\nstderr:\n{}",
                    server.stderr()
                )
            });
            Duration::from_secs(20)
        }
        // Expiry plus the retention check interval plus slack.
        Free::Retention => Duration::from_secs(60),
    };
    let t = Instant::now();
    let freed = loop {
        let now_free = free_bytes(mount.path());
        if now_free > free_when_full + (8 << 20) {
            break now_free;
        }
        if t.elapsed() >= wait {
            let starts: Vec<_> = (0..filler.partitions)
                .map(|p| admin.list_offset(filler.name, p, OffsetSpec::Earliest))
                .collect();
            panic!(
                "{free:?} freed nothing in {wait:?}: free {} KiB; filler log starts now {starts:?}\n\
                 server stderr:\n{}",
                free_bytes(mount.path()) >> 10,
                server.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "{free:?} freed space after {:?}: free {} KiB",
        t.elapsed(),
        freed >> 10
    );
    if free == Free::Retention {
        // What retention left of the filler is intact, and starts later.
        let (_, expired) = filler.verify(&addr, "after retention");
        assert!(expired > 0, "space came back but no filler record expired");
        println!("retention removed {expired} filler records; the rest intact");
    }
    let before = keep.acked.len();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let errs = keep.produce(&mut durable, 200, 1000);
        if errs.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "producing never resumed after delete: {errs:?}\nserver stderr:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let errs = keep.produce(&mut durable, 2000, 1000);
    assert!(errs.is_empty(), "after recovery: {errs:?}");
    println!(
        "producing resumed: {} more records acknowledged",
        keep.acked.len() - before
    );
    let mut fresh = Topic::new("fresh", 3, 1);
    admin
        .create_topic(fresh.name, 1, &configs)
        .expect("create a topic after recovery");
    assert!(fresh.produce(&mut durable, 100, 1000).is_empty());
    if free == Free::Retention {
        // Now that there is room, deleting a topic works too.
        admin
            .delete_topic(filler.name)
            .expect("delete filler with space");
    }
    drop((durable, flood, admin));

    // 5. A restart (clean, then a crash) finds everything intact.
    server.restart();
    keep.verify(server.addr(), "after clean restart");
    fresh.verify(server.addr(), "after clean restart");
    server.kill();
    server.start_again();
    keep.verify(server.addr(), "after SIGKILL restart");
    fresh.verify(server.addr(), "after SIGKILL restart");
    let mut admin = Client::connect_with(server.addr(), conn_config()).expect("connect");
    let names: Vec<String> = admin
        .list_topics()
        .expect("list")
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(
        !names.iter().any(|n| n == "filler"),
        "deleted topic came back: {names:?}"
    );
    println!(
        "ops_disk_full ({free:?}): {} keep records intact after restarts; total {:?}",
        keep.acked.len(),
        began.elapsed()
    );
    assert!(began.elapsed() < Duration::from_millis(TEST_BUDGET_MS));
    drop(server);
    drop(mount);
}
