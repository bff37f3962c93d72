"""Helpers for the live tests: the programs they drive, and running ecapture around them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = Path(__file__).resolve().parent / "programs"

@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int
    log: list[dict[str, object]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_log(self, n: int, timeout: float = 10) -> list[dict[str, object]]:
        """Wait for the server's first n request lines."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while len(self.log) < n and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line:
                self.log.append(json.loads(line))
        return self.log


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 10) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


from ecapture.testing.plugin import ecapture_cmd  # noqa: E402  (re-exported for the tests)


def run_client(port: int, *args: str) -> list[dict[str, object]]:
    out = subprocess.run([sys.executable, str(PROGRAMS / "https_client.py"), str(port), *args],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    return [json.loads(line) for line in out.splitlines()]


def replay(path: Path, *args: str) -> str:
    return subprocess.run([*ecapture_cmd(), "replay", str(path), *args], check=True,
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "TZ": "UTC"}).stdout


def keylog_lines(path: Path) -> set[str]:
    """The lines of an SSLKEYLOGFILE, as a set: programs write them in their own order."""
    return {line for line in path.read_text().splitlines() if line and not line.startswith("#")}


def keylog_from(recording: Path | None, out: Path, *filters: str) -> set[str]:
    """``ecapture replay RECORDING -m keylog`` (with replay filters): the key log offline."""
    assert recording is not None
    subprocess.run([*ecapture_cmd(), "replay", str(recording), "-m", "keylog", "-k", str(out),
                    *filters], check=True, capture_output=True, cwd=ROOT)
    return keylog_lines(out)


@contextmanager
def in_process_capture(module: Any, record: Path) -> Iterator[Any]:
    """Run MODULE live in this process, recording to RECORD, for as long as the block runs;
    yields the LiveSession. For the paths that only another kernel takes: the test first
    makes the feature probe (ecapture.live.prereq) answer as that kernel would."""
    from ecapture.live.drain import Drain
    from ecapture.live.session import LiveSession
    from ecapture.metadata import build_metadata
    from ecapture.pipeline import bind
    from ecapture.record.writer import Writer
    from ecapture.sources import CaptureStats

    bindings = bind([module])
    session = LiveSession(module, bindings)
    session.init()
    session.start()
    meta = build_metadata([module], bindings, extra={"live": session.describe()})
    drain = Drain(session, Writer(record, meta), CaptureStats.for_metadata(meta))
    drain.start()
    try:
        yield session
        time.sleep(0.5)  # the last events reach the buffer after the workload's exit
    finally:
        drain.stop()
        drain.join()
        session.close()


def unprivileged_python(workdir: Path) -> list[str]:
    """A command prefix running the system python3 as nobody, with only ecapture and its
    pure-Python dependencies importable (copied under ``workdir``, readable by all): what a
    user without root and without bcc has. Our own interpreter may live under /root."""
    import shutil

    import construct
    import elftools
    import h11
    import hpack
    import hyperframe

    import ecapture

    site = workdir / "site"
    for pkg in (construct, elftools, h11, hpack, hyperframe, ecapture):
        dest = site / pkg.__name__
        if not dest.exists():
            shutil.copytree(Path(pkg.__file__).parent, dest,
                            ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chmod", "-R", "a+rX", str(workdir)], check=True)
    os.chmod(workdir, 0o755)
    # The system's newest python3.x: ecapture needs 3.11 (Ubuntu 22.04's python3 is 3.10).
    python = next(filter(None, (shutil.which(f"python3.{minor}", path="/usr/bin:/bin")
                                for minor in range(20, 10, -1))), None)
    setpriv = shutil.which("setpriv")
    assert python and setpriv, "needs /usr/bin/python3 and setpriv (util-linux)"
    return ["env", "-i", f"PYTHONPATH={site}", "TZ=UTC", "PATH=/usr/bin:/bin", setpriv,
            "--reuid=nobody", "--regid=nogroup", "--clear-groups", python]


def nghttpd(port: int, docroot: Path, cert: tuple[str, str]) -> subprocess.Popen[bytes]:
    """nghttp2's HTTP/2 server over TLS (OpenSSL), serving files from docroot."""
    return subprocess.Popen(["nghttpd", "-a", "127.0.0.1", "-d", str(docroot), str(port),
                             cert[1], cert[0]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def tshark_payloads(pcap: Path, port: int, keepends: bool = False) -> list[str]:
    """The decrypted application data tshark reads from a pcapng, given nothing but the
    file (its packets and the secrets in it), as lines: TLS on ``port``."""
    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed (scripts/setup.sh installs it)")
    out = subprocess.run(["tshark", "-r", str(pcap), "-d", f"tcp.port=={port},tls",
                          "-Y", "data", "-T", "fields", "-e", "data.data"],
                         check=True, capture_output=True, text=True).stdout
    data = b"".join(bytes.fromhex(v) for line in out.splitlines()
                    for v in line.split(",") if v)
    return data.decode(errors="replace").splitlines(keepends=keepends)


def ecap(*args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter, after ``prelude`` (used to take a prerequisite
    away, e.g. make bcc unimportable)."""
    code = f"import sys; {prelude}from ecapture.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def one_line_error(out: subprocess.CompletedProcess[str], needle: str) -> None:
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert needle in lines[0]


def waiting_shell(argv: list[str]) -> tuple[subprocess.Popen[str], int]:
    """An interactive shell on a pty (``script``) that has printed its pid and waits for
    more input on its stdin: a shell that is inside its line editor before a capture
    starts. The caller writes the rest, closes stdin and waits."""
    shell = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert shell.stdin is not None and shell.stdout is not None
    shell.stdin.write("echo SHELLPID=$$\n")
    shell.stdin.flush()
    for line in shell.stdout:  # the pty echoes "echo SHELLPID=$$" first: no digits
        if m := re.search(r"SHELLPID=(\d+)", line):
            return shell, int(m.group(1))
    raise AssertionError(f"{argv[0]}: the shell ended before printing its pid")
