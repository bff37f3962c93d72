"""Live tests: root + bcc + a real kernel, driving real programs on 127.0.0.1.

Without those they skip with the reason; with ECAPTURE_REQUIRE_LIVE=1 (CI) a test that
cannot run fails instead, so CI never passes by skipping (the ecapture pytest plugin's
``live`` marker does both).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from live_helpers import PROGRAMS, Server, _free_port, _wait_port

from ecapture.testing.plugin import LiveCapture


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test here is live: the plugin's ``live`` marker skips it without root, bcc or
    headers (fails under ECAPTURE_REQUIRE_LIVE=1). Tests name their module with
    ``ecapture_module``; the kernel matrix tabulates by it."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.live)


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
def capture(live_capture: Callable[..., LiveCapture]) -> Callable[..., LiveCapture]:
    """``capture(*args)``: the tls module running live (the plugin's live_capture)."""
    return lambda *args, record=True: live_capture("tls", *args, record=record)
