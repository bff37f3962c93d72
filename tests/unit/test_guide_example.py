"""docs/adding-a-module.md is tested: its worked example (the bash module's fixture recording)
replays to what the guide says, and every code excerpt it quotes from a repository file
still appears in that file, so the guide cannot drift from the code it describes.

A quoted block is marked by an HTML comment on the line before its fence::

    <!-- from: ecapture/modules/bash.py -->
    ```python
    ...
    ```
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ecapture.modules.bash import BashLine

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "adding-a-module.md"

# What the live test typed into a real interactive bash when it saved bash/interactive
# (tests/integration/test_bash_live.py: its WORKLOAD between "echo SHELLPID=$$" and "exit").
TYPED = [
    "echo SHELLPID=$$",
    "echo hello-from-bash",
    "ls /nonexistent-dir",
    "cd /tmp && pwd",
    "printf '%s\\n' \"ünïcode ✓\"",
    "true | cat",
    "   spaced  out   ",
    "exit",
]


def test_bash_fixture_replays_the_typed_lines(recording) -> None:
    events = recording("bash/interactive").events()
    lines = [e for e in events if isinstance(e, BashLine)]
    assert [e.line.decode() for e in lines] == TYPED
    assert len({e.pid for e in lines}) == 1  # one shell typed them all
    assert all(e.comm == "bash" and not e.truncated for e in lines)
    stamps = [e.timestamp_ns for e in lines]
    assert stamps == sorted(stamps)


def test_bash_fixture_matches_its_golden_text(recording, golden) -> None:
    replay = recording("bash/interactive")
    golden.check(replay.text(), replay.expected("text"))


# -- the guide's quotes ----------------------------------------------------------------------

_FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\n(?P<body>.*?)^```$", re.M | re.S)
_FROM = re.compile(r"<!-- from: (?P<path>\S+) -->\n\Z")
# Blocks in these languages are commands or output, not quotes, and need no marker.
UNQUOTED = {"sh", "text", ""}


def _rstrip_lines(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.splitlines())


def guide_blocks() -> list[tuple[str | None, str, str, int]]:
    """(quoted file or None, language, text, line number) of every fenced block."""
    if not GUIDE.exists():
        return []
    text = GUIDE.read_text(encoding="utf-8")
    blocks = []
    for m in _FENCE.finditer(text):
        before = text[: m.start()]
        marker = _FROM.search(before)
        blocks.append((marker.group("path") if marker else None, m.group("lang"),
                       m.group("body"), before.count("\n") + 1))
    return blocks


BLOCKS = guide_blocks()


def test_guide_quotes_many_files() -> None:
    assert GUIDE.exists(), f"{GUIDE} is missing"
    quoted = {path for path, *_ in BLOCKS if path}
    assert len(quoted) >= 10, quoted  # the parser found the marked blocks
    assert {"kern/bash.c", "kern/bash.h", "ecapture/structs/bash.py",
            "ecapture/modules/bash.py"} <= quoted


@pytest.mark.parametrize(("path", "lang", "body", "line"), BLOCKS,
                         ids=[f"line{b[3]}-{b[0] or b[1]}" for b in BLOCKS])
def test_guide_block_is_quoted_verbatim(path: str | None, lang: str, body: str,
                                        line: int) -> None:
    if path is None:
        assert lang in UNQUOTED, (f"adding-a-module.md:{line}: a {lang} block without "
                                  "<!-- from: FILE -->: code must be quoted from the repository")
        return
    source = ROOT / path
    assert source.is_file(), f"adding-a-module.md:{line}: {path} does not exist"
    excerpt = _rstrip_lines(body)
    assert excerpt.strip(), f"adding-a-module.md:{line}: empty quote"
    # Whole lines only: "x = 1" must not pass because the file says "x = 10".
    lines = f"\n{_rstrip_lines(source.read_text(encoding='utf-8'))}\n"
    assert f"\n{excerpt}\n" in lines, (
        f"adding-a-module.md:{line}: this excerpt is no longer in {path}: update the guide")
