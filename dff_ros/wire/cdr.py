"""The project's own CDR (XCDR1) writer and reader for its data messages, so a chunk crosses
between processes without rosidl's Python conversion.

rclpy publishes a ``bytes`` message as already serialized, and a subscription made with
``raw=True`` hands its callback the serialized bytes. Those bytes are the same CDR that rosidl
writes, so ``ros2 topic echo`` and C++ nodes read the topics as before; what changes is that a
tensor's payload is copied once into the outgoing bytes and read back as a view of the received
ones (rosidl copies a ``uint8[]`` twice on each side: Python <-> C struct <-> CDR).

The layout is walked from the generated class's ``SLOT_TYPES`` (rosidl's own description), so
it follows the ``.msg`` files. ``blank(T)`` makes a plain, unchecked mirror of a message that
``serialize`` writes like the real one; ``deserialize`` gives such a mirror back, with every
``uint8[]`` a ``memoryview`` of the received bytes.
"""
from __future__ import annotations

import struct
import sys
from functools import lru_cache
from types import SimpleNamespace

from rosidl_parser.definition import (AbstractGenericString, AbstractSequence, AbstractWString, Array, BasicType,
                                      NamespacedType)

ENCAPSULATION = {b"\x00\x00": ">", b"\x00\x01": "<"}   # CDR_BE, CDR_LE (XCDR1): what rmw_fastrtps writes
HOST = b"\x00\x01" if sys.byteorder == "little" else b"\x00\x00"
PRIMITIVES = {"boolean": "?", "octet": "B", "uint8": "B", "int8": "b", "char": "B", "uint16": "H", "int16": "h",
              "uint32": "I", "int32": "i", "uint64": "Q", "int64": "q", "float": "f", "double": "d"}


class CDRError(ValueError):
    """Bytes that are not a message of the expected type (dropped by the receiver)."""


class Blank(SimpleNamespace):
    """A message's fields without rosidl's checks (``blank``/``deserialize``)."""


def _message_class(t: NamespacedType):
    module = __import__(".".join(t.namespaces), fromlist=[t.name])
    return getattr(module, t.name)


@lru_cache(maxsize=None)
def _layout(msg_type) -> tuple:
    """((field, kind, detail), ...): kind 'p' primitive, 's' string, 'm' message, and for
    sequences 'P' (detail: struct code), 'B' (uint8: kept as bytes), 'S' strings, 'M' messages."""
    out = []
    for field, t in zip(msg_type.get_fields_and_field_types(), msg_type.SLOT_TYPES):
        if isinstance(t, Array):
            raise TypeError(f"{msg_type.__name__}.{field}: fixed-size arrays are not supported by dff_ros.wire.cdr")
        seq = isinstance(t, AbstractSequence)
        v = t.value_type if seq else t
        if isinstance(v, AbstractWString):
            raise TypeError(f"{msg_type.__name__}.{field}: wstring is not supported by dff_ros.wire.cdr")
        if isinstance(v, BasicType):
            code = PRIMITIVES.get(v.typename)
            if code is None:
                raise TypeError(f"{msg_type.__name__}.{field}: {v.typename} is not supported by dff_ros.wire.cdr")
            out.append((field, ("B" if code == "B" else "P") if seq else "p", code))
        elif isinstance(v, AbstractGenericString):
            out.append((field, "S" if seq else "s", None))
        elif isinstance(v, NamespacedType):
            out.append((field, "M" if seq else "m", _message_class(v)))
        else:
            raise TypeError(f"{msg_type.__name__}.{field}: {type(v).__name__} is not supported by dff_ros.wire.cdr")
    return tuple(out)


_DEFAULTS = {"?": False, "f": 0.0, "d": 0.0}


def blank(msg_type) -> Blank:
    """An empty message of ``msg_type`` as a ``Blank`` (every field at its default)."""
    values = {}
    for field, kind, detail in _layout(msg_type):
        values[field] = (_DEFAULTS.get(detail, 0) if kind == "p" else "" if kind == "s"
                         else blank(detail) if kind == "m" else b"" if kind == "B" else [])
    return Blank(**values)


# ---------------------------------------------------------------- writing

class _Writer:
    def __init__(self):
        self.parts: list = [HOST, b"\x00\x00"]
        self.pos = 0   # offset in the body (after the 4-byte encapsulation), which alignment counts from

    def align(self, n: int) -> None:
        pad = -self.pos % n
        if pad:
            self.parts.append(bytes(pad))
            self.pos += pad

    def put(self, code: str, value) -> None:
        size = struct.calcsize(code)
        self.align(size)
        self.parts.append(struct.pack("=" + code, value))
        self.pos += size

    def raw(self, data) -> None:
        self.parts.append(data)
        self.pos += len(data)

    def string(self, s: str) -> None:
        b = s.encode("utf-8") + b"\x00"
        self.put("I", len(b))
        self.raw(b)

    def message(self, msg_type, m) -> None:
        for field, kind, detail in _layout(msg_type):
            v = getattr(m, field)
            if kind == "p":
                self.put(detail, v)
            elif kind == "s":
                self.string(v)
            elif kind == "m":
                self.message(detail, v)
            elif kind == "B":
                view = memoryview(v).cast("B")
                self.put("I", len(view))
                self.raw(view)
            elif kind == "P":
                self.put("I", len(v))
                if len(v):
                    self.align(struct.calcsize(detail))
                    self.raw(struct.pack(f"={len(v)}{detail}", *v))
            elif kind == "S":
                self.put("I", len(v))
                for s in v:
                    self.string(s)
            else:
                self.put("I", len(v))
                for item in v:
                    self.message(detail, item)


def serialize(msg, msg_type=None) -> bytes:
    """CDR bytes of a message (a rosidl instance or a ``Blank`` of ``msg_type``): what
    ``rclpy.serialization.serialize_message`` writes, with each ``uint8[]`` copied once."""
    return b"".join(_written(msg, msg_type).parts)


def serialize_into(msg, msg_type, buffer_for) -> memoryview:
    """Like ``serialize``, into ``buffer_for(size)`` (a writable buffer of at least ``size``
    bytes, e.g. one kept from the last message); returns the view of the bytes written."""
    parts = _written(msg, msg_type).parts
    size = sum(len(p) for p in parts)   # every part is bytes or a memoryview of bytes
    out = memoryview(buffer_for(size)).cast("B")[:size]
    pos = 0
    for p in parts:
        n = len(p)
        out[pos:pos + n] = p
        pos += n
    return out


def _written(msg, msg_type) -> _Writer:
    if msg_type is None and isinstance(msg, Blank):
        raise TypeError("serializing a Blank needs its msg_type")
    w = _Writer()
    w.message(msg_type or type(msg), msg)
    return w


# ---------------------------------------------------------------- reading

class _Reader:
    def __init__(self, data: bytes, what: str):
        self.view = memoryview(data)
        if self.view.ndim != 1 or self.view.itemsize != 1:
            self.view = self.view.cast("B")
        self.what = what
        head = bytes(self.view[:2])
        if len(self.view) < 4 or head not in ENCAPSULATION:
            raise CDRError(f"{what}: not CDR (encapsulation {head.hex() or 'missing'}; XCDR1 expected)")
        self.order = ENCAPSULATION[head]
        self.pos = 4   # absolute offset; alignment counts from 4 (the body's start)

    def need(self, n: int, field: str) -> None:
        if n < 0 or self.pos + n > len(self.view):
            raise CDRError(f"{self.what}.{field}: {n} bytes needed at offset {self.pos}, "
                           f"the message has {len(self.view)}")

    def get(self, code: str, field: str):
        size = struct.calcsize(code)
        self.pos += -(self.pos - 4) % size
        self.need(size, field)
        (v,) = struct.unpack_from(self.order + code, self.view, self.pos)
        self.pos += size
        return v

    def count(self, field: str, item_size: int) -> int:
        n = self.get("I", field)
        self.need(n * item_size, field)   # before anything is made for n items
        return n

    def string(self, field: str) -> str:
        n = self.count(field, 1)
        b = self.view[self.pos:self.pos + n]
        self.pos += n
        if n and b[-1] != 0:
            raise CDRError(f"{self.what}.{field}: string without its terminating NUL")
        try:
            return str(b[:-1] if n else b, "utf-8")
        except UnicodeDecodeError as e:
            raise CDRError(f"{self.what}.{field}: not UTF-8 ({e.reason})") from None

    def message(self, msg_type, prefix: str) -> Blank:
        values = {}
        for field, kind, detail in _layout(msg_type):
            name = f"{prefix}{field}"
            if kind == "p":
                values[field] = self.get(detail, name)
            elif kind == "s":
                values[field] = self.string(name)
            elif kind == "m":
                values[field] = self.message(detail, name + ".")
            elif kind == "B":
                n = self.count(name, 1)
                values[field] = self.view[self.pos:self.pos + n]
                self.pos += n
            elif kind == "P":
                size = struct.calcsize(detail)
                n = self.count(name, size)
                if n:
                    self.pos += -(self.pos - 4) % size
                    self.need(n * size, name)
                values[field] = list(struct.unpack_from(f"{self.order}{n}{detail}", self.view, self.pos))
                self.pos += n * size
            elif kind == "S":
                values[field] = [self.string(f"{name}[{i}]") for i in range(self.count(name, 4))]
            else:
                values[field] = [self.message(detail, f"{name}[{i}].") for i in range(self.count(name, 1))]
        return Blank(**values)


def deserialize(data: bytes, msg_type) -> Blank:
    """A ``Blank`` of ``msg_type`` read from CDR bytes; every ``uint8[]`` is a read-only
    ``memoryview`` of ``data`` (no copy). Raises CDRError naming the field that does not fit."""
    r = _Reader(data, msg_type.__name__)
    m = r.message(msg_type, "")
    if len(r.view) - r.pos > 8:   # a writer may pad the end to 4 (or 8) bytes, no more
        raise CDRError(f"{msg_type.__name__}: {len(r.view) - r.pos} bytes after the message")
    return m
