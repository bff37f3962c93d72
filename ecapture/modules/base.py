"""The module contract: what a capture module declares, in one place.

A module is plain data plus pure functions: its name and options (which become a CLI
subcommand), the library it attaches to and how to find it, its eBPF programs and probes,
its event maps and their structs, how raw bytes decode into typed events, and how those
events are dispatched. Nothing here imports bcc or needs root: :mod:`ecapture.live` drives
the seed's lifecycle (init -> start -> run -> stop -> close) around a module; replay drives
the same decode and dispatch without ``init``.
"""

from __future__ import annotations

import argparse
import functools
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ecapture.errors import ConfigError, DecodeError
from ecapture.events import Event, Fragment
from ecapture.structs.layout import HeaderCodec, KernelStruct, header_codec, layout


@dataclass(frozen=True)
class Option:
    """One module option; becomes an argparse argument of the module's subcommand."""

    flags: tuple[str, ...]
    dest: str
    help: str
    type: Any = None
    default: Any = None
    action: str | None = None
    metavar: str | None = None

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        kwargs: dict[str, Any] = {"dest": self.dest, "help": self.help, "default": self.default}
        if self.action:
            kwargs["action"] = self.action
        else:
            kwargs["type"] = self.type or str
            if self.metavar:
                kwargs["metavar"] = self.metavar
        parser.add_argument(*self.flags, **kwargs)


@dataclass(frozen=True)
class Probe:
    """One attach point. ``target`` is a symbol (uprobes) or "category:event" (tracepoints);
    ``fn`` is the eBPF function. Optional probes are skipped when the symbol is missing
    (e.g. SSL_read_ex before OpenSSL 1.1.1)."""

    kind: Literal["uprobe", "uretprobe", "tracepoint", "tc"]
    target: str  # for tc: "IFNAME:ingress" or "IFNAME:egress"
    fn: str
    library: str | None = None  # resolved path, for uprobes
    optional: bool = False
    #: a uprobe or uretprobe at this virtual address of ``library`` instead of ``target``'s
    #: entry (a RET inside a function, a function found without a symbol table, a static
    #: function found through a table); ``target`` then only names the place, for messages
    address: int | None = None
    #: a failure to attach it is told, not fatal: a probe on one more copy of a library
    #: (a container's), whose processes may be gone by then
    best_effort: bool = False

    @classmethod
    def around(cls, symbol: str, entry: str, ret: str, library: str | None,
               optional: bool = False) -> tuple[Probe, Probe]:
        """A uprobe at a function's entry and a uretprobe at its return: a library call's
        arguments are known at one, its result at the other."""
        return (cls("uprobe", symbol, entry, library, optional),
                cls("uretprobe", symbol, ret, library, optional))


@dataclass(frozen=True)
class Program:
    """One eBPF program (one bcc compilation): kern/prelude.c followed by ``sources``, in
    order, compiled as one text (bcc rewrites map calls only in the text it compiles, never
    in included headers), with its -D flags and the probes that attach its functions."""

    name: str  # "main"; the TLS family adds "packets" for the pcap model
    sources: tuple[str, ...]  # files under kern/
    cflags: tuple[str, ...]
    probes: tuple[Probe, ...]


@dataclass(frozen=True)
class EventMap:
    """A ring/perf buffer of one of the module's programs and the structs on it.

    ``name`` identifies the map in recordings; ``table`` is the buffer's name in the C
    program. Every struct on a map starts with a little-endian __u32 ``kind``; ``structs``
    maps each kind to its struct. Kinds are numbered per map."""

    name: str
    structs: Mapping[int, KernelStruct]
    buffer: Literal["auto", "perf"] = "auto"  # perf: needs a perf buffer on every kernel
    program: str = "main"
    table: str = "events"

    def fingerprints(self) -> dict[str, str]:
        return {s.name: s.fingerprint for s in self.structs.values()}

    def codecs(self) -> dict[int, HeaderCodec]:
        return {kind: header_codec(s.decl) for kind, s in self.structs.items()}

    @functools.cached_property
    def _sizes(self) -> dict[int, tuple[int, struct.Struct | None, int]]:
        """kind -> (fixed size, codec of the tail's length field, its offset)."""
        out: dict[int, tuple[int, struct.Struct | None, int]] = {}
        for kind, ks in self.structs.items():
            fields = layout(ks.decl)
            tail = fields[-1]
            if tail.size is not None:
                out[kind] = (tail.offset + tail.size, None, 0)
                continue
            length = next((f for f in fields if f.name == f"{tail.name}_len"), None)
            if length is None:
                out[kind] = (tail.offset, None, 0)
            else:
                out[kind] = (tail.offset, struct.Struct("<" + length.kind.lstrip("<>=!")),
                             length.offset)
        return out

    def sample_size(self, data: bytes) -> int:
        """How many of ``data``'s bytes the program sent (perf buffers pad samples): the
        struct's fixed part plus what its tail's length field says; ``len(data)`` when the
        kind is unknown, so that the decoder can complain."""
        if len(data) < 4:
            return len(data)
        entry = self._sizes.get(int.from_bytes(data[:4], "little"))
        if entry is None:
            return len(data)
        fixed, codec, offset = entry
        if codec is None:
            return min(fixed, len(data)) if fixed else len(data)
        if len(data) < offset + codec.size:
            return len(data)
        return min(fixed + int(codec.unpack_from(data, offset)[0]), len(data))


@dataclass(frozen=True)
class Target:
    """A binary or library a module attaches to, as recorded in a recording's metadata."""

    path: str
    version: str | None = None
    build_id: str | None = None
    #: where a library module found it in use: the mount namespace of the processes that
    #: map it (None: not looked at) and the path they know it by (None: ``path``)
    mntns: int | None = None
    seen_as: str | None = None
    processes: int | None = None  # how many processes mapped it when the capture began

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "version": self.version,
                               "build_id": self.build_id}
        if self.mntns is not None:
            out.update({"mntns": self.mntns, "seen_as": self.seen_as or self.path,
                        "processes": self.processes})
        return out


@dataclass
class NewTarget:
    """A file that a process started during the capture maps and no probe is on yet (a
    container's copy of a library): its probes, or why it is not attached."""

    target: Target
    probes: list[Probe]
    refused: str | None = None


@dataclass
class Features:
    """What the running kernel offers, decided by the live layer."""

    ringbuf: bool = True
    probe_read_user: bool = True  # bpf_probe_read_user*() helpers (Linux 5.5+)
    # sock:sock_{send,recv}_length tracepoints (6.4+) and bpf_task_pt_regs (5.15+): socket
    # I/O can be watched without a program on every syscall of the host
    socket_tracepoints: bool = True
    # offsets of kernel struct members, from the kernel's BTF, that programs walk instead
    # of parsing headers: name -> offset, passed as -DKOFF_<name>; empty where unknown
    kernel_offsets: dict[str, int] = field(default_factory=dict)


Decoded = Event | Fragment
#: What the live layer learned from the running system for a module (not from its probes),
#: recorded as a record of its own kind: ("socket", {fields}).
Observation = tuple[str, dict[str, Any]]


class Module:
    """Base class of capture modules. Subclasses set the class attributes and override
    ``init``, ``probes``, ``cflags``, ``decode`` and ``dispatch``."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    help: ClassVar[str]
    source: ClassVar[str]  # the module's program under kern/
    header: ClassVar[str]  # the kern/ header declaring its structs
    options: ClassVar[tuple[Option, ...]] = ()
    maps: ClassVar[tuple[EventMap, ...]] = ()
    models: ClassVar[tuple[str, ...]] = ("text", "json")
    keylog_default: ClassVar[str | None] = None  # -m keylog's file, for modules with keys
    #: why a model of ecapture.outputs.MODELS is not in ``models``, told to whoever asks
    no_model_reason: ClassVar[str] = ""

    def __init__(self, config: Mapping[str, Any]):
        self.config = dict(config)
        self.targets: list[Target] = []
        #: one-line remarks for the user, said once the capture runs (what --pid resolved
        #: to, a part of a library that cannot be hooked): from check() and init()
        self.notes: list[str] = []

    # -- configuration -------------------------------------------------------------
    def check(self) -> None:
        """Validate options; raise ConfigError with a message that says what to fix."""

    def init(self) -> None:
        """Resolve what to attach to (paths, versions). Reads the filesystem, needs no root."""

    def require_keys(self) -> None:
        """Called after init() when the user asked for TLS keys: raise AttachError if this
        module cannot capture them from the target it found."""
        raise ConfigError(f"module {self.name} does not capture TLS keys")

    # -- kernel side ---------------------------------------------------------------
    def probes(self, features: Features) -> list[Probe]:
        raise NotImplementedError

    def cflags(self, features: Features) -> list[str]:
        return []

    def kernel_members(self) -> tuple[tuple[str, str, str], ...]:
        """Kernel struct members the program reads, as (name, struct, member): the live
        layer looks their offsets up in the running kernel's BTF and passes them in
        ``Features.kernel_offsets`` (-DKOFF_<name>); a name is missing where it cannot."""
        return ()

    def programs(self, features: Features) -> list[Program]:
        """The eBPF programs to compile and attach: by default one, ``source``."""
        return [Program("main", (self.source,), tuple(self.cflags(features)),
                        tuple(self.probes(features)))]

    # -- user side (shared by live and replay) -------------------------------------
    def decode(self, map_name: str, data: bytes) -> Decoded:
        """Raw event bytes -> a typed event or fragment. Raises DecodeError only."""
        raise NotImplementedError

    def dispatch(self, decoded: Decoded) -> Iterable[Event]:
        """Feed one decoded record; yield the events to output (possibly none, possibly
        earlier ones completed by this one)."""
        if isinstance(decoded, Event):
            yield decoded

    def observe(self, data: bytes, lookup: Callable[[int, int], Any]) -> list[Observation]:
        """Live only, in the drain path, before ``data`` is recorded: what to learn from the
        running system now, while it still exists, e.g. the 4-tuple of a socket that no
        probe saw being set up (``lookup`` is :func:`ecapture.procnet.lookup`). Must be
        cheap for the records that need nothing."""
        return []

    def apply(self, what: str, fields: Mapping[str, Any]) -> Iterable[Event]:
        """An observation read back from a recording (live and replay alike)."""
        return iter(())

    def finish(self) -> Iterator[Event]:
        """End of input: yield whatever is still held back."""
        return iter(())

    # -- live: processes that start during the capture -------------------------------------
    @property
    def watching(self) -> bool:
        """Whether the live layer should look at what each new process maps (its "process"
        facts with ``exec`` set, see observe) and attach to ``new_targets``."""
        return False

    def new_targets(self, pid: int) -> list[NewTarget] | None:
        """Live only, off the drain thread: the files process ``pid`` maps that need
        probes no file has yet, each looked at once; None while it maps none of the
        module's files at all (its loader may not have got to them). Reads /proc, files."""
        return None

    def namespace_targets(self, pid: int) -> list[NewTarget]:
        """Live only, off the drain thread, once per exec: where ``pid`` runs in a mount
        namespace not seen before (a new container), the module's files that namespace
        holds, with their probes, to attach before any process there maps them. Reads
        /proc, files."""
        return []

    def summary(self) -> list[str]:
        """Lines for the summary at exit, about what the module decoded: what arrived
        short, for one. Lost events are counted elsewhere, per map."""
        return []

    # -- recording ---------------------------------------------------------------------
    def recorded_options(self) -> dict[str, Any]:
        """Options worth keeping in a recording's metadata (filters, paths)."""
        return {o.dest: self.config.get(o.dest) for o in self.options}


def non_negative_int(text: str) -> int:
    """Option type for ids; argparse turns the exception into a usage error."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def pid_option(help: str = "capture only this process id") -> Option:
    """``-p/--pid``: most modules filter with kern/prelude.c's ``traced()``."""
    return Option(("-p", "--pid"), "pid", help, type=non_negative_int, metavar="PID")


def uid_option(help: str = "capture only this user id") -> Option:
    """``-u/--uid``, filtered by kern/prelude.c's ``traced()``."""
    return Option(("-u", "--uid"), "uid", help, type=non_negative_int, metavar="UID")


def process_filter_cflags(config: Mapping[str, Any]) -> list[str]:
    """``--pid`` and ``--uid`` as the -D flags kern/prelude.c's ``traced()`` reads."""
    flags: list[str] = []
    if config.get("pid") is not None:
        flags.append(f"-DTARGET_PID={config['pid']}")
    if config.get("uid") is not None:
        flags.append(f"-DTARGET_UID={config['uid']}")
    return flags


def check_path_and_pid(config: dict[str, Any], path_option: str | None) -> list[str]:
    """The checks of a module's target options, before anything is loaded: its path option
    (``--<path_option>``) names a file, and ``--pid`` a running process. A thread's id is
    replaced by its process's, which is what the kernel filters on: the notes say so."""
    path = config.get(path_option) if path_option else None
    if path and not os.path.isfile(path):
        raise ConfigError(f"--{path_option} {path}: no such file")
    pid = config.get("pid")
    if pid is None:
        return []
    tgid = process_of(pid)
    if tgid is None:
        raise ConfigError(f"--pid {pid}: no such process")
    if tgid == pid:
        return []
    config["pid"] = tgid
    return [f"--pid {pid} is a thread of process {tgid} ({comm_of(tgid)}): capturing that "
            f"process"]


def process_of(pid: int) -> int | None:
    """The process (thread group) that task ``pid`` belongs to; None if there is none.
    /proc shows a thread's directory too, without listing it."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def comm_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def unpack_event(codec: HeaderCodec, data: bytes, name: str,
                 tail_max: int | None = None) -> tuple[dict[str, Any], bytes]:
    """One event's fixed fields by name and its variable tail: the ``<tail>_len`` bytes
    after the fixed part, at most ``tail_max``. DecodeError, naming the struct, for an event
    too short for its fixed part or whose length field claims more than is there."""
    size = codec.size
    if len(data) < size:
        raise DecodeError(f"{name} has {len(data)} bytes, needs {size}")
    fields = dict(zip(codec.names, codec.codec.unpack_from(data), strict=True))
    if codec.tail is None:
        return fields, b""
    n = fields[f"{codec.tail}_len"]
    if (tail_max is not None and n > tail_max) or size + n > len(data):
        raise DecodeError(f"{name} claims {n} {codec.tail} bytes, {len(data) - size} present")
    return fields, data[size:size + n]


def split_kind(data: bytes) -> int:
    """The leading __u32 kind of an event."""
    if len(data) < 4:
        raise DecodeError(f"event of {len(data)} bytes is too short to carry a kind")
    return int.from_bytes(data[:4], "little")
