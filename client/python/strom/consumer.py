"""``Consumer``: long-poll fetches of assigned partitions, or membership of a
consumer group with committed offsets, over blocking sockets.

Manual: ``assign([(topic, partition), ...])`` then ``poll``. Group:
``subscribe([topics], on_assign=..., on_revoke=...)`` with a ``group_id``:
the server's coordinator shares the partitions out (``coordinator_assigns``,
range or round-robin), as for strom-client's ``GroupConsumer``
(client/src/group.rs): JoinGroup -> SyncGroup -> OffsetFetch -> fetch, and a
Heartbeat every ``session_timeout_ms / 3`` from a background thread on its
own connection, so a member busy between polls keeps its session.

Invariants (the eager protocol, as strom-client):
- records come only from ``poll``, only for the current assignment;
- when the heartbeat thread learns of a rebalance (``RebalanceInProgress``,
  ``IllegalGeneration``, ``UnknownMemberId``) the next ``poll`` gives up every
  partition before it rejoins: with auto-commit it first commits the
  positions of the records handed out, then calls ``on_revoke``;
- a partition starts at the group's committed offset, else where
  ``auto_offset_reset`` says; ``OffsetOutOfRange`` resets it the same way;
- commits carry the member id and generation (a fenced member's commit is
  refused by the server);
- ``close`` stops the heartbeat, commits (auto-commit), revokes and leaves
  the group, so the others rebalance at once.

Prefetch: when a fetch returned records, the next one (from the offsets
after its frames) is sent before those records are checked and decoded;
it is used only if the positions are still exactly those offsets (a seek
or a rebalance discards it). A caught-up consumer therefore has one
long-poll fetch waiting on the server, so ``poll`` can wait up to
``fetch_max_wait_ms`` even with a shorter timeout.

Limits: a join is retried at most ``JOIN_ATTEMPTS_MAX`` times; each fetch
asks for at most ``fetch_max_bytes`` (``partition_max_bytes`` per
partition); every wait is bounded by a timeout.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from strom import wire
from strom.client import EARLIEST, LATEST, Client
from strom.connection import Connection
from strom.errors import ConnectionClosed, ErrorCode, ProtocolError, StromError
from strom.frames import ConsumerRecord, decode_frames, next_offset_of
from strom.protocol.ResponseBody import ResponseBody

__all__ = ["Consumer", "TopicPartition", "JOIN_ATTEMPTS_MAX"]

TopicPartition = Tuple[str, int]
AssignCallback = Callable[[List[TopicPartition]], None]
JOIN_ATTEMPTS_MAX = 20
_REJOIN = frozenset({ErrorCode.RebalanceInProgress, ErrorCode.IllegalGeneration, ErrorCode.UnknownMemberId})
_LEADER = frozenset(
    {ErrorCode.NotLeader, ErrorCode.LeaderNotAvailable, ErrorCode.PartitionUnavailable, ErrorCode.ShuttingDown}
)


class Consumer:
    """Reads records; see the module documentation.

    >>> c = Consumer("127.0.0.1:9400", group_id="billing")
    >>> c.subscribe(["events"])
    >>> for record in c.poll(timeout_ms=1000): ...
    """

    def __init__(
        self,
        bootstrap: str = "127.0.0.1:9400",
        *,
        group_id: Optional[str] = None,
        client_id: str = "strom-python-consumer",
        auto_offset_reset: str = "earliest",
        enable_auto_commit: bool = True,
        auto_commit_interval_ms: int = 5_000,
        session_timeout_ms: int = 10_000,
        rebalance_timeout_ms: int = 0,
        assignment_strategy: str = "range",
        fetch_max_wait_ms: int = 500,
        fetch_max_bytes: int = 16 << 20,
        partition_max_bytes: int = 4 << 20,
        request_timeout_ms: int = 30_000,
    ):
        if auto_offset_reset not in ("earliest", "latest"):
            raise ValueError("auto_offset_reset is 'earliest' or 'latest'")
        if assignment_strategy not in ("range", "roundrobin"):
            raise ValueError("assignment_strategy is 'range' or 'roundrobin'")
        self.group_id = group_id
        self.client_id = client_id
        self.auto_offset_reset = auto_offset_reset
        self.enable_auto_commit = enable_auto_commit and group_id is not None
        self.auto_commit_interval_s = auto_commit_interval_ms / 1000
        self.session_timeout_ms = session_timeout_ms
        self.rebalance_timeout_ms = rebalance_timeout_ms or session_timeout_ms
        self.assignment_strategy = assignment_strategy
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_max_bytes = fetch_max_bytes
        self.partition_max_bytes = partition_max_bytes
        self.request_timeout_ms = request_timeout_ms
        self.client = Client(bootstrap, client_name=client_id, request_timeout_ms=request_timeout_ms)
        self._bootstrap = bootstrap
        self._positions: Dict[TopicPartition, int] = {}
        self._topics: List[str] = []
        self._on_assign: Optional[AssignCallback] = None
        self._on_revoke: Optional[AssignCallback] = None
        self._member_id = ""
        self._generation = -1
        self._need_join = False
        self._last_commit = time.monotonic()
        self._committed_positions: Dict[TopicPartition, int] = {}
        self._hb_lock = threading.Lock()
        self._hb_stop = threading.Event()
        self._hb_thread: Optional[threading.Thread] = None
        self._hb_error: Optional[Exception] = None
        self._closed = False
        # Per connection: the fetch sent ahead (its id, partitions, offsets).
        self._prefetch: Dict[Connection, Tuple[int, Tuple[TopicPartition, ...], Tuple[int, ...]]] = {}

    # ------------------------------------------------------- assignment

    def assign(self, partitions: Sequence[TopicPartition]) -> None:
        """Reads exactly these partitions (no group management)."""
        if self._topics:
            raise RuntimeError("assign() and subscribe() cannot be mixed")
        self._positions = {}
        for tp in partitions:
            self._positions[tp] = self._start_offset(tp)

    def subscribe(
        self,
        topics: Sequence[str],
        on_assign: Optional[AssignCallback] = None,
        on_revoke: Optional[AssignCallback] = None,
    ) -> None:
        """Joins ``group_id`` for ``topics``; the callbacks run inside ``poll``."""
        if self.group_id is None:
            raise ValueError("subscribe() needs a group_id")
        if not topics:
            raise ValueError("subscribe() needs at least one topic")
        self._topics = list(topics)
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self._need_join = True

    def assignment(self) -> List[TopicPartition]:
        return sorted(self._positions)

    @property
    def member_id(self) -> str:
        return self._member_id

    @property
    def generation(self) -> int:
        return self._generation

    def position(self, topic: str, partition: int) -> int:
        """The offset of the next record ``poll`` returns for the partition."""
        return self._positions[(topic, partition)]

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """The next ``poll`` reads the partition from ``offset``."""
        if (topic, partition) not in self._positions:
            raise ValueError("%s/%d is not assigned" % (topic, partition))
        self._positions[(topic, partition)] = offset

    def seek_to_beginning(self, partitions: Optional[Sequence[TopicPartition]] = None) -> None:
        for tp in partitions or list(self._positions):
            self.seek(tp[0], tp[1], self.client.list_offset(tp[0], tp[1], EARLIEST))

    def seek_to_end(self, partitions: Optional[Sequence[TopicPartition]] = None) -> None:
        for tp in partitions or list(self._positions):
            self.seek(tp[0], tp[1], self.client.list_offset(tp[0], tp[1], LATEST))

    def _reset_offset(self, tp: TopicPartition) -> int:
        return self.client.list_offset(tp[0], tp[1], EARLIEST if self.auto_offset_reset == "earliest" else LATEST)

    def _start_offset(self, tp: TopicPartition, committed: Optional[Mapping[TopicPartition, int]] = None) -> int:
        c = (committed or {}).get(tp, -1)
        return c if c >= 0 else self._reset_offset(tp)

    # ------------------------------------------------------------ group

    def _group_call(self, req: Tuple[int, wire.BodyFn], timeout_ms: Optional[int] = None) -> wire.Message:
        return self.client.ensure_main().call(req, timeout_ms=timeout_ms)

    def _join(self) -> None:
        assert self.group_id is not None
        if self._positions:
            revoked = self.assignment()
            if self.enable_auto_commit:
                try:
                    self.commit()
                except StromError:
                    pass  # fenced: the commit cannot count anyway
            self._positions = {}
            if self._on_revoke:
                self._on_revoke(revoked)
        with self._hb_lock:
            self._generation = -1
        for _ in range(JOIN_ATTEMPTS_MAX):
            msg = self._group_call(
                wire.join_group(
                    self.group_id, self._member_id, self.client_id, self._topics, self.assignment_strategy,
                    self.session_timeout_ms, self.rebalance_timeout_ms,
                ),  # fmt: skip
                timeout_ms=self.rebalance_timeout_ms + self.request_timeout_ms,
            )
            j = wire.read_join_group(msg)
            if j.error == ErrorCode.MemberIdRequired:
                self._member_id = j.member_id
                continue
            if j.error == ErrorCode.UnknownMemberId:
                self._member_id = ""
                continue
            if j.error == ErrorCode.RebalanceInProgress:
                continue
            if j.error:
                raise StromError(j.error, j.message)
            self._member_id = j.member_id
            code, message, parts = wire.read_sync_group(
                self._group_call(
                    wire.sync_group(self.group_id, self._member_id, j.generation),
                    timeout_ms=self.rebalance_timeout_ms + self.request_timeout_ms,
                )
            )
            if code in _REJOIN:
                if code == ErrorCode.UnknownMemberId:
                    self._member_id = ""
                continue
            if code:
                raise StromError(code, message)
            committed = self.client.committed(self.group_id, parts) if parts else {}
            self._positions = {tp: self._start_offset(tp, committed) for tp in parts}
            self._committed_positions = {tp: committed.get(tp, -1) for tp in parts}
            with self._hb_lock:
                self._generation = j.generation
                self._need_join = False
            self._start_heartbeat()
            if self._on_assign:
                self._on_assign(sorted(parts))
            return
        raise StromError(ErrorCode.RebalanceInProgress, "no stable group after %d joins" % JOIN_ATTEMPTS_MAX)

    def _start_heartbeat(self) -> None:
        if self._hb_thread is not None and self._hb_thread.is_alive():
            return
        self._hb_stop.clear()
        self._hb_thread = threading.Thread(target=self._heartbeat_loop, name="strom-consumer-heartbeat", daemon=True)
        self._hb_thread.start()

    def _heartbeat_loop(self) -> None:
        interval = self.session_timeout_ms / 3000
        conn: Optional[Connection] = None
        while not self._hb_stop.wait(interval):
            with self._hb_lock:
                member, generation, joining = self._member_id, self._generation, self._need_join
            if joining or generation < 0 or self.group_id is None:
                continue
            try:
                if conn is None or conn.closed:
                    conn = Connection(
                        self.client.main.addr, client_name=self.client_id, request_timeout_ms=self.request_timeout_ms
                    )
                code, _ = wire.read_error_pair(
                    conn.call(wire.heartbeat(self.group_id, member, generation)), ResponseBody.HeartbeatResponse
                )
            except (StromError, OSError):
                continue  # the next beat tries again; the session timeout decides
            if code in _REJOIN:
                with self._hb_lock:
                    if self._generation == generation:
                        self._need_join = True
        if conn is not None:
            conn.close()

    # ------------------------------------------------------------ reads

    def poll(self, timeout_ms: int = 1_000) -> List[ConsumerRecord]:
        """Records of the assigned partitions, waiting up to ``timeout_ms`` for the first."""
        if self._closed:
            raise RuntimeError("consumer is closed")
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            if self._need_join:
                self._join()
            if self.enable_auto_commit and time.monotonic() - self._last_commit >= self.auto_commit_interval_s:
                self._auto_commit()
            left_ms = int((deadline - time.monotonic()) * 1000)
            wait_ms = max(0, min(left_ms, self.fetch_max_wait_ms))
            if not self._positions:
                if left_ms <= 0:
                    return []
                time.sleep(min(wait_ms, 100) / 1000 or 0.01)
                continue
            records = self._fetch_round(wait_ms)
            if records or left_ms <= 0:
                return records

    def __iter__(self) -> Iterator[ConsumerRecord]:
        while not self._closed:
            yield from self.poll(self.fetch_max_wait_ms)

    def _fetch_round(self, wait_ms: int) -> List[ConsumerRecord]:
        """One fetch per connection (or the prefetched one, when it asked for exactly
        the current positions), then, when records came, the next fetch is sent
        before these are checked and decoded, so the server works while Python does."""
        by_conn: Dict[Connection, List[TopicPartition]] = {}
        for tp in self._positions:
            by_conn.setdefault(self.client.connection_for(tp[0], tp[1]), []).append(tp)
        for conn in list(self._prefetch):
            if conn not in by_conn:
                conn.discard(self._prefetch.pop(conn)[0])
        sent = []
        budget = self.fetch_max_bytes
        for conn, tps in by_conn.items():
            offsets = tuple(self._positions[tp] for tp in tps)
            pre = self._prefetch.pop(conn, None)
            if pre is not None:
                cid, ptps, poffs = pre
                if ptps == tuple(tps) and poffs == offsets and not conn.closed:
                    sent.append((conn, cid, tps))
                    continue
                conn.discard(cid)
            parts = [(t, p, o, self.partition_max_bytes) for (t, p), o in zip(tps, offsets)]
            try:
                cid = conn.send(wire.fetch(wait_ms, 1, budget, parts))
            except ConnectionClosed:
                continue
            sent.append((conn, cid, tps))
        out: List[ConsumerRecord] = []
        for conn, cid, tps in sent:
            try:
                msg = conn.wait(cid, self.request_timeout_ms + max(wait_ms, self.fetch_max_wait_ms))
                results = wire.read_fetch(msg, len(tps))
                nexts = [next_offset_of(r.frames, self._positions.get(tp, 0)) if not r.error else -1 for tp, r in zip(tps, results)]
            except ProtocolError:
                conn.close()  # never trusted again
                raise
            except ConnectionClosed:
                continue  # the connection is made again on the next round
            if any(len(r.frames) for r in results) and all(n >= 0 for n in nexts):
                parts = [(t, p, n, self.partition_max_bytes) for (t, p), n in zip(tps, nexts)]
                try:
                    pcid = conn.send(wire.fetch(self.fetch_max_wait_ms, 1, budget, parts))
                    self._prefetch[conn] = (pcid, tuple(tps), tuple(nexts))
                except ConnectionClosed:
                    pass
            for tp, r in zip(tps, results):
                if tp not in self._positions:
                    continue
                if r.error == ErrorCode.OffsetOutOfRange:
                    self._positions[tp] = self._reset_offset(tp)
                    continue
                if r.error in _LEADER:
                    self.client.forget(tp[0])
                    continue
                if r.error:
                    raise StromError(r.error, r.message, topic=tp[0], partition=tp[1])
                pos = self._positions[tp]
                try:
                    _, next_offset = decode_frames(r.frames, tp[0], tp[1], pos, out)
                except ProtocolError:
                    conn.close()
                    raise
                if next_offset > pos:
                    self._positions[tp] = next_offset
        return out

    # ---------------------------------------------------------- commits

    def commit(self, offsets: Optional[Mapping[TopicPartition, int]] = None) -> None:
        """Commits ``offsets`` (next offset to read), by default every assigned position."""
        if self.group_id is None:
            raise ValueError("commit() needs a group_id")
        if offsets is None:
            offsets = dict(self._positions)
        if not offsets:
            return
        with self._hb_lock:
            member, generation = (self._member_id, self._generation) if self._topics else ("", -1)
        try:
            self.client.commit(self.group_id, offsets, member, generation)
        except StromError as e:
            if e.code in _REJOIN and self._topics:
                with self._hb_lock:
                    self._need_join = True  # fenced: the next poll rejoins
            raise
        self._committed_positions.update(offsets)
        self._last_commit = time.monotonic()

    def _auto_commit(self) -> None:
        changed = {tp: o for tp, o in self._positions.items() if self._committed_positions.get(tp) != o}
        self._last_commit = time.monotonic()
        if changed:
            try:
                self.commit(changed)
            except StromError as e:
                if e.code not in _REJOIN:
                    raise

    def committed(self, partitions: Optional[Sequence[TopicPartition]] = None) -> Dict[TopicPartition, int]:
        if self.group_id is None:
            raise ValueError("committed() needs a group_id")
        return self.client.committed(self.group_id, list(partitions or self._positions))

    def close(self) -> None:
        """Commits (auto-commit), revokes, leaves the group, closes the connections."""
        if self._closed:
            return
        self._closed = True
        self._hb_stop.set()
        try:
            if self.group_id is not None and self._topics and not self.client.main.closed:
                if self._positions and self.enable_auto_commit and not self._need_join:
                    try:
                        self.commit()
                    except StromError:
                        pass
                if self._positions and self._on_revoke:
                    self._on_revoke(self.assignment())
                if self._member_id:
                    try:
                        self.client.ensure_main().call(wire.leave_group(self.group_id, self._member_id))
                    except StromError:
                        pass
        finally:
            if self._hb_thread is not None:
                self._hb_thread.join(5)
            self.client.close()

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
