"""Errors raised by the Strom client.

``StromError`` carries a stable wire error code (``ErrorCode`` in
``flatbuffers/schema/protocol.fbs``); ``ProtocolError`` is raised for bytes
from the network that break the protocol (bad lengths, checksums, malformed
FlatBuffers): the connection that produced them is closed, never trusted.
"""

from __future__ import annotations

from typing import Dict, Optional

from strom.protocol.ErrorCode import ErrorCode

__all__ = [
    "ErrorCode",
    "StromError",
    "ProtocolError",
    "ConnectionClosed",
    "error_name",
    "RETRIABLE",
]

_NAMES: Dict[int, str] = {
    v: k for k, v in vars(ErrorCode).items() if not k.startswith("_") and isinstance(v, int)
}


def error_name(code: int) -> str:
    """The name of a wire error code (``"Unknown"`` for an unknown number)."""
    return _NAMES.get(code, "Unknown")


class StromError(Exception):
    """The server refused a request: ``code`` is the wire error code."""

    def __init__(self, code: int, message: str = "", *, topic: Optional[str] = None, partition: Optional[int] = None):
        where = ""
        if topic is not None:
            where = " [%s/%s]" % (topic, partition if partition is not None else "-")
        super().__init__("%s (%d)%s: %s" % (error_name(code), code, where, message))
        self.code = code
        self.message = message
        self.topic = topic
        self.partition = partition

    @property
    def name(self) -> str:
        return error_name(self.code)

    @property
    def retriable(self) -> bool:
        return self.code in RETRIABLE


class ProtocolError(StromError):
    """Bytes from the network that break the protocol; the connection is closed."""

    def __init__(self, message: str):
        super().__init__(ErrorCode.CorruptBatch, message)


class ConnectionClosed(StromError):
    """The connection broke; requests in flight on it have an unknown outcome."""

    def __init__(self, message: str):
        super().__init__(ErrorCode.Internal, message)


#: Codes after which the same request may succeed when sent again.
RETRIABLE = frozenset(
    {
        ErrorCode.Timeout,
        ErrorCode.ShuttingDown,
        ErrorCode.PartitionFailed,
        ErrorCode.PartitionUnavailable,
        ErrorCode.RecordsTruncated,
        ErrorCode.NotLeader,
        ErrorCode.LeaderNotAvailable,
        ErrorCode.CoordinatorNotAvailable,
        ErrorCode.NotEnoughSpace,
    }
)
