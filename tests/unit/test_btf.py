"""The BTF reader against blobs built here by the format's rules: members found by name,
inside anonymous members too, through typedefs, with bitfield offsets, and one-line errors
for what is not BTF."""

from __future__ import annotations

import struct

import pytest

from ecapture.live.btf import Btf, BtfError


class Blob:
    """A BTF blob, type by type (ids from 1), as the kernel lays it out."""

    def __init__(self) -> None:
        self.strings = b"\0"
        self.types = b""
        self.count = 0

    def name(self, text: str) -> int:
        if not text:
            return 0
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def add(self, kind: int, name: str, size_or_type: int, tail: bytes = b"", vlen: int = 0,
            bitfields: bool = False) -> int:
        info = (int(bitfields) << 31) | (kind << 24) | vlen
        self.types += struct.pack("<III", self.name(name), info, size_or_type) + tail
        self.count += 1
        return self.count

    def int_(self, name: str) -> int:
        return self.add(1, name, 4, struct.pack("<I", 32))

    def struct_(self, name: str, size: int, members: list[tuple[str, int, int]],
                union: bool = False, bitfields: bool = False) -> int:
        tail = b"".join(struct.pack("<III", self.name(m), t, off) for m, t, off in members)
        return self.add(5 if union else 4, name, size, tail, len(members), bitfields)

    def bytes(self, magic: int = 0xEB9F) -> bytes:
        header = struct.pack("<HBBIIIII", magic, 1, 0, 24, 0, len(self.types),
                             len(self.types), len(self.strings))
        return header + self.types + self.strings


def sample() -> bytes:
    b = Blob()
    u32 = b.int_("unsigned int")                                    # 1
    ptr = b.add(2, "", u32)                                         # 2: unsigned int *
    files = b.struct_("files_struct", 64, [("count", u32, 0), ("fdt", ptr, 256)])  # 3
    files_ptr = b.add(2, "", files)                                 # 4
    anon = b.struct_("", 16, [("pid", u32, 0), ("files", files_ptr, 64)], union=False)  # 5
    typedef = b.add(8, "anon_t", anon)                              # 6: a typedef of it
    b.add(6, "color", 4, struct.pack("<Ii", b.name("RED"), 1), 1)   # 7: an enum between
    b.struct_("task_struct", 64, [("state", u32, 0), ("", typedef, 128)])  # 8
    # Bitfields: the offset word holds (size << 24) | bit offset.
    b.struct_("flags_t", 8, [("a", u32, (3 << 24) | 0), ("b", u32, (5 << 24) | 32)],
              bitfields=True)                                       # 9
    return b.bytes()


def test_members_by_name_through_anonymous_members_and_typedefs() -> None:
    btf = Btf(sample())
    assert btf.offset("files_struct", "fdt") == 32
    assert btf.offset("task_struct", "state") == 0
    assert btf.offset("task_struct", "files") == 16 + 8  # the anonymous member's, plus its own
    assert btf.offset("task_struct", "pid") == 16
    assert btf.offset("flags_t", "b") == 4


@pytest.mark.parametrize(("struct_name", "member", "message"), [
    ("no_such", "x", "no struct no_such"),
    ("task_struct", "nothing", "struct task_struct has no member nothing"),
])
def test_missing_is_an_error_that_names_it(struct_name: str, member: str, message: str) -> None:
    with pytest.raises(BtfError, match=message):
        Btf(sample()).offset(struct_name, member)


def test_not_btf() -> None:
    with pytest.raises(BtfError, match="bad magic"):
        Btf(Blob().bytes(magic=0x1234))
    with pytest.raises(BtfError, match="too short"):
        Btf(b"\x9f\xeb")
