"""Recordings that were not closed cleanly: the capture was killed (kill -9) or crashed, so
the END frame that only a clean close writes is missing, and the file may end in the middle
of a record. `replay` shows every complete record, then says so in one line on stderr and
exits 3; `info` says it in the same words and exits 3 too. Damage in the middle of a file is
said in that one line as well."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ecapture.cli import DAMAGED, main
from ecapture.record.format import (
    CRC_CODEC,
    FRAME_HEAD_CODEC,
    FRAME_HEAD_SIZE,
    FRAME_OVERHEAD,
    HEADER_FIXED_CODEC,
    HEADER_FIXED_SIZE,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures" / "recordings"
CURL = FIXTURES / "tls" / "curl_http11.ecap"  # events and facts
BASH = FIXTURES / "bash" / "interactive.ecap"
UNCLEAN = "was not closed cleanly (the capture was killed or crashed)"
INFO_UNCLEAN = "ending:         not closed cleanly: the capture was killed or crashed"

# Copies a recording's items through the Writer, flushes as the live drain does after each
# batch, says so, and waits to be killed: a capture killed with -9 between two batches.
WRITER = """
import sys, time
from ecapture.record.reader import Reader
from ecapture.record.writer import Writer
with Reader(sys.argv[1]) as reader:
    writer = Writer(sys.argv[2], reader.metadata)
    for item in reader:
        writer.write(item)
    writer.flush()
print("written", flush=True)
time.sleep(600)
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ecapture", *args], capture_output=True,
                          text=True, cwd=ROOT, env={"TZ": "UTC", "PATH": "/usr/bin:/bin"})


def frames(data: bytes) -> tuple[int, list[tuple[int, int]]]:
    """Where the frames start (the end of the header), and (start, end) of every frame, the
    END frame last; read with the format's codecs, not with the Reader under test."""
    _, _, _, meta_length = HEADER_FIXED_CODEC.unpack_from(data)
    off = first = HEADER_FIXED_SIZE + meta_length + CRC_CODEC.size
    spans = []
    while off < len(data):
        length = FRAME_HEAD_CODEC.unpack_from(data, off)[-1]
        spans.append((off, off + FRAME_OVERHEAD + length))
        off = spans[-1][1]
    assert off == len(data)
    return first, spans


def records(n: int) -> str:
    return f"{n:,} record{'' if n == 1 else 's'}"


def incomplete(n: int) -> str:
    return f"the last {'byte was' if n == 1 else f'{n:,} bytes were'} an incomplete record"


def killed_copy(src: Path, dst: Path) -> None:
    """``dst``: the records of ``src`` as a writer left them when it was killed with -9."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(src), str(dst)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "written\n"
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("src", [CURL, BASH], ids=lambda p: p.stem)
@pytest.mark.parametrize(("model", "golden"), [("text", ".expected.txt"),
                                               ("json", ".expected.jsonl")])
def test_replay_of_a_killed_capture_shows_everything_then_says_so(
        src: Path, model: str, golden: str, tmp_path: Path) -> None:
    rec = tmp_path / "killed.ecap"
    killed_copy(src, rec)
    held = len(frames(src.read_bytes())[1]) - 1  # all but the END frame
    out = cli("replay", "-m", model, str(rec))
    # Every record is kept: the output is the clean recording's, byte for byte, and stdout
    # holds nothing else (JSON lines stay parseable).
    assert out.stdout == src.with_suffix(golden).read_text()
    assert out.stderr == f"ecapture: {rec} {UNCLEAN}: {records(held)} read, all replayed\n"
    assert out.returncode == DAMAGED == 3


def test_info_of_a_killed_capture_says_it_in_the_same_words(tmp_path: Path) -> None:
    rec = tmp_path / "killed.ecap"
    killed_copy(BASH, rec)
    held = len(frames(BASH.read_bytes())[1]) - 1
    out = cli("info", str(rec))
    assert out.returncode == DAMAGED and out.stderr == ""
    lines = out.stdout.splitlines()
    assert lines[-1] == f"{INFO_UNCLEAN} ({records(held)} read)"
    assert "end:            ? (not closed cleanly; last record at 20" in out.stdout
    assert "end marker" not in out.stdout
    clean = cli("info", str(BASH)).stdout.splitlines()
    # The same counts as the recording it was copied from.
    assert [x for x in lines if x.startswith(("events:", "  map"))] == \
        [x for x in clean if x.startswith(("events:", "  map"))]


def cut_points() -> list[int]:
    """Ends of a capture killed at every kind of place: between two records, inside a
    record's sync marker, head, payload or checksum, and inside the END frame (killed while
    closing)."""
    first, spans = frames(CURL.read_bytes())
    points = {first}
    for start, end in spans:
        points |= {start, start + 1, start + 3, start + FRAME_HEAD_SIZE - 1,
                   (start + FRAME_HEAD_SIZE + end) // 2, end - 1}
    return sorted(points)


@pytest.mark.parametrize("cut", cut_points())
def test_replay_of_a_cut_recording_shows_every_complete_record(
        cut: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = CURL.read_bytes()
    first, spans = frames(data)
    whole = sum(1 for _, end in spans[:-1] if end <= cut)
    boundary = max([first, *(end for _, end in spans if end <= cut)])
    # What must be shown: the replay of a cleanly closed recording of the same records.
    same = tmp_path / "same.ecap"
    same.write_bytes(data[:boundary] + data[spans[-1][0]:])
    assert main(["replay", "--raw", str(same)]) == 0
    expected = capsys.readouterr()
    assert expected.err == ""

    cut_file = tmp_path / "cut.ecap"
    cut_file.write_bytes(data[:cut])
    assert main(["replay", "--raw", str(cut_file)]) == DAMAGED
    got = capsys.readouterr()
    assert got.out == expected.out
    line = f"ecapture: {cut_file} {UNCLEAN}: {records(whole)} read, all replayed"
    said = f"{records(whole)} read"
    if cut > boundary:
        line += f"; {incomplete(cut - boundary)}"
        said += f"; {incomplete(cut - boundary)}, ignored"
    assert got.err == line + "\n"

    assert main(["info", str(cut_file)]) == DAMAGED
    assert capsys.readouterr().out.splitlines()[-1] == f"{INFO_UNCLEAN} ({said})"


def test_killed_mid_record_through_the_command_with_stats(tmp_path: Path) -> None:
    """The real command, killed in the middle of the third record: one line, last, after
    the --stats summary; no traceback."""
    data = CURL.read_bytes()
    _, spans = frames(data)
    start, end = spans[2]
    cut = tmp_path / "cut.ecap"
    cut.write_bytes(data[: start + 100])
    out = cli("replay", "--stats", str(cut))
    assert out.returncode == DAMAGED
    line = (f"ecapture: {cut} {UNCLEAN}: 2 records read, all replayed; "
            "the last 100 bytes were an incomplete record")
    assert out.stderr.endswith(line + "\n") and out.stderr.count(UNCLEAN) == 1
    assert out.stderr.startswith("ecapture: summary: ")
    assert "Traceback" not in out.stderr


def test_damage_in_the_middle_is_one_line_too(tmp_path: Path) -> None:
    """A recording closed cleanly but damaged inside (a bad disk, a bad copy): the
    damaged record is skipped, the others shown, and the line says how much was lost."""
    data = bytearray(CURL.read_bytes())
    _, spans = frames(bytes(data))
    start, end = spans[1]
    data[end - 5] ^= 0xFF  # one payload byte: the record's checksum no longer matches
    bad = tmp_path / "bad.ecap"
    bad.write_bytes(data)
    out = cli("replay", "--raw", str(bad))
    assert out.returncode == DAMAGED
    assert out.stderr == (f"ecapture: {bad} is damaged: {records(len(spans) - 2)} read, all "
                          f"replayed; {end - start:,} unreadable bytes in 1 place skipped\n")
    info = cli("info", str(bad))
    assert info.returncode == DAMAGED and "ending:         clean" in info.stdout

    # Damaged and then killed in the middle of a record: still one line.
    cut_at = spans[3][0] + 10
    bad.write_bytes(data[:cut_at])
    out = cli("replay", "--raw", str(bad))
    assert out.returncode == DAMAGED
    assert out.stderr == (f"ecapture: {bad} {UNCLEAN} and is damaged: 2 records read, all "
                          f"replayed; {end - start:,} unreadable bytes in 1 place skipped; "
                          "the last 10 bytes were an incomplete record\n")


def test_a_clean_recording_says_nothing() -> None:
    out = cli("replay", str(CURL))
    assert (out.returncode, out.stderr) == (0, "")
    info = cli("info", str(CURL))
    assert info.returncode == 0 and info.stdout.splitlines()[-1] == "ending:         clean"


@pytest.mark.parametrize("command", ["replay", "info"])
def test_help_documents_the_exit_status(command: str) -> None:
    words = " ".join(cli(command, "--help").stdout.split())
    assert (f"exit status: 0 if the recording was closed cleanly; {DAMAGED} if it was not "
            "(the capture was killed or crashed) or has damaged records") in words
