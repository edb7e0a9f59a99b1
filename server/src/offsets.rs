//! Committed consumer offsets, for now a small durable map per group
//! (a later issue replaces it with a compacted log and a group coordinator).
//!
//! A group is owned by shard `crc32c(group) % shards`; that shard alone
//! reads and writes the group's file `<data>/meta/groups/<hex(group)>.json`
//! (`{"format_version":1,"crc32c":N,"body":{...}}`, crc over the compact
//! body), replaced atomically on every commit. Because the file is per group
//! and not per shard, a change of `--cores` moves groups without losing them.

use crate::error::{ServerError, WireError};
use crate::metadata::write_atomically;
use glommio::sync::Semaphore;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use strom_flatbuffers::protocol::ErrorCode;

pub const OFFSETS_FORMAT_VERSION: u32 = 1;

/// The shard that owns `group`.
pub fn group_owner(group: &str, shards: usize) -> usize {
    (crc32c::crc32c(group.as_bytes()) as usize) % shards.max(1)
}

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

pub struct OffsetStore {
    data_dir: PathBuf,
    groups: RefCell<HashMap<String, GroupOffsets>>,
    /// One commit writes at a time, so files land in commit order.
    write_lock: Semaphore,
}

fn group_path(data_dir: &Path, group: &str) -> PathBuf {
    let hex: String = group.bytes().map(|b| format!("{b:02x}")).collect();
    data_dir
        .join("meta")
        .join("groups")
        .join(format!("{hex}.json"))
}

fn load_group(path: &Path, group: &str) -> Result<GroupOffsets, ServerError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(GroupOffsets {
                group: group.to_owned(),
                ..GroupOffsets::default()
            })
        }
        Err(e) => {
            return Err(ServerError::Io {
                op: "read",
                path: path.to_path_buf(),
                source: e,
            })
        }
    };
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

impl OffsetStore {
    pub fn new(data_dir: PathBuf) -> OffsetStore {
        OffsetStore {
            data_dir,
            groups: RefCell::new(HashMap::new()),
            write_lock: Semaphore::new(1),
        }
    }

    async fn ensure_loaded(&self, group: &str) -> Result<(), WireError> {
        if self.groups.borrow().contains_key(group) {
            return Ok(());
        }
        let path = group_path(&self.data_dir, group);
        let g = group.to_owned();
        let loaded = glommio::executor()
            .spawn_blocking(move || load_group(&path, &g))
            .await
            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
        self.groups
            .borrow_mut()
            .entry(group.to_owned())
            .or_insert(loaded);
        Ok(())
    }

    /// The group's committed offsets (a copy).
    pub async fn get(&self, group: &str) -> Result<GroupOffsets, WireError> {
        self.ensure_loaded(group).await?;
        Ok(self.groups.borrow().get(group).cloned().unwrap_or_default())
    }

    /// Applies `commits` and makes them durable before returning.
    pub async fn commit(
        &self,
        group: &str,
        commits: Vec<(String, u32, Committed)>,
    ) -> Result<(), WireError> {
        let _g = self
            .write_lock
            .acquire_permit(1)
            .await
            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
        self.ensure_loaded(group).await?;
        let body = {
            let mut groups = self.groups.borrow_mut();
            let g = groups.entry(group.to_owned()).or_default();
            g.group = group.to_owned();
            for (topic, p, c) in commits {
                g.offsets.entry(topic).or_default().insert(p, c);
            }
            g.clone()
        };
        let path = group_path(&self.data_dir, group);
        glommio::executor()
            .spawn_blocking(move || -> Result<(), ServerError> {
                let dir = path.parent().expect("groups dir");
                std::fs::create_dir_all(dir).map_err(|e| ServerError::Io {
                    op: "create dir",
                    path: dir.to_path_buf(),
                    source: e,
                })?;
                let crc = crc32c::crc32c(&serde_json::to_vec(&body).unwrap_or_default());
                let f = GroupFile {
                    format_version: OFFSETS_FORMAT_VERSION,
                    crc32c: crc,
                    body,
                };
                let bytes = serde_json::to_vec(&f).unwrap_or_default();
                write_atomically(&path, &bytes)
            })
            .await
            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))
    }
}
