"""The native protocol's messages (docs/protocol.md), without I/O.

Requests are built with the flatc-generated builders (``strom.protocol.*``);
responses are read with the bounds-checked reader of ``strom._fb``, which
checks every offset against the message before it is used. The connection
classes (``strom.connection`` for blocking sockets, ``strom.aio`` for
asyncio streams) only move the bytes these functions make and read.

Envelope: ``u32 total_len | u32 fb_len | Request/Response table | trailer``,
little-endian; ``4 <= total_len <= RESPONSE_BYTES_MAX`` and
``fb_len <= min(total_len - 4, TABLE_BYTES_MAX)`` are checked before a byte
of the body is read (``parse_envelope_head``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from flatbuffers.builder import Builder

from strom._fb import Table, root
from strom.errors import ErrorCode, ProtocolError, StromError
from strom.protocol import (
    ApiVersionsRequest,
    ConfigEntry,
    CreatePartitionsRequest,
    CreateTopic,
    CreateTopicsRequest,
    DeleteTopicsRequest,
    DescribeGroupsRequest,
    DescribeTopicsRequest,
    FetchPartition,
    FetchRequest,
    GroupProtocol,
    HeartbeatRequest,
    InitProducerIdRequest,
    JoinGroupRequest,
    LeaveGroupRequest,
    ListGroupsRequest,
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListTopicsRequest,
    OffsetCommitPartition,
    OffsetCommitRequest,
    OffsetFetchPartition,
    OffsetFetchRequest,
    PartitionsIncrease,
    ProduceBatch,
    ProduceRequest,
    Request,
    ResetOffsetsRequest,
    SyncGroupRequest,
)
from strom.protocol.RequestBody import RequestBody
from strom.protocol.ResponseBody import ResponseBody

PROTOCOL_VERSION = 1
#: Largest message accepted from a server before the handshake told its own
#: maximum (one 64 MiB frame plus 1 MiB, the server's default).
RESPONSE_BYTES_MAX = (64 << 20) + (1 << 20)
#: Largest FlatBuffers table in a message (docs/protocol.md).
TABLE_BYTES_MAX = 4 << 20
ENVELOPE = struct.Struct("<II")

ACKS_NONE, ACKS_LEADER, ACKS_DURABLE = 0, 1, -1
LIST_OFFSETS_EARLIEST, LIST_OFFSETS_LATEST = -2, -1


BodyFn = Callable[[Builder], int]


# ------------------------------------------------------------------ envelope


def encode_request(correlation_id: int, body_type: int, build: BodyFn, trailer_len: int = 0) -> bytes:
    """Envelope head plus ``Request`` table; the caller sends ``trailer_len`` trailer bytes after it."""
    b = Builder(256)
    body = build(b)
    Request.Start(b)
    Request.AddCorrelationId(b, correlation_id)
    Request.AddBodyType(b, body_type)
    Request.AddBody(b, body)
    b.Finish(Request.End(b))
    table = b.Output()
    return ENVELOPE.pack(4 + len(table) + trailer_len, len(table)) + bytes(table)


def parse_envelope_head(head: bytes, message_bytes_max: int = RESPONSE_BYTES_MAX) -> Tuple[int, int]:
    """(bytes after the length field, table bytes), checked before anything is read."""
    total, fb_len = ENVELOPE.unpack(head)
    if total < 4 or total > message_bytes_max:
        raise ProtocolError("message length %d outside 4..=%d" % (total, message_bytes_max))
    if fb_len > total - 4 or fb_len > TABLE_BYTES_MAX or fb_len < 8:
        raise ProtocolError("table length %d invalid for a %d-byte message" % (fb_len, total))
    return total, fb_len


@dataclass
class Message:
    """A framed response: its correlation id, body type and body table, and trailer."""

    correlation_id: int
    body_type: int
    body: Table
    trailer: memoryview


def parse_response(rest: bytes | bytearray, fb_len: int) -> Message:
    """``rest`` = the bytes after ``total_len`` minus the fb_len field (table + trailer)."""
    view = memoryview(rest)
    table = bytes(view[:fb_len])
    r = root(table)
    cid = r.scalar(0, "Q")
    body_type = r.scalar(1, "B")
    body = r.table(2)
    if body is None:
        raise ProtocolError("response %d has no body" % cid)
    return Message(cid, body_type, body, view[fb_len:])


def expect(msg: Message, body_type: int) -> Table:
    """The body of ``msg``, which must be ``body_type`` (an ErrorResponse raises)."""
    if msg.body_type == ResponseBody.ErrorResponse:
        raise StromError(msg.body.scalar(0, "h"), msg.body.string(1))
    if msg.body_type != body_type:
        raise ProtocolError("response body type %d, expected %d" % (msg.body_type, body_type))
    if body_type not in (ResponseBody.FetchResponse,) and len(msg.trailer):
        raise ProtocolError("unexpected %d-byte trailer" % len(msg.trailer))
    return msg.body


def _check(code: int, message: str, topic: Optional[str] = None, partition: Optional[int] = None) -> None:
    if code != 0:
        raise StromError(code, message, topic=topic, partition=partition)


# ------------------------------------------------------------------- helpers


def _strings(b: Builder, start: Callable[[Builder, int], None], items: Sequence[str]) -> int:
    offs = [b.CreateString(s) for s in items]
    start(b, len(offs))
    for o in reversed(offs):
        b.PrependUOffsetTRelative(o)
    return b.EndVector()


def _tables(b: Builder, start: Callable[[Builder, int], None], offs: Sequence[int]) -> int:
    start(b, len(offs))
    for o in reversed(offs):
        b.PrependUOffsetTRelative(o)
    return b.EndVector()


def _configs(b: Builder, configs: Mapping[str, str]) -> List[int]:
    out = []
    for k, v in configs.items():
        ko, vo = b.CreateString(k), b.CreateString(v)
        ConfigEntry.Start(b)
        ConfigEntry.AddKey(b, ko)
        ConfigEntry.AddValue(b, vo)
        out.append(ConfigEntry.End(b))
    return out


# ----------------------------------------------------------------- handshake


@dataclass
class ServerInfo:
    """What the ApiVersions handshake told about the server."""

    server_version: str
    message_bytes_max: int
    frame_bytes_max: int
    inflight_requests_max: int
    fetch_partitions_max: int
    fetch_wait_max_ms: int
    shard_count: int
    shard_id: int
    shard_ports: List[int]
    node_id: int
    nodes: Dict[int, str]


def api_versions(client_name: str) -> Tuple[int, BodyFn]:
    def build(b: Builder) -> int:
        name = b.CreateString(client_name)
        ApiVersionsRequest.Start(b)
        ApiVersionsRequest.AddClientName(b, name)
        ApiVersionsRequest.AddMinVersion(b, PROTOCOL_VERSION)
        ApiVersionsRequest.AddMaxVersion(b, PROTOCOL_VERSION)
        return ApiVersionsRequest.End(b)

    return RequestBody.ApiVersionsRequest, build


def read_api_versions(msg: Message) -> ServerInfo:
    t = expect(msg, ResponseBody.ApiVersionsResponse)
    _check(t.scalar(0, "h"), t.string(1))
    lo, hi = t.scalar(2, "H"), t.scalar(3, "H")
    if not lo <= PROTOCOL_VERSION <= hi:
        raise StromError(ErrorCode.UnsupportedVersion, "server speaks versions %d..%d" % (lo, hi))
    nodes = {n.scalar(0, "Q"): n.string(1) for n in t.tables(14)}
    return ServerInfo(
        server_version=t.string(9),
        message_bytes_max=min(t.scalar(4, "I") or RESPONSE_BYTES_MAX, RESPONSE_BYTES_MAX),
        frame_bytes_max=t.scalar(5, "I"),
        inflight_requests_max=t.scalar(6, "I"),
        fetch_partitions_max=t.scalar(7, "I"),
        fetch_wait_max_ms=t.scalar(8, "I"),
        shard_count=t.scalar(10, "H"),
        shard_id=t.scalar(11, "H"),
        shard_ports=t.scalars(12, "H"),
        node_id=t.scalar(13, "Q"),
        nodes=nodes,
    )


# -------------------------------------------------------------------- topics


@dataclass
class PartitionInfo:
    partition: int
    error: int
    message: str
    log_start_offset: int
    high_watermark: int
    owner_shard: int
    leader_node: int
    leader_epoch: int


@dataclass
class TopicInfo:
    name: str
    error: int
    message: str
    configs: Dict[str, str]
    partitions: List[PartitionInfo] = field(default_factory=list)


def create_topics(topics: Sequence[Tuple[str, int, Mapping[str, str]]]) -> Tuple[int, BodyFn]:
    def build(b: Builder) -> int:
        offs = []
        for name, partitions, configs in topics:
            cfg = _tables(b, CreateTopic.StartConfigsVector, _configs(b, configs))
            n = b.CreateString(name)
            CreateTopic.Start(b)
            CreateTopic.AddName(b, n)
            CreateTopic.AddPartitions(b, partitions)
            CreateTopic.AddConfigs(b, cfg)
            offs.append(CreateTopic.End(b))
        vec = _tables(b, CreateTopicsRequest.StartTopicsVector, offs)
        CreateTopicsRequest.Start(b)
        CreateTopicsRequest.AddTopics(b, vec)
        return CreateTopicsRequest.End(b)

    return RequestBody.CreateTopicsRequest, build


def delete_topics(names: Sequence[str]) -> Tuple[int, BodyFn]:
    def build(b: Builder) -> int:
        vec = _strings(b, DeleteTopicsRequest.StartNamesVector, names)
        DeleteTopicsRequest.Start(b)
        DeleteTopicsRequest.AddNames(b, vec)
        return DeleteTopicsRequest.End(b)

    return RequestBody.DeleteTopicsRequest, build


def create_partitions(increases: Sequence[Tuple[str, int]]) -> Tuple[int, BodyFn]:
    def build(b: Builder) -> int:
        offs = []
        for name, total in increases:
            n = b.CreateString(name)
            PartitionsIncrease.Start(b)
            PartitionsIncrease.AddName(b, n)
            PartitionsIncrease.AddTotal(b, total)
            offs.append(PartitionsIncrease.End(b))
        vec = _tables(b, CreatePartitionsRequest.StartTopicsVector, offs)
        CreatePartitionsRequest.Start(b)
        CreatePartitionsRequest.AddTopics(b, vec)
        return CreatePartitionsRequest.End(b)

    return RequestBody.CreatePartitionsRequest, build


def read_topic_results(msg: Message, body_type: int) -> Dict[str, StromError | None]:
    """Per topic: None when it succeeded, else its error."""
    t = expect(msg, body_type)
    out: Dict[str, StromError | None] = {}
    for r in t.tables(0):
        name, code = r.string(0), r.scalar(1, "h")
        out[name] = StromError(code, r.string(2), topic=name) if code else None
    return out


def list_topics() -> Tuple[int, BodyFn]:
    def build(b: Builder) -> int:
        ListTopicsRequest.Start(b)
        return ListTopicsRequest.End(b)

    return RequestBody.ListTopicsRequest, build


def read_list_topics(msg: Message) -> Dict[str, int]:
    t = expect(msg, ResponseBody.ListTopicsResponse)
    return {r.string(0): r.scalar(1, "I") for r in t.tables(0)}


def describe_topics(names: Sequence[str]) -> Tuple[int, BodyFn]:
    def build(b: Builder) -> int:
        vec = _strings(b, DescribeTopicsRequest.StartNamesVector, names) if names else None
        DescribeTopicsRequest.Start(b)
        if vec is not None:
            DescribeTopicsRequest.AddNames(b, vec)
        return DescribeTopicsRequest.End(b)

    return RequestBody.DescribeTopicsRequest, build


def read_describe_topics(msg: Message) -> List[TopicInfo]:
    t = expect(msg, ResponseBody.DescribeTopicsResponse)
    out = []
    for d in t.tables(0):
        parts = [
            PartitionInfo(
                p.scalar(0, "I"), p.scalar(1, "h"), p.string(2), p.scalar(3, "Q"), p.scalar(4, "Q"),
                p.scalar(5, "H"), p.scalar(6, "Q"), p.scalar(7, "Q"),
            )  # fmt: skip
            for p in d.tables(4)
        ]
        configs = {c.string(0): c.string(1) for c in d.tables(3)}
        out.append(TopicInfo(d.string(0), d.scalar(1, "h"), d.string(2), configs, parts))
    return out


# ------------------------------------------------------------ produce, fetch


@dataclass
class ProduceResult:
    topic: str
    partition: int
    error: int
    message: str
    base_offset: int
    last_offset: int
    append_time_ms: int


def produce(acks: int, timeout_ms: int, batches: Sequence[Tuple[str, int, int]]) -> Tuple[int, BodyFn]:
    """``batches``: (topic, partition, frame length), in trailer order."""

    def build(b: Builder) -> int:
        offs = []
        names: Dict[str, int] = {}
        for topic, partition, length in batches:
            n = names.get(topic)
            if n is None:
                n = names[topic] = b.CreateString(topic)
            ProduceBatch.Start(b)
            ProduceBatch.AddTopic(b, n)
            ProduceBatch.AddPartition(b, partition)
            ProduceBatch.AddBatchLen(b, length)
            offs.append(ProduceBatch.End(b))
        vec = _tables(b, ProduceRequest.StartBatchesVector, offs)
        ProduceRequest.Start(b)
        ProduceRequest.AddAcks(b, acks)
        ProduceRequest.AddTimeoutMs(b, timeout_ms)
        ProduceRequest.AddBatches(b, vec)
        return ProduceRequest.End(b)

    return RequestBody.ProduceRequest, build


def read_produce(msg: Message, expected: int) -> List[ProduceResult]:
    t = expect(msg, ResponseBody.ProduceResponse)
    out = [
        ProduceResult(
            r.string(0), r.scalar(1, "I"), r.scalar(2, "h"), r.string(3), r.scalar(4, "Q"), r.scalar(5, "Q"),
            r.scalar(6, "q"),
        )  # fmt: skip
        for r in t.tables(0)
    ]
    if len(out) != expected:
        raise ProtocolError("produce response has %d results for %d batches" % (len(out), expected))
    return out


@dataclass
class FetchResult:
    topic: str
    partition: int
    error: int
    message: str
    high_watermark: int
    log_start_offset: int
    frames: memoryview


def fetch(
    max_wait_ms: int, min_bytes: int, max_bytes: int, partitions: Sequence[Tuple[str, int, int, int]]
) -> Tuple[int, BodyFn]:
    """``partitions``: (topic, partition, offset, partition_max_bytes)."""

    def build(b: Builder) -> int:
        offs = []
        for topic, partition, offset, pmax in partitions:
            n = b.CreateString(topic)
            FetchPartition.Start(b)
            FetchPartition.AddTopic(b, n)
            FetchPartition.AddPartition(b, partition)
            FetchPartition.AddOffset(b, offset)
            FetchPartition.AddPartitionMaxBytes(b, pmax)
            offs.append(FetchPartition.End(b))
        vec = _tables(b, FetchRequest.StartPartitionsVector, offs)
        FetchRequest.Start(b)
        FetchRequest.AddMaxWaitMs(b, max_wait_ms)
        FetchRequest.AddMinBytes(b, min_bytes)
        FetchRequest.AddMaxBytes(b, max_bytes)
        FetchRequest.AddPartitions(b, vec)
        return FetchRequest.End(b)

    return RequestBody.FetchRequest, build


def read_fetch(msg: Message, expected: int) -> List[FetchResult]:
    """Cuts the trailer by each result's ``bytes_len``; the lengths must add up exactly."""
    t = expect(msg, ResponseBody.FetchResponse)
    out = []
    pos = 0
    trailer = msg.trailer
    for r in t.tables(0):
        n = r.scalar(6, "I")
        if pos + n > len(trailer):
            raise ProtocolError("fetch results declare more bytes than the trailer holds")
        out.append(
            FetchResult(
                r.string(0), r.scalar(1, "I"), r.scalar(2, "h"), r.string(3), r.scalar(4, "Q"), r.scalar(5, "Q"),
                trailer[pos : pos + n],
            )  # fmt: skip
        )
        pos += n
    if pos != len(trailer):
        raise ProtocolError("fetch trailer has %d bytes, results declare %d" % (len(trailer), pos))
    if len(out) != expected:
        raise ProtocolError("fetch response has %d results for %d partitions" % (len(out), expected))
    return out


def list_offsets(partitions: Sequence[Tuple[str, int, int]]) -> Tuple[int, BodyFn]:
    def build(b: Builder) -> int:
        offs = []
        for topic, partition, ts in partitions:
            n = b.CreateString(topic)
            ListOffsetsPartition.Start(b)
            ListOffsetsPartition.AddTopic(b, n)
            ListOffsetsPartition.AddPartition(b, partition)
            ListOffsetsPartition.AddTimestamp(b, ts)
            offs.append(ListOffsetsPartition.End(b))
        vec = _tables(b, ListOffsetsRequest.StartPartitionsVector, offs)
        ListOffsetsRequest.Start(b)
        ListOffsetsRequest.AddPartitions(b, vec)
        return ListOffsetsRequest.End(b)

    return RequestBody.ListOffsetsRequest, build


def read_list_offsets(msg: Message) -> List[Tuple[str, int, int, str, int]]:
    """(topic, partition, error, message, offset) per partition."""
    t = expect(msg, ResponseBody.ListOffsetsResponse)
    return [(r.string(0), r.scalar(1, "I"), r.scalar(2, "h"), r.string(3), r.scalar(4, "q", -1)) for r in t.tables(0)]


def init_producer_id(producer_id: int = -1, producer_epoch: int = -1) -> Tuple[int, BodyFn]:
    def build(b: Builder) -> int:
        InitProducerIdRequest.Start(b)
        InitProducerIdRequest.AddProducerId(b, producer_id)
        InitProducerIdRequest.AddProducerEpoch(b, producer_epoch)
        return InitProducerIdRequest.End(b)

    return RequestBody.InitProducerIdRequest, build


def read_init_producer_id(msg: Message) -> Tuple[int, int]:
    t = expect(msg, ResponseBody.InitProducerIdResponse)
    _check(t.scalar(0, "h"), t.string(1))
    return t.scalar(2, "q", -1), t.scalar(3, "h", -1)


# ------------------------------------------------------------ groups, offsets


def offset_commit(
    group: str, offsets: Mapping[Tuple[str, int], int], member_id: str = "", generation: int = -1
) -> Tuple[int, BodyFn]:
    def build(b: Builder) -> int:
        offs = []
        for (topic, partition), offset in offsets.items():
            n = b.CreateString(topic)
            OffsetCommitPartition.Start(b)
            OffsetCommitPartition.AddTopic(b, n)
            OffsetCommitPartition.AddPartition(b, partition)
            OffsetCommitPartition.AddOffset(b, offset)
            offs.append(OffsetCommitPartition.End(b))
        vec = _tables(b, OffsetCommitRequest.StartPartitionsVector, offs)
        g = b.CreateString(group)
        m = b.CreateString(member_id) if member_id else None
        OffsetCommitRequest.Start(b)
        OffsetCommitRequest.AddGroup(b, g)
        OffsetCommitRequest.AddPartitions(b, vec)
        if m is not None:
            OffsetCommitRequest.AddMemberId(b, m)
        OffsetCommitRequest.AddGeneration(b, generation)
        return OffsetCommitRequest.End(b)

    return RequestBody.OffsetCommitRequest, build


def read_commit_results(msg: Message, body_type: int = ResponseBody.OffsetCommitResponse) -> None:
    """Raises the first partition's error, if any."""
    t = expect(msg, body_type)
    if body_type == ResponseBody.ResetOffsetsResponse:
        _check(t.scalar(0, "h"), t.string(1))
        results = t.tables(2)
    else:
        results = t.tables(0)
    for r in results:
        _check(r.scalar(2, "h"), r.string(3), r.string(0), r.scalar(1, "I"))


def offset_fetch(group: str, partitions: Sequence[Tuple[str, int]]) -> Tuple[int, BodyFn]:
    def build(b: Builder) -> int:
        offs = []
        for topic, partition in partitions:
            n = b.CreateString(topic)
            OffsetFetchPartition.Start(b)
            OffsetFetchPartition.AddTopic(b, n)
            OffsetFetchPartition.AddPartition(b, partition)
            offs.append(OffsetFetchPartition.End(b))
        vec = _tables(b, OffsetFetchRequest.StartPartitionsVector, offs)
        g = b.CreateString(group)
        OffsetFetchRequest.Start(b)
        OffsetFetchRequest.AddGroup(b, g)
        OffsetFetchRequest.AddPartitions(b, vec)
        return OffsetFetchRequest.End(b)

    return RequestBody.OffsetFetchRequest, build


def read_offset_fetch(msg: Message) -> Dict[Tuple[str, int], int]:
    """Committed offset per partition; -1 when nothing was committed."""
    t = expect(msg, ResponseBody.OffsetFetchResponse)
    out = {}
    for r in t.tables(0):
        topic, partition = r.string(0), r.scalar(1, "I")
        _check(r.scalar(2, "h"), r.string(3), topic, partition)
        out[(topic, partition)] = r.scalar(4, "q", -1)
    return out


@dataclass
class JoinResult:
    error: int
    message: str
    generation: int
    protocol_name: str
    leader_id: str
    member_id: str


def join_group(
    group: str,
    member_id: str,
    client_id: str,
    topics: Sequence[str],
    strategy: str,
    session_timeout_ms: int,
    rebalance_timeout_ms: int,
) -> Tuple[int, BodyFn]:
    def build(b: Builder) -> int:
        name = b.CreateString(strategy)
        GroupProtocol.Start(b)
        GroupProtocol.AddName(b, name)
        proto = GroupProtocol.End(b)
        protos = _tables(b, JoinGroupRequest.StartProtocolsVector, [proto])
        tvec = _strings(b, JoinGroupRequest.StartTopicsVector, topics)
        g, m, c, pt = (b.CreateString(s) for s in (group, member_id, client_id, "consumer"))
        JoinGroupRequest.Start(b)
        JoinGroupRequest.AddGroup(b, g)
        JoinGroupRequest.AddMemberId(b, m)
        JoinGroupRequest.AddClientId(b, c)
        JoinGroupRequest.AddProtocolType(b, pt)
        JoinGroupRequest.AddProtocols(b, protos)
        JoinGroupRequest.AddSessionTimeoutMs(b, session_timeout_ms)
        JoinGroupRequest.AddRebalanceTimeoutMs(b, rebalance_timeout_ms)
        JoinGroupRequest.AddTopics(b, tvec)
        JoinGroupRequest.AddCoordinatorAssigns(b, True)
        return JoinGroupRequest.End(b)

    return RequestBody.JoinGroupRequest, build


def read_join_group(msg: Message) -> JoinResult:
    t = expect(msg, ResponseBody.JoinGroupResponse)
    return JoinResult(t.scalar(0, "h"), t.string(1), t.scalar(2, "i", -1), t.string(3), t.string(4), t.string(5))


def sync_group(group: str, member_id: str, generation: int) -> Tuple[int, BodyFn]:
    def build(b: Builder) -> int:
        g, m = b.CreateString(group), b.CreateString(member_id)
        SyncGroupRequest.Start(b)
        SyncGroupRequest.AddGroup(b, g)
        SyncGroupRequest.AddMemberId(b, m)
        SyncGroupRequest.AddGeneration(b, generation)
        return SyncGroupRequest.End(b)

    return RequestBody.SyncGroupRequest, build


def read_sync_group(msg: Message) -> Tuple[int, str, List[Tuple[str, int]]]:
    """(error, message, assigned (topic, partition) pairs)."""
    t = expect(msg, ResponseBody.SyncGroupResponse)
    parts = [(g.string(0), p) for g in t.tables(4) for p in g.scalars(1, "I")]
    return t.scalar(0, "h"), t.string(1), parts


def heartbeat(group: str, member_id: str, generation: int) -> Tuple[int, BodyFn]:
    def build(b: Builder) -> int:
        g, m = b.CreateString(group), b.CreateString(member_id)
        HeartbeatRequest.Start(b)
        HeartbeatRequest.AddGroup(b, g)
        HeartbeatRequest.AddMemberId(b, m)
        HeartbeatRequest.AddGeneration(b, generation)
        return HeartbeatRequest.End(b)

    return RequestBody.HeartbeatRequest, build


def read_error_pair(msg: Message, body_type: int) -> Tuple[int, str]:
    t = expect(msg, body_type)
    return t.scalar(0, "h"), t.string(1)


def leave_group(group: str, member_id: str) -> Tuple[int, BodyFn]:
    def build(b: Builder) -> int:
        vec = _strings(b, LeaveGroupRequest.StartMemberIdsVector, [member_id])
        g = b.CreateString(group)
        LeaveGroupRequest.Start(b)
        LeaveGroupRequest.AddGroup(b, g)
        LeaveGroupRequest.AddMemberIds(b, vec)
        return LeaveGroupRequest.End(b)

    return RequestBody.LeaveGroupRequest, build


@dataclass
class GroupListing:
    group: str
    state: str
    protocol_type: str
    members: int


def list_groups() -> Tuple[int, BodyFn]:
    def build(b: Builder) -> int:
        ListGroupsRequest.Start(b)
        return ListGroupsRequest.End(b)

    return RequestBody.ListGroupsRequest, build


def read_list_groups(msg: Message) -> List[GroupListing]:
    t = expect(msg, ResponseBody.ListGroupsResponse)
    return [GroupListing(g.string(0), g.string(1), g.string(2), g.scalar(3, "I")) for g in t.tables(0)]


@dataclass
class GroupMemberInfo:
    member_id: str
    client_id: str
    client_host: str
    topics: List[str]
    partitions: List[Tuple[str, int]]


@dataclass
class GroupOffsetInfo:
    topic: str
    partition: int
    committed_offset: int
    end_offset: int
    lag: int


@dataclass
class GroupInfo:
    group: str
    error: int
    message: str
    state: str
    protocol_type: str
    protocol_name: str
    generation: int
    leader_id: str
    members: List[GroupMemberInfo]
    offsets: List[GroupOffsetInfo]


def describe_groups(groups: Sequence[str]) -> Tuple[int, BodyFn]:
    def build(b: Builder) -> int:
        vec = _strings(b, DescribeGroupsRequest.StartGroupsVector, groups) if groups else None
        DescribeGroupsRequest.Start(b)
        if vec is not None:
            DescribeGroupsRequest.AddGroups(b, vec)
        return DescribeGroupsRequest.End(b)

    return RequestBody.DescribeGroupsRequest, build


def read_describe_groups(msg: Message) -> List[GroupInfo]:
    t = expect(msg, ResponseBody.DescribeGroupsResponse)
    out = []
    for g in t.tables(0):
        members = [
            GroupMemberInfo(
                m.string(0), m.string(1), m.string(2), m.strings(3),
                [(p.string(0), n) for p in m.tables(5) for n in p.scalars(1, "I")],
            )  # fmt: skip
            for m in g.tables(8)
        ]
        offsets = [
            GroupOffsetInfo(o.string(0), o.scalar(1, "I"), o.scalar(2, "q", -1), o.scalar(4, "q", -1), o.scalar(5, "q", -1))
            for o in g.tables(9)
        ]
        out.append(
            GroupInfo(
                g.string(0), g.scalar(1, "h"), g.string(2), g.string(3), g.string(4), g.string(5),
                g.scalar(6, "i"), g.string(7), members, offsets,
            )  # fmt: skip
        )
    return out


RESET_EARLIEST, RESET_LATEST, RESET_OFFSET = 0, 1, 2


def reset_offsets(group: str, topic: str, partitions: Sequence[int], to: int, offset: int = 0) -> Tuple[int, BodyFn]:
    def build(b: Builder) -> int:
        vec = None
        if partitions:
            ResetOffsetsRequest.StartPartitionsVector(b, len(partitions))
            for p in reversed(partitions):
                b.PrependUint32(p)
            vec = b.EndVector()
        g, t = b.CreateString(group), b.CreateString(topic)
        ResetOffsetsRequest.Start(b)
        ResetOffsetsRequest.AddGroup(b, g)
        ResetOffsetsRequest.AddTopic(b, t)
        if vec is not None:
            ResetOffsetsRequest.AddPartitions(b, vec)
        ResetOffsetsRequest.AddTo(b, to)
        ResetOffsetsRequest.AddOffset(b, offset)
        return ResetOffsetsRequest.End(b)

    return RequestBody.ResetOffsetsRequest, build
