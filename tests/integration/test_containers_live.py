"""Live capture of processes whose libssl is another file than the host's: "containers"
built with unshare (a mount namespace with a copy of libssl bind-mounted over the system
path, and a pid namespace), and one real podman container.

Ground truth: each server's own log of its clients' addresses, each client's own view of
its socket, and each namespace's inode as /proc/PID/ns/mnt names it. Every request of a
prime-count workload must be captured on the container's side, with its 4-tuple and the
container's mount namespace, in the recording and in what replay shows.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from live_helpers import PROGRAMS, Server, replay, run_client

from ecapture.testing.containers import (
    Container,
    container,
    docker_container,
    host_library,
    missing_docker,
    missing_tools,
    working_engine,
)
from ecapture.testing.plugin import LiveCapture, unavailable

pytestmark = [pytest.mark.ecapture_module("tls"), pytest.mark.requires_lib("libssl.so.3")]

PRIME = 23
OTHER_PRIME = 29
SYSTEM_LIBSSL = str(host_library("libssl.so.3")) if not missing_tools() else ""


@pytest.fixture(autouse=True)
def _namespaces() -> None:
    if reason := missing_tools():
        unavailable(f"cannot build namespace containers: {reason}")


def our_mntns() -> int:
    return os.stat("/proc/self/ns/mnt").st_ino


def server_in(box: Container, cert: tuple[str, str]) -> tuple[Server, int]:
    """The live tests' HTTPS server (Python's ssl: libssl) inside ``box``, and its host pid."""
    proc = box.popen([sys.executable, str(PROGRAMS / "https_server.py"), *cert],
                     stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("READY "), line
    return Server(proc, int(line.split()[1])), box.host_pid(proc)


def records(path: Path | None, *args: str) -> list[dict[str, Any]]:
    """The json model's objects from replaying ``path``."""
    assert path is not None
    return [json.loads(line) for line in replay(path, "-m", "json", *args).splitlines()]


def exchanges(objs: list[dict[str, Any]], role: str, prefix: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["type"] == "http" and o["role"] == role
            and o["request"]["path"].startswith(prefix)]


def attached_line(cap: LiveCapture, box: Container, users: str) -> str:
    """The capture's line for the file ``box`` maps at the system's libssl path. Those
    lines follow the "probes attached" one that the capture fixture waits for."""
    # The path as the container knows it: the system's, or its /lib alias (--pid's lookup
    # goes by the linker cache's names).
    pattern = (rf"attached \S*/libssl\.so\.3 \(OpenSSL 3[^;]*; mntns {box.mntns}, "
               rf"{users}\)")
    found = _wait_for(cap.err_path, pattern)
    assert found, f"no line like {pattern!r} in:\n{cap.err_path.read_text()}"
    return found[0]


def check_server_side(objs: list[dict[str, Any]], pid: int, port: int, box: Container,
                      results: list[dict[str, Any]], prefix: str) -> None:
    """Every request ``results`` lists, seen by the server in ``box``: exactly once each,
    with the client's own port and the container's namespace."""
    local_port = {r["path"]: r["local_port"] for r in results}
    assert [r["status"] for r in results] == [200] * len(results)
    seen = [o for o in exchanges(objs, "server", prefix) if o["pid"] == pid]
    assert sorted(o["request"]["path"] for o in seen) == sorted(local_port)
    for o in seen:
        assert o["client"] == f"127.0.0.1:{local_port[o['request']['path']]}"
        assert o["server"] == f"127.0.0.1:{port}"
        assert o["mntns"] == box.mntns
        assert o["response"]["status"] == 200


def test_long_lived_server_in_a_container(capture, cert, tmp_path: Path) -> None:
    with container(tmp_path / "box") as box:
        server, pid = server_in(box, cert)
        assert box.library_inode("libssl.so.3") != _inode(SYSTEM_LIBSSL)
        cap = capture()
        attached_line(cap, box, "1 process")
        paths = [f"/in-box-{i:02d}" for i in range(PRIME)]
        results = run_client(server.port, "get", *paths)
        text = cap.stop()
        log = server.read_log(PRIME)
    assert sorted(entry["path"] for entry in log) == paths  # type: ignore[type-var]
    objs = records(cap.record)
    check_server_side(objs, pid, server.port, box, results, "/in-box-")
    # The client ran on the host, with the host's libssl: the same capture, both sides.
    clients = exchanges(objs, "client", "/in-box-")
    assert len(clients) == PRIME
    assert {o["mntns"] for o in clients} == {our_mntns()}
    # What a user reads: the container's side carries its mark, the host's does not.
    marked = [line for line in text.splitlines() if line.startswith("=== ")
              and f"pid {pid} " in line]
    assert len(marked) == PRIME
    assert all(f"[mntns {box.mntns}" in line for line in marked)
    assert not any("[mntns" in line for line in text.splitlines()
                   if line.startswith("=== ") and "(client side)" in line)


def test_short_lived_curl_in_containers_started_after_the_capture(
        capture, https_server: Server, tmp_path: Path) -> None:
    """PRIME containers made after the capture started, each with its own copy of libssl,
    and in each a curl run once: a process that lives a few ms. The container's first
    process (its init's exec) has its copy attached; the capture says so on its output,
    and curl runs once it has."""
    cap = capture()
    port = https_server.port
    boxes: dict[int, int] = {}  # mntns -> index
    # Each container lives to the end: a namespace's inode is reused once it is gone.
    with contextlib.ExitStack() as alive:
        for i in range(PRIME):
            box = alive.enter_context(container(tmp_path / f"box{i}"))
            boxes[box.mntns] = i
            _wait_attached(cap, box.mntns)
            done = box.run(["curl", "-sk", f"https://127.0.0.1:{port}/short-{i:02d}"],
                           capture_output=True, text=True, timeout=30)
            assert done.returncode == 0 and done.stdout == f"hello /short-{i:02d}\n"
    cap.stop()
    log = https_server.read_log(PRIME)
    client_port = {str(e["path"]): e["client"][1] for e in log}  # type: ignore[index]
    assert len(boxes) == PRIME  # no namespace inode reused while another lived
    objs = records(cap.record)
    curls = [o for o in exchanges(objs, "client", "/short-") if o["comm"] == "curl"]
    assert sorted(o["request"]["path"] for o in curls) == sorted(client_port)
    for o in curls:
        path = o["request"]["path"]
        assert o["client"] == f"127.0.0.1:{client_port[path]}"
        assert o["server"] == f"127.0.0.1:{port}"
        assert boxes[o["mntns"]] == int(path.rsplit("-", 1)[1])
    # Each copy attached once, late, and the recording says when, after which process.
    late = [o for o in objs if o["type"] == "attached" and o["mntns"] in boxes]
    assert sorted(o["mntns"] for o in late) == sorted(boxes), json.dumps(late[:6], indent=1)
    for o in late:
        # After one of the container's set-up processes (sh, mount), never curl.
        assert o["refused"] is None and o["comm"] != "curl"
        assert o["path"].endswith("/libssl.so.3") and 0 < o["after_ms"] < 1000
    summary = cap.err_path.read_text()
    assert re.search(r"ATTACHED \S+libssl\.so\.3 \(OpenSSL 3[^)]*\) in mntns \d+ [\d.]+ ms "
                     r"after \S+ pid \d+ started", summary), summary


def test_two_containers_with_two_copies_at_once(capture, cert, tmp_path: Path) -> None:
    with container(tmp_path / "a") as a, container(tmp_path / "b") as b:
        assert a.library_inode("libssl.so.3") != b.library_inode("libssl.so.3")
        server_a, pid_a = server_in(a, cert)
        server_b, pid_b = server_in(b, cert)
        cap = capture()
        assert attached_line(cap, a, "1 process") != attached_line(cap, b, "1 process")
        results_a = run_client(server_a.port, "get", *[f"/a-{i:02d}" for i in range(PRIME)])
        results_b = run_client(server_b.port, "get",
                               *[f"/b-{i:02d}" for i in range(OTHER_PRIME)])
        cap.stop()
    objs = records(cap.record)
    check_server_side(objs, pid_a, server_a.port, a, results_a, "/a-")
    check_server_side(objs, pid_b, server_b.port, b, results_b, "/b-")
    # Replay keeps one container's events with --mntns; the cgroup filter takes the
    # processes' own cgroup path.
    only_a = records(cap.record, "--mntns", str(a.mntns))
    assert {o["mntns"] for o in only_a if "mntns" in o} == {a.mntns}
    check_server_side(only_a, pid_a, server_a.port, a, results_a, "/a-")
    assert not exchanges(only_a, "server", "/b-") and not exchanges(only_a, "client", "/")
    host_only = records(cap.record, "--mntns", str(our_mntns()))
    assert len(exchanges(host_only, "client", "/a-")) == PRIME
    assert not exchanges(host_only, "server", "/")


def test_pid_of_a_container_init_covers_its_later_children(capture, cert,
                                                           tmp_path: Path) -> None:
    """--pid of the namespace's pid 1 (a shell that maps no libssl): the capture takes the
    libssl of the container's file system, and follows the processes init starts after."""
    with container(tmp_path / "box") as box:
        cap = capture("--pid", str(box.pid))
        attached_line(cap, box, "no process yet")
        log = tmp_path / "server.log"
        # exec: the server is init's child itself, not a shell's
        box.spawn(f"exec {sys.executable} {PROGRAMS / 'https_server.py'} {cert[0]} {cert[1]} "
                  f"> {log}")
        port = _ready_port(log)
        pid = _child_running(box.pid, "https_server.py")
        results = run_client(port, "get", *[f"/child-{i:02d}" for i in range(PRIME)])
        cap.stop()
    objs = records(cap.record)
    check_server_side(objs, pid, port, box, results, "/child-")
    # The client ran on the host, outside --pid's tree: not captured.
    assert not exchanges(objs, "client", "/")


def test_podman_container(capture, https_server: Server, tmp_path: Path) -> None:
    """A real engine container (podman, image imported from host files): its libssl is a
    file of podman's storage. curl runs in it, started after the capture, PRIME times."""
    if reason := missing_docker(working_engine()):
        unavailable(f"podman cannot run containers here: {reason} "
                    "(apt-get install podman runc)")
    with docker_container(tmp_path / "podman") as box:
        cap = capture()
        for i in range(PRIME):
            done = box.run(["curl", "-sk", f"https://127.0.0.1:{https_server.port}/pod-{i:02d}"],
                           capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
        cap.stop()
        mntns = box.mntns
    log = https_server.read_log(PRIME)
    client_port = {str(e["path"]): e["client"][1] for e in log}  # type: ignore[index]
    objs = records(cap.record)
    curls = [o for o in exchanges(objs, "client", "/pod-") if o["comm"] == "curl"]
    assert sorted(o["request"]["path"] for o in curls) == sorted(client_port)
    for o in curls:
        assert o["client"] == f"127.0.0.1:{client_port[o['request']['path']]}"
        assert o["mntns"] == mntns
        assert o["cgroup"] and o["cgroup"] != "/"
    # The engine's own cgroup for the container: replay --cgroup keeps exactly these.
    cgroups = {o["cgroup"] for o in curls}
    assert len(cgroups) == 1
    (cgroup,) = cgroups
    only = exchanges(records(cap.record, "--cgroup", cgroup), "client", "/")
    assert sorted(o["request"]["path"] for o in only) == sorted(client_port)


def _inode(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _child_running(parent: int, needle: str, timeout: float = 10.0) -> int:
    """The host pid of a child of ``parent`` whose command line contains ``needle``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if needle.encode() in cmdline:
                return int(child)
        time.sleep(0.02)
    raise AssertionError(f"no child of {parent} runs {needle}")


def _wait_for(path: Path, pattern: str, timeout: float = 10.0) -> re.Match[str] | None:
    """The first match of ``pattern`` in the file ``path`` (which a process is writing),
    as soon as there is one; None when ``timeout`` seconds passed first."""
    deadline = time.monotonic() + timeout
    while True:
        if path.exists() and (found := re.search(pattern, path.read_text())):
            return found
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def _wait_attached(cap: LiveCapture, mntns: int) -> None:
    """Until the capture's text output says it attached to a file in ``mntns``."""
    if not _wait_for(cap.out_path, rf"(?<!NOT )ATTACHED \S+ \([^)]*\) in mntns {mntns} "):
        raise AssertionError(f"no ATTACHED line for mntns {mntns} in:\n"
                             f"{cap.out_path.read_text()}\n"
                             f"the capture's stderr:\n{cap.err_path.read_text()}")


def _ready_port(log: Path) -> int:
    """The port in the "READY <port>" line a server writes to ``log``."""
    found = _wait_for(log, r"\AREADY (\d+)")
    assert found, f"the server wrote no READY line to {log}"
    return int(found[1])
