"""Where OpenSSL's SSL BIO is: the read and write methods a program reaches through
BIO_f_ssl() (``openssl s_server -www``, ``-WWW`` and ``-HTTP`` use it), and where a BIO
keeps the SSL* they work on. Reads files only; nothing here touches the kernel.

Those methods (ssl_read and ssl_write of ssl/bio_ssl.c) are static functions of libssl that
call the library's internal record functions, never SSL_read or SSL_write, so they need
probes of their own. They are found where the library itself finds them: in the method
table BIO_f_ssl() returns, read from that function's code and the table's relocations, and
checked for the SSL BIO's type. The BIO's private data (BIO_SSL, whose first member is the
SSL*) is at the offset BIO_get_data() reads, taken from its code too: struct bio_st is
smaller in builds without the deprecated callback.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ecapture.errors import AttachError
from ecapture.targets import (
    disassembler,
    elf_symbols,
    find_library,
    function_code,
    needed_libraries,
)

BIO_TYPE_SSL = 7 | 0x0200  # bio.h: (7|BIO_TYPE_FILTER), the first member of its BIO_METHOD
#: struct bio_method_st from 1.1.1 on (LP64): int type; const char *name; then bwrite,
#: bwrite_old, bread: the write and read methods that take a size_t and return the count
#: through a pointer, as SSL_write_ex and SSL_read_ex do.
METHOD_BWRITE, METHOD_BREAD = 0x10, 0x20
OLD_SLOTS = (0x18, 0x28)  # bwrite_old and bread_old, which the SSL BIO leaves NULL
_SKIP = ("endbr64", "bti", "nop")  # landing pads and padding before a function's body
_X86_LEA = re.compile(r"rax, \[rip ([+-]) (0x[0-9a-f]+|\d+)\]")
_X86_LOAD = re.compile(r"rax, qword ptr \[rdi \+ (0x[0-9a-f]+|\d+)\]")
_ARM64_ADRP = re.compile(r"x0, #(0x[0-9a-f]+|\d+)")
_ARM64_ADD = re.compile(r"x0, x0, #(0x[0-9a-f]+|\d+)")
_ARM64_LOAD = re.compile(r"x0, \[x0, #(0x[0-9a-f]+|\d+)\]")


@dataclass(frozen=True)
class SslBio:
    """Where OpenSSL's SSL BIO is, in one libssl and the libcrypto it uses."""

    read: int  # virtual address of the BIO's read method (ssl_read of ssl/bio_ssl.c)
    write: int  # of its write method
    data_offset: int  # of the BIO's private data (BIO_SSL, whose first member is the SSL*)


def _body(code: bytes, address: int, machine: str, n: int) -> list[tuple[int, int, str, str]]:
    insns = disassembler(machine).disasm_lite(code, address)
    return [i for i in insns if i[2] not in _SKIP][:n]


def _shown(insns: list[tuple[int, int, str, str]]) -> str:
    return "; ".join(f"{m} {o}".strip() for _, _, m, o in insns) or "nothing decodable"


def returned_address(code: bytes, address: int, machine: str) -> int:
    """The address a function whose body is ``return &some_static;`` returns (BIO_f_ssl):
    x86-64 ``lea rax, [rip + d]; ret``, arm64 ``adrp x0, page; add x0, x0, #lo; ret``, after
    an optional landing pad. ValueError for any other code."""
    insns = _body(code, address, machine, 4)
    # A build may clear registers before returning (Debian 12's BIO_get_data has an
    # `xor edi, edi` before its ret): xor alone may stand between the lea and the ret.
    ends = [n for n, (_, _, m, _) in enumerate(insns) if m == "ret"][:1]
    if (machine == "EM_X86_64" and ends and ends[0] >= 1
            and all(m == "xor" for _, _, m, _ in insns[1:ends[0]])):
        at, size, mnemonic, ops = insns[0]
        m = _X86_LEA.fullmatch(ops)
        if mnemonic == "lea" and m:
            disp = int(m[2], 0)
            return at + size + (disp if m[1] == "+" else -disp)
    if machine == "EM_AARCH64" and len(insns) >= 3 and insns[2][2] == "ret":
        page, low = _ARM64_ADRP.fullmatch(insns[0][3]), _ARM64_ADD.fullmatch(insns[1][3])
        if insns[0][2] == "adrp" and insns[1][2] == "add" and page and low:
            return int(page[1], 0) + int(low[1], 0)
    raise ValueError(f"unexpected code ({_shown(insns)})")


def loaded_member(code: bytes, address: int, machine: str) -> int:
    """The offset of the member a one-load accessor returns (BIO_get_data: ``return
    b->ptr;``): x86-64 ``mov rax, qword ptr [rdi + off]``, arm64 ``ldr x0, [x0, #off]``.
    ValueError for any other code."""
    insns = _body(code, address, machine, 1)
    pattern, load = (_X86_LOAD, "mov") if machine == "EM_X86_64" else (_ARM64_LOAD, "ldr")
    m = pattern.fullmatch(insns[0][3]) if insns and insns[0][2] == load else None
    if m is None:
        raise ValueError(f"unexpected code ({_shown(insns)})")
    return int(m[1], 0)


def _read_at(elf: ELFFile, f: BinaryIO, address: int, size: int) -> bytes:
    offsets = list(elf.address_offsets(address, size))
    if not offsets:
        raise ValueError(f"0x{address:x} is not in the file")
    f.seek(offsets[0])
    return f.read(size)


def relocated_pointer(elf: ELFFile, f: BinaryIO, address: int) -> int:
    """The value a pointer stored at ``address`` has once the file is loaded, as a virtual
    address of the file: a shared library's RELATIVE relocation holds it in its addend (RELA);
    without one the file holds it in place (REL, RELR, a position-dependent executable)."""
    rela = struct.Struct("<QQq")
    for section in elf.iter_sections():
        if section["sh_type"] != "SHT_RELA" or section["sh_entsize"] != rela.size:
            continue
        data: bytes = section.data()
        for r_offset, r_info, r_addend in rela.iter_unpack(data[:len(data) // 24 * 24]):
            if r_offset == address:
                if r_info >> 32:  # a symbol's address, not one of the file's own
                    raise ValueError(f"the pointer at 0x{address:x} names a symbol")
                return int(r_addend)
    return int.from_bytes(_read_at(elf, f, address, 8), "little")


def _in_code(elf: ELFFile, address: int) -> bool:
    return any(seg["p_type"] == "PT_LOAD" and seg["p_flags"] & 1  # PF_X
               and seg["p_vaddr"] <= address < seg["p_vaddr"] + seg["p_memsz"]
               for seg in elf.iter_segments())


def ssl_bio_methods(libssl: str) -> tuple[int, int]:
    """(read, write): the addresses of the SSL BIO's read and write methods in ``libssl``,
    from the method table BIO_f_ssl() returns. ValueError (or OSError, ELFError) saying why
    not: no BIO_f_ssl, unexpected code, a table that is not the SSL BIO's."""
    found = function_code(libssl, "BIO_f_ssl", 32)
    if found is None:
        raise ValueError("no BIO_f_ssl among its dynamic symbols")
    try:
        table = returned_address(*found)
    except ValueError as e:
        raise ValueError(f"BIO_f_ssl: {e}") from None
    with open(libssl, "rb") as f:
        elf = ELFFile(f)
        if elf.elfclass != 64 or not elf.little_endian:
            raise ValueError("not a 64-bit little-endian file")
        kind = int.from_bytes(_read_at(elf, f, table, 4), "little")
        if kind != BIO_TYPE_SSL:
            raise ValueError(f"BIO_f_ssl's table has type 0x{kind:x}, not 0x{BIO_TYPE_SSL:x}")
        # 1.1.0's table had no _old slots (its bread was at bwrite_old's place): the SSL
        # BIO leaves both empty from 1.1.1 on, so this is the layout read here.
        if any(relocated_pointer(elf, f, table + at) for at in OLD_SLOTS):
            raise ValueError("BIO_f_ssl's table is not laid out as 1.1.1's and later")
        read = relocated_pointer(elf, f, table + METHOD_BREAD)
        write = relocated_pointer(elf, f, table + METHOD_BWRITE)
        if not (_in_code(elf, read) and _in_code(elf, write)):
            raise ValueError(f"BIO_f_ssl's read and write methods (0x{read:x}, 0x{write:x}) "
                             "are not code of the file")
    return read, write


def bio_data_offset(libcrypto: str) -> int:
    """Where struct bio_st keeps its private data: the member BIO_get_data() returns."""
    found = function_code(libcrypto, "BIO_get_data", 32)
    if found is None:
        raise ValueError(f"{libcrypto} has no BIO_get_data")
    try:
        return loaded_member(*found)
    except ValueError as e:
        raise ValueError(f"BIO_get_data of {libcrypto}: {e}") from None


def find_ssl_bio(libssl: str, pid: int | None = None) -> SslBio:
    """The SSL BIO of ``libssl`` (OpenSSL 1.1.1 or later), with the libcrypto it needs found
    as the loader would: libssl itself when linked statically, else beside it, else as the
    target maps it or ldconfig knows it. ValueError saying why it cannot be told."""
    try:
        read, write = ssl_bio_methods(libssl)
        libcrypto = libssl if "BIO_get_data" in elf_symbols(libssl) else None
        for needed in needed_libraries(libssl) if libcrypto is None else ():
            if needed.startswith("libcrypto"):
                beside = os.path.join(os.path.dirname(libssl), needed)
                libcrypto = (beside if os.path.exists(beside)
                             else find_library((re.escape(needed),), pid))
                break
        if libcrypto is None:
            raise ValueError("its libcrypto was not found")
        return SslBio(read, write, bio_data_offset(libcrypto))
    except (OSError, ELFError, AttachError) as e:
        raise ValueError(str(e)) from None
