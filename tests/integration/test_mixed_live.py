"""Two TLS library modules running at once, as two ecapture processes, each with its own
programs on the same tracepoints: neither loses events, and neither reports the other's
library. Checked against the exact counts of two known workloads."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
from live_helpers import ROOT, Server

from ecapture.events import OtherLibrary, TlsData
from ecapture.testing.replay import replay_events

pytestmark = [pytest.mark.ecapture_module("gnutls"), pytest.mark.requires_lib("libssl.so.3"),
              pytest.mark.requires_lib("libgnutls.so.30"),
              pytest.mark.requires_lib(shutil.which("wget") or "wget")]

CURL_REQUESTS = 23  # OpenSSL
WGET_REQUESTS = 29  # GnuTLS


def _lost(record: object) -> int:
    info = subprocess.run([sys.executable, "-m", "ecapture", "info", str(record)],
                          capture_output=True, text=True, check=True, cwd=ROOT).stdout
    found = re.search(r"^events:\s+\d+ \((\d+) lost\)$", info, re.M)
    assert found, info
    return int(found.group(1))


def test_tls_and_gnutls_side_by_side(live_capture, https_server: Server) -> None:
    tls = live_capture("tls")
    gnutls = live_capture("gnutls")
    port = https_server.port
    for i in range(CURL_REQUESTS):
        subprocess.run(["curl", "-sk", f"https://127.0.0.1:{port}/curl-{i:02d}"], check=True,
                       capture_output=True, timeout=30)
    for i in range(WGET_REQUESTS):
        subprocess.run(["wget", "-q", "-O", "/dev/null", "--no-check-certificate",
                        f"https://127.0.0.1:{port}/wget-{i:02d}"], check=True,
                       capture_output=True, timeout=30)
    tls.stop()
    gnutls.stop()
    https_server.read_log(CURL_REQUESTS + WGET_REQUESTS)
    assert len(https_server.log) == CURL_REQUESTS + WGET_REQUESTS

    def requests(record: object, comm: str, direction: str = "write") -> list[str]:
        return sorted(e.data.split()[1].decode() for e in replay_events(record)
                      if isinstance(e, TlsData) and e.comm == comm
                      and e.direction == direction and e.data.startswith(b"GET /"))

    curl_paths = [f"/curl-{i:02d}" for i in range(CURL_REQUESTS)]
    wget_paths = [f"/wget-{i:02d}" for i in range(WGET_REQUESTS)]
    # OpenSSL's: curl's requests, and the server's reads of both clients, each once.
    assert requests(tls.record, "curl") == curl_paths
    assert requests(tls.record, "wget") == []
    server_reads = sorted(e.data.split()[1].decode() for e in replay_events(tls.record)
                          if isinstance(e, TlsData) and e.pid == https_server.pid
                          and e.direction == "read" and e.data.startswith(b"GET /"))
    assert server_reads == sorted(curl_paths + wget_paths)
    # GnuTLS's: wget's requests only.
    assert requests(gnutls.record, "wget") == wget_paths
    others = {e.comm for e in replay_events(gnutls.record)
              if isinstance(e, TlsData) and e.comm != "wget"}
    assert others == set()
    assert _lost(tls.record) == 0
    assert _lost(gnutls.record) == 0

    # Each capture says once per program where the plaintext it does not see is: 29 wget
    # processes, one line.
    def hints(record: object) -> dict[str, tuple[int, str, str]]:
        found = [e for e in replay_events(record) if isinstance(e, OtherLibrary)]
        by_comm = {e.comm: (e.pid, e.library, e.module) for e in found}
        assert len(by_comm) == len(found)  # once per program
        return by_comm

    told_tls = hints(tls.record)
    assert set(told_tls) == {"wget"}
    _, library, module = told_tls["wget"]
    assert library.startswith("libgnutls.so.30") and module == "gnutls"
    # curl maps GnuTLS too (Debian's libcurl links librtmp, which links it): nothing to say.
    # The server maps only OpenSSL's libssl.
    assert hints(gnutls.record) == {server_comm(https_server.pid): (
        https_server.pid, "libssl.so.3", "tls")}
    assert "`ecapture gnutls` captures its plaintext" in tls.replay().text()


def server_comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()
