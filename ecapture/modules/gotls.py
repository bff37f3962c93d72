"""The ``gotls`` module (alias ``tlsgo``): Go's crypto/tls, linked into the Go program.

A TLS library module (:mod:`ecapture.modules.tlsfamily` does the rest). The "library" is
the program's own executable: what it is (:mod:`ecapture.gobinary` reads its Go release,
finds crypto/tls's functions through the symbol table or, when stripped, through pclntab,
and the RET instructions in them), and which probes kern/gotls.c puts there: a uprobe at
the entry and one at every RET of (*Conn).Read and (*Conn).Write, never a uretprobe (Go
moves goroutine stacks, which a uretprobe's changed return address would crash), and one
at (*Config).writeKeyLog, which crypto/tls calls with each secret whether or not the
program set a KeyLogWriter.

Only Go's register ABI is read (Go >= 1.17 on amd64, >= 1.18 on arm64); an older program,
one without crypto/tls, and a release whose layout is not in :mod:`gotls_offsets` are
refused in one line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ecapture.errors import AttachError, ConfigError, DecodeError
from ecapture.events import Event, Fragment, KeyLogEntry, comm_str
from ecapture.gobinary import GoBinary, GoBinaryError, GoFunction, register_abi
from ecapture.modules.base import Decoded, Observation, Option, Probe, Target
from ecapture.modules.gotls_offsets import FIRST, LAST, GoOffsets, go_offsets
from ecapture.modules.tlsfamily import FAMILY_OPTIONS, TlsLibraryModule
from ecapture.structs.gotls import (
    EVENT_GOTLS_KEYLOG,
    GO_KEYLOG,
    LABEL_MAX,
    RANDOM_MAX,
    SECRET_MAX,
    UNREAD_LABEL,
    UNREAD_RANDOM,
    UNREAD_SECRET,
)
from ecapture.structs.layout import header_codec
from ecapture.targets import build_id, process_executable, real_path

READ = "crypto/tls.(*Conn).Read"
WRITE = "crypto/tls.(*Conn).Write"
WRITE_KEY_LOG = "crypto/tls.(*Config).writeKeyLog"
# The func numbers of kern/gotls.c's enum gotls_func.
FUNCS = {0: READ, 1: WRITE}


# A key-log label: what crypto/tls passes (CLIENT_RANDOM, SERVER_TRAFFIC_SECRET_0, ...).
LABEL_RE = re.compile(r"[A-Z][A-Z0-9_]*")


@dataclass(frozen=True, slots=True)
class GoKeyLog(Fragment):
    """One (*Config).writeKeyLog call: a key-log line as crypto/tls formats it."""

    timestamp_ns: int
    pid: int
    tid: int
    uid: int
    comm: str
    label: str  # "" when the kernel could not read it (label_ptr says where it is)
    label_ptr: int
    label_len: int
    client_random: bytes
    secret: bytes
    complete: bool  # the random and secret fit their arrays and were read

    def entries(self, label: str | None = None) -> list[KeyLogEntry]:
        label = label or self.label
        if not self.complete or not LABEL_RE.fullmatch(label):
            return []  # a cut or unread secret would decrypt nothing: never written
        return [KeyLogEntry(self.timestamp_ns, self.pid, self.tid, self.uid, self.comm,
                            label, self.client_random, self.secret)]


class GoTLSModule(TlsLibraryModule):
    name = "gotls"
    aliases = ("tlsgo",)
    help = ("capture Go crypto/tls plaintext ((*Conn).Read/Write) with 4-tuples, and its "
            "TLS 1.2/1.3 secrets, from a Go program, stripped or not")
    source = "gotls.c"
    library_option = "elfpath"
    options = (
        Option(("-e", "--elfpath"), "elfpath", "the Go program's executable (default: the "
               "executable of --pid's process)", metavar="PATH"),
        *FAMILY_OPTIONS,
    )
    keylog_default = "ecapture_gotls_key.log"
    library_structs = {EVENT_GOTLS_KEYLOG: GO_KEYLOG}
    functions = FUNCS

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        self.binary: GoBinary | None = None
        self.offsets: GoOffsets | None = None
        self.read: GoFunction | None = None
        self.write: GoFunction | None = None
        self.write_key_log: GoFunction | None = None
        self._keylog = header_codec(GO_KEYLOG.decl)
        # (pid, address) -> a label read from the process (observe, live) or from the
        # recording's facts (apply): the constants crypto/tls passes, a handful per program
        self._labels: dict[tuple[int, int], str] = {}

    def inspect(self) -> None:
        path = self._executable()
        # With --pid alone the "library" is the process's executable: say so in the words
        # every TLS module uses for a process without its library.
        pid = self.config.get("pid") if not self.config.get("elfpath") else None
        whose = f"process {pid} maps no Go crypto/tls: " if pid is not None else ""
        try:
            binary = GoBinary.open(path)
        except GoBinaryError as e:
            raise GoBinaryError(f"{whose}{e}") from None
        go = f"{path} was built by {binary.version}"
        if not register_abi(binary):
            raise AttachError(f"{go} for {binary.arch}, whose calls pass arguments on the "
                              "stack: ecapture gotls reads Go's register ABI (Go 1.17 and "
                              "later on amd64, 1.18 and later on arm64)")
        self.offsets = go_offsets(binary.minor)
        if self.offsets is None:
            raise AttachError(f"{go}, whose crypto/tls layout ecapture does not know (it "
                              f"knows Go {FIRST[0]}.{FIRST[1]} to {LAST[0]}.{LAST[1]})")
        self.read = binary.function(READ)
        self.write = binary.function(WRITE)
        if self.read is None or self.write is None:
            raise AttachError(f"{whose}{path} ({binary.version}) does not use crypto/tls: it "
                              f"has no {READ if self.read is None else WRITE}")
        self.write_key_log = binary.function(WRITE_KEY_LOG)
        self.binary = binary
        self.targets = [Target(path, f"Go {binary.version.removeprefix('go')}",
                               build_id(path))]

    def _executable(self) -> str:
        path = self.config.get("elfpath")
        pid = self.config.get("pid")
        if not path and pid is None:
            raise ConfigError("ecapture gotls needs the Go program: -e/--elfpath BINARY, or "
                              "--pid PID of a running one")
        if not path:
            try:
                seen = os.readlink(f"/proc/{pid}/exe")
            except OSError as e:
                raise ConfigError(f"--pid {pid}: cannot read its executable "
                                  f"({e.strerror})") from None
            # A deleted or replaced file is not the one running, and a uprobe on whatever
            # has its name now would never fire.
            if seen.endswith(" (deleted)"):
                raise AttachError(f"--pid {pid}: its executable {seen} was deleted or "
                                  "replaced since it started; restart it or pass -e")
            return process_executable(int(str(pid)))  # via /proc/PID/root in a container
        return real_path(path)

    def require_keys(self) -> None:
        if self.write_key_log is None:
            assert self.binary is not None
            raise AttachError(f"{self.binary.path} has no {WRITE_KEY_LOG} (inlined or "
                              "removed by its linker), so its TLS secrets cannot be taken; "
                              "plaintext capture still works")

    def library_probes(self) -> list[Probe]:
        assert self.binary is not None and self.read and self.write
        path = self.binary.path
        probes = []
        for fn, entry in ((self.read, "uprobe_go_read"), (self.write, "uprobe_go_write")):
            probes.append(Probe("uprobe", fn.name, entry, path, address=fn.address))
            probes += [Probe("uprobe", f"{fn.name}+0x{ret - fn.address:x}", "uprobe_go_ret",
                             path, address=ret) for ret in fn.rets]
        if self.write_key_log is not None:
            # Keys travel with every capture, so a recording made for plaintext can give a
            # key log or pcap later.
            probes.append(Probe("uprobe", WRITE_KEY_LOG, "uprobe_go_write_key_log", path,
                                address=self.write_key_log.address))
        return probes

    def library_cflags(self) -> list[str]:
        assert self.offsets is not None
        return self.offsets.cflags()

    def decode_library(self, kind: int, data: bytes) -> Decoded:
        if kind != EVENT_GOTLS_KEYLOG:
            raise DecodeError(f"unknown event kind {kind} on map events")
        codec = self._keylog
        if len(data) < codec.size:
            raise DecodeError(f"go_keylog_event_t has {len(data)} bytes, needs {codec.size}")
        f = dict(zip(codec.names, codec.codec.unpack_from(data), strict=True))
        lengths = (f["label_len"], f["client_random_len"], f["secret_len"])
        unread = f["unread"]
        complete = (0 < lengths[1] <= RANDOM_MAX and 0 < lengths[2] <= SECRET_MAX
                    and not unread & (UNREAD_RANDOM | UNREAD_SECRET))
        random, secret = f["client_random"][:lengths[1]], f["secret"][:lengths[2]]
        label = b"" if unread & UNREAD_LABEL or not 0 < lengths[0] <= LABEL_MAX else \
            f["label"][:lengths[0]]
        return GoKeyLog(timestamp_ns=f["timestamp_ns"], pid=f["pid"], tid=f["tid"],
                        uid=f["uid"], comm=comm_str(f["comm"]),
                        label=label.decode("ascii", "replace"), label_ptr=f["label_ptr"],
                        label_len=lengths[0], client_random=random, secret=secret,
                        complete=complete and any(random) and any(secret))

    def dispatch_library(self, fragment: Fragment) -> Iterable[Event]:
        if isinstance(fragment, GoKeyLog):
            yield from fragment.entries(self._labels.get((fragment.pid, fragment.label_ptr)))

    # -- labels the kernel could not read ------------------------------------------------
    def observe(self, data: bytes, lookup: Callable[[int, int], Any]) -> list[Observation]:
        """Besides the family's tuples: a key-log label the kernel could not read (its
        page of read-only data not yet touched by the process, which a probe cannot fault
        in) is read here from the process's memory, once per address, and recorded as a
        fact before the event, so that replay has it too."""
        facts = super().observe(data, lookup)
        if int.from_bytes(data[:4], "little") != EVENT_GOTLS_KEYLOG:
            return facts
        if len(data) < self._keylog.size:
            return facts
        event = self.decode_library(EVENT_GOTLS_KEYLOG, data)
        assert isinstance(event, GoKeyLog)
        key = (event.pid, event.label_ptr)
        if event.label or key in self._labels or not 0 < event.label_len <= LABEL_MAX:
            return facts
        label = read_process_memory(event.pid, event.label_ptr, event.label_len)
        text = label.decode("ascii", "replace") if label is not None else ""
        self._labels[key] = text  # looked at once, read or not
        if LABEL_RE.fullmatch(text):
            facts.append(("go_label", {"pid": event.pid, "address": event.label_ptr,
                                       "label": text}))
        return facts

    def apply(self, what: str, fields: Mapping[str, Any]) -> Iterable[Event]:
        if what != "go_label":
            yield from super().apply(what, fields)
            return
        try:
            self._labels[(int(fields["pid"]), int(fields["address"]))] = str(fields["label"])
        except (KeyError, TypeError, ValueError) as e:
            raise DecodeError(f"go_label observation without valid fields: {e}") from None


def read_process_memory(pid: int, address: int, length: int) -> bytes | None:
    """``length`` bytes at ``address`` in process ``pid`` (faulting its pages in, which a
    probe cannot), or None when the process is gone or the address is not mapped."""
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            mem.seek(address)
            data = mem.read(length)
    except (OSError, ValueError, OverflowError):
        return None
    return data if len(data) == length else None
