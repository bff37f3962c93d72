"""The pcap model live: tshark, given only our pcapng, decrypts the TLS and counts the
HTTP requests of known workloads exactly; the same from the recording, offline."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from live_helpers import ROOT, Server, _free_port, _wait_port, nghttpd, run_client

pytestmark = [pytest.mark.ecapture_module("tls"), pytest.mark.requires_lib("libssl.so.3")]

PRIME = 23


def tshark(path: Path, display_filter: str, field: str) -> list[str]:
    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed (scripts/setup.sh installs it)")
    out = subprocess.run(["tshark", "-r", str(path), "-Y", display_filter, "-T", "fields",
                          "-e", field], check=True, capture_output=True, text=True).stdout
    return [v for line in out.splitlines() for v in line.split(",") if v]


def no_clsact_left() -> bool:
    out = subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True,
                         text=True).stdout
    return "clsact" not in out


def test_tshark_decrypts_the_prime_workload(capture, https_server: Server,
                                            tmp_path: Path) -> None:
    pcap = tmp_path / "cap.pcapng"
    cap = capture("-m", "pcap", "-i", "lo", "-w", str(pcap), "tcp", "port",
                  str(https_server.port))
    paths = [f"/p{i:02d}" for i in range(PRIME)]
    run_client(https_server.port, "get", *paths)
    cap.stop()
    assert no_clsact_left()
    assert oct(pcap.stat().st_mode & 0o777) == "0o600"
    assert sorted(tshark(pcap, "http.request", "http.request.uri")) == paths
    assert len(tshark(pcap, "http.response", "http.response.code")) == PRIME
    # The filter kept only this server's traffic.
    ports = set(tshark(pcap, "tcp", "tcp.port"))
    assert str(https_server.port) in ports
    assert all(p == str(https_server.port) or int(p) > 1024 for p in ports)
    # Offline: the recording replays to a pcapng that decrypts the same way.
    assert cap.record is not None
    again = tmp_path / "replayed.pcapng"
    subprocess.run([sys.executable, "-m", "ecapture", "replay", str(cap.record), "-m", "pcap",
                    "-w", str(again), "tcp", "port", str(https_server.port)], check=True,
                   capture_output=True, cwd=ROOT)
    assert sorted(tshark(again, "http.request", "http.request.uri")) == paths


def test_tshark_decrypts_http2_over_tls13(capture, cert, tmp_path: Path) -> None:
    docroot = tmp_path / "docroot"
    docroot.mkdir()
    names = ["a.txt", "b.txt", "c.txt", "d.txt", "e.txt"]
    for name in names:
        (docroot / name).write_text(f"{name}\n")
    port = _free_port()
    server = nghttpd(port, docroot, cert)
    pcap = tmp_path / "h2.pcapng"
    try:
        _wait_port(port)
        cap = capture("-m", "pcap", "-i", "lo", "-w", str(pcap))
        subprocess.run(["curl", "--http2", "--tlsv1.3", "-sk",
                        *(f"https://127.0.0.1:{port}/{n}" for n in names)], check=True,
                       capture_output=True, timeout=30)
        cap.stop()
    finally:
        server.terminate()
        server.wait(10)
    assert set(tshark(pcap, "tls", "tls.record.version")) <= {"0x0303", "0x0301"}
    paths = tshark(pcap, "http2.headers.path", "http2.headers.path")
    assert sorted(paths) == [f"/{n}" for n in names]
    assert len(tshark(pcap, "http2.headers.status", "http2.headers.status")) == len(names)
