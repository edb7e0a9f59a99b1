"""A bounds-checked FlatBuffers reader for bytes that come from the network.

The Python ``flatbuffers`` runtime has no verifier, and its generated
accessors trust every offset they read. Everything this client receives is
read through ``Table`` instead: each offset, length and field is checked
against the buffer before it is used, so a malformed or hostile message
raises ``ProtocolError`` instead of an ``IndexError`` deep in the runtime or
a loop over a forged billion-element vector.

Invariants: a ``Table`` only exists for a position whose soffset, vtable and
table size lie inside the buffer; every vector returned was checked to fit
in the buffer with its declared length, so the loops over it are bounded by
the buffer's size.
"""

from __future__ import annotations

import struct
from typing import List, Optional

from strom.errors import ProtocolError

_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<I").unpack_from
_i32 = struct.Struct("<i").unpack_from
_HH = struct.Struct("<HH").unpack_from
_SCALARS = {
    "b": struct.Struct("<b"),
    "B": struct.Struct("<B"),
    "h": struct.Struct("<h"),
    "H": struct.Struct("<H"),
    "i": struct.Struct("<i"),
    "I": struct.Struct("<I"),
    "q": struct.Struct("<q"),
    "Q": struct.Struct("<Q"),
    "?": struct.Struct("<?"),
}


class Table:
    """One checked table of ``buf`` at ``pos``."""

    __slots__ = ("buf", "pos", "vt", "vlen", "tlen")

    def __init__(self, buf: bytes | bytearray | memoryview, pos: int):
        n = len(buf)
        if pos < 0 or pos + 4 > n or pos & 3:
            raise ProtocolError("table offset %d outside a %d-byte buffer" % (pos, n))
        vt = pos - _i32(buf, pos)[0]
        if vt < 0 or vt + 4 > n or vt & 1:
            raise ProtocolError("vtable offset %d outside the buffer" % vt)
        vlen, tlen = _HH(buf, vt)
        if vlen < 4 or vlen & 1 or vt + vlen > n or tlen < 4 or pos + tlen > n:
            raise ProtocolError("vtable or table size out of bounds")
        self.buf = buf
        self.pos = pos
        self.vt = vt
        self.vlen = vlen
        self.tlen = tlen

    def _field(self, slot: int, size: int) -> int:
        """Absolute position of the field in ``slot`` (0 when absent)."""
        o = 4 + 2 * slot
        if o + 2 > self.vlen:
            return 0
        f = _u16(self.buf, self.vt + o)[0]
        if f == 0:
            return 0
        if f + size > self.tlen:
            raise ProtocolError("field %d past the end of its table" % slot)
        return self.pos + f

    def scalar(self, slot: int, fmt: str, default: int = 0) -> int:
        s = _SCALARS[fmt]
        p = self._field(slot, s.size)
        return default if p == 0 else s.unpack_from(self.buf, p)[0]

    def _ref(self, slot: int) -> int:
        """Target of the uoffset in ``slot``, checked to lie in the buffer (0: absent)."""
        p = self._field(slot, 4)
        if p == 0:
            return 0
        t = p + _u32(self.buf, p)[0]
        if t + 4 > len(self.buf):
            raise ProtocolError("offset in field %d points outside the buffer" % slot)
        return t

    def _vector(self, slot: int, elem_size: int) -> tuple[int, int]:
        """(start of the elements, count), checked to fit (count 0 when absent)."""
        t = self._ref(slot)
        if t == 0:
            return 0, 0
        if t & 3:
            raise ProtocolError("misaligned vector")
        count = _u32(self.buf, t)[0]
        if t + 4 + count * elem_size > len(self.buf):
            raise ProtocolError("vector of %d elements overruns the buffer" % count)
        return t + 4, count

    def bytes(self, slot: int) -> Optional[bytes]:
        start, count = self._vector(slot, 1)
        if start == 0:
            return None
        return bytes(self.buf[start : start + count])

    def string(self, slot: int) -> str:
        b = self.bytes(slot)
        if b is None:
            return ""
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError("string in field %d is not UTF-8: %s" % (slot, e)) from None

    def table(self, slot: int) -> Optional["Table"]:
        t = self._ref(slot)
        return None if t == 0 else Table(self.buf, t)

    def tables(self, slot: int) -> List["Table"]:
        start, count = self._vector(slot, 4)
        out = []
        buf = self.buf
        for i in range(count):
            p = start + 4 * i
            out.append(Table(buf, p + _u32(buf, p)[0]))
        return out

    def strings(self, slot: int) -> List[str]:
        start, count = self._vector(slot, 4)
        out = []
        buf = self.buf
        n = len(buf)
        for i in range(count):
            p = start + 4 * i
            t = p + _u32(buf, p)[0]
            if t + 4 > n:
                raise ProtocolError("string offset outside the buffer")
            ln = _u32(buf, t)[0]
            if t + 4 + ln > n:
                raise ProtocolError("string overruns the buffer")
            try:
                out.append(bytes(buf[t + 4 : t + 4 + ln]).decode("utf-8"))
            except UnicodeDecodeError as e:
                raise ProtocolError("string is not UTF-8: %s" % e) from None
        return out

    def scalars(self, slot: int, fmt: str) -> List[int]:
        s = _SCALARS[fmt]
        start, count = self._vector(slot, s.size)
        if count == 0:
            return []
        return list(struct.unpack_from("<%d%s" % (count, fmt), self.buf, start))


def root(buf: bytes | bytearray | memoryview) -> Table:
    """The root table of a finished (not size-prefixed) buffer."""
    if len(buf) < 8:
        raise ProtocolError("FlatBuffer of %d bytes is too short" % len(buf))
    return Table(buf, _u32(buf, 0)[0])
