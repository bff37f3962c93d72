"""Finding what to attach to: symbol tables decoded in bulk must name exactly the functions
pyelftools' own symbol objects name, for real binaries of this machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from ecapture.errors import AttachError
from ecapture.targets import build_id, elf_symbols

CANDIDATES = [os.path.realpath(sys.executable), "/bin/bash", "/usr/bin/node",
              "/usr/lib/x86_64-linux-gnu/libssl.so.3", "/usr/lib/x86_64-linux-gnu/libc.so.6",
              "/usr/lib/aarch64-linux-gnu/libc.so.6"]
BINARIES = [p for p in dict.fromkeys(CANDIDATES) if os.path.isfile(p)]


def slow_functions(path: str) -> frozenset[str]:
    """What pyelftools says, one symbol object at a time: the reference."""
    names: set[str] = set()
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for section_name in (".dynsym", ".symtab"):
            section = elf.get_section_by_name(section_name)
            if section is None:
                continue
            for sym in section.iter_symbols():  # type: ignore[attr-defined]
                if sym["st_info"]["type"] == "STT_FUNC" and sym["st_shndx"] != "SHN_UNDEF":
                    names.add(sym.name.split("@", 1)[0])
    return frozenset(names)


def test_there_are_binaries_to_compare() -> None:
    assert len(BINARIES) >= 2, "no ELF binaries found on this machine"


@pytest.mark.parametrize("path", [p for p in BINARIES if os.path.getsize(p) < 20 << 20])
def test_bulk_symbols_equal_pyelftools(path: str) -> None:
    assert elf_symbols(path) == slow_functions(path)


def test_not_an_elf_is_one_line_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"\x7fELF" + b"\x00" * 60)
    with pytest.raises(AttachError, match="not a readable ELF file"):
        elf_symbols(str(junk))
    with pytest.raises(AttachError, match="no such file"):
        build_id(str(tmp_path / "missing.so"))
