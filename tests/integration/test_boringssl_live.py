"""The boringssl module live, against ground truth: BoringSSL's own bssl tool as server and
client on 127.0.0.1 exchanging a known workload (23 lines each way), both programs' own
key logs (SSLKEYLOGFILE), their sockets as /proc shows them, and tshark decrypting our
pcapng; TLS 1.3 and TLS 1.2."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from live_helpers import ROOT, _free_port, keylog_from, keylog_lines, tshark_payloads

from ecapture.events import TlsData
from ecapture.modules.boringssl import find_boringssl
from ecapture.testing.replay import replay_events

BSSL = shutil.which("bssl-tool") or "bssl-tool"
pytestmark = [pytest.mark.ecapture_module("boringssl"),
              pytest.mark.requires_lib(find_boringssl() or "BoringSSL's libssl.so.0")]

PRIME = 23
PINGS = [f"ping {i:02d}" for i in range(PRIME)]  # client -> server
PONGS = [f"pong {i:02d}" for i in range(PRIME)]  # server -> client
VERSIONS = {"1.3": "tls1.3", "1.2": "tls1.2"}


@dataclass
class Exchange:
    server_pid: int
    client_pid: int
    port: int
    server_fd: int  # the accepted socket, as /proc/<server>/fd shows it
    client_fd: int
    client_port: int  # the client's local port: what the server saw as its peer
    server_keys: Path
    client_keys: Path


def _listening(port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
                    return True
    return False


def _tcp_sockets(pid: int) -> dict[int, tuple[int, int]]:
    """fd -> (local port, remote port) of the established TCP sockets of a process."""
    inodes: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes[target[8:-1]] = int(fd)
    found: dict[int, tuple[int, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[9] in inodes and fields[3] == "01":
                    local, remote = (int(a.split(":")[1], 16) for a in fields[1:3])
                    found[inodes[fields[9]]] = (local, remote)
    return found


def ping_pong(client: subprocess.Popen[bytes], server: subprocess.Popen[bytes]) -> None:
    """The known workload: the client types PINGS, the server PONGS, each reads the other's
    lines whole (bssl passes its stdin through and prints what it reads)."""
    assert client.stdin is not None and server.stdin is not None
    client.stdin.write("".join(f"{line}\n" for line in PINGS).encode())
    client.stdin.flush()
    server.stdin.write("".join(f"{line}\n" for line in PONGS).encode())
    server.stdin.flush()
    assert _read_lines(server, PRIME) == PINGS
    assert _read_lines(client, PRIME) == PONGS


def _read_lines(proc: subprocess.Popen[bytes], n: int, timeout: float = 20) -> list[str]:
    assert proc.stdout is not None
    fd, buf = proc.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while buf.count(b"\n") < n and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
    return buf.decode().splitlines()


@pytest.fixture
def exchange(cert: tuple[str, str], tmp_path: Path) -> Iterator[Callable[[str], Exchange]]:
    """``exchange(tls)``: a bssl server and client exchange PINGS and PONGS, then close."""
    procs: list[subprocess.Popen[bytes]] = []

    def run(tls: str) -> Exchange:
        port = _free_port()
        keys = {side: tmp_path / f"{side}-{tls}-keys.log" for side in ("server", "client")}
        version = ["-min-version", VERSIONS[tls], "-max-version", VERSIONS[tls]]
        server = subprocess.Popen(
            [BSSL, "server", "-accept", str(port), "-cert", cert[0], "-key", cert[1],
             *version], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env={**os.environ, "SSLKEYLOGFILE": str(keys["server"])})
        procs.append(server)
        deadline = time.monotonic() + 10
        while not _listening(port):
            assert time.monotonic() < deadline, "bssl server did not listen"
            time.sleep(0.05)
        client = subprocess.Popen(
            [BSSL, "client", "-connect", f"127.0.0.1:{port}", *version],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**os.environ, "SSLKEYLOGFILE": str(keys["client"])})
        procs.append(client)
        ping_pong(client, server)
        ((client_fd, (client_port, _)),) = _tcp_sockets(client.pid).items()
        ((server_fd, (_, peer_port)),) = _tcp_sockets(server.pid).items()
        assert peer_port == client_port
        for proc in (client, server):
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(10)
        return Exchange(server.pid, client.pid, port, server_fd, client_fd, client_port,
                        keys["server"], keys["client"])

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def plaintext(events: list[TlsData], pid: int, direction: str) -> list[str]:
    mine = [e for e in events if e.pid == pid and e.direction == direction]
    return b"".join(e.data for e in mine).decode().splitlines()


@pytest.mark.parametrize("buffer", ["auto", "perf"])
def test_both_directions_exact_with_fds_and_tuples(live_capture, exchange,
                                                   buffer: str) -> None:
    cap = live_capture("boringssl", *(["--perf-buffer"] if buffer == "perf" else []))
    ex = exchange("1.3")
    text = cap.stop()
    events = [e for e in replay_events(cap.record) if isinstance(e, TlsData)]
    # Every line of the workload, each way, seen from both ends, in order.
    assert plaintext(events, ex.client_pid, "write") == PINGS
    assert plaintext(events, ex.server_pid, "read") == PINGS
    assert plaintext(events, ex.server_pid, "write") == PONGS
    assert plaintext(events, ex.client_pid, "read") == PONGS
    client, server = f"127.0.0.1:{ex.client_port}", f"127.0.0.1:{ex.port}"
    for e in events:
        if e.pid not in (ex.client_pid, ex.server_pid):
            continue
        is_client = e.pid == ex.client_pid
        assert e.fd == (ex.client_fd if is_client else ex.server_fd)
        assert e.conn is not None
        assert e.conn.kind == ("connect" if is_client else "accept")
        assert (e.conn.local, e.conn.remote) == ((client, server) if is_client
                                                 else (server, client))
    assert f"{client} -> {server}  WRITE" in text


@pytest.mark.parametrize("tls", ["1.3", "1.2"])
def test_keys_equal_both_programs_key_logs(live_capture, exchange, tmp_path: Path,
                                           tls: str) -> None:
    cap = live_capture("boringssl")
    ex = exchange(tls)
    cap.stop()
    assert cap.record is not None
    theirs_client, theirs_server = keylog_lines(ex.client_keys), keylog_lines(ex.server_keys)
    expected_labels = ({"CLIENT_RANDOM"} if tls == "1.2" else
                       {"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                        "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0",
                        "EXPORTER_SECRET"})
    assert {line.split()[0] for line in theirs_client} == expected_labels
    # Line for line, offline from the recording, from each side alone.
    assert keylog_from(cap.record, tmp_path / "c.log", "--pid", str(ex.client_pid)) \
        == theirs_client
    assert keylog_from(cap.record, tmp_path / "s.log", "--pid", str(ex.server_pid)) \
        == theirs_server


def test_live_keylog_model(live_capture, exchange, tmp_path: Path) -> None:
    """-m keylog writes both programs' key lines live, as they happen."""
    ours = tmp_path / "ours.log"
    cap = live_capture("boringssl", "-m", "keylog", "-k", str(ours), record=False)
    ex = exchange("1.3")
    cap.stop()
    assert keylog_lines(ex.client_keys) <= keylog_lines(ours)
    assert keylog_lines(ex.server_keys) <= keylog_lines(ours)


def test_pid_filter_keeps_only_that_process(live_capture, cert: tuple[str, str]) -> None:
    port = _free_port()
    server = subprocess.Popen([BSSL, "server", "-accept", str(port), "-cert", cert[0], "-key",
                               cert[1]], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    try:
        cap = live_capture("boringssl", "-p", str(server.pid))
        client = subprocess.Popen([BSSL, "client", "-connect", f"127.0.0.1:{port}"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL)
        ping_pong(client, server)
        assert client.stdin is not None
        client.stdin.close()
        client.wait(10)
        cap.stop()
    finally:
        server.kill()
        server.wait()
    events = [e for e in replay_events(cap.record) if isinstance(e, TlsData)]
    assert {e.pid for e in events} == {server.pid}
    assert plaintext(events, server.pid, "read") == PINGS
    assert plaintext(events, server.pid, "write") == PONGS
    # The golden recording: -p keeps other programs' connections out of it.
    cap.save_fixture("boringssl/bssl_server_pid", ("text", "json", "keylog"))


@pytest.mark.parametrize("tls", ["1.3", "1.2"])
def test_tshark_decrypts_our_pcapng(live_capture, exchange, tmp_path: Path, tls: str) -> None:
    pcap = tmp_path / "cap.pcapng"
    cap = live_capture("boringssl", "-m", "pcap", "-i", "lo", "-w", str(pcap))
    ex = exchange(tls)
    cap.stop()
    # Given only our pcapng (its packets and the secrets in it), tshark reads every line
    # of the workload, both ways.
    assert sorted(tshark_payloads(pcap, ex.port)) == sorted(PINGS + PONGS)
    # Offline: the recording gives the same pcapng.
    assert cap.record is not None
    again = tmp_path / "replayed.pcapng"
    subprocess.run([sys.executable, "-m", "ecapture", "replay", str(cap.record), "-m", "pcap",
                    "-w", str(again)], check=True, capture_output=True, cwd=ROOT)
    assert sorted(tshark_payloads(again, ex.port)) == sorted(PINGS + PONGS)
