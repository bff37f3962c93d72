"""The ``bash`` module: every line an interactive shell reads with readline(), and how the
command it was part of ended.

Kernel side: kern/bash.c, one uretprobe on ``readline`` in the shell binary (bash links
GNU readline statically) or in libreadline, for any other program that uses it. Event:
``bash_readline_event_t``, one per line, on one ring buffer (perf buffer on old kernels).
In bash itself, probes on ``read_command``, ``execute_command``, ``exit_shell`` and
``shell_execve`` add ``bash_command_end_event_t``: the command made of the last N lines
ended, with this status. User space joins the lines and their end into one event.

This is the worked example of docs/adding-a-module.md: small, but every part of the module
contract is here.
"""

from __future__ import annotations

import os
import re
import shutil
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ecapture.errors import AttachError, DecodeError
from ecapture.events import Event, Fragment, comm_str, one_line
from ecapture.modules.base import (
    Decoded,
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
from ecapture.structs.bash import (
    BASH_COMMAND_END,
    BASH_LINE_MAX,
    BASH_READLINE,
    END_EXEC,
    END_EXIT,
    END_NO_COMMAND,
    END_RETURNED,
    EVENT_BASH_COMMAND_END,
    EVENT_BASH_READLINE,
)
from ecapture.targets import build_id, elf_symbols, find_library, needed_libraries

READLINE = "readline"
#: bash's own functions that tell where a command ends (kern/bash.c); the first two must
#: be there for exit statuses, the others close a shell's last command
COMMAND_HOOKS = ("read_command", "execute_command", "exit_shell", "shell_execve")
#: a status is known at execute_command()'s return, the rest at their entry
HOOK_KIND: dict[str, Literal["uprobe", "uretprobe"]] = {
    name: "uretprobe" if name == "execute_command" else "uprobe" for name in COMMAND_HOOKS}
ENDED = {END_RETURNED: "returned", END_NO_COMMAND: "no command", END_EXIT: "exit",
         END_EXEC: "exec"}


@dataclass(slots=True)
class BashLine(Event):
    """A line a shell read: what the user typed (before history expansion). Its tid is the
    shell's pid: readline runs on the shell's one thread.

    Where the shell's end of commands is known (bash itself, not a program that merely links
    libreadline), one event is one command: its lines joined by newlines, how it ended and
    its exit status; the timestamp is its first line's."""

    line: bytes
    truncated: bool
    #: "returned" (status is the command's exit status), "exit" (the shell exited with
    #: status), "exec" (the shell replaced itself), "no command" (an empty line, a comment,
    #: a syntax error), None (not known: no end was captured)
    ended: str | None = None
    status: int | None = None
    #: from the last line's Enter to the command's end
    duration_ns: int | None = None

    json_type: ClassVar[str] = "bash"

    def text_line(self) -> str:
        cut = f"  (cut at {len(self.line)} bytes)" if self.truncated else ""
        return (f"{self.comm} pid {self.pid} uid {self.uid}  $ {one_line(self.line)}{cut}"
                f"{self._end()}")

    def _end(self) -> str:
        if self.ended == "returned":
            return f"  [exit {self.status}]"
        if self.ended == "exit":
            return f"  [shell exit {self.status}]"
        if self.ended == "exec":
            return "  [exec]"
        return ""

    def json_fields(self) -> dict[str, Any]:
        return {"pid": self.pid, "uid": self.uid, "comm": self.comm, "line": self.line,
                "truncated": self.truncated, "ended": self.ended, "status": self.status,
                "duration_ns": self.duration_ns}


@dataclass(slots=True)
class CommandEnd(Fragment):
    """The end of the command made of a shell's last ``lines`` lines."""

    timestamp_ns: int
    pid: int
    lines: int
    ended: str
    status: int | None


@dataclass
class _Shell:
    """A shell's lines and ends not yet joined: both in timestamp order."""

    lines: list[BashLine] = field(default_factory=list)
    ends: list[CommandEnd] = field(default_factory=list)


def join(lines: list[BashLine], end: CommandEnd | None) -> BashLine:
    """One command's lines (at least one) and its end as one event."""
    first, last = lines[0], lines[-1]
    return BashLine(timestamp_ns=first.timestamp_ns, pid=first.pid, tid=first.tid,
                    uid=first.uid, comm=first.comm,
                    line=b"\n".join(x.line for x in lines),
                    truncated=any(x.truncated for x in lines),
                    ended=end.ended if end else None, status=end.status if end else None,
                    duration_ns=end.timestamp_ns - last.timestamp_ns if end else None)


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
        pid_option(),
        uid_option(),
    )
    maps = (EventMap("events", {EVENT_BASH_READLINE: BASH_READLINE,
                                EVENT_BASH_COMMAND_END: BASH_COMMAND_END}),)

    def __init__(self, config: Mapping[str, Any]):
        super().__init__(config)
        self.binary: str | None = None
        codecs = self.maps[0].codecs()
        self._codec = codecs[EVENT_BASH_READLINE]
        self._end_codec = codecs[EVENT_BASH_COMMAND_END]
        # Set by init() from the binary, and recorded: replay joins lines as live did
        # (recordings made before command ends existed have none to wait for).
        self.hooks: tuple[str, ...] = tuple(self.config.get("command_hooks") or ())
        self._shells: defaultdict[int, _Shell] = defaultdict(_Shell)

    # -- configuration -------------------------------------------------------------
    def check(self) -> None:
        self.notes += check_path_and_pid(self.config, "bash")

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
        symbols = elf_symbols(path)
        # bash's own functions: absent from libreadline, psql and the like, which have no
        # commands to end, and from a bash built without exported symbols.
        if all(name in symbols for name in COMMAND_HOOKS[:2]):
            self.hooks = tuple(name for name in COMMAND_HOOKS if name in symbols)

    # -- kernel side ---------------------------------------------------------------
    def probes(self, features: Features) -> list[Probe]:
        probes = [Probe("uretprobe", READLINE, "bash_readline_return", self.binary)]
        probes += [Probe(HOOK_KIND[name], name, f"bash_{name}", self.binary)
                   for name in self.hooks]
        return probes

    def cflags(self, features: Features) -> list[str]:
        flags = process_filter_cflags(self.config)
        if self.hooks:
            flags.append("-DBASH_COMMANDS=1")
        return flags

    def recorded_options(self) -> dict[str, Any]:
        return {**super().recorded_options(), "command_hooks": list(self.hooks)}

    # -- user side -----------------------------------------------------------------
    def decode(self, map_name: str, data: bytes) -> BashLine | CommandEnd:
        kind = split_kind(data)
        if kind == EVENT_BASH_COMMAND_END:
            return self._decode_end(data)
        if kind != EVENT_BASH_READLINE:
            raise DecodeError(f"unknown event kind {kind} on map {map_name}")
        f, line = unpack_event(self._codec, data, "bash_readline_event_t", BASH_LINE_MAX - 1)
        return BashLine(timestamp_ns=f["timestamp_ns"], pid=f["pid"], tid=f["pid"],
                        uid=f["uid"], comm=comm_str(f["comm"]), line=line,
                        truncated=bool(f["truncated"]))

    def _decode_end(self, data: bytes) -> CommandEnd:
        f, _ = unpack_event(self._end_codec, data, "bash_command_end_event_t")
        ended = ENDED.get(f["how"])
        if ended is None or f["lines"] == 0:
            raise DecodeError(f"bash_command_end_event_t with how={f['how']}, "
                              f"lines={f['lines']}")
        status = f["status"] if f["how"] in (END_RETURNED, END_EXIT) else None
        return CommandEnd(f["timestamp_ns"], f["pid"], f["lines"], ended, status)

    def dispatch(self, decoded: Decoded) -> Iterator[BashLine]:
        if not isinstance(decoded, BashLine | CommandEnd):
            return
        if not self.hooks:
            if isinstance(decoded, BashLine):
                yield decoded
            return
        shell = self._shells[decoded.pid]
        if isinstance(decoded, BashLine):
            _insert(shell.lines, decoded)
        else:
            _insert(shell.ends, decoded)
        yield from self._join(shell, waiting=1)
        if not shell.lines and not shell.ends:
            del self._shells[decoded.pid]  # nothing held: a host's many shells cost nothing

    def _join(self, shell: _Shell, waiting: int) -> Iterator[BashLine]:
        """Join each end with the lines it counts, oldest first. An end whose lines have not
        all arrived waits (a perf buffer delivers each CPU's events in turn, so an end may
        come before its line), but only the last ``waiting`` ends may: once a later end is
        here, the lines an earlier one lacks were lost (and counted as lost)."""
        while shell.ends:
            end = shell.ends[0]
            mine = [x for x in shell.lines if x.timestamp_ns < end.timestamp_ns][:end.lines]
            if len(mine) < end.lines and len(shell.ends) <= waiting:
                return
            shell.ends.pop(0)
            del shell.lines[:len(mine)]
            if mine:
                yield join(mine, end)

    def finish(self) -> Iterator[BashLine]:
        """The end of input: ends join what arrived; lines without an end (a command still
        running, or a shell killed) go out one by one, with no status."""
        for shell in self._shells.values():
            yield from self._join(shell, waiting=0)
            yield from shell.lines
        self._shells.clear()


def _insert(items: list[Any], item: BashLine | CommandEnd) -> None:
    """Append in timestamp order: almost always at the end."""
    i = len(items)
    while i and items[i - 1].timestamp_ns > item.timestamp_ns:
        i -= 1
    items.insert(i, item)
