"""Live capture of real TLS programs on 127.0.0.1, checked against ground truth: the
server's own log of client addresses, the client's own view of its socket, the exact
bytes sent, and the kernel's list of loaded programs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from live_helpers import (
    PROGRAMS,
    ROOT,
    Server,
    in_process_capture,
    replay,
    run_client,
    unprivileged_python,
)

from ecapture.events import Conn, TlsData
from ecapture.live.prereq import has_ringbuf
from ecapture.structs.tls import TLS_CHUNK_SIZE as SSL_CHUNK_SIZE
from ecapture.testing.replay import replay_events

sys.path.insert(0, str(PROGRAMS))
from https_client import pattern  # noqa: E402

pytestmark = [pytest.mark.ecapture_module("tls"), pytest.mark.requires_lib("libssl.so.3")]

PRIME = 23


def data_events(path: Path | None, pid: int | None = None) -> list[TlsData]:
    assert path is not None
    return [e for e in replay_events(path)
            if isinstance(e, TlsData) and (pid is None or e.pid == pid)]


@pytest.mark.parametrize("buffer", ["auto", "perf"])
def test_curl_request_response_and_tuples(capture, https_server: Server, buffer: str) -> None:
    # --raw: the per-call blocks of the text model, which this test reads.
    cap = capture("--raw", *(["--perf-buffer"] if buffer == "perf" else []))
    # auto: a ring buffer where the kernel has one (5.8+), else a perf buffer.
    chosen = "ring" if buffer == "auto" and has_ringbuf() else "perf"
    assert f"({chosen} buffer)" in cap.err_path.read_text()
    port = https_server.port
    subprocess.run(["curl", "-sk", f"https://127.0.0.1:{port}/hello"], check=True,
                   capture_output=True, timeout=30)
    text = cap.stop()
    (entry,) = https_server.read_log(1)
    client = f"127.0.0.1:{entry['client'][1]}"  # type: ignore[index]
    server = f"127.0.0.1:{port}"

    events = data_events(cap.record)
    curl = [e for e in events if e.comm == "curl"]
    req = [e for e in curl if e.direction == "write" and e.data.startswith(b"GET /hello ")]
    resp = [e for e in curl if e.direction == "read" and b"hello /hello" in e.data]
    assert len(req) == 1 and len(resp) == 1
    for e in (req[0], resp[0]):
        assert e.conn is not None and e.conn.kind == "connect"
        assert (e.conn.local, e.conn.remote) == (client, server)
        assert e.version_name in ("TLSv1.2", "TLSv1.3")
    # The server side of the same connection, seen in the same capture.
    srv = [e for e in events if e.pid == https_server.pid]
    srv_req = [e for e in srv if e.direction == "read" and e.data.startswith(b"GET /hello ")]
    assert len(srv_req) == 1
    assert srv_req[0].conn is not None and srv_req[0].conn.kind == "accept"
    assert (srv_req[0].conn.local, srv_req[0].conn.remote) == (server, client)
    # What a user reads on the terminal.
    assert f"{client} -> {server}  WRITE" in text
    assert f"{server} -> {client}  READ" in text
    assert "GET /hello HTTP/1.1" in text


def test_prime_count_workload_exact_with_tuples(capture, https_server: Server) -> None:
    cap = capture()
    paths = [f"/req-{i:02d}" for i in range(PRIME)]
    results = run_client(https_server.port, "get", *paths)
    cap.stop()
    assert [r["status"] for r in results] == [200] * PRIME
    local_port = {r["path"]: r["local_port"] for r in results}
    events = data_events(cap.record)

    client_reqs = [e for e in events if e.pid != https_server.pid and e.direction == "write"
                   and e.data.startswith(b"GET /req-")]
    assert len(client_reqs) == PRIME
    for e in client_reqs:
        path = e.data.split()[1].decode()
        assert e.conn is not None
        assert e.conn.local == f"127.0.0.1:{local_port[path]}"
        assert e.conn.remote == f"127.0.0.1:{https_server.port}"
    assert sorted(e.data.split()[1].decode() for e in client_reqs) == paths

    server_reqs = [e for e in events if e.pid == https_server.pid and e.direction == "read"
                   and e.data.startswith(b"GET /req-")]
    assert len(server_reqs) == PRIME
    for e in server_reqs:
        path = e.data.split()[1].decode()
        assert e.conn is not None
        assert e.conn.remote == f"127.0.0.1:{local_port[path]}"


def test_syscall_tracepoints_of_kernels_before_6_4(https_server: Server, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels before 6.4 have no sock:sock_send_length/sock_recv_length: the family notes
    fds and tuples from the syscall tracepoints instead. Build it that way here and check
    every request of the prime-count workload, both sides, for its fd and 4-tuple."""
    from ecapture.live import prereq
    from ecapture.modules.openssl import OpenSSLModule

    monkeypatch.setattr(prereq, "has_socket_tracepoints", lambda tracefs: False)
    module = OpenSSLModule({"libssl": None, "pid": None, "uid": None, "ifname": None})
    record = tmp_path / "syscalls.ecap"
    paths = [f"/old-{i:02d}" for i in range(PRIME)]
    with in_process_capture(module, record) as session:
        assert session.describe()["socket_hooks"] == "syscalls"
        results = run_client(https_server.port, "get", *paths)
    local_port = {r["path"]: r["local_port"] for r in results}
    server = f"127.0.0.1:{https_server.port}"
    reqs = [e for e in data_events(record) if e.data.startswith(b"GET /old-")]
    sides = {"write": ("connect", lambda c: c.local), "read": ("accept", lambda c: c.remote)}
    for direction, (kind, client_end) in sides.items():
        mine = [e for e in reqs if e.direction == direction]
        assert sorted(e.data.split()[1].decode() for e in mine) == paths, direction
        for e in mine:
            assert e.fd >= 0 and e.conn is not None and e.conn.kind == kind, (e.pid, e.fd, e.conn)
            assert client_end(e.conn) == f"127.0.0.1:{local_port[e.data.split()[1].decode()]}"
            assert server in (e.conn.local, e.conn.remote)


def released(record: Path | None) -> tuple[list[object], list[tuple[int, object]]]:
    """The recording's events fed one by one to the conversations, as the live path feeds
    them: the events fed, and each output event with the index of the one that released
    it (len(fed) for those only the end released)."""
    from ecapture.streams import Conversations

    assert record is not None
    conv = Conversations()
    fed: list[object] = [e for e in replay_events(record) if isinstance(e, Conn | TlsData)]
    out: list[tuple[int, object]] = []
    for i, ev in enumerate(fed):
        out += [(i, o) for o in conv.feed(ev)]  # type: ignore[arg-type]
    out += [(len(fed), o) for o in conv.finish()]
    return fed, out


def test_keepalive_older_than_the_capture_pairs_each_response_at_once(
        capture, https_server: Server) -> None:
    """A keep-alive connection set up before the capture, then 7 requests. The server was
    blocked in the read of the first one when the probes went in (the uretprobe limit):
    that response stands alone. Every later one pairs with its own request, and each
    exchange comes out with its response's last byte, not one request late, and not raw
    at the close."""
    from ecapture.streams import HttpExchange

    count = 7
    paths = ["/before", *(f"/after-{i}" for i in range(1, count + 1))]
    client = subprocess.Popen([sys.executable, str(PROGRAMS / "https_client.py"),
                               str(https_server.port), "keepalive", *paths],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdin is not None and client.stdout is not None
    json.loads(client.stdout.readline())  # /before: connected and used before the capture
    cap = capture("--pid", str(https_server.pid))
    for _ in paths[1:]:
        client.stdin.write("next\n")
        client.stdin.flush()
        assert json.loads(client.stdout.readline())["status"] == 200
    text = cap.stop()
    client.stdin.write("bye\n")
    client.stdin.flush()
    client.wait(30)
    fed, out = released(cap.record)
    exchanges = [(i, o) for i, o in out if isinstance(o, HttpExchange)]
    assert [e.request.path if e.request else None for _, e in exchanges] == [None, *paths[2:]]
    assert [e.response.body if e.response else None for _, e in exchanges] == \
        [f"hello {p}\n".encode() for p in paths[1:]]
    assert not [o for _, o in out if isinstance(o, TlsData)], "bytes shown raw"
    assert "no response captured" not in text
    for i, e in exchanges:  # released by the event that carried its response's last byte
        assert e.response is not None and i < len(fed)
        last = fed[i]
        assert isinstance(last, TlsData) and last.direction == "write"
        assert last.timestamp_ns == e.response.end_ns, e.response.body


RAW_SINK = """
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv = socket.create_server(("127.0.0.1", 0))
print(srv.getsockname()[1], flush=True)
conn = ctx.wrap_socket(srv.accept()[0], server_side=True)
while conn.recv(4096):
    pass
"""

RAW_SOURCE = """
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
conn = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))))
conn.sendall(b"\\x17 before the capture\\n")
print("connected", flush=True)
for line in sys.stdin:
    conn.sendall(line.encode())
    print("sent", flush=True)
"""


def test_raw_bytes_of_a_connection_older_than_the_capture_show_at_once(
        capture, cert: tuple[str, str]) -> None:
    """A connection set up before the capture, with a protocol that is not HTTP and
    bytes that flow one way. Which side is the client is unknown there: each block is
    shown as it comes, not held until the other side speaks or the connection closes."""
    count = 7
    sink = subprocess.Popen([sys.executable, "-c", RAW_SINK, *cert], stdout=subprocess.PIPE,
                            text=True)
    assert sink.stdout is not None
    port = int(sink.stdout.readline())
    source = subprocess.Popen([sys.executable, "-c", RAW_SOURCE, str(port)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert source.stdin is not None and source.stdout is not None
    assert source.stdout.readline() == "connected\n"
    cap = capture()
    for i in range(count):
        source.stdin.write(f"\x17 line {i}\n")
        source.stdin.flush()
        assert source.stdout.readline() == "sent\n"
    cap.stop()
    source.stdin.close()
    source.wait(30)
    sink.wait(30)
    fed, out = released(cap.record)
    expected = "".join(f"\x17 line {i}\n" for i in range(count)).encode()
    for pid, direction in ((source.pid, "write"), (sink.pid, "read")):
        mine = [(i, o) for i, o in out if isinstance(o, TlsData) and o.pid == pid]
        data = b"".join(o.data for _, o in mine)
        # The sink's first read was already blocked when the probes went in.
        assert data == expected if pid == source.pid else expected.endswith(data), (pid, data)
        assert len(data) > len(expected) // 2, (pid, data)
        assert {o.direction for _, o in mine} == {direction}
        assert all(o.conn is not None and o.conn.kind == "proc" for _, o in mine)
        for i, o in mine:  # released by the very event that carried it
            assert i < len(fed) and fed[i] is o, (pid, o.data)


THREADED_CLIENT = """
import http.client, ssl, sys, threading
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
go = threading.Event()
def worker():
    print(threading.get_native_id(), flush=True)
    go.wait()
    for i in range(int(sys.argv[2])):
        conn = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[1]), context=ctx)
        conn.request("GET", f"/thread-{i}")
        conn.getresponse().read()
        conn.close()
t = threading.Thread(target=worker)
t.start()
sys.stdin.readline()
go.set()
t.join()
"""


def test_pid_of_a_thread_captures_its_process(capture, https_server: Server) -> None:
    """--pid takes a thread's id as its process's, which is what the kernel filters on,
    and says so, rather than a filter that never matches."""
    count = 7
    client = subprocess.Popen([sys.executable, "-c", THREADED_CLIENT, str(https_server.port),
                               str(count)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert client.stdin is not None and client.stdout is not None
    tid = int(client.stdout.readline())
    assert tid != client.pid
    cap = capture("--pid", str(tid))
    client.stdin.write("go\n")
    client.stdin.flush()
    assert client.wait(30) == 0
    cap.stop()
    err = cap.err_path.read_text()
    assert f"--pid {tid} is a thread of process {client.pid} " in err
    events = data_events(cap.record)
    assert {e.pid for e in events} == {client.pid}
    sent = [e.data.split()[1].decode() for e in events if e.direction == "write"
            and e.data.startswith(b"GET ")]
    assert sent == [f"/thread-{i}" for i in range(count)]
    assert {e.tid for e in events} == {tid}


def test_server_side_with_pid_filter_excludes_others(capture, https_server: Server) -> None:
    cap = capture("--pid", str(https_server.pid))
    port = https_server.port
    for i in range(3):
        subprocess.run(["curl", "-sk", f"https://127.0.0.1:{port}/curl-{i}"], check=True,
                       capture_output=True, timeout=30)
    run_client(port, "get", "/py-0", "/py-1")
    cap.stop()
    log = https_server.read_log(5)
    clients = {e["path"]: f"127.0.0.1:{e['client'][1]}" for e in log}  # type: ignore[index]
    events = data_events(cap.record)
    assert events, "nothing captured from the server"
    assert {e.pid for e in events} == {https_server.pid}
    reqs = [e for e in events if e.direction == "read" and e.data.startswith(b"GET /")]
    assert sorted(e.data.split()[1].decode() for e in reqs) == sorted(clients)
    for e in reqs:
        assert e.conn is not None and e.conn.kind == "accept"
        assert e.conn.remote == clients[e.data.split()[1].decode()]
        assert e.conn.local == f"127.0.0.1:{port}"
    responses = [e for e in events if e.direction == "write" and b"hello /" in e.data]
    assert len(responses) == 5


def test_one_mib_upload_captured_whole(capture, https_server: Server) -> None:
    size = 1 << 20
    cap = capture()
    (result,) = run_client(https_server.port, "upload", str(size))
    cap.stop()
    (entry,) = https_server.read_log(1)
    assert entry["length"] == size
    payload = pattern(size)
    events = data_events(cap.record)
    # Client side: http.client sends the body in one sendall -> one SSL_write_ex of 1 MiB.
    whole = [e for e in events if e.direction == "write" and e.data == payload]
    assert len(whole) == 1, [len(e.data) for e in events if e.direction == "write"]
    assert whole[0].missing == 0 and whole[0].func == "SSL_write_ex"
    # Server side: many reads whose concatenation is the request, body byte-exact.
    server_in = b"".join(e.data for e in events
                         if e.pid == https_server.pid and e.direction == "read")
    assert server_in.endswith(payload)
    assert f"sha256={entry['sha256']}" in str(result["body"])


def _our_programs() -> list[str]:
    out = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if "uprobe_SSL_" in line
            or "uretprobe_SSL_" in line]


def _uprobe_events() -> str:
    for path in ("/sys/kernel/tracing/uprobe_events", "/sys/kernel/debug/tracing/uprobe_events"):
        if os.path.exists(path):
            return Path(path).read_text()
    return ""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_detaches_everything(capture, sig: int) -> None:
    if shutil.which("bpftool") is None:
        pytest.fail("bpftool is not installed (scripts/setup.sh installs it)")
    before = len(_our_programs())
    cap = capture()
    assert len(_our_programs()) > before, "bpftool does not list our programs while attached"
    cap.stop(sig)
    assert len(_our_programs()) == before
    assert f"bcc_{cap.proc.pid}" not in _uprobe_events()
    assert "clean" in subprocess.run([sys.executable, "-m", "ecapture", "info",
                                      str(cap.record)], capture_output=True, text=True,
                                     check=True, cwd=ROOT).stdout


def test_replay_equals_live_as_unprivileged_user_without_bcc(capture, https_server: Server,
                                                             tmp_path: Path) -> None:
    cap = capture()
    subprocess.run(["curl", "-sk", f"https://127.0.0.1:{https_server.port}/replay"],
                   check=True, capture_output=True, timeout=30)
    run_client(https_server.port, "get", "/replay-py")
    live = cap.stop()
    assert "GET /replay HTTP/1.1" in live
    assert replay(cap.record) == live  # type: ignore[arg-type]

    # Now as nobody, with bcc made unimportable, from a copy nobody may read.
    assert cap.record is not None and oct(cap.record.stat().st_mode & 0o777) == "0o600"
    shared = Path(tempfile.mkdtemp(prefix="ecapture-replay-", dir="/tmp"))
    try:
        copy = shared / "cap.ecap"
        shutil.copyfile(cap.record, copy)
        prefix = unprivileged_python(shared)
        code = ("import sys; sys.modules['bcc'] = None; "  # any 'import bcc' now fails
                "from ecapture.cli import main; rc = main(['replay', sys.argv[1]]); "
                "assert 'ecapture.live' not in sys.modules; sys.exit(rc)")
        out = subprocess.run([*prefix, "-c", code, str(copy)], capture_output=True,
                             text=True, cwd="/")
    finally:
        shutil.rmtree(shared)
    assert out.returncode == 0, out.stderr
    assert out.stdout == live


def test_lost_events_are_counted_and_reported(capture, https_server: Server) -> None:
    """One 4 MiB SSL_write is 256 chunks, emitted in one burst; a 1 MiB ring buffer cannot
    hold them. Only the client is traced, so what arrived plus what was lost must account
    for exactly those 256 chunks (plus, perhaps, its small read of the response)."""
    size = 4 << 20
    chunks = size // SSL_CHUNK_SIZE
    client = subprocess.Popen([sys.executable, str(PROGRAMS / "https_client.py"),
                               str(https_server.port), "upload-wait", str(size)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdin is not None and client.stdout is not None
    assert "connected" in client.stdout.readline()
    cap = capture("--mapsize", "1", "--pid", str(client.pid))
    client.stdin.write("go\n")
    client.stdin.flush()
    assert json.loads(client.stdout.readline())["status"] == 200
    client.wait(30)
    text = cap.stop()
    assert cap.record is not None
    info = subprocess.run([sys.executable, "-m", "ecapture", "info", str(cap.record)],
                          capture_output=True, text=True, check=True, cwd=ROOT).stdout
    (events_line,) = [line for line in info.splitlines() if line.startswith("events:")]
    lost = int(events_line.split("(")[1].split()[0])
    assert lost > 0, info
    # Every lost event is reported, in the live output and identically in replay.
    reported = sum(int(line.split("LOST ")[1].split()[0]) for line in text.splitlines()
                   if " LOST " in line)
    assert reported == lost
    assert replay(cap.record) == text
    # The big call is shown short, with how much is missing, not silently truncated.
    big = [e for e in data_events(cap.record) if e.total_len == size]
    delivered = sum(len(e.data) for e in big) // SSL_CHUNK_SIZE
    assert chunks - delivered <= lost <= chunks - delivered + 1
    # The summary at exit says what that cost in whole calls and bytes, live and in replay.
    missing = sum(e.missing for e in data_events(cap.record))
    short = sum(1 for e in data_events(cap.record) if e.missing)
    said = f"tls: {short:,} call{'s' if short > 1 else ''} short by {missing:,} bytes"
    assert said in cap.err_path.read_text()
    stats = subprocess.run([sys.executable, "-m", "ecapture", "replay", "--stats",
                            str(cap.record)], capture_output=True, text=True, cwd=ROOT)
    assert said in stats.stderr


def test_connection_older_than_the_capture_gets_its_tuple_from_proc(capture,
                                                                    https_server: Server) -> None:
    client = subprocess.Popen([sys.executable, str(PROGRAMS / "https_client.py"),
                               str(https_server.port), "keepalive", "/before", "/after"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdin is not None and client.stdout is not None
    first = json.loads(client.stdout.readline())  # connected and used before capture
    cap = capture()
    client.stdin.write("go\n")
    client.stdin.flush()
    second = json.loads(client.stdout.readline())
    text = cap.stop()
    client.stdin.write("bye\n")
    client.stdin.flush()
    client.wait(30)
    assert first["local_port"] == second["local_port"]
    client_end = f"127.0.0.1:{first['local_port']}"
    server_end = f"127.0.0.1:{https_server.port}"
    events = data_events(cap.record)
    mine = [e for e in events if e.pid == client.pid]
    theirs = [e for e in events if e.pid == https_server.pid]
    assert any(e.data.startswith(b"GET /after ") for e in mine)
    # The server was already blocked inside SSL_read when the probes went in: that one
    # call's entry was never seen, so its buffer is unknown. Its response is captured.
    assert any(b"hello /after" in e.data for e in theirs if e.direction == "write")
    for e in mine + theirs:
        assert e.conn is not None and e.conn.kind == "proc"
    assert {(e.conn.local, e.conn.remote) for e in mine} == {(client_end, server_end)}
    assert {(e.conn.local, e.conn.remote) for e in theirs} == {(server_end, client_end)}
    assert f"SOCKET  {client_end} -> {server_end} (from /proc)" in text
    assert replay(cap.record) == text
