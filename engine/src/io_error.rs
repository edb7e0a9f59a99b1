//! `IoError`: an operating-system error together with the operation and the path it
//! happened on, so that every storage failure says what was being done to which file.
//!
//! Invariant: `source` keeps the raw OS error number whenever the OS reported one (the
//! storage implementations convert glommio errors without re-wrapping), so
//! [`IoError::is_no_space`] can rely on `raw_os_error`.

use std::io;
use std::path::PathBuf;

/// An I/O error with the operation, path and OS error.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", .path.display())]
pub struct IoError {
    /// The operation that failed, e.g. `"write_at"`.
    pub op: &'static str,
    /// The file or directory the operation was applied to.
    pub path: PathBuf,
    /// The error reported by the operating system (or by a simulated disk).
    #[source]
    pub source: io::Error,
}

impl IoError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self {
            op,
            path: path.into(),
            source,
        }
    }

    /// An error with a raw OS error number (`libc::EIO`, `libc::ENOENT`, ...).
    pub fn from_errno(op: &'static str, path: impl Into<PathBuf>, errno: i32) -> Self {
        Self::new(op, path, io::Error::from_raw_os_error(errno))
    }

    /// True if the device or the quota is full (`ENOSPC` or `EDQUOT`): the caller may
    /// recover by deleting data, unlike other I/O errors.
    pub fn is_no_space(&self) -> bool {
        match self.source.raw_os_error() {
            Some(errno) => errno == libc::ENOSPC || errno == libc::EDQUOT,
            None => self.source.kind() == io::ErrorKind::StorageFull,
        }
    }

    /// True if the file or directory does not exist (`ENOENT`).
    pub fn is_not_found(&self) -> bool {
        self.source.kind() == io::ErrorKind::NotFound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_no_space() {
        let err = IoError::from_errno("write_at", "/data/0.log", libc::ENOSPC);
        assert!(err.is_no_space());
        assert!(err.to_string().starts_with("write_at /data/0.log: "));
        assert!(IoError::from_errno("fsync", "/x", libc::EDQUOT).is_no_space());
        assert!(!IoError::from_errno("fsync", "/x", libc::EIO).is_no_space());
        assert!(IoError::from_errno("open", "/x", libc::ENOENT).is_not_found());
    }
}
