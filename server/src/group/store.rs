//! One offsets partition: an engine partition at
//! `<data>/internal/__consumer_offsets-<p>/` holding the records of
//! [`super::records`] for the groups `g` with
//! [`offsets_partition`](super::offsets_partition)`(g) == p`. The shard
//! that owns `p` replays it into its coordinator at start-up; commits
//! append to it durably (fdatasync) before they are acknowledged or
//! visible to fetches. Nothing in it depends on the shard count.
//!
//! Compaction (a snapshot into a fresh log, switched by renames): when the
//! log holds more than `COMPACT_FACTOR` times as many records as there are
//! live keys (and at least `COMPACT_RECORDS_MIN`), the shell, holding the
//! append lock so that the snapshot is exactly the log's state:
//! 1. writes every live record into `<dir>.compact/` (durably) and closes it;
//! 2. renames `<dir>.compact` to `<dir>.next` (now known complete);
//! 3. closes the live log, renames `<dir>` to `<dir>.old` and
//!    `<dir>.next` to `<dir>`, fsyncs the parent directory;
//! 4. removes `<dir>.old` and reopens `<dir>`.
//!
//! A crash anywhere is repaired on start-up by [`recover_dirs`]: a
//! `.next` directory is complete and wins; a `.compact` one is partial and
//! is removed; an `.old` one is garbage.

use super::records::{self, Record};
use crate::engine::{AnyStorage, Durability, EngineError, LogConfig, Partition};
use crate::error::ServerError;
use bytes::BytesMut;
use std::path::{Path, PathBuf};
use strom_flatbuffers::{BatchBuilder, RecordIn};

/// Compact when the log has this many times more records than live keys.
pub const COMPACT_FACTOR: u64 = 4;
/// ... and at least this many records.
pub const COMPACT_RECORDS_MIN: u64 = 10_000;
/// Records per appended batch (a commit larger than this is split).
pub const RECORDS_PER_BATCH_MAX: usize = 4_096;
/// Bytes per appended batch, well under the engine's frame limit.
pub const BATCH_BYTES_MAX: usize = 4 << 20;
/// Bytes read per step of the replay.
const REPLAY_READ_BYTES: usize = 4 << 20;

/// The directory of offsets partition `p`.
pub fn partition_dir(data_dir: &Path, p: u32) -> PathBuf {
    data_dir
        .join("internal")
        .join(format!("__consumer_offsets-{p}"))
}

pub(super) fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().expect("log dir").to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

pub(super) fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ServerError + 'a {
    move |source| ServerError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn remove_if_exists(path: &Path) -> Result<(), ServerError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", path)(e)),
        _ => Ok(()),
    }
}

pub(super) fn sync_dir(path: &Path) -> Result<(), ServerError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io("fsync", path))
}

/// Finishes or undoes a compaction interrupted by a crash (see the module
/// docs). Blocking; runs before the log opens.
pub fn recover_dirs(dir: &Path) -> Result<(), ServerError> {
    let next = sibling(dir, ".next");
    if next.exists() {
        remove_if_exists(dir)?;
        std::fs::rename(&next, dir).map_err(io("rename", &next))?;
        sync_dir(dir.parent().expect("parent"))?;
    }
    remove_if_exists(&sibling(dir, ".compact"))?;
    remove_if_exists(&sibling(dir, ".old"))?;
    Ok(())
}

fn log_config() -> LogConfig {
    LogConfig {
        // Offsets leave only by tombstone and compaction, never by age.
        retention_ms: None,
        retention_bytes: None,
        segment_bytes: 64 << 20,
        ..LogConfig::default()
    }
}

/// Record batches of at most `RECORDS_PER_BATCH_MAX` records and about
/// `BATCH_BYTES_MAX` bytes.
fn frames(records: &[Record]) -> Vec<BytesMut> {
    let mut out = Vec::new();
    let mut b = BatchBuilder::new();
    let mut bytes = 0usize;
    let now = super::wall_ms() as i64;
    for r in records {
        let (k, v) = records::encode(r);
        let len = k.len() + v.as_ref().map_or(0, |v| v.len()) + 64;
        if !b.is_empty() && (b.len() >= RECORDS_PER_BATCH_MAX || bytes + len > BATCH_BYTES_MAX) {
            out.push(BytesMut::from(&b.finish()[..]));
            b = BatchBuilder::new();
            bytes = 0;
        }
        b.push(&RecordIn {
            timestamp_ms: now,
            key: Some(&k),
            value: v.as_deref(),
            headers: &[],
        });
        bytes += len;
    }
    if !b.is_empty() {
        out.push(BytesMut::from(&b.finish()[..]));
    }
    out
}

pub struct OffsetLog {
    dir: PathBuf,
    part: Partition,
    /// Records in the log (live or not): the compaction trigger.
    records: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("offsets log {path}: {source}")]
    Engine { path: PathBuf, source: EngineError },
    #[error("offsets log {path}: offset {offset}: {source}")]
    Record {
        path: PathBuf,
        offset: u64,
        source: records::RecordError,
    },
    #[error(
        "offsets log {path}: group {group:?} belongs in offsets partition {belongs} \
         (the offsets partition count of the metadata does not match the logs)"
    )]
    Misplaced {
        path: PathBuf,
        group: String,
        belongs: u32,
    },
    #[error(transparent)]
    Server(#[from] ServerError),
}

impl OffsetLog {
    /// Opens (repairing an interrupted compaction) and replays the log.
    pub async fn open(dir: PathBuf) -> Result<(OffsetLog, Vec<Record>), StoreError> {
        let d = dir.clone();
        glommio::executor()
            .spawn_blocking(move || -> Result<(), ServerError> {
                std::fs::create_dir_all(d.parent().expect("parent"))
                    .map_err(io("create dir", &d))?;
                recover_dirs(&d)
            })
            .await?;
        let engine = |source| StoreError::Engine {
            path: dir.clone(),
            source,
        };
        // Always files: the store renames its directories with std::fs.
        let part = Partition::open_on(AnyStorage::dma(), &dir, log_config(), true)
            .await
            .map_err(engine)?;
        let mut out = Vec::new();
        let mut offset = part.offsets().log_start_offset;
        let end = part.offsets().high_watermark;
        while offset < end {
            let batch = part.read(offset, REPLAY_READ_BYTES).await.map_err(engine)?;
            if batch.frames.is_empty() {
                break;
            }
            for f in &batch.frames {
                let recs = strom_flatbuffers::records(f).map_err(|e| StoreError::Engine {
                    path: dir.clone(),
                    source: EngineError::InvalidFrame(e),
                })?;
                for r in recs {
                    let rec =
                        records::decode(r.key.unwrap_or_default(), r.value).map_err(|source| {
                            StoreError::Record {
                                path: dir.clone(),
                                offset: r.offset,
                                source,
                            }
                        })?;
                    out.push(rec);
                    offset = r.offset + 1;
                }
            }
        }
        let records = out.len() as u64;
        Ok((OffsetLog { dir, part, records }, out))
    }

    /// Appends `records` in order; returns once they reached `durability`.
    pub async fn append(
        &mut self,
        records: &[Record],
        durability: Durability,
    ) -> Result<(), StoreError> {
        for frame in frames(records) {
            self.part
                .append(frame, durability)
                .await
                .map_err(|source| StoreError::Engine {
                    path: self.dir.clone(),
                    source,
                })?;
        }
        self.records += records.len() as u64;
        Ok(())
    }

    /// Records in the log, live or not.
    pub fn records(&self) -> u64 {
        self.records
    }

    pub fn compaction_due(&self, live: usize) -> bool {
        self.records >= COMPACT_RECORDS_MIN && self.records > COMPACT_FACTOR * live as u64
    }

    /// Replaces the log by one holding exactly `live` (see the module docs).
    /// The caller holds the append lock. On error the old log stays (it is
    /// reopened if it was already closed).
    pub async fn compact(
        self,
        live: Vec<Record>,
    ) -> Result<OffsetLog, (StoreError, Option<OffsetLog>)> {
        let dir = self.dir.clone();
        let compact = sibling(&dir, ".compact");
        let next = sibling(&dir, ".next");
        let old = sibling(&dir, ".old");
        let engine = |source| StoreError::Engine {
            path: compact.clone(),
            source,
        };
        // 1-2: the new log, complete before it is named `.next`.
        let built: Result<(), StoreError> = async {
            let c = compact.clone();
            glommio::executor()
                .spawn_blocking(move || remove_if_exists(&c))
                .await?;
            let fresh = Partition::open_on(AnyStorage::dma(), &compact, log_config(), true)
                .await
                .map_err(engine)?;
            for frame in frames(&live) {
                fresh
                    .append(frame, Durability::Durable)
                    .await
                    .map_err(engine)?;
            }
            fresh.close().await.map_err(engine)?;
            let (c, n) = (compact.clone(), next.clone());
            glommio::executor()
                .spawn_blocking(move || -> Result<(), ServerError> {
                    std::fs::rename(&c, &n).map_err(io("rename", &c))?;
                    sync_dir(n.parent().expect("parent"))
                })
                .await?;
            Ok(())
        }
        .await;
        if let Err(e) = built {
            return Err((e, Some(self)));
        }
        // 3-4: switch.
        let OffsetLog { part, .. } = self;
        if let Err(source) = part.close().await {
            tracing::error!(
                dir = %dir.display(),
                error = %source,
                "offsets log: closing before the compaction switch failed"
            );
        }
        let (d, n, o) = (dir.clone(), next.clone(), old.clone());
        let switched = glommio::executor()
            .spawn_blocking(move || -> Result<(), ServerError> {
                std::fs::rename(&d, &o).map_err(io("rename", &d))?;
                std::fs::rename(&n, &d).map_err(io("rename", &n))?;
                sync_dir(d.parent().expect("parent"))?;
                remove_if_exists(&o)
            })
            .await;
        if let Err(e) = switched {
            // Whatever state the directories are in, recover_dirs in open
            // repairs it.
            return match OffsetLog::open(dir).await {
                Ok((log, _)) => Err((e.into(), Some(log))),
                Err(e2) => Err((e2, None)),
            };
        }
        match OffsetLog::open(dir).await {
            Ok((log, replayed)) => {
                debug_assert_eq!(replayed.len(), live.len());
                Ok(log)
            }
            Err(e) => Err((e, None)),
        }
    }

    pub async fn close(self) -> Result<(), StoreError> {
        self.part
            .close()
            .await
            .map_err(|source| StoreError::Engine {
                path: self.dir.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recover_dirs_prefers_a_complete_next_and_drops_partial_work() {
        let root = std::env::temp_dir().join(format!("strom-offsets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("0");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("old-file"), b"x").expect("write");
        std::fs::create_dir_all(sibling(&dir, ".next")).expect("mkdir");
        std::fs::write(sibling(&dir, ".next").join("new-file"), b"y").expect("write");
        std::fs::create_dir_all(sibling(&dir, ".compact")).expect("mkdir");
        recover_dirs(&dir).expect("recover");
        assert!(dir.join("new-file").exists());
        assert!(!dir.join("old-file").exists());
        assert!(!sibling(&dir, ".compact").exists());
        assert!(!sibling(&dir, ".next").exists());
        // Nothing to do: nothing changes.
        recover_dirs(&dir).expect("recover");
        assert!(dir.join("new-file").exists());
        let _ = std::fs::remove_dir_all(root);
    }
}
