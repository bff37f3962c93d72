"""Run the live suite on the kernel this process runs on, and write what happened.

Used unchanged inside a local qemu guest, inside a Vagrant box, and on the host, so every
row of the matrix table comes from the same code. Writes into ``out``:

- ``junit.xml``: pytest's own, every test case with its ``ecapture_module`` property;
- ``sessions.jsonl``: one line per live session the tests started (ECAPTURE_SESSION_LOG),
  which says which buffer and which hooks really ran;
- ``kernel.log``: what the kernel logged during the run, one ``<priority>[seconds]
  message`` line per record (in a fresh guest, everything since boot; elsewhere, since the
  suite started);
- ``result.json``: the kernel, its features, the paths that ran, each test's outcome and
  the splats found in ``kernel.log``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from ecapture.testing.matrix import kernel_log

DEFAULT_SUITE = ("tests/integration",)


def kernel_features() -> dict[str, Any]:
    """What the kernel offers, detected the same way a live session detects it."""
    from ecapture.live import prereq

    features: dict[str, Any] = {"release": platform.release(), "machine": platform.machine(),
                                "btf": os.path.exists("/sys/kernel/btf/vmlinux")}
    try:
        features["ringbuf"] = prereq.has_ringbuf()
        features["kprobes"] = prereq.has_kprobes()
    except Exception as e:  # not root: the suite will say so per test
        features["error"] = str(e)
    return features


def parse_junit(path: Path) -> list[dict[str, Any]]:
    """Each test case: id, module (from its ecapture_module property), outcome, message."""
    tests: list[dict[str, Any]] = []
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                first = (node.get("message") or "").strip().splitlines()[:1]
                message = first[0] if first else ""
                break
        tests.append({"id": f"{case.get('classname')}::{case.get('name')}",
                      "module": props.get("ecapture_module") or "other",
                      "outcome": outcome, "message": message[:300],
                      "time": float(case.get("time") or 0)})
    return tests


def read_sessions(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def kernel_log_mark(since: Literal["boot", "start"]) -> int | str:
    """Where this run's kernel log begins: a /dev/kmsg sequence number, or why the log
    cannot be read."""
    if since == "boot":
        return -1
    try:
        return kernel_log.mark()
    except OSError as e:
        return f"cannot read {kernel_log.KMSG}: {e.strerror or e}"


def collect_kernel_log(out: Path, start: int | str, since: str,
                       read: Callable[[int], tuple[str, int]] = kernel_log.read_since,
                       ) -> dict[str, Any]:
    """Save the run's kernel log as ``kernel.log`` and say what splats it holds. ``read``
    is :func:`kernel_log.read_since`; tests hand in a recorded log instead."""
    if isinstance(start, str):
        return {"error": start}
    try:
        text, lost = read(start)
    except OSError as e:
        return {"error": f"cannot read {kernel_log.KMSG}: {e.strerror or e}"}
    (out / "kernel.log").write_text(text)
    return {"file": "kernel.log", "since": since, "lost": lost,
            **kernel_log.scan(text).to_json()}


def run(out: Path, label: str, root: Path, suite: tuple[str, ...] = DEFAULT_SUITE,
        pytest_args: tuple[str, ...] = (), python: str = sys.executable,
        kernel_log_since: Literal["boot", "start"] = "start") -> dict[str, Any]:
    """Run the suite and write the result files. ``kernel_log_since="boot"`` in a guest
    booted for this run alone: its whole log is this run's, boot included."""
    out.mkdir(parents=True, exist_ok=True)
    junit, sessions = out / "junit.xml", out / "sessions.jsonl"
    for stale in (junit, sessions, out / "kernel.log"):
        stale.unlink(missing_ok=True)
    env = {**os.environ, "ECAPTURE_SESSION_LOG": str(sessions),
           "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH"))
                                         if p),
           "ECAPTURE_REQUIRE_LIVE": os.environ.get("ECAPTURE_REQUIRE_LIVE", "1"),
           # Under TCG, with another guest beside it, bcc's compile alone can take two
           # minutes: more than the plugin's default wait for "probes attached".
           "ECAPTURE_ATTACH_TIMEOUT": os.environ.get("ECAPTURE_ATTACH_TIMEOUT", "600"),
           # A stop that takes about a second on the host took over a minute in a guest's
           # first test: the output process starts there cold.
           "ECAPTURE_STOP_TIMEOUT": os.environ.get("ECAPTURE_STOP_TIMEOUT", "600"),
           # The tree is read-only here, so without this every ecapture process (two per
           # capture) compiled every module from source again.
           "PYTHONPYCACHEPREFIX": os.environ.get("PYTHONPYCACHEPREFIX",
                                                 os.path.join(tempfile.gettempdir(),
                                                              "ecapture-pycache"))}
    # -p no:cacheprovider: a guest sees the source tree read-only.
    cmd = [python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE",
           f"--junitxml={junit}", "-o", "junit_suite_name=" + label, *suite, *pytest_args]
    log_start = kernel_log_mark(kernel_log_since)
    started = time.monotonic()
    with open(out / "pytest.log", "wb") as log:
        rc = subprocess.run(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL).returncode
    result: dict[str, Any] = {
        "label": label, "features": kernel_features(), "pytest_rc": rc,
        "seconds": round(time.monotonic() - started, 1),
        "sessions": read_sessions(sessions),
        "tests": parse_junit(junit) if junit.exists() else [],
        "kernel_log": collect_kernel_log(out, log_start, kernel_log_since),
    }
    if not junit.exists():
        result["error"] = f"pytest exited {rc} without a junit report (see pytest.log)"
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
