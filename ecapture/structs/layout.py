"""Layout of a construct ``Struct``: field offsets and sizes, a fingerprint, and a fast
``struct.Struct`` for its fixed-size prefix.

Decoding tens of thousands of events per second through construct's interpreter is too
slow, so hot paths use :func:`header_codec`, which is derived from the declaration: the
construct Struct stays the single source of truth.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

import construct as cs


@dataclass(frozen=True)
class KernelStruct:
    """A struct that crosses from kernel to user space: its C name, the kern/ header that
    declares it, and its construct declaration (same field names, order and offsets)."""

    name: str
    header: str
    decl: cs.Struct
    kind: str  # the C constant its first field carries, e.g. "TLS_EVENT_DATA"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.name, self.decl)


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    size: int | None  # None: variable length (only allowed as the last field)
    kind: str  # a short type description, part of the fingerprint


def _unwrap(sub: Any) -> Any:
    while isinstance(sub, cs.Renamed):
        sub = sub.subcon
    return sub


def _describe(sub: Any) -> tuple[str, int | None, str | None]:
    """(kind, size, struct format char(s)) of one field; size None when variable."""
    sub = _unwrap(sub)
    if isinstance(sub, cs.FormatField):
        fmt = sub.fmtstr
        return (fmt, struct.calcsize(fmt), fmt[1:])
    if isinstance(sub, cs.Bytes):
        length = sub.length
        if isinstance(length, int):
            return (f"bytes[{length}]", length, f"{length}s")
        return ("bytes[var]", None, None)
    if isinstance(sub, cs.Array) and isinstance(sub.count, int):
        kind, size, fmt = _describe(sub.subcon)
        if size is None or fmt is None:
            raise TypeError("arrays of variable-size elements are not supported")
        return (f"{kind}[{sub.count}]", size * sub.count, None)
    raise TypeError(f"unsupported construct field type {type(sub).__name__}")


def layout(decl: cs.Struct) -> list[Field]:
    """Offsets and sizes of every named field, in declaration order."""
    fields: list[Field] = []
    offset = 0
    for sub in decl.subcons:
        if offset is None:
            raise TypeError(f"field {sub.name} follows a variable-length field")
        kind, size, _ = _describe(sub)
        fields.append(Field(sub.name, offset, size, kind))
        offset = offset + size if size is not None else None  # type: ignore[assignment]
    return fields


def fingerprint(name: str, decl: cs.Struct) -> str:
    """A short stable hash of a struct's name and layout, stored in recordings so replay can
    tell that the bytes were produced by the same layout it is about to decode."""
    text = name + ";" + ";".join(f"{f.name}:{f.offset}:{f.size}:{f.kind}" for f in layout(decl))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class HeaderCodec:
    """A ``struct.Struct`` for the fixed-size prefix of a declaration."""

    names: tuple[str, ...]
    codec: struct.Struct
    tail: str | None  # name of the variable-length last field, if any

    @property
    def size(self) -> int:
        return self.codec.size


def header_codec(decl: cs.Struct) -> HeaderCodec:
    names: list[str] = []
    fmt = "<"
    tail = None
    for sub in decl.subcons:
        _, size, code = _describe(sub)
        if size is None:
            tail = sub.name
            break
        if code is None:
            raise TypeError(f"field {sub.name} has no struct format")
        names.append(sub.name)
        fmt += code
    codec = struct.Struct(fmt)
    return HeaderCodec(tuple(names), codec, tail)
