"""The ``gnutls`` module (alias ``gnu``): GnuTLS 3.x (libgnutls.so.30).

A TLS library module (:mod:`ecapture.modules.tlsfamily` does the rest): where libgnutls is
and which version, its probes (gnutls_record_send/recv and their variants, gnutls_handshake,
in kern/gnutls.c) and the struct offsets of its secrets (``gnutls_secrets_event_t``), which
become key-log lines here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ecapture.errors import AttachError, DecodeError
from ecapture.events import Event, Fragment, KeyLogEntry, comm_str
from ecapture.modules.base import Decoded, Option, Probe, Target
from ecapture.modules.gnutls_offsets import SessionOffsets, session_offsets
from ecapture.modules.tlsfamily import FAMILY_OPTIONS, TlsLibraryModule
from ecapture.structs.gnutls import EVENT_GNUTLS_SECRETS, GNUTLS_SECRETS
from ecapture.structs.layout import header_codec
from ecapture.targets import build_id, scan_version

# Mapped files carry the full name (libgnutls.so.30.34.3); ldconfig lists the soname.
LIBGNUTLS_PATTERNS = (r"libgnutls\.so\.30(\.\d+)*", r"libgnutls\.so(\.\d+)*")
# The library logs this line when debugging is enabled; the string is in every 3.x build.
VERSION_RE = rb"Enabled GnuTLS (\d+\.\d+\.\d+) logging"
REQUIRED = ("gnutls_record_send", "gnutls_record_recv")

FUNCS = {0: "gnutls_record_recv", 1: "gnutls_record_send", 2: "gnutls_record_recv_seq",
         3: "gnutls_record_send2", 4: "gnutls_record_send_range",
         5: "gnutls_record_send_early_data", 6: "gnutls_record_recv_early_data"}

# gnutls_protocol_t: the library's numbering, not the wire's.
GNUTLS_TLS1_3 = 5
# gnutls_mac_algorithm_t of the PRF: TLS 1.3 secrets are as long as its hash.
GNUTLS_MAC_SHA384 = 7


@dataclass(frozen=True, slots=True)
class GnuTlsSecrets(Fragment):
    """What the kernel read from one session's struct gnutls_session_int: the key-log
    entries in it (:meth:`entries`)."""

    timestamp_ns: int
    pid: int
    tid: int
    uid: int
    comm: str
    session: int
    protocol: int
    prf_mac: int
    client_random: bytes
    master_secret: bytes
    client_early_traffic_secret: bytes
    client_handshake_traffic_secret: bytes
    server_handshake_traffic_secret: bytes
    client_traffic_secret_0: bytes
    server_traffic_secret_0: bytes
    exporter_secret: bytes

    def secrets(self) -> list[tuple[str, bytes]]:
        """(label, secret) pairs as SSLKEYLOGFILE names them. TLS 1.2 and older have one
        master secret; TLS 1.3 has a secret per traffic direction and phase, each as long
        as the PRF's hash (48 bytes for SHA-384 suites, else 32). A secret GnuTLS never
        derived (the early one without 0-RTT) is all zeros and left out. The early
        exporter secret of a 0-RTT handshake is not among them: GnuTLS keeps it in the
        exporter's place only until the handshake derives the exporter secret (no
        decryption needs it)."""
        if not any(self.client_random):
            return []
        if self.protocol != GNUTLS_TLS1_3:
            return [("CLIENT_RANDOM", self.master_secret)] if any(self.master_secret) else []
        n = 48 if self.prf_mac == GNUTLS_MAC_SHA384 else 32
        pairs = (("CLIENT_EARLY_TRAFFIC_SECRET", self.client_early_traffic_secret),
                 ("CLIENT_HANDSHAKE_TRAFFIC_SECRET", self.client_handshake_traffic_secret),
                 ("SERVER_HANDSHAKE_TRAFFIC_SECRET", self.server_handshake_traffic_secret),
                 ("CLIENT_TRAFFIC_SECRET_0", self.client_traffic_secret_0),
                 ("SERVER_TRAFFIC_SECRET_0", self.server_traffic_secret_0),
                 ("EXPORTER_SECRET", self.exporter_secret))
        return [(label, value[:n]) for label, value in pairs if any(value[:n])]

    def entries(self) -> list[KeyLogEntry]:
        return [KeyLogEntry(self.timestamp_ns, self.pid, self.tid, self.uid, self.comm, label,
                            self.client_random, secret) for label, secret in self.secrets()]


class GnuTLSModule(TlsLibraryModule):
    library_patterns = LIBGNUTLS_PATTERNS
    library_option = "gnutls"
    name = "gnutls"
    aliases = ("gnu",)
    help = ("capture GnuTLS TLS plaintext (gnutls_record_send/recv) with 4-tuples, and its "
            "TLS 1.2/1.3 keys")
    source = "gnutls.c"
    options = (
        Option(("--gnutls",), "gnutls", "path of libgnutls.so.30 (default: from the target "
               "pid's mappings, then ldconfig)", metavar="PATH"),
        *FAMILY_OPTIONS,
    )
    keylog_default = "ecapture_gnutls_key.log"
    library_structs = {EVENT_GNUTLS_SECRETS: GNUTLS_SECRETS}
    functions = FUNCS

    def __init__(self, config: Mapping[str, Any]):
        super().__init__(config)
        self.libgnutls: str | None = None
        self.version: str | None = None
        self.offsets: SessionOffsets | None = None
        self._secrets = header_codec(GNUTLS_SECRETS.decl)

    def inspect(self) -> None:
        path, _ = self.resolve_library(
            LIBGNUTLS_PATTERNS, REQUIRED, "GnuTLS libgnutls",
            ": install GnuTLS (apt-get install libgnutls30) or pass --gnutls PATH")
        self.libgnutls = path
        self.version = scan_version(path, VERSION_RE)
        self.offsets = session_offsets(self.version)
        self.targets = [Target(path, self.version and f"GnuTLS {self.version}", build_id(path))]

    def require_keys(self) -> None:
        if self.offsets is None:
            found = f"GnuTLS {self.version}" if self.version else "an unrecognised version"
            raise AttachError(f"{self.libgnutls} is {found}, for which ecapture knows no struct "
                              "offsets of the TLS secrets; plaintext capture still works")

    def library_probes(self) -> list[Probe]:
        lib = self.libgnutls
        read, write = "uretprobe_gnutls_record_recv", "uretprobe_gnutls_record_send"
        probes = [*Probe.around("gnutls_record_recv", "uprobe_gnutls_record_recv", read, lib),
                  *Probe.around("gnutls_record_send", "uprobe_gnutls_record_send", write, lib)]
        optional = (
            ("gnutls_record_recv_seq", read),
            # 3.6.3+: gnutls_record_send tail-calls it (see kern/gnutls.c).
            ("gnutls_record_send2", write),
            ("gnutls_record_send_range", write),
            # TLS 1.3 0-RTT data (3.6.5+).
            ("gnutls_record_send_early_data", write),
            ("gnutls_record_recv_early_data", read),
            ("gnutls_handshake", "uretprobe_gnutls_handshake"),
        )
        for symbol, ret_fn in optional:
            probes += Probe.around(symbol, f"uprobe_{symbol}", ret_fn, lib, optional=True)
        return probes

    def library_cflags(self) -> list[str]:
        if self.offsets is None:
            return []
        # Keys travel with every capture whose version is known, so a recording made for
        # plaintext can still give a key log or pcap later.
        return ["-DCAPTURE_KEYS=1", *self.offsets.cflags()]

    def decode_library(self, kind: int, data: bytes) -> Decoded:
        if kind != EVENT_GNUTLS_SECRETS:
            raise DecodeError(f"unknown event kind {kind} on map events")
        codec = self._secrets
        if len(data) < codec.size:
            raise DecodeError(f"gnutls_secrets_event_t has {len(data)} bytes, needs "
                              f"{codec.size}")
        f = dict(zip(codec.names, codec.codec.unpack_from(data), strict=True))
        return GnuTlsSecrets(
            timestamp_ns=f["timestamp_ns"], pid=f["pid"], tid=f["tid"], uid=f["uid"],
            comm=comm_str(f["comm"]), session=f["session"], protocol=f["protocol"],
            prf_mac=f["prf_mac"], client_random=f["client_random"],
            master_secret=f["master_secret"],
            client_early_traffic_secret=f["client_early_traffic_secret"],
            client_handshake_traffic_secret=f["client_handshake_traffic_secret"],
            server_handshake_traffic_secret=f["server_handshake_traffic_secret"],
            client_traffic_secret_0=f["client_traffic_secret_0"],
            server_traffic_secret_0=f["server_traffic_secret_0"],
            exporter_secret=f["exporter_secret"])

    def dispatch_library(self, fragment: Fragment) -> Iterable[Event]:
        if isinstance(fragment, GnuTlsSecrets):
            yield from fragment.entries()
