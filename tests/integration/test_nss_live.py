"""Live capture of NSS programs on 127.0.0.1: NSS's own test client and server (tstclnt and
selfserv, from libnss3-tools), each facing a Python/OpenSSL peer that reports its side of
every connection, or facing each other.

Ground truth: the exact bytes each side sent and received (tstclnt's own stdout, the
Python client's response body), the client ports the peers saw, and ss's view of the
sockets (process, fd and 4-tuple) while a connection is held open.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from live_helpers import (
    Server,
    _free_port,
    _wait_port,
    in_process_capture,
    run_client,
)

from ecapture.events import TlsData
from ecapture.live.prereq import has_ringbuf
from ecapture.testing.replay import replay_events

TSTCLNT = shutil.which("tstclnt") or "tstclnt"
SELFSERV = shutil.which("selfserv") or "selfserv"

pytestmark = [pytest.mark.ecapture_module("nss"),
              pytest.mark.requires_lib("libnspr4.so", "libssl3.so", TSTCLNT, SELFSERV)]

PRIME = 23
LOCAL = "127.0.0.1"
# What selfserv answers (cmd/selfserv: a fixed header, the request echoed, then this).
SELFSERV_HEADER = re.compile(rb"\AHTTP/1\.0 200 OK\r\n.*?\r\n\r\n", re.S)
SELFSERV_EOF = b"EOF\r\n\r\n\r\n"


def data_events(path: Path | None, pid: int | None = None) -> list[TlsData]:
    assert path is not None
    return [e for e in replay_events(path)
            if isinstance(e, TlsData) and (pid is None or e.pid == pid)]


@pytest.fixture(scope="session")
def nss_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An NSS database holding a self-signed server certificate, nicknamed "server"."""
    d = tmp_path_factory.mktemp("nssdb")
    noise = d / "noise"
    noise.write_bytes(bytes(range(256)))  # certutil's seed; the key is NSS's own random
    subprocess.run(["certutil", "-N", "-d", f"sql:{d}", "--empty-password"], check=True,
                   capture_output=True)
    subprocess.run(["certutil", "-S", "-s", "CN=localhost", "-n", "server", "-x",
                    "-t", "CT,C,C", "-d", f"sql:{d}", "-z", str(noise), "-k", "rsa",
                    "-g", "2048", "-v", "2"], check=True, capture_output=True)
    return f"sql:{d}"


@dataclass
class SelfServ:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid


@pytest.fixture
def selfserv(nss_db: str) -> Iterator[SelfServ]:
    """NSS's test server: reads one HTTP request per connection (PR_Read), answers it with
    PR_Writev and closes."""
    port = _free_port()
    proc = subprocess.Popen([SELFSERV, "-d", nss_db, "-n", "server", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_port(port)
    yield SelfServ(proc, port)
    proc.terminate()
    proc.wait(10)


def run_tstclnt(port: int, request: bytes, workdir: Path, name: str) -> tuple[int, bytes]:
    """Run tstclnt once: it reads ``request`` from stdin (PR_Read on a file), sends it with
    PR_Send, and copies what it receives (PR_Recv) to stdout with PR_Write, here a file.
    Returns its pid and that file's bytes."""
    req, out = workdir / f"{name}.req", workdir / f"{name}.out"
    req.write_bytes(request)
    # stdin a regular file: on a pipe, tstclnt 3.87 can spin forever once it reads EOF.
    with open(req, "rb") as stdin, open(out, "wb") as stdout:
        proc = subprocess.Popen([TSTCLNT, "-h", LOCAL, "-p", str(port), "-D", "-o", "-4"],
                                stdin=stdin, stdout=stdout, stderr=subprocess.DEVNULL)
        rc = proc.wait(30)
    assert rc == 0, f"tstclnt exited {rc}"
    return proc.pid, out.read_bytes()


def client_workload(port: int, workdir: Path) -> dict[int, tuple[str, bytes, bytes]]:
    """23 tstclnt runs, one request each: pid -> (path, request, what it received)."""
    runs = {}
    for i in range(PRIME):
        path = f"/nss-{i:02d}"
        request = f"GET {path} HTTP/1.0\r\n\r\n".encode()
        pid, received = run_tstclnt(port, request, workdir, f"c{i}")
        runs[pid] = (path, request, received)
    return runs


def check_client_workload(events: list[TlsData], runs: dict[int, tuple[str, bytes, bytes]],
                          server: Server) -> None:
    """Each run sent exactly its request with PR_Send and received exactly what it then
    wrote to its stdout file, on the 4-tuple the server logged. Its stdin and stdout are
    NSPR files read and written with PR_Read and PR_Write, the very functions hooked:
    neither may show up."""
    ports = {e["path"]: e["client"][1] for e in server.read_log(PRIME)}  # type: ignore[index]
    assert len(ports) == PRIME
    mine = [e for e in events if e.pid in runs]
    assert {e.pid for e in mine} == set(runs)
    assert len([e for e in mine if e.direction == "write"]) == PRIME
    for pid, (path, request, received) in runs.items():
        # tstclnt really wrote the response to its stdout file, through PR_Write.
        assert received.startswith(b"HTTP/1.1 200 OK") and received.endswith(
            f"hello {path}\n".encode())
        own = [e for e in mine if e.pid == pid]
        assert all(e.comm == "tstclnt" and e.tid == pid for e in own)
        assert [e.data for e in own if e.direction == "write"] == [request]
        # Every received byte once: none doubled by the PR_Write of the stdout file.
        assert b"".join(e.data for e in own if e.direction == "read") == received
        assert {e.func for e in own} == {"PR_Send", "PR_Recv"}
        for e in own:
            assert e.conn is not None and e.conn.kind == "connect", e
            assert e.fd >= 0 and e.fd == e.conn.fd
            assert (e.conn.local, e.conn.remote) == (f"{LOCAL}:{ports[path]}",
                                                     f"{LOCAL}:{server.port}")


@pytest.mark.parametrize("buffer", ["auto", "perf"])
def test_client_every_request_and_response_exact_with_tuples(
        live_capture, https_server: Server, tmp_path: Path, buffer: str) -> None:
    """23 tstclnt runs against the OpenSSL server (see check_client_workload)."""
    cap = live_capture("nss", "--raw", *(["--perf-buffer"] if buffer == "perf" else []))
    chosen = "ring" if buffer == "auto" and has_ringbuf() else "perf"
    assert f"({chosen} buffer)" in cap.err_path.read_text()
    runs = client_workload(https_server.port, tmp_path)
    cap.stop()
    check_client_workload(data_events(cap.record), runs, https_server)


def test_syscall_tracepoints_of_kernels_before_6_4(https_server: Server, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels before 6.4 (Debian 12's 6.1) have no sock:sock_{send,recv}_length: the
    family learns fds from the syscall tracepoints, which also see tstclnt's file I/O.
    The same workload, the same ground truth."""
    from ecapture.live import prereq
    from ecapture.modules.nss import NSSModule

    monkeypatch.setattr(prereq, "has_socket_tracepoints", lambda tracefs: False)
    module = NSSModule({"nspr": None, "pid": None, "uid": None})
    record = tmp_path / "syscalls.ecap"
    with in_process_capture(module, record) as session:
        assert session.describe()["socket_hooks"] == "syscalls"
        runs = client_workload(https_server.port, tmp_path)
    check_client_workload(data_events(record), runs, https_server)


def test_server_pid_filter_exact_count_and_tuples(live_capture, selfserv: SelfServ,
                                                  tmp_path: Path) -> None:
    """selfserv alone (-p), serving 23 Python clients and 2 tstclnt runs, another NSS
    program whose calls must not appear: each request read once with PR_Read, each answer
    written once with PR_Writev (three segments joined into one call), equal to what the
    client received, on the client port the client reported."""
    cap = live_capture("nss", "--raw", "--pid", str(selfserv.pid))
    paths = [f"/srv-{i:02d}" for i in range(PRIME)]
    results = run_client(selfserv.port, "get", *paths)
    others = [run_tstclnt(selfserv.port, f"GET /other-{i} HTTP/1.0\r\n\r\n".encode(),
                          tmp_path, f"o{i}") for i in range(2)]
    cap.stop()
    assert [r["status"] for r in results] == [200] * PRIME
    by_path = {r["path"]: r for r in results}
    server = f"{LOCAL}:{selfserv.port}"

    events = data_events(cap.record)
    assert {e.pid for e in events} == {selfserv.pid}
    assert all(e.comm == "selfserv" for e in events)
    reads = [e for e in events if e.direction == "read"]
    writes = [e for e in events if e.direction == "write"]
    assert sorted(e.data.split()[1].decode() for e in reads) == sorted(
        paths + ["/other-0", "/other-1"])
    assert len(writes) == PRIME + 2 and {e.func for e in writes} == {"PR_Writev"}
    assert {e.func for e in reads} == {"PR_Read"}
    for _, received in others:  # the tstclnt runs got their answers from it
        assert received.endswith(SELFSERV_EOF)
    for e in reads:
        path = e.data.split()[1].decode()
        assert e.conn is not None and e.conn.kind == "accept"
        assert e.fd >= 0 and e.fd == e.conn.fd
        assert e.conn.local == server
        if path in by_path:
            # selfserv echoes the request it read: the client's body starts with it.
            assert by_path[path]["body"] == e.data.decode() + SELFSERV_EOF.decode()
            assert e.conn.remote == f"{LOCAL}:{by_path[path]['local_port']}"
            answer = [w for w in writes if w.conn is not None
                      and w.conn.remote == e.conn.remote]
            assert len(answer) == 1
            header = SELFSERV_HEADER.match(answer[0].data)
            assert header is not None
            assert answer[0].data[header.end():] == e.data + SELFSERV_EOF
            assert answer[0].missing == 0
    cap.save_fixture("nss/selfserv")


def _ss(port: int) -> dict[tuple[str, int], tuple[int, str, str]]:
    """ss's view of the established sockets on a port: (comm, pid) -> (fd, local, remote).
    selfserv's sockets are IPv6 ones that accept IPv4: ss shows their IPv4-mapped
    addresses ([::ffff:127.0.0.1]:port), which ecapture shows as the IPv4 they are."""
    out = subprocess.run(["ss", "-HtnpO", "state", "established", f"( sport = :{port} or "
                          f"dport = :{port} )"], capture_output=True, text=True,
                         check=True).stdout
    found = {}
    for line in out.splitlines():
        fields = line.split()
        local, remote = (re.sub(r"^\[::ffff:([\d.]+)\]", r"\1", a) for a in fields[2:4])
        for comm, pid, fd in re.findall(r'\("([^"]+)",pid=(\d+),fd=(\d+)\)', line):
            found[(comm, int(pid))] = (int(fd), local, remote)
    return found


def test_fd_and_tuple_equal_ss_in_json(live_capture, selfserv: SelfServ,
                                       tmp_path: Path) -> None:
    """tstclnt against selfserv, both captured, the json model. The request lacks its
    final blank line, so selfserv keeps waiting and the connection stays open while ss
    names each side's process, fd and 4-tuple: the capture must say the same."""
    cap = live_capture("nss", "-m", "json", "--raw")
    request = b"GET /held HTTP/1.0\r\n"
    req = tmp_path / "held.req"
    req.write_bytes(request)
    with open(req, "rb") as stdin:
        client = subprocess.Popen([TSTCLNT, "-h", LOCAL, "-p", str(selfserv.port), "-D", "-o",
                                   "-4"], stdin=stdin, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    try:
        seen: dict[tuple[str, int], tuple[int, str, str]] = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            seen = _ss(selfserv.port)
            if {("tstclnt", client.pid), ("selfserv", selfserv.pid)} <= set(seen):
                break
            time.sleep(0.05)
        time.sleep(0.5)  # selfserv's PR_Read of the request has returned
        out = cap.stop()
    finally:
        client.kill()
        client.wait(10)
    assert ("tstclnt", client.pid) in seen and ("selfserv", selfserv.pid) in seen, seen
    objects = [json.loads(line) for line in out.splitlines()]
    data = [o for o in objects if o["type"] == "data"]
    for comm, pid, direction in (("tstclnt", client.pid, "write"),
                                 ("selfserv", selfserv.pid, "read")):
        fd, local, remote = seen[(comm, pid)]
        (event,) = [o for o in data if o["pid"] == pid]
        assert (event["comm"], event["direction"]) == (comm, direction)
        assert event["data"] == request.decode() and event["missing"] == 0
        assert (event["fd"], event["local"], event["remote"]) == (fd, local, remote)
