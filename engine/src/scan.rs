//! Recovery scanning: walks frames in a byte range of a segment, verifies
//! each, and reports where the valid prefix ends and why. I/O-free.
//!
//! Invariants: a frame is accepted only if it passes `verify_stored` (shape,
//! exact length, header and payload crc32c) and its base offset equals the
//! previous frame's next offset (offsets are dense). The scan never reads
//! past `buf` and never panics on any bytes.

use strom_flatbuffers::{verify_stored, FrameError, FrameHeader, FRAME_HEADER_BYTES};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedFrame {
    pub position: u64,
    pub len_bytes: u64,
    pub base_offset: u64,
    pub next_offset: u64,
    pub max_timestamp_ms: i64,
}

/// Why the scan of a buffer stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanStop {
    /// The buffer ended exactly at a frame boundary.
    End,
    /// The buffer ends inside a frame: read more (or, at end of file, a torn tail).
    Incomplete { needed_bytes: u64 },
    /// All zero header: the end of written data (padding or preallocated space).
    Zeros,
    /// A frame failed verification.
    Corrupt(FrameError),
    /// A frame of a newer format version than this build reads: refuse, do
    /// not truncate (it is not damage, it is a newer writer's data).
    NewerVersion { found: u8 },
    /// A valid frame whose base offset breaks the dense sequence.
    OffsetGap { expected: u64, found: u64 },
}

/// Scans `buf`, which holds segment bytes starting at `start_position`,
/// expecting the first frame to hold `expected_offset`. Returns the frames
/// accepted and why the scan stopped; the valid prefix ends at the last
/// accepted frame.
pub fn scan(
    buf: &[u8],
    start_position: u64,
    expected_offset: u64,
) -> (Vec<ScannedFrame>, ScanStop) {
    let mut frames = Vec::new();
    let mut at = 0usize;
    let mut expected = expected_offset;
    loop {
        let rest = &buf[at..];
        if rest.is_empty() {
            return (frames, ScanStop::End);
        }
        if rest.len() < FRAME_HEADER_BYTES {
            if rest.iter().all(|&b| b == 0) {
                return (frames, ScanStop::Zeros);
            }
            return (
                frames,
                ScanStop::Incomplete {
                    needed_bytes: FRAME_HEADER_BYTES as u64,
                },
            );
        }
        if rest[..FRAME_HEADER_BYTES].iter().all(|&b| b == 0) {
            return (frames, ScanStop::Zeros);
        }
        let Some(header) = FrameHeader::ref_from(rest) else {
            return (
                frames,
                ScanStop::Incomplete {
                    needed_bytes: FRAME_HEADER_BYTES as u64,
                },
            );
        };
        match strom_flatbuffers::peek_frame_len(rest, strom_flatbuffers::FRAME_BYTES_MAX) {
            Ok(Some(len)) if len <= rest.len() => {
                let frame = &rest[..len];
                if let Err(e) = verify_stored(frame) {
                    return (frames, ScanStop::Corrupt(e));
                }
                if header.base_offset() != expected {
                    return (
                        frames,
                        ScanStop::OffsetGap {
                            expected,
                            found: header.base_offset(),
                        },
                    );
                }
                let f = ScannedFrame {
                    position: start_position + at as u64,
                    len_bytes: len as u64,
                    base_offset: header.base_offset(),
                    next_offset: header.next_offset(),
                    max_timestamp_ms: header.max_timestamp_ms.get(),
                };
                expected = f.next_offset;
                frames.push(f);
                at += len;
            }
            Ok(Some(len)) => {
                return (
                    frames,
                    ScanStop::Incomplete {
                        needed_bytes: len as u64,
                    },
                )
            }
            Ok(None) => {
                return (
                    frames,
                    ScanStop::Incomplete {
                        needed_bytes: FRAME_HEADER_BYTES as u64,
                    },
                )
            }
            Err(FrameError::UnsupportedVersion { found })
                if found > strom_flatbuffers::frame::FRAME_VERSION =>
            {
                return (frames, ScanStop::NewerVersion { found })
            }
            Err(e) => return (frames, ScanStop::Corrupt(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strom_flatbuffers::{stamp_base_offset, BatchBuilder, RecordIn};

    fn frame(base: u64, n: usize) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        for i in 0..n {
            b.push(&RecordIn {
                timestamp_ms: 10 + i as i64,
                value: Some(b"v"),
                ..Default::default()
            });
        }
        let mut f = b.finish();
        stamp_base_offset(&mut f, base);
        f
    }

    #[test]
    fn stops_at_zeros_torn_and_gaps() {
        let mut buf = frame(0, 2);
        buf.extend(frame(2, 3));
        let valid = buf.len();
        let (fs, stop) = scan(&buf, 0, 0);
        assert_eq!(fs.len(), 2);
        assert_eq!(stop, ScanStop::End);
        assert_eq!(fs[1].next_offset, 5);

        let mut padded = buf.clone();
        padded.extend(vec![0u8; 4096]);
        assert_eq!(scan(&padded, 0, 0).1, ScanStop::Zeros);

        let mut torn = buf.clone();
        let third = frame(5, 1);
        torn.extend(&third[..third.len() - 3]);
        let (fs, stop) = scan(&torn, 0, 0);
        assert_eq!(fs.len(), 2);
        assert!(matches!(stop, ScanStop::Incomplete { .. }));

        let mut gap = buf.clone();
        gap.extend(frame(9, 1));
        let (fs, stop) = scan(&gap, 0, 0);
        assert_eq!(fs.len(), 2);
        assert_eq!(
            stop,
            ScanStop::OffsetGap {
                expected: 5,
                found: 9
            }
        );

        let mut bad = buf.clone();
        bad[valid - 1] ^= 1;
        let (fs, stop) = scan(&bad, 0, 0);
        assert_eq!(fs.len(), 1);
        assert!(matches!(stop, ScanStop::Corrupt(_)));
    }
}
