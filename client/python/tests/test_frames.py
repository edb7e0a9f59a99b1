"""The I/O-free layers: frame encoding against the generated FlatBuffers code,
checksums, bounds checks, murmur2 (no server)."""

from __future__ import annotations

import random
import struct

import pytest

from strom import _crc
from strom.errors import ProtocolError
from strom.frames import FRAME_HEADER, decode_frames, encode_frame, murmur2, partition_for_key
from strom.record.RecordBatch import RecordBatch


def _vec(tab, slot_off):  # the generated accessors, for cross-checking only
    o = tab.Offset(slot_off)
    if o == 0:
        return None
    start = tab.Vector(o)
    return bytes(tab.Bytes[start : start + tab.VectorLen(o)])


def test_encoded_frame_reads_back_with_the_generated_code_and_our_reader():
    rng = random.Random(7)
    records = []
    for i in range(200):
        key = None if i % 7 == 0 else bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        value = None if i % 11 == 0 else bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
        headers = [("h%d" % j + "é" * (i % 3), bytes([j]) * (i % 5)) for j in range(i % 4)]
        records.append((key, value, headers, 1_700_000_000_000 + rng.randrange(-1000, 1000)))
    frame = encode_frame(records, producer_id=5, producer_epoch=2, base_sequence=77)
    h = FRAME_HEADER.unpack_from(frame, 0)
    assert h[4] == len(frame) and h[7] == 200 and h[8] == 199
    assert (h[11], h[12], h[13]) == (5, 77, 2)
    assert h[9] == records[0][3] and h[10] == max(r[3] for r in records)
    assert _crc.crc32c(frame[:68]) == h[16] and _crc.crc32c(frame[72:]) == h[5]
    batch = RecordBatch.GetRootAs(bytearray(frame[72:]), 0)
    assert batch.RecordsLength() == 200
    for i, (key, value, headers, ts) in enumerate(records):
        r = batch.Records(i)
        assert r.OffsetDelta() == i
        assert r.TimestampDeltaMs() == ts - records[0][3]
        assert _vec(r._tab, 8) == key and _vec(r._tab, 10) == value
        got = [(r.Headers(j).Key().decode(), _vec(r.Headers(j)._tab, 6) or b"") for j in range(r.HeadersLength())]
        assert got == headers
    read, next_offset = decode_frames(frame, "t", 3)
    assert next_offset == 200
    assert [(r.key, r.value, r.headers, r.timestamp_ms, r.offset, r.partition) for r in read] == [
        (k, v, h, ts, i, 3) for i, (k, v, h, ts) in enumerate(records)
    ]
    # Records below the asked offset are skipped, the next offset stays.
    assert [r.offset for r in decode_frames(frame, "t", 3, min_offset=150)[0]] == list(range(150, 200))


def test_scalars_are_aligned_for_the_server_verifier():
    frame = encode_frame([(b"k" * i, b"v" * (i * 3), [("x" * i, b"y")], None) for i in range(1, 30)])
    payload = frame[72:]
    batch = RecordBatch.GetRootAs(bytearray(payload), 0)
    for i in range(batch.RecordsLength()):
        r = batch.Records(i)
        o = r._tab.Offset(6)  # timestamp_delta_ms, an i64
        assert (r._tab.Pos + o) % 8 == 0
        assert r._tab.Pos % 4 == 0


def test_every_flipped_byte_is_refused():
    frame = bytearray(encode_frame([(b"key", b"value", [("h", b"1")], None)] * 3))
    for pos in range(0, len(frame), 3):
        bad = bytearray(frame)
        bad[pos] ^= 0x40
        with pytest.raises(ProtocolError):
            decode_frames(bytes(bad), "t", 0)


def test_forged_payload_with_valid_checksums_is_bounds_checked():
    # A hostile peer recomputes the checksums: the reader must still refuse
    # offsets and lengths that point outside the payload, never loop on them.
    good = encode_frame([(b"k", b"v", None, None)])
    payload = bytearray(good[72:])
    cases = []
    for pos in range(0, len(payload) - 3, 4):
        for value in (0xFFFFFFF0, 0x7FFFFFFF, len(payload) + 4, 3):
            p = bytearray(payload)
            struct.pack_into("<I", p, pos, value)
            cases.append(bytes(p))
    refused = 0
    for p in cases:
        h = list(FRAME_HEADER.unpack_from(good, 0))
        h[4] = 72 + len(p)
        h[5] = _crc.crc32c(p)
        h[16] = 0
        h[16] = _crc.crc32c(FRAME_HEADER.pack(*h)[:68])
        try:
            records, _ = decode_frames(FRAME_HEADER.pack(*h) + p, "t", 0)
        except ProtocolError:
            refused += 1
        else:
            assert len(records) == 1  # a change that still reads as a valid batch of one
    # Most of the prefix is unused vtables (changing them changes nothing);
    # every change that reaches a used offset was refused.
    assert refused >= 40, refused


def test_truncated_and_oversized_frames_are_refused():
    frame = encode_frame([(None, b"v", None, None)])
    with pytest.raises(ProtocolError):
        decode_frames(frame[:-1], "t", 0)
    with pytest.raises(ProtocolError):
        decode_frames(frame[:50], "t", 0)
    h = list(FRAME_HEADER.unpack_from(frame, 0))
    h[4] = (64 << 20) + 1
    with pytest.raises(ProtocolError):
        decode_frames(FRAME_HEADER.pack(*h) + frame[72:], "t", 0)


def test_crc32c_native_and_pure_agree():
    data = bytes(range(256)) * 17
    assert _crc.crc32c(b"123456789") == 0xE3069283
    assert _crc.crc32c_pure(b"123456789") == 0xE3069283
    assert _crc.crc32c(data) == _crc.crc32c_pure(data)


def test_murmur2_matches_kafka_vectors():
    # Kafka's UtilsTest.testMurmur2, as client/src/producer.rs checks them.
    cases = [
        (b"21", -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
        (b"abc", 479_470_107),
    ]
    for data, want in cases:
        assert murmur2(data) == want & 0xFFFFFFFF, data
    for n in range(1, 20):
        for k in range(100):
            p = partition_for_key(struct.pack("<I", k), n)
            assert 0 <= p < n
