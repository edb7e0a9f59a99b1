//! Start-up migration of a format-1 data directory into the offsets
//! partitions.
//!
//! Format 1 (metadata `format_version` 1) kept committed offsets and
//! generations in one log per shard, `<data>/internal/__consumer_offsets/<shard>/`,
//! holding the groups with `crc32c(group) % shard_count == shard`. A start
//! with another shard count never opened some of those logs again and
//! their groups vanished; format 2 keeps them in offsets partitions whose
//! number does not depend on the shard count (see [`super`]).
//!
//! The migration runs before any shard starts, on an executor of its own:
//! 1. remove every offsets partition directory an interrupted attempt left;
//! 2. replay every per-shard log (repairing an interrupted compaction);
//! 3. choose each group's records with [`select`];
//! 4. append them, in their order, to the group's offsets partition,
//!    durably, and close every log.
//!
//! The caller then writes the format-2 metadata (the commit point: until
//! it is written, a restart runs the whole migration again from step 1) and
//! removes the per-shard tree with [`remove_legacy`].

use super::records::Record;
use super::store::{self, OffsetLog, StoreError};
use crate::engine::Durability;
use crate::error::ServerError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The per-shard tree of format 1.
pub fn legacy_root(data_dir: &Path) -> PathBuf {
    data_dir.join("internal").join("__consumer_offsets")
}

/// What the migration moved.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Migrated {
    pub logs: usize,
    pub groups: usize,
    pub records: usize,
}

pub fn record_group(r: &Record) -> &str {
    match r {
        Record::Offset { group, .. } | Record::Group { group, .. } => group,
    }
}

/// The format-1 owner of `group`.
fn format_1_owner(group: &str, shards: u32) -> usize {
    (crc32c::crc32c(group.as_bytes()) as usize) % (shards.max(1) as usize)
}

/// Each group's records, chosen from the per-shard logs `(shard, records
/// in log order)`, I/O-free. A group's records come from the log of its
/// owner under `shards` (the shard count of the format-1 metadata) when
/// that log has any: that is the state clients last saw. Otherwise (the
/// shard count changed under format 1 and the group was never used since)
/// they come from every log that has them, in shard order. Records of one
/// group keep their order; groups come out sorted by name.
pub fn select(logs: &[(usize, Vec<Record>)], shards: u32) -> Vec<Record> {
    // group -> shard -> records in order.
    let mut by_group: BTreeMap<&str, BTreeMap<usize, Vec<&Record>>> = BTreeMap::new();
    for (shard, records) in logs {
        for r in records {
            by_group
                .entry(record_group(r))
                .or_default()
                .entry(*shard)
                .or_default()
                .push(r);
        }
    }
    let mut out = Vec::new();
    for (group, mut per_shard) in by_group {
        match per_shard.remove(&format_1_owner(group, shards)) {
            Some(owned) => out.extend(owned.into_iter().cloned()),
            None => out.extend(per_shard.into_values().flatten().cloned()),
        }
    }
    out
}

/// The shard numbers of the per-shard logs under `root` (a `<n>.next`
/// counts: it is a finished compaction of `<n>`). Blocking.
fn legacy_shards(root: &Path) -> Result<Vec<usize>, ServerError> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(store::io("read dir", root)(e)),
    };
    let mut shards = Vec::new();
    for entry in entries {
        let entry = entry.map_err(store::io("read dir", root))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stem = name.strip_suffix(".next").unwrap_or(&name);
        if let Ok(n) = stem.parse::<usize>() {
            shards.push(n);
        }
    }
    shards.sort_unstable();
    shards.dedup();
    Ok(shards)
}

/// Steps 1-4 of the module docs.
async fn migrate_async(
    data_dir: PathBuf,
    shards: u32,
    offsets_partitions: u32,
) -> Result<Migrated, StoreError> {
    let root = legacy_root(&data_dir);
    let (d, r) = (data_dir.clone(), root.clone());
    let old_shards = glommio::executor()
        .spawn_blocking(move || -> Result<Vec<usize>, ServerError> {
            for p in 0..offsets_partitions {
                let dir = store::partition_dir(&d, p);
                for suffix in ["", ".compact", ".next", ".old"] {
                    store::remove_if_exists(&store::sibling(&dir, suffix))?;
                }
            }
            legacy_shards(&r)
        })
        .await?;
    let mut logs = Vec::new();
    for shard in old_shards {
        let (log, records) = OffsetLog::open(root.join(shard.to_string())).await?;
        log.close().await?;
        logs.push((shard, records));
    }
    let chosen = select(&logs, shards);
    let mut per_partition: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
    for r in &chosen {
        let p = super::offsets_partition(record_group(r), offsets_partitions);
        per_partition.entry(p).or_default().push(r.clone());
    }
    let groups = chosen
        .iter()
        .map(record_group)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    for (p, records) in &per_partition {
        let (mut log, replayed) = OffsetLog::open(store::partition_dir(&data_dir, *p)).await?;
        assert!(
            replayed.is_empty(),
            "offsets partition {p} was emptied first"
        );
        log.append(records, Durability::Durable).await?;
        log.close().await?;
    }
    Ok(Migrated {
        logs: logs.len(),
        groups,
        records: chosen.len(),
    })
}

/// Migrates the per-shard logs of a format-1 directory whose metadata
/// recorded `shards` shards into `offsets_partitions` offsets partitions,
/// on a glommio executor of its own; blocks until done.
pub fn run(data_dir: &Path, shards: u32, offsets_partitions: u32) -> Result<Migrated, ServerError> {
    let root = legacy_root(data_dir);
    let failed = |reason: String| ServerError::Metadata {
        path: root.clone(),
        reason: format!(
            "migrating the format-1 consumer offsets failed: {reason}. Nothing was changed: \
             the metadata is still format 1 and the next start tries again (see docs/format.md, \
             \"Migration from format 1\")"
        ),
    };
    let d = data_dir.to_path_buf();
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("strom-migrate")
        .io_memory(crate::limits::IO_MEMORY_BYTES)
        .spawn(move || migrate_async(d, shards, offsets_partitions))
        .map_err(|e| failed(format!("starting an executor: {e}")))?;
    match handle.join() {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(e) => Err(failed(format!("the executor failed: {e}"))),
    }
}

/// Removes the per-shard tree once the format-2 metadata is durable (also
/// when a crash came between the two). Blocking. Whether there was one.
pub fn remove_legacy(data_dir: &Path) -> Result<bool, ServerError> {
    let root = legacy_root(data_dir);
    if !root.exists() {
        return Ok(false);
    }
    store::remove_if_exists(&root)?;
    store::sync_dir(root.parent().expect("internal dir"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::records::{Committed, GroupMeta};

    fn offset(group: &str, partition: u32, offset: u64) -> Record {
        Record::Offset {
            group: group.into(),
            topic: "t".into(),
            partition,
            value: Some(Committed {
                offset,
                metadata: String::new(),
                commit_time_ms: 0,
            }),
        }
    }

    fn generation(group: &str, generation: i32) -> Record {
        Record::Group {
            group: group.into(),
            value: Some(GroupMeta {
                generation,
                protocol_type: "consumer".into(),
            }),
        }
    }

    fn on_executor<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
        f: impl FnOnce() -> F + Send + 'static,
    ) -> T {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(crate::limits::IO_MEMORY_BYTES)
            .spawn(f)
            .expect("executor")
            .join()
            .expect("join")
    }

    /// A format-1 tree with two per-shard logs (one group orphaned in the
    /// wrong one) and the leftover of an interrupted attempt: every group
    /// lands, in order, in its offsets partition, and nothing else does.
    #[test]
    fn run_moves_every_group_into_its_offsets_partition() {
        let dir = std::env::temp_dir().join(format!("strom-migrate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let groups: Vec<String> = (0..40).map(|i| format!("group-{i}")).collect();
        let mut logs: Vec<(usize, Vec<Record>)> = vec![(0, Vec::new()), (1, Vec::new())];
        for (i, g) in groups.iter().enumerate() {
            // The last group only ever lived in the log of the wrong shard.
            let shard = if i == groups.len() - 1 {
                1 - format_1_owner(g, 2)
            } else {
                format_1_owner(g, 2)
            };
            logs[shard].1.push(generation(g, 1 + i as i32));
            logs[shard].1.push(offset(g, 0, i as u64));
            logs[shard].1.push(offset(g, 0, 100 + i as u64));
        }
        let want = select(&logs, 2);
        assert_eq!(want.len(), 3 * groups.len());
        let (d, l) = (dir.clone(), logs.clone());
        on_executor(move || async move {
            for (shard, records) in l {
                let (mut log, _) = OffsetLog::open(legacy_root(&d).join(shard.to_string()))
                    .await
                    .expect("open");
                log.append(&records, Durability::Durable)
                    .await
                    .expect("append");
                log.close().await.expect("close");
            }
            // An interrupted attempt left a partial offsets partition.
            let (mut log, _) = OffsetLog::open(store::partition_dir(&d, 3))
                .await
                .expect("open");
            log.append(&[offset("stale", 9, 9)], Durability::Durable)
                .await
                .expect("append");
            log.close().await.expect("close");
        });
        let m = run(&dir, 2, 16).expect("migrate");
        assert_eq!(
            m,
            Migrated {
                logs: 2,
                groups: groups.len(),
                records: want.len(),
            }
        );
        let d = dir.clone();
        let got: Vec<(u32, Vec<Record>)> = on_executor(move || async move {
            let mut out = Vec::new();
            for p in 0..16 {
                let (log, records) = OffsetLog::open(store::partition_dir(&d, p))
                    .await
                    .expect("open");
                log.close().await.expect("close");
                out.push((p, records));
            }
            out
        });
        for (p, records) in &got {
            let in_p: Vec<Record> = want
                .iter()
                .filter(|r| super::super::offsets_partition(record_group(r), 16) == *p)
                .cloned()
                .collect();
            assert_eq!(records, &in_p, "offsets partition {p}");
        }
        assert!(remove_legacy(&dir).expect("remove"));
        assert!(!legacy_root(&dir).exists());
        assert!(!remove_legacy(&dir).expect("nothing left"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn select_prefers_the_format_1_owner_and_recovers_orphans() {
        // Find a group the format-1 placement with two shards put on 0, and
        // one it put on 1.
        let on = |s: usize| {
            (0..)
                .map(|i| format!("g{i}"))
                .find(|g| format_1_owner(g, 2) == s)
                .expect("a group")
        };
        let (a, b) = (on(0), on(1));
        let logs = vec![
            // Shard 0 holds `a` (its owner) and a stale copy of `b`
            // written while the directory ran with one shard.
            (
                0,
                vec![offset(&a, 0, 5), offset(&b, 0, 1), generation(&a, 3)],
            ),
            // Shard 1 holds `b` (its owner) and an orphan `c` (owned by
            // shard 0 under two shards, but only ever committed here).
            (
                1,
                vec![offset(&b, 0, 7), generation(&b, 2), offset(&a, 0, 99)],
            ),
        ];
        let c = (0..)
            .map(|i| format!("c{i}"))
            .find(|g| format_1_owner(g, 2) == 0)
            .expect("c");
        let mut logs = logs;
        logs[1].1.push(offset(&c, 1, 4));
        let got = select(&logs, 2);
        let mut want = vec![
            offset(&a, 0, 5),
            generation(&a, 3),
            offset(&b, 0, 7),
            generation(&b, 2),
            offset(&c, 1, 4),
        ];
        want.sort_by(|x, y| record_group(x).cmp(record_group(y)));
        assert_eq!(got, want);
    }
}
