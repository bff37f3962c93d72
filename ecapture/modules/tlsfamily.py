"""The TLS family: what every TLS library module shares, written once.

Kernel side: kern/tls.c (chunked plaintext, which socket a call used, connection tracking)
and kern/packets.c (the TC program of the pcap model). Events: plaintext chunks
(``ssl_data_event_t``) and connections (``conn_event_t``) on one buffer with the library's
own structs; packet pieces on a second program's buffer. User side: decoding, joining
chunks and packets, attaching connections, tuples from /proc, key-log entries.

A library module subclasses :class:`TlsLibraryModule` and adds only what depends on the
library: where it is and which version (``init``), its probes (``library_probes``), its
knobs and struct offsets (``library_cflags``), and its own secrets struct
(``library_structs``, ``decode_library``, ``dispatch_library``).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, Literal

from ecapture.assemble import ChunkJoiner, ConnTable, PacketChunk, PacketJoiner, TlsChunk
from ecapture.errors import AttachError, ConfigError, DecodeError
from ecapture.events import (
    AF_INET,
    AF_INET6,
    Conn,
    ConnKind,
    Event,
    Fragment,
    OtherLibrary,
    Packet,
    TlsData,
    addr_str,
    comm_str,
)
from ecapture.modules.base import (
    Decoded,
    EventMap,
    Features,
    Module,
    Observation,
    Option,
    Probe,
    Program,
    check_path_and_pid,
    pid_option,
    process_filter_cflags,
    uid_option,
)
from ecapture.parsers.messages import MISSING_WHY
from ecapture.structs.layout import KernelStruct, header_codec
from ecapture.structs.packets import (
    EVENT_PACKET,
    EVENT_PACKET_CHUNK,
    PACKET,
    PACKET_CHUNK,
    PACKET_CHUNK_SIZE,
)
from ecapture.structs.tls import CONN, EVENT_CONN, EVENT_SSL_DATA, SSL_DATA, TLS_CHUNK_SIZE
from ecapture.targets import elf_symbols, libraries_of_process, locate_library

CONN_KINDS: dict[int, ConnKind] = {0: "connect", 1: "accept", 2: "close", 3: "proc"}
CONN_CLOSE = 2
MAX_CHUNKS = 256  # per call: 4 MiB of plaintext with 16 KiB chunks
MAX_PACKET_CHUNKS = 32  # per packet: 512 KiB, more than any GSO packet

FAMILY_OPTIONS = (
    pid_option(),
    uid_option(),
    Option(("-i", "--ifname"), "ifname", "network interface whose packets -m pcap "
           "captures (a TC classifier that only watches)", metavar="IFACE"),
)

# Which socket a call used and the 4-tuples: without syscall tracepoints where the kernel
# allows (they would run a program on every syscall of the host), else with them.
SOCKET_TRACEPOINTS = ("sock:sock_send_length", "sock:sock_recv_length",
                      "sock:inet_sock_set_state")
SYSCALL_TRACEPOINTS = (
    *(f"syscalls:sys_enter_{s}" for s in ("write", "read", "sendto", "recvfrom", "sendmsg",
                                          "recvmsg", "writev", "readv")),
    "syscalls:sys_enter_connect", "syscalls:sys_exit_connect",
    "syscalls:sys_enter_accept", "syscalls:sys_enter_accept4",
    "syscalls:sys_exit_accept", "syscalls:sys_exit_accept4",
    "sock:inet_sock_set_state",
)

# Just the fields the drain path needs, at their offsets (kern/tls.h): kind, pid, fd of a
# data event; kind, pid, fd, family, conn of a connection event.
_PEEK_DATA = struct.Struct("<II32xi")
_PEEK_CONN = struct.Struct("<II24xiHB")
# How a plaintext chunk, the bulk of every capture, starts: decode() tests for it first.
_DATA_KIND = EVENT_SSL_DATA.to_bytes(4, "little")
COMM_CACHE_MAX = 1024  # distinct raw comm fields whose text is kept
_CONN_COMM = slice(76, 92)  # conn_event_t.comm (kern/tls.h), checked by the unit tests


def _matches(names: Iterable[str], patterns: Iterable[str]) -> str | None:
    """The first of ``names`` that one of ``patterns`` matches whole."""
    regexes = [re.compile(p) for p in patterns]
    return next((n for n in names if any(rx.fullmatch(n) for rx in regexes)), None)


def _tuple_fields(found: Any) -> dict[str, Any]:
    return {"family": found.family, "laddr": found.laddr.hex(), "lport": found.lport,
            "raddr": found.raddr.hex(), "rport": found.rport}


class TlsLibraryModule(Module):
    """Base of every TLS library module (see the module docstring)."""

    family_source: ClassVar[str] = "tls.c"
    header: ClassVar[str] = "tls.h"
    models: ClassVar[tuple[str, ...]] = ("text", "json", "keylog", "pcap")
    #: the library's own structs on the "events" map (e.g. OpenSSL's secrets), by kind
    library_structs: ClassVar[Mapping[int, KernelStruct]] = {}
    #: the library's function names, by the ``func`` number its kernel code sends
    functions: ClassVar[Mapping[int, str]] = {}
    #: the option (its dest) naming the library's file: check() makes sure it exists, and
    #: resolve_library() takes it before looking anywhere else
    library_option: ClassVar[str | None] = None
    #: file names of the library (regexes), for telling a process that maps it: a process
    #: that connects while mapping another module's library is told which module to use
    library_patterns: ClassVar[tuple[str, ...]] = ()
    #: the kern/ files compiled after the family's, in order: by default ``source``. A
    #: library whose API is another's (BoringSSL's is OpenSSL's) lists that one's file first
    #: and adds its own, which reads only what differs (the secrets).
    library_sources: ClassVar[tuple[str, ...]] = ()
    maps: ClassVar[tuple[EventMap, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.maps = (
            EventMap("events", {EVENT_SSL_DATA: SSL_DATA, EVENT_CONN: CONN,
                                **cls.library_structs}),
            # Kind 4 is how packets were recorded before they were sent in pieces.
            EventMap("packets", {EVENT_PACKET: PACKET, EVENT_PACKET_CHUNK: PACKET_CHUNK},
                     program="packets"),
        )

    def __init__(self, config: Mapping[str, Any]):
        super().__init__(config)
        self._data = header_codec(SSL_DATA.decl)
        self._data_size = self._data.size
        self._data_unpack = self._data.codec.unpack_from
        self._functions = dict(self.functions)
        self._conn = header_codec(CONN.decl)
        self._packet = header_codec(PACKET.decl)
        self._packet_chunk = header_codec(PACKET_CHUNK.decl)
        self._joiner = ChunkJoiner()
        self._packets = PacketJoiner()
        self._conns = ConnTable()
        self._proc: dict[tuple[int, int], dict[str, Any]] = {}  # (pid, fd) -> tuple fields
        self._seen_fds: set[tuple[int, int]] = set()  # observe(), live only
        # observe(): the programs (comm fields) whose libraries were looked at. Once per
        # program, not per process: the drain thread must not read /proc for each of a
        # thousand short-lived clients, and one line per program says enough.
        self._seen_comms: set[bytes] = set()
        self._comms: dict[bytes, str] = {}  # raw comm field -> comm_str() of it
        # Calls whose bytes did not all arrive (a chunk lost, or a read the kernel refused),
        # and how many bytes they miss: said in the summary, as lost events are.
        self.short_calls = 0
        self.missing_bytes = 0

    # -- configuration -------------------------------------------------------------
    def check(self) -> None:
        if self.config.get("capture_packets"):
            ifname = self.config.get("ifname")
            if not ifname:
                raise ConfigError("-m pcap needs -i IFACE, the interface to capture on")
            if not os.path.exists(f"/sys/class/net/{ifname}"):
                raise ConfigError(f"-i {ifname}: no such network interface")
        self.notes += check_path_and_pid(self.config, self.library_option)

    def resolve_library(self, patterns: Iterable[str], required: Iterable[str], what: str,
                        hint: str) -> tuple[str, frozenset[str]]:
        """The file to attach to (a real path: uprobes attach to inodes) and the functions
        it defines: the library option's, else the one --pid's process maps (or its own
        executable), else the system's. AttachError in one line if it lacks one of
        ``required``."""
        option = self.library_option
        path = (self.config.get(option) if option else None) or locate_library(
            patterns, required, what, self.config.get("pid"), hint)
        path = os.path.realpath(path)
        symbols = elf_symbols(path)
        for name in required:
            if name not in symbols:
                raise AttachError(f"symbol {name} not found in {path}: pass --{option} with "
                                  f"{what}, or a binary that links it statically with symbols")
        return path, symbols

    # -- what a library module provides ----------------------------------------------
    def library_probes(self) -> list[Probe]:
        raise NotImplementedError

    def library_cflags(self) -> list[str]:
        return []

    def decode_library(self, kind: int, data: bytes) -> Decoded:
        raise DecodeError(f"unknown event kind {kind} on map events")

    def dispatch_library(self, fragment: Fragment) -> Iterable[Event]:
        return iter(())

    # -- kernel side ---------------------------------------------------------------
    def probes(self, features: Features) -> list[Probe]:
        tracepoints = SOCKET_TRACEPOINTS if features.socket_tracepoints else SYSCALL_TRACEPOINTS
        return self.library_probes() + [
            Probe("tracepoint", tp, "tracepoint__" + tp.replace(":", "__"))
            for tp in tracepoints]

    def cflags(self, features: Features) -> list[str]:
        flags = [f"-DTLS_CHUNK_SIZE={TLS_CHUNK_SIZE}", f"-DMAX_CHUNKS={MAX_CHUNKS}",
                 f"-DSOCKET_HOOKS={int(features.socket_tracepoints)}",
                 *process_filter_cflags(self.config)]
        return flags + self.library_cflags()

    def programs(self, features: Features) -> list[Program]:
        programs = [Program("main", (self.family_source,
                                      *(self.library_sources or (self.source,))),
                            tuple(self.cflags(features)), tuple(self.probes(features)))]
        ifname = self.config.get("ifname")
        if self.config.get("capture_packets") and ifname:
            # On loopback every packet leaves once and arrives once: one hook sees each once.
            # Ingress, because it sees packets as tcpdump does: after the kernel split the
            # GSO packets that lo may not send whole (egress sees them before).
            hooks = ("ingress",) if ifname == "lo" else ("ingress", "egress")
            programs.append(Program(
                "packets", ("packets.c",),
                (f"-DPACKET_CHUNK_SIZE={PACKET_CHUNK_SIZE}",
                 f"-DMAX_PACKET_CHUNKS={MAX_PACKET_CHUNKS}"),
                tuple(Probe("tc", f"{ifname}:{hook}", f"tc_{hook}") for hook in hooks)))
        return programs

    # -- decode and dispatch ------------------------------------------------------
    def decode(self, map_name: str, data: bytes) -> Decoded:
        """A plaintext chunk (the bulk of every capture, decoded here rather than one call
        further) is a TlsChunk; or, when it is the whole call (most are), the call's event
        at once, rather than a TlsChunk that dispatch() would only copy into one. That
        event's ``conn`` is left to dispatch(), which knows the connections."""
        if not data.startswith(_DATA_KIND) or map_name != "events":
            return self._decode_other(map_name, data)
        size = self._data_size
        if len(data) < size:
            raise DecodeError(f"ssl_data_event_t has {len(data)} bytes, needs {size}")
        (_, pid, ts, start_ns, conn_id, tid, uid, fd, version, total_len, offset, data_len,
         direction, func, _, raw_comm) = self._data_unpack(data)
        end = size + data_len
        if data_len > TLS_CHUNK_SIZE or end > len(data):
            raise DecodeError(f"ssl_data_event_t claims {data_len} data bytes, "
                              f"{len(data) - size} present")
        comm = self._comms.get(raw_comm)
        if comm is None:  # a process's every event has the same 16 bytes: decode them once
            if len(self._comms) >= COMM_CACHE_MAX:
                self._comms.clear()
            comm = self._comms[raw_comm] = comm_str(raw_comm)
        way: Literal["read", "write"] = "write" if direction == 1 else "read"
        name = self._functions.get(func, "?")
        if offset == 0 and data_len >= total_len:
            return TlsData(ts, pid, tid, uid, comm, fd, version, way, name, conn_id,
                           data[size:end], total_len)
        return TlsChunk(ts, pid, tid, uid, comm, fd, version, way, name, conn_id, total_len,
                        start_ns, offset, data[size:end])

    def _decode_other(self, map_name: str, data: bytes) -> Decoded:
        if len(data) < 4:
            raise DecodeError(f"event of {len(data)} bytes is too short to carry a kind")
        kind = int.from_bytes(data[:4], "little")
        if map_name == "packets":
            return self._decode_packet(kind, data)
        if kind == EVENT_CONN:
            return self._decode_conn(data)
        return self.decode_library(kind, data)

    def _decode_conn(self, data: bytes) -> Conn:
        if len(data) < self._conn.size:
            raise DecodeError(f"conn_event_t has {len(data)} bytes, needs {self._conn.size}")
        (_, pid, ts, sock, tid, uid, fd, family, conn, _, lport, rport, laddr, raddr,
         comm, _) = self._conn.codec.unpack_from(data)
        return Conn(ts, pid, tid, uid, comm_str(comm), CONN_KINDS.get(conn, "close"), fd, sock,
                    family, addr_str(family, laddr), lport, addr_str(family, raddr), rport)

    def _decode_packet(self, kind: int, data: bytes) -> PacketChunk:
        if kind == EVENT_PACKET_CHUNK:
            codec = self._packet_chunk
            if len(data) < codec.size:
                raise DecodeError(f"packet_chunk_event_t has {len(data)} bytes, needs "
                                  f"{codec.size}")
            (_, ifindex, ts, length, offset, data_len, direction,
             _) = codec.codec.unpack_from(data)
            if data_len > PACKET_CHUNK_SIZE or codec.size + data_len > len(data):
                raise DecodeError(f"packet_chunk_event_t claims {data_len} bytes, "
                                  f"{len(data) - codec.size} present")
            return PacketChunk(ts, ifindex, "egress" if direction else "ingress", length,
                               offset, data[codec.size:codec.size + data_len])
        if kind == EVENT_PACKET:
            codec = self._packet
            if len(data) < codec.size:
                raise DecodeError(f"packet_event_t has {len(data)} bytes, needs {codec.size}")
            _, ifindex, ts, length, caplen, direction, _ = codec.codec.unpack_from(data)
            if codec.size + caplen > len(data):
                raise DecodeError(f"packet_event_t claims {caplen} bytes, "
                                  f"{len(data) - codec.size} present")
            return PacketChunk(ts, ifindex, "egress" if direction else "ingress", length, 0,
                               data[codec.size:codec.size + caplen])
        raise DecodeError(f"unknown event kind {kind} on map packets")

    def dispatch(self, decoded: Decoded) -> Iterable[Event]:
        if type(decoded) is TlsData:  # a whole call, from decode(): most events
            fd = decoded.fd
            if fd >= 0:
                # Still being built: no one else has seen it (see decode).
                decoded.conn = self._conns.lookup(decoded.pid, fd, decoded.timestamp_ns)
            if decoded.total_len != len(decoded.data):
                self._short(decoded)
            held = self._joiner.open
            if held and (decoded.pid, decoded.tid) in held:
                # A new call ends the thread's unfinished one, which goes out first.
                ended = self._joiner.end(decoded.pid, decoded.tid)
                return [*(self._call(*call) for call in ended), decoded]
            return (decoded,)
        if isinstance(decoded, TlsChunk):
            return [self._call(*call) for call in self._joiner.feed(decoded)]
        if isinstance(decoded, Conn):
            if decoded.family == 0 and decoded.kind != "close":
                decoded = self._fill_from_proc(decoded)
            self._conns.update(decoded)
            return (decoded,)
        if isinstance(decoded, PacketChunk):
            return [self._packet_event(first, data)
                    for first, data in self._packets.feed(decoded)]
        if isinstance(decoded, Event):
            return (decoded,)
        return self.dispatch_library(decoded)

    def _call(self, first: TlsChunk, data: bytes, ts: int) -> TlsData:
        fd = first.fd
        conn = self._conns.lookup(first.pid, fd, ts) if fd >= 0 else None
        call = TlsData(ts, first.pid, first.tid, first.uid, first.comm, fd, first.version,
                       first.direction, first.func, first.conn_id, data, first.total_len,
                       conn)
        if call.total_len != len(data):
            self._short(call)
        return call

    def _short(self, call: TlsData) -> None:
        self.short_calls += 1
        self.missing_bytes += call.missing

    def summary(self) -> list[str]:
        if not self.short_calls:
            return []
        calls = "call" if self.short_calls == 1 else "calls"
        return [f"{self.name}: {self.short_calls:,} {calls} short by {self.missing_bytes:,} "
                f"bytes ({MISSING_WHY})"]

    @staticmethod
    def _packet_event(first: PacketChunk, data: bytes) -> Packet:
        return Packet(first.timestamp_ns, 0, 0, 0, "", first.ifindex, first.direction,
                      first.length, data)

    def finish(self) -> Iterator[Event]:
        for call in self._joiner.finish():
            yield self._call(*call)
        for first, data in self._packets.finish():
            yield self._packet_event(first, data)

    # -- what the live system tells (tuples from /proc) ---------------------------------
    def observe(self, data: bytes, lookup: Callable[[int, int], Any]) -> list[Observation]:
        """Look up in /proc, once per connection, the 4-tuples the kernel could not give:
        an accept() that did not ask for the peer's address, and connections set up before
        the capture (their first data shows up with an fd no probe saw)."""
        if len(data) < 44:
            return []
        kind = int.from_bytes(data[:4], "little")
        if kind == EVENT_SSL_DATA:
            _, pid, fd = _PEEK_DATA.unpack_from(data)
            key = (pid, fd)
            if fd < 0 or key in self._seen_fds:
                return []
            self._seen_fds.add(key)  # look once, found or not
            found = lookup(pid, fd)
            if found is None:
                return []
            chunk = self.decode("events", data)
            if not isinstance(chunk, (TlsData, TlsChunk)):
                return []  # cannot be: the kind was checked above
            return [("socket", {"for": "data", "ts_ns": chunk.timestamp_ns, "pid": pid,
                                "tid": chunk.tid, "uid": chunk.uid, "comm": chunk.comm,
                                "fd": fd, **_tuple_fields(found)})]
        if kind == EVENT_CONN and len(data) >= self._conn.size:
            _, pid, fd, family, conn = _PEEK_CONN.unpack_from(data)
            key = (pid, fd)
            if conn == CONN_CLOSE:
                self._seen_fds.discard(key)
                return []
            self._seen_fds.add(key)
            found = lookup(pid, fd) if family == 0 and fd >= 0 else None
            facts: list[Observation] = []
            if found is not None:
                facts.append(("socket", {"for": "accept", "pid": pid, "fd": fd,
                                         **_tuple_fields(found)}))
            comm = data[_CONN_COMM]
            if comm not in self._seen_comms and len(self._seen_comms) < COMM_CACHE_MAX:
                self._seen_comms.add(comm)
                facts += self._other_library(data)
            return facts
        return []

    def _other_library(self, conn_event: bytes) -> list[Observation]:
        """Whether the process that connected maps none of this capture's libraries but
        another module's: then its plaintext is not here, and the user is told where."""
        from ecapture import modules as registry  # the registry imports this module

        conn = self._decode_conn(conn_event)
        try:
            mapped = libraries_of_process(conn.pid)
        except AttachError:
            return []  # gone already
        mine = {t.path for t in self.targets}
        names = [os.path.basename(p) for p in mapped]
        if mine.intersection(mapped) or _matches(names, self.library_patterns):
            return []
        for other in registry.MODULES:
            if (issubclass(other, TlsLibraryModule) and other is not type(self)
                    and not issubclass(type(self), other)):
                library = _matches(names, other.library_patterns)
                if library:
                    return [("other_library", {"ts_ns": conn.timestamp_ns, "pid": conn.pid,
                                               "tid": conn.tid, "uid": conn.uid,
                                               "comm": conn.comm, "library": library,
                                               "module": other.name})]
        return []

    def apply(self, what: str, fields: Mapping[str, Any]) -> Iterable[Event]:
        if what == "other_library":
            try:
                yield OtherLibrary(int(fields["ts_ns"]), int(fields["pid"]), int(fields["tid"]),
                                   int(fields["uid"]), str(fields["comm"]),
                                   str(fields["library"]), str(fields["module"]))
            except (KeyError, TypeError, ValueError) as e:
                raise DecodeError(f"other_library observation without valid fields: {e}") \
                    from None
            return
        if what != "socket":
            return
        try:
            pid, fd, family = int(fields["pid"]), int(fields["fd"]), int(fields["family"])
            laddr = addr_str(family, bytes.fromhex(fields["laddr"]))
            raddr = addr_str(family, bytes.fromhex(fields["raddr"]))
            lport, rport = int(fields["lport"]), int(fields["rport"])
        except (KeyError, TypeError, ValueError) as e:
            raise DecodeError(f"socket observation without valid fields: {e}") from None
        if family not in (AF_INET, AF_INET6):
            return
        if fields.get("for") == "accept":
            # The accept event follows: it takes these addresses (see dispatch).
            self._proc[(pid, fd)] = {"family": family, "laddr": laddr, "lport": lport,
                                     "raddr": raddr, "rport": rport}
            return
        conn = Conn(int(fields.get("ts_ns", 0)), pid, int(fields.get("tid", pid)),
                    int(fields.get("uid", 0)), str(fields.get("comm", "")), "proc", fd, 0,
                    family, laddr, lport, raddr, rport)
        self._conns.update(conn)
        yield conn

    def _fill_from_proc(self, conn: Conn) -> Conn:
        found = self._proc.pop((conn.pid, conn.fd), None)
        if found is None:
            return conn
        return Conn(conn.timestamp_ns, conn.pid, conn.tid, conn.uid, conn.comm, conn.kind,
                    conn.fd, conn.sock, found["family"], found["laddr"], found["lport"],
                    found["raddr"], found["rport"])

