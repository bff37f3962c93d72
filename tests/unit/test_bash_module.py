"""Which file the bash module attaches to: the shell itself when it defines readline(),
the libreadline a program links when it does not, and never a library the program does not
use (``--bash /bin/true`` once attached to the system's libreadline and waited forever)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ecapture.errors import AttachError
from ecapture.modules.bash import READLINE, BashModule
from ecapture.targets import elf_symbols, needed_libraries

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
