"""The postgres module without a kernel: how its two events decode and read, which server it
finds, how it reads PortalData.sourceText's offset from the server's code, and the one-line
refusals (no such file, not a server, a major version it does not know)."""

from __future__ import annotations

import glob
import os
import re
import shutil
from pathlib import Path

import pytest

from ecapture.errors import AttachError, ConfigError, DecodeError
from ecapture.modules import postgres
from ecapture.modules.postgres import (
    PgCutCount,
    PgError,
    PgStatement,
    PostgresModule,
    error_fields,
)
from ecapture.modules.postgres_offsets import (
    SOURCE_TEXT_OFFSET,
    VERSION_PATTERN,
    major_version,
    source_text_store,
)
from ecapture.render import Style
from ecapture.structs.postgres import (
    EVENT_PG_ERROR,
    EVENT_PG_EXECUTE,
    EVENT_PG_PARSE,
    PG_ERROR_MAX,
    PG_TEXT_MAX,
    pg_error_event_t,
    pg_execute_event_t,
    pg_parse_event_t,
)
from ecapture.targets import scan_version
from ecapture.testing.factories import make_event

CONFIG = {"postgres": None, "pid": None, "uid": None}
SERVERS = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))


def parse_event(text: bytes, msg: str = "Q", nested: int = 0, truncated: int = 0) -> bytes:
    return make_event(pg_parse_event_t, kind=EVENT_PG_PARSE, pid=4242, timestamp_ns=10**9,
                      uid=101, msg_type=ord(msg) if msg else 0, nested=nested,
                      truncated=truncated, comm=b"postgres", text=text)


def execute_event(text: bytes, statement: bytes, portal: bytes = b"") -> bytes:
    return make_event(pg_execute_event_t, kind=EVENT_PG_EXECUTE, pid=4242, timestamp_ns=2,
                      uid=101, msg_type=ord("E"), comm=b"postgres", portal=portal,
                      statement=statement, text=text)


def error_event(body: bytes, truncated: int = 0) -> bytes:
    return make_event(pg_error_event_t, kind=EVENT_PG_ERROR, pid=4242, timestamp_ns=3,
                      uid=101, truncated=truncated, comm=b"postgres", body=body)


def decoded(raw: bytes) -> PgStatement:
    event = PostgresModule(CONFIG).decode("events", raw)
    assert isinstance(event, PgStatement)
    return event


def decoded_error(raw: bytes) -> PgError:
    event = PostgresModule(CONFIG).decode("events", raw)
    assert isinstance(event, PgError)
    return event


# An ErrorResponse body as PostgreSQL 15 sends it for "SELEC 1" (lc_messages=de: 'S' is
# translated, 'V' is not).
SYNTAX = (b"SFEHLER\0VERROR\0C42601\0Msyntax error at or near \"SELEC\"\0P1\0"
          b"Fscan.l\0L1176\0Rscanner_yyerror\0\0")


@pytest.mark.parametrize(("msg", "nested", "line"), [
    ("Q", 0, "query: SELECT 1"),
    ("P", 0, "parse: SELECT 1"),
    ("B", 1, "nested: SELECT 1"),   # a SQL function's body, parsed while binding
    ("Q", 1, "nested: SELECT 1"),
    ("", 0, "statement: SELECT 1"),  # the message began before the capture did
])
def test_a_parse_is_labelled_by_its_protocol_message(msg: str, nested: int, line: str) -> None:
    event = decoded(parse_event(b"SELECT 1", msg, nested))
    assert event.text_line() == f"postgres pid 4242 uid 101  {line}"
    assert (event.pid, event.tid, event.statement, event.portal) == (4242, 4242, "", "")


@pytest.mark.parametrize(("statement", "portal", "label"), [
    (b"P0_1", b"", "execute P0_1"),
    (b"", b"", "execute <unnamed>"),
    (b"S_1", b"C_2", "execute S_1/C_2"),  # as the server's log names a named portal
])
def test_an_execute_is_named_as_the_server_logs_it(statement: bytes, portal: bytes,
                                                   label: str) -> None:
    event = decoded(execute_event(b"SELECT $1 + 1", statement, portal))
    assert event.action == "execute"
    assert event.text_line() == f"postgres pid 4242 uid 101  {label}: SELECT $1 + 1"


def test_one_statement_one_line_and_json_keeps_the_text_whole() -> None:
    event = decoded(parse_event(b"SELECT\n\t'x'"))
    assert event.text_line().endswith(r"query: SELECT\n\t'x'")
    obj = event.json(Style())
    assert obj is not None
    assert obj["type"] == "postgres"
    assert obj["query"] == "SELECT\n\t'x'"
    assert {k: obj[k] for k in ("pid", "uid", "comm", "action", "statement", "portal",
                                "truncated")} == {
        "pid": 4242, "uid": 101, "comm": "postgres", "action": "query", "statement": "",
        "portal": "", "truncated": False}


def test_cut_statements_are_flagged_and_counted() -> None:
    module = PostgresModule(CONFIG)
    text = b"x" * (PG_TEXT_MAX - 1)
    events = [e for raw in (parse_event(text, truncated=1), parse_event(b"SELECT 1"),
                            parse_event(text, truncated=1))
              for e in module.dispatch(module.decode("events", raw))]
    assert [e.truncated for e in events if isinstance(e, PgStatement)] == [True, False, True]
    assert events[0].text_line().endswith(f"  (cut at {PG_TEXT_MAX - 1} bytes)")
    [summary] = module.finish()
    assert isinstance(summary, PgCutCount) and summary.count == 2
    assert "2 statement(s) longer than" in summary.text_line()


def test_no_cut_no_summary() -> None:
    module = PostgresModule(CONFIG)
    list(module.dispatch(module.decode("events", parse_event(b"SELECT 1"))))
    assert list(module.finish()) == []


def test_an_error_reads_as_the_server_logs_it() -> None:
    event = decoded_error(error_event(SYNTAX))
    assert (event.severity, event.sqlstate, event.position) == ("ERROR", "42601", 1)
    assert event.text_line() == ('postgres pid 4242 uid 101  ERROR 42601: syntax error at or '
                                 'near "SELEC" (at character 1)')
    obj = event.json(Style())
    assert obj is not None and obj["type"] == "postgres_error"
    assert {k: obj[k] for k in ("severity", "sqlstate", "message", "detail", "hint",
                                "position", "truncated")} == {
        "severity": "ERROR", "sqlstate": "42601", "message": 'syntax error at or near "SELEC"',
        "detail": None, "hint": None, "position": 1, "truncated": False}


def test_error_fields_of_a_cut_body_keep_what_came() -> None:
    assert error_fields(b"SERROR\0C22012\0Mdivision by") == {
        "S": "ERROR", "C": "22012", "M": "division by"}
    assert error_fields(b"") == {}
    assert error_fields(b"\0SERROR\0") == {}  # the list ended at once
    event = decoded_error(error_event(b"SFATAL\0C57P01\0Mterminating", truncated=1))
    assert event.text_line().endswith("FATAL 57P01: terminating  (cut)")


def test_an_error_body_longer_than_sent_is_refused() -> None:
    raw = bytearray(error_event(b"SERROR\0"))
    raw[20:24] = (PG_ERROR_MAX + 1).to_bytes(4, "little")  # body_len
    with pytest.raises(DecodeError, match="claims 1025 body bytes"):
        PostgresModule(CONFIG).decode("events", bytes(raw))


# -- version and offsets -------------------------------------------------------------------

@pytest.mark.parametrize(("version", "major"), [
    ("15.18", 15), ("10.23", 10), ("18beta1", 18), ("17rc1", 17), ("9.6.24", None),
])
def test_major_version(version: str, major: int | None) -> None:
    assert major_version(version) == major


def test_version_pattern_reads_distribution_and_source_builds(tmp_path: Path) -> None:
    for text, want in ((b"\0PostgreSQL 15.18 (Debian 15.18-0+deb12u1) on x86_64\0", "15.18"),
                       (b"\0PostgreSQL 18beta1 on aarch64-unknown-linux-gnu\0", "18beta1"),
                       (b"\0PostgreSQL JDBC\0PostgreSQL 13.4 on x86_64\0", "13.4")):
        f = tmp_path / "bin"
        f.write_bytes(b"\x7fELF" + text)
        assert scan_version(str(f), VERSION_PATTERN) == want


def test_source_text_store_x86_64() -> None:
    # PostgreSQL 15.18's PortalDefineQuery() as Debian's gcc builds it.
    code = [("mov", "qword ptr [rdi + 8], rsi"), ("mov", "qword ptr [rdi + 0x38], rdx"),
            ("mov", "dword ptr [rdi + 0x48], ecx"), ("ret", "")]
    assert source_text_store(code, "x86_64") == 0x38


def test_source_text_store_arm64() -> None:
    code = [("str", "x1, [x0, #8]"), ("str", "x2, [x0, #0x30]"), ("ret", "")]
    assert source_text_store(code, "arm64") == 0x30


def test_source_text_store_stops_at_a_branch() -> None:
    code = [("call", "0x1234"), ("mov", "qword ptr [rdi + 0x38], rdx")]
    assert source_text_store(code, "x86_64") is None
    assert source_text_store([("b.ne", "#0x10"), ("str", "x2, [x0, #0x30]")], "arm64") is None
    assert source_text_store([("mov", "qword ptr [rdi + 0x38], rdx")], "riscv") is None


@pytest.mark.parametrize("server", SERVERS or [None], ids=lambda p: p or "none")
def test_installed_servers_agree_with_the_table(server: str | None) -> None:
    """The code says where this build keeps sourceText; the table says it for the major."""
    if server is None:
        pytest.skip("no PostgreSQL server under /usr/lib/postgresql")
    module = PostgresModule({**CONFIG, "postgres": server})
    module.init()
    version = module.targets[0].version
    assert version is not None
    major = major_version(version)
    assert major is not None
    assert postgres.code_source_text_offset(server) == SOURCE_TEXT_OFFSET[major]
    assert module.source_text_offset == SOURCE_TEXT_OFFSET[major]
    assert module.targets[0].build_id and len(module.targets[0].build_id) == 40


# -- discovery and refusals ----------------------------------------------------------------

def test_newest_server_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for major in ("9.6", "10", "15", "13"):
        server = tmp_path / major / "bin" / "postgres"
        server.parent.mkdir(parents=True)
        server.write_bytes(b"")
    monkeypatch.setattr(postgres, "SEARCH", (str(tmp_path / "*" / "bin" / "postgres"),))
    assert postgres.default_server() == str(tmp_path / "15" / "bin" / "postgres")


def test_no_such_file() -> None:
    with pytest.raises(ConfigError, match="--postgres /nonexistent/postgres: no such file"):
        PostgresModule({**CONFIG, "postgres": "/nonexistent/postgres"}).check()


def test_no_such_pid() -> None:
    with pytest.raises(ConfigError, match="--pid 999999999: no such process"):
        PostgresModule({**CONFIG, "pid": 999999999}).check()


def test_a_binary_without_the_functions_is_refused() -> None:
    true = shutil.which("true")
    assert true is not None
    with pytest.raises(AttachError, match=r"does not define pg_parse_query\(\), PortalRun"):
        PostgresModule({**CONFIG, "postgres": true}).init()


def test_pid_takes_that_process_binary() -> None:
    module = PostgresModule({**CONFIG, "pid": os.getpid()})
    with pytest.raises(AttachError, match=os.path.realpath(f"/proc/{os.getpid()}/exe")):
        module.init()  # this Python is no PostgreSQL server


@pytest.mark.parametrize("version", ["9.6.24", "19.1", "20devel"])
def test_an_unknown_major_version_is_refused(version: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if not SERVERS:
        pytest.skip("no PostgreSQL server under /usr/lib/postgresql")
    monkeypatch.setattr(postgres, "scan_version", lambda path, pattern: version)
    with pytest.raises(AttachError, match=rf"PostgreSQL {re.escape(version)} is not supported "
                                          r"\(known major versions: 10 to 18\)"):
        PostgresModule({**CONFIG, "postgres": SERVERS[-1]}).init()


def test_a_binary_without_a_version_string_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    if not SERVERS:
        pytest.skip("no PostgreSQL server under /usr/lib/postgresql")
    monkeypatch.setattr(postgres, "scan_version", lambda path, pattern: None)
    with pytest.raises(AttachError, match="no PostgreSQL version string in it"):
        PostgresModule({**CONFIG, "postgres": SERVERS[-1]}).init()


def test_pid_of_a_deleted_binary_attaches_through_proc(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian upgrades the server's file under a running postmaster: /proc/PID/exe then
    names a deleted file, and the link itself is the way to it."""
    monkeypatch.setattr(os, "readlink", lambda p: "/usr/lib/postgresql/15/bin/postgres "
                                                  "(deleted)")
    module = PostgresModule({**CONFIG, "pid": os.getpid()})
    assert module._locate() == f"/proc/{os.getpid()}/exe"


def test_pid_needs_the_parent_offsets() -> None:
    from ecapture.modules.base import Features

    module = PostgresModule({**CONFIG, "pid": 1})
    module.source_text_offset = 56
    assert [m[0] for m in module.kernel_members()] == ["TASK_REAL_PARENT", "TASK_TGID"]
    with pytest.raises(AttachError, match="--pid 1 needs the kernel's BTF"):
        module.cflags(Features())
    flags = module.cflags(Features(kernel_offsets={"TASK_REAL_PARENT": 8, "TASK_TGID": 4}))
    assert flags == ["-DPG_SOURCE_TEXT_OFF=56", "-DPG_PID=1"]
    assert PostgresModule(CONFIG).kernel_members() == ()
