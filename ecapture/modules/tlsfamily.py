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
from dataclasses import dataclass, replace
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
    LibraryAttached,
    OtherLibrary,
    Packet,
    Place,
    TlsData,
    addr_str,
    comm_str,
)
from ecapture.modules.base import (
    Decoded,
    EventMap,
    Features,
    Module,
    NewTarget,
    Observation,
    Option,
    Probe,
    Program,
    Target,
    check_path_and_pid,
    non_negative_int,
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
from ecapture.structs.tls import (
    CONN,
    EVENT_CONN,
    EVENT_EXEC,
    EVENT_SSL_DATA,
    EXEC,
    SSL_DATA,
    TLS_CHUNK_SIZE,
)
from ecapture.targets import (
    MappedFile,
    cgroup_of,
    descendants,
    elf_symbols,
    file_key,
    files_in_use,
    find_library,
    libraries_of_process,
    locate_library,
    mapped_files,
    mount_namespace,
    pin,
    quick_build_id,
    real_path,
    running_pids,
)

#: a process started a program: what it maps may be a library file no probe is on yet
EXEC_TRACEPOINT = "sched:sched_process_exec"
CONN_KINDS: dict[int, ConnKind] = {0: "connect", 1: "accept", 2: "close", 3: "proc"}
CONN_CLOSE = 2
MAX_CHUNKS = 256  # per call: 4 MiB of plaintext with 16 KiB chunks
MAX_PACKET_CHUNKS = 32  # per packet: 512 KiB, more than any GSO packet

#: How many distinct library files (copies in containers) one capture attaches to, unless
#: --max-libraries says otherwise: each costs a dozen uprobes and, the first time a build
#: is seen, a read of its symbols.
MAX_LIBRARY_FILES = 64
#: a task's parent and its tgid, for --pid's descendants (KOFF_TASK_REAL_PARENT/_TGID)
PARENT_MEMBERS = (("TASK_REAL_PARENT", "task_struct", "real_parent"),
                  ("TASK_TGID", "task_struct", "tgid"))

FAMILY_OPTIONS = (
    pid_option("capture only this process id and the processes it starts (a container's "
               "init: the whole container)"),
    uid_option(),
    Option(("--max-libraries",), "max_libraries", "attach to at most N distinct library "
           f"files, copies in containers included (default {MAX_LIBRARY_FILES})",
           type=non_negative_int, metavar="N"),
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
PLACES_MAX = 65536  # processes whose place observe() remembers having looked up
LATE_SHOWN = 10  # late attaches named in the summary
_CONN_COMM = slice(76, 92)  # conn_event_t.comm (kern/tls.h), checked by the unit tests
_PEEK_EXEC = struct.Struct("<IQI")  # exec_event_t's pid, timestamp_ns and uid, at 4
_EXEC_COMM = slice(24, 40)
EXEC_SIZE = 40


def _matches(names: Iterable[str], patterns: Iterable[str]) -> str | None:
    """The first of ``names`` that one of ``patterns`` matches whole."""
    regexes = [re.compile(p) for p in patterns]
    return next((n for n in names if any(rx.fullmatch(n) for rx in regexes)), None)


@dataclass
class LibraryCopy:
    """One library file the capture attaches to (the system's, or a container's copy of
    it) and its probes, which name it by ``target.path``: a path that reaches that very
    file, through ``/proc/PID/root`` for a file in another mount namespace."""

    key: tuple[int, int] | None  # device and inode
    target: Target
    probes: list[Probe]


class _Exec(Fragment):
    """An exec event, decoded: nothing to show (the fact recorded before it says where the
    process runs)."""

    __slots__ = ()


class Refused(Exception):
    """A library file that is not attached, and why (one line)."""


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


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
            EventMap("events", {EVENT_SSL_DATA: SSL_DATA, EVENT_CONN: CONN, EVENT_EXEC: EXEC,
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
        # The library files attached (init, then the live layer's new_copies()), by device
        # and inode, and those refused, with why: each file is looked at once.
        self.copies: list[LibraryCopy] = []
        self._known: dict[tuple[int, int], LibraryCopy | str] = {}
        self._by_build_id: dict[str, LibraryCopy] = {}
        self._chosen: str | None = None  # the file inspect() takes when no other is found
        self.refused_files = 0
        # observe(), live only: processes whose place (mount namespace, cgroup) was looked
        # up; apply(): what those lookups found, by pid, and the late attaches (summary)
        self._seen_pids: set[int] = set()
        self._my_mntns = mount_namespace(os.getpid())
        # (mount namespace, its root's device and inode) -> where its library is inside,
        # "" for none (_namespace_file)
        self._namespace_paths: dict[tuple[int, int, int], str] = {}
        self._places: dict[int, Place] = {}
        self._place_objects: dict[Place, Place] = {}
        self._late: list[LibraryAttached] = []

    # -- configuration -------------------------------------------------------------
    def check(self) -> None:
        if self.config.get("capture_packets"):
            ifname = self.config.get("ifname")
            if not ifname:
                raise ConfigError("-m pcap needs -i IFACE, the interface to capture on")
            if not os.path.exists(f"/sys/class/net/{ifname}"):
                raise ConfigError(f"-i {ifname}: no such network interface")
        self.notes += check_path_and_pid(self.config, self.library_option)

    def inspect(self) -> None:
        """The library module's part of ``init``: find the file (``resolve_library``),
        learn its version and what its probes need, and set ``targets``, that file first.
        Reads files, needs no root."""
        raise NotImplementedError

    @property
    def watching(self) -> bool:
        """Whether copies of the library are looked for in every process, and in each new
        one: unless an option names the file, for a module whose files have known names."""
        option = self.library_option
        return bool(self.library_patterns) and not (option and self.config.get(option))

    def init(self) -> None:
        """The file the library option names; else every distinct file (device and inode)
        matching ``library_patterns`` that the processes map (--pid's process and those
        below it, else all of them), each a container's copy as often as not, plus the
        system's. ``inspect`` reads the first; each other file is a copy of one already
        read (the same build-id: the same probes) or is inspected on its own, and attached
        if the one program compiled for all of them fits it (the same -D flags)."""
        pid = self.config.get("pid")
        found: list[MappedFile] = []
        if self.watching:
            found = files_in_use(self.library_patterns,
                                 descendants(pid) if pid is not None else None)
        try:
            self.inspect()
        except AttachError:
            if not found:
                raise
            self._chosen = found[0].open_path
            self.inspect()
        first, others = self.targets[0], self.targets[1:]
        key = file_key(first.path)
        in_use = next((m for m in found if m.key == key), None)
        if in_use is not None:
            first = replace(first, mntns=in_use.mntns, seen_as=in_use.path,
                            processes=len(in_use.pids))
        elif self.watching:
            # Mapped by none yet: our system's file, or (--pid of a container's init) the
            # one its children will map, named as they will see it.
            inside = re.match(r"/proc/\d+/root(/.*)", first.path)
            first = replace(first, mntns=mount_namespace(pid or os.getpid()), processes=0,
                            seen_as=inside[1] if inside else None)
        self.targets = [first, *others]
        self._add(LibraryCopy(key, first, self.library_probes()))
        if self.watching:
            # The containers whose processes map no library yet: what they will map.
            found += self._namespace_files(descendants(pid) if pid is not None else None)
        for mapped in found:
            if not self._is_known(mapped):
                try:
                    self._add(self._copy(mapped))
                except Refused as e:
                    self._refuse(mapped, str(e))
        if self.watching:
            self.notes += [self.attached_line(c) for c in self.copies]

    def _namespace_files(self, pids: Iterable[int] | None) -> list[MappedFile]:
        """:meth:`_namespace_file` of each mount namespace the processes ``pids`` (default:
        all) run in, one process asked per namespace; distinct files only."""
        files: dict[tuple[int, int], MappedFile] = {}
        namespaces: set[int | None] = set()
        for pid in sorted(running_pids() if pids is None else pids):
            mntns = mount_namespace(pid)
            if mntns in namespaces:
                continue
            namespaces.add(mntns)
            mapped = self._namespace_file(pid)
            if mapped is not None:
                files.setdefault(mapped.key, mapped)
        return list(files.values())

    def attached_line(self, copy: LibraryCopy) -> str:
        t = copy.target
        where = "" if t.mntns is None or t.mntns == self._my_mntns else f"mntns {t.mntns}, "
        n = t.processes or 0
        users = f"{n} process{'es' if n != 1 else ''}" if n else "no process yet"
        return f"attached {t.seen_as or t.path} ({t.version or 'version unknown'}; {where}" \
               f"{users})"

    def _add(self, copy: LibraryCopy) -> None:
        if copy.key is not None:
            self._known[copy.key] = copy
            # A file on overlayfs: before Linux 6.x a maps line names the layer's file,
            # stat() the overlay's, so one file has two keys. Known by both, it is not
            # attached twice (the probes would fire twice) whichever way it is met next.
            alias = file_key(copy.target.path)
            if alias is not None:
                self._known.setdefault(alias, copy)
        self.copies.append(copy)
        if copy.target not in self.targets:
            self.targets.append(copy.target)
        if copy.target.build_id:
            self._by_build_id.setdefault(copy.target.build_id, copy)

    def _refuse(self, mapped: MappedFile, why: str) -> None:
        self._known[mapped.key] = why
        self.refused_files += 1
        self.notes.append(f"not attached: {mapped.path} (mntns {mapped.mntns}), mapped by "
                          f"{len(mapped.pids)} process(es): {why}")

    def _copy(self, mapped: MappedFile) -> LibraryCopy:
        """The probes for another library file, or Refused: those of a file with the same
        build-id where there is one, else what inspecting the file on its own gives."""
        limit = self.config.get("max_libraries")
        limit = MAX_LIBRARY_FILES if limit is None else limit
        if len(self.copies) >= limit:
            raise Refused(f"the limit of {limit} library files is reached (--max-libraries)")
        path = mapped.open_path
        if path.startswith("/proc/"):
            # The process that maps it may exit (a curl) before its probes are on.
            path = pin(path, mapped.key)
        build = quick_build_id(path)
        twin = self._by_build_id.get(build) if build else None
        if twin is not None and all(p.library == twin.target.path for p in twin.probes):
            # The same build: the same symbols at the same offsets, so the same probes,
            # without reading the file's symbol tables again.
            symbols = elf_symbols(twin.target.path)
            probes = [replace(p, library=path, optional=False, best_effort=True)
                      for p in twin.probes
                      if not p.optional or p.address is not None or p.target in symbols]
            version = twin.target.version
        else:
            option = self.library_option
            assert option is not None  # watching needs one
            other = type(self)({**self.config, option: path, "pid": None})
            try:
                other.inspect()
            except (AttachError, ConfigError) as e:
                raise Refused(str(e)) from None
            if other.library_cflags() != self.library_cflags():
                raise Refused(f"it is {other.targets[0].version or 'of an unknown version'}, "
                              "whose struct offsets differ from those of "
                              f"{self.targets[0].version or 'the first file'}; one capture "
                              f"compiles one set: capture it with --{option.replace('_', '-')}"
                              f" {path}")
            probes = [replace(p, best_effort=True) for p in other.library_probes()]
            version = other.targets[0].version
        target = Target(path, version, build, mapped.mntns, mapped.path, len(mapped.pids))
        return LibraryCopy(mapped.key, target, probes)

    def new_targets(self, pid: int) -> list[NewTarget] | None:
        """The library files process ``pid`` maps that no probe is on yet, with their
        probes, or why not. Each file is looked at once. None: it maps none (yet)."""
        if not self.watching:
            return None
        mapped_now = mapped_files(pid, self.library_patterns)
        if not mapped_now:
            return None
        out: list[NewTarget] = []
        for mapped in mapped_now:
            if not self._is_known(mapped):
                out += self._new_target(mapped)
        return out

    def _is_known(self, mapped: MappedFile) -> bool:
        """Whether the file was attached or refused: by its key, or by the key stat()
        gives it, which is another on overlayfs (see _add); then known by both."""
        if mapped.key in self._known:
            return True
        alias = file_key(mapped.open_path)
        if alias is None or alias not in self._known:
            return False
        self._known[mapped.key] = self._known[alias]
        return True

    def _new_target(self, mapped: MappedFile) -> list[NewTarget]:
        try:
            copy = self._copy(mapped)
        except (Refused, OSError) as e:
            why = str(e) if isinstance(e, Refused) else \
                f"it could not be read: {e.strerror or e}"
            if isinstance(e, Refused):
                self._refuse(mapped, why)  # for good; a file not read is tried again
            return [NewTarget(Target(mapped.open_path, None, None, mapped.mntns,
                                     mapped.path, len(mapped.pids)), [], why)]
        self._add(copy)
        return [NewTarget(copy.target, copy.probes)]

    def namespace_targets(self, pid: int) -> list[NewTarget]:
        """The library file at the system's path in the mount namespace of ``pid`` (a
        container's), when a process starts there and the file is new. Attached at once, it
        is on before the program's loader has mapped it, which a short-lived client (a curl
        run once) needs: waiting for the mapping, then for the kernel to register the
        probes (its first registration waits for an RCU grace period), outlasts the few ms
        it takes to send its request. A new container's first processes get it on."""
        mapped = self._namespace_file(pid) if self.watching else None
        if mapped is None or self._is_known(mapped):
            return []
        return self._new_target(mapped)

    def _namespace_file(self, pid: int) -> MappedFile | None:
        """The module's library in the mount namespace of ``pid``, if that is not ours:
        where the linker cache's paths (ours) lead under its root, learned once per
        namespace, then one stat per look (a mount may put another file there).

        A namespace's inode number is reused as soon as it is gone, so what was learned is
        keyed by its root directory too (a new container's root is another mount), and
        "nothing here" is learned only from a process that was still alive after the
        search: one on its way out has no root to look in, which says nothing."""
        mntns = mount_namespace(pid)
        if mntns is None or mntns == self._my_mntns:
            return None
        root = f"/proc/{pid}/root"
        try:
            top = os.stat(root)
        except OSError:
            return None  # the process is gone
        key = (mntns, top.st_dev, top.st_ino)
        inside = self._namespace_paths.get(key)
        if inside is None:
            found = find_library(self.library_patterns, root=root)
            inside = found[len(root):] if found else ""
            if not found and not os.path.exists(root):
                return None  # gone while looked in: ask the namespace's next process
            if len(self._namespace_paths) >= PLACES_MAX:
                self._namespace_paths.clear()
            self._namespace_paths[key] = inside
        if not inside:
            return None
        try:
            st = os.stat(root + inside)
        except OSError:
            return None  # the process is gone
        return MappedFile(st.st_dev, st.st_ino, inside, root + inside, mntns, set())

    def resolve_library(self, patterns: Iterable[str], required: Iterable[str], what: str,
                        hint: str) -> tuple[str, frozenset[str]]:
        """The file to attach to (a real path: uprobes attach to inodes) and the functions
        it defines: the library option's, else the one --pid's process maps (or its own
        executable), else the system's. AttachError in one line if it lacks one of
        ``required``."""
        option = self.library_option
        path = (self.config.get(option) if option else None) or self._chosen or \
            locate_library(patterns, required, what, self.config.get("pid"), hint)
        path = real_path(path)
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
        if self.watching:
            tracepoints = (*tracepoints, EXEC_TRACEPOINT)
        library = [p for c in self.copies for p in c.probes] or self.library_probes()
        return library + [Probe("tracepoint", tp, "tracepoint__" + tp.replace(":", "__"))
                          for tp in tracepoints]

    def kernel_members(self) -> tuple[tuple[str, str, str], ...]:
        # --pid follows the processes below it (a container's) by their parents.
        return PARENT_MEMBERS if self.config.get("pid") is not None else ()

    def cflags(self, features: Features) -> list[str]:
        flags = [f"-DTLS_CHUNK_SIZE={TLS_CHUNK_SIZE}", f"-DMAX_CHUNKS={MAX_CHUNKS}",
                 f"-DSOCKET_HOOKS={int(features.socket_tracepoints)}",
                 f"-DWATCH_EXEC={int(self.watching)}",
                 *process_filter_cflags(self.config)]
        if self.config.get("pid") is not None:
            if all(name in features.kernel_offsets for name, _, _ in PARENT_MEMBERS):
                flags.append("-DFOLLOW_CHILDREN=1")
            elif self._follow_note not in self.notes:
                self.notes.append(self._follow_note)
        return flags + self.library_cflags()

    _follow_note = ("--pid: the kernel's BTF (/sys/kernel/btf/vmlinux) does not say where a "
                    "task's parent is, so the processes it starts are not captured")

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
        if kind == EVENT_EXEC:
            if len(data) < EXEC_SIZE:
                raise DecodeError(f"exec_event_t has {len(data)} bytes, needs {EXEC_SIZE}")
            return _Exec()  # what it tells is in the "process" fact observe() recorded
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
            # Still being built: no one else has seen it (see decode).
            if self._places:
                decoded.place = self._places.get(decoded.pid)
            if fd >= 0:
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
            if self._places:
                decoded.place = self._places.get(decoded.pid)
            self._conns.update(decoded)
            return (decoded,)
        if isinstance(decoded, _Exec):
            return ()
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
                       conn, self._places.get(first.pid))
        if call.total_len != len(data):
            self._short(call)
        return call

    def _short(self, call: TlsData) -> None:
        self.short_calls += 1
        self.missing_bytes += call.missing

    def summary(self) -> list[str]:
        lines = [f"{self.name}: {late.text_line()}" for late in self._late[:LATE_SHOWN]]
        if len(self._late) > LATE_SHOWN:
            lines.append(f"{self.name}: {len(self._late) - LATE_SHOWN} more library files "
                         "attached or refused during the capture (the recording lists each)")
        if self.short_calls:
            calls = "call" if self.short_calls == 1 else "calls"
            lines.append(f"{self.name}: {self.short_calls:,} {calls} short by "
                         f"{self.missing_bytes:,} bytes ({MISSING_WHY})")
        return lines

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
        """Where each process runs (its mount namespace and cgroup: which container), read
        in /proc once per process, when its first event or its exec is drained: a
        "process" fact, with ``exec`` set for an exec (the live layer then looks for
        library files the new program maps). And the 4-tuples the kernel could not give,
        once per connection (:meth:`_observe_socket`)."""
        if len(data) < 8:
            return []
        kind = int.from_bytes(data[:4], "little")
        if kind == EVENT_EXEC and len(data) >= EXEC_SIZE:
            pid, ts, uid = _PEEK_EXEC.unpack_from(data, 4)
            return [self._place_fact(pid, {"exec": True, "ts_ns": ts, "uid": uid,
                                           "comm": comm_str(data[_EXEC_COMM])})]
        pid = int.from_bytes(data[4:8], "little")
        if pid in self._seen_pids or kind not in (EVENT_SSL_DATA, EVENT_CONN):
            return self._observe_socket(kind, data, lookup)
        return [self._place_fact(pid, {}), *self._observe_socket(kind, data, lookup)]

    def _place_fact(self, pid: int, extra: dict[str, Any]) -> Observation:
        if len(self._seen_pids) >= PLACES_MAX:
            self._seen_pids.clear()
        self._seen_pids.add(pid)
        mntns = mount_namespace(pid)
        return ("process", {"pid": pid, "mntns": mntns, "cgroup": cgroup_of(pid),
                            "host": mntns is not None and mntns == self._my_mntns, **extra})

    def _observe_socket(self, kind: int, data: bytes, lookup: Callable[[int, int], Any]
                        ) -> list[Observation]:
        """Look up in /proc, once per connection, the 4-tuples the kernel could not give:
        an accept() that did not ask for the peer's address, and connections set up before
        the capture (their first data shows up with an fd no probe saw)."""
        if len(data) < 44:
            return []
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
        if what == "process":
            self._apply_place(fields)
            return
        if what == "attached":
            try:
                late = LibraryAttached(
                    int(fields["ts_ns"]), int(fields["pid"]), int(fields["pid"]), 0,
                    str(fields["comm"]), str(fields["path"]), _int_or_none(fields["mntns"]),
                    fields.get("version"), fields.get("build_id"), float(fields["after_ms"]),
                    fields.get("refused"), int(fields.get("skipped") or 0))
            except (KeyError, TypeError, ValueError) as e:
                raise DecodeError(f"attached observation without valid fields: {e}") from None
            self._late.append(late)
            yield late
            return
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
                    family, laddr, lport, raddr, rport, self._places.get(pid))
        self._conns.update(conn)
        yield conn

    def _apply_place(self, fields: Mapping[str, Any]) -> None:
        try:
            pid = int(fields["pid"])
            cgroup = fields.get("cgroup")
            place = Place(_int_or_none(fields.get("mntns")),
                          None if cgroup is None else str(cgroup), bool(fields.get("host")))
        except (KeyError, TypeError, ValueError) as e:
            raise DecodeError(f"process observation without valid fields: {e}") from None
        if len(self._places) >= PLACES_MAX:
            self._places.clear()
        # One object per place: the text and json models key what they keep by it.
        self._places[pid] = self._place_objects.setdefault(place, place)

    def _fill_from_proc(self, conn: Conn) -> Conn:
        found = self._proc.pop((conn.pid, conn.fd), None)
        if found is None:
            return conn
        return Conn(conn.timestamp_ns, conn.pid, conn.tid, conn.uid, conn.comm, conn.kind,
                    conn.fd, conn.sock, found["family"], found["laddr"], found["lport"],
                    found["raddr"], found["rport"], conn.place)

