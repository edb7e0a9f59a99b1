"""Batch frames (docs/format.md, "Batch frame"): building them for the
producer and checking and reading them for the consumer. No I/O.

A frame is a 72-byte little-endian header followed by a FlatBuffers
``RecordBatch`` payload. ``encode_frame`` writes the payload directly (not
through ``flatbuffers.Builder``, which is several times slower in Python):
a fixed prefix (root offset, the eight possible ``Record`` vtables, the
``RecordHeader`` and ``RecordBatch`` vtables, the batch table), the
``records`` vector, then one 8-byte aligned block per record (its table,
then its key, value and headers). The layout is a valid FlatBuffer that the
server's verifier accepts (``validate_incoming``): every uoffset points
forward inside the buffer, scalars are aligned to their size, strings end
with a NUL byte. ``tests/test_frames.py`` cross-checks it against the
generated code.

``decode_frames`` checks every frame before it reads a byte of its records:
header shape (magic, version, reserved bytes, ``72 <= frame_len <= 64 MiB``,
record count ``1 ..= 2^20`` and ``last_offset_delta == record_count - 1``),
the header crc32c, the payload crc32c, no compression bit (the native
protocol has none in format version 1); then reads the payload through the
bounds-checked reader of ``strom._fb``. Any failure raises ``ProtocolError``.
"""

from __future__ import annotations

import struct
import time
from typing import List, NamedTuple, Optional, Sequence, Tuple

from strom._crc import crc32c
from strom._fb import Table
from strom.errors import ProtocolError

__all__ = [
    "FRAME_HEADER",
    "FRAME_HEADER_BYTES",
    "FRAME_BYTES_MAX",
    "FRAME_RECORDS_MAX",
    "Header",
    "ConsumerRecord",
    "encode_frame",
    "decode_frames",
    "murmur2",
    "partition_for_key",
]

FRAME_HEADER = struct.Struct("<IBBHIIQIIqqqihHII")
FRAME_HEADER_BYTES = 72
assert FRAME_HEADER.size == FRAME_HEADER_BYTES
FRAME_MAGIC = 0x4D525453  # b"STRM"
FRAME_VERSION = 1

# Frame attribute bits (docs/format.md, "Attributes"): bits 0..=2 are the
# compression (format 1 accepts none); 4 marks a batch of a Kafka
# transaction, 5 a transaction marker (a control frame), 6 a commit marker.
ATTR_TRANSACTIONAL = 0x10
ATTR_CONTROL = 0x20
ATTR_COMMIT = 0x40
ATTRS_KNOWN = ATTR_TRANSACTIONAL | ATTR_CONTROL | ATTR_COMMIT

#: Hard cap on a frame, whatever a topic allows.
FRAME_BYTES_MAX = 64 << 20
#: Most records one frame may hold.
FRAME_RECORDS_MAX = 1 << 20

Header = Tuple[str, bytes]


class ConsumerRecord(NamedTuple):
    """A record read from a partition."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: Optional[bytes]
    value: Optional[bytes]
    headers: List[Header]


# ------------------------------------------------------------------ encoding

_U32 = struct.Struct("<I")
_REC = struct.Struct("<iIqIIII")  # Record table: soffset, 5 fields, pad (32 bytes)
_HDR = struct.Struct("<iII")  # RecordHeader table: soffset, key, value
_PAD = (b"", b"\0", b"\0\0", b"\0\0\0", b"\0\0\0\0", b"\0" * 5, b"\0" * 6, b"\0" * 7)

_VT_RECORD = 8  # eight Record vtables of 16 bytes each, index = key | value << 1 | headers << 2
_VT_HEADER = 136
_VT_BATCH = 144
_BATCH_TABLE = 152
_RECORDS_VEC = 160


def _prefix() -> bytes:
    out = bytearray(_RECORDS_VEC)
    struct.pack_into("<I", out, 0, _BATCH_TABLE)
    for i in range(8):
        k, v, h = i & 1, i >> 1 & 1, i >> 2 & 1
        struct.pack_into(
            "<7H", out, _VT_RECORD + 16 * i, 14, 28, 4, 8, 16 if k else 0, 20 if v else 0, 24 if h else 0
        )
    struct.pack_into("<4H", out, _VT_HEADER, 8, 12, 4, 8)
    struct.pack_into("<3H", out, _VT_BATCH, 6, 8, 4)
    struct.pack_into("<iI", out, _BATCH_TABLE, _BATCH_TABLE - _VT_BATCH, _RECORDS_VEC - (_BATCH_TABLE + 4))
    return bytes(out)


_PREFIX = _prefix()


def _headers_block(pos: int, headers: Sequence[Header], parts: List[bytes]) -> int:
    """Appends the headers vector at absolute ``pos`` (4-aligned); returns its size."""
    n = len(headers)
    tables_at = pos + 4 + 4 * n
    offs: List[int] = []
    body: List[bytes] = []
    p = tables_at
    for name, value in headers:
        kb = name.encode("utf-8")
        kl, vl = len(kb), len(value)
        kpad = (-(kl + 1)) & 3
        # table (12) | key string (4 + kl + NUL + pad) | value vector (4 + vl + pad)
        offs.append(p - (pos + 4 + 4 * len(offs)))
        key_at = p + 12
        val_at = key_at + 4 + kl + 1 + kpad
        body.append(_HDR.pack(p - _VT_HEADER, key_at - (p + 4), val_at - (p + 8)))
        body.append(_U32.pack(kl))
        body.append(kb)
        body.append(_PAD[1 + kpad])
        body.append(_U32.pack(vl))
        body.append(bytes(value))
        body.append(_PAD[(-vl) & 3])
        p = val_at + 4 + vl + ((-vl) & 3)
    parts.append(struct.pack("<%dI" % (n + 1), n, *offs))
    parts.extend(body)
    return p - pos


def encode_payload(
    records: Sequence[Tuple[Optional[bytes], Optional[bytes], Optional[Sequence[Header]], int]],
) -> bytes:
    """The ``RecordBatch`` FlatBuffer for ``(key, value, headers, timestamp_delta_ms)`` records."""
    n = len(records)
    assert 0 < n <= FRAME_RECORDS_MAX
    vec_end = _RECORDS_VEC + 4 + 4 * n
    pos = (vec_end + 7) & ~7
    offs: List[int] = []
    blocks: List[bytes] = []
    append = blocks.append
    rec_pack = _REC.pack
    u32 = _U32.pack
    pad = _PAD
    for i, (key, value, headers, ts_delta) in enumerate(records):
        offs.append(pos - (_RECORDS_VEC + 4 + 4 * i))
        table_at = len(blocks)
        append(b"")  # the table, packed once its fields' positions are known
        p = 32
        vi = 0
        kf = vf = hf = 0
        if key is not None:
            kl = len(key)
            kf = 16
            vi = 1
            append(u32(kl))
            append(key)
            append(pad[(-kl) & 3])
            p += 4 + kl + ((-kl) & 3)
        if value is not None:
            vl = len(value)
            vf = p - 20
            vi |= 2
            append(u32(vl))
            append(value)
            append(pad[(-vl) & 3])
            p += 4 + vl + ((-vl) & 3)
        if headers:
            hf = p - 24
            vi |= 4
            p += _headers_block(pos + p, headers, blocks)
        tail = (-p) & 7
        if tail:
            append(pad[tail])
        blocks[table_at] = rec_pack(pos - (_VT_RECORD + 16 * vi), i, ts_delta, kf, vf, hf, 0)
        pos += p + tail
    head = struct.pack("<%dI" % (n + 1), n, *offs)
    return b"".join([_PREFIX, head, pad[(-vec_end) & 7], *blocks])


def encode_frame(
    records: Sequence[Tuple[Optional[bytes], Optional[bytes], Optional[Sequence[Header]], Optional[int]]],
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
) -> bytes:
    """A complete frame for ``(key, value, headers, timestamp_ms or None)`` records.

    The first record's timestamp is the frame's ``first_timestamp_ms``;
    ``None`` means now. ``base_offset`` is 0 (the server stamps it).
    """
    if not records:
        raise ValueError("a batch holds at least one record")
    if len(records) > FRAME_RECORDS_MAX:
        raise ValueError("a batch holds at most %d records" % FRAME_RECORDS_MAX)
    now = int(time.time() * 1000)
    first = records[0][3]
    if first is None:
        first = now
    top = first
    rows = []
    for key, value, headers, ts in records:
        if ts is None:
            ts = now
        if ts > top:
            top = ts
        rows.append((key, value, headers, ts - first))
    payload = encode_payload(rows)
    n = len(records)
    frame_len = FRAME_HEADER_BYTES + len(payload)
    if frame_len > FRAME_BYTES_MAX:
        raise ValueError("batch of %d bytes exceeds the %d-byte frame limit" % (frame_len, FRAME_BYTES_MAX))
    fields = [
        FRAME_MAGIC, FRAME_VERSION, 0, 0, frame_len, crc32c(payload),
        0, n, n - 1, first, top,
        producer_id, base_sequence, producer_epoch, 0, 0, 0,
    ]  # fmt: skip
    head = FRAME_HEADER.pack(*fields)
    fields[-1] = crc32c(head[:68])
    return FRAME_HEADER.pack(*fields) + payload


def restamp(frame: bytes, producer_id: int, producer_epoch: int, base_sequence: int) -> bytes:
    """``frame`` with new idempotence fields (and header checksum); payload untouched."""
    h = list(FRAME_HEADER.unpack_from(frame, 0))
    h[11], h[12], h[13], h[16] = producer_id, base_sequence, producer_epoch, 0
    head = FRAME_HEADER.pack(*h)
    h[16] = crc32c(head[:68])
    return FRAME_HEADER.pack(*h) + frame[FRAME_HEADER_BYTES:]


# ------------------------------------------------------------------ decoding

_unpack_u32 = _U32.unpack_from


def decode_frames(
    blob: bytes | memoryview,
    topic: str,
    partition: int,
    min_offset: int = 0,
    out: Optional[List[ConsumerRecord]] = None,
) -> Tuple[List[ConsumerRecord], int]:
    """Checks and reads the whole frames in ``blob`` (a fetch result).

    Returns the records at ``min_offset`` or later, and the next offset after
    the last frame (``min_offset`` when ``blob`` is empty).
    """
    if out is None:
        out = []
    pos = 0
    total = len(blob)
    next_offset = min_offset
    hdr = FRAME_HEADER
    while pos < total:
        if total - pos < FRAME_HEADER_BYTES:
            raise ProtocolError("truncated frame header (%d bytes)" % (total - pos))
        (magic, version, res0, attrs, frame_len, payload_crc, base, count, last_delta,
         first_ts, _max_ts, _pid, _seq, _epoch, res1, _le, header_crc) = hdr.unpack_from(blob, pos)  # fmt: skip
        if magic != FRAME_MAGIC or version != FRAME_VERSION or res0 or res1:
            raise ProtocolError("bad frame header at byte %d" % pos)
        if not FRAME_HEADER_BYTES <= frame_len <= FRAME_BYTES_MAX or frame_len > total - pos:
            raise ProtocolError("frame length %d out of bounds at byte %d" % (frame_len, pos))
        if not 1 <= count <= FRAME_RECORDS_MAX or last_delta != count - 1:
            raise ProtocolError("frame record count %d / last delta %d inconsistent" % (count, last_delta))
        if crc32c(blob[pos : pos + 68]) != header_crc:
            raise ProtocolError("frame header checksum mismatch at offset %d" % base)
        payload = bytes(blob[pos + FRAME_HEADER_BYTES : pos + frame_len])
        if crc32c(payload) != payload_crc:
            raise ProtocolError("frame payload checksum mismatch at offset %d" % base)
        if attrs & ~ATTRS_KNOWN:
            raise ProtocolError("frame attributes 0x%x: compression is not part of format 1" % attrs)
        if base + count > next_offset:
            next_offset = base + count
        # A transaction marker (Kafka's control batch) takes an offset but
        # is not a record: consumers skip it.
        if base + count > min_offset and not attrs & ATTR_CONTROL:
            _read_records(payload, topic, partition, base, first_ts, count, min_offset, out)
        pos += frame_len
    return out, next_offset


_i32 = struct.Struct("<i").unpack_from
_HH = struct.Struct("<HH").unpack_from


def _read_records(
    buf: bytes,
    topic: str,
    partition: int,
    base: int,
    first_ts: int,
    count: int,
    min_offset: int,
    out: List[ConsumerRecord],
) -> None:
    """Reads ``count`` records of a checked frame's payload, every offset bound-checked.

    The hot loop of a consumer. Records of a batch share a few vtables, so
    each distinct vtable is checked once and turned into a plan: one
    ``struct`` that reads all of a record's fields in one call. Every read
    is bounds-checked by ``struct`` itself (``struct.error`` past the end,
    turned into ``ProtocolError``) or explicitly (slices, which would not).
    """
    size = len(buf)
    if size < 8:
        raise ProtocolError("record batch payload too short")
    batch = Table(buf, _unpack_u32(buf, 0)[0])
    start, n = batch._vector(0, 4)
    if n != count:
        raise ProtocolError("frame says %d records, payload holds %d" % (count, n))
    offs = struct.unpack_from("<%dI" % n, buf, start) if n else ()
    append = out.append
    u32 = _unpack_u32
    i32 = _i32
    new = tuple.__new__
    cls = ConsumerRecord
    plans: dict = {}
    i = max(0, min_offset - base)
    try:
        for i in range(i, n):
            t = start + 4 * i + offs[i]
            vt = t - i32(buf, t)[0]
            plan = plans.get(vt)
            if plan is None:
                plan = plans[vt] = _record_plan(buf, vt, size)
            tlen, read, io, its, ik, iv, ih, fk, fv, fh = plan
            if t + tlen > size:
                raise ProtocolError("record %d table out of bounds" % i)
            vals = read(buf, t)
            if (vals[io] if io >= 0 else 0) != i:
                raise ProtocolError("record %d has a wrong offset delta" % i)
            key = value = None
            if ik >= 0:
                p = t + fk + vals[ik]
                e = p + 4 + u32(buf, p)[0]
                if e > size:
                    raise ProtocolError("record %d key overruns the payload" % i)
                key = buf[p + 4 : e]
            if iv >= 0:
                p = t + fv + vals[iv]
                e = p + 4 + u32(buf, p)[0]
                if e > size:
                    raise ProtocolError("record %d value overruns the payload" % i)
                value = buf[p + 4 : e]
            headers: List[Header] = []
            if ih >= 0:
                p = t + fh + vals[ih]
                hn = u32(buf, p)[0]
                if p + 4 + 4 * hn > size:
                    raise ProtocolError("record %d headers overrun the payload" % i)
                for j in range(hn):
                    hp = p + 4 + 4 * j
                    h = Table(buf, hp + u32(buf, hp)[0])
                    headers.append((h.string(0), h.bytes(1) or b""))
            append(new(cls, (topic, partition, base + i, first_ts + (vals[its] if its >= 0 else 0), key, value, headers)))
    except struct.error as e:
        raise ProtocolError("record %d reads past the payload: %s" % (i, e)) from None


_SLOT_TYPES = ("I", "q", "I", "I", "I")  # offset_delta, timestamp_delta_ms, key, value, headers


def _record_plan(buf: bytes, vt: int, size: int) -> tuple:
    """A checked Record vtable as a read plan: (table size, unpack function,
    index of each slot's value in its result or -1, field offsets of key,
    value and headers)."""
    if vt < 0 or vt + 4 > size:
        raise ProtocolError("record vtable outside the payload")
    vlen, tlen = _HH(buf, vt)
    if vlen < 4 or vlen & 1 or vt + vlen > size or tlen < 4:
        raise ProtocolError("record vtable size out of bounds")
    f = (struct.unpack_from("<%dH" % ((vlen - 4) >> 1), buf, vt + 4) + (0, 0, 0, 0, 0))[:5]
    fields = sorted((f[s], s) for s in range(5) if f[s])
    fmt, pos, index = "<", 0, [-1] * 5
    for k, (off, slot) in enumerate(fields):
        width = 8 if slot == 1 else 4
        if off < pos or off + width > tlen:
            raise ProtocolError("record fields overlap or pass the end of their table")
        fmt += "%dx%s" % (off - pos, _SLOT_TYPES[slot]) if off > pos else _SLOT_TYPES[slot]
        pos = off + width
        index[slot] = k
    return (tlen, struct.Struct(fmt).unpack_from, *index, f[2], f[3], f[4])


def next_offset_of(blob: bytes | memoryview, default: int) -> int:
    """The offset after the last frame of ``blob``, read from the frame headers only.

    A cheap look (lengths bounds-checked, nothing else) so a consumer can ask
    for the next data before it checks and reads these frames in full
    (``decode_frames`` does, and refuses what this let through).
    """
    pos, total, nxt = 0, len(blob), default
    while pos + FRAME_HEADER_BYTES <= total:
        frame_len, _, base, count = struct.unpack_from("<IIQI", blob, pos + 8)
        if frame_len < FRAME_HEADER_BYTES or pos + frame_len > total:
            raise ProtocolError("frame length %d out of bounds at byte %d" % (frame_len, pos))
        if base + count > nxt:
            nxt = base + count
        pos += frame_len
    return nxt


def _record_vtable(buf: bytes, vt: int, size: int) -> Tuple[int, int, int, int, int, int]:
    """(table size, field offsets of slots 0..4) of a Record vtable, checked."""
    if vt < 0 or vt + 4 > size:
        raise ProtocolError("record vtable outside the payload")
    vlen, tlen = _HH(buf, vt)
    if vlen < 4 or vlen & 1 or vt + vlen > size or tlen < 4:
        raise ProtocolError("record vtable size out of bounds")
    fs = struct.unpack_from("<%dH" % ((vlen - 4) >> 1), buf, vt + 4) + (0, 0, 0, 0, 0)
    f0, f1, f2, f3, f4 = fs[:5]
    if f0 + 4 > tlen or f1 + 8 > tlen or f2 + 4 > tlen or f3 + 4 > tlen or f4 + 4 > tlen:
        raise ProtocolError("record field past the end of its table")
    return tlen, f0, f1, f2, f3, f4


# -------------------------------------------------------------- partitioning


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (seed 0x9747b28c) as an unsigned 32-bit value, as strom-client uses."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    full = length & ~3
    for (k,) in struct.iter_unpack("<I", data[:full]):
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    rest = length - full
    if rest >= 3:
        h ^= data[full + 2] << 16
    if rest >= 2:
        h ^= data[full + 1] << 8
    if rest >= 1:
        h ^= data[full]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def partition_for_key(key: bytes, partitions: int) -> int:
    """``(murmur2(key) & 0x7fffffff) % partitions``: the partition Kafka's and strom-client's producers pick."""
    if partitions <= 0:
        raise ValueError("a topic has at least one partition")
    if partitions == 1:
        return 0
    return (murmur2(key) & 0x7FFFFFFF) % partitions

