"""Finding what to attach to: libraries by name, their symbols, versions and build-ids.

Reads files and /proc, needs no root and no bcc. Errors are AttachError with a message that
says what to install or which option to pass.
"""

from __future__ import annotations

import importlib
import os
import re
import struct
import subprocess
from collections.abc import Iterable
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ecapture.errors import AttachError

# Where Debian, Ubuntu, RHEL and friends put shared libraries when ldconfig is unhelpful.
_LIB_DIRS = (
    "/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
    "/lib/aarch64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib", "/lib",
)


def ldconfig_libraries() -> dict[str, str]:
    """soname -> path from ``ldconfig -p`` (first entry wins, as for the dynamic loader)."""
    found: dict[str, str] = {}
    for ldconfig in ("/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"):
        try:
            out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, check=False)
        except OSError:
            continue
        for line in out.stdout.splitlines():
            m = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)", line)
            if m and "x86-32" not in m.group(2):
                found.setdefault(m.group(1), m.group(3))
        break
    return found


def libraries_of_process(pid: int) -> list[str]:
    """Paths of the files a process has mapped, as seen from our mount namespace."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError as e:
        raise AttachError(
            f"cannot read /proc/{pid}/maps: {e.strerror} (is pid {pid} running?)") from None
    paths: list[str] = []
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/") and parts[5] not in paths:
            path = parts[5].removesuffix(" (deleted)")
            # A process in another mount namespace (a container) sees other files.
            rooted = f"/proc/{pid}/root{path}"
            paths.append(rooted if os.path.exists(rooted) and not os.path.exists(path) else path)
    return paths


def find_library(patterns: Iterable[str], pid: int | None = None) -> str | None:
    """First library whose file name matches one of ``patterns`` (regexes, in order of
    preference): in the target process's mappings when a pid is given, else from ldconfig,
    else from the usual library directories."""
    regexes = [re.compile(p) for p in patterns]
    if pid is not None:
        mapped = libraries_of_process(pid)
        for rx in regexes:
            for path in mapped:
                if rx.fullmatch(os.path.basename(path)):
                    return path
    cache = ldconfig_libraries()
    for rx in regexes:
        for soname, path in cache.items():
            if rx.fullmatch(soname) and os.path.exists(path):
                return path
    for rx in regexes:
        for d in _LIB_DIRS:
            try:
                names = sorted(os.listdir(d))
            except OSError:
                continue
            for name in names:
                if rx.fullmatch(name):
                    return os.path.join(d, name)
    return None


def locate_library(patterns: Iterable[str], symbols: Iterable[str], what: str,
                   pid: int | None = None, hint: str = "") -> str:
    """The file a TLS library module attaches to, or AttachError in one line.

    With a pid: a library the process maps whose name matches ``patterns``, else the
    process's own executable if it defines ``symbols`` (linked statically, as node is).
    Never the system's library: probes there would never fire for that process. Without a
    pid: as :func:`find_library`. The result is a real path (uprobes attach to inodes)."""
    symbols = tuple(symbols)
    if pid is not None:
        regexes = [re.compile(p) for p in patterns]
        mapped = libraries_of_process(pid)
        for rx in regexes:
            for path in mapped:
                if rx.fullmatch(os.path.basename(path)):
                    return os.path.realpath(path)
        try:
            exe = os.path.realpath(f"/proc/{pid}/exe")
        except OSError:
            exe = ""
        if exe and os.path.isfile(exe):
            try:
                defined = elf_symbols(exe)
            except AttachError:
                defined = frozenset()
            if all(s in defined for s in symbols):
                return exe
        raise AttachError(f"process {pid} maps no {what} and its executable {exe or '?'} "
                          f"does not link it statically{hint}")
    found = find_library(patterns)
    if found is None:
        raise AttachError(f"{what} not found on this system{hint}")
    return os.path.realpath(found)


# Elf32_Sym / Elf64_Sym as laid out in the file (without the byte-order prefix):
# (st_name, st_info, st_shndx) are what we read.
_SYM = {32: ("IIIBBH", 0, 3, 5), 64: ("IBBHQQ", 0, 1, 3)}
_STT_FUNC = 2
_SHN_UNDEF = 0


def _function_names(elf: ELFFile, section_name: str) -> set[str]:
    """The defined functions of one symbol table. pyelftools finds the tables; the entries
    are decoded in bulk with struct, because pyelftools' per-symbol objects take seconds
    for a 100 MB binary (node has 85,000 symbols)."""
    section = elf.get_section_by_name(section_name)
    if section is None or section["sh_entsize"] == 0:
        return set()
    strtab = elf.get_section(section["sh_link"]).data()
    fmt, name_at, info_at, shndx_at = _SYM[elf.elfclass]
    order = "<" if elf.little_endian else ">"
    entry = struct.Struct(order + fmt)
    data = section.data()
    names: set[str] = set()
    find = strtab.find
    for fields in entry.iter_unpack(data[: len(data) - len(data) % entry.size]):
        if fields[info_at] & 0xF != _STT_FUNC or fields[shndx_at] == _SHN_UNDEF:
            continue
        start = fields[name_at]
        name = strtab[start:find(b"\0", start)].decode("utf-8", "replace")
        names.add(name.split("@", 1)[0])
    return names


@lru_cache(maxsize=32)
def _elf_info(path: str) -> tuple[frozenset[str], str | None, tuple[str, ...]]:
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            symbols = _function_names(elf, ".dynsym") | _function_names(elf, ".symtab")
            build_id = None
            needed: list[str] = []
            for section in elf.iter_sections():
                if section["sh_type"] == "SHT_NOTE":
                    for note in section.iter_notes():  # type: ignore[attr-defined]
                        # stapsdt (USDT) notes share type 3: only the GNU owner's is the id
                        if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
                            build_id = str(note["n_desc"])
                elif section["sh_type"] == "SHT_DYNAMIC":
                    for tag in section.iter_tags():  # type: ignore[attr-defined]
                        if tag.entry.d_tag == "DT_NEEDED":
                            needed.append(tag.needed)
            return frozenset(symbols), build_id, tuple(needed)
    except FileNotFoundError:
        raise AttachError(f"{path}: no such file") from None
    except (OSError, ELFError, IndexError, struct.error) as e:
        raise AttachError(f"{path} is not a readable ELF file: {e}") from None


def elf_symbols(path: str) -> frozenset[str]:
    """Names of the functions an ELF file defines (dynamic and static symbol tables)."""
    return _elf_info(path)[0]


def build_id(path: str) -> str | None:
    return _elf_info(path)[1]


def needed_libraries(path: str) -> tuple[str, ...]:
    return _elf_info(path)[2]


def scan_version(path: str, pattern: bytes, chunk: int = 1 << 20) -> str | None:
    """First match of ``pattern`` (one group) in a file's bytes, read in overlapping chunks."""
    rx = re.compile(pattern)
    overlap = 256
    tail = b""
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                buf = tail + block
                m = rx.search(buf)
                if m:
                    return m.group(1).decode("ascii", "replace")
                tail = buf[-overlap:]
    except OSError:
        return None
    return None


def _dynamic_symbol(elf: ELFFile, name: str) -> tuple[int, int] | None:
    """(st_value, st_size) of a defined dynamic symbol. Its name is found in the string
    table first and the entries decoded in bulk, as in _function_names: pyelftools builds
    an object per symbol to look one up, 150 ms for libcrypto's 5,000."""
    dynsym = elf.get_section_by_name(".dynsym")
    if dynsym is None or dynsym["sh_entsize"] == 0:
        return None
    strtab = elf.get_section(dynsym["sh_link"]).data()
    # Every place the name ends a string: linkers share a name's bytes with the tail of a
    # longer one ("BIO_get_data" inside "SSL_BIO_get_data"), and st_name points there.
    wanted, needle = set(), name.encode() + b"\0"
    at = strtab.find(needle)
    while at >= 0:
        wanted.add(at)
        at = strtab.find(needle, at + 1)
    if not wanted:
        return None
    fmt, name_at, _, shndx_at = _SYM[elf.elfclass]
    entry = struct.Struct(("<" if elf.little_endian else ">") + fmt)
    value_at, size_at = (1, 2) if elf.elfclass == 32 else (4, 5)
    data = dynsym.data()
    for fields in entry.iter_unpack(data[: len(data) - len(data) % entry.size]):
        if fields[name_at] in wanted and fields[shndx_at] != _SHN_UNDEF:
            return int(fields[value_at]), int(fields[size_at])
    return None


def function_code(path: str, symbol: str, limit: int) -> tuple[bytes, int, str] | None:
    """The machine code of a dynamic symbol's function (its ``st_size`` bytes, at most
    ``limit``; ``limit`` when the size is not recorded), its virtual address and the file's
    machine (``e_machine``: "EM_X86_64", "EM_AARCH64"). None when the file has no such
    symbol or its address is not in the file. OSError and ELFError go to the caller, who
    knows what the file was for."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        found = _dynamic_symbol(elf, symbol)
        if found is None:
            return None
        address, size = found
        offsets = list(elf.address_offsets(address))
        if not offsets:
            return None
        f.seek(offsets[0])
        return f.read(min(size or limit, limit)), address, str(elf["e_machine"])


@cache
def disassembler(machine: str) -> Any:
    """A capstone disassembler for an ELF ``e_machine`` ("EM_X86_64", "EM_AARCH64"), for
    the few instructions a module reads to learn what a binary's symbols do not say."""
    # capstone ships no type information; importing it by name keeps mypy --strict clean
    capstone = importlib.import_module("capstone")
    if machine == "EM_AARCH64":
        return capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    if machine == "EM_X86_64":
        return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    raise ValueError(f"no disassembler for {machine}")
