"""What the gotls module needs to know about a Go executable, read without DWARF. Pure.

The rule of this layer: it reads the file and nothing else (no process, no kernel), and it trusts
only what the Go toolchain itself relies on at run time:
- the version and build settings from ``.go.buildinfo`` (what ``go version -m`` reads);
- function addresses from the ELF symbol table when it has Go functions, otherwise from the
  function table ``.gopclntab`` that the runtime needs for tracebacks, so it survives
  ``-ldflags="-s -w"``;
- RET instructions found by disassembling each function body, because Go programs cannot take
  uretprobes (the runtime moves goroutine stacks) and the gotls read probe sits on every RET.
pyelftools finds headers, segments and sections; the tables themselves are decoded in bulk with
struct/memoryview, because per-entry Python objects take seconds on a 100 MB binary.
Every problem is a GoBinaryError with a one-line message.
"""

from __future__ import annotations

import mmap
import re
import struct
import sys
from dataclasses import dataclass, field
from typing import IO, cast

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ecapture.errors import ConfigError
from ecapture.targets import disassembler

# Go switched function arguments and results to registers in 1.17 on amd64 and 1.18 on arm64.
# eCapture tests `After(1, 17)`, which is false for 1.17 itself; the change is inclusive.
REGISTER_ABI_SINCE = (1, 17)
_REGISTER_ABI = {"amd64": (1, 17), "arm64": (1, 18)}

# A function larger than this is not scanned for RETs: no crypto/tls function comes near it,
# and a bogus size (a damaged table) must not make us disassemble the whole text segment.
MAX_SCAN = 256 * 1024

_BUILDINFO_MAGIC = b"\xff Go buildinf:"
_BUILDINFO_BIG_ENDIAN = 0x1
_BUILDINFO_INLINE = 0x2  # Go >= 1.18: the strings follow the 32-byte header
# runtime/debug wraps the module info in two 16-byte sentinels.
_MODINFO_SENTINEL = 16

_PCLN_GO116 = 0xFFFFFFFA
_PCLN_GO118 = 0xFFFFFFF0
_PCLN_GO120 = 0xFFFFFFF1
_PCLN_OLD = {0xFFFFFFFB}  # Go 1.2 - 1.15

_MACHINES = {"EM_X86_64": "amd64", "EM_AARCH64": "arm64", "EM_386": "386", "EM_ARM": "arm"}

_PT_LOAD = "PT_LOAD"
_PF_X = 0x1
_PF_W = 0x2
_STT_FUNC = 2
_SHN_UNDEF = 0

# arm64 returns: RET Xn (any register), and the pointer-authenticating RETAA / RETAB.
_ARM64_RET_MASK, _ARM64_RET = 0xFFFFFC1F, 0xD65F0000
_ARM64_RETAA, _ARM64_RETAB = 0xD65F0BFF, 0xD65F0FFF

_GO_VERSION = re.compile(r"go(\d+)\.(\d+)")


class GoBinaryError(ConfigError):
    """A file that is not a Go program we can read, or a function we cannot analyse."""


@dataclass(frozen=True)
class GoFunction:
    name: str  # e.g. "crypto/tls.(*Conn).Write"
    address: int  # link-time virtual address of the entry
    size: int  # bytes, up to the next function (Go pads with INT3 in between)
    rets: tuple[int, ...]  # link-time virtual addresses of every RET instruction in the body


@dataclass(frozen=True)
class _Segment:
    vaddr: int
    offset: int
    filesz: int
    flags: int


@dataclass
class _Pclntab:
    """The parsed header of .gopclntab; offsets are into the mapped file."""

    magic: int
    quantum: int  # pc deltas in the pc-value tables are in units of this
    ptrsize: int
    nfunc: int
    text_start: int
    funcnametab: int  # file offset
    pctab: int  # file offset
    functab: int  # file offset (pclntable: functab, then the _func records)
    vaddr: int
    names: dict[str, tuple[int, int, int]] | None = None
    duplicates: dict[str, int] = field(default_factory=dict)


def register_abi_for(arch: str, minor: tuple[int, int]) -> bool:
    """Whether Go ``minor`` on ``arch`` passes function arguments in registers."""
    since = _REGISTER_ABI.get(arch)
    return since is not None and minor >= since


def register_abi(binary: GoBinary) -> bool:
    """Whether the program's functions take their arguments in registers (amd64 >= 1.17,
    arm64 >= 1.18) rather than on the stack."""
    return register_abi_for(binary.arch, binary.minor)


class GoBinary:
    """One Go executable, mapped read-only. Open with GoBinary.open(path)."""

    path: str
    version: str
    experiments: tuple[str, ...]  # GOEXPERIMENT names from a "X:a,b" version suffix
    minor: tuple[int, int]
    arch: str
    pie: bool
    stripped: bool
    settings: dict[str, str]

    def __init__(self, path: str, data: mmap.mmap, elf: ELFFile) -> None:
        self.path = path
        self._data = data
        self._elf = elf
        self._order = "<" if elf.little_endian else ">"
        self._ptr = 8 if elf.elfclass == 64 else 4
        self._segments = [
            _Segment(s["p_vaddr"], s["p_offset"], s["p_filesz"], s["p_flags"])
            for s in elf.iter_segments()
            if s["p_type"] == _PT_LOAD
        ]
        machine = elf["e_machine"]
        if machine not in _MACHINES:
            raise GoBinaryError(f"{path}: unsupported architecture {machine}")
        self.arch = _MACHINES[machine]
        self.pie = elf["e_type"] == "ET_DYN"
        version, self.settings = self._buildinfo()
        self.version, *experiments = version.split(" X:", 1)
        self.experiments = tuple(experiments[0].split(",")) if experiments else ()
        match = _GO_VERSION.search(self.version)
        if match is None:
            raise GoBinaryError(f"{path}: cannot read the Go version from {version!r}")
        self.minor = (int(match[1]), int(match[2]))
        self._symtab = self._symbol_table()
        self.stripped = not self._symbols("runtime.main")
        self._pcln: _Pclntab | None = None
        self._functions: dict[str, GoFunction | None] = {}

    @classmethod
    def open(cls, path: str) -> GoBinary:
        try:
            with open(path, "rb") as f:
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise GoBinaryError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise GoBinaryError(f"{path} is a directory, not a Go program") from None
        except ValueError:  # mmap of an empty file
            raise GoBinaryError(f"{path} is not a Go program (empty file)") from None
        except OSError as e:
            raise GoBinaryError(f"{path} cannot be read: {e.strerror}") from None
        if data[:4] != b"\x7fELF":
            raise GoBinaryError(f"{path} is not a Go program (not an ELF file)")
        try:
            # An mmap has the read/seek/tell that pyelftools uses, without a copy of the file.
            return cls(path, data, ELFFile(cast(IO[bytes], data)))
        except (ELFError, struct.error, IndexError, ValueError) as e:
            raise GoBinaryError(f"{path} is not a readable ELF file: {_one_line(e)}") from None

    # ---- addresses ----------------------------------------------------------------------

    def file_offset(self, vaddr: int) -> int:
        """The file offset of a link-time virtual address (what a uprobe attaches at)."""
        for s in self._segments:
            if s.vaddr <= vaddr < s.vaddr + s.filesz:
                return s.offset + vaddr - s.vaddr
        raise GoBinaryError(f"{self.path}: address {vaddr:#x} is in no loadable segment")

    def _vaddr(self, offset: int) -> int:
        for s in self._segments:
            if s.offset <= offset < s.offset + s.filesz:
                return s.vaddr + offset - s.offset
        raise GoBinaryError(f"{self.path}: file offset {offset:#x} is in no loadable segment")

    def _read(self, vaddr: int, size: int) -> bytes:
        offset = self.file_offset(vaddr)
        if size and self.file_offset(vaddr + size - 1) != offset + size - 1:
            raise GoBinaryError(f"{self.path}: {size} bytes at {vaddr:#x} cross a segment end")
        return self._data[offset : offset + size]

    def _word(self, offset: int) -> int:
        fmt = self._order + ("Q" if self._ptr == 8 else "I")
        return int(struct.unpack_from(fmt, self._data, offset)[0])

    # ---- .go.buildinfo ------------------------------------------------------------------

    def _buildinfo(self) -> tuple[str, dict[str, str]]:
        section = self._elf.get_section_by_name(".go.buildinfo")
        if section is not None and section["sh_type"] != "SHT_NOBITS":
            start = section["sh_offset"]
        else:
            start = self._scan_buildinfo()
        header = self._data[start : start + 32]
        if len(header) < 32 or not header.startswith(_BUILDINFO_MAGIC):
            raise GoBinaryError(f"{self.path} is not a Go program (no .go.buildinfo)")
        ptrsize, flags = header[14], header[15]
        if flags & _BUILDINFO_INLINE:
            version, at = self._varint_string(start + 32)
            modinfo, _ = self._varint_string(at)
        else:
            if ptrsize not in (4, 8):
                raise GoBinaryError(f"{self.path}: damaged .go.buildinfo (pointer size {ptrsize})")
            order = ">" if flags & _BUILDINFO_BIG_ENDIAN else "<"
            fmt = order + ("Q" if ptrsize == 8 else "I")
            version_ptr, modinfo_ptr = struct.unpack_from(order + fmt[1] * 2, header, 16)
            version = self._go_string(version_ptr, fmt, ptrsize)
            modinfo = self._go_string(modinfo_ptr, fmt, ptrsize)
        if not version:
            raise GoBinaryError(f"{self.path}: .go.buildinfo holds no Go version")
        return version, _build_settings(modinfo)

    def _scan_buildinfo(self) -> int:
        """Without section headers: the blob is 16-byte aligned in a writable segment."""
        for s in self._segments:
            if not s.flags & _PF_W:
                continue
            at = self._data.find(_BUILDINFO_MAGIC, s.offset, s.offset + s.filesz)
            while at >= 0:
                if (s.vaddr + at - s.offset) % 16 == 0:
                    return at
                at = self._data.find(_BUILDINFO_MAGIC, at + 1, s.offset + s.filesz)
        raise GoBinaryError(f"{self.path} is not a Go program (no .go.buildinfo)")

    def _varint_string(self, at: int) -> tuple[str, int]:
        length, shift = 0, 0
        while True:
            if at >= len(self._data) or shift > 63:
                raise GoBinaryError(f"{self.path}: damaged .go.buildinfo")
            byte = self._data[at]
            at += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if at + length > len(self._data):
            raise GoBinaryError(f"{self.path}: damaged .go.buildinfo")
        return self._data[at : at + length].decode("utf-8", "replace"), at + length

    def _go_string(self, header_vaddr: int, fmt: str, ptrsize: int) -> str:
        """A Go string header {data pointer, length} at a virtual address (Go < 1.18)."""
        data_ptr, length = struct.unpack(fmt[0] + fmt[1] * 2, self._read(header_vaddr, 2 * ptrsize))
        if length > 1 << 20:
            raise GoBinaryError(f"{self.path}: damaged .go.buildinfo (string of {length} bytes)")
        return self._read(data_ptr, length).decode("utf-8", "replace")

    # ---- ELF symbol table ---------------------------------------------------------------

    def _symbol_table(self) -> tuple[int, int, int, int, int] | None:
        """(symtab offset, entry count, entry size, strtab offset, strtab size) of .symtab."""
        section = self._elf.get_section_by_name(".symtab")
        if section is None or section["sh_entsize"] == 0 or section["sh_type"] == "SHT_NOBITS":
            return None
        strtab = self._elf.get_section(section["sh_link"])
        entsize = section["sh_entsize"]
        return (section["sh_offset"], section["sh_size"] // entsize, entsize,
                strtab["sh_offset"], strtab["sh_size"])

    def _symbols(self, name: str, functions_only: bool = True) -> list[tuple[int, int]]:
        """(st_value, st_size) of each defined function (or any symbol) ``name`` in .symtab.
        Only the string table is searched by name; the entries are then matched by their
        st_name offset, a column read at C speed."""
        if self._symtab is None:
            return []
        symoff, count, entsize, stroff, strsize = self._symtab
        needle = name.encode() + b"\0"
        wanted = set()
        at = self._data.find(needle, stroff, stroff + strsize)
        while at >= 0:
            wanted.add(at - stroff)  # a match may be the tail of a longer, merged string
            at = self._data.find(needle, at + 1, stroff + strsize)
        if not wanted:
            return []
        table = memoryview(self._data)[symoff : symoff + count * entsize]
        if sys.byteorder == ("little" if self._order == "<" else "big"):
            st_names = table.cast("I")[:: entsize // 4].tolist()
        else:
            st_names = [v[0] for v in struct.iter_unpack(self._order + "I", table)][:: entsize // 4]
        if self._ptr == 8:  # Elf64_Sym: name, info, other, shndx, value, size
            entry, info_at, shndx_at, value_at, size_at = "IBBHQQ", 1, 3, 4, 5
        else:  # Elf32_Sym: name, value, size, info, other, shndx
            entry, info_at, shndx_at, value_at, size_at = "IIIBBH", 3, 5, 1, 2
        found = []
        for index, st_name in enumerate(st_names):
            if st_name in wanted:
                at = symoff + index * entsize
                fields = struct.unpack_from(self._order + entry, self._data, at)
                kind_ok = not functions_only or fields[info_at] & 0xF == _STT_FUNC
                if kind_ok and fields[shndx_at] != _SHN_UNDEF:
                    found.append((int(fields[value_at]), int(fields[size_at])))
        return sorted(set(found))

    # ---- .gopclntab ---------------------------------------------------------------------

    def _pclntab(self) -> _Pclntab:
        if self._pcln is None:
            self._pcln = self._parse_pclntab(self._find_pclntab())
        return self._pcln

    def _find_pclntab(self) -> int:
        for name in (".gopclntab", ".data.rel.ro.gopclntab"):
            section = self._elf.get_section_by_name(name)
            if section is not None and section["sh_type"] != "SHT_NOBITS":
                return int(section["sh_offset"])
        symbol = self._symbol_address("runtime.pclntab")
        if symbol is not None:
            return self.file_offset(symbol)
        # Externally linked binaries merge it into .data.rel.ro or .rodata: search the magic.
        for s in self._segments:
            if s.flags & _PF_X:
                continue
            for magic in (_PCLN_GO120, _PCLN_GO118, _PCLN_GO116):
                needle = struct.pack(self._order + "I", magic) + b"\0\0"
                at = self._data.find(needle, s.offset, s.offset + s.filesz)
                while at >= 0:
                    if self._plausible_pclntab(at):
                        return at
                    at = self._data.find(needle, at + 1, s.offset + s.filesz)
        raise GoBinaryError(f"{self.path}: no Go function table (.gopclntab) found")

    def _symbol_address(self, name: str) -> int | None:
        """Any defined symbol's value (runtime.pclntab is an object, not a function)."""
        found = self._symbols(name, functions_only=False)
        return found[0][0] if found else None

    def _plausible_pclntab(self, at: int) -> bool:
        """A magic found by search is the table if its first function record names the same
        entry as the functab slot that points at it."""
        try:
            table = self._parse_pclntab(at)
            if not 0 < table.nfunc < 10_000_000:
                return False
            # 1.16: {entry, funcoff} words and _func.entry a word; later: all u32.
            word = ("Q" if self._ptr == 8 else "I") if table.magic == _PCLN_GO116 else "I"
            entry, func = struct.unpack_from(self._order + word * 2, self._data, table.functab)
            first = struct.unpack_from(self._order + word, self._data, table.functab + func)[0]
            return bool(first == entry)
        except (GoBinaryError, struct.error, IndexError):
            return False

    def _parse_pclntab(self, at: int) -> _Pclntab:
        magic = struct.unpack_from(self._order + "I", self._data, at)[0]
        if magic in _PCLN_OLD:
            raise GoBinaryError(f"{self.path}: Go function table of Go < 1.16 is not supported")
        if magic not in (_PCLN_GO116, _PCLN_GO118, _PCLN_GO120):
            raise GoBinaryError(f"{self.path}: unknown Go function table magic {magic:#x}")
        minlc, ptrsize = self._data[at + 6], self._data[at + 7]
        if minlc not in (1, 2, 4) or ptrsize != self._ptr:
            raise GoBinaryError(f"{self.path}: damaged Go function table header")

        def word(index: int) -> int:
            return self._word(at + 8 + index * ptrsize)

        nfunc = word(0)
        if magic == _PCLN_GO116:  # no textStart field; functab holds absolute entry PCs
            names, pctab, functab, text_start = word(2), word(5), word(6), 0
        else:
            names, pctab, functab, text_start = word(3), word(6), word(7), word(2)
        end = len(self._data) - at
        if not all(0 < offset < end for offset in (names, pctab, functab)):
            raise GoBinaryError(f"{self.path}: damaged Go function table header")
        table = _Pclntab(magic, minlc, ptrsize, nfunc, text_start, at + names, at + pctab,
                         at + functab, self._vaddr(at))
        if magic != _PCLN_GO116:
            table.text_start = self._text_start(table)
        return table

    def _text_start(self, table: _Pclntab) -> int:
        """runtime.text, the base of the functab's 32-bit entry offsets (Go >= 1.18).

        The pclntab header field is 0 in recent releases (1.27 no longer stores it, as it
        needs a relocation); the .text section starts before runtime.text when an external
        linker put C start-up code first. The runtime's own source of truth is
        moduledata.text, found by its first two fields: the pclntab address and the
        funcnametab slice that follows it."""
        exact = self._symbol_address("runtime.text")
        if exact is not None:
            return exact
        word = "Q" if self._ptr == 8 else "I"
        needle = struct.pack(self._order + word * 2, table.vaddr,
                             table.vaddr + table.funcnametab - self.file_offset(table.vaddr))
        for s in self._segments:
            if not s.flags & _PF_W:
                continue
            at = self._data.find(needle, s.offset, s.offset + s.filesz)
            if at >= 0 and (s.vaddr + at - s.offset) % self._ptr == 0:
                # pcHeader, 6 slices of 3 words, findfunctab, minpc, maxpc, then text.
                text = self._word(at + 22 * self._ptr)
                if self._executable(text):
                    return text
        if table.text_start and self._executable(table.text_start):
            return table.text_start
        section = self._elf.get_section_by_name(".text")
        if section is not None:
            return int(section["sh_addr"])
        raise GoBinaryError(f"{self.path}: cannot tell where the Go text starts")

    def _executable(self, vaddr: int) -> bool:
        return any(s.flags & _PF_X and s.vaddr <= vaddr < s.vaddr + s.filesz
                   for s in self._segments)

    def _functab_entries(self, table: _Pclntab) -> list[tuple[int, int]]:
        """(entry vaddr, _func file offset) for the nfunc functions, plus the end sentinel."""
        n = table.nfunc + 1
        if table.magic == _PCLN_GO116:
            fmt = self._order + ("Q" if table.ptrsize == 8 else "I") * 2
            size = struct.calcsize(fmt)
            raw = self._data[table.functab : table.functab + n * size]
            return [(entry, table.functab + off) for entry, off in struct.iter_unpack(fmt, raw)]
        raw = self._data[table.functab : table.functab + n * 8]
        base = table.text_start
        return [(base + entry, table.functab + off)
                for entry, off in struct.iter_unpack(self._order + "II", raw)]

    def _pclntab_names(self) -> dict[str, tuple[int, int, int]]:
        """name -> (entry, distance to the next entry, pcsp table offset) of every function
        in .gopclntab, built once."""
        table = self._pclntab()
        if table.names is None:
            entries = self._functab_entries(table)
            if len(entries) != table.nfunc + 1:
                raise GoBinaryError(f"{self.path}: truncated Go function table")
            # _func: [entry uintptr (1.16) | entryOff u32], nameOff i32, args i32,
            # deferreturn u32, pcsp u32, ...
            name_at = 4 if table.magic != _PCLN_GO116 else table.ptrsize
            data, find = self._data, self._data.find
            names: dict[str, tuple[int, int, int]] = {}
            unpack = struct.Struct(self._order + "i8xI").unpack_from
            for (entry, func), (following, _) in zip(entries, entries[1:], strict=False):
                name_off, pcsp = unpack(data, func + name_at)
                start = table.funcnametab + name_off
                name = data[start : find(b"\0", start)].decode("utf-8", "replace")
                if name in names:
                    table.duplicates[name] = table.duplicates.get(name, 1) + 1
                names.setdefault(name, (entry, following - entry, pcsp))
            table.names = names
        return table.names

    def _from_pclntab(self, name: str) -> tuple[int, int] | None:
        found = self._pclntab_names().get(name)
        if found is None:
            return None
        if name in self._pclntab().duplicates:
            raise self._ambiguous(name, self._pclntab().duplicates[name])
        entry, span, pcsp = found
        return entry, self._code_size(span, pcsp)

    def _code_size(self, span: int, pcsp: int) -> int:
        """The length of the function's own code, without the padding up to the next entry:
        where its stack-pointer delta table (pcsp) ends, as in the symbol table's st_size."""
        if not pcsp:
            return span
        table = self._pclntab()
        at, pc, first = table.pctab + pcsp, 0, True
        while True:
            value, at = _uvarint(self._data, at)
            if value == 0 and not first:
                break
            delta, at = _uvarint(self._data, at)
            pc += delta * table.quantum
            first = False
            if pc > span:  # a damaged table: keep the distance to the next function
                return span
        return pc if pc else span

    def _from_symtab(self, name: str) -> tuple[int, int] | None:
        found = self._symbols(name)
        if len(found) > 1:
            raise self._ambiguous(name, len(found))
        return found[0] if found else None

    def _ambiguous(self, name: str, count: int) -> GoBinaryError:
        # Distinct code under one name (an assembly function and its ABI wrapper, closures of
        # generic instantiations): guessing would put a probe in the wrong function.
        return GoBinaryError(f"{self.path}: {count} functions are named {name}; "
                             "cannot tell which one to probe")

    # ---- public queries -----------------------------------------------------------------

    def has_package(self, pkg: str) -> bool:
        """Whether any function of package ``pkg`` (e.g. "crypto/tls") is in the program."""
        prefix = pkg + "."
        try:
            return any(name.startswith(prefix) for name in self._pclntab_names())
        except (struct.error, IndexError, ValueError) as e:
            raise self._damaged(e) from None

    def function(self, name: str) -> GoFunction | None:
        """The function ``name`` (e.g. "crypto/tls.(*Conn).Read"), or None if the program
        does not contain it. The symbol table is used when it has Go functions, the Go
        function table otherwise."""
        try:
            return self._function(name)
        except (struct.error, IndexError, ValueError) as e:
            raise self._damaged(e) from None

    def _damaged(self, error: Exception) -> GoBinaryError:
        return GoBinaryError(f"{self.path}: damaged Go function tables ({_one_line(error)})")

    def _function(self, name: str) -> GoFunction | None:
        if name not in self._functions:
            found = None if self.stripped else self._from_symtab(name)
            if found is None:
                found = self._from_pclntab(name)
            if found is None:
                self._functions[name] = None
            else:
                address, size = found
                rets = self._rets(name, address, size)
                self._functions[name] = GoFunction(name, address, size, rets)
        return self._functions[name]

    def _rets(self, name: str, address: int, size: int) -> tuple[int, ...]:
        if size > MAX_SCAN:
            raise GoBinaryError(f"{self.path}: {name} is {size} bytes, more than the "
                                f"{MAX_SCAN} scanned for RET instructions")
        code = self._read(address, size)
        if self.arch == "amd64":
            return x86_64_rets(code, address, f"{self.path}: {name}")
        if self.arch == "arm64":
            return arm64_rets(code, address, self._order)
        raise GoBinaryError(f"{self.path}: RET search supports amd64 and arm64, not {self.arch}")


def x86_64_rets(code: bytes, address: int, what: str) -> tuple[int, ...]:
    """Addresses of the RET instructions in x86-64 ``code`` loaded at ``address``. Decoding
    must reach the end: a uprobe placed off an instruction boundary corrupts the target."""
    rets = []
    end = address
    for at, size, mnemonic, _ in disassembler("EM_X86_64").disasm_lite(code, address):
        if mnemonic.rsplit(" ", 1)[-1] == "ret":  # also with a prefix: repz ret, bnd ret
            rets.append(at)
        end = at + size
    if end != address + len(code):
        raise GoBinaryError(f"{what}: cannot disassemble the instruction at {end:#x}")
    return tuple(rets)


def arm64_rets(code: bytes, address: int, order: str = "<") -> tuple[int, ...]:
    """Addresses of RET / RETAA / RETAB in arm64 ``code``: fixed 4-byte words, no decoder."""
    return tuple(
        address + 4 * i
        for i, (word,) in enumerate(struct.iter_unpack(order + "I", code[: len(code) & ~3]))
        if word & _ARM64_RET_MASK == _ARM64_RET or word in (_ARM64_RETAA, _ARM64_RETAB)
    )


def _uvarint(data: mmap.mmap, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _build_settings(modinfo: str) -> dict[str, str]:
    """The "build\tKEY=VALUE" lines of the module info (runtime/debug.BuildInfo.String)."""
    if len(modinfo) >= 2 * _MODINFO_SENTINEL + 1 and modinfo[-_MODINFO_SENTINEL - 1] == "\n":
        modinfo = modinfo[_MODINFO_SENTINEL:-_MODINFO_SENTINEL]
    settings: dict[str, str] = {}
    for line in modinfo.splitlines():
        if not line.startswith("build\t"):
            continue
        key, value = _split_setting(line[len("build\t") :])
        if key:
            settings[key] = value
    return settings


def _split_setting(text: str) -> tuple[str, str]:
    """KEY=VALUE where either side is Go-quoted when it holds spaces, quotes or '='."""
    if text.startswith('"'):
        match = re.match(r'"(?:[^"\\]|\\.)*"', text)
        if match is None or text[match.end() : match.end() + 1] != "=":
            return "", ""
        return _unquote(match[0]), _unquote(text[match.end() + 1 :])
    key, _, value = text.partition("=")
    return key, _unquote(value)


def _unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return text[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError:
        return text[1:-1]


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
