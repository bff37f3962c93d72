"""The module contract: what a capture module declares, in one place.

A module is plain data plus pure functions: its name and options (which become a CLI
subcommand), the library it attaches to and how to find it, its probes, its event maps and
their structs, how raw bytes decode into typed events, and how those events are dispatched.
Nothing here imports bcc or needs root: :mod:`ecapture.live` drives the seed's lifecycle
(init -> start -> run -> stop -> close) around a module; replay drives the same decode and
dispatch without ``init``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import construct as cs

from ecapture.errors import ConfigError, DecodeError
from ecapture.structs import fingerprint
from ecapture.structs.layout import HeaderCodec, header_codec


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


@dataclass(frozen=True)
class EventMap:
    """A ring/perf buffer of the module's eBPF program and the structs that travel on it.

    Every struct on a map starts with a little-endian __u32 ``kind``; ``structs`` maps that
    kind to (C struct name, construct declaration)."""

    name: str
    structs: Mapping[int, tuple[str, cs.Struct]]
    buffer: Literal["auto", "perf"] = "auto"  # perf: needs a perf buffer on every kernel

    def fingerprints(self) -> dict[str, str]:
        return {name: fingerprint(name, decl) for name, decl in self.structs.values()}

    def codecs(self) -> dict[int, HeaderCodec]:
        return {kind: header_codec(decl) for kind, (_, decl) in self.structs.items()}


@dataclass(frozen=True)
class Target:
    """A binary or library a module attaches to, as recorded in a recording's metadata."""

    path: str
    version: str | None = None
    build_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "version": self.version, "build_id": self.build_id}


@dataclass
class Features:
    """What the running kernel offers, decided by the live layer."""

    ringbuf: bool = True
    probe_read_user: bool = True  # bpf_probe_read_user*() helpers (Linux 5.5+)


class Module:
    """Base class of capture modules. Subclasses set the class attributes and override
    ``init``, ``probes``, ``cflags``, ``decode`` and ``dispatch``."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    help: ClassVar[str]
    source: ClassVar[str]  # file name under kern/
    options: ClassVar[tuple[Option, ...]] = ()
    maps: ClassVar[tuple[EventMap, ...]] = ()

    def __init__(self, config: Mapping[str, Any]):
        self.config = dict(config)
        self.targets: list[Target] = []

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
    def probes(self) -> list[Probe]:
        raise NotImplementedError

    def cflags(self, features: Features) -> list[str]:
        return []

    # -- user side (shared by live and replay) -------------------------------------
    def decode(self, map_name: str, data: bytes) -> Any:
        """Raw event bytes -> typed event. Raises DecodeError only."""
        raise NotImplementedError

    def dispatch(self, event: Any) -> Iterable[Any]:
        """Feed one decoded event; yield the events to output (possibly none, possibly
        earlier ones completed by this one)."""
        yield event

    def backfill(self, data: bytes, lookup: Callable[[int, int], Any]) -> list[bytes]:
        """Live only, before recording: the raw events to record in place of this one,
        completed with what ``lookup`` learns from the running system (the live layer passes
        :func:`ecapture.procnet.lookup`). Replay then needs no live system."""
        return [data]

    def finish(self) -> Iterator[Any]:
        """End of input: yield whatever is still held back."""
        return iter(())

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


def split_kind(data: bytes) -> int:
    """The leading __u32 kind of an event."""
    if len(data) < 4:
        raise DecodeError(f"event of {len(data)} bytes is too short to carry a kind")
    return int.from_bytes(data[:4], "little")
