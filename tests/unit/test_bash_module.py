"""Which file the bash module attaches to: the shell itself when it defines readline(),
the libreadline a program links when it does not, and never a library the program does not
use (``--bash /bin/true`` once attached to the system's libreadline and waited forever).
And how lines and command ends become one event per command."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ecapture.errors import AttachError, DecodeError
from ecapture.modules.base import Features
from ecapture.modules.bash import READLINE, BashLine, BashModule
from ecapture.structs.bash import (
    END_EXEC,
    END_EXIT,
    END_NO_COMMAND,
    END_RETURNED,
    EVENT_BASH_COMMAND_END,
    EVENT_BASH_READLINE,
    bash_command_end_event_t,
    bash_readline_event_t,
)
from ecapture.targets import elf_symbols, needed_libraries
from ecapture.testing.factories import make_event

CONFIG = {"bash": None, "pid": None, "uid": None}
# Files that link the shared libreadline on Debian: the system Python's readline module
# (always there), psql.
LINKING = [str(p) for pattern in ("/usr/lib/python3*/lib-dynload/readline*.so",
                                  "/usr/lib/postgresql/*/bin/psql")
           for p in sorted(Path("/").glob(pattern.lstrip("/")))]


def attach_to(path: str) -> str:
    module = BashModule({**CONFIG, "bash": path})
    module.init()
    assert module.binary is not None
    return module.binary


def test_a_program_without_readline_is_refused() -> None:
    true = shutil.which("true")
    assert true is not None
    with pytest.raises(AttachError, match="neither defines readline.. nor links libreadline"):
        attach_to(true)


def test_bash_with_readline_inside_is_its_own_target() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    if READLINE not in elf_symbols(os.path.realpath(bash)):
        pytest.skip("this bash links readline dynamically")
    assert attach_to(bash) == os.path.realpath(bash)


@pytest.mark.parametrize("path", LINKING or [None],
                         ids=lambda p: os.path.basename(p) if p else "none")
def test_a_program_linking_libreadline_gets_that_library(path: str | None) -> None:
    if path is None:
        pytest.skip("no file linking libreadline found (Python's readline module, psql)")
    needed = [n for n in needed_libraries(path) if n.startswith("libreadline.so")]
    if not needed:
        pytest.skip(f"{path} does not link libreadline")
    target = attach_to(path)
    assert os.path.basename(target).startswith(needed[0])
    assert READLINE in elf_symbols(target)


# -- joining lines and command ends (kern/bash.c sends them as two kinds) -----------------

HOOKED = {**CONFIG, "command_hooks": ["read_command", "execute_command"]}


def line(ts: int, text: bytes, pid: int = 9) -> bytes:
    return make_event(bash_readline_event_t, kind=EVENT_BASH_READLINE, pid=pid, uid=0,
                      timestamp_ns=ts, comm=b"bash", line=text)


def end(ts: int, lines: int, how: int = END_RETURNED, status: int = 0, pid: int = 9) -> bytes:
    return make_event(bash_command_end_event_t, kind=EVENT_BASH_COMMAND_END, pid=pid,
                      timestamp_ns=ts, lines=lines, how=how, status=status)


def run(records: list[bytes], config: dict[str, object] = HOOKED) -> list[BashLine]:
    module = BashModule(config)
    out: list[BashLine] = []
    for raw in records:
        out += module.dispatch(module.decode("events", raw))
    return out + list(module.finish())


def shown(events: list[BashLine]) -> list[tuple[bytes, str | None, int | None]]:
    return [(e.line, e.ended, e.status) for e in events]


def test_a_command_of_several_lines_is_one_event_with_its_status() -> None:
    events = run([line(10, b"for i in 1 2"), line(20, b"do echo $i"), line(30, b"done"),
                  end(45, 3, status=0), line(50, b"ls /nope"), end(60, 1, status=2)])
    assert shown(events) == [(b"for i in 1 2\ndo echo $i\ndone", "returned", 0),
                             (b"ls /nope", "returned", 2)]
    assert events[0].timestamp_ns == 10 and events[0].duration_ns == 15


def test_an_end_that_arrives_before_its_line_waits_for_it() -> None:
    # A perf buffer hands over one CPU's events, then the next CPU's.
    events = run([end(20, 1, status=1), line(10, b"false"), line(30, b"true"),
                  end(40, 1, status=0)])
    assert shown(events) == [(b"false", "returned", 1), (b"true", "returned", 0)]


def test_a_lost_line_costs_only_its_own_command() -> None:
    # The end counts two lines, only one arrived (the other was dropped, and counted as
    # such); the next command's end shows that nothing more will come for the first.
    events = run([line(20, b"done"), end(30, 2, status=0), line(40, b"pwd"),
                  end(50, 1, status=0)])
    assert shown(events) == [(b"done", "returned", 0), (b"pwd", "returned", 0)]


def test_how_a_command_ended_and_the_text_model() -> None:
    events = run([line(1, b""), end(2, 1, how=END_NO_COMMAND), line(3, b"exit 3"),
                  end(4, 1, how=END_EXIT, status=3), line(5, b"exec ls", pid=8),
                  end(6, 1, how=END_EXEC, pid=8), line(7, b"sleep 100")])
    assert shown(events) == [(b"", "no command", None), (b"exit 3", "exit", 3),
                             (b"exec ls", "exec", None), (b"sleep 100", None, None)]
    texts = [e.text_line().split("$ ", 1)[1] for e in events]
    assert texts == ["", "exit 3  [shell exit 3]", "exec ls  [exec]", "sleep 100"]
    assert run([line(1, b"ls"), end(2, 1, status=2)])[0].text_line().endswith(
        "$ ls  [exit 2]")


def test_shells_are_joined_apart() -> None:
    events = run([line(1, b"a", pid=1), line(2, b"b", pid=2), end(3, 1, status=5, pid=2),
                  end(4, 1, status=6, pid=1)])
    assert sorted((e.pid, e.line, e.status) for e in events) == [(1, b"a", 6), (2, b"b", 5)]


def test_without_command_hooks_every_line_goes_out_at_once() -> None:
    # libreadline in psql has no commands to end, and recordings made before command ends
    # existed have none: lines must not wait for an end that never comes.
    module = BashModule(CONFIG)
    got = list(module.dispatch(module.decode("events", line(1, b"select 1;"))))
    assert shown(got) == [(b"select 1;", None, None)]


def test_the_hooks_found_are_recorded_for_replay() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    module = BashModule({**CONFIG, "bash": bash})
    module.init()
    if "read_command" not in elf_symbols(module.binary or ""):
        pytest.skip("this bash does not export its functions")
    assert module.recorded_options()["command_hooks"][:2] == ["read_command",
                                                              "execute_command"]
    assert "-DBASH_COMMANDS=1" in module.cflags(Features())
    again = BashModule(module.recorded_options())
    assert again.hooks == module.hooks


def test_an_end_that_makes_no_sense_is_a_decode_error() -> None:
    module = BashModule(HOOKED)
    with pytest.raises(DecodeError):
        module.decode("events", end(1, 0))
    with pytest.raises(DecodeError):
        module.decode("events", end(1, 1, how=99))
