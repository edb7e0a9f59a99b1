//! The bodies of the fuzz targets (`fuzz/fuzz_targets/*.rs`), here so that
//! `tests/fuzz_corpus_replay.rs` runs the very same checks over the
//! committed corpus on every `cargo test`. Each panics only on a broken
//! invariant, never on malformed input.
//!
//! Targets and what each input is:
//! - [`request_decode`]: bytes as read from a client socket (any number of
//!   pipelined request messages, the last possibly cut).
//! - [`response_decode`]: bytes as read from a server socket (responses).
//! - [`frame_validate`]: one batch frame, or a run of frames.
//!
//! A fuzzer cannot forge crc32c, so the frame checks run twice: once on the
//! bytes as given and once after [`fix_frame_checksums`] has repaired every
//! checksum of the run, which lets mutations reach the payload verifier, the
//! record iterator and the offset arithmetic behind the checksums.

use bytes::Bytes;
use zerocopy::little_endian::U32;
use zerocopy::FromBytes;

use crate::frame::{
    peek_frame_len, records, stamp_base_offset, validate_incoming, verify_stored, FrameError,
    FrameHeader, FrameLimits, FRAME_BYTES_MAX, FRAME_HEADER_BYTES,
};
use crate::protocol::{
    decode_request, decode_response, encode_request, encode_response, error_name, frames,
    peek_correlation_id, peek_message, split_trailer, split_trailer_mut, RequestBody, ResponseBody,
    MESSAGE_BYTES_MAX,
};

/// Frames a fuzz input may hold before the checks stop walking it (bounds
/// the work per input).
const FRAMES_PER_INPUT_MAX: usize = 256;

/// Repairs `payload_crc` and `header_crc` of every frame in the run at the
/// start of `buf` (walking by each header's `frame_len`), so that the bytes
/// pass the checksum checks. Stops at the first header whose length does not
/// fit. Returns how many frames were repaired. Fuzzing and test helper only.
pub fn fix_frame_checksums(buf: &mut [u8]) -> usize {
    let mut at = 0usize;
    let mut n = 0usize;
    while n < FRAMES_PER_INPUT_MAX {
        let rest = &mut buf[at..];
        let Ok((header, _)) = FrameHeader::mut_from_prefix(rest) else {
            break;
        };
        let len = header.frame_len();
        if len < FRAME_HEADER_BYTES || len > rest.len() {
            break;
        }
        let payload_crc = crc32c::crc32c(&rest[FRAME_HEADER_BYTES..len]);
        let (header, _) = FrameHeader::mut_from_prefix(rest).expect("checked above");
        header.payload_crc = U32::new(payload_crc);
        header.header_crc = U32::new(header.compute_header_crc());
        at += len;
        n += 1;
    }
    n
}

/// Frames the bytes as the server does, decodes every complete request,
/// checks that what decodes re-encodes to a message that decodes the same,
/// and walks each produce batch in the trailer as the server would.
pub fn request_decode(data: &[u8]) {
    let mut rest = data;
    let mut messages = 0;
    while let Ok(Some(bounds)) = peek_message(rest, MESSAGE_BYTES_MAX) {
        assert!(bounds.message_len <= rest.len());
        assert!(bounds.table_range().end <= bounds.message_len);
        let (msg, tail) = rest.split_at(bounds.message_len);
        let peeked = peek_correlation_id(msg);
        if let Ok(d) = decode_request(msg) {
            // The unverified peek (used to address error responses) and the
            // verified decode must agree on a message that verifies.
            assert_eq!(peeked, Some(d.correlation_id), "peek_correlation_id");
            assert_eq!(d.trailer, bounds.trailer_range());
            assert_eq!(d.trailer.len() as u64, d.body.trailer_len());
            let mut again = encode_request(d.correlation_id, &d.body).expect("re-encode");
            again.extend_from_slice(&msg[d.trailer.clone()]);
            let d2 = decode_request(&again).expect("re-encoded message decodes");
            assert_eq!(d2.body, d.body);
            assert_eq!(d2.correlation_id, d.correlation_id);
            if let RequestBody::Produce(p) = &d.body {
                let trailer = &msg[d.trailer.clone()];
                let lens = p.batches.iter().map(|b| b.batch_len as usize);
                let owned = bytes::BytesMut::from(trailer);
                let pieces = split_trailer_mut(owned, lens).expect("lengths add up");
                assert_eq!(pieces.len(), p.batches.len());
                for piece in pieces.iter().take(FRAMES_PER_INPUT_MAX) {
                    check_frame(piece);
                }
            }
        }
        rest = tail;
        messages += 1;
        if messages >= FRAMES_PER_INPUT_MAX {
            break;
        }
    }
    let _ = decode_request(data);
}

/// Frames the bytes as a client does, decodes every complete response,
/// checks the round trip, and for a fetch cuts the trailer into results and
/// walks each result's frames as the client would.
pub fn response_decode(data: &[u8]) {
    let mut rest = data;
    let mut messages = 0;
    while let Ok(Some(bounds)) = peek_message(rest, MESSAGE_BYTES_MAX) {
        let (msg, tail) = rest.split_at(bounds.message_len);
        let peeked = peek_correlation_id(msg);
        if let Ok(d) = decode_response(msg) {
            assert_eq!(peeked, Some(d.correlation_id), "peek_correlation_id");
            assert_eq!(d.trailer, bounds.trailer_range());
            assert_eq!(d.trailer.len() as u64, d.body.trailer_len());
            let mut again = encode_response(d.correlation_id, &d.body).expect("re-encode");
            again.extend_from_slice(&msg[d.trailer.clone()]);
            let d2 = decode_response(&again).expect("re-encoded message decodes");
            assert_eq!(d2.body, d.body);
            assert_eq!(d2.correlation_id, d.correlation_id);
            match &d.body {
                ResponseBody::Fetch(f) => {
                    let trailer = Bytes::copy_from_slice(&msg[d.trailer.clone()]);
                    let pieces = f.split_trailer(trailer).expect("lengths add up");
                    assert_eq!(pieces.len(), f.results.len());
                    for (piece, r) in pieces.iter().zip(&f.results) {
                        assert_eq!(piece.len(), r.bytes_len as usize);
                        let _ = error_name(r.error);
                        walk_frames(piece);
                    }
                }
                ResponseBody::Error(e) => {
                    let _ = error_name(e.error);
                }
                _ => {}
            }
        }
        rest = tail;
        messages += 1;
        if messages >= FRAMES_PER_INPUT_MAX {
            break;
        }
    }
    let _ = decode_response(data);
    // Cutting an arbitrary buffer by arbitrary lengths never panics, and
    // succeeds exactly when the lengths add up.
    let lens: Vec<usize> = data.iter().take(8).map(|&b| usize::from(b)).collect();
    let total: usize = lens.iter().sum();
    let cut = split_trailer(Bytes::copy_from_slice(data), lens.iter().copied());
    assert_eq!(cut.is_some(), total == data.len());
}

/// Walks a run of frames (a fetch result's bytes) as a client does: every
/// frame the iterator yields is whole; verified ones iterate their records.
fn walk_frames(blob: &[u8]) {
    let mut consumed = 0usize;
    for item in frames(blob).take(FRAMES_PER_INPUT_MAX) {
        match item {
            Ok(f) => {
                assert!(f.len() >= FRAME_HEADER_BYTES);
                assert_eq!(
                    peek_frame_len(f, FRAME_BYTES_MAX),
                    Ok(Some(f.len())),
                    "frames() yields whole frames"
                );
                consumed += f.len();
                if verify_stored(f).is_ok() {
                    read_records(f);
                }
            }
            Err(_) => break,
        }
    }
    assert!(consumed <= blob.len());
}

/// Validates the bytes as one incoming frame and walks them as a run of
/// frames, as given and with every checksum repaired.
pub fn frame_validate(data: &[u8]) {
    check_frame(data);
    walk_frames(data);
    if data.len() >= FRAME_HEADER_BYTES {
        let mut fixed = data.to_vec();
        if fix_frame_checksums(&mut fixed) > 0 {
            check_frame(&fixed);
            walk_frames(&fixed);
        }
    }
}

/// Every check of one candidate frame: the two-pass framing agrees with the
/// full checks, whatever validates also verifies as stored and reads back
/// as the records its header describes, and stamping keeps it valid.
fn check_frame(data: &[u8]) {
    let peeked = peek_frame_len(data, FRAME_BYTES_MAX);
    if data.len() < FRAME_HEADER_BYTES {
        assert_eq!(
            peeked,
            Ok(None),
            "a short buffer is incomplete, not an error"
        );
    }
    match verify_stored(data) {
        Ok(h) => {
            assert_eq!(peeked, Ok(Some(data.len())));
            assert_eq!(h.frame_len(), data.len());
            assert!(h.next_offset() >= h.base_offset());
            // The iterator re-runs the payload verifier: any verified bytes,
            // even a payload that never passed validate_incoming, are safe.
            read_records(data);
        }
        Err(FrameError::HeaderChecksum { .. } | FrameError::PayloadChecksum { .. }) => {
            assert_eq!(peeked, Ok(Some(data.len())));
        }
        Err(_) => {}
    }
    let Ok(summary) = validate_incoming(data, &FrameLimits::default()) else {
        return;
    };
    let header = verify_stored(data).expect("a valid frame verifies as stored");
    assert_eq!(summary.frame_len, data.len());
    assert_eq!(summary.record_count, header.record_count.get());
    assert_eq!(summary.record_count - 1, header.last_offset_delta.get());
    let base = header.base_offset();
    let recs: Vec<_> = records(data).expect("records").collect();
    assert_eq!(recs.len() as u32, summary.record_count);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.offset, base.saturating_add(i as u64), "dense offsets");
        let _ = r.headers().count();
    }
    assert_eq!(recs[0].timestamp_ms, summary.first_timestamp_ms);
    let max = recs
        .iter()
        .map(|r| r.timestamp_ms)
        .max()
        .expect("non-empty");
    assert_eq!(max, summary.max_timestamp_ms);
    // A tighter limit refuses it.
    let tight = FrameLimits {
        frame_bytes_max: data.len() - 1,
        ..FrameLimits::default()
    };
    assert!(validate_incoming(data, &tight).is_err());
    // Stamping (what the engine does on append) keeps the frame valid and
    // moves every record offset.
    let mut stamped = data.to_vec();
    let new_base = base ^ 0x5a5a;
    stamp_base_offset(&mut stamped, new_base);
    let again = validate_incoming(&stamped, &FrameLimits::default()).expect("stamped");
    assert_eq!(again, summary);
    let h = FrameHeader::ref_from_bytes(&stamped[..FRAME_HEADER_BYTES]).expect("header");
    assert_eq!(h.base_offset(), new_base);
    let first = records(&stamped).expect("records").next().expect("one");
    assert_eq!(first.offset, new_base);
}

/// Iterates every record and header of a frame that passed `verify_stored`.
fn read_records(frame: &[u8]) {
    if let Ok(recs) = records(frame) {
        for r in recs.take(1 << 16) {
            let _ = (r.key.map(<[u8]>::len), r.value.map(<[u8]>::len));
            for (k, v) in r.headers().take(1 << 10) {
                let _ = (k.len(), v.len());
            }
        }
    }
}

/// Replays every file of `fuzz/corpus/<target>/` (under `corpus_root`)
/// through `check`, naming each input on stderr so a failure points at it.
/// Returns how many inputs ran. Shared by the replay tests of every crate.
pub fn replay_corpus(corpus_root: &std::path::Path, target: &str, check: fn(&[u8])) -> usize {
    let dir = corpus_root.join(target);
    let started = std::time::Instant::now();
    let mut n = 0;
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for e in entries {
        let p = e.expect("corpus entry").path();
        if p.is_file() {
            let data = std::fs::read(&p).expect("read corpus file");
            eprintln!("replaying {}", p.display());
            check(&data);
            n += 1;
        }
    }
    eprintln!("{target}: {n} inputs in {:?}", started.elapsed());
    n
}
