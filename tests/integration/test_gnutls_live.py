"""Live tests of the gnutls module against real GnuTLS programs on 127.0.0.1: gnutls-serv
(echo and HTTP modes), gnutls-cli and wget.

Ground truth: the lines we send and get echoed back; the client port the server logs for
each connection it accepts; each program's own socket (fd and ports, from /proc); the key
logs GnuTLS itself writes for every program started with SSLKEYLOGFILE; tshark decrypting
our pcapng with nothing but the keys in it.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from live_helpers import ROOT, _free_port, keylog_from, keylog_lines

from ecapture.events import TlsData
from ecapture.live.prereq import has_ringbuf
from ecapture.targets import find_library
from ecapture.testing.replay import replay_events

pytestmark = [pytest.mark.ecapture_module("gnutls"), pytest.mark.requires_lib("libgnutls.so.30")]

PRIME = 23
LINES = [f"line {i:02d} of the gnutls echo workload\n" for i in range(PRIME)]


# -- the programs ----------------------------------------------------------------------

class GnutlsServer:
    """gnutls-serv on 127.0.0.1:port, its log line-buffered into a file."""

    def __init__(self, mode: str, cert: tuple[str, str], log: Path, keylog: Path | None):
        self.port = _free_port()
        self.log = log
        env = {**os.environ, **({"SSLKEYLOGFILE": str(keylog)} if keylog else {})}
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                ["stdbuf", "-oL", "gnutls-serv", *(f"--{m}" for m in mode.split()), "-p",
                 str(self.port),
                 "--x509certfile", cert[0], "--x509keyfile", cert[1]],
                stdout=out, stderr=subprocess.STDOUT, env=env)
        # Not by connecting: the server would log that connection as a client's.
        deadline = time.monotonic() + 10
        while not re.search(r"listening on IPv4 .*done", log.read_text()):
            assert self.proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client_ports(self) -> list[int]:
        """The port of every client the server accepted, as it logged them."""
        text = self.log.read_text()
        return [int(p) for p in re.findall(r"Accepted connection from IPv4 127\.0\.0\.1 "
                                           r"port (\d+)", text)]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class GnutlsClient:
    """An interactive gnutls-cli: each line written to it is one gnutls_record_send."""

    def __init__(self, port: int, keylog: Path | None = None, *extra: str):
        env = {**os.environ, **({"SSLKEYLOGFILE": str(keylog)} if keylog else {})}
        self.proc = subprocess.Popen(["gnutls-cli", "--insecure", "-p", str(port), *extra,
                                      "127.0.0.1"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=env)
        self._buf = b""
        self.read_until(b"- Simple Client Mode:\n")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_until(self, wanted: bytes, timeout: float = 10) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while wanted not in self._buf:
            left = deadline - time.monotonic()
            assert left > 0 and select.select([fd], [], [], left)[0], self._buf[-300:]
            chunk = os.read(fd, 65536)
            assert chunk, f"gnutls-cli exited: {self._buf[-300:]!r}"
            self._buf += chunk
        self._buf = self._buf[self._buf.index(wanted) + len(wanted):]

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def echo(self, line: str) -> None:
        """Send one line and wait until the server's echo of it has been read."""
        self.send(line)
        self.read_until(line.encode())

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(10)


def tcp_sockets(pid: int) -> dict[int, tuple[int, int]]:
    """fd -> (local port, remote port) of a process's TCP sockets, from /proc: what the
    process itself holds, independent of any probe."""
    inodes = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
        if m:
            inodes[m.group(1)] = int(fd)
    found = {}
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            cols = row.split()
            if cols[9] in inodes:
                found[inodes[cols[9]]] = (int(cols[1].rsplit(":", 1)[1], 16),
                                          int(cols[2].rsplit(":", 1)[1], 16))
    return found


@pytest.fixture
def serve(cert: tuple[str, str], tmp_path: Path) -> Iterator[Callable[..., GnutlsServer]]:
    started: list[GnutlsServer] = []

    def start(mode: str, keylog: Path | None = None) -> GnutlsServer:
        server = GnutlsServer(mode, cert, tmp_path / f"serv{len(started)}.log", keylog)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# -- helpers ---------------------------------------------------------------------------

def data_events(path: Path | None) -> list[TlsData]:
    assert path is not None
    return [e for e in replay_events(path) if isinstance(e, TlsData)]


def tshark(path: Path, display_filter: str, *fields: str) -> list[list[str]]:
    """Each matching packet's fields (one tshark run each: a run costs a second or so)."""
    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed (scripts/setup.sh installs it)")
    # gnutls-serv answers HTTP/1.0 with bodies that end at the close: a response counts
    # by its headers, not by waiting for a body to end.
    out = subprocess.run(["tshark", "-r", str(path), "-o", "http.desegment_body:FALSE",
                          "-Y", display_filter, "-T", "fields", "-E", "separator=/t",
                          *(a for f in fields for a in ("-e", f))],
                         check=True, capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines()]


def decrypted(path: Path) -> tuple[list[str], list[str], set[str]]:
    """The request paths and response codes tshark decrypts from a pcapng, and the TLS
    version of every ServerHello."""
    rows = tshark(path, "http.request || http.response || tls.handshake.type == 2",
                  "http.request.uri", "http.response.code", "tls.handshake.version",
                  "tls.handshake.extensions.supported_version")
    uris = sorted(r[0] for r in rows if r[0])
    codes = [r[1] for r in rows if r[1]]
    versions = {r[3] or r[2] for r in rows if r[2]}
    return uris, codes, versions


def priority(tls: str) -> str:
    """A GnuTLS priority string that allows one TLS version only."""
    return f"NORMAL:-VERS-ALL:+VERS-TLS{tls}"


def label_count(keys: set[str], label: str) -> int:
    return sum(1 for line in keys if line.startswith(label + " "))


# -- plaintext -------------------------------------------------------------------------

@pytest.mark.parametrize("buffer", ["auto", "perf"])
def test_echo_lines_exact_with_fd_and_tuple(live_capture, serve, buffer: str) -> None:
    server = serve("echo")
    cap = live_capture("gnutls", *(["--perf-buffer"] if buffer == "perf" else []))
    chosen = "ring" if buffer == "auto" and has_ringbuf() else "perf"
    assert f"({chosen} buffer)" in cap.err_path.read_text()
    client = GnutlsClient(server.port)
    for line in LINES:
        client.echo(line)
    # The sockets as each program holds them, while the connection is up.
    ((cli_fd, (cli_port, srv_port)),) = tcp_sockets(client.pid).items()
    (srv_fd,) = [fd for fd, (_, peer) in tcp_sockets(server.pid).items() if peer == cli_port]
    assert client.close() == 0
    cap.stop()
    assert srv_port == server.port
    assert server.client_ports() == [cli_port]  # the peer saw the same client port
    want = [line.encode() for line in LINES]
    events = data_events(cap.record)
    sides = [(client.pid, "write", "gnutls_record_send", cli_fd, "connect"),
             (client.pid, "read", "gnutls_record_recv", cli_fd, "connect"),
             (server.pid, "read", "gnutls_record_recv", srv_fd, "accept"),
             (server.pid, "write", "gnutls_record_send", srv_fd, "accept")]
    client_end, server_end = f"127.0.0.1:{cli_port}", f"127.0.0.1:{server.port}"
    for pid, direction, func, fd, kind in sides:
        mine = [e for e in events if e.pid == pid and e.direction == direction]
        # Every line once per call, in order: no call counted twice (send tail-calls
        # send2), none lost.
        assert [e.data for e in mine] == want, (direction, [e.data for e in mine])
        for e in mine:
            assert (e.func, e.fd, e.version_name, e.missing) == (func, fd, "TLSv1.3", 0)
            assert e.conn is not None and e.conn.kind == kind
            ends = (e.conn.local, e.conn.remote)
            assert ends == ((client_end, server_end) if kind == "connect"
                            else (server_end, client_end))
    if buffer == "auto":
        assert f"{client_end} -> {server_end}  WRITE" in cap.replay().text(raw=True)


def test_pid_filter_keeps_one_client_of_an_older_connection(live_capture, serve,
                                                           tmp_path: Path) -> None:
    """-p: only that gnutls-cli, whose connection and handshake predate the capture: its
    4-tuple comes from /proc, its keys from its first record call."""
    server = serve("echo")
    keylog = tmp_path / "cli-keys.log"
    client = GnutlsClient(server.port, keylog)
    other = GnutlsClient(server.port)
    ((cli_fd, (cli_port, _)),) = tcp_sockets(client.pid).items()
    cap = live_capture("gnutls", "-p", str(client.pid))
    for line in LINES:
        client.echo(line)
        other.echo(line.upper())
    client.close()
    other.close()
    cap.stop()
    events = data_events(cap.record)
    assert {e.pid for e in events} == {client.pid}
    want = [line.encode() for line in LINES]
    for direction in ("write", "read"):
        mine = [e for e in events if e.direction == direction]
        assert [e.data for e in mine] == want
        for e in mine:
            assert e.fd == cli_fd and e.conn is not None
            assert (e.conn.local, e.conn.remote) == (f"127.0.0.1:{cli_port}",
                                                     f"127.0.0.1:{server.port}")
    assert cli_port in server.client_ports()
    assert keylog_from(cap.record, tmp_path / "ours.log") == keylog_lines(keylog)
    cap.save_fixture("gnutls/echo_client_pid", models=("text", "json", "keylog"))


# -- keys ------------------------------------------------------------------------------

@pytest.mark.parametrize("tls", ["1.3", "1.2"])
def test_keylog_equals_gnutls_own_client_and_server(live_capture, serve, tmp_path: Path,
                                                    tls: str) -> None:
    srv_log, cli_log, wget_log = (tmp_path / f"{n}-keys.log" for n in ("serv", "cli", "wget"))
    server = serve("http", srv_log)
    ours = tmp_path / "ours.log"
    cap = live_capture("gnutls", "-m", "keylog", "-k", str(ours))
    for i in range(3):
        client = GnutlsClient(server.port, cli_log, "--priority", priority(tls))
        client.send(f"GET /k{i} HTTP/1.0\r\n\r\n")
        client.read_until(b"</HTML>")
        client.close()  # the server closes first (HTTP/1.0): how gnutls-cli exits varies
    subprocess.run(["wget", "-q", "--no-check-certificate", "-O", "/dev/null",
                    f"--ciphers={priority(tls)}",
                    f"https://127.0.0.1:{server.port}/w"], check=True, timeout=30,
                   env={**os.environ, "SSLKEYLOGFILE": str(wget_log)})
    cap.stop()
    theirs = keylog_lines(cli_log) | keylog_lines(wget_log)
    label = "CLIENT_RANDOM" if tls == "1.2" else "CLIENT_TRAFFIC_SECRET_0"
    assert label_count(keylog_lines(cli_log), label) == 3
    assert label_count(keylog_lines(wget_log), label) == 1
    assert keylog_lines(srv_log) == theirs  # both ends of the same four connections
    # Live, the keylog model: line for line what GnuTLS wrote, both ends.
    assert keylog_lines(ours) == theirs
    # Offline, from the recording, one side at a time.
    rec = cap.record
    assert keylog_from(rec, tmp_path / "o1.log", "--comm", "gnutls-cli") == keylog_lines(cli_log)
    assert keylog_from(rec, tmp_path / "o2.log", "--comm", "wget") == keylog_lines(wget_log)
    assert keylog_from(rec, tmp_path / "o3.log", "--pid", str(server.pid)) == keylog_lines(srv_log)


def test_tls13_early_data_keys_and_plaintext(live_capture, serve, tmp_path: Path) -> None:
    """A resumed TLS 1.3 session with 0-RTT data: its early traffic secret is in our key
    log, the 0-RTT request is captured on both ends and tshark decrypts it from our
    pcapng. GnuTLS keeps the early exporter secret only until the handshake replaces it
    with the exporter secret, so that one line (needed by no decryption) is not ours."""
    srv_log, cli_log = tmp_path / "serv-keys.log", tmp_path / "cli-keys.log"
    server = serve("http earlydata", srv_log)
    early = tmp_path / "early.txt"
    early.write_bytes(b"GET /early HTTP/1.0\r\n\r\n")
    pcap = tmp_path / "early.pcapng"
    cap = live_capture("gnutls", "-m", "pcap", "-i", "lo", "-w", str(pcap), "tcp", "port",
                       str(server.port))
    run = subprocess.run(["gnutls-cli", "--insecure", "-p", str(server.port), "--resume",
                          f"--earlydata={early}", "127.0.0.1"], input=b"GET /late HTTP/1.0\r\n\r\n",
                         capture_output=True, timeout=30,
                         env={**os.environ, "SSLKEYLOGFILE": str(cli_log)})
    assert b"This is a resumed session" in run.stdout
    cap.stop()
    theirs = keylog_lines(cli_log)
    assert label_count(theirs, "CLIENT_EARLY_TRAFFIC_SECRET") == 1
    assert label_count(theirs, "CLIENT_TRAFFIC_SECRET_0") == 2  # the first, then the resumed
    not_kept = {line for line in theirs if line.startswith("EARLY_EXPORTER_SECRET ")}
    assert len(not_kept) == 1
    assert keylog_from(cap.record, tmp_path / "o1.log", "--comm", "gnutls-cli") == \
        theirs - not_kept
    assert keylog_from(cap.record, tmp_path / "o2.log", "--pid", str(server.pid)) == \
        keylog_lines(srv_log) - not_kept
    events = data_events(cap.record)
    sent = [(e.data, e.func, e.version_name) for e in events
            if e.comm == "gnutls-cli" and e.direction == "write"]
    # Queued before the handshake (gnutls_record_send before it is 0-RTT data in GnuTLS):
    # no version yet.
    assert sent == [(early.read_bytes(), "gnutls_record_send", "?"),
                    (b"GET /late HTTP/1.0\r\n\r\n", "gnutls_record_send", "TLSv1.3")]
    received = [(e.data, e.func) for e in events
                if e.pid == server.pid and e.direction == "read"]
    assert received == [(early.read_bytes(), "gnutls_record_recv_early_data"),
                        (b"GET /late HTTP/1.0\r\n\r\n", "gnutls_record_recv")]
    uris, _, versions = decrypted(pcap)
    assert (uris, versions) == (["/early", "/late"], {"0x0304"})


def test_unknown_version_plaintext_only(live_capture, serve, tmp_path: Path) -> None:
    """A libgnutls whose version has no offsets: keylog and pcap refuse in one line naming
    it; plaintext still works, with the TLS version unknown and no keys."""
    real = find_library([r"libgnutls\.so\.30"])
    assert real is not None
    lib = tmp_path / "lib"
    lib.mkdir()
    data = Path(real).read_bytes()
    (found,) = re.findall(rb"Enabled GnuTLS (\d+\.\d+\.\d+) logging", data)
    unknown = re.sub(rb"\d", b"9", found)  # 9.9.9: same length, no offsets known
    (lib / "libgnutls.so.30").write_bytes(data.replace(found + b" logging",
                                                       unknown + b" logging"))
    for model in ("keylog", "pcap"):
        extra = ["-i", "lo"] if model == "pcap" else []
        run = subprocess.run([sys.executable, "-m", "ecapture", "gnutls", "--gnutls",
                              str(lib / "libgnutls.so.30"), "-m", model, *extra],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert run.returncode != 0
        assert run.stderr.count("\n") == 1, run.stderr
        assert f"GnuTLS {unknown.decode()}, " in run.stderr
        assert "plaintext capture still works" in run.stderr
    server = serve("echo")
    cap = live_capture("gnutls", "--gnutls", str(lib / "libgnutls.so.30"))
    env = {**os.environ, "LD_LIBRARY_PATH": str(lib)}
    proc = subprocess.run(["gnutls-cli", "--insecure", "-p", str(server.port), "127.0.0.1"],
                          input=b"unknown-version line\n", env=env, capture_output=True,
                          timeout=30)
    assert proc.returncode == 0
    cap.stop()
    events = replay_events(cap.record)
    sent = [e for e in events if isinstance(e, TlsData) and e.direction == "write"]
    assert [e.data for e in sent] == [b"unknown-version line\n"]
    assert sent[0].version == 0 and sent[0].comm == "gnutls-cli"
    assert keylog_from(cap.record, tmp_path / "none.log") == set()


# -- pcap ------------------------------------------------------------------------------

@pytest.mark.parametrize("tls", ["1.3", "1.2"])
def test_tshark_decrypts_wget_prime_workload(live_capture, serve, tmp_path: Path,
                                             tls: str) -> None:
    server = serve("http")
    pcap = tmp_path / "cap.pcapng"
    cap = live_capture("gnutls", "-m", "pcap", "-i", "lo", "-w", str(pcap), "tcp", "port",
                       str(server.port))
    paths = [f"/g{i:02d}" for i in range(PRIME)]
    subprocess.run(["wget", "-q", "--no-check-certificate", "-O", "/dev/null",
                    f"--ciphers={priority(tls)}",
                    *(f"https://127.0.0.1:{server.port}{p}" for p in paths)], check=True,
                   timeout=60)
    cap.stop()
    assert len(server.client_ports()) == PRIME
    version = {"1.3": "0x0304", "1.2": "0x0303"}[tls]
    assert decrypted(pcap) == (paths, ["200"] * PRIME, {version})
    # Offline: the recording replays to a pcapng that decrypts the same way.
    again = tmp_path / "replayed.pcapng"
    subprocess.run([sys.executable, "-m", "ecapture", "replay", str(cap.record), "-m", "pcap",
                    "-w", str(again), "tcp", "port", str(server.port)], check=True,
                   capture_output=True, cwd=ROOT)
    assert decrypted(again) == (paths, ["200"] * PRIME, {version})
