"""Helpers shared by the live benchmarks (saturation, dd_tax, startup, soak).

Not a benchmark itself. Everything here is about driving processes: running `ecapture tls`
of a given checkout and waiting for its "probes attached" line, stopping it and reading its
summary, making a throw-away certificate, printing a table. The checkouts are run as
``python -m ecapture`` with the checkout as the working directory, so that its own package
is imported ahead of the editable install of the current tree.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
# The interpreter that runs the benchmark runs every checkout: same dependencies, same bcc.
PYTHON = sys.executable
ATTACHED = "probes attached"


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit(f"{Path(sys.argv[0]).name}: needs root (eBPF uprobes and tracepoints); "
                 "run it with sudo")


def checkout_label(path: Path, labels: dict[str, int] | None = None) -> str:
    """A short name for a checkout: "current" for this tree, else its directory name."""
    path = path.resolve()
    name = "current" if path == ROOT else path.name
    if labels is not None:  # the same name twice gets a suffix
        labels[name] = labels.get(name, 0) + 1
        if labels[name] > 1:
            name = f"{name}#{labels[name]}"
    return name


def checkouts(given: Sequence[str] | None) -> list[tuple[str, Path]]:
    """(label, path) of each --ecapture DIR, in order; the current tree if none given."""
    paths = [Path(p).resolve() for p in (given or [str(ROOT)])]
    labels: dict[str, int] = {}
    out = []
    for p in paths:
        if not (p / "ecapture" / "__main__.py").exists():
            sys.exit(f"--ecapture {p}: not an ecapture checkout (no ecapture/__main__.py)")
        out.append((checkout_label(p, labels), p))
    return out


@dataclass
class Summary:
    """What `ecapture tls` says at exit (current tree) or `ecapture info` says of the
    recording (any checkout). None where it said nothing."""

    events: int | None = None
    lost: int | None = None
    bytes_text: str | None = None  # the summary's human-readable byte count


SUMMARY_RE = re.compile(r"summary: ([\d,]+) events \(([^)]*)\).*?, ([\d,]+) lost")
INFO_RE = re.compile(r"^events:\s+([\d,]+) \(([\d,]+) lost\)", re.M)


def parse_summary(stderr: str) -> Summary:
    m = SUMMARY_RE.search(stderr)
    if not m:
        return Summary()
    return Summary(int(m[1].replace(",", "")), int(m[3].replace(",", "")), m[2])


def info_counts(checkout: Path, recording: Path) -> Summary:
    """`ecapture info` of the checkout itself: events and lost of a recording."""
    r = subprocess.run([PYTHON, "-m", "ecapture", "info", str(recording)], cwd=checkout,
                       capture_output=True, text=True, timeout=600)
    m = INFO_RE.search(r.stdout)
    if not m:
        return Summary()
    return Summary(int(m[1].replace(",", "")), int(m[2].replace(",", "")))


@dataclass
class Capture:
    """One capture process, by default `python -m ecapture ARGS` run in a checkout: its
    stderr read line by line (each line with the monotonic time it arrived), its stdout
    thrown away unless a file is given. ``argv`` runs something else (the minimal bcc
    program of saturation.py), which must also say "probes attached" on stderr."""

    checkout: Path
    args: list[str]
    argv: list[str] | None = None
    stdout_path: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    launched: float = 0.0
    attached_at: float | None = None
    lines: list[tuple[float, str]] = field(default_factory=list)
    _attached: threading.Event = field(default_factory=threading.Event)
    _reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def what(self) -> str:
        return " ".join(self.argv) if self.argv else f"ecapture ({self.checkout})"

    @property
    def stderr(self) -> str:
        return "".join(line for _, line in self.lines)

    def start(self, timeout: float = 180.0) -> float:
        """Launch and wait for the "probes attached" line; returns seconds from launch."""
        out = open(self.stdout_path, "wb") if self.stdout_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.launched = time.monotonic()
            self.proc = subprocess.Popen(
                self.argv or [PYTHON, "-m", "ecapture", *self.args], cwd=self.checkout,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE,
                start_new_session=True)
        finally:
            if not isinstance(out, int):  # a file we opened, not DEVNULL
                out.close()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = self.launched + timeout
        while not self._attached.wait(0.05):
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise RuntimeError(f"{self.what} exited with {self.proc.returncode} before "
                                   f"attaching:\n{self.stderr.strip()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.what} did not attach in {timeout:.0f} s:\n"
                                   f"{self.stderr.strip()}")
        assert self.attached_at is not None
        return self.attached_at - self.launched

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            now = time.monotonic()
            line = raw.decode("utf-8", "replace")
            self.lines.append((now, line))
            if ATTACHED in line and self.attached_at is None:
                self.attached_at = now
                self._attached.set()

    def stop(self, timeout: float = 300.0) -> str:
        """Ctrl-C, as a user would; the capture finishes writing what it drained. Returns
        its stderr. Killed (and said so in the returned text) if it takes over ``timeout``."""
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self.lines.append((time.monotonic(), f"[bench: killed after {timeout:.0f} s]\n"))
        if self._reader is not None:
            self._reader.join(10)
        return self.stderr

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@contextlib.contextmanager
def capture(checkout: Path, args: list[str], timeout: float = 180.0) -> Iterator[Capture]:
    """A running capture for the length of a with block; never left running after it."""
    cap = Capture(checkout, args)
    try:
        cap.start(timeout)
        yield cap
    finally:
        cap.stop()
        cap.kill()


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A throw-away self-signed certificate for 127.0.0.1 (the openssl CLI)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def fmt_int(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
                right: Sequence[bool] | None = None) -> None:
    """A plain text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    right = right or [i > 0 for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w)
                         for c, w, r in zip(row, widths, right, strict=True)).rstrip()

    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


def foreign_probes(own: Sequence[int] = ()) -> list[str]:
    """Other processes' uprobes and tracepoints (``bpftool perf show``), as "pid (comm)":
    a capture running elsewhere on the machine taxes every run of a benchmark, the
    uncaptured ones too. Empty if bpftool is missing."""
    try:
        out = subprocess.run(["bpftool", "perf", "show"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    pids = sorted({int(m[1]) for m in re.finditer(r"^pid (\d+) ", out, re.M)} - set(own))
    found = []
    for pid in pids:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        found.append(f"{pid} ({comm})")
    return found


class ForeignWatch:
    """Notes, for the table's footer, which runs had other processes' probes attached."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def check(self, run: str, own: Sequence[int] = ()) -> None:
        others = foreign_probes(own)
        note = f"{run}: other BPF probes attached by pid {', '.join(others)}"
        if others and note not in self.notes:
            self.notes.append(note)
