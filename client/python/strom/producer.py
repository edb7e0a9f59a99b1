"""``Producer``: batching, linger, partitioning by key, acks levels, delivery
callbacks and futures, and idempotent producing, over blocking sockets.

Threads: ``produce``/``send`` (any thread) append a record to its
partition's open batch under one lock and return at once; one background
*sender* thread seals batches (when full, after ``linger_ms``, or on
``flush``), frames them, sends them (one ProduceRequest per connection and
round, pipelined across connections), reads the answers and completes each
record: its callback is called, or its future resolved, **on the sender
thread**. The lock is never held across socket I/O.

Rules (the same as strom-client's producer, docs/protocol.md "Client
rules"):
- partition: the one given, else ``murmur2(key) & 0x7fffffff % partitions``
  for a key, else round-robin per topic;
- at most one request per partition in flight; with idempotence one batch
  per partition in flight, stamped with its producer id, epoch and
  sequences when first sent, and every resend carries the same bytes;
- a batch refused with a retriable code (``errors.RETRIABLE``) or whose
  connection broke is resent after ``retry_backoff_ms`` (doubling, at most
  1 s) until ``delivery_timeout_ms`` after it was sealed — always with
  idempotence, with ``retries=True`` otherwise (then it may be stored
  twice);
- idempotence: a final refusal that stored nothing gives the batch's
  sequences back; ``OutOfOrderSequence``, ``InvalidProducerEpoch`` and
  ``DuplicateSequence`` fail the batch and bump the producer's epoch (all
  sequences restart at 0; batches waiting for a resend that an earlier
  attempt may have stored fail as undetermined instead of risking a
  duplicate);
- compression: none. Format version 1 of the native protocol accepts only
  uncompressed frames (docs/format.md, "Attributes"), so there is nothing
  to offer without faking it.

Limits: ``buffer_bytes_max`` of records waiting (``produce`` blocks up to
``max_block_ms``, then raises ``BufferError``), ``batch_bytes`` per batch,
``FRAME_RECORDS_MAX`` records per batch, the server's ``message_bytes_max``
per request.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import selectors
import socket
import threading
import time
from typing import Callable, Deque, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple, Union

from strom import wire
from strom.client import Client
from strom.connection import Connection
from strom.errors import RETRIABLE, ConnectionClosed, ErrorCode, ProtocolError, StromError
from strom.frames import FRAME_RECORDS_MAX, Header, encode_frame, partition_for_key, restamp

__all__ = ["Producer", "RecordMetadata", "DeliveryCallback", "ACKS"]

_log = logging.getLogger("strom")
_time_ns = time.time_ns
_monotonic = time.monotonic

ACKS: Dict[Union[str, int], int] = {
    "none": wire.ACKS_NONE,
    "leader": wire.ACKS_LEADER,
    "durable": wire.ACKS_DURABLE,
    "all": wire.ACKS_DURABLE,
    0: wire.ACKS_NONE,
    1: wire.ACKS_LEADER,
    -1: wire.ACKS_DURABLE,
}
RETRY_BACKOFF_MAX_MS = 1_000
#: Per-record overhead counted against the buffer and batch sizes.
RECORD_OVERHEAD_BYTES = 48
_MAYBE_STORED = frozenset({ErrorCode.Timeout, ErrorCode.PartitionFailed, ErrorCode.NotLeader, ErrorCode.ShuttingDown})
_EPOCH_BUMP = frozenset({ErrorCode.OutOfOrderSequence, ErrorCode.InvalidProducerEpoch, ErrorCode.DuplicateSequence})


class RecordMetadata(NamedTuple):
    """Where a record was stored (``offset`` is None with acks=none)."""

    topic: str
    partition: int
    offset: Optional[int]


DeliveryCallback = Callable[[Optional[Exception], Optional[RecordMetadata]], None]
Sink = Union[None, DeliveryCallback, "concurrent.futures.Future[RecordMetadata]"]
RecordTuple = Tuple[Optional[bytes], Optional[bytes], Optional[Sequence[Header]], Optional[int]]


class _Batch:
    __slots__ = (
        "topic", "partition", "records", "sinks", "bytes", "created", "deadline",
        "frame", "seq", "epoch", "attempts", "retry_at", "maybe_stored",
    )  # fmt: skip

    def __init__(self, topic: str, partition: int, now: float):
        self.topic = topic
        self.partition = partition
        self.records: List[RecordTuple] = []
        self.sinks: List[Sink] = []
        self.bytes = 0
        self.created = now
        self.deadline = 0.0
        self.frame: Optional[bytes] = None
        self.seq = -1
        self.epoch = -1
        self.attempts = 0
        self.retry_at = 0.0
        self.maybe_stored = False


class Producer:
    """A batching producer; see the module documentation for its rules.

    >>> p = Producer("127.0.0.1:9400", acks="durable", linger_ms=5)
    >>> fut = p.send("events", b"value", key=b"user-1", headers=[("h", b"v")])
    >>> p.flush(); fut.result().offset
    """

    def __init__(
        self,
        bootstrap: str = "127.0.0.1:9400",
        *,
        acks: Union[str, int] = "leader",
        linger_ms: int = 5,
        batch_bytes: int = 1 << 20,
        buffer_bytes_max: int = 64 << 20,
        max_block_ms: int = 60_000,
        idempotent: Optional[bool] = None,
        retries: bool = False,
        retry_backoff_ms: int = 100,
        delivery_timeout_ms: int = 120_000,
        request_timeout_ms: int = 30_000,
        client_name: str = "strom-python-producer",
    ):
        if acks not in ACKS:
            raise ValueError("acks must be one of %s" % sorted(map(str, ACKS)))
        self.acks = ACKS[acks]
        if idempotent is None:
            idempotent = self.acks != wire.ACKS_NONE
        if idempotent and self.acks == wire.ACKS_NONE:
            raise ValueError("idempotent producing needs acks 'leader' or 'durable'")
        if linger_ms < 0 or batch_bytes <= 0 or buffer_bytes_max < batch_bytes:
            raise ValueError("need linger_ms >= 0 and 0 < batch_bytes <= buffer_bytes_max")
        self.idempotent = idempotent
        self.retries = retries or idempotent
        self.linger_s = linger_ms / 1000
        self.batch_bytes = batch_bytes
        self.buffer_bytes_max = buffer_bytes_max
        self.max_block_s = max_block_ms / 1000
        self.retry_backoff_s = retry_backoff_ms / 1000
        self.delivery_timeout_s = delivery_timeout_ms / 1000
        self.request_timeout_ms = request_timeout_ms
        # The sender thread's client; the caller's threads use _meta (partition counts only).
        self._client = Client(bootstrap, client_name=client_name, request_timeout_ms=request_timeout_ms)
        self._meta = Client(bootstrap, client_name=client_name, request_timeout_ms=request_timeout_ms, direct=False)
        self._meta_lock = threading.Lock()
        self._counts: Dict[str, int] = {}
        self._rr: Dict[str, int] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._open: Dict[Tuple[str, int], _Batch] = {}
        self._ready: Deque[_Batch] = collections.deque()
        self._buffered = 0
        self._unfinished = 0  # records produced and not yet completed
        self._flushing = 0
        self._closing = False
        self._fatal: Optional[Exception] = None
        self._producer_id, self._epoch = -1, -1
        self._next_seq: Dict[Tuple[str, int], int] = {}
        self._busy: Set[Tuple[str, int]] = set()
        self._epoch_bump = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_pending = False
        if self.idempotent:
            self._producer_id, self._epoch = self._client.init_producer_id()
        self._thread = threading.Thread(target=self._run, name="strom-producer-sender", daemon=True)
        self._thread.start()

    # ------------------------------------------------------ caller's side

    def partition_count(self, topic: str) -> int:
        n = self._counts.get(topic)
        if n is None:
            with self._meta_lock:
                n = self._meta.partition_count(topic)
            self._counts[topic] = n
        return n

    def produce(
        self,
        topic: str,
        value: Optional[bytes] = None,
        key: Optional[bytes] = None,
        headers: Optional[Sequence[Header]] = None,
        partition: Optional[int] = None,
        timestamp_ms: Optional[int] = None,
        on_delivery: Optional[DeliveryCallback] = None,
    ) -> None:
        """Queues one record; ``on_delivery(error, metadata)`` is called on the sender thread."""
        self._append(topic, value, key, headers, partition, timestamp_ms, on_delivery)

    def send(
        self,
        topic: str,
        value: Optional[bytes] = None,
        key: Optional[bytes] = None,
        headers: Optional[Sequence[Header]] = None,
        partition: Optional[int] = None,
        timestamp_ms: Optional[int] = None,
    ) -> "concurrent.futures.Future[RecordMetadata]":
        """Queues one record; the future resolves to its ``RecordMetadata`` (or its error)."""
        fut: "concurrent.futures.Future[RecordMetadata]" = concurrent.futures.Future()
        self._append(topic, value, key, headers, partition, timestamp_ms, fut)
        return fut

    def _append(
        self,
        topic: str,
        value: Optional[bytes],
        key: Optional[bytes],
        headers: Optional[Sequence[Header]],
        partition: Optional[int],
        timestamp_ms: Optional[int],
        sink: Sink,
    ) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._closing:
            raise RuntimeError("producer is closed")
        if partition is None:
            n = self._counts.get(topic) or self.partition_count(topic)
            if n == 1:
                partition = 0
            elif key is not None:
                partition = partition_for_key(key, n)
            else:
                partition = self._rr.get(topic, 0) % n
                self._rr[topic] = partition + 1
        elif partition < 0:
            raise ValueError("partition must be >= 0")
        size = RECORD_OVERHEAD_BYTES + (len(value) if value is not None else 0) + (len(key) if key is not None else 0)
        if headers:
            size += sum(len(k) + len(v) + 24 for k, v in headers)
        if timestamp_ms is None:
            timestamp_ms = _time_ns() // 1_000_000
        k = (topic, partition)
        lock = self._lock
        lock.acquire()  # the hot path: the plain lock, not the Condition's Python-level wrapper
        try:
            if self._buffered + size > self.buffer_bytes_max:
                self._wait_for_space(size)
            b = self._open.get(k)
            if b is None:
                b = self._open[k] = _Batch(topic, partition, _monotonic())
            b.records.append((key, value, headers, timestamp_ms))
            b.sinks.append(sink)
            b.bytes += size
            self._buffered += size
            self._unfinished += 1
            if b.bytes >= self.batch_bytes or len(b.records) >= FRAME_RECORDS_MAX:
                self._seal(b)
                self._wake()
        finally:
            lock.release()

    def _wait_for_space(self, size: int) -> None:
        """Blocks (lock held, released while waiting) until ``size`` bytes fit, up to ``max_block_ms``."""
        deadline = time.monotonic() + self.max_block_s
        while self._buffered + size > self.buffer_bytes_max and self._buffered:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BufferError("producer buffer full (%d bytes) for %d ms" % (self._buffered, self.max_block_s * 1000))
            self._cond.wait(left)

    def _seal(self, b: _Batch) -> None:
        """Moves an open batch to the ready queue (lock held)."""
        del self._open[(b.topic, b.partition)]
        b.deadline = time.monotonic() + self.delivery_timeout_s
        self._ready.append(b)

    def _wake(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self._wake_w.send(b"\0")
            except (BlockingIOError, OSError):
                pass

    def flush(self, timeout: Optional[float] = None) -> int:
        """Sends everything queued and waits for every answer; the records still unfinished (0: all done)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flushing += 1
            self._wake()
            try:
                while self._unfinished and self._thread.is_alive():
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._cond.wait(left if left is not None else 0.5)
                return self._unfinished
            finally:
                self._flushing -= 1

    def close(self, timeout: Optional[float] = None) -> None:
        """Flushes (up to ``timeout``), stops the sender, closes the connections."""
        if self._thread.is_alive():
            self.flush(timeout)
        with self._cond:
            self._closing = True
            self._wake()
        self._thread.join(timeout if timeout is not None else 60)
        self._client.close()
        with self._meta_lock:
            self._meta.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        """Records produced and not yet completed."""
        return self._unfinished

    # ------------------------------------------------------- sender side

    def _complete(self, b: _Batch, error: Optional[Exception], base: Optional[int]) -> None:
        """Completes a batch's records (sender thread, lock not held)."""
        for i, sink in enumerate(b.sinks):
            if sink is None:
                continue
            md = None if error is not None else RecordMetadata(b.topic, b.partition, None if base is None else base + i)
            if isinstance(sink, concurrent.futures.Future):
                if error is not None:
                    sink.set_exception(error)
                else:
                    sink.set_result(md)  # type: ignore[arg-type]
            else:
                try:
                    sink(error, md)
                except Exception:  # noqa: BLE001 - a user callback must not kill the sender
                    _log.exception("delivery callback raised")
        with self._cond:
            self._buffered -= b.bytes
            self._unfinished -= len(b.records)
            self._busy.discard((b.topic, b.partition))
            self._cond.notify_all()

    def _stamp(self, b: _Batch) -> bytes:
        if b.frame is None or (self.idempotent and b.epoch != self._epoch):
            if self.idempotent:
                k = (b.topic, b.partition)
                b.seq = self._next_seq.get(k, 0)
                b.epoch = self._epoch
                self._next_seq[k] = (b.seq + len(b.records)) & 0x7FFFFFFF
                if b.frame is None:
                    b.frame = encode_frame(b.records, self._producer_id, self._epoch, b.seq)
                else:
                    b.frame = restamp(b.frame, self._producer_id, self._epoch, b.seq)
            else:
                b.frame = encode_frame(b.records)
        return b.frame

    def _take_sendable(self, now: float) -> Tuple[List[_Batch], float]:
        """Seals lingering batches and takes the sendable ones (lock held); and the next deadline."""
        next_at = now + 0.25
        force = self._flushing > 0 or self._closing
        for b in list(self._open.values()):
            if force or now - b.created >= self.linger_s:
                self._seal(b)
            else:
                next_at = min(next_at, b.created + self.linger_s)
        out: List[_Batch] = []
        if self._epoch_bump:
            return out, next_at
        keep: Deque[_Batch] = collections.deque()
        taken: Set[Tuple[str, int]] = set()
        while self._ready:
            b = self._ready.popleft()
            k = (b.topic, b.partition)
            if k in self._busy or b.retry_at > now or (self.idempotent and k in taken):
                if b.retry_at > now:
                    next_at = min(next_at, b.retry_at)
                keep.append(b)
                continue
            taken.add(k)
            out.append(b)
        self._ready = keep
        for b in out:
            self._busy.add((b.topic, b.partition))
        return out, next_at

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ)
        inflight: Dict[Connection, Dict[int, Tuple[float, List[_Batch]]]] = {}
        try:
            while True:
                now = time.monotonic()
                with self._cond:
                    self._wake_pending = False
                    batches, next_at = self._take_sendable(now)
                    idle = not self._open and not self._ready and not any(inflight.values())
                    if self._closing and idle:
                        return
                if self._epoch_bump and not any(inflight.values()):
                    self._bump_epoch()
                    continue
                if batches:
                    self._send_round(batches, inflight, sel)
                timeout = max(0.0, next_at - time.monotonic())
                for key, _ in sel.select(timeout):
                    if key.fileobj is self._wake_r:
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except (BlockingIOError, OSError):
                            pass
                        continue
                    conn = key.fileobj
                    assert isinstance(conn, Connection)
                    self._read_answers(conn, inflight, sel)
                self._check_timeouts(inflight, sel)
        except BaseException as e:  # noqa: BLE001 - recorded, then every waiting record fails with it
            self._fatal = e if isinstance(e, Exception) else RuntimeError(repr(e))
            self._fail_everything(self._fatal, inflight)
        finally:
            sel.close()

    def _fail_everything(self, e: Exception, inflight: Dict[Connection, Dict[int, Tuple[float, List[_Batch]]]]) -> None:
        with self._cond:
            pending = list(self._open.values()) + list(self._ready)
            self._open.clear()
            self._ready.clear()
        for reqs in inflight.values():
            for _, bs in reqs.values():
                pending.extend(bs)
        for b in pending:
            self._complete(b, e, None)

    def _send_round(
        self,
        batches: List[_Batch],
        inflight: Dict[Connection, Dict[int, Tuple[float, List[_Batch]]]],
        sel: selectors.BaseSelector,
    ) -> None:
        by_conn: Dict[Connection, List[_Batch]] = {}
        for b in batches:
            try:
                conn = self._client.connection_for(b.topic, b.partition)
            except (ConnectionClosed, OSError) as e:
                self._attempt_failed(b, StromError(ErrorCode.Internal, "no connection: %s" % e), may_store=False)
                continue
            by_conn.setdefault(conn, []).append(b)
        for conn, group in by_conn.items():
            limit = conn.info.message_bytes_max - (1 << 16)
            chunk: List[_Batch] = []
            size = 0
            for b in group:
                try:
                    frame = self._stamp(b)
                except ValueError as e:
                    self._give_back(b)
                    self._complete(b, e, None)
                    continue
                if chunk and size + len(frame) > limit:
                    self._send_request(conn, chunk, inflight, sel)
                    chunk, size = [], 0
                chunk.append(b)
                size += len(frame)
            if chunk:
                self._send_request(conn, chunk, inflight, sel)

    def _send_request(
        self,
        conn: Connection,
        chunk: List[_Batch],
        inflight: Dict[Connection, Dict[int, Tuple[float, List[_Batch]]]],
        sel: selectors.BaseSelector,
    ) -> None:
        frames = [b.frame for b in chunk]
        req = wire.produce(self.acks, self.request_timeout_ms, [(b.topic, b.partition, len(f)) for b, f in zip(chunk, frames)])  # type: ignore[arg-type]
        for b in chunk:
            b.attempts += 1
        try:
            cid = conn.send(req, frames, expect_response=self.acks != wire.ACKS_NONE)  # type: ignore[arg-type]
        except (ConnectionClosed, OSError) as e:
            self._connection_lost(conn, inflight, sel)
            for b in chunk:
                self._attempt_failed(b, StromError(ErrorCode.Internal, "send failed: %s" % e), may_store=True)
            return
        if self.acks == wire.ACKS_NONE:
            for b in chunk:
                self._complete(b, None, None)
            return
        reqs = inflight.setdefault(conn, {})
        if not reqs:
            try:
                sel.register(conn, selectors.EVENT_READ)
            except KeyError:
                pass
        reqs[cid] = (time.monotonic(), chunk)

    def _read_answers(
        self,
        conn: Connection,
        inflight: Dict[Connection, Dict[int, Tuple[float, List[_Batch]]]],
        sel: selectors.BaseSelector,
    ) -> None:
        reqs = inflight.get(conn, {})
        try:
            msgs = conn.poll()
        except (ConnectionClosed, ProtocolError, OSError):
            self._connection_lost(conn, inflight, sel)
            return
        for msg in msgs:
            _, chunk = reqs.pop(msg.correlation_id)
            try:
                results = wire.read_produce(msg, len(chunk))
            except ProtocolError:  # a malformed answer: the connection is not trusted again
                reqs[msg.correlation_id] = (0.0, chunk)
                self._connection_lost(conn, inflight, sel)
                return
            except StromError as e:  # an ErrorResponse for the whole request
                for b in chunk:
                    self._attempt_failed(b, e, may_store=False)
                continue
            for b, r in zip(chunk, results):
                if r.error == 0:
                    self._complete(b, None, r.base_offset)
                else:
                    self._refused(b, StromError(r.error, r.message, topic=b.topic, partition=b.partition))
        if not reqs:
            inflight.pop(conn, None)
            try:
                sel.unregister(conn)
            except (KeyError, ValueError):
                pass

    def _check_timeouts(
        self,
        inflight: Dict[Connection, Dict[int, Tuple[float, List[_Batch]]]],
        sel: selectors.BaseSelector,
    ) -> None:
        limit = time.monotonic() - self.request_timeout_ms / 1000 - 5
        for conn, reqs in list(inflight.items()):
            if any(sent < limit for sent, _ in reqs.values()):
                conn.close()
                self._connection_lost(conn, inflight, sel)

    def _connection_lost(
        self,
        conn: Connection,
        inflight: Dict[Connection, Dict[int, Tuple[float, List[_Batch]]]],
        sel: selectors.BaseSelector,
    ) -> None:
        conn.close()
        try:
            sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        reqs = inflight.pop(conn, {})
        for _, chunk in reqs.values():
            for b in chunk:
                self._client.forget(b.topic)  # its leader may have moved: describe it again
                self._attempt_failed(b, ConnectionClosed("connection to %s broke with the batch in flight" % conn.addr), may_store=True)

    def _refused(self, b: _Batch, e: StromError) -> None:
        if e.code in RETRIABLE:
            self._client._partition_error(e)
            self._attempt_failed(b, e, may_store=e.code in _MAYBE_STORED)
        elif self.idempotent and e.code in _EPOCH_BUMP:
            with self._cond:
                self._epoch_bump = True
            self._complete(b, e, None)
        else:
            self._give_back(b)
            self._complete(b, e, None)

    def _give_back(self, b: _Batch) -> None:
        """A batch refused for good that stored nothing: its sequences go to the partition's next batch."""
        if self.idempotent and b.seq >= 0 and b.epoch == self._epoch:
            self._next_seq[(b.topic, b.partition)] = b.seq

    def _attempt_failed(self, b: _Batch, e: StromError, may_store: bool) -> None:
        b.maybe_stored = b.maybe_stored or may_store
        now = time.monotonic()
        if not self.retries or now >= b.deadline:
            if self.idempotent and b.maybe_stored:
                with self._cond:
                    self._epoch_bump = True
            elif not b.maybe_stored:
                self._give_back(b)
            self._complete(b, e, None)
            return
        backoff = min(self.retry_backoff_s * (2 ** (b.attempts - 1)), RETRY_BACKOFF_MAX_MS / 1000)
        b.retry_at = now + backoff
        with self._cond:
            self._busy.discard((b.topic, b.partition))
            self._ready.appendleft(b)

    def _bump_epoch(self) -> None:
        """Everything in flight answered: new epoch, sequences from 0 (sender thread)."""
        self._producer_id, self._epoch = self._client.init_producer_id(self._producer_id, self._epoch)
        self._next_seq.clear()
        undetermined: List[_Batch] = []
        with self._cond:
            self._epoch_bump = False
            keep: Deque[_Batch] = collections.deque()
            for b in self._ready:
                (undetermined if b.maybe_stored else keep).append(b)
            self._ready = keep
        for b in undetermined:
            self._complete(b, StromError(ErrorCode.Internal, "outcome undetermined: an earlier attempt may have stored it, and the producer epoch was bumped", topic=b.topic, partition=b.partition), None)
