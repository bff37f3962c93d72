"""The pytest plugin that ships with ecapture (entry point ``pytest11``: ``ecapture``).

It gives a module's tests, ours and users', the same harness:

- ``recording`` loads a recording by name from the fixtures directory (ini option
  ``ecapture_recordings``, default ``fixtures/recordings``) and replays it through the pipeline;
- ``golden`` compares text with an expected file; ``--update-golden`` rewrites the file;
- ``live_capture`` runs a module live (the real CLI, in a subprocess) around a workload;
  with ``--regen-fixtures`` its ``save_fixture`` keeps the capture as a new fixture recording
  and writes the expected outputs beside it;
- markers ``live``, ``requires_root``, ``requires_kernel(">=5.8")`` and
  ``requires_lib("libssl.so.3")`` skip with the reason, and fail instead when
  ``ECAPTURE_REQUIRE_LIVE=1`` (CI must never pass by skipping);
- marker ``ecapture_module("tls")`` names the module a test exercises; it reaches junit XML
  as a property, where the kernel matrix reads it.

Nothing here needs root or bcc to import: the checks run per test.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

REQUIRE_LIVE_ENV = "ECAPTURE_REQUIRE_LIVE"
# Models whose expected outputs sit beside a fixture recording, by file suffix.
GOLDEN_MODELS = {"text": ".expected.txt", "json": ".expected.jsonl",
                 "keylog": ".expected.keylog"}

MARKERS = (
    "live: needs root, bcc and kernel headers (skipped without them; failed under "
    "ECAPTURE_REQUIRE_LIVE=1)",
    "requires_root: needs root",
    "requires_kernel(spec): needs a kernel version, e.g. '>=5.8' or '>=5.8,<7'",
    "requires_lib(*names): needs each library (soname like libssl.so.3, or a path)",
    "ecapture_module(name): the capture module a test exercises (for the kernel matrix)",
)


def require_live() -> bool:
    return os.environ.get(REQUIRE_LIVE_ENV) == "1"


def unavailable(reason: str) -> NoReturn:
    """Inside a live test: what it needs cannot be had here. Skips with the reason, and
    fails under ECAPTURE_REQUIRE_LIVE=1 as the plugin's own checks do."""
    if require_live():
        pytest.fail(f"{REQUIRE_LIVE_ENV}=1 but this test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


# -- requirement checks (pure where possible, so they can be unit tested) ------------------

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
    "==": operator.eq, "!=": operator.ne,
}


def release_version(release: str) -> tuple[int, int, int]:
    """'6.1.0-56-amd64' -> (6, 1, 0); '7.3' -> (7, 3, 0)."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not m:
        raise ValueError(f"not a kernel release: {release!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def kernel_satisfies(spec: str, release: str) -> bool:
    """Whether ``release`` meets every comma-separated clause of ``spec`` ('>=5.8,<7')."""
    have = release_version(release)
    for clause in spec.split(","):
        m = re.fullmatch(r"\s*(>=|<=|==|!=|>|<)\s*(\d+(?:\.\d+){0,2})\s*", clause)
        if not m:
            raise ValueError(f"bad kernel requirement {clause!r} (want e.g. '>=5.8')")
        want = tuple(int(n) for n in m.group(2).split("."))
        if not _OPS[m.group(1)](have[: len(want)], want):
            return False
    return True


@functools.cache  # the machine does not change during a session; asked once per test
def live_problem() -> str | None:
    """Why live capture cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    try:
        from ecapture.live.bccload import load_bcc
        from ecapture.live.prereq import check_kernel_headers

        load_bcc()
        check_kernel_headers()
    except Exception as e:  # any missing prerequisite is the reason
        return str(e)
    return None


@functools.cache  # each call runs ldconfig -p: once per set of names is enough
def library_problem(names: tuple[str, ...]) -> str | None:
    from ecapture.targets import find_library

    missing = [n for n in names
               if not (os.path.exists(n) if "/" in n else find_library([re.escape(n)]))]
    return f"library not found: {', '.join(missing)}" if missing else None


def item_problems(item: pytest.Item) -> list[str]:
    problems: list[str] = []
    if item.get_closest_marker("live") is not None:
        problem = live_problem()
        if problem:
            problems.append(f"live test: {problem}")
    elif item.get_closest_marker("requires_root") is not None and os.geteuid() != 0:
        problems.append("needs root")
    for mark in item.iter_markers("requires_kernel"):
        release = os.uname().release
        if not kernel_satisfies(mark.args[0], release):
            problems.append(f"needs kernel {mark.args[0]}, this is {release}")
    for mark in item.iter_markers("requires_lib"):
        problem = library_problem(tuple(mark.args))
        if problem:
            problems.append(problem)
    return problems


# -- hooks ---------------------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ecapture")
    group.addoption("--update-golden", action="store_true",
                    help="rewrite expected outputs from what the recordings replay to")
    group.addoption("--regen-fixtures", action="store_true",
                    help="live tests save their captures as fixture recordings and rewrite "
                         "the expected outputs beside them")
    parser.addini("ecapture_recordings", "fixture recordings directory, relative to rootdir",
                  default="fixtures/recordings")


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        mark = item.get_closest_marker("ecapture_module")
        if mark is not None:
            item.user_properties.append(("ecapture_module", mark.args[0]))


def pytest_runtest_setup(item: pytest.Item) -> None:
    problems = item_problems(item)
    if not problems:
        return
    reason = "; ".join(problems)
    if require_live():
        pytest.fail(f"{REQUIRE_LIVE_ENV}=1 but this test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


# -- recordings and goldens ----------------------------------------------------------------

def recordings_dir(config: pytest.Config) -> Path:
    return Path(config.rootpath) / str(config.getini("ecapture_recordings"))


@dataclass
class Replay:
    """A recording, replayed through the same Reader, bindings and pipeline as the CLI."""

    path: Path

    def events(self, parsed: bool = False) -> list[Any]:
        from ecapture.testing.replay import replay_events

        return replay_events(self.path, parsed=parsed)

    def text(self, model: str = "text", raw: bool = False) -> str:
        from ecapture.testing.replay import replay_text

        return replay_text(self.path, model=model, raw=raw)

    def expected(self, model: str = "text") -> Path:
        return self.path.with_suffix(GOLDEN_MODELS[model])


@pytest.fixture
def recording(request: pytest.FixtureRequest) -> Callable[[str], Replay]:
    """``recording("tls/curl_http11")``: a fixture recording by name (suffix optional)."""
    root = recordings_dir(request.config)

    def load(name: str) -> Replay:
        path = root / name
        if path.suffix != ".ecap":
            path = path.with_name(path.name + ".ecap")
        if not path.exists():
            pytest.fail(f"no recording {name!r} under {root}", pytrace=False)
        return Replay(path)

    return load


class Golden:
    def __init__(self, update: bool):
        self.update = update

    def check(self, actual: str, expected: Path | str) -> None:
        """Assert ``actual`` equals the file; with --update-golden, rewrite it first."""
        path = Path(expected)
        if self.update:
            path.write_text(actual)
        assert path.exists(), f"{path} is missing: run pytest --update-golden"
        assert actual == path.read_text(), f"output differs from {path.name}"


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Golden:
    return Golden(bool(request.config.getoption("--update-golden")))


# -- live capture --------------------------------------------------------------------------

@dataclass
class LiveCapture:
    """``ecapture <module> ...`` running in a subprocess, as a user runs it."""

    proc: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path
    record: Path | None
    config: pytest.Config

    def stop(self, sig: int = signal.SIGINT, timeout: float | None = None) -> str:
        """Stop it as a user would and return what it printed; it must exit 0."""
        time.sleep(0.5)  # let the last events arrive: the poll loop runs every 100 ms
        self.proc.send_signal(sig)
        timeout = STOP_TIMEOUT if timeout is None else timeout
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # Where it hangs is the one thing worth knowing: faulthandler (enabled by
            # the environment the capture started with) prints every thread's stack.
            self.proc.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            self.proc.kill()
            pytest.fail(f"ecapture did not exit within {timeout:.0f} s of signal {sig}; "
                        f"it said:\n{self.err_path.read_text()[-6000:]}")
        err = self.err_path.read_text()
        assert rc == 0, f"ecapture exited {rc}: {err}"
        return self.out_path.read_text()

    def replay(self) -> Replay:
        assert self.record is not None, "this capture was started with record=False"
        return Replay(self.record)

    def save_fixture(self, name: str, models: tuple[str, ...] = ("text", "json")) -> Path | None:
        """With --regen-fixtures, keep the recording as ``<recordings>/<name>.ecap`` and
        write each model's expected output beside it, from a replay. Otherwise do nothing:
        fixtures are only ever made by a live capture, never by hand."""
        if not self.config.getoption("--regen-fixtures"):
            return None
        assert self.record is not None, "this capture was started with record=False"
        target = recordings_dir(self.config) / f"{name}.ecap"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.record, target)
        target.chmod(0o644)  # a test fixture holds nobody's secrets
        replay = Replay(target)
        for model in models:
            replay.expected(model).write_text(replay.text(model))
        return target


def ecapture_cmd() -> list[str]:
    return [sys.executable, "-m", "ecapture"]


def _other_captures(own: int) -> str:
    """Other ecapture processes still alive, for a message: one left over from an earlier
    test slows start-up and takes the probes' CPU time."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ecapture" in argv[:3] and entry.name != str(os.getpid()):
            found.append(f"{entry.name}: {b' '.join(argv).decode(errors='replace').strip()}")
    return "; other ecapture processes: " + ", ".join(found) if found else ""


ATTACH_TIMEOUT = float(os.environ.get("ECAPTURE_ATTACH_TIMEOUT", "120"))
STOP_TIMEOUT = float(os.environ.get("ECAPTURE_STOP_TIMEOUT", "60"))


@pytest.fixture
def live_capture(request: pytest.FixtureRequest,
                 tmp_path: Path) -> Iterator[Callable[..., LiveCapture]]:
    """``live_capture("bash", "--some-option")`` starts the module, waits until its probes
    are attached and returns a LiveCapture; call ``.stop()`` after the workload. Recorded
    to a temporary .ecap unless ``record=False``. Killed at teardown if still running."""
    started: list[LiveCapture] = []

    def start(module: str, *args: str, record: bool = True) -> LiveCapture:
        n = len(started)
        out, err = tmp_path / f"cap{n}.out", tmp_path / f"cap{n}.err"
        rec = tmp_path / f"cap{n}.ecap" if record else None
        cmd = [*ecapture_cmd(), module, *args] + (["--record", str(rec)] if rec else [])
        # Its output goes to a file, as `ecapture tls > file` does for a user: with the
        # buffering Python gives a file, whatever the environment running the tests says.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen(cmd, stdout=o, stderr=e, cwd=request.config.rootpath,
                                    env={**env, "TZ": "UTC", "PYTHONFAULTHANDLER": "1"})
        cap = LiveCapture(proc, out, err, rec, request.config)
        started.append(cap)
        deadline = time.monotonic() + ATTACH_TIMEOUT
        while "probes attached" not in err.read_text():
            if proc.poll() is not None:
                pytest.fail(f"ecapture {module} exited {proc.returncode}: {err.read_text()}")
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"ecapture {module} did not attach within {ATTACH_TIMEOUT:.0f} s; "
                            f"it said: {err.read_text().strip() or '(nothing)'}"
                            f"{_other_captures(proc.pid)}")
            time.sleep(0.05)
        return cap

    yield start
    for cap in started:
        if cap.proc.poll() is None:
            cap.proc.kill()
            cap.proc.wait()
