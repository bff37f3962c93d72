"""The ``mysqld`` module: every command a MySQL or MariaDB server dispatches, whole.

Kernel side: kern/mysqld.c. A uprobe on ``dispatch_command()`` sends each command's payload
(a query's text, a prepared statement's SQL, a COM_STMT_EXECUTE with its parameters) in
chunks; its uretprobe sends how the command ended: duration, the error packet the client
was sent (``net_write_command()``), how many errors the server raised on the way
(``my_message_sql()``, handled ones included), and for COM_STMT_PREPARE the statement id and
parameter count the server replied with (``my_net_write()``). Events: ``mysqld_query_event_t``
chunks and one ``mysqld_done_event_t`` per command, on one ring buffer (perf buffer on old
kernels).

User side: the chunks and the end of a command join into one :class:`MysqldCommand`. Per
connection, the module remembers what each statement id was prepared from, so an
execution shows the SQL it ran and its decoded parameters.

Which ``dispatch_command()`` a server has is read from its mangled name: MariaDB and MySQL
5.6 take ``(enum_server_command, THD *, char *packet, uint length, ...)``, MySQL 5.7 and 8
take ``(THD *, const COM_DATA *, enum_server_command)``. Where the connection id lives in
THD is read from the machine code of ``thd_get_thread_id()``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from elftools.common.exceptions import ELFError

from ecapture.errors import AttachError, DecodeError
from ecapture.events import Event, Fragment, comm_str, one_line
from ecapture.modules.base import (
    Decoded,
    EventMap,
    Features,
    Module,
    Option,
    Probe,
    Target,
    check_path_and_pid,
    pid_option,
    process_filter_cflags,
    split_kind,
    uid_option,
    unpack_event,
)
from ecapture.parsers import mysql_binary as mb
from ecapture.structs.mysqld import (
    EVENT_MYSQLD_DONE,
    EVENT_MYSQLD_QUERY,
    MYSQLD_ABI_COM_DATA,
    MYSQLD_ABI_PACKET,
    MYSQLD_CHUNK_SIZE,
    MYSQLD_DONE,
    MYSQLD_MSG_MAX,
    MYSQLD_QUERY,
)
from ecapture.targets import build_id, disassembler, elf_symbols, function_code, scan_version

DEFAULT_SERVERS = ("/usr/sbin/mariadbd", "/usr/sbin/mysqld")
#: chunks per payload (kern/mysqld.c MYSQLD_MAX_CHUNKS): longer payloads are cut, and say so
MAX_CHUNKS = 64
MAX_PAYLOAD = MAX_CHUNKS * MYSQLD_CHUNK_SIZE
# dispatch_command's mangled name, without what follows the third argument (MariaDB adds
# `bool blocking`, older MariaDB `bool is_com_multi, bool is_next_command`).
_PACKET_ABI = "_Z16dispatch_command19enum_server_commandP3THDPcj"
_COM_DATA_ABI = "_Z16dispatch_commandP3THDPK8COM_DATA19enum_server_command"
THREAD_ID = "thd_get_thread_id"
# my_message_sql is extern "C" in MariaDB, C++ in MySQL 8; my_net_write likewise.
MESSAGE = ("my_message_sql", "_Z14my_message_sqljPKci")
NET_WRITE = ("my_net_write", "_Z12my_net_writeP3NETPKhm")
NET_COMMAND = ("net_write_command", "_Z17net_write_commandP3NEThPKhmS2_m")
# my_message_sql() flags that make a message a note or a warning, not an error
# (MariaDB include/my_sys.h: ME_NOTE 1024, ME_WARNING 2048; MySQL sends only errors).
MARIADB_NOT_ERROR = 1024 | 2048


# -- what the binary tells ---------------------------------------------------------------

@dataclass(frozen=True)
class Server:
    """What the module attaches to in one server binary."""

    path: str
    dispatch: str  # dispatch_command's (mangled) symbol
    abi: int  # MYSQLD_ABI_*
    thread_id: tuple[int, int]  # (offset, size) of the connection id in THD
    message: str
    net_write: str
    net_command: str
    version: str | None


def dispatch_abi(symbol: str) -> int | None:
    """Which argument order a ``dispatch_command`` symbol takes; None: not one we know."""
    if symbol.startswith(_PACKET_ABI):
        return MYSQLD_ABI_PACKET
    if symbol == _COM_DATA_ABI:
        return MYSQLD_ABI_COM_DATA
    return None


def find_dispatch(path: str, symbols: Iterable[str]) -> tuple[str, int]:
    """The dispatch_command symbol of a server and its ABI, or one line that says why not."""
    found = sorted(s for s in symbols if "16dispatch_command" in s or s == "dispatch_command")
    if not found:
        raise AttachError(f"{path} has no dispatch_command(): pass --mysqld with a MySQL or "
                          "MariaDB server (mariadbd, mysqld) that keeps its dynamic symbols")
    for symbol in found:
        abi = dispatch_abi(symbol)
        if abi is not None:
            return symbol, abi
    raise AttachError(f"{path}: dispatch_command has a signature this module does not know "
                      f"({found[0]}); it reads MariaDB/MySQL 5.6 and MySQL 5.7/8.x")


_MEMBER = re.compile(r"(?:rax|eax), (?P<width>qword|dword) ptr "
                     r"\[rdi(?: \+ (?P<off>0x[0-9a-f]+|\d+))?\]")


def thread_id_member(code: bytes, address: int) -> tuple[int, int]:
    """(offset, size) of the member that x86-64 ``thd_get_thread_id(const THD *thd)``
    returns: its body is one load from [rdi + offset] and a ret, after an optional
    endbr64. Raises ValueError for any other code."""
    insns = [(m, o) for _, _, m, o in disassembler("EM_X86_64").disasm_lite(code, address)
             if m not in ("endbr64", "nop")][:2]
    if len(insns) == 2 and insns[0][0] == "mov" and insns[1][0] == "ret":
        m = _MEMBER.fullmatch(insns[0][1])
        if m:
            return int(m["off"] or "0", 0), 8 if m["width"] == "qword" else 4
    shown = "; ".join(f"{m} {o}".strip() for m, o in insns) or "nothing decodable"
    raise ValueError(f"unexpected code ({shown})")


def _function_code(path: str, symbol: str, size: int = 32) -> tuple[bytes, int, str]:
    """The first bytes of a dynamic symbol's function, its address and the machine."""
    try:
        found = function_code(path, symbol, size)
    except (OSError, ELFError) as e:
        raise AttachError(f"{path} is not a readable ELF file: {e}") from None
    if found is None:
        raise AttachError(f"{path} has no {symbol}(): cannot tell where THD keeps the "
                          "connection id")
    return found


def inspect_server(path: str) -> Server:
    """Everything the module needs from a server binary, or one line that says why not."""
    symbols = elf_symbols(path)
    dispatch, abi = find_dispatch(path, symbols)
    code, address, machine = _function_code(path, THREAD_ID)
    if machine != "EM_X86_64":
        raise AttachError(f"{path}: {machine} servers are not supported yet (the connection "
                          "id's place is read from x86-64 code)")
    try:
        member = thread_id_member(code, address)
    except ValueError as e:
        raise AttachError(f"{path}: cannot tell where THD keeps the connection id from "
                          f"{THREAD_ID}(): {e}") from None
    found = []
    for names in (MESSAGE, NET_WRITE, NET_COMMAND):
        name = next((s for s in names if s in symbols), None)
        if name is None:
            raise AttachError(f"{path} has no {names[0]}(): this module needs it")
        found.append(name)
    version = scan_version(path, rb"\0(\d+\.\d+\.\d+-MariaDB)\0")
    message, net_write, net_command = found
    return Server(path, dispatch, abi, member, message, net_write, net_command, version)


def server_of(pid: int) -> str:
    """The executable of a running server, also when it runs in another mount namespace
    (a container): then its path is only valid under the process's own root."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError as e:
        raise AttachError(f"--pid {pid}: cannot read its executable ({e.strerror})") from None
    return exe if os.path.isfile(exe) else f"/proc/{pid}/root{exe}"


def default_server() -> str | None:
    for path in DEFAULT_SERVERS:
        if os.path.isfile(path):
            return path
    return shutil.which("mariadbd") or shutil.which("mysqld")


# -- events ------------------------------------------------------------------------------

@dataclass(slots=True)
class MysqldCommand(Event):
    """One command a server dispatched and how it ended. ``timestamp_ns`` is when
    dispatch_command() was entered. ``sql`` is the query's text (query, prepare), the
    database (init_db), or for a statement command the SQL its statement was prepared from
    (None when that prepare was not seen). ``status`` is "ok", "error" (the client was
    sent an error: ``error`` and ``error_message``), "unwound" (dispatch_command never returned
    normally, so duration and status are unknown) or "running" (still running when the
    capture ended)."""

    conn: int
    command: int
    sql: bytes | None
    length: int  # bytes of the payload the client sent
    truncated: bool  # fewer than ``length`` bytes arrived (cut at MAX_PAYLOAD, or unreadable)
    status: str
    duration_ns: int | None
    error: int
    error_message: str
    raised: int  # errors the server raised, handled ones (never sent) too
    retval: int | None
    stmt_id: int | None = None
    params: tuple[mb.Value, ...] | None = None
    params_problem: str | None = None
    param_count: int | None = None  # prepare: what the server counted

    json_type: ClassVar[str] = "mysqld"

    @property
    def command_name(self) -> str:
        return mb.COMMANDS.get(self.command, f"command_{self.command}")

    def text_line(self) -> str:
        what = self.command_name
        if self.stmt_id is not None:
            what += f" #{self.stmt_id}"
        took = f"{self.duration_ns / 1e6:.2f} ms " if self.duration_ns is not None else ""
        status = self.status
        if self.status == "error":
            status = f"error {self.error}"
            if self.error_message:
                status += f" ({one_line(self.error_message.encode())})"
        text = ""
        if self.sql is not None:
            text = one_line(self.sql)
        elif self.stmt_id is not None and self.command in mb.STMT_COMMANDS:
            text = "(statement not prepared while capturing)"
        if self.params is not None and self.params:
            text += "  params (" + ", ".join(mb.sql_literal(v) for v in self.params) + ")"
        elif self.params_problem:
            text += f"  params not decoded: {self.params_problem}"
        if self.truncated:
            got = len(self.sql) if self.sql is not None else 0
            text += f"  (cut at {got} of {self.length} bytes)"
        return (f"{self.comm} pid {self.pid} tid {self.tid} conn {self.conn}  {what} "
                f"{took}{status}" + (f": {text}" if text else ""))

    def json_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pid": self.pid, "tid": self.tid, "uid": self.uid, "comm": self.comm,
            "conn": self.conn, "command": self.command_name, "status": self.status,
            "duration_ns": self.duration_ns, "error": self.error,
            "error_message": self.error_message, "raised": self.raised,
            "retval": self.retval, "length": self.length, "truncated": self.truncated,
            "stmt_id": self.stmt_id,
            "params": None if self.params is None else [mb.json_value(v) for v in self.params],
            "params_problem": self.params_problem, "param_count": self.param_count,
        }
        if self.sql is not None:
            out["sql"] = self.sql
        return out


@dataclass(slots=True)
class MysqldNotice(Event):
    """What the capture could not show whole: commands cut or never joined."""

    cut: int
    unjoined: int

    json_type: ClassVar[str] = "mysqld_notice"
    process_scoped: ClassVar[bool] = False
    filtered: ClassVar[bool] = False
    kernel_time: ClassVar[bool] = False

    def text_line(self) -> str:
        return (f"mysqld: {self.cut} command(s) cut (payload over {MAX_PAYLOAD} bytes or "
                f"unreadable), {self.unjoined} end(s) without their command")

    def json_fields(self) -> dict[str, Any]:
        return {"cut": self.cut, "unjoined": self.unjoined}


# -- fragments and joining ---------------------------------------------------------------

@dataclass(slots=True)
class _Chunk(Fragment):
    key: tuple[int, int, int]  # pid, tid, start_ns
    uid: int
    conn: int
    command: int
    total_len: int
    offset: int
    data: bytes
    abi: int
    comm: str


@dataclass(slots=True)
class _Done(Fragment):
    key: tuple[int, int, int]
    fields: dict[str, Any]
    msg: bytes


@dataclass
class _Call:
    first: _Chunk
    data: bytearray = field(default_factory=bytearray)
    gap: bool = False  # a chunk the kernel could not read: the rest is missing
    done: _Done | None = None

    def complete(self) -> bool:
        want = min(self.first.total_len, MAX_PAYLOAD)
        return self.done is not None and (self.gap or len(self.data) >= want)


@dataclass
class _Stmt:
    sql: bytes
    params: int | None
    types: tuple[int, ...] | None = None
    long_data: set[int] = field(default_factory=set)


class MysqldModule(Module):
    name = "mysqld"
    aliases = ("mysql", "mariadb")
    help = "capture the queries a MySQL or MariaDB server runs"
    source = "mysqld.c"
    header = "mysqld.h"
    options = (
        Option(("--mysqld",), "mysqld", "the server binary to attach to (default: "
               "/usr/sbin/mariadbd, else mysqld on PATH; with --pid, that process's "
               "executable)", metavar="PATH"),
        pid_option("capture only this server process id"),
        uid_option("capture only servers running as this user id"),
    )
    maps = (EventMap("events", {EVENT_MYSQLD_QUERY: MYSQLD_QUERY,
                                EVENT_MYSQLD_DONE: MYSQLD_DONE}),)

    def __init__(self, config: Mapping[str, Any]):
        super().__init__(config)
        self.server: Server | None = None
        codecs = self.maps[0].codecs()
        self._query = codecs[EVENT_MYSQLD_QUERY]
        self._done = codecs[EVENT_MYSQLD_DONE]
        self._calls: dict[tuple[int, int, int], _Call] = {}
        self._early: dict[tuple[int, int, int], _Done] = {}  # perf buffers may reorder
        # (pid, conn) -> stmt id -> what it was prepared from: statement ids are per
        # connection, and die with it
        self._stmts: dict[tuple[int, int], dict[int, _Stmt]] = {}
        self._last_prepared: dict[tuple[int, int], int] = {}  # (pid, conn) -> stmt id
        self._cut = 0
        self._unjoined = 0
        self._last_ns = 0

    # -- configuration -------------------------------------------------------------
    def check(self) -> None:
        self.notes += check_path_and_pid(self.config, "mysqld")

    def init(self) -> None:
        path = self.config.get("mysqld")
        pid = self.config.get("pid")
        if not path and pid is not None:
            path = server_of(pid)
        path = path or default_server()
        if path is None:
            raise AttachError("no MySQL or MariaDB server found: install one, or pass "
                              "--mysqld PATH")
        try:
            path = os.path.realpath(path, strict=True)
        except OSError as e:
            raise AttachError(f"{path}: cannot resolve the server binary ({e.strerror})") \
                from None
        self.server = inspect_server(path)
        self.targets = [Target(path, self.server.version, build_id(path))]

    # -- kernel side ---------------------------------------------------------------
    def probes(self, features: Features) -> list[Probe]:
        s = self.server
        assert s is not None, "init() first"
        return [*Probe.around(s.dispatch, "mysqld_dispatch_enter", "mysqld_dispatch_return",
                              s.path),
                Probe("uprobe", s.message, "mysqld_message_enter", s.path),
                Probe("uprobe", s.net_write, "mysqld_net_write_enter", s.path),
                Probe("uprobe", s.net_command, "mysqld_net_command_enter", s.path)]

    def cflags(self, features: Features) -> list[str]:
        s = self.server
        assert s is not None, "init() first"
        flags = [f"-DMYSQLD_ABI={s.abi}", f"-DTHD_ID_OFFSET={s.thread_id[0]}",
                 f"-DTHD_ID_SIZE={s.thread_id[1]}", f"-DMYSQLD_MAX_CHUNKS={MAX_CHUNKS}"]
        if s.abi == MYSQLD_ABI_PACKET:
            flags.append(f"-DMYSQLD_NOT_ERROR={MARIADB_NOT_ERROR}")
        else:
            flags.append("-DRETVAL_BOOL=1")
        return flags + process_filter_cflags(self.config)

    # -- user side: decoding ---------------------------------------------------------
    def decode(self, map_name: str, data: bytes) -> Decoded:
        kind = split_kind(data)
        if kind == EVENT_MYSQLD_QUERY:
            return self._decode_chunk(data)
        if kind == EVENT_MYSQLD_DONE:
            return self._decode_done(data)
        raise DecodeError(f"unknown event kind {kind} on map {map_name}")

    def _decode_chunk(self, data: bytes) -> _Chunk:
        f, chunk = unpack_event(self._query, data, "mysqld_query_event_t", MYSQLD_CHUNK_SIZE)
        return _Chunk((f["pid"], f["tid"], f["start_ns"]), f["uid"], f["conn"], f["command"],
                      f["total_len"], f["offset"], chunk, f["abi"], comm_str(f["comm"]))

    def _decode_done(self, data: bytes) -> _Done:
        f, msg = unpack_event(self._done, data, "mysqld_done_event_t", MYSQLD_MSG_MAX)
        return _Done((f["pid"], f["tid"], f["start_ns"]), f, msg)

    # -- user side: joining ------------------------------------------------------------
    def dispatch(self, decoded: Decoded) -> Iterator[Event]:
        if isinstance(decoded, _Chunk):
            call = self._calls.get(decoded.key)
            if call is None:
                call = self._calls[decoded.key] = _Call(decoded)
                call.done = self._early.pop(decoded.key, None)
            if decoded.offset != len(call.data) or (not decoded.data and decoded.total_len):
                call.gap = True  # a chunk lost or unreadable: what follows is missing
            elif not call.gap:
                call.data += decoded.data
        elif isinstance(decoded, _Done):
            call = self._calls.get(decoded.key)
            if call is None:
                self._early[decoded.key] = decoded
                return
            call.done = decoded
        else:
            yield from super().dispatch(decoded)
            return
        if call.complete():
            del self._calls[call.first.key]
            yield self._command(call)

    def finish(self) -> Iterator[Event]:
        for call in list(self._calls.values()):
            yield self._command(call)
        self._calls.clear()
        self._unjoined += len(self._early)
        self._early.clear()
        if self._cut or self._unjoined:
            yield MysqldNotice(self._last_ns, 0, 0, 0, "", self._cut, self._unjoined)

    def _command(self, call: _Call) -> MysqldCommand:
        first, done = call.first, call.done
        pid, tid, start = first.key
        payload = bytes(call.data)
        truncated = len(payload) < first.total_len
        self._cut += truncated
        status, duration, retval = "running", None, None
        error, raised, message = 0, 0, ""
        if done is not None:
            d = done.fields
            error, raised = d["error"], d["raised"]
            message = done.msg.decode("utf-8", "backslashreplace")
            if d["returned"]:
                status = "error" if error else "ok"
                duration, retval = max(d["end_ns"] - start, 0), d["retval"]
            else:
                status = "unwound"
        self._last_ns = max(self._last_ns, start)
        ev = MysqldCommand(start, pid, tid, first.uid, first.comm, first.conn, first.command,
                           None, first.total_len, truncated, status, duration, error, message,
                           raised, retval)
        self._explain(ev, payload, done, first.abi)
        return ev

    def _explain(self, ev: MysqldCommand, payload: bytes, done: _Done | None,
                 abi: int) -> None:
        """Fill in what a command means: its text, or its statement's SQL and parameters;
        and keep what a prepare, a close or a long-data command says about statements."""
        conn = (ev.pid, ev.conn)
        if ev.command in (mb.COM_QUERY, mb.COM_STMT_PREPARE, mb.COM_INIT_DB):
            ev.sql = payload
            if ev.command == mb.COM_STMT_PREPARE and done is not None \
                    and done.fields["prepared"]:
                ev.stmt_id, ev.param_count = done.fields["stmt_id"], done.fields["params"]
                self._stmts.setdefault(conn, {})[ev.stmt_id] = _Stmt(payload, ev.param_count)
                self._last_prepared[conn] = ev.stmt_id
            return
        if ev.command not in mb.STMT_COMMANDS:
            ev.sql = payload or None
            if ev.command == mb.COM_QUIT:
                self._stmts.pop(conn, None)
                self._last_prepared.pop(conn, None)
            return
        stmt_id = mb.stmt_id_of(payload)
        if stmt_id is None:
            return
        if stmt_id == mb.LAST_PREPARED:
            stmt_id = self._last_prepared.get(conn, stmt_id)
        ev.stmt_id = stmt_id
        stmt = self._stmts.get(conn, {}).get(stmt_id)
        ev.sql = stmt.sql if stmt is not None else None
        if ev.command == mb.COM_STMT_EXECUTE:
            self._parameters(ev, payload, stmt, abi)
        elif ev.command == mb.COM_STMT_SEND_LONG_DATA and stmt is not None \
                and len(payload) >= 6:
            stmt.long_data.add(int.from_bytes(payload[4:6], "little"))
        elif ev.command == mb.COM_STMT_CLOSE:
            self._stmts.get(conn, {}).pop(stmt_id, None)

    def _parameters(self, ev: MysqldCommand, payload: bytes, stmt: _Stmt | None,
                    abi: int) -> None:
        if abi == MYSQLD_ABI_COM_DATA:
            ev.params_problem = "MySQL 5.7/8 parameters are not captured"
            return
        if ev.truncated:
            ev.params_problem = "payload cut"
            return
        decoded = mb.decode_execute(payload, stmt.params if stmt else None,
                                    stmt.types if stmt else None,
                                    frozenset(stmt.long_data) if stmt else frozenset())
        ev.params, ev.params_problem = decoded.values, decoded.problem
        if stmt is not None and decoded.values is not None:
            stmt.types = decoded.types or stmt.types
            stmt.long_data.clear()
