"""CRC-32C (Castagnoli), the checksum of Strom's batch frames.

Uses a maintained native implementation when one is installed (the
``crc32c`` package, else ``google-crc32c``), and a table-driven pure-Python
fallback otherwise. ``IMPLEMENTATION`` names the one in use.
"""

from __future__ import annotations

from typing import Callable, List

__all__ = ["crc32c", "crc32c_pure", "IMPLEMENTATION"]


def _table() -> List[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _table()


def crc32c_pure(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C in pure Python (slow: about 10 MB/s; the fallback)."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in bytes(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


crc32c: Callable[[bytes | bytearray | memoryview], int]
try:
    import crc32c as _crc32c_mod  # type: ignore[import-not-found]

    crc32c = _crc32c_mod.crc32c
    IMPLEMENTATION = "crc32c"
except ImportError:  # pragma: no cover - depends on the environment
    try:
        import google_crc32c as _google  # type: ignore[import-not-found]

        def crc32c(data: bytes | bytearray | memoryview) -> int:
            return int(_google.value(bytes(data)))

        IMPLEMENTATION = "google-crc32c"
    except ImportError:
        crc32c = crc32c_pure
        IMPLEMENTATION = "pure-python"
