"""Live tests of the postgres module against a real PostgreSQL server.

Ground truth: the server's own log with ``log_statement=all``: every simple-protocol Query it
logs as ``statement: TEXT`` and every extended-protocol Execute as ``execute NAME: TEXT``
must be in the capture, in the same order per backend, with exact counts. A statement that
fails to parse is never logged as ``statement:``; its ERROR carries it as ``STATEMENT:``.

One server for the whole module (initdb and pg_ctl run as the ``postgres`` user: the server
refuses root), on its own socket directory and no TCP port, stopped at the end.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from live_helpers import ecap, one_line_error

from ecapture.modules.postgres import PgError, PgStatement
from ecapture.structs.postgres import PG_TEXT_MAX
from ecapture.testing.plugin import unavailable

pytestmark = pytest.mark.ecapture_module("postgres")

PORT = 5499  # only names the socket file: the server listens on no TCP port
ENTRY = re.compile(r"^@@(\d+)@@ (\w+):  (.*)$")


@dataclass
class PgServer:
    bindir: Path
    data: Path
    sockdir: Path
    log: Path

    @property
    def postmaster(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def psql(self, *args: str, input: str | None = None) -> str:
        return subprocess.run(["psql", "-h", str(self.sockdir), "-p", str(PORT), "-U",
                               "postgres", "-X", "-q", "-v", "ON_ERROR_STOP=0", *args],
                              input=input, capture_output=True, text=True, timeout=120,
                              check=True).stdout

    def pgbench(self, mode: str, transactions: int, script: Path) -> None:
        subprocess.run(["pgbench", "-h", str(self.sockdir), "-p", str(PORT), "-U", "postgres",
                        "-n", "-M", mode, "-t", str(transactions), "-f", str(script),
                        "postgres"], capture_output=True, text=True, timeout=120, check=True)

    def entries(self) -> list[tuple[int, str, str]]:
        """(pid, level, message) of every log entry; a message's further lines are the
        ones the server indents with a tab."""
        out: list[tuple[int, str, str]] = []
        for line in self.log.read_text(errors="replace").splitlines():
            if m := ENTRY.match(line):
                out.append((int(m.group(1)), m.group(2), m.group(3)))
            elif line.startswith("\t") and out:
                pid, level, message = out[-1]
                out[-1] = (pid, level, message + "\n" + line[1:])
        return out

    def errors(self, pids: set[int]) -> dict[int, list[tuple[str, str, int | None]]]:
        """Per backend, its errors as (severity, message, position): the log appends " at
        character N" to the message where the server knows the position."""
        per: dict[int, list[tuple[str, str, int | None]]] = {}
        for pid, level, message in self.entries():
            if pid in pids and level in ("ERROR", "FATAL"):
                m = re.fullmatch(r"(.*) at character (\d+)", message, re.S)
                at = (m.group(1), int(m.group(2))) if m else (message, None)
                per.setdefault(pid, []).append((level, *at))
        return per

    def statements(self) -> dict[int, list[str]]:
        """Per backend, what it was asked to run, as the log says it: "statement: TEXT" and
        "execute NAME: TEXT" entries, plus the text of an error's STATEMENT: that was not
        logged before (a statement that failed to parse)."""
        per: dict[int, list[str]] = {}
        for pid, level, message in self.entries():
            ours = per.setdefault(pid, [])
            if level == "LOG" and message.startswith(("statement: ", "execute ")):
                ours.append(message)
            elif level == "STATEMENT" and (not ours or ours[-1] != f"statement: {message}"):
                ours.append(f"statement: {message}")
        return {pid: texts for pid, texts in per.items() if texts}


def _as_postgres(*cmd: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True,
                   capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    servers = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                     key=lambda p: int(Path(p).parts[-3]))
    missing = [t for t in ("psql", "pgbench", "runuser") if shutil.which(t) is None]
    if not servers or missing:
        unavailable(f"needs a PostgreSQL server, psql and pgbench (missing: "
                    f"{', '.join(missing) or 'the server'})")
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        unavailable("needs the postgres user (the server refuses to run as root)")
    bindir = Path(servers[-1]).parent
    # Not under pytest's per-user tmp dir: the postgres user must reach it.
    top = Path(tempfile.mkdtemp(prefix="ecap-pg-"))
    top.chmod(0o755)
    server = PgServer(bindir, top / "data", top / "sock", top / "server.log")
    server.sockdir.mkdir()
    os.chown(top, user.pw_uid, user.pw_gid)
    os.chown(server.sockdir, user.pw_uid, user.pw_gid)
    _as_postgres(str(bindir / "initdb"), "-D", str(server.data), "-A", "trust", "-U",
                 "postgres", "--no-sync")
    options = (f"-c listen_addresses='' -c unix_socket_directories={server.sockdir} "
               f"-c port={PORT} -c log_statement=all -c log_line_prefix='@@%p@@ ' "
               "-c fsync=off")
    _as_postgres(str(bindir / "pg_ctl"), "-D", str(server.data), "-l", str(server.log),
                 "-w", "-o", options, "start")
    try:
        yield server
    finally:
        _as_postgres(str(bindir / "pg_ctl"), "-D", str(server.data), "-m", "fast", "-w",
                     "stop")
        shutil.rmtree(top, ignore_errors=True)


def captured(events: list[object], pids: set[int]) -> dict[int, list[str]]:
    """Per backend, the capture as the log would say it."""
    per: dict[int, list[str]] = {}
    for e in events:
        if not isinstance(e, PgStatement) or e.pid not in pids or e.action in ("parse",
                                                                               "nested"):
            continue
        label = "statement" if e.action == "query" else e.label()
        per.setdefault(e.pid, []).append(f"{label}: {e.query.decode()}")
    return per


def new_statements(pg: PgServer, before: dict[int, list[str]]) -> dict[int, list[str]]:
    time.sleep(0.2)  # the server writes its log entry before it answers, but be sure
    return {pid: texts for pid, texts in pg.statements().items() if pid not in before}


LONG = "SELECT length('" + "0123456789abcdef" * 1100 + "') AS long_one;"  # 17.6 KiB
# 23 statements, each its own Query message: a multi-line one, one of 17.6 KiB, one that
# fails when it runs (logged) and one that fails to parse (logged only with its ERROR),
# two in one message (psql's \;).
SIMPLE = [
    "CREATE TABLE ecap_t (id int PRIMARY KEY, v text);",
    *[f"INSERT INTO ecap_t VALUES ({i}, 'row {i}');" for i in range(1, 10)],
    "CREATE FUNCTION ecap_twice(int) RETURNS int LANGUAGE sql AS 'SELECT $1 * 2';",
    "SELECT ecap_twice(21);",
    "SELECT count(*) FROM ecap_t;",
    "SELECT v\n  FROM ecap_t\n WHERE id = 3;",
    "SELECT 1/0;",
    "SELEC 'not sql';",
    LONG,
    "UPDATE ecap_t SET v = 'ünïcode ✓' WHERE id = 5;",
    "SELECT 1 \\; SELECT 2;",
    "BEGIN;",
    "DELETE FROM ecap_t WHERE id > 10;",
    "COMMIT;",
    "DROP TABLE ecap_t;",
]
# Two statements a transaction; 11 transactions prepared (P_0, P_1), 7 with the extended
# protocol's unnamed statement: prime counts of each.
SCRIPT = "\\set n random(1, 1000)\nSELECT :n + 1 AS next;\nSELECT md5(:n::text);\n"
PREPARED_T, EXTENDED_T = 11, 7


def test_simple_and_extended_protocol_match_the_server_log(live_capture, pg: PgServer,
                                                           tmp_path: Path) -> None:
    script = tmp_path / "bench.sql"
    script.write_text(SCRIPT)
    (tmp_path / "simple.sql").write_text("\n".join(SIMPLE) + "\n")
    before = pg.statements()
    # --pid of the postmaster: its backends are its children.
    cap = live_capture("postgres", "--pid", str(pg.postmaster))
    pg.psql("-f", str(tmp_path / "simple.sql"))
    pg.pgbench("prepared", PREPARED_T, script)
    pg.pgbench("extended", EXTENDED_T, script)
    text = cap.stop()
    truth = new_statements(pg, before)
    assert len(truth) == 3, truth  # psql's backend and one per pgbench run
    events = cap.replay().events()
    assert captured(events, set(truth)) == truth
    simple, prepared, extended = truth.values()  # in the order they began
    # Exact counts: 23 Query messages; 2 x 11 and 2 x 7 Executes.
    assert len(simple) == 23
    assert simple[15] == "statement: SELEC 'not sql';"  # failed to parse: still there
    assert [s.split(":")[0] for s in prepared] == ["execute P_0", "execute P_1"] * PREPARED_T
    assert [s.split(":")[0] for s in extended] == ["execute <unnamed>"] * (2 * EXTENDED_T)
    # Parses: a prepared statement's once per backend, an unnamed one's before each run.
    parses = {}
    for e in events:
        if isinstance(e, PgStatement) and e.action == "parse":
            parses.setdefault(e.pid, []).append(e.query.decode())
    texts = ["SELECT $1 + 1 AS next;", "SELECT md5($1::text);"]
    assert [parses[pid] for pid in list(truth)[1:]] == [texts, texts * EXTENDED_T]
    ours = [e for e in events if isinstance(e, PgStatement) and e.pid in truth]
    # The SQL function's body, parsed by CREATE FUNCTION's validator and by the planner
    # that inlines it: nested parses, not statements the client sent.
    assert [(e.pid, e.query) for e in ours if e.action == "nested"] == [
        (list(truth)[0], b"SELECT $1 * 2")] * 2
    long = [e for e in ours if e.query.decode() == LONG]
    assert len(long) == 1 and not long[0].truncated and len(LONG) > 16 * 1024
    assert all(e.comm == "postgres" and not e.truncated for e in ours)
    # Each failure as the server logged it, right after the statement that failed.
    errors = [e for e in events if isinstance(e, PgError) and e.pid in truth]
    assert {pid: [(e.severity, e.message, e.position) for e in errors if e.pid == pid]
            for pid in {e.pid for e in errors}} == pg.errors(set(truth))
    assert [(e.sqlstate, e.message) for e in errors] == [
        ("22012", "division by zero"), ("42601", 'syntax error at or near "SELEC"')]
    follows = {e.timestamp_ns: prev for prev, e in zip(events, events[1:], strict=False)
               if isinstance(e, PgError)}
    assert [follows[e.timestamp_ns].query for e in errors] == [b"SELECT 1/0;",
                                                                b"SELEC 'not sql';"]
    assert {e.uid for e in ours} == {pwd.getpwnam("postgres").pw_uid}
    assert text == cap.replay().text()


def test_pid_of_a_backend_keeps_that_backend(live_capture, pg: PgServer) -> None:
    held = subprocess.Popen(["psql", "-h", str(pg.sockdir), "-p", str(PORT), "-U",
                             "postgres", "-X", "-q", "-A", "-t"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert held.stdin is not None and held.stdout is not None
    held.stdin.write("SELECT pg_backend_pid();\n")
    held.stdin.flush()
    backend = int(held.stdout.readline())
    cap = live_capture("postgres", "--pid", str(backend))
    pg.psql("-c", "SELECT 'not this backend'")
    held.stdin.write("SELECT 'this one';\nSELECT 'and this';\n")
    held.stdin.close()
    held.wait(60)
    cap.stop()
    events = [e for e in cap.replay().events() if isinstance(e, PgStatement)]
    assert [(e.pid, e.query) for e in events] == [
        (backend, b"SELECT 'this one';"), (backend, b"SELECT 'and this';")]
    # The backend was already waiting in pq_getbyte() for its next message when the
    # probes attached: a uretprobe fires only for calls entered after attach, so that
    # message's type is (normally) unknown, and says so.
    assert [e.action for e in events] in (["statement", "query"], ["query", "query"])


def test_golden_recording(live_capture, pg: PgServer, tmp_path: Path) -> None:
    """A small capture with every action but ``nested``, and an error, kept as the module's
    fixture."""
    script = tmp_path / "bench.sql"
    script.write_text("\\set n 7\nSELECT :n * 6 AS answer;\n")
    before = pg.statements()
    cap = live_capture("postgres")
    # psql's exit status is its last command's: the failing one goes in the middle.
    pg.psql("-c", "SELECT 42 AS answer", "-c", "SELEC 1", "-c", "SELECT 'multi'\n  || 'line'")
    pg.pgbench("prepared", 2, script)
    pg.pgbench("extended", 1, script)
    cap.stop()
    truth = new_statements(pg, before)
    events = cap.replay().events()
    assert captured(events, set(truth)) == truth
    assert sum(len(texts) for texts in truth.values()) == 6
    assert [e.sqlstate for e in events if isinstance(e, PgError)] == ["42601"]
    cap.save_fixture("postgres/simple_and_extended")


def test_refusals_are_one_line() -> None:
    one_line_error(ecap("postgres", "--postgres", "/nonexistent/bin/postgres"),
                   "--postgres /nonexistent/bin/postgres: no such file")
    true = shutil.which("true")
    assert true is not None
    one_line_error(ecap("postgres", "--postgres", true), "does not define pg_parse_query()")
    one_line_error(ecap("postgres", "--pid", str(os.getpid())), "not a PostgreSQL server")


def test_long_statement_is_cut_and_counted(live_capture, pg: PgServer) -> None:
    """Also through a perf buffer: the largest events fit a perf sample."""
    long = "SELECT '" + "y" * (PG_TEXT_MAX + 100) + "';"
    cap = live_capture("postgres", "--pid", str(pg.postmaster), "--perf-buffer")
    pg.psql(input=long + "\n")
    text = cap.stop()
    cut = [e for e in cap.replay().events() if isinstance(e, PgStatement) and e.truncated]
    assert [e.query for e in cut] == [long.encode()[: PG_TEXT_MAX - 1]]
    assert f"(cut at {PG_TEXT_MAX - 1} bytes)" in text
    assert f"1 statement(s) longer than {PG_TEXT_MAX - 1} bytes were cut" in text


def test_combined_read_helpers_of_kernels_before_5_5(pg: PgServer, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels before 5.5 have no bpf_probe_read_{user,kernel}*(): the live layer builds the
    program with the combined helpers instead (--pid reads the task's parent with them)."""
    from live_helpers import in_process_capture

    from ecapture.live import prereq
    from ecapture.modules.postgres import PostgresModule
    from ecapture.testing.replay import replay_events

    monkeypatch.setattr(prereq, "has_probe_read_user", lambda: False)
    module = PostgresModule({"postgres": None, "pid": pg.postmaster, "uid": None})
    record = tmp_path / "old.ecap"
    with in_process_capture(module, record) as session:
        assert "-DHAVE_PROBE_READ_USER=0" in session.cflags(session.programs[0])
        pg.psql("-c", "SELECT 'old kernel path'")
    queries = [e.query for e in replay_events(record) if isinstance(e, PgStatement)]
    assert queries == [b"SELECT 'old kernel path'"]
