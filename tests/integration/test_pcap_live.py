"""The pcap model live: tshark, given only our pcapng, decrypts the TLS and counts the
HTTP requests of known workloads exactly; the same from the recording, offline."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from live_helpers import ROOT, Server, _free_port, _wait_port, nghttpd, run_client

from ecapture.structs.packets import PACKET_CHUNK_SIZE

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


def test_large_downloads_every_packet_tcpdump_sees(capture, https_server: Server,
                                                   tmp_path: Path) -> None:
    """Loopback carries GSO packets of tens of KiB (past 64 KiB before the kernel splits
    them): the pcapng must hold every packet tcpdump sees, whole, and decrypt. The program
    copies packets in 16 KiB pieces, so the big ones arrive in several."""
    if shutil.which("tcpdump") is None:
        pytest.fail("tcpdump is not installed (scripts/setup.sh installs it)")
    port = https_server.port
    pcap, theirs = tmp_path / "ours.pcapng", tmp_path / "tcpdump.pcap"
    tcpdump = subprocess.Popen(["tcpdump", "-i", "lo", "-s", "0", "-w", str(theirs), "-U",
                                "tcp", "port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert tcpdump.stderr is not None
        assert "listening" in tcpdump.stderr.readline()
        cap = capture("-m", "pcap", "-i", "lo", "-w", str(pcap), "tcp", "port", str(port))
        paths = [f"/size/{300_000 + i}" for i in range(10)]
        results = run_client(port, "get", *paths)
        cap.stop()
    finally:
        tcpdump.terminate()
        tcpdump.wait(10)
    assert [r["status"] for r in results] == [200] * 10
    # Every packet tcpdump saw, with its length, the big ones included.
    ours = tshark(pcap, "tcp", "frame.len")
    seen = tshark(theirs, "tcp", "frame.len")
    assert sorted(map(int, ours)) == sorted(map(int, seen))
    assert max(map(int, ours)) > PACKET_CHUNK_SIZE
    # Decrypted: every response, whole.
    lengths = tshark(pcap, "http.response", "http.content_length")
    assert sorted(map(int, lengths)) == [300_000 + i for i in range(10)]
    bodies = tshark(pcap, "http.response", "http.file_data")
    assert len(bodies) == 10
    # The summary counts what the model wrote: tcpdump's packets, the 10 connections' keys.
    err = cap.err_path.read_text()
    assert f"pcap: {len(seen):,} packets and" in err
    assert "0 lost" in err
