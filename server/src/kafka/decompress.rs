//! Bounded decompression of Kafka record batches.
//!
//! The `kafka-protocol` crate's own decompressors read the whole output of
//! a batch into memory, however large (`read_to_end`, or snappy's declared
//! length): a few kilobytes of gzip or zstd from a producer can expand to
//! gigabytes. This module is passed to
//! `RecordBatchDecoder::decode_with_custom_compression` instead: each codec
//! stops at [`DECOMPRESSED_BATCH_BYTES_MAX`] and the batch is refused.
//!
//! Invariant: no call allocates more than the limit plus one read chunk for
//! a batch's output.

use bytes::{Buf, Bytes};
use kafka_protocol::records::Compression;
use std::io::Read;

/// Largest decompressed batch accepted (a Strom frame cannot be larger).
pub const DECOMPRESSED_BATCH_BYTES_MAX: usize = strom_flatbuffers::FRAME_BYTES_MAX;

fn read_bounded(mut r: impl Read, what: &str) -> anyhow::Result<Bytes> {
    let mut out = Vec::new();
    let limit = DECOMPRESSED_BATCH_BYTES_MAX as u64 + 1;
    (&mut r)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| anyhow::anyhow!("failed to decompress {what}: {e}"))?;
    if out.len() > DECOMPRESSED_BATCH_BYTES_MAX {
        anyhow::bail!(
            "{what} batch decompresses to more than {DECOMPRESSED_BATCH_BYTES_MAX} bytes"
        );
    }
    Ok(Bytes::from(out))
}

/// The decompressor handed to the crate's batch decoder.
pub fn decompress(buf: &mut Bytes, compression: Compression) -> anyhow::Result<Bytes> {
    let input = buf.copy_to_bytes(buf.remaining());
    match compression {
        Compression::None => Ok(input),
        Compression::Gzip => read_bounded(flate2::read::GzDecoder::new(input.reader()), "gzip"),
        Compression::Zstd => read_bounded(
            zstd::stream::read::Decoder::new(input.reader())
                .map_err(|e| anyhow::anyhow!("failed to decompress zstd: {e}"))?,
            "zstd",
        ),
        Compression::Lz4 => read_bounded(
            lz4::Decoder::new(input.reader())
                .map_err(|e| anyhow::anyhow!("failed to decompress lz4: {e}"))?,
            "lz4",
        ),
        Compression::Snappy => {
            let len = snap::raw::decompress_len(&input)
                .map_err(|e| anyhow::anyhow!("failed to decompress snappy: {e}"))?;
            if len > DECOMPRESSED_BATCH_BYTES_MAX {
                anyhow::bail!(
                    "snappy batch declares {len} bytes, more than {DECOMPRESSED_BATCH_BYTES_MAX}"
                );
            }
            let mut out = vec![0u8; len];
            snap::raw::Decoder::new()
                .decompress(&input, &mut out)
                .map_err(|e| anyhow::anyhow!("failed to decompress snappy: {e}"))?;
            Ok(Bytes::from(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The story: a 64 KiB gzip member of zeros expands to 64 MiB; a
    /// producer could send many and make the broker hold gigabytes. Past the
    /// limit the batch is refused, whatever the codec.
    #[test]
    fn a_decompression_bomb_is_refused() {
        let zeros = vec![0u8; 1 << 20];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        for _ in 0..(DECOMPRESSED_BATCH_BYTES_MAX / zeros.len() + 1) {
            gz.write_all(&zeros).expect("compress");
        }
        let bomb = gz.finish().expect("finish");
        assert!(bomb.len() < 1 << 20, "a small input: {} bytes", bomb.len());
        let err = decompress(&mut Bytes::from(bomb), Compression::Gzip).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");

        let z = zstd::stream::encode_all(&zeros[..], 3).expect("zstd");
        let ok = decompress(&mut Bytes::from(z), Compression::Zstd).expect("small is fine");
        assert_eq!(ok.len(), zeros.len());
    }
}
