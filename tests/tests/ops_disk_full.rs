//! Full disk: the server's data directory is a small ext4 filesystem (a
//! 64 MiB image, loop-mounted by the test itself; skipped with a printed
//! reason when not root or when mounting fails). The test
//!
//! 1. writes a known data set (durable acks) to topic `keep`;
//! 2. floods topic `filler` until the disk is full, and requires the
//!    producer's failure to be the `NotEnoughSpace` error code (not a dropped
//!    connection, not `Internal`); then `keep` too gets `NotEnoughSpace`;
//! 3. while the disk is full, reads back every acknowledged record of both
//!    topics byte for byte (consumers keep reading, nothing written is
//!    damaged) and checks the server still answers metadata requests;
//! 4. deletes `filler`, checks the filesystem got the space back, and
//!    produces to `keep` again until that succeeds (bounded);
//! 5. restarts the server (clean stop, then SIGKILL and start) and reads
//!    every acknowledged record of `keep` again, byte for byte, with dense
//!    offsets.
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
}

impl Topic {
    fn new(name: &'static str, tag: u64, partitions: u32) -> Topic {
        Topic {
            name,
            tag,
            partitions,
            acked: HashMap::new(),
            next_id: 0,
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
            match p.send(&ProducerRecord::new(self.name, &v).partition(part)) {
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
    /// Returns the bytes of values read.
    fn verify(&self, addr: &str, what: &str) -> u64 {
        let mut consumer = Consumer::new(
            Client::connect_with(addr, conn_config()).expect("connect consumer"),
            ConsumerConfig {
                max_wait_ms: 50,
                ..Default::default()
            },
        );
        let mut found = 0usize;
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
            assert_eq!(next, 0, "{what}: {}/{part} lost its start", self.name);
            let deadline = Instant::now() + Duration::from_secs(30);
            while next < end {
                assert!(
                    Instant::now() < deadline,
                    "{what}: {}/{part} stuck at {next} of {end}",
                    self.name
                );
                let frames = consumer
                    .poll(Duration::from_millis(200))
                    .unwrap_or_else(|e| panic!("{what}: poll {}/{part}: {e}", self.name));
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
            found,
            self.acked.len(),
            "{what}: acknowledged records of {} missing",
            self.name
        );
        bytes
    }
}

fn is_no_space(e: &Error) -> bool {
    e.code() == Some(ErrorCode::NotEnoughSpace)
}

#[test]
fn a_full_disk_refuses_writes_clearly_and_recovers_after_delete() {
    let began = Instant::now();
    let mount = match LoopMount::new() {
        Ok(m) => m,
        Err(reason) => {
            println!("SKIPPED ops_disk_full: {reason}");
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
    admin
        .create_topic(filler.name, filler.partitions, &configs)
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
    // Repeated attempts keep getting the same clear answer, and the
    // connection stays usable.
    for _ in 0..3 {
        let errs = filler.produce(&mut flood, 4, FLOOD_VALUE_BYTES);
        assert!(
            !errs.is_empty() && errs.iter().all(is_no_space),
            "still full: {errs:?}"
        );
    }

    // 3. Readers are unaffected; nothing written is damaged.
    let t = Instant::now();
    let keep_bytes = keep.verify(&addr, "while full");
    let filler_bytes = filler.verify(&addr, "while full");
    println!(
        "while full: read {} KiB of keep and {} KiB of filler intact in {:?}",
        keep_bytes >> 10,
        filler_bytes >> 10,
        t.elapsed()
    );
    let topics = admin.list_topics().expect("metadata while full");
    assert_eq!(topics.len(), 2, "{topics:?}");

    // 4. Deleting the filler frees space; producing resumes.
    admin.delete_topic(filler.name).unwrap_or_else(|e| {
        panic!(
            "delete filler on a full disk: {e}\nstderr:\n{}",
            server.stderr()
        )
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let freed = loop {
        let free = free_bytes(mount.path());
        if free > free_when_full + (8 << 20) {
            break free;
        }
        assert!(
            Instant::now() < deadline,
            "deleting filler freed nothing: free {} KiB",
            free >> 10
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("after delete: free {} KiB", freed >> 10);
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
        "ops_disk_full: {} keep records intact after restarts; total {:?}",
        keep.acked.len(),
        began.elapsed()
    );
    assert!(began.elapsed() < Duration::from_millis(TEST_BUDGET_MS));
    drop(server);
    drop(mount);
}
