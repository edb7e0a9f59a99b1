"""Strom's Python client: producer, consumer, admin, and asyncio variants
over Strom's native FlatBuffers protocol (docs/protocol.md).

The generated FlatBuffers code lives in the subpackages ``strom.protocol``
and ``strom.record`` (``flatc --python`` output). An installed package holds
them as ordinary subpackages; in a source checkout they are read from
``client/python/strom_fb/strom/`` (where ``scripts/regen-flatbuffers`` writes
them), which is added to this package's search path below.
"""

from __future__ import annotations

import os as _os

_generated = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "strom_fb", "strom")
if not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "protocol")) and _os.path.isdir(_generated):
    __path__.append(_generated)  # source checkout: the generated subpackages

from strom._crc import IMPLEMENTATION as CRC32C_IMPLEMENTATION  # noqa: E402
from strom.errors import ConnectionClosed, ErrorCode, ProtocolError, StromError  # noqa: E402
from strom.frames import ConsumerRecord, murmur2, partition_for_key  # noqa: E402
from strom.client import EARLIEST, LATEST, Admin, Client  # noqa: E402
from strom.producer import Producer, RecordMetadata  # noqa: E402
from strom.consumer import Consumer  # noqa: E402
from strom.aio import AsyncClient, AsyncConsumer, AsyncProducer  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Admin",
    "AsyncClient",
    "AsyncConsumer",
    "AsyncProducer",
    "Client",
    "Consumer",
    "EARLIEST",
    "LATEST",
    "Producer",
    "RecordMetadata",
    "CRC32C_IMPLEMENTATION",
    "ConnectionClosed",
    "ConsumerRecord",
    "ErrorCode",
    "ProtocolError",
    "StromError",
    "murmur2",
    "partition_for_key",
    "__version__",
]
