#!/usr/bin/env python3
"""A small Strom client in Python over the flatc-generated code in strom_fb/.

It proves that any FlatBuffers language can speak Strom's native protocol:
it builds the message envelope, the request tables and the 72-byte batch
frame header (with crc32c checksums) itself, and reads fetched frames after
checking their checksums.

Needs the PyPI package `flatbuffers==25.12.19` and nothing else (crc32c is
implemented below in pure Python).

Library use:

    c = StromClient("127.0.0.1:9400")
    c.create_topic("demo", 3)
    base = c.produce("demo", 0, [Record(b"k", b"v")])
    records, high_watermark = c.fetch("demo", 0, 0)

Command line (same spirit as the `strom` CLI):

    python3 strom_client.py [--server HOST:PORT] create TOPIC --partitions N
    python3 strom_client.py [--server HOST:PORT] list
    python3 strom_client.py [--server HOST:PORT] produce TOPIC [--partition P] [--key-separator SEP]
    python3 strom_client.py [--server HOST:PORT] consume TOPIC [--partition P]
        [--from-beginning | --offset N] [--count N] [--format TEMPLATE]
"""

import argparse
import os
import socket
import struct
import sys
import time
from collections import namedtuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "strom_fb"))

import flatbuffers  # noqa: E402

from strom.protocol import (  # noqa: E402
    ApiVersionsRequest,
    ApiVersionsResponse,
    ConfigEntry,
    CreateTopic,
    CreateTopicsRequest,
    CreateTopicsResponse,
    ErrorResponse,
    FetchPartition,
    FetchRequest,
    FetchResponse,
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsResponse,
    ListTopicsRequest,
    ListTopicsResponse,
    DescribeTopicsRequest,
    DescribeTopicsResponse,
    ProduceBatch,
    ProduceRequest,
    ProduceResponse,
    Request,
    Response,
)
from strom.protocol.ErrorCode import ErrorCode  # noqa: E402
from strom.protocol.RequestBody import RequestBody  # noqa: E402
from strom.protocol.ResponseBody import ResponseBody  # noqa: E402
from strom.record import Record as FbRecord  # noqa: E402
from strom.record import RecordBatch as FbRecordBatch  # noqa: E402
from strom.record import RecordHeader as FbRecordHeader  # noqa: E402

PROTOCOL_VERSION = 1
# Limits (units last): largest response accepted, socket timeout.
RESPONSE_BYTES_MAX = 128 << 20
SOCKET_TIMEOUT_MS = 30_000

ACKS_NONE, ACKS_LEADER, ACKS_DURABLE = 0, 1, -1
LIST_OFFSETS_EARLIEST, LIST_OFFSETS_LATEST = -2, -1

# ------------------------------------------------------------------ crc32c

def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data, crc=0):
    """CRC-32C (Castagnoli), as used by the frame header."""
    crc ^= 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# ---------------------------------------------------------------- murmur2

def murmur2(data):
    """Kafka's murmur2 (seed 0x9747b28c), as the Rust producer uses."""
    m, r, mask = 0x5BD1E995, 24, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    i = 0
    while length - i >= 4:
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
        i += 4
    rest = length - i
    if rest >= 3:
        h ^= data[i + 2] << 16
    if rest >= 2:
        h ^= data[i + 1] << 8
    if rest >= 1:
        h ^= data[i]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def partition_for_key(key, partitions):
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# ------------------------------------------------------------ batch frames

FRAME_HEADER = struct.Struct("<IBBHIIQIIqqqihHII")
assert FRAME_HEADER.size == 72
FRAME_MAGIC = struct.unpack("<I", b"STRM")[0]
FRAME_VERSION = 1

Record = namedtuple("Record", "key value headers timestamp_ms", defaults=((), None))
"""A record to produce: key/value are bytes or None, headers a sequence of
(str, bytes), timestamp_ms None for now."""

ReadRecord = namedtuple("ReadRecord", "offset timestamp_ms key value headers")


def build_frame(records):
    """A complete batch frame: 72-byte header + FlatBuffers RecordBatch."""
    if not records:
        raise ValueError("a batch holds at least one record")
    now = int(time.time() * 1000)
    stamps = [now if r.timestamp_ms is None else r.timestamp_ms for r in records]
    first = stamps[0]
    b = flatbuffers.Builder(1024)
    offs = []
    for i, (r, ts) in enumerate(zip(records, stamps)):
        key = b.CreateByteVector(r.key) if r.key is not None else None
        value = b.CreateByteVector(r.value) if r.value is not None else None
        headers = None
        if r.headers:
            hs = []
            for hk, hv in r.headers:
                k = b.CreateString(hk)
                v = b.CreateByteVector(hv)
                FbRecordHeader.Start(b)
                FbRecordHeader.AddKey(b, k)
                FbRecordHeader.AddValue(b, v)
                hs.append(FbRecordHeader.End(b))
            FbRecord.StartHeadersVector(b, len(hs))
            for h in reversed(hs):
                b.PrependUOffsetTRelative(h)
            headers = b.EndVector()
        FbRecord.Start(b)
        FbRecord.AddOffsetDelta(b, i)
        FbRecord.AddTimestampDeltaMs(b, ts - first)
        if key is not None:
            FbRecord.AddKey(b, key)
        if value is not None:
            FbRecord.AddValue(b, value)
        if headers is not None:
            FbRecord.AddHeaders(b, headers)
        offs.append(FbRecord.End(b))
    FbRecordBatch.StartRecordsVector(b, len(offs))
    for o in reversed(offs):
        b.PrependUOffsetTRelative(o)
    vec = b.EndVector()
    FbRecordBatch.Start(b)
    FbRecordBatch.AddRecords(b, vec)
    b.Finish(FbRecordBatch.End(b))
    payload = bytes(b.Output())
    n = len(records)
    fields = [
        FRAME_MAGIC, FRAME_VERSION, 0, 0,  # magic, version, reserved0, attributes
        FRAME_HEADER.size + len(payload), crc32c(payload),
        0, n, n - 1,  # base_offset (the server stamps it), record_count, last_offset_delta
        first, max(stamps),
        -1, -1, -1, 0, 0,  # producer_id, base_sequence, producer_epoch, reserved1, leader_epoch
        0,  # header_crc, computed below
    ]
    head = FRAME_HEADER.pack(*fields)
    fields[-1] = crc32c(head[:68])
    return FRAME_HEADER.pack(*fields) + payload


def _bytes_field(tab, vtable_offset):
    o = tab.Offset(vtable_offset)
    if o == 0:
        return None
    start = tab.Vector(o)
    return bytes(tab.Bytes[start:start + tab.VectorLen(o)])


def read_frames(blob):
    """Checks and reads whole frames; yields ReadRecords."""
    pos = 0
    while pos < len(blob):
        if len(blob) - pos < FRAME_HEADER.size:
            raise StromError(ErrorCode.CorruptBatch, "truncated frame header")
        h = FRAME_HEADER.unpack_from(blob, pos)
        magic, version, frame_len, payload_crc, base = h[0], h[1], h[4], h[5], h[6]
        first_ts, header_crc = h[9], h[16]
        if magic != FRAME_MAGIC or version != FRAME_VERSION or frame_len < 72:
            raise StromError(ErrorCode.CorruptBatch, "bad frame header")
        frame = blob[pos:pos + frame_len]
        if len(frame) != frame_len:
            raise StromError(ErrorCode.CorruptBatch, "truncated frame")
        if crc32c(frame[:68]) != header_crc or crc32c(frame[72:]) != payload_crc:
            raise StromError(ErrorCode.CorruptBatch, "frame checksum mismatch")
        batch = FbRecordBatch.RecordBatch.GetRootAs(bytearray(frame[72:]), 0)
        for j in range(batch.RecordsLength()):
            r = batch.Records(j)
            headers = []
            for k in range(r.HeadersLength()):
                hd = r.Headers(k)
                key = hd.Key()
                headers.append((key.decode() if key else "", _bytes_field(hd._tab, 6) or b""))
            yield ReadRecord(
                offset=base + r.OffsetDelta(),
                timestamp_ms=first_ts + r.TimestampDeltaMs(),
                key=_bytes_field(r._tab, 8),
                value=_bytes_field(r._tab, 10),
                headers=headers,
            )
        pos += frame_len


# ------------------------------------------------------------- connection

class StromError(Exception):
    def __init__(self, code, message):
        names = {v: k for k, v in vars(ErrorCode).items() if not k.startswith("_")}
        super().__init__("%s (%d): %s" % (names.get(code, "Unknown"), code, message))
        self.code = code
        self.message = message


def _string_vector(b, start_vector, strings):
    offs = [b.CreateString(s) for s in strings]
    start_vector(b, len(offs))
    for o in reversed(offs):
        b.PrependUOffsetTRelative(o)
    return b.EndVector()


def _table_vector(b, start_vector, offs):
    start_vector(b, len(offs))
    for o in reversed(offs):
        b.PrependUOffsetTRelative(o)
    return b.EndVector()


def _s(v):
    return v.decode() if v is not None else ""


class StromClient:
    """One blocking connection; the ApiVersions handshake runs first.

    With ``direct=True`` (the default) a partition's produce, fetch and
    offset look-ups go straight to the shard that owns it, over that shard's
    own port (told by the handshake), so they never cross cores inside the
    server; a shard that cannot be reached falls back to this connection.
    """

    def __init__(self, server="127.0.0.1:9400", timeout_ms=SOCKET_TIMEOUT_MS, direct=True):
        host, port = server.rsplit(":", 1)
        self.host = host
        self.timeout_ms = timeout_ms
        self.sock = socket.create_connection((host, int(port)), timeout=timeout_ms / 1000)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.next_id = 1
        self.direct = direct
        self.shard_id = 0
        self.shard_ports = []
        self._owners = {}  # topic -> [owner shard of each partition]
        self._shards = {}  # shard id -> StromClient on its port, or None (unreachable)
        self._handshake()

    def close(self):
        for c in self._shards.values():
            if c is not None:
                c.close()
        self._shards.clear()
        self.sock.close()

    def _conn_for(self, topic, partition):
        """The connection that reaches the owner of topic/partition directly."""
        if not self.direct or not self.shard_ports:
            return self
        if topic not in self._owners:
            try:
                self.partition_count(topic)
            except (StromError, OSError):
                return self
        owners = self._owners.get(topic, [])
        if partition >= len(owners):
            return self
        owner = owners[partition]
        if owner == self.shard_id or owner >= len(self.shard_ports):
            return self
        if owner not in self._shards:
            try:
                c = StromClient("%s:%d" % (self.host, self.shard_ports[owner]), self.timeout_ms, direct=False)
                self._shards[owner] = c if c.shard_id == owner else None
            except OSError:
                self._shards[owner] = None
        return self._shards[owner] or self

    # envelope: u32 total_len | u32 fb_len | table | trailer
    def _call(self, body_type, build_body, trailer=b"", expect_response=True):
        b = flatbuffers.Builder(256)
        body = build_body(b)
        cid = self.next_id
        self.next_id += 1
        Request.Start(b)
        Request.AddCorrelationId(b, cid)
        Request.AddBodyType(b, body_type)
        Request.AddBody(b, body)
        b.Finish(Request.End(b))
        table = bytes(b.Output())
        total = 4 + len(table) + len(trailer)
        self.sock.sendall(struct.pack("<II", total, len(table)) + table + trailer)
        if not expect_response:
            return None, None, b""
        while True:
            head = self._read_exact(8)
            total, fb_len = struct.unpack("<II", head)
            if total > RESPONSE_BYTES_MAX or fb_len > total - 4:
                raise StromError(ErrorCode.InvalidRequest, "malformed response envelope")
            rest = self._read_exact(total - 4)
            buf = bytearray(rest[:fb_len])
            resp = Response.Response.GetRootAs(buf, 0)
            if resp.CorrelationId() != cid:
                continue  # not ours (this client does not pipeline)
            tab = resp.Body()
            if resp.BodyType() == ResponseBody.ErrorResponse:
                e = ErrorResponse.ErrorResponse()
                e.Init(tab.Bytes, tab.Pos)
                raise StromError(e.Error(), _s(e.Message()))
            return resp.BodyType(), tab, rest[fb_len:]

    def _read_exact(self, n):
        chunks = []
        while n > 0:
            c = self.sock.recv(min(n, 1 << 20))
            if not c:
                raise ConnectionError("connection closed by the server")
            chunks.append(c)
            n -= len(c)
        return b"".join(chunks)

    @staticmethod
    def _as(cls, tab):
        x = cls()
        x.Init(tab.Bytes, tab.Pos)
        return x

    def _handshake(self):
        def build(b):
            name = b.CreateString("strom-python")
            ApiVersionsRequest.Start(b)
            ApiVersionsRequest.AddClientName(b, name)
            ApiVersionsRequest.AddMinVersion(b, PROTOCOL_VERSION)
            ApiVersionsRequest.AddMaxVersion(b, PROTOCOL_VERSION)
            return ApiVersionsRequest.End(b)

        _, tab, _ = self._call(RequestBody.ApiVersionsRequest, build)
        r = self._as(ApiVersionsResponse.ApiVersionsResponse, tab)
        if r.Error() != 0:
            raise StromError(r.Error(), _s(r.Message()))
        if not r.MinVersion() <= PROTOCOL_VERSION <= r.MaxVersion():
            raise StromError(ErrorCode.UnsupportedVersion, "server speaks %d..%d" % (r.MinVersion(), r.MaxVersion()))
        self.server_version = _s(r.ServerVersion())
        self.shard_id = r.ShardId()
        self.shard_ports = [r.ShardPorts(i) for i in range(r.ShardPortsLength())]

    # ----------------------------------------------------------- topics

    def create_topic(self, name, partitions, configs=None):
        configs = configs or {}

        def build(b):
            entries = []
            for k, v in configs.items():
                ko, vo = b.CreateString(k), b.CreateString(v)
                ConfigEntry.Start(b)
                ConfigEntry.AddKey(b, ko)
                ConfigEntry.AddValue(b, vo)
                entries.append(ConfigEntry.End(b))
            cfg = _table_vector(b, CreateTopic.StartConfigsVector, entries)
            n = b.CreateString(name)
            CreateTopic.Start(b)
            CreateTopic.AddName(b, n)
            CreateTopic.AddPartitions(b, partitions)
            CreateTopic.AddConfigs(b, cfg)
            t = CreateTopic.End(b)
            topics = _table_vector(b, CreateTopicsRequest.StartTopicsVector, [t])
            CreateTopicsRequest.Start(b)
            CreateTopicsRequest.AddTopics(b, topics)
            return CreateTopicsRequest.End(b)

        _, tab, _ = self._call(RequestBody.CreateTopicsRequest, build)
        r = self._as(CreateTopicsResponse.CreateTopicsResponse, tab)
        for i in range(r.ResultsLength()):
            res = r.Results(i)
            if res.Error() != 0:
                raise StromError(res.Error(), _s(res.Message()))

    def list_topics(self):
        def build(b):
            ListTopicsRequest.Start(b)
            return ListTopicsRequest.End(b)

        _, tab, _ = self._call(RequestBody.ListTopicsRequest, build)
        r = self._as(ListTopicsResponse.ListTopicsResponse, tab)
        return {_s(r.Topics(i).Name()): r.Topics(i).Partitions() for i in range(r.TopicsLength())}

    def partition_count(self, topic):
        def build(b):
            names = _string_vector(b, DescribeTopicsRequest.StartNamesVector, [topic])
            DescribeTopicsRequest.Start(b)
            DescribeTopicsRequest.AddNames(b, names)
            return DescribeTopicsRequest.End(b)

        _, tab, _ = self._call(RequestBody.DescribeTopicsRequest, build)
        r = self._as(DescribeTopicsResponse.DescribeTopicsResponse, tab)
        for i in range(r.TopicsLength()):
            t = r.Topics(i)
            if _s(t.Name()) == topic:
                if t.Error() != 0:
                    raise StromError(t.Error(), _s(t.Message()))
                owners = [0] * t.PartitionsLength()
                for j in range(t.PartitionsLength()):
                    p = t.Partitions(j)
                    if p.Partition() < len(owners):
                        owners[p.Partition()] = p.OwnerShard()
                self._owners[topic] = owners
                return t.PartitionsLength()
        raise StromError(ErrorCode.UnknownTopic, topic)

    # --------------------------------------------------------- produce

    def produce(self, topic, partition, records, acks=ACKS_LEADER, timeout_ms=30_000):
        """Sends one batch; returns its base offset (None with acks none)."""
        frame = build_frame(records)

        def build(b):
            t = b.CreateString(topic)
            ProduceBatch.Start(b)
            ProduceBatch.AddTopic(b, t)
            ProduceBatch.AddPartition(b, partition)
            ProduceBatch.AddBatchLen(b, len(frame))
            pb = ProduceBatch.End(b)
            batches = _table_vector(b, ProduceRequest.StartBatchesVector, [pb])
            ProduceRequest.Start(b)
            ProduceRequest.AddAcks(b, acks)
            ProduceRequest.AddTimeoutMs(b, timeout_ms)
            ProduceRequest.AddBatches(b, batches)
            return ProduceRequest.End(b)

        conn = self._conn_for(topic, partition)
        _, tab, _ = conn._call(RequestBody.ProduceRequest, build, frame, expect_response=acks != ACKS_NONE)
        if tab is None:
            return None
        r = self._as(ProduceResponse.ProduceResponse, tab).Results(0)
        if r.Error() != 0:
            raise StromError(r.Error(), _s(r.Message()))
        return r.BaseOffset()

    # ----------------------------------------------------------- fetch

    def list_offset(self, topic, partition, timestamp):
        def build(b):
            t = b.CreateString(topic)
            ListOffsetsPartition.Start(b)
            ListOffsetsPartition.AddTopic(b, t)
            ListOffsetsPartition.AddPartition(b, partition)
            ListOffsetsPartition.AddTimestamp(b, timestamp)
            p = ListOffsetsPartition.End(b)
            parts = _table_vector(b, ListOffsetsRequest.StartPartitionsVector, [p])
            ListOffsetsRequest.Start(b)
            ListOffsetsRequest.AddPartitions(b, parts)
            return ListOffsetsRequest.End(b)

        _, tab, _ = self._conn_for(topic, partition)._call(RequestBody.ListOffsetsRequest, build)
        r = self._as(ListOffsetsResponse.ListOffsetsResponse, tab).Results(0)
        if r.Error() != 0:
            raise StromError(r.Error(), _s(r.Message()))
        return r.Offset()

    def fetch(self, topic, partition, offset, max_wait_ms=500, min_bytes=1, max_bytes=4 << 20):
        """Long-poll fetch of one partition: ([ReadRecord at >= offset], high_watermark)."""

        def build(b):
            t = b.CreateString(topic)
            FetchPartition.Start(b)
            FetchPartition.AddTopic(b, t)
            FetchPartition.AddPartition(b, partition)
            FetchPartition.AddOffset(b, offset)
            FetchPartition.AddPartitionMaxBytes(b, max_bytes)
            p = FetchPartition.End(b)
            parts = _table_vector(b, FetchRequest.StartPartitionsVector, [p])
            FetchRequest.Start(b)
            FetchRequest.AddMaxWaitMs(b, max_wait_ms)
            FetchRequest.AddMinBytes(b, min_bytes)
            FetchRequest.AddMaxBytes(b, max_bytes)
            FetchRequest.AddPartitions(b, parts)
            return FetchRequest.End(b)

        _, tab, trailer = self._conn_for(topic, partition)._call(RequestBody.FetchRequest, build)
        r = self._as(FetchResponse.FetchResponse, tab).Results(0)
        if r.Error() != 0:
            raise StromError(r.Error(), _s(r.Message()))
        blob = trailer[:r.BytesLen()]
        records = [rec for rec in read_frames(blob) if rec.offset >= offset]
        return records, r.HighWatermark()


# -------------------------------------------------------------------- CLI

def _render(template, partition, rec):
    fields = {
        "key": rec.key if rec.key is not None else b"null",
        "value": rec.value if rec.value is not None else b"null",
        "offset": str(rec.offset).encode(),
        "partition": str(partition).encode(),
        "timestamp": str(rec.timestamp_ms).encode(),
        "headers": b",".join(k.encode() + b"=" + v for k, v in rec.headers),
    }
    out = template.replace("\\t", "\t").replace("\\n", "\n").encode()
    for name, value in fields.items():
        out = out.replace(b"{" + name.encode() + b"}", value)
    return out + b"\n"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="strom_client.py", description="Minimal Strom client (Python)")
    ap.add_argument("--server", default=os.environ.get("STROM_SERVER") or "127.0.0.1:9400")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create")
    c.add_argument("topic")
    c.add_argument("--partitions", type=int, default=1)
    sub.add_parser("list")
    p = sub.add_parser("produce")
    p.add_argument("topic")
    p.add_argument("--partition", type=int)
    p.add_argument("--key-separator")
    p.add_argument("--acks", choices=["none", "leader", "durable"], default="leader")
    k = sub.add_parser("consume")
    k.add_argument("topic")
    k.add_argument("--partition", type=int)
    k.add_argument("--from-beginning", action="store_true")
    k.add_argument("--offset", type=int)
    k.add_argument("--count", type=int)
    k.add_argument("--format", default="{value}")
    args = ap.parse_args(argv)

    try:
        client = StromClient(args.server)
        out = sys.stdout.buffer
        if args.cmd == "create":
            client.create_topic(args.topic, args.partitions)
            print("Created topic %s." % args.topic)
        elif args.cmd == "list":
            for name in sorted(client.list_topics()):
                print(name)
        elif args.cmd == "produce":
            n = client.partition_count(args.topic)
            acks = {"none": ACKS_NONE, "leader": ACKS_LEADER, "durable": ACKS_DURABLE}[args.acks]
            sep = args.key_separator.encode() if args.key_separator else None
            # One batch per partition, for every line of stdin.
            per = {}
            order = []
            rr = 0
            for line in sys.stdin.buffer.read().splitlines():
                key, value = None, line
                if sep and sep in line:
                    key, value = line.split(sep, 1)
                if args.partition is not None:
                    part = args.partition
                elif key is not None:
                    part = partition_for_key(key, n)
                else:
                    part, rr = rr % n, rr + 1
                batch = per.setdefault(part, [])
                order.append((part, len(batch)))
                batch.append(Record(key, value))
            bases = {}
            for part in sorted(per):
                bases[part] = client.produce(args.topic, part, per[part], acks=acks)
            # "PARTITION OFFSET" per input line, in input order.
            for part, index in order:
                if bases[part] is not None:
                    out.write(b"%d %d\n" % (part, bases[part] + index))
        elif args.cmd == "consume":
            n = client.partition_count(args.topic)
            parts = [args.partition] if args.partition is not None else list(range(n))
            pos = {}
            for part in parts:
                if args.offset is not None:
                    pos[part] = args.offset
                else:
                    which = LIST_OFFSETS_EARLIEST if args.from_beginning else LIST_OFFSETS_LATEST
                    pos[part] = client.list_offset(args.topic, part, which)
            printed = 0
            while args.count is None or printed < args.count:
                got = False
                for part in parts:
                    records, _ = client.fetch(args.topic, part, pos[part], max_wait_ms=100)
                    for rec in records:
                        if args.count is not None and printed >= args.count:
                            break
                        out.write(_render(args.format, part, rec))
                        printed += 1
                        pos[part] = rec.offset + 1
                        got = True
                if got:
                    out.flush()
        out.flush()
        return 0
    except (StromError, OSError, ValueError) as e:
        print("strom_client.py: %s" % e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
