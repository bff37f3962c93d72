"""Live tests of the zsh module.

Ground truth: the lines we type into a real interactive zsh on a pty (util-linux
``script``), and the shell's own pid, which it prints itself.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from live_helpers import ecap, one_line_error, waiting_shell

from ecapture.live.prereq import has_ringbuf
from ecapture.modules.zsh import ZshLine
from ecapture.structs.zsh import ZSH_LINE_MAX

pytestmark = pytest.mark.ecapture_module("zsh")

# -f: no startup files, so the lines are ours alone; -i: interactive, so zle reads them.
SHELL = ["script", "-qec", "zsh -f -i", "/dev/null"]
#: In a workload: stop typing for a moment.
PAUSE = None


def run_shell(lines: list[str | None], as_user: list[str] | None = None) -> int:
    """Type ``lines`` into an interactive zsh (waiting a second at each PAUSE), run with the
    command prefix ``as_user`` if given; return the pid it printed for itself."""
    typed = ["echo SHELLPID=$$", *lines, "exit"]
    chunks: list[list[str]] = [[]]
    for line in typed:
        if line is PAUSE:
            chunks.append([])
        else:
            chunks[-1].append(line + "\n")
    # errors="replace": zsh redraws a long line in pieces that may split a character
    shell = subprocess.Popen([*(as_user or []), *SHELL], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, errors="replace")
    assert shell.stdin is not None
    for chunk in chunks[:-1]:
        shell.stdin.write("".join(chunk))
        shell.stdin.flush()
        time.sleep(1)
    out = shell.communicate("".join(chunks[-1]), timeout=120)[0]
    m = re.search(r"^SHELLPID=(\d+)", out, re.M)
    assert m, out
    return int(m.group(1))


def lines_of(events: list[object], pid: int) -> list[bytes]:
    return [e.line for e in events if isinstance(e, ZshLine) and e.pid == pid]


WORKLOAD: list[str | None] = [
    "echo hello-from-zsh",
    # Non-ASCII: ✓ and 日本語 have bytes zsh escapes (metafies), ü and ï do not.
    "print -r -- 'ünïcode ✓ 日本語'",
    # Special characters, typed as such (the line is captured before any expansion).
    "print -r -- '~!@#%^&*()[]{}|<>?;\"' \"$((6*7))\" `echo sub` 'back\\slash' $HOME",
    # A command on three lines: three reads (PS1, then PS2 twice).
    "for i in 1 2; do", "echo $i", "done",
    "   spaced  out   ",
    "",  # Enter at an empty prompt is a line too, an empty one
    # A job that ends while zle waits for the next line: zsh's SIGCHLD handler redraws
    # the line through zleentry() inside the read, the case kern/zsh.c avoids zleentry for.
    "setopt notify", "sleep 0.2 &", PAUSE, "echo after-job",
]
TYPED = [b"echo SHELLPID=$$", *(line.encode() for line in WORKLOAD if line is not PAUSE),
         b"exit"]


@pytest.mark.parametrize("buffer", ["auto", "perf"])
def test_every_typed_line_in_order(live_capture, buffer: str) -> None:
    cap = live_capture("zsh", *(["--perf-buffer"] if buffer == "perf" else []))
    pid = run_shell(WORKLOAD)
    text = cap.stop()
    chosen = "ring" if buffer == "auto" and has_ringbuf() else "perf"
    assert f"({chosen} buffer)" in cap.err_path.read_text()
    events = cap.replay().events()
    assert lines_of(events, pid) == TYPED  # 13/13, in order, nothing twice
    ours = [e for e in events if isinstance(e, ZshLine) and e.pid == pid]
    assert all(e.comm == "zsh" and e.uid == 0 and not e.truncated for e in ours)
    assert f"zsh pid {pid} uid 0  % print -r -- 'ünïcode ✓ 日本語'" in text
    # What was printed live is what the recording replays to.
    assert text == cap.replay().text()
    if buffer == "auto":
        cap.save_fixture("zsh/interactive")


def test_pid_filter_keeps_one_shell(live_capture) -> None:
    other, target = waiting_shell(SHELL)
    assert other.stdin is not None
    cap = live_capture("zsh", "--pid", str(target))
    run_shell(["echo not-this-one"])
    # The shell was already inside zleread() when the probe attached: a uretprobe only
    # fires for calls entered after attach, so that first line is (normally) missed.
    other.stdin.write("echo pending\necho this-one\nexit\n")
    other.stdin.close()
    other.wait(60)
    cap.stop()
    events = [e for e in cap.replay().events() if isinstance(e, ZshLine)]
    lines = [e.line for e in events]
    assert lines in ([b"echo this-one", b"exit"], [b"echo pending", b"echo this-one", b"exit"])
    assert {e.pid for e in events} == {target}


def test_uid_filter_keeps_one_user(live_capture) -> None:
    cap = live_capture("zsh", "--uid", "65534")
    run_shell(["echo as-root"])
    nobody = run_shell(["echo as-nobody"], as_user=["setpriv", "--reuid=nobody",
                                                    "--regid=nogroup", "--clear-groups"])
    cap.stop()
    events = [e for e in cap.replay().events() if isinstance(e, ZshLine)]
    assert [e.line for e in events] == [b"echo SHELLPID=$$", b"echo as-nobody", b"exit"]
    assert {(e.pid, e.uid) for e in events} == {(nobody, 65534)}


def test_long_lines_are_cut_and_flagged(live_capture) -> None:
    full = "echo " + "y" * (ZSH_LINE_MAX - 1 - 5)  # fills the buffer but for the newline
    long = "echo " + "x" * 3000
    # ✓ is 5 bytes metafied (e2, Meta 9c^0x20, Meta 93^0x20): the cut falls after 203 of
    # them and e2 83 bc, which decode to e2 9c, the start of the 204th.
    checks = "echo " + "✓" * 400
    cap = live_capture("zsh")
    pid = run_shell([full, long, checks])
    cap.stop()
    events = [e for e in cap.replay().events() if isinstance(e, ZshLine) and e.pid == pid]
    got = {e.line[:6]: e for e in events if e.line.startswith(b"echo ")}
    assert got[b"echo y"].line == full.encode() and not got[b"echo y"].truncated
    assert got[b"echo x"].line == long.encode()[: ZSH_LINE_MAX - 1]
    assert got[b"echo \xe2"].line == b"echo " + "✓".encode() * 203 + b"\xe2\x9c"
    assert got[b"echo x"].truncated and got[b"echo \xe2"].truncated
    text = cap.replay().text()
    assert "(cut at 1023 bytes)" in text and "(cut at 616 bytes)" in text


def test_a_binary_without_zle_is_refused() -> None:
    one_line_error(ecap("zsh", "--zsh", "/bin/true"),
                   "neither defines zleread() nor names a zsh module directory")
