"""The ``zsh`` module: every line interactive zsh reads with its line editor, zle.

Kernel side: kern/zsh.c, one uretprobe on ``zleread`` in zsh's zle module (``zsh/zle.so`` in
the module directory the shell was built with; in the shell itself when zle is linked in).
Event: ``zsh_zleread_event_t``, one per line, on one ring buffer (perf buffer on old
kernels). kern/zsh.c says why zleread() and not zleentry().

The kernel sends the line as zsh keeps it, metafied and with a newline at the end; decoding
turns it back into the bytes the user typed (:func:`unmetafy`).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ecapture.errors import AttachError, DecodeError
from ecapture.events import Event, comm_str, one_line
from ecapture.modules.base import (
    EventMap,
    Features,
    Module,
    Option,
    Probe,
    Target,
    check_path_and_pid,
    pid_option,
    process_filter_cflags,
    split_kind,
    uid_option,
    unpack_event,
)
from ecapture.structs.zsh import EVENT_ZSH_ZLEREAD, ZSH_LINE_MAX, ZSH_ZLEREAD
from ecapture.targets import build_id, elf_symbols, scan_version

ZLEREAD = "zleread"
#: zsh's escape byte: in a metafied string, META followed by b stands for b ^ 0x20 (zsh's
#: Src/zsh.h). zsh escapes NUL and its token bytes (0x83 to 0xa2) so, not all of 0x80-0xff.
META = 0x83
#: The module directory compiled into zsh (its MODULE_DIR; Debian's is
#: /usr/lib/x86_64-linux-gnu/zsh/5.9): a NUL-terminated absolute path ending in /zsh/<version>.
_MODULE_DIR = rb"\0(/[\x21-\x7e]*/zsh/\d+\.\d+[\w.-]*)\0"


def unmetafy(raw: bytes) -> bytes:
    """zsh's metafied text -> the bytes it stands for. A META at the very end is dropped: it
    is what remains of a pair that a cut line lost the second byte of."""
    out = bytearray()
    i = 0
    while i < len(raw):
        b = raw[i]
        if b == META:
            if i + 1 < len(raw):
                out.append(raw[i + 1] ^ 0x20)
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


def typed_line(raw: bytes, truncated: bool) -> bytes:
    """What the user typed, from the bytes zleread() returned: unmetafied, without the newline
    zleread() appends (absent from a cut line, and from a line that filled the buffer but
    for that newline)."""
    line = unmetafy(raw)
    if not truncated and line.endswith(b"\n"):
        line = line[:-1]
    return line


@dataclass(slots=True)
class ZshLine(Event):
    """A line zsh read with zle: what the user typed (before history expansion). Its tid is
    the shell's pid: zsh has one thread."""

    line: bytes
    truncated: bool

    json_type: ClassVar[str] = "zsh"

    def text_line(self) -> str:
        cut = f"  (cut at {len(self.line)} bytes)" if self.truncated else ""
        return f"{self.comm} pid {self.pid} uid {self.uid}  % {one_line(self.line)}{cut}"

    def json_fields(self) -> dict[str, Any]:
        return {"pid": self.pid, "uid": self.uid, "comm": self.comm, "line": self.line,
                "truncated": self.truncated}


def default_zsh() -> str | None:
    """The zsh to attach to: $SHELL if it is zsh, else zsh on PATH."""
    shell = os.environ.get("SHELL", "")
    if os.path.basename(shell) == "zsh" and os.path.isfile(shell):
        return shell
    return shutil.which("zsh")


def zle_module(path: str) -> tuple[str, str | None]:
    """The file that defines zleread() for the zsh at ``path``, and zsh's version when known:
    the shell itself when zle is linked in (or ``path`` is zle.so), else zsh/zle.so in the
    module directory compiled into the shell."""
    if ZLEREAD in elf_symbols(path):
        m = re.search(r"/zsh/(\d+\.\d+[\w.-]*)/zsh/zle\.so$", path)
        return path, m.group(1) if m else None
    found = scan_version(path, _MODULE_DIR)  # the directory; its last part is the version
    if found is None:
        raise AttachError(f"{path} neither defines zleread() nor names a zsh module directory: "
                          "pass --zsh with a zsh binary, or its zsh/zle.so")
    zle = os.path.join(found, "zsh", "zle.so")
    if not os.path.isfile(zle) or ZLEREAD not in elf_symbols(zle):
        raise AttachError(f"{path}'s line editor {zle} is missing or has no zleread(): "
                          "install zsh's modules, or pass --zsh with its zsh/zle.so")
    return os.path.realpath(zle), os.path.basename(found)


class ZshModule(Module):
    name = "zsh"
    help = "capture the command lines interactive zsh reads with its line editor (zle)"
    source = "zsh.c"
    header = "zsh.h"
    options = (
        Option(("--zsh",), "zsh", "the zsh binary, or its zsh/zle.so, to attach to "
               "(default: $SHELL if it is zsh, else zsh on PATH)", metavar="PATH"),
        pid_option(),
        uid_option(),
    )
    maps = (EventMap("events", {EVENT_ZSH_ZLEREAD: ZSH_ZLEREAD}),)

    def __init__(self, config: Mapping[str, Any]):
        super().__init__(config)
        self.zle: str | None = None
        self._codec = self.maps[0].codecs()[EVENT_ZSH_ZLEREAD]

    # -- configuration -------------------------------------------------------------
    def check(self) -> None:
        self.notes += check_path_and_pid(self.config, "zsh")

    def init(self) -> None:
        path = self.config.get("zsh") or default_zsh()
        if path is None:
            raise AttachError("zsh not found: install zsh, or pass --zsh PATH")
        self.zle, version = zle_module(os.path.realpath(path))
        self.targets = [Target(self.zle, version, build_id(self.zle))]

    # -- kernel side ---------------------------------------------------------------
    def probes(self, features: Features) -> list[Probe]:
        return [Probe("uretprobe", ZLEREAD, "zsh_zleread_return", self.zle)]

    def cflags(self, features: Features) -> list[str]:
        return process_filter_cflags(self.config)

    # -- user side -----------------------------------------------------------------
    def decode(self, map_name: str, data: bytes) -> ZshLine:
        kind = split_kind(data)
        if kind != EVENT_ZSH_ZLEREAD:
            raise DecodeError(f"unknown event kind {kind} on map {map_name}")
        f, raw = unpack_event(self._codec, data, "zsh_zleread_event_t", ZSH_LINE_MAX - 1)
        truncated = bool(f["truncated"])
        return ZshLine(timestamp_ns=f["timestamp_ns"], pid=f["pid"], tid=f["pid"],
                       uid=f["uid"], comm=comm_str(f["comm"]),
                       line=typed_line(raw, truncated), truncated=truncated)
