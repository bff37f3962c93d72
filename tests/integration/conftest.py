"""Live tests: root + bcc + a real kernel, driving real programs on 127.0.0.1.

Without those they skip with the reason; with ECAPTURE_REQUIRE_LIVE=1 (CI) a test that
cannot run fails instead, so CI never passes by skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_helpers import PROGRAMS, ROOT, Capture, Server, _free_port, _wait_port, ecapture_cmd

REQUIRE_LIVE = os.environ.get("ECAPTURE_REQUIRE_LIVE") == "1"


def _live_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        from ecapture.live.bccload import load_bcc
        from ecapture.live.prereq import check_kernel_headers

        load_bcc()
        check_kernel_headers()
    except Exception as e:  # any missing prerequisite is a reason to skip
        return str(e)
    for tool in ("openssl", "curl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problem = _live_problem()
    if problem is None:
        return
    for item in items:
        if REQUIRE_LIVE:
            item.add_marker(pytest.mark.usefixtures("_live_required"))
        else:
            item.add_marker(pytest.mark.skip(reason=f"live test: {problem}"))


@pytest.fixture
def _live_required() -> None:
    pytest.fail(f"ECAPTURE_REQUIRE_LIVE=1 but live tests cannot run: {_live_problem()}")


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("cert")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem")], check=True, capture_output=True)
    return str(d / "cert.pem"), str(d / "key.pem")


@pytest.fixture
def https_server(cert: tuple[str, str]) -> Iterator[Server]:
    proc = subprocess.Popen([sys.executable, str(PROGRAMS / "https_server.py"), *cert],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("READY "), line
    yield Server(proc, int(line.split()[1]))
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def s_server(cert: tuple[str, str]) -> Iterator[int]:
    """openssl s_server -www: answers GET with a status page (over OpenSSL's SSL BIO)."""
    port = _free_port()
    proc = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}",
                             "-cert", cert[0], "-key", cert[1], "-www", "-quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_port(port)
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def capture(tmp_path: Path) -> Iterator[object]:
    started: list[Capture] = []

    def start(*args: str, record: bool = True) -> Capture:
        n = len(started)
        out, err = tmp_path / f"cap{n}.out", tmp_path / f"cap{n}.err"
        rec = tmp_path / f"cap{n}.ecap" if record else None
        cmd = [*ecapture_cmd(), "tls", *args] + (["--record", str(rec)] if rec else [])
        env = {**os.environ, "TZ": "UTC"}
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen(cmd, stdout=o, stderr=e, cwd=ROOT, env=env)
        cap = Capture(proc, out, err, rec)
        started.append(cap)
        deadline = time.monotonic() + 60
        while "probes attached" not in err.read_text():
            if proc.poll() is not None:
                pytest.fail(f"ecapture exited {proc.returncode}: {err.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail("ecapture did not attach within 60 s")
            time.sleep(0.05)
        return cap

    yield start
    for cap in started:
        if cap.proc.poll() is None:
            cap.proc.kill()
            cap.proc.wait()


