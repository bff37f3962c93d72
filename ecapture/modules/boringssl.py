"""The ``boringssl`` module (alias ``bssl``): BoringSSL, as Android and others ship it.

A TLS library module (:mod:`ecapture.modules.tlsfamily` does the rest). BoringSSL's API is
OpenSSL's, so the plaintext comes from OpenSSL's probes (kern/openssl.c) unchanged. What
differs is where the secrets are (kern/boringssl.c, compiled first): TLS 1.3 secrets as
the library derives them, in libcrypto's HKDF-Expand-Label step; the TLS 1.2 master secret
from the session, through per-release struct offsets (:mod:`boringssl_offsets`). Each
secret is one ``boringssl_secret_event_t`` with its real length.

BoringSSL carries no version string: the library is recognised by functions OpenSSL lacks,
and its release is taken from ``--android-release``, else from Android's build.prop, else
from the package that installed the file (Debian's android-libboringssl 13.0.0+r24 is
Android 13's).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from ecapture.errors import AttachError, ConfigError, DecodeError
from ecapture.events import Event, Fragment, KeyLogEntry, comm_str
from ecapture.modules.base import Decoded, Option, Probe, Target
from ecapture.modules.boringssl_offsets import (
    RELEASES,
    BoringOffsets,
    boringssl_offsets,
    normalise_release,
)
from ecapture.modules.openssl import BORINGSSL_ONLY, FUNCS, OpenSSLModule
from ecapture.modules.tlsfamily import FAMILY_OPTIONS
from ecapture.structs.boringssl import (
    BORINGSSL_SECRET,
    EVENT_BORINGSSL_SECRET,
    LABELS,
    SECRET_MAX,
)
from ecapture.structs.layout import header_codec
from ecapture.targets import (
    build_id,
    elf_symbols,
    find_library,
    libraries_of_process,
    needed_libraries,
    process_executable,
    real_path,
)

LIBSSL_PATTERNS = (r"libssl\.so(\.\d+)*",)
# Where BoringSSL's libssl is installed beside (not instead of) OpenSSL's: Debian and
# Ubuntu's android-libboringssl, then Android's (the Conscrypt APEX, then /system).
KNOWN_PLACES = (
    *(f"/usr/lib/{triplet}/android/libssl.so.0"
      for triplet in ("x86_64-linux-gnu", "aarch64-linux-gnu")),
    "/apex/com.android.conscrypt/lib64/libssl.so",
    "/system/lib64/libssl.so",
)
ANDROID_BUILD_PROP = "/system/build.prop"
#: The libcrypto functions whose return hands over a TLS 1.3 secret (kern/boringssl.c).
EXPAND_PROBES = (("HKDF_expand", "uprobe_bssl_HKDF_expand"),
                 ("CRYPTO_tls13_hkdf_expand_label", "uprobe_bssl_tls13_expand_label"))
_RELEASE_NAMES = ", ".join(RELEASES)


def is_boringssl(path: str) -> bool:
    try:
        symbols = elf_symbols(path)
    except AttachError:
        return False
    return "SSL_read" in symbols and any(s in symbols for s in BORINGSSL_ONLY)


def find_boringssl(pid: int | None = None) -> str | None:
    """BoringSSL's libssl: the one a process maps (or its executable, linked statically),
    else the first of the known places, else a libssl the loader knows that is BoringSSL."""
    if pid is not None:
        rx = re.compile(LIBSSL_PATTERNS[0])
        for path in libraries_of_process(pid):
            if rx.fullmatch(os.path.basename(path)) and is_boringssl(path):
                return real_path(path)
        exe = process_executable(pid)
        return exe if os.path.isfile(exe) and is_boringssl(exe) else None
    for path in KNOWN_PLACES:
        if os.path.exists(path) and is_boringssl(path):
            return os.path.realpath(path)
    found = find_library(LIBSSL_PATTERNS)
    return os.path.realpath(found) if found and is_boringssl(found) else None


def android_release_from_build_prop(path: str = ANDROID_BUILD_PROP) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key == "ro.build.version.release":
                    return value.strip() or None
    except OSError:
        return None
    return None


DPKG = "/var/lib/dpkg"


def release_from_package(path: str, dpkg: str = DPKG) -> str | None:
    """The Android release of a BoringSSL that a Debian package installed: the package's
    version is the AOSP tag it was built from, e.g. 13.0.0+r24-2. Read from dpkg's own
    files: ``dpkg-query -S`` reads every package's file list, which took more than ten
    seconds in a busy emulated guest and left the release unknown."""
    real = os.path.realpath(path)
    for listing in sorted(glob.glob(os.path.join(dpkg, "info", "*boringssl*.list"))):
        try:
            with open(listing, encoding="utf-8", errors="replace") as f:
                files = {line.rstrip("\n") for line in f}
        except OSError:
            continue
        if path in files or real in files or any(
                os.path.realpath(p) == real for p in files if p.endswith(os.path.basename(real))):
            package = os.path.basename(listing).removesuffix(".list").split(":")[0]
            m = re.match(r"(?:\d+:)?(\d+)\.\d+\.\d+\+r\d+",
                         _package_version(os.path.join(dpkg, "status"), package) or "")
            return m.group(1) if m else None
    return None


def _package_version(status: str, package: str) -> str | None:
    """The Version of an installed package, from dpkg's status file."""
    try:
        with open(status, encoding="utf-8", errors="replace") as f:
            stanzas = f.read().split("\n\n")
    except OSError:
        return None
    for stanza in stanzas:
        fields = dict(line.split(": ", 1) for line in stanza.splitlines()
                      if ": " in line and not line.startswith(" "))
        if fields.get("Package") == package and "installed" in fields.get("Status", ""):
            return fields.get("Version")
    return None


@dataclass(frozen=True, slots=True)
class BoringSecret(Fragment):
    """One secret the kernel took from a BoringSSL connection, with its real length."""

    timestamp_ns: int
    pid: int
    tid: int
    comm: str
    ssl: int
    version: int
    label: int
    client_random: bytes
    secret: bytes  # already cut to its length

    def entries(self) -> list[KeyLogEntry]:
        name = LABELS.get(self.label)
        if name is None or not any(self.client_random) or not any(self.secret):
            return []  # read too early, or a label this decoder does not know
        return [KeyLogEntry(self.timestamp_ns, self.pid, self.tid, 0, self.comm, name,
                            self.client_random, self.secret)]


class BoringSSLModule(OpenSSLModule):
    # Its libssl's name is OpenSSL's: no process is told by file name to use this module.
    library_patterns: ClassVar[tuple[str, ...]] = ()
    name = "boringssl"
    aliases = ("bssl",)
    help = ("capture BoringSSL TLS plaintext (Android's libssl; SSL_read/SSL_write) with "
            "4-tuples, and its TLS 1.2/1.3 secrets")
    source = "boringssl.c"
    library_sources = ("boringssl.c", "openssl.c")
    options = (
        Option(("--libssl",), "libssl", "path of BoringSSL's libssl.so, or of a binary "
               "linking it statically (default: from the target pid's mappings, then the "
               "usual places)", metavar="PATH"),
        Option(("--android-release",), "android_release", "the Android release the "
               f"BoringSSL comes from ({_RELEASE_NAMES}; na: non-Android), for its struct "
               "offsets (default: from /system/build.prop or the installing package)",
               metavar="N"),
        *FAMILY_OPTIONS,
    )
    keylog_default = "ecapture_boringssl_key.log"
    library_structs = {EVENT_BORINGSSL_SECRET: BORINGSSL_SECRET}
    functions = FUNCS

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        self.release: str | None = None
        self.offsets: BoringOffsets | None = None
        self.libcrypto: str | None = None
        self._bssl = header_codec(BORINGSSL_SECRET.decl)

    def check(self) -> None:
        super().check()
        release = self.config.get("android_release")
        if release is not None and boringssl_offsets(release) is None:
            raise ConfigError(f"--android-release {release}: known releases are "
                              f"{_RELEASE_NAMES}")

    def inspect(self) -> None:
        pid = self.config.get("pid")
        path = self.config.get("libssl") or find_boringssl(pid)
        if path is None:
            where = f"process {pid} maps" if pid is not None else "this system has"
            raise AttachError(f"{where} no BoringSSL libssl: install it (apt-get install "
                              "android-libboringssl) or pass --libssl PATH")
        path = real_path(path)
        if "SSL_read" not in elf_symbols(path):
            raise AttachError(f"symbol SSL_read not found in {path}: pass --libssl with "
                              "BoringSSL's libssl, or a binary that links it with symbols")
        if not is_boringssl(path):
            raise AttachError(f"{path} is not BoringSSL (it lacks {BORINGSSL_ONLY[0]}): "
                              "capture OpenSSL with `ecapture tls`")
        self.libssl = path
        self.release = normalise_release(
            self.config.get("android_release") or android_release_from_build_prop()
            or release_from_package(path))
        self.offsets = boringssl_offsets(self.release)
        self.libcrypto = self._find_libcrypto(path, pid)
        described = {None: "BoringSSL (release unknown)", "na": "BoringSSL (non-Android)"}
        self.version = described.get(self.release, f"BoringSSL (Android {self.release})")
        self.targets = [Target(path, self.version, build_id(path))]
        if self.libcrypto and self.libcrypto != path:
            self.targets.append(Target(self.libcrypto, self.version, build_id(self.libcrypto)))

    @staticmethod
    def _find_libcrypto(libssl: str, pid: int | None) -> str | None:
        """The file defining HKDF_expand: libssl itself when linked statically, else the
        libcrypto it needs, beside it or as the process maps it."""
        if "HKDF_expand" in elf_symbols(libssl):
            return libssl
        mapped = libraries_of_process(pid) if pid is not None else []
        for needed in needed_libraries(libssl):
            if not needed.startswith("libcrypto"):
                continue
            candidates = [os.path.join(os.path.dirname(libssl), needed),
                          *(p for p in mapped if os.path.basename(p) == needed)]
            for candidate in candidates:
                if os.path.exists(candidate) and "HKDF_expand" in elf_symbols(candidate):
                    return real_path(candidate)
        return None

    def _keys_possible(self) -> bool:
        return self.offsets is not None and self.libcrypto is not None

    def require_keys(self) -> None:
        if self.offsets is None:
            raise AttachError(f"{self.libssl} is {self.version}, for which ecapture knows no "
                              "struct offsets of the TLS secrets: pass --android-release "
                              f"({_RELEASE_NAMES}); plaintext capture still works")
        if self.libcrypto is None:
            raise AttachError(f"no libcrypto defining HKDF_expand found for {self.libssl}, "
                              "so TLS 1.3 secrets cannot be taken; plaintext capture still "
                              "works")

    def library_probes(self) -> list[Probe]:
        probes = super().library_probes()
        if self._keys_possible():
            for symbol, fn in EXPAND_PROBES:
                optional = symbol != "HKDF_expand"
                probes += Probe.around(symbol, fn, "uretprobe_bssl_expand", self.libcrypto,
                                       optional=optional)
        return probes

    def library_cflags(self) -> list[str]:
        if self.offsets is None:
            return []
        # ssl_st.version is a uint16_t beside another field: openssl.c keeps the low half.
        flags = ([f"-DSSL_VERSION_OFFSET=0x{self.offsets.ssl_version:x}"]
                 if self.offsets.ssl_version is not None else [])
        if not self._keys_possible():
            return flags
        # Keys travel with every capture whose release is known, so a recording made for
        # plaintext can still give a key log or pcap later.
        return [*flags, "-DCAPTURE_KEYS=1", *self.offsets.cflags()]

    def decode_library(self, kind: int, data: bytes) -> Decoded:
        if kind != EVENT_BORINGSSL_SECRET:
            raise DecodeError(f"unknown event kind {kind} on map events")
        codec = self._bssl
        if len(data) < codec.size:
            raise DecodeError(f"boringssl_secret_event_t has {len(data)} bytes, needs "
                              f"{codec.size}")
        f = dict(zip(codec.names, codec.codec.unpack_from(data), strict=True))
        n = f["secret_len"]
        if not 0 < n <= SECRET_MAX:
            raise DecodeError(f"boringssl_secret_event_t claims a secret of {n} bytes")
        return BoringSecret(timestamp_ns=f["timestamp_ns"], pid=f["pid"], tid=f["tid"],
                            comm=comm_str(f["comm"]), ssl=f["ssl"], version=f["version"],
                            label=f["label"], client_random=f["client_random"],
                            secret=f["secret"][:n])

    def dispatch_library(self, fragment: Fragment) -> Iterable[Event]:
        if isinstance(fragment, BoringSecret):
            yield from fragment.entries()
