"""node live, against ground truth: node's own key log (``--tls-keylog``) and the exact
plaintext of 23 requests, both directions. Two nodes: the one on PATH, which links its own
OpenSSL statically (nodesource's builds: the executable is the library), watched with
``--libssl`` and with ``--pid``; and Debian bookworm's node 18 (unpacked from the archive),
which links the system's libssl.so.3, watched with ``--pid``.

node drives OpenSSL over memory BIOs: the socket I/O happens outside SSL_read/SSL_write,
so which connection (fd, 4-tuple) a call belongs to is a separate question, asked by
test_node_tuples alone."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from live_helpers import PROGRAMS, Server, keylog_from, keylog_lines

from ecapture.events import TlsData
from ecapture.testing.debs import Unpacked, unpack_or_skip
from ecapture.testing.plugin import unavailable
from ecapture.testing.replay import replay_events

NODE = shutil.which("node")
PRIME = 23
CLIENT = str(PROGRAMS / "https_client.js")
BOOKWORM = ("bookworm", "bookworm-security", "bookworm-updates")
# Debian's node 18 and what it loads that a host may not have. Its built-in modules that
# Debian ships apart (acorn, undici, cjs-module-lexer) are read from /usr/share/nodejs.
NODE18 = ("nodejs", "libnode108", "libbrotli1", "libc-ares2", "libuv1", "libnghttp2-14",
          "libicu72", "node-acorn", "node-cjs-module-lexer", "node-undici")

pytestmark = [pytest.mark.ecapture_module("tls")]


@pytest.fixture
def static_node() -> str:
    """The node on PATH, if it links OpenSSL statically."""
    from ecapture.targets import elf_symbols

    if NODE is None:
        unavailable("node is not installed")
    exe = os.path.realpath(str(NODE))
    if "SSL_write" not in elf_symbols(exe):
        unavailable(f"{exe} does not link OpenSSL statically")
    return exe


@pytest.fixture(scope="module")
def node18() -> Unpacked:
    return unpack_or_skip(NODE18, BOOKWORM)


def node18_cmd(pkg: Unpacked) -> list[str]:
    """Debian's node 18 as if installed: a private mount namespace lays the package's
    /usr/share over the host's (read-only), where node looks for its shipped-apart
    modules. Its libraries come from LD_LIBRARY_PATH, libssl.so.3 from the host."""
    if shutil.which("unshare") is None:
        unavailable("unshare (util-linux) is not installed")
    script = ('mount -t overlay overlay -o "lowerdir=$1/usr/share:/usr/share" /usr/share '
              '&& shift && exec "$@"')
    return ["unshare", "-m", "sh", "-c", script, "sh", str(pkg.root),
            str(pkg.path("/usr/bin/node"))]


@dataclass
class NodeRun:
    pid: int
    keylog: Path
    results: list[dict[str, object]]


class NodeClient:
    """https_client.js started and held before its first request (``wait``), so that a
    capture can attach to its pid first; ``run()`` lets it go and waits for it."""

    def __init__(self, node: list[str], port: int, tls: str, paths: list[str], keylog: Path,
                 env: dict[str, str] | None = None):
        self.keylog = keylog
        self.proc = subprocess.Popen([*node, f"--tls-keylog={keylog}", CLIENT, str(port), tls,
                                      "wait", *paths], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, **(env or {})})
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if not first:
            assert self.proc.stderr is not None
            pytest.fail(f"node did not start: {self.proc.stderr.read()[-2000:]}")
        self.pid = int(json.loads(first)["pid"])

    def run(self) -> NodeRun:
        out, err = self.proc.communicate("go\n", timeout=60)
        assert self.proc.returncode == 0, err
        return NodeRun(self.pid, self.keylog, [json.loads(line) for line in out.splitlines()])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def node_client() -> Iterator[type[NodeClient]]:
    started: list[NodeClient] = []

    class Tracked(NodeClient):
        def __init__(self, *args: object, **kwargs: object):
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            started.append(self)

    yield Tracked
    for client in started:
        client.kill()


def check_run(record: Path | None, run: NodeRun, paths: list[str], tls: str,
              tmp_path: Path) -> list[TlsData]:
    """The ground truth of one client run against what the capture recorded: every request
    and response once, in order; node's own key log, line for line."""
    assert [r["status"] for r in run.results] == [200] * len(paths)
    assert record is not None
    events = [e for e in replay_events(record) if isinstance(e, TlsData) and e.pid == run.pid]
    sent = b"".join(e.data for e in events if e.direction == "write")
    received = b"".join(e.data for e in events if e.direction == "read")
    assert re.findall(rb"GET (/n\d\d) HTTP/1.1\r\n", sent) == [p.encode() for p in paths]
    assert re.findall(rb"hello (/n\d\d)\n", received) == [p.encode() for p in paths]
    assert received.count(b"HTTP/1.1 200 OK\r\n") == len(paths)
    assert {e.version_name for e in events} == {f"TLSv{tls}"}
    theirs = keylog_lines(run.keylog)
    label = "CLIENT_RANDOM" if tls == "1.2" else "CLIENT_TRAFFIC_SECRET_0"
    assert sum(1 for line in theirs if line.startswith(label)) == len(paths)
    assert keylog_from(record, tmp_path / "ours.keys", "--pid", str(run.pid)) == theirs
    return events


def check_tuples(events: list[TlsData], run: NodeRun, port: int) -> set[tuple[str, str]]:
    """Each request on a connection of its own, from the port node reports for it: every
    event has its fd and 4-tuple. Returns the (client, server) pairs."""
    server = f"127.0.0.1:{port}"
    truth = {(f"127.0.0.1:{r['local_port']}", server) for r in run.results}
    assert len(truth) == PRIME
    assert all(e.fd >= 0 and e.conn is not None for e in events)
    assert {(e.conn.local, e.conn.remote) for e in events if e.conn} == truth
    return truth


@pytest.mark.parametrize(("how", "tls", "buffer"),
                         [("libssl", "1.3", "auto"), ("pid", "1.2", "perf")])
def test_static_node(capture, static_node: str, node_client: type[NodeClient],
                     https_server: Server, tmp_path: Path, how: str, tls: str,
                     buffer: str) -> None:
    paths = [f"/n{i:02d}" for i in range(PRIME)]
    client = node_client([static_node], https_server.port, tls, paths, tmp_path / "node.keys")
    target = ["--libssl", static_node] if how == "libssl" else ["--pid", str(client.pid)]
    cap = capture(*target, *(["--perf-buffer"] if buffer == "perf" else []))
    # --pid found the executable itself: it defines SSL_read and SSL_write.
    assert f"probes attached to {static_node} " in cap.err_path.read_text()
    run = client.run()
    cap.stop()
    check_run(cap.record, run, paths, tls, tmp_path)
    if how == "libssl":
        cap.save_fixture("tls/node_static_client", ("text", "json", "keylog"))


def test_static_node_version_is_found(static_node: str) -> None:
    from ecapture.modules.openssl import OpenSSLModule

    module = OpenSSLModule({"libssl": static_node})
    module.init()
    theirs = subprocess.run([static_node, "-p", "process.versions.openssl"], check=True,
                            capture_output=True, text=True).stdout.strip()
    assert module.version == theirs
    assert module.key_offsets is not None or "+quic" in theirs


def test_debian_node18_pid(capture, node18: Unpacked, node_client: type[NodeClient],
                           https_server: Server, tmp_path: Path) -> None:
    paths = [f"/n{i:02d}" for i in range(PRIME)]
    client = node_client(node18_cmd(node18), https_server.port, "1.3", paths,
                         tmp_path / "node18.keys", env={"LD_LIBRARY_PATH": node18.library_path()})
    pcap = tmp_path / "cap.pcapng"
    cap = capture("--pid", str(client.pid), "-m", "pcap", "-i", "lo", "-w", str(pcap),
                  "tcp", "port", str(https_server.port))
    # The process maps the host's libssl.so.3: that is where the probes go.
    assert re.search(r"probes attached to \S*/libssl\.so\.3 ", cap.err_path.read_text())
    run = client.run()
    cap.stop()
    events = check_run(cap.record, run, paths, "1.3", tmp_path)
    check_tuples(events, run, https_server.port)
    from test_pcap_live import tshark

    assert tshark(pcap, "http.request", "http.request.uri") == paths
    assert len(tshark(pcap, "http.response", "http.response.code")) == PRIME


def test_node_tuples(capture, static_node: str, node_client: type[NodeClient],
                     https_server: Server, tmp_path: Path) -> None:
    paths = [f"/n{i:02d}" for i in range(PRIME)]
    client = node_client([static_node], https_server.port, "1.3", paths,
                         tmp_path / "node.keys")
    cap = capture("--libssl", static_node)
    run = client.run()
    cap.stop()
    events = check_run(cap.record, run, paths, "1.3", tmp_path)
    truth = check_tuples(events, run, https_server.port)
    log = https_server.read_log(PRIME)
    assert {f"127.0.0.1:{entry['client'][1]}" for entry in log} == {t[0] for t in truth}  # type: ignore[index]


def test_tshark_decrypts_static_node_with_our_keys(capture, static_node: str,
                                                   node_client: type[NodeClient],
                                                   https_server: Server, tmp_path: Path) -> None:
    """The pcap model on a statically linked OpenSSL: the packets and the keys ecapture
    read from node's own SSL objects, and tshark decrypting every request and response."""
    from test_pcap_live import tshark

    paths = [f"/n{i:02d}" for i in range(PRIME)]
    client = node_client([static_node], https_server.port, "1.3", paths,
                         tmp_path / "node.keys")
    pcap = tmp_path / "cap.pcapng"
    cap = capture("--pid", str(client.pid), "-m", "pcap", "-i", "lo", "-w", str(pcap),
                  "tcp", "port", str(https_server.port))
    run = client.run()
    cap.stop()
    assert [r["status"] for r in run.results] == [200] * PRIME
    server_hello = tshark(pcap, "tls.handshake.type == 2",
                          "tls.handshake.extensions.supported_version")
    assert set(server_hello) == {"0x0304"}
    assert tshark(pcap, "http.request", "http.request.uri") == paths
    assert len(tshark(pcap, "http.response", "http.response.code")) == PRIME


def test_debian_node18_whole_system_capture(capture, node18: Unpacked,
                                           node_client: type[NodeClient],
                                           https_server: Server, tmp_path: Path) -> None:
    """Debian's node 18 on the host's libssl, seen by a capture of the whole system that
    started before it: every data event carries its connection's 4-tuple, as with --pid."""
    paths = [f"/n{i:02d}" for i in range(PRIME)]
    cap = capture()
    client = node_client(node18_cmd(node18), https_server.port, "1.3", paths,
                         tmp_path / "node18.keys", env={"LD_LIBRARY_PATH": node18.library_path()})
    run = client.run()
    cap.stop()
    events = check_run(cap.record, run, paths, "1.3", tmp_path)
    check_tuples(events, run, https_server.port)
