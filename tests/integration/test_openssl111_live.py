"""OpenSSL 1.1.1 live, against ground truth: distributions' own libssl1.1 and openssl
binary, unpacked from their archives and run with LD_LIBRARY_PATH: Debian bullseye's
1.1.1w (the last release) and Ubuntu focal's 1.1.1f (another layout of ssl_st).
``openssl s_client -keylogfile`` is the truth for the keys, TLS 1.2 and 1.3; a Python
server's log of its clients is the truth for the 4-tuple; a known workload of 23 requests
for the plaintext of both directions; tshark decrypting our pcapng for the keys in the pcap
model."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_helpers import (
    ROOT,
    Server,
    _free_port,
    _wait_port,
    ecapture_cmd,
    keylog_lines,
)

from ecapture.events import TlsData
from ecapture.modules.openssl import OpenSSLModule
from ecapture.testing.debs import Unpacked, unpack_or_skip
from ecapture.testing.replay import replay_events

pytestmark = [pytest.mark.ecapture_module("tls")]

PRIME = 23
# Where each tested 1.1.1 comes from: (suites, archive; None: Debian's).
ARCHIVES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "bullseye": (("bullseye", "bullseye-security"), None),
    "focal": (("focal", "focal-updates", "focal-security"), "https://archive.ubuntu.com/ubuntu"),
}


def unpack111(name: str) -> Unpacked:
    suites, mirror = ARCHIVES[name]
    return unpack_or_skip(["libssl1.1", "openssl"], suites, mirror=mirror)


@pytest.fixture(scope="module")
def openssl111() -> Unpacked:
    """Debian bullseye's 1.1.1w."""
    return unpack111("bullseye")


@pytest.fixture(scope="module", params=sorted(ARCHIVES))
def any111(request: pytest.FixtureRequest) -> Unpacked:
    return unpack111(request.param)


def libssl(pkg: Unpacked) -> str:
    return str(pkg.path("/usr/lib/x86_64-linux-gnu/libssl.so.1.1"))


def run111(pkg: Unpacked, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(pkg.path("/usr/bin/openssl")), *args], input=stdin,
                          capture_output=True, timeout=30, check=True,
                          env={**os.environ, "LD_LIBRARY_PATH": pkg.library_path()})


@pytest.fixture
def s_server111(any111: Unpacked, cert: tuple[str, str]) -> Iterator[int]:
    """1.1.1's s_server -www: both ends of each connection are the library under test."""
    port = _free_port()
    proc = subprocess.Popen([str(any111.path("/usr/bin/openssl")), "s_server", "-accept",
                             f"127.0.0.1:{port}", "-cert", cert[0], "-key", cert[1], "-www",
                             "-quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "LD_LIBRARY_PATH": any111.library_path()})
    _wait_port(port)
    yield port
    proc.terminate()
    proc.wait(10)


def pipelined(paths: list[str]) -> bytes:
    """HTTP/1.1 requests for one keep-alive connection; the last one closes it."""
    out = b""
    for i, path in enumerate(paths):
        last = b"Connection: close\r\n" if i == len(paths) - 1 else b""
        out += f"GET {path} HTTP/1.1\r\nHost: localhost\r\n".encode() + last + b"\r\n"
    return out


def test_version_is_the_packages(any111: Unpacked) -> None:
    module = OpenSSLModule({"libssl": libssl(any111)})
    module.init()
    upstream = any111.version("libssl1.1").split("-")[0]  # 1.1.1w-0+deb11u8 -> 1.1.1w
    assert module.version == upstream
    assert module.key_offsets is not None and module.key_offsets.s3 is not None


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_keys_equal_s_client_keylog(capture, any111: Unpacked, s_server111: int,
                                    tmp_path: Path, tls: str) -> None:
    theirs_path, ours = tmp_path / "s_client.keys", tmp_path / "ours.keys"
    cap = capture("--libssl", libssl(any111), "-m", "keylog", "-k", str(ours))
    for _ in range(3):
        run111(any111, "s_client", "-connect", f"127.0.0.1:{s_server111}",
               f"-tls{tls.replace('.', '_')}", "-keylogfile", str(theirs_path), "-quiet",
               stdin=b"GET / HTTP/1.0\r\n\r\n")
    cap.stop()
    theirs = keylog_lines(theirs_path)
    label = "CLIENT_RANDOM" if tls == "1.2" else "CLIENT_TRAFFIC_SECRET_0"
    assert sum(1 for line in theirs if line.startswith(label)) == 3
    # Both ends were watched (one library): the same three connections' secrets.
    assert keylog_lines(ours) == theirs
    # Offline, from the recording: the same.
    assert cap.record is not None
    again = tmp_path / "replayed.keys"
    subprocess.run([*ecapture_cmd(), "replay", str(cap.record), "-m", "keylog", "-k", str(again)],
                   check=True, capture_output=True, cwd=ROOT)
    assert keylog_lines(again) == theirs


@pytest.mark.parametrize("buffer", ["auto", "perf"])
def test_plaintext_both_directions_and_tuple(capture, openssl111: Unpacked,
                                             https_server: Server, buffer: str) -> None:
    cap = capture("--libssl", libssl(openssl111),
                  *(["--perf-buffer"] if buffer == "perf" else []))
    paths = [f"/p{i:02d}" for i in range(PRIME)]
    run111(openssl111, "s_client", "-connect", f"127.0.0.1:{https_server.port}", "-quiet",
           "-ign_eof", stdin=pipelined(paths))
    cap.stop()
    log = https_server.read_log(PRIME)
    assert [entry["path"] for entry in log] == paths
    # One keep-alive connection: one client address.
    (client,) = {f"127.0.0.1:{entry['client'][1]}" for entry in log}  # type: ignore[index]
    server = f"127.0.0.1:{https_server.port}"
    assert cap.record is not None
    events = [e for e in replay_events(cap.record) if isinstance(e, TlsData)]
    assert {e.comm for e in events} == {"openssl"}  # the server's libssl is not watched
    sent = b"".join(e.data for e in events if e.direction == "write")
    received = b"".join(e.data for e in events if e.direction == "read")
    assert sent == pipelined(paths)
    assert re.findall(rb"hello (/p\d\d)\n", received) == [p.encode() for p in paths]
    assert received.count(b"HTTP/1.1 200 OK\r\n") == PRIME
    for e in events:
        assert e.conn is not None and e.conn.kind == "connect"
        assert (e.conn.local, e.conn.remote) == (client, server)
        assert e.version_name == "TLSv1.3"
    if buffer == "auto":
        cap.save_fixture("tls/openssl111_s_client", ("text", "json", "keylog"))


def test_tshark_decrypts_tls12_with_our_keys(capture, openssl111: Unpacked,
                                             https_server: Server, tmp_path: Path) -> None:
    from test_pcap_live import tshark

    pcap = tmp_path / "cap.pcapng"
    cap = capture("--libssl", libssl(openssl111), "-m", "pcap", "-i", "lo", "-w", str(pcap),
                  "tcp", "port", str(https_server.port))
    paths = [f"/t{i:02d}" for i in range(PRIME)]
    run111(openssl111, "s_client", "-connect", f"127.0.0.1:{https_server.port}", "-tls1_2",
           "-quiet", "-ign_eof", stdin=pipelined(paths))
    cap.stop()
    assert set(tshark(pcap, "tls", "tls.record.version")) == {"0x0303", "0x0301"}
    assert tshark(pcap, "http.request", "http.request.uri") == paths
    assert len(tshark(pcap, "http.response", "http.response.code")) == PRIME
