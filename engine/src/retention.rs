//! Retention decisions, I/O-free: which of the oldest closed segments to
//! delete. Never the active (last) segment; only whole segments, oldest
//! first, so the remaining log stays a contiguous suffix.

/// What retention needs to know of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base_offset: u64,
    pub len_bytes: u64,
    /// Largest record timestamp in the segment (i64::MIN if unknown/empty).
    pub max_timestamp_ms: i64,
}

/// Returns how many of the oldest segments to delete. `segments` is in
/// offset order and its last element is the active segment.
pub fn segments_to_delete(
    segments: &[SegmentInfo],
    retention_bytes: Option<u64>,
    retention_ms: Option<u64>,
    now_ms: i64,
) -> usize {
    let closed = segments.len().saturating_sub(1);
    let mut total: u64 = segments.iter().map(|s| s.len_bytes).sum();
    let mut n = 0;
    while n < closed {
        let s = segments[n];
        let too_big = retention_bytes.is_some_and(|max| total.saturating_sub(s.len_bytes) >= max);
        let too_old = retention_ms.is_some_and(|ms| {
            s.max_timestamp_ms != i64::MIN
                && s.max_timestamp_ms < now_ms.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX))
        });
        if !(too_big || too_old) {
            break;
        }
        total -= s.len_bytes;
        n += 1;
    }
    debug_assert!(n < segments.len() || segments.is_empty());
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(base: u64, len: u64, ts: i64) -> SegmentInfo {
        SegmentInfo {
            base_offset: base,
            len_bytes: len,
            max_timestamp_ms: ts,
        }
    }

    #[test]
    fn size_and_time_never_the_active_segment() {
        let s = [seg(0, 100, 10), seg(10, 100, 20), seg(20, 100, 30)];
        assert_eq!(segments_to_delete(&s, Some(150), None, 0), 1);
        assert_eq!(segments_to_delete(&s, Some(0), None, 0), 2);
        assert_eq!(segments_to_delete(&s, None, Some(5), 26), 2);
        assert_eq!(segments_to_delete(&s, None, Some(5), 1_000), 2);
        assert_eq!(segments_to_delete(&s, None, None, 1_000), 0);
        assert_eq!(segments_to_delete(&s[..1], Some(0), Some(0), 1_000), 0);
    }

    #[test]
    fn stops_at_first_segment_to_keep() {
        // a young segment before an old one stops time retention (contiguity)
        let s = [seg(0, 100, 50), seg(10, 100, 10), seg(20, 100, 60)];
        assert_eq!(segments_to_delete(&s, None, Some(5), 40), 0);
    }
}
