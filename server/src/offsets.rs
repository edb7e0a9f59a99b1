//! The first offset store's files, read once for migration. Before the
//! consumer group coordinator (`group/`), committed offsets lived in one
//! JSON file per group, `<data>/meta/groups/<hex(group)>.json`
//! (`{"format_version":1,"crc32c":N,"body":{...}}`, crc over the compact
//! body). On start-up each shard imports the files of the groups it owns
//! into its offsets log and removes them (see `group::service`).

use crate::error::ServerError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use crate::group::group_owner;

pub const OFFSETS_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: u64,
    pub metadata: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupOffsets {
    pub group: String,
    /// topic -> partition -> committed.
    pub offsets: BTreeMap<String, BTreeMap<u32, Committed>>,
}

#[derive(Serialize, Deserialize)]
struct GroupFile {
    format_version: u32,
    crc32c: u32,
    body: GroupOffsets,
}

pub fn groups_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("meta").join("groups")
}

fn load_group(path: &Path) -> Result<GroupOffsets, ServerError> {
    let bytes = std::fs::read(path).map_err(|e| ServerError::Io {
        op: "read",
        path: path.to_path_buf(),
        source: e,
    })?;
    let err = |reason: String| ServerError::Metadata {
        path: path.to_path_buf(),
        reason,
    };
    let f: GroupFile = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
    if f.format_version != OFFSETS_FORMAT_VERSION {
        return Err(err(format!(
            "unsupported format_version {}",
            f.format_version
        )));
    }
    let crc = crc32c::crc32c(&serde_json::to_vec(&f.body).unwrap_or_default());
    if crc != f.crc32c {
        return Err(err("checksum mismatch".into()));
    }
    Ok(f.body)
}

/// The old files of the groups `shard` owns, with their contents. A file
/// that cannot be read is reported and left in place.
pub fn legacy_groups(
    data_dir: &Path,
    shard: usize,
    shards: usize,
) -> Result<Vec<(PathBuf, GroupOffsets)>, ServerError> {
    let dir = groups_dir(data_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ServerError::Io {
                op: "read dir",
                path: dir,
                source: e,
            })
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        let Some(group) = unhex(stem) else { continue };
        if group_owner(&group, shards) != shard {
            continue;
        }
        match load_group(&path) {
            Ok(mut g) => {
                g.group = group;
                out.push((path, g));
            }
            Err(e) => tracing::warn!(shard, error = %e, "skipping an unreadable old offsets file"),
        }
    }
    Ok(out)
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_files_are_found_by_owner_and_verified() {
        let dir = std::env::temp_dir().join(format!("strom-legacy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(groups_dir(&dir)).expect("mkdir");
        let mut body = GroupOffsets {
            group: "g1".into(),
            ..GroupOffsets::default()
        };
        body.offsets.entry("t".into()).or_default().insert(
            3,
            Committed {
                offset: 9,
                metadata: "m".into(),
            },
        );
        let crc = crc32c::crc32c(&serde_json::to_vec(&body).expect("json"));
        let f = GroupFile {
            format_version: 1,
            crc32c: crc,
            body: body.clone(),
        };
        let path = groups_dir(&dir).join("6731.json");
        std::fs::write(&path, serde_json::to_vec(&f).expect("json")).expect("write");
        let found = legacy_groups(&dir, group_owner("g1", 2), 2).expect("scan");
        assert_eq!(found, vec![(path, body)]);
        assert!(legacy_groups(&dir, 1 - group_owner("g1", 2), 2)
            .expect("scan")
            .is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
