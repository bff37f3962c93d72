"""The mysqld module without a server: which dispatch_command() a binary has, where THD
keeps the connection id, and how chunks and ends of commands join into statements with their
SQL, statement ids and parameters (MariaDB's packet ABI and MySQL 5.7/8's COM_DATA ABI)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from test_struct_layout import c_layout

from ecapture.errors import AttachError
from ecapture.events import Event
from ecapture.modules.base import Features
from ecapture.modules.mysqld import (
    MAX_PAYLOAD,
    MysqldCommand,
    MysqldModule,
    MysqldNotice,
    Server,
    dispatch_abi,
    find_dispatch,
    inspect_server,
    thread_id_member,
)
from ecapture.render import Style
from ecapture.structs.mysqld import (
    MYSQLD_ABI_COM_DATA,
    MYSQLD_ABI_PACKET,
    MYSQLD_CHUNK_SIZE,
    MYSQLD_MSG_MAX,
    mysqld_done_event_t,
    mysqld_query_event_t,
)
from ecapture.testing.factories import make_event

MARIADB_10 = "_Z16dispatch_command19enum_server_commandP3THDPcjb"
MARIADB_OLD = "_Z16dispatch_command19enum_server_commandP3THDPcjbb"
MYSQL_56 = "_Z16dispatch_command19enum_server_commandP3THDPcj"
MYSQL_8 = "_Z16dispatch_commandP3THDPK8COM_DATA19enum_server_command"


# -- the binary ---------------------------------------------------------------------------

@pytest.mark.parametrize(("symbol", "abi"), [
    (MARIADB_10, MYSQLD_ABI_PACKET), (MARIADB_OLD, MYSQLD_ABI_PACKET),
    (MYSQL_56, MYSQLD_ABI_PACKET), (MYSQL_8, MYSQLD_ABI_COM_DATA),
    # a signature nobody has shipped: another argument order, an extra argument
    ("_Z16dispatch_commandP3THD19enum_server_commandPcj", None),
    (MYSQL_8 + "b", None),
])
def test_the_abi_is_read_from_the_mangled_name(symbol: str, abi: int | None) -> None:
    assert dispatch_abi(symbol) == abi


def test_a_binary_without_dispatch_command_is_refused() -> None:
    with pytest.raises(AttachError, match="has no dispatch_command"):
        find_dispatch("/bin/x", {"main", "my_message_sql"})


def test_an_unknown_signature_is_refused_in_one_line() -> None:
    odd = "_Z16dispatch_commandP3THD19enum_server_commandPcj"
    with pytest.raises(AttachError, match="signature this module does not know") as e:
        find_dispatch("/bin/x", {odd, "main"})
    assert "\n" not in str(e.value) and odd in str(e.value)


def test_the_known_signature_wins_over_others() -> None:
    assert find_dispatch("/x", {MYSQL_8, "_ZN3foo16dispatch_commandEv"}) == (
        MYSQL_8, MYSQLD_ABI_COM_DATA)


@pytest.mark.parametrize(("code", "member"), [
    # MariaDB 10.11 (Debian): mov rax, qword ptr [rdi + 0x3f18]; ret
    (bytes.fromhex("488b87183f0000c3"), (0x3F18, 8)),
    # a CET build of MySQL 8 (my_thread_id is 32 bits): endbr64; mov eax, [rdi + 0x2468]; ret
    (bytes.fromhex("f30f1efa8b8768240000c3"), (0x2468, 4)),
    # a small offset: mov rax, qword ptr [rdi + 0x10]; ret
    (bytes.fromhex("488b4710c3"), (0x10, 8)),
])
def test_the_connection_id_member_is_read_from_the_accessor(code: bytes,
                                                            member: tuple[int, int]) -> None:
    assert thread_id_member(code + b"\xcc" * 8, 0x1000) == member


@pytest.mark.parametrize("code", [
    bytes.fromhex("488b07488b4010c3"),  # through a pointer: mov rax,[rdi]; mov rax,[rax+16]
    bytes.fromhex("31c0c3"),  # xor eax, eax; ret
    b"",
])
def test_other_accessor_code_is_refused(code: bytes) -> None:
    with pytest.raises(ValueError, match="unexpected code"):
        thread_id_member(code, 0x1000)


@pytest.mark.skipif(not os.path.exists("/usr/sbin/mariadbd"), reason="no MariaDB server")
def test_the_installed_mariadb_is_understood() -> None:
    server = inspect_server(os.path.realpath("/usr/sbin/mariadbd"))
    assert server.abi == MYSQLD_ABI_PACKET and server.dispatch.startswith(MYSQL_56)
    assert server.thread_id[1] == 8 and 0 < server.thread_id[0] < 1 << 20
    assert server.message == "my_message_sql" and server.net_write == "my_net_write"
    assert server.net_command == "net_write_command"
    assert server.version and server.version.endswith("-MariaDB")


def test_a_file_that_is_no_server_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"not an elf")
    with pytest.raises(AttachError, match="not a readable ELF"):
        inspect_server(str(junk))


def module_for(abi: int) -> MysqldModule:
    module = MysqldModule({"mysqld": None, "pid": 7, "uid": None})
    module.server = Server("/srv/mysqld", MYSQL_8 if abi == MYSQLD_ABI_COM_DATA else MYSQL_56,
                           abi, (0x2468, 4), "my_message_sql", "my_net_write",
                           "net_write_command", None)
    return module


def test_cflags_follow_the_abi() -> None:
    maria = module_for(MYSQLD_ABI_PACKET).cflags(Features())
    assert "-DMYSQLD_ABI=1" in maria and "-DMYSQLD_NOT_ERROR=3072" in maria
    assert "-DTARGET_PID=7" in maria and not any("RETVAL_BOOL" in f for f in maria)
    mysql = module_for(MYSQLD_ABI_COM_DATA).cflags(Features())
    assert "-DMYSQLD_ABI=2" in mysql and "-DRETVAL_BOOL=1" in mysql
    assert "-DTHD_ID_OFFSET=9320" in mysql and "-DTHD_ID_SIZE=4" in mysql
    assert not any("NOT_ERROR" in f for f in mysql)  # MySQL sends only errors through it
    probes = module_for(MYSQLD_ABI_COM_DATA).probes(Features())
    assert [(p.kind, p.target) for p in probes] == [
        ("uprobe", MYSQL_8), ("uretprobe", MYSQL_8), ("uprobe", "my_message_sql"),
        ("uprobe", "my_net_write"), ("uprobe", "net_write_command")]


def test_the_tails_match_the_header(tmp_path: Path) -> None:
    assert c_layout(tmp_path, "mysqld.h", "mysqld_query_event_t",
                    ["data"])["data.size"] == MYSQLD_CHUNK_SIZE
    assert c_layout(tmp_path, "mysqld.h", "mysqld_done_event_t",
                    ["msg"])["msg.size"] == MYSQLD_MSG_MAX


# -- joining ------------------------------------------------------------------------------

class Server_:
    """Builds the raw events kern/mysqld.c sends for one connection of one server."""

    def __init__(self, abi: int = MYSQLD_ABI_PACKET, conn: int = 12):
        self.abi, self.conn, self.clock = abi, conn, 1_000_000

    def command(self, command: int, payload: bytes, *, tid: int = 50, error: int = 0,
                msg: bytes = b"", prepared: tuple[int, int] | None = None,
                returned: bool = True, chunk: int = MYSQLD_CHUNK_SIZE,
                total: int | None = None) -> tuple[list[bytes], bytes]:
        self.clock += 1000
        start = self.clock
        total = len(payload) if total is None else total
        chunks = [make_event(mysqld_query_event_t, kind=1, pid=7, start_ns=start,
                             conn=self.conn, tid=tid, uid=27, command=command,
                             total_len=total, offset=off, abi=self.abi, comm=b"mariadbd",
                             data=payload[off:off + chunk])
                  for off in range(0, max(len(payload), 1), chunk)]
        done = make_event(mysqld_done_event_t, kind=2, pid=7, start_ns=start,
                          end_ns=start + 500 if returned else 0, tid=tid, command=command,
                          error=error, raised=1 if error else 0,
                          stmt_id=prepared[0] if prepared else 0,
                          params=prepared[1] if prepared else 0,
                          prepared=1 if prepared else 0, returned=int(returned), msg=msg)
        return chunks, done


def feed(module: MysqldModule, raws: list[bytes]) -> list[Event]:
    out: list[Event] = []
    for raw in raws:
        out.extend(module.dispatch(module.decode("events", raw)))
    return out


def execute_payload(stmt_id: int, types: list[int], values: bytes, nulls: int = 0) -> bytes:
    head = struct.pack("<IBI", stmt_id, 0, 1)
    if not types:
        return head
    bitmap = nulls.to_bytes((len(types) + 7) // 8, "little")
    return head + bitmap + b"\x01" + b"".join(struct.pack("<H", t) for t in types) + values


def test_a_query_with_its_error() -> None:
    s, module = Server_(), MysqldModule({})
    chunks, done = s.command(3, b"SELECT * FROM nope", error=1146,
                             msg=b"Table 'test.nope' doesn't exist")
    (ev,) = feed(module, [*chunks, done])
    assert isinstance(ev, MysqldCommand)
    assert (ev.conn, ev.command_name, ev.sql, ev.status, ev.error) == (
        12, "query", b"SELECT * FROM nope", "error", 1146)
    assert ev.duration_ns == 500 and ev.uid == 27 and ev.tid == 50
    assert ev.text_line() == ("mariadbd pid 7 tid 50 conn 12  query 0.00 ms error 1146 "
                              "(Table 'test.nope' doesn't exist): SELECT * FROM nope")
    assert (ev.json(Style()) or {})["error_message"] == "Table 'test.nope' doesn't exist"


def test_a_long_query_is_joined_from_its_chunks() -> None:
    s, module = Server_(), MysqldModule({})
    query = b"SELECT '" + b"x" * 40000 + b"'"
    chunks, done = s.command(3, query)
    assert len(chunks) == 3
    (ev,) = feed(module, [*chunks, done])
    assert isinstance(ev, MysqldCommand) and ev.sql == query and not ev.truncated


def test_a_payload_over_the_limit_is_cut_flagged_and_counted() -> None:
    s, module = Server_(), MysqldModule({})
    chunks, done = s.command(3, b"y" * MAX_PAYLOAD, total=MAX_PAYLOAD + 10)
    (ev,) = feed(module, [*chunks, done])
    assert isinstance(ev, MysqldCommand) and ev.truncated and ev.length == MAX_PAYLOAD + 10
    assert ev.text_line().endswith(f"(cut at {MAX_PAYLOAD} of {MAX_PAYLOAD + 10} bytes)")
    (notice,) = module.finish()
    assert isinstance(notice, MysqldNotice) and notice.cut == 1


def test_an_unreadable_chunk_marks_the_rest_missing() -> None:
    s, module = Server_(), MysqldModule({})
    chunks, done = s.command(3, b"z" * (MYSQLD_CHUNK_SIZE + 5))
    empty = make_event(mysqld_query_event_t, kind=1, pid=7, start_ns=s.clock, conn=12,
                       tid=50, command=3, total_len=MYSQLD_CHUNK_SIZE + 5,
                       offset=MYSQLD_CHUNK_SIZE, abi=1, data=b"")
    (ev,) = feed(module, [chunks[0], empty, done])
    assert isinstance(ev, MysqldCommand) and ev.truncated
    assert ev.sql == b"z" * MYSQLD_CHUNK_SIZE


def test_prepare_execute_close_link_the_statement_id_to_its_sql() -> None:
    s, module = Server_(), MysqldModule({})
    sql = b"SELECT name FROM t WHERE id = ? AND tag = ?"
    raws: list[bytes] = []
    for command, payload, prepared in [
        (22, sql, (4, 2)),
        (23, execute_payload(4, [8, 253], struct.pack("<q", -5) + b"\x03abc"), None),
        (23, execute_payload(4, [8, 253], b"", nulls=0b11), None),
        (25, struct.pack("<I", 4), None),
        (23, execute_payload(4, [], b""), None),  # after the close: unknown statement
    ]:
        chunks, done = s.command(command, payload, prepared=prepared)
        raws += [*chunks, done]
    prep, ex1, ex2, close, stale = feed(module, raws)
    assert isinstance(prep, MysqldCommand) and prep.stmt_id == 4 and prep.param_count == 2
    assert isinstance(ex1, MysqldCommand) and (ex1.stmt_id, ex1.sql, ex1.params) == (
        4, sql, (-5, "abc"))
    assert ex1.text_line().endswith(f"execute #4 0.00 ms ok: {sql.decode()}  params (-5, 'abc')")
    assert isinstance(ex2, MysqldCommand) and ex2.params == (None, None)
    assert isinstance(close, MysqldCommand) and close.sql == sql and close.stmt_id == 4
    assert isinstance(stale, MysqldCommand) and stale.sql is None
    assert "(statement not prepared while capturing)" in stale.text_line()
    assert stale.params_problem == "parameter count unknown (prepare not seen)"


def test_statement_ids_are_per_connection() -> None:
    a, b, module = Server_(conn=1), Server_(conn=2), MysqldModule({})
    raws: list[bytes] = []
    for server, sql in ((a, b"SELECT 1"), (b, b"SELECT 2")):
        chunks, done = server.command(22, sql, prepared=(1, 0))
        raws += [*chunks, done]
    for server in (b, a):
        chunks, done = server.command(23, execute_payload(1, [], b""))
        raws += [*chunks, done]
    events = feed(module, raws)
    pairs = [(e.conn, e.sql) for e in events[2:] if isinstance(e, MysqldCommand)]
    assert pairs == [(2, b"SELECT 2"), (1, b"SELECT 1")]


def test_the_last_prepared_statement_id() -> None:
    s, module = Server_(), MysqldModule({})
    raws: list[bytes] = []
    for command, payload, prepared in [(22, b"DO ?", (9, 1)),
                                       (23, execute_payload(0xFFFFFFFF, [3],
                                                            struct.pack("<i", 1)), None)]:
        chunks, done = s.command(command, payload, prepared=prepared)
        raws += [*chunks, done]
    _, ex = feed(module, raws)
    assert isinstance(ex, MysqldCommand) and (ex.stmt_id, ex.sql, ex.params) == (
        9, b"DO ?", (1,))


def test_mysql8_executions_name_their_statement_without_parameters() -> None:
    s, module = Server_(abi=MYSQLD_ABI_COM_DATA), MysqldModule({})
    raws: list[bytes] = []
    for command, payload, prepared in [(22, b"SELECT ?", (3, 1)),
                                       (23, struct.pack("<I", 3), None)]:
        chunks, done = s.command(command, payload, prepared=prepared)
        raws += [*chunks, done]
    _, ex = feed(module, raws)
    assert isinstance(ex, MysqldCommand) and (ex.stmt_id, ex.sql) == (3, b"SELECT ?")
    assert ex.params is None and ex.params_problem == "MySQL 5.7/8 parameters are not captured"


def test_an_end_before_its_chunks_still_joins() -> None:
    """Perf buffers are per CPU: a command's end may be read before its start."""
    s, module = Server_(), MysqldModule({})
    chunks, done = s.command(3, b"SELECT 1")
    (ev,) = feed(module, [done, *chunks])
    assert isinstance(ev, MysqldCommand) and ev.status == "ok" and ev.sql == b"SELECT 1"


def test_unwound_and_running_commands_say_so() -> None:
    s, module = Server_(), MysqldModule({})
    chunks, done = s.command(3, b"SELECT SLEEP(1)", returned=False)
    (ev,) = feed(module, [*chunks, done])
    assert isinstance(ev, MysqldCommand) and ev.status == "unwound" and ev.duration_ns is None
    assert "  query unwound: SELECT SLEEP(1)" in ev.text_line()
    chunks, _ = s.command(3, b"SELECT 2")
    assert feed(module, chunks) == []
    (running,) = module.finish()
    assert isinstance(running, MysqldCommand) and running.status == "running"


def test_commands_without_payload_show_no_colon() -> None:
    s, module = Server_(), MysqldModule({})
    chunks, done = s.command(14, b"")
    (ev,) = feed(module, [*chunks, done])
    assert isinstance(ev, MysqldCommand) and ev.text_line().endswith("ping 0.00 ms ok")
    assert "sql" not in (ev.json(Style()) or {})


def test_a_multi_line_query_stays_on_one_line() -> None:
    s, module = Server_(), MysqldModule({})
    chunks, done = s.command(3, b"SELECT 1,\n  2\tFROM dual")
    (ev,) = feed(module, [*chunks, done])
    assert ev.text_line().endswith(r"ok: SELECT 1,\n  2\tFROM dual")
    assert (ev.json(Style()) or {})["sql"] == "SELECT 1,\n  2\tFROM dual"


def test_statements_die_with_their_connection() -> None:
    s, module = Server_(), MysqldModule({})
    raws: list[bytes] = []
    for command, payload, prepared in [(22, b"SELECT 1", (1, 0)), (1, b"", None),
                                       (23, execute_payload(1, [], b""), None)]:
        chunks, done = s.command(command, payload, prepared=prepared)
        raws += [*chunks, done]
    _, quit_, ex = feed(module, raws)
    assert isinstance(quit_, MysqldCommand) and quit_.command_name == "quit"
    assert isinstance(ex, MysqldCommand) and ex.sql is None and not module._stmts
