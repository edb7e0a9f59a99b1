"""Asyncio variants: ``AsyncClient`` (admin and one-shot reads and writes),
``AsyncProducer`` and ``AsyncConsumer``, over asyncio streams.

They use the same I/O-free layers as the blocking classes (``strom.wire``
for messages, ``strom.frames`` for batch frames and their checks). One
``AsyncConnection`` pipelines any number of requests: a reader task reads
every response (length fields checked before the body is read, the body
through the bounds-checked reader) and resolves the future of its
correlation id; a response to an unknown id, a malformed message or a
broken socket fails every request in flight and closes the connection.

The producer keeps the blocking producer's rules (one batch per partition
in flight, resends of the same bytes for retriable errors until the
delivery timeout, idempotent sequences given back after a final refusal
that stored nothing); its one simplification: a refusal that would make the
blocking producer bump its epoch (``OutOfOrderSequence``,
``InvalidProducerEpoch``, ``DuplicateSequence``, or giving up on a batch an
attempt may have stored) fails that batch and makes the producer take a
new producer id before its next send (sequences restart at 0).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import time
from typing import Any, Awaitable, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

from strom import wire
from strom.client import EARLIEST, LATEST
from strom.connection import CONNECT_TIMEOUT_MS, REQUEST_TIMEOUT_MS, split_addr
from strom.consumer import _LEADER, _REJOIN, JOIN_ATTEMPTS_MAX, TopicPartition
from strom.errors import RETRIABLE, ConnectionClosed, ErrorCode, ProtocolError, StromError
from strom.frames import FRAME_RECORDS_MAX, ConsumerRecord, Header, decode_frames, encode_frame, partition_for_key
from strom.producer import _EPOCH_BUMP, _MAYBE_STORED, ACKS, RECORD_OVERHEAD_BYTES, RETRY_BACKOFF_MAX_MS, RecordMetadata
from strom.protocol.ResponseBody import ResponseBody

__all__ = ["AsyncConnection", "AsyncClient", "AsyncProducer", "AsyncConsumer"]

#: An assignment callback of the asyncio consumer: a function or a coroutine function.
AsyncAssignCallback = Callable[[List[Tuple[str, int]]], Union[None, Awaitable[Any]]]


class AsyncConnection:
    """One handshaken, pipelined connection (create with ``await AsyncConnection.connect(addr)``)."""

    def __init__(self, addr: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request_timeout_ms: int):
        self.addr = addr
        self.request_timeout_ms = request_timeout_ms
        self._reader = reader
        self._writer = writer
        self._next_cid = 1
        self._waiting: Dict[int, "asyncio.Future[wire.Message]"] = {}
        self._message_bytes_max = wire.RESPONSE_BYTES_MAX
        self.closed = False
        self._error: Optional[StromError] = None
        self._task = asyncio.get_running_loop().create_task(self._read_loop())
        self.info: wire.ServerInfo

    @classmethod
    async def connect(
        cls,
        addr: str,
        *,
        client_name: str = "strom-python-asyncio",
        request_timeout_ms: int = REQUEST_TIMEOUT_MS,
        connect_timeout_ms: int = CONNECT_TIMEOUT_MS,
    ) -> "AsyncConnection":
        host, port = split_addr(addr)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=1 << 20), connect_timeout_ms / 1000
            )
        except (OSError, asyncio.TimeoutError) as e:
            raise ConnectionClosed("cannot connect to %s: %s" % (addr, e)) from e
        conn = cls(addr, reader, writer, request_timeout_ms)
        try:
            conn.info = wire.read_api_versions(await conn.call(wire.api_versions(client_name)))
        except BaseException:
            conn.close()
            raise
        conn._message_bytes_max = conn.info.message_bytes_max
        return conn

    async def _read_loop(self) -> None:
        try:
            while True:
                head = await self._reader.readexactly(8)
                total, fb_len = wire.parse_envelope_head(head, self._message_bytes_max)
                body = await self._reader.readexactly(total - 4)
                msg = wire.parse_response(body, fb_len)
                fut = self._waiting.pop(msg.correlation_id, None)
                if fut is None:
                    raise ProtocolError("response to unknown request %d" % msg.correlation_id)
                if not fut.done():
                    fut.set_result(msg)
        except asyncio.CancelledError:
            self._fail(ConnectionClosed("connection to %s closed" % self.addr))
            raise
        except ProtocolError as e:
            self._fail(ProtocolError("from %s: %s (connection closed)" % (self.addr, e.message)))
        except (OSError, asyncio.IncompleteReadError) as e:
            self._fail(ConnectionClosed("connection to %s broke: %s" % (self.addr, e)))

    def _fail(self, e: StromError) -> None:
        self._error = e
        self.closed = True
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(e)
        self._waiting.clear()
        self._writer.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._task.cancel()
            self._writer.close()

    def send_nowait(
        self, req: Tuple[int, wire.BodyFn], trailer: Sequence[bytes] = (), expect_response: bool = True
    ) -> "Optional[asyncio.Future[wire.Message]]":
        """Writes a request into the stream's buffer; the future of its response."""
        if self.closed:
            raise self._error or ConnectionClosed("connection to %s is closed" % self.addr)
        cid = self._next_cid
        self._next_cid += 1
        body_type, build = req
        trailer_len = sum(len(t) for t in trailer)
        head = wire.encode_request(cid, body_type, build, trailer_len)
        if len(head) - 4 + trailer_len > self._message_bytes_max:
            raise ValueError("request of %d bytes exceeds the server's limit" % (len(head) + trailer_len))
        fut: "Optional[asyncio.Future[wire.Message]]" = None
        if expect_response:
            fut = asyncio.get_running_loop().create_future()
            self._waiting[cid] = fut
        self._writer.writelines([head, *trailer])
        return fut

    async def call(
        self, req: Tuple[int, wire.BodyFn], trailer: Sequence[bytes] = (), timeout_ms: Optional[int] = None
    ) -> wire.Message:
        fut = self.send_nowait(req, trailer)
        assert fut is not None
        try:
            await self._writer.drain()
        except OSError as e:
            self._fail(ConnectionClosed("connection to %s broke: %s" % (self.addr, e)))
        t = (timeout_ms if timeout_ms is not None else self.request_timeout_ms) / 1000
        try:
            return await asyncio.wait_for(fut, t)
        except asyncio.TimeoutError:
            self._fail(ConnectionClosed("no response from %s in %.1f s" % (self.addr, t)))
            raise ConnectionClosed("no response from %s in %.1f s" % (self.addr, t)) from None


class AsyncClient:
    """Asyncio counterpart of ``strom.Client`` (create with ``await AsyncClient.connect(...)``)."""

    def __init__(self, bootstrap: str, client_name: str, request_timeout_ms: int):
        self._bootstrap = [a.strip() for a in bootstrap.split(",") if a.strip()]
        self.client_name = client_name
        self.request_timeout_ms = request_timeout_ms
        self.main: AsyncConnection
        self._routed: Dict[str, Optional[AsyncConnection]] = {}
        self._meta: Dict[str, wire.TopicInfo] = {}

    @classmethod
    async def connect(
        cls,
        bootstrap: str = "127.0.0.1:9400",
        *,
        client_name: str = "strom-python-asyncio",
        request_timeout_ms: int = REQUEST_TIMEOUT_MS,
    ) -> "AsyncClient":
        c = cls(bootstrap, client_name, request_timeout_ms)
        c.main = await c._connect_main()
        return c

    async def _connect_main(self) -> AsyncConnection:
        errors = []
        for addr in self._bootstrap:
            try:
                return await AsyncConnection.connect(
                    addr, client_name=self.client_name, request_timeout_ms=self.request_timeout_ms
                )
            except ConnectionClosed as e:
                errors.append(str(e))
        raise ConnectionClosed("no bootstrap server answered: %s" % "; ".join(errors or ["no address"]))

    async def ensure_main(self) -> AsyncConnection:
        if self.main.closed:
            self.main = await self._connect_main()
        return self.main

    @property
    def info(self) -> wire.ServerInfo:
        return self.main.info

    def close(self) -> None:
        for c in self._routed.values():
            if c is not None:
                c.close()
        self._routed.clear()
        self.main.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def _call(self, req: Tuple[int, wire.BodyFn]) -> wire.Message:
        return await (await self.ensure_main()).call(req)

    async def topic(self, name: str, refresh: bool = False) -> wire.TopicInfo:
        t = self._meta.get(name)
        if t is None or refresh:
            found = await self.describe_topics([name])
            t = found[0] if found else None
            if t is None or t.error:
                raise StromError(t.error if t else ErrorCode.UnknownTopic, t.message if t else "", topic=name)
        return t

    async def partition_count(self, name: str) -> int:
        return len((await self.topic(name)).partitions)

    def forget(self, name: str) -> None:
        self._meta.pop(name, None)

    async def connection_for(self, topic: str, partition: int) -> AsyncConnection:
        main = await self.ensure_main()
        try:
            t = await self.topic(topic)
        except ProtocolError:
            raise
        except StromError:
            return main
        if partition >= len(t.partitions):
            return main
        p, info = t.partitions[partition], main.info
        addr: Optional[str] = None
        if info.node_id:
            if p.leader_node not in (0, info.node_id):
                addr = info.nodes.get(p.leader_node) or None
        elif p.owner_shard != info.shard_id and p.owner_shard < len(info.shard_ports):
            addr = "%s:%d" % (split_addr(main.addr)[0], info.shard_ports[p.owner_shard])
        if addr is None:
            return main
        c = self._routed.get(addr)
        if c is None or c.closed:
            try:
                c = await AsyncConnection.connect(
                    addr, client_name=self.client_name, request_timeout_ms=self.request_timeout_ms
                )
            except ConnectionClosed:
                c = None
            self._routed[addr] = c
        return c or main

    async def create_topic(self, name: str, partitions: int = 1, configs: Optional[Mapping[str, str]] = None) -> None:
        msg = await self._call(wire.create_topics([(name, partitions, dict(configs or {}))]))
        for e in wire.read_topic_results(msg, ResponseBody.CreateTopicsResponse).values():
            if e is not None:
                raise e

    async def delete_topics(self, names: Sequence[str]) -> None:
        for n in names:
            self.forget(n)
        for e in wire.read_topic_results(await self._call(wire.delete_topics(names)), ResponseBody.DeleteTopicsResponse).values():
            if e is not None:
                raise e

    async def list_topics(self) -> Dict[str, int]:
        return wire.read_list_topics(await self._call(wire.list_topics()))

    async def describe_topics(self, names: Sequence[str] = ()) -> List[wire.TopicInfo]:
        out = wire.read_describe_topics(await self._call(wire.describe_topics(names)))
        for t in out:
            if not t.error:
                self._meta[t.name] = t
        return out

    async def list_groups(self) -> List[wire.GroupListing]:
        return wire.read_list_groups(await self._call(wire.list_groups()))

    async def describe_groups(self, groups: Sequence[str] = ()) -> List[wire.GroupInfo]:
        return wire.read_describe_groups(await self._call(wire.describe_groups(groups)))

    async def list_offset(self, topic: str, partition: int, spec: int = LATEST) -> int:
        conn = await self.connection_for(topic, partition)
        for t, p, code, message, offset in wire.read_list_offsets(await conn.call(wire.list_offsets([(topic, partition, spec)]))):
            if code:
                if code in _LEADER:
                    self.forget(topic)
                raise StromError(code, message, topic=t, partition=p)
            return offset
        raise StromError(ErrorCode.Internal, "empty list-offsets answer", topic=topic, partition=partition)

    async def committed(self, group: str, partitions: Sequence[TopicPartition] = ()) -> Dict[TopicPartition, int]:
        return wire.read_offset_fetch(await self._call(wire.offset_fetch(group, partitions)))

    async def commit(
        self, group: str, offsets: Mapping[TopicPartition, int], member_id: str = "", generation: int = -1
    ) -> None:
        wire.read_commit_results(await self._call(wire.offset_commit(group, offsets, member_id, generation)))

    async def init_producer_id(self, producer_id: int = -1, producer_epoch: int = -1) -> Tuple[int, int]:
        return wire.read_init_producer_id(await self._call(wire.init_producer_id(producer_id, producer_epoch)))


class _ABatch:
    __slots__ = ("topic", "partition", "records", "futures", "bytes", "created", "deadline", "frame", "seq", "epoch", "attempts", "maybe_stored")

    def __init__(self, topic: str, partition: int, now: float):
        self.topic = topic
        self.partition = partition
        self.records: List[Tuple[Optional[bytes], Optional[bytes], Optional[Sequence[Header]], Optional[int]]] = []
        self.futures: List["asyncio.Future[RecordMetadata]"] = []
        self.bytes = 0
        self.created = now
        self.deadline = 0.0
        self.frame: Optional[bytes] = None
        self.seq = -1
        self.epoch = -1
        self.attempts = 0
        self.maybe_stored = False


class AsyncProducer:
    """Batching producer for asyncio: ``await producer.send(...)`` queues a record and
    returns a future of its ``RecordMetadata``; ``send_and_wait`` awaits it too.

    Use ``async with AsyncProducer(bootstrap, ...) as p:`` (or ``await p.start()`` /
    ``await p.close()``). Options as ``strom.Producer``.
    """

    def __init__(
        self,
        bootstrap: str = "127.0.0.1:9400",
        *,
        acks: Union[str, int] = "leader",
        linger_ms: int = 5,
        batch_bytes: int = 1 << 20,
        buffer_bytes_max: int = 64 << 20,
        idempotent: Optional[bool] = None,
        retries: bool = False,
        retry_backoff_ms: int = 100,
        delivery_timeout_ms: int = 120_000,
        request_timeout_ms: int = 30_000,
        client_name: str = "strom-python-asyncio-producer",
    ):
        if acks not in ACKS:
            raise ValueError("acks must be one of %s" % sorted(map(str, ACKS)))
        self.acks = ACKS[acks]
        if idempotent is None:
            idempotent = self.acks != wire.ACKS_NONE
        if idempotent and self.acks == wire.ACKS_NONE:
            raise ValueError("idempotent producing needs acks 'leader' or 'durable'")
        self.bootstrap = bootstrap
        self.idempotent = idempotent
        self.retries = retries or idempotent
        self.linger_s = linger_ms / 1000
        self.batch_bytes = batch_bytes
        self.buffer_bytes_max = buffer_bytes_max
        self.retry_backoff_s = retry_backoff_ms / 1000
        self.delivery_timeout_s = delivery_timeout_ms / 1000
        self.request_timeout_ms = request_timeout_ms
        self.client_name = client_name
        self.client: Optional[AsyncClient] = None
        self._open: Dict[TopicPartition, _ABatch] = {}
        self._queues: Dict[TopicPartition, Deque[_ABatch]] = {}
        self._busy: Set[TopicPartition] = set()
        self._tasks: Set["asyncio.Task[None]"] = set()
        self._next_seq: Dict[TopicPartition, int] = {}
        self._producer_id, self._epoch = -1, -1
        self._renew_id = False
        self._rr: Dict[str, int] = {}
        self._buffered = 0
        self._space = asyncio.Event()
        self._linger_task: Optional["asyncio.Task[None]"] = None

    async def start(self) -> None:
        self.client = await AsyncClient.connect(
            self.bootstrap, client_name=self.client_name, request_timeout_ms=self.request_timeout_ms
        )
        if self.idempotent:
            self._producer_id, self._epoch = await self.client.init_producer_id()
        self._linger_task = asyncio.get_running_loop().create_task(self._linger_loop())

    async def __aenter__(self) -> "AsyncProducer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(
        self,
        topic: str,
        value: Optional[bytes] = None,
        key: Optional[bytes] = None,
        headers: Optional[Sequence[Header]] = None,
        partition: Optional[int] = None,
        timestamp_ms: Optional[int] = None,
    ) -> "asyncio.Future[RecordMetadata]":
        """Queues a record (waiting while the buffer is full); the future of its metadata."""
        assert self.client is not None, "start() the producer first"
        if partition is None:
            n = await self.client.partition_count(topic)
            if key is not None:
                partition = partition_for_key(key, n)
            else:
                partition = self._rr.get(topic, 0) % n
                self._rr[topic] = partition + 1
        size = RECORD_OVERHEAD_BYTES + len(value or b"") + len(key or b"") + sum(len(k) + len(v) + 24 for k, v in headers or ())
        while self._buffered + size > self.buffer_bytes_max and self._buffered:
            self._space.clear()
            await self._space.wait()
        fut: "asyncio.Future[RecordMetadata]" = asyncio.get_running_loop().create_future()
        k = (topic, partition)
        b = self._open.get(k)
        if b is None:
            b = self._open[k] = _ABatch(topic, partition, time.monotonic())
        b.records.append((key, value, headers, timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)))
        b.futures.append(fut)
        b.bytes += size
        self._buffered += size
        if b.bytes >= self.batch_bytes or len(b.records) >= FRAME_RECORDS_MAX:
            self._seal(b)
        return fut

    async def send_and_wait(self, topic: str, value: Optional[bytes] = None, **kwargs: object) -> RecordMetadata:
        return await (await self.send(topic, value, **kwargs))  # type: ignore[arg-type]

    def _seal(self, b: _ABatch) -> None:
        k = (b.topic, b.partition)
        del self._open[k]
        b.deadline = time.monotonic() + self.delivery_timeout_s
        self._queues.setdefault(k, collections.deque()).append(b)
        self._kick(k)

    def _kick(self, k: TopicPartition) -> None:
        if k in self._busy or not self._queues.get(k):
            return
        self._busy.add(k)
        t = asyncio.get_running_loop().create_task(self._drain(k))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _linger_loop(self) -> None:
        while True:
            now = time.monotonic()
            wake = now + 0.1
            for b in list(self._open.values()):
                if now - b.created >= self.linger_s:
                    self._seal(b)
                else:
                    wake = min(wake, b.created + self.linger_s)
            await asyncio.sleep(max(0.0005, wake - time.monotonic()))

    async def _drain(self, k: TopicPartition) -> None:
        """Sends the partition's batches one at a time (the one in-flight batch of that partition)."""
        q = self._queues[k]
        try:
            while q:
                b = q[0]
                outcome = await self._attempt(b)
                if outcome is None:
                    continue  # resend the same batch
                q.popleft()
                error, base = outcome
                self._finish(b, error, base)
        finally:
            self._busy.discard(k)

    def _finish(self, b: _ABatch, error: Optional[Exception], base: Optional[int]) -> None:
        for i, fut in enumerate(b.futures):
            if fut.done():
                continue
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(RecordMetadata(b.topic, b.partition, None if base is None else base + i))
        self._buffered -= b.bytes
        self._space.set()

    async def _attempt(self, b: _ABatch) -> Optional[Tuple[Optional[Exception], Optional[int]]]:
        """One attempt; None: try again (after the back-off), else (error, base offset)."""
        assert self.client is not None
        if self.idempotent and self._renew_id:
            self._producer_id, self._epoch = await self.client.init_producer_id()
            self._next_seq.clear()
            self._renew_id = False
        k = (b.topic, b.partition)
        if b.frame is None or (self.idempotent and b.epoch != self._epoch):
            if b.frame is not None and b.maybe_stored:
                return StromError(ErrorCode.Internal, "outcome undetermined: a new producer id was taken", topic=b.topic, partition=b.partition), None
            if self.idempotent:
                b.seq, b.epoch = self._next_seq.get(k, 0), self._epoch
                self._next_seq[k] = (b.seq + len(b.records)) & 0x7FFFFFFF
                b.frame = encode_frame(b.records, self._producer_id, self._epoch, b.seq)
            else:
                b.frame = encode_frame(b.records)
        b.attempts += 1
        error: StromError
        try:
            conn = await self.client.connection_for(b.topic, b.partition)
            req = wire.produce(self.acks, self.request_timeout_ms, [(b.topic, b.partition, len(b.frame))])
            if self.acks == wire.ACKS_NONE:
                conn.send_nowait(req, [b.frame], expect_response=False)
                await conn._writer.drain()
                return None, None
            (r,) = wire.read_produce(await conn.call(req, [b.frame]), 1)
            if r.error == 0:
                return None, r.base_offset
            error = StromError(r.error, r.message, topic=b.topic, partition=b.partition)
            may_store = r.error in _MAYBE_STORED
        except ConnectionClosed as e:
            error, may_store = e, True
        except ValueError as e:
            return e, None
        if error.code in _LEADER:
            self.client.forget(b.topic)
        retriable = isinstance(error, ConnectionClosed) or error.code in RETRIABLE
        b.maybe_stored = b.maybe_stored or may_store
        if retriable and self.retries and time.monotonic() < b.deadline:
            await asyncio.sleep(min(self.retry_backoff_s * 2 ** (b.attempts - 1), RETRY_BACKOFF_MAX_MS / 1000))
            return None
        if self.idempotent:
            if error.code in _EPOCH_BUMP or b.maybe_stored:
                self._renew_id = True
            elif b.epoch == self._epoch:
                self._next_seq[k] = b.seq  # stored nothing: the sequences go to the next batch
        return error, None

    async def flush(self) -> None:
        """Sends everything queued and waits for every answer."""
        for b in list(self._open.values()):
            self._seal(b)
        while self._tasks or any(self._queues.values()):
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            else:
                for k in list(self._queues):
                    self._kick(k)
                await asyncio.sleep(0)

    async def close(self) -> None:
        await self.flush()
        if self._linger_task is not None:
            self._linger_task.cancel()
        if self.client is not None:
            self.client.close()


class AsyncConsumer:
    """Asyncio counterpart of ``strom.Consumer`` (same options and group rules).

    ``consumer = await AsyncConsumer.connect(bootstrap, group_id=...)``; then
    ``consumer.assign([...])`` or ``consumer.subscribe([...])`` and
    ``await consumer.poll()``; ``async for record in consumer`` also works.
    """

    def __init__(self, client: AsyncClient, **opts: object):
        self.client = client
        self.group_id: Optional[str] = opts.get("group_id")  # type: ignore[assignment]
        self.client_id = str(opts.get("client_id", "strom-python-asyncio-consumer"))
        self.auto_offset_reset = str(opts.get("auto_offset_reset", "earliest"))
        self.enable_auto_commit = bool(opts.get("enable_auto_commit", True)) and self.group_id is not None
        self.auto_commit_interval_s = int(opts.get("auto_commit_interval_ms", 5_000)) / 1000  # type: ignore[call-overload]
        self.session_timeout_ms = int(opts.get("session_timeout_ms", 10_000))  # type: ignore[call-overload]
        self.rebalance_timeout_ms = int(opts.get("rebalance_timeout_ms", 0)) or self.session_timeout_ms  # type: ignore[call-overload]
        self.assignment_strategy = str(opts.get("assignment_strategy", "range"))
        self.fetch_max_wait_ms = int(opts.get("fetch_max_wait_ms", 500))  # type: ignore[call-overload]
        self.fetch_max_bytes = int(opts.get("fetch_max_bytes", 16 << 20))  # type: ignore[call-overload]
        self.partition_max_bytes = int(opts.get("partition_max_bytes", 4 << 20))  # type: ignore[call-overload]
        self._positions: Dict[TopicPartition, int] = {}
        self._committed: Dict[TopicPartition, int] = {}
        self._topics: List[str] = []
        self._member_id = ""
        self._generation = -1
        self._need_join = False
        self._last_commit = time.monotonic()
        self._hb_task: Optional["asyncio.Task[None]"] = None
        self._on_assign: Optional[AsyncAssignCallback] = None
        self._on_revoke: Optional[AsyncAssignCallback] = None
        self._closed = False

    @classmethod
    async def connect(cls, bootstrap: str = "127.0.0.1:9400", **opts: object) -> "AsyncConsumer":
        client = await AsyncClient.connect(
            bootstrap,
            client_name=str(opts.get("client_id", "strom-python-asyncio-consumer")),
            request_timeout_ms=int(opts.get("request_timeout_ms", REQUEST_TIMEOUT_MS)),  # type: ignore[call-overload]
        )
        return cls(client, **opts)

    async def assign(self, partitions: Sequence[TopicPartition]) -> None:
        self._positions = {tp: await self._reset_offset(tp) for tp in partitions}

    def subscribe(
        self,
        topics: Sequence[str],
        on_assign: Optional[AsyncAssignCallback] = None,
        on_revoke: Optional[AsyncAssignCallback] = None,
    ) -> None:
        """Joins ``group_id`` for ``topics``; the callbacks (plain functions or
        coroutine functions) run inside ``poll``."""
        if self.group_id is None:
            raise ValueError("subscribe() needs a group_id")
        if not topics:
            raise ValueError("subscribe() needs at least one topic")
        self._topics = list(topics)
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self._need_join = True

    async def _callback(self, cb: Optional[AsyncAssignCallback], parts: List[TopicPartition]) -> None:
        if cb is not None:
            result = cb(parts)
            if inspect.isawaitable(result):
                await result

    def assignment(self) -> List[TopicPartition]:
        return sorted(self._positions)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        if (topic, partition) not in self._positions:
            raise ValueError("%s/%d is not assigned" % (topic, partition))
        self._positions[(topic, partition)] = offset

    def position(self, topic: str, partition: int) -> int:
        return self._positions[(topic, partition)]

    async def _reset_offset(self, tp: TopicPartition) -> int:
        return await self.client.list_offset(tp[0], tp[1], EARLIEST if self.auto_offset_reset == "earliest" else LATEST)

    async def _join(self) -> None:
        assert self.group_id is not None
        if self._positions:
            revoked = self.assignment()
            if self.enable_auto_commit:
                try:
                    await self.commit()
                except StromError:
                    pass  # fenced: the commit cannot count anyway
            self._positions = {}
            await self._callback(self._on_revoke, revoked)
        self._generation = -1
        wait = self.rebalance_timeout_ms + self.client.request_timeout_ms
        for _ in range(JOIN_ATTEMPTS_MAX):
            main = await self.client.ensure_main()
            j = wire.read_join_group(
                await main.call(
                    wire.join_group(
                        self.group_id, self._member_id, self.client_id, self._topics, self.assignment_strategy,
                        self.session_timeout_ms, self.rebalance_timeout_ms,
                    ),  # fmt: skip
                    timeout_ms=wait,
                )
            )
            if j.error in (ErrorCode.MemberIdRequired, ErrorCode.UnknownMemberId, ErrorCode.RebalanceInProgress):
                self._member_id = j.member_id if j.error == ErrorCode.MemberIdRequired else ("" if j.error == ErrorCode.UnknownMemberId else self._member_id)
                continue
            if j.error:
                raise StromError(j.error, j.message)
            self._member_id = j.member_id
            code, message, parts = wire.read_sync_group(
                await main.call(wire.sync_group(self.group_id, self._member_id, j.generation), timeout_ms=wait)
            )
            if code in _REJOIN:
                continue
            if code:
                raise StromError(code, message)
            committed = await self.client.committed(self.group_id, parts) if parts else {}
            self._positions = {tp: committed.get(tp, -1) for tp in parts}
            for tp, o in self._positions.items():
                if o < 0:
                    self._positions[tp] = await self._reset_offset(tp)
            self._committed = dict(committed)
            self._generation = j.generation
            self._need_join = False
            if self._hb_task is None:
                self._hb_task = asyncio.get_running_loop().create_task(self._heartbeat_loop())
            await self._callback(self._on_assign, sorted(parts))
            return
        raise StromError(ErrorCode.RebalanceInProgress, "no stable group after %d joins" % JOIN_ATTEMPTS_MAX)

    async def _heartbeat_loop(self) -> None:
        assert self.group_id is not None
        conn: Optional[AsyncConnection] = None
        while True:
            await asyncio.sleep(self.session_timeout_ms / 3000)
            generation = self._generation
            if self._need_join or generation < 0:
                continue
            try:
                if conn is None or conn.closed:
                    conn = await AsyncConnection.connect(self.client.main.addr, client_name=self.client_id)
                code, _ = wire.read_error_pair(
                    await conn.call(wire.heartbeat(self.group_id, self._member_id, generation)),
                    ResponseBody.HeartbeatResponse,
                )
            except StromError:
                continue
            if code in _REJOIN and self._generation == generation:
                self._need_join = True

    async def poll(self, timeout_ms: int = 1_000) -> List[ConsumerRecord]:
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            if self._need_join:
                await self._join()
            if self.enable_auto_commit and time.monotonic() - self._last_commit >= self.auto_commit_interval_s:
                changed = {tp: o for tp, o in self._positions.items() if self._committed.get(tp) != o}
                self._last_commit = time.monotonic()
                if changed:
                    try:
                        await self.commit(changed)
                    except StromError as e:
                        if e.code not in _REJOIN:
                            raise
                        self._need_join = True
            left_ms = int((deadline - time.monotonic()) * 1000)
            wait_ms = max(0, min(left_ms, self.fetch_max_wait_ms))
            if not self._positions:
                if left_ms <= 0:
                    return []
                await asyncio.sleep(0.05)
                continue
            records = await self._fetch_round(wait_ms)
            if records or left_ms <= 0:
                return records

    async def _fetch_round(self, wait_ms: int) -> List[ConsumerRecord]:
        by_conn: Dict[AsyncConnection, List[TopicPartition]] = {}
        for tp in self._positions:
            by_conn.setdefault(await self.client.connection_for(tp[0], tp[1]), []).append(tp)

        async def one(conn: AsyncConnection, tps: List[TopicPartition]) -> Tuple[List[TopicPartition], List[wire.FetchResult]]:
            parts = [(t, p, self._positions[(t, p)], self.partition_max_bytes) for t, p in tps]
            msg = await conn.call(wire.fetch(wait_ms, 1, self.fetch_max_bytes, parts), timeout_ms=self.client.request_timeout_ms + wait_ms)
            try:
                return tps, wire.read_fetch(msg, len(tps))
            except ProtocolError:
                conn.close()
                raise

        out: List[ConsumerRecord] = []
        for res in await asyncio.gather(*(one(c, tps) for c, tps in by_conn.items()), return_exceptions=True):
            if isinstance(res, ProtocolError):
                raise res
            if isinstance(res, BaseException):
                continue
            tps, results = res
            for tp, r in zip(tps, results):
                if tp not in self._positions:
                    continue
                if r.error == ErrorCode.OffsetOutOfRange:
                    self._positions[tp] = await self._reset_offset(tp)
                    continue
                if r.error in _LEADER:
                    self.client.forget(tp[0])
                    continue
                if r.error:
                    raise StromError(r.error, r.message, topic=tp[0], partition=tp[1])
                pos = self._positions[tp]
                try:
                    _, nxt = decode_frames(r.frames, tp[0], tp[1], pos, out)
                except ProtocolError:
                    (await self.client.connection_for(tp[0], tp[1])).close()
                    raise
                if nxt > pos:
                    self._positions[tp] = nxt
        return out

    def __aiter__(self) -> "AsyncConsumer":
        return self

    async def __anext__(self) -> List[ConsumerRecord]:
        if self._closed:
            raise StopAsyncIteration
        return await self.poll(self.fetch_max_wait_ms)

    async def commit(self, offsets: Optional[Mapping[TopicPartition, int]] = None) -> None:
        if self.group_id is None:
            raise ValueError("commit() needs a group_id")
        offsets = dict(self._positions) if offsets is None else offsets
        if offsets:
            member, gen = (self._member_id, self._generation) if self._topics else ("", -1)
            await self.client.commit(self.group_id, offsets, member, gen)
            self._committed.update(offsets)
        self._last_commit = time.monotonic()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._hb_task is not None:
            self._hb_task.cancel()
        try:
            if self.group_id is not None and self._topics and not self.client.main.closed:
                if self._positions and self.enable_auto_commit and not self._need_join:
                    try:
                        await self.commit()
                    except StromError:
                        pass
                if self._positions:
                    await self._callback(self._on_revoke, self.assignment())
                if self._member_id:
                    try:
                        await self.client.main.call(wire.leave_group(self.group_id, self._member_id))
                    except StromError:
                        pass
        finally:
            self.client.close()
