"""The ``tls`` module (alias ``openssl``): OpenSSL 1.1.1 and 3.x plaintext with its socket.

Kernel side: kern/openssl.c. Probes on SSL_read, SSL_write, SSL_read_ex, SSL_write_ex and
SSL_do_handshake in libssl; tracepoints for fds and TCP 4-tuples. Events: chunks of
plaintext (``ssl_data_event_t``) and connections (``conn_event_t``) on one ring buffer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any, Literal

from ecapture.assemble import ChunkJoiner, ConnTable, SslChunk
from ecapture.errors import AttachError, ConfigError, DecodeError
from ecapture.events import Conn, Packet, SslData, addr_str, comm_str
from ecapture.modules.base import (
    EventMap,
    Features,
    Module,
    Option,
    Probe,
    Target,
    non_negative_int,
    split_kind,
)
from ecapture.modules.openssl_offsets import KeyOffsets, key_offsets
from ecapture.structs.openssl import (
    EVENT_CONN,
    EVENT_MASTER_SECRET,
    EVENT_PACKET,
    EVENT_SSL_DATA,
    SSL_CHUNK_SIZE,
    conn_event_t,
    master_secret_event_t,
    packet_event_t,
    ssl_data_event_t,
)
from ecapture.targets import build_id, elf_symbols, find_library, needed_libraries, scan_version
from ecapture.tlskeys import MasterSecret

# Preference order: OpenSSL 3 first. Exact names: Debian's libssl3.so is NSS, not OpenSSL.
LIBSSL_PATTERNS = (r"libssl\.so\.3", r"libssl\.so\.1\.1", r"libssl\.so")
VERSION_RE = rb"OpenSSL (\d+\.\d+\.\d+[a-z]?)[ -]"

FUNCS = {0: "SSL_read", 1: "SSL_write", 2: "SSL_read_ex", 3: "SSL_write_ex"}
CONN_KINDS: dict[int, Literal["connect", "accept", "close", "proc"]] = {
    0: "connect", 1: "accept", 2: "close", 3: "proc"}
CONN_CLOSE = 2
CONN_PROC = 3
MAX_CHUNKS = 256  # per call: 4 MiB of plaintext with 16 KiB chunks


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


class OpenSSLModule(Module):
    name = "tls"
    aliases = ("openssl",)
    help = "capture OpenSSL TLS plaintext (SSL_read/SSL_write and the _ex calls) with 4-tuples"
    source = "openssl.c"
    options = (
        Option(("--libssl",), "libssl", "path of libssl.so or of a binary linking OpenSSL "
               "statically (default: from the target pid's mappings, then ldconfig)",
               metavar="PATH"),
        Option(("-p", "--pid"), "pid", "capture only this process id",
               type=non_negative_int, metavar="PID"),
        Option(("-u", "--uid"), "uid", "capture only this user id",
               type=non_negative_int, metavar="UID"),
        Option(("-i", "--ifname"), "ifname", "network interface whose packets -m pcap "
               "captures (a TC classifier that only watches)", metavar="IFACE"),
    )
    maps = (
        EventMap("events", {EVENT_SSL_DATA: ("ssl_data_event_t", ssl_data_event_t),
                            EVENT_CONN: ("conn_event_t", conn_event_t),
                            EVENT_MASTER_SECRET: ("master_secret_event_t",
                                                  master_secret_event_t)}),
        EventMap("packets", {EVENT_PACKET: ("packet_event_t", packet_event_t)}, buffer="perf"),
    )

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        self.libssl: str | None = None
        self.version: str | None = None
        self.key_offsets: KeyOffsets | None = None
        self._codecs = {k: c for m in self.maps for k, c in m.codecs().items()}
        self._joiner = ChunkJoiner()
        self._conns = ConnTable()
        self._seen_fds: set[tuple[int, int]] = set()  # for backfill, live only

    def check(self) -> None:
        if self.config.get("capture_packets"):
            ifname = self.config.get("ifname")
            if not ifname:
                raise ConfigError("-m pcap needs -i IFACE, the interface to capture on")
            if not os.path.exists(f"/sys/class/net/{ifname}"):
                raise ConfigError(f"-i {ifname}: no such network interface")
        pid = self.config.get("pid")
        if pid is not None and not os.path.exists(f"/proc/{pid}"):
            raise ConfigError(f"--pid {pid}: no such process")
        libssl = self.config.get("libssl")
        if libssl and not os.path.isfile(libssl):
            raise ConfigError(f"--libssl {libssl}: no such file")

    def init(self) -> None:
        path = self.config.get("libssl") or find_library(LIBSSL_PATTERNS, self.config.get("pid"))
        if path is None:
            where = f"process {self.config['pid']}" if self.config.get("pid") else "this system"
            raise AttachError(f"libssl not found in {where}: install OpenSSL (apt-get install "
                              "libssl3) or pass --libssl PATH")
        path = os.path.realpath(path)
        symbols = elf_symbols(path)
        for required in ("SSL_read", "SSL_write"):
            if required not in symbols:
                raise AttachError(f"symbol {required} not found in {path}: pass --libssl with "
                                  "OpenSSL's libssl, or a binary that links it statically with "
                                  "symbols")
        self.libssl = path
        self.version = self._detect_version(path)
        self.key_offsets = key_offsets(self.version)
        self.targets = [Target(path, self.version and f"OpenSSL {self.version}", build_id(path))]

    def require_keys(self) -> None:
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

    def probes(self) -> list[Probe]:
        lib = self.libssl
        ups = [
            Probe("uprobe", "SSL_read", "uprobe_SSL_read", lib),
            Probe("uretprobe", "SSL_read", "uretprobe_SSL_read", lib),
            Probe("uprobe", "SSL_write", "uprobe_SSL_write", lib),
            Probe("uretprobe", "SSL_write", "uretprobe_SSL_write", lib),
            # 1.1.1+; Python >= 3.10 and many programs use only these.
            Probe("uprobe", "SSL_read_ex", "uprobe_SSL_read_ex", lib, optional=True),
            Probe("uretprobe", "SSL_read_ex", "uretprobe_SSL_read", lib, optional=True),
            Probe("uprobe", "SSL_write_ex", "uprobe_SSL_write_ex", lib, optional=True),
            Probe("uretprobe", "SSL_write_ex", "uretprobe_SSL_write", lib, optional=True),
            Probe("uprobe", "SSL_do_handshake", "uprobe_SSL_do_handshake", lib, optional=True),
            Probe("uretprobe", "SSL_do_handshake", "uretprobe_SSL_do_handshake", lib,
                  optional=True),
        ]
        tps = [
            *(f"syscalls:sys_enter_{s}" for s in ("write", "read", "sendto", "recvfrom",
                                                  "sendmsg", "recvmsg", "writev", "readv")),
            "syscalls:sys_enter_connect", "syscalls:sys_exit_connect",
            "syscalls:sys_enter_accept", "syscalls:sys_enter_accept4",
            "syscalls:sys_exit_accept", "syscalls:sys_exit_accept4",
            "sock:inet_sock_set_state",
        ]
        probes = ups + [Probe("tracepoint", tp, "tracepoint__" + tp.replace(":", "__"))
                        for tp in tps]
        ifname = self.config.get("ifname")
        if self.config.get("capture_packets") and ifname:
            # On loopback every packet leaves once and arrives once: egress sees each once.
            hooks = ("egress",) if ifname == "lo" else ("ingress", "egress")
            probes += [Probe("tc", f"{ifname}:{hook}", f"tc_{hook}") for hook in hooks]
        return probes

    def cflags(self, features: Features) -> list[str]:
        flags = [f"-DSSL_CHUNK_SIZE={SSL_CHUNK_SIZE}", f"-DMAX_CHUNKS={MAX_CHUNKS}"]
        if self.config.get("pid") is not None:
            flags.append(f"-DTARGET_PID={self.config['pid']}")
        if self.config.get("uid") is not None:
            flags.append(f"-DTARGET_UID={self.config['uid']}")
        offset = ssl_version_offset(self.version)
        if offset is not None:
            flags.append(f"-DSSL_VERSION_OFFSET={offset}")
            if self.key_offsets is not None:
                # Keys travel with every capture whose version is known, so a recording
                # made for plaintext can still give a key log or pcap later.
                flags += ["-DCAPTURE_KEYS=1", *self.key_offsets.cflags()]
        return flags

    # -- decode and dispatch ------------------------------------------------------
    def decode(self, map_name: str, data: bytes) -> SslChunk | Conn | MasterSecret | Packet:
        kind = split_kind(data)
        codec = self._codecs.get(kind)
        if codec is None:
            raise DecodeError(f"unknown event kind {kind} on map {map_name}")
        if len(data) < codec.size:
            raise DecodeError(f"event kind {kind} has {len(data)} bytes, needs {codec.size}")
        f = self._fields(kind, data)
        if kind == EVENT_PACKET:
            end = codec.size + f["caplen"]
            if end > len(data):
                raise DecodeError(f"packet_event_t claims {f['caplen']} bytes, "
                                  f"{len(data) - codec.size} present")
            return Packet(timestamp_ns=f["timestamp_ns"], ifindex=f["ifindex"],
                          direction="egress" if f["direction"] else "ingress",
                          length=f["len"], data=data[codec.size:end])
        if kind == EVENT_MASTER_SECRET:
            return MasterSecret(
                timestamp_ns=f["timestamp_ns"], pid=f["pid"], comm=comm_str(f["comm"]),
                ssl=f["ssl"], version=f["version"], cipher_id=f["cipher_id"],
                client_random=f["client_random"], master_key=f["master_key"],
                handshake_secret=f["handshake_secret"],
                handshake_traffic_hash=f["handshake_traffic_hash"],
                client_app_traffic_secret=f["client_app_traffic_secret"],
                server_app_traffic_secret=f["server_app_traffic_secret"],
                exporter_master_secret=f["exporter_master_secret"])
        if kind == EVENT_CONN:
            family = f["family"]
            return Conn(
                timestamp_ns=f["timestamp_ns"], kind=CONN_KINDS.get(f["conn"], "close"),
                pid=f["pid"], tid=f["tid"], uid=f["uid"], comm=comm_str(f["comm"]),
                fd=f["fd"], sock=f["sock"], family=family,
                laddr=addr_str(family, f["laddr"]), lport=f["lport"],
                raddr=addr_str(family, f["raddr"]), rport=f["rport"])
        end = codec.size + f["data_len"]
        if f["data_len"] > SSL_CHUNK_SIZE or end > len(data):
            raise DecodeError(f"ssl_data_event_t claims {f['data_len']} data bytes, "
                              f"{len(data) - codec.size} present")
        ev = SslData(
            timestamp_ns=f["timestamp_ns"], pid=f["pid"], tid=f["tid"], uid=f["uid"],
            comm=comm_str(f["comm"]), fd=f["fd"], version=f["version"],
            direction="write" if f["direction"] == 1 else "read",
            func=FUNCS.get(f["func"], "?"), ssl=f["ssl"], data=data[codec.size:end],
            total_len=f["total_len"])
        return SslChunk(ev, f["start_ns"], f["offset"])

    def dispatch(self, event: Any) -> Iterable[Any]:
        if isinstance(event, MasterSecret | Packet):
            yield event
            return
        if isinstance(event, Conn):
            self._conns.update(event)
            yield event
            return
        for call in self._joiner.feed(event):
            yield self._with_conn(call)

    def backfill(self, data: bytes, lookup: Callable[[int, int], Any]) -> list[bytes]:
        """Fill in 4-tuples the kernel could not give, from /proc, while the socket is open:
        an accept() that did not ask for the peer's address gets them at once (recorded
        with reserved=1: "addresses from /proc"); the first data of a connection that no
        tracepoint saw being set up (older than the capture) is preceded by a CONN_PROC."""
        if len(data) < 4:
            return [data]
        kind = split_kind(data)
        if kind == EVENT_CONN and len(data) >= self._codecs[EVENT_CONN].size:
            ev = self._fields(kind, data)
            key = (ev["pid"], ev["fd"])
            if ev["conn"] == CONN_CLOSE:
                self._seen_fds.discard(key)
                return [data]
            self._seen_fds.add(key)
            if ev["family"] == 0 and ev["fd"] >= 0:
                found = lookup(ev["pid"], ev["fd"])
                if found is not None:
                    return [self._conn_bytes({**ev, "reserved": 1}, found)]
            return [data]
        if kind != EVENT_SSL_DATA or len(data) < self._codecs[EVENT_SSL_DATA].size:
            return [data]
        ev = self._fields(kind, data)
        key = (ev["pid"], ev["fd"])
        if ev["fd"] < 0 or key in self._seen_fds:
            return [data]
        self._seen_fds.add(key)  # look once, found or not
        found = lookup(ev["pid"], ev["fd"])
        if found is None:
            return [data]
        proc = {**ev, "kind": EVENT_CONN, "sock": 0, "conn": CONN_PROC, "reserved": 0,
                "reserved2": 0}
        return [self._conn_bytes(proc, found), data]

    @staticmethod
    def _conn_bytes(fields: dict[str, Any], found: Any) -> bytes:
        values = {name: fields[name] for name in ("kind", "pid", "timestamp_ns", "sock", "tid",
                                                  "uid", "fd", "conn", "reserved", "comm")}
        values.update(family=found.family, lport=found.lport, rport=found.rport,
                      laddr=found.laddr, raddr=found.raddr, reserved2=0)
        return bytes(conn_event_t.build(values))

    def _fields(self, kind: int, data: bytes) -> dict[str, Any]:
        codec = self._codecs[kind]
        return dict(zip(codec.names, codec.codec.unpack_from(data), strict=True))

    def finish(self) -> Iterator[Any]:
        for call in self._joiner.finish():
            yield self._with_conn(call)

    def _with_conn(self, call: SslData) -> SslData:
        conn = self._conns.lookup(call.pid, call.fd, call.timestamp_ns) if call.fd >= 0 \
            else None
        if conn is None:
            return call
        return replace(call, conn=conn)
