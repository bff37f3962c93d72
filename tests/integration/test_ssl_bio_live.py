"""OpenSSL's SSL BIO, live: ``openssl s_server`` with ``-www``, ``-WWW`` and ``-HTTP`` reads
and writes through BIO_f_ssl, whose methods never call SSL_read or SSL_write. Checked
against ground truth: curl's own view of each of 23 connections (its local port, the exact
response it received with ``-i``), the request it sends (its headers fixed here), the pages
served, and s_server's own ``-keylogfile``. Debian 12's OpenSSL 3.0 and Debian bullseye's
1.1.1w (unpacked, run with LD_LIBRARY_PATH) are both checked. s_server's web modes answer
one request per connection and close it: each request is a connection of its own.

With the system's library both ends of each connection are in one capture: s_server's
through the BIO's methods (``BIO_read``/``BIO_write``), curl's through SSL_read/SSL_write,
each call exactly once."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from live_helpers import _free_port, _wait_port, in_process_capture, keylog_from, keylog_lines

from ecapture.events import TlsData
from ecapture.testing.debs import unpack_or_skip
from ecapture.testing.replay import replay_events

pytestmark = [pytest.mark.ecapture_module("tls")]

PRIME = 23
AGENT = "ecapture-ssl-bio-test"
PATHS = [f"/page-{i:02d}.txt" for i in range(PRIME)]


@dataclass
class OpenSSL:
    """An openssl binary, the libssl it runs with (None: the system's) and its environment."""

    binary: str
    libssl: str | None
    env: dict[str, str]


@pytest.fixture(scope="module", params=[
    pytest.param("3", marks=pytest.mark.requires_lib("libssl.so.3")),
    "1.1.1w",
])
def openssl(request: pytest.FixtureRequest) -> OpenSSL:
    if request.param == "3":
        return OpenSSL("openssl", None, dict(os.environ))
    pkg = unpack_or_skip(["libssl1.1", "openssl"], ("bullseye", "bullseye-security"))
    return OpenSSL(str(pkg.path("/usr/bin/openssl")),
                   str(pkg.path("/usr/lib/x86_64-linux-gnu/libssl.so.1.1")),
                   {**os.environ, "LD_LIBRARY_PATH": pkg.library_path()})


@dataclass
class SServer:
    proc: subprocess.Popen[bytes]
    port: int
    keylog: Path


@pytest.fixture(params=["-www", "-WWW", "-HTTP"])
def s_server(request: pytest.FixtureRequest, openssl: OpenSSL, cert: tuple[str, str],
             tmp_path: Path) -> Iterator[SServer]:
    """s_server in one of its web modes, in a directory of known pages (-WWW sends a file
    after its own header, -HTTP sends the file as the whole response, -www a status page)."""
    docroot = tmp_path / "docroot"
    docroot.mkdir()
    for i, path in enumerate(PATHS):
        body = f"page {i:02d} served through the SSL BIO\n" * (i + 1)
        head = ("HTTP/1.0 200 ok\r\nContent-Type: text/plain\r\n\r\n"
                if request.param == "-HTTP" else "")
        (docroot / path.lstrip("/")).write_text(head + body)
    keylog = tmp_path / "s_server-keys.log"
    port = _free_port()
    proc = subprocess.Popen([openssl.binary, "s_server", "-accept", f"127.0.0.1:{port}",
                             "-cert", cert[0], "-key", cert[1], request.param, "-quiet",
                             "-keylogfile", str(keylog)], cwd=docroot, env=openssl.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_port(port)
    yield SServer(proc, port, keylog)
    proc.terminate()
    proc.wait(10)


def fetch(port: int, path: str, out: Path) -> int:
    """One request on its own connection; curl's local port. ``out`` gets the whole
    response as received, header included (-i: HTTP/1.0, nothing rewritten)."""
    done = subprocess.run(["curl", "-sk", "-i", "--http1.1", "-A", AGENT, "-o", str(out),
                           "-w", "%{local_port}", f"https://127.0.0.1:{port}{path}"],
                          check=True, capture_output=True, text=True, timeout=30)
    return int(done.stdout)


def request(port: int, path: str) -> bytes:
    """What curl sends with these options: its request line and three headers."""
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: {AGENT}\r\n"
            "Accept: */*\r\n\r\n").encode()


def test_s_server_both_directions_tuples_and_keys(capture, openssl: OpenSSL,
                                                  s_server: SServer, tmp_path: Path) -> None:
    cap = capture(*(["--libssl", openssl.libssl] if openssl.libssl else []))
    # s_server entered this accept() before the capture began: before Linux 6.4 (syscall
    # tracepoints) its tuple can only come from /proc, if the socket is still open when
    # the capture looks. Not checked for its tuple.
    fetch(s_server.port, "/before", tmp_path / "before")
    ports, responses = [], []
    for i, path in enumerate(PATHS):
        out = tmp_path / f"response-{i:02d}"
        ports.append(fetch(s_server.port, path, out))
        responses.append(out.read_bytes())
    cap.stop()
    assert cap.record is not None
    server = f"127.0.0.1:{s_server.port}"
    events = [e for e in replay_events(cap.record) if isinstance(e, TlsData)]

    # s_server's side: its own process, through the SSL BIO only, connection by connection
    # in the order curl made them, each the request read and then the response written.
    everything = [e for e in events if e.pid == s_server.proc.pid]
    assert {e.func for e in everything} == {"BIO_read", "BIO_write"}
    clients = {f"127.0.0.1:{port}" for port in ports}
    theirs = [e for e in everything if e.conn is not None and e.conn.remote in clients]
    before = everything[:everything.index(theirs[0])]
    assert everything[len(before):] == theirs
    assert b"".join(e.data for e in before if e.direction == "read") == \
        request(s_server.port, "/before")
    for e in theirs:
        assert e.conn is not None and e.conn.kind == "accept", e
        assert e.conn.local == server, e.conn
    order = [int(str(e.conn.remote).rsplit(":", 1)[1]) for e in theirs if e.conn is not None]
    assert [p for n, p in enumerate(order) if n == 0 or order[n - 1] != p] == ports
    for i, port in enumerate(ports):
        mine = [e for e in theirs if e.conn is not None
                and e.conn.remote == f"127.0.0.1:{port}"]
        ways = [e.direction for e in mine]
        assert ways == sorted(ways), ways  # "read" < "write": every read before any write
        assert b"".join(e.data for e in mine if e.direction == "read") == \
            request(s_server.port, PATHS[i])
        assert b"".join(e.data for e in mine if e.direction == "write") == responses[i]
        assert responses[i].startswith(b"HTTP/1.0 200 ok\r\n")

    # s_server's keys, as its own key log has them.
    assert keylog_from(cap.record, tmp_path / "ours.log", "--pid", str(s_server.proc.pid)) \
        == keylog_lines(s_server.keylog)
    assert len(keylog_lines(s_server.keylog)) >= PRIME

    if openssl.libssl is not None:
        return  # curl runs on the system's libssl, not captured here
    # curl's side of the same connections, through SSL_write/SSL_read: each call once.
    curl = [e for e in events if e.comm == "curl"]
    assert {e.func for e in curl} <= {"SSL_read", "SSL_write", "SSL_read_ex",
                                      "SSL_write_ex"}
    for i, port in enumerate(ports):
        mine = [e for e in curl if e.conn is not None and e.conn.local == f"127.0.0.1:{port}"]
        assert all(e.conn is not None and e.conn.remote == server for e in mine)
        assert b"".join(e.data for e in mine if e.direction == "write") == \
            request(s_server.port, PATHS[i])
        assert b"".join(e.data for e in mine if e.direction == "read") == responses[i]


@pytest.mark.parametrize("s_server", ["-www"], indirect=True)
def test_s_server_on_kernels_before_6_4(openssl: OpenSSL, s_server: SServer, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels before 6.4: the fd and 4-tuple of each s_server connection come from the
    syscall tracepoints instead. Built that way here, every request still is s_server's,
    on the socket of the connection curl made."""
    from ecapture.live import prereq
    from ecapture.modules.openssl import OpenSSLModule

    monkeypatch.setattr(prereq, "has_socket_tracepoints", lambda tracefs: False)
    module = OpenSSLModule({"libssl": openssl.libssl, "pid": s_server.proc.pid, "uid": None,
                            "ifname": None})
    record = tmp_path / "syscalls.ecap"
    with in_process_capture(module, record) as session:
        assert session.describe()["socket_hooks"] == "syscalls"
        # s_server entered this accept() before the capture began: its tuple can only come
        # from /proc, if the socket is still open when the capture looks.
        fetch(s_server.port, "/before", tmp_path / "response")
        ports = [fetch(s_server.port, path, tmp_path / "response") for path in PATHS]
    reads = [e for e in replay_events(record) if isinstance(e, TlsData)
             and e.direction == "read"]
    assert [e.data for e in reads] == [request(s_server.port, path)
                                       for path in ("/before", *PATHS)]
    for e, port in zip(reads[1:], ports, strict=True):
        assert e.func == "BIO_read" and e.fd >= 0 and e.conn is not None
        assert (e.conn.kind, e.conn.local, e.conn.remote) == \
            ("accept", f"127.0.0.1:{s_server.port}", f"127.0.0.1:{port}")
