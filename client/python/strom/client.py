"""``Client``: metadata, routing and the admin operations; ``Admin`` is its public face.

Routing (docs/protocol.md): on a single node, a partition's produce, fetch
and list-offsets go to the shard that owns it, over that shard's own port
(``shard_ports`` from the handshake, owners from DescribeTopics), so they
never cross cores in the server; in a cluster (handshake ``node_id != 0``)
they go to the partition's leader at the address the handshake lists for
it. Metadata, topic changes, groups and producer ids use the main
connection. A connection that cannot be made falls back to the main one.

Limits: at most ``CONNECTIONS_MAX`` routed connections; metadata of a topic
is refreshed when a request meets ``NotLeader``, ``LeaderNotAvailable``,
``PartitionUnavailable`` or ``UnknownPartition`` (``forget``).
"""

from __future__ import annotations

import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from strom import wire
from strom.connection import REQUEST_TIMEOUT_MS, Connection, check_all, split_addr
from strom.errors import ConnectionClosed, ErrorCode, ProtocolError, StromError
from strom.frames import ConsumerRecord, decode_frames, encode_frame
from strom.protocol.ResponseBody import ResponseBody

__all__ = ["Client", "Admin", "EARLIEST", "LATEST"]

CONNECTIONS_MAX = 64
EARLIEST, LATEST = wire.LIST_OFFSETS_EARLIEST, wire.LIST_OFFSETS_LATEST

RecordIn = Tuple[Optional[bytes], Optional[bytes], Optional[Sequence[Tuple[str, bytes]]], Optional[int]]


class Client:
    """A connection to a Strom server (or cluster) with routing and metadata.

    ``bootstrap``: ``"host:port"`` or several, comma-separated; the first that
    answers the handshake becomes the main connection.
    """

    def __init__(
        self,
        bootstrap: str = "127.0.0.1:9400",
        *,
        client_name: str = "strom-python",
        request_timeout_ms: int = REQUEST_TIMEOUT_MS,
        direct: bool = True,
    ):
        self.client_name = client_name
        self.request_timeout_ms = request_timeout_ms
        self.direct = direct
        self._bootstrap = [a.strip() for a in bootstrap.split(",") if a.strip()]
        self.main = self._connect_main()
        self.info = self.main.info
        self._host = split_addr(self.main.addr)[0]
        self._routed: Dict[str, Optional[Connection]] = {}
        self._meta: Dict[str, wire.TopicInfo] = {}

    def _connect_main(self) -> Connection:
        errors = []
        for addr in self._bootstrap:
            try:
                return self._connect(addr)
            except (ConnectionClosed, OSError) as e:
                errors.append(str(e))
        raise ConnectionClosed("no bootstrap server answered: %s" % "; ".join(errors or ["no address"]))

    def ensure_main(self) -> Connection:
        """The main connection, made again (from the bootstrap list) if it broke."""
        if self.main.closed:
            self.main = self._connect_main()
            self.info = self.main.info
        return self.main

    def _connect(self, addr: str) -> Connection:
        return Connection(addr, client_name=self.client_name, request_timeout_ms=self.request_timeout_ms)

    def close(self) -> None:
        for c in self._routed.values():
            if c is not None:
                c.close()
        self._routed.clear()
        self.main.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------- routing

    @property
    def cluster(self) -> bool:
        return self.info.node_id != 0

    def topic(self, name: str, refresh: bool = False) -> wire.TopicInfo:
        """The topic's description (cached; ``refresh`` asks the server again)."""
        t = self._meta.get(name)
        if t is None or refresh:
            found = self.describe_topics([name])
            t = found[0] if found else None
            if t is None or t.error:
                raise StromError(t.error if t else ErrorCode.UnknownTopic, t.message if t else "", topic=name)
        return t

    def partition_count(self, name: str) -> int:
        return len(self.topic(name).partitions)

    def forget(self, name: str) -> None:
        """Drops the cached metadata of a topic (after a leader or partition error)."""
        self._meta.pop(name, None)

    def _route_addr(self, topic: str, partition: int) -> Optional[str]:
        if not self.direct:
            return None
        try:
            t = self.topic(topic)
        except ProtocolError:
            raise
        except (StromError, OSError):
            return None
        if partition >= len(t.partitions):
            return None
        p = t.partitions[partition]
        if self.cluster:
            if p.leader_node == 0 or p.leader_node == self.info.node_id:
                return None
            addr = self.info.nodes.get(p.leader_node, "")
            return addr or None
        ports = self.info.shard_ports
        if p.owner_shard == self.info.shard_id or p.owner_shard >= len(ports):
            return None
        return "%s:%d" % (self._host, ports[p.owner_shard])

    def connection_for(self, topic: str, partition: int) -> Connection:
        """The connection that reaches the partition's owner (or leader) directly.

        A connection that cannot be made is not remembered (the next call
        tries again) and the request goes to the main connection, which
        refuses it unless its node leads (then the topic is described again).
        """
        addr = self._route_addr(topic, partition)
        if addr is None:
            return self.ensure_main()
        c = self._routed.get(addr)
        if c is not None and not c.closed:
            return c
        self._routed.pop(addr, None)
        if len(self._routed) >= CONNECTIONS_MAX:
            return self.ensure_main()
        try:
            c = self._connect(addr)
        except (ConnectionClosed, OSError):
            self.forget(topic)
            return self.ensure_main()
        self._routed[addr] = c
        return c

    def _next_main(self) -> None:
        """Moves the main connection to the next node (cluster mode, by id, wrapping)."""
        nodes = sorted(self.info.nodes.items())
        if not nodes:
            return
        ids = [i for i, _ in nodes]
        start = ids.index(self.info.node_id) + 1 if self.info.node_id in ids else 0
        host = split_addr(self.main.addr)[0]
        for k in range(len(ids)):
            node_id, addr = nodes[(start + k) % len(ids)]
            if node_id == self.info.node_id:
                continue
            try:
                c = self._connect(addr or "%s:%d" % (host, split_addr(self.main.addr)[1]))
            except (ConnectionClosed, OSError):
                continue
            self.main.close()
            self.main, self.info = c, c.info
            return

    def _topic_change(self, req: Tuple[int, wire.BodyFn], body_type: int) -> None:
        """Sends a topic change to the controller: ``NotController`` moves the main
        connection to the next node and sends it again, until the request timeout."""
        deadline = time.monotonic() + self.request_timeout_ms / 1000
        backoff = 0.02
        while True:
            results = wire.read_topic_results(self.ensure_main().call(req), body_type)
            refused = [e for e in results.values() if e is not None and e.code == ErrorCode.NotController]
            if not refused or not self.cluster or time.monotonic() >= deadline:
                check_all(results)
                return
            self._next_main()
            time.sleep(backoff)
            backoff = min(backoff * 2, 0.5)

    # ------------------------------------------------------------ topics

    def create_topic(self, name: str, partitions: int = 1, configs: Optional[Mapping[str, str]] = None) -> None:
        self.create_topics([(name, partitions, dict(configs or {}))])

    def create_topics(self, topics: Sequence[Tuple[str, int, Mapping[str, str]]]) -> None:
        self._topic_change(wire.create_topics(topics), ResponseBody.CreateTopicsResponse)

    def delete_topics(self, names: Sequence[str]) -> None:
        for n in names:
            self.forget(n)
        self._topic_change(wire.delete_topics(names), ResponseBody.DeleteTopicsResponse)

    def create_partitions(self, name: str, total: int) -> None:
        self.forget(name)
        self._topic_change(wire.create_partitions([(name, total)]), ResponseBody.CreatePartitionsResponse)

    def list_topics(self) -> Dict[str, int]:
        """Topic name -> partition count."""
        return wire.read_list_topics(self.ensure_main().call(wire.list_topics()))

    def describe_topics(self, names: Sequence[str] = ()) -> List[wire.TopicInfo]:
        """Descriptions (every topic when ``names`` is empty); refreshes the metadata cache."""
        out = wire.read_describe_topics(self.ensure_main().call(wire.describe_topics(names)))
        for t in out:
            if not t.error:
                self._meta[t.name] = t
        return out

    # ---------------------------------------------------- data, one-shot

    def _partition_error(self, e: StromError) -> None:
        if e.topic is not None and e.code in (
            ErrorCode.NotLeader,
            ErrorCode.LeaderNotAvailable,
            ErrorCode.PartitionUnavailable,
            ErrorCode.UnknownPartition,
        ):
            self.forget(e.topic)

    def list_offset(self, topic: str, partition: int, spec: int = LATEST) -> int:
        """``EARLIEST`` (-2), ``LATEST`` (-1, the high watermark) or the first offset at a timestamp (ms)."""
        msg = self.connection_for(topic, partition).call(wire.list_offsets([(topic, partition, spec)]))
        for t, p, code, message, offset in wire.read_list_offsets(msg):
            if code:
                e = StromError(code, message, topic=t, partition=p)
                self._partition_error(e)
                raise e
            return offset
        raise StromError(ErrorCode.Internal, "empty list-offsets answer", topic=topic, partition=partition)

    def produce(
        self, topic: str, partition: int, records: Sequence[RecordIn], acks: int = wire.ACKS_LEADER
    ) -> Optional[int]:
        """Produces one batch synchronously; its base offset (None with acks=none).

        ``records``: ``(key, value, headers, timestamp_ms or None)``. The
        ``Producer`` batches, retries and pipelines; this is the one-shot form.
        """
        frame = encode_frame(records)
        conn = self.connection_for(topic, partition)
        req = wire.produce(acks, self.request_timeout_ms, [(topic, partition, len(frame))])
        if acks == wire.ACKS_NONE:
            conn.send(req, [frame], expect_response=False)
            return None
        try:
            (r,) = wire.read_produce(conn.call(req, [frame]), 1)
        except ProtocolError:
            conn.close()
            raise
        if r.error:
            e = StromError(r.error, r.message, topic=topic, partition=partition)
            self._partition_error(e)
            raise e
        return r.base_offset

    def fetch(
        self,
        topic: str,
        partition: int,
        offset: int,
        max_wait_ms: int = 0,
        max_bytes: int = 1 << 20,
    ) -> Tuple[List[ConsumerRecord], int]:
        """Records from ``offset`` on (one round trip, long-polling up to ``max_wait_ms``), and the high watermark."""
        conn = self.connection_for(topic, partition)
        msg = conn.call(
            wire.fetch(max_wait_ms, 1, max_bytes, [(topic, partition, offset, max_bytes)]),
            timeout_ms=self.request_timeout_ms + max_wait_ms,
        )
        try:
            (r,) = wire.read_fetch(msg, 1)
            if r.error:
                e = StromError(r.error, r.message, topic=topic, partition=partition)
                self._partition_error(e)
                raise e
            records, _ = decode_frames(r.frames, topic, partition, offset)
        except ProtocolError:
            conn.close()  # bytes that break the protocol: this connection is not trusted again
            raise
        return records, r.high_watermark

    # ------------------------------------------------------------ groups

    def list_groups(self) -> List[wire.GroupListing]:
        return wire.read_list_groups(self.ensure_main().call(wire.list_groups()))

    def describe_groups(self, groups: Sequence[str] = ()) -> List[wire.GroupInfo]:
        return wire.read_describe_groups(self.ensure_main().call(wire.describe_groups(groups)))

    def committed(self, group: str, partitions: Sequence[Tuple[str, int]] = ()) -> Dict[Tuple[str, int], int]:
        """The group's committed offsets (-1: none); every committed partition when empty."""
        return wire.read_offset_fetch(self.ensure_main().call(wire.offset_fetch(group, partitions)))

    def commit(
        self, group: str, offsets: Mapping[Tuple[str, int], int], member_id: str = "", generation: int = -1
    ) -> None:
        """Commits offsets (the next offset to read) for ``group``."""
        wire.read_commit_results(self.ensure_main().call(wire.offset_commit(group, offsets, member_id, generation)))

    def reset_offsets(
        self, group: str, topic: str, to: str = "earliest", offset: int = 0, partitions: Sequence[int] = ()
    ) -> None:
        """Sets a memberless group's offsets: ``to`` is "earliest", "latest" or "offset"."""
        code = {"earliest": wire.RESET_EARLIEST, "latest": wire.RESET_LATEST, "offset": wire.RESET_OFFSET}[to]
        msg = self.ensure_main().call(wire.reset_offsets(group, topic, partitions, code, offset))
        wire.read_commit_results(msg, ResponseBody.ResetOffsetsResponse)

    def init_producer_id(self, producer_id: int = -1, producer_epoch: int = -1) -> Tuple[int, int]:
        return wire.read_init_producer_id(self.ensure_main().call(wire.init_producer_id(producer_id, producer_epoch)))


class Admin(Client):
    """Topic and group administration: ``create_topic(s)``, ``delete_topics``,
    ``create_partitions``, ``list_topics``, ``describe_topics``, ``list_groups``,
    ``describe_groups``, ``committed``, ``reset_offsets`` (all from ``Client``)."""

    def __init__(self, bootstrap: str = "127.0.0.1:9400", **kwargs: object) -> None:
        kwargs.setdefault("client_name", "strom-python-admin")
        super().__init__(bootstrap, **kwargs)  # type: ignore[arg-type]
