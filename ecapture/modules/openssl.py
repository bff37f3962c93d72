"""The ``tls`` module (alias ``openssl``): OpenSSL 1.1.1 and 3.x.

A TLS library module (:mod:`ecapture.modules.tlsfamily` does the rest): where libssl is and
which version, its probes (SSL_read, SSL_write, the _ex calls and SSL_do_handshake, in
kern/openssl.c) and the struct offsets of its secrets (``master_secret_event_t``).

A program may also read and write through OpenSSL's SSL BIO (``BIO_f_ssl()``: ``openssl
s_server -www``, ``-WWW`` and ``-HTTP`` do), whose read and write methods call the
library's internal record functions, never SSL_read or SSL_write. Those two methods are
static functions of libssl; :func:`find_ssl_bio` finds them where the library itself does,
in the method table BIO_f_ssl() returns, and they get probes of their own.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO, ClassVar

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ecapture.errors import AttachError, DecodeError
from ecapture.events import Event, Fragment, comm_str
from ecapture.modules.base import Decoded, Option, Probe, Target
from ecapture.modules.openssl_offsets import KeyOffsets, key_offsets
from ecapture.modules.tlsfamily import FAMILY_OPTIONS, TlsLibraryModule
from ecapture.structs.layout import header_codec
from ecapture.structs.openssl import EVENT_MASTER_SECRET, MASTER_SECRET
from ecapture.targets import (
    build_id,
    disassembler,
    elf_symbols,
    find_library,
    function_code,
    needed_libraries,
    scan_version,
)
from ecapture.tlskeys import MasterSecret

# Preference order: OpenSSL 3 first. Exact names: Debian's libssl3.so is NSS, not OpenSSL.
LIBSSL_PATTERNS = (r"libssl\.so\.3", r"libssl\.so\.1\.1", r"libssl\.so")
VERSION_RE = rb"OpenSSL (\d+\.\d+\.\d+[a-z]?(?:\+quic)?)[ -]"

# 4 and 5: the SSL BIO's read and write methods, reached through BIO_read, BIO_write,
# BIO_puts, BIO_printf... on the SSL BIO or on a BIO chained before it.
FUNCS = {0: "SSL_read", 1: "SSL_write", 2: "SSL_read_ex", 3: "SSL_write_ex", 4: "BIO_read",
         5: "BIO_write"}
#: Functions BoringSSL's libssl exports and OpenSSL's does not: how it is recognised.
BORINGSSL_ONLY = ("SSL_CTX_set_custom_verify", "SSL_set_renegotiate_mode")


def ssl_version_offset(version: str | None) -> int | None:
    """Offset of ``int version`` in the SSL object handed to SSL_read/SSL_write.

    Up to 3.1 it is the first member of struct ssl_st. From 3.2 the SSL* of a TLS connection
    points at a SSL_CONNECTION whose version follows the embedded ssl_st, which grew in 3.2.4,
    3.3.3 and 3.4.1 (upstream eCapture's per-version offset tables agree)."""
    if version is None:
        return None
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    if not m:
        return None
    major, minor, patch = (int(x) for x in m.groups())
    if (major, minor) in ((1, 1), (3, 0), (3, 1)):
        return 0
    if major == 3 and minor in (2, 3, 4):
        first_big = {2: 4, 3: 3, 4: 1}[minor]
        return 0x48 if patch >= first_big else 0x40
    if (major == 3 and minor >= 5) or major == 4:
        return 0x48
    return None


# ---- the SSL BIO ----------------------------------------------------------------------

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


class OpenSSLModule(TlsLibraryModule):
    library_patterns: ClassVar[tuple[str, ...]] = LIBSSL_PATTERNS
    library_option = "libssl"
    name = "tls"
    aliases = ("openssl",)
    help = "capture OpenSSL TLS plaintext (SSL_read/SSL_write and the _ex calls) with 4-tuples"
    source = "openssl.c"
    options: ClassVar[tuple[Option, ...]] = (
        Option(("--libssl",), "libssl", "path of libssl.so or of a binary linking OpenSSL "
               "statically (default: from the target pid's mappings, then ldconfig)",
               metavar="PATH"),
        *FAMILY_OPTIONS,
    )
    keylog_default = "ecapture_openssl_key.log"
    library_structs = {EVENT_MASTER_SECRET: MASTER_SECRET}
    functions = FUNCS

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        self.libssl: str | None = None
        self.version: str | None = None
        self.key_offsets: KeyOffsets | None = None
        self.boringssl = False
        self.ssl_bio: SslBio | None = None
        self._secrets = header_codec(MASTER_SECRET.decl)

    def init(self) -> None:
        path, symbols = self.resolve_library(
            LIBSSL_PATTERNS, ("SSL_read", "SSL_write"), "OpenSSL libssl",
            ": install OpenSSL (apt-get install libssl3) or pass --libssl PATH")
        self.libssl = path
        self.boringssl = not symbols.isdisjoint(BORINGSSL_ONLY)
        self.version = self._detect_version(path)
        self.key_offsets = key_offsets(self.version)
        if not self.boringssl:  # BoringSSL's SSL BIO calls SSL_read/SSL_write: seen already
            try:
                self.ssl_bio = find_ssl_bio(path, self.config.get("pid"))
            except ValueError as e:
                self.notes.append(f"OpenSSL's SSL BIO not found in {path} ({e}): what programs "
                                  "read and write through it (BIO_f_ssl, e.g. openssl "
                                  "s_server -www) is not captured")
        self.targets = [Target(path, self.version and f"OpenSSL {self.version}", build_id(path))]

    def require_keys(self) -> None:
        if self.boringssl:
            raise AttachError(f"{self.libssl} is BoringSSL: capture its keys with `ecapture "
                              "boringssl`; plaintext capture still works here")
        if self.key_offsets is None or ssl_version_offset(self.version) is None:
            found = f"OpenSSL {self.version}" if self.version else "an unrecognised version"
            raise AttachError(f"{self.libssl} is {found}, for which ecapture knows no struct "
                              "offsets of the TLS secrets; plaintext capture still works")

    @staticmethod
    def _detect_version(path: str) -> str | None:
        # OpenSSL 3 keeps its version string in libcrypto; 1.1.1 in libssl too.
        found = scan_version(path, VERSION_RE)
        if found:
            return found
        directory = os.path.dirname(path)
        for needed in needed_libraries(path):
            if needed.startswith("libcrypto"):
                candidate = os.path.join(directory, needed)
                if os.path.exists(candidate):
                    return scan_version(candidate, VERSION_RE)
        return None

    def library_probes(self) -> list[Probe]:
        lib, around = self.libssl, Probe.around
        return [
            *around("SSL_read", "uprobe_SSL_read", "uretprobe_SSL_read", lib),
            *around("SSL_write", "uprobe_SSL_write", "uretprobe_SSL_write", lib),
            # 1.1.1+; Python >= 3.10 and many programs use only these.
            *around("SSL_read_ex", "uprobe_SSL_read_ex", "uretprobe_SSL_read", lib,
                    optional=True),
            *around("SSL_write_ex", "uprobe_SSL_write_ex", "uretprobe_SSL_write", lib,
                    optional=True),
            *around("SSL_do_handshake", "uprobe_SSL_do_handshake",
                    "uretprobe_SSL_do_handshake", lib, optional=True),
            *self._ssl_bio_probes(),
        ]

    def _ssl_bio_probes(self) -> list[Probe]:
        """The SSL BIO's read and write methods, at their addresses: static functions."""
        bio = self.ssl_bio
        if bio is None:
            return []
        lib, read, write = self.libssl, "BIO_f_ssl->bread", "BIO_f_ssl->bwrite"
        return [
            Probe("uprobe", read, "uprobe_ssl_bio_read", lib, address=bio.read),
            Probe("uretprobe", read, "uretprobe_SSL_read", lib, address=bio.read),
            Probe("uprobe", write, "uprobe_ssl_bio_write", lib, address=bio.write),
            Probe("uretprobe", write, "uretprobe_SSL_write", lib, address=bio.write),
        ]

    def library_cflags(self) -> list[str]:
        flags: list[str] = []
        if self.ssl_bio is not None:
            flags.append(f"-DBIO_DATA_OFFSET=0x{self.ssl_bio.data_offset:x}")
        offset = ssl_version_offset(self.version)
        if offset is not None:
            flags.append(f"-DSSL_VERSION_OFFSET={offset}")
            if self.key_offsets is not None:
                # Keys travel with every capture whose version is known, so a recording
                # made for plaintext can still give a key log or pcap later.
                flags += ["-DCAPTURE_KEYS=1", *self.key_offsets.cflags()]
        return flags

    def decode_library(self, kind: int, data: bytes) -> Decoded:
        if kind != EVENT_MASTER_SECRET:
            raise DecodeError(f"unknown event kind {kind} on map events")
        codec = self._secrets
        if len(data) < codec.size:
            raise DecodeError(f"master_secret_event_t has {len(data)} bytes, needs "
                              f"{codec.size}")
        f = dict(zip(codec.names, codec.codec.unpack_from(data), strict=True))
        return MasterSecret(
            timestamp_ns=f["timestamp_ns"], pid=f["pid"], comm=comm_str(f["comm"]),
            ssl=f["ssl"], version=f["version"], cipher_id=f["cipher_id"],
            client_random=f["client_random"], master_key=f["master_key"],
            handshake_secret=f["handshake_secret"],
            handshake_traffic_hash=f["handshake_traffic_hash"],
            client_app_traffic_secret=f["client_app_traffic_secret"],
            server_app_traffic_secret=f["server_app_traffic_secret"],
            exporter_master_secret=f["exporter_master_secret"])

    def dispatch_library(self, fragment: Fragment) -> Iterable[Event]:
        if isinstance(fragment, MasterSecret):
            yield from fragment.entries()
