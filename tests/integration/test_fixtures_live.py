"""Live scenarios whose recordings are the unit tier's golden fixtures.

Each test captures a real workload and checks it. With ``--regen-fixtures`` it also saves
the recording into fixtures/recordings/tls/ and rewrites the expected outputs beside it from
a replay (the plugin's ``LiveCapture.save_fixture``): that is the only way fixtures are
made, never by hand.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from live_helpers import PROGRAMS, Server, _free_port, _wait_port, nghttpd, run_client

from ecapture.events import TlsData
from ecapture.streams import HttpExchange
from ecapture.testing.replay import replay_events

sys.path.insert(0, str(PROGRAMS))
from https_client import pattern  # noqa: E402

pytestmark = [pytest.mark.ecapture_module("tls"), pytest.mark.requires_lib("libssl.so.3")]

# Every TLS fixture also has an expected key log: the recordings carry the keys.
MODELS = ("text", "json", "keylog")


def test_curl_against_openssl_s_server(capture,
                                       s_server: int) -> None:
    cap = capture()
    out = subprocess.run(["curl", "-sk", "--http1.1", f"https://127.0.0.1:{s_server}/"],
                         check=True, capture_output=True, timeout=30).stdout
    cap.stop()
    events = [e for e in replay_events(cap.record) if isinstance(e, TlsData)]
    curl = [e for e in events if e.comm == "curl"]
    assert [e.direction for e in curl][:1] == ["write"]
    assert curl[0].data.startswith(b"GET / HTTP/1.1\r\n")
    received = b"".join(e.data for e in curl if e.direction == "read")
    assert received.endswith(out)  # the body curl printed, after the headers
    assert received.startswith(b"HTTP/1.0 200 ok")
    assert all(e.conn is not None and e.conn.remote == f"127.0.0.1:{s_server}" for e in curl)
    cap.save_fixture("tls/curl_http11", MODELS)


def test_python_client_uploads_one_mib(capture,
                                       https_server: Server) -> None:
    size = 1 << 20
    cap = capture()
    run_client(https_server.port, "upload", str(size))
    cap.stop()
    events = [e for e in replay_events(cap.record) if isinstance(e, TlsData)]
    # The client's one SSL_write_ex of it, whole. On 7.x, before per-CPU scratch had slots
    # (kern/prelude.c), a preempted run's chunks went out under the server's header: the
    # call arrived cut short, or with the server's bytes in it. A read the kernel refuses
    # (bench/read_user_repro.py --collapse) would show as missing bytes too.
    upload = [e for e in events if e.direction == "write" and e.total_len == size]
    assert len(upload) == 1
    got = upload[0]
    assert got.data == pattern(size)[:len(got.data)], "bytes of another call in the upload"
    assert got.missing == 0, f"{got.missing} of {size} bytes of the upload missing"
    cap.save_fixture("tls/python_upload_1mib", MODELS)


def test_curl_http2_against_nghttpd(capture, cert,
                                    tmp_path: Path) -> None:
    docroot = tmp_path / "docroot"
    docroot.mkdir()
    for name in ("index.html", "a.txt", "b.txt"):
        (docroot / name).write_text(f"<p>{name} over HTTP/2</p>\n" * 3)
    port = _free_port()
    server = nghttpd(port, docroot, cert)
    try:
        _wait_port(port)
        cap = capture()
        subprocess.run(["curl", "--http2", "-sk", *(f"https://127.0.0.1:{port}/{n}"
                                                    for n in ("index.html", "a.txt", "b.txt"))],
                       check=True, capture_output=True, timeout=30)
        cap.stop()
    finally:
        server.terminate()
        server.wait(10)
    got = [e for e in replay_events(cap.record, parsed=True) if isinstance(e, HttpExchange)
           and e.comm == "curl"]
    assert [e.request.path for e in got if e.request] == ["/index.html", "/a.txt", "/b.txt"]
    assert all(e.response is not None and e.response.status == 200 for e in got)
    cap.save_fixture("tls/curl_http2", MODELS)


def test_python_keepalive_http11(capture,
                                 https_server: Server) -> None:
    cap = capture()
    run_client(https_server.port, "session", "/plain", "/chunked", "/gzip")
    cap.stop()
    got = [e for e in replay_events(cap.record, parsed=True) if isinstance(e, HttpExchange)
           and e.pid != https_server.pid]
    assert [e.request.path for e in got if e.request] == ["/plain", "/chunked", "/gzip"]
    cap.save_fixture("tls/python_keepalive", MODELS)
