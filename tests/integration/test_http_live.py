"""Conversations live: real HTTP/2 and HTTP/1.1 clients and servers over TLS, each request
paired with its response, checked against the files served and the client's own view, and
identical between the live output and the replay of its recording."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_helpers import PROGRAMS, Server, _free_port, _wait_port, nghttpd, replay, run_client

from ecapture.streams import HttpExchange
from ecapture.testing.replay import replay_events

sys.path.insert(0, str(PROGRAMS))
from https_server import expected_body  # noqa: E402

pytestmark = [pytest.mark.ecapture_module("tls"), pytest.mark.requires_lib("libssl.so.3")]

PRIME = 23


@pytest.fixture
def h2_server(cert: tuple[str, str], tmp_path: Path) -> Iterator[tuple[int, Path]]:
    if shutil.which("nghttpd") is None:
        pytest.fail("nghttpd is not installed (scripts/setup.sh installs nghttp2-server)")
    docroot = tmp_path / "docroot"
    docroot.mkdir()
    for i in range(1, PRIME + 1):
        (docroot / f"f{i:02d}").write_text(f"file {i:02d} served over HTTP/2\n" * i)
    port = _free_port()
    proc = nghttpd(port, docroot, cert)
    _wait_port(port)
    yield port, docroot
    proc.terminate()
    proc.wait(10)


def exchanges(path: Path | None, comm: str | None = None) -> list[HttpExchange]:
    assert path is not None
    return [e for e in replay_events(path, parsed=True) if isinstance(e, HttpExchange)
            and (comm is None or e.comm == comm)]


def test_curl_http2_23_requests_on_one_connection(capture, h2_server) -> None:
    port, docroot = h2_server
    urls = [f"https://127.0.0.1:{port}/f{i:02d}" for i in range(1, PRIME + 1)]
    cap = capture()
    out = subprocess.run(["curl", "--http2", "-sk", "-w", "\\nconnects=%{num_connects}\\n",
                          *urls], check=True, capture_output=True, text=True, timeout=60).stdout
    text = cap.stop()
    connects = [line for line in out.splitlines() if line.startswith("connects=")]
    assert connects == ["connects=1"] + ["connects=0"] * (PRIME - 1)  # one connection
    got = exchanges(cap.record, "curl")
    assert len(got) == PRIME
    assert {e.protocol for e in got} == {"http2"}
    assert len({e.conn.local for e in got if e.conn}) == 1
    assert sorted(e.stream_id for e in got) == list(range(1, 2 * PRIME, 2))  # type: ignore
    for e in got:
        assert e.request is not None and e.response is not None
        assert e.response.status == 200
        assert e.request.authority == f"127.0.0.1:{port}"
        assert e.response.body == (docroot / e.request.path.lstrip("/")).read_bytes()
    assert sorted(e.request.path for e in got) == [f"/f{i:02d}" for i in range(1, PRIME + 1)]  # type: ignore[union-attr]
    # nghttpd's side of the same connection, paired by stream id as well.
    server = exchanges(cap.record, "nghttpd")
    assert sorted(e.request.path for e in server if e.request) == \
        sorted(e.request.path for e in got if e.request)
    # nghttpd accepts without asking for the peer's address: its tuple comes from /proc.
    assert {(e.conn.local, e.conn.remote) for e in server if e.conn} == \
        {(e.conn.remote, e.conn.local) for e in got if e.conn}
    assert replay(cap.record) == text  # type: ignore[arg-type]


def test_nghttp_client(capture, h2_server) -> None:
    if shutil.which("nghttp") is None:
        pytest.fail("nghttp is not installed (scripts/setup.sh installs nghttp2-client)")
    port, docroot = h2_server
    cap = capture()
    subprocess.run(["nghttp", "-n", f"https://127.0.0.1:{port}/f03",
                    f"https://127.0.0.1:{port}/f05"], check=True, capture_output=True,
                   timeout=60)
    cap.stop()
    got = exchanges(cap.record, "nghttp")
    assert sorted(e.request.path for e in got if e.request) == ["/f03", "/f05"]
    for e in got:
        assert e.response is not None and e.request is not None
        assert e.response.body == (docroot / e.request.path.lstrip("/")).read_bytes()


def test_python_keepalive_chunked_and_gzip(capture, https_server: Server) -> None:
    paths = ["/plain", "/chunked", "/gzip"]
    cap = capture()
    results = run_client(https_server.port, "session", *paths)
    text = cap.stop()
    assert len({r["local_port"] for r in results}) == 1  # one keep-alive connection
    client = [e for e in exchanges(cap.record) if e.pid != https_server.pid]
    assert [e.request.path for e in client if e.request] == paths
    for e in client:
        assert e.protocol == "http1" and e.role == "client"
        assert e.request is not None and e.response is not None
        assert e.response.status == 200
        assert e.response.body == expected_body(e.request.path)  # de-chunked, gunzipped
    gz = next(e for e in client if e.request and e.request.path == "/gzip")
    assert gz.response is not None and gz.response.body_size < len(gz.response.body)
    server = [e for e in exchanges(cap.record) if e.pid == https_server.pid]
    assert [e.request.path for e in server if e.request] == paths
    assert all(e.role == "server" for e in server)
    assert "/chunked line 0399" in text and "/gzip line 0399" in text
    assert replay(cap.record) == text  # type: ignore[arg-type]


def test_json_model_live_equals_replay_and_parses(capture, https_server: Server) -> None:
    cap = capture("-m", "json")
    run_client(https_server.port, "session", "/a", "/gzip")
    live = cap.stop()
    objects = [json.loads(line) for line in live.splitlines()]
    http = [o for o in objects if o["type"] == "http" and o["role"] == "client"]
    assert [o["request"]["path"] for o in http] == ["/a", "/gzip"]
    assert http[1]["response"]["body"] == expected_body("/gzip").decode()
    assert replay(cap.record, "-m", "json") == live  # type: ignore[arg-type]
    if shutil.which("jq"):
        statuses = subprocess.run(
            ["jq", "-r", "select(.type == \"http\" and .role == \"client\") | .response.status"],
            input=live, text=True, check=True, capture_output=True).stdout
        assert statuses.split() == ["200", "200"]


@pytest.mark.parametrize("hooks", ["socket", "syscalls"])
def test_server_accept_right_after_a_busy_connection_has_its_tuple(
        h2_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hooks: str) -> None:
    """nghttp with 23 concurrent streams on one connection, then at once curl on a new one:
    nghttpd reuses the first connection's fd for the second, within milliseconds. Both of
    nghttpd's connections carry their own 4-tuple on every exchange, with the socket
    tracepoints (Linux 6.4+) and with the syscall tracepoints of older kernels."""
    from live_helpers import in_process_capture

    from ecapture.live import prereq
    from ecapture.modules.openssl import OpenSSLModule

    if shutil.which("nghttp") is None:
        pytest.fail("nghttp is not installed (scripts/setup.sh installs nghttp2-client)")
    if hooks == "syscalls":
        monkeypatch.setattr(prereq, "has_socket_tracepoints", lambda tracefs: False)
    elif not prereq.has_socket_tracepoints(prereq.tracefs()):
        pytest.skip("this kernel has no sock:sock_send_length (Linux 6.4+)")
    port, _ = h2_server
    urls = [f"https://127.0.0.1:{port}/f{i:02d}" for i in range(1, PRIME + 1)]
    module = OpenSSLModule({"libssl": None, "pid": None, "uid": None, "ifname": None})
    record = tmp_path / "busy.ecap"
    with in_process_capture(module, record) as session:
        assert session.describe()["socket_hooks"] == ("tracepoints" if hooks == "socket"
                                                      else "syscalls")
        subprocess.run(["nghttp", "-n", *urls], check=True, capture_output=True, timeout=60)
        subprocess.run(["curl", "--http2", "-sk", urls[0]], check=True, capture_output=True,
                       timeout=60)
    here = f"127.0.0.1:{port}"  # the capture sees the whole system: only this server's
    got = [e for e in exchanges(record) if e.conn is None or here in (e.conn.local,
                                                                       e.conn.remote)]
    clients = {e.comm: e.conn.local for e in got if e.comm in ("nghttp", "curl") and e.conn}
    assert set(clients) == {"nghttp", "curl"}
    server = [e for e in got if e.comm == "nghttpd"]
    assert len(server) == PRIME + 1
    assert all(e.conn is not None and e.conn.kind == "accept" for e in server)
    assert sorted(e.conn.remote for e in server if e.conn) == \
        sorted([clients["nghttp"]] * PRIME + [clients["curl"]])
    assert {e.conn.local for e in server if e.conn} == {here}
