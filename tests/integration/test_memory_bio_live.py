"""Connections of libraries driven over memory buffers (node's TLS: the socket I/O happens
outside SSL_read/SSL_write), checked against the programs' own view of their sockets: every
data event carries its 4-tuple, on both sides, with either way of watching socket I/O."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_helpers import PROGRAMS, in_process_capture

from ecapture.events import TlsData
from ecapture.testing.replay import replay_events

NODE = shutil.which("node") or shutil.which("nodejs")
PRIME = 23

pytestmark = [
    pytest.mark.ecapture_module("tls"),
    pytest.mark.requires_lib(NODE or "node"),
]


@pytest.fixture
def node_server(cert: tuple[str, str]) -> Iterator[tuple[subprocess.Popen[str], int]]:
    assert NODE
    proc = subprocess.Popen([NODE, str(PROGRAMS / "node_tls.js"), "server", *cert],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("READY "), line
    yield proc, int(line.split()[1])
    proc.terminate()
    proc.wait(10)


def _libssl_of_node() -> str:
    """node's OpenSSL: in its executable (linked statically) or a libssl it loads."""
    from ecapture.targets import elf_symbols, needed_libraries

    assert NODE
    exe = os.path.realpath(NODE)
    if "SSL_write" in elf_symbols(exe):
        return exe
    from ecapture.targets import find_library

    for needed in needed_libraries(exe):
        if needed.startswith("libnode"):
            found = find_library([needed.replace(".", r"\.")])
            if found:
                return found
    found = find_library([r"libssl\.so\.3"])
    assert found, "node links no OpenSSL that can be found"
    return found


@pytest.mark.parametrize("hooks", ["sockets", "syscalls"])
@pytest.mark.parametrize("keep", [False, True], ids=["conn-per-request", "keep-alive"])
def test_node_every_event_has_its_tuple(node_server: tuple[subprocess.Popen[str], int],
                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        hooks: str, keep: bool) -> None:
    """A connection per request also reuses freed SSL objects at the same address: the
    tuple of the connection before must not stick to them."""
    from ecapture.live import prereq
    from ecapture.modules.openssl import OpenSSLModule

    if hooks == "syscalls":
        monkeypatch.setattr(prereq, "has_socket_tracepoints", lambda tracefs: False)
    elif not prereq.has_socket_tracepoints(prereq.tracefs()):
        pytest.skip("this kernel has no sock:sock_send_length (Linux 6.4+)")
    server, port = node_server
    module = OpenSSLModule({"libssl": _libssl_of_node(), "pid": None, "uid": None,
                            "ifname": None})
    record = tmp_path / "node.ecap"
    with in_process_capture(module, record):
        assert NODE
        out = subprocess.run([NODE, str(PROGRAMS / "node_tls.js"), "client", str(port),
                              str(PRIME), *(["keep"] if keep else [])],
                             check=True, capture_output=True, text=True, timeout=120).stdout
    local = {r["path"]: r["local_port"] for r in map(json.loads, out.splitlines())}
    assert len(local) == PRIME
    server_end = f"127.0.0.1:{port}"
    events = [e for e in replay_events(record) if isinstance(e, TlsData) and e.comm == "node"]
    requests = [e for e in events if e.data.startswith(b"GET /node-")]
    # Before 6.4 a server that accepts without asking for the peer's address (libuv does)
    # is told its socket by the task's file table: a connection per request reuses its fd
    # at once, and a lookup in /proc when the event is drained would find the next one.
    for direction, kind in (("write", "connect"), ("read", "accept")):
        mine = [e for e in requests if e.direction == direction]
        assert sorted(e.data.split()[1].decode() for e in mine) == sorted(local), direction
        for e in mine:
            client = f"127.0.0.1:{local[e.data.split()[1].decode()]}"
            assert e.conn is not None, (direction, e.pid, e.fd)
            assert e.conn.kind == kind
            ends = (e.conn.local, e.conn.remote)
            assert ends == ((client, server_end) if kind == "connect" else (server_end, client))
    responses = [e for e in events if e.data.startswith(b"HTTP/1.1 200")]
    assert len(responses) == 2 * PRIME  # written by the server, read by the client
    assert all(e.conn is not None for e in responses)
