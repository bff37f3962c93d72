"""The ``bash`` module: every line an interactive shell reads with readline().

Kernel side: kern/bash.c, one uretprobe on ``readline`` in the shell binary (bash links
GNU readline statically) or in libreadline, for any other program that uses it. Event:
``bash_readline_event_t``, one per line, on one ring buffer (perf buffer on old kernels).

This is the worked example of docs/adding-a-module.md: small, but every part of the module
contract is here.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ecapture.errors import AttachError, ConfigError, DecodeError
from ecapture.events import Event, comm_str
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
from ecapture.structs.bash import BASH_LINE_MAX, BASH_READLINE, EVENT_BASH_READLINE
from ecapture.targets import build_id, elf_symbols, find_library, needed_libraries

READLINE = "readline"


@dataclass(slots=True)
class BashLine(Event):
    """A line a shell read: what the user typed (before history expansion). Its tid is the
    shell's pid: readline runs on the shell's one thread."""

    line: bytes
    truncated: bool

    json_type: ClassVar[str] = "bash"

    def text_line(self) -> str:
        text = self.line.decode("utf-8", "backslashreplace")
        # One event, one output line: show control characters escaped, never raw.
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
        cut = f"  (cut at {len(self.line)} bytes)" if self.truncated else ""
        return f"{self.comm} pid {self.pid} uid {self.uid}  $ {text}{cut}"

    def json_fields(self) -> dict[str, Any]:
        return {"pid": self.pid, "uid": self.uid, "comm": self.comm, "line": self.line,
                "truncated": self.truncated}


def default_shell() -> str | None:
    """The bash to attach to: $SHELL if it is bash, else bash on PATH."""
    shell = os.environ.get("SHELL", "")
    if os.path.basename(shell) == "bash" and os.path.isfile(shell):
        return shell
    return shutil.which("bash")


class BashModule(Module):
    name = "bash"
    aliases = ("readline",)
    help = "capture the command lines interactive shells read with readline()"
    source = "bash.c"
    header = "bash.h"
    options = (
        Option(("--bash",), "bash", "the shell binary, or a libreadline.so, to attach to "
               "(default: $SHELL if it is bash, else bash on PATH)", metavar="PATH"),
        Option(("-p", "--pid"), "pid", "capture only this process id",
               type=non_negative_int, metavar="PID"),
        Option(("-u", "--uid"), "uid", "capture only this user id",
               type=non_negative_int, metavar="UID"),
    )
    maps = (EventMap("events", {EVENT_BASH_READLINE: BASH_READLINE}),)

    def __init__(self, config: Mapping[str, Any]):
        super().__init__(config)
        self.binary: str | None = None
        self._codec = self.maps[0].codecs()[EVENT_BASH_READLINE]

    # -- configuration -------------------------------------------------------------
    def check(self) -> None:
        path = self.config.get("bash")
        if path and not os.path.isfile(path):
            raise ConfigError(f"--bash {path}: no such file")
        pid = self.config.get("pid")
        if pid is not None and not os.path.exists(f"/proc/{pid}"):
            raise ConfigError(f"--pid {pid}: no such process")

    def init(self) -> None:
        path = self.config.get("bash") or default_shell()
        if path is None:
            raise AttachError("bash not found: install bash, or pass --bash PATH")
        path = os.path.realpath(path)
        if READLINE not in elf_symbols(path):
            # A program linked with the shared libreadline (a bash built so, psql) keeps
            # readline() there; one that links none reads no lines through it.
            needed = [n for n in needed_libraries(path) if n.startswith("libreadline.so")]
            lib = find_library([re.escape(needed[0])]) if needed else None
            if lib is None or READLINE not in elf_symbols(lib):
                raise AttachError(f"{path} neither defines readline() nor links libreadline: "
                                  "pass --bash with bash, a program linked with "
                                  "libreadline, or a libreadline.so")
            path = os.path.realpath(lib)
        self.binary = path
        self.targets = [Target(path, None, build_id(path))]

    # -- kernel side ---------------------------------------------------------------
    def probes(self, features: Features) -> list[Probe]:
        return [Probe("uretprobe", READLINE, "bash_readline_return", self.binary)]

    def cflags(self, features: Features) -> list[str]:
        flags: list[str] = []
        if self.config.get("pid") is not None:
            flags.append(f"-DTARGET_PID={self.config['pid']}")
        if self.config.get("uid") is not None:
            flags.append(f"-DTARGET_UID={self.config['uid']}")
        return flags

    # -- user side -----------------------------------------------------------------
    def decode(self, map_name: str, data: bytes) -> BashLine:
        kind = split_kind(data)
        if kind != EVENT_BASH_READLINE:
            raise DecodeError(f"unknown event kind {kind} on map {map_name}")
        size = self._codec.size
        if len(data) < size:
            raise DecodeError(f"bash_readline_event_t has {len(data)} bytes, needs {size}")
        f = dict(zip(self._codec.names, self._codec.codec.unpack_from(data), strict=True))
        end = size + f["line_len"]
        if f["line_len"] >= BASH_LINE_MAX or end > len(data):
            raise DecodeError(f"bash_readline_event_t claims {f['line_len']} line bytes, "
                              f"{len(data) - size} present")
        return BashLine(timestamp_ns=f["timestamp_ns"], pid=f["pid"], tid=f["pid"],
                        uid=f["uid"], comm=comm_str(f["comm"]), line=data[size:end],
                        truncated=bool(f["truncated"]))
