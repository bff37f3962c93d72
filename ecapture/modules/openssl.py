"""The ``tls`` module (alias ``openssl``): OpenSSL 1.1.1 and 3.x.

A TLS library module (:mod:`ecapture.modules.tlsfamily` does the rest): where libssl is and
which version, its probes (SSL_read, SSL_write, the _ex calls and SSL_do_handshake, in
kern/openssl.c) and the struct offsets of its secrets (``master_secret_event_t``).

A program may also read and write through OpenSSL's SSL BIO (``BIO_f_ssl()``: ``openssl
s_server -www``, ``-WWW`` and ``-HTTP`` do), whose read and write methods call the
library's internal record functions, never SSL_read or SSL_write: they get probes of their
own, at the addresses :mod:`ecapture.modules.openssl_bio` finds.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any, ClassVar

from ecapture.errors import AttachError, DecodeError
from ecapture.events import Event, Fragment, comm_str
from ecapture.modules.base import Decoded, Option, Probe, Target
from ecapture.modules.openssl_bio import SslBio, find_ssl_bio
from ecapture.modules.openssl_offsets import KeyOffsets, key_offsets
from ecapture.modules.tlsfamily import FAMILY_OPTIONS, TlsLibraryModule
from ecapture.structs.layout import header_codec
from ecapture.structs.openssl import EVENT_MASTER_SECRET, MASTER_SECRET
from ecapture.targets import (
    build_id,
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

    def inspect(self) -> None:
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
