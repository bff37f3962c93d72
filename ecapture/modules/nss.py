"""The ``nss`` module (alias ``nspr``): NSS, Mozilla's TLS library, through NSPR's I/O calls.

A TLS library module (:mod:`ecapture.modules.tlsfamily` does the rest): where libnspr4 and
libssl3 are and which NSS version, and the probes of kern/nss.c. A program using NSS reads
and writes plaintext with NSPR's PR_Read, PR_Write, PR_Recv, PR_Send and PR_Writev on the
socket SSL_ImportFD() returned; the kernel side keeps only those calls on layered
descriptors (SSL sockets), never on plain files, pipes or sockets.

Plaintext only. NSS derives and keeps its TLS secrets inside its PKCS#11 module (softoken)
as key objects; reading them would mean following that module's private structs, so this
module offers no keylog or pcap model. Nothing is read from NSS's own structs, so every
NSS version is captured alike; the version is detected for the record only.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from ecapture.errors import AttachError, ConfigError
from ecapture.modules.base import Option, Probe, Target
from ecapture.modules.tlsfamily import FAMILY_OPTIONS, TlsLibraryModule
from ecapture.targets import (
    build_id,
    elf_symbols,
    find_library,
    locate_library,
    real_path,
    scan_version,
)

# libnspr4 first; Firefox and Thunderbird fold NSPR (and libssl3) into their own libnss3.
LIBNSPR_PATTERNS = (r"libnspr4\.so", r"libnss3\.so")
LIBSSL3_PATTERNS = (r"libssl3\.so",)
REQUIRED = ("PR_Read", "PR_Write")
HANDSHAKE = "SSL_ForceHandshake"
# NSS's version banner, in libssl3 and libnss3 of every 3.x build (what `strings` shows).
VERSION_RE = rb"Version: NSS (\d+\.\d+(?:\.\d+)*)"

# The func numbers of kern/nss.c's enum nss_func.
FUNCS = {0: "PR_Read", 1: "PR_Write", 2: "PR_Recv", 3: "PR_Send", 4: "PR_Writev"}

NO_KEYS = ("NSS keeps its TLS secrets inside its PKCS#11 module, which ecapture does not "
           "read: the nss module captures plaintext only")


class NSSModule(TlsLibraryModule):
    library_patterns = LIBNSPR_PATTERNS
    library_option = "nspr"
    name = "nss"
    aliases = ("nspr",)
    help = ("capture NSS TLS plaintext (PR_Read/PR_Write/PR_Recv/PR_Send/PR_Writev on SSL "
            "sockets) with 4-tuples; no keys: NSS keeps them in its PKCS#11 module")
    source = "nss.c"
    options = (
        Option(("--nspr",), "nspr", "path of libnspr4.so, or of a library that contains "
               "NSPR (Firefox's libnss3.so) (default: from the target pid's mappings, then "
               "ldconfig)", metavar="PATH"),
        # -i is the pcap model's, which NSS has not.
        *(o for o in FAMILY_OPTIONS if o.dest != "ifname"),
    )
    models = ("text", "json")
    no_model_reason = NO_KEYS
    functions = FUNCS

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        self.libnspr: str | None = None
        self.libssl3: str | None = None
        self.version: str | None = None

    def inspect(self) -> None:
        path, _ = self.resolve_library(
            LIBNSPR_PATTERNS, REQUIRED, "NSPR (libnspr4)",
            ": install NSS (apt-get install libnss3) or pass --nspr PATH")
        self.libnspr = path
        self.libssl3 = self._find_libssl3(path)
        self.version = self._detect_version(path, self.libssl3)
        described = f"NSS {self.version}" if self.version else None
        self.targets = [Target(path, described, build_id(path))]
        if self.libssl3 is not None and self.libssl3 != path:
            self.targets.append(Target(self.libssl3, described, build_id(self.libssl3)))

    def _find_libssl3(self, nspr: str) -> str | None:
        """The file with SSL_ForceHandshake: NSPR's own file when NSS is folded into it,
        else the libssl3 beside it, the one the target maps, or the system's. None if
        there is none: the handshake probe is only a help (see kern/nss.c)."""
        candidates = [nspr, os.path.join(os.path.dirname(nspr), "libssl3.so")]
        pid = self.config.get("pid")
        if pid is not None:
            with contextlib.suppress(AttachError):  # then only the other candidates
                candidates.append(locate_library(LIBSSL3_PATTERNS, (HANDSHAKE,), "libssl3",
                                                 pid))
        else:
            candidates.append(find_library(LIBSSL3_PATTERNS) or "")
        for candidate in candidates:
            if not candidate or not os.path.isfile(candidate):
                continue
            try:
                if HANDSHAKE in elf_symbols(candidate):
                    return real_path(candidate)
            except AttachError:
                continue
        return None

    @staticmethod
    def _detect_version(nspr: str, libssl3: str | None) -> str | None:
        # libnspr4 carries only NSPR's version; NSS's is in libssl3 and libnss3.
        directory = os.path.dirname(nspr)
        for path in (libssl3, nspr, os.path.join(directory, "libnss3.so")):
            if path and os.path.isfile(path):
                found = scan_version(path, VERSION_RE)
                if found:
                    return found
        return None

    def require_keys(self) -> None:
        raise ConfigError(NO_KEYS)

    def library_probes(self) -> list[Probe]:
        lib, around = self.libnspr, Probe.around
        probes = [
            *around("PR_Read", "uprobe_PR_Read", "uretprobe_PR_Read", lib),
            *around("PR_Write", "uprobe_PR_Write", "uretprobe_PR_Write", lib),
            # PR_Recv/PR_Send: tstclnt's, curl's; PR_Writev: selfserv's responses.
            *around("PR_Recv", "uprobe_PR_Recv", "uretprobe_PR_Read", lib, optional=True),
            *around("PR_Send", "uprobe_PR_Send", "uretprobe_PR_Write", lib, optional=True),
            *around("PR_Writev", "uprobe_PR_Writev", "uretprobe_PR_Writev", lib, optional=True),
        ]
        if self.libssl3 is not None:
            probes += around(HANDSHAKE, "uprobe_SSL_ForceHandshake",
                             "uretprobe_SSL_ForceHandshake", self.libssl3, optional=True)
        return probes
