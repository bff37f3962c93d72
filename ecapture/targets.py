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
from dataclasses import dataclass, field
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
    """Paths of the files a process has mapped, each reaching the very file it maps: its
    own path where ours names the same file, else through ``/proc/PID/root`` (a process in
    another mount namespace, a container, sees other files under the same names)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError as e:
        raise AttachError(
            f"cannot read /proc/{pid}/maps: {e.strerror} (is pid {pid} running?)") from None
    paths: list[str] = []
    for path, key in _mapped(maps):
        reached = reach(pid, path.removesuffix(" (deleted)"), key)
        if reached not in paths:
            paths.append(reached)
    return paths


def _mapped(maps: str) -> Iterable[tuple[str, tuple[int, int]]]:
    """(path, (device, inode)) of each file-backed line of a /proc/PID/maps text."""
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            major, minor = (int(x, 16) for x in parts[3].split(":"))
            yield parts[5], (os.makedev(major, minor), int(parts[4]))


def reach(pid: int, path: str, key: tuple[int, int] | None) -> str:
    """``path`` as process ``pid`` knows it, named so that we open the same file: ``path``
    itself when it is that file (device and inode ``key``), else ``/proc/PID/root/path``."""
    if key is not None and file_key(path) == key:
        return path
    return f"/proc/{pid}/root{path}"


#: library files of other mount namespaces, held open: (device, inode) -> our fd
_PINNED: dict[tuple[int, int], int] = {}


def pin(path: str, key: tuple[int, int]) -> str:
    """A name for the file ``path`` (``/proc/PID/root/...``) reaches that stays valid once
    that process exits: ``/proc/self/fd/N`` of a descriptor this process holds until it
    exits. A short-lived process's library is still being attached to after it is gone,
    and a held inode cannot be freed and reused under a probe. ``path`` itself when it
    cannot be opened (or is another file by then): that process is already gone."""
    fd = _PINNED.get(key)
    if fd is None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return path
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != key:
            os.close(fd)
            return path
        _PINNED[key] = fd
    return f"/proc/self/fd/{fd}"


def real_path(path: str) -> str:
    """The path a uprobe goes on: symbolic links resolved, except for a path reached
    through ``/proc/PID/root`` or a held descriptor (:func:`pin`), whose link would resolve
    to a name in our own root, not the process's (the kernel resolves it on open)."""
    if re.match(r"/proc/(\d+/root|self/fd)/", path):
        return path
    return os.path.realpath(path)


def process_executable(pid: int) -> str:
    """The path that reaches a process's executable (see :func:`reach`); "" if unknown."""
    try:
        path = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
        return reach(pid, path, file_key(f"/proc/{pid}/exe"))
    except OSError:
        return ""


def find_library(patterns: Iterable[str], pid: int | None = None, root: str = ""
                 ) -> str | None:
    """First library whose file name matches one of ``patterns`` (regexes, in order of
    preference): in the target process's mappings when a pid is given, else from ldconfig,
    else from the usual library directories. ``root`` is prefixed to the places looked in
    (``/proc/PID/root``: another mount namespace's files), and the path returned names the
    file under it; our ldconfig cache still gives the places: a container's paths are
    those of its distribution, most often the same."""
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
            if rx.fullmatch(soname) and os.path.exists(root + path):
                return root + path
    for rx in regexes:
        for d in _LIB_DIRS:
            d = root + d
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
    Never our system's library: probes there would never fire for that process. But a
    process in another mount namespace (a container's init) gets its namespace's library,
    which the children it starts will map. Without a pid: as :func:`find_library`. The
    result is a real path (uprobes attach to inodes)."""
    symbols = tuple(symbols)
    if pid is not None:
        regexes = [re.compile(p) for p in patterns]
        mapped = libraries_of_process(pid)
        for rx in regexes:
            for path in mapped:
                if rx.fullmatch(os.path.basename(path)):
                    return real_path(path)
        exe = process_executable(pid)
        if exe and os.path.isfile(exe):
            try:
                defined = elf_symbols(exe)
            except AttachError:
                defined = frozenset()
            if all(s in defined for s in symbols):
                return exe
        mntns = mount_namespace(pid)
        if mntns is not None and mntns != mount_namespace(os.getpid()):
            # A container's init maps no TLS library as a rule, but the processes it starts
            # will map its file system's: that file, reached through its root.
            inside = find_library(patterns, root=f"/proc/{pid}/root")
            if inside is not None:
                return inside
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


# -- library files in use, across mount namespaces ---------------------------------------

@dataclass
class MappedFile:
    """One library file (device and inode) that running processes map. ``path`` is the
    name the first process seen with it knows it by, inside its own mount namespace;
    ``open_path`` reaches that file from ours (``/proc/PID/root/<path>``, valid while that
    process lives: :func:`pin` gives a lasting name to a file that is attached to), which
    is what a uprobe is attached to: uprobes attach to inodes, so each copy needs its
    own."""

    dev: int
    ino: int
    path: str
    open_path: str
    mntns: int | None
    pids: set[int] = field(default_factory=set)

    @property
    def key(self) -> tuple[int, int]:
        return (self.dev, self.ino)


def mount_namespace(pid: int) -> int | None:
    """The inode number of a process's mount namespace (what ``lsns`` shows)."""
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def cgroup_of(pid: int) -> str | None:
    """A process's cgroup path (the unified hierarchy's, else the first listed)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    paths = [line.split(":", 2) for line in lines if line.count(":") >= 2]
    for hierarchy, _, path in paths:
        if hierarchy == "0":
            return path
    return paths[0][2] if paths else None


def running_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(root: int) -> set[int]:
    """``root`` and every process below it, by the parents /proc/PID/stat gives."""
    children: dict[int, list[int]] = {}
    for pid in running_pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        # "PID (COMM) STATE PPID ...": the comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(pid)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def mapped_files(pid: int, patterns: Iterable[str]) -> list[MappedFile]:
    """The files one process maps whose names match one of ``patterns`` (regexes, whole
    name), one entry per device and inode (the maps line's own, so no stat of the file is
    needed to tell copies apart). [] when the process is gone."""
    regexes = [re.compile(p) for p in patterns]
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return []
    found: dict[tuple[int, int], MappedFile] = {}
    mntns = None
    for path, key in _mapped(maps):
        if path.endswith(" (deleted)"):
            continue  # replaced since it was mapped: no name reaches that inode any more
        name = path.rsplit("/", 1)[-1]
        if not any(rx.fullmatch(name) for rx in regexes) or key in found:
            continue
        if mntns is None:
            mntns = mount_namespace(pid)
        found[key] = MappedFile(key[0], key[1], path, reach(pid, path, key), mntns, {pid})
    return list(found.values())


def files_in_use(patterns: Iterable[str], pids: Iterable[int] | None = None
                 ) -> list[MappedFile]:
    """Every distinct file matching ``patterns`` that the processes ``pids`` (default:
    all) map, with the processes that map it; in the order first seen."""
    patterns = tuple(patterns)
    merged: dict[tuple[int, int], MappedFile] = {}
    for pid in sorted(running_pids() if pids is None else pids):
        for mapped in mapped_files(pid, patterns):
            known = merged.get(mapped.key)
            if known is None:
                merged[mapped.key] = mapped
            else:
                known.pids.add(pid)
    return list(merged.values())


def file_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def quick_build_id(path: str) -> str | None:
    """The GNU build-id from the program headers' notes alone: a few small reads, where
    :func:`build_id` parses every section (and the symbol tables) of the file."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            for segment in elf.iter_segments():
                if segment["p_type"] != "PT_NOTE":
                    continue
                for note in segment.iter_notes():  # type: ignore[attr-defined]
                    if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
                        return str(note["n_desc"])
    except (OSError, ELFError, IndexError, struct.error):
        return None
    return None
