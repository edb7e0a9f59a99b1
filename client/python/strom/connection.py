"""One blocking TCP connection speaking the native protocol.

Requests are pipelined: ``send`` returns the request's correlation id at
once and ``wait`` returns its response, keeping responses to other requests
(which may come back out of order, docs/protocol.md) until they are asked
for. ``poll`` reads whatever has arrived without blocking, for a caller that
multiplexes several connections with ``selectors`` (the producer's sender).

Invariants and limits:
- the ApiVersions handshake is the first exchange; ``info`` holds its answer;
- every message from the server is framed in two passes: its length fields
  are checked (``wire.parse_envelope_head``: at most the server's announced
  ``message_bytes_max``, table at most 4 MiB) before its body is read, and
  the body is read through the bounds-checked reader;
- a response is kept only for a correlation id this connection sent and
  still waits for, so at most ``inflight`` responses are ever held (one
  whose request was ``discard``-ed is dropped when it arrives);
- anything that breaks these rules, and any socket error, closes the
  connection: it is never used again (``closed`` is set), and the error
  raised says so (``ProtocolError`` or ``ConnectionClosed``).
"""

from __future__ import annotations

import socket
import time
from typing import Dict, List, Optional, Sequence, Set, Tuple

from strom import wire
from strom.errors import ConnectionClosed, ProtocolError, StromError

#: Bytes read from the socket per receive call.
RECV_CHUNK_BYTES = 1 << 20
#: Default timeout of one request, beyond any server-side wait it asks for.
REQUEST_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_MS = 10_000


def split_addr(addr: str) -> Tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError("server address %r is not HOST:PORT" % addr)
    return host.strip("[]"), int(port)


class Connection:
    """A handshaken connection to one server (or one shard's port of it)."""

    def __init__(
        self,
        addr: str,
        *,
        client_name: str = "strom-python",
        request_timeout_ms: int = REQUEST_TIMEOUT_MS,
        connect_timeout_ms: int = CONNECT_TIMEOUT_MS,
    ):
        self.addr = addr
        self.request_timeout_ms = request_timeout_ms
        host, port = split_addr(addr)
        try:
            self.sock = socket.create_connection((host, port), timeout=connect_timeout_ms / 1000)
        except OSError as e:
            raise ConnectionClosed("cannot connect to %s: %s" % (addr, e)) from e
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.closed = False
        self._next_cid = 1
        self._waiting: Set[int] = set()
        self._ready: Dict[int, wire.Message] = {}
        self._discard: Set[int] = set()
        self._rbuf = bytearray()
        self._chunk = bytearray(RECV_CHUNK_BYTES)
        self._message_bytes_max = wire.RESPONSE_BYTES_MAX
        self.info = wire.read_api_versions(self.call(wire.api_versions(client_name)))
        self._message_bytes_max = self.info.message_bytes_max

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def inflight(self) -> int:
        return len(self._waiting) + len(self._ready)

    def _broken(self, why: str) -> ConnectionClosed:
        self.close()
        return ConnectionClosed("connection to %s: %s" % (self.addr, why))

    def send(self, req: Tuple[int, wire.BodyFn], trailer: Sequence[bytes] = (), expect_response: bool = True) -> int:
        """Sends a request; returns its correlation id (``wait`` for the answer)."""
        if self.closed:
            raise ConnectionClosed("connection to %s is closed" % self.addr)
        cid = self._next_cid
        self._next_cid += 1
        body_type, build = req
        trailer_len = sum(len(t) for t in trailer)
        head = wire.encode_request(cid, body_type, build, trailer_len)
        if 4 + len(head) - 8 + trailer_len > self._message_bytes_max:
            raise ValueError("request of %d bytes exceeds the server's limit" % (len(head) + trailer_len))
        data = head if not trailer else b"".join([head, *trailer])
        try:
            self.sock.settimeout(self.request_timeout_ms / 1000)
            self.sock.sendall(data)
        except OSError as e:
            raise self._broken("send failed: %s" % e) from e
        if expect_response:
            self._waiting.add(cid)
        return cid

    def _read_some(self, timeout_s: Optional[float]) -> bool:
        """One receive (up to ``timeout_s``; 0 = only what is there). False: nothing came."""
        try:
            self.sock.settimeout(timeout_s)
            n = self.sock.recv_into(self._chunk)
        except (socket.timeout, BlockingIOError):
            return False
        except OSError as e:
            raise self._broken("receive failed: %s" % e) from e
        if n == 0:
            raise self._broken("closed by the server")
        self._rbuf += memoryview(self._chunk)[:n]
        self._parse()
        return True

    def _parse(self) -> None:
        buf = self._rbuf
        while len(buf) >= 8:
            try:
                total, fb_len = wire.parse_envelope_head(bytes(buf[:8]), self._message_bytes_max)
            except ProtocolError as e:
                self.close()
                raise ProtocolError("from %s: %s (connection closed)" % (self.addr, e.message)) from None
            if len(buf) < 4 + total:
                return
            body = bytes(buf[8 : 4 + total])
            del buf[: 4 + total]
            try:
                msg = wire.parse_response(body, fb_len)
            except ProtocolError as e:
                self.close()
                raise ProtocolError("from %s: %s (connection closed)" % (self.addr, e.message)) from None
            if msg.correlation_id in self._discard:
                self._discard.discard(msg.correlation_id)
                self._waiting.discard(msg.correlation_id)
                continue
            if msg.correlation_id not in self._waiting:
                self.close()
                raise ProtocolError(
                    "from %s: response to unknown request %d (connection closed)" % (self.addr, msg.correlation_id)
                )
            self._waiting.discard(msg.correlation_id)
            self._ready[msg.correlation_id] = msg

    def wait(self, cid: int, timeout_ms: Optional[int] = None) -> wire.Message:
        """The response to request ``cid``, waiting at most ``timeout_ms`` (default: the request timeout)."""
        deadline = time.monotonic() + (timeout_ms if timeout_ms is not None else self.request_timeout_ms) / 1000
        while cid not in self._ready:
            if cid not in self._waiting:
                raise ValueError("request %d is not in flight on this connection" % cid)
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._broken("no response to request %d in time" % cid)
            self._read_some(left)
        return self._ready.pop(cid)

    def discard(self, cid: int) -> None:
        """The response to ``cid`` is not wanted: dropped (now, or when it arrives)."""
        if self._ready.pop(cid, None) is None and cid in self._waiting:
            self._discard.add(cid)

    def poll(self) -> List[wire.Message]:
        """Responses that have arrived (reads what the socket holds, never blocks)."""
        if self._waiting:
            self._read_some(0)
        out = list(self._ready.values())
        self._ready.clear()
        return out

    def call(
        self, req: Tuple[int, wire.BodyFn], trailer: Sequence[bytes] = (), timeout_ms: Optional[int] = None
    ) -> wire.Message:
        """``send`` then ``wait``."""
        return self.wait(self.send(req, trailer), timeout_ms)


def check_all(results: Dict[str, Optional[StromError]]) -> None:
    for e in results.values():
        if e is not None:
            raise e
