"""TLS secrets live, against ground truth: the key logs that curl, Python clients and a
Python server write themselves (SSLKEYLOGFILE / keylog_filename). Ours must contain every
line theirs does, TLS 1.2 and 1.3, watching the client or the server; live, and offline
from the recording."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_helpers import PROGRAMS, Server, keylog_from, keylog_lines

from ecapture.events import KeyLogEntry
from ecapture.testing.replay import replay_events

pytestmark = [pytest.mark.ecapture_module("tls"), pytest.mark.requires_lib("libssl.so.3")]


@pytest.fixture
def keyed_server(cert: tuple[str, str], tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    log = tmp_path / "server-keys.log"
    proc = subprocess.Popen([sys.executable, str(PROGRAMS / "https_server.py"), *cert,
                             str(log)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("READY "), line
    yield Server(proc, int(line.split()[1])), log
    proc.terminate()
    proc.wait(10)


@pytest.mark.parametrize("tls", ["1.3", "1.2"])
def test_curl_keys_client_and_server_side(capture, keyed_server, tmp_path: Path,
                                          tls: str) -> None:
    server, server_log = keyed_server
    curl_log = tmp_path / "curl-keys.log"
    cap = capture()
    for i in range(3):
        subprocess.run(["curl", "-sk", "--tls-max", tls, f"--tlsv{tls}",
                        f"https://127.0.0.1:{server.port}/k{i}"], check=True,
                       capture_output=True, timeout=30,
                       env={**os.environ, "SSLKEYLOGFILE": str(curl_log)})
    cap.stop()
    theirs = keylog_lines(curl_log)
    label = "CLIENT_RANDOM" if tls == "1.2" else "CLIENT_TRAFFIC_SECRET_0"
    assert sum(1 for line in theirs if line.startswith(label)) == 3
    assert cap.record is not None
    # Watching only the client (curl), offline from the recording: line for line.
    assert keylog_from(cap.record, tmp_path / "ours-curl.log", "--comm", "curl") == theirs
    # Watching only the server: its own key log is the ground truth there.
    assert keylog_from(cap.record, tmp_path / "ours-server.log", "--pid",
                       str(server.pid)) == keylog_lines(server_log)
    assert keylog_lines(server_log) == theirs  # both ends of the same three connections


def test_python_client_keys_live_keylog_model(capture, keyed_server, tmp_path: Path) -> None:
    server, _ = keyed_server
    client_log = tmp_path / "py-keys.log"
    ours = tmp_path / "ours.log"
    cap = capture("-m", "keylog", "-k", str(ours), record=False)
    subprocess.run([sys.executable, str(PROGRAMS / "https_client.py"), str(server.port),
                    "get", "/a", "/b"], check=True, capture_output=True, timeout=60,
                   env={**os.environ, "SSLKEYLOGFILE": str(client_log)})
    cap.stop()
    theirs = keylog_lines(client_log)
    assert len([line for line in theirs if line.startswith("EXPORTER_SECRET")]) == 2
    # The summary says how many lines the model wrote: the file's, the two connections'.
    written = len(ours.read_text().splitlines())
    assert f"keylog: {written:,} lines written to {ours}" in cap.err_path.read_text()
    assert theirs <= keylog_lines(ours)
    assert oct(ours.stat().st_mode & 0o777) == "0o600"


def test_key_events_are_recorded(capture, keyed_server) -> None:
    server, server_log = keyed_server
    cap = capture()
    subprocess.run(["curl", "-sk", f"https://127.0.0.1:{server.port}/r"], check=True,
                   capture_output=True, timeout=30)
    cap.stop()
    secrets = [e for e in replay_events(cap.record) if isinstance(e, KeyLogEntry)]
    assert "curl" in {s.comm for s in secrets}
    assert server.pid in {s.pid for s in secrets}
    assert len({s.client_random for s in secrets}) == 1  # one connection, seen from both ends
    assert {s.line for s in secrets} >= keylog_lines(server_log)
