"""Live tests of the mysqld module against a real MariaDB server started for them.

Ground truth: the server's own general query log (every command it received, per
connection id, with the parameters of each execution written in), and the error number
the client library (mysql-connector-python) got for each statement. Prepared statements
come from that library's binary protocol (COM_STMT_PREPARE / COM_STMT_EXECUTE).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from live_helpers import ecap, one_line_error

from ecapture.live.prereq import has_ringbuf
from ecapture.modules.mysqld import MysqldCommand, MysqldNotice
from ecapture.testing.plugin import unavailable

pytestmark = pytest.mark.ecapture_module("mysqld")

SERVER = "/usr/sbin/mariadbd"


@dataclass
class MariaDB:
    proc: subprocess.Popen[bytes]
    socket: Path
    general_log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def connect(self, database: str | None = None) -> Any:
        import mysql.connector

        return mysql.connector.connect(unix_socket=str(self.socket), user="root",
                                       database=database, autocommit=True, use_pure=True)

    def create_database(self, name: str) -> None:
        conn = self.connect()
        cur = conn.cursor()
        cur.execute(f"CREATE DATABASE {name}")
        conn.close()

    def log_of(self, conn_id: int, timeout: float = 10) -> list[tuple[str, str]]:
        """(command, argument) of every general-log entry of one connection, once its
        Quit is there."""
        deadline = time.monotonic() + timeout
        while True:
            entries = [(c, a) for i, c, a in parse_general_log(self.general_log.read_text())
                       if i == conn_id]
            if entries and entries[-1][0] == "Quit" or time.monotonic() > deadline:
                return entries
            time.sleep(0.1)


# "YYMMDD HH:MM:SS" only on the first entry of each second; then the id, the command, TAB.
_ENTRY = re.compile(r"^(?:\d{6} +\d{1,2}:\d\d:\d\d)?\s+(\d+) ([A-Z][a-z]+(?: [a-z]+)?)\t(.*)$")


def parse_general_log(text: str) -> list[tuple[int, str, str]]:
    """(connection id, command, argument) per entry; a line that is no entry continues the
    argument of the one before (a multi-line query)."""
    entries: list[tuple[int, str, str]] = []
    for line in text.split("\n")[3:]:  # the server's banner and the column titles
        m = _ENTRY.match(line)
        if m:
            entries.append((int(m[1]), m[2], m[3]))
        elif entries:
            conn, cmd, arg = entries[-1]
            entries[-1] = (conn, cmd, arg + "\n" + line)
    return entries


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    """One MariaDB server for the module's tests: its own datadir and unix socket, no TCP,
    the general query log on."""
    install = shutil.which("mariadb-install-db")
    if not (install and Path(SERVER).exists()):
        unavailable("MariaDB server not installed (scripts/setup.sh installs mariadb-server)")
    try:
        import mysql.connector  # noqa: F401
    except ImportError:
        unavailable("mysql-connector-python is not installed (pip install .[test])")
    root = tmp_path_factory.mktemp("mariadb")
    data, sock, log = root / "data", root / "mysqld.sock", root / "general.log"
    subprocess.run([install, f"--datadir={data}", "--user=root", "--skip-test-db",
                    "--auth-root-authentication-method=normal"],
                   check=True, capture_output=True, timeout=120)
    proc = subprocess.Popen([SERVER, "--no-defaults", f"--datadir={data}", f"--socket={sock}",
                             "--skip-networking", "--user=root", f"--pid-file={root}/pid",
                             "--general-log=1", f"--general-log-file={log}",
                             f"--log-error={root}/error.log",
                             "--innodb-buffer-pool-size=16M"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = MariaDB(proc, sock, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                server.connect().close()
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mariadbd did not start: "
                                       + (root / "error.log").read_text()[-2000:]) from None
                time.sleep(0.2)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the workload: 29 statements ----------------------------------------------------------

BIG = "SELECT '" + "0123456789abcdef" * 768 + "' AS big"  # 12 KiB of query text
MULTILINE = "SELECT id,\n       name\nFROM t1\nWHERE id > 1\nORDER BY id"
TEXT_BEFORE = [
    "CREATE TABLE t1 (id INT PRIMARY KEY, name VARCHAR(64), note TEXT)",
    *(f"INSERT INTO t1 VALUES ({i}, 'name-{i}', NULL)" for i in range(1, 6)),
    MULTILINE,
    BIG,
    "SELECT * FROM no_such_table",  # 1146
    "SELEC 1",  # 1064
]
TEXT_AFTER = [
    "UPDATE t1 SET note = 'n' WHERE id = 2",
    "DELETE FROM t1 WHERE id = 5",
    "SELECT COUNT(*) FROM t1",
    # The server raises an error inside (no such file) and handles it: the client gets OK.
    "DROP TABLE IF EXISTS no_such_table",
]
PREPARED: list[tuple[str, list[tuple[object, ...]]]] = [
    ("SELECT name FROM t1 WHERE id = %s", [(1,), (2,), (3,)]),
    ("INSERT INTO t1 (id, name, note) VALUES (%s, %s, %s)", [(10, "ten", None),
                                                            (11, "eleven", "x")]),
    ("SELECT id, name FROM t1 WHERE id BETWEEN %s AND %s ORDER BY id", [(1, 3)]),
    ("UPDATE t1 SET note = %s WHERE id = %s", [("p", 10)]),
    ("INSERT INTO t1 (id, name) VALUES (%s, %s)", [(1, "dup")]),  # 1062 at execution
    ("SELECT %s + %s", [(40, 2)]),
]
STATEMENTS = 29


def literal(value: object) -> str:
    """How the general log writes a parameter into an executed statement."""
    if value is None:
        return "NULL"
    return f"'{value}'" if isinstance(value, str) else str(value)


def run_workload(server: MariaDB, database: str) -> tuple[int, list[tuple[str, str, int]]]:
    """Run the 29 statements; return the connection id and what was sent, as the general
    log writes it: (command, text, the error number the client got or 0)."""
    import mysql.connector

    conn = server.connect(database)
    sent: list[tuple[str, str, int]] = []

    def run(cur: Any, command: str, text: str, sql: str,
            params: tuple[object, ...] | None = None) -> None:
        errno = 0
        try:
            cur.execute(sql, params)
            if cur.with_rows:
                cur.fetchall()
        except mysql.connector.Error as e:
            errno = e.errno
        sent.append((command, text, errno))

    plain = conn.cursor()
    for sql in TEXT_BEFORE:
        run(plain, "Query", sql, sql)
    prepared = conn.cursor(prepared=True)
    for sql, rows in PREPARED:
        template = sql.replace("%s", "?")
        sent.append(("Prepare", template, 0))
        for params in rows:
            executed = template
            for value in params:
                executed = executed.replace("?", literal(value), 1)
            run(prepared, "Execute", executed, sql, params)
    for sql in TEXT_AFTER:
        run(plain, "Query", sql, sql)
    conn_id = int(conn.connection_id)
    conn.close()
    assert len(sent) == STATEMENTS
    return conn_id, sent


STATEMENT_COMMANDS = {"Query": "query", "Prepare": "prepare", "Execute": "execute"}


def as_logged(ev: MysqldCommand) -> tuple[str, str]:
    """A captured statement as the general log writes it: an execution's parameters in
    place of its placeholders."""
    assert ev.sql is not None, ev
    text = ev.sql.decode()
    if ev.command_name == "execute":
        assert ev.params is not None, ev.params_problem
        for value in ev.params:
            text = text.replace("?", literal(value), 1)
    command = next(k for k, v in STATEMENT_COMMANDS.items() if v == ev.command_name)
    return command, text


@pytest.mark.parametrize("buffer", ["auto", "perf"])
def test_every_statement_of_the_general_log(live_capture: Any, mariadb: MariaDB,
                                            buffer: str) -> None:
    database = f"w_{buffer}"
    mariadb.create_database(database)
    cap = live_capture("mysqld", "--pid", str(mariadb.pid),
                       *(["--perf-buffer"] if buffer == "perf" else []))
    conn_id, sent = run_workload(mariadb, database)
    text = cap.stop()
    chosen = "ring" if buffer == "auto" and has_ringbuf() else "perf"
    assert f"({chosen} buffer)" in cap.err_path.read_text()

    logged = [(c, a) for c, a in mariadb.log_of(conn_id) if c in STATEMENT_COMMANDS]
    # The log holds the client library's own statements first (SET NAMES, autocommit),
    # then exactly the 29 we sent, in order.
    preamble = logged[: len(logged) - STATEMENTS]
    assert all(c == "Query" and a.startswith("SET ") for c, a in preamble), preamble
    assert logged[len(preamble):] == [(c, t) for c, t, _ in sent]

    events = cap.replay().events()
    ours = [e for e in events if isinstance(e, MysqldCommand) and e.conn == conn_id]
    assert all(e.pid == mariadb.pid and e.comm == "mariadbd" for e in ours)
    statements = [e for e in ours if e.command_name in STATEMENT_COMMANDS.values()]
    # Every statement of the general log, in order, none more, each whole.
    assert [as_logged(e) for e in statements] == logged
    assert not any(e.truncated for e in ours)
    assert not [e for e in events if isinstance(e, MysqldNotice)]
    # The status of each is what the client got.
    got = [(e.error if e.status == "error" else 0) for e in statements[len(preamble):]]
    assert got == [errno for _, _, errno in sent]
    assert {1146, 1064, 1062} <= set(got)
    assert all(e.status in ("ok", "error") and e.duration_ns is not None and e.duration_ns > 0
               for e in ours)
    # Each execution names its statement's id, the one its prepare was given.
    prepares = {e.stmt_id: e.sql for e in statements if e.command_name == "prepare"}
    executes = [e for e in statements if e.command_name == "execute"]
    assert len(prepares) == len(PREPARED) and len(executes) == 9
    assert all(e.stmt_id in prepares and prepares[e.stmt_id] == e.sql for e in executes)
    big = next(e for e in statements if e.sql == BIG.encode())
    assert big.length == len(BIG) > 10 * 1024 and f"ok: {BIG}" in text
    assert "\\n       name\\nFROM t1" in text  # the multi-line query, on one line
    assert text == cap.replay().text()  # what was printed live is what the recording holds


def test_small_session_golden(live_capture: Any, mariadb: MariaDB) -> None:
    """A short session kept as the module's golden recording."""
    import mysql.connector

    mariadb.create_database("golden")
    cap = live_capture("mysqld", "--pid", str(mariadb.pid))
    conn = mariadb.connect("golden")
    cur = conn.cursor()
    cur.execute("CREATE TABLE kv (k VARCHAR(16) PRIMARY KEY, v INT)")
    with pytest.raises(mysql.connector.Error):
        cur.execute("SELECT v FROM missing")
    prepared = conn.cursor(prepared=True)
    prepared.execute("INSERT INTO kv VALUES (%s, %s)", ("answer", 42))
    prepared.execute("INSERT INTO kv VALUES (%s, %s)", ("nothing", None))
    cur.execute("SELECT k,\n  v\nFROM kv")
    cur.fetchall()
    conn_id = int(conn.connection_id)
    conn.close()
    cap.stop()
    events = [e for e in cap.replay().events()
              if isinstance(e, MysqldCommand) and e.conn == conn_id]
    lines = [e.text_line().split("  ", 1)[1] for e in events]
    names = [e.command_name for e in events]
    assert names[-1] == "quit" and names.count("execute") == 2 and names.count("prepare") == 1
    assert any(re.fullmatch(r"query [\d.]+ ms error 1146 \(Table 'golden.missing' doesn't "
                            r"exist\): SELECT v FROM missing", line) for line in lines), lines
    assert [e.params for e in events if e.command_name == "execute"] == [("answer", 42),
                                                                          ("nothing", None)]
    cap.save_fixture("mysqld/session")


def test_bad_targets_get_one_line(tmp_path: Path) -> None:
    one_line_error(ecap("mysqld", "--mysqld", str(tmp_path / "nope")), "no such file")
    true = shutil.which("true")
    assert true is not None
    one_line_error(ecap("mysqld", "--mysqld", true), "has no dispatch_command()")
    # --pid of a process that is no server: its executable has no dispatch_command either.
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        one_line_error(ecap("mysqld", "--pid", str(sleeper.pid)), "has no dispatch_command()")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_mysql57_program_verifies_and_attaches(tmp_path: Path, mariadb: MariaDB) -> None:
    """No MySQL 5.7/8 server here: build the COM_DATA program (the argument order of
    ``dispatch_command(THD *, const COM_DATA *, enum_server_command)``) and attach it to
    MariaDB's dispatch_command, so that the kernel's verifier checks it and its probes fire.
    What it reads there is MariaDB's arguments in the wrong places: only that commands
    arrive, each with its end, is checked."""
    from dataclasses import replace

    from live_helpers import in_process_capture

    from ecapture.modules.mysqld import MysqldModule, inspect_server
    from ecapture.structs.mysqld import MYSQLD_ABI_COM_DATA
    from ecapture.testing.replay import replay_events

    class AsMysql8(MysqldModule):
        def init(self) -> None:
            super().init()
            assert self.server is not None
            self.server = replace(self.server, abi=MYSQLD_ABI_COM_DATA)

    module = AsMysql8({"mysqld": SERVER, "pid": mariadb.pid, "uid": None})
    record = tmp_path / "mysql8.ecap"
    with in_process_capture(module, record) as session:
        assert "-DMYSQLD_ABI=2" in session.cflags(session.programs[0])
        conn = mariadb.connect()
        conn.cursor().execute("SELECT 1")
        conn.close()
    events = [e for e in replay_events(record) if isinstance(e, MysqldCommand)]
    assert len(events) >= 3 and all(e.status in ("ok", "error") for e in events)
    assert inspect_server(SERVER).abi != MYSQLD_ABI_COM_DATA  # it really was pretending
