//! The partition checkpoint file: log start offset, recovery point and the
//! clean-shutdown flag, in one small versioned file written atomically
//! (`Storage::write_atomic`). I/O-free encode and decode.
//!
//! Invariants: everything in the log before the recovery point
//! (`recovery_segment_base`, `recovery_position`) was fdatasync'd, and the
//! index files of closed segments before it were written, before this file
//! named it. `clean` is true only in the file written by a clean close.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub const CHECKPOINT_FILE: &str = "checkpoint";
pub const CHECKPOINT_MAGIC: u32 = u32::from_le_bytes(*b"SCKP");
pub const CHECKPOINT_VERSION: u32 = 1;
pub const CHECKPOINT_BYTES: usize = 48;

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct CheckpointRaw {
    magic: U32,
    version: U32,
    log_start_offset: U64,
    recovery_segment_base: U64,
    recovery_position: U64,
    recovery_offset: U64,
    clean: U32,
    crc: U32,
}
const _: () = assert!(core::mem::size_of::<CheckpointRaw>() == CHECKPOINT_BYTES);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checkpoint {
    pub log_start_offset: u64,
    pub recovery_segment_base: u64,
    pub recovery_position: u64,
    /// The offset of the first frame at the recovery point.
    pub recovery_offset: u64,
    pub clean: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint is {len_bytes} bytes, expected {CHECKPOINT_BYTES}")]
    Length { len_bytes: usize },
    #[error("bad checkpoint magic")]
    BadMagic,
    #[error(
        "checkpoint format version {found} is newer than this build reads ({CHECKPOINT_VERSION})"
    )]
    UnsupportedVersion { found: u32 },
    #[error("checkpoint checksum mismatch")]
    Checksum,
}

impl Checkpoint {
    pub fn encode(&self) -> [u8; CHECKPOINT_BYTES] {
        let mut raw = CheckpointRaw {
            magic: U32::new(CHECKPOINT_MAGIC),
            version: U32::new(CHECKPOINT_VERSION),
            log_start_offset: U64::new(self.log_start_offset),
            recovery_segment_base: U64::new(self.recovery_segment_base),
            recovery_position: U64::new(self.recovery_position),
            recovery_offset: U64::new(self.recovery_offset),
            clean: U32::new(u32::from(self.clean)),
            crc: U32::new(0),
        };
        raw.crc = U32::new(crc32c::crc32c(&raw.as_bytes()[..CHECKPOINT_BYTES - 4]));
        let mut out = [0u8; CHECKPOINT_BYTES];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Checkpoint, CheckpointError> {
        // Magic and version come first and sit at fixed places in every
        // version, so a newer checkpoint of another length is refused as
        // newer, not mistaken for a damaged one.
        if buf.len() >= 8 {
            let magic = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let version = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
            if magic == CHECKPOINT_MAGIC && version > CHECKPOINT_VERSION {
                return Err(CheckpointError::UnsupportedVersion { found: version });
            }
        }
        if buf.len() != CHECKPOINT_BYTES {
            return Err(CheckpointError::Length {
                len_bytes: buf.len(),
            });
        }
        let raw = CheckpointRaw::ref_from_bytes(buf).map_err(|_| CheckpointError::Length {
            len_bytes: buf.len(),
        })?;
        if raw.magic.get() != CHECKPOINT_MAGIC {
            return Err(CheckpointError::BadMagic);
        }
        if raw.version.get() != CHECKPOINT_VERSION {
            return Err(CheckpointError::UnsupportedVersion {
                found: raw.version.get(),
            });
        }
        if crc32c::crc32c(&buf[..CHECKPOINT_BYTES - 4]) != raw.crc.get() {
            return Err(CheckpointError::Checksum);
        }
        Ok(Checkpoint {
            log_start_offset: raw.log_start_offset.get(),
            recovery_segment_base: raw.recovery_segment_base.get(),
            recovery_position: raw.recovery_position.get(),
            recovery_offset: raw.recovery_offset.get(),
            clean: raw.clean.get() != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let c = Checkpoint {
            log_start_offset: 5,
            recovery_segment_base: 3,
            recovery_position: 4096,
            recovery_offset: 77,
            clean: true,
        };
        let b = c.encode();
        assert_eq!(Checkpoint::decode(&b), Ok(c));
        for i in 0..b.len() {
            let mut bad = b;
            bad[i] ^= 4;
            assert!(Checkpoint::decode(&bad).is_err(), "byte {i}");
        }
        let mut newer = b;
        newer[4] = 2;
        assert_eq!(
            Checkpoint::decode(&newer),
            Err(CheckpointError::UnsupportedVersion { found: 2 })
        );
    }
}
