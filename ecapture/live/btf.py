"""Offsets of kernel struct members, read from the running kernel's BTF.

bcc compiles against kernel headers, and a header such as linux/fdtable.h costs seconds of
parsing at every start. The few members a program walks (the task's file table, say) are
cheaper to look up here, in /sys/kernel/btf/vmlinux, and to hand over as -D flags. Only the
layout of the kernel that runs matters, and BTF is that layout.

The format is the kernel's (Documentation/bpf/btf.rst): a header, then the types, each a
12-byte head (name offset, info, size or type) and a tail whose length its kind decides,
then the strings. Only what finding a member needs is decoded.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from functools import lru_cache

VMLINUX = "/sys/kernel/btf/vmlinux"
_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")
_MEMBER = struct.Struct("<III")

# Kinds (BTF_KIND_*) and the bytes each adds after the 12-byte head: a fixed tail, or one
# entry of this size per vlen.
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
_FIXED_TAIL = {_INT: 4, _ARRAY: 12, 14: 4, 17: 4}  # INT, ARRAY, VAR, DECL_TAG
_PER_ENTRY = {_STRUCT: 12, _UNION: 12, _ENUM: 8, 13: 8, 15: 12, 19: 12}  # + FUNC_PROTO, ...
_QUALIFIERS = {_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, 18}  # 18: TYPE_TAG


class BtfError(Exception):
    pass


class Btf:
    """The struct and union types of one BTF blob, by name, with their members."""

    def __init__(self, blob: bytes):
        if len(blob) < _HEADER.size:
            raise BtfError("too short for a BTF header")
        magic, _, _, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(blob)
        if magic != _MAGIC:
            raise BtfError(f"bad magic 0x{magic:x}")
        types = blob[hdr_len + type_off:hdr_len + type_off + type_len]
        self._strings = blob[hdr_len + str_off:hdr_len + str_off + str_len]
        # id -> (kind, name_off, size_or_type, members [(name_off, type, bit offset)])
        self._types: list[tuple[int, int, int, list[tuple[int, int, int]]]] = [(0, 0, 0, [])]
        self._structs: dict[str, int] = {}
        pos = 0
        while pos + _TYPE.size <= len(types):
            name_off, info, size_or_type = _TYPE.unpack_from(types, pos)
            pos += _TYPE.size
            kind, vlen, bitfields = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            members: list[tuple[int, int, int]] = []
            if kind in (_STRUCT, _UNION):
                for i in range(vlen):
                    m_name, m_type, m_off = _MEMBER.unpack_from(types, pos + 12 * i)
                    # With bitfields the offset word also holds the field's size.
                    members.append((m_name, m_type, m_off & 0xFFFFFF if bitfields else m_off))
                if name_off:
                    self._structs.setdefault(self._name(name_off), len(self._types))
            pos += _FIXED_TAIL.get(kind, 0) + _PER_ENTRY.get(kind, 0) * vlen
            self._types.append((kind, name_off, size_or_type, members))

    def _name(self, off: int) -> str:
        end = self._strings.find(b"\0", off)
        return self._strings[off:end].decode("ascii", "replace")

    def _resolve(self, type_id: int) -> int:
        for _ in range(16):  # typedef const volatile ... struct
            kind, _, target, _ = self._types[type_id]
            if kind not in _QUALIFIERS:
                return type_id
            type_id = target
        return type_id

    def _find(self, type_id: int, member: str) -> int | None:
        """Byte offset of ``member`` in the struct or union ``type_id``, looking into its
        anonymous members too (task_struct keeps many in one)."""
        for m_name, m_type, m_off in self._types[type_id][3]:
            if m_name and self._name(m_name) == member:
                return m_off // 8
            if not m_name:
                inner = self._resolve(m_type)
                if self._types[inner][0] in (_STRUCT, _UNION):
                    found = self._find(inner, member)
                    if found is not None:
                        return m_off // 8 + found
        return None

    def offset(self, struct_name: str, member: str) -> int:
        type_id = self._structs.get(struct_name)
        if type_id is None:
            raise BtfError(f"no struct {struct_name}")
        found = self._find(type_id, member)
        if found is None:
            raise BtfError(f"struct {struct_name} has no member {member}")
        return found


@lru_cache(maxsize=1)
def _vmlinux() -> Btf:
    try:
        with open(VMLINUX, "rb") as f:
            return Btf(f.read())
    except OSError as e:
        raise BtfError(f"{VMLINUX}: {e.strerror}") from None


def member_offsets(wanted: Iterable[tuple[str, str, str]]) -> Mapping[str, int]:
    """``{name: offset}`` for each (name, struct, member) of ``wanted`` in the running
    kernel; empty when the kernel has no BTF or lacks one of them (the caller then does
    without all of them)."""
    try:
        btf = _vmlinux()
        return {name: btf.offset(struct_name, member) for name, struct_name, member in wanted}
    except BtfError:
        return {}
