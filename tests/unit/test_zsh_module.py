"""The zsh module without a kernel: decoding zsh's metafied lines back into what was typed,
and which file it attaches to (zsh's zle module, found from the shell) or refuses."""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecapture.errors import AttachError, DecodeError
from ecapture.modules.zsh import ZLEREAD, ZshLine, ZshModule, default_zsh, typed_line, unmetafy
from ecapture.structs.zsh import EVENT_ZSH_ZLEREAD, ZSH_LINE_MAX, zsh_zleread_event_t
from ecapture.targets import elf_symbols
from ecapture.testing.factories import make_event

CONFIG = {"zsh": None, "pid": None, "uid": None}


def metafy(text: bytes) -> bytes:
    """zsh's rule (Src/utils.c, imeta()): NUL and the token bytes 0x83..0xa2 become Meta
    followed by the byte xor 0x20; every other byte stands for itself."""
    out = bytearray()
    for b in text:
        if b == 0 or 0x83 <= b <= 0xA2:
            out += bytes([0x83, b ^ 0x20])
        else:
            out.append(b)
    return bytes(out)


# -- unmetafy ---------------------------------------------------------------------------

def test_a_line_zsh_5_9_returned_decodes_to_what_was_typed() -> None:
    # The bytes zleread() returned for `echo hi ünï ✓` in a live capture: ü and ï are
    # c3 bc and c3 af (no byte in the token range), ✓ is e2 9c 93 (two escaped).
    raw = b"echo hi \xc3\xbcn\xc3\xaf \xe2\x83\xbc\x83\xb3\n"
    assert typed_line(raw, truncated=False) == "echo hi ünï ✓".encode()


@pytest.mark.parametrize("raw", [b"plain ascii", "ünïcödé ✓ 日本語 🐚".encode(), b"a\0b",
                                 b"\x82\x83\x84\xa2\xa3"],
                         ids=["ascii", "utf8", "nul", "token-range-edges"])
def test_metafied_examples_round_trip(raw: bytes) -> None:
    assert unmetafy(metafy(raw)) == raw


@given(st.binary(max_size=300))
def test_unmetafy_undoes_metafy(raw: bytes) -> None:
    assert unmetafy(metafy(raw)) == raw


def test_a_meta_byte_cut_from_its_pair_is_dropped() -> None:
    # A cut line may end between Meta and the byte it escapes.
    assert unmetafy(b"echo \xe2\x83") == b"echo \xe2"


def test_only_the_newline_zleread_appends_is_dropped() -> None:
    assert typed_line(b"ls\n", truncated=False) == b"ls"
    assert typed_line(b"echo 'a\nb'\n\n", truncated=False) == b"echo 'a\nb'\n"
    # A cut line never got to its newline; a line that filled the buffer but for its
    # newline arrives whole without it.
    assert typed_line(b"echo xx\n", truncated=True) == b"echo xx\n"
    assert typed_line(b"echo xx", truncated=False) == b"echo xx"


# -- decode -----------------------------------------------------------------------------

def test_decode_unmetafies_the_line() -> None:
    raw = make_event(zsh_zleread_event_t, kind=EVENT_ZSH_ZLEREAD, pid=41, uid=1000,
                     timestamp_ns=7, comm=b"zsh", line=metafy("cd ~/ünï ✓\n".encode()))
    event = ZshModule(CONFIG).decode("events", raw)
    assert isinstance(event, ZshLine)
    assert (event.pid, event.tid, event.uid, event.comm) == (41, 41, 1000, "zsh")
    assert event.line == "cd ~/ünï ✓".encode()
    assert event.text_line() == "zsh pid 41 uid 1000  % cd ~/ünï ✓"
    assert event.json_fields()["line"] == "cd ~/ünï ✓".encode()


def test_a_cut_line_says_so() -> None:
    raw = make_event(zsh_zleread_event_t, kind=EVENT_ZSH_ZLEREAD, pid=1, comm=b"zsh",
                     truncated=1, line=b"x" * (ZSH_LINE_MAX - 1))
    event = ZshModule(CONFIG).decode("events", raw)
    assert event.truncated and event.line == b"x" * (ZSH_LINE_MAX - 1)
    assert event.text_line().endswith(f"  (cut at {ZSH_LINE_MAX - 1} bytes)")


def test_a_length_beyond_the_buffer_is_a_decode_error() -> None:
    raw = make_event(zsh_zleread_event_t, kind=EVENT_ZSH_ZLEREAD, line_len=ZSH_LINE_MAX,
                     line=b"x" * ZSH_LINE_MAX)
    with pytest.raises(DecodeError, match="claims 1024 line bytes"):
        ZshModule(CONFIG).decode("events", raw)


# -- what to attach to ------------------------------------------------------------------

def attach_to(path: str) -> ZshModule:
    module = ZshModule({**CONFIG, "zsh": path})
    module.init()
    return module


def test_a_program_without_zle_is_refused() -> None:
    true = shutil.which("true")
    assert true is not None
    with pytest.raises(AttachError, match=r"neither defines zleread\(\) nor names a zsh module"):
        attach_to(true)


def test_zsh_attaches_to_its_zle_module() -> None:
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh is not installed")
    module = attach_to(zsh)
    assert module.zle is not None
    assert ZLEREAD in elf_symbols(module.zle)
    if ZLEREAD not in elf_symbols(os.path.realpath(zsh)):  # zle is a module (Debian)
        assert module.zle.endswith("/zsh/zle.so")
        version = module.targets[0].version
        assert version is not None and f"/zsh/{version}/zsh/zle.so" in module.zle
        # Given zle.so itself, the same file.
        assert attach_to(module.zle).zle == module.zle


def test_default_zsh_prefers_a_zsh_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh is not installed")
    monkeypatch.setenv("SHELL", zsh)
    assert default_zsh() == zsh
    monkeypatch.setenv("SHELL", "/bin/sh")  # not zsh: the one on PATH
    assert default_zsh() == shutil.which("zsh")
